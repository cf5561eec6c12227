/* The pump between an Assuan endpoint (server connection or client) and its
 * weft_stream.  Output is written once per pass of the owner, not once per
 * line; an idle endpoint holds little memory (see assuan-private.h). */
#include "assuan-private.h"
#include "sock-private.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define TAKEN_READS 32 /* reads per wake-up of a taken transport before yielding */

void weft__apump_init(struct weft__apump *p, weft_stream *s,
		void (*event)(struct weft__apump *p, enum weft__apump_ev ev))
{
	*p = (struct weft__apump){.s = s, .event = event};
}

static bool big_buffer(const struct weft__apump *p)
{
	return p->in.buf != NULL && p->in.buf != p->small;
}

/* reading or wblocked changed: the transport's watch is looked at again. */
static void set_reading(struct weft__apump *p, bool on)
{
	p->reading = on;
	p->watching = WEFT__APUMP_WATCH_UNKNOWN;
}

static void set_wblocked(struct weft__apump *p, bool on)
{
	p->wblocked = on;
	p->watching = WEFT__APUMP_WATCH_UNKNOWN;
}

/* ---- input buffers ---------------------------------------------------------- */

/* Where the next read goes: after the unparsed bytes, in the small buffer
 * while lines are short and few, the big one while data streams in (given
 * back once it empties).  False when there is no room: the reader stops
 * (lines wait for the owner, or the memory ran out: err and event). */
static bool alloc_other(struct weft__apump *p, void **ret_buf, size_t *ret_len);

static inline bool take_room(struct weft__apump *p, void **ret_buf, size_t *ret_len)
{
	if (p->in.len == 0 && p->in.buf == p->small && !p->filled) {
		/* The usual read of an idle endpoint: all of the small buffer. */
		p->in.off = 0;
		p->rroom = sizeof(p->small);
		*ret_buf = p->small;
		*ret_len = sizeof(p->small);
		return true;
	}
	return alloc_other(p, ret_buf, ret_len);
}

/* Any other read: bytes kept, the first read, a switch between buffers.
 * Out of line, so that the usual read saves no registers. */
static __attribute__((noinline)) bool alloc_other(struct weft__apump *p, void **ret_buf, size_t *ret_len)
{
	if (p->in.buf == NULL || (p->in.len == 0 && !p->filled && big_buffer(p))) {
		if (big_buffer(p))
			free(p->in.buf); /* the stream of data is over */
		p->in = (struct weft__ain){.buf = p->small, .cap = sizeof(p->small)};
	}
	size_t room = weft__ain_compact(&p->in);
	if ((room == 0 || p->filled) && p->in.cap < WEFT__APUMP_BIG) {
		char *big = malloc(WEFT__APUMP_BIG);
		if (big == NULL && room == 0) {
			set_reading(p, false); /* stops: no buffer given */
			p->eof = true;
			if (p->err == 0)
				p->err = ENOMEM;
			if (!weft__apump_taken(p))
				weft_stream_read_stop(p->s);
			p->event(p, WEFT__APUMP_DONE);
			return false;
		}
		if (big != NULL) {
			memcpy(big, p->in.buf, p->in.len);
			p->in.buf = big; /* was the small one */
			p->in.cap = WEFT__APUMP_BIG;
			room = WEFT__APUMP_BIG - p->in.len;
		}
	}
	if (room == 0) {
		set_reading(p, false); /* full of lines the owner does not take yet */
		return false;
	}
	p->rroom = (uint32_t)room; /* at most WEFT__APUMP_BIG */
	*ret_buf = p->in.buf + p->in.len;
	*ret_len = room;
	return true;
}

/* n bytes arrived (0: the end of the input; < 0: -errno). */
static inline void got_bytes(struct weft__apump *p, ssize_t n)
{
	if (n > 0) {
		p->in.len += (size_t)n;
		p->filled = (size_t)n == p->rroom;
	} else {
		set_reading(p, false);
		p->eof = true;
		if (n != 0 && n != -EPIPE && p->err == 0)
			p->err = (int)-n; /* EPIPE is the orderly end */
	}
}

