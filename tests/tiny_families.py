"""Tiny random-weight SigLIP / SigLIP 2 / BERT / ViT checkpoints, built offline and saved with
``save_pretrained`` exactly like hub checkpoints, so tests load them through the user's path
(``load_model(name_or_path=folder)``).

* SigLIP: a SentencePiece (unigram) model trained here on the built-in prompts, wrapped in
  ``SiglipTokenizer`` (T5 ids: <pad> 0, </s> 1, <unk> 2; pad token </s>); ``SiglipConfig``.
* SigLIP 2 (NaFlex): ``Siglip2Tokenizer`` (Gemma-style BPE, lower-casing) over a character
  vocabulary; ``Siglip2Config`` with patch sequences.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from clipfair.toy import default_corpus

TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
CONTEXT = 32


def _seeded(build, seed: int):
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return build()
    finally:
        torch.random.set_rng_state(state)


def _scale_and_bias(model, scale: float = 10.0, bias: float = -2.5) -> None:
    with torch.no_grad():  # non-trivial values, so that a test notices if either is ignored
        model.logit_scale.fill_(math.log(scale))
        model.logit_bias.fill_(bias)


def make_tiny_siglip(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    import sentencepiece as spm
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor, SiglipTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(t.lower() for t in default_corpus()), model_writer=buf, vocab_size=200,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", hard_vocab_limit=False, minloglevel=2)
    sp_file = folder / "spiece.model"
    sp_file.write_bytes(buf.getvalue())
    # as on the hub (google/siglip-*): the tokenizer returns input_ids only, no attention mask
    tok = SiglipTokenizer(vocab_file=str(sp_file), model_max_length=CONTEXT, model_input_names=["input_ids"])
    config = SiglipConfig(
        text_config={**TOWER, "vocab_size": len(tok), "max_position_embeddings": CONTEXT, "pad_token_id": 1,
                     "eos_token_id": 1, "bos_token_id": 1},
        vision_config={**TOWER, "image_size": image_size, "patch_size": 8})
    model = _seeded(lambda: SiglipModel(config).eval(), seed)
    _scale_and_bias(model)
    model.save_pretrained(folder, safe_serialization=True)
    ip = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    SiglipProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    ip.save_pretrained(folder)
    return folder


def make_tiny_siglip2(folder: Path, seed: int = 0, patch_size: int = 16, max_num_patches: int = 256) -> Path:
    """patch_size and max_num_patches as on the hub (Siglip2Processor defaults to them)."""
    from transformers import (Siglip2Config, Siglip2ImageProcessorPil, Siglip2Model, Siglip2Processor,
                              Siglip2Tokenizer)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted({c for t in default_corpus() for c in t.lower().replace(" ", "▁")} | {"▁"})
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Siglip2Tokenizer(vocab=vocab, merges=[], model_max_length=64)
    context = 64  # characters are tokens here: room for the longest built-in prompt
    config = Siglip2Config(
        text_config={**TOWER, "vocab_size": len(vocab), "max_position_embeddings": context, "pad_token_id": 0,
                     "eos_token_id": 1, "bos_token_id": 2},
        vision_config={**TOWER, "num_patches": max_num_patches, "patch_size": patch_size})
    model = _seeded(lambda: Siglip2Model(config).eval(), seed)
    _scale_and_bias(model)
    model.save_pretrained(folder, safe_serialization=True)
    ip = Siglip2ImageProcessorPil(patch_size=patch_size, max_num_patches=max_num_patches)
    Siglip2Processor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    ip.save_pretrained(folder)
    return folder


def make_tiny_bert(folder: Path) -> Path:
    """A text-only checkpoint (BERT): not an image-text model."""
    from transformers import BertConfig, BertModel

    folder = Path(folder)
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder, safe_serialization=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]))
    return folder


def make_tiny_vit(folder: Path) -> Path:
    """An image-only checkpoint (ViT) with its image processor: not an image-text model."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = Path(folder)
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=32, patch_size=8)).save_pretrained(folder, safe_serialization=True)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
