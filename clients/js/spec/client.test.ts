// The client against a scripted socket: backoff, resume (`since`, `epoch`,
// replays), token refresh, server restarts (1012), refusals, the send queue.

import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, mock, test } from "node:test";

import {
  WebSocketConnection,
  backoffDelay,
  channelUrl,
  chat,
  consultation,
  notifications,
  reservation,
  type ConnectionOptions,
} from "../src/client.js";
import { fakeWebSocket, settle } from "./fake-socket.js";

const ROOM_URL = "ws://server.test/ws/chat/room-1/";

beforeEach(() => mock.timers.enable({ apis: ["setTimeout", "setInterval"] }));
afterEach(() => mock.timers.reset());

function connection(options: ConnectionOptions = {}) {
  const fake = fakeWebSocket();
  const conn = new WebSocketConnection(ROOM_URL, { token: "t1", random: () => 0, WebSocket: fake.WebSocket, ...options });
  const events: Array<[string, unknown]> = [];
  for (const type of ["connected", "disconnected", "reconnecting", "refused", "token_refresh_failed"] as const) {
    conn.on(type, (data) => events.push([type, data]));
  }
  return { conn, fake, events, of: (type: string) => events.filter(([t]) => t === type).map(([, d]) => d) };
}

describe("backoff", () => {
  test("full jitter under a doubling ceiling, capped", () => {
    const top = () => 0.999999;
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 6, 7].map((attempt) => backoffDelay(attempt, 500, 30000, top)),
      [499, 999, 1999, 3999, 7999, 15999, 29999, 29999],
    );
    assert.equal(backoffDelay(3, 500, 30000, () => 0), 0);
    assert.equal(backoffDelay(3, 500, 30000, () => 0.5), 2000);
    // A huge attempt count does not overflow the ceiling.
    assert.equal(backoffDelay(5000, 500, 30000, top), 29999);
  });

  test("each failed attempt waits longer, until the server answers again", () => {
    const { conn, fake, of } = connection({ random: () => 0.999999, maxDelayMs: 4000 });
    conn.connect();
    for (let i = 0; i < 5; i++) {
      fake.last().end(1006);
      const { delayMs } = of("reconnecting").at(-1) as { delayMs: number };
      mock.timers.tick(delayMs);
    }
    assert.deepEqual(
      of("reconnecting").map((e) => (e as { delayMs: number }).delayMs),
      [499, 999, 1999, 3999, 3999],
    );
    assert.equal(fake.sockets.length, 6);
    // The server answered (any frame): the next failure starts from the first step again.
    fake.last().open();
    fake.last().receive({ type: "pong", ts: 1 });
    fake.last().end(1006);
    assert.deepEqual(of("reconnecting").at(-1), { attempt: 1, delayMs: 499 });
  });

  test("no reconnect before the delay has passed", () => {
    const { conn, fake } = connection({ random: () => 0.5 });
    conn.connect();
    fake.last().end(1011);
    mock.timers.tick(249);
    assert.equal(fake.sockets.length, 1);
    mock.timers.tick(1);
    assert.equal(fake.sockets.length, 2);
  });
});

