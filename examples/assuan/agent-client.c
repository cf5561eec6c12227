/* agent-client: the client example of docs/assuan.md — GETINFO version and
 * GENKEY with an INQUIRE answered from the loop, against a running gpg-agent.
 *   agent-client "$(gpgconf --list-dirs agent-socket)" */
#include <stdio.h>
#include <string.h>
#include <weft/weft.h>
#include <weft/assuan.h>

static weft_assuan_client *cl;

static weft_assuan_err on_data(void *data, const void *buf, size_t len)
{
	fwrite(buf, 1, len, stdout);              /* D lines, decoded */
	return 0;
}

static void answer_keyparam(void *data)
{
	const char *p = "(genkey(ecc(curve 7:Ed25519)(flags eddsa)))";
	weft_assuan_client_inquire_data(cl, p, strlen(p));
	weft_assuan_client_inquire_end(cl);
}

static weft_assuan_err on_inquire(void *data, const char *keyword, const char *args)
{
	if (strcmp(keyword, "KEYPARAM") != 0)
		return weft_assuan_client_inquire_cancel(cl) < 0;
	weft_loop_call_soon(data, answer_keyparam, NULL); /* answer later */
	return 0;
}

static void genkey_done(weft_req *req, void *data)
{
	weft_assuan_err err;
	if (weft_assuan_transact_recv(req, &err, NULL) == 0)
		printf("\nGENKEY: %s\n", err ? gpg_strerror(err) : "OK");
	weft_req_free(req);
	weft_assuan_client_free(cl);
}

static void version_done(weft_req *req, void *data)
{
	weft_assuan_err err;
	weft_assuan_transact_recv(req, &err, NULL);
	weft_req_free(req);
	printf("\n");
}

static void connected(weft_req *req, void *loop)
{
	int e;
	if (weft_assuan_connect_recv(req, &cl, &e) < 0) {
		fprintf(stderr, "connect: %s\n", strerror(e));
		weft_req_free(req);
		return;
	}
	weft_req_free(req);
	static const weft_assuan_transact_cbs cbs = {.data = on_data, .inquire = on_inquire};
	weft_req *t = weft_assuan_transact_send(cl, "GETINFO version", &cbs, loop);
	weft_req_set_callback(t, version_done, NULL);
	t = weft_assuan_transact_send(cl, "GENKEY --no-protection", &cbs, loop); /* queued */
	weft_req_set_callback(t, genkey_done, NULL);
}

int main(int argc, char **argv)
{
	weft_loop *loop;
	weft_loop_new(&loop);
	/* argv[1]: the agent's socket, from `gpgconf --list-dirs agent-socket` */
	weft_req *req = weft_assuan_connect_send(loop, argv[1]);
	weft_req_set_timeout(req, 5000);
	weft_req_set_callback(req, connected, loop);
	weft_loop_run(loop, WEFT_RUN_DEFAULT);
	return weft_loop_free(loop) < 0;
}
