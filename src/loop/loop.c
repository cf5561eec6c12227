/* The loop core: handles, fd slots, the timer heap, deferred calls, the
 * thread-safe wake-up and signal watchers.  Backends (epoll.c, external.c)
 * only move interest and readiness between this core and the kernel or the
 * embedding program. */
#include "loop-private.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

/* ---- time ---------------------------------------------------------------- */

uint64_t weft__clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

uint64_t weft_loop_now(const weft_loop *loop)
{
	if (loop == NULL)
		return 0;
	if (loop->now_stale) {
		/* An iteration with no timers skipped the clock: read it now (the
		 * loop object is the caller's, only the pointer is const). */
		weft_loop *l = (weft_loop *)loop;
		l->now_ns = weft__clock_ns();
		l->now_stale = false;
	}
	return loop->now_ns / WEFT__NS_PER_MS;
}

void weft_loop_update_time(weft_loop *loop)
{
	if (loop) {
		loop->now_ns = weft__clock_ns();
		loop->now_stale = false;
	}
}

/* ---- recycled blocks ---------------------------------------------------- */

void *weft__block_get(weft_loop *loop, size_t size)
{
	if (size > WEFT__BLOCK_SIZE)
		return malloc(size);
	if (loop->nblocks == 0)
		return malloc(WEFT__BLOCK_SIZE);
	return loop->blocks[--loop->nblocks];
}

void *weft__block_alloc(weft_loop *loop, size_t size)
{
	void *p = weft__block_get(loop, size);
	if (p != NULL)
		memset(p, 0, size);
	return p;
}

void weft__block_free(weft_loop *loop, void *p, size_t size)
{
	if (p != NULL && size <= WEFT__BLOCK_SIZE && loop->nblocks < WEFT__BLOCK_CACHE)
		loop->blocks[loop->nblocks++] = p;
	else
		free(p);
}

/* ---- handles ------------------------------------------------------------- */

void weft__handle_init(struct weft__handle *h, weft_loop *loop, bool internal)
{
	h->loop = loop;
	h->active = false;
	h->ref = !internal;
	h->internal = internal;
	if (!internal)
		loop->nhandles++;
}

/* One more or one fewer active, referenced handle; an external loop hears
 * when the count crosses zero. */
static void count_active(weft_loop *loop, bool more)
{
	if (more)
		loop->active++;
	else
		loop->active--;
	if (loop->ops.alive != NULL && loop->active == (more ? 1u : 0u))
		loop->ops.alive(loop, more, loop->user);
}

void weft__handle_set_active(struct weft__handle *h, bool active)
{
	if (h->active == active)
		return;
	h->active = active;
	if (h->ref)
		count_active(h->loop, active);
}

void weft__handle_set_ref(struct weft__handle *h, bool ref)
{
	if (h->ref == ref)
		return;
	h->ref = ref;
	if (h->active)
		count_active(h->loop, ref);
}

void weft__handle_fini(struct weft__handle *h)
{
	weft__handle_set_active(h, false);
	if (!h->internal)
		h->loop->nhandles--;
}

bool weft_loop_alive(const weft_loop *loop)
{
	return loop != NULL && loop->active > 0;
}

/* ---- loop creation ------------------------------------------------------- */

static void wake_cb(weft_io *io, unsigned revents, void *data);

/* weft_io_new, and the loop's own watchers (internal: not counted as user
 * handles, not keeping the loop alive). */
static int io_alloc(weft_loop *loop, int fd, weft_io_cb cb, void *data, bool internal, weft_io **ret)
{
	weft_io *io = calloc(1, sizeof(*io));
	if (io == NULL)
		return -ENOMEM;
	weft__handle_init(&io->h, loop, internal);
	io->fd = fd;
	io->cb = cb;
	io->data = data;
	*ret = io;
	return 0;
}

