/* The TLS stream: a weft_stream implementation over GnuTLS that wraps
 * another weft_stream (curl's connection-filter pattern: GnuTLS's push and
 * pull functions go to the next layer down).
 *
 * GnuTLS's non-blocking rules, kept here once:
 *  - The session is GNUTLS_NONBLOCK; pull and push return EAGAIN the way a
 *    non-blocking socket does, and GNUTLS_E_AGAIN is resumed when the inner
 *    stream is ready in the direction gnutls_record_get_direction() named
 *    (a read may need to write, e.g. a TLS 1.3 KeyUpdate answer).
 *  - An interrupted gnutls_record_send has already encrypted and queued its
 *    record: the stream reports those bytes as written, keeps the record
 *    "in flight", and resumes with gnutls_record_send(NULL, 0) — before any
 *    new data, and on its own (watching the inner stream) even when no
 *    write request is left.  gnutls_record_discard_queued drops it if the
 *    stream is closed first.
 *  - Decrypted records GnuTLS holds (gnutls_record_check_pending) and
 *    ciphertext read ahead count as pending bytes of the stream, so the
 *    stream core serves them without waiting for the fd.
 *  - GnuTLS asks for a 5-byte header, then the body.  A small request is
 *    served from a read-ahead buffer filled by one plain recv (one syscall
 *    usually brings a small record whole, or several); a large body is read
 *    straight into GnuTLS's buffer.  A short read tells us the socket is
 *    drained, so no syscall is spent on EAGAIN.
 *
 * Callbacks (handshake completions, the stream core's requests) run only
 * from tls_drive — the inner stream's readiness hook or the kick deferred
 * call — never from inside the ops the core calls; tls_drive pins the
 * session (busy) so a callback may close the stream. */
#include "tls-private.h"
#include "sock-private.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Ciphertext read past what GnuTLS asked for: enough for a small record and
 * the next header, so request/response traffic costs one read per record.
 * Once the session receives large records (bulk data), the buffer grows to
 * READ_AHEAD_BULK: one recv then brings several records, instead of two
 * per record (header, then body), and the copy out of it costs less than
 * the syscalls it saves.  Until then a large body is read straight into
 * GnuTLS's buffer. */
#define READ_AHEAD 1024u
#define READ_AHEAD_BULK 65536u
#define BULK_RECORD 8192u /* a body this large marks bulk traffic */
#define HANDSHAKE_STEPS 16 /* non-fatal results retried per wake-up */

enum hs_phase { HS_NONE, HS_RUNNING, HS_DONE };

struct tls_impl {
	weft_loop *loop;
	weft_stream *s;     /* the TLS stream */
	weft_stream *inner; /* the transport, owned */
	weft_tls_config *cfg;
	gnutls_session_t sess;
	bool server;
	char *server_name; /* GnuTLS's verification keeps pointing at it */

	enum hs_phase hs;
	unsigned hs_want;  /* inner events the handshake waits for; 0: step now */
	struct weft__list hs_waiters;

	unsigned core_want;  /* what the stream core asked to watch */
	unsigned armed;      /* what the inner stream watches */
	unsigned rd_want;    /* inner events an interrupted record_recv needs */
	bool flush_pending;  /* a record GnuTLS queued after GNUTLS_E_AGAIN */
	bool push_blocked;   /* the inner stream said EAGAIN; not retried before it is writable */
	unsigned flush_want;
	bool bye_sent;
	bool eof;            /* close_notify received */
	bool inner_drained;  /* the last inner read was short or EAGAIN; no READ readiness since */
	bool notify_core;    /* tell the core: state changed, try again */
	bool wake_read;      /* tell the core: readable without the fd */
	size_t maxrec;

	int err;            /* sticky failure, negative errno */
	int gerr;           /* its GnuTLS code */
	int transport_err;  /* last error of the inner stream */
	unsigned verify_status;
	char *err_text;

	weft_defer *kick;
	unsigned busy;
	bool closed;
	bool lingering;     /* closed, still sending what it accepted */
	weft_timer *linger; /* the bound on lingering */

	unsigned char *rb; /* read-ahead of ciphertext */
	size_t rb_cap, rb_off, rb_len;
	unsigned char *wb; /* gathers small iovecs into one record */
};

struct hs_state {
	struct weft__list link;
	struct tls_impl *t; /* NULL once detached */
	weft_req *req;
};

static const char tls_name[] = "tls";
static const weft_stream_ops tls_ops;

static void tls_release(struct tls_impl *t);
static void tls_finish(struct tls_impl *t);
static void linger_step(struct tls_impl *t, unsigned revents);
static void update_watch(struct tls_impl *t);
static unsigned needed_events(const struct tls_impl *t);
static void watch_inner(struct tls_impl *t, bool keep_read);

