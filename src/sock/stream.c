/* The stream core: readv with a next-vector callback, writev, the write
 * queue and shutdown, written once against weft_stream_ops.
 *
 * Rules kept here: one read request at a time; the write side is served
 * before the read side; the transport is asked to watch READ only while a
 * read waits for data and WRITE only while a write is blocked; a short read
 * means the transport is drained, so no read is tried again before it says
 * it is readable (no EAGAIN syscall per message); bytes read past the
 * caller's vector stay in a small read-ahead buffer for the next vector. */
#include "sock-private.h"
#include "req-private.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define MAX_IOV 64            /* iovecs per syscall */
#define READ_BUDGET (1u << 20) /* bytes read per wake-up before yielding */
#define READS_PER_WAKEUP 32    /* read requests served per wake-up */

struct weft_stream {
	weft_loop *loop;
	const weft_stream_ops *ops;
	void *impl;

	weft_req *reader;
	uint64_t read_seq; /* bumped per reader: detects a reader replaced in next() */
	/* weft_stream_read_start: a reader that stays (no request per read) */
	weft_stream_alloc_cb rs_alloc;
	weft_stream_read_cb rs_cb;
	void *rs_data;
	weft_req *writer;

	weft_queue *wqueue;
	struct weft__list ops_list; /* every live request */

	unsigned char *ra;  /* read-ahead buffer */
	size_t ra_off, ra_len;

	weft_defer kick; /* serve from the loop without fd readiness */
	weft_stream_close_cb close_cb;
	void *close_data;

	/* Taken by a stacked transport (TLS): readiness goes to hook. */
	weft__stream_hook_fn hook;
	void *hook_data;

	unsigned watching;  /* what the transport was last asked to watch */
	unsigned depth;     /* >0 while the core is on the stack */
	bool reading;       /* the registered reader is started */
	bool drained;       /* last read was short: wait for readiness */
	bool write_blocked; /* the writer hit EAGAIN */
	bool ra_wanted;     /* the last read filled the caller's buffer */
	bool closing;
};

struct readv_state {
	struct weft__stream_op op;
	uint64_t seq;
	weft_stream_next_vector_fn next;
	void *data;
	const struct iovec *vec;
	size_t count, idx, off;
	bool have_vector;
	bool some;            /* weft_stream_read_send: done at the first bytes */
	struct iovec one;     /* its buffer */
	uint64_t total;
};

struct writev_state {
	struct weft__stream_op op;
	struct iovec *vec;
	size_t count, idx;
	uint64_t total;
	bool shutdown; /* a shutdown request, not a write */
	int fd;        /* >= 0: rides on the first byte (sent once) */
	struct iovec inline_vec[4];
};

static void stream_serve(weft_stream *s, unsigned revents);
static void stream_update_watch(weft_stream *s);
static void stream_finish_close(weft_stream *s);

/* ---- the stream object ---------------------------------------------------- */

static void kick_cb(weft_defer *defer, void *data)
{
	(void)defer;
	stream_serve(data, 0);
}

int weft_stream_new(weft_loop *loop, const weft_stream_ops *ops, void *impl, weft_stream **ret_stream)
{
	if (loop == NULL || ops == NULL || ops->readv == NULL || ops->writev == NULL ||
	    ops->close == NULL || ops->watch == NULL || ret_stream == NULL)
		return -EINVAL;
	weft_stream *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return -ENOMEM;
	s->loop = loop;
	s->ops = ops;
	s->impl = impl;
	weft__list_init(&s->ops_list);
	weft__defer_init(loop, &s->kick, kick_cb, s);
	loop->nhandles++; /* a live stream pins its loop */
	*ret_stream = s;
	return 0;
}

void *weft_stream_impl(const weft_stream *s)
{
	return s ? s->impl : NULL;
}

const weft_stream_ops *weft__stream_ops(const weft_stream *s)
{
	return s->ops;
}

weft_loop *weft_stream_loop(const weft_stream *s)
{
	return s ? s->loop : NULL;
}

