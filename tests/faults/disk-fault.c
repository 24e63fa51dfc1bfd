/* A failing disk for the fault suite: preloaded (LD_PRELOAD) into one service, it makes writes
 * and flushes of files under GHOST_FAULT_DIR fail or hang while the control file
 * GHOST_FAULT_CONTROL says so. The test writes one word there at run time:
 *
 *   ok      every call goes to the C library (also when the file is missing or unreadable)
 *   eio     write/pwrite/fsync/fdatasync of those files fail with EIO
 *   fsync   fsync/fdatasync of those files fail with EIO; writes succeed
 *   stall   fsync/fdatasync of those files wait until the word changes (at most 120 s)
 *
 * Other descriptors (sockets, pipes, logs elsewhere) are never touched. The control file is
 * read at most every 5 ms. Built by the test: cc -O2 -shared -fPIC -o disk-fault.so
 * tests/faults/disk-fault.c -ldl. For tests only: nothing in the product loads it. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum mode { MODE_OK, MODE_EIO, MODE_FSYNC, MODE_STALL };

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static const char *control;
static const char *dir;
static size_t dir_len;
static int cached_mode = MODE_OK;
static long long cached_at_ns;

__attribute__((constructor)) static void init(void) {
    int saved = errno;
    real_write = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    real_pwrite = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = (ssize_t (*)(int, const void *, size_t, off64_t))dlsym(RTLD_NEXT, "pwrite64");
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    control = getenv("GHOST_FAULT_CONTROL");
    dir = getenv("GHOST_FAULT_DIR");
    dir_len = dir ? strlen(dir) : 0;
    errno = saved;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The word in the control file, re-read at most every 5 ms. */
static int mode(void) {
    if (!control) return MODE_OK;
    long long now = now_ns();
    long long last = __atomic_load_n(&cached_at_ns, __ATOMIC_RELAXED);
    if (last != 0 && now - last < 5000000LL) return __atomic_load_n(&cached_mode, __ATOMIC_RELAXED);
    int saved = errno;
    int found = MODE_OK;
    int fd = open(control, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char word[16] = {0};
        ssize_t got = read(fd, word, sizeof word - 1);
        close(fd);
        if (got > 0) {
            if (strncmp(word, "eio", 3) == 0) found = MODE_EIO;
            else if (strncmp(word, "fsync", 5) == 0) found = MODE_FSYNC;
            else if (strncmp(word, "stall", 5) == 0) found = MODE_STALL;
        }
    }
    __atomic_store_n(&cached_mode, found, __ATOMIC_RELAXED);
    __atomic_store_n(&cached_at_ns, now, __ATOMIC_RELAXED);
    errno = saved;
    return found;
}

/* True when fd is a regular file under GHOST_FAULT_DIR. */
static int in_scope(int fd) {
    if (!dir || dir_len == 0) return 0;
    int saved = errno;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        errno = saved;
        return 0;
    }
    char link[64];
    char path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, path, sizeof path - 1);
    errno = saved;
    if (len <= 0) return 0;
    path[len] = '\0';
    return strncmp(path, dir, dir_len) == 0 && (path[dir_len] == '/' || path[dir_len] == '\0');
}

static int write_fails(int fd) {
    return mode() == MODE_EIO && in_scope(fd);
}

static int sync_fault(int fd) {
    int now = mode();
    if (now == MODE_OK || !in_scope(fd)) return 0;
    if (now == MODE_EIO || now == MODE_FSYNC) return 1;
    /* stall: wait until the word changes, bounded. */
    long long until = now_ns() + 120LL * 1000000000LL;
    while (mode() == MODE_STALL && now_ns() < until) {
        struct timespec pause = {0, 5000000L};
        nanosleep(&pause, NULL);
    }
    return mode() == MODE_EIO || mode() == MODE_FSYNC;
}

ssize_t write(int fd, const void *buf, size_t count) {
    if (write_fails(fd)) {
        errno = EIO;
        return -1;
    }
    if (!real_write) {
        errno = ENOSYS;
        return -1;
    }
    return real_write(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    if (write_fails(fd)) {
        errno = EIO;
        return -1;
    }
    if (!real_pwrite) {
        errno = ENOSYS;
        return -1;
    }
    return real_pwrite(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    if (write_fails(fd)) {
        errno = EIO;
        return -1;
    }
    if (!real_pwrite64) {
        errno = ENOSYS;
        return -1;
    }
    return real_pwrite64(fd, buf, count, offset);
}

int fsync(int fd) {
    if (sync_fault(fd)) {
        errno = EIO;
        return -1;
    }
    if (!real_fsync) {
        errno = ENOSYS;
        return -1;
    }
    return real_fsync(fd);
}

int fdatasync(int fd) {
    if (sync_fault(fd)) {
        errno = EIO;
        return -1;
    }
    if (!real_fdatasync) {
        errno = ENOSYS;
        return -1;
    }
    return real_fdatasync(fd);
}
