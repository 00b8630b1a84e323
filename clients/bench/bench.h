/*
 * bench: `gale bench`, the load generator. Internal header shared by bench.c (command line,
 * coordinator, publishers, report) and bench_worker.c (the forked worker processes holding
 * subscriber or churn connections). Both speak gale v1 (bench_msg.h) or, with --proto nats,
 * the NATS client protocol (bench_nats.h), or with --proto mqtt, MQTT 3.1.1 (bench_mqtt.h),
 * which report the same events.
 *
 * Process model: the parent parses options, forks --procs workers connected to it by a
 * SOCK_SEQPACKET socketpair each, holds the publishers itself and samples the broker's
 * /proc entries. Workers hold their share of connections (connection i belongs to worker
 * i % procs), send READY when their connections are set up, PROGRESS every 250 ms, and a
 * FINAL report (with the latency histogram) when the parent says DRAIN or STOP.
 */
#ifndef GALE_BENCH_H
#define GALE_BENCH_H

#include "bench_hist.h"
#include "bench_msg.h"
#include "bench_ws.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define MAX_PROCS 64
#define MAX_PUBS 1024

/** `gale bench` entry point: @argv[0] is "bench". Returns the exit status. */
int bench_main(int argc, char **argv);

typedef enum { SC_FANOUT, SC_TOPICS, SC_CONNS, SC_CONNECT, SC_RECOVER } scenario_t;

/** The recover scenario's topic: the broker needs a --history rule matching it. */
#define RECOVER_TOPIC "bench.recover"

typedef struct {
    scenario_t sc;
    const char *name;
    const char *url;
    bws_target_t target;
    const char *pub_url;           /* --pub-url: publishers' broker (a cluster node); NULL: url */
    bws_target_t pub_target;       /* the publishers' target: target unless --pub-url */
    const char *reconnect_url;     /* recover --reconnect-url: where subscribers come back */
    bws_target_t reconnect_target; /* target unless --reconnect-url */
    const char *redis;             /* recover --redis-cli [HOST:]PORT: INFO commandstats */
    bool nats;                     /* --proto nats: the NATS client protocol (bench_nats.h) */
    bool mqtt;                     /* --proto mqtt: MQTT 3.1.1 (bench_mqtt.h) */
    bool msgpack;
    bool random_mask;
    uint32_t subs, pubs, topics, conns, procs, window, concurrency;
    uint32_t topics_per_conn; /* conns --subscribe: topics each connection subscribes to (1) */
    uint64_t messages;        /* per publisher; 0: until --duration */
    double rate, duration, hold, drain, setup_timeout;
    size_t size;
    bool subscribe;
    bool json;
    pid_t pid;
    uint64_t clock_base; /* bench timestamps are ns since this CLOCK_MONOTONIC instant */
    unsigned run_id;     /* the parent's pid: MQTT client ids are gb-<run_id>-<connection> */
} opts_t;

/** --proto mqtt: the client id of connection @index (bws_conn_t.index) into @out. */
void bench_mqtt_client_id(const opts_t *o, uint32_t index, char *out, size_t cap);

/* R_CLOSED: recover, every subscriber disconnected (after C_DISCONNECT). */
enum { R_READY = 1, R_PROGRESS, R_FINAL, R_CLOSED };

/** Worker to parent. PROGRESS and READY are sent without the histogram. */
typedef struct {
    uint32_t type, worker;
    uint64_t conns_ok, conns_failed;
    uint64_t received, expected, out_of_order, foreign, duplicates;
    uint64_t broker_errors, lost_conns; /* err replies; connections lost after setup */
    uint64_t cycles;                    /* connect scenario: completed open/close cycles */
    /* recover: subscribers closed after C_DISCONNECT; reconnected and answered (ack),
     * recovered true / false; msgs before the reconnect (another publisher) */
    uint64_t closed, reconnected, recovered, not_recovered, early;
    uint64_t t_start, t_ready, t_last_recv;
    int32_t last_close_code;
    char error[200]; /* the first error met, for the report */
    /* fanout/topics: delivery latency; connect: handshake time; recover: time from the
     * start of the reconnect to each subscriber's ack (ns) */
    hist_t hist;
} report_t;

#define REPORT_SHORT offsetof(report_t, hist)

enum { C_DRAIN = 1, C_STOP, C_DISCONNECT, C_RECONNECT };

/**
 * Parent to worker. DRAIN: wait until every delivery of sent[] arrived, or the deadline.
 * recover: DISCONNECT: close every subscriber (R_CLOSED when done); RECONNECT: at t0,
 * reconnect them all and subscribe with since {ep, their last off}; the stream's top is
 * off `top` of epoch `ep` (R_FINAL when every one is answered, or at the deadline).
 */
typedef struct {
    uint32_t type, npubs;
    uint64_t deadline;
    uint64_t t0, top;
    char ep[BENCH_EP_MAX];
    uint64_t sent[MAX_PUBS]; /* messages each publisher sent */
} cmd_t;

/** Topic of subscriber @i (fanout and topics) or connection @i (conns --subscribe). */
void bench_topic(const opts_t *o, uint32_t i, char *out, size_t cap);

/** Topic index (topics scenario) of message @seq of publisher @k. */
static inline uint32_t bench_topic_of(const opts_t *o, uint32_t k, uint64_t seq)
{
    return (uint32_t)((seq + k) % o->topics);
}

/** Runs worker @w on control socket @ctrl; returns its exit status. */
int bench_worker(const opts_t *o, uint32_t w, int ctrl);

#endif
