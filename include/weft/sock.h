/* weft — addresses, streams and datagram sockets (after Samba's tsocket).
 *
 * Conventions of loop.h and req.h apply: negative errno returns, _send/_recv
 * request pairs whose callbacks run from the loop, NULL-safe destructors.
 * Every fd weft creates is SOCK_CLOEXEC | SOCK_NONBLOCK; nothing here ever
 * blocks the thread, and writes never raise SIGPIPE (MSG_NOSIGNAL; pipe
 * streams report EPIPE the same way only if the process ignores SIGPIPE —
 * see weft_stream_new_pipe).
 *
 * Model:
 *  - A weft_stream is a byte stream with a small vtable (weft_stream_ops):
 *    socket streams and pipe pairs are built in; TLS wraps another stream.
 *    The request helpers (readv, writev, writev_queue, shutdown) are written
 *    once against that vtable.
 *  - One read request at a time per stream (a second: EBUSY); writes are
 *    serialized through a queue; when both directions are ready the write
 *    side is served first; the write direction is watched only while output
 *    is pending, so a slow reader never makes the loop spin.
 */
#ifndef WEFT_SOCK_H
#define WEFT_SOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <weft/loop.h>
#include <weft/req.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- addresses ---------------------------------------------------------- */

typedef enum weft_addr_kind {
	WEFT_ADDR_UNIX = 1, /* "unix:/path" or "unix:@abstract" (stream or datagram) */
	WEFT_ADDR_TCP = 2,  /* "tcp:127.0.0.1:80", "tcp:[::1]:80" */
	WEFT_ADDR_UDP = 3,  /* "udp:127.0.0.1:53", "udp:[::1]:53" */
} weft_addr_kind;

/* A socket address with its kind.  Plain data: copy it, keep it on the
 * stack.  sa/len are ready for bind(2)/connect(2). */
typedef struct weft_addr {
	weft_addr_kind kind;
	socklen_t len;
	union {
		struct sockaddr sa;
		struct sockaddr_storage ss;
	} u;
} weft_addr;

/* Longest text weft_addr_format can produce, with its NUL. */
#define WEFT_ADDR_STRLEN 128

/* Parse a numeric address: "unix:/run/x.sock", "unix:@name" (Linux
 * abstract namespace), "tcp:HOST:PORT", "udp:HOST:PORT" where HOST is an
 * IPv4 address or an IPv6 address in brackets ("tcp:[::1]:0"), PORT 0..65535
 * (0: any free port, read the bound one back with the socket's local_addr).
 * IPv6 may carry a zone ("[fe80::1%eth0]").  "unix:" (unnamed) and "unix:@"
 * (empty abstract name) are rejected.
 * Returns 0, -EINVAL (malformed, or an unknown IPv6 zone; -ENAMETOOLONG for
 * a path longer than sun_path), or -EADDRNOTAVAIL when HOST is a well-formed
 * name: names need weft_resolve_send. */
WEFT_EXPORT int weft_addr_parse(const char *text, weft_addr *ret_addr);

/* Write the text form ("tcp:[::1]:8080", "unix:@name") into buf with a NUL.
 * An unnamed Unix address (an autobound or unbound peer) is "unix:", which
 * weft_addr_parse rejects.  Returns its length, or -ENOSPC (buf too small),
 * -EINVAL (also for an abstract name containing a NUL byte). */
WEFT_EXPORT int weft_addr_format(const weft_addr *addr, char *buf, size_t size);

/* Build from a sockaddr of family AF_UNIX, AF_INET or AF_INET6; kind says
 * TCP or UDP for the inet families (ignored for AF_UNIX).  Returns 0 or
 * -EINVAL / -EAFNOSUPPORT. */
WEFT_EXPORT int weft_addr_from_sockaddr(const struct sockaddr *sa, socklen_t len,
		weft_addr_kind kind, weft_addr *ret_addr);

/* The port of a TCP/UDP address, or -EINVAL. */
WEFT_EXPORT int weft_addr_port(const weft_addr *addr);

