/* weft — the Assuan protocol (GnuPG's IPC), wire-compatible with libassuan 2.5.
 *
 * Servers whose handlers never block.  A command handler either answers at
 * once (returns an error value, 0 for OK) or returns WEFT_ASSUAN_PENDING and
 * later calls weft_assuan_process_done() from any loop callback.  Lines that
 * arrive while a command is in flight wait in order; INQUIRE is a
 * continuation; every response goes through an output queue that is flushed
 * when the transport is writable, so a slow client never blocks the server.
 *
 * Conventions (those of loop.h and req.h apply):
 *  - Assuan errors are gpg-error values (gpg_error_t: source << 24 | code),
 *    so an ERR line is byte-identical to libassuan's: "ERR <n> <description>
 *    <<source>>[ - <text>]" with the description from gpg_strerror.  They
 *    travel in their own type, never mixed with errno: functions that can
 *    fail for system reasons return 0 or -errno.
 *  - The error source of errors weft makes (unknown command, syntax, ...)
 *    is the server's: GPG_ERR_SOURCE_USER_1 (32) by default, as libassuan's;
 *    set it with weft_assuan_server_set_err_source().
 *  - Strings handed to callbacks are borrowed for the duration of the call.
 *    A handler that returns WEFT_ASSUAN_PENDING must copy what it needs.
 *  - The end of the client's input (EOF) means the client is gone, as for
 *    libassuan's assuan_process_next: lines it sent before are answered,
 *    a command still pending is cancelled.  (A client that half-closes
 *    after its last command gets the answers of commands that answer at
 *    once, not those of pending ones.)
 *  - A connection object stays valid until its close hook has returned; a
 *    pending command's cancel callback is the last call about that command.
 *  - Limits: a line with its LF is at most WEFT_ASSUAN_LINELENGTH (1002)
 *    bytes, as libassuan's.  An over-long line is answered with ERR
 *    (GPG_ERR_ASS_LINE_TOO_LONG), skipped up to its LF in bounded memory,
 *    and the connection stays in sync.
 *  - Single-threaded: everything runs on the server's loop thread.
 */
#ifndef WEFT_ASSUAN_H
#define WEFT_ASSUAN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <gpg-error.h>

#include <weft/loop.h>
#include <weft/req.h>
#include <weft/sock.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef gpg_error_t weft_assuan_err;

/* 1000 characters + [CR] LF. */
#define WEFT_ASSUAN_LINELENGTH 1002

/* Returned by a handler or an inquire continuation: the command is still
 * running; weft_assuan_process_done() finishes it.  (Bit 31 is never set
 * in a gpg-error value.) */
#define WEFT_ASSUAN_PENDING ((weft_assuan_err)0xFFFFFFFFu)

typedef struct weft_assuan_server weft_assuan_server;
typedef struct weft_assuan_conn weft_assuan_conn;

/* A command handler.  args is the rest of the line after the command name
 * and the blanks that follow it (NUL-terminated, writable, valid until the
 * handler returns).  Return 0 (OK), an error value (ERR), or
 * WEFT_ASSUAN_PENDING. */
typedef weft_assuan_err (*weft_assuan_handler)(weft_assuan_conn *c, char *args, void *data);

/* ---- the server: configuration shared by its connections ---------------- */

/* Make a server on loop.  It has the built-in commands NOP, CANCEL, OPTION,
 * BYE, AUTH, RESET, END and HELP (libassuan's std table, in that order);
 * INPUT and OUTPUT are registered by weft_assuan_register(srv, "INPUT",
 * NULL, NULL, help), as with libassuan.  Returns 0, -EINVAL, -ENOMEM. */
WEFT_EXPORT int weft_assuan_server_new(weft_loop *loop, weft_assuan_server **ret_srv);

/* Close every connection (pending commands are cancelled: their cancel
 * callbacks run; close hooks run), stop listening (the socket file is
 * removed) and free the server.  NULL is ignored. */
WEFT_EXPORT void weft_assuan_server_free(weft_assuan_server *srv);

