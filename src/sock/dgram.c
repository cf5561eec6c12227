/* Datagram sockets: UDP and Unix-domain SOCK_DGRAM (after Samba's
 * tdgram_bsd).
 *
 * One weft_io watcher per socket.  READ is armed only while a recvfrom
 * request waits; WRITE only while a send is blocked on EAGAIN.  When both
 * are ready, the write side is served first (tsocket's rule).
 *
 * Every request that concerns a socket is attached to it from its _send
 * until it completes or is freed (its cleanup detaches it at FINISHED and
 * at FREED), so weft_dgram_close can cancel them all and nothing touches a
 * closed socket afterwards.
 *
 * Sends: a plain sendto may be in progress once per socket (EBUSY
 * otherwise); queued sends go through a weft_queue (the socket's own, or the
 * caller's).  A send is tried at once unless other sends already wait for
 * the socket to drain; a send that meets EAGAIN joins a FIFO of blocked
 * sends served when the socket becomes writable.  Woken "writable" but still
 * EAGAIN means the kernel's poll does not track what blocks us (an
 * unconnected Unix socket sending to a full receiver: poll watches only our
 * own send buffer) — then WRITE is dropped and a short back-off timer
 * (1 ms doubling to 32 ms) retries instead, so the loop never spins.
 *
 * Receives: one datagram per request, read whole into a 64 KiB scratch
 * buffer in the socket and handed out as a malloc'd copy of its exact
 * length.  A Unix datagram longer than the scratch buffer (Unix datagrams
 * may exceed 64 KiB) fails the request with EMSGSIZE; that datagram is
 * lost. */
#include "sock-private.h"

#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef MSG_CMSG_CLOEXEC
#define MSG_CMSG_CLOEXEC 0
#endif

/* Largest datagram received whole: every UDP payload (65507 bytes over
 * IPv4, 65527 over IPv6) and Unix datagrams up to 64 KiB. */
#define DGRAM_SCRATCH 65536u
/* Blocked sends served per wake-up, so one socket cannot starve the loop. */
#define DGRAM_WRITES_PER_WAKE 64u
/* Back-off of the retry timer when poll says writable but send says EAGAIN. */
#define DGRAM_BACKOFF_MAX_MS 32u

static const char recvfrom_name[] = "weft_dgram_recvfrom";
static const char sendto_name[] = "weft_dgram_sendto";
static const char sendto_queue_name[] = "weft_dgram_sendto_queue";

struct send_state;

struct weft_dgram {
	weft_loop *loop;
	int fd;
	weft_addr_kind kind; /* WEFT_ADDR_UDP or WEFT_ADDR_UNIX */
	weft_io *io;
	weft_timer *retry;   /* back-off when poll and send disagree */
	unsigned backoff_ms; /* 0: not backing off */
	weft_queue *queue;   /* the socket's own send queue */

	weft_req *recv_req;   /* the pending recvfrom */
	weft_req *plain_send; /* the plain sendto in progress */
	struct weft__list attached; /* every attached send */
	struct weft__list blocked;  /* sends waiting for WRITE, in order */
	size_t nblocked;

	unsigned busy; /* pinned by a dispatch on the stack */
	bool closed;

	/* A Unix socket file this socket bound: removed on close if it is
	 * still the same inode. */
	struct weft__bound_path bound;

	uint8_t scratch[DGRAM_SCRATCH];
};

struct recv_state {
	weft_dgram *d; /* NULL once detached */
	uint8_t *buf;  /* the datagram (NULL when empty or handed out) */
	size_t len;
	weft_addr src;
	bool taken; /* buf was handed out by _recv */
};

struct send_state {
	weft_dgram *d; /* NULL once detached */
	weft_req *req;
	const void *buf;
	size_t len;
	weft_addr dst;
	bool has_dst;
	bool blocked;
	size_t sent;
	struct weft__list att_link; /* in d->attached */
	struct weft__list blk_link; /* in d->blocked while blocked */
};

/* ---- helpers ------------------------------------------------------------- */

static bool is_again(int err)
{
#if EAGAIN != EWOULDBLOCK
	if (err == EWOULDBLOCK)
		return true;
#endif
	return err == EAGAIN;
}

/* Keep d alive across a call that may run user callbacks. */
static void pin(weft_dgram *d)
{
	d->busy++;
}

static void unpin(weft_dgram *d)
{
	if (--d->busy == 0 && d->closed)
		free(d);
}

