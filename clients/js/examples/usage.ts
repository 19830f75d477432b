// Typed use of the client, checked by `npm run typecheck` (never run). Each
// `@ts-expect-error` line must fail to compile: tsc reports one that compiles,
// so the frame types are proven to refuse what the server would refuse.

import WebSocket from "ws";

import {
  chat,
  consultation,
  notifications,
  reservation,
  type ChatMessageRecord,
  type ChatServerFrame,
  type ConsultationState,
  type NotificationRecord,
} from "../src/client.js";

const base = "https://realtime.example.com";
let token = "initial-jwt";
const getToken = async (): Promise<string> => {
  token = await Promise.resolve("fresh-jwt"); // e.g. the platform's refresh endpoint
  return token;
};

// Node 20 has no global WebSocket: `ws`'s constructor fits the option as it is.
const room = chat(base, "room-1", { token, getToken, WebSocket });
const messages: ChatMessageRecord[] = [];
room.on("message_history", (frame) => {
  messages.splice(0, messages.length, ...frame.messages);
  const position: number = frame.last_seq;
  const epoch: string = frame.epoch;
  void [position, epoch];
});
room.on("chat_message", (m) => {
  messages.push(m.message);
  const sender: string = m.message.sender.name;
  const kind: "text" | "image" | "file" = m.message.message_type;
  void [sender, kind];
  // @ts-expect-error: a chat message has no `title`
  void m.message.title;
});
room.on("typing_start", ({ user }) => console.log(`${user.name} is typing`));
room.on("error", (e) => console.warn(e.code, e.message, e.request_type));
room.on("message", (frame: ChatServerFrame) => void frame.type);
room.on("reconnecting", ({ attempt, delayMs }) => console.log(`attempt ${attempt} in ${delayMs} ms`));
room.on("refused", ({ code, meaning }) => console.error(code, meaning));
// @ts-expect-error: consultation frames do not arrive on a chat connection
room.on("consultation_started", () => {});
room.connect();
room.send({ type: "chat_message", content: "hello", client_msg_id: "m-1" });
room.send({ type: "mark_read", message_id: "42" });
room.send({ type: "fetch_history", before_seq: 10, limit: 50 });
// @ts-expect-error: `message_type` is "text" | "image" | "file"
room.send({ type: "chat_message", content: "x", message_type: "video" });
// @ts-expect-error: mark_read on chat names a message, not a notification
room.send({ type: "mark_read", notification_id: "n-1" });
// @ts-expect-error: not a chat frame
room.send({ type: "start_consultation" });

const session = consultation(base, "c-1", { token, WebSocket });
session.on("consultation_status", ({ status_data }) => {
  const status: ConsultationState = status_data.status;
  const left: number | undefined = status_data.remaining_seconds;
  void [status, left];
});
session.on("participant_left", ({ participant_id }) => void participant_id);
session.send({ type: "request_extension", duration_minutes: 10 });
// @ts-expect-error: `duration_minutes` is a number
session.send({ type: "request_extension", duration_minutes: "10" });

const expert = reservation(base, 1, { token, WebSocket });
expert.on("reservation_request", ({ request }) => {
  expert.send({ type: "accept_request", request_id: request.id });
});
expert.on("request_rejected", ({ reason }) => {
  const why: string | null = reason;
  void why;
});

const inbox = notifications(base, { userId: 2, token, WebSocket });
const unread: NotificationRecord[] = [];
inbox.on("bulk_update", (frame) => {
  unread.splice(0, unread.length, ...frame.notifications.filter((n) => !n.is_read));
});
inbox.on("new_notification", ({ notification }) => unread.unshift(notification));
inbox.send({ type: "mark_all_read" });
// @ts-expect-error: a notification has no `message_id`
inbox.send({ type: "mark_read", message_id: "42" });

// In a browser the global WebSocket is used: no option needed.
const browserRoom = chat(base, "room-2", { token });
browserRoom.disconnect();
