"""transformers backend: CLIP (incl. MetaCLIP and CLIP fine-tunes), SigLIP, SigLIP 2, AltCLIP, ALIGN.

Layer: models.

Each family is one row of :data:`FAMILIES`: its scoring rule and its text settings, as its
authors use them. A checkpoint of another ``model_type`` is refused unless
``allow_unknown_family`` is set (then CLIP's settings are tried, and recorded).

* CLIP (Radford et al. 2021; MetaCLIP, Xu et al. 2023, is the same architecture): softmax over
  ``logit_scale * cos``; the text tower pools the end-of-text token, so prompts are padded to
  the longest of a batch and the attention mask is passed.
* SigLIP (Zhai et al. 2023): ``sigmoid(logit_scale * cos + logit_bias)``; the text tower pools
  the LAST position and was trained on sequences padded to the full context without a mask:
  ``padding="max_length"`` (transformers' docs: "make sure to set padding="max_length" as
  that's how the model was trained") and no attention mask (big_vision's text transformer
  has none). Its SentencePiece tokenizer lower-cases and strips punctuation itself.
* SigLIP 2 (Tschannen et al. 2025): as SigLIP, with the Gemma tokenizer; trained on
  canonicalised text, so prompts are canonicalised as big_vision and open_clip do (lower-cased,
  punctuation removed, whitespace collapsed: :func:`~clipfair.models.base.canonicalize_text`;
  transformers' Gemma tokenizer does not, which NVlabs/RADIO#142 measured costs ~12% zero-shot). The fixed-resolution checkpoints
  (``google/siglip2-base-patch16-224``) load as ``model_type`` siglip with a Gemma tokenizer;
  the NaFlex ones as ``siglip2`` (patch sequences: no fast uint8 path, the processor is used).
* AltCLIP (Chen et al. 2022) and ALIGN (Jia et al. 2021): softmax; their text towers pool the
  first ([CLS]) token with an attention mask, so CLIP's text settings apply. ALIGN's scale is
  ``1 / temperature``; its EfficientNet preprocessing (rescale to [-1, 1]) uses the processor.
  (Chinese-CLIP is not offered: clipfair's prompts and taxonomies are English only.)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .preprocess import ClipPreprocess
from .base import (DEFAULT_MAX_PARAMS, MODELS, PICKLE_SUFFIXES, ImageTextModel, ModelError, Pixels, Scoring,
                   TextSettings, canonicalize_text, check_parameter_count, check_path_kind, safetensors_numel, hash_file, resolve_device, resolve_dtype, split_precision)

log = logging.getLogger(__name__)

_TOKENIZER_FILES = frozenset({"tokenizer.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model",
                              "tokenizer.model", "sentencepiece.bpe.model"})


@dataclass(frozen=True)
class HFFamily:
    """A transformers model family clipfair handles correctly."""

    name: str
    model_types: tuple[str, ...]
    rule: str  # Scoring.rule
    text: TextSettings
    note: str  # what it is, for messages and run.json
    scale: str = "logit_scale"  # logit_scale = exp(model.logit_scale), or 1 / model.temperature (ALIGN)


CLIP = HFFamily("clip", ("clip",), "softmax", TextSettings("longest", True, False),
                "CLIP-style (OpenAI CLIP, MetaCLIP, CLIP fine-tunes)")
SIGLIP = HFFamily("siglip", ("siglip",), "sigmoid", TextSettings("max_length", False, False),
                  "SigLIP (sigmoid loss; T5 SentencePiece tokenizer)")
SIGLIP2 = HFFamily("siglip2", ("siglip2",), "sigmoid", TextSettings("max_length", False, True, True),
                   "SigLIP 2 (sigmoid loss; Gemma tokenizer, canonicalised text)")
# [CLS] pooling with an attention mask: the padding length does not change the embedding
ALTCLIP = HFFamily("altclip", ("altclip",), "softmax", TextSettings("longest", True, False),
                   "AltCLIP (XLM-R text tower, [CLS] pooling)")
ALIGN = HFFamily("align", ("align",), "softmax", TextSettings("longest", True, False),
                 "ALIGN (BERT text tower, [CLS] pooling; scale 1/temperature)", scale="temperature")
FAMILIES: tuple[HFFamily, ...] = (CLIP, SIGLIP, SIGLIP2, ALTCLIP, ALIGN)


def supported_families() -> str:
    return ", ".join(f"{f.name} ({f.note})" for f in FAMILIES)


def family_for(model_type: str | None) -> HFFamily | None:
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def refine_family(family: HFFamily, tokenizer: Any) -> HFFamily:
    """SigLIP 2's fixed-resolution checkpoints are ``model_type`` siglip with a Gemma tokenizer
    instead of SigLIP's T5 SentencePiece one."""
    if family is SIGLIP and type(tokenizer).__name__ not in ("SiglipTokenizer", "SiglipTokenizerFast"):
        return SIGLIP2
    return family


