// TypeScript declarations of gale.js, the client of the gale WebSocket pub/sub broker.

export declare const VERSION: string;

/** The connection's state. 'connecting' covers the wait before a reconnect too. */
export type GaleState = 'connecting' | 'open' | 'closed';

export type GaleEncoding = 'json' | 'msgpack';

/** Error codes: the broker's ('bad_request', 'unknown_op', 'bad_topic', 'too_large',
 * 'forbidden', 'limit', 'unavailable', 'internal') and the client's own ('token': getToken()
 * failed, gave no string, or did not settle within `timeout`). */
export type GaleErrorCode =
  | 'bad_request'
  | 'unknown_op'
  | 'bad_topic'
  | 'too_large'
  | 'forbidden'
  | 'limit'
  | 'unavailable'
  | 'internal'
  | 'timeout'
  | 'closed'
  | 'disconnected'
  | 'queue_full'
  | 'codec'
  | 'token'
  | (string & {});

/** A MessagePack codec, such as the module `@msgpack/msgpack`. */
export interface GaleCodec {
  encode(value: unknown): Uint8Array;
  decode(bytes: Uint8Array): unknown;
}

export interface GaleOptions {
  /** Sent as the query parameter `token` (of the first connection, when getToken is given
   * too). */
  token?: string;
  /** Gives a token (a JWT) for each new connection and, while connected, the new tokens
   * the client sends (`refresh`) before the current one expires: at 80% of its lifetime or
   * 30 s before its `exp`, whichever comes first (see tokenRefreshDelay). A refused
   * refresh is tried again with backoff until the token expires. With getToken a close
   * with 1008 (token expired) reconnects instead of ending the client. Called with no
   * argument; must settle within `timeout`. */
  getToken?: () => string | Promise<string>;
  /** 'json' (default) or 'msgpack'; msgpack needs `codec` or the package @msgpack/msgpack. */
  encoding?: GaleEncoding;
  /** A MessagePack codec; without it gale.js imports '@msgpack/msgpack' when needed. */
  codec?: GaleCodec;
  /** ms before an unanswered request (or a queued publish) rejects with 'timeout'. Default 10000. */
  timeout?: number;
  /** First reconnect delay in ms. Default 250. */
  minDelay?: number;
  /** Cap of the exponential reconnect delay in ms. Default 15000. */
  maxDelay?: number;
  /** Each delay is scaled by a random factor in [1 - jitter, 1]. Default 0.5. */
  jitter?: number;
  /** Publishes (and history and presence calls) held while not connected; more reject
   * with 'queue_full'. Default 1000. */
  maxQueue?: number;
  /** ms of silence after which a ping checks the connection; 0 turns it off. Default 25000. */
  heartbeat?: number;
  /** A WebSocket implementation, where there is no global one. */
  WebSocket?: unknown;
  /** Every publish carries a generated `mid` (a random per-client prefix and a counter),
   * so that one whose ack the connection took with it is sent again after the reconnect
   * and delivered once. false: only publishes given a mid carry one. Default true. */
  idempotent?: boolean;
  /** ms without count-only presence messages after which the member list of a topic past
   * the broker's --presence-events-max is read again (at the latest 10 x this after the
   * first such message). Default 2000. */
  presenceDelay?: number;
}

/** The broker's greeting. */
export interface GaleHello {
  op: 'hello';
  v: number;
  node: string;
  /** This connection's id, unique in the cluster: "<16 lowercase hex>-<n>". */
  conn: string;
  max_msg: number;
}

/** A stream position of a topic with history: its epoch and the offset of a message in
 * it (1 for the epoch's first message; 0: none yet). */
export interface GalePosition {
  ep: string;
  off: number;
}

/** The broker's answer to a publish. */
export interface GaleAck {
  op: 'ack';
  id: number;
  /** The publish's mid (generated, or the one given); absent with idempotent: false. */
  mid?: string;
  /** On a topic with history: the stream position the message got. */
  ep?: string;
  off?: number;
  /** true: the broker had this mid for this topic already and did not deliver it again
   * (off is then the original's). */
  dup?: boolean;
}

export interface GalePublishOptions {
  /** Idempotency key: 1 to 64 bytes of UTF-8, scoped to the topic, remembered by the broker
   * for its dedup window (at least 2 minutes). Default: a generated one. */
  mid?: string;
  /** A topic where the publisher wants answers: every subscriber's message carries it
   * (NATS request/reply). */
  reply?: string;
}

/** What a handler learns about a message besides its data: its stream position, on a
 * topic with history, and the publisher's reply topic, when it named one. */
export interface GaleMessageInfo {
  ep?: string;
  off?: number;
  reply?: string;
}

