/* Socket addresses: text <-> weft_addr.
 *
 * Text forms (weft_addr_parse accepts exactly what weft_addr_format writes,
 * plus a few spellings it normalises):
 *   unix:PATH          absolute or relative path, 1..107 bytes (sun_path
 *                      with its NUL); a relative path starting with '@'
 *                      must be written "unix:./@x"
 *   unix:@NAME         Linux abstract namespace, 1..107 bytes, no NUL byte
 *   unix:              an unnamed (autobound-before-bind, socketpair)
 *                      address: written by format, rejected by parse
 *   tcp:A.B.C.D:PORT   IPv4 dotted quad (inet_pton: exactly four decimal
 *   udp:A.B.C.D:PORT   parts), PORT decimal 0..65535, digits only
 *   tcp:[V6]:PORT      IPv6 in brackets, optional zone "%ifname" or
 *   udp:[V6]:PORT      "%index" (format writes the interface name when the
 *                      index still names one, else the number)
 *
 * parse returns -EADDRNOTAVAIL only when the text is well formed and the
 * host is a syntactically valid host name (letters, digits, '-', '_', '.',
 * labels of 1..63, 253 bytes at most, all-numeric names excluded): such a
 * text is exactly what weft_resolve_send takes to a resolver.  Everything
 * else that is not an address is -EINVAL.
 */
#include <weft/sock.h>

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#define ADDR_UNIX_PREFIX "unix:"
#define SUN_PATH_SIZE sizeof(((struct sockaddr_un *)NULL)->sun_path)
#define SUN_PATH_OFFSET offsetof(struct sockaddr_un, sun_path)
#define HOSTNAME_MAX 253
#define LABEL_MAX 63

/* ---- parsing ------------------------------------------------------------ */

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool is_name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '-' || c == '_';
}

/* PORT: decimal digits only (no sign, no space), value 0..65535. */
static int parse_port(const char *p, uint16_t *ret_port)
{
	if (*p == '\0')
		return -EINVAL;
	unsigned long v = 0;
	for (; *p != '\0'; p++) {
		if (!is_digit(*p))
			return -EINVAL;
		v = v * 10 + (unsigned long)(*p - '0');
		if (v > 65535)
			return -EINVAL;
	}
	*ret_port = (uint16_t)v;
	return 0;
}

/* A host name the resolver may be asked about: labels of name characters,
 * optional trailing dot, not made of digits and dots only (that is a
 * malformed IPv4 address, not a name). */
static bool is_host_name(const char *host, size_t len)
{
	if (len == 0 || len > HOSTNAME_MAX + 1)
		return false;
	if (host[len - 1] == '.')
		len--;
	if (len == 0 || len > HOSTNAME_MAX)
		return false;
	size_t label = 0;
	bool numeric = true;
	for (size_t i = 0; i < len; i++) {
		char c = host[i];
		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
			continue;
		}
		if (!is_name_char(c) || ++label > LABEL_MAX)
			return false;
		if (!is_digit(c))
			numeric = false;
	}
	return label > 0 && !numeric;
}

static int parse_unix(const char *rest, weft_addr *ret_addr)
{
	weft_addr a;
	memset(&a, 0, sizeof(a));
	struct sockaddr_un *un = (struct sockaddr_un *)&a.u.ss;
	un->sun_family = AF_UNIX;
	a.kind = WEFT_ADDR_UNIX;
	size_t len = strlen(rest);
	if (rest[0] == '@') {
		/* Abstract: sun_path[0] = 0, the name follows, no NUL counted. */
		size_t nlen = len - 1;
		if (nlen == 0)
			return -EINVAL;
		if (nlen > SUN_PATH_SIZE - 1)
			return -ENAMETOOLONG;
		memcpy(un->sun_path + 1, rest + 1, nlen);
		a.len = (socklen_t)(SUN_PATH_OFFSET + 1 + nlen);
	} else {
		if (len == 0)
			return -EINVAL;
		if (len > SUN_PATH_SIZE - 1)
			return -ENAMETOOLONG;
		memcpy(un->sun_path, rest, len);
		a.len = (socklen_t)(SUN_PATH_OFFSET + len + 1);
	}
	*ret_addr = a;
	return 0;
}

/* "V6" or "V6%zone" (the text between the brackets). */
static int parse_ipv6(const char *text, size_t len, struct sockaddr_in6 *sin6)
{
	char buf[INET6_ADDRSTRLEN + IF_NAMESIZE + 1];
	if (len == 0 || len >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, text, len);
	buf[len] = '\0';
	char *zone = strchr(buf, '%');
	if (zone != NULL)
		*zone++ = '\0';
	if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) != 1)
		return -EINVAL;
	if (zone == NULL)
		return 0;
	if (*zone == '\0' || strlen(zone) >= IF_NAMESIZE)
		return -EINVAL;
	uint64_t idx = 0; /* at most 15 digits: no overflow */
	bool numeric = true;
	for (const char *p = zone; *p != '\0'; p++) {
		if (!is_digit(*p)) {
			numeric = false;
			break;
		}
		idx = idx * 10 + (uint64_t)(*p - '0');
		if (idx > UINT32_MAX)
			return -EINVAL;
	}
	if (!numeric)
		idx = if_nametoindex(zone); /* 0: no such interface */
	if (idx == 0)
		return -EINVAL;
	sin6->sin6_scope_id = (uint32_t)idx;
	return 0;
}

