/* weft — TLS and DTLS with GnuTLS.
 *
 * Conventions of loop.h, req.h and sock.h apply: negative errno returns,
 * out-parameters written only on success, _send/_recv request pairs whose
 * callbacks run from the loop, NULL-safe destructors, one thread per loop.
 * Nothing here blocks the thread: GnuTLS runs with GNUTLS_NONBLOCK, its
 * GNUTLS_E_AGAIN is resumed on the direction gnutls_record_get_direction
 * names, records GnuTLS already decrypted are served without waiting for
 * the fd, and DTLS retransmissions run on a loop timer.
 *
 * Model:
 *  - A weft_tls_config holds what sessions share: credentials (own
 *    certificate and key, trusted CAs), verification policy, priority
 *    string, ALPN list, the server's ticket key, DTLS timers.  It is
 *    reference-counted; every session holds a reference.
 *  - A TLS stream wraps any weft_stream (a socket, a pipe pair, another TLS
 *    stream) and *is* a weft_stream: readv/read/writev/writev_queue/
 *    shutdown/close of sock.h work on it unchanged, so any protocol written
 *    against weft_stream (Assuan, ...) runs over TLS untouched.
 *    weft_stream_pending() counts the bytes the session holds that a read
 *    would return without fd readiness (decrypted plaintext, plus received
 *    records not yet decrypted).
 *  - The handshake runs when weft_tls_handshake_send asks for it or, if
 *    never asked, on the first read or write (which wait for it).
 *  - A DTLS session (weft_dtls) wraps a weft_dgram: one datagram is one
 *    record; send and receive are requests.
 *
 * Errors.  I/O and handshakes fail with an errno that says what happened:
 *   EKEYREJECTED   the peer's certificate was refused (untrusted CA, wrong
 *                  host name, bad signature, revoked, missing when required);
 *                  weft_tls_verify_status() has the GnuTLS status bits
 *   EKEYEXPIRED    the peer's certificate (or one in its chain) has expired
 *                  or is not yet valid
 *   ECONNABORTED   the peer sent a fatal alert (e.g. it refused our
 *                  certificate, or no common ALPN protocol / cipher)
 *   ECONNRESET     the peer closed the transport without close_notify
 *                  (mid-handshake or mid-record: a truncated stream)
 *   EPROTO         any other TLS protocol error (garbage, bad MAC, ...)
 *   EPROTONOSUPPORT no common protocol version or cipher suite
 *   ETIMEDOUT      a request's timeout (weft_req_set_timeout); DTLS: the
 *                  handshake's total retransmission time ran out
 *   ENOMEM, EINVAL, and transport errors (EPIPE, ECONNRESET, ...) as is.
 * A failed session stays failed: every later read or write gives the same
 * error.  weft_tls_last_error() keeps the GnuTLS code and
 * weft_tls_error_text() a sentence saying why ("certificate verification
 * failed: The certificate is NOT trusted. ...").
 *
 * Writes.  A write request completes when GnuTLS has taken its bytes: the
 * last record may still sit inside GnuTLS (encrypted) while the socket is
 * full, as bytes sit in a socket's kernel buffer after write(2); weft sends
 * it as soon as the socket has room, with or without further requests.
 *
 * Memory.  Besides GnuTLS's own buffers a session keeps a 1 KiB read-ahead
 * of ciphertext; a session that receives large records (8 KiB or more)
 * replaces it, once, with a 64 KiB one, freed when the stream is closed.
 *
 * End of stream.  A read returns the end of stream (EPIPE in readv_recv)
 * after the peer's close_notify.  weft_stream_shutdown_send() on a TLS
 * stream sends close_notify (after queued writes; it waits for room if the
 * transport is full — bound it with weft_req_set_timeout) and then shuts
 * the inner stream's write side.  weft_stream_close() ends the session
 * cleanly too: the record GnuTLS still holds and close_notify go out at
 * once if the socket has room; if not, the session lingers after the close
 * — the inner stream (and its fd) stays open, watched, for at most the
 * close timeout (weft_tls_config_set_close_timeout, 2000 ms by default) —
 * and whatever is still unsent then is dropped
 * (gnutls_record_discard_queued).  While it lingers the loop has a live
 * handle: weft_loop_run keeps running, weft_loop_free says -EBUSY.  Close
 * callbacks and requests behave as for any stream.  Receiving the peer's
 * close_notify as well: shutdown_send, read until EPIPE (with a timeout),
 * then close.
 */
