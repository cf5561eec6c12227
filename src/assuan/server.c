/* The Assuan server: commands, built-ins, INQUIRE, output queue, transports.
 *
 * Each connection is a pump around the engine (codec.c): bytes read go into
 * the input buffer, complete lines are dispatched one command at a time
 * (later lines wait in the buffer; when it fills, reading stops), answers
 * are appended to the output buffer, which is written when the pass ends —
 * one write for every answer of a pass — and, if the transport is full,
 * by a write request while the next answers gather in a second buffer. */
#include "assuan-private.h"
#include "list.h"
#include "loop-private.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Input: an idle connection reads into a small buffer inside the
 * connection (commands are short); a read that fills its buffer switches
 * to a big one (bulk INQUIRE data, pipelined commands), which is given back
 * once it is empty and the last read was short.  A line (at most 1002
 * bytes) always fits the big one. */
/* Output buffers larger than this are given back once written. */
#define DEFAULT_OUTPUT_LIMIT (256u * 1024)
#define DEFAULT_INQUIRE_LIMIT (1024u * 1024)
#define DEFAULT_FDS 5

enum cstate { C_IDLE, C_CMD, C_INQUIRE };

enum builtin { B_NONE, B_NOP, B_CANCEL, B_OPTION, B_BYE, B_AUTH, B_RESET, B_END, B_HELP, B_INPUT, B_OUTPUT };

struct cmd {
	uint64_t key; /* a name of up to 8 bytes as a word (name_key); else 0 */
	char *name;
	size_t len; /* of name */
	char *help;
	weft_assuan_handler fn;
	void *data;
	enum builtin builtin;
};

struct weft_assuan_server {
	weft_loop *loop;
	struct cmd *cmds;
	size_t ncmds, capcmds;
	char *hello;
	int err_source;
	weft_assuan_hooks hooks;
	void *hooks_data;
	weft_assuan_limits limits;
	bool fdpassing;
	bool freeing;
	weft_listener *listener;
	struct weft__list conns;
	size_t nconns; /* open ones */
	size_t nalive; /* not yet freed */
};

struct weft_assuan_conn {
	struct weft__list link;
	weft_assuan_server *srv;
	void *data;
	struct weft__apump io; /* the stream, its input lines and output */

	char *okay;
	char *err_text;
	weft_assuan_cancel_cb cancel_cb;
	void *cancel_data;
	weft_assuan_room_cb room_cb;
	void *room_data;

	weft_assuan_inquire_cb inq_cb;
	void *inq_data;
	struct weft__abuf inq;
	size_t inq_max;

	int *pfds; /* passed by the peer, oldest first */
	int *allowed;
	weft_defer kick;
	bool *done_flag;

	enum cstate state;
	enum builtin cur_builtin;
	weft_assuan_err err_no;
	weft_assuan_err inq_err;
	int input_fd, output_fd;
	unsigned cmd_seq; /* commands finished: tells a verdict it is stale */
	unsigned npfds, pfds_cap;
	unsigned nallowed;
	pid_t peer_pid;
	unsigned depth;
	bool force_close, bye, greeted, close_after_write, fd_receiver;
	bool closed;
	/* finish has more to do than answer OK: an okay line, an error text,
	 * a cancel callback or an inquiry was set, descriptors are open, a D
	 * line may be open, BYE, force_close, or the server has a post_cmd
	 * hook.  Set where those are set; recomputed by finish. */
	bool dirty;
};

static void conn_process(weft_assuan_conn *c);
static void conn_close(weft_assuan_conn *c);

static weft_assuan_err mkerr(const weft_assuan_server *srv, gpg_err_code_t code)
{
	return gpg_err_make((gpg_err_source_t)srv->err_source, code);
}

weft_assuan_err weft_assuan_err_make(const weft_assuan_server *srv, gpg_err_code_t code)
{
	return mkerr(srv, code);
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* ---- the command table ------------------------------------------------------ */

static const struct {
	const char *name;
	enum builtin b;
	bool always;
} builtins[] = {
	{"NOP", B_NOP, true}, {"CANCEL", B_CANCEL, true}, {"OPTION", B_OPTION, true},
	{"BYE", B_BYE, true}, {"AUTH", B_AUTH, true}, {"RESET", B_RESET, true},
	{"END", B_END, true}, {"HELP", B_HELP, true}, {"INPUT", B_INPUT, false},
	{"OUTPUT", B_OUTPUT, false},
};

/* Word tricks over 8 bytes read as a little-endian word. */
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)
/* The first n (1..8) bytes of w, the rest zero. */
static inline uint64_t low_bytes(uint64_t w, size_t n)
{
	return n >= 8 ? w : w & ((UINT64_C(1) << (n * 8)) - 1);
}

/* A name of up to 8 bytes as a word: its bytes, zero-padded (names hold
 * no NUL, so equal words mean equal names).  0 for a longer name. */
static uint64_t name_key(const char *name, size_t len)
{
	if (len == 0 || len > 8)
		return 0;
	unsigned char b[8] = {0};
	memcpy(b, name, len);
	uint64_t w = 0;
	for (int i = 7; i >= 0; i--)
		w = w << 8 | b[i];
	return w;
}

static bool name_eq_upper(const char *registered, const char *input)
{
	for (; *registered && *input; registered++, input++)
		if (*registered != toupper((unsigned char)*input))
			return false;
	return *registered == *input;
}

/* An exact match first, then one regardless of the input's case.  The
 * first byte and the length rule out most entries; names are short and
 * compared in line. */
static inline struct cmd *find_cmd(weft_assuan_server *srv, const char *name, size_t len)
{
	for (size_t i = 0; i < srv->ncmds; i++) {
		struct cmd *cmd = &srv->cmds[i];
		if (cmd->name[0] != name[0] || cmd->len != len)
			continue;
		size_t k = 1;
		while (k < len && cmd->name[k] == name[k])
			k++;
		if (k == len)
			return cmd;
	}
	for (size_t i = 0; i < srv->ncmds; i++)
		if (srv->cmds[i].len == len && name_eq_upper(srv->cmds[i].name, name))
			return &srv->cmds[i];
	return NULL;
}

static bool valid_name(const char *name)
{
	if (name == NULL || *name == '\0' || strlen(name) > 200)
		return false;
	for (const char *p = name; *p; p++)
		if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
			return false;
	return true;
}

