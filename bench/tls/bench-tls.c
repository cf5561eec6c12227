/* bench-tls — weft TLS streams against plain blocking GnuTLS.
 *
 * Every row runs twice per round, once per implementation, each time as two
 * processes (the program forks the peer) on a fresh AF_UNIX socketpair or,
 * for handshakes, an abstract AF_UNIX listener:
 *   gnutls   blocking sockets, gnutls_transport_set_int, gnutls_record_send /
 *            gnutls_record_recv / gnutls_handshake called directly;
 *   weft     both ends on a weft loop: a TLS stream (weft_tls_client_new /
 *            _server_new over weft_stream_new_socket), weft_tls_handshake_send,
 *            weft_stream_writev_send / weft_stream_read_send.
 * Both use the same certificate (ECDSA P-256, made with certtool at start-up),
 * the same priorities (TLS 1.3, AES-256-GCM) and both clients verify the
 * server (chain and host name).
 *
 * The rows:
 *   bulk        the client sends -b MiB in 16 KiB records (gnutls: one
 *               gnutls_record_send per 16 KiB; weft: writev_send of a 16 MiB
 *               buffer, which the stream cuts into 16 KiB records); the server
 *               reads with 64 KiB reads and answers one byte at the end.  MB/s
 *               = bytes / time until that byte (after the handshake).
 *   small-rr    64-byte records echoed by the server, one in flight:
 *               round trips per second.
 *   handshake   connect, full handshake (no resumption, no tickets),
 *               close_notify, close (weft_stream_close sends close_notify;
 *               the gnutls side calls gnutls_bye(GNUTLS_SHUT_WR) to match);
 *               handshakes per second, measured at the client.
 * One warm-up round, then -r rounds; the table shows medians and the ratio
 * weft / gnutls (> 1: weft is faster).  -P pins both processes to CPU 0 (the
 * issue's setting; the same as running under taskset -c 0).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "../bench-util.h"

#include <weft/weft.h>
#include <weft/tls.h>

#include <gnutls/gnutls.h>

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

enum { I_GNUTLS, I_WEFT, NIMPL };
enum { R_BULK, R_RR, R_HS, NROWS };

static const char *const impl_names[NIMPL] = {"gnutls", "weft"};
static const char *const row_names[NROWS] = {"bulk", "small-rr", "handshake"};

#define PRIO "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-256-GCM"
#define REC 16384
#define RR_MSG 64
#define WEFT_CHUNK (16u << 20)

static struct {
	long bulk_mib;
	long rr;
	long hs;
	bool pin;
	bool rows[NROWS];
	bool impls[NIMPL];
} opt = {.bulk_mib = 1024, .rr = 50000, .hs = 1000, .rows = {true, true, true}, .impls = {true, true}};

static char dir[64];
static char cert[128], key[128], ca[128];
static double samples[NROWS][NIMPL][MAX_ROUNDS + 1];
static double cpu_samples[NROWS][NIMPL][MAX_ROUNDS + 1];

/* ---- certificates ------------------------------------------------------------ */

static void make_certs(void)
{
	snprintf(dir, sizeof dir, "/tmp/bench-tls-XXXXXX");
	if (mkdtemp(dir) == NULL)
		die("mkdtemp: %s", strerror(errno));
	snprintf(cert, sizeof cert, "%s/srv.pem", dir);
	snprintf(key, sizeof key, "%s/srv.key", dir);
	snprintf(ca, sizeof ca, "%s/ca.pem", dir);
	char cmd[1024];
	snprintf(cmd, sizeof cmd,
		"cd %s && printf 'cn = \"bench CA\"\\nca\\ncert_signing_key\\nexpiration_days = 30\\n' > ca.tmpl && "
		"printf 'cn = \"localhost\"\\ndns_name = \"localhost\"\\ntls_www_server\\nsigning_key\\n"
		"expiration_days = 30\\n' > srv.tmpl && "
		"certtool --generate-privkey --key-type=ecdsa --curve=secp256r1 --outfile ca.key && "
		"certtool --generate-privkey --key-type=ecdsa --curve=secp256r1 --outfile srv.key && "
		"certtool --generate-self-signed --load-privkey ca.key --template ca.tmpl --outfile ca.pem && "
		"certtool --generate-certificate --load-privkey srv.key --load-ca-certificate ca.pem "
		"--load-ca-privkey ca.key --template srv.tmpl --outfile srv.pem",
		dir);
	char full[1200];
	snprintf(full, sizeof full, "(%s) >/dev/null 2>&1", cmd);
	if (system(full) != 0)
		die("certtool failed (is gnutls-bin installed?)");
}

