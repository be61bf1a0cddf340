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

from clipfair.run.toy import default_corpus

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


def _words() -> list[str]:
    import re

    return sorted({w for t in default_corpus() for w in re.findall(r"\w+|[^\w\s]", t.lower())})


def make_tiny_align(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """ALIGN: BERT tokenizer ([CLS] pooling), EfficientNet image tower, scale 1/temperature."""
    from transformers import (AlignConfig, AlignModel, AlignProcessor, BertTokenizer,
                              EfficientNetImageProcessorPil)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_words()]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=CONTEXT)
    config = AlignConfig(
        text_config={**TOWER, "vocab_size": len(vocab), "max_position_embeddings": CONTEXT},
        vision_config={"image_size": image_size, "width_coefficient": 0.1, "depth_coefficient": 0.1,
                       "hidden_dim": 64},
        projection_dim=32)
    def build():
        m = AlignModel(config).eval()
        with torch.no_grad():  # ALIGN's tiny-init activations vanish (~1e-30); He init keeps them O(1)
            for mod in m.vision_model.modules():
                if isinstance(mod, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(mod.weight)
            m.temperature.fill_(0.05)  # logit scale 20
        return m

    model = _seeded(build, seed)
    model.save_pretrained(folder, safe_serialization=True)
    ip = EfficientNetImageProcessorPil(size={"height": image_size, "width": image_size},
                                       crop_size={"height": image_size, "width": image_size},
                                       rescale_factor=1 / 127.5, rescale_offset=True, do_normalize=False,
                                       include_top=False)
    AlignProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    ip.save_pretrained(folder)
    return folder


def make_tiny_altclip(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """AltCLIP: XLM-R (SentencePiece unigram) tokenizer, [CLS] pooling, CLIP vision tower."""
    import sentencepiece as spm
    from transformers import AltCLIPConfig, AltCLIPModel, AltCLIPProcessor, XLMRobertaTokenizer

    from clipfair.models.toy import clip_image_processor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(default_corpus()), model_writer=buf, vocab_size=200, model_type="unigram",
        hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())
              if not (sp.is_control(i) or sp.is_unknown(i))]
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces, ("<mask>", 0.0)]
    tok = XLMRobertaTokenizer(vocab=vocab, model_max_length=CONTEXT)
    config = AltCLIPConfig(
        text_config={**TOWER, "vocab_size": len(vocab), "max_position_embeddings": CONTEXT + 2,
                     "project_dim": 16},
        vision_config={**TOWER, "image_size": image_size, "patch_size": 8}, projection_dim=16)
    model = _seeded(lambda: AltCLIPModel(config).eval(), seed)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(20.0))
    model.save_pretrained(folder, safe_serialization=True)
    ip = clip_image_processor(image_size)
    AltCLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    ip.save_pretrained(folder)
    return folder