int weft_assuan_register(weft_assuan_server *srv, const char *name, weft_assuan_handler handler,
		void *data, const char *help)
{
	if (srv == NULL || !valid_name(name))
		return -EINVAL;
	enum builtin b = B_NONE;
	if (handler == NULL) {
		for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++)
			if (strcasecmp(builtins[i].name, name) == 0)
				b = builtins[i].b;
		if (b == B_NONE)
			return -EINVAL;
	}
	char *n = strdup(name);
	char *h = help ? strdup(help) : NULL;
	if (n == NULL || (help && h == NULL)) {
		free(n);
		free(h);
		return -ENOMEM;
	}
	struct cmd *slot = NULL;
	for (size_t i = 0; i < srv->ncmds; i++)
		if (strcasecmp(srv->cmds[i].name, name) == 0)
			slot = &srv->cmds[i];
	if (slot != NULL) {
		free(n); /* the entry keeps its name (and so its case rule) */
		n = slot->name;
		free(slot->help);
	} else {
		if (srv->ncmds == srv->capcmds) {
			size_t cap = srv->capcmds ? srv->capcmds * 2 : 16;
			struct cmd *t = realloc(srv->cmds, cap * sizeof(*t));
			if (t == NULL) {
				free(n);
				free(h);
				return -ENOMEM;
			}
			srv->cmds = t;
			srv->capcmds = cap;
		}
		slot = &srv->cmds[srv->ncmds++];
	}
	*slot = (struct cmd){.key = name_key(n, strlen(n)), .name = n, .len = strlen(n), .help = h,
		.fn = handler, .data = data, .builtin = b};
	return 0;
}

/* ---- the server object ---------------------------------------------------------- */

int weft_assuan_server_new(weft_loop *loop, weft_assuan_server **ret_srv)
{
	if (loop == NULL || ret_srv == NULL)
		return -EINVAL;
	weft_assuan_server *srv = calloc(1, sizeof(*srv));
	if (srv == NULL)
		return -ENOMEM;
	srv->loop = loop;
	srv->err_source = GPG_ERR_SOURCE_USER_1;
	srv->fdpassing = true;
	weft__list_init(&srv->conns);
	weft_assuan_server_set_limits(srv, NULL);
	for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++) {
		if (!builtins[i].always)
			continue;
		int r = weft_assuan_register(srv, builtins[i].name, NULL, NULL, NULL);
		if (r < 0) {
			weft_assuan_server_free(srv);
			return r;
		}
	}
	*ret_srv = srv;
	return 0;
}

static void server_release(weft_assuan_server *srv)
{
	for (size_t i = 0; i < srv->ncmds; i++) {
		free(srv->cmds[i].name);
		free(srv->cmds[i].help);
	}
	free(srv->cmds);
	free(srv->hello);
	free(srv);
}

void weft_assuan_server_free(weft_assuan_server *srv)
{
	if (srv == NULL || srv->freeing)
		return;
	srv->freeing = true;
	weft_listener_free(srv->listener);
	srv->listener = NULL;
	srv->nalive++; /* not released by a connection closed here */
	while (!weft__list_empty(&srv->conns)) {
		weft_assuan_conn *c = weft__container_of(srv->conns.next, weft_assuan_conn, link);
		conn_close(c); /* unlinks and frees it */
	}
	if (--srv->nalive == 0)
		server_release(srv); /* else the last closed connection's end frees it */
}

int weft_assuan_server_set_hello(weft_assuan_server *srv, const char *text)
{
	if (srv == NULL)
		return -EINVAL;
	char *h = NULL;
	if (text != NULL) {
		/* Every line must fit once prefixed. */
		for (const char *p = text; *p;) {
			const char *nl = strchr(p, '\n');
			size_t n = nl ? (size_t)(nl - p) : strlen(p);
			if (n + 4 > WEFT_ASSUAN_LINELENGTH)
				return -EINVAL;
			p += n + (nl != NULL);
		}
		h = strdup(text);
		if (h == NULL)
			return -ENOMEM;
	}
	free(srv->hello);
	srv->hello = h;
	return 0;
}

void weft_assuan_server_set_err_source(weft_assuan_server *srv, int source)
{
	if (srv != NULL)
		srv->err_source = source & GPG_ERR_SOURCE_MASK;
}

void weft_assuan_server_set_hooks(weft_assuan_server *srv, const weft_assuan_hooks *hooks, void *data)
{
	if (srv == NULL)
		return;
	if (hooks != NULL)
		srv->hooks = *hooks;
	else
		memset(&srv->hooks, 0, sizeof(srv->hooks));
	srv->hooks_data = data;
	/* A post_cmd hook: every finish looks (dirty is recomputed there). */
	for (struct weft__list *l = srv->conns.next; l != &srv->conns; l = l->next)
		weft__container_of(l, weft_assuan_conn, link)->dirty = true;
}

void weft_assuan_server_set_limits(weft_assuan_server *srv, const weft_assuan_limits *limits)
{
	if (srv == NULL)
		return;
	weft_assuan_limits l = limits ? *limits : (weft_assuan_limits){0};
	srv->limits.output = l.output ? l.output : DEFAULT_OUTPUT_LIMIT;
	srv->limits.inquire = l.inquire ? l.inquire : DEFAULT_INQUIRE_LIMIT;
	srv->limits.fds = l.fds ? l.fds : DEFAULT_FDS;
}

void weft_assuan_server_set_fdpassing(weft_assuan_server *srv, bool on)
{
	if (srv != NULL)
		srv->fdpassing = on;
}

size_t weft_assuan_server_connections(const weft_assuan_server *srv)
{
	return srv ? srv->nconns : 0;
}

weft_listener *weft_assuan_server_listener(const weft_assuan_server *srv)
{
	return srv ? srv->listener : NULL;
}

/* ---- output ------------------------------------------------------------------------ */

static size_t out_pending(const weft_assuan_conn *c)
{
	return weft__apump_pending(&c->io);
}

/* After output was queued from outside a pass: write it from the loop. */
static void conn_touch(weft_assuan_conn *c)
{
	if (c->depth == 0)
		weft_defer_schedule(&c->kick);
}

static void room_check(weft_assuan_conn *c)
{
	if (c->room_cb != NULL && out_pending(c) <= c->srv->limits.output / 2)
		weft_defer_schedule(&c->kick); /* the waiter runs from the loop */
}

/* A read or write request of the pump finished. */
static void pump_event(struct weft__apump *p, enum weft__apump_ev ev)
{
	weft_assuan_conn *c = weft__container_of(p, weft_assuan_conn, io);
	if (ev == WEFT__APUMP_WAKE) {
		weft_defer_schedule(&c->kick); /* kick_cb runs weft__apump_kick */
		return;
	}
	if (p->err != 0) {
		c->depth++; /* c stays until the loop, even if the server goes */
		conn_close(c); /* the peer went away */
		c->depth--;
		return;
	}
	room_check(c); /* conn_serve looks only after a flush */
	conn_process(c); /* lines to dispatch; more output; paused commands */
}

