/* Internals of the fdpass module (src/fdpass/): the sans-I/O framing codec
 * (codec.c) and the socket helpers the drivers share (io.c). */
#ifndef WEFT_FDPASS_PRIVATE_H
#define WEFT_FDPASS_PRIVATE_H

#include <weft/fdpass.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

/* ---- wire format (docs/fdpass.md) ------------------------------------------
 *
 *   offset size  field
 *        0    4  magic "WFDP"
 *        4    1  version (1)
 *        5    1  type: 1 request, 2 response, 3 error (payload: errno, u32)
 *        6    2  number of descriptors in SCM_RIGHTS on byte 0 (big-endian)
 *        8    4  payload length (big-endian)
 *       12    4  sequence number (big-endian): the client numbers its
 *                requests from 1, the server echoes the number
 *       16       payload
 */
#define WEFT__FDP_HDR 16u
#define WEFT__FDP_VERSION 1u

enum weft__fdp_type {
	WEFT__FDP_REQUEST = 1,
	WEFT__FDP_RESPONSE = 2,
	WEFT__FDP_ERROR = 3,
};

struct weft__fdp_hdr {
	uint8_t type;
	uint16_t nfds;
	uint32_t len;
	uint32_t seq;
};

/* Write a header into out[0..WEFT__FDP_HDR) (htons/htonl: a byte swap and
 * a store each). */
static inline void weft__fdp_put_header(uint8_t *out, const struct weft__fdp_hdr *hdr)
{
	uint16_t nfds = htons(hdr->nfds);
	uint32_t len = htonl(hdr->len);
	uint32_t seq = htonl(hdr->seq);
	memcpy(out, "WFDP", 4);
	out[4] = WEFT__FDP_VERSION;
	out[5] = hdr->type;
	memcpy(out + 6, &nfds, sizeof(nfds));
	memcpy(out + 8, &len, sizeof(len));
	memcpy(out + 12, &seq, sizeof(seq));
}

/* Copy n descriptors: one (the common case) without a library call. */
static inline void weft__fdp_copy_fds(int *dst, const int *src, size_t n)
{
	if (n == 1)
		dst[0] = src[0];
	else if (n > 1)
		memcpy(dst, src, n * sizeof(int));
}

/* Parse a header from buf[0..WEFT__FDP_HDR).  Returns 0, -EPROTO (bad
 * magic, version or type), -EMSGSIZE (len > max_payload), -ETOOMANYREFS
 * (nfds > max_fds). */
int weft__fdp_get_header(const uint8_t *buf, uint32_t max_payload, uint32_t max_fds,
		struct weft__fdp_hdr *ret_hdr);

/* The same, inline for the decoder's hot path. */
static inline int weft__fdp_parse_header(const uint8_t *buf, uint32_t max_payload, uint32_t max_fds,
		struct weft__fdp_hdr *ret_hdr)
{
	uint16_t nfds;
	uint32_t len, seq;
	if (memcmp(buf, "WFDP", 4) != 0 || buf[4] != WEFT__FDP_VERSION)
		return -EPROTO;
	memcpy(&nfds, buf + 6, sizeof(nfds));
	memcpy(&len, buf + 8, sizeof(len));
	memcpy(&seq, buf + 12, sizeof(seq));
	struct weft__fdp_hdr h = {.type = buf[5], .nfds = ntohs(nfds), .len = ntohl(len), .seq = ntohl(seq)};
	switch (h.type) {
	case WEFT__FDP_REQUEST:
	case WEFT__FDP_RESPONSE:
		break;
	case WEFT__FDP_ERROR:
		if (h.len != 4 || h.nfds != 0)
			return -EPROTO;
		break;
	default:
		return -EPROTO;
	}
	if (h.len > max_payload)
		return -EMSGSIZE;
	if (h.nfds > max_fds)
		return -ETOOMANYREFS;
	*ret_hdr = h;
	return 0;
}