const char *weft_stream_name(const weft_stream *s)
{
	return s ? s->ops->name : NULL;
}

/* Bytes readable without the transport's readiness: read-ahead, plus what
 * the transport buffers (TLS records). */
static inline size_t stream_buffered(const weft_stream *s)
{
	if (s->ops->pending == NULL)
		return s->ra_len;
	return s->ra_len + s->ops->pending((weft_stream *)s);
}

size_t weft_stream_pending(const weft_stream *s)
{
	if (s == NULL || s->closing)
		return 0;
	return stream_buffered(s);
}

int weft_stream_fd(const weft_stream *s)
{
	if (s == NULL || s->closing)
		return -EINVAL;
	return s->ops->fd ? s->ops->fd((weft_stream *)s) : -ENOTSOCK;
}

size_t weft_stream_write_queue_length(const weft_stream *s)
{
	return s ? weft_queue_length(s->wqueue) : 0;
}

static void op_link(weft_stream *s, struct weft__stream_op *op, weft_req *req)
{
	op->s = s;
	op->req = req;
	weft__list_append(&s->ops_list, &op->link);
}

/* Detach a request from its stream: called from its cleanup, so it runs at
 * completion, cancel, timeout and free alike. */
static weft_stream *op_unlink(struct weft__stream_op *op)
{
	weft_stream *s = op->s;
	if (s == NULL)
		return NULL;
	weft__list_remove(&op->link);
	op->s = NULL;
	if (s->reader == op->req)
		s->reader = NULL;
	if (s->writer == op->req) {
		s->writer = NULL;
		s->write_blocked = false;
	}
	if (!s->closing && s->depth == 0)
		stream_update_watch(s); /* inside the core, stream_serve does it once */
	return s;
}

void weft_stream_close(weft_stream *s, weft_stream_close_cb cb, void *data)
{
	if (s == NULL || s->closing)
		return;
	s->closing = true;
	s->reading = false;
	s->close_cb = cb;
	s->close_data = data;
	weft_defer_cancel(&s->kick);
	/* Cancel every request of this stream: callbacks are posted, and each
	 * cleanup detaches it, so none will touch the stream again. */
	while (!weft__list_empty(&s->ops_list)) {
		struct weft__stream_op *op = weft__container_of(s->ops_list.next, struct weft__stream_op, link);
		weft_req *req = op->req;
		op_unlink(op);
		weft_req_cancel(req);
	}
	if (s->depth == 0)
		stream_finish_close(s);
}

static void close_cb_trampoline(void *data)
{
	weft_stream *s = data;
	weft_stream_close_cb cb = s->close_cb;
	void *cb_data = s->close_data;
	s->loop->nhandles--;
	free(s);
	if (cb)
		cb(cb_data);
}

static void stream_finish_close(weft_stream *s)
{
	if (s->watching)
		s->ops->watch(s, 0); /* announced before the fd goes */
	s->watching = 0;
	s->ops->close(s);
	s->impl = NULL;
	weft_queue_free(s->wqueue); /* empty: every request was detached */
	s->wqueue = NULL;
	free(s->ra);
	s->ra = NULL;
	weft__handle_fini(&s->kick.h);
	/* The stream's memory goes on the next iteration, with the close
	 * callback: callers may still hold the pointer until then. */
	if (weft_loop_call_soon(s->loop, close_cb_trampoline, s) < 0)
		close_cb_trampoline(s); /* out of memory: at least do not leak */
}

/* ---- readiness ------------------------------------------------------------ */

__attribute__((noinline))
static void stream_change_watch(weft_stream *s, unsigned want)
{
	if (s->ops->watch(s, want) == 0)
		s->watching = want;
}

/* Inline: after every message it only finds that nothing changed. */
static inline __attribute__((always_inline)) void stream_update_watch(weft_stream *s)
{
	/* A reader between two vectors still wants data: keeping READ armed
	 * costs nothing, dropping and re-adding it costs two syscalls. */
	unsigned want = 0;
	if (s->hook != NULL)
		return; /* the taker watches through weft__stream_raw_watch */
	if ((s->reader != NULL || s->reading) && s->ra_len == 0)
		want |= WEFT_IO_READ;
	if (s->writer != NULL && s->write_blocked)
		want |= WEFT_IO_WRITE;
	if (want != s->watching)
		stream_change_watch(s, want);
}

