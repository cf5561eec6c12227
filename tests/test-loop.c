/* Tests for weft's event loop: include/weft/loop.h and docs/loop.md.
 *
 * Only real things are used: pipes, socketpairs, eventfds, pthreads, signals
 * and the monotonic clock.  Timers are checked to fire no earlier than asked
 * and no later than a generous tolerance (late_ms), because the machine is
 * noisy and the tests also run under ASan and valgrind.  Every test frees all
 * its handles and its loop (weft_loop_free must return 0) and closes every fd
 * it opened; the helper flags fd leaks.  A watchdog (alarm) turns a hang into
 * a visible failure. */
#include "helper.h"

#include <weft/loop.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* How late a timer may fire (ms).  Raised under valgrind. */
static uint64_t late_ms = 250;

#define RW (WEFT_IO_READ | WEFT_IO_WRITE)

/* ---- small utilities --------------------------------------------------- */

static int mk_sp(int sv[2])
{
	return socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv);
}

static int mk_pipe(int p[2])
{
	return pipe2(p, O_NONBLOCK | O_CLOEXEC);
}

static void xclose(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void xwrite(int fd, const char *s)
{
	ssize_t n = write(fd, s, strlen(s));
	CHECK(n == (ssize_t)strlen(s));
}

/* Close both ends of a pipe or socketpair. */
static void xclose2(int fds[2])
{
	xclose(&fds[0]);
	xclose(&fds[1]);
}

static bool fd_open(int fd)
{
	return fcntl(fd, F_GETFD) != -1;
}

/* 1 if fd is readable within ms, 0 if not, -1 on error. */
static int poll_fd(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int r = poll(&p, 1, ms);
	return r > 0 && (p.revents & POLLIN) ? 1 : r < 0 ? -1 : 0;
}

/* Free the loop, checking that every handle was freed. */
#define FREE_LOOP(loop) CHECK_EQ(weft_loop_free(loop), 0)

/* Take a "no earlier than" reference point: real time first, then the loop's
 * cached time is refreshed, so any deadline weft computes from its clock is
 * at or after the returned value + timeout. */
static uint64_t mark(weft_loop *loop)
{
	uint64_t t = t_now_ms();
	weft_loop_update_time(loop);
	return t;
}

static uint32_t rng_state = 0x2545F491u;
static uint32_t rng(void)
{
	uint32_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return rng_state = x;
}

/* Stray delivery of a test signal (it should always be consumed through
 * weft's signalfd). */
static volatile sig_atomic_t stray_signals;
static void stray_handler(int signum)
{
	(void)signum;
	stray_signals++;
}

static bool sig_blocked(int signum)
{
	sigset_t cur;
	sigemptyset(&cur);
	pthread_sigmask(SIG_SETMASK, NULL, &cur);
	return sigismember(&cur, signum) == 1;
}

static bool sig_pending(int signum)
{
	sigset_t set;
	sigemptyset(&set);
	sigpending(&set);
	return sigismember(&set, signum) == 1;
}

static void set_sig_blocked(int signum, bool block)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, signum);
	pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}

/* ---- generic callbacks ------------------------------------------------- */

static void nop_io_cb(weft_io *io, unsigned revents, void *data)
{
	(void)io, (void)revents, (void)data;
}
static void nop_timer_cb(weft_timer *t, void *data)
{
	(void)t, (void)data;
}
static void nop_defer_cb(weft_defer *d, void *data)
{
	(void)d, (void)data;
}
static void nop_async_cb(weft_async *a, void *data)
{
	(void)a, (void)data;
}
static void nop_signal_cb(weft_signal *s, int signum, void *data)
{
	(void)s, (void)signum, (void)data;
}

static void count_timer_cb(weft_timer *t, void *data)
{
	(void)t;
	(*(int *)data)++;
}
static void count_defer_cb(weft_defer *d, void *data)
{
	(void)d;
	(*(int *)data)++;
}
static void count_call_cb(void *data)
{
	(*(int *)data)++;
}

/* A guard against hanging on an event that never comes: an unreferenced
 * repeating timer that ends weft_loop_run(ONCE) and stops DEFAULT. */
static void guard_cb(weft_timer *t, void *data)
{
	(void)t;
	printf("# guard timer fired: an expected event did not come\n");
	weft_loop_stop(data);
}

static weft_timer *guard_start(weft_loop *loop)
{
	weft_timer *g = NULL;
	if (weft_timer_new(loop, guard_cb, loop, &g) != 0)
		return NULL;
	weft_timer_start(g, 3000, 3000);
	weft_timer_set_ref(g, false);
	return g;
}

enum { ACT_NONE, ACT_READ, ACT_STOP, ACT_READ_STOP, ACT_FREE };

struct iorec {
	weft_io *io;
	int calls;
	unsigned last;
	unsigned all;
	int action;
	ssize_t nread;
};

static void iorec_cb(weft_io *io, unsigned revents, void *data)
{
	struct iorec *r = data;
	CHECK(io == r->io);
	r->calls++;
	r->last = revents;
	r->all |= revents;
	if (r->action == ACT_READ || r->action == ACT_READ_STOP) {
		char buf[256];
		r->nread = read(weft_io_fd(io), buf, sizeof buf);
	}
	if (r->action == ACT_STOP || r->action == ACT_READ_STOP)
		weft_io_stop(io);
	if (r->action == ACT_FREE) {
		weft_io_free(io);
		r->io = NULL;
	}
}

/* The common I/O test setup: a loop, a socketpair sv (sv[1] optionally holding
 * `pending`) and an iorec watcher with `action` on sv[0], started for `events`
 * unless 0.  io_fix_close frees all of it. */
struct io_fix {
	weft_loop *loop;
	int sv[2];
	struct iorec r;
};

static bool io_fix_open(struct io_fix *f, int action, const char *pending, unsigned events)
{
	*f = (struct io_fix){ .sv = { -1, -1 }, .r = { .action = action } };
	if (weft_loop_new(&f->loop) != 0)
		return false;
	if (mk_sp(f->sv) != 0 || weft_io_new(f->loop, f->sv[0], iorec_cb, &f->r, &f->r.io) != 0) {
		xclose2(f->sv);
		FREE_LOOP(f->loop);
		return false;
	}
	if (pending)
		xwrite(f->sv[1], pending);
	if (events)
		CHECK_EQ(weft_io_start(f->r.io, events), 0);
	return true;
}

static void io_fix_close(struct io_fix *f)
{
	weft_io_free(f->r.io);
	xclose2(f->sv);
	FREE_LOOP(f->loop);
}

/* ======================================================================== */
/* the loop                                                                  */
/* ======================================================================== */

static void test_loop_new_free(void)
{
	weft_loop *loop = NULL;
	REQUIRE(weft_loop_new(&loop) == 0);
	REQUIRE(loop != NULL);
	CHECK_EQ(weft_loop_free(NULL), 0);
	CHECK(!weft_loop_alive(loop));
	CHECK(weft_loop_get_fd(loop) >= 0);
	CHECK_EQ(weft_loop_get_timeout(loop), -1);

	/* the cached clock is CLOCK_MONOTONIC in ms and only moves on demand */
	weft_loop_update_time(loop);
	uint64_t now = weft_loop_now(loop), real = t_now_ms();
	CHECK(now + 2 >= real && now <= real + 2);
	t_sleep_ms(20);
	CHECK_EQ(weft_loop_now(loop), now);
	weft_loop_update_time(loop);
	CHECK(weft_loop_now(loop) >= now + 20);

	/* an empty loop returns 0 at once */
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 0); /* nothing to wait for */
	CHECK_EQ(weft_loop_dispatch(loop), 0);
	CHECK(t_now_ms() - t0 < 100);
	CHECK_EQ(weft_loop_run(loop, (weft_run_mode)42), -EINVAL);
	CHECK_EQ(weft_loop_run(loop, (weft_run_mode)-1), -EINVAL);
	FREE_LOOP(loop);

	/* several loops at once are independent */
	weft_loop *a = NULL, *b = NULL;
	REQUIRE(weft_loop_new(&a) == 0);
	REQUIRE(weft_loop_new(&b) == 0);
	CHECK(a != b);
	CHECK(weft_loop_get_fd(a) != weft_loop_get_fd(b));
	FREE_LOOP(b);
	FREE_LOOP(a);
}

static void test_loop_free_busy(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	int p[2];
	REQUIRE(mk_pipe(p) == 0);

	weft_timer *t = NULL;
	REQUIRE(weft_timer_new(loop, nop_timer_cb, NULL, &t) == 0);
	CHECK_EQ(weft_loop_free(loop), -EBUSY);
	/* the loop is intact: it still runs a timer */
	int fired = 0;
	weft_timer *t2 = NULL;
	REQUIRE(weft_timer_new(loop, count_timer_cb, &fired, &t2) == 0);
	CHECK_EQ(weft_timer_start(t2, 0, 0), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(fired, 1);
	weft_timer_free(t2);
	CHECK_EQ(weft_loop_free(loop), -EBUSY);
	weft_timer_free(t);

	weft_io *io = NULL;
	REQUIRE(weft_io_new(loop, p[0], nop_io_cb, NULL, &io) == 0);
	CHECK_EQ(weft_loop_free(loop), -EBUSY);
	CHECK_EQ(weft_io_start(io, WEFT_IO_READ), 0);
	CHECK_EQ(weft_loop_free(loop), -EBUSY);
	weft_io_free(io);

	weft_defer *d = NULL;
	REQUIRE(weft_defer_new(loop, nop_defer_cb, NULL, &d) == 0);
	CHECK_EQ(weft_loop_free(loop), -EBUSY);
	weft_defer_schedule(d);
	CHECK_EQ(weft_loop_free(loop), -EBUSY);
	weft_defer_free(d);

	weft_async *a = NULL;
	REQUIRE(weft_async_new(loop, nop_async_cb, NULL, &a) == 0);
	CHECK_EQ(weft_loop_free(loop), -EBUSY);
	weft_async_free(a);

	weft_signal *s = NULL;
	REQUIRE(weft_signal_new(loop, nop_signal_cb, NULL, &s) == 0);
	CHECK_EQ(weft_loop_free(loop), -EBUSY);
	weft_signal_free(s);

	/* NULL is accepted by every free */
	weft_io_free(NULL);
	weft_timer_free(NULL);
	weft_defer_free(NULL);
	weft_async_free(NULL);
	weft_signal_free(NULL);

	xclose2(p);
	FREE_LOOP(loop);
}

/* ======================================================================== */
/* I/O watchers                                                              */
/* ======================================================================== */

static void test_io_read(void)
{
	struct io_fix f;
	REQUIRE(io_fix_open(&f, ACT_READ_STOP, "hello", 0));
	CHECK_EQ(weft_io_fd(f.r.io), f.sv[0]);
	CHECK_EQ(weft_io_events(f.r.io), 0);
	CHECK(!weft_loop_alive(f.loop));
	CHECK_EQ(weft_io_start(f.r.io, WEFT_IO_READ), 0);
	CHECK_EQ(weft_io_events(f.r.io), WEFT_IO_READ);
	CHECK(weft_loop_alive(f.loop));
	CHECK_EQ(f.r.calls, 0); /* never from inside start */

	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_ONCE), 0);
	CHECK_EQ(f.r.calls, 1);
	CHECK(f.r.last & WEFT_IO_READ);
	CHECK(!(f.r.last & WEFT_IO_WRITE));
	CHECK(!(f.r.last & (WEFT_IO_HUP | WEFT_IO_ERR)));
	CHECK_EQ(f.r.nread, 5);
	CHECK_EQ(weft_io_events(f.r.io), 0);
	CHECK(!weft_loop_alive(f.loop));
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(f.r.calls, 1);

	io_fix_close(&f);
}

static void test_io_write(void)
{
	struct io_fix f;
	REQUIRE(io_fix_open(&f, ACT_STOP, NULL, WEFT_IO_WRITE));
	CHECK_EQ(weft_io_events(f.r.io), WEFT_IO_WRITE);
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(f.r.calls, 1);
	CHECK(f.r.last & WEFT_IO_WRITE);
	CHECK(!(f.r.last & WEFT_IO_READ));

	io_fix_close(&f);
}

static void test_io_both(void)
{
	struct io_fix f;
	REQUIRE(io_fix_open(&f, ACT_READ_STOP, "x", RW));
	CHECK_EQ(weft_io_events(f.r.io), RW);
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_ONCE), 0);
	CHECK_EQ(f.r.calls, 1); /* one callback carrying both bits */
	CHECK_EQ(f.r.last & RW, RW);

	io_fix_close(&f);
}

static void test_io_modify(void)
{
	struct io_fix f;
	REQUIRE(io_fix_open(&f, ACT_NONE, NULL, WEFT_IO_READ));
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(f.r.calls, 0); /* nothing to read */

	CHECK_EQ(weft_io_modify(f.r.io, WEFT_IO_WRITE), 0);
	CHECK_EQ(weft_io_events(f.r.io), WEFT_IO_WRITE);
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(f.r.calls, 1);
	CHECK_EQ(f.r.last & RW, WEFT_IO_WRITE);

	xwrite(f.sv[1], "y");
	CHECK_EQ(weft_io_modify(f.r.io, RW), 0);
	CHECK_EQ(weft_io_events(f.r.io), RW);
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(f.r.calls, 2);
	CHECK_EQ(f.r.last & RW, RW);

	CHECK_EQ(weft_io_modify(f.r.io, WEFT_IO_READ), 0);
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(f.r.calls, 3);
	CHECK_EQ(f.r.last & RW, WEFT_IO_READ);

	/* modify to 0 is stop */
	CHECK_EQ(weft_io_modify(f.r.io, 0), 0);
	CHECK_EQ(weft_io_events(f.r.io), 0);
	CHECK(!weft_loop_alive(f.loop));
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(f.r.calls, 3);
	/* start with 0 is stop too */
	CHECK_EQ(weft_io_start(f.r.io, WEFT_IO_READ), 0);
	CHECK_EQ(weft_io_start(f.r.io, 0), 0);
	CHECK_EQ(weft_io_events(f.r.io), 0);
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(f.r.calls, 3);

	io_fix_close(&f);
}

static void test_io_stop(void)
{
	struct io_fix f;
	REQUIRE(io_fix_open(&f, ACT_NONE, "z", WEFT_IO_READ));
	weft_io_stop(f.r.io);
	CHECK_EQ(weft_io_events(f.r.io), 0);
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(f.r.calls, 0);
	weft_io_stop(f.r.io); /* idempotent */
	CHECK_EQ(weft_io_events(f.r.io), 0);
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(f.r.calls, 0);

	/* a stopped watcher can be started again */
	CHECK_EQ(weft_io_start(f.r.io, WEFT_IO_READ), 0);
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(f.r.calls, 1);
	weft_io_stop(f.r.io);

	io_fix_close(&f);
}

static void test_io_level_triggered(void)
{
	struct io_fix f;
	REQUIRE(io_fix_open(&f, ACT_NONE, "abc", WEFT_IO_READ));
	for (int i = 1; i <= 3; i++) {
		CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_NOWAIT), 1);
		CHECK_EQ(f.r.calls, i);
	}
	char buf[16];
	CHECK_EQ(read(f.sv[0], buf, sizeof buf), 3);
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(f.r.calls, 3);
	/* readable again → delivered again */
	xwrite(f.sv[1], "d");
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_ONCE), 1);
	CHECK_EQ(f.r.calls, 4);

	io_fix_close(&f);
}

/* An iorec watcher (ACT_NONE) on fd for events; closing *peer must make the
 * next iteration deliver exactly one callback.  False if it cannot be made. */
static bool fire_on_close(weft_loop *loop, struct iorec *r, int fd, unsigned events, int *peer)
{
	*r = (struct iorec){ .action = ACT_NONE };
	if (weft_io_new(loop, fd, iorec_cb, r, &r->io) != 0)
		return false;
	CHECK_EQ(weft_io_start(r->io, events), 0);
	xclose(peer);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
	CHECK_EQ(r->calls, 1);
	return true;
}

