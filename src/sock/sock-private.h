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

/* Stacked transports (TLS over any stream).  weft__stream_take hands the
 * transport of s to another layer: from then on readiness of s goes to
 * hook(data, revents) instead of s's own requests, and the taker reads,
 * writes and watches through weft__stream_raw_*, which call s's ops
 * directly (raw_readv first returns bytes s had read ahead).  s must have
 * no request attached (-EBUSY).  The taker closes s with weft_stream_close
 * when done. */
/* Another layer reads a socket stream its own way (weft__stream_take):
 * its watcher goes back to level-triggered. */
void weft__sock_stream_level(weft_stream *s);

typedef void (*weft__stream_hook_fn)(void *data, unsigned revents);
int weft__stream_take(weft_stream *s, weft__stream_hook_fn hook, void *data);
/* Give the transport back: s serves its own requests again (its watch
 * stays what the taker left until they need another). */
void weft__stream_untake(weft_stream *s);
ssize_t weft__stream_raw_readv(weft_stream *s, const struct iovec *iov, int count);
ssize_t weft__stream_raw_writev(weft_stream *s, const struct iovec *iov, int count);
int weft__stream_raw_shutdown(weft_stream *s);
int weft__stream_raw_watch(weft_stream *s, unsigned events);
size_t weft__stream_raw_pending(const weft_stream *s);

/* The loop of a datagram socket (DTLS takes sockets over). */
weft_loop *weft__dgram_loop(const weft_dgram *d);

#endif