def features(out: Any) -> torch.Tensor:
    """transformers 4.x returns a tensor; 5.x returns an output object (.pooler_output)."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise ModelError(f"model returned {type(out).__name__} without pooler_output")
    return pooled


def _json_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ClipModel(ImageTextModel):
    """A transformers contrastive image-text model with its processor (any family of
    :data:`FAMILIES`; built directly, e.g. in tests, it is CLIP-style)."""

    model: Any
    processor: Any
    name_or_path: str
    device: torch.device
    dtype: torch.dtype
    logit_scale: float  # exp(learned temperature) (ALIGN: 1 / temperature), from the checkpoint
    batch_size: int = 64
    fingerprint: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    spec: HFFamily = CLIP  # the family: scoring rule and text settings
    logit_bias: float = 0.0  # SigLIP's learned bias, from the checkpoint
    text: TextSettings | None = None  # None: the family's
    text_dtype_: torch.dtype | None = None  # the text tower's dtype (None: the model's dtype)
    _image_features: Any = field(default=None, repr=False, compare=False)  # torch.compile'd tower

    def __post_init__(self) -> None:
        if self.text is None:
            self.text = self.spec.text

    @property
    def family(self) -> str:  # type: ignore[override]
        return self.spec.name

    @property
    def rule(self) -> str:
        return self.spec.rule

    # -- transformers objects (for this backend and its tests only) -------------------------
    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def image_processor(self) -> Any:
        return self.processor.image_processor

    # -- contract ------------------------------------------------------------------------------
    @property
    def scoring(self) -> Scoring:
        return Scoring(self.rule, self.logit_scale, self.logit_bias if self.rule == "sigmoid" else 0.0)

    @property
    def text_settings(self) -> TextSettings:
        return self.text

    @property
    def text_dtype(self) -> torch.dtype:
        return self.dtype if self.text_dtype_ is None else self.text_dtype_

    @property
    def context_length(self) -> int:
        """The text tower's positions; for families padded to the longest prompt, at most the
        tokenizer's ``model_max_length`` (XLM-R / BERT: 514 positions, 512 tokens)."""
        n = int(self.model.config.text_config.max_position_embeddings)
        if self.text.padding != "max_length":
            m = getattr(self.tokenizer, "model_max_length", None)
            if isinstance(m, int) and 0 < m < n:
                n = m
        return n

    @property
    def embed_dim(self) -> int:
        cfg = self.model.config
        dim = getattr(cfg, "projection_dim", None) or getattr(cfg.text_config, "projection_size", None)
        return int(dim or cfg.text_config.hidden_size)

    def _prepare(self, texts: Sequence[str]) -> list[str]:
        if self.text.canonicalize:
            return [canonicalize_text(t) for t in texts]
        return [t.lower() for t in texts] if self.text.lowercase else list(texts)

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(self._prepare([text])[0], truncation=False)["input_ids"])

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The family's tokenization of a batch (what :meth:`encode_texts` feeds the text tower)."""
        if self.text.padding == "max_length":
            enc = self.tokenizer(self._prepare(texts), padding="max_length", max_length=self.context_length,
                                 truncation=True, return_tensors="pt")
        else:
            enc = self.tokenizer(self._prepare(texts), padding=True, return_tensors="pt")
        keep = ("input_ids", "attention_mask") if self.text.attention_mask else ("input_ids",)
        return {k: enc[k] for k in keep if k in enc}

    def _encode_text_batch(self, texts: Sequence[str]) -> torch.Tensor:
        enc = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        return features(self.model.get_text_features(**enc))

    @property
    def text_fingerprint(self) -> str:
        try:
            vocab: Any = sorted(self.tokenizer.get_vocab().items())
        except Exception:  # a tokenizer without a vocabulary to list
            vocab = [type(self.tokenizer).__name__]
        if self.text != CLIP.text:  # CLIP's key is the vocabulary alone (caches made before stay valid)
            vocab = {"vocab": vocab, "text": self.text.describe()}
        return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]

    def preprocess(self, images: Sequence[Image.Image]) -> Pixels:
        """The checkpoint's own processor: float pixel values (N, 3, H, W), or, for SigLIP 2
        NaFlex, patches with their mask and spatial shapes."""
        return _processor_pixels(self.image_processor, images)

    def preprocessor(self) -> Any:
        return partial(_processor_pixels, self.image_processor)

    def preprocess_spec(self) -> ClipPreprocess | None:
        return spec_from_image_processor(self.image_processor)

    @property
    def preprocess_fingerprint(self) -> str:
        d = self.image_processor.to_dict()
        d.pop("processor_class", None)
        return _json_hash(d)

    def _image_tower(self, pixels: Pixels) -> torch.Tensor:
        if isinstance(pixels, torch.Tensor):
            return features(self.model.get_image_features(pixel_values=pixels))
        return features(self.model.get_image_features(**pixels))

    # -- optional backend capability (linear probes, the CLIP paper's appendix A.3) ----------
    # Image features before the projection head, unnormalised. A backend without them omits
    # this method; probe.features=pre_projection then fails with a clear message.
    @torch.inference_mode()
    def encode_pixels_pre_projection(self, pixels: Pixels) -> np.ndarray:
        """The image tower's pooled output before the projection, float32 (CLIP-style models:
        ``vision_model(...).pooler_output``, the input of ``visual_projection``)."""
        vision = getattr(self.model, "vision_model", None)
        if vision is None or not hasattr(self.model, "visual_projection"):
            raise ModelError(f"{self.name_or_path}: {type(self.model).__name__} has no vision_model + "
                             "visual_projection, so no features before the projection; use probe.features=projected")
        pv = self.to_device(pixels)
        out = vision(pixel_values=pv) if isinstance(pv, torch.Tensor) else vision(**pv)
        return out.pooler_output.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "text_settings_source": self.spec.note}


