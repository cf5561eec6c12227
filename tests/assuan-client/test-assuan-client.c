/* Tests for the Assuan client (include/weft/assuan.h, second half) and the
 * weft-connect tool.
 *
 * Peers:
 *  - a weft server in this process, on the same loop, over a socketpair
 *    (or listening on a path, an abstract name, TCP);
 *  - a fake server: the test writes exact bytes to the other end of a
 *    socketpair and reads back exactly what the client wrote (edge cases
 *    no real server produces: split lines, odd ERR lines, garbage);
 *  - real programs: gpg-agent 2.2 (a daemon with a fresh --homedir, and
 *    `gpg-agent --server` as a pipe server, with and without descriptor
 *    passing), weft-kv (socket and TLS), this program itself as a pipe
 *    server (--pipe-server), and the built weft-connect run as a child
 *    (arguments, -f, stdin pipe/file/pty, INQUIRE answers, sendfd, TLS).
 *
 * Every test checks the open-fd count before/after (helper); children are
 * always reaped (this process is a child subreaper, so the daemonized
 * gpg-agent and orphans are ours to reap) and the agent is always killed
 * and the temporary directory removed, also when a test hangs (the
 * watchdog does it before it bails out).
 *
 * WEFT_TEST_ONLY=text runs the tests whose name contains text (and starts
 * gpg-agent / weft-kv only if one of those needs them);
 * WEFT_TEST_VERBOSE=1 prints every weft-connect run's output. */
#include "helper.h"

#include <weft/weft.h>
#include <weft/assuan.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#ifndef WEFT_CONNECT_PATH
#error "WEFT_CONNECT_PATH must name the built weft-connect"
#endif
#ifndef WEFT_KV_PATH
#define WEFT_KV_PATH ""
#endif

extern char **environ;

#define WATCHDOG_S 60 /* per test; a noisy machine is slow, not stuck */
#define WAIT_MS 10000 /* an answer that takes longer is lost */

static char g_dir[64];       /* mkdtemp: sockets, files, the agent's home */
static char g_self[4096];    /* this program, for --pipe-server */
static const char *g_current;

/* ---- processes we must never leave behind (also used from the watchdog) -- */

static volatile pid_t g_agent_pid; /* the gpg-agent daemon */
static volatile pid_t g_kv_pid;    /* weft-kv */
static volatile pid_t g_tool_pid;  /* a weft-connect run */
static volatile pid_t g_kv_tls_pid; /* weft-kv over TLS */

/* Kill what we started, remove the directory (async-signal-safe). */
static void emergency_cleanup(void);

static void on_alarm(int sig)
{
	(void)sig;
	static const char pre[] = "Bail out! watchdog: test ";
	static const char post[] = " hangs\n";
	ssize_t ignored = write(1, pre, sizeof pre - 1);
	if (g_current)
		ignored = write(1, g_current, strlen(g_current));
	ignored = write(1, post, sizeof post - 1);
	(void)ignored;
	emergency_cleanup();
	_exit(2);
}

#if !defined(__SANITIZE_ADDRESS__)
/* A crash: clean up, then die of the same signal. */
static void on_crash(int sig)
{
	static const char pre[] = "Bail out! crashed in test ";
	ssize_t ignored = write(1, pre, sizeof pre - 1);
	if (g_current)
		ignored = write(1, g_current, strlen(g_current));
	ignored = write(1, "\n", 1);
	(void)ignored;
	emergency_cleanup();
	signal(sig, SIG_DFL);
	raise(sig);
}
#endif

static void emergency_cleanup(void)
{
	pid_t pids[4] = {g_agent_pid, g_kv_pid, g_tool_pid, g_kv_tls_pid};
	for (int i = 0; i < 4; i++)
		if (pids[i] > 0)
			kill(pids[i], SIGKILL);
	if (g_dir[0]) {
		pid_t p = fork();
		if (p == 0) {
			char *const argv[] = {"rm", "-rf", g_dir, NULL};
			execve("/bin/rm", argv, environ);
			_exit(127);
		}
		if (p > 0)
			waitpid(p, NULL, 0);
	}
	for (int i = 0; i < 4; i++)
		if (pids[i] > 0)
			waitpid(pids[i], NULL, 0);
	g_dir[0] = '\0';
}

/* WEFT_TEST_ONLY=text runs only the tests whose name has text. */
static bool selected(const char *name)
{
	const char *only = getenv("WEFT_TEST_ONLY");
	return only == NULL || strstr(name, only) != NULL;
}

static void run(const char *name, void (*fn)(void))
{
	if (!selected(name))
		return;
	g_current = name;
	alarm(WATCHDOG_S);
	t_run(name, fn);
	alarm(0);
}

/* ---- loops ----------------------------------------------------------------- */


/* ---- a transaction and everything it heard -------------------------------- */

enum inq_mode {
	INQ_NONE,   /* no inquire callback */
	INQ_NOW,    /* answer inside the callback: data, END */
	INQ_LATER,  /* answer from a timer */
	INQ_CAN,    /* answer CAN inside the callback */
	INQ_FAIL,   /* the callback returns an error */
	INQ_WAIT,   /* do not answer (the test cancels) */
};

struct tx {
	weft_assuan_client *cl;
	weft_req *req;
	bool done;
	int r, err, order;
	weft_assuan_err answer;
	char okay[256];
	unsigned char data[65536];
	size_t dlen;
	int ends, data_calls;
	char status[2048];
	char comments[1024];
	char inq[256];
	int inquires;
	enum inq_mode mode;
	const char *inq_answer;
	size_t inq_answer_len; /* 0: strlen */
	weft_timer *timer;
	weft_assuan_err fail;     /* returned by the data/status callbacks when set */
	bool free_in_data;        /* weft_assuan_client_free from the data callback */
	bool free_in_inquire;     /* ... from the inquire callback */
	bool cancel_in_data;      /* weft_req_cancel of itself from the data callback */
	bool free_in_done;        /* ... from the completion callback */
	bool free_req_in_data;    /* weft_req_free of itself from the data callback */
	struct tx *then;          /* ... and then start this one */
	const char *then_cmd;
};

static void tx_start(struct tx *tx, weft_assuan_client *cl, const char *cmd);

static int g_order;

static void cat(char *dst, size_t size, const char *a, const char *b, const char *c)
{
	size_t n = strlen(dst);
	snprintf(dst + n, size - n, "%s%s%s", a, b, c);
}

static weft_assuan_err tx_data(void *data, const void *buf, size_t len)
{
	struct tx *tx = data;
	tx->data_calls++;
	if (buf == NULL) {
		CHECK_EQ(len, 0);
		tx->ends++;
	} else if (tx->dlen + len <= sizeof(tx->data)) {
		memcpy(tx->data + tx->dlen, buf, len);
		tx->dlen += len;
	}
	if (tx->free_req_in_data) {
		weft_req_free(tx->req);
		tx->req = NULL;
		tx->done = true;
		if (tx->then)
			tx_start(tx->then, tx->cl, tx->then_cmd);
		return tx->fail;
	}
	if (tx->free_in_data) {
		weft_assuan_client_free(tx->cl);
		return tx->fail;
	}
	if (tx->cancel_in_data && tx->req != NULL && weft_req_is_in_progress(tx->req))
		CHECK_EQ(weft_req_cancel(tx->req), 0);
	return tx->fail;
}

static weft_assuan_err tx_status(void *data, const char *kw, const char *args)
{
	struct tx *tx = data;
	cat(tx->status, sizeof(tx->status), kw, "|", args);
	cat(tx->status, sizeof(tx->status), "\n", "", "");
	return tx->fail;
}

static weft_assuan_err tx_comment(void *data, const char *line)
{
	struct tx *tx = data;
	cat(tx->comments, sizeof(tx->comments), line, "\n", "");
	return 0;
}

static void inq_answer(struct tx *tx)
{
	size_t n = tx->inq_answer_len ? tx->inq_answer_len : strlen(tx->inq_answer);
	/* in two pieces, so the answer spans calls */
	CHECK_EQ(weft_assuan_client_inquire_data(tx->cl, tx->inq_answer, n / 2), 0);
	CHECK_EQ(weft_assuan_client_inquire_data(tx->cl, tx->inq_answer + n / 2, n - n / 2), 0);
	CHECK_EQ(weft_assuan_client_inquire_end(tx->cl), 0);
}

static void inq_timer(weft_timer *t, void *data)
{
	struct tx *tx = data;
	(void)t;
	inq_answer(tx);
}

static weft_assuan_err tx_inquire(void *data, const char *kw, const char *args)
{
	struct tx *tx = data;
	tx->inquires++;
	cat(tx->inq, sizeof(tx->inq), kw, "|", args);
	cat(tx->inq, sizeof(tx->inq), "\n", "", "");
	if (tx->free_in_inquire) {
		weft_assuan_client_free(tx->cl);
		return tx->fail;
	}
	switch (tx->mode) {
	case INQ_NOW:
		inq_answer(tx);
		return 0;
	case INQ_LATER:
		if (tx->timer == NULL && weft_timer_new(weft_req_loop(tx->req), inq_timer, tx, &tx->timer) < 0)
			return GPG_ERR_ENOMEM;
		weft_timer_start(tx->timer, 30, 0);
		return 0;
	case INQ_CAN:
		CHECK_EQ(weft_assuan_client_inquire_cancel(tx->cl), 0);
		return 0;
	case INQ_FAIL:
		return tx->fail;
	case INQ_WAIT:
	case INQ_NONE:
	default:
		return 0;
	}
}

static void tx_done(weft_req *req, void *data)
{
	struct tx *tx = data;
	tx->r = weft_assuan_transact_recv(req, &tx->answer, &tx->err);
	if (tx->r < 0)
		CHECK_EQ(tx->r, -tx->err);
	else
		snprintf(tx->okay, sizeof(tx->okay), "%s", weft_assuan_client_okay_text(tx->cl));
	tx->order = ++g_order;
	weft_req_free(req);
	tx->req = NULL;
	tx->done = true;
	if (tx->free_in_done)
		weft_assuan_client_free(tx->cl);
}

/* Start cmd on cl; tx must be zeroed by the caller, except its options. */
static void tx_start(struct tx *tx, weft_assuan_client *cl, const char *cmd)
{
	tx->cl = cl;
	weft_assuan_transact_cbs cbs = {
		.data = tx_data,
		.status = tx_status,
		.inquire = tx->mode == INQ_NONE ? NULL : tx_inquire,
		.comment = tx_comment,
	};
	tx->req = weft_assuan_transact_send(cl, cmd, &cbs, tx);
	CHECK(tx->req != NULL);
	if (tx->req != NULL)
		weft_req_set_callback(tx->req, tx_done, tx);
	else
		tx->done = true;
}

static void tx_fini(struct tx *tx)
{
	weft_timer_free(tx->timer);
	tx->timer = NULL;
}

/* Run cmd to its end; true if it completed. */
static bool tx_run(struct tx *tx, weft_loop *loop, weft_assuan_client *cl, const char *cmd)
{
	tx_start(tx, cl, cmd);
	bool ok = t_run_until(loop, &tx->done, WAIT_MS);
	CHECK(ok);
	return ok;
}

/* A fresh transaction, its answer checked: 0 (OK) and no transport error. */
static void expect_ok(weft_loop *loop, weft_assuan_client *cl, const char *cmd)
{
	struct tx tx = {0};
	if (tx_run(&tx, loop, cl, cmd)) {
		CHECK_EQ(tx.r, 0);
		CHECK_EQ(tx.answer, 0);
	}
	tx_fini(&tx);
}

/* ---- connecting ------------------------------------------------------------ */

struct conn_wait {
	bool done;
	int r, err;
	weft_assuan_client *cl;
};

static void conn_done(weft_req *req, void *data)
{
	struct conn_wait *w = data;
	w->r = weft_assuan_connect_recv(req, &w->cl, &w->err);
	if (w->r < 0)
		CHECK_EQ(w->r, -w->err);
	weft_req_free(req);
	w->done = true;
}

/* Wait for a connect request: the client, or NULL with *perr set. */
static weft_assuan_client *connect_wait(weft_loop *loop, weft_req *req, int *perr)
{
	struct conn_wait w = {0};
	if (req == NULL) {
		*perr = ENOMEM;
		return NULL;
	}
	weft_req_set_callback(req, conn_done, &w);
	if (!t_run_until(loop, &w.done, WAIT_MS)) {
		weft_req_free(req);
		*perr = ETIMEDOUT;
		CHECK(!"connect did not complete");
		return NULL;
	}
	*perr = w.r < 0 ? w.err : 0;
	return w.cl;
}

static weft_assuan_client *adopt_fd(weft_loop *loop, int fd, int *perr)
{
	weft_stream *s = NULL;
	int r = weft_stream_new_socket(loop, fd, &s);
	CHECK_EQ(r, 0);
	if (r < 0) {
		close(fd);
		*perr = -r;
		return NULL;
	}
	return connect_wait(loop, weft_assuan_client_adopt_send(loop, s), perr);
}

/* ---- the in-process weft server -------------------------------------------- */

static struct {
	char log[2048];          /* the commands the server ran, "A,B," */
	weft_assuan_err inq_err; /* what the last inquire callback got */
	int inq_calls;
	int cancels;             /* cancel callbacks of pending commands */
	int closes;              /* close hooks */
	unsigned long ino;       /* INO: st_ino of the INPUT fd */
} g_srv;

static weft_assuan_err srv_pre(weft_assuan_conn *c, const char *cmd, void *data)
{
	(void)c;
	(void)data;
	cat(g_srv.log, sizeof(g_srv.log), cmd, ",", "");
	return 0;
}

static void srv_close(weft_assuan_conn *c, void *data)
{
	(void)c;
	(void)data;
	g_srv.closes++;
}

static weft_assuan_err cmd_echo(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	return weft_assuan_send_data(c, args, strlen(args)) < 0 ? GPG_ERR_ENOMEM : 0;
}

/* BLOB n: n bytes, every value 0..255 over and over (escapes, splits). */
static weft_assuan_err cmd_blob(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	size_t n = strtoul(args, NULL, 10);
	unsigned char *b = malloc(n ? n : 1);
	if (b == NULL)
		return GPG_ERR_ENOMEM;
	for (size_t i = 0; i < n; i++)
		b[i] = (unsigned char)(i * 7 + (i >> 8));
	int r = weft_assuan_send_data(c, b, n);
	free(b);
	return r < 0 ? GPG_ERR_ENOMEM : 0;
}

static void blob_expect(const unsigned char *b, size_t n, size_t want)
{
	CHECK_EQ(n, want);
	size_t bad = 0;
	for (size_t i = 0; i < n && i < want; i++)
		bad += b[i] != (unsigned char)(i * 7 + (i >> 8));
	CHECK_EQ(bad, 0);
}

/* TALK: everything but D: comment, two S lines, an END line, OK text. */
static weft_assuan_err cmd_talk(weft_assuan_conn *c, char *args, void *data)
{
	(void)args;
	(void)data;
	weft_assuan_write_line(c, "# a comment");
	weft_assuan_write_status(c, "PROGRESS", "primegen X 100 100");
	weft_assuan_write_status(c, "BARE", NULL);
	weft_assuan_send_data(c, "one", 3);
	weft_assuan_flush_data(c);
	weft_assuan_write_line(c, "END");
	weft_assuan_send_data(c, "two", 3);
	weft_assuan_set_okay_line(c, "all said");
	return 0;
}

/* FAIL code: ERR with the server's source and a text. */
static weft_assuan_err cmd_fail(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	gpg_err_code_t code = (gpg_err_code_t)strtoul(args, NULL, 10);
	return weft_assuan_set_error(c, weft_assuan_err_make(weft_assuan_conn_server(c), code), "as asked");
}

/* ASK kw: INQUIRE kw; the answer comes back as D data. */
static weft_assuan_err ask_done(weft_assuan_conn *c, weft_assuan_err err, unsigned char *buf, size_t len,
		void *data)
{
	(void)data;
	g_srv.inq_calls++;
	g_srv.inq_err = err;
	if (err)
		return err;
	return weft_assuan_send_data(c, buf, len) < 0 ? GPG_ERR_ENOMEM : 0;
}

static weft_assuan_err cmd_ask(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	if (weft_assuan_inquire(c, *args ? args : "VALUE", 0, ask_done, NULL) < 0)
		return GPG_ERR_ENOMEM;
	return WEFT_ASSUAN_PENDING;
}

/* SLEEP ms: "D early" now, "D late" and OK after ms. */
struct nap {
	weft_assuan_conn *c;
	weft_timer *t;
};

static void nap_cancel(weft_assuan_conn *c, void *data)
{
	(void)c;
	struct nap *n = data;
	g_srv.cancels++;
	weft_timer_free(n->t);
	free(n);
}

static void nap_done(weft_timer *t, void *data)
{
	(void)t;
	struct nap *n = data;
	weft_assuan_conn *c = n->c;
	weft_timer_free(n->t);
	free(n);
	weft_assuan_send_data(c, "late", 4);
	weft_assuan_process_done(c, 0);
}

static weft_assuan_err cmd_sleep(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	struct nap *n = calloc(1, sizeof(*n));
	if (n == NULL)
		return GPG_ERR_ENOMEM;
	n->c = c;
	if (weft_timer_new(weft_stream_loop(weft_assuan_conn_stream(c)), nap_done, n, &n->t) < 0) {
		free(n);
		return GPG_ERR_ENOMEM;
	}
	weft_timer_start(n->t, strtoul(args, NULL, 10), 0);
	weft_assuan_on_cancel(c, nap_cancel, n);
	weft_assuan_send_data(c, "early", 5);
	weft_assuan_flush_data(c);
	return WEFT_ASSUAN_PENDING;
}

/* DIE: the server closes the connection while the command is in flight. */
static void die_now(void *data)
{
	weft_assuan_conn_close(data);
}

static weft_assuan_err cmd_die(weft_assuan_conn *c, char *args, void *data)
{
	(void)args;
	(void)data;
	weft_assuan_send_data(c, "dying", 5);
	weft_assuan_flush_data(c);
	weft_loop_call_soon(weft_stream_loop(weft_assuan_conn_stream(c)), die_now, c);
	return WEFT_ASSUAN_PENDING;
}

/* INO: the INPUT descriptor's inode number as the OK text. */
static weft_assuan_err cmd_ino(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	int fd = *args ? atoi(args) : weft_assuan_input_fd(c);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		return weft_assuan_err_make(weft_assuan_conn_server(c), GPG_ERR_ASS_NO_INPUT);
	char text[64];
	snprintf(text, sizeof(text), "ino=%lu", (unsigned long)st.st_ino);
	g_srv.ino = (unsigned long)st.st_ino;
	weft_assuan_set_okay_line(c, text);
	return 0;
}

static int g_exit_code; /* --pipe-server: EXITCODE n */

static weft_assuan_err cmd_exitcode(weft_assuan_conn *c, char *args, void *data)
{
	(void)c;
	(void)data;
	g_exit_code = atoi(args);
	return 0;
}

static weft_assuan_server *test_server(weft_loop *loop, const char *hello)
{
	weft_assuan_server *srv = NULL;
	CHECK_EQ(weft_assuan_server_new(loop, &srv), 0);
	if (srv == NULL)
		return NULL;
	if (hello)
		CHECK_EQ(weft_assuan_server_set_hello(srv, hello), 0);
	static const struct {
		const char *name;
		weft_assuan_handler h;
	} cmds[] = {
		{"ECHO", cmd_echo}, {"BLOB", cmd_blob}, {"TALK", cmd_talk}, {"FAIL", cmd_fail},
		{"ASK", cmd_ask}, {"SLEEP", cmd_sleep}, {"DIE", cmd_die}, {"INO", cmd_ino},
		{"EXITCODE", cmd_exitcode}, {"INPUT", NULL}, {"OUTPUT", NULL},
	};
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		CHECK_EQ(weft_assuan_register(srv, cmds[i].name, cmds[i].h, NULL, NULL), 0);
	weft_assuan_hooks hooks = {.pre_cmd = srv_pre, .close = srv_close};
	weft_assuan_server_set_hooks(srv, &hooks, NULL);
	return srv;
}

