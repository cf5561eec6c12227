/* bench-loop — weft's event loop against libevent and libuv.
 *
 * The I/O part follows libevent's test/bench.c: N socketpairs (or pipes),
 * one read watcher on each; A of them get a byte; every read callback reads
 * its byte and writes one byte to the next pair (wrapping around) until W
 * writes happened in total.  The same workload runs on weft (weft_io +
 * weft_loop_run), libevent (event_new EV_READ|EV_PERSIST + event_base_loop)
 * and libuv (uv_poll_t + uv_run), in one process, with the rounds
 * interleaved (weft, libevent, libuv, weft, ...) so that machine noise hits
 * all three alike; the table shows the median of the measured rounds.
 *
 * Every round (re)creates and starts all N watchers before the clock starts
 * and runs one non-blocking iteration (so that libraries which apply
 * epoll_ctl lazily, like libuv, have done it), then writes the A initial
 * bytes, then times the loop run alone; after the run all watchers are
 * stopped and freed (removed from the kernel's epoll set) so the three
 * loops never watch the same fd at the same time.
 *
 * The timer part measures start+stop of T timers with pseudo-random
 * timeouts (the same sequence for every loop) and the firing of T timers
 * spread over 0..F ms.
 *
 * See bench/README.md for the command lines (pinning, callgrind, strace).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <uv.h>

#include <weft/loop.h>

#include "bench-util.h"

#define NOINLINE __attribute__((noinline))

/* ---- libraries and scenarios ------------------------------------------- */

enum { L_WEFT, L_EVENT, L_UV, NLIBS };
static const char *const lib_names[NLIBS] = { "weft", "libevent", "libuv" };

enum { S_ACTIVE, S_IDLE, S_TIMERS, S_FIRE, NSCEN };
static const char *const scen_names[NSCEN] = { "active", "idle", "timers", "fire" };

/* ---- options ------------------------------------------------------------ */

/* (-r, -o, -v and -q: bench, in bench-util.h) */
static struct {
	bool libs[NLIBS];    /* -s */
	bool scens[NSCEN];   /* -t */
	unsigned watchdog_s; /* a round that takes longer aborts the program */
	int npipes;     /* pipes of the idle scenario */
	int nactive;    /* active pipes (= all pipes of the active scenario) */
	long nwrites;   /* writes per round */
	int ntimers;    /* timers of the timer scenarios */
	int fire_ms;    /* timers of the fire scenario are spread over 0..fire_ms */
	bool use_pipes; /* pipe() instead of socketpair() */
} opt = {
	.libs = { true, true, true },
	.scens = { true, true, true, true },
	.watchdog_s = 300,
	.npipes = 10000,
	.nactive = 100,
	.nwrites = 100000,
	.ntimers = 100000,
	.fire_ms = 50,
	.use_pipes = false,
};

static int nlibs_selected(void)
{
	int n = 0;
	for (int l = 0; l < NLIBS; l++)
		n += opt.libs[l];
	return n;
}

/* ---- helpers ------------------------------------------------------------ */

static int exit_status;

/* splitmix64: the same sequence of timeouts for every loop. */
static uint64_t rng_state;
static uint64_t rng_next(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* ---- the three loops ----------------------------------------------------- */

static weft_loop *wloop;
static struct event_base *ebase;
static uv_loop_t uloop;

static void loops_init(void)
{
	wcheck(weft_loop_new(&wloop), "weft_loop_new");
	ebase = event_base_new();
	if (ebase == NULL)
		die("libevent: event_base_new failed");
	uvcheck(uv_loop_init(&uloop), "uv_loop_init");
}

static void loops_free(void)
{
	int r = weft_loop_free(wloop);
	if (r < 0) {
		warn("weft_loop_free: %s", strerror(-r));
		exit_status = 1;
	}
	event_base_free(ebase);
	r = uv_loop_close(&uloop);
	if (r < 0) {
		warn("uv_loop_close: %s", uv_strerror(r));
		exit_status = 1;
	}
}

/* ---- fds ------------------------------------------------------------------ */

static int nfds_made;  /* pairs created */
static int *rfds;      /* watched end */
static int *wfds;      /* end the callbacks write to */

/* Open fds right now (the loops' own included). */
static int count_open_fds(void)
{
	int n = 0;
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur > (rlim_t)(1 << 22))
		return 64;
	for (int fd = 0; fd < (int)rl.rlim_cur; fd++)
		if (fcntl(fd, F_GETFD) >= 0)
			n++;
	return n;
}

