"""Typed settings, read once from the environment at the edge (`Settings.from_env`).

Each setting is declared once, as a field of its group (`settings.redis.url`,
`settings.api.xread_block_ms`, ...): its variable, default, minimum and help. `load`
reads a group's fields; a field with its own parser (origins, keys, provider defaults)
names the function, and checks across fields run after everything is read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from fnmatch import fnmatchcase
from typing import Any, TypeVar

from shared import origins
from shared.errors import ConfigError

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
OPENAI_BASE_URL = "https://api.openai.com/v1"
DEMO_MODEL = "demo"
KEY_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")
MIN_TOKEN_SECRET_LEN = 32
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
REDIS_SCHEMES = ("redis", "rediss", "unix")

T = TypeVar("T")
G = TypeVar("G")
Parser = Callable[[Mapping[str, str]], Any]


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


def _token_secret(env: Mapping[str, str]) -> str:
    secret = env.get("STREAM_TOKEN_SECRET", "").strip()
    if secret and len(secret) < MIN_TOKEN_SECRET_LEN:
        raise ConfigError(
            f"STREAM_TOKEN_SECRET must be at least {MIN_TOKEN_SECRET_LEN} characters long"
        )
    return secret


def _redis_url(env: Mapping[str, str]) -> str:
    return _url(env, "REDIS_URL", DEFAULT_REDIS_URL, REDIS_SCHEMES)


def _broker_url(env: Mapping[str, str]) -> str:
    return _str(env, "CELERY_BROKER_URL", _redis_url(env))


def _provider_key(env: Mapping[str, str]) -> str:
    return (
        env.get("PROVIDER_API_KEY", "").strip()
        or env.get("OPENROUTER_API_KEY", "").strip()
        or env.get("OPENAI_API_KEY", "").strip()
    )


def _is_only_openai(env: Mapping[str, str]) -> bool:
    return bool(env.get("OPENAI_API_KEY", "").strip()) and not (
        env.get("PROVIDER_API_KEY", "").strip() or env.get("OPENROUTER_API_KEY", "").strip()
    )


def _provider_base_url(env: Mapping[str, str]) -> str:
    default = OPENAI_BASE_URL if _is_only_openai(env) else OPENROUTER_BASE_URL
    return _url(env, "PROVIDER_BASE_URL", default, ("http", "https")).rstrip("/")


def _has_provider(env: Mapping[str, str]) -> bool:
    return bool(_provider_key(env) or env.get("PROVIDER_BASE_URL", "").strip())


def _model_defaults(env: Mapping[str, str]) -> tuple[str, str]:
    """DEFAULT_MODEL's and MODEL_ALLOWLIST's defaults, which depend on the provider."""
    if _provider_key(env):
        return ("gpt-4o-mini" if _is_only_openai(env) else "openai/gpt-4o-mini"), "demo*,*"
    if env.get("PROVIDER_BASE_URL", "").strip():
        # A local server (Ollama, llama.cpp's, LM Studio) needs no key; which models it
        # has is not ours to guess, so `demo` stays the default.
        return DEMO_MODEL, "demo*,*"
    return DEMO_MODEL, "demo*"


def _default_model(env: Mapping[str, str]) -> str:
    return _str(env, "DEFAULT_MODEL", _model_defaults(env)[0])


def _model_allowlist(env: Mapping[str, str]) -> tuple[str, ...]:
    return _patterns(env, "MODEL_ALLOWLIST", _model_defaults(env)[1])


def setting(
    env: str,
    default: T,
    help: str,
    *,
    minimum: float | None = None,
    parse: Parser | None = None,
    choices: tuple[str, ...] = (),
    also: tuple[str, ...] = (),
    secret: bool = False,
) -> T:
    """Declare a setting: its variable `env`, default, help, for numbers a minimum, and
    for words the `choices` (any case).

    `parse(environ)` replaces the generic reading for a setting whose default or format
    depends on more than its own variable; `also` names the other variables it reads.
    """
    meta = {
        "env": env,
        "help": help,
        "minimum": minimum,
        "parse": parse,
        "choices": choices,
        "also": also,
    }
    return field(default=default, repr=not secret, metadata=meta)


def _read(env: Mapping[str, str], f: Field[Any]) -> Any:
    meta = f.metadata
    if meta["parse"] is not None:
        return meta["parse"](env)
    name, default, minimum = meta["env"], f.default, meta["minimum"]
    if isinstance(default, bool):
        return _bool(env, name, default)
    if isinstance(default, int):
        return _int(env, name, default, minimum=int(minimum or 0))
    if isinstance(default, float):
        return _float(env, name, default, minimum=0.0 if minimum is None else minimum)
    if isinstance(default, tuple):
        return _patterns(env, name, ",".join(default))
    value = _str(env, name, str(default))
    if meta["choices"]:
        value = value.lower()
        if value not in meta["choices"]:
            raise ConfigError(f"{name} must be {' or '.join(meta['choices'])}, not {value[:20]!r}")
    return value


def _is_group(f: Field[Any]) -> bool:
    """A group of settings: a field whose default is a dataclass of settings."""
    return f.default_factory is not MISSING and is_dataclass(f.default_factory)


def load(cls: type[G], env: Mapping[str, str]) -> G:
    """Read the settings (and groups of settings) `cls` declares from `env`."""
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if _is_group(f):
            values[f.name] = load(f.default_factory, env)  # type: ignore[arg-type]
        elif "env" in f.metadata:
            values[f.name] = _read(env, f)
    return cls(**values)


def declared(cls: type[Any]) -> list[Field[Any]]:
    """Every setting `cls` and its groups declare, in order (for docs and tests)."""
    out: list[Field[Any]] = []
    for f in fields(cls):
        if _is_group(f):
            out += declared(f.default_factory)  # type: ignore[arg-type]
        elif "env" in f.metadata:
            out.append(f)
    return out


@dataclass(frozen=True)
class RedisSettings:
    """Where the data and the broker live; both processes."""

    url: str = setting(
        "REDIS_URL", DEFAULT_REDIS_URL, "redis://, rediss:// or unix://", parse=_redis_url
    )
    cluster: bool = setting("REDIS_CLUSTER", False, "REDIS_URL names any node of a Cluster (7+)")
    broker_url: str = setting(
        "CELERY_BROKER_URL", DEFAULT_REDIS_URL, "default: REDIS_URL", parse=_broker_url
    )
    # The API's command pool; with the hub's reader and Celery's two broker connections, an
    # API process holds 5 Redis connections however many followers it serves.
    max_connections: int = setting(
        "REDIS_MAX_CONNECTIONS", 2, "per process: the pool for commands", minimum=2
    )
    outage_max_s: float = setting(
        "REDIS_OUTAGE_MAX_S", 300.0, "give up waiting for Redis after this", minimum=1
    )


@dataclass(frozen=True)
class ApiSettings:
    """The web process's followers, credentials and host checks."""

    xread_block_ms: int = setting(
        "XREAD_BLOCK_MS", 5000, "a follower's wait in Redis before checking", minimum=100
    )
    sse_ping_s: float = setting("SSE_PING_S", 15.0, "SSE keep-alive comment", minimum=0.1)
    ws_ping_s: float = setting("WS_PING_S", 25.0, "a missing pong closes with 1008", minimum=0.1)
    ws_send_timeout_s: float = setting(
        "WS_SEND_TIMEOUT_S", 30.0, "a client that stops reading is dropped", minimum=0.1
    )
    # Messages a WebSocket client may send per minute (they are ignored); past it, close 1008.
    ws_client_messages_per_min: int = setting(
        "WS_CLIENT_MESSAGES_PER_MIN", 120, "messages a WebSocket client may send a minute"
    )
    follower_lease_s: int = setting(
        "FOLLOWER_LEASE_S", 60, "a dead API process's followers lapse after", minimum=3
    )
    trust_proxy_headers: bool = setting(
        "TRUST_PROXY_HEADERS", False, "behind a proxy that sets X-Forwarded-*"
    )
    # (key id, sha256 hex of the key); empty: the API runs open, without credentials.
    api_keys: tuple[tuple[str, str], ...] = setting(
        "API_KEYS",
        (),
        "<key id>:<sha256 hex> entries",
        parse=_api_keys,
        also=("API_KEYS_FILE",),
        secret=True,
    )
    stream_token_secret: str = setting(
        "STREAM_TOKEN_SECRET", "", "32+ characters", parse=_token_secret, secret=True
    )
    stream_token_ttl_s: int = setting(
        "STREAM_TOKEN_TTL_S", 3600, "how long a stream token opens its session", minimum=1
    )
    # Browser origins, besides the API's own, that may use it (CORS, WebSocket, SSE); ("*",): any.
    allowed_origins: tuple[str, ...] = setting(
        "ALLOWED_ORIGINS", (), "browser origins besides the API's own", parse=_origins
    )
    # Host names the API answers (besides the loopback names and PUBLIC_URL's); ("*",): any.
    allowed_hosts: tuple[str, ...] = setting(
        "ALLOWED_HOSTS", (), "host names the API answers", parse=_hosts
    )
    # Where clients reach the API (`https://api.example.com`): the streamUrl and wsUrl of
    # every answer; empty: the host the request named (one of the allowed ones).
    public_url: str = setting(
        "PUBLIC_URL",
        "",
        "where clients reach the API",
        parse=_public_url,
        also=("HEROKU_APP_DEFAULT_DOMAIN_NAME",),
    )
    # How often an API process adds its deliveries to Redis and rewrites its follower count
    # there (`/metrics`); a count not rewritten for 3 intervals + 2 s is a dead process's.
    metrics_flush_s: float = setting(
        "METRICS_FLUSH_S", 2.0, "how often /metrics counts are written", minimum=0.1
    )

    @property
    def has_api_keys(self) -> bool:
        """Whether callers must present an API key (or a stream token)."""
        return bool(self.api_keys)

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


