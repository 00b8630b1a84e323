#include "cluster_wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- envelope ------------------------------------------------------------- */

size_t cluster_envelope_size(size_t node_len, size_t topic_len, size_t data_len)
{
    /* array 1 + version 1 + str 2+node + uint 9 + uint 9 + str 2+topic + enc 1 + bin 5+data
     * + true 1 */
    return 31 + node_len + topic_len + data_len;
}

size_t cluster_envelope_size_ext(size_t node_len, size_t topic_len, size_t reply_len,
                                 size_t data_len)
{
    /* + array 1 + str 2+reply + uint 9 + flags 1 */
    return cluster_envelope_size(node_len, topic_len, data_len) + 13 + reply_len;
}

static uint8_t *put_uint(uint8_t *p, uint64_t v)
{
    if (v < 128) {
        *p++ = (uint8_t)v;
        return p;
    }
    *p++ = 0xcf;
    for (int i = 7; i >= 0; i--)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

static uint8_t *put_str(uint8_t *p, const char *s, size_t n)
{
    if (n < 32) {
        *p++ = (uint8_t)(0xa0 | n);
    } else {
        *p++ = 0xd9;
        *p++ = (uint8_t)n;
    }
    memcpy(p, s, n);
    return p + n;
}

size_t cluster_envelope_encode(uint8_t *out, size_t cap, const cluster_envelope_t *e)
{
    if (e->node_len == 0 || e->node_len > CLUSTER_NODE_MAX || e->topic_len == 0 ||
        e->topic_len > GALE_TOPIC_MAX || e->data_len > CLUSTER_DATA_MAX ||
        e->reply_len > GALE_TOPIC_MAX ||
        cap < (e->reply || e->noecho || e->qos0
                   ? cluster_envelope_size_ext(e->node_len, e->topic_len, e->reply_len, e->data_len)
                   : cluster_envelope_size(e->node_len, e->topic_len, e->data_len)))
        return 0;
    uint8_t *p = out;
    *p++ = e->tail == 9 ? 0x99 : e->tail == 8 ? 0x98 : 0x97;
    *p++ = CLUSTER_ENVELOPE_VERSION;
    p = put_str(p, e->node, e->node_len);
    p = put_uint(p, e->instance);
    p = put_uint(p, e->seq);
    p = put_str(p, e->topic, e->topic_len);
    if (e->reply || e->noecho || e->qos0) {
        *p++ = 0x94;
        *p++ = (uint8_t)e->enc;
        p = put_str(p, e->reply ? e->reply : "", e->reply ? e->reply_len : 0);
        p = put_uint(p, e->noecho);
        *p++ = e->qos0 ? 1 : 0;
    } else {
        *p++ = (uint8_t)e->enc;
    }
    *p++ = 0xc6;
    for (int i = 3; i >= 0; i--)
        *p++ = (uint8_t)(e->data_len >> (8 * i));
    memcpy(p, e->data, e->data_len);
    p += e->data_len;
    if (e->tail == 8)
        *p++ = 0xc3;
    return (size_t)(p - out);
}

typedef struct {
    const uint8_t *p, *end;
} rd_t;

static bool rd_be(rd_t *r, size_t n, uint64_t *v)
{
    if ((size_t)(r->end - r->p) < n)
        return false;
    *v = 0;
    for (size_t i = 0; i < n; i++)
        *v = (*v << 8) | *r->p++;
    return true;
}

static bool rd_uint(rd_t *r, uint64_t *v)
{
    if (r->p == r->end)
        return false;
    uint8_t t = *r->p++;
    if (t < 0x80) {
        *v = t;
        return true;
    }
    switch (t) {
    case 0xcc:
        return rd_be(r, 1, v);
    case 0xcd:
        return rd_be(r, 2, v);
    case 0xce:
        return rd_be(r, 4, v);
    case 0xcf:
        return rd_be(r, 8, v);
    default:
        return false;
    }
}

/* Reads a str (bin: a bin) header and its bytes, bounded by the input. */
static bool rd_bytes(rd_t *r, bool bin, const uint8_t **s, size_t *n)
{
    uint64_t len = 0;
    bool ok;
    if (r->p == r->end)
        return false;
    uint8_t t = *r->p++;
    if (!bin && (t & 0xe0) == 0xa0) {
        len = t & 0x1f;
        ok = true;
    } else if (t == (bin ? 0xc4 : 0xd9)) {
        ok = rd_be(r, 1, &len);
    } else if (t == (bin ? 0xc5 : 0xda)) {
        ok = rd_be(r, 2, &len);
    } else if (t == (bin ? 0xc6 : 0xdb)) {
        ok = rd_be(r, 4, &len);
    } else {
        ok = false;
    }
    if (!ok || len > (uint64_t)(r->end - r->p))
        return false;
    *s = r->p;
    *n = (size_t)len;
    r->p += len;
    return true;
}

bool cluster_envelope_decode(const uint8_t *buf, size_t len, size_t max_data, cluster_envelope_t *e,
                             const char **why)
{
    uint64_t v, enc;
    const uint8_t *s;
    size_t n;

    memset(e, 0, sizeof(*e));
    *why = "not an envelope (array of 7, 8 or 9)";
    if (!buf || len < 1)
        return false;
    rd_t r = {buf, buf + len};
    uint8_t head = *r.p++;
    if (head < 0x97 || head > 0x99)
        return false;
    e->tail = head == 0x97 ? 0 : (uint8_t)(head & 0x0f);
    *why = "unknown envelope version";
    if (!rd_uint(&r, &v) || v != CLUSTER_ENVELOPE_VERSION)
        return false;
    *why = "bad origin node";
    if (!rd_bytes(&r, false, &s, &n) || n == 0 || n > CLUSTER_NODE_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] >= 0x7f)
            return false;
    e->node = (const char *)s;
    e->node_len = n;
    *why = "bad origin instance or sequence";
    if (!rd_uint(&r, &e->instance) || e->instance == 0 || !rd_uint(&r, &e->seq) || e->seq == 0)
        return false;
    *why = "bad topic";
    if (!rd_bytes(&r, false, &s, &n) || !gale_topic_valid((const char *)s, n))
        return false;
    e->topic = (const char *)s;
    e->topic_len = n;
    *why = "bad encoding";
    bool ext = r.p < r.end && *r.p == 0x94;
    r.p += ext;
    if (!rd_uint(&r, &enc) || enc >= GALE_ENC_COUNT)
        return false;
    e->enc = (gale_enc_t)enc;
    *why = "bad reply or noecho";
    if (ext) {
        uint64_t flags;
        if (!rd_bytes(&r, false, &s, &n) || (n && !gale_topic_valid((const char *)s, n)) ||
            !rd_uint(&r, &e->noecho) || !rd_uint(&r, &flags) || flags > 1)
            return false;
        e->qos0 = flags == 1;
        e->reply = n ? (const char *)s : NULL;
        e->reply_len = n;
    }
    *why = "bad data";
    if (!rd_bytes(&r, true, &s, &n) || n == 0 || n > max_data || n > CLUSTER_DATA_MAX)
        return false;
    e->data = s;
    e->data_len = n;
    *why = "bad delivery flag";
    if (e->tail == 8 && (r.p == r.end || *r.p++ != 0xc3))
        return false;
    *why = "bad stream position";
    if (e->tail == 9) {
        const uint8_t *ep;
        size_t ep_len;
        if (!rd_bytes(&r, false, &ep, &ep_len) || ep_len == 0 || ep_len > GALE_EP_MAX ||
            !rd_uint(&r, &e->off) || e->off == 0)
            return false;
        e->ep = (const char *)ep;
        e->ep_len = ep_len;
    }
    *why = "bytes after the envelope";
    if (r.p != r.end)
        return false;
    /* As in a client's pub, data sits one level inside the message: at most
     * GALE_MAX_DEPTH - 1 deep. This also bounds a MessagePack ext's JSON form
     * (one more level) to GALE_MAX_DEPTH, so the data converts for JSON
     * subscribers (an ext at the 64th level would not). */
    *why = "data not well-formed in its encoding";
    if (e->enc == GALE_ENC_JSON ? !gale_json_valid(s, n, GALE_MAX_DEPTH - 1)
                                : !gale_msgpack_prescan(s, n, GALE_MAX_DEPTH - 1))
        return false;
    *why = "";
    return true;
}

