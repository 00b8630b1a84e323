/* bench_sys: clock, /proc sampling of the broker under test, file-descriptor limit. */
#ifndef GALE_BENCH_SYS_H
#define GALE_BENCH_SYS_H

#include <stddef.h>
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

/** One line of Redis's INFO commandstats: cmdstat_NAME:calls=CALLS,... */
typedef struct {
    char name[48];
    uint64_t calls;
} redis_stat_t;

/**
 * Asks the Redis server at [HOST:]PORT (HOST: 127.0.0.1) for INFO commandstats, over a
 * plain TCP connection of its own (no AUTH), each step bounded by 2 s. Fills @out with at
 * most @max commands. Returns how many, or -1 with the reason in @err (@errcap bytes).
 */
int redis_commandstats(const char *where, redis_stat_t *out, int max, char *err, size_t errcap);

/** The calls of command @name in @st[0..n), 0 if absent. */
uint64_t redis_calls(const redis_stat_t *st, int n, const char *name);

#endif
