/* Tests for weft's Assuan server (include/weft/assuan.h).
 *
 * Three tiers:
 *  - the engine (src/assuan/codec.c, private): line assembly fed at every
 *    split point and one byte at a time, the 1002-byte boundary, D-line
 *    encoding byte for byte against libassuan's transcripts (wire notes
 *    V7-V9), decoding, ERR lines;
 *  - the server over real sockets: a raw client in this process writes
 *    bytes to one end of a socketpair (or a Unix socket) and compares the
 *    answers byte for byte with gpg-agent's (wire notes V1-V12, T15, T17;
 *    the server's error source is set to GPG Agent (4) for that);
 *  - interop: the real gpg-connect-agent drives a server in this process
 *    and the weft-kv example (a separate process, built from
 *    examples/assuan/weft-kv.c by tests/assuan/meson.build).
 *
 * Between them: pending commands answered from timers, INQUIRE, descriptor
 * passing, output backpressure, the hand-driven poll() mode, 200 clients,
 * random sessions, and each of the places where libassuan falls short
 * (issue 5): pipelined commands behind a pending one, no 100 ms sleep on a
 * partial line, writes that never block, malformed % in INQUIRE data,
 * FD=n only for passed descriptors, over-long lines, too much INQUIRE data.
 *
 * TEST_ONLY=<word> runs the tests whose name has the word; TEST_TIMES=1
 * prints how long each took.
 *
 * Every test frees what it made; the helper fails a test that leaks an fd.
 * Under ASan, a leaked object fails the run. */
#include "helper.h"
#include "assuan-private.h"

#include <weft/weft.h>
#include <weft/assuan.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define AGENT 4 /* GPG_ERR_SOURCE_GPGAGENT: the source of the transcripts */

/* ---- small helpers --------------------------------------------------------- */

/* Print a buffer with C escapes (for failure messages). */
static void show(const char *what, const char *p, size_t n)
{
	printf("# %s (%zu bytes): \"", what, n);
	for (size_t i = 0; i < n && i < 600; i++) {
		unsigned char ch = (unsigned char)p[i];
		if (ch == '\n')
			printf("\\n");
		else if (ch >= 32 && ch < 127 && ch != '"' && ch != '\\')
			putchar(ch);
		else
			printf("\\x%02x", ch);
	}
	printf("%s\"\n", n > 600 ? "..." : "");
}

#define CHECK_BYTES(got, gotlen, want, wantlen) \
	check_bytes(__FILE__, __LINE__, (const char *)(got), (gotlen), (const char *)(want), (wantlen))

static bool check_bytes(const char *file, int line, const char *got, size_t gotlen, const char *want,
		size_t wantlen)
{
	if (gotlen == wantlen && memcmp(got, want, gotlen) == 0)
		return true;
	t_fail(file, line, "bytes differ");
	show("got ", got, gotlen);
	show("want", want, wantlen);
	return false;
}

#define CHECK_STR(got, want) \
	check_bytes(__FILE__, __LINE__, (got), strlen(got), (want), strlen(want))

static char *repeat(const char *head, char ch, size_t n, const char *tail)
{
	size_t hl = strlen(head), tl = strlen(tail);
	char *s = malloc(hl + n + tl + 1);
	memcpy(s, head, hl);
	memset(s + hl, ch, n);
	memcpy(s + hl + n, tail, tl + 1);
	return s;
}

/* ---- tier 1: the engine ------------------------------------------------------ */

/* What the line assembler made of some input: "L<line>|" per line (with
 * non-printables as \xNN) and "TOO_LONG|" per over-long line. */
struct trace {
	char *p;
	size_t len, cap;
};

static void trace_put(struct trace *t, const char *s, size_t n)
{
	if (t->len + n + 1 > t->cap) {
		t->cap = (t->len + n + 1) * 2;
		t->p = realloc(t->p, t->cap);
	}
	memcpy(t->p + t->len, s, n);
	t->len += n;
	t->p[t->len] = '\0';
}

static void trace_drain(struct weft__ain *in, struct trace *t)
{
	for (;;) {
		char *line;
		size_t len;
		enum weft__aline k = weft__ain_next(in, &line, &len);
		if (k == WEFT__ALINE_NONE)
			return;
		if (k == WEFT__ALINE_TOO_LONG) {
			trace_put(t, "TOO_LONG|", 9);
			continue;
		}
		CHECK_EQ(line[len], '\0');
		CHECK(len <= WEFT_ASSUAN_LINELENGTH - 1); /* 1001 chars + LF */
		trace_put(t, "L", 1);
		for (size_t i = 0; i < len; i++) {
			unsigned char ch = (unsigned char)line[i];
			if (ch >= 32 && ch < 127) {
				trace_put(t, line + i, 1);
			} else {
				char b[8];
				snprintf(b, sizeof b, "\\x%02x", ch);
				trace_put(t, b, 4);
			}
		}
		trace_put(t, "|", 1);
	}
}

/* Feed input in chunks of the given sizes (cycled) through a buffer of
 * capacity cap, as a driver does: compact, append, take lines. */
static char *assemble(const char *input, size_t n, const size_t *chunks, size_t nchunks, size_t cap)
{
	struct weft__ain in = {.buf = malloc(cap), .cap = cap};
	struct trace t = {0};
	trace_put(&t, "", 0);
	size_t pos = 0, ci = 0;
	while (pos < n) {
		size_t room = weft__ain_compact(&in);
		CHECK(room > 0); /* bounded memory: there is always room */
		if (room == 0)
			break;
		size_t k = chunks[ci++ % nchunks];
		if (k > room)
			k = room;
		if (k > n - pos)
			k = n - pos;
		memcpy(in.buf + in.len, input + pos, k);
		in.len += k;
		pos += k;
		trace_drain(&in, &t);
	}
	free(in.buf);
	return t.p;
}

/* Every split point in two, and one byte at a time, give what one chunk
 * gives, and that is `want`. */
static void check_assembly(const char *input, size_t n, const char *want)
{
	size_t whole[1] = {n};
	char *ref = assemble(input, n, whole, 1, 16384);
	CHECK_STR(ref, want);
	free(ref);
	size_t one[1] = {1};
	char *t = assemble(input, n, one, 1, 16384);
	CHECK_STR(t, want);
	free(t);
	int bad = 0;
	for (size_t split = 1; split < n; split++) {
		size_t two[2] = {split, n};
		t = assemble(input, n, two, 2, 16384);
		if (strcmp(t, want) != 0 && bad++ == 0) {
			printf("# split at %zu\n", split);
			CHECK_STR(t, want);
		}
		free(t);
	}
	CHECK_EQ(bad, 0);
	/* A small buffer (2 lines' worth) and odd chunks: same result. */
	size_t odd[3] = {7, 1000, 333};
	t = assemble(input, n, odd, 3, 2048);
	CHECK_STR(t, want);
	free(t);
}

static void test_engine_lines(void)
{
	static const char in1[] = "NOP\nnop\r\nGETINFO\t \tversion\nGETINFO version\r\r\n# comment\n\nNOP\x00ignored\nX\r\n\r\n";
	check_assembly(in1, sizeof in1 - 1,
			"LNOP|Lnop|LGETINFO\\x09 \\x09version|LGETINFO version\\x0d|L# comment|L|LNOP\\x00ignored|LX|L|");
	/* An incomplete last line stays inside. */
	check_assembly("NOP\nNO", 6, "LNOP|");
	/* A lone CR is not a line end; only one CR before the LF is cut. */
	check_assembly("A\rB\n\r\r\n", 7, "LA\\x0dB|L\\x0d|");
	/* The server keeps a read in flight into buf + off + len while it
	 * takes the lines already there (a pending command finished): the
	 * bytes that land there must be the next ones, also when every
	 * buffered line was taken.  (Bug: off went back to 0 when the
	 * buffer emptied, and the next read's bytes were lost.) */
	struct weft__ain in = {.buf = malloc(64), .cap = 64};
	memcpy(in.buf, "NOP\nECHO x\n", 11);
	in.len = 11;
	char *target = in.buf + in.off + in.len; /* the read in flight */
	struct trace t = {0};
	trace_put(&t, "", 0);
	trace_drain(&in, &t);
	memcpy(target, "BYE\n", 4);
	in.len += 4;
	trace_drain(&in, &t);
	CHECK_STR(t.p, "LNOP|LECHO x|LBYE|");
	free(t.p);
	free(in.buf);
}

/* T15: a line with its LF fits in 1002 bytes. */
static void test_engine_line_limit(void)
{
	struct {
		size_t chars;
		const char *end;
		bool ok;
	} cases[] = {
		{1000, "\n", true}, {1001, "\n", true}, {1002, "\n", false},
		{1000, "\r\n", true}, {1001, "\r\n", false}, {2000, "\n", false},
		{40000, "\n", false},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		/* "NOP xxx...x" of `chars` characters, then "NOP\n". */
		char *line = repeat("NOP ", 'x', cases[i].chars - 4, cases[i].end);
		size_t ll = strlen(line);
		char *input = malloc(ll + 5);
		memcpy(input, line, ll);
		memcpy(input + ll, "NOP\n", 5);
		char *want;
		if (cases[i].ok) {
			want = malloc(cases[i].chars + 8);
			snprintf(want, cases[i].chars + 8, "L%.*s|LNOP|", (int)cases[i].chars, line);
		} else {
			want = strdup("TOO_LONG|LNOP|");
		}
		if (cases[i].chars <= 2000) {
			check_assembly(input, ll + 4, want);
		} else {
			/* Long: whole, one byte at a time, and odd chunks through
			 * a 2 KiB buffer (bounded memory). */
			size_t one[1] = {1}, odd[3] = {7, 1000, 333}, whole[1] = {ll + 4};
			char *t = assemble(input, ll + 4, one, 1, 2048);
			CHECK_STR(t, want);
			free(t);
			t = assemble(input, ll + 4, odd, 3, 2048);
			CHECK_STR(t, want);
			free(t);
			t = assemble(input, ll + 4, whole, 1, 65536);
			CHECK_STR(t, want);
			free(t);
		}
		free(want);
		free(input);
		free(line);
	}
	/* Two over-long lines in a row, each reported once. */
	char *two = repeat("", 'y', 3000, "\n");
	size_t tl = strlen(two);
	char *input = malloc(2 * tl + 5);
	memcpy(input, two, tl);
	memcpy(input + tl, two, tl);
	memcpy(input + 2 * tl, "NOP\n", 5);
	size_t odd[2] = {1001, 1};
	char *t = assemble(input, 2 * tl + 4, odd, 2, 2048);
	CHECK_STR(t, "TOO_LONG|TOO_LONG|LNOP|");
	free(t);
	free(input);
	free(two);
}

/* Encode data with the engine in the given chunks, flushing at the end. */
static struct weft__abuf encode(const unsigned char *p, size_t n, size_t chunk)
{
	struct weft__abuf b = {0};
	size_t dc = 0;
	for (size_t i = 0; i < n; i += chunk) {
		size_t k = n - i < chunk ? n - i : chunk;
		CHECK_EQ(weft__aenc_data(&b, &dc, p + i, k), 0);
	}
	CHECK_EQ(weft__aenc_data_end(&b, &dc), 0);
	CHECK_EQ(dc, 0);
	return b;
}

static void check_encoding(const unsigned char *data, size_t n, const char *want, size_t wantlen)
{
	static const size_t chunks[] = {1, 2, 3, 7, 996, 997, 998, 999, 4096};
	struct weft__abuf b = encode(data, n, n ? n : 1);
	CHECK_BYTES(b.p, b.len, want, wantlen);
	weft__abuf_free(&b);
	for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
		b = encode(data, n, chunks[i]);
		if (!CHECK_BYTES(b.p, b.len, want, wantlen))
			printf("# chunk %zu\n", chunks[i]);
		weft__abuf_free(&b);
	}
}

static void test_engine_dlines(void)
{
	/* V7: bytes 0x01..0xFF (no space): only %, CR and LF escaped. */
	unsigned char bin[256];
	char want[1024];
	size_t n = 0, w = 0;
	w += (size_t)sprintf(want + w, "D ");
	for (int ch = 1; ch < 256; ch++) {
		if (ch == ' ')
			continue;
		bin[n++] = (unsigned char)ch;
		if (ch == '%' || ch == '\r' || ch == '\n')
			w += (size_t)sprintf(want + w, "%%%02X", ch);
		else
			want[w++] = (char)ch;
	}
	want[w++] = '\n';
	check_encoding(bin, n, want, w);
	/* V7 text: "a b%c\nd\re". */
	check_encoding((const unsigned char *)"a b%c\nd\re", 9, "D a b%25c%0Ad%0De\n", 18);
	/* V8: one D line per flush, NUL raw. */
	struct weft__abuf b = {0};
	size_t dc = 0;
	static const char *names[] = {"GPG_TTY", "TERM", "DISPLAY"};
	for (int i = 0; i < 3; i++) {
		CHECK_EQ(weft__aenc_data(&b, &dc, (const unsigned char *)names[i], strlen(names[i]) + 1), 0);
		CHECK_EQ(weft__aenc_data_end(&b, &dc), 0);
	}
	static const char v8[] = "D GPG_TTY\0\nD TERM\0\nD DISPLAY\0\n";
	CHECK_BYTES(b.p, b.len, v8, sizeof v8 - 1);
	/* A flush with no open line adds nothing. */
	CHECK_EQ(weft__aenc_data_end(&b, &dc), 0);
	CHECK_EQ(b.len, sizeof v8 - 1);
	weft__abuf_free(&b);

	/* V9 chunking: 996 plain bytes per line; an escape at 996/997 makes
	 * a line of 999/1000 characters. */
	unsigned char *big = malloc(2500);
	memset(big, 'x', 2500);
	char *v9 = malloc(4000);
	size_t v = 0;
	char *l;
	l = repeat("D ", 'x', 996, "\n");
	v += (size_t)sprintf(v9 + v, "%s", l);
	v += (size_t)sprintf(v9 + v, "%s", l);
	free(l);
	l = repeat("D ", 'x', 508, "\n");
	v += (size_t)sprintf(v9 + v, "%s", l);
	free(l);
	check_encoding(big, 2500, v9, v);
	for (int k = 0; k < 3; k++) {
		/* BIG2 = "AA" + %*400, BIG3 = "A" + %*400, BIG4 = %*400. */
		const char *head = k == 0 ? "AA" : k == 1 ? "A" : "";
		size_t hl = strlen(head);
		memcpy(big, head, hl);
		memset(big + hl, '%', 400);
		v = (size_t)sprintf(v9, "D %s", head);
		for (int i = 0; i < 332; i++)
			v += (size_t)sprintf(v9 + v, "%%25");
		v += (size_t)sprintf(v9 + v, "\nD ");
		for (int i = 0; i < 68; i++)
			v += (size_t)sprintf(v9 + v, "%%25");
		v += (size_t)sprintf(v9 + v, "\n");
		CHECK_EQ(strchr(v9, '\n') - v9 + 1, (long)(k == 0 ? 1001 : k == 1 ? 1000 : 999));
		check_encoding(big, hl + 400, v9, v);
	}
	/* BIG5 */
	check_encoding((const unsigned char *)"line1\r\nline2", 12, "D line1%0D%0Aline2\n", 19);
	/* Long random data: every line at most 1002 bytes with its LF, and
	 * decoding the lines gives the data back. */
	size_t rn = 100000;
	unsigned char *r = malloc(rn);
	unsigned x = 12345;
	for (size_t i = 0; i < rn; i++) {
		x = x * 1103515245u + 12345u;
		r[i] = (unsigned char)(x >> 16);
	}
	b = encode(r, rn, 1500);
	unsigned char *dec = malloc(rn);
	size_t dn = 0, lines = 0;
	int bad = 0;
	for (size_t i = 0; i < b.len;) {
		char *nl = memchr(b.p + i, '\n', b.len - i);
		REQUIRE(nl != NULL);
		size_t ll = (size_t)(nl - (b.p + i)) + 1;
		if (ll > WEFT_ASSUAN_LINELENGTH || b.p[i] != 'D' || b.p[i + 1] != ' ')
			bad++;
		ssize_t k = weft__adecode(b.p + i + 2, ll - 3, true);
		if (k < 0 || dn + (size_t)k > rn)
			bad++;
		else
			memcpy(dec + dn, b.p + i + 2, (size_t)k), dn += (size_t)k;
		lines++;
		i += ll;
	}
	CHECK_EQ(bad, 0);
	CHECK_EQ(dn, rn);
	CHECK(memcmp(dec, r, rn) == 0);
	CHECK(lines > 100);
	weft__abuf_free(&b);
	free(dec);
	free(r);
	free(v9);
	free(big);
}

/* libassuan's _assuan_cookie_write_data, written from the wire notes'
 * description, as a reference: copy while the line holds fewer than 998
 * characters (an escape takes 3), flush when it reaches 998. */
static size_t ref_encode(char *out, size_t *linelen, const unsigned char *p, size_t n)
{
	size_t o = 0;
	while (n > 0) {
		if (*linelen == 0) {
			out[o++] = 'D';
			out[o++] = ' ';
			*linelen = 2;
		}
		while (n > 0 && *linelen < WEFT_ASSUAN_LINELENGTH - 2 - 2) {
			if (*p == '%' || *p == '\r' || *p == '\n') {
				o += (size_t)sprintf(out + o, "%%%02X", *p);
				*linelen += 3;
			} else {
				out[o++] = (char)*p;
				(*linelen)++;
			}
			p++;
			n--;
		}
		if (*linelen >= WEFT_ASSUAN_LINELENGTH - 2 - 2) {
			out[o++] = '\n';
			*linelen = 0;
		}
	}
	return o;
}

/* Random data, heavy in escapes, sent in random pieces with random
 * flushes: byte-identical to the reference. */
