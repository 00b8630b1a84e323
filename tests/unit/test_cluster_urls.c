/* Unit tests of --redis URL credentials: parsing, percent-decoding, the
 * --redis-password override, masking for logs, and their config checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cluster_wire.h"
#include "config.h"

static cluster_addr_t a[CLUSTER_MAX_SHARDS];

static int parse(const char *list, const char **why)
{
    return cluster_parse_urls(list, a, CLUSTER_MAX_SHARDS, why);
}

static void test_password_only(void **state)
{
    const char *why;
    (void)state;
    assert_int_equal(parse("redis://:s3cret@127.0.0.1:6379", &why), 1);
    assert_string_equal(a[0].host, "127.0.0.1");
    assert_int_equal(a[0].port, 6379);
    assert_int_equal(a[0].user_len, 0);
    assert_string_equal(a[0].user, "");
    assert_string_equal(a[0].pass, "s3cret");
    assert_int_equal(a[0].pass_len, 6);
    /* The label (ring key, logs, metrics) never holds credentials, so the ring is the
     * same with or without them. */
    assert_string_equal(a[0].label, "127.0.0.1:6379/0");

    assert_int_equal(parse("redis://127.0.0.1:6379", &why), 1);
    assert_int_equal(a[0].pass_len, 0);
    assert_int_equal(a[0].user_len, 0);
}

static void test_user_and_password(void **state)
{
    const char *why;
    (void)state;
    assert_int_equal(parse("redis://gale:pw@[::1]:7000/2", &why), 1);
    assert_string_equal(a[0].user, "gale");
    assert_string_equal(a[0].pass, "pw");
    assert_string_equal(a[0].host, "::1");
    assert_int_equal(a[0].db, 2);
    assert_string_equal(a[0].label, "[::1]:7000/2");

    /* Several shards, each with its own credentials, spaces around commas. */
    assert_int_equal(parse("redis://:a@r1:1 , redis://u:b@r2:2,redis://r3:3", &why), 3);
    assert_string_equal(a[0].pass, "a");
    assert_string_equal(a[1].user, "u");
    assert_string_equal(a[1].pass, "b");
    assert_int_equal(a[2].pass_len, 0);
    assert_string_equal(a[2].label, "r3:3/0");
}

static void test_percent_decoding(void **state)
{
    const char *why;
    (void)state;
    /* @ : % / # ? space and a non-ASCII byte, all percent-encoded. */
    assert_int_equal(parse("redis://us%65r%2Dx:p%40ss%3Aw%25rd%2F%23%3F%20%C3%A9@h:1", &why), 1);
    assert_string_equal(a[0].user, "user-x");
    assert_string_equal(a[0].pass, "p@ss:w%rd/#? \xc3\xa9");
    assert_int_equal(a[0].pass_len, strlen("p@ss:w%rd/#? \xc3\xa9"));
    /* Lower-case hex digits; control bytes are fine in a password. */
    assert_int_equal(parse("redis://:%0a%7e%7E@h:1", &why), 1);
    assert_string_equal(a[0].pass, "\n~~");
    /* Raw '@', ':' and '/' in a password: the credentials end at the last '@' and the
     * user at the first ':' (like Python's urllib). */
    assert_int_equal(parse("redis://u:p@ss:w/rd@h:1/3", &why), 1);
    assert_string_equal(a[0].user, "u");
    assert_string_equal(a[0].pass, "p@ss:w/rd");
    assert_string_equal(a[0].host, "h");
    assert_int_equal(a[0].db, 3);
    /* '+' is not a space in a URL's userinfo. */
    assert_int_equal(parse("redis://:a+b@h:1", &why), 1);
    assert_string_equal(a[0].pass, "a+b");
}

