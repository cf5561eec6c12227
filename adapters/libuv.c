/* weft on libuv: weft's external backend, with a uv_poll_t per fd and a
 * uv_timer_t for its deadline.  A uv_prepare_t, referenced only while weft
 * has work, makes uv_run's notion of "alive" include weft's. */
#include <errno.h>
#include <stdlib.h>

#include <uv.h>

#include <weft/adapters.h>

struct uv_adapter {
	uv_loop_t *uv;
	weft_loop *loop;
	uv_timer_t timer;
	uv_prepare_t keepalive;
	int closing; /* handles whose close callback is still due */
};

struct uv_fd {
	uv_poll_t poll;
	struct uv_adapter *ad;
	int fd;
};

static void sync_alive(struct uv_adapter *ad)
{
	if (ad->loop != NULL && weft_loop_alive(ad->loop))
		uv_ref((uv_handle_t *)&ad->keepalive);
	else
		uv_unref((uv_handle_t *)&ad->keepalive);
}

static void on_prepare(uv_prepare_t *p)
{
	sync_alive(p->data);
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
	sync_alive(ad);
}

static void on_timer(uv_timer_t *t)
{
	struct uv_adapter *ad = t->data;
	weft_loop_process_timeout(ad->loop);
	sync_alive(ad);
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
		sync_alive(ad);
		return 0;
	}
	if (f == NULL) {
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
	int uvev = UV_DISCONNECT;
	if (events & WEFT_IO_READ)
		uvev |= UV_READABLE;
	if (events & WEFT_IO_WRITE)
		uvev |= UV_WRITABLE;
	int r = uv_poll_start(&f->poll, uvev, on_poll);
	sync_alive(ad);
	return r;
}

static void uva_timer(weft_loop *loop, int64_t timeout_ms, void *user)
{
	struct uv_adapter *ad = user;
	(void)loop;
	if (timeout_ms < 0)
		uv_timer_stop(&ad->timer);
	else
		uv_timer_start(&ad->timer, on_timer, (uint64_t)timeout_ms, 0);
	sync_alive(ad);
}

static void free_adapter(uv_handle_t *h)
{
	struct uv_adapter *ad = h->data;
	if (--ad->closing == 0)
		free(ad);
}

static void uva_release(weft_loop *loop, void *user)
{
	struct uv_adapter *ad = user;
	(void)loop;
	ad->loop = NULL;
	ad->closing = 2;
	uv_close((uv_handle_t *)&ad->timer, free_adapter);
	uv_close((uv_handle_t *)&ad->keepalive, free_adapter);
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
	ad->timer.data = ad;
	uv_unref((uv_handle_t *)&ad->timer);
	uv_prepare_init(uv, &ad->keepalive);
	ad->keepalive.data = ad;
	uv_prepare_start(&ad->keepalive, on_prepare);
	uv_unref((uv_handle_t *)&ad->keepalive);
	static const weft_loop_ops ops = {uva_watch, uva_timer, uva_release};
	int r = weft_loop_new_external(&ops, ad, &ad->loop);
	if (r < 0) {
		ad->closing = 2;
		uv_close((uv_handle_t *)&ad->timer, free_adapter);
		uv_close((uv_handle_t *)&ad->keepalive, free_adapter);
		return r;
	}
	sync_alive(ad);
	*ret_loop = ad->loop;
	return 0;
}
