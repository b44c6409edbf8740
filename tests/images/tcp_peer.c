/* tcp_peer HOST PORT [FILE]: keeps ONE TCP connection to an echo server, sends an increasing sequence
 * number every 100ms and checks the echo. Prints and writes to FILE (default /peer) "ok N" while the
 * connection lives; on any error prints "broken N <reason>" and exits 1, so a test can see whether a
 * connection survived a checkpoint/restore. Reconnecting is deliberately not attempted. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void report(const char *path, const char *line) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f) {
        fputs(line, f);
        fclose(f);
        rename(tmp, path);
    }
    fputs(line, stdout);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: tcp_peer HOST PORT [FILE]\n");
        return 2;
    }
    const char *path = argc > 3 ? argv[3] : "/peer";
    char line[256];
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        snprintf(line, sizeof line, "broken 0 connect: %s\n", strerror(errno));
        report(path, line);
        return 1;
    }
    for (unsigned long n = 1;; n++) {
        unsigned long got = 0;
        size_t off = 0;
        if (write(s, &n, sizeof n) != sizeof n) {
            snprintf(line, sizeof line, "broken %lu write: %s\n", n, strerror(errno));
            report(path, line);
            return 1;
        }
        while (off < sizeof got) {
            ssize_t r = read(s, (char *)&got + off, sizeof got - off);
            if (r <= 0) {
                snprintf(line, sizeof line, "broken %lu read: %s\n", n, r == 0 ? "eof" : strerror(errno));
                report(path, line);
                return 1;
            }
            off += r;
        }
        if (got != n) {
            snprintf(line, sizeof line, "broken %lu mismatch %lu\n", n, got);
            report(path, line);
            return 1;
        }
        snprintf(line, sizeof line, "ok %lu\n", n);
        report(path, line);
        struct timespec ts = {0, 100000000L};
        nanosleep(&ts, NULL);
    }
}