#ifndef WEFT_TLS_H
#define WEFT_TLS_H

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

typedef struct weft_tls_config weft_tls_config;
typedef struct weft_dtls weft_dtls;

typedef enum weft_tls_role {
	WEFT_TLS_CLIENT = 1,
	WEFT_TLS_SERVER = 2,
} weft_tls_role;

/* How a client checks the server (and a server a client certificate). */
typedef enum weft_tls_verify {
	/* The chain must lead to a trusted CA and, for clients, the
	 * certificate must name the server_name given to weft_tls_client_new
	 * (DNS name or IP address).  The default. */
	WEFT_TLS_VERIFY_FULL = 0,
	/* The chain must lead to a trusted CA; the name is not checked. */
	WEFT_TLS_VERIFY_CHAIN = 1,
	/* No verification at all (tests, pinned keys checked by the caller
	 * with weft_tls_peer_cert). */
	WEFT_TLS_VERIFY_NONE = 2,
} weft_tls_verify;

/* Servers: whether to ask clients for a certificate. */
typedef enum weft_tls_client_auth {
	WEFT_TLS_CLIENT_AUTH_NONE = 0,    /* do not ask (the default) */
	WEFT_TLS_CLIENT_AUTH_REQUEST = 1, /* ask; a certificate sent must verify */
	WEFT_TLS_CLIENT_AUTH_REQUIRE = 2, /* ask; none, or one that does not verify: EKEYREJECTED */
} weft_tls_client_auth;

/* ---- configuration ------------------------------------------------------ */

/* A new configuration for clients or servers, with: system trust (loaded
 * when the first session needs it, unless a CA was set), verification
 * WEFT_TLS_VERIFY_FULL, GnuTLS's "NORMAL" priorities (TLS 1.3 and 1.2),
 * no ALPN, and for servers session tickets on with a fresh random key.
 * Returns 0 and *ret_cfg (one reference), or -EINVAL / -ENOMEM. */
WEFT_EXPORT int weft_tls_config_new(weft_tls_role role, weft_tls_config **ret_cfg);

/* Take and drop references.  The last unref frees the configuration;
 * sessions hold their own reference, so unref right after creating the
 * sessions is fine.  unref(NULL) does nothing; ref returns cfg. */
WEFT_EXPORT weft_tls_config *weft_tls_config_ref(weft_tls_config *cfg);
WEFT_EXPORT void weft_tls_config_unref(weft_tls_config *cfg);

/* Add our own certificate chain and private key (PEM).  Servers need at
 * least one; a server with several picks the one matching the name the
 * client asked for (SNI), else the first.  A client's certificate is sent
 * when the server asks.  key_pass decrypts an encrypted PKCS#8 key (NULL:
 * none).  The files are read now.  Returns 0, -EINVAL, -ENOENT (a file is
 * missing or unreadable), -EBADMSG (not a PEM certificate/key, or the key
 * does not match), -ENOMEM. */
WEFT_EXPORT int weft_tls_config_add_cert_file(weft_tls_config *cfg, const char *cert_file,
		const char *key_file, const char *key_pass);
/* The same from memory (PEM; copied). */
WEFT_EXPORT int weft_tls_config_add_cert_mem(weft_tls_config *cfg, const void *cert_pem, size_t cert_len,
		const void *key_pem, size_t key_len, const char *key_pass);

/* Trust the CA certificates in a PEM file / buffer (may hold several).
 * Calling either replaces the default system trust for this configuration
 * (call several times to trust several).  Returns the number of
 * certificates added (>= 1), or -EINVAL, -ENOENT, -EBADMSG (none found),
 * -ENOMEM. */
