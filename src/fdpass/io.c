/* Socket helpers shared by the fdpass drivers, the low-level one-message
 * calls, limits, error records and names. */
#include "fdpass-private.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

void weft__fdp_close_fd(int fd, void *ctx)
{
	(void)ctx;
	close(fd);
}

static void close_fds(const int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

typedef union {
	struct cmsghdr align;
	char buf[CMSG_SPACE(sizeof(int) * WEFT_FDPASS_MAX_FDS_LIMIT)];
} cmsg_buf;

/* Fill cb with one SCM_RIGHTS record of fds[0..nfds) for msg: the record
 * and its padding up to CMSG_SPACE, nothing more of the buffer. */
static inline void put_rights(struct msghdr *msg, cmsg_buf *cb, const int *fds, size_t nfds)
{
	struct cmsghdr *c = &cb->align;
	unsigned char *data = CMSG_DATA(c);
	msg->msg_control = cb->buf;
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	if (nfds == 1) {
		/* the usual case, in constants */
		msg->msg_controllen = CMSG_SPACE(sizeof(int));
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(data, fds, sizeof(int));
		memset(data + sizeof(int), 0, CMSG_SPACE(sizeof(int)) - CMSG_LEN(sizeof(int)));
		return;
	}
	msg->msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
	c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
	memcpy(data, fds, sizeof(int) * nfds);
	size_t pad = CMSG_SPACE(sizeof(int) * nfds) - CMSG_LEN(sizeof(int) * nfds);
	if (pad > 0)
		memset(data + sizeof(int) * nfds, 0, pad);
}

ssize_t weft__fdp_sendmsgv(int sock, const struct iovec *iov, size_t iovcnt, const int *fds, size_t nfds)
{
	cmsg_buf cb;
	struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = iovcnt};
	if (nfds > 0)
		put_rights(&msg, &cb, fds, nfds);
	ssize_t n;
	do
		n = sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

ssize_t weft__fdp_sendmsg(int sock, const void *buf, size_t len, const int *fds, size_t nfds)
{
	ssize_t n;
	if (nfds == 0) {
		/* No descriptors: send(2), which hands the kernel the buffer
		 * directly (sendmsg makes it copy in a msghdr and an iovec). */
		do
			n = send(sock, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		while (n < 0 && errno == EINTR);
		return n < 0 ? -errno : n;
	}
	cmsg_buf cb;
	struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
	put_rights(&msg, &cb, fds, nfds);
	do
		n = sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

/* The descriptors of a received msghdr, walking every record: up to
 * maxfds into fds, the rest closed (*ret_truncated set, as for
 * MSG_CTRUNC). */
static void take_fds_all(struct msghdr *msg, int *fds, size_t maxfds, size_t *ret_nfds, bool *ret_truncated)
{
	size_t got = 0;
	bool truncated = (msg->msg_flags & MSG_CTRUNC) != 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		const unsigned char *p = CMSG_DATA(c);
		for (size_t i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, p + i * sizeof(int), sizeof(int));
			if (got < maxfds) {
				fds[got++] = fd;
			} else {
				close(fd);
				truncated = true;
			}
		}
	}
	*ret_nfds = got;
	*ret_truncated = truncated;
}

/* take_fds_all, with the usual shape inline: a single SCM_RIGHTS record
 * that fits (the kernel reports the space of what it wrote in
 * msg_controllen). */
static inline void take_fds(struct msghdr *msg, int *fds, size_t maxfds, size_t *ret_nfds, bool *ret_truncated)
{
	struct cmsghdr *first = CMSG_FIRSTHDR(msg);
	if (first != NULL && first->cmsg_level == SOL_SOCKET && first->cmsg_type == SCM_RIGHTS &&
	    (msg->msg_flags & MSG_CTRUNC) == 0 && first->cmsg_len >= CMSG_LEN(0)) {
		size_t k = (first->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		if (k <= maxfds && msg->msg_controllen <= CMSG_SPACE(k * sizeof(int))) {
			if (k == 1)
				memcpy(fds, CMSG_DATA(first), sizeof(int));
			else if (k > 1)
				memcpy(fds, CMSG_DATA(first), k * sizeof(int));
			*ret_nfds = k;
			*ret_truncated = false;
			return;
		}
	}
	take_fds_all(msg, fds, maxfds, ret_nfds, ret_truncated);
}

/* One non-blocking recvmsg into iov with room for descriptors in cb;
 * msg describes what came.  Returns the bytes or -errno. */
static inline ssize_t recv_with_fds(int sock, struct iovec *iov, cmsg_buf *cb, struct msghdr *msg)
{
	*msg = (struct msghdr){.msg_iov = iov, .msg_iovlen = 1, .msg_control = cb->buf,
			.msg_controllen = sizeof(cb->buf)};
	ssize_t n;
	do
		n = recvmsg(sock, msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

ssize_t weft__fdp_recvmsg(int sock, void *buf, size_t len, int *fds, size_t maxfds,
		size_t *ret_nfds, bool *ret_truncated)
{
	cmsg_buf cb;
	struct iovec iov = {.iov_base = buf, .iov_len = len};
	struct msghdr msg;
	ssize_t n = recv_with_fds(sock, &iov, &cb, &msg);
	if (n < 0)
		return n;
	take_fds(&msg, fds, maxfds, ret_nfds, ret_truncated);
	return n;
}

int weft__fdp_limits(const weft_fdpass_limits *in, weft_fdpass_limits *ret)
{
	static const weft_fdpass_limits none;
	if (in == NULL)
		in = &none;
	if (in->max_payload > WEFT_FDPASS_MAX_PAYLOAD_LIMIT || in->max_fds > WEFT_FDPASS_MAX_FDS_LIMIT)
		return -EINVAL;
	ret->max_payload = in->max_payload ? in->max_payload : WEFT_FDPASS_DEFAULT_MAX_PAYLOAD;
	ret->max_fds = in->max_fds ? in->max_fds : WEFT_FDPASS_DEFAULT_MAX_FDS;
	ret->max_pending = in->max_pending ? in->max_pending : WEFT_FDPASS_DEFAULT_MAX_PENDING;
	ret->max_connections = in->max_connections ? in->max_connections : WEFT_FDPASS_DEFAULT_MAX_CONNECTIONS;
	return 0;
}

void weft__fdp_error(weft_fdpass_error *e, weft_fdpass_phase phase, weft_fdpass_op op, int err,
		const char *what)
{
	if (err < 0)
		err = -err;
	e->phase = phase;
	e->op = op;
	e->err = err;
	snprintf(e->message, sizeof(e->message), "%s: %s: %s", weft_fdpass_phase_name(phase),
			what ? what : weft_fdpass_op_name(op), strerror(err));
}

const char *weft_fdpass_phase_name(weft_fdpass_phase phase)
{
	switch (phase) {
	case WEFT_FDPASS_PHASE_NONE: return "none";
	case WEFT_FDPASS_PHASE_LISTEN: return "listen";
	case WEFT_FDPASS_PHASE_ACCEPT: return "accept";
	case WEFT_FDPASS_PHASE_READ_REQUEST: return "read-request";
	case WEFT_FDPASS_PHASE_HANDLE_REQUEST: return "handle-request";
	case WEFT_FDPASS_PHASE_WRITE_RESPONSE: return "write-response";
	case WEFT_FDPASS_PHASE_CONNECT: return "connect";
	case WEFT_FDPASS_PHASE_WRITE_REQUEST: return "write-request";
	case WEFT_FDPASS_PHASE_READ_RESPONSE: return "read-response";
	default: return "?";
	}
}

const char *weft_fdpass_op_name(weft_fdpass_op op)
{
	switch (op) {
	case WEFT_FDPASS_OP_NONE: return "none";
	case WEFT_FDPASS_OP_SOCKET: return "socket";
	case WEFT_FDPASS_OP_BIND: return "bind";
	case WEFT_FDPASS_OP_LISTEN: return "listen";
	case WEFT_FDPASS_OP_ACCEPT: return "accept";
	case WEFT_FDPASS_OP_CONNECT: return "connect";
	case WEFT_FDPASS_OP_SENDMSG: return "sendmsg";
	case WEFT_FDPASS_OP_RECVMSG: return "recvmsg";
	case WEFT_FDPASS_OP_EOF: return "eof";
	case WEFT_FDPASS_OP_DECODE: return "decode";
	case WEFT_FDPASS_OP_ALLOC: return "alloc";
	case WEFT_FDPASS_OP_HANDLER: return "handler";
	case WEFT_FDPASS_OP_TIMEOUT: return "timeout";
	case WEFT_FDPASS_OP_CANCEL: return "cancel";
	default: return "?";
	}
}

/* ---- response blocks ---------------------------------------------------------
 *
 * A response is handed out in one block (weft__fdp_block_get) that
 * weft_fdpass_msg_clear gives back.  Small blocks all have the same size,
 * and each thread keeps one given back for the next: request/response
 * traffic takes and returns a block per message without malloc and free.
 * Per thread, not per client, because a message may be cleared on any
 * thread and after its client is gone.  A pthread key's destructor frees
 * the spare when the thread exits. */
#define BLOCK_SMALL 256u

/* initial-exec: a direct %fs access in the shared library too (no
 * __tls_get_addr call); two words of static TLS. */
#define TLS_IE __attribute__((tls_model("initial-exec")))
static _Thread_local void *spare_block TLS_IE;
static _Thread_local bool spare_armed TLS_IE; /* the key's destructor runs for this thread */
static pthread_key_t spare_key;
static pthread_once_t spare_once = PTHREAD_ONCE_INIT;
static bool spare_key_ok;

static void spare_destroy(void *unused)
{
	(void)unused;
	free(spare_block);
	spare_block = NULL;
	spare_armed = false;
}

static void spare_key_create(void)
{
	spare_key_ok = pthread_key_create(&spare_key, spare_destroy) == 0;
}

/* When the library is unloaded (dlclose), threads still running must not
 * call spare_destroy at their exit: the key goes with the library (their
 * spares are leaked, one small block each). */
__attribute__((destructor)) static void spare_key_delete(void)
{
	if (spare_key_ok) {
		spare_key_ok = false;
		pthread_key_delete(spare_key);
	}
}

/* Make sure the spare of this thread is freed when the thread exits. */
static bool spare_arm(void)
{
	if (spare_armed)
		return true;
	pthread_once(&spare_once, spare_key_create);
	if (!spare_key_ok || pthread_setspecific(spare_key, &spare_armed) != 0)
		return false;
	spare_armed = true;
	return true;
}

void *weft__fdp_block_get(size_t size)
{
	if (size > BLOCK_SMALL)
		return malloc(size);
	void *b = spare_block;
	if (b != NULL) {
		spare_block = NULL;
		return b;
	}
	return malloc(BLOCK_SMALL);
}

/* Give back a block of a message of size bytes (descriptors and payload).
 * Every block has room for at least BLOCK_SMALL bytes (smaller requests
 * get that much), so whatever the size says, a block kept here serves
 * any small request; the size only keeps large blocks from being held. */
static void block_put(void *b, size_t size)
{
	if (b != NULL && size <= BLOCK_SMALL && spare_block == NULL && spare_arm()) {
		spare_block = b;
		return;
	}
	free(b);
}

void weft_fdpass_msg_clear(weft_fdpass_msg *msg)
{
	if (msg == NULL)
		return;
	if (msg->fds != NULL)
		close_fds(msg->fds, msg->nfds);
	/* buf and fds are one block (fds first) when both exist */
	block_put(msg->fds != NULL ? (void *)msg->fds : msg->buf, msg->nfds * sizeof(int) + msg->len);
	memset(msg, 0, sizeof(*msg));
}

/* ---- low-level: one message, waiting with poll(2) ------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until sock is ready for events or the deadline (-1: none) passes.
 * Returns 0 or -ETIMEDOUT / -errno. */
static int wait_ready(int sock, short events, int64_t deadline)
{
	for (;;) {
		int ms = -1;
		if (deadline >= 0) {
			int64_t left = deadline - now_ms();
			if (left <= 0)
				return -ETIMEDOUT;
			ms = left > 1000000 ? 1000000 : (int)left;
		}
		struct pollfd p = {.fd = sock, .events = events};
		int r = poll(&p, 1, ms);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
	}
}

static int64_t deadline_of(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
}

int weft_fdpass_send(int sock, const void *buf, size_t len, const int *fds, size_t nfds, int timeout_ms)
{
	if (sock < 0 || (len > 0 && buf == NULL) || (nfds > 0 && fds == NULL))
		return -EINVAL;
	if (len > WEFT_FDPASS_MAX_PAYLOAD_LIMIT)
		return -EMSGSIZE;
	if (nfds > WEFT_FDPASS_MAX_FDS_LIMIT)
		return -ETOOMANYREFS;
	for (size_t i = 0; i < nfds; i++)
		if (fds[i] < 0)
			return -EINVAL;
	uint8_t hdr[WEFT__FDP_HDR];
	weft__fdp_put_header(hdr, &(struct weft__fdp_hdr){
			.type = WEFT__FDP_REQUEST, .nfds = (uint16_t)nfds, .len = (uint32_t)len});
	int64_t deadline = deadline_of(timeout_ms);
	size_t total = WEFT__FDP_HDR + len, off = 0;
	while (off < total) {
		struct iovec iov[2];
		size_t n = 0;
		if (off < WEFT__FDP_HDR)
			iov[n++] = (struct iovec){.iov_base = hdr + off, .iov_len = WEFT__FDP_HDR - off};
		size_t poff = off > WEFT__FDP_HDR ? off - WEFT__FDP_HDR : 0;
		if (len > poff)
			iov[n++] = (struct iovec){.iov_base = (uint8_t *)buf + poff, .iov_len = len - poff};
		/* The descriptors go with the first byte only, never again. */
		ssize_t w = weft__fdp_sendmsgv(sock, iov, n, fds, off == 0 ? nfds : 0);
		if (w >= 0) {
			off += (size_t)w;
			continue;
		}
		if (w != -EAGAIN)
			return (int)w;
		if (timeout_ms == 0)
			return off == 0 ? -EAGAIN : -ETIMEDOUT;
		int r = wait_ready(sock, POLLOUT, deadline);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Read exactly len bytes into buf (NULL: drop them); descriptors that come
 * along land in fds (first read only, when fds is not NULL) or are closed
 * and make the result -EPROTO once the bytes are in. */
static int read_exact(int sock, uint8_t *buf, size_t len, int *fds, size_t *nfds, bool *truncated,
		int timeout_ms, int64_t deadline, bool at_start)
{
	uint8_t scratch[4096] = {0};
	int fdbuf[WEFT_FDPASS_MAX_FDS_LIMIT];
	size_t off = 0;
	bool stray = false;
	while (off < len) {
		size_t want = len - off;
		uint8_t *dst = buf ? buf + off : scratch;
		if (buf == NULL && want > sizeof(scratch))
			want = sizeof(scratch);
		size_t got = 0;
		bool trunc = false;
		bool first = at_start && off == 0;
		ssize_t n = weft__fdp_recvmsg(sock, dst, want, fdbuf, WEFT_FDPASS_MAX_FDS_LIMIT, &got, &trunc);
		if (n > 0) {
			if (first && fds != NULL) {
				memcpy(fds, fdbuf, got * sizeof(int));
				*nfds = got;
				*truncated = trunc;
			} else if (got > 0 || trunc) {
				close_fds(fdbuf, got);
				stray = true;
			}
			off += (size_t)n;
			continue;
		}
		if (n == 0)
			return at_start && off == 0 ? -EPIPE : -ECONNRESET;
		if (n != -EAGAIN)
			return (int)n;
		if (timeout_ms == 0 && at_start && off == 0)
			return -EAGAIN;
		int r = timeout_ms == 0 ? -ETIMEDOUT : wait_ready(sock, POLLIN, deadline);
		if (r < 0)
			return r;
	}
	return stray ? -EPROTO : 0;
}

ssize_t weft_fdpass_recv(int sock, void *buf, size_t size, int *fds, size_t *nfds, int timeout_ms)
{
	size_t cap = nfds ? *nfds : 0;
	if (sock < 0 || (size > 0 && buf == NULL) || (cap > 0 && fds == NULL))
		return -EINVAL;
	int64_t deadline = deadline_of(timeout_ms);
	uint8_t hdrbuf[WEFT__FDP_HDR];
	int got_fds[WEFT_FDPASS_MAX_FDS_LIMIT];
	size_t got = 0;
	bool truncated = false;
	int r = read_exact(sock, hdrbuf, sizeof(hdrbuf), got_fds, &got, &truncated, timeout_ms, deadline, true);
	struct weft__fdp_hdr h = {0};
	if (r == 0)
		r = weft__fdp_get_header(hdrbuf, WEFT_FDPASS_MAX_PAYLOAD_LIMIT, WEFT_FDPASS_MAX_FDS_LIMIT, &h);
	if (r == 0 && (h.nfds != got || truncated))
		r = truncated ? -ETOOMANYREFS : -EPROTO;
	if (r < 0) {
		close_fds(got_fds, got);
		return r;
	}
	/* The payload: into buf if it fits, else read and dropped. */
	bool fits = h.len <= size;
	r = read_exact(sock, fits ? buf : NULL, h.len, NULL, NULL, NULL, timeout_ms, deadline, false);
	if (r == 0 && !fits)
		r = -EMSGSIZE;
	if (r == 0 && got > cap)
		r = -ETOOMANYREFS;
	if (r < 0) {
		close_fds(got_fds, got);
		return r;
	}
	if (got > 0)
		memcpy(fds, got_fds, got * sizeof(int));
	if (nfds)
		*nfds = got;
	return (ssize_t)h.len;
}

ssize_t weft__fdp_read_into(struct weft__fdp_dec *dec, int sock, size_t maxfds, size_t *ret_room,
		weft_fdpass_op *ret_op, struct weft__fdp_msg *ret_msg, bool *ret_whole)
{
	assert(maxfds <= WEFT_FDPASS_MAX_FDS_LIMIT); /* limits are checked when set */
	uint8_t *space;
	size_t room;
	int r = weft__fdp_dec_space(dec, &space, &room);
	if (r < 0) {
		*ret_op = r == -ENOMEM ? WEFT_FDPASS_OP_ALLOC : WEFT_FDPASS_OP_DECODE;
		return r;
	}
	*ret_room = room;
	cmsg_buf cb;
	struct iovec iov = {.iov_base = space, .iov_len = room};
	struct msghdr msg;
	ssize_t n = recv_with_fds(sock, &iov, &cb, &msg);
	if (n < 0) {
		if (n != -EAGAIN)
			*ret_op = WEFT_FDPASS_OP_RECVMSG;
		return n;
	}
	/* Bytes alone (the kernel set no control data and truncated none) need
	 * no descriptor bookkeeping. */
	int fdbuf[WEFT_FDPASS_MAX_FDS_LIMIT];
	const int *fds = NULL;
	size_t nfds = 0;
	bool trunc = false;
	if (msg.msg_controllen != 0 || (msg.msg_flags & MSG_CTRUNC) != 0) {
		take_fds(&msg, fdbuf, maxfds, &nfds, &trunc);
		fds = fdbuf;
		if (n == 0)
			close_fds(fdbuf, nfds); /* descriptors with no byte: end of stream anyway */
	}
	if (n == 0)
		return 0;
	r = weft__fdp_dec_ack_msg(dec, (size_t)n, fds, nfds, trunc, ret_msg);
	if (r < 0) {
		*ret_op = WEFT_FDPASS_OP_DECODE;
		return r;
	}
	*ret_whole = r == 1;
	return n;
}