static void remove_certs(void)
{
	if (dir[0] != '\0') {
		char cmd[128];
		snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
		if (system(cmd) != 0)
			warn("could not remove %s", dir);
	}
}

/* ---- blocking GnuTLS ------------------------------------------------------------ */

static gnutls_certificate_credentials_t g_srv_cred, g_cli_cred;
static gnutls_priority_t g_prio;

static void gcheck(int g, const char *what)
{
	if (g < 0)
		die("%s: %s", what, gnutls_strerror(g));
}

static void g_init(void)
{
	gcheck(gnutls_certificate_allocate_credentials(&g_srv_cred), "credentials");
	gcheck(gnutls_certificate_set_x509_key_file(g_srv_cred, cert, key, GNUTLS_X509_FMT_PEM), "server key");
	gcheck(gnutls_certificate_allocate_credentials(&g_cli_cred), "credentials");
	if (gnutls_certificate_set_x509_trust_file(g_cli_cred, ca, GNUTLS_X509_FMT_PEM) != 1)
		die("CA file");
	gcheck(gnutls_priority_init(&g_prio, PRIO, NULL), "priority");
}

static gnutls_session_t g_session(int fd, bool server)
{
	gnutls_session_t s;
	gcheck(gnutls_init(&s, server ? GNUTLS_SERVER : GNUTLS_CLIENT), "gnutls_init");
	gcheck(gnutls_priority_set(s, g_prio), "priority_set");
	gcheck(gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, server ? g_srv_cred : g_cli_cred), "credentials_set");
	if (!server) {
		gcheck(gnutls_server_name_set(s, GNUTLS_NAME_DNS, "localhost", 9), "server_name_set");
		gnutls_session_set_verify_cert(s, "localhost", 0);
	}
	gnutls_transport_set_int(s, fd);
	int g;
	do
		g = gnutls_handshake(s);
	while (g < 0 && !gnutls_error_is_fatal(g));
	gcheck(g, "gnutls_handshake");
	return s;
}

static void g_send_all(gnutls_session_t s, const unsigned char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = gnutls_record_send(s, p, n > REC ? REC : n);
		if (w < 0) {
			if (w == GNUTLS_E_AGAIN || w == GNUTLS_E_INTERRUPTED)
				continue;
			die("gnutls_record_send: %s", gnutls_strerror((int)w));
		}
		p += w;
		n -= (size_t)w;
	}
}

static void g_recv_n(gnutls_session_t s, unsigned char *buf, size_t bufsize, uint64_t n)
{
	while (n > 0) {
		ssize_t r = gnutls_record_recv(s, buf, n < bufsize ? (size_t)n : bufsize);
		if (r <= 0) {
			if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
				continue;
			die("gnutls_record_recv: %s", r == 0 ? "EOF" : gnutls_strerror((int)r));
		}
		n -= (uint64_t)r;
	}
}

/* ---- weft ------------------------------------------------------------------------ */

static weft_tls_config *w_cfg(bool server)
{
	weft_tls_config *c;
	wcheck(weft_tls_config_new(server ? WEFT_TLS_SERVER : WEFT_TLS_CLIENT, &c), "weft_tls_config_new");
	wcheck(weft_tls_config_set_priority(c, PRIO), "set_priority");
	if (server) {
		wcheck(weft_tls_config_add_cert_file(c, cert, key, NULL), "add_cert_file");
		wcheck(weft_tls_config_set_tickets(c, false), "set_tickets");
	} else {
		if (weft_tls_config_add_ca_file(c, ca) != 1)
			die("weft: CA file");
	}
	return c;
}

static void w_wait(weft_req *req, const char *what)
{
	wcheck(weft_req_wait(req), what);
	int e = 0;
	if (weft_req_is_error(req, &e))
		die("%s: %s", what, strerror(e));
}