static int out_line(weft_assuan_conn *c, const char *prefix, const char *text)
{
	if (c->closed)
		return -ENOTCONN;
	int r = weft__aenc_data_end(&c->io.out, &c->io.dcount);
	if (r == 0)
		r = weft__aenc_line(&c->io.out, prefix, text);
	if (r == 0)
		conn_touch(c);
	return r;
}

int weft_assuan_write_line(weft_assuan_conn *c, const char *line)
{
	if (c == NULL || line == NULL)
		return -EINVAL;
	return out_line(c, line, NULL);
}

int weft_assuan_write_status(weft_assuan_conn *c, const char *keyword, const char *text)
{
	if (c == NULL || !valid_name(keyword))
		return -EINVAL;
	char prefix[210];
	snprintf(prefix, sizeof(prefix), "S %s", keyword);
	return out_line(c, prefix, text && *text ? text : NULL);
}

int weft_assuan_send_data(weft_assuan_conn *c, const void *buf, size_t len)
{
	if (c == NULL || (buf == NULL && len > 0))
		return -EINVAL;
	if (c->closed)
		return -ENOTCONN;
	if (out_pending(c) >= c->srv->limits.output)
		return -ENOBUFS;
	int r = weft__aenc_data(&c->io.out, &c->io.dcount, buf, len);
	if (r == 0) {
		c->dirty = true; /* a D line may be open */
		conn_touch(c);
	}
	return r;
}

int weft_assuan_flush_data(weft_assuan_conn *c)
{
	if (c == NULL)
		return -EINVAL;
	if (c->closed)
		return -ENOTCONN;
	int r = weft__aenc_data_end(&c->io.out, &c->io.dcount);
	if (r == 0)
		conn_touch(c);
	return r;
}

size_t weft_assuan_output_pending(const weft_assuan_conn *c)
{
	return c ? out_pending(c) : 0;
}

int weft_assuan_on_room(weft_assuan_conn *c, weft_assuan_room_cb cb, void *data)
{
	if (c == NULL || cb == NULL || c->closed)
		return -EINVAL;
	c->room_cb = cb;
	c->room_data = data;
	room_check(c);
	return 0;
}

int weft_assuan_on_cancel(weft_assuan_conn *c, weft_assuan_cancel_cb cb, void *data)
{
	if (c == NULL || c->closed || c->state == C_IDLE)
		return -EINVAL;
	c->cancel_cb = cb;
	c->cancel_data = data;
	c->dirty = true;
	return 0;
}

int weft_assuan_set_okay_line(weft_assuan_conn *c, const char *text)
{
	if (c == NULL)
		return -EINVAL;
	char *t = NULL;
	if (text != NULL) {
		if (strchr(text, '\n') || strlen(text) + 4 > WEFT_ASSUAN_LINELENGTH)
			return -EINVAL;
		if ((t = strdup(text)) == NULL)
			return -ENOMEM;
	}
	free(c->okay);
	c->okay = t;
	c->dirty = true;
	return 0;
}

weft_assuan_err weft_assuan_set_error(weft_assuan_conn *c, weft_assuan_err err, const char *text)
{
	if (c == NULL)
		return err;
	free(c->err_text);
	c->err_text = text ? strdup(text) : NULL;
	c->err_no = err;
	c->dirty = true;
	return err;
}

void weft_assuan_set_force_close(weft_assuan_conn *c)
{
	if (c != NULL) {
		c->force_close = true;
		c->dirty = true;
	}
}

/* ---- descriptors ----------------------------------------------------------------- */

static void on_passed_fd(weft_stream *s, int fd, void *data)
{
	weft_assuan_conn *c = data;
	(void)s;
	if (c->npfds >= c->srv->limits.fds) {
		close(fd); /* over the limit, as libassuan's pendingfds */
		return;
	}
	if (c->npfds == c->pfds_cap) {
		/* Sized by the limit now in force (it may have grown). */
		int *t = realloc(c->pfds, c->srv->limits.fds * sizeof(int));
		if (t == NULL) {
			close(fd);
			return;
		}
		c->pfds = t;
		c->pfds_cap = c->srv->limits.fds;
	}
	c->pfds[c->npfds++] = fd;
}

int weft_assuan_receive_fd(weft_assuan_conn *c)
{
	if (c == NULL || c->npfds == 0)
		return -1;
	int fd = c->pfds[0];
	memmove(c->pfds, c->pfds + 1, (c->npfds - 1) * sizeof(int));
	c->npfds--;
	return fd;
}

static void close_passed_fds(weft_assuan_conn *c)
{
	while (c->npfds > 0)
		close(c->pfds[--c->npfds]);
}

int weft_assuan_conn_allow_fd(weft_assuan_conn *c, int fd)
{
	if (c == NULL || fd < 0)
		return -EINVAL;
	int *t = realloc(c->allowed, (c->nallowed + 1) * sizeof(int));
	if (t == NULL)
		return -ENOMEM;
	c->allowed = t;
	c->allowed[c->nallowed++] = fd;
	return 0;
}

/* FD=n names a descriptor the peer passed (still queued) or one allowed. */
static bool take_named_fd(weft_assuan_conn *c, int fd)
{
	for (unsigned i = 0; i < c->npfds; i++) {
		if (c->pfds[i] == fd) {
			memmove(c->pfds + i, c->pfds + i + 1, (c->npfds - i - 1) * sizeof(int));
			c->npfds--;
			return true;
		}
	}
	for (unsigned i = 0; i < c->nallowed; i++) {
		if (c->allowed[i] == fd) {
			c->allowed[i] = c->allowed[--c->nallowed];
			return true;
		}
	}
	return false;
}

int weft_assuan_input_fd(const weft_assuan_conn *c)
{
	return c ? c->input_fd : -1;
}

int weft_assuan_output_fd(const weft_assuan_conn *c)
{
	return c ? c->output_fd : -1;
}

int weft_assuan_take_input_fd(weft_assuan_conn *c)
{
	if (c == NULL)
		return -1;
	int fd = c->input_fd;
	c->input_fd = -1;
	return fd;
}

int weft_assuan_take_output_fd(weft_assuan_conn *c)
{
	if (c == NULL)
		return -1;
	int fd = c->output_fd;
	c->output_fd = -1;
	return fd;
}

