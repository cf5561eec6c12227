/* The Assuan client: connect (socket, pipe server, adopted stream), the
 * greeting, transactions with D/S/INQUIRE callbacks, cancellation, passing
 * descriptors, and the low-level line interface — all on the loop. */
#include "assuan-private.h"
#include "list.h"
#include "loop-private.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

enum phase { P_GREETING, P_READY, P_DEAD };

struct tr {
	struct weft__list link;
	weft_assuan_client *cl; /* NULL once detached */
	weft_req *req;
	char *cmd;
	weft_assuan_transact_cbs cbs;
	void *data;
	bool sent;
	weft_assuan_err answer;
};

/* Watches a spawned server until it exits; outlives its client. */
struct reaper {
	weft_assuan_client *cl;
	pid_t pid;
	int pidfd;
	weft_io *io;       /* on the pidfd */
	weft_timer *poll;  /* without pidfd_open: waitpid every few ms */
	bool exited;
	bool reporting; /* its exit callback runs */
	int wstatus;
	weft_assuan_exit_cb cb;
	void *data;
};

struct weft_assuan_client {
	weft_loop *loop;
	struct weft__apump io;
	enum phase phase;
	int dead_err;
	weft_req *connect_req;
	char *greeting;
	char *okay;
	struct weft__list trs; /* waiting and running, in order */
	struct tr *active;     /* its command was sent */
	unsigned discard;      /* answers of abandoned transactions to skip */
	bool inquiring;        /* an INQUIRE waits for our answer */
	unsigned depth;
	bool freeing;
	bool released; /* closed, its memory waits for kick_cb */
	weft_defer kick;
	struct reaper *reaper;
};

struct connect_state {
	weft_assuan_client *cl;
	weft_req *sub;
	weft_loop *loop;
};

static void client_process(weft_assuan_client *cl);
static void client_release(weft_assuan_client *cl);

/* ---- the child -------------------------------------------------------------- */

static void reaper_free(struct reaper *r)
{
	weft_io_free(r->io);
	weft_timer_free(r->poll);
	if (r->pidfd >= 0)
		close(r->pidfd);
	free(r);
}

/* Tell the exit callback (once); a reaper whose client is gone ends here.
 * The callback may free the client (the reaper stays until it returns) or
 * set a new callback (posted: the reaper stays for it). */
static void reaper_report(void *data)
{
	struct reaper *r = data;
	weft_assuan_exit_cb cb = r->cb;
	r->cb = NULL;
	if (cb) {
		r->reporting = true;
		cb(r->pid, r->wstatus, r->data);
		r->reporting = false;
	}
	/* cppcheck-suppress knownConditionTrueFalse ; cb may have set a new one */
	if (r->cl == NULL && r->cb == NULL)
		reaper_free(r);
}

static void reaper_check(struct reaper *r)
{
	int st;
	pid_t p = waitpid(r->pid, &st, WNOHANG);
	if (p == 0)
		return; /* not yet */
	r->exited = true;
	r->wstatus = p == r->pid ? st : 0;
	weft_io_free(r->io);
	r->io = NULL;
	weft_timer_free(r->poll);
	r->poll = NULL;
	reaper_report(r);
}

static void reaper_io(weft_io *io, unsigned revents, void *data)
{
	(void)io;
	(void)revents;
	reaper_check(data);
}

static void reaper_tick(weft_timer *t, void *data)
{
	(void)t;
	reaper_check(data);
}

static int reaper_new(weft_loop *loop, pid_t pid, struct reaper **ret)
{
	struct reaper *r = calloc(1, sizeof(*r));
	if (r == NULL)
		return -ENOMEM;
	r->pid = pid;
	r->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	int rc;
	if (r->pidfd < 0 && (errno == ENOSYS || errno == EPERM)) {
		/* No pidfd_open (before Linux 5.3, valgrind, seccomp): look
		 * with waitpid(WNOHANG) every 20 ms. */
		rc = weft_timer_new(loop, reaper_tick, r, &r->poll);
		if (rc == 0)
			rc = weft_timer_start(r->poll, 20, 20);
	} else if (r->pidfd < 0) {
		rc = -errno;
	} else {
		rc = weft_io_new(loop, r->pidfd, reaper_io, r, &r->io);
		if (rc == 0)
			rc = weft_io_start(r->io, WEFT_IO_READ);
	}
	if (rc < 0) {
		reaper_free(r);
		return rc;
	}
	*ret = r;
	return 0;
}

pid_t weft_assuan_client_pid(const weft_assuan_client *cl)
{
	return cl && cl->reaper ? cl->reaper->pid : 0;
}

int weft_assuan_client_on_exit(weft_assuan_client *cl, weft_assuan_exit_cb cb, void *data)
{
	if (cl == NULL || cl->reaper == NULL || cb == NULL)
		return -EINVAL;
	struct reaper *r = cl->reaper;
	r->cb = cb;
	r->data = data;
	if (r->exited)
		return weft_loop_call_soon(cl->loop, reaper_report, r);
	return 0;
}

