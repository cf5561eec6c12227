/* test-assuan-interop — weft's Assuan server against libassuan 2.5's.
 *
 * The same scripted sessions run against a weft server and a libassuan
 * server that offer the same commands (peers.c), each in a child process
 * on one end of a socketpair.  What the server sent is recorded byte for
 * byte and the two transcripts must be identical, step by step:
 *
 *  1. a raw client (write() whole chunks, read() the answers) covers the
 *     built-ins, errors, escaping, long data, status lines, INQUIRE, CAN,
 *     descriptor passing, line-length limits and BYE;
 *  2. a client built on the real libassuan (assuan_socket_connect_fd,
 *     assuan_transact with data/inquire/status callbacks, raw
 *     assuan_write_line/assuan_read_line) talks through a recording proxy:
 *     both the bytes and what its callbacks saw must be identical;
 *  3. where issue 5 asks weft to do better than libassuan (a line
 *     pipelined behind a pending command — against libassuan's
 *     assuan_process_next server, which drops it —, over-long line,
 *     malformed % in INQUIRE data, INPUT FD=n naming a descriptor the peer
 *     never passed), weft's exact answer is asserted and libassuan's
 *     observed behaviour is checked and reported; so are two deliberate
 *     differences (status lines keep their order with an open D line; the
 *     INPUT descriptor is closed after the command that used it).
 *
 * Output is TAP: one line per compared step.
 */
#include "peers.h"

#include <assuan.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define READ_TIMEOUT_MS 5000
#define MAX_STEPS 256

/* ---- TAP --------------------------------------------------------------------- */

static int t_num, t_failed;

__attribute__((format(printf, 2, 3)))
static void tap(bool ok, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("%s %d - ", ok ? "ok" : "not ok", ++t_num);
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	fflush(stdout);
	if (!ok)
		t_failed++;
}

__attribute__((format(printf, 1, 2)))
static void diag(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("# ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	fflush(stdout);
}

__attribute__((format(printf, 1, 2), noreturn))
static void bail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("Bail out! ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	fflush(stdout);
	exit(2);
}

/* ---- buffers ------------------------------------------------------------------ */

struct sbuf {
	char *p;
	size_t len, cap;
};

static void sb_add(struct sbuf *b, const void *p, size_t n)
{
	if (b->cap - b->len < n + 1) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap - b->len < n + 1)
			cap *= 2;
		b->p = realloc(b->p, cap);
		if (b->p == NULL)
			bail("out of memory");
		b->cap = cap;
	}
	if (n > 0)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

/* Bytes as a printable string: \n ends a shown line, others as \xHH. */
static void sb_esc(struct sbuf *b, const void *p, size_t n)
{
	const unsigned char *s = p;
	for (size_t i = 0; i < n; i++) {
		char t[8];
		if (s[i] == '\n')
			snprintf(t, sizeof(t), "\\n");
		else if (s[i] == '\\')
			snprintf(t, sizeof(t), "\\\\");
		else if (s[i] >= 0x20 && s[i] < 0x7f)
			snprintf(t, sizeof(t), "%c", s[i]);
		else
			snprintf(t, sizeof(t), "\\x%02X", s[i]);
		sb_str(b, t);
	}
}

static void sb_free(struct sbuf *b)
{
	free(b->p);
	*b = (struct sbuf){0};
}

/* ---- the servers ------------------------------------------------------------------ */

enum kind { K_WEFT, K_LIBASSUAN, K_LIBASSUAN_NEXT };

#define MAX_CHILDREN 64
static pid_t children[MAX_CHILDREN];

static void on_alarm(int sig)
{
	static const char msg[] = "Bail out! watchdog: the interop test hangs\n";
	(void)sig;
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i] > 0)
			kill(children[i], SIGKILL);
	(void)!write(1, msg, sizeof(msg) - 1);
	_exit(2);
}

/* A server child on one end of a new socketpair; returns the other end. */
static int spawn(enum kind k, enum peer_hello hello, pid_t *ret_pid)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		bail("socketpair: %s", strerror(errno));
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		bail("fork: %s", strerror(errno));
	if (pid == 0) {
		close(sv[0]);
		alarm(60);
		if (k == K_WEFT)
			peer_run_weft(sv[1], hello);
		if (k == K_LIBASSUAN_NEXT)
			peer_run_libassuan_next(sv[1]);
		peer_run_libassuan(sv[1], hello);
	}
	close(sv[1]);
	for (int i = 0; i < MAX_CHILDREN; i++) {
		if (children[i] == 0) {
			children[i] = pid;
			break;
		}
	}
	*ret_pid = pid;
	return sv[0];
}

/* Wait for the child; true if it exited with status 0. */
static bool reap(pid_t pid)
{
	int st;
	pid_t r;
	while ((r = waitpid(pid, &st, 0)) < 0 && errno == EINTR)
		;
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i] == pid)
			children[i] = 0;
	if (r != pid)
		return false;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		diag("server child %d: %s %d", (int)pid, WIFEXITED(st) ? "exit status" : "signal",
				WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
		return false;
	}
	return true;
}

/* ---- the raw client ------------------------------------------------------------ */

