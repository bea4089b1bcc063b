"""Field names of a session's meta hash (`keys.meta`, `rs:{<id>}:meta`), spelled once for
Python as `shared/keys.py` spells the key names.

`shared.store.SessionMeta` reads the hash into a record with these names as attributes.
The Lua scripts in `shared/store/lua/` spell the same names (`'status'`, `'attempt'`,
`'chunks'`, `'last_id'`, `'updated_ms'`, `'error'`, `'worker'`): change a name in both.
"""

from __future__ import annotations

STATUS = "status"  # a `store.Status` value
MODEL = "model"
REQUEST = "request"  # the stored `GenerationRequest` as JSON
OWNER = "owner"  # the API key id that created the session ("" in open mode)
QUEUE = "queue"  # the Celery queue its job goes to
CREATED_MS = "created_ms"
UPDATED_MS = "updated_ms"
ENQUEUED_MS = "enqueued_ms"  # last time the job was sent (the reaper's clock)
CHUNKS = "chunks"  # chunks written so far
LAST_ID = "last_id"  # the stream id of the last event
ATTEMPT = "attempt"  # the lease's fencing token, incremented by each taker
WORKER = "worker"  # who took the lease last
REQUEUES = "requeues"  # how often the reaper handed the session out again
FINISH_REASON = "finish_reason"
USAGE = "usage"  # JSON
ERROR = "error"  # JSON `{"code", "message"}`
RESPONSE = "response"  # JSON: what a `POST /v1/responses` asked besides the generation
