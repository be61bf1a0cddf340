"""Decoding image bytes into RGB PIL images, with errors that name the file."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError


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
