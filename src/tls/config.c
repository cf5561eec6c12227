/* TLS configuration: credentials, trust, verification policy, priorities,
 * ALPN, tickets — what every session of a configuration shares — and the
 * mapping of GnuTLS errors to errno values. */
#include "tls-private.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int weft__tls_errno(int gerr)
{
	switch (gerr) {
	case 0:
		return 0;
	case GNUTLS_E_AGAIN:
		return -EAGAIN;
	case GNUTLS_E_INTERRUPTED:
		return -EINTR;
	case GNUTLS_E_MEMORY_ERROR:
		return -ENOMEM;
	case GNUTLS_E_PREMATURE_TERMINATION:
	case GNUTLS_E_UNEXPECTED_PACKET_LENGTH:
		return -ECONNRESET;
	case GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR:
	case GNUTLS_E_CERTIFICATE_ERROR:
	case GNUTLS_E_CERTIFICATE_REQUIRED:
	case GNUTLS_E_NO_CERTIFICATE_FOUND:
		return -EKEYREJECTED;
	case GNUTLS_E_FATAL_ALERT_RECEIVED:
		return -ECONNABORTED;
	case GNUTLS_E_TIMEDOUT:
		return -ETIMEDOUT;
	case GNUTLS_E_LARGE_PACKET:
		return -EMSGSIZE;
	case GNUTLS_E_FILE_ERROR:
		return -ENOENT;
	case GNUTLS_E_INVALID_REQUEST:
		return -EINVAL;
	case GNUTLS_E_NO_CIPHER_SUITES:
	case GNUTLS_E_UNSUPPORTED_VERSION_PACKET:
	case GNUTLS_E_NO_PRIORITIES_WERE_SET:
	case GNUTLS_E_INSUFFICIENT_CREDENTIALS:
		return -EPROTONOSUPPORT;
	case GNUTLS_E_BASE64_DECODING_ERROR:
	case GNUTLS_E_BASE64_UNEXPECTED_HEADER_ERROR:
	case GNUTLS_E_ASN1_DER_ERROR:
	case GNUTLS_E_ASN1_ELEMENT_NOT_FOUND:
	case GNUTLS_E_CERTIFICATE_KEY_MISMATCH:
	case GNUTLS_E_DECRYPTION_FAILED:
	case GNUTLS_E_PK_INVALID_PRIVKEY:
		return -EBADMSG;
	default:
		return -EPROTO;
	}
}

static char *dup_text(const char *prefix, const char *what)
{
	size_t n = strlen(prefix) + strlen(what) + 1;
	char *s = malloc(n);
	if (s != NULL)
		snprintf(s, n, "%s%s", prefix, what);
	return s;
}

int weft__tls_failure(gnutls_session_t sess, int gerr, int transport_err, unsigned *status, char **text)
{
	*text = NULL;
	if ((gerr == GNUTLS_E_PULL_ERROR || gerr == GNUTLS_E_PUSH_ERROR) && transport_err < 0) {
		*text = dup_text("transport error: ", strerror(-transport_err));
		return transport_err;
	}
	int err = weft__tls_errno(gerr);
	if (gerr == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
		unsigned st = gnutls_session_get_verify_cert_status(sess);
		*status = st;
		if (st & (GNUTLS_CERT_EXPIRED | GNUTLS_CERT_NOT_ACTIVATED))
			err = -EKEYEXPIRED;
		gnutls_datum_t out = {NULL, 0};
		if (gnutls_certificate_verification_status_print(st, gnutls_certificate_type_get(sess), &out, 0) == 0) {
			*text = dup_text("certificate verification failed: ", (const char *)out.data);
			gnutls_free(out.data);
		}
	} else if (gerr == GNUTLS_E_FATAL_ALERT_RECEIVED || gerr == GNUTLS_E_WARNING_ALERT_RECEIVED) {
		const char *name = gnutls_alert_get_name(gnutls_alert_get(sess));
		*text = dup_text("the peer sent a fatal alert: ", name ? name : "unknown");
	} else {
		*text = dup_text("", gnutls_strerror(gerr));
	}
	return err < 0 ? err : -EPROTO;
}

