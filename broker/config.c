#include "config.h"

#include "cluster_wire.h"
#include "log.h"
#include "netaddr.h"

#include <errno.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    OPT_ADDR,
    OPT_SIZE,
    OPT_UINT,
    OPT_LEVEL,
    OPT_PATH,
    OPT_NAME,
    OPT_URLS,
    OPT_PREFIX,
    OPT_STR,         /* a string field at off, max = its capacity */
    OPT_PROXIES,     /* --trusted-proxies: an OPT_STR holding a netaddr list */
    OPT_SECRET,      /* the JWT secret */
    OPT_SECRET_FILE, /* the JWT secret, read from a file */
    OPT_HISTORY,     /* a --history rule (several in GALE_HISTORY) */
    OPT_PRESENCE     /* a --presence pattern (several in GALE_PRESENCE) */
} opt_kind_t;

typedef struct {
    const char *flag;
    const char *env;
    opt_kind_t kind;
    uint64_t min, max;
    size_t off; /* OPT_SIZE, OPT_UINT: offset of the uint64_t field in gale_config_t */
    const char *arg;
    const char *help;
} opt_t;

/* The one table of options: parsing, the environment and --help all read it. */
static const opt_t options[] = {
    {"--listen", "GALE_LISTEN", OPT_ADDR, 0, 0, 0, "HOST:PORT",
     "address to listen on (default 127.0.0.1:8080; port 0 picks a free one)"},
    {"--max-message", "GALE_MAX_MESSAGE", OPT_SIZE, 64, 64u << 20,
     offsetof(gale_config_t, max_message), "BYTES",
     "largest client message; bigger frames close with 1009 (default 64K)"},
    {"--max-subscriptions", "GALE_MAX_SUBSCRIPTIONS", OPT_UINT, 1, 1u << 20,
     offsetof(gale_config_t, max_subscriptions), "N",
     "subscriptions per connection; more answer err limit (default 1024)"},
    {"--max-connections", "GALE_MAX_CONNECTIONS", OPT_UINT, 0, 10000000,
     offsetof(gale_config_t, max_connections), "N",
     "WebSocket connections; more are refused with HTTP 503 (default 0: no limit but the "
     "file limit)"},
    {"--queue-limit", "GALE_QUEUE_LIMIT", OPT_SIZE, 1024, 1ull << 32,
     offsetof(gale_config_t, queue_limit), "BYTES",
     "outbound bytes queued per connection before it is closed with 4001 (default 1M)"},
    {"--keepalive", "GALE_KEEPALIVE", OPT_UINT, 0, 86400, offsetof(gale_config_t, keepalive_s),
     "SECONDS",
     "ping connections silent this long, close them after as long again (default 25, 0 off)"},
    {"--rx-buffer", "GALE_RX_BUFFER", OPT_SIZE, 128, 1u << 20, offsetof(gale_config_t, rx_buffer),
     "BYTES", "receive buffer per connection (default 256; larger messages are reassembled)"},
    {"--handshake-timeout", "GALE_HANDSHAKE_TIMEOUT", OPT_UINT, 1, 3600,
     offsetof(gale_config_t, handshake_timeout_s), "SECONDS",
     "drop a connection whose request head (TLS included) is not in this long after the "
     "accept (default 10)"},
    {"--max-handshakes", "GALE_MAX_HANDSHAKES", OPT_UINT, 16, 65536,
     offsetof(gale_config_t, max_handshakes), "N",
     "request heads read at once, each holding a 4 KiB buffer while it lasts; more wait "
     "for one (default 1024)"},
    {"--log-level", "GALE_LOG_LEVEL", OPT_LEVEL, 0, 0, 0, "LEVEL",
     "error, warn, info or debug (default info)"},
    {"--web-root", "GALE_WEB_ROOT", OPT_PATH, 0, 0, 0, "DIR",
     "directory served at / (default: the installed or source web/ directory)"},
    {"--node-id", "GALE_NODE_ID", OPT_NAME, 0, 0, 0, "NAME",
     "this broker's name in hello and /healthz (default HOSTNAME-PID)"},
    {"--redis", "GALE_REDIS_URL", OPT_URLS, 0, 0, 0, "URL[,URL...]",
     "cluster through Redis pub/sub at redis://[[USER]:PASSWORD@]HOST:PORT[/DB] (credentials "
     "percent-encoded); several URLs shard topics (default: none, a single node)"},
    {"--redis-password", "GALE_REDIS_PASSWORD", OPT_STR, 0,
     sizeof(((gale_config_t *)0)->redis_password), offsetof(gale_config_t, redis_password),
     "PASSWORD",
     "Redis password (AUTH) for every --redis URL, replacing the URL's; prefer the variable, "
     "which ps does not show (default: the URL's, or none)"},
    {"--redis-prefix", "GALE_REDIS_PREFIX", OPT_PREFIX, 0, 0, 0, "PREFIX",
     "prefix of the Redis channel names (default gale:)"},
    {"--redis-timeout", "GALE_REDIS_TIMEOUT", OPT_UINT, 50, 60000,
     offsetof(gale_config_t, redis_timeout_ms), "MS",
     "Redis connect and command timeout in milliseconds (default 2000)"},
    {"--redis-max-pending", "GALE_REDIS_MAX_PENDING", OPT_SIZE, 64 * 1024, 1u << 30,
     offsetof(gale_config_t, redis_max_pending), "BYTES",
     "PUBLISHes awaiting Redis per shard; more answer err unavailable (default 8M)"},
    {"--jwt-secret", "GALE_JWT_SECRET", OPT_SECRET, 0, 0, 0, "SECRET",
     "require HS256 JWTs signed with SECRET (query token= or Authorization: Bearer; "
     "default: none, the broker is open)"},
    {"--jwt-secret-file", "GALE_JWT_SECRET_FILE", OPT_SECRET_FILE, 0, 0, 0, "PATH",
     "like --jwt-secret, the secret read from PATH (one trailing newline dropped)"},
    {"--jwt-keys", "GALE_JWT_KEYS", OPT_STR, 0, sizeof(((gale_config_t *)0)->jwt_keys),
     offsetof(gale_config_t, jwt_keys), "FILE",
     "require tokens signed RS256 or ES256 by a key of this JWKS file (an identity provider's "
     "public keys; with --jwt-secret, HS256 too); read again on SIGHUP"},
    {"--allowed-origins", "GALE_ALLOWED_ORIGINS", OPT_STR, 0,
     sizeof(((gale_config_t *)0)->allowed_origins), offsetof(gale_config_t, allowed_origins),
     "ORIGIN[,ORIGIN...]",
     "WebSocket upgrades with another Origin header get HTTP 403; requests without one are "
     "let in (default: any origin)"},
    {"--tls-cert", "GALE_TLS_CERT", OPT_STR, 0, sizeof(((gale_config_t *)0)->tls_cert),
     offsetof(gale_config_t, tls_cert), "PEM",
     "certificate chain: serve wss:// and https:// (with --tls-key)"},
    {"--tls-key", "GALE_TLS_KEY", OPT_STR, 0, sizeof(((gale_config_t *)0)->tls_key),
     offsetof(gale_config_t, tls_key), "PEM", "private key of --tls-cert"},
    {"--api-key", "GALE_API_KEY", OPT_STR, 0, sizeof(((gale_config_t *)0)->api_key),
     offsetof(gale_config_t, api_key), "KEY",
     "enable POST /api/publish for backends holding Authorization: Bearer KEY (default: "
     "disabled, 404)"},
    {"--max-connections-per-ip", "GALE_MAX_CONNECTIONS_PER_IP", OPT_UINT, 0, 1000000,
     offsetof(gale_config_t, max_connections_per_ip), "N",
     "WebSocket connections one client address may hold; more upgrades get HTTP 429 "
     "(default 0: no limit)"},
    {"--trusted-proxies", "GALE_TRUSTED_PROXIES", OPT_PROXIES, 0,
     sizeof(((gale_config_t *)0)->trusted_proxies), offsetof(gale_config_t, trusted_proxies),
     "ADDR[/BITS][,...]",
     "peers (proxies, load balancers) whose X-Forwarded-For names the client address for "
     "--max-connections-per-ip: its right-most address that is not a trusted proxy "
     "(default: none, the peer address counts)"},
    {"--pub-rate", "GALE_PUB_RATE", OPT_UINT, 0, 1000000, offsetof(gale_config_t, pub_rate), "N",
     "publishes per second per connection, a token bucket; more answer err limit (default 0: "
     "no limit)"},
    {"--pub-burst", "GALE_PUB_BURST", OPT_UINT, 0, 1000000, offsetof(gale_config_t, pub_burst), "N",
     "publishes a connection may send at once under --pub-rate (default: --pub-rate)"},
    {"--history", "GALE_HISTORY", OPT_HISTORY, 0, 0, 0, "PATTERN=SIZE[/TTL]",
     "topics matching PATTERN keep their last SIZE messages (1 to 1000000), each for at most "
     "TTL (30s, 10m, 2h, 1d; default: until displaced), for recovery and hist; repeatable, the "
     "first match wins; the variable holds several separated by spaces (default: none)"},
    {"--history-memory", "GALE_HISTORY_MEMORY", OPT_SIZE, 1u << 20, 1ull << 40,
     offsetof(gale_config_t, history_memory), "BYTES",
     "history held in the process in all, messages and their frames; beyond it the oldest "
     "messages go first (default 64M)"},
    {"--recovery-max", "GALE_RECOVERY_MAX", OPT_UINT, 1000, 1000000,
     offsetof(gale_config_t, recovery_max), "N",
     "messages one recovery (sub with since) may replay; more missed answer recovered false "
     "(default 1000)"},
    {"--hist-max-limit", "GALE_HIST_MAX_LIMIT", OPT_UINT, 1, 1000000,
     offsetof(gale_config_t, hist_max_limit), "N",
     "messages one hist answer may hold; a larger limit answers this many (default 1000)"},
    {"--dedup-window", "GALE_DEDUP_WINDOW", OPT_UINT, 120, 86400,
     offsetof(gale_config_t, dedup_window_s), "SECONDS",
     "a pub's mid is remembered this long: the same mid on the same topic is not delivered "
     "again (default 120)"},
    {"--dedup-max", "GALE_DEDUP_MAX", OPT_UINT, 1000, 100000000, offsetof(gale_config_t, dedup_max),
     "N",
     "mids remembered at once; a pub with a new mid beyond it answers err limit (default "
     "100000)"},
    {"--presence", "GALE_PRESENCE", OPT_PRESENCE, 0, 0, 0, "PATTERN",
     "topics matching PATTERN track who is subscribed (presence op, join and leave events); "
     "repeatable; the variable holds several separated by spaces (default: none)"},
    {"--presence-list-max", "GALE_PRESENCE_LIST_MAX", OPT_UINT, 1, 100000,
     offsetof(gale_config_t, presence_list_max), "N",
     "members listed in one presence answer; count stays exact (default 1000)"},
    {"--presence-info-max", "GALE_PRESENCE_INFO_MAX", OPT_SIZE, 16, 65536,
     offsetof(gale_config_t, presence_info_max), "BYTES",
     "largest info of one member, as JSON: a larger gale.info claim or sub info answers err "
     "limit (default 1K)"},
    {"--presence-expiry", "GALE_PRESENCE_EXPIRY", OPT_UINT, 3, 45,
     offsetof(gale_config_t, presence_expiry_s), "SECONDS",
     "cluster: a broker refreshes its members every SECONDS/3; those of a broker that died "
     "leave within 4/3 of it (default 30: within 40 s)"},
    {"--presence-events-max", "GALE_PRESENCE_EVENTS_MAX", OPT_UINT, 0, 1000000,
     offsetof(gale_config_t, presence_events_max), "N",
     "above N members on a topic, its join and leave events give way to one count-only "
     "presence message per second (default 1000)"},
    {"--presence-memory", "GALE_PRESENCE_MEMORY", OPT_SIZE, 1u << 20, 1ull << 40,
     offsetof(gale_config_t, presence_memory), "BYTES",
     "members held on this broker in all (their member JSON, info included); past it a sub "
     "that would join answers err limit (default 64M)"},
    {"--loops", "GALE_LOOPS", OPT_UINT, 1, CONFIG_LOOPS_MAX, offsetof(gale_config_t, loops), "N",
     "event loops, each a thread with its own listener (SO_REUSEPORT) and connections; a "
     "publish reaches the loops with subscribers (default: the CPUs this process may run "
     "on, 1 with --history or --presence on a single node)"},
    {"--mqtt-retained-max", "GALE_MQTT_RETAINED_MAX", OPT_UINT, 0, 10000000,
     offsetof(gale_config_t, mqtt_retained_max), "N",
     "MQTT retained messages kept (one per topic); past it a new topic's retained message is "
     "delivered but not kept (default 10000)"},
    {"--mqtt-retained-memory", "GALE_MQTT_RETAINED_MEMORY", OPT_SIZE, 1u << 20, 1ull << 40,
     offsetof(gale_config_t, mqtt_retained_memory), "BYTES",
     "bytes of MQTT retained messages a single broker keeps; past it a new retained message "
     "is delivered but not kept (default 64M)"},
};
#define NOPTIONS (sizeof(options) / sizeof(options[0]))