/* A weft server and a client on one loop, over a socketpair. */
struct pair {
	weft_loop *loop;
	weft_assuan_server *srv;
	weft_assuan_conn *conn;
	weft_assuan_client *cl;
	int client_fd; /* the client's socket number */
};

static bool pair_open(struct pair *p, const char *hello)
{
	memset(p, 0, sizeof(*p));
	memset(&g_srv, 0, sizeof(g_srv));
	p->loop = t_loop_new();
	if (p->loop == NULL)
		return false;
	p->srv = test_server(p->loop, hello);
	int sv[2];
	if (p->srv == NULL || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
		return false;
	CHECK_EQ(weft_assuan_server_adopt_fd(p->srv, sv[1], &p->conn), 0);
	p->client_fd = sv[0];
	int err = 0;
	p->cl = adopt_fd(p->loop, sv[0], &err);
	CHECK_EQ(err, 0);
	return p->cl != NULL;
}

static void pair_close(struct pair *p)
{
	weft_assuan_client_free(p->cl);
	p->cl = NULL;
	if (p->loop) {
		t_run_for(p->loop, 20); /* the server sees the end */
		weft_assuan_server_free(p->srv);
		t_loop_free(p->loop);
	}
}

/* ---- the fake server: exact bytes over a socketpair ----------------------- */

struct raw {
	weft_loop *loop;
	int fd; /* our end */
	weft_assuan_client *cl;
	char in[16384];
	size_t inlen;
};

static void raw_send_n(struct raw *r, const void *buf, size_t n)
{
	const char *p = buf;
	uint64_t end = t_now_ms() + WAIT_MS;
	while (n > 0 && t_now_ms() < end) {
		ssize_t k = write(r->fd, p, n);
		if (k < 0 && (errno == EAGAIN || errno == EINTR)) {
			weft_loop_run(r->loop, WEFT_RUN_NOWAIT);
			continue;
		}
		CHECK(k > 0);
		if (k <= 0)
			return;
		p += k;
		n -= (size_t)k;
	}
}

static void raw_send(struct raw *r, const char *text)
{
	raw_send_n(r, text, strlen(text));
}

static void raw_pull(struct raw *r)
{
	ssize_t k;
	while (r->inlen < sizeof(r->in) &&
	       (k = read(r->fd, r->in + r->inlen, sizeof(r->in) - r->inlen)) > 0)
		r->inlen += (size_t)k;
}

/* Run the loop until the client wrote exactly `want` (and take it). */
static bool raw_expect(struct raw *r, const char *want)
{
	size_t n = strlen(want);
	uint64_t end = t_now_ms() + WAIT_MS;
	while (r->inlen < n && t_now_ms() < end) {
		weft_loop_run(r->loop, WEFT_RUN_NOWAIT);
		raw_pull(r);
		if (r->inlen < n)
			t_sleep_ms(1);
	}
	bool ok = r->inlen >= n && memcmp(r->in, want, n) == 0;
	if (!ok)
		printf("# expected %zu bytes \"%s\", have %zu: \"%.*s\"\n", n, want, r->inlen, (int)r->inlen, r->in);
	CHECK(ok);
	size_t take = r->inlen < n ? r->inlen : n;
	memmove(r->in, r->in + take, r->inlen - take);
	r->inlen -= take;
	return ok;
}

/* The client wrote nothing during ms. */
static void raw_expect_nothing(struct raw *r, unsigned ms)
{
	t_run_for(r->loop, ms);
	raw_pull(r);
	if (r->inlen)
		printf("# unexpected: \"%.*s\"\n", (int)r->inlen, r->in);
	CHECK_EQ(r->inlen, 0);
}

/* A fake server that sends greeting (NULL: nothing) and a client adopted on
 * the other end; with a greeting the connect is awaited. */
static bool raw_open(struct raw *r, const char *greeting)
{
	memset(r, 0, sizeof(*r));
	r->loop = t_loop_new();
	int sv[2];
	if (r->loop == NULL || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0) {
		r->fd = -1;
		return false;
	}
	r->fd = sv[1];
	raw_send(r, greeting);
	int err = 0;
	r->cl = adopt_fd(r->loop, sv[0], &err);
	CHECK_EQ(err, 0);
	return r->cl != NULL;
}

static void raw_close(struct raw *r)
{
	weft_assuan_client_free(r->cl);
	r->cl = NULL;
	if (r->fd >= 0)
		close(r->fd);
	if (r->loop)
		t_loop_free(r->loop);
}

/* ---- child processes ----------------------------------------------------- */

/* Spawn argv with stdin from in_fd (-1: /dev/null), stdout to out_fd and
 * stderr to err_fd (-1: /dev/null). */
static pid_t spawn(const char *const argv[], int in_fd, int out_fd, int err_fd)
{
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	if (in_fd >= 0)
		posix_spawn_file_actions_adddup2(&fa, in_fd, 0);
	else
		posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	if (out_fd >= 0)
		posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
	else
		posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	if (err_fd >= 0)
		posix_spawn_file_actions_adddup2(&fa, err_fd, 2);
	else
		posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	pid_t pid = -1;
	int r = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (r != 0) {
		printf("# spawn %s: %s\n", argv[0], strerror(r));
		return -1;
	}
	return pid;
}

/* Wait for pid at most ms; then SIGKILL it.  Returns its wait status, or
 * -1 if it had to be killed. */
static int reap(pid_t pid, unsigned ms)
{
	int st = 0;
	uint64_t end = t_now_ms() + ms;
	for (;;) {
		pid_t p = waitpid(pid, &st, WNOHANG);
		if (p == pid)
			return st;
		if (p < 0 && errno != EINTR)
			return -1;
		if (t_now_ms() >= end)
			break;
		t_sleep_ms(5);
	}
	kill(pid, SIGKILL);
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return -1;
}

struct out {
	char out[65536];
	size_t outlen;
	char err[8192];
	size_t errlen;
	int status; /* exit status, or -1 (killed, crashed) */
};

static int g_stdin_fd = -1; /* run_tool: stdin from this fd (when input is NULL) */

/* Run argv with `input` on stdin (NULL: /dev/null or g_stdin_fd), collect
 * stdout and stderr, and its exit status; killed after ms. */
static void run_tool(const char *const argv[], const char *input, unsigned ms, struct out *o)
{
	memset(o, 0, sizeof(*o));
	o->status = -1;
	int po[2], pe[2], pi[2] = {-1, -1};
	if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0) {
		CHECK(!"pipe");
		return;
	}
	if (input != NULL && pipe2(pi, O_CLOEXEC) < 0) {
		CHECK(!"pipe");
		return;
	}
	pid_t pid = spawn(argv, input ? pi[0] : g_stdin_fd, po[1], pe[1]);
	g_tool_pid = pid;
	close(po[1]);
	close(pe[1]);
	if (pi[0] >= 0) {
		close(pi[0]);
		size_t n = strlen(input);
		CHECK_EQ(write(pi[1], input, n), (ssize_t)n); /* small: fits the pipe */
		close(pi[1]);
	}
	uint64_t end = t_now_ms() + ms;
	bool open_o = true, open_e = true;
	int st = 0;
	bool exited = false;
	while ((open_o || open_e) && pid > 0 && t_now_ms() < end) {
		/* a grandchild may hold the pipes: the tool's own exit ends it */
		if (!exited && waitpid(pid, &st, WNOHANG) == pid) {
			exited = true;
			end = t_now_ms() + 100; /* what is left in the pipes */
		}
		struct pollfd p[2] = {{open_o ? po[0] : -1, POLLIN, 0}, {open_e ? pe[0] : -1, POLLIN, 0}};
		if (poll(p, 2, 50) <= 0)
			continue;
		if (open_o && p[0].revents) {
			ssize_t k = read(po[0], o->out + o->outlen, sizeof(o->out) - 1 - o->outlen);
			if (k <= 0)
				open_o = false;
			else
				o->outlen += (size_t)k;
		}
		if (open_e && p[1].revents) {
			ssize_t k = read(pe[0], o->err + o->errlen, sizeof(o->err) - 1 - o->errlen);
			if (k <= 0)
				open_e = false;
			else
				o->errlen += (size_t)k;
		}
	}
	close(po[0]);
	close(pe[0]);
	if (pid > 0) {
		if (!exited)
			st = reap(pid, open_o || open_e ? 0 : 5000);
		o->status = st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	}
	g_tool_pid = 0;
	if (o->status < 0 || getenv("WEFT_TEST_VERBOSE") != NULL)
		printf("# %s: status %d\n# stdout: %.*s\n# stderr: %.*s\n", argv[0], o->status, (int)o->outlen,
				o->out, (int)o->errlen, o->err);
}

/* Run a command line (argv) and take its first output line. */
static bool run_line(const char *const argv[], char *buf, size_t size)
{
	struct out *o = calloc(1, sizeof(*o));
	if (o == NULL)
		return false;
	run_tool(argv, NULL, 20000, o);
	bool ok = o->status == 0 && o->outlen > 0;
	if (ok) {
		o->out[o->outlen] = '\0';
		size_t n = strcspn(o->out, "\n");
		ok = n < size;
		if (ok) {
			memcpy(buf, o->out, n);
			buf[n] = '\0';
		}
	}
	free(o);
	return ok;
}

static int other_children(void);
static int sendfd_sync(weft_loop *loop, weft_assuan_client *cl, int fd);

/* ---- 1. greeting and connecting ------------------------------------------ */

static void test_greeting_comments(void)
{
	struct raw r;
	if (raw_open(&r, "# Home: /somewhere\n# Config: x.conf\nOK Dirmngr 2.2.40 at your service\n")) {
		CHECK(strcmp(weft_assuan_client_greeting(r.cl), "Dirmngr 2.2.40 at your service") == 0);
		CHECK(weft_assuan_client_stream(r.cl) != NULL);
		CHECK_EQ(weft_assuan_client_pid(r.cl), 0);
		CHECK_EQ(weft_assuan_client_on_exit(r.cl, NULL, NULL), -EINVAL);
	}
	raw_close(&r);

	/* A bare OK: the greeting text is "". */
	if (raw_open(&r, "OK\n"))
		CHECK(strcmp(weft_assuan_client_greeting(r.cl), "") == 0);
	raw_close(&r);
}

/* The greeting's lines arrive one byte at a time. */
static void test_greeting_split(void)
{
	weft_loop *loop = t_loop_new();
	int sv[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) == 0);
	weft_stream *s = NULL;
	CHECK_EQ(weft_stream_new_socket(loop, sv[0], &s), 0);
	struct conn_wait w = {0};
	weft_req *req = weft_assuan_client_adopt_send(loop, s);
	REQUIRE(req != NULL);
	weft_req_set_callback(req, conn_done, &w);
	const char *g = "# one\r\n#\nOK split greeting\r\n";
	for (const char *p = g; *p; p++) {
		CHECK_EQ(write(sv[1], p, 1), 1);
		for (int i = 0; i < 3; i++)
			weft_loop_run(loop, WEFT_RUN_NOWAIT);
		CHECK(w.done == (p[1] == '\0'));
	}
	t_run_until(loop, &w.done, WAIT_MS);
	CHECK_EQ(w.r, 0);
	if (w.cl)
		CHECK(strcmp(weft_assuan_client_greeting(w.cl), "split greeting") == 0);
	weft_assuan_client_free(w.cl);
	close(sv[1]);
	t_loop_free(loop);
}

/* ERR, garbage or EOF instead of OK: the connect fails. */
static void test_greeting_refused(void)
{
	static const struct {
		const char *bytes;
		int err;
	} cases[] = {
		{"ERR 67109123 IPC connect call failed <GPG Agent>\n", EPROTO},
		{"# comment first\nERR 1 General error\n", EPROTO},
		{"HELLO\n", EPROTO},
		{"OKAY\n", EPROTO},
		{"# only a comment, then EOF\n", EPIPE},
		{"", EPIPE},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		weft_loop *loop = t_loop_new();
		int sv[2];
		REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
		size_t n = strlen(cases[i].bytes);
		CHECK_EQ(write(sv[1], cases[i].bytes, n), (ssize_t)n);
		if (cases[i].err == EPIPE)
			shutdown(sv[1], SHUT_WR);
		int err = 0;
		weft_assuan_client *cl = adopt_fd(loop, sv[0], &err);
		CHECK(cl == NULL);
		if (err != cases[i].err)
			printf("# case %zu: errno %d\n", i, err);
		CHECK_EQ(err, cases[i].err);
		weft_assuan_client_free(cl);
		close(sv[1]);
		t_loop_free(loop);
	}
}

