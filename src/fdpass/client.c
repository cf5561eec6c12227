/* The fdpass client: one connection, requests pipelined in order, each a
 * weft_req.  A request's bytes and descriptors wait in a slot on the send
 * queue until written, then on the wait queue until their response comes.
 * A request that completes early (timeout, cancel) leaves its slot behind
 * if a byte of it went out — the rest is still written and the response
 * is dropped — and takes it away otherwise. */
#include "fdpass-private.h"
#include "dlist.h"
#include "sock-private.h"

#include <errno.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define READS_PER_WAKEUP 16

/* Slots for small requests (framed size up to SLOT_SMALL, at most
 * SLOT_INLINE_FDS descriptors) have a fixed size and are kept for reuse,
 * up to SLOT_SPARES per client. */
#define SLOT_SMALL 256u
#define SLOT_INLINE_FDS 4u
#define SLOT_SPARES 4u

struct request_state;

struct slot {
	struct weft__dnode link; /* c->sendq, c->waitq or c->spare */
	weft_req *req;          /* NULL: abandoned */
	struct request_state *st; /* req's state (when req is not NULL) */
	bool sent;              /* on the wait queue */
	bool small;             /* data has SLOT_SMALL bytes: reusable */
	uint32_t seq;
	int *fds;               /* the request's descriptors (borrowed): fds_inline or allocated */
	size_t nfds;
	uint8_t *out;           /* the framed request: data */
	size_t out_len, out_off;
	int fds_inline[SLOT_INLINE_FDS];
	alignas(max_align_t) uint8_t data[];
};

struct weft_fdpass_client {
	weft_loop *loop;
	int fd;
	weft_io *io;
	weft_defer *after; /* a failure found inside request_send is reported from the loop */
	struct weft__fdp_dec dec;
	weft_fdpass_limits lim;
	uint64_t timeout_ms;
	struct weft__dlist sendq;
	struct weft__dlist waitq;
	struct weft__dspare spare; /* small slots kept for reuse */
	size_t nslots;
	bool ref;          /* the io watcher keeps the loop alive (nslots > 0) */
	uint32_t next_seq;
	unsigned dispatching;
	bool dead;
	bool freed;
	bool write_wait;
	bool has_error;
	weft_fdpass_error error; /* why the connection failed */
};

struct request_state {
	weft_fdpass_client *c;
	struct slot *slot;
	weft_fdpass_phase phase; /* where the request was when it completed */
	bool has_error;
	weft_fdpass_error error;
	weft_fdpass_msg msg;
	bool handed;
};

static void client_destroy(weft_fdpass_client *c);

/* Forget the request's descriptors (borrowed: not closed). */
static void slot_drop_fds(struct slot *s)
{
	if (s->fds != NULL && s->fds != s->fds_inline)
		free(s->fds);
	s->fds = NULL;
	s->nfds = 0;
}

static inline void slot_free(weft_fdpass_client *c, struct slot *s)
{
	slot_drop_fds(s);
	if (!s->small || !weft__dspare_push(&c->spare, &s->link, SLOT_SPARES))
		free(s);
}

/* A zeroed slot for a request of framed size out_len with nfds
 * descriptors, or NULL. */
static struct slot *slot_get(weft_fdpass_client *c, size_t out_len, size_t nfds)
{
	bool small = out_len <= SLOT_SMALL;
	struct slot *s;
	struct weft__dnode *kept = small ? weft__dspare_pop(&c->spare) : NULL;
	if (kept != NULL) {
		s = weft__dlist_entry(kept, struct slot, link);
	} else {
		s = malloc(sizeof(*s) + (small ? SLOT_SMALL : out_len));
		if (s == NULL)
			return NULL;
	}
	/* Every field before the inline arrays, stored one by one (cheaper
	 * than a memset call for this size). */
	s->link.next = s->link.prev = NULL;
	s->req = NULL;
	s->st = NULL;
	s->sent = false;
	s->small = small;
	s->seq = 0;
	s->fds = NULL;
	s->nfds = 0;
	s->out = s->data;
	s->out_len = out_len;
	s->out_off = 0;
	if (nfds > 0) {
		s->fds = nfds <= SLOT_INLINE_FDS ? s->fds_inline : malloc(nfds * sizeof(int));
		if (s->fds == NULL) {
			slot_free(c, s);
			return NULL;
		}
	}
	return s;
}

