/* bench-echo — TCP echo servers: raw syscalls, weft, libevent and libuv.
 *
 * The program forks one server process per implementation and then acts as
 * the client itself, so client and server are always two processes.  Every
 * server listens on 127.0.0.1 (a free port, reported to the parent through a
 * pipe) and sets TCP_NODELAY on each connection; so does the client.
 *
 * The servers:
 *   raw         blocking read(2)/write(2): an accept loop, and one thread per
 *               connection that reads up to 64 KiB and writes it back.
 *   weft        weft_listen (callback mode); per connection a registered
 *               reader (weft_stream_read_start, libuv's uv_read_start shape)
 *               reading into a pooled 64 KiB block ("read what is there");
 *               its callback writes the n bytes with weft_stream_try_writev
 *               and queues only what the socket did not take
 *               (weft_stream_writev_queue_send(s, NULL, ...), which then
 *               owns the block); the reader stops while 16 writes wait.
 *   libevent    evconnlistener + bufferevent_socket; the read callback moves
 *               the input into the output (bufferevent_write_buffer).
 *   libuv       uv_tcp + uv_read_start (alloc_cb hands out pooled 64 KiB
 *               buffers) + uv_write of what was read; the buffer returns to
 *               the pool in the write callback.
 *   weft-readv  (on request: -s weft-readv) weft with ONE long-lived
 *               weft_stream_readv_send per connection whose next-vector
 *               callback asks for the 4-byte length prefix, then for the
 *               body, and when the body is full echoes the frame as weft
 *               does, then asks for the next prefix.  Frames are read
 *               straight into pooled buffers that go out unchanged.
 *   weft-pdu    (on request: -s weft-pdu) weft with one readv request per
 *               frame (tstream_readv_pdu style): the request completes with
 *               the frame, its callback echoes it and starts the next one.
 *
 * The wire protocol is length-prefixed frames (4-byte big-endian length, then
 * the payload), the same for every server.  raw, weft, libevent and libuv
 * echo bytes as they arrive (an echo needs no framing); weft-readv and
 * weft-pdu parse the prefix and echo whole frames, as a server of a PDU
 * protocol would.  Each server bounds its output (about 1 MiB, or 16 queued
 * writes for the weft servers) and stops reading until it drains.
 *
 * The rows:
 *   ping-pong  64-byte payload (68 bytes on the wire), one message in flight
 *              per connection; the client checks every reply byte for byte.
 *              1 connection: blocking write + blocking read.  N connections:
 *              blocking sockets and poll(2) over all of them; a reply that is
 *              complete triggers the next ping on that connection.
 *   bulk       the client streams 64 KiB frames (65532-byte payload) and reads
 *              the echo at the same time (non-blocking sockets, poll for
 *              POLLIN|POLLOUT); the rate is the bytes sent one way divided by
 *              the time until the last echoed byte arrived.  N connections
 *              share the total.
 *
 * Before the clock starts, every connection is connected and has done one
 * untimed round trip, so the server has accepted it and is reading.  Rounds
 * are interleaved (raw, weft, libevent, libuv, [weft-readv, weft-pdu,] raw,
 * ...) after one warm-up round per server; the table shows the medians.
 *
 * -S NAME runs one server alone in the foreground and -C PORT runs the client
 * against it, for valgrind/strace on the server process.  See
 * bench/README.md.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <uv.h>

#include <weft/loop.h>
#include <weft/req.h>
#include <weft/sock.h>

#include "bench-util.h"

#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* ---- servers, rows, options ---------------------------------------------- */

enum { S_RAW, S_WEFT, S_EVENT, S_UV, S_WREADV, S_WPDU, NSRV };
static const char *const srv_names[NSRV] = { "raw", "weft", "libevent", "libuv", "weft-readv",
                                             "weft-pdu" };

enum { R_PP1, R_PPN, R_BULK1, R_BULKN, NROWS };
static const char *const row_names[NROWS] = { "pp1", "ppN", "bulk1", "bulkN" };

#define HDR 4                        /* length prefix */
#define BUF_SIZE 65536               /* pooled buffers; the largest frame */
#define MAX_PAYLOAD (BUF_SIZE - HDR)
#define BULK_FRAME 65536             /* bulk frame on the wire: header + 65532 */
#define MAX_CONNS 10000

/* (-r, -o, -v and -q: bench, in bench-util.h) */
static struct {
	long pp1_rt;      /* round trips per round, 1 connection */
	long ppn_rt;      /* round trips per round, N connections (all of them) */
	int conns;        /* N */
	int msg;          /* ping payload bytes */
	long bulk_mib;    /* MiB sent (one way) per bulk round */
	bool pin;         /* -P: pin to CPU 0 */
	bool srv[NSRV];
	bool rows[NROWS];
	unsigned watchdog_s;
	int server_only;  /* -S: server index, or -1 */
	int port;         /* -p: port of -S (0: any) */
	int client_port;  /* -C: port of an external server, or 0 */
} opt = {
	.pp1_rt = 30000,
	.ppn_rt = 60000,
	.conns = 100,
	.msg = 64,
	.bulk_mib = 256,
	.srv = { true, true, true, true, false, false }, /* weft-readv, weft-pdu on request */
	.rows = { true, true, true, true },
	.watchdog_s = 120,
	.server_only = -1,
};

/* ---- helpers -------------------------------------------------------------- */

static void put_be32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static uint32_t get_be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* 127.0.0.1:port */
static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return sin;
}

static void set_nodelay(int fd)
{
	int one = 1;
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
		die("setsockopt(TCP_NODELAY): %s", strerror(errno));
}

static int send_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* A listening socket on 127.0.0.1:port for the raw server. */
static int raw_listen(int port, int *ret_port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket: %s", strerror(errno));
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in sin = loopback(port);
	if (bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0)
		die("bind 127.0.0.1:%d: %s", port, strerror(errno));
	if (listen(fd, SOMAXCONN) < 0)
		die("listen: %s", strerror(errno));
	socklen_t len = sizeof sin;
	if (getsockname(fd, (struct sockaddr *)&sin, &len) < 0)
		die("getsockname: %s", strerror(errno));
	*ret_port = ntohs(sin.sin_port);
	return fd;
}

static int sock_port(int fd)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof sin;
	if (getsockname(fd, (struct sockaddr *)&sin, &len) < 0)
		die("getsockname: %s", strerror(errno));
	return ntohs(sin.sin_port);
}

/* The server tells its port to the parent (report_fd) or, alone (-S), to
 * the user. */
