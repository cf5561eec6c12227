/* weft — the event loop.
 *
 * Conventions (these hold for every weft header):
 *  - Errors: functions that can fail return 0 (or a non-negative count) on
 *    success and a negative errno value on failure (-EINVAL, -ENOMEM, ...).
 *    Global errno is never the way an error is reported.
 *  - Out-parameters (named ret_...) are written only on success.
 *  - Ownership: objects created by weft_xxx_new() belong to the caller and are
 *    released with the matching weft_xxx_free(), which accepts NULL.  A handle
 *    may be freed from inside any callback, including its own.
 *  - Callbacks never fire for a handle after it was stopped or freed.
 *  - Threading: a loop and its handles belong to one thread.  The only calls
 *    that may come from another thread are weft_async_send() and
 *    weft_loop_wakeup().
 *  - weft never prints and never aborts on bad input.
 *
 * A loop has one of two backends:
 *  - the built-in epoll backend (weft_loop_new), which can run on its own
 *    (weft_loop_run) or be nested in another loop through one pollable fd
 *    (weft_loop_get_fd + weft_loop_get_timeout + weft_loop_dispatch);
 *  - the external backend (weft_loop_new_external): weft reports the fds and
 *    the timeout it is interested in through callbacks, and the embedding
 *    program reports readiness back (weft_loop_process_fd,
 *    weft_loop_process_timeout).  See docs/loop.md for the contract.
 */
#ifndef WEFT_LOOP_H
#define WEFT_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && defined(WEFT_BUILDING)
#define WEFT_EXPORT __attribute__((visibility("default")))
#else
#define WEFT_EXPORT
#endif

typedef struct weft_loop weft_loop;
typedef struct weft_io weft_io;
typedef struct weft_timer weft_timer;
typedef struct weft_defer weft_defer;
typedef struct weft_async weft_async;
typedef struct weft_signal weft_signal;

/* ---- the loop ---------------------------------------------------------- */

/* Create a loop with the built-in epoll backend.
 * Returns 0 and sets *ret_loop, or -ENOMEM / -EMFILE / -ENFILE. */
WEFT_EXPORT int weft_loop_new(weft_loop **ret_loop);

/* Free a loop.  Every handle created on it must have been freed first, and
 * the loop must not be running or dispatching (no weft_loop_free from the
 * loop's own callbacks); otherwise -EBUSY is returned and the loop is left
 * intact.  NULL → 0. */
WEFT_EXPORT int weft_loop_free(weft_loop *loop);

typedef enum weft_run_mode {
	/* Run until weft_loop_stop() is called or no active, referenced handle is
	 * left (started io watchers, pending timers, scheduled deferred calls,
	 * signal watchers, async handles). */
	WEFT_RUN_DEFAULT = 0,
	/* One iteration; wait for at least one event if nothing is ready. */
	WEFT_RUN_ONCE = 1,
	/* One iteration without waiting: run only what is ready now. */
	WEFT_RUN_NOWAIT = 2,
} weft_run_mode;

/* Run the loop.  Returns 1 if active handles remain (the loop would do more
 * work), 0 if none remain, or a negative errno: -EINVAL for a bad mode or an
 * external-backend loop, -EBUSY if called re-entrantly from a callback, or
 * the error of the underlying epoll_wait. */
WEFT_EXPORT int weft_loop_run(weft_loop *loop, weft_run_mode mode);

/* Make weft_loop_run(WEFT_RUN_DEFAULT) return after the current iteration.
 * Only from the loop's thread; from another thread use an weft_async. */
WEFT_EXPORT void weft_loop_stop(weft_loop *loop);

/* True while active, referenced handles exist. */
WEFT_EXPORT bool weft_loop_alive(const weft_loop *loop);

/* Monotonic time in milliseconds (CLOCK_MONOTONIC), cached once per
 * iteration: read at its start when timers are active, else at the first
 * call in the iteration.  weft_loop_update_time() refreshes it. */
WEFT_EXPORT uint64_t weft_loop_now(const weft_loop *loop);
WEFT_EXPORT void weft_loop_update_time(weft_loop *loop);

/* Wake a loop blocked in weft_loop_run (or its outer loop, via the pollable
 * fd) from any thread.  Async-signal-safe.  Returns 0 or -errno. */
WEFT_EXPORT int weft_loop_wakeup(weft_loop *loop);

/* ---- nesting in another loop: one pollable fd (sd-event style) ---------
 *
 * The outer loop watches weft_loop_get_fd() for readability, waits at most
 * weft_loop_get_timeout() milliseconds, then calls weft_loop_dispatch().
 * Ask for the timeout again before every wait: it is 0 whenever weft holds
 * work no fd will signal (deferred calls, posted request completions). */

/* The epoll fd, or -EINVAL for an external-backend loop.  Owned by the loop:
 * do not close it. */
WEFT_EXPORT int weft_loop_get_fd(const weft_loop *loop);

/* Milliseconds until weft needs to run again: 0 if work is ready now, -1 if
 * no timer is pending (wait for the fd only). */
