/* Dirty SIZE MiB of memory at RATE MiB/s (one write per 4 KiB page), forever. */
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
    long rate = argc > 1 ? atol(argv[1]) : 0, size = argc > 2 ? atol(argv[2]) : 64;
    if (rate <= 0 || size <= 0)
        return 0;
    size_t pages = ((size_t)size << 20) / 4096, pos = 0;
    unsigned char *buf = malloc(pages * 4096), value = 1;
    long per_tick = rate * 256 / 10; /* pages per 100 ms */
    struct timespec next;
    if (!buf)
        return 1;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (;;) {
        for (long i = 0; i < per_tick; i++) {
            buf[pos * 4096] = value;
            if (++pos == pages) {
                pos = 0;
                value++;
            }
        }
        next.tv_nsec += 100000000;
        if (next.tv_nsec >= 1000000000) {
            next.tv_nsec -= 1000000000;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
}
