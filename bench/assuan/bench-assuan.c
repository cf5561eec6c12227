/* bench-assuan — weft's Assuan server against libassuan 2.5's, and the raw
 * socket limit.
 *
 * Every server runs in its own process on one end of a socketpair; this
 * program is the client on the other end.  The servers:
 *   raw             blocking read(2)/write(2): answers "NOP\n" with "OK\n",
 *                   "GET n\n" with n raw bytes, "PUT n\n" by reading n raw
 *                   bytes and answering "OK\n" — the limit;
 *   weft            a weft Assuan server on weft's built-in loop;
 *   weft-hand       the same server driven by hand from a plain poll() loop
 *                   on an O_NONBLOCK socket (weft_assuan_get_active_fds +
 *                   weft_assuan_process_next);
 *   libassuan       assuan_accept + assuan_process (blocking socket);
 *   libassuan-next  assuan_process_next from a plain poll() loop on an
 *                   O_NONBLOCK socket (NOP row only: it sleeps 100 ms on
 *                   every EAGAIN).
 * The Assuan servers offer NOP (built-in), GET n (n bytes as D lines) and
 * PUT n (INQUIRE DATA with maximum n).  The payload is pseudo-random bytes
 * (about 1.2 % of them %, CR or LF, escaped on the wire); MB/s counts
 * payload bytes.
 *
 * For the Assuan clients (libassuan, weft) the raw server speaks Assuan:
 * GET n as the payload's D lines, encoded before the clock starts, and
 * OK; PUT n as "INQUIRE DATA", reading to "\nEND\n", OK — the cheapest
 * server such a client can have.
 *
 * The clients:
 *   raw        writes whole lines with write(2) and reads answers with
 *              read(2) (256 KiB at a time); its PUT data is encoded into D
 *              lines once, before the clock starts, and written with one
 *              write(2) on the blocking socket;
 *   libassuan  assuan_socket_connect_fd + assuan_transact (data callback
 *              for GET; inquire callback with assuan_send_data for PUT);
 *   weft       weft_assuan_client_adopt_send on its own weft loop (built-in
 *              epoll backend); each transaction's completion callback
 *              sends the next (weft_assuan_transact_send, data callback
 *              for GET, inquire callback answering with
 *              weft_assuan_client_inquire_data + _end for PUT).
 *
 * The rows: NOP round trips per second; GET (D lines, server -> client) and
 * PUT (INQUIRE, client -> server) in MB/s, 1 MiB per transaction.  Rounds
 * are interleaved after one warm-up round (NOP: every client with every
 * server in one interleaving); the table shows medians, the NOP targets the
 * median of each round's ratio to that round's raw ping-pong.  Then
 * the memory each idle connection costs (mallinfo2 over 1000 connections,
 * greeted and waiting for a command).
 *
 * -X SERVER:ROW -n N runs SERVER in the foreground for N transactions of
 * ROW with the raw client in an exec'ed child: for callgrind (only the
 * server is traced) and strace -f -c (both sides).  -C CLIENT:SERVER:ROW
 * -n N is the other way round: CLIENT in the foreground, SERVER exec'ed
 * (callgrind and strace without -f see the client alone).  -c and -i do
 * both themselves (strace, valgrind) and print syscalls and instructions
 * per transaction; see bench/assuan/README.md.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "../bench-util.h"

#include <weft/assuan.h>
#include <weft/loop.h>

#include <assuan.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MIB (1024u * 1024u)
#define XFER MIB /* bytes per GET / PUT transaction */

enum srv { S_RAW, S_WEFT, S_WEFT_HAND, S_LIB, S_LIB_NEXT, NSRV };
static const char *const srv_names[NSRV] = {"raw", "weft", "weft-hand", "libassuan", "libassuan-next"};

enum row { R_NOP, R_GET, R_PUT, NROW };
static const char *const row_names[NROW] = {"nop", "get", "put"};

enum cli { C_RAW, C_LIB, C_SPLIT, C_WEFT, NCLI };
static const char *const cli_names[NCLI] = {"raw", "libassuan", "split", "weft"};

/* The raw server speaks Assuan to the Assuan clients (libassuan, weft):
 * GET as the payload's D lines and OK, PUT as INQUIRE DATA, read to END,
 * OK.  Set before the server is forked, or by -S. */
static bool raw_assuan;

static struct {
	bool pin;
	double secs;     /* per NOP measurement */
	unsigned xfers;  /* transactions per GET/PUT measurement */
	unsigned nconns; /* idle connections for the memory row */
	bool count;      /* -c: syscalls with strace */
	bool instr;      /* -i: instructions with callgrind */
	const char *self;
} opt;

static unsigned char *payload; /* XFER bytes */
static unsigned char *put_lines; /* payload as D lines + END */
static size_t put_lines_len;

/* ---- helpers ----------------------------------------------------------------------- */

static void pin_cpu0(void)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(0, &set);
	if (sched_setaffinity(0, sizeof(set), &set) < 0)
		warn("sched_setaffinity: %s", strerror(errno));
}

