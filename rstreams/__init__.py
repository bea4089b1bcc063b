"""Python client and command line of resumable LLM streams."""

from rstreams.client import (
    Cancelled,
    Chunk,
    Client,
    Done,
    Error,
    Event,
    RstreamsError,
    Session,
    Status,
    is_terminal,
)

__all__ = [
    "Cancelled",
    "Chunk",
    "Client",
    "Done",
    "Error",
    "Event",
    "RstreamsError",
    "Session",
    "Status",
    "is_terminal",
]