/* Register a command.  The name is matched exactly, then case-insensitively
 * against its upper-case form (libassuan: commands registered in upper case
 * are case-insensitive).  An existing name is replaced (the entry keeps
 * its name).  handler NULL selects the built-in of that name (the std commands, INPUT, OUTPUT);
 * help may be NULL (HELP lists the name; "HELP name" answers Not found).
 * The name and help are copied.  Returns 0, -EINVAL (bad name, or NULL
 * handler for a name with no built-in), -ENOMEM. */
WEFT_EXPORT int weft_assuan_register(weft_assuan_server *srv, const char *name,
		weft_assuan_handler handler, void *data, const char *help);

/* The greeting.  NULL restores the default "OK Pleased to meet you" (with
 * ", process <pid>" of the peer when it is known, as libassuan 2.5).  A
 * text with LFs is sent as "# " lines and a last "OK " line.  Copied.
 * Returns 0, -EINVAL (a line too long), -ENOMEM. */
WEFT_EXPORT int weft_assuan_server_set_hello(weft_assuan_server *srv, const char *text);

/* Source of the errors weft makes (gpg_err_source_t). */
WEFT_EXPORT void weft_assuan_server_set_err_source(weft_assuan_server *srv, int source);

/* Make an error value with the server's source: gpg_err_make(source, code),
 * 0 for code 0. */
WEFT_EXPORT weft_assuan_err weft_assuan_err_make(const weft_assuan_server *srv, gpg_err_code_t code);

/* Hooks, each optional.  They get the connection and the hooks' data. */
typedef struct weft_assuan_hooks {
	/* A connection was accepted/adopted (before the greeting). */
	void (*open)(weft_assuan_conn *c, void *data);
	/* The connection is gone (BYE, peer EOF or error, close); last call. */
	void (*close)(weft_assuan_conn *c, void *data);
	/* OPTION name [=] value (value "" when absent); an error refuses it. */
	weft_assuan_err (*option)(weft_assuan_conn *c, const char *name, const char *value, void *data);
	/* RESET: an error is returned to the client and keeps the descriptors. */
	weft_assuan_err (*reset)(weft_assuan_conn *c, const char *args, void *data);
	/* CANCEL command (the answer stays Not implemented, as libassuan's). */
	void (*cancel)(weft_assuan_conn *c, const char *args, void *data);
	/* BYE, before "OK closing connection". */
	void (*bye)(weft_assuan_conn *c, const char *args, void *data);
	/* INPUT / OUTPUT accepted a descriptor; args has the FD=n text blanked.
	 * An error refuses it (the descriptor is closed). */
	weft_assuan_err (*input)(weft_assuan_conn *c, const char *args, void *data);
	weft_assuan_err (*output)(weft_assuan_conn *c, const char *args, void *data);
	/* Before a command's handler (built-ins included); an error is the
	 * command's answer and the handler does not run. */
	weft_assuan_err (*pre_cmd)(weft_assuan_conn *c, const char *cmd, void *data);
	/* After a command's answer was queued, with its value. */
	void (*post_cmd)(weft_assuan_conn *c, weft_assuan_err err, void *data);
} weft_assuan_hooks;

/* Copied.  hooks NULL removes them all. */
WEFT_EXPORT void weft_assuan_server_set_hooks(weft_assuan_server *srv, const weft_assuan_hooks *hooks, void *data);

/* Limits (0 restores the default):
 *  - output: bytes of queued output above which weft_assuan_send_data()
 *    refuses more with -ENOBUFS (default 256 KiB); see weft_assuan_on_room;
 *    pipelined commands also wait while output is above it;
 *  - inquire: default maximum for weft_assuan_inquire with maxlen 0
 *    (default 1 MiB);
 *  - fds: descriptors passed by the peer queued per connection (default 5,
 *    as libassuan's; more are closed). */
typedef struct weft_assuan_limits {
	size_t output;
	size_t inquire;
	unsigned fds;
} weft_assuan_limits;
WEFT_EXPORT void weft_assuan_server_set_limits(weft_assuan_server *srv, const weft_assuan_limits *limits);

/* Accept descriptors passed over Unix-domain connections (SCM_RIGHTS, as
 * libassuan's "# descriptor N is in flight" messages).  Default on.  When
 * off, INPUT FD answers Not implemented, as gpg-agent's main socket, and
 * reads need no room for descriptors (recv instead of recvmsg).  Applies
 * to connections adopted after the call. */