/* True if both name the same endpoint (kind, family, address, port, IPv6
 * zone; an IPv4 address never equals its IPv4-mapped IPv6 form).  Two
 * unnamed Unix addresses compare equal. */
WEFT_EXPORT bool weft_addr_equal(const weft_addr *a, const weft_addr *b);

/* Resolve "tcp:NAME:PORT" / "udp:NAME:PORT" (or any numeric address) on the
 * loop, without blocking (c-ares).  Numeric addresses complete at once
 * (posted).  Built without c-ares (meson -Dcares=disabled), a name fails
 * with EAFNOSUPPORT.  Resolution errors: ENOENT (no such name), EAGAIN
 * (temporary failure), ETIMEDOUT, ECONNREFUSED (no server reachable),
 * EINVAL / ENAMETOOLONG (malformed text), ENOMEM, ECANCELED.  Search domains
 * can add c-ares timeout rounds: set weft_req_set_timeout for a firm bound. */
WEFT_EXPORT weft_req *weft_resolve_send(weft_loop *loop, const char *text);

/* On success returns the number of addresses (>= 1, duplicates removed)
 * and sets *ret_addrs to an array the caller frees with free(); IPv4 first,
 * in resolver order.  The array is handed out once (-EALREADY after).
 * Returns -errno (and sets *perrno if not NULL) on failure. */
WEFT_EXPORT int weft_resolve_recv(weft_req *req, weft_addr **ret_addrs, int *perrno);

/* ---- streams ----------------------------------------------------------- */

typedef struct weft_stream weft_stream;

/* What a stream implementation provides.  All calls are non-blocking.
 *   readv/writev: as readv(2)/writev(2) but return -errno; -EAGAIN when they
 *       would block; readv returns 0 at end of stream.
 *   shutdown: end the write direction (0 or -errno).
 *   close: release everything (fds included); called once.
 *   pending: bytes the transport already holds for readv (TLS plaintext);
 *       a stream with pending > 0 is readable without fd readiness.  NULL
 *       means always 0.
 *   watch: start or change waiting for readiness (WEFT_IO_READ/WRITE,
 *       0: none).  When ready, the implementation calls
 *       weft_stream_ready(stream, revents).
 *   fd: the descriptor to ask for peer credentials and socket addresses,
 *       or -ENOTSOCK.  NULL means -ENOTSOCK. */
typedef struct weft_stream_ops {
	const char *name;
	ssize_t (*readv)(weft_stream *s, const struct iovec *iov, int count);
	ssize_t (*writev)(weft_stream *s, const struct iovec *iov, int count);
	int (*shutdown)(weft_stream *s);
	void (*close)(weft_stream *s);
	size_t (*pending)(weft_stream *s);
	int (*watch)(weft_stream *s, unsigned events);
	int (*fd)(weft_stream *s);
	/* Optional: writev with descriptor fd attached (SCM_RIGHTS). */
	ssize_t (*sendfd)(weft_stream *s, const struct iovec *iov, int count, int fd);
} weft_stream_ops;

/* For implementations: create a stream around ops (not copied: keep it
 * static) and the implementation's impl pointer. */
WEFT_EXPORT int weft_stream_new(weft_loop *loop, const weft_stream_ops *ops, void *impl,
		weft_stream **ret_stream);
WEFT_EXPORT void *weft_stream_impl(const weft_stream *s);
/* For implementations: readiness arrived (from the impl's watcher). */
WEFT_EXPORT void weft_stream_ready(weft_stream *s, unsigned revents);

/* Adopt a connected stream socket (ownership of fd passes to the stream,
 * also on failure: then fd is closed).  fd is made non-blocking and
 * close-on-exec.  Returns 0, -EINVAL, -ENOMEM. */
WEFT_EXPORT int weft_stream_new_socket(weft_loop *loop, int fd, weft_stream **ret_stream);

