/* bench-fdpass — request/response round trips with one descriptor in each
 * response: weft fdpass (client and server) against raw blocking
 * sendmsg/recvmsg ping-pong, in one run.
 *
 * Each round forks a server process and the program itself is the client,
 * so client and server are always two processes:
 *   raw   a socketpair; the client sendmsg()s an M-byte request and
 *         recvmsg()s (MSG_CMSG_CLOEXEC) the M-byte response with one
 *         SCM_RIGHTS descriptor, then closes that descriptor; the server
 *         recvmsg()s the request and sendmsg()s the response with the same
 *         /dev/null descriptor every time.  Blocking sockets, no poll.
 *   weft  a weft_fdpass_server on an abstract Unix address lends the same
 *         /dev/null descriptor to every response (weft_fdpass_call_reply
 *         inside the request handler); the client is a weft_fdpass_client
 *         whose request callback takes the response (weft_fdpass_request_recv),
 *         closes the descriptor (weft_fdpass_msg_clear) and sends the next
 *         request.  Both run weft's built-in epoll loop.
 *
 * The rate is round trips per second of the client (CLOCK_MONOTONIC from
 * the first request to the last response); rounds are interleaved (raw,
 * weft, raw, ...) after one warm-up round each; the table shows medians
 * and weft / raw.  With -P (or under taskset -c 0) client and server share
 * CPU 0, as in the target (ratio >= 0.9).
 *
 * Exit status: 0, 1 on a wrong response or a failure, 2 for bad options,
 * 3 if a round did not finish within the watchdog time. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <weft/weft.h>
#include <weft/fdpass.h>

#include "../bench-util.h"

/* The four sides run in functions of their own, kept out of line, so
 * callgrind can count each alone: --toggle-collect=timed_client_raw,
 * timed_server_raw, timed_client_weft, timed_server_weft (bench/README.md). */
#define NOINLINE __attribute__((noinline))

enum { I_RAW, I_WEFT, NIMPL };
static const char *const impl_names[NIMPL] = {"raw", "weft"};

static struct {
	long n;          /* round trips per round */
	int msg;         /* request and response payload bytes */
	bool pin;
	bool sel[NIMPL];
	unsigned watchdog;
} opt = {.n = 100000, .msg = 32, .watchdog = 120};

static double samples[NIMPL][MAX_ROUNDS + 1];     /* round trips per second (wall clock) */
static double cpu_samples[NIMPL][MAX_ROUNDS + 1]; /* round trips per CPU-second, both processes */
static double usr_samples[NIMPL][MAX_ROUNDS + 1]; /* user CPU microseconds per round trip, both */
static double sys_samples[NIMPL][MAX_ROUNDS + 1]; /* system CPU microseconds per round trip, both */
static int nsamples[NIMPL];

/* CPU time in seconds: user and system. */
struct cpu {
	double usr, sys;
};

static struct cpu ru_cpu(const struct rusage *ru)
{
	return (struct cpu){
		.usr = (double)ru->ru_utime.tv_sec + (double)ru->ru_utime.tv_usec / 1e6,
		.sys = (double)ru->ru_stime.tv_sec + (double)ru->ru_stime.tv_usec / 1e6,
	};
}

static struct cpu self_cpu(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru_cpu(&ru);
}

/* Wait for the round's server; its CPU time goes to *cpu.  False if it
 * failed. */
static bool reap_server(pid_t pid, struct cpu *cpu)
{
	int st;
	struct rusage ru;
	if (wait4(pid, &st, 0, &ru) < 0)
		return false;
	*cpu = ru_cpu(&ru);
	return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* The CPU figures of the last round. */
static double last_cpu_rate, last_usr_us, last_sys_us;

/* Record the CPU time of a round: the client's from c0 to c1, and the
 * server's. */
static void note_cpu(struct cpu c0, struct cpu c1, struct cpu server)
{
	double usr = c1.usr - c0.usr + server.usr;
	double sys = c1.sys - c0.sys + server.sys;
	last_cpu_rate = (double)opt.n / (usr + sys);
	last_usr_us = usr * 1e6 / (double)opt.n;
	last_sys_us = sys * 1e6 / (double)opt.n;
}

static void pin_cpu0(void)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(0, &set);
	if (sched_setaffinity(0, sizeof set, &set) < 0)
		die("sched_setaffinity: %s", strerror(errno));
}

/* ---- raw ------------------------------------------------------------------------ */

typedef union {
	struct cmsghdr align;
	char buf[CMSG_SPACE(sizeof(int))];
} cmsg1;

