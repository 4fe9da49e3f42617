"""PII redaction of the JSON log lines: on by default, off with LOG_REDACT_PII=false."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest

from services.common.logging import JsonFormatter, setup_logging
from services.common.settings import ServiceSettings
from tests.conftest import API_KEY_HASH

EMAIL = "jane.doe@example.com"


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("llmops.test", logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def line(formatter: logging.Formatter, rec: logging.LogRecord) -> dict[str, object]:
    out: dict[str, object] = orjson.loads(formatter.format(rec))
    return out


def test_message_and_extras_are_redacted_by_default() -> None:
    rec = record(
        "mail from %s",
        EMAIL,
        user=EMAIL,
        payload={"messages": [{"role": "user", "content": f"I am {EMAIL}, +44 20 7946 0958"}]},
        request_id="req-4111111111111111",
        attempts=3,
    )
    out = line(JsonFormatter(), rec)
    assert out["msg"] == "mail from [EMAIL]"
    assert out["user"] == "[EMAIL]"
    assert out["payload"] == {"messages": [{"role": "user", "content": "I am [EMAIL], [PHONE]"}]}
    assert out["request_id"] == "req-4111111111111111"  # ids are never rewritten
    assert out["attempts"] == 3
    assert EMAIL not in orjson.dumps(out).decode()


def test_exception_text_is_redacted() -> None:
    try:
        raise ValueError(f"no account for {EMAIL}")
    except ValueError:
        import sys

        rec = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = line(JsonFormatter(), rec)
    assert "no account for [EMAIL]" in str(out["exc"]) and EMAIL not in str(out["exc"])


def test_off_when_the_setting_is_false() -> None:
    out = line(JsonFormatter(redact_pii=False), record("mail from %s", EMAIL, user=EMAIL))
    assert out["msg"] == f"mail from {EMAIL}" and out["user"] == EMAIL


class _Settings(ServiceSettings):
    pass


@pytest.fixture
def root_handler() -> Iterator[None]:
    """setup_logging replaces the root logger's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    root.handlers[:] = saved
    root.setLevel(level)


def _formatter() -> JsonFormatter:
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "_llmops", False))
    assert isinstance(handler.formatter, JsonFormatter)
    return handler.formatter


def test_setting_reaches_the_handler(monkeypatch: pytest.MonkeyPatch, root_handler: None) -> None:
    for key in ("LLMOPS_LOG_REDACT_PII", "ENV"):
        monkeypatch.delenv(key, raising=False)
    settings = _Settings(api_key_hashes=[API_KEY_HASH])
    assert settings.log_redact_pii is True
    setup_logging(settings.log_level, settings.log_redact_pii)
    assert _formatter().redact_pii is True

    monkeypatch.setenv("LLMOPS_LOG_REDACT_PII", "false")
    settings = _Settings(api_key_hashes=[API_KEY_HASH])
    assert settings.log_redact_pii is False
    setup_logging(settings.log_level, settings.log_redact_pii)  # a second call applies it
    assert _formatter().redact_pii is False
    out = line(_formatter(), record("mail from %s", EMAIL))
    assert out["msg"] == f"mail from {EMAIL}"


def test_service_prefix_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.feedback.config import FeedbackSettings

    monkeypatch.setenv("FEEDBACK_LOG_REDACT_PII", "false")
    monkeypatch.setenv("ENV", "dev")
    settings = FeedbackSettings(api_key_hashes=[API_KEY_HASH])
    assert settings.log_redact_pii is False