static void free_spares(weft_fdpass_client *c)
{
	struct weft__dnode *n;
	while ((n = weft__dspare_pop(&c->spare)) != NULL)
		free(weft__dlist_entry(n, struct slot, link));
}

static struct weft__dlist *slot_queue(weft_fdpass_client *c, const struct slot *s)
{
	return s->sent ? &c->waitq : &c->sendq;
}

static void slot_remove(weft_fdpass_client *c, struct slot *s)
{
	weft__dlist_remove(slot_queue(c, s), &s->link);
	c->nslots--;
	slot_free(c, s);
}

/* Take the first slot of a queue off (NULL if empty); the caller frees it. */
static struct slot *slot_pop(weft_fdpass_client *c, struct weft__dlist *q)
{
	struct weft__dnode *n = weft__dlist_pop(q);
	if (n == NULL)
		return NULL;
	c->nslots--;
	return weft__dlist_entry(n, struct slot, link);
}

static void client_update_ref(weft_fdpass_client *c)
{
	bool ref = c->nslots > 0;
	if (c->io && ref != c->ref) {
		weft_io_set_ref(c->io, ref);
		c->ref = ref;
	}
}

/* ---- failure -------------------------------------------------------------- */

static void set_conn_error(weft_fdpass_client *c, weft_fdpass_phase phase, weft_fdpass_op op, int err,
		const char *what)
{
	if (c->has_error)
		return;
	c->has_error = true;
	weft__fdp_error(&c->error, phase, op, err, what);
}

/* Close the socket (no callback). */
static void client_close_socket(weft_fdpass_client *c)
{
	if (c->fd < 0)
		return;
	c->dead = true;
	weft_io_free(c->io); /* removed from the loop before the fd closes */
	c->io = NULL;
	close(c->fd);
	c->fd = -1;
	weft__fdp_dec_clear(&c->dec);
}

/* Fail every request still waiting with the connection's error: their
 * callbacks run now (a callback may free the client: c->freed). */
static void fail_requests(weft_fdpass_client *c)
{
	struct weft__dlist *queues[2] = {&c->waitq, &c->sendq};
	for (int q = 0; q < 2; q++) {
		struct slot *s;
		while (!c->freed && (s = slot_pop(c, queues[q])) != NULL) {
			weft_req *req = s->req;
			slot_free(c, s);
			if (req == NULL)
				continue;
			struct request_state *st = weft_req_state(req);
			st->slot = NULL;
			st->has_error = true;
			st->error = c->error;
			st->error.phase = q == 0 ? WEFT_FDPASS_PHASE_READ_RESPONSE : WEFT_FDPASS_PHASE_WRITE_REQUEST;
			weft_req_error(req, c->error.err);
		}
	}
}

static void client_fail(weft_fdpass_client *c, weft_fdpass_phase phase, weft_fdpass_op op, int err,
		const char *what)
{
	set_conn_error(c, phase, op, err, what);
	client_close_socket(c);
	/* The requests fail from the loop, or at the end of the current
	 * dispatch (client_io_cb), never inside the caller. */
	weft_defer_schedule(c->after);
}

static void after_cb(weft_defer *d, void *data)
{
	weft_fdpass_client *c = data;
	(void)d;
	c->dispatching++;
	fail_requests(c);
	c->dispatching--;
	if (c->freed)
		client_destroy(c);
}

/* ---- writing ------------------------------------------------------------------ */

static void client_watch(weft_fdpass_client *c, bool write)
{
	if (c->dead || c->write_wait == write)
		return;
	c->write_wait = write;
	int r = weft_io_modify(c->io, WEFT_IO_READ | (write ? WEFT_IO_WRITE : 0));
	if (r < 0)
		client_fail(c, WEFT_FDPASS_PHASE_WRITE_REQUEST, WEFT_FDPASS_OP_NONE, r, "watch");
}