WEFT_EXPORT void weft_assuan_server_set_fdpassing(weft_assuan_server *srv, bool on);

/* ---- transports ------------------------------------------------------------ */

/* A socket server: listen on addr ("unix:/path", "unix:@name", "tcp:...";
 * see weft_addr_parse) and serve every connection on the loop.  opts may
 * be NULL (socket file mode, replacing a stale file: see weft_listen).
 * One listener per server.  Returns 0 or -errno (-EBUSY if listening). */
WEFT_EXPORT int weft_assuan_server_listen(weft_assuan_server *srv, const char *addr,
		const weft_listen_opts *opts);
WEFT_EXPORT weft_listener *weft_assuan_server_listener(const weft_assuan_server *srv);

/* Serve an already connected stream (a socket you accepted yourself, a TLS
 * stream, a pipe pair).  Ownership of s passes to the connection, also on
 * failure.  *ret_conn (may be NULL) is valid until the close hook.
 * The connection takes the stream's transport over, as a TLS stream takes
 * its socket: it hears the readiness and reads and writes through the
 * stream's own operations, so start no reads or writes on s yourself
 * afterwards (weft_assuan_conn_stream is for its loop, fd and peer).  A
 * stream that still has a request attached, or bytes it read ahead, is
 * served through requests instead (the same protocol, more instructions
 * per command).  Returns 0, -EINVAL, -ENOMEM. */
WEFT_EXPORT int weft_assuan_server_adopt(weft_assuan_server *srv, weft_stream *s,
		weft_assuan_conn **ret_conn);
/* The same for an accepted socket fd (the seed's "accept yourself, then hand
 * the fd" mode) and for a pipe pair (read rfd, write wfd: stdin/stdout of a
 * pipe server; if rfd == wfd is a socket, descriptors can be passed, as
 * with libassuan's _assuan_connection_fd).  Ownership of the fds passes. */
WEFT_EXPORT int weft_assuan_server_adopt_fd(weft_assuan_server *srv, int fd, weft_assuan_conn **ret_conn);
WEFT_EXPORT int weft_assuan_server_adopt_pipe(weft_assuan_server *srv, int rfd, int wfd,
		weft_assuan_conn **ret_conn);

/* Number of open connections. */
WEFT_EXPORT size_t weft_assuan_server_connections(const weft_assuan_server *srv);

/* ---- a connection ------------------------------------------------------------ */

WEFT_EXPORT weft_assuan_server *weft_assuan_conn_server(const weft_assuan_conn *c);
WEFT_EXPORT weft_stream *weft_assuan_conn_stream(const weft_assuan_conn *c);
WEFT_EXPORT void weft_assuan_conn_set_data(weft_assuan_conn *c, void *data);
WEFT_EXPORT void *weft_assuan_conn_data(const weft_assuan_conn *c);

/* Peer credentials of a Unix-domain connection (SO_PEERCRED); for a pipe
 * server, the pid set by weft_assuan_conn_set_peer_pid.  0 or -errno. */
WEFT_EXPORT int weft_assuan_peer_cred(const weft_assuan_conn *c, pid_t *ret_pid, uid_t *ret_uid, gid_t *ret_gid);
/* Record the peer's pid (pipe servers: libassuan's _assuan_pipe_connect_pid). */
WEFT_EXPORT void weft_assuan_conn_set_peer_pid(weft_assuan_conn *c, pid_t pid);

/* Close now: a pending command is cancelled (its cancel callback runs),
 * queued output is dropped, the close hook runs from the loop.  To close
 * after the output is written, answer with weft_assuan_set_force_close. */
WEFT_EXPORT void weft_assuan_conn_close(weft_assuan_conn *c);

/* Close the connection after the next command's answer is written; an ERR
 * answer gets " - [closing connection]" (libassuan's ASSUAN_FORCE_CLOSE). */
WEFT_EXPORT void weft_assuan_set_force_close(weft_assuan_conn *c);

/* ---- answering a command ------------------------------------------------------ */

