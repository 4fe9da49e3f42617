"""``python -m services.rag``: the same as ``llmops serve rag``."""

from services.cli.main import main

if __name__ == "__main__":
    main(["serve", "rag"])