static void client_flush(weft_fdpass_client *c)
{
	while (!c->dead && c->sendq.head != NULL) {
		struct slot *s = weft__dlist_entry(c->sendq.head, struct slot, link);
		ssize_t w = weft__fdp_sendmsg(c->fd, s->out + s->out_off, s->out_len - s->out_off, s->fds,
				s->out_off == 0 ? s->nfds : 0);
		if (w == -EAGAIN) {
			client_watch(c, true);
			return;
		}
		if (w < 0) {
			client_fail(c, WEFT_FDPASS_PHASE_WRITE_REQUEST, WEFT_FDPASS_OP_SENDMSG, (int)w, NULL);
			return;
		}
		s->out_off += (size_t)w;
		if (s->out_off < s->out_len)
			continue;
		/* Out whole: the descriptors are no longer needed. */
		slot_drop_fds(s);
		weft__dlist_pop(&c->sendq);
		weft__dlist_append(&c->waitq, &s->link);
		s->sent = true;
	}
	client_watch(c, false);
}

/* ---- reading ---------------------------------------------------------------------- */

static void close_msg_fds(const int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		close(fds[i]);
}

/* After a request's callback ran: the loop reference follows the requests
 * waiting — updated only now, so a callback that sends the next request
 * leaves it as it was.  Returns false if the client failed or was freed. */
static bool client_after_delivery(weft_fdpass_client *c)
{
	if (c->freed)
		return false;
	client_update_ref(c);
	return !c->dead;
}

/* One response: to the oldest request sent.  Returns false if the client
 * failed or was freed. */
static bool client_deliver(weft_fdpass_client *c, struct weft__fdp_msg *m)
{
	struct slot *s = c->waitq.head ? weft__dlist_entry(c->waitq.head, struct slot, link) : NULL;
	if (s == NULL || s->seq != m->hdr.seq || m->hdr.type == WEFT__FDP_REQUEST) {
		close_msg_fds(m->fds, m->hdr.nfds);
		client_fail(c, WEFT_FDPASS_PHASE_READ_RESPONSE, WEFT_FDPASS_OP_DECODE, EPROTO,
				s == NULL ? "response without a request" : "unexpected message");
		return false;
	}
	weft_req *req = s->req;
	struct request_state *st = s->st;
	slot_free(c, slot_pop(c, &c->waitq));
	if (req == NULL) { /* abandoned: drop the answer */
		client_update_ref(c);
		close_msg_fds(m->fds, m->hdr.nfds);
		return true;
	}
	st->slot = NULL;
	if (m->hdr.type == WEFT__FDP_ERROR) {
		const uint8_t *p = m->payload;
		int err = (int)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
		if (err < 1 || err > 4095)
			err = EPROTO;
		st->has_error = true;
		weft__fdp_error(&st->error, WEFT_FDPASS_PHASE_HANDLE_REQUEST, WEFT_FDPASS_OP_HANDLER, err,
				"the server's handler");
		weft_req_error(req, err);
		return client_after_delivery(c);
	}
	/* One block: the descriptors, then the payload (weft_fdpass_msg_clear
	 * frees it through whichever pointer comes first). */
	size_t fdbytes = m->hdr.nfds * sizeof(int);
	uint8_t *block = NULL;
	if (fdbytes + m->hdr.len > 0) {
		block = weft__fdp_block_get(fdbytes + m->hdr.len);
		if (block == NULL) {
			close_msg_fds(m->fds, m->hdr.nfds);
			st->has_error = true;
			weft__fdp_error(&st->error, WEFT_FDPASS_PHASE_READ_RESPONSE, WEFT_FDPASS_OP_ALLOC, ENOMEM, NULL);
			weft_req_error(req, ENOMEM);
			return client_after_delivery(c);
		}
		weft__fdp_copy_fds((int *)(void *)block, m->fds, m->hdr.nfds);
		if (m->hdr.len > 0)
			memcpy(block + fdbytes, m->payload, m->hdr.len);
	}
	st->msg = (weft_fdpass_msg){
		.buf = m->hdr.len > 0 ? block + fdbytes : NULL,
		.len = m->hdr.len,
		.fds = fdbytes > 0 ? (int *)(void *)block : NULL,
		.nfds = m->hdr.nfds,
	};
	weft_req_done(req);
	return client_after_delivery(c);
}

