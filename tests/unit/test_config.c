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

int main(void)
{
    sink = fopen("/dev/null", "w");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),         cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_flags_and_env),    cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_help_and_version), cmocka_unit_test(test_security_options),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    fclose(sink);
    return rc;
}