cluster_env_kind_t cluster_envelope_kind(const uint8_t *buf, size_t len)
{
    if (!buf || len < 1)
        return CLUSTER_ENV_UNKNOWN;
    if (buf[0] >= 0x97 && buf[0] <= 0x99)
        return CLUSTER_ENV_MESSAGE;
    return buf[0] == 0x96 ? CLUSTER_ENV_PRESENCE : CLUSTER_ENV_UNKNOWN;
}

static bool presence_fields(rd_t *r, cluster_presence_t *e)
{
    uint64_t v;
    const uint8_t *s;
    size_t n;

    if (r->p == r->end || *r->p++ != 0x96)
        return false;
    if (!rd_uint(r, &v) || v != CLUSTER_PRESENCE_VERSION)
        return false;
    if (!rd_bytes(r, false, &s, &n) || !gale_topic_valid((const char *)s, n))
        return false;
    e->topic = (const char *)s;
    e->topic_len = n;
    if (!rd_uint(r, &v) || v > CLUSTER_PRESENCE_LEAVE)
        return false;
    e->kind = (cluster_presence_kind_t)v;
    if (!rd_uint(r, &e->count))
        return false;
    if (!rd_bytes(r, false, &s, &n) || n == 0 || n > CLUSTER_CONN_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] >= 0x7f)
            return false;
    e->conn = (const char *)s;
    e->conn_len = n;
    if (!rd_bytes(r, false, &s, &n) || n < 2 || n > CLUSTER_MEMBER_MAX || s[0] != '{' ||
        s[n - 1] != '}')
        return false;
    e->member = s;
    e->member_len = n;
    /* Nothing after it; the JSON last (the costliest check). */
    return r->p == r->end && gale_json_valid(s, n, CLUSTER_MEMBER_DEPTH);
}