static void test_io_hup_err(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);

	/* socketpair, peer closed: READ | HUP for a READ watcher */
	int sv[2];
	REQUIRE(mk_sp(sv) == 0);
	struct iorec r;
	REQUIRE(fire_on_close(loop, &r, sv[0], WEFT_IO_READ, &sv[1]));
	CHECK(r.last & WEFT_IO_READ);
	CHECK(r.last & WEFT_IO_HUP);
	CHECK(!(r.last & WEFT_IO_WRITE));
	char buf[8];
	CHECK_EQ(read(sv[0], buf, sizeof buf), 0); /* EOF */
	weft_io_free(r.io);
	xclose(&sv[0]);

	/* empty pipe, writer closed: epoll reports only HUP; weft adds READ */
	int p[2];
	REQUIRE(mk_pipe(p) == 0);
	struct iorec r2;
	REQUIRE(fire_on_close(loop, &r2, p[0], WEFT_IO_READ, &p[1]));
	CHECK(r2.last & WEFT_IO_READ);
	CHECK(r2.last & WEFT_IO_HUP);
	CHECK_EQ(read(p[0], buf, sizeof buf), 0);
	weft_io_free(r2.io);
	xclose(&p[0]);

	/* pipe, reader closed: WRITE | ERR for a WRITE watcher */
	REQUIRE(mk_pipe(p) == 0);
	struct iorec r3;
	REQUIRE(fire_on_close(loop, &r3, p[1], WEFT_IO_WRITE, &p[0]));
	CHECK(r3.last & WEFT_IO_WRITE);
	CHECK(r3.last & WEFT_IO_ERR);
	CHECK(!(r3.last & WEFT_IO_READ));
	errno = 0;
	CHECK(write(p[1], "x", 1) == -1 && errno == EPIPE);
	weft_io_free(r3.io);
	xclose(&p[1]);

	FREE_LOOP(loop);
}

static void test_io_eexist(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	int p[2];
	REQUIRE(mk_pipe(p) == 0);

	weft_io *a = NULL, *b = NULL;
	REQUIRE(weft_io_new(loop, p[0], nop_io_cb, NULL, &a) == 0);
	REQUIRE(weft_io_new(loop, p[0], nop_io_cb, NULL, &b) == 0); /* stopped: fine */
	CHECK_EQ(weft_io_start(a, WEFT_IO_READ), 0);
	CHECK_EQ(weft_io_start(b, WEFT_IO_READ), -EEXIST);
	CHECK_EQ(weft_io_start(b, WEFT_IO_WRITE), -EEXIST);
	CHECK_EQ(weft_io_events(b), 0);
	CHECK_EQ(weft_io_events(a), WEFT_IO_READ); /* untouched by the failure */
	/* the same watcher may change its own set */
	CHECK_EQ(weft_io_start(a, RW), 0);
	weft_io_stop(a);
	CHECK_EQ(weft_io_start(b, WEFT_IO_READ), 0);
	CHECK_EQ(weft_io_start(a, WEFT_IO_READ), -EEXIST);
	weft_io_free(b); /* freeing releases the fd too */
	CHECK_EQ(weft_io_start(a, WEFT_IO_READ), 0);
	/* freeing a stopped watcher of the same fd leaves the started one be */
	struct iorec r = { .action = ACT_NONE };
	weft_io *c = NULL;
	REQUIRE(weft_io_new(loop, p[0], nop_io_cb, NULL, &c) == 0);
	weft_io_free(a);
	REQUIRE(weft_io_new(loop, p[0], iorec_cb, &r, &r.io) == 0);
	CHECK_EQ(weft_io_start(r.io, WEFT_IO_READ), 0);
	weft_io_stop(c);
	weft_io_free(c);
	CHECK_EQ(weft_io_events(r.io), WEFT_IO_READ);
	xwrite(p[1], "e");
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(r.calls, 1);
	weft_io_free(r.io);

	xclose2(p);
	FREE_LOOP(loop);
}

static void test_io_free_self(void)
{
	/* frees itself inside its callback */
	struct io_fix f;
	REQUIRE(io_fix_open(&f, ACT_FREE, "q", RW));
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(f.r.calls, 1);
	CHECK(f.r.io == NULL);

	/* stops itself; a new watcher may then take the fd */
	struct iorec r2 = { .action = ACT_STOP };
	REQUIRE(weft_io_new(f.loop, f.sv[0], iorec_cb, &r2, &r2.io) == 0);
	CHECK_EQ(weft_io_start(r2.io, WEFT_IO_READ), 0);
	CHECK_EQ(weft_loop_run(f.loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(r2.calls, 1);
	weft_io_free(r2.io);

	io_fix_close(&f);
}

/* Two ready watchers; whichever runs first frees (or stops) the other, whose
 * event was already collected: it must not fire. */
struct pair_ctx {
	weft_io *io[2];
	int calls[2];
	bool use_free;
};

static void pair_cb(weft_io *io, unsigned revents, void *data)
{
	(void)revents;
	struct pair_ctx *c = data;
	int i = io == c->io[0] ? 0 : 1;
	CHECK(io == c->io[i]);
	c->calls[i]++;
	if (c->calls[0] + c->calls[1] == 1) {
		if (c->use_free) {
			weft_io_free(c->io[1 - i]);
			c->io[1 - i] = NULL;
		} else {
			weft_io_stop(c->io[1 - i]);
		}
	}
}

static void test_io_free_other_collected(void)
{
	for (int pass = 0; pass < 2; pass++) {
		weft_loop *loop;
		REQUIRE(weft_loop_new(&loop) == 0);
		int a[2], b[2];
		REQUIRE(mk_sp(a) == 0);
		REQUIRE(mk_sp(b) == 0);
		xwrite(a[1], "1");
		xwrite(b[1], "2");

		struct pair_ctx c = { .use_free = pass == 0 };
		REQUIRE(weft_io_new(loop, a[0], pair_cb, &c, &c.io[0]) == 0);
		REQUIRE(weft_io_new(loop, b[0], pair_cb, &c, &c.io[1]) == 0);
		CHECK_EQ(weft_io_start(c.io[0], WEFT_IO_READ), 0);
		CHECK_EQ(weft_io_start(c.io[1], WEFT_IO_READ), 0);

		/* both fds are ready: one epoll_wait collects both events */
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
		CHECK_EQ(c.calls[0] + c.calls[1], 1);
		int first = c.calls[0] ? 0 : 1;
		/* later iterations: the survivor still fires, the other never */
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
		CHECK_EQ(c.calls[first], 2);
		CHECK_EQ(c.calls[1 - first], 0);

		weft_io_free(c.io[0]);
		weft_io_free(c.io[1]);
		xclose2(a);
		xclose2(b);
		FREE_LOOP(loop);
	}
}

/* The first callback stops + closes the other watcher's fd, opens a pipe that
 * gets the same fd number and watches it for READ: the event collected for
 * the old fd must not be delivered to the new watcher. */
struct reuse_ctx {
	weft_loop *loop;
	weft_io *io[3];
	int sp[2][2];
	int np[2];
	int calls[3];
	int old_fd;
	bool natural_reuse;
	bool done;
	unsigned new_revents;
};

static void reuse_new_cb(weft_io *io, unsigned revents, void *data)
{
	(void)io;
	struct reuse_ctx *c = data;
	c->calls[2]++;
	c->new_revents = revents;
}

static void reuse_cb(weft_io *io, unsigned revents, void *data)
{
	(void)revents;
	struct reuse_ctx *c = data;
	int i = io == c->io[0] ? 0 : 1;
	c->calls[i]++;
	if (c->done)
		return;
	c->done = true;
	int j = 1 - i;
	weft_io_stop(c->io[j]);
	weft_io_free(c->io[j]);
	c->io[j] = NULL;
	c->old_fd = c->sp[j][0];
	xclose(&c->sp[j][0]);
	if (mk_pipe(c->np) != 0) {
		CHECK(!"pipe");
		return;
	}
	c->natural_reuse = c->np[0] == c->old_fd;
	if (c->np[1] == c->old_fd) {
		int moved = fcntl(c->np[1], F_DUPFD_CLOEXEC, c->old_fd + 1);
		CHECK(moved >= 0);
		close(c->np[1]);
		c->np[1] = moved;
	}
	if (c->np[0] != c->old_fd) {
		CHECK(dup3(c->np[0], c->old_fd, O_CLOEXEC) == c->old_fd);
		close(c->np[0]);
		c->np[0] = c->old_fd;
	}
	CHECK_EQ(weft_io_new(c->loop, c->np[0], reuse_new_cb, c, &c->io[2]), 0);
	CHECK_EQ(weft_io_start(c->io[2], WEFT_IO_READ), 0);
}

static void test_io_fd_reuse_no_stale(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	struct reuse_ctx c = { .loop = loop, .np = { -1, -1 } };
	REQUIRE(mk_sp(c.sp[0]) == 0);
	REQUIRE(mk_sp(c.sp[1]) == 0);
	xwrite(c.sp[0][1], "1");
	xwrite(c.sp[1][1], "2");
	REQUIRE(weft_io_new(loop, c.sp[0][0], reuse_cb, &c, &c.io[0]) == 0);
	REQUIRE(weft_io_new(loop, c.sp[1][0], reuse_cb, &c, &c.io[1]) == 0);
	CHECK_EQ(weft_io_start(c.io[0], WEFT_IO_READ), 0);
	CHECK_EQ(weft_io_start(c.io[1], WEFT_IO_READ), 0);

	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
	CHECK(c.done);
	CHECK_EQ(c.calls[0] + c.calls[1], 1);
	CHECK_EQ(c.calls[2], 0);
	if (c.calls[2])
		printf("# new watcher on reused fd %d got stale revents 0x%x\n", c.old_fd, c.new_revents);
	if (!c.natural_reuse)
		printf("# (fd number %d reused via dup3)\n", c.old_fd);
	/* the pipe stays empty: the new watcher never fires */
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(c.calls[2], 0);
	/* ... until it is readable */
	if (c.np[1] >= 0)
		xwrite(c.np[1], "n");
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(c.calls[2], 1);

	for (int i = 0; i < 3; i++)
		weft_io_free(c.io[i]);
	for (int i = 0; i < 2; i++) {
		xclose2(c.sp[i]);
		xclose(&c.np[i]);
	}
	FREE_LOOP(loop);
}

/* 10 000 watchers on eventfds, all ready at once. */
#define MANY_IO 10000
struct many_io {
	int fds[MANY_IO];
	weft_io *io[MANY_IO];
	int hits[MANY_IO];
	int fired;
	int bad;
};
static struct many_io *g_mio;

static void many_io_cb(weft_io *io, unsigned revents, void *data)
{
	int i = (int)(intptr_t)data;
	struct many_io *m = g_mio;
	m->hits[i]++;
	m->fired++;
	uint64_t v;
	if (!(revents & WEFT_IO_READ) || read(m->fds[i], &v, sizeof v) != (ssize_t)sizeof v)
		m->bad++;
	if (i % 2) {
		weft_io_free(io);
		m->io[i] = NULL;
	} else {
		weft_io_stop(io);
	}
}

static void test_io_many(void)
{
	struct rlimit old, rl;
	REQUIRE(getrlimit(RLIMIT_NOFILE, &old) == 0);
	rlim_t want = (rlim_t)MANY_IO + (rlim_t)t_fd_count() + 64;
	rl = old;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
		if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
			printf("# skip: RLIMIT_NOFILE hard limit %llu < %llu\n",
			       (unsigned long long)rl.rlim_max, (unsigned long long)want);
			return;
		}
		rl.rlim_cur = want;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
			printf("# skip: cannot raise RLIMIT_NOFILE to %llu: %s\n",
			       (unsigned long long)want, strerror(errno));
			return;
		}
	}

	struct many_io *m = calloc(1, sizeof *m);
	REQUIRE(m != NULL);
	g_mio = m;
	weft_loop *loop = NULL;
	int made = 0;
	if (weft_loop_new(&loop) != 0) {
		CHECK(!"weft_loop_new");
		goto out;
	}
	for (; made < MANY_IO; made++) {
		m->fds[made] = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
		if (m->fds[made] < 0) {
			printf("# eventfd %d: %s\n", made, strerror(errno));
			CHECK(!"eventfd");
			goto out;
		}
		int r = weft_io_new(loop, m->fds[made], many_io_cb, (void *)(intptr_t)made, &m->io[made]);
		if (r == 0)
			r = weft_io_start(m->io[made], WEFT_IO_READ);
		if (r != 0) {
			made++;
			CHECK_EQ(r, 0);
			goto out;
		}
	}
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	uint64_t t1 = t_now_ms();
	CHECK_EQ(m->fired, MANY_IO);
	CHECK_EQ(m->bad, 0);
	int wrong = 0;
	for (int i = 0; i < MANY_IO; i++)
		wrong += m->hits[i] != 1;
	CHECK_EQ(wrong, 0);
	printf("# %d io watchers fired in %llu ms\n", MANY_IO, (unsigned long long)(t1 - t0));
out:
	for (int i = 0; i < made; i++) {
		weft_io_free(m->io[i]);
		if (m->fds[i] >= 0)
			close(m->fds[i]);
	}
	FREE_LOOP(loop);
	g_mio = NULL;
	free(m);
	setrlimit(RLIMIT_NOFILE, &old);
}

/* ======================================================================== */
/* timers                                                                    */
/* ======================================================================== */

struct trec {
	weft_timer *t;
	int calls;
	uint64_t at[16];
	int stop_after;
};

static void trec_cb(weft_timer *t, void *data)
{
	struct trec *r = data;
	CHECK(t == r->t);
	if (r->calls < 16)
		r->at[r->calls] = t_now_ms();
	r->calls++;
	if (r->stop_after && r->calls >= r->stop_after)
		weft_timer_stop(t);
}

static void test_timer_oneshot(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	struct trec r = { 0 };
	REQUIRE(weft_timer_new(loop, trec_cb, &r, &r.t) == 0);
	CHECK(!weft_timer_active(r.t));
	uint64_t t0 = mark(loop);
	CHECK_EQ(weft_timer_start(r.t, 50, 0), 0);
	CHECK(weft_timer_active(r.t));
	CHECK(weft_loop_alive(loop));
	int64_t rem = weft_timer_remaining(r.t);
	CHECK(rem > 40 && rem <= 50);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(r.calls, 1);
	CHECK(r.at[0] >= t0 + 50);
	CHECK(r.at[0] <= t0 + 50 + late_ms);
	CHECK(!weft_timer_active(r.t));
	CHECK_EQ(weft_timer_remaining(r.t), -1);

	/* a 0 ms timer fires on the next run */
	CHECK_EQ(weft_timer_start(r.t, 0, 0), 0);
	CHECK_EQ(r.calls, 1);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(r.calls, 2);

	weft_timer_free(r.t);
	FREE_LOOP(loop);
}

