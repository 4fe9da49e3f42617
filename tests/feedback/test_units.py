"""Pieces checked in-process: the interval, trace ids, the spool's crash rules, settings."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import pytest

from services.common.spool import Spool
from services.feedback.config import FeedbackSettings
from services.feedback.queries import wilson
from services.feedback.schemas import trace_id_for


def test_wilson_interval_matches_published_values() -> None:
    # Newcombe (1998), table I: 81 of 263 -> 0.2553 to 0.3662; 15 of 148 -> 0.0624 to 0.1605.
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    low, high = wilson(15, 148)
    assert (round(low, 4), round(high, 4)) == (0.0624, 0.1605)
    low, high = wilson(0, 20)  # all negative: the interval still has width, inside [0, 1]
    assert low == 0.0 and 0.16 < high < 0.17
    assert wilson(5, 5)[1] == 1.0
    assert wilson(0, 0) == (0.0, 0.0)


def test_trace_id_is_langfuses_seeded_id() -> None:
    # Langfuse's SDK: create_trace_id(seed=s) == sha256(s.encode()).digest()[:16].hex()
    assert trace_id_for("abc") == hashlib.sha256(b"abc").digest()[:16].hex()
    assert len(trace_id_for("x")) == 32


def test_spool_skips_a_torn_last_line_and_adopts_only_unlocked_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    spool.append([{"op": "interaction", "rows": [{"id": str(n)}], "at": 1.0} for n in range(3)])
    assert spool.depth == 3
    (active,) = spool.pending_files()
    # Another process cannot claim a segment this one is appending to.
    with active.open("rb") as fh, pytest.raises(BlockingIOError):
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    with active.open("ab") as fh:  # a crash in the middle of a write
        fh.write(b'{"op": "interaction", "ro')
    segment = spool.claim()
    assert segment is not None and segment.path == active
    ops = list(Spool.read(segment))
    assert [op["rows"][0]["id"] for op in ops] == ["0", "1", "2"]
    spool.finish(segment, len(ops))
    assert spool.depth == 0 and spool.pending_files() == [] and spool.claim() is None

    # What a dead process left is counted by the next one and claimed by it.
    orphan = tmp_path / f"{1:020d}-{os.getpid() + 1}.spool"
    orphan.write_bytes(b'{"op":"interaction","rows":[{"id":"9"}]}\n' * 2)
    later = Spool(tmp_path)
    later.open()
    assert later.depth == 2 and later.has_pending()
    claimed = later.claim()
    assert claimed is not None and claimed.path == orphan
    claimed.release()
    spool.close()


def test_settings_refuse_half_a_langfuse_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENV", "dev")
    monkeypatch.setenv("FEEDBACK_AUTH_DISABLED", "true")
    monkeypatch.setenv("LANGFUSE_HOST", "http://langfuse:3000")
    with pytest.raises(ValueError, match="Langfuse needs all three"):
        FeedbackSettings()
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-1")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-1")  # Langfuse's own variable names work
    settings = FeedbackSettings()
    assert settings.langfuse_enabled and settings.langfuse_host == "http://langfuse:3000"
    monkeypatch.setenv("FEEDBACK_DEFAULT_ENVIRONMENT", "Prod")
    with pytest.raises(ValueError, match="DEFAULT_ENVIRONMENT"):
        FeedbackSettings()