_Static_assert(sizeof(((gale_config_t *)0)->redis_password) == CLUSTER_PASS_MAX + 1,
               "--redis-password holds what a URL may");

void config_defaults(gale_config_t *c)
{
    memset(c, 0, sizeof(*c));
    strcpy(c->listen_host, "127.0.0.1");
    c->listen_port = 8080;
    c->max_message = 64 * 1024;
    c->max_subscriptions = 1024;
    c->max_connections = 0;
    c->queue_limit = 1024 * 1024;
    c->keepalive_s = 25;
    c->rx_buffer = 256; /* lws allocates it per connection: most of what is left to cut */
    c->handshake_timeout_s = 10;
    c->max_handshakes = 1024;
    c->log_level = LOG_INFO;
    strcpy(c->redis_prefix, "gale:");
    c->redis_timeout_ms = 2000;
    c->redis_max_pending = 8 * 1024 * 1024;
    c->history_memory = 64 * 1024 * 1024;
    c->recovery_max = 1000;
    c->hist_max_limit = 1000;
    c->dedup_window_s = 120;
    c->dedup_max = 100000;
    c->presence_list_max = 1000;
    c->presence_info_max = 1024;
    c->presence_expiry_s = 30;
    c->presence_events_max = 1000;
    c->presence_memory = 64 * 1024 * 1024;
    c->loops = 0; /* the CPUs this process may run on (loops_run) */
    c->mqtt_retained_max = 10000;
    c->mqtt_retained_memory = 64 * 1024 * 1024;
}

