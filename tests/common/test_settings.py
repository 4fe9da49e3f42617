"""Settings: secrets from files, refusal of placeholder secrets and unsafe auth outside dev."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from services.common.settings import ServiceSettings, settings_error_text
from services.embeddings.config import EmbeddingsSettings
from tests.conftest import API_KEY_HASH

OTHER_HASH = "a" * 64


@pytest.fixture(autouse=True)
def _no_ambient_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(("EMBEDDINGS_", "LLMOPS_", "OTEL_")) or key == "ENV":
            monkeypatch.delenv(key)


def test_env_prefix_and_hash_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDINGS_API_KEY_HASHES", f"{API_KEY_HASH}, sha256:{OTHER_HASH.upper()}")
    monkeypatch.setenv("EMBEDDINGS_MAX_BATCH_SIZE", "8")
    s = EmbeddingsSettings()
    assert s.api_key_hashes == [API_KEY_HASH, OTHER_HASH]
    assert s.max_batch_size == 8
    assert s.env == "production"


def test_any_field_reads_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hashes = tmp_path / "hashes"
    hashes.write_text(f"{API_KEY_HASH}\n{OTHER_HASH}\n")
    headers = tmp_path / "otlp"
    headers.write_text("Authorization=Basic c2VjcmV0\n")
    monkeypatch.setenv("EMBEDDINGS_API_KEY_HASHES_FILE", str(hashes))
    monkeypatch.setenv("EMBEDDINGS_OTLP_HEADERS_FILE", str(headers))
    s = EmbeddingsSettings()
    assert s.api_key_hashes == [API_KEY_HASH, OTHER_HASH]
    assert s.otlp_headers is not None
    assert s.otlp_headers.get_secret_value() == "Authorization=Basic c2VjcmV0"
    assert "c2VjcmV0" not in repr(s)


def test_environment_beats_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = tmp_path / "h"
    f.write_text(OTHER_HASH)
    monkeypatch.setenv("EMBEDDINGS_API_KEY_HASHES_FILE", str(f))
    monkeypatch.setenv("EMBEDDINGS_API_KEY_HASHES", API_KEY_HASH)
    assert EmbeddingsSettings().api_key_hashes == [API_KEY_HASH]


def test_missing_secret_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDINGS_API_KEY_HASHES_FILE", "/nonexistent/secret")
    with pytest.raises(ValueError) as info:
        EmbeddingsSettings()
    assert "EMBEDDINGS_API_KEY_HASHES_FILE" in settings_error_text(info.value)
    assert "/nonexistent/secret" in settings_error_text(info.value)


@pytest.mark.parametrize("value", ["changeme", "CHANGEME", "secret", "password", ""])
def test_placeholder_secret_refused_outside_dev(value: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="placeholder secret"):
        EmbeddingsSettings(api_key_hashes=[API_KEY_HASH], otlp_headers=SecretStr(value))
    with pytest.raises(ValidationError, match="placeholder secret"):
        EmbeddingsSettings(
            api_key_hashes=[API_KEY_HASH], otlp_headers=SecretStr(value), env="staging"
        )
    ok = EmbeddingsSettings(api_key_hashes=[API_KEY_HASH], otlp_headers=SecretStr(value), env="dev")
    assert ok.env == "dev"


def test_placeholder_from_file_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.write_text("changeme\n")
    monkeypatch.setenv("EMBEDDINGS_OTLP_HEADERS_FILE", str(f))
    monkeypatch.setenv("EMBEDDINGS_API_KEY_HASHES", API_KEY_HASH)
    with pytest.raises(ValidationError, match="EMBEDDINGS_OTLP_HEADERS"):
        EmbeddingsSettings()


def test_auth_disabled_only_in_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="only allowed with ENV=dev"):
        EmbeddingsSettings(auth_disabled=True)
    monkeypatch.setenv("ENV", "dev")
    assert EmbeddingsSettings(auth_disabled=True).auth_disabled


def test_no_keys_and_auth_on_refuses_to_start() -> None:
    with pytest.raises(ValidationError, match="no API keys configured"):
        EmbeddingsSettings()


def test_plain_key_instead_of_digest_is_refused() -> None:
    with pytest.raises(ValidationError, match="SHA-256"):
        EmbeddingsSettings(api_key_hashes=["sk-my-plain-key"])


def test_base_class_has_no_service_prefix_leak() -> None:
    assert ServiceSettings.model_config["env_prefix"] == "LLMOPS_"
    assert EmbeddingsSettings.model_config["env_prefix"] == "EMBEDDINGS_"


def test_standard_otel_variables_are_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=abc")
    s = EmbeddingsSettings(api_key_hashes=[API_KEY_HASH])
    assert s.otlp_endpoint == "http://collector:4318"
    assert s.otlp_headers is not None and s.otlp_headers.get_secret_value() == "x-api-key=abc"
    monkeypatch.setenv("EMBEDDINGS_OTLP_ENDPOINT", "http://own:4318")
    assert EmbeddingsSettings(api_key_hashes=[API_KEY_HASH]).otlp_endpoint == "http://own:4318"