/* Make room for `pairs` more fd pairs: raise the soft RLIMIT_NOFILE to the
 * hard limit, and the hard limit too where we may (CAP_SYS_RESOURCE).
 * Returns how many pairs fit. */
#define FD_SLACK 8 /* fds a library might still open lazily */
static int make_room_for_pairs(int pairs)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		die("getrlimit: %s", strerror(errno));
	rlim_t need = (rlim_t)count_open_fds() + (rlim_t)pairs * 2 + FD_SLACK;
	if (rl.rlim_cur < need) {
		struct rlimit want = { need, rl.rlim_max > need ? rl.rlim_max : need };
		if (setrlimit(RLIMIT_NOFILE, &want) < 0) {
			if (rl.rlim_max < need)
				warn("cannot raise the hard RLIMIT_NOFILE from %ju to %ju: %s",
				     (uintmax_t)rl.rlim_max, (uintmax_t)need, strerror(errno));
			rl.rlim_cur = rl.rlim_max;
			if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
				warn("setrlimit(RLIMIT_NOFILE, %ju): %s", (uintmax_t)rl.rlim_cur, strerror(errno));
		}
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		die("getrlimit: %s", strerror(errno));
	if (rl.rlim_cur >= need)
		return pairs;
	long room = ((long)rl.rlim_cur - count_open_fds() - FD_SLACK) / 2;
	return room > 0 ? (int)room : 0;
}

static void make_pipes(int n)
{
	rfds = xcalloc((size_t)n, sizeof *rfds);
	wfds = xcalloc((size_t)n, sizeof *wfds);
	for (int i = 0; i < n; i++) {
		int p[2];
		int r = opt.use_pipes ? pipe2(p, O_NONBLOCK | O_CLOEXEC)
		                      : socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, p);
		if (r < 0)
			die("%s #%d: %s", opt.use_pipes ? "pipe2" : "socketpair", i, strerror(errno));
		rfds[i] = p[0];
		wfds[i] = p[1];
		nfds_made++;
	}
}

static void close_pipes(void)
{
	for (int i = 0; i < nfds_made; i++) {
		close(rfds[i]);
		close(wfds[i]);
	}
	free(rfds);
	free(wfds);
	nfds_made = 0;
}

/* ---- I/O scenario ------------------------------------------------------- */

static struct {
	int lib;          /* loop being run */
	int npipes;       /* pipes of this scenario: rfds[0..npipes) */
	long writes_left; /* writes the callbacks still do */
	long expected;    /* bytes that will be read: active + writes */
	long bytes;       /* bytes read */
	long events;      /* callbacks */
	long failures;    /* failed read()/write(), or an error status */
} io;

static weft_io **wios;
static struct event **evs;
static uv_poll_t *uvps;

/* The work of every read callback (bench.c's read_cb). */
static inline bool io_work(int idx)
{
	unsigned char ch;
	io.events++;
	if (read(rfds[idx], &ch, 1) == 1)
		io.bytes++;
	else
		io.failures++;
	if (io.writes_left > 0) {
		int widx = idx + 1;
		if (widx >= io.npipes)
			widx -= io.npipes;
		if (write(wfds[widx], "e", 1) != 1)
			io.failures++;
		io.writes_left--;
	}
	return io.bytes == io.expected;
}

static void on_weft_read(weft_io *w, unsigned revents, void *data)
{
	(void)w;
	(void)revents;
	if (io_work((int)(intptr_t)data))
		weft_loop_stop(wloop);
}

static void on_ev_read(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	if (io_work((int)(intptr_t)arg))
		event_base_loopbreak(ebase);
}

static void on_uv_read(uv_poll_t *h, int status, int events)
{
	(void)events;
	if (status < 0)
		io.failures++;
	if (io_work((int)(intptr_t)h->data))
		uv_stop(&uloop);
}

