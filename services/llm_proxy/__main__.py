"""``python -m services.llm_proxy``: the same as ``llmops serve llm-proxy``."""

from services.cli.main import main

if __name__ == "__main__":
    main(["serve", "llm-proxy"])
