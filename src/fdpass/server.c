/* The fdpass server: a Unix listening socket, connections driven with io
 * watchers (recvmsg/sendmsg directly: the stream layer carries no
 * ancillary data), calls answered in any order and responses written in
 * request order.
 *
 * Callback discipline: the request handler runs from the read loop; post
 * handlers and error reports run only from conn_after() — at the end of
 * the connection's own dispatch, or from its deferred call when a reply
 * came from elsewhere — never inside weft_fdpass_call_reply. */
#include "fdpass-private.h"
#include "dlist.h"
#include "sock-private.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define READS_PER_WAKEUP 16
#define EMFILE_PAUSE_MS 100

struct conn;

/* Small requests and responses live inside the call: one allocation per
 * call in the common case. */
#define CALL_INLINE_OUT 192
#define CALL_INLINE_FDS 4

struct weft_fdpass_call {
	struct weft__dnode link; /* conn->calls (in request order) or conn->done */
	struct conn *conn;
	uint32_t seq;
	int *fds; /* the request's descriptors (owned; -1: taken) */
	size_t nfds;
	bool answered;
	bool want_post;
	int post_err;
	void *post_data;
	int *rfds; /* the response's descriptors (borrowed) */
	size_t nrfds;
	uint8_t *out; /* the framed response */
	size_t out_len, out_off;
	/* not zeroed at creation: */
	int fds_inline[CALL_INLINE_FDS];
	int rfds_inline[CALL_INLINE_FDS];
	uint8_t out_inline[CALL_INLINE_OUT];
};

struct conn {
	struct weft__dnode link; /* srv->conns */
	weft_fdpass_server *srv;
	int fd;
	weft_io *io;
	weft_defer *after;
	struct weft__fdp_dec dec;
	weft_fdpass_limits lim;
	weft_fdpass_peer peer;
	struct weft__dlist calls; /* received, not yet fully answered on the wire */
	size_t ncalls;
	struct weft__dlist done;  /* sent (or failed): post handler pending */
	struct weft__dspare spare; /* finished calls kept for reuse */
	unsigned events;          /* what c->io watches now */
	unsigned dispatching;
	bool in_io;      /* inside conn_io_cb: conn_after runs at its end */
	bool peer_closed;
	bool dead;       /* socket closed */
	bool eof;        /* no more requests: the peer closed, or the server closes */
	bool write_wait; /* a response is blocked: WRITE watched */
	bool has_error;
	weft_fdpass_error error;
};

struct weft_fdpass_server {
	weft_loop *loop;
	int fd;
	weft_io *io;
	weft_timer *pause;
	weft_defer *finish;
	struct weft__bound_path bound;
	weft_fdpass_request_cb on_request;
	weft_fdpass_post_cb post;
	weft_fdpass_error_cb error;
	void *data;
	weft_fdpass_limits lim;
	struct weft__dlist conns;
	size_t nconns;
	bool closing;
	weft_fdpass_close_cb close_cb;
	void *close_data;
};

static void conn_after(struct conn *c);
static void conn_maybe_destroy(struct conn *c);
static void server_maybe_finish(weft_fdpass_server *srv);
static void accept_resume(weft_fdpass_server *srv);
static void finish_cb(weft_defer *d, void *data);

/* ---- calls -------------------------------------------------------------- */

static void call_close_fds(weft_fdpass_call *call)
{
	if (call->fds == NULL)
		return;
	for (size_t i = 0; i < call->nfds; i++)
		if (call->fds[i] >= 0)
			close(call->fds[i]);
	if (call->fds != call->fds_inline)
		free(call->fds);
	call->fds = NULL;
	call->nfds = 0;
}

/* Finished calls of a connection are kept for its next requests, up to
 * this many (they go with the connection). */
#define CALL_SPARES 4

static void call_free(weft_fdpass_call *call)
{
	call_close_fds(call);
	if (call->rfds != NULL && call->rfds != call->rfds_inline)
		free(call->rfds);
	if (call->out != NULL && call->out != call->out_inline)
		free(call->out);
	struct conn *c = call->conn;
	if (c == NULL || !weft__dspare_push(&c->spare, &call->link, CALL_SPARES))
		free(call);
}