static int loop_alloc(enum weft__backend_kind kind, weft_loop **ret)
{
	weft_loop *loop = calloc(1, sizeof(*loop));
	if (loop == NULL)
		return -ENOMEM;
	loop->kind = kind;
	loop->epfd = -1;
	loop->wake_fd = -1;
	loop->sig_fd = -1;
	weft__list_init(&loop->defers);
	weft__list_init(&loop->asyncs);
	weft__list_init(&loop->signals);
	sigemptyset(&loop->sigset);
	loop->reported_deadline = WEFT__NO_DEADLINE;
	loop->now_ns = weft__clock_ns();
	*ret = loop;
	return 0;
}

static void loop_release(weft_loop *loop)
{
	if (loop->wake_io) {
		weft_io_stop(loop->wake_io);
		free(loop->wake_io);
	}
	if (loop->wake_fd >= 0)
		close(loop->wake_fd);
	if (loop->sig_io) {
		weft_io_stop(loop->sig_io);
		free(loop->sig_io);
	}
	if (loop->sig_fd >= 0)
		close(loop->sig_fd);
	if (loop->kind == WEFT__BACKEND_EPOLL)
		weft__epoll_fini(loop);
	if (loop->ops.release)
		loop->ops.release(loop, loop->user);
	while (loop->nblocks > 0)
		free(loop->blocks[--loop->nblocks]);
	free(loop->slots);
	free(loop->heap);
	free(loop);
}

/* Both backends get the wake-up eventfd at creation, so weft_loop_wakeup is
 * safe from another thread at any time. */
static int loop_finish_setup(weft_loop *loop)
{
	loop->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (loop->wake_fd < 0)
		return -errno;
	int r = io_alloc(loop, loop->wake_fd, wake_cb, loop, true, &loop->wake_io);
	if (r < 0)
		return r;
	return weft_io_start(loop->wake_io, WEFT_IO_READ);
}

int weft_loop_new(weft_loop **ret_loop)
{
	if (ret_loop == NULL)
		return -EINVAL;
	weft_loop *loop;
	int r = loop_alloc(WEFT__BACKEND_EPOLL, &loop);
	if (r < 0)
		return r;
	r = weft__epoll_init(loop);
	if (r == 0)
		r = loop_finish_setup(loop);
	if (r < 0) {
		loop_release(loop);
		return r;
	}
	*ret_loop = loop;
	return 0;
}

int weft_loop_new_external(const weft_loop_ops *ops, void *user, weft_loop **ret_loop)
{
	if (ops == NULL || ops->watch == NULL || ops->timer == NULL || ret_loop == NULL)
		return -EINVAL;
	weft_loop *loop;
	int r = loop_alloc(WEFT__BACKEND_EXTERNAL, &loop);
	if (r < 0)
		return r;
	loop->ops = *ops;
	loop->user = user;
	r = loop_finish_setup(loop);
	if (r < 0) {
		loop->ops.release = NULL; /* the caller still owns what user holds */
		loop_release(loop);
		return r;
	}
	*ret_loop = loop;
	return 0;
}

int weft_loop_free(weft_loop *loop)
{
	if (loop == NULL)
		return 0;
	if (loop->nhandles > 0 || loop->running || loop->dispatching > 0)
		return -EBUSY;
	/* What is left in the deferred list are weft_loop_call_soon nodes (any
	 * other scheduled defer belongs to a live handle, refused above). */
	for (struct weft__list *n = loop->defers.next; n != &loop->defers;) {
		weft_defer *d = weft__container_of(n, weft_defer, link);
		n = n->next; /* the whole list goes: no need to unlink */
		if (d->owned_by_loop)
			free(d);
	}
	weft__list_init(&loop->defers);
	loop_release(loop);
	return 0;
}

/* ---- fd slots and I/O watchers ------------------------------------------- */

static int slots_reserve(weft_loop *loop, int fd)
{
	if ((size_t)fd < loop->nslots)
		return 0;
	size_t n = loop->nslots ? loop->nslots : 64;
	while (n <= (size_t)fd)
		n *= 2;
	struct weft__slot *s = realloc(loop->slots, n * sizeof(*s));
	if (s == NULL)
		return -ENOMEM;
	memset(s + loop->nslots, 0, (n - loop->nslots) * sizeof(*s));
	loop->slots = s;
	loop->nslots = n;
	return 0;
}