static void test_timer_repeat(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	struct trec r = { .stop_after = 5 };
	REQUIRE(weft_timer_new(loop, trec_cb, &r, &r.t) == 0);
	uint64_t t0 = mark(loop);
	CHECK_EQ(weft_timer_start(r.t, 20, 20), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(r.calls, 5);
	for (int i = 0; i < 5 && i < r.calls; i++)
		CHECK(r.at[i] >= t0 + 20 * (uint64_t)(i + 1));
	CHECK(r.at[4] <= t0 + 100 + late_ms);
	CHECK(!weft_timer_active(r.t));

	/* different first timeout and period */
	r.calls = 0;
	r.stop_after = 3;
	t0 = mark(loop);
	CHECK_EQ(weft_timer_start(r.t, 5, 30), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(r.calls, 3);
	CHECK(r.at[0] >= t0 + 5);
	CHECK(r.at[2] >= t0 + 65);
	CHECK(r.at[2] <= t0 + 65 + late_ms);

	weft_timer_free(r.t);
	FREE_LOOP(loop);
}

/* A late repeating timer skips the periods it missed rather than bursting. */
struct late_ctx {
	weft_timer *t;
	int calls;
	uint64_t at[8];
};

static void late_cb(weft_timer *t, void *data)
{
	struct late_ctx *c = data;
	c->at[c->calls++] = t_now_ms();
	if (c->calls == 1)
		t_sleep_ms(65); /* miss ~6 periods */
	if (c->calls == 4)
		weft_timer_stop(t);
}

static void test_timer_repeat_skips_missed(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	struct late_ctx c = { 0 };
	REQUIRE(weft_timer_new(loop, late_cb, &c, &c.t) == 0);
	CHECK_EQ(weft_timer_start(c.t, 10, 10), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(c.calls, 4);
	/* no burst: calls 2, 3 and 4 are spread over time, not back to back */
	CHECK(c.at[2] > c.at[1]);
	CHECK(c.at[3] > c.at[2]);
	if (!(c.at[2] > c.at[1] && c.at[3] > c.at[2]))
		printf("# fires at +%llu +%llu +%llu +%llu ms\n", 0ULL,
		       (unsigned long long)(c.at[1] - c.at[0]), (unsigned long long)(c.at[2] - c.at[0]),
		       (unsigned long long)(c.at[3] - c.at[0]));
	weft_timer_free(c.t);
	FREE_LOOP(loop);
}

struct kill_ctx {
	weft_timer *t[2];
	int calls[2];
	bool use_free;
};

static void kill_cb(weft_timer *t, void *data)
{
	struct kill_ctx *c = data;
	int i = t == c->t[0] ? 0 : 1;
	c->calls[i]++;
	if (i == 0) {
		if (c->use_free) {
			weft_timer_free(c->t[1]);
			c->t[1] = NULL;
		} else {
			weft_timer_stop(c->t[1]);
		}
	}
}

static void test_timer_stop_in_callback(void)
{
	/* stop self: see test_timer_repeat.  Here a callback stops or frees
	 * another timer that is due in the same iteration. */
	for (int pass = 0; pass < 2; pass++) {
		weft_loop *loop;
		REQUIRE(weft_loop_new(&loop) == 0);
		struct kill_ctx c = { .use_free = pass == 1 };
		REQUIRE(weft_timer_new(loop, kill_cb, &c, &c.t[0]) == 0);
		REQUIRE(weft_timer_new(loop, kill_cb, &c, &c.t[1]) == 0);
		CHECK_EQ(weft_timer_start(c.t[0], 10, 0), 0);
		CHECK_EQ(weft_timer_start(c.t[1], 10, 0), 0);
		t_sleep_ms(15); /* both are overdue when the loop looks */
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
		CHECK_EQ(c.calls[0], 1);
		CHECK_EQ(c.calls[1], 0);
		weft_timer_free(c.t[0]);
		weft_timer_free(c.t[1]);
		FREE_LOOP(loop);
	}
}

static void self_free_timer_cb(weft_timer *t, void *data)
{
	(*(int *)data)++;
	weft_timer_free(t);
}

static void test_timer_free_self(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	int n = 0;
	weft_timer *t;
	REQUIRE(weft_timer_new(loop, self_free_timer_cb, &n, &t) == 0);
	CHECK_EQ(weft_timer_start(t, 1, 5), 0); /* repeating, freed in its first call */
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(n, 1);
	FREE_LOOP(loop);
}

struct restart_ctx {
	weft_timer *a, *b;
	int a_calls, b_calls;
	uint64_t a_at, b_at;
};

static void restart_a_cb(weft_timer *t, void *data)
{
	(void)t;
	struct restart_ctx *c = data;
	c->a_calls++;
	c->a_at = t_now_ms();
}

static void restart_b_cb(weft_timer *t, void *data)
{
	(void)t;
	struct restart_ctx *c = data;
	c->b_calls++;
	c->b_at = t_now_ms();
	CHECK_EQ(weft_timer_start(c->a, 60, 0), 0); /* reschedule a started timer */
}

static void test_timer_restart(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);

	/* restart from outside: 5 s becomes 30 ms */
	struct trec r = { 0 };
	REQUIRE(weft_timer_new(loop, trec_cb, &r, &r.t) == 0);
	CHECK_EQ(weft_timer_start(r.t, 5000, 0), 0);
	uint64_t t0 = mark(loop);
	CHECK_EQ(weft_timer_start(r.t, 30, 0), 0);
	CHECK(weft_timer_remaining(r.t) <= 30);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(r.calls, 1);
	CHECK(r.at[0] >= t0 + 30);
	CHECK(r.at[0] <= t0 + 30 + late_ms);
	/* and 30 ms becomes later */
	r.calls = 0;
	CHECK_EQ(weft_timer_start(r.t, 10, 0), 0);
	t0 = mark(loop);
	CHECK_EQ(weft_timer_start(r.t, 80, 0), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(r.calls, 1);
	CHECK(r.at[0] >= t0 + 80);
	weft_timer_free(r.t);

	/* restart from another timer's callback pushes the deadline */
	struct restart_ctx c = { 0 };
	REQUIRE(weft_timer_new(loop, restart_a_cb, &c, &c.a) == 0);
	REQUIRE(weft_timer_new(loop, restart_b_cb, &c, &c.b) == 0);
	t0 = mark(loop);
	CHECK_EQ(weft_timer_start(c.a, 60, 0), 0);
	CHECK_EQ(weft_timer_start(c.b, 30, 0), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(c.b_calls, 1);
	CHECK_EQ(c.a_calls, 1);
	CHECK(c.b_at >= t0 + 30);
	CHECK(c.a_at >= t0 + 90);
	CHECK(c.a_at >= c.b_at + 60 - 1);
	CHECK(c.a_at <= t0 + 90 + late_ms);
	weft_timer_free(c.a);
	weft_timer_free(c.b);
	FREE_LOOP(loop);
}

#define NORDER 8
struct order_ctx {
	weft_timer *t[NORDER];
	int order[NORDER];
	int n;
};

static void order_cb(weft_timer *t, void *data)
{
	struct order_ctx *c = data;
	for (int i = 0; i < NORDER; i++)
		if (c->t[i] == t && c->n < NORDER)
			c->order[c->n++] = i;
}

static void test_timer_order(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);

	/* by deadline */
	static const uint64_t to[6] = { 50, 10, 40, 20, 30, 0 };
	static const int want[6] = { 5, 1, 3, 4, 2, 0 };
	struct order_ctx c = { 0 };
	for (int i = 0; i < 6; i++) {
		REQUIRE(weft_timer_new(loop, order_cb, &c, &c.t[i]) == 0);
		CHECK_EQ(weft_timer_start(c.t[i], to[i], 0), 0);
	}
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(c.n, 6);
	for (int i = 0; i < 6; i++)
		CHECK_EQ(c.order[i], want[i]);
	for (int i = 0; i < 6; i++)
		weft_timer_free(c.t[i]);

	/* equal deadlines: start order; a restart counts as a new start */
	struct order_ctx e = { 0 };
	for (int i = 0; i < 5; i++)
		REQUIRE(weft_timer_new(loop, order_cb, &e, &e.t[i]) == 0);
	/* start them in a scrambled creation order */
	static const int start_seq[5] = { 3, 0, 4, 1, 2 };
	for (int k = 0; k < 5; k++)
		CHECK_EQ(weft_timer_start(e.t[start_seq[k]], 15, 0), 0);
	CHECK_EQ(weft_timer_start(e.t[0], 15, 0), 0); /* 0 moves to the end */
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	static const int want_eq[5] = { 3, 4, 1, 2, 0 };
	CHECK_EQ(e.n, 5);
	for (int i = 0; i < 5; i++)
		CHECK_EQ(e.order[i], want_eq[i]);
	for (int i = 0; i < 5; i++)
		weft_timer_free(e.t[i]);
	FREE_LOOP(loop);
}

struct zero_ctx {
	weft_loop *loop;
	weft_timer *a, *b, *self;
	int a_calls, b_calls, self_calls;
};

static void zero_a_cb(weft_timer *t, void *data)
{
	(void)t;
	struct zero_ctx *c = data;
	c->a_calls++;
	CHECK_EQ(weft_timer_start(c->b, 0, 0), 0);
}

static void zero_b_cb(weft_timer *t, void *data)
{
	(void)t;
	struct zero_ctx *c = data;
	c->b_calls++;
}

static void zero_self_cb(weft_timer *t, void *data)
{
	struct zero_ctx *c = data;
	c->self_calls++;
	if (c->self_calls < 5)
		CHECK_EQ(weft_timer_start(t, 0, 0), 0);
}

static void test_timer_zero_in_callback(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	struct zero_ctx c = { .loop = loop };
	REQUIRE(weft_timer_new(loop, zero_a_cb, &c, &c.a) == 0);
	REQUIRE(weft_timer_new(loop, zero_b_cb, &c, &c.b) == 0);
	REQUIRE(weft_timer_new(loop, zero_self_cb, &c, &c.self) == 0);

	CHECK_EQ(weft_timer_start(c.a, 0, 0), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
	CHECK_EQ(c.a_calls, 1);
	CHECK_EQ(c.b_calls, 0); /* started from a timer callback: not this iteration */
	CHECK(weft_timer_active(c.b));
	CHECK_EQ(weft_loop_get_timeout(loop), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 0);
	CHECK_EQ(c.b_calls, 1);
	CHECK_EQ(c.a_calls, 1);

	/* a timer restarting itself with 0 fires once per iteration */
	CHECK_EQ(weft_timer_start(c.self, 0, 0), 0);
	for (int i = 1; i <= 5; i++) {
		int r = weft_loop_run(loop, i % 2 ? WEFT_RUN_NOWAIT : WEFT_RUN_ONCE);
		CHECK_EQ(c.self_calls, i);
		CHECK_EQ(r, i < 5 ? 1 : 0);
	}
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(c.self_calls, 5);

	weft_timer_free(c.a);
	weft_timer_free(c.b);
	weft_timer_free(c.self);
	FREE_LOOP(loop);
}

static void test_timer_remaining(void)
{
	int r;
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	int n = 0;
	weft_timer *t;
	REQUIRE(weft_timer_new(loop, count_timer_cb, &n, &t) == 0);
	CHECK_EQ(weft_timer_remaining(t), -1);
	weft_loop_update_time(loop);
	CHECK_EQ(weft_timer_start(t, 1000, 0), 0);
	int64_t rem = weft_timer_remaining(t);
	CHECK(rem > 900 && rem <= 1000);
	t_sleep_ms(30);
	weft_loop_update_time(loop);
	rem = weft_timer_remaining(t);
	CHECK(rem >= 900 && rem <= 970);
	weft_timer_stop(t);
	CHECK_EQ(weft_timer_remaining(t), -1);
	CHECK(!weft_timer_active(t));
	weft_timer_stop(t); /* idempotent */

	/* overdue → 0 */
	CHECK_EQ(weft_timer_start(t, 1, 0), 0);
	t_sleep_ms(20);
	weft_loop_update_time(loop);
	CHECK_EQ(weft_timer_remaining(t), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(n, 1);
	CHECK_EQ(weft_timer_remaining(t), -1);

	/* a repeating timer after firing reports the next period */
	CHECK_EQ(weft_timer_start(t, 0, 500), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(n, 2);
	CHECK(weft_timer_active(t));
	rem = weft_timer_remaining(t);
	CHECK(rem > 400 && rem <= 500);
	/* a timeout too far to matter: no overflow into "now" or "never" */
	r = weft_timer_start(t, UINT64_MAX, 0);
	CHECK(r == 0 || r == -EINVAL);
	if (r == 0) {
		CHECK(weft_timer_active(t));
		CHECK(weft_timer_remaining(t) > 1000000);
		CHECK(weft_loop_get_timeout(loop) > 1000000);
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
		CHECK_EQ(n, 2);
	}
	r = weft_timer_start(t, UINT64_MAX / 2, UINT64_MAX / 2);
	CHECK(r == 0 || r == -EINVAL);
	if (r == 0) {
		CHECK(weft_timer_remaining(t) > 1000000);
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
		CHECK_EQ(n, 2);
	}
	weft_timer_free(t); /* free a started timer */
	CHECK(!weft_loop_alive(loop));
	FREE_LOOP(loop);
}

/* 10 000 timers with random timeouts. */
#define NTIMERS 10000
#define MANY_MAX_TIMEOUT 300
struct many_timers {
	weft_timer *t[NTIMERS];
	uint64_t timeout[NTIMERS];
	int hits[NTIMERS];
	int order[NTIMERS];
	int nfired;
	uint64_t t0;
	int early;
	uint64_t max_late;
};
static struct many_timers *g_mt;

/* Deadline order, (a): walking the timers in start order (seq[0..n), or
 * 0..n-1 if seq is NULL), count those that fired after a timer started later
 * with a timeout no longer (pos[i]: where timer i fired; timeouts below
 * MANY_MAX_TIMEOUT). */
static int count_inversions(const int *seq, int n, const int *pos, const uint64_t *timeout)
{
	int best[MANY_MAX_TIMEOUT], inversions = 0;
	for (int v = 0; v < MANY_MAX_TIMEOUT; v++)
		best[v] = -1;
	for (int a = 0; a < n; a++) {
		int i = seq ? seq[a] : a, to = (int)timeout[i], worst = -1;
		for (int v = 0; v <= to; v++)
			if (best[v] > worst)
				worst = best[v];
		if (worst > pos[i])
			inversions++;
		if (pos[i] > best[to])
			best[to] = pos[i];
	}
	return inversions;
}

/* Deadline order, (b): in firing order (order[0..n)), count the timers that
 * fired after one whose timeout was more than span longer. */
static int count_out_of_order(const int *order, int n, const uint64_t *timeout, uint64_t span)
{
	uint64_t max_to = 0;
	int out_of_order = 0;
	for (int k = 0; k < n; k++) {
		uint64_t to = timeout[order[k]];
		if (to > max_to)
			max_to = to;
		if (max_to > to + span)
			out_of_order++;
	}
	return out_of_order;
}

static void many_timer_cb(weft_timer *t, void *data)
{
	(void)t;
	struct many_timers *m = g_mt;
	int i = (int)(intptr_t)data;
	m->hits[i]++;
	if (m->nfired < NTIMERS)
		m->order[m->nfired] = i;
	m->nfired++;
	uint64_t now = t_now_ms(), due = m->t0 + m->timeout[i];
	if (now < due)
		m->early++;
	else if (now - due > m->max_late)
		m->max_late = now - due;
}

/* g_mt and a loop with NTIMERS stopped many_timer_cb timers (*made of them
 * were created), t0 marked; NULL if the struct or the loop cannot be made. */
static struct many_timers *many_timers_new(weft_loop **loop, int *made)
{
	struct many_timers *m = calloc(1, sizeof *m);
	if (m == NULL)
		return NULL;
	if (weft_loop_new(loop) != 0) {
		free(m);
		return NULL;
	}
	g_mt = m;
	int n = 0;
	for (; n < NTIMERS; n++)
		if (weft_timer_new(*loop, many_timer_cb, (void *)(intptr_t)n, &m->t[n]) != 0)
			break;
	CHECK_EQ(n, NTIMERS);
	*made = n;
	m->t0 = mark(*loop);
	return m;
}

static void many_timers_free(struct many_timers *m, weft_loop *loop, int made)
{
	for (int i = 0; i < made; i++)
		weft_timer_free(m->t[i]);
	FREE_LOOP(loop);
	g_mt = NULL;
	free(m);
}

static void test_timer_many(void)
{
	weft_loop *loop;
	int made;
	struct many_timers *m = many_timers_new(&loop, &made);
	REQUIRE(m != NULL);
	for (int i = 0; i < made; i++) {
		m->timeout[i] = rng() % MANY_MAX_TIMEOUT;
		CHECK_EQ(weft_timer_start(m->t[i], m->timeout[i], 0), 0);
	}
	uint64_t span = t_now_ms() - m->t0 + 1; /* how long the starts took */
	int bad_rem = 0;
	for (int i = 0; i < made; i++) {
		int64_t rem = weft_timer_remaining(m->t[i]);
		if (rem < 0 || (uint64_t)rem > m->timeout[i])
			bad_rem++;
	}
	CHECK_EQ(bad_rem, 0);

	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(m->nfired, made);
	int wrong = 0;
	for (int i = 0; i < made; i++)
		wrong += m->hits[i] != 1;
	CHECK_EQ(wrong, 0);

	/* Deadline order.  A deadline is the start time (weft's cached loop
	 * time or the real time of the call: either is fine) + timeout, so:
	 * (a) a timer started before another, with a timeout no longer than
	 *     the other's, has an earlier or equal deadline and fires first
	 *     (equal deadlines: start order) — exact for both clocks;
	 * (b) any timer fired before another has a timeout at most the
	 *     duration of the start loop longer. */
	if (m->nfired == made) {
		static int pos[NTIMERS];
		for (int k = 0; k < made; k++)
			pos[m->order[k]] = k;
		CHECK_EQ(count_inversions(NULL, made, pos, m->timeout), 0);
		CHECK_EQ(count_out_of_order(m->order, made, m->timeout, span), 0);
		printf("# starts took %llu ms\n", (unsigned long long)span);
	}
	CHECK_EQ(m->early, 0);
	CHECK(m->max_late <= late_ms);
	printf("# %d timers, max lateness %llu ms\n", made, (unsigned long long)m->max_late);
	many_timers_free(m, loop, made);
}

static void test_timer_cancel_half(void)
{
	weft_loop *loop;
	int made;
	struct many_timers *m = many_timers_new(&loop, &made);
	REQUIRE(m != NULL);
	for (int i = 0; i < made; i++) {
		m->timeout[i] = 1 + rng() % 200;
		CHECK_EQ(weft_timer_start(m->t[i], m->timeout[i], 0), 0);
	}
	/* cancel the even half, in a scrambled order: stop some, free others */
	for (int k = 0; k < made / 2; k++) {
		int i = (int)((k * 7919u) % (unsigned)(made / 2)) * 2;
		if (i % 4 == 0) {
			weft_timer_stop(m->t[i]);
		} else {
			weft_timer_free(m->t[i]);
			m->t[i] = NULL;
		}
	}
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(m->nfired, made / 2);
	int wrong = 0;
	for (int i = 0; i < made; i++)
		wrong += m->hits[i] != (i % 2);
	CHECK_EQ(wrong, 0);
	CHECK_EQ(m->early, 0);
	many_timers_free(m, loop, made);
}

/* Random starts, restarts, stops and frees on 2 000 timers exercise the
 * heap's insert, re-key and remove; the survivors must fire exactly once,
 * in deadline order, never early. */
#define NHEAP 2000
#define HEAP_MAX_TIMEOUT 200
_Static_assert(HEAP_MAX_TIMEOUT <= MANY_MAX_TIMEOUT, "count_inversions covers both");
struct heap_stress {
	weft_timer *t[NHEAP];
	uint64_t timeout[NHEAP];
	uint64_t start_seq[NHEAP];
	uint64_t start_real[NHEAP];
	bool active[NHEAP];
	int hits[NHEAP];
	int order[NHEAP];
	int pos[NHEAP];
	int nfired;
	int early;
	int stray;
};
static struct heap_stress *g_hs;

static void heap_stress_cb(weft_timer *t, void *data)
{
	struct heap_stress *h = g_hs;
	int i = (int)(intptr_t)data;
	if (t != h->t[i]) {
		h->stray++;
		return;
	}
	h->hits[i]++;
	if (h->nfired < NHEAP)
		h->order[h->nfired] = i;
	h->nfired++;
	if (t_now_ms() < h->start_real[i] + h->timeout[i])
		h->early++;
}

static void test_timer_heap_stress(void)
{
	struct heap_stress *h = calloc(1, sizeof *h);
	REQUIRE(h != NULL);
	g_hs = h;
	weft_loop *loop;
	if (weft_loop_new(&loop) != 0) {
		free(h);
		REQUIRE(!"weft_loop_new");
	}
	int fails = 0;
	for (int i = 0; i < NHEAP; i++)
		fails += weft_timer_new(loop, heap_stress_cb, (void *)(intptr_t)i, &h->t[i]) != 0;
	CHECK_EQ(fails, 0);
	uint64_t t_begin = t_now_ms();
	for (uint64_t op = 1; op <= 20000 && !fails; op++) {
		int i = (int)(rng() % NHEAP);
		switch (rng() % 5) {
		case 0:
		case 1:
		case 2: /* start or restart */
			h->timeout[i] = rng() % HEAP_MAX_TIMEOUT;
			h->start_real[i] = t_now_ms();
			weft_loop_update_time(loop);
			fails += weft_timer_start(h->t[i], h->timeout[i], 0) != 0;
			h->start_seq[i] = op;
			h->active[i] = true;
			break;
		case 3:
			weft_timer_stop(h->t[i]);
			h->active[i] = false;
			break;
		case 4:
			weft_timer_free(h->t[i]);
			h->t[i] = NULL;
			fails += weft_timer_new(loop, heap_stress_cb, (void *)(intptr_t)i, &h->t[i]) != 0;
			h->active[i] = false;
			break;
		}
	}
	CHECK_EQ(fails, 0);
	uint64_t span = t_now_ms() - t_begin + 1;
	int nactive = 0, bad_state = 0;
	for (int i = 0; i < NHEAP; i++) {
		nactive += h->active[i];
		bad_state += weft_timer_active(h->t[i]) != h->active[i];
		if (h->active[i] && (weft_timer_remaining(h->t[i]) < 0 ||
				     (uint64_t)weft_timer_remaining(h->t[i]) > h->timeout[i]))
			bad_state++;
	}
	CHECK_EQ(bad_state, 0);

	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(h->nfired, nactive);
	CHECK_EQ(h->stray, 0);
	CHECK_EQ(h->early, 0);
	int wrong = 0;
	for (int i = 0; i < NHEAP; i++)
		wrong += h->hits[i] != (h->active[i] ? 1 : 0);
	CHECK_EQ(wrong, 0);
	if (h->nfired == nactive && wrong == 0) {
		/* (a) started earlier with a timeout no longer → fires first */
		static int idx[NHEAP];
		int n = 0;
		for (int k = 0; k < h->nfired; k++)
			h->pos[h->order[k]] = k;
		for (int i = 0; i < NHEAP; i++)
			if (h->active[i])
				idx[n++] = i;
		/* sort by start sequence (insertion sort is fine for 2 000) */
		for (int a = 1; a < n; a++) {
			int v = idx[a], b = a;
			while (b > 0 && h->start_seq[idx[b - 1]] > h->start_seq[v]) {
				idx[b] = idx[b - 1];
				b--;
			}
			idx[b] = v;
		}
		CHECK_EQ(count_inversions(idx, n, h->pos, h->timeout), 0);
		/* (b) no timer fires before one due more than the op span earlier */
		CHECK_EQ(count_out_of_order(h->order, h->nfired, h->timeout, span), 0);
		printf("# %d of %d timers left active after 20000 ops (%llu ms)\n", nactive, NHEAP,
		       (unsigned long long)span);
	}
	for (int i = 0; i < NHEAP; i++)
		weft_timer_free(h->t[i]);
	FREE_LOOP(loop);
	g_hs = NULL;
	free(h);
}

/* ======================================================================== */
/* deferred calls                                                            */
/* ======================================================================== */

static void test_defer_basic(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	int n = 0;
	weft_defer *d;
	REQUIRE(weft_defer_new(loop, count_defer_cb, &n, &d) == 0);
	CHECK(!weft_defer_scheduled(d));
	CHECK(!weft_loop_alive(loop));
	weft_defer_schedule(d);
	CHECK_EQ(n, 0); /* never inside schedule */
	CHECK(weft_defer_scheduled(d));
	CHECK(weft_loop_alive(loop));
	weft_defer_schedule(d); /* idempotent */
	CHECK_EQ(weft_loop_get_timeout(loop), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(n, 1);
	CHECK(!weft_defer_scheduled(d));
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(n, 1);

	/* DEFAULT runs it and returns */
	weft_defer_schedule(d);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(n, 2);

	/* ONCE with a deferred call does not wait for the (distant) timer */
	int tn = 0;
	weft_timer *t;
	REQUIRE(weft_timer_new(loop, count_timer_cb, &tn, &t) == 0);
	CHECK_EQ(weft_timer_start(t, 5000, 0), 0);
	weft_defer_schedule(d);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
	CHECK(t_now_ms() - t0 < 1000);
	CHECK_EQ(n, 3);
	CHECK_EQ(tn, 0);
	weft_timer_free(t);

	weft_defer_free(d);
	FREE_LOOP(loop);
}

struct chain_ctx {
	weft_defer *a, *b, *self;
	int a_calls, b_calls, self_calls;
};

static void chain_a_cb(weft_defer *d, void *data)
{
	(void)d;
	struct chain_ctx *c = data;
	c->a_calls++;
	weft_defer_schedule(c->b);
}

static void chain_b_cb(weft_defer *d, void *data)
{
	(void)d;
	struct chain_ctx *c = data;
	c->b_calls++;
}

static void chain_self_cb(weft_defer *d, void *data)
{
	struct chain_ctx *c = data;
	c->self_calls++;
	if (c->self_calls < 5)
		weft_defer_schedule(d);
}

static void test_defer_chain(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	struct chain_ctx c = { 0 };
	REQUIRE(weft_defer_new(loop, chain_a_cb, &c, &c.a) == 0);
	REQUIRE(weft_defer_new(loop, chain_b_cb, &c, &c.b) == 0);
	REQUIRE(weft_defer_new(loop, chain_self_cb, &c, &c.self) == 0);

	weft_defer_schedule(c.a);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(c.a_calls, 1);
	CHECK_EQ(c.b_calls, 0); /* scheduled from a deferred callback: next iteration */
	CHECK(weft_defer_scheduled(c.b));
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(c.b_calls, 1);

	/* a self-rescheduling deferred call runs once per iteration */
	weft_defer_schedule(c.self);
	for (int i = 1; i <= 5; i++) {
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), i < 5 ? 1 : 0);
		CHECK_EQ(c.self_calls, i);
	}

	/* ... and cannot starve I/O: a chain keeps going while io is served */
	int sv[2];
	REQUIRE(mk_sp(sv) == 0);
	xwrite(sv[1], "w");
	struct iorec r = { .action = ACT_READ_STOP };
	REQUIRE(weft_io_new(loop, sv[0], iorec_cb, &r, &r.io) == 0);
	CHECK_EQ(weft_io_start(r.io, WEFT_IO_READ), 0);
	c.self_calls = 0;
	weft_defer_schedule(c.self);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
	CHECK_EQ(r.calls, 1);
	CHECK_EQ(c.self_calls, 1);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(c.self_calls, 5);
	weft_io_free(r.io);
	xclose2(sv);

	weft_defer_free(c.a);
	weft_defer_free(c.b);
	weft_defer_free(c.self);
	FREE_LOOP(loop);
}

struct dkill_ctx {
	weft_defer *d[2];
	int calls[2];
	bool use_free;
};

static void dkill_cb(weft_defer *d, void *data)
{
	struct dkill_ctx *c = data;
	int i = d == c->d[0] ? 0 : 1;
	c->calls[i]++;
	if (c->calls[0] + c->calls[1] == 1) {
		if (c->use_free) {
			weft_defer_free(c->d[1 - i]);
			c->d[1 - i] = NULL;
		} else {
			weft_defer_cancel(c->d[1 - i]);
		}
	}
}

static void self_free_defer_cb(weft_defer *d, void *data)
{
	(*(int *)data)++;
	weft_defer_free(d);
}

static void test_defer_cancel(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	int n = 0;
	weft_defer *d;
	REQUIRE(weft_defer_new(loop, count_defer_cb, &n, &d) == 0);
	weft_defer_schedule(d);
	weft_defer_cancel(d);
	CHECK(!weft_defer_scheduled(d));
	CHECK(!weft_loop_alive(loop));
	CHECK_EQ(weft_loop_get_timeout(loop), -1);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(n, 0);
	weft_defer_cancel(d); /* idempotent */
	/* freed while scheduled: never runs */
	weft_defer_schedule(d);
	weft_defer_free(d);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(n, 0);

	/* cancelled / freed from another deferred callback of the same iteration */
	for (int pass = 0; pass < 2; pass++) {
		struct dkill_ctx c = { .use_free = pass == 1 };
		REQUIRE(weft_defer_new(loop, dkill_cb, &c, &c.d[0]) == 0);
		REQUIRE(weft_defer_new(loop, dkill_cb, &c, &c.d[1]) == 0);
		weft_defer_schedule(c.d[0]);
		weft_defer_schedule(c.d[1]);
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 0);
		CHECK_EQ(c.calls[0] + c.calls[1], 1);
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 0);
		CHECK_EQ(c.calls[0] + c.calls[1], 1);
		weft_defer_free(c.d[0]);
		weft_defer_free(c.d[1]);
	}

	/* frees itself */
	int m = 0;
	REQUIRE(weft_defer_new(loop, self_free_defer_cb, &m, &d) == 0);
	weft_defer_schedule(d);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(m, 1);
	FREE_LOOP(loop);
}

struct soon_ctx {
	weft_loop *loop;
	int calls;
	int nested_calls;
};

static void soon_nested_cb(void *data)
{
	struct soon_ctx *c = data;
	c->nested_calls++;
}

static void soon_cb(void *data)
{
	struct soon_ctx *c = data;
	c->calls++;
	CHECK_EQ(weft_loop_call_soon(c->loop, soon_nested_cb, c), 0);
	CHECK_EQ(c->nested_calls, 0);
}

static void test_call_soon(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	int n = 0;
	CHECK_EQ(weft_loop_call_soon(loop, count_call_cb, &n), 0);
	CHECK_EQ(n, 0);
	CHECK_EQ(weft_loop_get_timeout(loop), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(n, 1);
	CHECK_EQ(weft_loop_get_timeout(loop), -1);

	/* several, each once */
	for (int i = 0; i < 3; i++)
		CHECK_EQ(weft_loop_call_soon(loop, count_call_cb, &n), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(n, 4);

	/* a call_soon from a call_soon callback runs on the following iteration */
	struct soon_ctx c = { .loop = loop };
	CHECK_EQ(weft_loop_call_soon(loop, soon_cb, &c), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(c.calls, 1);
	CHECK_EQ(c.nested_calls, 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(c.nested_calls, 1);

	/* a pending call is no handle: the loop frees it (valgrind/ASan see leaks) */
	int never = 0;
	CHECK_EQ(weft_loop_call_soon(loop, count_call_cb, &never), 0);
	FREE_LOOP(loop);
	CHECK_EQ(never, 0);
}

static void test_get_timeout_defer(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	CHECK_EQ(weft_loop_get_timeout(loop), -1);
	int tn = 0, dn = 0, cn = 0;
	weft_timer *t;
	weft_defer *d;
	REQUIRE(weft_timer_new(loop, count_timer_cb, &tn, &t) == 0);
	REQUIRE(weft_defer_new(loop, count_defer_cb, &dn, &d) == 0);
	weft_loop_update_time(loop);
	CHECK_EQ(weft_timer_start(t, 1000, 0), 0);
	int64_t to = weft_loop_get_timeout(loop);
	CHECK(to > 900 && to <= 1000);
	weft_defer_schedule(d);
	CHECK_EQ(weft_loop_get_timeout(loop), 0);
	weft_defer_cancel(d);
	to = weft_loop_get_timeout(loop);
	CHECK(to > 900 && to <= 1000);
	CHECK_EQ(weft_loop_call_soon(loop, count_call_cb, &cn), 0);
	CHECK_EQ(weft_loop_get_timeout(loop), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(cn, 1);
	to = weft_loop_get_timeout(loop);
	CHECK(to > 900 && to <= 1000);
	/* an overdue timer → 0 */
	CHECK_EQ(weft_timer_start(t, 1, 0), 0);
	t_sleep_ms(10);
	CHECK_EQ(weft_loop_get_timeout(loop) == 0 || weft_loop_get_timeout(loop) == 1, 1);
	weft_timer_stop(t);
	CHECK_EQ(weft_loop_get_timeout(loop), -1);
	CHECK_EQ(tn, 0);
	CHECK_EQ(dn, 0);
	weft_timer_free(t);
	weft_defer_free(d);
	FREE_LOOP(loop);
}

/* ======================================================================== */
/* run modes                                                                 */
/* ======================================================================== */

struct stop_io_ctx {
	weft_io *io;
	int calls;
};

static void stop_io_timer_cb(weft_timer *t, void *data)
{
	(void)t;
	struct stop_io_ctx *c = data;
	c->calls++;
	weft_io_stop(c->io);
}

static void test_run_default_exits(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	int sv[2];
	REQUIRE(mk_sp(sv) == 0);
	struct stop_io_ctx c = { 0 };
	weft_timer *t;
	REQUIRE(weft_io_new(loop, sv[0], nop_io_cb, NULL, &c.io) == 0);
	REQUIRE(weft_timer_new(loop, stop_io_timer_cb, &c, &t) == 0);
	CHECK_EQ(weft_io_start(c.io, WEFT_IO_READ), 0); /* never ready */
	uint64_t t0 = mark(loop);
	CHECK_EQ(weft_timer_start(t, 40, 0), 0);
	/* the io watcher keeps it alive until the timer stops it */
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	uint64_t el = t_now_ms() - t0;
	CHECK_EQ(c.calls, 1);
	CHECK(el >= 40 && el <= 40 + late_ms);
	CHECK(!weft_loop_alive(loop));
	weft_timer_free(t);
	weft_io_free(c.io);
	xclose2(sv);
	FREE_LOOP(loop);
}

static void test_run_once_blocks(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	struct trec r = { 0 };
	REQUIRE(weft_timer_new(loop, trec_cb, &r, &r.t) == 0);
	uint64_t t0 = mark(loop);
	CHECK_EQ(weft_timer_start(r.t, 60, 0), 0);
	int ret = weft_loop_run(loop, WEFT_RUN_ONCE);
	uint64_t el = t_now_ms() - t0;
	/* it waited for the timer instead of returning empty-handed */
	CHECK(el >= 60);
	CHECK(el <= 60 + late_ms);
	if (r.calls == 0) {
		/* the timer's deadline passed during the wait; the callback is then
		 * due at once on the next iteration, with no more waiting */
		printf("# ONCE returned after the wait without running the timer\n");
		CHECK_EQ(ret, 1);
		uint64_t t1 = t_now_ms();
		ret = weft_loop_run(loop, WEFT_RUN_ONCE);
		CHECK(t_now_ms() - t1 < 30);
	}
	CHECK_EQ(r.calls, 1);
	CHECK_EQ(ret, 0);
	if (r.calls)
		CHECK(r.at[0] >= t0 + 60);

	/* ONCE with io: blocks until the fd is ready */
	int sv[2];
	REQUIRE(mk_sp(sv) == 0);
	struct iorec io = { .action = ACT_READ_STOP };
	REQUIRE(weft_io_new(loop, sv[0], iorec_cb, &io, &io.io) == 0);
	CHECK_EQ(weft_io_start(io.io, WEFT_IO_READ), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(io.calls, 0);
	xwrite(sv[1], "k");
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 0);
	CHECK_EQ(io.calls, 1);
	weft_io_free(io.io);
	xclose2(sv);

	weft_timer_free(r.t);
	FREE_LOOP(loop);
}

static void test_run_nowait(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	int n = 0;
	weft_timer *t;
	REQUIRE(weft_timer_new(loop, count_timer_cb, &n, &t) == 0);
	CHECK_EQ(weft_timer_start(t, 300, 0), 0);
	int sv[2];
	REQUIRE(mk_sp(sv) == 0);
	weft_io *io;
	REQUIRE(weft_io_new(loop, sv[0], nop_io_cb, NULL, &io) == 0);
	CHECK_EQ(weft_io_start(io, WEFT_IO_READ), 0);

	uint64_t t0 = t_now_ms();
	for (int i = 0; i < 10; i++)
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(weft_loop_dispatch(loop), 1);
	CHECK(t_now_ms() - t0 < 100);
	CHECK_EQ(n, 0);

	weft_io_free(io);
	weft_timer_free(t);
	xclose2(sv);
	FREE_LOOP(loop);
}

struct stopper {
	weft_loop *loop;
	int calls;
	int stop_at;
};

static void stopper_timer_cb(weft_timer *t, void *data)
{
	(void)t;
	struct stopper *s = data;
	s->calls++;
	if (s->calls % s->stop_at == 0)
		weft_loop_stop(s->loop);
}

static void stopper_defer_cb(weft_defer *d, void *data)
{
	struct stopper *s = data;
	s->calls++;
	weft_loop_stop(s->loop);
	weft_defer_schedule(d); /* would run forever without the stop */
}

static void test_loop_stop(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	struct stopper s = { .loop = loop, .stop_at = 3 };
	weft_timer *t;
	REQUIRE(weft_timer_new(loop, stopper_timer_cb, &s, &t) == 0);
	CHECK_EQ(weft_timer_start(t, 5, 5), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 1); /* the timer is still active */
	CHECK_EQ(s.calls, 3);
	/* the stop request is spent: the next run goes on */
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 1);
	CHECK_EQ(s.calls, 6);
	weft_timer_free(t);

	struct stopper s2 = { .loop = loop };
	weft_defer *d;
	REQUIRE(weft_defer_new(loop, stopper_defer_cb, &s2, &d) == 0);
	weft_defer_schedule(d);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 1);
	CHECK_EQ(s2.calls, 1);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 1);
	CHECK_EQ(s2.calls, 2);
	weft_defer_free(d);
	FREE_LOOP(loop);
}

static void test_unref(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);

	/* an unref'd timer does not keep DEFAULT alive */
	int long_n = 0, short_n = 0;
	weft_timer *lt, *st;
	REQUIRE(weft_timer_new(loop, count_timer_cb, &long_n, &lt) == 0);
	REQUIRE(weft_timer_new(loop, count_timer_cb, &short_n, &st) == 0);
	CHECK_EQ(weft_timer_start(lt, 5000, 0), 0);
	weft_timer_set_ref(lt, false);
	CHECK(!weft_loop_alive(loop));
	CHECK_EQ(weft_timer_start(st, 20, 0), 0);
	CHECK(weft_loop_alive(loop));
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK(t_now_ms() - t0 < 1000);
	CHECK_EQ(short_n, 1);
	CHECK_EQ(long_n, 0);
	CHECK(weft_timer_active(lt)); /* still works, just unref'd */
	weft_timer_set_ref(lt, true);
	CHECK(weft_loop_alive(loop));
	weft_timer_set_ref(lt, false);
	/* an unref'd timer still fires */
	CHECK_EQ(weft_timer_start(lt, 0, 0), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(long_n, 1);
	weft_timer_free(lt);
	weft_timer_free(st);

	/* an unref'd io watcher */
	int sv[2];
	REQUIRE(mk_sp(sv) == 0);
	struct iorec r = { .action = ACT_READ };
	REQUIRE(weft_io_new(loop, sv[0], iorec_cb, &r, &r.io) == 0);
	CHECK_EQ(weft_io_start(r.io, WEFT_IO_READ), 0);
	weft_io_set_ref(r.io, false);
	CHECK(!weft_loop_alive(loop));
	t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK(t_now_ms() - t0 < 500);
	xwrite(sv[1], "u");
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 0);
	CHECK_EQ(r.calls, 1);
	weft_io_set_ref(r.io, true);
	CHECK(weft_loop_alive(loop));
	weft_io_free(r.io);
	xclose2(sv);

	/* an unref'd signal watcher and async handle */
	weft_signal *sig;
	weft_async *as;
	REQUIRE(weft_signal_new(loop, nop_signal_cb, NULL, &sig) == 0);
	REQUIRE(weft_async_new(loop, nop_async_cb, NULL, &as) == 0);
	CHECK(weft_loop_alive(loop)); /* an async handle is active until freed */
	weft_async_set_ref(as, false);
	CHECK(!weft_loop_alive(loop));
	CHECK_EQ(weft_signal_start(sig, SIGUSR1), 0);
	CHECK(weft_loop_alive(loop));
	weft_signal_set_ref(sig, false);
	CHECK(!weft_loop_alive(loop));
	t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK(t_now_ms() - t0 < 500);
	weft_signal_free(sig);
	weft_async_free(as);
	CHECK(!sig_blocked(SIGUSR1));
	FREE_LOOP(loop);
}

struct reent_ctx {
	weft_loop *loop;
	int calls;
	int r[4];
};

/* From inside a callback: every way of running the loop again. */
static void reent_all(struct reent_ctx *c)
{
	c->calls++;
	c->r[0] = weft_loop_run(c->loop, WEFT_RUN_NOWAIT);
	c->r[1] = weft_loop_run(c->loop, WEFT_RUN_DEFAULT);
	c->r[2] = weft_loop_run(c->loop, WEFT_RUN_ONCE);
	c->r[3] = weft_loop_dispatch(c->loop);
}

static void reent_timer_cb(weft_timer *t, void *data)
{
	(void)t;
	reent_all(data);
}

static void reent_io_cb(weft_io *io, unsigned revents, void *data)
{
	(void)revents;
	reent_all(data);
	weft_io_stop(io);
}

static void test_run_reentrant(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	struct reent_ctx c = { .loop = loop };
	weft_timer *t;
	REQUIRE(weft_timer_new(loop, reent_timer_cb, &c, &t) == 0);
	CHECK_EQ(weft_timer_start(t, 0, 0), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(c.calls, 1);
	for (int i = 0; i < 4; i++)
		CHECK_EQ(c.r[i], -EBUSY);
	weft_timer_free(t);

	int sv[2];
	REQUIRE(mk_sp(sv) == 0);
	struct reent_ctx c2 = { .loop = loop };
	weft_io *io;
	REQUIRE(weft_io_new(loop, sv[0], reent_io_cb, &c2, &io) == 0);
	CHECK_EQ(weft_io_start(io, WEFT_IO_WRITE), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(c2.calls, 1);
	for (int i = 0; i < 4; i++)
		CHECK_EQ(c2.r[i], -EBUSY);
	weft_io_free(io);
	xclose2(sv);

	/* after all that, the loop runs normally */
	int n = 0;
	CHECK_EQ(weft_loop_call_soon(loop, count_call_cb, &n), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(n, 1);
	FREE_LOOP(loop);
}

/* ======================================================================== */
/* async and wakeup                                                          */
/* ======================================================================== */

struct thr {
	weft_loop *loop;
	weft_async *async;
	unsigned delay_ms;
	int sends;
	int ret;
	atomic_int *done;
};

static void *thr_send(void *arg)
{
	struct thr *t = arg;
	t_sleep_ms(t->delay_ms);
	for (int i = 0; i < t->sends; i++) {
		int r = weft_async_send(t->async);
		if (r != 0)
			t->ret = r;
	}
	if (t->done) {
		atomic_fetch_add(t->done, 1);
		int r = weft_async_send(t->async); /* wake the loop to see "done" */
		if (r != 0)
			t->ret = r;
	}
	return NULL;
}

static void *thr_wakeup(void *arg)
{
	struct thr *t = arg;
	t_sleep_ms(t->delay_ms);
	t->ret = weft_loop_wakeup(t->loop);
	return NULL;
}

struct async_ctx {
	weft_loop *loop;
	int calls;
	bool stop;
};

/* Run the loop in `mode` (which must return 1) while a thread runs fn(th);
 * *el is how long the run took (ms).  False if the thread cannot start. */
static bool run_with_thread(weft_loop *loop, weft_run_mode mode, void *(*fn)(void *),
			    struct thr *th, uint64_t *el)
{
	pthread_t tid;
	if (pthread_create(&tid, NULL, fn, th) != 0)
		return false;
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, mode), 1);
	*el = t_now_ms() - t0;
	pthread_join(tid, NULL);
	return true;
}

static void async_cb(weft_async *a, void *data)
{
	(void)a;
	struct async_ctx *c = data;
	c->calls++;
	if (c->stop)
		weft_loop_stop(c->loop);
}

static void test_async_thread(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	weft_timer *guard = guard_start(loop);
	struct async_ctx c = { .loop = loop, .stop = true };
	weft_async *a;
	REQUIRE(weft_async_new(loop, async_cb, &c, &a) == 0);
	CHECK(weft_loop_alive(loop));

	/* DEFAULT blocks until the other thread sends */
	struct thr th = { .async = a, .delay_ms = 50, .sends = 1 };
	uint64_t el;
	REQUIRE(run_with_thread(loop, WEFT_RUN_DEFAULT, thr_send, &th, &el));
	CHECK_EQ(th.ret, 0);
	CHECK_EQ(c.calls, 1);
	CHECK(el >= 40 && el < 2000);

	/* ONCE blocks until the send too */
	c.stop = false;
	th.delay_ms = 30;
	REQUIRE(run_with_thread(loop, WEFT_RUN_ONCE, thr_send, &th, &el));
	CHECK_EQ(c.calls, 2);
	CHECK(el >= 20 && el < 2000);

	weft_async_free(a);
	CHECK(!weft_loop_alive(loop));
	weft_timer_free(guard);
	FREE_LOOP(loop);
}

static void self_free_async_cb(weft_async *a, void *data)
{
	(*(int *)data)++;
	weft_async_free(a);
}

static void test_async_coalesce(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	struct async_ctx c = { .loop = loop };
	weft_async *a;
	REQUIRE(weft_async_new(loop, async_cb, &c, &a) == 0);

	/* from the loop thread */
	for (int i = 0; i < 5; i++)
		CHECK_EQ(weft_async_send(a), 0);
	CHECK_EQ(c.calls, 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(c.calls, 1);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(c.calls, 1);

	/* 1000 sends from another thread, all before the loop looks */
	struct thr th = { .async = a, .sends = 1000 };
	pthread_t tid;
	REQUIRE(pthread_create(&tid, NULL, thr_send, &th) == 0);
	pthread_join(tid, NULL);
	CHECK_EQ(th.ret, 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(c.calls, 2);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(c.calls, 2);

	/* 4 threads sending concurrently while the loop runs */
	atomic_int done = 0;
	struct thr ths[4];
	pthread_t tids[4];
	for (int i = 0; i < 4; i++) {
		ths[i] = (struct thr){ .async = a, .sends = 2000, .done = &done };
		REQUIRE(pthread_create(&tids[i], NULL, thr_send, &ths[i]) == 0);
	}
	int rounds = 0;
	while (atomic_load(&done) < 4) {
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
		rounds++;
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(tids[i], NULL);
		CHECK_EQ(ths[i].ret, 0);
	}
	weft_loop_run(loop, WEFT_RUN_NOWAIT);
	CHECK(c.calls > 2);
	CHECK(c.calls <= 2 + 4 * 2001);
	printf("# 8004 concurrent sends → %d callbacks\n", c.calls - 2);
	weft_async_free(a);

	/* an async handle may free itself in its callback */
	int n = 0;
	REQUIRE(weft_async_new(loop, self_free_async_cb, &n, &a) == 0);
	CHECK_EQ(weft_async_send(a), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(n, 1);
	FREE_LOOP(loop);
}

struct async_pair {
	weft_async *a[2];
	int calls[2];
};

static void async_pair_cb(weft_async *a, void *data)
{
	struct async_pair *c = data;
	int i = a == c->a[0] ? 0 : 1;
	c->calls[i]++;
	if (c->calls[0] + c->calls[1] == 1) {
		weft_async_free(c->a[1 - i]);
		c->a[1 - i] = NULL;
	}
}

static weft_async *g_sig_async;
static weft_loop *g_sig_loop;
static volatile sig_atomic_t g_sig_ret = 1;

static void async_signal_handler(int signum)
{
	(void)signum;
	int saved = errno;
	int r1 = weft_async_send(g_sig_async);
	int r2 = weft_loop_wakeup(g_sig_loop);
	g_sig_ret = r1 ? r1 : r2;
	errno = saved;
}

static void test_async_free_other_and_signal_handler(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);

	/* both pending; the first callback frees the other: it must not run */
	struct async_pair c = { 0 };
	REQUIRE(weft_async_new(loop, async_pair_cb, &c, &c.a[0]) == 0);
	REQUIRE(weft_async_new(loop, async_pair_cb, &c, &c.a[1]) == 0);
	CHECK_EQ(weft_async_send(c.a[1]), 0);
	CHECK_EQ(weft_async_send(c.a[0]), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(c.calls[0] + c.calls[1], 1);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(c.calls[0] + c.calls[1], 1);
	weft_async_free(c.a[0]);
	weft_async_free(c.a[1]);

	/* send and wakeup are async-signal-safe: call them from a handler */
	struct async_ctx ac = { .loop = loop };
	weft_async *a;
	REQUIRE(weft_async_new(loop, async_cb, &ac, &a) == 0);
	g_sig_async = a;
	g_sig_loop = loop;
	struct sigaction sa = { .sa_handler = async_signal_handler }, old;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGURG, &sa, &old);
	set_sig_blocked(SIGURG, false);
	raise(SIGURG);
	CHECK_EQ(g_sig_ret, 0);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
	CHECK(t_now_ms() - t0 < 1000);
	CHECK_EQ(ac.calls, 1);
	sigaction(SIGURG, &old, NULL);
	g_sig_async = NULL;
	g_sig_loop = NULL;
	weft_async_free(a);
	FREE_LOOP(loop);
}

static void test_loop_wakeup(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	int n = 0;
	weft_timer *t;
	REQUIRE(weft_timer_new(loop, count_timer_cb, &n, &t) == 0);
	CHECK_EQ(weft_timer_start(t, 5000, 0), 0);

	struct thr th = { .loop = loop, .delay_ms = 50 };
	uint64_t el;
	REQUIRE(run_with_thread(loop, WEFT_RUN_ONCE, thr_wakeup, &th, &el));
	CHECK_EQ(th.ret, 0);
	CHECK(el >= 40 && el < 2000);
	CHECK_EQ(n, 0);

	/* the wake-up is consumed: a following NOWAIT has nothing to do and
	 * the one after that still does not block */
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK(t_now_ms() - t0 < 100);
	weft_timer_free(t);
	FREE_LOOP(loop);
}

/* ======================================================================== */
/* signals                                                                   */
/* ======================================================================== */

struct sigrec {
	weft_signal *s;
	int calls;
	int signum;
	struct sigrec *other; /* stopped by the first callback, if set */
	bool *first_done;
};

static void sigrec_cb(weft_signal *s, int signum, void *data)
{
	struct sigrec *r = data;
	CHECK(s == r->s);
	r->calls++;
	r->signum = signum;
	if (r->other && r->first_done && !*r->first_done) {
		*r->first_done = true;
		weft_signal_stop(r->other->s);
	}
}

static void test_signal_basic(void)
{
	stray_signals = 0;
	set_sig_blocked(SIGUSR1, false);
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	weft_timer *guard = guard_start(loop);
	struct sigrec r = { 0 };
	REQUIRE(weft_signal_new(loop, sigrec_cb, &r, &r.s) == 0);
	CHECK_EQ(weft_signal_start(r.s, 0), -EINVAL);
	CHECK_EQ(weft_signal_start(r.s, 1000), -EINVAL);
	CHECK_EQ(weft_signal_start(r.s, -3), -EINVAL);
	CHECK(!weft_loop_alive(loop));

	CHECK_EQ(weft_signal_start(r.s, SIGUSR1), 0);
	CHECK(sig_blocked(SIGUSR1));
	CHECK(weft_loop_alive(loop));
	raise(SIGUSR1);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
	CHECK_EQ(r.calls, 1);
	CHECK_EQ(r.signum, SIGUSR1);
	kill(getpid(), SIGUSR1);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
	CHECK_EQ(r.calls, 2);
	CHECK_EQ(r.signum, SIGUSR1);

	weft_signal_stop(r.s);
	CHECK(!sig_blocked(SIGUSR1));
	CHECK(!weft_loop_alive(loop));
	weft_signal_stop(r.s); /* idempotent */
	CHECK_EQ(stray_signals, 0);

	/* raised but never dispatched: stopping the last watcher consumes it */
	CHECK_EQ(weft_signal_start(r.s, SIGUSR1), 0);
	raise(SIGUSR1);
	weft_signal_stop(r.s);
	CHECK(!sig_blocked(SIGUSR1));
	CHECK_EQ(stray_signals, 0);
	CHECK_EQ(r.calls, 2);

	/* restarting a watcher on another signal moves the block */
	set_sig_blocked(SIGUSR2, false);
	CHECK_EQ(weft_signal_start(r.s, SIGUSR1), 0);
	CHECK_EQ(weft_signal_start(r.s, SIGUSR2), 0);
	CHECK(!sig_blocked(SIGUSR1));
	CHECK(sig_blocked(SIGUSR2));
	kill(getpid(), SIGUSR2);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
	CHECK_EQ(r.calls, 3);
	CHECK_EQ(r.signum, SIGUSR2);
	weft_signal_stop(r.s);
	CHECK(!sig_blocked(SIGUSR2));

	/* free while started restores the mask too */
	CHECK_EQ(weft_signal_start(r.s, SIGUSR1), 0);
	weft_signal_free(r.s);
	CHECK(!sig_blocked(SIGUSR1));
	CHECK_EQ(stray_signals, 0);
	weft_timer_free(guard);
	FREE_LOOP(loop);
}

static void test_signal_two_watchers(void)
{
	stray_signals = 0;
	set_sig_blocked(SIGUSR2, false);
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	weft_timer *guard = guard_start(loop);
	struct sigrec a = { 0 }, b = { 0 };
	REQUIRE(weft_signal_new(loop, sigrec_cb, &a, &a.s) == 0);
	REQUIRE(weft_signal_new(loop, sigrec_cb, &b, &b.s) == 0);
	CHECK_EQ(weft_signal_start(a.s, SIGUSR2), 0);
	CHECK_EQ(weft_signal_start(b.s, SIGUSR2), 0);
	kill(getpid(), SIGUSR2);
	for (int i = 0; i < 3 && (a.calls == 0 || b.calls == 0); i++)
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
	CHECK_EQ(a.calls, 1);
	CHECK_EQ(b.calls, 1);
	CHECK_EQ(a.signum, SIGUSR2);
	CHECK_EQ(b.signum, SIGUSR2);

	/* one stops: the signal stays blocked for the other */
	weft_signal_stop(a.s);
	CHECK(sig_blocked(SIGUSR2));
	kill(getpid(), SIGUSR2);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
	CHECK_EQ(a.calls, 1);
	CHECK_EQ(b.calls, 2);
	weft_signal_stop(b.s);
	CHECK(!sig_blocked(SIGUSR2));

	/* a watcher stopped by the other's callback in the same iteration */
	bool first_done = false;
	a.other = &b;
	b.other = &a;
	a.first_done = b.first_done = &first_done;
	a.calls = b.calls = 0;
	CHECK_EQ(weft_signal_start(a.s, SIGUSR2), 0);
	CHECK_EQ(weft_signal_start(b.s, SIGUSR2), 0);
	kill(getpid(), SIGUSR2);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
	CHECK_EQ(a.calls + b.calls, 1);
	weft_signal_stop(a.s);
	weft_signal_stop(b.s);
	CHECK(!sig_blocked(SIGUSR2));

	/* "previous state": blocked before → still blocked after */
	set_sig_blocked(SIGUSR2, true);
	CHECK_EQ(weft_signal_start(a.s, SIGUSR2), 0);
	weft_signal_stop(a.s);
	CHECK(sig_blocked(SIGUSR2));
	CHECK(!sig_pending(SIGUSR2));
	set_sig_blocked(SIGUSR2, false);

	/* two different signals on one loop */
	a.other = b.other = NULL;
	a.calls = b.calls = 0;
	CHECK_EQ(weft_signal_start(a.s, SIGUSR1), 0);
	CHECK_EQ(weft_signal_start(b.s, SIGUSR2), 0);
	kill(getpid(), SIGUSR2);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), 1);
	CHECK_EQ(a.calls, 0);
	CHECK_EQ(b.calls, 1);
	CHECK_EQ(b.signum, SIGUSR2);
	weft_signal_free(a.s);
	weft_signal_free(b.s);
	CHECK(!sig_blocked(SIGUSR1));
	CHECK(!sig_blocked(SIGUSR2));
	CHECK_EQ(stray_signals, 0);
	weft_timer_free(guard);
	FREE_LOOP(loop);
}

/* ======================================================================== */
/* nesting through one fd                                                    */
/* ======================================================================== */

struct nest_ctx {
	int efd;
	int io_calls;
	int timer_calls;
	uint64_t timer_at;
	int readable_after_stop;
};

static void nest_io_cb(weft_io *io, unsigned revents, void *data)
{
	(void)revents;
	struct nest_ctx *c = data;
	c->io_calls++;
	/* the data stays unread: only the stop makes the epoll fd quiet, and
	 * that must hold at once, inside the callback */
	weft_io_stop(io);
	c->readable_after_stop = poll_fd(c->efd, 0);
}

static void nest_timer_cb(weft_timer *t, void *data)
{
	(void)t;
	struct nest_ctx *c = data;
	c->timer_calls++;
	c->timer_at = t_now_ms();
}

static void test_nest_fd(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	int efd = weft_loop_get_fd(loop);
	REQUIRE(efd >= 0);
	CHECK_EQ(weft_loop_get_timeout(loop), -1);
	CHECK_EQ(poll_fd(efd, 0), 0);

	int sv[2];
	REQUIRE(mk_sp(sv) == 0);
	struct nest_ctx c = { .efd = efd };
	weft_io *io;
	weft_timer *t;
	REQUIRE(weft_io_new(loop, sv[0], nest_io_cb, &c, &io) == 0);
	REQUIRE(weft_timer_new(loop, nest_timer_cb, &c, &t) == 0);
	uint64_t t0 = mark(loop);
	CHECK_EQ(weft_timer_start(t, 50, 0), 0);
	CHECK_EQ(weft_io_start(io, WEFT_IO_READ), 0);
	int64_t to = weft_loop_get_timeout(loop);
	CHECK(to > 0 && to <= 50);
	/* the epoll_ctl is done at once: readiness shows on the fd without a
	 * dispatch in between */
	CHECK_EQ(poll_fd(efd, 0), 0);
	xwrite(sv[1], "n");
	CHECK_EQ(poll_fd(efd, 0), 1);
	weft_io_stop(io);
	CHECK_EQ(poll_fd(efd, 0), 0);
	CHECK_EQ(weft_io_start(io, WEFT_IO_READ), 0);
	CHECK_EQ(poll_fd(efd, 0), 1);

	uint64_t limit = t_now_ms() + 3000;
	int readable = 0;
	while ((c.io_calls == 0 || c.timer_calls == 0) && t_now_ms() < limit) {
		to = weft_loop_get_timeout(loop);
		int ms = (to < 0 || to > 1000) ? 1000 : (int)to;
		if (poll_fd(efd, ms) == 1)
			readable++;
		CHECK(weft_loop_dispatch(loop) >= 0);
	}
	CHECK_EQ(c.io_calls, 1);
	CHECK_EQ(c.readable_after_stop, 0);
	CHECK_EQ(c.timer_calls, 1);
	CHECK(readable >= 1);
	CHECK(c.timer_at >= t0 + 50);
	CHECK(c.timer_at <= t0 + 50 + late_ms);
	/* nothing pending: wait for the fd only */
	CHECK_EQ(weft_loop_get_timeout(loop), -1);
	CHECK_EQ(poll_fd(efd, 0), 0);

	/* a deferred call makes the timeout 0 (no fd signals it) */
	int dn = 0;
	weft_defer *d;
	REQUIRE(weft_defer_new(loop, count_defer_cb, &dn, &d) == 0);
	weft_defer_schedule(d);
	CHECK_EQ(weft_loop_get_timeout(loop), 0);
	CHECK(weft_loop_dispatch(loop) >= 0);
	CHECK_EQ(dn, 1);
	CHECK_EQ(weft_loop_get_timeout(loop), -1);
	CHECK_EQ(weft_loop_call_soon(loop, count_call_cb, &dn), 0);
	CHECK_EQ(weft_loop_get_timeout(loop), 0);
	CHECK_EQ(weft_loop_dispatch(loop), 0);
	CHECK_EQ(dn, 2);
	CHECK_EQ(weft_loop_get_timeout(loop), -1);

	weft_defer_free(d);
	weft_io_free(io);
	weft_timer_free(t);
	xclose2(sv);
	FREE_LOOP(loop);
}

static void test_nest_wakeup(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	int efd = weft_loop_get_fd(loop);
	REQUIRE(efd >= 0);
	struct async_ctx c = { .loop = loop };
	weft_async *a;
	REQUIRE(weft_async_new(loop, async_cb, &c, &a) == 0);
	CHECK(weft_loop_dispatch(loop) >= 0);
	CHECK_EQ(poll_fd(efd, 0), 0);

	/* weft_loop_wakeup from a thread makes the outer poll return */
	struct thr th = { .loop = loop, .delay_ms = 50 };
	pthread_t tid;
	REQUIRE(pthread_create(&tid, NULL, thr_wakeup, &th) == 0);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(poll_fd(efd, 3000), 1);
	CHECK(t_now_ms() - t0 < 2000);
	pthread_join(tid, NULL);
	CHECK_EQ(th.ret, 0);
	CHECK_EQ(weft_loop_dispatch(loop), 1);
	/* drained by the dispatch: no busy loop for the outer poll */
	CHECK_EQ(poll_fd(efd, 0), 0);

	/* an async send does the same, and its callback runs in the dispatch */
	struct thr th2 = { .async = a, .delay_ms = 30, .sends = 3 };
	REQUIRE(pthread_create(&tid, NULL, thr_send, &th2) == 0);
	t0 = t_now_ms();
	CHECK_EQ(poll_fd(efd, 3000), 1);
	CHECK(t_now_ms() - t0 < 2000);
	pthread_join(tid, NULL);
	CHECK_EQ(weft_loop_dispatch(loop), 1);
	CHECK_EQ(c.calls, 1);
	CHECK_EQ(poll_fd(efd, 0), 0);

	/* a signal makes the fd readable too */
	stray_signals = 0;
	struct sigrec sr = { 0 };
	REQUIRE(weft_signal_new(loop, sigrec_cb, &sr, &sr.s) == 0);
	CHECK_EQ(weft_signal_start(sr.s, SIGUSR1), 0);
	raise(SIGUSR1);
	CHECK_EQ(poll_fd(efd, 1000), 1);
	CHECK_EQ(weft_loop_dispatch(loop), 1);
	CHECK_EQ(sr.calls, 1);
	CHECK_EQ(poll_fd(efd, 0), 0);
	weft_signal_free(sr.s);
	CHECK_EQ(stray_signals, 0);

	weft_async_free(a);
	FREE_LOOP(loop);
}

/* ======================================================================== */
/* the external backend                                                      */
/* ======================================================================== */

#define EXT_MAXFD 4096
#define EXT_MAXCALLS 512

struct ext_call {
	int fd;
	unsigned events;
	void *fd_data;
	unsigned seq;
};

struct ext {
	weft_loop *loop;
	unsigned events[EXT_MAXFD];
	void *fd_data[EXT_MAXFD];
	bool ever[EXT_MAXFD];
	unsigned seq;
	struct ext_call calls[EXT_MAXCALLS];
	int ncalls;
	int64_t timer_ms;
	uint64_t timer_at;
	int timer_calls;
	int bad_fd;
	int closed_fd;
	int wrong_loop;
	int fail_fd;
	int fail_err;
	int released;
	int watched_at_release;
	bool no_release;
};

static int ext_watch(weft_loop *loop, int fd, unsigned events, void *fd_data, void *user)
{
	struct ext *e = user;
	if (e->loop && loop != e->loop)
		e->wrong_loop++;
	if (fd < 0 || fd >= EXT_MAXFD) {
		e->bad_fd++;
		return -EINVAL;
	}
	if (!fd_open(fd)) /* announced after close, or removed after close */
		e->closed_fd++;
	if (events & ~(unsigned)RW)
		e->bad_fd++;
	if (events && fd == e->fail_fd)
		return e->fail_err;
	e->seq++;
	if (e->ncalls < EXT_MAXCALLS)
		e->calls[e->ncalls++] = (struct ext_call){ fd, events, fd_data, e->seq };
	e->events[fd] = events;
	e->fd_data[fd] = fd_data;
	if (events)
		e->ever[fd] = true;
	return 0;
}

static void ext_timer(weft_loop *loop, int64_t ms, void *user)
{
	struct ext *e = user;
	if (e->loop && loop != e->loop)
		e->wrong_loop++;
	e->timer_ms = ms;
	e->timer_at = t_now_ms();
	e->timer_calls++;
}

static void ext_release(weft_loop *loop, void *user)
{
	struct ext *e = user;
	if (e->loop && loop != e->loop)
		e->wrong_loop++;
	e->released++;
	/* called after every fd was removed */
	for (int fd = 0; fd < EXT_MAXFD; fd++)
		e->watched_at_release += e->events[fd] != 0;
}

static const weft_loop_ops ext_ops = { .watch = ext_watch, .timer = ext_timer,
				       .release = ext_release };
static const weft_loop_ops ext_ops_norelease = { .watch = ext_watch, .timer = ext_timer };

static int ext_init(struct ext *e, weft_loop **ret)
{
	bool no_release = e->no_release;
	memset(e, 0, sizeof *e);
	e->no_release = no_release;
	e->timer_ms = -1;
	e->fail_fd = -1;
	int r = weft_loop_new_external(e->no_release ? &ext_ops_norelease : &ext_ops, e, ret);
	if (r == 0)
		e->loop = *ret;
	return r;
}

/* A zeroed struct ext driving a new external loop; NULL if either fails. */
static struct ext *ext_new(weft_loop **loop)
{
	struct ext *e = calloc(1, sizeof *e);
	if (e != NULL && ext_init(e, loop) != 0) {
		free(e);
		return NULL;
	}
	return e;
}

static const struct ext_call *ext_last(const struct ext *e, int fd)
{
	for (int i = e->ncalls - 1; i >= 0; i--)
		if (e->calls[i].fd == fd)
			return &e->calls[i];
	return NULL;
}

static bool ext_timer_due(const struct ext *e)
{
	return e->timer_ms >= 0 && t_now_ms() >= e->timer_at + (uint64_t)e->timer_ms;
}

/* One round of the embedding program's own poll() loop. */
static void ext_round(struct ext *e, int max_ms)
{
	struct pollfd pfd[64];
	int n = 0;
	for (int fd = 0; fd < EXT_MAXFD && n < 64; fd++) {
		if (!e->events[fd])
			continue;
		pfd[n].fd = fd;
		pfd[n].events = (short)((e->events[fd] & WEFT_IO_READ ? POLLIN : 0) |
					(e->events[fd] & WEFT_IO_WRITE ? POLLOUT : 0));
		pfd[n].revents = 0;
		n++;
	}
	int wait = max_ms;
	if (e->timer_ms >= 0) {
		uint64_t due = e->timer_at + (uint64_t)e->timer_ms, now = t_now_ms();
		int left = due > now ? (int)(due - now) : 0;
		if (left < wait)
			wait = left;
	}
	int r = poll(pfd, (nfds_t)n, wait);
	CHECK(r >= 0);
	for (int i = 0; i < n && r > 0; i++) {
		if (!pfd[i].revents || !e->events[pfd[i].fd])
			continue; /* a callback stopped it meanwhile */
		unsigned rev = 0;
		if (pfd[i].revents & POLLIN)
			rev |= WEFT_IO_READ;
		if (pfd[i].revents & POLLOUT)
			rev |= WEFT_IO_WRITE;
		if (pfd[i].revents & POLLERR)
			rev |= WEFT_IO_ERR;
		if (pfd[i].revents & POLLHUP)
			rev |= WEFT_IO_HUP;
		CHECK_EQ(weft_loop_process_fd(e->loop, pfd[i].fd, rev), 0);
	}
	if (ext_timer_due(e))
		CHECK_EQ(weft_loop_process_timeout(e->loop), 0);
}

/* After the loop is gone: nothing may remain watched, nothing touched a
 * closed fd, every call came with the right loop. */
static void ext_check_clean(const struct ext *e)
{
	int left = 0;
	for (int fd = 0; fd < EXT_MAXFD; fd++)
		if (e->events[fd]) {
			printf("# fd %d still watched (events 0x%x) after weft_loop_free\n", fd,
			       e->events[fd]);
			left++;
		}
	CHECK_EQ(left, 0);
	CHECK_EQ(e->released, e->no_release ? 0 : 1);
	CHECK_EQ(e->watched_at_release, 0);
	CHECK_EQ(e->closed_fd, 0);
	CHECK_EQ(e->bad_fd, 0);
	CHECK_EQ(e->wrong_loop, 0);
}

/* Free the loop, check that the embedding saw a clean end, free e. */
static void ext_free(struct ext *e, weft_loop *loop)
{
	FREE_LOOP(loop);
	ext_check_clean(e);
	free(e);
}

static void test_ext_basic(void)
{
	weft_loop *loop = (weft_loop *)&loop;
	struct ext *e = calloc(1, sizeof *e);
	REQUIRE(e != NULL);
	weft_loop_ops bad = { .watch = NULL, .timer = ext_timer, .release = ext_release };
	CHECK_EQ(weft_loop_new_external(NULL, e, &loop), -EINVAL);
	CHECK_EQ(weft_loop_new_external(&bad, e, &loop), -EINVAL);
	bad = (weft_loop_ops){ .watch = ext_watch, .timer = NULL, .release = ext_release };
	CHECK_EQ(weft_loop_new_external(&bad, e, &loop), -EINVAL);
	CHECK(loop == (weft_loop *)&loop); /* out-parameter untouched on failure */
	CHECK_EQ(e->released, 0);          /* release not called on failure */

	/* ops are copied: the caller's struct may go away */
	weft_loop_ops *ops = malloc(sizeof *ops);
	REQUIRE(ops != NULL);
	*ops = ext_ops_norelease;
	weft_loop *l2 = NULL;
	int r = weft_loop_new_external(ops, e, &l2);
	memset(ops, 0, sizeof *ops);
	free(ops);
	CHECK_EQ(r, 0);
	if (r == 0) {
		int n = 0;
		CHECK_EQ(weft_loop_call_soon(l2, count_call_cb, &n), 0);
		CHECK_EQ(weft_loop_process_timeout(l2), 0);
		CHECK_EQ(n, 1);
		FREE_LOOP(l2); /* release == NULL is fine */
	}

	if (ext_init(e, &loop) != 0) {
		free(e);
		REQUIRE(!"weft_loop_new_external");
	}
	CHECK_EQ(weft_loop_get_fd(loop), -EINVAL);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), -EINVAL);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_ONCE), -EINVAL);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), -EINVAL);
	CHECK_EQ(weft_loop_dispatch(loop), -EINVAL);
	CHECK_EQ(e->timer_ms, -1); /* nothing to time */
	CHECK(!weft_loop_alive(loop));
	CHECK_EQ(weft_loop_process_timeout(loop), 0);
	ext_free(e, loop);
}