/* A call for a new request: a spare one, or a new allocation, with the
 * fields before the inline arrays zero.  NULL when out of memory. */
static weft_fdpass_call *call_get(struct conn *c)
{
	struct weft__dnode *kept = weft__dspare_pop(&c->spare);
	weft_fdpass_call *call = kept != NULL ? weft__dlist_entry(kept, weft_fdpass_call, link)
					      : malloc(sizeof(*call));
	if (call == NULL)
		return NULL;
	/* Every field before the inline arrays, stored one by one (cheaper
	 * than a memset call for this size). */
	call->link.next = call->link.prev = NULL;
	call->conn = NULL;
	call->seq = 0;
	call->fds = NULL;
	call->nfds = 0;
	call->answered = false;
	call->want_post = false;
	call->post_err = 0;
	call->post_data = NULL;
	call->rfds = NULL;
	call->nrfds = 0;
	call->out = NULL;
	call->out_len = call->out_off = 0;
	return call;
}

static void conn_free_spares(struct conn *c)
{
	struct weft__dnode *n;
	while ((n = weft__dspare_pop(&c->spare)) != NULL)
		free(weft__dlist_entry(n, weft_fdpass_call, link));
}

/* ---- connections ---------------------------------------------------------- */

static void conn_set_error(struct conn *c, weft_fdpass_phase phase, weft_fdpass_op op, int err,
		const char *what)
{
	if (c->has_error)
		return;
	c->has_error = true;
	weft__fdp_error(&c->error, phase, op, err, what);
}

/* Close the socket.  Responses not yet out fail with err; calls not yet
 * answered stay valid (replying to them gives -ECONNRESET). */
static void conn_shutdown(struct conn *c, int err)
{
	if (c->dead)
		return;
	c->dead = true;
	c->eof = true;
	weft_io_free(c->io); /* removed from the loop before the fd closes */
	c->io = NULL;
	close(c->fd);
	c->fd = -1;
	/* A request handler on the stack still reads its payload from the
	 * decoder's buffer: then the decoder is cleared by conn_after. */
	if (c->dispatching == 0)
		weft__fdp_dec_clear(&c->dec);
	struct weft__dnode *n = c->calls.head;
	while (n != NULL) {
		weft_fdpass_call *call = weft__dlist_entry(n, weft_fdpass_call, link);
		n = n->next;
		if (!call->answered)
			continue;
		weft__dlist_remove(&c->calls, &call->link);
		c->ncalls--;
		if (call->want_post) {
			call->post_err = err ? err : ECONNRESET;
			weft__dlist_append(&c->done, &call->link);
		} else {
			call_free(call);
		}
	}
}

static void conn_fail(struct conn *c, weft_fdpass_phase phase, weft_fdpass_op op, int err, const char *what)
{
	conn_set_error(c, phase, op, err, what);
	conn_shutdown(c, err < 0 ? -err : err);
}

/* Watch what the connection needs: READ below max_pending while requests
 * may come, WRITE while a response is blocked.  The io is touched only
 * when that changes. */
static void conn_set_watch(struct conn *c, unsigned ev)
{
	int r = weft_io_modify(c->io, ev);
	if (r < 0) {
		conn_fail(c, WEFT_FDPASS_PHASE_READ_REQUEST, WEFT_FDPASS_OP_NONE, r, "watch");
		return;
	}
	c->events = ev;
}

static inline void conn_update_watch(struct conn *c)
{
	unsigned ev = (!c->eof && !c->peer_closed && c->ncalls < c->lim.max_pending ? WEFT_IO_READ : 0u) |
	              (c->write_wait ? WEFT_IO_WRITE : 0u);
	if (!c->dead && ev != c->events)
		conn_set_watch(c, ev);
}

