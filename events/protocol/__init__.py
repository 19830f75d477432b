"""The protocol: frames in and out, their decoding and their builders. Knows no SQL and no broker."""