/* An address of the socket's kind from what the kernel returned.  An
 * unnamed Unix peer (len 0 or just the family) gets an unnamed address;
 * anything weft_addr_from_sockaddr refuses is copied as it is. */
static void fill_addr(weft_addr_kind kind, const struct sockaddr_storage *ss, socklen_t len,
		weft_addr *ret)
{
	if (kind == WEFT_ADDR_UNIX && len <= (socklen_t)sizeof(sa_family_t)) {
		memset(ret, 0, sizeof(*ret));
		ret->kind = WEFT_ADDR_UNIX;
		ret->len = (socklen_t)sizeof(sa_family_t);
		ret->u.sa.sa_family = AF_UNIX;
		return;
	}
	if (len > (socklen_t)sizeof(*ss))
		len = (socklen_t)sizeof(*ss);
	if (weft_addr_from_sockaddr((const struct sockaddr *)ss, len, kind, ret) == 0)
		return;
	memset(ret, 0, sizeof(*ret));
	ret->kind = kind;
	ret->len = len;
	memcpy(&ret->u.ss, ss, len);
}

/* Check an address for a datagram socket; its family on success. */
static int check_addr(const weft_addr *a, int *ret_family)
{
	if (a->len < (socklen_t)sizeof(sa_family_t) || a->len > (socklen_t)sizeof(a->u.ss))
		return -EINVAL;
	int family = a->u.sa.sa_family;
	switch (a->kind) {
	case WEFT_ADDR_UDP:
		if (family == AF_INET && a->len >= (socklen_t)sizeof(struct sockaddr_in))
			break;
		if (family == AF_INET6 && a->len >= (socklen_t)sizeof(struct sockaddr_in6))
			break;
		return -EINVAL;
	case WEFT_ADDR_UNIX:
		if (family != AF_UNIX || a->len > (socklen_t)sizeof(struct sockaddr_un))
			return -EINVAL;
		break;
	case WEFT_ADDR_TCP:
	default:
		return -EINVAL;
	}
	*ret_family = family;
	return 0;
}

/* The watcher's interest follows what is pending. */
static int update_watch(weft_dgram *d)
{
	if (d->io == NULL)
		return 0;
	if (d->nblocked == 0) {
		weft_timer_stop(d->retry);
		d->backoff_ms = 0;
	}
	unsigned events = 0;
	if (d->recv_req != NULL)
		events |= WEFT_IO_READ;
	if (d->nblocked > 0 && !weft_timer_active(d->retry))
		events |= WEFT_IO_WRITE;
	if (events == weft_io_events(d->io))
		return 0;
	return weft_io_start(d->io, events);
}

/* ---- receiving ----------------------------------------------------------- */

static void recv_detach(const weft_req *req, struct recv_state *s)
{
	weft_dgram *d = s->d;
	if (d == NULL)
		return;
	s->d = NULL;
	if (d->recv_req == req) {
		d->recv_req = NULL;
		(void)update_watch(d);
	}
}

static void recv_cleanup(weft_req *req, weft_req_stage stage)
{
	struct recv_state *s = weft_req_state(req);
	recv_detach(req, s);
	if (stage == WEFT_REQ_STAGE_FREED) {
		free(s->buf);
		s->buf = NULL;
	}
}