/* ---- the decoder: bytes and descriptors in, messages out ------------------
 *
 * The driver asks for space (weft__fdp_dec_space), fills some of it from
 * the socket and acknowledges what it wrote together with the descriptors
 * that came with those bytes (weft__fdp_dec_ack); then it takes complete
 * messages out (weft__fdp_dec_next) until that returns 0.
 *
 * Which message owns a batch of descriptors: the kernel delivers the
 * descriptors of a sendmsg with the bytes of that sendmsg's first chunk and
 * stops the read right after it, so a batch belongs to the last message
 * whose first byte arrived in the same read.  A batch with no message
 * starting in its read, or a count different from the header's, is a
 * protocol error.  The decoder makes no system call: the descriptors it
 * must drop go to close_fd. */
struct weft__fdp_batch {
	uint64_t from, to; /* stream offsets of the read the fds came with */
	int *fds;          /* region `region` of the decoder's fd store */
	size_t n;
	unsigned region;
};

#define WEFT__FDP_MAX_BATCHES 4

struct weft__fdp_dec {
	uint32_t max_payload;
	uint32_t max_fds;
	void (*close_fd)(int fd, void *ctx);
	void *close_ctx;

	uint8_t *buf;
	size_t cap;
	size_t start;    /* first unconsumed byte */
	size_t end;      /* one past the last byte received */
	uint64_t pos;    /* stream offset of buf[start] */
	size_t consume;  /* bytes of the message handed out last, consumed on the next call */

	/* Batches waiting for their message, oldest first: a ring of
	 * nbatches entries starting at batches[first]. */
	struct weft__fdp_batch batches[WEFT__FDP_MAX_BATCHES];
	size_t first, nbatches;
	/* Descriptor storage, allocated once on the first descriptor: regions
	 * of WEFT_FDPASS_MAX_FDS_LIMIT, one per batch waiting and one for the
	 * message handed out last (its fds array points into it until the next
	 * decoder call). */
	int *fdstore;
	unsigned regions_used; /* bit i: region i is taken */
	unsigned handed;       /* the bit of the region handed out last (0: none) */

	int err;         /* sticky: once failed, every call returns it */
};

/* A decoded message: header, payload pointing into the decoder's buffer,
 * descriptors in fds[0..hdr.nfds) (NULL when none).  Both arrays are valid
 * until the next decoder call; the descriptors themselves now belong to the
 * caller (the decoder no longer closes them). */
struct weft__fdp_msg {
	struct weft__fdp_hdr hdr;
	const uint8_t *payload;
	int *fds;
};

void weft__fdp_dec_init(struct weft__fdp_dec *dec, uint32_t max_payload, uint32_t max_fds,
		void (*close_fd)(int fd, void *ctx), void *close_ctx);
/* Close every descriptor still held and free the buffer. */
void weft__fdp_dec_clear(struct weft__fdp_dec *dec);

/* Room offered beyond the current message, so one read can take several
 * small pipelined messages. */
#define WEFT__FDP_READAHEAD 16384u

/* Room for at least one more byte: *ret_buf / *ret_len.  Returns 0,
 * -ENOMEM, or the sticky error. */
int weft__fdp_dec_space_slow(struct weft__fdp_dec *dec, uint8_t **ret_buf, size_t *ret_len);

/* n bytes were written at the space; fds[0..nfds) (ownership passes to the
 * decoder, also on failure) came with them; truncated: the kernel dropped
 * descriptors (MSG_CTRUNC).  Returns 0 or -errno (the error is sticky and
 * every descriptor held is closed): -ETOOMANYREFS (truncated, or more than
 * max_fds), -EPROTO (too many batches pending), -ENOMEM. */
int weft__fdp_dec_ack_slow(struct weft__fdp_dec *dec, size_t n, const int *fds, size_t nfds, bool truncated);

/* weft__fdp_dec_space_slow, inline between messages: the whole buffer
 * (once it exists) is free. */
static inline int weft__fdp_dec_space(struct weft__fdp_dec *dec, uint8_t **ret_buf, size_t *ret_len)
{
	if (dec->err != 0 || dec->consume != 0 || dec->start != dec->end || dec->cap < WEFT__FDP_READAHEAD)
		return weft__fdp_dec_space_slow(dec, ret_buf, ret_len);
	dec->regions_used &= ~dec->handed;
	dec->handed = 0;
	dec->start = dec->end = 0;
	*ret_buf = dec->buf;
	*ret_len = dec->cap;
	return 0;
}

