"""What must hold in the store whatever clients sent: no half-written change."""

from __future__ import annotations

import json

from realtime.store.db import Db


async def store_is_whole(db: Db) -> None:
    """Every seq-carrying stream is gap-free up to its `last_seq`, each event's
    frame carries its own seq (a chat message's event is its row), and every
    message and notification has its event."""
    rows = await db.fetch_all(
        "SELECT s.stream, s.last_seq, COUNT(e.seq), MIN(e.seq), MAX(e.seq) FROM streams s "
        "LEFT JOIN stream_events e ON e.stream = s.stream GROUP BY s.stream, s.last_seq"
    )
    for stream, last, count, low, high in rows:
        if stream.startswith(("room:", "user:")):
            assert int(count) == int(last) and (not last or (int(low), int(high)) == (1, int(last))), stream
    assert (
        await db.fetch_all(
            "SELECT e.stream FROM stream_events e LEFT JOIN streams s ON s.stream = e.stream WHERE s.stream IS NULL"
        )
        == []
    )
    for stream, seq, frame in await db.fetch_all("SELECT stream, seq, frame FROM stream_events"):
        if frame == "":
            continue  # a chat message's event: its message row (store/message_rows.py), checked below
        assert json.loads(frame)["seq"] == int(seq), (stream, seq, frame)
    assert (
        await db.fetch_all(
            "SELECT e.stream, e.seq FROM stream_events e LEFT JOIN messages m "
            "ON e.stream = 'room:' || m.room_id AND e.seq = m.seq WHERE e.frame = '' AND m.id IS NULL"
        )
        == []
    )
    assert (
        await db.fetch_all(
            "SELECT m.id FROM messages m LEFT JOIN stream_events e "
            "ON e.stream = 'room:' || m.room_id AND e.seq = m.seq WHERE e.seq IS NULL"
        )
        == []
    )
    assert (
        await db.fetch_all(
            "SELECT n.id FROM notifications n LEFT JOIN stream_events e "
            "ON e.stream = 'user:' || CAST(n.user_id AS TEXT) AND e.seq = n.seq WHERE e.seq IS NULL"
        )
        == []
    )
    assert (
        await db.fetch_all(
            "SELECT n.id FROM notifications n LEFT JOIN stream_events e "
            "ON e.stream = 'user:' || CAST(n.user_id AS TEXT) AND e.seq = n.read_seq "
            "WHERE n.read_seq IS NOT NULL AND e.seq IS NULL"
        )
        == []
    )
    assert (
        await db.fetch_all(
            "SELECT r.message_id FROM message_reads r LEFT JOIN messages m ON m.id = r.message_id WHERE m.id IS NULL"
        )
        == []
    )
    # Reservation requests and messages share one counter per expert, one seq per row.
    counters = await db.fetch_all(
        "SELECT s.stream, s.last_seq, "
        "(SELECT COUNT(*) FROM reservation_requests r WHERE 'reservation:' || CAST(r.expert_id AS TEXT) = s.stream) + "
        "(SELECT COUNT(*) FROM reservation_messages m WHERE 'reservation:' || CAST(m.expert_id AS TEXT) = s.stream) "
        "FROM streams s WHERE s.stream LIKE 'reservation:%'"
    )
    for stream, last, rows_written in counters:
        assert int(last) == int(rows_written), stream