static void write_all(int fd, const void *p, size_t n)
{
	const char *s = p;
	while (n > 0) {
		ssize_t w = write(fd, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("write: %s", strerror(errno));
		s += w;
		n -= (size_t)w;
	}
}

static void make_payload(void)
{
	payload = xmalloc(XFER);
	uint64_t x = 0x9E3779B97F4A7C15u;
	for (size_t i = 0; i < XFER; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		payload[i] = (unsigned char)(x >> 24);
	}
	/* As libassuan sends it: %, CR, LF escaped, a line ends at 998 chars. */
	put_lines = xmalloc(XFER * 3 + XFER / 300 * 3 + 16);
	size_t o = 0, dc = 0;
	for (size_t i = 0; i < XFER; i++) {
		if (dc == 0) {
			put_lines[o++] = 'D';
			put_lines[o++] = ' ';
			dc = 2;
		}
		unsigned char c = payload[i];
		if (c == '%' || c == '\r' || c == '\n') {
			o += (size_t)sprintf((char *)put_lines + o, "%%%02X", c);
			dc += 3;
		} else {
			put_lines[o++] = c;
			dc++;
		}
		if (dc >= 998) {
			put_lines[o++] = '\n';
			dc = 0;
		}
	}
	if (dc)
		put_lines[o++] = '\n';
	memcpy(put_lines + o, "END\n", 4);
	put_lines_len = o + 4;
}

/* ---- the raw server ------------------------------------------------------------------- */

static size_t read_until_tail(int fd, const char *tail); /* the client's; rbuf is this process's copy */

static void serve_raw(int fd)
{
	static char buf[65536];
	write_all(fd, "OK\n", 3);
	size_t have = 0;
	for (;;) {
		ssize_t n = read(fd, buf + have, sizeof(buf) - have - 1);
		if (n <= 0)
			return;
		have += (size_t)n;
		char *nl;
		while ((nl = memchr(buf, '\n', have)) != NULL) {
			*nl = '\0';
			size_t ll = (size_t)(nl - buf) + 1;
			if (strcmp(buf, "NOP") == 0) {
				write_all(fd, "OK\n", 3);
			} else if (strncmp(buf, "GET ", 4) == 0 && raw_assuan) {
				/* the payload's D lines, encoded before the clock started */
				for (size_t left = strtoul(buf + 4, NULL, 10); left >= XFER; left -= XFER)
					write_all(fd, put_lines, put_lines_len - 4); /* without END */
				write_all(fd, "OK\n", 3);
			} else if (strncmp(buf, "PUT ", 4) == 0 && raw_assuan) {
				if (have != ll)
					die("raw server: data before INQUIRE");
				write_all(fd, "INQUIRE DATA\n", 13);
				read_until_tail(fd, "\nEND\n");
				write_all(fd, "OK\n", 3);
			} else if (strncmp(buf, "GET ", 4) == 0) {
				size_t left = strtoul(buf + 4, NULL, 10);
				while (left > 0) {
					size_t k = left < XFER ? left : XFER;
					write_all(fd, payload, k);
					left -= k;
				}
			} else if (strncmp(buf, "PUT ", 4) == 0) {
				size_t left = strtoul(buf + 4, NULL, 10);
				size_t extra = have - ll;
				left -= extra < left ? extra : left;
				have = ll; /* raw bytes are not lines */
				while (left > 0) {
					n = read(fd, buf + have, sizeof(buf) - have < left ? sizeof(buf) - have : left);
					if (n <= 0)
						return;
					left -= (size_t)n;
				}
				write_all(fd, "OK\n", 3);
			}
			memmove(buf, buf + ll, have - ll);
			have -= ll;
		}
	}
}

/* ---- the weft server ------------------------------------------------------------------- */

static struct {
	size_t left, off;
	bool pending;
} wget;

static bool w_get_pump(weft_assuan_conn *c);

static void w_get_room(weft_assuan_conn *c, void *data)
{
	if (w_get_pump(c))
		weft_assuan_process_done(c, 0);
}

/* Send what the output limit lets through; true when all is queued. */
static bool w_get_pump(weft_assuan_conn *c)
{
	while (wget.left > 0) {
		size_t k = wget.left < 65536 ? wget.left : 65536;
		if (wget.off + k > XFER)
			wget.off = 0;
		int r = weft_assuan_send_data(c, payload + wget.off, k);
		if (r == -ENOBUFS) {
			weft_assuan_on_room(c, w_get_room, NULL);
			return false;
		}
		if (r < 0)
			die("weft_assuan_send_data: %s", strerror(-r));
		wget.left -= k;
		wget.off += k;
	}
	return true;
}

static weft_assuan_err w_get(weft_assuan_conn *c, char *args, void *data)
{
	wget.left = strtoul(args, NULL, 10);
	wget.off = 0;
	return w_get_pump(c) ? 0 : WEFT_ASSUAN_PENDING;
}

static weft_assuan_err w_put_done(weft_assuan_conn *c, weft_assuan_err err, unsigned char *buf,
		size_t len, void *data)
{
	return err;
}

static weft_assuan_err w_put(weft_assuan_conn *c, char *args, void *data)
{
	size_t n = strtoul(args, NULL, 10);
	if (weft_assuan_inquire(c, "DATA", n, w_put_done, NULL) < 0)
		return weft_assuan_err_make(weft_assuan_conn_server(c), GPG_ERR_GENERAL);
	return WEFT_ASSUAN_PENDING;
}

static weft_loop *w_loop;
/* -F: the weft server accepts descriptors (weft's default).  Passed to the
 * exec'ed helpers through the environment. */
static bool w_fdpassing;
#define FDPASSING_ENV "BENCH_ASSUAN_FDPASSING"

static void w_close(weft_assuan_conn *c, void *data)
{
	weft_loop_stop(w_loop);
}

static weft_assuan_server *w_server(void)
{
	weft_assuan_server *srv;
	wcheck(weft_loop_new(&w_loop), "weft_loop_new");
	wcheck(weft_assuan_server_new(w_loop, &srv), "weft_assuan_server_new");
	weft_assuan_hooks hooks = {.close = w_close};
	weft_assuan_server_set_hooks(srv, &hooks, NULL);
	/* Configured as the libassuan server below (a socket server without
	 * ASSUAN_SOCKET_SERVER_FDPASSING): no descriptors accepted, so reads
	 * need no room for them (recv, not recvmsg).  -F keeps weft's default. */
	weft_assuan_server_set_fdpassing(srv, w_fdpassing);
	wcheck(weft_assuan_register(srv, "GET", w_get, NULL, NULL), "register");
	wcheck(weft_assuan_register(srv, "PUT", w_put, NULL, NULL), "register");
	return srv;
}

static void serve_weft(int fd)
{
	weft_assuan_server *srv = w_server();
	wcheck(weft_assuan_server_adopt_fd(srv, fd, NULL), "adopt");
	wcheck(weft_loop_run(w_loop, WEFT_RUN_DEFAULT), "weft_loop_run");
	weft_assuan_server_free(srv);
	weft_loop_free(w_loop);
}

/* Hand-driven: nobody runs the loop; a plain poll() loop on the socket. */
static void serve_weft_hand(int fd)
{
	weft_assuan_server *srv = w_server();
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	weft_assuan_conn *c;
	wcheck(weft_assuan_server_adopt_fd(srv, fd, &c), "adopt");
	bool done = false;
	wcheck(weft_assuan_process_next(c, &done), "process_next"); /* the greeting */
	while (!done) {
		struct pollfd p[2];
		int n = 0, fds[1];
		if (weft_assuan_get_active_fds(c, 0, fds, 1) == 1)
			p[n++] = (struct pollfd){fds[0], POLLIN, 0};
		if (weft_assuan_get_active_fds(c, 1, fds, 1) == 1)
			p[n++] = (struct pollfd){fds[0], POLLOUT, 0};
		int64_t t = weft_loop_get_timeout(w_loop);
		if (poll(p, (nfds_t)n, t < 0 ? -1 : (int)t) < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		wcheck(weft_assuan_process_next(c, &done), "process_next");
	}
	weft_assuan_server_free(srv);
	weft_loop_free(w_loop);
}

/* ---- the libassuan servers --------------------------------------------------------------- */

static gpg_error_t l_get(assuan_context_t ctx, char *args)
{
	size_t left = strtoul(args, NULL, 10), off = 0;
	while (left > 0) {
		size_t k = left < 65536 ? left : 65536;
		if (off + k > XFER)
			off = 0;
		gpg_error_t e = assuan_send_data(ctx, payload + off, k);
		if (e)
			return e;
		left -= k;
		off += k;
	}
	return 0;
}

static gpg_error_t l_put(assuan_context_t ctx, char *args)
{
	unsigned char *buf = NULL;
	size_t len = 0;
	gpg_error_t e = assuan_inquire(ctx, "DATA", &buf, &len, strtoul(args, NULL, 10));
	assuan_free(ctx, buf);
	return e;
}

static bool l_next_mode;

/* With assuan_process_next, handlers finish with assuan_process_done. */
static gpg_error_t l_done(assuan_context_t ctx, gpg_error_t e)
{
	return l_next_mode ? assuan_process_done(ctx, e) : e;
}

static gpg_error_t l_get_cmd(assuan_context_t ctx, char *args)
{
	return l_done(ctx, l_get(ctx, args));
}

static gpg_error_t l_put_cmd(assuan_context_t ctx, char *args)
{
	return l_done(ctx, l_put(ctx, args));
}

static assuan_context_t l_server(int fd)
{
	assuan_context_t ctx;
	if (assuan_new(&ctx) || assuan_init_socket_server(ctx, fd, ASSUAN_SOCKET_SERVER_ACCEPTED)
			|| assuan_register_command(ctx, "GET", l_get_cmd, NULL)
			|| assuan_register_command(ctx, "PUT", l_put_cmd, NULL) || assuan_accept(ctx))
		die("libassuan server setup failed");
	return ctx;
}

static void serve_lib(int fd)
{
	assuan_context_t ctx = l_server(fd);
	assuan_process(ctx);
	assuan_release(ctx);
}

static void serve_lib_next(int fd)
{
	l_next_mode = true;
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	assuan_context_t ctx = l_server(fd);
	int done = 0;
	while (!done) {
		assuan_fd_t fds[2];
		int n = assuan_get_active_fds(ctx, 0, fds, 2);
		if (n < 1)
			break;
		struct pollfd p = {fds[0], POLLIN, 0};
		if (poll(&p, 1, -1) < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		if (assuan_process_next(ctx, &done))
			break;
	}
	assuan_release(ctx);
}

static void serve(enum srv s, int fd)
{
	switch (s) {
	case S_RAW:
		serve_raw(fd);
		break;
	case S_WEFT:
		serve_weft(fd);
		break;
	case S_WEFT_HAND:
		serve_weft_hand(fd);
		break;
	case S_LIB:
		serve_lib(fd);
		break;
	case S_LIB_NEXT:
	default:
		serve_lib_next(fd);
		break;
	}
}

static pid_t spawn_server(enum srv s, int *ret_fd)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair: %s", strerror(errno));
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		close(sv[0]);
		signal(SIGPIPE, SIG_IGN);
		serve(s, sv[1]);
		_exit(0);
	}
	close(sv[1]);
	*ret_fd = sv[0];
	return pid;
}

static void reap(pid_t pid)
{
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		die("server %d ended badly (status %#x)", (int)pid, st);
}

/* ---- the raw client ------------------------------------------------------------------------ */

static char rbuf[256 * 1024];

/* Read until the bytes read end with `tail` (the answers of this
 * transaction end there); returns the bytes read. */
static size_t read_until_tail(int fd, const char *tail)
{
	size_t tl = strlen(tail), total = 0;
	char last[8] = {0};
	for (;;) {
		ssize_t n = read(fd, rbuf, sizeof(rbuf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("read: %s", n == 0 ? "EOF" : strerror(errno));
		total += (size_t)n;
		/* keep the last tl bytes of the stream */
		if ((size_t)n >= tl) {
			memcpy(last, rbuf + n - tl, tl);
		} else {
			memmove(last, last + n, tl - (size_t)n);
			memcpy(last + tl - (size_t)n, rbuf, (size_t)n);
		}
		if (total >= tl && memcmp(last, tail, tl) == 0)
			return total;
	}
}

static void read_exactly(int fd, size_t n)
{
	while (n > 0) {
		ssize_t r = read(fd, rbuf, n < sizeof(rbuf) ? n : sizeof(rbuf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			die("read: %s", r == 0 ? "EOF" : strerror(errno));
		n -= (size_t)r;
	}
}

static void raw_greeting(int fd)
{
	read_until_tail(fd, "\n");
}

/* One transaction of row with the raw client; split: the line in two
 * writes with a yield between them (a peer whose line arrives in pieces,
 * as libassuan's own client writes "NOP" and "\n" separately). */
static void raw_xact(int fd, enum row r, bool raw_server, bool split)
{
	char line[64];
	switch (r) {
	case R_NOP:
		if (split) {
			write_all(fd, "NO", 2);
			sched_yield();
			write_all(fd, "P\n", 2);
		} else {
			write_all(fd, "NOP\n", 4);
		}
		read_until_tail(fd, "OK\n");
		break;
	case R_GET: {
		int n = snprintf(line, sizeof(line), "GET %u\n", XFER);
		write_all(fd, line, (size_t)n);
		if (raw_server)
			read_exactly(fd, XFER);
		else
			read_until_tail(fd, "\nOK\n");
		break;
	}
	case R_PUT:
	case NROW:
	default: {
		int n = snprintf(line, sizeof(line), "PUT %u\n", XFER);
		write_all(fd, line, (size_t)n);
		if (raw_server) {
			write_all(fd, payload, XFER);
		} else {
			read_until_tail(fd, "\n"); /* INQUIRE DATA */
			write_all(fd, put_lines, put_lines_len); /* one write: a blocking socket */
		}
		read_until_tail(fd, "OK\n");
		break;
	}
	}
}

/* ---- the libassuan client -------------------------------------------------------------- */

static size_t lc_got;

static gpg_error_t lc_data(void *arg, const void *p, size_t n)
{
	lc_got += n;
	return 0;
}

static gpg_error_t lc_inquire(void *arg, const char *line)
{
	return assuan_send_data(arg, payload, XFER);
}

static void lib_xact(assuan_context_t ctx, enum row r)
{
	char line[64];
	gpg_error_t e;
	switch (r) {
	case R_NOP:
		e = assuan_transact(ctx, "NOP", NULL, NULL, NULL, NULL, NULL, NULL);
		break;
	case R_GET:
		snprintf(line, sizeof(line), "GET %u", XFER);
		lc_got = 0;
		e = assuan_transact(ctx, line, lc_data, NULL, NULL, NULL, NULL, NULL);
		if (e == 0 && lc_got != XFER)
			die("GET: %zu bytes", lc_got);
		break;
	case R_PUT:
	case NROW:
	default:
		snprintf(line, sizeof(line), "PUT %u", XFER);
		e = assuan_transact(ctx, line, NULL, NULL, lc_inquire, ctx, NULL, NULL);
		break;
	}
	if (e)
		die("assuan_transact(%s): %s", row_names[r], gpg_strerror(e));
}

/* ---- the weft client ------------------------------------------------------------------------ */

/* A weft client on its own weft loop (built-in epoll backend).  Each
 * transaction's completion callback sends the next one: a pipeline depth
 * of 1, assuan_transact's ping-pong. */
static struct {
	weft_loop *loop;
	weft_assuan_client *cl;
	enum row r;
	long left;  /* transactions still to send */
	size_t got; /* D bytes of the current GET */
} wc;

static weft_assuan_err wc_data(void *data, const void *buf, size_t len)
{
	wc.got += len;
	return 0;
}

static weft_assuan_err wc_inquire(void *data, const char *keyword, const char *args)
{
	int r = weft_assuan_client_inquire_data(wc.cl, payload, XFER);
	if (r == 0)
		r = weft_assuan_client_inquire_end(wc.cl);
	if (r < 0)
		die("weft_assuan_client_inquire_data/_end: %s", strerror(-r));
	return 0;
}

static void wc_send(void);

static void wc_done(weft_req *req, void *data)
{
	weft_assuan_err e = 0;
	int err = 0;
	if (weft_assuan_transact_recv(req, &e, &err) < 0)
		die("weft client %s: %s", row_names[wc.r], strerror(err));
	if (e)
		die("weft client %s: ERR %u", row_names[wc.r], (unsigned)e);
	if (wc.r == R_GET && wc.got != XFER)
		die("weft client GET: %zu bytes", wc.got);
	weft_req_free(req);
	if (wc.left > 0)
		wc_send();
	else
		weft_loop_stop(wc.loop);
}

static void wc_send(void)
{
	static const weft_assuan_transact_cbs cbs[NROW] = {
		[R_NOP] = {0},
		[R_GET] = {.data = wc_data},
		[R_PUT] = {.inquire = wc_inquire},
	};
	static char line[NROW][32];
	if (line[R_NOP][0] == '\0') {
		snprintf(line[R_NOP], sizeof(line[R_NOP]), "NOP");
		snprintf(line[R_GET], sizeof(line[R_GET]), "GET %u", XFER);
		snprintf(line[R_PUT], sizeof(line[R_PUT]), "PUT %u", XFER);
	}
	wc.left--;
	wc.got = 0;
	weft_req *req = weft_assuan_transact_send(wc.cl, line[wc.r], &cbs[wc.r], NULL);
	if (req == NULL)
		die("weft_assuan_transact_send: out of memory");
	weft_req_set_callback(req, wc_done, NULL);
}

/* Connect over fd (taken) and read the greeting. */
static void wc_open(int fd)
{
	wcheck(weft_loop_new(&wc.loop), "weft_loop_new");
	weft_stream *s;
	wcheck(weft_stream_new_socket(wc.loop, fd, &s), "weft_stream_new_socket");
	weft_req *req = weft_assuan_client_adopt_send(wc.loop, s);
	if (req == NULL)
		die("weft_assuan_client_adopt_send: out of memory");
	wcheck(weft_req_wait(req), "weft_req_wait");
	int err = 0;
	if (weft_assuan_connect_recv(req, &wc.cl, &err) < 0)
		die("weft client connect: %s", strerror(err));
	weft_req_free(req);
}

/* n transactions of r, one after the other, from the loop. */
static void wc_run(enum row r, long n)
{
	wc.r = r;
	wc.left = n;
	wc_send();
	wcheck(weft_loop_run(wc.loop, WEFT_RUN_DEFAULT), "weft_loop_run");
	if (wc.left != 0)
		die("weft client: the loop stopped early");
}

static void wc_close(void)
{
	weft_assuan_client_free(wc.cl); /* sends BYE, closes the socket */
	wcheck(weft_loop_run(wc.loop, WEFT_RUN_DEFAULT), "weft_loop_run"); /* the stream's close */
	wcheck(weft_loop_free(wc.loop), "weft_loop_free");
	wc.cl = NULL;
	wc.loop = NULL;
}

/* ---- any client -------------------------------------------------------------------------- */

/* Take the connection to a server (fd) and read its greeting. */
static assuan_context_t client_open(enum cli c, int fd)
{
	assuan_context_t ctx = NULL;
	switch (c) {
	case C_LIB:
		if (assuan_new(&ctx))
			die("assuan_new");
		gpg_error_t e = assuan_socket_connect_fd(ctx, fd, 0); /* takes fd */
		if (e)
			die("assuan_socket_connect_fd: %s", gpg_strerror(e));
		break;
	case C_WEFT:
		wc_open(fd);
		break;
	case C_RAW:
	case C_SPLIT:
	case NCLI:
	default:
		raw_greeting(fd);
		break;
	}
	return ctx;
}

/* n transactions of r with client c. */
static void client_xacts(enum cli c, assuan_context_t ctx, int fd, enum srv s, enum row r, long n)
{
	if (c == C_WEFT) {
		wc_run(r, n);
		return;
	}
	for (long i = 0; i < n; i++) {
		if (c == C_LIB)
			lib_xact(ctx, r);
		else
			raw_xact(fd, r, s == S_RAW, c == C_SPLIT);
	}
}

static void client_close(enum cli c, assuan_context_t ctx, int fd)
{
	if (c == C_LIB)
		assuan_release(ctx); /* sends BYE, closes fd */
	else if (c == C_WEFT)
		wc_close();
	else
		close(fd);
}

/* ---- measuring ------------------------------------------------------------------------------ */

static bool applicable(enum srv s, enum row r, enum cli c)
{
	if (c == C_SPLIT)
		return r == R_NOP;
	if (s == S_RAW)
		return true; /* for the Assuan clients it speaks Assuan (raw_assuan) */
	if (s == S_LIB_NEXT)
		return r == R_NOP; /* its libassuan client writes a line in 3 writes: EAGAIN, 100 ms */
	return true;
}

static double cpu_of(const struct rusage *ru)
{
	return (double)ru->ru_utime.tv_sec + (double)ru->ru_utime.tv_usec * 1e-6 + (double)ru->ru_stime.tv_sec
			+ (double)ru->ru_stime.tv_usec * 1e-6;
}

/* Round trips per second (NOP) or payload MB/s (GET, PUT); *ret_cpu: the
 * same per CPU second of both processes (the client's timed part, the
 * server's whole life: its start-up is tiny), which other load on the
 * machine hardly moves. */
static double measure(enum srv s, enum row r, enum cli c, double *ret_cpu)
{
	int fd;
	struct rusage ru0, ru1;
	getrusage(RUSAGE_CHILDREN, &ru0);
	raw_assuan = c == C_LIB || c == C_WEFT;
	pid_t pid = spawn_server(s, &fd);
	assuan_context_t ctx = client_open(c, fd);
	client_xacts(c, ctx, fd, s, r, 1); /* untimed */
	double t0 = now_mono(), t;
	double c0 = now_cpu();
	double v, work;
	if (r == R_NOP) {
		long n = 0;
		long max = s == S_LIB_NEXT ? (bench.quick ? 3 : 10) : -1;
		do {
			long k = max < 0 || max - n > 64 ? 64 : max - n;
			client_xacts(c, ctx, fd, s, r, k);
			n += k;
			t = now_mono() - t0;
		} while (n != max && t < opt.secs);
		work = (double)n;
	} else {
		client_xacts(c, ctx, fd, s, r, opt.xfers);
		t = now_mono() - t0;
		work = (double)opt.xfers * XFER / 1e6;
	}
	v = work / t;
	double ccpu = now_cpu() - c0;
	client_close(c, ctx, fd);
	reap(pid);
	getrusage(RUSAGE_CHILDREN, &ru1);
	double cpu = ccpu + cpu_of(&ru1) - cpu_of(&ru0);
	*ret_cpu = cpu > 0 ? work / cpu : 0;
	return v;
}

#define MAXR (MAX_ROUNDS + 1)
static double samples[NROW][NCLI][NSRV][MAXR];
static double csamples[NROW][NCLI][NSRV][MAXR]; /* per CPU second */
static int nsamples[NROW][NCLI][NSRV];
static bool srv_sel[NSRV];
static bool row_sel[NROW]; /* -R: the rows to measure */

struct cell {
	enum row r;
	enum cli c;
};

static void round_fn(int impl, int round, void *arg)
{
	struct cell *cl = arg;
	if (!applicable((enum srv)impl, cl->r, cl->c))
		return;
	wd_arm(impl, cl->r);
	double cv;
	double v = measure((enum srv)impl, cl->r, cl->c, &cv);
	wd_disarm();
	if (bench.verbose)
		printf("  round %d: %-15s %-4s %-9s %.1f (%.1f per CPU s)\n", round, srv_names[impl], row_names[cl->r],
				cli_names[cl->c], v, cv);
	if (round >= 0) {
		int k = nsamples[cl->r][cl->c][impl]++;
		samples[cl->r][cl->c][impl][k] = v;
		csamples[cl->r][cl->c][impl][k] = cv;
	}
}

/* NOP: every client with every server in one interleaving (impl = client
 * * NSRV + server), so that round k of each pair ran beside round k of the
 * raw ping-pong it is compared with. */
static void nop_round_fn(int impl, int round, void *arg)
{
	struct cell cl = {R_NOP, (enum cli)(impl / NSRV)};
	(void)arg;
	round_fn(impl % NSRV, round, &cl);
}

static bool per_cpu; /* med() of the per-CPU-second samples */

static double med(enum row r, enum cli c, enum srv s)
{
	return median(per_cpu ? csamples[r][c][s] : samples[r][c][s], nsamples[r][c][s]);
}

/* The median over rounds of (c, s) / (C_RAW, S_RAW) in the same round: a
 * NOP ratio that slow changes of the machine's speed (which move whole
 * stretches of rounds) leave alone.  0 without samples. */
static double paired(enum cli c, enum srv s)
{
	int n = nsamples[R_NOP][c][s];
	if (n == 0 || n != nsamples[R_NOP][C_RAW][S_RAW])
		return 0;
	double v[MAXR];
	const double(*x)[NSRV][MAXR] = per_cpu ? csamples[R_NOP] : samples[R_NOP];
	for (int k = 0; k < n; k++)
		v[k] = x[C_RAW][S_RAW][k] > 0 ? x[c][s][k] / x[C_RAW][S_RAW][k] : 0;
	return median(v, n);
}

/* ---- memory per idle connection ------------------------------------------------------------- */

/* Bytes allocated per connection: greeted (fresh) and after one NOP. */
static void mem_weft(unsigned n, double *fresh, double *after)
{
	weft_assuan_server *srv = w_server();
	int *cfd = xcalloc(n, sizeof(int));
	struct mallinfo2 m0 = mallinfo2();
	for (unsigned i = 0; i < n; i++) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
			die("socketpair: %s", strerror(errno));
		cfd[i] = sv[0];
		wcheck(weft_assuan_server_adopt_fd(srv, sv[1], NULL), "adopt");
	}
	for (int i = 0; i < 4; i++)
		weft_loop_run(w_loop, WEFT_RUN_NOWAIT);
	struct mallinfo2 m1 = mallinfo2();
	for (unsigned i = 0; i < n; i++) {
		raw_greeting(cfd[i]);
		write_all(cfd[i], "NOP\n", 4);
	}
	for (int i = 0; i < 4; i++)
		weft_loop_run(w_loop, WEFT_RUN_NOWAIT);
	for (unsigned i = 0; i < n; i++)
		read_until_tail(cfd[i], "OK\n");
	struct mallinfo2 m2 = mallinfo2();
	*fresh = ((double)m1.uordblks - (double)m0.uordblks) / n;
	*after = ((double)m2.uordblks - (double)m0.uordblks) / n;
	for (unsigned i = 0; i < n; i++)
		close(cfd[i]);
	free(cfd);
	weft_assuan_server_free(srv);
	weft_loop_free(w_loop);
}

static void mem_lib(unsigned n, double *fresh, double *after)
{
	assuan_context_t *ctx = xcalloc(n, sizeof(*ctx));
	int *cfd = xcalloc(n, sizeof(int));
	struct mallinfo2 m0 = mallinfo2();
	for (unsigned i = 0; i < n; i++) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
			die("socketpair: %s", strerror(errno));
		cfd[i] = sv[0];
		ctx[i] = l_server(sv[1]);
	}
	struct mallinfo2 m1 = mallinfo2();
	for (unsigned i = 0; i < n; i++) {
		raw_greeting(cfd[i]);
		write_all(cfd[i], "NOP\n", 4);
		int done;
		l_next_mode = true;
		assuan_process_next(ctx[i], &done);
		read_until_tail(cfd[i], "OK\n");
	}
	struct mallinfo2 m2 = mallinfo2();
	*fresh = ((double)m1.uordblks - (double)m0.uordblks) / n;
	*after = ((double)m2.uordblks - (double)m0.uordblks) / n;
	for (unsigned i = 0; i < n; i++) {
		assuan_release(ctx[i]);
		close(cfd[i]);
	}
	free(ctx);
	free(cfd);
}

/* In a child, so that the figures are not disturbed by this process. */
static void mem_row(double v[2][2])
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 2 * opt.nconns + 64) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	int p[2];
	if (pipe(p) < 0)
		die("pipe: %s", strerror(errno));
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		close(p[0]);
		double out[2][2];
		mem_weft(opt.nconns, &out[0][0], &out[0][1]);
		mem_lib(opt.nconns, &out[1][0], &out[1][1]);
		write_all(p[1], out, sizeof(out));
		_exit(0);
	}
	close(p[1]);
	if (read(p[0], v, sizeof(double) * 4) != (ssize_t)(sizeof(double) * 4))
		die("memory row failed");
	close(p[0]);
	reap(pid);
}

