/*
 * Fuzzes the client-address code of --max-connections-per-ip and --trusted-proxies
 * (broker/netaddr.c, broker/iplimit.c). The first byte picks a mode:
 *
 *   even: "TRUSTED\nPEER\nX-FORWARDED-FOR": the trusted list is parsed (netaddr_parse_list,
 *         checked against netaddr_parse_prefix item by item), and netaddr_client's pick is
 *         checked against a reference written here that splits the whole header first;
 *         every address and prefix met also goes through format/parse round trips.
 *   odd:  a sequence of acquire/release operations on an iplimit table over up to 65536
 *         addresses, checked against a model of the counts.
 *
 * The X-Forwarded-For bytes are copied to a buffer of their exact size, so a read past
 * xff_len is caught by ASan.
 */
#include "iplimit.h"
#include "netaddr.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "check failed: %s (line %d)\n", #c, __LINE__);                         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void roundtrip(const netaddr_t *a)
{
    char text[NETADDR_TEXT_MAX];
    netaddr_t b;
    netaddr_format(a, text);
    CHECK(netaddr_parse(text, strlen(text), &b));
    CHECK(memcmp(a->b, b.b, 16) == 0);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

static bool digits_port(const char *p, size_t n)
{
    if (n == 0 || n > 5)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    return v <= 65535;
}

/* Reference item parser: an address; [v6] or [v6]:port; a.b.c.d:port (split at the last
 * colon). */
static bool ref_item(const char *s, size_t n, netaddr_t *out)
{
    if (netaddr_parse(s, n, out))
        return true;
    if (n >= 2 && s[0] == '[') {
        size_t close = 1;
        while (close < n && s[close] != ']')
            close++;
        if (close == n || !netaddr_parse(s + 1, close - 1, out) || netaddr_is_v4(out))
            return false;
        return close + 1 == n || (s[close + 1] == ':' && digits_port(s + close + 2, n - close - 2));
    }
    size_t colon = n;
    while (colon > 0 && s[colon - 1] != ':')
        colon--;
    if (colon == 0)
        return false;
    return digits_port(s + colon, n - colon) && netaddr_parse(s, colon - 1, out) &&
           netaddr_is_v4(out) && memchr(s, '.', colon - 1);
}

#define MAX_ITEMS 4096

static void mode_client(const char *in, size_t size)
{
    const char *nl1 = memchr(in, '\n', size);
    if (!nl1)
        return;
    const char *nl2 = memchr(nl1 + 1, '\n', size - (size_t)(nl1 + 1 - in));
    if (!nl2)
        return;
    size_t tlen = (size_t)(nl1 - in), plen = (size_t)(nl2 - nl1 - 1);
    size_t xlen = size - (size_t)(nl2 + 1 - in);

    /* The trusted list: NUL-terminated, no NUL inside. */
    char *tl = malloc(tlen + 1);
    memcpy(tl, in, tlen);
    tl[tlen] = '\0';
    if (strlen(tl) != tlen) {
        free(tl);
        return;
    }
    const char *why = NULL;
    size_t off = 0, blen = 0;
    int n = netaddr_parse_list(tl, NULL, 0, &why, &off, &blen);
    netaddr_prefix_t *trusted = NULL;
    if (n > 0) {
        trusted = calloc((size_t)n, sizeof(*trusted));
        CHECK(netaddr_parse_list(tl, trusted, (size_t)n, &why, &off, &blen) == n);
        for (int i = 0; i < n; i++) {
            CHECK(trusted[i].bits <= 128);
            CHECK(netaddr_prefix_contains(&trusted[i], &trusted[i].addr));
            roundtrip(&trusted[i].addr);
        }
    } else {
        CHECK(n == -1 && why && off + blen <= tlen);
        n = 0;
    }
    free(tl);

    netaddr_t peer;
    if (!netaddr_parse(nl1 + 1, plen, &peer))
        memset(&peer, 0, sizeof(peer));
    roundtrip(&peer);
    netaddr_prefix_t pp;
    if (!netaddr_parse_prefix(nl1 + 1, plen, &pp)) {
        CHECK(pp.bits <= 128 && netaddr_prefix_contains(&pp, &pp.addr));
        roundtrip(&pp.addr);
    }

    char *xff = xlen ? malloc(xlen) : NULL;
    if (xlen)
        memcpy(xff, nl2 + 1, xlen);
    netaddr_t out;
    netaddr_source_t src = netaddr_client(&peer, trusted, (size_t)n, xff, xlen, &out);

    /* The reference: split everything, then walk from the right. */
    netaddr_source_t want = NETADDR_FROM_NO_XFF;
    netaddr_t want_addr = peer;
    if (!netaddr_list_contains(trusted, (size_t)n, &peer)) {
        want = NETADDR_FROM_PEER;
    } else if (xff) {
        static size_t starts[MAX_ITEMS + 1], ends[MAX_ITEMS + 1];
        size_t items = 0;
        bool overflow = false;
        for (size_t i = 0, st = 0; i <= xlen; i++) {
            if (i == xlen || xff[i] == ',') {
                size_t a = st, e = i;
                while (a < e && is_space(xff[a]))
                    a++;
                while (e > a && is_space(xff[e - 1]))
                    e--;
                if (a < e) {
                    if (items == MAX_ITEMS) {
                        overflow = true;
                        break;
                    }
                    starts[items] = a;
                    ends[items] = e;
                    items++;
                }
                st = i + 1;
            }
        }
        if (overflow) {
            free(xff);
            free(trusted);
            return;
        }
        for (size_t k = items; k-- > 0;) {
            netaddr_t a;
            if (!ref_item(xff + starts[k], ends[k] - starts[k], &a)) {
                want = NETADDR_FROM_BAD_XFF;
                want_addr = peer;
                break;
            }
            want_addr = a;
            if (!netaddr_list_contains(trusted, (size_t)n, &a)) {
                want = NETADDR_FROM_XFF;
                break;
            }
            want = NETADDR_FROM_XFF_FIRST;
        }
    }
    if (src != want || memcmp(out.b, want_addr.b, 16) != 0) {
        fprintf(stderr, "netaddr_client: source %d, want %d\n", (int)src, (int)want);
        abort();
    }
    roundtrip(&out);
    if (src == NETADDR_FROM_XFF)
        CHECK(!netaddr_list_contains(trusted, (size_t)n, &out));
    free(xff);
    free(trusted);
}

static void mode_table(const uint8_t *in, size_t size)
{
    enum { MAXHELD = 4096 };
    static uint32_t count[65536];
    static iplimit_entry_t *held[MAXHELD];
    static uint16_t held_id[MAXHELD];
    size_t nheld = 0;
    uint32_t max = size ? (uint32_t)(in[0] % 4) + 1 : 1;
    iplimit_t *t = iplimit_new(max);
    CHECK(t);
    memset(count, 0, sizeof(count));
    uint32_t addresses = 0;
    for (size_t i = 1; i + 2 < size; i += 3) {
        uint16_t id = (uint16_t)(in[i + 1] << 8 | in[i + 2]);
        netaddr_t a = {{0}};
        a.b[0] = 0x20;
        a.b[14] = (uint8_t)(id >> 8);
        a.b[15] = (uint8_t)id;
        if ((in[i] & 3) != 0 || nheld == 0) { /* acquire */
            if (nheld == MAXHELD)
                continue;
            bool full;
            CHECK(iplimit_full(t, &a) == (count[id] >= max));
            iplimit_entry_t *e = iplimit_acquire(t, &a, &full);
            if (count[id] >= max) {
                CHECK(!e && full);
                continue;
            }
            CHECK(e && !full && memcmp(e->addr.b, a.b, 16) == 0);
            if (count[id]++ == 0)
                addresses++;
            CHECK(e->count == count[id]);
            held[nheld] = e;
            held_id[nheld++] = id;
        } else { /* release one held, picked by the id bytes */
            size_t k = id % nheld;
            uint16_t hid = held_id[k];
            iplimit_release(t, held[k]);
            held[k] = held[--nheld];
            held_id[k] = held_id[nheld];
            if (--count[hid] == 0)
                addresses--;
            netaddr_t h = {{0}};
            h.b[0] = 0x20;
            h.b[14] = (uint8_t)(hid >> 8);
            h.b[15] = (uint8_t)hid;
            iplimit_entry_t *e = iplimit_find(t, &h);
            CHECK(count[hid] ? e && e->count == count[hid] : e == NULL);
        }
        CHECK(iplimit_addresses(t) == addresses);
        CHECK(iplimit_connections(t) == nheld);
    }
    iplimit_free(t); /* with whatever is still held: LeakSanitizer checks */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] % 2 == 0)
        mode_client((const char *)data + 1, size - 1);
    else
        mode_table(data + 1, size - 1);
    return 0;
}
