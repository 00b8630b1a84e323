/*
 * Unit tests of client addresses (netaddr.c: addresses, prefixes, --trusted-proxies lists,
 * the X-Forwarded-For pick), the per-address connection table (iplimit.c), and the
 * validation of --trusted-proxies and --max-connections-per-ip (config.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "config.h"
#include "iplimit.h"
#include "netaddr.h"

static netaddr_t addr(const char *s)
{
    netaddr_t a;
    if (!netaddr_parse(s, strlen(s), &a))
        fail_msg("not an address: %s", s);
    return a;
}

static bool parses(const char *s)
{
    netaddr_t a;
    return netaddr_parse(s, strlen(s), &a);
}

static void assert_text(const netaddr_t *a, const char *want)
{
    char text[NETADDR_TEXT_MAX];
    netaddr_format(a, text);
    assert_string_equal(text, want);
}

static void test_parse_addresses(void **state)
{
    (void)state;
    netaddr_t a = addr("192.0.2.7");
    static const uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7};
    assert_memory_equal(a.b, mapped, 16);
    assert_true(netaddr_is_v4(&a));
    assert_text(&a, "192.0.2.7");

    /* An IPv4-mapped IPv6 address is the IPv4 address. */
    netaddr_t m = addr("::ffff:192.0.2.7");
    assert_memory_equal(m.b, a.b, 16);
    assert_true(netaddr_is_v4(&m));
    m = addr("::FFFF:c000:0207");
    assert_memory_equal(m.b, a.b, 16);

    netaddr_t v6 = addr("2001:DB8::1");
    assert_false(netaddr_is_v4(&v6));
    assert_text(&v6, "2001:db8::1");
    assert_text(&(netaddr_t){{0}}, "::");
    assert_true(parses("::"));
    assert_true(parses("::1"));
    assert_true(parses("0.0.0.0"));
    assert_true(parses("255.255.255.255"));
    assert_true(parses("1:2:3:4:5:6:7:8"));
    assert_true(parses("1:2:3:4:5:6:1.2.3.4"));
    assert_true(parses("fe80::1"));

    const char *bad[] = {"",
                         "1.2.3",
                         "1.2.3.4.5",
                         "256.1.1.1",
                         "01.2.3.4",
                         "1.2.3.4 ",
                         " 1.2.3.4",
                         "1.2.3.-4",
                         "1.2.3.4/8",
                         "[::1]",
                         "fe80::1%eth0",
                         "1::2::3",
                         "1:2:3:4:5:6:7:8:9",
                         ":::",
                         "12345::",
                         "::g",
                         "localhost",
                         "unknown",
                         "1.2.3.4:80",
                         "0x7f.0.0.1",
                         "0000:0000:0000:0000:0000:0000:0000:0000:0"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (parses(bad[i]))
            fail_msg("parsed: '%s'", bad[i]);
    /* Not NUL-terminated: exactly len bytes are read; an embedded NUL is refused. */
    netaddr_t t;
    assert_true(netaddr_parse("10.0.0.1xyz", 8, &t));
    assert_text(&t, "10.0.0.1");
    assert_false(netaddr_parse("10.0\0.0.1", 9, &t));
    char longer[100];
    memset(longer, '1', sizeof(longer));
    assert_false(netaddr_parse(longer, sizeof(longer), &t));
}

static void test_from_sockaddr(void **state)
{
    (void)state;
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(80)};
    inet_pton(AF_INET, "127.0.0.3", &in.sin_addr);
    netaddr_t a;
    assert_true(netaddr_from_sockaddr((struct sockaddr *)&in, &a));
    assert_text(&a, "127.0.0.3");
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "::ffff:127.0.0.3", &in6.sin6_addr);
    netaddr_t b;
    assert_true(netaddr_from_sockaddr((struct sockaddr *)&in6, &b));
    assert_memory_equal(a.b, b.b, 16); /* a dual-stack socket's peer compares as IPv4 */
    inet_pton(AF_INET6, "2001:db8::5", &in6.sin6_addr);
    assert_true(netaddr_from_sockaddr((struct sockaddr *)&in6, &b));
    assert_text(&b, "2001:db8::5");
    struct sockaddr un = {.sa_family = AF_UNIX};
    assert_false(netaddr_from_sockaddr(&un, &b));
}