describe("resume", () => {
  test("reconnects with since and epoch, and drops what a replay repeats", () => {
    const { conn, fake } = connection();
    const seqs: number[] = [];
    conn.on("chat_message", (frame) => seqs.push(frame.seq));
    conn.connect();
    assert.deepEqual(fake.last().query, { token: "t1", resume: "1" });
    fake.last().open();
    fake.last().receive({ type: "message_history", messages: [], has_more: false, last_seq: 3, epoch: "e1" });
    fake.last().receive({ type: "chat_message", seq: 4, message: {} });
    assert.equal(conn.lastSeq, 4);
    assert.equal(conn.epoch, "e1");
    fake.last().end(1013);
    mock.timers.tick(0);
    assert.deepEqual(fake.last().query, { token: "t1", resume: "1", since: "4", epoch: "e1" });
    fake.last().open();
    for (const seq of [3, 4, 5]) fake.last().receive({ type: "chat_message", seq, message: {} });
    assert.deepEqual(seqs, [4, 5]);
  });

  test("after resync_required, the next snapshot's position and epoch", () => {
    const { conn, fake } = connection();
    const seen: string[] = [];
    conn.on("message", (frame) => seen.push(frame.type));
    conn.connect();
    fake.last().open();
    fake.last().receive({ type: "message_history", messages: [], has_more: false, last_seq: 40, epoch: "old" });
    fake.last().end(1006);
    mock.timers.tick(0);
    assert.equal(fake.last().query.since, "40");
    fake.last().open();
    // The database was reset: a new epoch, and the stream starts again low.
    fake.last().receive({ type: "resync_required", last_seq: 2, epoch: "new" });
    fake.last().receive({ type: "message_history", messages: [], has_more: false, last_seq: 2, epoch: "new" });
    fake.last().receive({ type: "chat_message", seq: 3, message: {} });
    assert.deepEqual(seen.slice(-3), ["resync_required", "message_history", "chat_message"]);
    fake.last().end(1006);
    mock.timers.tick(0);
    assert.deepEqual(fake.last().query, { token: "t1", resume: "1", since: "3", epoch: "new" });
  });

  test("a notifications snapshot, then the bulk_update event that carries seq", () => {
    const fake = fakeWebSocket();
    const conn = notifications("http://server.test", { token: "t", WebSocket: fake.WebSocket, random: () => 0 });
    const unread: number[] = [];
    conn.on("bulk_update", (frame) => unread.push(frame.unread_count));
    conn.connect();
    fake.last().open();
    fake.last().receive({ type: "bulk_update", notifications: [], unread_count: 2, last_seq: 7, epoch: "u" });
    fake.last().receive({ type: "bulk_update", notifications: [], unread_count: 0, seq: 8 });
    fake.last().receive({ type: "bulk_update", notifications: [], unread_count: 0, seq: 8 });
    assert.deepEqual(unread, [2, 0]);
    fake.last().end(1012);
    mock.timers.tick(0);
    assert.deepEqual(fake.last().query, { token: "t", resume: "1", since: "8", epoch: "u" });
  });

  test("resume: false reconnects without since", () => {
    const { conn, fake } = connection({ resume: false });
    conn.connect();
    fake.last().open();
    fake.last().receive({ type: "message_history", messages: [], has_more: false, last_seq: 3, epoch: "e" });
    fake.last().end(1006);
    mock.timers.tick(0);
    assert.deepEqual(fake.last().query, { token: "t1", resume: "1" });
  });
});

describe("server restarts (1012)", () => {
  test("come back promptly, whatever the backoff had reached", () => {
    const { conn, fake, of } = connection({ random: () => 0.999999, restartDelayMs: 1000 });
    conn.connect();
    for (let i = 0; i < 6; i++) {
      fake.last().end(1006);
      mock.timers.tick((of("reconnecting").at(-1) as { delayMs: number }).delayMs);
    }
    fake.last().open();
    fake.last().receive({ type: "message_history", messages: [], has_more: false, last_seq: 9, epoch: "e" });
    fake.last().end(1012, "server restarting");
    assert.deepEqual(of("reconnecting").at(-1), { attempt: 1, delayMs: 999 });
    mock.timers.tick(999);
    assert.deepEqual(fake.last().query, { token: "t1", resume: "1", since: "9", epoch: "e" });
    // The next server is not up yet: the ordinary backoff takes over.
    fake.last().end(1006);
    assert.deepEqual(of("reconnecting").at(-1), { attempt: 2, delayMs: 999 });
    assert.deepEqual(
      of("disconnected").at(-2),
      { code: 1012, reason: "server restarting", wasClean: true },
    );
  });
});