bool cluster_presence_decode(const uint8_t *buf, size_t len, cluster_presence_t *e)
{
    memset(e, 0, sizeof(*e));
    if (!buf || len < 1)
        return false;
    rd_t r = {buf, buf + len};
    if (presence_fields(&r, e))
        return true;
    memset(e, 0, sizeof(*e));
    return false;
}

/* --- history in Redis ---------------------------------------------------- */

const char CLUSTER_SCRIPT_PUB[] =
    "local midk = KEYS[3]\n"
    "if midk ~= '' then\n"
    "  local o = redis.call('GET', midk)\n"
    "  if o then return {1, '', tonumber(o)} end\n"
    "end\n"
    "local size = tonumber(ARGV[3])\n"
    "local env, ep, off = ARGV[2], '', 0\n"
    "if size > 0 then\n"
    "  ep = redis.call('HGET', KEYS[1], 'ep')\n"
    "  if not ep then\n"
    "    ep = ARGV[6]\n"
    "    redis.call('DEL', KEYS[2])\n"
    "    redis.call('HSET', KEYS[1], 'ep', ep, 'off', 0)\n"
    "  end\n"
    "  off = redis.call('HINCRBY', KEYS[1], 'off', 1)\n"
    "  local b, n = {}, off\n"
    "  for i = 8, 1, -1 do b[i] = string.char(n % 256); n = math.floor(n / 256) end\n"
    "  env = env .. string.char(0xd9, #ep) .. ep .. string.char(0xcf) .. table.concat(b)\n"
    "  local t = redis.call('TIME')\n"
    "  redis.call('XADD', KEYS[2], 'MAXLEN', '~', size, string.format('%d-0', off), 'e', env,\n"
    "             't', string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000)))\n"
    "  local ttl = tonumber(ARGV[4])\n"
    "  if ttl > 0 then\n"
    "    redis.call('PEXPIRE', KEYS[1], ttl)\n"
    "    redis.call('PEXPIRE', KEYS[2], ttl)\n"
    "  end\n"
    "end\n"
    "redis.call('PUBLISH', ARGV[1], env)\n"
    "if midk ~= '' then redis.call('SET', midk, off, 'PX', ARGV[5]) end\n"
    "return {0, ep, off}\n";

const char CLUSTER_SCRIPT_READ[] =
    "local ep = redis.call('HGET', KEYS[1], 'ep')\n"
    "local off = 0\n"
    "if not ep then\n"
    "  ep = ARGV[4]\n"
    "  redis.call('DEL', KEYS[2])\n"
    "  redis.call('HSET', KEYS[1], 'ep', ep, 'off', 0)\n"
    "  local ttl = tonumber(ARGV[5])\n"
    "  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end\n"
    "else\n"
    "  off = tonumber(redis.call('HGET', KEYS[1], 'off'))\n"
    "end\n"
    "local n = tonumber(ARGV[2])\n"
    "if ARGV[1] == 'range' then\n"
    "  local lo = math.max(n, off - tonumber(ARGV[3]))\n"
    "  if lo < off then\n"
    "    return {ep, off, redis.call('XRANGE', KEYS[2], string.format('(%d-0', lo), '+',\n"
    "                                'COUNT', off - lo)}\n"
    "  end\n"
    "elseif ARGV[1] == 'last' and n > 0 then\n"
    "  return {ep, off, redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', n)}\n"
    "end\n"
    "return {ep, off, {}}\n";

/* --- presence in Redis --------------------------------------------------- */