/* A TLS stream on fd, handshake done. */
static weft_stream *w_session(weft_loop *loop, weft_tls_config *cfg, int fd, bool server)
{
	weft_stream *raw, *s;
	wcheck(weft_stream_new_socket(loop, fd, &raw), "stream_new_socket");
	if (server)
		wcheck(weft_tls_server_new(cfg, raw, &s), "tls_server_new");
	else
		wcheck(weft_tls_client_new(cfg, raw, "localhost", &s), "tls_client_new");
	weft_req *req = weft_tls_handshake_send(s);
	w_wait(req, "handshake");
	weft_req_free(req);
	return s;
}

static void w_close(weft_loop *loop, weft_stream *s)
{
	weft_stream_close(s, NULL, NULL);
	for (int i = 0; i < 100 && weft_loop_free(loop) == -EBUSY; i++)
		weft_loop_run(loop, WEFT_RUN_NOWAIT);
}

/* Read exactly n bytes (into a scratch buffer, bufsize per read). */
struct w_reader {
	weft_stream *s;
	unsigned char *buf;
	size_t bufsize;
	uint64_t left;
	bool done;
	int err;
};

static void w_read_cb(weft_req *req, void *data);

static void w_read_next(struct w_reader *r)
{
	weft_req *req = weft_stream_read_send(r->s, r->buf, r->left < r->bufsize ? (size_t)r->left : r->bufsize);
	weft_req_set_callback(req, w_read_cb, r);
}

static void w_read_cb(weft_req *req, void *data)
{
	struct w_reader *r = data;
	int e = 0;
	ssize_t n = weft_stream_read_recv(req, &e);
	weft_req_free(req);
	if (n < 0) {
		r->err = e;
		r->done = true;
		return;
	}
	r->left -= (uint64_t)n;
	if (r->left == 0)
		r->done = true;
	else
		w_read_next(r);
}

static void w_read_n(weft_loop *loop, weft_stream *s, unsigned char *buf, size_t bufsize, uint64_t n)
{
	struct w_reader r = {.s = s, .buf = buf, .bufsize = bufsize, .left = n};
	w_read_next(&r);
	while (!r.done)
		wcheck(weft_loop_run(loop, WEFT_RUN_ONCE), "loop_run");
	if (r.err)
		die("weft read: %s", strerror(r.err));
}

static void w_write(weft_loop *loop, weft_stream *s, const void *p, size_t n)
{
	struct iovec iov = {(void *)p, n};
	ssize_t w = weft_stream_try_writev(s, &iov, 1);
	if (w == (ssize_t)n)
		return;
	if (w > 0) {
		iov.iov_base = (char *)p + w;
		iov.iov_len = n - (size_t)w;
	} else if (w != -EAGAIN) {
		die("try_writev: %s", strerror((int)-w));
	}
	weft_req *req = weft_stream_writev_send(s, &iov, 1);
	(void)loop;
	w_wait(req, "writev");
	weft_req_free(req);
}

/* ---- the rows ------------------------------------------------------------------- */

/* The timed part of the client: wall clock and this process's CPU time. */
static double w0, c0, timed_wall, timed_cpu;

static void timer_start(void)
{
	w0 = now_mono();
	c0 = now_cpu();
}

static void timer_stop(void)
{
	timed_wall = now_mono() - w0;
	timed_cpu = now_cpu() - c0;
}

static unsigned char *bulk_buf;

static uint64_t bulk_bytes(void)
{
	return (uint64_t)opt.bulk_mib << 20;
}

static void peer_bulk(int impl, int fd)
{
	unsigned char *buf = xmalloc(65536);
	unsigned char ack = 1;
	if (impl == I_GNUTLS) {
		gnutls_session_t s = g_session(fd, true);
		g_recv_n(s, buf, 65536, bulk_bytes());
		g_send_all(s, &ack, 1);
		gnutls_bye(s, GNUTLS_SHUT_WR);
		gnutls_deinit(s);
	} else {
		weft_loop *loop;
		wcheck(weft_loop_new(&loop), "loop_new");
		weft_tls_config *cfg = w_cfg(true);
		weft_stream *s = w_session(loop, cfg, fd, true);
		w_read_n(loop, s, buf, 65536, bulk_bytes());
		w_write(loop, s, &ack, 1);
		w_close(loop, s);
		weft_tls_config_unref(cfg);
	}
	free(buf);
}

