"""The texts of the notifications the server writes itself (reservations, chat).

Templates come from a JSON file per locale shipped in `texts/` (NOTIFICATION_LOCALE,
`ko` by default: the platform's client shows Korean) or from the operator's own file
(NOTIFICATION_TEXTS); settings.py loads and checks them at start-up, so a missing
key or an unknown placeholder stops the server before it serves anything.
"""

from __future__ import annotations

from collections.abc import Mapping

from ...settings import Settings


class NotificationTexts:
    def __init__(self, templates: Mapping[str, str]) -> None:
        self.templates = dict(templates)

    @classmethod
    def for_settings(cls, settings: Settings) -> NotificationTexts:
        return cls(settings.notification_templates())

    @classmethod
    def default(cls) -> NotificationTexts:
        return cls.for_settings(Settings())

    def render(self, key: str, **values: str) -> str:
        # Values are passed, never parsed: a user's name with braces stays as it is.
        return self.templates[key].format_map(values)
