/* The pump between an Assuan endpoint (server connection or client) and its
 * weft_stream.  Output is written once per pass of the owner, not once per
 * line; an idle endpoint holds little memory (see assuan-private.h). */
#include "assuan-private.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void weft__apump_init(struct weft__apump *p, weft_stream *s, void (*event)(struct weft__apump *p))
{
	*p = (struct weft__apump){.s = s, .event = event};
}

static bool big_buffer(const struct weft__apump *p)
{
	return p->in.buf != NULL && p->in.buf != p->small;
}

/* The stream asks where its next read goes: after the unparsed bytes, in
 * the small buffer while lines are short and few, the big one while data
 * streams in (given back once it empties). */
static void alloc_other(struct weft__apump *p, weft_stream *s, void **ret_buf, size_t *ret_len);

static void on_alloc(weft_stream *s, size_t suggested, void **ret_buf, size_t *ret_len, void *data)
{
	struct weft__apump *p = data;
	(void)suggested;
	if (p->in.len == 0 && p->in.buf == p->small && !p->filled) {
		/* The usual read of an idle endpoint: all of the small buffer. */
		p->in.off = 0;
		p->rroom = sizeof(p->small);
		*ret_buf = p->small;
		*ret_len = sizeof(p->small);
		return;
	}
	alloc_other(p, s, ret_buf, ret_len);
}

/* Any other read: bytes kept, the first read, a switch between buffers.
 * Out of line, so that the usual read saves no registers. */
static __attribute__((noinline)) void alloc_other(struct weft__apump *p, weft_stream *s, void **ret_buf,
		size_t *ret_len)
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
			p->reading = false; /* stops: no buffer given */
			p->eof = true;
			if (p->err == 0)
				p->err = ENOMEM;
			weft_stream_read_stop(s);
			p->event(p);
			return;
		}
		if (big != NULL) {
			memcpy(big, p->in.buf, p->in.len);
			p->in.buf = big; /* was the small one */
			p->in.cap = WEFT__APUMP_BIG;
			room = WEFT__APUMP_BIG - p->in.len;
		}
	}
	if (room == 0) {
		p->reading = false; /* full of lines the owner does not take yet */
		return;
	}
	p->rroom = room;
	*ret_buf = p->in.buf + p->in.len;
	*ret_len = room;
}

static void on_read(weft_stream *s, ssize_t n, void *buf, void *data)
{
	struct weft__apump *p = data;
	(void)s;
	(void)buf;
	if (n > 0) {
		p->in.len += (size_t)n;
		p->filled = (size_t)n == p->rroom;
	} else {
		p->reading = false;
		p->eof = true;
		if (n != -EPIPE && p->err == 0)
			p->err = (int)-n; /* EPIPE is the orderly end */
	}
	p->event(p);
}

int weft__apump_read_slow(struct weft__apump *p)
{
	if (p->s == NULL || p->eof)
		return 0;
	bool full = p->in.buf != NULL && p->in.cap == WEFT__APUMP_BIG && p->in.len == p->in.cap;
	if (full) {
		if (p->reading) {
			p->reading = false; /* the owner takes lines first */
			weft_stream_read_stop(p->s);
		}
		return 0;
	}
	if (p->reading)
		return 0;
	int r = weft_stream_read_start(p->s, on_alloc, on_read, p);
	if (r < 0)
		return r;
	p->reading = true;
	return 0;
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
	p->event(p);
}

int weft__apump_flush(struct weft__apump *p)
{
	if (p->err != 0)
		return -p->err;
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
