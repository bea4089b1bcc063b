"""Typed settings, read once from the environment at the edge (`Settings.from_env`)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from shared import origins
from shared.errors import ConfigError

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
OPENAI_BASE_URL = "https://api.openai.com/v1"
DEMO_MODEL = "demo"
KEY_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")
MIN_TOKEN_SECRET_LEN = 32


def _str(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _url(env: Mapping[str, str], name: str, default: str, schemes: tuple[str, ...]) -> str:
    value = _str(env, name, default)
    if not value.startswith(tuple(f"{s}://" for s in schemes)):
        raise ConfigError(f"{name} must start with one of {', '.join(schemes)}://, got {value!r}")
    return value


def _patterns(env: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in _str(env, name, default).split(",") if p.strip())


def _origins(env: Mapping[str, str]) -> tuple[str, ...]:
    """ALLOWED_ORIGINS: exact `scheme://host[:port]` origins, or `*` alone; empty: same origin."""
    entries = _patterns(env, "ALLOWED_ORIGINS", "")
    if origins.ANY in entries:
        if len(entries) > 1:
            raise ConfigError("ALLOWED_ORIGINS must be * alone or a list of origins, not both")
        return (origins.ANY,)
    out = []
    for n, entry in enumerate(entries, 1):
        origin = origins.normalize(entry)
        if origin is None or not entry.lower().startswith(("http://", "https://")):
            raise ConfigError(
                f"ALLOWED_ORIGINS entry {n} ({entry!r}) is not an origin like "
                "https://app.example.com (http or https, a host, an optional port, no path)"
            )
        out.append(origin)
    return tuple(dict.fromkeys(out))


def _hosts(env: Mapping[str, str]) -> tuple[str, ...]:
    """ALLOWED_HOSTS: host names (`api.example.com`), domains with their subdomains
    (`.example.com`), or `*` alone (any); the loopback names are always allowed."""
    entries = _patterns(env, "ALLOWED_HOSTS", "")
    if origins.ANY in entries:
        if len(entries) > 1:
            raise ConfigError("ALLOWED_HOSTS must be * alone or a list of host names, not both")
        return (origins.ANY,)
    out = []
    for n, entry in enumerate(entries, 1):
        is_domain = entry.startswith(".")
        parsed = origins.split_host(entry[1:] if is_domain else entry)
        if parsed is None or parsed[1] is not None:
            raise ConfigError(
                f"ALLOWED_HOSTS entry {n} ({entry!r}) is not a host name like api.example.com "
                "or .example.com (no scheme, no port, no path)"
            )
        out.append(("." if is_domain else "") + parsed[0])
    return tuple(dict.fromkeys(out))


def _public_url(env: Mapping[str, str]) -> str:
    """PUBLIC_URL as an origin (`https://api.example.com`); on Heroku, with its dyno
    metadata on, the app's own domain by default; else empty."""
    name, raw = "PUBLIC_URL", env.get("PUBLIC_URL", "").strip()
    heroku = env.get("HEROKU_APP_DEFAULT_DOMAIN_NAME", "").strip()
    if not raw and heroku:
        name, raw = "HEROKU_APP_DEFAULT_DOMAIN_NAME", f"https://{heroku}"
    if not raw:
        return ""
    origin = origins.normalize(raw.rstrip("/"))
    if origin is None or not raw.lower().startswith(("http://", "https://")):
        raise ConfigError(
            f"{name} must be the address clients reach the API at, like "
            f"https://api.example.com (http or https, a host, an optional port, no path), "
            f"got {raw[:100]!r}"
        )
    return origin


def _key_entries(lines: list[str], where: str, *, numbered: bool) -> list[tuple[str, str]]:
    """`<key id>:<sha256 hex>` entries; `where` names the variable in errors."""
    out = []
    for n, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        key_id, _, digest = entry.partition(":")
        digest = digest.strip().lower()
        if not KEY_ID_RE.fullmatch(key_id) or not _SHA256_HEX_RE.fullmatch(digest):
            # Never echo the entry: it may be a raw key pasted by mistake.
            place = f"{where} line {n}" if numbered else f"{where} entry {n}"
            raise ConfigError(
                f"{place} is not <key id>:<sha256 hex of the key> (key ids of letters, "
                "digits, '_', '.', '-'; `python -m api.apikeys` prints entries)"
            )
        out.append((key_id, digest))
    return out


