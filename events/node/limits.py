"""Abuse limits: token buckets for frames, and what counts as sustained abuse."""

from __future__ import annotations

import time

# Frames that cost less than a full token: typing indicators come in bursts
# while a person types, pings and presence every few seconds.
CHEAP = {"typing_start": 0.25, "typing_stop": 0.25, "ping": 0.25, "presence_update": 0.25}
# Rejected frames within ABUSE_WINDOW seconds that turn rate limiting into a close (1008).
ABUSE_REJECTS = 100
ABUSE_WINDOW = 10.0


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, cost: float = 1.0) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


class AbuseMeter:
    """Counts rejected frames in a sliding window of fixed buckets."""

    __slots__ = ("count", "started")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.count = 0

    def reject(self) -> bool:
        """Record one rejected frame; True when the abuse is sustained."""
        now = time.monotonic()
        if now - self.started > ABUSE_WINDOW:
            self.started, self.count = now, 0
        self.count += 1
        return self.count > ABUSE_REJECTS
