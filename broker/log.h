/*
 * log: one line per event on stderr: "2026-11-25T03:22:13.123Z LEVEL message".
 */
#ifndef GALE_LOG_H
#define GALE_LOG_H

typedef enum {
    LOG_ERROR = 0,
    LOG_WARN = 1,
    LOG_INFO = 2,
    LOG_DEBUG = 3,
} log_level_t;

/** Sets the most verbose level that is printed (default LOG_INFO). */
void log_set_level(log_level_t level);

/** Parses "error", "warn", "info" or "debug"; returns -1 for anything else. */
int log_level_parse(const char *s);

/** True if messages of `level` are printed. */
int log_enabled(log_level_t level);

/** Prints one line at `level` (printf format; a trailing newline is added). */
void log_msg(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_enabled(LOG_DEBUG))                                                                \
            log_msg(LOG_DEBUG, __VA_ARGS__);                                                       \
    } while (0)

#endif