static void io_setup(int lib, int n)
{
	switch (lib) {
	case L_WEFT:
		for (int i = 0; i < n; i++) {
			wcheck(weft_io_new(wloop, rfds[i], on_weft_read, (void *)(intptr_t)i, &wios[i]), "weft_io_new");
			wcheck(weft_io_start(wios[i], WEFT_IO_READ), "weft_io_start");
		}
		wcheck(weft_loop_run(wloop, WEFT_RUN_NOWAIT), "weft_loop_run(NOWAIT)");
		break;
	case L_EVENT:
		for (int i = 0; i < n; i++) {
			evs[i] = event_new(ebase, rfds[i], EV_READ | EV_PERSIST, on_ev_read, (void *)(intptr_t)i);
			if (evs[i] == NULL || event_add(evs[i], NULL) < 0)
				die("libevent: event_new/event_add failed for fd %d", rfds[i]);
		}
		if (event_base_loop(ebase, EVLOOP_ONCE | EVLOOP_NONBLOCK) < 0)
			die("libevent: event_base_loop(NONBLOCK) failed");
		break;
	case L_UV:
		for (int i = 0; i < n; i++) {
			uvcheck(uv_poll_init(&uloop, &uvps[i], rfds[i]), "uv_poll_init");
			uvps[i].data = (void *)(intptr_t)i;
			uvcheck(uv_poll_start(&uvps[i], UV_READABLE, on_uv_read), "uv_poll_start");
		}
		uv_run(&uloop, UV_RUN_NOWAIT);
		break;
	}
}

static void io_teardown(int lib, int n)
{
	switch (lib) {
	case L_WEFT:
		for (int i = 0; i < n; i++) {
			weft_io_free(wios[i]);
			wios[i] = NULL;
		}
		/* Let weft finish any deferred clean-up before the next loop runs. */
		wcheck(weft_loop_run(wloop, WEFT_RUN_NOWAIT), "weft_loop_run(NOWAIT)");
		break;
	case L_EVENT:
		for (int i = 0; i < n; i++) {
			event_free(evs[i]);
			evs[i] = NULL;
		}
		break;
	case L_UV:
		for (int i = 0; i < n; i++)
			uv_close((uv_handle_t *)&uvps[i], NULL);
		uv_run(&uloop, UV_RUN_DEFAULT); /* runs the close callbacks */
		break;
	}
}

/* The timed part: running the loop, one function per loop, used by the I/O
 * and the timer-firing scenarios (callgrind: --toggle-collect=timed_run_*). */
static NOINLINE void timed_run_weft(void)
{
	wcheck(weft_loop_run(wloop, WEFT_RUN_DEFAULT), "weft_loop_run");
}

static NOINLINE void timed_run_libevent(void)
{
	if (event_base_loop(ebase, 0) < 0)
		die("libevent: event_base_loop failed");
}

static NOINLINE void timed_run_libuv(void)
{
	uv_run(&uloop, UV_RUN_DEFAULT);
}

static void (*const timed_run[NLIBS])(void) = { timed_run_weft, timed_run_libevent, timed_run_libuv };

/* One round; returns events per second. */
static double io_round(int lib, int scen, int npipes, int nactive, long nwrites)
{
	io_setup(lib, npipes);

	io.lib = lib;
	io.npipes = npipes;
	io.writes_left = nwrites;
	io.expected = nactive + nwrites;
	io.bytes = 0;
	io.events = 0;
	io.failures = 0;

	int space = npipes / nactive;
	for (int i = 0; i < nactive; i++)
		if (write(wfds[i * space], "e", 1) != 1)
			die("initial write: %s", strerror(errno));

	wd_arm(lib, scen);
	double t0 = now_mono();
	timed_run[lib]();
	double t1 = now_mono();
	wd_disarm();

	io_teardown(lib, npipes);

	if (io.bytes != io.expected || io.events != io.expected || io.failures != 0) {
		warn("%s, %s: %ld events, %ld bytes read, %ld expected, %ld failed reads/writes",
		     lib_names[lib], scen_names[scen], io.events, io.bytes, io.expected, io.failures);
		exit_status = 1;
	}
	if (bench.verbose)
		printf("  %-8s %-6s %8ld events in %8.3f ms = %10.0f events/s\n", lib_names[lib],
		       scen_names[scen], io.events, (t1 - t0) * 1e3, (double)io.events / (t1 - t0));
	return (double)io.events / (t1 - t0);
}

/* ---- timer scenarios -------------------------------------------------- */