static struct tls_impl *tls_of(const weft_stream *s)
{
	if (s == NULL || weft_stream_name(s) != tls_name)
		return NULL;
	return weft_stream_impl(s);
}

bool weft_tls_is_tls(const weft_stream *s)
{
	return tls_of(s) != NULL;
}

/* ---- transport: GnuTLS pull and push over the inner stream ---------------- */

static ssize_t set_io_errno(struct tls_impl *t, ssize_t r)
{
	if (r == -EAGAIN || r == -EWOULDBLOCK || r == -EINTR) {
		gnutls_transport_set_errno(t->sess, (int)-r);
	} else {
		t->transport_err = (int)r;
		gnutls_transport_set_errno(t->sess, EIO);
	}
	return -1;
}

/* The inner stream failed a read: remember EAGAIN until READ readiness. */
static ssize_t pull_failed(struct tls_impl *t, ssize_t r)
{
	if (r == -EAGAIN || r == -EWOULDBLOCK)
		t->inner_drained = true;
	return set_io_errno(t, r);
}

/* Bulk traffic: the larger read-ahead, allocated once per session (it is
 * empty now, nothing to move).  Without memory the small one stays. */
static void grow_read_ahead(struct tls_impl *t)
{
	unsigned char *big = malloc(READ_AHEAD_BULK);
	if (big == NULL)
		return;
	free(t->rb);
	t->rb = big;
	t->rb_cap = READ_AHEAD_BULK;
	t->rb_off = 0;
}

static ssize_t tls_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
	struct tls_impl *t = ptr;
	if (t->rb_len == 0 && t->inner_drained && weft__stream_raw_pending(t->inner) == 0)
		return set_io_errno(t, -EAGAIN); /* drained, no readiness since: no syscall to hear it */
	if (t->rb_len == 0 && len >= BULK_RECORD && t->rb_cap < READ_AHEAD_BULK && t->hs == HS_DONE)
		grow_read_ahead(t);
	if (t->rb_len == 0 && len < t->rb_cap) {
		/* Fill the read-ahead with one plain recv (a two-element readv
		 * into buf and rb costs the kernel a vector import). */
		struct iovec iov = {t->rb, t->rb_cap};
		ssize_t r = weft__stream_raw_readv(t->inner, &iov, 1);
		if (r <= 0)
			return r < 0 ? pull_failed(t, r) : 0;
		t->inner_drained = (size_t)r < t->rb_cap && weft__stream_raw_pending(t->inner) == 0;
		t->rb_off = 0;
		t->rb_len = (size_t)r;
	}
	if (t->rb_len > 0) {
		size_t n = len < t->rb_len ? len : t->rb_len;
		memcpy(buf, t->rb + t->rb_off, n);
		t->rb_off += n;
		t->rb_len -= n;
		if (t->rb_len == 0)
			t->rb_off = 0;
		return (ssize_t)n;
	}
	/* A large body and no room for it: straight into GnuTLS's buffer. */
	struct iovec iov = {buf, len};
	ssize_t r = weft__stream_raw_readv(t->inner, &iov, 1);
	if (r < 0)
		return pull_failed(t, r);
	t->inner_drained = (size_t)r < len && weft__stream_raw_pending(t->inner) == 0;
	return r;
}

static ssize_t tls_vec_push(gnutls_transport_ptr_t ptr, const giovec_t *iov, int count)
{
	struct tls_impl *t = ptr;
	if (t->push_blocked)
		return set_io_errno(t, -EAGAIN); /* known full: no syscall to hear it */
	ssize_t r = weft__stream_raw_writev(t->inner, (const struct iovec *)iov, count);
	if (r == -EAGAIN || r == -EWOULDBLOCK)
		t->push_blocked = true; /* no more pushes before WRITE readiness */
	if (r >= 0) {
		size_t asked = 0;
		for (int i = 0; i < count; i++)
			asked += iov[i].iov_len;
		if ((size_t)r < asked)
			t->push_blocked = true; /* a short write: the transport is full */
	}
	return r < 0 ? set_io_errno(t, r) : r;
}

static int tls_pull_timeout(gnutls_transport_ptr_t ptr, unsigned ms)
{
	struct tls_impl *t = ptr;
	if (ms != 0)
		return 1; /* let pull answer (EAGAIN): never wait */
	return t->rb_len > 0 || weft__stream_raw_pending(t->inner) > 0;
}

/* ---- failures and wake-ups ---------------------------------------------------- */

static void kick(struct tls_impl *t)
{
	if (!t->closed)
		weft_defer_schedule(t->kick);
}

static void set_error(struct tls_impl *t, int err, int gerr, char *text)
{
	if (t->err != 0) {
		free(text);
		return;
	}
	t->err = err;
	t->gerr = gerr;
	free(t->err_text);
	t->err_text = text;
	t->notify_core = true; /* the other direction must learn it too */
	kick(t);
}

