/* The Assuan engine (sans-I/O: no syscalls, no clock) shared by the server
 * and the client: line assembly, percent-escaping, response encoding. */
#ifndef WEFT_ASSUAN_PRIVATE_H
#define WEFT_ASSUAN_PRIVATE_H

#include <weft/assuan.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>

/* A growable byte buffer. */
struct weft__abuf {
	char *p;
	size_t len, cap;
};
int weft__abuf_reserve(struct weft__abuf *b, size_t extra);
int weft__abuf_put(struct weft__abuf *b, const void *p, size_t n);
void weft__abuf_free(struct weft__abuf *b);

/* Line assembly over a caller-filled buffer: bytes [off, off + len) of buf
 * (capacity cap) are unparsed input. */
struct weft__ain {
	char *buf;
	size_t cap, off, len;
	uint32_t scanned; /* bytes after off known to hold no LF (< LINELENGTH) */
	bool discarding;  /* inside an over-long line: drop up to its LF */
};

enum weft__aline {
	WEFT__ALINE_NONE = 0, /* no complete line: read more */
	WEFT__ALINE_LINE,     /* *line (NUL-terminated, LF and one CR cut off) */
	WEFT__ALINE_TOO_LONG, /* an over-long line ended (its bytes are gone) */
};

/* Take the next line.  The line points into buf and stays valid until the
 * buffer is compacted or refilled.  (weft__ain_next is the same with the
 * usual answers inline: no input at all, a short line whole.) */
enum weft__aline weft__ain_take(struct weft__ain *in, char **line, size_t *len);
static inline enum weft__aline weft__ain_next(struct weft__ain *in, char **line, size_t *len)
{
	if (in->len == 0)
		return WEFT__ALINE_NONE;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	/* A short line, whole (a command without arguments): its LF found in
	 * one word.  The word may reach past the input, never past the
	 * buffer. */
	if (in->len <= 8 && in->cap - in->off >= 8 && !in->discarding && in->scanned == 0) {
		const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
		char *start = in->buf + in->off;
		uint64_t w;
		memcpy(&w, start, 8);
		uint64_t x = w ^ (ones * '\n');
		uint64_t f = (x - ones) & ~x & highs; /* the lowest flag is exact */
		size_t n = f != 0 ? (size_t)__builtin_ctzll(f) >> 3 : 8; /* the line without its LF */
		if (n < in->len) {
			in->off += n + 1;
			in->len -= n + 1;
			if (n > 0 && start[n - 1] == '\r')
				n--;
			start[n] = '\0';
			*line = start;
			*len = n;
			return WEFT__ALINE_LINE;
		}
	}
#endif
	return weft__ain_take(in, line, len);
}
/* Move unparsed bytes to the front; returns the free room after them. */
static inline size_t weft__ain_compact(struct weft__ain *in)
{
	if (in->off > 0 && in->len > 0)
		memmove(in->buf, in->buf + in->off, in->len);
	in->off = 0;
	return in->cap - in->len;
}

/* Append "D " data to b, escaping %, CR and LF, ending a line when it
 * reaches 998 characters, as libassuan.  *dcount is the length of the open
 * D line (0: none). */
int weft__aenc_data(struct weft__abuf *b, size_t *dcount, const unsigned char *p, size_t n);
/* End the open D line, if any. */
int weft__aenc_data_end(struct weft__abuf *b, size_t *dcount);

/* "prefix[ text]\n".  -EINVAL if text holds an LF or the line would not
 * fit WEFT_ASSUAN_LINELENGTH. */
int weft__aenc_line(struct weft__abuf *b, const char *prefix, const char *text);
/* "ERR <n> <description> <<source>>[ - text]\n", byte for byte libassuan's. */
int weft__aenc_err(struct weft__abuf *b, gpg_error_t err, const char *text);

/* Decode percent escapes of n bytes at s in place; returns the new length.
 * strict: a % not followed by two hex digits is an error (-1); otherwise
 * it is kept as it is (libassuan's client rule). */
