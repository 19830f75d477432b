// A WebSocket connection to one channel of the realtime server, for browsers
// (and any runtime with a WHATWG WebSocket). No dependencies.
//
// It keeps the platform client's interface (`on(type, fn)`, `send()` queueing
// while disconnected, a `ping` every 30 s, one event per frame type) and fixes
// its reconnection: the token and `?since=` are sent again, 1012/1013 and
// abnormal closes are retried with capped full-jitter backoff and no attempt
// limit, refusals (4001/4003/4004/1008) stop it, and replayed events are
// dropped by `seq`. See docs/client.md.

// Closes that another attempt cannot fix: bad token, not allowed, no such
// room or consultation, policy (origin, abuse). Reported, never retried.
export const REFUSED = new Map([
  [1008, "policy violation"],
  [4001, "not authenticated"],
  [4003, "not allowed"],
  [4004, "not found"],
]);

const OPEN = 1;

export class WebSocketConnection {
  #listeners = new Map();
  #ws = null;
  #queue = [];
  #heartbeat = null;
  #retryTimer = null;
  #attempt = 0;
  #stopped = true;
  #seqKnown = false;

  /**
   * @param {string} url absolute ws:// or wss:// URL of the channel
   * @param {object} [options]
   * @param {string} [options.token] JWT sent as `?token=` on every (re)connect
   * @param {boolean} [options.resume=true] reconnect with `?since=<lastSeq>` once a seq is known
   * @param {number} [options.heartbeatMs=30000] `ping` interval
   * @param {number} [options.baseDelayMs=500] first backoff ceiling
   * @param {number} [options.maxDelayMs=30000] backoff ceiling cap
   * @param {number} [options.maxQueue=500] frames kept while disconnected (oldest dropped)
   * @param {Function} [options.WebSocket] the WebSocket constructor
   * @param {Function} [options.random] a [0, 1) source (for the jitter)
   */
  constructor(url, options = {}) {
    this.url = url;
    this.token = options.token ?? null;
    this.resume = options.resume ?? true;
    this.heartbeatMs = options.heartbeatMs ?? 30000;
    this.baseDelayMs = options.baseDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 30000;
    this.maxQueue = options.maxQueue ?? 500;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.random = options.random ?? Math.random;
    // Highest `seq` seen on this connection's stream (chat room, notifications).
    this.lastSeq = 0;
  }

  // ---- events ------------------------------------------------------------------

