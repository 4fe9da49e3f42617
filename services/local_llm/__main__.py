"""``python -m services.local_llm``: the same as ``llmops serve local-llm``."""

from services.cli.main import main

if __name__ == "__main__":
    main(["serve", "local-llm"])
