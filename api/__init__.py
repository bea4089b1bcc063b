"""The producer edge: HTTP and WebSocket handlers, validation, error mapping."""