static void test_bad_credentials(void **state)
{
    const char *why;
    char longpw[CLUSTER_PASS_MAX + 40], longuser[CLUSTER_USER_MAX + 40];
    (void)state;
    static const char *const bad[] = {
        "redis://:@h:1",           /* empty password */
        "redis://u:@h:1",          /* empty password */
        "redis://@h:1",            /* nothing before '@' */
        "redis://:%4@h:1",         /* truncated escape */
        "redis://:%@h:1",          /* truncated escape */
        "redis://:%zzsecret@h:1",  /* not hex */
        "redis://:se%00cret@h:1",  /* NUL */
        "redis://:se cret@h:1",    /* raw space */
        "redis://:se\tcret@h:1",   /* raw control byte */
        "redis://u%0A:secret@h:1", /* a user name is logged: printable only */
        "redis://u%20v:secret@h:1",
        "redis://u v:secret@h:1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(parse(bad[i], &why), -1);
        assert_non_null(strstr(why, "bad credentials"));
        assert_null(strstr(why, "secret")); /* the reason never quotes the input */
    }
    /* Credentials fine, the rest not: the usual reason. */
    static const char *const bad_host[] = {"redis://:secret@h",     "redis://:secret@",
                                           "redis://:secret@:1",    "redis://:secret@h:0",
                                           "redis://:secret@h:1/x", "rediss://:secret@h:1",
                                           "http://:secret@h:1"};
    for (size_t i = 0; i < sizeof(bad_host) / sizeof(bad_host[0]); i++) {
        assert_int_equal(parse(bad_host[i], &why), -1);
        assert_null(strstr(why, "secret"));
    }
    /* Lengths: at most CLUSTER_PASS_MAX and CLUSTER_USER_MAX bytes once decoded. */
    memset(longpw, 'p', sizeof(longpw));
    memcpy(longpw, "redis://:", 9);
    snprintf(longpw + 9 + CLUSTER_PASS_MAX, sizeof(longpw) - 9 - CLUSTER_PASS_MAX, "@h:1");
    assert_int_equal(parse(longpw, &why), 1);
    assert_int_equal(a[0].pass_len, CLUSTER_PASS_MAX);
    snprintf(longpw + 9 + CLUSTER_PASS_MAX, sizeof(longpw) - 9 - CLUSTER_PASS_MAX, "p@h:1");
    assert_int_equal(parse(longpw, &why), -1);
    memset(longuser, 'u', sizeof(longuser));
    memcpy(longuser, "redis://", 8);
    snprintf(longuser + 8 + CLUSTER_USER_MAX, sizeof(longuser) - 8 - CLUSTER_USER_MAX, ":p@h:1");
    assert_int_equal(parse(longuser, &why), 1);
    assert_int_equal(a[0].user_len, CLUSTER_USER_MAX);
    snprintf(longuser + 8 + CLUSTER_USER_MAX, sizeof(longuser) - 8 - CLUSTER_USER_MAX, "u:p@h:1");
    assert_int_equal(parse(longuser, &why), -1);
    /* One server named twice, with different passwords: still the same shard. */
    assert_int_equal(parse("redis://:a@h:1,redis://:b@h:1", &why), -1);
    assert_string_equal(why, "the same Redis URL is listed twice");
}

static void test_set_password(void **state)
{
    const char *why;
    char longpw[CLUSTER_PASS_MAX + 2];
    (void)state;
    /* A user without a password parses, but needs --redis-password. */
    assert_int_equal(parse("redis://gale@h:1,redis://:own@g:2,redis://k:3", &why), 3);
    assert_string_equal(a[0].user, "gale");
    assert_int_equal(a[0].pass_len, 0);
    assert_false(cluster_set_password(a, 3, NULL, &why));
    assert_non_null(strstr(why, "--redis-password"));
    assert_false(cluster_set_password(a, 3, "", &why));
    /* The override replaces every URL's password and keeps the URL's user. */
    assert_true(cluster_set_password(a, 3, "fromenv", &why));
    for (int i = 0; i < 3; i++) {
        assert_string_equal(a[i].pass, "fromenv");
        assert_int_equal(a[i].pass_len, 7);
    }
    assert_string_equal(a[0].user, "gale");
    assert_int_equal(a[1].user_len, 0);
    /* Without an override the URLs' own passwords stay. */
    assert_int_equal(parse("redis://:own@g:2,redis://k:3", &why), 2);
    assert_true(cluster_set_password(a, 2, "", &why));
    assert_string_equal(a[0].pass, "own");
    assert_int_equal(a[1].pass_len, 0);
    memset(longpw, 'x', sizeof(longpw) - 1);
    longpw[sizeof(longpw) - 1] = '\0';
    assert_false(cluster_set_password(a, 2, longpw, &why));
}

static void mask_is(const char *in, const char *expect)
{
    char out[512];
    size_t n = cluster_mask_urls(out, sizeof(out), in);
    assert_string_equal(out, expect);
    assert_int_equal(n, strlen(expect));
}

