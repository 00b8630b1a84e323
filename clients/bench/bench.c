/*
 * bench: `gale bench`, the load generator for any broker speaking gale v1, or NATS
 * (nats-server's WebSocket listener) with --proto nats, or MQTT 3.1.1 over WebSocket
 * (gale-broker's /mqtt, mosquitto) with --proto mqtt.
 * This file: command line, the coordinating parent (forks workers, holds the publishers,
 * samples the broker's CPU and memory from /proc) and the report. See bench.h for the
 * process model and bench/README.md for how to run it.
 */
#include "bench.h"
#include "bench_msg.h"
#include "bench_mqtt.h"
#include "bench_nats.h"
#include "bench_sys.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define STALL_NS 10000000000ull /* a publisher with nothing answered for this long stops */
#define RATE_OUTSTANDING 65536  /* --rate: unanswered publishes allowed per publisher */
#define PROGRESS_EVERY_NS 500000000ull
#define GRACE_NS 5000000000ull /* extra wait for worker reports past their own deadline */

enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_NOCONNECT = 3 };

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void usage(FILE *f)
{
    fputs("usage: gale bench SCENARIO [options]\n"
          "\n"
          "Scenarios:\n"
          "  fanout    S subscribers on topic bench.fanout, P publishers: exact delivery counts,\n"
          "            order, publish-to-receive latency, broker CPU per delivery\n"
          "  topics    like fanout over --topics topics (subscriber i on bench.topic.<i % T>,\n"
          "            publishers round-robin): many topics, few subscribers each\n"
          "  conns     open --conns connections (--subscribe: each on bench.conn.<i>), hold\n"
          "            them --hold seconds: set-up rate, broker RSS per connection; with\n"
          "            --topics-per-conn K connection i subscribes to bench.conn.<i*K+j>, j<K\n"
          "            (hold many topics in a broker while another bench measures it)\n"
          "  connect   open, upgrade, wait for hello and close connections for --duration\n"
          "            with --concurrency at once: handshakes per second\n"
          "  recover   --subs subscribers of " RECOVER_TOPIC " (the broker needs a --history\n"
          "            rule for it) subscribe, all disconnect, --msgs are published, all\n"
          "            reconnect with since {ep, off}: recovered, lost, duplicated, time until\n"
          "            the last one is caught up (its ack)\n"
          "\n"
          "Common options:\n"
          "  --url ws://HOST:PORT/PATH   broker endpoint (default ws://127.0.0.1:8080/ws)\n"
          "  --proto gale|nats|mqtt      gale v1 (default), or the NATS client protocol over\n"
          "                              nats-server's WebSocket listener (no_tls: true):\n"
          "                              INFO is the hello, SUB + PING's PONG the ack, and\n"
          "                              every PUB is followed by a PING whose PONG acks it;\n"
          "                              or MQTT 3.1.1 over WebSocket (subprotocol mqtt, e.g.\n"
          "                              ws://HOST:PORT/mqtt): CONNECT, CONNACK is the hello,\n"
          "                              SUBSCRIBE QoS 0 + SUBACK the sub and its ack, every\n"
          "                              QoS 0 PUBLISH is followed by a PINGREQ whose PINGRESP\n"
          "                              acks it; topic a.b is MQTT a/b\n"
          "  --pub-url ws://HOST:PORT/PATH  publishers' endpoint, e.g. another cluster node\n"
          "                              (fanout, topics; default: --url)\n"
          "  --encoding json|msgpack     subprotocol gale.v1.json or gale.v1.msgpack (json;\n"
          "                              --proto nats, mqtt: the payload is JSON, msgpack\n"
          "                              refused)\n"
          "  --procs N                   worker processes holding the connections (1)\n"
          "  --concurrency N             connections in set-up at once per worker (256;\n"
          "                              connect: concurrent open/close loops per worker, 16)\n"
          "  --setup-timeout SECS        bound on connecting and subscribing (60)\n"
          "  --src-addrs N               spread loopback sources over 127.0.1.1.. (64, 0 off)\n"
          "  --pid PID                   the broker's pid: report its CPU and RSS from /proc\n"
          "  --json                      one JSON summary on stdout instead of the report\n"
          "\n"
          "fanout / topics:\n"
          "  --subs N (100; topics: 1000)  --pubs N (1)  --topics N (topics: 100)\n"
          "  --rate R        messages/s per publisher; 0: as fast as acks allow (0)\n"
          "  --window N      unacknowledged publishes per publisher at --rate 0 (64)\n"
          "  --messages M    messages per publisher (1000 unless --duration is given)\n"
          "  --duration SECS publish for this long (with --messages: whichever ends first)\n"
          "  --size BYTES    payload size, about (100)\n"
          "  --drain SECS    wait for in-flight deliveries after the last ack (5)\n"
          "  --mask zero|random  client mask key of publish frames (zero: XOR with 0, legal)\n"
          "conns:   --conns N (1000)  --hold SECS (2)  --subscribe  --topics-per-conn K (1)\n"
          "recover: --subs N (10000)  --msgs M (100; at most the broker's --recovery-max)\n"
          "         --size BYTES (100)  --window N (64)  --pub-url (the publisher's broker)\n"
          "         --reconnect-url ws://..  where subscribers come back (default: --url)\n"
          "         --redis-cli [HOST:]PORT  Redis's INFO commandstats before and after the\n"
          "                    reconnect: the commands it cost (evalsha: history reads)\n"
          "         --setup-timeout bounds the subscription and the reconnect each\n"
          "connect: --duration SECS (3)\n"
          "\n"
          "Exit status: 0 complete without loss or error, 1 losses or errors, 2 usage,\n"
          "3 could not connect.\n",
          f);
}

static int bad(const char *fmt, const char *a)
{
    fprintf(stderr, "gale bench: ");
    fprintf(stderr, fmt, a);
    fprintf(stderr, "\n(gale bench --help for usage)\n");
    return -1;
}

static int num(const char *s, double lo, double hi, double *out, const char *name)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "gale bench: %s: bad value '%s' (from %g to %g)\n", name, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_url(bws_target_t *t, const char *url)
{
    if (strncmp(url, "wss://", 6) == 0)
        return bad("%s: wss:// is not supported by gale bench (use ws:// on loopback)", url);
    if (strncmp(url, "ws://", 5) != 0)
        return bad("%s: the URL must start with ws://", url);
    const char *h = url + 5, *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    char host[256];
    if (hl == 0 || hl >= sizeof(host))
        return bad("%s: bad host in the URL", url);
    memcpy(host, h, hl);
    host[hl] = 0;
    snprintf(t->host, sizeof(t->host), "%s", host);
    snprintf(t->path, sizeof(t->path), "%s", slash ? slash : "/");
    const char *port = "80";
    char *colon = strrchr(host, ':');
    if (colon) {
        *colon = 0;
        port = colon + 1;
    }
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "gale bench: %s: %s\n", url, gai_strerror(rc));
        return -1;
    }
    memcpy(&t->addr, ai->ai_addr, sizeof(t->addr));
    freeaddrinfo(ai);
    return 0;
}

enum {
    O_URL = 256,
    O_PUB_URL,
    O_ENC,
    O_SUBS,
    O_PUBS,
    O_TOPICS,
    O_CONNS,
    O_RATE,
    O_MESSAGES,
    O_DURATION,
    O_SIZE,
    O_PROCS,
    O_WINDOW,
    O_CONC,
    O_HOLD,
    O_SUBSCRIBE,
    O_TOPICS_PER_CONN,
    O_PID,
    O_JSON,
    O_DRAIN,
    O_SETUP,
    O_SRC,
    O_MASK,
    O_PROTO,
    O_MSGS,
    O_RECONNECT_URL,
    O_REDIS_CLI,
    O_HELP
};