static void report_port(int srv, int report_fd, int port)
{
	if (report_fd >= 0) {
		int32_t p = port;
		if (write(report_fd, &p, sizeof p) != (ssize_t)sizeof p)
			die("reporting the port: %s", strerror(errno));
		close(report_fd);
	} else {
		printf("bench-echo: %s server (pid %d) listening on 127.0.0.1:%d\n", srv_names[srv],
		       (int)getpid(), port);
		fflush(stdout);
	}
}

/* ---- buffer pool (weft and libuv servers) -------------------------------- */

/* One block per read or write in flight.  libuv's write request lives in
 * the block too, so no server allocates per message once the pool is
 * warm. */
struct blk {
	uv_write_t uvw;  /* libuv: the write request */
	void *owner;     /* the connection */
	size_t len;      /* bytes of data in use */
	unsigned char data[BUF_SIZE];
};

#define POOL_MAX 1024
static struct blk *pool[POOL_MAX];
static int npool;

static struct blk *blk_get(void)
{
	if (npool > 0)
		return pool[--npool];
	return xmalloc(sizeof(struct blk));
}

static void blk_put(struct blk *b)
{
	if (npool < POOL_MAX)
		pool[npool++] = b;
	else
		free(b);
}

/* ---- server 1: raw blocking syscalls, a thread per connection ------------ */

static void *raw_conn(void *arg)
{
	int fd = (int)(intptr_t)arg;
	char *buf = xmalloc(BUF_SIZE);
	for (;;) {
		ssize_t n = read(fd, buf, BUF_SIZE);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (send_all(fd, buf, (size_t)n) < 0)
			break;
	}
	free(buf);
	close(fd);
	return NULL;
}

__attribute__((noreturn))
static void raw_serve(int port, int report_fd)
{
	int lfd = raw_listen(port, &port);
	report_port(S_RAW, report_fd, port);
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 256 << 10);
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			die("raw: accept: %s", strerror(errno));
		}
		set_nodelay(fd);
		pthread_t t;
		int r = pthread_create(&t, &attr, raw_conn, (void *)(intptr_t)fd);
		if (r != 0)
			die("raw: pthread_create: %s", strerror(r));
	}
}

/* ---- servers 2, 5, 6: weft, weft-readv, weft-pdu --------------------------- */

/* The three weft servers share the connection, the echo and the write
 * path; they differ in how they read (w_mode, one per server process):
 *   weft        weft_stream_read_start into a 64 KiB block ("what is there"),
 *               echo the n bytes — what libuv's server does;
 *   weft-readv  one long-lived weft_stream_readv_send whose next-vector
 *               callback parses the frames and echoes each whole frame;
 *   weft-pdu    one weft_stream_readv_send per frame. */
enum { WM_READ, WM_READV, WM_PDU };
enum { W_NEW, W_HDR, W_BODY, W_FRAME };
#define W_HIGH 16 /* writes queued before a connection stops reading */
#define W_LOW 4   /* ... and resumes */

struct wconn {
	weft_stream *s;   /* NULL once closed */
	weft_req *rreq;   /* the read request; NULL while paused */
	struct blk *blk;  /* the block being read into (NULL: take one) */
	struct iovec iov; /* what next() handed out */
	int state;
	int writes;       /* write requests in flight */
	int refs;         /* the stream, the read request, each write */
	bool paused;
};

static weft_loop *wl;
static int w_mode;

static void wconn_unref(struct wconn *c)
{
	if (--c->refs > 0)
		return;
	if (c->blk != NULL)
		blk_put(c->blk);
	free(c);
}

static void w_closed(void *data)
{
	wconn_unref(data);
}

static void w_close(struct wconn *c)
{
	weft_stream *s = c->s;
	if (s == NULL)
		return;
	c->s = NULL;
	weft_stream_close(s, w_closed, c);
}

static void w_start_read(struct wconn *c);
static void w_written(weft_req *req, void *data);

/* Echo the b->len bytes in c->blk: write what the socket takes now
 * (uv_try_write style); only a remainder becomes a queued request, which
 * then owns the block until its callback returns it to the pool.  If all
 * was written, c->blk stays with the caller. */
static int w_echo(struct wconn *c, weft_stream *s)
{
	struct blk *b = c->blk;
	struct iovec v = { b->data, b->len };
	ssize_t n = weft_stream_try_writev(s, &v, 1);
	if (n == (ssize_t)b->len)
		return 0;
	if (n > 0) {
		v.iov_base = b->data + n;
		v.iov_len = b->len - (size_t)n;
	} else if (n != -EAGAIN && n != -EBUSY) {
		return (int)n;
	}
	weft_req *w = weft_stream_writev_queue_send(s, NULL, &v, 1);
	if (w == NULL)
		return -ENOMEM;
	c->blk = NULL;
	b->owner = c;
	c->writes++;
	c->refs++;
	weft_req_set_callback(w, w_written, b);
	return 0;
}

static void w_written(weft_req *req, void *data)
{
	struct blk *b = data;
	struct wconn *c = b->owner;
	int err = 0;
	ssize_t r = weft_stream_writev_queue_recv(req, &err);
	weft_req_free(req);
	blk_put(b);
	c->writes--;
	if (r < 0)
		w_close(c); /* the client went away */
	else if (c->paused && (w_mode == WM_READ || c->rreq == NULL) && c->s != NULL && c->writes <= W_LOW)
		w_start_read(c);
	wconn_unref(c);
}

/* weft: the registered reader (weft_stream_read_start) asks for a buffer:
 * the connection's block, or none while too many writes are queued (which
 * stops the reader; w_written starts it again). */
static void w_alloc(weft_stream *s, size_t suggested, void **ret_buf, size_t *ret_len, void *data)
{
	(void)s;
	(void)suggested;
	struct wconn *c = data;
	if (c->writes >= W_HIGH) {
		c->paused = true;
		*ret_len = 0;
		return;
	}
	if (c->blk == NULL)
		c->blk = blk_get();
	*ret_buf = c->blk->data;
	*ret_len = BUF_SIZE;
}

/* weft: n >= 1 bytes arrived in c->blk (or the end, or an error).  A block
 * written whole goes back to the pool at once, as the libuv server's does:
 * the next read on any connection takes the same, cache-warm block. */
static void w_read_some(weft_stream *s, ssize_t n, void *buf, void *data)
{
	(void)buf;
	struct wconn *c = data;
	if (n > 0) {
		c->blk->len = (size_t)n;
		if (w_echo(c, s) == 0) {
			if (c->blk != NULL) {
				blk_put(c->blk);
				c->blk = NULL;
			}
			return;
		}
	}
	w_close(c); /* EPIPE: the client closed; otherwise an error */
}