static int parse_inet(const char *rest, weft_addr_kind kind, weft_addr *ret_addr)
{
	weft_addr a;
	memset(&a, 0, sizeof(a));
	a.kind = kind;
	const char *host;
	size_t hlen;
	const char *port_text;
	bool bracketed = rest[0] == '[';
	if (bracketed) {
		const char *close = strchr(rest, ']');
		if (close == NULL || close[1] != ':')
			return -EINVAL;
		host = rest + 1;
		hlen = (size_t)(close - host);
		port_text = close + 2;
	} else {
		const char *colon = strrchr(rest, ':');
		if (colon == NULL)
			return -EINVAL;
		host = rest;
		hlen = (size_t)(colon - rest);
		port_text = colon + 1;
	}
	uint16_t port;
	int r = parse_port(port_text, &port);
	if (r < 0)
		return r;
	if (hlen == 0)
		return -EINVAL;

	if (bracketed) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a.u.ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		r = parse_ipv6(host, hlen, sin6);
		if (r < 0)
			return r;
		a.len = sizeof(*sin6);
		*ret_addr = a;
		return 0;
	}

	char buf[INET_ADDRSTRLEN];
	struct sockaddr_in *sin = (struct sockaddr_in *)&a.u.ss;
	if (hlen < sizeof(buf)) {
		memcpy(buf, host, hlen);
		buf[hlen] = '\0';
		if (inet_pton(AF_INET, buf, &sin->sin_addr) == 1) {
			sin->sin_family = AF_INET;
			sin->sin_port = htons(port);
			a.len = sizeof(*sin);
			*ret_addr = a;
			return 0;
		}
	}
	return is_host_name(host, hlen) ? -EADDRNOTAVAIL : -EINVAL;
}

int weft_addr_parse(const char *text, weft_addr *ret_addr)
{
	if (text == NULL || ret_addr == NULL)
		return -EINVAL;
	if (strncmp(text, ADDR_UNIX_PREFIX, strlen(ADDR_UNIX_PREFIX)) == 0)
		return parse_unix(text + strlen(ADDR_UNIX_PREFIX), ret_addr);
	if (strncmp(text, "tcp:", 4) == 0)
		return parse_inet(text + 4, WEFT_ADDR_TCP, ret_addr);
	if (strncmp(text, "udp:", 4) == 0)
		return parse_inet(text + 4, WEFT_ADDR_UDP, ret_addr);
	return -EINVAL;
}

/* ---- formatting ----------------------------------------------------------- */

static const char *kind_prefix(weft_addr_kind kind)
{
	switch (kind) {
	case WEFT_ADDR_UNIX:
		return ADDR_UNIX_PREFIX;
	case WEFT_ADDR_TCP:
		return "tcp:";
	case WEFT_ADDR_UDP:
		return "udp:";
	default:
		return NULL;
	}
}

/* Is addr internally consistent (kind matches family, len fits)? */
static bool addr_valid(const weft_addr *addr)
{
	sa_family_t family = addr->u.sa.sa_family;
	switch (addr->kind) {
	case WEFT_ADDR_UNIX:
		return family == AF_UNIX && addr->len >= sizeof(sa_family_t) &&
		       addr->len <= sizeof(struct sockaddr_un);
	case WEFT_ADDR_TCP:
	case WEFT_ADDR_UDP:
		if (family == AF_INET)
			return addr->len >= sizeof(struct sockaddr_in);
		if (family == AF_INET6)
			return addr->len >= sizeof(struct sockaddr_in6);
		return false;
	default:
		return false;
	}
}

/* The bytes of a Unix address's name: for a path, up to its NUL (or the end
 * of len); for an abstract name, everything after the leading 0. */
static void unix_name(const weft_addr *addr, const char **ret_name, size_t *ret_len, bool *ret_abstract)
{
	const struct sockaddr_un *un = (const struct sockaddr_un *)&addr->u.ss;
	size_t n = addr->len > SUN_PATH_OFFSET ? addr->len - SUN_PATH_OFFSET : 0;
	if (n > 0 && un->sun_path[0] == '\0') {
		*ret_abstract = true;
		*ret_name = un->sun_path + 1;
		*ret_len = n - 1;
		return;
	}
	*ret_abstract = false;
	*ret_name = un->sun_path;
	*ret_len = strnlen(un->sun_path, n);
}

