#include "netaddr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

bool netaddr_is_v4(const netaddr_t *a)
{
    return memcmp(a->b, v4_mapped, sizeof(v4_mapped)) == 0;
}

bool netaddr_parse(const char *s, size_t len, netaddr_t *out)
{
    char text[NETADDR_TEXT_MAX];
    if (len == 0 || len >= sizeof(text))
        return false;
    bool colon = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == ':')
            colon = true;
        else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                   c == '.'))
            return false; /* no NUL, zone, space or bracket reaches inet_pton */
    }
    memcpy(text, s, len);
    text[len] = '\0';
    if (colon)
        return inet_pton(AF_INET6, text, out->b) == 1;
    uint8_t v4[4];
    if (inet_pton(AF_INET, text, v4) != 1) /* glibc: exactly a.b.c.d, no leading zeros */
        return false;
    memcpy(out->b, v4_mapped, sizeof(v4_mapped));
    memcpy(out->b + 12, v4, 4);
    return true;
}

bool netaddr_from_sockaddr(const struct sockaddr *sa, netaddr_t *out)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        memcpy(out->b, v4_mapped, sizeof(v4_mapped));
        memcpy(out->b + 12, &in->sin_addr, 4);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        memcpy(out->b, &in6->sin6_addr, 16);
        return true;
    }
    return false;
}

void netaddr_format(const netaddr_t *a, char buf[NETADDR_TEXT_MAX])
{
    const char *ok = netaddr_is_v4(a) ? inet_ntop(AF_INET, a->b + 12, buf, NETADDR_TEXT_MAX)
                                      : inet_ntop(AF_INET6, a->b, buf, NETADDR_TEXT_MAX);
    if (!ok)
        strcpy(buf, "?");
}

const char *netaddr_parse_prefix(const char *s, size_t len, netaddr_prefix_t *out)
{
    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t)(slash - s) : len;
    netaddr_t a;
    if (!netaddr_parse(s, alen, &a))
        return "not an IPv4 or IPv6 address";
    bool v4 = !memchr(s, ':', alen); /* written as IPv4: BITS counts its 32 bits */
    unsigned max = v4 ? 32 : 128, bits = max;
    if (slash) {
        const char *p = slash + 1, *end = s + len;
        if (p == end || end - p > 3)
            return v4 ? "the prefix length is not a number from 0 to 32"
                      : "the prefix length is not a number from 0 to 128";
        bits = 0;
        for (; p < end; p++) {
            if (*p < '0' || *p > '9')
                return v4 ? "the prefix length is not a number from 0 to 32"
                          : "the prefix length is not a number from 0 to 128";
            bits = bits * 10 + (unsigned)(*p - '0');
        }
        if (bits > max)
            return v4 ? "the prefix length is not a number from 0 to 32"
                      : "the prefix length is not a number from 0 to 128";
    }
    unsigned total = v4 ? 96 + bits : bits;
    for (unsigned i = 0; i < 16; i++) {
        unsigned keep = total >= (i + 1) * 8 ? 8 : total > i * 8 ? total - i * 8 : 0;
        a.b[i] &= (uint8_t)(0xff00u >> keep);
    }
    out->addr = a;
    out->bits = (uint8_t)total;
    return NULL;
}

bool netaddr_prefix_contains(const netaddr_prefix_t *p, const netaddr_t *a)
{
    unsigned full = p->bits / 8, rest = p->bits % 8;
    if (memcmp(p->addr.b, a->b, full) != 0)
        return false;
    if (!rest)
        return true;
    uint8_t mask = (uint8_t)(0xff00u >> rest);
    return (a->b[full] & mask) == p->addr.b[full];
}