/* ---- output helpers ------------------------------------------------------------ */

static void touch(weft_assuan_client *cl)
{
	if (cl->depth == 0)
		weft_defer_schedule(&cl->kick);
}

static int put_line(weft_assuan_client *cl, const char *line)
{
	if (cl->phase == P_DEAD || cl->io.s == NULL)
		return -EPIPE;
	int r = weft__aenc_data_end(&cl->io.out, &cl->io.dcount);
	if (r == 0)
		r = weft__aenc_line(&cl->io.out, line, NULL);
	if (r == 0)
		touch(cl);
	return r;
}

/* ---- transactions ------------------------------------------------------------- */

static void tr_detach(struct tr *t)
{
	weft_assuan_client *cl = t->cl;
	if (cl == NULL)
		return;
	weft__list_remove(&t->link);
	if (cl->active == t)
		cl->active = NULL;
	t->cl = NULL;
}

/* The answer came (or a callback chose one): complete. */
static void tr_complete(struct tr *t, weft_assuan_err answer)
{
	tr_detach(t);
	t->answer = answer;
	weft_req_done(t->req);
}

/* A running transaction ends before its answer: skip that answer later. */
static void tr_abandon(weft_assuan_client *cl, struct tr *t)
{
	if (t->sent && cl->phase == P_READY) {
		cl->discard++;
		if (cl->inquiring) {
			cl->inquiring = false;
			put_line(cl, "CAN");
		}
	}
	tr_detach(t);
	touch(cl);
}

static void tr_cleanup(weft_req *req, weft_req_stage stage)
{
	struct tr *t = weft_req_state(req);
	if (t->cl != NULL) /* cancelled, timed out or freed while running */
		tr_abandon(t->cl, t);
	if (stage == WEFT_REQ_STAGE_FREED && t->cmd != NULL) { /* sent at once: none */
		free(t->cmd);
		t->cmd = NULL;
	}
}

/* A new command can go now: none waits or runs before it. */
static bool can_start_now(const weft_assuan_client *cl)
{
	return cl->phase == P_READY && cl->active == NULL && cl->discard == 0 && cl->io.s != NULL &&
	       weft__list_empty(&cl->trs);
}

/* "command\n" into the output (command, n bytes, checked by the caller). */
static int put_command(weft_assuan_client *cl, const char *command, size_t n)
{
	struct weft__abuf *out = &cl->io.out;
	int r = cl->io.dcount != 0 ? weft__aenc_data_end(out, &cl->io.dcount) : 0;
	if (r == 0 && out->cap - out->len < n + 1)
		r = weft__abuf_reserve(out, n + 1);
	if (r < 0)
		return r;
	memcpy(out->p + out->len, command, n);
	out->p[out->len + n] = '\n';
	out->len += n + 1;
	return 0;
}

weft_req *weft_assuan_transact_send(weft_assuan_client *cl, const char *command,
		const weft_assuan_transact_cbs *cbs, void *data)
{
	if (cl == NULL)
		return NULL;
	weft_req *req = weft_req_new(cl->loop, sizeof(struct tr), "assuan-transact");
	if (req == NULL)
		return NULL;
	struct tr *t = weft_req_state(req);
	t->req = req;
	size_t n = 0; /* the command's length, checked in one pass */
	if (command != NULL)
		while (command[n] != '\0' && command[n] != '\n' && n < WEFT_ASSUAN_LINELENGTH)
			n++;
	if (command == NULL || n == 0 || command[n] != '\0' || n + 1 > WEFT_ASSUAN_LINELENGTH) {
		weft_req_error(req, EINVAL);
		return req;
	}
	if (cl->phase != P_READY || cl->freeing) {
		weft_req_error(req, cl->phase == P_DEAD && cl->dead_err ? cl->dead_err : EPIPE);
		return req;
	}
	if (cbs != NULL)
		t->cbs = *cbs;
	t->data = data;
	if (can_start_now(cl) && put_command(cl, command, n) == 0) {
		/* Nothing before it: sent now, no copy and no pass of the
		 * loop.  Its answer is read as any other. */
		t->cl = cl;
		t->sent = true;
		cl->active = t;
		weft__list_append(&cl->trs, &t->link);
		weft_req_set_cleanup(req, tr_cleanup);
		if (cl->depth == 0) {
			/* Outside the pump: write now; a failure or lines
			 * already buffered are the loop's to handle (callbacks
			 * never run from here).  Inside it, the pump writes
			 * when its pass ends. */
			if (weft__apump_flush(&cl->io) < 0 || cl->io.in.len > 0 || weft__apump_read(&cl->io) < 0)
				weft_defer_schedule(&cl->kick);
		}
		return req;
	}
	t->cmd = strdup(command);
	if (weft_req_nomem(t->cmd, req))
		return req;
	t->cl = cl;
	weft__list_append(&cl->trs, &t->link);
	weft_req_set_cleanup(req, tr_cleanup);
	weft_defer_schedule(&cl->kick); /* sent from the loop, in order */
	return req;
}