struct ext_io_ctx {
	struct ext *e;
	int fd;
	int phase;
	int calls;
	unsigned revs[8];
};

static void ext_io_cb(weft_io *io, unsigned revents, void *data)
{
	struct ext_io_ctx *c = data;
	struct ext *e = c->e;
	if (c->calls < 8)
		c->revs[c->calls] = revents;
	c->calls++;
	if (c->phase == 0 && (revents & WEFT_IO_READ)) {
		char b[64];
		CHECK(read(c->fd, b, sizeof b) > 0);
		unsigned before = ++e->seq;
		CHECK_EQ(weft_io_modify(io, RW), 0);
		unsigned after = ++e->seq;
		/* reported synchronously, from inside the modify */
		const struct ext_call *k = ext_last(e, c->fd);
		CHECK(k != NULL && k->events == RW && k->seq > before && k->seq < after);
		CHECK_EQ(e->events[c->fd], RW);
		c->phase = 1;
	} else if (c->phase == 1 && (revents & WEFT_IO_WRITE)) {
		unsigned before = ++e->seq;
		weft_io_stop(io);
		unsigned after = ++e->seq;
		const struct ext_call *k = ext_last(e, c->fd);
		CHECK(k != NULL && k->events == 0 && k->seq > before && k->seq < after);
		CHECK_EQ(e->events[c->fd], 0);
		c->phase = 2;
	}
}