WEFT_EXPORT int64_t weft_loop_get_timeout(const weft_loop *loop);

/* Run everything that is ready now without waiting; equivalent to
 * weft_loop_run(loop, WEFT_RUN_NOWAIT) for the epoll backend.  Returns as
 * weft_loop_run(). */
WEFT_EXPORT int weft_loop_dispatch(weft_loop *loop);

/* ---- the external backend (curl multi_socket style) --------------------
 *
 * weft calls watch() synchronously from whatever weft call changed its
 * interest (weft_io_start, weft_io_stop, ...), including from inside weft
 * callbacks, so the outer loop sees the change at once:
 *   watch(loop, fd, events, fd_data, user)   events is WEFT_IO_READ and/or
 *        WEFT_IO_WRITE: start or change watching fd; 0: stop watching fd.
 *        An fd is announced before weft uses it and removed (events 0)
 *        before weft or its owner closes it.  fd_data is the pointer last
 *        given to weft_loop_set_fd_data() for this fd (NULL at first); the
 *        slot is cleared after a removal.  Return 0, or -errno to make the
 *        weft call that caused it fail.
 *   timer(loop, timeout_ms, user)   call weft_loop_process_timeout() in
 *        timeout_ms milliseconds (0: as soon as possible, before waiting);
 *        -1: no timer needed.  Called only when the value changes meaning;
 *        each call replaces the previous request.
 *   release(loop, user)   optional (may be NULL): called by weft_loop_free
 *        after every fd was removed, so an adapter can free what it
 *        allocated for the loop.  Not called if weft_loop_new_external
 *        fails.
 *   alive(loop, alive, user)   optional (may be NULL): weft_loop_alive()
 *        changed, from whatever call changed it, so an outer loop that
 *        counts references (libuv) keeps running exactly while weft has
 *        work.
 */
typedef struct weft_loop_ops {
	int (*watch)(weft_loop *loop, int fd, unsigned events, void *fd_data, void *user);
	void (*timer)(weft_loop *loop, int64_t timeout_ms, void *user);
	void (*release)(weft_loop *loop, void *user);
	void (*alive)(weft_loop *loop, bool alive, void *user);
} weft_loop_ops;

/* Create a loop whose interest is reported through ops (copied).  Both
 * callbacks are required.  Returns 0 or -EINVAL / -ENOMEM / -EMFILE. */
WEFT_EXPORT int weft_loop_new_external(const weft_loop_ops *ops, void *user, weft_loop **ret_loop);

/* Report that fd is ready for revents (WEFT_IO_* bits; WEFT_IO_ERR and
 * WEFT_IO_HUP may be passed too).  A report for an fd weft does not watch,
 * or for events it no longer wants, is ignored.  Returns 0 or -EINVAL. */
WEFT_EXPORT int weft_loop_process_fd(weft_loop *loop, int fd, unsigned revents);

/* Run expired timers and deferred calls.  Call it when the timeout last
 * reported through ops->timer expires.  Returns 0 or -EINVAL. */
WEFT_EXPORT int weft_loop_process_timeout(weft_loop *loop);

/* Attach an adapter's own pointer to a watched fd (curl_multi_assign).
 * Returns 0, or -ENOENT if weft does not watch fd. */
WEFT_EXPORT int weft_loop_set_fd_data(weft_loop *loop, int fd, void *fd_data);

/* ---- I/O watchers ------------------------------------------------------ */

enum {
	WEFT_IO_READ = 1u << 0,
	WEFT_IO_WRITE = 1u << 1,
	/* Only in revents: an error or hang-up condition.  It is delivered
	 * together with the READ/WRITE bits the watcher asked for, so the next
	 * read()/write() reports the error. */
	WEFT_IO_ERR = 1u << 2,
	WEFT_IO_HUP = 1u << 3,
};

typedef void (*weft_io_cb)(weft_io *io, unsigned revents, void *data);

/* Create a stopped watcher for fd (not owned: weft never closes it).  Only
 * one watcher may be started per fd at a time.  Returns 0, -EINVAL, -ENOMEM. */
WEFT_EXPORT int weft_io_new(weft_loop *loop, int fd, weft_io_cb cb, void *data, weft_io **ret_io);

/* Start watching for events (WEFT_IO_READ | WEFT_IO_WRITE), or change the
 * set of a started watcher.  events == 0 is weft_io_stop().  Level
 * triggered: the callback fires on every iteration while the condition
 * holds.  Returns 0, -EINVAL, -EEXIST (another watcher is started on the
 * fd), -EBADF, -ENOMEM, or the backend's error. */
WEFT_EXPORT int weft_io_start(weft_io *io, unsigned events);
WEFT_EXPORT int weft_io_modify(weft_io *io, unsigned events);

/* Stop watching; no callback fires after this returns, even for an event
 * already collected in the current iteration.  Stop (or free) the watcher
 * before closing its fd.  Idempotent. */