void weft_stream_ready(weft_stream *s, unsigned revents)
{
	if (s == NULL || s->closing)
		return;
	if (s->hook != NULL) {
		s->hook(s->hook_data, revents);
		return;
	}
	stream_serve(s, revents);
}

/* ---- stacked transports ------------------------------------------------- */

int weft__stream_take(weft_stream *s, weft__stream_hook_fn hook, void *data)
{
	if (s == NULL || hook == NULL || s->closing)
		return -EINVAL;
	if (s->hook != NULL || s->reading || !weft__list_empty(&s->ops_list))
		return -EBUSY;
	weft_defer_cancel(&s->kick);
	weft__sock_stream_level(s); /* the taker's reads may stop before a short one */
	s->hook = hook;
	s->hook_data = data;
	return 0;
}

void weft__stream_untake(weft_stream *s)
{
	if (s == NULL || s->hook == NULL)
		return;
	s->hook = NULL;
	s->hook_data = NULL;
	s->drained = false; /* what the taker left unread is not known here */
	if (s->depth == 0 && !s->closing)
		stream_update_watch(s);
}

ssize_t weft__stream_raw_readv(weft_stream *s, const struct iovec *iov, int count)
{
	if (s->ra_len > 0) {
		/* Bytes the stream read ahead before it was taken come first. */
		size_t done = 0;
		for (int i = 0; i < count && s->ra_len > 0; i++) {
			size_t n = iov[i].iov_len < s->ra_len ? iov[i].iov_len : s->ra_len;
			memcpy(iov[i].iov_base, s->ra + s->ra_off, n);
			s->ra_off += n;
			s->ra_len -= n;
			done += n;
		}
		if (s->ra_len == 0)
			s->ra_off = 0;
		return (ssize_t)done;
	}
	return s->ops->readv(s, iov, count);
}

ssize_t weft__stream_raw_writev(weft_stream *s, const struct iovec *iov, int count)
{
	return s->ops->writev(s, iov, count);
}

int weft__stream_raw_shutdown(weft_stream *s)
{
	return s->ops->shutdown ? s->ops->shutdown(s) : -EOPNOTSUPP;
}

int weft__stream_raw_watch(weft_stream *s, unsigned events)
{
	if (events == s->watching)
		return 0;
	int r = s->ops->watch(s, events);
	if (r == 0)
		s->watching = events;
	return r;
}

size_t weft__stream_raw_pending(const weft_stream *s)
{
	return stream_buffered(s);
}

static void serve_write(weft_stream *s);
static void serve_read(weft_stream *s);
static void serve_read_started(weft_stream *s);

/* Write side first (tsocket's rule), then the read side. */
static void stream_serve(weft_stream *s, unsigned revents)
{
	s->depth++;
	if (revents & (WEFT_IO_WRITE | WEFT_IO_ERR | WEFT_IO_HUP))
		s->write_blocked = false;
	if (revents & (WEFT_IO_READ | WEFT_IO_ERR | WEFT_IO_HUP))
		s->drained = false;
	if (s->writer != NULL && !s->write_blocked && !s->closing)
		serve_write(s);
	if (s->reader != NULL && !s->closing)
		serve_read(s);
	if (s->reading && !s->closing)
		serve_read_started(s);
	if (!s->closing)
		stream_update_watch(s);
	if (--s->depth == 0 && s->closing)
		stream_finish_close(s);
}

/* ---- readv ---------------------------------------------------------------- */

static void readv_cleanup(weft_req *req, weft_req_stage stage)
{
	struct readv_state *st = weft_req_state(req);
	(void)stage;
	op_unlink(&st->op);
}

static void stream_kick(weft_stream *s)
{
	weft_defer_schedule(&s->kick);
}

