/* The two servers of the interop test.  The command logic is written once
 * against a small table of output functions; each server binds it to its
 * library.  Commands (registered in this order, after the built-ins and
 * INPUT/OUTPUT):
 *
 *   ECHO <text>      <text> back as D data
 *   FAIL <code> [t]  the error gpg_err_make(PEER_ERR_SOURCE, code), text t
 *   OKAY <text>      OK <text> (the okay line)
 *   DATA <spec>      D data: words "HH*N" (byte 0xHH N times), "|" (a new
 *                    send_data call), "/" (flush the D line)
 *   BYTES            all 256 byte values in one call, flushed, then one
 *                    call per byte value
 *   STATUS [open]    status lines, D data between them
 *   GETOPT           the last OPTION seen ("name=value") as D data
 *   INQ <kw> <max>   INQUIRE <kw> (at most <max> bytes), the data back as D
 *   SLOW             answers after 30 ms (weft: pending, a timer)
 *   READIN           up to 256 bytes read from the INPUT descriptor, as D
 */
#include "peers.h"

#include <weft/assuan.h>
#include <weft/loop.h>

#include <assuan.h>
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct out_ops {
	int (*send)(void *h, const void *p, size_t n);
	int (*flush)(void *h);
	int (*status)(void *h, const char *kw, const char *text);
	gpg_error_t (*seterr)(void *h, gpg_error_t e, const char *text);
	int (*okay)(void *h, const char *text);
};

static char last_option[512] = "(none)";

static gpg_error_t mkerr(gpg_err_code_t code)
{
	return gpg_err_make(PEER_ERR_SOURCE, code);
}

static const char help_echo[] = "ECHO <text>\n\nSend <text> back as D data.";
static const char help_fail[] = "Fail with the error code given.\nAn optional text follows the code.";
static const char help_data[] = "DATA <spec>\n\nD data made after <spec>.";
static const char help_inq[] = "INQ <keyword> <maxlen>\n\nInquire and send the data back.";

static gpg_error_t c_echo(const struct out_ops *o, void *h, char *args)
{
	o->send(h, args, strlen(args));
	return 0;
}

static gpg_error_t c_fail(const struct out_ops *o, void *h, char *args)
{
	char *end;
	unsigned long code = strtoul(args, &end, 10);
	while (*end == ' ')
		end++;
	gpg_error_t e = mkerr((gpg_err_code_t)code);
	if (*end)
		return o->seterr(h, e, end);
	return e;
}

static gpg_error_t c_okay(const struct out_ops *o, void *h, char *args)
{
	o->okay(h, args);
	return 0;
}

static gpg_error_t c_data(const struct out_ops *o, void *h, char *args)
{
	static unsigned char buf[65536];
	size_t n = 0;
	for (char *w = strtok(args, " "); w; w = strtok(NULL, " ")) {
		if (strcmp(w, "|") == 0 || strcmp(w, "/") == 0) {
			o->send(h, buf, n);
			n = 0;
			if (*w == '/')
				o->flush(h);
			continue;
		}
		unsigned byte, count;
		if (sscanf(w, "%2x*%u", &byte, &count) != 2 || count > sizeof(buf) - n)
			return o->seterr(h, mkerr(GPG_ERR_INV_ARG), "bad spec");
		memset(buf + n, (int)byte, count);
		n += count;
	}
	if (n > 0)
		o->send(h, buf, n);
	return 0;
}

static gpg_error_t c_bytes(const struct out_ops *o, void *h, char *args)
{
	unsigned char all[256];
	for (int i = 0; i < 256; i++)
		all[i] = (unsigned char)i;
	o->send(h, all, sizeof(all));
	o->flush(h);
	for (int i = 0; i < 256; i++)
		o->send(h, all + i, 1);
	return 0;
}

static gpg_error_t c_status(const struct out_ops *o, void *h, char *args)
{
	/* "STATUS open": status lines while a D line is open (the servers
	 * differ there: see test-interop.c); else the D line is flushed
	 * before each one. */
	bool open = strcmp(args, "open") == 0;
	o->status(h, "PROGRESS", "primegen X 100 100");
	o->send(h, "abc", 3);
	if (!open)
		o->flush(h);
	o->status(h, "EMPTY", "");
	o->status(h, "KEYINFO", "0123456789ABCDEF D - - - C - - -");
	o->send(h, "def", 3);
	o->flush(h);
	o->status(h, "PCT", "100%25 done%0A");
	return 0;
}

