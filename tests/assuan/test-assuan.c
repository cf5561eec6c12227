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
	weft_assuan_err inq_err;        /* the last inquire continuation's */
	unsigned char inq_data[4096];
	size_t inq_len;
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

static weft_assuan_err h_pre(weft_assuan_conn *c, const char *cmd, void *data)
{
	(void)data;
	log_add(g.pre, sizeof g.pre, cmd, NULL);
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
	g.inq_len = len < sizeof g.inq_data ? len : sizeof g.inq_data;
	if (err == 0) {
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

/* PUT2: two inquiries in a row; OK "<first>+<second>". */
static weft_assuan_err put2_second(weft_assuan_conn *c, weft_assuan_err err, unsigned char *buf, size_t len,
		void *data)
{
	char *first = data;
	if (err == 0) {
		char okay[128];
		snprintf(okay, sizeof okay, "%s+%.*s", first, (int)len, (char *)buf);
		weft_assuan_set_okay_line(c, okay);
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

static void fix_server(struct fix *f)
{
	memset(f, 0, sizeof *f);
	memset(&g, 0, sizeof g);
	g.taken_fd = -1;
	f->rfd = f->wfd = -1;
	CHECK_EQ(weft_loop_new(&f->loop), 0);
	CHECK_EQ(weft_assuan_server_new(f->loop, &f->srv), 0);
	weft_assuan_server_set_err_source(f->srv, AGENT);
	weft_assuan_server_set_hooks(f->srv, &all_hooks, NULL);
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
			"# PUT\n# PUT2\n# FDINFO\n# TAKE\n# GETVAL <key>\n# SETKEY\n# INPUT\n# OUTPUT\nOK\n");
	/* Re-registering replaces the entry in place. */
	CHECK_EQ(weft_assuan_register(f.srv, "NOP", NULL, NULL, "NOP\nDo nothing."), 0);
	TALK(&f, "HELP NOP\n", "# NOP\n# Do nothing.\nOK\n");
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
	TALK(&f, "ASYNC 50\nNOP\nECHO x\nFOO\n", "S PROGRESS start\n");
	EXPECT_QUIET(&f, 20); /* the NOP waits for ASYNC */
	EXPECT(&f, "D late\nOK\nOK\nD x\nOK\nERR 67109139 Unknown IPC command <GPG Agent>\n");
	CHECK_EQ(g.async_done, 1);
	CHECK_EQ(g.cancelled, 0);
	/* Two in a row, and lines that arrive while one is pending. */
	TALK(&f, "ASYNC 10\nASYNC 10\n", "S PROGRESS start\n");
	fix_send(&f, "NOP\n", 4);
	EXPECT(&f, "D late\nOK\nS PROGRESS start\nD late\nOK\nOK\n");
	CHECK_EQ(g.async_done, 3);
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
	f.rfd = f.wfd = cl[0];
	EXPECT(&f, greeting());
	EXPECT(&f, "S PROGRESS start\n");
	for (int i = 0; i < 50 && g.open > 0 && weft_loop_get_timeout(f.loop) == 0; i++)
		weft_loop_run(f.loop, WEFT_RUN_NOWAIT);
	CHECK_EQ(weft_assuan_server_connections(f.srv), 3);
	weft_assuan_server_free(f.srv);
	f.srv = NULL;
	CHECK_EQ(g.cancelled, 3);
	CHECK_EQ(g.close, 3);
	/* Every client sees the end. */
	for (int i = 0; i < 3; i++) {
		char buf[256];
		ssize_t n;
		uint64_t end = t_now_ms() + 2000;
		while ((n = read(cl[i], buf, sizeof buf)) != 0 && t_now_ms() < end) {
			if (n < 0)
				t_sleep_ms(1);
		}
		CHECK_EQ(n, 0);
		if (i > 0)
			close(cl[i]);
	}
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
	TALK(&f, "D two\nEND\n", "OK one+two\n");
	/* Everything pipelined in one write. */
	TALK(&f, "PUT 9\nD abc\nEND\nNOP\nPUT2\nD 1\nEND\nD 2\nEND\nECHO z\n",
			"INQUIRE VALUE\nS INQUIRE_MAXLEN 9\nOK got 3\nOK\nINQUIRE FIRST\nINQUIRE SECOND\nOK 1+2\nD z\nOK\n");
	/* The client disconnects in the middle of an inquiry. */
	TALK(&f, "PUT 100\nD partial\n", "INQUIRE VALUE\nS INQUIRE_MAXLEN 100\n");
	fix_close(&f);
	CHECK_EQ(g.close, 1);
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
	close(tf);
	fix_close(&f);
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
	/* More than the limit (5) in flight: the extra ones are closed. */
	for (int i = 0; i < 7; i++)
		send_fd(f.wfd, a);
	TALK(&f, "NOP\n", "OK\n");
	CHECK_EQ(t_fd_count(), base + 3 + 5);
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

/* ---- main ------------------------------------------------------------------------ */

int main(void)
{
	t_run_watchdog("engine: lines at every split point, one byte at a time", test_engine_lines, 60);
	t_run_watchdog("engine: the 1002-byte limit (T15), over-long lines skipped in bounded memory", test_engine_line_limit, 60);
	t_run_watchdog("engine: D-line escaping and splitting (V7, V8, V9)", test_engine_dlines, 60);
	t_run_watchdog("engine: percent decoding, strict and loose", test_engine_decode, 60);
	t_run_watchdog("engine: ERR, OK, S, INQUIRE, END and comment lines", test_engine_responses, 60);
	t_run_watchdog("server: greeting (peer pid, custom, multi-line, pipe server)", test_greeting, 60);
	t_run_watchdog("server: NOP, case, CRLF, comments, pipelining, BYE (V1)", test_basics, 60);
	t_run_watchdog("server: errors, NUL, white-space, not-implemented built-ins (V2)", test_errors, 60);
	t_run_watchdog("server: OPTION (V3)", test_option, 60);
	t_run_watchdog("server: HELP list and per command (V5, V6)", test_help, 60);
	t_run_watchdog("server: pre/post-command, RESET, BYE hooks, force close, peer cred", test_hooks, 60);
	t_run_watchdog("server: over-long lines answered with ERR, connection stays in sync (T15)", test_line_too_long, 60);
	t_run_watchdog("pending: answered later, pipelined commands wait in order, S/D while pending", test_pending, 60);
	t_run_watchdog("pending: client disconnect or close cancels and frees the command", test_pending_disconnect, 60);
	t_run_watchdog("pending: server free with pending commands on three connections", test_pending_server_free, 60);
	t_run_watchdog("inquire: V11/V12, CAN, unexpected, too much data drained, malformed %, chained", test_inquire, 60);
	t_run_watchdog("INPUT/OUTPUT without fd passing (V4); FD=n only for passed/allowed fds", test_fds_no_passing, 60);
	t_run_watchdog("INPUT/OUTPUT with SCM_RIGHTS (T17): same file, RESET closes, limits", test_fd_passing, 60);
	return t_finish();
}