static int fail(struct tls_impl *t, int gerr)
{
	char *text = NULL;
	/* Tell the peer why (GnuTLS leaves that to us), once, without waiting;
	 * not when the transport itself failed. */
	if (t->err == 0 && gerr != GNUTLS_E_PULL_ERROR && gerr != GNUTLS_E_PUSH_ERROR &&
	    gerr != GNUTLS_E_PREMATURE_TERMINATION && gerr != GNUTLS_E_UNEXPECTED_PACKET_LENGTH &&
	    gerr != GNUTLS_E_FATAL_ALERT_RECEIVED)
		(void)gnutls_alert_send_appropriate(t->sess, gerr);
	int err = weft__tls_failure(t->sess, gerr, t->transport_err, &t->verify_status, &text);
	set_error(t, err, gerr, text);
	return t->err;
}

/* Ciphertext received but not yet given to GnuTLS. */
static bool buffered(const struct tls_impl *t)
{
	return t->rb_len > 0 || weft__stream_raw_pending(t->inner) > 0;
}

static unsigned direction(struct tls_impl *t)
{
	return gnutls_record_get_direction(t->sess) ? WEFT_IO_WRITE : WEFT_IO_READ;
}

/* A server that requested (not required) a client certificate verifies
 * the one it got.  Returns false (the session failed) if it does not. */
static bool verify_requested(struct tls_impl *t)
{
	unsigned n = 0;
	if (!t->server || t->cfg->client_auth != WEFT_TLS_CLIENT_AUTH_REQUEST || t->cfg->verify == WEFT_TLS_VERIFY_NONE ||
	    gnutls_certificate_get_peers(t->sess, &n) == NULL || n == 0)
		return true;
	unsigned status = 0;
	int g = gnutls_certificate_verify_peers2(t->sess, &status);
	if (g == 0 && status == 0)
		return true;
	t->verify_status = status;
	gnutls_datum_t out = {NULL, 0};
	char *text = NULL;
	if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0) == 0) {
		const char pre[] = "certificate verification failed: ";
		text = malloc(sizeof(pre) + out.size);
		if (text != NULL)
			snprintf(text, sizeof(pre) + out.size, "%s%s", pre, (const char *)out.data);
		gnutls_free(out.data);
	}
	(void)gnutls_alert_send(t->sess, GNUTLS_AL_FATAL, GNUTLS_A_BAD_CERTIFICATE);
	set_error(t, (status & (GNUTLS_CERT_EXPIRED | GNUTLS_CERT_NOT_ACTIVATED)) ? -EKEYEXPIRED : -EKEYREJECTED,
			GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR, text);
	return false;
}

/* ---- the handshake --------------------------------------------------------------- */

/* in_drive: called from tls_drive, which completes the waiters and tells
 * the core itself right after; elsewhere the kick does it from the loop. */
static void hs_step(struct tls_impl *t, bool in_drive)
{
	for (int i = 0; i < HANDSHAKE_STEPS && t->err == 0; i++) {
		int g = gnutls_handshake(t->sess);
		if (g == 0 && !verify_requested(t))
			return;
		if (g == 0) {
			t->hs = HS_DONE;
			t->hs_want = 0;
			t->maxrec = gnutls_record_get_max_size(t->sess);
			if (t->maxrec == 0 || t->maxrec > 16384)
				t->maxrec = 16384;
			t->notify_core = true;
			if (!in_drive)
				kick(t); /* waiters complete from the loop */
			return;
		}
		if (g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED) {
			t->hs_want = direction(t);
			if (t->hs_want == WEFT_IO_READ && buffered(t))
				continue; /* records in hand: go on */
			return;
		}
		if (gnutls_error_is_fatal(g))
			fail(t, g);
	}
	if (t->err == 0)
		t->hs_want = 0; /* still going: step again from the loop */
	kick(t);
}

/* From the ops the core calls: start the handshake if needed and step it
 * if it waits for nothing.  Returns 0 or the session's error. */
static int hs_ensure(struct tls_impl *t)
{
	if (t->hs == HS_NONE)
		t->hs = HS_RUNNING;
	if (t->hs == HS_RUNNING && t->hs_want == 0 && t->err == 0) {
		hs_step(t, false);
		/* The step chose a direction: watch for it now, as the core
		 * may not ask again (its own interest did not change). */
		if (t->busy == 0 && !t->closed)
			update_watch(t);
	}
	return t->err;
}