bool config_parse_size(const char *s, uint64_t *out)
{
    if (!s || !(*s >= '0' && *s <= '9'))
        return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return false;
    unsigned shift = 0;
    switch (*end) {
    case 'k':
    case 'K':
        shift = 10;
        end++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        end++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        end++;
        break;
    }
    if (shift && end[0] == 'i' && end[1] == 'B')
        end += 2;
    else if (end[0] == 'B')
        end++;
    if (*end)
        return false;
    if (shift && v > (UINT64_MAX >> shift))
        return false;
    *out = (uint64_t)v << shift;
    return true;
}

static bool parse_uint(const char *s, uint64_t *out)
{
    if (!s || !(*s >= '0' && *s <= '9'))
        return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

bool config_parse_duration(const char *s, uint64_t *ms)
{
    if (!s || !(*s >= '0' && *s <= '9'))
        return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t unit = 1000;
    if (errno)
        return false;
    switch (*end) {
    case 's':
        end++;
        break;
    case 'm':
        unit = 60 * 1000, end++;
        break;
    case 'h':
        unit = 3600 * 1000, end++;
        break;
    case 'd':
        unit = 86400 * 1000, end++;
        break;
    }
    if (*end || v == 0 || v > UINT64_MAX / unit)
        return false;
    *ms = (uint64_t)v * unit;
    return true;
}

const char *config_parse_history(const char *s, size_t len, gale_history_rule_t *r)
{
    const char *eq = NULL;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '=')
            eq = s + i;
    if (!eq)
        return "not PATTERN=SIZE[/TTL]";
    size_t plen = (size_t)(eq - s);
    if (plen == 0 || plen >= sizeof(r->pattern) || !gale_pattern_valid(s, plen, NULL))
        return "the PATTERN is not a valid topic pattern";
    char num[64];
    size_t rest = len - plen - 1;
    if (rest == 0 || rest >= sizeof(num))
        return "not PATTERN=SIZE[/TTL]";
    memcpy(num, eq + 1, rest);
    num[rest] = '\0';
    char *slash = strchr(num, '/');
    if (slash)
        *slash++ = '\0';
    uint64_t size;
    if (!parse_uint(num, &size) || size < 1 || size > 1000000)
        return "SIZE is not a number from 1 to 1000000";
    uint64_t ttl = 0;
    if (slash && !config_parse_duration(slash, &ttl))
        return "TTL is not a duration such as 30s, 10m, 2h or 1d";
    memcpy(r->pattern, s, plen);
    r->pattern[plen] = '\0';
    r->size = size;
    r->ttl_ms = ttl;
    return NULL;
}

