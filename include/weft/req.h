/* weft — asynchronous requests and queues (after Samba's tevent_req).
 *
 * Every weft operation is a pair: weft_<mod>_<verb>_send() creates and
 * returns a request, the caller sets a completion callback, and when it fires
 * the caller collects the result with weft_<mod>_<verb>_recv() and frees the
 * request.  Conventions of loop.h apply (negative errno returns, NULL-safe
 * free, no callback after free).
 *
 * Writing an operation:
 *
 *   struct sleep_state { weft_timer *t; };
 *
 *   weft_req *sleep_send(weft_loop *loop, uint64_t ms) {
 *       weft_req *req = weft_req_new(loop, sizeof(struct sleep_state), "sleep");
 *       if (req == NULL) return NULL;
 *       struct sleep_state *s = weft_req_state(req);
 *       weft_req_set_cleanup(req, sleep_cleanup);     // frees s->t
 *       int r = weft_timer_new(loop, sleep_fired, req, &s->t);
 *       if (weft_req_error(req, r)) return req;       // reported via the loop
 *       weft_timer_start(s->t, ms, 0);
 *       return req;
 *   }
 *   static void sleep_fired(weft_timer *t, void *data) { weft_req_done(data); }
 *   int sleep_recv(weft_req *req, int *perrno) { return weft_req_simple_recv(req, perrno); }
 *
 * Rules:
 *  - A request that completes inside its _send (before the caller could set
 *    a callback) is posted: its callback runs from the loop on the next
 *    iteration, never re-entrantly from _send.  Completion caused by
 *    weft_req_cancel() is posted the same way.  Any other completion calls
 *    the callback synchronously.
 *  - A request completes exactly once; later weft_req_done/error calls on it
 *    are ignored (so cancellation and timeouts may race with completion).
 *  - The cleanup function runs when the request completes (stage FINISHED:
 *    release timers, watchers, fds the operation held; results stay in the
 *    state for _recv) and when it is freed (stage FREED: release results).
 *    A request freed while in progress only sees FREED.
 */
#ifndef WEFT_REQ_H
#define WEFT_REQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <weft/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct weft_req weft_req;
typedef struct weft_queue weft_queue;

typedef enum weft_req_status {
	WEFT_REQ_IN_PROGRESS = 0,
	WEFT_REQ_DONE = 1,      /* weft_req_done() */
	WEFT_REQ_ERROR = 2,     /* weft_req_error() with an errno */
	WEFT_REQ_TIMED_OUT = 3, /* the timeout expired: errno ETIMEDOUT */
	WEFT_REQ_CANCELED = 4,  /* errno ECANCELED: weft_req_cancel(), or the
	                         * operation failed with ECANCELED */
} weft_req_status;

typedef enum weft_req_stage {
	WEFT_REQ_STAGE_FINISHED = 1,
	WEFT_REQ_STAGE_FREED = 2,
} weft_req_stage;

typedef void (*weft_req_cb)(weft_req *req, void *data);
typedef void (*weft_req_cleanup_fn)(weft_req *req, weft_req_stage stage);
/* Asked to cancel: return true if the operation will complete (now or later,
 * usually with weft_req_error(req, ECANCELED) or with its partial result),
 * false if it cannot be canceled at this point. */
typedef bool (*weft_req_cancel_fn)(weft_req *req);

/* ---- for implementations of operations -------------------------------- */

/* Create a request with a zeroed private state of state_size bytes (aligned
 * for any type; read it with weft_req_state).  name is a static string for
 * diagnostics.  Returns NULL on allocation failure or if loop is NULL. */
WEFT_EXPORT weft_req *weft_req_new(weft_loop *loop, size_t state_size, const char *name);
WEFT_EXPORT void *weft_req_state(const weft_req *req);
WEFT_EXPORT weft_loop *weft_req_loop(const weft_req *req);
WEFT_EXPORT const char *weft_req_name(const weft_req *req);

WEFT_EXPORT void weft_req_set_cleanup(weft_req *req, weft_req_cleanup_fn fn);
WEFT_EXPORT void weft_req_set_cancel_fn(weft_req *req, weft_req_cancel_fn fn);

/* Complete successfully. */
WEFT_EXPORT void weft_req_done(weft_req *req);

/* If err is non-zero, complete with that errno value (either sign is
 * accepted; it is stored positive) and return true; if err is 0 return false
 * and do nothing.  So: if (weft_req_error(req, r)) return req; */
WEFT_EXPORT bool weft_req_error(weft_req *req, int err);

