"""The example pages, served once they are built: the React example (web/example) at
/examples/react/ and the AI SDK chat example (web/chat-example) at /examples/chat/."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

from api import auth
from api.errors import error_response

bp = Blueprint("examples", __name__)

WEB = Path(__file__).resolve().parent.parent / "web"
REACT_DIST = WEB / "example" / "dist"
CHAT_DIST = WEB / "chat-example" / "dist"
BUILD_COMMAND = "npm --prefix web ci && npm --prefix web run build"


def _not_built(name: str) -> Response:
    return error_response(
        404,
        "not_found",
        f"The {name} example is not built: run `{BUILD_COMMAND}` in the repository.",
    )


def _page(dist: Path, name: str) -> Response:
    if not (dist / "index.html").is_file():
        return _not_built(name)
    return send_from_directory(dist, "index.html", max_age=0)


def _file(dist: Path, name: str, filename: str) -> Response:
    if not (dist / "index.html").is_file():
        return _not_built(name)
    # send_from_directory refuses paths that leave the folder (a 404).
    return send_from_directory(dist, filename)


@bp.get("/examples/react/")
@auth.public
def react_page() -> Response:
    """The React example page."""
    return _page(REACT_DIST, "React")


@bp.get("/examples/react/<path:filename>")
@auth.public
def react_file(filename: str) -> Response:
    """A file of the built React example (scripts, styles)."""
    return _file(REACT_DIST, "React", filename)


@bp.get("/examples/chat/")
@auth.public
def chat_page() -> Response:
    """The AI SDK chat example page (useChat with resume, either transport)."""
    return _page(CHAT_DIST, "AI SDK chat")


@bp.get("/examples/chat/<path:filename>")
@auth.public
def chat_file(filename: str) -> Response:
    """A file of the built AI SDK chat example (scripts, styles)."""
    return _file(CHAT_DIST, "AI SDK chat", filename)