/* A stream over two fds — read from rfd, write to wfd (a spawned child's
 * stdout and stdin).  Either may be -1 for a one-way stream.  Ownership
 * passes to the stream (closed on failure too).  A write to a pipe whose
 * reader is gone gives -EPIPE and never raises SIGPIPE: pipes have no
 * MSG_NOSIGNAL, so unless SIGPIPE was ignored when the stream was made,
 * each write holds SIGPIPE back for the thread (two more system calls) and
 * takes the one it raised.  Returns 0, -EINVAL, -ENOMEM. */
WEFT_EXPORT int weft_stream_new_pipe(weft_loop *loop, int rfd, int wfd, weft_stream **ret_stream);

/* Close: pending requests complete with ECANCELED (callbacks from the loop),
 * the transport is released (its fds closed) now, and cb (may be NULL) runs
 * from the loop on the next iteration, when the stream's memory is freed —
 * so run the loop once more before weft_loop_free (-EBUSY until then).  The
 * stream must not be used after this call.  Only the callbacks of requests
 * still fire afterwards: ECANCELED for those pending, and the result of a
 * request that had completed just before the close but whose callback had
 * not run yet; neither may use the stream.  May be called from any
 * callback.  NULL is allowed. */
typedef void (*weft_stream_close_cb)(void *data);
WEFT_EXPORT void weft_stream_close(weft_stream *s, weft_stream_close_cb cb, void *data);

WEFT_EXPORT weft_loop *weft_stream_loop(const weft_stream *s);
WEFT_EXPORT const char *weft_stream_name(const weft_stream *s);

/* Bytes already buffered inside the transport (TLS); 0 for sockets. */
WEFT_EXPORT size_t weft_stream_pending(const weft_stream *s);

/* The socket fd (borrowed: do not close it), or -ENOTSOCK. */
WEFT_EXPORT int weft_stream_fd(const weft_stream *s);

/* Peer credentials of a Unix-domain stream (SO_PEERCRED): pid, uid, gid as
 * of connect/listen time.  Returns 0, or -ENOTSOCK / -EOPNOTSUPP (not a Unix
 * socket) / -errno. */
WEFT_EXPORT int weft_stream_peer_cred(const weft_stream *s, pid_t *ret_pid, uid_t *ret_uid, gid_t *ret_gid);

/* Descriptors passed with the stream's bytes (SCM_RIGHTS on a Unix-domain
 * socket stream): from now on every read is a recvmsg with room for 16
 * descriptors, taken close-on-exec, and each one that arrives is handed to
 * cb, which owns it from then on (cb NULL: they are closed).  A descriptor
 * is delivered when the read that carries it happens — possibly before the
 * bytes sent with it reach a reader, never after them.  More than 16 in one
 * message: the kernel closes the rest.  Returns 0, or -EOPNOTSUPP for a
 * stream that is not a Unix-domain socket stream. */
typedef void (*weft_stream_fd_cb)(weft_stream *s, int fd, void *data);
WEFT_EXPORT int weft_stream_set_fd_receiver(weft_stream *s, weft_stream_fd_cb cb, void *data);

/* Local and peer address of a socket stream.  Returns 0 or -errno. */
WEFT_EXPORT int weft_stream_local_addr(const weft_stream *s, weft_addr *ret_addr);
WEFT_EXPORT int weft_stream_peer_addr(const weft_stream *s, weft_addr *ret_addr);

/* readv with a next-vector callback (tstream_readv_pdu semantics).
 *
 * next(s, data, &vector, &count) is asked for an iovec array; the request
 * fills it completely from the stream, then asks again, until next returns
 * count 0 — then the request completes successfully.  The array and the
 * buffers it points to belong to the caller and must stay valid until next
 * is called again or the request completes (the request does not modify
 * them).  next returns 0, or -errno to fail the request with that error.
 * next is called the first time from the loop, not inside readv_send.
 *
 * Returns NULL on allocation failure.  A second read request on a stream
 * that has one in progress completes with EBUSY. */
typedef int (*weft_stream_next_vector_fn)(weft_stream *s, void *data,
		const struct iovec **ret_vector, size_t *ret_count);