static double client_bulk(int impl, int fd)
{
	unsigned char ack;
	if (impl == I_GNUTLS) {
		gnutls_session_t s = g_session(fd, false);
		timer_start();
		for (uint64_t left = bulk_bytes(); left > 0;) {
			size_t n = left < WEFT_CHUNK ? (size_t)left : WEFT_CHUNK;
			g_send_all(s, bulk_buf, n);
			left -= n;
		}
		g_recv_n(s, &ack, 1, 1);
		timer_stop();
		gnutls_deinit(s);
	} else {
		weft_loop *loop;
		wcheck(weft_loop_new(&loop), "loop_new");
		weft_tls_config *cfg = w_cfg(false);
		weft_stream *s = w_session(loop, cfg, fd, false);
		timer_start();
		for (uint64_t left = bulk_bytes(); left > 0;) {
			size_t n = left < WEFT_CHUNK ? (size_t)left : WEFT_CHUNK;
			struct iovec iov = {bulk_buf, n};
			weft_req *req = weft_stream_writev_send(s, &iov, 1);
			w_wait(req, "writev");
			weft_req_free(req);
			left -= n;
		}
		w_read_n(loop, s, &ack, 1, 1);
		timer_stop();
		w_close(loop, s);
		weft_tls_config_unref(cfg);
	}
	return (double)bulk_bytes() / 1e6;
}

static void peer_rr(int impl, int fd)
{
	unsigned char buf[RR_MSG];
	if (impl == I_GNUTLS) {
		gnutls_session_t s = g_session(fd, true);
		for (long i = 0; i < opt.rr; i++) {
			g_recv_n(s, buf, RR_MSG, RR_MSG);
			g_send_all(s, buf, RR_MSG);
		}
		gnutls_deinit(s);
	} else {
		weft_loop *loop;
		wcheck(weft_loop_new(&loop), "loop_new");
		weft_tls_config *cfg = w_cfg(true);
		weft_stream *s = w_session(loop, cfg, fd, true);
		for (long i = 0; i < opt.rr; i++) {
			w_read_n(loop, s, buf, RR_MSG, RR_MSG);
			w_write(loop, s, buf, RR_MSG);
		}
		w_close(loop, s);
		weft_tls_config_unref(cfg);
	}
}

static double client_rr(int impl, int fd)
{
	unsigned char buf[RR_MSG];
	memset(buf, 'x', sizeof buf);
	if (impl == I_GNUTLS) {
		gnutls_session_t s = g_session(fd, false);
		timer_start();
		for (long i = 0; i < opt.rr; i++) {
			g_send_all(s, buf, RR_MSG);
			g_recv_n(s, buf, RR_MSG, RR_MSG);
		}
		timer_stop();
		gnutls_deinit(s);
	} else {
		weft_loop *loop;
		wcheck(weft_loop_new(&loop), "loop_new");
		weft_tls_config *cfg = w_cfg(false);
		weft_stream *s = w_session(loop, cfg, fd, false);
		timer_start();
		for (long i = 0; i < opt.rr; i++) {
			w_write(loop, s, buf, RR_MSG);
			w_read_n(loop, s, buf, RR_MSG, RR_MSG);
		}
		timer_stop();
		w_close(loop, s);
		weft_tls_config_unref(cfg);
	}
	return (double)opt.rr;
}

/* Handshakes: the peer accepts on an abstract Unix socket (listen fd
 * inherited), the client connects opt.hs times. */
static struct sockaddr_un hs_addr;
static socklen_t hs_len;

static void peer_hs(int impl, int lfd)
{
	if (impl == I_GNUTLS) {
		for (long i = 0; i < opt.hs; i++) {
			int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
			if (fd < 0)
				die("accept: %s", strerror(errno));
			gnutls_session_t s = g_session(fd, true);
			(void)gnutls_bye(s, GNUTLS_SHUT_WR); /* as weft_stream_close does */
			gnutls_deinit(s);
			close(fd);
		}
	} else {
		weft_loop *loop;
		wcheck(weft_loop_new(&loop), "loop_new");
		weft_tls_config *cfg = w_cfg(true);
		for (long i = 0; i < opt.hs; i++) {
			int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
			if (fd < 0)
				die("accept: %s", strerror(errno));
			weft_stream *s = w_session(loop, cfg, fd, true);
			weft_stream_close(s, NULL, NULL);
		}
		w_close(loop, NULL);
		weft_tls_config_unref(cfg);
	}
}