/* ---- driving by requests (the stream's registered reader) --------------- */

static void on_alloc(weft_stream *s, size_t suggested, void **ret_buf, size_t *ret_len, void *data)
{
	(void)s;
	(void)suggested;
	take_room(data, ret_buf, ret_len); /* none given: the reader stops */
}

static void on_read(weft_stream *s, ssize_t n, void *buf, void *data)
{
	struct weft__apump *p = data;
	(void)s;
	(void)buf;
	got_bytes(p, n == -EPIPE ? 0 : n);
	p->event(p, WEFT__APUMP_DONE);
}

static void write_done(weft_req *req, void *data)
{
	struct weft__apump *p = data;
	int err = 0;
	ssize_t r = weft_stream_writev_recv(req, &err);
	weft_req_free(req);
	p->wreq = NULL;
	p->wbuf.len = 0;
	if (p->wbuf.cap > WEFT__APUMP_OUT_KEEP)
		weft__abuf_free(&p->wbuf); /* a burst of D data is over */
	if (r < 0 && p->err == 0)
		p->err = err;
	p->event(p, WEFT__APUMP_DONE);
}

/* ---- driving a taken transport ---------------------------------------------- */

/* READ stays armed while reading (level-triggered: dropping and re-adding
 * it would cost two syscalls per command). */
void weft__apump_watch_slow(struct weft__apump *p)
{
	if (!weft__apump_taken(p))
		return; /* given back from inside the hook */
	unsigned want = (p->reading ? WEFT_IO_READ : 0u) | (p->wblocked ? WEFT_IO_WRITE : 0u);
	if (weft__stream_raw_watch(p->s, want) == 0) /* no call when unchanged */
		p->watching = (uint8_t)want;
}

/* Read from the loop, not from the stack of whoever asked. */
static void ask_kick(struct weft__apump *p)
{
	if (!p->kick_read) {
		p->kick_read = true;
		p->event(p, WEFT__APUMP_WAKE);
	}
}

/* Read while there is room and the transport is not known to be empty. */
static void taken_read(struct weft__apump *p)
{
	for (unsigned i = 0; weft__apump_taken(p) && p->reading && !p->drained; i++) {
		if (i == TAKEN_READS) {
			ask_kick(p); /* yield to the other fds, come back */
			return;
		}
		struct iovec iov;
		if (!take_room(p, &iov.iov_base, &iov.iov_len))
			return;
		ssize_t n;
		do
			n = p->ops->readv(p->s, &iov, 1);
		while (n == -EINTR);
		if (n == -EAGAIN || n == -EWOULDBLOCK) {
			p->drained = true;
			return;
		}
		if (n > 0 && (size_t)n < iov.iov_len)
			p->drained = true; /* a short read: the transport is empty */
		got_bytes(p, n);
		p->event(p, WEFT__APUMP_DONE);
		if (p->s == NULL)
			return; /* closed from the event */
	}
}

/* Write the rest of wbuf.  0: written, or blocked (wblocked); -errno. */
static int taken_write(struct weft__apump *p)
{
	while (p->woff < p->wbuf.len) {
		struct iovec iov = {p->wbuf.p + p->woff, p->wbuf.len - p->woff};
		ssize_t n = p->ops->writev(p->s, &iov, 1);
		if (n == -EINTR)
			continue;
		if (n == -EAGAIN || n == -EWOULDBLOCK || n == 0) {
			if (!p->wblocked)
				set_wblocked(p, true);
			return 0;
		}
		if (n < 0) {
			set_wblocked(p, false);
			return (int)n;
		}
		p->woff += (size_t)n;
	}
	if (p->wblocked)
		set_wblocked(p, false);
	p->wbuf.len = 0;
	p->woff = 0;
	if (p->wbuf.cap > WEFT__APUMP_OUT_KEEP)
		weft__abuf_free(&p->wbuf); /* a burst of D data is over */
	return 0;
}

