-- One schema for SQLite and PostgreSQL: portable types only, timestamps as
-- ISO 8601 text in UTC, booleans as 0/1. Applied at start-up; every statement
-- is idempotent.

CREATE TABLE IF NOT EXISTS users (
    id            BIGINT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL DEFAULT 'client',
    profile_image TEXT
);

CREATE TABLE IF NOT EXISTS rooms (
    id              TEXT PRIMARY KEY,
    consultation_id TEXT,
    created_at      TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS room_members (
    room_id TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- A stream is a per-room or per-user event log: seq is allocated from
-- streams.last_seq inside the writing transaction, so it is strict and
-- gap-free per stream, and stream_events keeps the exact frame for resume.
CREATE TABLE IF NOT EXISTS streams (
    stream   TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS stream_events (
    stream  TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    frame   TEXT NOT NULL,
    PRIMARY KEY (stream, seq)
);

CREATE TABLE IF NOT EXISTS messages (
    id            TEXT PRIMARY KEY,
    room_id       TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    sender_id     BIGINT NOT NULL,
    sender_name   TEXT NOT NULL,
    sender_image  TEXT,
    content       TEXT NOT NULL,
    message_type  TEXT NOT NULL,
    file_url      TEXT,
    file_name     TEXT,
    client_msg_id TEXT,
    created_at    TEXT NOT NULL,
    deleted_at    TEXT
);

CREATE INDEX IF NOT EXISTS messages_room_seq ON messages (room_id, seq);

-- A retry's key: only messages that carry a client_msg_id are indexed (NULLs
-- never collide anyway, and most clients send none: an index entry on a
-- random page for every message is a page more for every group commit).
DROP INDEX IF EXISTS messages_client_msg_id;
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_msg_key
    ON messages (room_id, sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS message_reads (
    message_id TEXT NOT NULL,
    user_id    BIGINT NOT NULL,
    read_at    TEXT NOT NULL,
    PRIMARY KEY (message_id, user_id)
);

-- status: waiting -> in_progress -> completed, or waiting -> cancelled.
-- end_reason: why it ended (time_up, ...) or the cancellation's reason.
CREATE TABLE IF NOT EXISTS consultations (
    id               TEXT PRIMARY KEY,
    expert_id        BIGINT NOT NULL,
    client_id        BIGINT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'waiting',
    scheduled_start  TEXT,
    duration_minutes INTEGER NOT NULL DEFAULT 50,
    started_at       TEXT,
    ends_at          TEXT,
    ended_at         TEXT,
    end_reason       TEXT,
    created_at       TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS consultations_status_ends ON consultations (status, ends_at);

-- status: open -> accepted | rejected.
CREATE TABLE IF NOT EXISTS consultation_extensions (
    id               TEXT PRIMARY KEY,
    consultation_id  TEXT NOT NULL REFERENCES consultations (id) ON DELETE CASCADE,
    requested_by     BIGINT NOT NULL,
    duration_minutes INTEGER NOT NULL,
    status           TEXT NOT NULL DEFAULT 'open',
    created_at       TEXT NOT NULL,
    answered_at      TEXT
);

-- At most one open request per consultation, on both databases.
CREATE UNIQUE INDEX IF NOT EXISTS consultation_extensions_open
    ON consultation_extensions (consultation_id) WHERE status = 'open';

-- Reservation chat: a client's requests to an expert and their whole life,
-- and the messages between the two. `seq` comes from the expert's counter
-- (`reservation:<expert_id>` in streams), so order is exact within a millisecond.
CREATE TABLE IF NOT EXISTS reservation_requests (
    id              TEXT PRIMARY KEY,
    expert_id       BIGINT NOT NULL,
    client_id       BIGINT NOT NULL,
    client_name     TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    child_name      TEXT NOT NULL,
    requested_date  TEXT NOT NULL,
    requested_time  TEXT NOT NULL,
    concern_summary TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    reason          TEXT,
    client_msg_id   TEXT,
    created_at      TEXT NOT NULL,
    answered_at     TEXT
);

CREATE INDEX IF NOT EXISTS reservation_requests_expert ON reservation_requests (expert_id, status, seq);
CREATE INDEX IF NOT EXISTS reservation_requests_client ON reservation_requests (expert_id, client_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS reservation_requests_client_msg_id
    ON reservation_requests (expert_id, client_id, client_msg_id);

CREATE TABLE IF NOT EXISTS reservation_messages (
    id            TEXT PRIMARY KEY,
    expert_id     BIGINT NOT NULL,
    client_id     BIGINT NOT NULL,
    client_name   TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    sender        TEXT NOT NULL,
    message       TEXT NOT NULL,
    client_msg_id TEXT,
    created_at    TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS reservation_messages_thread ON reservation_messages (expert_id, client_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS reservation_messages_client_msg_id
    ON reservation_messages (expert_id, client_id, sender, client_msg_id);

-- Per-user notifications; `seq` is the user's stream seq of `new_notification`,
-- `read_seq` the seq of the event that read it (NULL: unread).
CREATE TABLE IF NOT EXISTS notifications (
    id         TEXT PRIMARY KEY,
    user_id    BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    type       TEXT NOT NULL,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    action_url TEXT,
    read_seq   BIGINT,
    created_at TEXT NOT NULL
);

CREATE UNIQUE INDEX IF NOT EXISTS notifications_user_seq ON notifications (user_id, seq);

-- `POST /api/users/{id}/disconnect {"revoke": true}`: that user's tokens issued
-- at or before `revoked_before` (Unix ms; by `iat`, tokens without one too)
-- are refused. One row per user, only ever moved forward.
CREATE TABLE IF NOT EXISTS token_revocations (
    user_id        BIGINT PRIMARY KEY,
    revoked_before BIGINT NOT NULL,
    revoked_at     TEXT NOT NULL
);

-- Stream events committed but not yet known to be published (store/outbox.py):
-- written with the event's stream_events row only when the broker can fail
-- (Redis), deleted once the broker took the publish. Rows a process could not
-- publish (broker away, or it died) are published by any live process's relay.
-- created_ms: the committing process's clock, Unix milliseconds.
CREATE TABLE IF NOT EXISTS stream_outbox (
    stream     TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (stream, seq)
);

-- Retention (docs/retention.md). Columns added after the first release are
-- added with `ADD COLUMN IF NOT EXISTS`: PostgreSQL runs it as it is; on
-- SQLite, which lacks the clause, the store adds the column only when
-- `PRAGMA table_info` does not list it (store/db.py).
-- When the event was written; old events are pruned by it. NULL (rows from
-- before this column): the pruner stamps them with the time it first sees them.
ALTER TABLE stream_events ADD COLUMN IF NOT EXISTS created_at TEXT;
CREATE INDEX IF NOT EXISTS stream_events_created ON stream_events (created_at);

-- A chat notification is coalesced per user and room while unread: `room_id`
-- is its room (NULL for other notifications), `message_count` how many
-- messages it stands for. At most one unread one per (user, room).
-- A stream's epoch: a random id given when its row is created (or, for a row
-- from before this column, when it is first read). A database reset or restore
-- makes new rows with new epochs, so a client's `?since=` from before it is
-- answered with `resync_required` instead of a silent replay of other events.
ALTER TABLE streams ADD COLUMN IF NOT EXISTS epoch TEXT;

ALTER TABLE notifications ADD COLUMN IF NOT EXISTS room_id TEXT;
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS message_count INTEGER;
CREATE UNIQUE INDEX IF NOT EXISTS notifications_unread_chat
    ON notifications (user_id, room_id) WHERE room_id IS NOT NULL AND read_seq IS NULL;
-- Read notifications by age, for the pruner; unread ones are not indexed here.
CREATE INDEX IF NOT EXISTS notifications_read_created
    ON notifications (created_at) WHERE read_seq IS NOT NULL;