static void test_ext_io(void)
{
	weft_loop *loop;
	struct ext *e = ext_new(&loop);
	REQUIRE(e != NULL);
	int sv[2];
	REQUIRE(mk_sp(sv) == 0);
	struct ext_io_ctx c = { .e = e, .fd = sv[0] };
	weft_io *io;
	REQUIRE(weft_io_new(loop, sv[0], ext_io_cb, &c, &io) == 0);
	CHECK(ext_last(e, sv[0]) == NULL); /* a stopped watcher is not announced */

	/* start announces the fd before returning */
	CHECK_EQ(weft_io_start(io, WEFT_IO_READ), 0);
	const struct ext_call *k = ext_last(e, sv[0]);
	CHECK(k != NULL && k->events == WEFT_IO_READ);
	CHECK_EQ(e->events[sv[0]], WEFT_IO_READ);
	CHECK(weft_loop_alive(loop));

	/* nothing to read: no callback */
	ext_round(e, 20);
	CHECK_EQ(c.calls, 0);

	xwrite(sv[1], "ext");
	uint64_t limit = t_now_ms() + 2000;
	while (c.phase < 2 && t_now_ms() < limit)
		ext_round(e, 100);
	CHECK_EQ(c.phase, 2);
	CHECK_EQ(c.calls, 2);
	CHECK(c.revs[0] & WEFT_IO_READ);
	CHECK(c.revs[1] & WEFT_IO_WRITE);
	CHECK(!weft_loop_alive(loop));

	/* changes from outside callbacks are reported at once as well */
	CHECK_EQ(weft_io_start(io, WEFT_IO_WRITE), 0);
	CHECK_EQ(e->events[sv[0]], WEFT_IO_WRITE);
	CHECK_EQ(weft_io_modify(io, RW), 0);
	CHECK_EQ(e->events[sv[0]], RW);
	CHECK_EQ(weft_io_modify(io, WEFT_IO_READ), 0);
	CHECK_EQ(e->events[sv[0]], WEFT_IO_READ);
	/* free of a started watcher removes the fd before the owner closes it */
	weft_io_free(io);
	CHECK_EQ(e->events[sv[0]], 0);
	xclose2(sv);
	ext_free(e, loop);
}

