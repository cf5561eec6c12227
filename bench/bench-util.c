/* bench-util — what bench-loop and bench-echo share; see bench-util.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "bench-util.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

static const char *prog = "bench";
static int option_status = 2;

void bench_init(const char *name, int bad_option_status)
{
	prog = name;
	option_status = bad_option_status;
}

/* ---- messages and exits ----------------------------------------------------- */

__attribute__((format(printf, 2, 0)))
static void vmessage(const char *kind, const char *fmt, va_list ap)
{
	fflush(stdout);
	fprintf(stderr, "%s: %s", prog, kind);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void fail(int status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmessage("", fmt, ap);
	va_end(ap);
	exit(status);
}

void warn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmessage("warning: ", fmt, ap);
	va_end(ap);
}

/* Async-signal-safe. */
static void sig_write(const char *s)
{
	ssize_t r = write(STDERR_FILENO, s, strlen(s));
	(void)r;
}

/* ---- allocation and errors of the libraries ---------------------------------- */

void *xmalloc(size_t size)
{
	void *p = malloc(size);
	if (p == NULL)
		die("out of memory");
	return p;
}

void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size);
	if (p == NULL)
		die("out of memory");
	return p;
}

void wcheck(int r, const char *what)
{
	if (r < 0)
		die("weft: %s: %s", what, strerror(-r));
}

void uvcheck(int r, const char *what)
{
	if (r < 0)
		die("libuv: %s: %s", what, uv_strerror(r));
}

/* ---- clocks ------------------------------------------------------------------------ */

static double now_s(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double now_mono(void)
{
	return now_s(CLOCK_MONOTONIC);
}

double now_cpu(void)
{
	return now_s(CLOCK_THREAD_CPUTIME_ID);
}

/* ---- options --------------------------------------------------------------------- */

struct bench_options bench = { .rounds = 5 };

static bool given[256];

int bench_getopt(int argc, char **argv, const char *optstring, void (*usage)(FILE *f))
{
	int c;
	while ((c = getopt(argc, argv, optstring)) != -1) {
		given[(unsigned char)c] = true;
		switch (c) {
		case 'h': usage(stdout); exit(0);
		case '?': usage(stderr); exit(2);
		case 'r': bench.rounds = (int)parse_num(optarg, 'r', 1, MAX_ROUNDS); break;
		case 'o': bench.rotate = true; break;
		case 'v': bench.verbose = true; break;
		case 'q': bench.quick = true; break;
		default: return c;
		}
	}
	if (optind != argc) {
		usage(stderr);
		exit(2);
	}
	if (bench.quick && !given['r'])
		bench.rounds = 1;
	return -1;
}

bool option_given(char o)
{
	return given[(unsigned char)o];
}

long parse_num(const char *arg, char o, long lo, long hi)
{
	char *end;
	errno = 0;
	long v = strtol(arg, &end, 10);
	if (errno != 0 || end == arg || *end != '\0' || v < lo || v > hi)
		fail(option_status, "-%c: expected a number in %ld..%ld, got '%s'", o, lo, hi, arg);
	return v;
}

static bool is_alias(const char *tok, const char *name, const char *const *aliases)
{
	for (; aliases != NULL && aliases[0] != NULL; aliases += 2)
		if (strcmp(tok, aliases[0]) == 0 && strcmp(name, aliases[1]) == 0)
			return true;
	return false;
}

bool parse_list(const char *arg, const char *const *names, int n, const char *const *aliases,
                bool *sel)
{
	char *copy = strdup(arg), *save = NULL;
	if (copy == NULL)
		die("out of memory");
	for (int i = 0; i < n; i++)
		sel[i] = false;
	bool ok = true;
	for (char *tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		bool found = false;
		if (strcmp(tok, "all") == 0) {
			for (int i = 0; i < n; i++)
				sel[i] = true;
			found = true;
		}
		for (int i = 0; i < n && !found; i++)
			if (strcmp(tok, names[i]) == 0 || is_alias(tok, names[i], aliases)) {
				sel[i] = true;
				found = true;
			}
		if (!found)
			ok = false;
	}
	free(copy);
	return ok;
}

/* ---- rounds ------------------------------------------------------------------------ */

void run_interleaved(int n, const bool *sel, void (*fn)(int impl, int round, void *arg), void *arg)
{
	for (int round = -1; round < bench.rounds; round++)
		for (int i = 0; i < n; i++) {
			int impl = bench.rotate ? (i + round + 1) % n : i;
			if (sel[impl])
				fn(impl, round, arg);
		}
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

double median(const double *v, int n)
{
	if (n <= 0)
		return 0.0;
	double *tmp = xcalloc((size_t)n, sizeof *tmp);
	memcpy(tmp, v, (size_t)n * sizeof *tmp);
	qsort(tmp, (size_t)n, sizeof *tmp, cmp_double);
	double m = (n & 1) ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2.0;
	free(tmp);
	return m;
}

/* ---- watchdog ------------------------------------------------------------------------- */

static unsigned wd_seconds;
static const char *const *wd_names[2];
static const char *wd_hint = "";
static volatile sig_atomic_t wd_first = -1, wd_second = -1;

void wd_init(unsigned seconds, const char *const *first_names, const char *const *second_names,
             const char *hint)
{
	wd_seconds = seconds;
	wd_names[0] = first_names;
	wd_names[1] = second_names;
	wd_hint = hint;
}

void wd_arm(int first, int second)
{
	wd_first = first;
	wd_second = second;
	alarm(wd_seconds);
}

void wd_disarm(void)
{
	alarm(0);
	wd_first = -1;
	wd_second = -1;
}

void wd_report(void)
{
	int first = wd_first, second = wd_second;
	sig_write("\n");
	sig_write(prog);
	sig_write(": watchdog: a round of ");
	sig_write(first >= 0 ? wd_names[0][first] : "?");
	sig_write(" / ");
	sig_write(second >= 0 ? wd_names[1][second] : "?");
	sig_write(" did not finish in time (");
	sig_write(wd_hint);
	sig_write(")\n");
}

void wd_on_alarm(int signum)
{
	(void)signum;
	wd_report();
	_exit(3);
}

/* ---- the results table ------------------------------------------------------------------ */

void fmt_rate(char *buf, size_t len, double v)
{
	if (v >= 1e6)
		snprintf(buf, len, "%.3f M", v / 1e6);
	else if (v >= 1e3)
		snprintf(buf, len, "%.1f k", v / 1e3);
	else
		snprintf(buf, len, "%.0f", v);
}

void fmt_ratio(char *buf, size_t len, bool have, double num, double den)
{
	if (have && den > 0)
		snprintf(buf, len, "%.2f", num / den);
	else
		snprintf(buf, len, "-");
}

static void dashes(int n)
{
	for (int i = 0; i < n; i++)
		putchar('-');
}

void table_head(int tw, const char *title, int n, const int *w, const char *const *heads)
{
	putchar('\n');
	table_row(tw, title, n, w, heads);
	dashes(tw + 1);
	for (int c = 0; c < n; c++) {
		putchar('+');
		dashes(w[c] + (c < n - 1 ? 2 : 1));
	}
	putchar('\n');
}

void table_row(int tw, const char *title, int n, const int *w, const char *const *cells)
{
	printf("%-*s", tw, title);
	for (int c = 0; c < n; c++)
		printf(" | %*s", w[c], cells[c]);
	putchar('\n');
}