static void test_engine_dlines_model(void)
{
	unsigned x = 2024;
	unsigned char *data = malloc(6000);
	char *ref = malloc(6000 * 3 + 6000);
	int bad = 0;
	for (int round = 0; round < 2000; round++) {
		x = x * 1103515245u + 12345u;
		size_t n = (x >> 8) % 6000;
		unsigned esc = (x >> 4) % 100; /* percent of escaped bytes */
		for (size_t i = 0; i < n; i++) {
			x = x * 1103515245u + 12345u;
			unsigned r = x >> 16;
			data[i] = r % 100 < esc ? "%\r\n"[r % 3] : (unsigned char)(r >> 3);
		}
		struct weft__abuf b = {0};
		size_t dc = 0, ll = 0, rlen = 0;
		for (size_t i = 0; i < n;) {
			x = x * 1103515245u + 12345u;
			size_t k = 1 + (x >> 16) % 1500;
			if (k > n - i)
				k = n - i;
			CHECK_EQ(weft__aenc_data(&b, &dc, data + i, k), 0);
			rlen += ref_encode(ref + rlen, &ll, data + i, k);
			i += k;
			if ((x >> 4) % 7 == 0) { /* an explicit flush */
				CHECK_EQ(weft__aenc_data_end(&b, &dc), 0);
				if (ll) {
					ref[rlen++] = '\n';
					ll = 0;
				}
			}
			CHECK_EQ(dc, ll);
		}
		CHECK_EQ(weft__aenc_data_end(&b, &dc), 0);
		if (ll)
			ref[rlen++] = '\n';
		if ((b.len != rlen || memcmp(b.p, ref, rlen) != 0) && bad++ == 0)
			CHECK_BYTES(b.p, b.len, ref, rlen);
		weft__abuf_free(&b);
	}
	CHECK_EQ(bad, 0);
	free(data);
	free(ref);
}

static int hexdigit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static void test_engine_decode(void)
{
	struct {
		const char *in;
		const char *strict; /* NULL: error */
		const char *loose;
	} cases[] = {
		{"plain", "plain", "plain"},
		{"%41%4a%4A%25", "AJJ%", "AJJ%"},
		{"(flags eddsa%29)", "(flags eddsa))", "(flags eddsa))"},
		{"%0D%0A", "\r\n", "\r\n"},
		{"abc%", NULL, "abc%"},
		{"%4", NULL, "%4"},
		{"x%zz", NULL, "x%zz"},
		{"%", NULL, "%"},
		{"%4g", NULL, "%4g"},
		{"", "", ""},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char buf[64];
		size_t n = strlen(cases[i].in);
		memcpy(buf, cases[i].in, n + 1);
		ssize_t k = weft__adecode(buf, n, true);
		if (cases[i].strict == NULL) {
			CHECK_EQ(k, -1);
		} else {
			CHECK_EQ(k, (ssize_t)strlen(cases[i].strict));
			if (k >= 0)
				CHECK_BYTES(buf, (size_t)k, cases[i].strict, strlen(cases[i].strict));
		}
		memcpy(buf, cases[i].in, n + 1);
		k = weft__adecode(buf, n, false);
		CHECK_EQ(k, (ssize_t)strlen(cases[i].loose));
		if (k >= 0)
			CHECK_BYTES(buf, (size_t)k, cases[i].loose, strlen(cases[i].loose));
	}
	/* Decoding stops at n: a NUL inside is data. */
	char nul[] = "a\0%41";
	CHECK_EQ(weft__adecode(nul, 5, true), 3);
	CHECK_BYTES(nul, 3, "a\0A", 3);

	/* Both decoders (in place, and into another buffer, which works a
	 * 16-byte block at a time) agree with a byte-by-byte reading on
	 * escapes at every offset, across block edges and at the very end. */
	static const char alphabet[] = "%%%4aF0g\nx";
	uint32_t seed = 12345;
	for (int round = 0; round < 20000; round++) {
		char in[80], a[80], b[80], want[80];
		size_t n = (size_t)(round % 80);
		for (size_t i = 0; i < n; i++) {
			seed = seed * 1103515245u + 12345u;
			in[i] = alphabet[(seed >> 16) % (sizeof alphabet - 1)];
		}
		for (int strict = 0; strict < 2; strict++) {
			ssize_t w = 0;
			for (size_t i = 0; i < n && w >= 0;) {
				int h = i + 2 < n ? hexdigit(in[i + 1]) : -1, l = i + 2 < n ? hexdigit(in[i + 2]) : -1;
				if (in[i] != '%') {
					want[w++] = in[i++];
				} else if (h >= 0 && l >= 0) {
					want[w++] = (char)(h << 4 | l);
					i += 3;
				} else if (strict) {
					w = -1;
				} else {
					want[w++] = in[i++];
				}
			}
			memcpy(a, in, n);
			ssize_t ka = weft__adecode(a, n, strict);
			ssize_t kb = weft__adecode_to(b, in, n, strict);
			CHECK_EQ(ka, w);
			CHECK_EQ(kb, w);
			if (w > 0 && ka == w && kb == w) {
				CHECK_BYTES(a, (size_t)w, want, (size_t)w);
				CHECK_BYTES(b, (size_t)w, want, (size_t)w);
			}
		}
	}
}

static void test_engine_responses(void)
{
	struct weft__abuf b = {0};
	CHECK_EQ(weft__aenc_err(&b, gpg_err_make(AGENT, GPG_ERR_ASS_UNKNOWN_CMD), NULL), 0);
	CHECK_EQ(weft__aenc_err(&b, gpg_err_make(AGENT, GPG_ERR_ASS_SYNTAX), "leading white-space"), 0);
	CHECK_EQ(weft__aenc_err(&b, gpg_err_make(GPG_ERR_SOURCE_USER_1, GPG_ERR_ASS_UNKNOWN_CMD), NULL), 0);
	CHECK_EQ(weft__aenc_err(&b, gpg_err_make(10, GPG_ERR_ASS_UNKNOWN_CMD), NULL), 0);
	CHECK_EQ(weft__aenc_err(&b, gpg_err_make(GPG_ERR_SOURCE_GCRYPT, GPG_ERR_INV_OBJ), NULL), 0);
	CHECK_EQ(weft__aenc_err(&b, gpg_err_make(AGENT, GPG_ERR_NOT_FOUND), "No such envvar"), 0);
	static const char want[] =
		"ERR 67109139 Unknown IPC command <GPG Agent>\n"
		"ERR 67109140 IPC syntax error <GPG Agent> - leading white-space\n"
		"ERR 536871187 Unknown IPC command <User defined source 1>\n"
		"ERR 167772435 Unknown IPC command <Dirmngr>\n"
		"ERR 16777281 Invalid object <gcrypt>\n"
		"ERR 67108891 Not found <GPG Agent> - No such envvar\n";
	CHECK_BYTES(b.p, b.len, want, sizeof want - 1);
	b.len = 0;
	/* libassuan's %.100s: a long text is cut; an LF in it cannot break
	 * the framing. */
	char *text = repeat("", 't', 300, "");
	CHECK_EQ(weft__aenc_err(&b, gpg_err_make(AGENT, GPG_ERR_GENERAL), text), 0);
	char *w = repeat("ERR 67108865 General error <GPG Agent> - ", 't', 100, "\n");
	CHECK_BYTES(b.p, b.len, w, strlen(w));
	free(w);
	free(text);
	b.len = 0;
	CHECK_EQ(weft__aenc_err(&b, gpg_err_make(AGENT, GPG_ERR_GENERAL), "two\nlines"), 0);
	CHECK_BYTES(b.p, b.len, "ERR 67108865 General error <GPG Agent> - two\n", 45);
	b.len = 0;
	/* Plain lines. */
	CHECK_EQ(weft__aenc_line(&b, "OK", NULL), 0);
	CHECK_EQ(weft__aenc_line(&b, "OK", "closing connection"), 0);
	CHECK_EQ(weft__aenc_line(&b, "S KEYINFO", "F80B D - - -"), 0);
	CHECK_EQ(weft__aenc_line(&b, "INQUIRE", "KEYPARAM"), 0);
	CHECK_EQ(weft__aenc_line(&b, "END", NULL), 0);
	CHECK_EQ(weft__aenc_line(&b, "#", "a comment"), 0);
	static const char lines[] = "OK\nOK closing connection\nS KEYINFO F80B D - - -\nINQUIRE KEYPARAM\nEND\n# a comment\n";
	CHECK_BYTES(b.p, b.len, lines, sizeof lines - 1);
	size_t before = b.len;
	CHECK_EQ(weft__aenc_line(&b, "OK", "a\nb"), -EINVAL);
	/* A line with its LF fits in 1002 bytes. */
	char *t998 = repeat("", 'o', 998, "");
	CHECK_EQ(weft__aenc_line(&b, "OK", t998), 0);
	char *t999 = repeat("", 'o', 999, "");
	CHECK_EQ(weft__aenc_line(&b, "OK", t999), -EINVAL);
	CHECK_EQ(b.len, before + 1002);
	free(t998);
	free(t999);
	weft__abuf_free(&b);
}

/* ---- tier 2: the server over real sockets ------------------------------------ */

/* What the hooks and handlers saw. */
static struct {
	int open, close, reset, cancel_cmd, bye, input, output, cancelled, async_done;
	char option[512];  /* "name=value;" per OPTION */
	char pre[512];     /* "NAME;" per command */
	char post[512];    /* "<err>;" per answer */
	char input_args[128];
	weft_assuan_err reset_answer;   /* what the reset hook returns */
	bool refuse_echo;               /* pre_cmd refuses ECHO */
	bool refuse_input;              /* the input hook refuses */
	int register_in_pre;            /* pre_cmd registers a command */
	weft_assuan_server **free_in_post; /* post_cmd frees this server */
	weft_assuan_err inq_err;        /* the last inquire continuation's */
	unsigned char inq_data[4096];
	size_t inq_len, inq_total; /* first bytes kept; total length */
	uint32_t inq_sum;          /* FNV-1a of all the bytes */
	int taken_fd;
	pid_t cred_pid;
	uid_t cred_uid;
} g;

/* Append "a[=b];" to a log. */
static void log_add(char *log, size_t size, const char *a, const char *b)
{
	size_t n = strlen(log);
	snprintf(log + n, size - n, "%s%s%s;", a, b ? "=" : "", b ? b : "");
}

static void h_open(weft_assuan_conn *c, void *data) { (void)c; (void)data; g.open++; }
static void h_close(weft_assuan_conn *c, void *data) { (void)c; (void)data; g.close++; }

static weft_assuan_err h_option(weft_assuan_conn *c, const char *name, const char *value, void *data)
{
	(void)data;
	log_add(g.option, sizeof g.option, name, value);
	if (strcmp(name, "frobnicate") == 0)
		return weft_assuan_err_make(weft_assuan_conn_server(c), GPG_ERR_UNKNOWN_OPTION);
	return 0;
}

static weft_assuan_err h_reset(weft_assuan_conn *c, const char *args, void *data)
{
	(void)c; (void)args; (void)data;
	g.reset++;
	return g.reset_answer;
}

static void h_cancel(weft_assuan_conn *c, const char *args, void *data) { (void)c; (void)args; (void)data; g.cancel_cmd++; }
static void h_bye(weft_assuan_conn *c, const char *args, void *data) { (void)c; (void)args; (void)data; g.bye++; }

static weft_assuan_err h_input(weft_assuan_conn *c, const char *args, void *data)
{
	(void)data;
	g.input++;
	snprintf(g.input_args, sizeof g.input_args, "%s", args);
	if (g.refuse_input)
		return weft_assuan_err_make(weft_assuan_conn_server(c), GPG_ERR_FORBIDDEN);
	return 0;
}

static weft_assuan_err h_output(weft_assuan_conn *c, const char *args, void *data)
{
	(void)c; (void)args; (void)data;
	g.output++;
	return 0;
}

static weft_assuan_err cmd_lower_fwd(weft_assuan_conn *c, char *args, void *data);

static weft_assuan_err h_pre(weft_assuan_conn *c, const char *cmd, void *data)
{
	(void)data;
	log_add(g.pre, sizeof g.pre, cmd, NULL);
	if (g.register_in_pre > 0) {
		/* A command table that grows under a dispatch. */
		char name[32];
		snprintf(name, sizeof name, "DYN%d", g.register_in_pre++);
		CHECK_EQ(weft_assuan_register(weft_assuan_conn_server(c), name, cmd_lower_fwd, NULL, NULL), 0);
	}
	if (g.refuse_echo && strcmp(cmd, "ECHO") == 0)
		return weft_assuan_err_make(weft_assuan_conn_server(c), GPG_ERR_FORBIDDEN);
	return 0;
}

static void h_post(weft_assuan_conn *c, weft_assuan_err err, void *data)
{
	(void)c; (void)data;
	char n[16];
	snprintf(n, sizeof n, "%u", err);
	log_add(g.post, sizeof g.post, n, NULL);
	if (g.free_in_post != NULL) {
		weft_assuan_server_free(*g.free_in_post);
		*g.free_in_post = NULL;
		g.free_in_post = NULL;
	}
}

static const weft_assuan_hooks all_hooks = {
	.open = h_open, .close = h_close, .option = h_option, .reset = h_reset,
	.cancel = h_cancel, .bye = h_bye, .input = h_input, .output = h_output,
	.pre_cmd = h_pre, .post_cmd = h_post,
};

static weft_assuan_err mk(weft_assuan_conn *c, gpg_err_code_t code)
{
	return weft_assuan_err_make(weft_assuan_conn_server(c), code);
}

/* ECHO text: the text back as D data. */
static weft_assuan_err cmd_echo(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	if (*args)
		CHECK_EQ(weft_assuan_send_data(c, args, strlen(args)), 0);
	return 0;
}

static weft_assuan_err cmd_status(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	CHECK_EQ(weft_assuan_write_status(c, "EVENTCOUNTER", "0 0 0"), 0);
	CHECK_EQ(weft_assuan_write_status(c, "EMPTY", NULL), 0);
	CHECK_EQ(weft_assuan_write_status(c, "BAD\nKW", NULL), -EINVAL);
	return 0;
}

static weft_assuan_err cmd_fail(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	return weft_assuan_set_error(c, mk(c, GPG_ERR_NOT_FOUND), "No such envvar");
}

/* The text is for another error value: not used. */
static weft_assuan_err cmd_failplain(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	weft_assuan_set_error(c, mk(c, GPG_ERR_NOT_FOUND), "not this one");
	return mk(c, GPG_ERR_MISSING_VALUE);
}

static weft_assuan_err cmd_okay(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	CHECK_EQ(weft_assuan_set_okay_line(c, "a\nb"), -EINVAL);
	CHECK_EQ(weft_assuan_set_okay_line(c, "hello there"), 0);
	return 0;
}

/* CLOSE [ok]: answer and close after the answer is written. */
static weft_assuan_err cmd_close(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	weft_assuan_set_force_close(c);
	return strcmp(args, "ok") == 0 ? 0 : weft_assuan_set_error(c, mk(c, GPG_ERR_NOT_FOUND), "ignored");
}

static weft_assuan_err cmd_lower(weft_assuan_conn *c, char *args, void *data)
{
	(void)c; (void)args; (void)data;
	return 0;
}

static weft_assuan_err cmd_lower_fwd(weft_assuan_conn *c, char *args, void *data)
{
	return cmd_lower(c, args, data);
}

static weft_assuan_err cmd_cred(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	CHECK_EQ(weft_assuan_peer_cred(c, &g.cred_pid, &g.cred_uid, NULL), 0);
	return 0;
}

/* ASYNC ms: "S PROGRESS start" now, "D late" and OK after ms from a timer. */
struct async_op {
	weft_assuan_conn *c;
	weft_timer *t;
};

static void async_cancel(weft_assuan_conn *c, void *data)
{
	(void)c;
	struct async_op *op = data;
	g.cancelled++;
	weft_timer_free(op->t);
	free(op);
}

static void async_fire(weft_timer *t, void *data)
{
	(void)t;
	struct async_op *op = data;
	weft_assuan_conn *c = op->c;
	weft_timer_free(op->t);
	free(op);
	g.async_done++;
	CHECK_EQ(weft_assuan_send_data(c, "late", 4), 0);
	CHECK_EQ(weft_assuan_process_done(c, 0), 0);
	CHECK_EQ(weft_assuan_process_done(c, 0), -EINVAL); /* no command in flight */
}

static weft_assuan_err cmd_async(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	struct async_op *op = calloc(1, sizeof *op);
	op->c = c;
	weft_loop *loop = weft_stream_loop(weft_assuan_conn_stream(c));
	CHECK_EQ(weft_timer_new(loop, async_fire, op, &op->t), 0);
	CHECK_EQ(weft_timer_start(op->t, strtoul(args, NULL, 10), 0), 0);
	CHECK_EQ(weft_assuan_on_cancel(c, async_cancel, op), 0);
	CHECK_EQ(weft_assuan_write_status(c, "PROGRESS", "start"), 0);
	return WEFT_ASSUAN_PENDING;
}

/* PUT [maxlen]: INQUIRE VALUE; OK "got N" or the inquire's error. */
static weft_assuan_err put_done(weft_assuan_conn *c, weft_assuan_err err, unsigned char *buf, size_t len,
		void *data)
{
	(void)data;
	g.inq_err = err;
	if (err == 0) {
		g.inq_len = len < sizeof g.inq_data ? len : sizeof g.inq_data;
		g.inq_total = len;
		g.inq_sum = 2166136261u;
		for (size_t i = 0; i < len; i++)
			g.inq_sum = (g.inq_sum ^ buf[i]) * 16777619u;
		CHECK(buf != NULL);
		CHECK_EQ(buf[len], 0); /* NUL after the data */
		memcpy(g.inq_data, buf, g.inq_len);
		char okay[64];
		snprintf(okay, sizeof okay, "got %zu", len);
		weft_assuan_set_okay_line(c, okay);
	}
	return err;
}

static weft_assuan_err cmd_put(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	g.inq_err = 1;
	CHECK_EQ(weft_assuan_inquire(c, "VALUE", strtoul(args, NULL, 10), put_done, NULL), 0);
	CHECK_EQ(weft_assuan_inquire(c, "AGAIN", 0, put_done, NULL), -EBUSY);
	CHECK_EQ(weft_assuan_write_status(c, "INQUIRE_MAXLEN", args), 0);
	return WEFT_ASSUAN_PENDING;
}

/* LATEINQ: pending; a timer starts the INQUIRE later. */
struct lateinq {
	weft_assuan_conn *c;
	weft_timer *t;
};

static void lateinq_cancel(weft_assuan_conn *c, void *data)
{
	(void)c;
	struct lateinq *li = data;
	weft_timer_free(li->t);
	free(li);
}

static void lateinq_fire(weft_timer *t, void *data)
{
	(void)t;
	struct lateinq *li = data;
	weft_assuan_conn *c = li->c;
	CHECK_EQ(weft_assuan_inquire(c, "LATE", 100, put_done, NULL), 0);
	weft_timer_free(li->t);
	free(li);
	CHECK_EQ(weft_assuan_on_cancel(c, NULL, NULL), 0);
}