static weft_timer **wtimers;
static struct event **etimers;
static uv_timer_t *utimers;
static uint64_t *timeouts_ms;
static struct timeval *timeouts_tv;
static long timer_fired;
static int ntimers;

static void on_weft_timer(weft_timer *t, void *data)
{
	(void)t;
	(void)data;
	timer_fired++;
}

static void on_ev_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	timer_fired++;
}

static void on_uv_timer(uv_timer_t *t)
{
	(void)t;
	timer_fired++;
}

static void timers_create(int n)
{
	ntimers = n;
	wtimers = xcalloc((size_t)n, sizeof *wtimers);
	etimers = xcalloc((size_t)n, sizeof *etimers);
	utimers = xcalloc((size_t)n, sizeof *utimers);
	timeouts_ms = xcalloc((size_t)n, sizeof *timeouts_ms);
	timeouts_tv = xcalloc((size_t)n, sizeof *timeouts_tv);
	for (int i = 0; i < n; i++) {
		if (opt.libs[L_WEFT])
			wcheck(weft_timer_new(wloop, on_weft_timer, NULL, &wtimers[i]), "weft_timer_new");
		if (opt.libs[L_EVENT]) {
			etimers[i] = evtimer_new(ebase, on_ev_timer, NULL);
			if (etimers[i] == NULL)
				die("libevent: evtimer_new failed");
		}
		if (opt.libs[L_UV])
			uvcheck(uv_timer_init(&uloop, &utimers[i]), "uv_timer_init");
	}
}

static void timers_destroy(void)
{
	for (int i = 0; i < ntimers; i++) {
		weft_timer_free(wtimers[i]);
		if (etimers[i] != NULL)
			event_free(etimers[i]);
		if (opt.libs[L_UV])
			uv_close((uv_handle_t *)&utimers[i], NULL);
	}
	uv_run(&uloop, UV_RUN_DEFAULT);
	free(wtimers);
	free(etimers);
	free(utimers);
	free(timeouts_ms);
	free(timeouts_tv);
	ntimers = 0;
}

/* Timeouts 1..max_ms (ops) or 0..max_ms (fire), from the same seed. */
static void timers_set_timeouts(uint64_t lo, uint64_t hi)
{
	rng_state = 20240607;
	for (int i = 0; i < ntimers; i++) {
		uint64_t ms = lo + rng_next() % (hi - lo + 1);
		timeouts_ms[i] = ms;
		timeouts_tv[i].tv_sec = (time_t)(ms / 1000);
		timeouts_tv[i].tv_usec = (suseconds_t)(ms % 1000) * 1000;
	}
}

static NOINLINE void timed_start_weft(void)
{
	for (int i = 0; i < ntimers; i++)
		wcheck(weft_timer_start(wtimers[i], timeouts_ms[i], 0), "weft_timer_start");
}

static NOINLINE void timed_stop_weft(void)
{
	for (int i = 0; i < ntimers; i++)
		weft_timer_stop(wtimers[i]);
}

static NOINLINE void timed_start_libevent(void)
{
	for (int i = 0; i < ntimers; i++)
		if (evtimer_add(etimers[i], &timeouts_tv[i]) < 0)
			die("libevent: evtimer_add failed");
}

static NOINLINE void timed_stop_libevent(void)
{
	for (int i = 0; i < ntimers; i++)
		evtimer_del(etimers[i]);
}

static NOINLINE void timed_start_libuv(void)
{
	for (int i = 0; i < ntimers; i++)
		uvcheck(uv_timer_start(&utimers[i], on_uv_timer, timeouts_ms[i], 0), "uv_timer_start");
}

static NOINLINE void timed_stop_libuv(void)
{
	for (int i = 0; i < ntimers; i++)
		uv_timer_stop(&utimers[i]);
}

static void (*const timers_start[NLIBS])(void) = {
	timed_start_weft, timed_start_libevent, timed_start_libuv
};
static void (*const timers_stop[NLIBS])(void) = {
	timed_stop_weft, timed_stop_libevent, timed_stop_libuv
};

/* The start of a timer round: both weft and libuv cache "now"; bring it up
 * to date (outside the clock).  Then arm the watchdog and start the clock:
 * returns CLOCK_MONOTONIC. */