static void hs_cleanup(weft_req *req, weft_req_stage stage)
{
	struct hs_state *st = weft_req_state(req);
	struct tls_impl *t = st->t;
	if (t == NULL)
		return;
	weft__list_remove(&st->link);
	st->t = NULL;
	weft_req_status status = weft_req_get_status(req);
	if (stage == WEFT_REQ_STAGE_FINISHED && t->hs == HS_RUNNING && !t->closed && t->err == 0 &&
	    weft__list_empty(&t->hs_waiters) &&
	    (status == WEFT_REQ_TIMED_OUT || status == WEFT_REQ_CANCELED)) {
		/* The last one waiting gave up: abandon the handshake. */
		bool timeout = status == WEFT_REQ_TIMED_OUT;
		const char *why = timeout ? "the handshake timed out" : "the handshake was canceled";
		set_error(t, timeout ? -ETIMEDOUT : -ECANCELED, 0, strdup(why));
	}
}

weft_req *weft_tls_handshake_send(weft_stream *s)
{
	if (s == NULL)
		return NULL;
	weft_req *req = weft_req_new(weft_stream_loop(s), sizeof(struct hs_state), "tls-handshake");
	if (req == NULL)
		return NULL;
	struct tls_impl *t = tls_of(s);
	if (t == NULL) {
		weft_req_error(req, EINVAL);
		return req;
	}
	if (t->err != 0) {
		weft_req_error(req, t->err);
		return req;
	}
	if (t->hs == HS_DONE) {
		weft_req_done(req);
		return req;
	}
	struct hs_state *st = weft_req_state(req);
	st->req = req;
	st->t = t;
	weft__list_append(&t->hs_waiters, &st->link);
	weft_req_set_cleanup(req, hs_cleanup);
	if (t->hs == HS_NONE) {
		t->hs = HS_RUNNING;
		t->hs_want = 0;
		kick(t);
	}
	return req;
}

int weft_tls_handshake_recv(weft_req *req, int *perrno)
{
	return weft_req_simple_recv(req, perrno);
}

/* ---- driving: the inner stream's readiness, and the kick --------------------- */

static bool flush_step(struct tls_impl *t)
{
	ssize_t g = gnutls_record_send(t->sess, NULL, 0);
	if (g >= 0) {
		t->flush_pending = false;
		return true;
	}
	if (g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED)
		t->flush_want = direction(t);
	else
		fail(t, (int)g);
	return false;
}

static void tls_drive(struct tls_impl *t, unsigned revents)
{
	t->busy++;
	unsigned tev = 0;
	bool read_wanted = (needed_events(t) & WEFT_IO_READ) != 0;
	if (revents & (WEFT_IO_ERR | WEFT_IO_HUP))
		revents |= WEFT_IO_READ | WEFT_IO_WRITE; /* let every side find out */
	if (revents & WEFT_IO_WRITE)
		t->push_blocked = false;
	if (revents & WEFT_IO_READ)
		t->inner_drained = false;
	if (t->flush_pending && t->err == 0 && (revents & t->flush_want) && flush_step(t))
		tev |= WEFT_IO_WRITE;
	if (t->hs == HS_RUNNING && t->err == 0 && (t->hs_want == 0 || (revents & t->hs_want)))
		hs_step(t, true);
	if (t->hs == HS_DONE || t->err != 0) {
		while (!weft__list_empty(&t->hs_waiters) && !t->closed) {
			struct hs_state *st = weft__container_of(t->hs_waiters.next, struct hs_state, link);
			weft_req *req = st->req;
			weft__list_remove(&st->link);
			st->t = NULL;
			if (!weft_req_error(req, t->err))
				weft_req_done(req);
		}
	}
	if (!t->closed) {
		if (t->wake_read) {
			t->wake_read = false;
			tev |= WEFT_IO_READ;
		}
		if (t->notify_core) {
			t->notify_core = false;
			tev |= WEFT_IO_READ | WEFT_IO_WRITE;
		} else if (t->hs == HS_DONE) {
			if ((revents & t->rd_want) && ((t->core_want & WEFT_IO_READ) || (revents & WEFT_IO_READ)))
				tev |= WEFT_IO_READ; /* wanted, or data came for a reader yet to ask */
			if ((t->core_want & WEFT_IO_WRITE) && !t->flush_pending && (revents & WEFT_IO_WRITE))
				tev |= WEFT_IO_WRITE;
		}
		if (tev != 0)
			weft_stream_ready(t->s, tev); /* may close the stream */
	}
	if (!t->closed)
		watch_inner(t, !(revents & WEFT_IO_READ) || read_wanted);
	if (--t->busy == 0 && t->closed)
		tls_finish(t);
}

static void inner_hook(void *data, unsigned revents)
{
	struct tls_impl *t = data;
	if (t->lingering)
		linger_step(t, revents);
	else
		tls_drive(t, revents);
}

