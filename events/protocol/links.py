"""URLs that clients render as links (a chat message's `file_url`, a
notification's `action_url`): an http(s) URL or a path on this server, never
something a browser reads as another host or as script."""

from __future__ import annotations

from urllib.parse import unquote


def safe_url(url: str) -> bool:
    # No javascript:, data: or other schemes, and no path that a browser resolves to another host.
    if _unclean(url):
        return False
    if url.startswith(("https://", "http://")):
        return True
    return _local_path(url)


def _unclean(url: str) -> bool:
    # Browsers read `\` as `/`, and drop tabs and newlines: `/\evil` and `/\t/evil` are `//evil`.
    return "\\" in url or not url.isprintable()


def _local_path(url: str) -> bool:
    """A path on this server: `/x`, never the scheme-relative `//host` in any spelling,
    even for a client that percent-decodes it (once or more) before following it."""
    for _ in range(3):
        if not url.startswith("/") or url.startswith("//") or _unclean(url):
            return False
        decoded = unquote(url)
        if decoded == url:
            return True
        url = decoded
    return False  # still encoded three times over: nobody means that
