"""Settings: one frozen object built from the environment and checked at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

N = TypeVar("N", int, float)


MIN_TOKEN_LENGTH = 12


class ConfigError(ValueError):
    """A setting has a value the service cannot run with."""


def _number(env: Mapping[str, str], name: str, default: N, minimum: N, kind: type[N]) -> N:
    """The setting `name` as an int or float of at least `minimum`, or `default` when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    if not value >= minimum:  # also refuses NaN
        raise ConfigError(f"{name} must be at least {minimum}, got {raw}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    return _number(env, name, default, minimum, int)


def _float(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    return _number(env, name, default, minimum, float)


@dataclass(frozen=True)
class Settings:
    database_url: str | None = field(default=None, repr=False)
    webhook_tokens: tuple[str, ...] = field(default=(), repr=False)
    allow_unauthenticated: bool = False
    proxy_hops: int = 0
    default_region: str = "AU"
    bestsms_timezone: str = "Australia/Sydney"
    max_body_bytes: int = 1024 * 1024
    db_pool_size: int = 4
    webhook_writers: int = 1
    db_timeout_seconds: int = 5
    request_timeout_seconds: float = 10.0
    data_dir: Path = field(default_factory=lambda: Path(".data"))
    log_level: str = "INFO"
    # The poller
    bestsms_api_url: str = "https://api.bestsms.com.au/api/v2.04"
    bestsms_auth_token: str | None = field(default=None, repr=False)
    poll_after_seconds: float = 600
    poll_max_interval_seconds: float = 3600
    poll_give_up_seconds: float = 21600
    poll_rate_per_second: float = 1.0
    poll_timeout_seconds: float = 10.0
    poll_lease_seconds: int = 30
    poll_confirmations: str = "leftover"
    poll_unauthorized_retry_seconds: int = 300
    received_sweep_seconds: float = 300
    poll_idle_seconds: float = 5
    poll_classify_seconds: float = 30
    poll_metrics_port: int | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.bestsms_timezone)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        tokens = tuple(t.strip() for t in env.get("WEBHOOK_TOKEN", "").split(",") if t.strip())
        settings = cls(
            database_url=env.get("DATABASE_URL") or None,
            webhook_tokens=tokens,
            allow_unauthenticated=env.get("ALLOW_UNAUTHENTICATED_WEBHOOKS", "").strip().lower() in ("1", "yes", "true"),
            proxy_hops=_int(env, "PROXY_HOPS", 0),
            default_region=env.get("DEFAULT_REGION", "AU").strip().upper(),
            bestsms_timezone=env.get("BESTSMS_TIMEZONE", "Australia/Sydney").strip(),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
            db_pool_size=_int(env, "DB_POOL_SIZE", 4, minimum=1),
            webhook_writers=_int(env, "WEBHOOK_WRITERS", 1, minimum=1),
            db_timeout_seconds=_int(env, "DB_TIMEOUT_SECONDS", 5, minimum=1),
            request_timeout_seconds=_float(env, "REQUEST_TIMEOUT_SECONDS", 10.0, minimum=0.2),
            data_dir=Path(env.get("RECEIVER_DATA_DIR", ".data")),
            log_level=env.get("LOG_LEVEL", "INFO").strip().upper(),
            bestsms_api_url=env.get("BESTSMS_API_URL", "").strip().rstrip("/") or cls.bestsms_api_url,
            bestsms_auth_token=env.get("BESTSMS_AUTH_TOKEN", "").strip() or None,
            poll_after_seconds=_float(env, "POLL_AFTER_SECONDS", 600, minimum=0),
            poll_max_interval_seconds=_float(env, "POLL_MAX_INTERVAL_SECONDS", 3600, minimum=0.001),
            poll_give_up_seconds=_float(env, "POLL_GIVE_UP_SECONDS", 21600, minimum=0),
            poll_rate_per_second=_float(env, "POLL_RATE_PER_SECOND", 1.0, minimum=0.001),
            poll_timeout_seconds=_float(env, "POLL_TIMEOUT_SECONDS", 10.0, minimum=0.01),
            poll_lease_seconds=_int(env, "POLL_LEASE_SECONDS", 30, minimum=3),
            poll_confirmations=env.get("POLL_CONFIRMATIONS", "leftover").strip().lower(),
            poll_unauthorized_retry_seconds=_int(env, "POLL_UNAUTHORIZED_RETRY_SECONDS", 300, minimum=1),
            received_sweep_seconds=_float(env, "RECEIVED_SWEEP_SECONDS", 300, minimum=0),
            poll_idle_seconds=_float(env, "POLL_IDLE_SECONDS", 5, minimum=0.001),
            poll_classify_seconds=_float(env, "POLL_CLASSIFY_SECONDS", 30, minimum=0.001),
            poll_metrics_port=_int(env, "POLL_METRICS_PORT", 0) or None,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        short = [t for t in self.webhook_tokens if len(t) < MIN_TOKEN_LENGTH]
        if short:
            raise ConfigError(f"WEBHOOK_TOKEN: {len(short)} token(s) shorter than {MIN_TOKEN_LENGTH} characters; use "
                              "long random ones (`python -c 'import secrets; print(secrets.token_urlsafe())'`)")
        if self.poll_confirmations not in ("leftover", "never"):
            raise ConfigError(f"POLL_CONFIRMATIONS must be leftover or never, got {self.poll_confirmations!r}")
        if self.default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(f"DEFAULT_REGION {self.default_region!r} is not a known region code")
        try:
            ZoneInfo(self.bestsms_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"BESTSMS_TIMEZONE {self.bestsms_timezone!r} is not a known time zone") from None
