/* weft-kv: a key-value store spoken over Assuan — the example server.
 *
 *   weft-kv --socket PATH [--no-fdpassing]
 *   weft-kv --listen tcp:127.0.0.1:0 --tls-cert cert.pem --tls-key key.pem
 *           (Assuan over TLS: the server code below does not know; prints
 *           "listening on <address>")
 *
 * Commands (HELP lists them):
 *   PUT key          the value is asked for with INQUIRE VALUE
 *   GET key          the value as D lines
 *   DEL key
 *   KEYS             one "S KEY <name>" status line per key
 *   CAT path         stream a file as D lines (waits when the client reads slowly)
 *   STORE key        read the value from the descriptor given with INPUT FD
 *   SLEEP ms         answer OK after ms milliseconds (other clients go on)
 *   INPUT, OUTPUT    select descriptors the client passed
 *
 * Many clients are served at once on one thread; no handler blocks.
 * SIGTERM and SIGINT stop the server cleanly.  Point gpg-connect-agent at
 * it:  gpg-connect-agent -S PATH 'PUT k' /bye   (with /definq VALUE ...). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <weft/weft.h>
#include <weft/assuan.h>
#ifdef HAVE_TLS
#include <weft/tls.h>
#endif

#define MAX_KEYS 4096
#define CHUNK 65536

struct entry {
	char *key;
	unsigned char *val;
	size_t len;
};

static struct entry store[MAX_KEYS];
static size_t nstore;

static struct entry *find(const char *key)
{
	for (size_t i = 0; i < nstore; i++)
		if (strcmp(store[i].key, key) == 0)
			return &store[i];
	return NULL;
}

static weft_assuan_err err(weft_assuan_conn *c, gpg_err_code_t code, const char *text)
{
	return weft_assuan_set_error(c, weft_assuan_err_make(weft_assuan_conn_server(c), code), text);
}

static int set_value(const char *key, const unsigned char *val, size_t len)
{
	struct entry *e = find(key);
	if (e == NULL) {
		if (nstore == MAX_KEYS)
			return -ENOSPC;
		e = &store[nstore];
		if ((e->key = strdup(key)) == NULL)
			return -ENOMEM;
		e->val = NULL;
		nstore++;
	}
	unsigned char *v = malloc(len ? len : 1);
	if (v == NULL)
		return -ENOMEM;
	memcpy(v, val, len);
	free(e->val);
	e->val = v;
	e->len = len;
	return 0;
}

/* ---- PUT: the value comes by INQUIRE ---------------------------------------- */

static weft_assuan_err put_value(weft_assuan_conn *c, weft_assuan_err e, unsigned char *buf, size_t len, void *data)
{
	char *key = data;
	if (e == 0 && set_value(key, buf, len) < 0)
		e = err(c, GPG_ERR_ENOMEM, "store full");
	free(key);
	return e;
}

/* The client left before answering the INQUIRE: put_value never runs. */
static void put_cancel(weft_assuan_conn *c, void *data)
{
	(void)c;
	free(data);
}

static weft_assuan_err cmd_put(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	if (*args == '\0')
		return err(c, GPG_ERR_MISSING_VALUE, "key expected");
	char *key = strdup(args);
	if (key == NULL || weft_assuan_inquire(c, "VALUE", 0, put_value, key) < 0) {
		free(key);
		return err(c, GPG_ERR_ENOMEM, NULL);
	}
	weft_assuan_on_cancel(c, put_cancel, key);
	return WEFT_ASSUAN_PENDING;
}

static weft_assuan_err cmd_get(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	struct entry *e = find(args);
	if (e == NULL)
		return err(c, GPG_ERR_NOT_FOUND, "no such key");
	if (weft_assuan_send_data(c, e->val, e->len) < 0)
		return err(c, GPG_ERR_ENOMEM, NULL);
	return 0;
}

static weft_assuan_err cmd_del(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	struct entry *e = find(args);
	if (e == NULL)
		return err(c, GPG_ERR_NOT_FOUND, "no such key");
	free(e->key);
	free(e->val);
	*e = store[--nstore];
	return 0;
}

static weft_assuan_err cmd_keys(weft_assuan_conn *c, char *args, void *data)
{
	(void)args;
	(void)data;
	for (size_t i = 0; i < nstore; i++)
		weft_assuan_write_status(c, "KEY", store[i].key);
	return 0;
}