static void kick_cb(weft_defer *defer, void *data)
{
	struct tls_impl *t = data;
	(void)defer;
	if (!t->closed)
		tls_drive(t, 0);
}

static unsigned needed_events(const struct tls_impl *t)
{
	unsigned w = 0;
	if (t->err == 0) {
		if (t->hs == HS_RUNNING) {
			w |= t->hs_want;
		} else if (t->hs == HS_DONE) {
			if (t->core_want & WEFT_IO_READ)
				w |= t->rd_want;
			if ((t->core_want & WEFT_IO_WRITE) && !t->flush_pending)
				w |= WEFT_IO_WRITE;
		}
		if (t->flush_pending)
			w |= t->flush_want;
	}
	return w;
}

/* Watch the inner stream for what the session needs now.  READ, once
 * armed, stays armed while the session is healthy (a request/response
 * protocol re-reads right after each answer: dropping and re-adding the
 * interest would cost two syscalls per message); it is dropped when an
 * event comes that nobody wanted (keep_read false). */
static void watch_inner(struct tls_impl *t, bool keep_read)
{
	unsigned w = needed_events(t);
	if (keep_read && t->err == 0 && !t->eof)
		w |= t->armed & WEFT_IO_READ;
	if (weft__stream_raw_watch(t->inner, w) == 0)
		t->armed = w;
}

static void update_watch(struct tls_impl *t)
{
	watch_inner(t, true);
}

/* Before data moves: the session's sticky error, or the handshake run on
 * (0 once it is done, -EAGAIN while it waits for the transport). */
static int tls_ready(struct tls_impl *t)
{
	if (t->err != 0)
		return t->err;
	if (t->hs != HS_DONE) {
		int r = hs_ensure(t);
		if (r < 0)
			return r;
		if (t->hs != HS_DONE)
			return -EAGAIN;
	}
	return 0;
}

/* ---- the stream ops --------------------------------------------------------------- */

static ssize_t tls_readv(weft_stream *s, const struct iovec *iov, int count)
{
	struct tls_impl *t = weft_stream_impl(s);
	int hr = tls_ready(t);
	if (hr < 0)
		return hr;
	if (t->eof)
		return 0;
	size_t total = 0;
	int retries = 0;
	for (int i = 0; i < count; i++) {
		size_t off = 0;
		while (off < iov[i].iov_len) {
			ssize_t g = gnutls_record_recv(t->sess, (unsigned char *)iov[i].iov_base + off, iov[i].iov_len - off);
			if (g > 0) {
				off += (size_t)g;
				total += (size_t)g;
				t->rd_want = WEFT_IO_READ;
				if (t->inner_drained && t->rb_len == 0 && gnutls_record_check_pending(t->sess) == 0)
					return (ssize_t)total; /* nothing more is there */
				continue;
			}
			if (g == 0) {
				t->eof = true;
				return (ssize_t)total;
			}
			if ((g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED) && buffered(t) && ++retries < HANDSHAKE_STEPS)
				continue; /* a post-handshake message (ticket, key update) consumed: more is here */
			if (g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED) {
				t->rd_want = direction(t);
				if (buffered(t)) {
					t->wake_read = true; /* never wait for the fd with records in hand */
					kick(t);
				}
				return total > 0 ? (ssize_t)total : g == GNUTLS_E_AGAIN ? -EAGAIN : -EINTR;
			}
			if (!gnutls_error_is_fatal((int)g))
				continue; /* a warning alert; a renegotiation request we ignore */
			int err = fail(t, (int)g);
			return total > 0 ? (ssize_t)total : err;
		}
	}
	return (ssize_t)total;
}

static ssize_t tls_writev(weft_stream *s, const struct iovec *iov, int count)
{
	struct tls_impl *t = weft_stream_impl(s);
	if (t->err == 0 && t->bye_sent)
		return -EPIPE;
	int hr = tls_ready(t);
	if (hr < 0)
		return hr;
	if (t->flush_pending && t->flush_want == WEFT_IO_WRITE && t->push_blocked)
		return -EAGAIN; /* it just failed: wait for readiness, not another syscall */
	if (t->flush_pending && !flush_step(t))
		return t->err != 0 ? t->err : -EAGAIN;
	const void *data;
	size_t len;
	if (count == 1 || iov[0].iov_len >= t->maxrec) {
		data = iov[0].iov_base;
		len = iov[0].iov_len < t->maxrec ? iov[0].iov_len : t->maxrec;
	} else {
		if (t->wb == NULL && (t->wb = malloc(t->maxrec)) == NULL)
			return -ENOMEM;
		len = 0;
		for (int i = 0; i < count && len < t->maxrec; i++) {
			size_t n = iov[i].iov_len < t->maxrec - len ? iov[i].iov_len : t->maxrec - len;
			memcpy(t->wb + len, iov[i].iov_base, n);
			len += n;
		}
		data = t->wb;
	}
	if (len == 0)
		return 0;
	ssize_t g = gnutls_record_send(t->sess, data, len);
	if (g >= 0)
		return g;
	if (g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED) {
		/* The record is encrypted and queued inside GnuTLS: the bytes are
		 * taken; it is flushed with record_send(NULL, 0) before more. */
		t->flush_pending = true;
		t->flush_want = direction(t);
		update_watch(t);
		return (ssize_t)len;
	}
	return fail(t, (int)g);
}