static void write_all(int fd, const void *p, size_t n)
{
	const char *s = p;
	while (n > 0) {
		ssize_t w = write(fd, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return; /* the peer is gone: the transcript shows it */
		s += w;
		n -= (size_t)w;
	}
}

static bool is_terminal(const char *line, size_t n)
{
	if (n >= 2 && line[0] == 'O' && line[1] == 'K' && (n == 2 || line[2] == ' '))
		return true;
	if (n >= 4 && memcmp(line, "ERR ", 4) == 0)
		return true;
	return n >= 8 && memcmp(line, "INQUIRE ", 8) == 0;
}

/* Read server bytes into out until nterm answer lines (OK, ERR, INQUIRE)
 * have arrived, or with nterm < 0 until EOF.  Appends "<EOF>" or
 * "<TIMEOUT>" when they happen. */
static void read_answers(int fd, int nterm, struct sbuf *out)
{
	struct sbuf got = {0};
	size_t lstart = 0;
	int seen = 0;
	while (nterm < 0 || seen < nterm) {
		struct pollfd p = {fd, POLLIN, 0};
		int r = poll(&p, 1, READ_TIMEOUT_MS);
		if (r == 0) {
			sb_add(out, got.p, got.len);
			sb_str(out, "<TIMEOUT>");
			sb_free(&got);
			return;
		}
		char buf[4096];
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			sb_add(out, got.p, got.len);
			sb_str(out, n == 0 ? "<EOF>" : "<ERROR>");
			sb_free(&got);
			return;
		}
		sb_add(&got, buf, (size_t)n);
		char *nl;
		while ((nl = memchr(got.p + lstart, '\n', got.len - lstart)) != NULL) {
			size_t end = (size_t)(nl - got.p);
			if (is_terminal(got.p + lstart, end - lstart))
				seen++;
			lstart = end + 1;
		}
	}
	if (got.len > 0)
		sb_add(out, got.p, got.len);
	sb_free(&got);
}

/* A session's record: one transcript per step. */
struct rec {
	char name[96];
	struct sbuf text;
};

struct session {
	int fd;
	struct rec recs[MAX_STEPS];
	int n;
};

static struct rec *new_rec(struct session *s, const char *name)
{
	if (s->n == MAX_STEPS)
		bail("too many steps");
	struct rec *r = &s->recs[s->n++];
	snprintf(r->name, sizeof(r->name), "%s", name);
	r->text = (struct sbuf){0};
	return r;
}

/* Send bytes (if any) and read nterm answers; name starts a new step, NULL
 * continues the current one. */
static void xchg(struct session *s, const char *name, const void *p, size_t n, int nterm)
{
	struct rec *r = name ? new_rec(s, name) : &s->recs[s->n - 1];
	if (n > 0) {
		sb_str(&r->text, "C: ");
		sb_esc(&r->text, p, n);
		sb_str(&r->text, "\n");
		write_all(s->fd, p, n);
	}
	struct sbuf got = {0};
	read_answers(s->fd, nterm, &got);
	sb_str(&r->text, "S: ");
	sb_esc(&r->text, got.p, got.len);
	sb_str(&r->text, "\n");
	sb_free(&got);
	if (getenv("INTEROP_TRACE"))
		fprintf(stderr, "%s\n%s", r->name, r->text.p);
}

#define XS(s, name, lit, nterm) xchg(s, name, lit, sizeof(lit) - 1, nterm)

/* Pass fd with SCM_RIGHTS on libassuan's marker line. */
static void send_fd(int sock, int fd)
{
	char line[64];
	int n = snprintf(line, sizeof(line), "# descriptor %d is in flight\n", fd);
	struct iovec iov = {line, (size_t)n};
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} u;
	memset(&u, 0, sizeof(u));
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof(u.b)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &m, 0) != n)
		bail("sendmsg: %s", strerror(errno));
}

/* "D " lines for bytes, each byte escaped as %XX, 300 bytes a line. */
static void d_escape_all(struct sbuf *b, const unsigned char *p, size_t n, bool lower)
{
	for (size_t i = 0; i < n; i++) {
		char t[8];
		if (i % 300 == 0)
			sb_str(b, i ? "\nD " : "D ");
		snprintf(t, sizeof(t), lower ? "%%%02x" : "%%%02X", p[i]);
		sb_str(b, t);
	}
	sb_str(b, "\n");
}