  /** Listen to a frame type, or to `message` (every frame), `connected`,
   * `disconnected`, `reconnecting`, `refused`, `transport_error`. Returns an unsubscribe function. */
  on(type, fn) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this.#listeners.get(type)?.delete(fn);
  }

  emit(type, data) {
    for (const fn of [...(this.#listeners.get(type) ?? [])]) {
      try {
        fn(data);
      } catch (error) {
        // One broken listener must not starve the others.
        console.error(`listener for ${type} failed`, error);
      }
    }
  }

  // ---- lifecycle ---------------------------------------------------------------

  connect(token) {
    if (token !== undefined) this.token = token;
    this.#stopped = false;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (this.#ws) return;
    let ws;
    try {
      ws = new this.WebSocket(this.#connectUrl());
    } catch (error) {
      this.emit("transport_error", error);
      this.#scheduleRetry();
      return;
    }
    this.#ws = ws;
    ws.onopen = () => {
      this.emit("connected", { url: this.url });
      this.#startHeartbeat();
      this.#flush();
    };
    ws.onmessage = (event) => this.#receive(event.data);
    // Always followed by `close`, which decides what happens next.
    ws.onerror = (event) => this.emit("transport_error", event);
    ws.onclose = (event) => this.#closed(ws, event);
  }

  /** Close for good (code 1000); nothing reconnects it but `connect()`. */
  disconnect() {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#stopHeartbeat();
    const ws = this.#ws;
    this.#ws = null;
    if (ws) ws.close(1000, "client disconnect");
  }

  /** A fresh token: used by later reconnects, and sent now (`auth`) when connected. */
  setToken(token) {
    this.token = token;
    if (this.isConnected()) this.#write({ type: "auth", token });
  }

  isConnected() {
    return this.#ws?.readyState === OPEN;
  }

  // ---- frames ------------------------------------------------------------------

  /** Send a frame now, or queue it until the connection is open again. */
  send(message) {
    if (this.isConnected() && this.#write(message)) return;
    this.#queue.push(message);
    if (this.#queue.length > this.maxQueue) this.#queue.shift();
  }

  #write(message) {
    try {
      this.#ws.send(JSON.stringify(message));
      return true;
    } catch (error) {
      this.emit("transport_error", error);
      return false;
    }
  }

  #flush() {
    const queued = this.#queue;
    this.#queue = [];
    for (const message of queued) this.send(message);
  }

  #receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (error) {
      console.error("unparsable frame", error);
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    // The server answered: authenticated and allowed, so the backoff starts over.
    this.#attempt = 0;
    if (!this.#track(frame)) return;
    this.emit("message", frame);
    if (typeof frame.type === "string") this.emit(frame.type, frame);
  }

  /** Follow the stream's `seq`; false for an event already seen (a replay overlap). */
  #track(frame) {
    if (frame.type === "resync_required") {
      // The snapshot that follows says where the stream is now.
      this.#seqKnown = false;
      this.lastSeq = 0;
      return true;
    }
    if (typeof frame.seq === "number") {
      if (this.#seqKnown && frame.seq <= this.lastSeq) return false;
      this.lastSeq = frame.seq;
      this.#seqKnown = true;
      return true;
    }
    if (typeof frame.last_seq === "number") {
      // A snapshot (`message_history`, `bulk_update`) is exact at `last_seq`.
      this.lastSeq = frame.last_seq;
      this.#seqKnown = true;
    }
    return true;
  }

  #connectUrl() {
    const url = new URL(this.url);
    if (this.token) url.searchParams.set("token", this.token);
    // Tells the server this client comes back after a 1012: on a restart it
    // gets 1012, not the dropped connection the platform's client needs.
    url.searchParams.set("resume", "1");
    if (this.resume && this.#seqKnown) url.searchParams.set("since", String(this.lastSeq));
    return url.toString();
  }

  // ---- closing and coming back ---------------------------------------------------

  #closed(ws, event) {
    if (ws !== this.#ws) return; // an old socket, replaced or disconnected on purpose
    this.#ws = null;
    this.#stopHeartbeat();
    const info = { code: event.code, reason: event.reason, wasClean: event.wasClean };
    this.emit("disconnected", info);
    if (this.#stopped) return;
    if (REFUSED.has(event.code)) {
      this.#stopped = true;
      this.emit("refused", { ...info, meaning: REFUSED.get(event.code) });
      return;
    }
    // 1012 (restart), 1013 (slow consumer, try again), 1006 (network), 1011... all retried.
    this.#scheduleRetry();
  }

  #scheduleRetry() {
    if (this.#stopped || this.#retryTimer) return;
    // Full jitter: a random delay up to an exponentially growing, capped ceiling,
    // so a restarted server is not hit by every client at the same instant.
    const ceiling = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** this.#attempt);
    const delayMs = Math.floor(this.random() * ceiling);
    this.#attempt += 1;
    this.emit("reconnecting", { attempt: this.#attempt, delayMs });
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      if (!this.#stopped) this.connect();
    }, delayMs);
  }

  #startHeartbeat() {
    this.#stopHeartbeat();
    this.#heartbeat = setInterval(() => {
      if (this.isConnected()) this.#write({ type: "ping" });
    }, this.heartbeatMs);
  }

  #stopHeartbeat() {
    clearInterval(this.#heartbeat);
    this.#heartbeat = null;
  }
}