/* A read request: with next, readv; with buf, read_send. */
static weft_req *read_new(weft_stream *s, weft_stream_next_vector_fn next, void *data, void *buf, size_t len)
{
	if (s == NULL)
		return NULL;
	weft_req *req = weft_req_new(s->loop, sizeof(struct readv_state), next ? "stream-readv" : "stream-read");
	if (req == NULL)
		return NULL;
	struct readv_state *st = weft_req_state(req);
	if ((next == NULL && (buf == NULL || len == 0)) || s->closing) {
		weft_req_error(req, s->closing ? ECANCELED : EINVAL);
		return req;
	}
	if (s->reader != NULL || s->reading) {
		weft_req_error(req, EBUSY);
		return req;
	}
	st->next = next;
	st->data = data;
	if (next == NULL) {
		st->some = true;
		st->one.iov_base = buf;
		st->one.iov_len = len;
		st->vec = &st->one;
		st->count = 1;
		st->have_vector = true;
	}
	st->seq = ++s->read_seq;
	op_link(s, &st->op, req);
	weft_req_set_cleanup(req, readv_cleanup);
	s->reader = req;
	if (next == NULL && s->drained && stream_buffered(s) == 0) {
		/* Nothing to read before the transport says so: just watch. */
		if (s->depth == 0)
			stream_update_watch(s);
	} else {
		stream_kick(s); /* next() is first asked from the loop */
	}
	return req;
}

weft_req *weft_stream_readv_send(weft_stream *s, weft_stream_next_vector_fn next, void *data)
{
	return read_new(s, next, data, NULL, 0); /* next NULL: EINVAL */
}

int weft_stream_readv_recv(weft_req *req, int *perrno)
{
	return weft_req_simple_recv(req, perrno);
}

weft_req *weft_stream_read_send(weft_stream *s, void *buf, size_t len)
{
	return read_new(s, NULL, NULL, buf, len);
}

ssize_t weft_stream_read_recv(weft_req *req, int *perrno)
{
	int r = weft_req_simple_recv(req, perrno);
	if (r < 0)
		return r;
	return (ssize_t)weft_req_progress(req);
}

/* Ask the caller for the next vector.  Returns false if the request ended
 * (completed, freed, replaced) or the stream is closing. */
static bool ask_next(weft_stream *s, weft_req *req, struct readv_state *st)
{
	const struct iovec *vec = NULL;
	size_t count = 0;
	uint64_t seq = st->seq;
	int r = st->next(s, st->data, &vec, &count);
	if (s->closing || s->reader == NULL || s->read_seq != seq)
		return false; /* next() closed the stream or ended the request */
	if (r < 0) {
		weft_req_error(req, r);
		return false;
	}
	if (r > 0 || (count > 0 && vec == NULL)) {
		weft_req_error(req, EINVAL);
		return false;
	}
	if (count == 0) {
		weft_req_done(req);
		return false;
	}
	st->vec = vec;
	st->count = count;
	st->idx = 0;
	st->off = 0;
	st->have_vector = true;
	return true;
}

/* Advance the vector position by n bytes; true when it is full. */
static bool vector_advance(struct readv_state *st, size_t n)
{
	while (st->idx < st->count) {
		size_t room = st->vec[st->idx].iov_len - st->off;
		if (n < room) {
			st->off += n;
			return false;
		}
		n -= room;
		st->idx++;
		st->off = 0;
	}
	return true;
}

/* Copy read-ahead bytes into the vector.  True when the vector is full. */
static bool fill_from_readahead(weft_stream *s, struct readv_state *st)
{
	while (s->ra_len > 0 && st->idx < st->count) {
		const struct iovec *v = &st->vec[st->idx];
		size_t room = v->iov_len - st->off;
		size_t n = room < s->ra_len ? room : s->ra_len;
		memcpy((unsigned char *)v->iov_base + st->off, s->ra + s->ra_off, n);
		s->ra_off += n;
		s->ra_len -= n;
		st->total += n;
		vector_advance(st, n);
	}
	if (s->ra_len == 0)
		s->ra_off = 0;
	return st->idx >= st->count;
}

