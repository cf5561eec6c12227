/* Tests for weft requests and queues (include/weft/req.h).
 *
 * The operations below are written in the documented style (weft_req_new +
 * state + cleanup + cancel fn) on real timers, pipes and socketpairs:
 *   sleep     a weft_timer; optional cancel fn that refuses or completes
 *   readbyte  read one byte from an fd with a weft_io watcher
 *   writer    write N bytes to a socket, recording progress; cancelable
 *   instant   completes (done, error or ENOMEM) inside its own _send
 *   manual    never completes on its own; the test completes it
 *   qop       a queued operation: its trigger completes at once, after a
 *             timer, or never (manual)
 * Every operation records its cleanup stages (and the test callback its
 * calls) in a trace, so the order of FINISHED / callback / FREED can be
 * checked. */
#include "helper.h"

#include <weft/weft.h>

#include <errno.h>
#include <fcntl.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SLACK_MS 250 /* upper tolerance for timers (ASan, valgrind, CI) */

/* ---- trace --------------------------------------------------------------- */

struct trace_ent {
	char tag;
	char what[8];
};
static struct trace_ent g_trace[512];
static size_t g_ntrace;

static void tr(char tag, const char *what)
{
	if (tag == 0 || g_ntrace >= sizeof g_trace / sizeof g_trace[0])
		return;
	g_trace[g_ntrace].tag = tag;
	snprintf(g_trace[g_ntrace].what, sizeof g_trace[0].what, "%s", what);
	g_ntrace++;
}

static void tr_reset(void)
{
	g_ntrace = 0;
}

/* The whole trace as "a:fin a:cb b:free" (tag == 0) or the events of one
 * tag as "fin cb free". */
static const char *trace_str(char tag)
{
	static char buf[8192];
	size_t n = 0;
	buf[0] = 0;
	for (size_t i = 0; i < g_ntrace && n < sizeof buf - 32; i++) {
		if (tag != 0 && g_trace[i].tag != tag)
			continue;
		if (tag == 0)
			n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%c:%s", n ? " " : "",
					      g_trace[i].tag, g_trace[i].what);
		else
			n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", n ? " " : "",
					      g_trace[i].what);
	}
	return buf;
}

static void check_trace(const char *file, int line, char tag, const char *expected)
{
	const char *got = trace_str(tag);
	if (strcmp(got, expected) == 0)
		return;
	if (tag)
		printf("# trace of '%c' is \"%s\", expected \"%s\"\n", tag, got, expected);
	else
		printf("# trace is \"%s\", expected \"%s\"\n", got, expected);
	t_fail(file, line, "trace");
}
/* CHECK_TRACE(0, "a:fin a:cb") or CHECK_TRACE('a', "fin cb") */
#define CHECK_TRACE(tag, expected) check_trace(__FILE__, __LINE__, (tag), (expected))

/* ---- where are we: set around calls that must not run callbacks -------- */

static int g_in_send;   /* inside an operation's _send */
static int g_in_cancel; /* inside weft_req_cancel (called by the test) */
static int g_in_add;    /* inside weft_queue_add / weft_queue_add_now */
static int g_in_qfree;  /* inside weft_queue_free */
static int g_in_done;   /* inside an operation's weft_req_done */

/* ---- a completion callback that records what it saw -------------------- */

struct rec {
	char tag;      /* for the trace */
	bool free_it;  /* free the request inside the callback */
	weft_queue *q; /* if set, record its length in the callback */

	int calls;
	weft_req *req;
	weft_req_status status;
	int err;  /* weft_req_is_error's errno, 0 if not an error */
	int recv; /* weft_req_simple_recv */
	bool reentrant; /* ran inside _send / cancel / queue add / queue free */
	bool in_done;   /* ran synchronously inside weft_req_done */
	uint64_t at;    /* t_now_ms() */
	size_t qlen;
};

static void rec_cb(weft_req *req, void *data)
{
	struct rec *r = data;
	r->calls++;
	r->req = req;
	r->status = weft_req_get_status(req);
	int e = -1;
	r->err = weft_req_is_error(req, &e) ? e : 0;
	r->recv = weft_req_simple_recv(req, NULL);
	r->reentrant = g_in_send || g_in_cancel || g_in_add || g_in_qfree;
	r->in_done = g_in_done > 0;
	r->at = t_now_ms();
	if (r->q)
		r->qlen = weft_queue_length(r->q);
	tr(r->tag, "cb");
	if (r->free_it)
		weft_req_free(req);
}

/* ---- common state header: every operation's state starts with it ------- */

struct op_hdr {
	char tag;
	int id;
};

static void note_cleanup(const struct op_hdr *h, weft_req_stage stage)
{
	tr(h->tag, stage == WEFT_REQ_STAGE_FINISHED ? "fin"
		   : stage == WEFT_REQ_STAGE_FREED  ? "free"
						    : "stage?");
}

static int g_cleanup_fin_total, g_cleanup_free_total;

static void count_cleanup(weft_req_stage stage)
{
	if (stage == WEFT_REQ_STAGE_FINISHED)
		g_cleanup_fin_total++;
	else
		g_cleanup_free_total++;
}

/* A request of an operation whose state starts with an op_hdr tagged tag,
 * with that cleanup. */
static weft_req *op_new(weft_loop *loop, size_t size, const char *name, char tag,
			weft_req_cleanup_fn cleanup)
{
	weft_req *req = weft_req_new(loop, size, name);
	if (req == NULL)
		return NULL;
	struct op_hdr *h = weft_req_state(req);
	h->tag = tag;
	weft_req_set_cleanup(req, cleanup);
	return req;
}

/* The end of every cleanup: trace and count the stage. */
static void op_cleanup_done(const struct op_hdr *h, weft_req_stage stage)
{
	note_cleanup(h, stage);
	count_cleanup(stage);
}

/* ---- operation: sleep ------------------------------------------------------ */

enum { CANCEL_NONE, CANCEL_REFUSE, CANCEL_NOW };
#define SLEEP_NOSTART UINT64_MAX

struct sleep_state {
	struct op_hdr h;
	weft_timer *t;
	int cancel_calls;
};

static void sleep_cleanup(weft_req *req, weft_req_stage stage)
{
	struct sleep_state *s = weft_req_state(req);
	weft_timer_free(s->t);
	s->t = NULL;
	op_cleanup_done(&s->h, stage);
}

static void sleep_fired(weft_timer *t, void *data)
{
	(void)t;
	g_in_done++;
	weft_req_done(data); /* may free the request (callback) */
	g_in_done--;
}

static bool sleep_cancel_refuse(weft_req *req)
{
	struct sleep_state *s = weft_req_state(req);
	s->cancel_calls++;
	return false;
}

static bool sleep_cancel_now(weft_req *req)
{
	struct sleep_state *s = weft_req_state(req);
	s->cancel_calls++;
	weft_timer_stop(s->t);
	weft_req_error(req, ECANCELED);
	return true;
}

/* ms == SLEEP_NOSTART: the timer is created but not started (the test
 * starts it with weft_timer_start(sleep_timer(req), ...)). */
static weft_req *sleep_send(weft_loop *loop, uint64_t ms, char tag, int cancel_mode)
{
	weft_req *req = op_new(loop, sizeof(struct sleep_state), "sleep", tag, sleep_cleanup);
	if (req == NULL)
		return NULL;
	struct sleep_state *s = weft_req_state(req);
	if (cancel_mode == CANCEL_REFUSE)
		weft_req_set_cancel_fn(req, sleep_cancel_refuse);
	else if (cancel_mode == CANCEL_NOW)
		weft_req_set_cancel_fn(req, sleep_cancel_now);
	g_in_send++;
	int r = weft_timer_new(loop, sleep_fired, req, &s->t);
	if (!weft_req_error(req, r) && ms != SLEEP_NOSTART)
		weft_req_error(req, weft_timer_start(s->t, ms, 0));
	g_in_send--;
	return req;
}

static int sleep_recv(weft_req *req, int *perrno)
{
	return weft_req_simple_recv(req, perrno);
}

static weft_timer *sleep_timer(weft_req *req)
{
	return ((struct sleep_state *)weft_req_state(req))->t;
}

/* ---- operation: read one byte ------------------------------------------ */

struct rb_state {
	struct op_hdr h;
	int fd;
	weft_io *io;
	char byte;
};

static void rb_cleanup(weft_req *req, weft_req_stage stage)
{
	struct rb_state *s = weft_req_state(req);
	weft_io_free(s->io);
	s->io = NULL;
	op_cleanup_done(&s->h, stage);
}

static void rb_ready(weft_io *io, unsigned revents, void *data)
{
	(void)io;
	(void)revents;
	weft_req *req = data;
	struct rb_state *s = weft_req_state(req);
	char c;
	ssize_t n = read(s->fd, &c, 1);
	if (n == 1) {
		s->byte = c;
		g_in_done++;
		weft_req_done(req);
		g_in_done--;
	} else if (n == 0) {
		weft_req_error(req, -EPIPE); /* negative errno: stored positive */
	} else if (errno != EAGAIN && errno != EINTR) {
		weft_req_error(req, errno);
	}
}

static weft_req *rb_send(weft_loop *loop, int fd, char tag)
{
	weft_req *req = op_new(loop, sizeof(struct rb_state), "readbyte", tag, rb_cleanup);
	if (req == NULL)
		return NULL;
	struct rb_state *s = weft_req_state(req);
	s->fd = fd;
	g_in_send++;
	int r = weft_io_new(loop, fd, rb_ready, req, &s->io);
	if (!weft_req_error(req, r))
		weft_req_error(req, weft_io_start(s->io, WEFT_IO_READ));
	g_in_send--;
	return req;
}

static int rb_recv(weft_req *req, char *byte, int *perrno)
{
	int r = weft_req_simple_recv(req, perrno);
	if (r < 0)
		return r;
	*byte = ((struct rb_state *)weft_req_state(req))->byte;
	return 0;
}

/* ---- operation: write N bytes, with progress and cancel --------------- */

static char g_wr_chunk[65536];

struct wr_state {
	struct op_hdr h;
	int fd;
	weft_io *io;
	uint64_t total, done;
	int cancel_calls;
};

static void wr_cleanup(weft_req *req, weft_req_stage stage)
{
	struct wr_state *s = weft_req_state(req);
	weft_io_free(s->io);
	s->io = NULL;
	op_cleanup_done(&s->h, stage);
}

static void wr_ready(weft_io *io, unsigned revents, void *data)
{
	(void)io;
	(void)revents;
	weft_req *req = data;
	struct wr_state *s = weft_req_state(req);
	uint64_t left = s->total - s->done;
	size_t want = left < sizeof g_wr_chunk ? (size_t)left : sizeof g_wr_chunk;
	ssize_t n = write(s->fd, g_wr_chunk, want);
	if (n < 0) {
		if (errno != EAGAIN && errno != EINTR)
			weft_req_error(req, errno);
		return;
	}
	s->done += (uint64_t)n;
	weft_req_set_progress(req, s->done);
	if (s->done == s->total)
		weft_req_done(req);
}

static bool wr_cancel(weft_req *req)
{
	struct wr_state *s = weft_req_state(req);
	s->cancel_calls++;
	weft_io_stop(s->io);
	weft_req_error(req, ECANCELED); /* partial progress stays readable */
	return true;
}

static weft_req *wr_send(weft_loop *loop, int fd, uint64_t total, char tag)
{
	weft_req *req = op_new(loop, sizeof(struct wr_state), "writer", tag, wr_cleanup);
	if (req == NULL)
		return NULL;
	struct wr_state *s = weft_req_state(req);
	s->fd = fd;
	s->total = total;
	weft_req_set_cancel_fn(req, wr_cancel);
	g_in_send++;
	int r = weft_io_new(loop, fd, wr_ready, req, &s->io);
	if (!weft_req_error(req, r))
		weft_req_error(req, weft_io_start(s->io, WEFT_IO_WRITE));
	g_in_send--;
	return req;
}

/* ---- operations: instant (completes in _send) and manual ---------------- */

struct hdr_state {
	struct op_hdr h;
};

static void hdr_cleanup(weft_req *req, weft_req_stage stage)
{
	struct hdr_state *s = weft_req_state(req);
	op_cleanup_done(&s->h, stage);
}

