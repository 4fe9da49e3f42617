"""A local, append-only, fsync'd spool: writes the feedback service accepted while its database
was unreachable, interactions the rag service has yet to hand to the feedback service.

Segments are files ``<time_ns>-<pid>.spool`` of JSON lines, one op per line. A batch of ops is
written with one ``write`` and one ``fsync`` (of the file, and of the folder when the file is
new) before anyone is answered 202, so an accepted op survives a crash of the process or the
machine. A line cut short by a crash mid-write was never acknowledged and is skipped.

Each process appends to its own segment and holds an exclusive ``flock`` on it. Draining takes
the lock of a segment first, so segments left by a dead process (another uvicorn worker, or the
pod's previous life on the same volume) are adopted by whichever process gets there, and two
never drain one segment at once. Draining twice is harmless: every op's keys are fixed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

log = logging.getLogger("llmops.spool")

SUFFIX = ".spool"


@dataclass
class Segment:
    path: Path
    handle: IO[bytes]  # open, holding the flock

    def release(self) -> None:
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
        finally:
            self.handle.close()


DEAD_LETTER = "dead-letter.jsonl"


class Spool:
    def __init__(
        self,
        directory: Path,
        max_segment_bytes: int = 64 * 1024 * 1024,
        dead_letter_max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.directory = directory
        self.max_segment_bytes = max_segment_bytes
        self.dead_letter_path = directory / DEAD_LETTER
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.dead_letters = 0  # entries in the dead-letter file
        self.dead_letter_bytes = 0
        self.dead_letters_dropped = 0  # refused ops not kept: the file was full
        self._active: Segment | None = None
        self._active_bytes = 0
        self.depth = 0  # ops appended by this process (or adopted) and not yet drained
        self.oldest_at: float | None = None  # acceptance time of the oldest of them

    def open(self) -> None:
        """Create the folder and count what earlier lives left behind (and nobody holds)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            data = self.dead_letter_path.read_bytes()
            self.dead_letters, self.dead_letter_bytes = data.count(b"\n"), len(data)
        except FileNotFoundError:
            pass
        for path in self.pending_files():
            try:
                with path.open("rb") as fh:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    self.depth += fh.read().count(b"\n")
            except FileNotFoundError:
                continue
            born = int(path.name.split("-", 1)[0]) / 1e9
            self.oldest_at = born if self.oldest_at is None else min(self.oldest_at, born)

    # -- appending -------------------------------------------------------------------------------

    def append(self, ops: Sequence[dict[str, Any]]) -> None:
        """Write ops durably: one write, one fsync. Blocking: call it from a worker thread."""
        if not ops:
            return
        data = b"".join(orjson.dumps(op) + b"\n" for op in ops)
        if self._active is None or self._active_bytes >= self.max_segment_bytes:
            self._rotate()
        assert self._active is not None
        fd = self._active.handle.fileno()
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError:
            # Cut short (a full disk): the ops were not accepted, so their bytes go, and the
            # next append starts a new segment. Left in place, a torn line would end up in
            # front of the next ops, and the segment could no longer be read.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._active_bytes)
            self.close()
            raise
        self._active_bytes += len(data)
        self.depth += len(ops)
        if self.oldest_at is None:
            self.oldest_at = min(op.get("at", time.time()) for op in ops)

    def _rotate(self) -> None:
        if self._active is not None:
            self._active.release()
            self._active = None
        path = self.directory / f"{time.time_ns():020d}-{os.getpid()}{SUFFIX}"
        handle = path.open("ab", buffering=0)
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        self._active = Segment(path, handle)
        self._active_bytes = 0
        # The new name must survive a crash too: fsync the folder that holds it.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def ready_segment(self) -> None:
        """Open the next segment now, if none is: the next :meth:`append` is then one write and
        one fsync, without a file creation and a folder fsync on its caller's path."""
        if self._active is None:
            self._rotate()

    def close(self) -> None:
        if self._active is not None:
            if self._active_bytes == 0:  # opened ahead (ready_segment) and never written
                self._active.path.unlink(missing_ok=True)
            self._active.release()
            self._active = None

    # -- draining --------------------------------------------------------------------------------

    def pending_files(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    def has_pending(self) -> bool:
        return self.depth > 0 or any(
            p != (self._active.path if self._active else None) for p in self.pending_files()
        )

    def claim(self) -> Segment | None:
        """The oldest segment this process may drain now (its own active one is closed first),
        locked; None when nothing is left."""
        if self._active is not None and self._active_bytes > 0:
            self.close()
        for path in self.pending_files():
            if self._active is not None and path == self._active.path:
                continue
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()  # another process's active segment, or one it is draining
                continue
            if not path.exists():  # drained and removed while we waited for the lock
                handle.close()
                continue
            return Segment(path, handle)
        return None

    @staticmethod
    def read(segment: Segment) -> Iterator[dict[str, Any]]:
        segment.handle.seek(0)
        data = segment.handle.read()
        lines = data.split(b"\n")
        for n, line in enumerate(lines):
            if not line:
                continue
            try:
                op = orjson.loads(line)
            except orjson.JSONDecodeError:
                if n == len(lines) - 1:  # a write cut short: never acknowledged
                    log.warning("skipping a torn last line", extra={"segment": segment.path.name})
                    continue
                raise
            yield op

    def finish(self, segment: Segment, drained: int) -> None:
        """Every op of the segment is in the database: remove it (durably)."""
        segment.path.unlink(missing_ok=True)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        segment.release()
        self.depth = max(0, self.depth - drained)
        left = self.pending_files()
        # The next segment's name is its creation time: the age of what now waits longest.
        self.oldest_at = int(left[0].name.split("-", 1)[0]) / 1e9 if self.depth and left else None

    def dead_letter(self, op: dict[str, Any], reason: str) -> bool:
        """An op refused for good at drain time (e.g. feedback on an interaction nobody ever
        recorded): kept with the reason for an operator, up to ``dead_letter_max_bytes`` so a
        flood of refusals cannot fill the volume the spool needs. Past that the op is dropped,
        logged (its keys, not its content) and counted; False then."""
        line = orjson.dumps({"reason": reason, "at": time.time(), "op": op}) + b"\n"
        if self.dead_letter_bytes + len(line) > self.dead_letter_max_bytes:
            self.dead_letters_dropped += 1
            ids = [row.get("id") for row in op.get("rows", []) if isinstance(row, dict)]
            log.error(
                "dead-letter file full: refused op dropped",
                extra={"path": str(self.dead_letter_path), "op": op.get("op"), "ids": ids},
            )
            return False
        with self.dead_letter_path.open("ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.dead_letters += 1
        self.dead_letter_bytes += len(line)
        return True
