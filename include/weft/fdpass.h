/* weft — passing file descriptors between processes over Unix sockets
 * (after Facebook's libafdt, in both directions).
 *
 * Conventions of loop.h, req.h and sock.h apply: negative errno returns,
 * _send/_recv request pairs whose callbacks run from the loop, NULL-safe
 * destructors, nothing blocks the loop thread (the low-level calls at the
 * end are the only blocking functions, for simple programs, and only when
 * asked).  Every socket weft creates is SOCK_CLOEXEC | SOCK_NONBLOCK, every
 * receive uses MSG_CMSG_CLOEXEC, every send MSG_NOSIGNAL.
 *
 * Model:
 *  - A server listens on a Unix socket (path or abstract name).  Each
 *    request that arrives goes to the request handler as a call; the
 *    handler answers the call with response bytes and zero or more
 *    descriptors — at once or later (weft_fdpass_call_reply), so it may do
 *    asynchronous work first — or with an errno (weft_fdpass_call_fail).
 *    Responses leave in the order the requests came, even when calls are
 *    answered out of order.  A post handler runs once per answered call,
 *    after the response went out (or could not): the place to close a
 *    descriptor that was lent to the response.  An error handler hears of
 *    every failure that is not a call's: accept errors, broken or
 *    misbehaving connections, each with its phase and operation.
 *  - A client sends requests (bytes plus descriptors) on one connection,
 *    pipelined; each is a weft_req that completes with the response bytes
 *    and descriptors, or with an error (errno, phase, operation) —
 *    exactly one of the two, once.  Timeouts: weft_req_set_timeout on a
 *    request, or a default for every request of a client.
 *  - Descriptors ride in SCM_RIGHTS on the first byte of a message and
 *    are never sent twice; a message that fails (malformed, truncated, too
 *    many descriptors) has every descriptor that arrived with it closed.
 *
 * Ownership of descriptors:
 *  - Sending: descriptors passed to weft are borrowed, never closed by weft.
 *    A client's stay borrowed until its request completes; a server
 *    response's until its post handler runs.
 *  - Receiving: descriptors arrive in a weft_fdpass_msg's fds array.  Take
 *    one by copying it and writing -1 in its slot; weft closes every slot
 *    still >= 0 when the message is done with (weft_fdpass_msg_clear on
 *    the client; the end of the call on the server).
 *
 * The wire format is documented in docs/fdpass.md: a 16-byte header
 * (magic "WFDP", version, type, descriptor count, payload length,
 * sequence number), then the payload.
 */
#ifndef WEFT_FDPASS_H
#define WEFT_FDPASS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <weft/loop.h>
#include <weft/req.h>
#include <weft/sock.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- limits ------------------------------------------------------------- */

/* Defaults and hard ceilings.  SCM_MAX_FD (253) is Linux's own limit on
 * descriptors per message. */
#define WEFT_FDPASS_DEFAULT_MAX_PAYLOAD 65536u
#define WEFT_FDPASS_MAX_PAYLOAD_LIMIT (16u * 1024u * 1024u)
#define WEFT_FDPASS_DEFAULT_MAX_FDS 16u
#define WEFT_FDPASS_MAX_FDS_LIMIT 253u
#define WEFT_FDPASS_DEFAULT_MAX_PENDING 64u
#define WEFT_FDPASS_DEFAULT_MAX_CONNECTIONS 256u

/* What one endpoint accepts and queues.  A field left 0 takes its default.
 *   max_payload     bytes of payload per message, both directions (a
 *                   longer one to send: EMSGSIZE; received: the
 *                   connection fails with EMSGSIZE)
 *   max_fds         descriptors per message, both directions (sending
 *                   more: ETOOMANYREFS; receiving more: the connection
 *                   fails with ETOOMANYREFS and they are all closed)
 *   max_pending     server: calls in progress per connection before weft
 *                   stops reading that connection (back-pressure);
 *                   client: requests waiting for their response, those
 *                   that timed out after going out included until their
 *                   late answer arrives (another request_send completes
 *                   with EAGAIN)
 *   max_connections server only: open connections before weft stops
 *                   accepting (they wait in the kernel's backlog) */