static int parse_opts(opts_t *o, int argc, char **argv)
{
    static const struct option lo[] = {{"url", 1, 0, O_URL},
                                       {"encoding", 1, 0, O_ENC},
                                       {"subs", 1, 0, O_SUBS},
                                       {"pubs", 1, 0, O_PUBS},
                                       {"topics", 1, 0, O_TOPICS},
                                       {"conns", 1, 0, O_CONNS},
                                       {"rate", 1, 0, O_RATE},
                                       {"messages", 1, 0, O_MESSAGES},
                                       {"duration", 1, 0, O_DURATION},
                                       {"size", 1, 0, O_SIZE},
                                       {"procs", 1, 0, O_PROCS},
                                       {"window", 1, 0, O_WINDOW},
                                       {"concurrency", 1, 0, O_CONC},
                                       {"hold", 1, 0, O_HOLD},
                                       {"subscribe", 0, 0, O_SUBSCRIBE},
                                       {"topics-per-conn", 1, 0, O_TOPICS_PER_CONN},
                                       {"pid", 1, 0, O_PID},
                                       {"json", 0, 0, O_JSON},
                                       {"drain", 1, 0, O_DRAIN},
                                       {"setup-timeout", 1, 0, O_SETUP},
                                       {"src-addrs", 1, 0, O_SRC},
                                       {"mask", 1, 0, O_MASK},
                                       {"pub-url", 1, 0, O_PUB_URL},
                                       {"proto", 1, 0, O_PROTO},
                                       {"msgs", 1, 0, O_MSGS},
                                       {"reconnect-url", 1, 0, O_RECONNECT_URL},
                                       {"redis-cli", 1, 0, O_REDIS_CLI},
                                       {"help", 0, 0, O_HELP},
                                       {0, 0, 0, 0}};
    const char *url = "ws://127.0.0.1:8080/ws", *proto = NULL;
    double v = 0, subs = -1, topics = -1, conc = -1, duration = -1, messages = -1;
    o->pubs = 1;
    o->conns = 1000;
    o->procs = 1;
    o->window = 64;
    o->size = 100;
    o->hold = 2;
    o->drain = 5;
    o->setup_timeout = 60;
    o->target.src_addrs = 64;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":", lo, NULL)) != -1) {
        const char *name = optind > 0 && optind <= argc ? argv[optind - 1] : "option";
        int rc = 0;
        switch (c) {
        case O_URL:
            url = optarg;
            break;
        case O_PUB_URL:
            o->pub_url = optarg;
            break;
        case O_ENC:
            if (strcmp(optarg, "json") && strcmp(optarg, "msgpack"))
                return bad("--encoding: '%s' is neither json nor msgpack", optarg);
            o->msgpack = strcmp(optarg, "msgpack") == 0;
            break;
        case O_SUBS:
            rc = num(optarg, 0, 1e7, &subs, "--subs");
            break;
        case O_PUBS:
            rc = num(optarg, 1, MAX_PUBS, &v, "--pubs"), o->pubs = (uint32_t)v;
            break;
        case O_TOPICS:
            rc = num(optarg, 1, 999999, &topics, "--topics");
            break;
        case O_CONNS:
            rc = num(optarg, 1, 1e7, &v, "--conns"), o->conns = (uint32_t)v;
            break;
        case O_RATE:
            rc = num(optarg, 0, 1e7, &o->rate, "--rate");
            break;
        case O_MESSAGES:
            rc = num(optarg, 1, 1e12, &messages, "--messages");
            break;
        case O_MSGS:
            rc = num(optarg, 1, 1e6, &messages, "--msgs");
            break;
        case O_RECONNECT_URL:
            o->reconnect_url = optarg;
            break;
        case O_REDIS_CLI:
            o->redis = optarg;
            break;
        case O_DURATION:
            rc = num(optarg, 0.001, 86400, &duration, "--duration");
            break;
        case O_SIZE:
            rc = num(optarg, 1, BENCH_MAX_SIZE, &v, "--size"), o->size = (size_t)v;
            break;
        case O_PROCS:
            rc = num(optarg, 1, MAX_PROCS, &v, "--procs"), o->procs = (uint32_t)v;
            break;
        case O_WINDOW:
            rc = num(optarg, 1, 1e6, &v, "--window"), o->window = (uint32_t)v;
            break;
        case O_CONC:
            rc = num(optarg, 1, 1e6, &conc, "--concurrency");
            break;
        case O_HOLD:
            rc = num(optarg, 0, 86400, &o->hold, "--hold");
            break;
        case O_SUBSCRIBE:
            o->subscribe = true;
            break;
        case O_TOPICS_PER_CONN:
            rc = num(optarg, 1, 65536, &v, "--topics-per-conn"), o->topics_per_conn = (uint32_t)v;
            break;
        case O_PID:
            rc = num(optarg, 1, 1e9, &v, "--pid"), o->pid = (pid_t)v;
            break;
        case O_JSON:
            o->json = true;
            break;
        case O_DRAIN:
            rc = num(optarg, 0, 3600, &o->drain, "--drain");
            break;
        case O_SETUP:
            rc = num(optarg, 0.1, 3600, &o->setup_timeout, "--setup-timeout");
            break;
        case O_SRC:
            rc = num(optarg, 0, 254 * 254, &v, "--src-addrs"), o->target.src_addrs = (unsigned)v;
            break;
        case O_PROTO:
            if (strcmp(optarg, "gale") && strcmp(optarg, "nats") && strcmp(optarg, "mqtt"))
                return bad("--proto: '%s' is not gale, nats or mqtt", optarg);
            if (proto && strcmp(proto, optarg) != 0)
                return bad("--proto given twice (%s): one protocol per run", optarg);
            proto = optarg;
            o->nats = strcmp(optarg, "nats") == 0;
            o->mqtt = strcmp(optarg, "mqtt") == 0;
            break;
        case O_MASK:
            if (strcmp(optarg, "zero") && strcmp(optarg, "random"))
                return bad("--mask: '%s' is neither zero nor random", optarg);
            o->random_mask = strcmp(optarg, "random") == 0;
            break;
        case O_HELP:
            usage(stdout);
            exit(EXIT_OK);
        case ':':
            return bad("%s needs a value", name);
        default:
            return bad("unknown option %s", name);
        }
        if (rc)
            return -1;
    }
    if (optind < argc)
        return bad("unexpected argument '%s'", argv[optind]);
    o->url = url;
    if ((o->nats || o->mqtt) && o->msgpack)
        return bad("--encoding msgpack does not apply to --proto %s (its payloads are the "
                   "bench's JSON data)",
                   o->nats ? "nats" : "mqtt");
    if (o->pid > 0 && proc_rss_kib(o->pid) < 0) {
        fprintf(stderr, "gale bench: --pid %d: cannot read /proc/%d/status: %s\n", (int)o->pid,
                (int)o->pid, strerror(errno));
        return -1;
    }
    bool pubsub = o->sc == SC_FANOUT || o->sc == SC_TOPICS;
    bool recover = o->sc == SC_RECOVER;
    if (!recover && (o->reconnect_url || o->redis))
        return bad("--reconnect-url and --redis-cli apply to the recover scenario only%s", "");
    if (recover && (o->nats || o->mqtt))
        return bad("recover needs gale v1's history (sub with since), not --proto %s",
                   o->nats ? "nats" : "mqtt");
    if (recover && (duration > 0 || o->pubs != 1 || o->rate > 0))
        return bad("recover publishes --msgs messages from one publisher as fast as acks allow "
                   "(no --duration, --pubs, --rate)%s",
                   "");
    o->topics = o->sc == SC_TOPICS ? (topics > 0 ? (uint32_t)topics : 100) : 1;
    if (topics > 0 && o->sc != SC_TOPICS)
        return bad("--topics applies to the topics scenario only%s", "");
    if (o->topics_per_conn > 1 && o->sc != SC_CONNS)
        return bad("--topics-per-conn applies to the conns scenario only%s", "");
    if (o->topics_per_conn > 1)
        o->subscribe = true; /* it says what to subscribe to */
    if (!o->topics_per_conn)
        o->topics_per_conn = 1;
    o->subs = subs >= 0 ? (uint32_t)subs : recover ? 10000 : o->sc == SC_TOPICS ? 1000 : 100;
    if (recover && o->subs == 0)
        return bad("recover needs --subs of at least 1%s", "");
    o->concurrency = conc > 0 ? (uint32_t)conc : o->sc == SC_CONNECT ? 16 : 256;
    if (pubsub) {
        o->duration = duration > 0 ? duration : 0;
        o->messages = messages > 0 ? (uint64_t)messages : duration > 0 ? 0 : 1000;
    } else if (recover) {
        o->duration = 0;
        o->messages = messages > 0 ? (uint64_t)messages : 100;
    } else {
        o->duration = duration > 0 ? duration : 3;
    }
    /* nats-server offers no subprotocol and streams NATS in frames of any size; MQTT packets
     * may span frames too (the subprotocol "mqtt", 3.1.1's name for it, MQTT-6.0.0-3). */
    o->target.proto = o->nats      ? NULL
                      : o->mqtt    ? "mqtt"
                      : o->msgpack ? "gale.v1.msgpack"
                                   : "gale.v1.json";
    o->target.stream = o->nats || o->mqtt;
    if (parse_url(&o->target, url) < 0)
        return -1;
    o->pub_target = o->target;
    o->reconnect_target = o->target;
    if (o->reconnect_url && parse_url(&o->reconnect_target, o->reconnect_url) < 0)
        return -1;
    return o->pub_url ? parse_url(&o->pub_target, o->pub_url) : 0;
}

void bench_mqtt_client_id(const opts_t *o, uint32_t index, char *out, size_t cap)
{
    snprintf(out, cap, "gb-%u-%u", o->run_id, index); /* 23 characters at most (3.1.3-5) */
}

