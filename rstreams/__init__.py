"""Python client and command line of resumable LLM streams."""

from rstreams.client import (
    Cancelled,
    Chunk,
    Client,
    Done,
    Error,
    Event,
    Reasoning,
    RstreamsError,
    Session,
    Status,
    ToolCall,
    is_terminal,
)

__all__ = [
    "Cancelled",
    "Chunk",
    "Client",
    "Done",
    "Error",
    "Event",
    "Reasoning",
    "RstreamsError",
    "Session",
    "Status",
    "ToolCall",
    "is_terminal",
]
