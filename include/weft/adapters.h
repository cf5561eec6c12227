/* weft — running weft on another event loop: libevent, libuv or GLib.
 *
 * Each function creates a weft loop whose fds and timer are watched by the
 * given outer loop (built on the external backend of loop.h).  Everything
 * in weft works on it unchanged; the outer loop runs it.  Free it with
 * weft_loop_free() as usual, before the outer loop is destroyed.
 *
 * Each adapter is its own library, built when its meson feature finds the
 * dependency: libweft-libevent (pkg-config weft-libevent), libweft-libuv
 * (weft-libuv), libweft-glib (weft-glib).
 *
 * Returns 0 and sets *ret_loop, or -EINVAL / -ENOMEM or the outer loop's
 * error for the wake-up fd.
 */
#ifndef WEFT_ADAPTERS_H
#define WEFT_ADAPTERS_H

#include <weft/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;
struct uv_loop_s;
struct _GMainContext;

/* libevent 2.1: one persistent event per watched fd, one timer event.
 * libevent has no per-event reference count, so event_base_dispatch() keeps
 * running while weft has an fd watched (always: its wake-up fd); end it with
 * event_base_loopexit() when weft_loop_alive() turns false, or run it with
 * EVLOOP_ONCE / EVLOOP_NONBLOCK. */
WEFT_EXPORT int weft_loop_new_libevent(struct event_base *base, weft_loop **ret_loop);

/* libuv 1.x: one uv_poll_t per watched fd, one uv_timer_t.  The adapter's
 * handles keep uv_run(UV_RUN_DEFAULT) alive exactly while weft_loop_alive()
 * is true, so uv_run returns when neither libuv nor weft has work left.
 * weft_loop_free() closes the handles; run the uv loop once more afterwards
 * (as with any uv_close) so their memory is released. */
WEFT_EXPORT int weft_loop_new_libuv(struct uv_loop_s *uv, weft_loop **ret_loop);

/* GLib 2.x: one GSource attached to ctx (NULL: the global default context)
 * with the watched fds added through g_source_add_unix_fd and weft's
 * deadline as its ready time. */
WEFT_EXPORT int weft_loop_new_glib(struct _GMainContext *ctx, weft_loop **ret_loop);

#ifdef __cplusplus
}
#endif

#endif
