/* bench-util — what bench-loop and bench-echo share: messages and exits,
 * allocation, clocks, option parsing, the interleaved rounds, medians, the
 * watchdog and the results table.
 *
 * Call bench_init() first: it names the program in every message.
 */
#ifndef WEFT_BENCH_UTIL_H
#define WEFT_BENCH_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* The most measured rounds; sample arrays hold MAX_ROUNDS + 1 values. */
#define MAX_ROUNDS 63

/* `prog` prefixes every message ("prog: ...").  A bad number (parse_num)
 * ends the program with `bad_option_status`. */
void bench_init(const char *prog, int bad_option_status);

/* ---- messages and exits ----------------------------------------------------
 * All of them flush stdout first, so that the message follows what was
 * printed.  fail() and die() run the atexit handlers (exit, not _exit). */

__attribute__((format(printf, 2, 3), noreturn))
void fail(int status, const char *fmt, ...);

#define die(...) fail(1, __VA_ARGS__)

/* "prog: warning: ..." */
__attribute__((format(printf, 1, 2)))
void warn(const char *fmt, ...);

/* ---- allocation and errors of the libraries ------------------------------ */

/* Allocate or die("out of memory"); xcalloc(0, ...) returns a block too. */
void *xmalloc(size_t size);
void *xcalloc(size_t n, size_t size);

/* weft returns 0 / a count or -errno; libuv 0 or a negative UV_E*. */
void wcheck(int r, const char *what);
void uvcheck(int r, const char *what);

/* ---- clocks ---------------------------------------------------------------- */

double now_mono(void); /* CLOCK_MONOTONIC, seconds */
double now_cpu(void);  /* CLOCK_THREAD_CPUTIME_ID: this thread's user + system time */

/* ---- options ----------------------------------------------------------------- */

/* The options both programs take (in their optstring), which
 * bench_getopt() handles itself. */
extern struct bench_options {
	int rounds;   /* -r N: measured rounds, after one warm-up round (default 5) */
	bool rotate;  /* -o: rotate the order of the implementations each round */
	bool verbose; /* -v: print every round */
	bool quick;   /* -q: a quick run; -r 1 unless -r is given (the program
	               * sets its own quick values, where not option_given()) */
} bench;

/* getopt(3), which also handles -r, -o, -v and -q (see bench), and: -h
 * prints usage(stdout) and exits 0; an unknown option, a missing argument
 * or, after the last option, an operand print usage(stderr) and exit 2.
 * Returns the next option that is the program's own, or -1 after the
 * last. */
int bench_getopt(int argc, char **argv, const char *optstring, void (*usage)(FILE *f));

/* Whether bench_getopt() has returned option o. */
bool option_given(char o);

/* A decimal number in lo..hi, or fail(bad_option_status,
 * "-o: expected a number in lo..hi, got 'arg'"). */
long parse_num(const char *arg, char o, long lo, long hi);

/* A comma-separated selection of names[0..n) (or "all") into sel[0..n).
 * `aliases`: NULL, or pairs { "alias", "name", ..., NULL } of other
 * spellings.  False if a word is none of them. */
bool parse_list(const char *arg, const char *const *names, int n, const char *const *aliases,
                bool *sel);

/* ---- rounds -------------------------------------------------------------------- */

/* Rounds -1 (the warm-up) to bench.rounds - 1; in each, fn(impl, round,
 * arg) for every impl with sel[impl], in the order 0..n-1, or with -o that
 * order rotated by one more each round, so that no implementation always
 * runs right after the same other one. */
void run_interleaved(int n, const bool *sel, void (*fn)(int impl, int round, void *arg), void *arg);

/* The median of v[0..n); 0 if n <= 0.  v is left as it is. */
double median(const double *v, int n);

/* ---- watchdog: SIGALRM after a round took too long ------------------------
 * The program installs its SIGALRM handler (or wd_on_alarm).  first_names
 * and second_names name what wd_arm() is given; `hint` ends the message. */

void wd_init(unsigned seconds, const char *const *first_names, const char *const *second_names,
             const char *hint);
void wd_arm(int first, int second); /* -1: unknown ("?") */
void wd_disarm(void);

/* "\nprog: watchdog: a round of FIRST / SECOND did not finish in time
 * (hint)\n" on stderr; async-signal-safe. */
void wd_report(void);

/* A SIGALRM handler: wd_report(), then _exit(3). */
void wd_on_alarm(int signum);

/* ---- the results table ------------------------------------------------------------
 *
 *     title            |   col 1 |    col 2 | ...
 *     -----------------+---------+----------+----
 *
 * The title column is tw wide, column c w[c] wide (right-aligned). */

/* A rate per second: "12.346 M", "45.7 k" or "123". */
void fmt_rate(char *buf, size_t len, double v);

/* "num / den" with two decimals if `have` and den > 0, else "-". */
void fmt_ratio(char *buf, size_t len, bool have, double num, double den);

/* An empty line, the header line and the rule under it. */
void table_head(int tw, const char *title, int n, const int *w, const char *const *heads);
void table_row(int tw, const char *title, int n, const int *w, const char *const *cells);

#endif