/* The raw session: identical for both servers. */
static void raw_session(struct session *s)
{
	char big[4096];

	xchg(s, "greeting (custom hello, three lines)", NULL, 0, 1);
	XS(s, "NOP", "NOP\n", 1);
	XS(s, "nop (lower case) with CR LF", "nop\r\n", 1);
	XS(s, "comment and empty lines, then two NOPs in one write", "# comment\n\nNOP\nNOP\n", 2);
	XS(s, "NOP with CR CR LF", "NOP\r\r\n", 1);
	XS(s, "unknown command", "FOOBAR\n", 1);
	XS(s, "QUIT is not a command", "QUIT\n", 1);
	XS(s, "leading space", " NOP\n", 1);
	XS(s, "leading tab", "\tNOP\n", 1);
	XS(s, "control byte in the command", "NOP\x01\n", 1);
	XS(s, "NUL ends the command", "NOP\0ignored\n", 1);
	XS(s, "NOP with blanks and arguments", "NOP\t \targs here\n", 1);
	XS(s, "CANCEL", "CANCEL\n", 1);
	XS(s, "CANCEL with arguments", "CANCEL all\n", 1);
	XS(s, "AUTH", "AUTH\n", 1);
	XS(s, "END outside an inquiry", "END\n", 1);
	XS(s, "D line outside an inquiry", "D foo\n", 1);
	XS(s, "RESET", "RESET\n", 1);

	static const char *const options[] = {
		"OPTION", "OPTION ", "OPTION =x", "OPTION foo=", "OPTION foo = ", "OPTION -foo",
		"OPTION --foo=bar", "OPTION foo bar", "OPTION foo = bar  ", "OPTION  foo",
		"OPTION foo=b ", "OPTION foo b  ", "OPTION bad=1", "OPTION --", "OPTION ---x",
		"OPTION --a", "OPTION a=b=c", "OPTION\ta\tb", "option lower=case",
	};
	for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++) {
		char name[96];
		int n = snprintf(big, sizeof(big), "%s\nGETOPT\n", options[i]);
		snprintf(name, sizeof(name), "'%s' then GETOPT", options[i]);
		xchg(s, name, big, (size_t)n, 2);
	}

	XS(s, "HELP (list)", "HELP\n", 1);
	XS(s, "HELP NOP (built-in: no help text)", "HELP NOP\n", 1);
	XS(s, "HELP ECHO", "HELP ECHO\n", 1);
	XS(s, "HELP echo (lower case)", "HELP echo\n", 1);
	XS(s, "HELP FAIL (text not starting with the name)", "HELP FAIL\n", 1);
	XS(s, "HELP SLOW (no help text)", "HELP SLOW\n", 1);
	XS(s, "HELP with trailing blanks", "HELP ECHO  \n", 1);
	XS(s, "HELP unknown", "HELP NOSUCH\n", 1);

	XS(s, "handler error without text", "FAIL 1\n", 1);
	XS(s, "handler error with set_error text", "FAIL 99 the reason why\n", 1);
	XS(s, "handler error, Unknown command code", "FAIL 175 x\n", 1);
	XS(s, "handler error, system error code", "FAIL 32779 no room\n", 1);
	XS(s, "handler error code 0 is OK", "FAIL 0 ignored\n", 1);
	XS(s, "okay line", "OKAY fine, thank you\n", 1);
	XS(s, "okay line is reset after a command", "NOP\n", 1);

	XS(s, "ECHO (percent and CR escaped in D)", "ECHO a%b\rc\n", 1);
	XS(s, "ECHO nothing", "ECHO\n", 1);
	XS(s, "D escaping of all 256 byte values", "BYTES\n", 1);

	static const char *const specs[] = {
		"78*2500",                    /* 2500 plain bytes: three D lines */
		"78*996",                     /* exactly one full line */
		"78*997",
		"41*2 25*400",                /* escapes near the boundary */
		"41*1 25*400",
		"25*400",
		"78*995 25*1",                /* data ending with % at the boundary */
		"78*994 25*1",
		"78*993 25*1",
		"78*996 25*1",
		"78*995 0a*1 78*3",
		"78*993 25*1 78*5",
		"78*500 | 78*500",            /* two calls, one D stream */
		"78*500 / 78*500",            /* flushed between */
		"0a*1000",
		"0d*1 0a*1 00*3",
		"78*3000 / 25*2000 | 0d*1000 / 00*1",
	};
	for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
		char name[96];
		int n = snprintf(big, sizeof(big), "DATA %s\n", specs[i]);
		snprintf(name, sizeof(name), "D data %s", specs[i]);
		xchg(s, name, big, (size_t)n, 1);
	}
	XS(s, "status lines among D lines", "STATUS\n", 1);

	/* INQUIRE */
	XS(s, "INQUIRE with data and END", "INQ DATA 100\n", 1);
	XS(s, NULL, "D hello\nD %25%0A%0d world\nEND\n", 1);
	XS(s, "INQUIRE: comments, empty lines, lower-case d, END with text", "INQ DATA 100\n", 1);
	XS(s, NULL, "# comment\n\nd one\nD two\nEND trailing\n", 1);
	XS(s, "INQUIRE answered with END only", "INQ DATA 100\n", 1);
	XS(s, NULL, "END\n", 1);
	XS(s, "INQUIRE answered with CAN", "INQ DATA 100\n", 1);
	XS(s, NULL, "D partial\nCAN\n", 1);
	XS(s, "INQUIRE answered with CANCEL", "INQ DATA 100\n", 1);
	XS(s, NULL, "CANCEL\n", 1);
	XS(s, "INQUIRE answered with another command", "INQ DATA 100\n", 1);
	XS(s, NULL, "NOP\n", 1);
	XS(s, "INQUIRE with a keyword and arguments", "INQ PASSPHRASE 100\n", 1);
	XS(s, NULL, "D secret\nEND\n", 1);
	{
		unsigned char all[256];
		for (int i = 0; i < 256; i++)
			all[i] = (unsigned char)i;
		struct sbuf d = {0};
		d_escape_all(&d, all, sizeof(all), false);
		sb_str(&d, "END\n");
		XS(s, "INQUIRE: all 256 byte values escaped (upper case hex), echoed as D", "INQ DATA 1000\n", 1);
		xchg(s, NULL, d.p, d.len, 1);
		sb_free(&d);
		d_escape_all(&d, all, sizeof(all), true);
		sb_str(&d, "END\n");
		XS(s, "INQUIRE: all 256 byte values escaped (lower case hex)", "INQ DATA 1000\n", 1);
		xchg(s, NULL, d.p, d.len, 1);
		sb_free(&d);
	}
	{
		/* 2500 bytes over three D lines, the last byte a %. */
		struct sbuf d = {0};
		memset(big, 'y', 2499);
		sb_str(&d, "D ");
		sb_add(&d, big, 990);
		sb_str(&d, "%25\nD ");
		sb_add(&d, big, 990);
		sb_str(&d, "\nD ");
		sb_add(&d, big, 518);
		sb_str(&d, "%25\nEND\n");
		XS(s, "INQUIRE: 2500 bytes in three D lines, the last a %", "INQ DATA 3000\n", 1);
		xchg(s, NULL, d.p, d.len, 1);
		sb_free(&d);
	}
	XS(s, "INQUIRE over its maximum", "INQ DATA 10\n", 1);
	XS(s, NULL, "D 0123456789abc\nD more\nEND\n", 1);
	XS(s, "in sync after the oversized inquiry", "NOP\n", 1);

	XS(s, "pipelined: NOP behind a command that answers later", "SLOW\nNOP\n", 2);
	XS(s, "pipelined: ten NOPs in one write", "NOP\nNOP\nNOP\nNOP\nNOP\nNOP\nNOP\nNOP\nNOP\nNOP\n", 10);

	/* Line lengths at the limit (both accept these). */
	{
		memcpy(big, "ECHO ", 5);
		memset(big + 5, 'z', 996);
		big[1001] = '\n';
		xchg(s, "1001 characters + LF", big, 1002, 1);
		big[1000] = '\r';
		big[1001] = '\n';
		xchg(s, "1000 characters + CR LF", big, 1002, 1);
	}

	/* Descriptors. */
	XS(s, "INPUT without FD", "INPUT\n", 1);
	XS(s, "INPUT FD=x", "INPUT FD=x\n", 1);
	XS(s, "INPUT FD with no descriptor passed", "INPUT FD\n", 1);
	XS(s, "READIN without INPUT", "READIN\n", 1);
	{
		int p[2];
		if (pipe2(p, O_CLOEXEC) < 0)
			bail("pipe: %s", strerror(errno));
		write_all(p[1], "piped data\n", 11);
		close(p[1]);
		struct rec *r = new_rec(s, "descriptor passed with SCM_RIGHTS, INPUT FD, READIN");
		sb_str(&r->text, "C: <fd on '# descriptor N is in flight'>\n");
		send_fd(s->fd, p[0]);
		close(p[0]);
		XS(s, NULL, "INPUT FD\nREADIN\n", 2);
	}

	XS(s, "BYE", "BYE\n", -1);
}