/* The raw server's loop until the client closes: 0, or 1 on a failure. */
static NOINLINE int timed_server_raw(int s, int devnull)
{
	char buf[4096];
	for (;;) {
		ssize_t n = recv(s, buf, (size_t)opt.msg, MSG_WAITALL);
		if (n <= 0)
			return n == 0 ? 0 : 1;
		cmsg1 cb;
		memset(&cb, 0, sizeof(cb));
		struct iovec iov = {buf, (size_t)n};
		struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.buf, .msg_controllen = sizeof(cb.buf)};
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &devnull, sizeof(int));
		if (sendmsg(s, &m, MSG_NOSIGNAL) != n)
			return 1;
	}
}

static void raw_server(int s)
{
	int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (devnull < 0)
		_exit(1);
	_exit(timed_server_raw(s, devnull));
}

/* The raw client's round trips (dies on a wrong response). */
static NOINLINE void timed_client_raw(int s)
{
	char req[4096], resp[4096];
	memset(req, 'q', (size_t)opt.msg);
	for (long i = 0; i < opt.n; i++) {
		memcpy(req, &i, sizeof(i));
		if (send(s, req, (size_t)opt.msg, MSG_NOSIGNAL) != opt.msg)
			die("raw: send: %s", strerror(errno));
		cmsg1 cb;
		struct iovec iov = {resp, (size_t)opt.msg};
		struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.buf, .msg_controllen = sizeof(cb.buf)};
		ssize_t n = recvmsg(s, &m, MSG_CMSG_CLOEXEC | MSG_WAITALL);
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		if (n != opt.msg || c == NULL || c->cmsg_type != SCM_RIGHTS || memcmp(resp, &i, sizeof(i)) != 0)
			die("raw: wrong response %ld", i);
		int fd;
		memcpy(&fd, CMSG_DATA(c), sizeof(int));
		close(fd);
	}
}

static double raw_round(void)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair: %s", strerror(errno));
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		close(sv[0]);
		raw_server(sv[1]);
	}
	close(sv[1]);
	int s = sv[0];
	struct cpu c0 = self_cpu();
	double t0 = now_mono();
	timed_client_raw(s);
	double dt = now_mono() - t0;
	struct cpu c1 = self_cpu(), scpu;
	close(s);
	if (!reap_server(pid, &scpu))
		die("raw: the server failed");
	note_cpu(c0, c1, scpu);
	return (double)opt.n / dt;
}

/* ---- weft ----------------------------------------------------------------------- */

struct wserver {
	int devnull;
	weft_loop *loop;
	const weft_fdpass_server *srv;
};

/* The client's last request, after its clock stopped: the server's loop
 * may stop once it is answered. */
static const char bye[] = "bye";

static void wserver_request(weft_fdpass_server *srv, weft_fdpass_call *call, const weft_fdpass_msg *req,
		const weft_fdpass_peer *peer, void *data)
{
	struct wserver *w = data;
	(void)srv;
	(void)peer;
	if (weft_fdpass_call_reply(call, req->buf, req->len, &w->devnull, 1, NULL) < 0)
		_exit(1);
	if (req->len == sizeof(bye) && memcmp(req->buf, bye, sizeof(bye)) == 0)
		weft_loop_stop(w->loop);
}

/* The weft server's loop, run as a server application runs it
 * (WEFT_RUN_DEFAULT, no timer: epoll_wait blocks without a timeout) until
 * the client's "bye", then until the client has gone. */
static NOINLINE int timed_server_weft(weft_loop *loop, const struct wserver *w)
{
	int r = weft_loop_run(loop, WEFT_RUN_DEFAULT);
	while (r >= 0 && weft_fdpass_server_connections(w->srv) > 0)
		r = weft_loop_run(loop, WEFT_RUN_ONCE);
	return r < 0 ? r : 0;
}

static void weft_server(const weft_addr *addr, int ready_fd)
{
	struct wserver w = {.devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)};
	weft_loop *loop;
	weft_fdpass_server *srv;
	if (w.devnull < 0 || weft_loop_new(&loop) < 0 ||
	    weft_fdpass_server_new(loop, addr, NULL, wserver_request, &w, &srv, NULL) < 0)
		_exit(1);
	if (write(ready_fd, "r", 1) != 1)
		_exit(1);
	close(ready_fd);
	w.loop = loop;
	w.srv = srv;
	if (timed_server_weft(loop, &w) < 0)
		_exit(1);
	weft_fdpass_server_close(srv, NULL, NULL);
	for (int i = 0; i < 4; i++)
		weft_loop_run(loop, WEFT_RUN_NOWAIT);
	close(w.devnull);
	_exit(weft_loop_free(loop) == 0 ? 0 : 1);
}

