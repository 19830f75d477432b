// The dev-mode demo page: one demo user per window, every channel in one page.
import { WebSocketConnection } from "./realtime-client.js";

const $ = (selector, root = document) => root.querySelector(selector);

// Elements from data (user text is always set as text, never parsed as HTML).
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

const clock = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "");
const initial = (name) => name.replace(/^Dr\.\s*/, "").charAt(0).toUpperCase();
const newId = () => `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;

const demo = { info: null, me: null, names: new Map(), conns: [] };
// For the browser console and the browser test.
window.realtimeDemo = demo;

function nameOf(id) {
  return demo.names.get(id) ?? `User ${id}`;
}

function toast(text, kind = "") {
  const node = h("div", { class: `toast ${kind}` }, text);
  $("#toasts").append(node);
  setTimeout(() => node.remove(), 5000);
}

function wsUrl(path) {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

// One channel of one panel: its connection, its status pill, its refusal notice.
function channel(panel, path) {
  // A local server comes back fast: retry within 5 s rather than the default 30.
  const conn = new WebSocketConnection(wsUrl(path), { token: demo.me.token, maxDelayMs: 5000 });
  const pill = $(".pill", panel);
  const notice = $(".notice", panel);
  const show = (text, kind) => {
    pill.textContent = text;
    pill.className = `pill ${kind}`;
  };
  conn.on("connected", () => {
    show("live", "ok");
    notice.hidden = true;
  });
  conn.on("disconnected", () => show("offline", "warn"));
  conn.on("reconnecting", ({ delayMs }) => show(`reconnecting in ${Math.ceil(delayMs / 1000)} s`, "warn"));
  conn.on("refused", ({ code, reason }) => {
    show(`refused ${code}`, "bad");
    notice.textContent = `The server refused this channel (${code}: ${reason || "no reason"}).`;
    notice.hidden = false;
  });
  conn.on("error", (frame) => toast(`${frame.request_type ?? "error"} → ${frame.code}: ${frame.message}`, "bad"));
  demo.conns.push(conn);
  conn.connect();
  return conn;
}

// ---- chat -------------------------------------------------------------------------

function startChat(panel) {
  const room = demo.info.room_id;
  $("#chat-room").textContent = `· room ${room}`;
  const list = $("#messages");
  const messages = new Map(); // id -> ChatMessage
  const readers = new Map(); // id -> Set of reader ids (seen live)
  const typists = new Map(); // user id -> name
  let hasMore = false;
  const conn = channel(panel, `ws/chat/${room}/`);

  const fromOther = (m) => m.sender.id !== demo.me.id;
  const markRead = (m) => {
    if (fromOther(m) && !m.is_read && document.visibilityState === "visible") {
      conn.send({ type: "mark_read", message_id: m.id });
    }
  };

  function render({ keepTop = false } = {}) {
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const before = list.scrollHeight;
    const sorted = [...messages.values()].sort((a, b) => a.seq - b.seq);
    list.replaceChildren(...sorted.map(renderMessage));
    if (!sorted.length) list.append(h("li", { class: "empty" }, "No messages yet. Say hello!"));
    $("#chat-more").hidden = !hasMore;
    if (keepTop) list.scrollTop += list.scrollHeight - before;
    else if (atBottom || sorted.at(-1)?.sender.id === demo.me.id) list.scrollTop = list.scrollHeight;
  }

  function renderMessage(m) {
    const mine = !fromOther(m);
    const who = readers.get(m.id);
    const receipt = m.is_read ? `✓✓ Read${who?.size ? ` by ${[...who].map(nameOf).join(", ")}` : ""}` : "✓ Sent";
    return h(
      "li",
      { class: `msg${mine ? " mine" : ""}`, dataset: { id: m.id, seq: m.seq } },
      h("div", { class: "meta" }, `${m.sender.name} · ${clock(m.created_at)}`),
      h("div", { class: "bubble" }, m.content),
      mine
        ? h(
            "div",
            { class: "foot" },
            h("span", { class: `receipt${m.is_read ? " read" : ""}` }, receipt),
            h(
              "button",
              {
                type: "button",
                class: "link small delete",
                onclick: () => conn.send({ type: "delete_message", message_id: m.id }),
              },
              "Delete",
            ),
          )
        : null,
    );
  }

  function renderTyping() {
    const names = [...typists.values()];
    $("#typing").textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
  }

  conn.on("message_history", (f) => {
    messages.clear();
    for (const m of f.messages) messages.set(m.id, m);
    hasMore = f.has_more;
    render();
    // The newest few are enough to show receipts; each receipt is a frame.
    f.messages.filter(fromOther).slice(-10).forEach(markRead);
  });
  conn.on("history_page", (f) => {
    for (const m of f.messages) messages.set(m.id, m);
    hasMore = f.has_more;
    render({ keepTop: true });
  });
  conn.on("chat_message", ({ message }) => {
    messages.set(message.id, message);
    typists.delete(message.sender.id);
    renderTyping();
    render();
    markRead(message);
  });
  conn.on("message_read", ({ message_id, user_id }) => {
    const m = messages.get(message_id);
    if (!m || m.sender.id === user_id) return;
    m.is_read = true;
    if (!readers.has(message_id)) readers.set(message_id, new Set());
    readers.get(message_id).add(user_id);
    render();
  });
  conn.on("message_deleted", ({ message_id }) => {
    messages.delete(message_id);
    render();
  });
  conn.on("typing_start", ({ user }) => {
    typists.set(user.id, user.name);
    renderTyping();
  });
  conn.on("typing_stop", ({ user_id }) => {
    typists.delete(user_id);
    renderTyping();
  });
  conn.on("disconnected", () => {
    typists.clear();
    renderTyping();
  });
  document.addEventListener("visibilitychange", () => [...messages.values()].slice(-10).forEach(markRead));

  $("#chat-more").addEventListener("click", () => {
    const oldest = Math.min(...[...messages.values()].map((m) => m.seq));
    if (Number.isFinite(oldest)) conn.send({ type: "fetch_history", before_seq: oldest, limit: 50 });
  });

  // Typing: start once, repeat while typing (the server expires it after 5 s),
  // stop after 3 s idle; sending a message stops it on the server side.
  const input = $("#chat-input");
  let typingSince = 0;
  let idle = null;
  const stopTyping = (tell) => {
    clearTimeout(idle);
    if (typingSince && tell) conn.send({ type: "typing_stop" });
    typingSince = 0;
  };
  input.addEventListener("input", () => {
    if (!input.value.trim()) return stopTyping(true);
    if (Date.now() - typingSince > 3000) {
      conn.send({ type: "typing_start" });
      typingSince = Date.now();
    }
    clearTimeout(idle);
    idle = setTimeout(() => stopTyping(true), 3000);
  });
  $("#chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const content = input.value.trim();
    if (!content) return;
    // The id makes a resend after a reconnect harmless.
    conn.send({ type: "chat_message", content, client_msg_id: newId() });
    input.value = "";
    stopTyping(false);
  });
  render();
}

// ---- consultation -----------------------------------------------------------------

function startConsultation(panel) {
  let conn = null;
  let presence = null;
  let data = null; // status_data as last known
  let endsAt = null; // ms, from the server's remaining_seconds (clock-skew free)
  let asked = null; // minutes this user asked for, until answered
  const me = demo.me;
  const isParticipant = () => data?.participants !== undefined;

  function log(text) {
    const entries = $("#c-log");
    entries.prepend(h("li", {}, h("time", {}, clock(new Date().toISOString())), text));
    while (entries.children.length > 8) entries.lastChild.remove();
  }

  function open(id) {
    conn?.disconnect();
    clearInterval(presence);
    data = null;
    asked = null;
    endsAt = null;
    $("#c-id").textContent = `· ${id}`;
    $("#c-log").replaceChildren();
    $(".c-body", panel).hidden = false;
    conn = channel(panel, `ws/consultation/${id}/`);
    conn.on("consultation_status", ({ status_data }) => {
      data = status_data;
      endsAt = data.remaining_seconds !== undefined ? Date.now() + data.remaining_seconds * 1000 : null;
      if (!data.pending_extension) asked = null;
      render();
    });
    conn.on("participant_joined", ({ participant }) => {
      data.participants = [...data.participants.filter((p) => p.id !== participant.id), participant];
      log(`${participant.name} joined`);
      render();
    });
    conn.on("participant_left", ({ participant_id }) => {
      data.participants = data.participants.filter((p) => p.id !== participant_id);
      log(`${nameOf(participant_id)} left`);
      render();
    });
    conn.on("consultation_started", (f) => {
      Object.assign(data, { status: "in_progress", started_at: f.started_at, ends_at: f.ends_at });
      endsAt = Date.parse(f.ends_at);
      log("started");
      render();
    });
    conn.on("consultation_ended", (f) => {
      Object.assign(data, { status: "completed", ended_at: f.ended_at, reason: f.reason });
      delete data.pending_extension;
      log(`ended (${f.reason})`);
      render();
    });
    conn.on("consultation_cancelled", (f) => {
      Object.assign(data, { status: "cancelled", reason: f.reason ?? null });
      log("cancelled");
      render();
    });
    conn.on("extension_requested", (f) => {
      data.pending_extension = f;
      log(`${nameOf(f.requested_by)} asked for ${f.duration_minutes} more minutes`);
      render();
    });
    conn.on("consultation_extended", (f) => {
      data.ends_at = f.ends_at;
      data.duration_minutes = (data.duration_minutes ?? 0) + f.duration_minutes;
      endsAt = Date.parse(f.ends_at);
      delete data.pending_extension;
      asked = null;
      log(`extended by ${f.duration_minutes} minutes`);
      render();
    });
    conn.on("extension_rejected", () => {
      delete data.pending_extension;
      asked = null;
      log("extension rejected");
      render();
    });
    conn.on("error", (f) => {
      if (f.request_type === "request_extension") asked = null;
      render();
    });
    // Not a participant (4003) or no such consultation (4004): the notice says it all.
    // A consultation that ended closes its sockets with 4003 too: then its outcome stays on view.
    conn.on("refused", () => {
      const finished = data?.status === "completed" || data?.status === "cancelled";
      $(".c-body", panel).hidden = !finished;
      render();
    });
    // The server drops a participant after 30 s without presence.
    presence = setInterval(() => conn.send({ type: "presence_update" }), 10000);
    render();
  }

  function render() {
    const status = data?.status;
    const badge = $("#c-status");
    badge.textContent = status ? status.replace("_", " ") : "…";
    badge.className = `badge ${status ?? ""}`;
    const minutes = data?.duration_minutes;
    let when = "";
    if (status === "waiting") when = `${minutes} min booked`;
    else if (status === "in_progress") when = `started ${clock(data.started_at)} · ends ${clock(data.ends_at)}`;
    else if (status) when = [clock(data.ended_at), data.reason?.replaceAll("_", " ")].filter(Boolean).join(" · ");
    $("#c-time").textContent = when;
    tick();

    const people = data?.participants ?? [];
    $("#c-participants").replaceChildren(
      ...(people.length
        ? people.map((p) => h("li", {}, `${p.name} · ${p.type}`))
        : [h("li", { class: "empty" }, isParticipant() ? "nobody" : "—")]),
    );

    const expert = me.role === "expert";
    const live = conn?.isConnected() && isParticipant();
    $("#c-start").disabled = !(live && expert && status === "waiting");
    $("#c-end").disabled = !(live && expert && status === "in_progress");
    $("#c-cancel").disabled = !(live && status === "waiting");
    const pending = data?.pending_extension;
    $("#c-extend").disabled = !(live && status === "in_progress" && !pending && !asked);
    $("#c-minutes").disabled = $("#c-extend").disabled;
    const finished = status === "completed" || status === "cancelled";
    $("#c-next").hidden = !finished;
    for (const id of ["#c-start", "#c-end", "#c-cancel"]) $(id).hidden = finished;

    const box = $("#c-extension");
    const mineAsked = asked !== null || pending?.requested_by === me.id;
    box.hidden = !(status === "in_progress" && (pending || mineAsked));
    if (!box.hidden) {
      const theirs = pending && pending.requested_by !== me.id;
      $("#c-extension-text").textContent = theirs
        ? `${nameOf(pending.requested_by)} asks for ${pending.duration_minutes} more minutes`
        : `You asked for ${pending?.duration_minutes ?? asked} more minutes; waiting for an answer`;
      $("#c-extension-answer").hidden = !theirs;
    }
  }

  function tick() {
    const view = $("#c-clock");
    if (data?.status !== "in_progress" || endsAt === null) {
      view.textContent = "";
      return;
    }
    const left = Math.max(0, Math.round((endsAt - Date.now()) / 1000));
    const mm = String(Math.floor(left / 60)).padStart(2, "0");
    view.textContent = `${mm}:${String(left % 60).padStart(2, "0")} left`;
  }
  setInterval(tick, 1000);

  const act = (type, extra = {}) => conn.send({ type, ...extra });
  $("#c-start").addEventListener("click", () => act("start_consultation"));
  $("#c-end").addEventListener("click", () => act("end_consultation"));
  $("#c-cancel").addEventListener("click", () => act("cancel_consultation", { reason: `cancelled by ${me.name}` }));
  $("#c-extend").addEventListener("click", () => {
    asked = Number($("#c-minutes").value);
    act("request_extension", { duration_minutes: asked });
    render();
  });
  const answer = (accept) => {
    const pending = data?.pending_extension;
    if (pending) act("respond_extension", { request_id: pending.request_id, accept });
  };
  $("#c-accept").addEventListener("click", () => answer(true));
  $("#c-reject").addEventListener("click", () => answer(false));
  $("#c-next").addEventListener("click", async () => {
    // The newest demo consultation, or a fresh one once it finished; the other
    // window gets the same one when it asks.
    const reply = await fetch("dev/consultations", { method: "POST" });
    if (!reply.ok) return toast(`next consultation: HTTP ${reply.status}`, "bad");
    open((await reply.json()).consultation.id);
  });
  open(demo.info.consultation_id);
}

// ---- reservation chat -------------------------------------------------------------

function startReservation(panel) {
  const me = demo.me;
  const expertId = demo.info.expert_id;
  const isExpert = me.id === expertId;
  const requests = new Map(); // id -> ReservationRequest
  const threads = new Map(); // client id -> Map(message id -> message)
  const clientNames = new Map();
  let selected = isExpert ? null : me.id;
  const conn = channel(panel, `ws/reservation-chat/${expertId}/`);

  $("#r-title").textContent = isExpert ? "Reservation requests" : `Reservation with ${nameOf(expertId)}`;
  $("#r-form").hidden = isExpert;
  $("#r-requests-label").textContent = isExpert ? "Requests from clients" : "My requests";
  $("#r-message").placeholder = isExpert ? "Write to the client" : `Write to ${nameOf(expertId)}`;
  const tomorrow = new Date(Date.now() + 86400000).toISOString().slice(0, 10);
  $("#r-date").value = tomorrow;
  $("#r-date").min = tomorrow;

  function addMessage(m) {
    clientNames.set(m.client_id, m.client?.name ?? clientNames.get(m.client_id) ?? nameOf(m.client_id));
    if (!threads.has(m.client_id)) threads.set(m.client_id, new Map());
    threads.get(m.client_id).set(m.id, m);
    if (selected === null) selected = m.client_id;
  }

  function addRequest(r) {
    requests.set(r.id, r);
    clientNames.set(r.client.id, r.client.name);
    if (selected === null) selected = r.client.id;
  }

  function render() {
    const sorted = [...requests.values()].sort((a, b) => a.created_at.localeCompare(b.created_at));
    $("#r-requests").replaceChildren(
      ...(sorted.length ? sorted.map(renderRequest) : [h("li", { class: "empty" }, "No requests yet.")]),
    );

    const picker = $("#r-client");
    picker.hidden = !isExpert || clientNames.size === 0;
    if (isExpert) {
      const ids = [...clientNames.keys()];
      picker.replaceChildren(
        ...ids.map((id) => h("option", { value: id, selected: id === selected }, clientNames.get(id))),
      );
      $("#r-thread-label").textContent = selected ? `Messages with ${clientNames.get(selected)}` : "Messages";
    } else {
      $("#r-thread-label").textContent = `Messages with ${nameOf(expertId)}`;
    }
    const thread = [...(threads.get(selected)?.values() ?? [])].sort((a, b) =>
      a.created_at.localeCompare(b.created_at),
    );
    const list = $("#r-thread");
    list.replaceChildren(
      ...(thread.length
        ? thread.map((m) => {
            const mine = (m.sender === "expert") === isExpert;
            const who = m.sender === "expert" ? nameOf(expertId) : clientNames.get(m.client_id);
            return h(
              "li",
              { class: `msg${mine ? " mine" : ""}` },
              h("div", { class: "meta" }, `${who} · ${clock(m.created_at)}`),
              h("div", { class: "bubble" }, m.message),
            );
          })
        : [h("li", { class: "empty" }, isExpert && !selected ? "No client has written yet." : "No messages yet.")]),
    );
    list.scrollTop = list.scrollHeight;
    $("#r-message-send").disabled = selected === null;
  }

  function renderRequest(r) {
    const when = `${r.requested_date} ${r.requested_time}`;
    const head = h(
      "div",
      { class: "head" },
      h("span", {}, h("strong", {}, r.child_name), ` · ${when}${isExpert ? ` · ${r.client.name}` : ""}`),
      h("span", { class: `badge ${r.status}` }, r.status),
    );
    const parts = [head];
    if (r.concern_summary) parts.push(h("div", { class: "summary" }, r.concern_summary));
    if (r.reason) parts.push(h("div", { class: "summary" }, `Reason: ${r.reason}`));
    if (r.status === "pending" && isExpert) {
      const reason = h("input", { placeholder: "reason (optional)", maxlength: 500 });
      parts.push(
        h(
          "div",
          { class: "row" },
          reason,
          h("button", { type: "button", class: "accept", onclick: () => answer("accept_request", r) }, "Accept"),
          h(
            "button",
            {
              type: "button",
              class: "ghost danger reject",
              onclick: () => answer("reject_request", r, reason.value.trim() || undefined),
            },
            "Reject",
          ),
        ),
      );
    } else if (r.status === "pending") {
      parts.push(
        h(
          "div",
          {},
          h(
            "button",
            {
              type: "button",
              class: "ghost danger small",
              onclick: () => conn.send({ type: "cancel_request", request_id: r.id }),
            },
            "Cancel request",
          ),
        ),
      );
    }
    return h("li", { class: "request", dataset: { id: r.id } }, parts);
  }

  function answer(type, r, reason) {
    conn.send({ type, request_id: r.id, ...(reason ? { reason } : {}) });
  }

  conn.on("reservation_state", ({ requests: all, messages }) => {
    requests.clear();
    threads.clear();
    all.forEach(addRequest);
    messages.forEach(addMessage);
    render();
  });
  for (const type of ["reservation_request", "request_created", "request_accepted", "request_rejected"]) {
    conn.on(type, ({ request }) => {
      addRequest(request);
      render();
    });
  }
  conn.on("reservation_request", ({ request }) => toast(`New request from ${request.client.name}`));
  conn.on("request_cancelled", ({ request_id }) => {
    const r = requests.get(request_id);
    if (r) r.status = "cancelled";
    render();
  });
  conn.on("client_message", (f) => {
    addMessage({ ...f, sender: "client" });
    render();
  });
  conn.on("expert_message", (f) => {
    addMessage({ ...f, sender: "expert" });
    render();
  });

  $("#r-client").addEventListener("change", (event) => {
    selected = Number(event.target.value);
    render();
  });
  $("#r-form").addEventListener("submit", (event) => {
    event.preventDefault();
    conn.send({
      type: "reservation_request",
      child_name: $("#r-child").value.trim(),
      requested_date: $("#r-date").value,
      requested_time: $("#r-time").value,
      concern_summary: $("#r-concern").value.trim(),
      client_msg_id: newId(),
    });
    $("#r-child").value = "";
    $("#r-concern").value = "";
  });
  $("#r-message-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const message = $("#r-message").value.trim();
    if (!message || selected === null) return;
    const frame = isExpert ? { type: "expert_message", client_id: selected } : { type: "client_message" };
    conn.send({ ...frame, message, client_msg_id: newId() });
    $("#r-message").value = "";
  });
  render();
}

// ---- notifications ----------------------------------------------------------------

function startNotifications(panel) {
  let notes = []; // newest first
  let unread = 0;
  const conn = channel(panel, "ws/notifications/");

  function render() {
    const count = $("#n-unread");
    count.textContent = String(unread);
    count.className = `count${unread ? " some" : ""}`;
    $("#n-all").disabled = unread === 0;
    $("#n-list").replaceChildren(
      ...(notes.length
        ? notes.map((n) =>
            h(
              "li",
              { class: `note ${n.is_read ? "read" : "unread"}`, dataset: { id: n.id } },
              h("span", { class: "title" }, n.title),
              n.is_read
                ? null
                : h(
                    "button",
                    {
                      type: "button",
                      class: "ghost small",
                      onclick: () => conn.send({ type: "mark_read", notification_id: n.id }),
                    },
                    "Mark read",
                  ),
              h("span", { class: "body" }, n.body),
              h("span", { class: "when" }, `${n.type} · ${clock(n.created_at)}`),
            ),
          )
        : [h("li", { class: "empty" }, "Nothing yet.")]),
    );
  }

  conn.on("bulk_update", (f) => {
    notes = f.notifications;
    unread = f.unread_count;
    render();
  });
  conn.on("new_notification", ({ notification }) => {
    notes = [notification, ...notes.filter((n) => n.id !== notification.id)].slice(0, 100);
    if (!notification.is_read) unread += 1;
    render();
  });
  conn.on("notification_read", ({ notification_id }) => {
    const n = notes.find((item) => item.id === notification_id);
    if (n?.is_read) return;
    if (n) n.is_read = true;
    unread = Math.max(0, unread - 1);
    render();
  });
  $("#n-all").addEventListener("click", () => conn.send({ type: "mark_all_read" }));
  render();
}

// ---- start ------------------------------------------------------------------------

function pick(user) {
  sessionStorage.setItem("demo-user", String(user.id));
  const url = new URL(location.href);
  url.searchParams.set("as", String(user.id));
  history.replaceState(null, "", url);
  start(user);
}

function showPicker() {
  $("#app").hidden = true;
  $("#me").hidden = true;
  $("#picker").hidden = false;
  $("#people").replaceChildren(
    ...demo.info.users.map((u) =>
      h(
        "button",
        { type: "button", class: "person", dataset: { user: u.id }, onclick: () => pick(u) },
        h("span", { class: "avatar" }, initial(u.name)),
        h("strong", {}, u.name),
        h("span", { class: "muted" }, u.role),
      ),
    ),
  );
}

function start(user) {
  demo.me = user;
  document.title = `${user.name} · Realtime demo`;
  $("#picker").hidden = true;
  $("#me").hidden = false;
  $("#me-avatar").textContent = initial(user.name);
  $("#me-name").textContent = user.name;
  $("#me-role").textContent = user.role;
  $("#app").hidden = false;
  startChat($("#chat"));
  startConsultation($("#consultation"));
  startReservation($("#reservation"));
  startNotifications($("#notifications"));
}

async function main() {
  const reply = await fetch("dev/tokens");
  if (!reply.ok) {
    const error = $("#load-error");
    error.textContent = `Could not load the demo users (HTTP ${reply.status}); is the server in dev mode?`;
    error.hidden = false;
    return;
  }
  demo.info = await reply.json();
  for (const u of demo.info.users) demo.names.set(u.id, u.name);
  $("#switch-user").addEventListener("click", () => {
    // A fresh page: every panel's listeners and sockets start over.
    sessionStorage.removeItem("demo-user");
    location.href = location.pathname;
  });
  const wanted = Number(new URLSearchParams(location.search).get("as") ?? sessionStorage.getItem("demo-user"));
  const user = demo.info.users.find((u) => u.id === wanted);
  if (user) start(user);
  else showPicker();
}

main();
