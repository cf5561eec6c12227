/* Stream transports on file descriptors (a socket; a pipe pair), connecting
 * and listening. */
#include "sock-private.h"
#include "loop-private.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

int weft__fd_prepare(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	int fdfl = fcntl(fd, F_GETFD);
	if (fdfl < 0)
		return -errno;
	if (!(fdfl & FD_CLOEXEC) && fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) < 0)
		return -errno;
	return 0;
}

static ssize_t ret_errno(ssize_t n)
{
	return n < 0 ? -errno : n;
}

/* ---- the socket stream ------------------------------------------------------ */

struct sock_impl {
	int fd;
	weft_io *io;
	weft_stream_fd_cb fd_cb; /* set: reads are recvmsg taking SCM_RIGHTS */
	void *fd_data;
};

#define FDS_PER_READ 16 /* descriptors one read can take; the kernel closes more */

/* recvmsg with room for descriptors: each one that arrived goes to the
 * receiver (close-on-exec), also when the read itself carried no data. */
__attribute__((noinline)) /* its control buffer stays off sock_readv's usual path */
static ssize_t sock_recvmsg_fds(weft_stream *s, struct sock_impl *si, const struct iovec *iov, int count)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * FDS_PER_READ)];
	} ctl;
	struct msghdr msg = {
		.msg_iov = (struct iovec *)iov,
		.msg_iovlen = (size_t)count,
		.msg_control = ctl.buf,
		.msg_controllen = sizeof(ctl.buf),
	};
	ssize_t n = recvmsg(si->fd, &msg, MSG_CMSG_CLOEXEC);
	if (n < 0)
		return -errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		const unsigned char *p = CMSG_DATA(c);
		for (size_t i = 0; i < nfds; i++) {
			int fd;
			memcpy(&fd, p + i * sizeof(int), sizeof(int));
			if (si->fd_cb != NULL)
				si->fd_cb(s, fd, si->fd_data);
			else
				close(fd);
		}
	}
	return n;
}

static void sock_io_cb(weft_io *io, unsigned revents, void *data)
{
	(void)io;
	weft_stream_ready(data, revents);
}

static ssize_t sock_readv(weft_stream *s, const struct iovec *iov, int count)
{
	struct sock_impl *si = weft_stream_impl(s);
	if (si->fd_cb != NULL)
		return sock_recvmsg_fds(s, si, iov, count);
	/* One buffer: recv(2) skips the vector import readv(2) pays for, which
	 * is measurable on a small-message ping-pong (bench-echo). */
	if (count == 1)
		return ret_errno(recv(si->fd, iov[0].iov_base, iov[0].iov_len, 0));
	return ret_errno(readv(si->fd, iov, count));
}

static ssize_t sock_writev(weft_stream *s, const struct iovec *iov, int count)
{
	struct sock_impl *si = weft_stream_impl(s);
	if (count == 1) /* send(2): no msghdr or vector to copy in */
		return ret_errno(send(si->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL));
	struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)count};
	return ret_errno(sendmsg(si->fd, &msg, MSG_NOSIGNAL));
}

static ssize_t sock_sendfd(weft_stream *s, const struct iovec *iov, int count, int fd)
{
	struct sock_impl *si = weft_stream_impl(s);
	struct sockaddr_storage ss = {0};
	socklen_t sl = sizeof(ss);
	if (getsockname(si->fd, (struct sockaddr *)&ss, &sl) < 0)
		return -errno;
	if (ss.ss_family != AF_UNIX)
		return -EOPNOTSUPP; /* TCP would drop the descriptor without a word */
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	memset(&ctl, 0, sizeof(ctl));
	struct msghdr msg = {
		.msg_iov = (struct iovec *)iov,
		.msg_iovlen = (size_t)count,
		.msg_control = ctl.buf,
		.msg_controllen = sizeof(ctl.buf),
	};
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	return ret_errno(sendmsg(si->fd, &msg, MSG_NOSIGNAL));
}

static int sock_shutdown(weft_stream *s)
{
	struct sock_impl *si = weft_stream_impl(s);
	return shutdown(si->fd, SHUT_WR) < 0 ? -errno : 0;
}