void bench_topic(const opts_t *o, uint32_t i, char *out, size_t cap)
{
    if (o->sc == SC_TOPICS)
        snprintf(out, cap, "bench.topic.%0*u", TOPIC_IDX_DIGITS, i % o->topics);
    else if (o->sc == SC_CONNS)
        snprintf(out, cap, "bench.conn.%u", i);
    else if (o->sc == SC_RECOVER)
        snprintf(out, cap, "%s", RECOVER_TOPIC);
    else
        snprintf(out, cap, "bench.fanout");
}

/* --- The coordinating parent ------------------------------------------------------------ */

typedef struct coord coord_t;
static coord_t *the_coord; /* for the publishers' handlers, which get only the connection */

typedef struct {
    coord_t *k;
    pid_t pid;
    int fd;
    bws_watch_t watch;
    bool ready, final, gone, closed;
    report_t rep;
} wctl_t;

typedef struct {
    bws_conn_t *c;
    pubtpl_t tpl;
    nats_rx_t rx;  /* --proto nats: the stream from the server */
    mqtt_rx_t mrx; /* --proto mqtt: the same */
    uint32_t k;
    uint64_t sent, acked, errors;
    uint64_t last_tx;    /* --proto mqtt: when it last sent a packet (keepalive) */
    uint32_t ka_pending; /* --proto mqtt: keepalive PINGREQs whose PINGRESP is due */
    bool hello, lost;
} pub_t;

struct coord {
    opts_t *o;
    bws_loop_t *loop;
    wctl_t w[MAX_PROCS];
    pub_t *pubs;
    uint8_t *scratch;
    uint64_t last_progress, pub_errors;
    char error[240];
    const char *phase;
    report_t sum; /* workers' reports added up */
    bool tty;
    /* recover: the stream positions in the publisher's acks */
    uint64_t off_first, off_top;
    bool have_pos;
    char ep[BENCH_EP_MAX];
};

static void coord_error(coord_t *k, const char *fmt, const char *a, const char *b)
{
    if (!k->error[0])
        snprintf(k->error, sizeof(k->error), fmt, a, b);
}

static void on_worker(bws_watch_t *watch, uint32_t events)
{
    wctl_t *w = watch->user;
    static report_t r;
    ssize_t n = recv(w->fd, &r, sizeof(r), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        if (!w->gone && !w->final)
            coord_error(w->k, "a worker process exited before reporting%s%s", "", "");
        w->gone = true;
        bws_watch_del(w->k->loop, watch);
        return;
    }
    memcpy(&w->rep, &r, (size_t)n);
    if (r.type == R_READY)
        w->ready = true;
    if (r.type == R_FINAL)
        w->final = true;
    if (r.type == R_CLOSED)
        w->closed = true;
}

static int spawn_workers(coord_t *k)
{
    for (uint32_t i = 0; i < k->o->procs; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
            perror("gale bench: socketpair");
            return -1;
        }
        int sz = (int)sizeof(report_t) * 4;
        setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            perror("gale bench: fork");
            close(sv[0]);
            close(sv[1]);
            return -1;
        }
        if (pid == 0) {
            close(sv[0]);
            for (uint32_t j = 0; j < i; j++)
                close(k->w[j].fd);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            signal(SIGINT, SIG_IGN); /* the parent stops us */
            signal(SIGTERM, SIG_DFL);
            int st = bench_worker(k->o, i, sv[1]);
            close(sv[1]);
            _exit(st);
        }
        close(sv[1]);
        k->w[i] = (wctl_t){.k = k, .pid = pid, .fd = sv[0]};
    }
    return 0;
}

static void sum_reports(coord_t *k)
{
    report_t *s = &k->sum;
    memset(s, 0, REPORT_SHORT);
    hist_reset(&s->hist);
    s->t_start = UINT64_MAX;
    for (uint32_t i = 0; i < k->o->procs; i++) {
        const report_t *r = &k->w[i].rep;
        s->conns_ok += r->conns_ok;
        s->conns_failed += r->conns_failed;
        s->received += r->received;
        s->expected += r->expected;
        s->out_of_order += r->out_of_order;
        s->foreign += r->foreign;
        s->duplicates += r->duplicates;
        s->broker_errors += r->broker_errors;
        s->lost_conns += r->lost_conns;
        s->cycles += r->cycles;
        s->closed += r->closed;
        s->reconnected += r->reconnected;
        s->recovered += r->recovered;
        s->not_recovered += r->not_recovered;
        s->early += r->early;
        if (r->t_start && r->t_start < s->t_start)
            s->t_start = r->t_start;
        if (r->t_ready > s->t_ready)
            s->t_ready = r->t_ready;
        if (r->t_last_recv > s->t_last_recv)
            s->t_last_recv = r->t_last_recv;
        if (r->last_close_code)
            s->last_close_code = r->last_close_code;
        if (!s->error[0] && r->error[0])
            memcpy(s->error, r->error, sizeof(s->error));
        if (k->w[i].final)
            hist_merge(&s->hist, &r->hist);
    }
}

static uint64_t pub_answered(const pub_t *p)
{
    return p->acked + p->errors;
}

static void progress(coord_t *k, bool force_clear)
{
    if (!k->tty)
        return;
    if (force_clear) {
        fputs("\r\033[K", stderr);
        return;
    }
    uint64_t now = now_ns();
    if (now - k->last_progress < PROGRESS_EVERY_NS)
        return;
    k->last_progress = now;
    sum_reports(k);
    uint64_t sent = 0, acked = 0;
    for (uint32_t i = 0; k->pubs && i < k->o->pubs; i++) {
        sent += k->pubs[i].sent;
        acked += k->pubs[i].acked;
    }
    fprintf(stderr, "\r\033[K%s: connections %llu ok %llu failed", k->phase,
            (unsigned long long)k->sum.conns_ok, (unsigned long long)k->sum.conns_failed);
    if (k->pubs)
        fprintf(stderr, " | published %llu acked %llu | received %llu", (unsigned long long)sent,
                (unsigned long long)acked, (unsigned long long)k->sum.received);
    if (k->o->sc == SC_CONNECT)
        fprintf(stderr, " | cycles %llu", (unsigned long long)k->sum.cycles);
}

/*
 * --proto mqtt: a PINGREQ from each publisher that sent nothing for half the keepalive (while
 * subscribers are set up, while draining, at a low --rate). Only with no publish outstanding:
 * PINGRESPs come in order, so the next ka_pending ones are these, not a publish's ack.
 */
static void pub_keepalive(coord_t *k)
{
    uint64_t now = now_ns();
    uint8_t f[16];
    for (uint32_t i = 0; k->o->mqtt && k->pubs && i < k->o->pubs; i++) {
        pub_t *p = &k->pubs[i];
        if (p->c && p->hello && pub_answered(p) == p->sent &&
            now - p->last_tx >= MQTT_KEEPALIVE_S * 500000000ull) {
            p->last_tx = now;
            p->ka_pending++;
            bws_send(p->c, f, mqtt_pingreq_frame(f));
        }
    }
}

/* One turn of the parent's loop; false when interrupted or on a loop error. */
static bool pump(coord_t *k, int timeout_ms)
{
    if (interrupted) {
        coord_error(k, "interrupted%s%s", "", "");
        return false;
    }
    if (bws_loop_run(k->loop, timeout_ms) < 0) {
        coord_error(k, "epoll_wait: %s%s", strerror(errno), "");
        return false;
    }
    progress(k, false);
    pub_keepalive(k);
    return true;
}

static bool all_workers(coord_t *k, bool final)
{
    for (uint32_t i = 0; i < k->o->procs; i++)
        if (!k->w[i].gone && !(final ? k->w[i].final : k->w[i].ready))
            return false;
    return true;
}

static bool all_closed(coord_t *k)
{
    for (uint32_t i = 0; i < k->o->procs; i++)
        if (!k->w[i].gone && !k->w[i].closed)
            return false;
    return true;
}

static void tell_workers(coord_t *k, const cmd_t *cmd, size_t len)
{
    for (uint32_t i = 0; i < k->o->procs; i++)
        if (!k->w[i].gone && send(k->w[i].fd, cmd, len, MSG_NOSIGNAL) < 0)
            k->w[i].gone = true;
}

/* Waits (bounded) for every worker's FINAL, after a STOP or DRAIN. */
static void collect(coord_t *k, uint64_t deadline)
{
    /* Not pump(): an interrupt must not cut the wait for the reports short. */
    while (!all_workers(k, true) && now_ns() < deadline && bws_loop_run(k->loop, 20) >= 0) {
        progress(k, false);
        pub_keepalive(k);
    }
    for (uint32_t i = 0; i < k->o->procs; i++)
        if (!k->w[i].final && !k->w[i].gone)
            coord_error(k, "a worker did not report in time%s%s", "", "");
    sum_reports(k);
}

