"""CLIP-style models: loading (hub id or local folder) and encoding images and texts.

The core works with :class:`ClipModel`, a thin typed wrapper over a transformers model
and its processor; preprocessing travels with the weights (the checkpoint's own
processor config), and the logit scale always comes from the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .registry import Registry

log = logging.getLogger(__name__)

MODELS: Registry[Callable[..., "ClipModel"]] = Registry("model loader")

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_TOKENIZER_FILES = frozenset({"tokenizer.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model",
                              "tokenizer.model", "sentencepiece.bpe.model"})


class ModelError(RuntimeError):
    """A model that cannot be loaded or used; the message says what to do."""


def resolve_device(device: str = "auto") -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelError(f"unknown model.dtype {dtype!r}; use auto, {', '.join(_DTYPES)}") from None


def _features(out: Any) -> torch.Tensor:
    """transformers 4.x returns a tensor; 5.x returns an output object (.pooler_output)."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise ModelError(f"model returned {type(out).__name__} without pooler_output")
    return pooled


def _hash_file(path: Path, h: "hashlib._Hash") -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)


@dataclass
class ClipModel:
    """A loaded contrastive image-text model with its preprocessing."""

    model: Any
    processor: Any
    name_or_path: str
    device: torch.device
    dtype: torch.dtype
    logit_scale: float  # exp(learned temperature), from the checkpoint
    batch_size: int = 64
    fingerprint: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    _image_features: Any = field(default=None, repr=False, compare=False)  # torch.compile'd tower

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def image_processor(self) -> Any:
        return self.processor.image_processor

    @property
    def context_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def preprocess_fingerprint(self) -> str:
        d = self.image_processor.to_dict()
        d.pop("processor_class", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def token_count(self, text: str) -> int:
        """Number of tokens of ``text`` including start/end tokens."""
        return len(self.tokenizer(text, truncation=False)["input_ids"])

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unnormalised text embeddings, float32, shape (len(texts), dim)."""
        too_long = [(t, n) for t in texts if (n := self.token_count(t)) > self.context_length]
        if too_long:
            t, n = too_long[0]
            raise ModelError(
                f"prompt {t!r} is {n} tokens; the text encoder's context is {self.context_length}. "
                "Shorten the prompt or template")
        out = []
        for i in range(0, len(texts), 256):
            enc = self.tokenizer(list(texts[i:i + 256]), padding=True, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            feats = _features(self.model.get_text_features(**enc))
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The checkpoint's own processor: float pixel values (N, 3, H, W)."""
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    @torch.inference_mode()
    def encode_pixels(self, pixel_values: torch.Tensor) -> np.ndarray:
        pv = pixel_values.to(self.device, non_blocking=True).to(self.dtype)
        fn = self._image_features or self.model.get_image_features
        return _features(fn(pixel_values=pv)).float().cpu().numpy()

    # -- optional backend capability (linear probes, the CLIP paper's appendix A.3) ----------
    # Image features before the projection head, unnormalised. A backend without them omits
    # this method; probe.features=pre_projection then fails with a clear message.
    @torch.inference_mode()
    def encode_pixels_pre_projection(self, pixel_values: torch.Tensor) -> np.ndarray:
        """The image tower's pooled output before the projection, float32 (HF CLIP family:
        ``vision_model(...).pooler_output``, the input of ``visual_projection``)."""
        vision = getattr(self.model, "vision_model", None)
        if vision is None or not hasattr(self.model, "visual_projection"):
            raise ModelError(f"{self.name_or_path}: {type(self.model).__name__} has no vision_model + "
                             "visual_projection, so no features before the projection; use probe.features=projected")
        pv = pixel_values.to(self.device, non_blocking=True).to(self.dtype)
        return vision(pixel_values=pv).pooler_output.float().cpu().numpy()

    def compile_image_encoder(self, **options: Any) -> None:
        """Route :meth:`encode_pixels` through ``torch.compile`` of the image tower. Compiling
        happens on the first call and again for every new input shape: keep batches one size."""
        self._image_features = torch.compile(self.model.get_image_features, **options)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.encode_pixels(self.preprocess(images))

    def describe(self) -> dict[str, Any]:
        return {"name_or_path": self.name_or_path, "fingerprint": self.fingerprint,
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "logit_scale": self.logit_scale, "context_length": self.context_length,
                "preprocess_fingerprint": self.preprocess_fingerprint, **self.info}


def _check_local_folder(path: Path, allow_pickle: bool) -> None:
    files = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if path.exists() and not path.is_dir():
        raise ModelError(f"model path {path} is a file, not a folder; give the folder it was saved in with "
                         "save_pretrained (the one holding config.json), or a hub id")
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist")
    if "config.json" not in files:
        raise ModelError(
            f"model folder {path} has no config.json (found: {', '.join(files) or 'nothing'}); "
            "save a model there with model.save_pretrained(folder) and processor.save_pretrained(folder)")
    if "preprocessor_config.json" not in files and "processor_config.json" not in files:
        raise ModelError(
            f"model folder {path} has no preprocessor_config.json (found: {', '.join(files)}); "
            "save the processor beside the weights with processor.save_pretrained(folder)")
    has_st = any(f.endswith(".safetensors") for f in files)
    has_pickle = any(f.endswith(PICKLE_SUFFIXES) for f in files)
    if not has_st and not has_pickle:
        raise ModelError(f"model folder {path} has no weights (*.safetensors) (found: {', '.join(files)}); "
                         "save the model there with model.save_pretrained(folder)")
    # without its vocabulary files transformers builds an empty tokenizer and every prompt
    # silently becomes unknown tokens
    if not any(f in _TOKENIZER_FILES or f.startswith("vocab") or f.endswith(".model") for f in files):
        raise ModelError(
            f"model folder {path} has no tokenizer files (tokenizer.json, vocab.json + merges.txt, "
            f"spiece.model, ...) (found: {', '.join(files)}); save the processor beside the weights "
            "with processor.save_pretrained(folder)")
    if not has_st and has_pickle and not allow_pickle:
        raise ModelError(
            f"model folder {path} has only pickle-based weights, which can run arbitrary code when "
            "loaded; convert them to safetensors, or set model.allow_pickle=true if you trust the file")


def _fingerprint(name_or_path: str, model: Any) -> str:
    h = hashlib.sha256()
    cfg = {k: v for k, v in model.config.to_dict().items()
           if k not in ("_name_or_path", "_commit_hash", "transformers_version")}  # where, not what
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    path = Path(name_or_path)
    if path.is_dir():
        for p in sorted(path.iterdir()):
            if p.suffix in (".safetensors", *PICKLE_SUFFIXES):
                _hash_file(p, h)
    else:
        commit = getattr(model.config, "_commit_hash", None)
        h.update(f"{name_or_path}@{commit}".encode())
        if commit is None:  # no revision known: hash the weights themselves
            for t in model.state_dict().values():
                h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@MODELS.register("hf")
def load_hf_clip(name_or_path: str, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 64, trust_remote_code: bool = False,
                 allow_pickle: bool = False, revision: str | None = None) -> ClipModel:
    """Load a transformers CLIP-style checkpoint (hub id or local folder)."""
    from transformers import AutoModel, AutoProcessor

    path = Path(name_or_path).expanduser()
    is_local = path.exists() or name_or_path.startswith((".", "/", "~"))
    if is_local:
        _check_local_folder(path, allow_pickle)
        name_or_path = str(path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kw["revision"] = revision
    try:
        model = AutoModel.from_pretrained(name_or_path, use_safetensors=None if allow_pickle else True, **kw)
        processor = AutoProcessor.from_pretrained(name_or_path, **kw)
    except Exception as e:  # OSError for missing files; SafetensorError etc. for damaged ones
        hint = ("check the hub id and your network, or give a local folder saved with save_pretrained"
                if not is_local else "the folder must hold a model saved with save_pretrained (safetensors); "
                "a damaged or truncated weights file must be saved again")
        if not allow_pickle and "safetensors" in str(e).lower():
            hint = ("only pickle-based weights are available; set model.allow_pickle=true if you trust "
                    "the source")
        raise ModelError(f"could not load model {name_or_path!r}: {e}\n→ {hint}") from None
    for fn in ("get_image_features", "get_text_features"):
        if not hasattr(model, fn):
            raise ModelError(f"{name_or_path!r} loads as {type(model).__name__}, which has no {fn}; "
                             "clipfair needs a contrastive image-text (CLIP-style) model")
    if not hasattr(model, "logit_scale"):
        raise ModelError(f"{name_or_path!r} has no logit_scale parameter")
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ModelError(f"{name_or_path!r}: AutoProcessor did not give an image processor and a tokenizer")
    # exp(learned logit scale), read in float32 before any down-cast; never a constant
    logit_scale = float(model.logit_scale.detach().float().exp().item())
    model = model.to(dev).to(dt).eval()
    import transformers

    return ClipModel(model=model, processor=processor, name_or_path=name_or_path, device=dev,
                     dtype=dt, logit_scale=logit_scale, batch_size=int(batch_size), fingerprint=_fingerprint(name_or_path, model),
                     info={"loader": "hf", "class": type(model).__name__,
                           "transformers": transformers.__version__})


def load_model(loader: str = "hf", **kwargs: Any) -> ClipModel:
    return MODELS.get(loader)(**kwargs)