/* One syscall: the rest of the caller's vector, then the read-ahead
 * buffer.  Returns bytes read, 0 at EOF, or -errno. */
static ssize_t read_once(weft_stream *s, struct readv_state *st, size_t *ret_asked)
{
	struct iovec iov[MAX_IOV + 1];
	int n = 0;
	size_t asked = 0;
	for (size_t i = st->idx; i < st->count && n < MAX_IOV; i++) {
		size_t skip = i == st->idx ? st->off : 0;
		if (st->vec[i].iov_len == skip)
			continue;
		iov[n].iov_base = (unsigned char *)st->vec[i].iov_base + skip;
		iov[n].iov_len = st->vec[i].iov_len - skip;
		asked += iov[n].iov_len;
		n++;
	}
	size_t user = asked;
	/* For "read what is there" (weft_stream_read_send) the read-ahead
	 * buffer is allocated only once a read has filled the caller's buffer
	 * (more may be waiting), and given back after a read that did not
	 * need it: an idle line-protocol connection holds none.  readv
	 * requests (PDUs in small vectors) always read ahead. */
	if (user < WEFT__READAHEAD && (s->ra_wanted || !st->some)) {
		if (s->ra == NULL)
			s->ra = malloc(WEFT__READAHEAD);
		if (s->ra != NULL) {
			iov[n].iov_base = s->ra;
			iov[n].iov_len = WEFT__READAHEAD;
			asked += WEFT__READAHEAD;
			n++;
		}
	}
	*ret_asked = asked;
	ssize_t got = s->ops->readv(s, iov, n);
	if (got <= 0)
		return got;
	if ((size_t)got >= user) {
		s->ra_wanted = true;
	} else if (st->some && s->ra_len == 0) {
		s->ra_wanted = false;
		free(s->ra);
		s->ra = NULL;
	}
	size_t to_user = (size_t)got < user ? (size_t)got : user;
	st->total += to_user;
	vector_advance(st, to_user);
	if ((size_t)got > user) {
		s->ra_off = 0;
		s->ra_len = (size_t)got - user;
	}
	return got;
}

/* Serve one read request.  True if it completed (its callback may have
 * started the next one), false if it waits for data or yielded. */
static bool serve_reader(weft_stream *s, weft_req *req, size_t *budget_left)
{
	struct readv_state *st = weft_req_state(req);
	size_t budget = *budget_left;
	bool completed = true;
	for (;;) {
		if (!st->have_vector || st->idx >= st->count) {
			if (st->some) {
				weft_req_done(req); /* the buffer is full */
				break;
			}
			st->have_vector = false;
			if (!ask_next(s, req, st))
				break; /* completed, or closed: the caller looks */
			/* Skip a vector of empty buffers straight to the next ask. */
			if (vector_advance(st, 0))
				continue;
		}
		bool full = fill_from_readahead(s, st);
		weft_req_set_progress(req, st->total);
		if (st->some && st->total > 0) {
			weft_req_done(req); /* read what is there */
			break;
		}
		if (full)
			continue;
		if (s->drained || budget == 0) {
			if (budget == 0)
				stream_kick(s); /* yield: let other fds run, come back */
			completed = false;
			break;
		}
		size_t asked;
		ssize_t got = read_once(s, st, &asked);
		weft_req_set_progress(req, st->total);
		if (got == -EAGAIN || got == -EWOULDBLOCK || got == -EINTR) {
			s->drained = got != -EINTR;
			continue;
		}
		if (got == 0) {
			weft_req_error(req, EPIPE); /* the end of the stream */
			break;
		}
		if (got < 0) {
			weft_req_error(req, (int)got);
			break;
		}
		if ((size_t)got < asked && stream_buffered(s) == s->ra_len)
			s->drained = true; /* short read: the transport is empty */
		budget = (size_t)got >= budget ? 0 : budget - (size_t)got;
	}
	*budget_left = budget;
	return completed;
}

/* Serve the reader, and the readers its callbacks start (an echo loop reads
 * again from its read callback), within one budget per wake-up — as libuv
 * reads repeatedly on one readiness event. */
