/* weft on GLib: one GSource per weft loop.  Watched fds are added to it with
 * g_source_add_unix_fd and weft's next deadline is its ready time, so GLib's
 * own poll does all the waiting. */
#include <errno.h>
#include <stdlib.h>

#include <glib.h>

#include <weft/adapters.h>

struct glib_source {
	GSource source;
	weft_loop *loop;
	gpointer *tags; /* indexed by fd: the tag of g_source_add_unix_fd */
	int *fds;       /* the watched fds, for dispatch */
	size_t nfds, cap_fds, ntags;
};

static GIOCondition to_cond(unsigned events)
{
	GIOCondition c = 0;
	if (events & WEFT_IO_READ)
		c |= G_IO_IN;
	if (events & WEFT_IO_WRITE)
		c |= G_IO_OUT;
	return c;
}

static gboolean gsrc_check(GSource *source)
{
	struct glib_source *s = (struct glib_source *)source;
	for (size_t i = 0; i < s->nfds; i++)
		if (g_source_query_unix_fd(source, s->tags[s->fds[i]]) != 0)
			return TRUE;
	return FALSE;
}

static gboolean gsrc_dispatch(GSource *source, GSourceFunc callback, gpointer user_data)
{
	struct glib_source *s = (struct glib_source *)source;
	(void)callback;
	(void)user_data;
	gint64 ready = g_source_get_ready_time(source);
	if (ready >= 0 && g_source_get_time(source) >= ready) {
		g_source_set_ready_time(source, -1);
		weft_loop_process_timeout(s->loop);
	}
	/* Callbacks may add or remove fds: work on a copy of the list and look
	 * each fd's tag up again before asking for its condition. */
	size_t n = s->nfds;
	int stack[64];
	int *fds = n <= 64 ? stack : g_new(int, n);
	for (size_t i = 0; i < n; i++)
		fds[i] = s->fds[i];
	for (size_t i = 0; i < n; i++) {
		int fd = fds[i];
		if ((size_t)fd >= s->ntags || s->tags[fd] == NULL)
			continue;
		GIOCondition c = g_source_query_unix_fd(source, s->tags[fd]);
		if (c == 0)
			continue;
		unsigned rev = 0;
		if (c & G_IO_IN)
			rev |= WEFT_IO_READ;
		if (c & G_IO_OUT)
			rev |= WEFT_IO_WRITE;
		if (c & G_IO_ERR)
			rev |= WEFT_IO_ERR;
		if (c & G_IO_HUP)
			rev |= WEFT_IO_HUP;
		weft_loop_process_fd(s->loop, fd, rev);
	}
	if (fds != stack)
		g_free(fds);
	return G_SOURCE_CONTINUE;
}

static void gsrc_finalize(GSource *source)
{
	struct glib_source *s = (struct glib_source *)source;
	g_free(s->tags);
	g_free(s->fds);
}

static GSourceFuncs gsrc_funcs = {
	.prepare = NULL,
	.check = gsrc_check,
	.dispatch = gsrc_dispatch,
	.finalize = gsrc_finalize,
};

static int remember_fd(struct glib_source *s, int fd, gpointer tag)
{
	if ((size_t)fd >= s->ntags) {
		size_t n = s->ntags ? s->ntags : 64;
		while (n <= (size_t)fd)
			n *= 2;
		gpointer *t = g_try_renew(gpointer, s->tags, n);
		if (t == NULL)
			return -ENOMEM;
		for (size_t i = s->ntags; i < n; i++)
			t[i] = NULL;
		s->tags = t;
		s->ntags = n;
	}
	if (s->nfds == s->cap_fds) {
		size_t n = s->cap_fds ? s->cap_fds * 2 : 16;
		int *f = g_try_renew(int, s->fds, n);
		if (f == NULL)
			return -ENOMEM;
		s->fds = f;
		s->cap_fds = n;
	}
	s->tags[fd] = tag;
	s->fds[s->nfds++] = fd;
	return 0;
}

static void forget_fd(struct glib_source *s, int fd)
{
	s->tags[fd] = NULL;
	for (size_t i = 0; i < s->nfds; i++) {
		if (s->fds[i] == fd) {
			s->fds[i] = s->fds[--s->nfds];
			break;
		}
	}
}

static int gla_watch(weft_loop *loop, int fd, unsigned events, void *fd_data, void *user)
{
	struct glib_source *s = user;
	GSource *source = &s->source;
	(void)loop;
	(void)fd_data;
	gpointer tag = (size_t)fd < s->ntags ? s->tags[fd] : NULL;
	if (events == 0) {
		if (tag != NULL) {
			g_source_remove_unix_fd(source, tag);
			forget_fd(s, fd);
		}
		return 0;
	}
	if (tag != NULL) {
		g_source_modify_unix_fd(source, tag, to_cond(events));
		return 0;
	}
	tag = g_source_add_unix_fd(source, fd, to_cond(events));
	int r = remember_fd(s, fd, tag);
	if (r < 0)
		g_source_remove_unix_fd(source, tag);
	return r;
}

static void gla_timer(weft_loop *loop, int64_t timeout_ms, void *user)
{
	struct glib_source *s = user;
	(void)loop;
	if (timeout_ms < 0)
		g_source_set_ready_time(&s->source, -1);
	else
		g_source_set_ready_time(&s->source, g_get_monotonic_time() + timeout_ms * 1000);
}

static void gla_release(weft_loop *loop, void *user)
{
	GSource *source = user;
	(void)loop;
	g_source_destroy(source);
	g_source_unref(source);
}

int weft_loop_new_glib(struct _GMainContext *ctx, weft_loop **ret_loop)
{
	if (ret_loop == NULL)
		return -EINVAL;
	GSource *source = g_source_new(&gsrc_funcs, sizeof(struct glib_source));
	g_source_set_name(source, "weft");
	static const weft_loop_ops ops = {.watch = gla_watch, .timer = gla_timer, .release = gla_release};
	struct glib_source *s = (struct glib_source *)source;
	int r = weft_loop_new_external(&ops, s, &s->loop);
	if (r < 0) {
		g_source_unref(source);
		return r;
	}
	g_source_attach(source, ctx);
	*ret_loop = s->loop;
	return 0;
}