@dataclass(frozen=True)
class WorkerSettings:
    """The generate queue, leases and the reaper's recovery."""

    queue: str = setting("CELERY_QUEUE", "generate", "the queue the API sends to")
    concurrency: int = setting(
        "WORKER_CONCURRENCY", 200, "generations at once per worker process", minimum=1
    )
    lease_ttl_s: int = setting("LEASE_TTL_S", 15, "a session's lease", minimum=3)
    max_attempts: int = setting("MAX_ATTEMPTS", 3, "takeovers before worker_lost", minimum=1)
    reaper_interval_s: float = setting(
        "REAPER_INTERVAL_S", 5.0, "how often dead workers are looked for", minimum=0.1
    )
    queued_requeue_s: int = setting(
        "QUEUED_REQUEUE_S", 60, "a queued session is enqueued again", minimum=1
    )
    queued_timeout_s: int = setting(
        "QUEUED_TIMEOUT_S", 600, "a queued session ends with queue_timeout", minimum=1
    )
    buffer_chunks: int = setting(
        "WORKER_BUFFER_CHUNKS", 10_000, "chunks held while Redis is down", minimum=1
    )
    visibility_timeout_s: int = setting(
        "VISIBILITY_TIMEOUT_S", 7200, "the broker re-delivers unacknowledged jobs", minimum=60
    )


