/*
 * netaddr: client addresses for --max-connections-per-ip and --trusted-proxies. Pure code
 * (no lws, no loop, no logging): the unit tests and the fuzz target fuzz_netaddr drive it.
 *
 * Every address is held as 16 bytes, IPv4 as its IPv4-mapped IPv6 form (::ffff:a.b.c.d),
 * so a peer reached over a dual-stack socket (::ffff:10.0.0.7) is the same address as
 * 10.0.0.7, and an IPv4 prefix /N is the mapped prefix /(96+N).
 */
#ifndef GALE_NETADDR_H
#define GALE_NETADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

typedef struct netaddr {
    uint8_t b[16]; /* network order; IPv4 as ::ffff:a.b.c.d */
} netaddr_t;

/** An address prefix: the addresses whose first `bits` bits (of the 16-byte form) are addr's. */
typedef struct netaddr_prefix {
    netaddr_t addr; /* bits past `bits` are zero */
    uint8_t bits;   /* 0..128; an IPv4 /N is 96+N */
} netaddr_prefix_t;

/** Longest text of an address from netaddr_format, NUL included (INET6_ADDRSTRLEN). */
#define NETADDR_TEXT_MAX 46

/**
 * Parses exactly s[0..len): an IPv4 dotted quad (four decimal numbers 0..255, no leading
 * zeros) or an IPv6 address (RFC 4291 text, an embedded dotted quad allowed; no zone, no
 * brackets). Returns false on anything else.
 */
bool netaddr_parse(const char *s, size_t len, netaddr_t *out);

/** The address of an AF_INET or AF_INET6 socket address; false for another family. */
bool netaddr_from_sockaddr(const struct sockaddr *sa, netaddr_t *out);

/** True for an IPv4 address (an IPv4-mapped one). */
bool netaddr_is_v4(const netaddr_t *a);

/** Writes a as text into buf (NETADDR_TEXT_MAX bytes): dotted for IPv4, RFC 5952 for IPv6. */
void netaddr_format(const netaddr_t *a, char buf[NETADDR_TEXT_MAX]);

/**
 * Parses one ADDR[/BITS] of s[0..len): BITS 0..32 for an address written as IPv4, 0..128
 * for one written as IPv6 (::ffff:10.0.0.0/104 is 10.0.0.0/8); no BITS: the one address. Host bits
 * past BITS are cleared (10.1.2.3/8 is 10.0.0.0/8). Returns NULL, or a static reason.
 */
const char *netaddr_parse_prefix(const char *s, size_t len, netaddr_prefix_t *out);

/** True if a is within p. */
bool netaddr_prefix_contains(const netaddr_prefix_t *p, const netaddr_t *a);

/**
 * Parses a list ADDR[/BITS][,ADDR[/BITS]...] (spaces around the commas allowed, empty items
 * skipped): the number of prefixes (at least 1), of which the first `cap` are written to out
 * (out may be NULL with cap 0, to validate and count). On an error returns -1 with *why (a
 * static reason) and the offending item at s[*bad_off .. *bad_off + *bad_len).
 */
int netaddr_parse_list(const char *s, netaddr_prefix_t *out, size_t cap, const char **why,
                       size_t *bad_off, size_t *bad_len);

/** True if a is within one of list[0..n). */
bool netaddr_list_contains(const netaddr_prefix_t *list, size_t n, const netaddr_t *a);

/** Where netaddr_client found the client address. */
typedef enum {
    NETADDR_FROM_PEER = 0,      /* the peer is not a trusted proxy: the peer */
    NETADDR_FROM_XFF = 1,       /* X-Forwarded-For: its right-most untrusted address */
    NETADDR_FROM_XFF_FIRST = 2, /* X-Forwarded-For: every address is trusted, the left-most */
    NETADDR_FROM_NO_XFF = 3,    /* a trusted peer without X-Forwarded-For: the peer */
    NETADDR_FROM_BAD_XFF = 4    /* a trusted peer whose X-Forwarded-For has a malformed
                                   address where it was read: the peer */
} netaddr_source_t;

/**
 * The client address of a request from `peer` carrying the X-Forwarded-For value
 * xff[0..xff_len) (xff NULL or empty: none; repeated headers joined with commas), given the
 * trusted proxies trusted[0..ntrusted), into *out:
 *
 *   - the peer, unless it is a trusted proxy;
 *   - else X-Forwarded-For read from the right (each proxy appends the address it got the
 *     request from): the first address that is not itself a trusted proxy;
 *   - every address trusted: the left-most one;
 *   - no header, an empty one, or a malformed item reached before an untrusted address: the
 *     peer.
 *
 * An item is an IPv4 or IPv6 address, optionally as "a.b.c.d:port", "[v6]" or "[v6]:port",
 * with spaces or tabs around it. Items left of the chosen one (written by the client or by
 * untrusted hops) are never read.
 */
netaddr_source_t netaddr_client(const netaddr_t *peer, const netaddr_prefix_t *trusted,
                                size_t ntrusted, const char *xff, size_t xff_len, netaddr_t *out);

#endif