int weft_assuan_transact_recv(weft_req *req, weft_assuan_err *ret_err, int *perrno)
{
	int r = weft_req_simple_recv(req, perrno);
	if (r < 0)
		return r;
	struct tr *t = weft_req_state(req);
	if (ret_err)
		*ret_err = t->answer;
	return 0;
}

const char *weft_assuan_client_okay_text(const weft_assuan_client *cl)
{
	return cl && cl->okay ? cl->okay : "";
}

/* ---- INQUIRE answers -------------------------------------------------------------- */

int weft_assuan_client_inquire_data(weft_assuan_client *cl, const void *buf, size_t len)
{
	if (cl == NULL || !cl->inquiring || (buf == NULL && len > 0))
		return -EINVAL;
	if (cl->phase == P_DEAD)
		return -EPIPE;
	int r = weft__aenc_data(&cl->io.out, &cl->io.dcount, buf, len);
	if (r == 0)
		touch(cl);
	return r;
}

static int inquire_finish(weft_assuan_client *cl, const char *line)
{
	if (cl == NULL || !cl->inquiring)
		return -EINVAL;
	cl->inquiring = false;
	return put_line(cl, line);
}

int weft_assuan_client_inquire_end(weft_assuan_client *cl)
{
	return inquire_finish(cl, "END");
}

int weft_assuan_client_inquire_cancel(weft_assuan_client *cl)
{
	return inquire_finish(cl, "CAN");
}

/* ---- the line handler ------------------------------------------------------------ */

/* line starts with the word w, alone or followed by a space. */
static bool word(const char *line, const char *w)
{
	size_t i = 0;
	for (; w[i] != '\0'; i++)
		if (line[i] != w[i])
			return false;
	return line[i] == '\0' || line[i] == ' ';
}

static void kill_client(weft_assuan_client *cl, int err);

/* A callback chose the answer: complete now, drop the real one later. */
static void tr_end_early(weft_assuan_client *cl, struct tr *t, weft_assuan_err answer)
{
	tr_abandon(cl, t); /* detaches: the cleanup will not abandon again */
	t->answer = answer;
	weft_req_done(t->req);
}

static void answer_line(weft_assuan_client *cl, char *line, size_t len)
{
	struct tr *t = cl->discard > 0 ? NULL : cl->active;
	if (word(line, "OK") || word(line, "ERR")) {
		weft_assuan_err answer = 0;
		if (line[0] == 'E') {
			answer = line[3] ? (weft_assuan_err)strtoul(line + 4, NULL, 10) : 0;
			if (answer == 0)
				answer = GPG_ERR_GENERAL; /* an ERR is never an OK (GPGME's rule) */
		}
		cl->inquiring = false;
		if (t == NULL) {
			cl->discard--;
			return;
		}
		if (line[0] == 'O') {
			/* No copy for a bare OK (the text reads "" then). */
			if (cl->okay != NULL) {
				free(cl->okay);
				cl->okay = NULL;
			}
			if (line[2] != '\0' && line[3] != '\0')
				cl->okay = strdup(line + 3);
		}
		tr_complete(t, answer);
		return;
	}
	weft_assuan_err r = 0;
	if (line[0] == 'D' && line[1] == ' ') {
		if (t && t->cbs.data) {
			/* Decoded beside the line: a copy that needs no
			 * care for overlap is the faster one. */
			char buf[WEFT_ASSUAN_LINELENGTH];
			ssize_t n = weft__adecode_to(buf, line + 2, len - 2, false);
			r = t->cbs.data(t->data, buf, (size_t)n);
		}
	} else if (word(line, "S")) {
		if (t && t->cbs.status && line[1]) {
			char *kw = line + 2, *args = kw;
			while (*args && *args != ' ')
				args++;
			if (*args)
				*args++ = '\0';
			r = t->cbs.status(t->data, kw, args);
		}
	} else if (word(line, "INQUIRE")) {
		cl->inquiring = true;
		if (t == NULL || t->cbs.inquire == NULL) {
			inquire_finish(cl, "CAN");
		} else {
			char *kw = line + 7, *args;
			while (*kw == ' ')
				kw++;
			args = kw;
			while (*args && *args != ' ')
				args++;
			if (*args)
				*args++ = '\0';
			r = t->cbs.inquire(t->data, kw, args);
		}
	} else if (word(line, "END")) {
		if (t && t->cbs.data)
			r = t->cbs.data(t->data, NULL, 0);
	} else if (line[0] == '#') {
		if (t && t->cbs.comment)
			r = t->cbs.comment(t->data, line);
	} else {
		kill_client(cl, EPROTO); /* not an Assuan answer */
		return;
	}
	/* The callback may have freed t's request (or the client) and even
	 * started a transaction that reuses t's memory: t is only still ours
	 * if it is still the active one. */
	if (r != 0 && t != NULL && cl->active == t)
		tr_end_early(cl, t, r);
}