WEFT_EXPORT weft_req *weft_stream_readv_send(weft_stream *s, weft_stream_next_vector_fn next, void *data);

/* Returns 0 when next returned an empty array; otherwise -errno with
 * *perrno set: EPIPE is the end of the stream (the peer closed; progress
 * tells how many bytes this request had read, so the caller can tell a
 * clean close between PDUs from a truncated one), ECONNRESET a reset, any
 * other value an error of the transport or of next; ECANCELED when the
 * stream was closed.  weft_req_progress(req) = bytes read. */
WEFT_EXPORT int weft_stream_readv_recv(weft_req *req, int *perrno);

/* Read what is there: complete as soon as at least one byte is in buf
 * (up to len), like read(2) or libuv's read callback — for proxies and
 * streams without PDUs.  Shares the one-read-at-a-time rule with readv
 * (EBUSY).  buf is borrowed until completion. */
WEFT_EXPORT weft_req *weft_stream_read_send(weft_stream *s, void *buf, size_t len);
/* Bytes read (>= 1), or -errno with *perrno set: EPIPE at the end of the
 * stream, ECONNRESET, ECANCELED, ETIMEDOUT, EINVAL (len 0 or buf NULL). */
WEFT_EXPORT ssize_t weft_stream_read_recv(weft_req *req, int *perrno);

/* A reader that stays, as libuv's uv_read_start: no request per read.
 * While started, whenever the stream has data, alloc(s, suggested, &buf,
 * &len, data) is asked for a buffer (the caller's, borrowed until the
 * callback) and cb(s, n, buf, data) gets n > 0 bytes read into it — or,
 * once, -EPIPE at the end of the stream or -errno (ECONNRESET, ...), after
 * which reading has stopped.  alloc giving no buffer (len 0) stops reading
 * too (start again when there is room).  Both run from the loop, never
 * inside read_start.  The callbacks may stop, start, write or close.
 * Bytes the stream read ahead come first.  A read request (readv_send,
 * read_send) and a started reader exclude each other: -EBUSY / EBUSY.
 * read_start returns 0, -EINVAL, -EBUSY; calling it while started replaces
 * the callbacks.  read_stop returns 0 (stopping a stopped reader too). */
typedef void (*weft_stream_alloc_cb)(weft_stream *s, size_t suggested, void **ret_buf, size_t *ret_len,
		void *data);
typedef void (*weft_stream_read_cb)(weft_stream *s, ssize_t n, void *buf, void *data);
WEFT_EXPORT int weft_stream_read_start(weft_stream *s, weft_stream_alloc_cb alloc, weft_stream_read_cb cb,
		void *data);
WEFT_EXPORT int weft_stream_read_stop(weft_stream *s);

/* Write the whole vector (as many partial writes as needed).  The iovec
 * array is copied; the buffers are borrowed until completion.  A plain
 * writev needs an idle stream: while another write (plain or queued) is in
 * progress or waiting it fails with EBUSY; writes queued and shutdowns
 * requested after it wait behind it.  Use writev_queue to serialize.
 * weft_req_progress(req) = bytes written so far (also after a cancel or
 * timeout).  A write from a foreign queue (writev_queue_send with a queue
 * of your own) that reaches its head while another write of the stream
 * runs fails with EBUSY: give all writers of a stream the same queue. */
WEFT_EXPORT weft_req *weft_stream_writev_send(weft_stream *s, const struct iovec *vector, size_t count);
/* Bytes written (the whole vector), or -errno with *perrno set (EPIPE or
 * ECONNRESET when the peer went away, ECANCELED on close). */
WEFT_EXPORT ssize_t weft_stream_writev_recv(weft_req *req, int *perrno);

/* Write what the transport takes now, without a request (uv_try_write):
 * returns the bytes written (possibly fewer than the vector holds; queue
 * the rest with writev_queue_send), -EAGAIN if nothing could be written,
 * -EBUSY if another write of the stream is in progress or queued (writing
 * now would reorder the stream), or another -errno (-EPIPE, -ECONNRESET).
 * The buffers are not retained.  The cheapest way to answer small
 * requests: no allocation, no callback. */