WEFT_EXPORT int weft_tls_config_add_ca_file(weft_tls_config *cfg, const char *ca_file);
WEFT_EXPORT int weft_tls_config_add_ca_mem(weft_tls_config *cfg, const void *ca_pem, size_t len);

/* Verification policy (see weft_tls_verify).  Returns 0 or -EINVAL. */
WEFT_EXPORT int weft_tls_config_set_verify(weft_tls_config *cfg, weft_tls_verify mode);

/* Servers: ask clients for a certificate (verified against the CAs of the
 * configuration, name not checked).  Returns 0 or -EINVAL (a client
 * configuration, a bad mode). */
WEFT_EXPORT int weft_tls_config_set_client_auth(weft_tls_config *cfg, weft_tls_client_auth mode);

/* A GnuTLS priority string: "NORMAL", "SECURE256", "NORMAL:-VERS-ALL:
 * +VERS-TLS1.2" (TLS 1.2 only), "NORMAL:-VERS-TLS-ALL:+VERS-TLS1.3"...
 * Returns 0, -EINVAL (a syntax error; weft_tls_config_last_error has the
 * GnuTLS code), -ENOMEM. */
WEFT_EXPORT int weft_tls_config_set_priority(weft_tls_config *cfg, const char *priority);

/* ALPN: the protocols we offer (clients, in order of preference) or accept
 * (servers: the server's order wins).  Each name is 1..255 bytes; at most
 * 16 names; copied.  count 0 turns ALPN off.  A server with ALPN refuses a
 * client offering none of its protocols (the handshake fails: the server
 * sees EPROTO, the client ECONNABORTED).  Returns 0, -EINVAL, -ENOMEM. */
WEFT_EXPORT int weft_tls_config_set_alpn(weft_tls_config *cfg, const char *const *protocols, size_t count);

/* Servers: session tickets (resumption) on or off (on by default).
 * Returns 0, -EINVAL (a client configuration), -ENOMEM. */
WEFT_EXPORT int weft_tls_config_set_tickets(weft_tls_config *cfg, bool enable);

/* How long a closed TLS stream may linger to send what it accepted and
 * its close_notify when the transport is full (see "End of stream" above);
 * 0: one try, no lingering.  Default 2000 ms.  Returns 0 or -EINVAL. */
WEFT_EXPORT int weft_tls_config_set_close_timeout(weft_tls_config *cfg, unsigned ms);

/* DTLS: the first retransmission timeout and the total time a handshake
 * may take (GnuTLS defaults: 1000 ms and 60000 ms).  Returns 0 or -EINVAL. */
WEFT_EXPORT int weft_tls_config_set_dtls_timeouts(weft_tls_config *cfg, unsigned retrans_ms, unsigned total_ms);

/* The GnuTLS error code of the configuration call that failed last (0:
 * none). */
WEFT_EXPORT int weft_tls_config_last_error(const weft_tls_config *cfg);

/* ---- TLS streams ---------------------------------------------------------- */

/* Wrap inner (a connected stream with no request in progress) in a TLS
 * client session.  Ownership of inner passes to the TLS stream, also on
 * failure (then inner is closed); do not use inner afterwards — bytes it
 * had already read ahead are fed to TLS first.  server_name is sent as SNI
 * (unless it is an IP address) and, with WEFT_TLS_VERIFY_FULL, must be the
 * name the certificate carries; it is copied.  Returns 0 and *ret_stream
 * (close it with weft_stream_close), or -EINVAL (no server_name with
 * WEFT_TLS_VERIFY_FULL, a server configuration, inner NULL), -EBUSY
 * (inner has a request in progress), -ENOMEM, -EPROTO (GnuTLS refused the
 * setup: see weft_tls_config_last_error). */
WEFT_EXPORT int weft_tls_client_new(weft_tls_config *cfg, weft_stream *inner, const char *server_name,
		weft_stream **ret_stream);

/* Wrap inner in a TLS server session; as weft_tls_client_new.  -EINVAL also
 * when the configuration holds no certificate. */
