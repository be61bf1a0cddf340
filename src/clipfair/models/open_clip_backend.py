"""open_clip backend: ``model.loader=open_clip model.name=ViT-B-32 model.pretrained=laion2b_s34b_b79k``,
``model.name=hf-hub:org/repo`` or ``model.name=local-dir:/folder`` (a folder written by open_clip's
``save_for_hf``). Needs ``pip install clipfair[open_clip]`` (open_clip_torch, torchvision).

Layer: models.

open_clip's own pieces are used as they are: its tokenizer (always padded to the model's context
length; SimpleTokenizer lower-cases, SigLIP / HF tokenizers do what their config says), its
validation transform (the fast uint8 path is used where that transform is the standard
shortest-edge resize + center crop, or a squash resize, + normalise; checked against the
transform on the first image at run time) and its scoring: a model with a ``logit_bias``
(SigLIP) is scored with a sigmoid, the others with a softmax; scale and bias from the weights.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from .preprocess import ClipPreprocess
from .base import (MODELS, ImageTextModel, ModelError, Pixels, Scoring, TextSettings, check_path_kind,
                   resolve_device, resolve_dtype, split_precision)


_LOCAL_DIR = "local-dir:"
_RESAMPLE = {"bicubic": int(Image.Resampling.BICUBIC), "bilinear": int(Image.Resampling.BILINEAR)}
_COUNT_CONTEXT = 1024  # tokenizing to count: long enough that nothing is truncated


def _import_open_clip() -> Any:
    try:
        import open_clip
    except Exception as e:  # noqa: BLE001 - ImportError, or torchvision failing to import
        raise ModelError(f"model.loader=open_clip needs open_clip_torch and a torchvision that imports "
                         f"with this torch ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "open_clip needs a torch of its own: create ./.venv-openclip with `bash scripts/setup.sh "
                         "openclip` and run .venv-openclip/bin/clipfair (installing it into this environment cannot "
                         "work: see the README)") from None
    return open_clip


def spec_from_open_clip_cfg(cfg: dict[str, Any]) -> ClipPreprocess | None:
    """open_clip's validation transform as a :class:`ClipPreprocess`, or None when it is not a
    plain resize (+ center crop) + normalise (e.g. ``resize_mode="longest"``, which pads)."""
    size = cfg.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    resample = _RESAMPLE.get(cfg.get("interpolation", "bicubic"), _RESAMPLE["bicubic"])
    mode = cfg.get("resize_mode", "shortest")
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        return None
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if mode == "shortest" and h == w:  # torchvision Resize(int) + CenterCrop (rounded offsets)
        return ClipPreprocess(h, None, resample, (h, w), 1 / 255, mean, std, crop_offset="round")
    if mode == "squash":  # Resize((h, w))
        return ClipPreprocess(None, (h, w), resample, None, 1 / 255, mean, std)
    return None


def _token_count(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` with start/end tokens, for open_clip's tokenizers."""
    if hasattr(tokenizer, "sot_token_id") and hasattr(tokenizer, "encode"):  # SimpleTokenizer (CLIP BPE)
        return len(tokenizer.encode(text)) + 2
    ids = tokenizer([text], context_length=_COUNT_CONTEXT)[0].tolist()  # HF / SigLIP tokenizers
    inner = getattr(tokenizer, "tokenizer", None)
    pad = getattr(inner, "pad_token_id", 0) or 0
    eos = getattr(inner, "eos_token_id", None)
    n = len(ids)
    while n and ids[n - 1] == pad:
        n -= 1
    return n + 1 if pad == eos else n  # the end token doubles as padding (SigLIP's T5 vocabulary)


