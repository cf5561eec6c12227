/* The built-in backend: epoll, level-triggered unless an internal owner
 * asked for edges (weft__io_set_edge).  Each registration carries the fd
 * and its slot generation, so an event collected for a watcher that was
 * stopped, freed, or replaced by another on a reused fd number is dropped
 * instead of reaching the wrong callback. */
#include "loop-private.h"

#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>

#define WEFT__EPOLL_BATCH 256

int weft__epoll_init(weft_loop *loop)
{
	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	return loop->epfd < 0 ? -errno : 0;
}

void weft__epoll_fini(weft_loop *loop)
{
	if (loop->epfd >= 0)
		close(loop->epfd);
	loop->epfd = -1;
}

_Static_assert((unsigned)EPOLLIN == (unsigned)WEFT_IO_READ && (unsigned)EPOLLOUT >> 1 == (unsigned)WEFT_IO_WRITE &&
               (unsigned)EPOLLERR >> 1 == (unsigned)WEFT_IO_ERR && (unsigned)EPOLLHUP >> 1 == (unsigned)WEFT_IO_HUP &&
               ((unsigned)EPOLLPRI >> 1 & (WEFT_IO_WRITE | WEFT_IO_ERR | WEFT_IO_HUP)) == 0,
               "the event conversion in weft__epoll_poll");

static uint32_t to_epoll(unsigned events)
{
	uint32_t e = 0;
	if (events & WEFT_IO_READ)
		e |= EPOLLIN;
	if (events & WEFT_IO_WRITE)
		e |= EPOLLOUT;
	return e;
}

int weft__epoll_ctl(weft_loop *loop, int fd, unsigned old_events, unsigned new_events)
{
	struct epoll_event ev = {0};
	int op;
	if (new_events == 0) {
		op = EPOLL_CTL_DEL;
	} else {
		op = old_events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
		ev.events = to_epoll(new_events);
		const weft_io *io = loop->slots[fd].io;
		if (io != NULL && io->edge) {
			/* Level-triggered, epoll_wait re-polls each fd it reported
			 * on the next call (an extra poll of the socket per message
			 * on a ping-pong); edges do not. */
			ev.events |= EPOLLET;
			if (new_events & WEFT_IO_READ)
				ev.events |= EPOLLRDHUP | EPOLLPRI; /* see weft__epoll_level */
		}
		ev.data.u64 = (uint64_t)(uint32_t)fd | ((uint64_t)loop->slots[fd].gen << 32);
	}
	if (epoll_ctl(loop->epfd, op, fd, &ev) == 0)
		return 0;
	int err = errno;
	if (op == EPOLL_CTL_DEL)
		return 0; /* closed already (EBADF) or gone: nothing left to stop */
	if (op == EPOLL_CTL_ADD && err == EEXIST) {
		/* A dup of a closed fd still registered under this number. */
		if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &ev) == 0)
			return 0;
		err = errno;
	}
	if (err == EPERM)
		return -EPERM; /* a regular file: not pollable */
	return -err;
}

/* An edge-triggered watcher saw the end of the stream, an error or urgent
 * data: from now on a short read does not prove the socket empty, so it
 * goes back to level-triggered (the MOD re-polls, and reports again what
 * is still pending). */
void weft__epoll_level(weft_loop *loop, int fd, uint32_t gen)
{
	if (fd < 0 || (size_t)fd >= loop->nslots)
		return;
	struct weft__slot *slot = &loop->slots[fd];
	if (slot->io != NULL && slot->gen == gen && slot->io->edge)
		weft__io_set_edge(slot->io, false);
}

int weft__epoll_poll(weft_loop *loop, int timeout_ms)
{
	struct epoll_event events[WEFT__EPOLL_BATCH];
	int n = epoll_wait(loop->epfd, events, WEFT__EPOLL_BATCH, timeout_ms);
	if (n < 0)
		return errno == EINTR ? 0 : -errno;
	loop->dispatching++;
	for (int i = 0; i < n; i++) {
		uint32_t e = events[i].events;
		/* EPOLLOUT, EPOLLERR and EPOLLHUP sit one bit above WEFT_IO_WRITE,
		 * WEFT_IO_ERR and WEFT_IO_HUP (asserted above): two shifts and
		 * masks instead of four tests per event. */
		unsigned rev = (e & EPOLLIN) | ((e >> 1) & (WEFT_IO_WRITE | WEFT_IO_ERR | WEFT_IO_HUP));
		uint64_t u = events[i].data.u64;
		if (e & (EPOLLRDHUP | EPOLLPRI | EPOLLERR | EPOLLHUP))
			weft__epoll_level(loop, (int)(uint32_t)u, (uint32_t)(u >> 32));
		weft__io_dispatch(loop, (int)(uint32_t)u, (uint32_t)(u >> 32), rev);
	}
	loop->dispatching--;
	return n;
}