static weft_assuan_err cmd_lateinq(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	struct lateinq *li = calloc(1, sizeof *li);
	li->c = c;
	CHECK_EQ(weft_timer_new(weft_stream_loop(weft_assuan_conn_stream(c)), lateinq_fire, li, &li->t), 0);
	CHECK_EQ(weft_timer_start(li->t, 20, 0), 0);
	CHECK_EQ(weft_assuan_on_cancel(c, lateinq_cancel, li), 0);
	return WEFT_ASSUAN_PENDING;
}

/* PUT2: two inquiries in a row; D "<first>+<second>". */
static weft_assuan_err put2_second(weft_assuan_conn *c, weft_assuan_err err, unsigned char *buf, size_t len,
		void *data)
{
	char *first = data;
	if (err == 0) {
		CHECK_EQ(weft_assuan_send_data(c, first, strlen(first)), 0);
		CHECK_EQ(weft_assuan_send_data(c, "+", 1), 0);
		CHECK_EQ(weft_assuan_send_data(c, buf, len), 0);
	}
	free(first);
	return err;
}

static weft_assuan_err put2_first(weft_assuan_conn *c, weft_assuan_err err, unsigned char *buf, size_t len,
		void *data)
{
	(void)data;
	if (err != 0)
		return err;
	char *first = strndup((char *)buf, len);
	CHECK_EQ(weft_assuan_inquire(c, "SECOND", 100, put2_second, first), 0);
	return WEFT_ASSUAN_PENDING;
}

static weft_assuan_err cmd_put2(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	CHECK_EQ(weft_assuan_inquire(c, "FIRST", 100, put2_first, NULL), 0);
	return WEFT_ASSUAN_PENDING;
}

/* FDINFO: "OK <input ino> <output ino>" (- when none). */
static void ino_text(int fd, char *buf, size_t size)
{
	struct stat st;
	if (fd >= 0 && fstat(fd, &st) == 0)
		snprintf(buf, size, "%lu", (unsigned long)st.st_ino);
	else
		snprintf(buf, size, "-");
}

static weft_assuan_err cmd_fdinfo(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	char a[32], b[32], okay[80];
	ino_text(weft_assuan_input_fd(c), a, sizeof a);
	ino_text(weft_assuan_output_fd(c), b, sizeof b);
	snprintf(okay, sizeof okay, "%s %s", a, b);
	weft_assuan_set_okay_line(c, okay);
	return 0;
}

static weft_assuan_err cmd_take(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	g.taken_fd = weft_assuan_take_input_fd(c);
	return g.taken_fd >= 0 ? 0 : mk(c, GPG_ERR_ASS_NO_INPUT);
}

/* RECV: take the oldest passed descriptor (assuan_receivefd); OK <ino>. */
static weft_assuan_err cmd_recv(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	int fd = weft_assuan_receive_fd(c);
	if (fd < 0)
		return mk(c, GPG_ERR_ASS_NO_INPUT);
	char okay[32];
	ino_text(fd, okay, sizeof okay);
	close(fd);
	weft_assuan_set_okay_line(c, okay);
	return 0;
}

static const char getval_help[] = "GETVAL <key>\n\nReturn the value for KEY from the special environment as created by\nPUTVAL.";