static int tls_shutdown(weft_stream *s)
{
	struct tls_impl *t = weft_stream_impl(s);
	int hr = tls_ready(t);
	if (hr < 0)
		return hr;
	if (t->flush_pending && !flush_step(t))
		return t->err != 0 ? t->err : -EAGAIN;
	if (!t->bye_sent) {
		int g = gnutls_bye(t->sess, GNUTLS_SHUT_WR);
		if (g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED)
			return -EAGAIN;
		if (g < 0)
			return fail(t, g);
		t->bye_sent = true;
	}
	int r = weft__stream_raw_shutdown(t->inner);
	return r == -EOPNOTSUPP || r == -ENOTSOCK || r == -ENOTCONN ? 0 : r;
}

static size_t tls_pending(weft_stream *s)
{
	struct tls_impl *t = weft_stream_impl(s);
	if (t->hs != HS_DONE || t->err != 0 || t->eof)
		return 0;
	return gnutls_record_check_pending(t->sess) + t->rb_len + weft__stream_raw_pending(t->inner);
}

static int tls_watch(weft_stream *s, unsigned events)
{
	struct tls_impl *t = weft_stream_impl(s);
	t->core_want = events;
	if (!t->closed)
		update_watch(t);
	return 0;
}

static int tls_fd(weft_stream *s)
{
	struct tls_impl *t = weft_stream_impl(s);
	return weft_stream_fd(t->inner);
}

static void tls_close(weft_stream *s)
{
	struct tls_impl *t = weft_stream_impl(s);
	t->closed = true;
	t->s = NULL;
	if (t->busy == 0)
		tls_finish(t);
}

static const weft_stream_ops tls_ops = {
	.name = tls_name,
	.readv = tls_readv,
	.writev = tls_writev,
	.shutdown = tls_shutdown,
	.close = tls_close,
	.pending = tls_pending,
	.watch = tls_watch,
	.fd = tls_fd,
};

/* After the stream was closed: send the record GnuTLS holds and
 * close_notify.  True when nothing is left to do (sent, or it can never be
 * sent), false while the transport is full. */
static bool goodbye_step(struct tls_impl *t)
{
	if (t->hs != HS_DONE || t->err != 0 || t->bye_sent)
		return true;
	if (t->flush_pending) {
		if (t->push_blocked)
			return false;
		if (!flush_step(t))
			return t->err != 0;
	}
	int g = gnutls_bye(t->sess, GNUTLS_SHUT_WR);
	if (g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED)
		return false;
	t->bye_sent = true; /* or it failed: either way, done */
	return true;
}

static void linger_timeout(weft_timer *timer, void *data)
{
	(void)timer;
	tls_release(data); /* the bound: what is left is dropped */
}

static void linger_step(struct tls_impl *t, unsigned revents)
{
	if (revents & (WEFT_IO_WRITE | WEFT_IO_ERR | WEFT_IO_HUP))
		t->push_blocked = false;
	if (goodbye_step(t))
		tls_release(t);
}

/* The stream is closed (and off the stack): end the session.  If the
 * transport is full, linger — the inner stream stays open, watched for
 * WRITE — until what was accepted and close_notify are out, or the close
 * timeout passes. */
static void tls_finish(struct tls_impl *t)
{
	/* Waiting handshakes: ECANCELED (posted); their cleanup detaches them. */
	while (!weft__list_empty(&t->hs_waiters)) {
		struct hs_state *st = weft__container_of(t->hs_waiters.next, struct hs_state, link);
		weft_req *req = st->req;
		weft__list_remove(&st->link);
		st->t = NULL;
		weft_req_cancel(req);
	}
	weft_defer_cancel(t->kick);
	if (!goodbye_step(t) && t->cfg->close_timeout_ms > 0 &&
	    weft_timer_new(t->loop, linger_timeout, t, &t->linger) == 0 &&
	    weft_timer_start(t->linger, t->cfg->close_timeout_ms, 0) == 0 &&
	    weft__stream_raw_watch(t->inner, WEFT_IO_WRITE) == 0) {
		t->lingering = true;
		return;
	}
	tls_release(t);
}

