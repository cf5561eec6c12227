/* Tests for weft's TLS module (include/weft/tls.h).
 *
 * Certificates are made at start-up with certtool in a mkdtemp directory:
 * a CA, a server certificate for "localhost" / 127.0.0.1, a client
 * certificate, an expired server certificate, and a second CA nobody
 * trusts with a server certificate of its own.
 *
 * Real peers: gnutls-serv and openssl s_server as servers for weft's
 * client, gnutls-cli and openssl s_client as clients of weft's server.
 * They run on ephemeral ports, are awaited by polling the port (bounded),
 * die with the test process (PR_SET_PDEATHSIG) and are always killed and
 * reaped.  The rest runs weft against weft on socketpairs, pipes and UDP,
 * with transports written here (one byte per read, a cutter that closes
 * mid-record, a lossy datagram proxy).
 *
 * Every test closes what it opened, checks weft_loop_free returns 0, and
 * the helper fails a test that leaks an fd. */
#include "helper.h"

#include <weft/weft.h>
#include <weft/tls.h>

#include <gnutls/gnutls.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_dir[64];
static const char *g_only;
static bool g_have_gnutls_bin, g_have_openssl;

/* ---- files and certificates -------------------------------------------------- */

static void path_of(char *buf, size_t size, const char *name)
{
	snprintf(buf, size, "%s/%s", g_dir, name);
}

static const char *P(const char *name)
{
	static char bufs[8][256];
	static unsigned i;
	char *b = bufs[i++ % 8];
	path_of(b, 256, name);
	return b;
}

static int write_file(const char *name, const char *text)
{
	FILE *f = fopen(P(name), "w");
	if (f == NULL)
		return -1;
	fputs(text, f);
	return fclose(f);
}

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	int r = system(cmd);
	return r == 0 ? 0 : -1;
}

static bool have_program(const char *name)
{
	return sh("command -v %s >/dev/null 2>&1", name) == 0;
}

static int make_key(const char *name)
{
	return sh("certtool --generate-privkey --key-type=ecdsa --curve=secp256r1 --outfile %s >/dev/null 2>&1",
			P(name));
}

static int make_cert(const char *cert, const char *key, const char *tmpl, const char *ca, const char *ca_key)
{
	if (ca == NULL)
		return sh("certtool --generate-self-signed --load-privkey %s --template %s --outfile %s >/dev/null 2>&1",
				P(key), P(tmpl), P(cert));
	return sh("certtool --generate-certificate --load-privkey %s --load-ca-certificate %s "
			"--load-ca-privkey %s --template %s --outfile %s >/dev/null 2>&1",
			P(key), P(ca), P(ca_key), P(tmpl), P(cert));
}

static int make_certificates(void)
{
	int r = 0;
	r |= write_file("ca.tmpl", "cn = \"weft test CA\"\nca\ncert_signing_key\nexpiration_days = 3650\n");
	r |= write_file("ca2.tmpl", "cn = \"weft untrusted CA\"\nca\ncert_signing_key\nexpiration_days = 3650\n");
	r |= write_file("srv.tmpl", "cn = \"localhost\"\ndns_name = \"localhost\"\nip_address = \"127.0.0.1\"\n"
			"tls_www_server\nsigning_key\nencryption_key\nexpiration_days = 365\n");
	r |= write_file("cli.tmpl", "cn = \"client 1\"\norganization = \"weft\"\ntls_www_client\nsigning_key\n"
			"expiration_days = 365\n");
	r |= write_file("other.tmpl", "cn = \"other.example\"\ndns_name = \"other.example\"\ntls_www_server\n"
			"signing_key\nexpiration_days = 365\n");
	r |= write_file("old.tmpl", "cn = \"localhost\"\ndns_name = \"localhost\"\ntls_www_server\nsigning_key\n"
			"activation_date = \"2020-01-01 00:00:00\"\nexpiration_date = \"2020-02-01 00:00:00\"\n");
	if (r != 0)
		return -1;
	const char *keys[] = {"ca.key", "ca2.key", "srv.key", "cli.key", "old.key", "evil.key", "other.key"};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (make_key(keys[i]) < 0)
			return -1;
	if (make_cert("ca.pem", "ca.key", "ca.tmpl", NULL, NULL) < 0 ||
	    make_cert("ca2.pem", "ca2.key", "ca2.tmpl", NULL, NULL) < 0 ||
	    make_cert("srv.pem", "srv.key", "srv.tmpl", "ca.pem", "ca.key") < 0 ||
	    make_cert("cli.pem", "cli.key", "cli.tmpl", "ca.pem", "ca.key") < 0 ||
	    make_cert("old.pem", "old.key", "old.tmpl", "ca.pem", "ca.key") < 0 ||
	    make_cert("evil.pem", "evil.key", "srv.tmpl", "ca2.pem", "ca2.key") < 0 ||
	    make_cert("other.pem", "other.key", "other.tmpl", "ca.pem", "ca.key") < 0)
		return -1;
	return 0;
}

/* ---- loops --------------------------------------------------------------------- */


/* ---- request helpers --------------------------------------------------------- */

struct done {
	int count;
	int err;  /* positive errno of the last failed request */
	ssize_t n;
};

static void on_simple(weft_req *req, void *data)
{
	struct done *d = data;
	int e = 0;
	d->n = weft_req_simple_recv(req, &e);
	d->err = e;
	d->count++;
	weft_req_free(req);
}

/* Wait for a handshake; returns 0 or the positive errno. */
static int handshake(weft_loop *loop, weft_stream *s, unsigned timeout_ms)
{
	struct done d = {0};
	weft_req *req = weft_tls_handshake_send(s);
	if (req == NULL)
		return ENOMEM;
	if (timeout_ms)
		weft_req_set_timeout(req, timeout_ms);
	weft_req_set_callback(req, on_simple, &d);
	if (!t_run_until_count(loop, &d.count, 1, 20000))
		return -1;
	return d.err;
}

/* Two handshakes at once (client and server in one loop). */
static void handshake2(weft_loop *loop, weft_stream *a, weft_stream *b, int *ea, int *eb)
{
	struct done da = {0}, db = {0};
	weft_req *ra = weft_tls_handshake_send(a);
	weft_req *rb = weft_tls_handshake_send(b);
	weft_req_set_callback(ra, on_simple, &da);
	weft_req_set_callback(rb, on_simple, &db);
	int both = 0;
	uint64_t end = t_now_ms() + 20000;
	while ((da.count == 0 || db.count == 0) && t_now_ms() < end)
		t_run_until_count(loop, &both, 1, 50);
	*ea = da.count ? da.err : -1;
	*eb = db.count ? db.err : -1;
}

struct xfer {
	int count;
	int err;
	ssize_t n;
	char buf[65536];
};

static void on_read(weft_req *req, void *data)
{
	struct xfer *x = data;
	int e = 0;
	x->n = weft_stream_read_recv(req, &e);
	x->err = e;
	x->count++;
	weft_req_free(req);
}

static void on_write(weft_req *req, void *data)
{
	struct done *d = data;
	int e = 0;
	d->n = weft_stream_writev_recv(req, &e);
	d->err = e;
	d->count++;
	weft_req_free(req);
}

/* Write all of buf; returns 0 or the positive errno. */
static int write_all(weft_loop *loop, weft_stream *s, const void *buf, size_t len)
{
	struct done d = {0};
	struct iovec iov = {(void *)buf, len};
	weft_req *req = weft_stream_writev_send(s, &iov, 1);
	weft_req_set_callback(req, on_write, &d);
	if (!t_run_until_count(loop, &d.count, 1, 20000))
		return -1;
	return d.err;
}

/* Read until `want` bytes arrived into out (or EOF/error); returns the
 * count read, or -errno. */
static ssize_t read_n(weft_loop *loop, weft_stream *s, char *out, size_t want, unsigned ms)
{
	size_t got = 0;
	uint64_t end = t_now_ms() + ms;
	while (got < want && t_now_ms() < end) {
		struct xfer *x = calloc(1, sizeof(*x));
		weft_req *req = weft_stream_read_send(s, x->buf, sizeof(x->buf));
		weft_req_set_callback(req, on_read, x);
		if (!t_run_until_count(loop, &x->count, 1, (unsigned)(end - t_now_ms() + 1))) {
			weft_req_free(req);
			free(x);
			break;
		}
		if (x->n < 0) {
			ssize_t e = -x->err;
			free(x);
			return got > 0 ? (ssize_t)got : e;
		}
		size_t n = (size_t)x->n;
		if (n > want - got)
			n = want - got;
		memcpy(out + got, x->buf, n);
		got += n;
		free(x);
	}
	return (ssize_t)got;
}

/* ---- configurations ---------------------------------------------------------- */

static weft_tls_config *client_cfg(void)
{
	weft_tls_config *c = NULL;
	CHECK_EQ(weft_tls_config_new(WEFT_TLS_CLIENT, &c), 0);
	CHECK_EQ(weft_tls_config_add_ca_file(c, P("ca.pem")), 1);
	return c;
}

static weft_tls_config *server_cfg_with(const char *cert, const char *key)
{
	weft_tls_config *c = NULL;
	CHECK_EQ(weft_tls_config_new(WEFT_TLS_SERVER, &c), 0);
	CHECK_EQ(weft_tls_config_add_cert_file(c, P(cert), P(key), NULL), 0);
	return c;
}

static weft_tls_config *server_cfg(void)
{
	return server_cfg_with("srv.pem", "srv.key");
}

/* A socketpair as two weft socket streams. */
static void stream_pair(weft_loop *loop, weft_stream **a, weft_stream **b)
{
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	CHECK_EQ(weft_stream_new_socket(loop, sv[0], a), 0);
	CHECK_EQ(weft_stream_new_socket(loop, sv[1], b), 0);
}

/* A TLS client and server over a socketpair. */
static void tls_pair(weft_loop *loop, weft_tls_config *cc, weft_tls_config *sc, const char *name,
		weft_stream **c, weft_stream **s)
{
	weft_stream *a, *b;
	stream_pair(loop, &a, &b);
	CHECK_EQ(weft_tls_client_new(cc, a, name, c), 0);
	CHECK_EQ(weft_tls_server_new(sc, b, s), 0);
}

/* ---- real peers ---------------------------------------------------------------- */

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int port = -1;
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &len) == 0)
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

/* A UDP port for gnutls-serv, below the kernel's ephemeral range: a port
 * the kernel handed out could be handed out again, between our check and
 * the server's bind, to another test's unbound UDP socket on 127.0.0.1 —
 * which, bound more specifically than the server's wildcard, would then
 * receive our datagrams. */
