/* A slower disk for benchmarks: preloaded (LD_PRELOAD) into the services and ghost-bench, it
 * makes every fsync() and fdatasync() wait GHOST_FSYNC_DELAY_US microseconds (default 4000,
 * at most 10 s) after the real call returns. Issue 10's targets were set on a disk that took
 * ~4 ms per fsync; this machine's disk sometimes takes 0.1 ms, and then the fsync floor is no
 * longer what a patch's latency is made of. With this, the floor ghost-bench measures (its
 * probe fdatasyncs too) and the latency of the path are both taken with the same added delay,
 * in the same run. It adds time per call; it does not queue calls as one real device would.
 *
 * With GHOST_FSYNC_COUNT_DIR set, each process also writes `<dir>/<pid>` at exit:
 * "<executable name> <calls>" (fsync + fdatasync), so a test can count a patch's fsyncs.
 *
 * Build: cc -O2 -shared -fPIC -o slow-fsync.so deploy/bench/slow-fsync.c -ldl
 * Used by deploy/bench/slow-disk.sh. For benchmarks only: nothing in the product loads it. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_DELAY_US 10000000L

static long delay_us = 4000;
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static unsigned long calls;

__attribute__((constructor)) static void init(void) {
    const char *text = getenv("GHOST_FSYNC_DELAY_US");
    if (text) {
        long value = strtol(text, NULL, 10);
        delay_us = value < 0 ? 0 : value > MAX_DELAY_US ? MAX_DELAY_US : value;
    }
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    errno = 0;
}

__attribute__((destructor)) static void report(void) {
    const char *dir = getenv("GHOST_FSYNC_COUNT_DIR");
    if (!dir) return;
    char exe[4096];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[len < 0 ? 0 : len] = '\0';
    const char *name = strrchr(exe, '/') ? strrchr(exe, '/') + 1 : exe;
    char path[4096];
    snprintf(path, sizeof path, "%s/%ld", dir, (long)getpid());
    FILE *out = fopen(path, "w");
    if (!out) return;
    fprintf(out, "%s %lu\n", name, __atomic_load_n(&calls, __ATOMIC_RELAXED));
    fclose(out);
}

/* Calls the C library's own function, then waits; errno is the real call's. */
static int sync_then_wait(int (*real)(int), int fd) {
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    int rc = real(fd);
    int saved = errno;
    __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
    struct timespec left = {delay_us / 1000000, (delay_us % 1000000) * 1000};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
    errno = saved;
    return rc;
}

int fsync(int fd) { return sync_then_wait(real_fsync, fd); }

int fdatasync(int fd) { return sync_then_wait(real_fdatasync, fd); }
