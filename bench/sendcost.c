/*
 * sendcost: the kernel's price of one small send() on a loopback TCP connection, the unit
 * cost of an unbatched fan-out, with and without a sleeping receiver to wake.
 *
 * Opens N loopback TCP connections; a forked receiver drains them with epoll, either
 * sleeping in epoll_wait (--receiver sleep: every send may have to wake it, as a subscriber
 * process normally does) or spinning on epoll_wait(0) (--receiver spin: it is always
 * running, no wake-up needed). The sender writes one SIZE-byte message to each connection
 * per round, ROUNDS rounds GAP ms apart (a publish rate of 1000/GAP per second), and reports
 * its own CPU time (user + system, getrusage) per send and the wall time of one round.
 *
 *   cc -O2 -o sendcost bench/sendcost.c
 *   ./sendcost --conns 10000 --rounds 50 --gap 10 --receiver sleep
 *
 * Everything stays on 127.0.0.1; the sender and receiver are killed when it ends.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void receive(int *fds, int n, int spin)
{
    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    for (int i = 0; i < n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0)
            die("epoll_ctl");
    }
    struct epoll_event evs[512];
    char buf[65536];
    for (;;) {
        int k = epoll_wait(ep, evs, 512, spin ? 0 : -1);
        for (int i = 0; i < k; i++)
            while (recv(evs[i].data.fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
                ;
    }
}

int main(int argc, char **argv)
{
    int conns = 1000, rounds = 50, gap_ms = 10, spin = 0;
    size_t size = 150;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--conns"))
            conns = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rounds"))
            rounds = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--gap"))
            gap_ms = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--size"))
            size = (size_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--receiver"))
            spin = !strcmp(argv[i + 1], "spin");
        else {
            fprintf(stderr, "sendcost: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (conns < 1 || conns > 9000 || rounds < 1 || rounds > 100000 || gap_ms < 0 || !size ||
        size > 4096) {
        fprintf(stderr, "sendcost: --conns 1..9000 (two fds each), --rounds 1..100000, "
                        "--size 1..4096\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(ls, 4096) < 0 ||
        getsockname(ls, (struct sockaddr *)&a, &alen) < 0)
        die("listen");
    int *snd = calloc((size_t)conns, sizeof(int)), *rcv = calloc((size_t)conns, sizeof(int));
    if (!snd || !rcv)
        die("calloc");
    for (int i = 0; i < conns; i++) {
        int one = 1;
        rcv[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (rcv[i] < 0 || connect(rcv[i], (struct sockaddr *)&a, sizeof(a)) < 0)
            die("connect");
        snd[i] = accept(ls, NULL, NULL);
        if (snd[i] < 0)
            die("accept");
        setsockopt(snd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    close(ls);

    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        for (int i = 0; i < conns; i++)
            close(snd[i]);
        receive(rcv, conns, spin);
        _exit(0);
    }
    for (int i = 0; i < conns; i++)
        close(rcv[i]);

    char *msg = malloc(size);
    if (!msg)
        die("malloc");
    memset(msg, 'x', size);
    usleep(200000);
    double worst = 0, total_wall = 0, c0 = cpu_s();
    for (int r = 0; r < rounds; r++) {
        double t0 = now_s();
        for (int i = 0; i < conns; i++)
            if (send(snd[i], msg, size, MSG_NOSIGNAL) != (ssize_t)size)
                die("send");
        double w = now_s() - t0;
        total_wall += w;
        if (w > worst)
            worst = w;
        if (gap_ms && w * 1000 < gap_ms)
            usleep((useconds_t)((gap_ms - w * 1000) * 1000));
    }
    double cpu = cpu_s() - c0;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    printf("conns %d rounds %d gap %d ms size %zu receiver %s: sender CPU %.2f us/send, "
           "round wall mean %.2f ms, max %.2f ms\n",
           conns, rounds, gap_ms, size, spin ? "spin" : "sleep",
           cpu * 1e6 / ((double)conns * rounds), total_wall * 1000 / rounds, worst * 1000);
    return 0;
}