static void reap_workers(coord_t *k)
{
    for (uint32_t i = 0; i < k->o->procs; i++) {
        wctl_t *w = &k->w[i];
        if (w->pid <= 0)
            continue;
        int st;
        for (int t = 0; t < 300 && waitpid(w->pid, &st, WNOHANG) == 0; t++)
            usleep(10000);
        if (waitpid(w->pid, &st, WNOHANG) == 0) {
            kill(w->pid, SIGKILL);
            waitpid(w->pid, &st, 0);
        }
        close(w->fd);
        w->pid = 0;
    }
}

/* --- Publishers ---------------------------------------------------------------------------- */

static void pub_on_close(bws_conn_t *c, int code, const char *why)
{
    pub_t *pb = c->user;
    pb->lost = true;
    pb->c = NULL;
    coord_error(the_coord, "publisher connection: %s%s", why, "");
}

static void pub_event(pub_t *pb, const gmsg_t *m)
{
    uint8_t f[512];
    if (m->op == GM_HELLO) {
        if (the_coord->o->nats && pb->c) /* CONNECT; it goes before every PUB */
            bws_send(pb->c, f, nats_hello_frame(f, sizeof(f), NULL));
        pb->hello = true;
    } else if (m->op == GM_ACK && the_coord->o->mqtt && pb->ka_pending) {
        pb->ka_pending--; /* the PINGRESP of a keepalive PINGREQ (see pub_keepalive) */
    } else if (m->op == GM_ACK && m->has_id && m->id >= BENCH_SEQ_BASE) {
        pb->acked++;
        coord_t *k = the_coord;
        if (k->o->sc == SC_RECOVER && m->has_off && m->has_ep) {
            if (!k->have_pos || m->off < k->off_first)
                k->off_first = m->off;
            if (!k->have_pos || m->off > k->off_top)
                k->off_top = m->off;
            if (k->have_pos && strcmp(k->ep, m->ep) != 0)
                coord_error(k, "publish acks of two epochs: %s and %s", k->ep, m->ep);
            snprintf(k->ep, sizeof(k->ep), "%s", m->ep);
            k->have_pos = true;
        }
    } else if (m->op == GM_ERR) {
        pb->errors++;
        coord_error(the_coord, "a publish was answered err %s: %s", m->code, m->text);
    } else if (m->op == GM_PING && pb->c) {
        bws_send(pb->c, f, nats_pong_frame(f));
    }
}

static int pub_nats_event(void *user, const gmsg_t *m)
{
    pub_t *pb = user;
    bws_conn_t *c = pb->c;
    pub_event(pb, m);
    return pb->c != c; /* closed (send failed): stop reading its stream */
}

static void pub_on_open(bws_conn_t *c)
{
    pub_t *pb = c->user;
    uint8_t f[600];
    char id[64];
    if (!the_coord->o->mqtt)
        return;
    bench_mqtt_client_id(the_coord->o, c->index, id, sizeof(id));
    pb->last_tx = now_ns();
    bws_send(c, f, mqtt_connect_frame(f, sizeof(f), id, NULL, MQTT_KEEPALIVE_S));
}

static void pub_on_message(bws_conn_t *c, bool binary, const uint8_t *p, size_t n)
{
    pub_t *pb = c->user;
    if (the_coord->o->mqtt) {
        const char *why;
        if (mqtt_rx_feed(&pb->mrx, binary, p, n, pub_nats_event, pb, &why) < 0) {
            bws_close(c);
            pub_on_close(c, 0, why);
        }
        return;
    }
    if (the_coord->o->nats) {
        const char *why;
        if (nats_rx_feed(&pb->rx, p, n, pub_nats_event, pb, &why) < 0) {
            bws_close(c);
            pub_on_close(c, 0, why);
        }
        return;
    }
    gmsg_t m;
    if (gmsg_parse(&m, binary, p, n) < 0)
        return;
    if (the_coord->o->sc == SC_RECOVER)
        gmsg_parse_pos(&m, binary, p, n);
    pub_event(pb, &m);
}

static void publish_one(coord_t *k, pub_t *p)
{
    const opts_t *o = k->o;
    uint32_t topic = o->sc == SC_TOPICS ? bench_topic_of(o, p->k, p->sent) : 0;
    uint64_t now = now_ns();
    pubtpl_set(&p->tpl, p->sent, now - o->clock_base, topic);
    p->sent++;
    p->last_tx = now;
    if (!o->random_mask) {
        bws_send(p->c, p->tpl.frame, p->tpl.len); /* mask key 0: the frame is sent as is */
        return;
    }
    uint32_t key = (uint32_t)random() | 1u;
    uint8_t *f = k->scratch,
            kb[4] = {(uint8_t)(key >> 24), (uint8_t)(key >> 16), (uint8_t)(key >> 8), (uint8_t)key};
    size_t off = p->tpl.payload_off;
    memcpy(f, p->tpl.frame, off - 4);
    memcpy(f + off - 4, kb, 4);
    for (size_t i = off; i < p->tpl.len; i++)
        f[i] = p->tpl.frame[i] ^ kb[(i - off) & 3];
    bws_send(p->c, f, p->tpl.len);
}

static int open_publishers(coord_t *k)
{
    const opts_t *o = k->o;
    char topic[64];
    bench_topic(o, 0, topic, sizeof(topic));
    k->pubs = calloc(o->pubs, sizeof(*k->pubs));
    k->scratch = malloc(o->size + 512);
    if (!k->pubs || !k->scratch)
        return -1;
    for (uint32_t i = 0; i < o->pubs; i++) {
        pub_t *p = &k->pubs[i];
        p->k = i;
        /* NATS: the n-th PONG acknowledges publish n - 1, whose gale request id is this. */
        nats_rx_reset(&p->rx, BENCH_SEQ_BASE);
        mqtt_rx_reset(&p->mrx, BENCH_SEQ_BASE); /* MQTT: the same with PINGRESP */
        if ((o->nats ? nats_pubtpl_build(&p->tpl, topic, o->sc == SC_TOPICS, i, o->size)
             : o->mqtt
                 ? mqtt_pubtpl_build(&p->tpl, topic, o->sc == SC_TOPICS, i, o->size)
                 : pubtpl_build(&p->tpl, o->msgpack, topic, o->sc == SC_TOPICS, i, o->size)) < 0)
            return -1;
        p->c = bws_connect(k->loop, o->subs + i, p);
        if (!p->c) {
            p->lost = true;
            coord_error(k, "publisher: connect: %s%s", strerror(errno), "");
        }
    }
    return 0;
}

static bool pubs_ready(coord_t *k)
{
    for (uint32_t i = 0; i < k->o->pubs; i++)
        if (!k->pubs[i].hello && !k->pubs[i].lost)
            return false;
    return true;
}

static void close_publishers(coord_t *k)
{
    for (uint32_t i = 0; k->pubs && i < k->o->pubs; i++) {
        if (k->pubs[i].c)
            bws_close(k->pubs[i].c);
        pubtpl_free(&k->pubs[i].tpl);
        nats_rx_free(&k->pubs[i].rx);
        mqtt_rx_free(&k->pubs[i].mrx);
    }
    free(k->pubs);
    free(k->scratch);
    k->pubs = NULL;
}

/* Publishes until every publisher is done and answered; returns the start time. */
static uint64_t publish(coord_t *k)
{
    const opts_t *o = k->o;
    uint64_t t0 = now_ns(), last_answer = t0, answered_before = 0, ack_deadline = 0;
    uint64_t end = o->duration > 0 ? t0 + (uint64_t)(o->duration * 1e9) : UINT64_MAX;
    double interval = o->rate > 0 ? 1e9 / o->rate : 0;
    k->phase = "publishing";
    for (;;) {
        uint64_t now = now_ns(), answered = 0, next_due = UINT64_MAX;
        bool busy = false, sending = false;
        for (uint32_t i = 0; i < o->pubs; i++) {
            pub_t *p = &k->pubs[i];
            if (p->lost)
                continue;
            for (;;) {
                bool more = (o->messages == 0 || p->sent < o->messages) && now < end;
                if (!more)
                    break;
                sending = true;
                uint64_t inflight = p->sent - pub_answered(p);
                if (interval > 0) {
                    uint64_t due = t0 + (uint64_t)((double)p->sent * interval);
                    if (due > now) {
                        if (due < next_due)
                            next_due = due;
                        busy = true;
                        break;
                    }
                    if (inflight >= RATE_OUTSTANDING || bws_pending(p->c) > (1u << 20)) {
                        busy = true;
                        break;
                    }
                } else if (inflight >= o->window) {
                    busy = true;
                    break;
                }
                publish_one(k, p);
                if (p->lost || !p->c)
                    break;
            }
            if (!p->lost && pub_answered(p) < p->sent)
                busy = true;
            answered += pub_answered(p);
        }
        if (!busy)
            break;
        if (!sending) { /* all sent: wait for the last acks, at most --drain seconds */
            if (!ack_deadline)
                ack_deadline = now + (uint64_t)(o->drain * 1e9);
            if (now >= ack_deadline) {
                coord_error(k, "publishes still unacknowledged --drain s after the last one%s%s",
                            "", "");
                break;
            }
        }
        if (answered != answered_before) {
            answered_before = answered;
            last_answer = now;
        } else if (now - last_answer > STALL_NS) {
            coord_error(k, "publishing stalled: nothing acknowledged for 10 s%s%s", "", "");
            break;
        }
        int timeout = 20;
        if (next_due != UINT64_MAX) {
            uint64_t ms = next_due > now ? (next_due - now + 999999) / 1000000 : 0;
            timeout = ms < 20 ? (int)ms : 20;
        }
        if (!pump(k, timeout))
            break;
    }
    return t0;
}