WEFT_EXPORT int weft_tls_server_new(weft_tls_config *cfg, weft_stream *inner, weft_stream **ret_stream);

/* True if s is a TLS stream made by this module. */
WEFT_EXPORT bool weft_tls_is_tls(const weft_stream *s);

/* Run the handshake (or wait for the one already running; several requests
 * may wait).  Completes at once (posted) if it already finished.  Timeout
 * and cancel as every request; a handshake whose last waiting request timed
 * out or was canceled is abandoned: the stream then fails with ETIMEDOUT /
 * ECANCELED.  Returns NULL only on allocation failure. */
WEFT_EXPORT weft_req *weft_tls_handshake_send(weft_stream *tls);
/* 0, or -errno with *perrno set (see the error list above). */
WEFT_EXPORT int weft_tls_handshake_recv(weft_req *req, int *perrno);

/* Clients: resume the session described by data (from weft_tls_session_data
 * of an earlier connection to the same server); before the handshake.
 * The data is copied.  A session the server no longer accepts (expired
 * ticket, another server) is not an error: the handshake is then a full
 * one (see weft_tls_resumed).  Returns 0, -EINVAL (not a client, handshake
 * started, data that does not parse), -ENOMEM. */
WEFT_EXPORT int weft_tls_set_session_data(weft_stream *tls, const void *data, size_t len);

/* Clients, after the handshake: the data to resume this session later,
 * malloc'd for the caller (free()).  Under TLS 1.3 the server sends its
 * ticket after the handshake, with its first records: until it arrived
 * this returns -EAGAIN (read something first).  Returns 0, -EAGAIN,
 * -EINVAL, -ENOTCONN (no handshake yet), -ENOMEM. */
WEFT_EXPORT int weft_tls_session_data(weft_stream *tls, void **ret_data, size_t *ret_len);

/* After the handshake: whether the session was resumed. */
WEFT_EXPORT bool weft_tls_resumed(const weft_stream *tls);

/* The ALPN protocol agreed on, borrowed until the stream is closed (not
 * NUL-terminated: *ret_len bytes).  Returns 0, -ENOENT (none), -EINVAL. */
WEFT_EXPORT int weft_tls_alpn(const weft_stream *tls, const char **ret_proto, size_t *ret_len);

/* Servers: the host name the client asked for (SNI), copied into buf with
 * a NUL.  Returns its length, -ENOENT (none sent), -ENOSPC, -EINVAL. */
WEFT_EXPORT int weft_tls_server_name(const weft_stream *tls, char *buf, size_t size);

/* The peer's certificate (DER, borrowed until the stream is closed) as it
 * was presented; verified unless the policy is WEFT_TLS_VERIFY_NONE.
 * Returns 0, -ENOENT (the peer sent none), -EINVAL. */
WEFT_EXPORT int weft_tls_peer_cert(const weft_stream *tls, const void **ret_der, size_t *ret_len);

/* The peer certificate's subject DN ("CN=client 1,O=Example"), malloc'd for
 * the caller (free()).  Returns 0, -ENOENT, -EINVAL, -ENOMEM, -EBADMSG. */
WEFT_EXPORT int weft_tls_peer_dn(const weft_stream *tls, char **ret_dn);

/* Protocol version name ("TLS1.3", "TLS1.2", "DTLS1.2"), or NULL before
 * the handshake. */
WEFT_EXPORT const char *weft_tls_version(const weft_stream *tls);

/* GnuTLS's one-line session description "(TLS1.3)-(ECDHE-X25519)-..."
 * malloc'd for the caller, or NULL. */
WEFT_EXPORT char *weft_tls_description(const weft_stream *tls);

/* The gnutls_certificate_status_t bits of the last verification of the
 * peer (0: verified, or not verified yet). */
WEFT_EXPORT unsigned weft_tls_verify_status(const weft_stream *tls);

/* The GnuTLS error code that failed the session (0: none). */
WEFT_EXPORT int weft_tls_last_error(const weft_stream *tls);

/* Why the session failed, as a sentence borrowed until the stream is
 * closed ("" if it did not fail). */