/* ---- -X: one server in the foreground, the raw client exec'ed ----------------------------- */

static void run_x(const char *spec, long n)
{
	char sname[32], rname[16];
	if (sscanf(spec, "%31[^:]:%15s", sname, rname) != 2)
		fail(2, "-X: expected SERVER:ROW");
	int s = -1, r = -1;
	for (int i = 0; i < NSRV; i++)
		if (strcmp(sname, srv_names[i]) == 0)
			s = i;
	for (int i = 0; i < NROW; i++)
		if (strcmp(rname, row_names[i]) == 0)
			r = i;
	if (s < 0 || r < 0)
		fail(2, "-X: unknown server or row in '%s'", spec);
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		die("socketpair: %s", strerror(errno));
	fcntl(sv[1], F_SETFD, FD_CLOEXEC);
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		char arg[64], num[32];
		snprintf(arg, sizeof(arg), "%s:%s:%d", s == S_RAW ? "raw" : "assuan", rname, sv[0]);
		snprintf(num, sizeof(num), "%ld", n);
		execl(opt.self, opt.self, "-Y", arg, "-n", num, (char *)NULL);
		_exit(127);
	}
	close(sv[0]);
	signal(SIGPIPE, SIG_IGN);
	serve((enum srv)s, sv[1]);
	reap(pid);
}