/* Finish the command in flight with err (0: OK).  Called from anywhere on
 * the loop thread, inside the handler too.  Returns 0, -EINVAL (no command
 * in flight, or it was cancelled). */
WEFT_EXPORT int weft_assuan_process_done(weft_assuan_conn *c, weft_assuan_err err);

/* Text of the next OK line ("OK <text>"), reset after each command.  NULL
 * clears it.  Copied.  0, -EINVAL (too long or has an LF), -ENOMEM. */
WEFT_EXPORT int weft_assuan_set_okay_line(weft_assuan_conn *c, const char *text);

/* Text for the ERR line of err ("ERR n desc <src> - text"), used if the
 * command finishes with that same err.  Returns err, so a handler can
 * `return weft_assuan_set_error(c, err, "why");`. */
WEFT_EXPORT weft_assuan_err weft_assuan_set_error(weft_assuan_conn *c, weft_assuan_err err, const char *text);

/* "S <keyword>[ <text>]" (text sent verbatim).  Allowed while a command is
 * in flight.  0, -EINVAL (no keyword, LF in it, line too long), -ENOMEM,
 * -ENOTCONN (closed). */
WEFT_EXPORT int weft_assuan_write_status(weft_assuan_conn *c, const char *keyword, const char *text);

/* Any line, verbatim ("# comment", "END").  0 or -errno as above. */
WEFT_EXPORT int weft_assuan_write_line(weft_assuan_conn *c, const char *line);

/* Data as D lines, escaped and split exactly as libassuan (only %, CR and
 * LF are escaped; a line is flushed when it reaches 998 characters).  The
 * bytes are copied.  The current D line stays open until
 * weft_assuan_flush_data, another line, or the command's answer.
 * Returns 0, -ENOBUFS (queued output is over the limit: nothing was
 * queued; wait with weft_assuan_on_room), -ENOMEM, -ENOTCONN. */
WEFT_EXPORT int weft_assuan_send_data(weft_assuan_conn *c, const void *buf, size_t len);
/* End the open D line (libassuan's assuan_send_data(ctx, NULL, 0)). */
WEFT_EXPORT int weft_assuan_flush_data(weft_assuan_conn *c);

/* Bytes of output queued and not yet written. */
WEFT_EXPORT size_t weft_assuan_output_pending(const weft_assuan_conn *c);

/* Call cb once, from the loop, when queued output falls to half the limit
 * or below (at once — posted — if it already is).  One waiter per
 * connection: a new one replaces the old.  Not called if the connection
 * closes first (the command's cancel callback is).  0, -EINVAL. */
typedef void (*weft_assuan_room_cb)(weft_assuan_conn *c, void *data);
WEFT_EXPORT int weft_assuan_on_room(weft_assuan_conn *c, weft_assuan_room_cb cb, void *data);

/* Told when the pending command is aborted (the peer disconnected, the
 * connection or server was closed).  The handler must free its work and
 * not use c for that command again.  One per command; cleared when the
 * command finishes. */
typedef void (*weft_assuan_cancel_cb)(weft_assuan_conn *c, void *data);
WEFT_EXPORT int weft_assuan_on_cancel(weft_assuan_conn *c, weft_assuan_cancel_cb cb, void *data);

/* ---- INQUIRE ---------------------------------------------------------------------- */

/* Ask the client: sends "INQUIRE <keyword>" (keyword may carry arguments)
 * and returns; the command stays in flight.  The client's D lines are
 * decoded and collected up to maxlen bytes (0: the server's inquire limit).
 * cb then gets err 0 and the data (buf owned by weft, valid during cb,
 * NUL-terminated after len), or: GPG_ERR_ASS_CANCELED (the client sent
 * CAN), GPG_ERR_ASS_TOO_MUCH_DATA (more than maxlen: weft read on to END,
 * the connection stays in sync), GPG_ERR_ASS_SYNTAX (a malformed %
 * escape; also read on to END), GPG_ERR_ASS_UNEXPECTED_CMD (another line).
 * cb returns like a handler: an answer, or WEFT_ASSUAN_PENDING (it may
 * inquire again).  If the connection ends first, cb is not called: the
 * command's cancel callback (weft_assuan_on_cancel) is — free there what
 * cb would have freed.  Only from a command in flight, one inquire at a
 * time.
 * Returns 0, -EINVAL (no command, keyword empty/too long), -EBUSY
 * (already inquiring), -ENOMEM, -ENOTCONN. */