static void taken_end(struct weft__apump *p)
{
	if (--p->busy == 0 && p->s != NULL)
		weft__apump_watch(p);
}

void weft__apump_hook(struct weft__apump *p, unsigned revents)
{
	p->busy++;
	if (p->wblocked && (revents & (WEFT_IO_WRITE | WEFT_IO_ERR | WEFT_IO_HUP))) {
		int r = taken_write(p);
		if (r < 0 && p->err == 0)
			p->err = -r;
		if (r < 0 || !p->wblocked)
			p->event(p, WEFT__APUMP_DONE); /* written (the owner gathers on) or failed */
	}
	if (revents & (WEFT_IO_READ | WEFT_IO_ERR | WEFT_IO_HUP))
		p->drained = false;
	if (p->s != NULL)
		taken_read(p);
	taken_end(p);
}

void weft__apump_read_result(struct weft__apump *p, ssize_t n)
{
	p->in.off = 0;
	p->rroom = sizeof(p->small);
	if (n == -EAGAIN || n == -EWOULDBLOCK) {
		p->drained = true;
	} else if (n != -EINTR) {
		if (n > 0 && (size_t)n < sizeof(p->small))
			p->drained = true;
		got_bytes(p, n);
		p->event(p, WEFT__APUMP_DONE);
	}
	if (p->s != NULL)
		taken_read(p); /* on while more may come */
	taken_end(p);
}

void weft__apump_kick(struct weft__apump *p)
{
	if (!p->kick_read || p->s == NULL)
		return;
	p->kick_read = false;
	p->busy++;
	taken_read(p);
	taken_end(p);
}

static void taken_hook(void *data, unsigned revents)
{
	weft__apump_hook(data, revents);
}

int weft__apump_take(struct weft__apump *p, void (*hook)(void *p, unsigned revents))
{
	const weft_stream_ops *ops = weft__stream_ops(p->s);
	size_t own = ops->pending ? ops->pending(p->s) : 0;
	if (weft__stream_raw_pending(p->s) > own)
		return -EBUSY; /* bytes read ahead: the stream's reader hands them out */
	int r = weft__stream_take(p->s, hook != NULL ? hook : taken_hook, p);
	if (r < 0)
		return r;
	p->ops = ops;
	p->watching = WEFT__APUMP_WATCH_UNKNOWN;
	return 0;
}

int weft__apump_give_back(struct weft__apump *p)
{
	if (!weft__apump_taken(p) || p->s == NULL)
		return 0;
	weft__stream_untake(p->s);
	size_t off = p->woff;
	bool was_reading = p->reading;
	p->woff = 0; /* wreq from now on */
	p->ops = NULL;
	p->wblocked = false;
	p->kick_read = false;
	p->drained = false;
	set_reading(p, false);
	if (off < p->wbuf.len) {
		/* The rest of a blocked write goes first, by a request. */
		struct iovec iov = {p->wbuf.p + off, p->wbuf.len - off};
		p->wreq = weft_stream_writev_queue_send(p->s, NULL, &iov, 1);
		if (p->wreq == NULL) {
			p->err = ENOMEM;
			return -ENOMEM;
		}
		weft_req_set_callback(p->wreq, write_done, p);
	} else {
		p->wbuf.len = 0;
	}
	return was_reading ? weft__apump_read_slow(p) : 0;
}

/* A taken transport: what it did not take of out waits in wbuf for its
 * room while new output gathers in out. */
int weft__apump_flush_rest(struct weft__apump *p, ssize_t n)
{
	if (n == (ssize_t)p->out.len) {
		p->out.len = 0; /* all of it, from a buffer grown by a burst */
		weft__abuf_free(&p->out); /* an idle endpoint keeps little */
		return 0;
	}
	if (n < 0 && n != -EAGAIN && n != -EWOULDBLOCK && n != -EINTR) {
		p->err = (int)-n;
		return (int)n;
	}
	struct weft__abuf t = p->wbuf;
	p->wbuf = p->out;
	p->out = t;
	p->out.len = 0;
	p->woff = n > 0 ? (size_t)n : 0;
	int r = taken_write(p);
	if (r < 0) {
		p->err = -r;
		return r;
	}
	if (p->busy == 0)
		weft__apump_watch(p);
	return 0;
}