/* ---- the pump ------------------------------------------------------------------------ */

static void greeting_line(weft_assuan_client *cl, char *line)
{
	if (line[0] == '#' || line[0] == '\0')
		return;
	weft_req *req = cl->connect_req;
	if (!word(line, "OK")) {
		kill_client(cl, EPROTO); /* ERR or garbage: refused */
		return;
	}
	cl->greeting = strdup(line[2] ? line + 3 : "");
	cl->phase = P_READY;
	cl->connect_req = NULL;
	if (req != NULL)
		weft_req_done(req);
}

static void start_next(weft_assuan_client *cl)
{
	if (cl->phase != P_READY || cl->active != NULL || cl->discard > 0 || weft__list_empty(&cl->trs))
		return;
	struct tr *t = weft__container_of(cl->trs.next, struct tr, link);
	if (put_line(cl, t->cmd) < 0) {
		kill_client(cl, ENOMEM);
		return;
	}
	t->sent = true;
	cl->active = t;
}

static void client_process(weft_assuan_client *cl)
{
	if (cl->phase == P_DEAD)
		return;
	cl->depth++;
	while (cl->phase != P_DEAD && !cl->freeing) {
		start_next(cl);
		if (cl->phase == P_READY && cl->active == NULL && cl->discard == 0)
			break; /* lines stay for weft_assuan_client_read_line */
		char *line;
		size_t len;
		enum weft__aline k = weft__ain_next(&cl->io.in, &line, &len);
		if (k == WEFT__ALINE_NONE)
			break;
		if (k == WEFT__ALINE_TOO_LONG) {
			kill_client(cl, EPROTO);
			break;
		}
		if (cl->phase == P_GREETING)
			greeting_line(cl, line);
		else
			answer_line(cl, line, len);
	}
	if (cl->phase != P_DEAD && !cl->freeing) {
		bool busy = cl->phase == P_GREETING || cl->active != NULL || cl->discard > 0;
		if (cl->io.err != 0)
			kill_client(cl, cl->io.err);
		else if (cl->io.eof && busy)
			kill_client(cl, EPIPE); /* the server went away */
		else if (weft__apump_flush(&cl->io) < 0)
			kill_client(cl, cl->io.err);
		else if (weft__apump_read(&cl->io) < 0)
			kill_client(cl, ENOMEM);
	}
	if (--cl->depth == 0 && cl->freeing)
		client_release(cl);
}

static void pump_event(struct weft__apump *p, enum weft__apump_ev ev)
{
	weft_assuan_client *cl = weft__container_of(p, weft_assuan_client, io);
	if (ev == WEFT__APUMP_WAKE)
		weft_defer_schedule(&cl->kick); /* kick_cb runs weft__apump_kick */
	else
		client_process(cl);
}

static void kick_cb(weft_defer *d, void *data)
{
	weft_assuan_client *cl = data;
	(void)d;
	if (cl->released) {
		client_release(cl); /* the hook that held it has returned */
		return;
	}
	if (cl->io.kick_read) {
		cl->depth++; /* the read's lines may free the client */
		weft__apump_kick(&cl->io);
		if (--cl->depth == 0 && cl->freeing) {
			client_release(cl);
			return;
		}
	}
	client_process(cl);
}

/* The connection is over: everything waiting fails with err. */
static void kill_client(weft_assuan_client *cl, int err)
{
	if (cl->phase == P_DEAD)
		return;
	cl->phase = P_DEAD;
	cl->dead_err = err;
	cl->inquiring = false;
	cl->depth++; /* callbacks below may free the client */
	weft__apump_close(&cl->io);
	weft_req *creq = cl->connect_req;
	cl->connect_req = NULL;
	if (creq != NULL)
		weft_req_error(creq, err);
	while (!weft__list_empty(&cl->trs) && !cl->freeing) {
		struct tr *t = weft__container_of(cl->trs.next, struct tr, link);
		tr_detach(t);
		weft_req_error(t->req, err);
	}
	if (--cl->depth == 0 && cl->freeing)
		client_release(cl);
}

/* ---- creating and freeing -------------------------------------------------------- */

static weft_assuan_client *client_new(weft_loop *loop, weft_stream *s)
{
	weft_assuan_client *cl = calloc(1, sizeof(*cl));
	if (cl == NULL) {
		weft_stream_close(s, NULL, NULL);
		return NULL;
	}
	cl->loop = loop;
	weft__apump_init(&cl->io, s, pump_event);
	/* The client reads and writes the transport itself, as the server
	 * does; a stream that cannot be taken (a request attached, bytes
	 * read ahead) is driven by requests. */
	(void)weft__apump_take(&cl->io, NULL);
	weft__list_init(&cl->trs);
	weft__defer_init(loop, &cl->kick, kick_cb, cl);
	weft_defer_schedule(&cl->kick); /* first read from the loop */
	return cl;
}

