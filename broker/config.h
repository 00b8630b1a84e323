/*
 * config: the broker's settings, from command-line flags and GALE_*
 * environment variables (a flag wins over its variable).
 */
#ifndef GALE_CONFIG_H
#define GALE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/** Most --history rules. */
#define GALE_HISTORY_RULES_MAX 64

/** Most --presence patterns. */
#define GALE_PRESENCE_RULES_MAX 64

/** One --history PATTERN=SIZE[/TTL]. */
/** Most --loops. */
#define CONFIG_LOOPS_MAX 64

typedef struct {
    char pattern[256]; /* a valid pattern (NUL-terminated) */
    uint64_t size;     /* messages kept per topic */
    uint64_t ttl_ms;   /* 0: kept until displaced */
} gale_history_rule_t;

typedef struct {
    char listen_host[256]; /* --listen HOST:PORT, GALE_LISTEN */
    int listen_port;
    uint64_t max_message;         /* --max-message, bytes of one client message */
    uint64_t max_subscriptions;   /* --max-subscriptions, per connection */
    uint64_t max_connections;     /* --max-connections (0: only the file limit bounds it) */
    uint64_t queue_limit;         /* --queue-limit, outbound bytes queued per connection */
    uint64_t keepalive_s;         /* --keepalive, seconds of silence before a ping; 0 = off */
    uint64_t rx_buffer;           /* --rx-buffer, lws receive buffer per connection */
    uint64_t handshake_timeout_s; /* --handshake-timeout, seconds from accept to request head */
    uint64_t max_handshakes;      /* --max-handshakes, request heads parsed at once */
    int log_level;                /* --log-level */
    char web_root[4096];          /* --web-root; empty: the built-in default */
    char node_id[64];             /* --node-id; empty: HOSTNAME-PID */
    char redis_urls[4096];        /* --redis URL[,URL...]; empty: single node */
    char redis_password[513];     /* --redis-password: replaces every URL's; empty: the URLs' */
    char redis_prefix[65];        /* --redis-prefix, of every Redis channel name */
    uint64_t redis_timeout_ms;    /* --redis-timeout, connect and command timeout */
    uint64_t redis_max_pending;   /* --redis-max-pending, bytes of PUBLISHes awaiting Redis */
    char jwt_secret[1024]; /* --jwt-secret or the contents of --jwt-secret-file; empty: open */
    size_t jwt_secret_len;
    char jwt_secret_file[4096]; /* --jwt-secret-file, read again on SIGHUP; empty: none */
    char jwt_keys[4096];        /* --jwt-keys JWKS file (RS256/ES256 keys), read again on
                                   SIGHUP; empty: none */
    char allowed_origins[4096]; /* --allowed-origins ORIGIN[,ORIGIN...]; empty: any origin */
    char tls_cert[4096];        /* --tls-cert PEM file; with tls_key: serve wss:// and https:// */
    char tls_key[4096];         /* --tls-key PEM file */
    char api_key[256];          /* --api-key for POST /api/publish; empty: endpoint disabled */
    uint64_t max_connections_per_ip; /* --max-connections-per-ip (0: no limit) */
    char trusted_proxies[4096];      /* --trusted-proxies ADDR[/BITS][,...]: peers whose
                                        X-Forwarded-For names the client; empty: none */
    uint64_t pub_rate;               /* --pub-rate, publishes per second per connection; 0 = off */
    uint64_t pub_burst;              /* --pub-burst, bucket size (0: same as pub_rate) */
    gale_history_rule_t history[GALE_HISTORY_RULES_MAX]; /* --history, in the order given */
    uint32_t nhistory;
    bool history_from_flags; /* a --history flag replaced GALE_HISTORY's rules */
    uint64_t history_memory; /* --history-memory, bytes of history held in the process */
    uint64_t recovery_max;   /* --recovery-max, messages one recovery may replay */
    uint64_t hist_max_limit; /* --hist-max-limit, messages one `hist` answer may hold */
    uint64_t dedup_window_s; /* --dedup-window, seconds a `mid` is remembered */
    uint64_t dedup_max;      /* --dedup-max, `mid`s remembered at once */
    char presence[GALE_PRESENCE_RULES_MAX][256]; /* --presence patterns (valid, NUL-terminated) */
    uint32_t npresence;
    bool presence_from_flags;      /* a --presence flag replaced GALE_PRESENCE's patterns */
    uint64_t presence_list_max;    /* --presence-list-max, members listed in one answer */
    uint64_t presence_info_max;    /* --presence-info-max, bytes of one member's info (JSON) */
    uint64_t presence_expiry_s;    /* --presence-expiry, seconds a dead broker's members stay */
    uint64_t presence_events_max;  /* --presence-events-max, members above which join/leave
                                      events give way to count-only presence messages */
    uint64_t presence_memory;      /* --presence-memory, bytes of members held on this node */
    uint64_t loops;                /* --loops, event loops (threads); 0: not given (loops_run) */
    uint64_t mqtt_retained_max;    /* --mqtt-retained-max, MQTT retained messages kept */
    uint64_t mqtt_retained_memory; /* --mqtt-retained-memory, bytes of them (single broker) */
} gale_config_t;

/** Outcome of config_parse. */
typedef enum {
    CONFIG_RUN = 0,  /* start the broker */
    CONFIG_EXIT = 1, /* --help or --version was printed: exit 0 */
    CONFIG_ERROR = 2 /* a bad flag or value was reported on `err`: exit 2 */
} config_result_t;

/** Fills *c with the defaults. */
void config_defaults(gale_config_t *c);

/**
 * Applies GALE_* variables from envp (NULL-terminated "NAME=value" strings),
 * then argv[1..argc). Help and version go to `out`, errors to `err`.
 */
config_result_t config_parse(gale_config_t *c, int argc, char **argv, char **envp, FILE *out,
                             FILE *err);

/**
 * Parses a size: digits with an optional K, M or G suffix (KiB, MiB, GiB; a
 * trailing "iB" or "B" is accepted). Returns false on anything else or overflow.
 */
bool config_parse_size(const char *s, uint64_t *out);

/**
 * Parses a duration: digits with a unit s, m, h or d (plain digits: seconds), into
 * milliseconds. Returns false on anything else, zero, or overflow.
 */
bool config_parse_duration(const char *s, uint64_t *ms);

/**
 * Parses one PATTERN=SIZE[/TTL] (split at the last '='; SIZE 1..1000000) into *r. Returns
 * NULL, or a static reason.
 */
const char *config_parse_history(const char *s, size_t len, gale_history_rule_t *r);

#endif