/* ---- the configuration ---------------------------------------------------- */

int weft_tls_config_new(weft_tls_role role, weft_tls_config **ret_cfg)
{
	if ((role != WEFT_TLS_CLIENT && role != WEFT_TLS_SERVER) || ret_cfg == NULL)
		return -EINVAL;
	weft_tls_config *cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL)
		return -ENOMEM;
	int g = gnutls_certificate_allocate_credentials(&cfg->cred);
	if (g < 0) {
		free(cfg);
		return weft__tls_errno(g);
	}
	cfg->refs = 1;
	cfg->role = role;
	cfg->tickets = role == WEFT_TLS_SERVER;
	cfg->close_timeout_ms = 2000;
	*ret_cfg = cfg;
	return 0;
}

weft_tls_config *weft_tls_config_ref(weft_tls_config *cfg)
{
	if (cfg != NULL)
		cfg->refs++;
	return cfg;
}

static void free_key(gnutls_datum_t *key)
{
	if (key->data != NULL) {
		gnutls_memset(key->data, 0, key->size);
		gnutls_free(key->data);
	}
	key->data = NULL;
	key->size = 0;
}

static void free_alpn(weft_tls_config *cfg)
{
	for (unsigned i = 0; i < cfg->nalpn; i++)
		free(cfg->alpn[i].data);
	cfg->nalpn = 0;
}

void weft_tls_config_unref(weft_tls_config *cfg)
{
	if (cfg == NULL || --cfg->refs > 0)
		return;
	gnutls_certificate_free_credentials(cfg->cred);
	if (cfg->prio != NULL)
		gnutls_priority_deinit(cfg->prio);
	free_alpn(cfg);
	free_key(&cfg->ticket_key);
	free_key(&cfg->cookie_key);
	free(cfg);
}

int weft_tls_config_last_error(const weft_tls_config *cfg)
{
	return cfg ? cfg->last_gerr : 0;
}

/* A credential that could not be loaded: the file is missing (ENOENT),
 * memory ran out, or else the contents are not what was expected. */
static int config_fail(weft_tls_config *cfg, int g)
{
	cfg->last_gerr = g;
	switch (g) {
	case GNUTLS_E_FILE_ERROR:
		return -ENOENT;
	case GNUTLS_E_MEMORY_ERROR:
		return -ENOMEM;
	case GNUTLS_E_INVALID_REQUEST:
		return -EINVAL;
	default:
		return -EBADMSG;
	}
}

int weft_tls_config_add_cert_file(weft_tls_config *cfg, const char *cert_file, const char *key_file,
		const char *key_pass)
{
	if (cfg == NULL || cert_file == NULL || key_file == NULL)
		return -EINVAL;
	int g = gnutls_certificate_set_x509_key_file2(cfg->cred, cert_file, key_file, GNUTLS_X509_FMT_PEM,
			key_pass, 0);
	if (g < 0)
		return config_fail(cfg, g);
	cfg->ncerts++;
	return 0;
}

int weft_tls_config_add_cert_mem(weft_tls_config *cfg, const void *cert_pem, size_t cert_len,
		const void *key_pem, size_t key_len, const char *key_pass)
{
	if (cfg == NULL || cert_pem == NULL || key_pem == NULL || cert_len == 0 || key_len == 0 ||
	    cert_len > UINT32_MAX || key_len > UINT32_MAX)
		return -EINVAL;
	gnutls_datum_t c = {(unsigned char *)cert_pem, (unsigned)cert_len};
	gnutls_datum_t k = {(unsigned char *)key_pem, (unsigned)key_len};
	int g = gnutls_certificate_set_x509_key_mem2(cfg->cred, &c, &k, GNUTLS_X509_FMT_PEM, key_pass, 0);
	if (g < 0)
		return config_fail(cfg, g);
	cfg->ncerts++;
	return 0;
}