static void client_release(weft_assuan_client *cl)
{
	weft__apump_close(&cl->io); /* a second time: nothing left to close */
	if (cl->reaper != NULL) {
		cl->reaper->cl = NULL;
		if (cl->reaper->exited && cl->reaper->cb == NULL && !cl->reaper->reporting)
			reaper_free(cl->reaper); /* else it frees itself at exit */
		cl->reaper = NULL;
	}
	if (cl->io.busy > 0) {
		/* Freed from inside the pump's readiness hook, which looks at
		 * the pump once more on its way out: the memory goes from the
		 * loop. */
		cl->released = true;
		weft_defer_schedule(&cl->kick);
		return;
	}
	weft_defer_cancel(&cl->kick);
	weft__handle_fini(&cl->kick.h);
	free(cl->greeting);
	free(cl->okay);
	free(cl);
}

void weft_assuan_client_free(weft_assuan_client *cl)
{
	if (cl == NULL || cl->freeing)
		return;
	if (cl->phase == P_READY && cl->io.s != NULL && weft__apump_pending(&cl->io) == 0) {
		struct iovec iov = {"BYE\n", 4};
		weft_stream_try_writev(cl->io.s, &iov, 1); /* best effort, as libassuan */
	}
	cl->freeing = true;
	cl->depth++;
	weft_req *creq = cl->connect_req;
	cl->connect_req = NULL;
	if (creq != NULL) {
		struct connect_state *cs = weft_req_state(creq);
		cs->cl = NULL;
		weft_req_error(creq, ECANCELED);
	}
	while (!weft__list_empty(&cl->trs)) {
		struct tr *t = weft__container_of(cl->trs.next, struct tr, link);
		tr_detach(t);
		weft_req_error(t->req, ECANCELED);
	}
	if (--cl->depth == 0)
		client_release(cl);
}

const char *weft_assuan_client_greeting(const weft_assuan_client *cl)
{
	return cl && cl->greeting ? cl->greeting : "";
}

weft_stream *weft_assuan_client_stream(const weft_assuan_client *cl)
{
	return cl ? cl->io.s : NULL;
}

/* ---- connect ------------------------------------------------------------------------- */

static void connect_cleanup(weft_req *req, weft_req_stage stage)
{
	struct connect_state *cs = weft_req_state(req);
	weft_req_free(cs->sub);
	cs->sub = NULL;
	bool failed = weft_req_get_status(req) != WEFT_REQ_DONE;
	if (cs->cl != NULL && (failed || stage == WEFT_REQ_STAGE_FREED)) {
		weft_assuan_client *cl = cs->cl;
		cs->cl = NULL;
		cl->connect_req = NULL;
		/* A spawned server nobody will see (no client, no pid handed
		 * out): stop it, or it runs on and the loop waits for it. */
		if (cl->reaper != NULL && !cl->reaper->exited)
			kill(cl->reaper->pid, SIGTERM);
		weft_assuan_client_free(cl); /* not handed out */
	}
}

static weft_req *connect_req_new(weft_loop *loop)
{
	weft_req *req = weft_req_new(loop, sizeof(struct connect_state), "assuan-connect");
	if (req == NULL)
		return NULL;
	struct connect_state *cs = weft_req_state(req);
	cs->loop = loop;
	weft_req_set_cleanup(req, connect_cleanup);
	return req;
}

/* Start the greeting phase on s for req. */
static void connect_attach(weft_req *req, weft_stream *s)
{
	struct connect_state *cs = weft_req_state(req);
	weft_assuan_client *cl = client_new(cs->loop, s);
	if (weft_req_nomem(cl, req))
		return;
	cs->cl = cl;
	cl->connect_req = req;
}

static void connected(weft_req *sub, void *data)
{
	weft_req *req = data;
	struct connect_state *cs = weft_req_state(req);
	weft_stream *s = NULL;
	int err = 0;
	int r = weft_sock_connect_recv(sub, &s, &err);
	weft_req_free(sub);
	cs->sub = NULL;
	if (weft_req_error(req, r < 0 ? err : 0))
		return;
	connect_attach(req, s);
}

/* libassuan's redirect file: where a socket cannot live (a file system
 * without sockets, a home shared by several machines) the socket's path
 * holds a small regular file, "%Assuan%\nsocket=NAME\n", and NAME (with
 * ${VAR} taken from the environment, an unset one empty) is the real
 * socket.  Returns 1 with the name in out, 0 if path is not a regular
 * file or not such a file (connect to path itself), or -errno for a
 * redirect that cannot be followed.  The read is of a local file of at
 * most 511 bytes, as libassuan reads it. */
