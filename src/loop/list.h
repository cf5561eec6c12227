/* A circular, doubly-linked intrusive list: one definition for every list
 * weft keeps (deferred calls, async and signal handles, a stream's or a
 * datagram socket's requests, queues).  The head is a sentinel node. */
#ifndef WEFT_LIST_H
#define WEFT_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct weft__list {
	struct weft__list *prev, *next;
};

#define weft__container_of(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

static inline void weft__list_init(struct weft__list *head)
{
	head->prev = head->next = head;
}

static inline bool weft__list_empty(const struct weft__list *head)
{
	return head->next == head;
}

/* Whether node is on a list (removed nodes are unlinked: NULL pointers). */
static inline bool weft__list_linked(const struct weft__list *node)
{
	return node->next != NULL;
}

static inline void weft__list_append(struct weft__list *head, struct weft__list *node)
{
	node->prev = head->prev;
	node->next = head;
	head->prev->next = node;
	head->prev = node;
}

/* node must be linked.  (The analyzer cannot follow the circular list's
 * invariant through weft_queue_free's re-read of the head, which must stay:
 * a cleanup run there may free other nodes of the same list.) */
static inline void weft__list_remove(struct weft__list *node)
{
	node->prev->next = node->next; // NOLINT(clang-analyzer-core.NullDereference)
	node->next->prev = node->prev;
	node->prev = node->next = NULL;
}

/* Move every node of src to the empty list dst; src becomes empty. */
static inline void weft__list_move(struct weft__list *dst, struct weft__list *src)
{
	if (weft__list_empty(src)) {
		weft__list_init(dst);
		return;
	}
	dst->next = src->next;
	dst->prev = src->prev;
	dst->next->prev = dst;
	dst->prev->next = dst;
	weft__list_init(src);
}

#endif