/* ---- finishing a command --------------------------------------------------------- */

static void clear_command(weft_assuan_conn *c)
{
	c->state = C_IDLE;
	c->cmd_seq++;
	c->err_no = 0;
	c->cancel_cb = NULL;
	c->cancel_data = NULL;
	c->inq_cb = NULL;
	/* Most commands set none of these: no calls for them. */
	if (c->okay != NULL) {
		free(c->okay);
		c->okay = NULL;
	}
	if (c->err_text != NULL) {
		free(c->err_text);
		c->err_text = NULL;
	}
	if (c->inq.p != NULL)
		weft__abuf_free(&c->inq);
}

static bool keeps_fds(enum builtin b)
{
	return b == B_INPUT || b == B_OUTPUT || b == B_OPTION || b == B_NOP || b == B_HELP;
}

static void finish_slow(weft_assuan_conn *c, weft_assuan_err err);

/* Answer the command and end it. */
static inline void finish(weft_assuan_conn *c, weft_assuan_err err)
{
	struct weft__abuf *out = &c->io.out;
	if (err == 0 && !c->dirty && out->cap - out->len >= 3) {
		/* The usual end: OK, and nothing of the command to clear. */
		memcpy(out->p + out->len, "OK\n", 3);
		out->len += 3;
		c->state = C_IDLE;
		c->cmd_seq++;
		conn_touch(c);
		return;
	}
	finish_slow(c, err);
}

static __attribute__((noinline)) void finish_slow(weft_assuan_conn *c, weft_assuan_err err)
{
	struct weft__abuf *out = &c->io.out;
	int r = c->io.dcount != 0 ? weft__aenc_data_end(out, &c->io.dcount) : 0;
	if (err == 0 && c->okay == NULL && !c->bye) {
		if (r == 0 && (out->cap - out->len >= 3 || (r = weft__abuf_reserve(out, 3)) == 0)) {
			memcpy(out->p + out->len, "OK\n", 3);
			out->len += 3;
		}
	} else if (err == 0) {
		const char *text = c->bye ? "closing connection" : c->okay;
		if (r == 0)
			r = weft__aenc_line(out, "OK", text);
	} else {
		const char *text = c->err_no == err ? c->err_text : NULL;
		if (c->force_close)
			text = "[closing connection]";
		if (r == 0)
			r = weft__aenc_err(out, err, text);
	}
	enum builtin b = c->cur_builtin;
	clear_command(c);
	if (!keeps_fds(b)) {
		close_fd(&c->input_fd);
		close_fd(&c->output_fd);
	}
	/* What the next finish must look at (a hook below may add to it). */
	c->dirty = c->input_fd >= 0 || c->output_fd >= 0 || c->bye || c->force_close ||
		c->io.dcount != 0 || c->srv->hooks.post_cmd != NULL;
	if (c->srv->hooks.post_cmd) {
		c->depth++; /* a hook that frees the server: c stays until the loop */
		c->srv->hooks.post_cmd(c, err, c->srv->hooks_data);
		c->depth--;
	}
	if (r < 0 || c->bye || c->force_close) {
		c->close_after_write = true;
		c->io.eof = true; /* read no more */
	}
	conn_touch(c);
}

int weft_assuan_process_done(weft_assuan_conn *c, weft_assuan_err err)
{
	if (c == NULL || c->closed || c->state == C_IDLE)
		return -EINVAL;
	if (err == WEFT_ASSUAN_PENDING)
		return -EINVAL;
	finish(c, err);
	return 0;
}

/* Run a handler or continuation's verdict for command seq. */
static void verdict(weft_assuan_conn *c, unsigned seq, weft_assuan_err r)
{
	if (c->cmd_seq != seq)
		return; /* finished inside, or gone (closing bumps it too) */
	if (r == WEFT_ASSUAN_PENDING)
		return;
	if (c->state == C_INQUIRE) {
		c->state = C_CMD; /* answered while inquiring: the inquiry is void */
		c->inq_cb = NULL;
	}
	finish(c, r);
}

/* ---- INQUIRE --------------------------------------------------------------------- */

int weft_assuan_inquire(weft_assuan_conn *c, const char *keyword, size_t maxlen,
		weft_assuan_inquire_cb cb, void *data)
{
	if (c == NULL || cb == NULL || keyword == NULL || *keyword == '\0')
		return -EINVAL;
	if (c->closed)
		return -ENOTCONN;
	if (c->state == C_INQUIRE)
		return -EBUSY;
	if (c->state != C_CMD)
		return -EINVAL;
	int r = out_line(c, "INQUIRE", keyword);
	if (r < 0)
		return r;
	c->state = C_INQUIRE;
	c->dirty = true;
	c->inq_cb = cb;
	c->inq_data = data;
	c->inq_max = maxlen ? maxlen : c->srv->limits.inquire;
	c->inq_err = 0;
	c->inq.len = 0;
	return 0;
}

static void inquire_complete(weft_assuan_conn *c, weft_assuan_err err)
{
	weft_assuan_inquire_cb cb = c->inq_cb;
	void *data = c->inq_data;
	c->inq_cb = NULL;
	c->state = C_CMD;
	unsigned seq = c->cmd_seq;
	if (err != 0) {
		c->inq.len = 0;
	} else if (weft__abuf_put(&c->inq, "", 1) == 0) {
		c->inq.len--; /* NUL after the data */
	} else {
		err = mkerr(c->srv, GPG_ERR_ENOMEM);
	}
	struct weft__abuf buf = c->inq;
	c->inq = (struct weft__abuf){0};
	weft_assuan_err r = cb(c, err, (unsigned char *)buf.p, buf.len, data);
	weft__abuf_free(&buf);
	verdict(c, seq, r);
}

static void inquire_line(weft_assuan_conn *c, char *line, size_t len)
{
	if (len == 0 || line[0] == '#')
		return;
	if ((line[0] == 'D' || line[0] == 'd') && line[1] == ' ') {
		if (c->inq_err != 0)
			return; /* failed already: read on to END */
		/* Decoded straight into the inquiry's buffer. */
		if (weft__abuf_reserve(&c->inq, len - 2) < 0) {
			c->inq_err = mkerr(c->srv, GPG_ERR_ENOMEM);
			weft__abuf_free(&c->inq);
			return;
		}
		ssize_t n = weft__adecode_to(c->inq.p + c->inq.len, line + 2, len - 2, true);
		if (n < 0) {
			c->inq_err = weft_assuan_set_error(c, mkerr(c->srv, GPG_ERR_ASS_SYNTAX),
					"malformed percent escape in inquired data");
		} else if (c->inq.len + (size_t)n > c->inq_max) {
			c->inq_err = mkerr(c->srv, GPG_ERR_ASS_TOO_MUCH_DATA);
			weft__abuf_free(&c->inq);
		} else {
			c->inq.len += (size_t)n;
		}
		return;
	}
	if (strncasecmp(line, "END", 3) == 0 && (line[3] == '\0' || line[3] == ' '))
		inquire_complete(c, c->inq_err);
	else if (strncasecmp(line, "CAN", 3) == 0)
		inquire_complete(c, mkerr(c->srv, GPG_ERR_ASS_CANCELED));
	else
		inquire_complete(c, mkerr(c->srv, GPG_ERR_ASS_UNEXPECTED_CMD));
}