static int read_redirect(const char *path, char out[108])
{
	static const char magic[] = "%Assuan%\nsocket=";
	struct stat st;
	if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
		return 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return 0;
	char buf[512];
	ssize_t n;
	do
		n = read(fd, buf, sizeof(buf) - 1);
	while (n < 0 && errno == EINTR);
	close(fd);
	const size_t ml = sizeof(magic) - 1;
	if (n < (ssize_t)ml + 1 || buf[n - 1] != '\n' || memcmp(buf, magic, ml) != 0 || buf[ml] == '\n')
		return 0;
	buf[n - 1] = '\0';
	size_t o = 0;
	for (const char *p = buf + ml; *p != '\0' && *p != '\n'; p++) {
		const char *add = p, *end = p + 1;
		if (p[0] == '$' && p[1] == '{') {
			const char *close_brace = strchr(p + 2, '}');
			if (close_brace == NULL)
				return -EINVAL;
			char var[512];
			size_t vl = (size_t)(close_brace - (p + 2));
			memcpy(var, p + 2, vl);
			var[vl] = '\0';
			add = vl > 0 ? getenv(var) : NULL;
			end = add != NULL ? add + strlen(add) : add;
			p = close_brace;
		}
		for (; add != end; add++) {
			if (o + 1 >= 108)
				return -ENAMETOOLONG;
			out[o++] = *add;
		}
	}
	out[o] = '\0';
	return 1;
}

weft_req *weft_assuan_connect_send(weft_loop *loop, const char *name)
{
	weft_req *req = connect_req_new(loop);
	if (req == NULL)
		return NULL;
	if (name == NULL) {
		weft_req_error(req, EINVAL);
		return req;
	}
	char buf[160], target[108];
	if (strncmp(name, "file://", 7) == 0)
		name += 7;
	else if (strncmp(name, "unix:", 5) == 0 && name[5] != '@')
		name += 5;
	if (name[0] == '/' || (name[0] != '@' && strchr(name, ':') == NULL)) {
		/* a path, relative or absolute, maybe a redirect file */
		int rr = read_redirect(name, target);
		if (weft_req_error(req, rr < 0 ? -rr : 0))
			return req;
		if (rr == 1)
			name = target;
		if (strlen(name) >= 108) {
			weft_req_error(req, ENAMETOOLONG);
			return req;
		}
		snprintf(buf, sizeof(buf), "unix:%s", name);
		name = buf;
	}
	weft_addr addr;
	int r = weft_addr_parse(name, &addr);
	if (weft_req_error(req, r))
		return req;
	struct connect_state *cs = weft_req_state(req);
	cs->sub = weft_sock_connect_send(loop, &addr);
	if (weft_req_nomem(cs->sub, req))
		return req;
	weft_req_set_callback(cs->sub, connected, req);
	return req;
}

weft_req *weft_assuan_client_adopt_send(weft_loop *loop, weft_stream *s)
{
	weft_req *req = connect_req_new(loop);
	if (req == NULL || s == NULL) {
		weft_stream_close(s, NULL, NULL);
		if (req != NULL)
			weft_req_error(req, EINVAL);
		return req;
	}
	connect_attach(req, s);
	return req;
}

int weft_assuan_connect_recv(weft_req *req, weft_assuan_client **ret_client, int *perrno)
{
	int r = weft_req_simple_recv(req, perrno);
	if (r < 0)
		return r;
	struct connect_state *cs = weft_req_state(req);
	if (ret_client == NULL || cs->cl == NULL)
		return -EINVAL;
	*ret_client = cs->cl;
	cs->cl = NULL;
	return 0;
}

/* ---- pipe servers ------------------------------------------------------------------ */

/* As libassuan does: the child keeps stdin, stdout and stderr, the
 * connection and what the caller listed, and nothing else of ours — not
 * even a descriptor someone opened without close-on-exec.  The numbers in
 * between are closed one by one (glibc ignores those not open), the rest
 * at once. */
static int close_the_rest(posix_spawn_file_actions_t *fa, const int *inherit, size_t n, int conn)
{
	int top = conn > 2 ? conn : 2;
	for (size_t i = 0; i < n; i++)
		if (inherit[i] > top)
			top = inherit[i];
	for (int fd = 3; fd < top; fd++) {
		bool keep = fd == conn;
		for (size_t i = 0; !keep && i < n; i++)
			keep = inherit[i] == fd;
		int r = keep ? 0 : posix_spawn_file_actions_addclose(fa, fd);
		if (r != 0)
			return r;
	}
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
	return posix_spawn_file_actions_addclosefrom_np(fa, top + 1);
#else
	return 0; /* no closefrom action: above the listed ones, close-on-exec only */
#endif
}