def _processor_pixels(image_processor: Any, images: Sequence[Image.Image]) -> Pixels:
    out = image_processor(images=list(images), return_tensors="pt")
    if "pixel_attention_mask" in out:
        return {k: out[k] for k in ("pixel_values", "pixel_attention_mask", "spatial_shapes")}
    return out["pixel_values"]


def _size_get(size: Any, key: str) -> Any:
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def spec_from_image_processor(image_processor: Any) -> ClipPreprocess | None:
    """A :class:`ClipPreprocess` equivalent to a transformers image processor, or None when the
    processor does something the fast path does not reproduce (then the processor is used).

    Only PIL-backend processors qualify (transformers' ``*ImageProcessorPil`` and the 4.x
    slow processors): a torchvision-backend processor resizes with different kernels.
    """
    ip = image_processor
    backend = getattr(ip, "backend", None)
    if backend is not None and backend != "pil":
        return None
    if backend is None:  # transformers 4.x: the slow processors resize with PIL
        if type(ip).__name__.endswith("Fast") or not hasattr(ip, "resample"):
            return None
    if hasattr(ip, "max_num_patches"):  # SigLIP 2 NaFlex: patch sequences, not an image
        return None
    if getattr(ip, "rescale_offset", False) or getattr(ip, "include_top", False):
        return None  # EfficientNet (ALIGN): rescale to [-1, 1] / a second normalisation
    for flag in ("do_pad", "do_reduce_labels", "do_flip_channel_order"):
        if getattr(ip, flag, False):
            return None
    if getattr(ip, "do_convert_rgb", True) is False:
        return None  # images are RGB anyway; be conservative about odd configs
    shortest = resize_hw = None
    if getattr(ip, "do_resize", False):
        size = ip.size
        se, h, w = _size_get(size, "shortest_edge"), _size_get(size, "height"), _size_get(size, "width")
        if _size_get(size, "longest_edge") or _size_get(size, "max_height") or _size_get(size, "max_pixels"):
            return None
        if se:
            shortest = int(se)
        elif h and w:
            resize_hw = (int(h), int(w))
        else:
            return None
    crop = None
    if getattr(ip, "do_center_crop", False):
        cs = ip.crop_size
        ch, cw = _size_get(cs, "height"), _size_get(cs, "width")
        if not (ch and cw):
            return None
        crop = (int(ch), int(cw))
    resample = getattr(ip, "resample", None)
    resample = int(resample) if resample is not None else int(Image.Resampling.BILINEAR)
    rescale = float(ip.rescale_factor) if getattr(ip, "do_rescale", False) else None
    mean = std = None
    if getattr(ip, "do_normalize", False):
        m, s = ip.image_mean, ip.image_std
        m = [float(m)] * 3 if np.isscalar(m) else [float(v) for v in m]
        s = [float(s)] * 3 if np.isscalar(s) else [float(v) for v in s]
        if len(m) != 3 or len(s) != 3:
            return None
        mean, std = tuple(m), tuple(s)
    return ClipPreprocess(shortest, resize_hw, resample, crop, rescale, mean, std)


