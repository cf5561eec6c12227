/* Tests for weft's fd-passing module (include/weft/fdpass.h).
 *
 * Three tiers:
 *  - the codec (src/fdpass/codec.c) fed by a simulated kernel: every read
 *    size, every two-read split, one byte at a time, with fake descriptor
 *    numbers and a recording close hook;
 *  - the low-level one-message calls and the server/client drivers over
 *    real sockets in this process;
 *  - real processes: forked raw peers (a server that dies between request
 *    and response, malformed peers), and this program re-executed as a weft
 *    server (--child-server) for 10 000 transfers in both directions, with
 *    the fd counts of both processes compared before and after.
 *
 * Every received descriptor is checked to be the same file (fstat st_dev
 * and st_ino) or used (read/write through it).  The helper fails a test
 * that leaks an fd in this process. */
#include "helper.h"

#include <weft/weft.h>
#include <weft/fdpass.h>

#include "fdpass-private.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_dir[64];  /* mkdtemp directory: socket paths, the shared file */
static char g_file[96]; /* a file whose identity the transfers check */
static int g_seq;
/* Kept reachable for forked children that leave with _exit (valgrind). */
static void *volatile g_keep[4];

/* ---- helpers ------------------------------------------------------------------ */


static void abstract_addr(weft_addr *a, const char *name)
{
	char text[128];
	snprintf(text, sizeof(text), "unix:@weft-fdpass-%d-%s-%d", (int)getpid(), name, ++g_seq);
	CHECK_EQ(weft_addr_parse(text, a), 0);
}

static void path_addr(weft_addr *a, const char *name)
{
	char text[160];
	snprintf(text, sizeof(text), "unix:%s/%s-%d", g_dir, name, ++g_seq);
	CHECK_EQ(weft_addr_parse(text, a), 0);
}

static bool same_file(int a, int b)
{
	struct stat sa, sb;
	if (fstat(a, &sa) < 0 || fstat(b, &sb) < 0)
		return false;
	return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static bool is_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);
	return fl >= 0 && (fl & FD_CLOEXEC);
}

/* In a forked child: close every inherited fd above 2 except keep. */
static void child_keep_fd(int keep)
{
	int fds[1024];
	int n = 0;
	DIR *d = opendir("/proc/self/fd");
	if (d != NULL) {
		struct dirent *e;
		while ((e = readdir(d)) != NULL && n < 1024)
			if (e->d_name[0] != '.')
				fds[n++] = atoi(e->d_name);
		closedir(d);
	}
	for (int i = 0; i < n; i++)
		if (fds[i] > 2 && fds[i] != keep)
			close(fds[i]);
}