/* ---- the libassuan client through a recording proxy ------------------------------ */

struct proxy {
	int cfd, sfd; /* to the client, to the server */
	pthread_t th;
	pthread_mutex_t mu;
	struct sbuf rec; /* what the server sent */
};

static void *proxy_main(void *arg)
{
	struct proxy *px = arg;
	bool cin = true, sin = true;
	while (sin) {
		struct pollfd p[2] = {{cin ? px->cfd : -1, POLLIN, 0}, {px->sfd, POLLIN, 0}};
		if (poll(p, 2, 10000) <= 0)
			break;
		char buf[8192];
		if (p[0].revents) {
			ssize_t n = read(px->cfd, buf, sizeof(buf));
			if (n <= 0) {
				cin = false;
				shutdown(px->sfd, SHUT_WR);
			} else {
				write_all(px->sfd, buf, (size_t)n);
			}
		}
		if (p[1].revents) {
			ssize_t n = read(px->sfd, buf, sizeof(buf));
			if (n <= 0) {
				sin = false;
				shutdown(px->cfd, SHUT_WR);
			} else {
				pthread_mutex_lock(&px->mu);
				sb_add(&px->rec, buf, (size_t)n);
				pthread_mutex_unlock(&px->mu);
				write_all(px->cfd, buf, (size_t)n);
			}
		}
	}
	return NULL;
}

struct lclient {
	assuan_context_t ctx;
	struct sbuf *log;
	const void *inq_data; /* what the inquire callback sends */
	size_t inq_len;
	bool inq_fail;        /* the inquire callback fails: CAN */
};

static gpg_error_t lc_data(void *arg, const void *p, size_t n)
{
	struct lclient *lc = arg;
	if (p == NULL) {
		sb_str(lc->log, "  data END\n");
		return 0;
	}
	char t[32];
	snprintf(t, sizeof(t), "  data[%zu] ", n);
	sb_str(lc->log, t);
	sb_esc(lc->log, p, n);
	sb_str(lc->log, "\n");
	return 0;
}

