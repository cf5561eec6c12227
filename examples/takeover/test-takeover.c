/* test-takeover — zero-downtime handover of a listening socket, checked
 * under load.
 *
 *   test-takeover PATH-TO-takeover
 *
 * Starts the takeover server on 127.0.0.1 (a free port), runs a client
 * load loop of short connections (8 in flight, each: connect, "ping\n",
 * read "pong PID\n" until EOF) and, during it, makes the server hand over
 * to a successor twice (SIGUSR2: generation 1 -> 2 -> 3).  Asserts:
 * zero failed connections; every old generation exits with status 0;
 * answers come from each generation; the last one stops on SIGTERM.  The
 * load is bounded in count (40 000 connections) and time (60 s); this
 * program is a child subreaper so it can reap the successors.  TAP output. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define INFLIGHT 8
#define MAX_CONNS 40000
#define MAX_MS 60000
#define CONN_TIMEOUT_MS 10000
#define PER_PHASE 300

static int g_tests, g_failed;

static void ok(bool cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ok(bool cond, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("%sok %d - ", cond ? "" : "not ", ++g_tests);
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	fflush(stdout);
	if (!cond)
		g_failed++;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- children: started, reaped (also the adopted successors) ---------------- */

#define MAX_PIDS 8
static struct {
	pid_t pid;
	int status; /* -1: running */
} g_kids[MAX_PIDS];
static int g_nkids;

static int kid_index(pid_t pid)
{
	for (int i = 0; i < g_nkids; i++)
		if (g_kids[i].pid == pid)
			return i;
	if (g_nkids == MAX_PIDS)
		return -1;
	g_kids[g_nkids].pid = pid;
	g_kids[g_nkids].status = -1;
	return g_nkids++;
}

static void reap(void)
{
	int st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		int i = kid_index(pid);
		if (i >= 0)
			g_kids[i].status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	}
}

static int kid_status(pid_t pid)
{
	reap();
	int i = kid_index(pid);
	return i < 0 ? -2 : g_kids[i].status;
}

/* ---- the load ----------------------------------------------------------------- */

struct client {
	int fd;
	uint64_t started;
	char buf[64];
	size_t len;
	bool sent;
};

struct load {
	struct sockaddr_in addr;
	struct client c[INFLIGHT];
	long ok, failed, total;
	pid_t pids[16]; /* distinct answering pids, in order of appearance */
	long per_pid[16];
	int npids;
	char first_error[128];
};

static void fail_conn(struct load *l, struct client *c, const char *why)
{
	l->failed++;
	if (l->first_error[0] == '\0')
		snprintf(l->first_error, sizeof(l->first_error), "%s (%s)", why, strerror(errno));
	close(c->fd);
	c->fd = -1;
}

static void start_conn(struct load *l, struct client *c)
{
	memset(c, 0, sizeof(*c));
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	c->started = now_ms();
	l->total++;
	if (c->fd < 0) {
		fail_conn(l, c, "socket");
		return;
	}
	if (connect(c->fd, (struct sockaddr *)&l->addr, sizeof(l->addr)) < 0 && errno != EINPROGRESS)
		fail_conn(l, c, "connect");
}

static void finish_conn(struct load *l, struct client *c)
{
	int pid = 0;
	if (c->len < 7 || sscanf(c->buf, "pong %d", &pid) != 1 || c->buf[c->len - 1] != '\n') {
		errno = EPROTO;
		fail_conn(l, c, "bad answer");
		return;
	}
	close(c->fd);
	c->fd = -1;
	l->ok++;
	int i = 0;
	while (i < l->npids && l->pids[i] != pid)
		i++;
	if (i == l->npids && l->npids < 16)
		l->pids[l->npids++] = pid;
	if (i < 16)
		l->per_pid[i]++;
}

