"""A spool write cut short by a full disk must not corrupt the ops written after the disk has
room again: the torn line would no longer be the segment's last, so a drain could not read the
segment at all (and the acknowledged ops in it would never be delivered)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.common.spool import Spool
from tests.conftest import ROOT

# A real write cut short by the kernel: RLIMIT_FSIZE stops the file 50 bytes into the second
# append (as ENOSPC would), then the limit is lifted again (the disk has room again).
WRITER = """
import os, resource, sys
from pathlib import Path
from services.common.spool import Spool

spool = Spool(Path(sys.argv[1]))
spool.open()
spool.append([{"n": 0, "pad": "x" * 200}])
size = os.path.getsize(spool.pending_files()[0])
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, hard))
try:
    spool.append([{"n": 1, "pad": "x" * 200}])
    print("not refused")
except OSError as exc:
    print("refused", exc.errno)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
spool.append([{"n": 2, "pad": "x" * 200}])
spool.close()
"""


def test_a_write_cut_short_by_a_full_disk_leaves_later_ops_readable(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.startswith("refused"), out  # the second append failed: never acknowledged
    spool = Spool(tmp_path)
    spool.open()
    got = []
    while (segment := spool.claim()) is not None:
        got += [op["n"] for op in Spool.read(segment)]
        spool.finish(segment, 0)
    assert got == [0, 2]  # the acknowledged ops; the refused one is not delivered either