/* ---- CAT and STORE: file I/O in chunks from the loop ------------------------ */

struct xfer {
	weft_assuan_conn *c;
	int fd;
	char *key;             /* STORE: where the value goes */
	unsigned char *buf;
	size_t len, cap;
	void (*fn)(struct xfer *x); /* one step */
	weft_defer *step; /* a regular file: the next step on the next pass */
	weft_io *io;      /* a pipe or socket: the next step when readable */
};

/* Run the next step when it can make progress, never blocking: at once
 * (next loop pass) for a regular file, when readable for a pipe. */
static void xfer_again(struct xfer *x)
{
	if (x->io != NULL)
		weft_io_start(x->io, WEFT_IO_READ);
	else
		weft_defer_schedule(x->step);
}

static void xfer_deferred(weft_defer *d, void *data)
{
	(void)d;
	struct xfer *x = data;
	x->fn(x);
}

static void xfer_readable(weft_io *io, unsigned revents, void *data)
{
	(void)revents;
	struct xfer *x = data;
	weft_io_stop(io);
	x->fn(x);
}

static void xfer_free(struct xfer *x)
{
	weft_defer_free(x->step);
	weft_io_free(x->io); /* before the fd closes */
	if (x->fd >= 0)
		close(x->fd);
	free(x->key);
	free(x->buf);
	free(x);
}

static void xfer_cancel(weft_assuan_conn *c, void *data)
{
	(void)c;
	xfer_free(data); /* the client went away */
}

static void xfer_finish(struct xfer *x, weft_assuan_err e)
{
	weft_assuan_conn *c = x->c;
	xfer_free(x);
	weft_assuan_process_done(c, e);
}

static void cat_room(weft_assuan_conn *c, void *data)
{
	(void)c;
	struct xfer *x = data;
	weft_defer_schedule(x->step); /* buf holds a chunk: no read needed */
}

/* One chunk per loop pass, so other clients are served in between.  A
 * chunk refused for lack of room waits in buf (x->len bytes): the file may
 * be a pipe, which cannot be read again. */
static void cat_step(struct xfer *x)
{
	if (x->len == 0) {
		ssize_t n = read(x->fd, x->buf, CHUNK);
		if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
			xfer_again(x); /* a FIFO with nothing yet */
			return;
		}
		if (n <= 0) {
			xfer_finish(x, n < 0 ? err(x->c, gpg_err_code_from_errno(errno), "read") : 0);
			return;
		}
		x->len = (size_t)n;
	}
	int r = weft_assuan_send_data(x->c, x->buf, x->len);
	if (r == -ENOBUFS) {
		weft_assuan_on_room(x->c, cat_room, x); /* again when there is room */
		return;
	}
	if (r < 0) {
		xfer_finish(x, err(x->c, GPG_ERR_ENOMEM, NULL));
		return;
	}
	x->len = 0;
	xfer_again(x);
}

static void store_step(struct xfer *x)
{
	if (x->cap - x->len < CHUNK) {
		unsigned char *b = realloc(x->buf, x->cap * 2);
		if (b == NULL) {
			xfer_finish(x, err(x->c, GPG_ERR_ENOMEM, NULL));
			return;
		}
		x->buf = b;
		x->cap *= 2;
	}
	ssize_t n = read(x->fd, x->buf + x->len, x->cap - x->len);
	if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
		xfer_again(x); /* a pipe not yet written: wait until it is */
		return;
	}
	if (n < 0) {
		xfer_finish(x, err(x->c, gpg_err_code_from_errno(errno), "read"));
		return;
	}
	if (n > 0) {
		x->len += (size_t)n;
		xfer_again(x);
		return;
	}
	weft_assuan_err e = set_value(x->key, x->buf, x->len) < 0 ? err(x->c, GPG_ERR_ENOMEM, "store full") : 0;
	xfer_finish(x, e);
}

