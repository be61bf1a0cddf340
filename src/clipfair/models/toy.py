"""Tiny CLIP checkpoints built fully offline (tokenizer, config, random init)
and their contrastive training loop. The transformers side of :mod:`clipfair.run.toy`.

Layer: models.

Nothing here downloads anything. :func:`make_tiny_clip` writes a directory that loads
with ``transformers.AutoModel.from_pretrained`` / ``AutoProcessor.from_pretrained``
exactly like ``openai/clip-vit-large-patch14`` does, but with a tokenizer whose BPE
merges were learned from a given corpus and a randomly initialised (seeded) model.
:func:`train_contrastive` trains such a model on given images and a caption sampler.

What the toy world is (its captions, its corpus, its planted biases, the FairFace-layout
training data) lives in :mod:`clipfair.run.toy`; this module knows none of it.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .hf import features

# ---------------------------------------------------------------------------------------
# tokenizer: CLIP-format byte-level BPE learned from a small corpus
# ---------------------------------------------------------------------------------------

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# CLIP's pre-tokenisation pattern (case-insensitive), as in openai/CLIP and transformers
_PAT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _pretokenize(text: str) -> list[str]:
    import regex

    text = " ".join(text.split()).lower()  # CLIP: whitespace clean-up + lowercase
    return regex.findall(_PAT, text, regex.IGNORECASE)


def learn_bpe(words: Mapping[str, int], n_merges: int | None = None) -> list[tuple[str, str]]:
    """Standard BPE training over word frequencies (CLIP symbols: byte chars, '</w>'
    glued to each word's last symbol). Stops after ``n_merges`` merges or when every
    word is a single symbol. Ties break on the lexicographically smallest pair."""
    enc = bytes_to_unicode()
    seqs: dict[tuple[str, ...], int] = Counter()
    for w, f in words.items():
        chars = [enc[b] for b in w.encode("utf-8")]
        if not chars:
            continue
        chars[-1] += "</w>"
        seqs[tuple(chars)] += f
    merges: list[tuple[str, str]] = []
    while n_merges is None or len(merges) < n_merges:
        pairs: Counter = Counter()
        for s, f in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += f
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        new: dict[tuple[str, ...], int] = Counter()
        for s, f in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == best[0] and s[i + 1] == best[1]:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            new[tuple(out)] += f
        seqs = new
    return merges


def build_tokenizer(
    save_dir: str | Path,
    corpus: Sequence[str],
    n_merges: int | None = None,
    model_max_length: int = 77,
):
    """Learn a CLIP-format BPE tokenizer from ``corpus`` and save it to ``save_dir``.

    Writes ``vocab.json`` (256 byte chars, the same with ``</w>``, one token per merge,
    then ``<|startoftext|>``, ``<|endoftext|>`` -- CLIP's order, so the EOS id is the
    largest) and ``merges.txt`` (``#version: 0.2`` header), then the tokenizer's own
    ``save_pretrained`` files. With ``n_merges=None`` merging continues until every
    (lowercased, CLIP-pre-tokenised) corpus word is one token; any other text still
    tokenises at byte level. Returns ``transformers.CLIPTokenizer`` loaded from the dir.
    """
    from transformers import CLIPTokenizer

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    corpus = list(corpus)
    words = Counter(w for text in corpus for w in _pretokenize(text) if w not in (BOS_TOKEN, EOS_TOKEN))
    merges = learn_bpe(words, n_merges)
    base = list(bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    (save_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (save_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    if _tokenizer_takes_files():  # transformers 4.x slow tokenizer: file paths
        tok = CLIPTokenizer(vocab_file=str(save_dir / "vocab.json"), merges_file=str(save_dir / "merges.txt"),
                            model_max_length=model_max_length)
    else:  # transformers 5.x: vocab dict + merges list
        tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    tok.save_pretrained(save_dir)
    # save_pretrained may rewrite them; keep the canonical CLIP-format files
    (save_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (save_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    return CLIPTokenizer.from_pretrained(save_dir)


def _tokenizer_takes_files() -> bool:
    import inspect

    from transformers import CLIPTokenizer

    return "vocab_file" in inspect.signature(CLIPTokenizer.__init__).parameters


# ---------------------------------------------------------------------------------------
# model configs
# ---------------------------------------------------------------------------------------

#: named architectures as ``transformers.CLIPConfig`` kwargs. "tiny" is the toy; the
#: others are the real OpenAI shapes, for benchmarks with RANDOM weights (never
#: downloaded). ``vocab_size`` is replaced by the tokenizer's in :func:`make_tiny_clip`.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": {
        "projection_dim": 32,
        "text_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                        "num_attention_heads": 2, "max_position_embeddings": 32},
        "vision_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
    },
    "ViT-B/32": {
        "projection_dim": 512,
        "text_config": {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
                        "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77},
        "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "image_size": 224, "patch_size": 32},
    },
    "ViT-B/16": {
        "projection_dim": 512,
        "text_config": {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
                        "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77},
        "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
    },
    "ViT-L/14": {
        "projection_dim": 768,
        "text_config": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
                        "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77},
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
    },
}


def _clip_config(kwargs: Mapping[str, Any]):
    from transformers import CLIPConfig

    kw = copy.deepcopy(dict(kwargs))
    proj = kw.get("projection_dim")
    if proj is not None:  # sub-configs carry it too (CLIPTextModelWithProjection etc.)
        kw.setdefault("text_config", {}).setdefault("projection_dim", proj)
        kw.setdefault("vision_config", {}).setdefault("projection_dim", proj)
    return CLIPConfig(**kw)


def arch_config(arch: str, vocab_size: int | None = None, image_size: int | None = None,
                **overrides: Any):
    """``CLIPConfig`` for a named architecture of :data:`ARCHITECTURES`.

    ``overrides``: top-level CLIPConfig kwargs; ``text_config`` / ``vision_config``
    dicts are merged into the architecture's; ``bos_token_id`` / ``eos_token_id`` /
    ``pad_token_id`` go to the text config.
    """
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    kw = copy.deepcopy(ARCHITECTURES[arch])
    if vocab_size is not None:
        kw["text_config"]["vocab_size"] = int(vocab_size)
    if image_size is not None:
        kw["vision_config"]["image_size"] = int(image_size)
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if k in overrides:
            kw["text_config"][k] = overrides.pop(k)
    for sub in ("text_config", "vision_config"):
        kw[sub].update(overrides.pop(sub, None) or {})
    kw.update(overrides)
    return _clip_config(kw)


def tiny_clip_config(
    vocab_size: int,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    projection_dim: int = 32,
    max_position_embeddings: int = 32,
    **overrides: Any,
):
    """A tiny ``transformers.CLIPConfig`` (same width/depth for text and vision towers)."""
    tower = {"hidden_size": hidden, "intermediate_size": 4 * hidden, "num_hidden_layers": layers,
             "num_attention_heads": heads}
    text = {**tower, "max_position_embeddings": max_position_embeddings}
    vision = {**tower, "image_size": image_size, "patch_size": patch_size}
    text.update(overrides.pop("text_config", None) or {})
    vision.update(overrides.pop("vision_config", None) or {})
    return arch_config("tiny", vocab_size=vocab_size, image_size=image_size,
                       text_config=text, vision_config=vision, projection_dim=projection_dim,
                       **overrides)


# ---------------------------------------------------------------------------------------
# building a model directory
# ---------------------------------------------------------------------------------------


def clip_image_processor(image_size: int):
    """A CLIP image processor (PIL backend when available: no torchvision needed)."""
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(
        size={"shortest_edge": int(image_size)},
        crop_size={"height": int(image_size), "width": int(image_size)},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,  # bicubic, as CLIP
        do_resize=True,
        do_center_crop=True,
        do_normalize=True,
        do_convert_rgb=True,
    )


def make_tiny_clip(
    save_dir: str | Path,
    seed: int = 0,
    image_size: int | None = None,
    corpus: Sequence[str] = (),
    arch: str = "tiny",
) -> Path:
    """Build a randomly initialised (seeded) ``CLIPModel`` + ``CLIPProcessor`` offline and
    ``save_pretrained`` both (safetensors) into ``save_dir``; returns the path.

    ``image_size`` defaults to the architecture's (32 for "tiny", 224 for the real
    shapes). ``corpus``: the texts the tokenizer's merges are learned from
    (:func:`clipfair.run.toy.make_tiny_clip` passes the taxonomy prompts and toy captions). Loads with
    ``AutoModel.from_pretrained(save_dir)`` / ``AutoProcessor.from_pretrained(save_dir)``.
    """
    import torch
    from transformers import CLIPModel, CLIPProcessor

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    if image_size is None:
        image_size = ARCHITECTURES[arch]["vision_config"]["image_size"]
    ctx = ARCHITECTURES[arch]["text_config"]["max_position_embeddings"]
    tok = build_tokenizer(save_dir, corpus, model_max_length=ctx)
    config = arch_config(
        arch,
        vocab_size=len(tok),
        image_size=image_size,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(save_dir, safe_serialization=True)
    image_processor = clip_image_processor(image_size)
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(save_dir)
    # transformers 5 nests the image processor in processor_config.json; 4.x (and the
    # real openai/clip-* checkpoints) use preprocessor_config.json: write both
    image_processor.save_pretrained(save_dir)
    return save_dir


# ---------------------------------------------------------------------------------------
# contrastive training
# ---------------------------------------------------------------------------------------


def train_contrastive(
    model_dir: str | Path,
    images: Sequence[Any],
    attributes: Sequence[tuple],
    captions_fn: Callable[..., str],
    negative_captions: Sequence[str] = (),
    *,
    epochs: int = 40,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    warmup_steps: int = 50,
    flip: bool = True,
    num_threads: int | None = 2,
    log_every: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Contrastively train the CLIP in ``model_dir`` on ``images`` (PIL, RGB), then
    ``save_pretrained`` it back (safetensors). Each step draws one caption per image from
    ``captions_fn(*attributes[i], rng)`` (``rng``: a ``random.Random(seed)``);
    ``negative_captions`` are added to every batch as texts no image matches.

    Loss: symmetric InfoNCE with the model's learnable logit scale (clamped at 100 as in
    CLIP). Identical captions within a batch are merged into one text (so no image is
    pushed away from its own caption): image->text is cross-entropy over the batch's
    distinct captions, text->image spreads the target evenly over the images that carry
    the caption. AdamW with linear warm-up and cosine decay; images optionally flipped
    horizontally. Deterministic for a given seed, torch build and thread count.

    Returns ``{"losses": per-epoch mean loss, "steps", "seconds", "logit_scale"}``.
    """
    import torch

    prev_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        return _train(model_dir, images, attributes, captions_fn, negative_captions, epochs, seed, batch_size, lr,
                      weight_decay, warmup_steps, flip, log_every, log)
    finally:
        torch.set_num_threads(prev_threads)


def _train(model_dir, images, attrs, captions_fn, negative_captions, epochs, seed, batch_size, lr, weight_decay,
           warmup_steps, flip, log_every, log):
    import torch
    import torch.nn.functional as F
    from transformers import AutoProcessor, CLIPModel

    model_dir = Path(model_dir)
    t0 = time.perf_counter()
    negatives = sorted(set(negative_captions))
    processor = AutoProcessor.from_pretrained(model_dir)
    model = CLIPModel.from_pretrained(model_dir)
    images = list(images)
    pixels = torch.cat([processor(images=images[i:i + 512], return_tensors="pt")["pixel_values"]
                        for i in range(0, len(images), 512)])
    attrs = list(attrs)
    rng = random.Random(seed)

    tok = processor.tokenizer
    gen = torch.Generator().manual_seed(seed)  # the global torch RNG is not used (no dropout)
    n = len(images)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or name == "logit_scale" else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, foreach=True)
    def lr_factor(s: int) -> float:  # linear warm-up, then cosine decay to 0
        return min(1.0, (s + 1) / max(1, warmup_steps)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    losses: list[float] = []
    model.train()
    step = 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        ep_loss = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            if len(idx) < 2:
                continue
            px = pixels[idx]
            if flip:
                m = torch.rand(len(idx), generator=gen) < 0.5
                px = torch.where(m[:, None, None, None], px.flip(-1), px)
            caps = [captions_fn(*attrs[i], rng) for i in idx.tolist()]
            uniq = sorted(set(caps))
            pos = {c: j for j, c in enumerate(uniq)}
            target = torch.tensor([pos[c] for c in caps])
            enc = tok(uniq + [c for c in negatives if c not in pos], padding=True, return_tensors="pt")
            img = features(model.get_image_features(pixel_values=px))
            txt = features(model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            scale = model.logit_scale.exp().clamp(max=100.0)
            logits = scale * img @ txt.T  # (B, U + negatives)
            loss_i2t = F.cross_entropy(logits, target)
            onehot = F.one_hot(target, len(uniq)).T.float()  # (U, B)
            soft = onehot / onehot.sum(1, keepdim=True)
            loss_t2i = -(soft * logits[:, :len(uniq)].T.log_softmax(-1)).sum(1).mean()
            loss = 0.5 * (loss_i2t + loss_t2i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100.0))
            ep_loss += loss.item() / steps_per_epoch
            step += 1
        losses.append(ep_loss)
        if log_every and ((epoch + 1) % log_every == 0 or epoch == epochs - 1):
            log(f"epoch {epoch + 1:4d}/{epochs}  loss {ep_loss:.4f}  logit_scale {model.logit_scale.exp().item():.1f}"
                f"  {time.perf_counter() - t0:.0f}s")
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    return {"losses": losses, "steps": step, "seconds": time.perf_counter() - t0,
            "logit_scale": model.logit_scale.exp().item()}


__all__ = [
    "ARCHITECTURES",
    "bytes_to_unicode",
    "learn_bpe",
    "build_tokenizer",
    "arch_config",
    "tiny_clip_config",
    "clip_image_processor",
    "make_tiny_clip",
    "train_contrastive",
]