static gpg_error_t lc_inquire(void *arg, const char *line)
{
	struct lclient *lc = arg;
	sb_str(lc->log, "  inquire ");
	sb_str(lc->log, line);
	sb_str(lc->log, "\n");
	if (lc->inq_fail)
		return gpg_error(GPG_ERR_CANCELED);
	if (lc->inq_len > 0)
		return assuan_send_data(lc->ctx, lc->inq_data, lc->inq_len);
	return 0;
}

static gpg_error_t lc_status(void *arg, const char *line)
{
	struct lclient *lc = arg;
	sb_str(lc->log, "  status ");
	sb_esc(lc->log, line, strlen(line));
	sb_str(lc->log, "\n");
	return 0;
}

/* One assuan_transact; the step's text: the callbacks, rc, and the bytes
 * the server sent meanwhile. */
static void lc_step(struct session *s, struct lclient *lc, struct proxy *px, const char *cmd, bool inquire_cb)
{
	struct rec *r = new_rec(s, cmd);
	lc->log = &r->text;
	gpg_error_t rc = assuan_transact(lc->ctx, cmd, lc_data, lc, inquire_cb ? lc_inquire : NULL, lc,
			lc_status, lc);
	char t[160];
	snprintf(t, sizeof(t), "  rc %u (%s <%s>)\n", rc, gpg_strerror(rc), gpg_strsource(rc));
	sb_str(&r->text, t);
	pthread_mutex_lock(&px->mu);
	sb_str(&r->text, "  bytes: ");
	sb_esc(&r->text, px->rec.p, px->rec.len);
	px->rec.len = 0;
	pthread_mutex_unlock(&px->mu);
	sb_str(&r->text, "\n");
}

/* Raw lines through libassuan's low-level calls. */
static void lc_raw(struct session *s, struct lclient *lc, struct proxy *px, const char *line, int nlines)
{
	char name[96];
	snprintf(name, sizeof(name), "assuan_write_line '%s', assuan_read_line", line);
	struct rec *r = new_rec(s, name);
	gpg_error_t rc = assuan_write_line(lc->ctx, line);
	char t[160];
	snprintf(t, sizeof(t), "  write rc %u\n", rc);
	sb_str(&r->text, t);
	for (int i = 0; i < nlines; i++) {
		char *got;
		size_t n;
		rc = assuan_read_line(lc->ctx, &got, &n);
		snprintf(t, sizeof(t), "  read rc %u: ", rc);
		sb_str(&r->text, t);
		if (rc == 0)
			sb_esc(&r->text, got, n);
		sb_str(&r->text, "\n");
	}
	pthread_mutex_lock(&px->mu);
	sb_str(&r->text, "  bytes: ");
	sb_esc(&r->text, px->rec.p, px->rec.len);
	px->rec.len = 0;
	pthread_mutex_unlock(&px->mu);
	sb_str(&r->text, "\n");
}

static bool libassuan_client_session(enum kind k, struct session *s)
{
	pid_t pid;
	struct proxy px = {0};
	px.sfd = spawn(k, HELLO_CUSTOM, &pid);
	int cv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, cv) < 0)
		bail("socketpair: %s", strerror(errno));
	px.cfd = cv[0];
	pthread_mutex_init(&px.mu, NULL);
	if (pthread_create(&px.th, NULL, proxy_main, &px) != 0)
		bail("pthread_create");

	struct lclient lc = {0};
	if (assuan_new(&lc.ctx))
		bail("assuan_new");
	assuan_set_flag(lc.ctx, ASSUAN_CONVEY_COMMENTS, 1);
	struct rec *r = new_rec(s, "assuan_socket_connect_fd (greeting)");
	gpg_error_t rc = assuan_socket_connect_fd(lc.ctx, cv[1], 0);
	char t[64];
	snprintf(t, sizeof(t), "  rc %u\n", rc);
	sb_str(&r->text, t);
	pthread_mutex_lock(&px.mu);
	sb_str(&r->text, "  bytes: ");
	sb_esc(&r->text, px.rec.p, px.rec.len);
	px.rec.len = 0;
	pthread_mutex_unlock(&px.mu);
	if (rc != 0)
		bail("assuan_socket_connect_fd: %s", gpg_strerror(rc));

	lc_step(s, &lc, &px, "NOP", false);
	lc_step(s, &lc, &px, "ECHO hello world", false);
	lc_step(s, &lc, &px, "BYTES", false);
	lc_step(s, &lc, &px, "DATA 78*2500", false);
	lc_step(s, &lc, &px, "DATA 41*2 25*400 / 0a*10", false);
	lc_step(s, &lc, &px, "STATUS", false);
	lc_step(s, &lc, &px, "OPTION --foo = bar", false);
	lc_step(s, &lc, &px, "GETOPT", false);
	lc_step(s, &lc, &px, "OPTION bad", false);
	lc_step(s, &lc, &px, "FAIL 99 with text", false);
	lc_step(s, &lc, &px, "FAIL 1", false);
	lc_step(s, &lc, &px, "FOOBAR", false);
	lc_step(s, &lc, &px, "HELP", false);
	lc_step(s, &lc, &px, "HELP ECHO", false);
	lc_step(s, &lc, &px, "OKAY fine", false);

	/* INQUIRE: all 256 byte values and 2500 more, the last byte a %. */
	static unsigned char inq[256 + 2500];
	for (int i = 0; i < 256; i++)
		inq[i] = (unsigned char)i;
	for (int i = 0; i < 2500; i++)
		inq[256 + i] = (unsigned char)(i % 7 == 0 ? '%' : 'a' + i % 26);
	inq[sizeof(inq) - 1] = '%';
	lc.inq_data = inq;
	lc.inq_len = sizeof(inq);
	lc_step(s, &lc, &px, "INQ DATA 4000", true);
	lc_step(s, &lc, &px, "INQ DATA 100", true); /* over the maximum */
	lc.inq_len = 0;
	lc_step(s, &lc, &px, "INQ DATA 100", true); /* END only */
	lc.inq_fail = true;
	lc_step(s, &lc, &px, "INQ DATA 100", true); /* CAN */
	lc.inq_fail = false;
	lc_step(s, &lc, &px, "INQ DATA 100", false); /* no inquire callback: END */
	lc_step(s, &lc, &px, "SLOW", false);
	lc_raw(s, &lc, &px, " NOP", 1);
	lc_raw(s, &lc, &px, "END", 1);
	lc_raw(s, &lc, &px, "DATA 78*1200", 3);

	assuan_release(lc.ctx); /* sends BYE */
	pthread_join(px.th, NULL);
	r = new_rec(s, "assuan_release (BYE)");
	sb_str(&r->text, "  bytes: ");
	sb_esc(&r->text, px.rec.p, px.rec.len);
	sb_free(&px.rec);
	pthread_mutex_destroy(&px.mu);
	close(px.cfd);
	close(px.sfd);
	return reap(pid);
}