/*
 * The functions every presence script starts with (composed in C: one copy of the text).
 *   now_ms()      Redis's TIME in ms.
 *   event(...)    PUBLISHes a presence envelope on ch.
 *   touch(k, e)   PEXPIREs the keys k[1..#k] to 2 x e ms.
 *   drop(...)     HDELs, with a leave event each, the fields of hash hk that start with one
 *                 of the strings of pre (plain byte comparison: string.sub, never a
 *                 pattern) and are not keys of keep; returns HLEN after it and the number
 *                 removed. One pass over the hash's fields (HKEYS).
 *   sweep(...)    drop for every instance of zset zk whose expiry is <= now, which then
 *                 leave zk.
 */
#define PRESENCE_LUA_COMMON                                                                        \
    "local function now_ms()\n"                                                                    \
    "  local t = redis.call('TIME')\n"                                                             \
    "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"                         \
    "end\n"                                                                                        \
    "local function event(ch, topic, kind, n, conn, member)\n"                                     \
    "  redis.call('PUBLISH', ch, cmsgpack.pack({2, topic, kind, n, conn, member}))\n"              \
    "end\n"                                                                                        \
    "local function touch(k, e)\n"                                                                 \
    "  for i = 1, #k do redis.call('PEXPIRE', k[i], string.format('%d', 2 * e)) end\n"             \
    "end\n"                                                                                        \
    "local function drop(hk, ch, topic, pre, keep)\n"                                              \
    "  local all = redis.call('HKEYS', hk)\n"                                                      \
    "  local n, gone = #all, 0\n"                                                                  \
    "  for _, f in ipairs(all) do\n"                                                               \
    "    if not keep[f] then\n"                                                                    \
    "      for _, p in ipairs(pre) do\n"                                                           \
    "        if string.sub(f, 1, #p) == p then\n"                                                  \
    "          local m = redis.call('HGET', hk, f)\n"                                              \
    "          redis.call('HDEL', hk, f)\n"                                                        \
    "          n, gone = n - 1, gone + 1\n"                                                        \
    "          event(ch, topic, 1, n, f, m)\n"                                                     \
    "          break\n"                                                                            \
    "        end\n"                                                                                \
    "      end\n"                                                                                  \
    "    end\n"                                                                                    \
    "  end\n"                                                                                      \
    "  return n, gone\n"                                                                           \
    "end\n"                                                                                        \
    "local function sweep(hk, zk, ch, topic, now)\n"                                               \
    "  local lim = string.format('%d', now)\n"                                                     \
    "  local dead = redis.call('ZRANGEBYSCORE', zk, '-inf', lim)\n"                                \
    "  if #dead == 0 then return end\n"                                                            \
    "  local pre = {}\n"                                                                           \
    "  for i, d in ipairs(dead) do pre[i] = d .. '-' end\n"                                        \
    "  drop(hk, ch, topic, pre, {})\n"                                                             \
    "  for _, d in ipairs(dead) do redis.call('ZREM', zk, d) end\n"                                \
    "end\n"

/* JOIN's body after n = HLEN, its pairs from ARGV[j0] on (shared with SYNC). */
#define PRESENCE_LUA_JOIN                                                                          \
    "redis.call('ZADD', KEYS[2], string.format('%d', now_ms() + exp), inst)\n"                     \
    "redis.call('SADD', KEYS[3], topic)\n"                                                         \
    "for i = j0, #ARGV - 1, 2 do\n"                                                                \
    "  if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then\n"                           \
    "    n = n + 1\n"                                                                              \
    "    event(ch, topic, 0, n, ARGV[i], ARGV[i + 1])\n"                                           \
    "  end\n"                                                                                      \
    "end\n"                                                                                        \
    "touch(KEYS, exp)\n"                                                                           \
    "return n\n"

const char CLUSTER_SCRIPT_PRESENCE_JOIN[] =
    "-- gale presence JOIN (KEYS p:T pz:T pi:INST)\n" PRESENCE_LUA_COMMON
    "local inst, exp, topic, ch = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]\n"
    "local j0 = 5\n"
    "local n = redis.call('HLEN', KEYS[1])\n" PRESENCE_LUA_JOIN;

const char CLUSTER_SCRIPT_PRESENCE_LEAVE[] =
    "-- gale presence LEAVE (KEYS p:T pz:T pi:INST)\n" PRESENCE_LUA_COMMON
    "local inst, topic, ch = ARGV[1], ARGV[3], ARGV[4]\n"
    "local n = redis.call('HLEN', KEYS[1])\n"
    "for i = 5, #ARGV do\n"
    "  local m = redis.call('HGET', KEYS[1], ARGV[i])\n"
    "  if m then\n"
    "    redis.call('HDEL', KEYS[1], ARGV[i])\n"
    "    n = n - 1\n"
    "    event(ch, topic, 1, n, ARGV[i], m)\n"
    "  end\n"
    "end\n"
    "if ARGV[2] == '1' then\n"
    "  redis.call('ZREM', KEYS[2], inst)\n"
    "  redis.call('SREM', KEYS[3], topic)\n"
    "end\n"
    "return n\n";