struct wclient {
	weft_loop *loop;
	weft_fdpass_client *c;
	char req[4096];
	long i;
	bool failed;
};

static void wclient_send(struct wclient *w);

static void wclient_done(weft_req *req, void *data)
{
	struct wclient *w = data;
	weft_fdpass_msg m;
	int r = weft_fdpass_request_recv(req, &m, NULL, NULL);
	weft_req_free(req);
	if (r < 0 || m.nfds != 1 || m.len != (size_t)opt.msg || memcmp(m.buf, &w->i, sizeof(w->i)) != 0) {
		w->failed = true;
		if (r == 0)
			weft_fdpass_msg_clear(&m);
		weft_loop_stop(w->loop);
		return;
	}
	weft_fdpass_msg_clear(&m); /* closes the descriptor */
	if (++w->i == opt.n) {
		weft_loop_stop(w->loop);
		return;
	}
	wclient_send(w);
}

static void wclient_send(struct wclient *w)
{
	memcpy(w->req, &w->i, sizeof(w->i));
	weft_req *req = weft_fdpass_request_send(w->c, w->req, (size_t)opt.msg, NULL, 0);
	if (req == NULL)
		die("weft: out of memory");
	weft_req_set_callback(req, wclient_done, w);
}

/* The weft client's round trips: the first request, then the loop (each
 * response callback sends the next request). */
static NOINLINE void timed_client_weft(struct wclient *w)
{
	wclient_send(w);
	weft_loop_run(w->loop, WEFT_RUN_DEFAULT);
}

static double weft_round(void)
{
	static int seq;
	char text[96];
	snprintf(text, sizeof(text), "unix:@weft-bench-fdpass-%d-%d", (int)getpid(), ++seq);
	weft_addr addr;
	wcheck(weft_addr_parse(text, &addr), "weft_addr_parse");
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		die("pipe: %s", strerror(errno));
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		close(p[0]);
		weft_server(&addr, p[1]);
	}
	close(p[1]);
	char b;
	if (read(p[0], &b, 1) != 1)
		die("weft: the server did not start");
	close(p[0]);

	struct wclient w = {0};
	memset(w.req, 'q', sizeof(w.req));
	wcheck(weft_loop_new(&w.loop), "weft_loop_new");
	weft_req *creq = weft_fdpass_connect_send(w.loop, &addr);
	wcheck(weft_req_wait(creq), "weft_req_wait");
	wcheck(weft_fdpass_connect_recv(creq, &w.c, NULL), "weft_fdpass_connect_recv");
	weft_req_free(creq);
	struct cpu c0 = self_cpu();
	double t0 = now_mono();
	timed_client_weft(&w);
	double dt = now_mono() - t0;
	struct cpu c1 = self_cpu(), scpu;
	if (w.failed || w.i != opt.n)
		die("weft: wrong response %ld", w.i);
	/* bye: the server's loop may stop */
	weft_req *breq = weft_fdpass_request_send(w.c, bye, sizeof(bye), NULL, 0);
	if (breq == NULL)
		die("weft: out of memory");
	wcheck(weft_req_wait(breq), "weft_req_wait");
	weft_fdpass_msg bm;
	wcheck(weft_fdpass_request_recv(breq, &bm, NULL, NULL), "weft_fdpass_request_recv (bye)");
	weft_fdpass_msg_clear(&bm);
	weft_req_free(breq);
	weft_fdpass_client_free(w.c);
	for (int i = 0; i < 4; i++)
		weft_loop_run(w.loop, WEFT_RUN_NOWAIT);
	wcheck(weft_loop_free(w.loop), "weft_loop_free");
	if (!reap_server(pid, &scpu))
		die("weft: the server failed");
	note_cpu(c0, c1, scpu);
	return (double)opt.n / dt;
}

/* ---- rounds and the table ----------------------------------------------------------------- */