/* --- Reports ------------------------------------------------------------------------------ */

typedef struct {
    bool have;
    cpu_t cpu0, cpu1;
    long rss0, rss1;
} broker_sample_t;

static void sample(const opts_t *o, broker_sample_t *b, bool after)
{
    if (o->pid <= 0)
        return;
    cpu_t c = {0, 0};
    int rc = proc_cpu(o->pid, &c);
    long rss = proc_rss_kib(o->pid);
    if (after) {
        b->cpu1 = c;
        b->rss1 = rss;
        b->have = b->have && rc == 0 && rss >= 0;
    } else {
        b->cpu0 = c;
        b->rss0 = rss;
        b->have = rc == 0 && rss >= 0;
    }
}

static double cpu_s(const broker_sample_t *b)
{
    return (b->cpu1.user + b->cpu1.sys) - (b->cpu0.user + b->cpu0.sys);
}

static void json_str(const char *key, const char *v, bool comma)
{
    printf("\"%s\":\"", key);
    for (; *v; v++) {
        if (*v == '"' || *v == '\\')
            printf("\\%c", *v);
        else if ((unsigned char)*v < 0x20)
            printf("\\u%04x", *v);
        else
            putchar(*v);
    }
    printf("\"%s", comma ? "," : "");
}

static double us(uint64_t ns)
{
    return (double)ns / 1000.0;
}

/* What travels on the wire, for the report: json, msgpack, nats or mqtt. */
static const char *wire(const opts_t *o)
{
    return o->nats ? "nats" : o->mqtt ? "mqtt" : o->msgpack ? "msgpack" : "json";
}

/* The protocol, for --json: gale, nats or mqtt. */
static const char *proto_name(const opts_t *o)
{
    return o->nats ? "nats" : o->mqtt ? "mqtt" : "gale";
}

static const char *first_error(coord_t *k)
{
    return k->error[0] ? k->error : k->sum.error;
}

static void report_broker_text(const opts_t *o, const broker_sample_t *b, uint64_t units,
                               const char *per)
{
    if (o->pid <= 0)
        return;
    if (!b->have) {
        printf("broker          pid %d: /proc could not be read (did it exit?)\n", (int)o->pid);
        return;
    }
    double c = cpu_s(b);
    printf("broker          pid %d: CPU %.2f s (user %.2f, sys %.2f)", (int)o->pid, c,
           b->cpu1.user - b->cpu0.user, b->cpu1.sys - b->cpu0.sys);
    if (units)
        printf(" = %.3f us per %s", c * 1e6 / (double)units, per);
    printf("\n                RSS %ld KiB -> %ld KiB\n", b->rss0, b->rss1);
}

static void report_broker_json(const opts_t *o, const broker_sample_t *b, uint64_t units,
                               const char *per_key)
{
    if (o->pid <= 0 || !b->have)
        return;
    double c = cpu_s(b);
    printf(",\"broker\":{\"pid\":%d,\"cpu_s\":%.3f,\"user_s\":%.3f,\"sys_s\":%.3f,"
           "\"%s\":%.4f,\"rss_kib_before\":%ld,\"rss_kib_after\":%ld}",
           (int)o->pid, c, b->cpu1.user - b->cpu0.user, b->cpu1.sys - b->cpu0.sys, per_key,
           units ? c * 1e6 / (double)units : 0.0, b->rss0, b->rss1);
}

static int report_pubsub(coord_t *k, uint64_t t0, uint64_t t_pub_end, const broker_sample_t *b)
{
    const opts_t *o = k->o;
    const report_t *s = &k->sum;
    uint64_t sent = 0, acked = 0, perr = 0;
    for (uint32_t i = 0; i < o->pubs; i++) {
        sent += k->pubs[i].sent;
        acked += k->pubs[i].acked;
        perr += k->pubs[i].errors;
    }
    uint64_t lost = s->expected > s->received ? s->expected - s->received : 0;
    uint64_t extra = s->received > s->expected ? s->received - s->expected : 0;
    double pub_s = (double)(t_pub_end - t0) / 1e9;
    double del_s = s->t_last_recv > t0 ? (double)(s->t_last_recv - t0) / 1e9 : 0;
    double rate = del_s > 0 ? (double)s->received / del_s : 0;
    bool failed = lost || extra || s->out_of_order || s->duplicates || s->foreign ||
                  s->conns_failed || s->lost_conns || s->broker_errors || perr || acked != sent ||
                  first_error(k)[0];
    const hist_t *h = &s->hist;
    uint64_t held = s->conns_ok - s->lost_conns;
    for (uint32_t i = 0; i < o->pubs; i++)
        held += !k->pubs[i].lost;
    if (o->json) {
        printf("{\"scenario\":\"%s\",", o->name);
        json_str("url", o->url, true);
        printf("\"proto\":\"%s\",\"encoding\":\"%s\",\"subs\":%u,\"pubs\":%u,\"topics\":%u,"
               "\"rate\":%g,\"size\":%zu,\"procs\":%u,\"window\":%u,",
               proto_name(o), o->msgpack ? "msgpack" : "json", o->subs, o->pubs, o->topics, o->rate,
               o->size, o->procs, o->window);
        printf("\"connections\":{\"held\":%llu,\"subscribed\":%llu,\"failed\":%llu,"
               "\"lost\":%llu},",
               (unsigned long long)held, (unsigned long long)s->conns_ok,
               (unsigned long long)s->conns_failed, (unsigned long long)s->lost_conns);
        printf("\"published\":%llu,\"acked\":%llu,\"pub_errors\":%llu,\"expected\":%llu,"
               "\"received\":%llu,\"lost\":%llu,\"extra\":%llu,\"duplicates\":%llu,"
               "\"out_of_order\":%llu,\"foreign\":%llu,\"broker_errors\":%llu,",
               (unsigned long long)sent, (unsigned long long)acked, (unsigned long long)perr,
               (unsigned long long)s->expected, (unsigned long long)s->received,
               (unsigned long long)lost, (unsigned long long)extra,
               (unsigned long long)s->duplicates, (unsigned long long)s->out_of_order,
               (unsigned long long)s->foreign, (unsigned long long)s->broker_errors);
        printf("\"publish_s\":%.3f,\"delivery_s\":%.3f,\"deliveries_per_s\":%.0f,", pub_s, del_s,
               rate);
        printf("\"latency_us\":{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p99_9\":%.1f,"
               "\"max\":%.1f}",
               us(hist_percentile(h, 50)), us(hist_percentile(h, 90)), us(hist_percentile(h, 99)),
               us(hist_percentile(h, 99.9)), us(h->max));
        report_broker_json(o, b, s->received, "cpu_us_per_delivery");
        printf(",\"ok\":%s,", failed ? "false" : "true");
        json_str("error", first_error(k), false);
        printf("}\n");
        return failed ? EXIT_FAILED : EXIT_OK;
    }
    printf("gale bench %s: %s (%s), %u subscribers", o->name, o->url, wire(o), o->subs);
    if (o->sc == SC_TOPICS)
        printf(" on %u topics", o->topics);
    printf(", %u publisher%s, ", o->pubs, o->pubs == 1 ? "" : "s");
    if (o->rate > 0)
        printf("%g msg/s each", o->rate);
    else
        printf("as fast as acks allow (window %u)", o->window);
    printf(", %zu-byte payloads, %u worker process%s\n", o->size, o->procs,
           o->procs == 1 ? "" : "es");
    printf("connections     %llu held (%llu subscribers acked), %llu failed, %llu lost\n",
           (unsigned long long)held, (unsigned long long)s->conns_ok,
           (unsigned long long)s->conns_failed, (unsigned long long)s->lost_conns);
    printf("published       %llu (%llu acked, %llu errors) in %.2f s\n", (unsigned long long)sent,
           (unsigned long long)acked, (unsigned long long)perr, pub_s);
    printf("deliveries      expected %llu, received %llu, lost %llu",
           (unsigned long long)s->expected, (unsigned long long)s->received,
           (unsigned long long)lost);
    if (extra)
        printf(", EXTRA %llu", (unsigned long long)extra);
    printf(", duplicates %llu, out of order %llu", (unsigned long long)s->duplicates,
           (unsigned long long)s->out_of_order);
    if (s->foreign)
        printf(", unrecognised %llu", (unsigned long long)s->foreign);
    printf("\nthroughput      %.0f deliveries/s (first publish to last delivery %.2f s)\n", rate,
           del_s);
    printf("latency (us)    p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f\n",
           us(hist_percentile(h, 50)), us(hist_percentile(h, 90)), us(hist_percentile(h, 99)),
           us(hist_percentile(h, 99.9)), us(h->max));
    report_broker_text(o, b, s->received, "delivery");
    if (s->broker_errors)
        printf("broker errors   %llu err replies\n", (unsigned long long)s->broker_errors);
    if (failed)
        printf("result          FAILED%s%s\n", first_error(k)[0] ? ": " : "", first_error(k));
    else
        printf("result          OK\n");
    return failed ? EXIT_FAILED : EXIT_OK;
}