ssize_t weft__adecode(char *s, size_t n, bool strict);
/* The same from s to d, which must not overlap s and has room for n
 * bytes (all of which it may write, whatever the decoded length). */
ssize_t weft__adecode_to(char *restrict d, const char *restrict s, size_t n, bool strict);

/* ---- the pump: one Assuan endpoint's bytes over a weft_stream ----------- */

#define WEFT__APUMP_SMALL 128    /* input buffer of an idle endpoint, inline */
#define WEFT__APUMP_BIG 65536    /* input buffer while data streams in */
#define WEFT__APUMP_OUT_KEEP 4096 /* output buffers above this are given back */

/* Reads into the line buffer, writes the output buffer (what the transport
 * takes at once, the rest later while new output gathers in a second
 * buffer), and tells its owner through event(p, WEFT__APUMP_DONE) when a
 * read or a write finished (input arrived, the input ended: eof, or a
 * transfer failed: err).  An idle endpoint keeps a small inline input
 * buffer and no output buffer: a read that fills the small buffer moves to
 * a big one, given back once it empties.
 *
 * Two ways to drive the stream.  Requests (the client, whose stream also
 * carries descriptor messages and hand-overs): the stream's registered
 * reader and write requests.  Taken (the server, weft__apump_take): the
 * pump takes the stream's transport over as a stacked layer does, hears
 * its readiness first hand and reads and writes it with one call each —
 * no request, no reader bookkeeping per message.  A taken pump that must
 * read without readiness (bytes buffered, a yield) asks its owner with
 * event(p, WEFT__APUMP_WAKE) to call weft__apump_kick from the loop.
 *
 * The layout is packed: every idle connection holds one. */
enum weft__apump_ev {
	WEFT__APUMP_DONE, /* a read or write finished; look at the pump */
	WEFT__APUMP_WAKE, /* call weft__apump_kick soon, from the loop */
};

#define WEFT__APUMP_WATCH_UNKNOWN 0xff /* watching: look again */

struct weft__apump {
	weft_stream *s;
	struct weft__ain in;
	uint32_t rroom; /* requests: how many bytes the read under way may take */
	int err;        /* first transport error (positive errno), 0 if none */
	bool reading;   /* requests: the reader is started; taken: READ wanted */
	bool filled;    /* the last read filled its room: more is coming */
	bool eof;       /* no more input (EOF, reset, error) or none wanted */
	bool drained;   /* taken: the last read was short: wait for readiness */
	bool wblocked;  /* taken: wbuf waits for the transport's room */
	bool kick_read; /* taken: weft__apump_kick has a read to do */
	uint8_t watching; /* taken: what the transport watches; _UNKNOWN: look again */
	uint8_t busy;     /* taken: inside the readiness hook */
	struct weft__abuf out;  /* gathering */
	struct weft__abuf wbuf; /* being written */
	union {
		weft_req *wreq; /* requests: the write of wbuf */
		size_t woff;    /* taken: bytes of wbuf written */
	};
	size_t dcount; /* length of the open D line in out */
	void (*event)(struct weft__apump *p, enum weft__apump_ev ev);
	const weft_stream_ops *ops; /* taken: the transport's own; else NULL */
	char small[WEFT__APUMP_SMALL];
};

void weft__apump_init(struct weft__apump *p, weft_stream *s,
		void (*event)(struct weft__apump *p, enum weft__apump_ev ev));
static inline bool weft__apump_taken(const struct weft__apump *p)
{
	return p->ops != NULL;
}
/* Take the stream's transport (see above).  Readiness goes to hook(p,
 * revents), which either serves it itself or passes it on to
 * weft__apump_hook; hook NULL: weft__apump_hook.  Returns 0, or -errno when
 * the stream cannot be taken (a request attached, bytes read ahead): the
 * pump then drives it by requests. */
