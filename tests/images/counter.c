/* counter [FILE] [INTERVAL_MS]: keeps an incrementing counter in memory, prints it ("count N") and writes it
 * to FILE (default /count) every INTERVAL_MS (default 100). The value lives only in memory, so after a
 * checkpoint/restore it continues from where it was; after a fresh start it begins again at 1.
 * SIGTERM/SIGINT exit with status 42 so tests can tell a delivered signal from a kill. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/count";
    long interval_ms = argc > 2 ? atol(argv[2]) : 100;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (unsigned long n = 1; !stop; n++) {
        printf("count %lu\n", n);
        /* Write then rename so a reader never sees a half-written number. */
        FILE *f = fopen(tmp, "w");
        if (f) {
            fprintf(f, "%lu\n", n);
            fclose(f);
            rename(tmp, path);
        }
        struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && !stop) {}
    }
    return 42;
}