/* weft-readv, weft-pdu: the next-vector callback — prefix, body, (echo the
 * frame) prefix, body, ... */
static int w_next(weft_stream *s, void *data, const struct iovec **ret_vector, size_t *ret_count)
{
	struct wconn *c = data;
	if (c->state == W_HDR) {
		uint32_t len = get_be32(c->blk->data);
		if (len > MAX_PAYLOAD)
			return -EPROTO;
		c->blk->len = HDR + len;
		c->state = W_BODY;
		if (len > 0) {
			c->iov.iov_base = c->blk->data + HDR;
			c->iov.iov_len = len;
			*ret_vector = &c->iov;
			*ret_count = 1;
			return 0;
		}
	}
	if (c->state == W_BODY && w_mode == WM_PDU) {
		/* weft-pdu: the frame is complete, and so is this request. */
		c->state = W_FRAME;
		*ret_vector = NULL;
		*ret_count = 0;
		return 0;
	}
	if (c->state == W_BODY) {
		/* A whole frame: send it back as it is. */
		int r = w_echo(c, s);
		if (r < 0)
			return r;
		if (c->writes >= W_HIGH) {
			/* Stop reading (complete the read request) until the writes drain. */
			c->paused = true;
			*ret_vector = NULL;
			*ret_count = 0;
			return 0;
		}
	}
	if (c->blk == NULL)
		c->blk = blk_get();
	c->iov.iov_base = c->blk->data;
	c->iov.iov_len = HDR;
	c->state = W_HDR;
	*ret_vector = &c->iov;
	*ret_count = 1;
	return 0;
}

/* weft-readv, weft-pdu: the readv request completed. */
static void w_read_done(weft_req *req, void *data)
{
	struct wconn *c = data;
	int err = 0;
	int r = weft_stream_readv_recv(req, &err);
	weft_req_free(req);
	c->rreq = NULL;
	if (r == 0 && c->s != NULL && c->state == W_FRAME) {
		/* weft-pdu: echo the frame, then read the next one. */
		if (w_echo(c, c->s) < 0)
			w_close(c);
		else if (c->writes < W_HIGH)
			w_start_read(c);
		else
			c->paused = true;
	} else if (r == 0 && c->s != NULL) {
		if (!c->paused || c->writes <= W_LOW)
			w_start_read(c);
	} else {
		w_close(c); /* EPIPE: the client closed; otherwise an error */
	}
	wconn_unref(c);
}

static void w_start_read(struct wconn *c)
{
	c->paused = false;
	if (w_mode == WM_READ) {
		if (weft_stream_read_start(c->s, w_alloc, w_read_some, c) < 0)
			w_close(c);
		return;
	}
	c->state = W_NEW;
	weft_req *r = weft_stream_readv_send(c->s, w_next, c);
	if (r == NULL) {
		w_close(c);
		return;
	}
	c->rreq = r;
	c->refs++;
	weft_req_set_callback(r, w_read_done, c);
}

static void w_accept(weft_listener *l, weft_stream *s, const weft_addr *peer, int err, void *data)
{
	(void)l;
	(void)peer;
	(void)data;
	if (s == NULL) {
		warn("weft: accept: %s", strerror(-err));
		return;
	}
	int fd = weft_stream_fd(s);
	if (fd >= 0)
		set_nodelay(fd);
	struct wconn *c = xcalloc(1, sizeof *c);
	c->s = s;
	c->refs = 1; /* the stream; dropped by w_closed */
	w_start_read(c);
}

__attribute__((noreturn))
static void weft_serve(int srv, int port, int report_fd)
{
	char text[64];
	weft_addr addr, bound;
	weft_listener *l;
	w_mode = srv == S_WPDU ? WM_PDU : srv == S_WREADV ? WM_READV : WM_READ;
	wcheck(weft_loop_new(&wl), "weft_loop_new");
	snprintf(text, sizeof text, "tcp:127.0.0.1:%d", port);
	wcheck(weft_addr_parse(text, &addr), "weft_addr_parse");
	wcheck(weft_listen(wl, &addr, NULL, w_accept, NULL, &l), "weft_listen");
	wcheck(weft_listener_addr(l, &bound), "weft_listener_addr");
	int p = weft_addr_port(&bound);
	wcheck(p, "weft_addr_port");
	report_port(srv, report_fd, p);
	for (;;)
		wcheck(weft_loop_run(wl, WEFT_RUN_DEFAULT), "weft_loop_run");
}

/* ---- server 3: libevent bufferevents --------------------------------------- */

#define EV_HIGH (1 << 20) /* output bytes before a connection stops reading */
#define EV_LOW (256 << 10)

static struct event_base *eb;

static void ev_on_read(struct bufferevent *bev, void *arg);
static void ev_on_event(struct bufferevent *bev, short what, void *arg);

static void ev_on_drained(struct bufferevent *bev, void *arg)
{
	bufferevent_setcb(bev, ev_on_read, NULL, ev_on_event, arg);
	bufferevent_enable(bev, EV_READ);
}

static void ev_on_read(struct bufferevent *bev, void *arg)
{
	if (bufferevent_write_buffer(bev, bufferevent_get_input(bev)) < 0) {
		bufferevent_free(bev);
		return;
	}
	if (evbuffer_get_length(bufferevent_get_output(bev)) >= EV_HIGH) {
		bufferevent_disable(bev, EV_READ);
		bufferevent_setcb(bev, ev_on_read, ev_on_drained, ev_on_event, arg);
	}
}

static void ev_on_event(struct bufferevent *bev, short what, void *arg)
{
	(void)arg;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		bufferevent_free(bev);
}

static void ev_on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
		void *arg)
{
	(void)l;
	(void)sa;
	(void)len;
	set_nodelay(fd);
	struct bufferevent *bev = bufferevent_socket_new(eb, fd, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		close(fd);
		return;
	}
	/* Read and write up to 64 KiB at a time like the other servers
	 * (libevent's default is 16 KiB). */
	bufferevent_set_max_single_read(bev, BUF_SIZE);
	bufferevent_set_max_single_write(bev, BUF_SIZE);
	bufferevent_setwatermark(bev, EV_WRITE, EV_LOW, 0);
	bufferevent_setcb(bev, ev_on_read, NULL, ev_on_event, arg);
	bufferevent_enable(bev, EV_READ);
}

