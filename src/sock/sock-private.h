/* Internals shared by the files of the sockets module (src/sock/). */
#ifndef WEFT_SOCK_PRIVATE_H
#define WEFT_SOCK_PRIVATE_H

#include <weft/sock.h>

#include "list.h"

/* How many bytes the stream core reads ahead past the caller's vector, so
 * one syscall can fill a small PDU and keep what follows. */
#define WEFT__READAHEAD 16384

/* A stream's requests, each linked here so closing the stream can cancel
 * them wherever they wait (a foreign queue included). */
struct weft__stream_op {
	struct weft__list link;
	weft_stream *s; /* NULL once detached */
	weft_req *req;
};

/* The vtable a stream was made with (to recognise our own transports). */
const weft_stream_ops *weft__stream_ops(const weft_stream *s);

/* Set O_NONBLOCK and FD_CLOEXEC on an fd we were handed. */
int weft__fd_prepare(int fd);

/* Bind addr to fd, handling stale Unix socket files (replace_stale) and
 * recording what a later unlink must check.  Used by listeners and
 * datagram sockets. */
struct weft__bound_path {
	char path[108];
	dev_t dev;
	ino_t ino;
	bool set;
};
int weft__bind(int fd, const weft_addr *addr, bool replace_stale, struct weft__bound_path *ret_bound);
void weft__unlink_bound(const struct weft__bound_path *bound);

#endif