static int spawn_server(const char *const argv[], const int *inherit, size_t n, unsigned flags,
		int child_in, int child_out, pid_t *ret_pid)
{
	posix_spawn_file_actions_t fa;
	int r = posix_spawn_file_actions_init(&fa);
	if (r != 0)
		return -r;
	char envfd[64], envpid[64];
	size_t nenv = 0;
	while (environ[nenv])
		nenv++;
	char **envp = calloc(nenv + 3, sizeof(char *));
	if (envp == NULL) {
		posix_spawn_file_actions_destroy(&fa);
		return -ENOMEM;
	}
	size_t k = 0;
	for (size_t i = 0; i < nenv; i++)
		if (strncmp(environ[i], "_assuan_", 8) != 0)
			envp[k++] = environ[i];
	snprintf(envpid, sizeof(envpid), "_assuan_pipe_connect_pid=%d", (int)getpid());
	envp[k++] = envpid;
	if (flags & WEFT_ASSUAN_PIPE_FDPASSING) {
		/* The socket keeps its number (dup2 onto itself clears
		 * close-on-exec in posix_spawn) and is named in the env. */
		snprintf(envfd, sizeof(envfd), "_assuan_connection_fd=%d", child_in);
		envp[k++] = envfd;
		r = posix_spawn_file_actions_adddup2(&fa, child_in, child_in);
	} else {
		r = posix_spawn_file_actions_adddup2(&fa, child_in, 0);
		if (r == 0)
			r = posix_spawn_file_actions_adddup2(&fa, child_out, 1);
	}
	for (size_t i = 0; r == 0 && i < n; i++)
		r = posix_spawn_file_actions_adddup2(&fa, inherit[i], inherit[i]);
	if (r == 0)
		r = close_the_rest(&fa, inherit, n, (flags & WEFT_ASSUAN_PIPE_FDPASSING) ? child_in : -1);
	pid_t pid = 0;
	if (r == 0)
		r = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	free(envp);
	if (r != 0)
		return -r;
	*ret_pid = pid;
	return 0;
}

weft_req *weft_assuan_pipe_connect_send(weft_loop *loop, const char *const argv[],
		const int *inherit, size_t n, unsigned flags)
{
	weft_req *req = connect_req_new(loop);
	if (req == NULL)
		return NULL;
	if (argv == NULL || argv[0] == NULL || (n > 0 && inherit == NULL)) {
		weft_req_error(req, EINVAL);
		return req;
	}
	int ours_r, ours_w, theirs_in, theirs_out;
	if (flags & WEFT_ASSUAN_PIPE_FDPASSING) {
		int sv[2];
		if (weft_req_error(req, socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 ? errno : 0))
			return req;
		ours_r = ours_w = sv[0];
		theirs_in = theirs_out = sv[1];
	} else {
		int a[2], b[2];
		if (weft_req_error(req, pipe2(a, O_CLOEXEC) < 0 ? errno : 0))
			return req;
		if (pipe2(b, O_CLOEXEC) < 0) {
			close(a[0]);
			close(a[1]);
			weft_req_error(req, errno);
			return req;
		}
		/* child reads a[0], writes b[1]; we write a[1], read b[0] */
		theirs_in = a[0];
		theirs_out = b[1];
		ours_w = a[1];
		ours_r = b[0];
	}
	pid_t pid = 0;
	int r = spawn_server(argv, inherit, n, flags, theirs_in, theirs_out, &pid);
	close(theirs_in);
	if (theirs_out != theirs_in)
		close(theirs_out);
	if (r < 0) {
		close(ours_r);
		if (ours_w != ours_r)
			close(ours_w);
		weft_req_error(req, r);
		return req;
	}
	struct reaper *rp = NULL;
	int rr = reaper_new(loop, pid, &rp);
	weft_stream *s;
	r = ours_r == ours_w ? weft_stream_new_socket(loop, ours_r, &s) : weft_stream_new_pipe(loop, ours_r, ours_w, &s);
	if (r < 0 || rr < 0) {
		if (r == 0)
			weft_stream_close(s, NULL, NULL);
		/* Nobody will reach this child: stop it and reap it, on the
		 * loop if we can watch it, else here (it was killed: at once). */
		if (rp != NULL) {
			kill(pid, SIGTERM);
			rp->cl = NULL; /* its io watcher holds it: freed at the child's exit */
		} else {
			kill(pid, SIGKILL);
			while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
				;
		}
		/* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): rp lives on in its watcher */
		weft_req_error(req, r < 0 ? r : rr);
		return req;
	}
	connect_attach(req, s);
	struct connect_state *cs = weft_req_state(req);
	if (cs->cl != NULL) {
		cs->cl->reaper = rp;
		rp->cl = cs->cl;
	} else {
		kill(pid, SIGTERM); /* no client: as above */
	}
	return req;
}

/* ---- descriptors ----------------------------------------------------------------- */

static void free_block(weft_req *req, void *data)
{
	weft_req_free(req);
	free(data);
}

struct sendfd_state {
	weft_req *sub;
	char msg[64]; /* borrowed by the stream until sub completes */
};

static void sendfd_cleanup(weft_req *req, weft_req_stage stage)
{
	struct sendfd_state *st = weft_req_state(req);
	(void)stage;
	weft_req_free(st->sub);
	st->sub = NULL;
}

