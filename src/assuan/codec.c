/* The Assuan engine: line assembly, D-line escaping and splitting, response
 * lines.  No I/O here; the server and client drivers move the bytes. */
#include "assuan-private.h"

#include <errno.h>
#include <stdint.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libassuan flushes a D line once it holds this many characters
 * (LINELENGTH minus room for an escape and the LF). */
#define DLINE_FLUSH (WEFT_ASSUAN_LINELENGTH - 4)

int weft__abuf_reserve(struct weft__abuf *b, size_t extra)
{
	if (b->cap - b->len >= extra)
		return 0;
	size_t cap = b->cap ? b->cap : 64; /* an idle endpoint keeps this much */
	while (cap - b->len < extra) {
		if (cap > ((size_t)-1) / 2)
			return -ENOMEM;
		cap *= 2;
	}
	char *p = realloc(b->p, cap);
	if (p == NULL)
		return -ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

int weft__abuf_put(struct weft__abuf *b, const void *p, size_t n)
{
	int r = weft__abuf_reserve(b, n);
	if (r < 0)
		return r;
	if (n > 0)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	return 0;
}

void weft__abuf_free(struct weft__abuf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

/* ---- input lines ---------------------------------------------------------- */

/* off + len stays where it was: a driver may have a read in flight into
 * buf + off + len (only weft__ain_compact moves the bytes). */
static void ain_consume(struct weft__ain *in, size_t n)
{
	in->off += n;
	in->len -= n;
	in->scanned = 0;
}

/* Inside an over-long line: drop bytes up to its LF. */
static enum weft__aline ain_discard(struct weft__ain *in)
{
	char *start = in->buf + in->off;
	char *nl = memchr(start, '\n', in->len);
	if (nl == NULL) {
		ain_consume(in, in->len); /* bounded: drop it all */
		return WEFT__ALINE_NONE;
	}
	ain_consume(in, (size_t)(nl - start) + 1);
	in->discarding = false;
	return WEFT__ALINE_TOO_LONG;
}

/* The end of a line found at nl: cut it off (its LF and one CR). */
static enum weft__aline ain_line(struct weft__ain *in, char *start, char *nl, char **line, size_t *len)
{
	size_t total = (size_t)(nl - start) + 1;
	ain_consume(in, total);
	if (total > WEFT_ASSUAN_LINELENGTH)
		return WEFT__ALINE_TOO_LONG;
	size_t n = total - 1;
	if (n > 0 && start[n - 1] == '\r')
		n--;
	start[n] = '\0';
	*line = start;
	*len = n;
	return WEFT__ALINE_LINE;
}

/* Lines longer than a command, an over-long line, or no LF yet (the short
 * line whole is weft__ain_next's, inline). */
enum weft__aline weft__ain_take(struct weft__ain *in, char **line, size_t *len)
{
	if (in->discarding)
		return ain_discard(in);
	char *start = in->buf + in->off;
	char *nl = memchr(start + in->scanned, '\n', in->len - in->scanned);
	if (nl == NULL) {
		if (in->len >= WEFT_ASSUAN_LINELENGTH) {
			in->discarding = true; /* no LF within the limit */
			return ain_discard(in);
		}
		in->scanned = (uint32_t)in->len; /* below LINELENGTH here */
		return WEFT__ALINE_NONE;
	}
	return ain_line(in, start, nl, line, len);
}

/* ---- output --------------------------------------------------------------- */

static bool needs_escape(unsigned char c)
{
	return c == '%' || c == '\r' || c == '\n';
}

/* The high bit of every byte of w that is %, CR or LF (and maybe of bytes
 * above such a byte: only the lowest flag is exact). */
static inline uint64_t esc_flags(uint64_t w)
{
	const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
	uint64_t a = w ^ (ones * '%'), b = w ^ (ones * '\r'), c = w ^ (ones * '\n');
	return (((a - ones) & ~a) | ((b - ones) & ~b) | ((c - ones) & ~c)) & highs;
}

/* Copy the bytes from p on that need no escape (at most lim) to o and
 * return how many: sixteen at a time with SSE2, else eight at a time.  It
 * may write up to lim bytes at o, past the run. */
static size_t copy_plain(char *o, const unsigned char *p, size_t lim)
{
	size_t i = 0;
#ifdef __SSE2__
	const __m128i pct = _mm_set1_epi8('%'), cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
	for (; i + 16 <= lim; i += 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
		_mm_storeu_si128((__m128i *)(void *)(o + i), v);
		__m128i e = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, pct), _mm_cmpeq_epi8(v, cr)),
				_mm_cmpeq_epi8(v, lf));
		unsigned m = (unsigned)_mm_movemask_epi8(e);
		if (m != 0)
			return i + (size_t)__builtin_ctz(m);
	}