bool netaddr_list_contains(const netaddr_prefix_t *list, size_t n, const netaddr_t *a)
{
    for (size_t i = 0; i < n; i++)
        if (netaddr_prefix_contains(&list[i], a))
            return true;
    return false;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* s[*start..*end) without the spaces and tabs around it. */
static void trim(const char *s, size_t *start, size_t *end)
{
    while (*start < *end && is_space(s[*start]))
        (*start)++;
    while (*end > *start && is_space(s[*end - 1]))
        (*end)--;
}

int netaddr_parse_list(const char *s, netaddr_prefix_t *out, size_t cap, const char **why,
                       size_t *bad_off, size_t *bad_len)
{
    size_t len = strlen(s), n = 0;
    for (size_t pos = 0; pos <= len;) {
        const char *comma = memchr(s + pos, ',', len - pos);
        size_t stop = comma ? (size_t)(comma - s) : len, a = pos, e = stop;
        trim(s, &a, &e);
        if (a < e) {
            netaddr_prefix_t p;
            const char *bad = netaddr_parse_prefix(s + a, e - a, &p);
            if (bad) {
                *why = bad;
                *bad_off = a;
                *bad_len = e - a;
                return -1;
            }
            if (n < cap)
                out[n] = p;
            n++;
        }
        pos = stop + 1;
    }
    if (n == 0) {
        *why = "no address";
        *bad_off = 0;
        *bad_len = len;
        return -1;
    }
    return n > (size_t)INT32_MAX ? INT32_MAX : (int)n;
}

/* One X-Forwarded-For item s[0..len) (trimmed, not empty): a, a.b.c.d:port, [v6], [v6]:port. */
static bool parse_item(const char *s, size_t len, netaddr_t *out)
{
    size_t alen = len;
    const char *port = NULL;
    if (s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close)
            return false;
        alen = (size_t)(close - s) - 1;
        if (close + 1 < s + len) {
            if (close[1] != ':')
                return false;
            port = close + 2;
        }
        if (!netaddr_parse(s + 1, alen, out) || netaddr_is_v4(out))
            return false; /* brackets hold an IPv6 address only */
    } else {
        const char *colon = memchr(s, ':', len);
        if (colon && memchr(s, '.', (size_t)(colon - s)) &&
            !memchr(colon + 1, ':', len - (size_t)(colon - s) - 1)) {
            alen = (size_t)(colon - s); /* a.b.c.d:port */
            port = colon + 1;
            if (!netaddr_parse(s, alen, out) || !netaddr_is_v4(out))
                return false;
        } else if (!netaddr_parse(s, len, out)) {
            return false;
        }
    }
    if (port) {
        size_t plen = (size_t)(s + len - port);
        unsigned v = 0;
        if (plen == 0 || plen > 5)
            return false;
        for (size_t i = 0; i < plen; i++) {
            if (port[i] < '0' || port[i] > '9')
                return false;
            v = v * 10 + (unsigned)(port[i] - '0');
        }
        if (v > 65535)
            return false;
    }
    return true;
}

netaddr_source_t netaddr_client(const netaddr_t *peer, const netaddr_prefix_t *trusted,
                                size_t ntrusted, const char *xff, size_t xff_len, netaddr_t *out)
{
    *out = *peer;
    if (!netaddr_list_contains(trusted, ntrusted, peer))
        return NETADDR_FROM_PEER;
    if (!xff)
        return NETADDR_FROM_NO_XFF;
    bool any = false;
    netaddr_t last;
    for (size_t end = xff_len;;) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',')
            start--;
        size_t a = start, e = end;
        trim(xff, &a, &e);
        if (a < e) { /* empty items ("a, , b") are skipped, as HTTP lists allow */
            if (!parse_item(xff + a, e - a, &last)) {
                *out = *peer;
                return NETADDR_FROM_BAD_XFF;
            }
            any = true;
            if (!netaddr_list_contains(trusted, ntrusted, &last)) {
                *out = last;
                return NETADDR_FROM_XFF;
            }
        }
        if (start == 0)
            break;
        end = start - 1;
    }
    if (!any)
        return NETADDR_FROM_NO_XFF;
    *out = last;
    return NETADDR_FROM_XFF_FIRST;
}