static void client_read(weft_fdpass_client *c)
{
	for (int i = 0; i < READS_PER_WAKEUP && !c->dead && !c->freed; i++) {
		size_t room = 0;
		weft_fdpass_op op = WEFT_FDPASS_OP_RECVMSG;
		struct weft__fdp_msg m;
		bool whole = false;
		ssize_t n = weft__fdp_read_into(&c->dec, c->fd, c->lim.max_fds, &room, &op, &m, &whole);
		if (n == -EAGAIN)
			return;
		if (n < 0) {
			client_fail(c, WEFT_FDPASS_PHASE_READ_RESPONSE, op, (int)n, NULL);
			return;
		}
		if (n == 0) {
			bool inside = weft__fdp_dec_buffered(&c->dec) > 0;
			client_fail(c, WEFT_FDPASS_PHASE_READ_RESPONSE, WEFT_FDPASS_OP_EOF,
					inside ? EPIPE : ECONNRESET,
					inside ? "end of stream inside a response" : "the server closed the connection");
			return;
		}
		int r = 0;
		if (whole) /* the read was this one message: nothing else to take out */
			r = client_deliver(c, &m) ? 0 : 1;
		else
			while (r == 0 && (r = weft__fdp_dec_next(&c->dec, &m)) == 1)
				r = client_deliver(c, &m) ? 0 : 1;
		if (r == 1)
			return; /* failed or freed */
		if (r < 0) {
			client_fail(c, WEFT_FDPASS_PHASE_READ_RESPONSE, WEFT_FDPASS_OP_DECODE, r, NULL);
			return;
		}
		if ((size_t)n < room)
			return; /* drained */
	}
}

static void client_io_cb(weft_io *io, unsigned revents, void *data)
{
	weft_fdpass_client *c = data;
	(void)io;
	c->dispatching++;
	if (revents & WEFT_IO_WRITE)
		client_flush(c);
	if ((revents & (WEFT_IO_READ | WEFT_IO_HUP | WEFT_IO_ERR)) && !c->dead && !c->freed)
		client_read(c);
	c->dispatching--;
	if (c->dispatching > 0)
		return;
	if (c->freed) {
		client_destroy(c);
	} else if (c->dead) {
		weft_defer_cancel(c->after);
		after_cb(c->after, c); /* requests still waiting fail now */
	}
}

/* ---- the client --------------------------------------------------------------------- */

int weft_fdpass_client_new(weft_loop *loop, int fd, weft_fdpass_client **ret_client)
{
	if (fd < 0)
		return -EINVAL;
	int r = -EINVAL;
	weft_fdpass_client *c = NULL;
	if (loop == NULL || ret_client == NULL)
		goto fail;
	r = weft__fd_prepare(fd);
	if (r < 0)
		goto fail;
	r = -ENOMEM;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		goto fail;
	c->loop = loop;
	c->fd = fd;
	c->next_seq = 1;
	weft__fdp_limits(NULL, &c->lim);
	weft__fdp_dec_init(&c->dec, c->lim.max_payload, c->lim.max_fds, weft__fdp_close_fd, NULL);
	r = weft_io_new(loop, fd, client_io_cb, c, &c->io);
	if (r == 0)
		r = weft_defer_new(loop, after_cb, c, &c->after);
	if (r == 0)
		r = weft_io_start(c->io, WEFT_IO_READ);
	if (r < 0) {
		weft_io_free(c->io);
		weft_defer_free(c->after);
		goto fail;
	}
	weft_io_set_ref(c->io, false);
	*ret_client = c;
	return 0;
fail:
	free(c);
	close(fd);
	return r;
}