const char CLUSTER_SCRIPT_PRESENCE_SYNC[] =
    "-- gale presence SYNC (KEYS p:T pz:T pi:INST)\n" PRESENCE_LUA_COMMON
    "local inst, exp, topic, ch = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]\n"
    "local j0 = 6 + 2 * tonumber(ARGV[5])\n"
    "local n = redis.call('HLEN', KEYS[1])\n"
    "local kept = redis.call('ZSCORE', KEYS[2], inst)\n"
    "for i = 6, j0 - 1, 2 do\n"
    "  local held = redis.call('HGET', KEYS[1], ARGV[i])\n"
    "  local d = redis.call('HDEL', KEYS[1], ARGV[i])\n"
    "  n = n - d\n"
    "  if d == 1 or (not kept and ARGV[i + 1] ~= '') then\n"
    "    event(ch, topic, 1, n, ARGV[i], held or ARGV[i + 1])\n"
    "  end\n"
    "end\n"
    "local keep = {}\n"
    "for i = j0, #ARGV - 1, 2 do keep[ARGV[i]] = true end\n"
    "n = drop(KEYS[1], ch, topic, {inst .. '-'}, keep)\n"
    "if #ARGV < j0 + 1 then\n"
    "  redis.call('ZREM', KEYS[2], inst)\n"
    "  redis.call('SREM', KEYS[3], topic)\n"
    "  return n\n"
    "end\n" PRESENCE_LUA_JOIN;

const char CLUSTER_SCRIPT_PRESENCE_REFRESH[] =
    "-- gale presence REFRESH (KEYS p:T pz:T pi:INST)\n" PRESENCE_LUA_COMMON
    "local inst, exp, topic, ch = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]\n"
    "local now = now_ms()\n"
    "local lost = redis.call('ZADD', KEYS[2], string.format('%d', now + exp), inst)\n"
    "touch(KEYS, exp)\n"
    "sweep(KEYS[1], KEYS[2], ch, topic, now)\n"
    "return {redis.call('HLEN', KEYS[1]), lost}\n";

const char CLUSTER_SCRIPT_PRESENCE_READ[] =
    "-- gale presence READ (KEYS p:T pz:T)\n" PRESENCE_LUA_COMMON
    "local cap, topic, ch = tonumber(ARGV[1]), ARGV[2], ARGV[3]\n"
    "sweep(KEYS[1], KEYS[2], ch, topic, now_ms())\n"
    "local n = redis.call('HLEN', KEYS[1])\n"
    "local out = {n}\n"
    "if n <= cap then\n"
    "  local v = redis.call('HVALS', KEYS[1])\n"
    "  for i = 1, #v do out[i + 1] = v[i] end\n"
    "elseif cap > 0 then\n"
    "  local fv = redis.call('HRANDFIELD', KEYS[1], cap, 'WITHVALUES')\n"
    "  for i = 2, #fv, 2 do out[#out + 1] = fv[i] end\n"
    "end\n"
    "return out\n";

const char CLUSTER_SCRIPT_PRESENCE_TAKEOVER[] =
    "-- gale presence TAKEOVER (KEYS pn:NODE)\n" PRESENCE_LUA_COMMON
    "local inst, prefix, exp = ARGV[1], ARGV[2], tonumber(ARGV[3])\n"
    "local old = redis.call('GET', KEYS[1])\n"
    "redis.call('SET', KEYS[1], inst, 'PX', string.format('%d', 2 * exp))\n"
    "if not old or old == inst then return 0 end\n"
    "local ik, gone = prefix .. 'pi:' .. old, 0\n"
    "for _, t in ipairs(redis.call('SMEMBERS', ik)) do\n"
    "  local _, g = drop(prefix .. 'p:' .. t, prefix .. t, t, {old .. '-'}, {})\n"
    "  gone = gone + g\n"
    "  redis.call('ZREM', prefix .. 'pz:' .. t, old)\n"
    "end\n"
    "redis.call('DEL', ik)\n"
    "return gone\n";

size_t cluster_presence_key(char *out, size_t cap, const char *prefix, size_t prefix_len, char kind,
                            const char *name, size_t len)
{
    const char *tag = kind == 'p'   ? "p:"
                      : kind == 'z' ? "pz:"
                      : kind == 'i' ? "pi:"
                      : kind == 'n' ? "pn:"
                                    : NULL;
    if (!tag)
        return 0;
    size_t tl = strlen(tag), n = prefix_len + tl + len;
    if (n + 1 > cap)
        return 0;
    memcpy(out, prefix, prefix_len);
    memcpy(out + prefix_len, tag, tl);
    memcpy(out + prefix_len + tl, name, len);
    out[n] = '\0';
    return n;
}