static void run_y(const char *spec, long n)
{
	char kind[16], rname[16];
	int fd;
	if (sscanf(spec, "%15[^:]:%15[^:]:%d", kind, rname, &fd) != 3)
		fail(2, "-Y: bad spec");
	int r = 0;
	for (int i = 0; i < NROW; i++)
		if (strcmp(rname, row_names[i]) == 0)
			r = i;
	bool raw = strcmp(kind, "raw") == 0;
	raw_greeting(fd);
	for (long i = 0; i < n; i++)
		raw_xact(fd, (enum row)r, raw, false);
	close(fd);
}

/* ---- -C: one client in the foreground, the server exec'ed ---------------------------------- */

static int name_index(const char *name, const char *const *names, int n)
{
	for (int i = 0; i < n; i++)
		if (strcmp(name, names[i]) == 0)
			return i;
	return -1;
}

static void run_c(const char *spec, long n)
{
	char cname[32], sname[32], rname[16];
	if (sscanf(spec, "%31[^:]:%31[^:]:%15s", cname, sname, rname) != 3)
		fail(2, "-C: expected CLIENT:SERVER:ROW");
	int c = name_index(cname, cli_names, NCLI);
	int s = name_index(sname, srv_names, NSRV);
	int r = name_index(rname, row_names, NROW);
	if (c < 0 || c == C_SPLIT || s < 0 || r < 0)
		fail(2, "-C: unknown client, server or row in '%s'", spec);
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		die("socketpair: %s", strerror(errno));
	fcntl(sv[0], F_SETFD, FD_CLOEXEC);
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		char arg[96];
		snprintf(arg, sizeof(arg), "%s:%s:%s:%d", sname, cname, rname, sv[1]);
		execl(opt.self, opt.self, "-S", arg, (char *)NULL);
		_exit(127);
	}
	close(sv[1]);
	signal(SIGPIPE, SIG_IGN);
	assuan_context_t ctx = client_open((enum cli)c, sv[0]);
	client_xacts((enum cli)c, ctx, sv[0], (enum srv)s, (enum row)r, n);
	client_close((enum cli)c, ctx, sv[0]);
	reap(pid);
}