/* A server that never greets: the connect request times out. */
static void test_connect_timeout(void)
{
	weft_loop *loop = t_loop_new();
	int sv[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	weft_stream *s = NULL;
	CHECK_EQ(weft_stream_new_socket(loop, sv[0], &s), 0);
	weft_req *req = weft_assuan_client_adopt_send(loop, s);
	REQUIRE(req != NULL);
	CHECK_EQ(weft_req_set_timeout(req, 100), 0);
	uint64_t t0 = t_now_ms();
	int err = 0;
	weft_assuan_client *cl = connect_wait(loop, req, &err);
	uint64_t took = t_now_ms() - t0;
	CHECK(cl == NULL);
	CHECK_EQ(err, ETIMEDOUT);
	CHECK(took >= 90 && took < 5000);
	/* the greeting arriving now changes nothing (the client is gone) */
	ssize_t ignored = write(sv[1], "OK late\n", 8);
	(void)ignored;
	t_run_for(loop, 20);
	close(sv[1]);
	t_loop_free(loop);
}

static int make_file(const char *name, const char *content, char *path, size_t size);

/* Connect by name to a weft server listening on a Unix path: the plain
 * path libassuan takes and the "unix:" form; libassuan's redirect files;
 * a missing path; a name that cannot be a socket path. */
static void test_connect_path(void)
{
	weft_loop *loop = t_loop_new();
	memset(&g_srv, 0, sizeof(g_srv));
	weft_assuan_server *srv = test_server(loop, "path server");
	char path[128], addr[160];
	snprintf(path, sizeof(path), "%s/s1", g_dir);
	snprintf(addr, sizeof(addr), "unix:%s", path);
	CHECK_EQ(weft_assuan_server_listen(srv, addr, NULL), 0);
	char fileurl[160];
	snprintf(fileurl, sizeof(fileurl), "file://%s", path);
	const char *names[] = {path, addr, fileurl};
	for (int i = 0; i < 3; i++) {
		int err = 0;
		weft_assuan_client *cl = connect_wait(loop, weft_assuan_connect_send(loop, names[i]), &err);
		CHECK_EQ(err, 0);
		if (cl) {
			CHECK(strcmp(weft_assuan_client_greeting(cl), "path server") == 0);
			CHECK(weft_assuan_client_fd(cl) >= 0);
			expect_ok(loop, cl, "NOP");
		}
		weft_assuan_client_free(cl);
	}
	/* libassuan's redirect file in the socket's place: followed, with
	 * ${VAR} from the environment (an unset one is empty); a regular
	 * file in another format is connected to as it is (refused); a
	 * redirect that cannot be followed is an error of its own */
	setenv("WEFT_TEST_SOCKDIR", g_dir, 1);
	unsetenv("WEFT_TEST_UNSET");
	char long_target[300];
	memset(long_target, 'y', sizeof(long_target));
	long_target[0] = '/';
	long_target[sizeof(long_target) - 1] = '\0';
	struct {
		const char *content;
		int err;
	} redirects[] = {
		{"%Assuan%\nsocket=${WEFT_TEST_SOCKDIR}/s1\n", 0},
		{"%Assuan%\nsocket=${WEFT_TEST_UNSET}${WEFT_TEST_SOCKDIR}${}/s1\n", 0},
		{"just a file\n", ECONNREFUSED},
		{"%Assuan%\nsocket=/tmp/x", ECONNREFUSED}, /* no final LF: not a redirect */
		{"%Assuan%\nsocket=${WEFT_TEST_SOCKDIR/s1\n", EINVAL},
		{long_target, ENAMETOOLONG},
	};
	for (size_t i = 0; i < sizeof(redirects) / sizeof(redirects[0]); i++) {
		char rname[32], rpath[160], content[400];
		snprintf(rname, sizeof(rname), "redirect%zu", i);
		if (redirects[i].content == long_target)
			snprintf(content, sizeof(content), "%%Assuan%%\nsocket=%s\n", long_target);
		else
			snprintf(content, sizeof(content), "%s", redirects[i].content);
		int fd = make_file(rname, content, rpath, sizeof(rpath));
		REQUIRE(fd >= 0);
		close(fd);
		int err = 0;
		weft_assuan_client *cl = connect_wait(loop, weft_assuan_connect_send(loop, rpath), &err);
		CHECK_EQ(err, redirects[i].err);
		if (cl) {
			CHECK(strcmp(weft_assuan_client_greeting(cl), "path server") == 0);
			expect_ok(loop, cl, "NOP");
		}
		weft_assuan_client_free(cl);
		unlink(rpath);
	}
	unsetenv("WEFT_TEST_SOCKDIR");
	t_run_for(loop, 20);
	weft_assuan_server_free(srv);

	/* an abstract name, and TCP on 127.0.0.1 (port 0, read back) */
	char tcp[64];
	snprintf(addr, sizeof(addr), "unix:@weft-ac-%d", (int)getpid());
	for (int i = 0; i < 2; i++) {
		srv = test_server(loop, "other transports");
		CHECK_EQ(weft_assuan_server_listen(srv, i ? "tcp:127.0.0.1:0" : addr, NULL), 0);
		const char *name = addr;
		if (i) {
			weft_addr a;
			CHECK_EQ(weft_listener_addr(weft_assuan_server_listener(srv), &a), 0);
			snprintf(tcp, sizeof(tcp), "tcp:127.0.0.1:%d", weft_addr_port(&a));
			name = tcp;
		}
		int err = 0;
		weft_assuan_client *cl = connect_wait(loop, weft_assuan_connect_send(loop, name), &err);
		CHECK_EQ(err, 0);
		if (cl) {
			CHECK(strcmp(weft_assuan_client_greeting(cl), "other transports") == 0);
			struct tx t = {0};
			tx_run(&t, loop, cl, "BLOB 4000");
			blob_expect(t.data, t.dlen, 4000);
			/* no descriptors over TCP */
			if (i)
				CHECK_EQ(sendfd_sync(loop, cl, 0), -EOPNOTSUPP);
		}
		weft_assuan_client_free(cl);
		t_run_for(loop, 20);
		weft_assuan_server_free(srv);
	}
	srv = NULL;

	char missing[128];
	snprintf(missing, sizeof(missing), "%s/nothing-here", g_dir);
	int err = 0;
	CHECK(connect_wait(loop, weft_assuan_connect_send(loop, missing), &err) == NULL);
	CHECK_EQ(err, ENOENT);
	char longname[200];
	memset(longname, 'x', sizeof(longname));
	longname[0] = '/';
	longname[sizeof(longname) - 1] = '\0';
	CHECK(connect_wait(loop, weft_assuan_connect_send(loop, longname), &err) == NULL);
	CHECK_EQ(err, ENAMETOOLONG);
	CHECK(connect_wait(loop, weft_assuan_connect_send(loop, NULL), &err) == NULL);
	CHECK_EQ(err, EINVAL);
	CHECK(connect_wait(loop, weft_assuan_client_adopt_send(loop, NULL), &err) == NULL);
	CHECK_EQ(err, EINVAL);
	t_run_for(loop, 20);
	weft_assuan_server_free(srv);
	t_loop_free(loop);
}

/* ---- 2. transactions against the weft server ------------------------------ */

static void test_data_status_comments(void)
{
	struct pair p;
	if (!pair_open(&p, "line one\nline two\nready")) {
		pair_close(&p);
		return;
	}
	CHECK(strcmp(weft_assuan_client_greeting(p.cl), "ready") == 0);

	struct tx a = {0};
	if (tx_run(&a, p.loop, p.cl, "TALK")) {
		CHECK_EQ(a.r, 0);
		CHECK_EQ(a.answer, 0);
		CHECK_EQ(a.dlen, 6);
		CHECK(memcmp(a.data, "onetwo", 6) == 0);
		CHECK_EQ(a.ends, 1);
		CHECK(strcmp(a.status, "PROGRESS|primegen X 100 100\nBARE|\n") == 0);
		CHECK(strcmp(a.comments, "# a comment\n") == 0);
		CHECK(strcmp(a.okay, "all said") == 0);
		CHECK(strcmp(weft_assuan_client_okay_text(p.cl), "all said") == 0);
	}
	/* OK text is per command */
	struct tx b = {0};
	if (tx_run(&b, p.loop, p.cl, "NOP")) {
		CHECK_EQ(b.answer, 0);
		CHECK(strcmp(b.okay, "") == 0);
		CHECK_EQ(b.data_calls, 0);
	}
	/* 20000 bytes of every value: split over many D lines, escapes decoded */
	struct tx c = {0};
	if (tx_run(&c, p.loop, p.cl, "BLOB 20000")) {
		CHECK_EQ(c.answer, 0);
		blob_expect(c.data, c.dlen, 20000);
		CHECK(c.data_calls >= 20);
	}
	pair_close(&p);
}

static void test_err_values(void)
{
	struct pair p;
	if (pair_open(&p, NULL)) {
		struct tx a = {0}, b = {0}, c = {0}, d = {0};
		tx_run(&a, p.loop, p.cl, "FAIL 27");
		CHECK_EQ(a.r, 0);
		CHECK_EQ(a.answer, gpg_err_make(GPG_ERR_SOURCE_USER_1, GPG_ERR_NOT_FOUND)); /* 536870939 */
		CHECK_EQ(a.answer, 536870939u);
		tx_run(&b, p.loop, p.cl, "NOSUCHCOMMAND");
		CHECK_EQ(b.answer, 536871187u); /* Unknown IPC command <User defined source 1> */
		tx_run(&c, p.loop, p.cl, "nop"); /* registered upper case: case-insensitive */
		CHECK_EQ(c.answer, 0);
		tx_run(&d, p.loop, p.cl, "ECHO after errors");
		CHECK_EQ(d.answer, 0);
		CHECK_EQ(d.dlen, 12);
		CHECK(memcmp(d.data, "after errors", 12) == 0);
	}
	pair_close(&p);
}

/* Commands issued at once run one after the other, in order. */
static void test_queue_order(void)
{
	struct pair p;
	if (pair_open(&p, NULL)) {
		static const char *cmds[] = {"SLEEP 60", "ECHO b", "SLEEP 5", "FAIL 58", "ECHO e", "BLOB 3000"};
		enum { N = 6 };
		struct tx tx[N];
		memset(tx, 0, sizeof(tx));
		g_order = 0;
		for (int i = 0; i < N; i++)
			tx_start(&tx[i], p.cl, cmds[i]);
		CHECK(t_run_until(p.loop, &tx[N - 1].done, WAIT_MS));
		for (int i = 0; i < N; i++) {
			CHECK(tx[i].done);
			CHECK_EQ(tx[i].r, 0);
			CHECK_EQ(tx[i].order, i + 1);
		}
		CHECK(tx[0].dlen == 9 && memcmp(tx[0].data, "earlylate", 9) == 0);
		CHECK(tx[1].dlen == 1 && tx[1].data[0] == 'b');
		CHECK(tx[2].dlen == 9);
		CHECK_EQ(tx[3].answer, gpg_err_make(GPG_ERR_SOURCE_USER_1, GPG_ERR_NO_DATA));
		CHECK(tx[4].dlen == 1 && tx[4].data[0] == 'e');
		blob_expect(tx[5].data, tx[5].dlen, 3000);
		CHECK(strcmp(g_srv.log, "SLEEP,ECHO,SLEEP,FAIL,ECHO,BLOB,") == 0);
	}
	pair_close(&p);
}

/* An idle client writes a command before _send returns (no pass of the
 * loop), yet its callback never runs inside _send; a transaction started
 * from the previous one's callback goes out in the same pass; answer lines
 * that were buffered before the command was sent are still read. */
static struct tx g_chain[2];

static void chain_done(weft_req *req, void *data)
{
	tx_done(req, data);
	if (data == &g_chain[0])
		tx_start(&g_chain[1], g_chain[0].cl, "SECOND");
}

static void test_send_at_once(void)
{
	struct raw r;
	if (raw_open(&r, "OK\n")) {
		struct tx a = {0};
		tx_start(&a, r.cl, "FIRST x");
		raw_pull(&r); /* no loop run in between */
		CHECK(r.inlen == 8 && memcmp(r.in, "FIRST x\n", 8) == 0);
		CHECK(!a.done);
		r.inlen = 0;
		raw_send(&r, "OK fine\n");
		CHECK(t_run_until(r.loop, &a.done, WAIT_MS));
		CHECK_EQ(a.r, 0);
		CHECK(strcmp(a.okay, "fine") == 0);

		/* the answer arrives with the next command's answer behind it:
		 * the chained one is sent from the callback, in the same pass */
		memset(g_chain, 0, sizeof(g_chain));
		g_chain[0].cl = r.cl;
		g_chain[0].req = weft_assuan_transact_send(r.cl, "FIRST", NULL, &g_chain[0]);
		REQUIRE(g_chain[0].req != NULL);
		weft_req_set_callback(g_chain[0].req, chain_done, &g_chain[0]);
		CHECK(raw_expect(&r, "FIRST\n"));
		raw_send(&r, "OK\nERR 5 two\n");
		CHECK(t_run_until(r.loop, &g_chain[1].done, WAIT_MS));
		CHECK(raw_expect(&r, "SECOND\n"));
		CHECK_EQ(g_chain[0].r, 0);
		CHECK_EQ(g_chain[0].answer, 0);
		CHECK(strcmp(g_chain[0].okay, "") == 0);
		CHECK_EQ(g_chain[1].r, 0);
		CHECK_EQ(g_chain[1].answer, 5);

		/* sent at once to a server that is gone: the error comes from
		 * the loop, not from inside _send */
		close(r.fd);
		r.fd = -1;
		t_run_for(r.loop, 10);
		struct tx c = {0};
		tx_start(&c, r.cl, "THIRD");
		CHECK(!c.done);
		CHECK(t_run_until(r.loop, &c.done, WAIT_MS));
		CHECK(c.r == -EPIPE || c.r == -ECONNRESET);
		tx_fini(&c);
		tx_fini(&a);
	}
	raw_close(&r);
}

/* Many transactions queued at once: all answered, in order, quickly. */
static int g_many_done, g_many_bad;

static void many_done(weft_req *req, void *data)
{
	weft_assuan_err e = 1;
	int r = weft_assuan_transact_recv(req, &e, NULL);
	if (r != 0 || e != 0 || (intptr_t)data != g_many_done)
		g_many_bad++;
	g_many_done++;
	weft_req_free(req);
}

static void test_queue_many(void)
{
	struct pair p;
	if (pair_open(&p, NULL)) {
		enum { N = 5000 };
		g_many_done = g_many_bad = 0;
		uint64_t t0 = t_now_ms();
		for (intptr_t i = 0; i < N; i++) {
			weft_req *req = weft_assuan_transact_send(p.cl, i % 2 ? "NOP" : "ECHO x", NULL, NULL);
			REQUIRE(req != NULL);
			weft_req_set_callback(req, many_done, (void *)i);
		}
		bool all = false;
		for (uint64_t end = t_now_ms() + 30000; !all && t_now_ms() < end;) {
			weft_loop_run(p.loop, WEFT_RUN_ONCE);
			all = g_many_done == N;
		}
		CHECK(all);
		CHECK_EQ(g_many_bad, 0);
		printf("# %d transactions in %llu ms\n", N, (unsigned long long)(t_now_ms() - t0));
	}
	pair_close(&p);
}

/* Bad commands are refused before anything is sent. */
static void test_bad_commands(void)
{
	struct pair p;
	if (pair_open(&p, NULL)) {
		char longcmd[WEFT_ASSUAN_LINELENGTH + 8];
		memset(longcmd, 'x', sizeof(longcmd));
		longcmd[sizeof(longcmd) - 1] = '\0';
		const char *bad[] = {"NOP\nNOP", "", longcmd};
		for (int i = 0; i < 3; i++) {
			struct tx tx = {0};
			tx_run(&tx, p.loop, p.cl, bad[i]);
			CHECK_EQ(tx.r, -EINVAL);
		}
		/* 1000 characters are fine (the server answers Unknown command) */
		longcmd[1000] = '\0';
		struct tx ok = {0};
		tx_run(&ok, p.loop, p.cl, longcmd);
		CHECK_EQ(ok.r, 0);
		CHECK_EQ(ok.answer, 536871187u);
		CHECK(weft_assuan_transact_send(NULL, "NOP", NULL, NULL) == NULL);
		expect_ok(p.loop, p.cl, "NOP");
		/* no callbacks at all */
		weft_req *req = weft_assuan_transact_send(p.cl, "BLOB 100", NULL, NULL);
		REQUIRE(req != NULL);
		CHECK_EQ(weft_req_wait(req), 0);
		weft_assuan_err e = 1;
		CHECK_EQ(weft_assuan_transact_recv(req, &e, NULL), 0);
		CHECK_EQ(e, 0);
		weft_req_free(req);
		CHECK(strcmp(g_srv.log, "NOP,BLOB,") == 0); /* unknown commands do not reach pre_cmd */
	}
	pair_close(&p);
}

/* ---- 3. INQUIRE ------------------------------------------------------------ */

static void test_inquire_now_and_later(void)
{
	struct pair p;
	if (!pair_open(&p, NULL)) {
		pair_close(&p);
		return;
	}
	/* answered inside the callback; bytes that need escaping */
	static const char val[] = "100% sure\r\nline two\n%41";
	struct tx a = {.mode = INQ_NOW, .inq_answer = val};
	if (tx_run(&a, p.loop, p.cl, "ASK KEYPARAM more args")) {
		CHECK_EQ(a.answer, 0);
		CHECK(strcmp(a.inq, "KEYPARAM|more args\n") == 0);
		CHECK_EQ(a.dlen, sizeof(val) - 1);
		CHECK(memcmp(a.data, val, sizeof(val) - 1) == 0);
		CHECK_EQ(g_srv.inq_err, 0);
	}
	/* answered later, from a timer; a big binary answer */
	unsigned char *big = malloc(5000);
	REQUIRE(big != NULL);
	for (size_t i = 0; i < 5000; i++)
		big[i] = (unsigned char)(i * 7 + (i >> 8));
	struct tx b = {.mode = INQ_LATER, .inq_answer = (const char *)big, .inq_answer_len = 5000};
	if (tx_run(&b, p.loop, p.cl, "ASK")) {
		CHECK_EQ(b.answer, 0);
		CHECK(strcmp(b.inq, "VALUE|\n") == 0);
		blob_expect(b.data, b.dlen, 5000);
	}
	tx_fini(&b);
	free(big);
	/* CAN: the server's inquire ends with ASS_CANCELED, its answer */
	struct tx c = {.mode = INQ_CAN};
	if (tx_run(&c, p.loop, p.cl, "ASK")) {
		CHECK_EQ(c.r, 0);
		CHECK_EQ(gpg_err_code(c.answer), GPG_ERR_ASS_CANCELED);
		CHECK_EQ(gpg_err_code(g_srv.inq_err), GPG_ERR_ASS_CANCELED);
	}
	/* no inquire callback: answered CAN */
	struct tx d = {.mode = INQ_NONE};
	if (tx_run(&d, p.loop, p.cl, "ASK")) {
		CHECK_EQ(gpg_err_code(d.answer), GPG_ERR_ASS_CANCELED);
		CHECK_EQ(d.inquires, 0);
	}
	/* the callback fails: its value is the answer, CAN goes to the server,
	 * the server's own answer is dropped */
	struct tx e = {.mode = INQ_FAIL, .fail = gpg_err_make(GPG_ERR_SOURCE_USER_2, GPG_ERR_CANCELED)};
	if (tx_run(&e, p.loop, p.cl, "ASK")) {
		CHECK_EQ(e.r, 0);
		CHECK_EQ(e.answer, gpg_err_make(GPG_ERR_SOURCE_USER_2, GPG_ERR_CANCELED));
	}
	struct tx f = {0};
	if (tx_run(&f, p.loop, p.cl, "ECHO next")) {
		CHECK_EQ(f.answer, 0);
		CHECK(f.dlen == 4 && memcmp(f.data, "next", 4) == 0);
		CHECK_EQ(gpg_err_code(g_srv.inq_err), GPG_ERR_ASS_CANCELED);
	}
	/* answering when no INQUIRE waits */
	CHECK_EQ(weft_assuan_client_inquire_data(p.cl, "x", 1), -EINVAL);
	CHECK_EQ(weft_assuan_client_inquire_end(p.cl), -EINVAL);
	CHECK_EQ(weft_assuan_client_inquire_cancel(p.cl), -EINVAL);
	CHECK_EQ(g_srv.inq_calls, 5);
	pair_close(&p);
}

/* The exact bytes of an INQUIRE dialogue. */
static void test_inquire_wire(void)
{
	struct raw r;
	if (raw_open(&r, "OK\n")) {
		static const char val[] = "a%b\rc\nd";
		struct tx a = {.mode = INQ_NOW, .inq_answer = val};
		tx_start(&a, r.cl, "GENKEY");
		raw_expect(&r, "GENKEY\n");
		raw_send(&r, "S INQUIRE_MAXLEN 1024\nINQUIRE KEYPARAM\n");
		raw_expect(&r, "D a%25b%0Dc%0Ad\nEND\n");
		raw_send(&r, "D result\nOK\n");
		CHECK(t_run_until(r.loop, &a.done, WAIT_MS));
		CHECK_EQ(a.answer, 0);
		CHECK(strcmp(a.status, "INQUIRE_MAXLEN|1024\n") == 0);

		/* CAN from the callback; two INQUIREs in one transaction */
		struct tx b = {.mode = INQ_CAN};
		tx_start(&b, r.cl, "TWICE");
		raw_expect(&r, "TWICE\n");
		raw_send(&r, "INQUIRE ONE\n");
		raw_expect(&r, "CAN\n");
		raw_send(&r, "INQUIRE TWO x\n");
		raw_expect(&r, "CAN\n");
		raw_send(&r, "ERR 67109141 IPC call has been cancelled <GPG Agent>\n");
		CHECK(t_run_until(r.loop, &b.done, WAIT_MS));
		CHECK_EQ(b.answer, 67109141u);
		CHECK(strcmp(b.inq, "ONE|\nTWO|x\n") == 0);

		/* an empty answer: just END */
		struct tx c = {.mode = INQ_NOW, .inq_answer = ""};
		tx_start(&c, r.cl, "EMPTY");
		raw_expect(&r, "EMPTY\n");
		raw_send(&r, "INQUIRE PINENTRY_LAUNCHED 1234\n");
		raw_expect(&r, "END\n");
		raw_send(&r, "OK\n");
		CHECK(t_run_until(r.loop, &c.done, WAIT_MS));
		CHECK_EQ(c.answer, 0);
		raw_expect_nothing(&r, 20);
	}
	raw_close(&r);
}

/* ---- 4. the answer, byte by byte ------------------------------------------ */

static const char answer_bytes[] =
	"S PROGRESS primegen X 100 100\n"
	"S KW\n"
	"# a comment\n"
	"D line%0Awith%25escapes%0D\n"
	"D \x01\x02\xff raw %41%4a%zz%\n"
	"D %2\n"
	"END\n"
	"D more\r\n"
	"OK fine text\n";
static const char answer_data[] = "line\nwith%escapes\r\x01\x02\xff raw AJ%zz%%2more";

static void check_answer(struct tx *tx)
{
	CHECK_EQ(tx->r, 0);
	CHECK_EQ(tx->answer, 0);
	CHECK_EQ(tx->dlen, sizeof(answer_data) - 1);
	CHECK(memcmp(tx->data, answer_data, sizeof(answer_data) - 1) == 0);
	CHECK_EQ(tx->ends, 1);
	CHECK(strcmp(tx->status, "PROGRESS|primegen X 100 100\nKW|\n") == 0);
	CHECK(strcmp(tx->comments, "# a comment\n") == 0);
	CHECK(strcmp(tx->okay, "fine text") == 0);
}

static void test_answer_lines(void)
{
	struct raw r;
	if (raw_open(&r, "OK\n")) {
		struct tx a = {0};
		tx_start(&a, r.cl, "X");
		raw_expect(&r, "X\n");
		raw_send(&r, answer_bytes);
		CHECK(t_run_until(r.loop, &a.done, WAIT_MS));
		check_answer(&a);

		/* every split point: one byte at a time */
		struct tx b = {0};
		tx_start(&b, r.cl, "Y");
		raw_expect(&r, "Y\n");
		for (const char *p = answer_bytes; *p; p++) {
			raw_send_n(&r, p, 1);
			for (int i = 0; i < 2; i++)
				weft_loop_run(r.loop, WEFT_RUN_NOWAIT);
		}
		CHECK(t_run_until(r.loop, &b.done, WAIT_MS));
		check_answer(&b);

		/* NUL bytes inside a D line */
		struct tx z = {0};
		tx_start(&z, r.cl, "Z");
		raw_expect(&r, "Z\n");
		raw_send_n(&r, "D a\0b\0\nOK\n", 10);
		CHECK(t_run_until(r.loop, &z.done, WAIT_MS));
		CHECK(z.dlen == 4 && memcmp(z.data, "a\0b\0", 4) == 0);

		/* ERR values: with text, bare number, no number */
		static const struct {
			const char *line;
			weft_assuan_err want;
		} errs[] = {
			{"ERR 67109139 Unknown IPC command <GPG Agent>\n", 67109139u},
			{"ERR 16777281\n", 16777281u},
			{"ERR\n", GPG_ERR_GENERAL},
			/* an ERR is never an OK (libassuan's atoi would make these 0) */
			{"ERR Something went wrong\n", GPG_ERR_GENERAL},
			{"ERR 0 zero\n", GPG_ERR_GENERAL},
		};
		for (int i = 0; i < 5; i++) {
			struct tx e = {0};
			tx_start(&e, r.cl, "E");
			raw_expect(&r, "E\n");
			raw_send(&r, errs[i].line);
			CHECK(t_run_until(r.loop, &e.done, WAIT_MS));
			CHECK_EQ(e.r, 0);
			CHECK_EQ(e.answer, errs[i].want);
		}
		/* several answers in one write */
		struct tx q[3];
		memset(q, 0, sizeof(q));
		for (int i = 0; i < 3; i++)
			tx_start(&q[i], r.cl, "Q");
		raw_expect(&r, "Q\n");
		raw_send(&r, "D 1\nOK\nD 2\nOK\nD 3\nOK\n");
		raw_expect(&r, "Q\n");
		raw_expect(&r, "Q\n");
		CHECK(t_run_until(r.loop, &q[2].done, WAIT_MS));
		for (int i = 0; i < 3; i++)
			CHECK(q[i].dlen == 1 && q[i].data[0] == '1' + i);
	}
	raw_close(&r);
}

/* client_free says BYE (best effort, as libassuan), and nothing else. */
static void test_free_says_bye(void)
{
	struct raw r;
	if (raw_open(&r, "OK\n")) {
		raw_expect_nothing(&r, 10);
		weft_assuan_client_free(r.cl);
		r.cl = NULL;
		raw_pull(&r);
		CHECK(r.inlen == 4 && memcmp(r.in, "BYE\n", 4) == 0);
	}
	raw_close(&r);
	/* freed with a transaction in flight: it completes ECANCELED */
	if (raw_open(&r, "OK\n")) {
		struct tx a = {0};
		tx_start(&a, r.cl, "X");
		raw_expect(&r, "X\n");
		weft_assuan_client_free(r.cl);
		r.cl = NULL;
		CHECK(a.done);
		CHECK_EQ(a.r, -ECANCELED);
		raw_pull(&r);
		CHECK(r.inlen == 4 && memcmp(r.in, "BYE\n", 4) == 0);
	}
	raw_close(&r);
}

/* Random answers in random pieces: 300 transactions, each answer made of
 * D lines (random bytes, escaped, split anywhere), S lines, comments, END
 * lines and an OK or ERR, written in chunks of 1..64 bytes with loop
 * passes in between now and then.  Seeded: the same run every time
 * (WEFT_TEST_SEED=n for another). */
static unsigned g_rand = 12345;
static uint64_t g_random_bytes;

static unsigned rnd(unsigned n)
{
	g_rand = g_rand * 1103515245u + 12345u;
	return (g_rand >> 8) % n;
}

static void test_answer_random(void)
{
	struct raw r;
	if (!raw_open(&r, "OK\n")) {
		raw_close(&r);
		return;
	}
	enum { N = 300 };
	const char *seed = getenv("WEFT_TEST_SEED"); /* another run */
	if (seed != NULL)
		g_rand = (unsigned)strtoul(seed, NULL, 10);
	size_t cap = 1 << 20;
	char *wire = malloc(cap);
	unsigned char *want = malloc(65536);
	struct tx *tx = calloc(1, sizeof(*tx));
	REQUIRE(wire != NULL && want != NULL && tx != NULL);
	int bad = 0;
	for (int t = 0; t < N && !bad; t++) {
		size_t w = 0, wl = 0;
		char st[2048] = "";
		int ends = 0;
		int parts = (int)rnd(6);
		for (int k = 0; k < parts; k++) {
			switch (rnd(4)) {
			case 0: { /* a D line of random bytes */
				size_t n = 1 + rnd(300);
				w += (size_t)snprintf(wire + w, cap - w, "D ");
				for (size_t i = 0; i < n; i++) {
					unsigned char c = (unsigned char)rnd(256);
					want[wl++] = c;
					if (c == '%' || c == '\r' || c == '\n' || rnd(8) == 0)
						w += (size_t)snprintf(wire + w, cap - w, rnd(2) ? "%%%02X" : "%%%02x", c);
					else
						wire[w++] = (char)c;
				}
				wire[w++] = '\n';
				break;
			}
			case 1: { /* S */
				char line[64];
				snprintf(line, sizeof(line), "KW%u|a %u b", rnd(100), rnd(1000));
				cat(st, sizeof(st), line, "\n", "");
				char *bar = strchr(line, '|');
				*bar = '\0';
				w += (size_t)snprintf(wire + w, cap - w, "S %s %s\n", line, bar + 1);
				break;
			}
			case 2:
				w += (size_t)snprintf(wire + w, cap - w, "# comment %u\n", rnd(100));
				break;
			default:
				w += (size_t)snprintf(wire + w, cap - w, "END\n");
				ends++;
				break;
			}
		}
		weft_assuan_err answer = rnd(3) ? 0 : 1 + rnd(100000);
		if (answer)
			w += (size_t)snprintf(wire + w, cap - w, "ERR %u random failure <x>\n", answer);
		else
			w += (size_t)snprintf(wire + w, cap - w, "OK\n");
		g_random_bytes += w;
		memset(tx, 0, sizeof(*tx));
		tx_start(tx, r.cl, "R");
		if (!raw_expect(&r, "R\n")) {
			bad = 1;
			break;
		}
		for (size_t off = 0; off < w;) {
			size_t n = 1 + rnd(64);
			if (n > w - off)
				n = w - off;
			raw_send_n(&r, wire + off, n);
			off += n;
			if (rnd(2))
				weft_loop_run(r.loop, WEFT_RUN_NOWAIT);
		}
		if (!t_run_until(r.loop, &tx->done, WAIT_MS)) {
			bad = 2;
			break;
		}
		if (tx->r != 0 || tx->answer != answer || tx->dlen != wl || memcmp(tx->data, want, wl) != 0 ||
		    tx->ends != ends || strcmp(tx->status, st) != 0) {
			printf("# transaction %d: r %d answer %u/%u data %zu/%zu ends %d/%d\n", t, tx->r, tx->answer,
					answer, tx->dlen, wl, tx->ends, ends);
			bad = 3;
		}
	}
	CHECK_EQ(bad, 0);
	printf("# %d answers, %llu bytes of them\n", N, (unsigned long long)g_random_bytes);
	free(tx);
	free(want);
	free(wire);
	raw_close(&r);
}

/* Lines that are no Assuan answer: the transaction fails with EPROTO and
 * the connection is over. */
static void test_answer_garbage(void)
{
	char longline[1100];
	memset(longline, 'D', sizeof(longline));
	longline[1] = ' ';
	longline[sizeof(longline) - 2] = '\n';
	longline[sizeof(longline) - 1] = '\0';
	const char *bad[] = {"FOO bar\n", "OKAY\n", longline};
	for (int i = 0; i < 3; i++) {
		struct raw r;
		if (raw_open(&r, "OK\n")) {
			struct tx a = {0}, b = {0};
			tx_start(&a, r.cl, "X");
			tx_start(&b, r.cl, "Y");
			raw_expect(&r, "X\n");
			raw_send(&r, bad[i]);
			CHECK(t_run_until(r.loop, &b.done, WAIT_MS));
			CHECK_EQ(a.r, -EPROTO);
			CHECK_EQ(b.r, -EPROTO);
			struct tx c = {0};
			tx_run(&c, r.loop, r.cl, "Z");
			CHECK(c.r < 0);
		}
		raw_close(&r);
	}
}

/* ---- 5. callbacks that end the transaction ------------------------------- */

static void test_callback_ends(void)
{
	struct raw r;
	if (raw_open(&r, "OK\n")) {
		/* the data callback fails: that is the answer; the rest of the
		 * server's answer is dropped; the next transaction waits for it */
		struct tx a = {.fail = 12345};
		struct tx b = {0};
		tx_start(&a, r.cl, "A");
		tx_start(&b, r.cl, "B");
		raw_expect(&r, "A\n");
		raw_send(&r, "D first\n");
		CHECK(t_run_until(r.loop, &a.done, WAIT_MS));
		CHECK_EQ(a.r, 0);
		CHECK_EQ(a.answer, 12345);
		raw_expect_nothing(&r, 30); /* B waits for A's real answer */
		raw_send(&r, "D second\nS X y\nINQUIRE Z\n");
		raw_expect(&r, "CAN\n"); /* nobody listens: CAN */
		raw_send(&r, "OK\n");
		raw_expect(&r, "B\n");
		raw_send(&r, "D b\nOK\n");
		CHECK(t_run_until(r.loop, &b.done, WAIT_MS));
		CHECK(b.dlen == 1 && b.data[0] == 'b');
		CHECK(strcmp(b.status, "") == 0);

		/* the status callback fails */
		struct tx c = {.fail = 777};
		tx_start(&c, r.cl, "C");
		raw_expect(&r, "C\n");
		raw_send(&r, "S ONE\nS TWO\nOK\n");
		CHECK(t_run_until(r.loop, &c.done, WAIT_MS));
		CHECK_EQ(c.answer, 777);
		CHECK(strcmp(c.status, "ONE|\n") == 0);

		/* the inquire callback fails while the transaction is in an INQUIRE */
		struct tx d = {.mode = INQ_FAIL, .fail = 999};
		tx_start(&d, r.cl, "D");
		raw_expect(&r, "D\n");
		raw_send(&r, "INQUIRE KW\n");
		raw_expect(&r, "CAN\n");
		CHECK(t_run_until(r.loop, &d.done, WAIT_MS));
		CHECK_EQ(d.answer, 999);
		struct tx e = {0};
		tx_start(&e, r.cl, "NOP");
		raw_expect_nothing(&r, 20); /* D's real answer is not in yet */
		raw_send(&r, "ERR 277 cancelled\n");
		raw_expect(&r, "NOP\n");
		raw_send(&r, "OK\n");
		CHECK(t_run_until(r.loop, &e.done, WAIT_MS));
		CHECK_EQ(e.answer, 0);
	}
	raw_close(&r);
}

/* ---- 6. cancellation and timeouts --------------------------------------- */

/* Cancelled while waiting for the answer: ECANCELED at once, the answer is
 * dropped when it comes, the next transaction works. */
static void test_cancel_waiting(void)
{
	struct pair p;
	if (pair_open(&p, NULL)) {
		struct tx a = {0}, b = {0};
		tx_start(&a, p.cl, "SLEEP 400");
		t_run_for(p.loop, 20); /* it runs on the server; "D early" came */
		CHECK(!a.done);
		CHECK_EQ(weft_req_cancel(a.req), 0);
		uint64_t t0 = t_now_ms();
		CHECK(t_run_until(p.loop, &a.done, WAIT_MS));
		CHECK(t_now_ms() - t0 < 300); /* not when the answer comes */
		CHECK_EQ(a.r, -ECANCELED);
		tx_run(&b, p.loop, p.cl, "ECHO fresh");
		CHECK_EQ(b.r, 0);
		CHECK_EQ(b.answer, 0);
		CHECK(b.dlen == 5 && memcmp(b.data, "fresh", 5) == 0);
		CHECK(strcmp(g_srv.log, "SLEEP,ECHO,") == 0);
		CHECK_EQ(weft_req_cancel(NULL) < 0, 1);
	}
	pair_close(&p);
}

/* The same on the wire: nothing is sent until the old answer is in, and
 * its lines reach nobody. */
static void test_cancel_waiting_wire(void)
{
	struct raw r;
	if (raw_open(&r, "OK\n")) {
		struct tx a = {0}, b = {0};
		tx_start(&a, r.cl, "SLOW");
		raw_expect(&r, "SLOW\n");
		raw_send(&r, "D part\n");
		t_run_for(r.loop, 10);
		CHECK_EQ(weft_req_cancel(a.req), 0);
		CHECK(t_run_until(r.loop, &a.done, WAIT_MS));
		CHECK_EQ(a.r, -ECANCELED);
		tx_start(&b, r.cl, "NEXT");
		raw_expect_nothing(&r, 30);
		raw_send(&r, "D rest\nS STALE\nOK\n");
		raw_expect(&r, "NEXT\n");
		raw_send(&r, "D new\nOK\n");
		CHECK(t_run_until(r.loop, &b.done, WAIT_MS));
		CHECK_EQ(b.answer, 0);
		CHECK(b.dlen == 3 && memcmp(b.data, "new", 3) == 0);
		CHECK(strcmp(b.status, "") == 0);
	}
	raw_close(&r);
}

/* Cancelled while an INQUIRE waits for our answer: CAN is sent. */
static void test_cancel_inquire(void)
{
	struct pair p;
	if (pair_open(&p, NULL)) {
		struct tx a = {.mode = INQ_WAIT};
		tx_start(&a, p.cl, "ASK");
		for (int i = 0; i < 500 && a.inquires == 0; i++)
			t_run_for(p.loop, 2);
		CHECK_EQ(a.inquires, 1);
		CHECK_EQ(weft_req_cancel(a.req), 0);
		CHECK(t_run_until(p.loop, &a.done, WAIT_MS));
		CHECK_EQ(a.r, -ECANCELED);
		CHECK_EQ(weft_assuan_client_inquire_end(p.cl), -EINVAL); /* too late */
		expect_ok(p.loop, p.cl, "NOP");
		CHECK_EQ(gpg_err_code(g_srv.inq_err), GPG_ERR_ASS_CANCELED);
		CHECK(strcmp(g_srv.log, "ASK,NOP,") == 0);
	}
	pair_close(&p);

	/* on the wire; half an answer was given: the D line is ended first */
	struct raw r;
	if (raw_open(&r, "OK\n")) {
		struct tx a = {.mode = INQ_WAIT};
		tx_start(&a, r.cl, "ASK");
		raw_expect(&r, "ASK\n");
		raw_send(&r, "INQUIRE X\n");
		for (int i = 0; i < 500 && a.inquires == 0; i++)
			t_run_for(r.loop, 2);
		CHECK_EQ(weft_assuan_client_inquire_data(r.cl, "half", 4), 0);
		CHECK_EQ(weft_req_cancel(a.req), 0);
		CHECK(t_run_until(r.loop, &a.done, WAIT_MS));
		raw_expect(&r, "D half\nCAN\n");
		raw_send(&r, "ERR 67109141 IPC call has been cancelled <GPG Agent>\n");
		struct tx b = {0};
		tx_start(&b, r.cl, "NOP");
		raw_expect(&r, "NOP\n");
		raw_send(&r, "OK\n");
		CHECK(t_run_until(r.loop, &b.done, WAIT_MS));
		CHECK_EQ(b.answer, 0);
	}
	raw_close(&r);
}

/* Cancelled while still queued: it is never sent. */
static void test_cancel_queued(void)
{
	struct pair p;
	if (pair_open(&p, NULL)) {
		struct tx a = {0}, b = {0}, c = {0};
		g_order = 0;
		tx_start(&a, p.cl, "SLEEP 30");
		tx_start(&b, p.cl, "ECHO never");
		tx_start(&c, p.cl, "ECHO third");
		CHECK_EQ(weft_req_cancel(b.req), 0);
		CHECK(t_run_until(p.loop, &c.done, WAIT_MS));
		CHECK_EQ(b.r, -ECANCELED);
		CHECK_EQ(b.order, 1);
		CHECK_EQ(a.r, 0);
		CHECK_EQ(c.r, 0);
		CHECK(c.dlen == 5 && memcmp(c.data, "third", 5) == 0);
		CHECK(strcmp(g_srv.log, "SLEEP,ECHO,") == 0);
		/* freeing a queued request abandons it the same way */
		struct tx d = {0}, e = {0}, f = {0};
		tx_start(&d, p.cl, "SLEEP 20");
		tx_start(&e, p.cl, "ECHO dropped");
		tx_start(&f, p.cl, "ECHO last");
		weft_req_free(e.req);
		CHECK(t_run_until(p.loop, &f.done, WAIT_MS));
		CHECK(!e.done);
		CHECK(f.dlen == 4 && memcmp(f.data, "last", 4) == 0);
		CHECK(strcmp(g_srv.log, "SLEEP,ECHO,SLEEP,ECHO,") == 0);
	}
	pair_close(&p);
}

/* A per-transaction timeout: ETIMEDOUT, the connection stays usable. */
static void test_timeout(void)
{
	struct pair p;
	if (pair_open(&p, NULL)) {
		struct tx a = {0}, b = {0};
		tx_start(&a, p.cl, "SLEEP 1000");
		CHECK_EQ(weft_req_set_timeout(a.req, 50), 0);
		tx_start(&b, p.cl, "ECHO after");
		uint64_t t0 = t_now_ms();
		CHECK(t_run_until(p.loop, &a.done, WAIT_MS));
		uint64_t took = t_now_ms() - t0;
		CHECK_EQ(a.r, -ETIMEDOUT);
		CHECK(took >= 40 && took < 900);
		CHECK(t_run_until(p.loop, &b.done, WAIT_MS));
		CHECK_EQ(b.r, 0);
		CHECK(b.dlen == 5 && memcmp(b.data, "after", 5) == 0);
		/* a timeout that does not expire changes nothing */
		struct tx c = {0};
		tx_start(&c, p.cl, "ECHO quick");
		CHECK_EQ(weft_req_set_timeout(c.req, 5000), 0);
		CHECK(t_run_until(p.loop, &c.done, WAIT_MS));
		CHECK_EQ(c.r, 0);
	}
	pair_close(&p);
}

/* A timeout while an INQUIRE waits (CAN goes out) and while queued (never
 * sent). */
static void test_timeout_inquire_queued(void)
{
	struct raw r;
	if (raw_open(&r, "OK\n")) {
		struct tx a = {.mode = INQ_WAIT}, b = {0}, c = {0};
		tx_start(&a, r.cl, "ASK");
		tx_start(&b, r.cl, "QUEUED");
		tx_start(&c, r.cl, "LAST");
		CHECK_EQ(weft_req_set_timeout(b.req, 30), 0);
		raw_expect(&r, "ASK\n");
		raw_send(&r, "INQUIRE KEY\n");
		for (int i = 0; i < 500 && a.inquires == 0; i++)
			t_run_for(r.loop, 2);
		CHECK(t_run_until(r.loop, &b.done, WAIT_MS));
		CHECK_EQ(b.r, -ETIMEDOUT);
		CHECK_EQ(weft_req_set_timeout(a.req, 30), 0);
		CHECK(t_run_until(r.loop, &a.done, WAIT_MS));
		CHECK_EQ(a.r, -ETIMEDOUT);
		raw_expect(&r, "CAN\n");
		raw_expect_nothing(&r, 20);
		raw_send(&r, "ERR 67109141 IPC call has been cancelled\n");
		raw_expect(&r, "LAST\n"); /* QUEUED was never sent */
		raw_send(&r, "OK\n");
		CHECK(t_run_until(r.loop, &c.done, WAIT_MS));
		CHECK_EQ(c.r, 0);
		CHECK_EQ(c.answer, 0);
		CHECK_EQ(weft_req_set_timeout(NULL, 5) < 0, 1);
	}
	raw_close(&r);
}

static int sendfd_sync(weft_loop *loop, weft_assuan_client *cl, int fd);

/* ---- 7. the server goes away ---------------------------------------------- */

static void test_server_dies(void)
{
	struct pair p;
	if (pair_open(&p, NULL)) {
		struct tx a = {0}, b = {0}, c = {0};
		tx_start(&a, p.cl, "DIE");
		tx_start(&b, p.cl, "NOP");
		tx_start(&c, p.cl, "NOP");
		CHECK(t_run_until(p.loop, &c.done, WAIT_MS));
		CHECK(a.r == -EPIPE || a.r == -ECONNRESET);
		CHECK(b.r == a.r && c.r == a.r);
		CHECK(a.dlen == 5 && memcmp(a.data, "dying", 5) == 0);
		CHECK(a.order < b.order && b.order < c.order);
		/* later transactions fail at once */
		struct tx d = {0};
		tx_run(&d, p.loop, p.cl, "NOP");
		CHECK(d.r == -EPIPE || d.r == -ECONNRESET);
		char buf[WEFT_ASSUAN_LINELENGTH];
		CHECK_EQ(weft_assuan_client_read_line(p.cl, buf, sizeof(buf)), -EPIPE);
		CHECK_EQ(weft_assuan_client_write_line(p.cl, "NOP"), -EPIPE);
		CHECK_EQ(g_srv.closes, 1);
	}
	pair_close(&p);

	/* the server closes while the client is idle: the next transaction
	 * fails, so does a sendfd */
	if (pair_open(&p, NULL)) {
		weft_assuan_conn_close(p.conn);
		t_run_for(p.loop, 20);
		struct tx a = {0};
		tx_run(&a, p.loop, p.cl, "NOP");
		CHECK(a.r == -EPIPE || a.r == -ECONNRESET);
		CHECK_EQ(sendfd_sync(p.loop, p.cl, 0) < 0, 1);
	}
	pair_close(&p);

	/* a fake server closes with unread input: ECONNRESET or EPIPE */
	struct raw r;
	if (raw_open(&r, "OK\n")) {
		struct tx a = {0}, b = {0};
		tx_start(&a, r.cl, "X");
		tx_start(&b, r.cl, "Y");
		raw_expect(&r, "X\n");
		raw_send(&r, "D partial answ");
		t_run_for(r.loop, 10);
		close(r.fd);
		r.fd = -1;
		CHECK(t_run_until(r.loop, &b.done, WAIT_MS));
		CHECK(a.r == -EPIPE || a.r == -ECONNRESET);
		CHECK_EQ(b.r, a.r);
	}
	raw_close(&r);
}

/* ---- 8. freeing the client from its own callbacks ------------------------ */

static void connect_take_free(weft_req *req, void *data)
{
	weft_assuan_client *cl = NULL;
	CHECK_EQ(weft_assuan_connect_recv(req, &cl, NULL), 0);
	weft_req_free(req);
	weft_assuan_client_free(cl);
	*(bool *)data = true;
}

static void connect_drop(weft_req *req, void *data)
{
	weft_req_free(req); /* the client nobody took is freed with it */
	*(bool *)data = true;
}

static void test_free_in_callback(void)
{
	/* from a completion callback: the queued ones complete with ECANCELED,
	 * in order, before client_free returns */
	struct pair p;
	if (pair_open(&p, NULL)) {
		struct tx a = {.free_in_done = true}, b = {0}, c = {0};
		g_order = 0;
		tx_start(&a, p.cl, "ECHO x");
		tx_start(&b, p.cl, "ECHO y");
		tx_start(&c, p.cl, "ECHO z");
		CHECK(t_run_until(p.loop, &c.done, WAIT_MS));
		CHECK_EQ(a.r, 0);
		CHECK_EQ(b.r, -ECANCELED);
		CHECK_EQ(c.r, -ECANCELED);
		CHECK(a.order == 1 && b.order == 2 && c.order == 3);
		p.cl = NULL;
	}
	pair_close(&p);

	/* from a data callback, returning 0 and returning an error */
	for (int fail = 0; fail < 2; fail++) {
		if (pair_open(&p, NULL)) {
			struct tx a = {.free_in_data = true, .fail = fail ? 5 : 0}, b = {0};
			tx_start(&a, p.cl, "BLOB 5000");
			tx_start(&b, p.cl, "NOP");
			CHECK(t_run_until(p.loop, &b.done, WAIT_MS));
			CHECK(a.done);
			CHECK_EQ(a.r, -ECANCELED);
			CHECK_EQ(b.r, -ECANCELED);
			CHECK_EQ(a.data_calls, 1);
			p.cl = NULL;
		}
		pair_close(&p);
	}

	/* from an inquire callback */
	for (int fail = 0; fail < 2; fail++) {
		if (pair_open(&p, NULL)) {
			struct tx a = {.mode = INQ_WAIT, .free_in_inquire = true, .fail = fail ? 9 : 0}, b = {0};
			tx_start(&a, p.cl, "ASK");
			tx_start(&b, p.cl, "NOP");
			CHECK(t_run_until(p.loop, &b.done, WAIT_MS));
			CHECK(a.done);
			CHECK_EQ(a.r, -ECANCELED);
			CHECK_EQ(b.r, -ECANCELED);
			CHECK_EQ(a.inquires, 1);
			p.cl = NULL;
			t_run_for(p.loop, 20);
			CHECK_EQ(g_srv.closes, 1); /* the server saw the end */
		}
		pair_close(&p);
	}

	/* a data callback that cancels its own transaction: ECANCELED, the
	 * rest of its answer is dropped, the next one is clean */
	if (pair_open(&p, NULL)) {
		struct tx a = {.cancel_in_data = true}, b = {0};
		tx_start(&a, p.cl, "BLOB 20000");
		tx_start(&b, p.cl, "ECHO clean");
		CHECK(t_run_until(p.loop, &b.done, WAIT_MS));
		CHECK_EQ(a.r, -ECANCELED);
		CHECK_EQ(a.data_calls, 1);
		CHECK_EQ(b.r, 0);
		CHECK(b.dlen == 5 && memcmp(b.data, "clean", 5) == 0);
	}
	pair_close(&p);

	/* a data callback that frees its own request, returning an error */
	if (pair_open(&p, NULL)) {
		struct tx a = {.free_req_in_data = true, .fail = 5};
		tx_start(&a, p.cl, "BLOB 5000");
		CHECK(t_run_until(p.loop, &a.done, WAIT_MS));
		expect_ok(p.loop, p.cl, "ECHO still here");
	}
	pair_close(&p);

	/* ... and starts the next transaction there: the error it returns is
	 * not the new one's answer (the new request may reuse the freed one's
	 * memory) */
	if (pair_open(&p, NULL)) {
		struct tx b = {0};
		struct tx a = {.free_req_in_data = true, .fail = 5, .then = &b, .then_cmd = "ECHO again"};
		tx_start(&a, p.cl, "BLOB 5000");
		CHECK(t_run_until(p.loop, &b.done, WAIT_MS));
		CHECK_EQ(b.r, 0);
		CHECK_EQ(b.answer, 0);
		CHECK(b.dlen == 5 && memcmp(b.data, "again", 5) == 0);
		CHECK(strcmp(g_srv.log, "BLOB,ECHO,") == 0);
	}
	pair_close(&p);

	/* from the connect callback, at once; and a connect request freed in
	 * its callback without taking the client */
	for (int take = 0; take < 2; take++) {
		weft_loop *l2 = t_loop_new();
		int sv2[2];
		REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv2) == 0);
		CHECK_EQ(write(sv2[1], "OK hi\nOK extra\n", 15), 15);
		weft_stream *s2 = NULL;
		CHECK_EQ(weft_stream_new_socket(l2, sv2[0], &s2), 0);
		weft_req *r2 = weft_assuan_client_adopt_send(l2, s2);
		REQUIRE(r2 != NULL);
		static bool done2;
		done2 = false;
		weft_req_set_callback(r2, take ? connect_take_free : connect_drop, &done2);
		CHECK(t_run_until(l2, &done2, WAIT_MS));
		t_run_for(l2, 10);
		char b[8];
		CHECK_EQ(read(sv2[1], b, sizeof(b)), 4); /* BYE, then EOF */
		CHECK(memcmp(b, "BYE\n", 4) == 0);
		close(sv2[1]);
		t_loop_free(l2);
	}

	/* from the connect callback's failure path, and a free before the
	 * greeting: the connect request completes ECANCELED */
	weft_loop *loop = t_loop_new();
	int sv[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	weft_stream *s = NULL;
	CHECK_EQ(weft_stream_new_socket(loop, sv[0], &s), 0);
	weft_req *req = weft_assuan_client_adopt_send(loop, s);
	REQUIRE(req != NULL);
	t_run_for(loop, 10);
	weft_req_free(req); /* abandoned while reading the greeting */
	t_run_for(loop, 10);
	close(sv[1]);
	t_loop_free(loop);
}

