/*
 * iplimit: WebSocket connections held per client address (--max-connections-per-ip).
 * A hash table of the addresses holding at least one connection: a slot is taken when an
 * upgrade is let in and given back when its connection is gone, and an address's entry is
 * freed when its count falls to zero, so the table never holds more entries than there are
 * connections. Keyed with a random seed (SipHash-1-3), O(1) per operation. Pure code: no
 * lws, no loop, no logging.
 */
#ifndef GALE_IPLIMIT_H
#define GALE_IPLIMIT_H

#include "netaddr.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct iplimit iplimit_t;

/** One address's entry: what a connection holds while it counts against its address. */
typedef struct iplimit_entry {
    struct iplimit_entry *next; /* hash chain */
    netaddr_t addr;
    uint32_t count;      /* connections holding a slot */
    uint32_t suppressed; /* refusals not logged since last_log_ms (iplimit_refused) */
    uint64_t last_log_ms;
    bool logged; /* last_log_ms is set */
} iplimit_entry_t;

/** A table allowing `max` connections per address (at least 1); NULL when out of memory. */
iplimit_t *iplimit_new(uint32_t max);

/** Frees t and every entry left (NULL: nothing). */
void iplimit_free(iplimit_t *t);

/** The entry of a, or NULL when a holds no connection. */
iplimit_entry_t *iplimit_find(const iplimit_t *t, const netaddr_t *a);

/** True if a holds `max` connections already. */
bool iplimit_full(const iplimit_t *t, const netaddr_t *a);

/**
 * Takes a slot for a: its entry, the count raised. NULL (nothing taken) when a holds `max`
 * already (*full set) or when out of memory (*full clear).
 */
iplimit_entry_t *iplimit_acquire(iplimit_t *t, const netaddr_t *a, bool *full);

/** Gives back a slot iplimit_acquire took; the entry is freed at zero. */
void iplimit_release(iplimit_t *t, iplimit_entry_t *e);

/**
 * Notes a refusal of e's address at now_ms: true when it is to be logged (the first one, or
 * the first `interval_ms` or more after the last logged), with *suppressed the refusals not
 * logged in between; false (counted) otherwise.
 */
bool iplimit_refused(iplimit_entry_t *e, uint64_t now_ms, uint64_t interval_ms,
                     uint32_t *suppressed);

/** Addresses holding at least one connection. */
uint32_t iplimit_addresses(const iplimit_t *t);

/** Connections counted over all addresses. */
uint64_t iplimit_connections(const iplimit_t *t);

#endif