/* weft__fdp_dec_ack_slow, inline for bytes without descriptors, and for
 * one descriptor when none is held (it takes region 0). */
static inline int weft__fdp_dec_ack(struct weft__fdp_dec *dec, size_t n, const int *fds, size_t nfds,
		bool truncated)
{
	if (dec->err != 0 || truncated)
		return weft__fdp_dec_ack_slow(dec, n, fds, nfds, truncated);
	if (nfds == 1 && n > 0 && dec->nbatches == 0 && dec->regions_used == 0 && dec->fdstore != NULL &&
	    dec->max_fds >= 1) {
		uint64_t from = dec->pos + (dec->end - dec->start);
		dec->fdstore[0] = fds[0];
		dec->batches[dec->first] = (struct weft__fdp_batch){
			.from = from, .to = from + n, .fds = dec->fdstore, .n = 1, .region = 0};
		dec->nbatches = 1;
		dec->regions_used = 1;
	} else if (nfds != 0) {
		return weft__fdp_dec_ack_slow(dec, n, fds, nfds, truncated);
	}
	dec->end += n;
	return 0;
}

/* weft__fdp_dec_ack for the common read: into a decoder that held nothing
 * (no bytes, no batches, no descriptor array handed out), exactly one
 * whole, well-formed message with its own descriptors.  That message is
 * handed out at once, as weft__fdp_dec_next would hand it out (payload and
 * fds valid until the next decoder call, the descriptors the caller's),
 * and 1 is returned; the decoder is then empty.  Any other read is
 * acknowledged as by weft__fdp_dec_ack (0 or -errno). */
static inline int weft__fdp_dec_ack_msg(struct weft__fdp_dec *dec, size_t n, const int *fds, size_t nfds,
		bool truncated, struct weft__fdp_msg *ret_msg)
{
	struct weft__fdp_hdr h;
	/* nothing held: no bytes, no error, no batch, no array handed out */
	if ((dec->end | dec->consume | dec->nbatches | (unsigned)dec->err | dec->regions_used) == 0 &&
	    !truncated && n >= WEFT__FDP_HDR && (nfds == 0 || dec->fdstore != NULL) &&
	    weft__fdp_parse_header(dec->buf, dec->max_payload, dec->max_fds, &h) == 0 &&
	    n == WEFT__FDP_HDR + h.len && nfds == h.nfds) {
		int *store = NULL;
		if (nfds > 0) {
			store = dec->fdstore; /* region 0, free: regions_used is 0 */
			weft__fdp_copy_fds(store, fds, nfds);
			dec->regions_used = dec->handed = 1;
		}
		dec->pos += n;
		ret_msg->hdr = h;
		ret_msg->payload = dec->buf + WEFT__FDP_HDR;
		ret_msg->fds = store;
		return 1;
	}
	return weft__fdp_dec_ack(dec, n, fds, nfds, truncated);
}

/* Returns 1 and a message, 0 when more bytes are needed, or -errno (sticky;
 * every descriptor held is closed): -EPROTO, -EMSGSIZE, -ETOOMANYREFS. */
int weft__fdp_dec_next_slow(struct weft__fdp_dec *dec, struct weft__fdp_msg *ret_msg);

/* Bytes received but not yet handed out as messages (0 between messages). */
static inline size_t weft__fdp_dec_buffered(const struct weft__fdp_dec *dec)
{
	return dec->end - dec->start - dec->consume;
}

/* weft__fdp_dec_next_slow, with its most common answer inline: nothing
 * buffered and no descriptors waiting is 0 once the message handed out
 * last is forgotten (what the slow path would do too). */