static void register_test_commands(weft_assuan_server *srv)
{
	CHECK_EQ(weft_assuan_register(srv, "ECHO", cmd_echo, NULL, "ECHO <text>\nSend the text back."), 0);
	CHECK_EQ(weft_assuan_register(srv, "STATUS", cmd_status, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "FAIL", cmd_fail, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "FAILPLAIN", cmd_failplain, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "OKAY", cmd_okay, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "CLOSE", cmd_close, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "lower", cmd_lower, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "CRED", cmd_cred, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "ASYNC", cmd_async, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "PUT", cmd_put, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "PUT2", cmd_put2, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "FDINFO", cmd_fdinfo, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "TAKE", cmd_take, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "RECV", cmd_recv, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "LATEINQ", cmd_lateinq, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "GETVAL", cmd_lower, NULL, getval_help), 0);
	CHECK_EQ(weft_assuan_register(srv, "SETKEY", cmd_lower, NULL, "SIGKEY <hexstring_with_keygrip>\nSETKEY <hexstring_with_keygrip>"), 0);
	CHECK_EQ(weft_assuan_register(srv, "INPUT", NULL, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(srv, "OUTPUT", NULL, NULL, NULL), 0);
}

/* A server on its own loop and a raw client on the other end of a socket
 * (or two pipes). */
struct fix {
	weft_loop *loop;
	weft_assuan_server *srv;
	weft_assuan_conn *conn;
	int rfd, wfd; /* the client's ends (the same socket, or two pipes) */
	char *rx;     /* received, not yet compared */
	size_t rxlen, rxcap;
	bool eof;
};

/* Without pre_cmd and post_cmd hooks a command that sets nothing special
 * ends on the server's short path (OK appended, nothing to clear): the
 * second run of the server tests uses that. */
static bool g_no_cmd_hooks;

static void fix_server(struct fix *f)
{
	memset(f, 0, sizeof *f);
	memset(&g, 0, sizeof g);
	g.taken_fd = -1;
	f->rfd = f->wfd = -1;
	CHECK_EQ(weft_loop_new(&f->loop), 0);
	CHECK_EQ(weft_assuan_server_new(f->loop, &f->srv), 0);
	weft_assuan_server_set_err_source(f->srv, AGENT);
	weft_assuan_hooks hooks = all_hooks;
	if (g_no_cmd_hooks)
		hooks.pre_cmd = NULL, hooks.post_cmd = NULL;
	weft_assuan_server_set_hooks(f->srv, &hooks, NULL);
	register_test_commands(f->srv);
}

/* Server plus one client on a socketpair. */
static void fix_open(struct fix *f)
{
	fix_server(f);
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	CHECK_EQ(weft_assuan_server_adopt_fd(f->srv, sv[0], &f->conn), 0);
	f->rfd = f->wfd = sv[1];
}

/* Run the loop and read what the client gets until want_lines LFs are in
 * rx (or EOF, or ms passed). */
static void pump(struct fix *f, size_t want_lines, unsigned ms)
{
	uint64_t end = t_now_ms() + ms;
	if (f->rfd >= 0)
		fcntl(f->rfd, F_SETFL, fcntl(f->rfd, F_GETFL) | O_NONBLOCK);
	for (;;) {
		weft_loop_run(f->loop, WEFT_RUN_NOWAIT);
		for (;;) {
			if (f->rxcap - f->rxlen < 65536) {
				f->rxcap = f->rxcap * 2 + 65536;
				f->rx = realloc(f->rx, f->rxcap);
			}
			ssize_t n = f->rfd >= 0 ? read(f->rfd, f->rx + f->rxlen, f->rxcap - f->rxlen) : -1;
			if (n > 0) {
				f->rxlen += (size_t)n;
				continue;
			}
			if (n == 0)
				f->eof = true;
			break;
		}
		size_t lines = 0;
		for (size_t i = 0; i < f->rxlen; i++)
			lines += f->rx[i] == '\n';
		if (lines >= want_lines || f->eof || t_now_ms() >= end)
			return;
		struct pollfd p[2] = {{.fd = f->rfd, .events = POLLIN}, {.fd = weft_loop_get_fd(f->loop), .events = POLLIN}};
		int64_t to = weft_loop_get_timeout(f->loop);
		poll(p, 2, to >= 0 && to < 20 ? (int)to : 20);
	}
}

static void fix_send(struct fix *f, const void *p, size_t n)
{
	fcntl(f->wfd, F_SETFL, fcntl(f->wfd, F_GETFL) | O_NONBLOCK);
	const char *s = p;
	while (n > 0) {
		ssize_t k = write(f->wfd, s, n);
		if (k < 0 && errno == EAGAIN) {
			pump(f, (size_t)-1, 1); /* let the server read */
			continue;
		}
		REQUIRE(k > 0);
		s += k;
		n -= (size_t)k;
	}
}

/* Expect exactly these bytes next (waits for as many lines). */
#define EXPECT(f, want) expect_bytes(__FILE__, __LINE__, (f), (want), strlen(want))
#define EXPECTN(f, want, n) expect_bytes(__FILE__, __LINE__, (f), (want), (n))

static bool expect_bytes(const char *file, int line, struct fix *f, const char *want, size_t n)
{
	size_t lines = 0;
	for (size_t i = 0; i < n; i++)
		lines += want[i] == '\n';
	pump(f, lines, 5000);
	size_t take = 0, seen = 0;
	while (take < f->rxlen && seen < lines)
		seen += f->rx[take++] == '\n';
	bool ok = check_bytes(file, line, f->rx, take, want, n);
	memmove(f->rx, f->rx + take, f->rxlen - take);
	f->rxlen -= take;
	return ok;
}

/* Send a line (or several) and expect the answer. */
#define TALK(f, send, want) (fix_send((f), (send), strlen(send)), EXPECT((f), (want)))

#define EXPECT_EOF(f) expect_eof(__FILE__, __LINE__, (f))
static void expect_eof(const char *file, int line, struct fix *f)
{
	pump(f, (size_t)-1, 5000);
	if (f->rxlen != 0) {
		t_fail(file, line, "unexpected bytes before EOF");
		show("extra", f->rx, f->rxlen);
	}
	if (!f->eof)
		t_fail(file, line, "no EOF");
}

/* Nothing more arrives within ms. */
#define EXPECT_QUIET(f, ms) expect_quiet(__FILE__, __LINE__, (f), (ms))
static void expect_quiet(const char *file, int line, struct fix *f, unsigned ms)
{
	pump(f, (size_t)-1, ms);
	if (f->rxlen != 0) {
		t_fail(file, line, "unexpected bytes");
		show("extra", f->rx, f->rxlen);
	}
}

static void run_until_closed(struct fix *f)
{
	uint64_t end = t_now_ms() + 5000;
	while ((weft_assuan_server_connections(f->srv) > 0 || weft_loop_get_timeout(f->loop) == 0) && t_now_ms() < end)
		pump(f, (size_t)-1, 1);
}

/* Close the client, let the server see it, free everything. */
static void fix_close(struct fix *f)
{
	if (f->rfd >= 0)
		close(f->rfd);
	if (f->wfd >= 0 && f->wfd != f->rfd)
		close(f->wfd);
	f->rfd = f->wfd = -1;
	if (f->srv) {
		uint64_t end = t_now_ms() + 5000;
		while (weft_assuan_server_connections(f->srv) > 0 && t_now_ms() < end) {
			weft_loop_run(f->loop, WEFT_RUN_NOWAIT);
			t_sleep_ms(1);
		}
		CHECK_EQ(weft_assuan_server_connections(f->srv), 0);
		weft_assuan_server_free(f->srv);
	}
	int r = -EBUSY;
	for (int i = 0; i < 1000 && (r = weft_loop_free(f->loop)) == -EBUSY; i++)
		weft_loop_run(f->loop, WEFT_RUN_NOWAIT);
	CHECK_EQ(r, 0);
	free(f->rx);
	CHECK_EQ(g.open, g.close);
}

static char g_greeting[96];

static const char *greeting(void)
{
	snprintf(g_greeting, sizeof g_greeting, "OK Pleased to meet you, process %d\n", (int)getpid());
	return g_greeting;
}

static size_t grab(int fd, char *buf, size_t have, size_t cap);

/* ---- greeting, built-ins, errors -------------------------------------------------- */

static void test_greeting(void)
{
	struct fix f;
	/* Default: the peer's pid (SO_PEERCRED), as libassuan 2.5. */
	fix_open(&f);
	EXPECT(&f, greeting());
	CHECK_EQ(g.open, 1);
	fix_close(&f);
	CHECK_EQ(g.close, 1);
	/* A custom one-line and a multi-line greeting (T18). */
	fix_server(&f);
	CHECK_EQ(weft_assuan_server_set_hello(f.srv, "Dirmngr 2.2.40 at your service"), 0);
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	CHECK_EQ(weft_assuan_server_adopt_fd(f.srv, sv[0], NULL), 0);
	f.rfd = f.wfd = sv[1];
	EXPECT(&f, "OK Dirmngr 2.2.40 at your service\n");
	close(sv[1]);
	CHECK_EQ(weft_assuan_server_set_hello(f.srv, "Home: /tmp/h\nConfig: /tmp/h/dirmngr.conf\nDirmngr ready"), 0);
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	CHECK_EQ(weft_assuan_server_adopt_fd(f.srv, sv[0], NULL), 0);
	f.rfd = f.wfd = sv[1];
	EXPECT(&f, "# Home: /tmp/h\n# Config: /tmp/h/dirmngr.conf\nOK Dirmngr ready\n");
	TALK(&f, "FOO\n", "ERR 67109139 Unknown IPC command <GPG Agent>\n");
	char *toolong = repeat("", 'h', 1000, "");
	CHECK_EQ(weft_assuan_server_set_hello(f.srv, toolong), -EINVAL);
	free(toolong);
	fix_close(&f);
	/* A pipe server: no pid known unless set (T17, T18). */
	for (int withpid = 0; withpid < 2; withpid++) {
		fix_server(&f);
		int in[2], out[2];
		CHECK_EQ(pipe2(in, O_CLOEXEC), 0);
		CHECK_EQ(pipe2(out, O_CLOEXEC), 0);
		weft_assuan_conn *c = NULL;
		CHECK_EQ(weft_assuan_server_adopt_pipe(f.srv, in[0], out[1], &c), 0);
		if (withpid)
			weft_assuan_conn_set_peer_pid(c, 10014);
		f.wfd = in[1];
		f.rfd = out[0];
		EXPECT(&f, withpid ? "OK Pleased to meet you, process 10014\n" : "OK Pleased to meet you\n");
		TALK(&f, "NOP\nINPUT FD\n", "OK\nERR 67108933 Not implemented <GPG Agent> - server does not support sending and receiving of file descriptors\n");
		TALK(&f, "BYE\n", "OK closing connection\n");
		EXPECT_EOF(&f);
		fix_close(&f);
	}
}

/* V1: NOP, case, CRLF, comments and empty lines, pipelining, BYE. */
static void test_basics(void)
{
	struct fix f;
	fix_open(&f);
	EXPECT(&f, greeting());
	TALK(&f, "NOP\n", "OK\n");
	TALK(&f, "nop\r\n", "OK\n");
	TALK(&f, "ECHO 2.2.40\n", "D 2.2.40\nOK\n");
	TALK(&f, "ECHO\t \tversion\n", "D version\nOK\n");
	TALK(&f, "# comment\n\nNOP\nNOP\n", "OK\nOK\n");
	TALK(&f, "# only a comment\n\n\r\n", "");
	EXPECT_QUIET(&f, 20);
	/* Pipelined, split anywhere. */
	static const char many[] = "NOP\nECHO a\nnop\r\n# c\nECHO b\n";
	fix_send(&f, many, 7);
	fix_send(&f, many + 7, sizeof many - 1 - 7);
	EXPECT(&f, "OK\nD a\nOK\nOK\nD b\nOK\n");
	/* One byte at a time. */
	for (const char *p = "ECHO slow\n"; *p; p++) {
		fix_send(&f, p, 1);
		pump(&f, (size_t)-1, 1);
	}
	EXPECT(&f, "D slow\nOK\n");
	TALK(&f, "BYE\n", "OK closing connection\n");
	EXPECT_EOF(&f);
	CHECK_EQ(g.bye, 1);
	run_until_closed(&f);
	CHECK_EQ(g.close, 1);
	fix_close(&f);
}

/* V2: errors and the built-ins that are not implemented. */
static void test_errors(void)
{
	struct fix f;
	fix_open(&f);
	EXPECT(&f, greeting());
	TALK(&f, "FOOBAR\n", "ERR 67109139 Unknown IPC command <GPG Agent>\n");
	TALK(&f, "QUIT\n", "ERR 67109139 Unknown IPC command <GPG Agent>\n");
	TALK(&f, " NOP\n", "ERR 67109140 IPC syntax error <GPG Agent> - leading white-space\n");
	TALK(&f, "\tNOP\n", "ERR 67109140 IPC syntax error <GPG Agent> - leading white-space\n");
	TALK(&f, "NOP\x01\n", "ERR 67109139 Unknown IPC command <GPG Agent>\n");
	fix_send(&f, "NOP\0ignored\n", 12);
	EXPECT(&f, "OK\n");
	fix_send(&f, "ECHO a\0b\n", 9);
	EXPECT(&f, "D a\nOK\n");
	TALK(&f, "ECHO version\r\r\n", "D version%0D\nOK\n");
	TALK(&f, "CANCEL\n", "ERR 67108933 Not implemented <GPG Agent>\n");
	CHECK_EQ(g.cancel_cmd, 1);
	TALK(&f, "AUTH\n", "ERR 67108933 Not implemented <GPG Agent>\n");
	TALK(&f, "END\n", "ERR 67108933 Not implemented <GPG Agent>\n");
	TALK(&f, "D foo\n", "ERR 67108933 Not implemented <GPG Agent>\n");
	TALK(&f, "RESET\n", "OK\n");
	CHECK_EQ(g.reset, 1);
	/* Only names registered in upper case are case-insensitive. */
	TALK(&f, "lower\n", "OK\n");
	TALK(&f, "LOWER\n", "ERR 67109139 Unknown IPC command <GPG Agent>\n");
	TALK(&f, "Echo x\n", "D x\nOK\n");
	/* Names that share a first byte, a length or a prefix. */
	TALK(&f, "PUTX\n", "ERR 67109139 Unknown IPC command <GPG Agent>\n");
	TALK(&f, "PU\n", "ERR 67109139 Unknown IPC command <GPG Agent>\n");
	TALK(&f, "FAILPLAINX\n", "ERR 67109139 Unknown IPC command <GPG Agent>\n");
	TALK(&f, "failplain\n", "ERR 67108992 Missing value <GPG Agent>\n");
	TALK(&f, "NOPE\n", "ERR 67109139 Unknown IPC command <GPG Agent>\n");
	/* Error text, okay line, status lines. */
	TALK(&f, "FAIL\n", "ERR 67108891 Not found <GPG Agent> - No such envvar\n");
	TALK(&f, "FAILPLAIN\n", "ERR 67108992 Missing value <GPG Agent>\n");
	TALK(&f, "FAIL\nNOP\n", "ERR 67108891 Not found <GPG Agent> - No such envvar\nOK\n");
	TALK(&f, "OKAY\nNOP\n", "OK hello there\nOK\n");
	TALK(&f, "STATUS\n", "S EVENTCOUNTER 0 0 0\nS EMPTY\nOK\n");
	/* The last incomplete line is dropped at EOF (T16), without an ERR. */
	fix_send(&f, "NOP\nNOP", 7);
	shutdown(f.wfd, SHUT_WR);
	EXPECT(&f, "OK\n");
	EXPECT_EOF(&f);
	fix_close(&f);
}

/* V3 */
static void test_option(void)
{
	struct fix f;
	fix_open(&f);
	EXPECT(&f, greeting());
	TALK(&f, "OPTION\n", "ERR 67109140 IPC syntax error <GPG Agent> - argument required\n");
	TALK(&f, "OPTION =x\n", "ERR 67109140 IPC syntax error <GPG Agent> - no option name given\n");
	TALK(&f, "OPTION -x\n", "ERR 67109140 IPC syntax error <GPG Agent> - option should not begin with one dash\n");
	TALK(&f, "OPTION foo = \n", "ERR 67109140 IPC syntax error <GPG Agent> - option argument expected\n");
	CHECK_STR(g.option, "");
	TALK(&f, "OPTION frobnicate=1\n", "ERR 67109038 Unknown option <GPG Agent>\n");
	TALK(&f, "OPTION --ttyname = /dev/pts/0  \n", "OK\n");
	TALK(&f, "OPTION lc-ctype C\n", "OK\n");
	TALK(&f, "OPTION ttytype=xterm\n", "OK\n");
	TALK(&f, "OPTION allow-pinentry-notify\n", "OK\n");
	TALK(&f, "OPTION --putenv=A=b c\n", "OK\n");
	TALK(&f, "option x\t=\ty\n", "OK\n");
	CHECK_STR(g.option, "frobnicate=1;ttyname=/dev/pts/0;lc-ctype=C;ttytype=xterm;allow-pinentry-notify=;putenv=A=b c;x=y;");
	fix_close(&f);
}

/* V5, V6 */
static void test_help(void)
{
	struct fix f;
	fix_open(&f);
	EXPECT(&f, greeting());
	TALK(&f, "HELP NOP\n", "ERR 67108891 Not found <GPG Agent>\n");
	TALK(&f, "HELP NOSUCH\n", "ERR 67109039 Unknown command <GPG Agent>\n");
	TALK(&f, "HELP GETVAL\n", "# GETVAL <key>\n# \n# Return the value for KEY from the special environment as created by\n# PUTVAL.\nOK\n");
	TALK(&f, "help getval  \n", "# GETVAL <key>\n# \n# Return the value for KEY from the special environment as created by\n# PUTVAL.\nOK\n");
	TALK(&f, "HELP\n",
			"# NOP\n# CANCEL\n# OPTION\n# BYE\n# AUTH\n# RESET\n# END\n# HELP\n"
			"# ECHO <text>\n# STATUS\n# FAIL\n# FAILPLAIN\n# OKAY\n# CLOSE\n# lower\n# CRED\n# ASYNC\n"
			"# PUT\n# PUT2\n# FDINFO\n# TAKE\n# RECV\n# LATEINQ\n# GETVAL <key>\n# SETKEY\n# INPUT\n# OUTPUT\nOK\n");
	/* Re-registering replaces the entry in place. */
	CHECK_EQ(weft_assuan_register(f.srv, "NOP", NULL, NULL, "NOP\nDo nothing."), 0);
	TALK(&f, "HELP NOP\n", "# NOP\n# Do nothing.\nOK\n");
	/* ... and keeps its name: registered again in lower case, NOP is
	 * still matched in any case and listed as NOP. */
	CHECK_EQ(weft_assuan_register(f.srv, "nop", NULL, NULL, NULL), 0);
	TALK(&f, "NOP\nnop\nHELP NOP\n", "OK\nOK\nERR 67108891 Not found <GPG Agent>\n");
	CHECK_EQ(weft_assuan_register(f.srv, "BOGUS", NULL, NULL, NULL), -EINVAL);
	CHECK_EQ(weft_assuan_register(f.srv, "TWO WORDS", cmd_lower, NULL, NULL), -EINVAL);
	CHECK_EQ(weft_assuan_register(f.srv, "", cmd_lower, NULL, NULL), -EINVAL);
	fix_close(&f);
}

/* pre/post-command hooks, RESET hook, BYE, force close. */
static void test_hooks(void)
{
	struct fix f;
	fix_open(&f);
	EXPECT(&f, greeting());
	TALK(&f, "NOP\nECHO a\nFOO\n", "OK\nD a\nOK\nERR 67109139 Unknown IPC command <GPG Agent>\n");
	CHECK_STR(g.pre, "NOP;ECHO;");
	char post[128];
	snprintf(post, sizeof post, "0;0;%u;", gpg_err_make(AGENT, GPG_ERR_ASS_UNKNOWN_CMD));
	CHECK_STR(g.post, post);
	g.refuse_echo = true;
	TALK(&f, "ECHO b\nNOP\n", "ERR 67109115 Forbidden <GPG Agent>\nOK\n");
	g.refuse_echo = false;
	g.reset_answer = gpg_err_make(AGENT, GPG_ERR_FORBIDDEN);
	TALK(&f, "RESET\n", "ERR 67109115 Forbidden <GPG Agent>\n");
	g.reset_answer = 0;
	TALK(&f, "RESET\n", "OK\n");
	CHECK_EQ(g.reset, 2);
	/* The pre-command hook registers commands: the table grows (and
	 * moves) under the dispatch of the command being run. */
	g.register_in_pre = 1;
	for (int i = 0; i < 40; i++)
		TALK(&f, "ECHO grow\n", "D grow\nOK\n");
	g.register_in_pre = 0;
	TALK(&f, "DYN40\nDYN41\n", "OK\nERR 67109139 Unknown IPC command <GPG Agent>\n");
	/* Force close: the answer, then EOF; the pipelined NOP is not run. */
	TALK(&f, "CLOSE\nNOP\n", "ERR 67108891 Not found <GPG Agent> - [closing connection]\n");
	EXPECT_EOF(&f);
	run_until_closed(&f);
	CHECK_EQ(g.close, 1);
	fix_close(&f);
	fix_open(&f);
	EXPECT(&f, greeting());
	TALK(&f, "CLOSE ok\n", "OK\n");
	EXPECT_EOF(&f);
	fix_close(&f);
	/* Peer credentials. */
	fix_open(&f);
	EXPECT(&f, greeting());
	TALK(&f, "CRED\n", "OK\n");
	CHECK_EQ(g.cred_pid, getpid());
	CHECK_EQ(g.cred_uid, getuid());
	fix_close(&f);
}

/* T15 over a socket: weft answers ERR and stays in sync (libassuan drops
 * the connection). */
static void test_line_too_long(void)
{
	struct fix f;
	fix_open(&f);
	EXPECT(&f, greeting());
	struct {
		size_t chars;
		const char *end;
		bool ok;
	} cases[] = {
		{1000, "\n", true}, {1001, "\n", true}, {1002, "\n", false},
		{1000, "\r\n", true}, {1001, "\r\n", false}, {2000, "\n", false}, {100000, "\n", false},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char *line = repeat("NOP ", 'x', cases[i].chars - 4, cases[i].end);
		fix_send(&f, line, strlen(line));
		fix_send(&f, "NOP\n", 4);
		EXPECT(&f, cases[i].ok ? "OK\nOK\n" : "ERR 67109127 Line passed to IPC too long <GPG Agent>\nOK\n");
		free(line);
	}
	/* The long line split into many writes, then a pipelined command. */
	char *line = repeat("ECHO ", 'z', 5000, "\nECHO ok\n");
	for (size_t i = 0; i < strlen(line); i += 333)
		fix_send(&f, line + i, strlen(line + i) < 333 ? strlen(line + i) : 333);
	EXPECT(&f, "ERR 67109127 Line passed to IPC too long <GPG Agent>\nD ok\nOK\n");
	free(line);
	fix_close(&f);
}

/* ---- handlers never block ------------------------------------------------------------- */

/* A pending command answered from a timer; the commands pipelined behind it
 * wait and are answered in order (libassuan's process_next drops them);
 * status and D lines flow while it is pending. */
static void test_pending(void)
{
	struct fix f;
	fix_open(&f);
	EXPECT(&f, greeting());
	TALK(&f, "ASYNC 300\nNOP\nECHO x\nFOO\n", "S PROGRESS start\n");
	EXPECT_QUIET(&f, 20); /* the NOP waits for ASYNC */
	EXPECT(&f, "D late\nOK\nOK\nD x\nOK\nERR 67109139 Unknown IPC command <GPG Agent>\n");
	CHECK_EQ(g.async_done, 1);
	CHECK_EQ(g.cancelled, 0);
	/* An over-long line waiting behind a pending command. */
	char *lng = repeat("ASYNC 10\nNOP ", 'x', 3000, "\nNOP\n");
	TALK(&f, lng, "S PROGRESS start\nD late\nOK\nERR 67109127 Line passed to IPC too long <GPG Agent>\nOK\n");
	free(lng);
	/* Two in a row, and lines that arrive while one is pending. */
	TALK(&f, "ASYNC 10\nASYNC 10\n", "S PROGRESS start\n");
	fix_send(&f, "NOP\n", 4);
	EXPECT(&f, "D late\nOK\nS PROGRESS start\nD late\nOK\nOK\n");
	CHECK_EQ(g.async_done, 4);
	fix_close(&f);
}

/* The client goes away while a command is pending: the cancel callback
 * frees the work (the timer: no leak under ASan), then the close hook. */
static void test_pending_disconnect(void)
{
	struct fix f;
	fix_open(&f);
	EXPECT(&f, greeting());
	TALK(&f, "ASYNC 100000\nNOP\n", "S PROGRESS start\n");
	close(f.rfd);
	f.rfd = f.wfd = -1;
	run_until_closed(&f);
	CHECK_EQ(g.cancelled, 1);
	CHECK_EQ(g.close, 1);
	CHECK_EQ(g.async_done, 0);
	fix_close(&f);
	/* The server closes the connection itself while pending. */
	fix_open(&f);
	EXPECT(&f, greeting());
	TALK(&f, "ASYNC 100000\n", "S PROGRESS start\n");
	weft_assuan_conn_close(f.conn);
	CHECK_EQ(g.cancelled, 1);
	CHECK_EQ(weft_assuan_write_line(f.conn, "# late"), -ENOTCONN); /* valid until the close hook */
	CHECK_EQ(weft_assuan_process_done(f.conn, 0), -EINVAL);
	EXPECT_EOF(&f);
	run_until_closed(&f);
	CHECK_EQ(g.close, 1);
	fix_close(&f);
}

/* Freeing the server with pending commands on several connections. */
static void test_pending_server_free(void)
{
	struct fix f;
	fix_server(&f);
	int cl[3];
	for (int i = 0; i < 3; i++) {
		int sv[2];
		CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
		CHECK_EQ(weft_assuan_server_adopt_fd(f.srv, sv[0], NULL), 0);
		cl[i] = sv[1];
		CHECK_EQ(write(cl[i], "ASYNC 100000\n", 13), 13);
	}
	/* Every client has its greeting and its ASYNC running. */
	char buf[3][256];
	size_t have[3] = {0, 0, 0};
	uint64_t end = t_now_ms() + 5000;
	for (;;) {
		int ready = 0;
		for (int i = 0; i < 3; i++) {
			have[i] = grab(cl[i], buf[i], have[i], sizeof buf[i]);
			ready += have[i] == strlen(greeting()) + 17;
		}
		if (ready == 3 || t_now_ms() > end)
			break;
		weft_loop_run(f.loop, WEFT_RUN_NOWAIT);
		t_sleep_ms(1);
	}
	CHECK_EQ(g.async_done, 0);
	CHECK_EQ(weft_assuan_server_connections(f.srv), 3);
	weft_assuan_server_free(f.srv);
	f.srv = NULL;
	CHECK_EQ(g.cancelled, 3);
	CHECK_EQ(g.close, 3);
	/* Every client sees the end. */
	for (int i = 0; i < 3; i++) {
		char b[256];
		ssize_t n;
		end = t_now_ms() + 2000;
		while ((n = read(cl[i], b, sizeof b)) != 0 && t_now_ms() < end) {
			if (n < 0)
				t_sleep_ms(1);
		}
		CHECK_EQ(n, 0);
		close(cl[i]);
	}
	fix_close(&f);
}

static weft_assuan_err cmd_stream(weft_assuan_conn *c, char *args, void *data);
struct streamer;
static struct streamer *g_streamer;

/* Answering from inside the handler, closing from inside it, freeing the
 * whole server from inside it (gpg-agent's KILLAGENT). */
static weft_assuan_err cmd_done_inside(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	CHECK_EQ(weft_assuan_process_done(c, 0), 0);
	return WEFT_ASSUAN_PENDING; /* ignored: answered already */
}

static weft_assuan_err cmd_done_then_err(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	CHECK_EQ(weft_assuan_process_done(c, mk(c, GPG_ERR_CANCELED)), 0);
	return 0; /* ignored: answered already */
}

static weft_assuan_err cmd_kill(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	weft_assuan_conn_close(c);
	CHECK_EQ(weft_assuan_send_data(c, "x", 1), -ENOTCONN);
	CHECK_EQ(weft_assuan_write_status(c, "X", NULL), -ENOTCONN);
	return 0;
}

static weft_assuan_err cmd_killserver(weft_assuan_conn *c, char *args, void *data)
{
	(void)args;
	weft_assuan_server **srvp = data;
	weft_assuan_server_free(*srvp);
	*srvp = NULL;
	(void)c;
	return 0;
}

static void room_now(weft_assuan_conn *c, void *data)
{
	(void)c;
	(*(int *)data)++;
}

static int g_room_calls;

static weft_assuan_err cmd_room(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	/* Already under the limit: called from the loop, not from here. */
	CHECK_EQ(weft_assuan_on_room(c, room_now, &g_room_calls), 0);
	CHECK_EQ(g_room_calls, 0);
	CHECK_EQ(weft_assuan_on_room(c, NULL, NULL), -EINVAL);
	return 0;
}

static void test_inside_handlers(void)
{
	struct fix f;
	fix_open(&f);
	CHECK_EQ(weft_assuan_register(f.srv, "DONEINSIDE", cmd_done_inside, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(f.srv, "DONEERR", cmd_done_then_err, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(f.srv, "KILL", cmd_kill, NULL, NULL), 0);
	CHECK_EQ(weft_assuan_register(f.srv, "ROOM", cmd_room, NULL, NULL), 0);
	EXPECT(&f, greeting());
	g_room_calls = 0;
	TALK(&f, "DONEINSIDE\nDONEERR\nNOP\n", "OK\nERR 67108963 Operation cancelled <GPG Agent>\nOK\n");
	TALK(&f, "ROOM\n", "OK\n");
	EXPECT_QUIET(&f, 5);
	CHECK_EQ(g_room_calls, 1);
	TALK(&f, "KILL\nNOP\n", "");
	EXPECT_EOF(&f);
	run_until_closed(&f);
	CHECK_EQ(g.close, 1);
	fix_close(&f);
	/* The server freed from a handler, with another connection pending. */
	fix_server(&f);
	weft_assuan_server *srv = f.srv;
	CHECK_EQ(weft_assuan_register(f.srv, "KILLAGENT", cmd_killserver, &f.srv, NULL), 0);
	int sa[2], sb[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sb), 0);
	CHECK_EQ(weft_assuan_server_adopt_fd(srv, sb[0], NULL), 0);
	CHECK_EQ(write(sb[1], "ASYNC 100000\n", 13), 13);
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sa), 0);
	CHECK_EQ(weft_assuan_server_adopt_fd(srv, sa[0], NULL), 0);
	f.rfd = f.wfd = sa[1];
	EXPECT(&f, greeting());
	TALK(&f, "KILLAGENT\n", "");
	EXPECT_EOF(&f);
	CHECK(f.srv == NULL);
	CHECK_EQ(g.cancelled, 1);
	CHECK_EQ(g.close, 2);
	close(sb[1]);
	fix_close(&f);
	/* The server freed from the post-command hook of a command answered
	 * later, from a timer (outside any dispatch). */
	fix_open(&f);
	EXPECT(&f, greeting());
	g.free_in_post = &f.srv;
	TALK(&f, "ASYNC 5\n", "S PROGRESS start\n");
	EXPECT_EOF(&f); /* the answer was queued, and dropped with the server */
	CHECK(f.srv == NULL);
	CHECK_EQ(g.close, 1);
	fix_close(&f);
}

/* ---- INQUIRE ------------------------------------------------------------------------------ */

