/* memhog MIB [FILE]: allocates MIB MiB, fills every page with a pattern derived from its index, then keeps
 * a counter (printed and written to FILE, default /memhog, as "ok N" once per ~100ms) while re-checking
 * one page per tick. A wrong byte prints "corrupt PAGE" and exits 1: after a restore the memory must come
 * back exactly. Used by the checkpoint/restore benchmarks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t pattern(size_t page) { return 0x9E3779B97F4A7C15ULL * (page + 1); }

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
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    const char *path = argc > 2 ? argv[2] : "/memhog";
    const size_t page = 4096, pages = mib * 1024 * 1024 / page;
    char line[128];
    setvbuf(stdout, NULL, _IOLBF, 0);
    uint64_t *mem = malloc(pages * page);
    if (!mem) {
        perror("memhog: malloc");
        return 1;
    }
    for (size_t p = 0; p < pages; p++) {
        uint64_t *w = (uint64_t *)((char *)mem + p * page);
        for (size_t i = 0; i < page / 8; i++) w[i] = pattern(p) ^ i;
    }
    printf("filled %zu MiB\n", mib);
    for (unsigned long n = 1;; n++) {
        size_t p = n % (pages ? pages : 1);
        uint64_t *w = (uint64_t *)((char *)mem + p * page);
        for (size_t i = 0; pages && i < page / 8; i++) {
            if (w[i] != (pattern(p) ^ i)) {
                snprintf(line, sizeof line, "corrupt %zu\n", p);
                report(path, line);
                return 1;
            }
        }
        snprintf(line, sizeof line, "ok %lu\n", n);
        report(path, line);
        struct timespec ts = {0, 100000000L};
        nanosleep(&ts, NULL);
    }
}
