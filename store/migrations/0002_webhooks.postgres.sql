-- Webhooks to the main backend (docs/webhooks.md, store/webhooks.py). The
-- SQLite file (0002_webhooks.sqlite.sql) differs only in the id column.
--
-- The webhook outbox: one row per event and URL, written in the same
-- transaction as the change it reports, deleted once delivered. Per (url,
-- stream) rows go out in `id` order, the oldest pending one first: the head.
-- A node holds a stream while it holds the lease on its head (locked_by,
-- locked_until). state: `pending`, or `parked` once its retry window passed
-- (kept for an operator). Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id           BIGSERIAL PRIMARY KEY,
    url          TEXT NOT NULL,
    stream       TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    type         TEXT NOT NULL,
    event        TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_ms   BIGINT NOT NULL,
    next_ms      BIGINT NOT NULL DEFAULT 0,
    locked_by    TEXT,
    locked_until BIGINT,
    last_error   TEXT,
    parked_ms    BIGINT
);

CREATE INDEX IF NOT EXISTS webhook_outbox_pending ON webhook_outbox (url, stream, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_outbox_parked ON webhook_outbox (parked_ms) WHERE state = 'parked';

-- Users the backend was last told are online (`user.online`): a row is
-- inserted with that event and deleted with `user.offline`, in one
-- transaction, so the two always alternate per user.
CREATE TABLE IF NOT EXISTS webhook_online (
    user_id BIGINT PRIMARY KEY,
    since   TEXT NOT NULL
);
