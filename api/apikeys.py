"""API keys: how they are stored (sha256 hex), checked, and made.

`python -m api.apikeys new <key id>` prints a fresh key and its `API_KEYS` entry;
`python -m api.apikeys hash <key id>` reads a key on stdin and prints its entry.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys

KEY_PREFIX = "rsk_"


def hash_key(key: str) -> str:
    """The sha256 hex digest `API_KEYS` stores for `key`."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_id_of(key: str, accepted: tuple[tuple[str, str], ...]) -> str | None:
    """The id of the configured key `key` is, or None; compares every digest in constant time."""
    digest = hash_key(key)
    found = None
    for key_id, expected in accepted:
        if hmac.compare_digest(digest, expected):
            found = key_id
    return found


def main(argv: list[str]) -> int:
    """The command line: `new <key id>` or `hash <key id>` (key on stdin)."""
    if len(argv) != 2 or argv[0] not in ("new", "hash"):
        print("usage: python -m api.apikeys new <key id> | hash <key id> < key", file=sys.stderr)
        return 2
    command, key_id = argv
    if command == "new":
        key = new_key()
        print(f"key (give it to the client, store it nowhere else): {key}")
        print(f"API_KEYS entry: {key_id}:{hash_key(key)}")
    else:
        key = sys.stdin.readline().strip()
        if not key:
            print("no key on stdin", file=sys.stderr)
            return 2
        print(f"{key_id}:{hash_key(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