/* ---- comparing ---------------------------------------------------------------------- */

static int compare(const char *what, struct session *w, struct session *l)
{
	int identical = 0;
	if (w->n != l->n)
		bail("%s: %d steps against %d", what, w->n, l->n);
	for (int i = 0; i < w->n; i++) {
		bool same = strcmp(w->recs[i].text.p ? w->recs[i].text.p : "",
				l->recs[i].text.p ? l->recs[i].text.p : "") == 0;
		tap(same, "%s: %s", what, w->recs[i].name);
		if (!same) {
			diag("weft:\n%s", w->recs[i].text.p);
			diag("libassuan:\n%s", l->recs[i].text.p);
		}
		if (getenv("INTEROP_VERBOSE"))
			diag("%s", w->recs[i].text.p);
		identical += same;
		sb_free(&w->recs[i].text);
		sb_free(&l->recs[i].text);
	}
	return identical;
}

static bool run_raw(enum kind k, struct session *s)
{
	pid_t pid;
	s->fd = spawn(k, HELLO_CUSTOM, &pid);
	raw_session(s);
	close(s->fd);
	return reap(pid);
}

/* ---- where weft does better ----------------------------------------------------------- */

static char *errline(gpg_err_code_t code, const char *text)
{
	static char line[400];
	gpg_error_t e = gpg_err_make(PEER_ERR_SOURCE, code);
	snprintf(line, sizeof(line), "ERR %u %s <%s>%s%s\n", e, gpg_strerror(e), gpg_strsource(e),
			text ? " - " : "", text ? text : "");
	return line;
}

/* Run steps on a fresh connection to server k; returns the raw bytes the
 * server sent (caller frees). */
static char *better_run(enum kind k, const char *const *sends, const size_t *lens, const int *nterm, int n,
		bool *exited_ok)
{
	pid_t pid;
	int fd = spawn(k, HELLO_CUSTOM, &pid);
	struct sbuf greet = {0}, got = {0};
	read_answers(fd, 1, &greet);
	sb_free(&greet);
	for (int i = 0; i < n; i++) {
		write_all(fd, sends[i], lens[i] ? lens[i] : strlen(sends[i]));
		read_answers(fd, nterm[i], &got);
	}
	close(fd);
	*exited_ok = reap(pid);
	if (got.p == NULL)
		sb_str(&got, "");
	return got.p;
}

static void show(const char *who, const char *bytes)
{
	struct sbuf e = {0};
	sb_esc(&e, bytes, strlen(bytes));
	diag("%s sent: %s", who, e.p);
	sb_free(&e);
}

