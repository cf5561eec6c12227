/* Internals of requests and queues (src/req/). */
#ifndef WEFT_REQ_PRIVATE_H
#define WEFT_REQ_PRIVATE_H

#include <stdalign.h>
#include <stddef.h>

#include <weft/req.h>

#include "loop-private.h"

struct weft_req {
	weft_loop *loop;
	size_t alloc_size; /* for weft__block_free */
	const char *name;
	weft_req_status status;
	int err; /* positive errno when failed */
	uint64_t progress;

	weft_req_cb cb;
	void *cb_data;
	weft_req_cleanup_fn cleanup;
	weft_req_stage cleanup_done; /* last stage the cleanup ran for */
	weft_req_cancel_fn cancel_fn;

	bool force_post;   /* a completion now must be posted (inside cancel) */
	bool *freed_flag;  /* set by weft_req_free: weft_req_wait is watching */
	bool has_timeout;  /* timeout is initialised (a timeout was set once) */
	bool has_post;     /* post is initialised (a completion was posted once) */

	/* queue membership */
	weft_queue *queue;
	struct weft__list q_link; /* in queue->reqs */
	weft_queue_trigger_fn trigger;
	void *trigger_data;
	bool triggered;

	/* Set up on first use, not zeroed by weft_req_new: most requests
	 * neither time out nor complete inside _send. */
	weft_timer timeout;
	weft_defer post;   /* runs the callback of a posted completion */

	alignas(max_align_t) unsigned char state[];
};

/* Take req out of its queue (if any); the queue starts its next request. */
void weft__queue_remove(weft_req *req);

/* Complete req with the given status (no-op if already complete). */
void weft__req_finish(weft_req *req, weft_req_status status, int err);

#endif