static void test_inquire(void)
{
	struct fix f;
	fix_open(&f);
	EXPECT(&f, greeting());
	/* V12: comment and empty line skipped, escapes decoded, d/end. */
	TALK(&f, "PUT 1024\n", "INQUIRE VALUE\nS INQUIRE_MAXLEN 1024\n");
	TALK(&f, "# comment\n\nD (genkey(ecc(curve 7:Ed25519)\nd %28flags eddsa%29))\nend\n", "OK got 43\n");
	CHECK_EQ(g.inq_err, 0);
	CHECK_BYTES(g.inq_data, g.inq_len, "(genkey(ecc(curve 7:Ed25519)(flags eddsa)))", 43);
	/* Binary data with every escape, END with arguments, CRLF. */
	TALK(&f, "PUT\n", "INQUIRE VALUE\nS INQUIRE_MAXLEN\n");
	TALK(&f, "D %00%0A%0d%25%ff\r\nD \x01 \x7f\nEND extra\n", "OK got 8\n");
	CHECK_BYTES(g.inq_data, g.inq_len, "\0\n\r%\xff\x01 \x7f", 8);
	/* Empty data. */
	TALK(&f, "PUT 10\nEND\n", "INQUIRE VALUE\nS INQUIRE_MAXLEN 10\nOK got 0\n");
	/* V11: CAN, CANCEL, CANxyz. */
	static const char *cans[] = {"CAN\n", "CANCEL\n", "CANxyz\n", "can\n"};
	for (int i = 0; i < 4; i++) {
		TALK(&f, "PUT 1024\n", "INQUIRE VALUE\nS INQUIRE_MAXLEN 1024\n");
		TALK(&f, cans[i], "ERR 67109141 IPC call has been cancelled <GPG Agent>\n");
		CHECK_EQ(g.inq_err, gpg_err_make(AGENT, GPG_ERR_ASS_CANCELED));
	}
	/* V11: another line; not drained (as libassuan): END is a command. */
	static const char *others[] = {"NOP\n", "ENDx\n", "D\n", "S X\n"};
	for (int i = 0; i < 4; i++) {
		TALK(&f, "PUT 1024\n", "INQUIRE VALUE\nS INQUIRE_MAXLEN 1024\n");
		TALK(&f, others[i], "ERR 67109138 Unexpected IPC command <GPG Agent>\n");
		CHECK_EQ(g.inq_err, gpg_err_make(AGENT, GPG_ERR_ASS_UNEXPECTED_CMD));
	}
	TALK(&f, "END\n", "ERR 67108933 Not implemented <GPG Agent>\n");
	/* V11: over maxlen: TOO_MUCH_DATA (not libassuan's stale EAGAIN),
	 * the rest drained up to END, the next command answered. */
	TALK(&f, "PUT 1024\n", "INQUIRE VALUE\nS INQUIRE_MAXLEN 1024\n");
	char *y = repeat("D ", 'y', 900, "\n");
	fix_send(&f, y, strlen(y));
	fix_send(&f, y, strlen(y));
	fix_send(&f, y, strlen(y));
	TALK(&f, "END\nNOP\n", "ERR 67109137 Too much data for IPC layer <GPG Agent>\nOK\n");
	CHECK_EQ(g.inq_err, gpg_err_make(AGENT, GPG_ERR_ASS_TOO_MUCH_DATA));
	free(y);
	/* Exactly maxlen is fine. */
	TALK(&f, "PUT 4\nD ab\nD c%64\nEND\n", "INQUIRE VALUE\nS INQUIRE_MAXLEN 4\nOK got 4\n");
	/* Malformed escapes (libassuan loops forever): a clear error, the
	 * rest drained, and the server keeps serving. */
	static const char *bad[] = {"D abc%\n", "D %4\n", "D x%zz\n", "D %4g%41\n", "D %\n"};
	for (int i = 0; i < 5; i++) {
		TALK(&f, "PUT 1024\n", "INQUIRE VALUE\nS INQUIRE_MAXLEN 1024\n");
		fix_send(&f, bad[i], strlen(bad[i]));
		TALK(&f, "D more\nEND\nNOP\n",
				"ERR 67109140 IPC syntax error <GPG Agent> - malformed percent escape in inquired data\nOK\n");
		CHECK_EQ(g.inq_err, gpg_err_make(AGENT, GPG_ERR_ASS_SYNTAX));
	}
	/* An over-long line inside the inquiry. */
	TALK(&f, "PUT 100000\n", "INQUIRE VALUE\nS INQUIRE_MAXLEN 100000\n");
	char *lng = repeat("D ", 'l', 1500, "\n");
	fix_send(&f, lng, strlen(lng));
	free(lng);
	TALK(&f, "D ok\nEND\nNOP\n", "ERR 67109127 Line passed to IPC too long <GPG Agent>\nOK\n");
	/* Two inquiries in one command. */
	TALK(&f, "PUT2\n", "INQUIRE FIRST\n");
	TALK(&f, "D one\nEND\n", "INQUIRE SECOND\n");
	TALK(&f, "D two\nEND\n", "D one+two\nOK\n");
	/* Everything pipelined in one write. */
	TALK(&f, "PUT 9\nD abc\nEND\nNOP\nPUT2\nD 1\nEND\nD 2\nEND\nECHO z\n",
			"INQUIRE VALUE\nS INQUIRE_MAXLEN 9\nOK got 3\nOK\nINQUIRE FIRST\nINQUIRE SECOND\nD 1+2\nOK\nD z\nOK\n");
	/* An INQUIRE started later, from a timer; the client's answer and a
	 * command were already sent (pipelined) before it was asked. */
	TALK(&f, "LATEINQ\nD early\nEND\nNOP\n", "INQUIRE LATE\nOK got 5\nOK\n");
	CHECK_BYTES(g.inq_data, g.inq_len, "early", 5);
	/* The client disconnects in the middle of an inquiry. */
	TALK(&f, "PUT 100\nD partial\n", "INQUIRE VALUE\nS INQUIRE_MAXLEN 100\n");
	fix_close(&f);
	CHECK_EQ(g.close, 1);
	/* The client leaves before the timer (the cancel callback frees it)
	 * or, on a slow machine, during the INQUIRE: nothing leaks. */
	fix_open(&f);
	EXPECT(&f, greeting());
	fix_send(&f, "LATEINQ\n", 8);
	pump(&f, (size_t)-1, 1);
	fix_close(&f);
}

static unsigned char stream_byte(unsigned seed, size_t i);

/* Big inquiries (far more than the input buffer), the server's default
 * inquire limit, and a keyword too long to send. */
static weft_assuan_err cmd_inqlong(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	char *kw = repeat("", 'K', 1000, "");
	CHECK_EQ(weft_assuan_inquire(c, kw, 0, put_done, NULL), -EINVAL);
	CHECK_EQ(weft_assuan_inquire(c, "", 0, put_done, NULL), -EINVAL);
	free(kw);
	return 0;
}

static void test_inquire_big(void)
{
	struct fix f;
	fix_open(&f);
	CHECK_EQ(weft_assuan_register(f.srv, "INQLONG", cmd_inqlong, NULL, NULL), 0);
	EXPECT(&f, greeting());
	TALK(&f, "INQLONG\n", "OK\n");
	/* 1 MiB of every byte value, escaped as libassuan's client would,
	 * in D lines of up to 1000 characters. */
	size_t total = 1u << 20;
	unsigned char *data = malloc(total);
	for (size_t i = 0; i < total; i++)
		data[i] = stream_byte(7, i);
	struct weft__abuf b = encode(data, total, 65536);
	uint32_t sum = 2166136261u;
	for (size_t i = 0; i < total; i++)
		sum = (sum ^ data[i]) * 16777619u;
	TALK(&f, "PUT 2000000\n", "INQUIRE VALUE\nS INQUIRE_MAXLEN 2000000\n");
	fix_send(&f, b.p, b.len);
	TALK(&f, "END\n", "OK got 1048576\n");
	CHECK_EQ(g.inq_total, total);
	CHECK_EQ(g.inq_sum, sum);
	/* The server's default limit (maxlen 0). */
	weft_assuan_limits lim = {.inquire = 100};
	weft_assuan_server_set_limits(f.srv, &lim);
	TALK(&f, "PUT\n", "INQUIRE VALUE\nS INQUIRE_MAXLEN\n");
	fix_send(&f, b.p, 4000);
	TALK(&f, "\nEND\nNOP\n", "ERR 67109137 Too much data for IPC layer <GPG Agent>\nOK\n");
	weft__abuf_free(&b);
	free(data);
	fix_close(&f);
}

/* More waiting lines than the input buffer holds, behind a pending
 * command: reading stops, and resumes when the command ends. */
static void test_input_full(void)
{
	struct fix f;
	fix_open(&f);
	EXPECT(&f, greeting());
	/* 10 000 lines; then more than the big input buffer and the socket
	 * hold: reading stops while the command is pending and starts again
	 * (from the loop, the transport not being drained) once it is
	 * answered. */
	static const size_t counts[] = {10000, 150000};
	for (size_t k = 0; k < 2; k++) {
		size_t n = counts[k];
		char *many = malloc(9 + n * 4 + 1);
		memcpy(many, "ASYNC 30\n", 9);
		for (size_t i = 0; i < n; i++)
			memcpy(many + 9 + i * 4, "NOP\n", 4);
		fix_send(&f, many, 9 + n * 4);
		char *want = malloc(30 + n * 3 + 1);
		size_t w = (size_t)sprintf(want, "S PROGRESS start\nD late\nOK\n");
		for (size_t i = 0; i < n; i++)
			memcpy(want + w + i * 3, "OK\n", 3);
		want[w + n * 3] = '\0';
		EXPECT(&f, want);
		free(many);
		free(want);
	}
	TALK(&f, "NOP\n", "OK\n");
	fix_close(&f);
}

/* D lines, other lines and flushes mixed in one answer. */
static weft_assuan_err cmd_mixed(weft_assuan_conn *c, char *args, void *data)
{
	(void)args; (void)data;
	CHECK_EQ(weft_assuan_send_data(c, "ab", 2), 0);
	CHECK_EQ(weft_assuan_write_line(c, "END"), 0);
	CHECK_EQ(weft_assuan_send_data(c, "c", 1), 0);
	CHECK_EQ(weft_assuan_send_data(c, "d", 1), 0);
	CHECK_EQ(weft_assuan_flush_data(c), 0);
	CHECK_EQ(weft_assuan_flush_data(c), 0); /* nothing open: nothing sent */
	CHECK_EQ(weft_assuan_send_data(c, "e\n", 2), 0);
	CHECK_EQ(weft_assuan_write_status(c, "X", "y"), 0);
	CHECK_EQ(weft_assuan_send_data(c, NULL, 0), 0);
	CHECK_EQ(weft_assuan_send_data(c, NULL, 1), -EINVAL);
	CHECK_EQ(weft_assuan_write_line(c, "# a comment"), 0);
	CHECK_EQ(weft_assuan_send_data(c, "f", 1), 0);
	return 0; /* the answer ends the open D line */
}

static void test_mixed_output(void)
{
	struct fix f;
	fix_open(&f);
	CHECK_EQ(weft_assuan_register(f.srv, "MIXED", cmd_mixed, NULL, NULL), 0);
	EXPECT(&f, greeting());
	TALK(&f, "MIXED\n", "D ab\nEND\nD cd\nD e%0A\nS X y\n# a comment\nD f\nOK\n");
	/* The default greeting again after a custom one. */
	CHECK_EQ(weft_assuan_server_set_hello(f.srv, "custom"), 0);
	CHECK_EQ(weft_assuan_server_set_hello(f.srv, NULL), 0);
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	CHECK_EQ(weft_assuan_server_adopt_fd(f.srv, sv[0], NULL), 0);
	close(f.rfd);
	f.rfd = f.wfd = sv[1];
	EXPECT(&f, greeting());
	fix_close(&f);
}

/* Random mixes of commands, INQUIRE data, terminators, malformed escapes,
 * over-long lines and garbage, sent in random pieces: every answer line
 * is well formed and fits, and the connection always comes back in sync. */
static void test_random_sessions(void)
{
	static const char *tokens[] = {
		"NOP", "nop", "ECHO x%y", "PUT 50", "PUT 5", "PUT2", "D abc", "d %41", "D %", "D %4",
		"D x%zz", "END", "end", "CAN", "CANCEL", "# comment", "", "\r", "OPTION a=b", "OPTION",
		"HELP", "HELP NOP", "INPUT FD", "OUTPUT FD=3", "RESET", "FOO", " NOP", "D", "ASYNC 1",
		"STATUS", "FAIL", "OKAY", "\x01\x02\xff", "AUTH", "CANCEL x",
	};
	unsigned x = 42;
	struct fix f;
	fix_open(&f);
	EXPECT(&f, greeting());
	char *longline = repeat("D ", 'L', 1500, "");
	for (int round = 0; round < 300; round++) {
		size_t cap = 65536, len = 0;
		char *msg = malloc(cap);
		int ntok = 1 + (int)((x = x * 1103515245u + 12345u) >> 16) % 40;
		for (int t = 0; t < ntok; t++) {
			x = x * 1103515245u + 12345u;
			unsigned r = x >> 16;
			const char *tok = r % 50 == 0 ? longline : tokens[r % (sizeof tokens / sizeof tokens[0])];
			len += (size_t)snprintf(msg + len, cap - len, "%s%s", tok, r % 7 == 0 ? "\r\n" : "\n");
		}
		char sync[64];
		len += (size_t)snprintf(msg + len, cap - len, "END\nEND\nECHO sync%d\n", round); /* PUT2 inquires twice */
		/* Random pieces. */
		for (size_t off = 0; off < len;) {
			x = x * 1103515245u + 12345u;
			size_t k = 1 + (x >> 16) % 300;
			if (k > len - off)
				k = len - off;
			fix_send(&f, msg + off, k);
			off += k;
			if ((x >> 8) % 3 == 0)
				pump(&f, (size_t)-1, 0);
		}
		free(msg);
		snprintf(sync, sizeof sync, "D sync%d\nOK\n", round);
		/* Read until the sync answer arrives. */
		uint64_t end = t_now_ms() + 5000;
		char *hit = NULL;
		while (t_now_ms() < end && (f.rx == NULL || (hit = memmem(f.rx, f.rxlen, sync, strlen(sync))) == NULL))
			pump(&f, (size_t)-1, 1);
		if (f.rx == NULL || hit == NULL) {
			pump(&f, (size_t)-1, 5);
			hit = f.rx ? memmem(f.rx, f.rxlen, sync, strlen(sync)) : NULL;
		}
		if (hit == NULL) {
			printf("# round %d: no sync\n", round);
			show("rx", f.rx, f.rxlen);
			CHECK(hit != NULL);
			break;
		}
		/* Every line well formed. */
		size_t upto = (size_t)(hit - f.rx) + strlen(sync);
		int bad = 0;
		for (size_t i = 0; i < upto;) {
			char *nl = memchr(f.rx + i, '\n', upto - i);
			size_t ll = (size_t)(nl - (f.rx + i)) + 1;
			const char *l = f.rx + i;
			bool ok = ll <= WEFT_ASSUAN_LINELENGTH &&
				(strncmp(l, "OK\n", 3) == 0 || strncmp(l, "OK ", 3) == 0 || strncmp(l, "ERR ", 4) == 0 ||
				 strncmp(l, "D ", 2) == 0 || strncmp(l, "S ", 2) == 0 || strncmp(l, "INQUIRE ", 8) == 0 ||
				 strncmp(l, "# ", 2) == 0);
			if (!ok && bad++ == 0)
				show("bad line", l, ll);
			i += ll;
		}
		CHECK_EQ(bad, 0);
		memmove(f.rx, f.rx + upto, f.rxlen - upto);
		f.rxlen -= upto;
		/* Answers to lines after the sync one (none) or late ones. */
		EXPECT_QUIET(&f, 0);
		f.rxlen = 0;
	}
	free(longline);
	TALK(&f, "NOP\n", "OK\n");
	fix_close(&f);
}

/* ---- INPUT / OUTPUT and descriptor passing ------------------------------------------ */

/* Send fd over the socket as libassuan's uds_sendfd does. */
static void send_fd(int sock, int fd)
{
	char text[64];
	int n = snprintf(text, sizeof text, "# descriptor %d is in flight\n", fd);
	struct iovec iov = {text, (size_t)n};
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	memset(&u, 0, sizeof u);
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	CHECK_EQ(sendmsg(sock, &msg, 0), n);
}

static unsigned long ino_of(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 ? (unsigned long)st.st_ino : 0;
}

/* A descriptor of this process, other than `not`, open on the file with
 * inode ino (where the server's copy of a passed fd landed). */
static int find_fd_by_ino(unsigned long ino, int not1, int not2)
{
	for (int fd = 3; fd < 1024; fd++)
		if (fd != not1 && fd != not2 && fcntl(fd, F_GETFD) >= 0 && ino_of(fd) == ino)
			return fd;
	return -1;
}

static int temp_file(const char *content)
{
	char path[] = "/tmp/weft-assuan-XXXXXX";
	int fd = mkostemp(path, O_CLOEXEC);
	CHECK(fd >= 0);
	unlink(path);
	if (content)
		CHECK_EQ(write(fd, content, strlen(content)), (ssize_t)strlen(content));
	lseek(fd, 0, SEEK_SET);
	return fd;
}

/* Pass a new file over the connection (a socket), take it with INPUT FD
 * and check the server sees that file (FDINFO: its inode). */
static void pass_input_fd(const char *file, int line, struct fix *f, const char *content)
{
	int tf = temp_file(content);
	send_fd(f->wfd, tf);
	char want[64];
	snprintf(want, sizeof want, "OK\nOK %lu -\n", ino_of(tf));
	fix_send(f, "INPUT FD\nFDINFO\n", strlen("INPUT FD\nFDINFO\n"));
	expect_bytes(file, line, f, want, strlen(want));
	close(tf);
}
#define PASS_INPUT_FD(f, content) pass_input_fd(__FILE__, __LINE__, (f), (content))

/* V4: no descriptor passing (gpg-agent's main socket). */
static void test_fds_no_passing(void)
{
	struct fix f;
	fix_server(&f);
	weft_assuan_server_set_fdpassing(f.srv, false);
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	CHECK_EQ(weft_assuan_server_adopt_fd(f.srv, sv[0], &f.conn), 0);
	f.rfd = f.wfd = sv[1];
	EXPECT(&f, greeting());
	TALK(&f, "INPUT FD\n", "ERR 67108933 Not implemented <GPG Agent> - server does not support sending and receiving of file descriptors\n");
	TALK(&f, "INPUT bogus\n", "ERR 67109140 IPC syntax error <GPG Agent> - FD[=<n>] expected\n");
	TALK(&f, "OUTPUT FD=x\n", "ERR 67109140 IPC syntax error <GPG Agent> - number required\n");
	TALK(&f, "OUTPUT FDx\n", "ERR 67109140 IPC syntax error <GPG Agent> - FD[=<n>] expected\n");
	/* libassuan answers OK and later closes descriptor 999 (or 7, its
	 * listening socket: V4); weft accepts only passed descriptors. */
	TALK(&f, "OUTPUT FD=999 --armor\n", "ERR 67109144 IPC parameter error <GPG Agent> - descriptor was not passed by the peer\n");
	char cmd[64];
	snprintf(cmd, sizeof cmd, "INPUT FD=%d\n", f.rfd);
	TALK(&f, cmd, "ERR 67109144 IPC parameter error <GPG Agent> - descriptor was not passed by the peer\n");
	int lfd = weft_loop_get_fd(f.loop);
	snprintf(cmd, sizeof cmd, "INPUT FD=%d\nRESET\n", lfd);
	TALK(&f, cmd, "ERR 67109144 IPC parameter error <GPG Agent> - descriptor was not passed by the peer\nOK\n");
	CHECK(fcntl(lfd, F_GETFD) >= 0); /* still ours */
	CHECK(fcntl(f.rfd, F_GETFD) >= 0);
	/* A descriptor the server allowed (a pipe server's inherited fd). */
	int tf = temp_file("allowed");
	int dup = fcntl(tf, F_DUPFD_CLOEXEC, 100);
	CHECK_EQ(weft_assuan_conn_allow_fd(f.conn, dup), 0);
	snprintf(cmd, sizeof cmd, "INPUT FD=%d\n", dup);
	TALK(&f, cmd, "OK\n");
	snprintf(cmd, sizeof cmd, "OK %lu -\n", ino_of(tf));
	TALK(&f, "FDINFO\n", cmd);
	TALK(&f, "RESET\n", "OK\n");
	CHECK(fcntl(dup, F_GETFD) < 0); /* the connection owned and closed it */
	/* Allowed and never selected: closed when the connection ends. */
	dup = fcntl(tf, F_DUPFD_CLOEXEC, 100);
	CHECK_EQ(weft_assuan_conn_allow_fd(f.conn, dup), 0);
	CHECK_EQ(weft_assuan_conn_allow_fd(f.conn, -1), -EINVAL);
	close(tf);
	fix_close(&f);
	CHECK(fcntl(dup, F_GETFD) < 0);
}