/* ---- 9. descriptors -------------------------------------------------------- */

struct sendfd_wait {
	bool done;
	int r, err;
};

static void sendfd_done(weft_req *req, void *data)
{
	struct sendfd_wait *w = data;
	w->r = weft_assuan_client_sendfd_recv(req, &w->err);
	weft_req_free(req);
	w->done = true;
}

static int sendfd_sync(weft_loop *loop, weft_assuan_client *cl, int fd)
{
	struct sendfd_wait w = {0};
	weft_req *req = weft_assuan_client_sendfd_send(cl, fd);
	if (req == NULL)
		return -ENOMEM;
	weft_req_set_callback(req, sendfd_done, &w);
	if (!t_run_until(loop, &w.done, WAIT_MS))
		return -ETIMEDOUT;
	return w.r < 0 ? -w.err : 0;
}

static int make_file(const char *name, const char *content, char *path, size_t size)
{
	snprintf(path, size, "%s/%s", g_dir, name);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd >= 0 && content)
		CHECK_EQ(write(fd, content, strlen(content)), (ssize_t)strlen(content));
	return fd;
}

static void test_sendfd(void)
{
	struct pair p;
	if (pair_open(&p, NULL)) {
		char path[128];
		int fd = make_file("passed", "passed file", path, sizeof(path));
		REQUIRE(fd >= 0);
		struct stat st;
		CHECK_EQ(fstat(fd, &st), 0);
		/* sendfd and the commands that use it, queued at once: in order */
		struct sendfd_wait w = {0};
		weft_req *req = weft_assuan_client_sendfd_send(p.cl, fd);
		REQUIRE(req != NULL);
		weft_req_set_callback(req, sendfd_done, &w);
		struct tx a = {0}, b = {0};
		tx_start(&a, p.cl, "INPUT FD");
		tx_start(&b, p.cl, "INO");
		CHECK(t_run_until(p.loop, &b.done, WAIT_MS));
		CHECK(w.done);
		CHECK_EQ(w.r, 0);
		close(fd);
		CHECK_EQ(a.answer, 0);
		CHECK_EQ(b.answer, 0);
		char want[64];
		snprintf(want, sizeof(want), "ino=%lu", (unsigned long)st.st_ino);
		CHECK(strcmp(b.okay, want) == 0);
		CHECK_EQ(g_srv.ino, (unsigned long)st.st_ino);
		/* the descriptor was used up: INO has nothing now */
		struct tx c = {0};
		tx_run(&c, p.loop, p.cl, "INO");
		CHECK_EQ(gpg_err_code(c.answer), GPG_ERR_ASS_NO_INPUT);
		/* without a passed descriptor INPUT FD fails */
		struct tx d = {0};
		tx_run(&d, p.loop, p.cl, "INPUT FD");
		CHECK(d.answer != 0);
		/* a bad descriptor */
		CHECK_EQ(sendfd_sync(p.loop, p.cl, -1), -EINVAL);
		/* freed with a sendfd and a transaction in flight: both complete */
		struct sendfd_wait w2 = {0};
		fd = open(path, O_RDONLY | O_CLOEXEC);
		req = weft_assuan_client_sendfd_send(p.cl, fd);
		REQUIRE(req != NULL);
		weft_req_set_callback(req, sendfd_done, &w2);
		struct tx e = {0};
		tx_start(&e, p.cl, "INPUT FD");
		weft_assuan_client_free(p.cl);
		p.cl = NULL;
		CHECK(e.done);
		CHECK_EQ(e.r, -ECANCELED);
		CHECK(t_run_until(p.loop, &w2.done, WAIT_MS));
		close(fd);
		unlink(path);
	}
	pair_close(&p);
}

