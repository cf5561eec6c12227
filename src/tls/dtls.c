/* DTLS over a weft datagram socket (GnuTLS, GNUTLS_DATAGRAM |
 * GNUTLS_NONBLOCK).
 *
 * The session takes the socket over: it watches the fd itself (the
 * weft_dgram's own watcher stays stopped, since nobody issues requests on
 * it) and closes it through weft_dgram_close.  GnuTLS's DTLS rules:
 *  - pull reads one datagram; the pull-timeout function is only ever asked
 *    "is a datagram waiting" (timeout 0) and answers with a zero-timeout
 *    poll, never waiting;
 *  - a handshake interrupted with GNUTLS_E_AGAIN is resumed when the fd is
 *    ready in the direction gnutls_record_get_direction names, *or* when
 *    gnutls_dtls_get_timeout() milliseconds have passed (a loop timer):
 *    that call retransmits the last flight; GNUTLS_E_TIMEDOUT ends it;
 *  - an interrupted record send is resumed with record_send(NULL, 0).
 * A server on an unconnected socket first runs the stateless cookie
 * exchange (gnutls_dtls_cookie_verify/_send), then connects the socket to
 * the client that proved its address and hands GnuTLS the ClientHello it
 * already read (gnutls_dtls_prestate_set). */
#include "tls-private.h"
#include "sock-private.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define DGRAM_MAX 65536u
#define STEPS 16u

enum phase { PH_NONE, PH_COOKIE, PH_RUNNING, PH_DONE };

struct send_state {
	struct weft__list link;
	weft_dtls *dt; /* NULL once detached */
	weft_req *req;
	const void *buf;
	size_t len;
};

struct recv_state {
	weft_dtls *dt;
	uint8_t *buf;
	size_t len;
};

struct hs_state {
	weft_dtls *dt;
};

struct weft_dtls {
	weft_loop *loop;
	weft_dgram *d;
	int fd;
	weft_io *io;
	weft_timer *timer;
	weft_defer *kick;
	weft_tls_config *cfg;
	gnutls_session_t sess;
	bool server;
	char *server_name; /* GnuTLS's verification keeps pointing at it */

	enum phase ph;
	unsigned hs_want; /* 0: step now */
	bool timer_fired;
	weft_req *hs_req;
	weft_req *recv_req;
	struct weft__list sends;
	bool flush_pending;
	unsigned flush_want;
	bool eof;

	int err, gerr, transport_err;
	char *err_text;
	unsigned busy;
	bool closed;

	/* a datagram read before GnuTLS wanted it (the verified ClientHello) */
	uint8_t *held;
	size_t held_len;
	uint8_t *scratch; /* DGRAM_MAX */
};

static void dtls_release(weft_dtls *dt);
static void dtls_update(weft_dtls *dt);

/* ---- transport ---------------------------------------------------------- */

static ssize_t io_fail(weft_dtls *dt, int err)
{
	if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) {
		gnutls_transport_set_errno(dt->sess, err);
	} else {
		dt->transport_err = -err;
		gnutls_transport_set_errno(dt->sess, EIO);
	}
	return -1;
}

static ssize_t dtls_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
	weft_dtls *dt = ptr;
	if (dt->held != NULL) {
		size_t n = dt->held_len < len ? dt->held_len : len;
		memcpy(buf, dt->held, n);
		free(dt->held);
		dt->held = NULL;
		return (ssize_t)n;
	}
	ssize_t r = recv(dt->fd, buf, len, MSG_DONTWAIT);
	if (r < 0) {
		if (errno == ECONNREFUSED)
			return io_fail(dt, EAGAIN); /* ICMP from a peer not up yet: retransmission copes */
		return io_fail(dt, errno);
	}
	return r;
}