static int backend_ctl(weft_loop *loop, int fd, unsigned old_events, unsigned new_events)
{
	if (loop->kind == WEFT__BACKEND_EPOLL)
		return weft__epoll_ctl(loop, fd, old_events, new_events);
	return weft__external_ctl(loop, fd, old_events, new_events);
}

int weft_io_new(weft_loop *loop, int fd, weft_io_cb cb, void *data, weft_io **ret_io)
{
	if (loop == NULL || fd < 0 || cb == NULL || ret_io == NULL)
		return -EINVAL;
	return io_alloc(loop, fd, cb, data, false, ret_io);
}

int weft_io_start(weft_io *io, unsigned events)
{
	if (io == NULL || (events & ~(unsigned)(WEFT_IO_READ | WEFT_IO_WRITE)) != 0)
		return -EINVAL;
	if (events == 0) {
		weft_io_stop(io);
		return 0;
	}
	weft_loop *loop = io->h.loop;
	if (events == io->events)
		return 0;
	int r = slots_reserve(loop, io->fd);
	if (r < 0)
		return r;
	struct weft__slot *slot = &loop->slots[io->fd];
	if (slot->io != NULL && slot->io != io)
		return -EEXIST;
	bool fresh = slot->io == NULL;
	if (fresh) {
		/* Claimed before the backend hears of it, so an external watch
		 * callback may attach its fd_data at once. */
		slot->gen++;
		slot->io = io;
	}
	r = backend_ctl(loop, io->fd, io->events, events);
	if (r < 0) {
		if (fresh) {
			slot->io = NULL;
			slot->fd_data = NULL;
		}
		return r;
	}
	io->events = events;
	weft__handle_set_active(&io->h, true);
	return 0;
}

int weft_io_modify(weft_io *io, unsigned events)
{
	return weft_io_start(io, events);
}

void weft_io_stop(weft_io *io)
{
	if (io == NULL || io->events == 0)
		return;
	weft_loop *loop = io->h.loop;
	struct weft__slot *slot = &loop->slots[io->fd];
	(void)backend_ctl(loop, io->fd, io->events, 0);
	slot->io = NULL; /* events collected before the stop find no watcher */
	slot->fd_data = NULL;
	io->events = 0;
	weft__handle_set_active(&io->h, false);
}

unsigned weft_io_events(const weft_io *io)
{
	return io ? io->events : 0;
}

int weft_io_fd(const weft_io *io)
{
	return io ? io->fd : -EINVAL;
}

void weft_io_set_ref(weft_io *io, bool ref)
{
	if (io)
		weft__handle_set_ref(&io->h, ref);
}

void weft_io_free(weft_io *io)
{
	if (io == NULL)
		return;
	weft_io_stop(io);
	weft__handle_fini(&io->h);
	free(io);
}

void weft__io_set_edge(weft_io *io, bool edge)
{
	if (io->edge == edge)
		return;
	io->edge = edge;
	weft_loop *loop = io->h.loop;
	if (io->events != 0 && loop->kind == WEFT__BACKEND_EPOLL)
		(void)weft__epoll_ctl(loop, io->fd, io->events, io->events); /* MOD */
}

void weft__io_dispatch(weft_loop *loop, int fd, uint32_t gen, unsigned revents)
{
	if (fd < 0 || (size_t)fd >= loop->nslots)
		return;
	struct weft__slot *slot = &loop->slots[fd];
	weft_io *io = slot->io;
	if (io == NULL || slot->gen != gen)
		return;
	unsigned want = io->events;
	/* An error or hang-up is reported to whichever directions are watched,
	 * so the next read or write returns it. */
	if (revents & (WEFT_IO_ERR | WEFT_IO_HUP))
		revents |= want;
	revents &= want | WEFT_IO_ERR | WEFT_IO_HUP;
	if ((revents & want) == 0)
		return;
	io->cb(io, revents, io->data);
}

int weft_loop_set_fd_data(weft_loop *loop, int fd, void *fd_data)
{
	if (loop == NULL || fd < 0)
		return -EINVAL;
	if ((size_t)fd >= loop->nslots || loop->slots[fd].io == NULL)
		return -ENOENT;
	loop->slots[fd].fd_data = fd_data;
	return 0;
}