__attribute__((noinline)) /* read_once's vector stays off the registered reader's path */
static void serve_read(weft_stream *s)
{
	size_t budget = READ_BUDGET;
	for (unsigned served = 0;; served++) {
		if (s->reader == NULL || s->closing)
			return;
		if (served == READS_PER_WAKEUP) {
			stream_kick(s); /* e.g. reading again after EPIPE: yield */
			return;
		}
		uint64_t seq = s->read_seq;
		if (!serve_reader(s, s->reader, &budget) || s->read_seq == seq)
			return;
		weft_defer_cancel(&s->kick); /* the successor is served here */
	}
}

/* ---- the registered reader -------------------------------------------------- */

int weft_stream_read_start(weft_stream *s, weft_stream_alloc_cb alloc, weft_stream_read_cb cb, void *data)
{
	if (s == NULL || alloc == NULL || cb == NULL || s->closing || s->hook != NULL)
		return -EINVAL;
	if (s->reader != NULL)
		return -EBUSY;
	s->rs_alloc = alloc;
	s->rs_cb = cb;
	s->rs_data = data;
	if (s->reading)
		return 0;
	s->reading = true;
	if (!s->drained || stream_buffered(s) > 0)
		stream_kick(s); /* maybe something to read now: look from the loop */
	else if (s->depth == 0)
		stream_update_watch(s);
	return 0;
}

int weft_stream_read_stop(weft_stream *s)
{
	if (s == NULL)
		return -EINVAL;
	s->reading = false;
	if (s->depth == 0 && !s->closing)
		stream_update_watch(s);
	return 0;
}

/* Serve the registered reader: a buffer from alloc, one read into it, the
 * callback — while data comes, within the per-wake-up limits. */
static void serve_read_started(weft_stream *s)
{
	size_t budget = READ_BUDGET;
	for (unsigned i = 0; s->reading && !s->closing; i++) {
		if (i == READS_PER_WAKEUP || budget == 0) {
			stream_kick(s); /* yield to the other fds, come back */
			return;
		}
		if (s->drained && stream_buffered(s) == 0)
			return; /* wait for readiness */
		void *buf = NULL;
		size_t len = 0;
		s->rs_alloc(s, WEFT__READAHEAD, &buf, &len, s->rs_data);
		if (!s->reading || s->closing)
			return;
		if (buf == NULL || len == 0) {
			s->reading = false; /* no room: the owner starts again later */
			return;
		}
		ssize_t n;
		bool short_read = false;
		if (s->ra_len > 0) {
			n = (ssize_t)(len < s->ra_len ? len : s->ra_len);
			memcpy(buf, s->ra + s->ra_off, (size_t)n);
			s->ra_off += (size_t)n;
			s->ra_len -= (size_t)n;
			if (s->ra_len == 0)
				s->ra_off = 0;
		} else {
			struct iovec iov = {buf, len};
			do
				n = s->ops->readv(s, &iov, 1);
			while (n == -EINTR);
			if (n == -EAGAIN || n == -EWOULDBLOCK) {
				s->drained = true;
				return;
			}
			if (n > 0 && (size_t)n < len && stream_buffered(s) == 0)
				s->drained = short_read = true; /* the transport is empty */
		}
		if (n <= 0)
			s->reading = false; /* the end (EPIPE) or an error: reported once */
		else
			budget = (size_t)n >= budget ? 0 : budget - (size_t)n;
		s->rs_cb(s, n == 0 ? -EPIPE : n, buf, s->rs_data);
		if (short_read)
			return; /* nothing left to read: wait for readiness */
	}
}

/* The stream's own write queue, made at the first queued write (an idle
 * connection does not pay for it).  NULL when out of memory. */
static weft_queue *stream_wqueue(weft_stream *s)
{
	if (s->wqueue == NULL && weft_queue_new(s->loop, "stream-write", &s->wqueue) < 0)
		return NULL;
	return s->wqueue;
}

/* ---- writev --------------------------------------------------------------- */

