/* The external backend: weft's interest goes out through the embedding
 * program's callbacks (watch an fd, call me in T ms) and readiness comes back
 * through weft_loop_process_fd / weft_loop_process_timeout.  The libevent,
 * libuv and GLib adapters are thin users of this file's contract. */
#include "loop-private.h"

#include <errno.h>
#include <limits.h>

int weft__external_ctl(weft_loop *loop, int fd, unsigned old_events, unsigned new_events)
{
	(void)old_events;
	return loop->ops.watch(loop, fd, new_events, loop->slots[fd].fd_data, loop->user);
}

void weft__external_report_timer(weft_loop *loop)
{
	uint64_t deadline = weft__next_deadline(loop);
	if (loop->reported_any && deadline == loop->reported_deadline)
		return;
	loop->reported_any = true;
	loop->reported_deadline = deadline;
	loop->ops.timer(loop, weft_loop_get_timeout(loop), loop->user);
}

/* After a dispatch: say what the outer loop must do next.  The outer timer
 * that brought us here is spent, so the deadline is reported even if it
 * looks unchanged. */
static void end_dispatch(weft_loop *loop, bool timer_spent)
{
	loop->dispatching--;
	if (loop->dispatching > 0)
		return;
	if (timer_spent)
		loop->reported_any = false;
	weft__external_report_timer(loop);
}

int weft_loop_process_fd(weft_loop *loop, int fd, unsigned revents)
{
	if (loop == NULL || loop->kind != WEFT__BACKEND_EXTERNAL || fd < 0)
		return -EINVAL;
	if ((size_t)fd >= loop->nslots)
		return 0;
	loop->dispatching++;
	loop->now_stale = true; /* weft_loop_now reads the clock if asked */
	weft__io_dispatch(loop, fd, loop->slots[fd].gen, revents);
	end_dispatch(loop, false);
	return 0;
}

int weft_loop_process_timeout(weft_loop *loop)
{
	if (loop == NULL || loop->kind != WEFT__BACKEND_EXTERNAL)
		return -EINVAL;
	loop->dispatching++;
	weft__run_timers(loop, true);
	weft__run_defers(loop);
	end_dispatch(loop, true);
	return 0;
}
