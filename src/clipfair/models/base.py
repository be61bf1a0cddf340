"""The backend contract: what the core (embedding, zero-shot, pipeline) needs from a model.

Layer: models.

A model family is one backend module (``hf.py``: transformers CLIP / MetaCLIP / SigLIP /
SigLIP 2; ``open_clip_backend.py``: open_clip) that returns an :class:`ImageTextModel`.
Nothing outside the backends imports transformers or open_clip: the core calls only

* :meth:`ImageTextModel.preprocess` (reference preprocessing: PIL images -> pixels) and
  :meth:`ImageTextModel.preprocess_spec` (the same as a resize / crop / mean-std
  :class:`~clipfair.models.preprocess.ClipPreprocess` for the fast uint8 path, or None);
* :meth:`ImageTextModel.encode_pixels` (image tower in the run's dtype) and
  :meth:`ImageTextModel.encode_texts` (the family's own tokenization; text tower in float32);
* :attr:`ImageTextModel.scoring` (softmax over ``logit_scale * cos`` for CLIP-style models,
  sigmoid of ``logit_scale * cos + logit_bias`` for SigLIP; scale and bias from the checkpoint);
* :attr:`~ImageTextModel.context_length` / :meth:`~ImageTextModel.token_count`, the
  fingerprints that key the embedding cache, and :meth:`~ImageTextModel.describe` for run.json.
"""

from __future__ import annotations

import hashlib
import html
import logging
import string
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .preprocess import ClipPreprocess
from ..utility.registry import Registry

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

#: preprocessed images: one float tensor (N, 3, H, W), or named tensors batched along dim 0
#: (e.g. SigLIP 2 NaFlex patches, their mask and spatial shapes)
Pixels = Union[torch.Tensor, Mapping[str, torch.Tensor]]


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


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


#: the largest model a loader builds unless ``model.max_params`` says otherwise (null: no cap)
DEFAULT_MAX_PARAMS = 20_000_000_000
#: the largest safetensors header read (the format allows 100 MB)
_MAX_HEADER = 100_000_000


def safetensors_numel(files: Sequence[Path]) -> int:
    """The number of values stored in safetensors ``files``, from their headers alone (the
    8-byte length and the JSON header; no tensor is read). ModelError for a file that is not
    safetensors."""
    import json
    import struct

    total = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                if not 0 < size <= _MAX_HEADER:
                    raise ValueError(f"header of {size} bytes")
                header = json.loads(fh.read(size))
            for key, info in header.items():
                if key != "__metadata__":
                    n = 1
                    for d in info["shape"]:
                        n *= int(d)
                    total += n
        except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
            raise ModelError(f"could not load model weights {f}: not a readable safetensors file "
                             f"({type(e).__name__}); a damaged or truncated weights file must be saved again") from None
    return total


def check_parameter_count(where: str, implied: int | None, stored: int | None, max_params: Any) -> None:
    """Before a model is built: ModelError when the parameter count its config implies
    (``implied``) is more than ``max_params`` or differs from the values stored in its
    weights (``stored``) by more than 2% (and 1,000); None: not known, not checked."""
    if max_params is not None and (isinstance(max_params, bool) or not isinstance(max_params, (int, float))
                                   or max_params <= 0):
        raise ModelError(f"model.max_params must be a positive number of parameters or null, got {max_params!r}")
    if implied is not None and stored is not None and abs(implied - stored) > max(0.02 * max(implied, stored), 1000):
        raise ModelError(f"{where}: its config implies {implied:,} parameters but its weights hold {stored:,}; "
                         "the config does not describe these weights (save the model again with save_pretrained)")
    if implied is not None and max_params is not None and implied > max_params:
        raise ModelError(f"{where}: its config implies {implied:,} parameters, more than model.max_params = "
                         f"{int(max_params):,}; raise model.max_params (or set it to null) if this is the model "
                         "you mean to load")


def hash_file(path: Path, h: "hashlib._Hash") -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)