/* One poll round over the connections in flight. */
static void load_step(struct load *l)
{
	struct pollfd p[INFLIGHT];
	for (int i = 0; i < INFLIGHT; i++) {
		struct client *c = &l->c[i];
		if (c->fd < 0)
			start_conn(l, c);
		p[i].fd = c->fd;
		p[i].events = c->sent ? POLLIN : POLLOUT;
		p[i].revents = 0;
	}
	poll(p, INFLIGHT, 50);
	for (int i = 0; i < INFLIGHT; i++) {
		struct client *c = &l->c[i];
		if (c->fd < 0)
			continue;
		if (now_ms() - c->started > CONN_TIMEOUT_MS) {
			errno = ETIMEDOUT;
			fail_conn(l, c, "no answer in time");
			continue;
		}
		if (p[i].revents == 0)
			continue;
		if (!c->sent) {
			int err = 0;
			socklen_t len = sizeof(err);
			getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
			if (err != 0) {
				errno = err;
				fail_conn(l, c, "connect");
				continue;
			}
			if (send(c->fd, "ping\n", 5, MSG_NOSIGNAL) != 5) {
				fail_conn(l, c, "send");
				continue;
			}
			c->sent = true;
			continue;
		}
		ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, 0);
		if (n > 0) {
			c->len += (size_t)n;
			c->buf[c->len] = '\0';
			if (c->len == sizeof(c->buf) - 1) {
				errno = EMSGSIZE;
				fail_conn(l, c, "answer too long");
			}
		} else if (n == 0) {
			finish_conn(l, c);
		} else if (errno != EAGAIN && errno != EINTR) {
			fail_conn(l, c, "recv");
		}
	}
}

static bool over_budget(const struct load *l, uint64_t t0)
{
	return l->total >= MAX_CONNS || now_ms() - t0 > MAX_MS;
}

/* Run until `until` answers more have come from a pid other than those
 * seen before, and `old` (if > 0) has exited. */
static void load_phase(struct load *l, uint64_t t0, long until, int known_pids, pid_t old)
{
	long base = 0;
	bool counting = false;
	while (!over_budget(l, t0)) {
		load_step(l);
		bool gone = old <= 0 || kid_status(old) >= 0;
		if (!counting && gone && l->npids > known_pids) {
			counting = true;
			base = l->ok;
		}
		if (counting && l->ok - base >= until)
			return;
	}
}

static void drain(struct load *l)
{
	uint64_t end = now_ms() + CONN_TIMEOUT_MS;
	for (;;) {
		bool busy = false;
		for (int i = 0; i < INFLIGHT; i++)
			busy = busy || l->c[i].fd >= 0;
		if (!busy || now_ms() > end)
			break;
		/* finish the ones in flight without starting new ones */
		struct pollfd p[INFLIGHT];
		for (int i = 0; i < INFLIGHT; i++) {
			p[i].fd = l->c[i].fd;
			p[i].events = l->c[i].sent ? POLLIN : POLLOUT;
		}
		poll(p, INFLIGHT, 50);
		for (int i = 0; i < INFLIGHT; i++) {
			struct client *c = &l->c[i];
			if (c->fd < 0 || p[i].revents == 0)
				continue;
			if (!c->sent) {
				if (send(c->fd, "ping\n", 5, MSG_NOSIGNAL) != 5)
					fail_conn(l, c, "send");
				else
					c->sent = true;
				continue;
			}
			ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, 0);
			if (n > 0) {
				c->len += (size_t)n;
				c->buf[c->len] = '\0';
			} else if (n == 0) {
				finish_conn(l, c);
			} else if (errno != EAGAIN) {
				fail_conn(l, c, "recv");
			}
		}
	}
}

