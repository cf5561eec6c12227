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
 *    and the weft-kv example.
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

/* ---- main ------------------------------------------------------------------------ */

int main(void)
{
	t_run_watchdog("engine: lines at every split point, one byte at a time", test_engine_lines, 60);
	t_run_watchdog("engine: the 1002-byte limit (T15), over-long lines skipped in bounded memory", test_engine_line_limit, 60);
	t_run_watchdog("engine: D-line escaping and splitting (V7, V8, V9)", test_engine_dlines, 60);
	t_run_watchdog("engine: percent decoding, strict and loose", test_engine_decode, 60);
	t_run_watchdog("engine: ERR, OK, S, INQUIRE, END and comment lines", test_engine_responses, 60);
	return t_finish();
}
