"""The error codes of the protocol's `error` frame."""

INVALID_JSON = "invalid_json"
UNKNOWN_TYPE = "unknown_type"
INVALID_PAYLOAD = "invalid_payload"
NOT_FOUND = "not_found"
FORBIDDEN = "forbidden"
RATE_LIMITED = "rate_limited"
CONFLICT = "conflict"
UNAVAILABLE = "unavailable"  # the store is away for now: retry (with the same client_msg_id)

CODES = (INVALID_JSON, UNKNOWN_TYPE, INVALID_PAYLOAD, NOT_FOUND, FORBIDDEN, RATE_LIMITED, CONFLICT, UNAVAILABLE)