static int hs_connect(void)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&hs_addr, hs_len) < 0)
		die("connect: %s", strerror(errno));
	return fd;
}

static double client_hs(int impl)
{
	timer_start();
	if (impl == I_GNUTLS) {
		for (long i = 0; i < opt.hs; i++) {
			int fd = hs_connect();
			gnutls_session_t s = g_session(fd, false);
			(void)gnutls_bye(s, GNUTLS_SHUT_WR);
			gnutls_deinit(s);
			close(fd);
		}
	} else {
		weft_loop *loop;
		wcheck(weft_loop_new(&loop), "loop_new");
		weft_tls_config *cfg = w_cfg(false);
		for (long i = 0; i < opt.hs; i++) {
			weft_stream *s = w_session(loop, cfg, hs_connect(), false);
			weft_stream_close(s, NULL, NULL);
		}
		w_close(loop, NULL);
		weft_tls_config_unref(cfg);
	}
	timer_stop();
	return (double)opt.hs;
}

static double children_cpu(void)
{
	struct rusage ru;
	getrusage(RUSAGE_CHILDREN, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
		ru.ru_stime.tv_usec / 1e6;
}

/* One round of one row with one implementation: fork the peer, measure.
 * Returns the work done (MB, round trips, handshakes); *ret_wall and
 * *ret_cpu get the rate per wall-clock second and per CPU second of both
 * processes together (the client's timed part + the whole peer). */
static void run_one(int row, int impl, double *ret_wall, double *ret_cpu)
{
	double peer0 = children_cpu();
	int sv[2] = {-1, -1};
	int lfd = -1;
	if (row == R_HS) {
		lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		memset(&hs_addr, 0, sizeof hs_addr);
		hs_addr.sun_family = AF_UNIX;
		int n = snprintf(hs_addr.sun_path + 1, sizeof hs_addr.sun_path - 1, "bench-tls-%d", (int)getpid());
		hs_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
		if (lfd < 0 || bind(lfd, (struct sockaddr *)&hs_addr, hs_len) < 0 || listen(lfd, 128) < 0)
			die("listen: %s", strerror(errno));
	} else if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		die("socketpair: %s", strerror(errno));
	}
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		if (row == R_HS) {
			peer_hs(impl, lfd);
		} else {
			close(sv[0]);
			if (row == R_BULK)
				peer_bulk(impl, sv[1]);
			else
				peer_rr(impl, sv[1]);
		}
		_exit(0);
	}
	double work;
	wd_arm(impl, row);
	if (row == R_HS) {
		work = client_hs(impl);
		close(lfd);
	} else {
		close(sv[1]);
		work = row == R_BULK ? client_bulk(impl, sv[0]) : client_rr(impl, sv[0]);
		if (impl == I_GNUTLS)
			close(sv[0]); /* weft closed its own */
	}
	int status;
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		die("the %s peer failed (%s)", impl_names[impl], row_names[row]);
	wd_disarm();
	*ret_wall = work / timed_wall;
	*ret_cpu = work / (timed_cpu + children_cpu() - peer0);
}

static void row_round(int impl, int round, void *arg)
{
	int row = *(int *)arg;
	double v, cpu;
	run_one(row, impl, &v, &cpu);
	if (bench.verbose)
		printf("  %-8s %-10s %12.1f /s   %12.1f /CPU-s\n", impl_names[impl], row_names[row], v, cpu);
	if (round >= 0) {
		samples[row][impl][round] = v;
		cpu_samples[row][impl][round] = cpu;
	}
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bench-tls [-q] [-v] [-o] [-P] [-r rounds] [-b MiB] [-n rt] [-H hs] [-t rows]\n"
		"  -r N   measured rounds, after one warm-up round (default 5)\n"
		"  -b N   bulk MiB per round (default 1024)\n"
		"  -n N   small-record round trips per round (default 50000)\n"
		"  -H N   handshakes per round (default 1000)\n"
		"  -t L   rows: bulk,small-rr,handshake (default all)\n"
		"  -s L   implementations: gnutls,weft (default both; one alone for perf/strace)\n"
		"  -o     rotate the order of the implementations each round\n"
		"  -P     pin both processes to CPU 0 (as taskset -c 0)\n"
		"  -q     quick run (smoke test): -r 1 -b 16 -n 2000 -H 50 (explicit options win)\n"
		"  -v     print every round\n");
}