@dataclass(frozen=True)
class ProviderSettings:
    """The OpenAI-compatible provider and the demo provider; the workers."""

    base_url: str = setting(
        "PROVIDER_BASE_URL",
        OPENROUTER_BASE_URL,
        "any OpenAI-compatible server",
        parse=_provider_base_url,
    )
    api_key: str = setting(
        "PROVIDER_API_KEY",
        "",
        "wins over OPENROUTER_API_KEY and OPENAI_API_KEY",
        parse=_provider_key,
        also=("OPENROUTER_API_KEY", "OPENAI_API_KEY"),
        secret=True,
    )
    # A key or PROVIDER_BASE_URL is set: models other than `demo` go to the provider.
    is_configured: bool = setting(
        "PROVIDER_BASE_URL", False, "a key or PROVIDER_BASE_URL is set", parse=_has_provider
    )
    http_referer: str = setting("PROVIDER_HTTP_REFERER", "", "OpenRouter attribution")
    x_title: str = setting("PROVIDER_X_TITLE", "", "OpenRouter attribution")
    connect_timeout_s: float = setting(
        "PROVIDER_CONNECT_TIMEOUT_S", 10.0, "connecting to the provider", minimum=0.1
    )
    read_timeout_s: float = setting(
        "PROVIDER_READ_TIMEOUT_S", 120.0, "the longest silence between bytes", minimum=0.1
    )
    max_retries: int = setting("PROVIDER_MAX_RETRIES", 3, "before the first token only")
    backoff_base_s: float = setting("PROVIDER_BACKOFF_BASE_S", 0.5, "the first retry's wait")
    backoff_max_s: float = setting("PROVIDER_BACKOFF_MAX_S", 8.0, "the longest retry wait")
    demo_tokens_per_s: float = setting(
        "DEMO_TOKENS_PER_S", 20.0, "the demo provider's chunks a second; 0: at once"
    )
    demo_max_tokens: int = setting(
        "DEMO_MAX_TOKENS", 200, "demo chunks without max_tokens", minimum=1
    )

    @property
    def has_key(self) -> bool:
        """Whether a provider key is configured."""
        return bool(self.api_key)


