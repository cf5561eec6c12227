/* Internals shared by the files of the TLS module (src/tls/). */
#ifndef WEFT_TLS_PRIVATE_H
#define WEFT_TLS_PRIVATE_H

#include <weft/tls.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <gnutls/dtls.h>

#define WEFT__TLS_MAX_ALPN 16

struct weft_tls_config {
	unsigned refs;
	weft_tls_role role;
	gnutls_certificate_credentials_t cred;
	gnutls_priority_t prio;     /* NULL: GnuTLS's default priorities */
	bool ca_set;                /* a CA was added: no system trust */
	bool system_trust_tried;
	unsigned ncerts;
	weft_tls_verify verify;
	weft_tls_client_auth client_auth;
	gnutls_datum_t alpn[WEFT__TLS_MAX_ALPN];
	unsigned nalpn;
	bool tickets;
	gnutls_datum_t ticket_key;  /* servers; empty until needed */
	gnutls_datum_t cookie_key;  /* DTLS servers: HelloVerifyRequest key */
	unsigned dtls_retrans_ms, dtls_total_ms;
	unsigned close_timeout_ms;  /* lingering bound after close */
	int last_gerr;
};

/* A negative errno for a GnuTLS error code (0 for 0). */
int weft__tls_errno(int gerr);

/* Set up a session of cfg's role on sess (credentials, priorities,
 * verification, ALPN, tickets, SNI).  Returns 0 or -errno (the GnuTLS code
 * in cfg->last_gerr). */
int weft__tls_session_setup(weft_tls_config *cfg, gnutls_session_t sess, const char *server_name);

/* The errno and message of a failed handshake or record call: looks at the
 * verification status and received alerts.  *text receives a malloc'd
 * sentence (or NULL on allocation failure). */
int weft__tls_failure(gnutls_session_t sess, int gerr, int transport_err, unsigned *status, char **text);

#endif