static double timer_round_begin(int lib, int scen)
{
	if (lib == L_WEFT)
		weft_loop_update_time(wloop);
	else if (lib == L_UV)
		uv_update_time(&uloop);
	wd_arm(lib, scen);
	return now_mono();
}

/* Start all timers, then stop all.  rate[]: start+stop, start, stop (ops/s). */
static void timer_ops_round(int lib, double rate[3])
{
	double t0 = timer_round_begin(lib, S_TIMERS);
	timers_start[lib]();
	double t1 = now_mono();
	timers_stop[lib]();
	double t2 = now_mono();
	wd_disarm();

	bool still = false;
	if (lib == L_WEFT)
		still = weft_loop_alive(wloop);
	else if (lib == L_EVENT)
		still = event_base_get_num_events(ebase, EVENT_BASE_COUNT_ADDED) != 0;
	else
		still = uv_loop_alive(&uloop) != 0;
	if (still) {
		warn("%s: timers still active after stopping them all", lib_names[lib]);
		exit_status = 1;
	}

	rate[0] = 2.0 * ntimers / (t2 - t0);
	rate[1] = ntimers / (t1 - t0);
	rate[2] = ntimers / (t2 - t1);
	if (bench.verbose)
		printf("  %-8s timers %d starts %8.3f ms, %d stops %8.3f ms = %10.0f ops/s\n",
		       lib_names[lib], ntimers, (t1 - t0) * 1e3, ntimers, (t2 - t1) * 1e3, rate[0]);
}

/* Start all timers (0..fire_ms), run until all fired.  rate[0] counts the
 * run only (callbacks per CPU second: user + system time of this thread, the
 * waiting excluded); rate[1] the wall clock from the first start to the last
 * callback. */
static void timer_fire_round(int lib, double rate[2])
{
	timer_fired = 0;
	double w0 = timer_round_begin(lib, S_FIRE);
	timers_start[lib]();
	double c0 = now_cpu();
	timed_run[lib]();
	double c1 = now_cpu();
	double w1 = now_mono();
	wd_disarm();

	if (timer_fired != ntimers) {
		warn("%s: %ld of %d timers fired", lib_names[lib], timer_fired, ntimers);
		exit_status = 1;
	}
	rate[0] = timer_fired / (c1 - c0);
	rate[1] = timer_fired / (w1 - w0);
	if (bench.verbose)
		printf("  %-8s fire   %ld callbacks, run cpu %8.3f ms, wall %8.3f ms\n",
		       lib_names[lib], timer_fired, (c1 - c0) * 1e3, (w1 - w0) * 1e3);
}

/* ---- results table ----------------------------------------------------------- */

#define MAX_ROWS 16
static struct row {
	char name[128];
	bool have[NLIBS];
	double med[NLIBS];
} rows[MAX_ROWS];
static int nrows;

static void add_row(const char *name, const char *unit, double samples[NLIBS][MAX_ROUNDS + 1], int n)
{
	if (nrows >= MAX_ROWS)
		return;
	struct row *r = &rows[nrows++];
	snprintf(r->name, sizeof r->name, "%s (%s)", name, unit);
	for (int l = 0; l < NLIBS; l++) {
		r->have[l] = opt.libs[l];
		r->med[l] = opt.libs[l] ? median(samples[l], n) : 0.0;
	}
}

static void print_table(void)
{
	static const int widths[5] = { 10, 10, 10, 13, 10 };
	static const char *const heads[5] = { "weft", "libevent", "libuv", "weft/libevent", "weft/libuv" };
	table_head(44, "scenario (median rate)", 5, widths, heads);
	for (int i = 0; i < nrows; i++) {
		struct row *r = &rows[i];
		char cell[5][32];
		const char *cells[5];
		for (int l = 0; l < NLIBS; l++) {
			if (r->have[l])
				fmt_rate(cell[l], sizeof cell[l], r->med[l]);
			else
				snprintf(cell[l], sizeof cell[l], "-");
		}
		for (int k = 0; k < 2; k++) {
			int other = k == 0 ? L_EVENT : L_UV;
			fmt_ratio(cell[NLIBS + k], sizeof cell[NLIBS + k], r->have[L_WEFT] && r->have[other],
			          r->med[L_WEFT], r->med[other]);
		}
		for (int c = 0; c < 5; c++)
			cells[c] = cell[c];
		table_row(44, r->name, 5, widths, cells);
	}
	printf("\nRates are per second (k = 10^3, M = 10^6); ratios > 1 mean weft is faster.\n");
}

