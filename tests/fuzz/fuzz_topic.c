/*
 * Fuzzes topic and pattern validation and matching. The input is
 * "pattern\0topic" (without a NUL: the same bytes as both). Checks the
 * validators' consistency and gale_pattern_match against a simple
 * reference matcher written here.
 */
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reference: split into segments and match recursively. */
typedef struct {
    const char *s[GALE_TOPIC_MAX + 1];
    size_t n[GALE_TOPIC_MAX + 1];
    size_t count;
} segs_t;

static void split(const char *t, size_t len, segs_t *sg)
{
    size_t start = 0;
    sg->count = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || t[i] == '.') {
            sg->s[sg->count] = t + start;
            sg->n[sg->count] = i - start;
            sg->count++;
            start = i + 1;
        }
    }
}

static bool ref_match(const segs_t *p, size_t pi, const segs_t *t, size_t ti)
{
    if (pi == p->count)
        return ti == t->count;
    if (p->n[pi] == 1 && p->s[pi][0] == '>')
        return ti < t->count;
    if (ti == t->count)
        return false;
    if (!(p->n[pi] == 1 && p->s[pi][0] == '*') &&
        (p->n[pi] != t->n[ti] || memcmp(p->s[pi], t->s[ti], p->n[pi]) != 0))
        return false;
    return ref_match(p, pi + 1, t, ti + 1);
}

/* A wildcard segment, as the reference sees it. */
static bool ref_has_wild(const segs_t *sg)
{
    for (size_t i = 0; i < sg->count; i++)
        if (sg->n[i] == 1 && (sg->s[i][0] == '*' || sg->s[i][0] == '>'))
            return true;
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    const char *p = (const char *)data, *t = (const char *)data;
    size_t plen = size, tlen = size;
    if (nul != NULL) {
        plen = (size_t)(nul - data);
        t = (const char *)nul + 1;
        tlen = size - plen - 1;
    }
    bool pat_is = false, t_is = false;
    bool pv = gale_pattern_valid(p, plen, &pat_is);
    bool pt = gale_topic_valid(p, plen);
    bool tv = gale_pattern_valid(t, tlen, &t_is);
    bool tt = gale_topic_valid(t, tlen);
    /* concrete topic <=> valid pattern without wildcards */
    CHECK(pt == (pv && !pat_is));
    CHECK(tt == (tv && !t_is));
    if (pv) {
        CHECK(plen >= 1 && plen <= GALE_TOPIC_MAX);
        CHECK(gale_utf8_valid((const uint8_t *)p, plen));
        segs_t ps;
        split(p, plen, &ps);
        CHECK(ref_has_wild(&ps) == pat_is);
        if (tt) {
            segs_t ts;
            split(t, tlen, &ts);
            CHECK(gale_pattern_match(p, plen, t, tlen) == ref_match(&ps, 0, &ts, 0));
        }
        if (pt) /* a concrete topic matches itself */
            CHECK(gale_pattern_match(p, plen, p, plen));
        if (tt)
            CHECK(gale_pattern_match(">", 1, t, tlen));
    }
    return 0;
}