typedef weft_assuan_err (*weft_assuan_inquire_cb)(weft_assuan_conn *c, weft_assuan_err err,
		unsigned char *buf, size_t len, void *data);
WEFT_EXPORT int weft_assuan_inquire(weft_assuan_conn *c, const char *keyword, size_t maxlen,
		weft_assuan_inquire_cb cb, void *data);

/* ---- descriptors: INPUT / OUTPUT ------------------------------------------------------ */

/* The descriptor INPUT (OUTPUT) selected, or -1.  Borrowed: the connection
 * closes it at RESET, BYE, disconnect, or when the next command other
 * than INPUT, OUTPUT, OPTION, NOP and HELP finishes — unless taken. */
WEFT_EXPORT int weft_assuan_input_fd(const weft_assuan_conn *c);
WEFT_EXPORT int weft_assuan_output_fd(const weft_assuan_conn *c);
/* Take ownership (the connection forgets it); -1 if none. */
WEFT_EXPORT int weft_assuan_take_input_fd(weft_assuan_conn *c);
WEFT_EXPORT int weft_assuan_take_output_fd(weft_assuan_conn *c);

/* Take the oldest descriptor the peer passed and nobody used (libassuan's
 * assuan_receivefd); -1 if none.  The caller owns it. */
WEFT_EXPORT int weft_assuan_receive_fd(weft_assuan_conn *c);

/* Let "INPUT FD=n"/"OUTPUT FD=n" name descriptor n of this process (one a
 * pipe server inherited for this client).  Without this, FD=n is accepted
 * only for a descriptor the peer passed — libassuan accepts any number,
 * letting a client make the server close its own descriptors.  The
 * connection takes ownership of n: it is closed after the command that
 * selects it (as any INPUT/OUTPUT descriptor), or when the connection
 * ends if no command selected it.  Returns 0, -EINVAL, -ENOMEM. */
WEFT_EXPORT int weft_assuan_conn_allow_fd(weft_assuan_conn *c, int fd);

/* ---- hand-driven mode ---------------------------------------------------------------- */

/* For programs with their own poll loop (libassuan's external-loop shape):
 * serve a connection on a loop made with weft_loop_new() that nobody runs,
 * poll the descriptors weft_assuan_get_active_fds names — what 0: to read,
 * 1: to write — and call weft_assuan_process_next when one is ready (or
 * after the timeout weft_loop_get_timeout gives).  It never sleeps, never
 * blocks, and answers every complete line it can.  Returns the number of
 * fds stored (0..n) or -EINVAL. */
WEFT_EXPORT int weft_assuan_get_active_fds(weft_assuan_conn *c, int what, int *fds, int n);
/* Run the connection's loop without waiting.  *done becomes true when the
 * connection has ended (then the close hook has run and c is gone).
 * Returns 0 or -errno from the loop. */
WEFT_EXPORT int weft_assuan_process_next(weft_assuan_conn *c, bool *done);

/* ==== the client ====================================================================
 *
 * A client runs on the loop like everything else: connecting, reading the
 * greeting, transactions, INQUIRE answers and cancellation are requests and
 * callbacks, none blocking.  Transactions issued while one is in flight
 * wait in order (a command is sent when the previous answer arrived).
 *
 * Errors: _recv functions return 0 or -errno for the transport (EPIPE or
 * ECONNRESET: the server went away; ETIMEDOUT; ECANCELED; EPROTO: the
 * server broke the protocol or refused the connection in its greeting).
 * The server's answer to a command is a gpg-error value in its own
 * out-parameter: 0 for OK, the number of the ERR line otherwise. */

typedef struct weft_assuan_client weft_assuan_client;