static int wait_child(pid_t pid)
{
	int status = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- 1. codec ------------------------------------------------------------------- */

static void test_header(void)
{
	uint8_t b[WEFT__FDP_HDR];
	struct weft__fdp_hdr h = {.type = WEFT__FDP_RESPONSE, .nfds = 3, .len = 70000, .seq = 0xdeadbeef}, g;
	weft__fdp_put_header(b, &h);
	CHECK(memcmp(b, "WFDP\x01\x02\x00\x03", 8) == 0);
	CHECK_EQ(weft__fdp_get_header(b, 100000, 16, &g), 0);
	CHECK_EQ(g.type, h.type);
	CHECK_EQ(g.nfds, 3);
	CHECK_EQ(g.len, 70000);
	CHECK_EQ(g.seq, 0xdeadbeef);
	CHECK_EQ(weft__fdp_get_header(b, 69999, 16, &g), -EMSGSIZE);
	CHECK_EQ(weft__fdp_get_header(b, 100000, 2, &g), -ETOOMANYREFS);
	uint8_t bad[WEFT__FDP_HDR];
	memcpy(bad, b, sizeof(b));
	bad[0] = 'X';
	CHECK_EQ(weft__fdp_get_header(bad, 100000, 16, &g), -EPROTO);
	memcpy(bad, b, sizeof(b));
	bad[4] = 2; /* version */
	CHECK_EQ(weft__fdp_get_header(bad, 100000, 16, &g), -EPROTO);
	memcpy(bad, b, sizeof(b));
	bad[5] = 9; /* type */
	CHECK_EQ(weft__fdp_get_header(bad, 100000, 16, &g), -EPROTO);
	weft__fdp_put_header(bad, &(struct weft__fdp_hdr){.type = WEFT__FDP_ERROR, .len = 5});
	CHECK_EQ(weft__fdp_get_header(bad, 100000, 16, &g), -EPROTO); /* error payload is 4 bytes */
	weft__fdp_put_header(bad, &(struct weft__fdp_hdr){.type = WEFT__FDP_ERROR, .len = 4, .nfds = 1});
	CHECK_EQ(weft__fdp_get_header(bad, 100000, 16, &g), -EPROTO);
}

/* A simulated sender: units are sendmsg calls, each with its descriptors
 * on its first byte; the simulated kernel glues units into one read until
 * it has read from a unit that carried descriptors (unix_stream_read_generic). */
struct unit {
	size_t off, len;
	int fds[4];
	size_t nfds;
};

struct sim {
	uint8_t bytes[4096];
	size_t len;
	struct unit units[16];
	size_t nunits;
	int closed[64];
	size_t nclosed;
};

static void sim_close(int fd, void *ctx)
{
	struct sim *s = ctx;
	if (s->nclosed < 64)
		s->closed[s->nclosed++] = fd;
}

static void sim_add(struct sim *s, uint8_t type, uint32_t seq, const char *payload, const int *fds, size_t nfds)
{
	struct unit *u = &s->units[s->nunits++];
	u->off = s->len;
	size_t plen = strlen(payload);
	weft__fdp_put_header(s->bytes + s->len, &(struct weft__fdp_hdr){
			.type = type, .nfds = (uint16_t)nfds, .len = (uint32_t)plen, .seq = seq});
	memcpy(s->bytes + s->len + WEFT__FDP_HDR, payload, plen);
	s->len += WEFT__FDP_HDR + plen;
	u->len = WEFT__FDP_HDR + plen;
	if (nfds > 0)
		memcpy(u->fds, fds, nfds * sizeof(int));
	u->nfds = nfds;
}

/* The codec tests run twice: acknowledging reads as weft__fdp_dec_ack, and
 * as the drivers do (weft__fdp_dec_ack_msg: a read that is exactly one
 * whole message is handed out at once, nothing else is taken out then). */
static bool g_ack_msg;

/* Acknowledge a read in the current mode: 1 with *ret_msg, 0, or -errno. */
static int sim_ack(struct weft__fdp_dec *dec, size_t n, const int *fds, size_t nfds, bool truncated,
		struct weft__fdp_msg *ret_msg)
{
	if (g_ack_msg)
		return weft__fdp_dec_ack_msg(dec, n, fds, nfds, truncated, ret_msg);
	return weft__fdp_dec_ack(dec, n, fds, nfds, truncated);
}

/* Read sizes: first, then every, until the stream ends.  Returns the
 * messages decoded (payload text concatenated with '|', fds listed) into
 * out, or the decoder's error. */
static int sim_run(struct sim *s, struct weft__fdp_dec *dec, size_t first, size_t every, char *out, size_t outsz)
{
	size_t pos = 0;
	size_t want = first;
	out[0] = '\0';
	size_t olen = 0;
	while (pos < s->len) {
		uint8_t *space;
		size_t room;
		int r = weft__fdp_dec_space(dec, &space, &room);
		if (r < 0)
			return r;
		size_t take = want < room ? want : room;
		size_t n = 0;
		int fds[8];
		size_t nfds = 0;
		while (n < take && pos < s->len) {
			size_t u = 0;
			while (u + 1 < s->nunits && s->units[u + 1].off <= pos)
				u++;
			size_t unit_end = s->units[u].off + s->units[u].len;
			size_t chunk = unit_end - pos;
			if (chunk > take - n)
				chunk = take - n;
			bool carries = s->units[u].nfds > 0 && pos == s->units[u].off;
			memcpy(space + n, s->bytes + pos, chunk);
			n += chunk;
			pos += chunk;
			if (carries) {
				memcpy(fds, s->units[u].fds, s->units[u].nfds * sizeof(int));
				nfds = s->units[u].nfds;
				break; /* the kernel stops after a unit with descriptors */
			}
		}
		struct weft__fdp_msg m;
		r = sim_ack(dec, n, fds, nfds, false, &m);
		if (r < 0)
			return r;
		bool whole = r == 1;
		while (whole || (r = weft__fdp_dec_next(dec, &m)) == 1) {
			olen += (size_t)snprintf(out + olen, outsz - olen, "%.*s", (int)m.hdr.len, (const char *)m.payload);
			for (size_t i = 0; i < m.hdr.nfds; i++)
				olen += (size_t)snprintf(out + olen, outsz - olen, ",%d", m.fds[i]);
			olen += (size_t)snprintf(out + olen, outsz - olen, "|");
			if (whole) {
				r = 0;
				break;
			}
		}
		if (r < 0)
			return r;
		want = every;
	}
	return weft__fdp_dec_buffered(dec) == 0 ? 0 : -EPIPE;
}

static void sim_three(struct sim *s)
{
	memset(s, 0, sizeof(*s));
	sim_add(s, WEFT__FDP_REQUEST, 1, "alpha", NULL, 0);
	sim_add(s, WEFT__FDP_REQUEST, 2, "bravo", (int[]){1000, 1001}, 2);
	sim_add(s, WEFT__FDP_REQUEST, 3, "", (int[]){1002}, 1);
	sim_add(s, WEFT__FDP_REQUEST, 4, "delta", NULL, 0);
	sim_add(s, WEFT__FDP_REQUEST, 5, "echo", (int[]){1003}, 1);
}

static void test_codec_every_split(void)
{
	static const char expect[] = "alpha|bravo,1000,1001|,1002|delta|echo,1003|";
	struct sim s;
	sim_three(&s);
	int bad = 0;
	/* every constant read size, one byte at a time included */
	for (size_t every = 1; every <= s.len + 1; every++) {
		struct weft__fdp_dec dec;
		weft__fdp_dec_init(&dec, 1024, 4, sim_close, &s);
		char out[256];
		int r = sim_run(&s, &dec, every, every, out, sizeof(out));
		if (r != 0 || strcmp(out, expect) != 0 || s.nclosed != 0) {
			if (bad++ < 3)
				printf("# read size %zu: r=%d out=%s closed=%zu\n", every, r, out, s.nclosed);
		}
		weft__fdp_dec_clear(&dec);
	}
	/* every two-read split point */
	for (size_t k = 1; k < s.len; k++) {
		struct weft__fdp_dec dec;
		weft__fdp_dec_init(&dec, 1024, 4, sim_close, &s);
		char out[256];
		int r = sim_run(&s, &dec, k, s.len, out, sizeof(out));
		if (r != 0 || strcmp(out, expect) != 0 || s.nclosed != 0) {
			if (bad++ < 6)
				printf("# split at %zu: r=%d out=%s\n", k, r, out);
		}
		weft__fdp_dec_clear(&dec);
	}
	CHECK_EQ(bad, 0);
}

/* Descriptors where they do not belong, and limits: the decoder fails and
 * every descriptor it was given is closed. */
static void test_codec_bad_fds(void)
{
	struct sim s;
	memset(&s, 0, sizeof(s));
	struct weft__fdp_dec dec;
	char out[256];

	/* fds on a byte in the middle of a message */
	sim_add(&s, WEFT__FDP_REQUEST, 1, "0123456789", NULL, 0);
	weft__fdp_dec_init(&dec, 1024, 4, sim_close, &s);
	uint8_t *space;
	size_t room;
	CHECK_EQ(weft__fdp_dec_space(&dec, &space, &room), 0);
	memcpy(space, s.bytes, 20);
	CHECK_EQ(weft__fdp_dec_ack(&dec, 20, NULL, 0, false), 0);
	CHECK_EQ(weft__fdp_dec_space(&dec, &space, &room), 0);
	memcpy(space, s.bytes + 20, 6);
	CHECK_EQ(weft__fdp_dec_ack(&dec, 6, (int[]){2000, 2001}, 2, false), 0);
	struct weft__fdp_msg m;
	CHECK_EQ(weft__fdp_dec_next(&dec, &m), -EPROTO);
	CHECK_EQ(s.nclosed, 2);
	CHECK_EQ(weft__fdp_dec_next(&dec, &m), -EPROTO); /* sticky */
	weft__fdp_dec_clear(&dec);

	/* a header announcing 1 descriptor, 2 arriving */
	memset(&s, 0, sizeof(s));
	sim_add(&s, WEFT__FDP_REQUEST, 1, "x", (int[]){3000, 3001}, 2);
	s.bytes[7] = 1; /* nfds in the header */
	weft__fdp_dec_init(&dec, 1024, 4, sim_close, &s);
	CHECK_EQ(sim_run(&s, &dec, 100, 100, out, sizeof(out)), -EPROTO);
	CHECK_EQ(s.nclosed, 2);
	weft__fdp_dec_clear(&dec);

	/* a header announcing 2, none arriving */
	memset(&s, 0, sizeof(s));
	sim_add(&s, WEFT__FDP_REQUEST, 1, "x", NULL, 0);
	s.bytes[7] = 2;
	weft__fdp_dec_init(&dec, 1024, 4, sim_close, &s);
	CHECK_EQ(sim_run(&s, &dec, 100, 100, out, sizeof(out)), -EPROTO);
	weft__fdp_dec_clear(&dec);

	/* more than max_fds in one read, and a truncated control message */
	memset(&s, 0, sizeof(s));
	weft__fdp_dec_init(&dec, 1024, 2, sim_close, &s);
	CHECK_EQ(weft__fdp_dec_space(&dec, &space, &room), 0);
	CHECK_EQ(weft__fdp_dec_ack(&dec, 1, (int[]){1, 2, 3}, 3, false), -ETOOMANYREFS);
	CHECK_EQ(s.nclosed, 3);
	weft__fdp_dec_clear(&dec);
	memset(&s, 0, sizeof(s));
	weft__fdp_dec_init(&dec, 1024, 2, sim_close, &s);
	CHECK_EQ(weft__fdp_dec_space(&dec, &space, &room), 0);
	CHECK_EQ(weft__fdp_dec_ack(&dec, 1, (int[]){7}, 1, true), -ETOOMANYREFS);
	CHECK_EQ(s.nclosed, 1);
	weft__fdp_dec_clear(&dec);

	/* a header over the limits: EMSGSIZE, ETOOMANYREFS; the fds of a batch
	 * held while the header was incomplete are closed */
	memset(&s, 0, sizeof(s));
	sim_add(&s, WEFT__FDP_REQUEST, 1, "0123456789abcdef0123", (int[]){4000}, 1);
	weft__fdp_dec_init(&dec, 16, 4, sim_close, &s);
	CHECK_EQ(sim_run(&s, &dec, 3, 3, out, sizeof(out)), -EMSGSIZE);
	CHECK_EQ(s.nclosed, 1);
	weft__fdp_dec_clear(&dec);
	memset(&s, 0, sizeof(s));
	sim_add(&s, WEFT__FDP_REQUEST, 1, "x", (int[]){1, 2, 3}, 3);
	weft__fdp_dec_init(&dec, 16, 2, sim_close, &s);
	/* the ack itself refuses 3 > 2 */
	CHECK_EQ(sim_run(&s, &dec, 100, 100, out, sizeof(out)), -ETOOMANYREFS);
	CHECK_EQ(s.nclosed, 3);
	weft__fdp_dec_clear(&dec);

	/* bad magic after a good message */
	memset(&s, 0, sizeof(s));
	sim_add(&s, WEFT__FDP_REQUEST, 1, "ok", NULL, 0);
	sim_add(&s, WEFT__FDP_REQUEST, 2, "no", NULL, 0);
	s.bytes[18] = 'Z';
	weft__fdp_dec_init(&dec, 1024, 4, sim_close, &s);
	CHECK_EQ(sim_run(&s, &dec, 1, 1, out, sizeof(out)), -EPROTO);
	CHECK(strcmp(out, "ok|") == 0);
	weft__fdp_dec_clear(&dec);

	/* descriptors still held when the decoder is cleared are closed */
	memset(&s, 0, sizeof(s));
	weft__fdp_dec_init(&dec, 1024, 4, sim_close, &s);
	CHECK_EQ(weft__fdp_dec_space(&dec, &space, &room), 0);
	memcpy(space, "WFDP", 4);
	CHECK_EQ(weft__fdp_dec_ack(&dec, 4, (int[]){5000}, 1, false), 0);
	CHECK_EQ(weft__fdp_dec_next(&dec, &m), 0);
	weft__fdp_dec_clear(&dec);
	CHECK_EQ(s.nclosed, 1);
}

/* A payload as large as the limit, fed in odd-sized reads. */
static void test_codec_large(void)
{
	enum { N = 200000 };
	uint8_t *stream = malloc(N + 2 * WEFT__FDP_HDR + 3);
	REQUIRE(stream != NULL);
	weft__fdp_put_header(stream, &(struct weft__fdp_hdr){.type = WEFT__FDP_RESPONSE, .len = N, .seq = 1});
	for (size_t i = 0; i < N; i++)
		stream[WEFT__FDP_HDR + i] = (uint8_t)(i * 7);
	weft__fdp_put_header(stream + WEFT__FDP_HDR + N, &(struct weft__fdp_hdr){.type = WEFT__FDP_RESPONSE, .len = 3, .seq = 2});
	memcpy(stream + 2 * WEFT__FDP_HDR + N, "end", 3);
	size_t total = N + 2 * WEFT__FDP_HDR + 3, pos = 0;
	struct sim s;
	memset(&s, 0, sizeof(s));
	struct weft__fdp_dec dec;
	weft__fdp_dec_init(&dec, N, 4, sim_close, &s);
	int got = 0;
	bool ok = true;
	while (pos < total) {
		uint8_t *space;
		size_t room;
		REQUIRE(weft__fdp_dec_space(&dec, &space, &room) == 0);
		size_t n = room < 7777 ? room : 7777;
		if (n > total - pos)
			n = total - pos;
		memcpy(space, stream + pos, n);
		pos += n;
		CHECK_EQ(weft__fdp_dec_ack(&dec, n, NULL, 0, false), 0);
		struct weft__fdp_msg m;
		while (weft__fdp_dec_next(&dec, &m) == 1) {
			got++;
			if (got == 1)
				ok = ok && m.hdr.len == N && memcmp(m.payload, stream + WEFT__FDP_HDR, N) == 0;
			else
				ok = ok && m.hdr.len == 3 && memcmp(m.payload, "end", 3) == 0;
		}
	}
	CHECK_EQ(got, 2);
	CHECK(ok);
	CHECK(dec.cap <= 2 * (size_t)N + 64 * 1024);
	weft__fdp_dec_clear(&dec);
	free(stream);
}

/* Randomized: valid streams mutated (flipped bytes, random read sizes,
 * descriptor batches on random reads) fed to the decoder.  Whatever
 * happens, every descriptor given to it is handed out in a message or
 * closed exactly once — none leaked, none closed twice (ASan watches the
 * memory). */
static uint32_t g_rng = 12345;

static uint32_t rnd(void)
{
	g_rng ^= g_rng << 13;
	g_rng ^= g_rng >> 17;
	g_rng ^= g_rng << 5;
	return g_rng;
}

struct fuzz_fds {
	unsigned char state[4096]; /* per fake fd: 0 unused, 1 given, 2 closed, 3 handed out */
	int bad;
};

static void fuzz_close(int fd, void *ctx)
{
	struct fuzz_fds *f = ctx;
	if (fd < 0 || fd >= 4096 || f->state[fd] != 1)
		f->bad++;
	else
		f->state[fd] = 2;
}

static void test_codec_random(void)
{
	struct fuzz_fds *f = calloc(1, sizeof(*f));
	REQUIRE(f != NULL);
	int next_fd = 0, errors = 0, messages = 0;
	for (int iter = 0; iter < 3000; iter++) {
		struct sim s;
		memset(&s, 0, sizeof(s));
		int nmsg = 1 + (int)(rnd() % 5);
		for (int i = 0; i < nmsg && s.len < 3000; i++) {
			char payload[64];
			size_t plen = rnd() % 40;
			memset(payload, 'a' + i, plen);
			payload[plen] = '\0';
			sim_add(&s, (uint8_t)(1 + rnd() % 2), (uint32_t)i, payload, NULL, 0);
		}
		int mutations = (int)(rnd() % 3);
		for (int i = 0; i < mutations; i++)
			s.bytes[rnd() % s.len] ^= (uint8_t)(1u << (rnd() % 8));
		struct weft__fdp_dec dec;
		weft__fdp_dec_init(&dec, 32, 3, fuzz_close, f);
		size_t pos = 0;
		int r = 0;
		while (pos < s.len && r >= 0) {
			uint8_t *space;
			size_t room;
			if ((r = weft__fdp_dec_space(&dec, &space, &room)) < 0)
				break;
			size_t n = 1 + rnd() % 40;
			if (n > room)
				n = room;
			if (n > s.len - pos)
				n = s.len - pos;
			memcpy(space, s.bytes + pos, n);
			pos += n;
			int fds[4];
			size_t nfds = rnd() % 4 == 0 ? rnd() % 5 : 0;
			for (size_t i = 0; i < nfds; i++) {
				fds[i] = next_fd++ % 4096;
				if (f->state[fds[i]] == 1)
					f->bad++; /* the numbers wrapped while one is still held */
				f->state[fds[i]] = 1;
			}
			struct weft__fdp_msg m;
			r = sim_ack(&dec, n, fds, nfds, rnd() % 50 == 0, &m);
			bool whole = r == 1;
			while (whole || (r >= 0 && (r = weft__fdp_dec_next(&dec, &m)) == 1)) {
				if (whole)
					r = whole = 0; /* one message, nothing else to take out */
				messages++;
				for (size_t i = 0; i < m.hdr.nfds; i++) {
					if (m.fds[i] < 0 || m.fds[i] >= 4096 || f->state[m.fds[i]] != 1)
						f->bad++;
					else
						f->state[m.fds[i]] = 3;
				}
				if (m.hdr.len > 32)
					f->bad++;
			}
		}
		if (r < 0)
			errors++;
		weft__fdp_dec_clear(&dec);
		for (int i = 0; i < 4096; i++) {
			if (f->state[i] == 1)
				f->bad++; /* given, never closed nor handed out */
			f->state[i] = 0;
		}
	}
	CHECK_EQ(f->bad, 0);
	CHECK(errors > 100 && messages > 1000); /* both paths exercised */
	printf("# %d streams failed, %d messages decoded\n", errors, messages);
	free(f);
}

/* ---- 2. low-level calls ---------------------------------------------------------------- */

static void test_lowlevel(void)
{
	int sv[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	int p[2];
	REQUIRE(pipe2(p, O_CLOEXEC) == 0);
	int file = open(g_file, O_RDONLY | O_CLOEXEC);
	REQUIRE(file >= 0);

	/* nothing there yet */
	char buf[64];
	int fds[4];
	size_t nfds = 4;
	CHECK_EQ(weft_fdpass_recv(sv[1], buf, sizeof(buf), fds, &nfds, 0), -EAGAIN);
	uint64_t t0 = t_now_ms();
	CHECK_EQ(weft_fdpass_recv(sv[1], buf, sizeof(buf), fds, &nfds, 60), -ETIMEDOUT);
	CHECK(t_now_ms() - t0 >= 50);

	/* payload and three descriptors */
	int out[3] = {p[0], p[1], file};
	CHECK_EQ(weft_fdpass_send(sv[0], "hello", 5, out, 3, -1), 0);
	nfds = 4;
	ssize_t n = weft_fdpass_recv(sv[1], buf, sizeof(buf), fds, &nfds, 1000);
	CHECK_EQ(n, 5);
	CHECK(memcmp(buf, "hello", 5) == 0);
	CHECK_EQ(nfds, 3);
	if (nfds == 3) {
		CHECK(same_file(fds[0], p[0]));
		CHECK(same_file(fds[1], p[1]));
		CHECK(same_file(fds[2], file));
		CHECK(is_cloexec(fds[0]) && is_cloexec(fds[2]));
		CHECK_EQ(write(fds[1], "z", 1), 1); /* through the received write end */
		char c = 0;
		CHECK_EQ(read(p[0], &c, 1), 1);
		CHECK_EQ(c, 'z');
		for (int i = 0; i < 3; i++)
			close(fds[i]);
	}

	/* an empty message */
	CHECK_EQ(weft_fdpass_send(sv[0], NULL, 0, NULL, 0, 0), 0);
	nfds = 4;
	CHECK_EQ(weft_fdpass_recv(sv[1], buf, sizeof(buf), fds, &nfds, 0), 0);
	CHECK_EQ(nfds, 0);

	/* payload too long for the buffer: dropped, descriptors closed, the
	 * next message reads fine */
	int before = t_fd_count();
	CHECK_EQ(weft_fdpass_send(sv[0], "0123456789", 10, out, 2, -1), 0);
	CHECK_EQ(weft_fdpass_send(sv[0], "next", 4, NULL, 0, -1), 0);
	nfds = 4;
	CHECK_EQ(weft_fdpass_recv(sv[1], buf, 4, fds, &nfds, 1000), -EMSGSIZE);
	CHECK_EQ(nfds, 4); /* untouched */
	CHECK_EQ(t_fd_count(), before);
	CHECK_EQ(weft_fdpass_recv(sv[1], buf, sizeof(buf), fds, &nfds, 1000), 4);

	/* more descriptors than room: closed, stream usable */
	CHECK_EQ(weft_fdpass_send(sv[0], "abc", 3, out, 3, -1), 0);
	CHECK_EQ(weft_fdpass_send(sv[0], "def", 3, NULL, 0, -1), 0);
	nfds = 1;
	CHECK_EQ(weft_fdpass_recv(sv[1], buf, sizeof(buf), fds, &nfds, 1000), -ETOOMANYREFS);
	CHECK_EQ(t_fd_count(), before);
	CHECK_EQ(weft_fdpass_recv(sv[1], buf, sizeof(buf), NULL, NULL, 1000), 3);
	CHECK(memcmp(buf, "def", 3) == 0);

	/* arguments */
	CHECK_EQ(weft_fdpass_send(sv[0], NULL, 3, NULL, 0, 0), -EINVAL);
	CHECK_EQ(weft_fdpass_send(sv[0], "x", 1, (int[]){-1}, 1, 0), -EINVAL);
	CHECK_EQ(weft_fdpass_send(sv[0], "x", 1, out, WEFT_FDPASS_MAX_FDS_LIMIT + 1, 0), -ETOOMANYREFS);

	/* garbage: EPROTO */
	CHECK_EQ(write(sv[0], "GARBAGE-GARBAGE!", 16), 16);
	CHECK_EQ(weft_fdpass_recv(sv[1], buf, sizeof(buf), NULL, NULL, 1000), -EPROTO);

	/* the peer closes: EPIPE before a message, ECONNRESET inside one */
	int sv2[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv2) == 0);
	CHECK_EQ(write(sv2[0], "WFDP", 4), 4);
	close(sv2[0]);
	CHECK_EQ(weft_fdpass_recv(sv2[1], buf, sizeof(buf), NULL, NULL, 1000), -ECONNRESET);
	CHECK_EQ(weft_fdpass_recv(sv2[1], buf, sizeof(buf), NULL, NULL, 1000), -EPIPE);
	close(sv2[1]);

	close(sv[0]);
	CHECK_EQ(weft_fdpass_recv(sv[1], buf, sizeof(buf), NULL, NULL, 1000), -EPIPE);
	CHECK_EQ(weft_fdpass_send(sv[1], "x", 1, NULL, 0, 0), -EPIPE); /* no SIGPIPE */
	close(sv[1]);
	close(p[0]);
	close(p[1]);
	close(file);
}

/* ---- 3. server and client in one process ------------------------------------------- */

struct srv_ctx {
	weft_loop *loop;
	weft_fdpass_server *srv;
	int requests;
	int posts;
	int post_errs;
	int errors;
	weft_fdpass_error last_error;
	weft_fdpass_peer peer;
	int reply_fd;              /* lent to every response (-1: none) */
	bool echo_fds;             /* send the request's descriptors back */
	bool hold;                 /* keep calls, answer later */
	weft_fdpass_call *held[256];
	int nheld;
	int fail_errno;            /* answer with weft_fdpass_call_fail */
	bool closed;
	bool close_in_handler;
	int intact_after_reply; /* the request bytes were still readable after replying */
};

static void srv_request(weft_fdpass_server *srv, weft_fdpass_call *call, const weft_fdpass_msg *req,
		const weft_fdpass_peer *peer, void *data)
{
	struct srv_ctx *x = data;
	(void)srv;
	x->requests++;
	x->peer = *peer;
	CHECK((req->nfds == 0) == (req->fds == NULL)); /* fds NULL exactly when none came */
	CHECK((req->len == 0) == (req->buf == NULL));
	if (x->hold) {
		if (x->nheld < 256)
			x->held[x->nheld++] = call;
		return;
	}
	if (x->fail_errno) {
		CHECK_EQ(weft_fdpass_call_fail(call, x->fail_errno), 0);
		return;
	}
	if (x->echo_fds) {
		/* answer with the request's own descriptors, and take them: the
		 * post handler closes them */
		int *fds = NULL;
		if (req->nfds > 0) {
			fds = malloc(req->nfds * sizeof(int));
			memcpy(fds, req->fds, req->nfds * sizeof(int));
			for (size_t i = 0; i < req->nfds; i++)
				req->fds[i] = -1;
		}
		int r = weft_fdpass_call_reply(call, req->buf, req->len, fds, req->nfds, fds);
		CHECK_EQ(r, 0);
		if (r < 0) {
			for (size_t i = 0; i < req->nfds; i++)
				close(fds[i]);
			free(fds);
		}
		return;
	}
	int r = weft_fdpass_call_reply(call, req->buf, req->len, x->reply_fd >= 0 ? &x->reply_fd : NULL,
			x->reply_fd >= 0 ? 1 : 0, NULL);
	CHECK(r == 0 || r == -ECONNRESET);
	/* the payload stays readable for the whole callback, even when the
	 * reply found the peer gone (ASan watches this) */
	if (req->len == 4 && memcmp(req->buf, "gone", 4) == 0)
		x->intact_after_reply++;
	if (x->close_in_handler)
		weft_fdpass_server_close(srv, NULL, NULL);
}

static void srv_post(weft_fdpass_server *srv, const int *fds, size_t nfds, int err, void *post_data, void *data)
{
	struct srv_ctx *x = data;
	(void)srv;
	x->posts++;
	if (err)
		x->post_errs++;
	if (post_data != NULL) { /* echo_fds: we own them */
		for (size_t i = 0; i < nfds; i++)
			close(fds[i]);
		free(post_data);
	}
}

static void srv_error(weft_fdpass_server *srv, const weft_fdpass_error *e, void *data)
{
	struct srv_ctx *x = data;
	(void)srv;
	x->errors++;
	x->last_error = *e;
}

static void srv_closed(void *data)
{
	struct srv_ctx *x = data;
	x->closed = true;
}

static void srv_closed_flag(void *data)
{
	*(bool *)data = true;
}

/* Descriptors open in this process now. */
static int open_fd_count(void)
{
	int n = 0;
	DIR *d = opendir("/proc/self/fd");
	if (d == NULL)
		return -1;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static int g_file_fd = -1; /* test_reuse: the shared file's descriptor */

static weft_fdpass_server *start_server(struct srv_ctx *x, weft_loop *loop, weft_addr *addr,
		const weft_fdpass_limits *lim)
{
	x->loop = loop;
	x->reply_fd = -1;
	abstract_addr(addr, "srv");
	weft_fdpass_server_opts o = {.post = srv_post, .error = srv_error};
	if (lim)
		o.limits = *lim;
	weft_fdpass_error e;
	int r = weft_fdpass_server_new(loop, addr, &o, srv_request, x, &x->srv, &e);
	CHECK_EQ(r, 0);
	return r == 0 ? x->srv : NULL;
}

static void close_server(struct srv_ctx *x)
{
	x->closed = false;
	weft_fdpass_server_close(x->srv, srv_closed, x);
	CHECK(t_run_until(x->loop, &x->closed, 2000));
}

static weft_fdpass_client *connect_client(weft_loop *loop, const weft_addr *addr)
{
	weft_req *req = weft_fdpass_connect_send(loop, addr);
	if (req == NULL)
		return NULL;
	CHECK_EQ(weft_req_wait(req), 0);
	weft_fdpass_client *c = NULL;
	int err = 0;
	CHECK_EQ(weft_fdpass_connect_recv(req, &c, &err), 0);
	weft_req_free(req);
	return c;
}

/* A server with default limits at *addr and a client connected to it
 * (NULL when either failed: the checks above said why). */
static weft_fdpass_client *server_and_client(struct srv_ctx *x, weft_loop *loop, weft_addr *addr)
{
	if (start_server(x, loop, addr, NULL) == NULL)
		return NULL;
	return connect_client(loop, addr);
}

/* Send one request and wait: 0 and *msg, or -errno and *e. */
static int request_sync(weft_fdpass_client *c, const char *text, const int *fds, size_t nfds,
		weft_fdpass_msg *msg, weft_fdpass_error *e)
{
	weft_req *req = weft_fdpass_request_send(c, text, text ? strlen(text) : 0, fds, nfds);
	if (req == NULL)
		return -ENOMEM;
	int r = weft_req_wait(req);
	CHECK_EQ(r, 0);
	int err = 0;
	r = weft_fdpass_request_recv(req, msg, e, &err);
	if (r < 0)
		CHECK_EQ(err, -r);
	weft_req_free(req);
	return r;
}

static void test_request_response(void)
{
	weft_loop *loop = t_loop_new();
	struct srv_ctx x = {0};
	weft_addr addr;
	weft_fdpass_client *c = server_and_client(&x, loop, &addr);
	int file = open(g_file, O_RDONLY | O_CLOEXEC);
	x.reply_fd = file;
	REQUIRE(c != NULL);
	weft_fdpass_peer sp;
	CHECK_EQ(weft_fdpass_client_peer(c, &sp), 0);
	CHECK_EQ(sp.pid, getpid());

	/* client -> server: a pipe's write end; server -> client: the file */
	int p[2];
	REQUIRE(pipe2(p, O_CLOEXEC) == 0);
	weft_fdpass_msg m = {0};
	weft_fdpass_error e;
	CHECK_EQ(request_sync(c, "hello", &p[1], 1, &m, &e), 0);
	CHECK_EQ(m.len, 5);
	CHECK(m.buf && memcmp(m.buf, "hello", 5) == 0);
	CHECK_EQ(m.nfds, 1);
	if (m.nfds == 1) {
		CHECK(same_file(m.fds[0], file));
		CHECK(m.fds[0] != file);
		CHECK(is_cloexec(m.fds[0]));
	}
	weft_fdpass_msg_clear(&m);
	CHECK_EQ(x.requests, 1);
	CHECK_EQ(x.peer.pid, getpid());
	CHECK_EQ(x.peer.uid, getuid());
	t_run_for(loop, 5);
	CHECK_EQ(x.posts, 1);
	CHECK_EQ(x.post_errs, 0);

	/* the server echoes descriptors: write through the pipe end it got */
	x.echo_fds = true;
	CHECK_EQ(request_sync(c, "echo", p, 2, &m, &e), 0);
	CHECK_EQ(m.nfds, 2);
	if (m.nfds == 2) {
		CHECK(same_file(m.fds[1], p[1]));
		CHECK_EQ(write(m.fds[1], "q", 1), 1);
		char ch = 0;
		CHECK_EQ(read(p[0], &ch, 1), 1);
		CHECK_EQ(ch, 'q');
	}
	weft_fdpass_msg_clear(&m);
	/* empty request, no descriptors */
	CHECK_EQ(request_sync(c, NULL, NULL, 0, &m, &e), 0);
	CHECK_EQ(m.len, 0);
	CHECK(m.buf == NULL && m.fds == NULL);
	weft_fdpass_msg_clear(&m);
	t_run_for(loop, 5);
	CHECK_EQ(x.posts, 3);
	CHECK_EQ(x.errors, 0);

	/* the handler fails the call */
	x.fail_errno = EACCES;
	CHECK_EQ(request_sync(c, "no", NULL, 0, &m, &e), -EACCES);
	CHECK_EQ(e.phase, WEFT_FDPASS_PHASE_HANDLE_REQUEST);
	CHECK_EQ(e.op, WEFT_FDPASS_OP_HANDLER);
	CHECK_EQ(e.err, EACCES);
	x.fail_errno = 0;

	/* argument errors of request_send: reported from the loop */
	char big[100];
	memset(big, 'b', sizeof(big));
	weft_fdpass_limits lim = {.max_payload = 64, .max_fds = 1};
	CHECK_EQ(weft_fdpass_client_set_limits(c, &lim), 0);
	weft_req *req = weft_fdpass_request_send(c, big, sizeof(big), NULL, 0);
	CHECK_EQ(weft_req_wait(req), 0);
	CHECK_EQ(weft_fdpass_request_recv(req, NULL, &e, NULL), -EMSGSIZE);
	weft_req_free(req);
	req = weft_fdpass_request_send(c, "x", 1, p, 2);
	CHECK_EQ(weft_req_wait(req), 0);
	CHECK_EQ(weft_fdpass_request_recv(req, NULL, NULL, NULL), -ETOOMANYREFS);
	weft_req_free(req);
	req = weft_fdpass_request_send(c, "x", 1, (int[]){-5}, 1);
	CHECK_EQ(weft_req_wait(req), 0);
	CHECK_EQ(weft_fdpass_request_recv(req, NULL, NULL, NULL), -EINVAL);
	weft_req_free(req);
	lim.max_payload = WEFT_FDPASS_MAX_PAYLOAD_LIMIT + 1;
	CHECK_EQ(weft_fdpass_client_set_limits(c, &lim), -EINVAL);
	/* still usable; the response can be handed out once */
	x.echo_fds = false;
	req = weft_fdpass_request_send(c, "again", 5, NULL, 0);
	CHECK_EQ(weft_req_wait(req), 0);
	CHECK_EQ(weft_fdpass_request_recv(req, &m, NULL, NULL), 0);
	CHECK_EQ(weft_fdpass_request_recv(req, &m, NULL, NULL), -EALREADY);
	weft_req_free(req);
	weft_fdpass_msg_clear(&m);

	weft_fdpass_client_free(c);
	close_server(&x);
	close(p[0]);
	close(p[1]);
	close(file);
	t_loop_free(loop);
}

/* Response blocks: a small response comes in the block the last small one
 * of this thread gave back (weft_fdpass_msg_clear), a large one in its
 * own; run in a thread of its own, whose spare block is freed when it
 * exits (ASan's leak check sees it otherwise). */
static void blocks_run(void)
{
	weft_loop *loop = t_loop_new();
	struct srv_ctx x = {0};
	weft_addr addr;
	weft_fdpass_client *c = server_and_client(&x, loop, &addr);
	REQUIRE(c != NULL);
	static char big[1001];
	memset(big, 'b', sizeof(big) - 1);
	const char *texts[] = {"small", big, "again", "", big, "last"};
	void *first = NULL;
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		weft_fdpass_msg m = {0};
		weft_fdpass_error e;
		CHECK_EQ(request_sync(c, texts[i], NULL, 0, &m, &e), 0);
		CHECK_EQ(m.len, strlen(texts[i]));
		CHECK(m.len == 0 || (m.buf != NULL && memcmp(m.buf, texts[i], m.len) == 0));
		if (i == 0)
			first = m.buf;
		if (i == 2 || i == 5)
			CHECK(m.buf == first); /* the spare came back */
		weft_fdpass_msg_clear(&m);
	}
	weft_fdpass_client_free(c);
	close_server(&x);
	t_loop_free(loop);
}

static void *blocks_thread(void *arg)
{
	(void)arg;
	blocks_run();
	return NULL;
}

static void test_response_blocks(void)
{
	pthread_t t;
	REQUIRE(pthread_create(&t, NULL, blocks_thread, NULL) == 0);
	CHECK_EQ(pthread_join(t, NULL), 0);
	blocks_run(); /* and in this thread */
}

/* Reuse: a server without a post handler (a call is freed as soon as its
 * response is out), requests small and large (past the reusable slot and
 * call sizes), with 0, 1 and 6 descriptors (past the inline arrays),
 * one at a time, 8 in flight, then a burst of 2000.  Every response echoes the payload with
 * the shared file; the descriptors count is the same afterwards. */
struct reuse_srv {
	int file;
	int requests;
	int bad;
};

static void reuse_request(weft_fdpass_server *srv, weft_fdpass_call *call, const weft_fdpass_msg *req,
		const weft_fdpass_peer *peer, void *data)
{
	struct reuse_srv *rs = data;
	(void)srv;
	(void)peer;
	rs->requests++;
	/* the request's descriptors arrived and are what the client sent */
	for (size_t i = 0; i < req->nfds; i++)
		if (!same_file(req->fds[i], rs->file))
			rs->bad++;
	if (weft_fdpass_call_reply(call, req->buf, req->len, &rs->file, 1, NULL) != 0)
		rs->bad++;
}

struct reuse_cli {
	int done;
	int good;
	size_t want_len;
};

static void reuse_done(weft_req *req, void *data)
{
	struct reuse_cli *rc = data;
	weft_fdpass_msg m;
	if (weft_fdpass_request_recv(req, &m, NULL, NULL) == 0) {
		bool ok = m.len == rc->want_len && m.nfds == 1 && same_file(m.fds[0], g_file_fd) &&
		          ((const char *)m.buf)[m.len - 1] == 'z';
		rc->good += ok;
		weft_fdpass_msg_clear(&m);
	}
	rc->done++;
	weft_req_free(req);
}

static void test_reuse(void)
{
	int fds_before = open_fd_count();
	weft_loop *loop = t_loop_new();
	struct reuse_srv rs = {.file = open(g_file, O_RDONLY | O_CLOEXEC)};
	REQUIRE(rs.file >= 0);
	g_file_fd = rs.file;
	weft_addr addr;
	abstract_addr(&addr, "reuse");
	weft_fdpass_server *srv = NULL;
	REQUIRE(weft_fdpass_server_new(loop, &addr, NULL, reuse_request, &rs, &srv, NULL) == 0);
	weft_fdpass_client *c = connect_client(loop, &addr);
	REQUIRE(c != NULL);
	int six[6];
	for (int i = 0; i < 6; i++)
		six[i] = rs.file;
	static char payload[1000];
	memset(payload, 'p', sizeof(payload));
	static const size_t sizes[3] = {3, 250, 1000};
	static const size_t nfds[3] = {0, 1, 6};
	struct reuse_cli rc = {0};
	int sent = 0;
	for (int round = 0; round < 60; round++) {
		int batch = round % 2 ? 8 : 1;
		size_t len = sizes[round % 3];
		rc.want_len = len;
		payload[len - 1] = 'z';
		for (int i = 0; i < batch; i++) {
			weft_req *req = weft_fdpass_request_send(c, payload, len, six, nfds[(round / 3) % 3]);
			REQUIRE(req != NULL);
			weft_req_set_callback(req, reuse_done, &rc);
			sent++;
		}
		payload[len - 1] = 'p';
		CHECK(t_run_until_count(loop, &rc.done, sent, 3000));
	}
	/* A burst the socket cannot take at once, sent before the loop runs:
	 * the first requests go straight out, then one meets a full socket
	 * (EAGAIN, or part of it) and the rest queue behind it. */
	weft_fdpass_limits lim = {.max_pending = 3000};
	CHECK_EQ(weft_fdpass_client_set_limits(c, &lim), 0);
	rc.want_len = 3;
	payload[2] = 'z';
	for (int i = 0; i < 2000; i++) {
		weft_req *req = weft_fdpass_request_send(c, payload, 3, six, 1);
		REQUIRE(req != NULL);
		weft_req_set_callback(req, reuse_done, &rc);
		sent++;
	}
	CHECK(weft_fdpass_client_pending(c) == 2000);
	CHECK(t_run_until_count(loop, &rc.done, sent, 5000));
	CHECK_EQ(rc.done, sent);
	CHECK_EQ(rc.good, sent);
	CHECK_EQ(rs.requests, sent);
	CHECK_EQ(rs.bad, 0);
	CHECK_EQ(weft_fdpass_client_pending(c), 0);
	weft_fdpass_client_free(c);
	bool closed = false;
	weft_fdpass_server_close(srv, srv_closed_flag, &closed);
	CHECK(t_run_until(loop, &closed, 2000));
	close(rs.file);
	t_loop_free(loop);
	CHECK_EQ(open_fd_count(), fds_before);
}

/* A server whose responses do not fit the socket: a forked child serves
 * one end of a socketpair (adopted, with a tiny send buffer) and replies
 * to each request from the handler, lending a file.  The parent writes
 * 300 requests and reads nothing for 100 ms, so the replies sent
 * straight from the handler soon meet a full socket and queue up (whole,
 * or the rest of one written in part).  Then it reads them all with the
 * low-level call: in order, each with its descriptor; the child exits 0
 * with its descriptor count as before. */
static void blocked_child(int sock)
{
	int fds_before = open_fd_count();
	weft_loop *loop = NULL;
	struct reuse_srv rs = {.file = open(g_file, O_RDONLY | O_CLOEXEC)};
	weft_addr addr;
	abstract_addr(&addr, "blocked");
	weft_fdpass_server_opts o = {.limits = {.max_pending = 1000}};
	weft_fdpass_server *srv = NULL;
	int small = 4096;
	if (rs.file < 0 || weft_loop_new(&loop) < 0 ||
	    weft_fdpass_server_new(loop, &addr, &o, reuse_request, &rs, &srv, NULL) < 0 ||
	    setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) < 0 ||
	    weft_fdpass_server_adopt(srv, sock) < 0)
		_exit(2);
	uint64_t end = t_now_ms() + 10000;
	while ((rs.requests == 0 || weft_fdpass_server_connections(srv) > 0) && t_now_ms() < end)
		weft_loop_run(loop, WEFT_RUN_ONCE);
	bool closed = false;
	weft_fdpass_server_close(srv, srv_closed_flag, &closed);
	while (!closed && t_now_ms() < end)
		weft_loop_run(loop, WEFT_RUN_ONCE);
	close(rs.file);
	int r = weft_loop_free(loop);
	_exit(rs.requests == 300 && rs.bad == 0 && closed && r == 0 && open_fd_count() == fds_before - 1 ? 0 : 3);
}