/* ---- timers: a binary min-heap ordered by (due, seq) -------------------- */

static bool timer_before(const weft_timer *a, const weft_timer *b)
{
	if (a->due_ns != b->due_ns)
		return a->due_ns < b->due_ns;
	return a->seq < b->seq;
}

static void heap_place(weft_loop *loop, size_t i, weft_timer *t)
{
	loop->heap[i] = t;
	t->heap_idx = i;
}

static void heap_up(weft_loop *loop, size_t i)
{
	weft_timer *t = loop->heap[i];
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (!timer_before(t, loop->heap[parent]))
			break;
		heap_place(loop, i, loop->heap[parent]);
		i = parent;
	}
	heap_place(loop, i, t);
}

static void heap_down(weft_loop *loop, size_t i)
{
	weft_timer *t = loop->heap[i];
	size_t n = loop->heap_len;
	for (;;) {
		size_t child = 2 * i + 1;
		if (child >= n)
			break;
		if (child + 1 < n && timer_before(loop->heap[child + 1], loop->heap[child]))
			child++;
		if (!timer_before(loop->heap[child], t))
			break;
		heap_place(loop, i, loop->heap[child]);
		i = child;
	}
	heap_place(loop, i, t);
}

static int heap_insert(weft_loop *loop, weft_timer *t)
{
	if (loop->heap_len == loop->heap_cap) {
		size_t cap = loop->heap_cap ? loop->heap_cap * 2 : 64;
		weft_timer **h = realloc(loop->heap, cap * sizeof(*h));
		if (h == NULL)
			return -ENOMEM;
		loop->heap = h;
		loop->heap_cap = cap;
	}
	size_t i = loop->heap_len++;
	heap_place(loop, i, t);
	heap_up(loop, i);
	return 0;
}

static void heap_remove(weft_loop *loop, weft_timer *t)
{
	size_t i = t->heap_idx;
	weft_timer *last = loop->heap[--loop->heap_len];
	if (last == t)
		return;
	heap_place(loop, i, last);
	if (i > 0 && timer_before(last, loop->heap[(i - 1) / 2]))
		heap_up(loop, i);
	else
		heap_down(loop, i);
}

void weft__timer_init(weft_loop *loop, weft_timer *timer, weft_timer_cb cb, void *data)
{
	memset(timer, 0, sizeof(*timer));
	weft__handle_init(&timer->h, loop, true);
	timer->h.ref = true; /* internal, but it keeps the loop alive */
	timer->cb = cb;
	timer->data = data;
}

int weft_timer_new(weft_loop *loop, weft_timer_cb cb, void *data, weft_timer **ret_timer)
{
	if (loop == NULL || cb == NULL || ret_timer == NULL)
		return -EINVAL;
	weft_timer *t = calloc(1, sizeof(*t));
	if (t == NULL)
		return -ENOMEM;
	weft__handle_init(&t->h, loop, false);
	t->cb = cb;
	t->data = data;
	*ret_timer = t;
	return 0;
}

static uint64_t ms_to_ns(uint64_t ms)
{
	/* Far enough to never fire, without overflowing when added to now. */
	const uint64_t cap = UINT64_MAX / 4 / WEFT__NS_PER_MS;
	return (ms > cap ? cap : ms) * WEFT__NS_PER_MS;
}

int weft_timer_start(weft_timer *timer, uint64_t timeout_ms, uint64_t repeat_ms)
{
	if (timer == NULL)
		return -EINVAL;
	weft_loop *loop = timer->h.loop;
	bool was_active = timer->h.active;
	timer->due_ns = weft__clock_ns() + ms_to_ns(timeout_ms);
	timer->repeat_ns = ms_to_ns(repeat_ms);
	timer->seq = loop->timer_seq++;
	timer->pass = loop->timer_pass;
	if (was_active) {
		/* Re-key in place: no allocation, cannot fail. */
		heap_up(loop, timer->heap_idx);
		heap_down(loop, timer->heap_idx);
	} else {
		int r = heap_insert(loop, timer);
		if (r < 0)
			return r;
		weft__handle_set_active(&timer->h, true);
	}
	weft__timers_changed(loop);
	return 0;
}