/* Adds the rule s[0..len); false (reported on err) when it is invalid or one too many. */
static bool add_history(gale_config_t *c, const char *src, const char *s, size_t len, FILE *err)
{
    const char *why = c->nhistory >= GALE_HISTORY_RULES_MAX
                          ? "too many rules (at most 64)"
                          : config_parse_history(s, len, &c->history[c->nhistory]);
    if (why) {
        fprintf(err, "gale-broker: %s: '%.*s': %s (e.g. 'chat.>=100/10m')\n", src, (int)len, s,
                why);
        return false;
    }
    c->nhistory++;
    return true;
}

static bool parse_addr(const char *s, gale_config_t *c)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return false;
    size_t hlen = (size_t)(colon - s);
    const char *host = s;
    if (host[0] == '[' && hlen >= 2 && host[hlen - 1] == ']') {
        host++;
        hlen -= 2;
    }
    uint64_t port;
    if (hlen == 0 || hlen >= sizeof(c->listen_host) || !parse_uint(colon + 1, &port) ||
        port > 65535)
        return false;
    memcpy(c->listen_host, host, hlen);
    c->listen_host[hlen] = '\0';
    c->listen_port = (int)port;
    return true;
}

/* Adds the --presence pattern s[0..len); false (reported on err) when invalid or too many. */
static bool add_presence(gale_config_t *c, const char *src, const char *s, size_t len, FILE *err)
{
    const char *why = NULL;
    bool is_pattern;
    if (c->npresence >= GALE_PRESENCE_RULES_MAX)
        why = "too many patterns (at most 64)";
    else if (len >= sizeof(c->presence[0]) || !gale_pattern_valid(s, len, &is_pattern))
        why = "not a valid topic pattern";
    if (why) {
        fprintf(err, "gale-broker: %s: '%.*s': %s (e.g. 'chat.*.msg')\n", src, (int)len, s, why);
        return false;
    }
    memcpy(c->presence[c->npresence], s, len);
    c->presence[c->npresence][len] = '\0';
    c->npresence++;
    return true;
}