WEFT_EXPORT ssize_t weft_stream_try_writev(weft_stream *s, const struct iovec *vector, size_t count);

/* As writev_send, serialized through queue — or, with queue NULL, through
 * the stream's own write queue, which is what most callers want. */
WEFT_EXPORT weft_req *weft_stream_writev_queue_send(weft_stream *s, weft_queue *queue,
		const struct iovec *vector, size_t count);
WEFT_EXPORT ssize_t weft_stream_writev_queue_recv(weft_req *req, int *perrno);

/* Write buf with descriptor fd attached to its first byte (SCM_RIGHTS on a
 * Unix-domain socket stream), through the stream's own write queue, in
 * order with the other writes queued there.  fd is borrowed: the kernel
 * takes its own reference when the first byte goes out, so the caller may
 * close fd once the request completes.  It is never sent twice, however
 * many partial writes the rest of buf needs.  Errors: EINVAL (fd < 0, empty
 * buf), EOPNOTSUPP (the transport cannot carry descriptors), and those of
 * writev.  Collect with weft_stream_writev_recv. */
WEFT_EXPORT weft_req *weft_stream_sendfd_send(weft_stream *s, int fd, const void *buf, size_t len);

/* Half-close after everything queued on the stream's own write queue has
 * been written.  Returns 0 or -errno via weft_req_simple_recv. */
WEFT_EXPORT weft_req *weft_stream_shutdown_send(weft_stream *s);

/* Number of write requests waiting in the stream's own queue (the running
 * one included). */
WEFT_EXPORT size_t weft_stream_write_queue_length(const weft_stream *s);

/* ---- connecting and listening ------------------------------------------ */

/* Connect to a TCP or Unix-domain address without blocking (EINPROGRESS →
 * SO_ERROR).  Errors: ECONNREFUSED, ENOENT (no such socket file),
 * ETIMEDOUT (set a timeout on the request), ENETUNREACH, ... */
WEFT_EXPORT weft_req *weft_sock_connect_send(weft_loop *loop, const weft_addr *dst);
/* 0 and *ret_stream (owned by the caller) or -errno. */
WEFT_EXPORT int weft_sock_connect_recv(weft_req *req, weft_stream **ret_stream, int *perrno);

typedef struct weft_listener weft_listener;

typedef struct weft_listen_opts {
	int backlog;          /* 0: SOMAXCONN */
	unsigned mode;        /* Unix path sockets: chmod to this (e.g. 0600); 0: umask */
	bool replace_stale;   /* Unix path: a socket file no one listens on is
	                       * removed and replaced; a live one is -EADDRINUSE */
	bool no_reuseaddr;    /* TCP: do not set SO_REUSEADDR */
	bool ipv6_only;       /* TCP "[::]": IPV6_V6ONLY */
} weft_listen_opts;

/* accept callback: a new connection (stream owned by the callee) and its
 * peer address; or, with stream NULL, an accept error (-errno in err: EMFILE
 * or ENFILE pause accepting for 100 ms instead of spinning). */
typedef void (*weft_accept_cb)(weft_listener *l, weft_stream *stream, const weft_addr *peer,
		int err, void *data);

/* Listen on a TCP or Unix-domain stream address (opts may be NULL).  With
 * cb, every accepted connection goes to cb (at most 64 per loop wake-up);
 * with cb NULL, connections wait in the kernel until weft_listener_accept_send.
 * Returns 0 or -errno (EADDRINUSE, EACCES, ...). */
WEFT_EXPORT int weft_listen(weft_loop *loop, const weft_addr *addr, const weft_listen_opts *opts,
		weft_accept_cb cb, void *data, weft_listener **ret_listener);

/* The bound address (the real port after binding port 0). */
WEFT_EXPORT int weft_listener_addr(const weft_listener *l, weft_addr *ret_addr);
WEFT_EXPORT int weft_listener_fd(const weft_listener *l);