struct ext_timer_ctx {
	struct ext *e;
	weft_defer *d;
	int timer_calls;
	uint64_t timer_at;
	int io_calls;
	int64_t timer_ms_in_cb;
};

static void ext_t_cb(weft_timer *t, void *data)
{
	(void)t;
	struct ext_timer_ctx *c = data;
	c->timer_calls++;
	c->timer_at = t_now_ms();
}

static void ext_t_io_cb(weft_io *io, unsigned revents, void *data)
{
	(void)revents;
	struct ext_timer_ctx *c = data;
	c->io_calls++;
	weft_io_stop(io);
	weft_defer_schedule(c->d);
}

static void test_ext_timer(void)
{
	weft_loop *loop;
	struct ext *e = ext_new(&loop);
	REQUIRE(e != NULL);
	CHECK_EQ(e->timer_ms, -1);
	struct ext_timer_ctx c = { .e = e };
	int dn = 0;
	weft_timer *t;
	REQUIRE(weft_timer_new(loop, ext_t_cb, &c, &t) == 0);
	REQUIRE(weft_defer_new(loop, count_defer_cb, &dn, &c.d) == 0);

	/* a timer: N */
	uint64_t t0 = mark(loop);
	CHECK_EQ(weft_timer_start(t, 100, 0), 0);
	CHECK(e->timer_ms > 0 && e->timer_ms <= 100);
	/* a deferred call: 0 */
	weft_defer_schedule(c.d);
	CHECK_EQ(e->timer_ms, 0);
	/* cancelled: N again */
	weft_defer_cancel(c.d);
	CHECK(e->timer_ms > 0 && e->timer_ms <= 100);
	/* 0, then process_timeout runs the deferred call and reports N afresh */
	weft_defer_schedule(c.d);
	CHECK_EQ(e->timer_ms, 0);
	int before = e->timer_calls;
	CHECK_EQ(weft_loop_process_timeout(loop), 0);
	CHECK_EQ(dn, 1);
	CHECK(e->timer_calls > before);
	CHECK(e->timer_ms > 0 && e->timer_ms <= 100);
	CHECK_EQ(c.timer_calls, 0);

	/* let the timer expire through the outer loop */
	uint64_t limit = t_now_ms() + 2000;
	while (c.timer_calls == 0 && t_now_ms() < limit)
		ext_round(e, 200);
	CHECK_EQ(c.timer_calls, 1);
	CHECK(c.timer_at >= t0 + 100);
	CHECK(c.timer_at <= t0 + 100 + late_ms);
	CHECK_EQ(e->timer_ms, -1); /* nothing left */

	/* stopping the only timer: -1 */
	CHECK_EQ(weft_timer_start(t, 1000, 0), 0);
	CHECK(e->timer_ms > 900 && e->timer_ms <= 1000);
	weft_timer_stop(t);
	CHECK_EQ(e->timer_ms, -1);

	/* a call_soon: 0, then -1 */
	CHECK_EQ(weft_loop_call_soon(loop, count_call_cb, &dn), 0);
	CHECK_EQ(e->timer_ms, 0);
	ext_round(e, 100);
	CHECK_EQ(dn, 2);
	CHECK_EQ(e->timer_ms, -1);

	/* a deferred call scheduled inside an io callback: 0 by the time
	 * process_fd returns */
	int sv[2];
	REQUIRE(mk_sp(sv) == 0);
	weft_io *io;
	REQUIRE(weft_io_new(loop, sv[0], ext_t_io_cb, &c, &io) == 0);
	CHECK_EQ(weft_io_start(io, WEFT_IO_WRITE), 0);
	CHECK_EQ(weft_loop_process_fd(loop, sv[0], WEFT_IO_WRITE), 0);
	CHECK_EQ(c.io_calls, 1);
	CHECK_EQ(e->timer_ms, 0);
	CHECK_EQ(weft_loop_process_timeout(loop), 0);
	CHECK_EQ(dn, 3);
	CHECK_EQ(e->timer_ms, -1);
	weft_io_free(io);
	xclose2(sv);

	/* a repeating timer keeps reporting its next period */
	struct trec r = { .stop_after = 3 };
	REQUIRE(weft_timer_new(loop, trec_cb, &r, &r.t) == 0);
	t0 = mark(loop);
	CHECK_EQ(weft_timer_start(r.t, 20, 20), 0);
	limit = t_now_ms() + 2000;
	while (r.calls < 3 && t_now_ms() < limit)
		ext_round(e, 200);
	CHECK_EQ(r.calls, 3);
	CHECK(r.at[2] >= t0 + 60);
	CHECK_EQ(e->timer_ms, -1);
	weft_timer_free(r.t);

	weft_timer_free(t);
	weft_defer_free(c.d);
	ext_free(e, loop);
}