static int wait_exit(pid_t pid, unsigned ms)
{
	uint64_t end = now_ms() + ms;
	int st;
	while ((st = kid_status(pid)) == -1 && now_ms() < end)
		usleep(10000);
	return st;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: test-takeover PATH-TO-takeover\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) {
		printf("Bail out! PR_SET_CHILD_SUBREAPER: %s\n", strerror(errno));
		return 1;
	}
	char dir[] = "/tmp/weft-takeover-XXXXXX";
	if (mkdtemp(dir) == NULL) {
		printf("Bail out! mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	char port_file[128], ctrl[128];
	snprintf(port_file, sizeof(port_file), "%s/port", dir);
	snprintf(ctrl, sizeof(ctrl), "unix:@weft-takeover-test-%d", (int)getpid());

	pid_t gen1 = fork();
	if (gen1 == 0) {
		execl(argv[1], argv[1], "--listen", "tcp:127.0.0.1:0", "--control", ctrl, "--port-file", port_file,
				(char *)NULL);
		_exit(127);
	}
	kid_index(gen1);
	int port = 0;
	uint64_t end = now_ms() + 10000;
	while (port == 0 && now_ms() < end && kid_status(gen1) == -1) {
		FILE *f = fopen(port_file, "r");
		if (f != NULL) {
			if (fscanf(f, "%d", &port) != 1)
				port = 0;
			fclose(f);
		}
		if (port == 0)
			usleep(10000);
	}
	ok(port > 0, "generation 1 listens on 127.0.0.1:%d", port);
	if (port == 0) {
		kill(gen1, SIGKILL);
		printf("1..%d\n", g_tests);
		return 1;
	}

	struct load l = {0};
	l.addr.sin_family = AF_INET;
	l.addr.sin_port = htons((uint16_t)port);
	l.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (int i = 0; i < INFLIGHT; i++)
		l.c[i].fd = -1;
	uint64_t t0 = now_ms();

	/* generation 1 alone */
	load_phase(&l, t0, PER_PHASE, 0, 0);
	ok(l.npids == 1 && l.pids[0] == gen1 && l.failed == 0, "generation 1 answers (%ld ok, %ld failed)",
			l.ok, l.failed);

	/* 1 -> 2 under load */
	kill(gen1, SIGUSR2);
	load_phase(&l, t0, PER_PHASE, 1, gen1);
	pid_t gen2 = l.npids >= 2 ? l.pids[1] : -1;
	ok(gen2 > 0 && gen2 != gen1, "generation 2 (pid %d) answers", (int)gen2);
	ok(kid_status(gen1) == 0, "generation 1 exited with status 0 (%d)", kid_status(gen1));

	/* 2 -> 3 under load: the successor took the control address over too */
	if (gen2 > 0)
		kill(gen2, SIGUSR2);
	load_phase(&l, t0, PER_PHASE, 2, gen2);
	pid_t gen3 = l.npids >= 3 ? l.pids[2] : -1;
	ok(gen3 > 0 && gen3 != gen2, "generation 3 (pid %d) answers", (int)gen3);
	ok(gen2 > 0 && kid_status(gen2) == 0, "generation 2 exited with status 0 (%d)",
			gen2 > 0 ? kid_status(gen2) : -1);
	drain(&l);

	ok(l.failed == 0, "zero failed connections: %ld ok, %ld failed of %ld%s%s", l.ok, l.failed, l.total,
			l.first_error[0] ? "; first: " : "", l.first_error);
	ok(!over_budget(&l, t0), "within bounds: %ld connections, %llu ms", l.total,
			(unsigned long long)(now_ms() - t0));
	for (int i = 0; i < l.npids; i++)
		printf("# pid %d answered %ld\n", (int)l.pids[i], l.per_pid[i]);

	if (gen3 > 0)
		kill(gen3, SIGTERM);
	ok(gen3 > 0 && wait_exit(gen3, 10000) == 0, "generation 3 stops on SIGTERM with status 0");

	/* nothing left running */
	reap();
	for (int i = 0; i < g_nkids; i++)
		if (g_kids[i].status == -1) {
			kill(g_kids[i].pid, SIGKILL);
			ok(false, "pid %d still running", (int)g_kids[i].pid);
		}
	unlink(port_file);
	rmdir(dir);
	printf("1..%d\n", g_tests);
	return g_failed ? 1 : 0;
}