/* -S SERVER:CLIENT:ROW:FD: the server of -C. */
static void run_s(const char *spec)
{
	char sname[32], cname[32], rname[16];
	int fd;
	if (sscanf(spec, "%31[^:]:%31[^:]:%15[^:]:%d", sname, cname, rname, &fd) != 4)
		fail(2, "-S: bad spec");
	int s = name_index(sname, srv_names, NSRV);
	int c = name_index(cname, cli_names, NCLI);
	if (s < 0 || c < 0)
		fail(2, "-S: bad spec");
	raw_assuan = c == C_LIB || c == C_WEFT;
	signal(SIGPIPE, SIG_IGN);
	serve((enum srv)s, fd);
}

/* Run a tool on "flag spec -n n" (flag: -X or -C) and return the figure
 * parse() finds in its output file, or -1. */
static double tool_run(const char *const *pre, int npre, const char *flag, const char *spec, long n,
		double (*parse)(FILE *f))
{
	char out[] = "/tmp/bench-assuan-XXXXXX";
	int ofd = mkstemp(out);
	if (ofd < 0)
		die("mkstemp: %s", strerror(errno));
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		const char *argv[32];
		int a = 0;
		char num[32];
		snprintf(num, sizeof(num), "%ld", n);
		for (int i = 0; i < npre; i++)
			argv[a++] = strcmp(pre[i], "@OUT") == 0 ? out : pre[i];
		argv[a++] = opt.self;
		argv[a++] = flag;
		argv[a++] = spec;
		argv[a++] = "-n";
		argv[a++] = num;
		argv[a] = NULL;
		dup2(ofd, 2); /* valgrind's summary goes to stderr */
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	int st;
	waitpid(pid, &st, 0);
	FILE *f = fopen(out, "r");
	double v = f && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? parse(f) : -1;
	if (f)
		fclose(f);
	close(ofd);
	unlink(out);
	return v;
}