def _transform_batch(transform: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    return torch.stack([transform(im) for im in images])


class OpenClipModel(ImageTextModel):
    """An open_clip model with its tokenizer and validation transform."""

    def __init__(self, model: Any, tokenizer: Any, transform: Any, name_or_path: str, device: torch.device,
                 dtype: torch.dtype, text_dtype: torch.dtype, batch_size: int, fingerprint: str,
                 info: dict[str, Any], embed_dim: int) -> None:
        self.model, self.tokenizer, self.transform = model, tokenizer, transform
        self.name_or_path, self.device, self.dtype, self._text_dtype = name_or_path, device, dtype, text_dtype
        self.batch_size, self.fingerprint, self.info = int(batch_size), fingerprint, info
        self._embed_dim = int(embed_dim)
        bias = getattr(model, "logit_bias", None)
        # exp(learned logit scale) and the learned bias, in float32; never constants
        scale = float(model.logit_scale.detach().float().exp().reshape(-1)[0].item())
        self.logit_scale = scale
        if bias is None:
            self._scoring = Scoring("softmax", scale)
        else:
            self._scoring = Scoring("sigmoid", scale, float(bias.detach().float().reshape(-1)[0].item()))
        self.family = "open_clip_siglip" if bias is not None else "open_clip"
        self._image_features = None

    def __repr__(self) -> str:
        return f"OpenClipModel({self.name_or_path!r}, device={self.device}, dtype={self.dtype})"

    @property
    def scoring(self) -> Scoring:
        return self._scoring

    @property
    def text_settings(self) -> TextSettings:
        return TextSettings(padding="max_length", attention_mask=False, lowercase=False)

    @property
    def text_dtype(self) -> torch.dtype:
        return self._text_dtype

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", None) or self.model.context_length)

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def token_count(self, text: str) -> int:
        return _token_count(self.tokenizer, text)

    def _encode_text_batch(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), context_length=self.context_length).to(self.device)
        return self.model.encode_text(tokens)

    @property
    def text_fingerprint(self) -> str:
        desc = {"tokenizer": type(self.tokenizer).__name__, "context_length": self.context_length,
                "text": self.text_settings.describe()}
        inner = getattr(self.tokenizer, "tokenizer", None)
        if inner is not None and hasattr(inner, "get_vocab"):
            desc["vocab"] = sorted(inner.get_vocab().items())
        elif hasattr(self.tokenizer, "encoder"):
            desc["vocab"] = len(self.tokenizer.encoder)
        return hashlib.sha256(json.dumps(desc, default=str).encode()).hexdigest()[:16]

    def preprocess(self, images: Sequence[Image.Image]) -> Pixels:
        return _transform_batch(self.transform, images)

    def preprocessor(self) -> Any:
        return partial(_transform_batch, self.transform)

    def preprocess_spec(self) -> ClipPreprocess | None:
        return spec_from_open_clip_cfg(dict(getattr(self.model.visual, "preprocess_cfg", {}) or {}))

    @property
    def preprocess_fingerprint(self) -> str:
        d = {"cfg": dict(getattr(self.model.visual, "preprocess_cfg", {}) or {}), "transform": repr(self.transform)}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _image_tower(self, pixels: Pixels) -> torch.Tensor:
        assert isinstance(pixels, torch.Tensor)
        return self.model.encode_image(pixels)