@dataclass(frozen=True)
class LimitsSettings:
    """What one request and one caller may ask for: sizes, rates, budgets and models."""

    default_model: str = setting(
        "DEFAULT_MODEL", DEMO_MODEL, "the model of a request without one", parse=_default_model
    )
    model_allowlist: tuple[str, ...] = setting(
        "MODEL_ALLOWLIST", ("demo*",), "model patterns", parse=_model_allowlist
    )
    prefill_models: tuple[str, ...] = setting(
        "PREFILL_MODELS", (), "models that continue an assistant prefill"
    )
    max_tokens_cap: int = setting("MAX_TOKENS_CAP", 8192, "max_tokens' maximum", minimum=1)
    max_body_bytes: int = setting(
        "MAX_BODY_BYTES", 4 * 1024 * 1024, "a request body's size", minimum=1024
    )
    max_prompt_chars: int = setting(
        "MAX_PROMPT_CHARS", 200_000, "characters of a prompt", minimum=1
    )
    max_messages: int = setting("MAX_MESSAGES", 500, "messages of one request", minimum=1)
    max_messages_chars: int = setting(
        "MAX_MESSAGES_CHARS", 200_000, "characters of all the messages", minimum=1
    )
    max_tools: int = setting(
        "MAX_TOOLS", 128, "tools of a request, tool calls of one message", minimum=1
    )
    max_tools_chars: int = setting(
        "MAX_TOOLS_CHARS", 100_000, "the tools' definitions as JSON", minimum=100
    )
    max_images: int = setting("MAX_IMAGES", 20, "image parts in a request's messages")
    # Per caller (API key id; client address in open mode); 0 turns a limit off.
    rate_creates_per_min: int = setting(
        "RATE_CREATES_PER_MIN", 120, "sessions created per RATE_WINDOW_S"
    )
    rate_window_s: int = setting("RATE_WINDOW_S", 60, "the rate limit's window", minimum=1)
    max_running_per_caller: int = setting(
        "MAX_RUNNING_PER_CALLER", 100, "queued or running sessions at once"
    )
    max_followers_per_session: int = setting(
        "MAX_FOLLOWERS_PER_SESSION", 500, "followers of one session"
    )
    max_followers_per_caller: int = setting(
        "MAX_FOLLOWERS_PER_CALLER", 1000, "followers of one caller"
    )
    # Followers with a stream token count here only, never against their key's limits.
    max_token_followers_per_session: int = setting(
        "MAX_TOKEN_FOLLOWERS_PER_SESSION", 100, "followers of one session with a token"
    )

    def may_prefill(self, model: str) -> bool:
        """Whether `model` continues an answer given as a trailing assistant message."""
        return any(fnmatchcase(model, pattern) for pattern in self.prefill_models)

    def is_model_allowed(self, model: str) -> bool:
        """Whether `model` matches one of the allowlist's patterns."""
        return any(fnmatchcase(model, pattern) for pattern in self.model_allowlist)