static weft_assuan_err start_xfer(weft_assuan_conn *c, int fd, const char *key, void (*step)(struct xfer *x))
{
	struct xfer *x = calloc(1, sizeof(*x));
	if (x == NULL) {
		close(fd);
		return err(c, GPG_ERR_ENOMEM, NULL);
	}
	x->c = c;
	x->fd = fd;
	x->fn = step;
	x->cap = CHUNK * 2;
	x->buf = malloc(x->cap);
	x->key = key ? strdup(key) : NULL;
	weft_loop *loop = weft_stream_loop(weft_assuan_conn_stream(c));
	if (x->buf == NULL || (key && x->key == NULL) || weft_defer_new(loop, xfer_deferred, x, &x->step) < 0) {
		xfer_free(x);
		return err(c, GPG_ERR_ENOMEM, NULL);
	}
	/* Pipes and sockets are watched; a regular file cannot be (epoll
	 * refuses it) and is always readable. */
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	if (weft_io_new(loop, fd, xfer_readable, x, &x->io) == 0 && weft_io_start(x->io, WEFT_IO_READ) < 0) {
		weft_io_free(x->io);
		x->io = NULL;
	}
	weft_assuan_on_cancel(c, xfer_cancel, x);
	xfer_again(x);
	return WEFT_ASSUAN_PENDING;
}

