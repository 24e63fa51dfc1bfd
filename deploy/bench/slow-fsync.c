/* A slower disk for benchmarks: preloaded (LD_PRELOAD) into the services and ghost-bench, it
 * makes every fsync() and fdatasync() wait GHOST_FSYNC_DELAY_US microseconds (default 4000)
 * after the real call returns. Issue 10's targets were set on a disk that took ~4 ms per fsync;
 * this machine's disk sometimes takes 0.1 ms, and then the fsync floor is no longer what a
 * patch's latency is made of. With this, the floor ghost-bench measures (its probe fdatasyncs
 * too) and the latency of the path are both taken on the slower disk, in the same run.
 *
 * Build: cc -O2 -shared -fPIC -o slow-fsync.so deploy/bench/slow-fsync.c -ldl
 * Used by deploy/bench/slow-disk.sh. For benchmarks only: nothing in the product loads it. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <time.h>

static long delay_us(void) {
    static long cached = -1;
    if (cached < 0) {
        const char *text = getenv("GHOST_FSYNC_DELAY_US");
        long value = text ? strtol(text, NULL, 10) : 4000;
        cached = value < 0 ? 0 : value;
    }
    return cached;
}

static void wait_delay(void) {
    long us = delay_us();
    struct timespec left = {us / 1000000, (us % 1000000) * 1000};
    int saved = errno;
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
    errno = saved;
}

/* Calls the C library's own `name` (found once), then waits. */
static int sync_then_wait(const char *name, int (**real)(int), int fd) {
    if (!*real) *real = (int (*)(int))dlsym(RTLD_NEXT, name);
    int rc = (*real)(fd);
    wait_delay();
    return rc;
}

int fsync(int fd) {
    static int (*real)(int);
    return sync_then_wait("fsync", &real, fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    return sync_then_wait("fdatasync", &real, fd);
}
