/* A read-only walk over strict JSON (gale_json.h), on top of json.c's parser. */
#include "gale_json.h"

#include "internal.h"

#include <stdlib.h>

_Static_assert((int)GALE_JSON_OBJECT == (int)GALE__J_OBJECT &&
                   (int)GALE_JSON_NULL == (int)GALE__J_NULL,
               "gale_json_kind_t mirrors gale__jkind_t");

typedef struct {
    gale_json_member_fn fn;
    void *arg;
} walk_t;

static bool member(const gale__jmember_t *m, void *arg)
{
    walk_t *w = arg;
    gale_json_member_t pm = {.key = m->key,
                             .key_len = m->key_len,
                             .key_escaped = m->key_escaped,
                             .val = m->val,
                             .val_len = m->val_len,
                             .kind = (gale_json_kind_t)m->kind};
    return w->fn(&pm, w->arg);
}

int gale_json_object(const uint8_t *buf, size_t len, unsigned max_depth, gale_json_member_fn fn,
                     void *arg)
{
    walk_t w = {fn, arg};
    if (buf == NULL)
        return 0;
    return gale__json_object(buf, len, max_depth, member, &w);
}

bool gale_json_key_is(const gale_json_member_t *m, const char *lit)
{
    return gale__json_str_eq(m->key, m->key_len, m->key_escaped, lit);
}

gale_json_kind_t gale_json_kind(const uint8_t *v)
{
    switch (*v) {
    case '{':
        return GALE_JSON_OBJECT;
    case '[':
        return GALE_JSON_ARRAY;
    case '"':
        return GALE_JSON_STRING;
    case 't':
        return GALE_JSON_TRUE;
    case 'f':
        return GALE_JSON_FALSE;
    case 'n':
        return GALE_JSON_NULL;
    default:
        return GALE_JSON_NUMBER;
    }
}

static bool is_ws(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

bool gale_json_array_next(const uint8_t *arr, size_t len, size_t *pos, const uint8_t **el,
                          size_t *el_len)
{
    size_t i = *pos;
    if (i == 0) { /* past the '[' */
        while (i < len && is_ws(arr[i]))
            i++;
        if (i >= len || arr[i] != '[')
            return false;
        i++;
    }
    while (i < len && (is_ws(arr[i]) || arr[i] == ','))
        i++;
    if (i >= len || arr[i] == ']') {
        *pos = len;
        return false;
    }
    /* The input is well-formed: one value ends at depth 0 before ',' or the closing ']'. */
    size_t start = i, depth = 0;
    bool in_str = false;
    for (; i < len; i++) {
        uint8_t c = arr[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            depth++;
        } else if (c == ']' || c == '}') {
            if (depth == 0)
                break;
            depth--;
        } else if (c == ',' && depth == 0) {
            break;
        }
    }
    size_t end = i;
    while (end > start && is_ws(arr[end - 1]))
        end--;
    if (end == start)
        return false;
    *el = arr + start;
    *el_len = end - start;
    *pos = i;
    return true;
}

size_t gale_json_string(const uint8_t *v, size_t len, char *dst, size_t cap)
{
    if (len < 2 || v[0] != '"' || v[len - 1] != '"' || cap == 0)
        return SIZE_MAX;
    const uint8_t *s = v + 1;
    size_t n = len - 2;
    if (n >= cap) {
        /* Escapes only shrink: unescape into a temporary when the raw form is too long. */
        uint8_t *tmp = malloc(n + 1);
        if (!tmp)
            return SIZE_MAX;
        size_t m = gale__json_unescape(tmp, s, n, false);
        if (m == SIZE_MAX || m >= cap || memchr(tmp, 0, m)) {
            free(tmp);
            return SIZE_MAX;
        }
        memcpy(dst, tmp, m);
        dst[m] = '\0';
        free(tmp);
        return m;
    }
    size_t m = gale__json_unescape((uint8_t *)dst, s, n, false);
    if (m == SIZE_MAX || memchr(dst, 0, m))
        return SIZE_MAX;
    dst[m] = '\0';
    return m;
}