/* Write answered responses from the head, in order. */
static void conn_flush(struct conn *c)
{
	while (!c->dead && c->calls.head != NULL) {
		weft_fdpass_call *call = weft__dlist_entry(c->calls.head, weft_fdpass_call, link);
		if (!call->answered)
			break;
		ssize_t w = weft__fdp_sendmsg(c->fd, call->out + call->out_off, call->out_len - call->out_off,
				call->rfds, call->out_off == 0 ? call->nrfds : 0);
		if (w == -EAGAIN) {
			if (!c->write_wait) {
				c->write_wait = true;
				conn_update_watch(c);
			}
			return;
		}
		if (w < 0) {
			conn_fail(c, WEFT_FDPASS_PHASE_WRITE_RESPONSE, WEFT_FDPASS_OP_SENDMSG, (int)w, NULL);
			return;
		}
		call->out_off += (size_t)w;
		if (call->out_off < call->out_len)
			continue;
		weft__dlist_pop(&c->calls);
		c->ncalls--;
		if (call->want_post) {
			call->post_err = 0;
			weft__dlist_append(&c->done, &call->link);
		} else {
			call_free(call);
		}
	}
	c->write_wait = false;
	if (c->dead)
		return;
	if (c->eof && c->calls.head == NULL)
		conn_shutdown(c, 0); /* finished: the peer closed, or the server closes */
	else
		conn_update_watch(c); /* WRITE off; READ back on below max_pending (no-op if unchanged) */
	if (!c->in_io && !c->eof && c->ncalls < c->lim.max_pending &&
	    (weft__fdp_dec_buffered(&c->dec) > 0 || c->peer_closed))
		weft_defer_schedule(c->after); /* buffered requests: from the loop */
}

static void conn_dispatch_msg(struct conn *c, struct weft__fdp_msg *m)
{
	weft_fdpass_server *srv = c->srv;
	weft_fdpass_call *call = NULL;
	bool request = m->hdr.type == WEFT__FDP_REQUEST;
	if (request)
		call = call_get(c);
	if (call != NULL) {
		call->conn = c;
		/* No descriptors: fds stays NULL (as the handler's message says) */
		if (m->hdr.nfds > 0)
			call->fds = m->hdr.nfds <= CALL_INLINE_FDS ? call->fds_inline : malloc(m->hdr.nfds * sizeof(int));
		if (m->hdr.nfds > 0 && call->fds == NULL) {
			call_free(call);
			call = NULL;
		}
	}
	if (call == NULL) {
		for (size_t i = 0; i < m->hdr.nfds; i++)
			close(m->fds[i]);
		if (request)
			conn_fail(c, WEFT_FDPASS_PHASE_READ_REQUEST, WEFT_FDPASS_OP_ALLOC, ENOMEM, NULL);
		else
			conn_fail(c, WEFT_FDPASS_PHASE_READ_REQUEST, WEFT_FDPASS_OP_DECODE, EPROTO, "not a request");
		return;
	}
	call->seq = m->hdr.seq;
	call->nfds = m->hdr.nfds;
	weft__fdp_copy_fds(call->fds, m->fds, call->nfds);
	weft__dlist_append(&c->calls, &call->link);
	c->ncalls++;
	weft_fdpass_msg req = {
		.buf = m->hdr.len ? (void *)m->payload : NULL,
		.len = m->hdr.len,
		.fds = call->fds,
		.nfds = call->nfds,
	};
	srv->on_request(srv, call, &req, &c->peer, srv->data);
}

/* Hand the requests already buffered to the handler, up to max_pending
 * calls in progress (the rest wait in the decoder: back-pressure). */
static void conn_check_end(struct conn *c);

static void conn_pump(struct conn *c)
{
	int r = 0;
	struct weft__fdp_msg m;
	while (!c->dead && !c->eof && c->ncalls < c->lim.max_pending &&
	       (r = weft__fdp_dec_next(&c->dec, &m)) == 1) {
		conn_dispatch_msg(c, &m);
		r = 0;
	}
	if (r < 0 && !c->dead)
		conn_fail(c, WEFT_FDPASS_PHASE_READ_REQUEST, WEFT_FDPASS_OP_DECODE, r, NULL);
}

/* The peer closed its side: serve what is buffered, then finish; bytes
 * that are not a whole request are a truncated one. */
static void conn_check_end(struct conn *c)
{
	if (!c->peer_closed || c->dead || c->eof)
		return;
	conn_pump(c);
	if (c->dead)
		return;
	if (weft__fdp_dec_buffered(&c->dec) == 0) {
		c->eof = true;
		conn_flush(c); /* closes now if nothing is pending */
	} else if (c->ncalls < c->lim.max_pending) {
		conn_fail(c, WEFT_FDPASS_PHASE_READ_REQUEST, WEFT_FDPASS_OP_EOF, EPIPE,
				"end of stream inside a request");
		return;
	}
	conn_update_watch(c); /* else: whole requests wait for back-pressure to lift */
}