/* If ptr is NULL, complete with ENOMEM and return true. */
WEFT_EXPORT bool weft_req_nomem(const void *ptr, weft_req *req);

/* Record partial progress (e.g. bytes already written) that stays readable
 * after a cancel or timeout (libuv#2051). */
WEFT_EXPORT void weft_req_set_progress(weft_req *req, uint64_t progress);

/* ---- for callers ------------------------------------------------------ */

/* Set the completion callback.  If the request already completed and its
 * posted callback has not run yet, it runs with the new callback. */
WEFT_EXPORT void weft_req_set_callback(weft_req *req, weft_req_cb cb, void *data);

WEFT_EXPORT weft_req_status weft_req_get_status(const weft_req *req);
WEFT_EXPORT bool weft_req_is_in_progress(const weft_req *req);
WEFT_EXPORT uint64_t weft_req_progress(const weft_req *req);

/* True if the request failed (error, timeout or cancel); then *perrno (if
 * not NULL) receives the positive errno value. */
WEFT_EXPORT bool weft_req_is_error(const weft_req *req, int *perrno);

/* The _recv of an operation with no result: 0 on success, otherwise -errno
 * with *perrno (if not NULL) set to the positive errno.  A request still in
 * progress gives -EINPROGRESS. */
WEFT_EXPORT int weft_req_simple_recv(const weft_req *req, int *perrno);

/* Cancel.  Calls the operation's cancel function; without one, the request
 * completes with ECANCELED and its cleanup releases what it held.  The
 * callback runs from the loop on the next iteration.
 * Returns 0, -EALREADY (already completed), or -EBUSY (the operation cannot
 * be canceled now; it goes on). */
WEFT_EXPORT int weft_req_cancel(weft_req *req);

/* Fail the request with ETIMEDOUT if it has not completed within
 * timeout_ms of now (0 disables the timeout).  The cleanup function releases
 * the operation's resources; progress stays readable.  Returns 0, -EALREADY
 * if the request completed, or -ENOMEM. */
WEFT_EXPORT int weft_req_set_timeout(weft_req *req, uint64_t timeout_ms);

/* Run the loop (built-in backend only) until the request completes and its
 * callback, if any, has run (the callback may free the request).  For tests
 * and blocking wrappers; never from a loop callback.  Returns 0, or -EINVAL
 * / -EBUSY (called from a callback, or already waited on) / -EDEADLK (the
 * loop ran out of work with the request still in progress). */
WEFT_EXPORT int weft_req_wait(weft_req *req);

/* Free: an in-progress request is abandoned (its cleanup runs with FREED; it
 * leaves its queue; its callback never runs).  NULL is allowed.  May be
 * called from the request's own callback. */
WEFT_EXPORT void weft_req_free(weft_req *req);

/* ---- queues (tevent_queue semantics) ---------------------------------- */

/* Called when the request reaches the head of a running queue: start the
 * operation.  The next request starts when this one completes (done, error,
 * timeout or cancel) or is freed — not when the caller frees it. */
typedef void (*weft_queue_trigger_fn)(weft_req *req, void *data);

WEFT_EXPORT int weft_queue_new(weft_loop *loop, const char *name, weft_queue **ret_queue);

/* Free the queue.  Requests still waiting in it are completed with
 * ECANCELED (their callbacks run from the loop); the running one is left
 * to finish on its own.  NULL is allowed. */
WEFT_EXPORT void weft_queue_free(weft_queue *queue);

/* Append req.  Its trigger runs from the loop (a deferred call) when it is
 * the head of a running queue — never inside weft_queue_add.
 * Returns 0, -EINVAL, or -EBUSY (req is already in a queue or completed). */
WEFT_EXPORT int weft_queue_add(weft_queue *queue, weft_req *req, weft_queue_trigger_fn trigger, void *data);

/* As weft_queue_add, but if the queue is running and empty the trigger runs
 * at once, inside this call (tevent_queue_add_optimize_empty): for callers
 * that are themselves a _send, where the request's callback is posted anyway. */
WEFT_EXPORT int weft_queue_add_now(weft_queue *queue, weft_req *req, weft_queue_trigger_fn trigger, void *data);

/* Number of requests in the queue, the running one included. */
WEFT_EXPORT size_t weft_queue_length(const weft_queue *queue);

/* A stopped queue triggers nothing new (the running request continues);
 * start resumes it.  Queues start running. */
WEFT_EXPORT void weft_queue_stop(weft_queue *queue);
WEFT_EXPORT void weft_queue_start(weft_queue *queue);
WEFT_EXPORT bool weft_queue_running(const weft_queue *queue);

#ifdef __cplusplus
}
#endif

#endif
