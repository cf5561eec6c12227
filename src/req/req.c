/* Asynchronous requests: one completion, a callback that never runs
 * re-entrantly from _send or cancel, cleanup at completion and at free,
 * cancellation, timeouts and progress. */
#include "req-private.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void post_cb(weft_defer *defer, void *data);
static void timeout_cb(weft_timer *timer, void *data);

weft_req *weft_req_new(weft_loop *loop, size_t state_size, const char *name)
{
	if (loop == NULL || state_size > SIZE_MAX / 2)
		return NULL;
	size_t size = sizeof(struct weft_req) + state_size;
	weft_req *req = weft__block_get(loop, size);
	if (req == NULL)
		return NULL;
	/* The header up to the timer and the caller's state are zeroed; the
	 * timer and the deferred call are set up when first needed. */
	memset(req, 0, offsetof(struct weft_req, timeout));
	memset(req->state, 0, state_size);
	req->alloc_size = size;
	req->loop = loop;
	req->name = name ? name : "req";
	req->status = WEFT_REQ_IN_PROGRESS;
	loop->nhandles++; /* a live request pins its loop */
	return req;
}

static void post_completion(weft_req *req)
{
	if (!req->has_post) {
		weft__defer_init(req->loop, &req->post, post_cb, req);
		req->has_post = true;
	}
	weft_defer_schedule(&req->post);
}

static bool posted(const weft_req *req)
{
	return req->has_post && weft_defer_scheduled(&req->post);
}

static void stop_timeout(weft_req *req)
{
	if (req->has_timeout)
		weft_timer_stop(&req->timeout);
}

void *weft_req_state(const weft_req *req)
{
	return req ? (void *)req->state : NULL;
}

weft_loop *weft_req_loop(const weft_req *req)
{
	return req ? req->loop : NULL;
}

const char *weft_req_name(const weft_req *req)
{
	return req ? req->name : NULL;
}

void weft_req_set_cleanup(weft_req *req, weft_req_cleanup_fn fn)
{
	if (req)
		req->cleanup = fn;
}

void weft_req_set_cancel_fn(weft_req *req, weft_req_cancel_fn fn)
{
	if (req)
		req->cancel_fn = fn;
}

static void run_cleanup(weft_req *req, weft_req_stage stage)
{
	if (req->cleanup == NULL || req->cleanup_done >= stage)
		return;
	req->cleanup_done = stage;
	req->cleanup(req, stage);
}

void weft__req_finish(weft_req *req, weft_req_status status, int err)
{
	if (req->status != WEFT_REQ_IN_PROGRESS)
		return;
	req->status = status;
	req->err = err;
	stop_timeout(req);
	run_cleanup(req, WEFT_REQ_STAGE_FINISHED);
	weft__queue_remove(req);
	if (req->cb == NULL || req->force_post) {
		/* Inside _send (no callback yet) or inside cancel: the callback
		 * runs from the loop, never under the caller's feet. */
		post_completion(req);
		return;
	}
	req->cb(req, req->cb_data);
}

static void post_cb(weft_defer *defer, void *data)
{
	weft_req *req = data;
	(void)defer;
	if (req->cb)
		req->cb(req, req->cb_data);
}

void weft_req_done(weft_req *req)
{
	if (req)
		weft__req_finish(req, WEFT_REQ_DONE, 0);
}

bool weft_req_error(weft_req *req, int err)
{
	if (err == 0)
		return false;
	if (err < 0)
		err = -err;
	if (req)
		weft__req_finish(req, err == ECANCELED ? WEFT_REQ_CANCELED : WEFT_REQ_ERROR, err);
	return true;
}

bool weft_req_nomem(const void *ptr, weft_req *req)
{
	if (ptr != NULL)
		return false;
	return weft_req_error(req, ENOMEM);
}

void weft_req_set_progress(weft_req *req, uint64_t progress)
{
	if (req)
		req->progress = progress;
}

