/*
 * Topics and patterns (docs/PROTOCOL.md "Topics").
 *
 * A topic is 1..GALE_TOPIC_MAX bytes of UTF-8 split by '.' into non-empty
 * segments. No character may be a control character (C0, DEL, C1) or
 * whitespace (ASCII and Unicode White_Space). Concrete topics contain no
 * '*' or '>' at all. In a pattern a segment may be exactly "*" (any one
 * segment), and the last segment may be exactly ">" (one or more segments);
 * any other segment holding '*' or '>' ("a*", "*>", ">>") is invalid.
 */
#include "internal.h"

/* Control characters and Unicode White_Space (Unicode 15, PropList.txt). */
static bool forbidden_cp(uint32_t cp)
{
    if (cp <= 0x20 || (cp >= 0x7F && cp <= 0xA0))
        return true; /* C0, space, DEL, C1 (includes U+0085), NBSP */
    if (cp < 0x1680)
        return false;
    return cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/*
 * Shared validator. allow_wild: pattern rules. Returns false if invalid;
 * sets *wild when a wildcard segment was seen.
 */
static bool check(const char *t, size_t len, bool allow_wild, bool *wild)
{
    const uint8_t *s = (const uint8_t *)t;
    *wild = false;
    if (t == NULL || len == 0 || len > GALE_TOPIC_MAX)
        return false;
    size_t seg = 0; /* start of the current segment */
    bool seg_special = false;
    size_t i = 0;
    for (;;) {
        if (i == len || s[i] == '.') {
            size_t n = i - seg;
            if (n == 0)
                return false;
            if (seg_special) {
                /* Only the exact segments "*" and ">" (the latter last) are allowed. */
                if (!allow_wild || n != 1)
                    return false;
                if (s[seg] == '>' && i != len)
                    return false;
                *wild = true;
            }
            if (i == len)
                return true;
            i++;
            seg = i;
            seg_special = false;
            continue;
        }
        uint8_t c = s[i];
        if (c < 0x80) {
            if (c <= 0x20 || c == 0x7F)
                return false;
            if (c == '*' || c == '>')
                seg_special = true;
            i++;
            continue;
        }
        uint32_t cp;
        i += gale__utf8_next(s + i, len - i, &cp);
        if (cp == GALE__UTF8_BAD || forbidden_cp(cp))
            return false;
    }
}

bool gale_topic_valid(const char *t, size_t len)
{
    bool wild;
    return check(t, len, false, &wild);
}

bool gale_pattern_valid(const char *t, size_t len, bool *is_pattern)
{
    bool wild;
    bool ok = check(t, len, true, &wild);
    if (is_pattern != NULL)
        *is_pattern = ok && wild;
    return ok;
}

/* Length of the segment starting at s[0..n). */
static size_t seglen(const char *s, size_t n)
{
    const char *dot = memchr(s, '.', n);
    return dot != NULL ? (size_t)(dot - s) : n;
}

bool gale_pattern_match(const char *pattern, size_t plen, const char *topic, size_t tlen)
{
    size_t pi = 0, ti = 0;
    for (;;) {
        if (pi >= plen || ti >= tlen)
            return pi >= plen && ti >= tlen;
        size_t pn = seglen(pattern + pi, plen - pi);
        size_t tn = seglen(topic + ti, tlen - ti);
        if (pn == 1 && pattern[pi] == '>')
            return true; /* at least one topic segment remains */
        if (!(pn == 1 && pattern[pi] == '*') &&
            (pn != tn || memcmp(pattern + pi, topic + ti, pn) != 0))
            return false;
        pi += pn + 1;
        ti += tn + 1;
    }
}