/* ---- built-in commands -------------------------------------------------------------- */

static bool blank(char ch)
{
	return ch == ' ' || ch == '\t';
}

static weft_assuan_err syntax(weft_assuan_conn *c, const char *text)
{
	return weft_assuan_set_error(c, mkerr(c->srv, GPG_ERR_ASS_SYNTAX), text);
}

static weft_assuan_err std_option(weft_assuan_conn *c, char *line)
{
	char *key = line;
	while (blank(*key))
		key++;
	if (*key == '\0')
		return syntax(c, "argument required");
	if (*key == '=')
		return syntax(c, "no option name given");
	char *value = key;
	while (*value && !blank(*value) && *value != '=')
		value++;
	if (*value) {
		if (blank(*value))
			*value++ = '\0';
		while (blank(*value))
			value++;
		if (*value == '=') {
			*value++ = '\0';
			while (blank(*value))
				value++;
			if (*value == '\0')
				return syntax(c, "option argument expected");
		}
		if (*value) {
			/* Trailing blanks go, except right after a one-character
			 * value (libassuan's loop stops there). */
			char *p = value + strlen(value) - 1;
			while (p > value && blank(*p))
				p--;
			if (p > value)
				p[1] = '\0';
		}
	}
	if (key[0] == '-' && key[1] == '-' && key[2])
		key += 2;
	if (*key == '-')
		return syntax(c, "option should not begin with one dash");
	if (c->srv->hooks.option)
		return c->srv->hooks.option(c, key, value, c->srv->hooks_data);
	return 0;
}

static weft_assuan_err std_help(weft_assuan_conn *c, char *line)
{
	weft_assuan_server *srv = c->srv;
	size_t n = strlen(line);
	while (n > 0 && blank(line[n - 1]))
		line[--n] = '\0';
	if (n == 0) {
		for (size_t i = 0; i < srv->ncmds; i++) {
			const struct cmd *cmd = &srv->cmds[i];
			size_t nl = strlen(cmd->name);
			const char *h = cmd->help;
			char buf[WEFT_ASSUAN_LINELENGTH];
			if (h && strncmp(h, cmd->name, nl) == 0 && (h[nl] == ' ' || h[nl] == '\n' || h[nl] == '\0')) {
				const char *e = strchr(h, '\n');
				size_t len = e ? (size_t)(e - h) : strlen(h);
				if (len > sizeof(buf) - 4)
					len = sizeof(buf) - 4;
				snprintf(buf, sizeof(buf), "# %.*s", (int)len, h);
			} else {
				snprintf(buf, sizeof(buf), "# %s", cmd->name);
			}
			out_line(c, buf, NULL);
		}
		return 0;
	}
	const struct cmd *cmd = find_cmd(srv, line, n);
	if (cmd == NULL)
		return mkerr(srv, GPG_ERR_UNKNOWN_COMMAND);
	if (cmd->help == NULL)
		return mkerr(srv, GPG_ERR_NOT_FOUND);
	for (const char *p = cmd->help; *p;) {
		const char *e = strchr(p, '\n');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		char buf[WEFT_ASSUAN_LINELENGTH];
		if (len > sizeof(buf) - 4)
			len = sizeof(buf) - 4;
		snprintf(buf, sizeof(buf), "# %.*s", (int)len, p);
		out_line(c, buf, NULL);
		p += len + (e != NULL);
	}
	return 0;
}

static weft_assuan_err std_fd(weft_assuan_conn *c, char *line, bool input)
{
	weft_assuan_server *srv = c->srv;
	if (strncmp(line, "FD", 2) != 0 && strncmp(line, "fd", 2) != 0)
		return syntax(c, "FD[=<n>] expected");
	char *p = line + 2;
	int fd;
	if (*p == '=') {
		p++;
		if (!isdigit((unsigned char)*p))
			return syntax(c, "number required");
		char *end;
		unsigned long v = strtoul(p, &end, 10);
		if (v > 65535 || !take_named_fd(c, (int)v))
			return weft_assuan_set_error(c, mkerr(srv, GPG_ERR_ASS_PARAMETER),
					"descriptor was not passed by the peer");
		fd = (int)v;
		memset(line, ' ', (size_t)(end - line));
	} else if (*p == '\0' || blank(*p)) {
		if (!c->fd_receiver)
			return weft_assuan_set_error(c, mkerr(srv, GPG_ERR_NOT_IMPLEMENTED),
					"server does not support sending and receiving of file descriptors");
		fd = weft_assuan_receive_fd(c);
		if (fd < 0)
			return mkerr(srv, GPG_ERR_ASS_GENERAL);
		memset(line, ' ', 2);
	} else {
		return syntax(c, "FD[=<n>] expected");
	}
	weft_assuan_err (*notify)(weft_assuan_conn *, const char *, void *) =
			input ? srv->hooks.input : srv->hooks.output;
	if (notify != NULL) {
		weft_assuan_err e = notify(c, line, srv->hooks_data);
		if (e != 0) {
			close(fd);
			return e;
		}
	}
	int *slot = input ? &c->input_fd : &c->output_fd;
	close_fd(slot);
	*slot = fd;
	c->dirty = true;
	return 0;
}