int weft_fdpass_client_set_limits(weft_fdpass_client *c, const weft_fdpass_limits *limits)
{
	weft_fdpass_limits lim;
	if (c == NULL || weft__fdp_limits(limits, &lim) < 0)
		return -EINVAL;
	c->lim = lim;
	c->dec.max_payload = lim.max_payload;
	c->dec.max_fds = lim.max_fds;
	return 0;
}

void weft_fdpass_client_set_timeout(weft_fdpass_client *c, uint64_t timeout_ms)
{
	if (c)
		c->timeout_ms = timeout_ms;
}

int weft_fdpass_client_peer(const weft_fdpass_client *c, weft_fdpass_peer *ret_peer)
{
	if (c == NULL || ret_peer == NULL)
		return -EINVAL;
	if (c->fd < 0)
		return -ENOTCONN;
	struct ucred cred;
	socklen_t len = sizeof(cred);
	if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -errno;
	*ret_peer = (weft_fdpass_peer){.pid = cred.pid, .uid = cred.uid, .gid = cred.gid};
	return 0;
}

size_t weft_fdpass_client_pending(const weft_fdpass_client *c)
{
	return c ? c->nslots : 0;
}

static void client_destroy(weft_fdpass_client *c)
{
	client_close_socket(c);
	/* Slots left are abandoned ones (their requests completed). */
	struct weft__dlist *queues[2] = {&c->waitq, &c->sendq};
	for (int q = 0; q < 2; q++) {
		struct slot *s;
		while ((s = slot_pop(c, queues[q])) != NULL)
			slot_free(c, s);
	}
	free_spares(c);
	weft_defer_free(c->after);
	free(c);
}

void weft_fdpass_client_free(weft_fdpass_client *c)
{
	if (c == NULL || c->freed)
		return;
	c->freed = true;
	client_close_socket(c);
	weft_defer_cancel(c->after);
	/* Cancel what waits: each completes with ECANCELED from the loop; its
	 * cleanup detaches it from its slot. */
	struct weft__dlist *queues[2] = {&c->waitq, &c->sendq};
	for (int q = 0; q < 2; q++) {
		struct slot *s;
		while ((s = slot_pop(c, queues[q])) != NULL) {
			weft_req *req = s->req;
			s->req = NULL;
			if (req != NULL) {
				struct request_state *st = weft_req_state(req);
				st->slot = NULL;
				st->c = NULL;
				st->phase = s->sent ? WEFT_FDPASS_PHASE_READ_RESPONSE : WEFT_FDPASS_PHASE_WRITE_REQUEST;
				weft_req_cancel(req);
			}
			slot_free(c, s);
		}
	}
	if (c->dispatching == 0)
		client_destroy(c);
}

/* ---- requests ------------------------------------------------------------------------ */

/* A request completed early (timeout, cancel, failure) while its slot was
 * queued: detach it.  Out of line, so the common cleanup (nothing to
 * detach) stays a few instructions. */
static __attribute__((noinline)) void request_detach(struct request_state *st)
{
	struct slot *s = st->slot;
	st->phase = s->sent ? WEFT_FDPASS_PHASE_READ_RESPONSE : WEFT_FDPASS_PHASE_WRITE_REQUEST;
	s->req = NULL;
	st->slot = NULL;
	if (!s->sent && s->out_off == 0) {
		slot_remove(st->c, s); /* not a byte out: it never happened */
	} else if (!s->sent) {
		/* Partly written: the rest goes out, the descriptors went with
		 * the first byte; the caller may close them now. */
		slot_drop_fds(s);
	}
	client_update_ref(st->c);
}

static void request_cleanup(weft_req *req, weft_req_stage stage)
{
	struct request_state *st = weft_req_state(req);
	if (st->slot != NULL)
		request_detach(st);
	if (stage == WEFT_REQ_STAGE_FREED && !st->handed) {
		weft_fdpass_msg_clear(&st->msg);
		st->handed = true;
	}
}

/* A request that fails before it is queued: the error is reported from the
 * loop.  Out of line and cold, to keep the send path short. */
