"""Domain errors a store call raises; the endpoints map them to error codes."""


class StoreError(Exception):
    code = "invalid_payload"


class NotFound(StoreError):
    code = "not_found"


class Forbidden(StoreError):
    code = "forbidden"


class Conflict(StoreError):
    code = "conflict"


class AccessEnded(Forbidden):
    """The user has lost access to the channel (a room member removed): the socket closes with 4003."""