static int ca_added(weft_tls_config *cfg, int g)
{
	if (g < 0)
		return config_fail(cfg, g);
	if (g == 0)
		return -EBADMSG;
	cfg->ca_set = true;
	return g;
}

int weft_tls_config_add_ca_file(weft_tls_config *cfg, const char *ca_file)
{
	if (cfg == NULL || ca_file == NULL)
		return -EINVAL;
	return ca_added(cfg, gnutls_certificate_set_x509_trust_file(cfg->cred, ca_file, GNUTLS_X509_FMT_PEM));
}

int weft_tls_config_add_ca_mem(weft_tls_config *cfg, const void *ca_pem, size_t len)
{
	if (cfg == NULL || ca_pem == NULL || len == 0 || len > UINT32_MAX)
		return -EINVAL;
	gnutls_datum_t d = {(unsigned char *)ca_pem, (unsigned)len};
	return ca_added(cfg, gnutls_certificate_set_x509_trust_mem(cfg->cred, &d, GNUTLS_X509_FMT_PEM));
}

int weft_tls_config_set_verify(weft_tls_config *cfg, weft_tls_verify mode)
{
	if (cfg == NULL || (mode != WEFT_TLS_VERIFY_FULL && mode != WEFT_TLS_VERIFY_CHAIN &&
			    mode != WEFT_TLS_VERIFY_NONE))
		return -EINVAL;
	cfg->verify = mode;
	return 0;
}

int weft_tls_config_set_client_auth(weft_tls_config *cfg, weft_tls_client_auth mode)
{
	if (cfg == NULL || cfg->role != WEFT_TLS_SERVER ||
	    (mode != WEFT_TLS_CLIENT_AUTH_NONE && mode != WEFT_TLS_CLIENT_AUTH_REQUEST &&
	     mode != WEFT_TLS_CLIENT_AUTH_REQUIRE))
		return -EINVAL;
	cfg->client_auth = mode;
	return 0;
}

int weft_tls_config_set_priority(weft_tls_config *cfg, const char *priority)
{
	if (cfg == NULL || priority == NULL)
		return -EINVAL;
	gnutls_priority_t p = NULL;
	const char *err_pos = NULL;
	int g = gnutls_priority_init(&p, priority, &err_pos);
	if (g < 0) {
		cfg->last_gerr = g;
		return g == GNUTLS_E_MEMORY_ERROR ? -ENOMEM : -EINVAL;
	}
	if (cfg->prio != NULL)
		gnutls_priority_deinit(cfg->prio);
	cfg->prio = p;
	return 0;
}

int weft_tls_config_set_alpn(weft_tls_config *cfg, const char *const *protocols, size_t count)
{
	if (cfg == NULL || count > WEFT__TLS_MAX_ALPN || (count > 0 && protocols == NULL))
		return -EINVAL;
	for (size_t i = 0; i < count; i++) {
		size_t n = protocols[i] ? strlen(protocols[i]) : 0;
		if (n == 0 || n > 255)
			return -EINVAL;
	}
	gnutls_datum_t copy[WEFT__TLS_MAX_ALPN];
	for (size_t i = 0; i < count; i++) {
		size_t n = strlen(protocols[i]);
		copy[i].data = malloc(n + 1);
		if (copy[i].data == NULL) {
			for (size_t j = 0; j < i; j++)
				free(copy[j].data);
			return -ENOMEM;
		}
		memcpy(copy[i].data, protocols[i], n + 1);
		copy[i].size = (unsigned)n;
	}
	free_alpn(cfg);
	if (count > 0)
		memcpy(cfg->alpn, copy, count * sizeof(copy[0]));
	cfg->nalpn = (unsigned)count;
	return 0;
}

int weft_tls_config_set_tickets(weft_tls_config *cfg, bool enable)
{
	if (cfg == NULL || cfg->role != WEFT_TLS_SERVER)
		return -EINVAL;
	cfg->tickets = enable;
	return 0;
}

