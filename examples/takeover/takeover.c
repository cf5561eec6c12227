/* takeover — a TCP server that hands its listening socket to its successor
 * with no connection refused or dropped (the use case of Facebook's
 * libafdt), over weft fdpass.
 *
 *   takeover --listen tcp:127.0.0.1:0 --control unix:@NAME [--port-file F]
 *       Serve on a fresh listening socket (F receives the bound port).
 *   takeover --takeover unix:@NAME [--control unix:@NAME]
 *       Take the listening socket over from the server at that control
 *       address: the command an operator (or a deploy tool) runs.
 *
 * SIGUSR2 makes a server start its own successor (this program, with
 * --takeover); SIGTERM or SIGINT make it stop accepting and exit once its
 * connections are done.
 *
 * The handover, on the control socket (a weft_fdpass_server):
 *   successor -> "takeover"          old -> "listener" + the listening fd
 *   (the successor accepts from now on; both processes hold the socket, so
 *    connections wait in its backlog whoever accepts them)
 *   successor -> "done"              old -> "bye"; the old server closes its
 *   copy of the listening socket and its control server, finishes the
 *   connections it accepted and exits 0.  The successor then opens the
 *   control address itself, ready for the next handover.
 *
 * The service: read a line, answer "pong PID\n", close. */
#include <weft/weft.h>
#include <weft/fdpass.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct app {
	weft_loop *loop;
	int lfd;                  /* the listening TCP socket (-1: handed over) */
	weft_io *accept_io;
	weft_fdpass_server *ctrl; /* the control server */
	weft_addr ctrl_addr;
	const char *ctrl_text;
	weft_timer *retry;        /* successor: opening the control address */
	int retries;
	weft_signal *sigs[3];
	size_t conns;             /* connections being served */
	bool spawned;             /* a successor was started */
	bool leaving;             /* handed over or told to stop: exit when idle */
	int status;
};

struct conn {
	struct app *app;
	weft_stream *s;
	char buf[256];
	size_t len;
	char reply[64];
	struct iovec iov;
};

static void maybe_exit(struct app *a)
{
	if (a->leaving && a->conns == 0 && a->ctrl == NULL)
		weft_loop_stop(a->loop);
}

/* ---- the service ----------------------------------------------------------- */

static void conn_closed(void *data)
{
	struct conn *c = data;
	struct app *a = c->app;
	free(c);
	a->conns--;
	maybe_exit(a);
}

static void conn_done(struct conn *c)
{
	weft_stream_close(c->s, conn_closed, c);
}

static void reply_written(weft_req *req, void *data)
{
	weft_req_free(req);
	conn_done(data);
}

static void line_read(weft_req *req, void *data)
{
	struct conn *c = data;
	ssize_t n = weft_stream_read_recv(req, NULL);
	weft_req_free(req);
	if (n <= 0) {
		conn_done(c);
		return;
	}
	c->len += (size_t)n;
	if (memchr(c->buf, '\n', c->len) == NULL && c->len < sizeof(c->buf)) {
		req = weft_stream_read_send(c->s, c->buf + c->len, sizeof(c->buf) - c->len);
		if (req == NULL) {
			conn_done(c);
			return;
		}
		weft_req_set_callback(req, line_read, c);
		return;
	}
	int len = snprintf(c->reply, sizeof(c->reply), "pong %d\n", (int)getpid());
	c->iov = (struct iovec){c->reply, (size_t)len};
	req = weft_stream_writev_queue_send(c->s, NULL, &c->iov, 1);
	if (req == NULL) {
		conn_done(c);
		return;
	}
	weft_req_set_callback(req, reply_written, c);
}

static void serve(struct app *a, int fd)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		close(fd);
		return;
	}
	c->app = a;
	if (weft_stream_new_socket(a->loop, fd, &c->s) < 0) {
		free(c);
		return;
	}
	a->conns++;
	weft_req *req = weft_stream_read_send(c->s, c->buf, sizeof(c->buf));
	if (req == NULL) {
		conn_done(c);
		return;
	}
	weft_req_set_callback(req, line_read, c);
}

