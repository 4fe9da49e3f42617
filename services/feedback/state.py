"""What the feedback app keeps on ``app.state.feedback``."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from services.feedback.committer import Committer
from services.feedback.config import FeedbackSettings
from services.feedback.langfuse import LangfuseForwarder


@dataclass
class FeedbackState:
    settings: FeedbackSettings
    engine: Engine
    committer: Committer
    forwarder: LangfuseForwarder | None = None

    def wake_forwarder(self) -> None:
        if self.forwarder is not None:
            self.forwarder.wake()
