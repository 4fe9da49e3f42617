"""``python -m services.retrieval``: the retrieval service alone, configured by its environment.

The images run this (not the CLI): it imports only the service, and reads host, port and
workers from ``RETRIEVAL_HOST`` ... or their ``LLMOPS_`` fallbacks.
"""

from services.common.server import main

if __name__ == "__main__":
    main("retrieval")
