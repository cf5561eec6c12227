/* weft-connect: talk to an Assuan server, as gpg-connect-agent does —
 * scriptable, and nothing blocks: the connection, INQUIRE answers (files or
 * programs), descriptor passing and the prompt all run on one weft loop. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <weft/weft.h>
#include <weft/assuan.h>

#ifdef HAVE_TLS
#include <weft/tls.h>
#endif

#ifdef HAVE_READLINE
#include <readline/history.h>
#include <readline/readline.h>
#endif

extern char **environ;

#define MAX_INQ 32
#define MAX_CMDS 1024

static const char usage[] =
	"usage: weft-connect [OPTION]... [COMMAND]...\n"
	"Send Assuan COMMANDs to a server and print its answers: D data decoded,\n"
	"S, ERR and OK lines as they come.  Without COMMANDs (and without -f) the\n"
	"commands come from standard input, with line editing on a terminal.\n"
	"\n"
	"  -S, --socket PATH      connect to the Assuan socket PATH (unix:/..., tcp:...)\n"
	"      --agent            connect to the running gpg-agent (gpgconf --list-dirs\n"
	"                         agent-socket); the default without -S or --exec\n"
	"      --homedir DIR      GnuPG home directory for --agent\n"
	"  -E, --exec             the arguments after -- are a pipe server to start\n"
	"      --fdpassing        with --exec: a socketpair, so --sendfd works\n"
	"  -f, --file FILE        read commands from FILE\n"
	"      --inquire KW=FILE  answer INQUIRE KW with the contents of FILE\n"
	"      --inquire-prog KW=CMD  answer INQUIRE KW with the output of CMD (sh -c)\n"
	"      --sendfd FILE      pass FILE (opened read-only) before the first command\n"
	"  -t, --timeout MS       fail a command (or the greeting) that takes longer than MS\n"
#ifdef HAVE_TLS
	"      --tls              speak TLS on the connection (-S tcp:HOST:PORT or a socket)\n"
	"      --cafile FILE      trust the CA certificates in FILE (default: the system's)\n"
	"      --cert FILE        our certificate chain (PEM), sent if the server asks\n"
	"      --key FILE         its private key (PEM)\n"
	"      --servername NAME  the name the server's certificate must carry\n"
	"                         (default: the host of -S)\n"
#endif

	"  -q, --quiet            print D data only\n"
	"  -h, --help             this text\n"
	"\n"
	"Lines starting with / are local: /bye ends, /sendfd FILE passes a file.\n"
	"The exit status is 0 if the last command answered OK, 1 on ERR, 2 when\n"
	"the connection failed.\n"
	"\n"
	"Examples:\n"
	"  weft-connect 'GETINFO version' 'GETINFO pid'\n"
	"  weft-connect -S /run/user/1000/gnupg/S.gpg-agent 'HAVEKEY 0123...' \n"
	"  weft-connect --inquire KEYPARAM=params.txt 'GENKEY --no-protection'\n"
	"  weft-connect -S kv.sock --inquire VALUE=v.txt 'PUT k' 'GET k'\n"
	"  weft-connect -S kv.sock --sendfd data.bin 'INPUT FD' 'STORE k'\n"
	"  weft-connect -E --fdpassing -- gpg-agent --server -- 'GETINFO pid'\n"
#ifdef HAVE_TLS
	"  weft-connect --tls --cafile ca.pem -S tcp:kv.example:4433 'GET k'\n"
#endif
	;

struct inq_src {
	char *keyword;
	char *path; /* a file, or with prog a shell command */
	bool prog;
};

static struct {
	weft_loop *loop;
	weft_assuan_client *cl;
	struct inq_src inq[MAX_INQ];
	int ninq;
	char *cmds[MAX_CMDS];
	int ncmds, next_cmd;
	bool interactive, quiet;
	uint64_t timeout;
	int last; /* exit status so far */
	bool done;
	/* an INQUIRE answered from a program */
	weft_stream *prog_out;
	weft_req *prog_read;
	char prog_buf[4096];
	pid_t prog_pid;  /* 0: none runs */
	bool prog_eof;   /* its output ended cleanly */
	int prog_pidfd;  /* -1: none */
	weft_io *prog_wait;
	weft_req *tr;
} g = {.last = 2, .prog_pidfd = -1};