void weft_timer_stop(weft_timer *timer)
{
	if (timer == NULL || !timer->h.active)
		return;
	weft_loop *loop = timer->h.loop;
	heap_remove(loop, timer);
	weft__handle_set_active(&timer->h, false);
	weft__timers_changed(loop);
}

bool weft_timer_active(const weft_timer *timer)
{
	return timer != NULL && timer->h.active;
}

int64_t weft_timer_remaining(const weft_timer *timer)
{
	if (timer == NULL || !timer->h.active)
		return -1;
	uint64_t now = weft__clock_ns();
	if (timer->due_ns <= now)
		return 0;
	return (int64_t)((timer->due_ns - now + WEFT__NS_PER_MS - 1) / WEFT__NS_PER_MS);
}

void weft_timer_set_ref(weft_timer *timer, bool ref)
{
	if (timer)
		weft__handle_set_ref(&timer->h, ref);
}

void weft_timer_free(weft_timer *timer)
{
	if (timer == NULL)
		return;
	weft_timer_stop(timer);
	weft__handle_fini(&timer->h);
	free(timer);
}

bool weft__run_timers(weft_loop *loop, bool new_iteration)
{
	bool ran = false;
	if (new_iteration)
		loop->timer_pass++;
	if (loop->heap_len == 0) {
		/* No timer to compare with: weft_loop_now reads the clock if
		 * asked, and an iteration of pure I/O does not. */
		loop->now_stale = true;
		return false;
	}
	uint64_t now = weft__clock_ns();
	loop->now_ns = now;
	loop->now_stale = false;
	uint64_t pass = loop->timer_pass;
	/* Timers (re)started during this pass carry its number and wait for the
	 * next one; they sort after every older expired timer, so stopping at
	 * the first of them is exact. */
	while (loop->heap_len > 0) {
		weft_timer *t = loop->heap[0];
		if (t->due_ns > now || t->pass == pass)
			break;
		if (t->repeat_ns) {
			uint64_t due = t->due_ns + t->repeat_ns;
			if (due <= now)
				due = now + t->repeat_ns; /* skip missed periods */
			t->due_ns = due;
			t->seq = loop->timer_seq++;
			t->pass = pass;
			heap_down(loop, 0);
		} else {
			heap_remove(loop, t);
			weft__handle_set_active(&t->h, false);
		}
		ran = true;
		t->cb(t, t->data);
	}
	return ran;
}

/* ---- deferred calls ------------------------------------------------------ */

void weft__defer_init(weft_loop *loop, weft_defer *defer, weft_defer_cb cb, void *data)
{
	memset(defer, 0, sizeof(*defer));
	weft__handle_init(&defer->h, loop, true);
	defer->h.ref = true;
	defer->cb = cb;
	defer->data = data;
}

int weft_defer_new(weft_loop *loop, weft_defer_cb cb, void *data, weft_defer **ret_defer)
{
	if (loop == NULL || cb == NULL || ret_defer == NULL)
		return -EINVAL;
	weft_defer *d = calloc(1, sizeof(*d));
	if (d == NULL)
		return -ENOMEM;
	weft__handle_init(&d->h, loop, false);
	d->cb = cb;
	d->data = data;
	*ret_defer = d;
	return 0;
}

void weft_defer_schedule(weft_defer *defer)
{
	if (defer == NULL || defer->h.active)
		return;
	weft_loop *loop = defer->h.loop;
	weft__list_append(&loop->defers, &defer->link);
	loop->ndefers++;
	weft__handle_set_active(&defer->h, true);
	if (loop->ndefers == 1)
		weft__timers_changed(loop);
}

void weft_defer_cancel(weft_defer *defer)
{
	if (defer == NULL || !defer->h.active)
		return;
	weft_loop *loop = defer->h.loop;
	weft__list_remove(&defer->link);
	loop->ndefers--;
	weft__handle_set_active(&defer->h, false);
	if (loop->ndefers == 0)
		weft__timers_changed(loop);
}