/* A descriptor passed while a big INQUIRE answer is still being written
 * goes after it: on the wire the SCM_RIGHTS rides on the "# descriptor"
 * line that follows the D lines and END. */
static void test_sendfd_order(void)
{
	struct raw r;
	if (!raw_open(&r, "OK\n")) {
		raw_close(&r);
		return;
	}
	enum { BIG = 400000 };
	char *val = malloc(BIG);
	REQUIRE(val != NULL);
	memset(val, 'v', BIG);
	struct tx a = {.mode = INQ_NOW, .inq_answer = val, .inq_answer_len = BIG};
	tx_start(&a, r.cl, "ASK");
	raw_expect(&r, "ASK\n");
	raw_send(&r, "INQUIRE BIG\n");
	for (int i = 0; i < 500 && a.inquires == 0; i++)
		t_run_for(r.loop, 2);
	CHECK_EQ(a.inquires, 1);
	char path[128];
	int fd = make_file("ordered", "o", path, sizeof(path));
	REQUIRE(fd >= 0);
	struct stat st;
	CHECK_EQ(fstat(fd, &st), 0);
	struct sendfd_wait w = {0};
	weft_req *req = weft_assuan_client_sendfd_send(r.cl, fd);
	REQUIRE(req != NULL);
	weft_req_set_callback(req, sendfd_done, &w);
	/* read it all as a server would, noting where the descriptor came */
	size_t cap = BIG * 2, len = 0, fd_at = (size_t)-1;
	char *in = malloc(cap);
	REQUIRE(in != NULL);
	int got = -1;
	char want_tail[64];
	snprintf(want_tail, sizeof(want_tail), "END\n# descriptor %d is in flight\n", fd);
	uint64_t end = t_now_ms() + WAIT_MS;
	while (t_now_ms() < end && (len < strlen(want_tail) || memcmp(in + len - strlen(want_tail), want_tail,
			strlen(want_tail)) != 0)) {
		weft_loop_run(r.loop, WEFT_RUN_NOWAIT);
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(int))];
		} cm;
		struct iovec iov = {in + len, cap - len};
		struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.b, .msg_controllen = sizeof(cm.b)};
		ssize_t k = recvmsg(r.fd, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (k <= 0)
			continue;
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			memcpy(&got, CMSG_DATA(c), sizeof(int));
			fd_at = len;
		}
		len += (size_t)k;
	}
	CHECK(t_run_until(r.loop, &w.done, WAIT_MS));
	CHECK_EQ(w.r, 0);
	/* everything before the marker line is the D lines and END */
	char *marker = memmem(in, len, "# descriptor", 12);
	CHECK(marker != NULL);
	CHECK(got >= 0);
	if (marker != NULL) {
		size_t at = (size_t)(marker - in);
		CHECK(fd_at <= at && fd_at != (size_t)-1);
		CHECK(at >= 4 && memcmp(in + at - 4, "END\n", 4) == 0);
		/* the D lines decode to the answer */
		size_t dbytes = 0, bad = 0;
		for (char *p = in; p < in + at - 4;) {
			char *nl = memchr(p, '\n', (size_t)(in + at - 4 - p));
			if (nl == NULL || p[0] != 'D' || p[1] != ' ') {
				bad++;
				break;
			}
			dbytes += (size_t)(nl - p - 2);
			p = nl + 1;
		}
		CHECK_EQ(bad, 0);
		CHECK_EQ(dbytes, BIG);
	}
	if (got >= 0) {
		struct stat st2;
		CHECK_EQ(fstat(got, &st2), 0);
		CHECK_EQ(st2.st_ino, st.st_ino);
		close(got);
	}
	raw_send(&r, "OK\n");
	CHECK(t_run_until(r.loop, &a.done, WAIT_MS));
	CHECK_EQ(a.answer, 0);
	close(fd);
	unlink(path);
	free(in);
	free(val);
	raw_close(&r);
}

/* ---- 10. the low-level shape ---------------------------------------------- */

/* Drive the loop by hand (its one fd + timeout) until read_line has a line. */
static ssize_t read_line_by_hand(weft_loop *loop, weft_assuan_client *cl, char *buf, size_t size)
{
	uint64_t end = t_now_ms() + WAIT_MS;
	ssize_t n;
	while ((n = weft_assuan_client_read_line(cl, buf, size)) == -EAGAIN && t_now_ms() < end) {
		struct pollfd pfd = {weft_loop_get_fd(loop), POLLIN, 0};
		int64_t to = weft_loop_get_timeout(loop);
		poll(&pfd, 1, to < 0 || to > 50 ? 50 : (int)to);
		weft_loop_dispatch(loop);
	}
	return n;
}

static void test_low_level(void)
{
	struct pair p;
	if (pair_open(&p, NULL)) {
		CHECK_EQ(weft_assuan_client_fd(p.cl), p.client_fd);
		char buf[WEFT_ASSUAN_LINELENGTH];
		CHECK_EQ(weft_assuan_client_read_line(p.cl, buf, sizeof(buf)), -EAGAIN);
		CHECK_EQ(weft_assuan_client_write_line(p.cl, "ECHO hand%25made"), 0);
		CHECK_EQ(weft_assuan_client_write_line(p.cl, "TALK"), 0);
		static const char *want[] = {
			"D hand%2525made", "OK",
			"# a comment", "S PROGRESS primegen X 100 100", "S BARE", "D one", "END", "D two", "OK all said",
		};
		for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
			ssize_t n = read_line_by_hand(p.loop, p.cl, buf, sizeof(buf));
			CHECK_EQ(n, (ssize_t)strlen(want[i]));
			if (n >= 0 && strcmp(buf, want[i]) != 0)
				printf("# line %zu: \"%s\", want \"%s\"\n", i, buf, want[i]);
		}
		CHECK_EQ(weft_assuan_client_write_line(p.cl, "NOP\nNOP"), -EINVAL);
		CHECK_EQ(weft_assuan_client_write_line(NULL, "NOP"), -EINVAL);
		CHECK_EQ(weft_assuan_client_read_line(NULL, buf, sizeof(buf)), -EINVAL);
		/* low-level and transactions mix */
		expect_ok(p.loop, p.cl, "NOP");
		/* the server leaves: EPIPE */
		CHECK_EQ(weft_assuan_client_write_line(p.cl, "BYE"), 0);
		CHECK_EQ(read_line_by_hand(p.loop, p.cl, buf, sizeof(buf)), 21);
		CHECK(strcmp(buf, "OK closing connection") == 0);
		CHECK_EQ(read_line_by_hand(p.loop, p.cl, buf, sizeof(buf)), -EPIPE);
	}
	pair_close(&p);
}

/* read_line with a buffer smaller than the line: -EMSGSIZE, the line stays. */
static void test_low_level_small_buffer(void)
{
	struct raw r;
	if (raw_open(&r, "OK\n")) {
		raw_send(&r, "D 0123456789\nOK\n");
		char small[8], big[WEFT_ASSUAN_LINELENGTH];
		ssize_t n = read_line_by_hand(r.loop, r.cl, small, sizeof(small));
		CHECK_EQ(n, -EMSGSIZE);
		n = read_line_by_hand(r.loop, r.cl, big, sizeof(big));
		CHECK_EQ(n, 12);
		CHECK(n == 12 && strcmp(big, "D 0123456789") == 0);
		n = read_line_by_hand(r.loop, r.cl, small, sizeof(small));
		CHECK_EQ(n, 2);
		CHECK(n == 2 && strcmp(small, "OK") == 0);
	}
	raw_close(&r);
}

/* ---- 11. pipe servers: this program and gpg-agent --server --------------- */

struct exit_wait {
	bool done;
	pid_t pid;
	int wstatus;
};

static void on_exit_cb(pid_t pid, int wstatus, void *data)
{
	struct exit_wait *w = data;
	w->pid = pid;
	w->wstatus = wstatus;
	w->done = true;
}

/* The natural thing to do when the server process is gone: free its client. */
struct exit_free {
	struct exit_wait w;
	weft_assuan_client *cl;
};

static void on_exit_free(pid_t pid, int wstatus, void *data)
{
	struct exit_free *f = data;
	on_exit_cb(pid, wstatus, &f->w);
	weft_assuan_client_free(f->cl);
	f->cl = NULL;
}

/* This program as a pipe server (stdin/stdout), its exit status reported;
 * an inherited descriptor named by number, and none of the others, not
 * even those opened without close-on-exec (below and above it). */