/* Read one datagram into the request's state: 0, -EAGAIN or -errno. */
static int recv_try(weft_dgram *d, struct recv_state *s)
{
	struct sockaddr_storage ss;
	struct iovec iov = {.iov_base = d->scratch, .iov_len = sizeof(d->scratch)};
	struct msghdr mh;
	memset(&mh, 0, sizeof(mh));
	memset(&ss, 0, sizeof(ss));
	mh.msg_name = &ss;
	mh.msg_namelen = sizeof(ss);
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	ssize_t n;
	do
		n = recvmsg(d->fd, &mh, MSG_TRUNC | MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return is_again(errno) ? -EAGAIN : -errno;
	if ((size_t)n > sizeof(d->scratch) || (mh.msg_flags & MSG_TRUNC) != 0)
		return -EMSGSIZE;
	if (n > 0) {
		s->buf = malloc((size_t)n);
		if (s->buf == NULL)
			return -ENOMEM;
		memcpy(s->buf, d->scratch, (size_t)n);
	}
	s->len = (size_t)n;
	fill_addr(d->kind, &ss, mh.msg_namelen, &s->src);
	return 0;
}

/* Complete req with the outcome of recv_try (not -EAGAIN).  May run the
 * callback, which may close the socket. */
static void recv_complete(weft_req *req, int r)
{
	if (r < 0)
		weft_req_error(req, r);
	else
		weft_req_done(req);
}

static void serve_read(weft_dgram *d)
{
	weft_req *req = d->recv_req;
	int r = recv_try(d, weft_req_state(req));
	if (r == -EAGAIN)
		return;
	recv_complete(req, r);
}

weft_req *weft_dgram_recvfrom_send(weft_dgram *d)
{
	if (d == NULL)
		return NULL;
	weft_req *req = weft_req_new(d->loop, sizeof(struct recv_state), recvfrom_name);
	if (req == NULL)
		return NULL;
	struct recv_state *s = weft_req_state(req);
	weft_req_set_cleanup(req, recv_cleanup);
	if (d->closed) {
		weft_req_error(req, EBADF);
		return req;
	}
	if (d->recv_req != NULL) {
		weft_req_error(req, EBUSY);
		return req;
	}
	/* Data may be there already: the completion is posted. */
	int r = recv_try(d, s);
	if (r != -EAGAIN) {
		recv_complete(req, r);
		return req;
	}
	s->d = d;
	d->recv_req = req;
	weft_req_error(req, update_watch(d)); /* the cleanup detaches */
	return req;
}

ssize_t weft_dgram_recvfrom_recv(weft_req *req, uint8_t **ret_buf, weft_addr *ret_src,
		int *perrno)
{
	int r = -EINVAL;
	struct recv_state *s = NULL;
	if (req != NULL && weft_req_name(req) == recvfrom_name) {
		s = weft_req_state(req);
		r = weft_req_simple_recv(req, NULL);
	}
	if (r == 0 && ret_buf != NULL && s->taken)
		r = -EALREADY; /* the buffer was handed out already */
	if (r < 0) {
		if (perrno != NULL)
			*perrno = -r;
		return r;
	}
	if (ret_buf != NULL) {
		*ret_buf = s->buf;
		s->buf = NULL;
		s->taken = true;
	}
	if (ret_src != NULL)
		*ret_src = s->src;
	return (ssize_t)s->len;
}

/* ---- sending ------------------------------------------------------------- */

static void block_unlink(weft_dgram *d, struct send_state *s)
{
	if (!s->blocked)
		return;
	weft__list_remove(&s->blk_link);
	s->blocked = false;
	d->nblocked--;
}

static void send_attach(weft_dgram *d, struct send_state *s)
{
	s->d = d;
	weft__list_append(&d->attached, &s->att_link);
}

static void send_detach(struct send_state *s)
{
	weft_dgram *d = s->d;
	if (d == NULL)
		return;
	s->d = NULL;
	block_unlink(d, s);
	weft__list_remove(&s->att_link);
	if (d->plain_send == s->req)
		d->plain_send = NULL;
	(void)update_watch(d);
}

static void send_cleanup(weft_req *req, weft_req_stage stage)
{
	(void)stage;
	send_detach(weft_req_state(req));
}

static ssize_t send_try(const weft_dgram *d, const struct send_state *s)
{
	const struct sockaddr *dst = s->has_dst ? &s->dst.u.sa : NULL;
	socklen_t dstlen = s->has_dst ? s->dst.len : 0;
	ssize_t n;
	do
		n = sendto(d->fd, s->buf, s->len, MSG_NOSIGNAL, dst, dstlen);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return is_again(errno) ? -EAGAIN : -errno;
	return n;
}

/* Complete with the outcome of send_try (not -EAGAIN).  May run the
 * callback, which may close the socket. */
static void send_complete(struct send_state *s, ssize_t n)
{
	if (n < 0) {
		weft_req_error(s->req, (int)n);
		return;
	}
	s->sent = (size_t)n;
	weft_req_set_progress(s->req, (uint64_t)n);
	weft_req_done(s->req);
}

/* Wait for the socket to drain. */
static void send_block(weft_dgram *d, struct send_state *s)
{
	s->blocked = true;
	weft__list_append(&d->blocked, &s->blk_link);
	d->nblocked++;
	weft_req_error(s->req, update_watch(d)); /* the cleanup unblocks */
}

/* Send now, or join the sends that wait (never overtake them). */
static void send_start(weft_dgram *d, struct send_state *s)
{
	if (d->nblocked > 0) {
		send_block(d, s);
		return;
	}
	ssize_t n = send_try(d, s);
	if (n == -EAGAIN) {
		send_block(d, s);
		return;
	}
	send_complete(s, n);
}

/* The socket looks writable (or the back-off expired): send what waits. */
static void serve_writes(weft_dgram *d)
{
	bool progressed = false;
	for (unsigned i = 0; i < DGRAM_WRITES_PER_WAKE && !d->closed && !weft__list_empty(&d->blocked); i++) {
		struct send_state *s = weft__container_of(d->blocked.next, struct send_state, blk_link);
		ssize_t n = send_try(d, s);
		if (n == -EAGAIN) {
			if (!progressed) {
				/* Writable by poll, full by send: back off on a
				 * timer instead of spinning on WRITE. */
				unsigned ms = d->backoff_ms == 0 ? 1u : d->backoff_ms * 2u;
				d->backoff_ms = ms > DGRAM_BACKOFF_MAX_MS ? DGRAM_BACKOFF_MAX_MS : ms;
				if (weft_timer_start(d->retry, d->backoff_ms, 0) == 0)
					(void)update_watch(d);
			}
			return;
		}
		progressed = true;
		d->backoff_ms = 0;
		send_complete(s, n); /* detaches s; may close d (pinned) */
	}
}

static void retry_cb(weft_timer *timer, void *data)
{
	weft_dgram *d = data;
	(void)timer;
	pin(d);
	serve_writes(d);
	if (!d->closed)
		(void)update_watch(d); /* back to WRITE if the timer was not re-armed */
	unpin(d);
}

static void io_cb(weft_io *io, unsigned revents, void *data)
{
	weft_dgram *d = data;
	(void)io;
	pin(d);
	if ((revents & WEFT_IO_WRITE) != 0)
		serve_writes(d);
	if (!d->closed && (revents & WEFT_IO_READ) != 0 && d->recv_req != NULL)
		serve_read(d);
	unpin(d);
}

/* A send request attached to d, or one that fails (posted) with EBADF /
 * EINVAL.  NULL only without memory. */
static weft_req *send_new(weft_dgram *d, const void *buf, size_t len, const weft_addr *dst,
		const char *name)
{
	weft_req *req = weft_req_new(d->loop, sizeof(struct send_state), name);
	if (req == NULL)
		return NULL;
	struct send_state *s = weft_req_state(req);
	s->req = req;
	s->buf = buf;
	s->len = len;
	weft_req_set_cleanup(req, send_cleanup);
	if (d->closed) {
		weft_req_error(req, EBADF);
		return req;
	}
	int family;
	if ((buf == NULL && len > 0) ||
			(dst != NULL && (dst->kind != d->kind || check_addr(dst, &family) < 0))) {
		weft_req_error(req, EINVAL);
		return req;
	}
	if (dst != NULL) {
		s->dst = *dst;
		s->has_dst = true;
	}
	send_attach(d, s);
	return req;
}

weft_req *weft_dgram_sendto_send(weft_dgram *d, const void *buf, size_t len, const weft_addr *dst)
{
	if (d == NULL)
		return NULL;
	weft_req *req = send_new(d, buf, len, dst, sendto_name);
	if (req == NULL || !weft_req_is_in_progress(req))
		return req;
	struct send_state *s = weft_req_state(req);
	if (d->plain_send != NULL) {
		weft_req_error(req, EBUSY);
		return req;
	}
	d->plain_send = req;
	send_start(d, s); /* a completion here is posted */
	return req;
}

static void queue_trigger(weft_req *req, void *data)
{
	struct send_state *s = weft_req_state(req);
	weft_dgram *d = s->d;
	(void)data;
	if (d == NULL) {
		weft_req_error(req, ECANCELED);
		return;
	}
	pin(d);
	send_start(d, s);
	unpin(d);
}

weft_req *weft_dgram_sendto_queue_send(weft_dgram *d, weft_queue *queue, const void *buf,
		size_t len, const weft_addr *dst)
{
	if (d == NULL)
		return NULL;
	weft_req *req = send_new(d, buf, len, dst, sendto_queue_name);
	if (req == NULL || !weft_req_is_in_progress(req))
		return req;
	/* An idle queue sends at once; the completion is posted. */
	int r = weft_queue_add_now(queue != NULL ? queue : d->queue, req, queue_trigger, NULL);
	weft_req_error(req, r);
	return req;
}

static ssize_t sendto_result(weft_req *req, int *perrno)
{
	int r = -EINVAL;
	if (req != NULL &&
			(weft_req_name(req) == sendto_name || weft_req_name(req) == sendto_queue_name))
		r = weft_req_simple_recv(req, NULL);
	if (r < 0) {
		if (perrno != NULL)
			*perrno = -r;
		return r;
	}
	const struct send_state *s = weft_req_state(req);
	return (ssize_t)s->sent;
}

ssize_t weft_dgram_sendto_recv(weft_req *req, int *perrno)
{
	return sendto_result(req, perrno);
}

ssize_t weft_dgram_sendto_queue_recv(weft_req *req, int *perrno)
{
	return sendto_result(req, perrno);
}

/* ---- open and close ------------------------------------------------------ */

static int dgram_setup(weft_dgram *d, int family, const weft_addr *local, const weft_addr *remote)
{
	d->fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (d->fd < 0)
		return -errno;
	if (local != NULL) {
		int r = weft__bind(d->fd, local, false, &d->bound);
		if (r < 0)
			return r;
	} else if (family == AF_UNIX) {
		/* Autobind, so the peer has an address to answer to. */
		struct sockaddr_un un;
		memset(&un, 0, sizeof(un));
		un.sun_family = AF_UNIX;
		if (bind(d->fd, (const struct sockaddr *)&un, (socklen_t)sizeof(sa_family_t)) < 0)
			return -errno;
	}
	if (remote != NULL) {
		int r;
		do
			r = connect(d->fd, &remote->u.sa, remote->len);
		while (r < 0 && errno == EINTR);
		if (r < 0)
			return -errno;
	}
	int r = weft_queue_new(d->loop, "weft_dgram", &d->queue);
	if (r == 0)
		r = weft_timer_new(d->loop, retry_cb, d, &d->retry);
	if (r == 0)
		r = weft_io_new(d->loop, d->fd, io_cb, d, &d->io);
	return r;
}

int weft_dgram_open(weft_loop *loop, const weft_addr *local, const weft_addr *remote,
		weft_dgram **ret_dgram)
{
	if (loop == NULL || ret_dgram == NULL || (local == NULL && remote == NULL))
		return -EINVAL;
	int family = AF_UNSPEC, rfamily = AF_UNSPEC;
	if (local != NULL && check_addr(local, &family) < 0)
		return -EINVAL;
	if (remote != NULL && check_addr(remote, &rfamily) < 0)
		return -EINVAL;
	if (local != NULL && remote != NULL && (local->kind != remote->kind || family != rfamily))
		return -EINVAL;
	if (local == NULL)
		family = rfamily;

	weft_dgram *d = calloc(1, sizeof(*d));
	if (d == NULL)
		return -ENOMEM;
	weft__list_init(&d->attached);
	weft__list_init(&d->blocked);
	d->loop = loop;
	d->kind = local != NULL ? local->kind : remote->kind;
	int r = dgram_setup(d, family, local, remote);
	if (r < 0) {
		weft_io_free(d->io);
		weft_timer_free(d->retry);
		weft_queue_free(d->queue);
		if (d->fd >= 0)
			(void)close(d->fd);
		weft__unlink_bound(&d->bound);
		free(d);
		return r;
	}
	*ret_dgram = d;
	return 0;
}

int weft_dgram_local_addr(const weft_dgram *d, weft_addr *ret_addr)
{
	if (d == NULL || ret_addr == NULL || d->closed)
		return -EINVAL;
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	socklen_t len = sizeof(ss);
	if (getsockname(d->fd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	fill_addr(d->kind, &ss, len, ret_addr);
	return 0;
}

int weft_dgram_fd(const weft_dgram *d)
{
	if (d == NULL || d->closed)
		return -EINVAL;
	return d->fd;
}

void weft_dgram_close(weft_dgram *d)
{
	if (d == NULL || d->closed)
		return;
	d->closed = true;
	pin(d);
	/* Cancel everything attached (completions are posted); each cleanup
	 * detaches its request from d. */
	if (d->recv_req != NULL && weft_req_cancel(d->recv_req) < 0 && d->recv_req != NULL)
		recv_detach(d->recv_req, weft_req_state(d->recv_req));
	while (!weft__list_empty(&d->attached)) {
		struct send_state *s = weft__container_of(d->attached.next, struct send_state, att_link);
		if (weft_req_cancel(s->req) < 0)
			send_detach(s);
	}
	weft_queue_free(d->queue);
	d->queue = NULL;
	weft_timer_free(d->retry);
	d->retry = NULL;
	weft_io_free(d->io); /* before the fd closes */
	d->io = NULL;
	(void)close(d->fd);
	d->fd = -1;
	weft__unlink_bound(&d->bound);
	d->bound.set = false;
	unpin(d);
}

weft_loop *weft__dgram_loop(const weft_dgram *d)
{
	return d ? d->loop : NULL;
}