static weft_assuan_err cmd_cat(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	int fd = open(args, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block the open */
	if (fd < 0)
		return err(c, gpg_err_code_from_errno(errno), args);
	return start_xfer(c, fd, NULL, cat_step);
}

static weft_assuan_err cmd_store(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	if (*args == '\0')
		return err(c, GPG_ERR_MISSING_VALUE, "key expected");
	int fd = weft_assuan_take_input_fd(c);
	if (fd < 0)
		return weft_assuan_err_make(weft_assuan_conn_server(c), GPG_ERR_ASS_NO_INPUT);
	return start_xfer(c, fd, args, store_step);
}

/* ---- SLEEP: an answer that comes later ---------------------------------------- */

struct nap {
	weft_assuan_conn *c;
	weft_timer *t;
};

static void nap_free(weft_assuan_conn *c, void *data)
{
	(void)c;
	struct nap *n = data;
	weft_timer_free(n->t);
	free(n);
}

static void nap_done(weft_timer *t, void *data)
{
	(void)t;
	struct nap *n = data;
	weft_assuan_conn *c = n->c;
	nap_free(c, n);
	weft_assuan_process_done(c, 0);
}

static weft_assuan_err cmd_sleep(weft_assuan_conn *c, char *args, void *data)
{
	(void)data;
	char *end;
	unsigned long ms = strtoul(args, &end, 10);
	if (*args == '\0' || *end != '\0')
		return err(c, GPG_ERR_ASS_PARAMETER, "milliseconds expected");
	struct nap *n = calloc(1, sizeof(*n));
	weft_loop *loop = weft_stream_loop(weft_assuan_conn_stream(c));
	if (n == NULL || weft_timer_new(loop, nap_done, n, &n->t) < 0) {
		free(n);
		return err(c, GPG_ERR_ENOMEM, NULL);
	}
	n->c = c;
	weft_timer_start(n->t, ms, 0);
	weft_assuan_on_cancel(c, nap_free, n);
	return WEFT_ASSUAN_PENDING;
}

/* ---- main ------------------------------------------------------------------------ */

#ifdef HAVE_TLS
/* Assuan over TLS: wrap each accepted connection, hand it to the server. */
static weft_tls_config *tls_cfg;

static void tls_accepted(weft_listener *l, weft_stream *stream, const weft_addr *peer, int e, void *data)
{
	(void)l;
	(void)peer;
	(void)e;
	weft_stream *t;
	if (stream != NULL && weft_tls_server_new(tls_cfg, stream, &t) == 0)
		weft_assuan_server_adopt(data, t, NULL);
}
#endif

static weft_listener *tcp_listener;
static weft_signal *sigs[2];

static void on_signal(weft_signal *sig, int signum, void *data)
{
	(void)sig;
	(void)signum;
	weft_assuan_server_free(data); /* connections close, the loop ends */
	weft_listener_free(tcp_listener);
	tcp_listener = NULL;
	for (int i = 0; i < 2; i++) {
		weft_signal_free(sigs[i]);
		sigs[i] = NULL;
	}
}

int main(int argc, char **argv)
{
	const char *path = NULL, *listen_addr = NULL, *cert = NULL, *key = NULL;
	bool fdpassing = true;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc)
			path = argv[++i];
		else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
			listen_addr = argv[++i];
		else if (strcmp(argv[i], "--tls-cert") == 0 && i + 1 < argc)
			cert = argv[++i];
		else if (strcmp(argv[i], "--tls-key") == 0 && i + 1 < argc)
			key = argv[++i];
		else if (strcmp(argv[i], "--no-fdpassing") == 0)
			fdpassing = false;
		else {
			fprintf(stderr, "usage: %s --socket PATH [--no-fdpassing]\n", argv[0]);
			return 2;
		}
	}
	if ((path == NULL) == (listen_addr == NULL) || (listen_addr && (!cert || !key))) {
		fprintf(stderr, "usage: %s --socket PATH [--no-fdpassing]\n"
				"       %s --listen ADDR --tls-cert FILE --tls-key FILE\n", argv[0], argv[0]);
		return 2;
	}
	weft_loop *loop;
	weft_assuan_server *srv;
	if (weft_loop_new(&loop) < 0 || weft_assuan_server_new(loop, &srv) < 0)
		return 1;
	weft_assuan_server_set_hello(srv, "weft-kv ready");
	weft_assuan_server_set_fdpassing(srv, fdpassing);
	weft_assuan_register(srv, "PUT", cmd_put, NULL, "PUT <key>\n\nStore a value; it is asked for with INQUIRE VALUE.");
	weft_assuan_register(srv, "GET", cmd_get, NULL, "GET <key>\n\nSend the value as D lines.");
	weft_assuan_register(srv, "DEL", cmd_del, NULL, "DEL <key>");
	weft_assuan_register(srv, "KEYS", cmd_keys, NULL, "KEYS\n\nOne S KEY line per key.");
	weft_assuan_register(srv, "CAT", cmd_cat, NULL, "CAT <path>\n\nStream a file as D lines.");
	weft_assuan_register(srv, "STORE", cmd_store, NULL, "STORE <key>\n\nRead the value from INPUT FD.");
	weft_assuan_register(srv, "SLEEP", cmd_sleep, NULL, "SLEEP <ms>\n\nAnswer after ms milliseconds.");
	weft_assuan_register(srv, "INPUT", NULL, NULL, NULL);
	weft_assuan_register(srv, "OUTPUT", NULL, NULL, NULL);
	int r;
	if (listen_addr != NULL) {
#ifdef HAVE_TLS
		weft_addr a;
		char text[WEFT_ADDR_STRLEN];
		if ((r = weft_addr_parse(listen_addr, &a)) < 0 ||
		    (r = weft_tls_config_new(WEFT_TLS_SERVER, &tls_cfg)) < 0 ||
		    (r = weft_tls_config_add_cert_file(tls_cfg, cert, key, NULL)) < 0 ||
		    (r = weft_listen(loop, &a, NULL, tls_accepted, srv, &tcp_listener)) < 0) {
			fprintf(stderr, "weft-kv: %s: %s\n", listen_addr, strerror(-r));
			return 1;
		}
		weft_listener_addr(tcp_listener, &a);
		weft_addr_format(&a, text, sizeof(text));
		printf("listening on %s\n", text);
		fflush(stdout);
#else
		fprintf(stderr, "weft-kv: built without TLS\n");
		return 2;
#endif
	} else {
		char addr[256];
		snprintf(addr, sizeof(addr), "unix:%s", path);
		r = weft_assuan_server_listen(srv, addr, NULL);
		if (r < 0) {
			fprintf(stderr, "weft-kv: listen on %s: %s\n", path, strerror(-r));
			return 1;
		}
	}
	static const int signums[2] = {SIGTERM, SIGINT};
	for (int i = 0; i < 2; i++) {
		if (weft_signal_new(loop, on_signal, srv, &sigs[i]) < 0 || weft_signal_start(sigs[i], signums[i]) < 0)
			return 1;
		weft_signal_set_ref(sigs[i], false); /* the server keeps the loop alive */
	}
	weft_loop_run(loop, WEFT_RUN_DEFAULT);
#ifdef HAVE_TLS
	weft_tls_config_unref(tls_cfg);
#endif
	for (size_t i = 0; i < nstore; i++) {
		free(store[i].key);
		free(store[i].val);
	}
	return weft_loop_free(loop) < 0;
}