static void sock_close(weft_stream *s)
{
	struct sock_impl *si = weft_stream_impl(s);
	weft_io_free(si->io); /* removed from the loop before the fd closes */
	close(si->fd);
	free(si);
}

static int sock_watch(weft_stream *s, unsigned events)
{
	struct sock_impl *si = weft_stream_impl(s);
	return weft_io_modify(si->io, events);
}

static int sock_fd(weft_stream *s)
{
	struct sock_impl *si = weft_stream_impl(s);
	return si->fd;
}

static const weft_stream_ops sock_ops = {
	.name = "socket",
	.readv = sock_readv,
	.writev = sock_writev,
	.sendfd = sock_sendfd,
	.shutdown = sock_shutdown,
	.close = sock_close,
	.watch = sock_watch,
	.fd = sock_fd,
};

/* A TCP socket: a short read there means its receive queue was empty. */
static bool fd_is_tcp(int fd)
{
	int proto = 0;
	socklen_t len = sizeof(proto);
	return getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) == 0 && proto == IPPROTO_TCP;
}

/* fd_ready: the flags are known to be set (accept4, our own socket()).
 * tcp: 1 or 0 when the caller knows, -1 to ask the kernel.  The stream
 * core reads a TCP socket until a short read before it waits, so its
 * watcher is edge-triggered: no re-poll of the socket in every epoll_wait
 * after a message (see weft__io_set_edge for when it turns level). */
static int stream_from_fd(weft_loop *loop, int fd, bool fd_ready, int tcp, weft_stream **ret_stream)
{
	if (fd < 0)
		return -EINVAL;
	int r = -EINVAL;
	struct sock_impl *si = NULL;
	if (loop == NULL || ret_stream == NULL)
		goto fail;
	if (!fd_ready && (r = weft__fd_prepare(fd)) < 0)
		goto fail;
	r = -ENOMEM;
	si = calloc(1, sizeof(*si));
	if (si == NULL)
		goto fail;
	si->fd = fd;
	weft_stream *s;
	r = weft_stream_new(loop, &sock_ops, si, &s);
	if (r < 0)
		goto fail;
	r = weft_io_new(loop, fd, sock_io_cb, s, &si->io);
	if (r < 0) {
		weft_stream_close(s, NULL, NULL); /* closes fd, frees si */
		return r;
	}
	if (tcp > 0 || (tcp < 0 && fd_is_tcp(fd)))
		weft__io_set_edge(si->io, true);
	*ret_stream = s;
	return 0;
fail:
	free(si);
	close(fd);
	return r;
}

int weft_stream_new_socket(weft_loop *loop, int fd, weft_stream **ret_stream)
{
	return stream_from_fd(loop, fd, false, -1, ret_stream);
}

void weft__sock_stream_level(weft_stream *s)
{
	if (weft__stream_ops(s) == &sock_ops) {
		struct sock_impl *si = weft_stream_impl(s);
		weft__io_set_edge(si->io, false);
	}
}

