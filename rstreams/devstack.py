"""Where a running `rstreams dev` stack leaves its address, so that the `rstreams` command
and `Client()` find it without being told.

The file is `rstreams/dev.json` under `$XDG_RUNTIME_DIR` (per user, cleared at logout), else
under `$XDG_CACHE_HOME` or `~/.cache`. It names the stack's process; an address whose
process has gone is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path


def state_path(env: Mapping[str, str]) -> Path:
    """The file a running dev stack writes its address to."""
    base = env.get("XDG_RUNTIME_DIR") or env.get("XDG_CACHE_HOME")
    folder = Path(base) if base else Path.home() / ".cache"
    return folder / "rstreams" / "dev.json"


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def write(env: Mapping[str, str], url: str) -> Path:
    """Note that this process serves the dev stack at `url`."""
    path = state_path(env)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def remove(env: Mapping[str, str]) -> None:
    """Take the note away, if it is still this process's."""
    path = state_path(env)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def running_url(env: Mapping[str, str]) -> str | None:
    """The address of the dev stack running now, or None."""
    try:
        state = json.loads(state_path(env).read_text())
        url, pid = str(state["url"]), int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if _is_alive(pid) else None