/* Connect to a server: name is "unix:/path", "unix:@abstract", "tcp:...",
 * or a plain socket path as libassuan takes it.  A path naming a regular
 * file in libassuan's redirect format ("%Assuan%\nsocket=NAME\n", ${VAR}
 * in NAME from the environment) connects to NAME instead.  The request
 * completes once the greeting's OK line was read (comment lines before it
 * are skipped).  Set a timeout on it with weft_req_set_timeout. */
WEFT_EXPORT weft_req *weft_assuan_connect_send(weft_loop *loop, const char *name);
/* 0 and *ret_client (the caller frees it with weft_assuan_client_free), or
 * -errno: ENOENT, ECONNREFUSED, ETIMEDOUT, EPROTO (the greeting was not OK),
 * EPIPE (closed before the greeting), ... */
WEFT_EXPORT int weft_assuan_connect_recv(weft_req *req, weft_assuan_client **ret_client, int *perrno);

/* Run a client over a stream already connected (ownership of s passes,
 * also on failure); reads the greeting like connect.  Collect with
 * weft_assuan_connect_recv.  As a server connection does, the client takes
 * the stream's transport over (it hears the readiness and reads and writes
 * through the stream's own operations) until it first passes a descriptor;
 * start no reads or writes on the stream yourself.  A stream with a
 * request attached or bytes read ahead is driven through requests. */
WEFT_EXPORT weft_req *weft_assuan_client_adopt_send(weft_loop *loop, weft_stream *s);

/* Start a pipe server: argv[0] is run (PATH is searched) with the
 * connection on stdin/stdout — or, with WEFT_ASSUAN_PIPE_FDPASSING, with a
 * socketpair named in the environment as _assuan_connection_fd (libassuan's
 * convention), so descriptors can be passed.  _assuan_pipe_connect_pid is
 * set to this process's pid.  inherit (n entries, may be NULL) are
 * descriptors the child keeps under the same numbers; besides them and
 * stderr the child gets none of ours, even those opened without
 * close-on-exec (as with libassuan).  The child is reaped on the loop (a pidfd, or
 * waitpid every 20 ms where pidfd_open is missing); see
 * weft_assuan_client_on_exit.  If the connect fails (no greeting, timeout,
 * request freed) the child, which nobody else can reach, gets SIGTERM.
 * Collect with weft_assuan_connect_recv. */
#define WEFT_ASSUAN_PIPE_FDPASSING 1u
WEFT_EXPORT weft_req *weft_assuan_pipe_connect_send(weft_loop *loop, const char *const argv[],
		const int *inherit, size_t n, unsigned flags);

/* Close: queued transactions complete with ECANCELED (their callbacks run
 * before this returns, in order), "BYE" is sent if the transport takes it
 * at once, the transport is closed.  A spawned server is still reaped when
 * it exits (its exit callback then runs).  NULL is ignored.  May be called
 * from the client's own callbacks. */
WEFT_EXPORT void weft_assuan_client_free(weft_assuan_client *cl);

/* The greeting's text after "OK " (borrowed; "" if none). */
WEFT_EXPORT const char *weft_assuan_client_greeting(const weft_assuan_client *cl);
/* The connection's stream (borrowed): for its loop, fd and peer; the
 * client reads and writes it (see weft_assuan_client_adopt_send). */
WEFT_EXPORT weft_stream *weft_assuan_client_stream(const weft_assuan_client *cl);

/* The spawned server's pid (0 if none) and its end: cb(pid, wait status as
 * waitpid gives it, data) runs once from the loop when it has exited (at
 * once, posted, if it already has).  Returns 0, -EINVAL (no child). */
typedef void (*weft_assuan_exit_cb)(pid_t pid, int wstatus, void *data);
WEFT_EXPORT pid_t weft_assuan_client_pid(const weft_assuan_client *cl);
WEFT_EXPORT int weft_assuan_client_on_exit(weft_assuan_client *cl, weft_assuan_exit_cb cb, void *data);

/* What a transaction hears, each optional.  A callback returning non-zero
 * ends the transaction with that value as its answer (the rest of the
 * server's answer is read and dropped; an INQUIRE is answered CAN). */