static void next_command(void);

static bool mid_line; /* D data printed without a final LF */

static void line_start(void)
{
	if (mid_line)
		putchar('\n');
	mid_line = false;
}

/* ---- printing the answer ----------------------------------------------------- */

static weft_assuan_err on_data(void *data, const void *buf, size_t len)
{
	(void)data;
	if (buf == NULL) {
		line_start();
		if (!g.quiet)
			printf("END\n");
		return 0;
	}
	fwrite(buf, 1, len, stdout);
	if (len > 0)
		mid_line = ((const char *)buf)[len - 1] != '\n';
	return 0;
}

static weft_assuan_err on_status(void *data, const char *kw, const char *args)
{
	(void)data;
	line_start();
	if (!g.quiet)
		printf("S %s%s%s\n", kw, *args ? " " : "", args);
	return 0;
}

static weft_assuan_err on_comment(void *data, const char *line)
{
	(void)data;
	line_start();
	if (!g.quiet)
		printf("%s\n", line); /* HELP's answer comes as comments */
	return 0;
}

/* ---- INQUIRE answers --------------------------------------------------------- */

static void prog_read_done(weft_req *req, void *data);

static void prog_next_read(void)
{
	g.prog_read = weft_stream_read_send(g.prog_out, g.prog_buf, sizeof(g.prog_buf));
	weft_req_set_callback(g.prog_read, prog_read_done, NULL);
}

/* Drop what watches the program (its output, its pidfd); it is not reaped. */
static void prog_stop(void)
{
	weft_req_free(g.prog_read);
	g.prog_read = NULL;
	weft_stream_close(g.prog_out, NULL, NULL);
	g.prog_out = NULL;
	weft_io_free(g.prog_wait);
	g.prog_wait = NULL;
	if (g.prog_pidfd >= 0)
		close(g.prog_pidfd);
	g.prog_pidfd = -1;
}

/* The program ended with wait status st: END after a clean exit, else CAN. */
static void prog_answer(int st)
{
	g.prog_pid = 0;
	prog_stop();
	if (g.prog_eof && WIFEXITED(st) && WEXITSTATUS(st) == 0)
		weft_assuan_client_inquire_end(g.cl);
	else
		weft_assuan_client_inquire_cancel(g.cl);
}

/* Its pidfd is readable: it has exited. */
static void prog_exited(weft_io *io, unsigned revents, void *data)
{
	(void)io;
	(void)revents;
	(void)data;
	int st = 0;
	pid_t p = waitpid(g.prog_pid, &st, WNOHANG);
	if (p == 0)
		return; /* not yet */
	prog_answer(p == g.prog_pid ? st : 1);
}

/* The session ends while a program answers: stop it, reap it. */
static void prog_kill(void)
{
	if (g.prog_pid <= 0)
		return;
	kill(-g.prog_pid, SIGKILL); /* the program and whatever it started */
	while (waitpid(g.prog_pid, NULL, 0) < 0 && errno == EINTR)
		;
	g.prog_pid = 0;
	prog_stop();
}

