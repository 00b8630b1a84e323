/* bench_sys: clock, /proc sampling of the broker under test, file-descriptor limit. */
#ifndef GALE_BENCH_SYS_H
#define GALE_BENCH_SYS_H

#include <stdint.h>
#include <sys/types.h>

/** CLOCK_MONOTONIC in nanoseconds. */
uint64_t now_ns(void);

/** Seconds of CPU a process has used (utime + stime, all threads), or -1 on error. */
typedef struct {
    double user, sys;
} cpu_t;
int proc_cpu(pid_t pid, cpu_t *out);

/** VmRSS of a process in KiB, or -1 on error. */
long proc_rss_kib(pid_t pid);

/** Raises the soft RLIMIT_NOFILE to the hard limit; returns the resulting soft limit. */
long raise_nofile(void);

#endif
