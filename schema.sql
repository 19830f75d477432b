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

-- NULL client_msg_ids never collide, on both databases.
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_msg_id
    ON messages (room_id, sender_id, client_msg_id);

CREATE TABLE IF NOT EXISTS message_reads (
    message_id TEXT NOT NULL,
    user_id    BIGINT NOT NULL,
    read_at    TEXT NOT NULL,
    PRIMARY KEY (message_id, user_id)
);