typedef struct weft_fdpass_limits {
	uint32_t max_payload;
	uint32_t max_fds;
	uint32_t max_pending;
	uint32_t max_connections;
} weft_fdpass_limits;

/* ---- errors: phase and operation ----------------------------------------- */

typedef enum weft_fdpass_phase {
	WEFT_FDPASS_PHASE_NONE = 0,
	WEFT_FDPASS_PHASE_LISTEN = 1,         /* creating the server socket */
	WEFT_FDPASS_PHASE_ACCEPT = 2,         /* accepting a connection */
	WEFT_FDPASS_PHASE_READ_REQUEST = 3,   /* server reading a request */
	WEFT_FDPASS_PHASE_HANDLE_REQUEST = 4, /* the server's handler failed the call */
	WEFT_FDPASS_PHASE_WRITE_RESPONSE = 5, /* server writing a response */
	WEFT_FDPASS_PHASE_CONNECT = 6,        /* client connecting */
	WEFT_FDPASS_PHASE_WRITE_REQUEST = 7,  /* client writing a request */
	WEFT_FDPASS_PHASE_READ_RESPONSE = 8,  /* client waiting for / reading the response */
} weft_fdpass_phase;

typedef enum weft_fdpass_op {
	WEFT_FDPASS_OP_NONE = 0,
	WEFT_FDPASS_OP_SOCKET = 1,
	WEFT_FDPASS_OP_BIND = 2,
	WEFT_FDPASS_OP_LISTEN = 3,
	WEFT_FDPASS_OP_ACCEPT = 4,
	WEFT_FDPASS_OP_CONNECT = 5,
	WEFT_FDPASS_OP_SENDMSG = 6,
	WEFT_FDPASS_OP_RECVMSG = 7,
	WEFT_FDPASS_OP_EOF = 8,      /* the peer closed (EPIPE: inside a message;
	                              * ECONNRESET: with requests unanswered) */
	WEFT_FDPASS_OP_DECODE = 9,   /* a malformed or oversized message */
	WEFT_FDPASS_OP_ALLOC = 10,   /* out of memory */
	WEFT_FDPASS_OP_HANDLER = 11, /* the server's handler answered with an errno */
	WEFT_FDPASS_OP_TIMEOUT = 12, /* the request's timeout expired */
	WEFT_FDPASS_OP_CANCEL = 13,  /* canceled, or the client was freed */
} weft_fdpass_op;

/* One failure.  err is a positive errno value; message a short English
 * description ("recvmsg: bad magic"), NUL-terminated. */
typedef struct weft_fdpass_error {
	weft_fdpass_phase phase;
	weft_fdpass_op op;
	int err;
	char message[96];
} weft_fdpass_error;

/* Static names: "read-request", "recvmsg", ... ("?" for unknown values). */
WEFT_EXPORT const char *weft_fdpass_phase_name(weft_fdpass_phase phase);
WEFT_EXPORT const char *weft_fdpass_op_name(weft_fdpass_op op);

/* ---- messages -------------------------------------------------------------- */

/* A received message: payload bytes and descriptors.  See "Ownership of
 * descriptors" above for the fds array. */
typedef struct weft_fdpass_msg {
	void *buf;  /* the payload (NULL when len is 0) */
	size_t len;
	int *fds;   /* nfds descriptors, close-on-exec (NULL when nfds is 0) */
	size_t nfds;
} weft_fdpass_msg;

/* Release a message handed out by weft_fdpass_request_recv (or a zeroed
 * one): close every fds slot still >= 0, free the memory (buf and fds may
 * share one block: never free them yourself), zero the struct.  Any
 * thread may call it.  The block of a small message (up to 256 bytes of
 * payload and descriptors) is kept, one per thread, for the next small
 * response received on that thread, and freed when the thread exits.
 * NULL is allowed. */
WEFT_EXPORT void weft_fdpass_msg_clear(weft_fdpass_msg *msg);

/* Peer credentials of a connection (SO_PEERCRED, as of connect time). */
typedef struct weft_fdpass_peer {
	pid_t pid;
	uid_t uid;
	gid_t gid;
} weft_fdpass_peer;