static void test_pipe_self(void)
{
	weft_loop *loop = t_loop_new();
	int leak_lo = open("/dev/null", O_RDONLY); /* no O_CLOEXEC: still not for the child */
	char path[128];
	int fd = make_file("inherited", "x", path, sizeof(path));
	REQUIRE(fd >= 0);
	int leak_hi = open("/dev/null", O_RDONLY);
	REQUIRE(leak_lo >= 0 && leak_lo < fd && leak_hi > fd);
	struct stat st;
	CHECK_EQ(fstat(fd, &st), 0);
	const char *argv[] = {g_self, "--pipe-server", NULL};
	int err = 0;
	weft_assuan_client *cl = connect_wait(loop, weft_assuan_pipe_connect_send(loop, argv, &fd, 1, 0), &err);
	CHECK_EQ(err, 0);
	close(fd);
	if (cl != NULL) {
		pid_t pid = weft_assuan_client_pid(cl);
		CHECK(pid > 0);
		char want[64];
		snprintf(want, sizeof(want), "pipe server, process %d", (int)getpid());
		CHECK(strcmp(weft_assuan_client_greeting(cl), want) == 0);
		CHECK_EQ(weft_assuan_client_fd(cl), -ENOTSOCK);
		char cmd[32];
		snprintf(cmd, sizeof(cmd), "INO %d", fd);
		struct tx a = {0};
		tx_run(&a, loop, cl, cmd);
		CHECK_EQ(a.answer, 0);
		snprintf(want, sizeof(want), "ino=%lu", (unsigned long)st.st_ino);
		CHECK(strcmp(a.okay, want) == 0);
		for (int k = 0; k < 2; k++) {
			snprintf(cmd, sizeof(cmd), "INO %d", k ? leak_hi : leak_lo);
			struct tx b = {0};
			tx_run(&b, loop, cl, cmd);
			CHECK_EQ(gpg_err_code(b.answer), GPG_ERR_ASS_NO_INPUT);
		}
		/* no descriptor passing over pipes */
		CHECK_EQ(sendfd_sync(loop, cl, 0), -EOPNOTSUPP);
		expect_ok(loop, cl, "EXITCODE 7");
		struct exit_wait w = {0};
		CHECK_EQ(weft_assuan_client_on_exit(cl, on_exit_cb, &w), 0);
		expect_ok(loop, cl, "BYE");
		CHECK(t_run_until(loop, &w.done, WAIT_MS));
		CHECK_EQ(w.pid, pid);
		CHECK(WIFEXITED(w.wstatus) && WEXITSTATUS(w.wstatus) == 7);
		/* on_exit after the exit: posted, at once */
		struct exit_wait w2 = {0};
		CHECK_EQ(weft_assuan_client_on_exit(cl, on_exit_cb, &w2), 0);
		CHECK(!w2.done);
		CHECK(t_run_until(loop, &w2.done, WAIT_MS));
		CHECK_EQ(w2.wstatus, w.wstatus);
		weft_assuan_client_free(cl);
	}
	/* freed first; the child exits on EOF and is still reaped and reported */
	cl = connect_wait(loop, weft_assuan_pipe_connect_send(loop, argv, NULL, 0, WEFT_ASSUAN_PIPE_FDPASSING), &err);
	CHECK_EQ(err, 0);
	if (cl != NULL) {
		CHECK(weft_assuan_client_fd(cl) >= 0);
		char cmd[32];
		snprintf(cmd, sizeof(cmd), "INO %d", leak_hi);
		struct tx b = {0};
		tx_run(&b, loop, cl, cmd);
		CHECK_EQ(gpg_err_code(b.answer), GPG_ERR_ASS_NO_INPUT);
		expect_ok(loop, cl, "EXITCODE 3");
		pid_t pid = weft_assuan_client_pid(cl);
		struct exit_wait w = {0};
		CHECK_EQ(weft_assuan_client_on_exit(cl, on_exit_cb, &w), 0);
		weft_assuan_client_free(cl);
		CHECK(t_run_until(loop, &w.done, WAIT_MS));
		CHECK_EQ(w.pid, pid);
		CHECK(WIFEXITED(w.wstatus) && WEXITSTATUS(w.wstatus) == 3);
	}
	/* the pipe server is killed mid-transaction: EPIPE, the signal reported */
	cl = connect_wait(loop, weft_assuan_pipe_connect_send(loop, argv, NULL, 0, 0), &err);
	CHECK_EQ(err, 0);
	if (cl != NULL) {
		pid_t pid = weft_assuan_client_pid(cl);
		struct exit_wait w = {0};
		CHECK_EQ(weft_assuan_client_on_exit(cl, on_exit_cb, &w), 0);
		struct tx a = {0}, b = {0};
		tx_start(&a, cl, "SLEEP 5000");
		tx_start(&b, cl, "NOP");
		t_run_for(loop, 20);
		kill(pid, SIGKILL);
		CHECK(t_run_until(loop, &b.done, WAIT_MS));
		CHECK(a.r == -EPIPE || a.r == -ECONNRESET);
		CHECK_EQ(b.r, a.r);
		CHECK(t_run_until(loop, &w.done, WAIT_MS));
		CHECK(WIFSIGNALED(w.wstatus) && WTERMSIG(w.wstatus) == SIGKILL);
		weft_assuan_client_free(cl);
	}
	/* the client freed from its exit callback: when the exit is seen, and
	 * when on_exit comes after it (posted) */
	for (int late = 0; late < 2; late++) {
		cl = connect_wait(loop, weft_assuan_pipe_connect_send(loop, argv, NULL, 0, 0), &err);
		CHECK_EQ(err, 0);
		if (cl == NULL)
			continue;
		struct exit_free f = {.cl = cl};
		if (!late)
			CHECK_EQ(weft_assuan_client_on_exit(cl, on_exit_free, &f), 0);
		struct tx bye = {0};
		tx_run(&bye, loop, cl, "BYE");
		if (late) {
			/* wait until the child is gone, then ask */
			pid_t pid = weft_assuan_client_pid(cl);
			for (int i = 0; i < 1000 && kill(pid, 0) == 0; i++) {
				char sp[64], buf[256];
				snprintf(sp, sizeof(sp), "/proc/%d/stat", (int)pid);
				int sfd = open(sp, O_RDONLY | O_CLOEXEC);
				ssize_t k = sfd >= 0 ? read(sfd, buf, sizeof(buf) - 1) : -1;
				if (sfd >= 0)
					close(sfd);
				buf[k > 0 ? k : 0] = '\0';
				char *rp = strrchr(buf, ')');
				if (rp && rp[2] == 'Z')
					break;
				t_run_for(loop, 5);
			}
			t_run_for(loop, 20); /* the reaper sees it */
			CHECK_EQ(weft_assuan_client_on_exit(cl, on_exit_free, &f), 0);
		}
		CHECK(t_run_until(loop, &f.w.done, WAIT_MS));
		CHECK(f.cl == NULL);
		CHECK(WIFEXITED(f.w.wstatus) && WEXITSTATUS(f.w.wstatus) == 0);
		t_run_for(loop, 10);
	}
	/* a program that does not exist */
	const char *nope[] = {"/nonexistent/weft-no-such-server", NULL};
	CHECK(connect_wait(loop, weft_assuan_pipe_connect_send(loop, nope, NULL, 0, 0), &err) == NULL);
	/* (under valgrind posix_spawn cannot report the exec failure: the
	 * child just ends) */
	const char *pre = getenv("LD_PRELOAD");
	if (pre != NULL && strstr(pre, "vgpreload") != NULL && err == EPIPE)
		err = ENOENT;
	CHECK_EQ(err, ENOENT);
	CHECK(connect_wait(loop, weft_assuan_pipe_connect_send(loop, NULL, NULL, 0, 0), &err) == NULL);
	CHECK_EQ(err, EINVAL);
	/* a program that exits without a greeting: EPIPE, and it is reaped */
	const char *quits[] = {"sh", "-c", "echo '# only a comment'; exit 4", NULL};
	CHECK(connect_wait(loop, weft_assuan_pipe_connect_send(loop, quits, NULL, 0, 0), &err) == NULL);
	CHECK_EQ(err, EPIPE);
	const char *garbage[] = {"sh", "-c", "echo hello; exec sleep 1", NULL};
	CHECK(connect_wait(loop, weft_assuan_pipe_connect_send(loop, garbage, NULL, 0, 0), &err) == NULL);
	CHECK_EQ(err, EPROTO);
	/* a program that never greets: the connect times out; nobody holds
	 * its pid, so it must not be left running (the loop would stay alive
	 * for it) */
	const char *mute[] = {"sh", "-c", "exec sleep 30", NULL};
	weft_req *mreq = weft_assuan_pipe_connect_send(loop, mute, NULL, 0, 0);
	if (mreq)
		weft_req_set_timeout(mreq, 100);
	CHECK(connect_wait(loop, mreq, &err) == NULL);
	CHECK_EQ(err, ETIMEDOUT);
	uint64_t t0 = t_now_ms();
	for (int i = 0; i < 500 && weft_loop_alive(loop); i++)
		weft_loop_run(loop, WEFT_RUN_ONCE); /* the reapers wait for their exits */
	CHECK(!weft_loop_alive(loop));
	CHECK(t_now_ms() - t0 < 10000);
	CHECK_EQ(other_children(), 0);
	unlink(path);
	close(leak_lo);
	close(leak_hi);
	t_loop_free(loop);
}

/* A pipe server gets stdin, stdout, stderr and the descriptors it is
 * given, and nothing of weft's (the header: "everything else of ours is
 * close-on-exec"): a shell greets with the numbers of its other open
 * descriptors (3..63).  What this process holds without close-on-exec
 * (the test harness may pass some; one opened here on purpose) goes along
 * too: weft does not close the caller's descriptors in the child, as
 * libassuan's fork/exec does. */
static void test_pipe_fds(void)
{
	weft_loop *loop = t_loop_new();
	char path[128];
	int fd = make_file("inherited2", "x", path, sizeof(path));
	REQUIRE(fd >= 0);
	int extra = open(path, O_RDONLY); /* not close-on-exec, and not passed */
	REQUIRE(extra >= 0);
	static const char script[] =
		"c=${_assuan_connection_fd:-}; if [ -n \"$c\" ]; then eval \"exec <&$c >&$c\"; fi; printf OK; i=3; "
		"while [ $i -lt 64 ]; do if [ \"$i\" != \"$c\" ] && [ -e /proc/$$/fd/$i ]; then printf ' %s' $i; fi; "
		"i=$((i+1)); done; echo; read x";
	const char *argv[] = {"sh", "-c", script, NULL};
	for (int fdp = 0; fdp < 2; fdp++) {
		/* what the child should have: the given one only — not extra,
		 * which we hold without close-on-exec, nor the loop's own */
		char want[32];
		snprintf(want, sizeof(want), "%d", fd);
		int err = 0;
		weft_assuan_client *cl = connect_wait(loop,
				weft_assuan_pipe_connect_send(loop, argv, &fd, 1, fdp ? WEFT_ASSUAN_PIPE_FDPASSING : 0), &err);
		CHECK_EQ(err, 0);
		if (cl != NULL) {
			const char *g = weft_assuan_client_greeting(cl);
			if (strcmp(g, want) != 0)
				printf("# %s: the child has \"%s\", want \"%s\"\n", fdp ? "socketpair" : "pipes", g, want);
			CHECK(strcmp(g, want) == 0);
			struct exit_wait w = {0};
			CHECK_EQ(weft_assuan_client_on_exit(cl, on_exit_cb, &w), 0);
			weft_assuan_client_free(cl); /* EOF: read returns, sh exits */
			CHECK(t_run_until(loop, &w.done, WAIT_MS));
			CHECK(WIFEXITED(w.wstatus));
		}
	}
	close(extra);
	close(fd);
	unlink(path);
	t_loop_free(loop);
	CHECK_EQ(other_children(), 0);
}

/* Without pidfd_open (kernels before 5.3, valgrind, seccomp sandboxes):
 * in a forked child whose seccomp filter answers ENOSYS to pidfd_open, a
 * pipe server still connects, works, is reaped and its exit reported; one
 * whose connect fails is not left behind.  The child reports through its
 * exit status: 0 all well, else the step that failed. */
static int no_pidfd_child(void)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pidfd_open, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof(filter) / sizeof(filter[0]), .filter = filter};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
		return 10;
	if (syscall(SYS_pidfd_open, getpid(), 0) >= 0 || errno != ENOSYS)
		return 11;
	weft_loop *loop = NULL;
	if (weft_loop_new(&loop) < 0)
		return 12;
	const char *argv[] = {g_self, "--pipe-server", NULL};
	int err = 0;
	weft_assuan_client *cl = connect_wait(loop, weft_assuan_pipe_connect_send(loop, argv, NULL, 0, 0), &err);
	if (cl == NULL)
		return err == ENOSYS ? 20 : 21;
	pid_t pid = weft_assuan_client_pid(cl);
	struct tx a = {0};
	if (!tx_run(&a, loop, cl, "EXITCODE 5") || a.answer != 0)
		return 13;
	struct exit_wait w = {0};
	if (weft_assuan_client_on_exit(cl, on_exit_cb, &w) < 0)
		return 14;
	struct tx bye = {0};
	tx_run(&bye, loop, cl, "BYE");
	if (!t_run_until(loop, &w.done, WAIT_MS) || w.pid != pid || !WIFEXITED(w.wstatus) || WEXITSTATUS(w.wstatus) != 5)
		return 15;
	weft_assuan_client_free(cl);
	/* a connect that times out: the child is stopped and reaped */
	const char *mute[] = {"sh", "-c", "exec sleep 30", NULL};
	weft_req *req = weft_assuan_pipe_connect_send(loop, mute, NULL, 0, 0);
	if (req)
		weft_req_set_timeout(req, 100);
	if (connect_wait(loop, req, &err) != NULL || err != ETIMEDOUT)
		return 16;
	for (int i = 0; i < 500 && weft_loop_alive(loop); i++)
		weft_loop_run(loop, WEFT_RUN_ONCE);
	if (weft_loop_alive(loop))
		return 17;
	if (waitpid(-1, NULL, WNOHANG) != -1 || errno != ECHILD)
		return 18; /* a child left (zombie or running) */
	for (int i = 0; i < 100 && weft_loop_free(loop) == -EBUSY; i++)
		weft_loop_run(loop, WEFT_RUN_NOWAIT);
	return 0;
}

static void test_no_pidfd(void)
{
	fflush(stdout);
	pid_t pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0)
		_exit(no_pidfd_child());
	int st = reap(pid, 30000);
	if (!(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0))
		printf("# the child without pidfd_open: status %d (exit %d)\n", st, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	CHECK(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	CHECK_EQ(other_children(), 0);
}

/* --pipe-server: serve one connection on stdin/stdout (or the socket named
 * by _assuan_connection_fd), exit with the EXITCODE given. */
static weft_loop *g_child_loop;

static void child_close(weft_assuan_conn *c, void *data)
{
	(void)c;
	(void)data;
	weft_loop_stop(g_child_loop);
}

static int pipe_server_main(void)
{
	weft_loop *loop = NULL;
	weft_assuan_server *srv = NULL;
	if (weft_loop_new(&loop) < 0 || weft_assuan_server_new(loop, &srv) < 0)
		return 100;
	g_child_loop = loop;
	weft_assuan_server_set_hello(srv, NULL);
	const char *pid = getenv("_assuan_pipe_connect_pid");
	char hello[64];
	snprintf(hello, sizeof(hello), "pipe server, process %s", pid ? pid : "?");
	weft_assuan_server_set_hello(srv, hello);
	weft_assuan_register(srv, "INO", cmd_ino, NULL, NULL);
	weft_assuan_register(srv, "EXITCODE", cmd_exitcode, NULL, NULL);
	weft_assuan_register(srv, "SLEEP", cmd_sleep, NULL, NULL);
	weft_assuan_hooks hooks = {.close = child_close};
	weft_assuan_server_set_hooks(srv, &hooks, NULL);
	const char *cfd = getenv("_assuan_connection_fd");
	int r = cfd ? weft_assuan_server_adopt_fd(srv, atoi(cfd), NULL) : weft_assuan_server_adopt_pipe(srv, 0, 1, NULL);
	if (r < 0)
		return 101;
	weft_loop_run(loop, WEFT_RUN_DEFAULT);
	weft_assuan_server_free(srv);
	for (int i = 0; i < 100 && weft_loop_free(loop) == -EBUSY; i++)
		weft_loop_run(loop, WEFT_RUN_NOWAIT);
	return g_exit_code;
}

/* ---- 12. gpg-agent ------------------------------------------------------- */

static char g_agent_home[128];
static char g_agent_sock[256];
static bool g_have_agent;

/* Our children (any state, zombies too) but the agent and weft-kv. */
static int other_children(void)
{
	DIR *d = opendir("/proc");
	if (d == NULL)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		char path[300], buf[512];
		if (e->d_name[0] < '1' || e->d_name[0] > '9')
			continue;
		pid_t pid = (pid_t)atoi(e->d_name);
		if (pid == g_agent_pid || pid == g_kv_pid)
			continue;
		snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t k = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (k <= 0)
			continue;
		buf[k] = '\0';
		char *rp = strrchr(buf, ')');
		int ppid = 0;
		char state = 0;
		if (rp && sscanf(rp + 2, "%c %d", &state, &ppid) == 2 && ppid == (int)getpid()) {
			printf("# child left: %s", buf);
			n++;
		}
	}
	closedir(d);
	return n;
}

/* The daemon's pid: our child (we are a subreaper) named gpg-agent. */
static pid_t find_agent_child(void)
{
	DIR *d = opendir("/proc");
	if (d == NULL)
		return 0;
	pid_t found = 0;
	struct dirent *e;
	while (found == 0 && (e = readdir(d)) != NULL) {
		char path[300], buf[512];
		if (e->d_name[0] < '1' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n <= 0)
			continue;
		buf[n] = '\0';
		char *rp = strrchr(buf, ')');
		int ppid = 0;
		char state = 0;
		if (strstr(buf, "(gpg-agent)") && rp && sscanf(rp + 2, "%c %d", &state, &ppid) == 2 &&
		    ppid == (int)getpid() && state != 'Z')
			found = (pid_t)atoi(e->d_name);
	}
	closedir(d);
	return found;
}

static void agent_stop(void)
{
	if (g_agent_home[0]) {
		const char *argv[] = {"gpgconf", "--homedir", g_agent_home, "--kill", "gpg-agent", NULL};
		pid_t p = spawn(argv, -1, -1, -1);
		if (p > 0)
			reap(p, 10000);
	}
	pid_t pid = g_agent_pid;
	if (pid > 0) {
		if (reap(pid, 5000) < 0)
			printf("# gpg-agent %d had to be killed\n", (int)pid);
		g_agent_pid = 0;
	}
	pid_t other;
	while ((other = find_agent_child()) > 0) {
		printf("# another gpg-agent %d: killed\n", (int)other);
		kill(other, SIGKILL);
		reap(other, 5000);
	}
	g_have_agent = false;
}

static bool agent_start(void)
{
	snprintf(g_agent_home, sizeof(g_agent_home), "%s/gh", g_dir);
	if (mkdir(g_agent_home, 0700) < 0) {
		g_agent_home[0] = '\0';
		return false;
	}
	const char *argv[] = {"gpg-agent", "--homedir", g_agent_home, "--daemon", "--allow-loopback-pinentry", NULL};
	/* values the agent hands back with GETINFO getenv (V9 of the wire
	 * notes): long, and full of % */
	char big[2600];
	memset(big, 'x', 2500);
	big[2500] = '\0';
	setenv("WEFT_BIG1", big, 1);
	memset(big, '%', 402);
	big[0] = big[1] = 'A';
	big[402] = '\0';
	setenv("WEFT_BIG2", big, 1);
	setenv("WEFT_BIG5", "line1\r\nline2", 1);
	pid_t p = spawn(argv, -1, -1, -1);
	unsetenv("WEFT_BIG1");
	unsetenv("WEFT_BIG2");
	unsetenv("WEFT_BIG5");
	if (p < 0)
		return false;
	int st = reap(p, 20000);
	if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		printf("# gpg-agent --daemon: status %d\n", st);
		g_agent_pid = find_agent_child();
		return false;
	}
	for (int i = 0; i < 200 && (g_agent_pid = find_agent_child()) == 0; i++)
		t_sleep_ms(10);
	const char *gc[] = {"gpgconf", "--homedir", g_agent_home, "--list-dirs", "agent-socket", NULL};
	if (!run_line(gc, g_agent_sock, sizeof(g_agent_sock)))
		return false;
	struct stat sst;
	for (int i = 0; i < 500 && stat(g_agent_sock, &sst) < 0; i++)
		t_sleep_ms(10);
	return g_agent_pid > 0 && S_ISSOCK(sst.st_mode);
}

/* "OK Pleased to meet you, process N": libassuan 2.5 (Debian 12) names the
 * peer (us: SO_PEERCRED, or _assuan_pipe_connect_pid for a pipe server),
 * libassuan 3 the server itself. */