static void one_round(int impl, int round, void *arg)
{
	(void)arg;
	wd_arm(impl, -1);
	double v = impl == I_RAW ? raw_round() : weft_round();
	wd_disarm();
	if (bench.verbose)
		printf("round %2d  %-5s %12.0f rt/s  %12.0f rt/CPU-s  %6.2f us user  %6.2f us system per rt\n",
		       round, impl_names[impl], v, last_cpu_rate, last_usr_us, last_sys_us);
	if (round >= 0) {
		cpu_samples[impl][nsamples[impl]] = last_cpu_rate;
		usr_samples[impl][nsamples[impl]] = last_usr_us;
		sys_samples[impl][nsamples[impl]] = last_sys_us;
		samples[impl][nsamples[impl]++] = v;
	}
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: bench-fdpass [-q] [-v] [-o] [-P] [-r rounds] [-n rt] [-m bytes] [-s impls] [-W s]\n"
	        "  -r N   measured rounds per implementation, after one warm-up round (default 5)\n"
	        "  -n N   round trips per round (default 100000)\n"
	        "  -m N   request and response payload bytes, 8..4096 (default 32)\n"
	        "  -s L   implementations, comma-separated: raw,weft (default both)\n"
	        "  -o     rotate the order of the implementations by one each round\n"
	        "  -P     pin the client and the servers to CPU 0 (or run under taskset -c 0)\n"
	        "  -q     quick run (smoke test): -r 1 -n 2000 (explicit options win)\n"
	        "  -v     print every round\n"
	        "  -W S   watchdog: a round longer than S seconds ends the program with status 3\n"
	        "         (default 120)\n");
}

int main(int argc, char **argv)
{
	bench_init("bench-fdpass", 2);
	signal(SIGPIPE, SIG_IGN);
	opt.sel[I_RAW] = opt.sel[I_WEFT] = true;
	int o;
	while ((o = bench_getopt(argc, argv, "r:n:m:s:oPqvW:h", usage)) != -1) {
		switch (o) {
		case 'n': opt.n = parse_num(optarg, 'n', 1, 100000000); break;
		case 'm': opt.msg = (int)parse_num(optarg, 'm', 8, 4096); break;
		case 'P': opt.pin = true; break;
		case 'W': opt.watchdog = (unsigned)parse_num(optarg, 'W', 1, 86400); break;
		case 's':
			if (!parse_list(optarg, impl_names, NIMPL, NULL, opt.sel))
				fail(2, "-s: expected raw and/or weft, got '%s'", optarg);
			break;
		default: usage(stderr); return 2;
		}
	}
	if (bench.quick && !option_given('n'))
		opt.n = 2000;
	if (opt.pin)
		pin_cpu0();
	wd_init(opt.watchdog, impl_names, NULL, "a lost response?");
	signal(SIGALRM, wd_on_alarm);

	run_interleaved(NIMPL, opt.sel, one_round, NULL);

	const char *heads[3] = {"raw", "weft", "weft/raw"};
	int widths[3] = {10, 10, 9};
	table_head(44, "row (median)", 3, widths, heads);
	for (int k = 0; k < 2; k++) {
		double med[NIMPL];
		for (int i = 0; i < NIMPL; i++)
			med[i] = median(k == 0 ? samples[i] : cpu_samples[i], nsamples[i]);
		char cells[3][32], title[64];
		snprintf(title, sizeof(title), "req/resp + 1 fd, %d B (%s)", opt.msg, k == 0 ? "rt/s" : "rt/CPU-s");
		for (int i = 0; i < NIMPL; i++) {
			if (opt.sel[i])
				fmt_rate(cells[i], sizeof(cells[i]), med[i]);
			else
				snprintf(cells[i], sizeof(cells[i]), "-");
		}
		fmt_ratio(cells[2], sizeof(cells[2]), opt.sel[I_RAW] && opt.sel[I_WEFT], med[I_WEFT], med[I_RAW]);
		const char *row[3] = {cells[0], cells[1], cells[2]};
		table_row(44, title, 3, widths, row);
	}
	/* Where the CPU time goes, per round trip (lower is better; the last
	 * column is weft minus raw). */
	for (int k = 0; k < 2; k++) {
		double med[NIMPL];
		for (int i = 0; i < NIMPL; i++)
			med[i] = median(k == 0 ? usr_samples[i] : sys_samples[i], nsamples[i]);
		char cells[3][32], title[64];
		snprintf(title, sizeof(title), "  %s CPU per rt, both sides (us)", k == 0 ? "user" : "system");
		for (int i = 0; i < NIMPL; i++) {
			if (opt.sel[i])
				snprintf(cells[i], sizeof(cells[i]), "%.2f", med[i]);
			else
				snprintf(cells[i], sizeof(cells[i]), "-");
		}
		if (opt.sel[I_RAW] && opt.sel[I_WEFT])
			snprintf(cells[2], sizeof(cells[2]), "%+.2f", med[I_WEFT] - med[I_RAW]);
		else
			snprintf(cells[2], sizeof(cells[2]), "-");
		const char *row[3] = {cells[0], cells[1], cells[2]};
		table_row(44, title, 3, widths, row);
	}
	return 0;
}
