"""Settings from the environment: defaults, and a clear error for a value the service cannot use."""

import pytest

from receiver.config import ConfigError, Settings


def test_defaults():
    s = Settings.from_env({})
    assert (s.database_url, s.webhook_tokens, s.default_region, s.poll_rate_per_second) == (None, (), "AU", 1.0)
    assert (s.poll_after_seconds, s.poll_max_interval_seconds, s.poll_give_up_seconds) == (600, 3600, 21600)


def test_tokens_are_comma_separated_for_rotation_and_never_in_repr():
    s = Settings.from_env({"WEBHOOK_TOKEN": " old , new ,", "BESTSMS_AUTH_TOKEN": "api-secret"})
    assert s.webhook_tokens == ("old", "new")
    assert "old" not in repr(s) and "api-secret" not in repr(s)


@pytest.mark.parametrize(("env", "message"), [
    ({"DB_POOL_SIZE": "x"}, "DB_POOL_SIZE must be a whole number"),
    ({"DB_POOL_SIZE": "0"}, "DB_POOL_SIZE must be at least 1"),
    ({"POLL_RATE_PER_SECOND": "nan"}, "POLL_RATE_PER_SECOND must be at least"),
    ({"DEFAULT_REGION": "ZZ"}, "DEFAULT_REGION 'ZZ' is not a known region code"),
    ({"BESTSMS_TIMEZONE": "Mars/Olympus"}, "BESTSMS_TIMEZONE 'Mars/Olympus' is not a known time zone"),
])
def test_bad_values_fail_fast_naming_the_setting(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