static void test_server_send_blocked(void)
{
	int sv[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	pid_t pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		close(sv[1]);
		blocked_child(sv[0]);
	}
	close(sv[0]);
	int file = open(g_file, O_RDONLY | O_CLOEXEC);
	REQUIRE(file >= 0);
	enum { N = 300 };
	for (int i = 0; i < N; i++) {
		char text[32];
		int len = snprintf(text, sizeof(text), "request %d z", i);
		REQUIRE(weft_fdpass_send(sv[1], text, (size_t)len, NULL, 0, 5000) == 0);
	}
	usleep(100 * 1000);
	int got = 0, good = 0;
	for (; got < N; got++) {
		char buf[64];
		int fd = -1;
		size_t nfds = 1;
		ssize_t n = weft_fdpass_recv(sv[1], buf, sizeof(buf), &fd, &nfds, 5000);
		if (n < 0)
			break;
		char want[32];
		int wl = snprintf(want, sizeof(want), "request %d z", got);
		good += n == wl && memcmp(buf, want, (size_t)wl) == 0 && nfds == 1 && same_file(fd, file);
		if (nfds == 1)
			close(fd);
	}
	CHECK_EQ(got, N);
	CHECK_EQ(good, N);
	close(sv[1]);
	close(file);
	CHECK_EQ(wait_child(pid), 0);
}