/* ---- server ---------------------------------------------------------------- */

typedef struct weft_fdpass_server weft_fdpass_server;
typedef struct weft_fdpass_call weft_fdpass_call;

/* A request arrived.  req->buf is borrowed for the duration of the
 * callback (copy what you need later).  req->fds belong to the call: take
 * the ones you keep as described above before answering; the rest are
 * closed when the call is answered, and the array is gone with the call
 * (do not read it after answering).  peer is borrowed for the callback
 * (weft_fdpass_call_peer gives it while the call is open).  Answer the call
 * exactly once, now or later, with weft_fdpass_call_reply or
 * weft_fdpass_call_fail.  If the server was closed meanwhile the call
 * still must be answered (the connection finishes it). */
typedef void (*weft_fdpass_request_cb)(weft_fdpass_server *srv, weft_fdpass_call *call,
		const weft_fdpass_msg *req, const weft_fdpass_peer *peer, void *data);

/* The response of an answered call went out (err 0) or could not (err
 * positive: the connection broke first; a graceful server close still
 * sends it).  fds and
 * nfds are the descriptors given to weft_fdpass_call_reply (borrowed by
 * weft until now: close them here if they were only lent to the
 * response).  post_data is the value given to weft_fdpass_call_reply. */
typedef void (*weft_fdpass_post_cb)(weft_fdpass_server *srv, const int *fds, size_t nfds,
		int err, void *post_data, void *data);

/* A failure that is not a call's: accept errors (EMFILE/ENFILE pause
 * accepting for 100 ms), and connections closed because of an error (the
 * connection is gone when this runs; its pending calls stay valid until
 * answered).  A connection the peer closed cleanly between messages is no
 * error. */
typedef void (*weft_fdpass_error_cb)(weft_fdpass_server *srv, const weft_fdpass_error *error,
		void *data);

typedef struct weft_fdpass_server_opts {
	weft_fdpass_post_cb post;   /* may be NULL */
	weft_fdpass_error_cb error; /* may be NULL */
	weft_fdpass_limits limits;  /* zero fields: defaults */
	unsigned mode;              /* Unix path sockets: chmod to this (e.g. 0600); 0: umask */
	int backlog;                /* 0: SOMAXCONN */
	bool replace_stale;         /* a socket file nobody listens on is removed and
	                             * replaced; a live one is always EADDRINUSE */
} weft_fdpass_server_opts;

/* Listen on a Unix address ("unix:/path" or "unix:@abstract", parsed with
 * weft_addr_parse).  on_request is required; opts may be NULL.
 * Returns 0 and sets *ret_srv, or -errno: -EINVAL (not a Unix address, no
 * handler, bad limits), -EADDRINUSE (the path exists: a live server, or a
 * stale file without replace_stale; the abstract name is taken), -EACCES,
 * -ENOMEM, ...  On failure, ret_error (may be NULL) receives the phase
 * (LISTEN) and operation that failed. */
WEFT_EXPORT int weft_fdpass_server_new(weft_loop *loop, const weft_addr *addr,
		const weft_fdpass_server_opts *opts, weft_fdpass_request_cb on_request, void *data,
		weft_fdpass_server **ret_srv, weft_fdpass_error *ret_error);

/* Serve an already connected socket (a socketpair end, an inherited fd) as
 * one more connection of srv.  Ownership of fd passes to weft (closed on
 * failure too).  Returns 0, -EINVAL, -ENOMEM, -EBUSY (the server is
 * closing or at max_connections). */
WEFT_EXPORT int weft_fdpass_server_adopt(weft_fdpass_server *srv, int fd);

/* The bound address. */
WEFT_EXPORT int weft_fdpass_server_addr(const weft_fdpass_server *srv, weft_addr *ret_addr);

/* Connections open now (those finishing after a close included). */
WEFT_EXPORT size_t weft_fdpass_server_connections(const weft_fdpass_server *srv);

/* Change the limits (zero fields: defaults).  They apply to connections
 * accepted from now on.  Returns 0 or -EINVAL (above the ceilings). */