/* T17: descriptors passed with SCM_RIGHTS, as libassuan sends them. */
static void test_fd_passing(void)
{
	struct fix f;
	fix_open(&f);
	EXPECT(&f, greeting());
	int base = t_fd_count();
	TALK(&f, "INPUT FD\n", "ERR 67109121 General IPC error <GPG Agent>\n");
	int a = temp_file("file a"), b = temp_file("file b"), c = temp_file("file c");
	char want[128];
	/* INPUT FD takes the passed descriptor: same file (inode). */
	send_fd(f.wfd, a);
	TALK(&f, "INPUT FD --armor\n", "OK\n");
	CHECK_EQ(g.input, 1);
	CHECK(strstr(g.input_args, "--armor") != NULL);
	CHECK(strstr(g.input_args, "FD") == NULL);
	snprintf(want, sizeof want, "OK %lu -\n", ino_of(a));
	TALK(&f, "FDINFO\n", want); /* FDINFO is a command: the fd is closed after it */
	TALK(&f, "FDINFO\n", "OK - -\n");
	CHECK_EQ(t_fd_count(), base + 3);
	/* Two in flight, OUTPUT FD takes the oldest; NOP, OPTION, HELP keep
	 * the descriptors; RESET closes the selected and the queued ones. */
	send_fd(f.wfd, b);
	send_fd(f.wfd, c);
	TALK(&f, "OUTPUT FD\n", "OK\n");
	CHECK_EQ(g.output, 1);
	TALK(&f, "NOP\nOPTION x\nHELP NOP\n", "OK\nOK\nERR 67108891 Not found <GPG Agent>\n");
	CHECK_EQ(t_fd_count(), base + 5);
	snprintf(want, sizeof want, "OK - %lu\n", ino_of(b));
	TALK(&f, "OUTPUT FD=999\n", "ERR 67109144 IPC parameter error <GPG Agent> - descriptor was not passed by the peer\n");
	TALK(&f, "RESET\n", "OK\n");
	CHECK_EQ(t_fd_count(), base + 3);
	/* FD=n names a descriptor the peer passed (its number in the server). */
	send_fd(f.wfd, c);
	TALK(&f, "NOP\n", "OK\n");
	int n = find_fd_by_ino(ino_of(c), c, -1);
	CHECK(n >= 0);
	char cmd[64];
	snprintf(cmd, sizeof cmd, "INPUT FD=%d\n", n);
	TALK(&f, cmd, "OK\n");
	snprintf(want, sizeof want, "OK %lu -\n", ino_of(c));
	TALK(&f, "FDINFO\n", want);
	TALK(&f, cmd, "ERR 67109144 IPC parameter error <GPG Agent> - descriptor was not passed by the peer\n");
	CHECK_EQ(t_fd_count(), base + 3);
	/* The input hook refuses: the descriptor is closed. */
	g.refuse_input = true;
	send_fd(f.wfd, a);
	TALK(&f, "INPUT FD\n", "ERR 67109115 Forbidden <GPG Agent>\n");
	g.refuse_input = false;
	CHECK_EQ(t_fd_count(), base + 3);
	/* A handler takes the descriptor: it outlives the command. */
	send_fd(f.wfd, b);
	TALK(&f, "INPUT FD\nTAKE\nFDINFO\n", "OK\nOK\nOK - -\n");
	CHECK(g.taken_fd >= 0);
	CHECK_EQ(ino_of(g.taken_fd), ino_of(b));
	close(g.taken_fd);
	/* A handler takes passed descriptors itself, oldest first. */
	send_fd(f.wfd, c);
	send_fd(f.wfd, a);
	snprintf(want, sizeof want, "OK %lu\nOK %lu\nERR 67109142 No input source for IPC <GPG Agent>\n", ino_of(c), ino_of(a));
	TALK(&f, "RECV\nRECV\nRECV\n", want);
	/* More than the limit (5) in flight: the extra ones are closed. */
	for (int i = 0; i < 7; i++)
		send_fd(f.wfd, a);
	TALK(&f, "NOP\n", "OK\n");
	CHECK_EQ(t_fd_count(), base + 3 + 5);
	/* The limit changed while descriptors are queued: up to the new one. */
	TALK(&f, "RESET\n", "OK\n");
	weft_assuan_limits lim = {.fds = 2};
	weft_assuan_server_set_limits(f.srv, &lim);
	TALK(&f, "RESET\n", "OK\n");
	send_fd(f.wfd, a);
	TALK(&f, "NOP\n", "OK\n");
	lim.fds = 9;
	weft_assuan_server_set_limits(f.srv, &lim);
	for (int i = 0; i < 10; i++)
		send_fd(f.wfd, a);
	TALK(&f, "NOP\n", "OK\n");
	CHECK_EQ(t_fd_count(), base + 3 + 9);
	/* The connection's end closes the queued ones and INPUT's. */
	TALK(&f, "INPUT FD\n", "OK\n");
	TALK(&f, "BYE\n", "OK closing connection\n");
	EXPECT_EOF(&f);
	run_until_closed(&f);
	CHECK_EQ(t_fd_count(), base + 3 - 1); /* the server's end of the socket too */
	close(a);
	close(b);
	close(c);
	fix_close(&f);
}

/* ---- non-blocking output ------------------------------------------------------------------ */

/* Deterministic bytes: byte i of stream seed. */
static unsigned char stream_byte(unsigned seed, size_t i)
{
	uint32_t x = (uint32_t)(i / 4) * 2654435761u + seed;
	x ^= x >> 15;
	x *= 2246822519u;
	x ^= x >> 13;
	return (unsigned char)(x >> (8 * (i % 4)));
}

#define STREAM_CHUNK 16384

/* STREAM n: n bytes of stream_byte(n) as D lines, waiting for room. */
struct streamer {
	weft_assuan_conn *c;
	size_t total, sent;
	weft_defer *step;
	int enobufs, rooms;
	bool waiting;
};
/* g_streamer: the last one, for the checks */
static size_t g_max_pending;

static void streamer_free(weft_assuan_conn *c, void *data)
{
	(void)c;
	struct streamer *st = data;
	weft_defer_free(st->step);
	if (g_streamer == st)
		g_streamer = NULL;
	free(st);
}

static void streamer_room(weft_assuan_conn *c, void *data)
{
	struct streamer *st = data;
	st->rooms++;
	st->waiting = false;
	CHECK(weft_assuan_output_pending(c) <= 64 * 1024 / 2);
	weft_defer_schedule(st->step);
}

static void streamer_step(weft_defer *d, void *data)
{
	(void)d;
	struct streamer *st = data;
	unsigned char buf[STREAM_CHUNK];
	for (int k = 0; k < 8 && st->sent < st->total; k++) {
		size_t n = st->total - st->sent < STREAM_CHUNK ? st->total - st->sent : STREAM_CHUNK;
		for (size_t i = 0; i < n; i++)
			buf[i] = stream_byte((unsigned)st->total, st->sent + i);
		size_t before = weft_assuan_output_pending(st->c);
		int r = weft_assuan_send_data(st->c, buf, n);
		if (weft_assuan_output_pending(st->c) > g_max_pending)
			g_max_pending = weft_assuan_output_pending(st->c);
		if (r == -ENOBUFS) {
			CHECK_EQ(weft_assuan_output_pending(st->c), before); /* nothing queued */
			CHECK(before >= 64 * 1024);
			st->enobufs++;
			st->waiting = true;
			CHECK_EQ(weft_assuan_on_room(st->c, streamer_room, st), 0);
			return;
		}
		CHECK_EQ(r, 0);
		st->sent += n;
	}
	if (st->sent < st->total) {
		weft_defer_schedule(st->step);
		return;
	}
	weft_assuan_conn *c = st->c;
	streamer_free(c, st);
	weft_assuan_process_done(c, 0);
}

static weft_assuan_err cmd_stream(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	struct streamer *st = calloc(1, sizeof *st);
	st->c = c;
	st->total = strtoul(args, NULL, 10);
	weft_loop *loop = weft_stream_loop(weft_assuan_conn_stream(c));
	CHECK_EQ(weft_defer_new(loop, streamer_step, st, &st->step), 0);
	CHECK_EQ(weft_assuan_on_cancel(c, streamer_free, st), 0);
	weft_defer_schedule(st->step);
	g_streamer = st;
	return WEFT_ASSUAN_PENDING;
}

/* Decode a response of D lines ending in "OK\n"; check it is stream seed. */
static void check_stream(const char *p, size_t n, size_t total)
{
	if (!(n >= 3 && memcmp(p + n - 3, "OK\n", 3) == 0))
		show("stream tail", p + (n > 40 ? n - 40 : 0), n > 40 ? 40 : n);
	REQUIRE(n >= 3 && memcmp(p + n - 3, "OK\n", 3) == 0);
	size_t got = 0, bad = 0, lines = 0;
	char *line = malloc(WEFT_ASSUAN_LINELENGTH + 1);
	for (size_t i = 0; i < n - 3;) {
		const char *nl = memchr(p + i, '\n', n - 3 - i);
		REQUIRE(nl != NULL);
		size_t ll = (size_t)(nl - (p + i)) + 1;
		if (ll > WEFT_ASSUAN_LINELENGTH || ll < 3 || p[i] != 'D' || p[i + 1] != ' ') {
			bad++;
			break;
		}
		memcpy(line, p + i + 2, ll - 3);
		ssize_t k = weft__adecode(line, ll - 3, true);
		if (k < 0) {
			bad++;
			break;
		}
		for (ssize_t j = 0; j < k; j++)
			if ((unsigned char)line[j] != stream_byte((unsigned)total, got + (size_t)j))
				bad++;
		got += (size_t)k;
		lines++;
		i += ll;
	}
	free(line);
	CHECK_EQ(bad, 0);
	CHECK_EQ(got, total);
	CHECK(lines >= total / 996);
}

/* The fixture's server with STREAM and a 64 KiB output limit. */
static void fix_stream_server(struct fix *f)
{
	fix_server(f);
	weft_assuan_limits lim = {.output = 64 * 1024};
	weft_assuan_server_set_limits(f->srv, &lim);
	CHECK_EQ(weft_assuan_register(f->srv, "STREAM", cmd_stream, NULL, NULL), 0);
}

/* Ask for STREAM n and read all of it and the OK, checked. */
static void stream_whole(struct fix *f, size_t total)
{
	char cmd[64];
	snprintf(cmd, sizeof cmd, "STREAM %zu\n", total);
	fix_send(f, cmd, strlen(cmd));
	uint64_t end = t_now_ms() + 20000;
	while (t_now_ms() < end && !(f->rxlen > total && memcmp(f->rx + f->rxlen - 4, "\nOK\n", 4) == 0))
		pump(f, (size_t)-1, 2);
	check_stream(f->rx, f->rxlen, total);
	f->rxlen = 0;
}

/* Run the loop until the streaming handler waits for room (5 s at most). */
static void wait_streamer_blocked(weft_loop *loop)
{
	uint64_t end = t_now_ms() + 5000;
	while ((g_streamer == NULL || !g_streamer->waiting) && t_now_ms() < end) {
		weft_loop_run(loop, WEFT_RUN_NOWAIT);
		t_sleep_ms(1);
	}
}

/* A client that does not read while the server streams megabytes: the
 * output queue stops at its limit (send_data refuses with -ENOBUFS, the
 * room callback resumes), another client is served meanwhile, and not a
 * byte is lost. */
static void test_backpressure(void)
{
	struct fix fa;
	fix_stream_server(&fa);
	g_max_pending = 0;
	int sa[2], sb[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sa), 0);
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sb), 0);
	CHECK_EQ(weft_assuan_server_adopt_fd(fa.srv, sa[0], &fa.conn), 0);
	fa.rfd = fa.wfd = sa[1];
	struct fix fb = fa;
	fb.rfd = fb.wfd = sb[1];
	fb.rx = NULL;
	fb.rxlen = fb.rxcap = 0;
	CHECK_EQ(weft_assuan_server_adopt_fd(fa.srv, sb[0], &fb.conn), 0);
	EXPECT(&fa, greeting());
	EXPECT(&fb, greeting());
	size_t total = 4u << 20;
	char cmd[64];
	snprintf(cmd, sizeof cmd, "STREAM %zu\n", total);
	fix_send(&fa, cmd, strlen(cmd));
	/* A does not read; B is served meanwhile. */
	wait_streamer_blocked(fa.loop);
	REQUIRE(g_streamer != NULL);
	CHECK(g_streamer->waiting);
	for (int i = 0; i < 50; i++) {
		char want[64];
		snprintf(cmd, sizeof cmd, "ECHO b%d\n", i);
		snprintf(want, sizeof want, "D b%d\nOK\n", i);
		TALK(&fb, cmd, want);
	}
	TALK(&fb, "ASYNC 5\n", "S PROGRESS start\nD late\nOK\n");
	REQUIRE(g_streamer != NULL);
	CHECK(g_streamer->enobufs >= 1);
	CHECK(g_streamer->sent < total); /* stuck: A reads nothing */
	CHECK(weft_assuan_output_pending(fa.conn) >= 64 * 1024);
	/* A pipelined NOP waits behind STREAM. */
	fix_send(&fa, "NOP\n", 4);
	/* Now A reads everything. */
	uint64_t end = t_now_ms() + 30000;
	while (t_now_ms() < end && !(fa.rxlen >= 7 && memcmp(fa.rx + fa.rxlen - 7, "\nOK\nOK\n", 7) == 0 &&
				g_streamer == NULL && fa.rxlen > total))
		pump(&fa, (size_t)-1, 5);
	CHECK(fa.rxlen > total);
	/* The D lines, "OK" for STREAM, "OK" for the NOP. */
	if (fa.rxlen > total)
		check_stream(fa.rx, fa.rxlen - 3, total);
	/* The queue never grew much past the limit (one chunk, escaped). */
	CHECK(g_max_pending <= 64 * 1024 + 3 * STREAM_CHUNK + 64);
	/* A goes first; fix_close on B frees the server and the loop. */
	close(fa.rfd);
	free(fa.rx);
	fix_close(&fb);
}

/* A client that asks for megabytes and goes away without reading: the
 * write fails, the command is cancelled, everything is freed. */
static void test_disconnect_while_streaming(void)
{
	struct fix f;
	fix_stream_server(&f);
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	CHECK_EQ(weft_assuan_server_adopt_fd(f.srv, sv[0], &f.conn), 0);
	f.rfd = f.wfd = sv[1];
	EXPECT(&f, greeting());
	fix_send(&f, "STREAM 100000000\n", 17);
	uint64_t end = t_now_ms() + 5000;
	while ((g_streamer == NULL || !g_streamer->waiting) && t_now_ms() < end) {
		weft_loop_run(f.loop, WEFT_RUN_NOWAIT);
		t_sleep_ms(1);
	}
	CHECK(g_streamer != NULL && g_streamer->waiting);
	close(f.rfd);
	f.rfd = f.wfd = -1;
	run_until_closed(&f);
	CHECK(g_streamer == NULL); /* freed by its cancel callback */
	CHECK_EQ(g.close, 1);
	fix_close(&f);
}

/* A client that writes thousands of commands without reading: the server
 * stops reading while its answers wait (bounded memory), and every one is
 * answered in order. */
static void test_pipeline_flood(void)
{
	struct fix f;
	fix_server(&f);
	weft_assuan_limits lim = {.output = 16 * 1024};
	weft_assuan_server_set_limits(f.srv, &lim);
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
	CHECK_EQ(weft_assuan_server_adopt_fd(f.srv, sv[0], &f.conn), 0);
	f.rfd = f.wfd = sv[1];
	EXPECT(&f, greeting());
	const int n = 100000;
	const char *cmds = "NOP\nECHO x\n"; /* 11 bytes, answers "OK\nD x\nOK\n" */
	size_t sent = 0, want = (size_t)n * 11;
	size_t maxpend = 0;
	int stalls = 0;
	uint64_t end = t_now_ms() + 30000;
	while (t_now_ms() < end) {
		/* Write until the socket is full, without reading. */
		char buf[8192];
		while (sent < want) {
			size_t k = want - sent < sizeof buf ? want - sent : sizeof buf;
			for (size_t i = 0; i < k; i++)
				buf[i] = cmds[(sent + i) % 11];
			ssize_t w = write(f.wfd, buf, k);
			if (w <= 0)
				break;
			sent += (size_t)w;
		}
		if (sent < want)
			stalls++;
		for (int i = 0; i < 20; i++)
			weft_loop_run(f.loop, WEFT_RUN_NOWAIT);
		if (weft_assuan_output_pending(f.conn) > maxpend)
			maxpend = weft_assuan_output_pending(f.conn);
		pump(&f, (size_t)-1, 0);
		if (sent == want && f.rxlen >= (size_t)n * 10)
			break;
	}
	CHECK(stalls > 0); /* the server did stop reading */
	CHECK(maxpend <= 16 * 1024 + 16384); /* at most a buffer of answers past the limit */
	CHECK_EQ(f.rxlen, (size_t)n * 10);
	int bad = 0;
	for (size_t i = 0; i + 10 <= f.rxlen; i += 10)
		bad += memcmp(f.rx + i, "OK\nD x\nOK\n", 10) != 0;
	CHECK_EQ(bad, 0);
	f.rxlen = 0;
	fix_close(&f);
}

/* ---- hand-driven mode -------------------------------------------------------------------- */

/* One turn of a plain poll() loop around a connection: poll what
 * get_active_fds names (up to the loop's timeout, at most ms), then
 * process_next.  Returns whether the connection is done. */
static int g_write_polls; /* turns that polled the connection for writing */

static bool hand_turn(weft_assuan_conn *c, weft_loop *loop, int ms, uint64_t *slowest)
{
	int fds[4];
	struct pollfd p[8];
	int np = 0;
	int n = weft_assuan_get_active_fds(c, 0, fds, 4);
	CHECK(n >= 0 && n <= 1);
	for (int i = 0; i < n; i++)
		p[np++] = (struct pollfd){.fd = fds[i], .events = POLLIN};
	n = weft_assuan_get_active_fds(c, 1, fds, 4);
	CHECK(n >= 0 && n <= 1);
	g_write_polls += n;
	for (int i = 0; i < n; i++)
		p[np++] = (struct pollfd){.fd = fds[i], .events = POLLOUT};
	int64_t to = weft_loop_get_timeout(loop);
	int wait = to >= 0 && to < ms ? (int)to : ms;
	poll(p, (nfds_t)np, wait);
	bool done = false;
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_assuan_process_next(c, &done), 0);
	uint64_t dt = t_now_ms() - t0;
	if (dt > *slowest)
		*slowest = dt;
	return done;
}