__attribute__((noreturn))
static void libevent_serve(int port, int report_fd)
{
	eb = event_base_new();
	if (eb == NULL)
		die("libevent: event_base_new failed");
	struct sockaddr_in sin = loopback(port);
	struct evconnlistener *l = evconnlistener_new_bind(eb, ev_on_accept, NULL,
			LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, -1, (struct sockaddr *)&sin, sizeof sin);
	if (l == NULL)
		die("libevent: evconnlistener_new_bind 127.0.0.1:%d: %s", port, strerror(errno));
	report_port(S_EVENT, report_fd, sock_port(evconnlistener_get_fd(l)));
	for (;;)
		if (event_base_dispatch(eb) < 0)
			die("libevent: event_base_dispatch failed");
}

/* ---- server 4: libuv -------------------------------------------------------- */

#define UV_HIGH (1 << 20) /* queued write bytes before a connection stops reading */
#define UV_LOW (256 << 10)

struct uconn {
	uv_tcp_t tcp;
	bool paused;
};

static uv_loop_t ul;

static void u_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	struct blk *b = blk_get();
	*buf = uv_buf_init((char *)b->data, BUF_SIZE);
}

static void u_closed(uv_handle_t *h)
{
	free(h->data);
}

static void u_close(uv_stream_t *st)
{
	if (!uv_is_closing((uv_handle_t *)st))
		uv_close((uv_handle_t *)st, u_closed);
}

static void u_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void u_written(uv_write_t *req, int status)
{
	struct blk *b = container_of(req, struct blk, uvw);
	uv_stream_t *st = req->handle;
	struct uconn *c = st->data;
	blk_put(b);
	if (status < 0) {
		u_close(st);
		return;
	}
	if (c->paused && !uv_is_closing((uv_handle_t *)st) && uv_stream_get_write_queue_size(st) <= UV_LOW) {
		c->paused = false;
		if (uv_read_start(st, u_alloc, u_read) < 0)
			u_close(st);
	}
}

static void u_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	struct blk *b = buf->base != NULL ? container_of(buf->base, struct blk, data) : NULL;
	if (nread > 0) {
		/* What the socket takes now goes out without a request
		 * (uv_try_write, as the weft server's try_writev); only a
		 * remainder is queued with uv_write and keeps the block. */
		uv_buf_t w = uv_buf_init(buf->base, (unsigned)nread);
		int n = uv_try_write(st, &w, 1);
		if (n == nread) {
			blk_put(b);
			return;
		}
		if (n > 0)
			w = uv_buf_init(buf->base + n, (unsigned)(nread - n));
		else if (n != UV_EAGAIN) {
			blk_put(b);
			u_close(st);
			return;
		}
		if (uv_write(&b->uvw, st, &w, 1, u_written) < 0) {
			blk_put(b);
			u_close(st);
			return;
		}
		if (uv_stream_get_write_queue_size(st) >= UV_HIGH) {
			((struct uconn *)st->data)->paused = true;
			uv_read_stop(st);
		}
		return;
	}
	if (b != NULL)
		blk_put(b);
	if (nread < 0)
		u_close(st); /* UV_EOF or an error */
}

static void u_on_conn(uv_stream_t *server, int status)
{
	if (status < 0) {
		warn("libuv: connection: %s", uv_strerror(status));
		return;
	}
	struct uconn *c = xcalloc(1, sizeof *c);
	uvcheck(uv_tcp_init(&ul, &c->tcp), "uv_tcp_init");
	c->tcp.data = c;
	if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
		uv_close((uv_handle_t *)&c->tcp, u_closed);
		return;
	}
	uv_tcp_nodelay(&c->tcp, 1);
	if (uv_read_start((uv_stream_t *)&c->tcp, u_alloc, u_read) < 0)
		u_close((uv_stream_t *)&c->tcp);
}

__attribute__((noreturn))
static void libuv_serve(int port, int report_fd)
{
	static uv_tcp_t server;
	struct sockaddr_in sin;
	struct sockaddr_storage ss;
	int len = sizeof ss;
	uvcheck(uv_loop_init(&ul), "uv_loop_init");
	uvcheck(uv_tcp_init(&ul, &server), "uv_tcp_init");
	uvcheck(uv_ip4_addr("127.0.0.1", port, &sin), "uv_ip4_addr");
	uvcheck(uv_tcp_bind(&server, (const struct sockaddr *)&sin, 0), "uv_tcp_bind");
	uvcheck(uv_listen((uv_stream_t *)&server, SOMAXCONN, u_on_conn), "uv_listen");
	uvcheck(uv_tcp_getsockname(&server, (struct sockaddr *)&ss, &len), "uv_tcp_getsockname");
	report_port(S_UV, report_fd, ntohs(((struct sockaddr_in *)&ss)->sin_port));
	for (;;)
		uv_run(&ul, UV_RUN_DEFAULT);
}

__attribute__((noreturn))
static void serve(int srv, int port, int report_fd)
{
	switch (srv) {
	case S_RAW: raw_serve(port, report_fd);
	case S_WEFT:
	case S_WREADV:
	case S_WPDU: weft_serve(srv, port, report_fd);
	case S_EVENT: libevent_serve(port, report_fd);
	default: libuv_serve(port, report_fd);
	}
}

/* ---- server processes, watchdog, clean-up (parent) ------------------------ */

static pid_t parent_pid;
static pid_t children[NSRV];
static int ports[NSRV];

/* Async-signal-safe: kill every server and reap it. */
static void kill_children(int signum)
{
	for (int i = 0; i < NSRV; i++)
		if (children[i] > 0)
			kill(children[i], signum);
	for (int i = 0; i < NSRV; i++)
		if (children[i] > 0) {
			while (waitpid(children[i], NULL, 0) < 0 && errno == EINTR)
				;
			children[i] = 0;
		}
}

static void at_exit(void)
{
	if (getpid() == parent_pid)
		kill_children(SIGKILL);
}

static void on_fatal_signal(int signum)
{
	if (signum == SIGALRM)
		wd_report();
	kill_children(SIGKILL);
	_exit(signum == SIGALRM ? 3 : 128 + signum);
}

static void start_server(int srv)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		die("pipe2: %s", strerror(errno));
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		memset(children, 0, sizeof children);
		close(p[0]);
		signal(SIGALRM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent_pid)
			_exit(1);
		serve(srv, 0, p[1]);
	}
	children[srv] = pid;
	close(p[1]);
	int32_t port = 0;
	wd_arm(srv, -1);
	ssize_t n;
	do
		n = read(p[0], &port, sizeof port);
	while (n < 0 && errno == EINTR);
	wd_disarm();
	close(p[0]);
	if (n != (ssize_t)sizeof port || port <= 0)
		die("the %s server did not start", srv_names[srv]);
	ports[srv] = port;
}

