/* Name resolution on the loop: weft_resolve_send / weft_resolve_recv.
 *
 * A numeric address (anything weft_addr_parse accepts) completes inside
 * _send with that one address (the callback is posted).  A host name
 * ("tcp:NAME:PORT", "udp:NAME:PORT": weft_addr_parse said -EADDRNOTAVAIL)
 * goes to c-ares when weft is built with it, and fails with EAFNOSUPPORT
 * otherwise.
 *
 * The c-ares backend: one ares channel per request, created in _send and
 * destroyed by the request's cleanup (FINISHED or FREED, whichever comes
 * first).  c-ares tells us which sockets it wants watched through
 * ARES_OPT_SOCK_STATE_CB; each gets a weft_io that calls ares_process_fd,
 * and one weft_timer follows ares_timeout() for c-ares's own retries.
 *
 * Nothing completes the request from inside a c-ares callback: the answer
 * callback only records the result, and the request is completed by our
 * own code once c-ares has returned (after ares_getaddrinfo in _send, or
 * after ares_process_fd in the io and timer callbacks).  The user's
 * callback, and so any weft_req_free, therefore never runs while c-ares is
 * on the stack, and the cleanup may call ares_destroy directly.  The answer
 * callback ares_destroy makes (ARES_EDESTRUCTION) and the socket-state
 * callbacks it makes while closing sockets find the state still alive (the
 * cleanup runs before the request's memory goes) and only release.
 */
#include <weft/sock.h>

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char resolve_name_tag[] = "resolve";

struct resolve_state;

/* The one name-resolution backend this build has (below). */
static void resolve_name(weft_req *req, weft_addr_kind kind, const char *host, size_t host_len,
		uint16_t port);
static void resolve_release(struct resolve_state *s);

#ifdef WEFT_HAVE_CARES

#include <ares.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/time.h>

/* c-ares's per-try timeout and number of tries per server.  c-ares doubles
 * the timeout on each round, so a query no server answers fails with
 * ETIMEDOUT after TIMEOUT_MS * (2^TRIES - 1) = 6 s with one server
 * (measured); each further server adds its share.  Callers who need a
 * bound set one with weft_req_set_timeout. */
#define RESOLVE_TIMEOUT_MS 2000
#define RESOLVE_TRIES 2

struct resolve_watch {
	ares_socket_t fd;
	weft_io *io;
};

struct resolve_state {
	weft_addr *addrs; /* the result, handed out by _recv */
	size_t naddrs;

	weft_addr_kind kind;
	uint16_t port;
	ares_channel channel;
	bool channel_live;
	struct resolve_watch *watches;
	size_t nwatches, capwatches;
	weft_timer *timer;
	unsigned in_ares; /* depth of calls into c-ares */
	bool answered;    /* the answer callback ran: err holds the outcome */
	int err;          /* positive errno of the answer, 0 on success */
	int watch_err;    /* a watcher could not be set up (negative errno) */
	bool destroying;  /* inside ares_destroy: callbacks only release */
};

/* ---- library initialisation --------------------------------------------- */

static pthread_once_t cares_once = PTHREAD_ONCE_INIT;
static int cares_init_status = ARES_ENOTINITIALIZED;

static void cares_init(void)
{
	cares_init_status = ares_library_init(ARES_LIB_INIT_ALL);
}

/* c-ares status -> positive errno.
 *   ENOTFOUND, ENONAME, ENODATA (no such name, or no address of any
 *                      family for it)               -> ENOENT
 *   ETIMEOUT                                        -> ETIMEDOUT
 *   ECONNREFUSED (no server reachable)              -> ECONNREFUSED
 *   ENOMEM                                          -> ENOMEM
 *   ECANCELLED, EDESTRUCTION                        -> ECANCELED
 *   EBADNAME (c-ares rejected the name)             -> EINVAL
 *   everything else (SERVFAIL, REFUSED, bad
 *   responses, unreadable configuration, ...)       -> EAGAIN: temporary */