# -- loading ---------------------------------------------------------------------------------

def _check_config(path: Path) -> list[str]:
    files = sorted(p.name for p in path.iterdir())
    if "config.json" not in files:
        raise ModelError(
            f"model folder {path} has no config.json (found: {', '.join(files) or 'nothing'}); "
            "save a model there with model.save_pretrained(folder) and processor.save_pretrained(folder)")
    return files


def _check_local_files(path: Path, files: list[str], allow_pickle: bool) -> None:
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
                hash_file(p, h)
    else:
        commit = getattr(model.config, "_commit_hash", None)
        h.update(f"{name_or_path}@{commit}".encode())
        if commit is None:  # no revision known: hash the weights themselves
            for t in model.state_dict().values():
                h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _implied_parameters(config: Any, kw: dict[str, Any]) -> int | None:
    """The number of values the model ``config`` describes (parameters and persistent
    buffers), counted on a model built on the meta device (no memory for weights); None when
    it cannot be built there."""
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            model = AutoModel.from_config(config, trust_remote_code=kw.get("trust_remote_code", False))
        n = sum(p.numel() for p in model.parameters())
        # persistent buffers (BatchNorm statistics, position ids) are stored beside the weights
        n += sum(b.numel() for m in model.modules() for name, b in m._buffers.items()
                 if b is not None and name not in m._non_persistent_buffers_set)
        return int(n)
    except Exception as e:  # noqa: BLE001 - a model class that cannot be built on meta
        log.warning("could not count the parameters the model config implies (%s: %s); loading without "
                    "that check", type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return None


def _stored_parameters(name_or_path: str, path: Path | None, kw: dict[str, Any]) -> int | None:
    """The number of values in the checkpoint's safetensors weights, from their headers: the
    local folder's files (the index's shards, else model.safetensors, else every
    ``*.safetensors``), or a hub repo's headers (None when they cannot be read: offline,
    pickle-only weights)."""
    if path is not None:
        index = path / "model.safetensors.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise ModelError(f"{index}: not a readable safetensors index; save the model again") from None
            files = [path / str(f) for f in shards]
        elif (path / "model.safetensors").is_file():
            files = [path / "model.safetensors"]
        else:
            files = sorted(path.glob("*.safetensors"))
        return safetensors_numel(files) if files else None
    try:
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(name_or_path, revision=kw.get("revision"))
        return int(sum(meta.parameter_count.values()))
    except Exception as e:  # noqa: BLE001 - offline, no safetensors, private repo
        log.info("%s: safetensors headers not readable from the hub (%s); its parameter count is "
                 "checked against model.max_params only", name_or_path, type(e).__name__)
        return None


def _resolve_config(name_or_path: str, kw: dict[str, Any], allow_unknown_family: bool,
                    hint: str) -> tuple[HFFamily, str | None, Any]:
    """The family, model_type and config of a checkpoint (before loading weights)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, **kw)
    except Exception as e:  # noqa: BLE001 - unreadable or unknown config
        raise ModelError(f"could not load model {name_or_path!r}: {str(e).splitlines()[0]}; {hint}") from None
    model_type = getattr(config, "model_type", None)
    fam = family_for(model_type)
    if fam is not None:
        return fam, model_type, config
    if not allow_unknown_family:
        raise ModelError(
            f"{name_or_path!r} is model_type {model_type!r}, not a contrastive image-text family clipfair "
            f"handles correctly; supported: {supported_families()}. Set model.allow_unknown_family=true "
            "to try it with CLIP's settings (recorded in run.json)")
    log.warning("%s: model_type %r is not a known family; trying CLIP's settings "
                "(model.allow_unknown_family=true)", name_or_path, model_type)
    return CLIP, model_type, config


@MODELS.register("hf")
def load_hf_clip(name_or_path: str, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 64, trust_remote_code: bool = False,
                 allow_pickle: bool = False, revision: str | None = None,
                 allow_unknown_family: bool = False, max_params: int | float | None = DEFAULT_MAX_PARAMS,
                 allow_random: bool = False) -> ClipModel:
    """Load a transformers CLIP / MetaCLIP / SigLIP / SigLIP 2 checkpoint (hub id or local folder).

    Before the model is built, the parameter count its config implies (a model built on the
    meta device) is compared with ``max_params`` (None: no cap) and with the values its
    safetensors weights hold (their headers): a config that does not describe its weights is
    refused before any memory is allocated for it. Weights the checkpoint lacks (transformers'
    "newly initialized" missing keys) are random: an error unless ``allow_random`` (then recorded
    as ``random_weights`` in run.json)."""
    from transformers import AutoModel, AutoProcessor

    path = check_path_kind(name_or_path, "folder")
    files: list[str] = []
    if path is not None:
        files = _check_config(path)
        name_or_path = str(path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kw["revision"] = revision
    hint = ("check the hub id and your network, or give a local folder saved with save_pretrained"
            if path is None else "the folder must hold a model saved with save_pretrained (safetensors); "
            "a damaged or truncated weights file must be saved again")
    family, model_type, config = _resolve_config(name_or_path, kw, allow_unknown_family, hint)
    if path is not None:
        _check_local_files(path, files, allow_pickle)
    check_parameter_count(f"model {name_or_path}", None, None, max_params)  # the value itself first
    check_parameter_count(f"model {name_or_path}", _implied_parameters(config, kw),
                          _stored_parameters(name_or_path, path, kw), max_params)
    try:
        model, loading = AutoModel.from_pretrained(name_or_path, use_safetensors=None if allow_pickle else True,
                                                   output_loading_info=True, **kw)
        processor = AutoProcessor.from_pretrained(name_or_path, **kw)
    except Exception as e:  # OSError for missing files; SafetensorError etc. for damaged ones
        if not allow_pickle and "safetensors" in str(e).lower():
            hint = ("only pickle-based weights are available; set model.allow_pickle=true if you trust "
                    "the source")
        raise ModelError(f"could not load model {name_or_path!r}: {e}\n→ {hint}") from None
    missing = sorted(str(k) for k in (loading or {}).get("missing_keys", ()) or ())
    random_weights = None
    if missing:
        random_weights = (f"transformers: {len(missing)} weight(s) missing from the checkpoint were newly "
                          f"initialised, e.g. {missing[0]}")
        if not allow_random:
            raise ModelError(f"{name_or_path!r}: {len(missing)} weight(s) are missing from the checkpoint and would "
                             f"be randomly initialised (e.g. {missing[0]}); give a complete checkpoint, or set "
                             "model.allow_random=true to audit it anyway (every report then leads with a banner)")
    for fn in ("get_image_features", "get_text_features"):
        if not hasattr(model, fn):
            raise ModelError(f"{name_or_path!r} loads as {type(model).__name__}, which has no {fn}; "
                             "clipfair needs a contrastive image-text (CLIP-style) model")
    if not hasattr(model, "temperature" if family.scale == "temperature" else "logit_scale"):
        raise ModelError(f"{name_or_path!r} has no {'temperature' if family.scale == 'temperature' else 'logit_scale'} "
                         "parameter; clipfair needs the checkpoint's own logit scale")
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ModelError(f"{name_or_path!r}: AutoProcessor did not give an image processor and a tokenizer")
    family = refine_family(family, processor.tokenizer)
    # exp(learned logit scale) and the learned bias, read in float32 before any down-cast; never constants
    if family.scale == "temperature":  # ALIGN: logits = cos / temperature
        logit_scale = 1.0 / float(model.temperature.detach().float().item())
    else:
        logit_scale = float(model.logit_scale.detach().float().exp().item())
    bias = getattr(model, "logit_bias", None)
    logit_bias = float(bias.detach().float().reshape(-1)[0].item()) if bias is not None else 0.0
    if family.rule == "sigmoid" and bias is None:
        raise ModelError(f"{name_or_path!r} ({family.name}) has no logit_bias parameter; cannot score it")
    model = model.to(dev).eval()
    text_dtype = split_precision(model, dt, ("vision", "visual", "image"))
    import transformers

    info = {"loader": "hf", "class": type(model).__name__, "model_type": model_type,
            "transformers": transformers.__version__, "tokenizer": type(processor.tokenizer).__name__}
    if family_for(model_type) is None:
        info["allow_unknown_family"] = True
    if random_weights:
        info["random_weights"] = random_weights
    return ClipModel(model=model, processor=processor, name_or_path=name_or_path, device=dev, dtype=dt,
                     logit_scale=logit_scale, batch_size=int(batch_size),
                     fingerprint=_fingerprint(name_or_path, model), info=info, spec=family,
                     logit_bias=logit_bias, text_dtype_=text_dtype)