describe("tokens", () => {
  test("token_expiring asks getToken and sends the fresh token as auth", async () => {
    let issued = 1;
    const getToken = mock.fn(async () => `t${++issued}`);
    const { conn, fake } = connection({ getToken });
    conn.connect();
    assert.equal(getToken.mock.callCount(), 0); // the given token is used first
    fake.last().open();
    fake.last().receive({ type: "token_expiring", expires_at: 1, grace_seconds: 30 });
    await settle();
    assert.equal(getToken.mock.callCount(), 1);
    assert.deepEqual(fake.last().sent.at(-1), { type: "auth", token: "t2" });
    fake.last().end(1006);
    mock.timers.tick(0);
    assert.equal(fake.last().query.token, "t2");
  });

  test("a 4001 on a socket that worked reconnects with a fresh token; a fresh token refused stops", async () => {
    const tokens = ["fresh", "fresher"];
    const getToken = mock.fn(() => tokens.shift() ?? null);
    const { conn, fake, of } = connection({ getToken });
    conn.connect();
    fake.last().open();
    fake.last().receive({ type: "pong", ts: 1 });
    fake.last().end(4001, "token expired");
    mock.timers.tick(0);
    await settle();
    assert.equal(getToken.mock.callCount(), 1);
    assert.equal(fake.sockets.length, 2);
    assert.equal(fake.last().query.token, "fresh");
    // The fresh token is refused before the server says anything: asking again would loop.
    fake.last().open();
    fake.last().end(4001, "token revoked");
    mock.timers.tick(60000);
    await settle();
    assert.equal(fake.sockets.length, 2);
    assert.equal(getToken.mock.callCount(), 1);
    assert.deepEqual(of("refused"), [{ code: 4001, reason: "token revoked", wasClean: true, meaning: "not authenticated" }]);
  });

  test("a stale first token gets one fresh try", async () => {
    const getToken = mock.fn(async () => "fresh");
    const { conn, fake, of } = connection({ getToken });
    conn.connect();
    fake.last().open();
    fake.last().end(4001, "invalid token");
    mock.timers.tick(0);
    await settle();
    assert.equal(fake.last().query.token, "fresh");
    fake.last().open();
    fake.last().receive({ type: "message_history", messages: [], has_more: false, last_seq: 0, epoch: "e" });
    assert.equal(of("refused").length, 0);
  });

  test("without a token, the first connect asks getToken", async () => {
    const getToken = mock.fn(() => Promise.resolve("first"));
    const { conn, fake } = connection({ token: null, getToken });
    conn.connect();
    assert.equal(fake.sockets.length, 0);
    await settle();
    assert.equal(fake.sockets.length, 1);
    assert.equal(fake.last().query.token, "first");
  });

  test("a getToken that fails is reported and asked again later", async () => {
    let calls = 0;
    const getToken = async () => {
      calls += 1;
      if (calls === 1) throw new Error("backend away");
      return "late";
    };
    const { conn, fake, of } = connection({ token: null, getToken });
    conn.connect();
    await settle();
    assert.equal(fake.sockets.length, 0);
    assert.equal(of("token_refresh_failed").length, 1);
    mock.timers.tick(0);
    await settle();
    assert.equal(fake.last().query.token, "late");
  });

  test("a getToken that has nothing is asked once: the next 4001 is a refusal", async () => {
    const getToken = mock.fn(() => null);
    const { conn, fake, of } = connection({ getToken });
    conn.connect();
    fake.last().open();
    fake.last().receive({ type: "pong", ts: 1 });
    fake.last().end(4001, "token expired");
    mock.timers.tick(0);
    await settle();
    assert.equal(fake.last().query.token, "t1");
    fake.last().open();
    fake.last().end(4001, "token expired");
    mock.timers.tick(60000);
    await settle();
    assert.equal(getToken.mock.callCount(), 1);
    assert.equal(fake.sockets.length, 2);
    assert.equal(of("refused").length, 1);
  });

  test("without getToken, 4001 is a refusal", () => {
    const { conn, fake, of } = connection();
    conn.connect();
    fake.last().open();
    fake.last().receive({ type: "pong", ts: 1 });
    fake.last().end(4001, "token expired");
    mock.timers.tick(60000);
    assert.equal(fake.sockets.length, 1);
    assert.equal(of("refused").length, 1);
  });

  test("setToken sends auth on an open socket and goes in later URLs", () => {
    const { conn, fake } = connection();
    conn.connect();
    fake.last().open();
    conn.setToken("t9");
    assert.deepEqual(fake.last().sent.at(-1), { type: "auth", token: "t9" });
    fake.last().end(1006);
    mock.timers.tick(0);
    assert.equal(fake.last().query.token, "t9");
  });
});