/*
 * A repeatable option (--history, --presence): the first flag replaces the variable's
 * values (*from_flags, *n); the variable holds several separated by white space.
 */
static bool apply_repeated(gale_config_t *c, const char *src, const char *v, bool flag,
                           bool *from_flags, uint32_t *n,
                           bool (*add)(gale_config_t *, const char *, const char *, size_t, FILE *),
                           FILE *err)
{
    if (flag && !*from_flags) {
        *from_flags = true;
        *n = 0;
    }
    if (flag)
        return add(c, src, v, strlen(v), err);
    for (const char *p = v;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n')
            p++;
        if (!*p)
            return true;
        size_t len = strcspn(p, " \t\n");
        if (!add(c, src, p, len, err))
            return false;
        p += len;
    }
}

/* Applies one option's value; on failure writes why to err. */
static bool apply(gale_config_t *c, const opt_t *o, const char *src, const char *v, FILE *err)
{
    uint64_t n = 0;
    switch (o->kind) {
    case OPT_ADDR:
        if (parse_addr(v, c))
            return true;
        fprintf(err, "gale-broker: %s: '%s' is not HOST:PORT (e.g. 127.0.0.1:8080)\n", src, v);
        return false;
    case OPT_LEVEL: {
        int l = log_level_parse(v);
        if (l >= 0) {
            c->log_level = l;
            return true;
        }
        fprintf(err, "gale-broker: %s: '%s' is not one of error, warn, info, debug\n", src, v);
        return false;
    }
    case OPT_URLS: {
        cluster_addr_t addrs[CLUSTER_MAX_SHARDS];
        char masked[sizeof(c->redis_urls)];
        const char *why;
        bool ok = strlen(v) < sizeof(c->redis_urls) &&
                  cluster_parse_urls(v, addrs, CLUSTER_MAX_SHARDS, &why) > 0;
        explicit_bzero(addrs, sizeof(addrs)); /* no copy of a password left behind */
        if (ok) {
            strcpy(c->redis_urls, v);
            return true;
        }
        if (strlen(v) >= sizeof(c->redis_urls))
            why = "too long";
        cluster_mask_urls(masked, sizeof(masked), v); /* never print a password */
        fprintf(err, "gale-broker: %s: '%s': %s (e.g. redis://127.0.0.1:6379)\n", src, masked, why);
        return false;
    }
    case OPT_PREFIX: {
        size_t len = strlen(v);
        bool ok = len > 0 && len < sizeof(c->redis_prefix);
        for (size_t i = 0; ok && i < len; i++)
            ok = v[i] > ' ' && v[i] < 0x7f;
        if (!ok) {
            fprintf(err,
                    "gale-broker: %s: '%s' is not a valid PREFIX (1 to %zu printable ASCII "
                    "characters, no spaces)\n",
                    src, v, sizeof(c->redis_prefix) - 1);
            return false;
        }
        memcpy(c->redis_prefix, v, len + 1);
        return true;
    }
    case OPT_PATH:
    case OPT_NAME: {
        char *dst = o->kind == OPT_PATH ? c->web_root : c->node_id;
        size_t cap = o->kind == OPT_PATH ? sizeof(c->web_root) : sizeof(c->node_id);
        size_t len = strlen(v);
        bool ok = len > 0 && len < cap;
        for (size_t i = 0; ok && o->kind == OPT_NAME && i < len; i++)
            ok = v[i] > ' ' && v[i] < 0x7f && v[i] != '"' && v[i] != '\\';
        if (!ok) {
            fprintf(err, "gale-broker: %s: '%s' is not a valid %s (1 to %zu %s)\n", src, v, o->arg,
                    cap - 1,
                    o->kind == OPT_NAME ? "printable ASCII characters, no quotes" : "bytes");
            return false;
        }
        memcpy(dst, v, len + 1);
        return true;
    }
    case OPT_STR: {
        size_t len = strlen(v);
        bool ok = len > 0 && len < o->max;
        for (size_t i = 0; ok && i < len; i++)
            ok = (unsigned char)v[i] >= ' ' && v[i] != 0x7f;
        if (!ok) {
            fprintf(err, "gale-broker: %s: not a valid %s (1 to %" PRIu64 " printable bytes)\n",
                    src, o->arg, o->max - 1);
            return false;
        }
        memcpy((char *)c + o->off, v, len + 1);
        return true;
    }
    case OPT_PROXIES: {
        const char *why;
        size_t off, blen;
        if (strlen(v) >= o->max) {
            fprintf(err, "gale-broker: %s: the list is too long (at most %" PRIu64 " bytes)\n", src,
                    o->max - 1);
            return false;
        }
        if (netaddr_parse_list(v, NULL, 0, &why, &off, &blen) < 0) {
            fprintf(err,
                    "gale-broker: %s: '%.*s': %s (expected ADDR[/BITS][,...], e.g. "
                    "10.0.0.0/8,192.0.2.7,fd00::/8)\n",
                    src, (int)blen, v + off, why);
            return false;
        }
        memcpy((char *)c + o->off, v, strlen(v) + 1);
        return true;
    }
    case OPT_SECRET: {
        size_t len = strlen(v);
        if (len == 0 || len >= sizeof(c->jwt_secret)) {
            fprintf(err, "gale-broker: %s: the secret must be 1 to %zu bytes\n", src,
                    sizeof(c->jwt_secret) - 1);
            return false;
        }
        memcpy(c->jwt_secret, v, len + 1);
        c->jwt_secret_len = len;
        c->jwt_secret_file[0] = '\0'; /* this secret, not a file's, is kept on SIGHUP */
        return true;
    }
    case OPT_SECRET_FILE: {
        FILE *f = fopen(v, "rb");
        size_t len = 0;
        if (f) {
            len = fread(c->jwt_secret, 1, sizeof(c->jwt_secret), f);
            fclose(f);
        }
        if (len > 0 && c->jwt_secret[len - 1] == '\n')
            len--;
        if (len > 0 && c->jwt_secret[len - 1] == '\r')
            len--;
        if (!f || len == 0 || len >= sizeof(c->jwt_secret)) {
            fprintf(err, "gale-broker: %s: '%s': %s\n", src, v,
                    !f ? strerror(errno) : "the secret must be 1 to 1023 bytes");
            memset(c->jwt_secret, 0, sizeof(c->jwt_secret));
            c->jwt_secret_len = 0;
            return false;
        }
        c->jwt_secret[len] = '\0';
        c->jwt_secret_len = len;
        if (strlen(v) >= sizeof(c->jwt_secret_file)) {
            fprintf(err, "gale-broker: %s: the path is too long\n", src);
            return false;
        }
        strcpy(c->jwt_secret_file, v); /* read again on SIGHUP */
        return true;
    }
    case OPT_HISTORY:
        return apply_repeated(c, src, v, src == o->flag, &c->history_from_flags, &c->nhistory,
                              add_history, err);
    case OPT_PRESENCE:
        return apply_repeated(c, src, v, src == o->flag, &c->presence_from_flags, &c->npresence,
                              add_presence, err);
    case OPT_SIZE:
    case OPT_UINT:
        if (!(o->kind == OPT_SIZE ? config_parse_size(v, &n) : parse_uint(v, &n)) || n < o->min ||
            n > o->max) {
            fprintf(err, "gale-broker: %s: '%s' is not a %s from %" PRIu64 " to %" PRIu64 "%s\n",
                    src, v, o->kind == OPT_SIZE ? "size" : "number", o->min, o->max,
                    o->kind == OPT_SIZE ? " (suffixes K, M, G allowed)" : "");
            return false;
        }
        break;
    }
    memcpy((char *)c + o->off, &n, sizeof(n));
    return true;
}