static void prog_read_done(weft_req *req, void *data)
{
	(void)data;
	int err = 0;
	ssize_t n = weft_stream_read_recv(req, &err);
	weft_req_free(req);
	g.prog_read = NULL;
	if (n > 0) {
		weft_assuan_client_inquire_data(g.cl, g.prog_buf, (size_t)n);
		prog_next_read();
		return;
	}
	weft_stream_close(g.prog_out, NULL, NULL);
	g.prog_out = NULL;
	g.prog_eof = err == EPIPE;
	/* Its output ended but it may linger: wait for its exit on the loop
	 * (a pidfd), not in waitpid, so --timeout and the rest go on. */
	g.prog_pidfd = (int)syscall(SYS_pidfd_open, g.prog_pid, 0);
	if (g.prog_pidfd >= 0 && weft_io_new(g.loop, g.prog_pidfd, prog_exited, NULL, &g.prog_wait) == 0 &&
	    weft_io_start(g.prog_wait, WEFT_IO_READ) == 0)
		return;
	int st = 0; /* no pidfd: wait here */
	while (waitpid(g.prog_pid, &st, 0) < 0 && errno == EINTR)
		;
	prog_answer(st);
}

static int start_prog(const char *cmd)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[1], 1);
	/* Its own process group, so that a timeout stops what it started too. */
	posix_spawnattr_t attr;
	posix_spawnattr_init(&attr);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
	posix_spawnattr_setpgroup(&attr, 0);
	const char *argv[] = {"sh", "-c", cmd, NULL};
	int r = posix_spawn(&g.prog_pid, "/bin/sh", &fa, &attr, (char *const *)argv, environ);
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&fa);
	close(p[1]);
	if (r != 0) {
		close(p[0]);
		return -r;
	}
	r = weft_stream_new_pipe(g.loop, p[0], -1, &g.prog_out);
	if (r < 0)
		return r;
	prog_next_read();
	return 0;
}

static int send_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return -errno;
	char buf[65536];
	size_t n;
	int r = 0;
	while (r == 0 && (n = fread(buf, 1, sizeof(buf), f)) > 0)
		r = weft_assuan_client_inquire_data(g.cl, buf, n);
	fclose(f);
	return r;
}

static weft_assuan_err on_inquire(void *data, const char *kw, const char *args)
{
	(void)data;
	(void)args;
	line_start();
	if (!g.quiet)
		printf("INQUIRE %s%s%s\n", kw, *args ? " " : "", args);
	for (int i = 0; i < g.ninq; i++) {
		if (strcmp(g.inq[i].keyword, kw) != 0)
			continue;
		int r = g.inq[i].prog ? start_prog(g.inq[i].path) : send_file(g.inq[i].path);
		if (r < 0) {
			fprintf(stderr, "weft-connect: inquire %s: %s: %s\n", kw, g.inq[i].path, strerror(-r));
			weft_assuan_client_inquire_cancel(g.cl);
		} else if (!g.inq[i].prog) {
			weft_assuan_client_inquire_end(g.cl);
		}
		return 0;
	}
	weft_assuan_client_inquire_cancel(g.cl); /* nothing defined: CAN */
	return 0;
}

/* ---- commands ------------------------------------------------------------------- */

static const weft_assuan_transact_cbs cbs = {
	.data = on_data,
	.status = on_status,
	.inquire = on_inquire,
	.comment = on_comment,
};

static void finish(int status)
{
	g.last = status;
	g.done = true;
	prog_kill();
	weft_assuan_client_free(g.cl);
	g.cl = NULL;
#ifdef HAVE_READLINE
	if (g.interactive && isatty(0))
		rl_callback_handler_remove();
#endif
}

static void transact_done(weft_req *req, void *data)
{
	(void)data;
	weft_assuan_err e = 0;
	int err = 0;
	int r = weft_assuan_transact_recv(req, &e, &err);
	weft_req_free(req);
	g.tr = NULL;
	if (!g.quiet || e != 0)
		line_start();
	fflush(stdout);
	if (r < 0) {
		fprintf(stderr, "weft-connect: %s\n", strerror(err));
		finish(2);
		return;
	}
	if (e == 0) {
		const char *t = weft_assuan_client_okay_text(g.cl);
		if (!g.quiet)
			printf("OK%s%s\n", *t ? " " : "", t);
		g.last = 0;
	} else {
		printf("ERR %u %s <%s>\n", e, gpg_strerror(e), gpg_strsource(e));
		g.last = 1;
	}
	fflush(stdout);
	next_command();
}