static void test_ext_fd_data(void)
{
	weft_loop *loop;
	struct ext *e = ext_new(&loop);
	REQUIRE(e != NULL);
	int sv[2];
	REQUIRE(mk_sp(sv) == 0);
	int tag, tag2;
	weft_io *io;
	REQUIRE(weft_io_new(loop, sv[0], nop_io_cb, NULL, &io) == 0);
	CHECK_EQ(weft_loop_set_fd_data(loop, sv[0], &tag), -ENOENT); /* not watched yet */
	CHECK_EQ(weft_io_start(io, WEFT_IO_READ), 0);
	const struct ext_call *k = ext_last(e, sv[0]);
	CHECK(k != NULL && k->fd_data == NULL);
	CHECK_EQ(weft_loop_set_fd_data(loop, sv[0], &tag), 0);
	CHECK_EQ(weft_io_modify(io, RW), 0);
	k = ext_last(e, sv[0]);
	CHECK(k != NULL && k->events == RW && k->fd_data == &tag);
	CHECK_EQ(weft_loop_set_fd_data(loop, sv[0], &tag2), 0);
	CHECK_EQ(weft_io_modify(io, WEFT_IO_READ), 0);
	k = ext_last(e, sv[0]);
	CHECK(k != NULL && k->events == WEFT_IO_READ && k->fd_data == &tag2);
	CHECK_EQ(weft_loop_set_fd_data(loop, sv[1], &tag), -ENOENT);
	CHECK_EQ(weft_loop_set_fd_data(loop, 3999, &tag), -ENOENT);
	/* the removal still carries the pointer, then the slot is cleared */
	weft_io_stop(io);
	k = ext_last(e, sv[0]);
	CHECK(k != NULL && k->events == 0 && k->fd_data == &tag2);
	CHECK_EQ(weft_loop_set_fd_data(loop, sv[0], &tag), -ENOENT);
	CHECK_EQ(weft_io_start(io, WEFT_IO_WRITE), 0);
	k = ext_last(e, sv[0]);
	CHECK(k != NULL && k->events == WEFT_IO_WRITE && k->fd_data == NULL);
	weft_io_free(io);
	CHECK_EQ(e->events[sv[0]], 0);
	xclose2(sv);
	ext_free(e, loop);
}

