#include "helper.h"

#include <weft/loop.h>

#include <dirent.h>
#include <signal.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int t_count;
static int t_failed_total;
static int t_failures_here;

void t_fail(const char *file, int line, const char *expr)
{
	t_failures_here++;
	printf("# %s:%d: check failed: %s\n", file, line, expr);
	fflush(stdout);
}

void t_check_eq(const char *file, int line, const char *expr, long long a, long long b)
{
	if (a == b)
		return;
	t_failures_here++;
	printf("# %s:%d: check failed: %s (%lld != %lld)\n", file, line, expr, a, b);
	fflush(stdout);
}

int t_fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (d == NULL)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory stream's own fd */
}

uint64_t t_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void t_sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

void t_run(const char *name, void (*fn)(void))
{
	static bool sigpipe_ignored;
	if (!sigpipe_ignored) {
		signal(SIGPIPE, SIG_IGN);
		sigpipe_ignored = true;
	}
	t_failures_here = 0;
	int before = t_fd_count();
	fn();
	int after = t_fd_count();
	if (before != after) {
		printf("# %s: %d open fds before, %d after\n", name, before, after);
		t_failures_here++;
	}
	t_count++;
	if (t_failures_here) {
		t_failed_total++;
		printf("not ok %d - %s\n", t_count, name);
	} else {
		printf("ok %d - %s\n", t_count, name);
	}
	fflush(stdout);
}

static const char *t_current_test;

static void t_on_alarm(int sig)
{
	(void)sig;
	static const char pre[] = "Bail out! watchdog: test ";
	static const char post[] = " hangs\n";
	ssize_t ignored = write(1, pre, sizeof pre - 1);
	if (t_current_test)
		ignored = write(1, t_current_test, strlen(t_current_test));
	ignored = write(1, post, sizeof post - 1);
	(void)ignored;
	_exit(2);
}

void t_run_watchdog(const char *name, void (*fn)(void), unsigned seconds)
{
	static bool handler_set;
	if (!handler_set) {
		signal(SIGALRM, t_on_alarm);
		handler_set = true;
	}
	t_current_test = name;
	alarm(seconds);
	t_run(name, fn);
	alarm(0);
}

int t_finish(void)
{
	printf("1..%d\n", t_count);
	return t_failed_total ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* ---- loops ------------------------------------------------------------------------ */

struct weft_loop *t_loop_new(void)
{
	weft_loop *loop = NULL;
	CHECK_EQ(weft_loop_new(&loop), 0);
	return loop;
}

void t_loop_free(struct weft_loop *loop)
{
	int r = -EBUSY;
	for (int i = 0; i < 200 && (r = weft_loop_free(loop)) == -EBUSY; i++)
		weft_loop_run(loop, WEFT_RUN_NOWAIT);
	CHECK_EQ(r, 0);
}

void t_tick(struct weft_timer *t, void *data)
{
	(void)t;
	(void)data;
}

/* Run until done() says so or ms pass. */
static bool t_run_while(weft_loop *loop, bool (*done)(const void *arg, int n), const void *arg, int n,
		unsigned ms)
{
	weft_timer *t = NULL;
	if (weft_timer_new(loop, t_tick, NULL, &t) == 0)
		weft_timer_start(t, 20, 20);
	uint64_t end = t_now_ms() + ms;
	while (!done(arg, n) && t_now_ms() < end)
		weft_loop_run(loop, WEFT_RUN_ONCE);
	weft_timer_free(t);
	return done(arg, n);
}

static bool flag_set(const void *arg, int n)
{
	(void)n;
	return *(const bool *)arg;
}

static bool count_reached(const void *arg, int n)
{
	return *(const int *)arg >= n;
}

bool t_run_until(struct weft_loop *loop, const bool *flag, unsigned ms)
{
	return t_run_while(loop, flag_set, flag, 0, ms);
}

bool t_run_until_count(struct weft_loop *loop, const int *count, int n, unsigned ms)
{
	return t_run_while(loop, count_reached, count, n, ms);
}

void t_run_for(struct weft_loop *loop, unsigned ms)
{
	bool never = false;
	t_run_until(loop, &never, ms);
}