/** A subscription is back after a reconnect, or was made with `since`. */
export interface GaleRecovery {
  /** The pattern or topic, as subscribed. */
  topic: string;
  /** true: every missed message has been replayed (to the handlers, before this call).
   * false: messages were missed for good (another epoch, expired or displaced, a pattern,
   * a topic without history): reload the state. */
  recovered: boolean;
  /** The position the broker reported (absent on topics without history): the last
   * message replayed, or the stream's current top. */
  ep?: string;
  off?: number;
}

/** A connection present on a topic (holding a sub of exactly it). */
export interface GaleMember<I = any> {
  /** The connection's id, unique in the cluster ("<16 hex>-<n>"; compare with
   * GaleClient.conn to find this client). */
  conn: string;
  /** The token's `sub` claim (brokers with tokens). */
  user?: string;
  /** The token's `gale.info` claim, or on a broker without tokens the `info` given to
   * subscribe(). */
  info?: I;
}

/** The broker's answer to presence(). */
export interface GalePresence<I = any> {
  /** How many connections are present (exact). */
  count: number;
  /** Them, at most the broker's --presence-list-max. */
  members: GaleMember<I>[];
}

/** The member list the client keeps for a subscription with presence. */
export interface GalePresenceState<I = any> {
  topic: string;
  /** How many are present: from the last list read, the events since, or the last
   * count-only message. */
  count: number;
  members: GaleMember<I>[];
  /** true: members is the whole list, followed event by event. false: not connected, a
   * count-only message came (the topic is past the broker's --presence-events-max; the
   * list is read again once they stop for presenceDelay), or the broker capped the list
   * (count > members.length). */
  exact: boolean;
}

export interface GaleSubscribeOptions<I = any> {
  /** Resume from this position (concrete topics only): the last message the application
   * has, e.g. saved from position() or a handler's info. The broker replays what came
   * after it before the ack. Counts when this call creates the subscription. */
  since?: GalePosition;
  /** Called after the ack of a subscription made with `since`, and each time the
   * subscription is made again after a reconnect; before subscribe() resolves. */
  onRecover?: (recovery: GaleRecovery) => void;
  /** Concrete topics the broker has --presence for (else the sub fails with
   * 'bad_request'): also receive join/leave events; the client keeps the member list
   * (members()), read before subscribe() resolves and again after every reconnect (the
   * sub is made again with the same presence and info). Implied by onJoin, onLeave and
   * onPresence. Asked for on a topic subscribed without it, the sub is sent again with
   * presence: true; kept until the topic is unsubscribed. */
  presence?: boolean;
  /** On a broker without tokens: this connection's info as a member of the topic (with
   * tokens it comes from the token's gale.info claim, and the broker refuses this with
   * 'forbidden'). Sent with every sub of the topic; counts when this call creates the
   * subscription. */
  info?: Record<string, unknown>;
  /** A member was added to the list: a join event (not for a conn listed already), or
   * found when the list is read again (after a reconnect, after count-only messages; when
   * both lists are complete). Never this client's own connections. */
  onJoin?: (member: GaleMember<I>, topic: string) => void;
  /** A member was removed from the list: a leave event (not for a conn not listed), or
   * gone when the list is read again. Never this client's own connections. */
  onLeave?: (member: GaleMember<I>, topic: string) => void;
  /** After every change of the list or the count: the list read, a join or leave applied,
   * a count-only message. */
  onPresence?: (state: GalePresenceState<I>) => void;
}

export interface GaleHistoryOptions {
  /** At most this many of the latest messages (the broker's default: 100; it caps it). */
  limit?: number;
}

export interface GaleHistoryMessage<T = any> {
  off: number;
  /** Binary data as a Uint8Array, as handlers get it. */
  data: T;
}

export interface GaleHistory<T = any> {
  /** The stream's epoch; undefined on a topic without history. */
  ep?: string;
  /** The stream's current top (0 without history). */
  off: number;
  /** Oldest first. */
  messages: GaleHistoryMessage<T>[];
}

export interface GaleConnectingInfo {
  attempt: number;
  /** ms until this attempt. */
  delay: number;
  /** Close code of the connection that was lost (1001: the broker shut down). */
  code?: number;
  reason?: string;
}

export interface GaleCloseInfo {
  code: number;
  reason: string;
}

export type GaleHandler<T = any> = (data: T, topic: string, info: GaleMessageInfo) => void;

/** Removes a handler; unsubscribes the pattern on the broker when it was the last one. */
export type GaleUnsubscribe = () => Promise<void>;

