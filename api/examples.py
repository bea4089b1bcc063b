"""The React example page (web/example), served at /examples/react/ once it is built."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

from api import auth
from api.errors import error_response

bp = Blueprint("examples", __name__)

REACT_DIST = Path(__file__).resolve().parent.parent / "web" / "example" / "dist"
BUILD_COMMAND = "npm --prefix web ci && npm --prefix web run build"


def _not_built() -> Response:
    return error_response(
        404,
        "not_found",
        f"The React example is not built: run `{BUILD_COMMAND}` in the repository.",
    )


@bp.get("/examples/react/")
@auth.public
def react_page() -> Response:
    """The React example page."""
    if not (REACT_DIST / "index.html").is_file():
        return _not_built()
    return send_from_directory(REACT_DIST, "index.html", max_age=0)


@bp.get("/examples/react/<path:filename>")
@auth.public
def react_file(filename: str) -> Response:
    """A file of the built React example (scripts, styles)."""
    if not (REACT_DIST / "index.html").is_file():
        return _not_built()
    # send_from_directory refuses paths that leave the folder (a 404).
    return send_from_directory(REACT_DIST, filename)