static int run_pubsub(coord_t *k)
{
    const opts_t *o = k->o;
    broker_sample_t b = {0};
    k->phase = "connecting";
    if (spawn_workers(k) < 0)
        return EXIT_FAILED;
    if (!(k->loop = bws_loop_new(&o->pub_target, &(bws_handlers_t){.on_open = pub_on_open,
                                                                   .on_message = pub_on_message,
                                                                   .on_close = pub_on_close}))) {
        perror("gale bench: epoll");
        return EXIT_FAILED;
    }
    for (uint32_t i = 0; i < o->procs; i++) {
        k->w[i].watch = (bws_watch_t){.fd = k->w[i].fd, .cb = on_worker, .user = &k->w[i]};
        bws_watch_add(k->loop, &k->w[i].watch);
    }
    if (open_publishers(k) < 0) {
        fprintf(stderr, "gale bench: out of memory\n");
        return EXIT_FAILED;
    }
    uint64_t deadline = now_ns() + (uint64_t)(o->setup_timeout * 1e9) + GRACE_NS;
    while (!(all_workers(k, false) && pubs_ready(k)) && now_ns() < deadline)
        if (!pump(k, 20))
            break;
    sum_reports(k);
    bool pubs_ok = true;
    for (uint32_t i = 0; i < o->pubs; i++)
        pubs_ok &= k->pubs[i].hello && !k->pubs[i].lost;
    if ((k->sum.conns_ok == 0 && o->subs > 0) || !pubs_ok || !all_workers(k, false)) {
        progress(k, true);
        fprintf(stderr, "gale bench: could not connect to %s: %s\n", o->url,
                first_error(k)[0] ? first_error(k) : "set-up timed out");
        tell_workers(k, &(cmd_t){.type = C_STOP}, offsetof(cmd_t, sent));
        collect(k, now_ns() + GRACE_NS);
        return k->sum.conns_ok == 0 || !pubs_ok ? EXIT_NOCONNECT : EXIT_FAILED;
    }
    sample(o, &b, false); /* subscriptions acked, nothing published yet */
    uint64_t t0 = publish(k), t_end = now_ns();
    cmd_t *cmd = calloc(1, sizeof(*cmd));
    if (!cmd)
        return EXIT_FAILED;
    cmd->type = C_DRAIN;
    cmd->npubs = o->pubs;
    cmd->deadline = t_end + (uint64_t)(o->drain * 1e9);
    for (uint32_t i = 0; i < o->pubs; i++)
        cmd->sent[i] = k->pubs[i].sent;
    k->phase = "draining";
    tell_workers(k, cmd, offsetof(cmd_t, sent) + o->pubs * sizeof(uint64_t));
    free(cmd);
    interrupted = 0; /* an interrupt while publishing still collects the reports */
    collect(k, t_end + (uint64_t)(o->drain * 1e9) + GRACE_NS);
    sample(o, &b, true); /* after the last delivery */
    progress(k, true);
    return report_pubsub(k, t0, t_end, &b);
}

/* --- recover ------------------------------------------------------------------------------ */

#define REDIS_MAX_CMDS 256

/* INFO commandstats of --redis-cli, or n = -1 with the reason in err. */
typedef struct {
    int n;
    char err[160];
    redis_stat_t st[REDIS_MAX_CMDS];
} redis_sample_t;

static void redis_sample(const opts_t *o, redis_sample_t *r)
{
    r->n = -1;
    r->err[0] = 0;
    if (o->redis)
        r->n = redis_commandstats(o->redis, r->st, REDIS_MAX_CMDS, r->err, sizeof(r->err));
}

/* Prints the commands whose calls grew from @a to @b (our own INFO left out) as JSON
 * members or text; returns the total. */
static uint64_t redis_delta(const redis_sample_t *a, const redis_sample_t *b, bool json)
{
    uint64_t total = 0;
    bool first = true;
    for (int i = 0; i < b->n; i++) {
        uint64_t d = b->st[i].calls - redis_calls(a->st, a->n, b->st[i].name);
        if (!d || strcmp(b->st[i].name, "info") == 0)
            continue;
        total += d;
        if (json)
            printf("%s\"%s\":%llu", first ? "" : ",", b->st[i].name, (unsigned long long)d);
        else
            printf("%s%s %llu", first ? "" : ", ", b->st[i].name, (unsigned long long)d);
        first = false;
    }
    if (first && !json)
        printf("none");
    return total;
}