static netaddr_prefix_t prefix(const char *s)
{
    netaddr_prefix_t p;
    const char *why = netaddr_parse_prefix(s, strlen(s), &p);
    if (why)
        fail_msg("%s: %s", s, why);
    return p;
}

static bool in(const char *pfx, const char *a)
{
    netaddr_prefix_t p = prefix(pfx);
    netaddr_t x = addr(a);
    return netaddr_prefix_contains(&p, &x);
}

static void test_prefixes(void **state)
{
    (void)state;
    netaddr_prefix_t p = prefix("10.0.0.0/8");
    assert_int_equal(p.bits, 104);
    assert_true(in("10.0.0.0/8", "10.255.1.2"));
    assert_false(in("10.0.0.0/8", "11.0.0.0"));
    assert_false(in("10.0.0.0/8", "::a00:1")); /* IPv4-compatible is not IPv4 */
    assert_true(in("10.0.0.0/8", "::ffff:10.9.9.9"));
    assert_true(in("192.0.2.7", "192.0.2.7"));
    assert_false(in("192.0.2.7", "192.0.2.8"));
    assert_true(in("192.0.2.7/32", "192.0.2.7"));
    assert_true(in("172.16.0.0/12", "172.31.255.255"));
    assert_false(in("172.16.0.0/12", "172.32.0.0"));
    assert_true(in("0.0.0.0/0", "203.0.113.9"));
    assert_false(in("0.0.0.0/0", "2001:db8::1")); /* IPv4 /0 is every IPv4 address only */
    assert_true(in("::/0", "2001:db8::1"));
    assert_true(in("::/0", "203.0.113.9"));
    assert_true(in("fd00::/8", "fdab::1"));
    assert_false(in("fd00::/8", "fe00::1"));
    assert_true(in("2001:db8::/33", "2001:db8:7fff::1"));
    assert_false(in("2001:db8::/33", "2001:db8:8000::1"));
    assert_true(in("::1", "::1"));
    assert_true(in("::1/128", "::1"));
    assert_true(in("::ffff:10.0.0.0/104", "10.1.1.1")); /* the mapped form of 10.0.0.0/8 */

    /* Host bits past the prefix are cleared. */
    p = prefix("10.1.2.3/8");
    assert_text(&p.addr, "10.0.0.0");
    assert_true(in("10.1.2.3/8", "10.200.0.1"));
    p = prefix("2001:db8::ffff/120");
    assert_text(&p.addr, "2001:db8::ff00");
    p = prefix("10.1.2.3/0");
    assert_int_equal(p.bits, 96);
    assert_text(&p.addr, "0.0.0.0");

    const char *bad[] = {"10.0.0.0/33",  "::/129",      "10.0.0.0/",    "10.0.0.0/-1",
                         "10.0.0.0/8/8", "10.0.0.0/ 8", "10.0.0.0/0x8", "10.0.0.0/1000",
                         "/8",           "10.0.0/8",    "host/8",       "[::1]/128"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        netaddr_prefix_t q;
        if (!netaddr_parse_prefix(bad[i], strlen(bad[i]), &q))
            fail_msg("parsed: '%s'", bad[i]);
    }
    netaddr_prefix_t q;
    assert_string_equal(netaddr_parse_prefix("10.0.0.0/33", 11, &q),
                        "the prefix length is not a number from 0 to 32");
    assert_string_equal(netaddr_parse_prefix("::/129", 6, &q),
                        "the prefix length is not a number from 0 to 128");
    assert_string_equal(netaddr_parse_prefix("nope", 4, &q), "not an IPv4 or IPv6 address");
}

