/* A NULL-terminated, doubly-linked intrusive list with head and tail —
 * the fdpass module's queues (calls, responses due, connections, request
 * slots).  Removing the head and re-reading it is plain pointer work the
 * static analyzers follow, unlike a circular list's sentinel. */
#ifndef WEFT_FDPASS_DLIST_H
#define WEFT_FDPASS_DLIST_H

#include <stdbool.h>
#include <stddef.h>

struct weft__dnode {
	struct weft__dnode *prev, *next;
};

struct weft__dlist {
	struct weft__dnode *head, *tail;
};

static inline void weft__dlist_append(struct weft__dlist *l, struct weft__dnode *n)
{
	n->next = NULL;
	n->prev = l->tail;
	if (l->tail)
		l->tail->next = n;
	else
		l->head = n;
	l->tail = n;
}

static inline void weft__dlist_remove(struct weft__dlist *l, struct weft__dnode *n)
{
	if (n->prev)
		n->prev->next = n->next;
	else
		l->head = n->next;
	if (n->next)
		n->next->prev = n->prev;
	else
		l->tail = n->prev;
	n->prev = n->next = NULL;
}

/* Take the first node off (NULL if empty). */
static inline struct weft__dnode *weft__dlist_pop(struct weft__dlist *l)
{
	struct weft__dnode *n = l->head;
	if (n == NULL)
		return NULL;
	l->head = n->next;
	if (l->head)
		l->head->prev = NULL;
	else
		l->tail = NULL;
	n->prev = n->next = NULL;
	return n;
}

/* Finished objects kept for reuse: a stack of at most a given count. */
struct weft__dspare {
	struct weft__dnode *top;
	unsigned n;
};

/* Keep n unless max are kept already; false: the caller frees it. */
static inline bool weft__dspare_push(struct weft__dspare *sp, struct weft__dnode *n, unsigned max)
{
	if (sp->n >= max)
		return false;
	n->next = sp->top;
	sp->top = n;
	sp->n++;
	return true;
}

/* A kept node, or NULL; also how a holder empties it (and frees each). */
static inline struct weft__dnode *weft__dspare_pop(struct weft__dspare *sp)
{
	struct weft__dnode *n = sp->top;
	if (n != NULL) {
		sp->top = n->next;
		sp->n--;
	}
	return n;
}

#define weft__dlist_entry(node, type, member) \
	((type *)(void *)((char *)(node) - offsetof(type, member)))

#endif