/* Read what is there now (non-blocking). */
static size_t grab(int fd, char *buf, size_t have, size_t cap)
{
	ssize_t k;
	while (have < cap && (k = read(fd, buf + have, cap - have)) > 0)
		have += (size_t)k;
	return have;
}

static void test_hand_driven(void)
{
	weft_loop *loop;
	weft_assuan_server *srv;
	CHECK_EQ(weft_loop_new(&loop), 0);
	CHECK_EQ(weft_assuan_server_new(loop, &srv), 0);
	memset(&g, 0, sizeof g);
	weft_assuan_server_set_err_source(srv, AGENT);
	weft_assuan_server_set_hooks(srv, &all_hooks, NULL);
	register_test_commands(srv);
	CHECK_EQ(weft_assuan_register(srv, "STREAM", cmd_stream, NULL, NULL), 0);
	weft_assuan_limits lim = {.output = 64 * 1024};
	weft_assuan_server_set_limits(srv, &lim);
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
	weft_assuan_conn *c;
	CHECK_EQ(weft_assuan_server_adopt_fd(srv, sv[0], &c), 0);
	int cl = sv[1];
	char buf[4096];
	size_t have = 0;
	uint64_t slowest = 0;
	int fds[2];
	CHECK_EQ(weft_assuan_get_active_fds(c, 2, fds, 2), -EINVAL);
	CHECK_EQ(weft_assuan_get_active_fds(c, 0, fds, 0), -EINVAL);
	uint64_t end = t_now_ms() + 5000;
	while (memchr(buf, '\n', have) == NULL && t_now_ms() < end) {
		hand_turn(c, loop, 10, &slowest);
		have = grab(cl, buf, have, sizeof buf);
	}
	CHECK_BYTES(buf, have, greeting(), strlen(greeting()));
	/* 20 commands, each line split across two writes with a turn of
	 * the loop between them: libassuan's process_next sleeps 100 ms on
	 * the partial line (2 s in all); weft answers at once. */
	uint64_t t0 = t_now_ms();
	int answered = 0;
	for (int i = 0; i < 20; i++) {
		have = 0;
		CHECK_EQ(write(cl, "ECHO sp", 7), 7);
		hand_turn(c, loop, 0, &slowest);
		CHECK_EQ(grab(cl, buf, 0, sizeof buf), 0); /* no answer to half a line */
		CHECK_EQ(write(cl, "lit\n", 4), 4);
		end = t_now_ms() + 5000;
		while (have < 11 && t_now_ms() < end) {
			hand_turn(c, loop, 100, &slowest);
			have = grab(cl, buf, have, sizeof buf);
		}
		answered += have == 11 && memcmp(buf, "D split\nOK\n", 11) == 0;
	}
	uint64_t dt = t_now_ms() - t0;
	CHECK_EQ(answered, 20);
	printf("# hand-driven: 20 split-line round trips in %llu ms (slowest process_next %llu ms)\n",
			(unsigned long long)dt, (unsigned long long)slowest);
	CHECK(dt < 500); /* libassuan: >= 2000 ms (100 ms per partial line); generous for loaded machines */
	/* A pending command wakes the poll loop through the loop's timeout. */
	have = 0;
	CHECK_EQ(write(cl, "ASYNC 20\nNOP\n", 13), 13);
	end = t_now_ms() + 5000;
	while (have < 30 && t_now_ms() < end) {
		hand_turn(c, loop, 1000, &slowest);
		have = grab(cl, buf, have, sizeof buf);
	}
	CHECK_BYTES(buf, have, "S PROGRESS start\nD late\nOK\nOK\n", 30);
	/* 2 MiB of D lines to a client that reads at most 32 KiB per turn:
	 * the poll loop waits for the socket to be writable, nothing is lost. */
	size_t total = 2u << 20;
	char cmd[64];
	snprintf(cmd, sizeof cmd, "STREAM %zu\n", total);
	CHECK_EQ(write(cl, cmd, strlen(cmd)), (ssize_t)strlen(cmd));
	size_t cap = total * 2, got = 0;
	char *big = malloc(cap);
	g_write_polls = 0;
	end = t_now_ms() + 20000;
	while (t_now_ms() < end && !(got > total && memcmp(big + got - 4, "\nOK\n", 4) == 0)) {
		hand_turn(c, loop, 1, &slowest);
		ssize_t k = read(cl, big + got, got + 32768 <= cap ? 32768 : cap - got);
		if (k > 0)
			got += (size_t)k;
	}
	check_stream(big, got, total);
	CHECK(g_write_polls > 0);
	free(big);
	/* BYE ends it: done becomes true, the close hook has run. */
	CHECK_EQ(write(cl, "BYE\n", 4), 4);
	bool done = false;
	end = t_now_ms() + 5000;
	while (!done && t_now_ms() < end)
		done = hand_turn(c, loop, 10, &slowest);
	CHECK(done);
	CHECK_EQ(g.close, 1);
	have = grab(cl, buf, 0, sizeof buf);
	CHECK_BYTES(buf, have, "OK closing connection\n", 22);
	CHECK_EQ(read(cl, buf, 1), 0);
	close(cl);
	weft_assuan_server_free(srv);
	int r = -EBUSY;
	for (int i = 0; i < 100 && (r = weft_loop_free(loop)) == -EBUSY; i++)
		weft_loop_run(loop, WEFT_RUN_NOWAIT);
	CHECK_EQ(r, 0);
}

/* ---- many connections -------------------------------------------------------------------- */

static char g_dir[64];

static void test_many_clients(void)
{
	enum { N = 200 };
	struct fix f;
	fix_server(&f);
	char addr[160], path[100];
	snprintf(path, sizeof path, "%s/many.sock", g_dir);
	snprintf(addr, sizeof addr, "unix:%s", path);
	CHECK_EQ(weft_assuan_server_listen(f.srv, addr, NULL), 0);
	CHECK(weft_assuan_server_listener(f.srv) != NULL);
	CHECK_EQ(weft_assuan_server_listen(f.srv, addr, NULL), -EBUSY);
	static int cl[N];
	static char *rx[N];
	static size_t rxlen[N];
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
	for (int i = 0; i < N; i++) {
		cl[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		int r;
		uint64_t end = t_now_ms() + 5000;
		while ((r = connect(cl[i], (struct sockaddr *)&sa, sizeof sa)) < 0 && errno == EAGAIN &&
				t_now_ms() < end)
			weft_loop_run(f.loop, WEFT_RUN_NOWAIT);
		CHECK_EQ(r, 0);
		char cmd[64];
		int n = snprintf(cmd, sizeof cmd, "ASYNC 50\nECHO %d\n", i);
		CHECK_EQ(write(cl[i], cmd, (size_t)n), n);
		rx[i] = calloc(1, 256);
	}
	/* All 200 pending at once, then all answered: well under 200 x 50 ms. */
	uint64_t t0 = t_now_ms(), end = t0 + 20000;
	int complete = 0;
	while (complete < N && t_now_ms() < end) {
		weft_loop_run(f.loop, WEFT_RUN_ONCE);
		complete = 0;
		for (int i = 0; i < N; i++) {
			rxlen[i] = grab(cl[i], rx[i], rxlen[i], 255);
			size_t lines = 0;
			for (size_t k = 0; k < rxlen[i]; k++)
				lines += rx[i][k] == '\n';
			complete += lines >= 6;
		}
	}
	uint64_t dt = t_now_ms() - t0;
	CHECK_EQ(complete, N);
	CHECK(dt < 5000);
	int bad = 0;
	for (int i = 0; i < N; i++) {
		char want[256];
		snprintf(want, sizeof want, "%sS PROGRESS start\nD late\nOK\nD %d\nOK\n", greeting(), i);
		if (strlen(want) != rxlen[i] || memcmp(want, rx[i], rxlen[i]) != 0) {
			if (bad++ == 0)
				CHECK_BYTES(rx[i], rxlen[i], want, strlen(want));
		}
	}
	CHECK_EQ(bad, 0);
	CHECK_EQ(weft_assuan_server_connections(f.srv), N);
	CHECK_EQ(g.open, N);
	CHECK_EQ(g.async_done, N);
	for (int i = 0; i < N; i++) {
		close(cl[i]);
		free(rx[i]);
		rxlen[i] = 0;
	}
	fix_close(&f);
	CHECK_EQ(g.close, N);
	struct stat st;
	CHECK_EQ(stat(path, &st), -1); /* the server removed its socket file */
}

/* Other transports: TCP (no peer pid, no descriptor passing), an
 * abstract Unix name, and adopt_pipe with one socket for both ends. */
static void test_transports(void)
{
	struct fix f;
	fix_server(&f);
	CHECK_EQ(weft_assuan_server_listen(f.srv, "tcp:127.0.0.1:0", NULL), 0);
	weft_addr a;
	CHECK_EQ(weft_listener_addr(weft_assuan_server_listener(f.srv), &a), 0);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK_EQ(connect(fd, &a.u.sa, a.len), 0);
	f.rfd = f.wfd = fd;
	EXPECT(&f, "OK Pleased to meet you\n");
	TALK(&f, "INPUT FD\nECHO tcp\n", "ERR 67108933 Not implemented <GPG Agent> - server does not support sending and receiving of file descriptors\nD tcp\nOK\n");
	TALK(&f, "BYE\n", "OK closing connection\n");
	EXPECT_EOF(&f);
	fix_close(&f);
	/* Abstract name. */
	fix_server(&f);
	char addr[96];
	snprintf(addr, sizeof addr, "unix:@weft-assuan-test-%d", (int)getpid());
	CHECK_EQ(weft_assuan_server_listen(f.srv, addr, NULL), 0);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int n = snprintf(sa.sun_path + 1, sizeof sa.sun_path - 1, "weft-assuan-test-%d", (int)getpid());
	CHECK_EQ(connect(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n)), 0);
	f.rfd = f.wfd = fd;
	EXPECT(&f, greeting());
	TALK(&f, "NOP\n", "OK\n");
	fix_close(&f);
	/* adopt_pipe(fd, fd) on a socket: a socket connection, fds pass. */
	fix_server(&f);
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	CHECK_EQ(weft_assuan_server_adopt_pipe(f.srv, sv[0], sv[0], &f.conn), 0);
	f.rfd = f.wfd = sv[1];
	EXPECT(&f, greeting());
	PASS_INPUT_FD(&f, "x");
	fix_close(&f);
	/* Bad arguments. */
	CHECK_EQ(weft_assuan_server_adopt_fd(NULL, -1, NULL), -EINVAL);
	CHECK_EQ(weft_assuan_server_new(NULL, NULL), -EINVAL);
	weft_assuan_server_free(NULL);
}

/* A pipe server (two pipes, as stdin/stdout of a spawned server): 2 MiB
 * of D data through a full pipe, then the client goes away mid-stream. */
static void test_pipe_stream(void)
{
	struct fix f;
	fix_stream_server(&f);
	int in[2], out[2];
	CHECK_EQ(pipe2(in, O_CLOEXEC), 0);
	CHECK_EQ(pipe2(out, O_CLOEXEC), 0);
	CHECK_EQ(weft_assuan_server_adopt_pipe(f.srv, in[0], out[1], &f.conn), 0);
	f.wfd = in[1];
	f.rfd = out[0];
	EXPECT(&f, "OK Pleased to meet you\n");
	size_t total = 2u << 20;
	stream_whole(&f, total);
	/* Again, and the client closes both pipes while data is queued. */
	char cmd[64];
	snprintf(cmd, sizeof cmd, "STREAM %zu\n", total);
	fix_send(&f, cmd, strlen(cmd));
	wait_streamer_blocked(f.loop);
	CHECK(g_streamer != NULL);
	close(f.rfd);
	close(f.wfd);
	f.rfd = f.wfd = -1;
	run_until_closed(&f);
	CHECK(g_streamer == NULL);
	CHECK_EQ(g.close, 1);
	fix_close(&f);
}

/* A stream with a request still attached cannot be taken over: the
 * connection drives it by requests instead — the same answers, 1 MiB of D
 * data through a socket the client drains slowly, fds passed. */
static void test_request_driven(void)
{
	struct fix f;
	fix_stream_server(&f);
	int sv[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	weft_stream *s;
	CHECK_EQ(weft_stream_new_socket(f.loop, sv[0], &s), 0);
	/* 1 MiB of comment lines: more than the socket takes, so the write is
	 * still under way (attached) when the stream is adopted. */
	size_t prelen = 1u << 20;
	char *prebuf = malloc(prelen);
	for (size_t i = 0; i < prelen; i += 64) {
		memset(prebuf + i, 'c', 64);
		memcpy(prebuf + i, "# ", 2);
		prebuf[i + 63] = '\n';
	}
	struct iovec iov = {prebuf, prelen};
	weft_req *pre = weft_stream_writev_send(s, &iov, 1);
	CHECK(pre != NULL && weft_req_is_in_progress(pre));
	CHECK_EQ(weft_assuan_server_adopt(f.srv, s, &f.conn), 0);
	f.rfd = f.wfd = sv[1];
	EXPECTN(&f, prebuf, prelen);
	free(prebuf);
	EXPECT(&f, greeting());
	TALK(&f, "NOP\nnop\r\n# c\nECHO req\n", "OK\nOK\nD req\nOK\n");
	PASS_INPUT_FD(&f, "y");
	stream_whole(&f, 1u << 20);
	TALK(&f, "BYE\n", "OK closing connection\n");
	EXPECT_EOF(&f);
	run_until_closed(&f);
	weft_req_free(pre);
	fix_close(&f);
}

/* ---- tier 3: interop with the real gpg-connect-agent ------------------------------------ */

#ifdef GPG_CONNECT_AGENT
/* A child process with its stdout and stderr captured. */
struct child {
	pid_t pid;
	int out, err; /* read ends, -1 at EOF */
	char obuf[65536], ebuf[8192];
	size_t olen, elen;
	int status;
};

static void child_start(struct child *ch, const char *path, const char *const *argv)
{
	memset(ch, 0, sizeof *ch);
	int o[2], e[2];
	CHECK_EQ(pipe2(o, O_CLOEXEC), 0);
	CHECK_EQ(pipe2(e, O_CLOEXEC), 0);
	fflush(stdout);
	ch->pid = fork();
	if (ch->pid == 0) {
		char home[128];
		snprintf(home, sizeof home, "%s/home", g_dir);
		setenv("GNUPGHOME", home, 1);
		setenv("LC_ALL", "C", 1);
		if (chdir(g_dir) < 0)
			_exit(126);
		int null = open("/dev/null", O_RDONLY);
		dup2(null, 0);
		dup2(o[1], 1);
		dup2(e[1], 2);
		alarm(0);
		execv(path, (char *const *)argv);
		_exit(127);
	}
	CHECK(ch->pid > 0);
	close(o[1]);
	close(e[1]);
	ch->out = o[0];
	ch->err = e[0];
	fcntl(ch->out, F_SETFL, O_NONBLOCK);
	fcntl(ch->err, F_SETFL, O_NONBLOCK);
}

static void drain_pipe(int *fd, char *buf, size_t *len, size_t cap)
{
	if (*fd < 0)
		return;
	for (;;) {
		ssize_t n = read(*fd, buf + *len, cap - 1 - *len);
		if (n > 0) {
			*len += (size_t)n;
			buf[*len] = '\0';
			continue;
		}
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) || *len == cap - 1) {
			close(*fd);
			*fd = -1;
		}
		return;
	}
}

/* Wait for the child to end, running loop (may be NULL) meanwhile; killed
 * after ms.  Returns whether it exited by itself. */
static bool child_wait(struct child *ch, weft_loop *loop, unsigned ms)
{
	uint64_t end = t_now_ms() + ms;
	bool timed_out = false;
	for (;;) {
		if (loop)
			weft_loop_run(loop, WEFT_RUN_NOWAIT);
		drain_pipe(&ch->out, ch->obuf, &ch->olen, sizeof ch->obuf);
		drain_pipe(&ch->err, ch->ebuf, &ch->elen, sizeof ch->ebuf);
		if (ch->out < 0 && ch->err < 0)
			break;
		if (t_now_ms() >= end) {
			timed_out = true;
			kill(ch->pid, SIGKILL);
			if (ch->out >= 0)
				close(ch->out);
			if (ch->err >= 0)
				close(ch->err);
			ch->out = ch->err = -1;
			break;
		}
		struct pollfd p[3];
		int np = 0;
		if (ch->out >= 0)
			p[np++] = (struct pollfd){.fd = ch->out, .events = POLLIN};
		if (ch->err >= 0)
			p[np++] = (struct pollfd){.fd = ch->err, .events = POLLIN};
		if (loop)
			p[np++] = (struct pollfd){.fd = weft_loop_get_fd(loop), .events = POLLIN};
		int64_t to = loop ? weft_loop_get_timeout(loop) : -1;
		poll(p, (nfds_t)np, to >= 0 && to < 10 ? (int)to : 10);
	}
	/* Let the server see the client's end too. */
	while (waitpid(ch->pid, &ch->status, loop ? WNOHANG : 0) == 0) {
		weft_loop_run(loop, WEFT_RUN_NOWAIT);
		t_sleep_ms(1);
	}
	if (timed_out || !WIFEXITED(ch->status) || WEXITSTATUS(ch->status) != 0) {
		printf("# child %s, status %d\n", timed_out ? "timed out" : "failed", ch->status);
		show("stderr", ch->ebuf, ch->elen);
		return false;
	}
	return true;
}