static bool agent_greeting_ok(const char *g, pid_t server)
{
	char a[64], b[64];
	snprintf(a, sizeof(a), "Pleased to meet you, process %d", (int)getpid());
	snprintf(b, sizeof(b), "Pleased to meet you, process %d", (int)server);
	if (strcmp(g, a) != 0 && strcmp(g, b) != 0) {
		printf("# greeting \"%s\"\n", g);
		return false;
	}
	return true;
}

static weft_assuan_client *agent_connect(weft_loop *loop)
{
	int err = 0;
	weft_req *req = weft_assuan_connect_send(loop, g_agent_sock);
	if (req)
		weft_req_set_timeout(req, WAIT_MS);
	weft_assuan_client *cl = connect_wait(loop, req, &err);
	CHECK_EQ(err, 0);
	return cl;
}

static void test_agent_basics(void)
{
	REQUIRE(g_have_agent);
	weft_loop *loop = t_loop_new();
	weft_assuan_client *cl = agent_connect(loop);
	if (cl != NULL) {
		CHECK(agent_greeting_ok(weft_assuan_client_greeting(cl), g_agent_pid));
		struct tx v = {0};
		tx_run(&v, loop, cl, "GETINFO version");
		CHECK_EQ(v.answer, 0);
		CHECK(v.dlen >= 5 && v.dlen < 32 && memcmp(v.data, "2.", 2) == 0);
		if (v.dlen < sizeof(v.data))
			v.data[v.dlen] = '\0';
		printf("# gpg-agent %s\n", (char *)v.data);
		struct tx pid = {0};
		tx_run(&pid, loop, cl, "GETINFO pid");
		CHECK_EQ(pid.answer, 0);
		pid.data[pid.dlen < 16 ? pid.dlen : 15] = '\0';
		long apid = strtol((char *)pid.data, NULL, 10);
		CHECK(apid > 0 && kill((pid_t)apid, 0) == 0);
		CHECK_EQ(apid, g_agent_pid);
		expect_ok(loop, cl, "NOP");
		struct tx u = {0};
		tx_run(&u, loop, cl, "FOOBAR");
		CHECK_EQ(u.r, 0);
		CHECK_EQ(u.answer, 67109139u); /* Unknown IPC command <GPG Agent> */
		struct tx h = {0};
		tx_run(&h, loop, cl, "HAVEKEY 0000000000000000000000000000000000000000");
		CHECK_EQ(h.answer, 67108881u); /* No secret key <GPG Agent> */
		/* the agent's main socket passes no descriptors */
		struct tx i = {0};
		tx_run(&i, loop, cl, "INPUT FD");
		CHECK_EQ(i.answer, 67108933u); /* Not implemented */
		/* status lines */
		struct tx e = {0};
		tx_run(&e, loop, cl, "GETEVENTCOUNTER");
		CHECK_EQ(e.answer, 0);
		CHECK(strncmp(e.status, "EVENTCOUNTER|", 13) == 0);
		/* comments: HELP GETVAL */
		struct tx hl = {0};
		tx_run(&hl, loop, cl, "HELP GETVAL");
		CHECK_EQ(hl.answer, 0);
		CHECK(strncmp(hl.comments, "# GETVAL <key>\n", 15) == 0);
		/* D escaping both ways: PUTVAL/GETVAL (agent unescapes %XX and +) */
		expect_ok(loop, cl, "PUTVAL k a+b%25c%0Ad%0De");
		struct tx gv = {0};
		tx_run(&gv, loop, cl, "GETVAL k");
		CHECK_EQ(gv.answer, 0);
		CHECK(gv.dlen == 9 && memcmp(gv.data, "a b%c\nd\re", 9) == 0);
		/* NULs inside D lines, one D line per name (V8) */
		struct tx ev = {0};
		tx_run(&ev, loop, cl, "GETINFO std_env_names");
		CHECK_EQ(ev.answer, 0);
		CHECK(ev.dlen > 13 && memcmp(ev.data, "GPG_TTY\0TERM\0", 13) == 0);
		CHECK(ev.data_calls >= 10);
		/* D lines split at 996 bytes, escapes (the agent's environment) */
		struct tx *big = calloc(1, sizeof(*big));
		REQUIRE(big != NULL);
		tx_run(big, loop, cl, "GETINFO getenv WEFT_BIG1");
		CHECK_EQ(big->answer, 0);
		CHECK_EQ(big->dlen, 2500);
		CHECK_EQ(big->data_calls, 3);
		CHECK(big->dlen == 2500 && big->data[0] == 'x' && big->data[2499] == 'x');
		memset(big, 0, sizeof(*big));
		tx_run(big, loop, cl, "GETINFO getenv WEFT_BIG2");
		CHECK_EQ(big->answer, 0);
		CHECK_EQ(big->dlen, 402);
		size_t pct = 0;
		for (size_t k = 2; k < big->dlen; k++)
			pct += big->data[k] == '%';
		CHECK(big->dlen == 402 && memcmp(big->data, "AA%%", 4) == 0 && pct == 400);
		CHECK_EQ(big->data_calls, 2);
		memset(big, 0, sizeof(*big));
		tx_run(big, loop, cl, "GETINFO getenv WEFT_BIG5");
		CHECK(big->dlen == 12 && memcmp(big->data, "line1\r\nline2", 12) == 0);
		free(big);
		/* a cancelled transaction against the real thing: queued behind
		 * a GETINFO, the connection goes on */
		struct tx q1 = {0}, q2 = {0}, q3 = {0};
		tx_start(&q1, cl, "GETINFO version");
		tx_start(&q2, cl, "GETINFO pid");
		tx_start(&q3, cl, "NOP");
		CHECK_EQ(weft_req_cancel(q2.req), 0);
		CHECK(t_run_until(loop, &q3.done, WAIT_MS));
		CHECK_EQ(q1.answer, 0);
		CHECK_EQ(q2.r, -ECANCELED);
		CHECK_EQ(q3.answer, 0);
		weft_assuan_client_free(cl);
	}
	t_loop_free(loop);
}

/* Two canonical public-key S-expressions are the same key: equal up to
 * "(1:q", the same q once leading zero bytes are dropped (READKEY writes
 * q as an unsigned MPI: 33:\0... when the first byte has its top bit set,
 * GENKEY as the 32 raw bytes), the same tail. */
static bool same_public_key(const unsigned char *a, size_t an, const unsigned char *b, size_t bn)
{
	const unsigned char *qa = memmem(a, an, "(1:q", 4), *qb = memmem(b, bn, "(1:q", 4);
	if (qa == NULL || qb == NULL || qa - a != qb - b || memcmp(a, b, (size_t)(qa - a)) != 0)
		return false;
	char *ea, *eb;
	unsigned long la = strtoul((const char *)qa + 4, &ea, 10), lb = strtoul((const char *)qb + 4, &eb, 10);
	if (*ea != ':' || *eb != ':')
		return false;
	const unsigned char *pa = (const unsigned char *)ea + 1, *pb = (const unsigned char *)eb + 1;
	if (pa + la > a + an || pb + lb > b + bn)
		return false;
	const unsigned char *enda = pa + la, *endb = pb + lb;
	while (pa < enda && *pa == 0)
		pa++;
	while (pb < endb && *pb == 0)
		pb++;
	return enda - pa == endb - pb && enda - pa == 32 && memcmp(pa, pb, 32) == 0 &&
	       a + an - enda == b + bn - endb && memcmp(enda, endb, (size_t)(a + an - enda)) == 0;
}

/* The answer to INQUIRE KEYPARAM comes from a timer, not the callback. */
static void test_agent_genkey(void)
{
	REQUIRE(g_have_agent);
	weft_loop *loop = t_loop_new();
	weft_assuan_client *cl = agent_connect(loop);
	if (cl != NULL) {
		static const char params[] = "(genkey(ecc(curve 7:Ed25519)(flags eddsa)))";
		struct tx *g = calloc(1, sizeof(*g));
		REQUIRE(g != NULL);
		g->mode = INQ_LATER;
		g->inq_answer = params;
		tx_run(g, loop, cl, "GENKEY --no-protection");
		CHECK_EQ(g->r, 0);
		CHECK_EQ(g->answer, 0);
		CHECK_EQ(g->inquires, 1);
		CHECK(strcmp(g->inq, "KEYPARAM|\n") == 0);
		CHECK(strcmp(g->status, "INQUIRE_MAXLEN|1024\n") == 0);
		static const char pub[] = "(10:public-key(3:ecc(5:curve7:Ed25519)(5:flags5:eddsa)(1:q32:";
		CHECK(g->dlen == sizeof(pub) - 1 + 32 + 3);
		CHECK(g->dlen > sizeof(pub) && memcmp(g->data, pub, sizeof(pub) - 1) == 0);
		tx_fini(g);

		struct tx *k = calloc(1, sizeof(*k));
		REQUIRE(k != NULL);
		tx_run(k, loop, cl, "KEYINFO --list");
		CHECK_EQ(k->answer, 0);
		char grip[41] = "";
		CHECK_EQ(sscanf(k->status, "KEYINFO|%40[0-9A-F] D ", grip), 1);
		CHECK_EQ(strlen(grip), 40);
		CHECK(strchr(k->status, '\n') == k->status + strlen(k->status) - 1); /* one key */

		char cmd[64];
		snprintf(cmd, sizeof(cmd), "READKEY %s", grip);
		struct tx *rk = calloc(1, sizeof(*rk));
		REQUIRE(rk != NULL);
		tx_run(rk, loop, cl, cmd);
		CHECK_EQ(rk->answer, 0);
		if (!same_public_key(g->data, g->dlen, rk->data, rk->dlen)) {
			CHECK(!"READKEY gave another key than GENKEY");
			printf("# GENKEY: ");
			for (size_t i = 0; i < g->dlen; i++)
				printf("%02x", g->data[i]);
			printf("\n# READKEY: ");
			for (size_t i = 0; i < rk->dlen; i++)
				printf("%02x", rk->data[i]);
			printf("\n");
		}
		snprintf(cmd, sizeof(cmd), "HAVEKEY %s", grip);
		expect_ok(loop, cl, cmd);

		/* the agent refuses the inquire answer: CAN, then a broken key */
		struct tx *c = calloc(1, sizeof(*c));
		REQUIRE(c != NULL);
		c->mode = INQ_CAN;
		tx_run(c, loop, cl, "GENKEY --no-protection");
		CHECK_EQ(c->answer, 67109141u); /* IPC call has been cancelled */
		struct tx *b = calloc(1, sizeof(*b));
		REQUIRE(b != NULL);
		b->mode = INQ_NOW;
		b->inq_answer = "";
		tx_run(b, loop, cl, "GENKEY --no-protection");
		CHECK_EQ(b->answer, 16777281u); /* Invalid object <gcrypt> */
		/* more than INQUIRE_MAXLEN: the agent reads on to END, answers
		 * Too much data, and the connection stays in sync */
		char *much = malloc(1801);
		REQUIRE(much != NULL);
		memset(much, 'y', 1800);
		much[1800] = '\0';
		struct tx *tm = calloc(1, sizeof(*tm));
		REQUIRE(tm != NULL);
		tm->mode = INQ_LATER;
		tm->inq_answer = much;
		tx_run(tm, loop, cl, "GENKEY --no-protection");
		CHECK_EQ(tm->answer, 67109137u); /* Too much data for IPC layer */
		tx_fini(tm);
		free(tm);
		free(much);
		expect_ok(loop, cl, "NOP");
		/* cancelled while the agent's INQUIRE waits */
		struct tx *w = calloc(1, sizeof(*w));
		REQUIRE(w != NULL);
		w->mode = INQ_WAIT;
		tx_start(w, cl, "GENKEY --no-protection");
		for (int i = 0; i < 2000 && w->inquires == 0; i++)
			t_run_for(loop, 5);
		CHECK_EQ(w->inquires, 1);
		CHECK_EQ(weft_req_cancel(w->req), 0);
		CHECK(t_run_until(loop, &w->done, WAIT_MS));
		CHECK_EQ(w->r, -ECANCELED);
		expect_ok(loop, cl, "NOP");
		struct tx n = {0};
		tx_run(&n, loop, cl, "KEYINFO --list");
		CHECK(strcmp(n.status, k->status) == 0); /* no new key */
		free(g);
		free(k);
		free(rk);
		free(c);
		free(b);
		free(w);
		weft_assuan_client_free(cl);
	}
	t_loop_free(loop);
}

/* gpg-agent --server as a pipe server: over pipes, and over a socketpair
 * with descriptor passing (T17); its exit status after BYE. */
static void test_agent_pipe(void)
{
	char home[160];
	snprintf(home, sizeof(home), "%s/gp", g_dir);
	REQUIRE(mkdir(home, 0700) == 0);
	const char *argv[] = {"gpg-agent", "--homedir", home, "--server", NULL};
	for (int fdp = 0; fdp < 2; fdp++) {
		weft_loop *loop = t_loop_new();
		int err = 0;
		weft_req *req = weft_assuan_pipe_connect_send(loop, argv, NULL, 0, fdp ? WEFT_ASSUAN_PIPE_FDPASSING : 0);
		if (req)
			weft_req_set_timeout(req, WAIT_MS);
		weft_assuan_client *cl = connect_wait(loop, req, &err);
		CHECK_EQ(err, 0);
		if (cl != NULL) {
			pid_t cpid = weft_assuan_client_pid(cl);
			CHECK(agent_greeting_ok(weft_assuan_client_greeting(cl), cpid));
			struct tx p = {0};
			tx_run(&p, loop, cl, "GETINFO pid");
			p.data[p.dlen < 16 ? p.dlen : 15] = '\0';
			CHECK_EQ(strtol((char *)p.data, NULL, 10), cpid);
			if (fdp) {
				struct tx none = {0};
				tx_run(&none, loop, cl, "INPUT FD");
				CHECK_EQ(none.answer, 67109121u); /* General IPC error: no fd pending */
				char path[128];
				int fd = make_file("agentfd", "data", path, sizeof(path));
				CHECK_EQ(sendfd_sync(loop, cl, fd), 0);
				close(fd);
				unlink(path);
				expect_ok(loop, cl, "INPUT FD");
				expect_ok(loop, cl, "RESET");
			} else {
				struct tx i = {0};
				tx_run(&i, loop, cl, "INPUT FD");
				CHECK_EQ(i.answer, 67108933u); /* Not implemented */
			}
			struct tx u = {0};
			tx_run(&u, loop, cl, "FOOBAR");
			CHECK_EQ(u.answer, 67109139u);
			struct exit_wait w = {0};
			CHECK_EQ(weft_assuan_client_on_exit(cl, on_exit_cb, &w), 0);
			struct tx bye = {0};
			tx_run(&bye, loop, cl, "BYE");
			CHECK_EQ(bye.answer, 0);
			CHECK(strcmp(bye.okay, "closing connection") == 0);
			CHECK(t_run_until(loop, &w.done, WAIT_MS));
			CHECK_EQ(w.pid, cpid);
			CHECK(WIFEXITED(w.wstatus) && WEXITSTATUS(w.wstatus) == 0);
			weft_assuan_client_free(cl);
		}
		t_loop_free(loop);
		CHECK_EQ(other_children(), 0);
	}
}

/* ---- 13. weft-connect --------------------------------------------------- */

static char g_kv_sock[128];

static bool kv_start(void)
{
	if (WEFT_KV_PATH[0] == '\0')
		return false;
	snprintf(g_kv_sock, sizeof(g_kv_sock), "%s/kv", g_dir);
	const char *argv[] = {WEFT_KV_PATH, "--socket", g_kv_sock, NULL};
	g_kv_pid = spawn(argv, -1, -1, 2);
	struct stat st;
	for (int i = 0; i < 1000 && g_kv_pid > 0 && stat(g_kv_sock, &st) < 0; i++)
		t_sleep_ms(10);
	return g_kv_pid > 0 && stat(g_kv_sock, &st) == 0;
}

/* SIGTERM: weft-kv stops; its exit status (ASan's leak check included). */
static int kv_stop(void)
{
	if (g_kv_pid <= 0)
		return -1;
	kill(g_kv_pid, SIGTERM);
	int st = reap(g_kv_pid, 10000);
	if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		printf("# weft-kv ended with status %d\n", st);
	g_kv_pid = 0;
	return st;
}

/* After all the sessions above (one was cut off during an INQUIRE), weft-kv
 * ends cleanly. */