/* Accept one connection (listeners made with cb NULL only; one accept
 * request at a time: EBUSY). */
WEFT_EXPORT weft_req *weft_listener_accept_send(weft_listener *l);
WEFT_EXPORT int weft_listener_accept_recv(weft_req *req, weft_stream **ret_stream,
		weft_addr *ret_peer, int *perrno);

/* Stop listening and close the socket; a Unix socket file this listener
 * created is removed.  Streams already accepted are not affected.  A
 * pending accept request completes with ECANCELED.  NULL is allowed. */
WEFT_EXPORT void weft_listener_free(weft_listener *l);

/* ---- datagram sockets --------------------------------------------------- */

typedef struct weft_dgram weft_dgram;

/* A UDP or Unix-domain datagram socket.  local (may be NULL: an ephemeral
 * port / autobound Unix name of remote's family) is bound; remote (may be
 * NULL) becomes the default destination and the only accepted source
 * (connect(2)).  At least one of them is required.  A Unix path that
 * exists is EADDRINUSE (remove a stale one first).  Returns 0 or -errno:
 * -EINVAL (a TCP address, local and remote of different families),
 * -EADDRINUSE, -EACCES, -ECONNREFUSED, ... */
WEFT_EXPORT int weft_dgram_open(weft_loop *loop, const weft_addr *local, const weft_addr *remote,
		weft_dgram **ret_dgram);

WEFT_EXPORT int weft_dgram_local_addr(const weft_dgram *d, weft_addr *ret_addr);
WEFT_EXPORT int weft_dgram_fd(const weft_dgram *d);

/* Receive the next datagram (one receive request at a time: EBUSY). */
WEFT_EXPORT weft_req *weft_dgram_recvfrom_send(weft_dgram *d);
/* Returns the datagram's length (0 is a valid empty datagram) and hands
 * out, once, *ret_buf (malloc'd, caller frees with free(); NULL when the
 * length is 0; ret_buf may be NULL to drop it) and *ret_src (may be NULL);
 * or -errno with *perrno set: ECANCELED on close, ECONNREFUSED (a connected
 * socket's peer is gone: ICMP, or the Unix receiver closed), EMSGSIZE only
 * for a Unix datagram over 65536 bytes (it is dropped; UDP payloads always
 * fit). */
WEFT_EXPORT ssize_t weft_dgram_recvfrom_recv(weft_req *req, uint8_t **ret_buf, weft_addr *ret_src,
		int *perrno);

/* Send one datagram to dst (NULL: the remote given at open).  buf is
 * borrowed until completion.  One plain sendto at a time per socket (EBUSY),
 * independent of queued sends; use sendto_queue to serialize (queue NULL:
 * the socket's own queue).  Sends never overtake sends already blocked.
 * Errors: EDESTADDRREQ / ENOTCONN (no destination), EMSGSIZE (too large),
 * ECONNREFUSED, ECANCELED (closed).  A Unix receiver with a full queue is
 * retried on a short backoff timer (1..32 ms): Linux reports an unconnected
 * Unix datagram socket writable even then. */
WEFT_EXPORT weft_req *weft_dgram_sendto_send(weft_dgram *d, const void *buf, size_t len,
		const weft_addr *dst);
WEFT_EXPORT ssize_t weft_dgram_sendto_recv(weft_req *req, int *perrno);
WEFT_EXPORT weft_req *weft_dgram_sendto_queue_send(weft_dgram *d, weft_queue *queue,
		const void *buf, size_t len, const weft_addr *dst);
WEFT_EXPORT ssize_t weft_dgram_sendto_queue_recv(weft_req *req, int *perrno);

/* Close: pending requests complete with ECANCELED (callbacks from the
 * loop; a request that had just completed still gets its result); the
 * socket is closed now (a Unix socket file it bound is removed).  May be
 * called from any callback.  NULL is allowed. */
WEFT_EXPORT void weft_dgram_close(weft_dgram *d);

#ifdef __cplusplus
}
#endif

#endif