static __attribute__((noinline, cold)) weft_req *request_fail_now(weft_req *req, struct request_state *st,
		weft_fdpass_op op, int err, const char *what)
{
	st->has_error = true;
	weft__fdp_error(&st->error, WEFT_FDPASS_PHASE_WRITE_REQUEST, op, err, what);
	weft_req_error(req, err);
	return req;
}

weft_req *weft_fdpass_request_send(weft_fdpass_client *c, const void *buf, size_t len, const int *fds,
		size_t nfds)
{
	if (c == NULL)
		return NULL;
	weft_req *req = weft_req_new(c->loop, sizeof(struct request_state), "fdpass-request");
	if (req == NULL)
		return NULL;
	struct request_state *st = weft_req_state(req);
	st->c = c;
	st->phase = WEFT_FDPASS_PHASE_WRITE_REQUEST;
	weft_req_set_cleanup(req, request_cleanup);
	int err = 0;
	bool bad = (len > 0 && buf == NULL) || (nfds > 0 && fds == NULL);
	for (size_t i = 0; !bad && i < nfds; i++)
		bad = fds[i] < 0;
	if (bad || c->freed)
		err = EINVAL;
	else if (c->dead)
		err = ENOTCONN;
	else if (len > c->lim.max_payload)
		err = EMSGSIZE;
	else if (nfds > c->lim.max_fds)
		err = ETOOMANYREFS;
	else if (c->nslots >= c->lim.max_pending)
		err = EAGAIN;
	if (err)
		return request_fail_now(req, st, WEFT_FDPASS_OP_NONE, err, "request");
	struct slot *s = slot_get(c, WEFT__FDP_HDR + len, nfds);
	if (s == NULL)
		return request_fail_now(req, st, WEFT_FDPASS_OP_ALLOC, ENOMEM, NULL);
	s->req = req;
	s->st = st;
	s->seq = c->next_seq++;
	if (c->next_seq == 0)
		c->next_seq = 1;
	struct weft__fdp_hdr hdr = {.type = WEFT__FDP_REQUEST, .nfds = (uint16_t)nfds, .len = (uint32_t)len, .seq = s->seq};
	st->slot = s;
	bool idle = c->sendq.head == NULL;
	c->nslots++;
	client_update_ref(c);
	if (c->timeout_ms > 0 && weft_req_set_timeout(req, c->timeout_ms) < 0) {
		weft__dlist_append(&c->sendq, &s->link);
		/* the cleanup takes the slot back */
		return request_fail_now(req, st, WEFT_FDPASS_OP_ALLOC, ENOMEM, NULL);
	}
	size_t sent = 0;
	bool framed = false;
	if (idle) {
		/* Nothing queued before it: framed in the slot and sent at once,
		 * as one buffer (a single segment is the kernel's cheapest
		 * import; a header and a payload vector cost more there than the
		 * copy here). */
		weft__fdp_put_header(s->out, &hdr);
		if (len > 0)
			memcpy(s->out + WEFT__FDP_HDR, buf, len);
		framed = true;
		ssize_t w = weft__fdp_sendmsg(c->fd, s->out, s->out_len, fds, nfds);
		if (w == (ssize_t)s->out_len) {
			slot_drop_fds(s);
			s->out_off = s->out_len;
			s->sent = true;
			weft__dlist_append(&c->waitq, &s->link);
			return req;
		}
		if (w == -EAGAIN) {
			client_watch(c, true);
			idle = false; /* wait for WRITE */
		} else if (w > 0) {
			sent = (size_t)w;
			slot_drop_fds(s); /* they went with the first byte */
		}
		/* else an error: client_flush below meets it again and fails */
	}
	weft__dlist_append(&c->sendq, &s->link);
	s->nfds = s->fds != NULL ? nfds : 0;
	weft__fdp_copy_fds(s->fds, fds, s->nfds);
	if (!framed) {
		weft__fdp_put_header(s->out, &hdr);
		if (len > 0)
			memcpy(s->out + WEFT__FDP_HDR, buf, len);
	}
	s->out_off = sent;
	if (idle && !c->dead) {
		c->dispatching++; /* a failure is reported from the loop */
		client_flush(c);
		c->dispatching--;
	}
	return req;
}

