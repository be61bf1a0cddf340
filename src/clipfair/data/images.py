"""Decoding image bytes into RGB PIL images, with errors that name the file.

Layer: data.

Decoding applies the EXIF orientation (a phone photo stored sideways with orientation 6 is
turned upright, as every image viewer shows it), in every decode path.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: default largest image file read (dataset.max_image_bytes), checked before reading
DEFAULT_MAX_IMAGE_BYTES = 50_000_000
_ORIENTATION = 0x0112  # the EXIF orientation tag


class ImageError(ValueError):
    """An image that is missing, empty, truncated, corrupt or not an image."""

    def __init__(self, where: str, reason: str, hint: str = "") -> None:
        self.where = where
        self.reason = reason
        msg = f"{where}: {reason}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


_HINT = "fix or remove the file, or set dataset.on_error=skip to skip bad images (skips are counted in run.json)"

#: formats never opened: EPS is rendered by an external program (Ghostscript)
_REFUSED_FORMATS = frozenset({"EPS"})


def _formats() -> list[str]:
    """Every format PIL can open except those in _REFUSED_FORMATS."""
    Image.init()
    return [f for f in Image.OPEN if f not in _REFUSED_FORMATS]


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, PA, RGBA, CMYK, I;16, I, F, 1) to 8-bit RGB.

    Transparency is composited onto white; 16-bit and 32-bit images are scaled to 8 bits
    by their full range (not clipped), so a 16-bit photo keeps its contrast.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("P", "PA") or (img.mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        hi = float(arr.max()) if arr.size else 1.0
        if img.mode.startswith("I;16"):
            scale = 65535.0
        elif img.mode == "F" and hi <= 1.0:
            scale = 1.0  # float images in [0, 1]
        else:
            scale = 65535.0 if hi > 255 else 255.0
        arr8 = np.clip(np.round(arr / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    return img.convert("RGB")


def read_image_file(path: Path | str, max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """The bytes of an image file; a file larger than ``max_bytes`` (None: no limit) is an
    ImageError found from its size, before anything is read. OSErrors pass through."""
    p = Path(path)

    def too_large(size: int) -> ImageError:
        return ImageError(str(p), f"file is {size:,} bytes, larger than the {max_bytes:,}-byte limit",
                          "set dataset.max_image_bytes higher if the image is real, or dataset.on_error=skip")

    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if max_bytes is not None and size > max_bytes:
            raise too_large(size)
        data = f.read(size + 1) if size else b""  # one allocation of the file's size
        if len(data) > size or not size:  # grew since stat, or a special file without a size
            while max_bytes is None or len(data) <= max_bytes:
                block = f.read(1 << 20)
                if not block:
                    break
                data += block
    if max_bytes is not None and len(data) > max_bytes:
        raise too_large(len(data))
    return data


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 = upright, 2-8 = flipped / rotated) of an opened image."""
    try:
        o = img.getexif().get(_ORIENTATION, 1)
        return int(o) if isinstance(o, int) and 1 <= o <= 8 else 1
    except Exception:  # noqa: BLE001 - damaged EXIF: treat as upright
        return 1


def has_exif_rotation(data: bytes) -> bool:
    """Whether encoded bytes carry an EXIF orientation other than upright (reads the header only)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return exif_orientation(img) != 1
    except Exception:  # noqa: BLE001 - undecodable bytes: the decoder reports them
        return False


def decode_image(data: bytes, where: str, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode encoded image bytes into an RGB image; raise ImageError naming ``where``.

    ``draft=(w, h)``: let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale, as small as
    possible with both sides still >= (w, h) (faster; pixels differ slightly from a full
    decode followed by a resize). No effect on other formats.
    """
    if data is None or len(data) == 0:
        raise ImageError(where, "the file is empty (0 bytes)", _HINT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_formats())
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft)
            img.load()  # forces a full decode: truncated files fail here
            if exif_orientation(img) != 1:
                img = ImageOps.exif_transpose(img)
    except UnidentifiedImageError:
        raise ImageError(where, "not an image file PIL can read", _HINT) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(where, f"image too large to decode safely ({e})", _HINT) from None
    except Exception as e:  # noqa: BLE001 - untrusted bytes: decoders raise OSError, SyntaxError,
        # ValueError, EOFError, struct.error, IndexError, ...; all mean a broken file
        raise ImageError(where, f"truncated or corrupt image ({type(e).__name__}: {e})",
                         _HINT) from None
    if img.width == 0 or img.height == 0:
        raise ImageError(where, "image has zero width or height", _HINT)
    try:
        return to_rgb(img)
    except Exception as e:  # noqa: BLE001 - an exotic mode PIL cannot convert
        raise ImageError(where, f"corrupt image or unsupported image mode {img.mode!r} "
                         f"({type(e).__name__}: {e})", _HINT) from None