int weft_addr_format(const weft_addr *addr, char *buf, size_t size)
{
	if (addr == NULL || buf == NULL || !addr_valid(addr))
		return -EINVAL;
	const char *prefix = kind_prefix(addr->kind);
	char host[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
	int n;
	if (addr->kind == WEFT_ADDR_UNIX) {
		const char *name;
		size_t len;
		bool abstract;
		unix_name(addr, &name, &len, &abstract);
		/* An abstract name holding a NUL byte has no text form that
		 * parses back to it. */
		if (abstract && memchr(name, '\0', len) != NULL)
			return -EINVAL;
		n = snprintf(buf, size, "%s%s%.*s", prefix, abstract ? "@" : "", (int)len, name);
	} else if (addr->u.sa.sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&addr->u.ss;
		if (inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host)) == NULL)
			return -EINVAL;
		n = snprintf(buf, size, "%s%s:%u", prefix, host, (unsigned)ntohs(sin->sin_port));
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&addr->u.ss;
		if (inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host)) == NULL)
			return -EINVAL;
		if (sin6->sin6_scope_id != 0) {
			size_t hl = strlen(host);
			char ifname[IF_NAMESIZE];
			if (if_indextoname(sin6->sin6_scope_id, ifname) != NULL)
				snprintf(host + hl, sizeof(host) - hl, "%%%s", ifname);
			else
				snprintf(host + hl, sizeof(host) - hl, "%%%u", (unsigned)sin6->sin6_scope_id);
		}
		n = snprintf(buf, size, "%s[%s]:%u", prefix, host, (unsigned)ntohs(sin6->sin6_port));
	}
	if (n < 0)
		return -EINVAL;
	if ((size_t)n >= size) {
		if (size > 0)
			buf[0] = '\0';
		return -ENOSPC;
	}
	return n;
}

/* ---- from a sockaddr ---------------------------------------------------- */

int weft_addr_from_sockaddr(const struct sockaddr *sa, socklen_t len, weft_addr_kind kind,
		weft_addr *ret_addr)
{
	if (sa == NULL || ret_addr == NULL || len < sizeof(sa_family_t))
		return -EINVAL;
	weft_addr a;
	memset(&a, 0, sizeof(a));
	switch (sa->sa_family) {
	case AF_UNIX: {
		if (len > sizeof(struct sockaddr_un))
			return -EINVAL;
		memcpy(&a.u.ss, sa, len);
		a.kind = WEFT_ADDR_UNIX;
		a.len = len;
		/* A path name: count exactly one NUL, as parse does, whatever
		 * the kernel or caller reported (trailing bytes after the NUL
		 * are dropped).  A path filling all of sun_path without a NUL
		 * (Linux allows it) keeps len: the storage is zero-filled
		 * past it, so the path is still terminated here. */
		const struct sockaddr_un *un = (const struct sockaddr_un *)&a.u.ss;
		if (len > SUN_PATH_OFFSET && un->sun_path[0] != '\0') {
			size_t plen = strnlen(un->sun_path, len - SUN_PATH_OFFSET);
			if (plen < SUN_PATH_SIZE)
				a.len = (socklen_t)(SUN_PATH_OFFSET + plen + 1);
		}
		break;
	}
	case AF_INET:
		if (kind != WEFT_ADDR_TCP && kind != WEFT_ADDR_UDP)
			return -EINVAL;
		if (len < sizeof(struct sockaddr_in))
			return -EINVAL;
		memcpy(&a.u.ss, sa, sizeof(struct sockaddr_in));
		a.kind = kind;
		a.len = sizeof(struct sockaddr_in);
		break;
	case AF_INET6:
		if (kind != WEFT_ADDR_TCP && kind != WEFT_ADDR_UDP)
			return -EINVAL;
		if (len < sizeof(struct sockaddr_in6))
			return -EINVAL;
		memcpy(&a.u.ss, sa, sizeof(struct sockaddr_in6));
		a.kind = kind;
		a.len = sizeof(struct sockaddr_in6);
		break;
	default:
		return -EAFNOSUPPORT;
	}
	*ret_addr = a;
	return 0;
}

/* ---- queries ----------------------------------------------------------------- */

int weft_addr_port(const weft_addr *addr)
{
	if (addr == NULL || addr->kind == WEFT_ADDR_UNIX || !addr_valid(addr))
		return -EINVAL;
	if (addr->u.sa.sa_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)&addr->u.ss)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)&addr->u.ss)->sin6_port);
}

bool weft_addr_equal(const weft_addr *a, const weft_addr *b)
{
	if (a == NULL || b == NULL || !addr_valid(a) || !addr_valid(b))
		return false;
	if (a->kind != b->kind || a->u.sa.sa_family != b->u.sa.sa_family)
		return false;
	switch (a->u.sa.sa_family) {
	case AF_UNIX: {
		const char *na, *nb;
		size_t la, lb;
		bool aa, ab;
		unix_name(a, &na, &la, &aa);
		unix_name(b, &nb, &lb, &ab);
		return aa == ab && la == lb && memcmp(na, nb, la) == 0;
	}
	case AF_INET: {
		const struct sockaddr_in *x = (const struct sockaddr_in *)&a->u.ss;
		const struct sockaddr_in *y = (const struct sockaddr_in *)&b->u.ss;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	case AF_INET6: {
		const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)&a->u.ss;
		const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)&b->u.ss;
		return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
		       memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
	}
	default:
		return false;
	}
}