static gpg_error_t c_getopt(const struct out_ops *o, void *h, char *args)
{
	o->send(h, last_option, strlen(last_option));
	return 0;
}

static gpg_error_t c_readin(const struct out_ops *o, void *h, int fd)
{
	if (fd < 0)
		return mkerr(GPG_ERR_ASS_NO_INPUT);
	char buf[256];
	ssize_t n = read(fd, buf, sizeof(buf));
	if (n < 0)
		return mkerr(gpg_err_code_from_errno(errno));
	o->send(h, buf, (size_t)n);
	return 0;
}

static gpg_error_t option_common(const char *name, const char *value)
{
	if (strcmp(name, "bad") == 0)
		return mkerr(GPG_ERR_UNKNOWN_OPTION);
	snprintf(last_option, sizeof(last_option), "%s=%s", name, value);
	return 0;
}

/* "<keyword> <maxlen>" */
static int parse_inq(char *args, char **kw, size_t *maxlen)
{
	*kw = args;
	char *sp = strchr(args, ' ');
	if (sp == NULL)
		return -1;
	*sp++ = '\0';
	*maxlen = strtoul(sp, NULL, 10);
	return *maxlen > 0 ? 0 : -1;
}

static const char hello_custom[] = "Interop server\nsecond line\nready";

/* ---- weft --------------------------------------------------------------------------- */

static weft_loop *w_loop;
static weft_timer *w_slow;
static weft_assuan_conn *w_slow_conn;

static int wo_send(void *h, const void *p, size_t n) { return weft_assuan_send_data(h, p, n); }
static int wo_flush(void *h) { return weft_assuan_flush_data(h); }
static int wo_status(void *h, const char *kw, const char *text) { return weft_assuan_write_status(h, kw, text); }
static gpg_error_t wo_seterr(void *h, gpg_error_t e, const char *t) { return weft_assuan_set_error(h, e, t); }
static int wo_okay(void *h, const char *text) { return weft_assuan_set_okay_line(h, text); }

static const struct out_ops w_ops = {wo_send, wo_flush, wo_status, wo_seterr, wo_okay};

#define W_CMD(name) \
	static weft_assuan_err w_##name(weft_assuan_conn *c, char *args, void *data) \
	{ \
		return c_##name(&w_ops, c, args); \
	}
W_CMD(echo)
W_CMD(fail)
W_CMD(okay)
W_CMD(data)
W_CMD(bytes)
W_CMD(status)
W_CMD(getopt)

static weft_assuan_err w_readin(weft_assuan_conn *c, char *args, void *data)
{
	return c_readin(&w_ops, c, weft_assuan_input_fd(c));
}

static weft_assuan_err w_inq_done(weft_assuan_conn *c, weft_assuan_err err, unsigned char *buf,
		size_t len, void *data)
{
	if (err)
		return err;
	weft_assuan_send_data(c, buf, len);
	return 0;
}

static weft_assuan_err w_inq(weft_assuan_conn *c, char *args, void *data)
{
	char *kw;
	size_t maxlen;
	if (parse_inq(args, &kw, &maxlen) < 0)
		return mkerr(GPG_ERR_ASS_PARAMETER);
	if (weft_assuan_inquire(c, kw, maxlen, w_inq_done, NULL) < 0)
		return mkerr(GPG_ERR_GENERAL);
	return WEFT_ASSUAN_PENDING;
}

static void w_slow_fire(weft_timer *t, void *data)
{
	weft_assuan_conn *c = w_slow_conn;
	w_slow_conn = NULL;
	if (c != NULL)
		weft_assuan_process_done(c, 0);
}

static void w_slow_cancel(weft_assuan_conn *c, void *data)
{
	weft_timer_stop(w_slow);
	w_slow_conn = NULL;
}

static weft_assuan_err w_slowcmd(weft_assuan_conn *c, char *args, void *data)
{
	w_slow_conn = c;
	weft_timer_start(w_slow, 30, 0);
	weft_assuan_on_cancel(c, w_slow_cancel, NULL);
	return WEFT_ASSUAN_PENDING;
}

static weft_assuan_err w_option(weft_assuan_conn *c, const char *name, const char *value, void *data)
{
	gpg_error_t e = option_common(name, value);
	return e ? weft_assuan_set_error(c, e, "no such option") : 0;
}

static void w_close(weft_assuan_conn *c, void *data)
{
	weft_loop_stop(w_loop);
}