bool weft_defer_scheduled(const weft_defer *defer)
{
	return defer != NULL && defer->h.active;
}

void weft_defer_free(weft_defer *defer)
{
	if (defer == NULL)
		return;
	weft_defer_cancel(defer);
	weft__handle_fini(&defer->h);
	free(defer);
}

bool weft__run_defers(weft_loop *loop)
{
	if (weft__list_empty(&loop->defers))
		return false;
	/* Move the current batch to a local list: what callbacks schedule now
	 * waits for the next iteration.  Cancel works on either list. */
	struct weft__list batch;
	weft__list_move(&batch, &loop->defers);
	while (!weft__list_empty(&batch)) {
		weft_defer *d = weft__container_of(batch.next, weft_defer, link);
		weft__list_remove(&d->link);
		loop->ndefers--;
		weft__handle_set_active(&d->h, false);
		d->cb(d, d->data);
	}
	weft__timers_changed(loop);
	return true;
}

struct call_soon {
	weft_defer defer;
	weft_call_cb cb;
	void *data;
};

static void call_soon_cb(weft_defer *defer, void *data)
{
	struct call_soon *c = data;
	weft_call_cb cb = c->cb;
	void *arg = c->data;
	free(c);
	cb(arg);
	(void)defer;
}

int weft_loop_call_soon(weft_loop *loop, weft_call_cb cb, void *data)
{
	if (loop == NULL || cb == NULL)
		return -EINVAL;
	struct call_soon *c = malloc(sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	weft__defer_init(loop, &c->defer, call_soon_cb, c);
	c->defer.owned_by_loop = true;
	c->cb = cb;
	c->data = data;
	weft_defer_schedule(&c->defer);
	return 0;
}

/* ---- deadlines and the external backend's timer ------------------------- */

uint64_t weft__next_deadline(const weft_loop *loop)
{
	if (loop->ndefers > 0)
		return 0;
	if (loop->heap_len == 0)
		return WEFT__NO_DEADLINE;
	return loop->heap[0]->due_ns;
}

void weft__timers_changed(weft_loop *loop)
{
	/* While weft dispatches, one report at the end of the dispatch covers
	 * every change; outside, report at once. */
	if (loop->kind == WEFT__BACKEND_EXTERNAL && loop->dispatching == 0)
		weft__external_report_timer(loop);
}

static int64_t deadline_to_timeout(uint64_t deadline)
{
	if (deadline == WEFT__NO_DEADLINE)
		return -1;
	uint64_t now = weft__clock_ns();
	if (deadline <= now)
		return 0;
	uint64_t ms = (deadline - now + WEFT__NS_PER_MS - 1) / WEFT__NS_PER_MS;
	return ms > INT_MAX ? INT_MAX : (int64_t)ms;
}

int64_t weft_loop_get_timeout(const weft_loop *loop)
{
	if (loop == NULL)
		return -1;
	return deadline_to_timeout(weft__next_deadline(loop));
}

/* ---- running ------------------------------------------------------------- */

int weft_loop_run(weft_loop *loop, weft_run_mode mode)
{
	if (loop == NULL || loop->kind != WEFT__BACKEND_EPOLL ||
	    (mode != WEFT_RUN_DEFAULT && mode != WEFT_RUN_ONCE && mode != WEFT_RUN_NOWAIT))
		return -EINVAL;
	if (loop->running)
		return -EBUSY;
	loop->running = true;
	if (mode == WEFT_RUN_DEFAULT)
		loop->stop = false;
	int r = 0;
	for (;;) {
		bool ran = weft__run_timers(loop, true);
		ran |= weft__run_defers(loop);
		if (mode == WEFT_RUN_DEFAULT && (loop->stop || loop->active == 0))
			break;
		/* The deadline is already 0 when deferred calls or due timers
		 * wait; ONCE also must not block after it did some work. */
		int timeout = 0;
		if (mode == WEFT_RUN_DEFAULT || (mode == WEFT_RUN_ONCE && !ran && loop->active > 0))
			timeout = (int)deadline_to_timeout(weft__next_deadline(loop));
		r = weft__epoll_poll(loop, timeout);
		if (r < 0)
			break;
		if (mode != WEFT_RUN_DEFAULT) {
			/* Timers that came due while waiting; still this iteration,
			 * so timers started by its callbacks wait for the next. */
			weft__run_timers(loop, false);
			break;
		}
		if (loop->stop)
			break;
	}
	loop->running = false;
	loop->stop = false;
	if (r < 0)
		return r;
	return loop->active > 0 ? 1 : 0;
}

int weft_loop_dispatch(weft_loop *loop)
{
	return weft_loop_run(loop, WEFT_RUN_NOWAIT);
}

void weft_loop_stop(weft_loop *loop)
{
	if (loop)
		loop->stop = true;
}

int weft_loop_get_fd(const weft_loop *loop)
{
	if (loop == NULL || loop->kind != WEFT__BACKEND_EPOLL)
		return -EINVAL;
	return loop->epfd;
}

/* ---- thread-safe wake-up -------------------------------------------------- */

int weft_loop_wakeup(weft_loop *loop)
{
	if (loop == NULL)
		return -EINVAL;
	uint64_t one = 1;
	for (;;) {
		ssize_t n = write(loop->wake_fd, &one, sizeof(one));
		if (n == (ssize_t)sizeof(one))
			return 0;
		if (n < 0 && errno == EINTR)
			continue;
		/* EAGAIN: the counter is saturated, a wake-up is pending anyway. */
		return (n < 0 && errno != EAGAIN) ? -errno : 0;
	}
}

static void wake_cb(weft_io *io, unsigned revents, void *data)
{
	weft_loop *loop = data;
	uint64_t value;
	while (read(loop->wake_fd, &value, sizeof(value)) < 0 && errno == EINTR)
		;
	atomic_store(&loop->wake_pending, 0);
	for (struct weft__list *n = loop->asyncs.next; n != &loop->asyncs; n = loop->async_iter) {
		weft_async *a = weft__container_of(n, weft_async, link);
		loop->async_iter = n->next; /* a callback may free the next one */
		if (atomic_exchange(&a->pending, 0))
			a->cb(a, a->data);
	}
	loop->async_iter = NULL;
	(void)io;
	(void)revents;
}

int weft_async_new(weft_loop *loop, weft_async_cb cb, void *data, weft_async **ret_async)
{
	if (loop == NULL || cb == NULL || ret_async == NULL)
		return -EINVAL;
	weft_async *a = calloc(1, sizeof(*a));
	if (a == NULL)
		return -ENOMEM;
	weft__handle_init(&a->h, loop, false);
	atomic_init(&a->pending, 0);
	a->cb = cb;
	a->data = data;
	weft__list_append(&loop->asyncs, &a->link);
	weft__handle_set_active(&a->h, true);
	*ret_async = a;
	return 0;
}

int weft_async_send(weft_async *async)
{
	if (async == NULL)
		return -EINVAL;
	if (atomic_exchange(&async->pending, 1))
		return 0; /* already on its way */
	weft_loop *loop = async->h.loop;
	if (atomic_exchange(&loop->wake_pending, 1))
		return 0;
	return weft_loop_wakeup(loop);
}

void weft_async_set_ref(weft_async *async, bool ref)
{
	if (async)
		weft__handle_set_ref(&async->h, ref);
}

void weft_async_free(weft_async *async)
{
	if (async == NULL)
		return;
	weft_loop *loop = async->h.loop;
	if (loop->async_iter == &async->link)
		loop->async_iter = async->link.next;
	weft__list_remove(&async->link);
	weft__handle_fini(&async->h);
	free(async);
}

/* ---- signals ------------------------------------------------------------- */

static void signal_cb(weft_io *io, unsigned revents, void *data)
{
	weft_loop *loop = data;
	struct signalfd_siginfo info[16];
	for (;;) {
		ssize_t n = read(loop->sig_fd, info, sizeof(info));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		size_t count = (size_t)n / sizeof(info[0]);
		for (size_t i = 0; i < count; i++) {
			int signum = (int)info[i].ssi_signo;
			for (struct weft__list *it = loop->signals.next; it != &loop->signals; it = loop->sig_iter) {
				weft_signal *s = weft__container_of(it, weft_signal, link);
				loop->sig_iter = it->next; /* a callback may free the next one */
				if (s->signum == signum)
					s->cb(s, signum, s->data);
			}
			loop->sig_iter = NULL;
		}
		if (count < sizeof(info) / sizeof(info[0]))
			break;
	}
	(void)io;
	(void)revents;
}

int weft_signal_new(weft_loop *loop, weft_signal_cb cb, void *data, weft_signal **ret_sig)
{
	if (loop == NULL || cb == NULL || ret_sig == NULL)
		return -EINVAL;
	weft_signal *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return -ENOMEM;
	weft__handle_init(&s->h, loop, false);
	s->cb = cb;
	s->data = data;
	*ret_sig = s;
	return 0;
}

static int signalfd_update(weft_loop *loop)
{
	int fd = signalfd(loop->sig_fd, &loop->sigset, SFD_NONBLOCK | SFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (loop->sig_fd < 0) {
		loop->sig_fd = fd;
		int r = io_alloc(loop, fd, signal_cb, loop, true, &loop->sig_io);
		if (r == 0)
			r = weft_io_start(loop->sig_io, WEFT_IO_READ);
		if (r < 0) {
			free(loop->sig_io);
			loop->sig_io = NULL;
			close(fd);
			loop->sig_fd = -1;
			return r;
		}
	}
	return 0;
}

int weft_signal_start(weft_signal *sig, int signum)
{
	if (sig == NULL || signum <= 0 || signum >= _NSIG || signum == SIGKILL || signum == SIGSTOP)
		return -EINVAL;
	weft_loop *loop = sig->h.loop;
	if (sig->signum == signum)
		return 0;
	weft_signal_stop(sig);
	if (loop->sig_count[signum] == 0) {
		sigset_t one, old;
		sigemptyset(&one);
		sigaddset(&one, signum);
		int r = pthread_sigmask(SIG_BLOCK, &one, &old);
		if (r != 0)
			return -r;
		loop->sig_was_blocked[signum] = sigismember(&old, signum) == 1;
		sigaddset(&loop->sigset, signum);
		r = signalfd_update(loop);
		if (r < 0) {
			sigdelset(&loop->sigset, signum);
			if (!loop->sig_was_blocked[signum])
				pthread_sigmask(SIG_UNBLOCK, &one, NULL);
			return r;
		}
	}
	loop->sig_count[signum]++;
	sig->signum = signum;
	weft__list_append(&loop->signals, &sig->link);
	weft__handle_set_active(&sig->h, true);
	return 0;
}

void weft_signal_stop(weft_signal *sig)
{
	if (sig == NULL || sig->signum == 0)
		return;
	weft_loop *loop = sig->h.loop;
	int signum = sig->signum;
	if (loop->sig_iter == &sig->link)
		loop->sig_iter = sig->link.next;
	weft__list_remove(&sig->link);
	sig->signum = 0;
	weft__handle_set_active(&sig->h, false);
	if (--loop->sig_count[signum] > 0)
		return;
	sigdelset(&loop->sigset, signum);
	(void)signalfd_update(loop);
	if (!loop->sig_was_blocked[signum]) {
		/* Consume instances still pending so unblocking does not run the
		 * default action of a signal someone meant for us. */
		sigset_t one;
		sigemptyset(&one);
		sigaddset(&one, signum);
		struct timespec zero = {0, 0};
		while (sigtimedwait(&one, NULL, &zero) == signum)
			;
		pthread_sigmask(SIG_UNBLOCK, &one, NULL);
	}
}

void weft_signal_set_ref(weft_signal *sig, bool ref)
{
	if (sig)
		weft__handle_set_ref(&sig->h, ref);
}

void weft_signal_free(weft_signal *sig)
{
	if (sig == NULL)
		return;
	weft_signal_stop(sig);
	weft__handle_fini(&sig->h);
	free(sig);
}