static void conn_read(struct conn *c)
{
	if (weft__fdp_dec_buffered(&c->dec) > 0)
		conn_pump(c); /* requests left buffered by back-pressure go first */
	for (int i = 0; i < READS_PER_WAKEUP; i++) {
		if (c->dead || c->eof || c->peer_closed || c->ncalls >= c->lim.max_pending)
			break;
		size_t room = 0;
		weft_fdpass_op op = WEFT_FDPASS_OP_RECVMSG;
		struct weft__fdp_msg m;
		bool whole = false;
		ssize_t n = weft__fdp_read_into(&c->dec, c->fd, c->lim.max_fds, &room, &op, &m, &whole);
		if (n == -EAGAIN)
			break;
		if (n < 0) {
			conn_fail(c, WEFT_FDPASS_PHASE_READ_REQUEST, op, (int)n, NULL);
			return;
		}
		if (n == 0) {
			c->peer_closed = true;
			conn_check_end(c);
			return;
		}
		if (whole)
			conn_dispatch_msg(c, &m); /* the read was this one request (below max_pending: checked above) */
		else
			conn_pump(c);
		if (c->dead)
			return;
		if ((size_t)n < room)
			break; /* a short read: the socket is drained */
	}
	conn_update_watch(c);
}

static void conn_io_cb(weft_io *io, unsigned revents, void *data)
{
	struct conn *c = data;
	(void)io;
	c->dispatching++;
	c->in_io = true;
	if (revents & WEFT_IO_WRITE)
		conn_flush(c);
	if ((revents & (WEFT_IO_READ | WEFT_IO_HUP | WEFT_IO_ERR)) && !c->dead)
		conn_read(c);
	c->in_io = false;
	c->dispatching--;
	/* conn_after, unless in the common case: a live connection with
	 * nothing buffered and nothing to post */
	if (c->dead || c->eof || c->done.head != NULL || weft__fdp_dec_buffered(&c->dec) != 0)
		conn_after(c);
}

static void conn_after_cb(weft_defer *d, void *data)
{
	(void)d;
	conn_after(data);
}

/* Report the connection's error, run the post handlers due; destroy the
 * connection when nothing is left. */
static void conn_after(struct conn *c)
{
	if (c->dispatching)
		return;
	/* The common case: a live connection with nothing buffered, nothing
	 * to post. */
	if (!c->dead && !c->eof && c->done.head == NULL && weft__fdp_dec_buffered(&c->dec) == 0)
		return;
	weft_fdpass_server *srv = c->srv;
	if (c->dead)
		weft__fdp_dec_clear(&c->dec); /* descriptors still buffered are closed */
	c->dispatching++;
	if (!c->dead && !c->eof && c->ncalls < c->lim.max_pending && weft__fdp_dec_buffered(&c->dec) > 0) {
		conn_pump(c); /* back-pressure lifted */
		if (c->peer_closed)
			conn_check_end(c);
		else
			conn_update_watch(c);
	}
	c->dispatching--;
	if (!c->dead && c->eof && c->calls.head == NULL)
		conn_shutdown(c, 0); /* finished */
	c->dispatching++;
	if (c->has_error && c->dead) {
		c->has_error = false;
		if (srv->error)
			srv->error(srv, &c->error, srv->data);
	}
	struct weft__dnode *n;
	while ((n = weft__dlist_pop(&c->done)) != NULL) {
		weft_fdpass_call *call = weft__dlist_entry(n, weft_fdpass_call, link);
		if (srv->post)
			srv->post(srv, call->rfds, call->nrfds, call->post_err, call->post_data, srv->data);
		call_free(call);
	}
	c->dispatching--;
	conn_maybe_destroy(c);
}

static void conn_maybe_destroy(struct conn *c)
{
	if (!c->dead || c->dispatching || c->has_error || c->calls.head != NULL || c->done.head != NULL)
		return;
	weft_fdpass_server *srv = c->srv;
	weft__fdp_dec_clear(&c->dec);
	conn_free_spares(c);
	weft_defer_free(c->after);
	weft__dlist_remove(&srv->conns, &c->link);
	srv->nconns--;
	free(c);
	if (srv->closing)
		server_maybe_finish(srv);
	else if (srv->nconns < srv->lim.max_connections)
		accept_resume(srv); /* no-op unless accepting had stopped at the limit */
}