/* ---- driver --------------------------------------------------------------------- */

/* The rates of one scenario: samples[k][lib][round] for its rate k. */
static struct scenario_run {
	int scen, npipes, nactive;
	double samples[3][NLIBS][MAX_ROUNDS + 1];
} run;

static void scenario_round(int lib, int round, void *arg)
{
	(void)arg;
	double rate[3] = { 0.0, 0.0, 0.0 };
	switch (run.scen) {
	case S_TIMERS: timer_ops_round(lib, rate); break;
	case S_FIRE: timer_fire_round(lib, rate); break;
	default: rate[0] = io_round(lib, run.scen, run.npipes, run.nactive, opt.nwrites); break;
	}
	if (round >= 0)
		for (int k = 0; k < 3; k++)
			run.samples[k][lib][round] = rate[k];
}

/* One warm-up round, then the measured ones, of every selected loop. */
static void run_scenario(int scen)
{
	run.scen = scen;
	run_interleaved(NLIBS, opt.libs, scenario_round, NULL);
}

static void run_io_scenario(int scen, int npipes, int nactive)
{
	printf("# %s: %d %s, %d active, %ld writes\n", scen_names[scen], npipes,
	       opt.use_pipes ? "pipes" : "socketpairs", nactive, opt.nwrites);
	fflush(stdout);
	run.npipes = npipes;
	run.nactive = nactive;
	run_scenario(scen);
	char name[80];
	snprintf(name, sizeof name, "io %s: %d fds, %d active", scen_names[scen], npipes, nactive);
	add_row(name, "events/s", run.samples[0], bench.rounds);
}

static void run_timer_scenarios(void)
{
	char name[80];

	timers_create(opt.ntimers);

	if (opt.scens[S_TIMERS]) {
		printf("# timers: %d timers, timeouts 1..100000 ms, start all then stop all\n", opt.ntimers);
		fflush(stdout);
		timers_set_timeouts(1, 100000);
		run_scenario(S_TIMERS);
		snprintf(name, sizeof name, "timer start+stop: %d timers", opt.ntimers);
		add_row(name, "ops/s", run.samples[0], bench.rounds);
		add_row("  of which start", "ops/s", run.samples[1], bench.rounds);
		add_row("  of which stop", "ops/s", run.samples[2], bench.rounds);
	}

	if (opt.scens[S_FIRE]) {
		printf("# fire: %d timers, timeouts 0..%d ms, run until all fired\n", opt.ntimers, opt.fire_ms);
		fflush(stdout);
		timers_set_timeouts(0, (uint64_t)opt.fire_ms);
		run_scenario(S_FIRE);
		snprintf(name, sizeof name, "timer fire: %d over 0..%d ms", opt.ntimers, opt.fire_ms);
		add_row(name, "cb/cpu-s", run.samples[0], bench.rounds);
		add_row("  same, wall clock incl. starts", "cb/s", run.samples[1], bench.rounds);
	}

	timers_destroy();
}

static const char *const lib_aliases[] = { "uv", "libuv", "event", "libevent", NULL };

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: bench-loop [-q] [-v] [-o] [-p] [-r rounds] [-n pipes] [-a active] [-w writes]\n"
	        "                  [-T timers] [-F ms] [-s libs] [-t scenarios]\n"
	        "  -r N   measured rounds per loop, after one warm-up round (default 5)\n"
	        "  -n N   fds (pipes) of the idle scenario (default 10000)\n"
	        "  -a N   active fds; also the fd count of the active scenario (default 100)\n"
	        "  -w N   writes per round (default 100000)\n"
	        "  -T N   timers of the timer scenarios (default 100000)\n"
	        "  -F MS  fire scenario: timeouts spread over 0..MS ms (default 50)\n"
	        "  -o     rotate the order of the loops by one each round (default: always\n"
	        "         weft, libevent, libuv)\n"
	        "  -p     pipes instead of AF_UNIX socketpairs\n"
	        "  -s L   loops to run, comma-separated: weft,libevent,libuv (default all)\n"
	        "  -t S   scenarios, comma-separated: active,idle,timers,fire (default all)\n"
	        "  -q     quick run (smoke test): -r 1 -n 500 -a 20 -w 5000 -T 5000 -F 10\n"
	        "  -v     print every round\n");
}

