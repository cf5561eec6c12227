/* Shared helper for weft's test programs: a small TAP runner that also
 * checks every test for leaked file descriptors. */
#ifndef WEFT_TEST_HELPER_H
#define WEFT_TEST_HELPER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* Record a failure (with the expression and position) and go on. */
#define CHECK(cond) \
	((cond) ? (void)0 : t_fail(__FILE__, __LINE__, #cond))
/* Compare two integers, printing both on failure. */
#define CHECK_EQ(a, b) \
	t_check_eq(__FILE__, __LINE__, #a " == " #b, (long long)(a), (long long)(b))
/* Record a failure and leave the current test function. */
#define REQUIRE(cond) \
	do { if (!(cond)) { t_fail(__FILE__, __LINE__, #cond); return; } } while (0)

void t_fail(const char *file, int line, const char *expr);
void t_check_eq(const char *file, int line, const char *expr, long long a, long long b);

/* Run one test: prints "ok N - name" or "not ok N - name".  A test fails if
 * any CHECK failed or if the number of open fds differs afterwards. */
void t_run(const char *name, void (*fn)(void));

/* t_run under a watchdog: a test still running after `seconds` ends the
 * program with "Bail out! watchdog: test NAME hangs" (exit status 2). */
void t_run_watchdog(const char *name, void (*fn)(void), unsigned seconds);

/* Print the TAP plan; returns the process exit status (0: all passed). */
int t_finish(void);

/* Number of open file descriptors of this process (/proc/self/fd). */
int t_fd_count(void);

/* CLOCK_MONOTONIC in milliseconds. */
uint64_t t_now_ms(void);

/* ---- loops (the built-in backend) ------------------------------------------- */
struct weft_loop;
/* A new loop (a failed check if it cannot be made). */
struct weft_loop *t_loop_new(void);
/* Run it until it can be freed, then free it (checked). */
void t_loop_free(struct weft_loop *loop);
/* Run it until *flag is true or ms pass (a 20 ms timer keeps it from
 * blocking for good); returns *flag. */
bool t_run_until(struct weft_loop *loop, const bool *flag, unsigned ms);
/* The same until *count >= n. */
bool t_run_until_count(struct weft_loop *loop, const int *count, int n, unsigned ms);
/* Run it for ms. */
void t_run_for(struct weft_loop *loop, unsigned ms);
/* A timer callback that does nothing (a timer that only wakes the loop). */
struct weft_timer;
void t_tick(struct weft_timer *t, void *data);

/* Sleep for ms milliseconds (resumed after signals). */
void t_sleep_ms(unsigned ms);

#endif