/* err == 0: done; -ENOMEM: weft_req_nomem(NULL); otherwise weft_req_error. */
static weft_req *instant_send(weft_loop *loop, int err, char tag)
{
	weft_req *req = op_new(loop, sizeof(struct hdr_state), "instant", tag, hdr_cleanup);
	if (req == NULL)
		return NULL;
	g_in_send++;
	if (err == -ENOMEM)
		weft_req_nomem(NULL, req);
	else if (!weft_req_error(req, err))
		weft_req_done(req);
	g_in_send--;
	return req;
}

static weft_req *manual_new(weft_loop *loop, char tag)
{
	return op_new(loop, sizeof(struct hdr_state), "manual", tag, hdr_cleanup);
}

/* ---- operation for queues ------------------------------------------------ */

#define QOP_MANUAL UINT64_MAX
#define QORDER_MAX 10100

struct qop_state {
	struct op_hdr h;
	weft_timer *t;
	uint64_t ms;
	int triggers;
};

static int g_qorder[QORDER_MAX]; /* ids in trigger order */
static size_t g_qn;
static int g_qbad;          /* triggers with wrong data / twice / completed req */
static int g_trig_in_add;   /* triggers that ran inside weft_queue_add(_now) */
static int g_trigger_token; /* the trigger's data */

static void q_reset(void)
{
	g_qn = 0;
	g_qbad = 0;
	g_trig_in_add = 0;
}

static void qop_cleanup(weft_req *req, weft_req_stage stage)
{
	struct qop_state *s = weft_req_state(req);
	weft_timer_free(s->t);
	s->t = NULL;
	op_cleanup_done(&s->h, stage);
}

static void qop_trigger(weft_req *req, void *data)
{
	struct qop_state *s = weft_req_state(req);
	if (data != &g_trigger_token) {
		printf("# trigger of id %d got wrong data\n", s->h.id);
		g_qbad++;
	}
	if (!weft_req_is_in_progress(req)) {
		printf("# trigger of id %d ran for a completed request\n", s->h.id);
		g_qbad++;
	}
	if (++s->triggers > 1) {
		printf("# trigger of id %d ran %d times\n", s->h.id, s->triggers);
		g_qbad++;
	}
	if (g_in_add)
		g_trig_in_add++;
	if (g_qn < QORDER_MAX)
		g_qorder[g_qn++] = s->h.id;
	tr(s->h.tag, "trig");
	if (s->ms == QOP_MANUAL)
		return;
	if (s->ms == 0) {
		weft_req_done(req); /* may free req */
		return;
	}
	int r = weft_timer_new(weft_req_loop(req), sleep_fired, req, &s->t);
	if (weft_req_error(req, r))
		return;
	weft_req_error(req, weft_timer_start(s->t, s->ms, 0));
}

static weft_req *qop_new(weft_loop *loop, uint64_t ms, char tag, int id)
{
	weft_req *req = op_new(loop, sizeof(struct qop_state), "qop", tag, qop_cleanup);
	if (req == NULL)
		return NULL;
	struct qop_state *s = weft_req_state(req);
	s->h.id = id;
	s->ms = ms;
	return req;
}

static int qop_triggers(weft_req *req)
{
	return ((struct qop_state *)weft_req_state(req))->triggers;
}

static int qadd(weft_queue *q, weft_req *req)
{
	g_in_add++;
	int r = weft_queue_add(q, req, qop_trigger, &g_trigger_token);
	g_in_add--;
	return r;
}

static int qadd_now(weft_queue *q, weft_req *req)
{
	g_in_add++;
	int r = weft_queue_add_now(q, req, qop_trigger, &g_trigger_token);
	g_in_add--;
	return r;
}

/* ---- small helpers --------------------------------------------------------- */

static weft_loop *mkloop(void)
{
	weft_loop *loop = NULL;
	int r = weft_loop_new(&loop);
	CHECK_EQ(r, 0);
	return r == 0 ? loop : NULL;
}

static void endloop(weft_loop *loop)
{
	CHECK_EQ(weft_loop_free(loop), 0);
}

static int cancel(weft_req *req)
{
	g_in_cancel++;
	int r = weft_req_cancel(req);
	g_in_cancel--;
	return r;
}


/* mkloop with an empty trace. */
static weft_loop *loop_setup(void)
{
	weft_loop *loop = mkloop();
	tr_reset();
	return loop;
}

/* loop_setup for a test holding the fds fd0 and fd1 (-1: none): on
 * failure they are closed. */
static weft_loop *loop_setup_fds(int fd0, int fd1)
{
	weft_loop *loop = loop_setup();
	if (loop == NULL) {
		if (fd0 >= 0)
			close(fd0);
		if (fd1 >= 0)
			close(fd1);
	}
	return loop;
}

/* Ends a test holding the fds fd0 and fd1 (-1: none). */
static void endloop_fds(weft_loop *loop, int fd0, int fd1)
{
	endloop(loop);
	if (fd0 >= 0)
		close(fd0);
	if (fd1 >= 0)
		close(fd1);
}

/* A non-blocking socketpair (bufsize > 0: with that send buffer on sv[0]
 * and receive buffer on sv[1]) and a loop_setup; false (nothing left open) if
 * either fails. */
static bool pair_setup(int sv[2], int bufsize, weft_loop **loop)
{
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
		return false;
	if (bufsize > 0) {
		setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
		setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
	}
	*loop = loop_setup_fds(sv[0], sv[1]);
	return *loop != NULL;
}

/* A non-blocking pipe whose write end is already closed (reads see EOF)
 * and a loop_setup; false (nothing left open) if either fails. */
static bool eof_pipe_setup(int *rfd, weft_loop **loop)
{
	int p[2];
	if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0)
		return false;
	close(p[1]);
	*rfd = p[0];
	*loop = loop_setup_fds(p[0], -1);
	return *loop != NULL;
}

/* Reports req's completion to r (rec_cb); returns req (NULL stays NULL). */
static weft_req *watch(weft_req *req, struct rec *r)
{
	if (req)
		weft_req_set_callback(req, rec_cb, r);
	return req;
}

/* Frees every request of the list, in order. */
static void free_each(weft_req *const req[], size_t n)
{
	for (size_t i = 0; i < n; i++)
		weft_req_free(req[i]);
}
#define REQ_LIST(...) (weft_req *const[]){ __VA_ARGS__ }
#define REQ_COUNT(...) (sizeof REQ_LIST(__VA_ARGS__) / sizeof(weft_req *))
#define FREE_EACH(...) free_each(REQ_LIST(__VA_ARGS__), REQ_COUNT(__VA_ARGS__))

/* The callback ran once, with this status. */
#define CHECK_ONCE(r, st)                 \
	do {                              \
		CHECK_EQ((r).calls, 1);   \
		CHECK_EQ((r).status, st); \
	} while (0)
/* The callback ran once, with this errno (0: no error). */
#define CHECK_ONCE_ERR(r, e)           \
	do {                           \
		CHECK_EQ((r).calls, 1); \
		CHECK_EQ((r).err, e);   \
	} while (0)
/* An elapsed time of about ms: not shorter (2 ms grace), at most SLACK_MS
 * longer. */
#define CHECK_ABOUT(el, ms)                     \
	do {                                    \
		CHECK((el) >= (ms) - 2);        \
		CHECK((el) <= (ms) + SLACK_MS); \
	} while (0)

/* =========================================================================
 * basics
 * ========================================================================= */

static void test_new_and_state(void)
{
	CHECK(weft_req_new(NULL, 16, "x") == NULL);
	weft_loop *loop = mkloop();
	REQUIRE(loop);
	weft_req *req = weft_req_new(loop, 100, "probe");
	REQUIRE(req);
	unsigned char *st = weft_req_state(req);
	REQUIRE(st);
	CHECK(((uintptr_t)st % alignof(max_align_t)) == 0);
	bool zero = true;
	for (int i = 0; i < 100; i++)
		zero = zero && st[i] == 0;
	CHECK(zero);
	memset(st, 0xa5, 100); /* the whole state is ours (ASan checks) */
	CHECK(weft_req_loop(req) == loop);
	CHECK(strcmp(weft_req_name(req), "probe") == 0);
	CHECK_EQ(weft_req_get_status(req), WEFT_REQ_IN_PROGRESS);
	CHECK(weft_req_is_in_progress(req));
	CHECK_EQ(weft_req_progress(req), 0);
	weft_req_set_progress(req, 12345);
	CHECK_EQ(weft_req_progress(req), 12345);
	int e = -7;
	CHECK(!weft_req_is_error(req, &e));
	CHECK_EQ(e, -7);
	CHECK_EQ(weft_req_simple_recv(req, NULL), -EINPROGRESS);
	FREE_EACH(req, NULL);
	/* a request that did nothing leaves nothing behind */
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	endloop(loop);
}

static void test_sleep_done(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	uint64_t t0 = t_now_ms();
	weft_req *req = sleep_send(loop, 40, 'a', CANCEL_NONE);
	REQUIRE(req);
	struct rec r = { .tag = 'a' };
	weft_req_set_callback(req, rec_cb, &r);
	CHECK(strcmp(weft_req_name(req), "sleep") == 0);
	CHECK_EQ(weft_req_get_status(req), WEFT_REQ_IN_PROGRESS);
	CHECK(weft_req_is_in_progress(req));
	int e = -7;
	CHECK_EQ(sleep_recv(req, &e), -EINPROGRESS);
	e = -7;
	CHECK(!weft_req_is_error(req, &e));
	CHECK_EQ(e, -7);

	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	uint64_t el = t_now_ms() - t0;
	CHECK_EQ(r.calls, 1);
	CHECK(r.req == req);
	CHECK_EQ(r.status, WEFT_REQ_DONE);
	CHECK_EQ(r.err, 0);
	CHECK_EQ(r.recv, 0);
	CHECK(!r.reentrant);
	CHECK(r.in_done); /* a completion from the loop calls back synchronously */
	CHECK_ABOUT(el, 40);
	e = -7;
	CHECK_EQ(sleep_recv(req, &e), 0);
	CHECK_EQ(e, -7); /* *perrno only set on error */
	CHECK(!weft_req_is_error(req, &e));
	CHECK_EQ(e, -7);
	CHECK(!weft_req_is_in_progress(req));
	CHECK_EQ(weft_req_get_status(req), WEFT_REQ_DONE);
	CHECK(sleep_timer(req) == NULL); /* FINISHED cleanup released it */
	CHECK_TRACE(0, "a:fin a:cb");
	weft_req_free(req);
	CHECK_TRACE(0, "a:fin a:cb a:free");
	endloop(loop);
}

static void test_readbyte(void)
{
	int sv[2];
	weft_loop *loop;
	REQUIRE(pair_setup(sv, 0, &loop));
	weft_req *req = rb_send(loop, sv[0], 'a');
	struct rec r = { .tag = 'a' };
	if (req) {
		weft_req_set_callback(req, rec_cb, &r);
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
		CHECK_EQ(r.calls, 0);
		CHECK_EQ(write(sv[1], "Z", 1), 1);
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
		CHECK_ONCE(r, WEFT_REQ_DONE);
		char c = 0;
		int e = -7;
		CHECK_EQ(rb_recv(req, &c, &e), 0);
		CHECK_EQ(c, 'Z');
		CHECK_EQ(e, -7);
		CHECK_TRACE(0, "a:fin a:cb");
		weft_req_free(req);
	} else {
		CHECK(req != NULL);
	}
	endloop_fds(loop, sv[0], sv[1]);
}

static void test_readbyte_error(void)
{
	int rfd;
	weft_loop *loop;
	REQUIRE(eof_pipe_setup(&rfd, &loop));
	weft_req *req = rb_send(loop, rfd, 'a');
	struct rec r = { .tag = 'a' };
	if (req) {
		weft_req_set_callback(req, rec_cb, &r);
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
		CHECK_ONCE(r, WEFT_REQ_ERROR);
		CHECK_EQ(r.err, EPIPE);
		CHECK_EQ(r.recv, -EPIPE);
		CHECK_EQ(weft_req_get_status(req), WEFT_REQ_ERROR);
		char c = 'q';
		int e = -7;
		CHECK_EQ(rb_recv(req, &c, &e), -EPIPE);
		CHECK_EQ(e, EPIPE);
		CHECK_EQ(c, 'q');
		e = -7;
		CHECK(weft_req_is_error(req, &e));
		CHECK_EQ(e, EPIPE);
		CHECK(weft_req_is_error(req, NULL));
		CHECK_TRACE(0, "a:fin a:cb");
		weft_req_free(req);
	} else {
		CHECK(req != NULL);
	}
	endloop_fds(loop, rfd, -1);
}