WEFT_EXPORT void weft_io_stop(weft_io *io);

WEFT_EXPORT unsigned weft_io_events(const weft_io *io);
WEFT_EXPORT int weft_io_fd(const weft_io *io);

/* Stop and free.  NULL is allowed. */
WEFT_EXPORT void weft_io_free(weft_io *io);

/* ---- timers ------------------------------------------------------------ */

typedef void (*weft_timer_cb)(weft_timer *timer, void *data);

WEFT_EXPORT int weft_timer_new(weft_loop *loop, weft_timer_cb cb, void *data, weft_timer **ret_timer);

/* Fire timeout_ms milliseconds from this call (the monotonic clock is read
 * now, not taken from the cached weft_loop_now()), then, if repeat_ms
 * is non-zero, every repeat_ms milliseconds (a late repeating timer skips
 * the periods it missed rather than firing in a burst).  Restarting a
 * started timer reschedules it.  A timer started from a timer callback never
 * runs in the same iteration.  O(log n).  Returns 0 or -EINVAL. */
WEFT_EXPORT int weft_timer_start(weft_timer *timer, uint64_t timeout_ms, uint64_t repeat_ms);

/* Cancel.  O(log n).  Idempotent. */
WEFT_EXPORT void weft_timer_stop(weft_timer *timer);
WEFT_EXPORT bool weft_timer_active(const weft_timer *timer);

/* Milliseconds until the timer fires (0 if overdue), or -1 if stopped. */
WEFT_EXPORT int64_t weft_timer_remaining(const weft_timer *timer);

WEFT_EXPORT void weft_timer_free(weft_timer *timer);

/* ---- deferred calls ---------------------------------------------------- */

/* A deferred call runs on the next loop iteration, before the loop waits.
 * While one is scheduled the loop's timeout is 0. */
typedef void (*weft_defer_cb)(weft_defer *defer, void *data);

WEFT_EXPORT int weft_defer_new(weft_loop *loop, weft_defer_cb cb, void *data, weft_defer **ret_defer);

/* Schedule (idempotent while scheduled).  Calls scheduled from a deferred
 * callback run on the following iteration, so they cannot starve I/O. */
WEFT_EXPORT void weft_defer_schedule(weft_defer *defer);
WEFT_EXPORT void weft_defer_cancel(weft_defer *defer);
WEFT_EXPORT bool weft_defer_scheduled(const weft_defer *defer);
WEFT_EXPORT void weft_defer_free(weft_defer *defer);

/* One-shot convenience: run cb(data) on the next iteration.  weft owns the
 * node and frees it after the call (or when the loop is freed).
 * Returns 0 or -ENOMEM. */
typedef void (*weft_call_cb)(void *data);
WEFT_EXPORT int weft_loop_call_soon(weft_loop *loop, weft_call_cb cb, void *data);

/* ---- thread-safe wake-up ----------------------------------------------- */

typedef void (*weft_async_cb)(weft_async *async, void *data);

/* An async handle is active (keeps weft_loop_run alive) until freed, unless
 * weft_async_set_ref(async, false). */
WEFT_EXPORT int weft_async_new(weft_loop *loop, weft_async_cb cb, void *data, weft_async **ret_async);

/* From any thread (async-signal-safe): make cb run once on the loop thread.
 * Several sends before the callback runs coalesce into one call.  The
 * handle must outlive every concurrent send.  Returns 0 or -errno. */
WEFT_EXPORT int weft_async_send(weft_async *async);
WEFT_EXPORT void weft_async_set_ref(weft_async *async, bool ref);
WEFT_EXPORT void weft_async_free(weft_async *async);

/* ---- signals (signalfd) ------------------------------------------------ */

typedef void (*weft_signal_cb)(weft_signal *sig, int signum, void *data);

WEFT_EXPORT int weft_signal_new(weft_loop *loop, weft_signal_cb cb, void *data, weft_signal **ret_sig);

/* Watch signum.  weft blocks the signal in the calling thread's mask (and
 * restores the previous state when the last watcher of that signal stops);
 * block it in every other thread too, or the kernel may deliver it there.
 * Several watchers may watch the same signal; each gets the callback.
 * Returns 0, -EINVAL, or the error of signalfd/sigprocmask. */
WEFT_EXPORT int weft_signal_start(weft_signal *sig, int signum);
WEFT_EXPORT void weft_signal_stop(weft_signal *sig);
WEFT_EXPORT void weft_signal_free(weft_signal *sig);

/* ---- references -------------------------------------------------------- */

/* An unreferenced handle still works but does not keep weft_loop_run
 * (WEFT_RUN_DEFAULT) alive, e.g. a housekeeping timer or a signal watcher. */
WEFT_EXPORT void weft_io_set_ref(weft_io *io, bool ref);
WEFT_EXPORT void weft_timer_set_ref(weft_timer *timer, bool ref);
WEFT_EXPORT void weft_signal_set_ref(weft_signal *sig, bool ref);

#ifdef __cplusplus
}
#endif

#endif
