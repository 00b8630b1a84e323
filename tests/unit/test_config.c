/* Unit tests of flag and GALE_* environment parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "log.h"

static FILE *sink;

static config_result_t parse(gale_config_t *c, char **env, int argc, ...)
{
    char *argv[32] = {"gale-broker"};
    va_list ap;
    va_start(ap, argc);
    for (int i = 0; i < argc && i < 30; i++)
        argv[i + 1] = va_arg(ap, char *);
    va_end(ap);
    config_defaults(c);
    return config_parse(c, argc + 1, argv, env, sink, sink);
}

static void test_defaults(void **state)
{
    (void)state;
    gale_config_t c;
    char *env[] = {NULL};
    assert_int_equal(parse(&c, env, 0), CONFIG_RUN);
    assert_string_equal(c.listen_host, "127.0.0.1");
    assert_int_equal(c.listen_port, 8080);
    assert_int_equal(c.max_message, 65536);
    assert_int_equal(c.max_subscriptions, 1024);
    assert_int_equal(c.max_connections, 0);
    assert_int_equal(c.queue_limit, 1048576);
    assert_int_equal(c.keepalive_s, 25);
    assert_int_equal(c.log_level, LOG_INFO);
}

static void test_sizes(void **state)
{
    (void)state;
    uint64_t v;
    assert_true(config_parse_size("0", &v) && v == 0);
    assert_true(config_parse_size("64K", &v) && v == 65536);
    assert_true(config_parse_size("64KiB", &v) && v == 65536);
    assert_true(config_parse_size("1M", &v) && v == 1048576);
    assert_true(config_parse_size("2g", &v) && v == 2147483648ull);
    assert_true(config_parse_size("100B", &v) && v == 100);
    assert_false(config_parse_size("", &v));
    assert_false(config_parse_size("-1", &v));
    assert_false(config_parse_size("banana", &v));
    assert_false(config_parse_size("1T", &v));
    assert_false(config_parse_size("1 K", &v));
    assert_false(config_parse_size("99999999999999999999", &v));
    assert_false(config_parse_size("18446744073709551615G", &v));
}

static void test_flags_and_env(void **state)
{
    (void)state;
    gale_config_t c;
    char *env[] = {"GALE_MAX_MESSAGE=1M",  "GALE_LISTEN=0.0.0.0:9000",
                   "GALE_LOG_LEVEL=debug", "GALE_NODE_ID=n1",
                   "UNRELATED=1",          NULL};
    assert_int_equal(parse(&c, env, 3, "--listen", "127.0.0.2:0", "--queue-limit=4K"), CONFIG_RUN);
    assert_string_equal(c.listen_host, "127.0.0.2"); /* the flag wins */
    assert_int_equal(c.listen_port, 0);
    assert_int_equal(c.max_message, 1048576); /* from the environment */
    assert_int_equal(c.queue_limit, 4096);
    assert_int_equal(c.log_level, LOG_DEBUG);
    assert_string_equal(c.node_id, "n1");
    assert_int_equal(parse(&c, env, 2, "--listen", "[::1]:8080"), CONFIG_RUN);
    assert_string_equal(c.listen_host, "::1");
}

