"""Settings: one frozen object built from the environment and checked at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers


class ConfigError(ValueError):
    """A setting has a value the service cannot run with."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
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


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    webhook_tokens: tuple[str, ...] = ()
    default_region: str = "AU"
    bestsms_timezone: str = "Australia/Sydney"
    max_body_bytes: int = 1024 * 1024
    db_pool_size: int = 4
    db_timeout_seconds: int = 5
    data_dir: Path = field(default_factory=lambda: Path(".data"))
    log_level: str = "INFO"

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
            default_region=env.get("DEFAULT_REGION", "AU").strip().upper(),
            bestsms_timezone=env.get("BESTSMS_TIMEZONE", "Australia/Sydney").strip(),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
            db_pool_size=_int(env, "DB_POOL_SIZE", 4, minimum=1),
            db_timeout_seconds=_int(env, "DB_TIMEOUT_SECONDS", 5, minimum=1),
            data_dir=Path(env.get("RECEIVER_DATA_DIR", ".data")),
            log_level=env.get("LOG_LEVEL", "INFO").strip().upper(),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(f"DEFAULT_REGION {self.default_region!r} is not a known region code")
        try:
            ZoneInfo(self.bestsms_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"BESTSMS_TIMEZONE {self.bestsms_timezone!r} is not a known time zone") from None