/* 200 requests in flight; the server answers them in reverse order; the
 * responses still come in request order. */
struct pipe_ctx {
	int done;
	int in_order;
	int next_expected;
};

struct pipe_req {
	struct pipe_ctx *pc;
	int index;
};

static void pipelined_done(weft_req *req, void *data)
{
	struct pipe_req *pr = data;
	weft_fdpass_msg m;
	if (weft_fdpass_request_recv(req, &m, NULL, NULL) == 0) {
		char want[16];
		snprintf(want, sizeof(want), "%d", pr->index);
		if (m.len == strlen(want) && memcmp(m.buf, want, m.len) == 0 && pr->index == pr->pc->next_expected)
			pr->pc->in_order++;
		weft_fdpass_msg_clear(&m);
	}
	pr->pc->next_expected++;
	pr->pc->done++;
	weft_req_free(req);
}

static void test_pipelined_out_of_order(void)
{
	weft_loop *loop = t_loop_new();
	struct srv_ctx x = {0};
	weft_addr addr;
	weft_fdpass_limits lim = {.max_pending = 256};
	REQUIRE(start_server(&x, loop, &addr, &lim) != NULL);
	weft_fdpass_client *c = connect_client(loop, &addr);
	REQUIRE(c != NULL);
	CHECK_EQ(weft_fdpass_client_set_limits(c, &lim), 0);
	x.hold = true;
	enum { N = 200 };
	static struct pipe_req prs[N];
	struct pipe_ctx pc = {0};
	for (int i = 0; i < N; i++) {
		char text[16];
		snprintf(text, sizeof(text), "%d", i);
		prs[i] = (struct pipe_req){&pc, i};
		weft_req *req = weft_fdpass_request_send(c, text, strlen(text), NULL, 0);
		REQUIRE(req != NULL);
		weft_req_set_callback(req, pipelined_done, &prs[i]);
	}
	CHECK_EQ(weft_fdpass_client_pending(c), N);
	uint64_t end = t_now_ms() + 3000;
	while (x.nheld < N && t_now_ms() < end)
		weft_loop_run(loop, WEFT_RUN_ONCE);
	CHECK_EQ(x.nheld, N);
	CHECK_EQ(pc.done, 0);
	for (int i = x.nheld - 1; i >= 0; i--) {
		char text[16];
		snprintf(text, sizeof(text), "%d", i);
		CHECK_EQ(weft_fdpass_call_reply(x.held[i], text, strlen(text), NULL, 0, NULL), 0);
	}
	x.nheld = 0;
	end = t_now_ms() + 3000;
	while (pc.done < N && t_now_ms() < end)
		weft_loop_run(loop, WEFT_RUN_ONCE);
	CHECK_EQ(pc.done, N);
	CHECK_EQ(pc.in_order, N);
	CHECK_EQ(weft_fdpass_client_pending(c), 0);
	t_run_for(loop, 5);
	CHECK_EQ(x.posts, N);
	weft_fdpass_client_free(c);
	close_server(&x);
	t_loop_free(loop);
}