@dataclass(frozen=True)
class WebSettings:
    """gunicorn's (api/gunicorn_conf.py)."""

    host: str = setting("HOST", "0.0.0.0", "the address to listen on")
    port: int = setting("PORT", 8000, "the port to listen on")
    concurrency: int = setting("WEB_CONCURRENCY", 2, "gunicorn processes", minimum=1)
    worker_connections: int = setting(
        "WEB_WORKER_CONNECTIONS", 2000, "connections per gunicorn process", minimum=1
    )
    # Heroku sends SIGKILL 30 s after SIGTERM.
    graceful_timeout_s: int = setting(
        "WEB_GRACEFUL_TIMEOUT_S", 20, "how long a stopping process drains"
    )
    keepalive_s: int = setting("WEB_KEEPALIVE_S", 5, "idle keep-alive")
    access_log: str = setting("WEB_ACCESS_LOG", "", "gunicorn's access log; empty: none")
    log_level: str = setting("LOG_LEVEL", "info", "gunicorn's")
    # Behind Heroku's router or another proxy, trust its X-Forwarded-Proto for wss:// URLs.
    forwarded_allow_ips: str = setting(
        "FORWARDED_ALLOW_IPS", "127.0.0.1,::1", "whose X-Forwarded-* gunicorn trusts"
    )


def _check_cluster(settings: Settings) -> None:
    if not settings.redis.cluster:
        return
    if settings.redis.url.startswith("unix://"):
        raise ConfigError("REDIS_CLUSTER needs a redis:// or rediss:// REDIS_URL naming a node")
    # kombu's Redis transport speaks to one server: its queue keys would land on other
    # nodes of a cluster and every command would answer MOVED.
    if settings.redis.broker_url == settings.redis.url:
        raise ConfigError(
            "CELERY_BROKER_URL must be set to a standalone Redis or amqp:// broker when "
            "REDIS_CLUSTER is on: Celery's Redis broker cannot use a Redis Cluster"
        )


def _check_token_secret(settings: Settings) -> None:
    if settings.api.has_api_keys and not settings.api.stream_token_secret:
        raise ConfigError(
            "STREAM_TOKEN_SECRET must be set (a random string of at least "
            f"{MIN_TOKEN_SECRET_LEN} characters) when API_KEYS or API_KEYS_FILE configures keys"
        )


def _check_default_model(settings: Settings) -> None:
    limits = settings.limits
    if not limits.is_model_allowed(limits.default_model):
        raise ConfigError(
            f"DEFAULT_MODEL {limits.default_model!r} is not allowed by MODEL_ALLOWLIST"
        )


def _check_follower_lease(settings: Settings) -> None:
    # A follower renews its place when a third of the lease has passed, before a read
    # (up to XREAD_BLOCK_MS) and a send (up to WS_SEND_TIMEOUT_S): both must fit in
    # the other two thirds, or a live follower's place could lapse under it.
    api = settings.api
    busy_s = api.xread_block_ms / 1000 + api.ws_send_timeout_s
    if busy_s >= api.follower_lease_s * 2 / 3:
        raise ConfigError(
            f"FOLLOWER_LEASE_S ({api.follower_lease_s}) must be more than 1.5 times "
            f"XREAD_BLOCK_MS / 1000 + WS_SEND_TIMEOUT_S ({busy_s:g} s)"
        )


@dataclass(frozen=True)
class Settings:
    """Everything the API and the workers can be configured with; see `.env.example`."""

    redis: RedisSettings = field(default_factory=RedisSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    provider: ProviderSettings = field(default_factory=ProviderSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    web: WebSettings = field(default_factory=WebSettings)
    stream_ttl_s: int = setting(
        "STREAM_TTL_S", 86400, "how long a finished session stays readable", minimum=1
    )
    stream_maxlen: int = setting("STREAM_MAXLEN", 100_000, "events per session", minimum=3)
    # `text` or `json` (one JSON object per line, with the session id: shared/logs.py).
    log_format: str = setting(
        "LOG_FORMAT", "text", "one JSON object a line", choices=("text", "json")
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; a bad value raises `ConfigError`."""
        settings = load(cls, os.environ if environ is None else environ)
        for check in (
            _check_cluster,
            _check_token_secret,
            _check_default_model,
            _check_follower_lease,
        ):
            check(settings)
        return settings