static void test_mask(void **state)
{
    char small[12];
    (void)state;
    mask_is("redis://127.0.0.1:6379", "redis://127.0.0.1:6379");
    mask_is("redis://:secret@h:1", "redis://:***@h:1");
    mask_is("redis://user:secret@h:1/2", "redis://user:***@h:1/2");
    mask_is("redis://secret@h:1", "redis://***@h:1"); /* no ':': all of it */
    mask_is("redis://:p@ss:w/rd@h:1", "redis://:***@h:1");
    mask_is("redis://:a@h:1, redis://u:b@g:2,redis://k:3",
            "redis://:***@h:1, redis://u:***@g:2,redis://k:3");
    /* Malformed input is masked too (error messages quote it). */
    mask_is("redis://:se,cret@h:1", "redis://:***@h:1");   /* ',' in the password */
    mask_is("redis://:se://cret@h:1", "redis://:***@h:1"); /* '://' in the password */
    mask_is("user:secret@h:1", "user:***@h:1");            /* no scheme */
    mask_is("http://:secret@h:1,redis://h:2", "http://:***@h:1,redis://h:2");
    mask_is("redis://:secret@", "redis://:***@");
    mask_is("", "");
    /* Truncated to the buffer, NUL-terminated, never a password byte. */
    cluster_mask_urls(small, sizeof(small), "redis://:secret@h:1");
    assert_string_equal(small, "redis://:**");
    assert_int_equal(cluster_mask_urls(small, 0, "redis://:secret@h:1"), 0);
}

static config_result_t config(gale_config_t *c, char **env, int argc, char **argv, char *err,
                              size_t cap)
{
    FILE *f = fmemopen(err, cap, "w");
    char *args[16] = {"gale-broker"};
    assert_non_null(f);
    for (int i = 0; i < argc && i < 15; i++)
        args[i + 1] = argv[i];
    config_defaults(c);
    config_result_t r = config_parse(c, argc + 1, args, env, f, f);
    fclose(f);
    return r;
}

static void test_config(void **state)
{
    gale_config_t c;
    char err[16384];
    (void)state;
    {
        char *env[] = {"GALE_REDIS_URL=redis://gale@127.0.0.1:6379", "GALE_REDIS_PASSWORD=fromenv",
                       NULL};
        assert_int_equal(config(&c, env, 0, NULL, err, sizeof(err)), CONFIG_RUN);
        assert_string_equal(c.redis_password, "fromenv");
        assert_string_equal(c.redis_urls, "redis://gale@127.0.0.1:6379");
    }
    {
        /* The flag wins, and may come after the URL. */
        char *env[] = {"GALE_REDIS_PASSWORD=fromenv", NULL};
        char *argv[] = {"--redis", "redis://gale@h:1", "--redis-password", "flag"};
        assert_int_equal(config(&c, env, 4, argv, err, sizeof(err)), CONFIG_RUN);
        assert_string_equal(c.redis_password, "flag");
    }
    {
        /* USER@ without any password: a usage error. */
        char *env[] = {NULL};
        char *argv[] = {"--redis", "redis://gale@h:1"};
        assert_int_equal(config(&c, env, 2, argv, err, sizeof(err)), CONFIG_ERROR);
        assert_non_null(strstr(err, "--redis-password"));
    }
    {
        /* A bad URL is quoted with its password masked. */
        char *env[] = {NULL};
        char *argv[] = {"--redis", "redis://u:hunter2@h:1,redis://:hunter2@g"};
        assert_int_equal(config(&c, env, 2, argv, err, sizeof(err)), CONFIG_ERROR);
        assert_null(strstr(err, "hunter2"));
        assert_non_null(strstr(err, "redis://u:***@h:1,redis://:***@g"));
        char *argv2[] = {"--redis", "redis://:hun%zzter2@h:1"};
        assert_int_equal(config(&c, env, 2, argv2, err, sizeof(err)), CONFIG_ERROR);
        assert_null(strstr(err, "hun"));
        assert_non_null(strstr(err, "bad credentials"));
    }
    {
        /* --help documents the forms and the variable. */
        char *env[] = {NULL};
        char *argv[] = {"--help"};
        assert_int_equal(config(&c, env, 1, argv, err, sizeof(err)), CONFIG_EXIT);
        assert_non_null(strstr(err, "redis://[[USER]:PASSWORD@]HOST:PORT[/DB]"));
        assert_non_null(strstr(err, "--redis-password PASSWORD"));
        assert_non_null(strstr(err, "[GALE_REDIS_PASSWORD]"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_password_only),    cmocka_unit_test(test_user_and_password),
        cmocka_unit_test(test_percent_decoding), cmocka_unit_test(test_bad_credentials),
        cmocka_unit_test(test_set_password),     cmocka_unit_test(test_mask),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