export interface GaleEvents {
  connecting: (info: GaleConnectingInfo) => void;
  open: (hello: GaleHello) => void;
  disconnect: (info: GaleCloseInfo) => void;
  closed: (info: GaleCloseInfo) => void;
  state: (state: GaleState, detail: GaleConnectingInfo | GaleHello | GaleCloseInfo) => void;
  /** For every subscription, as its onRecover (see GaleSubscribeOptions). */
  recover: (recovery: GaleRecovery) => void;
  /** For every subscription with presence, as its onJoin, onLeave and onPresence. */
  join: (member: GaleMember, topic: string) => void;
  leave: (member: GaleMember, topic: string) => void;
  presence: (state: GalePresenceState) => void;
  error: (error: Error) => void;
}

/** A request as sent to the broker. */
export interface GaleRequest {
  op: string;
  id?: number;
  topic?: string;
  mid?: string;
  [field: string]: unknown;
}

export declare class GaleError extends Error {
  constructor(code: GaleErrorCode, message?: string, request?: object);
  readonly name: 'GaleError';
  readonly code: GaleErrorCode;
  /** The request the error answers, when there is one (a publish's carries its mid). */
  request?: GaleRequest;
  /** A subscription the broker dropped (a refreshed token no longer allows it; code
   * 'forbidden'): the client no longer holds it either. */
  topic?: string;
}

export declare class GaleClient {
  constructor(url: string | URL | undefined, options?: GaleOptions);
  readonly url: string;
  readonly encoding: GaleEncoding;
  readonly state: GaleState;
  /** The current connection's hello, or null. */
  readonly hello: GaleHello | null;
  /** The current connection's id (as members list it), or null while not connected. */
  readonly conn: string | null;
  /** Resolves on the broker's ack (with presence: once the member list is read too) with
   * a function that unsubscribes this handler. */
  subscribe<T = any, I = any>(
    pattern: string,
    handler: GaleHandler<T>,
    options?: GaleSubscribeOptions<I>,
  ): Promise<GaleUnsubscribe>;
  /** Resolves on the broker's ack; rejects with a GaleError carrying the error code (a
   * rejected publish's `request.mid` lets the application retry it idempotently). */
  publish(topic: string, data: unknown, options?: GalePublishOptions): Promise<GaleAck>;
  /** The messages the broker holds for a topic with history, oldest first. */
  history<T = any>(topic: string, options?: GaleHistoryOptions): Promise<GaleHistory<T>>;
  /** Who is present on a concrete topic with presence (the broker's --presence); waits for
   * the connection like a publish. Rejects with 'bad_request' (no presence), 'bad_topic'
   * (a pattern), 'forbidden'. */
  presence<I = any>(topic: string): Promise<GalePresence<I>>;
  /** The member list kept for a topic subscribed with presence, or null. */
  members<I = any>(topic: string): GalePresenceState<I> | null;
  /** The position of the last message received on a subscribed concrete topic with
   * history (or its sub's ack, or the `since` given), or null. */
  position(topic: string): GalePosition | null;
  /** Round trip time in ms. */
  ping(): Promise<number>;
  /** Patterns subscribed or being subscribed. */
  patterns(): string[];
  /** Sends a new token for this connection (`refresh`): `token`, else getToken()'s.
   * Resolves once the broker took it (its expiry and permissions are the connection's from
   * then on; subscriptions it no longer allows are dropped, each reported as an 'error'
   * event with `topic`); rejects with 'bad_request' (refused: expired, badly signed, ...)
   * or 'forbidden' (another user's token), the connection keeping its token, or with
   * 'disconnected' (the token is then used by the next connection). */
  refreshToken(token?: string): Promise<void>;
  on<E extends keyof GaleEvents>(event: E, listener: GaleEvents[E]): () => void;
  off<E extends keyof GaleEvents>(event: E, listener: GaleEvents[E]): void;
  /** Closes for good; pending and queued requests reject with 'closed'. */
  close(): Promise<void>;
}

/** Connects (in the background, reconnecting until close()). In a browser, url defaults
 * to /ws on the page's host. */
export declare function connect(url?: string | URL, options?: GaleOptions): GaleClient;

/** Whether a concrete topic matches a pattern (`*`: one segment, final `>`: one or more). */
export declare function matchPattern(pattern: string, topic: string): boolean;

/** When gale.js refreshes a token (a JWT; its payload is read, not verified): ms from now
 * (0 once expired), or null for a token without a numeric `exp`. At 80% of its lifetime
 * (from `iat`, else from now) or 30 s before `exp`, whichever comes first, but not sooner
 * than min(5 s, half the time left). */
export declare function tokenRefreshDelay(token: string, now?: number): number | null;

/** Reconnect delay in ms for a 0-based attempt. */
export declare function backoffDelay(
  attempt: number,
  options?: Pick<GaleOptions, 'minDelay' | 'maxDelay' | 'jitter'>,
  random?: () => number,
): number;
