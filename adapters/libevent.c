/* weft on libevent: weft's external backend, with one persistent event per
 * watched fd and one timer event for its deadline. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include <event2/event.h>

#include <weft/adapters.h>

struct ev_adapter {
	struct event_base *base;
	weft_loop *loop;
	struct event *timer;
};

struct ev_fd {
	struct event *ev;
	struct ev_adapter *ad;
	int fd;
};

static void on_event(evutil_socket_t fd, short what, void *arg)
{
	struct ev_fd *f = arg;
	unsigned rev = 0;
	if (what & EV_READ)
		rev |= WEFT_IO_READ;
	if (what & EV_WRITE)
		rev |= WEFT_IO_WRITE;
	weft_loop_process_fd(f->ad->loop, (int)fd, rev);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct ev_adapter *ad = arg;
	(void)fd;
	(void)what;
	weft_loop_process_timeout(ad->loop);
}

static int eva_watch(weft_loop *loop, int fd, unsigned events, void *fd_data, void *user)
{
	struct ev_adapter *ad = user;
	struct ev_fd *f = fd_data;
	if (events == 0) {
		if (f != NULL) {
			event_free(f->ev);
			free(f);
		}
		return 0;
	}
	short flags = EV_PERSIST;
	if (events & WEFT_IO_READ)
		flags |= EV_READ;
	if (events & WEFT_IO_WRITE)
		flags |= EV_WRITE;
	bool fresh = f == NULL;
	if (fresh) {
		f = calloc(1, sizeof(*f));
		if (f == NULL)
			return -ENOMEM;
		f->ad = ad;
		f->fd = fd;
		f->ev = event_new(ad->base, fd, flags, on_event, f);
		if (f->ev == NULL) {
			free(f);
			return -ENOMEM;
		}
		weft_loop_set_fd_data(loop, fd, f);
	} else {
		/* Changing the event set of a libevent event: delete, re-assign. */
		event_del(f->ev);
		if (event_assign(f->ev, ad->base, fd, flags, on_event, f) < 0)
			return -EINVAL;
	}
	errno = 0;
	if (event_add(f->ev, NULL) == 0)
		return 0;
	int r = errno ? -errno : -EINVAL; /* epoll_ctl's reason, e.g. EPERM */
	if (fresh) {
		/* weft forgets the fd when watch fails: so do we. */
		event_free(f->ev);
		free(f);
	}
	return r;
}

static void eva_timer(weft_loop *loop, int64_t timeout_ms, void *user)
{
	struct ev_adapter *ad = user;
	(void)loop;
	if (timeout_ms < 0) {
		evtimer_del(ad->timer);
		return;
	}
	struct timeval tv = {(time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000};
	evtimer_add(ad->timer, &tv);
}

static void eva_release(weft_loop *loop, void *user)
{
	struct ev_adapter *ad = user;
	(void)loop;
	event_free(ad->timer);
	free(ad);
}

int weft_loop_new_libevent(struct event_base *base, weft_loop **ret_loop)
{
	if (base == NULL || ret_loop == NULL)
		return -EINVAL;
	struct ev_adapter *ad = calloc(1, sizeof(*ad));
	if (ad == NULL)
		return -ENOMEM;
	ad->base = base;
	ad->timer = evtimer_new(base, on_timer, ad);
	if (ad->timer == NULL) {
		free(ad);
		return -ENOMEM;
	}
	static const weft_loop_ops ops = {.watch = eva_watch, .timer = eva_timer, .release = eva_release};
	int r = weft_loop_new_external(&ops, ad, &ad->loop);
	if (r < 0) {
		event_free(ad->timer);
		free(ad);
		return r;
	}
	*ret_loop = ad->loop;
	return 0;
}