static void usage(FILE *out)
{
    fprintf(out, "Usage: gale-broker [OPTION]...\n"
                 "A WebSocket pub/sub message broker speaking the gale v1 protocol "
                 "(WebSocket at /ws).\n\nOptions (each also from the environment variable "
                 "shown; a flag wins):\n");
    for (size_t i = 0; i < NOPTIONS; i++) {
        char left[64];
        snprintf(left, sizeof(left), "%s %s", options[i].flag, options[i].arg);
        fprintf(out, "  %-28s %s\n  %-28s [%s]\n", left, options[i].help, "", options[i].env);
    }
    fprintf(out,
            "  %-28s %s\n  %-28s %s\n\nExit status: 0 after a clean stop (SIGTERM, SIGINT), "
            "1 on a runtime failure, 2 on a bad option.\n",
            "-h, --help", "print this help and exit", "-V, --version",
            "print the version and exit");
}

/* Every --redis URL naming a user has a password, its own or --redis-password's. */
static bool redis_credentials_ok(const gale_config_t *c, FILE *err)
{
    cluster_addr_t addrs[CLUSTER_MAX_SHARDS];
    const char *why;
    int n = cluster_parse_urls(c->redis_urls, addrs, CLUSTER_MAX_SHARDS, &why);
    bool ok = n > 0 && cluster_set_password(addrs, n, c->redis_password, &why);
    explicit_bzero(addrs, sizeof(addrs));
    if (!ok)
        fprintf(err, "gale-broker: --redis: %s\n", why);
    return ok;
}