int main(int argc, char **argv)
{
	bench_init("bench-loop", 1);
	int c;
	while ((c = bench_getopt(argc, argv, "r:n:a:w:T:F:s:t:opqvh", usage)) != -1) {
		switch (c) {
		case 'n': opt.npipes = (int)parse_num(optarg, 'n', 1, 1 << 24); break;
		case 'a': opt.nactive = (int)parse_num(optarg, 'a', 1, 1 << 24); break;
		case 'w': opt.nwrites = parse_num(optarg, 'w', 0, 1L << 40); break;
		case 'T': opt.ntimers = (int)parse_num(optarg, 'T', 1, 1 << 26); break;
		case 'F': opt.fire_ms = (int)parse_num(optarg, 'F', 0, 1000000); break;
		case 's':
			if (!parse_list(optarg, lib_names, NLIBS, lib_aliases, opt.libs) || nlibs_selected() == 0)
				die("-s: expected weft, libevent, libuv (comma-separated), got '%s'", optarg);
			break;
		case 't':
			if (!parse_list(optarg, scen_names, NSCEN, NULL, opt.scens))
				die("-t: expected active, idle, timers, fire (comma-separated), got '%s'", optarg);
			break;
		case 'p': opt.use_pipes = true; break;
		}
	}
	if (bench.quick) { /* explicit options win */
		if (!option_given('n')) opt.npipes = 500;
		if (!option_given('a')) opt.nactive = 20;
		if (!option_given('w')) opt.nwrites = 5000;
		if (!option_given('T')) opt.ntimers = 5000;
		if (!option_given('F')) opt.fire_ms = 10;
	}

	signal(SIGPIPE, SIG_IGN);
	wd_init(opt.watchdog_s, lib_names, scen_names, "missed events?");
	signal(SIGALRM, wd_on_alarm);

	struct utsname un;
	uname(&un);
	printf("# bench-loop: weft vs libevent %s vs libuv %s; %s %s\n", event_get_version(),
	       uv_version_string(), un.sysname, un.release);
	loops_init();
	printf("# libevent backend: %s; %d measured rounds (median) after 1 warm-up, interleaved%s\n",
	       event_base_get_method(ebase), bench.rounds, bench.rotate ? ", order rotated" : "");
	fflush(stdout);

	int pairs = 0;
	if (opt.scens[S_ACTIVE] && opt.nactive > pairs)
		pairs = opt.nactive;
	if (opt.scens[S_IDLE] && opt.npipes > pairs)
		pairs = opt.npipes;
	if (pairs > 0) {
		int room = make_room_for_pairs(pairs);
		if (room < 1)
			die("RLIMIT_NOFILE leaves no room for a single fd pair");
		if (room < pairs) {
			warn("RLIMIT_NOFILE leaves room for %d fd pairs only: using %d instead of %d",
			     room, room, pairs);
			if (opt.npipes > room)
				opt.npipes = room;
			if (opt.nactive > room)
				opt.nactive = room;
			pairs = room;
		}
	}
	int idle_active = opt.nactive < opt.npipes ? opt.nactive : opt.npipes;

	if (pairs > 0) {
		make_pipes(pairs);
		wios = xcalloc((size_t)pairs, sizeof *wios);
		evs = xcalloc((size_t)pairs, sizeof *evs);
		uvps = xcalloc((size_t)pairs, sizeof *uvps);
		if (opt.scens[S_ACTIVE])
			run_io_scenario(S_ACTIVE, opt.nactive, opt.nactive);
		if (opt.scens[S_IDLE])
			run_io_scenario(S_IDLE, opt.npipes, idle_active);
	}
	if (opt.scens[S_TIMERS] || opt.scens[S_FIRE])
		run_timer_scenarios();

	if (nrows > 0)
		print_table();

	loops_free();
	if (pairs > 0) {
		close_pipes();
		free(wios);
		free(evs);
		free(uvps);
	}
	if (exit_status != 0)
		fprintf(stderr, "bench-loop: some rounds were wrong (see the warnings above)\n");
	return exit_status;
}