static void writev_cleanup(weft_req *req, weft_req_stage stage)
{
	struct writev_state *st = weft_req_state(req);
	(void)stage;
	op_unlink(&st->op);
	if (st->vec != st->inline_vec)
		free(st->vec);
	st->vec = NULL;
}

static weft_req *writev_new(weft_stream *s, const struct iovec *vector, size_t count, bool shutdown)
{
	if (s == NULL)
		return NULL;
	weft_req *req = weft_req_new(s->loop, sizeof(struct writev_state), shutdown ? "stream-shutdown" : "stream-writev");
	if (req == NULL)
		return NULL;
	struct writev_state *st = weft_req_state(req);
	if (s->closing) {
		weft_req_error(req, ECANCELED);
		return req;
	}
	if (!shutdown && (vector == NULL) != (count == 0)) {
		weft_req_error(req, EINVAL);
		return req;
	}
	st->shutdown = shutdown;
	st->fd = -1;
	if (count <= sizeof(st->inline_vec) / sizeof(st->inline_vec[0])) {
		st->vec = st->inline_vec;
	} else {
		st->vec = malloc(count * sizeof(*vector));
		if (weft_req_nomem(st->vec, req))
			return req;
	}
	if (count > 0)
		memcpy(st->vec, vector, count * sizeof(*vector));
	st->count = count;
	op_link(s, &st->op, req);
	weft_req_set_cleanup(req, writev_cleanup);
	return req;
}

__attribute__((noinline)) /* queued writes: off the registered reader's path */
static void serve_write(weft_stream *s)
{
	weft_req *req = s->writer;
	struct writev_state *st = weft_req_state(req);
	if (st->shutdown) {
		int r = s->ops->shutdown ? s->ops->shutdown(s) : -EOPNOTSUPP;
		if (r == -EAGAIN) {
			s->write_blocked = true; /* TLS: close_notify waits for room */
			return;
		}
		if (!weft_req_error(req, r))
			weft_req_done(req);
		return;
	}
	while (st->idx < st->count) {
		if (st->vec[st->idx].iov_len == 0) {
			st->idx++;
			continue;
		}
		size_t n = st->count - st->idx;
		int cnt = n > MAX_IOV ? MAX_IOV : (int)n;
		ssize_t w = st->fd >= 0 ? s->ops->sendfd(s, &st->vec[st->idx], cnt, st->fd)
			: s->ops->writev(s, &st->vec[st->idx], cnt);
		if (w == -EAGAIN || w == -EWOULDBLOCK) {
			s->write_blocked = true;
			return;
		}
		if (w == -EINTR)
			continue;
		if (w < 0) {
			weft_req_error(req, (int)w); /* EPIPE, ECONNRESET, ... */
			return;
		}
		st->fd = -1; /* on the first byte, never again on a retry */
		st->total += (uint64_t)w;
		weft_req_set_progress(req, st->total);
		size_t left = (size_t)w;
		while (left > 0) {
			struct iovec *v = &st->vec[st->idx];
			if (left < v->iov_len) {
				v->iov_base = (unsigned char *)v->iov_base + left;
				v->iov_len -= left;
				left = 0;
			} else {
				left -= v->iov_len;
				st->idx++;
			}
		}
	}
	weft_req_done(req);
}

/* Start a write that is now allowed to run (plain, or at a queue's head). */
static void write_start(weft_req *req, void *data)
{
	struct writev_state *st = weft_req_state(req);
	weft_stream *s = st->op.s;
	(void)data;
	if (s == NULL)
		return; /* detached by close: already canceled */
	if (s->writer != NULL && s->writer != req) {
		weft_req_error(req, EBUSY);
		return;
	}
	s->writer = req;
	s->write_blocked = false;
	/* Write at once, even from inside a readv callback (an echo server
	 * answers from next()): only the write side runs here, so the read
	 * side is never re-entered, and a completion inside _send is posted. */
	s->depth++;
	serve_write(s);
	if (--s->depth == 0) {
		if (s->closing)
			stream_finish_close(s);
		else
			stream_update_watch(s);
	}
}