static void test_error_values(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	weft_req *a = manual_new(loop, 'a');
	weft_req *b = manual_new(loop, 'b');
	weft_req *c = manual_new(loop, 'c');
	weft_req *d = manual_new(loop, 'd');
	REQUIRE(a && b && c && d);
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' }, rc = { .tag = 'c' }, rd = { .tag = 'd' };
	weft_req_set_callback(a, rec_cb, &ra);
	weft_req_set_callback(b, rec_cb, &rb);
	weft_req_set_callback(c, rec_cb, &rc);
	weft_req_set_callback(d, rec_cb, &rd);

	/* error(0): false, nothing happens */
	CHECK(!weft_req_error(a, 0));
	CHECK_EQ(weft_req_get_status(a), WEFT_REQ_IN_PROGRESS);
	CHECK_EQ(ra.calls, 0);
	CHECK_TRACE(0, "");
	/* nomem(non-NULL): false, nothing happens */
	CHECK(!weft_req_nomem(&ra, a));
	CHECK_EQ(weft_req_get_status(a), WEFT_REQ_IN_PROGRESS);
	CHECK_TRACE(0, "");

	/* negative errno stored positive */
	CHECK(weft_req_error(a, -EIO));
	CHECK_ONCE(ra, WEFT_REQ_ERROR);
	CHECK_EQ(ra.err, EIO);
	CHECK_EQ(ra.recv, -EIO);
	/* positive errno stored positive */
	CHECK(weft_req_error(b, ENOENT));
	CHECK_ONCE_ERR(rb, ENOENT);
	int e = -7;
	CHECK_EQ(weft_req_simple_recv(b, &e), -ENOENT);
	CHECK_EQ(e, ENOENT);
	/* nomem(NULL) */
	CHECK(weft_req_nomem(NULL, c));
	CHECK_ONCE(rc, WEFT_REQ_ERROR);
	CHECK_EQ(rc.err, ENOMEM);
	e = -7;
	CHECK_EQ(weft_req_simple_recv(c, &e), -ENOMEM);
	CHECK_EQ(e, ENOMEM);
	/* nomem inside _send */
	weft_req *n = instant_send(loop, -ENOMEM, 'n');
	REQUIRE(n);
	e = -7;
	CHECK(weft_req_is_error(n, &e));
	CHECK_EQ(e, ENOMEM);
	/* done */
	weft_req_done(d);
	CHECK_ONCE(rd, WEFT_REQ_DONE);
	CHECK_EQ(rd.recv, 0);
	CHECK_TRACE(0, "a:fin a:cb b:fin b:cb c:fin c:cb n:fin d:fin d:cb");

	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(ra.calls + rb.calls + rc.calls + rd.calls, 4);
	FREE_EACH(a, b, c, d, n);
	endloop(loop);
}

static void test_double_completion(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	weft_req *a = manual_new(loop, 'a');
	weft_req *b = manual_new(loop, 'b');
	REQUIRE(a && b);
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' };
	weft_req_set_callback(a, rec_cb, &ra);
	weft_req_set_callback(b, rec_cb, &rb);

	weft_req_done(a);
	CHECK_EQ(ra.calls, 1);
	CHECK(weft_req_error(a, EIO)); /* non-zero err: true, but ignored */
	CHECK(weft_req_nomem(NULL, a));
	weft_req_done(a);
	CHECK_EQ(weft_req_get_status(a), WEFT_REQ_DONE);
	CHECK_EQ(weft_req_simple_recv(a, NULL), 0);
	CHECK_EQ(cancel(a), -EALREADY);
	CHECK_EQ(weft_req_set_timeout(a, 1), -EALREADY);

	weft_req_error(b, EIO);
	weft_req_done(b);
	weft_req_error(b, EPERM);
	CHECK_EQ(weft_req_get_status(b), WEFT_REQ_ERROR);
	int e = 0;
	CHECK(weft_req_is_error(b, &e));
	CHECK_EQ(e, EIO);

	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(ra.calls, 1);
	CHECK_EQ(rb.calls, 1);
	CHECK_EQ(weft_req_get_status(a), WEFT_REQ_DONE);
	CHECK_TRACE(0, "a:fin a:cb b:fin b:cb");
	FREE_EACH(a, b);
	endloop(loop);
}

/* =========================================================================
 * completion inside _send is posted
 * ========================================================================= */

static void test_complete_in_send(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' };
	weft_req *a = instant_send(loop, 0, 'a');
	weft_req *b = instant_send(loop, -EACCES, 'b');
	REQUIRE(a && b);
	/* completed already: status and results are readable */
	CHECK_EQ(weft_req_get_status(a), WEFT_REQ_DONE);
	CHECK_EQ(weft_req_get_status(b), WEFT_REQ_ERROR);
	CHECK_EQ(weft_req_simple_recv(a, NULL), 0);
	CHECK_EQ(weft_req_simple_recv(b, NULL), -EACCES);
	CHECK_TRACE(0, "a:fin b:fin");
	weft_req_set_callback(a, rec_cb, &ra);
	weft_req_set_callback(b, rec_cb, &rb);
	CHECK_EQ(ra.calls, 0);
	CHECK_EQ(rb.calls, 0);
	/* posted work: the loop must not wait */
	CHECK_EQ(weft_loop_get_timeout(loop), 0);

	/* the next iteration delivers them */
	CHECK(weft_loop_run(loop, WEFT_RUN_NOWAIT) >= 0);
	CHECK_EQ(ra.calls, 1);
	CHECK_EQ(rb.calls, 1);
	CHECK(!ra.reentrant);
	CHECK(!rb.reentrant);
	CHECK_EQ(ra.status, WEFT_REQ_DONE);
	CHECK_EQ(rb.status, WEFT_REQ_ERROR);
	CHECK_EQ(rb.err, EACCES);
	CHECK_TRACE('a', "fin cb");
	CHECK_TRACE('b', "fin cb");
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(ra.calls, 1);
	CHECK_EQ(rb.calls, 1);
	FREE_EACH(a, b);
	endloop(loop);
}

