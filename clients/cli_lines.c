/*
 * cli_lines: a reader thread splitting a descriptor into lines (see cli_lines.h).
 * The thread waits in poll() on the input and on a stop pipe, so
 * cli_lines_free never waits for input that may not come.
 */
#include "cli_lines.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LINE_MAX_BYTES (64u << 20)

typedef struct line {
    struct line *next;
    uint64_t lineno;
    size_t len;
    char text[];
} line_t;

struct cli_lines {
    int fd;
    int stop_pipe[2];
    size_t max_bytes;
    void (*wake)(void *);
    void *arg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t room;
    line_t *head, *tail;
    size_t bytes;
    bool eof;
    int err;
    bool stop;
    uint64_t lineno;
};

/* Queues one line; waits while the queue is full. Returns false when told to stop. */
static bool push(cli_lines_t *r, const char *s, size_t n)
{
    line_t *l = malloc(sizeof(*l) + n + 1);
    if (l == NULL) {
        pthread_mutex_lock(&r->mu);
        r->err = ENOMEM;
        pthread_mutex_unlock(&r->mu);
        return false;
    }
    memcpy(l->text, s, n);
    l->text[n] = '\0';
    l->len = n;
    l->next = NULL;
    pthread_mutex_lock(&r->mu);
    l->lineno = ++r->lineno;
    while (!r->stop && r->bytes > 0 && r->bytes + n > r->max_bytes)
        pthread_cond_wait(&r->room, &r->mu);
    if (r->stop) {
        pthread_mutex_unlock(&r->mu);
        free(l);
        return false;
    }
    bool was_empty = r->head == NULL;
    if (r->tail != NULL)
        r->tail->next = l;
    else
        r->head = l;
    r->tail = l;
    r->bytes += n + 1;
    pthread_mutex_unlock(&r->mu);
    if (was_empty)
        r->wake(r->arg);
    return true;
}

static void finish(cli_lines_t *r, int err)
{
    pthread_mutex_lock(&r->mu);
    r->eof = true;
    if (err && !r->err)
        r->err = err;
    pthread_mutex_unlock(&r->mu);
    r->wake(r->arg);
}

static void *reader(void *arg)
{
    cli_lines_t *r = arg;
    size_t cap = 65536, have = 0;
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, NULL); /* signals go to the loop thread */
    char *buf = malloc(cap);
    if (buf == NULL) {
        finish(r, ENOMEM);
        return NULL;
    }
    for (;;) {
        struct pollfd p[2] = {{.fd = r->fd, .events = POLLIN},
                              {.fd = r->stop_pipe[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            finish(r, errno);
            break;
        }
        if (p[1].revents)
            break;
        if (have == cap) {
            if (cap >= LINE_MAX_BYTES) {
                finish(r, EMSGSIZE);
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (nb == NULL) {
                finish(r, ENOMEM);
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t n = read(r->fd, buf + have, cap - have);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            finish(r, errno);
            break;
        }
        if (n == 0) {
            bool ok = have == 0 || push(r, buf, have);
            if (ok)
                finish(r, 0);
            break;
        }
        size_t start = 0, end = have + (size_t)n;
        bool ok = true;
        for (size_t i = have; i < end && ok; i++) {
            if (buf[i] == '\n') {
                ok = push(r, buf + start, i - start);
                start = i + 1;
            }
        }
        if (!ok)
            break;
        memmove(buf, buf + start, end - start);
        have = end - start;
    }
    free(buf);
    return NULL;
}

cli_lines_t *cli_lines_start(int fd, size_t max_bytes, void (*wake)(void *), void *arg)
{
    cli_lines_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->fd = fd;
    r->max_bytes = max_bytes;
    r->wake = wake;
    r->arg = arg;
    if (pipe2(r->stop_pipe, O_CLOEXEC) != 0) {
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->room, NULL);
    int e = pthread_create(&r->thread, NULL, reader, r);
    if (e != 0) {
        close(r->stop_pipe[0]);
        close(r->stop_pipe[1]);
        pthread_mutex_destroy(&r->mu);
        pthread_cond_destroy(&r->room);
        free(r);
        errno = e;
        return NULL;
    }
    return r;
}

int cli_lines_next(cli_lines_t *r, char **line, size_t *len, uint64_t *lineno, int *err)
{
    int res;
    pthread_mutex_lock(&r->mu);
    line_t *l = r->head;
    if (l != NULL) {
        r->head = l->next;
        if (r->head == NULL)
            r->tail = NULL;
        r->bytes -= l->len + 1;
        pthread_cond_signal(&r->room);
        res = CLI_LINES_LINE;
    } else if (r->err) {
        *err = r->err;
        res = CLI_LINES_ERROR;
    } else {
        res = r->eof ? CLI_LINES_END : CLI_LINES_NONE;
    }
    pthread_mutex_unlock(&r->mu);
    if (l != NULL) {
        /* Hand out the line itself: move the text to the front of its allocation. */
        *lineno = l->lineno;
        *len = l->len;
        memmove(l, l->text, l->len + 1);
        *line = (char *)l;
    }
    return res;
}

void cli_lines_free(cli_lines_t *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_signal(&r->room);
    pthread_mutex_unlock(&r->mu);
    ssize_t w = write(r->stop_pipe[1], "x", 1);
    (void)w;
    pthread_join(r->thread, NULL);
    while (r->head != NULL) {
        line_t *l = r->head;
        r->head = l->next;
        free(l);
    }
    close(r->stop_pipe[0]);
    close(r->stop_pipe[1]);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->room);
    free(r);
}
