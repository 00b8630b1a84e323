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
    char allowed_origins[4096]; /* --allowed-origins ORIGIN[,ORIGIN...]; empty: any origin */
    char tls_cert[4096];        /* --tls-cert PEM file; with tls_key: serve wss:// and https:// */
    char tls_key[4096];         /* --tls-key PEM file */
    char api_key[256];          /* --api-key for POST /api/publish; empty: endpoint disabled */
    uint64_t pub_rate;          /* --pub-rate, publishes per second per connection; 0 = off */
    uint64_t pub_burst;         /* --pub-burst, bucket size (0: same as pub_rate) */
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

#endif
