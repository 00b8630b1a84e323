/*
 * topics: the subscription index. A trie of topic segments holding, at each
 * node, the subscriptions whose pattern ends there.
 *
 * Matching semantics (docs/PROTOCOL.md "Topics"): a pattern segment `*` matches
 * exactly one topic segment; a final `>` matches one or more. A concrete
 * topic `a.b` is reached by walking a -> b; at every level the walk also
 * follows the `*` child, and collects the `>` child's subscriptions when at
 * least one topic segment remains. Children are found through one hash table
 * keyed by (parent node, segment), so a publish costs O(segments x wildcard
 * branches + matching subscriptions), independent of how many topics exist.
 *
 * Each owner (a connection) embeds a topics_owner_t: the head of its own list
 * of subscriptions (back-pointers into the trie), so dropping an owner costs
 * O(its subscriptions); and a mark used to visit each owner exactly once per
 * match, however many of its patterns match.
 *
 * Not thread-safe: a loop's index is its own; topics_match_shared alone only reads (the
 * loops' shared index, loops.c, under a read lock).
 */
#ifndef GALE_TOPICS_H
#define GALE_TOPICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct topics topics_t;
typedef struct topics_sub topics_sub_t;

/** Per-owner state, embedded in the owner (zero-initialise it). */
typedef struct topics_owner {
    topics_sub_t *subs; /* this owner's subscriptions (private list) */
    uint32_t nsubs;     /* how many it holds */
    uint32_t _mark;     /* private: last match epoch that visited it */
} topics_owner_t;

/** Called once per distinct owner matching a topic. */
typedef void (*topics_visit_fn)(topics_owner_t *owner, void *arg);

/** Creates an empty index; NULL on allocation failure. */
topics_t *topics_new(void);

/** Frees the index and every subscription in it; owners must not be used with it afterwards. */
void topics_free(topics_t *t);

/** Result of topics_subscribe. */
typedef enum {
    TOPICS_ADDED = 0,    /* new subscription */
    TOPICS_EXISTS = 1,   /* owner already held this pattern: nothing changed */
    TOPICS_NOMEM = -1,   /* allocation failed: nothing changed */
    TOPICS_INVALID = -2, /* not a pattern (no segment): nothing changed */
} topics_result_t;

/**
 * Subscribes owner to pattern p[0..len) (a valid pattern, as checked by
 * gale_pattern_valid). When first is not NULL, *first is set to true if no
 * owner held this pattern before (the pattern became live on this node).
 */
topics_result_t topics_subscribe(topics_t *t, topics_owner_t *owner, const char *p, size_t len,
                                 bool *first);

/**
 * Removes owner's subscription to pattern p[0..len). Returns true if it held
 * it. When last is not NULL, *last is set to true if no owner holds the
 * pattern any more.
 */
bool topics_unsubscribe(topics_t *t, topics_owner_t *owner, const char *p, size_t len, bool *last);

/**
 * True if owner holds pattern p[0..len), in O(segments + owner's subscriptions).
 * Lets a caller enforce a per-owner limit without refusing a repeated subscribe.
 */
bool topics_holds(const topics_t *t, const topics_owner_t *owner, const char *p, size_t len);

/**
 * Calls fn(p, len, arg) with each pattern owner holds, in no particular order; p is
 * NUL-terminated and valid during the call only. fn must not subscribe or unsubscribe.
 * Returns how many patterns owner holds. O(their number x their length).
 */
size_t topics_owner_each(const topics_t *t, const topics_owner_t *owner,
                         void (*fn)(const char *p, size_t len, void *arg), void *arg);

/**
 * Removes all of owner's subscriptions in O(their number). When on_last is
 * not NULL it is called with each pattern that no owner holds any more.
 */
void topics_unsubscribe_all(topics_t *t, topics_owner_t *owner,
                            void (*on_last)(const char *p, size_t len, void *arg), void *arg);

/**
 * Calls visit(owner, arg) once for each distinct owner holding at least one
 * pattern that matches concrete topic[0..len). Returns the number of owners
 * visited. visit must not subscribe or unsubscribe.
 */
size_t topics_match(topics_t *t, const char *topic, size_t len, topics_visit_fn visit, void *arg);

/**
 * Like topics_match, but read-only, so that several threads may match at once (under a
 * read lock of their own): visit is called once per matching subscription, so an owner
 * holding several matching patterns is visited several times. Returns the visits.
 */
size_t topics_match_shared(const topics_t *t, const char *topic, size_t len, topics_visit_fn visit,
                           void *arg);

/** Number of distinct patterns held by at least one owner. */
size_t topics_count(const topics_t *t);

/** Total number of subscriptions (owner, pattern) held. */
size_t topics_subscriptions(const topics_t *t);

/*
 * Test hooks, for tests/unit/test_topics.c only (never called by the broker).
 */

/** Sets the match epoch counter, so that tests can reach its wrap-around. */
void topics__set_epoch(topics_t *t, uint32_t epoch);

/**
 * Makes t's allocation after the next `after` ones fail, once (fault
 * injection for TOPICS_NOMEM); a negative `after` turns it off.
 */
void topics__fail_alloc(topics_t *t, long after);

/** Reports the number of trie nodes (root excluded) and of hash table slots. */
void topics__stats(const topics_t *t, size_t *nodes, size_t *slots);

#endif