static int report_recover(coord_t *k, uint64_t t_pub0, uint64_t t_pub1, uint64_t t0,
                          const broker_sample_t *b, const redis_sample_t *ra,
                          const redis_sample_t *rb)
{
    const opts_t *o = k->o;
    const report_t *s = &k->sum;
    const pub_t *p = &k->pubs[0];
    uint64_t lost = s->expected > s->received ? s->expected - s->received : 0;
    uint64_t extra = s->received > s->expected ? s->received - s->expected : 0;
    double pub_s = (double)(t_pub1 - t_pub0) / 1e9;
    double rec_s = s->t_ready > t0 ? (double)(s->t_ready - t0) / 1e9 : 0;
    bool redis_ok = o->redis && ra->n >= 0 && rb->n >= 0;
    if (o->redis && !redis_ok)
        coord_error(k, "--redis-cli: %s%s", ra->n < 0 ? ra->err : rb->err, "");
    bool failed = s->recovered != o->subs || s->not_recovered || lost || extra || s->duplicates ||
                  s->out_of_order || s->foreign || s->conns_failed || s->lost_conns ||
                  s->broker_errors || p->errors || p->acked != p->sent || !k->have_pos ||
                  first_error(k)[0];
    const hist_t *h = &s->hist;
    if (o->json) {
        printf("{\"scenario\":\"%s\",", o->name);
        json_str("url", o->url, true);
        json_str("pub_url", o->pub_url ? o->pub_url : o->url, true);
        json_str("reconnect_url", o->reconnect_url ? o->reconnect_url : o->url, true);
        printf("\"proto\":\"gale\",\"encoding\":\"%s\",\"topic\":\"%s\",\"subs\":%u,"
               "\"msgs\":%llu,\"size\":%zu,\"procs\":%u,\"window\":%u,\"concurrency\":%u,",
               o->msgpack ? "msgpack" : "json", RECOVER_TOPIC, o->subs,
               (unsigned long long)o->messages, o->size, o->procs, o->window, o->concurrency);
        printf("\"connections\":{\"subscribed\":%llu,\"closed\":%llu,\"reconnected\":%llu,"
               "\"failed\":%llu,\"lost\":%llu},",
               (unsigned long long)(s->conns_ok), (unsigned long long)s->closed,
               (unsigned long long)s->reconnected, (unsigned long long)s->conns_failed,
               (unsigned long long)s->lost_conns);
        printf("\"published\":%llu,\"acked\":%llu,\"pub_errors\":%llu,",
               (unsigned long long)p->sent, (unsigned long long)p->acked,
               (unsigned long long)p->errors);
        json_str("ep", k->ep, true);
        printf("\"off_first\":%llu,\"off_top\":%llu,", (unsigned long long)k->off_first,
               (unsigned long long)k->off_top);
        printf("\"recovered\":%llu,\"not_recovered\":%llu,\"expected\":%llu,\"received\":%llu,"
               "\"lost\":%llu,\"extra\":%llu,\"duplicates\":%llu,\"gaps\":%llu,\"foreign\":%llu,"
               "\"broker_errors\":%llu,\"before_reconnect\":%llu,",
               (unsigned long long)s->recovered, (unsigned long long)s->not_recovered,
               (unsigned long long)s->expected, (unsigned long long)s->received,
               (unsigned long long)lost, (unsigned long long)extra,
               (unsigned long long)s->duplicates, (unsigned long long)s->out_of_order,
               (unsigned long long)s->foreign, (unsigned long long)s->broker_errors,
               (unsigned long long)s->early);
        printf("\"publish_s\":%.3f,\"reconnect_s\":%.3f,", pub_s, rec_s);
        printf("\"ack_ms\":{\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"max\":%.2f}",
               us(hist_percentile(h, 50)) / 1e3, us(hist_percentile(h, 90)) / 1e3,
               us(hist_percentile(h, 99)) / 1e3, us(h->max) / 1e3);
        if (redis_ok) {
            printf(",\"redis\":{");
            json_str("server", o->redis, true);
            printf("\"evalsha\":%llu,\"commands\":{",
                   (unsigned long long)(redis_calls(rb->st, rb->n, "evalsha") -
                                        redis_calls(ra->st, ra->n, "evalsha")));
            uint64_t total = redis_delta(ra, rb, true);
            printf("},\"total\":%llu}", (unsigned long long)total);
        }
        report_broker_json(o, b, s->reconnected, "cpu_us_per_client");
        printf(",\"ok\":%s,", failed ? "false" : "true");
        json_str("error", first_error(k), false);
        printf("}\n");
        return failed ? EXIT_FAILED : EXIT_OK;
    }
    printf("gale bench recover: %s (%s), %u subscribers of %s, %llu messages of %zu bytes while "
           "they are away, %u worker process%s\n",
           o->url, wire(o), o->subs, RECOVER_TOPIC, (unsigned long long)o->messages, o->size,
           o->procs, o->procs == 1 ? "" : "es");
    if (o->pub_url || o->reconnect_url)
        printf("                published on %s, reconnected to %s\n",
               o->pub_url ? o->pub_url : o->url, o->reconnect_url ? o->reconnect_url : o->url);
    printf("connections     %llu subscribed, %llu closed, %llu reconnected and answered, %llu "
           "failed, %llu lost\n",
           (unsigned long long)s->conns_ok, (unsigned long long)s->closed,
           (unsigned long long)s->reconnected, (unsigned long long)s->conns_failed,
           (unsigned long long)s->lost_conns);
    printf("published       %llu (%llu acked, %llu errors) in %.3f s: epoch %s, off %llu to %llu\n",
           (unsigned long long)p->sent, (unsigned long long)p->acked, (unsigned long long)p->errors,
           pub_s, k->ep[0] ? k->ep : "?", (unsigned long long)k->off_first,
           (unsigned long long)k->off_top);
    printf("recovered       %llu of %u (%llu answered recovered false)\n",
           (unsigned long long)s->recovered, o->subs, (unsigned long long)s->not_recovered);
    printf("messages        expected %llu, received %llu, lost %llu",
           (unsigned long long)s->expected, (unsigned long long)s->received,
           (unsigned long long)lost);
    if (extra)
        printf(", EXTRA %llu", (unsigned long long)extra);
    printf(", duplicated %llu, gaps %llu", (unsigned long long)s->duplicates,
           (unsigned long long)s->out_of_order);
    if (s->foreign)
        printf(", unrecognised %llu", (unsigned long long)s->foreign);
    printf("\ncaught up       %.3f s from the start of the reconnect to the last ack\n", rec_s);
    printf("ack (ms)        p50 %.1f  p90 %.1f  p99 %.1f  max %.1f (from the start)\n",
           us(hist_percentile(h, 50)) / 1e3, us(hist_percentile(h, 90)) / 1e3,
           us(hist_percentile(h, 99)) / 1e3, us(h->max) / 1e3);
    if (redis_ok) {
        printf("redis           %s during the reconnect: evalsha %llu (", o->redis,
               (unsigned long long)(redis_calls(rb->st, rb->n, "evalsha") -
                                    redis_calls(ra->st, ra->n, "evalsha")));
        uint64_t total = redis_delta(ra, rb, false);
        printf("; %llu commands in all)\n", (unsigned long long)total);
    }
    report_broker_text(o, b, s->reconnected, "recovered client");
    if (s->broker_errors)
        printf("broker errors   %llu err replies\n", (unsigned long long)s->broker_errors);
    if (failed)
        printf("result          FAILED%s%s\n", first_error(k)[0] ? ": " : "", first_error(k));
    else
        printf("result          OK\n");
    return failed ? EXIT_FAILED : EXIT_OK;
}

/*
 * recover: subscribe everyone (keeping their positions), disconnect everyone, publish
 * --msgs, then reconnect everyone with since and time it until the last ack.
 */
static int run_recover(coord_t *k)
{
    const opts_t *o = k->o;
    broker_sample_t b = {0};
    static redis_sample_t ra, rb;
    k->phase = "subscribing";
    if (spawn_workers(k) < 0)
        return EXIT_FAILED;
    if (!(k->loop = bws_loop_new(&o->pub_target, &(bws_handlers_t){.on_open = pub_on_open,
                                                                   .on_message = pub_on_message,
                                                                   .on_close = pub_on_close}))) {
        perror("gale bench: epoll");
        return EXIT_FAILED;
    }
    for (uint32_t i = 0; i < o->procs; i++) {
        k->w[i].watch = (bws_watch_t){.fd = k->w[i].fd, .cb = on_worker, .user = &k->w[i]};
        bws_watch_add(k->loop, &k->w[i].watch);
    }
    if (open_publishers(k) < 0) {
        fprintf(stderr, "gale bench: out of memory\n");
        return EXIT_FAILED;
    }
    uint64_t deadline = now_ns() + (uint64_t)(o->setup_timeout * 1e9) + GRACE_NS;
    while (!(all_workers(k, false) && pubs_ready(k)) && now_ns() < deadline)
        if (!pump(k, 20))
            break;
    sum_reports(k);
    bool pub_ok = k->pubs[0].hello && !k->pubs[0].lost;
    if (k->sum.conns_ok < o->subs || !pub_ok || !all_workers(k, false)) {
        progress(k, true);
        char n[64];
        snprintf(n, sizeof(n), "%llu of %u", (unsigned long long)k->sum.conns_ok, o->subs);
        fprintf(stderr, "gale bench: could not subscribe every subscriber to %s (%s): %s\n", o->url,
                pub_ok ? n : "no publisher",
                first_error(k)[0] ? first_error(k) : "set-up timed out");
        tell_workers(k, &(cmd_t){.type = C_STOP}, offsetof(cmd_t, sent));
        collect(k, now_ns() + GRACE_NS);
        return k->sum.conns_ok == 0 || !pub_ok ? EXIT_NOCONNECT : EXIT_FAILED;
    }
    k->phase = "disconnecting";
    tell_workers(k, &(cmd_t){.type = C_DISCONNECT}, offsetof(cmd_t, sent));
    deadline = now_ns() + 5000000000ull + GRACE_NS;
    while (!all_closed(k) && now_ns() < deadline)
        if (!pump(k, 20))
            break;
    if (!all_closed(k))
        coord_error(k, "the subscribers did not all disconnect in time%s%s", "", "");
    uint64_t t_pub0 = publish(k), t_pub1 = now_ns();
    if (!k->have_pos)
        coord_error(k,
                    "the publish acks carry no stream position: the broker keeps no history for "
                    "%s (start it with --history '%s=1000')",
                    RECOVER_TOPIC, RECOVER_TOPIC);
    if (k->error[0] || interrupted) {
        tell_workers(k, &(cmd_t){.type = C_STOP}, offsetof(cmd_t, sent));
        collect(k, now_ns() + GRACE_NS);
        progress(k, true);
        fprintf(stderr, "gale bench: %s\n", k->error[0] ? k->error : "interrupted");
        return EXIT_FAILED;
    }
    redis_sample(o, &ra);
    sample(o, &b, false);
    cmd_t *cmd = calloc(1, sizeof(*cmd));
    if (!cmd)
        return EXIT_FAILED;
    cmd->type = C_RECONNECT;
    cmd->top = k->off_top;
    snprintf(cmd->ep, sizeof(cmd->ep), "%s", k->ep);
    k->phase = "reconnecting";
    uint64_t t0 = cmd->t0 = now_ns();
    tell_workers(k, cmd, offsetof(cmd_t, sent));
    free(cmd);
    interrupted = 0; /* an interrupt while reconnecting still collects the reports */
    collect(k, t0 + (uint64_t)(o->setup_timeout * 1e9) + GRACE_NS);
    sample(o, &b, true); /* the last ack, or the deadline */
    redis_sample(o, &rb);
    progress(k, true);
    return report_recover(k, t_pub0, t_pub1, t0, &b, &ra, &rb);
}