static double parse_strace(FILE *f)
{
	char line[512];
	while (fgets(line, sizeof(line), f)) {
		double pct, secs, usecs, calls;
		if (strstr(line, " total") && sscanf(line, "%lf %lf %lf %lf", &pct, &secs, &usecs, &calls) == 4)
			return calls;
	}
	return -1;
}

static double parse_callgrind(FILE *f)
{
	char line[512];
	while (fgets(line, sizeof(line), f)) {
		char *p = strstr(line, "Collected : ");
		if (p)
			return strtod(p + 12, NULL);
	}
	return -1;
}

/* Per transaction: the difference between n and 2n transactions, so that
 * start-up and teardown cancel out.  cli < 0: -X (server s, the raw
 * client exec'ed); else -C (client cli, server s exec'ed). */
static double per_xact(const char *const *pre, int npre, int cli, enum srv s, enum row r, long n,
		double (*parse)(FILE *f))
{
	char spec[96];
	if (cli < 0)
		snprintf(spec, sizeof(spec), "%s:%s", srv_names[s], row_names[r]);
	else
		snprintf(spec, sizeof(spec), "%s:%s:%s", cli_names[cli], srv_names[s], row_names[r]);
	const char *flag = cli < 0 ? "-X" : "-C";
	double a = tool_run(pre, npre, flag, spec, n, parse);
	double b = tool_run(pre, npre, flag, spec, 2 * n, parse);
	if (a < 0 || b < 0)
		return -1;
	return (b - a) / (double)n;
}

/* ---- main ---------------------------------------------------------------------------------- */

/* The table: one line per row and client; rates per second of wall time,
 * or (cpu) per CPU second of both processes. */
static void print_table(bool cpu)
{
	per_cpu = cpu;
	static const char *const heads[] = {"raw", "weft", "weft-hand", "libassuan", "lib-next",
		"weft/raw", "hand/raw", "lib/raw", "weft/lib"};
	int w[9] = {9, 9, 9, 9, 9, 8, 8, 8, 8};
	table_head(22, "", 9, w, heads);
	static const char *const rtitle[NROW][NCLI] = {
		{"NOP rt/s, raw client", "NOP rt/s, libassuan cl", "NOP rt/s, split lines", "NOP rt/s, weft client"},
		{"D MB/s, raw client", "D MB/s, libassuan cl", NULL, "D MB/s, weft client"},
		{"INQUIRE MB/s, raw cl", "INQUIRE MB/s, lib cl", NULL, "INQUIRE MB/s, weft cl"},
	};
	static const enum cli order[NCLI] = {C_RAW, C_LIB, C_WEFT, C_SPLIT};
	for (int r = 0; r < NROW; r++)
		for (int ci = 0; ci < NCLI; ci++) {
			int c = order[ci];
			if (rtitle[r][c] == NULL)
				continue;
			char cells[9][32];
			const char *cp[9];
			double v[NSRV];
			bool have[NSRV];
			for (int s = 0; s < NSRV; s++) {
				have[s] = srv_sel[s] && nsamples[r][c][s] > 0;
				v[s] = have[s] ? med((enum row)r, (enum cli)c, (enum srv)s) : 0;
				if (!have[s])
					snprintf(cells[s], 32, "-");
				else if (r == R_NOP)
					fmt_rate(cells[s], 32, v[s]);
				else
					snprintf(cells[s], 32, "%.0f", v[s]);
			}
			/* The limit: the raw server with the raw client (the split
			 * client: with the split client). */
			enum cli rc = c == C_SPLIT ? C_SPLIT : C_RAW;
			bool hraw = srv_sel[S_RAW] && nsamples[r][rc][S_RAW] > 0;
			double raw = hraw ? med((enum row)r, rc, S_RAW) : 0;
			fmt_ratio(cells[5], 32, hraw && have[S_WEFT], v[S_WEFT], raw);
			fmt_ratio(cells[6], 32, hraw && have[S_WEFT_HAND], v[S_WEFT_HAND], raw);
			fmt_ratio(cells[7], 32, hraw && have[S_LIB], v[S_LIB], raw);
			fmt_ratio(cells[8], 32, have[S_WEFT] && have[S_LIB], v[S_WEFT], v[S_LIB]);
			for (int i = 0; i < 9; i++)
				cp[i] = cells[i];
			table_row(22, rtitle[r][c], 9, w, cp);
		}
	per_cpu = false;
}

/* A throughput target line: wall and per CPU second (the wall figure
 * halves when other work shares the CPU; the CPU-second one does not). */