/* ---- both ------------------------------------------------------------------ */

int weft__apump_read_slow(struct weft__apump *p)
{
	if (p->s == NULL || p->eof)
		return 0;
	bool taken = weft__apump_taken(p);
	bool full = p->in.buf != NULL && p->in.cap == WEFT__APUMP_BIG && p->in.len == p->in.cap;
	if (full) {
		if (p->reading) {
			set_reading(p, false); /* the owner takes lines first */
			if (!taken)
				weft_stream_read_stop(p->s);
			else if (p->busy == 0)
				weft__apump_watch(p);
		}
		return 0;
	}
	if (p->reading)
		return 0;
	if (taken) {
		set_reading(p, true);
		/* Bytes may wait where readiness does not tell: read from the loop. */
		if (!p->drained || weft__stream_raw_pending(p->s) > 0)
			ask_kick(p);
		if (p->busy == 0)
			weft__apump_watch(p);
		return 0;
	}
	int r = weft_stream_read_start(p->s, on_alloc, on_read, p);
	if (r < 0)
		return r;
	p->reading = true;
	return 0;
}

int weft__apump_flush_slow(struct weft__apump *p)
{
	if (p->err != 0)
		return -p->err;
	if (weft__apump_taken(p)) {
		if (p->out.len == 0 || p->wbuf.len > 0 || p->s == NULL)
			return 0;
		struct iovec iov = {p->out.p, p->out.len};
		return weft__apump_flush_rest(p, p->ops->writev(p->s, &iov, 1));
	}
	if (p->out.len == 0 || p->wreq != NULL || p->s == NULL)
		return 0;
	struct iovec iov = {p->out.p, p->out.len};
	ssize_t n = weft_stream_try_writev(p->s, &iov, 1);
	if (n == (ssize_t)p->out.len) {
		/* The usual end: all of it taken at once. */
		p->out.len = 0;
		if (p->out.cap > WEFT__APUMP_OUT_KEEP)
			weft__abuf_free(&p->out); /* an idle endpoint keeps little */
		return 0;
	}
	if (n < 0 && n != -EAGAIN && n != -EWOULDBLOCK && n != -EBUSY) {
		p->err = (int)-n;
		return (int)n;
	}
	size_t done = n > 0 ? (size_t)n : 0;
	if (done == p->out.len) {
		p->out.len = 0;
		if (p->out.cap > WEFT__APUMP_OUT_KEEP)
			weft__abuf_free(&p->out); /* an idle endpoint keeps little */
		return 0;
	}
	/* The rest goes by a request; new output gathers in the other buffer. */
	struct weft__abuf t = p->wbuf;
	p->wbuf = p->out;
	p->out = t;
	p->out.len = 0;
	iov.iov_base = p->wbuf.p + done;
	iov.iov_len = p->wbuf.len - done;
	p->wreq = weft_stream_writev_queue_send(p->s, NULL, &iov, 1);
	if (p->wreq == NULL) {
		p->err = ENOMEM;
		return -ENOMEM;
	}
	weft_req_set_callback(p->wreq, write_done, p);
	return 0;
}

void weft__apump_close(struct weft__apump *p)
{
	p->reading = false; /* closing the stream stops its reader */
	if (weft__apump_taken(p)) {
		p->woff = 0; /* shares its place with wreq */
		p->ops = NULL;
	}
	p->wblocked = false;
	p->watching = WEFT__APUMP_WATCH_UNKNOWN; /* no hook reads the small buffer now */
	p->kick_read = false;
	weft_req_free(p->wreq);
	p->wreq = NULL;
	weft_stream_close(p->s, NULL, NULL);
	p->s = NULL;
	if (big_buffer(p))
		free(p->in.buf);
	p->in = (struct weft__ain){0};
	weft__abuf_free(&p->out);
	weft__abuf_free(&p->wbuf);
	p->eof = true;
}