static void accept_ready(weft_io *io, unsigned revents, void *data)
{
	struct app *a = data;
	(void)io;
	(void)revents;
	for (int i = 0; i < 64 && a->lfd >= 0; i++) {
		int fd = accept4(a->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return; /* EAGAIN; or an error to retry on the next wake-up */
		serve(a, fd);
	}
}

static int start_accepting(struct app *a, int lfd)
{
	a->lfd = lfd;
	int r = weft_io_new(a->loop, lfd, accept_ready, a, &a->accept_io);
	if (r == 0)
		r = weft_io_start(a->accept_io, WEFT_IO_READ);
	return r;
}

static void stop_accepting(struct app *a)
{
	weft_io_free(a->accept_io); /* out of the loop before the fd closes */
	a->accept_io = NULL;
	if (a->lfd >= 0)
		close(a->lfd);
	a->lfd = -1;
}

/* ---- the old side: the control server ------------------------------------ */

static void ctrl_closed(void *data)
{
	struct app *a = data;
	a->ctrl = NULL;
	maybe_exit(a);
}

static void ctrl_request(weft_fdpass_server *srv, weft_fdpass_call *call, const weft_fdpass_msg *req,
		const weft_fdpass_peer *peer, void *data)
{
	struct app *a = data;
	(void)peer;
	if (req->len == 8 && memcmp(req->buf, "takeover", 8) == 0 && a->lfd >= 0) {
		/* Lent: we keep our copy (and keep accepting) until "done". */
		weft_fdpass_call_reply(call, "listener", 8, &a->lfd, 1, NULL);
	} else if (req->len == 4 && memcmp(req->buf, "done", 4) == 0) {
		weft_fdpass_call_reply(call, "bye", 3, NULL, 0, NULL);
		stop_accepting(a);
		a->leaving = true;
		weft_fdpass_server_close(srv, ctrl_closed, a); /* "bye" still goes out */
	} else {
		weft_fdpass_call_fail(call, EINVAL);
	}
}

static int open_control(struct app *a)
{
	weft_fdpass_error e;
	int r = weft_fdpass_server_new(a->loop, &a->ctrl_addr, &(weft_fdpass_server_opts){.replace_stale = true},
			ctrl_request, a, &a->ctrl, &e);
	if (r < 0 && r != -EADDRINUSE)
		fprintf(stderr, "takeover: control %s: %s\n", a->ctrl_text, e.message);
	return r;
}

/* ---- the successor ------------------------------------------------------------- */

static void control_retry(weft_timer *t, void *data)
{
	struct app *a = data;
	/* The old server closed its control socket before answering "bye";
	 * retry briefly in case a path socket is still being removed. */
	if (open_control(a) == 0 || ++a->retries > 500) {
		weft_timer_free(t);
		a->retry = NULL;
	}
}

static void done_answered(weft_req *req, void *data)
{
	weft_fdpass_client *c = data;
	if (weft_fdpass_request_recv(req, NULL, NULL, NULL) < 0)
		fprintf(stderr, "takeover: the old server did not confirm; serving anyway\n");
	weft_req_free(req);
	weft_fdpass_client_free(c);
}

struct successor {
	struct app *a;
	weft_fdpass_client *c;
};

static void listener_received(weft_req *req, void *data)
{
	struct successor *s = data;
	struct app *a = s->a;
	weft_fdpass_msg m;
	weft_fdpass_error e;
	int r = weft_fdpass_request_recv(req, &m, &e, NULL);
	weft_req_free(req);
	if (r < 0 || m.nfds != 1) {
		fprintf(stderr, "takeover: no listener: %s\n", r < 0 ? e.message : "no descriptor");
		if (r == 0)
			weft_fdpass_msg_clear(&m);
		a->status = 1;
		weft_fdpass_client_free(s->c);
		weft_loop_stop(a->loop);
		return;
	}
	int lfd = m.fds[0];
	m.fds[0] = -1; /* taken */
	weft_fdpass_msg_clear(&m);
	if (start_accepting(a, lfd) < 0) {
		a->status = 1;
		weft_loop_stop(a->loop);
		return;
	}
	/* Accepting: now the old server may stop. */
	req = weft_fdpass_request_send(s->c, "done", 4, NULL, 0);
	if (req != NULL)
		weft_req_set_callback(req, done_answered, s->c);
	else
		weft_fdpass_client_free(s->c);
	if (a->ctrl_text != NULL && weft_timer_new(a->loop, control_retry, a, &a->retry) == 0)
		weft_timer_start(a->retry, 10, 10);
}

static void connected(weft_req *req, void *data)
{
	struct successor *s = data;
	int r = weft_fdpass_connect_recv(req, &s->c, NULL);
	weft_req_free(req);
	if (r < 0) {
		fprintf(stderr, "takeover: connect: %s\n", strerror(-r));
		s->a->status = 1;
		weft_loop_stop(s->a->loop);
		return;
	}
	weft_fdpass_client_set_timeout(s->c, 5000);
	req = weft_fdpass_request_send(s->c, "takeover", 8, NULL, 0);
	if (req == NULL) {
		s->a->status = 1;
		weft_loop_stop(s->a->loop);
		return;
	}
	weft_req_set_callback(req, listener_received, s);
}

/* ---- signals and main ------------------------------------------------------------- */

static void spawn_successor(struct app *a)
{
	pid_t pid = fork();
	if (pid == 0) {
		/* The signal mask is inherited: SIGTERM/SIGUSR2 stay blocked until
		 * the successor's own watchers take them (signalfd). */
		execl("/proc/self/exe", "takeover", "--takeover", a->ctrl_text, "--control", a->ctrl_text,
				(char *)NULL);
		_exit(127);
	}
	if (pid < 0)
		fprintf(stderr, "takeover: fork: %s\n", strerror(errno));
}

static void on_signal(weft_signal *sig, int signum, void *data)
{
	struct app *a = data;
	(void)sig;
	if (signum == SIGUSR2) {
		if (!a->leaving && !a->spawned && a->ctrl != NULL) {
			a->spawned = true;
			spawn_successor(a);
		}
		return;
	}
	if (signum == SIGTERM || signum == SIGINT) {
		stop_accepting(a);
		a->leaving = true;
		if (a->ctrl) {
			weft_fdpass_server_close(a->ctrl, ctrl_closed, a);
			return;
		}
		maybe_exit(a);
	}
}

static int listen_tcp(const char *text, const char *port_file)
{
	weft_addr addr;
	if (weft_addr_parse(text, &addr) < 0 || addr.kind != WEFT_ADDR_TCP)
		return -EINVAL;
	int fd = socket(addr.u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, &addr.u.sa, addr.len) < 0 || listen(fd, SOMAXCONN) < 0) {
		int err = -errno;
		if (fd >= 0)
			close(fd);
		return err;
	}
	if (port_file != NULL) {
		weft_addr bound;
		socklen_t len = sizeof(bound.u.ss);
		getsockname(fd, &bound.u.sa, &len);
		weft_addr_from_sockaddr(&bound.u.sa, len, WEFT_ADDR_TCP, &bound);
		char tmp[4096];
		snprintf(tmp, sizeof(tmp), "%s.tmp", port_file);
		FILE *f = fopen(tmp, "w");
		if (f == NULL || fprintf(f, "%d\n", weft_addr_port(&bound)) < 0 || fclose(f) != 0 ||
		    rename(tmp, port_file) < 0) {
			close(fd);
			return -EIO;
		}
	}
	return fd;
}

