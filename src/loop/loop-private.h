/* Internals of the loop module, shared with the other weft modules (which
 * embed timers and deferred calls in their own objects). */
#ifndef WEFT_LOOP_PRIVATE_H
#define WEFT_LOOP_PRIVATE_H

#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <weft/loop.h>

#include "list.h"

#define WEFT__NS_PER_MS UINT64_C(1000000)
#define WEFT__NO_DEADLINE UINT64_MAX

/* Small blocks a loop keeps for reuse: a request per message (a write, a
 * reply) then costs a memset instead of a malloc and a free. */
#define WEFT__BLOCK_SIZE 512
#define WEFT__BLOCK_CACHE 64

/* What every handle shares: whether it counts towards "the loop is alive". */
struct weft__handle {
	weft_loop *loop;
	bool active;   /* started / scheduled */
	bool ref;      /* counts towards weft_loop_alive when active */
	bool internal; /* created by weft itself: not counted by weft_loop_free */
};

struct weft_io {
	struct weft__handle h;
	int fd;
	uint16_t events; /* current interest (WEFT_IO_*); 0 when stopped */
	bool edge;       /* epoll: edge-triggered (weft__io_set_edge) */
	weft_io_cb cb;   /* fd, events and edge share 8 bytes: a watcher per connection */
	void *data;
};

struct weft_timer {
	struct weft__handle h;
	size_t heap_idx; /* position in the heap while active */
	uint64_t due_ns;
	uint64_t repeat_ns;
	uint64_t seq;  /* tie-break: equal deadlines fire in start order */
	uint64_t pass; /* dispatch pass it was (re)started in */
	weft_timer_cb cb;
	void *data;
};

struct weft_defer {
	struct weft__handle h;
	struct weft__list link; /* in loop->defers (or a batch) while scheduled */
	weft_defer_cb cb;
	void *data;
	bool owned_by_loop; /* a weft_loop_call_soon node */
};

struct weft_async {
	struct weft__handle h;
	struct weft__list link; /* in loop->asyncs */
	atomic_int pending;
	weft_async_cb cb;
	void *data;
};

struct weft_signal {
	struct weft__handle h;
	struct weft__list link; /* in loop->signals while started */
	int signum; /* 0 when stopped */
	weft_signal_cb cb;
	void *data;
};

struct weft__slot {
	weft_io *io;   /* started watcher on this fd, or NULL */
	uint32_t gen;  /* bumped on every registration: stale events are dropped */
	void *fd_data; /* the external backend's pointer for this fd */
};

enum weft__backend_kind { WEFT__BACKEND_EPOLL, WEFT__BACKEND_EXTERNAL };

struct weft_loop {
	enum weft__backend_kind kind;
	int epfd; /* epoll backend only */

	struct weft__slot *slots;
	size_t nslots;

	weft_timer **heap;
	size_t heap_len, heap_cap;
	uint64_t timer_seq;
	uint64_t timer_pass;

	struct weft__list defers; /* scheduled deferred calls */
	size_t ndefers;           /* scheduled, including the batch being run */

	uint64_t now_ns;
	bool now_stale; /* now_ns not read this iteration (no timers) */
	size_t active;   /* active, referenced handles */
	size_t nhandles; /* user handles alive: weft_loop_free refuses while > 0 */
	bool stop;
	bool running;
	unsigned dispatching; /* nesting depth of weft dispatching callbacks */

	/* thread-safe wake-up */
	int wake_fd;
	weft_io *wake_io;
	atomic_int wake_pending;
	struct weft__list asyncs;
	struct weft__list *async_iter; /* next to visit while dispatching */

	/* signals */
	int sig_fd;
	weft_io *sig_io;
	sigset_t sigset;
	unsigned sig_count[_NSIG];
	bool sig_was_blocked[_NSIG];
	struct weft__list signals;
	struct weft__list *sig_iter; /* next to visit while dispatching */

	/* recycled small blocks (requests): see weft__block_alloc */
	void *blocks[WEFT__BLOCK_CACHE];
	unsigned nblocks;

	/* external backend */
	weft_loop_ops ops;
	void *user;
	uint64_t reported_deadline; /* last deadline told through ops.timer */
	bool reported_any;
};

/* Handle bookkeeping. */
void weft__handle_init(struct weft__handle *h, weft_loop *loop, bool internal);
void weft__handle_set_active(struct weft__handle *h, bool active);
void weft__handle_set_ref(struct weft__handle *h, bool ref);
void weft__handle_fini(struct weft__handle *h);

/* Embedded timers and deferred calls (the memory belongs to the caller;
 * internal ones do not count as user handles for weft_loop_free). */
void weft__timer_init(weft_loop *loop, weft_timer *timer, weft_timer_cb cb, void *data);
void weft__defer_init(weft_loop *loop, weft_defer *defer, weft_defer_cb cb, void *data);

uint64_t weft__clock_ns(void);

/* Zeroed memory of size bytes, from the loop's cache when it fits a block;
 * release it with weft__block_free and the same size. */
void *weft__block_alloc(weft_loop *loop, size_t size);
/* The same, not zeroed. */
void *weft__block_get(weft_loop *loop, size_t size);
void weft__block_free(weft_loop *loop, void *p, size_t size);

/* Edge-triggered readiness for a watcher the epoll backend holds (no effect
 * with the external backend).  Only for an owner that reads and writes
 * until a short transfer or EAGAIN before it waits again (the stream core
 * on a TCP socket: a short read there means the receive queue was empty).
 * While READ is watched, the registration also asks for EPOLLRDHUP and
 * EPOLLPRI; an event with either, or with an error or hang-up, turns the
 * watcher level-triggered for good, because a read can then end short
 * with more to come (at the urgent mark, before the end of the stream or
 * a pending error) and no new edge would follow. */
void weft__io_set_edge(weft_io *io, bool edge);

/* Deliver an event collected by a backend to the watcher on fd.  gen is the
 * slot generation captured when the event was armed (epoll), or the current
 * one (external). */
void weft__io_dispatch(weft_loop *loop, int fd, uint32_t gen, unsigned revents);

/* Run expired timers (new_iteration false: a second pass within the same
 * iteration, skipping timers its callbacks started); run the deferred calls
 * scheduled before this call.  Both return whether a callback ran. */
bool weft__run_timers(weft_loop *loop, bool new_iteration);
bool weft__run_defers(weft_loop *loop);

/* The next deadline in ns (0: work is ready now), or WEFT__NO_DEADLINE. */
uint64_t weft__next_deadline(const weft_loop *loop);

/* Called after every change to timers or deferred calls. */
void weft__timers_changed(weft_loop *loop);

/* Backends. */
int weft__epoll_init(weft_loop *loop);
void weft__epoll_fini(weft_loop *loop);
int weft__epoll_ctl(weft_loop *loop, int fd, unsigned old_events, unsigned new_events);
int weft__epoll_poll(weft_loop *loop, int timeout_ms);
void weft__epoll_level(weft_loop *loop, int fd, uint32_t gen);

int weft__external_ctl(weft_loop *loop, int fd, unsigned old_events, unsigned new_events);
void weft__external_report_timer(weft_loop *loop);

#endif
