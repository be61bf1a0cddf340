"""A hand-built 'CLIP' whose answers are known by construction.

Image embedding = the mean (R, G, B) of the image in [0, 1]; a text embedding is the sum of
one-hot vectors of the colour words it contains ("red" -> e0, "green" -> e1, "blue" -> e2).
So a pure red image is predicted "red", and so on; its logit scale is exp(log_scale).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from clipfair.models import ClipModel

WORDS = {"red": 0, "green": 1, "blue": 2}


class HandTokenizer:
    def __call__(self, texts, padding=False, return_tensors=None, truncation=False):
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        ids = [[1] + [3 + WORDS.get(w.strip(".,!").lower(), -1) for w in t.split()] + [2] for t in batch]
        if single and return_tensors is None:
            return {"input_ids": ids[0]}
        width = max(len(i) for i in ids)
        arr = torch.zeros(len(ids), width, dtype=torch.long)
        for r, i in enumerate(ids):
            arr[r, :len(i)] = torch.tensor(i)
        return {"input_ids": arr, "attention_mask": (arr != 0).long()}


class HandImageProcessor:
    def __call__(self, images, return_tensors="pt"):
        arrs = [np.asarray(im.convert("RGB").resize((4, 4)), dtype=np.float32) / 255.0 for im in images]
        return {"pixel_values": torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)}

    def to_dict(self):
        return {"kind": "hand", "size": 4}


class HandModel(torch.nn.Module):
    def __init__(self, scale: float = 7.0, context: int = 12) -> None:
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(scale)))
        self.config = SimpleNamespace(projection_dim=3,
                                      text_config=SimpleNamespace(max_position_embeddings=context))
        self.image_calls = 0
        self.text_calls = 0

    def get_image_features(self, pixel_values):
        self.image_calls += pixel_values.shape[0]
        return pixel_values.float().mean(dim=(2, 3))

    def get_text_features(self, input_ids, attention_mask=None):
        self.text_calls += input_ids.shape[0]
        out = torch.zeros(input_ids.shape[0], 3)
        for r in range(input_ids.shape[0]):
            for t in input_ids[r].tolist():
                if 3 <= t < 6:
                    out[r, t - 3] += 1.0
        return out


def hand_clip(scale: float = 7.0, context: int = 12) -> ClipModel:
    model = HandModel(scale, context)
    proc = SimpleNamespace(tokenizer=HandTokenizer(), image_processor=HandImageProcessor())
    return ClipModel(model=model, processor=proc, name_or_path="hand", device=torch.device("cpu"),
                     dtype=torch.float32, logit_scale=scale, batch_size=4, fingerprint=f"hand-{scale}")


def colour_image(rgb: tuple[int, int, int], size: int = 8) -> Image.Image:
    return Image.new("RGB", (size, size), rgb)