static void test_kv_exit(void)
{
	REQUIRE(g_kv_pid > 0);
	int st = kv_stop();
	CHECK(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static bool has(const struct out *o, const char *text)
{
	return memmem(o->out, o->outlen, text, strlen(text)) != NULL;
}

static struct out g_out; /* big: not on the stack */

#define TOOL(...) ((const char *const[]){WEFT_CONNECT_PATH, __VA_ARGS__, NULL})

/* weft-connect with pipe servers that fail: one that is not there, one
 * that leaves in the middle of a command. */
static void test_tool_pipe_fail(void)
{
	run_tool(TOOL("-E", "--", "/nonexistent/weft-server", "--", "NOP"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 2);
	CHECK(g_out.errlen > 0);
	run_tool(TOOL("-E", "--", "sh", "-c", "echo OK hello; read x; echo 'D half'; exit 0", "--", "GETINFO x", "NOP"),
			NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 2);
	CHECK(has(&g_out, "half"));
	CHECK(memmem(g_out.err, g_out.errlen, "weft-connect: ", 14) != NULL);
	CHECK_EQ(other_children(), 0);
}

static void test_tool_help(void)
{
	run_tool(TOOL("--help"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 0);
	CHECK(has(&g_out, "usage: weft-connect"));
	CHECK(has(&g_out, "Examples:"));
	CHECK(has(&g_out, "--inquire KEYPARAM="));
	CHECK(has(&g_out, "--sendfd"));
	run_tool(TOOL("--no-such-option"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 2);
	run_tool(TOOL("--inquire", "novalue"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 2);
}

static void test_tool_kv(void)
{
	REQUIRE(g_kv_pid > 0);
	char vpath[128], cpath[128];
	int fd = make_file("value", "value from a file", vpath, sizeof(vpath));
	REQUIRE(fd >= 0);
	close(fd);
	const char *S = g_kv_sock;

	/* commands from arguments; INQUIRE from a file */
	char inq[160];
	snprintf(inq, sizeof(inq), "VALUE=%s", vpath);
	run_tool(TOOL("-S", S, "--inquire", inq, "PUT k", "GET k", "KEYS"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 0);
	CHECK(has(&g_out, "INQUIRE VALUE\nOK\nvalue from a file\nOK\nS KEY k\nOK\n"));

	/* from -f FILE; the last command's ERR gives status 1 */
	fd = make_file("cmds", "# a comment\nGET k\n\nGET nothing\n", cpath, sizeof(cpath));
	REQUIRE(fd >= 0);
	close(fd);
	run_tool(TOOL("-S", S, "-f", cpath), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 1);
	CHECK(has(&g_out, "value from a file\nOK\nERR 536870939 Not found <User defined source 1>\n"));

	/* from stdin (a pipe): ERR then OK gives 0 */
	run_tool(TOOL("-S", S), "GET nothing\nGET k\n", 20000, &g_out);
	CHECK_EQ(g_out.status, 0);
	CHECK(has(&g_out, "ERR 536870939"));
	CHECK(has(&g_out, "value from a file\nOK\n"));
	/* a command file line over 1000 characters is refused whole, not
	 * split into two commands */
	char *longf = malloc(1600);
	REQUIRE(longf != NULL);
	memcpy(longf, "GET ", 4);
	memset(longf + 4, 'k', 1500);
	memcpy(longf + 1504, "\nNOP\n", 6);
	fd = make_file("longcmds", longf, cpath, sizeof(cpath));
	free(longf);
	REQUIRE(fd >= 0);
	close(fd);
	run_tool(TOOL("-S", S, "-f", cpath), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 2);
	CHECK(!has(&g_out, "ERR"));
	fd = make_file("cmds", "# a comment\nGET k\n\nGET nothing\n", cpath, sizeof(cpath));
	REQUIRE(fd >= 0);
	close(fd);
	/* from stdin that is a regular file (it cannot be polled) */
	g_stdin_fd = open(cpath, O_RDONLY | O_CLOEXEC);
	run_tool(TOOL("-S", S), NULL, 20000, &g_out);
	close(g_stdin_fd);
	g_stdin_fd = -1;
	CHECK_EQ(g_out.status, 1);
	CHECK(has(&g_out, "value from a file\nOK\nERR 536870939 Not found <User defined source 1>\n"));
	/* a last line without LF, and /bye */
	run_tool(TOOL("-S", S), "NOP\nGET nothing", 20000, &g_out);
	CHECK_EQ(g_out.status, 1);
	run_tool(TOOL("-S", S), "GET k\n/bye\nGET nothing\n", 20000, &g_out);
	CHECK_EQ(g_out.status, 0);
	CHECK(!has(&g_out, "ERR"));

	/* INQUIRE answered by a program */
	run_tool(TOOL("-S", S, "--inquire-prog", "VALUE=printf 'from%%a\\nprogram'", "PUT p", "GET p"), NULL, 20000,
			&g_out);
	CHECK_EQ(g_out.status, 0);
	CHECK(has(&g_out, "from%a\nprogram\nOK\n"));
	/* a failing program: CAN, the server's ERR */
	run_tool(TOOL("-S", S, "--inquire-prog", "VALUE=exit 3", "PUT q"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 1);
	CHECK(has(&g_out, "ERR 536871189")); /* IPC call has been cancelled */
	/* a program that closes its output and lingers: the loop does not
	 * wait for it (--timeout still fires), and it is not left behind */
	uint64_t t1 = t_now_ms();
	run_tool(TOOL("-S", S, "-t", "300", "--inquire-prog", "VALUE=printf abc; exec >&-; exec sleep 4", "PUT z"), NULL,
			20000, &g_out);
	CHECK_EQ(g_out.status, 2);
	CHECK(t_now_ms() - t1 < 2500);
	CHECK_EQ(other_children(), 0);
	/* ... and the END waits for its exit status */
	run_tool(TOOL("-S", S, "--inquire-prog", "VALUE=printf late; exec >&-; sleep 0.3; exit 0", "PUT z", "GET z"),
			NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 0);
	CHECK(has(&g_out, "late\nOK\n"));
	/* no --inquire for the keyword: CAN */
	run_tool(TOOL("-S", S, "PUT r"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 1);
	CHECK(has(&g_out, "INQUIRE VALUE\nERR 536871189"));
	/* an unreadable file: CAN */
	run_tool(TOOL("-S", S, "--inquire", "VALUE=/nonexistent/file", "PUT r"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 1);

	/* --sendfd with INPUT FD and STORE */
	run_tool(TOOL("-S", S, "--sendfd", vpath, "INPUT FD", "STORE s", "GET s"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 0);
	CHECK(has(&g_out, "OK\nOK\nvalue from a file\nOK\n"));
	/* the same from the prompt: /sendfd */
	char script[300];
	snprintf(script, sizeof(script), "/sendfd %s\nINPUT FD\nSTORE t\nGET t\n", vpath);
	run_tool(TOOL("-S", S), script, 20000, &g_out);
	CHECK_EQ(g_out.status, 0);
	CHECK(has(&g_out, "value from a file\nOK\n"));

	/* --timeout: a slow command fails the connection (status 2) */
	uint64_t t0 = t_now_ms();
	run_tool(TOOL("-S", S, "--timeout", "200", "SLEEP 8000"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 2);
	CHECK(t_now_ms() - t0 < 6000);
	CHECK(memmem(g_out.err, g_out.errlen, "timed out", 9) != NULL);
	run_tool(TOOL("-S", S, "-t", "5000", "SLEEP 10"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 0);

	/* -q: D data only */
	run_tool(TOOL("-q", "-S", S, "GET k", "NOP"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 0);
	CHECK(g_out.outlen == 17 && memcmp(g_out.out, "value from a file", 17) == 0); /* the bytes as they are */

	/* -q still shows an ERR */
	run_tool(TOOL("-q", "-S", S, "GET nothing"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 1);
	CHECK(has(&g_out, "ERR 536870939"));
	/* HELP's answer comes as comment lines */
	run_tool(TOOL("-S", S, "HELP"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 0);
	CHECK(has(&g_out, "# NOP\n"));
	CHECK(has(&g_out, "# PUT <key>\n"));
	/* status 2: nothing listens there */
	char missing[160];
	snprintf(missing, sizeof(missing), "%s/no-socket", g_dir);
	run_tool(TOOL("-S", missing, "NOP"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 2);
	CHECK(g_out.errlen > 0);
	unlink(vpath);
	unlink(cpath);
}

/* weft-connect --tls against weft-kv serving Assuan over TLS on TCP: a
 * self-signed certificate made with certtool. */
static void test_tool_tls(void)
{
#ifdef WEFT_TEST_TLS
	char key[128], cert[128], tmpl[128], vpath[128];
	snprintf(key, sizeof(key), "%s/tls-key.pem", g_dir);
	snprintf(cert, sizeof(cert), "%s/tls-cert.pem", g_dir);
	int fd = make_file("tls.tmpl", "cn = \"localhost\"\ndns_name = \"localhost\"\nip_address = \"127.0.0.1\"\n"
			"tls_www_server\nsigning_key\nencryption_key\nexpiration_days = 30\n", tmpl, sizeof(tmpl));
	REQUIRE(fd >= 0);
	close(fd);
	fd = make_file("tls-value", "over TLS", vpath, sizeof(vpath));
	REQUIRE(fd >= 0);
	close(fd);
	const char *mk[] = {"certtool", "--generate-privkey", "--key-type=ecdsa", "--curve=secp256r1", "--outfile", key,
		NULL};
	pid_t p = spawn(mk, -1, -1, -1);
	REQUIRE(p > 0);
	int st = reap(p, 20000);
	REQUIRE(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	const char *sign[] = {"certtool", "--generate-self-signed", "--load-privkey", key, "--template", tmpl,
		"--outfile", cert, NULL};
	p = spawn(sign, -1, -1, -1);
	REQUIRE(p > 0);
	st = reap(p, 20000);
	REQUIRE(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);

	/* weft-kv says where it listens on its stdout */
	int po[2];
	REQUIRE(pipe2(po, O_CLOEXEC) == 0);
	const char *kv[] = {WEFT_KV_TLS_PATH, "--listen", "tcp:127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, NULL};
	pid_t kvpid = spawn(kv, -1, po[1], 2);
	g_kv_tls_pid = kvpid;
	close(po[1]);
	char line[256] = "";
	size_t n = 0;
	uint64_t end = t_now_ms() + WAIT_MS;
	while (kvpid > 0 && !memchr(line, '\n', n) && n < sizeof(line) - 1 && t_now_ms() < end) {
		struct pollfd pfd = {po[0], POLLIN, 0};
		if (poll(&pfd, 1, 50) > 0) {
			ssize_t k = read(po[0], line + n, sizeof(line) - 1 - n);
			if (k <= 0)
				break;
			n += (size_t)k;
		}
	}
	line[n] = '\0';
	close(po[0]);
	char addr[128] = "";
	CHECK_EQ(sscanf(line, "listening on %127s", addr), 1);
	if (addr[0]) {
		char inq[160];
		snprintf(inq, sizeof(inq), "VALUE=%s", vpath);
		run_tool(TOOL("--tls", "--cafile", cert, "-S", addr, "--inquire", inq, "PUT k", "GET k"), NULL, 20000,
				&g_out);
		CHECK_EQ(g_out.status, 0);
		CHECK(has(&g_out, "INQUIRE VALUE\nOK\nover TLS\nOK\n"));
		/* the name the certificate must carry */
		run_tool(TOOL("--tls", "--cafile", cert, "--servername", "localhost", "-S", addr, "GET k"), NULL, 20000,
				&g_out);
		CHECK_EQ(g_out.status, 0);
		run_tool(TOOL("--tls", "--cafile", cert, "--servername", "elsewhere.example", "-S", addr, "GET k"), NULL,
				20000, &g_out);
		CHECK_EQ(g_out.status, 2);
		/* a certificate nobody vouches for */
		run_tool(TOOL("--tls", "-S", addr, "NOP"), NULL, 20000, &g_out);
		CHECK_EQ(g_out.status, 2);
		/* plain Assuan to a TLS port: no greeting, --timeout ends it */
		run_tool(TOOL("-S", addr, "-t", "500", "NOP"), NULL, 20000, &g_out);
		CHECK_EQ(g_out.status, 2);
	}
	if (kvpid > 0) {
		kill(kvpid, SIGTERM);
		st = reap(kvpid, 10000);
		g_kv_tls_pid = 0;
		CHECK(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	unlink(key);
	unlink(cert);
	unlink(tmpl);
	unlink(vpath);
#endif
}

/* On a terminal weft-connect prompts with line editing (readline when it
 * was built with it): commands typed on a pty. */
static void test_tool_tty(void)
{
	REQUIRE(g_kv_pid > 0);
	int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	REQUIRE(m >= 0);
	CHECK_EQ(grantpt(m), 0);
	CHECK_EQ(unlockpt(m), 0);
	const char *name = ptsname(m);
	int sfd = name ? open(name, O_RDWR | O_NOCTTY | O_CLOEXEC) : -1;
	if (sfd < 0) {
		CHECK(!"pty");
		close(m);
		return;
	}
	static const char typed[] = "GET nothing\nNOP\n/bye\nGET nothing\n";
	CHECK_EQ(write(m, typed, sizeof(typed) - 1), (ssize_t)sizeof(typed) - 1);
	g_stdin_fd = sfd;
	run_tool(TOOL("-S", g_kv_sock), NULL, 20000, &g_out);
	g_stdin_fd = -1;
	close(sfd);
	close(m);
	CHECK_EQ(g_out.status, 0); /* NOP's OK; nothing runs after /bye */
	CHECK(has(&g_out, "> GET nothing"));
	CHECK(has(&g_out, "ERR 536870939"));
	CHECK(has(&g_out, "OK\n"));
}

/* --timeout bounds the wait for the greeting too: a server that accepts
 * (the backlog does) and never greets. */
static void test_tool_no_greeting(void)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/mute", g_dir);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	REQUIRE(fd >= 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	REQUIRE(strlen(path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	CHECK_EQ(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	CHECK_EQ(listen(fd, 8), 0);
	uint64_t t0 = t_now_ms();
	run_tool(TOOL("-S", path, "--timeout", "300", "NOP"), NULL, 8000, &g_out);
	CHECK_EQ(g_out.status, 2);
	CHECK(t_now_ms() - t0 < 6000);
	CHECK(memmem(g_out.err, g_out.errlen, "timed out", 9) != NULL);
	close(fd);
	unlink(path);
}

static void test_tool_agent(void)
{
	REQUIRE(g_have_agent);
	run_tool(TOOL("--agent", "--homedir", g_agent_home, "GETINFO version", "NOP"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 0);
	CHECK(has(&g_out, "2.2."));
	CHECK(has(&g_out, "\nOK\nOK\n"));
	/* a home directory whose name has a quote: gpgconf is asked all the
	 * same (no agent runs there: the connect fails, exit 2) */
	char qhome[160];
	snprintf(qhome, sizeof(qhome), "%s/it's", g_dir);
	CHECK_EQ(mkdir(qhome, 0700), 0);
	run_tool(TOOL("--agent", "--homedir", qhome, "NOP"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 2);
	CHECK(memmem(g_out.err, g_out.errlen, "can't connect: No such file or directory", 40) != NULL);
	rmdir(qhome);
	run_tool(TOOL("--agent", "--homedir", g_agent_home, "FOOBAR"), NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 1);
	CHECK(has(&g_out, "ERR 67109139 Unknown IPC command <GPG Agent>\n"));
	/* -S with the agent's socket; INQUIRE KEYPARAM from a file */
	char ppath[128];
	int fd = make_file("keyparam", "(genkey(ecc(curve 7:Ed25519)(flags eddsa)))", ppath, sizeof(ppath));
	REQUIRE(fd >= 0);
	close(fd);
	char inq[200];
	snprintf(inq, sizeof(inq), "KEYPARAM=%s", ppath);
	run_tool(TOOL("-S", g_agent_sock, "--inquire", inq, "GENKEY --no-protection", "KEYINFO --list"), NULL, 30000,
			&g_out);
	CHECK_EQ(g_out.status, 0);
	CHECK(has(&g_out, "S INQUIRE_MAXLEN 1024\nINQUIRE KEYPARAM\n(10:public-key(3:ecc"));
	CHECK(has(&g_out, "S KEYINFO "));
	unlink(ppath);
	/* a pipe server: gpg-agent --server with a socketpair */
	char home[160];
	snprintf(home, sizeof(home), "%s/gt", g_dir);
	REQUIRE(mkdir(home, 0700) == 0);
	run_tool(TOOL("-E", "--fdpassing", "--", "gpg-agent", "--homedir", home, "--server", "--", "GETINFO version",
			     "FOOBAR", "NOP"),
			NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 0);
	CHECK(has(&g_out, "2.2."));
	CHECK(has(&g_out, "ERR 67109139"));
	/* --sendfd: over a socketpair the agent takes it; over pipes it cannot go */
	char vpath[128];
	int vfd = make_file("agent-input", "x", vpath, sizeof(vpath));
	REQUIRE(vfd >= 0);
	close(vfd);
	run_tool(TOOL("-E", "--fdpassing", "--sendfd", vpath, "--", "gpg-agent", "--homedir", home, "--server", "--",
			     "INPUT FD"),
			NULL, 20000, &g_out);
	CHECK_EQ(g_out.status, 0);
	run_tool(TOOL("-E", "--sendfd", vpath, "--", "gpg-agent", "--homedir", home, "--server", "--", "INPUT FD"), NULL,
			20000, &g_out);
	CHECK_EQ(g_out.status, 1);
	CHECK(memmem(g_out.err, g_out.errlen, "Operation not supported", 23) != NULL);
	CHECK(has(&g_out, "ERR 67108933")); /* Not implemented */
	unlink(vpath);
}

/* ---- main ------------------------------------------------------------------ */

static void skip_test(void)
{
}

/* What the build found (tests/assuan-client/meson.build). */
#ifdef WEFT_TEST_GPG_AGENT
static const bool have_gpg = true;
#else
static const bool have_gpg = false;
#endif
#ifdef WEFT_TEST_TLS
static const bool have_tls = true;
#else
static const bool have_tls = false;
#endif

static void cleanup_all(void)
{
	kv_stop();
	agent_stop();
	if (g_dir[0]) {
		const char *argv[] = {"rm", "-rf", g_dir, NULL};
		pid_t p = spawn(argv, -1, -1, -1);
		if (p > 0)
			reap(p, 20000);
		g_dir[0] = '\0';
	}
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--pipe-server") == 0)
		return pipe_server_main();
	signal(SIGPIPE, SIG_IGN);
	signal(SIGALRM, on_alarm);
#if defined(__SANITIZE_ADDRESS__)
	__sanitizer_set_death_callback(emergency_cleanup); /* ASan reports, then this */
#else
	static const int crashes[] = {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL};
	for (size_t i = 0; i < sizeof(crashes) / sizeof(crashes[0]); i++)
		signal(crashes[i], on_crash);
#endif
	setvbuf(stdout, NULL, _IOLBF, 0);
	/* the daemonized gpg-agent becomes our child: we can reap it */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	ssize_t n = readlink("/proc/self/exe", g_self, sizeof(g_self) - 1);
	if (n > 0)
		g_self[n] = '\0';
	snprintf(g_dir, sizeof(g_dir), "/tmp/wac-XXXXXX");
	if (mkdtemp(g_dir) == NULL) {
		printf("Bail out! mkdtemp: %s\n", strerror(errno));
		return 2;
	}
	atexit(cleanup_all);

	run("greeting with comment lines", test_greeting_comments);
	run("greeting split at every byte", test_greeting_split);
	run("greeting ERR, garbage, EOF", test_greeting_refused);
	run("connect timeout (no greeting)", test_connect_timeout);
	run("connect by path", test_connect_path);
	run("D, S, comments, END, OK text", test_data_status_comments);
	run("ERR values", test_err_values);
	run("queued transactions in order", test_queue_order);
	run("a command is sent at once when nothing waits", test_send_at_once);
	run("5000 queued transactions", test_queue_many);
	run("bad commands", test_bad_commands);
	run("INQUIRE: now, later, CAN, no callback, failing callback", test_inquire_now_and_later);
	run("INQUIRE on the wire", test_inquire_wire);
	run("answer lines, byte by byte", test_answer_lines);
	run("random answers in random pieces", test_answer_random);
	run("lines that are no answer: EPROTO", test_answer_garbage);
	run("client_free says BYE", test_free_says_bye);
	run("callbacks that end the transaction", test_callback_ends);
	run("cancel while waiting for the answer", test_cancel_waiting);
	run("cancel while waiting, on the wire", test_cancel_waiting_wire);
	run("cancel during INQUIRE sends CAN", test_cancel_inquire);
	run("cancel while queued", test_cancel_queued);
	run("per-transaction timeout", test_timeout);
	run("timeout during INQUIRE and while queued", test_timeout_inquire_queued);
	run("server dies mid-transaction", test_server_dies);
	run("client_free (and cancel) from callbacks", test_free_in_callback);
	run("sendfd + INPUT FD (same inode)", test_sendfd);
	run("sendfd after a big INQUIRE answer: in order", test_sendfd_order);
	run("low-level lines, loop driven by hand", test_low_level);
	run("low-level read_line into a small buffer", test_low_level_small_buffer);
	run("pipe server (self): inherit, exit status", test_pipe_self);
	run("pipe server gets the given descriptors, none of weft's", test_pipe_fds);
	run("pipe server without pidfd_open (seccomp)", test_no_pidfd);

	static const char *const agent_tests[] = {
		"gpg-agent: GETINFO, NOP, unknown, HAVEKEY, status, cancel",
		"gpg-agent: GENKEY with async INQUIRE, KEYINFO, READKEY",
		"weft-connect against gpg-agent",
	};
	if (have_gpg && (selected(agent_tests[0]) || selected(agent_tests[1]) || selected(agent_tests[2]))) {
		g_have_agent = agent_start();
		if (!g_have_agent)
			printf("# gpg-agent could not be started: its tests fail\n");
	}
	if (have_gpg) {
		run(agent_tests[0], test_agent_basics);
		run(agent_tests[1], test_agent_genkey);
		run("gpg-agent --server as a pipe server (+fd passing)", test_agent_pipe);
	} else {
		run("gpg-agent # SKIP gpg-agent or gpgconf not found at build time", skip_test);
	}

	run("weft-connect --help and bad options", test_tool_help);
	run("weft-connect with pipe servers that fail", test_tool_pipe_fail);
	static const char *const kv_tests[] = {"weft-connect against weft-kv", "weft-connect on a terminal"};
	if ((selected(kv_tests[0]) || selected(kv_tests[1])) && !kv_start())
		printf("# weft-kv could not be started\n");
	run(kv_tests[0], test_tool_kv);
	run(kv_tests[1], test_tool_tty);
	if (have_tls)
		run("weft-connect --tls against weft-kv over TLS", test_tool_tls);
	else
		run("weft-connect --tls # SKIP no TLS module, examples or certtool", skip_test);
	if (g_kv_pid > 0)
		run("weft-kv exits cleanly after the sessions", test_kv_exit);
	kv_stop();
	run("weft-connect --timeout while waiting for the greeting", test_tool_no_greeting);
	if (have_gpg)
		run(agent_tests[2], test_tool_agent);
	agent_stop();
	return t_finish();
}
