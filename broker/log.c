#include "log.h"

#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static log_level_t max_level = LOG_INFO;
static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

void log_set_level(log_level_t level)
{
    max_level = level;
}

int log_level_parse(const char *s)
{
    for (int i = 0; i <= LOG_DEBUG; i++)
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    if (strcasecmp(s, "warning") == 0)
        return LOG_WARN;
    return -1;
}

int log_enabled(log_level_t level)
{
    return level <= max_level;
}

void log_msg(log_level_t level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    struct timespec ts;
    struct tm tm;
    char line[1024];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    while (len > 0 && line[len - 1] == '\n')
        len--;
    line[len++] = '\n';
    fwrite(line, 1, len, stderr);
}
