"""Settings: one frozen object built from the environment and checked at start.

Each setting is stated once, on its field: its environment variable, its default and how its
text is read (`setting()`). This is the only module that reads the environment; gunicorn's
config (gunicorn.conf.py) reads its settings from here too.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
import psycopg
import psycopg.conninfo

from .errors import ConfigError

MIN_TOKEN_LENGTH = 12
DEFAULT_REGION = "AU"
DEFAULT_TIMEZONE = "Australia/Sydney"
POLL_CONFIRMATIONS = ("leftover", "never")
DB_POOLERS = ("none", "transaction")


def _text(raw: str) -> str:
    return raw.strip()


def _upper(raw: str) -> str:
    return raw.strip().upper()


def _lower(raw: str) -> str:
    return raw.strip().lower()


def _flag(raw: str) -> bool:
    return raw.strip().lower() in ("1", "yes", "true")


def _tokens(raw: str) -> tuple[str, ...]:
    """Comma-separated, for rotation: every listed token is accepted."""
    return tuple(t.strip() for t in raw.split(",") if t.strip())


def _url(raw: str) -> str:
    return raw.strip().rstrip("/")


_URL_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:([^@/]*)@")
_KEY_PASSWORD = re.compile(r"""password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)""", re.IGNORECASE)


def passwords(conninfo: str) -> list[str]:
    """The passwords a connection string holds, as written (also when libpq cannot read it)."""
    found = [m.group(1) for m in (_URL_PASSWORD.match(conninfo.strip()),) if m and m.group(1)]
    found += [m.group(1).strip("'") for m in _KEY_PASSWORD.finditer(conninfo)]
    try:
        if given := psycopg.conninfo.conninfo_to_dict(conninfo).get("password"):
            found.append(str(given))
    except psycopg.Error:
        pass
    return [p for p in found if p]


def without_passwords(text: str, *conninfos: str | None) -> str:
    """`text` with each connection string of `conninfos`, and every password in them, masked."""
    for conninfo in filter(None, conninfos):
        text = text.replace(conninfo, "<the connection string>")
        for password in passwords(conninfo):
            text = text.replace(password, "***")
    return text


def _where_passwords_are(conninfo: str) -> list[str]:
    """The parts of `conninfo` a password can be in: a URL's user part, and all from `password` on."""
    parts = [conninfo.split("@", 1)[0]] if "://" in conninfo and "@" in conninfo else []
    if found := re.search("password", conninfo, re.IGNORECASE):
        parts.append(conninfo[found.start():])
    return parts


def conninfo_problem(conninfo: str) -> str | None:
    """Why libpq cannot use `conninfo`, said without repeating it (it may hold a password), or None."""
    scheme = conninfo.strip().split("://", 1)[0] if "://" in conninfo else None
    if scheme is not None and scheme.lower() not in ("postgresql", "postgres"):
        shown = scheme if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,19}", scheme) else "something else"
        return (f"must be a PostgreSQL connection string: a URL starting postgresql:// (this one starts {shown}://), "
                "or key=value pairs")
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        # libpq's reason quotes a piece of the string: kept only when that piece is nowhere a password can be
        detail = without_passwords(str(exc).strip(), conninfo)
        quoted = re.findall(r'"([^"]*)"', detail)
        secret = any(q and q in part for q in quoted for part in _where_passwords_are(conninfo))
        reason = "" if secret else f" ({detail})"
        return (f"cannot be read by libpq{reason}: the form is "
                "postgresql://user:password@host:port/dbname?option=value, or key=value pairs")
    return None


def _int(raw: str) -> int:
    return int(raw.strip())


def _float(raw: str) -> float:
    return float(raw.strip())


def _port(raw: str) -> int | None:
    """A TCP port; 0 is none."""
    return int(raw.strip()) or None


_WHAT = {_int: "a whole number", _port: "a whole number", _float: "a number"}


def setting(env: str, default: Any, read: Callable[[str], Any] = _text, *, minimum: float | None = None,
            secret: bool = False) -> Any:
    """A field read from the environment variable `env` by `read`, `default` when unset or blank
    (a callable default is called for each Settings); a number below `minimum` is refused; a
    secret is left out of repr."""
    extra = {"default_factory": default} if callable(default) else {"default": default}
    return field(repr=not secret, metadata={"env": env, "read": read, "minimum": minimum}, **extra)


