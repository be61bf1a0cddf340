"""Fast image preprocessing that reproduces a model's resize / crop / normalise on uint8 pixels.

Layer: models.

The reference is the checkpoint's own (PIL-backend) processor: resize the shortest edge
(PIL, the processor's resample filter, bicubic for CLIP), center crop (zero-padding an
image smaller than the crop), rescale by 1/255 and normalise by mean/std, returning float32
(3, H, W) per image. :class:`ClipPreprocess` splits this into

* :meth:`ClipPreprocess.to_uint8`: resize + crop of a PIL image into a uint8 (3, H, W)
  array - the part done per image, in DataLoader workers (4x less data to move than float32);
* :meth:`ClipPreprocess.normalize`: rescale + normalise of a whole uint8 batch, as one
  vectorised op on the model's device (GPU: after a pinned, non-blocking uint8 copy).

Both steps do what the processor does (same PIL resize on the same uint8 image), so the
result equals the processor's within float rounding (max abs difference ~1e-6, checked at
run time on the first image and in ``tests/test_pipeline_speed.py``).

JPEG draft decoding (:func:`draft_size`, ``embed.fast_decode``) is different: libjpeg scales
the image down by 1/2, 1/4 or 1/8 in the DCT domain while decoding, and the bicubic resize
then starts from that smaller image, so pixels differ slightly from a full decode. It is used
only when measured to be within :data:`DRAFT_TOLERANCE` (see :func:`compare_draft`) or when
asked for explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

#: fast (uint8) preprocessing must match the processor within this max abs difference of
#: normalised pixel values (one 8-bit level is ~0.015 after CLIP's normalisation)
EXACT_TOLERANCE = 1e-4

#: JPEG draft decoding is accepted by ``fast_decode=auto`` when, on a sample of the
#: dataset's images, the preprocessed pixels differ from a full decode by at most this
#: mean absolute difference in 8-bit levels (0..255) ...
DRAFT_TOLERANCE_MEAN_LEVELS = 2.0
#: ... and at most this 99th percentile absolute difference in 8-bit levels
DRAFT_TOLERANCE_P99_LEVELS = 12.0


@dataclass(frozen=True)
class ClipPreprocess:
    """Resize (shortest edge or fixed h,w) -> center crop -> rescale -> normalise."""

    shortest_edge: int | None  # resize the shorter side to this (aspect kept) ...
    resize_hw: tuple[int, int] | None  # ... or to exactly (height, width); both None: no resize
    resample: int
    crop_hw: tuple[int, int] | None
    rescale: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    #: center-crop offset: "floor" ((h - ch) // 2, transformers) or "round" (round((h - ch) / 2),
    #: torchvision's CenterCrop, used by open_clip)
    crop_offset: str = "floor"

    # -- geometry ------------------------------------------------------------------------
    def resized_hw(self, height: int, width: int) -> tuple[int, int]:
        if self.resize_hw is not None:
            return self.resize_hw
        if self.shortest_edge is None:
            return height, width
        s = self.shortest_edge
        # transformers.image_transforms.get_resize_output_image_size(default_to_square=False)
        if width <= height:
            return int(s * height / width), s
        return s, int(s * width / height)

    @property
    def output_hw(self) -> tuple[int, int] | None:
        """(H, W) of every output image, or None when it depends on the input size."""
        if self.crop_hw is not None:
            return self.crop_hw
        return self.resize_hw

    def draft_size(self) -> tuple[int, int] | None:
        """The size to ask libjpeg's draft mode for: each side stays >= what the resize needs."""
        if self.resize_hw is not None:
            h, w = self.resize_hw
            return (w, h)
        if self.shortest_edge is not None:
            return (self.shortest_edge, self.shortest_edge)
        return None

    # -- per image (workers) -------------------------------------------------------------
    def to_uint8(self, img: Image.Image) -> np.ndarray:
        """Resized and center-cropped uint8 pixels (3, H, W) of an RGB image."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        w, h = img.size
        nh, nw = self.resized_hw(h, w)
        if (nh, nw) != (h, w):
            img = img.resize((nw, nh), resample=self.resample)
        arr = np.asarray(img)  # (H, W, 3) uint8
        if self.crop_hw is not None:
            arr = _center_crop_hwc(arr, *self.crop_hw, self.crop_offset)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    # -- per batch (model device) --------------------------------------------------------
    def normalize(self, pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (N, 3, H, W) on any device -> float pixel values as the processor gives them."""
        # one affine map per channel, x * scale + shift, computed in place: (x * rescale - mean)
        # / std in 2 passes over the batch instead of 4 (memory bound: 3x faster on CPU); equal
        # to the processor's float32 arithmetic within ~1e-6
        x = pixels.to(torch.float32)
        r = 1.0 if self.rescale is None else float(self.rescale)
        if self.mean is not None and self.std is not None:
            scale = [r / s for s in self.std]
            shift = [-m / s for m, s in zip(self.mean, self.std)]
            x.mul_(torch.tensor(scale, dtype=torch.float32, device=x.device).view(1, -1, 1, 1))
            x.add_(torch.tensor(shift, dtype=torch.float32, device=x.device).view(1, -1, 1, 1))
        elif self.rescale is not None:
            x.mul_(r)
        return x.to(dtype)

    def resize_crop_tensor(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) on any device (e.g. decoded on the GPU) -> resized, center-cropped
        uint8 (3, h, w): :meth:`to_uint8` with torch's antialiased kernels, which are close to
        PIL's but not bit-equal: PIL rounds and clips between its two passes, torch does not
        (bicubic, measured: mean 0.05-0.3 and 99th percentile 1-3 levels of 255 apart; single
        pixels of upscaled noise up to ~20)."""
        _, h, w = img.shape
        nh, nw = self.resized_hw(h, w)
        if (nh, nw) != (h, w):
            mode = _TORCH_MODES.get(self.resample, "bicubic")
            kw = {} if mode == "nearest" else {"antialias": True, "align_corners": False}
            x = torch.nn.functional.interpolate(img[None].float(), size=(nh, nw), mode=mode, **kw)
            img = x.round_().clamp_(0, 255).to(torch.uint8)[0]
        if self.crop_hw is not None:
            img = _center_crop_chw(img, *self.crop_hw, self.crop_offset)
        return img

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Float pixel values (N, 3, H, W) of PIL images, like ``processor(images)``."""
        u8 = torch.from_numpy(np.stack([self.to_uint8(im) for im in images]))
        return self.normalize(u8)