static void stop_servers(void)
{
	for (int i = 0; i < NSRV; i++) {
		if (children[i] <= 0)
			continue;
		int status;
		/* Still alive?  A crash would show here. */
		if (waitpid(children[i], &status, WNOHANG) == children[i]) {
			warn("the %s server exited early (status 0x%x)", srv_names[i], (unsigned)status);
			children[i] = 0;
			continue;
		}
		kill(children[i], SIGTERM);
		while (waitpid(children[i], &status, 0) < 0 && errno == EINTR)
			;
		children[i] = 0;
	}
}

/* ---- the client ----------------------------------------------------------- */

static int client_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket: %s", strerror(errno));
	set_nodelay(fd);
	struct sockaddr_in sin = loopback(port);
	if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0)
		die("connect to 127.0.0.1:%d: %s", port, strerror(errno));
	return fd;
}

static const char *cur_srv = "?";

static void client_send(int fd, const void *buf, size_t len)
{
	if (send_all(fd, buf, len) < 0)
		die("%s: send: %s", cur_srv, strerror(errno));
}

/* read(2): the bytes read, or 0 to try again (EINTR, EAGAIN); a closed
 * connection or an error ends the program. */
static ssize_t client_read(int fd, void *buf, size_t len)
{
	ssize_t n = read(fd, buf, len);
	if (n == 0)
		die("%s: the server closed a connection", cur_srv);
	if (n < 0) {
		if (errno == EINTR || errno == EAGAIN)
			return 0;
		die("%s: read: %s", cur_srv, strerror(errno));
	}
	return n;
}

static void read_full(int fd, void *buf, size_t len)
{
	size_t got = 0;
	while (got < len)
		got += (size_t)client_read(fd, (char *)buf + got, len - got);
}

/* poll(2) until one of the connections is ready: how many are, or 0 after
 * EINTR. */
static int client_poll(struct pollfd *pfd, int nconn)
{
	int k = poll(pfd, (nfds_t)nconn, -1);
	if (k < 0) {
		if (errno == EINTR)
			return 0;
		die("poll: %s", strerror(errno));
	}
	return k;
}

/* A ping: prefix, connection number, sequence number, filler. */
static void ping_init(unsigned char *m, int conn)
{
	put_be32(m, (uint32_t)opt.msg);
	for (int i = 0; i < opt.msg; i++)
		m[HDR + i] = (unsigned char)('a' + (conn + i) % 26);
	if (opt.msg >= 12)
		memcpy(m + HDR + 8, &conn, 4);
}

static void ping_seq(unsigned char *m, uint64_t seq)
{
	memcpy(m + HDR, &seq, opt.msg < 8 ? (size_t)opt.msg : 8);
}

/* Send the ping m of len bytes, read the reply into r: true if it is the
 * same. */
static bool ping_pong(int fd, const unsigned char *m, unsigned char *r, size_t len)
{
	client_send(fd, m, len);
	read_full(fd, r, len);
	return memcmp(m, r, len) == 0;
}

/* One untimed round trip per connection: the server has accepted every
 * connection and is reading before the clock starts. */
static void handshake(const int *fds, int n)
{
	size_t len = HDR + (size_t)opt.msg;
	unsigned char *m = xmalloc(len), *r = xmalloc(len);
	for (int i = 0; i < n; i++) {
		ping_init(m, i);
		ping_seq(m, 0);
		if (!ping_pong(fds[i], m, r, len))
			die("%s: wrong echo of the first ping", cur_srv);
	}
	free(m);
	free(r);
}

/* Ping-pong over one connection: blocking write, blocking read. */
static __attribute__((noinline)) double pp_one(int fd, long n)
{
	size_t len = HDR + (size_t)opt.msg;
	unsigned char *m = xmalloc(len), *r = xmalloc(len);
	ping_init(m, 0);
	double t0 = now_mono();
	for (long i = 1; i <= n; i++) {
		ping_seq(m, (uint64_t)i);
		if (!ping_pong(fd, m, r, len))
			die("%s: wrong echo of ping %ld", cur_srv, i);
	}
	double t1 = now_mono();
	free(m);
	free(r);
	return (double)n / (t1 - t0);
}

/* Ping-pong over n connections, one ping in flight on each; poll(2). */
static __attribute__((noinline)) double pp_many(const int *fds, int nconn, long n)
{
	size_t len = HDR + (size_t)opt.msg;
	struct pollfd *pfd = xcalloc((size_t)nconn, sizeof *pfd);
	unsigned char *sbuf = xmalloc(len * (size_t)nconn), *rbuf = xmalloc(len * (size_t)nconn);
	size_t *got = xcalloc((size_t)nconn, sizeof *got);
	uint64_t *seq = xcalloc((size_t)nconn, sizeof *seq);
	long sent = 0, done = 0;
	for (int i = 0; i < nconn; i++) {
		ping_init(sbuf + len * (size_t)i, i);
		pfd[i].fd = -1;
		pfd[i].events = POLLIN;
	}
	double t0 = now_mono();
	for (int i = 0; i < nconn && sent < n; i++) {
		unsigned char *m = sbuf + len * (size_t)i;
		ping_seq(m, ++seq[i]);
		client_send(fds[i], m, len);
		sent++;
		pfd[i].fd = fds[i];
	}
	while (done < n) {
		int k = client_poll(pfd, nconn);
		for (int i = 0; i < nconn && k > 0; i++) {
			if (pfd[i].revents == 0)
				continue;
			k--;
			unsigned char *m = sbuf + len * (size_t)i, *r = rbuf + len * (size_t)i;
			got[i] += (size_t)client_read(fds[i], r + got[i], len - got[i]);
			if (got[i] < len)
				continue;
			if (memcmp(m, r, len) != 0)
				die("%s: wrong echo on connection %d", cur_srv, i);
			got[i] = 0;
			done++;
			if (sent < n) {
				ping_seq(m, ++seq[i]);
				client_send(fds[i], m, len);
				sent++;
			} else {
				pfd[i].fd = -1;
			}
		}
	}
	double t1 = now_mono();
	free(pfd);
	free(sbuf);
	free(rbuf);
	free(got);
	free(seq);
	return (double)n / (t1 - t0);
}