size_t cluster_key(char *out, size_t cap, const char *prefix, size_t prefix_len, char kind,
                   const char *t, size_t len, const char *mid, size_t mid_len)
{
    size_t n = prefix_len + 2 + len + (kind == 'm' ? 1 + mid_len : 0);
    if (n + 1 > cap)
        return 0;
    memcpy(out, prefix, prefix_len);
    out[prefix_len] = kind;
    out[prefix_len + 1] = ':';
    memcpy(out + prefix_len + 2, t, len);
    if (kind == 'm') {
        out[prefix_len + 2 + len] = ' ';
        memcpy(out + prefix_len + 3 + len, mid, mid_len);
    }
    out[n] = '\0';
    return n;
}

/* --- Redis names ---------------------------------------------------------- */

static bool is_glob_meta(char c)
{
    return c == '*' || c == '?' || c == '[' || c == ']' || c == '\\';
}

/* Appends s[0..n) escaped at out[*o..cap); false if it does not fit. */
static bool put_escaped(char *out, size_t cap, size_t *o, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (is_glob_meta(s[i])) {
            if (*o + 1 >= cap)
                return false;
            out[(*o)++] = '\\';
        }
        if (*o + 1 >= cap)
            return false;
        out[(*o)++] = s[i];
    }
    return true;
}

size_t cluster_glob(char *out, size_t cap, const char *prefix, size_t prefix_len, const char *p,
                    size_t len)
{
    size_t o = 0, i = 0;
    if (cap == 0 || !put_escaped(out, cap, &o, prefix, prefix_len))
        return 0;
    while (i < len) {
        const char *dot = memchr(p + i, '.', len - i);
        size_t n = dot ? (size_t)(dot - (p + i)) : len - i;
        bool ok;
        if (n == 1 && p[i] == '*')
            ok = o + 1 < cap && (out[o++] = '*', true);
        else if (n == 1 && p[i] == '>')
            ok = o + 2 < cap && (out[o++] = '?', out[o++] = '*', true);
        else
            ok = put_escaped(out, cap, &o, p + i, n);
        if (!ok)
            return 0;
        i += n;
        if (i < len) {
            if (o + 1 >= cap)
                return 0;
            out[o++] = '.';
            i++;
        }
    }
    out[o] = '\0';
    return o;
}

/* --- URLs ----------------------------------------------------------------- */

static bool parse_num(const char *s, size_t n, long max, long *out)
{
    long v = 0;
    if (n == 0 || n > 10)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

static const char bad_url[] = "expected redis://[[USER]:PASSWORD@]HOST:PORT[/DB], comma-separated";
static const char bad_creds[] =
    "bad credentials: expected redis://:PASSWORD@HOST:PORT or redis://USER:PASSWORD@HOST:PORT "
    "(a non-empty password; spaces, control characters and % percent-encoded)";

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Percent-decodes s[0..n) into out[0..cap) (NUL-terminated); false if malformed or too
 * long. Raw bytes must be printable, not spaces; decoded ones too when `name` (a user name
 * is logged), else anything but NUL.
 */
static bool pct_decode(const char *s, size_t n, char *out, size_t cap, size_t *len, bool name)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            int hi = i + 2 < n ? hexval(s[i + 1]) : -1;
            int lo = hi >= 0 ? hexval(s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi | lo) == 0)
                return false; /* not %XX, or %00 */
            c = (unsigned char)(hi << 4 | lo);
            i += 2;
            if (name && (c <= ' ' || c == 0x7f))
                return false;
        } else if (c <= ' ' || c == 0x7f) {
            return false;
        }
        if (o + 1 >= cap)
            return false;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    *len = o;
    return true;
}

/* [USER]:PASSWORD or USER (completed by cluster_set_password), before the `@`. */
static bool parse_userinfo(const char *s, size_t n, cluster_addr_t *a)
{
    const char *colon = memchr(s, ':', n);
    size_t ul = colon ? (size_t)(colon - s) : n;
    if (!pct_decode(s, ul, a->user, sizeof(a->user), &a->user_len, true))
        return false;
    if (!colon)
        return a->user_len > 0;
    return pct_decode(colon + 1, n - ul - 1, a->pass, sizeof(a->pass), &a->pass_len, false) &&
           a->pass_len > 0;
}