static inline int weft__fdp_dec_next(struct weft__fdp_dec *dec, struct weft__fdp_msg *ret_msg)
{
	if (dec->err < 0) /* a failure stays (always -errno) */
		return dec->err;
	size_t have = weft__fdp_dec_buffered(dec);
	if (dec->nbatches == 0 && have == 0) {
		dec->regions_used &= ~dec->handed;
		dec->handed = 0;
		dec->pos += dec->consume;
		dec->consume = 0;
		dec->start = dec->end = 0;
		return 0;
	}
	/* A whole, well-formed message at the start of a fresh read, with no
	 * descriptors waiting or with the one batch that came with its first
	 * byte: what the slow path would hand out.  Anything else goes there. */
	struct weft__fdp_hdr h;
	if (dec->consume == 0 && dec->handed == 0 && dec->nbatches <= 1 && have >= WEFT__FDP_HDR &&
	    weft__fdp_parse_header(dec->buf + dec->start, dec->max_payload, dec->max_fds, &h) == 0 &&
	    have >= WEFT__FDP_HDR + h.len) {
		uint64_t p = dec->pos, e = p + WEFT__FDP_HDR + h.len;
		int *fds = NULL;
		if (dec->nbatches == 0) {
			if (h.nfds != 0)
				return weft__fdp_dec_next_slow(dec, ret_msg);
		} else {
			struct weft__fdp_batch *b = &dec->batches[dec->first];
			if (!(b->from <= p && b->to > p && b->to <= e && b->n == h.nfds))
				return weft__fdp_dec_next_slow(dec, ret_msg);
			fds = b->fds;
			dec->handed = 1u << b->region;
			dec->first = (dec->first + 1) % WEFT__FDP_MAX_BATCHES;
			dec->nbatches = 0;
		}
		ret_msg->hdr = h;
		ret_msg->payload = dec->buf + dec->start + WEFT__FDP_HDR;
		ret_msg->fds = fds;
		dec->consume = WEFT__FDP_HDR + h.len;
		return 1;
	}
	return weft__fdp_dec_next_slow(dec, ret_msg);
}

/* ---- socket helpers (io.c) -------------------------------------------------- */

/* close(2) for the decoder's close_fd. */
void weft__fdp_close_fd(int fd, void *ctx);

/* One non-blocking sendmsg of buf[0..len) with fds on its first byte
 * (nfds 0: none).  Returns bytes sent or -errno (-EAGAIN). */
ssize_t weft__fdp_sendmsg(int sock, const void *buf, size_t len, const int *fds, size_t nfds);

/* The same with a vector: iov[0..iovcnt). */
ssize_t weft__fdp_sendmsgv(int sock, const struct iovec *iov, size_t iovcnt, const int *fds, size_t nfds);

/* One non-blocking recvmsg into buf[0..len) with MSG_CMSG_CLOEXEC; up to
 * maxfds descriptors land in fds (more are closed and *ret_truncated set,
 * as for MSG_CTRUNC).  Returns bytes (0: end of stream) or -errno.  On
 * error no descriptor is left open. */
ssize_t weft__fdp_recvmsg(int sock, void *buf, size_t len, int *fds, size_t maxfds,
		size_t *ret_nfds, bool *ret_truncated);

/* One read into the decoder: its free space, one recvmsg (up to maxfds
 * descriptors), the acknowledgement (weft__fdp_dec_ack_msg).  Returns the
 * bytes read (> 0), 0 at the end of the stream, -EAGAIN when the socket is
 * drained, or -errno with *ret_op naming the step that failed (ALLOC,
 * DECODE, RECVMSG).  *ret_room is the space offered: a shorter read
 * drained the socket.  *ret_whole is set when the read was exactly one
 * whole message, handed out in *ret_msg (nothing is left to take out with
 * weft__fdp_dec_next); otherwise take the messages out as usual. */
ssize_t weft__fdp_read_into(struct weft__fdp_dec *dec, int sock, size_t maxfds, size_t *ret_room,
		weft_fdpass_op *ret_op, struct weft__fdp_msg *ret_msg, bool *ret_whole);

/* A block of at least size bytes for a response handed out to the user
 * (descriptors first, then the payload), given back by
 * weft_fdpass_msg_clear; small ones come from a per-thread spare.  NULL
 * when out of memory. */
void *weft__fdp_block_get(size_t size);

/* Resolve zero fields of limits to defaults into ret; -EINVAL above the
 * ceilings. */
int weft__fdp_limits(const weft_fdpass_limits *in, weft_fdpass_limits *ret);

/* Fill an error record. */
void weft__fdp_error(weft_fdpass_error *e, weft_fdpass_phase phase, weft_fdpass_op op, int err,
		const char *what);

#endif