/* Back-pressure: with max_pending 4 the server holds at most 4 calls of a
 * connection; answering them (several responses in one flush) resumes
 * reading until all 50 are done. */
static void test_back_pressure(void)
{
	weft_loop *loop = t_loop_new();
	struct srv_ctx x = {0};
	weft_addr addr;
	weft_fdpass_limits lim = {.max_pending = 4};
	REQUIRE(start_server(&x, loop, &addr, &lim) != NULL);
	weft_fdpass_client *c = connect_client(loop, &addr);
	REQUIRE(c != NULL);
	CHECK_EQ(weft_fdpass_client_set_limits(c, &(weft_fdpass_limits){.max_pending = 64}), 0);
	x.hold = true;
	enum { N = 50 };
	static struct pipe_req prs[N];
	struct pipe_ctx pc = {0};
	for (int i = 0; i < N; i++) {
		char text[16];
		snprintf(text, sizeof(text), "%d", i);
		prs[i] = (struct pipe_req){&pc, i};
		weft_req *req = weft_fdpass_request_send(c, text, strlen(text), NULL, 0);
		REQUIRE(req != NULL);
		weft_req_set_callback(req, pipelined_done, &prs[i]);
	}
	int most = 0, answered = 0;
	uint64_t end = t_now_ms() + 5000;
	while (pc.done < N && t_now_ms() < end) {
		weft_loop_run(loop, WEFT_RUN_NOWAIT);
		t_run_for(loop, 2);
		if (x.nheld > most)
			most = x.nheld;
		for (int i = x.nheld - 1; i >= 0; i--) {
			char text[16];
			snprintf(text, sizeof(text), "%d", answered + i);
			CHECK_EQ(weft_fdpass_call_reply(x.held[i], text, strlen(text), NULL, 0, NULL), 0);
		}
		answered += x.nheld;
		x.nheld = 0;
	}
	CHECK_EQ(pc.done, N);
	CHECK_EQ(pc.in_order, N);
	CHECK_EQ(most, 4);
	weft_fdpass_client_free(c);

	/* a raw peer sends 20 requests and half-closes at once: the ones
	 * held back are still served, then the connection ends cleanly */
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	REQUIRE(fd >= 0);
	CHECK_EQ(connect(fd, &addr.u.sa, addr.len), 0);
	for (int i = 0; i < 20; i++)
		CHECK_EQ(weft_fdpass_send(fd, "r", 1, NULL, 0, 1000), 0);
	shutdown(fd, SHUT_WR);
	x.errors = 0;
	answered = 0;
	most = 0;
	end = t_now_ms() + 5000;
	while (answered < 20 && t_now_ms() < end) {
		t_run_for(loop, 2);
		if (x.nheld > most)
			most = x.nheld;
		for (int i = 0; i < x.nheld; i++)
			CHECK_EQ(weft_fdpass_call_reply(x.held[i], "a", 1, NULL, 0, NULL), 0);
		answered += x.nheld;
		x.nheld = 0;
	}
	CHECK_EQ(answered, 20);
	CHECK_EQ(most, 4);
	t_run_for(loop, 20); /* the last responses go out, the server closes */
	CHECK_EQ(weft_fdpass_server_connections(x.srv), 0);
	char buf[8];
	int got = 0;
	ssize_t rr;
	while ((rr = weft_fdpass_recv(fd, buf, sizeof(buf), NULL, NULL, 2000)) == 1)
		got++;
	CHECK_EQ(got, 20);
	CHECK_EQ(rr, -EPIPE);
	close(fd);
	t_run_for(loop, 10);
	CHECK_EQ(x.errors, 0);
	CHECK_EQ(weft_fdpass_server_connections(x.srv), 0);
	close_server(&x);
	t_loop_free(loop);
}

/* A timeout: the request fails with ETIMEDOUT; the late answer (with a
 * descriptor) is dropped and its descriptor closed; the connection goes
 * on. */
static void test_timeout(void)
{
	weft_loop *loop = t_loop_new();
	struct srv_ctx x = {0};
	weft_addr addr;
	weft_fdpass_client *c = server_and_client(&x, loop, &addr);
	int file = open(g_file, O_RDONLY | O_CLOEXEC);
	REQUIRE(c != NULL);
	x.hold = true;
	weft_fdpass_client_set_timeout(c, 50);
	weft_fdpass_msg m;
	weft_fdpass_error e;
	uint64_t t0 = t_now_ms();
	CHECK_EQ(request_sync(c, "slow", NULL, 0, &m, &e), -ETIMEDOUT);
	CHECK(t_now_ms() - t0 >= 45);
	CHECK_EQ(e.op, WEFT_FDPASS_OP_TIMEOUT);
	CHECK_EQ(e.phase, WEFT_FDPASS_PHASE_READ_RESPONSE);
	CHECK_EQ(x.nheld, 1);
	int before = t_fd_count();
	/* the late answer carries a descriptor: dropped and closed */
	CHECK_EQ(weft_fdpass_call_reply(x.held[0], "late", 4, &file, 1, NULL), 0);
	x.nheld = 0;
	x.hold = false;
	weft_fdpass_client_set_timeout(c, 0);
	CHECK_EQ(request_sync(c, "fast", NULL, 0, &m, &e), 0);
	CHECK(m.len == 4 && memcmp(m.buf, "fast", 4) == 0);
	weft_fdpass_msg_clear(&m);
	CHECK_EQ(t_fd_count(), before);

	/* weft_req_set_timeout on one request works the same way */
	x.hold = true;
	weft_req *req = weft_fdpass_request_send(c, "t", 1, NULL, 0);
	CHECK_EQ(weft_req_set_timeout(req, 30), 0);
	CHECK_EQ(weft_req_wait(req), 0);
	CHECK_EQ(weft_fdpass_request_recv(req, NULL, &e, NULL), -ETIMEDOUT);
	weft_req_free(req);
	t_run_for(loop, 5);
	CHECK_EQ(x.nheld, 1);
	CHECK_EQ(weft_fdpass_call_fail(x.held[0], EIO), 0);
	x.nheld = 0;
	x.hold = false;
	CHECK_EQ(request_sync(c, "after", NULL, 0, &m, &e), 0);
	weft_fdpass_msg_clear(&m);

	weft_fdpass_client_free(c);
	close_server(&x);
	close(file);
	t_loop_free(loop);
}

/* A large request with a descriptor meets a full socket: it goes out in
 * several writes, the descriptor only with the first byte.  Its timeout
 * expires half-way: the rest is still written (the stream stays framed),
 * the peer gets the whole message with exactly one descriptor, and the
 * next request follows it. */