static bool parse_url(const char *s, size_t n, cluster_addr_t *a, const char **why)
{
    static const char scheme[] = "redis://";
    const size_t sl = sizeof(scheme) - 1;
    const char *host, *end = s + n, *colon, *slash, *at = NULL;
    long port, db = 0;
    size_t hl;

    memset(a, 0, sizeof(*a));
    *why = bad_url;
    if (n <= sl || strncmp(s, scheme, sl) != 0)
        return false;
    host = s + sl;
    for (const char *q = host; q < end; q++) /* the credentials end at the last '@' */
        if (*q == '@')
            at = q;
    if (at) {
        if (!parse_userinfo(host, (size_t)(at - host), a)) {
            *why = bad_creds;
            memset(a, 0, sizeof(*a));
            return false;
        }
        host = at + 1;
    }
    slash = memchr(host, '/', (size_t)(end - host));
    if (slash) {
        if (!parse_num(slash + 1, (size_t)(end - slash - 1), 2147483647L, &db))
            return false;
        end = slash;
    }
    if (host < end && *host == '[') { /* [IPv6]:port */
        const char *rb = memchr(host, ']', (size_t)(end - host));
        if (!rb || rb + 1 >= end || rb[1] != ':')
            return false;
        colon = rb + 1;
        host++;
        hl = (size_t)(rb - host);
    } else {
        colon = NULL;
        for (const char *q = host; q < end; q++)
            if (*q == ':')
                colon = q;
        if (!colon)
            return false;
        hl = (size_t)(colon - host);
    }
    if (hl == 0 || hl >= sizeof(a->host) ||
        !parse_num(colon + 1, (size_t)(end - colon - 1), 65535, &port) || port == 0)
        return false;
    for (size_t i = 0; i < hl; i++)
        if (host[i] <= ' ' || host[i] >= 0x7f || host[i] == '/' || host[i] == ',')
            return false;
    memcpy(a->host, host, hl);
    a->host[hl] = '\0';
    a->port = (int)port;
    a->db = (int)db;
    bool v6 = memchr(a->host, ':', hl) != NULL;
    snprintf(a->label, sizeof(a->label), "%s%s%s:%d/%d", v6 ? "[" : "", a->host, v6 ? "]" : "",
             a->port, a->db);
    return true;
}

int cluster_parse_urls(const char *list, cluster_addr_t *out, int max, const char **why)
{
    int n = 0;
    const char *p = list;

    *why = bad_url;
    if (!p)
        return -1;
    for (;;) {
        while (*p == ' ')
            p++;
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len > 0 && p[len - 1] == ' ')
            len--;
        if (n == max) {
            *why = "too many Redis URLs";
            return -1;
        }
        if (!parse_url(p, len, &out[n], why))
            return -1;
        for (int i = 0; i < n; i++)
            if (strcmp(out[i].label, out[n].label) == 0) {
                *why = "the same Redis URL is listed twice";
                return -1;
            }
        n++;
        if (!e)
            break;
        p = e + 1;
    }
    *why = "";
    return n;
}

bool cluster_set_password(cluster_addr_t *a, int n, const char *password, const char **why)
{
    size_t len = password ? strlen(password) : 0;
    if (len > CLUSTER_PASS_MAX) {
        *why = "the Redis password is too long";
        return false;
    }
    for (int i = 0; i < n; i++) {
        if (len) {
            memcpy(a[i].pass, password, len + 1);
            a[i].pass_len = len;
        }
        if (a[i].user_len && !a[i].pass_len) {
            *why = "redis://USER@... names a user without a password: write "
                   "redis://USER:PASSWORD@HOST:PORT or give --redis-password "
                   "(GALE_REDIS_PASSWORD)";
            return false;
        }
    }
    *why = "";
    return true;
}

static void put(char *out, size_t cap, size_t *o, const char *s, size_t n)
{
    if (cap == 0)
        return;
    if (n > cap - 1 - *o)
        n = cap - 1 - *o;
    memcpy(out + *o, s, n);
    *o += n;
    out[*o] = '\0';
}

static bool is_scheme_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '-' || c == '.';
}

/* True if s (just after a ',') starts another URL: spaces, SCHEME://. */
static bool starts_url(const char *s)
{
    while (*s == ' ')
        s++;
    const char *p = s;
    while (is_scheme_char(*p))
        p++;
    return p > s && strncmp(p, "://", 3) == 0;
}