describe("refusals, queue, heartbeat", () => {
  for (const code of [4003, 4004, 1008]) {
    test(`${code} is reported and never retried`, () => {
      const { conn, fake, of } = connection();
      conn.connect();
      fake.last().open();
      fake.last().end(code, "no");
      mock.timers.tick(120000);
      assert.equal(fake.sockets.length, 1);
      assert.equal((of("refused")[0] as { code: number }).code, code);
      assert.equal(of("reconnecting").length, 0);
    });
  }

  test("frames sent while disconnected go out on the next open, after a ping", () => {
    const { conn, fake } = connection({ maxQueue: 2, heartbeatMs: 1000 });
    conn.send({ type: "chat_message", content: "one", client_msg_id: "1" });
    conn.send({ type: "chat_message", content: "two", client_msg_id: "2" });
    conn.send({ type: "chat_message", content: "three", client_msg_id: "3" });
    conn.connect();
    fake.last().open();
    assert.deepEqual(
      fake.last().sent.map((f) => f.content ?? f.type),
      ["ping", "two", "three"],
    );
    mock.timers.tick(1000);
    assert.deepEqual(fake.last().sent.at(-1), { type: "ping" });
  });

  test("disconnect closes with 1000 and nothing comes back", () => {
    const { conn, fake, of } = connection();
    conn.connect();
    fake.last().open();
    conn.disconnect();
    assert.deepEqual(fake.last().closedByClient, { code: 1000, reason: "client disconnect" });
    fake.last().end(1000);
    mock.timers.tick(60000);
    assert.equal(fake.sockets.length, 1);
    assert.equal(of("reconnecting").length, 0);
    assert.equal(conn.isConnected(), false);
  });

  test("a listener that throws does not starve the others", (t) => {
    t.mock.method(console, "error", () => {});
    const { conn, fake } = connection();
    const got: string[] = [];
    conn.on("pong", () => {
      throw new Error("broken");
    });
    conn.on("pong", () => got.push("second"));
    conn.connect();
    fake.last().open();
    fake.last().receive({ type: "pong", ts: 5 });
    fake.last().onmessage?.({ data: "{not json" });
    assert.deepEqual(got, ["second"]);
  });
});

describe("channel URLs", () => {
  test("one function per channel, on any base", () => {
    const WebSocket = fakeWebSocket().WebSocket;
    assert.equal(chat("https://rt.example", "room-1", { WebSocket }).url, "wss://rt.example/ws/chat/room-1/");
    assert.equal(
      consultation("http://localhost:8000/realtime/", "c 1", { WebSocket }).url,
      "ws://localhost:8000/realtime/ws/consultation/c%201/",
    );
    assert.equal(reservation("wss://rt.example", 7, { WebSocket }).url, "wss://rt.example/ws/reservation-chat/7/");
    assert.equal(notifications("ws://h", { WebSocket }).url, "ws://h/ws/notifications/");
    assert.equal(notifications("ws://h", { WebSocket, userId: 3 }).url, "ws://h/ws/notifications/3/");
    assert.throws(() => channelUrl("ws://h", "/ws/chat/{room_id}/"), /needs room_id/);
  });
});