static void test_partial_write(void)
{
	weft_loop *loop = t_loop_new();
	int sv[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	weft_fdpass_client *c = NULL;
	REQUIRE(weft_fdpass_client_new(loop, sv[0], &c) == 0);
	weft_fdpass_limits lim = {.max_payload = 4u << 20};
	CHECK_EQ(weft_fdpass_client_set_limits(c, &lim), 0);
	size_t big = 3u << 20;
	char *payload = malloc(big);
	REQUIRE(payload != NULL);
	g_keep[0] = payload;
	g_keep[1] = c;
	g_keep[2] = loop;
	for (size_t i = 0; i < big; i++)
		payload[i] = (char)(i * 13);
	int file = open(g_file, O_RDONLY | O_CLOEXEC);
	weft_req *req = weft_fdpass_request_send(c, payload, big, &file, 1);
	CHECK_EQ(weft_req_set_timeout(req, 30), 0);
	CHECK_EQ(weft_req_wait(req), 0);
	weft_fdpass_error e;
	CHECK_EQ(weft_fdpass_request_recv(req, NULL, &e, NULL), -ETIMEDOUT);
	CHECK_EQ(e.phase, WEFT_FDPASS_PHASE_WRITE_REQUEST);
	weft_req_free(req);
	close(file); /* ours again: the part with the descriptor went out */
	weft_req *req2 = weft_fdpass_request_send(c, "next", 4, NULL, 0);
	/* the peer reads while the loop writes the rest */
	pid_t pid = fork();
	if (pid == 0) {
		child_keep_fd(sv[1]);
		int fds[4];
		size_t nfds = 4;
		char *buf = malloc(big);
		ssize_t n = weft_fdpass_recv(sv[1], buf, big, fds, &nfds, 10000);
		bool ok = n == (ssize_t)big && nfds == 1 && memcmp(buf, payload, big) == 0;
		if (nfds == 1)
			close(fds[0]);
		char small[8];
		nfds = 4;
		n = weft_fdpass_recv(sv[1], small, sizeof(small), fds, &nfds, 10000);
		ok = ok && n == 4 && nfds == 0 && memcmp(small, "next", 4) == 0;
		free(buf);
		_exit(ok ? 0 : 1); /* no answer: the client sees ECONNRESET */
	}
	close(sv[1]);
	uint64_t end = t_now_ms() + 10000;
	while (weft_fdpass_client_pending(c) > 1 && t_now_ms() < end)
		weft_loop_run(loop, WEFT_RUN_ONCE);
	CHECK_EQ(wait_child(pid), 0);
	CHECK_EQ(weft_req_wait(req2), 0);
	CHECK_EQ(weft_fdpass_request_recv(req2, NULL, &e, NULL), -ECONNRESET);
	weft_req_free(req2);
	weft_fdpass_client_free(c);
	free(payload);
	t_loop_free(loop);
}

/* Graceful close: a call in progress is still answered and its response
 * delivered; then the connection closes; the close callback comes last. */
static void test_server_close_graceful(void)
{
	weft_loop *loop = t_loop_new();
	struct srv_ctx x = {0};
	weft_addr addr;
	weft_fdpass_client *c = server_and_client(&x, loop, &addr);
	REQUIRE(c != NULL);
	x.hold = true;
	weft_req *req = weft_fdpass_request_send(c, "pending", 7, NULL, 0);
	uint64_t end = t_now_ms() + 2000;
	while (x.nheld < 1 && t_now_ms() < end)
		weft_loop_run(loop, WEFT_RUN_ONCE);
	REQUIRE(x.nheld == 1);
	x.closed = false;
	weft_fdpass_server_close(x.srv, srv_closed, &x);
	/* nobody listens any more */
	weft_req *creq = weft_fdpass_connect_send(loop, &addr);
	CHECK_EQ(weft_req_wait(creq), 0);
	CHECK_EQ(weft_fdpass_connect_recv(creq, NULL, NULL), -ECONNREFUSED);
	weft_req_free(creq);
	t_run_for(loop, 20);
	CHECK(!x.closed); /* the call is still open */
	CHECK(weft_req_is_in_progress(req));
	CHECK_EQ(weft_fdpass_call_reply(x.held[0], "done", 4, NULL, 0, NULL), 0);
	x.nheld = 0;
	CHECK_EQ(weft_req_wait(req), 0);
	weft_fdpass_msg m;
	CHECK_EQ(weft_fdpass_request_recv(req, &m, NULL, NULL), 0);
	CHECK(m.len == 4 && memcmp(m.buf, "done", 4) == 0);
	weft_fdpass_msg_clear(&m);
	weft_req_free(req);
	CHECK(t_run_until(loop, &x.closed, 2000));
	CHECK_EQ(x.posts, 1);
	/* the connection is gone: the next request fails */
	weft_fdpass_error e;
	int r = request_sync(c, "more", NULL, 0, &m, &e);
	CHECK(r == -ECONNRESET || r == -EPIPE || r == -ENOTCONN);
	weft_fdpass_client_free(c);

	/* closing from inside the request handler */
	struct srv_ctx y = {0};
	REQUIRE(start_server(&y, loop, &addr, NULL) != NULL);
	y.close_in_handler = true;
	c = connect_client(loop, &addr);
	REQUIRE(c != NULL);
	CHECK_EQ(request_sync(c, "last", NULL, 0, &m, &e), 0);
	weft_fdpass_msg_clear(&m);
	t_run_for(loop, 20);
	CHECK_EQ(y.posts, 1);
	weft_fdpass_client_free(c);
	t_loop_free(loop);
}

/* client_free with requests waiting: they complete with ECANCELED; and
 * freeing the client from a request's own callback. */
struct free_ctx {
	weft_fdpass_client *c;
	int canceled;
	int done;
};

static void canceled_cb(weft_req *req, void *data)
{
	struct free_ctx *f = data;
	weft_fdpass_error e;
	if (weft_fdpass_request_recv(req, NULL, &e, NULL) == -ECANCELED && e.op == WEFT_FDPASS_OP_CANCEL)
		f->canceled++;
	f->done++;
	weft_req_free(req);
}

static void free_in_cb(weft_req *req, void *data)
{
	struct free_ctx *f = data;
	CHECK_EQ(weft_fdpass_request_recv(req, NULL, NULL, NULL), 0);
	weft_fdpass_client_free(f->c);
	f->c = NULL;
	weft_req_free(req);
	f->done++;
}

static void test_client_free(void)
{
	weft_loop *loop = t_loop_new();
	struct srv_ctx x = {0};
	weft_addr addr;
	struct free_ctx f = {0};
	f.c = server_and_client(&x, loop, &addr);
	REQUIRE(f.c != NULL);
	x.hold = true;
	for (int i = 0; i < 5; i++)
		weft_req_set_callback(weft_fdpass_request_send(f.c, "w", 1, NULL, 0), canceled_cb, &f);
	t_run_for(loop, 10);
	weft_fdpass_client_free(f.c);
	CHECK_EQ(f.done, 0); /* not inside client_free */
	t_run_for(loop, 10);
	CHECK_EQ(f.done, 5);
	CHECK_EQ(f.canceled, 5);
	/* the server sees the end of the requests; the first answer finds the
	 * peer gone (its post handler hears EPIPE), later ones are refused */
	t_run_for(loop, 10);
	CHECK_EQ(x.nheld, 5);
	int queued = 0;
	for (int i = 0; i < x.nheld; i++) {
		int r = weft_fdpass_call_reply(x.held[i], "x", 1, NULL, 0, NULL);
		CHECK(r == 0 || r == -ECONNRESET);
		queued += r == 0;
	}
	x.nheld = 0;
	t_run_for(loop, 10);
	CHECK(queued >= 1);
	CHECK_EQ(x.posts, queued);
	CHECK_EQ(x.post_errs, queued);
	CHECK_EQ(x.errors, 1);
	CHECK_EQ(x.last_error.phase, WEFT_FDPASS_PHASE_WRITE_RESPONSE);
	CHECK_EQ(weft_fdpass_server_connections(x.srv), 0);
	x.hold = false;

	/* free from the completion of one of its requests, two more pending */
	f = (struct free_ctx){0};
	f.c = connect_client(loop, &addr);
	REQUIRE(f.c != NULL);
	weft_req_set_callback(weft_fdpass_request_send(f.c, "a", 1, NULL, 0), free_in_cb, &f);
	weft_req_set_callback(weft_fdpass_request_send(f.c, "b", 1, NULL, 0), canceled_cb, &f);
	weft_req_set_callback(weft_fdpass_request_send(f.c, "c", 1, NULL, 0), canceled_cb, &f);
	uint64_t end = t_now_ms() + 2000;
	while (f.done < 3 && t_now_ms() < end)
		weft_loop_run(loop, WEFT_RUN_ONCE);
	CHECK_EQ(f.done, 3);
	CHECK_EQ(f.canceled, 2);
	close_server(&x);
	t_loop_free(loop);
}

/* Paths: a live server's path is refused; a stale file only replaced when
 * asked; the file is removed on close. */
static void test_paths(void)
{
	weft_loop *loop = t_loop_new();
	weft_addr addr;
	path_addr(&addr, "live");
	struct srv_ctx x = {0};
	x.reply_fd = -1;
	x.loop = loop;
	weft_fdpass_server_opts o = {.post = srv_post, .error = srv_error, .mode = 0600};
	CHECK_EQ(weft_fdpass_server_new(loop, &addr, &o, srv_request, &x, &x.srv, NULL), 0);
	const char *path = ((const struct sockaddr_un *)&addr.u.sa)->sun_path;
	struct stat st;
	CHECK_EQ(stat(path, &st), 0);
	CHECK_EQ(st.st_mode & 0777, 0600);
	weft_fdpass_server *other = NULL;
	weft_fdpass_error e;
	o.replace_stale = true;
	CHECK_EQ(weft_fdpass_server_new(loop, &addr, &o, srv_request, &x, &other, &e), -EADDRINUSE);
	CHECK_EQ(e.phase, WEFT_FDPASS_PHASE_LISTEN);
	CHECK_EQ(e.op, WEFT_FDPASS_OP_BIND);
	CHECK(strstr(e.message, "bind") != NULL);
	weft_addr bound;
	CHECK_EQ(weft_fdpass_server_addr(x.srv, &bound), 0);
	CHECK(weft_addr_equal(&bound, &addr));
	close_server(&x);
	CHECK_EQ(stat(path, &st), -1);

	/* a stale socket file: a process bound it and died */
	pid_t pid = fork();
	if (pid == 0) {
		int fd = socket(AF_UNIX, SOCK_STREAM, 0);
		_exit(fd >= 0 && bind(fd, &addr.u.sa, addr.len) == 0 && listen(fd, 1) == 0 ? 0 : 1);
	}
	CHECK_EQ(wait_child(pid), 0);
	CHECK_EQ(stat(path, &st), 0);
	o.replace_stale = false;
	CHECK_EQ(weft_fdpass_server_new(loop, &addr, &o, srv_request, &x, &other, NULL), -EADDRINUSE);
	o.replace_stale = true;
	CHECK_EQ(weft_fdpass_server_new(loop, &addr, &o, srv_request, &x, &x.srv, NULL), 0);
	close_server(&x);

	/* a regular file at the path is never removed */
	int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	close(fd);
	CHECK_EQ(weft_fdpass_server_new(loop, &addr, &o, srv_request, &x, &other, NULL), -EADDRINUSE);
	unlink(path);

	/* not a Unix address, no handler */
	weft_addr tcp;
	CHECK_EQ(weft_addr_parse("tcp:127.0.0.1:0", &tcp), 0);
	CHECK_EQ(weft_fdpass_server_new(loop, &tcp, NULL, srv_request, &x, &other, NULL), -EINVAL);
	CHECK_EQ(weft_fdpass_server_new(loop, &addr, NULL, NULL, &x, &other, NULL), -EINVAL);
	weft_req *req = weft_fdpass_connect_send(loop, &tcp);
	CHECK_EQ(weft_req_wait(req), 0);
	CHECK_EQ(weft_fdpass_connect_recv(req, NULL, NULL), -EINVAL);
	weft_req_free(req);
	req = weft_fdpass_connect_send(loop, &addr); /* no such file */
	CHECK_EQ(weft_req_wait(req), 0);
	CHECK_EQ(weft_fdpass_connect_recv(req, NULL, NULL), -ENOENT);
	weft_req_free(req);
	t_loop_free(loop);
}

/* A raw peer misbehaves towards the server: each case ends in the error
 * handler with the right phase, operation and errno, the connection closed,
 * every descriptor that arrived closed. */
static int raw_connect(const weft_addr *addr)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, &addr->u.sa, addr->len) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void expect_server_error(struct srv_ctx *x, int fd, int err, weft_fdpass_op op)
{
	uint64_t end = t_now_ms() + 2000;
	x->errors = 0;
	while (x->errors == 0 && t_now_ms() < end)
		weft_loop_run(x->loop, WEFT_RUN_ONCE);
	CHECK_EQ(x->errors, 1);
	CHECK_EQ(x->last_error.phase, WEFT_FDPASS_PHASE_READ_REQUEST);
	CHECK_EQ(x->last_error.err, err);
	CHECK_EQ(x->last_error.op, op);
	if (fd >= 0) {
		char b[64];
		CHECK_EQ(read(fd, b, sizeof(b)), 0); /* the server closed it */
		close(fd);
	}
}