WEFT_EXPORT int weft_fdpass_server_set_limits(weft_fdpass_server *srv, const weft_fdpass_limits *limits);

/* Close gracefully: stop accepting now (the listening socket is closed and
 * a socket file it created is removed); each connection stops reading new
 * requests (requests not yet handed to the handler are dropped), finishes
 * the calls in progress (the handler still answers them, their responses
 * go out, the post handler runs) and is closed.
 * Then cb(data) (may be NULL) runs from the loop, and srv is freed.  No
 * request, post or error callback runs after cb.  srv must not be used
 * after this call except to answer its calls.  May be called from any
 * callback of srv.  NULL is allowed. */
typedef void (*weft_fdpass_close_cb)(void *data);
WEFT_EXPORT void weft_fdpass_server_close(weft_fdpass_server *srv, weft_fdpass_close_cb cb, void *data);

/* Answer a call: buf/len (copied now) and the descriptors fds[0..nfds)
 * (borrowed until the post handler).  The call is finished by this
 * function whatever it returns: do not use it again.
 * Returns 0: the response is queued and the post handler will run exactly
 * once, later (not inside this call); or -errno: nothing was queued and
 * the post handler will not run (the descriptors are yours as before):
 * -EINVAL (call NULL, len > 0 with buf NULL, nfds > 0 with fds NULL or a
 * negative fd), -EMSGSIZE (len > max_payload), -ETOOMANYREFS (nfds >
 * max_fds), -ECONNRESET (the connection is already gone), -ENOMEM. */
WEFT_EXPORT int weft_fdpass_call_reply(weft_fdpass_call *call, const void *buf, size_t len,
		const int *fds, size_t nfds, void *post_data);

/* Answer a call with an error: the client's request fails with errno err
 * (1..4095), phase HANDLE_REQUEST, operation HANDLER.  The post handler
 * does not run.  The call is finished by this function whatever it
 * returns.  Returns 0, -EINVAL (err out of range), -ECONNRESET, -ENOMEM. */
WEFT_EXPORT int weft_fdpass_call_fail(weft_fdpass_call *call, int err);

/* The credentials of the call's peer (valid until the call ends). */
WEFT_EXPORT const weft_fdpass_peer *weft_fdpass_call_peer(const weft_fdpass_call *call);

/* ---- client ---------------------------------------------------------------- */

typedef struct weft_fdpass_client weft_fdpass_client;

/* Connect to a server's Unix address without blocking (a full backlog is
 * retried every 5 ms).  Errors: ECONNREFUSED (nobody listens), ENOENT (no
 * such socket file), EACCES, EINVAL (not a Unix address), ETIMEDOUT (with a
 * timeout set on the request), ENOMEM. */
WEFT_EXPORT weft_req *weft_fdpass_connect_send(weft_loop *loop, const weft_addr *addr);
/* 0 and *ret_client (owned by the caller, free with weft_fdpass_client_free),
 * or -errno with *perrno set. */
WEFT_EXPORT int weft_fdpass_connect_recv(weft_req *req, weft_fdpass_client **ret_client, int *perrno);

/* A client on an already connected socket (a socketpair end, an inherited
 * fd).  Ownership of fd passes to the client (closed on failure too).
 * Returns 0, -EINVAL, -ENOMEM. */
WEFT_EXPORT int weft_fdpass_client_new(weft_loop *loop, int fd, weft_fdpass_client **ret_client);

/* Limits (zero fields: defaults; max_connections is ignored).  Returns 0 or
 * -EINVAL. */
WEFT_EXPORT int weft_fdpass_client_set_limits(weft_fdpass_client *c, const weft_fdpass_limits *limits);

/* A timeout applied to every request sent from now on (as
 * weft_req_set_timeout; 0: none, the default). */
WEFT_EXPORT void weft_fdpass_client_set_timeout(weft_fdpass_client *c, uint64_t timeout_ms);

/* The server's credentials (SO_PEERCRED).  Returns 0 or -errno. */
WEFT_EXPORT int weft_fdpass_client_peer(const weft_fdpass_client *c, weft_fdpass_peer *ret_peer);

/* Requests waiting for their response. */
WEFT_EXPORT size_t weft_fdpass_client_pending(const weft_fdpass_client *c);