static int conn_new(weft_fdpass_server *srv, int fd)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		close(fd);
		return -ENOMEM;
	}
	c->srv = srv;
	c->fd = fd;
	c->lim = srv->lim;
	weft__fdp_dec_init(&c->dec, c->lim.max_payload, c->lim.max_fds, weft__fdp_close_fd, NULL);
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0) {
		c->peer.pid = cred.pid;
		c->peer.uid = cred.uid;
		c->peer.gid = cred.gid;
	} else {
		c->peer.pid = -1;
		c->peer.uid = (uid_t)-1;
		c->peer.gid = (gid_t)-1;
	}
	int r = weft_io_new(srv->loop, fd, conn_io_cb, c, &c->io);
	if (r == 0)
		r = weft_defer_new(srv->loop, conn_after_cb, c, &c->after);
	if (r == 0)
		r = weft_io_start(c->io, WEFT_IO_READ);
	if (r < 0) {
		weft_io_free(c->io);
		weft_defer_free(c->after);
		close(fd);
		free(c);
		return r;
	}
	c->events = WEFT_IO_READ;
	weft__dlist_append(&srv->conns, &c->link);
	srv->nconns++;
	return 0;
}

/* ---- answering ------------------------------------------------------------- */

/* A call's response went out whole from call_answer: the call leaves the
 * queue (for its post handler, or freed) and the calls answered behind it
 * follow. */
static void call_sent(weft_fdpass_call *call, const int *fds, size_t nfds, bool want_post, void *post_data)
{
	struct conn *c = call->conn;
	call_close_fds(call); /* request descriptors nobody took */
	weft__dlist_pop(&c->calls);
	c->ncalls--;
	if (want_post) {
		call->rfds = call->rfds_inline; /* nfds <= CALL_INLINE_FDS */
		weft__fdp_copy_fds(call->rfds, fds, nfds);
		call->nrfds = nfds;
		call->answered = true;
		call->want_post = true;
		call->post_data = post_data;
		call->post_err = 0;
		weft__dlist_append(&c->done, &call->link);
	} else {
		call_free(call);
	}
	if (c->calls.head == NULL && !c->eof) {
		/* Nothing behind it (what conn_flush would find): READ back on
		 * below max_pending, buffered requests served from the loop.
		 * Inside the connection's own dispatch (a reply from the request
		 * handler) the read loop does both when the handler returns. */
		if (!c->in_io) {
			conn_update_watch(c);
			if (c->ncalls < c->lim.max_pending && (weft__fdp_dec_buffered(&c->dec) > 0 || c->peer_closed))
				weft_defer_schedule(c->after);
		}
	} else {
		c->dispatching++;
		conn_flush(c); /* what follows; a finished connection closes */
		c->dispatching--;
	}
	if (!c->in_io && (c->done.head != NULL || c->dead))
		weft_defer_schedule(c->after); /* posts and destruction run from the loop */
}

/* Queue an answer that did not go out whole at once: r, an error found
 * already; framed, the response is in out_inline; sent, the bytes of it
 * that went out; blocked, the socket said EAGAIN.  Out of line: the common
 * answer (sent whole) stays in call_answer. */