static void wcheck(int r, const char *what)
{
	if (r < 0) {
		fprintf(stderr, "weft peer: %s: %s\n", what, strerror(-r));
		_exit(3);
	}
}

void peer_run_weft(int fd, enum peer_hello hello)
{
	weft_assuan_server *srv;
	wcheck(weft_loop_new(&w_loop), "loop");
	wcheck(weft_timer_new(w_loop, w_slow_fire, NULL, &w_slow), "timer");
	wcheck(weft_assuan_server_new(w_loop, &srv), "server");
	weft_assuan_server_set_err_source(srv, PEER_ERR_SOURCE);
	if (hello == HELLO_CUSTOM)
		wcheck(weft_assuan_server_set_hello(srv, hello_custom), "hello");
	weft_assuan_hooks hooks = {.close = w_close, .option = w_option};
	weft_assuan_server_set_hooks(srv, &hooks, NULL);
	wcheck(weft_assuan_register(srv, "INPUT", NULL, NULL, NULL), "INPUT");
	wcheck(weft_assuan_register(srv, "OUTPUT", NULL, NULL, NULL), "OUTPUT");
	wcheck(weft_assuan_register(srv, "ECHO", w_echo, NULL, help_echo), "ECHO");
	wcheck(weft_assuan_register(srv, "FAIL", w_fail, NULL, help_fail), "FAIL");
	wcheck(weft_assuan_register(srv, "OKAY", w_okay, NULL, NULL), "OKAY");
	wcheck(weft_assuan_register(srv, "DATA", w_data, NULL, help_data), "DATA");
	wcheck(weft_assuan_register(srv, "BYTES", w_bytes, NULL, "BYTES"), "BYTES");
	wcheck(weft_assuan_register(srv, "STATUS", w_status, NULL, NULL), "STATUS");
	wcheck(weft_assuan_register(srv, "GETOPT", w_getopt, NULL, NULL), "GETOPT");
	wcheck(weft_assuan_register(srv, "INQ", w_inq, NULL, help_inq), "INQ");
	wcheck(weft_assuan_register(srv, "SLOW", w_slowcmd, NULL, NULL), "SLOW");
	wcheck(weft_assuan_register(srv, "READIN", w_readin, NULL, NULL), "READIN");
	wcheck(weft_assuan_server_adopt_fd(srv, fd, NULL), "adopt");
	wcheck(weft_loop_run(w_loop, WEFT_RUN_DEFAULT), "run");
	weft_assuan_server_free(srv);
	weft_timer_free(w_slow);
	weft_loop_free(w_loop);
	exit(0); /* not _exit: a sanitizer build checks for leaks */
}

/* ---- libassuan ----------------------------------------------------------------------- */

static int lo_send(void *h, const void *p, size_t n) { return assuan_send_data(h, p, n) ? -EIO : 0; }
static int lo_flush(void *h) { return assuan_send_data(h, NULL, 0) ? -EIO : 0; }
static int lo_status(void *h, const char *kw, const char *text) { return assuan_write_status(h, kw, text) ? -EIO : 0; }
static gpg_error_t lo_seterr(void *h, gpg_error_t e, const char *t) { return assuan_set_error(h, e, t); }
static int lo_okay(void *h, const char *text) { return assuan_set_okay_line(h, text) ? -EIO : 0; }

static const struct out_ops l_ops = {lo_send, lo_flush, lo_status, lo_seterr, lo_okay};

#define L_CMD(name) \
	static gpg_error_t l_##name(assuan_context_t ctx, char *args) \
	{ \
		return c_##name(&l_ops, ctx, args); \
	}
L_CMD(echo)
L_CMD(fail)
L_CMD(okay)
L_CMD(data)
L_CMD(bytes)
L_CMD(status)
L_CMD(getopt)

static gpg_error_t l_readin(assuan_context_t ctx, char *args)
{
	return c_readin(&l_ops, ctx, assuan_get_input_fd(ctx));
}

static gpg_error_t l_inq(assuan_context_t ctx, char *args)
{
	char *kw;
	size_t maxlen;
	if (parse_inq(args, &kw, &maxlen) < 0)
		return mkerr(GPG_ERR_ASS_PARAMETER);
	unsigned char *buf = NULL;
	size_t len = 0;
	gpg_error_t e = assuan_inquire(ctx, kw, &buf, &len, maxlen);
	if (e == 0)
		assuan_send_data(ctx, buf, len);
	assuan_free(ctx, buf);
	return e;
}