static weft_assuan_err run_builtin(weft_assuan_conn *c, enum builtin b, char *line)
{
	weft_assuan_server *srv = c->srv;
	switch (b) {
	case B_NOP:
		return 0;
	case B_CANCEL:
		if (srv->hooks.cancel)
			srv->hooks.cancel(c, line, srv->hooks_data);
		return mkerr(srv, GPG_ERR_NOT_IMPLEMENTED);
	case B_OPTION:
		return std_option(c, line);
	case B_BYE:
		if (srv->hooks.bye)
			srv->hooks.bye(c, line, srv->hooks_data);
		close_fd(&c->input_fd);
		close_fd(&c->output_fd);
		c->bye = true;
		c->dirty = true;
		return 0;
	case B_RESET: {
		weft_assuan_err e = srv->hooks.reset ? srv->hooks.reset(c, line, srv->hooks_data) : 0;
		if (e == 0) {
			close_fd(&c->input_fd);
			close_fd(&c->output_fd);
			close_passed_fds(c);
		}
		return e;
	}
	case B_HELP:
		return std_help(c, line);
	case B_INPUT:
		return std_fd(c, line, true);
	case B_OUTPUT:
		return std_fd(c, line, false);
	case B_AUTH:
	case B_END:
	case B_NONE:
	default:
		return mkerr(srv, GPG_ERR_NOT_IMPLEMENTED);
	}
}

/* ---- dispatch ------------------------------------------------------------------------- */

/* Answer at once (an error found before any handler ran). */
static void answer(weft_assuan_conn *c, enum builtin b, weft_assuan_err err)
{
	c->state = C_CMD;
	c->cur_builtin = b;
	finish(c, err);
}

/* The length of the command name at line (up to the first blank or NUL)
 * and, for a name of up to 8 bytes, the name as a word (name_key); else 0.
 * end: how far the line's buffer may be read. */
static inline size_t scan_name(const char *line, const char *end, uint64_t *ret_key)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	if (end - line >= 8) {
		/* The first byte below 0x21 (exact for the lowest flagged byte):
		 * the end of the name if it is a blank or the NUL. */
		uint64_t w;
		memcpy(&w, line, 8);
		uint64_t f = (w - ONES * 0x21) & ~w & HIGHS;
		if (f != 0) {
			size_t n = (size_t)__builtin_ctzll(f) >> 3;
			char ch = line[n];
			if (ch == '\0' || blank(ch)) {
				*ret_key = n > 0 ? low_bytes(w, n) : 0;
				return n;
			}
		}
	}
#else
	(void)end;
#endif
	size_t n = 0;
	while (line[n] && !blank(line[n]))
		n++;
	*ret_key = name_key(line, n);
	return n;
}

static __attribute__((noinline)) struct cmd *find_cmd_slow(weft_assuan_server *srv, const char *name, size_t len)
{
	return find_cmd(srv, name, len);
}

/* The command named name: an exact match of a short name by its word,
 * else find_cmd. */
static inline struct cmd *lookup(weft_assuan_server *srv, const char *name, size_t len, uint64_t key)
{
	if (key != 0) {
		struct cmd *cmd = srv->cmds, *e = cmd + srv->ncmds;
		for (; cmd < e; cmd++)
			if (cmd->key == key)
				return cmd;
	}
	return find_cmd_slow(srv, name, len);
}

/* Lines that name no command: a comment, an empty line, a leading blank,
 * a D line. */
static __attribute__((noinline)) void command_odd(weft_assuan_conn *c, char *line, size_t nlen)
{
	if (line[0] == '#')
		return; /* no answer, as libassuan */
	if (nlen == 0) {
		if (line[0] == '\0')
			return; /* an empty line: no answer either */
		c->state = C_CMD;
		c->cur_builtin = B_NONE;
		finish(c, syntax(c, "leading white-space"));
		return;
	}
	answer(c, B_NONE, mkerr(c->srv, GPG_ERR_NOT_IMPLEMENTED)); /* D line */
}

static __attribute__((noinline)) void command_unknown(weft_assuan_conn *c)
{
	answer(c, B_NONE, mkerr(c->srv, GPG_ERR_ASS_UNKNOWN_CMD));
}

/* The pre_cmd hook; false when the command is over (answered, or the
 * connection closed). */
static __attribute__((noinline)) bool command_pre(weft_assuan_conn *c, const char *name, unsigned seq)
{
	weft_assuan_server *srv = c->srv;
	weft_assuan_err e = srv->hooks.pre_cmd(c, name, srv->hooks_data);
	if (c->closed || c->cmd_seq != seq)
		return false;
	if (e != 0) {
		finish(c, e);
		return false;
	}
	return true;
}

static __attribute__((noinline)) weft_assuan_err run_builtin_slow(weft_assuan_conn *c, enum builtin b, char *line)
{
	return run_builtin(c, b, line);
}

/* A command line; end: how far its buffer may be read. */
static inline __attribute__((always_inline)) void command_line(weft_assuan_conn *c, char *line, const char *end)
{
	uint64_t key;
	size_t nlen = scan_name(line, end, &key);
	if (line[0] == '#' || nlen == 0 || (line[0] == 'D' && line[1] == ' ')) {
		command_odd(c, line, nlen);
		return;
	}
	char *p = line + nlen;
	if (*p) {
		*p++ = '\0';
		while (blank(*p))
			p++;
	}
	struct cmd *cmd = lookup(c->srv, line, nlen, key);
	if (cmd == NULL) {
		command_unknown(c);
		return;
	}
	c->state = C_CMD;
	c->cur_builtin = cmd->builtin;
	unsigned seq = c->cmd_seq;
	/* The hook may register commands: the table may move. */
	weft_assuan_handler fn = cmd->fn;
	void *fn_data = cmd->data;
	enum builtin b = cmd->builtin;
	if (c->srv->hooks.pre_cmd != NULL && !command_pre(c, cmd->name, seq))
		return;
	if (fn == NULL && b == B_NOP) {
		finish(c, 0); /* nothing ran: answered at once */
		return;
	}
	weft_assuan_err r = fn != NULL ? fn(c, p, fn_data) : run_builtin_slow(c, b, p);
	verdict(c, seq, r);
}

static void send_greeting(weft_assuan_conn *c)
{
	c->greeted = true;
	const char *hello = c->srv->hello;
	if (hello == NULL) {
		char buf[64];
		pid_t pid = 0;
		if (weft_assuan_peer_cred(c, &pid, NULL, NULL) == 0 && pid > 0)
			snprintf(buf, sizeof(buf), "Pleased to meet you, process %d", (int)pid);
		else
			snprintf(buf, sizeof(buf), "Pleased to meet you");
		out_line(c, "OK", buf);
		return;
	}
	char line[WEFT_ASSUAN_LINELENGTH];
	for (const char *p = hello;;) {
		const char *e = strchr(p, '\n');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		snprintf(line, sizeof(line), "%.*s", (int)len, p);
		if (e == NULL) {
			out_line(c, "OK", *line ? line : NULL);
			return;
		}
		out_line(c, "#", line);
		p = e + 1;
	}
}