static void test_server_bad_peers(void)
{
	weft_loop *loop = t_loop_new();
	struct srv_ctx x = {0};
	weft_addr addr;
	weft_fdpass_limits lim = {.max_fds = 2, .max_payload = 100};
	REQUIRE(start_server(&x, loop, &addr, &lim) != NULL);
	int file = open(g_file, O_RDONLY | O_CLOEXEC);
	int three[3] = {file, file, file};
	uint8_t hdr[WEFT__FDP_HDR];

	/* garbage */
	int fd = raw_connect(&addr);
	CHECK_EQ(write(fd, "GET / HTTP/1.0\r\n\r\n", 18), 18);
	expect_server_error(&x, fd, EPROTO, WEFT_FDPASS_OP_DECODE);

	/* oversized length */
	fd = raw_connect(&addr);
	weft__fdp_put_header(hdr, &(struct weft__fdp_hdr){.type = WEFT__FDP_REQUEST, .len = 101, .seq = 1});
	CHECK_EQ(write(fd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
	expect_server_error(&x, fd, EMSGSIZE, WEFT_FDPASS_OP_DECODE);

	/* too many descriptors: 3 > 2, all closed here */
	fd = raw_connect(&addr);
	CHECK_EQ(weft_fdpass_send(fd, "x", 1, three, 3, 1000), 0);
	expect_server_error(&x, fd, ETOOMANYREFS, WEFT_FDPASS_OP_DECODE);

	/* a descriptor count that disagrees with the header */
	fd = raw_connect(&addr);
	weft__fdp_put_header(hdr, &(struct weft__fdp_hdr){.type = WEFT__FDP_REQUEST, .nfds = 2, .len = 0, .seq = 1});
	CHECK_EQ(weft__fdp_sendmsg(fd, hdr, sizeof(hdr), &file, 1), (ssize_t)sizeof(hdr));
	expect_server_error(&x, fd, EPROTO, WEFT_FDPASS_OP_DECODE);

	/* a response where a request belongs */
	fd = raw_connect(&addr);
	weft__fdp_put_header(hdr, &(struct weft__fdp_hdr){.type = WEFT__FDP_RESPONSE, .seq = 1});
	CHECK_EQ(write(fd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
	expect_server_error(&x, fd, EPROTO, WEFT_FDPASS_OP_DECODE);

	/* truncated: half a request with a descriptor, then the peer closes */
	fd = raw_connect(&addr);
	uint8_t msg[WEFT__FDP_HDR + 10] = {0};
	weft__fdp_put_header(msg, &(struct weft__fdp_hdr){.type = WEFT__FDP_REQUEST, .nfds = 1, .len = 10, .seq = 1});
	CHECK_EQ(weft__fdp_sendmsg(fd, msg, WEFT__FDP_HDR + 4, &file, 1), WEFT__FDP_HDR + 4);
	t_run_for(loop, 10);
	close(fd);
	expect_server_error(&x, -1, EPIPE, WEFT_FDPASS_OP_EOF);

	/* the peer sends a request and closes at once: the reply fails inside
	 * the handler (EPIPE), which may still read its request */
	for (int i = 0; i < 3; i++) {
		fd = raw_connect(&addr);
		CHECK_EQ(weft_fdpass_send(fd, "gone", 4, NULL, 0, 1000), 0);
		close(fd);
	}
	t_run_for(loop, 30);
	CHECK_EQ(x.intact_after_reply, 3);

	/* a clean close between messages is no error; requests before it
	 * are answered */
	x.errors = 0;
	fd = raw_connect(&addr);
	CHECK_EQ(weft_fdpass_send(fd, "ok", 2, NULL, 0, 1000), 0);
	shutdown(fd, SHUT_WR);
	t_run_for(loop, 30);
	char buf[16];
	CHECK_EQ(weft_fdpass_recv(fd, buf, sizeof(buf), NULL, NULL, 1000), 2);
	CHECK_EQ(weft_fdpass_recv(fd, buf, sizeof(buf), NULL, NULL, 1000), -EPIPE);
	close(fd);
	t_run_for(loop, 10);
	CHECK_EQ(x.errors, 0);
	CHECK_EQ(weft_fdpass_server_connections(x.srv), 0);
	close_server(&x);
	close(file);
	t_loop_free(loop);
}

/* A raw server misbehaves towards the client (socketpair + forked peer). */
static pid_t fork_raw_server(int *ret_fd, int mode)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	pid_t pid = fork();
	if (pid == 0) {
		child_keep_fd(sv[1]);
		int s = sv[1];
		uint8_t in[256];
		size_t nf = 0;
		int fds[4];
		nf = 4;
		ssize_t n = weft_fdpass_recv(s, in, sizeof(in), fds, &nf, 5000);
		if (n < 0)
			_exit(1);
		uint8_t out[WEFT__FDP_HDR + 8] = {0};
		int devnull = open("/dev/null", O_RDONLY);
		switch (mode) {
		case 0: /* dies between request and response */
			_exit(0);
		case 1: /* garbage */
			(void)!write(s, "this is not a response at all", 29);
			break;
		case 2: /* the wrong sequence number */
			weft__fdp_put_header(out, &(struct weft__fdp_hdr){.type = WEFT__FDP_RESPONSE, .seq = 77});
			(void)!write(s, out, WEFT__FDP_HDR);
			break;
		case 3: /* more descriptors than the client takes (its max_fds is 1) */
			weft__fdp_put_header(out, &(struct weft__fdp_hdr){.type = WEFT__FDP_RESPONSE, .nfds = 3, .seq = 1});
			weft__fdp_sendmsg(s, out, WEFT__FDP_HDR, (int[]){devnull, devnull, devnull}, 3);
			break;
		case 4: /* half a response with a descriptor, then exit */
			weft__fdp_put_header(out, &(struct weft__fdp_hdr){.type = WEFT__FDP_RESPONSE, .nfds = 1, .len = 8, .seq = 1});
			weft__fdp_sendmsg(s, out, WEFT__FDP_HDR + 2, &devnull, 1);
			_exit(0);
		default:
			break;
		}
		char b;
		(void)!read(s, &b, 1); /* until the client closes */
		_exit(0);
	}
	close(sv[1]);
	*ret_fd = sv[0];
	return pid;
}

static void test_client_bad_servers(void)
{
	static const struct {
		int mode;
		int err;
		weft_fdpass_op op;
	} cases[] = {
		{0, ECONNRESET, WEFT_FDPASS_OP_EOF},
		{1, EPROTO, WEFT_FDPASS_OP_DECODE},
		{2, EPROTO, WEFT_FDPASS_OP_DECODE},
		{3, ETOOMANYREFS, WEFT_FDPASS_OP_DECODE},
		{4, EPIPE, WEFT_FDPASS_OP_EOF},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int fd = -1;
		pid_t pid = fork_raw_server(&fd, cases[i].mode); /* before the loop: the child holds none */
		REQUIRE(pid > 0);
		weft_loop *loop = t_loop_new();
		weft_fdpass_client *c = NULL;
		CHECK_EQ(weft_fdpass_client_new(loop, fd, &c), 0);
		CHECK_EQ(weft_fdpass_client_set_limits(c, &(weft_fdpass_limits){.max_fds = 1}), 0);
		int before = t_fd_count();
		weft_fdpass_msg m;
		weft_fdpass_error e = {0};
		int r = request_sync(c, "req", NULL, 0, &m, &e);
		if (r != -cases[i].err || e.op != cases[i].op)
			printf("# case %d: %d (%s) op %s\n", cases[i].mode, r, e.message, weft_fdpass_op_name(e.op));
		CHECK_EQ(r, -cases[i].err);
		CHECK_EQ(e.op, cases[i].op);
		CHECK_EQ(e.phase, WEFT_FDPASS_PHASE_READ_RESPONSE);
		/* the client's socket is closed: one fd fewer, nothing arrived leaks */
		CHECK_EQ(t_fd_count(), before - 1);
		/* a dead client refuses more */
		CHECK_EQ(request_sync(c, "more", NULL, 0, &m, &e), -ENOTCONN);
		weft_fdpass_client_free(c);
		CHECK_EQ(wait_child(pid), 0);
		t_loop_free(loop);
	}
}

/* ---- 4. another process: 10 000 transfers ---------------------------------------------- */

static char g_self[4096];

/* The child: a weft server on argv address.  Requests:
 *   "fd"     -> the shared file, opened once, lent to every response
 *   "check"  -> the request carries the shared file: "same" if it is
 *   "count"  -> this process's open fd count
 *   "quit"   -> answer, then close the server and exit */
struct child_ctx {
	weft_loop *loop;
	weft_fdpass_server *srv;
	int file;
	bool quit;
	bool closed;
};

static void child_request(weft_fdpass_server *srv, weft_fdpass_call *call, const weft_fdpass_msg *req,
		const weft_fdpass_peer *peer, void *data)
{
	struct child_ctx *cx = data;
	(void)peer;
	char text[32];
	size_t n = req->len < sizeof(text) - 1 ? req->len : sizeof(text) - 1;
	memcpy(text, req->buf ? req->buf : "", n);
	text[n] = '\0';
	if (strcmp(text, "fd") == 0) {
		weft_fdpass_call_reply(call, "file", 4, &cx->file, 1, NULL);
	} else if (strcmp(text, "check") == 0) {
		bool same = req->nfds == 1 && same_file(req->fds[0], cx->file);
		weft_fdpass_call_reply(call, same ? "same" : "diff", 4, NULL, 0, NULL);
	} else if (strcmp(text, "count") == 0) {
		snprintf(text, sizeof(text), "%d", t_fd_count());
		weft_fdpass_call_reply(call, text, strlen(text), NULL, 0, NULL);
	} else if (strcmp(text, "hang") == 0) {
		/* never answered: the parent kills this process */
	} else if (strcmp(text, "quit") == 0) {
		weft_fdpass_call_reply(call, "bye", 3, NULL, 0, NULL);
		weft_fdpass_server_close(srv, NULL, NULL);
		cx->quit = true;
	} else {
		weft_fdpass_call_fail(call, EINVAL);
	}
}

static void child_closed(void *data)
{
	struct child_ctx *cx = data;
	cx->closed = true;
}

static int child_server(const char *addr_text, const char *file)
{
	struct child_ctx cx = {0};
	weft_addr addr;
	if (weft_addr_parse(addr_text, &addr) < 0 || weft_loop_new(&cx.loop) < 0)
		return 10;
	cx.file = open(file, O_RDONLY | O_CLOEXEC);
	if (cx.file < 0)
		return 11;
	if (weft_fdpass_server_new(cx.loop, &addr, NULL, child_request, &cx, &cx.srv, NULL) < 0)
		return 12;
	/* tell the parent we listen: one byte on stdout */
	if (write(1, "L", 1) != 1)
		return 13;
	while (!cx.quit && weft_loop_run(cx.loop, WEFT_RUN_ONCE) >= 0)
		;
	(void)child_closed;
	for (int i = 0; i < 100; i++)
		weft_loop_run(cx.loop, WEFT_RUN_NOWAIT);
	close(cx.file);
	return weft_loop_free(cx.loop) == 0 ? 0 : 14;
}

static pid_t spawn_child_server(const char *addr_text)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	pid_t pid = fork();
	if (pid == 0) {
		dup2(p[1], 1);
		execl(g_self, g_self, "--child-server", addr_text, g_file, (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	char b = 0;
	ssize_t n = read(p[0], &b, 1);
	close(p[0]);
	if (n != 1 || b != 'L') {
		waitpid(pid, NULL, 0);
		return -1;
	}
	return pid;
}

struct xfer {
	weft_fdpass_client *c;
	int file;
	int sent, done, failed, wrong;
	int total;
	int window;
};

static void xfer_next(struct xfer *x);

static void xfer_done(weft_req *req, void *data)
{
	struct xfer *x = data;
	weft_fdpass_msg m;
	if (weft_fdpass_request_recv(req, &m, NULL, NULL) < 0) {
		x->failed++;
	} else {
		bool ok;
		if (m.nfds == 1)
			ok = m.len == 4 && memcmp(m.buf, "file", 4) == 0 && same_file(m.fds[0], x->file);
		else
			ok = m.len == 4 && memcmp(m.buf, "same", 4) == 0;
		if (!ok)
			x->wrong++;
		weft_fdpass_msg_clear(&m);
	}
	weft_req_free(req);
	x->done++;
	xfer_next(x);
}

static void xfer_next(struct xfer *x)
{
	while (x->sent < x->total && x->sent - x->done < x->window) {
		/* odd ones: client -> server; even ones: server -> client */
		bool up = x->sent % 2 == 1;
		weft_req *req = up ? weft_fdpass_request_send(x->c, "check", 5, &x->file, 1)
		                   : weft_fdpass_request_send(x->c, "fd", 2, NULL, 0);
		if (req == NULL) {
			x->failed++;
			x->done++;
		} else {
			weft_req_set_callback(req, xfer_done, x);
		}
		x->sent++;
	}
}

static int remote_count(weft_fdpass_client *c)
{
	weft_fdpass_msg m;
	weft_fdpass_error e;
	int r = request_sync(c, "count", NULL, 0, &m, &e);
	if (r < 0)
		return r;
	char text[32];
	size_t n = m.len < sizeof(text) - 1 ? m.len : sizeof(text) - 1;
	memcpy(text, m.buf, n);
	text[n] = '\0';
	weft_fdpass_msg_clear(&m);
	return atoi(text);
}

static void test_10000_transfers(void)
{
	char addr_text[128];
	snprintf(addr_text, sizeof(addr_text), "unix:@weft-fdpass-%d-child-%d", (int)getpid(), ++g_seq);
	weft_addr addr;
	CHECK_EQ(weft_addr_parse(addr_text, &addr), 0);
	pid_t pid = spawn_child_server(addr_text);
	REQUIRE(pid > 0);
	weft_loop *loop = t_loop_new();
	struct xfer x = {.total = 10000, .window = 8};
	x.file = open(g_file, O_RDONLY | O_CLOEXEC);
	x.c = connect_client(loop, &addr);
	if (x.c != NULL) {
		weft_fdpass_peer peer;
		CHECK_EQ(weft_fdpass_client_peer(x.c, &peer), 0);
		CHECK_EQ(peer.pid, pid);
		int remote_before = remote_count(x.c);
		int local_before = t_fd_count();
		CHECK(remote_before > 0);
		xfer_next(&x);
		uint64_t end = t_now_ms() + 60000;
		while (x.done < x.total && t_now_ms() < end)
			weft_loop_run(loop, WEFT_RUN_ONCE);
		CHECK_EQ(x.done, x.total);
		CHECK_EQ(x.failed, 0);
		CHECK_EQ(x.wrong, 0);
		CHECK_EQ(t_fd_count(), local_before);
		CHECK_EQ(remote_count(x.c), remote_before);
		weft_fdpass_msg m;
		weft_fdpass_error e;
		CHECK_EQ(request_sync(x.c, "quit", NULL, 0, &m, &e), 0);
		weft_fdpass_msg_clear(&m);
		weft_fdpass_client_free(x.c);
	}
	CHECK_EQ(wait_child(pid), 0);
	close(x.file);
	t_loop_free(loop);
}

/* The same server and client on a loop driven by hand (the external
 * backend): a poll(2) driver of this test's own. */
#define PL_MAXFD 1024
struct poll_loop {
	unsigned events[PL_MAXFD];
	int64_t timer_ms; /* -1: none */
	uint64_t timer_at;
	int watches;
};

static int pl_watch(weft_loop *loop, int fd, unsigned events, void *fd_data, void *user)
{
	struct poll_loop *p = user;
	(void)loop;
	(void)fd_data;
	if (fd < 0 || fd >= PL_MAXFD)
		return -EINVAL;
	p->events[fd] = events;
	p->watches++;
	return 0;
}

static void pl_timer(weft_loop *loop, int64_t timeout_ms, void *user)
{
	struct poll_loop *p = user;
	(void)loop;
	p->timer_ms = timeout_ms;
	p->timer_at = t_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
}

/* One round: poll what weft asked for, report readiness and timers. */
static void pl_step(weft_loop *loop, struct poll_loop *p)
{
	struct pollfd fds[64];
	int n = 0;
	for (int fd = 0; fd < PL_MAXFD && n < 64; fd++)
		if (p->events[fd])
			fds[n++] = (struct pollfd){.fd = fd,
				.events = (short)(((p->events[fd] & WEFT_IO_READ) ? POLLIN : 0) |
				                  ((p->events[fd] & WEFT_IO_WRITE) ? POLLOUT : 0))};
	int wait = 20;
	if (p->timer_ms >= 0) {
		uint64_t now = t_now_ms();
		wait = p->timer_at <= now ? 0 : (int)(p->timer_at - now < 20 ? p->timer_at - now : 20);
	}
	poll(fds, (nfds_t)n, wait);
	for (int i = 0; i < n; i++) {
		unsigned rev = 0;
		if (fds[i].revents & POLLIN)
			rev |= WEFT_IO_READ;
		if (fds[i].revents & POLLOUT)
			rev |= WEFT_IO_WRITE;
		if (fds[i].revents & POLLHUP)
			rev |= WEFT_IO_HUP;
		if (fds[i].revents & POLLERR)
			rev |= WEFT_IO_ERR;
		if (rev)
			weft_loop_process_fd(loop, fds[i].fd, rev);
	}
	if (p->timer_ms >= 0 && t_now_ms() >= p->timer_at)
		weft_loop_process_timeout(loop);
}

struct ext_result {
	bool done;
	int r;
	weft_fdpass_msg m;
};

static void ext_answered(weft_req *req, void *data)
{
	struct ext_result *res = data;
	res->r = weft_fdpass_request_recv(req, &res->m, NULL, NULL);
	res->done = true;
	weft_req_free(req);
}

static void test_external_loop(void)
{
	struct poll_loop p = {.timer_ms = -1};
	static const weft_loop_ops ops = {.watch = pl_watch, .timer = pl_timer};
	weft_loop *loop = NULL;
	REQUIRE(weft_loop_new_external(&ops, &p, &loop) == 0);
	struct srv_ctx x = {0};
	weft_addr addr;
	REQUIRE(start_server(&x, loop, &addr, NULL) != NULL);
	x.echo_fds = true;
	weft_fdpass_client *c = NULL;
	weft_req *creq = weft_fdpass_connect_send(loop, &addr);
	uint64_t end = t_now_ms() + 3000;
	while (weft_req_is_in_progress(creq) && t_now_ms() < end)
		pl_step(loop, &p);
	/* the connect completed inside _send: its result is posted (a deferred
	 * call, run by process_timeout) */
	for (int i = 0; i < 5; i++)
		pl_step(loop, &p);
	CHECK_EQ(weft_fdpass_connect_recv(creq, &c, NULL), 0);
	weft_req_free(creq);
	REQUIRE(c != NULL);
	int pfd[2];
	REQUIRE(pipe2(pfd, O_CLOEXEC) == 0);
	for (int round = 0; round < 20; round++) {
		struct ext_result res = {0};
		weft_req *req = weft_fdpass_request_send(c, "ext", 3, pfd, 2);
		REQUIRE(req != NULL);
		weft_req_set_callback(req, ext_answered, &res);
		end = t_now_ms() + 3000;
		while (!res.done && t_now_ms() < end)
			pl_step(loop, &p);
		CHECK(res.done);
		CHECK_EQ(res.r, 0);
		if (res.r == 0) {
			CHECK_EQ(res.m.nfds, 2);
			CHECK(res.m.nfds == 2 && same_file(res.m.fds[0], pfd[0]) && same_file(res.m.fds[1], pfd[1]));
			weft_fdpass_msg_clear(&res.m);
		}
	}
	CHECK(p.watches > 0);
	weft_fdpass_client_free(c);
	x.closed = false;
	weft_fdpass_server_close(x.srv, srv_closed, &x);
	end = t_now_ms() + 3000;
	while (!x.closed && t_now_ms() < end)
		pl_step(loop, &p);
	CHECK(x.closed);
	CHECK_EQ(x.posts, 20);
	close(pfd[0]);
	close(pfd[1]);
	int r = -EBUSY;
	for (int i = 0; i < 50 && (r = weft_loop_free(loop)) == -EBUSY; i++)
		pl_step(loop, &p);
	CHECK_EQ(r, 0);
}

/* A real server process killed between request and response: the
 * client's request fails with ECONNRESET. */
static void test_server_killed(void)
{
	char addr_text[128];
	snprintf(addr_text, sizeof(addr_text), "unix:@weft-fdpass-%d-kill-%d", (int)getpid(), ++g_seq);
	weft_addr addr;
	CHECK_EQ(weft_addr_parse(addr_text, &addr), 0);
	pid_t pid = spawn_child_server(addr_text);
	REQUIRE(pid > 0);
	weft_loop *loop = t_loop_new();
	weft_fdpass_client *c = connect_client(loop, &addr);
	if (c != NULL) {
		weft_req *req = weft_fdpass_request_send(c, "hang", 4, NULL, 0);
		t_run_for(loop, 30);
		CHECK(weft_req_is_in_progress(req));
		kill(pid, SIGKILL);
		CHECK_EQ(weft_req_wait(req), 0);
		weft_fdpass_error e;
		CHECK_EQ(weft_fdpass_request_recv(req, NULL, &e, NULL), -ECONNRESET);
		CHECK_EQ(e.phase, WEFT_FDPASS_PHASE_READ_RESPONSE);
		CHECK_EQ(e.op, WEFT_FDPASS_OP_EOF);
		weft_req_free(req);
		weft_fdpass_client_free(c);
	}
	CHECK_EQ(wait_child(pid), 128 + SIGKILL);
	t_loop_free(loop);
}

/* max_connections: the third client waits in the backlog until one of
 * the first two leaves; adopt refuses at the limit. */
static void test_max_connections(void)
{
	weft_loop *loop = t_loop_new();
	struct srv_ctx x = {0};
	weft_addr addr;
	REQUIRE(start_server(&x, loop, &addr, &(weft_fdpass_limits){.max_connections = 2}) != NULL);
	weft_fdpass_client *a = connect_client(loop, &addr);
	weft_fdpass_client *b = connect_client(loop, &addr);
	weft_fdpass_client *c = connect_client(loop, &addr); /* connect succeeds: the backlog */
	REQUIRE(a != NULL && b != NULL && c != NULL);
	weft_fdpass_msg m;
	weft_fdpass_error e;
	CHECK_EQ(request_sync(a, "a", NULL, 0, &m, &e), 0);
	weft_fdpass_msg_clear(&m);
	CHECK_EQ(request_sync(b, "b", NULL, 0, &m, &e), 0);
	weft_fdpass_msg_clear(&m);
	CHECK_EQ(weft_fdpass_server_connections(x.srv), 2);
	int sv[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	CHECK_EQ(weft_fdpass_server_adopt(x.srv, sv[0]), -EBUSY); /* sv[0] closed */
	close(sv[1]);
	weft_req *req = weft_fdpass_request_send(c, "c", 1, NULL, 0);
	t_run_for(loop, 50);
	CHECK(weft_req_is_in_progress(req));
	weft_fdpass_client_free(a);
	CHECK_EQ(weft_req_wait(req), 0);
	CHECK_EQ(weft_fdpass_request_recv(req, NULL, NULL, NULL), 0);
	weft_req_free(req);
	/* adopt: a socketpair end served like an accepted connection */
	weft_fdpass_client_free(b);
	t_run_for(loop, 20);
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	CHECK_EQ(weft_fdpass_server_adopt(x.srv, sv[0]), 0);
	weft_fdpass_client *d = NULL;
	CHECK_EQ(weft_fdpass_client_new(loop, sv[1], &d), 0);
	CHECK_EQ(request_sync(d, "d", NULL, 0, &m, &e), 0);
	CHECK(m.len == 1 && memcmp(m.buf, "d", 1) == 0);
	weft_fdpass_msg_clear(&m);
	weft_fdpass_client_free(d);
	weft_fdpass_client_free(c);
	close_server(&x);
	t_loop_free(loop);
}

/* ---- main -------------------------------------------------------------------------------- */

static const char *g_only;

static void run(const char *name, void (*fn)(void))
{
	if (g_only == NULL || strstr(name, g_only) != NULL)
		t_run_watchdog(name, fn, 120);
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "--child-server") == 0)
		return child_server(argv[2], argv[3]);
	g_only = argc > 1 ? argv[1] : NULL;
	setvbuf(stdout, NULL, _IOLBF, 0);
	ssize_t n = readlink("/proc/self/exe", g_self, sizeof(g_self) - 1);
	if (n <= 0) {
		printf("Bail out! readlink /proc/self/exe: %s\n", strerror(errno));
		return 1;
	}
	g_self[n] = '\0';
	snprintf(g_dir, sizeof(g_dir), "/tmp/weft-fdpass-XXXXXX");
	if (mkdtemp(g_dir) == NULL) {
		printf("Bail out! mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	snprintf(g_file, sizeof(g_file), "%s/shared-file", g_dir);
	int fd = open(g_file, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, "content\n", 8) != 8) {
		printf("Bail out! %s: %s\n", g_file, strerror(errno));
		return 1;
	}
	close(fd);

	run("codec: header fields, bad magic/version/type, limits", test_header);
	run("codec: every read size and every split, fds attributed", test_codec_every_split);
	g_ack_msg = true;
	run("codec, reads acknowledged as the drivers do: every read size and every split", test_codec_every_split);
	run("codec, reads acknowledged as the drivers do: 3000 random mutated streams", test_codec_random);
	g_ack_msg = false;
	run("codec: misplaced, miscounted, truncated fds are closed", test_codec_bad_fds);
	run("codec: 3000 random mutated streams, every fd handed out or closed once", test_codec_random);
	run("codec: a 200 000-byte payload in 7777-byte reads", test_codec_large);
	run("low-level: send/recv, same file, EAGAIN, timeout, EMSGSIZE, EPROTO", test_lowlevel);
	run("request/response: fds both ways, peer creds, post, fail, limits", test_request_response);
	run("reuse: no post handler, small and large requests, 0/1/6 fds, fd count equal", test_reuse);
	run("response blocks: a small one reuses the spare, a thread's spare freed at exit", test_response_blocks);
	run("server: replies that do not fit the socket queue up, in order, fds intact", test_server_send_blocked);
	run("pipelined: 200 in flight, answered in reverse, delivered in order", test_pipelined_out_of_order);
	run("back-pressure: at most max_pending calls held, reading resumes", test_back_pressure);
	run("timeout: ETIMEDOUT, late answer dropped with its fd", test_timeout);
	run("partial write: fd on the first byte only, rest written after a timeout", test_partial_write);
	run("server close: calls in progress finish, then the close callback", test_server_close_graceful);
	run("client free: pending -> ECANCELED, free inside a callback", test_client_free);
	run("paths: live refused, stale replaced when asked, mode, removed", test_paths);
	run("server: garbage, oversized, too many fds, truncated, clean close", test_server_bad_peers);
	run("client: server dies, garbage, wrong seq, too many fds, truncated", test_client_bad_servers);
	run("external loop: a hand-driven poll(2) loop, fds both ways", test_external_loop);
	run("max connections: backlog waits, adopt refused at the limit, adopt", test_max_connections);
	run("processes: a server killed between request and response", test_server_killed);
	run("processes: 10 000 transfers both ways, fd counts equal", test_10000_transfers);

	unlink(g_file);
	rmdir(g_dir);
	return t_finish();
}