static void sendfd_done(weft_req *req, void *data)
{
	int fd = (int)(intptr_t)data;
	int err = 0;
	if (weft_assuan_client_sendfd_recv(req, &err) < 0)
		fprintf(stderr, "weft-connect: sendfd: %s\n", strerror(err));
	weft_req_free(req);
	close(fd);
}

static int sendfd(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	weft_req *req = weft_assuan_client_sendfd_send(g.cl, fd);
	if (req == NULL) {
		close(fd);
		return -ENOMEM;
	}
	weft_req_set_callback(req, sendfd_done, (void *)(intptr_t)fd);
	return 0;
}

/* Run one line: a local /command or an Assuan command.  True if a
 * transaction was started (its end runs the next line). */
static bool run_line(char *line)
{
	size_t n = strlen(line);
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	if (line[0] == '/') {
		if (strcmp(line, "/bye") == 0) {
			finish(g.last == 2 ? 0 : g.last);
		} else if (strncmp(line, "/sendfd ", 8) == 0) {
			int r = sendfd(line + 8);
			if (r < 0)
				fprintf(stderr, "weft-connect: %s: %s\n", line + 8, strerror(-r));
		} else {
			fprintf(stderr, "weft-connect: unknown local command %s\n", line);
		}
		return false;
	}
	if (line[0] == '\0' || line[0] == '#')
		return false;
	g.tr = weft_assuan_transact_send(g.cl, line, &cbs, NULL);
	if (g.tr == NULL) {
		finish(2);
		return false;
	}
	if (g.timeout)
		weft_req_set_timeout(g.tr, g.timeout);
	weft_req_set_callback(g.tr, transact_done, NULL);
	return true;
}

#ifdef HAVE_READLINE
static void rl_line(char *line)
{
	if (line == NULL) {
		finish(g.last == 2 ? 0 : g.last);
		return;
	}
	if (*line)
		add_history(line);
	rl_callback_handler_remove(); /* no prompt while the answer prints */
	if (!run_line(line) && !g.done)
		next_command();
	free(line);
}
#endif

static weft_io *stdin_io;
static char stdin_buf[8192];
static size_t stdin_len;

static void stdin_ready(weft_io *io, unsigned revents, void *data)
{
	(void)revents;
	(void)data;
	weft_io_stop(io);
#ifdef HAVE_READLINE
	if (isatty(0)) {
		rl_callback_read_char();
		if (!g.done && g.tr == NULL)
			weft_io_start(io, WEFT_IO_READ);
		return;
	}
#endif
	ssize_t n = read(0, stdin_buf + stdin_len, sizeof(stdin_buf) - 1 - stdin_len);
	if (n <= 0) {
		if (stdin_len > 0) {
			stdin_buf[stdin_len] = '\0';
			stdin_len = 0;
			if (run_line(stdin_buf))
				return;
		}
		finish(g.last == 2 ? 0 : g.last);
		return;
	}
	stdin_len += (size_t)n;
	next_command();
}

/* Take the next command: from the list, or from stdin. */
static void next_command(void)
{
	while (!g.done) {
		if (!g.interactive) {
			if (g.next_cmd == g.ncmds) {
				finish(g.last);
				return;
			}
			if (run_line(g.cmds[g.next_cmd++]))
				return;
			continue;
		}
#ifdef HAVE_READLINE
		if (isatty(0)) {
			rl_callback_handler_install("> ", rl_line);
			weft_io_start(stdin_io, WEFT_IO_READ);
			return;
		}
#endif
		char *nl = memchr(stdin_buf, '\n', stdin_len);
		if (nl == NULL) {
			if (stdin_len == sizeof(stdin_buf) - 1) {
				fprintf(stderr, "weft-connect: input line too long\n");
				finish(2);
				return;
			}
			weft_io_start(stdin_io, WEFT_IO_READ);
			return;
		}
		*nl = '\0';
		char line[sizeof(stdin_buf)];
		memcpy(line, stdin_buf, (size_t)(nl - stdin_buf) + 1);
		stdin_len -= (size_t)(nl - stdin_buf) + 1;
		memmove(stdin_buf, nl + 1, stdin_len);
		if (run_line(line))
			return;
	}
}