static void write_file(const char *name, const void *p, size_t n)
{
	char path[160];
	snprintf(path, sizeof path, "%s/%s", g_dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	CHECK(fd >= 0);
	CHECK_EQ(write(fd, p, n), (ssize_t)n);
	close(fd);
}

/* gpg-connect-agent -S drives a server in this process through commands,
 * OPTION, HELP, errors, D data with escapes, INQUIRE (/definqfile,
 * /definqprog, none: CANCEL), too much data, a pending command. */
static void test_gca_inprocess(void)
{
	struct fix f;
	fix_server(&f);
	char addr[160], sock[120];
	snprintf(sock, sizeof sock, "%s/gca.sock", g_dir);
	snprintf(addr, sizeof addr, "unix:%s", sock);
	CHECK_EQ(weft_assuan_server_listen(f.srv, addr, NULL), 0);
	static const char value[] = "hello%world\nline2\r\n\x01 end";
	write_file("value.bin", value, sizeof value - 1);
	const char *argv[] = {"gpg-connect-agent", "-S", sock,
		"NOP", "nop", "FOOBAR", "OPTION --ttyname = /dev/pts/0", "OPTION frobnicate=1",
		"HELP GETVAL", "HELP NOP", "ECHO a%b\rc", "STATUS", "FAIL",
		"/definqfile VALUE value.bin", "PUT 1024", "PUT 4",
		"PUT2", "ASYNC 10", "/definqprog FIRST echo from-prog", "/definqprog SECOND echo x", "PUT2",
		"/bye", NULL};
	struct child ch;
	child_start(&ch, GPG_CONNECT_AGENT, argv);
	CHECK(child_wait(&ch, f.loop, 20000));
	static const char want[] =
		"OK\n"
		"OK\n"
		"ERR 67109139 Unknown IPC command <GPG Agent>\n"
		"OK\n"
		"ERR 67109038 Unknown option <GPG Agent>\n"
		"# GETVAL <key>\n# \n# Return the value for KEY from the special environment as created by\n# PUTVAL.\nOK\n"
		"ERR 67108891 Not found <GPG Agent>\n"
		"D a%25b%0Dc\nOK\n"
		"S EVENTCOUNTER 0 0 0\nS EMPTY\nOK\n"
		"ERR 67108891 Not found <GPG Agent> - No such envvar\n"
		"INQUIRE VALUE\nS INQUIRE_MAXLEN 1024\nOK got 24\n"
		"INQUIRE VALUE\nS INQUIRE_MAXLEN 4\nERR 67109137 Too much data for IPC layer <GPG Agent>\n"
		"INQUIRE FIRST\nERR 67109141 IPC call has been cancelled <GPG Agent>\n"
		"S PROGRESS start\nD late\nOK\n"
		"INQUIRE FIRST\nINQUIRE SECOND\nD from-prog%0A+x%0A\nOK\n";
	CHECK_BYTES(ch.obuf, ch.olen, want, sizeof want - 1);
	CHECK_STR(g.option, "ttyname=/dev/pts/0;frobnicate=1;");
	/* The file's bytes arrived exactly (escaped by gpg-connect-agent,
	 * decoded by weft): the PUT 1024 one; PUT 4 failed. */
	CHECK_BYTES(g.inq_data, g.inq_len, value, sizeof value - 1);
	CHECK_EQ(g.async_done, 1);
	run_until_closed(&f);
	fix_close(&f);
}

/* The weft-kv example as its own process, driven by gpg-connect-agent:
 * PUT by INQUIRE, GET, KEYS, descriptor passing (/sendfd + INPUT FD +
 * STORE), CAT, SLEEP while another client is served, and SIGTERM. */
static void test_gca_weft_kv(void)
{
	char sock[120];
	snprintf(sock, sizeof sock, "%s/kv.sock", g_dir);
	const char *kv_argv[] = {"weft-kv", "--socket", sock, NULL};
	struct child kv;
	child_start(&kv, WEFT_KV_PATH, kv_argv);
	struct stat st;
	uint64_t end = t_now_ms() + 10000;
	while (stat(sock, &st) < 0 && t_now_ms() < end && kill(kv.pid, 0) == 0 &&
			waitpid(kv.pid, NULL, WNOHANG) == 0)
		t_sleep_ms(5);
	if (stat(sock, &st) < 0) {
		CHECK(!"weft-kv did not start");
		kill(kv.pid, SIGKILL);
		child_wait(&kv, NULL, 5000);
		return;
	}
	static const char content[] = "one\ntwo%\r\nthree";
	write_file("cat.txt", content, sizeof content - 1);
	char cat[200];
	snprintf(cat, sizeof cat, "CAT %s/cat.txt", g_dir);
	/* gpg-connect-agent answers INQUIRE with the first definition of a
	 * keyword: one run per definition. */
	const char *pargv[] = {"gpg-connect-agent", "-S", sock,
		"/definqprog VALUE echo progdata", "PUT p", "GET p", "/bye", NULL};
	struct child ch;
	child_start(&ch, GPG_CONNECT_AGENT, pargv);
	CHECK(child_wait(&ch, NULL, 20000));
	CHECK_STR(ch.obuf, "INQUIRE VALUE\nOK\nD progdata%0A\nOK\n");
	const char *argv[] = {"gpg-connect-agent", "-S", sock,
		"/definqfile VALUE cat.txt", "PUT f", "GET f", "KEYS",
		"/sendfd cat.txt r", "INPUT FD", "STORE s", "GET s", cat,
		"SLEEP 20", "DEL p", "GET p", "HELP DEL", "STORE x", "BOGUS", "/bye", NULL};
	child_start(&ch, GPG_CONNECT_AGENT, argv);
	CHECK(child_wait(&ch, NULL, 20000));
	static const char want[] =
		"INQUIRE VALUE\nOK\n"
		"D one%0Atwo%25%0D%0Athree\nOK\n"
		"S KEY p\nS KEY f\nOK\n"
		"OK\nOK\n"
		"D one%0Atwo%25%0D%0Athree\nOK\n"
		"D one%0Atwo%25%0D%0Athree\nOK\n"
		"OK\nOK\n"
		"ERR 536870939 Not found <User defined source 1> - no such key\n"
		"# DEL <key>\nOK\n"
		"ERR 536871190 No input source for IPC <User defined source 1>\n"
		"ERR 536871187 Unknown IPC command <User defined source 1>\n";
	CHECK_BYTES(ch.obuf, ch.olen, want, sizeof want - 1);
	/* --decode: the D data decoded. */
	const char *dargv[] = {"gpg-connect-agent", "--decode", "-S", sock, cat, "/bye", NULL};
	child_start(&ch, GPG_CONNECT_AGENT, dargv);
	CHECK(child_wait(&ch, NULL, 20000));
	CHECK_STR(ch.obuf, "D one\nD two%\r\nD three\nOK\n");
	/* A SLEEP in one client does not hold up another. */
	const char *sargv[] = {"gpg-connect-agent", "-S", sock, "SLEEP 3000", "/bye", NULL};
	struct child slow;
	child_start(&slow, GPG_CONNECT_AGENT, sargv);
	t_sleep_ms(100);
	const char *nargv[] = {"gpg-connect-agent", "-S", sock, "NOP", "GET f", "/bye", NULL};
	uint64_t t0 = t_now_ms();
	child_start(&ch, GPG_CONNECT_AGENT, nargv);
	CHECK(child_wait(&ch, NULL, 20000));
	uint64_t dt = t_now_ms() - t0;
	CHECK_STR(ch.obuf, "OK\nD one%0Atwo%25%0D%0Athree\nOK\n");
	CHECK(dt < 2500);
	CHECK(child_wait(&slow, NULL, 20000));
	CHECK_STR(slow.obuf, "OK\n");
	CHECK(t_now_ms() - t0 >= 2800);
	/* Raw clients that leave in the middle of an INQUIRE, a SLEEP and an
	 * endless CAT: weft-kv frees their work (under ASan its exit status
	 * below says so). */
	static const char *leave[] = {"PUT leak\n", "SLEEP 100000\n", "CAT /dev/zero\n"};
	for (int i = 0; i < 3; i++) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		memcpy(sa.sun_path, sock, strlen(sock) < sizeof sa.sun_path ? strlen(sock) : sizeof sa.sun_path - 1);
		CHECK_EQ(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
		CHECK_EQ(write(fd, leave[i], strlen(leave[i])), (ssize_t)strlen(leave[i]));
		char buf[4096];
		size_t have = 0;
		struct pollfd p = {.fd = fd, .events = POLLIN};
		/* The greeting, and for PUT and CAT a first answer line. */
		int lines = 0, want_lines = i == 1 ? 1 : 2;
		while (lines < want_lines && have < sizeof buf && poll(&p, 1, 5000) == 1) {
			ssize_t n = read(fd, buf + have, sizeof buf - have);
			if (n <= 0)
				break;
			for (ssize_t k = 0; k < n; k++)
				lines += buf[have + (size_t)k] == '\n';
			have += (size_t)n;
		}
		CHECK(lines >= want_lines);
		if (i == 0)
			CHECK(have >= 31 && memcmp(buf, "OK weft-kv ready\nINQUIRE VALUE\n", 31) == 0);
		if (i == 1)
			t_sleep_ms(50); /* SLEEP is running */
		close(fd);
	}
	/* CAT of a FIFO to a client that reads late: a chunk refused for
	 * lack of room cannot be read again (no lseek on a pipe); no byte
	 * may be lost. */
	char fifo[160];
	snprintf(fifo, sizeof fifo, "%s/fifo", g_dir);
	CHECK_EQ(mkfifo(fifo, 0600), 0);
	size_t total = 4u << 20;
	fflush(stdout);
	pid_t w = fork();
	if (w == 0) {
		int ffd = open(fifo, O_WRONLY | O_CLOEXEC);
		unsigned char chunk[65536];
		for (size_t off = 0; ffd >= 0 && off < total; off += sizeof chunk) {
			for (size_t i = 0; i < sizeof chunk; i++)
				chunk[i] = stream_byte((unsigned)total, off + i);
			for (size_t d = 0; d < sizeof chunk;) {
				ssize_t k = write(ffd, chunk + d, sizeof chunk - d);
				if (k <= 0)
					_exit(1);
				d += (size_t)k;
			}
		}
		_exit(0);
	}
	int cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un csa = {.sun_family = AF_UNIX};
	memcpy(csa.sun_path, sock, strlen(sock) < sizeof csa.sun_path ? strlen(sock) : sizeof csa.sun_path - 1);
	CHECK_EQ(connect(cfd, (struct sockaddr *)&csa, sizeof csa), 0);
	char catcmd[200];
	int cn = snprintf(catcmd, sizeof catcmd, "CAT %s\n", fifo);
	CHECK_EQ(write(cfd, catcmd, (size_t)cn), cn);
	t_sleep_ms(300); /* weft-kv fills its queue meanwhile */
	size_t cap = total * 2, got = 0;
	char *big = malloc(cap);
	end = t_now_ms() + 20000;
	struct pollfd cp = {.fd = cfd, .events = POLLIN};
	while (got < cap && t_now_ms() < end && !(got > total && memcmp(big + got - 4, "\nOK\n", 4) == 0) &&
			poll(&cp, 1, 1000) >= 0) {
		ssize_t k = read(cfd, big + got, cap - got);
		if (k <= 0)
			break;
		got += (size_t)k;
	}
	static const char hello[] = "OK weft-kv ready\n";
	CHECK(got > sizeof hello && memcmp(big, hello, sizeof hello - 1) == 0);
	if (got > sizeof hello)
		check_stream(big + sizeof hello - 1, got - (sizeof hello - 1), total);
	free(big);
	close(cfd);
	int wst = 0;
	CHECK_EQ(waitpid(w, &wst, 0), w);
	CHECK(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
	/* SIGTERM: a clean exit, the socket file removed. */
	kill(kv.pid, SIGTERM);
	CHECK(child_wait(&kv, NULL, 10000));
	CHECK(WIFEXITED(kv.status) && WEXITSTATUS(kv.status) == 0);
	CHECK_EQ(stat(sock, &st), -1);
}
#endif

#ifndef GPG_CONNECT_AGENT
static void skip_test(void)
{
}
#endif

/* TEST_ONLY=word runs only the tests whose name has the word. */
static void run(const char *name, void (*fn)(void), unsigned seconds)
{
	const char *only = getenv("TEST_ONLY");
	if (only == NULL || strstr(name, only) != NULL) {
		uint64_t t0 = t_now_ms();
		t_run_watchdog(name, fn, seconds);
		if (getenv("TEST_TIMES"))
			printf("# %llu ms\n", (unsigned long long)(t_now_ms() - t0));
	}
}

/* Command hooks set while a connection is open take effect for its next
 * command (the connection's short path is left); force close without
 * hooks. */
static void test_hooks_later(void)
{
	struct fix f;
	g_no_cmd_hooks = true;
	fix_open(&f);
	g_no_cmd_hooks = false;
	EXPECT(&f, greeting());
	TALK(&f, "NOP\nECHO x\nNOP\n", "OK\nD x\nOK\nOK\n");
	CHECK_STR(g.post, "");
	weft_assuan_server_set_hooks(f.srv, &all_hooks, NULL);
	TALK(&f, "NOP\nNOP\n", "OK\nOK\n");
	CHECK_STR(g.pre, "NOP;NOP;");
	CHECK_STR(g.post, "0;0;");
	weft_assuan_hooks none = {.open = h_open, .close = h_close};
	weft_assuan_server_set_hooks(f.srv, &none, NULL);
	TALK(&f, "NOP\n", "OK\n");
	CHECK_STR(g.post, "0;0;");
	TALK(&f, "CLOSE ok\nNOP\n", "OK\n");
	EXPECT_EOF(&f);
	run_until_closed(&f);
	fix_close(&f);
}

/* The server tests that do not look at the command hooks, again without
 * them. */
static const struct {
	const char *name;
	void (*fn)(void);
} plain_tests[] = {
	{"greeting", test_greeting}, {"basics", test_basics}, {"errors", test_errors},
	{"OPTION", test_option}, {"HELP", test_help}, {"over-long lines", test_line_too_long},
	{"pending", test_pending}, {"pending, disconnect", test_pending_disconnect},
	{"pending, server free", test_pending_server_free},
	{"streaming command cancelled", test_disconnect_while_streaming},
	{"inquire", test_inquire}, {"inquire, 1 MiB", test_inquire_big}, {"input full", test_input_full},
	{"mixed output", test_mixed_output}, {"random sessions", test_random_sessions},
	{"fds without passing", test_fds_no_passing}, {"fd passing", test_fd_passing},
	{"backpressure", test_backpressure}, {"pipeline flood", test_pipeline_flood},
	{"transports", test_transports}, {"pipe stream", test_pipe_stream}, {"hand-driven", test_hand_driven},
	{"many clients", test_many_clients}, {"request-driven stream", test_request_driven},
};
static size_t g_plain_idx;

static void run_plain(void)
{
	g_no_cmd_hooks = true;
	plain_tests[g_plain_idx].fn();
	g_no_cmd_hooks = false;
}

/* ---- main ------------------------------------------------------------------------ */

int main(void)
{
	snprintf(g_dir, sizeof g_dir, "/tmp/weft-assuan-XXXXXX");
	if (mkdtemp(g_dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	run("engine: lines at every split point, one byte at a time", test_engine_lines, 60);
	run("engine: the 1002-byte limit (T15), over-long lines skipped in bounded memory", test_engine_line_limit, 60);
	run("engine: D-line escaping and splitting (V7, V8, V9)", test_engine_dlines, 60);
	run("engine: D-line encoding of random data vs libassuan's algorithm", test_engine_dlines_model, 60);
	run("engine: percent decoding, strict and loose", test_engine_decode, 60);
	run("engine: ERR, OK, S, INQUIRE, END and comment lines", test_engine_responses, 60);
	run("server: greeting (peer pid, custom, multi-line, pipe server)", test_greeting, 60);
	run("server: NOP, case, CRLF, comments, pipelining, BYE (V1)", test_basics, 60);
	run("server: errors, NUL, white-space, not-implemented built-ins (V2)", test_errors, 60);
	run("server: OPTION (V3)", test_option, 60);
	run("server: HELP list and per command (V5, V6)", test_help, 60);
	run("server: pre/post-command, RESET, BYE hooks, force close, peer cred", test_hooks, 60);
	run("server: over-long lines answered with ERR, connection stays in sync (T15)", test_line_too_long, 60);
	run("pending: answered later, pipelined commands wait in order, S/D while pending", test_pending, 60);
	run("pending: client disconnect or close cancels and frees the command", test_pending_disconnect, 60);
	run("pending: server free with pending commands on three connections", test_pending_server_free, 60);
	run("pending: process_done inside the handler, close and server free from a handler", test_inside_handlers, 60);
	run("pending: a streaming command cancelled when the client leaves without reading", test_disconnect_while_streaming, 60);
	run("inquire: V11/V12, CAN, unexpected, too much data drained, malformed %, chained", test_inquire, 60);
	run("inquire: 1 MiB of escaped data, the server's default limit, bad keywords", test_inquire_big, 60);
	run("input: 40 KB and 600 KB of lines waiting behind a pending command", test_input_full, 60);
	run("output: D lines, END, status and comments mixed; flush; default greeting restored", test_mixed_output, 60);
	run("random sessions: garbage, inquiries and escapes in random pieces; always back in sync", test_random_sessions, 60);
	run("INPUT/OUTPUT without fd passing (V4); FD=n only for passed/allowed fds", test_fds_no_passing, 60);
	run("INPUT/OUTPUT with SCM_RIGHTS (T17): same file, RESET closes, limits", test_fd_passing, 60);
	run("output: a client that does not read; -ENOBUFS, on_room, other clients served, no byte lost", test_backpressure, 60);
	run("output: 100000 pipelined commands from a client that does not read", test_pipeline_flood, 60);
	run("transports: TCP, abstract Unix name, adopt_pipe on one socket", test_transports, 60);
	run("transports: a pipe server streams 2 MiB through a full pipe; client leaves mid-stream", test_pipe_stream, 60);
	run("hand-driven: poll() loop, split lines answered at once, pending, BYE", test_hand_driven, 60);
	run("transports: a stream that cannot be taken over is driven by requests (D, fds, BYE)", test_request_driven, 60);
	run("hooks: command hooks set while a connection is open; force close without hooks", test_hooks_later, 60);
	for (g_plain_idx = 0; g_plain_idx < sizeof(plain_tests) / sizeof(plain_tests[0]); g_plain_idx++) {
		char name[96];
		snprintf(name, sizeof name, "no command hooks: %s", plain_tests[g_plain_idx].name);
		run(name, run_plain, 60);
	}
	run("many: 200 clients on one loop, all pending at once", test_many_clients, 60);
#ifdef GPG_CONNECT_AGENT
	run("interop: gpg-connect-agent drives an in-test server (OPTION, HELP, D, INQUIRE, errors)", test_gca_inprocess, 120);
	run("interop: gpg-connect-agent drives weft-kv (INQUIRE, fd passing, CAT, SLEEP, SIGTERM)", test_gca_weft_kv, 120);
#else
	run("interop: gpg-connect-agent # SKIP gpg-connect-agent not found at build time", skip_test, 1);
#endif
	char cleanup[200];
	snprintf(cleanup, sizeof cleanup, "rm -rf %s", g_dir);
	if (system(cleanup) != 0)
		printf("# could not remove %s\n", g_dir);
	return t_finish();
}
