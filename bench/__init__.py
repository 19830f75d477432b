"""Load, peers and a runner that measure the server's speed and memory beside
a bare `websockets` server and Django Channels (see bench/README.md)."""