static int free_udp_port(void)
{
	static unsigned seed;
	if (seed == 0)
		seed = (unsigned)getpid() ^ (unsigned)t_now_ms();
	for (int attempt = 0; attempt < 100; attempt++) {
		seed = seed * 1103515245u + 12345u;
		int port = 20000 + (int)((seed >> 8) % 12000); /* 20000..31999 */
		int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -1;
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
		int r = bind(fd, (struct sockaddr *)&a, sizeof(a)); /* the wildcard: free on every address */
		close(fd);
		if (r == 0)
			return port;
	}
	return -1;
}

/* Start argv with stdin from in_file (NULL: /dev/null) and stdout+stderr
 * into out_file (NULL: /dev/null). */
static pid_t spawn(char *const argv[], const char *in_file, const char *out_file)
{
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	int in = open(in_file ? in_file : "/dev/null", O_RDONLY);
	int out = open(out_file ? out_file : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (in < 0 || out < 0)
		_exit(127);
	dup2(in, 0);
	dup2(out, 1);
	dup2(out, 2);
	execvp(argv[0], argv);
	_exit(127);
}

/* Wait until 127.0.0.1:port accepts (or ms pass, or the child died). */
static bool wait_port(pid_t pid, int port, unsigned ms)
{
	uint64_t end = t_now_ms() + ms;
	while (t_now_ms() < end) {
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return false;
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
			.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		int r = connect(fd, (struct sockaddr *)&a, sizeof(a));
		close(fd);
		if (r == 0)
			return true;
		t_sleep_ms(20);
	}
	return false;
}

/* Start a TCP server whose argv[port_arg] is replaced by a free port; the
 * port is picked here, so another program may take it first: a server that
 * dies at start is tried again (3 times) on a new port.  Returns the pid
 * (and *ret_port) or -1. */
static pid_t start_tcp_server(char **argv, int port_arg, int *ret_port)
{
	static char portbuf[16];
	for (int attempt = 0; attempt < 3; attempt++) {
		int port = free_port();
		snprintf(portbuf, sizeof(portbuf), "%d", port);
		argv[port_arg] = portbuf;
		pid_t pid = spawn(argv, NULL, NULL);
		if (pid < 0)
			return -1;
		if (wait_port(pid, port, 10000)) {
			*ret_port = port;
			return pid;
		}
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	return -1;
}

/* Wait for the child to exit on its own for up to ms, then kill it; always
 * reaped.  Returns its exit status, or -1 if it had to be killed. */
static int reap(pid_t pid, unsigned ms)
{
	uint64_t end = t_now_ms() + ms;
	int status = 0;
	while (t_now_ms() < end) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
		t_sleep_ms(10);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return -1;
}

/* SIGTERM, then SIGKILL after 2 s; always reaped. */
static void kill_reap(pid_t pid)
{
	kill(pid, SIGTERM);
	(void)reap(pid, 2000);
}

static char *read_file(const char *path)
{
	static char buf[65536];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

/* Connect a plain TCP stream to 127.0.0.1:port. */
static weft_stream *tcp_connect(weft_loop *loop, int port)
{
	char text[64];
	snprintf(text, sizeof(text), "tcp:127.0.0.1:%d", port);
	weft_addr a;
	CHECK_EQ(weft_addr_parse(text, &a), 0);
	weft_req *req = weft_sock_connect_send(loop, &a);
	if (weft_req_wait(req) < 0) {
		weft_req_free(req);
		return NULL;
	}
	weft_stream *s = NULL;
	int e = 0;
	int r = weft_sock_connect_recv(req, &s, &e);
	weft_req_free(req);
	return r == 0 ? s : NULL;
}

/* ---- weft client against real servers ------------------------------------------ */

static void test_client_gnutls_serv(void)
{
	if (!g_have_gnutls_bin) {
		printf("# skip: gnutls-serv not installed\n");
		return;
	}
	char *argv[] = {"gnutls-serv", "--echo", "-p", "PORT", "--x509certfile", (char *)P("srv.pem"),
		"--x509keyfile", (char *)P("srv.key"), "--alpn", "weft/1", NULL};
	int port = 0;
	pid_t pid = start_tcp_server(argv, 3, &port);
	if (pid < 0) {
		CHECK(!"gnutls-serv did not start");
		return;
	}
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg();
	const char *alpn[] = {"weft/1"};
	CHECK_EQ(weft_tls_config_set_alpn(cc, alpn, 1), 0);
	weft_stream *tcp = tcp_connect(loop, port);
	CHECK(tcp != NULL);
	weft_stream *s = NULL;
	if (tcp != NULL && weft_tls_client_new(cc, tcp, "localhost", &s) == 0) {
		CHECK(weft_tls_is_tls(s));
		CHECK_EQ(handshake(loop, s, 10000), 0);
		CHECK(weft_tls_version(s) && strcmp(weft_tls_version(s), "TLS1.3") == 0);
		CHECK_EQ(weft_tls_verify_status(s), 0);
		const char *proto = NULL;
		size_t plen = 0;
		CHECK_EQ(weft_tls_alpn(s, &proto, &plen), 0);
		CHECK(plen == 6 && memcmp(proto, "weft/1", 6) == 0);
		char *dn = NULL;
		CHECK_EQ(weft_tls_peer_dn(s, &dn), 0);
		CHECK(dn && strstr(dn, "CN=localhost"));
		free(dn);
		CHECK(weft_stream_fd(s) >= 0);
		static const char msg[] = "hello over TLS\n";
		CHECK_EQ(write_all(loop, s, msg, sizeof(msg) - 1), 0);
		char back[64] = {0};
		CHECK_EQ(read_n(loop, s, back, sizeof(msg) - 1, 10000), (ssize_t)(sizeof(msg) - 1));
		CHECK(strcmp(back, msg) == 0);
		weft_stream_close(s, NULL, NULL);
	}
	weft_tls_config_unref(cc);
	t_loop_free(loop);
	kill_reap(pid);
}

static void test_client_openssl_server(void)
{
	if (!g_have_openssl) {
		printf("# skip: openssl not installed\n");
		return;
	}
	char *argv[] = {"openssl", "s_server", "-accept", "PORT", "-cert", (char *)P("srv.pem"),
		"-key", (char *)P("srv.key"), "-rev", "-tls1_2", NULL};
	int port = 0;
	pid_t pid = start_tcp_server(argv, 3, &port);
	if (pid < 0) {
		CHECK(!"openssl s_server did not start");
		return;
	}
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg();
	CHECK_EQ(weft_tls_config_set_priority(cc, "NORMAL:-VERS-ALL:+VERS-TLS1.2"), 0);
	weft_stream *tcp = tcp_connect(loop, port);
	CHECK(tcp != NULL);
	weft_stream *s = NULL;
	if (tcp != NULL && weft_tls_client_new(cc, tcp, "127.0.0.1", &s) == 0) {
		CHECK_EQ(handshake(loop, s, 10000), 0);
		CHECK(weft_tls_version(s) && strcmp(weft_tls_version(s), "TLS1.2") == 0);
		static const char msg[] = "abcdef\n";
		CHECK_EQ(write_all(loop, s, msg, sizeof(msg) - 1), 0);
		char back[64] = {0};
		CHECK_EQ(read_n(loop, s, back, 7, 10000), 7);
		CHECK(strcmp(back, "fedcba\n") == 0);
		weft_stream_close(s, NULL, NULL);
	}
	weft_tls_config_unref(cc);
	t_loop_free(loop);
	kill_reap(pid);
}

/* ---- real clients against a weft server --------------------------------------------- */

struct srv {
	weft_loop *loop;
	weft_tls_config *cfg;
	weft_stream *s;
	int accepted;
	int done;
	char got[256];
	size_t got_len;
	char dn[256];
	char sni[256];
	int err;
	struct xfer x;
	const char *greeting;
	bool shut;
	unsigned reap_ms; /* 0: 5000 */
};

static void free_req_cb(weft_req *req, void *data)
{
	(void)data;
	weft_req_free(req);
}

static void srv_read_cb(weft_req *req, void *data);

static void srv_read_more(struct srv *v)
{
	weft_req *req = weft_stream_read_send(v->s, v->x.buf, sizeof(v->x.buf));
	weft_req_set_callback(req, srv_read_cb, v);
}

static void srv_read_cb(weft_req *req, void *data)
{
	struct srv *v = data;
	int e = 0;
	ssize_t n = weft_stream_read_recv(req, &e);
	weft_req_free(req);
	if (n < 0) {
		v->err = e;
		v->done++;
		return;
	}
	size_t room = sizeof(v->got) - 1 - v->got_len;
	size_t k = (size_t)n < room ? (size_t)n : room;
	memcpy(v->got + v->got_len, v->x.buf, k);
	v->got_len += k;
	if (!v->shut && memchr(v->got, '\n', v->got_len) != NULL) {
		v->shut = true; /* a line in: close_notify, then wait for the client's end */
		weft_req *sd = weft_stream_shutdown_send(v->s);
		weft_req_set_callback(sd, free_req_cb, NULL);
	}
	srv_read_more(v);
}

static void srv_hs_cb(weft_req *req, void *data)
{
	struct srv *v = data;
	int e = 0;
	weft_tls_handshake_recv(req, &e);
	weft_req_free(req);
	if (e != 0) {
		v->err = e;
		v->done++;
		return;
	}
	char *dn = NULL;
	if (weft_tls_peer_dn(v->s, &dn) == 0) {
		snprintf(v->dn, sizeof(v->dn), "%s", dn);
		free(dn);
	}
	(void)weft_tls_server_name(v->s, v->sni, sizeof(v->sni));
	struct iovec iov = {(void *)v->greeting, strlen(v->greeting)};
	weft_req *w = weft_stream_writev_queue_send(v->s, NULL, &iov, 1);
	weft_req_set_callback(w, free_req_cb, NULL);
	srv_read_more(v);
}

static void srv_accept(weft_listener *l, weft_stream *stream, const weft_addr *peer, int err, void *data)
{
	struct srv *v = data;
	(void)l;
	(void)peer;
	if (stream == NULL || v->s != NULL) {
		if (stream)
			weft_stream_close(stream, NULL, NULL);
		return;
	}
	v->accepted++;
	CHECK_EQ(err, 0);
	CHECK_EQ(weft_tls_server_new(v->cfg, stream, &v->s), 0);
	weft_req *req = weft_tls_handshake_send(v->s);
	weft_req_set_timeout(req, 15000);
	weft_req_set_callback(req, srv_hs_cb, v);
}

/* Serve one real client: run a weft TLS server on an ephemeral port, start
 * argv (with "PORT" replaced), feed it in_text on stdin; the server greets,
 * sends close_notify and collects what the client sends until EOF. */
static int serve_one(struct srv *v, char **argv, const char *in_text, const char *out_name)
{
	v->loop = t_loop_new();
	weft_addr a;
	CHECK_EQ(weft_addr_parse("tcp:127.0.0.1:0", &a), 0);
	weft_listener *l = NULL;
	CHECK_EQ(weft_listen(v->loop, &a, NULL, srv_accept, v, &l), 0);
	weft_addr bound;
	CHECK_EQ(weft_listener_addr(l, &bound), 0);
	char port[16];
	snprintf(port, sizeof(port), "%d", weft_addr_port(&bound));
	for (char **p = argv; *p; p++)
		if (strcmp(*p, "PORT") == 0)
			*p = port;
		else if (strcmp(*p, "127.0.0.1:PORT") == 0) {
			static char hp[64];
			snprintf(hp, sizeof(hp), "127.0.0.1:%s", port);
			*p = hp;
		}
	write_file("stdin.txt", in_text);
	pid_t pid = spawn(argv, P("stdin.txt"), P(out_name));
	CHECK(pid > 0);
	t_run_until_count(v->loop, &v->done, 1, 15000);
	CHECK_EQ(v->accepted, 1);
	int status = reap(pid, v->reap_ms ? v->reap_ms : 5000);
	weft_stream_close(v->s, NULL, NULL);
	weft_listener_free(l);
	t_loop_free(v->loop);
	weft_tls_config_unref(v->cfg);
	return status;
}

static void test_gnutls_cli_client(void)
{
	if (!g_have_gnutls_bin) {
		printf("# skip: gnutls-cli not installed\n");
		return;
	}
	struct srv v = {.cfg = server_cfg(), .greeting = "hello from weft\n"};
	char *argv[] = {"gnutls-cli", "--x509cafile", (char *)P("ca.pem"), "-p", "PORT", "localhost", NULL};
	CHECK_EQ(serve_one(&v, argv, "ping from gnutls-cli\n", "gnutls-cli.out"), 0);
	CHECK(v.err == EPIPE || v.err == ECONNRESET); /* gnutls-cli may leave without close_notify */
	CHECK(strcmp(v.got, "ping from gnutls-cli\n") == 0);
	CHECK(strcmp(v.sni, "localhost") == 0);
	const char *out = read_file(P("gnutls-cli.out"));
	CHECK(out && strstr(out, "hello from weft"));
}

static void test_openssl_client_cert(void)
{
	if (!g_have_openssl) {
		printf("# skip: openssl not installed\n");
		return;
	}
	struct srv v = {.cfg = server_cfg(), .greeting = "hello client 1\n"};
	CHECK_EQ(weft_tls_config_add_ca_file(v.cfg, P("ca.pem")), 1);
	CHECK_EQ(weft_tls_config_set_client_auth(v.cfg, WEFT_TLS_CLIENT_AUTH_REQUIRE), 0);
	char *argv[] = {"openssl", "s_client", "-connect", "127.0.0.1:PORT", "-servername", "localhost",
		"-CAfile", (char *)P("ca.pem"), "-verify_return_error", "-cert", (char *)P("cli.pem"),
		"-key", (char *)P("cli.key"), "-quiet", "-ign_eof", NULL};
	CHECK_EQ(serve_one(&v, argv, "ping from s_client\n", "s_client.out"), 0);
	CHECK(strcmp(v.got, "ping from s_client\n") == 0);
	CHECK(strstr(v.dn, "CN=client 1") != NULL);
	const char *out = read_file(P("s_client.out"));
	CHECK(out && strstr(out, "hello client 1"));
}

static void test_openssl_client_no_cert_refused(void)
{
	if (!g_have_openssl) {
		printf("# skip: openssl not installed\n");
		return;
	}
	struct srv v = {.cfg = server_cfg(), .greeting = "never\n", .reap_ms = 500};
	CHECK_EQ(weft_tls_config_add_ca_file(v.cfg, P("ca.pem")), 1);
	CHECK_EQ(weft_tls_config_set_client_auth(v.cfg, WEFT_TLS_CLIENT_AUTH_REQUIRE), 0);
	char *argv[] = {"openssl", "s_client", "-connect", "127.0.0.1:PORT", "-CAfile", (char *)P("ca.pem"),
		"-quiet", NULL};
	CHECK(serve_one(&v, argv, "x\n", "s_client2.out") != 0);
	CHECK_EQ(v.err, EKEYREJECTED);
	CHECK_EQ(v.got_len, 0);
}

/* ---- transports written here ------------------------------------------------------- */

/* A socket stream that reads one byte per call (trickle), and can cut the connection after `limit` bytes written (a peer that dies
 * mid-handshake or mid-record). */
struct tr {
	int fd;
	weft_io *io;
	weft_stream *s;
	bool one_byte;
	size_t written, limit;
};

static ssize_t tr_readv(weft_stream *s, const struct iovec *iov, int count)
{
	struct tr *t = weft_stream_impl(s);
	ssize_t r = t->one_byte ? read(t->fd, iov[0].iov_base, 1) : readv(t->fd, iov, count);
	return r < 0 ? -errno : r;
}

static ssize_t tr_writev(weft_stream *s, const struct iovec *iov, int count)
{
	struct tr *t = weft_stream_impl(s);
	if (t->written >= t->limit)
		return -EPIPE;
	while (count > 1 && iov[0].iov_len == 0) {
		iov++;
		count--;
	}
	struct iovec one = iov[0];
	if (one.iov_len > t->limit - t->written)
		one.iov_len = t->limit - t->written;
	ssize_t r = (count == 1 || one.iov_len < iov[0].iov_len) ? write(t->fd, one.iov_base, one.iov_len)
		: writev(t->fd, iov, count);
	if (r < 0)
		return -errno;
	t->written += (size_t)r;
	if (t->written >= t->limit)
		shutdown(t->fd, SHUT_RDWR); /* the peer dies here */
	return r;
}

static int tr_shutdown(weft_stream *s)
{
	struct tr *t = weft_stream_impl(s);
	return shutdown(t->fd, SHUT_WR) < 0 ? -errno : 0;
}

static void tr_close(weft_stream *s)
{
	struct tr *t = weft_stream_impl(s);
	weft_io_free(t->io);
	close(t->fd);
	free(t);
}

static int tr_watch(weft_stream *s, unsigned events)
{
	struct tr *t = weft_stream_impl(s);
	return weft_io_modify(t->io, events);
}

static void tr_io(weft_io *io, unsigned revents, void *data)
{
	(void)io;
	weft_stream_ready(((struct tr *)data)->s, revents);
}

static const weft_stream_ops tr_ops = {
	.name = "trickle",
	.readv = tr_readv,
	.writev = tr_writev,
	.shutdown = tr_shutdown,
	.close = tr_close,
	.watch = tr_watch,
};

static weft_stream *tr_new(weft_loop *loop, int fd, bool one_byte, struct tr **ret)
{
	struct tr *t = calloc(1, sizeof(*t));
	t->fd = fd;
	t->one_byte = one_byte;
	t->limit = SIZE_MAX;
	fcntl(fd, F_SETFL, O_NONBLOCK);
	CHECK_EQ(weft_stream_new(loop, &tr_ops, t, &t->s), 0);
	CHECK_EQ(weft_io_new(loop, fd, tr_io, t, &t->io), 0);
	if (ret)
		*ret = t;
	return t->s;
}

/* ---- weft against weft -------------------------------------------------------------- */

static void test_one_byte_transport(void)
{
	weft_loop *loop = t_loop_new();
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	weft_tls_config *cc = client_cfg(), *sc = server_cfg();
	weft_stream *c = NULL, *s = NULL;
	CHECK_EQ(weft_tls_client_new(cc, tr_new(loop, sv[0], true, NULL), "localhost", &c), 0);
	CHECK_EQ(weft_tls_server_new(sc, tr_new(loop, sv[1], true, NULL), &s), 0);
	int ec, es;
	handshake2(loop, c, s, &ec, &es);
	CHECK_EQ(ec, 0);
	CHECK_EQ(es, 0);
	static const char msg[] = "one byte at a time, both ways";
	CHECK_EQ(write_all(loop, c, msg, sizeof(msg)), 0);
	char back[64] = {0};
	CHECK_EQ(read_n(loop, s, back, sizeof(msg), 10000), (ssize_t)sizeof(msg));
	CHECK(memcmp(back, msg, sizeof(msg)) == 0);
	CHECK_EQ(write_all(loop, s, msg, sizeof(msg)), 0);
	memset(back, 0, sizeof(back));
	CHECK_EQ(read_n(loop, c, back, sizeof(msg), 10000), (ssize_t)sizeof(msg));
	CHECK(memcmp(back, msg, sizeof(msg)) == 0);
	weft_stream_close(c, NULL, NULL);
	weft_stream_close(s, NULL, NULL);
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	t_loop_free(loop);
}

/* Implicit handshake: no handshake request, the first read/write runs it. */
static void test_implicit_handshake_pipes(void)
{
	weft_loop *loop = t_loop_new();
	int p1[2], p2[2];
	CHECK_EQ(pipe2(p1, O_CLOEXEC), 0);
	CHECK_EQ(pipe2(p2, O_CLOEXEC), 0);
	weft_stream *a = NULL, *b = NULL;
	CHECK_EQ(weft_stream_new_pipe(loop, p1[0], p2[1], &a), 0);
	CHECK_EQ(weft_stream_new_pipe(loop, p2[0], p1[1], &b), 0);
	weft_tls_config *cc = client_cfg(), *sc = server_cfg();
	weft_stream *c = NULL, *s = NULL;
	CHECK_EQ(weft_tls_client_new(cc, a, "localhost", &c), 0);
	CHECK_EQ(weft_tls_server_new(sc, b, &s), 0);
	weft_tls_config_unref(cc); /* the sessions hold their own references */
	weft_tls_config_unref(sc);
	CHECK(weft_tls_version(c) == NULL);
	struct xfer *x = calloc(1, sizeof(*x));
	weft_req *rr = weft_stream_read_send(s, x->buf, sizeof(x->buf));
	weft_req_set_callback(rr, on_read, x);
	static const char msg[] = "over a pipe pair";
	struct iovec iov = {(void *)msg, sizeof(msg)};
	struct done d = {0};
	weft_req *wr = weft_stream_writev_send(c, &iov, 1);
	weft_req_set_callback(wr, on_write, &d);
	CHECK(t_run_until_count(loop, &x->count, 1, 10000));
	CHECK(t_run_until_count(loop, &d.count, 1, 10000));
	CHECK_EQ(x->n, (ssize_t)sizeof(msg));
	CHECK_EQ(d.n, (ssize_t)sizeof(msg));
	CHECK(strcmp(x->buf, msg) == 0);
	CHECK(weft_tls_version(c) != NULL);
	CHECK_EQ(weft_stream_fd(c), -ENOTSOCK);
	/* close_notify: the server reads the end of the stream (EPIPE). */
	struct done sd = {0};
	weft_req *sr = weft_stream_shutdown_send(c);
	weft_req_set_callback(sr, on_simple, &sd);
	CHECK(t_run_until_count(loop, &sd.count, 1, 5000));
	CHECK_EQ(sd.err, 0);
	x->count = 0;
	rr = weft_stream_read_send(s, x->buf, sizeof(x->buf));
	weft_req_set_callback(rr, on_read, x);
	CHECK(t_run_until_count(loop, &x->count, 1, 5000));
	CHECK_EQ(x->err, EPIPE);
	/* Writing after our close_notify: EPIPE. */
	CHECK_EQ(write_all(loop, c, "x", 1), EPIPE);
	free(x);
	weft_stream_close(c, NULL, NULL);
	weft_stream_close(s, NULL, NULL);
	t_loop_free(loop);
}

/* Bulk: 64 MiB each way at once; the client reads slowly (small reads,
 * pauses), so the server's writes block and resume many times. */
#define BIG (64u << 20)

struct bulk {
	weft_loop *loop;
	weft_stream *s;
	unsigned char *rbuf;
	size_t rlen;      /* buffer per read */
	size_t got;
	bool ok;
	bool slow;
	weft_timer *pause;
	int done, err;
};

static unsigned char pattern(size_t i)
{
	return (unsigned char)((i * 7u) ^ (i >> 13));
}

static void bulk_read(struct bulk *b);

static void bulk_read_cb(weft_req *req, void *data)
{
	struct bulk *b = data;
	int e = 0;
	ssize_t n = weft_stream_read_recv(req, &e);
	weft_req_free(req);
	if (n < 0) {
		b->err = e;
		b->done = 1;
		return;
	}
	for (ssize_t i = 0; i < n; i++)
		if (b->rbuf[i] != pattern(b->got + (size_t)i))
			b->ok = false;
	size_t before = b->got;
	b->got += (size_t)n;
	if (b->got >= BIG) {
		b->done = 1;
		return;
	}
	if (b->slow && before / (4u << 20) != b->got / (4u << 20)) {
		weft_timer_start(b->pause, 5, 0); /* every 4 MiB: a pause */
		return;
	}
	bulk_read(b);
}

static void bulk_read(struct bulk *b)
{
	weft_req *req = weft_stream_read_send(b->s, b->rbuf, b->rlen);
	weft_req_set_callback(req, bulk_read_cb, b);
}

static void bulk_resume(weft_timer *t, void *data)
{
	(void)t;
	bulk_read(data);
}

static void test_bulk_64mib_slow_reader(void)
{
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg(), *sc = server_cfg();
	weft_stream *c = NULL, *s = NULL;
	tls_pair(loop, cc, sc, "localhost", &c, &s);
	unsigned char *data = malloc(BIG);
	for (size_t i = 0; i < BIG; i++)
		data[i] = pattern(i);
	struct bulk rc = {.loop = loop, .s = c, .rlen = 3000, .ok = true, .slow = true};
	struct bulk rs = {.loop = loop, .s = s, .rlen = 65536, .ok = true};
	rc.rbuf = malloc(rc.rlen);
	rs.rbuf = malloc(rs.rlen);
	CHECK_EQ(weft_timer_new(loop, bulk_resume, &rc, &rc.pause), 0);
	struct done wc = {0}, ws = {0};
	struct iovec iov = {data, BIG};
	weft_req *w1 = weft_stream_writev_send(c, &iov, 1);
	weft_req_set_callback(w1, on_write, &wc);
	weft_req *w2 = weft_stream_writev_send(s, &iov, 1);
	weft_req_set_callback(w2, on_write, &ws);
	bulk_read(&rc);
	bulk_read(&rs);
	int all = 0;
	uint64_t end = t_now_ms() + 50000;
	while ((!rc.done || !rs.done || !wc.count || !ws.count) && t_now_ms() < end)
		t_run_until_count(loop, &all, 1, 100);
	CHECK_EQ(rc.got, BIG);
	CHECK_EQ(rs.got, BIG);
	CHECK(rc.ok && rs.ok);
	CHECK_EQ(wc.n, (ssize_t)BIG);
	CHECK_EQ(ws.n, (ssize_t)BIG);
	weft_timer_free(rc.pause);
	weft_stream_close(c, NULL, NULL);
	weft_stream_close(s, NULL, NULL);
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	free(data);
	free(rc.rbuf);
	free(rs.rbuf);
	t_loop_free(loop);
}

/* Records already received (decrypted, or still ciphertext in the
 * read-ahead) are delivered with no further socket readiness: the peer
 * sends everything at once and then nothing. */
struct pdus {
	size_t size;
	char buf[20000];
	struct iovec iov;
	int n, want;
	int done, err;
	bool ok;
};

static int pdu_next(weft_stream *s, void *data, const struct iovec **vec, size_t *count)
{
	struct pdus *p = data;
	(void)s;
	if (p->iov.iov_base != NULL) { /* one PDU in */
		for (size_t i = 0; i < p->size; i++)
			if (p->buf[i] != (char)('a' + p->n % 26))
				p->ok = false;
		p->n++;
	}
	if (p->n == p->want) {
		*count = 0;
		return 0;
	}
	p->iov.iov_base = p->buf;
	p->iov.iov_len = p->size;
	*vec = &p->iov;
	*count = 1;
	return 0;
}

static void pdus_cb(weft_req *req, void *data)
{
	struct pdus *p = data;
	int e = 0;
	weft_stream_readv_recv(req, &e);
	p->err = e;
	p->done = 1;
	weft_req_free(req);
}

static void check_pending_records(size_t size, int count)
{
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg(), *sc = server_cfg();
	weft_stream *c = NULL, *s = NULL;
	tls_pair(loop, cc, sc, "localhost", &c, &s);
	int ec, es;
	handshake2(loop, c, s, &ec, &es);
	CHECK_EQ(ec, 0);
	CHECK_EQ(es, 0);
	/* Each try_writev is one record; all sit in the socket before the
	 * client reads. */
	char *rec = malloc(size);
	for (int i = 0; i < count; i++) {
		memset(rec, 'a' + i % 26, size);
		struct iovec iov = {rec, size};
		CHECK_EQ(weft_stream_try_writev(s, &iov, 1), (ssize_t)size);
	}
	free(rec);
	struct pdus *p = calloc(1, sizeof(*p));
	p->size = size;
	p->want = count;
	p->ok = true;
	weft_req *req = weft_stream_readv_send(c, pdu_next, p);
	weft_req_set_callback(req, pdus_cb, p);
	CHECK(t_run_until_count(loop, &p->done, 1, 5000));
	CHECK_EQ(p->err, 0);
	CHECK_EQ(p->n, count);
	CHECK(p->ok);
	CHECK_EQ(weft_stream_pending(c), 0);
	free(p);
	weft_stream_close(c, NULL, NULL);
	weft_stream_close(s, NULL, NULL);
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	t_loop_free(loop);
}

static void test_pending_records(void)
{
	check_pending_records(10, 40);    /* small records, one segment */
	check_pending_records(12000, 2);  /* records larger than the stream's read-ahead */
	check_pending_records(1, 100);
}

/* Bad certificates: refused with a clear error. */
static void check_refused(const char *cert, const char *key, const char *name, int want_err, const char *text)
{
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg(), *sc = server_cfg_with(cert, key);
	weft_stream *c = NULL, *s = NULL;
	tls_pair(loop, cc, sc, name, &c, &s);
	int ec, es;
	handshake2(loop, c, s, &ec, &es);
	CHECK_EQ(ec, want_err);
	CHECK(es != 0);
	CHECK(strstr(weft_tls_error_text(c), text) != NULL);
	if (strstr(weft_tls_error_text(c), text) == NULL)
		printf("# error text: %s\n", weft_tls_error_text(c));
	CHECK(weft_tls_last_error(c) != 0);
	if (want_err != ECONNRESET)
		CHECK(weft_tls_verify_status(c) != 0);
	/* The failure sticks: I/O gets the same error. */
	CHECK_EQ(write_all(loop, c, "x", 1), want_err);
	weft_stream_close(c, NULL, NULL);
	weft_stream_close(s, NULL, NULL);
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	t_loop_free(loop);
}

static void test_bad_certificates(void)
{
	check_refused("evil.pem", "evil.key", "localhost", EKEYREJECTED, "NOT trusted");
	check_refused("srv.pem", "srv.key", "example.org", EKEYREJECTED, "does not match");
	check_refused("old.pem", "old.key", "localhost", EKEYEXPIRED, "expired");
	/* A certificate with the wrong key is refused when loaded. */
	weft_tls_config *sc = NULL;
	CHECK_EQ(weft_tls_config_new(WEFT_TLS_SERVER, &sc), 0);
	CHECK_EQ(weft_tls_config_add_cert_file(sc, P("srv.pem"), P("cli.key"), NULL), -EBADMSG);
	CHECK_EQ(weft_tls_config_add_cert_file(sc, P("nonexistent.pem"), P("cli.key"), NULL), -ENOENT);
	CHECK(weft_tls_config_last_error(sc) != 0);
	weft_stream *dummy = NULL;
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	weft_loop *loop = t_loop_new();
	weft_stream *raw = NULL;
	CHECK_EQ(weft_stream_new_socket(loop, sv[0], &raw), 0);
	CHECK_EQ(weft_tls_server_new(sc, raw, &dummy), -EINVAL); /* no certificate; raw is closed */
	close(sv[1]);
	weft_tls_config_unref(sc);
	t_loop_free(loop);
}

/* The peer dies mid-handshake and mid-record: ECONNRESET, never a hang. */
static void test_peer_dies(void)
{
	for (int phase = 0; phase < 2; phase++) {
		weft_loop *loop = t_loop_new();
		int sv[2];
		CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
		weft_tls_config *cc = client_cfg(), *sc = server_cfg();
		struct tr *cut = NULL;
		weft_stream *c = NULL, *s = NULL;
		CHECK_EQ(weft_tls_client_new(cc, tr_new(loop, sv[0], false, NULL), "localhost", &c), 0);
		CHECK_EQ(weft_tls_server_new(sc, tr_new(loop, sv[1], false, &cut), &s), 0);
		if (phase == 0)
			cut->limit = 60; /* inside the ServerHello */
		int ec, es;
		handshake2(loop, c, s, &ec, &es);
		if (phase == 0) {
			CHECK_EQ(ec, ECONNRESET);
			CHECK(es != 0);
		} else {
			CHECK_EQ(ec, 0);
			CHECK_EQ(es, 0);
			cut->limit = cut->written + 100; /* inside the next record */
			static char big[4000];
			struct iovec iov = {big, sizeof(big)};
			weft_req *w = weft_stream_writev_send(s, &iov, 1);
			struct done d = {0};
			weft_req_set_callback(w, on_write, &d);
			char buf[4000];
			CHECK_EQ(read_n(loop, c, buf, sizeof(buf), 5000), -ECONNRESET);
			/* The server's record was taken whole (GnuTLS queued it);
			 * flushing it failed, and the failure sticks. */
			t_run_until_count(loop, &d.count, 1, 5000);
			CHECK_EQ(write_all(loop, s, "x", 1), EPIPE);
		}
		weft_stream_close(c, NULL, NULL);
		weft_stream_close(s, NULL, NULL);
		weft_tls_config_unref(cc);
		weft_tls_config_unref(sc);
		t_loop_free(loop);
	}
}

/* A silent peer: the handshake request times out, the stream stays failed;
 * closing with a handshake pending cancels it. */
static void test_handshake_timeout_cancel(void)
{
	weft_loop *loop = t_loop_new();
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	weft_stream *raw = NULL;
	CHECK_EQ(weft_stream_new_socket(loop, sv[0], &raw), 0);
	weft_tls_config *cc = client_cfg();
	weft_stream *c = NULL;
	CHECK_EQ(weft_tls_client_new(cc, raw, "localhost", &c), 0);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(handshake(loop, c, 100), ETIMEDOUT);
	CHECK(t_now_ms() - t0 < 2000);
	CHECK_EQ(write_all(loop, c, "x", 1), ETIMEDOUT);
	weft_stream_close(c, NULL, NULL);
	close(sv[1]);

	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	CHECK_EQ(weft_stream_new_socket(loop, sv[0], &raw), 0);
	CHECK_EQ(weft_tls_client_new(cc, raw, "localhost", &c), 0);
	struct done d = {0};
	weft_req *req = weft_tls_handshake_send(c);
	weft_req_set_callback(req, on_simple, &d);
	weft_loop_run(loop, WEFT_RUN_NOWAIT);
	weft_stream_close(c, NULL, NULL);
	CHECK(t_run_until_count(loop, &d.count, 1, 2000));
	CHECK_EQ(d.err, ECANCELED);
	close(sv[1]);
	weft_tls_config_unref(cc);
	t_loop_free(loop);
}

/* Resumption with tickets (TLS 1.3 and 1.2), ALPN, SNI, client certificates. */
static void resume_round(const char *prio)
{
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg(), *sc = server_cfg();
	if (prio)
		CHECK_EQ(weft_tls_config_set_priority(cc, prio), 0);
	void *data = NULL;
	size_t len = 0;
	for (int round = 0; round < 2; round++) {
		weft_stream *c = NULL, *s = NULL;
		tls_pair(loop, cc, sc, "localhost", &c, &s);
		if (round == 1)
			CHECK_EQ(weft_tls_set_session_data(c, data, len), 0);
		int ec, es;
		handshake2(loop, c, s, &ec, &es);
		CHECK_EQ(ec, 0);
		CHECK_EQ(es, 0);
		CHECK_EQ(weft_tls_resumed(c), round == 1);
		CHECK_EQ(weft_tls_resumed(s), round == 1);
		CHECK_EQ(write_all(loop, s, "hi", 2), 0);
		char buf[2];
		ssize_t got = read_n(loop, c, buf, 2, 5000);
		CHECK_EQ(got, 2);
		if (got != 2)
			printf("# round %d, %s: read %zd\n", round, prio ? prio : "default", got);
		if (round == 0) {
			CHECK_EQ(weft_tls_session_data(c, &data, &len), 0);
			CHECK(len > 0);
		}
		weft_stream_close(c, NULL, NULL);
		weft_stream_close(s, NULL, NULL);
	}
	free(data);
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	t_loop_free(loop);
}

static void test_resumption(void)
{
	resume_round(NULL);
	resume_round("NORMAL:-VERS-ALL:+VERS-TLS1.2");
}

static void test_alpn_sni_client_cert(void)
{
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg(), *sc = server_cfg();
	const char *offer[] = {"h2", "weft/1"};
	const char *accept[] = {"weft/1", "x"};
	CHECK_EQ(weft_tls_config_set_alpn(cc, offer, 2), 0);
	CHECK_EQ(weft_tls_config_set_alpn(sc, accept, 2), 0);
	CHECK_EQ(weft_tls_config_add_cert_file(cc, P("cli.pem"), P("cli.key"), NULL), 0);
	CHECK_EQ(weft_tls_config_add_ca_file(sc, P("ca.pem")), 1);
	CHECK_EQ(weft_tls_config_set_client_auth(sc, WEFT_TLS_CLIENT_AUTH_REQUIRE), 0);
	weft_stream *c = NULL, *s = NULL;
	tls_pair(loop, cc, sc, "localhost", &c, &s);
	int ec, es;
	handshake2(loop, c, s, &ec, &es);
	CHECK_EQ(ec, 0);
	CHECK_EQ(es, 0);
	const char *p = NULL;
	size_t n = 0;
	CHECK_EQ(weft_tls_alpn(c, &p, &n), 0);
	CHECK(n == 6 && memcmp(p, "weft/1", 6) == 0);
	CHECK_EQ(weft_tls_alpn(s, &p, &n), 0);
	CHECK(n == 6 && memcmp(p, "weft/1", 6) == 0);
	char name[64];
	CHECK_EQ(weft_tls_server_name(s, name, sizeof(name)), 9);
	CHECK(strcmp(name, "localhost") == 0);
	char *dn = NULL;
	CHECK_EQ(weft_tls_peer_dn(s, &dn), 0);
	CHECK(dn && strstr(dn, "CN=client 1") && strstr(dn, "O=weft"));
	free(dn);
	char *desc = weft_tls_description(c);
	CHECK(desc && strstr(desc, "TLS1.3"));
	free(desc);
	CHECK(weft_tls_gnutls_session(c) != NULL);
	weft_stream_close(c, NULL, NULL);
	weft_stream_close(s, NULL, NULL);

	/* No common protocol: refused. */
	const char *other[] = {"h2"};
	CHECK_EQ(weft_tls_config_set_alpn(cc, other, 1), 0);
	tls_pair(loop, cc, sc, "localhost", &c, &s);
	handshake2(loop, c, s, &ec, &es);
	CHECK(ec != 0);
	CHECK(es != 0);
	weft_stream_close(c, NULL, NULL);
	weft_stream_close(s, NULL, NULL);

	/* The required certificate missing: the server refuses. */
	weft_tls_config *cc2 = client_cfg();
	CHECK_EQ(weft_tls_config_set_alpn(sc, NULL, 0), 0);
	tls_pair(loop, cc2, sc, "localhost", &c, &s);
	handshake2(loop, c, s, &ec, &es);
	CHECK_EQ(es, EKEYREJECTED);
	weft_stream_close(c, NULL, NULL);
	weft_stream_close(s, NULL, NULL);
	/* Requested only: fine without one. */
	CHECK_EQ(weft_tls_config_set_client_auth(sc, WEFT_TLS_CLIENT_AUTH_REQUEST), 0);
	tls_pair(loop, cc2, sc, "localhost", &c, &s);
	handshake2(loop, c, s, &ec, &es);
	CHECK_EQ(ec, 0);
	CHECK_EQ(es, 0);
	CHECK_EQ(weft_tls_peer_dn(s, &dn), -ENOENT);
	weft_stream_close(c, NULL, NULL);
	weft_stream_close(s, NULL, NULL);

	weft_tls_config_unref(cc2);
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	t_loop_free(loop);
}

/* A server with two certificates picks the one the client names (SNI). */
static void test_sni_cert_selection(void)
{
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg(), *sc = server_cfg();
	CHECK_EQ(weft_tls_config_add_cert_file(sc, P("other.pem"), P("other.key"), NULL), 0);
	const char *names[] = {"other.example", "localhost"};
	for (int i = 0; i < 2; i++) {
		weft_stream *c = NULL, *s = NULL;
		tls_pair(loop, cc, sc, names[i], &c, &s);
		int ec, es;
		handshake2(loop, c, s, &ec, &es);
		CHECK_EQ(ec, 0);
		CHECK_EQ(es, 0);
		char *dn = NULL;
		CHECK_EQ(weft_tls_peer_dn(c, &dn), 0);
		char want[64];
		snprintf(want, sizeof(want), "CN=%s", names[i]);
		CHECK(dn && strstr(dn, want));
		free(dn);
		weft_stream_close(c, NULL, NULL);
		weft_stream_close(s, NULL, NULL);
	}
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	t_loop_free(loop);
}

/* weft_req_cancel on the only handshake request abandons the handshake. */
static void test_handshake_cancel(void)
{
	weft_loop *loop = t_loop_new();
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	weft_stream *raw = NULL, *c = NULL;
	CHECK_EQ(weft_stream_new_socket(loop, sv[0], &raw), 0);
	weft_tls_config *cc = client_cfg();
	CHECK_EQ(weft_tls_client_new(cc, raw, "localhost", &c), 0);
	struct done d = {0};
	weft_req *req = weft_tls_handshake_send(c);
	weft_req_set_callback(req, on_simple, &d);
	weft_loop_run(loop, WEFT_RUN_NOWAIT);
	CHECK_EQ(weft_req_cancel(req), 0);
	CHECK(t_run_until_count(loop, &d.count, 1, 2000));
	CHECK_EQ(d.err, ECANCELED);
	CHECK_EQ(handshake(loop, c, 0), ECANCELED);
	weft_stream_close(c, NULL, NULL);
	close(sv[1]);
	weft_tls_config_unref(cc);
	t_loop_free(loop);
}

/* Credentials and trust from memory instead of files. */
static char *slurp(const char *name, size_t *len)
{
	FILE *f = fopen(P(name), "rb");
	if (f == NULL)
		return NULL;
	char *buf = calloc(1, 65536);
	*len = fread(buf, 1, 65535, f);
	fclose(f);
	return buf;
}

static void test_credentials_from_memory(void)
{
	size_t lc, lk, la;
	char *crt = slurp("srv.pem", &lc), *key = slurp("srv.key", &lk), *ca = slurp("ca.pem", &la);
	REQUIRE(crt && key && ca);
	weft_tls_config *cc = NULL, *sc = NULL;
	CHECK_EQ(weft_tls_config_new(WEFT_TLS_CLIENT, &cc), 0);
	CHECK_EQ(weft_tls_config_new(WEFT_TLS_SERVER, &sc), 0);
	CHECK_EQ(weft_tls_config_add_ca_mem(cc, ca, la), 1);
	CHECK_EQ(weft_tls_config_add_cert_mem(sc, crt, lc, key, lk, NULL), 0);
	CHECK_EQ(weft_tls_config_add_cert_mem(sc, crt, lc, "garbage", 7, NULL), -EBADMSG);
	weft_loop *loop = t_loop_new();
	weft_stream *c = NULL, *s = NULL;
	tls_pair(loop, cc, sc, "localhost", &c, &s);
	int ec, es;
	handshake2(loop, c, s, &ec, &es);
	CHECK_EQ(ec, 0);
	CHECK_EQ(es, 0);
	weft_stream_close(c, NULL, NULL);
	weft_stream_close(s, NULL, NULL);
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	free(crt);
	free(key);
	free(ca);
	t_loop_free(loop);
}

/* The server name is copied: the caller may free its string at once
 * (GnuTLS's verification keeps a pointer to the name; ASan would see a use
 * after free).  Also for DTLS. */
static void test_server_name_copied(void)
{
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg(), *sc = server_cfg();
	weft_stream *a, *b, *c = NULL, *s = NULL;
	stream_pair(loop, &a, &b);
	char *name = strdup("localhost");
	CHECK_EQ(weft_tls_client_new(cc, a, name, &c), 0);
	memset(name, 'x', 9);
	free(name);
	CHECK_EQ(weft_tls_server_new(sc, b, &s), 0);
	int ec, es;
	handshake2(loop, c, s, &ec, &es);
	CHECK_EQ(ec, 0);
	CHECK_EQ(es, 0);
	weft_stream_close(c, NULL, NULL);
	weft_stream_close(s, NULL, NULL);
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	t_loop_free(loop);
}

/* Close right after writing into a full socket: the record GnuTLS holds
 * and close_notify still go out (the session lingers), so the peer reads
 * every byte and then the clean end; and lingering is bounded. */
static size_t fill_until_full(weft_stream *c)
{
	static char chunk[16384];
	size_t total = 0;
	for (int i = 0; i < 4096; i++) {
		for (size_t k = 0; k < sizeof(chunk); k++)
			chunk[k] = (char)pattern(total + k);
		struct iovec iov = {chunk, sizeof(chunk)};
		ssize_t w = weft_stream_try_writev(c, &iov, 1);
		if (w <= 0)
			break;
		total += (size_t)w;
		if ((size_t)w < sizeof(chunk))
			break;
	}
	return total;
}

static void test_close_lingers(void)
{
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg(), *sc = server_cfg();
	weft_stream *c = NULL, *s = NULL;
	tls_pair(loop, cc, sc, "localhost", &c, &s);
	int ec, es;
	handshake2(loop, c, s, &ec, &es);
	CHECK_EQ(ec, 0);
	CHECK_EQ(es, 0);
	size_t total = fill_until_full(c);
	CHECK(total > 0);
	weft_stream_close(c, NULL, NULL); /* the last record is still inside GnuTLS */
	unsigned char *buf = malloc(total + 1);
	CHECK_EQ(read_n(loop, s, (char *)buf, total, 10000), (ssize_t)total);
	bool same = true;
	for (size_t i = 0; i < total; i++)
		if (buf[i] != pattern(i))
			same = false;
	CHECK(same);
	free(buf);
	char x;
	CHECK_EQ(read_n(loop, s, &x, 1, 5000), -EPIPE); /* close_notify, not a reset */
	weft_stream_close(s, NULL, NULL);

	/* The bound: a peer that never reads; after the close timeout the
	 * client's socket is closed anyway. */
	CHECK_EQ(weft_tls_config_set_close_timeout(cc, 100), 0);
	tls_pair(loop, cc, sc, "localhost", &c, &s);
	handshake2(loop, c, s, &ec, &es);
	CHECK_EQ(ec, 0);
	fill_until_full(c);
	int fds = t_fd_count();
	weft_stream_close(c, NULL, NULL);
	weft_loop_run(loop, WEFT_RUN_NOWAIT);
	CHECK_EQ(t_fd_count(), fds); /* still lingering */
	int none = 0;
	t_run_until_count(loop, &none, 1, 300);
	CHECK_EQ(t_fd_count(), fds - 1);
	weft_stream_close(s, NULL, NULL);
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	t_loop_free(loop);
}

/* TLS 1.3 KeyUpdate with update_requested: the client's read must write
 * its own KeyUpdate (a read that needs the write direction); data goes on
 * both ways with the new keys.  The update is started through the GnuTLS
 * session handle. */
static void test_key_update(void)
{
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg(), *sc = server_cfg();
	weft_stream *c = NULL, *s = NULL;
	tls_pair(loop, cc, sc, "localhost", &c, &s);
	int ec, es;
	handshake2(loop, c, s, &ec, &es);
	CHECK_EQ(ec, 0);
	CHECK_EQ(es, 0);
	for (int round = 0; round < 3; round++) {
		CHECK_EQ(gnutls_session_key_update(weft_tls_gnutls_session(s), GNUTLS_KU_PEER), 0);
		CHECK_EQ(write_all(loop, s, "after update", 12), 0);
		char buf[16] = {0};
		CHECK_EQ(read_n(loop, c, buf, 12, 5000), 12);
		CHECK(strcmp(buf, "after update") == 0);
		CHECK_EQ(write_all(loop, c, "reply", 5), 0);
		memset(buf, 0, sizeof(buf));
		CHECK_EQ(read_n(loop, s, buf, 5, 5000), 5);
		CHECK(strcmp(buf, "reply") == 0);
	}
	weft_stream_close(c, NULL, NULL);
	weft_stream_close(s, NULL, NULL);
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	t_loop_free(loop);
}

static void test_api_errors(void)
{
	weft_tls_config *c = NULL;
	CHECK_EQ(weft_tls_config_new(0, &c), -EINVAL);
	CHECK_EQ(weft_tls_config_new(WEFT_TLS_CLIENT, &c), 0);
	CHECK_EQ(weft_tls_config_set_priority(c, "NORMAL:+NOPE-NOT-A-THING"), -EINVAL);
	CHECK_EQ(weft_tls_config_set_client_auth(c, WEFT_TLS_CLIENT_AUTH_REQUIRE), -EINVAL);
	CHECK_EQ(weft_tls_config_set_tickets(c, false), -EINVAL);
	const char *empty[] = {""};
	CHECK_EQ(weft_tls_config_set_alpn(c, empty, 1), -EINVAL);
	CHECK_EQ(weft_tls_config_add_ca_file(c, P("srv.key")), -EBADMSG);
	weft_loop *loop = t_loop_new();
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	weft_stream *raw = NULL, *t = NULL;
	CHECK_EQ(weft_stream_new_socket(loop, sv[0], &raw), 0);
	CHECK_EQ(weft_tls_client_new(c, raw, NULL, &t), -EINVAL); /* full verification needs a name */
	CHECK_EQ(weft_stream_new_socket(loop, sv[1], &raw), 0);
	CHECK(!weft_tls_is_tls(raw));
	weft_req *req = weft_tls_handshake_send(raw);
	CHECK(req != NULL);
	CHECK_EQ(weft_req_wait(req), 0);
	CHECK_EQ(weft_tls_handshake_recv(req, NULL), -EINVAL);
	weft_req_free(req);
	weft_stream_close(raw, NULL, NULL);
	weft_tls_config_unref(c);
	t_loop_free(loop);
}

/* Writes queued before the handshake go out after it, in order; TLS over
 * TLS (the inner stream is itself a TLS stream). */
static void test_queued_writes_nested(void)
{
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg(), *sc = server_cfg();
	weft_stream *c1 = NULL, *s1 = NULL, *c = NULL, *s = NULL;
	tls_pair(loop, cc, sc, "localhost", &c1, &s1);
	CHECK_EQ(weft_tls_client_new(cc, c1, "localhost", &c), 0);
	CHECK_EQ(weft_tls_server_new(sc, s1, &s), 0);
	static const char *parts[] = {"one ", "two ", "three"};
	struct done d[3] = {{0}};
	for (int i = 0; i < 3; i++) {
		struct iovec iov = {(void *)parts[i], strlen(parts[i])};
		weft_req *w = weft_stream_writev_queue_send(c, NULL, &iov, 1);
		weft_req_set_callback(w, on_write, &d[i]);
	}
	CHECK_EQ(weft_stream_write_queue_length(c), 3);
	char back[32] = {0};
	CHECK_EQ(read_n(loop, s, back, 13, 10000), 13);
	CHECK(strcmp(back, "one two three") == 0);
	for (int i = 0; i < 3; i++)
		CHECK_EQ(d[i].n, (ssize_t)strlen(parts[i]));
	CHECK(weft_tls_is_tls(c) && weft_tls_version(c) != NULL);
	weft_stream_close(c, NULL, NULL); /* closes c1 too */
	weft_stream_close(s, NULL, NULL);
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	t_loop_free(loop);
}

/* Closing a TLS stream from inside its own callbacks. */
struct closer {
	weft_stream *s;
	int count;
	int err;
	char buf[64];
};

static void close_in_hs(weft_req *req, void *data)
{
	struct closer *c = data;
	int e = 0;
	weft_tls_handshake_recv(req, &e);
	c->err = e;
	weft_req_free(req);
	weft_stream_close(c->s, NULL, NULL);
	c->count++;
}

static void close_in_read(weft_req *req, void *data)
{
	struct closer *c = data;
	int e = 0;
	(void)weft_stream_read_recv(req, &e);
	c->err = e;
	weft_req_free(req);
	weft_stream_close(c->s, NULL, NULL);
	c->count++;
}

static void test_close_in_callbacks(void)
{
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg(), *sc = server_cfg();
	weft_stream *c = NULL, *s = NULL;
	tls_pair(loop, cc, sc, "localhost", &c, &s);
	/* The server closes from its handshake callback, while a read is
	 * pending on it; the client then reads the end (or a reset). */
	struct closer srv = {.s = s}, cli = {.s = c};
	weft_req *h = weft_tls_handshake_send(s);
	weft_req_set_callback(h, close_in_hs, &srv);
	struct xfer *x = calloc(1, sizeof(*x));
	weft_req *r = weft_stream_read_send(s, x->buf, sizeof(x->buf));
	weft_req_set_callback(r, on_read, x);
	weft_req *rc = weft_stream_read_send(c, cli.buf, sizeof(cli.buf));
	weft_req_set_callback(rc, close_in_read, &cli);
	int both = 0;
	uint64_t end = t_now_ms() + 5000;
	while ((srv.count == 0 || cli.count == 0 || x->count == 0) && t_now_ms() < end)
		t_run_until_count(loop, &both, 1, 20);
	CHECK_EQ(srv.count, 1);
	CHECK_EQ(srv.err, 0);
	CHECK_EQ(x->err, ECANCELED);
	CHECK_EQ(cli.count, 1);
	CHECK(cli.err == EPIPE || cli.err == ECONNRESET);
	free(x);
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	t_loop_free(loop);
}

/* The whole exchange on an external-backend loop driven by poll(2) here:
 * weft names the fds and the timeout, this code reports readiness. */
#define EXT_MAXFD 1024
struct extl {
	unsigned events[EXT_MAXFD];
	int64_t timer_ms;
	uint64_t timer_at;
};

static int extl_watch(weft_loop *loop, int fd, unsigned events, void *fd_data, void *user)
{
	struct extl *e = user;
	(void)loop;
	(void)fd_data;
	if (fd < 0 || fd >= EXT_MAXFD)
		return -EINVAL;
	e->events[fd] = events;
	return 0;
}

static void extl_timer(weft_loop *loop, int64_t ms, void *user)
{
	struct extl *e = user;
	(void)loop;
	e->timer_ms = ms;
	e->timer_at = t_now_ms() + (ms > 0 ? (uint64_t)ms : 0);
}

static void extl_iterate(weft_loop *loop, struct extl *e)
{
	struct pollfd pfd[64];
	int n = 0;
	for (int fd = 0; fd < EXT_MAXFD && n < 64; fd++)
		if (e->events[fd]) {
			pfd[n].fd = fd;
			pfd[n].events = (short)(((e->events[fd] & WEFT_IO_READ) ? POLLIN : 0) |
					((e->events[fd] & WEFT_IO_WRITE) ? POLLOUT : 0));
			n++;
		}
	int timeout = 50;
	if (e->timer_ms >= 0) {
		uint64_t now = t_now_ms();
		timeout = e->timer_at <= now ? 0 : (int)(e->timer_at - now);
		if (timeout > 50)
			timeout = 50;
	}
	int r = poll(pfd, (nfds_t)n, timeout);
	for (int i = 0; i < n && r > 0; i++) {
		unsigned rev = 0;
		if (pfd[i].revents & POLLIN)
			rev |= WEFT_IO_READ;
		if (pfd[i].revents & POLLOUT)
			rev |= WEFT_IO_WRITE;
		if (pfd[i].revents & POLLERR)
			rev |= WEFT_IO_ERR;
		if (pfd[i].revents & POLLHUP)
			rev |= WEFT_IO_HUP;
		if (rev)
			weft_loop_process_fd(loop, pfd[i].fd, rev);
	}
	if (e->timer_ms >= 0 && t_now_ms() >= e->timer_at)
		weft_loop_process_timeout(loop);
}

static void test_external_loop(void)
{
	struct extl *e = calloc(1, sizeof(*e));
	e->timer_ms = -1;
	weft_loop_ops ops = {.watch = extl_watch, .timer = extl_timer};
	weft_loop *loop = NULL;
	CHECK_EQ(weft_loop_new_external(&ops, e, &loop), 0);
	unsigned own[EXT_MAXFD]; /* the loop's own fds (its wake-up eventfd) */
	memcpy(own, e->events, sizeof(own));
	weft_tls_config *cc = client_cfg(), *sc = server_cfg();
	weft_stream *c = NULL, *s = NULL;
	tls_pair(loop, cc, sc, "localhost", &c, &s);
	struct done hc = {0}, hs = {0}, w = {0};
	weft_req *r = weft_tls_handshake_send(c);
	weft_req_set_callback(r, on_simple, &hc);
	r = weft_tls_handshake_send(s);
	weft_req_set_callback(r, on_simple, &hs);
	static char big[300000];
	memset(big, 'e', sizeof(big));
	struct iovec iov = {big, sizeof(big)};
	r = weft_stream_writev_send(c, &iov, 1);
	weft_req_set_callback(r, on_write, &w);
	size_t got = 0;
	struct xfer *x = calloc(1, sizeof(*x));
	uint64_t end = t_now_ms() + 10000;
	while (got < sizeof(big) && t_now_ms() < end) {
		x->count = 0;
		r = weft_stream_read_send(s, x->buf, sizeof(x->buf));
		weft_req_set_callback(r, on_read, x);
		while (x->count == 0 && t_now_ms() < end)
			extl_iterate(loop, e);
		if (x->n <= 0)
			break;
		got += (size_t)x->n;
	}
	CHECK_EQ(hc.err, 0);
	CHECK_EQ(hs.err, 0);
	CHECK_EQ(got, sizeof(big));
	CHECK_EQ(w.n, (ssize_t)sizeof(big));
	free(x);
	weft_stream_close(c, NULL, NULL);
	weft_stream_close(s, NULL, NULL);
	for (int i = 0; i < 10; i++)
		extl_iterate(loop, e);
	int watched = 0;
	for (int fd = 0; fd < EXT_MAXFD; fd++)
		if (e->events[fd] != own[fd]) {
			watched++;
			printf("# fd %d still watched (%u)\n", fd, e->events[fd]);
		}
	CHECK_EQ(watched, 0);
	CHECK_EQ(weft_loop_free(loop), 0);
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	free(e);
}

/* ---- DTLS ------------------------------------------------------------------------- */

/* A lossy UDP proxy: client -> proxy socket -> upstream socket -> server,
 * dropping the datagrams whose numbers (from 1, per direction) are listed. */
struct proxy {
	int down, up; /* down: faces the client; up: connected to the server */
	weft_io *dio, *uio;
	struct sockaddr_storage client;
	socklen_t client_len;
	unsigned n_c2s, n_s2c, dropped;
	const unsigned *drop_c2s, *drop_s2c;
};

static bool listed(const unsigned *list, unsigned n)
{
	for (; list && *list; list++)
		if (*list == n)
			return true;
	return false;
}

static void proxy_down(weft_io *io, unsigned revents, void *data)
{
	struct proxy *p = data;
	(void)io;
	(void)revents;
	char buf[65536];
	p->client_len = sizeof(p->client);
	ssize_t n = recvfrom(p->down, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&p->client, &p->client_len);
	if (n < 0)
		return;
	if (listed(p->drop_c2s, ++p->n_c2s)) {
		p->dropped++;
		return;
	}
	(void)send(p->up, buf, (size_t)n, MSG_DONTWAIT);
}

static void proxy_up(weft_io *io, unsigned revents, void *data)
{
	struct proxy *p = data;
	(void)io;
	(void)revents;
	char buf[65536];
	ssize_t n = recv(p->up, buf, sizeof(buf), MSG_DONTWAIT);
	if (n < 0 || p->client_len == 0)
		return;
	if (listed(p->drop_s2c, ++p->n_s2c)) {
		p->dropped++;
		return;
	}
	(void)sendto(p->down, buf, (size_t)n, MSG_DONTWAIT, (struct sockaddr *)&p->client, p->client_len);
}

static int udp_bound(struct sockaddr_in *ret)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	CHECK_EQ(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	CHECK_EQ(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	*ret = a;
	return fd;
}

static void addr_text(const struct sockaddr_in *a, char *buf, size_t size)
{
	char ip[32];
	inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
	snprintf(buf, size, "udp:%s:%d", ip, ntohs(a->sin_port));
}

struct dreq {
	int count, err;
	ssize_t n;
	uint8_t *buf;
};

static void on_dtls_hs(weft_req *req, void *data)
{
	struct dreq *d = data;
	int e = 0;
	weft_dtls_handshake_recv(req, &e);
	d->err = e;
	d->count++;
	weft_req_free(req);
}

static void on_dtls_recv(weft_req *req, void *data)
{
	struct dreq *d = data;
	int e = 0;
	d->n = weft_dtls_recv_recv(req, &d->buf, &e);
	d->err = e;
	d->count++;
	weft_req_free(req);
}

static void on_dtls_send(weft_req *req, void *data)
{
	struct dreq *d = data;
	int e = 0;
	d->n = weft_dtls_send_recv(req, &e);
	d->err = e;
	d->count++;
	weft_req_free(req);
}

static void dtls_round(const unsigned *drop_c2s, const unsigned *drop_s2c, bool expect_drops)
{
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg(), *sc = server_cfg();
	CHECK_EQ(weft_tls_config_set_dtls_timeouts(cc, 40, 10000), 0);
	CHECK_EQ(weft_tls_config_set_dtls_timeouts(sc, 40, 10000), 0);
	/* The server: an unconnected socket (cookie exchange). */
	weft_addr any;
	CHECK_EQ(weft_addr_parse("udp:127.0.0.1:0", &any), 0);
	weft_dgram *sd = NULL;
	CHECK_EQ(weft_dgram_open(loop, &any, NULL, &sd), 0);
	weft_addr saddr;
	CHECK_EQ(weft_dgram_local_addr(sd, &saddr), 0);
	/* The proxy. */
	struct proxy px = {.drop_c2s = drop_c2s, .drop_s2c = drop_s2c};
	struct sockaddr_in pa, ua;
	px.down = udp_bound(&pa);
	px.up = udp_bound(&ua);
	CHECK_EQ(connect(px.up, &saddr.u.sa, saddr.len), 0);
	CHECK_EQ(weft_io_new(loop, px.down, proxy_down, &px, &px.dio), 0);
	CHECK_EQ(weft_io_new(loop, px.up, proxy_up, &px, &px.uio), 0);
	CHECK_EQ(weft_io_start(px.dio, WEFT_IO_READ), 0);
	CHECK_EQ(weft_io_start(px.uio, WEFT_IO_READ), 0);
	/* The client, connected to the proxy. */
	char text[64];
	addr_text(&pa, text, sizeof(text));
	weft_addr paddr;
	CHECK_EQ(weft_addr_parse(text, &paddr), 0);
	weft_dgram *cd = NULL;
	CHECK_EQ(weft_dgram_open(loop, NULL, &paddr, &cd), 0);
	weft_dtls *c = NULL, *s = NULL;
	CHECK_EQ(weft_dtls_client_new(cc, cd, "localhost", &c), 0);
	CHECK_EQ(weft_dtls_server_new(sc, sd, &s), 0);
	CHECK_EQ(weft_dtls_set_mtu(c, 1400), 0);
	struct dreq hc = {0}, hs = {0};
	weft_req *r1 = weft_dtls_handshake_send(c);
	weft_req_set_callback(r1, on_dtls_hs, &hc);
	weft_req *r2 = weft_dtls_handshake_send(s);
	weft_req_set_callback(r2, on_dtls_hs, &hs);
	int all = 0;
	uint64_t end = t_now_ms() + 15000;
	while ((!hc.count || !hs.count) && t_now_ms() < end)
		t_run_until_count(loop, &all, 1, 50);
	CHECK_EQ(hc.count, 1);
	CHECK_EQ(hs.count, 1);
	CHECK_EQ(hc.err, 0);
	CHECK_EQ(hs.err, 0);
	if (hc.err)
		printf("# client: %s\n", weft_dtls_error_text(c));
	if (hs.err)
		printf("# server: %s\n", weft_dtls_error_text(s));
	CHECK(weft_dtls_version(c) && strcmp(weft_dtls_version(c), "DTLS1.2") == 0);
	CHECK(weft_dtls_data_mtu(c) > 1000 && weft_dtls_data_mtu(c) < 1400);
	if (expect_drops)
		CHECK(px.dropped > 0);
	/* Records both ways (loss-free from here: the lists are exhausted). */
	struct dreq rs = {0}, rc = {0}, ss = {0}, sc2 = {0};
	weft_req *q = weft_dtls_recv_send(s);
	weft_req_set_callback(q, on_dtls_recv, &rs);
	q = weft_dtls_send_send(c, "ping", 4);
	weft_req_set_callback(q, on_dtls_send, &ss);
	CHECK(t_run_until_count(loop, &rs.count, 1, 5000));
	CHECK_EQ(rs.n, 4);
	CHECK(rs.buf && memcmp(rs.buf, "ping", 4) == 0);
	free(rs.buf);
	CHECK_EQ(ss.n, 4);
	q = weft_dtls_recv_send(c);
	weft_req_set_callback(q, on_dtls_recv, &rc);
	q = weft_dtls_send_send(s, "pong!", 5);
	weft_req_set_callback(q, on_dtls_send, &sc2);
	CHECK(t_run_until_count(loop, &rc.count, 1, 5000));
	CHECK_EQ(rc.n, 5);
	CHECK(rc.buf && memcmp(rc.buf, "pong!", 5) == 0);
	free(rc.buf);
	/* Too large for the MTU: EMSGSIZE; a second receive: EBUSY. */
	static char big[2000];
	struct dreq e1 = {0};
	q = weft_dtls_send_send(c, big, sizeof(big));
	weft_req_set_callback(q, on_dtls_send, &e1);
	CHECK(t_run_until_count(loop, &e1.count, 1, 1000));
	CHECK_EQ(e1.err, EMSGSIZE);
	/* close: the peer's pending receive sees the close_notify (EPIPE). */
	struct dreq last = {0};
	q = weft_dtls_recv_send(s);
	weft_req_set_callback(q, on_dtls_recv, &last);
	weft_loop_run(loop, WEFT_RUN_NOWAIT);
	weft_dtls_close(c);
	CHECK(t_run_until_count(loop, &last.count, 1, 5000));
	CHECK_EQ(last.err, EPIPE);
	weft_dtls_close(s);
	weft_io_free(px.dio);
	weft_io_free(px.uio);
	close(px.down);
	close(px.up);
	weft_tls_config_unref(cc);
	weft_tls_config_unref(sc);
	t_loop_free(loop);
}

static void test_dtls_lossless(void)
{
	dtls_round(NULL, NULL, false);
}

static void test_dtls_lossy(void)
{
	static const unsigned c2s[] = {1, 3, 5, 6, 0};
	static const unsigned s2c[] = {1, 3, 4, 0};
	dtls_round(c2s, s2c, true);
}

static void test_dtls_gnutls_serv(void)
{
	if (!g_have_gnutls_bin) {
		printf("# skip: gnutls-serv not installed\n");
		return;
	}
	char portbuf[16];
	char *argv[] = {"gnutls-serv", "--udp", "--echo", "-p", portbuf, "--x509certfile", (char *)P("srv.pem"),
		"--x509keyfile", (char *)P("srv.key"), NULL};
	int port = -1;
	pid_t pid = -1;
	for (int attempt = 0; attempt < 3 && pid < 0; attempt++) {
		port = free_udp_port();
		snprintf(portbuf, sizeof(portbuf), "%d", port);
		pid = spawn(argv, NULL, P("serv-udp.out"));
		REQUIRE(pid > 0);
		uint64_t end = t_now_ms() + 10000;
		const char *out = NULL;
		bool died = false;
		while (t_now_ms() < end && !(died = waitpid(pid, NULL, WNOHANG) == pid) &&
		       ((out = read_file(P("serv-udp.out"))) == NULL || strstr(out, "listening") == NULL))
			t_sleep_ms(20);
		if (died || out == NULL || strstr(out, "listening") == NULL) {
			if (!died)
				kill_reap(pid);
			pid = -1;
		}
	}
	if (pid < 0) {
		CHECK(!"gnutls-serv --udp did not start");
		return;
	}
	weft_loop *loop = t_loop_new();
	weft_tls_config *cc = client_cfg();
	char text[64];
	snprintf(text, sizeof(text), "udp:127.0.0.1:%d", port);
	weft_addr a;
	CHECK_EQ(weft_addr_parse(text, &a), 0);
	weft_dgram *d = NULL;
	CHECK_EQ(weft_dgram_open(loop, NULL, &a, &d), 0);
	weft_dtls *c = NULL;
	CHECK_EQ(weft_dtls_client_new(cc, d, "localhost", &c), 0);
	struct dreq h = {0}, r = {0}, w = {0};
	weft_req *q = weft_dtls_handshake_send(c);
	weft_req_set_callback(q, on_dtls_hs, &h);
	CHECK(t_run_until_count(loop, &h.count, 1, 10000));
	CHECK_EQ(h.err, 0);
	q = weft_dtls_send_send(c, "datagram\n", 9);
	weft_req_set_callback(q, on_dtls_send, &w);
	q = weft_dtls_recv_send(c);
	weft_req_set_callback(q, on_dtls_recv, &r);
	CHECK(t_run_until_count(loop, &r.count, 1, 5000));
	CHECK_EQ(r.n, 9);
	CHECK(r.buf && memcmp(r.buf, "datagram\n", 9) == 0);
	free(r.buf);
	weft_dtls_close(c);
	weft_tls_config_unref(cc);
	t_loop_free(loop);
	kill_reap(pid);
}

/* gnutls-cli --udp against a weft DTLS server on an unconnected socket
 * (cookie exchange with a real client). */
static void test_dtls_server_gnutls_cli(void)
{
	if (!g_have_gnutls_bin) {
		printf("# skip: gnutls-cli not installed\n");
		return;
	}
	weft_loop *loop = t_loop_new();
	weft_tls_config *sc = server_cfg();
	weft_addr any;
	CHECK_EQ(weft_addr_parse("udp:127.0.0.1:0", &any), 0);
	weft_dgram *d = NULL;
	CHECK_EQ(weft_dgram_open(loop, &any, NULL, &d), 0);
	weft_addr bound;
	CHECK_EQ(weft_dgram_local_addr(d, &bound), 0);
	char port[16];
	snprintf(port, sizeof(port), "%d", weft_addr_port(&bound));
	weft_dtls *s = NULL;
	CHECK_EQ(weft_dtls_server_new(sc, d, &s), 0);
	struct dreq h = {0}, r = {0};
	weft_req *q = weft_dtls_handshake_send(s);
	weft_req_set_callback(q, on_dtls_hs, &h);
	write_file("udp-in.txt", "hello over DTLS\n");
	char *argv[] = {"gnutls-cli", "--udp", "--x509cafile", (char *)P("ca.pem"), "-p", port, "localhost", NULL};
	pid_t pid = spawn(argv, P("udp-in.txt"), P("cli-udp.out"));
	CHECK(t_run_until_count(loop, &h.count, 1, 10000));
	CHECK_EQ(h.err, 0);
	if (h.err == 0) {
		q = weft_dtls_recv_send(s);
		weft_req_set_callback(q, on_dtls_recv, &r);
		CHECK(t_run_until_count(loop, &r.count, 1, 10000));
		CHECK_EQ(r.n, 16);
		CHECK(r.buf && memcmp(r.buf, "hello over DTLS\n", 16) == 0);
		free(r.buf);
	}
	weft_dtls_close(s);
	reap(pid, 3000);
	weft_tls_config_unref(sc);
	t_loop_free(loop);
}

/* ---- main ------------------------------------------------------------------------- */

static void run(const char *name, void (*fn)(void))
{
	if (g_only != NULL && strstr(name, g_only) == NULL)
		return;
	uint64_t t0 = t_now_ms();
	t_run_watchdog(name, fn, 60);
	uint64_t dt = t_now_ms() - t0;
	if (dt > 2000)
		printf("# %s took %llu ms\n", name, (unsigned long long)dt);
}

int main(int argc, char **argv)
{
	g_only = argc > 1 ? argv[1] : NULL;
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	snprintf(g_dir, sizeof(g_dir), "/tmp/weft-tls-XXXXXX");
	if (mkdtemp(g_dir) == NULL) {
		printf("Bail out! mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	if (!have_program("certtool") || make_certificates() < 0) {
		printf("Bail out! certtool could not make the test certificates\n");
		sh("rm -rf %s", g_dir);
		return 1;
	}
	g_have_gnutls_bin = have_program("gnutls-serv") && have_program("gnutls-cli");
	g_have_openssl = have_program("openssl");

	run("peer: weft client vs gnutls-serv --echo (TLS 1.3, ALPN, verified, echo)", test_client_gnutls_serv);
	run("peer: weft client vs openssl s_server -rev (TLS 1.2, IP address check)", test_client_openssl_server);
	run("peer: gnutls-cli vs weft server (SNI, greeting, close_notify both ways)", test_gnutls_cli_client);
	run("peer: openssl s_client with a client certificate vs weft server (peer DN)", test_openssl_client_cert);
	run("peer: openssl s_client without the required certificate -> EKEYREJECTED", test_openssl_client_no_cert_refused);
	run("tls: handshake and data over a transport that delivers one byte per read", test_one_byte_transport);
	run("tls: over a pipe pair, handshake run by the first I/O, close_notify -> EPIPE", test_implicit_handshake_pipes);
	run("tls: 64 MiB each way at once, slow reader", test_bulk_64mib_slow_reader);
	run("tls: buffered records delivered without socket readiness", test_pending_records);
	run("tls: untrusted CA, wrong host name, expired -> EKEYREJECTED/EKEYEXPIRED; bad key", test_bad_certificates);
	run("tls: peer dies mid-handshake and mid-record -> ECONNRESET", test_peer_dies);
	run("tls: handshake timeout -> ETIMEDOUT (sticky); close -> ECANCELED", test_handshake_timeout_cancel);
	run("tls: session resumption with tickets, TLS 1.3 and 1.2", test_resumption);
	run("tls: ALPN, SNI, client certificates required/requested", test_alpn_sni_client_cert);
	run("tls: API errors", test_api_errors);
	run("tls: two server certificates, chosen by SNI", test_sni_cert_selection);
	run("tls: certificate, key and CA from memory", test_credentials_from_memory);
	run("tls: the server name is copied (freed by the caller before the handshake)", test_server_name_copied);
	run("tls: close into a full socket lingers: every byte and close_notify arrive; bounded", test_close_lingers);
	run("tls: TLS 1.3 KeyUpdate requested by the peer (a read that writes)", test_key_update);
	run("tls: canceling the handshake request -> ECANCELED (sticky)", test_handshake_cancel);
	run("tls: writes queued before the handshake, in order; TLS over TLS", test_queued_writes_nested);
	run("tls: close from the handshake and read callbacks", test_close_in_callbacks);
	run("tls: handshake and 300 KB on an external loop driven by poll(2)", test_external_loop);
	run("dtls: handshake with cookie exchange, records both ways, EMSGSIZE, close_notify", test_dtls_lossless);
	run("dtls: a lossy proxy drops flights; the handshake completes by retransmission", test_dtls_lossy);
	run("peer: weft DTLS client vs gnutls-serv --udp --echo", test_dtls_gnutls_serv);
	run("peer: gnutls-cli --udp vs weft DTLS server (cookie exchange)", test_dtls_server_gnutls_cli);

	sh("rm -rf %s", g_dir);
	return t_finish();
}