/* The pump: dispatch what can be, write what was answered, read more.
 * Inline in conn_hook, which runs it for every command line (hot: the
 * connection is open and greeted — it reads — and its transport taken). */
static inline __attribute__((always_inline)) void conn_serve(weft_assuan_conn *c, bool hot)
{
	if (!hot && c->closed)
		return;
	c->depth++;
	if (!hot && !c->greeted)
		send_greeting(c);
	bool waiting_lines = false; /* lines left unread for lack of room */
	while (c->io.in.len > 0 && !c->closed && !c->close_after_write && c->state != C_CMD) {
		if (c->state == C_IDLE && out_pending(c) >= c->srv->limits.output) {
			waiting_lines = true; /* the client reads no answers */
			break;
		}
		char *line;
		size_t len;
		enum weft__aline k = weft__ain_next(&c->io.in, &line, &len);
		if (k == WEFT__ALINE_NONE)
			break;
		if (k == WEFT__ALINE_TOO_LONG) {
			weft_assuan_err e = mkerr(c->srv, GPG_ERR_ASS_LINE_TOO_LONG);
			if (c->state == C_INQUIRE) {
				if (c->inq_err == 0)
					c->inq_err = e;
			} else {
				answer(c, B_NONE, e);
			}
			continue;
		}
		if (c->state == C_INQUIRE)
			inquire_line(c, line, len);
		else
			command_line(c, line, c->io.in.buf + c->io.in.cap);
	}
	if (c->closed)
		goto out;
	if (c->io.eof && !c->close_after_write) {
		/* The client closed (or half-closed) its side.  Lines it sent
		 * before were answered above; a command still running is
		 * cancelled; an incomplete last line is dropped. */
		if (c->state != C_IDLE) {
			c->depth--;
			conn_close(c);
			return;
		}
		if (!waiting_lines)
			c->close_after_write = true;
	}
	if ((hot ? weft__apump_flush_taken(&c->io) : weft__apump_flush(&c->io)) < 0) {
		conn_close(c);
		goto out;
	}
	room_check(c);
	if (waiting_lines && out_pending(c) < c->srv->limits.output)
		weft_defer_schedule(&c->kick); /* written at once: on with the waiting lines */
	if (c->close_after_write && out_pending(c) == 0) {
		c->depth--;
		conn_close(c);
		return;
	}
	if (weft__apump_read(&c->io) < 0)
		conn_close(c);
out:
	/* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): depth > 0 held c (conn_close defers the free) */
	c->depth--;
}

static void conn_process(weft_assuan_conn *c)
{
	conn_serve(c, false);
}

/* The transport of a connection is ready.  The usual wake-up — a command
 * line for an idle connection — is served here in one piece: read into
 * the small buffer, the lines dispatched and answered, the answers written;
 * anything else goes the pump's way. */
static void conn_hook(void *data, unsigned revents)
{
	struct weft__apump *p = data;
	weft_assuan_conn *c = weft__container_of(p, weft_assuan_conn, io);
	if (!weft__apump_idle_read(p, revents)) {
		weft__apump_hook(p, revents);
		return;
	}
	p->busy = 1;
	struct iovec iov = {p->small, sizeof(p->small)};
	ssize_t n = p->ops->readv(p->s, &iov, 1);
	if (n <= 0 || (size_t)n == sizeof(p->small)) {
		weft__apump_read_result(p, n); /* the end, an error, or more to come */
		return;
	}
	p->in.off = 0;
	p->in.len = (size_t)n;
	p->drained = true; /* a short read: the transport is empty */
	conn_serve(c, true); /* what pump_event does; it looks at the room too */
	/* c is still here: only a close with depth 0 while the server is
	 * being freed frees at once, and then it was closed before this pass. */
	p->busy = 0; // NOLINT(clang-analyzer-unix.Malloc)
	if (p->s != NULL)
		weft__apump_watch(p);
}

/* ---- connection life ---------------------------------------------------------------- */

static void conn_free(weft_assuan_conn *c)
{
	weft_assuan_server *srv = c->srv;
	if (c->done_flag)
		*c->done_flag = true;
	weft__apump_close(&c->io); /* closed already: frees nothing twice */
	weft__abuf_free(&c->inq);
	free(c->okay);
	free(c->err_text);
	free(c->pfds);
	free(c->allowed);
	weft_defer_cancel(&c->kick);
	weft__handle_fini(&c->kick.h);
	free(c);
	if (--srv->nalive == 0 && srv->freeing)
		server_release(srv);
}

static void kick_cb(weft_defer *d, void *data)
{
	weft_assuan_conn *c = data;
	(void)d;
	if (c->closed) {
		if (c->srv->hooks.close)
			c->srv->hooks.close(c, c->srv->hooks_data);
		conn_free(c);
		return;
	}
	weft__apump_kick(&c->io); /* a read the pump asked for */
	if (c->closed)
		return; /* closed by it: this kick runs again to free */
	if (c->room_cb != NULL && out_pending(c) <= c->srv->limits.output / 2) {
		weft_assuan_room_cb cb = c->room_cb;
		c->room_cb = NULL;
		c->depth++;
		cb(c, c->room_data);
		c->depth--;
	}
	conn_process(c);
}

static void conn_close(weft_assuan_conn *c)
{
	if (c->closed)
		return;
	c->closed = true;
	weft_assuan_server *srv = c->srv;
	weft__list_remove(&c->link);
	srv->nconns--;
	if (c->state != C_IDLE && c->cancel_cb != NULL) {
		weft_assuan_cancel_cb cb = c->cancel_cb;
		c->cancel_cb = NULL;
		cb(c, c->cancel_data);
	}
	c->state = C_IDLE;
	c->cmd_seq++; /* a verdict still to come is stale */
	c->room_cb = NULL;
	weft__apump_close(&c->io); /* requests abandoned, stream closed */
	close_fd(&c->input_fd);
	close_fd(&c->output_fd);
	close_passed_fds(c);
	for (unsigned i = 0; i < c->nallowed; i++)
		close(c->allowed[i]);
	c->nallowed = 0;
	if (srv->freeing && c->depth == 0) {
		/* The server goes now: finish here (a connection whose callback
		 * is on the stack — the server freed from a handler — ends from
		 * the loop instead; the server lives until it has). */
		weft_defer_cancel(&c->kick);
		if (srv->hooks.close)
			srv->hooks.close(c, srv->hooks_data);
		conn_free(c);
		return;
	}
	weft_defer_schedule(&c->kick); /* close hook and free from the loop */
}

void weft_assuan_conn_close(weft_assuan_conn *c)
{
	if (c != NULL)
		conn_close(c);
}

