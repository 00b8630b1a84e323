/*
 * The members of a top-level JSON object or MessagePack map that a decoder
 * wants, by name, with their values' spans: shared by gale_decode_request
 * (client messages) and gale_decode_reply (server messages).
 */
#include "internal.h"

/* A JSON unsigned integer literal (digits only: the strict parser already refused leading
 * zeros) that fits uint64. */
static bool json_uint(const uint8_t *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 20)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

typedef struct {
    const char *const *names;
    int n;
    gale__field_t *f;
} wanted_t;

/* Index of the wanted field named key[0..len) (JSON: raw, maybe escaped), or -1. */
static int find_json(const wanted_t *w, const uint8_t *key, size_t len, bool escaped)
{
    for (int k = 0; k < w->n; k++)
        if (gale__json_str_eq(key, len, escaped, w->names[k]))
            return k;
    return -1;
}

static int find_raw(const wanted_t *w, const uint8_t *key, size_t len)
{
    for (int k = 0; k < w->n; k++)
        if (len == strlen(w->names[k]) && memcmp(key, w->names[k], len) == 0)
            return k;
    return -1;
}

/* Records a value for field f; a repeated key keeps the first value and sets dup. */
static gale__field_t *take(gale__field_t *f, const uint8_t *val, size_t val_len)
{
    if (f->present) {
        f->dup = true;
        return NULL;
    }
    f->present = true;
    f->val = val;
    f->val_len = val_len;
    return f;
}

static bool json_member(const gale__jmember_t *m, void *arg)
{
    const wanted_t *w = arg;
    int k = find_json(w, m->key, m->key_len, m->key_escaped);
    gale__field_t *f = k < 0 ? NULL : take(&w->f[k], m->val, m->val_len);
    if (!f)
        return true;
    f->is_str = m->kind == GALE__J_STRING;
    if (f->is_str) {
        f->str = m->val + 1;
        f->str_len = m->val_len - 2;
        f->str_escaped = memchr(f->str, '\\', f->str_len) != NULL;
    }
    f->is_uint = m->kind == GALE__J_NUMBER && json_uint(m->val, m->val_len, &f->u);
    return true;
}

int gale__fields_json(const uint8_t *buf, size_t len, unsigned max_depth, const char *const *names,
                      int n, gale__field_t *f)
{
    wanted_t w = {names, n, f};
    memset(f, 0, sizeof(*f) * (size_t)n);
    return gale__json_object(buf, len, max_depth, json_member, &w);
}

const char *gale__fields_msgpack(const uint8_t *buf, size_t len, const char *const *names, int n,
                                 gale__field_t *f, bool str_keys_only)
{
    wanted_t w = {names, n, f};
    gale__mphead_t h;
    memset(f, 0, sizeof(*f) * (size_t)n);
    gale__mp_head(buf, len, &h);
    if (h.kind != GALE__MP_MAP)
        return "message is not a map";
    size_t pos = h.hdr;
    for (uint64_t i = 0; i < h.n; i++) {
        gale__mphead_t k, v;
        gale__mp_head(buf + pos, len - pos, &k);
        if (k.kind != GALE__MP_STR && str_keys_only)
            return "map key is not a string";
        const uint8_t *key = buf + pos + k.hdr;
        size_t key_len = (size_t)k.n;
        pos += gale__mp_skip(buf + pos, len - pos);
        const uint8_t *val = buf + pos;
        size_t val_len = gale__mp_skip(val, len - pos);
        pos += val_len;
        int idx = k.kind == GALE__MP_STR ? find_raw(&w, key, key_len) : -1;
        gale__field_t *fld = idx < 0 ? NULL : take(&f[idx], val, val_len);
        if (!fld)
            continue;
        gale__mp_head(val, val_len, &v);
        fld->is_str = v.kind == GALE__MP_STR;
        if (fld->is_str) {
            fld->str = val + v.hdr;
            fld->str_len = (size_t)v.n;
        }
        fld->is_uint = v.kind == GALE__MP_UINT || (v.kind == GALE__MP_INT && v.i >= 0);
        fld->u = v.kind == GALE__MP_UINT ? v.u : (uint64_t)v.i;
    }
    return NULL;
}
