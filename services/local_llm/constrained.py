"""``response_format`` by constrained decoding: at each step only the tokens that keep the text a
prefix of JSON valid for the schema may be chosen (lm-format-enforcer's character-level JSON
Schema parser over a prefix tree of the vocabulary).

Only the library's core is used: its transformers integration imports modules that
transformers 5 no longer has, and a logits processor of ten lines does the same job. The
vocabulary index is built once per model, lazily, on the first request that asks for JSON
(~0.5-1 s for SmolLM2's 49k tokens; nothing at start-up for servers that never get one).

What it guarantees: the text is a prefix of a valid JSON value, and complete unless
``max_tokens`` (or a stop string) cut it first (then ``finish_reason`` is ``length``). The
parser honours types, properties, required, enums, arrays, ``anyOf``, ``$ref``; it does not
enforce every keyword (``format``, ``pattern``, numeric bounds): the LLM proxy validates the
answer against the full schema either way.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger("llmops.local_llm")

# json_object: any JSON object.
ANY_OBJECT: dict[str, Any] = {"type": "object"}


class UnsupportedSchema(ValueError):
    """The parser cannot follow this schema (invalid, or a construct it does not know)."""


def parser_for(schema: Mapping[str, Any]) -> Any:
    """A fresh character-level parser for ``schema`` (cheap); :class:`UnsupportedSchema` if the
    library cannot build one. Called on the request path to answer 400, and per generation."""
    from lmformatenforcer import JsonSchemaParser

    try:
        return JsonSchemaParser(dict(schema))
    except Exception as exc:  # the library raises bare Exception, ValueError, TypeError, ...
        raise UnsupportedSchema(str(exc) or type(exc).__name__) from None


class JsonConstraints:
    """Per model: the vocabulary index (built once, on first use) and per-request processors."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        encode: Callable[[str], list[int]],
        vocab_size: int,
        special_ids: Sequence[int],
        eos_ids: Sequence[int],
    ) -> None:
        self._decode = decode
        self._encode = encode
        self._vocab_size = vocab_size
        self._special = frozenset(special_ids)
        self._eos = list(eos_ids)
        self._data: Any = None
        self._lock = threading.Lock()
        self.build_seconds: float | None = None

    def tokenizer_data(self) -> Any:
        """lm-format-enforcer's index of the vocabulary; built on the first call."""
        with self._lock:
            if self._data is None:
                started = time.perf_counter()
                self._data = self._build()
                self.build_seconds = time.perf_counter() - started
                log.info("built the JSON decoding index in %.2f s", self.build_seconds)
            return self._data

    def _build(self) -> Any:
        from lmformatenforcer import TokenEnforcerTokenizerData

        # As the library's transformers integration does: each token decoded after a "0", so a
        # token that starts a word keeps its leading space (a lone decode drops it).
        zero = self._encode("0")[-1]
        regular = []
        for token in range(self._vocab_size):
            if token in self._special:
                continue
            after_zero = self._decode([zero, token])[1:]
            alone = self._decode([token])
            regular.append((token, after_zero, len(after_zero) > len(alone)))

        def decode(ids: list[int]) -> str:
            return self._decode(ids).rstrip("\ufffd")  # an incomplete UTF-8 character so far

        return TokenEnforcerTokenizerData(regular, decode, self._eos, False, self._vocab_size)

    def processor(self, torch: Any, schema: Mapping[str, Any], prompt_len: int) -> JsonLogits:
        from lmformatenforcer import TokenEnforcer

        enforcer = TokenEnforcer(self.tokenizer_data(), parser_for(schema))
        return JsonLogits(torch, enforcer, prompt_len, self._eos)


class JsonLogits:
    """A logits processor that leaves only the tokens the enforcer allows next.

    Put before temperature and top-p (transformers runs custom processors first), so sampling
    only ever chooses among allowed tokens and never faces an all-masked distribution."""

    def __init__(self, torch: Any, enforcer: Any, prompt_len: int, eos: list[int]) -> None:
        self.torch = torch
        self.enforcer = enforcer
        self.prompt_len = prompt_len
        self.eos = eos

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        generated = input_ids[0, self.prompt_len :].tolist()
        try:
            allowed = self.enforcer.get_allowed_tokens(generated).allowed_tokens or self.eos
        except Exception:
            # The parser gave up (a construct it cannot follow this far): end the answer here
            # rather than fail the request; the incomplete JSON is the proxy's to reject.
            log.warning("JSON-constrained decoding stopped early", exc_info=True)
            allowed = self.eos
        width = scores.shape[-1]
        allowed = [t for t in allowed if t < width] or self.eos
        mask = self.torch.full_like(scores, -math.inf)
        mask[:, allowed] = 0
        return scores + mask