static __attribute__((noinline)) int call_queue(weft_fdpass_call *call, uint8_t type, const void *buf,
		size_t len, const int *fds, size_t nfds, void *post_data, int r, bool framed, size_t sent,
		bool blocked)
{
	struct conn *c = call->conn;
	bool want_post = type == WEFT__FDP_RESPONSE && c->srv->post != NULL;
	if (r == 0) {
		call->out_len = WEFT__FDP_HDR + len;
		call->out = call->out_len <= CALL_INLINE_OUT ? call->out_inline : malloc(call->out_len);
		call->rfds = nfds <= CALL_INLINE_FDS ? call->rfds_inline : malloc(nfds * sizeof(int));
		if (call->out == NULL || call->rfds == NULL)
			r = -ENOMEM;
	}
	if (r < 0) {
		weft__dlist_remove(&c->calls, &call->link);
		c->ncalls--;
		call_free(call);
		if (!c->dead)
			conn_update_watch(c); /* a slot for another request */
		conn_maybe_destroy(c);
		return r;
	}
	if (!framed) {
		struct weft__fdp_hdr hdr = {.type = type, .nfds = (uint16_t)nfds, .len = (uint32_t)len, .seq = call->seq};
		weft__fdp_put_header(call->out, &hdr);
		if (len > 0)
			memcpy(call->out + WEFT__FDP_HDR, buf, len);
	}
	call->out_off = sent;
	weft__fdp_copy_fds(call->rfds, fds, nfds);
	call->nrfds = nfds;
	call->answered = true;
	call->want_post = want_post;
	call->post_data = post_data;
	call_close_fds(call); /* request descriptors nobody took */
	if (blocked) {
		c->write_wait = true;
		conn_update_watch(c);
	} else if (c->calls.head == &call->link) {
		c->dispatching++;
		conn_flush(c);
		c->dispatching--;
	}
	if (!c->in_io && (c->done.head != NULL || c->dead))
		weft_defer_schedule(c->after); /* posts and destruction run from the loop */
	return 0;
}

static int call_answer(weft_fdpass_call *call, uint8_t type, const void *buf, size_t len,
		const int *fds, size_t nfds, void *post_data)
{
	struct conn *c = call->conn;
	int r = 0;
	if (c->dead)
		r = -ECONNRESET;
	else if (len > c->lim.max_payload)
		r = -EMSGSIZE;
	else if (nfds > c->lim.max_fds)
		r = -ETOOMANYREFS;
	if (r == 0 && c->calls.head == &call->link && !c->write_wait && WEFT__FDP_HDR + len <= CALL_INLINE_OUT &&
	    nfds <= CALL_INLINE_FDS) {
		/* First in line and nothing blocked: framed in the call's inline
		 * buffer and sent at once, as one buffer (a single segment is the
		 * kernel's cheapest import; a header and a payload vector cost
		 * more there than the copy here).  Only sizes that fit the inline
		 * storage, so keeping what did not go out cannot fail. */
		struct weft__fdp_hdr hdr = {.type = type, .nfds = (uint16_t)nfds, .len = (uint32_t)len, .seq = call->seq};
		weft__fdp_put_header(call->out_inline, &hdr);
		if (len > 0)
			memcpy(call->out_inline + WEFT__FDP_HDR, buf, len);
		ssize_t w = weft__fdp_sendmsg(c->fd, call->out_inline, WEFT__FDP_HDR + len, fds, nfds);
		if (w == (ssize_t)(WEFT__FDP_HDR + len)) {
			call_sent(call, fds, nfds, type == WEFT__FDP_RESPONSE && c->srv->post != NULL, post_data);
			return 0;
		}
		/* Part of it, or nothing (EAGAIN, an error): the rest is queued
		 * and conn_flush carries on (the descriptors went with the first
		 * byte, if it went); after EAGAIN it waits for WRITE. */
		return call_queue(call, type, buf, len, fds, nfds, post_data, 0, true, w > 0 ? (size_t)w : 0,
				w == -EAGAIN);
	}
	return call_queue(call, type, buf, len, fds, nfds, post_data, r, false, 0, false);
}


/* Forget a call that cannot be answered (the caller's arguments were bad):
 * its slot frees up and reading may resume. */
static void call_drop(weft_fdpass_call *call)
{
	struct conn *c = call->conn;
	weft__dlist_remove(&c->calls, &call->link);
	c->ncalls--;
	call_free(call);
	if (!c->dead)
		conn_update_watch(c);
	conn_maybe_destroy(c);
}
int weft_fdpass_call_reply(weft_fdpass_call *call, const void *buf, size_t len, const int *fds,
		size_t nfds, void *post_data)
{
	if (call == NULL)
		return -EINVAL;
	bool bad = (len > 0 && buf == NULL) || (nfds > 0 && fds == NULL);
	for (size_t i = 0; !bad && i < nfds; i++)
		bad = fds[i] < 0;
	if (bad) {
		call_drop(call); /* a bad answer ends the call unanswered */
		return -EINVAL;
	}
	return call_answer(call, WEFT__FDP_RESPONSE, buf, len, fds, nfds, post_data);
}

