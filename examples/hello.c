/* hello — weft's loop, a timer and requests, in one small program.
 *
 * A repeating timer ticks; a "read a line from a pipe" request waits for a
 * worker thread that writes into the pipe; a "sleep" request runs inside a
 * queue behind it; a third request is given a timeout it cannot meet.
 * Everything runs on one weft loop and the program ends when no work is
 * left.  Run: ./build/examples/hello
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <weft/weft.h>

/* ---- an operation: read one line from an fd ----------------------------- */

struct readline_state {
	int fd;
	weft_io *io;
	char line[128];
	size_t len;
};

static void readline_cleanup(weft_req *req, weft_req_stage stage)
{
	struct readline_state *s = weft_req_state(req);
	(void)stage;
	weft_io_free(s->io); /* the watcher goes as soon as the request ends */
	s->io = NULL;
}

static void readline_readable(weft_io *io, unsigned revents, void *data)
{
	weft_req *req = data;
	struct readline_state *s = weft_req_state(req);
	(void)io;
	(void)revents;
	char c;
	ssize_t n = read(s->fd, &c, 1);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n < 0) {
		weft_req_error(req, errno);
		return;
	}
	if (n == 0 || c == '\n' || s->len + 1 == sizeof(s->line)) {
		s->line[s->len] = '\0';
		weft_req_done(req);
		return;
	}
	s->line[s->len++] = c;
}

static weft_req *readline_send(weft_loop *loop, int fd)
{
	weft_req *req = weft_req_new(loop, sizeof(struct readline_state), "readline");
	if (req == NULL)
		return NULL;
	struct readline_state *s = weft_req_state(req);
	s->fd = fd;
	weft_req_set_cleanup(req, readline_cleanup);
	int r = weft_io_new(loop, fd, readline_readable, req, &s->io);
	if (r == 0)
		r = weft_io_start(s->io, WEFT_IO_READ);
	weft_req_error(req, r); /* on failure the callback still runs, from the loop */
	return req;
}

static int readline_recv(weft_req *req, const char **line, int *perrno)
{
	int r = weft_req_simple_recv(req, perrno);
	if (r == 0)
		*line = ((struct readline_state *)weft_req_state(req))->line;
	return r;
}

/* ---- an operation: sleep ------------------------------------------------- */

struct sleep_state {
	weft_timer *timer;
};

static void sleep_cleanup(weft_req *req, weft_req_stage stage)
{
	struct sleep_state *s = weft_req_state(req);
	(void)stage;
	weft_timer_free(s->timer);
	s->timer = NULL;
}

static void sleep_fired(weft_timer *timer, void *data)
{
	(void)timer;
	weft_req_done(data);
}

static void sleep_trigger(weft_req *req, void *data)
{
	struct sleep_state *s = weft_req_state(req);
	uint64_t ms = *(const uint64_t *)data;
	int r = weft_timer_new(weft_req_loop(req), sleep_fired, req, &s->timer);
	if (r == 0)
		r = weft_timer_start(s->timer, ms, 0);
	weft_req_error(req, r);
}

/* ---- the program ---------------------------------------------------------- */

struct app {
	weft_loop *loop;
	weft_timer *ticker;
	uint64_t start;
	int ticks;
	int pending;
};

static void say(struct app *app, const char *what)
{
	printf("[%4llu ms] %s\n", (unsigned long long)(weft_loop_now(app->loop) - app->start), what);
}

static void tick(weft_timer *timer, void *data)
{
	struct app *app = data;
	char msg[64];
	snprintf(msg, sizeof(msg), "tick %d", ++app->ticks);
	say(app, msg);
	if (app->pending == 0)
		weft_timer_stop(timer); /* nothing left: let the loop end */
}

static void request_done(weft_req *req, void *data)
{
	struct app *app = data;
	char msg[200];
	const char *line;
	int err = 0;
	if (strcmp(weft_req_name(req), "readline") == 0 && readline_recv(req, &line, &err) == 0)
		snprintf(msg, sizeof(msg), "request readline completed: \"%s\"", line);
	else if (weft_req_simple_recv(req, &err) == 0)
		snprintf(msg, sizeof(msg), "request %s completed", weft_req_name(req));
	else
		snprintf(msg, sizeof(msg), "request %s failed: %s", weft_req_name(req), strerror(err));
	say(app, msg);
	weft_req_free(req);
	app->pending--;
}

static void *worker(void *arg)
{
	int fd = *(int *)arg;
	usleep(120 * 1000);
	const char text[] = "hello from a worker thread\n";
	if (write(fd, text, sizeof(text) - 1) < 0)
		perror("write");
	return NULL;
}

int main(void)
{
	struct app app = {0};
	int r = weft_loop_new(&app.loop);
	if (r < 0) {
		fprintf(stderr, "weft_loop_new: %s\n", strerror(-r));
		return 1;
	}
	app.start = weft_loop_now(app.loop);
	weft_timer_new(app.loop, tick, &app, &app.ticker);
	weft_timer_start(app.ticker, 50, 50);

	int fds[2];
	if (pipe(fds) < 0)
		return 1;
	pthread_t thread;
	pthread_create(&thread, NULL, worker, &fds[1]);

	weft_req *rl = readline_send(app.loop, fds[0]);
	weft_req_set_callback(rl, request_done, &app);
	app.pending++;

	/* Two sleeps through a queue: the second starts when the first ends. */
	weft_queue *queue;
	weft_queue_new(app.loop, "sleeps", &queue);
	static const uint64_t first_ms = 100, second_ms = 80, slow_ms = 10000;
	weft_req *s1 = weft_req_new(app.loop, sizeof(struct sleep_state), "sleep-100ms");
	weft_req *s2 = weft_req_new(app.loop, sizeof(struct sleep_state), "sleep-80ms-queued");
	weft_req *s3 = weft_req_new(app.loop, sizeof(struct sleep_state), "sleep-10s-with-200ms-timeout");
	weft_req *sleeps[] = {s1, s2, s3};
	const uint64_t *durations[] = {&first_ms, &second_ms, &slow_ms};
	for (int i = 0; i < 3; i++) {
		weft_req_set_cleanup(sleeps[i], sleep_cleanup);
		weft_req_set_callback(sleeps[i], request_done, &app);
		weft_queue_add(queue, sleeps[i], sleep_trigger, (void *)durations[i]);
		app.pending++;
	}
	weft_req_set_timeout(s3, 200 + first_ms + second_ms);
	printf("queue length: %zu\n", weft_queue_length(queue));

	r = weft_loop_run(app.loop, WEFT_RUN_DEFAULT);
	say(&app, "loop finished: no work left");

	pthread_join(thread, NULL);
	close(fds[0]);
	close(fds[1]);
	weft_queue_free(queue);
	weft_timer_free(app.ticker);
	r = weft_loop_free(app.loop);
	if (r < 0) {
		fprintf(stderr, "weft_loop_free: %s\n", strerror(-r));
		return 1;
	}
	return 0;
}
