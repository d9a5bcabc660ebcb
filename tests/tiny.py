"""Tiny models and data for fast training tests: 32 px images, a 3-layer width-32 SigLIP, and a
DualToken model on it with 2-deep residual codebooks of 32 codes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dualtoken.config import TokenizerConfig
from dualtoken.data.curated import CuratedSplit, to_model_input
from dualtoken.data.synthetic import generate_example
from dualtoken.data.tarstream import TarWriter
from dualtoken.models.configuration import DualTokenConfig
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.models.teacher import new_teacher, scratch_config

SIZE = 32
VISION = {"image_size": SIZE, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
          "num_attention_heads": 2, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
          "vision_use_head": True}
TOKENIZER = {"layer_pixel": 1, "layer_shortcut": None, "layer_semantic": 2, "projection_heads": 2,
             "pixel_codebook_size": 32, "pixel_code_dim": 8, "pixel_depth": 2,
             "semantic_codebook_size": 32, "semantic_code_dim": 8, "semantic_depth": 2,
             "decoder_channels": 8, "decoder_channel_mult": [1, 1, 2], "decoder_res_blocks": 1, "latent_size": 8}
# Two short MLLM phases: understanding, then the generation heads.
PHASES = [{"name": "understand", "steps": 3, "lr": 3e-3, "train": ["projector", "llm"],
           "tasks": {"caption": 1, "vqa": 1}},
          {"name": "generate", "steps": 2, "lr": 3e-3, "train": ["heads"], "tasks": {"t2i": 1}}]


def tiny_split(n: int, seed: int = 0) -> CuratedSplit:
    images, metas = [], []
    for i in range(n):
        ex = generate_example(seed, i, SIZE)
        images.append(np.asarray(Image.open(io.BytesIO(ex.png)).convert("RGB")))
        metas.append({"captions": ex.captions, "attributes": ex.attributes, "qa": ex.qa})
    return CuratedSplit(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), metas)


def tiny_teacher(vocab_size: int = 300, pad_token_id: int = 0) -> Any:
    torch.manual_seed(0)
    return new_teacher(scratch_config(VISION, vocab_size, 16, 32, 64, 2, 2, pad_token_id), batch_size=8)


def tiny_tokenizer_config() -> DualTokenConfig:
    return DualTokenConfig(vision_config=VISION, **TOKENIZER)


def tokenizer_cfg(work: Path, **overrides: Any) -> TokenizerConfig:
    base: dict[str, Any] = {"steps": 6, "batch_size": 8, "work_dir": str(work), "image_log_every": 1000,
                            "optim": {"lr": 1e-3, "warmup_steps": 1},
                            "losses": {"gan_start_step": 2, "discriminator_channels": 8, "discriminator_layers": 2},
                            "runtime": {"log_every": 1, "checkpoint_every": 3, "device": "cpu"}}
    for key, value in overrides.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return TokenizerConfig.model_validate(base)


def write_curated_corpus(root: Path, shard_sizes: dict[str, list[int]], seed: int = 0) -> Path:
    """A corpus in the curate stage's layout: png + txt + json per key, shards.json, manifest.parquet."""
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    rows, index, i = [], {"splits": {}, "counts": {}}, 0
    for split, sizes in shard_sizes.items():
        names = [f"{split}-{s:06d}.tar" for s in range(len(sizes))]
        for name, n in zip(names, sizes, strict=True):
            with TarWriter(root / name) as writer:
                for _ in range(n):
                    ex = generate_example(seed, i, SIZE)
                    meta = {"key": ex.key, "split": split, "captions": ex.captions, "qa": ex.qa,
                            "attributes": ex.attributes}
                    writer.add_sample(ex.key, {"png": ex.png, "txt": ex.captions[0].encode(),
                                               "json": json.dumps(meta).encode()})
                    rows.append({"key": ex.key, "split": split, "shard": name})
                    i += 1
        index["splits"][split], index["counts"][split] = names, sum(sizes)
    (root / "shards.json").write_text(json.dumps(index))
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


def saved_tiny_tokenizer(path: Path, images: torch.Tensor) -> DualTokenModel:
    """A tiny DualToken model whose codebooks were initialised from ``images``, saved to ``path``."""
    torch.manual_seed(0)
    model = DualTokenModel(tiny_tokenizer_config())
    with torch.no_grad():
        model.train()(to_model_input(images))
    model.eval().save_pretrained(path)
    return model


def tiny_token_split(n: int, seed: int = 0, grid: int = 2, depth: int = 2, codebook: int = 32) -> Any:
    """A token split with random codes (grid x grid x depth, both streams) and the demo's texts."""
    from dualtoken.data.tokens import TokenSplit

    gen = torch.Generator().manual_seed(seed)
    metas = []
    for i in range(n):
        ex = generate_example(seed, i, SIZE)
        metas.append({"key": ex.key, "captions": ex.captions, "qa": ex.qa, "attributes": ex.attributes})
    codes = [torch.randint(codebook, (n, grid, grid, depth), generator=gen) for _ in range(2)]
    return TokenSplit([m["key"] for m in metas], codes[0], codes[1], metas)


def tiny_text_tokenizer(split: Any) -> Any:
    from dualtoken.apps.mllm import corpus_texts
    from dualtoken.models.mllm import SPECIAL_TOKENS
    from dualtoken.text import train_bpe

    return train_bpe(corpus_texts(split), 300, extra_special_tokens=SPECIAL_TOKENS)


def tiny_mllm(tokenizer: Any, grid: int = 2, depth: int = 2, codebook: int = 32, seed: int = 0) -> Any:
    """A 2-layer width-32 Qwen2 with depth heads of width 16 for codes laid out like ``tiny_token_split``."""
    from dualtoken.models.mllm import SPECIAL_TOKENS, STREAMS, DualTokenMLLM, DualTokenMLLMConfig

    torch.manual_seed(seed)
    llm = {"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": len(tokenizer),
           "max_position_embeddings": 128, "tie_word_embeddings": True}
    codes = {"grid": [grid, grid], **{s: {"depth": depth, "codebook_size": codebook, "dim": 8, "books": 1}
                                      for s in STREAMS}}
    config = DualTokenMLLMConfig(llm_config=llm, codes=codes, projector_hidden=32, head_width=16, head_layers=1,
                                 head_heads=2, special_token_ids={t: tokenizer.convert_tokens_to_ids(t)
                                                                  for t in SPECIAL_TOKENS})
    return DualTokenMLLM(config)