static void print_mbs(const char *title, enum row r, enum cli c, enum srv s)
{
	double wall = med(r, c, s);
	per_cpu = true;
	double cpu = med(r, c, s);
	per_cpu = false;
	printf("  %s %.0f wall, %.0f per CPU s  (>= 1000)  %s\n", title, wall, cpu,
			wall >= 1000 && cpu >= 1000 ? "met" : wall >= 1000 || cpu >= 1000 ? "met in one measure" : "NOT met");
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bench-assuan [-q] [-P] [-F] [-r N] [-o] [-v] [-s LIST] [-c] [-i] [-m N]\n"
		"       bench-assuan -X SERVER:ROW -n N   (one server in the foreground)\n"
		"       bench-assuan -C CLIENT:SERVER:ROW -n N   (one client in the foreground)\n"
		"  -q       quick run (CI smoke test): short rounds, one round\n"
		"  -P       pin every process to CPU 0\n"
		"  -F       the weft server accepts descriptors (weft's default; libassuan's server here does not)\n"
		"  -s LIST  servers: raw,weft,weft-hand,libassuan,libassuan-next (default all)\n"
		"  -R LIST  rows: nop,get,put (default all)\n"
		"  -c       syscalls per transaction with strace -c (both sides; and the client alone)\n"
		"  -i       instructions per transaction with callgrind (the server alone; the client alone)\n"
		"  -m N     idle connections for the memory row (default 1000)\n"
		"  -r N, -o, -v: rounds, rotate order, print every round\n");
}

