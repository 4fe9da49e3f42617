"""``python -m services.local_llm.prepare``: convert the model into LOCAL_LLM_CACHE_DIR now.

The ``llmops-models`` image runs it at build time, so a pod loads the converted copy in
seconds and writes nothing at start (its root filesystem can be read-only); a valid copy
already there is kept as it is.
"""

from __future__ import annotations

import sys

from services.local_llm.config import LocalLLMSettings
from services.local_llm.generator import load_model


def main() -> int:
    # The model settings (MODEL_DIR, GGUF_FILE, CACHE_DIR) come from the environment; nothing
    # is served, so no API key is needed.
    settings = LocalLLMSettings(env="dev", auth_disabled=True)
    loaded = load_model(settings)
    print(f"local-llm model ready in {settings.cache_dir} (from {loaded.origin})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