static int run_conns(coord_t *k)
{
    const opts_t *o = k->o;
    broker_sample_t b = {0};
    sample(o, &b, false); /* right before connecting */
    k->phase = "connecting";
    if (spawn_workers(k) < 0)
        return EXIT_FAILED;
    if (!(k->loop = bws_loop_new(&o->target, &(bws_handlers_t){0}))) {
        perror("gale bench: epoll");
        return EXIT_FAILED;
    }
    for (uint32_t i = 0; i < o->procs; i++) {
        k->w[i].watch = (bws_watch_t){.fd = k->w[i].fd, .cb = on_worker, .user = &k->w[i]};
        bws_watch_add(k->loop, &k->w[i].watch);
    }
    uint64_t deadline = now_ns() + (uint64_t)(o->setup_timeout * 1e9) + GRACE_NS;
    bool ok = true;
    if (o->sc == SC_CONNS) {
        while (!all_workers(k, false) && now_ns() < deadline && (ok = pump(k, 20)))
            ;
        sum_reports(k);
        if (k->sum.conns_ok == 0) {
            progress(k, true);
            fprintf(stderr, "gale bench: could not connect to %s: %s\n", o->url,
                    first_error(k)[0] ? first_error(k) : "set-up timed out");
            tell_workers(k, &(cmd_t){.type = C_STOP}, offsetof(cmd_t, sent));
            collect(k, now_ns() + GRACE_NS);
            return EXIT_NOCONNECT;
        }
        k->phase = "holding";
        uint64_t hold_end = now_ns() + (uint64_t)(o->hold * 1e9);
        while (ok && now_ns() < hold_end && (ok = pump(k, 20)))
            ;
        sample(o, &b, true); /* while holding */
        tell_workers(k, &(cmd_t){.type = C_STOP}, offsetof(cmd_t, sent));
        interrupted = 0;
        collect(k, now_ns() + GRACE_NS);
    } else {
        k->phase = "connect/close";
        collect(k, now_ns() + (uint64_t)((o->duration + 10) * 1e9));
        sample(o, &b, true);
    }
    progress(k, true);
    const report_t *s = &k->sum;
    double secs = s->t_ready > s->t_start ? (double)(s->t_ready - s->t_start) / 1e9 : 0;
    double per_s = secs > 0 ? (double)s->conns_ok / secs : 0;
    bool failed = s->conns_failed || s->lost_conns || s->broker_errors || first_error(k)[0];
    if (o->sc == SC_CONNECT && s->cycles == 0)
        return fprintf(stderr, "gale bench: could not connect to %s: %s\n", o->url,
                       first_error(k)[0] ? first_error(k) : "no connection completed"),
               EXIT_NOCONNECT;
    double kib_per =
        o->pid > 0 && b.have && s->conns_ok ? (double)(b.rss1 - b.rss0) / (double)s->conns_ok : 0;
    const hist_t *h = &s->hist;
    if (o->json) {
        printf("{\"scenario\":\"%s\",", o->name);
        json_str("url", o->url, true);
        printf("\"proto\":\"%s\",\"encoding\":\"%s\",\"procs\":%u,\"concurrency\":%u,",
               proto_name(o), o->msgpack ? "msgpack" : "json", o->procs, o->concurrency);
        if (o->sc == SC_CONNS)
            printf("\"conns\":%u,\"subscribe\":%s,\"topics_per_conn\":%u,\"hold_s\":%g,"
                   "\"connected\":%llu,\"failed\":%llu,"
                   "\"lost\":%llu,\"setup_s\":%.3f,\"setups_per_s\":%.0f",
                   o->conns, o->subscribe ? "true" : "false", o->topics_per_conn, o->hold,
                   (unsigned long long)s->conns_ok, (unsigned long long)s->conns_failed,
                   (unsigned long long)s->lost_conns, secs, per_s);
        else
            printf("\"duration_s\":%.3f,\"cycles\":%llu,\"failed\":%llu,\"cycles_per_s\":%.0f,"
                   "\"handshake_us\":{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"max\":%.1f}",
                   secs, (unsigned long long)s->cycles, (unsigned long long)s->conns_failed, per_s,
                   us(hist_percentile(h, 50)), us(hist_percentile(h, 90)),
                   us(hist_percentile(h, 99)), us(h->max));
        report_broker_json(o, &b, s->conns_ok,
                           o->sc == SC_CONNS ? "cpu_us_per_conn" : "cpu_us_per_cycle");
        if (o->sc == SC_CONNS && o->pid > 0 && b.have)
            printf(",\"rss_kib_per_conn\":%.2f", kib_per);
        printf(",\"ok\":%s,", failed ? "false" : "true");
        json_str("error", first_error(k), false);
        printf("}\n");
        return failed ? EXIT_FAILED : EXIT_OK;
    }
    printf("gale bench %s: %s (%s), %u worker process%s\n", o->name, o->url, wire(o), o->procs,
           o->procs == 1 ? "" : "es");
    if (o->sc == SC_CONNS) {
        printf("connections     %llu of %u set up%s in %.2f s (%.0f/s), %llu failed, %llu lost "
               "while holding %g s\n",
               (unsigned long long)s->conns_ok, o->conns,
               !o->subscribe            ? ""
               : o->topics_per_conn > 1 ? " and subscribed (each to --topics-per-conn topics)"
                                        : " and subscribed",
               secs, per_s, (unsigned long long)s->conns_failed, (unsigned long long)s->lost_conns,
               o->hold);
        report_broker_text(o, &b, s->conns_ok, "connection");
        if (o->pid > 0 && b.have)
            printf("memory          %.2f KiB broker RSS per connection ((hold - before) / %llu)\n",
                   kib_per, (unsigned long long)s->conns_ok);
    } else {
        printf("cycles          %llu connect/upgrade/hello/close in %.2f s (%.0f/s), %llu failed, "
               "concurrency %u x %u\n",
               (unsigned long long)s->cycles, secs, per_s, (unsigned long long)s->conns_failed,
               o->concurrency, o->procs);
        printf("handshake (us)  p50 %.1f  p90 %.1f  p99 %.1f  max %.1f (connect() to hello)\n",
               us(hist_percentile(h, 50)), us(hist_percentile(h, 90)), us(hist_percentile(h, 99)),
               us(h->max));
        report_broker_text(o, &b, s->cycles, "connection cycle");
    }
    if (failed)
        printf("result          FAILED%s%s\n", first_error(k)[0] ? ": " : "", first_error(k));
    else
        printf("result          OK\n");
    return failed ? EXIT_FAILED : EXIT_OK;
}

int bench_main(int argc, char **argv)
{
    static const struct {
        const char *name;
        scenario_t sc;
    } scenarios[] = {
        {"fanout", SC_FANOUT},   {"topics", SC_TOPICS},   {"conns", SC_CONNS},
        {"connect", SC_CONNECT}, {"recover", SC_RECOVER},
    };
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    opts_t o = {0};
    for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
        if (!strcmp(argv[1], scenarios[i].name)) {
            o.name = scenarios[i].name;
            o.sc = scenarios[i].sc;
        }
    if (!o.name) {
        fprintf(stderr, "gale bench: unknown scenario '%s'\n\n", argv[1]);
        usage(stderr);
        return EXIT_USAGE;
    }
    if (parse_opts(&o, argc - 1, argv + 1) < 0)
        return EXIT_USAGE;
    long nofile = raise_nofile();
    uint64_t per_proc = (o.sc == SC_CONNS ? o.conns : o.subs) / o.procs + 1;
    if (o.sc != SC_CONNECT && nofile > 0 && per_proc + 64 > (uint64_t)nofile) {
        fprintf(stderr,
                "gale bench: %llu connections per process exceed the open-file limit %ld: "
                "use --procs %llu or more\n",
                (unsigned long long)per_proc, nofile,
                (unsigned long long)((o.sc == SC_CONNS ? o.conns : o.subs) / (nofile - 64) + 1));
        return EXIT_USAGE;
    }
    o.clock_base = now_ns();
    o.run_id = (unsigned)getpid();
    srandom((unsigned)o.clock_base);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    coord_t k = {.o = &o, .tty = isatty(2), .phase = "starting"};
    the_coord = &k;
    int rc = o.sc == SC_FANOUT || o.sc == SC_TOPICS ? run_pubsub(&k)
             : o.sc == SC_RECOVER                   ? run_recover(&k)
                                                    : run_conns(&k);
    close_publishers(&k);
    reap_workers(&k);
    bws_loop_free(k.loop);
    fflush(stdout);
    return rc;
}
