"""local-llm: an OpenAI-compatible chat server over a small local model, fully offline."""
