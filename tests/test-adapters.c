/* The same scenarios on every loop weft runs on: its built-in epoll loop and
 * each outer-loop adapter that was built (libevent, libuv, GLib; the build
 * says which through HAVE_LIBEVENT / HAVE_LIBUV / HAVE_GLIB).
 *
 * A "driver" hides the loop kind: create the outer loop and a weft loop on
 * it, run one blocking iteration of the OUTER loop, destroy both.  Every
 * scenario is written once against a driver and run once per driver, with
 * real socketpairs, threads, signals and time:
 *   socketpair echo     1000 request/reply round trips between two watchers
 *   timers              one-shots fire in deadline order and never early; a
 *                       repeating timer fires a few times and stops itself
 *   deferred work       scheduled from outside any callback it runs on the
 *                       next outer iteration (the adapter acts on timeout
 *                       0); a chain of deferred calls cannot starve I/O
 *   async               a send from another thread wakes a blocked loop
 *   interest changes    made inside callbacks reach the outer loop at once
 *   half-closed peer    a WRITE-only watcher is not woken by the peer's
 *                       shutdown(SHUT_WR) while its socket is not writable
 *   requests            timeout → ETIMEDOUT; completion inside _send is
 *                       posted to a later iteration without any delay
 *   signal              a signalfd through the adapter
 *   cleanup             every kind of handle, freed; loop refuses with
 *                       -EBUSY before; no fd left over (helper) or leaked
 * and, for libuv, uv_run(UV_RUN_DEFAULT) tracks weft's liveness.
 *
 * Liveness of a test never depends on the scenario's own events: run_until
 * arms a weft timer as a watchdog so that every blocking iteration wakes up.
 * Counting iterations tells a blocked outer loop from a spinning one (an fd
 * the adapter still watches after weft lost interest makes it spin). */
#include "helper.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <weft/adapters.h>
#include <weft/loop.h>
#include <weft/req.h>

#ifdef HAVE_LIBEVENT
#include <event2/event.h>
#endif
#ifdef HAVE_LIBUV
#include <uv.h>
#endif
#ifdef HAVE_GLIB
#include <glib.h>
#endif

#define SLACK_MS 250     /* upper tolerance for anything timed */
#define WATCHDOG_MS 3000 /* a scenario step that takes this long has failed */
#define MAX_IDLE_ITERS 10 /* outer iterations allowed while nothing happens */