static void sendfd_done(weft_req *sub, void *data)
{
	weft_req *req = data;
	struct sendfd_state *st = weft_req_state(req);
	int err = 0;
	ssize_t r = weft_stream_writev_recv(sub, &err);
	weft_req_free(sub);
	st->sub = NULL;
	if (!weft_req_error(req, r < 0 ? err : 0))
		weft_req_done(req);
}

/* Hand everything gathered so far to the stream's write queue, so what is
 * queued next goes out after it. */
static int pump_hand_over(struct weft__apump *p)
{
	weft__aenc_data_end(&p->out, &p->dcount);
	int r = weft__apump_give_back(p); /* descriptors go by stream requests */
	if (r == 0)
		r = weft__apump_flush(p);
	if (r < 0 || p->out.len == 0)
		return r;
	char *copy = malloc(p->out.len);
	if (copy == NULL)
		return -ENOMEM;
	memcpy(copy, p->out.p, p->out.len);
	struct iovec iov = {copy, p->out.len};
	weft_req *w = weft_stream_writev_queue_send(p->s, NULL, &iov, 1);
	if (w == NULL) {
		free(copy);
		return -ENOMEM;
	}
	weft_req_set_callback(w, free_block, copy);
	p->out.len = 0;
	return 0;
}

weft_req *weft_assuan_client_sendfd_send(weft_assuan_client *cl, int fd)
{
	if (cl == NULL)
		return NULL;
	weft_req *req = weft_req_new(cl->loop, sizeof(struct sendfd_state), "assuan-sendfd");
	if (req == NULL)
		return NULL;
	struct sendfd_state *st = weft_req_state(req);
	weft_req_set_cleanup(req, sendfd_cleanup);
	if (fd < 0) {
		weft_req_error(req, EINVAL);
		return req;
	}
	if (cl->phase != P_READY || cl->io.s == NULL) {
		weft_req_error(req, EPIPE);
		return req;
	}
	/* Only a Unix-domain socket carries descriptors: over TCP sendmsg
	 * takes SCM_RIGHTS and drops it without a word. */
	struct sockaddr_storage ss = {0};
	socklen_t sl = sizeof(ss);
	int sfd = weft_stream_fd(cl->io.s);
	if (sfd >= 0 && (getsockname(sfd, (struct sockaddr *)&ss, &sl) < 0 || ss.ss_family != AF_UNIX)) {
		weft_req_error(req, EOPNOTSUPP);
		return req;
	}
	if (weft_req_error(req, pump_hand_over(&cl->io)))
		return req;
	int len = snprintf(st->msg, sizeof(st->msg), "# descriptor %d is in flight\n", fd);
	st->sub = weft_stream_sendfd_send(cl->io.s, fd, st->msg, (size_t)len);
	if (weft_req_nomem(st->sub, req))
		return req;
	weft_req_set_callback(st->sub, sendfd_done, req);
	return req;
}

int weft_assuan_client_sendfd_recv(weft_req *req, int *perrno)
{
	return weft_req_simple_recv(req, perrno);
}

/* ---- the low-level shape ---------------------------------------------------------- */

int weft_assuan_client_fd(const weft_assuan_client *cl)
{
	if (cl == NULL || cl->io.s == NULL)
		return -EINVAL;
	return weft_stream_fd(cl->io.s);
}

int weft_assuan_client_write_line(weft_assuan_client *cl, const char *line)
{
	if (cl == NULL || line == NULL)
		return -EINVAL;
	return put_line(cl, line);
}

ssize_t weft_assuan_client_read_line(weft_assuan_client *cl, char *buf, size_t size)
{
	if (cl == NULL || buf == NULL || size == 0)
		return -EINVAL;
	if (cl->phase == P_DEAD)
		return -EPIPE;
	if (cl->phase != P_READY || cl->active != NULL || cl->discard > 0)
		return -EAGAIN; /* a transaction reads the lines now */
	/* Look at the next complete line before taking it: one that does not
	 * fit buf stays. */
	const struct weft__ain *in = &cl->io.in;
	if (!in->discarding && in->len > 0) {
		const char *start = in->buf + in->off;
		const char *nl = memchr(start, '\n', in->len);
		if (nl != NULL && (size_t)(nl - start) < WEFT_ASSUAN_LINELENGTH) {
			size_t n = (size_t)(nl - start);
			if (n > 0 && start[n - 1] == '\r')
				n--;
			if (n + 1 > size)
				return -EMSGSIZE;
		}
	}
	char *line;
	size_t len;
	enum weft__aline k = weft__ain_next(&cl->io.in, &line, &len);
	if (k == WEFT__ALINE_TOO_LONG) {
		kill_client(cl, EPROTO);
		return -EPROTO;
	}
	if (k == WEFT__ALINE_NONE) {
		if (cl->io.eof)
			return -EPIPE;
		touch(cl); /* room again: read on */
		return -EAGAIN;
	}
	memcpy(buf, line, len);
	buf[len] = '\0';
	touch(cl);
	return (ssize_t)len;
}