void weft_req_set_callback(weft_req *req, weft_req_cb cb, void *data)
{
	if (req == NULL)
		return;
	req->cb = cb;
	req->cb_data = data;
}

weft_req_status weft_req_get_status(const weft_req *req)
{
	return req ? req->status : WEFT_REQ_ERROR;
}

bool weft_req_is_in_progress(const weft_req *req)
{
	return req != NULL && req->status == WEFT_REQ_IN_PROGRESS;
}

uint64_t weft_req_progress(const weft_req *req)
{
	return req ? req->progress : 0;
}

bool weft_req_is_error(const weft_req *req, int *perrno)
{
	if (req == NULL || req->status == WEFT_REQ_IN_PROGRESS || req->status == WEFT_REQ_DONE)
		return false;
	if (perrno)
		*perrno = req->err;
	return true;
}

int weft_req_simple_recv(const weft_req *req, int *perrno)
{
	if (req == NULL)
		return -EINVAL;
	if (req->status == WEFT_REQ_IN_PROGRESS)
		return -EINPROGRESS;
	int err;
	if (weft_req_is_error(req, &err)) {
		if (perrno)
			*perrno = err;
		return -err;
	}
	return 0;
}

int weft_req_cancel(weft_req *req)
{
	if (req == NULL)
		return -EINVAL;
	if (req->status != WEFT_REQ_IN_PROGRESS)
		return -EALREADY;
	req->force_post = true;
	int r = 0;
	if (req->cancel_fn == NULL)
		weft__req_finish(req, WEFT_REQ_CANCELED, ECANCELED);
	else if (!req->cancel_fn(req))
		r = -EBUSY;
	req->force_post = false;
	return r;
}

static void timeout_cb(weft_timer *timer, void *data)
{
	(void)timer;
	weft__req_finish(data, WEFT_REQ_TIMED_OUT, ETIMEDOUT);
}

int weft_req_set_timeout(weft_req *req, uint64_t timeout_ms)
{
	if (req == NULL)
		return -EINVAL;
	if (req->status != WEFT_REQ_IN_PROGRESS)
		return -EALREADY;
	if (timeout_ms == 0) {
		stop_timeout(req);
		return 0;
	}
	if (!req->has_timeout) {
		weft__timer_init(req->loop, &req->timeout, timeout_cb, req);
		req->has_timeout = true;
	}
	return weft_timer_start(&req->timeout, timeout_ms, 0);
}

int weft_req_wait(weft_req *req)
{
	if (req == NULL)
		return -EINVAL;
	if (req->freed_flag != NULL)
		return -EBUSY;
	/* The callback may free the request: it tells us through this flag. */
	bool freed = false;
	weft_loop *loop = req->loop;
	int r = 0;
	/* Cleared before every return below, or the request is gone. */
	// cppcheck-suppress autoVariables
	req->freed_flag = &freed;
	while (req->status == WEFT_REQ_IN_PROGRESS || posted(req)) {
		r = weft_loop_run(loop, WEFT_RUN_ONCE);
		if (freed)
			return r < 0 ? r : 0;
		if (r < 0)
			break;
		r = 0;
		if (req->status == WEFT_REQ_IN_PROGRESS && !weft_loop_alive(loop)) {
			r = -EDEADLK;
			break;
		}
	}
	req->freed_flag = NULL;
	return r;
}

void weft_req_free(weft_req *req)
{
	if (req == NULL)
		return;
	weft_loop *loop = req->loop;
	if (req->freed_flag)
		*req->freed_flag = true;
	stop_timeout(req);
	if (req->has_post)
		weft_defer_cancel(&req->post);
	weft__queue_remove(req);
	run_cleanup(req, WEFT_REQ_STAGE_FREED);
	if (req->has_timeout)
		weft__handle_fini(&req->timeout.h);
	if (req->has_post)
		weft__handle_fini(&req->post.h);
	loop->nhandles--;
	weft__block_free(loop, req, req->alloc_size);
}