weft_req *weft_stream_writev_send(weft_stream *s, const struct iovec *vector, size_t count)
{
	weft_req *req = writev_new(s, vector, count, false);
	if (req == NULL || !weft_req_is_in_progress(req))
		return req;
	/* Through the stream's own queue, so queued writes and a shutdown
	 * issued meanwhile wait behind it; but only if it is idle. */
	weft_queue *q = stream_wqueue(s);
	int r = q == NULL ? -ENOMEM
		: weft_queue_length(q) > 0 || s->writer != NULL ? -EBUSY
		: weft_queue_add_now(q, req, write_start, NULL);
	weft_req_error(req, r);
	return req;
}

ssize_t weft_stream_writev_recv(weft_req *req, int *perrno)
{
	int r = weft_req_simple_recv(req, perrno);
	if (r < 0)
		return r;
	return (ssize_t)weft_req_progress(req);
}

ssize_t weft_stream_try_writev(weft_stream *s, const struct iovec *vector, size_t count)
{
	if (s == NULL || (vector == NULL && count > 0))
		return -EINVAL;
	if (s->closing)
		return -EPIPE;
	if (s->writer != NULL || weft_queue_length(s->wqueue) > 0)
		return -EBUSY;
	size_t total = 0;
	if (count == 1) { /* the common case: one buffer, one syscall */
		ssize_t w;
		do
			w = s->ops->writev(s, vector, 1);
		while (w == -EINTR);
		return w;
	}
	while (count > 0) {
		int n = count > MAX_IOV ? MAX_IOV : (int)count;
		ssize_t w;
		do
			w = s->ops->writev(s, vector, n);
		while (w == -EINTR);
		if (w < 0)
			return total > 0 ? (ssize_t)total : w;
		total += (size_t)w;
		/* Stop at the first partial write: the transport is full. */
		size_t chunk = 0;
		for (int i = 0; i < n; i++)
			chunk += vector[i].iov_len;
		if ((size_t)w < chunk)
			break;
		vector += n;
		count -= (size_t)n;
	}
	return (ssize_t)total;
}

weft_req *weft_stream_writev_queue_send(weft_stream *s, weft_queue *queue, const struct iovec *vector, size_t count)
{
	weft_req *req = writev_new(s, vector, count, false);
	if (req == NULL || !weft_req_is_in_progress(req))
		return req;
	if (queue == NULL && (queue = stream_wqueue(s)) == NULL) {
		weft_req_error(req, ENOMEM);
		return req;
	}
	int r = weft_queue_add_now(queue, req, write_start, NULL);
	weft_req_error(req, r);
	return req;
}

weft_req *weft_stream_sendfd_send(weft_stream *s, int fd, const void *buf, size_t len)
{
	struct iovec iov = {(void *)buf, len};
	weft_req *req = writev_new(s, &iov, 1, false);
	if (req == NULL || !weft_req_is_in_progress(req))
		return req;
	if (fd < 0 || buf == NULL || len == 0) {
		weft_req_error(req, EINVAL);
		return req;
	}
	if (s->ops->sendfd == NULL) {
		weft_req_error(req, EOPNOTSUPP);
		return req;
	}
	struct writev_state *st = weft_req_state(req);
	st->fd = fd;
	weft_queue *q = stream_wqueue(s);
	weft_req_error(req, q == NULL ? -ENOMEM : weft_queue_add_now(q, req, write_start, NULL));
	return req;
}

ssize_t weft_stream_writev_queue_recv(weft_req *req, int *perrno)
{
	return weft_stream_writev_recv(req, perrno);
}

weft_req *weft_stream_shutdown_send(weft_stream *s)
{
	weft_req *req = writev_new(s, NULL, 0, true);
	if (req == NULL || !weft_req_is_in_progress(req))
		return req;
	weft_queue *q = stream_wqueue(s);
	int r = q == NULL ? -ENOMEM : weft_queue_add_now(q, req, write_start, NULL);
	weft_req_error(req, r);
	return req;
}