static int cares_errno(int status)
{
	switch (status) {
	case ARES_SUCCESS:
		return 0;
	case ARES_ENOTFOUND:
	case ARES_ENONAME:
	case ARES_ENODATA:
		return ENOENT;
	case ARES_ETIMEOUT:
		return ETIMEDOUT;
	case ARES_ECONNREFUSED:
		return ECONNREFUSED;
	case ARES_ENOMEM:
		return ENOMEM;
	case ARES_ECANCELLED:
	case ARES_EDESTRUCTION:
		return ECANCELED;
	case ARES_EBADNAME:
		return EINVAL;
	default:
		return EAGAIN;
	}
}

/* ---- the answer ------------------------------------------------------------ */

static bool addr_listed(const weft_addr *addrs, size_t n, const weft_addr *a)
{
	for (size_t i = 0; i < n; i++)
		if (weft_addr_equal(&addrs[i], a))
			return true;
	return false;
}

/* Copy the answer's addresses, IPv4 first, otherwise in c-ares's order,
 * without duplicates; set the port and kind.  Returns a positive errno. */
static int take_answer(struct resolve_state *s, const struct ares_addrinfo *res)
{
	size_t count = 0;
	for (const struct ares_addrinfo_node *n = res->nodes; n != NULL; n = n->ai_next)
		count++;
	if (count == 0)
		return ENOENT;
	weft_addr *addrs = calloc(count, sizeof(*addrs));
	if (addrs == NULL)
		return ENOMEM;
	size_t used = 0;
	static const int families[] = {AF_INET, AF_INET6};
	for (size_t f = 0; f < sizeof(families) / sizeof(families[0]); f++) {
		for (const struct ares_addrinfo_node *n = res->nodes; n != NULL; n = n->ai_next) {
			weft_addr a;
			if (n->ai_family != families[f] || n->ai_addr == NULL ||
			    weft_addr_from_sockaddr(n->ai_addr, (socklen_t)n->ai_addrlen, s->kind, &a) < 0)
				continue;
			if (families[f] == AF_INET)
				((struct sockaddr_in *)&a.u.ss)->sin_port = htons(s->port);
			else
				((struct sockaddr_in6 *)&a.u.ss)->sin6_port = htons(s->port);
			if (!addr_listed(addrs, used, &a))
				addrs[used++] = a;
		}
	}
	if (used == 0) {
		free(addrs);
		return ENOENT;
	}
	s->addrs = addrs;
	s->naddrs = used;
	return 0;
}

/* c-ares's answer: record it; settle() completes the request once c-ares
 * has returned.  On success res is ours to free. */
static void answer_cb(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
	weft_req *req = arg;
	struct resolve_state *s = weft_req_state(req);
	(void)timeouts;
	if (!s->destroying && !s->answered) {
		s->answered = true;
		if (status == ARES_SUCCESS)
			s->err = res != NULL ? take_answer(s, res) : ENOENT;
		else
			s->err = cares_errno(status);
	}
	if (res != NULL)
		ares_freeaddrinfo(res);
}

/* ---- watchers and the timer ------------------------------------------------ */

static void settle(weft_req *req);

static struct resolve_watch *find_watch(struct resolve_state *s, ares_socket_t fd)
{
	for (size_t i = 0; i < s->nwatches; i++)
		if (s->watches[i].fd == fd)
			return &s->watches[i];
	return NULL;
}

static void drop_watch(struct resolve_state *s, struct resolve_watch *w)
{
	weft_io_free(w->io);
	*w = s->watches[--s->nwatches];
}

static void io_cb(weft_io *io, unsigned revents, void *data)
{
	weft_req *req = data;
	struct resolve_state *s = weft_req_state(req);
	ares_socket_t fd = (ares_socket_t)weft_io_fd(io);
	/* c-ares closes or changes sockets from inside ares_process_fd, which
	 * may free this very watcher: io is not touched afterwards. */
	s->in_ares++;
	ares_process_fd(s->channel, (revents & WEFT_IO_READ) ? fd : ARES_SOCKET_BAD,
			(revents & WEFT_IO_WRITE) ? fd : ARES_SOCKET_BAD);
	s->in_ares--;
	settle(req);
}