@dataclass(frozen=True)
class Scoring:
    """How a family turns image-text cosine similarities into its own probabilities.

    ``softmax``: CLIP-style contrastive models (one class per image: softmax over the classes
    of ``logit_scale * cos``). ``sigmoid``: SigLIP's pairwise loss (each image-text pair scored
    on its own: ``sigmoid(logit_scale * cos + logit_bias)``, which need not sum to one).
    ``logit_scale`` is exp(the learned temperature) and ``logit_bias`` the learned bias, both
    read from the checkpoint, never constants.
    """

    rule: str  # "softmax" | "sigmoid"
    logit_scale: float
    logit_bias: float = 0.0

    def __post_init__(self) -> None:
        if self.rule not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown scoring rule {self.rule!r}; use softmax or sigmoid")

    def logits(self, cosine: np.ndarray) -> np.ndarray:
        return float(self.logit_scale) * np.asarray(cosine, dtype=np.float32) + float(self.logit_bias)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(n_images, n_classes) probabilities: softmax over classes, or elementwise sigmoid."""
        if self.rule == "softmax":
            z = logits - logits.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
        return 1.0 / (1.0 + np.exp(-logits))

    def formula(self) -> str:
        if self.rule == "softmax":
            return f"softmax over classes of {self.logit_scale:.4g}·cos"
        return f"sigmoid({self.logit_scale:.4g}·cos {'+' if self.logit_bias >= 0 else '-'} {abs(self.logit_bias):.4g})"

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "formula": self.formula()}


def canonicalize_text(text: str) -> str:
    """A prompt as SigLIP 2's authors feed it to the text tower: HTML entities unescaped, ``_``
    as a space, ASCII punctuation (``string.punctuation``) removed, lower-cased, whitespace
    collapsed (big_vision's ``prompt_engineering.canonicalize_text``; open_clip's SigLIP
    tokenizer applies it after ftfy, whose mojibake repair is left out here)."""
    text = html.unescape(html.unescape(str(text))).strip()
    text = text.replace("_", " ").translate(_NO_PUNCTUATION).lower()
    return " ".join(text.split())


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


@dataclass(frozen=True)
class TextSettings:
    """How a family tokenizes prompts (recorded in run.json and in the text cache key).

    ``padding``: ``longest`` (pad to the longest prompt of a batch, with an attention mask:
    CLIP pools the end-of-text token, so padding does not change the embedding) or
    ``max_length`` (always the full context: SigLIP pools the last position and was trained
    on full-length, unmasked sequences). ``attention_mask``: whether the mask is passed to
    the text tower. ``lowercase``: prompts are lower-cased before tokenizing.
    ``canonicalize``: prompts are canonicalised as big_vision and open_clip do for SigLIP 2
    (:func:`canonicalize_text`: lower-cased, ASCII punctuation removed, whitespace collapsed).
    """

    padding: str = "longest"
    attention_mask: bool = True
    lowercase: bool = False
    canonicalize: bool = False

    def describe(self) -> dict[str, Any]:
        return asdict(self)


class ImageTextModel(ABC):
    """A loaded contrastive image-text model: the contract the core depends on.

    Implementations set the attributes ``name_or_path``, ``device``, ``dtype`` (the image
    tower's; the text tower runs in ``text_dtype``, float32), ``batch_size``, ``fingerprint``
    (what the weights are, not where they were loaded from), ``family``, ``scoring``,
    ``text_settings``, ``logit_scale`` (= ``scoring.logit_scale``) and ``info`` (extra run.json
    fields).
    """

    name_or_path: str
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    fingerprint: str
    family: str
    logit_scale: float
    info: dict[str, Any]

    # -- text -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def context_length(self) -> int:
        """Most tokens a prompt may have (start/end tokens included)."""

    @abstractmethod
    def token_count(self, text: str) -> int:
        """Number of tokens of ``text`` as this family tokenizes it, start/end tokens included."""

    @abstractmethod
    def _encode_text_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """Text embeddings of one batch (the family's tokenization; text tower in float32)."""

    @property
    @abstractmethod
    def text_fingerprint(self) -> str:
        """What a text embedding depends on besides the weights: the tokenizer and its settings."""

    @property
    def text_dtype(self) -> torch.dtype:
        return torch.float32

    @property
    @abstractmethod
    def text_settings(self) -> TextSettings:
        ...

    # -- images ------------------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, images: Sequence[Image.Image]) -> Pixels:
        """The family's own preprocessing: PIL images -> model input (float32, on the CPU)."""

    def preprocessor(self) -> Callable[[Sequence[Image.Image]], Pixels]:
        """:meth:`preprocess` as a light picklable callable (for DataLoader workers): it should
        not carry the model's weights."""
        return self.preprocess

    @abstractmethod
    def preprocess_spec(self) -> ClipPreprocess | None:
        """The preprocessing as resize / crop / rescale / normalise, so that the fast uint8 path
        can reproduce it; None when it is something else (then :meth:`preprocess` is used)."""

    @property
    @abstractmethod
    def preprocess_fingerprint(self) -> str:
        ...

    @abstractmethod
    def _image_tower(self, pixels: Pixels) -> torch.Tensor:
        """The image tower on model input already on the device and in the image dtype."""

    # -- scoring -----------------------------------------------------------------------------
    @property
    @abstractmethod
    def scoring(self) -> Scoring:
        ...

    @property
    @abstractmethod
    def embed_dim(self) -> int:
        ...

    # -- shared implementation ---------------------------------------------------------------
    _image_features: Callable[..., torch.Tensor] | None = None  # the torch.compile'd image tower

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unnormalised text embeddings, float32, shape (len(texts), dim)."""
        too_long = [(t, n) for t in texts if (n := self.token_count(t)) > self.context_length]
        if too_long:
            t, n = too_long[0]
            raise ModelError(
                f"prompt {t!r} is {n} tokens; the text encoder's context is {self.context_length}. "
                "Shorten the prompt or template")
        out = [self._encode_text_batch(list(texts[i:i + 256])).float().cpu().numpy()
               for i in range(0, len(texts), 256)]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def to_device(self, pixels: Pixels) -> Pixels:
        """Model input on the device; floating tensors in the image tower's dtype."""
        def move(t: torch.Tensor) -> torch.Tensor:
            t = t.to(self.device, non_blocking=True)
            return t.to(self.dtype) if t.is_floating_point() else t

        if isinstance(pixels, torch.Tensor):
            return move(pixels)
        return {k: move(v) for k, v in pixels.items()}

    @torch.inference_mode()
    def encode_pixels(self, pixels: Pixels) -> np.ndarray:
        """Unnormalised image embeddings, float32, of preprocessed pixels."""
        fn = self._image_features or self._image_tower
        return fn(self.to_device(pixels)).float().cpu().numpy()

    def compile_image_encoder(self, **options: Any) -> None:
        """Route :meth:`encode_pixels` through ``torch.compile`` of the image tower. Compiling
        happens on the first call and again for every new input shape: keep batches one size."""
        self._image_features = torch.compile(self._image_tower, **options)

    @property
    def image_encoder_compiled(self) -> bool:
        return self._image_features is not None

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.encode_pixels(self.preprocess(images))

    def describe(self) -> dict[str, Any]:
        """The run.json record: family, scoring rule, text settings, precision, fingerprints."""
        return {"name_or_path": self.name_or_path, "fingerprint": self.fingerprint,
                "family": self.family, "scoring": self.scoring.describe(),
                "text": {**self.text_settings.describe(), "context_length": self.context_length,
                         "dtype": dtype_name(self.text_dtype)},
                "device": str(self.device), "dtype": dtype_name(self.dtype),
                "logit_scale": self.scoring.logit_scale, "context_length": self.context_length,
                "preprocess_fingerprint": self.preprocess_fingerprint, **self.info}


def split_precision(model: torch.nn.Module, image_dtype: torch.dtype,
                    image_parts: Sequence[str]) -> torch.dtype:
    """Everything in float32 except the image tower's submodules (named children starting
    with one of ``image_parts``), which get ``image_dtype``. Returns the text tower's dtype:
    float32, or ``image_dtype`` when no image submodule is found (then the whole model gets it)."""
    model.float()
    if image_dtype == torch.float32:
        return torch.float32
    parts = [m for name, m in model.named_children() if name.startswith(tuple(image_parts))]
    if not parts:
        log.warning("%s: image tower not found; the text tower runs in %s too", type(model).__name__,
                    dtype_name(image_dtype))
        model.to(image_dtype)
        return image_dtype
    for m in parts:
        m.to(image_dtype)
    return torch.float32


MODELS: Registry[Callable[..., ImageTextModel]] = Registry("model loader")


def check_path_kind(name_or_path: str, want: str = "folder") -> Path | None:
    """The local path of ``name_or_path`` (None for a hub id); a file where a folder is
    needed (or the reverse) is a one-line ModelError saying so."""
    path = Path(name_or_path).expanduser()
    if not (path.exists() or name_or_path.startswith((".", "/", "~"))):
        return None
    if want == "folder" and path.is_file():
        raise ModelError(f"model path {path} is a file, not a folder; give the folder it was saved in with "
                         "save_pretrained (the one holding config.json), or a hub id")
    if not path.exists():
        raise ModelError(f"model folder {path} does not exist")
    return path