/* Bulk: stream 64 KiB frames and read the echo at the same time. */
#define BULK_SBUF (4 * BULK_FRAME) /* four identical frames, written from any offset */
#define BULK_RBUF (256 << 10)

static unsigned char bulk_frame[BULK_SBUF];

static void bulk_init(void)
{
	for (int f = 0; f < 4; f++) {
		unsigned char *p = bulk_frame + f * BULK_FRAME;
		put_be32(p, BULK_FRAME - HDR);
		for (int i = HDR; i < BULK_FRAME; i++)
			p[i] = (unsigned char)(i * 7 + 1);
	}
}

static __attribute__((noinline)) double bulk(const int *fds, int nconn, uint64_t per_conn)
{
	struct pollfd *pfd = xcalloc((size_t)nconn, sizeof *pfd);
	uint64_t *sent = xcalloc((size_t)nconn, sizeof *sent), *got = xcalloc((size_t)nconn, sizeof *got);
	unsigned char *rbuf = xmalloc(BULK_RBUF);
	for (int i = 0; i < nconn; i++) {
		int fl = fcntl(fds[i], F_GETFL);
		if (fl < 0 || fcntl(fds[i], F_SETFL, fl | O_NONBLOCK) < 0)
			die("fcntl: %s", strerror(errno));
	}
	int active = nconn;
	double t0 = now_mono();
	while (active > 0) {
		for (int i = 0; i < nconn; i++) {
			short ev = (short)((got[i] < per_conn ? POLLIN : 0) | (sent[i] < per_conn ? POLLOUT : 0));
			pfd[i].fd = ev != 0 ? fds[i] : -1;
			pfd[i].events = ev;
		}
		int k = client_poll(pfd, nconn);
		for (int i = 0; i < nconn && k > 0; i++) {
			short re = pfd[i].revents;
			if (re == 0)
				continue;
			k--;
			if ((re & POLLOUT) && sent[i] < per_conn) {
				size_t off = (size_t)(sent[i] % BULK_SBUF);
				size_t len = BULK_SBUF - off;
				if (len > per_conn - sent[i])
					len = (size_t)(per_conn - sent[i]);
				ssize_t n = send(fds[i], bulk_frame + off, len, MSG_NOSIGNAL);
				if (n > 0)
					sent[i] += (uint64_t)n;
				else if (n < 0 && errno != EAGAIN && errno != EINTR)
					die("%s: send: %s", cur_srv, strerror(errno));
			}
			if ((re & (POLLIN | POLLERR | POLLHUP)) && got[i] < per_conn) {
				ssize_t n = client_read(fds[i], rbuf, BULK_RBUF);
				if (n == 0)
					continue;
				/* Spot check: the first bytes of every read, the last one. */
				size_t off = (size_t)(got[i] % BULK_FRAME);
				for (ssize_t j = 0; j < n; j = j < 15 ? j + 1 : n - 1) {
					if (rbuf[j] != bulk_frame[(off + (size_t)j) % BULK_FRAME])
						die("%s: wrong bulk echo on connection %d at byte %" PRIu64, cur_srv, i,
						    got[i] + (uint64_t)j);
					if (j == n - 1)
						break;
				}
				got[i] += (uint64_t)n;
				if (got[i] > per_conn)
					die("%s: the server echoed more than it was sent", cur_srv);
				if (got[i] == per_conn)
					active--;
			}
		}
	}
	double t1 = now_mono();
	free(pfd);
	free(sent);
	free(got);
	free(rbuf);
	return (double)per_conn * nconn / (1 << 20) / (t1 - t0);
}

static int row_conns(int row)
{
	return (row == R_PPN || row == R_BULKN) ? opt.conns : 1;
}

/* Bytes per connection of a bulk row: whole frames, at least one. */
static uint64_t bulk_per_conn(int row)
{
	uint64_t frames = (uint64_t)opt.bulk_mib * (1 << 20) / BULK_FRAME / (uint64_t)row_conns(row);
	return (frames > 0 ? frames : 1) * BULK_FRAME;
}

/* Seconds process pid has spent on a CPU (/proc/PID/schedstat, ns
 * resolution); -1 if unknown.  On a shared machine the wall clock also
 * counts other programs' turns on the pinned CPU; on-CPU time does not. */
static double proc_cpu(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
	DIR *d = opendir(path); /* every thread (the raw server has one per connection) */
	if (d == NULL)
		return -1;
	unsigned long long total = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		char p2[320];
		snprintf(p2, sizeof p2, "/proc/%d/task/%s/schedstat", (int)pid, e->d_name);
		FILE *f = fopen(p2, "r");
		unsigned long long ns = 0;
		if (f != NULL && fscanf(f, "%llu", &ns) == 1)
			total += ns;
		if (f != NULL)
			fclose(f);
	}
	closedir(d);
	return (double)total / 1e9;
}

/* The last round's work (round trips, or MiB one way) per on-CPU second of
 * client and server together (0 if unknown or the server is external). */
static double last_cpu_rate;

/* One round: connect, handshake, the timed part, close. */
static double run_round(int row, int srv, int port)
{
	int nconn = row_conns(row);
	int *fds = xcalloc((size_t)nconn, sizeof *fds);
	wd_arm(srv, row);
	for (int i = 0; i < nconn; i++)
		fds[i] = client_connect(port);
	handshake(fds, nconn);
	pid_t spid = opt.client_port > 0 ? 0 : children[srv];
	double c0 = spid > 0 ? proc_cpu(spid) + proc_cpu(getpid()) : -1;
	double t0 = now_mono(), rate;
	switch (row) {
	case R_PP1: rate = pp_one(fds[0], opt.pp1_rt); break;
	case R_PPN: rate = pp_many(fds, nconn, opt.ppn_rt); break;
	default: rate = bulk(fds, nconn, bulk_per_conn(row)); break;
	}
	double t1 = now_mono();
	double c1 = spid > 0 ? proc_cpu(spid) + proc_cpu(getpid()) : -1;
	double work = row == R_PP1 ? (double)opt.pp1_rt : row == R_PPN ? (double)opt.ppn_rt
		: (double)bulk_per_conn(row) * nconn / (1 << 20);
	last_cpu_rate = c0 >= 0 && c1 > c0 ? work / (c1 - c0) : 0;
	wd_disarm();
	for (int i = 0; i < nconn; i++)
		close(fds[i]);
	free(fds);
	if (bench.verbose)
		printf("  %-8s %-5s %9.3f ms  %12.1f %s\n", srv_names[srv], row_names[row], (t1 - t0) * 1e3,
		       rate, row == R_PP1 || row == R_PPN ? "rt/s" : "MiB/s");
	return rate;
}