static void timer_cb(weft_timer *timer, void *data)
{
	weft_req *req = data;
	struct resolve_state *s = weft_req_state(req);
	(void)timer;
	s->in_ares++;
	ares_process_fd(s->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	s->in_ares--;
	settle(req);
}

/* c-ares wants fd watched for reading and/or writing, or (both false) is
 * about to close it. */
static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
	weft_req *req = data;
	struct resolve_state *s = weft_req_state(req);
	unsigned events = (readable ? WEFT_IO_READ : 0u) | (writable ? WEFT_IO_WRITE : 0u);
	struct resolve_watch *w = find_watch(s, fd);
	if (events == 0 || s->destroying) {
		if (w != NULL)
			drop_watch(s, w);
		return;
	}
	if (w == NULL) {
		if (s->nwatches == s->capwatches) {
			size_t cap = s->capwatches ? s->capwatches * 2 : 4;
			struct resolve_watch *grown = realloc(s->watches, cap * sizeof(*grown));
			if (grown == NULL) {
				s->watch_err = -ENOMEM;
				return;
			}
			s->watches = grown;
			s->capwatches = cap;
		}
		weft_io *io;
		int r = weft_io_new(weft_req_loop(req), (int)fd, io_cb, req, &io);
		if (r < 0) {
			s->watch_err = r;
			return;
		}
		w = &s->watches[s->nwatches++];
		w->fd = fd;
		w->io = io;
	}
	int r = weft_io_start(w->io, events);
	if (r < 0)
		s->watch_err = r;
}

/* Arm the timer for c-ares's next own deadline, or stop it. */
static int arm_timer(weft_req *req)
{
	struct resolve_state *s = weft_req_state(req);
	struct timeval tv;
	if (ares_timeout(s->channel, NULL, &tv) == NULL) {
		weft_timer_stop(s->timer);
		return 0;
	}
	/* Rounded up: firing early would only re-arm. */
	uint64_t ms = (uint64_t)tv.tv_sec * 1000u + ((uint64_t)tv.tv_usec + 999u) / 1000u;
	return weft_timer_start(s->timer, ms, 0);
}

/* After every call into c-ares: complete the request if c-ares answered or
 * a watcher failed, otherwise follow c-ares's new deadline.  The request
 * may be gone when this returns (its callback runs synchronously, except
 * inside _send where it is posted). */
static void settle(weft_req *req)
{
	struct resolve_state *s = weft_req_state(req);
	if (s->answered) {
		if (!weft_req_error(req, s->err))
			weft_req_done(req);
		return;
	}
	if (weft_req_error(req, s->watch_err))
		return;
	weft_req_error(req, arm_timer(req));
}

/* ---- lifetime ------------------------------------------------------------------ */

static void resolve_release(struct resolve_state *s)
{
	/* Never from inside c-ares: see the top of this file. */
	assert(s->in_ares == 0);
	if (s->channel_live) {
		s->destroying = true;
		ares_destroy(s->channel); /* closes its sockets: watchers drop */
		s->channel_live = false;
		s->destroying = false;
	}
	while (s->nwatches > 0)
		drop_watch(s, &s->watches[s->nwatches - 1]);
	free(s->watches);
	s->watches = NULL;
	s->capwatches = 0;
	weft_timer_free(s->timer);
	s->timer = NULL;
}