def _api_keys(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    entries = _key_entries(env.get("API_KEYS", "").split(","), "API_KEYS", numbered=False)
    path = env.get("API_KEYS_FILE", "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise ConfigError(f"API_KEYS_FILE {path!r} cannot be read: {e.strerror}") from None
        entries += _key_entries(lines, f"API_KEYS_FILE {path!r}", numbered=True)
    # One key id may have several keys (a rotation in progress): they own the same sessions.
    return tuple(dict.fromkeys(entries))


def _token_secret(env: Mapping[str, str], has_keys: bool) -> str:
    secret = env.get("STREAM_TOKEN_SECRET", "").strip()
    if secret and len(secret) < MIN_TOKEN_SECRET_LEN:
        raise ConfigError(
            f"STREAM_TOKEN_SECRET must be at least {MIN_TOKEN_SECRET_LEN} characters long"
        )
    if has_keys and not secret:
        raise ConfigError(
            "STREAM_TOKEN_SECRET must be set (a random string of at least "
            f"{MIN_TOKEN_SECRET_LEN} characters) when API_KEYS or API_KEYS_FILE configures keys"
        )
    return secret


def _check_cluster(env: Mapping[str, str], redis_url: str) -> None:
    if redis_url.startswith("unix://"):
        raise ConfigError("REDIS_CLUSTER needs a redis:// or rediss:// REDIS_URL naming a node")
    broker = env.get("CELERY_BROKER_URL", "").strip()
    # kombu's Redis transport speaks to one server: its queue keys would land on other
    # nodes of a cluster and every command would answer MOVED.
    if not broker or broker == redis_url:
        raise ConfigError(
            "CELERY_BROKER_URL must be set to a standalone Redis or amqp:// broker when "
            "REDIS_CLUSTER is on: Celery's Redis broker cannot use a Redis Cluster"
        )


def _log_format(env: Mapping[str, str]) -> str:
    value = _str(env, "LOG_FORMAT", "text").lower()
    if value not in ("text", "json"):
        raise ConfigError(f"LOG_FORMAT must be text or json, not {value[:20]!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the API and the workers can be configured with; see `.env.example`."""

    redis_url: str = "redis://localhost:6379/0"
    # REDIS_URL names any node of a Redis Cluster (Redis 7+: sharded pub/sub).
    redis_cluster: bool = False
    celery_broker_url: str = "redis://localhost:6379/0"
    default_model: str = DEMO_MODEL
    model_allowlist: tuple[str, ...] = ("demo*",)
    stream_ttl_s: int = 86400
    stream_maxlen: int = 100_000
    max_tokens_cap: int = 8192
    max_body_bytes: int = 4 * 1024 * 1024
    max_prompt_chars: int = 200_000
    max_messages: int = 500
    max_messages_chars: int = 200_000
    # Per caller (API key id; client address in open mode); 0 turns a limit off.
    rate_creates_per_min: int = 120
    rate_window_s: int = 60
    max_running_per_caller: int = 100
    max_followers_per_session: int = 500
    max_followers_per_caller: int = 1000
    # Followers with a stream token count here only, never against their key's limits.
    max_token_followers_per_session: int = 100
    follower_lease_s: int = 60
    # Messages a WebSocket client may send per minute (they are ignored); past it, close 1008.
    ws_client_messages_per_min: int = 120
    demo_tokens_per_s: float = 20.0
    demo_max_tokens: int = 200
    provider_base_url: str = OPENROUTER_BASE_URL
    provider_api_key: str = field(default="", repr=False)
    # A key or PROVIDER_BASE_URL is set: models other than `demo` go to the provider.
    has_provider: bool = False
    provider_http_referer: str = ""
    provider_x_title: str = ""
    provider_connect_timeout_s: float = 10.0
    provider_read_timeout_s: float = 120.0
    provider_max_retries: int = 3
    provider_backoff_base_s: float = 0.5
    provider_backoff_max_s: float = 8.0
    lease_ttl_s: int = 15
    max_attempts: int = 3
    reaper_interval_s: float = 5.0
    queued_requeue_s: int = 60
    queued_timeout_s: int = 600
    prefill_models: tuple[str, ...] = ()
    celery_queue: str = "generate"
    worker_buffer_chunks: int = 10_000
    redis_outage_max_s: float = 300.0
    visibility_timeout_s: int = 7200
    worker_concurrency: int = 200
    xread_block_ms: int = 5000
    sse_ping_s: float = 15.0
    ws_ping_s: float = 25.0
    ws_send_timeout_s: float = 30.0
    # The API's command pool; with the hub's reader and Celery's two broker connections, an
    # API process holds 5 Redis connections however many followers it serves.
    redis_max_connections: int = 2
    follower_max_connections: int = 2000
    trust_proxy_headers: bool = False
    # (key id, sha256 hex of the key); empty: the API runs open, without credentials.
    api_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    stream_token_secret: str = field(default="", repr=False)
    stream_token_ttl_s: int = 3600
    # Browser origins, besides the API's own, that may use it (CORS, WebSocket, SSE); ("*",): any.
    allowed_origins: tuple[str, ...] = ()
    # Host names the API answers (besides the loopback names and PUBLIC_URL's); ("*",): any.
    allowed_hosts: tuple[str, ...] = ()
    # Where clients reach the API (`https://api.example.com`): the streamUrl and wsUrl of
    # every answer; empty: the host the request named (one of the allowed ones).
    public_url: str = ""
    # `text` or `json` (one JSON object per line, with the session id: shared/logs.py).
    log_format: str = "text"
    # How often an API process adds its deliveries to Redis and rewrites its follower count
    # there (`/metrics`); a count not rewritten for 3 intervals + 2 s is a dead process's.
    metrics_flush_s: float = 2.0

    @property
    def has_api_keys(self) -> bool:
        """Whether callers must present an API key (or a stream token)."""
        return bool(self.api_keys)

    @property
    def has_provider_key(self) -> bool:
        """Whether a provider key is configured."""
        return bool(self.provider_api_key)

    def is_host_allowed(self, host: str) -> bool:
        """Whether the API answers requests for `host` (`split_host`'s lowercased name)."""
        if host in origins.LOOPBACK_HOSTS or origins.ANY in self.allowed_hosts:
            return True
        public = origins.split_host(self.public_url.partition("://")[2])
        if public is not None and host == public[0]:
            return True
        return any(
            host == entry or (entry.startswith(".") and (host.endswith(entry) or host == entry[1:]))
            for entry in self.allowed_hosts
        )

    def may_prefill(self, model: str) -> bool:
        """Whether `model` continues an answer given as a trailing assistant message."""
        return any(fnmatchcase(model, pattern) for pattern in self.prefill_models)

    def is_model_allowed(self, model: str) -> bool:
        """Whether `model` matches one of the allowlist's patterns."""
        return any(fnmatchcase(model, pattern) for pattern in self.model_allowlist)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; a bad value raises `ConfigError`."""
        env = os.environ if environ is None else environ
        redis_url = _url(env, "REDIS_URL", cls.redis_url, ("redis", "rediss", "unix"))
        redis_cluster = _bool(env, "REDIS_CLUSTER", cls.redis_cluster)
        if redis_cluster:
            _check_cluster(env, redis_url)
        key = (
            env.get("PROVIDER_API_KEY", "").strip()
            or env.get("OPENROUTER_API_KEY", "").strip()
            or env.get("OPENAI_API_KEY", "").strip()
        )
        only_openai = bool(env.get("OPENAI_API_KEY", "").strip()) and not (
            env.get("PROVIDER_API_KEY", "").strip() or env.get("OPENROUTER_API_KEY", "").strip()
        )
        base_url = _url(
            env,
            "PROVIDER_BASE_URL",
            OPENAI_BASE_URL if only_openai else OPENROUTER_BASE_URL,
            ("http", "https"),
        ).rstrip("/")
        if key:
            default_model = "gpt-4o-mini" if only_openai else "openai/gpt-4o-mini"
            default_allowlist = "demo*,*"
        elif env.get("PROVIDER_BASE_URL", "").strip():
            # A local server (Ollama, llama.cpp's, LM Studio) needs no key; which models it
            # has is not ours to guess, so `demo` stays the default.
            default_model, default_allowlist = DEMO_MODEL, "demo*,*"
        else:
            default_model, default_allowlist = DEMO_MODEL, "demo*"
        allowlist = _patterns(env, "MODEL_ALLOWLIST", default_allowlist)
        api_keys = _api_keys(env)
        settings = cls(
            redis_url=redis_url,
            redis_cluster=redis_cluster,
            celery_broker_url=_str(env, "CELERY_BROKER_URL", redis_url),
            default_model=_str(env, "DEFAULT_MODEL", default_model),
            model_allowlist=allowlist,
            stream_ttl_s=_int(env, "STREAM_TTL_S", cls.stream_ttl_s, minimum=1),
            stream_maxlen=_int(env, "STREAM_MAXLEN", cls.stream_maxlen, minimum=3),
            max_tokens_cap=_int(env, "MAX_TOKENS_CAP", cls.max_tokens_cap, minimum=1),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", cls.max_body_bytes, minimum=1024),
            max_prompt_chars=_int(env, "MAX_PROMPT_CHARS", cls.max_prompt_chars, minimum=1),
            max_messages=_int(env, "MAX_MESSAGES", cls.max_messages, minimum=1),
            max_messages_chars=_int(env, "MAX_MESSAGES_CHARS", cls.max_messages_chars, minimum=1),
            rate_creates_per_min=_int(env, "RATE_CREATES_PER_MIN", cls.rate_creates_per_min),
            rate_window_s=_int(env, "RATE_WINDOW_S", cls.rate_window_s, minimum=1),
            max_running_per_caller=_int(env, "MAX_RUNNING_PER_CALLER", cls.max_running_per_caller),
            max_followers_per_session=_int(
                env, "MAX_FOLLOWERS_PER_SESSION", cls.max_followers_per_session
            ),
            max_followers_per_caller=_int(
                env, "MAX_FOLLOWERS_PER_CALLER", cls.max_followers_per_caller
            ),
            max_token_followers_per_session=_int(
                env, "MAX_TOKEN_FOLLOWERS_PER_SESSION", cls.max_token_followers_per_session
            ),
            follower_lease_s=_int(env, "FOLLOWER_LEASE_S", cls.follower_lease_s, minimum=3),
            ws_client_messages_per_min=_int(
                env, "WS_CLIENT_MESSAGES_PER_MIN", cls.ws_client_messages_per_min
            ),
            demo_tokens_per_s=_float(env, "DEMO_TOKENS_PER_S", cls.demo_tokens_per_s),
            demo_max_tokens=_int(env, "DEMO_MAX_TOKENS", cls.demo_max_tokens, minimum=1),
            provider_base_url=base_url,
            provider_api_key=key,
            has_provider=bool(key or env.get("PROVIDER_BASE_URL", "").strip()),
            provider_http_referer=_str(env, "PROVIDER_HTTP_REFERER", ""),
            provider_x_title=_str(env, "PROVIDER_X_TITLE", ""),
            provider_connect_timeout_s=_float(
                env, "PROVIDER_CONNECT_TIMEOUT_S", cls.provider_connect_timeout_s, minimum=0.1
            ),
            provider_read_timeout_s=_float(
                env, "PROVIDER_READ_TIMEOUT_S", cls.provider_read_timeout_s, minimum=0.1
            ),
            provider_max_retries=_int(env, "PROVIDER_MAX_RETRIES", cls.provider_max_retries),
            provider_backoff_base_s=_float(
                env, "PROVIDER_BACKOFF_BASE_S", cls.provider_backoff_base_s
            ),
            provider_backoff_max_s=_float(
                env, "PROVIDER_BACKOFF_MAX_S", cls.provider_backoff_max_s
            ),
            lease_ttl_s=_int(env, "LEASE_TTL_S", cls.lease_ttl_s, minimum=3),
            max_attempts=_int(env, "MAX_ATTEMPTS", cls.max_attempts, minimum=1),
            reaper_interval_s=_float(env, "REAPER_INTERVAL_S", cls.reaper_interval_s, minimum=0.1),
            queued_requeue_s=_int(env, "QUEUED_REQUEUE_S", cls.queued_requeue_s, minimum=1),
            queued_timeout_s=_int(env, "QUEUED_TIMEOUT_S", cls.queued_timeout_s, minimum=1),
            prefill_models=_patterns(env, "PREFILL_MODELS", ""),
            celery_queue=_str(env, "CELERY_QUEUE", cls.celery_queue),
            worker_buffer_chunks=_int(
                env, "WORKER_BUFFER_CHUNKS", cls.worker_buffer_chunks, minimum=1
            ),
            redis_outage_max_s=_float(env, "REDIS_OUTAGE_MAX_S", cls.redis_outage_max_s, minimum=1),
            visibility_timeout_s=_int(
                env, "VISIBILITY_TIMEOUT_S", cls.visibility_timeout_s, minimum=60
            ),
            worker_concurrency=_int(env, "WORKER_CONCURRENCY", cls.worker_concurrency, minimum=1),
            xread_block_ms=_int(env, "XREAD_BLOCK_MS", cls.xread_block_ms, minimum=100),
            sse_ping_s=_float(env, "SSE_PING_S", cls.sse_ping_s, minimum=0.1),
            ws_ping_s=_float(env, "WS_PING_S", cls.ws_ping_s, minimum=0.1),
            ws_send_timeout_s=_float(env, "WS_SEND_TIMEOUT_S", cls.ws_send_timeout_s, minimum=0.1),
            redis_max_connections=_int(
                env, "REDIS_MAX_CONNECTIONS", cls.redis_max_connections, minimum=2
            ),
            follower_max_connections=_int(
                env, "FOLLOWER_MAX_CONNECTIONS", cls.follower_max_connections, minimum=2
            ),
            trust_proxy_headers=_bool(env, "TRUST_PROXY_HEADERS", cls.trust_proxy_headers),
            api_keys=api_keys,
            stream_token_secret=_token_secret(env, bool(api_keys)),
            stream_token_ttl_s=_int(env, "STREAM_TOKEN_TTL_S", cls.stream_token_ttl_s, minimum=1),
            allowed_origins=_origins(env),
            allowed_hosts=_hosts(env),
            public_url=_public_url(env),
            log_format=_log_format(env),
            metrics_flush_s=_float(env, "METRICS_FLUSH_S", cls.metrics_flush_s, minimum=0.1),
        )
        if not settings.is_model_allowed(settings.default_model):
            raise ConfigError(
                f"DEFAULT_MODEL {settings.default_model!r} is not allowed by MODEL_ALLOWLIST"
            )
        # A follower renews its place when a third of the lease has passed, before a read
        # (up to XREAD_BLOCK_MS) and a send (up to WS_SEND_TIMEOUT_S): both must fit in
        # the other two thirds, or a live follower's place could lapse under it.
        busy_s = settings.xread_block_ms / 1000 + settings.ws_send_timeout_s
        if busy_s >= settings.follower_lease_s * 2 / 3:
            raise ConfigError(
                f"FOLLOWER_LEASE_S ({settings.follower_lease_s}) must be more than 1.5 times "
                f"XREAD_BLOCK_MS / 1000 + WS_SEND_TIMEOUT_S ({busy_s:g} s)"
            )
        return settings