static void tls_release(struct tls_impl *t)
{
	weft_timer_free(t->linger);
	weft_defer_free(t->kick);
	if (t->sess != NULL) {
		if (t->flush_pending)
			(void)gnutls_record_discard_queued(t->sess);
		gnutls_deinit(t->sess);
	}
	weft_stream_close(t->inner, NULL, NULL);
	weft_tls_config_unref(t->cfg);
	free(t->server_name);
	free(t->err_text);
	free(t->rb);
	free(t->wb);
	free(t);
}

/* ---- creation ------------------------------------------------------------------ */

static int tls_new(weft_tls_config *cfg, weft_stream *inner, bool server, const char *server_name,
		weft_stream **ret_stream)
{
	if (inner == NULL)
		return -EINVAL;
	int r = -EINVAL;
	struct tls_impl *t = NULL;
	if (cfg == NULL || ret_stream == NULL || cfg->role != (server ? WEFT_TLS_SERVER : WEFT_TLS_CLIENT))
		goto fail;
	if (server && cfg->ncerts == 0)
		goto fail;
	if (!server && server_name == NULL && cfg->verify == WEFT_TLS_VERIFY_FULL)
		goto fail;
	r = -ENOMEM;
	t = calloc(1, sizeof(*t));
	if (t == NULL)
		goto fail;
	t->loop = weft_stream_loop(inner);
	t->server = server;
	t->rd_want = WEFT_IO_READ;
	t->flush_want = WEFT_IO_WRITE;
	weft__list_init(&t->hs_waiters);
	t->rb = malloc(READ_AHEAD); /* NULL: read without read-ahead */
	t->rb_cap = t->rb != NULL ? READ_AHEAD : 0;
	if (server_name != NULL && (t->server_name = strdup(server_name)) == NULL)
		goto fail;
	int g = gnutls_init(&t->sess, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NONBLOCK);
	if (g < 0) {
		t->sess = NULL;
		r = weft__tls_errno(g);
		goto fail;
	}
	/* GnuTLS keeps the host name pointer for the session's life: our copy. */
	if ((r = weft__tls_session_setup(cfg, t->sess, t->server_name)) < 0)
		goto fail;
	gnutls_transport_set_ptr(t->sess, t);
	gnutls_transport_set_pull_function(t->sess, tls_pull);
	gnutls_transport_set_pull_timeout_function(t->sess, tls_pull_timeout);
	gnutls_transport_set_vec_push_function(t->sess, tls_vec_push);
	if ((r = weft_defer_new(t->loop, kick_cb, t, &t->kick)) < 0)
		goto fail;
	if ((r = weft__stream_take(inner, inner_hook, t)) < 0)
		goto fail;
	if ((r = weft_stream_new(t->loop, &tls_ops, t, &t->s)) < 0)
		goto fail;
	t->inner = inner;
	t->cfg = weft_tls_config_ref(cfg);
	*ret_stream = t->s;
	return 0;
fail:
	if (t != NULL) {
		weft_defer_free(t->kick);
		if (t->sess != NULL)
			gnutls_deinit(t->sess);
		free(t->server_name);
		free(t->rb);
		free(t);
	}
	weft_stream_close(inner, NULL, NULL);
	return r;
}

int weft_tls_client_new(weft_tls_config *cfg, weft_stream *inner, const char *server_name, weft_stream **ret_stream)
{
	return tls_new(cfg, inner, false, server_name, ret_stream);
}

int weft_tls_server_new(weft_tls_config *cfg, weft_stream *inner, weft_stream **ret_stream)
{
	return tls_new(cfg, inner, true, NULL, ret_stream);
}

/* ---- session information ------------------------------------------------------- */

int weft_tls_set_session_data(weft_stream *s, const void *data, size_t len)
{
	struct tls_impl *t = tls_of(s);
	if (t == NULL || t->server || t->hs != HS_NONE || data == NULL || len == 0)
		return -EINVAL;
	int g = gnutls_session_set_data(t->sess, data, len);
	if (g < 0)
		return g == GNUTLS_E_MEMORY_ERROR ? -ENOMEM : -EINVAL;
	return 0;
}

int weft_tls_session_data(weft_stream *s, void **ret_data, size_t *ret_len)
{
	struct tls_impl *t = tls_of(s);
	if (t == NULL || t->server || ret_data == NULL || ret_len == NULL)
		return -EINVAL;
	if (t->hs != HS_DONE || t->err != 0)
		return -ENOTCONN;
	/* TLS 1.3: only once the ticket is in (asking earlier would wait). */
	if (gnutls_protocol_get_version(t->sess) == GNUTLS_TLS1_3 &&
	    !(gnutls_session_get_flags(t->sess) & GNUTLS_SFLAGS_SESSION_TICKET))
		return -EAGAIN;
	gnutls_datum_t d = {NULL, 0};
	int g = gnutls_session_get_data2(t->sess, &d);
	if (g < 0)
		return weft__tls_errno(g);
	void *copy = malloc(d.size ? d.size : 1);
	if (copy == NULL) {
		gnutls_free(d.data);
		return -ENOMEM;
	}
	memcpy(copy, d.data, d.size);
	*ret_len = d.size;
	*ret_data = copy;
	gnutls_free(d.data);
	return 0;
}