#endif
	for (; i + 8 <= lim; i += 8) {
		uint64_t w;
		memcpy(&w, p + i, 8);
		memcpy(o + i, &w, 8);
		uint64_t f = esc_flags(w);
		if (f != 0) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
			return i + ((size_t)__builtin_ctzll(f) >> 3);
#else
			break; /* find it byte by byte */
#endif
		}
	}
	for (; i < lim && !needs_escape(p[i]); i++)
		o[i] = (char)p[i];
	return i;
}

int weft__aenc_data(struct weft__abuf *b, size_t *dcount, const unsigned char *p, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	/* Worst case: every byte escaped, plus "D " and LF per line. */
	size_t worst = n * 3 + (n / 300 + 2) * 3;
	int r = weft__abuf_reserve(b, worst);
	if (r < 0)
		return r;
	char *o = b->p + b->len;
	size_t dc = *dcount;
	size_t i = 0;
	while (i < n) {
		if (dc == 0) {
			*o++ = 'D';
			*o++ = ' ';
			dc = 2;
		}
		/* A run of plain bytes that fits the line. */
		size_t room = DLINE_FLUSH - dc;
		size_t run = copy_plain(o, p + i, n - i < room ? n - i : room);
		o += run;
		dc += run;
		i += run;
		if (dc < DLINE_FLUSH && i < n) {
			/* p[i] is an escape: the run stopped before it */
			*o++ = '%';
			*o++ = hex[p[i] >> 4];
			*o++ = hex[p[i] & 15];
			dc += 3;
			i++;
		}
		if (dc >= DLINE_FLUSH) {
			*o++ = '\n';
			dc = 0;
		}
	}
	b->len = (size_t)(o - b->p);
	*dcount = dc;
	return 0;
}

int weft__aenc_data_end(struct weft__abuf *b, size_t *dcount)
{
	if (*dcount == 0)
		return 0;
	*dcount = 0;
	return weft__abuf_put(b, "\n", 1);
}

int weft__aenc_line(struct weft__abuf *b, const char *prefix, const char *text)
{
	size_t pl = strlen(prefix);
	size_t tl = text ? strlen(text) : 0;
	if ((text && memchr(text, '\n', tl)) || memchr(prefix, '\n', pl))
		return -EINVAL;
	size_t total = pl + (tl ? tl + 1 : 0) + 1;
	if (total > WEFT_ASSUAN_LINELENGTH)
		return -EINVAL;
	int r = weft__abuf_reserve(b, total);
	if (r < 0)
		return r;
	char *o = b->p + b->len;
	memcpy(o, prefix, pl);
	o += pl;
	if (tl) {
		*o++ = ' ';
		memcpy(o, text, tl);
		o += tl;
	}
	*o = '\n';
	b->len += total;
	return 0;
}