static void test_lists(void **state)
{
    (void)state;
    netaddr_prefix_t l[8];
    const char *why = NULL;
    size_t off = 99, len = 99;
    assert_int_equal(netaddr_parse_list("10.0.0.0/8", l, 8, &why, &off, &len), 1);
    assert_int_equal(
        netaddr_parse_list(" 10.0.0.0/8 , 192.0.2.7,fd00::/8,,\t::1 ,", l, 8, &why, &off, &len), 4);
    assert_int_equal(l[1].bits, 128);
    netaddr_t a = addr("192.0.2.7");
    assert_true(netaddr_list_contains(l, 4, &a));
    a = addr("192.0.2.8");
    assert_false(netaddr_list_contains(l, 4, &a));
    a = addr("::1");
    assert_true(netaddr_list_contains(l, 4, &a));
    assert_false(netaddr_list_contains(l, 3, &a));
    assert_false(netaddr_list_contains(NULL, 0, &a));

    /* Counting only, and more items than room. */
    assert_int_equal(netaddr_parse_list("1.1.1.1,2.2.2.2,3.3.3.3", NULL, 0, &why, &off, &len), 3);
    assert_int_equal(netaddr_parse_list("1.1.1.1,2.2.2.2,3.3.3.3", l, 2, &why, &off, &len), 3);
    assert_text(&l[1].addr, "2.2.2.2");

    const char *s = "10.0.0.0/8, 10.0.0.300 ,fd00::/8";
    assert_int_equal(netaddr_parse_list(s, l, 8, &why, &off, &len), -1);
    assert_string_equal(why, "not an IPv4 or IPv6 address");
    assert_int_equal(off, 12);
    assert_int_equal(len, 10);
    s = "10.0.0.0/8;192.0.2.1";
    assert_int_equal(netaddr_parse_list(s, l, 8, &why, &off, &len), -1);
    assert_int_equal(off, 0);
    assert_int_equal(len, strlen(s));
    assert_int_equal(netaddr_parse_list("", l, 8, &why, &off, &len), -1);
    assert_string_equal(why, "no address");
    assert_int_equal(netaddr_parse_list(" , ,", l, 8, &why, &off, &len), -1);
    assert_string_equal(why, "no address");
    assert_int_equal(netaddr_parse_list("::/200", l, 8, &why, &off, &len), -1);
    assert_string_equal(why, "the prefix length is not a number from 0 to 128");
}

/* netaddr_client with trusted list `trusted`, peer and X-Forwarded-For xff (NULL: none);
 * checks the source and the address picked. */
static void pick(const char *trusted, const char *peer, const char *xff, netaddr_source_t want_src,
                 const char *want)
{
    netaddr_prefix_t l[16];
    const char *why;
    size_t off, len;
    int n = trusted ? netaddr_parse_list(trusted, l, 16, &why, &off, &len) : 0;
    assert_true(n >= 0);
    netaddr_t p = addr(peer), out;
    netaddr_source_t src = netaddr_client(&p, l, (size_t)n, xff, xff ? strlen(xff) : 0, &out);
    char text[NETADDR_TEXT_MAX];
    netaddr_format(&out, text);
    if (src != want_src || strcmp(text, want) != 0)
        fail_msg("trusted '%s', peer %s, X-Forwarded-For '%s': got %s (source %d), want %s "
                 "(source %d)",
                 trusted ? trusted : "", peer, xff ? xff : "(none)", text, (int)src, want,
                 (int)want_src);
}