@dataclass(frozen=True)
class Settings:
    database_url: str | None = setting("DATABASE_URL", None, secret=True)
    # "transaction": DATABASE_URL goes through a transaction-mode pooler (pgbouncer, Supabase's or
    # Heroku's pooler, RDS Proxy): no prepared statements, no session state.
    db_pooler: str = setting("DB_POOLER", "none", _lower)
    # A connection that bypasses the pooler, for `migrate` (its lock and DDL need a session).
    direct_database_url: str | None = setting("DIRECT_DATABASE_URL", None, secret=True)
    webhook_tokens: tuple[str, ...] = setting("WEBHOOK_TOKEN", (), _tokens, secret=True)
    allow_unauthenticated: bool = setting("ALLOW_UNAUTHENTICATED_WEBHOOKS", False, _flag)
    proxy_hops: int = setting("PROXY_HOPS", 0, _int, minimum=0)
    default_region: str = setting("DEFAULT_REGION", DEFAULT_REGION, _upper)
    bestsms_timezone: str = setting("BESTSMS_TIMEZONE", DEFAULT_TIMEZONE)
    max_body_bytes: int = setting("MAX_BODY_BYTES", 1024 * 1024, _int, minimum=1024)
    db_pool_size: int = setting("DB_POOL_SIZE", 4, _int, minimum=1)
    webhook_writers: int = setting("WEBHOOK_WRITERS", 1, _int, minimum=1)
    db_timeout_seconds: int = setting("DB_TIMEOUT_SECONDS", 5, _int, minimum=1)
    request_timeout_seconds: float = setting("REQUEST_TIMEOUT_SECONDS", 10.0, _float, minimum=0.2)
    data_dir: Path = setting("RECEIVER_DATA_DIR", lambda: Path(".data"), Path)
    log_level: str = setting("LOG_LEVEL", "INFO", _upper)
    # gunicorn (gunicorn.conf.py)
    host: str = setting("HOST", "0.0.0.0")  # noqa: S104 - a server's public interface
    port: int = setting("PORT", 8000, _int, minimum=1)
    web_concurrency: int = setting("WEB_CONCURRENCY", multiprocessing.cpu_count, _int, minimum=1)
    gunicorn_threads: int = setting("GUNICORN_THREADS", 8, _int, minimum=1)
    gunicorn_control_socket: str | None = setting("GUNICORN_CONTROL_SOCKET", None)
    # where gunicorn's workers share their metrics (prometheus_client's own variable: see metrics.py)
    metrics_dir: str | None = setting("PROMETHEUS_MULTIPROC_DIR", None)
    # The poller
    bestsms_api_url: str = setting("BESTSMS_API_URL", "https://api.bestsms.com.au/api/v2.04", _url)
    bestsms_auth_token: str | None = setting("BESTSMS_AUTH_TOKEN", None, secret=True)
    poll_after_seconds: float = setting("POLL_AFTER_SECONDS", 600.0, _float, minimum=0)
    poll_max_interval_seconds: float = setting("POLL_MAX_INTERVAL_SECONDS", 3600.0, _float, minimum=0.001)
    poll_give_up_seconds: float = setting("POLL_GIVE_UP_SECONDS", 21600.0, _float, minimum=0)
    poll_rate_per_second: float = setting("POLL_RATE_PER_SECOND", 1.0, _float, minimum=0.001)
    poll_timeout_seconds: float = setting("POLL_TIMEOUT_SECONDS", 10.0, _float, minimum=0.01)
    poll_lease_seconds: int = setting("POLL_LEASE_SECONDS", 30, _int, minimum=3)
    poll_confirmations: str = setting("POLL_CONFIRMATIONS", "leftover", _lower)
    poll_unauthorized_retry_seconds: int = setting("POLL_UNAUTHORIZED_RETRY_SECONDS", 300, _int, minimum=1)
    received_sweep_seconds: float = setting("RECEIVED_SWEEP_SECONDS", 300.0, _float, minimum=0)
    poll_idle_seconds: float = setting("POLL_IDLE_SECONDS", 5.0, _float, minimum=0.001)
    poll_classify_seconds: float = setting("POLL_CLASSIFY_SECONDS", 30.0, _float, minimum=0.001)
    poll_metrics_port: int | None = setting("POLL_METRICS_PORT", None, _port, minimum=1)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.bestsms_timezone)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings in `env` (the process's environment by default); ConfigError names a bad one."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name, read = f.metadata["env"], f.metadata["read"]
            raw = env.get(name, "")
            if not raw.strip():
                continue
            try:
                values[f.name] = read(raw)
            except ValueError:
                raise ConfigError(f"{name} must be {_WHAT.get(read, 'valid')}, got {raw!r}") from None
        return cls(**values)

    def __post_init__(self) -> None:
        """Every value checked, however the settings were made (from the environment, or in code)."""
        for f in dataclasses.fields(self):
            value, minimum = getattr(self, f.name), f.metadata["minimum"]
            if minimum is not None and value is not None and not value >= minimum:  # also refuses NaN
                raise ConfigError(f"{f.metadata['env']} must be at least {minimum}, got {value}")
        short = [t for t in self.webhook_tokens if len(t) < MIN_TOKEN_LENGTH]
        if short:
            raise ConfigError(f"WEBHOOK_TOKEN: {len(short)} token(s) shorter than {MIN_TOKEN_LENGTH} characters; use "
                              "long random ones (`python -c 'import secrets; print(secrets.token_urlsafe())'`)")
        for name, conninfo in (("DATABASE_URL", self.database_url), ("DIRECT_DATABASE_URL", self.direct_database_url)):
            if conninfo and (problem := conninfo_problem(conninfo)):
                raise ConfigError(f"{name} {problem}")
        if self.poll_confirmations not in POLL_CONFIRMATIONS:
            raise ConfigError(f"POLL_CONFIRMATIONS must be leftover or never, got {self.poll_confirmations!r}")
        if self.db_pooler not in DB_POOLERS:
            raise ConfigError(f"DB_POOLER must be none or transaction, got {self.db_pooler!r}")
        if self.default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(f"DEFAULT_REGION {self.default_region!r} is not a known region code")
        try:
            ZoneInfo(self.bestsms_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"BESTSMS_TIMEZONE {self.bestsms_timezone!r} is not a known time zone") from None

    def check_web(self) -> None:
        """What the web app needs beyond valid values: a database, and a token unless told by name."""
        if not self.database_url:
            raise ConfigError("DATABASE_URL is not set: set it, or start with `python -m receiver serve`, "
                              "which starts an embedded PostgreSQL")
        if not self.webhook_tokens and not self.allow_unauthenticated:
            raise ConfigError("WEBHOOK_TOKEN is not set: set it to the token BestSMS sends (or, for a deployment "
                              "that is unauthenticated on purpose, ALLOW_UNAUTHENTICATED_WEBHOOKS=yes)")

    def check_poller(self) -> None:
        """What the poller needs: a token BestSMS takes."""
        if not self.bestsms_auth_token:
            raise ConfigError("BESTSMS_AUTH_TOKEN is not set: the poller cannot authenticate to BestSMS")