/* ---- table ---------------------------------------------------------------- */

static double samples[NROWS][NSRV][MAX_ROUNDS + 1];
static double cpu_samples[NROWS][NSRV][MAX_ROUNDS + 1]; /* per on-CPU second */

static void row_title(int row, char *buf, size_t len)
{
	if (row == R_PP1 || row == R_PPN)
		snprintf(buf, len, "ping-pong %d B, %d conn%s (rt/s)", opt.msg, row_conns(row),
		         row_conns(row) > 1 ? "s" : "");
	else
		snprintf(buf, len, "bulk 64 KiB frames, %d conn%s (MiB/s)", row_conns(row),
		         row_conns(row) > 1 ? "s" : "");
}

static void fmt_value(char *buf, size_t len, int row, double v)
{
	if (row == R_BULK1 || row == R_BULKN)
		snprintf(buf, len, "%.0f", v);
	else
		fmt_rate(buf, len, v);
}

/* The columns: raw, weft, libevent, libuv, weft/raw, weft/libevent,
 * weft/libuv and, each if selected, weft-readv and weft-pdu. */
enum { NCOLS = 9 };

static void print_table(void)
{
	static const int vs[3] = { S_RAW, S_EVENT, S_UV };
	int widths[NCOLS] = { 9, 9, 9, 9, 8, 13, 10 };
	const char *heads[NCOLS] = { "raw", "weft", "libevent", "libuv", "weft/raw", "weft/libevent",
	                             "weft/libuv" };
	int ncols = 7, extra[2], nextra = 0;
	for (int s = S_WREADV; s <= S_WPDU; s++)
		if (opt.srv[s]) {
			extra[nextra++] = s;
			widths[ncols] = 10;
			heads[ncols++] = srv_names[s];
		}
	table_head(38, "row (median)", ncols, widths, heads);
	for (int row = 0; row < NROWS; row++) {
		if (!opt.rows[row])
			continue;
		char title[80], cell[NSRV][32], ratio[3][32];
		double med[NSRV];
		row_title(row, title, sizeof title);
		for (int s = 0; s < NSRV; s++) {
			med[s] = opt.srv[s] ? median(samples[row][s], bench.rounds) : 0.0;
			if (opt.srv[s])
				fmt_value(cell[s], sizeof cell[s], row, med[s]);
			else
				snprintf(cell[s], sizeof cell[s], "-");
		}
		for (int k = 0; k < 3; k++)
			fmt_ratio(ratio[k], sizeof ratio[k], opt.srv[S_WEFT] && opt.srv[vs[k]], med[S_WEFT],
			          med[vs[k]]);
		const char *cells[NCOLS] = { cell[S_RAW], cell[S_WEFT], cell[S_EVENT], cell[S_UV],
		                             ratio[0], ratio[1], ratio[2] };
		for (int k = 0; k < nextra; k++)
			cells[7 + k] = cell[extra[k]];
		table_row(38, title, ncols, widths, cells);
		if (opt.client_port <= 0) {
			/* The same work per second both processes spent on the
			 * CPU: what the wall clock gives on a quiet one. */
			for (int s = 0; s < NSRV; s++) {
				med[s] = opt.srv[s] ? median(cpu_samples[row][s], bench.rounds) : 0.0;
				if (opt.srv[s] && med[s] > 0)
					fmt_value(cell[s], sizeof cell[s], row, med[s]);
				else
					snprintf(cell[s], sizeof cell[s], "-");
			}
			for (int k = 0; k < 3; k++)
				fmt_ratio(ratio[k], sizeof ratio[k], med[S_WEFT] > 0 && med[vs[k]] > 0,
				          med[S_WEFT], med[vs[k]]);
			table_row(38, "  the same per on-CPU second", ncols, widths, cells);
		}
	}
	printf("\nrt/s = round trips per second (k = 10^3); MiB/s = bytes sent one way per second;\n"
	       "ratios > 1 mean weft is faster.  \"per on-CPU second\": round trips divided by\n"
	       "the time client and server spent on a CPU (/proc/PID/schedstat), which\n"
	       "other programs on a shared machine do not inflate.\n");
}

/* -C: one column, the external server. */
static void print_table_client(void)
{
	static const int widths[1] = { 9 };
	static const char *const heads[1] = { "server" };
	table_head(38, "row (median)", 1, widths, heads);
	for (int row = 0; row < NROWS; row++) {
		if (!opt.rows[row])
			continue;
		char title[80], cell[32];
		const char *cells[1] = { cell };
		row_title(row, title, sizeof title);
		fmt_value(cell, sizeof cell, row, median(samples[row][0], bench.rounds));
		table_row(38, title, 1, widths, cells);
	}
}

/* ---- driver ------------------------------------------------------------------ */

static void describe_row(int row)
{
	char title[80];
	row_title(row, title, sizeof title);
	if (row == R_PP1 || row == R_PPN)
		printf("# %s: %ld round trips per round\n", title,
		       row == R_PP1 ? opt.pp1_rt : opt.ppn_rt);
	else
		printf("# %s: %.1f MiB per round (%" PRIu64 " frames per connection)\n", title,
		       (double)bulk_per_conn(row) * row_conns(row) / (1 << 20),
		       bulk_per_conn(row) / BULK_FRAME);
	fflush(stdout);
}

/* One round of row *(int *)arg against server srv (-C: the external one,
 * srv 0). */
static void row_round(int srv, int round, void *arg)
{
	int row = *(int *)arg;
	cur_srv = opt.client_port > 0 ? "server" : srv_names[srv];
	double v = run_round(row, srv, opt.client_port > 0 ? opt.client_port : ports[srv]);
	if (round >= 0) {
		samples[row][srv][round] = v;
		cpu_samples[row][srv][round] = last_cpu_rate;
	}
}

static void run_rows(void)
{
	static const bool external[1] = { true };
	for (int row = 0; row < NROWS; row++) {
		if (!opt.rows[row])
			continue;
		describe_row(row);
		if (opt.client_port > 0)
			run_interleaved(1, external, row_round, &row);
		else
			run_interleaved(NSRV, opt.srv, row_round, &row);
	}
}