int weft__apump_take(struct weft__apump *p, void (*hook)(void *p, unsigned revents));
/* Give a taken transport back to its stream: the pump is driven by
 * requests from then on (for good; the client does this before it first
 * passes a descriptor).  A write still under way continues as a request.
 * May be called from inside the pump's event.  0 or -ENOMEM (err set). */
int weft__apump_give_back(struct weft__apump *p);
/* The pump's own handling of readiness. */
void weft__apump_hook(struct weft__apump *p, unsigned revents);
/* The read the pump asked for with WEFT__APUMP_WAKE, if still wanted. */
void weft__apump_kick(struct weft__apump *p);
/* An owner's hook that read the small buffer of an idle pump itself (busy
 * raised, what the transport's readv returned): the rest of the usual
 * handling, event included; busy is lowered. */
void weft__apump_read_result(struct weft__apump *p, ssize_t n);
/* Whether the owner's hook may read the small buffer itself: readable, the
 * transport watched for READ alone (so reading, and no write blocked), an
 * empty small buffer after a short read, outside the pump's own hook. */
static inline bool weft__apump_idle_read(const struct weft__apump *p, unsigned revents)
{
	return (revents & (WEFT_IO_READ | WEFT_IO_ERR | WEFT_IO_HUP)) == WEFT_IO_READ &&
	       p->watching == WEFT_IO_READ && p->in.len == 0 && p->in.buf == p->small && !p->filled &&
	       p->busy == 0;
}
/* Tell the transport what the pump waits for now (taken, open, not busy). */
void weft__apump_watch_slow(struct weft__apump *p);
static inline void weft__apump_watch(struct weft__apump *p)
{
	if (p->watching == WEFT__APUMP_WATCH_UNKNOWN)
		weft__apump_watch_slow(p);
}
/* Start a read if there is room and none runs.  Returns 0 or -ENOMEM.
 * (Inline: a reader that runs with room left is the usual case.) */
int weft__apump_read_slow(struct weft__apump *p);
static inline int weft__apump_read(struct weft__apump *p)
{
	if (p->reading && p->in.len < p->in.cap)
		return 0;
	return weft__apump_read_slow(p);
}
/* Write what was gathered.  Returns 0, or -errno when the transport failed
 * (p->err is set; event is not called for it).  (Inline: a taken transport
 * that takes all of it at once is the usual case.) */
int weft__apump_flush_slow(struct weft__apump *p);
int weft__apump_flush_rest(struct weft__apump *p, ssize_t n);
/* out goes to a taken transport in one write (wbuf is empty). */
static inline int weft__apump_write_out(struct weft__apump *p)
{
	struct iovec iov = {p->out.p, p->out.len};
	ssize_t n = p->ops->writev(p->s, &iov, 1);
	if (n == (ssize_t)p->out.len && p->out.cap <= WEFT__APUMP_OUT_KEEP) {
		p->out.len = 0;
		return 0;
	}
	return weft__apump_flush_rest(p, n);
}
static inline int weft__apump_flush(struct weft__apump *p)
{
	if (p->ops != NULL && p->out.len != 0 && p->wbuf.len == 0 && p->err == 0)
		return weft__apump_write_out(p);
	return weft__apump_flush_slow(p);
}
/* The same for a pump known to be taken and open (its owner closes it on
 * a transport error, so err is 0 too). */
static inline int weft__apump_flush_taken(struct weft__apump *p)
{
	if (p->out.len != 0 && p->wbuf.len == 0)
		return weft__apump_write_out(p);
	return weft__apump_flush_slow(p);
}
/* Bytes gathered or being written. */
static inline size_t weft__apump_pending(const struct weft__apump *p)
{
	return p->out.len + p->wbuf.len;
}
/* Whether a write waits for the transport (hand-driven mode polls for it). */
static inline bool weft__apump_writing(const struct weft__apump *p)
{
	return p->ops != NULL ? p->wblocked : p->wreq != NULL;
}
/* Drop requests and buffers, close the stream (it is gone after this). */
void weft__apump_close(struct weft__apump *p);

#endif