bool weft_tls_resumed(const weft_stream *s)
{
	const struct tls_impl *t = tls_of(s);
	return t != NULL && t->hs == HS_DONE && gnutls_session_is_resumed(t->sess) != 0;
}

int weft_tls_alpn(const weft_stream *s, const char **ret_proto, size_t *ret_len)
{
	const struct tls_impl *t = tls_of(s);
	if (t == NULL || ret_proto == NULL || ret_len == NULL)
		return -EINVAL;
	gnutls_datum_t d;
	if (t->hs != HS_DONE || gnutls_alpn_get_selected_protocol(t->sess, &d) < 0)
		return -ENOENT;
	*ret_proto = (const char *)d.data;
	*ret_len = d.size;
	return 0;
}

int weft_tls_server_name(const weft_stream *s, char *buf, size_t size)
{
	const struct tls_impl *t = tls_of(s);
	if (t == NULL || buf == NULL || !t->server)
		return -EINVAL;
	char name[256];
	size_t len = sizeof(name);
	unsigned type = 0;
	int g = gnutls_server_name_get(t->sess, name, &len, &type, 0);
	if (g < 0 || type != GNUTLS_NAME_DNS)
		return g == GNUTLS_E_SHORT_MEMORY_BUFFER ? -ENOSPC : -ENOENT;
	if (len >= size)
		return -ENOSPC;
	memcpy(buf, name, len);
	buf[len] = '\0';
	return (int)len;
}

int weft_tls_peer_cert(const weft_stream *s, const void **ret_der, size_t *ret_len)
{
	const struct tls_impl *t = tls_of(s);
	if (t == NULL || ret_der == NULL || ret_len == NULL)
		return -EINVAL;
	unsigned n = 0;
	const gnutls_datum_t *certs = gnutls_certificate_get_peers(t->sess, &n);
	if (certs == NULL || n == 0)
		return -ENOENT;
	*ret_der = certs[0].data;
	*ret_len = certs[0].size;
	return 0;
}

int weft_tls_peer_dn(const weft_stream *s, char **ret_dn)
{
	const void *der;
	size_t len;
	if (ret_dn == NULL)
		return -EINVAL;
	int r = weft_tls_peer_cert(s, &der, &len);
	if (r < 0)
		return r;
	gnutls_x509_crt_t crt;
	if (gnutls_x509_crt_init(&crt) < 0)
		return -ENOMEM;
	gnutls_datum_t d = {(unsigned char *)der, (unsigned)len};
	gnutls_datum_t dn = {NULL, 0};
	r = -EBADMSG;
	if (gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_DER) == 0 && gnutls_x509_crt_get_dn3(crt, &dn, 0) == 0) {
		char *copy = malloc(dn.size + 1);
		r = -ENOMEM;
		if (copy != NULL) {
			memcpy(copy, dn.data, dn.size);
			copy[dn.size] = '\0';
			*ret_dn = copy;
			r = 0;
		}
		gnutls_free(dn.data);
	}
	gnutls_x509_crt_deinit(crt);
	return r;
}

const char *weft_tls_version(const weft_stream *s)
{
	const struct tls_impl *t = tls_of(s);
	if (t == NULL || t->hs != HS_DONE)
		return NULL;
	return gnutls_protocol_get_name(gnutls_protocol_get_version(t->sess));
}

char *weft_tls_description(const weft_stream *s)
{
	const struct tls_impl *t = tls_of(s);
	if (t == NULL || t->hs != HS_DONE)
		return NULL;
	char *d = gnutls_session_get_desc(t->sess);
	char *copy = d ? strdup(d) : NULL;
	gnutls_free(d);
	return copy;
}

unsigned weft_tls_verify_status(const weft_stream *s)
{
	const struct tls_impl *t = tls_of(s);
	return t ? t->verify_status : 0;
}

int weft_tls_last_error(const weft_stream *s)
{
	const struct tls_impl *t = tls_of(s);
	return t ? t->gerr : 0;
}

const char *weft_tls_error_text(const weft_stream *s)
{
	const struct tls_impl *t = tls_of(s);
	return t && t->err_text ? t->err_text : "";
}

void *weft_tls_gnutls_session(const weft_stream *s)
{
	const struct tls_impl *t = tls_of(s);
	return t ? t->sess : NULL;
}
