"""``python -m services.embeddings.prepare``: export the model to ONNX into EMBEDDINGS_ONNX_DIR now.

The ``llmops-models`` image runs it at build time, so a pod serving the default ONNX backend
loads the graph in about a second, imports no torch and writes nothing at start (its root
filesystem can be read-only); an export already there is kept as it is. The model settings
(MODEL_PATH, ONNX_QUANTIZATION, ONNX_DIR) come from the environment.
"""

from __future__ import annotations

import sys
import time

from services.embeddings.config import EmbeddingsSettings
from services.embeddings.encoder import export_onnx, local_model_dir, onnx_path


def main() -> int:
    settings = EmbeddingsSettings(env="dev", auth_disabled=True)
    if settings.onnx_dir is None:
        print("set EMBEDDINGS_ONNX_DIR: where the export goes", file=sys.stderr)
        return 2
    if settings.model_uri:
        print("EMBEDDINGS_MODEL_URI is fetched at start, not at build time", file=sys.stderr)
        return 2
    model_dir = local_model_dir(settings)
    path = onnx_path(settings.onnx_dir, model_dir, settings.onnx_quantization)
    started = time.perf_counter()
    if not path.exists():
        export_onnx(model_dir, path, settings.onnx_quantization)
    print(f"embeddings ONNX graph ready at {path} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