static void t_check_le(const char *file, int line, const char *expr, long long a, long long b)
{
	if (a <= b)
		return;
	char buf[256];
	snprintf(buf, sizeof buf, "%s (%lld > %lld)", expr, a, b);
	t_fail(file, line, buf);
}
#define CHECK_LE(a, b) \
	t_check_le(__FILE__, __LINE__, #a " <= " #b, (long long)(a), (long long)(b))
#define CHECK_GE(a, b) \
	t_check_le(__FILE__, __LINE__, #b " <= " #a, (long long)(b), (long long)(a))

/* ---- drivers ------------------------------------------------------------- */

typedef struct drv drv;

struct driver {
	const char *name;
	bool (*create)(drv *d);        /* outer loop + weft loop on it */
	void (*iterate)(drv *d);       /* one blocking iteration of the outer loop */
	void (*destroy_outer)(drv *d); /* after weft_loop_free succeeded */
};

struct drv {
	const struct driver *ops;
	weft_loop *loop;
	void *outer;     /* event_base, uv_loop_t or GMainContext */
	void *heartbeat; /* the outer loop's own timer, see HEARTBEAT_MS */
};

/* Each outer loop also gets a timer of its own that does nothing but end a
 * blocking iteration now and then (unreferenced for libuv), so a test whose
 * adapter loses weft's timers fails instead of hanging. */
#define HEARTBEAT_MS 1000

/* The driver the current test runs on (t_run takes no argument). */
static const struct driver *g_drv;

static bool drv_create(drv *d)
{
	memset(d, 0, sizeof(*d));
	d->ops = g_drv;
	return g_drv->create(d);
}

static void drv_iterate(drv *d)
{
	d->ops->iterate(d);
}

static void drv_destroy(drv *d)
{
	int r = weft_loop_free(d->loop);
	CHECK_EQ(r, 0);
	if (r != 0)
		return; /* weft still uses the outer loop: leak both rather than crash */
	d->ops->destroy_outer(d);
}

/* built-in epoll loop */
static bool builtin_create(drv *d)
{
	return weft_loop_new(&d->loop) == 0;
}

static void builtin_iterate(drv *d)
{
	int r = weft_loop_run(d->loop, WEFT_RUN_ONCE);
	CHECK(r >= 0);
}

static void builtin_destroy(drv *d)
{
	(void)d;
}

#ifdef HAVE_LIBEVENT
static void levent_heartbeat_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

static bool levent_create(drv *d)
{
	struct event_base *base = event_base_new();
	if (base == NULL)
		return false;
	struct event *hb = event_new(base, -1, EV_PERSIST, levent_heartbeat_cb, NULL);
	struct timeval tv = {HEARTBEAT_MS / 1000, (HEARTBEAT_MS % 1000) * 1000};
	if (hb == NULL || event_add(hb, &tv) < 0 || weft_loop_new_libevent(base, &d->loop) < 0) {
		if (hb != NULL)
			event_free(hb);
		event_base_free(base);
		return false;
	}
	d->outer = base;
	d->heartbeat = hb;
	return true;
}

static void levent_iterate(drv *d)
{
	/* 1 would mean "no events at all": weft's wake-up fd is always there. */
	int r = event_base_loop(d->outer, EVLOOP_ONCE);
	CHECK_EQ(r, 0);
}

static void levent_destroy(drv *d)
{
	event_free(d->heartbeat);
	event_base_free(d->outer);
}
#endif

#ifdef HAVE_LIBUV
static void luv_heartbeat_cb(uv_timer_t *t)
{
	(void)t;
}

static bool luv_create(drv *d)
{
	uv_loop_t *uv = malloc(sizeof(*uv));
	uv_timer_t *hb = malloc(sizeof(*hb));
	if (uv == NULL || hb == NULL || uv_loop_init(uv) < 0) {
		free(uv);
		free(hb);
		return false;
	}
	uv_timer_init(uv, hb);
	uv_timer_start(hb, luv_heartbeat_cb, HEARTBEAT_MS, HEARTBEAT_MS);
	uv_unref((uv_handle_t *)hb);
	if (weft_loop_new_libuv(uv, &d->loop) < 0) {
		uv_close((uv_handle_t *)hb, NULL);
		uv_run(uv, UV_RUN_NOWAIT);
		uv_loop_close(uv);
		free(uv);
		free(hb);
		return false;
	}
	d->outer = uv;
	d->heartbeat = hb;
	return true;
}

static void luv_iterate(drv *d)
{
	uv_run(d->outer, UV_RUN_ONCE);
}

static void luv_destroy(drv *d)
{
	uv_loop_t *uv = d->outer;
	uv_close(d->heartbeat, NULL);
	uv_run(uv, UV_RUN_NOWAIT); /* release the handles weft_loop_free closed */
	int r = uv_loop_close(uv);
	CHECK_EQ(r, 0);
	if (r == 0) {
		free(uv);
		free(d->heartbeat);
	}
}
#endif

#ifdef HAVE_GLIB
static gboolean glib_heartbeat_cb(gpointer data)
{
	(void)data;
	return G_SOURCE_CONTINUE;
}

static bool glib_create(drv *d)
{
	GMainContext *ctx = g_main_context_new();
	GSource *hb = g_timeout_source_new(HEARTBEAT_MS);
	g_source_set_callback(hb, glib_heartbeat_cb, NULL, NULL);
	g_source_attach(hb, ctx);
	if (weft_loop_new_glib(ctx, &d->loop) < 0) {
		g_source_destroy(hb);
		g_source_unref(hb);
		g_main_context_unref(ctx);
		return false;
	}
	d->outer = ctx;
	d->heartbeat = hb;
	return true;
}

static void glib_iterate(drv *d)
{
	g_main_context_iteration(d->outer, TRUE);
}

static void glib_destroy(drv *d)
{
	g_source_destroy(d->heartbeat);
	g_source_unref(d->heartbeat);
	g_main_context_unref(d->outer);
}
#endif

static const struct driver g_drivers[] = {
	{"builtin", builtin_create, builtin_iterate, builtin_destroy},
#ifdef HAVE_LIBEVENT
	{"libevent", levent_create, levent_iterate, levent_destroy},
#endif
#ifdef HAVE_LIBUV
	{"libuv", luv_create, luv_iterate, luv_destroy},
#endif
#ifdef HAVE_GLIB
	{"glib", glib_create, glib_iterate, glib_destroy},
#endif
};

/* ---- running ------------------------------------------------------------- */

static void set_flag_cb(weft_timer *t, void *data)
{
	(void)t;
	*(bool *)data = true;
}

/* Iterate the outer loop until *flag is set or timeout_ms passed (a weft
 * timer wakes the last blocking iteration).  *iters: iterations run. */
static bool run_until(drv *d, const bool *flag, uint64_t timeout_ms, unsigned *iters)
{
	bool expired = false;
	weft_timer *wd = NULL;
	unsigned n = 0;
	if (weft_timer_new(d->loop, set_flag_cb, &expired, &wd) < 0 ||
	    weft_timer_start(wd, timeout_ms, 0) < 0) {
		t_fail(__FILE__, __LINE__, "watchdog timer");
		weft_timer_free(wd);
		return false;
	}
	/* The wall clock too, in case weft's timers are what is broken. */
	uint64_t deadline = t_now_ms() + timeout_ms + HEARTBEAT_MS;
	while (!*flag && !expired) {
		if (t_now_ms() > deadline) {
			t_fail(__FILE__, __LINE__, "the watchdog timer did not fire");
			break;
		}
		drv_iterate(d);
		n++;
	}
	weft_timer_free(wd);
	if (iters)
		*iters = n;
	return *flag;
}

/* Iterate for ms milliseconds (until a weft timer fires); returns the
 * number of outer iterations, which stays small unless the loop spins. */
static unsigned run_for(drv *d, uint64_t ms)
{
	bool fired = false;
	weft_timer *t = NULL;
	unsigned n = 0;
	if (weft_timer_new(d->loop, set_flag_cb, &fired, &t) < 0 || weft_timer_start(t, ms, 0) < 0) {
		t_fail(__FILE__, __LINE__, "run_for timer");
		weft_timer_free(t);
		return 0;
	}
	CHECK(run_until(d, &fired, ms + WATCHDOG_MS, &n));
	weft_timer_free(t);
	return n;
}

/* Exactly one blocking outer iteration, with a watchdog so that it returns
 * even if the thing under test does not happen.  Time what happens inside
 * it from the callbacks, not from its return: uv_run(UV_RUN_ONCE) runs due
 * timers (which is how the libuv adapter runs weft's ready work) and then
 * still blocks in its poll until the next event, here the watchdog. */
#define ONCE_WATCHDOG_MS (2 * SLACK_MS)
static void iterate_once(drv *d)
{
	bool expired = false;
	weft_timer *wd = NULL;
	if (weft_timer_new(d->loop, set_flag_cb, &expired, &wd) < 0 ||
	    weft_timer_start(wd, ONCE_WATCHDOG_MS, 0) < 0) {
		t_fail(__FILE__, __LINE__, "watchdog timer");
		weft_timer_free(wd);
		return;
	}
	drv_iterate(d);
	weft_timer_free(wd);
}

static bool make_pair(int sv[2])
{
	return socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0;
}

static void close_pair(int sv[2])
{
	close(sv[0]);
	close(sv[1]);
}

static void drain(int fd)
{
	char buf[256];
	while (read(fd, buf, sizeof buf) > 0)
		;
}

/* ---- 1. socketpair echo -------------------------------------------------- */

#define ECHO_MSGS 1000
#define ECHO_LEN 12 /* "msg 0000042\n" */

struct echo {
	int srv_fd, cli_fd;
	weft_io *srv, *cli;
	char expect[32];
	char buf[ECHO_LEN];
	size_t have;
	int sent, replies, mismatches, bad_events, errors;
	bool done;
};

static void echo_srv_cb(weft_io *io, unsigned revents, void *data)
{
	struct echo *e = data;
	if (!(revents & WEFT_IO_READ)) {
		e->bad_events++;
		return;
	}
	char buf[256];
	ssize_t n = read(e->srv_fd, buf, sizeof buf);
	if (n < 0 && errno == EAGAIN) {
		e->bad_events++; /* level-triggered READ without data */
		return;
	}
	if (n <= 0) {
		e->errors++;
		weft_io_stop(io);
		return;
	}
	if (write(e->srv_fd, buf, (size_t)n) != n)
		e->errors++;
}

static void echo_fail(struct echo *e, weft_io *io)
{
	e->errors++;
	e->done = true;
	weft_io_stop(io);
}

static void echo_cli_cb(weft_io *io, unsigned revents, void *data)
{
	struct echo *e = data;
	unsigned want = weft_io_events(io);
	if ((revents & want) == 0)
		e->bad_events++;
	if (want == WEFT_IO_WRITE) {
		int len = snprintf(e->expect, sizeof e->expect, "msg %07d\n", e->sent);
		if (len != ECHO_LEN || write(e->cli_fd, e->expect, ECHO_LEN) != ECHO_LEN) {
			echo_fail(e, io);
			return;
		}
		e->sent++;
		e->have = 0;
		if (weft_io_modify(io, WEFT_IO_READ) < 0)
			echo_fail(e, io);
		return;
	}
	ssize_t n = read(e->cli_fd, e->buf + e->have, ECHO_LEN - e->have);
	if (n < 0 && errno == EAGAIN) {
		e->bad_events++;
		return;
	}
	if (n <= 0) {
		echo_fail(e, io);
		return;
	}
	e->have += (size_t)n;
	if (e->have < ECHO_LEN)
		return;
	if (memcmp(e->buf, e->expect, ECHO_LEN) != 0)
		e->mismatches++;
	e->replies++;
	if (e->replies == ECHO_MSGS) {
		e->done = true;
		weft_io_stop(io);
		return;
	}
	if (weft_io_modify(io, WEFT_IO_WRITE) < 0)
		echo_fail(e, io);
}

static void sc_echo(void)
{
	drv d;
	REQUIRE(drv_create(&d));
	int sv[2];
	REQUIRE(make_pair(sv));
	struct echo e = {.srv_fd = sv[0], .cli_fd = sv[1]};
	CHECK_EQ(weft_io_new(d.loop, sv[0], echo_srv_cb, &e, &e.srv), 0);
	CHECK_EQ(weft_io_new(d.loop, sv[1], echo_cli_cb, &e, &e.cli), 0);
	CHECK_EQ(weft_io_start(e.srv, WEFT_IO_READ), 0);
	CHECK_EQ(weft_io_start(e.cli, WEFT_IO_WRITE), 0);
	CHECK(run_until(&d, &e.done, 10000, NULL));
	CHECK_EQ(e.sent, ECHO_MSGS);
	CHECK_EQ(e.replies, ECHO_MSGS);
	CHECK_EQ(e.mismatches, 0);
	CHECK_EQ(e.bad_events, 0);
	CHECK_EQ(e.errors, 0);
	weft_io_free(e.srv);
	weft_io_free(e.cli);
	close_pair(sv);
	drv_destroy(&d);
}

/* ---- 2. timers ----------------------------------------------------------- */

static const uint64_t g_oneshot_ms[3] = {90, 30, 60};
#define REP_FIRST_MS 20
#define REP_EVERY_MS 25
#define REP_COUNT 5

struct tmr_state {
	uint64_t t0;
	int order[3];
	uint64_t at[3];
	int n;
	uint64_t rep_at[REP_COUNT];
	int rep;
	int still_active; /* a one-shot still active inside its own callback */
	bool done;
};

struct tmr_one {
	struct tmr_state *s;
	int idx;
};

static void tmr_update_done(struct tmr_state *s)
{
	s->done = s->n >= 3 && s->rep >= REP_COUNT;
}

static void tmr_one_cb(weft_timer *t, void *data)
{
	struct tmr_one *o = data;
	struct tmr_state *s = o->s;
	if (s->n < 3) {
		s->order[s->n] = o->idx;
		s->at[s->n] = t_now_ms();
	}
	s->n++;
	if (weft_timer_active(t))
		s->still_active++;
	tmr_update_done(s);
}

static void tmr_rep_cb(weft_timer *t, void *data)
{
	struct tmr_state *s = data;
	if (s->rep < REP_COUNT)
		s->rep_at[s->rep] = t_now_ms();
	s->rep++;
	if (s->rep == REP_COUNT)
		weft_timer_stop(t);
	tmr_update_done(s);
}

static void sc_timers(void)
{
	drv d;
	REQUIRE(drv_create(&d));
	struct tmr_state s = {0};
	struct tmr_one one[3];
	weft_timer *t[3] = {NULL, NULL, NULL}, *rep = NULL;
	s.t0 = t_now_ms();
	for (int i = 0; i < 3; i++) {
		one[i].s = &s;
		one[i].idx = i;
		CHECK_EQ(weft_timer_new(d.loop, tmr_one_cb, &one[i], &t[i]), 0);
		CHECK_EQ(weft_timer_start(t[i], g_oneshot_ms[i], 0), 0);
	}
	CHECK_EQ(weft_timer_new(d.loop, tmr_rep_cb, &s, &rep), 0);
	CHECK_EQ(weft_timer_start(rep, REP_FIRST_MS, REP_EVERY_MS), 0);
	int64_t rem = weft_timer_remaining(t[0]);
	CHECK(rem > 0 && rem <= 90);

	CHECK(run_until(&d, &s.done, WATCHDOG_MS, NULL));
	CHECK_EQ(s.n, 3);
	CHECK_EQ(s.order[0], 1);
	CHECK_EQ(s.order[1], 2);
	CHECK_EQ(s.order[2], 0);
	CHECK_EQ(s.still_active, 0);
	for (int k = 0; k < 3 && k < s.n; k++) {
		uint64_t ms = g_oneshot_ms[s.order[k]];
		/* never early — counted from the loop's cached time, which may be
		 * a millisecond older than t0 (as libuv's uv_now) */
		CHECK_GE(s.at[k] - s.t0 + 2, ms);
		CHECK_LE(s.at[k] - s.t0, ms + SLACK_MS);
		if (k > 0)
			CHECK_GE(s.at[k], s.at[k - 1]);
	}
	CHECK_EQ(s.rep, REP_COUNT);
	for (int k = 0; k < REP_COUNT && k < s.rep; k++)
		CHECK_GE(s.rep_at[k] - s.t0, REP_FIRST_MS + k * REP_EVERY_MS);
	CHECK(!weft_timer_active(rep));
	CHECK_EQ(weft_timer_remaining(rep), -1);

	/* Nothing fires any more, and the outer loop sleeps meanwhile. */
	unsigned n = run_for(&d, 3 * REP_EVERY_MS);
	CHECK_EQ(s.rep, REP_COUNT);
	CHECK_EQ(s.n, 3);
	CHECK_LE(n, MAX_IDLE_ITERS);

	for (int i = 0; i < 3; i++)
		weft_timer_free(t[i]);
	weft_timer_free(rep);
	drv_destroy(&d);
}

/* ---- 3. deferred work ---------------------------------------------------- */

static void count_call_cb(void *data)
{
	(*(int *)data)++;
}

static void count_defer_cb(weft_defer *df, void *data)
{
	(void)df;
	(*(int *)data)++;
}

struct stamp {
	int calls;
	uint64_t at;
};

static void stamp_call_cb(void *data)
{
	struct stamp *s = data;
	s->calls++;
	s->at = t_now_ms();
}

static void stamp_defer_cb(weft_defer *df, void *data)
{
	(void)df;
	stamp_call_cb(data);
}

struct chain {
	weft_defer *df;
	weft_io *io;
	int fd;
	int runs;
	int runs_at_io;
	int limit;
	bool io_seen;
};

static void chain_defer_cb(weft_defer *df, void *data)
{
	struct chain *c = data;
	c->runs++;
	if (!c->io_seen && c->runs < c->limit)
		weft_defer_schedule(df);
}

static void chain_io_cb(weft_io *io, unsigned revents, void *data)
{
	struct chain *c = data;
	(void)revents;
	drain(c->fd);
	c->io_seen = true;
	c->runs_at_io = c->runs;
	weft_io_stop(io);
}

struct soon_from_io {
	weft_loop *loop;
	int fd;
	int calls;
	int calls_in_cb;
	uint64_t scheduled_at, ran_at;
	bool io_seen, ran;
};

static void soon_io_call_cb(void *data)
{
	struct soon_from_io *s = data;
	s->calls++;
	s->ran = true;
	s->ran_at = t_now_ms();
}

static void soon_io_cb(weft_io *io, unsigned revents, void *data)
{
	struct soon_from_io *s = data;
	(void)revents;
	drain(s->fd);
	weft_io_stop(io);
	s->io_seen = true;
	s->scheduled_at = t_now_ms();
	CHECK_EQ(weft_loop_call_soon(s->loop, soon_io_call_cb, s), 0);
	s->calls_in_cb = s->calls;
}

static void sc_deferred(void)
{
	drv d;
	REQUIRE(drv_create(&d));

	/* call_soon from outside any callback: runs in the very next outer
	 * iteration, which must not wait (no fd is active). */
	struct stamp soon = {0};
	CHECK_EQ(weft_loop_call_soon(d.loop, stamp_call_cb, &soon), 0);
	CHECK_EQ(weft_loop_get_timeout(d.loop), 0);
	uint64_t t0 = t_now_ms();
	iterate_once(&d);
	CHECK_EQ(soon.calls, 1);
	CHECK_LE(soon.at - t0, SLACK_MS);

	/* The same with a weft_defer handle. */
	struct stamp ds = {0};
	weft_defer *df = NULL;
	CHECK_EQ(weft_defer_new(d.loop, stamp_defer_cb, &ds, &df), 0);
	weft_defer_schedule(df);
	CHECK(weft_defer_scheduled(df));
	t0 = t_now_ms();
	iterate_once(&d);
	CHECK_EQ(ds.calls, 1);
	CHECK(!weft_defer_scheduled(df));
	CHECK_LE(ds.at - t0, SLACK_MS);
	unsigned n = run_for(&d, 50);
	CHECK_EQ(ds.calls, 1);
	CHECK_EQ(soon.calls, 1);
	CHECK_LE(n, MAX_IDLE_ITERS);
	weft_defer_free(df);

	/* Scheduled from inside an io callback: the end of that dispatch tells
	 * the outer loop "timeout 0", so the call runs without waiting. */
	int sv[2];
	REQUIRE(make_pair(sv));
	struct soon_from_io s = {.loop = d.loop, .fd = sv[0]};
	weft_io *sio = NULL;
	CHECK_EQ(weft_io_new(d.loop, sv[0], soon_io_cb, &s, &sio), 0);
	CHECK_EQ(weft_io_start(sio, WEFT_IO_READ), 0);
	CHECK_EQ(write(sv[1], "x", 1), 1);
	CHECK(run_until(&d, &s.ran, WATCHDOG_MS, NULL));
	CHECK(s.io_seen);
	CHECK_EQ(s.calls_in_cb, 0);
	CHECK_EQ(s.calls, 1);
	CHECK_LE(s.ran_at - s.scheduled_at, SLACK_MS);
	weft_io_free(sio);

	/* A deferred call that reschedules itself runs once per iteration: a
	 * readable fd is served within the first iterations, not after the
	 * whole chain (deferred calls cannot starve I/O). */
	struct chain c = {.fd = sv[0], .limit = 5000};
	CHECK_EQ(weft_defer_new(d.loop, chain_defer_cb, &c, &c.df), 0);
	CHECK_EQ(weft_io_new(d.loop, sv[0], chain_io_cb, &c, &c.io), 0);
	CHECK_EQ(weft_io_start(c.io, WEFT_IO_READ), 0);
	CHECK_EQ(write(sv[1], "x", 1), 1);
	weft_defer_schedule(c.df);
	CHECK(run_until(&d, &c.io_seen, WATCHDOG_MS, NULL));
	CHECK_LE(c.runs_at_io, 3);
	CHECK_LE(c.runs, c.runs_at_io + 1);
	weft_defer_free(c.df);
	weft_io_free(c.io);
	close_pair(sv);

	drv_destroy(&d);
}

/* ---- 4. async from another thread ---------------------------------------- */

struct async_state {
	weft_async *a;
	int calls;
	bool got;
	uint64_t got_at;
	uint64_t sent_at;
	int send_rc;
	unsigned delay_ms;
};

static void async_cb(weft_async *a, void *data)
{
	struct async_state *s = data;
	(void)a;
	s->calls++;
	s->got = true;
	s->got_at = t_now_ms();
}

static void *async_thread(void *p)
{
	struct async_state *s = p;
	t_sleep_ms(s->delay_ms);
	s->sent_at = t_now_ms();
	s->send_rc = weft_async_send(s->a);
	weft_async_send(s->a);
	weft_async_send(s->a);
	return NULL;
}

static void sc_async(void)
{
	drv d;
	REQUIRE(drv_create(&d));
	struct async_state s = {.delay_ms = 100};
	CHECK_EQ(weft_async_new(d.loop, async_cb, &s, &s.a), 0);
	pthread_t th;
	uint64_t t0 = t_now_ms();
	REQUIRE(pthread_create(&th, NULL, async_thread, &s) == 0);
	unsigned iters = 0;
	CHECK(run_until(&d, &s.got, WATCHDOG_MS, &iters));
	pthread_join(th, NULL);
	CHECK_EQ(s.send_rc, 0);
	CHECK(s.calls >= 1 && s.calls <= 3);
	CHECK_GE(s.got_at, s.sent_at);
	CHECK_LE(s.got_at - s.sent_at, SLACK_MS);
	CHECK_GE(s.got_at - t0, 90);
	/* The loop was blocked in its wait, not spinning until the send. */
	CHECK_LE(iters, 3);
	weft_async_free(s.a);
	drv_destroy(&d);
}

/* ---- 5. interest changes inside callbacks -------------------------------- */

/* WRITE → READ from inside the WRITE callback. */
struct flip {
	int fd;
	int writes, reads, errors;
	bool wrote, read;
};

static void flip_cb(weft_io *io, unsigned revents, void *data)
{
	struct flip *f = data;
	if (revents & WEFT_IO_WRITE) {
		f->writes++;
		f->wrote = true;
		if (weft_io_modify(io, WEFT_IO_READ) < 0)
			f->errors++;
	}
	if (revents & WEFT_IO_READ) {
		char buf[16];
		if (read(f->fd, buf, sizeof buf) > 0) {
			f->reads++;
			f->read = true;
		}
	}
}

/* Stops (or frees) itself without reading the pending data. */
struct stopper {
	weft_io *io;
	int calls;
	bool called;
	bool free_self;
};

static void stopper_cb(weft_io *io, unsigned revents, void *data)
{
	struct stopper *s = data;
	(void)revents;
	s->calls++;
	s->called = true;
	if (s->free_self) {
		weft_io_free(io);
		s->io = NULL;
	} else {
		weft_io_stop(io);
	}
}

/* Starts a watcher on dst_fd (data already pending) from a callback. */
struct starter {
	weft_loop *loop;
	int src_fd, dst_fd;
	weft_io *dst;
	int start_rc;
	int dst_calls;
	bool dst_fired;
	uint64_t started_at, fired_at;
};

static void starter_dst_cb(weft_io *io, unsigned revents, void *data)
{
	struct starter *s = data;
	(void)revents;
	drain(s->dst_fd);
	s->dst_calls++;
	s->dst_fired = true;
	s->fired_at = t_now_ms();
	weft_io_stop(io);
}

static void starter_begin(struct starter *s)
{
	s->started_at = t_now_ms();
	s->start_rc = weft_io_new(s->loop, s->dst_fd, starter_dst_cb, s, &s->dst);
	if (s->start_rc == 0)
		s->start_rc = weft_io_start(s->dst, WEFT_IO_READ);
}

static void starter_src_cb(weft_io *io, unsigned revents, void *data)
{
	struct starter *s = data;
	(void)revents;
	drain(s->src_fd);
	weft_io_stop(io);
	starter_begin(s);
}

static void starter_timer_cb(weft_timer *t, void *data)
{
	(void)t;
	starter_begin(data);
}

/* Two watchers, both ready in the same iteration; whichever runs first
 * stops the other. */
struct mutual {
	weft_io *a, *b;
	int ca, cb;
};

static void mutual_a_cb(weft_io *io, unsigned revents, void *data)
{
	struct mutual *m = data;
	(void)revents;
	m->ca++;
	weft_io_stop(m->b);
	weft_io_stop(io);
}

static void mutual_b_cb(weft_io *io, unsigned revents, void *data)
{
	struct mutual *m = data;
	(void)revents;
	m->cb++;
	weft_io_stop(m->a);
	weft_io_stop(io);
}

/* Whichever of two ready watchers runs first closes the other's fd and
 * watches a fresh, idle socket (usually under the same fd number): the
 * event already collected for the old fd must not reach the new watcher. */
struct reuse {
	weft_loop *loop;
	int x[2], y[2], z[2];
	weft_io *wx, *wy, *wz;
	int first_calls;
	int stale_calls;
	bool reused_number;
	int errors;
};

static void reuse_stale_cb(weft_io *io, unsigned revents, void *data)
{
	struct reuse *r = data;
	char c;
	(void)revents;
	/* The fresh socket has no data: any READ callback is stale. */
	if (read(weft_io_fd(io), &c, 1) < 0 && errno == EAGAIN)
		r->stale_calls++;
}

static void reuse_replace(struct reuse *r, weft_io **victim, int victim_pair[2])
{
	int old = victim_pair[0];
	weft_io_free(*victim);
	*victim = NULL;
	close(victim_pair[0]);
	victim_pair[0] = -1;
	if (!make_pair(r->z)) {
		r->errors++;
		return;
	}
	r->reused_number = r->z[0] == old;
	if (weft_io_new(r->loop, r->z[0], reuse_stale_cb, r, &r->wz) < 0 ||
	    weft_io_start(r->wz, WEFT_IO_READ) < 0)
		r->errors++;
}

static void reuse_x_cb(weft_io *io, unsigned revents, void *data)
{
	struct reuse *r = data;
	(void)revents;
	r->first_calls++;
	drain(r->x[0]);
	weft_io_stop(io);
	if (r->wy != NULL)
		reuse_replace(r, &r->wy, r->y);
}

static void reuse_y_cb(weft_io *io, unsigned revents, void *data)
{
	struct reuse *r = data;
	(void)revents;
	r->first_calls++;
	drain(r->y[0]);
	weft_io_stop(io);
	if (r->wx != NULL)
		reuse_replace(r, &r->wx, r->x);
}

static void sc_interest(void)
{
	drv d;
	REQUIRE(drv_create(&d));
	unsigned n;

	/* a) WRITE → READ inside the WRITE callback: no further write
	 * callbacks, and the outer loop stops seeing the writable fd (it
	 * would spin otherwise); reading still works. */
	int p1[2];
	REQUIRE(make_pair(p1));
	struct flip f = {.fd = p1[0]};
	weft_io *fio = NULL;
	CHECK_EQ(weft_io_new(d.loop, p1[0], flip_cb, &f, &fio), 0);
	CHECK_EQ(weft_io_start(fio, WEFT_IO_WRITE), 0);
	CHECK(run_until(&d, &f.wrote, WATCHDOG_MS, NULL));
	n = run_for(&d, 100);
	CHECK_EQ(f.writes, 1);
	CHECK_EQ(f.errors, 0);
	CHECK_EQ(weft_io_events(fio), WEFT_IO_READ);
	CHECK_LE(n, MAX_IDLE_ITERS);
	CHECK_EQ(write(p1[1], "x", 1), 1);
	CHECK(run_until(&d, &f.read, WATCHDOG_MS, NULL));
	CHECK_EQ(f.reads, 1);
	CHECK_EQ(f.writes, 1);
	weft_io_free(fio);
	close_pair(p1);

	/* b) A watcher stops itself with data still unread: never called
	 * again, and the outer loop sleeps; started again, it fires again. */
	int p2[2];
	REQUIRE(make_pair(p2));
	CHECK_EQ(write(p2[1], "data", 4), 4);
	struct stopper st = {0};
	CHECK_EQ(weft_io_new(d.loop, p2[0], stopper_cb, &st, &st.io), 0);
	CHECK_EQ(weft_io_start(st.io, WEFT_IO_READ), 0);
	CHECK(run_until(&d, &st.called, WATCHDOG_MS, NULL));
	n = run_for(&d, 100);
	CHECK_EQ(st.calls, 1);
	CHECK_EQ(weft_io_events(st.io), 0);
	CHECK_LE(n, MAX_IDLE_ITERS);
	st.called = false;
	CHECK_EQ(weft_io_start(st.io, WEFT_IO_READ), 0);
	CHECK(run_until(&d, &st.called, WATCHDOG_MS, NULL));
	CHECK_EQ(st.calls, 2);
	/* ... and the same with a watcher that frees itself. */
	weft_io_free(st.io);
	struct stopper sf = {.free_self = true};
	CHECK_EQ(weft_io_new(d.loop, p2[0], stopper_cb, &sf, &sf.io), 0);
	CHECK_EQ(weft_io_start(sf.io, WEFT_IO_READ), 0);
	CHECK(run_until(&d, &sf.called, WATCHDOG_MS, NULL));
	n = run_for(&d, 100);
	CHECK_EQ(sf.calls, 1);
	CHECK(sf.io == NULL);
	CHECK_LE(n, MAX_IDLE_ITERS);
	close_pair(p2);

	/* c) A watcher started inside another watcher's callback fires (its
	 * fd is already readable), and so does one started inside a timer
	 * callback. */
	int p3[2], p4[2];
	REQUIRE(make_pair(p3));
	REQUIRE(make_pair(p4));
	struct starter s = {.loop = d.loop, .src_fd = p3[0], .dst_fd = p4[0]};
	weft_io *src = NULL;
	CHECK_EQ(weft_io_new(d.loop, p3[0], starter_src_cb, &s, &src), 0);
	CHECK_EQ(weft_io_start(src, WEFT_IO_READ), 0);
	CHECK_EQ(write(p4[1], "y", 1), 1);
	CHECK_EQ(write(p3[1], "x", 1), 1);
	CHECK(run_until(&d, &s.dst_fired, WATCHDOG_MS, NULL));
	CHECK_EQ(s.start_rc, 0);
	CHECK_EQ(s.dst_calls, 1);
	CHECK_LE(s.fired_at - s.started_at, SLACK_MS);
	weft_io_free(src);
	weft_io_free(s.dst);

	struct starter s2 = {.loop = d.loop, .dst_fd = p4[0]};
	weft_timer *tm = NULL;
	CHECK_EQ(weft_timer_new(d.loop, starter_timer_cb, &s2, &tm), 0);
	CHECK_EQ(weft_timer_start(tm, 10, 0), 0);
	CHECK_EQ(write(p4[1], "z", 1), 1);
	CHECK(run_until(&d, &s2.dst_fired, WATCHDOG_MS, NULL));
	CHECK_EQ(s2.start_rc, 0);
	CHECK_EQ(s2.dst_calls, 1);
	CHECK_LE(s2.fired_at - s2.started_at, SLACK_MS);
	weft_timer_free(tm);
	weft_io_free(s2.dst);

	/* d) Both ready at once, each stops the other: exactly one runs. */
	struct mutual m = {0};
	CHECK_EQ(weft_io_new(d.loop, p3[0], mutual_a_cb, &m, &m.a), 0);
	CHECK_EQ(weft_io_new(d.loop, p4[0], mutual_b_cb, &m, &m.b), 0);
	CHECK_EQ(write(p3[1], "a", 1), 1);
	CHECK_EQ(write(p4[1], "b", 1), 1);
	CHECK_EQ(weft_io_start(m.a, WEFT_IO_READ), 0);
	CHECK_EQ(weft_io_start(m.b, WEFT_IO_READ), 0);
	n = run_for(&d, 50);
	CHECK_EQ(m.ca + m.cb, 1);
	CHECK_LE(n, MAX_IDLE_ITERS);
	weft_io_free(m.a);
	weft_io_free(m.b);
	close_pair(p3);
	close_pair(p4);

	/* e) Closed and reused fd number inside a callback: the stale event
	 * of the old fd does not reach the new watcher. */
	struct reuse r = {.loop = d.loop, .z = {-1, -1}};
	REQUIRE(make_pair(r.x));
	REQUIRE(make_pair(r.y));
	CHECK_EQ(weft_io_new(d.loop, r.x[0], reuse_x_cb, &r, &r.wx), 0);
	CHECK_EQ(weft_io_new(d.loop, r.y[0], reuse_y_cb, &r, &r.wy), 0);
	CHECK_EQ(write(r.x[1], "x", 1), 1);
	CHECK_EQ(write(r.y[1], "y", 1), 1);
	CHECK_EQ(weft_io_start(r.wx, WEFT_IO_READ), 0);
	CHECK_EQ(weft_io_start(r.wy, WEFT_IO_READ), 0);
	n = run_for(&d, 50);
	CHECK_EQ(r.first_calls, 1);
	CHECK_EQ(r.stale_calls, 0);
	CHECK_EQ(r.errors, 0);
	CHECK_LE(n, MAX_IDLE_ITERS);
	if (!r.reused_number)
		printf("# fd number was not reused; stale-event check is weaker\n");
	weft_io_free(r.wx);
	weft_io_free(r.wy);
	weft_io_free(r.wz);
	for (int i = 0; i < 2; i++) {
		if (r.x[i] >= 0)
			close(r.x[i]);
		if (r.y[i] >= 0)
			close(r.y[i]);
		if (r.z[i] >= 0)
			close(r.z[i]);
	}

	drv_destroy(&d);
}

/* f) A WRITE-only watcher on a socket whose send buffer is full and whose
 * peer shut down its own write side: the socket is not writable and not
 * hung up (epoll reports nothing), so the watcher is not called and the
 * outer loop sleeps.  Half-close is the normal end of a request in many
 * protocols, while the reply may still be queued. */
struct halfclose {
	int calls;
	int eagain;
};

static void halfclose_cb(weft_io *io, unsigned revents, void *data)
{
	struct halfclose *h = data;
	(void)revents;
	h->calls++;
	char c = 'x';
	if (write(weft_io_fd(io), &c, 1) < 0 && errno == EAGAIN)
		h->eagain++;
}

static void sc_halfclose(void)
{
	drv d;
	REQUIRE(drv_create(&d));
	int sv[2];
	REQUIRE(make_pair(sv));
	char buf[4096];
	memset(buf, 'a', sizeof buf);
	while (write(sv[0], buf, sizeof buf) > 0)
		;
	CHECK_EQ(shutdown(sv[1], SHUT_WR), 0);
	struct halfclose h = {0};
	weft_io *io = NULL;
	CHECK_EQ(weft_io_new(d.loop, sv[0], halfclose_cb, &h, &io), 0);
	CHECK_EQ(weft_io_start(io, WEFT_IO_WRITE), 0);
	unsigned n = run_for(&d, 100);
	CHECK_EQ(h.calls, 0);
	CHECK_EQ(h.eagain, 0);
	CHECK_LE(n, MAX_IDLE_ITERS);
	/* Once the peer reads, the socket becomes writable and it is called. */
	weft_io_free(io);
	drain(sv[1]);
	struct stopper st = {0};
	CHECK_EQ(weft_io_new(d.loop, sv[0], stopper_cb, &st, &st.io), 0);
	CHECK_EQ(weft_io_start(st.io, WEFT_IO_WRITE), 0);
	CHECK(run_until(&d, &st.called, WATCHDOG_MS, NULL));
	CHECK_EQ(st.calls, 1);
	weft_io_free(st.io);
	close_pair(sv);
	drv_destroy(&d);
}

/* ---- 6. requests --------------------------------------------------------- */

/* A sleep operation written the documented way. */
struct sleep_state {
	weft_timer *timer;
	int *finished; /* counts FINISHED cleanups */
};

static void sleep_cleanup(weft_req *req, weft_req_stage stage)
{
	struct sleep_state *s = weft_req_state(req);
	weft_timer_free(s->timer);
	s->timer = NULL;
	if (stage == WEFT_REQ_STAGE_FINISHED && s->finished)
		(*s->finished)++;
}

static void sleep_fired(weft_timer *t, void *data)
{
	(void)t;
	weft_req_done(data);
}

static weft_req *sleep_send(weft_loop *loop, uint64_t ms, int *finished)
{
	weft_req *req = weft_req_new(loop, sizeof(struct sleep_state), "sleep");
	if (req == NULL)
		return NULL;
	struct sleep_state *s = weft_req_state(req);
	s->finished = finished;
	weft_req_set_cleanup(req, sleep_cleanup);
	int r = weft_timer_new(loop, sleep_fired, req, &s->timer);
	if (r == 0)
		r = weft_timer_start(s->timer, ms, 0);
	weft_req_error(req, r);
	return req;
}

static int sleep_recv(weft_req *req, int *perrno)
{
	return weft_req_simple_recv(req, perrno);
}

/* An operation that completes inside its own _send. */
static weft_req *instant_send(weft_loop *loop)
{
	weft_req *req = weft_req_new(loop, 0, "instant");
	if (req == NULL)
		return NULL;
	weft_req_done(req);
	return req;
}

struct req_obs {
	int calls;
	bool called;
	weft_req_status status;
	int rc, err;
	uint64_t at;
};

static void req_obs_cb(weft_req *req, void *data)
{
	struct req_obs *o = data;
	o->calls++;
	o->called = true;
	o->status = weft_req_get_status(req);
	o->err = 0;
	o->rc = sleep_recv(req, &o->err);
	o->at = t_now_ms();
	weft_req_free(req);
}

struct req_from_io {
	weft_loop *loop;
	int fd;
	struct req_obs *o;
	bool io_seen;
	bool called_in_send;
	uint64_t sent_at;
};

static void req_from_io_cb(weft_io *io, unsigned revents, void *data)
{
	struct req_from_io *x = data;
	(void)revents;
	drain(x->fd);
	weft_io_stop(io);
	x->io_seen = true;
	x->sent_at = t_now_ms();
	weft_req *req = instant_send(x->loop);
	if (req == NULL)
		return;
	weft_req_set_callback(req, req_obs_cb, x->o);
	x->called_in_send = x->o->called;
}

static void sc_requests(void)
{
	drv d;
	REQUIRE(drv_create(&d));

	/* a) A 1000 ms sleep with a 60 ms timeout: ETIMEDOUT, its cleanup
	 * freed the sleep timer, and nothing else happens afterwards. */
	int finished = 0;
	struct req_obs o = {0};
	uint64_t t0 = t_now_ms();
	weft_req *req = sleep_send(d.loop, 1000, &finished);
	REQUIRE(req != NULL);
	weft_req_set_callback(req, req_obs_cb, &o);
	CHECK_EQ(weft_req_set_timeout(req, 60), 0);
	CHECK(run_until(&d, &o.called, WATCHDOG_MS, NULL));
	CHECK_EQ(o.calls, 1);
	CHECK_EQ(o.status, WEFT_REQ_TIMED_OUT);
	CHECK_EQ(o.rc, -ETIMEDOUT);
	CHECK_EQ(o.err, ETIMEDOUT);
	CHECK_EQ(finished, 1);
	CHECK_GE(o.at - t0, 60);
	CHECK_LE(o.at - t0, 60 + SLACK_MS);
	unsigned n = run_for(&d, 50);
	CHECK_EQ(o.calls, 1);
	CHECK_LE(n, MAX_IDLE_ITERS);

	/* b) A sleep that completes normally, before its timeout. */
	finished = 0;
	struct req_obs ok = {0};
	t0 = t_now_ms();
	req = sleep_send(d.loop, 30, &finished);
	REQUIRE(req != NULL);
	weft_req_set_callback(req, req_obs_cb, &ok);
	CHECK_EQ(weft_req_set_timeout(req, 2000), 0);
	CHECK(run_until(&d, &ok.called, WATCHDOG_MS, NULL));
	CHECK_EQ(ok.status, WEFT_REQ_DONE);
	CHECK_EQ(ok.rc, 0);
	CHECK_EQ(finished, 1);
	CHECK_GE(ok.at - t0, 30);
	CHECK_LE(ok.at - t0, 30 + SLACK_MS);

	/* c) Completed inside _send, called from outside any callback: the
	 * callback is posted, and the next outer iteration runs it at once. */
	struct req_obs im = {0};
	req = instant_send(d.loop);
	REQUIRE(req != NULL);
	CHECK_EQ(weft_req_get_status(req), WEFT_REQ_DONE);
	weft_req_set_callback(req, req_obs_cb, &im);
	CHECK(!im.called);
	t0 = t_now_ms();
	iterate_once(&d);
	CHECK_EQ(im.calls, 1);
	CHECK_EQ(im.status, WEFT_REQ_DONE);
	CHECK_EQ(im.rc, 0);
	CHECK_LE(im.at - t0, SLACK_MS);

	/* d) The same from inside an io callback (the end of the dispatch
	 * must tell the outer loop that work is ready). */
	int sv[2];
	REQUIRE(make_pair(sv));
	struct req_obs io_o = {0};
	struct req_from_io x = {.loop = d.loop, .fd = sv[0], .o = &io_o};
	weft_io *io = NULL;
	CHECK_EQ(weft_io_new(d.loop, sv[0], req_from_io_cb, &x, &io), 0);
	CHECK_EQ(weft_io_start(io, WEFT_IO_READ), 0);
	CHECK_EQ(write(sv[1], "x", 1), 1);
	CHECK(run_until(&d, &io_o.called, WATCHDOG_MS, NULL));
	CHECK(x.io_seen);
	CHECK(!x.called_in_send);
	CHECK_EQ(io_o.calls, 1);
	CHECK_EQ(io_o.status, WEFT_REQ_DONE);
	CHECK_LE(io_o.at - x.sent_at, SLACK_MS);
	weft_io_free(io);
	close_pair(sv);

	drv_destroy(&d);
}

/* ---- 7. signal ----------------------------------------------------------- */

struct sig_obs {
	int calls;
	int signum;
	bool got;
};

static void sig_cb(weft_signal *sig, int signum, void *data)
{
	struct sig_obs *o = data;
	(void)sig;
	o->calls++;
	o->signum = signum;
	o->got = true;
}

static bool sig_blocked(int signum)
{
	sigset_t mask;
	sigemptyset(&mask);
	pthread_sigmask(SIG_BLOCK, NULL, &mask);
	return sigismember(&mask, signum) == 1;
}

static void sc_signal(void)
{
	drv d;
	REQUIRE(drv_create(&d));
	REQUIRE(!sig_blocked(SIGUSR1));
	struct sig_obs o = {0};
	weft_signal *sig = NULL;
	CHECK_EQ(weft_signal_new(d.loop, sig_cb, &o, &sig), 0);
	REQUIRE(weft_signal_start(sig, SIGUSR1) == 0);
	CHECK(sig_blocked(SIGUSR1));
	CHECK_EQ(raise(SIGUSR1), 0);
	unsigned iters = 0;
	CHECK(run_until(&d, &o.got, WATCHDOG_MS, &iters));
	CHECK_EQ(o.calls, 1);
	CHECK_EQ(o.signum, SIGUSR1);
	CHECK_LE(iters, 3);
	unsigned n = run_for(&d, 30);
	CHECK_EQ(o.calls, 1);
	CHECK_LE(n, MAX_IDLE_ITERS);
	weft_signal_free(sig);
	CHECK(!sig_blocked(SIGUSR1));
	drv_destroy(&d);
}

/* ---- 8. cleanup ---------------------------------------------------------- */

static void never_io_cb(weft_io *io, unsigned revents, void *data)
{
	(void)io;
	(void)revents;
	(*(int *)data)++;
}

static void never_timer_cb(weft_timer *t, void *data)
{
	(void)t;
	(*(int *)data)++;
}

static void never_async_cb(weft_async *a, void *data)
{
	(void)a;
	(*(int *)data)++;
}

static void never_sig_cb(weft_signal *s, int signum, void *data)
{
	(void)s;
	(void)signum;
	(*(int *)data)++;
}

static void never_req_cb(weft_req *req, void *data)
{
	(void)req;
	(*(int *)data)++;
}

static void sc_cleanup(void)
{
	/* Create and destroy loops repeatedly, each with a watched fd. */
	for (int i = 0; i < 10; i++) {
		drv d;
		REQUIRE(drv_create(&d));
		int sv[2];
		REQUIRE(make_pair(sv));
		int calls = 0;
		weft_io *io = NULL;
		CHECK_EQ(weft_io_new(d.loop, sv[0], never_io_cb, &calls, &io), 0);
		CHECK_EQ(weft_io_start(io, WEFT_IO_READ), 0);
		weft_io_free(io);
		close_pair(sv);
		drv_destroy(&d);
	}

	/* Every kind of handle alive at once: the loop refuses to go, keeps
	 * working, and goes once they are freed (a pending call_soon is freed
	 * by the loop). */
	drv d;
	REQUIRE(drv_create(&d));
	int sv[2];
	REQUIRE(make_pair(sv));
	int calls = 0, soon = 0, finished = 0;
	weft_io *io = NULL;
	weft_timer *tm = NULL;
	weft_defer *df = NULL;
	weft_async *as = NULL;
	weft_signal *sig = NULL;
	CHECK_EQ(weft_io_new(d.loop, sv[0], never_io_cb, &calls, &io), 0);
	CHECK_EQ(weft_io_start(io, WEFT_IO_READ), 0);
	CHECK_EQ(weft_timer_new(d.loop, never_timer_cb, &calls, &tm), 0);
	CHECK_EQ(weft_timer_start(tm, 60000, 1000), 0);
	CHECK_EQ(weft_defer_new(d.loop, count_defer_cb, &soon, &df), 0);
	CHECK_EQ(weft_async_new(d.loop, never_async_cb, &calls, &as), 0);
	CHECK_EQ(weft_signal_new(d.loop, never_sig_cb, &calls, &sig), 0);
	CHECK_EQ(weft_signal_start(sig, SIGUSR2), 0);
	weft_req *req = sleep_send(d.loop, 60000, &finished);
	REQUIRE(req != NULL);
	weft_req_set_callback(req, never_req_cb, &calls);
	CHECK_EQ(weft_req_set_timeout(req, 50000), 0);

	CHECK_EQ(weft_loop_free(d.loop), -EBUSY);
	CHECK(weft_loop_alive(d.loop));
	unsigned n = run_for(&d, 20);
	CHECK_LE(n, MAX_IDLE_ITERS);
	CHECK_EQ(calls, 0);

	weft_defer_schedule(df);
	CHECK_EQ(weft_loop_call_soon(d.loop, count_call_cb, &soon), 0);
	weft_io_free(io);
	weft_timer_free(tm);
	weft_defer_free(df);
	weft_async_free(as);
	weft_signal_free(sig);
	weft_req_free(req);
	CHECK_EQ(finished, 0);
	CHECK(!sig_blocked(SIGUSR2));
	close_pair(sv);
	drv_destroy(&d);
	CHECK_EQ(soon, 0);
	CHECK_EQ(calls, 0);
}

/* ---- 9. libuv: uv_run(UV_RUN_DEFAULT) follows weft's liveness ------------ */

#ifdef HAVE_LIBUV
/* An unreferenced libuv timer that stops a uv_run that would never end. */
struct uv_guard {
	uv_timer_t timer;
	bool fired;
};

static void uv_guard_cb(uv_timer_t *t)
{
	struct uv_guard *g = t->data;
	g->fired = true;
	uv_stop(t->loop);
}

static void uv_guard_start(uv_loop_t *uv, struct uv_guard *g)
{
	g->fired = false;
	uv_timer_init(uv, &g->timer);
	g->timer.data = g;
	uv_timer_start(&g->timer, uv_guard_cb, WATCHDOG_MS, 0);
	uv_unref((uv_handle_t *)&g->timer);
}

struct once_timer {
	bool fired;
	bool free_in_cb;
	uint64_t at;
};

static void once_timer_cb(weft_timer *t, void *data)
{
	struct once_timer *o = data;
	o->fired = true;
	o->at = t_now_ms();
	if (o->free_in_cb)
		weft_timer_free(t);
}

static void sc_uv_default_timers(void)
{
	drv d;
	REQUIRE(drv_create(&d));
	uv_loop_t *uv = d.outer;
	struct uv_guard g;
	uv_guard_start(uv, &g);

	/* One timer freed in its callback, a later one merely expired. */
	struct once_timer a = {.free_in_cb = true}, b = {0};
	weft_timer *ta = NULL, *tb = NULL;
	CHECK_EQ(weft_timer_new(d.loop, once_timer_cb, &a, &ta), 0);
	CHECK_EQ(weft_timer_new(d.loop, once_timer_cb, &b, &tb), 0);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_timer_start(ta, 40, 0), 0);
	CHECK_EQ(weft_timer_start(tb, 90, 0), 0);
	int r = uv_run(uv, UV_RUN_DEFAULT);
	uint64_t el = t_now_ms() - t0;
	CHECK(!g.fired);
	CHECK_EQ(r, 0);
	CHECK(a.fired);
	CHECK(b.fired);
	/* did not return while a weft timer was pending (timers count from the
	 * loop's cached time, which may be a millisecond older than t0) */
	CHECK_GE(el, 88);
	CHECK_LE(el, 90 + SLACK_MS);
	CHECK(!weft_loop_alive(d.loop));
	weft_timer_free(tb);
	if (!a.fired)
		weft_timer_free(ta);

	/* Nothing pending: returns at once. */
	t0 = t_now_ms();
	r = uv_run(uv, UV_RUN_DEFAULT);
	CHECK_EQ(r, 0);
	CHECK_LE(t_now_ms() - t0, SLACK_MS);

	uv_close((uv_handle_t *)&g.timer, NULL);
	drv_destroy(&d);
}

/* The only live weft handle is an io watcher started from outside any
 * callback; a libuv timer makes its fd readable later.  uv_run must wait
 * for it (weft is alive) and return after the callback stops it. */
struct uv_io_probe {
	int fd, peer;
	bool called;
	uint64_t at;
};

static void uv_probe_io_cb(weft_io *io, unsigned revents, void *data)
{
	struct uv_io_probe *p = data;
	(void)revents;
	drain(p->fd);
	p->called = true;
	p->at = t_now_ms();
	weft_io_stop(io);
}

static void uv_probe_writer_cb(uv_timer_t *t)
{
	struct uv_io_probe *p = t->data;
	if (write(p->peer, "x", 1) != 1)
		p->at = 0;
}

static void sc_uv_default_io(void)
{
	drv d;
	REQUIRE(drv_create(&d));
	uv_loop_t *uv = d.outer;
	struct uv_guard g;
	uv_guard_start(uv, &g);
	int sv[2];
	REQUIRE(make_pair(sv));
	struct uv_io_probe p = {.fd = sv[0], .peer = sv[1]};
	uv_timer_t writer;
	uv_timer_init(uv, &writer);
	writer.data = &p;
	uv_timer_start(&writer, uv_probe_writer_cb, 80, 0);
	uv_unref((uv_handle_t *)&writer);
	weft_io *io = NULL;
	CHECK_EQ(weft_io_new(d.loop, sv[0], uv_probe_io_cb, &p, &io), 0);
	CHECK_EQ(weft_io_start(io, WEFT_IO_READ), 0);
	CHECK(weft_loop_alive(d.loop));
	uint64_t t0 = t_now_ms();
	int r = uv_run(uv, UV_RUN_DEFAULT);
	uint64_t el = t_now_ms() - t0;
	CHECK(!g.fired);
	CHECK_EQ(r, 0);
	CHECK(p.called);
	CHECK_GE(el, 78); /* the uv timer counts from uv's cached time: up to a ms before t0 */
	CHECK_LE(el, 80 + SLACK_MS);
	weft_io_free(io);
	uv_close((uv_handle_t *)&writer, NULL);
	uv_close((uv_handle_t *)&g.timer, NULL);
	close_pair(sv);
	drv_destroy(&d);
}

/* The same with an async handle as the only live weft handle; its
 * callback unreferences it so that uv_run may return. */
static void uv_probe_async_cb(weft_async *a, void *data)
{
	struct async_state *s = data;
	s->calls++;
	s->got = true;
	s->got_at = t_now_ms();
	weft_async_set_ref(a, false);
}

static void sc_uv_default_async(void)
{
	drv d;
	REQUIRE(drv_create(&d));
	uv_loop_t *uv = d.outer;
	struct uv_guard g;
	uv_guard_start(uv, &g);
	struct async_state s = {.delay_ms = 80};
	CHECK_EQ(weft_async_new(d.loop, uv_probe_async_cb, &s, &s.a), 0);
	CHECK(weft_loop_alive(d.loop));
	pthread_t th;
	uint64_t t0 = t_now_ms();
	REQUIRE(pthread_create(&th, NULL, async_thread, &s) == 0);
	int r = uv_run(uv, UV_RUN_DEFAULT);
	uint64_t el = t_now_ms() - t0;
	pthread_join(th, NULL);
	CHECK(!g.fired);
	CHECK_EQ(r, 0);
	CHECK(s.got);
	CHECK_GE(el, 78); /* millisecond clocks round: allow for it */
	CHECK_LE(el, 80 + SLACK_MS);
	weft_async_free(s.a);
	uv_close((uv_handle_t *)&g.timer, NULL);
	drv_destroy(&d);
}
#endif

/* ---- main ---------------------------------------------------------------- */

static const struct {
	const char *name;
	void (*fn)(void);
} g_scenarios[] = {
	{"socketpair echo", sc_echo},
	{"timers", sc_timers},
	{"deferred work", sc_deferred},
	{"async from another thread", sc_async},
	{"interest changes inside callbacks", sc_interest},
	{"write watcher and a half-closed peer", sc_halfclose},
	{"requests", sc_requests},
	{"signal", sc_signal},
	{"cleanup", sc_cleanup},
};

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

int main(void)
{
	/* Libraries that keep process-wide fds after their first use (libuv's
	 * signal pipe) get that use here, before the fd counting. */
	for (size_t i = 0; i < N_ELEMS(g_drivers); i++) {
		g_drv = &g_drivers[i];
		drv d;
		if (drv_create(&d))
			drv_destroy(&d);
	}

	char name[128];
	for (size_t i = 0; i < N_ELEMS(g_drivers); i++) {
		g_drv = &g_drivers[i];
		for (size_t j = 0; j < N_ELEMS(g_scenarios); j++) {
			snprintf(name, sizeof name, "%s: %s", g_drv->name, g_scenarios[j].name);
			t_run(name, g_scenarios[j].fn);
		}
#ifdef HAVE_LIBUV
		if (strcmp(g_drv->name, "libuv") == 0) {
			t_run("libuv: uv_run DEFAULT returns once weft timers are done",
			      sc_uv_default_timers);
			t_run("libuv: uv_run DEFAULT waits for a weft io watcher started outside callbacks",
			      sc_uv_default_io);
			t_run("libuv: uv_run DEFAULT waits for a weft async handle",
			      sc_uv_default_async);
		}
#endif
	}
	return t_finish();
}