int weft_assuan_server_adopt(weft_assuan_server *srv, weft_stream *s, weft_assuan_conn **ret_conn)
{
	if (srv == NULL || s == NULL || srv->freeing) {
		weft_stream_close(s, NULL, NULL);
		return -EINVAL;
	}
	weft_assuan_conn *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		weft_stream_close(s, NULL, NULL);
		return -ENOMEM;
	}
	c->srv = srv;
	weft__apump_init(&c->io, s, pump_event);
	c->input_fd = c->output_fd = -1;
	c->dirty = true; /* the first finish looks at the hooks */
	weft__defer_init(srv->loop, &c->kick, kick_cb, c);
	if (srv->fdpassing && weft_stream_set_fd_receiver(s, on_passed_fd, c) == 0)
		c->fd_receiver = true;
	/* The connection drives the transport itself; a stream that cannot be
	 * taken (a request attached) is driven by requests instead. */
	(void)weft__apump_take(&c->io, conn_hook);
	weft__list_append(&srv->conns, &c->link);
	srv->nconns++;
	srv->nalive++;
	if (srv->hooks.open)
		srv->hooks.open(c, srv->hooks_data);
	weft_defer_schedule(&c->kick); /* greeting and first read from the loop */
	if (ret_conn)
		*ret_conn = c;
	return 0;
}

int weft_assuan_server_adopt_fd(weft_assuan_server *srv, int fd, weft_assuan_conn **ret_conn)
{
	if (srv == NULL) {
		if (fd >= 0)
			close(fd);
		return -EINVAL;
	}
	weft_stream *s;
	int r = weft_stream_new_socket(srv->loop, fd, &s);
	if (r < 0)
		return r;
	return weft_assuan_server_adopt(srv, s, ret_conn);
}

int weft_assuan_server_adopt_pipe(weft_assuan_server *srv, int rfd, int wfd, weft_assuan_conn **ret_conn)
{
	if (rfd >= 0 && rfd == wfd)
		return weft_assuan_server_adopt_fd(srv, rfd, ret_conn);
	if (srv == NULL) {
		if (rfd >= 0)
			close(rfd);
		if (wfd >= 0)
			close(wfd);
		return -EINVAL;
	}
	weft_stream *s;
	int r = weft_stream_new_pipe(srv->loop, rfd, wfd, &s);
	if (r < 0)
		return r;
	return weft_assuan_server_adopt(srv, s, ret_conn);
}

static void accepted(weft_listener *l, weft_stream *stream, const weft_addr *peer, int err, void *data)
{
	(void)l;
	(void)peer;
	(void)err;
	if (stream != NULL)
		weft_assuan_server_adopt(data, stream, NULL);
}

int weft_assuan_server_listen(weft_assuan_server *srv, const char *addr, const weft_listen_opts *opts)
{
	if (srv == NULL || addr == NULL || srv->freeing)
		return -EINVAL;
	if (srv->listener != NULL)
		return -EBUSY;
	weft_addr a;
	int r = weft_addr_parse(addr, &a);
	if (r < 0)
		return r;
	weft_listen_opts o = opts ? *opts : (weft_listen_opts){.replace_stale = true};
	return weft_listen(srv->loop, &a, &o, accepted, srv, &srv->listener);
}

/* ---- accessors --------------------------------------------------------------------- */

weft_assuan_server *weft_assuan_conn_server(const weft_assuan_conn *c)
{
	return c ? c->srv : NULL;
}

weft_stream *weft_assuan_conn_stream(const weft_assuan_conn *c)
{
	return c ? c->io.s : NULL;
}

void weft_assuan_conn_set_data(weft_assuan_conn *c, void *data)
{
	if (c != NULL)
		c->data = data;
}

void *weft_assuan_conn_data(const weft_assuan_conn *c)
{
	return c ? c->data : NULL;
}

void weft_assuan_conn_set_peer_pid(weft_assuan_conn *c, pid_t pid)
{
	if (c != NULL)
		c->peer_pid = pid;
}

int weft_assuan_peer_cred(const weft_assuan_conn *c, pid_t *ret_pid, uid_t *ret_uid, gid_t *ret_gid)
{
	if (c == NULL)
		return -EINVAL;
	if (c->peer_pid > 0) {
		if (ret_pid)
			*ret_pid = c->peer_pid;
		if (ret_uid)
			*ret_uid = getuid();
		if (ret_gid)
			*ret_gid = getgid();
		return 0;
	}
	if (c->io.s == NULL)
		return -ENOTCONN;
	return weft_stream_peer_cred(c->io.s, ret_pid, ret_uid, ret_gid);
}

/* ---- hand-driven mode ----------------------------------------------------------------- */

int weft_assuan_get_active_fds(weft_assuan_conn *c, int what, int *fds, int n)
{
	if (c == NULL || fds == NULL || n < 1 || (what != 0 && what != 1))
		return -EINVAL;
	if (c->closed)
		return 0;
	bool want = what == 0 ? c->io.reading : weft__apump_writing(&c->io);
	if (!want)
		return 0; /* the usual answer for writing: no lookup */
	int fd = weft_stream_fd(c->io.s);
	if (fd < 0)
		return 0;
	fds[0] = fd;
	return 1;
}

int weft_assuan_process_next(weft_assuan_conn *c, bool *done)
{
	if (c == NULL || done == NULL)
		return -EINVAL;
	bool gone = false;
	/* cppcheck-suppress autoVariables ; cleared below unless the conn is gone */
	c->done_flag = &gone;
	weft_loop *loop = c->srv->loop;
	int r = 0;
	/* The caller polled the connection's fd: serve its stream at once
	 * (reads, answers, writes run from here), so that the loop — and its
	 * epoll_wait — is needed only for work that was posted. */
	if (!c->closed && c->greeted) {
		if (weft__apump_taken(&c->io))
			conn_hook(&c->io, WEFT_IO_READ | WEFT_IO_WRITE);
		else
			weft_stream_ready(c->io.s, WEFT_IO_READ | WEFT_IO_WRITE);
	}
	/* Run what is ready, and the work it posts, without waiting. */
	for (int i = 0; i < 16 && !gone; i++) {
		if (weft_loop_get_timeout(loop) != 0)
			break; /* nothing ready but the fds, which were served */
		r = weft_loop_run(loop, WEFT_RUN_NOWAIT);
		if (r < 0 || weft_loop_get_timeout(loop) != 0)
			break;
	}
	if (!gone)
		c->done_flag = NULL;
	*done = gone;
	return r < 0 ? r : 0;
}
