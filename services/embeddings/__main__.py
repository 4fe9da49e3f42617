"""``python -m services.embeddings``: the same as ``llmops serve embeddings``."""

from services.cli.main import main

if __name__ == "__main__":
    main(["serve", "embeddings"])
