"""``python -m services.feedback``: the same as ``llmops serve feedback``."""

from services.cli.main import main

if __name__ == "__main__":
    main(["serve", "feedback"])
