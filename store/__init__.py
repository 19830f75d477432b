"""The store: all SQL lives here. Plain values in, plain records out."""