static void resolve_name(weft_req *req, weft_addr_kind kind, const char *host, size_t host_len,
		uint16_t port)
{
	struct resolve_state *s = weft_req_state(req);
	s->kind = kind;
	s->port = port;

	pthread_once(&cares_once, cares_init);
	if (weft_req_error(req, cares_errno(cares_init_status)))
		return;

	char name[256];
	if (host_len >= sizeof(name)) {
		weft_req_error(req, EINVAL);
		return;
	}
	memcpy(name, host, host_len);
	name[host_len] = '\0';

	if (weft_req_error(req, weft_timer_new(weft_req_loop(req), timer_cb, req, &s->timer)))
		return;

	struct ares_options opts;
	memset(&opts, 0, sizeof(opts));
	opts.sock_state_cb = sock_state_cb;
	opts.sock_state_cb_data = req;
	opts.timeout = RESOLVE_TIMEOUT_MS;
	opts.tries = RESOLVE_TRIES;
	int status = ares_init_options(&s->channel, &opts,
			ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
	if (status != ARES_SUCCESS) {
		weft_req_error(req, cares_errno(status));
		return;
	}
	s->channel_live = true;

	struct ares_addrinfo_hints hints;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = kind == WEFT_ADDR_UDP ? SOCK_DGRAM : SOCK_STREAM;
	/* An answer from /etc/hosts arrives inside this call. */
	s->in_ares++;
	ares_getaddrinfo(s->channel, name, NULL, &hints, answer_cb, req);
	s->in_ares--;
	settle(req); /* inside _send: a completion is posted */
}

#else /* !WEFT_HAVE_CARES */

struct resolve_state {
	weft_addr *addrs;
	size_t naddrs;
};

static void resolve_name(weft_req *req, weft_addr_kind kind, const char *host, size_t host_len,
		uint16_t port)
{
	(void)kind;
	(void)host;
	(void)host_len;
	(void)port;
	weft_req_error(req, EAFNOSUPPORT);
}

static void resolve_release(struct resolve_state *s)
{
	(void)s;
}

#endif /* WEFT_HAVE_CARES */

/* ---- the request ------------------------------------------------------------- */

static void resolve_cleanup(weft_req *req, weft_req_stage stage)
{
	struct resolve_state *s = weft_req_state(req);
	resolve_release(s);
	if (stage == WEFT_REQ_STAGE_FREED) {
		free(s->addrs);
		s->addrs = NULL;
		s->naddrs = 0;
	}
}

/* text is "tcp:HOST:PORT" or "udp:HOST:PORT" that weft_addr_parse found
 * well formed with HOST a name: split it (the port is known to be valid). */
static void resolve_text(weft_req *req, const char *text)
{
	weft_addr_kind kind = strncmp(text, "udp:", 4) == 0 ? WEFT_ADDR_UDP : WEFT_ADDR_TCP;
	const char *host = text + 4;
	const char *colon = strrchr(host, ':');
	if (colon == NULL || colon == host) {
		weft_req_error(req, EINVAL);
		return;
	}
	unsigned long port = strtoul(colon + 1, NULL, 10);
	if (port > 65535) {
		weft_req_error(req, EINVAL);
		return;
	}
	resolve_name(req, kind, host, (size_t)(colon - host), (uint16_t)port);
}

weft_req *weft_resolve_send(weft_loop *loop, const char *text)
{
	weft_req *req = weft_req_new(loop, sizeof(struct resolve_state), resolve_name_tag);
	if (req == NULL)
		return NULL;
	struct resolve_state *s = weft_req_state(req);
	weft_req_set_cleanup(req, resolve_cleanup);
	if (text == NULL) {
		weft_req_error(req, EINVAL);
		return req;
	}
	weft_addr a;
	int r = weft_addr_parse(text, &a);
	if (r == -EADDRNOTAVAIL) {
		resolve_text(req, text);
		return req;
	}
	if (weft_req_error(req, r))
		return req;
	s->addrs = malloc(sizeof(*s->addrs));
	if (weft_req_nomem(s->addrs, req))
		return req;
	s->addrs[0] = a;
	s->naddrs = 1;
	weft_req_done(req);
	return req;
}

/* The array is handed out once: a second _recv on the same request gives
 * -EALREADY. */
int weft_resolve_recv(weft_req *req, weft_addr **ret_addrs, int *perrno)
{
	int err = 0;
	if (req == NULL || ret_addrs == NULL || weft_req_name(req) != resolve_name_tag) {
		err = EINVAL;
	} else {
		int r = weft_req_simple_recv(req, perrno);
		if (r < 0)
			return r;
		struct resolve_state *s = weft_req_state(req);
		if (s->naddrs == 0) {
			err = EALREADY; /* the result was handed out before */
		} else {
			int n = (int)s->naddrs;
			*ret_addrs = s->addrs;
			s->addrs = NULL;
			s->naddrs = 0;
			return n;
		}
	}
	if (perrno)
		*perrno = err;
	return -err;
}
