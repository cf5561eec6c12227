/* The fdpass framing codec: headers, and a decoder that turns bytes and
 * descriptor batches into messages.  No system calls (descriptors to drop
 * go to the close_fd hook), no clock. */
#include "fdpass-private.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int weft__fdp_get_header(const uint8_t *buf, uint32_t max_payload, uint32_t max_fds,
		struct weft__fdp_hdr *ret_hdr)
{
	return weft__fdp_parse_header(buf, max_payload, max_fds, ret_hdr);
}

/* ---- the decoder ---------------------------------------------------------- */

void weft__fdp_dec_init(struct weft__fdp_dec *dec, uint32_t max_payload, uint32_t max_fds,
		void (*close_fd)(int fd, void *ctx), void *close_ctx)
{
	memset(dec, 0, sizeof(*dec));
	dec->max_payload = max_payload;
	dec->max_fds = max_fds;
	dec->close_fd = close_fd;
	dec->close_ctx = close_ctx;
}

static void close_all(struct weft__fdp_dec *dec, const int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (fds[i] >= 0)
			dec->close_fd(fds[i], dec->close_ctx);
}

static struct weft__fdp_batch *batch_at(struct weft__fdp_dec *dec, size_t i)
{
	return &dec->batches[(dec->first + i) % WEFT__FDP_MAX_BATCHES];
}

/* Close the descriptors of every batch waiting (not those of the message
 * handed out last: they are the caller's). */
static void drop_batches(struct weft__fdp_dec *dec)
{
	for (size_t i = 0; i < dec->nbatches; i++) {
		const struct weft__fdp_batch *b = batch_at(dec, i);
		close_all(dec, b->fds, b->n);
	}
	dec->first = dec->nbatches = 0;
	dec->regions_used = dec->handed;
}

static int fail(struct weft__fdp_dec *dec, int err)
{
	assert(err < 0);
	drop_batches(dec);
	if (dec->err == 0)
		dec->err = err;
	return dec->err;
}

void weft__fdp_dec_clear(struct weft__fdp_dec *dec)
{
	drop_batches(dec);
	dec->regions_used = dec->handed = 0;
	free(dec->fdstore);
	dec->fdstore = NULL;
	free(dec->buf);
	dec->buf = NULL;
	dec->cap = dec->start = dec->end = dec->consume = 0;
}

/* Forget the message handed out last: its bytes, and the region its
 * descriptor array pointed into. */
static void apply_consume(struct weft__fdp_dec *dec)
{
	dec->regions_used &= ~dec->handed;
	dec->handed = 0;
	dec->start += dec->consume;
	dec->pos += dec->consume;
	dec->consume = 0;
	if (dec->start == dec->end)
		dec->start = dec->end = 0;
}

int weft__fdp_dec_space_slow(struct weft__fdp_dec *dec, uint8_t **ret_buf, size_t *ret_len)
{
	if (dec->err)
		return dec->err;
	apply_consume(dec);
	size_t have = dec->end - dec->start;
	size_t want = WEFT__FDP_HDR - (have < WEFT__FDP_HDR ? have : 0);
	if (have >= WEFT__FDP_HDR) {
		struct weft__fdp_hdr h;
		int r = weft__fdp_parse_header(dec->buf + dec->start, dec->max_payload, dec->max_fds, &h);
		if (r < 0)
			return fail(dec, r);
		size_t total = WEFT__FDP_HDR + h.len;
		want = total > have ? total - have : 1;
	}
	if (want < WEFT__FDP_READAHEAD)
		want = WEFT__FDP_READAHEAD;
	if (dec->cap - dec->end < want && dec->start > 0) {
		memmove(dec->buf, dec->buf + dec->start, have);
		dec->start = 0;
		dec->end = have;
	}
	if (dec->cap - dec->end < want) {
		size_t cap = dec->end + want;
		uint8_t *b = realloc(dec->buf, cap);
		if (b == NULL)
			return -ENOMEM; /* not sticky: the caller may try again */
		dec->buf = b;
		dec->cap = cap;
	}
	*ret_buf = dec->buf + dec->end;
	*ret_len = dec->cap - dec->end;
	return 0;
}

int weft__fdp_dec_ack_slow(struct weft__fdp_dec *dec, size_t n, const int *fds, size_t nfds, bool truncated)
{
	if (dec->err || truncated || nfds > dec->max_fds || (nfds > 0 && n == 0) ||
	    (nfds > 0 && dec->nbatches == WEFT__FDP_MAX_BATCHES)) {
		close_all(dec, fds, nfds);
		if (dec->err)
			return dec->err;
		return fail(dec, truncated || nfds > dec->max_fds ? -ETOOMANYREFS : -EPROTO);
	}
	assert(n <= dec->cap - dec->end);
	uint64_t from = dec->pos + (dec->end - dec->start);
	if (nfds > 0) {
		if (dec->fdstore == NULL)
			dec->fdstore = malloc((WEFT__FDP_MAX_BATCHES + 1) * WEFT_FDPASS_MAX_FDS_LIMIT * sizeof(int));
		if (dec->fdstore == NULL) {
			close_all(dec, fds, nfds);
			return fail(dec, -ENOMEM);
		}
		unsigned region = 0;
		while (dec->regions_used & (1u << region))
			region++; /* at most WEFT__FDP_MAX_BATCHES of the regions are taken */
		dec->regions_used |= 1u << region;
		int *store = dec->fdstore + region * WEFT_FDPASS_MAX_FDS_LIMIT;
		weft__fdp_copy_fds(store, fds, nfds);
		*batch_at(dec, dec->nbatches++) = (struct weft__fdp_batch){
			.from = from, .to = from + n, .fds = store, .n = nfds, .region = region};
	}
	dec->end += n;
	return 0;
}

int weft__fdp_dec_next_slow(struct weft__fdp_dec *dec, struct weft__fdp_msg *ret_msg)
{
	if (dec->err)
		return dec->err;
	apply_consume(dec);
	size_t have = dec->end - dec->start;
	uint64_t p = dec->pos;
	/* A batch whose read ended before the next message starts belongs to
	 * no message's first byte. */
	if (dec->nbatches > 0 && batch_at(dec, 0)->to <= p)
		return fail(dec, -EPROTO);
	if (have < WEFT__FDP_HDR)
		return 0;
	struct weft__fdp_hdr h;
	int r = weft__fdp_parse_header(dec->buf + dec->start, dec->max_payload, dec->max_fds, &h);
	if (r < 0)
		return fail(dec, r);
	uint64_t e = p + WEFT__FDP_HDR + h.len; /* where the next message starts */
	if (dec->nbatches > 0 && batch_at(dec, 0)->from > p && batch_at(dec, 0)->to <= e)
		return fail(dec, -EPROTO); /* descriptors inside this message */
	if (have < WEFT__FDP_HDR + h.len)
		return 0;
	struct weft__fdp_batch *b = dec->nbatches > 0 ? batch_at(dec, 0) : NULL;
	bool take = b != NULL && b->from <= p && e >= b->to;
	size_t n = take ? b->n : 0;
	if (n != h.nfds)
		return fail(dec, -EPROTO);
	int *fds = NULL;
	if (take) {
		/* The array stays in its region until the next call. */
		fds = b->fds;
		dec->handed = 1u << b->region;
		dec->first = (dec->first + 1) % WEFT__FDP_MAX_BATCHES;
		dec->nbatches--;
	}
	ret_msg->hdr = h;
	ret_msg->payload = dec->buf + dec->start + WEFT__FDP_HDR;
	ret_msg->fds = fds;
	dec->consume = WEFT__FDP_HDR + h.len;
	return 1;
}