static const opt_t *find_flag(const char *arg, size_t len)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        if (strlen(options[i].flag) == len && strncmp(options[i].flag, arg, len) == 0)
            return &options[i];
    return NULL;
}

config_result_t config_parse(gale_config_t *c, int argc, char **argv, char **envp, FILE *out,
                             FILE *err)
{
    for (size_t i = 0; i < NOPTIONS; i++) {
        size_t elen = strlen(options[i].env);
        for (char **e = envp; e && *e; e++) {
            if (strncmp(*e, options[i].env, elen) == 0 && (*e)[elen] == '=') {
                if (!apply(c, &options[i], options[i].env, *e + elen + 1, err))
                    return CONFIG_ERROR;
            }
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(out);
            return CONFIG_EXIT;
        }
        if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
#ifdef GALE_VERSION
            fprintf(out, "gale-broker %s\n", GALE_VERSION);
#endif
            return CONFIG_EXIT;
        }
        const char *eq = strchr(a, '=');
        size_t flen = eq ? (size_t)(eq - a) : strlen(a);
        const opt_t *o = find_flag(a, flen);
        if (!o) {
            fprintf(err, "gale-broker: unknown option '%s' (see --help)\n", a);
            return CONFIG_ERROR;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) {
            fprintf(err, "gale-broker: %s needs a value %s\n", o->flag, o->arg);
            return CONFIG_ERROR;
        }
        if (!apply(c, o, o->flag, v, err))
            return CONFIG_ERROR;
    }
    if (c->redis_urls[0] && !redis_credentials_ok(c, err))
        return CONFIG_ERROR;
    /* Single node: history and presence keep one owner per topic, not divided across loops
     * yet. In a cluster they live in Redis, and every loop is a node of its own there. */
    if (c->loops > 1 && !c->redis_urls[0] && (c->nhistory || c->npresence)) {
        fprintf(err,
                "gale-broker: --loops %" PRIu64 " with %s: not supported yet without --redis "
                "(its state needs one owner per topic across loops): use --loops 1, or --redis\n",
                c->loops, c->nhistory ? "--history" : "--presence");
        return CONFIG_ERROR;
    }
    if (!c->tls_cert[0] != !c->tls_key[0]) {
        fprintf(err, "gale-broker: --tls-cert and --tls-key go together\n");
        return CONFIG_ERROR;
    }
    return CONFIG_RUN;
}