static void test_ext_stale(void)
{
	weft_loop *loop;
	struct ext *e = ext_new(&loop);
	REQUIRE(e != NULL);
	int sv[2], other[2];
	REQUIRE(mk_sp(sv) == 0);
	REQUIRE(mk_sp(other) == 0);
	struct iorec r = { .action = ACT_NONE };
	REQUIRE(weft_io_new(loop, sv[0], iorec_cb, &r, &r.io) == 0);
	CHECK_EQ(weft_io_start(r.io, WEFT_IO_READ), 0);

	/* an fd weft never watched */
	int ret = weft_loop_process_fd(loop, other[0], WEFT_IO_READ);
	CHECK(ret == 0 || ret == -EINVAL);
	CHECK_EQ(r.calls, 0);
	/* events the watcher does not want */
	ret = weft_loop_process_fd(loop, sv[0], WEFT_IO_WRITE);
	CHECK(ret == 0 || ret == -EINVAL);
	CHECK_EQ(r.calls, 0);
	/* garbage */
	ret = weft_loop_process_fd(loop, -1, WEFT_IO_READ);
	CHECK(ret == 0 || ret == -EINVAL);
	CHECK_EQ(r.calls, 0);

	/* the real thing */
	CHECK_EQ(weft_loop_process_fd(loop, sv[0], WEFT_IO_READ), 0);
	CHECK_EQ(r.calls, 1);
	CHECK_EQ(r.last & RW, WEFT_IO_READ);
	/* READ | WRITE reported, READ wanted: READ only */
	CHECK_EQ(weft_loop_process_fd(loop, sv[0], RW), 0);
	CHECK_EQ(r.calls, 2);
	CHECK_EQ(r.last & RW, WEFT_IO_READ);
	/* a bare HUP comes with the READ bit the watcher asked for */
	CHECK_EQ(weft_loop_process_fd(loop, sv[0], WEFT_IO_HUP), 0);
	CHECK_EQ(r.calls, 3);
	CHECK(r.last & WEFT_IO_READ);
	CHECK(r.last & WEFT_IO_HUP);

	/* stale: reported after the watcher stopped (and the fd was closed) */
	weft_io_stop(r.io);
	CHECK_EQ(e->events[sv[0]], 0);
	ret = weft_loop_process_fd(loop, sv[0], WEFT_IO_READ);
	CHECK(ret == 0 || ret == -EINVAL);
	CHECK_EQ(r.calls, 3);
	int old = sv[0];
	weft_io_free(r.io);
	xclose(&sv[0]);
	ret = weft_loop_process_fd(loop, old, WEFT_IO_READ | WEFT_IO_HUP);
	CHECK(ret == 0 || ret == -EINVAL);
	CHECK_EQ(r.calls, 3);

	xclose(&sv[1]);
	xclose2(other);
	ext_free(e, loop);
}

static void test_ext_watch_error(void)
{
	weft_loop *loop;
	struct ext *e = ext_new(&loop);
	REQUIRE(e != NULL);
	int sv[2];
	REQUIRE(mk_sp(sv) == 0);
	weft_io *io;
	REQUIRE(weft_io_new(loop, sv[0], nop_io_cb, NULL, &io) == 0);
	e->fail_fd = sv[0];
	e->fail_err = -EPERM;
	CHECK_EQ(weft_io_start(io, WEFT_IO_READ), -EPERM);
	CHECK_EQ(weft_io_events(io), 0);
	CHECK(!weft_loop_alive(loop));
	e->fail_fd = -1;
	CHECK_EQ(weft_io_start(io, WEFT_IO_READ), 0);
	CHECK_EQ(e->events[sv[0]], WEFT_IO_READ);
	weft_io_free(io);
	CHECK_EQ(e->events[sv[0]], 0);
	xclose2(sv);
	ext_free(e, loop);
}

static void test_ext_signal_async(void)
{
	stray_signals = 0;
	set_sig_blocked(SIGUSR2, false);
	weft_loop *loop;
	struct ext *e = ext_new(&loop);
	REQUIRE(e != NULL);

	/* async: its wake-up fd must be announced, or this outer loop, which
	 * polls only announced fds, never sees the send */
	struct async_ctx ac = { .loop = loop };
	weft_async *a;
	REQUIRE(weft_async_new(loop, async_cb, &ac, &a) == 0);
	int announced = 0;
	for (int fd = 0; fd < EXT_MAXFD; fd++)
		announced += e->events[fd] != 0;
	CHECK(announced >= 1);
	struct thr th = { .async = a, .delay_ms = 30, .sends = 2 };
	pthread_t tid;
	REQUIRE(pthread_create(&tid, NULL, thr_send, &th) == 0);
	uint64_t limit = t_now_ms() + 2000;
	while (ac.calls == 0 && t_now_ms() < limit)
		ext_round(e, 100);
	pthread_join(tid, NULL);
	CHECK_EQ(th.ret, 0);
	CHECK_EQ(ac.calls, 1);

	/* signal: same */
	struct sigrec sr = { 0 };
	REQUIRE(weft_signal_new(loop, sigrec_cb, &sr, &sr.s) == 0);
	CHECK_EQ(weft_signal_start(sr.s, SIGUSR2), 0);
	CHECK(sig_blocked(SIGUSR2));
	kill(getpid(), SIGUSR2);
	limit = t_now_ms() + 2000;
	while (sr.calls == 0 && t_now_ms() < limit)
		ext_round(e, 100);
	CHECK_EQ(sr.calls, 1);
	CHECK_EQ(sr.signum, SIGUSR2);

	/* weft_loop_wakeup works on an external loop too (and is harmless) */
	struct thr tw = { .loop = loop, .delay_ms = 0 };
	REQUIRE(pthread_create(&tid, NULL, thr_wakeup, &tw) == 0);
	pthread_join(tid, NULL);
	CHECK_EQ(tw.ret, 0);
	ext_round(e, 0);

	weft_signal_free(sr.s);
	CHECK(!sig_blocked(SIGUSR2));
	weft_async_free(a);
	ext_free(e, loop);
	CHECK_EQ(stray_signals, 0);
}

/* ======================================================================== */
/* bad input                                                                 */
/* ======================================================================== */

static void test_bad_input(void)
{
	weft_loop *loop;
	REQUIRE(weft_loop_new(&loop) == 0);
	int p[2];
	REQUIRE(mk_pipe(p) == 0);
	weft_io *io = (weft_io *)&io;
	CHECK_EQ(weft_io_new(loop, -1, nop_io_cb, NULL, &io), -EINVAL);
	CHECK_EQ(weft_io_new(loop, p[0], NULL, NULL, &io), -EINVAL);
	CHECK(io == (weft_io *)&io);
	REQUIRE(weft_io_new(loop, p[0], nop_io_cb, NULL, &io) == 0);
	CHECK_EQ(weft_io_start(io, 0x100), -EINVAL);
	CHECK_EQ(weft_io_events(io), 0);
	weft_io_free(io);

	/* a watcher on an fd that is not open */
	int q[2];
	REQUIRE(mk_pipe(q) == 0);
	int dead = q[0];
	xclose2(q);
	int r = weft_io_new(loop, dead, nop_io_cb, NULL, &io);
	CHECK(r == 0 || r == -EBADF);
	if (r == 0) {
		CHECK_EQ(weft_io_start(io, WEFT_IO_READ), -EBADF);
		CHECK_EQ(weft_io_events(io), 0);
		CHECK(!weft_loop_alive(loop));
		weft_io_free(io);
	}

	/* a regular file cannot be polled: the backend's error, nothing held */
	FILE *f = tmpfile();
	if (f != NULL) {
		r = weft_io_new(loop, fileno(f), nop_io_cb, NULL, &io);
		CHECK_EQ(r, 0);
		if (r == 0) {
			r = weft_io_start(io, WEFT_IO_READ);
			CHECK(r < 0);
			CHECK_EQ(weft_io_events(io), 0);
			CHECK(!weft_loop_alive(loop));
			weft_io_free(io);
		}
		fclose(f);
	}

	weft_timer *t = (weft_timer *)&t;
	CHECK_EQ(weft_timer_new(loop, NULL, NULL, &t), -EINVAL);
	CHECK(t == (weft_timer *)&t);
	weft_defer *d = (weft_defer *)&d;
	CHECK_EQ(weft_defer_new(loop, NULL, NULL, &d), -EINVAL);
	CHECK(d == (weft_defer *)&d);
	weft_async *a = (weft_async *)&a;
	CHECK_EQ(weft_async_new(loop, NULL, NULL, &a), -EINVAL);
	CHECK(a == (weft_async *)&a);
	weft_signal *s = (weft_signal *)&s;
	CHECK_EQ(weft_signal_new(loop, NULL, NULL, &s), -EINVAL);
	CHECK(s == (weft_signal *)&s);

	/* NULL loop */
	CHECK_EQ(weft_loop_new(NULL), -EINVAL);
	CHECK_EQ(weft_io_new(NULL, p[0], nop_io_cb, NULL, &io), -EINVAL);
	CHECK_EQ(weft_timer_new(NULL, nop_timer_cb, NULL, &t), -EINVAL);
	CHECK_EQ(weft_defer_new(NULL, nop_defer_cb, NULL, &d), -EINVAL);
	CHECK_EQ(weft_async_new(NULL, nop_async_cb, NULL, &a), -EINVAL);
	CHECK_EQ(weft_signal_new(NULL, nop_signal_cb, NULL, &s), -EINVAL);
	CHECK_EQ(weft_loop_run(NULL, WEFT_RUN_NOWAIT), -EINVAL);

	xclose2(p);
	FREE_LOOP(loop);
}

/* ======================================================================== */

static const char *current_test;

static void on_alarm(int signum)
{
	(void)signum;
	static const char pre[] = "not ok - watchdog: hung in ";
	ssize_t w = write(STDOUT_FILENO, pre, sizeof pre - 1);
	if (current_test)
		w = write(STDOUT_FILENO, current_test, strlen(current_test));
	w = write(STDOUT_FILENO, "\n", 1);
	(void)w;
	_exit(99);
}

static void run(const char *name, void (*fn)(void))
{
	current_test = name;
	alarm(30);
	t_run(name, fn);
	alarm(0);
}

#define RUN(fn) run(&#fn[5], fn) /* the name without "test_" */

int main(void)
{
	const char *pre = getenv("LD_PRELOAD");
	if (pre && strstr(pre, "vgpreload"))
		late_ms = 1500; /* valgrind */
	if (getenv("WEFT_TEST_LATE_MS"))
		late_ms = strtoull(getenv("WEFT_TEST_LATE_MS"), NULL, 10);

	signal(SIGALRM, on_alarm);
	struct sigaction sa = { .sa_handler = stray_handler };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);

	uint64_t t0 = t_now_ms();

	RUN(test_loop_new_free);
	RUN(test_loop_free_busy);

	RUN(test_io_read);
	RUN(test_io_write);
	RUN(test_io_both);
	RUN(test_io_modify);
	RUN(test_io_stop);
	RUN(test_io_level_triggered);
	RUN(test_io_hup_err);
	RUN(test_io_eexist);
	RUN(test_io_free_self);
	RUN(test_io_free_other_collected);
	RUN(test_io_fd_reuse_no_stale);
	RUN(test_io_many);

	RUN(test_timer_oneshot);
	RUN(test_timer_repeat);
	RUN(test_timer_repeat_skips_missed);
	RUN(test_timer_stop_in_callback);
	RUN(test_timer_free_self);
	RUN(test_timer_restart);
	RUN(test_timer_order);
	RUN(test_timer_zero_in_callback);
	RUN(test_timer_remaining);
	RUN(test_timer_many);
	RUN(test_timer_cancel_half);
	RUN(test_timer_heap_stress);

	RUN(test_defer_basic);
	RUN(test_defer_chain);
	RUN(test_defer_cancel);
	RUN(test_call_soon);
	RUN(test_get_timeout_defer);

	RUN(test_run_default_exits);
	RUN(test_run_once_blocks);
	RUN(test_run_nowait);
	RUN(test_loop_stop);
	RUN(test_unref);
	RUN(test_run_reentrant);

	RUN(test_async_thread);
	RUN(test_async_coalesce);
	RUN(test_async_free_other_and_signal_handler);
	RUN(test_loop_wakeup);

	RUN(test_signal_basic);
	RUN(test_signal_two_watchers);

	RUN(test_nest_fd);
	RUN(test_nest_wakeup);

	RUN(test_ext_basic);
	RUN(test_ext_io);
	RUN(test_ext_timer);
	RUN(test_ext_fd_data);
	RUN(test_ext_stale);
	RUN(test_ext_watch_error);
	RUN(test_ext_signal_async);

	RUN(test_bad_input);

	printf("# total %llu ms\n", (unsigned long long)(t_now_ms() - t0));
	return t_finish();
}