int main(int argc, char **argv)
{
	bench_init("bench-assuan", 2);
	opt.self = "/proc/self/exe";
	char self[4096];
	ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (sl > 0) {
		self[sl] = '\0';
		opt.self = self;
	}
	const char *xspec = NULL, *yspec = NULL, *cspec = NULL, *sspec = NULL;
	long n = 10000;
	opt.nconns = 1000;
	for (int i = 0; i < NSRV; i++)
		srv_sel[i] = true;
	for (int i = 0; i < NROW; i++)
		row_sel[i] = true;
	int o;
	while ((o = bench_getopt(argc, argv, "r:oqvhPFs:R:cim:X:Y:C:S:n:", usage)) != -1) {
		switch (o) {
		case 'P':
			opt.pin = true;
			break;
		case 'F':
			setenv(FDPASSING_ENV, "1", 1);
			break;
		case 's':
			if (!parse_list(optarg, srv_names, NSRV, NULL, srv_sel))
				fail(2, "-s: unknown server in '%s'", optarg);
			break;
		case 'R':
			if (!parse_list(optarg, row_names, NROW, NULL, row_sel))
				fail(2, "-R: unknown row in '%s'", optarg);
			break;
		case 'c':
			opt.count = true;
			break;
		case 'i':
			opt.instr = true;
			break;
		case 'm':
			opt.nconns = (unsigned)parse_num(optarg, 'm', 1, 100000);
			break;
		case 'X':
			xspec = optarg;
			break;
		case 'Y':
			yspec = optarg;
			break;
		case 'C':
			cspec = optarg;
			break;
		case 'S':
			sspec = optarg;
			break;
		case 'n':
			n = parse_num(optarg, 'n', 1, 100000000);
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	w_fdpassing = getenv(FDPASSING_ENV) != NULL;
	if (opt.pin)
		pin_cpu0();
	const char *spec = xspec ? xspec : yspec ? yspec : cspec ? cspec : sspec;
	if (spec == NULL || strstr(spec, "nop") == NULL)
		make_payload(); /* not for -X ...:nop: a cleaner profile */
	if (sspec) {
		run_s(sspec);
		return 0;
	}
	if (cspec) {
		run_c(cspec, n);
		return 0;
	}
	if (yspec) {
		run_y(yspec, n);
		return 0;
	}
	if (xspec) {
		run_x(xspec, n);
		return 0;
	}
	signal(SIGPIPE, SIG_IGN);
	opt.secs = bench.quick ? 0.05 : 0.5;
	opt.xfers = bench.quick ? 4 : 64;
	if (bench.quick && !option_given('m'))
		opt.nconns = 200;
	signal(SIGALRM, wd_on_alarm);
	wd_init(bench.quick ? 30 : 120, srv_names, row_names, "a server hangs");

	printf("bench-assuan: %s, %d round%s (medians)%s; payload 1 MiB per GET/PUT\n",
			bench.quick ? "quick" : "full", bench.rounds, bench.rounds == 1 ? "" : "s",
			opt.pin ? ", all processes on CPU 0" : "");

	if (row_sel[R_NOP]) {
		bool pairs[NCLI * NSRV];
		for (int i = 0; i < NCLI * NSRV; i++)
			pairs[i] = srv_sel[i % NSRV] && applicable((enum srv)(i % NSRV), R_NOP, (enum cli)(i / NSRV));
		run_interleaved(NCLI * NSRV, pairs, nop_round_fn, NULL);
	}
	for (int r = R_NOP + 1; r < NROW; r++)
		for (int c = 0; c < NCLI && row_sel[r]; c++) {
			struct cell cl = {(enum row)r, (enum cli)c};
			bool any = false;
			for (int s = 0; s < NSRV; s++)
				any |= srv_sel[s] && applicable((enum srv)s, (enum row)r, (enum cli)c);
			if (any)
				run_interleaved(NSRV, srv_sel, round_fn, &cl);
		}

	printf("\nper second of wall time:\n");
	print_table(false);
	printf("\nper CPU second of both processes (robust when other work shares the CPU):\n");
	print_table(true);
	printf("  x/raw: against the raw client with the raw server, the socket limit (split lines: the split\n"
	       "  client with the raw server); raw column of the libassuan and weft client rows: that client\n"
	       "  against the raw server speaking Assuan; split lines: each NOP in two writes (\"NO\", yield, \"P\\n\")\n");

	double mem[2][2];
	mem_row(mem);
	printf("\nmemory per idle connection (mallinfo2, %u connections):\n", opt.nconns);
	printf("  weft       %7.0f B greeted, %7.0f B after one command\n", mem[0][0], mem[0][1]);
	printf("  libassuan  %7.0f B greeted, %7.0f B after one command\n", mem[1][0], mem[1][1]);

	double sc[NSRV][NROW], ins[NSRV][NROW];
	for (int s = 0; s < NSRV; s++)
		for (int r = 0; r < NROW; r++)
			sc[s][r] = ins[s][r] = -1;
	if (opt.count) {
		static const char *const pre[] = {"strace", "-f", "-c", "-o", "@OUT"};
		for (int s = 0; s < S_LIB_NEXT; s++)
			for (int r = 0; r < NROW; r++)
				if (srv_sel[s] && row_sel[r])
					sc[s][r] = per_xact(pre, 5, -1, (enum srv)s, (enum row)r,
							r == R_NOP ? (bench.quick ? 2000 : 20000) : (bench.quick ? 4 : 32),
							parse_strace);
	}
	if (opt.instr) {
		static const char *const pre[] = {"valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"};
		for (int s = 0; s < S_LIB_NEXT; s++)
			for (int r = 0; r < NROW; r++)
				if (srv_sel[s] && row_sel[r])
					ins[s][r] = per_xact(pre, 3, -1, (enum srv)s, (enum row)r,
							r == R_NOP ? (bench.quick ? 2000 : 20000) : (bench.quick ? 2 : 8),
							parse_callgrind);
	}
	/* The client side alone: -C CLIENT:raw:ROW, the raw server exec'ed;
	 * strace without -f and callgrind see the client only. */
	static const enum cli ccli[3] = {C_RAW, C_LIB, C_WEFT};
	double csc[3][NROW], cins[3][NROW], pair_sc = -1;
	for (int i = 0; i < 3; i++)
		for (int r = 0; r < NROW; r++)
			csc[i][r] = cins[i][r] = -1;
	if (opt.count) {
		static const char *const pre[] = {"strace", "-c", "-o", "@OUT"};
		for (int i = 0; i < 3; i++)
			for (int r = 0; r < NROW; r++)
				if (row_sel[r])
					csc[i][r] = per_xact(pre, 4, ccli[i], S_RAW, (enum row)r,
							r == R_NOP ? (bench.quick ? 2000 : 20000) : (bench.quick ? 4 : 32), parse_strace);
		static const char *const pref[] = {"strace", "-f", "-c", "-o", "@OUT"};
		if (row_sel[R_NOP])
			pair_sc = per_xact(pref, 5, C_WEFT, S_WEFT, R_NOP, bench.quick ? 2000 : 20000, parse_strace);
	}
	if (opt.instr) {
		static const char *const pre[] = {"valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"};
		for (int i = 0; i < 3; i++)
			for (int r = 0; r < NROW; r++)
				if (row_sel[r])
					cins[i][r] = per_xact(pre, 3, ccli[i], S_RAW, (enum row)r,
							r == R_NOP ? (bench.quick ? 2000 : 20000) : (bench.quick ? 2 : 8), parse_callgrind);
	}
	if (opt.count || opt.instr) {
		printf("\nper transaction (difference of N and 2N transactions; NOP: per round trip, GET/PUT: per MiB):\n");
		printf("  %-10s %14s %14s %14s %16s %16s %16s\n", "server", "NOP syscalls", "D syscalls", "INQ syscalls",
				"NOP instr (srv)", "D instr (srv)", "INQ instr (srv)");
		for (int s = 0; s < S_LIB_NEXT; s++) {
			if (!srv_sel[s])
				continue;
			printf("  %-10s", srv_names[s]);
			for (int r = 0; r < NROW; r++) {
				if (sc[s][r] < 0)
					printf(" %14s", "-");
				else
					printf(" %14.1f", sc[s][r]);
			}
			for (int r = 0; r < NROW; r++) {
				if (ins[s][r] < 0)
					printf(" %16s", "-");
				else
					printf(" %16.0f", ins[s][r]);
			}
			printf("\n");
		}
	}

	if (opt.count || opt.instr) {
		printf("\nper transaction, client side alone (against the raw server; NOP: per round trip, GET/PUT: per MiB):\n");
		printf("  %-10s %14s %14s %14s %16s %16s %16s\n", "client", "NOP syscalls", "D syscalls", "INQ syscalls",
				"NOP instr (cl)", "D instr (cl)", "INQ instr (cl)");
		for (int i = 0; i < 3; i++) {
			printf("  %-10s", cli_names[ccli[i]]);
			for (int r = 0; r < NROW; r++) {
				if (csc[i][r] < 0)
					printf(" %14s", "-");
				else
					printf(" %14.1f", csc[i][r]);
			}
			for (int r = 0; r < NROW; r++) {
				if (cins[i][r] < 0)
					printf(" %16s", "-");
				else
					printf(" %16.0f", cins[i][r]);
			}
			printf("\n");
		}
		if (pair_sc >= 0)
			printf("  weft client + weft server, both sides: %.1f syscalls per NOP\n", pair_sc);
	}

	/* Targets (issue 5). */
	printf("\ntargets (NOP: the median over rounds of the ratio to the raw ping-pong of the same round):\n");
	if (srv_sel[S_RAW] && nsamples[R_NOP][C_RAW][S_RAW] > 0) {
		static const enum srv ts[2] = {S_WEFT, S_WEFT_HAND};
		static const char *const tn[2] = {"NOP weft/raw ping-pong     ", "NOP weft-hand/raw ping-pong"};
		for (int i = 0; i < 2; i++) {
			if (!nsamples[R_NOP][C_RAW][ts[i]])
				continue;
			double wall = paired(C_RAW, ts[i]);
			per_cpu = true;
			double cpu = paired(C_RAW, ts[i]);
			per_cpu = false;
			printf("  %s  %.3f wall, %.3f per CPU s  (>= 0.95)  %s\n", tn[i], wall, cpu,
					wall >= 0.95 && cpu >= 0.95 ? "met" : wall >= 0.95 || cpu >= 0.95 ? "met in one measure" : "NOT met");
		}
	}
	if (nsamples[R_GET][C_RAW][S_WEFT])
		print_mbs("D MB/s (weft, raw client)   ", R_GET, C_RAW, S_WEFT);
	if (nsamples[R_PUT][C_RAW][S_WEFT])
		print_mbs("INQUIRE MB/s (weft, raw cl) ", R_PUT, C_RAW, S_WEFT);
	printf("  idle connection (weft)       %.0f B  (<= 1024)  %s\n", mem[0][1], mem[0][1] <= 1024 ? "met" : "NOT met");
	if (opt.count && sc[S_WEFT][R_NOP] >= 0) {
		printf("  syscalls per NOP, both sides %.1f  (<= 5)  %s\n", sc[S_WEFT][R_NOP], sc[S_WEFT][R_NOP] <= 5 ? "met" : "NOT met");
		if (sc[S_WEFT][R_GET] >= 0 && sc[S_WEFT][R_PUT] >= 0) /* rows chosen with -R */
			printf("  syscalls per MiB D / INQ     %.1f / %.1f  (<= 40)  %s\n", sc[S_WEFT][R_GET], sc[S_WEFT][R_PUT],
					sc[S_WEFT][R_GET] <= 40 && sc[S_WEFT][R_PUT] <= 40 ? "met" : "NOT met");
	}
	if (opt.instr && ins[S_WEFT][R_NOP] >= 0)
		printf("  instructions per NOP (srv)   %.0f  (<= 500)  %s\n", ins[S_WEFT][R_NOP],
				ins[S_WEFT][R_NOP] <= 500 ? "met" : "NOT met");
	/* Targets (issue 6: the client). */
	if (srv_sel[S_RAW] && nsamples[R_NOP][C_RAW][S_RAW] > 0) {
		static const enum srv ts[2] = {S_RAW, S_WEFT};
		static const char *const tn[2] = {"NOP weft client, raw server ", "NOP weft client, weft server"};
		for (int i = 0; i < 2; i++) {
			if (!srv_sel[ts[i]] || !nsamples[R_NOP][C_WEFT][ts[i]])
				continue;
			double wall = paired(C_WEFT, ts[i]);
			per_cpu = true;
			double cpu = paired(C_WEFT, ts[i]);
			per_cpu = false;
			printf("  %s %.3f wall, %.3f per CPU s of raw ping-pong  (>= 0.95)  %s\n", tn[i], wall, cpu,
					wall >= 0.95 && cpu >= 0.95 ? "met" : wall >= 0.95 || cpu >= 0.95 ? "met in one measure" : "NOT met");
		}
	}
	static const enum srv ds[2] = {S_RAW, S_WEFT};
	static const char *const dn[2] = {"D MB/s (weft client, raw srv) ", "D MB/s (weft client, weft srv)"};
	for (int i = 0; i < 2; i++)
		if (srv_sel[ds[i]] && nsamples[R_GET][C_WEFT][ds[i]])
			print_mbs(dn[i], R_GET, C_WEFT, ds[i]);
	if (!opt.count || !opt.instr)
		printf("  (syscalls: -c; instructions: -i)\n");
	return 0;
}