size_t cluster_mask_urls(char *out, size_t cap, const char *list)
{
    size_t o = 0;
    const char *s = list ? list : "";
    if (cap)
        out[0] = '\0';
    while (*s) {
        /* One URL: up to a ',' that starts another one (a password may hold ','). */
        const char *e = s;
        while (*e && !(*e == ',' && starts_url(e + 1)))
            e++;
        const char *cred = s, *at = NULL, *colon = NULL;
        for (const char *q = s; q + 2 < e; q++)
            if (q[0] == ':' && q[1] == '/' && q[2] == '/') {
                cred = q + 3;
                break;
            }
        for (const char *q = cred; q < e; q++)
            if (*q == '@')
                at = q;
        if (at) {
            colon = memchr(cred, ':', (size_t)(at - cred));
            put(out, cap, &o, s, (size_t)((colon ? colon + 1 : cred) - s));
            put(out, cap, &o, "***", 3);
            put(out, cap, &o, at, (size_t)(e - at));
        } else {
            put(out, cap, &o, s, (size_t)(e - s));
        }
        if (!*e)
            break;
        put(out, cap, &o, ",", 1);
        s = e + 1;
    }
    return o;
}

/* --- consistent hashing --------------------------------------------------- */

uint64_t cluster_hash64(const void *s, size_t len)
{
    const uint8_t *b = s;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

typedef struct {
    uint64_t point;
    uint64_t tie; /* hash of the label: orders equal points the same on every broker */
    uint8_t shard;
} vnode_t;

static int cmp_vnode(const void *a, const void *b)
{
    const vnode_t *x = a, *y = b;
    if (x->point != y->point)
        return x->point < y->point ? -1 : 1;
    return x->tie < y->tie ? -1 : x->tie > y->tie;
}

bool cluster_ring_init(cluster_ring_t *r, const char *const *labels, uint32_t n)
{
    memset(r, 0, sizeof(*r));
    if (n == 0 || n > CLUSTER_MAX_SHARDS)
        return false;
    uint32_t total = n * CLUSTER_RING_VNODES;
    vnode_t *v = malloc(sizeof(*v) * total);
    r->points = malloc(sizeof(*r->points) * total);
    r->shards = malloc(total);
    if (!v || !r->points || !r->shards) {
        free(v);
        cluster_ring_free(r);
        return false;
    }
    for (uint32_t s = 0; s < n; s++) {
        size_t ll = strlen(labels[s]);
        uint64_t tie = cluster_hash64(labels[s], ll);
        for (uint32_t k = 0; k < CLUSTER_RING_VNODES; k++) {
            char key[320];
            int kl = snprintf(key, sizeof(key), "%s#%u", labels[s], k);
            vnode_t *x = &v[s * CLUSTER_RING_VNODES + k];
            x->point = cluster_hash64(key, kl > 0 ? (size_t)kl : 0);
            x->tie = tie;
            x->shard = (uint8_t)s;
        }
    }
    qsort(v, total, sizeof(*v), cmp_vnode);
    for (uint32_t i = 0; i < total; i++) {
        r->points[i] = v[i].point;
        r->shards[i] = v[i].shard;
    }
    r->npoints = total;
    free(v);
    return true;
}

uint32_t cluster_ring_shard(const cluster_ring_t *r, const char *t, size_t len)
{
    uint64_t h = cluster_hash64(t, len);
    uint32_t lo = 0, hi = r->npoints;
    if (r->npoints == 0)
        return 0;
    while (lo < hi) { /* first point >= h */
        uint32_t mid = lo + (hi - lo) / 2;
        if (r->points[mid] < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    return r->shards[lo == r->npoints ? 0 : lo];
}

void cluster_ring_free(cluster_ring_t *r)
{
    free(r->points);
    free(r->shards);
    memset(r, 0, sizeof(*r));
}

/* --- duplicate filter ----------------------------------------------------- */

#define DEDUPE_PROBE 16

void cluster_dedupe_reset(cluster_dedupe_t *d)
{
    memset(d, 0, sizeof(*d));
}

bool cluster_dedupe_check(cluster_dedupe_t *d, uint64_t instance, uint64_t seq)
{
    size_t home = (size_t)(cluster_hash64(&instance, sizeof(instance)) % CLUSTER_DEDUPE_SLOTS);
    size_t victim = home;
    if (instance == 0)
        return false;
    d->tick++;
    for (size_t k = 0; k < DEDUPE_PROBE; k++) {
        size_t i = (home + k) % CLUSTER_DEDUPE_SLOTS;
        if (d->slots[i].instance == instance) {
            if (seq <= d->slots[i].seq)
                return false;
            d->slots[i].seq = seq;
            d->slots[i].used = d->tick;
            return true;
        }
        if (d->slots[i].instance == 0) {
            victim = i;
            break;
        }
        if (d->slots[i].used < d->slots[victim].used)
            victim = i;
    }
    /* Unknown origin: take a free slot of its neighbourhood, or the one used longest ago. */
    d->slots[victim].instance = instance;
    d->slots[victim].seq = seq;
    d->slots[victim].used = d->tick;
    return true;
}