def _crop_offset(size: int, crop: int, mode: str) -> int:
    return int(round((size - crop) / 2.0)) if mode == "round" else (size - crop) // 2


def _center_crop_hwc(arr: np.ndarray, ch: int, cw: int, offset: str = "floor") -> np.ndarray:
    """transformers.image_transforms.center_crop on (H, W, C), zero-padding small images
    (``offset="round"``: torchvision's CenterCrop offsets)."""
    h, w = arr.shape[:2]
    top, left = _crop_offset(h, ch, offset), _crop_offset(w, cw, offset)
    if top >= 0 and left >= 0 and top + ch <= h and left + cw <= w:
        return arr[top:top + ch, left:left + cw]
    nh, nw = max(ch, h), max(cw, w)
    out = np.zeros((nh, nw, arr.shape[2]), dtype=arr.dtype)
    tp, lp = -(-(nh - h) // 2), -(-(nw - w) // 2)  # ceil, as transformers
    out[tp:tp + h, lp:lp + w] = arr
    top, left = top + tp, left + lp
    return out[top:top + ch, left:left + cw]


_TORCH_MODES = {int(Image.Resampling.BICUBIC): "bicubic", int(Image.Resampling.BILINEAR): "bilinear",
                int(Image.Resampling.NEAREST): "nearest"}


def _center_crop_chw(img: torch.Tensor, ch: int, cw: int, offset: str = "floor") -> torch.Tensor:
    """:func:`_center_crop_hwc` for a (C, H, W) tensor."""
    _, h, w = img.shape
    nh, nw = max(ch, h), max(cw, w)
    if (nh, nw) != (h, w):
        tp, lp = -(-(nh - h) // 2), -(-(nw - w) // 2)
        img = torch.nn.functional.pad(img, (lp, nw - w - lp, tp, nh - h - tp))
    top, left = _crop_offset(nh, ch, offset), _crop_offset(nw, cw, offset)
    return img[:, top:top + ch, left:left + cw]


def processor_pixels(image_processor: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """The reference: the checkpoint processor's float32 pixel values (N, 3, H, W)."""
    return image_processor(images=list(images), return_tensors="pt")["pixel_values"]


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def compare_draft(spec: ClipPreprocess, encoded: Sequence[bytes]) -> dict[str, float]:
    """How JPEG draft decoding changes the preprocessed pixels of ``encoded`` images.

    Returns the mean and 99th-percentile absolute difference in 8-bit levels over all
    pixels, the max, and ``reduced``: how many images draft mode actually decoded smaller
    (it is a no-op for non-JPEGs and images less than twice the target size).
    """
    from ..data.images import ImageError, decode_image

    diffs, reduced = [], 0
    size = spec.draft_size()
    for data in encoded:
        try:  # the dataset's own decoder: same formats, same protections, same RGB conversion
            full = decode_image(data, "sample")
            draft = decode_image(data, "sample", draft=size)
        except ImageError:  # a broken file: reported by the real decode later
            continue
        if draft.size != full.size:
            reduced += 1
        a = spec.to_uint8(full).astype(np.int16)
        b = spec.to_uint8(draft).astype(np.int16)
        diffs.append(np.abs(a - b).ravel())
    d = np.concatenate(diffs) if diffs else np.zeros(1, np.int16)
    return {"n": len(diffs), "reduced": reduced, "mean_levels": float(d.mean()),
            "p99_levels": float(np.percentile(d, 99)), "max_levels": float(d.max())}


def draft_within_tolerance(stats: dict[str, float]) -> bool:
    return (stats["reduced"] > 0 and stats["mean_levels"] <= DRAFT_TOLERANCE_MEAN_LEVELS
            and stats["p99_levels"] <= DRAFT_TOLERANCE_P99_LEVELS)