static void better_long_line(void)
{
	static char longline[1200];
	memcpy(longline, "ECHO ", 5);
	memset(longline + 5, 'q', 997); /* 1002 characters + LF: one too many */
	longline[1002] = '\n';
	const char *sends[] = {longline, "NOP\n"};
	size_t lens[] = {1003, 0};
	int nterm[] = {1, 1};
	bool ok;
	char *w = better_run(K_WEFT, sends, lens, nterm, 2, &ok);
	struct sbuf want = {0};
	sb_str(&want, errline(GPG_ERR_ASS_LINE_TOO_LONG, NULL));
	sb_str(&want, "OK\n");
	bool good = strcmp(w, want.p) == 0 && ok;
	tap(good, "weft better: an over-long line (1002 chars + LF) is answered with ERR 263 and the next line is served");
	if (!good)
		show("weft", w);
	free(w);
	sb_free(&want);

	/* Much longer: 100 000 bytes, discarded in bounded memory. */
	char *huge = malloc(100001);
	memset(huge, 'h', 100000);
	huge[100000] = '\n';
	const char *sends2[] = {huge, "NOP\n"};
	size_t lens2[] = {100001, 0};
	w = better_run(K_WEFT, sends2, lens2, nterm, 2, &ok);
	sb_str(&want, errline(GPG_ERR_ASS_LINE_TOO_LONG, NULL));
	sb_str(&want, "OK\n");
	good = strcmp(w, want.p) == 0 && ok;
	tap(good, "weft better: a 100 000-byte line is answered with one ERR 263, then the next line is served");
	if (!good)
		show("weft", w);
	free(w);
	sb_free(&want);

	int nterm_eof[] = {-1, 0};
	char *l = better_run(K_LIBASSUAN, sends, lens, nterm_eof, 1, &ok);
	bool dropped = strcmp(l, "<EOF>") == 0 || strcmp(l, "<ERROR>") == 0;
	tap(dropped, "libassuan (noted): the same over-long line drops the connection without a word");
	if (!dropped)
		show("libassuan", l);
	free(l);
	free(huge);
}

static void better_bad_percent(void)
{
	static const char *const bad[] = {"D ab%4\nD more\nEND\n", "D ab%\nEND\n", "D %zz\nEND\n", "D %4g\nEND\n"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *sends[] = {"INQ DATA 100\n", bad[i], "NOP\n"};
		size_t lens[] = {0, 0, 0};
		int nterm[] = {1, 1, 1};
		bool ok;
		char *w = better_run(K_WEFT, sends, lens, nterm, 3, &ok);
		struct sbuf want = {0};
		sb_str(&want, "INQUIRE DATA\n");
		sb_str(&want, errline(GPG_ERR_ASS_SYNTAX, "malformed percent escape in inquired data"));
		sb_str(&want, "OK\n");
		bool good = strcmp(w, want.p) == 0 && ok;
		struct sbuf e = {0};
		sb_esc(&e, bad[i], strlen(bad[i]));
		tap(good, "weft better: malformed %% escape in INQUIRE data (%s) gives ERR 276 and the connection stays in sync", e.p);
		if (!good)
			show("weft", w);
		sb_free(&e);
		sb_free(&want);
		free(w);
	}
	diag("libassuan (not run: it would hang): a %% with fewer than two characters after it in INQUIRE");
	diag("data sends assuan_inquire into an endless loop (wire notes 3.1); %%zz is decoded to garbage");
}

static void better_fd_n(void)
{
	const char *sends[] = {"INPUT FD=0\n", "INPUT FD=99\n", "NOP\n"};
	size_t lens[] = {0, 0, 0};
	int nterm[] = {1, 1, 1};
	bool ok;
	char *w = better_run(K_WEFT, sends, lens, nterm, 3, &ok);
	struct sbuf want = {0};
	const char *why = "descriptor was not passed by the peer";
	sb_str(&want, errline(GPG_ERR_ASS_PARAMETER, why));
	sb_str(&want, errline(GPG_ERR_ASS_PARAMETER, why));
	sb_str(&want, "OK\n");
	bool good = strcmp(w, want.p) == 0 && ok;
	tap(good, "weft better: INPUT FD=n for a descriptor the peer never passed is refused (ERR 280)");
	if (!good)
		show("weft", w);
	free(w);
	sb_free(&want);

	/* libassuan takes any number (99 is not open in the child: harmless). */
	const char *lsends[] = {"INPUT FD=99\n"};
	w = better_run(K_LIBASSUAN, lsends, lens, nterm, 1, &ok);
	good = strcmp(w, "OK\n") == 0;
	tap(good, "libassuan (noted): INPUT FD=99 is accepted, though the peer passed nothing");
	if (!good)
		show("libassuan", w);
	free(w);
}

