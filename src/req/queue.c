/* Queues: one request runs at a time, in FIFO order.  The next one starts
 * when the running one completes or is freed, from a deferred call so a
 * trigger never runs inside the call that made room for it. */
#include "req-private.h"

#include <errno.h>
#include <stdlib.h>

struct weft_queue {
	weft_loop *loop;
	const char *name;
	struct weft__list reqs; /* the running request first, then the waiting */
	size_t length;
	bool running;
	weft_defer kick; /* triggers the head from the loop */
};

static weft_req *queue_head(const weft_queue *q)
{
	return weft__list_empty(&q->reqs) ? NULL : weft__container_of(q->reqs.next, weft_req, q_link);
}

static void kick_cb(weft_defer *defer, void *data)
{
	weft_queue *q = data;
	(void)defer;
	weft_req *req = queue_head(q);
	if (req == NULL || req->triggered || !q->running)
		return;
	req->triggered = true;
	req->trigger(req, req->trigger_data);
}

static void kick(weft_queue *q)
{
	weft_req *head = queue_head(q);
	if (q->running && head != NULL && !head->triggered)
		weft_defer_schedule(&q->kick);
}

int weft_queue_new(weft_loop *loop, const char *name, weft_queue **ret_queue)
{
	if (loop == NULL || ret_queue == NULL)
		return -EINVAL;
	weft_queue *q = calloc(1, sizeof(*q));
	if (q == NULL)
		return -ENOMEM;
	q->loop = loop;
	q->name = name ? name : "queue";
	q->running = true;
	weft__list_init(&q->reqs);
	weft__defer_init(loop, &q->kick, kick_cb, q);
	loop->nhandles++;
	*ret_queue = q;
	return 0;
}

static void unlink_req(weft_queue *q, weft_req *req)
{
	weft__list_remove(&req->q_link);
	req->queue = NULL;
	q->length--;
}

void weft__queue_remove(weft_req *req)
{
	weft_queue *q = req->queue;
	if (q == NULL)
		return;
	bool was_head = queue_head(q) == req;
	unlink_req(q, req);
	if (was_head)
		kick(q);
}

static int queue_append(weft_queue *q, weft_req *req, weft_queue_trigger_fn trigger, void *data)
{
	if (q == NULL || req == NULL || trigger == NULL || req->loop != q->loop)
		return -EINVAL;
	if (req->queue != NULL || req->status != WEFT_REQ_IN_PROGRESS)
		return -EBUSY;
	req->queue = q;
	req->trigger = trigger;
	req->trigger_data = data;
	req->triggered = false;
	weft__list_append(&q->reqs, &req->q_link);
	q->length++;
	return 0;
}

int weft_queue_add(weft_queue *queue, weft_req *req, weft_queue_trigger_fn trigger, void *data)
{
	int r = queue_append(queue, req, trigger, data);
	if (r == 0)
		kick(queue);
	return r;
}

int weft_queue_add_now(weft_queue *queue, weft_req *req, weft_queue_trigger_fn trigger, void *data)
{
	bool idle = queue != NULL && queue->length == 0 && queue->running;
	int r = queue_append(queue, req, trigger, data);
	if (r < 0)
		return r;
	if (!idle) {
		kick(queue);
		return 0;
	}
	req->triggered = true;
	trigger(req, data);
	return 0;
}

size_t weft_queue_length(const weft_queue *queue)
{
	return queue ? queue->length : 0;
}

void weft_queue_stop(weft_queue *queue)
{
	if (queue == NULL)
		return;
	queue->running = false;
	weft_defer_cancel(&queue->kick);
}

void weft_queue_start(weft_queue *queue)
{
	if (queue == NULL)
		return;
	queue->running = true;
	kick(queue);
}

bool weft_queue_running(const weft_queue *queue)
{
	return queue != NULL && queue->running;
}

void weft_queue_free(weft_queue *queue)
{
	if (queue == NULL)
		return;
	/* Completing a waiting request runs its cleanup, which may free or add
	 * requests here: with the queue stopped nothing re-arms the kick, and
	 * the loop below takes whatever is in the queue until it is empty. */
	queue->running = false;
	weft_req *req;
	while ((req = queue_head(queue)) != NULL) {
		bool waiting = !req->triggered;
		unlink_req(queue, req);
		if (waiting) {
			/* Never started: it cannot finish on its own. */
			req->force_post = true;
			weft__req_finish(req, WEFT_REQ_CANCELED, ECANCELED);
			req->force_post = false;
		}
	}
	weft_defer_cancel(&queue->kick);
	weft__handle_fini(&queue->kick.h);
	queue->loop->nhandles--;
	free(queue);
}