int weft__aenc_err(struct weft__abuf *b, gpg_error_t err, const char *text)
{
	char desc[256];
	char line[320];
	gpg_strerror_r(err, desc, sizeof(desc));
	int n = snprintf(line, sizeof(line), "ERR %d %.50s <%.30s>%s%.100s\n", (int)err, desc,
			gpg_strsource(err), text ? " - " : "", text ? text : "");
	if (n < 0)
		return -EINVAL;
	size_t len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
	/* An LF inside the text would break the framing: cut the line there. */
	char *nl = memchr(line, '\n', len);
	if (nl != NULL && (size_t)(nl - line) + 1 < len) {
		len = (size_t)(nl - line) + 1;
	}
	return weft__abuf_put(b, line, len);
}

/* ---- decoding ------------------------------------------------------------- */

static inline int hexval(unsigned char c)
{
	unsigned v = (unsigned)c - '0';
	if (v < 10)
		return (int)v;
	v = ((unsigned)c | 0x20) - 'a';
	return v < 6 ? (int)v + 10 : -1;
}

/* Copy bytes up to the next % (at most lim) from s to d; return how many.
 * d may be s or lie before it (decoding in place). */
static size_t copy_to_pct(char *d, const char *s, size_t lim)
{
	size_t i = 0;
#ifdef __SSE2__
	const __m128i pct = _mm_set1_epi8('%');
	for (; i + 16 <= lim; i += 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
		unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, pct));
		if (m != 0) {
			size_t k = (size_t)__builtin_ctz(m);
			memmove(d + i, s + i, k);
			return i + k;
		}
		_mm_storeu_si128((__m128i *)(void *)(d + i), v);
	}
#endif
	const char *q = memchr(s + i, '%', lim - i);
	size_t k = (q ? (size_t)(q - s) : lim) - i;
	memmove(d + i, s + i, k);
	return i + k;
}

/* The % at s[i]: its byte into *out; returns how many bytes of s it took
 * (3), or for a % without two hex digits after it 1 (kept as a %) — or 0
 * when strict (an error). */
static inline size_t decode_pct(char *out, const char *s, size_t i, size_t n, bool strict)
{
	int h = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
	int l = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
	if ((h | l) >= 0) {
		*out = (char)(h << 4 | l);
		return 3;
	}
	if (strict)
		return 0;
	*out = '%';
	return 1;
}

/* d and s apart: every 16-byte block is stored whole before its first %
 * is looked for (o <= i, so the store stays inside d's n bytes, and what
 * it wrote past the % is written again), so an escape costs no call. */
ssize_t weft__adecode_to(char *restrict d, const char *restrict s, size_t n, bool strict)
{
	size_t i = 0, o = 0;
	for (;;) {
#ifdef __SSE2__
		unsigned m = 0;
		while (i + 16 <= n) {
			__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
			_mm_storeu_si128((__m128i *)(void *)(d + o), v);
			m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('%')));
			if (m != 0)
				break;
			i += 16;
			o += 16;
		}
		if (m != 0) {
			size_t k = (size_t)__builtin_ctz(m);
			i += k;
			o += k;
		} else
#endif
		{
			const char *q = memchr(s + i, '%', n - i);
			size_t k = q != NULL ? (size_t)(q - (s + i)) : n - i;
			memcpy(d + o, s + i, k);
			if (q == NULL)
				return (ssize_t)(o + k);
			i += k;
			o += k;
		}
		size_t took = decode_pct(d + o, s, i, n, strict);
		if (took == 0)
			return -1;
		i += took;
		o++;
	}
}

/* In place: d trails s, so only the bytes before each % are moved. */
ssize_t weft__adecode(char *s, size_t n, bool strict)
{
	size_t i = 0, o = 0;
	while (i < n) {
		size_t run = copy_to_pct(s + o, s + i, n - i);
		o += run;
		i += run;
		if (i == n)
			break;
		size_t took = decode_pct(s + o, s, i, n, strict);
		if (took == 0)
			return -1;
		i += took;
		o++;
	}
	return (ssize_t)o;
}
