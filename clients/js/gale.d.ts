// TypeScript declarations of gale.js, the client of the gale WebSocket pub/sub broker.

export declare const VERSION: string;

/** The connection's state. 'connecting' covers the wait before a reconnect too. */
export type GaleState = 'connecting' | 'open' | 'closed';

export type GaleEncoding = 'json' | 'msgpack';

/** Error codes: the broker's ('bad_request', 'unknown_op', 'bad_topic', 'too_large',
 * 'forbidden', 'limit', 'unavailable', 'internal') and the client's own. */
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
  | (string & {});

/** A MessagePack codec, such as the module `@msgpack/msgpack`. */
export interface GaleCodec {
  encode(value: unknown): Uint8Array;
  decode(bytes: Uint8Array): unknown;
}

export interface GaleOptions {
  /** Sent as the query parameter `token`. */
  token?: string;
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
  /** Publishes held while not connected; more reject with 'queue_full'. Default 1000. */
  maxQueue?: number;
  /** ms of silence after which a ping checks the connection; 0 turns it off. Default 25000. */
  heartbeat?: number;
  /** A WebSocket implementation, where there is no global one. */
  WebSocket?: unknown;
}

/** The broker's greeting. */
export interface GaleHello {
  op: 'hello';
  v: number;
  node: string;
  conn: string;
  max_msg: number;
}

export interface GaleAck {
  op: 'ack';
  id: number;
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

export type GaleHandler<T = any> = (data: T, topic: string) => void;

/** Removes a handler; unsubscribes the pattern on the broker when it was the last one. */
export type GaleUnsubscribe = () => Promise<void>;

export interface GaleEvents {
  connecting: (info: GaleConnectingInfo) => void;
  open: (hello: GaleHello) => void;
  disconnect: (info: GaleCloseInfo) => void;
  closed: (info: GaleCloseInfo) => void;
  state: (state: GaleState, detail: GaleConnectingInfo | GaleHello | GaleCloseInfo) => void;
  error: (error: Error) => void;
}

export declare class GaleError extends Error {
  constructor(code: GaleErrorCode, message?: string, request?: object);
  readonly name: 'GaleError';
  readonly code: GaleErrorCode;
  /** The request the error answers, when there is one. */
  request?: object;
}

export declare class GaleClient {
  constructor(url: string | URL | undefined, options?: GaleOptions);
  readonly url: string;
  readonly encoding: GaleEncoding;
  readonly state: GaleState;
  /** The current connection's hello, or null. */
  readonly hello: GaleHello | null;
  /** Resolves on the broker's ack with a function that unsubscribes this handler. */
  subscribe<T = any>(pattern: string, handler: GaleHandler<T>): Promise<GaleUnsubscribe>;
  /** Resolves on the broker's ack; rejects with a GaleError carrying the error code. */
  publish(topic: string, data: unknown): Promise<GaleAck>;
  /** Round trip time in ms. */
  ping(): Promise<number>;
  /** Patterns subscribed or being subscribed. */
  patterns(): string[];
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

/** Reconnect delay in ms for a 0-based attempt. */
export declare function backoffDelay(
  attempt: number,
  options?: Pick<GaleOptions, 'minDelay' | 'maxDelay' | 'jitter'>,
  random?: () => number,
): number;