static const char *const srv_aliases[] = { "uv", "libuv", "event", "libevent", "weftreadv", "weft-readv",
                                           "weftpdu", "weft-pdu", NULL };

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: bench-echo [-q] [-v] [-o] [-P] [-W s] [-r rounds] [-n rt] [-N rt] [-c conns] [-m bytes]\n"
	        "                  [-b MiB] [-s servers] [-t rows]\n"
	        "       bench-echo -S server [-p port] [-P]      (one server, in the foreground)\n"
	        "       bench-echo -C port [-t rows] [options]   (the client, against 127.0.0.1:port)\n"
	        "  -r N   measured rounds per server, after one warm-up round (default 5)\n"
	        "  -n N   ping-pong round trips per round, 1 connection (default 30000)\n"
	        "  -N N   ping-pong round trips per round, all connections together (default 60000)\n"
	        "  -c N   connections of the ppN and bulkN rows (default 100)\n"
	        "  -m N   ping payload bytes, 1..%d (default 64)\n"
	        "  -b N   bulk MiB sent per round, one way (default 256)\n"
	        "  -s L   servers, comma-separated: raw,weft,libevent,libuv,weft-readv,weft-pdu\n"
	        "         (default: the first four; weft-readv = weft with one long-lived readv\n"
	        "         that parses the frames and echoes whole frames, weft-pdu = weft with one\n"
	        "         readv request per frame; each adds a column)\n"
	        "  -t L   rows, comma-separated: pp1,ppN,bulk1,bulkN (default all)\n"
	        "  -o     rotate the order of the servers by one each round\n"
	        "  -P     pin the client and the servers to CPU 0 (or run under taskset -c 0)\n"
	        "  -q     quick run (smoke test): -r 1 -n 1000 -N 5000 -b 8 (explicit options win)\n"
	        "  -v     print every round\n"
	        "  -W S   watchdog: a round that takes longer than S seconds ends the program\n"
	        "         with status 3, servers killed (default 120)\n"
	        "  -S S   run server S alone until SIGINT/SIGTERM; -p PORT (default: any free port)\n"
	        "  -C P   run the client against a server started with -S on port P\n",
	        MAX_PAYLOAD);
}

static void pin_cpu0(void)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(0, &set);
	if (sched_setaffinity(0, sizeof set, &set) < 0)
		die("sched_setaffinity(CPU 0): %s", strerror(errno));
}

static void describe_affinity(char *buf, size_t len)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof set, &set) < 0) {
		snprintf(buf, len, "?");
		return;
	}
	int n = CPU_COUNT(&set), first = -1;
	for (int i = 0; i < CPU_SETSIZE && first < 0; i++)
		if (CPU_ISSET(i, &set))
			first = i;
	if (n == 1)
		snprintf(buf, len, "pinned to CPU %d", first);
	else
		snprintf(buf, len, "%d CPUs, not pinned (use -P or taskset -c 0)", n);
}

static void on_server_signal(int signum)
{
	(void)signum;
	_exit(0);
}

int main(int argc, char **argv)
{
	bench_init("bench-echo", 2);
	int c;
	while ((c = bench_getopt(argc, argv, "r:n:N:c:m:b:s:t:oPqvW:S:p:C:h", usage)) != -1) {
		switch (c) {
		case 'n': opt.pp1_rt = parse_num(optarg, 'n', 1, 1L << 40); break;
		case 'N': opt.ppn_rt = parse_num(optarg, 'N', 1, 1L << 40); break;
		case 'c': opt.conns = (int)parse_num(optarg, 'c', 1, MAX_CONNS); break;
		case 'm': opt.msg = (int)parse_num(optarg, 'm', 1, MAX_PAYLOAD); break;
		case 'b': opt.bulk_mib = parse_num(optarg, 'b', 1, 1L << 20); break;
		case 's':
			if (!parse_list(optarg, srv_names, NSRV, srv_aliases, opt.srv))
				fail(2, "-s: expected raw, weft, libevent, libuv, weft-readv, weft-pdu, got '%s'",
				     optarg);
			break;
		case 't':
			if (!parse_list(optarg, row_names, NROWS, NULL, opt.rows))
				fail(2, "-t: expected pp1, ppN, bulk1, bulkN, got '%s'", optarg);
			break;
		case 'P': opt.pin = true; break;
		case 'W': opt.watchdog_s = (unsigned)parse_num(optarg, 'W', 1, 86400); break;
		case 'S': {
			bool sel[NSRV];
			if (!parse_list(optarg, srv_names, NSRV, srv_aliases, sel))
				fail(2, "-S: expected raw, weft, libevent, libuv, weft-readv or weft-pdu, got '%s'",
				     optarg);
			for (int i = NSRV - 1; i >= 0; i--)
				if (sel[i])
					opt.server_only = i;
			break;
		}
		case 'p': opt.port = (int)parse_num(optarg, 'p', 0, 65535); break;
		case 'C': opt.client_port = (int)parse_num(optarg, 'C', 1, 65535); break;
		}
	}
	if (bench.quick) { /* explicit options win */
		if (!option_given('n')) opt.pp1_rt = 1000;
		if (!option_given('N')) opt.ppn_rt = 5000;
		if (!option_given('b')) opt.bulk_mib = 8;
	}
	bool any = false;
	for (int s = 0; s < NSRV; s++)
		any |= opt.srv[s];
	if (!any)
		fail(2, "-s selects no server");
	wd_init(opt.watchdog_s, srv_names, row_names, "lost message? hung server?");

	signal(SIGPIPE, SIG_IGN);
	if (opt.pin)
		pin_cpu0();

	if (opt.server_only >= 0) {
		signal(SIGINT, on_server_signal);
		signal(SIGTERM, on_server_signal);
		serve(opt.server_only, opt.port, -1);
	}

	parent_pid = getpid();
	atexit(at_exit);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_fatal_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	bulk_init();

	struct utsname un;
	char aff[96];
	uname(&un);
	describe_affinity(aff, sizeof aff);
	printf("# bench-echo: TCP echo on 127.0.0.1, TCP_NODELAY; raw vs weft vs libevent %s vs libuv %s\n",
	       event_get_version(), uv_version_string());
	printf("# %s %s; %s; %d measured rounds (median) after 1 warm-up, interleaved%s\n", un.sysname,
	       un.release, aff, bench.rounds, bench.rotate ? ", order rotated" : "");
	fflush(stdout);

	if (opt.client_port > 0) {
		run_rows();
		print_table_client();
		return 0;
	}

	for (int s = 0; s < NSRV; s++)
		if (opt.srv[s])
			start_server(s);
	run_rows();
	stop_servers();
	print_table();
	return 0;
}
