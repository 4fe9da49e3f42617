"""``python -m services.rag``: the rag service alone, configured by its environment.

The images run this (not the CLI): it imports only the service, and reads host, port and
workers from ``RAG_HOST`` ... or their ``LLMOPS_`` fallbacks.
"""

from services.common.server import main

if __name__ == "__main__":
    main("rag")
