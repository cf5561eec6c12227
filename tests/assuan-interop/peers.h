/* The two servers the interop test compares: weft's and libassuan's, each
 * offering the same commands (names, help texts, registration order, error
 * source), each run in a child process on one end of a socketpair. */
#ifndef WEFT_TEST_ASSUAN_PEERS_H
#define WEFT_TEST_ASSUAN_PEERS_H

#include <gpg-error.h>

/* The error source of both servers (not the default, to test the setter). */
#define PEER_ERR_SOURCE GPG_ERR_SOURCE_USER_2

enum peer_hello {
	HELLO_CUSTOM,  /* three lines: two "# " comments and "OK ready" */
	HELLO_DEFAULT, /* "OK Pleased to meet you, process <peer pid>" */
};

/* Serve the connection fd until it ends, then exit the process. */
__attribute__((noreturn)) void peer_run_weft(int fd, enum peer_hello hello);
__attribute__((noreturn)) void peer_run_libassuan(int fd, enum peer_hello hello);
/* libassuan driven by assuan_process_next from a poll() loop, with SLOW
 * (pending for 30 ms) and ECHO only; custom hello. */
__attribute__((noreturn)) void peer_run_libassuan_next(int fd);

#endif