int weft_fdpass_request_recv(weft_req *req, weft_fdpass_msg *ret_msg, weft_fdpass_error *ret_error,
		int *perrno)
{
	int r = weft_req_simple_recv(req, perrno);
	if (req == NULL)
		return r;
	struct request_state *st = weft_req_state(req);
	if (r < 0) {
		if (ret_error != NULL && r != -EINPROGRESS) {
			if (st->has_error) {
				*ret_error = st->error;
			} else {
				weft_req_status status = weft_req_get_status(req);
				weft__fdp_error(ret_error, st->phase,
						status == WEFT_REQ_TIMED_OUT ? WEFT_FDPASS_OP_TIMEOUT : WEFT_FDPASS_OP_CANCEL,
						-r, NULL);
			}
		}
		return r;
	}
	if (st->handed)
		return -EALREADY;
	st->handed = true;
	if (ret_msg != NULL)
		*ret_msg = st->msg;
	else
		weft_fdpass_msg_clear(&st->msg);
	memset(&st->msg, 0, sizeof(st->msg));
	return 0;
}

/* ---- connecting ---------------------------------------------------------------------- */

struct connect_state {
	int fd;
	weft_timer *retry;
	weft_addr dst;
	weft_fdpass_client *client;
};

static void connect_cleanup(weft_req *req, weft_req_stage stage)
{
	struct connect_state *st = weft_req_state(req);
	weft_timer_free(st->retry);
	st->retry = NULL;
	if (st->fd >= 0) {
		close(st->fd);
		st->fd = -1;
	}
	if (stage == WEFT_REQ_STAGE_FREED && st->client) {
		weft_fdpass_client_free(st->client);
		st->client = NULL;
	}
}

static void connect_attempt(weft_req *req);

static void connect_retry(weft_timer *t, void *data)
{
	(void)t;
	connect_attempt(data);
}

static void connect_attempt(weft_req *req)
{
	struct connect_state *st = weft_req_state(req);
	int r;
	do
		r = connect(st->fd, &st->dst.u.sa, st->dst.len);
	while (r < 0 && errno == EINTR);
	int err = r < 0 ? errno : 0;
	if (err == EAGAIN) {
		/* A full backlog: no readiness event will say when it has room. */
		r = st->retry ? 0 : weft_timer_new(weft_req_loop(req), connect_retry, req, &st->retry);
		if (r == 0)
			r = weft_timer_start(st->retry, 5, 0);
		weft_req_error(req, r);
		return;
	}
	if (weft_req_error(req, err))
		return;
	int fd = st->fd;
	st->fd = -1;
	r = weft_fdpass_client_new(weft_req_loop(req), fd, &st->client);
	if (!weft_req_error(req, r))
		weft_req_done(req);
}

weft_req *weft_fdpass_connect_send(weft_loop *loop, const weft_addr *addr)
{
	weft_req *req = weft_req_new(loop, sizeof(struct connect_state), "fdpass-connect");
	if (req == NULL)
		return NULL;
	struct connect_state *st = weft_req_state(req);
	st->fd = -1;
	weft_req_set_cleanup(req, connect_cleanup);
	if (addr == NULL || addr->kind != WEFT_ADDR_UNIX || addr->u.sa.sa_family != AF_UNIX || addr->len == 0) {
		weft_req_error(req, EINVAL);
		return req;
	}
	st->dst = *addr;
	st->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (st->fd < 0) {
		weft_req_error(req, errno);
		return req;
	}
	connect_attempt(req);
	return req;
}

int weft_fdpass_connect_recv(weft_req *req, weft_fdpass_client **ret_client, int *perrno)
{
	int r = weft_req_simple_recv(req, perrno);
	if (r < 0)
		return r;
	struct connect_state *st = weft_req_state(req);
	if (ret_client == NULL || st->client == NULL)
		return -EINVAL;
	*ret_client = st->client;
	st->client = NULL;
	return 0;
}
