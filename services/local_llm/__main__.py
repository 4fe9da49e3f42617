"""``python -m services.local_llm``: the local-llm service alone, configured by its environment.

The images run this (not the CLI): it imports only the service, and reads host, port and
workers from ``LOCAL_LLM_HOST`` ... or their ``LLMOPS_`` fallbacks.
"""

from services.common.server import main

if __name__ == "__main__":
    main("local-llm")
