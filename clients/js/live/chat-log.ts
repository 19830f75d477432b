// The built client on one chat room of a real server, for tests/test_js_client.py:
// it prints every frame and lifecycle event as a JSON line on stdout, and reads
// commands as JSON lines on stdin (`{"send": frame}`, `{"quit": true}`).
//
// Environment: REALTIME_BASE (`http://host:port`), REALTIME_ROOM, REALTIME_USER,
// JWT_SECRET (to mint HS256 tokens as the platform's backend would), and
// FIRST_TOKEN_SECONDS, the lifetime of the first token (`getToken` mints an hour).

import { createHmac } from "node:crypto";
import { createInterface } from "node:readline";

import WebSocket from "ws";

import { chat } from "../src/client.js";

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const base64url = (data: string | Buffer) => Buffer.from(data).toString("base64url");

function mint(userId: number, seconds: number): string {
  const now = Math.floor(Date.now() / 1000);
  const head = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = base64url(JSON.stringify({ user_id: userId, name: `user${userId}`, iat: now, exp: now + seconds }));
  const signature = createHmac("sha256", required("JWT_SECRET")).update(`${head}.${body}`).digest();
  return `${head}.${body}.${base64url(signature)}`;
}

function log(event: string, data: unknown): void {
  process.stdout.write(`${JSON.stringify({ event, data })}\n`);
}

const user = Number(required("REALTIME_USER"));
const conn = chat(required("REALTIME_BASE"), required("REALTIME_ROOM"), {
  token: mint(user, Number(process.env.FIRST_TOKEN_SECONDS ?? 3600)),
  getToken: async () => {
    log("get_token", {});
    return mint(user, 3600);
  },
  WebSocket,
  // A local server comes back within a second or two: retry often.
  baseDelayMs: 200,
  maxDelayMs: 1000,
  restartDelayMs: 300,
});

for (const event of ["connected", "disconnected", "reconnecting", "refused", "token_refresh_failed"] as const) {
  conn.on(event, (data) => log(event, data));
}
conn.on("message", (frame) => log("frame", frame));

createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line) as { send?: Parameters<typeof conn.send>[0]; quit?: boolean };
  if (command.send) conn.send(command.send);
  if (command.quit) {
    conn.disconnect();
    log("quit", { lastSeq: conn.lastSeq, epoch: conn.epoch });
    process.exit(0);
  }
});

conn.connect();