WEFT_EXPORT const char *weft_tls_error_text(const weft_stream *tls);

/* The gnutls_session_t, for what this header does not cover (channel
 * bindings, key export...).  Do not call record or handshake functions on
 * it, nor change its transport.  NULL if tls is not a TLS stream. */
WEFT_EXPORT void *weft_tls_gnutls_session(const weft_stream *tls);

/* ---- DTLS ------------------------------------------------------------------ */

/* Wrap a datagram socket in a DTLS client session (GNUTLS_DATAGRAM |
 * GNUTLS_NONBLOCK).  d must have been opened with a remote address (its
 * datagrams go there and come only from there).  Ownership of d passes to
 * the session, also on failure; do not use d afterwards.  server_name as
 * for weft_tls_client_new.  Returns 0 and *ret_dtls, or -EINVAL, -ENOMEM,
 * -EPROTO. */
WEFT_EXPORT int weft_dtls_client_new(weft_tls_config *cfg, weft_dgram *d, const char *server_name,
		weft_dtls **ret_dtls);

/* A DTLS server session on d.  If d has no remote address, the session
 * serves the first peer whose ClientHello passes the cookie exchange
 * (RFC 6347 HelloVerifyRequest, so a spoofed source gets no more than one
 * small datagram) and then connects d to that peer.  Returns as
 * weft_dtls_client_new. */
WEFT_EXPORT int weft_dtls_server_new(weft_tls_config *cfg, weft_dgram *d, weft_dtls **ret_dtls);

/* The handshake, retransmitting lost flights on a loop timer (the DTLS
 * timeouts of the configuration).  One request at a time (EBUSY).
 * Completes with 0, or -errno as for TLS (ETIMEDOUT when the total
 * handshake time ran out). */
WEFT_EXPORT weft_req *weft_dtls_handshake_send(weft_dtls *dtls);
WEFT_EXPORT int weft_dtls_handshake_recv(weft_req *req, int *perrno);

/* Send one record holding buf (1..weft_dtls_data_mtu bytes; larger:
 * EMSGSIZE).  buf is borrowed until completion.  Sends are serialized in
 * order.  Before the handshake completed: ENOTCONN. */
WEFT_EXPORT weft_req *weft_dtls_send_send(weft_dtls *dtls, const void *buf, size_t len);
WEFT_EXPORT ssize_t weft_dtls_send_recv(weft_req *req, int *perrno);

/* Receive the next record (one request at a time: EBUSY).  Returns its
 * length and hands out *ret_buf (malloc'd, free(); NULL for an empty
 * record; ret_buf may be NULL), or -errno: EPIPE after the peer's
 * close_notify, ECANCELED on close, ENOTCONN before the handshake. */
WEFT_EXPORT weft_req *weft_dtls_recv_send(weft_dtls *dtls);
WEFT_EXPORT ssize_t weft_dtls_recv_recv(weft_req *req, uint8_t **ret_buf, int *perrno);

/* Path MTU in bytes (a datagram's largest size: IP and UDP headers not
 * included); the default is GnuTLS's 1200.  Returns 0 or -EINVAL. */
WEFT_EXPORT int weft_dtls_set_mtu(weft_dtls *dtls, unsigned mtu);
/* The largest record payload that fits the MTU after the handshake. */
WEFT_EXPORT unsigned weft_dtls_data_mtu(const weft_dtls *dtls);

WEFT_EXPORT int weft_dtls_last_error(const weft_dtls *dtls);
WEFT_EXPORT const char *weft_dtls_error_text(const weft_dtls *dtls);
WEFT_EXPORT const char *weft_dtls_version(const weft_dtls *dtls);
WEFT_EXPORT void *weft_dtls_gnutls_session(const weft_dtls *dtls);

/* Close: sends close_notify once (not waiting), completes pending
 * requests with ECANCELED (posted), closes the datagram socket.  NULL is
 * allowed.  May be called from any callback. */
WEFT_EXPORT void weft_dtls_close(weft_dtls *dtls);

#ifdef __cplusplus
}
#endif

#endif
