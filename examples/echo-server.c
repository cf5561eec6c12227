/* echo-server: a length-prefixed echo server (a 4-byte big-endian length,
 * then the body); every PDU goes back as it came.  echo-server [ADDRESS] */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <weft/weft.h>

struct conn {
	weft_stream *s;
	struct iovec iov;
	uint32_t len;       /* the length prefix, network order */
	char *pdu;          /* prefix + body of the PDU being read */
};

static void sent(weft_req *req, void *pdu) { free(pdu); weft_req_free(req); }

/* Asked for the next vector whenever the last one is full: PDUs end here. */
static int next_vector(weft_stream *s, void *data, const struct iovec **vec, size_t *count)
{
	struct conn *c = data;
	uint32_t n = ntohl(c->len);
	if (c->iov.iov_base == &c->len) {                /* length in: read the body */
		if (n > (1u << 20) || (c->pdu = malloc(4 + n)) == NULL)
			return -EMSGSIZE;
		memcpy(c->pdu, &c->len, 4);
		c->iov = (struct iovec){c->pdu + 4, n};
	} else {                                         /* start, or a whole PDU is in */
		if (c->pdu != NULL)                          /* echo it: the write owns it */
			weft_req_set_callback(weft_stream_writev_queue_send(s, NULL,
					&(struct iovec){c->pdu, 4 + n}, 1), sent, c->pdu);
		c->pdu = NULL;
		c->iov = (struct iovec){&c->len, 4};
	}
	*vec = &c->iov;
	*count = 1;
	return 0;
}

/* The peer closed (EPIPE), a PDU was too long, or the connection failed. */
static void ended(weft_req *req, void *data)
{
	struct conn *c = data;
	weft_req_free(req);
	free(c->pdu);
	weft_stream_close(c->s, free, c);
}

static void accepted(weft_listener *l, weft_stream *s, const weft_addr *peer, int err, void *data)
{
	struct conn *c = s ? calloc(1, sizeof(*c)) : NULL;
	if (c != NULL && (c->s = s) != NULL)
		weft_req_set_callback(weft_stream_readv_send(s, next_vector, c), ended, c);
	else
		weft_stream_close(s, NULL, NULL);
}

int main(int argc, char **argv)
{
	weft_loop *loop;
	weft_listener *l;
	weft_addr addr;
	int r = weft_loop_new(&loop);
	if (r < 0 || (r = weft_addr_parse(argc > 1 ? argv[1] : "tcp:127.0.0.1:7000", &addr)) < 0 ||
	    (r = weft_listen(loop, &addr, NULL, accepted, NULL, &l)) < 0) {
		fprintf(stderr, "echo-server: %s\n", strerror(-r));
		return 1;
	}
	return weft_loop_run(loop, WEFT_RUN_DEFAULT) < 0;
}