/* Deliberate differences, documented in assuan.h. */
static void differences(void)
{
	/* A status line while a D line is open: weft ends the D line first
	 * (output keeps the order the handler made it in); libassuan keeps
	 * the D line buffered, so the S line overtakes the data before it. */
	const char *sends[] = {"STATUS open\n"};
	size_t lens[] = {0};
	int nterm[] = {1};
	bool ok;
	char *w = better_run(K_WEFT, sends, lens, nterm, 1, &ok);
	bool good = strcmp(w, "S PROGRESS primegen X 100 100\nD abc\nS EMPTY\n"
			"S KEYINFO 0123456789ABCDEF D - - - C - - -\nD def\nS PCT 100%25 done%0A\nOK\n") == 0;
	tap(good, "weft differs: a status line ends the open D line (order kept)");
	if (!good)
		show("weft", w);
	free(w);
	w = better_run(K_LIBASSUAN, sends, lens, nterm, 1, &ok);
	good = strcmp(w, "S PROGRESS primegen X 100 100\nS EMPTY\n"
			"S KEYINFO 0123456789ABCDEF D - - - C - - -\nD abcdef\nS PCT 100%25 done%0A\nOK\n") == 0;
	tap(good, "libassuan (noted): status lines overtake the buffered D line");
	if (!good)
		show("libassuan", w);
	free(w);

	/* The INPUT descriptor after a command that used it: weft closes it
	 * when the command finishes (assuan.h: unless taken); libassuan keeps
	 * it open until RESET, BYE or the handler closes it. */
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		bail("pipe: %s", strerror(errno));
	close(p[1]);
	for (int k = 0; k < 2; k++) {
		pid_t pid;
		int fd = spawn((enum kind)k, HELLO_CUSTOM, &pid);
		struct sbuf got = {0};
		read_answers(fd, 1, &got);
		got.len = 0;
		send_fd(fd, p[0]);
		write_all(fd, "INPUT FD\nREADIN\nREADIN\n", 23);
		read_answers(fd, 3, &got);
		close(fd);
		reap(pid);
		char want[400];
		snprintf(want, sizeof(want), "OK\nOK\n%s",
				k == K_WEFT ? errline(GPG_ERR_ASS_NO_INPUT, NULL) : "OK\n");
		good = got.p && strcmp(got.p, want) == 0;
		tap(good, k == K_WEFT ? "weft differs: the INPUT descriptor is closed after the command that used it"
				: "libassuan (noted): the INPUT descriptor stays open for the next command");
		if (!good)
			show(k == K_WEFT ? "weft" : "libassuan", got.p ? got.p : "");
		sb_free(&got);
	}
	close(p[0]);
}

/* A line that arrives while a command is pending: weft queues it and
 * answers it in order; libassuan's assuan_process_next drops it (wire
 * notes 2.1, T-C1).  ECHO marks where the stream is afterwards. */
static void better_pipelining(void)
{
	for (int k = 0; k < 2; k++) {
		enum kind kind = k == 0 ? K_WEFT : K_LIBASSUAN_NEXT;
		pid_t pid;
		int fd = spawn(kind, HELLO_CUSTOM, &pid);
		struct sbuf got = {0};
		read_answers(fd, 1, &got);
		got.len = 0;
		write_all(fd, "SLOW\nNOP\n", 9);
		usleep(150 * 1000); /* SLOW is answered after 30 ms */
		write_all(fd, "ECHO marker\nBYE\n", 16);
		read_answers(fd, -1, &got);
		close(fd);
		bool ok = reap(pid);
		const char *want = k == 0 ? "OK\nOK\nD marker\nOK\nOK closing connection\n<EOF>"
				: "OK\nD marker\nOK\nOK closing connection\n<EOF>";
		bool good = ok && got.p && strcmp(got.p, want) == 0;
		tap(good, k == 0 ? "weft better: a NOP pipelined behind a pending command is answered, in order"
				: "libassuan (noted): assuan_process_next drops the NOP that arrived while SLOW was pending");
		if (!good)
			show(k == 0 ? "weft" : "libassuan-next", got.p ? got.p : "");
		sb_free(&got);
	}
}

static void default_greeting(void)
{
	char *g[2];
	for (int k = 0; k < 2; k++) {
		pid_t pid;
		int fd = spawn((enum kind)k, HELLO_DEFAULT, &pid);
		struct sbuf got = {0};
		read_answers(fd, 1, &got);
		close(fd);
		reap(pid);
		g[k] = got.p ? got.p : strdup("");
	}
	char want[80];
	snprintf(want, sizeof(want), "OK Pleased to meet you, process %d\n", (int)getpid());
	tap(strcmp(g[0], g[1]) == 0 && strcmp(g[0], want) == 0,
			"default greeting identical, with the peer's pid (socketpair: this process)");
	if (strcmp(g[0], g[1]) != 0) {
		show("weft", g[0]);
		show("libassuan", g[1]);
	}
	free(g[0]);
	free(g[1]);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	signal(SIGALRM, on_alarm);
	alarm(120);
	setvbuf(stdout, NULL, _IOLBF, 0);

	static struct session w, l;
	bool wok = run_raw(K_WEFT, &w);
	bool lok = run_raw(K_LIBASSUAN, &l);
	tap(wok && lok, "raw session: both servers exited cleanly");
	int raw_steps = w.n;
	int raw_same = compare("raw", &w, &l);

	w.n = l.n = 0;
	wok = libassuan_client_session(K_WEFT, &w);
	lok = libassuan_client_session(K_LIBASSUAN, &l);
	tap(wok && lok, "libassuan client session: both servers exited cleanly");
	int lc_steps = w.n;
	int lc_same = compare("libassuan client", &w, &l);

	default_greeting();
	differences();
	better_pipelining();
	better_long_line();
	better_bad_percent();
	better_fd_n();

	diag("identical transcripts: raw client %d/%d steps, libassuan client %d/%d steps", raw_same, raw_steps,
			lc_same, lc_steps);
	printf("1..%d\n", t_num);
	return t_failed ? 1 : 0;
}