static void test_bad_values(void **state)
{
    (void)state;
    gale_config_t c;
    char *env[] = {NULL};
    assert_int_equal(parse(&c, env, 2, "--max-message", "banana"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--max-message", "1"), CONFIG_ERROR); /* below min */
    assert_int_equal(parse(&c, env, 2, "--listen", "nope"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--listen", "127.0.0.1:70000"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--listen", ":8080"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--log-level", "loud"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--node-id", "has space"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--keepalive", "-5"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 1, "--keepalive"), CONFIG_ERROR); /* missing value */
    assert_int_equal(parse(&c, env, 1, "--bogus"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 1, "positional"), CONFIG_ERROR);
    char *bad_env[] = {"GALE_QUEUE_LIMIT=lots", NULL};
    assert_int_equal(parse(&c, bad_env, 0), CONFIG_ERROR);
}

static void test_help_and_version(void **state)
{
    (void)state;
    gale_config_t c;
    char *env[] = {NULL};
    assert_int_equal(parse(&c, env, 1, "--help"), CONFIG_EXIT);
    assert_int_equal(parse(&c, env, 1, "-V"), CONFIG_EXIT);
}

static void test_security_options(void **state)
{
    (void)state;
    gale_config_t c;
    char *env[] = {"GALE_JWT_SECRET=from-env", "GALE_API_KEY=k1", NULL};
    assert_int_equal(parse(&c, env, 0), CONFIG_RUN);
    assert_string_equal(c.jwt_secret, "from-env");
    assert_int_equal(c.jwt_secret_len, 8);
    assert_string_equal(c.api_key, "k1");
    assert_int_equal(c.pub_rate, 0);
    char *none[] = {NULL};
    assert_int_equal(parse(&c, none, 6, "--jwt-secret", "s", "--pub-rate", "10",
                           "--allowed-origins", "https://a,https://b"),
                     CONFIG_RUN);
    assert_int_equal(c.pub_rate, 10);
    assert_string_equal(c.allowed_origins, "https://a,https://b");
    /* TLS needs both files; an unreadable secret file and an empty secret are errors. */
    assert_int_equal(parse(&c, none, 2, "--tls-cert", "x.pem"), CONFIG_ERROR);
    assert_int_equal(parse(&c, none, 4, "--tls-cert", "x.pem", "--tls-key", "y.pem"), CONFIG_RUN);
    assert_int_equal(parse(&c, none, 2, "--jwt-secret-file", "/nonexistent/secret"), CONFIG_ERROR);
    assert_int_equal(parse(&c, none, 2, "--jwt-secret", ""), CONFIG_ERROR);
    assert_int_equal(parse(&c, none, 2, "--pub-rate", "1000001"), CONFIG_ERROR);
    char path[] = "/tmp/gale-test-secret-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "file-secret\n", 12), 12);
    close(fd);
    assert_int_equal(parse(&c, none, 2, "--jwt-secret-file", path), CONFIG_RUN);
    assert_string_equal(c.jwt_secret, "file-secret");
    assert_int_equal(c.jwt_secret_len, 11);
    unlink(path);
}

/* --- history, recovery and dedup options ----------------------------------------------- */

static void test_history_defaults(void **state)
{
    (void)state;
    gale_config_t c;
    char *env[] = {NULL};
    assert_int_equal(parse(&c, env, 0), CONFIG_RUN);
    assert_int_equal(c.nhistory, 0);
    assert_false(c.history_from_flags);
    assert_int_equal(c.history_memory, 64 * 1024 * 1024);
    assert_int_equal(c.recovery_max, 1000);
    assert_int_equal(c.hist_max_limit, 1000);
    assert_int_equal(c.dedup_window_s, 120);
    assert_int_equal(c.dedup_max, 100000);
}

static void test_parse_duration(void **state)
{
    (void)state;
    uint64_t ms = 0;
    assert_true(config_parse_duration("30s", &ms));
    assert_int_equal(ms, 30000);
    assert_true(config_parse_duration("10m", &ms));
    assert_int_equal(ms, 600000);
    assert_true(config_parse_duration("2h", &ms));
    assert_int_equal(ms, 7200000);
    assert_true(config_parse_duration("1d", &ms));
    assert_int_equal(ms, 86400000);
    assert_true(config_parse_duration("45", &ms)); /* plain digits: seconds */
    assert_int_equal(ms, 45000);
    assert_true(config_parse_duration("1", &ms));
    assert_int_equal(ms, 1000);
    assert_true(config_parse_duration("213503982334d", &ms)); /* the largest day count */
    assert_int_equal(ms, 213503982334ull * 86400000ull);
    ms = 42;
    assert_false(config_parse_duration("0", &ms)); /* zero is no TTL */
    assert_false(config_parse_duration("0s", &ms));
    assert_false(config_parse_duration("", &ms));
    assert_false(config_parse_duration(NULL, &ms));
    assert_false(config_parse_duration("s", &ms));
    assert_false(config_parse_duration("-5s", &ms));
    assert_false(config_parse_duration(" 5s", &ms));
    assert_false(config_parse_duration("5 s", &ms));
    assert_false(config_parse_duration("5ss", &ms));
    assert_false(config_parse_duration("5y", &ms));
    assert_false(config_parse_duration("5ms", &ms));
    assert_false(config_parse_duration("1.5h", &ms));
    assert_false(config_parse_duration("2H", &ms));
    assert_false(config_parse_duration("213503982335d", &ms)); /* overflows in ms */
    assert_false(config_parse_duration("18446744073709551615", &ms));
    assert_false(config_parse_duration("99999999999999999999s", &ms));
    assert_int_equal(ms, 42); /* untouched by failures */
}

/* Parses s as a --history rule; NULL when valid. */
static const char *rule_of(const char *s, gale_history_rule_t *r)
{
    memset(r, 0x5a, sizeof(*r));
    return config_parse_history(s, strlen(s), r);
}

static void test_parse_history_valid(void **state)
{
    (void)state;
    gale_history_rule_t r;
    assert_null(rule_of("chat.>=100", &r));
    assert_string_equal(r.pattern, "chat.>");
    assert_int_equal(r.size, 100);
    assert_int_equal(r.ttl_ms, 0);     /* until displaced */
    assert_null(rule_of("a=b=5", &r)); /* split at the last '=' */
    assert_string_equal(r.pattern, "a=b");
    assert_int_equal(r.size, 5);
    assert_null(rule_of("x.*.y=1/30s", &r));
    assert_string_equal(r.pattern, "x.*.y");
    assert_int_equal(r.size, 1);
    assert_int_equal(r.ttl_ms, 30000);
    assert_null(rule_of("t=10/10m", &r));
    assert_int_equal(r.ttl_ms, 600000);
    assert_null(rule_of("t=10/2h", &r));
    assert_int_equal(r.ttl_ms, 7200000);
    assert_null(rule_of("t=10/1d", &r));
    assert_int_equal(r.ttl_ms, 86400000);
    assert_null(rule_of("t=10/90", &r)); /* plain seconds */
    assert_int_equal(r.ttl_ms, 90000);
    assert_null(rule_of(">=1000000", &r));
    assert_string_equal(r.pattern, ">");
    assert_int_equal(r.size, 1000000);
    assert_null(rule_of("*=7", &r));
    assert_string_equal(r.pattern, "*");
    /* The length is what counts: a rule inside a longer string. */
    const char *several = "a.b=3/5s c=4";
    assert_null(config_parse_history(several, 8, &r));
    assert_string_equal(r.pattern, "a.b");
    assert_int_equal(r.size, 3);
    assert_int_equal(r.ttl_ms, 5000);
    assert_null(config_parse_history(several + 9, 3, &r));
    assert_string_equal(r.pattern, "c");
    assert_int_equal(r.size, 4);
    assert_int_equal(r.ttl_ms, 0);
    /* The longest pattern (255 bytes). */
    char longest[300];
    memset(longest, 'p', 255);
    strcpy(longest + 255, "=2");
    assert_null(rule_of(longest, &r));
    assert_int_equal(strlen(r.pattern), 255);
    assert_int_equal(r.size, 2);
}

static void test_parse_history_invalid(void **state)
{
    (void)state;
    gale_history_rule_t r;
    const char *bad[] = {
        "chat.>",       /* no '=' */
        "",             /* nothing */
        "=5",           /* no pattern */
        "chat=",        /* no SIZE */
        "chat=0",       /* SIZE 0 */
        "chat=1000001", /* SIZE over 1000000 */
        "chat=-1",
        "chat=+5",
        "chat= 5",
        "chat=5x",
        "chat=1e3",
        "chat=99999999999999999999", /* overflows */
        "chat..x=5",                 /* empty segment */
        "chat.>.x=5",                /* '>' not last */
        "ch*t=5",                    /* '*' inside a segment */
        "has space=5",               /* not a topic character */
        "a=5=",                      /* the last '=' leaves no SIZE */
        "chat=5/",                   /* empty TTL */
        "chat=5/0s",                 /* zero TTL */
        "chat=5/10y",                /* unknown unit */
        "chat=5/-1s",
        "chat=5/1.5h",
        "chat=5/10m/2",
        "chat=/10s",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *why = rule_of(bad[i], &r);
        if (!why)
            fail_msg("'%s' was accepted as a --history rule", bad[i]);
        assert_true(strlen(why) > 0);
    }
    /* A pattern of 256 bytes is one too long. */
    char too_long[300];
    memset(too_long, 'p', 256);
    strcpy(too_long + 256, "=2");
    assert_non_null(rule_of(too_long, &r));
    /* The length cuts a valid rule short. */
    assert_non_null(config_parse_history("chat=5", 5, &r));
    assert_non_null(config_parse_history("chat=5", 4, &r));
}

static void test_history_flags(void **state)
{
    (void)state;
    gale_config_t c;
    char *env[] = {NULL};
    assert_int_equal(parse(&c, env, 5, "--history", "chat.>=100", "--history=news.*=5/10m",
                           "--history", "a=b=3/1d"),
                     CONFIG_RUN);
    assert_int_equal(c.nhistory, 3); /* repeatable, in the order given */
    assert_true(c.history_from_flags);
    assert_string_equal(c.history[0].pattern, "chat.>");
    assert_int_equal(c.history[0].size, 100);
    assert_int_equal(c.history[0].ttl_ms, 0);
    assert_string_equal(c.history[1].pattern, "news.*");
    assert_int_equal(c.history[1].size, 5);
    assert_int_equal(c.history[1].ttl_ms, 600000);
    assert_string_equal(c.history[2].pattern, "a=b");
    assert_int_equal(c.history[2].size, 3);
    assert_int_equal(c.history[2].ttl_ms, 86400000);
    const char *bad[] = {"chat", "chat=0", "chat=1000001", "bad..pattern=5", "chat=5/soon"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (parse(&c, env, 2, "--history", bad[i]) != CONFIG_ERROR)
            fail_msg("--history %s was accepted", bad[i]);
    }
    /* A bad rule after good ones still fails. */
    assert_int_equal(parse(&c, env, 4, "--history", "a=1", "--history", "b=0"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 1, "--history"), CONFIG_ERROR); /* missing value */
}

/* The error names the option and the rule. */
static void test_history_error_message(void **state)
{
    (void)state;
    gale_config_t c;
    char *env[] = {NULL};
    char *buf = NULL;
    size_t len = 0;
    FILE *err = open_memstream(&buf, &len);
    assert_non_null(err);
    char *argv[] = {"gale-broker", "--history", "chat.>=0", NULL};
    config_defaults(&c);
    assert_int_equal(config_parse(&c, 3, argv, env, sink, err), CONFIG_ERROR);
    fclose(err);
    assert_non_null(strstr(buf, "--history"));
    assert_non_null(strstr(buf, "chat.>=0"));
    assert_non_null(strstr(buf, "SIZE"));
    free(buf);
}

static void test_history_env(void **state)
{
    (void)state;
    gale_config_t c;
    char *env[] = {"GALE_HISTORY=chat.>=100/30s news.*=5\tx=1\n  y.z=2/1h  ", NULL};
    assert_int_equal(parse(&c, env, 0), CONFIG_RUN);
    assert_false(c.history_from_flags);
    assert_int_equal(c.nhistory, 4);
    assert_string_equal(c.history[0].pattern, "chat.>");
    assert_int_equal(c.history[0].size, 100);
    assert_int_equal(c.history[0].ttl_ms, 30000);
    assert_string_equal(c.history[1].pattern, "news.*");
    assert_int_equal(c.history[1].size, 5);
    assert_int_equal(c.history[1].ttl_ms, 0);
    assert_string_equal(c.history[2].pattern, "x");
    assert_int_equal(c.history[2].size, 1);
    assert_string_equal(c.history[3].pattern, "y.z");
    assert_int_equal(c.history[3].size, 2);
    assert_int_equal(c.history[3].ttl_ms, 3600000);

    /* One flag replaces all of the variable's rules; more flags add to it. */
    assert_int_equal(parse(&c, env, 2, "--history", "only=7"), CONFIG_RUN);
    assert_true(c.history_from_flags);
    assert_int_equal(c.nhistory, 1);
    assert_string_equal(c.history[0].pattern, "only");
    assert_int_equal(c.history[0].size, 7);
    assert_int_equal(parse(&c, env, 3, "--history", "one=1", "--history=two=2"), CONFIG_RUN);
    assert_int_equal(c.nhistory, 2);
    assert_string_equal(c.history[0].pattern, "one");
    assert_string_equal(c.history[1].pattern, "two");

    /* Empty or blank: no rules. A bad rule anywhere in it is an error. */
    char *blank[] = {"GALE_HISTORY=  ", NULL};
    assert_int_equal(parse(&c, blank, 0), CONFIG_RUN);
    assert_int_equal(c.nhistory, 0);
    char *empty[] = {"GALE_HISTORY=", NULL};
    assert_int_equal(parse(&c, empty, 0), CONFIG_RUN);
    assert_int_equal(c.nhistory, 0);
    char *bad[] = {"GALE_HISTORY=a=1 b=0 c=3", NULL};
    assert_int_equal(parse(&c, bad, 0), CONFIG_ERROR);
    /* Commas do not separate: "a=1,b=2" is one rule, split at its last '='. */
    char *comma[] = {"GALE_HISTORY=a=1,b=2", NULL};
    assert_int_equal(parse(&c, comma, 0), CONFIG_RUN);
    assert_int_equal(c.nhistory, 1);
    assert_string_equal(c.history[0].pattern, "a=1,b");
    assert_int_equal(c.history[0].size, 2);
    char *comma_bad[] = {"GALE_HISTORY=a.>=1,b.>=2", NULL}; /* ">=1,b" is no segment */
    assert_int_equal(parse(&c, comma_bad, 0), CONFIG_ERROR);
}

/* Runs config_parse on n arguments after the program name. */
static config_result_t parse_argv(gale_config_t *c, char **env, int n, char **args)
{
    char **argv = calloc((size_t)n + 2, sizeof(*argv));
    assert_non_null(argv);
    argv[0] = "gale-broker";
    memcpy(argv + 1, args, (size_t)n * sizeof(*args));
    config_defaults(c);
    config_result_t r = config_parse(c, n + 1, argv, env, sink, sink);
    free(argv);
    return r;
}

static void test_history_too_many(void **state)
{
    (void)state;
    gale_config_t c;
    char *none[] = {NULL};
    static char rules[GALE_HISTORY_RULES_MAX + 1][16];
    char *args[2 * (GALE_HISTORY_RULES_MAX + 1)];
    for (int i = 0; i <= GALE_HISTORY_RULES_MAX; i++) {
        snprintf(rules[i], sizeof(rules[i]), "r%d=%d", i, i + 1);
        args[2 * i] = "--history";
        args[2 * i + 1] = rules[i];
    }
    assert_int_equal(GALE_HISTORY_RULES_MAX, 64);
    assert_int_equal(parse_argv(&c, none, 2 * 64, args), CONFIG_RUN);
    assert_int_equal(c.nhistory, 64);
    assert_string_equal(c.history[63].pattern, "r63");
    assert_int_equal(c.history[63].size, 64);
    assert_int_equal(parse_argv(&c, none, 2 * 65, args), CONFIG_ERROR);

    /* The same through the variable. */
    static char var[64 * 16 + 32];
    size_t n = (size_t)snprintf(var, sizeof(var), "GALE_HISTORY=");
    for (int i = 0; i < 64; i++)
        n += (size_t)snprintf(var + n, sizeof(var) - n, "%s ", rules[i]);
    char *env64[] = {var, NULL};
    assert_int_equal(parse(&c, env64, 0), CONFIG_RUN);
    assert_int_equal(c.nhistory, 64);
    /* 64 from the variable, replaced by a flag: one rule, not 65. */
    assert_int_equal(parse(&c, env64, 2, "--history", "flag=1"), CONFIG_RUN);
    assert_int_equal(c.nhistory, 1);
    assert_string_equal(c.history[0].pattern, "flag");
    snprintf(var + n, sizeof(var) - n, "%s", rules[64]);
    assert_int_equal(parse(&c, env64, 0), CONFIG_ERROR);
}

static void test_recovery_and_dedup_options(void **state)
{
    (void)state;
    gale_config_t c;
    char *env[] = {NULL};
    assert_int_equal(parse(&c, env, 10, "--history-memory", "2G", "--recovery-max", "5000",
                           "--hist-max-limit", "50", "--dedup-window", "600", "--dedup-max",
                           "1000"),
                     CONFIG_RUN);
    assert_int_equal(c.history_memory, 2ull << 30);
    assert_int_equal(c.recovery_max, 5000);
    assert_int_equal(c.hist_max_limit, 50);
    assert_int_equal(c.dedup_window_s, 600);
    assert_int_equal(c.dedup_max, 1000);
    char *vars[] = {"GALE_HISTORY_MEMORY=1M", "GALE_RECOVERY_MAX=1000000", "GALE_HIST_MAX_LIMIT=1",
                    "GALE_DEDUP_WINDOW=120",  "GALE_DEDUP_MAX=100000000",  NULL};
    assert_int_equal(parse(&c, vars, 0), CONFIG_RUN);
    assert_int_equal(c.history_memory, 1 << 20);
    assert_int_equal(c.recovery_max, 1000000);
    assert_int_equal(c.hist_max_limit, 1);
    assert_int_equal(c.dedup_window_s, 120);
    assert_int_equal(c.dedup_max, 100000000);
    /* The dedup window is at least 2 minutes (PROTOCOL.md). */
    assert_int_equal(parse(&c, env, 2, "--dedup-window", "119"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--dedup-window", "0"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--dedup-window", "86401"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--dedup-window", "2m"), CONFIG_ERROR);
    char *short_window[] = {"GALE_DEDUP_WINDOW=60", NULL};
    assert_int_equal(parse(&c, short_window, 0), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--dedup-max", "999"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--recovery-max", "999"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--recovery-max", "1000001"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--hist-max-limit", "0"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--hist-max-limit", "1000001"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--history-memory", "512K"), CONFIG_ERROR);
    assert_int_equal(parse(&c, env, 2, "--history-memory", "lots"), CONFIG_ERROR);
}

/* --- presence options ------------------------------------------------------------------- */

static void test_presence_defaults(void **state)
{
    (void)state;
    gale_config_t c;
    char *env[] = {NULL};
    assert_int_equal(parse(&c, env, 0), CONFIG_RUN);
    assert_int_equal(c.npresence, 0);
    assert_int_equal(c.presence_list_max, 1000);
    assert_int_equal(c.presence_info_max, 1024);
    assert_int_equal(c.presence_expiry_s, 30);
    assert_int_equal(c.presence_events_max, 1000);
    assert_int_equal(c.presence_memory, 64 * 1024 * 1024);
}

static void test_presence_patterns(void **state)
{
    (void)state;
    gale_config_t c;
    char *env[] = {"GALE_PRESENCE=chat.*.msg \tdoc.>  ", "GALE_PRESENCE_EXPIRY=3", NULL};
    assert_int_equal(parse(&c, env, 0), CONFIG_RUN);
    assert_false(c.presence_from_flags);
    assert_int_equal(c.npresence, 2);
    assert_string_equal(c.presence[0], "chat.*.msg");
    assert_string_equal(c.presence[1], "doc.>");
    assert_int_equal(c.presence_expiry_s, 3);
    /* One flag replaces the variable's patterns; more flags add to it. */
    assert_int_equal(parse(&c, env, 4, "--presence", "a", "--presence", "b.*"), CONFIG_RUN);
    assert_true(c.presence_from_flags);
    assert_int_equal(c.npresence, 2);
    assert_string_equal(c.presence[0], "a");
    assert_string_equal(c.presence[1], "b.*");
    char *none[] = {NULL};
    assert_int_equal(parse(&c, none, 2, "--presence", "a..b"), CONFIG_ERROR);
    assert_int_equal(parse(&c, none, 2, "--presence", ""), CONFIG_ERROR);
    assert_int_equal(parse(&c, none, 2, "--presence", "a.>.b"), CONFIG_ERROR);
    assert_int_equal(parse(&c, none, 2, "--presence-expiry", "2"), CONFIG_ERROR);
    assert_int_equal(parse(&c, none, 2, "--presence-expiry", "46"), CONFIG_ERROR);
    assert_int_equal(parse(&c, none, 2, "--presence-list-max", "0"), CONFIG_ERROR);
    assert_int_equal(parse(&c, none, 2, "--presence-info-max", "64K"), CONFIG_RUN);
    assert_int_equal(c.presence_info_max, 65536);
    assert_int_equal(parse(&c, none, 2, "--presence-info-max", "65537"), CONFIG_ERROR);
    assert_int_equal(parse(&c, none, 2, "--presence-memory", "2M"), CONFIG_RUN);
    assert_int_equal(c.presence_memory, 2 * 1024 * 1024);
    assert_int_equal(parse(&c, none, 2, "--presence-memory", "1000"), CONFIG_ERROR);
    assert_int_equal(parse(&c, none, 2, "--presence-events-max", "0"), CONFIG_RUN);
    assert_int_equal(c.presence_events_max, 0);
}

static void test_presence_too_many(void **state)
{
    (void)state;
    gale_config_t c;
    char *env[] = {NULL};
    char *args[2 * (GALE_PRESENCE_RULES_MAX + 1)];
    char names[GALE_PRESENCE_RULES_MAX + 1][16];
    for (int i = 0; i <= GALE_PRESENCE_RULES_MAX; i++) {
        snprintf(names[i], sizeof(names[i]), "t%d", i);
        args[2 * i] = "--presence";
        args[2 * i + 1] = names[i];
    }
    assert_int_equal(parse_argv(&c, env, 2 * GALE_PRESENCE_RULES_MAX, args), CONFIG_RUN);
    assert_int_equal(c.npresence, GALE_PRESENCE_RULES_MAX);
    assert_int_equal(parse_argv(&c, env, 2 * (GALE_PRESENCE_RULES_MAX + 1), args), CONFIG_ERROR);
}

int main(void)
{
    sink = fopen("/dev/null", "w");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_flags_and_env),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_help_and_version),
        cmocka_unit_test(test_security_options),
        cmocka_unit_test(test_history_defaults),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_parse_history_valid),
        cmocka_unit_test(test_parse_history_invalid),
        cmocka_unit_test(test_history_flags),
        cmocka_unit_test(test_history_error_message),
        cmocka_unit_test(test_history_env),
        cmocka_unit_test(test_history_too_many),
        cmocka_unit_test(test_presence_defaults),
        cmocka_unit_test(test_presence_patterns),
        cmocka_unit_test(test_presence_too_many),
        cmocka_unit_test(test_recovery_and_dedup_options),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    fclose(sink);
    return rc;
}