int main(int argc, char **argv)
{
	bench_init("bench-tls", 2);
	int c;
	while ((c = bench_getopt(argc, argv, "r:b:n:H:t:s:oPqvh", usage)) != -1) {
		switch (c) {
		case 'b': opt.bulk_mib = parse_num(optarg, 'b', 1, 65536); break;
		case 'n': opt.rr = parse_num(optarg, 'n', 1, 100000000); break;
		case 'H': opt.hs = parse_num(optarg, 'H', 1, 10000000); break;
		case 'P': opt.pin = true; break;
		case 's':
			if (!parse_list(optarg, impl_names, NIMPL, NULL, opt.impls))
				fail(2, "-s: implementations are gnutls, weft");
			break;
		case 't':
			if (!parse_list(optarg, row_names, NROWS, NULL, opt.rows))
				fail(2, "-t: rows are bulk, small-rr, handshake");
			break;
		default: usage(stderr); return 2;
		}
	}
	if (bench.quick) {
		if (!option_given('b'))
			opt.bulk_mib = 16;
		if (!option_given('n'))
			opt.rr = 2000;
		if (!option_given('H'))
			opt.hs = 50;
	}
	if (opt.pin) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(0, &set);
		if (sched_setaffinity(0, sizeof set, &set) < 0)
			die("sched_setaffinity(CPU 0): %s", strerror(errno));
	}
	signal(SIGPIPE, SIG_IGN);
	make_certs();
	atexit(remove_certs);
	g_init();
	bulk_buf = xmalloc(WEFT_CHUNK);
	memset(bulk_buf, 'b', WEFT_CHUNK);
	wd_init(300, impl_names, row_names, "a peer hangs?");
	signal(SIGALRM, wd_on_alarm);
	printf("# bench-tls: %s, %d round%s; TLS 1.3 AES-256-GCM, ECDSA P-256; %s\n",
		gnutls_check_version(NULL), bench.rounds, bench.rounds == 1 ? "" : "s",
		opt.pin ? "both processes on CPU 0" : "not pinned (-P pins)");
	for (int row = 0; row < NROWS; row++) {
		if (!opt.rows[row])
			continue;
		run_interleaved(NIMPL, opt.impls, row_round, &row);
	}
	static const int widths[6] = {9, 9, 11, 10, 10, 11};
	static const char *const heads[6] = {"gnutls", "weft", "weft/gnutls", "gnutls/CPU", "weft/CPU",
		"weft/gnutls"};
	table_head(34, "row (median)", 6, widths, heads);
	for (int row = 0; row < NROWS; row++) {
		if (!opt.rows[row])
			continue;
		double v[4] = {median(samples[row][I_GNUTLS], bench.rounds), median(samples[row][I_WEFT], bench.rounds),
			median(cpu_samples[row][I_GNUTLS], bench.rounds), median(cpu_samples[row][I_WEFT], bench.rounds)};
		char cell[6][32], title[80];
		for (int k = 0; k < 4; k++) {
			if (row == R_BULK)
				snprintf(cell[k < 2 ? k : k + 1], 32, "%.0f", v[k]);
			else
				fmt_rate(cell[k < 2 ? k : k + 1], 32, v[k]);
		}
		bool both = opt.impls[I_GNUTLS] && opt.impls[I_WEFT];
		fmt_ratio(cell[2], 32, both, v[1], v[0]);
		fmt_ratio(cell[5], 32, both, v[3], v[2]);
		snprintf(title, sizeof title, "%s", row == R_BULK ? "bulk, 16 KiB records (MB/s)"
			: row == R_RR ? "64-byte records (round trips/s)" : "full handshakes (/s)");
		const char *cells[6] = {cell[0], cell[1], cell[2], cell[3], cell[4], cell[5]};
		table_row(34, title, 6, widths, cells);
	}
	printf("\nThe first three columns are per wall-clock second; the /CPU columns per second\n"
		"of CPU time of both processes together (robust when other programs share the CPU).\n");
	printf("\nratios > 1 mean weft is faster; target >= 0.95 on every row.\n");
	free(bulk_buf);
	gnutls_certificate_free_credentials(g_srv_cred);
	gnutls_certificate_free_credentials(g_cli_cred);
	gnutls_priority_deinit(g_prio);
	return 0;
}