/* ---- start-up ------------------------------------------------------------------ */

/* gpgconf [--homedir DIR] --list-dirs agent-socket, run without a shell
 * (DIR may hold any character).  Before the loop runs: nothing waits. */
static char *agent_socket(const char *homedir)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return NULL;
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[1], 1);
	const char *argv[] = {"gpgconf", "--homedir", homedir, "--list-dirs", "agent-socket", NULL};
	if (homedir == NULL) {
		argv[1] = "--list-dirs";
		argv[2] = "agent-socket";
		argv[3] = NULL;
	}
	pid_t pid;
	int r = posix_spawnp(&pid, "gpgconf", &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(p[1]);
	if (r != 0) {
		close(p[0]);
		return NULL;
	}
	char buf[1024];
	size_t n = 0;
	ssize_t k;
	while (n < sizeof(buf) - 1 && ((k = read(p[0], buf + n, sizeof(buf) - 1 - n)) > 0 || (k < 0 && errno == EINTR)))
		n += k > 0 ? (size_t)k : 0;
	close(p[0]);
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || buf[0] == '\0')
		return NULL;
	return strdup(buf);
}

static void connected(weft_req *req, void *data)
{
	(void)data;
	int err = 0;
	int r = weft_assuan_connect_recv(req, &g.cl, &err);
	weft_req_free(req);
	if (r < 0) {
		fprintf(stderr, "weft-connect: can't connect: %s\n", strerror(err));
		g.done = true;
		return;
	}
	const char *sendfd_path = data;
	if (sendfd_path != NULL) {
		int e = sendfd(sendfd_path);
		if (e < 0)
			fprintf(stderr, "weft-connect: %s: %s\n", sendfd_path, strerror(-e));
	}
	next_command();
}

#ifdef HAVE_TLS
static struct {
	bool on;
	const char *cafile, *cert, *key, *servername;
	weft_tls_config *cfg;
} tls;

/* The host of "tcp:HOST:PORT" / "tcp:[V6]:PORT" (for SNI and the check). */
static char *host_of(const char *addr)
{
	const char *h = strncmp(addr, "tcp:", 4) == 0 ? addr + 4 : addr;
	const char *end = strrchr(h, ':');
	if (*h == '[') {
		h++;
		end = strchr(h, ']');
	}
	return end ? strndup(h, (size_t)(end - h)) : strdup(h);
}

static void tls_tcp_connected(weft_req *req, void *data)
{
	weft_stream *s = NULL, *t = NULL;
	int err = 0;
	int r = weft_sock_connect_recv(req, &s, &err);
	weft_req_free(req);
	if (r < 0) {
		fprintf(stderr, "weft-connect: can't connect: %s\n", strerror(err));
		g.done = true;
		return;
	}
	r = weft_tls_client_new(tls.cfg, s, tls.servername, &t);
	if (r < 0) {
		fprintf(stderr, "weft-connect: TLS: %s\n", strerror(-r));
		g.done = true;
		return;
	}
	weft_req *a = weft_assuan_client_adopt_send(g.loop, t);
	if (a == NULL) {
		g.done = true;
		return;
	}
	if (g.timeout)
		weft_req_set_timeout(a, g.timeout);
	weft_req_set_callback(a, connected, data);
}