static void test_complete_in_send_callback_later(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	/* callback replaced before the posted completion runs: the new one runs */
	struct rec r1 = { .tag = '1' }, r2 = { .tag = '2' };
	weft_req *a = instant_send(loop, EIO, 'a');
	REQUIRE(a);
	weft_req_set_callback(a, rec_cb, &r1);
	weft_req_set_callback(a, rec_cb, &r2);
	/* a posted completion with the callback set only after a while */
	struct rec r3 = { .tag = '3' };
	weft_req *b = instant_send(loop, 0, 'b');
	REQUIRE(b);
	weft_req *c = instant_send(loop, 0, 'c');
	REQUIRE(c);
	/* no callback at all on c */
	CHECK_EQ(r3.calls, 0);
	weft_req_set_callback(b, rec_cb, &r3);
	CHECK_EQ(r3.calls, 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(r1.calls, 0);
	CHECK_ONCE_ERR(r2, EIO);
	CHECK_ONCE(r3, WEFT_REQ_DONE);
	CHECK(!r2.reentrant && !r3.reentrant);
	FREE_EACH(a, b, c);
	endloop(loop);
}

/* =========================================================================
 * cleanup
 * ========================================================================= */

static void test_cleanup_stages(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' }, rc = { .tag = 'c' };
	weft_req *a = watch(sleep_send(loop, 10, 'a', CANCEL_NONE), &ra);
	weft_req *b = watch(sleep_send(loop, 5000, 'b', CANCEL_NONE), &rb);
	weft_req *c = watch(instant_send(loop, 0, 'c'), &rc);
	REQUIRE(a && b && c);
	/* freed in progress: only FREED */
	weft_req_free(b);
	CHECK_TRACE('b', "free");
	/* completed in _send but freed before its posted callback: FINISHED
	 * then FREED, never the callback */
	weft_req_free(c);
	CHECK_TRACE('c', "fin free");
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK(t_now_ms() - t0 <= 10 + SLACK_MS); /* b's timer is gone */
	/* completed: FINISHED before the callback, FREED at free */
	CHECK_TRACE('a', "fin cb");
	weft_req_free(a);
	CHECK_TRACE('a', "fin cb free");
	CHECK_EQ(ra.calls, 1);
	CHECK_EQ(rb.calls, 0);
	CHECK_EQ(rc.calls, 0);
	CHECK_TRACE(0, "c:fin b:free c:free a:fin a:cb a:free");
	endloop(loop);
}

static void test_free_in_callback(void)
{
	int rfd;
	weft_loop *loop;
	REQUIRE(eof_pipe_setup(&rfd, &loop));
	struct rec r[5];
	memset(r, 0, sizeof r);
	weft_req *req[5];
	req[0] = sleep_send(loop, 10, 'a', CANCEL_NONE);    /* done from loop */
	req[1] = instant_send(loop, 0, 'b');                /* posted */
	req[2] = sleep_send(loop, 5000, 'c', CANCEL_NONE);  /* canceled */
	req[3] = sleep_send(loop, 5000, 'd', CANCEL_NONE);  /* timed out */
	req[4] = rb_send(loop, rfd, 'e');                  /* error from io */
	for (int i = 0; i < 5; i++) {
		if (!req[i]) {
			CHECK(req[i] != NULL);
			continue;
		}
		r[i].tag = (char)('a' + i);
		r[i].free_it = true;
		weft_req_set_callback(req[i], rec_cb, &r[i]);
	}
	CHECK_EQ(cancel(req[2]), 0);
	CHECK_EQ(weft_req_set_timeout(req[3], 20), 0);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK(t_now_ms() - t0 <= 20 + SLACK_MS);
	for (int i = 0; i < 5; i++) {
		CHECK_EQ(r[i].calls, 1);
		CHECK_TRACE((char)('a' + i), "fin cb free");
	}
	CHECK_EQ(r[2].err, ECANCELED);
	CHECK_EQ(r[3].err, ETIMEDOUT);
	CHECK_EQ(r[4].err, EPIPE);
	endloop_fds(loop, rfd, -1);
}

static void never_io(weft_io *io, unsigned revents, void *data)
{
	(void)io;
	(void)revents;
	(void)data;
	CHECK(!"this watcher is never run");
}

static void test_free_in_progress(void)
{
	int sv[2];
	weft_loop *loop;
	REQUIRE(pair_setup(sv, 0, &loop));
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' }, rc = { .tag = 'c' }, rd = { .tag = 'd' };
	weft_req *a = watch(sleep_send(loop, 5000, 'a', CANCEL_NONE), &ra);
	weft_req *b = watch(rb_send(loop, sv[0], 'b'), &rb);
	weft_req *c = watch(sleep_send(loop, 20, 'c', CANCEL_NONE), &rc);
	weft_req *d = watch(sleep_send(loop, 5000, 'd', CANCEL_NONE), &rd);
	REQUIRE(a && b && c && d);
	CHECK_EQ(weft_req_set_timeout(d, 10), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	FREE_EACH(a, b);
	weft_req_free(d); /* its timeout must go too */
	CHECK_EQ(write(sv[1], "x", 1), 1);
	/* the watcher on sv[0] was released: another one may be started */
	weft_io *io = NULL;
	CHECK_EQ(weft_io_new(loop, sv[0], never_io, NULL, &io), 0);
	if (io) {
		CHECK_EQ(weft_io_start(io, WEFT_IO_READ), 0);
		weft_io_free(io);
	}
	weft_req_free(c);
	/* nothing is left: the loop ends at once */
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK(t_now_ms() - t0 <= SLACK_MS);
	CHECK(!weft_loop_alive(loop));
	CHECK_EQ(ra.calls + rb.calls + rc.calls + rd.calls, 0);
	CHECK_TRACE(0, "a:free b:free d:free c:free");
	endloop_fds(loop, sv[0], sv[1]);
}

/* =========================================================================
 * cancel
 * ========================================================================= */

static void test_cancel_no_fn(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	struct rec r = { .tag = 'a' };
	weft_req *a = watch(sleep_send(loop, 5000, 'a', CANCEL_NONE), &r);
	REQUIRE(a);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(cancel(a), 0);
	CHECK_EQ(r.calls, 0); /* posted, not inside weft_req_cancel */
	CHECK_EQ(weft_req_get_status(a), WEFT_REQ_CANCELED);
	CHECK(!weft_req_is_in_progress(a));
	CHECK(sleep_timer(a) == NULL); /* cleanup released the timer */
	CHECK_TRACE(0, "a:fin");
	CHECK_EQ(cancel(a), -EALREADY);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK(t_now_ms() - t0 <= SLACK_MS);
	CHECK_EQ(r.calls, 1);
	CHECK(!r.reentrant);
	CHECK_EQ(r.status, WEFT_REQ_CANCELED);
	CHECK_EQ(r.err, ECANCELED);
	int e = 0;
	CHECK_EQ(sleep_recv(a, &e), -ECANCELED);
	CHECK_EQ(e, ECANCELED);
	CHECK_TRACE(0, "a:fin a:cb");
	weft_req_free(a);
	CHECK_EQ(weft_req_cancel(NULL) < 0, 1);
	endloop(loop);
}

static void test_cancel_refused(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	struct rec r = { .tag = 'a' };
	weft_req *a = watch(sleep_send(loop, 30, 'a', CANCEL_REFUSE), &r);
	REQUIRE(a);
	CHECK_EQ(cancel(a), -EBUSY);
	CHECK_EQ(((struct sleep_state *)weft_req_state(a))->cancel_calls, 1);
	CHECK_EQ(weft_req_get_status(a), WEFT_REQ_IN_PROGRESS);
	CHECK_TRACE(0, "");
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	uint64_t el = t_now_ms() - t0;
	CHECK_ABOUT(el, 30);
	CHECK_ONCE(r, WEFT_REQ_DONE);
	CHECK_EQ(r.recv, 0);
	CHECK_EQ(cancel(a), -EALREADY);
	CHECK_EQ(((struct sleep_state *)weft_req_state(a))->cancel_calls, 1);
	CHECK_TRACE(0, "a:fin a:cb");
	weft_req_free(a);
	endloop(loop);
}

static void test_cancel_fn_completes(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	struct rec r = { .tag = 'a' };
	weft_req *a = watch(sleep_send(loop, 5000, 'a', CANCEL_NOW), &r);
	REQUIRE(a);
	CHECK_EQ(cancel(a), 0);
	CHECK_EQ(((struct sleep_state *)weft_req_state(a))->cancel_calls, 1);
	CHECK_EQ(r.calls, 0); /* completion caused by cancel is posted */
	CHECK(!weft_req_is_in_progress(a));
	CHECK_EQ(cancel(a), -EALREADY);
	CHECK_EQ(((struct sleep_state *)weft_req_state(a))->cancel_calls, 1);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK(t_now_ms() - t0 <= SLACK_MS);
	CHECK_EQ(r.calls, 1);
	CHECK(!r.reentrant);
	CHECK_EQ(r.err, ECANCELED);
	CHECK_EQ(r.recv, -ECANCELED);
	CHECK_TRACE(0, "a:fin a:cb");
	weft_req_free(a);
	endloop(loop);
}

static void test_cancel_after_completion(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' }, rc = { .tag = 'c' };
	weft_req *a = watch(sleep_send(loop, 5, 'a', CANCEL_NONE), &ra);
	weft_req *b = watch(instant_send(loop, 0, 'b'), &rb);  /* completed, callback pending */
	weft_req *c = watch(instant_send(loop, EIO, 'c'), &rc);
	REQUIRE(a && b && c);
	CHECK_EQ(cancel(b), -EALREADY);
	CHECK_EQ(cancel(c), -EALREADY);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(cancel(a), -EALREADY);
	CHECK_EQ(cancel(b), -EALREADY);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(ra.calls, 1);
	CHECK_EQ(rb.calls, 1);
	CHECK_EQ(rc.calls, 1);
	CHECK_EQ(weft_req_get_status(a), WEFT_REQ_DONE);
	CHECK_EQ(weft_req_get_status(b), WEFT_REQ_DONE);
	CHECK_EQ(weft_req_get_status(c), WEFT_REQ_ERROR);
	CHECK_TRACE('a', "fin cb");
	CHECK_TRACE('b', "fin cb");
	FREE_EACH(a, b, c);
	endloop(loop);
}

/* Sets a timeout of ms on req (reporting to r), runs the loop until it has
 * nothing left and checks that req timed out, once, after about ms. */
static void check_times_out(const char *file, int line, weft_loop *loop, weft_req *req,
			    const struct rec *r, uint64_t ms)
{
	uint64_t t0 = t_now_ms();
	t_check_eq(file, line, "weft_req_set_timeout(req, ms) == 0", weft_req_set_timeout(req, ms), 0);
	t_check_eq(file, line, "weft_loop_run(loop, WEFT_RUN_DEFAULT) == 0",
		   weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	uint64_t el = t_now_ms() - t0;
	if (el < ms - 2 || el > ms + SLACK_MS) {
		printf("# timed out after %llu ms, expected about %llu\n", (unsigned long long)el,
		       (unsigned long long)ms);
		t_fail(file, line, "el >= ms - 2 && el <= ms + SLACK_MS");
	}
	t_check_eq(file, line, "r->calls == 1", r->calls, 1);
	t_check_eq(file, line, "r->status == WEFT_REQ_TIMED_OUT", r->status, WEFT_REQ_TIMED_OUT);
}
#define CHECK_TIMES_OUT(loop, req, r, ms) check_times_out(__FILE__, __LINE__, (loop), (req), (r), (ms))

/* ---- the writer: cancel / timeout with partial progress (libuv#2051) --- */

struct slow_reader {
	int fd;
	weft_timer *t;
	uint64_t got;
	bool eof;
};

static void slow_read(weft_timer *t, void *data)
{
	(void)t;
	struct slow_reader *sr = data;
	char buf[4096];
	ssize_t n = read(sr->fd, buf, sizeof buf);
	if (n > 0)
		sr->got += (uint64_t)n;
}

struct canceler {
	weft_req *req;
	struct slow_reader *sr;
	struct rec *rec;
	int ret;
	int fired;
	int calls_at_cancel;
	uint64_t progress_before, progress_after;
};

static void do_cancel(weft_timer *t, void *data)
{
	(void)t;
	struct canceler *c = data;
	c->fired++;
	c->progress_before = weft_req_progress(c->req);
	c->ret = cancel(c->req);
	c->calls_at_cancel = c->rec->calls;
	c->progress_after = weft_req_progress(c->req);
	if (c->sr)
		weft_timer_stop(c->sr->t);
}

static void test_write_cancel_progress(void)
{
	int sv[2];
	weft_loop *loop;
	REQUIRE(pair_setup(sv, 8192, &loop));
	const uint64_t total = 64u << 20;
	struct rec r = { .tag = 'w' };
	weft_req *w = wr_send(loop, sv[0], total, 'w');
	struct slow_reader sr = { .fd = sv[1] };
	struct canceler cc = { .req = w, .sr = &sr, .rec = &r };
	weft_timer *ct = NULL;
	if (w && weft_timer_new(loop, slow_read, &sr, &sr.t) == 0 &&
	    weft_timer_new(loop, do_cancel, &cc, &ct) == 0) {
		weft_req_set_callback(w, rec_cb, &r);
		CHECK_EQ(weft_timer_start(sr.t, 5, 5), 0);
		CHECK_EQ(weft_timer_start(ct, 80, 0), 0);
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
		CHECK_EQ(cc.fired, 1);
		CHECK_EQ(cc.ret, 0);
		CHECK_EQ(cc.calls_at_cancel, 0); /* posted */
		CHECK_EQ(r.calls, 1);
		CHECK(!r.reentrant);
		CHECK_EQ(r.err, ECANCELED);
		uint64_t p = weft_req_progress(w);
		printf("# canceled after %llu of %llu bytes (reader got %llu)\n",
		       (unsigned long long)p, (unsigned long long)total, (unsigned long long)sr.got);
		CHECK(p > 0);
		CHECK(p < total);
		CHECK_EQ(p, cc.progress_before);
		CHECK_EQ(p, cc.progress_after);
		CHECK_EQ(p, ((struct wr_state *)weft_req_state(w))->done);
		CHECK(sr.got > 0);
		CHECK(sr.got <= p);
		CHECK_EQ(((struct wr_state *)weft_req_state(w))->cancel_calls, 1);
		CHECK(((struct wr_state *)weft_req_state(w))->io == NULL);
		CHECK_TRACE(0, "w:fin w:cb");
	} else {
		CHECK(!"setup failed");
	}
	weft_timer_free(ct);
	weft_timer_free(sr.t);
	weft_req_free(w);
	endloop_fds(loop, sv[0], sv[1]);
}

static void test_write_timeout_progress(void)
{
	int sv[2];
	weft_loop *loop;
	REQUIRE(pair_setup(sv, 8192, &loop));
	const uint64_t total = 64u << 20;
	struct rec r = { .tag = 'w' };
	weft_req *w = wr_send(loop, sv[0], total, 'w');
	struct slow_reader sr = { .fd = sv[1] };
	if (w && weft_timer_new(loop, slow_read, &sr, &sr.t) == 0) {
		weft_req_set_callback(w, rec_cb, &r);
		CHECK_EQ(weft_timer_start(sr.t, 5, 5), 0);
		uint64_t t0 = t_now_ms();
		CHECK_EQ(weft_req_set_timeout(w, 60), 0);
		/* the reader timer keeps the loop alive: stop when w completes */
		while (r.calls == 0 && t_now_ms() - t0 < 5000)
			weft_loop_run(loop, WEFT_RUN_ONCE);
		uint64_t el = t_now_ms() - t0;
		weft_timer_stop(sr.t);
		CHECK_ONCE(r, WEFT_REQ_TIMED_OUT);
		CHECK_EQ(r.err, ETIMEDOUT);
		CHECK_EQ(r.recv, -ETIMEDOUT);
		CHECK_ABOUT(el, 60);
		uint64_t p = weft_req_progress(w);
		CHECK(p > 0);
		CHECK(p < total);
		CHECK_EQ(p, ((struct wr_state *)weft_req_state(w))->done);
		CHECK(((struct wr_state *)weft_req_state(w))->io == NULL);
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
		CHECK_EQ(r.calls, 1);
		CHECK_EQ(weft_req_progress(w), p);
		CHECK_TRACE(0, "w:fin w:cb");
	} else {
		CHECK(!"setup failed");
	}
	weft_timer_free(sr.t);
	weft_req_free(w);
	endloop_fds(loop, sv[0], sv[1]);
}

struct fast_reader {
	int fd;
	weft_io *io;
	uint64_t got, want;
};

static void fast_read(weft_io *io, unsigned revents, void *data)
{
	(void)revents;
	struct fast_reader *fr = data;
	char buf[65536];
	ssize_t n = read(fr->fd, buf, sizeof buf);
	if (n > 0)
		fr->got += (uint64_t)n;
	if (n == 0 || fr->got >= fr->want)
		weft_io_stop(io);
}

static void test_write_complete(void)
{
	int sv[2];
	weft_loop *loop;
	REQUIRE(pair_setup(sv, 0, &loop));
	const uint64_t total = 1000003;
	struct rec r = { .tag = 'w' };
	weft_req *w = wr_send(loop, sv[0], total, 'w');
	struct fast_reader fr = { .fd = sv[1], .want = total };
	if (w && weft_io_new(loop, sv[1], fast_read, &fr, &fr.io) == 0) {
		weft_req_set_callback(w, rec_cb, &r);
		CHECK_EQ(weft_io_start(fr.io, WEFT_IO_READ), 0);
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
		CHECK_ONCE(r, WEFT_REQ_DONE);
		CHECK_EQ(weft_req_progress(w), total);
		CHECK_EQ(fr.got, total);
		CHECK_EQ(cancel(w), -EALREADY);
		CHECK_TRACE(0, "w:fin w:cb");
	} else {
		CHECK(!"setup failed");
	}
	weft_io_free(fr.io);
	weft_req_free(w);
	endloop_fds(loop, sv[0], sv[1]);
}

/* =========================================================================
 * timeouts
 * ========================================================================= */

static void test_timeout_long_sleep(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	struct rec r = { .tag = 'a' };
	weft_req *a = watch(sleep_send(loop, 10000, 'a', CANCEL_NONE), &r);
	REQUIRE(a);
	CHECK_TIMES_OUT(loop, a, &r, 50); /* the sleep's timer is gone */
	CHECK_EQ(r.err, ETIMEDOUT);
	CHECK_EQ(r.recv, -ETIMEDOUT);
	CHECK_EQ(weft_req_get_status(a), WEFT_REQ_TIMED_OUT);
	int e = 0;
	CHECK_EQ(sleep_recv(a, &e), -ETIMEDOUT);
	CHECK_EQ(e, ETIMEDOUT);
	CHECK(sleep_timer(a) == NULL);
	CHECK_TRACE(0, "a:fin a:cb");
	CHECK_EQ(weft_req_set_timeout(a, 10), -EALREADY);
	CHECK_EQ(cancel(a), -EALREADY);
	weft_req_free(a);
	endloop(loop);
}

static void test_timeout_on_manual(void)
{
	/* a request holding no handle at all: the timeout alone keeps the
	 * loop running */
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	struct rec r = { .tag = 'a' };
	weft_req *a = watch(manual_new(loop, 'a'), &r);
	REQUIRE(a);
	CHECK_TIMES_OUT(loop, a, &r, 30);
	weft_req_free(a);
	CHECK_TRACE(0, "a:fin a:cb a:free");
	endloop(loop);
}

/* "within timeout_ms of now": not of the loop's cached time, which is
 * stale when the loop has not run for a while. */
static void test_timeout_from_now(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	CHECK(weft_loop_run(loop, WEFT_RUN_NOWAIT) >= 0);
	usleep(100 * 1000); /* the loop's cached time is now 100 ms old */
	struct rec r = { .tag = 'a' };
	weft_req *a = watch(manual_new(loop, 'a'), &r);
	REQUIRE(a);
	CHECK_TIMES_OUT(loop, a, &r, 50);
	weft_req_free(a);
	endloop(loop);
}

static void test_timeout_completed(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' };
	weft_req *a = watch(instant_send(loop, 0, 'a'), &ra);
	weft_req *b = watch(sleep_send(loop, 5, 'b', CANCEL_NONE), &rb);
	REQUIRE(a && b);
	CHECK_EQ(weft_req_set_timeout(a, 10), -EALREADY);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(weft_req_set_timeout(b, 10), -EALREADY);
	CHECK_EQ(weft_req_set_timeout(b, 0), -EALREADY);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(ra.calls, 1);
	CHECK_EQ(rb.calls, 1);
	CHECK_EQ(ra.status, WEFT_REQ_DONE);
	CHECK_EQ(rb.status, WEFT_REQ_DONE);
	FREE_EACH(a, b);
	endloop(loop);
}

static void test_timeout_zero_disables(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' };
	weft_req *a = watch(sleep_send(loop, 60, 'a', CANCEL_NONE), &ra);
	weft_req *b = watch(sleep_send(loop, 60, 'b', CANCEL_NONE), &rb);
	REQUIRE(a && b);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_req_set_timeout(a, 20), 0);
	CHECK_EQ(weft_req_set_timeout(a, 0), 0);
	/* a later timeout replaces the earlier one */
	CHECK_EQ(weft_req_set_timeout(b, 20), 0);
	CHECK_EQ(weft_req_set_timeout(b, 400), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	uint64_t el = t_now_ms() - t0;
	CHECK_EQ(ra.calls, 1);
	CHECK_EQ(rb.calls, 1);
	CHECK_EQ(ra.status, WEFT_REQ_DONE);
	CHECK_EQ(rb.status, WEFT_REQ_DONE);
	CHECK(ra.at - t0 >= 58);
	CHECK(el <= 60 + SLACK_MS); /* b's 400 ms timeout did not keep the loop */
	FREE_EACH(a, b);
	endloop(loop);
}

static void test_timeout_released(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	struct rec ra = { .tag = 'a' }, rc = { .tag = 'c' };
	/* completion stops the timeout: the loop does not wait 5 s */
	weft_req *a = watch(sleep_send(loop, 20, 'a', CANCEL_NONE), &ra);
	/* freeing stops the timeout */
	weft_req *b = sleep_send(loop, 5000, 'b', CANCEL_NONE);
	/* cancel stops the timeout */
	weft_req *c = watch(sleep_send(loop, 5000, 'c', CANCEL_NONE), &rc);
	REQUIRE(a && b && c);
	CHECK_EQ(weft_req_set_timeout(a, 5000), 0);
	CHECK_EQ(weft_req_set_timeout(b, 30), 0);
	CHECK_EQ(weft_req_set_timeout(c, 5000), 0);
	weft_req_free(b);
	CHECK_EQ(cancel(c), 0);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK(t_now_ms() - t0 <= 20 + SLACK_MS);
	CHECK_ONCE(ra, WEFT_REQ_DONE);
	CHECK_ONCE(rc, WEFT_REQ_CANCELED);
	FREE_EACH(a, c);
	/* c's posted callback runs on the first iteration, a at 20 ms */
	CHECK_TRACE(0, "b:free c:fin c:cb a:fin a:cb a:free c:free");
	endloop(loop);
}

/* The operation's timer and the timeout have the same deadline: both are
 * due in the same iteration.  Exactly one outcome, callback exactly once. */
static void test_timeout_race(void)
{
	int done = 0, timed_out = 0;
	for (int round = 0; round < 8; round++) {
		weft_loop *loop = loop_setup();
		REQUIRE(loop);
		g_cleanup_fin_total = g_cleanup_free_total = 0;
		enum { N = 8 };
		weft_req *req[N];
		struct rec r[N];
		memset(r, 0, sizeof r);
		for (int i = 0; i < N; i++) {
			char tag = (char)('a' + i);
			r[i].tag = tag;
			if (i % 2 == 0) {
				/* operation timer first, then the timeout */
				req[i] = sleep_send(loop, 20, tag, CANCEL_NONE);
				REQUIRE(req[i]);
				CHECK_EQ(weft_req_set_timeout(req[i], 20), 0);
			} else {
				/* timeout first, then the operation timer */
				req[i] = sleep_send(loop, SLEEP_NOSTART, tag, CANCEL_NONE);
				REQUIRE(req[i]);
				CHECK_EQ(weft_req_set_timeout(req[i], 20), 0);
				CHECK_EQ(weft_timer_start(sleep_timer(req[i]), 20, 0), 0);
			}
			r[i].free_it = (i % 4) >= 2; /* half free themselves */
			weft_req_set_callback(req[i], rec_cb, &r[i]);
		}
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
		for (int i = 0; i < N; i++) {
			CHECK_EQ(r[i].calls, 1);
			if (r[i].status == WEFT_REQ_DONE) {
				done++;
				CHECK_EQ(r[i].err, 0);
				CHECK_EQ(r[i].recv, 0);
			} else {
				timed_out++;
				CHECK_EQ(r[i].status, WEFT_REQ_TIMED_OUT);
				CHECK_EQ(r[i].err, ETIMEDOUT);
			}
			if (!r[i].free_it) {
				CHECK_EQ(weft_req_get_status(req[i]), r[i].status);
				CHECK(sleep_timer(req[i]) == NULL);
				weft_req_free(req[i]);
			}
			CHECK_TRACE((char)('a' + i), r[i].free_it ? "fin cb free" : "fin cb free");
		}
		CHECK_EQ(g_cleanup_fin_total, N);
		CHECK_EQ(g_cleanup_free_total, N);
		endloop(loop);
	}
	printf("# timeout race: %d done, %d timed out\n", done, timed_out);
}

/* A timer with the same deadline as the operation cancels it: exactly one
 * outcome. */
struct race_cancel {
	weft_req *req;
	int ret;
	int fired;
};

static void race_cancel_fire(weft_timer *t, void *data)
{
	(void)t;
	struct race_cancel *rc = data;
	rc->fired++;
	rc->ret = cancel(rc->req);
}

static void test_cancel_race(void)
{
	int canceled = 0, done = 0;
	for (int round = 0; round < 8; round++) {
		weft_loop *loop = loop_setup();
		REQUIRE(loop);
		struct rec r = { .tag = 'a' };
		struct race_cancel rc = { 0 };
		weft_timer *t = NULL;
		CHECK_EQ(weft_timer_new(loop, race_cancel_fire, &rc, &t), 0);
		weft_req *a;
		if (round % 2 == 0) {
			a = sleep_send(loop, 20, 'a', CANCEL_NONE);
			CHECK_EQ(weft_timer_start(t, 20, 0), 0);
		} else {
			a = sleep_send(loop, SLEEP_NOSTART, 'a', round % 4 == 1 ? CANCEL_NONE : CANCEL_NOW);
			CHECK_EQ(weft_timer_start(t, 20, 0), 0);
			if (a)
				CHECK_EQ(weft_timer_start(sleep_timer(a), 20, 0), 0);
		}
		rc.req = a;
		if (a) {
			weft_req_set_callback(a, rec_cb, &r);
			CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
			CHECK_EQ(rc.fired, 1);
			CHECK_EQ(r.calls, 1);
			if (rc.ret == 0) {
				canceled++;
				CHECK_EQ(r.err, ECANCELED);
			} else {
				done++;
				CHECK_EQ(rc.ret, -EALREADY);
				CHECK_EQ(r.status, WEFT_REQ_DONE);
			}
			CHECK_TRACE(0, "a:fin a:cb");
		} else {
			CHECK(a != NULL);
		}
		weft_timer_free(t);
		weft_req_free(a);
		endloop(loop);
	}
	printf("# cancel race: %d canceled, %d done\n", canceled, done);
}

/* =========================================================================
 * weft_req_wait
 * ========================================================================= */

struct wait_in_cb {
	weft_req *other;
	int ret;
	int fired;
};

static void wait_from_cb(weft_timer *t, void *data)
{
	(void)t;
	struct wait_in_cb *w = data;
	w->fired++;
	w->ret = weft_req_wait(w->other);
}

static void test_wait(void)
{
	weft_loop *loop = loop_setup();
	REQUIRE(loop);
	CHECK_EQ(weft_req_wait(NULL), -EINVAL);

	/* a sleep among a long one: wait returns when the sleep completes */
	struct rec ra = { .tag = 'a' };
	weft_req *a = watch(sleep_send(loop, 30, 'a', CANCEL_NONE), &ra);
	weft_req *longer = sleep_send(loop, 5000, 'l', CANCEL_NONE);
	REQUIRE(a && longer);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_req_wait(a), 0);
	uint64_t el = t_now_ms() - t0;
	CHECK_EQ(ra.calls, 1); /* the callback has run */
	CHECK_EQ(weft_req_get_status(a), WEFT_REQ_DONE);
	CHECK_ABOUT(el, 30);
	/* already completed, callback ran: returns at once */
	CHECK_EQ(weft_req_wait(a), 0);
	CHECK_EQ(ra.calls, 1);

	/* posted completion: wait runs the posted callback */
	struct rec rb = { .tag = 'b' };
	weft_req *b = watch(instant_send(loop, EIO, 'b'), &rb);
	REQUIRE(b);
	CHECK_EQ(weft_req_wait(b), 0);
	CHECK_ONCE_ERR(rb, EIO);

	/* no callback at all */
	weft_req *c = sleep_send(loop, 5, 'c', CANCEL_NONE);
	REQUIRE(c);
	CHECK_EQ(weft_req_wait(c), 0);
	CHECK_EQ(weft_req_get_status(c), WEFT_REQ_DONE);

	/* from a loop callback: -EBUSY */
	struct wait_in_cb wc = { .other = longer, .ret = 1 };
	weft_timer *t = NULL;
	CHECK_EQ(weft_timer_new(loop, wait_from_cb, &wc, &t), 0);
	if (t) {
		weft_timer_start(t, 1, 0);
		struct rec rd = { .tag = 'd' };
		weft_req *d = watch(sleep_send(loop, 20, 'd', CANCEL_NONE), &rd);
		REQUIRE(d);
		CHECK_EQ(weft_req_wait(d), 0);
		CHECK_EQ(wc.fired, 1);
		CHECK_EQ(wc.ret, -EBUSY);
		CHECK_EQ(rd.calls, 1);
		weft_req_free(d);
		weft_timer_free(t);
	}
	weft_req_free(longer);

	/* nothing can complete it: -EDEADLK */
	struct rec re = { .tag = 'e' };
	weft_req *e = watch(manual_new(loop, 'e'), &re);
	REQUIRE(e);
	CHECK_EQ(weft_req_wait(e), -EDEADLK);
	CHECK(weft_req_is_in_progress(e));
	CHECK_EQ(re.calls, 0);

	/* with a timeout, the manual request completes */
	CHECK_EQ(weft_req_set_timeout(e, 10), 0);
	CHECK_EQ(weft_req_wait(e), 0);
	CHECK_ONCE(re, WEFT_REQ_TIMED_OUT);

	FREE_EACH(a, b, c, e);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	endloop(loop);
}

static int ext_watch(weft_loop *loop, int fd, unsigned events, void *fd_data, void *user)
{
	(void)loop, (void)fd, (void)events, (void)fd_data, (void)user;
	return 0;
}

static void ext_timer(weft_loop *loop, int64_t timeout_ms, void *user)
{
	(void)loop, (void)timeout_ms, (void)user;
}

static void test_wait_external(void)
{
	static const weft_loop_ops ops = { .watch = ext_watch, .timer = ext_timer };
	weft_loop *loop = NULL;
	REQUIRE(weft_loop_new_external(&ops, NULL, &loop) == 0);
	weft_req *a = sleep_send(loop, 10, 'a', CANCEL_NONE);
	CHECK(a != NULL);
	if (a) {
		CHECK_EQ(weft_req_wait(a), -EINVAL); /* built-in backend only */
		CHECK(weft_req_is_in_progress(a));
		weft_req_free(a);
	}
	endloop(loop);
}

/* =========================================================================
 * queues
 * ========================================================================= */

static weft_queue *mkqueue(weft_loop *loop)
{
	weft_queue *q = NULL;
	int r = weft_queue_new(loop, "test", &q);
	CHECK_EQ(r, 0);
	return r == 0 ? q : NULL;
}

/* A loop with a queue, empty trace and queue records; false (nothing left
 * behind) if either cannot be made. */
static bool queue_setup(weft_loop **loop, weft_queue **q)
{
	*q = NULL;
	*loop = loop_setup();
	if (*loop == NULL)
		return false;
	*q = mkqueue(*loop);
	if (*q == NULL) {
		endloop(*loop);
		return false;
	}
	q_reset();
	return true;
}

static void queue_teardown(weft_loop *loop, weft_queue *q)
{
	weft_queue_free(q);
	endloop(loop);
}

/* Operation i of a test: a qop with id i and tag 'a' + i, reporting to r
 * (whose tag it sets). */
static weft_req *qop_nth(weft_loop *loop, uint64_t ms, int i, struct rec *r)
{
	r->tag = (char)('a' + i);
	return watch(qop_new(loop, ms, r->tag, i), r);
}

/* CHECK_EQ(qadd(q, req), 0) for each request of the list, in order. */
static void qadd_each(const char *file, int line, weft_queue *q, weft_req *const req[], size_t n)
{
	for (size_t i = 0; i < n; i++)
		t_check_eq(file, line, "qadd(q, req) == 0", qadd(q, req[i]), 0);
}
#define QADD_EACH(q, ...) \
	qadd_each(__FILE__, __LINE__, (q), REQ_LIST(__VA_ARGS__), REQ_COUNT(__VA_ARGS__))

/* g_qorder holds ids 0, 1, ... g_qn - 1 */
static void check_qorder_sequential(const char *file, int line)
{
	for (size_t i = 0; i < g_qn; i++)
		t_check_eq(file, line, "g_qorder[i] == i", g_qorder[i], (long long)i);
}
#define CHECK_QORDER_SEQUENTIAL() check_qorder_sequential(__FILE__, __LINE__)

static void test_queue_fifo(void)
{
	weft_loop *loop;
	weft_queue *q;
	REQUIRE(queue_setup(&loop, &q));
	enum { N = 7 };
	weft_req *req[N];
	struct rec r[N];
	memset(r, 0, sizeof r);
	CHECK(weft_queue_running(q));
	CHECK_EQ(weft_queue_length(q), 0);
	for (int i = 0; i < N; i++) {
		/* mixed: completing in the trigger, and after a timer */
		req[i] = qop_nth(loop, i % 3 == 1 ? 10 : 0, i, &r[i]);
		REQUIRE(req[i]);
		r[i].q = q;
		CHECK_EQ(qadd(q, req[i]), 0);
		CHECK_EQ(weft_queue_length(q), (size_t)i + 1);
	}
	CHECK_EQ(g_qn, 0); /* never inside weft_queue_add */
	CHECK_EQ(weft_loop_get_timeout(loop), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(g_qn, N);
	CHECK_QORDER_SEQUENTIAL();
	CHECK_EQ(g_qbad, 0);
	CHECK_EQ(g_trig_in_add, 0);
	for (int i = 0; i < N; i++) {
		CHECK_ONCE(r[i], WEFT_REQ_DONE);
		CHECK_EQ(r[i].qlen, (size_t)(N - 1 - i)); /* it left the queue */
	}
	CHECK_TRACE(0, "a:trig a:fin a:cb b:trig b:fin b:cb c:trig c:fin c:cb d:trig d:fin d:cb "
		       "e:trig e:fin e:cb f:trig f:fin f:cb g:trig g:fin g:cb");
	CHECK_EQ(weft_queue_length(q), 0);
	for (int i = 0; i < N; i++)
		weft_req_free(req[i]);
	weft_queue_free(q);
	weft_queue_free(NULL);
	endloop(loop);
}

static void test_queue_add_now(void)
{
	weft_loop *loop;
	weft_queue *q;
	REQUIRE(queue_setup(&loop, &q));
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' }, rc = { .tag = 'c' };
	/* empty and running: the trigger runs inside the call */
	weft_req *a = qop_nth(loop, QOP_MANUAL, 0, &ra);
	weft_req *b = qop_nth(loop, 0, 1, &rb);
	REQUIRE(a && b);
	CHECK_EQ(qadd_now(q, a), 0);
	CHECK_EQ(g_qn, 1);
	CHECK_EQ(g_trig_in_add, 1);
	CHECK_EQ(weft_queue_length(q), 1);
	/* busy: not inside the call */
	CHECK_EQ(qadd_now(q, b), 0);
	CHECK_EQ(g_qn, 1);
	CHECK_EQ(weft_queue_length(q), 2);
	CHECK(weft_loop_run(loop, WEFT_RUN_NOWAIT) >= 0);
	CHECK_EQ(g_qn, 1); /* a still runs */
	weft_req_done(a);
	CHECK_EQ(ra.calls, 1);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(g_qn, 2);
	CHECK_EQ(rb.calls, 1);
	CHECK_EQ(g_trig_in_add, 1);

	/* stopped and empty: not inside the call */
	weft_queue_stop(q);
	CHECK(!weft_queue_running(q));
	weft_req *c = qop_nth(loop, 0, 2, &rc);
	REQUIRE(c);
	CHECK_EQ(qadd_now(q, c), 0);
	CHECK_EQ(g_qn, 2);
	CHECK(weft_loop_run(loop, WEFT_RUN_NOWAIT) >= 0);
	CHECK_EQ(g_qn, 2);
	weft_queue_start(q);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(g_qn, 3);
	CHECK_EQ(rc.calls, 1);
	CHECK_EQ(g_trig_in_add, 1);
	CHECK_EQ(g_qbad, 0);

	FREE_EACH(a, b, c);
	queue_teardown(loop, q);
}

/* A _send that queues itself with add_now; its trigger completes at once,
 * inside add_now inside _send: the callback is posted. */
static weft_req *queued_instant_send(weft_loop *loop, weft_queue *q, char tag, int id)
{
	weft_req *req = qop_new(loop, 0, tag, id);
	if (req == NULL)
		return NULL;
	g_in_send++;
	weft_req_error(req, qadd_now(q, req));
	g_in_send--;
	return req;
}

static void test_queue_add_now_in_send(void)
{
	weft_loop *loop;
	weft_queue *q;
	REQUIRE(queue_setup(&loop, &q));
	struct rec ra = { .tag = 'a' };
	weft_req *a = queued_instant_send(loop, q, 'a', 0);
	REQUIRE(a);
	CHECK_EQ(g_qn, 1);
	CHECK_EQ(weft_req_get_status(a), WEFT_REQ_DONE);
	CHECK_EQ(weft_queue_length(q), 0);
	weft_req_set_callback(a, rec_cb, &ra);
	CHECK_EQ(ra.calls, 0);
	CHECK(weft_loop_run(loop, WEFT_RUN_NOWAIT) >= 0);
	CHECK_EQ(ra.calls, 1);
	CHECK(!ra.reentrant);
	CHECK_TRACE(0, "a:trig a:fin a:cb");
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	weft_req_free(a);
	queue_teardown(loop, q);
}

/* tevent stalls here: the next request must start on completion. */
static void test_queue_next_on_completion(void)
{
	weft_loop *loop;
	weft_queue *q;
	REQUIRE(queue_setup(&loop, &q));
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' }, rc = { .tag = 'c' };
	weft_req *a = qop_nth(loop, QOP_MANUAL, 0, &ra);
	weft_req *b = qop_nth(loop, 15, 1, &rb);
	weft_req *c = qop_nth(loop, QOP_MANUAL, 2, &rc);
	REQUIRE(a && b && c);
	QADD_EACH(q, a, b, c);
	CHECK(weft_loop_run(loop, WEFT_RUN_NOWAIT) >= 0);
	CHECK_EQ(g_qn, 1);
	weft_req_done(a); /* nobody frees a */
	CHECK_EQ(ra.calls, 1);
	CHECK_EQ(weft_queue_length(q), 2);
	/* b runs, completes by its timer (nobody frees it), c starts */
	for (int i = 0; i < 200 && g_qn < 3; i++)
		weft_loop_run(loop, WEFT_RUN_ONCE);
	CHECK_EQ(g_qn, 3);
	CHECK_EQ(rb.calls, 1);
	CHECK_EQ(weft_queue_length(q), 1);
	/* an error completion advances the queue too */
	weft_req *d = qop_new(loop, 0, 'd', 3);
	REQUIRE(d);
	CHECK_EQ(qadd(q, d), 0);
	weft_req_error(c, EIO);
	CHECK_EQ(rc.calls, 1);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(g_qn, 4);
	CHECK_QORDER_SEQUENTIAL();
	CHECK_EQ(weft_req_get_status(d), WEFT_REQ_DONE);
	CHECK_EQ(g_qbad, 0);
	FREE_EACH(a, b, c, d);
	queue_teardown(loop, q);
}

static void test_queue_free_waiting(void)
{
	weft_loop *loop;
	weft_queue *q;
	REQUIRE(queue_setup(&loop, &q));
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' }, rc = { .tag = 'c' };
	weft_req *a = qop_nth(loop, QOP_MANUAL, 0, &ra);
	weft_req *b = qop_nth(loop, 0, 1, &rb);
	weft_req *c = qop_nth(loop, 0, 2, &rc);
	REQUIRE(a && b && c);
	QADD_EACH(q, a, b, c);
	CHECK(weft_loop_run(loop, WEFT_RUN_NOWAIT) >= 0);
	CHECK_EQ(g_qn, 1);
	weft_req_free(b); /* waiting: it leaves the queue */
	CHECK_EQ(weft_queue_length(q), 2);
	CHECK_TRACE('b', "free");
	weft_req_done(a);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(g_qn, 2);
	CHECK_EQ(g_qorder[0], 0);
	CHECK_EQ(g_qorder[1], 2);
	CHECK_EQ(rb.calls, 0);
	CHECK_EQ(rc.calls, 1);
	CHECK_EQ(g_qbad, 0);
	CHECK_EQ(weft_queue_length(q), 0);
	FREE_EACH(a, c);
	queue_teardown(loop, q);
}

static void test_queue_free_running(void)
{
	weft_loop *loop;
	weft_queue *q;
	REQUIRE(queue_setup(&loop, &q));
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' }, rc = { .tag = 'c' };
	weft_req *a = qop_nth(loop, 5000, 0, &ra); /* running, on a timer */
	weft_req *b = qop_nth(loop, 0, 1, &rb);
	weft_req *c = qop_nth(loop, 0, 2, &rc);
	REQUIRE(a && b && c);
	QADD_EACH(q, a, b);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(g_qn, 1);
	weft_req_free(a); /* the running one: b starts */
	CHECK_EQ(weft_queue_length(q), 1);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK(t_now_ms() - t0 <= SLACK_MS); /* a's timer is gone */
	CHECK_EQ(g_qn, 2);
	CHECK_EQ(g_qorder[1], 1);
	CHECK_EQ(rb.calls, 1);
	CHECK_EQ(ra.calls, 0);
	/* the head freed before its (deferred) trigger ran */
	weft_req *d = qop_new(loop, 0, 'd', 3);
	REQUIRE(d);
	QADD_EACH(q, c, d);
	weft_req_free(c);
	CHECK_EQ(weft_queue_length(q), 1);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(g_qn, 3);
	CHECK_EQ(g_qorder[2], 3);
	CHECK_EQ(rc.calls, 0);
	CHECK_EQ(weft_req_get_status(d), WEFT_REQ_DONE);
	CHECK_EQ(g_qbad, 0);
	CHECK_TRACE(0, "a:trig a:free b:trig b:fin b:cb c:free d:trig d:fin");
	FREE_EACH(b, d);
	queue_teardown(loop, q);
}

static void test_queue_stop_start(void)
{
	weft_loop *loop;
	weft_queue *q;
	REQUIRE(queue_setup(&loop, &q));
	struct rec r[4];
	memset(r, 0, sizeof r);
	weft_req *req[4];
	for (int i = 0; i < 4; i++) {
		req[i] = qop_nth(loop, i == 0 ? 30 : 0, i, &r[i]);
		REQUIRE(req[i]);
	}
	/* stopped before anything: nothing triggers */
	weft_queue_stop(q);
	CHECK(!weft_queue_running(q));
	CHECK_EQ(qadd(q, req[0]), 0);
	CHECK_EQ(qadd(q, req[1]), 0);
	for (int i = 0; i < 3; i++)
		weft_loop_run(loop, WEFT_RUN_NOWAIT);
	CHECK_EQ(g_qn, 0);
	CHECK_EQ(weft_queue_length(q), 2);
	weft_queue_start(q);
	CHECK(weft_queue_running(q));
	CHECK_EQ(g_qn, 0); /* start does not trigger synchronously either */
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(g_qn, 1); /* a runs (30 ms) */
	/* stopped while a runs: a continues, b waits */
	weft_queue_stop(q);
	CHECK_EQ(qadd(q, req[2]), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_ONCE(r[0], WEFT_REQ_DONE);
	CHECK_EQ(g_qn, 1);
	CHECK_EQ(weft_queue_length(q), 2);
	weft_queue_start(q);
	CHECK_EQ(qadd(q, req[3]), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(g_qn, 4);
	CHECK_QORDER_SEQUENTIAL();
	for (int i = 0; i < 4; i++)
		CHECK_EQ(r[i].calls, 1);
	CHECK_EQ(g_qbad, 0);
	for (int i = 0; i < 4; i++)
		weft_req_free(req[i]);
	queue_teardown(loop, q);
}

static void test_queue_add_errors(void)
{
	weft_loop *loop = mkloop();
	REQUIRE(loop);
	weft_queue *q = mkqueue(loop);
	weft_queue *q2 = mkqueue(loop);
	REQUIRE(q && q2);
	tr_reset();
	q_reset();
	weft_req *a = qop_new(loop, 0, 'a', 0);
	weft_req *b = qop_new(loop, 0, 'b', 1);
	weft_req *done = instant_send(loop, 0, 'd');
	weft_req *done2 = manual_new(loop, 'e');
	REQUIRE(a && b && done && done2);
	weft_req_done(done2);
	CHECK_EQ(qadd(q, a), 0);
	CHECK_EQ(qadd(q, a), -EBUSY);
	CHECK_EQ(qadd_now(q, a), -EBUSY);
	CHECK_EQ(qadd(q2, a), -EBUSY);
	CHECK_EQ(weft_queue_length(q), 1);
	CHECK_EQ(weft_queue_length(q2), 0);
	CHECK_EQ(qadd(q, done), -EBUSY);    /* completed, callback still posted */
	CHECK_EQ(qadd(q, done2), -EBUSY);   /* completed */
	CHECK_EQ(qadd_now(q2, done2), -EBUSY);
	CHECK_EQ(weft_queue_add(NULL, b, qop_trigger, NULL), -EINVAL);
	CHECK_EQ(weft_queue_add(q, NULL, qop_trigger, NULL), -EINVAL);
	CHECK_EQ(weft_queue_add_now(NULL, b, qop_trigger, NULL), -EINVAL);
	CHECK_EQ(weft_queue_add_now(q, NULL, qop_trigger, NULL), -EINVAL);
	CHECK_EQ(weft_queue_length(q), 1);
	/* a request of another loop */
	weft_loop *other = mkloop();
	if (other) {
		weft_req *x = qop_new(other, 0, 'x', 9);
		CHECK(x != NULL);
		CHECK_EQ(qadd(q, x), -EINVAL);
		CHECK_EQ(qadd_now(q, x), -EINVAL);
		weft_req_free(x);
		endloop(other);
	}
	CHECK_EQ(weft_queue_length(q), 1);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(g_qn, 1);
	CHECK_EQ(weft_req_get_status(a), WEFT_REQ_DONE);
	CHECK_EQ(qadd(q, a), -EBUSY); /* completed */
	CHECK_EQ(g_qbad, 0);
	FREE_EACH(a, b, done, done2);
	weft_queue_free(q);
	weft_queue_free(q2);
	endloop(loop);
}

static void test_queue_free_queue(void)
{
	weft_loop *loop;
	weft_queue *q;
	REQUIRE(queue_setup(&loop, &q));
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' }, rc = { .tag = 'c' };
	weft_req *a = qop_nth(loop, 30, 0, &ra);
	weft_req *b = qop_nth(loop, 0, 1, &rb);
	weft_req *c = qop_nth(loop, 0, 2, &rc);
	REQUIRE(a && b && c);
	QADD_EACH(q, a, b, c);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(g_qn, 1);
	g_in_qfree++;
	weft_queue_free(q);
	g_in_qfree--;
	CHECK_EQ(rb.calls + rc.calls, 0); /* their callbacks run from the loop */
	int e = 0;
	CHECK(weft_req_is_error(b, &e));
	CHECK_EQ(e, ECANCELED);
	e = 0;
	CHECK(weft_req_is_error(c, &e));
	CHECK_EQ(e, ECANCELED);
	CHECK(weft_req_is_in_progress(a));
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(ra.calls, 1);
	CHECK_EQ(ra.status, WEFT_REQ_DONE); /* the running one finished on its own */
	CHECK_EQ(rb.calls, 1);
	CHECK_EQ(rc.calls, 1);
	CHECK(!rb.reentrant && !rc.reentrant);
	CHECK_EQ(rb.err, ECANCELED);
	CHECK_EQ(rc.err, ECANCELED);
	CHECK_EQ(rb.recv, -ECANCELED);
	CHECK_EQ(g_qn, 1); /* b and c never triggered */
	CHECK_EQ(g_qbad, 0);
	CHECK_TRACE('b', "fin cb");
	CHECK_TRACE('c', "fin cb");
	FREE_EACH(a, b, c);

	/* freeing a queue whose head's trigger has not run yet */
	q_reset();
	weft_queue *q2 = mkqueue(loop);
	REQUIRE(q2);
	weft_req *d = qop_new(loop, 0, 'd', 3);
	REQUIRE(d);
	CHECK_EQ(qadd(q2, d), 0);
	weft_queue_free(q2);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK(!weft_req_is_in_progress(d));
	CHECK_EQ(g_qbad, 0);
	weft_req_free(d);
	endloop(loop);
}

static void test_queue_timeout_waiting(void)
{
	weft_loop *loop;
	weft_queue *q;
	REQUIRE(queue_setup(&loop, &q));
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' }, rc = { .tag = 'c' };
	weft_req *a = qop_new(loop, 100, 'a', 0);
	weft_req *b = qop_new(loop, 0, 'b', 1);
	weft_req *c = qop_new(loop, 0, 'c', 2);
	REQUIRE(a && b && c);
	ra.q = rb.q = rc.q = q;
	weft_req_set_callback(a, rec_cb, &ra);
	weft_req_set_callback(b, rec_cb, &rb);
	weft_req_set_callback(c, rec_cb, &rc);
	uint64_t t0 = t_now_ms();
	QADD_EACH(q, a, b, c);
	CHECK_EQ(weft_req_set_timeout(b, 30), 0);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_ONCE(rb, WEFT_REQ_TIMED_OUT);
	CHECK_EQ(rb.qlen, 2); /* b left the queue: a and c remain */
	CHECK(rb.at - t0 >= 28 && rb.at - t0 <= 30 + SLACK_MS);
	CHECK_ONCE(ra, WEFT_REQ_DONE);
	CHECK_ONCE(rc, WEFT_REQ_DONE);
	CHECK(rc.at >= ra.at);
	CHECK_EQ(g_qn, 2);
	CHECK_EQ(g_qorder[0], 0);
	CHECK_EQ(g_qorder[1], 2);
	CHECK_EQ(g_qbad, 0);
	CHECK_TRACE('b', "fin cb");
	FREE_EACH(a, b, c);
	queue_teardown(loop, q);
}

static void test_queue_cancel(void)
{
	weft_loop *loop;
	weft_queue *q;
	REQUIRE(queue_setup(&loop, &q));
	struct rec r[5];
	memset(r, 0, sizeof r);
	weft_req *req[5];
	for (int i = 0; i < 5; i++) {
		req[i] = qop_nth(loop, i == 0 ? 5000 : i == 2 ? QOP_MANUAL : 0, i, &r[i]);
		REQUIRE(req[i]);
		r[i].q = q;
		CHECK_EQ(qadd(q, req[i]), 0);
	}
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_NOWAIT), 1);
	CHECK_EQ(g_qn, 1);
	/* cancel a waiting one: it leaves the queue, never triggers */
	CHECK_EQ(cancel(req[1]), 0);
	CHECK_EQ(weft_queue_length(q), 4);
	CHECK_EQ(r[1].calls, 0);
	/* cancel the running one (on a 5 s timer): the next starts */
	CHECK_EQ(cancel(req[0]), 0);
	CHECK_EQ(weft_queue_length(q), 3);
	CHECK_EQ(r[0].calls, 0);
	for (int i = 0; i < 3; i++)
		weft_loop_run(loop, WEFT_RUN_NOWAIT);
	CHECK_EQ(r[0].calls, 1);
	CHECK_EQ(r[1].calls, 1);
	CHECK_EQ(r[0].err, ECANCELED);
	CHECK_EQ(r[1].err, ECANCELED);
	CHECK_EQ(g_qn, 2);
	CHECK_EQ(g_qorder[1], 2); /* c (manual) runs */
	/* c completes; before d's trigger runs, d is canceled: e runs */
	weft_req_done(req[2]);
	CHECK_EQ(cancel(req[3]), 0);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK(t_now_ms() - t0 <= SLACK_MS);
	CHECK_EQ(g_qn, 3);
	CHECK_EQ(g_qorder[2], 4);
	CHECK_ONCE_ERR(r[3], ECANCELED);
	CHECK_ONCE(r[4], WEFT_REQ_DONE);
	CHECK_EQ(g_qbad, 0);
	CHECK_EQ(weft_queue_length(q), 0);
	for (int i = 0; i < 5; i++) {
		CHECK(!r[i].reentrant || i == 2);
		weft_req_free(req[i]);
	}
	queue_teardown(loop, q);
}

/* Racing completion in a queue: the running request's timer, a canceler
 * with the same deadline (started from the trigger, so both deadlines are
 * computed from the same loop time), and a cancel of the next waiting
 * request.  Exactly one outcome each, every trigger at most once. */
struct qrace {
	struct race_cancel rc;
	weft_timer *t;
	weft_req *waiting; /* canceled from the same timer */
	int waiting_ret;
	bool canceler_first;
};
static struct qrace *g_qrace;

static void qrace_fire(weft_timer *t, void *data)
{
	struct qrace *qr = data;
	race_cancel_fire(t, &qr->rc);
	qr->waiting_ret = cancel(qr->waiting);
}

static void qrace_trigger(weft_req *req, void *data)
{
	if (g_qrace->canceler_first)
		weft_timer_start(g_qrace->t, 20, 0);
	qop_trigger(req, data);
	if (!g_qrace->canceler_first)
		weft_timer_start(g_qrace->t, 20, 0);
}

static void test_queue_cancel_race(void)
{
	int canceled = 0, done = 0;
	for (int round = 0; round < 8; round++) {
		weft_loop *loop;
		weft_queue *q;
		REQUIRE(queue_setup(&loop, &q));
		struct qrace qr = { .canceler_first = round % 2 == 1 };
		g_qrace = &qr;
		CHECK_EQ(weft_timer_new(loop, qrace_fire, &qr, &qr.t), 0);
		struct rec r[3];
		memset(r, 0, sizeof r);
		weft_req *req[3];
		for (int i = 0; i < 3; i++) {
			req[i] = qop_nth(loop, i == 0 ? 20 : 0, i, &r[i]);
			REQUIRE(req[i]);
		}
		qr.rc.req = req[0];
		qr.waiting = req[1];
		g_in_add++;
		CHECK_EQ(weft_queue_add(q, req[0], qrace_trigger, &g_trigger_token), 0);
		g_in_add--;
		CHECK_EQ(qadd(q, req[1]), 0);
		CHECK_EQ(qadd(q, req[2]), 0);
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
		CHECK_EQ(qr.rc.fired, 1);
		for (int i = 0; i < 3; i++)
			CHECK_EQ(r[i].calls, 1);
		if (qr.rc.ret == 0) {
			canceled++;
			CHECK_EQ(r[0].err, ECANCELED);
		} else {
			done++;
			CHECK_EQ(qr.rc.ret, -EALREADY);
			CHECK_EQ(r[0].status, WEFT_REQ_DONE);
		}
		CHECK_EQ(qr.waiting_ret, 0);
		CHECK_EQ(r[1].err, ECANCELED);
		CHECK_EQ(r[2].status, WEFT_REQ_DONE);
		CHECK_EQ(g_qn, 2);
		CHECK_EQ(g_qorder[0], 0);
		CHECK_EQ(g_qorder[1], 2);
		CHECK_EQ(qop_triggers(req[1]), 0);
		CHECK_EQ(g_qbad, 0);
		CHECK_EQ(weft_queue_length(q), 0);
		CHECK_TRACE('a', "trig fin cb");
		CHECK_TRACE('b', "fin cb");
		CHECK_TRACE('c', "trig fin cb");
		for (int i = 0; i < 3; i++)
			weft_req_free(req[i]);
		weft_timer_free(qr.t);
		queue_teardown(loop, q);
	}
	g_qrace = NULL;
	printf("# queue cancel race: %d canceled, %d done\n", canceled, done);
}

/* Timeouts racing with completion in a queue: request i sleeps 20 ms once
 * triggered and has a timeout of 20*(i+1) ms from the start, so each one's
 * timeout falls at about the moment its operation ends (or while it is
 * about to be triggered). */
static void test_queue_timeout_race(void)
{
	int done = 0, timed_out = 0;
	for (int round = 0; round < 8; round++) {
		/* timeout offsets -1, 0, +1, +2 ms around the expected end */
		int off = round % 4 - 1;
		weft_loop *loop;
		weft_queue *q;
		REQUIRE(queue_setup(&loop, &q));
		enum { N = 6 };
		struct rec r[N];
		memset(r, 0, sizeof r);
		weft_req *req[N];
		for (int i = 0; i < N; i++) {
			req[i] = qop_nth(loop, 20, i, &r[i]);
			REQUIRE(req[i]);
			r[i].free_it = round >= 4;
			CHECK_EQ(qadd(q, req[i]), 0);
			CHECK_EQ(weft_req_set_timeout(req[i], (uint64_t)(20 * (i + 1) + off)), 0);
		}
		CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
		for (int i = 0; i < N; i++) {
			CHECK_EQ(r[i].calls, 1);
			if (r[i].status == WEFT_REQ_DONE) {
				done++;
			} else {
				timed_out++;
				CHECK_EQ(r[i].status, WEFT_REQ_TIMED_OUT);
				CHECK_EQ(r[i].err, ETIMEDOUT);
			}
			if (!r[i].free_it) {
				CHECK(((struct qop_state *)weft_req_state(req[i]))->t == NULL);
				if (r[i].status == WEFT_REQ_DONE)
					CHECK_EQ(qop_triggers(req[i]), 1);
				weft_req_free(req[i]);
			}
		}
		for (size_t i = 1; i < g_qn; i++)
			CHECK(g_qorder[i] > g_qorder[i - 1]);
		CHECK_EQ(g_qbad, 0);
		CHECK_EQ(weft_queue_length(q), 0);
		queue_teardown(loop, q);
	}
	printf("# queue timeout race: %d done, %d timed out\n", done, timed_out);
}

static int g_many_calls, g_many_bad, g_many_last;

static void many_cb(weft_req *req, void *data)
{
	(void)data;
	struct qop_state *s = weft_req_state(req);
	if (weft_req_get_status(req) != WEFT_REQ_DONE || s->h.id != g_many_last + 1)
		g_many_bad++;
	g_many_last = s->h.id;
	g_many_calls++;
	weft_req_free(req);
}

static void test_queue_many(void)
{
	weft_loop *loop;
	weft_queue *q;
	REQUIRE(queue_setup(&loop, &q));
	enum { N = 10000 };
	g_many_calls = g_many_bad = 0;
	g_many_last = -1;
	for (int i = 0; i < N; i++) {
		weft_req *req = qop_new(loop, 0, 0, i);
		REQUIRE(req);
		weft_req_set_callback(req, many_cb, NULL);
		if (qadd(q, req) != 0) {
			CHECK(!"weft_queue_add failed");
			weft_req_free(req);
			break;
		}
	}
	CHECK_EQ(weft_queue_length(q), N);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	printf("# %d queued requests in %llu ms\n", N, (unsigned long long)(t_now_ms() - t0));
	CHECK_EQ(g_many_calls, N);
	CHECK_EQ(g_many_bad, 0);
	CHECK_EQ(g_qn, N);
	bool ordered = true;
	for (size_t i = 0; i < g_qn; i++)
		ordered = ordered && g_qorder[i] == (int)i;
	CHECK(ordered);
	CHECK_EQ(g_qbad, 0);
	CHECK_EQ(weft_queue_length(q), 0);
	queue_teardown(loop, q);
}

/* weft_queue_free completes the waiting requests with ECANCELED, which runs
 * their FINISHED cleanup.  A cleanup may free another request (here: a
 * request of the same queue, e.g. a sub-request it owns); that request
 * "leaves its queue" (weft_req_free).  Nothing may touch the freed queue
 * afterwards. */
struct freer_state {
	struct op_hdr h;
	weft_req *victim;
};

static void freer_cleanup(weft_req *req, weft_req_stage stage)
{
	struct freer_state *s = weft_req_state(req);
	note_cleanup(&s->h, stage);
	weft_req *v = s->victim;
	s->victim = NULL;
	weft_req_free(v);
}

static void never_trigger(weft_req *req, void *data)
{
	(void)req;
	(void)data;
	g_qbad++;
}

static void test_queue_free_reentrant_cleanup(void)
{
	weft_loop *loop;
	weft_queue *q;
	REQUIRE(queue_setup(&loop, &q));
	struct rec ra = { .tag = 'a' }, rb = { .tag = 'b' }, rc = { .tag = 'c' }, rd = { .tag = 'd' };
	weft_req *a = qop_new(loop, QOP_MANUAL, 'a', 0);
	weft_req *b = weft_req_new(loop, sizeof(struct freer_state), "freer");
	weft_req *c = qop_new(loop, 0, 'c', 2);
	weft_req *d = qop_new(loop, 0, 'd', 3);
	REQUIRE(a && b && c && d);
	struct freer_state *bs = weft_req_state(b);
	bs->h.tag = 'b';
	bs->victim = c;
	weft_req_set_cleanup(b, freer_cleanup);
	weft_req_set_callback(a, rec_cb, &ra);
	weft_req_set_callback(b, rec_cb, &rb);
	weft_req_set_callback(c, rec_cb, &rc);
	weft_req_set_callback(d, rec_cb, &rd);
	CHECK_EQ(qadd(q, a), 0);
	CHECK_EQ(weft_queue_add(q, b, never_trigger, NULL), 0);
	QADD_EACH(q, c, d);
	CHECK(weft_loop_run(loop, WEFT_RUN_NOWAIT) >= 0);
	CHECK_EQ(g_qn, 1); /* a runs */
	weft_queue_free(q); /* b's cleanup frees c, which leaves the queue */
	CHECK_TRACE('b', "fin");
	CHECK_TRACE('c', "free");
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	weft_req_done(a);
	CHECK_EQ(weft_loop_run(loop, WEFT_RUN_DEFAULT), 0);
	CHECK_EQ(ra.calls, 1);
	CHECK_ONCE_ERR(rb, ECANCELED);
	CHECK_EQ(rc.calls, 0);
	CHECK_ONCE_ERR(rd, ECANCELED);
	CHECK_EQ(g_qn, 1);
	CHECK_EQ(g_qbad, 0);
	FREE_EACH(a, b, d);
	endloop(loop);
}

/* =========================================================================
 * main
 * ========================================================================= */

static void run(const char *name, void (*fn)(void))
{
	tr_reset();
	t_run_watchdog(name, fn, 60);
}

int main(void)
{
	run("req: new, state, accessors", test_new_and_state);
	run("req: sleep completes, callback data, recv, status", test_sleep_done);
	run("req: read one byte from a socketpair", test_readbyte);
	run("req: read error (EOF) stored positive, recv -errno", test_readbyte_error);
	run("req: error(0) no-op, +/- errno, nomem", test_error_values);
	run("req: double completion ignored", test_double_completion);
	run("req: completion inside _send is posted", test_complete_in_send);
	run("req: callback set after completion in _send", test_complete_in_send_callback_later);
	run("req: cleanup FINISHED/FREED stages and order", test_cleanup_stages);
	run("req: free inside own callback", test_free_in_callback);
	run("req: free in progress releases handles, no callback", test_free_in_progress);
	run("cancel: no cancel fn -> ECANCELED, posted", test_cancel_no_fn);
	run("cancel: cancel fn refuses -> EBUSY, completes normally", test_cancel_refused);
	run("cancel: cancel fn completes -> posted", test_cancel_fn_completes);
	run("cancel: after completion -> EALREADY", test_cancel_after_completion);
	run("cancel: partial write progress readable (libuv#2051)", test_write_cancel_progress);
	run("timeout: partial write progress readable", test_write_timeout_progress);
	run("writer: completes with a fast reader", test_write_complete);
	run("timeout: long sleep -> ETIMEDOUT, timer released", test_timeout_long_sleep);
	run("timeout: on a request holding no handle", test_timeout_on_manual);
	run("timeout: counted from now, not the cached loop time", test_timeout_from_now);
	run("timeout: on a completed request -> EALREADY", test_timeout_completed);
	run("timeout: 0 disables, a new one replaces", test_timeout_zero_disables);
	run("timeout: released on completion, free, cancel", test_timeout_released);
	run("timeout: racing with completion", test_timeout_race);
	run("cancel: racing with completion", test_cancel_race);
	run("wait: drives the loop until completion", test_wait);
	run("wait: external backend -> EINVAL", test_wait_external);
	run("queue: FIFO, trigger never inside add, length", test_queue_fifo);
	run("queue: add_now", test_queue_add_now);
	run("queue: add_now inside _send, callback posted", test_queue_add_now_in_send);
	run("queue: next starts on completion, not on free", test_queue_next_on_completion);
	run("queue: freeing a waiting request removes it", test_queue_free_waiting);
	run("queue: freeing the running request starts the next", test_queue_free_running);
	run("queue: stop/start", test_queue_stop_start);
	run("queue: add twice / completed / NULL", test_queue_add_errors);
	run("queue: free with waiting requests -> ECANCELED", test_queue_free_queue);
	run("queue: timeout while waiting leaves the queue", test_queue_timeout_waiting);
	run("queue: cancel waiting / running / about to trigger", test_queue_cancel);
	run("queue: cancel racing with completion", test_queue_cancel_race);
	run("queue: timeouts racing with completion", test_queue_timeout_race);
	run("queue: 10000 requests in order", test_queue_many);
	/* last: with the bug it reports, it may crash the program */
	run("queue: free while a cleanup frees a queued request", test_queue_free_reentrant_cleanup);
	return t_finish();
}