static ssize_t dtls_push(gnutls_transport_ptr_t ptr, const void *buf, size_t len)
{
	weft_dtls *dt = ptr;
	ssize_t r = send(dt->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (r < 0) {
		if (errno == ECONNREFUSED)
			return (ssize_t)len; /* as lost: the peer is not there yet */
		return io_fail(dt, errno);
	}
	return r;
}

static int dtls_pull_timeout(gnutls_transport_ptr_t ptr, unsigned ms)
{
	weft_dtls *dt = ptr;
	(void)ms; /* GNUTLS_NONBLOCK: only ever asked with 0; we never wait */
	if (dt->held != NULL)
		return 1;
	struct pollfd p = {.fd = dt->fd, .events = POLLIN};
	int r = poll(&p, 1, 0);
	return r > 0 ? 1 : 0;
}

/* ---- failures ------------------------------------------------------------- */

static void dtls_set_error(weft_dtls *dt, int err, int gerr, char *text)
{
	if (dt->err != 0) {
		free(text);
		return;
	}
	dt->err = err;
	dt->gerr = gerr;
	free(dt->err_text);
	dt->err_text = text;
}

static int dtls_fail(weft_dtls *dt, int gerr)
{
	if (dt->err == 0 && gerr != GNUTLS_E_PULL_ERROR && gerr != GNUTLS_E_PUSH_ERROR && gerr != GNUTLS_E_TIMEDOUT &&
	    gerr != GNUTLS_E_FATAL_ALERT_RECEIVED)
		(void)gnutls_alert_send_appropriate(dt->sess, gerr);
	unsigned status = 0;
	char *text = NULL;
	int err = weft__tls_failure(dt->sess, gerr, dt->transport_err, &status, &text);
	dtls_set_error(dt, err, gerr, text);
	return dt->err;
}

static unsigned dir_of(weft_dtls *dt)
{
	return gnutls_record_get_direction(dt->sess) ? WEFT_IO_WRITE : WEFT_IO_READ;
}

/* ---- cookie exchange (servers on an unconnected socket) ------------------- */

struct cookie_dst {
	int fd;
	struct sockaddr_storage ss;
	socklen_t len;
};

static ssize_t cookie_push(gnutls_transport_ptr_t ptr, const void *buf, size_t len)
{
	struct cookie_dst *c = ptr;
	ssize_t r = sendto(c->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&c->ss, c->len);
	return r < 0 ? (ssize_t)len : r; /* a lost cookie is retransmitted by the client */
}

static void cookie_step(weft_dtls *dt)
{
	for (unsigned i = 0; i < STEPS; i++) {
		struct cookie_dst c = {.fd = dt->fd, .len = sizeof(c.ss)};
		ssize_t n = recvfrom(dt->fd, dt->scratch, DGRAM_MAX, MSG_DONTWAIT, (struct sockaddr *)&c.ss, &c.len);
		if (n < 0)
			return; /* EAGAIN, or an error that concerns no one yet */
		gnutls_dtls_prestate_st pre;
		memset(&pre, 0, sizeof(pre));
		if (gnutls_dtls_cookie_verify(&dt->cfg->cookie_key, &c.ss, c.len, dt->scratch, (size_t)n, &pre) < 0) {
			(void)gnutls_dtls_cookie_send(&dt->cfg->cookie_key, &c.ss, c.len, &pre, &c, cookie_push);
			continue;
		}
		/* A client that proved its address: this session is its. */
		if (connect(dt->fd, (struct sockaddr *)&c.ss, c.len) < 0) {
			char *text = strdup("connect to the DTLS client failed");
			dtls_set_error(dt, -errno, 0, text);
			return;
		}
		dt->held = malloc((size_t)n);
		if (dt->held == NULL) {
			dtls_set_error(dt, -ENOMEM, GNUTLS_E_MEMORY_ERROR, NULL);
			return;
		}
		memcpy(dt->held, dt->scratch, (size_t)n);
		dt->held_len = (size_t)n;
		gnutls_dtls_prestate_set(dt->sess, &pre);
		dt->ph = PH_RUNNING;
		dt->hs_want = 0;
		return;
	}
	weft_defer_schedule(dt->kick); /* more waiting: yield, come back */
}

/* ---- driving ---------------------------------------------------------------- */

static void hs_step(weft_dtls *dt)
{
	for (unsigned i = 0; i < STEPS && dt->err == 0; i++) {
		int g = gnutls_handshake(dt->sess);
		if (g == 0) {
			dt->ph = PH_DONE;
			weft_timer_stop(dt->timer);
			return;
		}
		if (g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED) {
			dt->hs_want = dir_of(dt);
			weft_timer_start(dt->timer, gnutls_dtls_get_timeout(dt->sess), 0);
			return;
		}
		if (gnutls_error_is_fatal(g) || g == GNUTLS_E_TIMEDOUT)
			dtls_fail(dt, g);
	}
}

static bool flush(weft_dtls *dt)
{
	ssize_t g = gnutls_record_send(dt->sess, NULL, 0);
	if (g >= 0) {
		dt->flush_pending = false;
		return true;
	}
	if (g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED)
		dt->flush_want = dir_of(dt);
	else
		dtls_fail(dt, (int)g);
	return false;
}

static void serve_sends(weft_dtls *dt)
{
	while (!weft__list_empty(&dt->sends) && !dt->closed) {
		struct send_state *st = weft__container_of(dt->sends.next, struct send_state, link);
		weft_req *req = st->req;
		if (dt->err != 0) {
			weft_req_error(req, dt->err);
			continue;
		}
		ssize_t g;
		if (dt->flush_pending) {
			if (!flush(dt)) {
				if (dt->err == 0)
					return; /* blocked */
				continue; /* failed: the error completes it */
			}
			g = (ssize_t)st->len;
		} else {
			g = gnutls_record_send(dt->sess, st->buf, st->len);
			if (g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED) {
				dt->flush_pending = true;
				dt->flush_want = dir_of(dt);
				return;
			}
			if (g < 0) {
				weft_req_error(req, g == GNUTLS_E_LARGE_PACKET ? -EMSGSIZE : dtls_fail(dt, (int)g));
				continue;
			}
		}
		weft_req_set_progress(req, (uint64_t)g);
		weft_req_done(req);
	}
}

static void serve_recv(weft_dtls *dt)
{
	weft_req *req = dt->recv_req;
	struct recv_state *st = weft_req_state(req);
	for (unsigned i = 0; i < STEPS; i++) {
		if (dt->err != 0) {
			weft_req_error(req, dt->err);
			return;
		}
		if (dt->eof) {
			weft_req_error(req, EPIPE);
			return;
		}
		ssize_t g = gnutls_record_recv(dt->sess, dt->scratch, DGRAM_MAX);
		if (g > 0) {
			st->buf = malloc((size_t)g);
			if (weft_req_nomem(st->buf, req))
				return;
			memcpy(st->buf, dt->scratch, (size_t)g);
			st->len = (size_t)g;
			weft_req_done(req);
			return;
		}
		if (g == 0) {
			dt->eof = true;
			continue;
		}
		if (g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED)
			return;
		if (gnutls_error_is_fatal((int)g))
			dtls_fail(dt, (int)g);
		/* else: a bad or replayed record, dropped (DTLS) */
	}
	weft_defer_schedule(dt->kick);
}

static void dtls_drive(weft_dtls *dt, unsigned revents)
{
	dt->busy++;
	bool timer = dt->timer_fired;
	dt->timer_fired = false;
	if (revents & (WEFT_IO_ERR | WEFT_IO_HUP))
		revents |= WEFT_IO_READ | WEFT_IO_WRITE;
	if (dt->ph == PH_COOKIE && dt->err == 0 && (revents & WEFT_IO_READ))
		cookie_step(dt);
	if (dt->ph == PH_RUNNING && dt->err == 0 && (timer || dt->hs_want == 0 || (revents & dt->hs_want)))
		hs_step(dt);
	if (dt->hs_req != NULL && (dt->ph == PH_DONE || dt->err != 0)) {
		weft_req *req = dt->hs_req;
		dt->hs_req = NULL;
		((struct hs_state *)weft_req_state(req))->dt = NULL;
		if (!weft_req_error(req, dt->err))
			weft_req_done(req);
	}
	if (!dt->closed && (dt->ph == PH_DONE || dt->err != 0)) {
		if (!dt->flush_pending || (revents & dt->flush_want) || dt->err != 0)
			serve_sends(dt);
		if (dt->recv_req != NULL && !dt->closed)
			serve_recv(dt);
	}
	if (!dt->closed)
		dtls_update(dt);
	if (--dt->busy == 0 && dt->closed)
		dtls_release(dt);
}

static void dtls_update(weft_dtls *dt)
{
	unsigned w = 0;
	if (dt->err == 0) {
		if (dt->ph == PH_COOKIE)
			w |= WEFT_IO_READ;
		else if (dt->ph == PH_RUNNING)
			w |= dt->hs_want ? dt->hs_want : 0;
		else if (dt->ph == PH_DONE && dt->recv_req != NULL)
			w |= WEFT_IO_READ;
		if (dt->flush_pending)
			w |= dt->flush_want;
	}
	(void)weft_io_modify(dt->io, w);
	if (dt->ph == PH_RUNNING && dt->hs_want == 0 && dt->err == 0)
		weft_defer_schedule(dt->kick);
}

static void io_cb(weft_io *io, unsigned revents, void *data)
{
	(void)io;
	dtls_drive(data, revents);
}

static void timer_cb(weft_timer *t, void *data)
{
	weft_dtls *dt = data;
	(void)t;
	dt->timer_fired = true;
	dtls_drive(dt, 0);
}

static void kick_cb(weft_defer *d, void *data)
{
	weft_dtls *dt = data;
	(void)d;
	/* After a cookie exchange, or a bounded pass that yielded. */
	dtls_drive(dt, dt->ph == PH_COOKIE || dt->ph == PH_DONE ? WEFT_IO_READ : 0);
}

/* ---- creation and close ------------------------------------------------------ */

static int dtls_new(weft_tls_config *cfg, weft_dgram *d, bool server, const char *server_name, weft_dtls **ret)
{
	if (d == NULL)
		return -EINVAL;
	int r = -EINVAL;
	weft_dtls *dt = NULL;
	if (cfg == NULL || ret == NULL || cfg->role != (server ? WEFT_TLS_SERVER : WEFT_TLS_CLIENT) ||
	    (server && cfg->ncerts == 0) || (!server && server_name == NULL && cfg->verify == WEFT_TLS_VERIFY_FULL))
		goto fail;
	int fd = weft_dgram_fd(d);
	if (fd < 0)
		goto fail;
	struct sockaddr_storage peer;
	socklen_t plen = sizeof(peer);
	bool connected = getpeername(fd, (struct sockaddr *)&peer, &plen) == 0;
	if (!server && !connected)
		goto fail;
	r = -ENOMEM;
	dt = calloc(1, sizeof(*dt));
	if (dt == NULL)
		goto fail;
	dt->loop = weft__dgram_loop(d);
	weft__list_init(&dt->sends);
	dt->fd = fd;
	dt->server = server;
	dt->scratch = malloc(DGRAM_MAX);
	if (dt->scratch == NULL)
		goto fail;
	if (server_name != NULL && (dt->server_name = strdup(server_name)) == NULL)
		goto fail;
	if (server && !connected && cfg->cookie_key.data == NULL) {
		int g = gnutls_key_generate(&cfg->cookie_key, GNUTLS_COOKIE_KEY_SIZE);
		if (g < 0) {
			r = weft__tls_errno(g);
			goto fail;
		}
	}
	int g = gnutls_init(&dt->sess, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_DATAGRAM | GNUTLS_NONBLOCK);
	if (g < 0) {
		dt->sess = NULL;
		r = weft__tls_errno(g);
		goto fail;
	}
	if ((r = weft__tls_session_setup(cfg, dt->sess, dt->server_name)) < 0)
		goto fail;
	gnutls_transport_set_ptr(dt->sess, dt);
	gnutls_transport_set_pull_function(dt->sess, dtls_pull);
	gnutls_transport_set_push_function(dt->sess, dtls_push);
	gnutls_transport_set_pull_timeout_function(dt->sess, dtls_pull_timeout);
	if (cfg->dtls_retrans_ms)
		gnutls_dtls_set_timeouts(dt->sess, cfg->dtls_retrans_ms, cfg->dtls_total_ms);
	dt->ph = server && !connected ? PH_COOKIE : PH_NONE;
	if ((r = weft_io_new(dt->loop, fd, io_cb, dt, &dt->io)) < 0 ||
	    (r = weft_timer_new(dt->loop, timer_cb, dt, &dt->timer)) < 0 ||
	    (r = weft_defer_new(dt->loop, kick_cb, dt, &dt->kick)) < 0 ||
	    (dt->ph == PH_COOKIE && (r = weft_io_start(dt->io, WEFT_IO_READ)) < 0))
		goto fail;
	*ret = dt;
	dt->d = d;
	dt->cfg = weft_tls_config_ref(cfg);
	return 0;
fail:
	if (dt != NULL) {
		weft_io_free(dt->io);
		weft_timer_free(dt->timer);
		weft_defer_free(dt->kick);
		if (dt->sess != NULL)
			gnutls_deinit(dt->sess);
		free(dt->scratch);
		free(dt->server_name);
		free(dt);
	}
	weft_dgram_close(d);
	return r;
}


int weft_dtls_client_new(weft_tls_config *cfg, weft_dgram *d, const char *server_name, weft_dtls **ret_dtls)
{
	return dtls_new(cfg, d, false, server_name, ret_dtls);
}

int weft_dtls_server_new(weft_tls_config *cfg, weft_dgram *d, weft_dtls **ret_dtls)
{
	return dtls_new(cfg, d, true, NULL, ret_dtls);
}

static void dtls_release(weft_dtls *dt)
{
	if (dt->ph == PH_DONE && dt->err == 0)
		(void)gnutls_bye(dt->sess, GNUTLS_SHUT_WR); /* one try, not waiting */
	gnutls_deinit(dt->sess);
	weft_io_free(dt->io); /* before the socket closes */
	weft_timer_free(dt->timer);
	weft_defer_free(dt->kick);
	weft_dgram_close(dt->d);
	weft_tls_config_unref(dt->cfg);
	free(dt->held);
	free(dt->scratch);
	free(dt->server_name);
	free(dt->err_text);
	free(dt);
}

void weft_dtls_close(weft_dtls *dt)
{
	if (dt == NULL || dt->closed)
		return;
	dt->closed = true;
	/* Every request completes with ECANCELED (posted); cleanups detach. */
	if (dt->hs_req != NULL)
		weft_req_cancel(dt->hs_req);
	if (dt->recv_req != NULL)
		weft_req_cancel(dt->recv_req);
	while (!weft__list_empty(&dt->sends)) {
		struct send_state *st = weft__container_of(dt->sends.next, struct send_state, link);
		weft_req_cancel(st->req);
	}
	if (dt->busy == 0)
		dtls_release(dt);
}

/* ---- requests ------------------------------------------------------------------ */

static void hs_cleanup(weft_req *req, weft_req_stage stage)
{
	struct hs_state *st = weft_req_state(req);
	(void)stage;
	if (st->dt != NULL && st->dt->hs_req == req)
		st->dt->hs_req = NULL;
	st->dt = NULL;
}

weft_req *weft_dtls_handshake_send(weft_dtls *dt)
{
	if (dt == NULL)
		return NULL;
	weft_req *req = weft_req_new(dt->loop, sizeof(struct hs_state), "dtls-handshake");
	if (req == NULL)
		return NULL;
	if (dt->closed || dt->err != 0) {
		weft_req_error(req, dt->closed ? ECANCELED : dt->err);
		return req;
	}
	if (dt->ph == PH_DONE) {
		weft_req_done(req);
		return req;
	}
	if (dt->hs_req != NULL) {
		weft_req_error(req, EBUSY);
		return req;
	}
	struct hs_state *st = weft_req_state(req);
	st->dt = dt;
	dt->hs_req = req;
	weft_req_set_cleanup(req, hs_cleanup);
	if (dt->ph == PH_NONE) {
		dt->ph = PH_RUNNING;
		dt->hs_want = 0;
		weft_defer_schedule(dt->kick);
	}
	return req;
}

int weft_dtls_handshake_recv(weft_req *req, int *perrno)
{
	return weft_req_simple_recv(req, perrno);
}

static void send_cleanup(weft_req *req, weft_req_stage stage)
{
	struct send_state *st = weft_req_state(req);
	(void)stage;
	if (st->dt != NULL) {
		weft__list_remove(&st->link);
		st->dt = NULL;
	}
}

weft_req *weft_dtls_send_send(weft_dtls *dt, const void *buf, size_t len)
{
	if (dt == NULL)
		return NULL;
	weft_req *req = weft_req_new(dt->loop, sizeof(struct send_state), "dtls-send");
	if (req == NULL)
		return NULL;
	if (dt->closed || dt->err != 0) {
		weft_req_error(req, dt->closed ? ECANCELED : dt->err);
		return req;
	}
	if (buf == NULL || len == 0) {
		weft_req_error(req, EINVAL);
		return req;
	}
	if (dt->ph != PH_DONE) {
		weft_req_error(req, ENOTCONN);
		return req;
	}
	if (len > (size_t)gnutls_dtls_get_data_mtu(dt->sess)) {
		weft_req_error(req, EMSGSIZE);
		return req;
	}
	struct send_state *st = weft_req_state(req);
	st->dt = dt;
	st->req = req;
	st->buf = buf;
	st->len = len;
	weft__list_append(&dt->sends, &st->link);
	weft_req_set_cleanup(req, send_cleanup);
	if (dt->busy == 0 && !dt->flush_pending && dt->sends.next == &st->link) {
		dt->busy++;
		serve_sends(dt); /* completion inside _send is posted */
		dtls_update(dt);
		dt->busy--;
	} else if (!dt->flush_pending) {
		weft_defer_schedule(dt->kick); /* from a callback: served from the loop */
	}
	return req;
}

ssize_t weft_dtls_send_recv(weft_req *req, int *perrno)
{
	int r = weft_req_simple_recv(req, perrno);
	return r < 0 ? r : (ssize_t)weft_req_progress(req);
}

static void recv_cleanup(weft_req *req, weft_req_stage stage)
{
	struct recv_state *st = weft_req_state(req);
	if (st->dt != NULL && st->dt->recv_req == req) {
		st->dt->recv_req = NULL;
		if (!st->dt->closed)
			dtls_update(st->dt);
	}
	st->dt = NULL;
	if (stage == WEFT_REQ_STAGE_FREED) {
		free(st->buf);
		st->buf = NULL;
	}
}

weft_req *weft_dtls_recv_send(weft_dtls *dt)
{
	if (dt == NULL)
		return NULL;
	weft_req *req = weft_req_new(dt->loop, sizeof(struct recv_state), "dtls-recv");
	if (req == NULL)
		return NULL;
	if (dt->closed || dt->err != 0) {
		weft_req_error(req, dt->closed ? ECANCELED : dt->err);
		return req;
	}
	if (dt->ph != PH_DONE) {
		weft_req_error(req, ENOTCONN);
		return req;
	}
	if (dt->recv_req != NULL) {
		weft_req_error(req, EBUSY);
		return req;
	}
	struct recv_state *st = weft_req_state(req);
	st->dt = dt;
	dt->recv_req = req;
	weft_req_set_cleanup(req, recv_cleanup);
	weft_defer_schedule(dt->kick); /* records may be buffered already */
	if (dt->busy == 0)
		dtls_update(dt);
	return req;
}

ssize_t weft_dtls_recv_recv(weft_req *req, uint8_t **ret_buf, int *perrno)
{
	int r = weft_req_simple_recv(req, perrno);
	if (r < 0)
		return r;
	struct recv_state *st = weft_req_state(req);
	ssize_t n = (ssize_t)st->len;
	if (ret_buf != NULL) {
		*ret_buf = st->buf;
		st->buf = NULL;
	}
	return n;
}

/* ---- settings and information -------------------------------------------------- */

int weft_dtls_set_mtu(weft_dtls *dt, unsigned mtu)
{
	if (dt == NULL || mtu < 256 || mtu > 65535)
		return -EINVAL;
	gnutls_dtls_set_mtu(dt->sess, mtu);
	return 0;
}

unsigned weft_dtls_data_mtu(const weft_dtls *dt)
{
	return dt ? gnutls_dtls_get_data_mtu(dt->sess) : 0;
}

int weft_dtls_last_error(const weft_dtls *dt)
{
	return dt ? dt->gerr : 0;
}

const char *weft_dtls_error_text(const weft_dtls *dt)
{
	return dt && dt->err_text ? dt->err_text : "";
}

const char *weft_dtls_version(const weft_dtls *dt)
{
	if (dt == NULL || dt->ph != PH_DONE)
		return NULL;
	return gnutls_protocol_get_name(gnutls_protocol_get_version(dt->sess));
}

void *weft_dtls_gnutls_session(const weft_dtls *dt)
{
	return dt ? dt->sess : NULL;
}