int weft_fdpass_call_fail(weft_fdpass_call *call, int err)
{
	if (call == NULL)
		return -EINVAL;
	if (err < 0)
		err = -err;
	if (err < 1 || err > 4095) {
		call_drop(call); /* a bad answer ends the call unanswered */
		return -EINVAL;
	}
	uint8_t be[4] = {(uint8_t)(err >> 24), (uint8_t)(err >> 16), (uint8_t)(err >> 8), (uint8_t)err};
	return call_answer(call, WEFT__FDP_ERROR, be, sizeof(be), NULL, 0, NULL);
}

const weft_fdpass_peer *weft_fdpass_call_peer(const weft_fdpass_call *call)
{
	return call ? &call->conn->peer : NULL;
}

/* ---- listening --------------------------------------------------------------- */

static void server_report(weft_fdpass_server *srv, weft_fdpass_phase phase, weft_fdpass_op op, int err)
{
	if (srv->error == NULL)
		return;
	weft_fdpass_error e;
	weft__fdp_error(&e, phase, op, err, NULL);
	srv->error(srv, &e, srv->data);
}

static void accept_resume(weft_fdpass_server *srv)
{
	if (srv->io != NULL && !weft_timer_active(srv->pause))
		weft_io_start(srv->io, WEFT_IO_READ);
}

static void pause_done(weft_timer *t, void *data)
{
	(void)t;
	weft_fdpass_server *srv = data;
	if (srv->nconns < srv->lim.max_connections)
		accept_resume(srv);
}

static void server_readable(weft_io *io, unsigned revents, void *data)
{
	weft_fdpass_server *srv = data;
	(void)io;
	(void)revents;
	for (int i = 0; i < 64 && !srv->closing; i++) {
		if (srv->nconns >= srv->lim.max_connections) {
			weft_io_stop(srv->io); /* resumed when a connection ends */
			return;
		}
		int fd;
		do
			fd = accept4(srv->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		while (fd < 0 && (errno == EINTR || errno == ECONNABORTED));
		if (fd < 0) {
			int err = errno;
			if (err == EAGAIN || err == EWOULDBLOCK)
				return;
			if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
				weft_io_stop(srv->io);
				weft_timer_start(srv->pause, EMFILE_PAUSE_MS, 0);
			}
			server_report(srv, WEFT_FDPASS_PHASE_ACCEPT, WEFT_FDPASS_OP_ACCEPT, err);
			return;
		}
		int r = conn_new(srv, fd);
		if (r < 0)
			server_report(srv, WEFT_FDPASS_PHASE_ACCEPT, WEFT_FDPASS_OP_ALLOC, r);
	}
}

static int listen_fail(weft_fdpass_error *ret_error, weft_fdpass_op op, int err)
{
	if (ret_error)
		weft__fdp_error(ret_error, WEFT_FDPASS_PHASE_LISTEN, op, err, NULL);
	return err < 0 ? err : -err;
}