static weft_req *tls_connect(const char *sock, const char *sendfd_path, char **name_out)
{
	char buf[160];
	if (sock[0] == '/') {
		snprintf(buf, sizeof(buf), "unix:%s", sock);
		sock = buf;
	}
	weft_addr addr;
	if (weft_addr_parse(sock, &addr) < 0 || weft_tls_config_new(WEFT_TLS_CLIENT, &tls.cfg) < 0)
		return NULL;
	if ((tls.cafile && weft_tls_config_add_ca_file(tls.cfg, tls.cafile) < 0) ||
	    (tls.cert && weft_tls_config_add_cert_file(tls.cfg, tls.cert, tls.key ? tls.key : tls.cert, NULL) < 0)) {
		fprintf(stderr, "weft-connect: can't load the TLS certificates\n");
		return NULL;
	}
	if (tls.servername == NULL)
		tls.servername = *name_out = host_of(sock);
	weft_req *req = weft_sock_connect_send(g.loop, &addr);
	if (req != NULL)
		weft_req_set_callback(req, tls_tcp_connected, (void *)sendfd_path);
	return req;
}
#endif

static int add_inquire(const char *spec, bool prog)
{
	const char *eq = strchr(spec, '=');
	if (eq == NULL || eq == spec || g.ninq == MAX_INQ)
		return -1;
	struct inq_src *s = &g.inq[g.ninq++];
	s->keyword = strndup(spec, (size_t)(eq - spec));
	s->path = strdup(eq + 1);
	s->prog = prog;
	return 0;
}

static int read_command_file(const char *path)
{
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return -1;
	char line[WEFT_ASSUAN_LINELENGTH + 2];
	while (fgets(line, sizeof(line), f) && g.ncmds < MAX_CMDS)
		g.cmds[g.ncmds++] = strdup(line);
	fclose(f);
	return 0;
}

