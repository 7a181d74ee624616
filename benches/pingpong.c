/* What a child's transport costs per message, without any proxy: a parent
 * and a forked child bounce a 100-byte message N times and the parent
 * prints the mean round trip. The modes are the layouts a proxy can give
 * its child:
 *   0  one socket pair both ways (inetd, socat's EXEC)
 *   1  two pipes (tokio::process, most MCP clients)
 *   2  a socket to the child, a pipe back (forkline: stdin and stderr on a
 *      socket pair, stdout on a pipe)
 * The parent waits in poll(2) before each read, as a proxy's event loop
 * does; the child blocks in read(2), as a simple server does.
 *
 *   gcc -O2 -o pp benches/pingpong.c && for m in 0 1 2; do ./pp $m 100000; done
 */
#define _GNU_SOURCE
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODE(0|1|2) ROUNDS\n", argv[0]);
        return 2;
    }
    int mode = atoi(argv[1]);
    long rounds = atol(argv[2]);
    int s[2], down[2], up[2];
    int parent_write, child_read, child_write, parent_read;
    switch (mode) {
    case 0:
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, s)) die("socketpair");
        parent_write = parent_read = s[0];
        child_read = child_write = s[1];
        break;
    case 1:
        if (pipe(down) || pipe(up)) die("pipe");
        parent_write = down[1], child_read = down[0];
        child_write = up[1], parent_read = up[0];
        break;
    case 2:
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, s) || pipe(up)) die("socketpair/pipe");
        parent_write = s[0], child_read = s[1];
        child_write = up[1], parent_read = up[0];
        break;
    default:
        fprintf(stderr, "mode must be 0, 1 or 2\n");
        return 2;
    }
    char buf[4096];
    memset(buf, 'x', 100);
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        for (;;) {
            ssize_t n = read(child_read, buf, sizeof buf);
            if (n <= 0 || write(child_write, buf, n) != n) _exit(0);
        }
    }
    double start = now();
    for (long i = 0; i < rounds; i++) {
        struct pollfd ready = {parent_read, POLLIN, 0};
        if (write(parent_write, buf, 100) != 100) die("write");
        if (poll(&ready, 1, 10000) != 1) die("poll");
        if (read(parent_read, buf, sizeof buf) <= 0) die("read");
    }
    double elapsed = now() - start;
    printf("mode %d: %.2f us per round trip\n", mode, elapsed / rounds * 1e6);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return 0;
}