/* Free the client: the socket is closed now; requests still waiting
 * complete with ECANCELED (op CANCEL), their callbacks run from the loop.
 * May be called from any callback, the completion of one of its requests
 * included.  NULL is allowed. */
WEFT_EXPORT void weft_fdpass_client_free(weft_fdpass_client *c);

/* Send a request: buf/len (copied now) with fds[0..nfds) (borrowed until
 * the request completes) and wait for its response.  Requests on one
 * client are written and answered in order; any number may be in flight
 * (up to max_pending).  A request that times out or is canceled after its
 * first byte went out still goes out whole, and its late response is
 * discarded (its descriptors closed), so the connection stays usable.
 * Returns NULL only on allocation failure or with c NULL; errors detected
 * now (EINVAL, EMSGSIZE, ETOOMANYREFS, EAGAIN at max_pending, ENOTCONN on
 * a client whose connection failed) complete the request from the loop. */
WEFT_EXPORT weft_req *weft_fdpass_request_send(weft_fdpass_client *c, const void *buf, size_t len,
		const int *fds, size_t nfds);

/* On success returns 0 and hands out the response (once; later calls
 * -EALREADY) in *ret_msg (release it with weft_fdpass_msg_clear; ret_msg
 * NULL drops it, its descriptors closed).  On failure returns -errno, sets
 * *perrno (if not NULL) and *ret_error (if not NULL) with phase and
 * operation.  errno values: whatever the server's handler gave to
 * weft_fdpass_call_fail (op HANDLER); ECONNRESET (the server closed with
 * this request unanswered, op EOF); EPIPE (the connection broke while
 * writing); EPROTO / EMSGSIZE / ETOOMANYREFS (a malformed, oversized or
 * overfull response: the connection is closed); ETIMEDOUT; ECANCELED;
 * EAGAIN; ENOTCONN; EINVAL. */
WEFT_EXPORT int weft_fdpass_request_recv(weft_req *req, weft_fdpass_msg *ret_msg,
		weft_fdpass_error *ret_error, int *perrno);

/* ---- low-level: one message on a connected socket ------------------------ */

/* Send one framed message (type "request" — any weft server or
 * weft_fdpass_recv reads it) with fds[0..nfds) on its first byte.
 * timeout_ms < 0 waits as long as needed, 0 never waits, > 0 waits up to
 * that long in total (poll(2); the socket may be blocking or not).
 * Returns 0 when the whole message went out, or -errno: -EAGAIN (timeout 0
 * and nothing could be sent: nothing was), -ETIMEDOUT (the time ran out;
 * if a part went out the stream is no longer framed: close it), -EINVAL,
 * -EMSGSIZE (len > WEFT_FDPASS_MAX_PAYLOAD_LIMIT), -ETOOMANYREFS (nfds >
 * WEFT_FDPASS_MAX_FDS_LIMIT), -EPIPE, ... */
WEFT_EXPORT int weft_fdpass_send(int sock, const void *buf, size_t len, const int *fds, size_t nfds,
		int timeout_ms);

/* Receive one message of any type into buf[0..size) and up to *nfds
 * descriptors into fds (*nfds in: capacity, out: count received; nfds may
 * be NULL for none).  Reads exactly one message, nothing of the next.
 * timeout_ms as for weft_fdpass_send (0: -EAGAIN if no byte is there yet).
 * Returns the payload length, or -errno: -EPIPE (the peer closed before a
 * message; -ECONNRESET inside one), -EAGAIN, -ETIMEDOUT (inside a message:
 * close the socket), -EPROTO (malformed header: close the socket),
 * -EMSGSIZE (payload longer than size: it was read and dropped, the stream
 * stays usable), -ETOOMANYREFS (more descriptors than *nfds: they were
 * closed, the payload dropped, the stream stays usable).  On every error
 * the descriptors that arrived are closed, and *nfds is left alone. */
WEFT_EXPORT ssize_t weft_fdpass_recv(int sock, void *buf, size_t size, int *fds, size_t *nfds,
		int timeout_ms);

#ifdef __cplusplus
}
#endif

#endif