int main(int argc, char **argv)
{
	enum { O_AGENT = 256, O_HOMEDIR, O_INQ, O_INQPROG, O_SENDFD, O_FDPASS,
		O_TLS, O_CAFILE, O_CERT, O_KEY, O_SNI };
	static const struct option opts[] = {
		{"socket", required_argument, NULL, 'S'}, {"agent", no_argument, NULL, O_AGENT},
		{"homedir", required_argument, NULL, O_HOMEDIR}, {"exec", no_argument, NULL, 'E'},
		{"fdpassing", no_argument, NULL, O_FDPASS}, {"file", required_argument, NULL, 'f'},
		{"inquire", required_argument, NULL, O_INQ}, {"inquire-prog", required_argument, NULL, O_INQPROG},
		{"sendfd", required_argument, NULL, O_SENDFD}, {"timeout", required_argument, NULL, 't'},
		{"quiet", no_argument, NULL, 'q'}, {"help", no_argument, NULL, 'h'},
		{"tls", no_argument, NULL, O_TLS}, {"cafile", required_argument, NULL, O_CAFILE},
		{"cert", required_argument, NULL, O_CERT}, {"key", required_argument, NULL, O_KEY},
		{"servername", required_argument, NULL, O_SNI}, {NULL, 0, NULL, 0},
	};
	const char *sock = NULL, *homedir = NULL, *sendfd_path = NULL, *file = NULL;
	bool exec = false, fdpassing = false;
	int c;
	while ((c = getopt_long(argc, argv, "+S:Ef:t:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'S': sock = optarg; break;
		case O_AGENT: sock = NULL; break;
		case O_HOMEDIR: homedir = optarg; break;
		case 'E': exec = true; break;
		case O_FDPASS: fdpassing = true; break;
		case 'f': file = optarg; break;
		case O_INQ:
		case O_INQPROG:
			if (add_inquire(optarg, c == O_INQPROG) < 0) {
				fprintf(stderr, "weft-connect: expected KEYWORD=VALUE: %s\n", optarg);
				return 2;
			}
			break;
		case O_SENDFD: sendfd_path = optarg; break;
		case 't': g.timeout = strtoull(optarg, NULL, 10); break;
		case 'q': g.quiet = true; break;
		case 'h': fputs(usage, stdout); return 0;
#ifdef HAVE_TLS
		case O_TLS: tls.on = true; break;
		case O_CAFILE: tls.cafile = optarg; break;
		case O_CERT: tls.cert = optarg; break;
		case O_KEY: tls.key = optarg; break;
		case O_SNI: tls.servername = optarg; break;
#else
		case O_TLS: case O_CAFILE: case O_CERT: case O_KEY: case O_SNI:
			fprintf(stderr, "weft-connect: built without TLS\n");
			return 2;
#endif
		default: fputs(usage, stderr); return 2;
		}
	}
	char **server_argv = NULL;
	if (exec) {
		/* weft-connect [opts] -E -- PROG ARGS... [then commands after a second --] */
		if (optind >= argc) {
			fprintf(stderr, "weft-connect: --exec needs a program after --\n");
			return 2;
		}
		server_argv = argv + optind;
		int i = optind;
		while (i < argc && strcmp(argv[i], "--") != 0)
			i++;
		if (i < argc) {
			argv[i] = NULL; /* commands follow the second -- */
			optind = i + 1;
		} else {
			optind = argc;
		}
	}
	if (file != NULL && read_command_file(file) < 0) {
		fprintf(stderr, "weft-connect: %s: %s\n", file, strerror(errno));
		return 2;
	}
	for (int i = optind; i < argc && g.ncmds < MAX_CMDS; i++)
		g.cmds[g.ncmds++] = strdup(argv[i]);
	g.interactive = g.ncmds == 0 && file == NULL;
	struct stat st;
	if (g.interactive && fstat(0, &st) == 0 && S_ISREG(st.st_mode)) {
		/* A file cannot be polled: take its lines now. */
		read_command_file("/dev/stdin");
		g.interactive = false;
	}

	if (weft_loop_new(&g.loop) < 0)
		return 2;
	weft_req *req;
	char *agent = NULL, *sni = NULL;
#ifdef HAVE_TLS
	if (tls.on) {
		if (sock == NULL) {
			fprintf(stderr, "weft-connect: --tls needs -S ADDRESS\n");
			return 2;
		}
		req = tls_connect(sock, sendfd_path, &sni);
		if (req == NULL)
			return 2;
	} else
#endif
	if (server_argv != NULL) {
		req = weft_assuan_pipe_connect_send(g.loop, (const char *const *)server_argv, NULL, 0,
				fdpassing ? WEFT_ASSUAN_PIPE_FDPASSING : 0);
	} else {
		if (sock == NULL && (sock = agent = agent_socket(homedir)) == NULL) {
			fprintf(stderr, "weft-connect: no agent socket (is gpgconf installed?)\n");
			return 2;
		}
		req = weft_assuan_connect_send(g.loop, sock);
	}
	if (req == NULL)
		return 2;
#ifdef HAVE_TLS
	if (!tls.on)
#endif
	{
		if (g.timeout)
			weft_req_set_timeout(req, g.timeout); /* a server that never greets */
		weft_req_set_callback(req, connected, (void *)sendfd_path);
	}
	int stdin_flags = fcntl(0, F_GETFL);
	if (g.interactive) {
		fcntl(0, F_SETFL, stdin_flags | O_NONBLOCK);
		if (weft_io_new(g.loop, 0, stdin_ready, NULL, &stdin_io) < 0)
			return 2;
	}
	weft_loop_run(g.loop, WEFT_RUN_DEFAULT);
	weft_io_free(stdin_io);
	if (g.interactive)
		fcntl(0, F_SETFL, stdin_flags);
	weft_loop_run(g.loop, WEFT_RUN_DEFAULT); /* let closed handles go */
	weft_loop_free(g.loop);
	for (int i = 0; i < g.ncmds; i++)
		free(g.cmds[i]);
	for (int i = 0; i < g.ninq; i++) {
		free(g.inq[i].keyword);
		free(g.inq[i].path);
	}
	free(agent);
	free(sni);
#ifdef HAVE_TLS
	weft_tls_config_unref(tls.cfg);
#endif
	fflush(stdout);
	return g.last;
}