typedef struct weft_assuan_transact_cbs {
	/* Decoded bytes of D lines (any split); buf NULL/len 0 for an END line. */
	weft_assuan_err (*data)(void *data, const void *buf, size_t len);
	/* "S keyword args". */
	weft_assuan_err (*status)(void *data, const char *keyword, const char *args);
	/* "INQUIRE keyword args": answer now or later — from any loop event —
	 * with weft_assuan_client_inquire_data/_end/_cancel.  Without this
	 * callback an INQUIRE is answered CAN. */
	weft_assuan_err (*inquire)(void *data, const char *keyword, const char *args);
	/* "# ..." lines (the whole line). */
	weft_assuan_err (*comment)(void *data, const char *line);
} weft_assuan_transact_cbs;

/* Send command (one line, without LF; copied) and follow its answer.
 * When nothing waits or runs before it, the command is written before
 * this returns (what the transport does not take at once follows from the
 * loop); otherwise it waits its turn.  Either way no callback runs from
 * inside this call.  cbs is copied; cbs and data may be NULL.  Cancel with weft_req_cancel:
 * while an INQUIRE waits, CAN is sent; otherwise the transaction completes
 * with ECANCELED at once and its answer is dropped when it comes — the
 * connection stays usable.  A timeout (weft_req_set_timeout) does the
 * same with ETIMEDOUT. */
WEFT_EXPORT weft_req *weft_assuan_transact_send(weft_assuan_client *cl, const char *command,
		const weft_assuan_transact_cbs *cbs, void *data);
/* 0 and *ret_err (0 for OK, the ERR value otherwise), or -errno (EPIPE /
 * ECONNRESET when the server went away mid-transaction, ECANCELED,
 * ETIMEDOUT, EPROTO, EINVAL for a command with an LF or too long). */
WEFT_EXPORT int weft_assuan_transact_recv(weft_req *req, weft_assuan_err *ret_err, int *perrno);
/* The text of the last OK line (borrowed; "" if none). */
WEFT_EXPORT const char *weft_assuan_client_okay_text(const weft_assuan_client *cl);

/* Answer the INQUIRE in progress: data (escaped into D lines; any number of
 * calls), then END — or CAN.  Returns 0, -EINVAL (no INQUIRE waits),
 * -ENOMEM, -EPIPE. */
WEFT_EXPORT int weft_assuan_client_inquire_data(weft_assuan_client *cl, const void *buf, size_t len);
WEFT_EXPORT int weft_assuan_client_inquire_end(weft_assuan_client *cl);
WEFT_EXPORT int weft_assuan_client_inquire_cancel(weft_assuan_client *cl);

/* Pass a descriptor, as libassuan's assuan_sendfd: "# descriptor N is in
 * flight" with fd attached (SCM_RIGHTS), in order with the commands — send
 * it before the INPUT FD / OUTPUT FD command that takes it.  fd is
 * borrowed until the returned request completes (then close it).
 * Completes with EOPNOTSUPP on transports that cannot carry descriptors. */
WEFT_EXPORT weft_req *weft_assuan_client_sendfd_send(weft_assuan_client *cl, int fd);
WEFT_EXPORT int weft_assuan_client_sendfd_recv(weft_req *req, int *perrno);

/* ---- the low-level shape (for code ported from GPGME) ----
 * Lines no transaction takes stay buffered for these: read one line, write
 * one line, and the descriptor to poll when driving the loop by hand. */

/* The connection's fd (borrowed), or -ENOTSOCK for non-socket transports. */
WEFT_EXPORT int weft_assuan_client_fd(const weft_assuan_client *cl);
/* Queue one line (LF added; copied; written without blocking).  0 or
 * -EINVAL (LF inside, too long), -ENOMEM, -EPIPE. */
WEFT_EXPORT int weft_assuan_client_write_line(weft_assuan_client *cl, const char *line);
/* Take the next received line no transaction is reading: copies it (NUL-
 * terminated, LF cut) into buf of size bytes.  Returns its length, -EAGAIN
 * if none is buffered yet (run the loop), -EPIPE at the end of the
 * connection, -EMSGSIZE if buf is too small (the line stays). */
WEFT_EXPORT ssize_t weft_assuan_client_read_line(weft_assuan_client *cl, char *buf, size_t size);

#ifdef __cplusplus
}
#endif

#endif