static void test_xff(void **state)
{
    (void)state;
    const char *T = "10.0.0.0/8,fd00::/8";
    /* A peer that is not a trusted proxy: its header is never read. */
    pick(NULL, "203.0.113.9", "198.51.100.1", NETADDR_FROM_PEER, "203.0.113.9");
    pick(T, "203.0.113.9", "198.51.100.1", NETADDR_FROM_PEER, "203.0.113.9");
    pick(T, "203.0.113.9", "10.0.0.5", NETADDR_FROM_PEER, "203.0.113.9");
    pick(T, "11.0.0.1", "198.51.100.1", NETADDR_FROM_PEER, "11.0.0.1");

    /* A trusted proxy: the right-most address that is not a trusted proxy. */
    pick(T, "10.0.0.2", "198.51.100.1", NETADDR_FROM_XFF, "198.51.100.1");
    pick(T, "10.0.0.2", "198.51.100.1, 10.1.1.1", NETADDR_FROM_XFF, "198.51.100.1");
    pick(T, "10.0.0.2", "198.51.100.1,10.1.1.1,10.2.2.2", NETADDR_FROM_XFF, "198.51.100.1");
    /* What the client wrote itself (left of the proxy's entry) is never read. */
    pick(T, "10.0.0.2", "1.2.3.4, 198.51.100.1", NETADDR_FROM_XFF, "198.51.100.1");
    pick(T, "10.0.0.2", "garbage, 198.51.100.1", NETADDR_FROM_XFF, "198.51.100.1");
    pick(T, "10.0.0.2", "10.9.9.9, 198.51.100.1", NETADDR_FROM_XFF, "198.51.100.1");
    /* A peer over a dual-stack socket is the IPv4 proxy. */
    pick(T, "::ffff:10.0.0.2", "198.51.100.1", NETADDR_FROM_XFF, "198.51.100.1");
    pick(T, "fd00::2", "2001:db8::7", NETADDR_FROM_XFF, "2001:db8::7");
    pick(T, "fd00::2", "2001:db8::7, fd12::1", NETADDR_FROM_XFF, "2001:db8::7");
    pick(T, "10.0.0.2", "::ffff:198.51.100.1", NETADDR_FROM_XFF, "198.51.100.1");
    pick(T, "10.0.0.2", "::ffff:10.1.1.1, 192.0.2.1, ::ffff:10.2.2.2", NETADDR_FROM_XFF,
         "192.0.2.1");

    /* Items with ports and brackets, spaces and tabs, empty items. */
    pick(T, "10.0.0.2", "198.51.100.1:4711", NETADDR_FROM_XFF, "198.51.100.1");
    pick(T, "10.0.0.2", "[2001:db8::1]", NETADDR_FROM_XFF, "2001:db8::1");
    pick(T, "10.0.0.2", "[2001:db8::1]:443", NETADDR_FROM_XFF, "2001:db8::1");
    pick(T, "10.0.0.2", " \t198.51.100.1 \t", NETADDR_FROM_XFF, "198.51.100.1");
    pick(T, "10.0.0.2", "198.51.100.1, , 10.1.1.1,", NETADDR_FROM_XFF, "198.51.100.1");
    pick(T, "10.0.0.2", "198.51.100.1,10.1.1.1:80,[fd00::9]:1", NETADDR_FROM_XFF, "198.51.100.1");

    /* Every address trusted: the left-most. */
    pick(T, "10.0.0.2", "10.3.3.3, 10.1.1.1", NETADDR_FROM_XFF_FIRST, "10.3.3.3");
    pick(T, "10.0.0.2", "fd00::1", NETADDR_FROM_XFF_FIRST, "fd00::1");

    /* No header, an empty one: the peer. */
    pick(T, "10.0.0.2", NULL, NETADDR_FROM_NO_XFF, "10.0.0.2");
    pick(T, "10.0.0.2", "", NETADDR_FROM_NO_XFF, "10.0.0.2");
    pick(T, "10.0.0.2", " , ,\t", NETADDR_FROM_NO_XFF, "10.0.0.2");

    /* A malformed item where the walk reads it: the peer. */
    const char *bad[] = {"unknown",
                         "198.51.100.1 garbage",
                         "198.51.100.1, 10.1.1.1 x",
                         "198.51.100.1;10.1.1.1",
                         "_hidden",
                         "198.51.100.1:",
                         "198.51.100.1:65536",
                         "198.51.100.1:123456",
                         "198.51.100.1:8a",
                         "[198.51.100.1]",
                         "[2001:db8::1",
                         "[2001:db8::1]x",
                         "[2001:db8::1]:",
                         "2001:db8::1:80:90:1:2:3:4",
                         "fe80::1%eth0",
                         "\"198.51.100.1\"",
                         "for=198.51.100.1",
                         "198.51.100.1:80:90",
                         "10.1.1.1, 999.1.1.1",
                         "1.2.3.4,10.1.1.1,bogus"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        pick(T, "10.0.0.2", bad[i], NETADDR_FROM_BAD_XFF, "10.0.0.2");
    /* ... but one left of the chosen address is never reached. */
    pick(T, "10.0.0.2", "bogus, 10.3.3.3, 198.51.100.1", NETADDR_FROM_XFF, "198.51.100.1");

    /* Not NUL-terminated: only xff_len bytes are read. */
    netaddr_prefix_t l[1];
    const char *why;
    size_t off, len;
    assert_int_equal(netaddr_parse_list("10.0.0.0/8", l, 1, &why, &off, &len), 1);
    netaddr_t p = addr("10.0.0.2"), out;
    assert_int_equal(netaddr_client(&p, l, 1, "198.51.100.1, 203.0.113.5", 12, &out),
                     NETADDR_FROM_XFF);
    assert_text(&out, "198.51.100.1");
    /* A long header: a walk over every item. */
    size_t cap = 4096;
    char *big = malloc(cap);
    assert_non_null(big);
    size_t used = 0;
    while (used + 12 < cap - 32)
        used += (size_t)sprintf(big + used, "10.1.1.%d, ", (int)(used % 200));
    used += (size_t)sprintf(big + used, "10.1.2.3");
    assert_int_equal(netaddr_client(&p, l, 1, big, used, &out), NETADDR_FROM_XFF_FIRST);
    assert_text(&out, "10.1.1.0");
    used += (size_t)sprintf(big + used, ", 192.0.2.99");
    assert_int_equal(netaddr_client(&p, l, 1, big, used, &out), NETADDR_FROM_XFF);
    assert_text(&out, "192.0.2.99");
    free(big);
}

static void test_iplimit(void **state)
{
    (void)state;
    iplimit_t *t = iplimit_new(2);
    assert_non_null(t);
    netaddr_t a = addr("127.0.0.2"), b = addr("127.0.0.3"), am = addr("::ffff:127.0.0.2");
    bool full = true;
    iplimit_entry_t *a1 = iplimit_acquire(t, &a, &full);
    assert_non_null(a1);
    assert_false(full);
    assert_false(iplimit_full(t, &a));
    iplimit_entry_t *a2 = iplimit_acquire(t, &am, &full); /* the same address */
    assert_ptr_equal(a1, a2);
    assert_int_equal(a1->count, 2);
    assert_true(iplimit_full(t, &a));
    assert_null(iplimit_acquire(t, &a, &full));
    assert_true(full);
    assert_int_equal(a1->count, 2);
    iplimit_entry_t *b1 = iplimit_acquire(t, &b, &full);
    assert_non_null(b1);
    assert_int_equal(iplimit_addresses(t), 2);
    assert_int_equal(iplimit_connections(t), 3);
    assert_ptr_equal(iplimit_find(t, &a), a1);

    /* A slot given back lets one more in; an address at zero is forgotten. */
    iplimit_release(t, a1);
    assert_false(iplimit_full(t, &a));
    a1 = iplimit_acquire(t, &a, &full);
    assert_non_null(a1);
    iplimit_release(t, a1);
    iplimit_release(t, a1);
    assert_null(iplimit_find(t, &a));
    assert_int_equal(iplimit_addresses(t), 1);
    iplimit_release(t, b1);
    assert_int_equal(iplimit_addresses(t), 0);
    assert_int_equal(iplimit_connections(t), 0);

    /* Many addresses: the table grows, then shrinks, and finds every one. */
    enum { N = 5000 };
    iplimit_entry_t **held = calloc(N, sizeof(*held));
    assert_non_null(held);
    for (int i = 0; i < N; i++) {
        netaddr_t x = {{0}};
        x.b[0] = 0x20;
        x.b[1] = 0x01;
        x.b[14] = (uint8_t)(i >> 8);
        x.b[15] = (uint8_t)i;
        held[i] = iplimit_acquire(t, &x, &full);
        assert_non_null(held[i]);
        assert_ptr_equal(iplimit_acquire(t, &x, &full), held[i]);
        assert_null(iplimit_acquire(t, &x, &full));
        assert_true(full);
    }
    assert_int_equal(iplimit_addresses(t), N);
    assert_int_equal(iplimit_connections(t), 2 * N);
    for (int i = 0; i < N; i++) {
        netaddr_t x = held[i]->addr;
        assert_ptr_equal(iplimit_find(t, &x), held[i]);
        iplimit_release(t, held[i]);
        if (i % 2) {
            iplimit_release(t, held[i]);
            assert_null(iplimit_find(t, &x));
        }
    }
    assert_int_equal(iplimit_addresses(t), N / 2);
    for (int i = 0; i < N; i += 2) {
        netaddr_t x = held[i]->addr;
        assert_ptr_equal(iplimit_find(t, &x), held[i]);
        iplimit_release(t, held[i]);
    }
    assert_int_equal(iplimit_addresses(t), 0);
    free(held);

    /* Left-over entries are freed with the table (the sanitizer checks). */
    assert_non_null(iplimit_acquire(t, &a, &full));
    iplimit_free(t);
    iplimit_free(NULL);
}

static void test_refusal_log_interval(void **state)
{
    (void)state;
    iplimit_t *t = iplimit_new(1);
    netaddr_t a = addr("127.0.0.2");
    bool full;
    iplimit_entry_t *e = iplimit_acquire(t, &a, &full);
    uint32_t n = 99;
    assert_true(iplimit_refused(e, 1000, 60000, &n)); /* the first is logged */
    assert_int_equal(n, 0);
    for (int i = 0; i < 500; i++)
        assert_false(iplimit_refused(e, 1000 + (uint64_t)i * 100, 60000, &n));
    assert_true(iplimit_refused(e, 61000, 60000, &n));
    assert_int_equal(n, 500);
    assert_false(iplimit_refused(e, 61001, 60000, &n));
    assert_true(iplimit_refused(e, 200000, 60000, &n));
    assert_int_equal(n, 1);
    iplimit_release(t, e);
    iplimit_free(t);
}

static FILE *sink;

static config_result_t parse2(gale_config_t *c, char **env, const char *flag, const char *value)
{
    char *argv[] = {"gale-broker", (char *)flag, (char *)value, NULL};
    config_defaults(c);
    return config_parse(c, flag ? 3 : 1, argv, env, sink, sink);
}

static void test_config(void **state)
{
    (void)state;
    static gale_config_t c; /* large */
    char *none[] = {NULL};
    assert_int_equal(parse2(&c, none, NULL, NULL), CONFIG_RUN);
    assert_int_equal(c.max_connections_per_ip, 0);
    assert_string_equal(c.trusted_proxies, "");
    assert_int_equal(parse2(&c, none, "--max-connections-per-ip", "10"), CONFIG_RUN);
    assert_int_equal(c.max_connections_per_ip, 10);
    assert_int_equal(parse2(&c, none, "--max-connections-per-ip", "-1"), CONFIG_ERROR);
    assert_int_equal(parse2(&c, none, "--max-connections-per-ip", "1000001"), CONFIG_ERROR);
    assert_int_equal(parse2(&c, none, "--max-connections-per-ip", "x"), CONFIG_ERROR);
    char *env[] = {"GALE_MAX_CONNECTIONS_PER_IP=7", "GALE_TRUSTED_PROXIES=10.0.0.0/8, ::1", NULL};
    assert_int_equal(parse2(&c, env, NULL, NULL), CONFIG_RUN);
    assert_int_equal(c.max_connections_per_ip, 7);
    assert_string_equal(c.trusted_proxies, "10.0.0.0/8, ::1");
    assert_int_equal(parse2(&c, env, "--trusted-proxies", "192.0.2.1"), CONFIG_RUN);
    assert_string_equal(c.trusted_proxies, "192.0.2.1");

    const char *bad[] = {"",
                         ",",
                         "10.0.0.0/33",
                         "::/129",
                         "proxy.example",
                         "10.0.0.1;10.0.0.2",
                         "[::1]",
                         "10.0.0.0/8,,nope"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (parse2(&c, none, "--trusted-proxies", bad[i]) != CONFIG_ERROR)
            fail_msg("accepted --trusted-proxies '%s'", bad[i]);
    char *bad_env[] = {"GALE_TRUSTED_PROXIES=10.0.0.300", NULL};
    assert_int_equal(parse2(&c, bad_env, NULL, NULL), CONFIG_ERROR);

    /* The message names the flag and the bad item. */
    char buf[512] = "";
    FILE *err = fmemopen(buf, sizeof(buf), "w");
    char *argv[] = {"gale-broker", "--trusted-proxies", "10.0.0.0/8, 10.0.0.0/40", NULL};
    config_defaults(&c);
    assert_int_equal(config_parse(&c, 3, argv, none, err, err), CONFIG_ERROR);
    fclose(err);
    assert_non_null(strstr(buf, "--trusted-proxies: '10.0.0.0/40': the prefix length is not a "
                                "number from 0 to 32"));
}

int main(void)
{
    sink = fopen("/dev/null", "w");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_addresses),
        cmocka_unit_test(test_from_sockaddr),
        cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_xff),
        cmocka_unit_test(test_iplimit),
        cmocka_unit_test(test_refusal_log_interval),
        cmocka_unit_test(test_config),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    fclose(sink);
    return rc;
}
