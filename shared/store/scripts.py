"""The store's Lua scripts, read once at import from the `.lua` files beside this module.

Redis runs a script by the SHA1 of its text (`EVALSHA`): `run` loads it on first use or
after a Redis restart; a pipeline cannot, so `queue` needs `load_scripts` first (again
after a `NoScriptError` answer).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from shared.redisconn import run_script


@dataclass(frozen=True)
class Script:
    """A Lua script of `shared/store/lua/` and the SHA1 Redis names it by."""

    source: str
    sha: str

    def run(self, r: redis.Redis, keys_: list[str], args: list[Any]) -> Any:
        """Run the script (`EVALSHA`, loading it on first use or after a restart)."""
        return run_script(r, self.source, keys_, args)

    def queue(self, pipe: Any, keys_: list[str], args: list[Any]) -> None:
        """Queue the script into a non-transactional `pipe`; run `load_scripts` first."""
        # redis-py's cluster pipeline refuses its `evalsha` method but routes the command
        # by its keys.
        pipe.execute_command("EVALSHA", self.sha, len(keys_), *keys_, *args)


_LUA = resources.files("shared.store") / "lua"


def _read(name: str) -> Script:
    source = (_LUA / f"{name}.lua").read_text("utf-8")
    # Redis names a script by the SHA1 of its text, not for security.
    return Script(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


CREATE = _read("create")
APPEND = _read("append")
ACQUIRE = _read("acquire")
RENEW = _read("renew")
RELEASE = _read("release")
CHAT_CLEAR = _read("chat_clear")


def load_scripts(r: redis.Redis) -> None:
    """Load the scripts `queue_chunk` and `queue_renew` run into Redis (a cluster's primaries)."""
    for script in (APPEND, RENEW):
        r.script_load(script.source)