int main(int argc, char **argv)
{
	const char *listen_text = NULL, *takeover_text = NULL, *port_file = NULL;
	struct app a = {.lfd = -1};
	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--listen") == 0)
			listen_text = argv[i + 1];
		else if (strcmp(argv[i], "--control") == 0)
			a.ctrl_text = argv[i + 1];
		else if (strcmp(argv[i], "--takeover") == 0)
			takeover_text = argv[i + 1];
		else if (strcmp(argv[i], "--port-file") == 0)
			port_file = argv[i + 1];
	}
	if ((listen_text == NULL) == (takeover_text == NULL) || (listen_text && a.ctrl_text == NULL) ||
	    (a.ctrl_text && weft_addr_parse(a.ctrl_text, &a.ctrl_addr) < 0)) {
		fprintf(stderr, "usage: takeover --listen tcp:HOST:PORT --control unix:ADDR [--port-file F]\n"
		                "       takeover --takeover unix:ADDR [--control unix:ADDR]\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (weft_loop_new(&a.loop) < 0)
		return 1;
	static const int signums[3] = {SIGUSR2, SIGTERM, SIGINT};
	for (int i = 0; i < 3; i++)
		if (weft_signal_new(a.loop, on_signal, &a, &a.sigs[i]) < 0 || weft_signal_start(a.sigs[i], signums[i]) < 0)
			return 1;

	struct successor succ = {.a = &a};
	if (listen_text != NULL) {
		int fd = listen_tcp(listen_text, port_file);
		if (fd < 0) {
			fprintf(stderr, "takeover: listen %s: %s\n", listen_text, strerror(-fd));
			return 1;
		}
		if (start_accepting(&a, fd) < 0 || open_control(&a) < 0)
			return 1;
	} else {
		weft_addr from;
		if (weft_addr_parse(takeover_text, &from) < 0)
			return 2;
		weft_req *req = weft_fdpass_connect_send(a.loop, &from);
		if (req == NULL)
			return 1;
		weft_req_set_callback(req, connected, &succ);
	}

	weft_loop_run(a.loop, WEFT_RUN_DEFAULT);

	stop_accepting(&a);
	weft_timer_free(a.retry);
	for (int i = 0; i < 3; i++)
		weft_signal_free(a.sigs[i]);
	for (int i = 0; i < 10; i++)
		weft_loop_run(a.loop, WEFT_RUN_NOWAIT);
	weft_loop_free(a.loop);
	return a.status;
}