static gpg_error_t l_slow(assuan_context_t ctx, char *args)
{
	usleep(30000);
	return 0;
}

static gpg_error_t l_option(assuan_context_t ctx, const char *name, const char *value)
{
	gpg_error_t e = option_common(name, value);
	return e ? assuan_set_error(ctx, e, "no such option") : 0;
}

static void lcheck(gpg_error_t e, const char *what)
{
	if (e) {
		fprintf(stderr, "libassuan peer: %s: %s\n", what, gpg_strerror(e));
		_exit(3);
	}
}

void peer_run_libassuan(int fd, enum peer_hello hello)
{
	assuan_context_t ctx;
	assuan_set_gpg_err_source(PEER_ERR_SOURCE); /* the default of new contexts */
	lcheck(assuan_new(&ctx), "new");
	lcheck(assuan_init_socket_server(ctx, fd, ASSUAN_SOCKET_SERVER_FDPASSING | ASSUAN_SOCKET_SERVER_ACCEPTED),
			"init");
	if (hello == HELLO_CUSTOM)
		lcheck(assuan_set_hello_line(ctx, hello_custom), "hello");
	lcheck(assuan_register_option_handler(ctx, l_option), "option");
	lcheck(assuan_register_command(ctx, "INPUT", NULL, NULL), "INPUT");
	lcheck(assuan_register_command(ctx, "OUTPUT", NULL, NULL), "OUTPUT");
	lcheck(assuan_register_command(ctx, "ECHO", l_echo, help_echo), "ECHO");
	lcheck(assuan_register_command(ctx, "FAIL", l_fail, help_fail), "FAIL");
	lcheck(assuan_register_command(ctx, "OKAY", l_okay, NULL), "OKAY");
	lcheck(assuan_register_command(ctx, "DATA", l_data, help_data), "DATA");
	lcheck(assuan_register_command(ctx, "BYTES", l_bytes, "BYTES"), "BYTES");
	lcheck(assuan_register_command(ctx, "STATUS", l_status, NULL), "STATUS");
	lcheck(assuan_register_command(ctx, "GETOPT", l_getopt, NULL), "GETOPT");
	lcheck(assuan_register_command(ctx, "INQ", l_inq, help_inq), "INQ");
	lcheck(assuan_register_command(ctx, "SLOW", l_slow, NULL), "SLOW");
	lcheck(assuan_register_command(ctx, "READIN", l_readin, NULL), "READIN");
	lcheck(assuan_accept(ctx), "accept");
	assuan_process(ctx); /* until BYE, EOF or an error (it drops the connection then) */
	assuan_release(ctx);
	_exit(0); /* libassuan's allocations are not ours to leak-check */
}

/* ---- libassuan with assuan_process_next (the external-loop API) ------------------- */

/* Only SLOW (answers 30 ms later, from the poll loop) and ECHO: enough to
 * show what happens to a line that arrives while a command is pending. */
static bool ln_pending;

static gpg_error_t ln_slow(assuan_context_t ctx, char *args)
{
	ln_pending = true; /* no assuan_process_done: the command stays open */
	return 0;
}

static gpg_error_t ln_echo(assuan_context_t ctx, char *args)
{
	assuan_send_data(ctx, args, strlen(args));
	return assuan_process_done(ctx, 0);
}

void peer_run_libassuan_next(int fd)
{
	assuan_context_t ctx;
	assuan_set_gpg_err_source(PEER_ERR_SOURCE);
	lcheck(assuan_new(&ctx), "new");
	lcheck(assuan_init_socket_server(ctx, fd, ASSUAN_SOCKET_SERVER_ACCEPTED), "init");
	lcheck(assuan_set_hello_line(ctx, hello_custom), "hello");
	lcheck(assuan_register_command(ctx, "SLOW", ln_slow, NULL), "SLOW");
	lcheck(assuan_register_command(ctx, "ECHO", ln_echo, help_echo), "ECHO");
	lcheck(assuan_accept(ctx), "accept");
	for (;;) {
		struct pollfd p = {fd, POLLIN, 0};
		int r = poll(&p, 1, ln_pending ? 30 : -1);
		if (r == 0 && ln_pending) {
			ln_pending = false;
			assuan_process_done(ctx, 0);
			continue;
		}
		int done = 0;
		if (assuan_process_next(ctx, &done) || done)
			break;
	}
	assuan_release(ctx);
	_exit(0);
}