int weft_fdpass_server_new(weft_loop *loop, const weft_addr *addr, const weft_fdpass_server_opts *opts,
		weft_fdpass_request_cb on_request, void *data, weft_fdpass_server **ret_srv,
		weft_fdpass_error *ret_error)
{
	static const weft_fdpass_server_opts defaults;
	if (opts == NULL)
		opts = &defaults;
	weft_fdpass_limits lim;
	if (loop == NULL || addr == NULL || on_request == NULL || ret_srv == NULL ||
	    addr->kind != WEFT_ADDR_UNIX || addr->u.sa.sa_family != AF_UNIX ||
	    weft__fdp_limits(&opts->limits, &lim) < 0)
		return listen_fail(ret_error, WEFT_FDPASS_OP_NONE, -EINVAL);
	weft_fdpass_server *srv = calloc(1, sizeof(*srv));
	if (srv == NULL)
		return listen_fail(ret_error, WEFT_FDPASS_OP_ALLOC, -ENOMEM);
	srv->loop = loop;
	srv->on_request = on_request;
	srv->post = opts->post;
	srv->error = opts->error;
	srv->data = data;
	srv->lim = lim;
	weft_fdpass_op op = WEFT_FDPASS_OP_SOCKET;
	int r;
	srv->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (srv->fd < 0) {
		r = -errno;
		goto fail;
	}
	op = WEFT_FDPASS_OP_BIND;
	r = weft__bind(srv->fd, addr, opts->replace_stale, &srv->bound);
	if (r < 0)
		goto fail;
	if (opts->mode != 0 && srv->bound.set && chmod(srv->bound.path, opts->mode) < 0) {
		r = -errno;
		goto fail;
	}
	op = WEFT_FDPASS_OP_LISTEN;
	if (listen(srv->fd, opts->backlog > 0 ? opts->backlog : SOMAXCONN) < 0) {
		r = -errno;
		goto fail;
	}
	op = WEFT_FDPASS_OP_ALLOC;
	r = weft_io_new(loop, srv->fd, server_readable, srv, &srv->io);
	if (r == 0)
		r = weft_timer_new(loop, pause_done, srv, &srv->pause);
	if (r == 0)
		r = weft_defer_new(loop, finish_cb, srv, &srv->finish);
	if (r == 0)
		r = weft_io_start(srv->io, WEFT_IO_READ);
	if (r < 0)
		goto fail;
	*ret_srv = srv;
	return 0;
fail:
	weft_io_free(srv->io);
	weft_timer_free(srv->pause);
	weft_defer_free(srv->finish);
	weft__unlink_bound(&srv->bound);
	if (srv->fd >= 0)
		close(srv->fd);
	free(srv);
	return listen_fail(ret_error, op, r);
}

int weft_fdpass_server_adopt(weft_fdpass_server *srv, int fd)
{
	if (srv == NULL || fd < 0) {
		if (fd >= 0)
			close(fd);
		return -EINVAL;
	}
	if (srv->closing || srv->nconns >= srv->lim.max_connections) {
		close(fd);
		return -EBUSY;
	}
	int r = weft__fd_prepare(fd);
	if (r < 0) {
		close(fd);
		return r;
	}
	return conn_new(srv, fd);
}

int weft_fdpass_server_addr(const weft_fdpass_server *srv, weft_addr *ret_addr)
{
	if (srv == NULL || ret_addr == NULL || srv->fd < 0)
		return -EINVAL;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(srv->fd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	return weft_addr_from_sockaddr((struct sockaddr *)&ss, len, WEFT_ADDR_UNIX, ret_addr);
}

size_t weft_fdpass_server_connections(const weft_fdpass_server *srv)
{
	return srv ? srv->nconns : 0;
}

int weft_fdpass_server_set_limits(weft_fdpass_server *srv, const weft_fdpass_limits *limits)
{
	weft_fdpass_limits lim;
	if (srv == NULL || weft__fdp_limits(limits, &lim) < 0)
		return -EINVAL;
	srv->lim = lim;
	return 0;
}

static void finish_cb(weft_defer *d, void *data)
{
	weft_fdpass_server *srv = data;
	(void)d;
	weft_defer_free(srv->finish);
	weft_fdpass_close_cb cb = srv->close_cb;
	void *cb_data = srv->close_data;
	free(srv);
	if (cb)
		cb(cb_data);
}

static void server_maybe_finish(weft_fdpass_server *srv)
{
	if (srv->nconns == 0)
		weft_defer_schedule(srv->finish);
}

void weft_fdpass_server_close(weft_fdpass_server *srv, weft_fdpass_close_cb cb, void *data)
{
	if (srv == NULL || srv->closing)
		return;
	srv->closing = true;
	srv->close_cb = cb;
	srv->close_data = data;
	weft_io_free(srv->io);
	srv->io = NULL;
	weft_timer_free(srv->pause);
	srv->pause = NULL;
	close(srv->fd);
	srv->fd = -1;
	weft__unlink_bound(&srv->bound);
	struct weft__dnode *n = srv->conns.head;
	while (n != NULL) {
		struct conn *c = weft__dlist_entry(n, struct conn, link);
		n = n->next;
		c->eof = true; /* no more requests */
		if (!c->dead && !c->dispatching) {
			c->dispatching++;
			conn_flush(c); /* closes it if nothing is pending */
			conn_update_watch(c);
			c->dispatching--;
		}
		weft_defer_schedule(c->after);
	}
	server_maybe_finish(srv);
}