int weft_tls_config_set_close_timeout(weft_tls_config *cfg, unsigned ms)
{
	if (cfg == NULL)
		return -EINVAL;
	cfg->close_timeout_ms = ms;
	return 0;
}

int weft_tls_config_set_dtls_timeouts(weft_tls_config *cfg, unsigned retrans_ms, unsigned total_ms)
{
	if (cfg == NULL || retrans_ms == 0 || total_ms < retrans_ms)
		return -EINVAL;
	cfg->dtls_retrans_ms = retrans_ms;
	cfg->dtls_total_ms = total_ms;
	return 0;
}

/* ---- sessions ---------------------------------------------------------------- */

static bool is_ip_literal(const char *name)
{
	unsigned char buf[16];
	return inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1;
}

int weft__tls_session_setup(weft_tls_config *cfg, gnutls_session_t sess, const char *server_name)
{
	bool server = cfg->role == WEFT_TLS_SERVER;
	bool verify_peer = server ? cfg->client_auth != WEFT_TLS_CLIENT_AUTH_NONE && cfg->verify != WEFT_TLS_VERIFY_NONE
				  : cfg->verify != WEFT_TLS_VERIFY_NONE;
	int g;
	if (verify_peer && !cfg->ca_set && !cfg->system_trust_tried) {
		cfg->system_trust_tried = true;
		(void)gnutls_certificate_set_x509_system_trust(cfg->cred); /* none: nothing verifies */
	}
	if ((g = gnutls_credentials_set(sess, GNUTLS_CRD_CERTIFICATE, cfg->cred)) < 0)
		goto fail;
	g = cfg->prio ? gnutls_priority_set(sess, cfg->prio) : gnutls_set_default_priority(sess);
	if (g < 0)
		goto fail;
	if (server) {
		if (cfg->client_auth != WEFT_TLS_CLIENT_AUTH_NONE) {
			gnutls_certificate_server_set_request(sess, cfg->client_auth == WEFT_TLS_CLIENT_AUTH_REQUIRE
					? GNUTLS_CERT_REQUIRE : GNUTLS_CERT_REQUEST);
			/* REQUEST: a certificate sent is verified after the
			 * handshake (GnuTLS's own check would refuse none). */
			if (cfg->verify != WEFT_TLS_VERIFY_NONE && cfg->client_auth == WEFT_TLS_CLIENT_AUTH_REQUIRE)
				gnutls_session_set_verify_cert(sess, NULL, 0);
		}
		if (cfg->tickets) {
			if (cfg->ticket_key.data == NULL && (g = gnutls_session_ticket_key_generate(&cfg->ticket_key)) < 0)
				goto fail;
			if ((g = gnutls_session_ticket_enable_server(sess, &cfg->ticket_key)) < 0)
				goto fail;
		}
	} else {
		if (server_name != NULL && !is_ip_literal(server_name) &&
		    (g = gnutls_server_name_set(sess, GNUTLS_NAME_DNS, server_name, strlen(server_name))) < 0)
			goto fail;
		if (cfg->verify == WEFT_TLS_VERIFY_FULL)
			gnutls_session_set_verify_cert(sess, server_name, 0);
		else if (cfg->verify == WEFT_TLS_VERIFY_CHAIN)
			gnutls_session_set_verify_cert(sess, NULL, 0);
	}
	if (cfg->nalpn > 0) {
		unsigned flags = server ? GNUTLS_ALPN_SERVER_PRECEDENCE | GNUTLS_ALPN_MANDATORY : 0;
		if ((g = gnutls_alpn_set_protocols(sess, cfg->alpn, cfg->nalpn, flags)) < 0)
			goto fail;
	}
	return 0;
fail:
	cfg->last_gerr = g;
	return g == GNUTLS_E_MEMORY_ERROR ? -ENOMEM : -EPROTO;
}
