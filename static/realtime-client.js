// Built from clients/js/src/client.ts by `npm run bundle` (in clients/js). Do not edit:
// change the TypeScript source and run it again. See docs/client.md.
// A WebSocket connection to one channel of the realtime server, for browsers and
// Node (any WHATWG-style WebSocket: the browser's, or the `ws` package's). One
// module without dependencies: `npm run bundle` copies its build to
// static/realtime-client.js, which the demo page loads as it is.
//
// It keeps the platform client's interface (`on(type, fn)`, `send()` queueing
// while disconnected, a `ping` heartbeat, one event per frame type) and fixes
// its reconnection: the token and `?since=`/`?epoch=` are sent again, every
// close but a refusal is retried with capped full-jitter backoff and no attempt
// limit, a server restart (1012) promptly, replayed events are dropped by `seq`,
// and `getToken()` supplies a fresh token on `token_expiring` and after 4001.
// See docs/client.md.
/** Closes that another attempt with the same token cannot fix. Reported as `refused`, never retried
 * (4001 is retried once with a fresh token when `getToken` is given). */
export const REFUSED = new Map([
    [1008, "policy violation"],
    [4001, "not authenticated"],
    [4003, "not allowed"],
    [4004, "not found"],
]);
export const NOT_AUTHENTICATED = 4001;
export const SERVER_RESTARTING = 1012;
const OPEN = 1;
/** The delay before reconnect attempt `attempt` (0-based): full jitter under a capped exponential ceiling. */
export function backoffDelay(attempt, baseDelayMs, maxDelayMs, random) {
    const ceiling = Math.min(maxDelayMs, baseDelayMs * 2 ** Math.min(attempt, 52));
    return Math.floor(random() * ceiling);
}
export class WebSocketConnection {
    url;
    token;
    resume;
    heartbeatMs;
    baseDelayMs;
    maxDelayMs;
    restartDelayMs;
    maxQueue;
    #getToken;
    #WebSocket;
    #random;
    #listeners = new Map();
    #ws = null;
    #queue = [];
    #heartbeat = null;
    #retryTimer = null;
    #attempt = 0;
    #stopped = true;
    #opening = false;
    // Position in the connection's stream (chat room, notifications): resumed from.
    #lastSeq = 0;
    #seqKnown = false;
    #epoch = null;
    // The current socket's token came from `getToken` just before it opened, and whether
    // the server answered on it: a 4001 then means the fresh token itself was refused.
    #tokenFresh = false;
    #answered = false;
    constructor(url, options = {}) {
        this.url = url;
        this.token = options.token ?? null;
        this.resume = options.resume ?? true;
        this.heartbeatMs = options.heartbeatMs ?? 30000;
        this.baseDelayMs = options.baseDelayMs ?? 500;
        this.maxDelayMs = options.maxDelayMs ?? 30000;
        this.restartDelayMs = options.restartDelayMs ?? 1000;
        this.maxQueue = options.maxQueue ?? 500;
        this.#getToken = options.getToken;
        this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
        this.#random = options.random ?? Math.random;
    }
    /** The highest `seq` seen on this connection's stream (or a snapshot's `last_seq`). */
    get lastSeq() {
        return this.#lastSeq;
    }
    /** The stream's epoch, from the last snapshot or `resync_required`; null before one. */
    get epoch() {
        return this.#epoch;
    }
    // ---- events ------------------------------------------------------------------
    /** Listen to a frame type, to `message` (every frame), or to a lifecycle event
     * (`connected`, `disconnected`, `reconnecting`, `refused`, `transport_error`,
     * `token_refresh_failed`). Returns an unsubscribe function. */
    on(type, fn) {
        let set = this.#listeners.get(type);
        if (!set)
            this.#listeners.set(type, (set = new Set()));
        set.add(fn);
        return () => this.off(type, fn);
    }
    off(type, fn) {
        this.#listeners.get(type)?.delete(fn);
    }
    #emit(type, data) {
        for (const fn of [...(this.#listeners.get(type) ?? [])]) {
            try {
                fn(data);
            }
            catch (error) {
                // One broken listener must not starve the others.
                console.error(`listener for ${type} failed`, error);
            }
        }
    }
    // ---- lifecycle ---------------------------------------------------------------
    /** Open (and keep open) the connection; `token` replaces the current one. */
    connect(token) {
        if (token !== undefined)
            this.token = token;
        this.#stopped = false;
        this.#clearRetry();
        if (this.#ws || this.#opening)
            return;
        if (!this.token && this.#getToken) {
            void this.#openWithFreshToken();
            return;
        }
        this.#open(false);
    }
    /** Close for good (code 1000); nothing reconnects it but `connect()`. */
    disconnect() {
        this.#stopped = true;
        this.#clearRetry();
        this.#stopHeartbeat();
        const ws = this.#ws;
        this.#ws = null;
        if (ws)
            ws.close(1000, "client disconnect");
    }
    /** A fresh token: used by later reconnects, and sent now (`auth`) when connected. */
    setToken(token) {
        this.token = token;
        if (this.isConnected())
            this.#write({ type: "auth", token });
    }
    isConnected() {
        return this.#ws?.readyState === OPEN;
    }
    #open(tokenFresh) {
        const WebSocketClass = this.#WebSocket;
        let ws;
        try {
            if (!WebSocketClass)
                throw new TypeError("no WebSocket: pass the `WebSocket` option (in Node 20, `ws`)");
            ws = new WebSocketClass(this.#connectUrl());
        }
        catch (error) {
            this.#emit("transport_error", error);
            this.#scheduleRetry(null);
            return;
        }
        this.#ws = ws;
        this.#tokenFresh = tokenFresh;
        this.#answered = false;
        ws.onopen = () => {
            if (ws !== this.#ws)
                return;
            this.#emit("connected", { url: this.url });
            this.#startHeartbeat();
            this.#flush();
        };
        ws.onmessage = (event) => {
            if (ws === this.#ws)
                this.#receive(event.data);
        };
        // Always followed by `close`, which decides what happens next.
        ws.onerror = (event) => this.#emit("transport_error", event);
        ws.onclose = (event) => this.#closed(ws, event);
    }
    async #openWithFreshToken() {
        this.#opening = true;
        let answered = false;
        try {
            const token = await this.#getToken?.();
            answered = true;
            // None: the best there is (a cookie may still authenticate the socket).
            if (token)
                this.token = token;
        }
        catch (error) {
            this.#emit("token_refresh_failed", { error });
        }
        finally {
            this.#opening = false;
        }
        if (this.#stopped || this.#ws)
            return;
        if (!answered && !this.token) {
            this.#scheduleRetry(null, true);
            return;
        }
        // What getToken answered is as fresh as it gets: refused too, it is not asked again.
        this.#open(answered);
    }
    // ---- frames ------------------------------------------------------------------
    /** Send a frame now, or queue it until the connection is open again. */
    send(frame) {
        if (this.isConnected() && this.#write(frame))
            return;
        this.#queue.push(frame);
        if (this.#queue.length > this.maxQueue)
            this.#queue.shift();
    }
    #write(frame) {
        try {
            this.#ws?.send(JSON.stringify(frame));
            return true;
        }
        catch (error) {
            this.#emit("transport_error", error);
            return false;
        }
    }
    #flush() {
        const queued = this.#queue;
        this.#queue = [];
        for (const frame of queued)
            this.send(frame);
    }
    #receive(data) {
        let frame;
        try {
            frame = JSON.parse(typeof data === "string" ? data : String(data));
        }
        catch (error) {
            console.error("unparsable frame", error);
            return;
        }
        if (frame === null || typeof frame !== "object" || Array.isArray(frame))
            return;
        const typed = frame;
        // The server answered: authenticated and allowed, so the backoff starts over.
        this.#attempt = 0;
        this.#answered = true;
        if (!this.#track(typed))
            return;
        this.#emit("message", typed);
        if (typeof typed.type !== "string")
            return;
        this.#emit(typed.type, typed);
        if (typed.type === "token_expiring")
            void this.#refreshOnExpiry(typed);
    }
    /** Follow the stream's `seq` and `epoch`; false for an event already seen (a replay overlap). */
    #track(frame) {
        if (frame.type === "resync_required") {
            // The snapshot that follows says where the stream is now.
            this.#seqKnown = false;
            this.#lastSeq = 0;
            this.#epoch = frame.epoch ?? this.#epoch;
            return true;
        }
        if (typeof frame.seq === "number") {
            if (this.#seqKnown && frame.seq <= this.#lastSeq)
                return false;
            this.#lastSeq = frame.seq;
            this.#seqKnown = true;
            return true;
        }
        if (typeof frame.last_seq === "number") {
            // A snapshot (`message_history`, `bulk_update`) is exact at `last_seq`, in its `epoch`.
            this.#lastSeq = frame.last_seq;
            this.#seqKnown = true;
            if (typeof frame.epoch === "string")
                this.#epoch = frame.epoch;
        }
        return true;
    }
    #connectUrl() {
        const url = new URL(this.url);
        if (this.token)
            url.searchParams.set("token", this.token);
        // Tells the server this client comes back after a 1012: on a restart it
        // gets 1012, not the dropped connection the platform's client needs.
        url.searchParams.set("resume", "1");
        if (this.resume && this.#seqKnown) {
            url.searchParams.set("since", String(this.#lastSeq));
            if (this.#epoch)
                url.searchParams.set("epoch", this.#epoch);
        }
        return url.toString();
    }
    // ---- tokens ------------------------------------------------------------------
    async #refreshOnExpiry(_frame) {
        if (!this.#getToken)
            return;
        const socket = this.#ws;
        try {
            const token = await this.#getToken();
            // Sent on the socket that asked; a new socket takes it from the URL anyway.
            if (token && socket === this.#ws)
                this.setToken(token);
            else if (token)
                this.token = token;
        }
        catch (error) {
            this.#emit("token_refresh_failed", { error });
        }
    }
    // ---- closing and coming back ---------------------------------------------------
    #closed(ws, event) {
        if (ws !== this.#ws)
            return; // an old socket, replaced or disconnected on purpose
        this.#ws = null;
        this.#stopHeartbeat();
        const info = { code: event.code ?? 1006, reason: event.reason ?? "", wasClean: event.wasClean ?? false };
        this.#emit("disconnected", info);
        if (this.#stopped)
            return;
        if (info.code === NOT_AUTHENTICATED && this.#getToken && !(this.#tokenFresh && !this.#answered)) {
            // The token expired or was revoked while the socket lived: come back with a fresh one.
            this.#scheduleRetry(info.code, true);
            return;
        }
        const meaning = REFUSED.get(info.code);
        if (meaning !== undefined) {
            this.#stopped = true;
            this.#emit("refused", { ...info, meaning });
            return;
        }
        if (info.code === SERVER_RESTARTING && this.#answered) {
            // A restart or deploy: the next server is (nearly) there, so the backoff starts over.
            this.#attempt = 0;
        }
        // 1012 (restart), 1013 (slow consumer, try again), 1006 (network), 1011... all retried.
        this.#scheduleRetry(info.code);
    }
    #scheduleRetry(code, refreshToken = false) {
        if (this.#stopped || this.#retryTimer)
            return;
        // Full jitter: a random delay up to an exponentially growing, capped ceiling,
        // so a restarted server is not hit by every client at the same instant.
        const delayMs = code === SERVER_RESTARTING && this.#attempt === 0
            ? Math.floor(this.#random() * Math.min(this.restartDelayMs, this.maxDelayMs))
            : backoffDelay(this.#attempt, this.baseDelayMs, this.maxDelayMs, this.#random);
        this.#attempt += 1;
        this.#emit("reconnecting", { attempt: this.#attempt, delayMs });
        this.#retryTimer = setTimeout(() => {
            this.#retryTimer = null;
            if (this.#stopped || this.#ws || this.#opening)
                return;
            if (refreshToken && this.#getToken)
                void this.#openWithFreshToken();
            else
                this.#open(false);
        }, delayMs);
    }
    #clearRetry() {
        if (this.#retryTimer)
            clearTimeout(this.#retryTimer);
        this.#retryTimer = null;
    }
    #startHeartbeat() {
        this.#stopHeartbeat();
        // A ping at once: its `pong` says the socket is authenticated (the backoff starts over,
        // and a later 4001 is an expiry, not a refused token), even when a resume replays nothing.
        this.#write({ type: "ping" });
        this.#heartbeat = setInterval(() => {
            if (this.isConnected())
                this.#write({ type: "ping" });
        }, this.heartbeatMs);
    }
    #stopHeartbeat() {
        if (this.#heartbeat)
            clearInterval(this.#heartbeat);
        this.#heartbeat = null;
    }
}
// Checked against the generated `Channels`: a route the server renames breaks the build.
const PATHS = {
    chat: "/ws/chat/{room_id}/",
    consultation: "/ws/consultation/{consultation_id}/",
    reservation: "/ws/reservation-chat/{expert_id}/",
    notifications: "/ws/notifications/",
};
const USER_NOTIFICATIONS = "/ws/notifications/{user_id}/";
/** The socket URL of `path` on the server at `base` (`https://host`, `wss://host/prefix`...). */
export function channelUrl(base, path, params = {}) {
    const filled = path.replace(/\{(\w+)\}/g, (_, name) => {
        const value = params[name];
        if (value === undefined || value === "")
            throw new TypeError(`${path} needs ${name}`);
        return encodeURIComponent(String(value));
    });
    const root = new URL(base.endsWith("/") ? base : `${base}/`);
    const url = new URL(filled.replace(/^\//, ""), root);
    url.protocol = url.protocol === "https:" || url.protocol === "wss:" ? "wss:" : "ws:";
    return url.toString();
}
/** `/ws/chat/{room_id}/`. */
export function chat(base, roomId, options) {
    return new WebSocketConnection(channelUrl(base, PATHS.chat, { room_id: roomId }), options);
}
/** `/ws/consultation/{consultation_id}/`. */
export function consultation(base, consultationId, options) {
    const url = channelUrl(base, PATHS.consultation, { consultation_id: consultationId });
    return new WebSocketConnection(url, options);
}
/** `/ws/reservation-chat/{expert_id}/`: the expert's view for the expert, a client's own otherwise. */
export function reservation(base, expertId, options) {
    return new WebSocketConnection(channelUrl(base, PATHS.reservation, { expert_id: expertId }), options);
}
/** `/ws/notifications/` (or `/ws/notifications/{user_id}/` with `userId`, which must be the token's user). */
export function notifications(base, options = {}) {
    const { userId, ...rest } = options;
    const url = userId === undefined
        ? channelUrl(base, PATHS.notifications)
        : channelUrl(base, USER_NOTIFICATIONS, { user_id: userId });
    return new WebSocketConnection(url, rest);
}