int weft_stream_set_fd_receiver(weft_stream *s, weft_stream_fd_cb cb, void *data)
{
	if (s == NULL || weft__stream_ops(s) != &sock_ops)
		return -EOPNOTSUPP;
	struct sock_impl *si = weft_stream_impl(s);
	struct sockaddr_storage ss = {0};
	socklen_t len = sizeof(ss);
	if (getsockname(si->fd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	if (ss.ss_family != AF_UNIX)
		return -EOPNOTSUPP;
	si->fd_cb = cb;
	si->fd_data = data;
	return 0;
}

/* ---- the pipe-pair stream --------------------------------------------------- */

struct pipe_impl {
	int rfd, wfd;
	weft_io *rio, *wio;
	bool guard_sigpipe; /* SIGPIPE was not ignored when the stream was made */
};

/* read(2)/write(2) for one buffer: the kernel's single-buffer path costs
 * less than importing a vector. */
static ssize_t fd_readv(int fd, const struct iovec *iov, int count)
{
	return count == 1 ? read(fd, iov[0].iov_base, iov[0].iov_len) : readv(fd, iov, count);
}

static ssize_t fd_writev(int fd, const struct iovec *iov, int count)
{
	return count == 1 ? write(fd, iov[0].iov_base, iov[0].iov_len) : writev(fd, iov, count);
}

static ssize_t pipe_readv(weft_stream *s, const struct iovec *iov, int count)
{
	struct pipe_impl *pi = weft_stream_impl(s);
	if (pi->rfd < 0)
		return 0; /* write-only: nothing will ever come */
	return ret_errno(fd_readv(pi->rfd, iov, count));
}

/* writev(2) on a pipe raises SIGPIPE when the reader is gone, and pipes
 * have no MSG_NOSIGNAL: hold SIGPIPE back for this thread during the write
 * and take the one our write raised.  (If the program blocks SIGPIPE
 * itself, it is left pending as with any write.) */
static ssize_t writev_nosigpipe(int fd, const struct iovec *iov, int count)
{
	sigset_t pipe_set, old;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	if (pthread_sigmask(SIG_BLOCK, &pipe_set, &old) != 0)
		return ret_errno(fd_writev(fd, iov, count));
	ssize_t n = fd_writev(fd, iov, count);
	int e = errno;
	if (n < 0 && e == EPIPE && !sigismember(&old, SIGPIPE)) {
		/* Not blocked before, so not pending before: it is ours. */
		static const struct timespec zero = {0, 0};
		sigtimedwait(&pipe_set, NULL, &zero);
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return n < 0 ? -e : n;
}

static ssize_t pipe_writev(weft_stream *s, const struct iovec *iov, int count)
{
	struct pipe_impl *pi = weft_stream_impl(s);
	if (pi->wfd < 0)
		return -EPIPE;
	if (!pi->guard_sigpipe)
		return ret_errno(fd_writev(pi->wfd, iov, count)); /* no masking syscalls */
	return writev_nosigpipe(pi->wfd, iov, count);
}

static int pipe_shutdown(weft_stream *s)
{
	struct pipe_impl *pi = weft_stream_impl(s);
	if (pi->wfd >= 0) {
		weft_io_free(pi->wio);
		pi->wio = NULL;
		close(pi->wfd);
		pi->wfd = -1;
	}
	return 0;
}

static void pipe_close(weft_stream *s)
{
	struct pipe_impl *pi = weft_stream_impl(s);
	weft_io_free(pi->rio);
	weft_io_free(pi->wio);
	if (pi->rfd >= 0)
		close(pi->rfd);
	if (pi->wfd >= 0)
		close(pi->wfd);
	free(pi);
}

static int pipe_watch(weft_stream *s, unsigned events)
{
	struct pipe_impl *pi = weft_stream_impl(s);
	int r = 0;
	if (pi->rio)
		r = weft_io_modify(pi->rio, events & WEFT_IO_READ);
	if (r == 0 && pi->wio)
		r = weft_io_modify(pi->wio, events & WEFT_IO_WRITE);
	return r;
}

static void pipe_io_cb(weft_io *io, unsigned revents, void *data)
{
	(void)io;
	weft_stream_ready(data, revents);
}

static const weft_stream_ops pipe_ops = {
	.name = "pipe",
	.readv = pipe_readv,
	.writev = pipe_writev,
	.shutdown = pipe_shutdown,
	.close = pipe_close,
	.watch = pipe_watch,
};

int weft_stream_new_pipe(weft_loop *loop, int rfd, int wfd, weft_stream **ret_stream)
{
	int r = -EINVAL;
	struct pipe_impl *pi = NULL;
	if (loop == NULL || ret_stream == NULL || (rfd < 0 && wfd < 0) || (rfd >= 0 && rfd == wfd))
		goto fail;
	if ((rfd >= 0 && (r = weft__fd_prepare(rfd)) < 0) || (wfd >= 0 && (r = weft__fd_prepare(wfd)) < 0))
		goto fail;
	r = -ENOMEM;
	pi = calloc(1, sizeof(*pi));
	if (pi == NULL)
		goto fail;
	pi->rfd = rfd;
	struct sigaction sa;
	pi->guard_sigpipe = sigaction(SIGPIPE, NULL, &sa) < 0 || sa.sa_handler != SIG_IGN;
	pi->wfd = wfd;
	weft_stream *s;
	r = weft_stream_new(loop, &pipe_ops, pi, &s);
	if (r < 0)
		goto fail;
	if ((rfd >= 0 && (r = weft_io_new(loop, rfd, pipe_io_cb, s, &pi->rio)) < 0) ||
	    (wfd >= 0 && (r = weft_io_new(loop, wfd, pipe_io_cb, s, &pi->wio)) < 0)) {
		weft_stream_close(s, NULL, NULL); /* closes both fds */
		return r;
	}
	*ret_stream = s;
	return 0;
fail:
	free(pi);
	if (rfd >= 0)
		close(rfd);
	if (wfd >= 0)
		close(wfd);
	return r;
}

/* ---- credentials and addresses ---------------------------------------------- */

int weft_stream_peer_cred(const weft_stream *s, pid_t *ret_pid, uid_t *ret_uid, gid_t *ret_gid)
{
	int fd = weft_stream_fd(s);
	if (fd < 0)
		return fd;
	struct sockaddr_storage ss = {0};
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	if (ss.ss_family != AF_UNIX)
		return -EOPNOTSUPP;
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0)
		return -errno;
	if (ret_pid)
		*ret_pid = cred.pid;
	if (ret_uid)
		*ret_uid = cred.uid;
	if (ret_gid)
		*ret_gid = cred.gid;
	return 0;
}

static int fd_addr(int fd, bool peer, weft_addr *ret)
{
	if (fd < 0)
		return fd;
	if (ret == NULL)
		return -EINVAL;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int r = peer ? getpeername(fd, (struct sockaddr *)&ss, &len) : getsockname(fd, (struct sockaddr *)&ss, &len);
	if (r < 0)
		return -errno;
	int type = 0;
	socklen_t tlen = sizeof(type);
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0)
		return -errno;
	return weft_addr_from_sockaddr((struct sockaddr *)&ss, len,
			type == SOCK_DGRAM ? WEFT_ADDR_UDP : WEFT_ADDR_TCP, ret);
}

int weft_stream_local_addr(const weft_stream *s, weft_addr *ret_addr)
{
	return fd_addr(weft_stream_fd(s), false, ret_addr);
}

int weft_stream_peer_addr(const weft_stream *s, weft_addr *ret_addr)
{
	return fd_addr(weft_stream_fd(s), true, ret_addr);
}

/* ---- connect ------------------------------------------------------------------ */

struct connect_state {
	int fd;
	weft_io *io;
	weft_timer *retry; /* Unix sockets: EAGAIN when the backlog is full */
	weft_addr dst;
	weft_stream *stream;
};

static void connect_cleanup(weft_req *req, weft_req_stage stage)
{
	struct connect_state *st = weft_req_state(req);
	weft_io_free(st->io);
	st->io = NULL;
	weft_timer_free(st->retry);
	st->retry = NULL;
	if (st->fd >= 0) {
		close(st->fd);
		st->fd = -1;
	}
	if (stage == WEFT_REQ_STAGE_FREED && st->stream) {
		/* Connected but never collected by _recv. */
		weft_stream_close(st->stream, NULL, NULL);
		st->stream = NULL;
	}
}

static void connect_finish(weft_req *req)
{
	struct connect_state *st = weft_req_state(req);
	weft_io_free(st->io);
	st->io = NULL;
	int fd = st->fd;
	st->fd = -1;
	int r = stream_from_fd(weft_req_loop(req), fd, true, st->dst.kind == WEFT_ADDR_TCP, &st->stream);
	if (!weft_req_error(req, r))
		weft_req_done(req);
}

static void connect_attempt(weft_req *req);

static void connect_writable(weft_io *io, unsigned revents, void *data)
{
	weft_req *req = data;
	struct connect_state *st = weft_req_state(req);
	int err = 0;
	socklen_t len = sizeof(err);
	(void)io;
	(void)revents;
	if (getsockopt(st->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (!weft_req_error(req, err))
		connect_finish(req);
}

static void connect_retry(weft_timer *t, void *data)
{
	(void)t;
	connect_attempt(data);
}

static void connect_attempt(weft_req *req)
{
	struct connect_state *st = weft_req_state(req);
	weft_loop *loop = weft_req_loop(req);
	if (connect(st->fd, &st->dst.u.sa, st->dst.len) == 0) {
		connect_finish(req);
		return;
	}
	int err = errno;
	if (err == EINPROGRESS || err == EINTR) {
		int r = weft_io_new(loop, st->fd, connect_writable, req, &st->io);
		if (r == 0)
			r = weft_io_start(st->io, WEFT_IO_WRITE);
		weft_req_error(req, r);
		return;
	}
	if (err == EAGAIN && st->dst.u.sa.sa_family == AF_UNIX) {
		/* A full Unix listen backlog: no readiness will tell us, retry. */
		int r = st->retry ? 0 : weft_timer_new(loop, connect_retry, req, &st->retry);
		if (r == 0)
			r = weft_timer_start(st->retry, 5, 0);
		weft_req_error(req, r);
		return;
	}
	weft_req_error(req, err);
}

weft_req *weft_sock_connect_send(weft_loop *loop, const weft_addr *dst)
{
	weft_req *req = weft_req_new(loop, sizeof(struct connect_state), "sock-connect");
	if (req == NULL)
		return NULL;
	struct connect_state *st = weft_req_state(req);
	st->fd = -1;
	weft_req_set_cleanup(req, connect_cleanup);
	if (dst == NULL || dst->kind == WEFT_ADDR_UDP || dst->len == 0) {
		weft_req_error(req, EINVAL);
		return req;
	}
	st->dst = *dst;
	st->fd = socket(dst->u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (st->fd < 0) {
		weft_req_error(req, errno);
		return req;
	}
	connect_attempt(req);
	return req;
}

int weft_sock_connect_recv(weft_req *req, weft_stream **ret_stream, int *perrno)
{
	int r = weft_req_simple_recv(req, perrno);
	if (r < 0)
		return r;
	struct connect_state *st = weft_req_state(req);
	if (ret_stream == NULL || st->stream == NULL)
		return -EINVAL;
	*ret_stream = st->stream;
	st->stream = NULL;
	return 0;
}

/* ---- binding (shared with datagram sockets) ----------------------------------- */

static bool unix_path_of(const weft_addr *addr, char *path, size_t size)
{
	const struct sockaddr_un *un = (const struct sockaddr_un *)&addr->u.sa;
	size_t n = addr->len - offsetof(struct sockaddr_un, sun_path);
	if (addr->u.sa.sa_family != AF_UNIX || addr->len <= offsetof(struct sockaddr_un, sun_path) ||
	    un->sun_path[0] == '\0' || n >= size)
		return false;
	memcpy(path, un->sun_path, n);
	path[n] = '\0';
	return true;
}

/* Someone listens on this Unix path? */
static bool unix_path_live(const weft_addr *addr, int type)
{
	int fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return true; /* cannot tell: do not remove anything */
	int r = connect(fd, &addr->u.sa, addr->len);
	int err = errno;
	close(fd);
	return r == 0 || (err != ECONNREFUSED && err != ENOENT);
}

int weft__bind(int fd, const weft_addr *addr, bool replace_stale, struct weft__bound_path *ret_bound)
{
	char path[sizeof(ret_bound->path)];
	bool is_path = unix_path_of(addr, path, sizeof(path));
	if (bind(fd, &addr->u.sa, addr->len) < 0) {
		int err = errno;
		int type = 0;
		socklen_t tlen = sizeof(type);
		if (err != EADDRINUSE || !is_path || !replace_stale ||
		    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0)
			return -err;
		struct stat stb;
		if (lstat(path, &stb) < 0 || !S_ISSOCK(stb.st_mode) || unix_path_live(addr, type))
			return -EADDRINUSE;
		if (unlink(path) < 0 && errno != ENOENT)
			return -errno;
		if (bind(fd, &addr->u.sa, addr->len) < 0)
			return -errno;
	}
	ret_bound->set = false;
	struct stat st;
	if (is_path && stat(path, &st) == 0) {
		memcpy(ret_bound->path, path, sizeof(path));
		ret_bound->dev = st.st_dev;
		ret_bound->ino = st.st_ino;
		ret_bound->set = true;
	}
	return 0;
}

void weft__unlink_bound(const struct weft__bound_path *bound)
{
	struct stat st;
	/* Only if the file is still ours: a successor may have replaced it. */
	if (bound->set && stat(bound->path, &st) == 0 && st.st_dev == bound->dev && st.st_ino == bound->ino)
		unlink(bound->path);
}

/* ---- listening ------------------------------------------------------------------ */

struct accept_state {
	weft_stream *stream;
	weft_addr peer;
	weft_listener *l;
};

#define ACCEPTS_PER_WAKEUP 64
#define EMFILE_PAUSE_MS 100

struct weft_listener {
	weft_loop *loop;
	int fd;
	weft_addr_kind kind;
	weft_io *io;
	weft_timer *pause;
	weft_accept_cb cb;
	void *data;
	weft_req *acceptor; /* accept_send mode */
	struct weft__bound_path bound;
	bool dispatching; /* accept callbacks on the stack: free later */
	bool freed;
};

static void listener_destroy(weft_listener *l);

static int accept_one(weft_listener *l, weft_stream **ret_stream, weft_addr *ret_peer)
{
	memset(ret_peer, 0, sizeof(*ret_peer));
	*ret_stream = NULL;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int fd;
	do
		fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
	while (fd < 0 && (errno == EINTR || errno == ECONNABORTED));
	if (fd < 0)
		return -errno;
	if (weft_addr_from_sockaddr((struct sockaddr *)&ss, len, l->kind, ret_peer) < 0)
		memset(ret_peer, 0, sizeof(*ret_peer));
	return stream_from_fd(l->loop, fd, true, l->kind == WEFT_ADDR_TCP, ret_stream);
}

static void resume_accepting(weft_timer *t, void *data)
{
	weft_listener *l = data;
	(void)t;
	weft_io_start(l->io, WEFT_IO_READ);
}

static void listener_readable(weft_io *io, unsigned revents, void *data)
{
	weft_listener *l = data;
	(void)io;
	(void)revents;
	if (l->acceptor != NULL) {
		weft_stream *stream;
		weft_addr peer;
		int r = accept_one(l, &stream, &peer);
		if (r == -EAGAIN)
			return;
		weft_req *req = l->acceptor;
		weft_req_error(req, r);
		if (r == 0) {
			struct accept_state *st = weft_req_state(req);
			st->stream = stream;
			st->peer = peer;
			weft_req_done(req);
		}
		return;
	}
	l->dispatching = true;
	for (int i = 0; i < ACCEPTS_PER_WAKEUP && !l->freed; i++) {
		weft_stream *stream;
		weft_addr peer;
		int r = accept_one(l, &stream, &peer);
		if (r == -EAGAIN)
			break;
		if (r == -EMFILE || r == -ENFILE) {
			/* Out of descriptors: the connection stays in the backlog, so
			 * stop watching for a while instead of spinning on it. */
			weft_io_stop(l->io);
			weft_timer_start(l->pause, EMFILE_PAUSE_MS, 0);
			l->cb(l, NULL, NULL, r, l->data);
			break;
		}
		if (r < 0) {
			l->cb(l, NULL, NULL, r, l->data);
			continue;
		}
		l->cb(l, stream, &peer, 0, l->data);
	}
	l->dispatching = false;
	if (l->freed)
		listener_destroy(l); /* a callback freed it */
}

int weft_listen(weft_loop *loop, const weft_addr *addr, const weft_listen_opts *opts,
		weft_accept_cb cb, void *data, weft_listener **ret_listener)
{
	static const weft_listen_opts defaults;
	if (opts == NULL)
		opts = &defaults;
	if (loop == NULL || addr == NULL || ret_listener == NULL || addr->kind == WEFT_ADDR_UDP || addr->len == 0)
		return -EINVAL;
	weft_listener *l = calloc(1, sizeof(*l));
	if (l == NULL)
		return -ENOMEM;
	l->loop = loop;
	l->kind = addr->kind;
	l->cb = cb;
	l->data = data;
	int r;
	l->fd = socket(addr->u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->fd < 0) {
		r = -errno;
		goto fail;
	}
	int one = 1;
	if (addr->u.sa.sa_family != AF_UNIX && !opts->no_reuseaddr)
		setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (addr->u.sa.sa_family == AF_INET6) {
		int v6only = opts->ipv6_only ? 1 : 0;
		setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
	}
	r = weft__bind(l->fd, addr, opts->replace_stale, &l->bound);
	if (r < 0)
		goto fail;
	if (opts->mode != 0 && l->bound.set && chmod(l->bound.path, opts->mode) < 0) {
		r = -errno;
		goto fail;
	}
	if (listen(l->fd, opts->backlog > 0 ? opts->backlog : SOMAXCONN) < 0) {
		r = -errno;
		goto fail;
	}
	r = weft_io_new(loop, l->fd, listener_readable, l, &l->io);
	if (r == 0)
		r = weft_timer_new(loop, resume_accepting, l, &l->pause);
	if (r == 0 && cb != NULL)
		r = weft_io_start(l->io, WEFT_IO_READ);
	if (r < 0)
		goto fail;
	*ret_listener = l;
	return 0;
fail:
	weft_io_free(l->io);
	weft_timer_free(l->pause);
	weft__unlink_bound(&l->bound);
	if (l->fd >= 0)
		close(l->fd);
	free(l);
	return r;
}

int weft_listener_addr(const weft_listener *l, weft_addr *ret_addr)
{
	if (l == NULL)
		return -EINVAL;
	return fd_addr(l->fd, false, ret_addr);
}

int weft_listener_fd(const weft_listener *l)
{
	return l ? l->fd : -EINVAL;
}

static void accept_cleanup(weft_req *req, weft_req_stage stage)
{
	struct accept_state *st = weft_req_state(req);
	if (st->l != NULL && st->l->acceptor == req) {
		st->l->acceptor = NULL;
		weft_io_stop(st->l->io);
	}
	st->l = NULL;
	if (stage == WEFT_REQ_STAGE_FREED && st->stream) {
		weft_stream_close(st->stream, NULL, NULL);
		st->stream = NULL;
	}
}

weft_req *weft_listener_accept_send(weft_listener *l)
{
	if (l == NULL)
		return NULL;
	weft_req *req = weft_req_new(l->loop, sizeof(struct accept_state), "sock-accept");
	if (req == NULL)
		return NULL;
	if (l->cb != NULL || l->acceptor != NULL) {
		weft_req_error(req, l->cb != NULL ? EINVAL : EBUSY);
		return req;
	}
	struct accept_state *st = weft_req_state(req);
	st->l = l;
	l->acceptor = req;
	weft_req_set_cleanup(req, accept_cleanup);
	weft_req_error(req, weft_io_start(l->io, WEFT_IO_READ));
	return req;
}

int weft_listener_accept_recv(weft_req *req, weft_stream **ret_stream, weft_addr *ret_peer, int *perrno)
{
	int r = weft_req_simple_recv(req, perrno);
	if (r < 0)
		return r;
	struct accept_state *st = weft_req_state(req);
	if (ret_stream == NULL || st->stream == NULL)
		return -EINVAL;
	*ret_stream = st->stream;
	st->stream = NULL;
	if (ret_peer)
		*ret_peer = st->peer;
	return 0;
}

void weft_listener_free(weft_listener *l)
{
	if (l == NULL || l->freed)
		return;
	l->freed = true;
	if (l->dispatching) {
		weft_io_stop(l->io); /* no more accepts; destroyed when the callback returns */
		return;
	}
	listener_destroy(l);
}

static void listener_destroy(weft_listener *l)
{
	if (l->acceptor) {
		weft_req *req = l->acceptor;
		struct accept_state *st = weft_req_state(req);
		st->l = NULL;
		l->acceptor = NULL;
		weft_req_cancel(req);
	}
	weft_io_free(l->io); /* removed from the loop before the fd closes */
	weft_timer_free(l->pause);
	close(l->fd);
	weft__unlink_bound(&l->bound);
	free(l);
}