def _fingerprint(model_cfg: Any, model: torch.nn.Module) -> str:
    """What the weights are (architecture config and every parameter), not where they came from."""
    h = hashlib.sha256(json.dumps([type(model).__name__, model_cfg], sort_keys=True, default=str).encode())
    for k, t in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _looks_like_checkpoint(path: Path) -> bool:
    """A weights file by its first bytes: torch.save's zip (PK..), a legacy pickle (0x80
    protocol byte) or safetensors (8-byte header length, then a JSON header)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return True
    if len(head) == 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        return 2 <= n <= 100_000_000 and n + 8 <= path.stat().st_size
    return False


@MODELS.register("open_clip")
def load_open_clip(name: str | None = None, pretrained: str | None = None, device: str = "auto",
                   dtype: str = "auto", batch_size: int = 64, config_file: str | None = None,
                   cache_dir: str | None = None, allow_random: bool = False) -> OpenClipModel:
    """Load an open_clip model: a built-in architecture ``name`` with ``pretrained`` weights (a tag
    such as ``laion2b_s34b_b79k``, or a local weights file), ``hf-hub:org/repo``, or
    ``local-dir:/folder``. ``config_file``: a model config JSON to register first (a custom
    architecture). A built-in architecture without ``pretrained`` has random weights: an error
    unless ``allow_random`` (then recorded as ``random_weights`` in run.json)."""
    if not name:
        raise ModelError("model.loader=open_clip needs model.name (e.g. ViT-B-32 with model.pretrained="
                         "laion2b_s34b_b79k, or hf-hub:org/repo, or local-dir:/folder)")
    open_clip = _import_open_clip()
    if config_file:
        cf = Path(config_file).expanduser()
        if not cf.is_file():
            raise ModelError(f"model.config_file {cf} is not a file; give an open_clip model config JSON "
                             "(embed_dim, vision_cfg, text_cfg)")
        open_clip.add_model_config(cf)
    if name.startswith(_LOCAL_DIR):
        folder = check_path_kind(name[len(_LOCAL_DIR):], "folder")
        if folder is None or not (folder / "open_clip_config.json").is_file():
            raise ModelError(f"model.name {name}: the folder has no open_clip_config.json; save it with "
                             "open_clip's save_for_hf (open_clip_config.json + open_clip_model.safetensors)")
        name = _LOCAL_DIR + str(folder)
    elif not name.startswith("hf-hub:") and open_clip.get_model_config(name) is None:
        raise ModelError(f"unknown open_clip model {name!r}; use one of open_clip.list_models() (e.g. "
                         "ViT-B-32, ViT-L-14), hf-hub:org/repo, local-dir:/folder, or give model.config_file")
    if pretrained and Path(pretrained).expanduser().exists() and Path(pretrained).expanduser().is_dir():
        raise ModelError(f"model.pretrained {pretrained} is a folder; give a weights file or a tag "
                         f"(open_clip.list_pretrained_tags_by_model({name!r}))")
    local = bool(pretrained) and Path(pretrained).expanduser().is_file()
    if local and not _looks_like_checkpoint(Path(pretrained).expanduser()):
        raise ModelError(f"model.pretrained {pretrained} is not a checkpoint (neither a PyTorch .pt/.bin file nor "
                         f"safetensors); give open_clip weights for {name} or a tag "
                         f"(open_clip.list_pretrained_tags_by_model({name!r}))")
    random_weights = None
    if not pretrained and not name.startswith(("hf-hub:", _LOCAL_DIR)):
        random_weights = f"open_clip: model.pretrained=null gives {name} randomly initialised weights"
        if not allow_random:
            raise ModelError(f"model.pretrained is not set: open_clip's {name} would have random weights; give a "
                             f"weights tag (open_clip.list_pretrained_tags_by_model({name!r})) or a weights file, or "
                             "set model.allow_random=true to audit an untrained model on purpose")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    try:
        model, _, transform = open_clip.create_model_and_transforms(
            name, pretrained=pretrained or None, precision="fp32", device=dev, cache_dir=cache_dir,
            weights_only=True)
        tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - unknown tag, missing file, network
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if local:
            raise ModelError(f"could not load open_clip model {name!r} from the file {pretrained}: {first[:200]}; "
                             f"check that it holds weights of {name}") from None
        raise ModelError(f"could not load open_clip model {name!r} (pretrained={pretrained!r}): {first[:200]}; "
                         "check the name / tag (open_clip.list_pretrained()) and your network") from None
    model.eval()
    text_dtype = split_precision(model, dt, ("visual",))
    shown = name if not pretrained else f"{name}:{pretrained}"
    with torch.inference_mode():
        embed_dim = model.encode_text(tokenizer(["a"]).to(dev)).shape[-1]
    if name.startswith(_LOCAL_DIR):
        model_cfg = json.loads((Path(name[len(_LOCAL_DIR):]) / "open_clip_config.json").read_text())["model_cfg"]
    else:
        model_cfg = open_clip.get_model_config(name) if not name.startswith("hf-hub:") else name
    info = {"loader": "open_clip", "class": type(model).__name__, "open_clip": open_clip.__version__,
            "pretrained": pretrained, "tokenizer": type(tokenizer).__name__}
    if random_weights:
        info["random_weights"] = random_weights
    return OpenClipModel(model, tokenizer, transform, shown, dev, dt, text_dtype, batch_size,
                         _fingerprint(model_cfg, model), info, embed_dim)
