/* weft on libuv: weft's external backend, with a uv_poll_t per fd and a
 * uv_timer_t for its deadline.  A deadline of "now" goes to a uv_idle_t
 * instead: libuv before 1.46 runs a zero timer restarted from its own
 * callback again at once (libuv#4245), which would let a chain of deferred
 * calls starve I/O.  A uv_prepare_t, referenced exactly while weft has work
 * (ops.alive), makes uv_run's notion of "alive" include weft's. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include <uv.h>

#include <weft/adapters.h>

struct uv_adapter {
	uv_loop_t *uv;
	weft_loop *loop;
	uv_timer_t timer;
	uv_idle_t soon;
	uv_prepare_t keepalive;
	int closing; /* handles whose close callback is still due */
};

struct uv_fd {
	uv_poll_t poll;
	struct uv_adapter *ad;
	int fd;
};

static void uva_alive(weft_loop *loop, bool alive, void *user)
{
	struct uv_adapter *ad = user;
	(void)loop;
	if (alive)
		uv_ref((uv_handle_t *)&ad->keepalive);
	else
		uv_unref((uv_handle_t *)&ad->keepalive);
}

static void on_prepare(uv_prepare_t *p)
{
	(void)p; /* only there to be referenced or not */
}

static void on_poll(uv_poll_t *p, int status, int events)
{
	struct uv_fd *f = p->data;
	struct uv_adapter *ad = f->ad;
	unsigned rev = 0;
	if (status < 0)
		rev |= WEFT_IO_ERR;
	if (events & UV_READABLE)
		rev |= WEFT_IO_READ;
	if (events & UV_WRITABLE)
		rev |= WEFT_IO_WRITE;
	if (events & UV_DISCONNECT)
		rev |= WEFT_IO_HUP;
	weft_loop_process_fd(ad->loop, f->fd, rev);
}

static void on_timer(uv_timer_t *t)
{
	struct uv_adapter *ad = t->data;
	weft_loop_process_timeout(ad->loop);
}

static void on_soon(uv_idle_t *i)
{
	struct uv_adapter *ad = i->data;
	uv_idle_stop(i);
	weft_loop_process_timeout(ad->loop);
}

static void free_fd(uv_handle_t *h)
{
	free(h->data);
}

static int uva_watch(weft_loop *loop, int fd, unsigned events, void *fd_data, void *user)
{
	struct uv_adapter *ad = user;
	struct uv_fd *f = fd_data;
	if (events == 0) {
		if (f != NULL) {
			uv_poll_stop(&f->poll);
			uv_close((uv_handle_t *)&f->poll, free_fd);
		}
		return 0;
	}
	bool fresh = f == NULL;
	if (fresh) {
		f = calloc(1, sizeof(*f));
		if (f == NULL)
			return -ENOMEM;
		int r = uv_poll_init(ad->uv, &f->poll, fd);
		if (r < 0) {
			free(f);
			return r; /* libuv errors are negative errno values on Unix */
		}
		f->poll.data = f;
		f->ad = ad;
		f->fd = fd;
		uv_unref((uv_handle_t *)&f->poll);
		weft_loop_set_fd_data(loop, fd, f);
	}
	/* No UV_DISCONNECT: EPOLLRDHUP would keep firing for a write-only
	 * watcher after the peer's SHUT_WR.  Real hang-ups and errors still
	 * arrive with the READ/WRITE bits. */
	int uvev = 0;
	if (events & WEFT_IO_READ)
		uvev |= UV_READABLE;
	if (events & WEFT_IO_WRITE)
		uvev |= UV_WRITABLE;
	int r = uv_poll_start(&f->poll, uvev, on_poll);
	if (r < 0 && fresh)
		uv_close((uv_handle_t *)&f->poll, free_fd); /* weft forgets the fd */
	return r;
}

static void uva_timer(weft_loop *loop, int64_t timeout_ms, void *user)
{
	struct uv_adapter *ad = user;
	(void)loop;
	if (timeout_ms == 0) {
		uv_timer_stop(&ad->timer);
		uv_idle_start(&ad->soon, on_soon);
	} else {
		uv_idle_stop(&ad->soon);
		if (timeout_ms < 0)
			uv_timer_stop(&ad->timer);
		else
			uv_timer_start(&ad->timer, on_timer, (uint64_t)timeout_ms, 0);
	}
}

static void free_adapter(uv_handle_t *h)
{
	struct uv_adapter *ad = h->data;
	if (--ad->closing == 0)
		free(ad);
}

/* The adapter's memory goes with the last of its handles' close callbacks. */
static void close_adapter(struct uv_adapter *ad)
{
	ad->loop = NULL;
	ad->closing = 3;
	uv_close((uv_handle_t *)&ad->timer, free_adapter);
	uv_close((uv_handle_t *)&ad->soon, free_adapter);
	uv_close((uv_handle_t *)&ad->keepalive, free_adapter);
}

static void uva_release(weft_loop *loop, void *user)
{
	(void)loop;
	close_adapter(user);
}

int weft_loop_new_libuv(struct uv_loop_s *uv, weft_loop **ret_loop)
{
	if (uv == NULL || ret_loop == NULL)
		return -EINVAL;
	struct uv_adapter *ad = calloc(1, sizeof(*ad));
	if (ad == NULL)
		return -ENOMEM;
	ad->uv = uv;
	uv_timer_init(uv, &ad->timer);
	uv_idle_init(uv, &ad->soon);
	uv_prepare_init(uv, &ad->keepalive);
	ad->timer.data = ad->soon.data = ad->keepalive.data = ad;
	uv_unref((uv_handle_t *)&ad->timer);
	uv_unref((uv_handle_t *)&ad->soon);
	uv_prepare_start(&ad->keepalive, on_prepare);
	uv_unref((uv_handle_t *)&ad->keepalive);
	static const weft_loop_ops ops = {
		.watch = uva_watch, .timer = uva_timer, .release = uva_release, .alive = uva_alive};
	int r = weft_loop_new_external(&ops, ad, &ad->loop);
	if (r < 0) {
		close_adapter(ad);
		return r;
	}
	*ret_loop = ad->loop;
	return 0;
}
