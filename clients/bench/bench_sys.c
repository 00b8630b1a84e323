/* bench_sys: see bench_sys.h. */
#include "bench_sys.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int proc_cpu(pid_t pid, cpu_t *out)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    /* The command name may hold spaces and parentheses: fields follow the last ')'. */
    char *p = strrchr(buf, ')');
    unsigned long long ut, st;
    /* After ')': state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
     * utime(14) stime(15). */
    if (!p ||
        sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    double hz = (double)sysconf(_SC_CLK_TCK);
    out->user = (double)ut / hz;
    out->sys = (double)st / hz;
    return 0;
}

long proc_rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kib = -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kib;
}

long raise_nofile(void)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) < 0)
        return -1;
    if (r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max; /* never above the hard limit */
        if (setrlimit(RLIMIT_NOFILE, &r) < 0)
            getrlimit(RLIMIT_NOFILE, &r);
    }
    return r.rlim_cur == RLIM_INFINITY ? 1L << 30 : (long)r.rlim_cur;
}

/* Connects to [HOST:]PORT with 2 s send and receive timeouts; -1 with @err set. */
static int redis_connect(const char *where, char *err, size_t errcap)
{
    char host[256] = "127.0.0.1";
    const char *port = where, *colon = strrchr(where, ':');
    if (colon) {
        size_t hl = (size_t)(colon - where);
        if (hl == 0 || hl >= sizeof(host)) {
            snprintf(err, errcap, "%s: bad host", where);
            return -1;
        }
        memcpy(host, where, hl);
        host[hl] = 0;
        port = colon + 1;
    }
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errcap, "%s: %s", where, gai_strerror(rc));
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 2};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        snprintf(err, errcap, "%s: %s", where, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

/* Reads one bulk string reply into a malloc'd NUL-terminated buffer; NULL with @err set. */
static char *redis_bulk(int fd, char *err, size_t errcap)
{
    size_t cap = 1 << 16, len = 0, want = 0;
    char *buf = malloc(cap);
    while (buf) {
        char *eol = len ? memchr(buf, '\n', len) : NULL;
        if (eol && buf[0] != '$') {
            snprintf(err, errcap, "INFO answered %.*s", (int)(eol - buf > 100 ? 100 : eol - buf),
                     buf);
            break;
        }
        if (eol && !want)
            want = (size_t)(eol - buf) + 1 + strtoull(buf + 1, NULL, 10) + 2;
        if (want && len >= want) {
            buf[len] = 0;
            return buf;
        }
        if (len + 1 >= cap) {
            char *nb = cap < (1u << 22) ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                snprintf(err, errcap, "INFO answer too long");
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n <= 0) {
            snprintf(err, errcap, "INFO: %s", n == 0 ? "connection closed" : strerror(errno));
            break;
        }
        len += (size_t)n;
    }
    free(buf);
    return NULL;
}

int redis_commandstats(const char *where, redis_stat_t *out, int max, char *err, size_t errcap)
{
    static const char req[] = "INFO commandstats\r\n";
    int fd = redis_connect(where, err, errcap);
    if (fd < 0)
        return -1;
    char *text = NULL;
    if (send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL) != (ssize_t)sizeof(req) - 1)
        snprintf(err, errcap, "%s: %s", where, strerror(errno));
    else
        text = redis_bulk(fd, err, errcap);
    close(fd);
    if (!text)
        return -1;
    int n = 0;
    for (char *line = strstr(text, "cmdstat_"); line && n < max;
         line = strstr(line + 1, "\ncmdstat_")) {
        if (*line == '\n')
            line++;
        char *colon = strchr(line, ':'), *calls = strstr(line, ":calls=");
        size_t nl = colon ? (size_t)(colon - line) - 8 : 0;
        if (!colon || calls != colon || nl == 0 || nl >= sizeof(out[n].name))
            continue;
        memcpy(out[n].name, line + 8, nl);
        out[n].name[nl] = 0;
        out[n].calls = strtoull(calls + 7, NULL, 10);
        n++;
    }
    free(text);
    return n;
}

uint64_t redis_calls(const redis_stat_t *st, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(st[i].name, name) == 0)
            return st[i].calls;
    return 0;
}
