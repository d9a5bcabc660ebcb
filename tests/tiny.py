"""Tiny models and data for fast training tests: 32 px images, a 3-layer width-32 SigLIP, a DualToken model on
it with 2-deep residual codebooks of 32 codes, and small corpora on disk in the stages' layouts (curated and
token shards with their indexes) for the streaming trainers."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dualtoken.data.curated import CuratedSplit, to_model_input
from dualtoken.data.synthetic import generate_example
from dualtoken.data.tarstream import TarWriter
from dualtoken.models.configuration import DualTokenConfig
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.models.teacher import new_teacher, scratch_config
from dualtoken.training.tokenizer_config import TokenizerConfig

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
                            "losses": {"gan_start_step": 2, "discriminator_channels": 8, "discriminator_layers": 2,
                                       "perceptual_kind": "teacher"},  # no LPIPS weights ship
                            "runtime": {"log_every": 1, "checkpoint_every": 3, "device": "cpu", "loader_workers": 0}}
    for key, value in overrides.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return TokenizerConfig.model_validate(base)


def _examples(seed: int, size: int, distinct: int | None) -> Any:
    """Demo scenes by index; with ``distinct``, only that many are rendered and then repeated (large corpora
    for benchmarks, where what matters is the count, not the variety)."""
    import functools

    render = functools.lru_cache(maxsize=distinct or 1)(lambda j: generate_example(seed, j, size))
    return (lambda i: render(i % distinct)) if distinct else (lambda i: generate_example(seed, i, size))


def write_curated_corpus(root: Path, shard_sizes: dict[str, list[int]], seed: int = 0, size: int = SIZE,
                         image: str = "png", distinct: int | None = None) -> Path:
    """A corpus in the curate stage's layout: png (or jpg) + txt + json per key, each shard with its offset
    index, shards.json with per-shard counts, manifest.parquet."""
    import pandas as pd

    example = _examples(seed, size, distinct)
    root.mkdir(parents=True, exist_ok=True)
    rows, index, i = [], {"splits": {}, "counts": {}, "shards": {}}, 0
    for split, sizes in shard_sizes.items():
        names = [f"{split}-{s:06d}.tar" for s in range(len(sizes))]
        for name, n in zip(names, sizes, strict=True):
            with TarWriter(root / name, index=True) as writer:
                for _ in range(n):
                    ex, key = example(i), f"{i:08d}"
                    meta = {"key": key, "split": split, "captions": ex.captions, "qa": ex.qa,
                            "attributes": ex.attributes}
                    data = ex.png if image == "png" else _jpeg(ex.png)
                    writer.add_sample(key, {image: data, "txt": ex.captions[0].encode(),
                                            "json": json.dumps(meta).encode()})
                    rows.append({"key": key, "split": split, "shard": name})
                    i += 1
            index["shards"][name] = {"samples": n, "sha256": writer.sha256}
        index["splits"][split], index["counts"][split] = names, sum(sizes)
    (root / "shards.json").write_text(json.dumps(index))
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


def _jpeg(png: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_token_corpus(root: Path, shard_sizes: dict[str, list[int]], seed: int = 0, grid: int = 2, depth: int = 2,
                       codebook: int = 32, qa_every: int = 1, distinct: int | None = None) -> Path:
    """A token corpus in the tokenize stage's layout with random codes and the demo's texts (every
    ``qa_every``-th sample keeps its questions), offset indexes and shards.json with text statistics."""
    from dualtoken.data.texts import TextStats
    from dualtoken.data.tokens import FORMAT, CodeSpec, TokenLayout, sample_parts

    layout = TokenLayout((grid, grid), CodeSpec(depth, codebook), CodeSpec(depth, codebook))
    gen, example = np.random.default_rng(seed), _examples(seed, SIZE, distinct)
    root.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"format": FORMAT, "layout": layout.to_dict(), "splits": {}, "counts": {}, "shards": {},
                             "texts": {}}
    i = 0
    for split, sizes in shard_sizes.items():
        names, stats = [f"{split}-{s:06d}.tar" for s in range(len(sizes))], TextStats()
        for name, n in zip(names, sizes, strict=True):
            with TarWriter(root / name, index=True) as writer:
                for _ in range(n):
                    ex, key = example(i), f"{i:08d}"
                    meta = {"key": key, "captions": ex.captions, "qa": ex.qa if i % qa_every == 0 else [],
                            "attributes": ex.attributes}
                    codes = [gen.integers(0, codebook, (grid, grid, depth)).astype(layout.pixel.dtype)
                             for _ in range(2)]
                    writer.add_sample(key, sample_parts(codes[0], codes[1], {
                        "txt": ex.captions[0].encode(), "json": json.dumps(meta).encode()}))
                    stats.add(meta)
                    i += 1
            index["shards"][name] = {"samples": n, "sha256": writer.sha256}
        index["splits"][split], index["counts"][split] = names, sum(sizes)
        index["texts"][split] = stats.to_dict()
    (root / "shards.json").write_text(json.dumps(index))
    return root


def saved_tiny_tokenizer(path: Path, images: torch.Tensor) -> DualTokenModel:
    """A tiny DualToken model whose codebooks were initialised from ``images``, saved to ``path``."""
    torch.manual_seed(0)
    model = DualTokenModel(tiny_tokenizer_config())
    with torch.no_grad():
        model.train()(to_model_input(images))
    model.eval().save_pretrained(path)
    return model


def tiny_text_tokenizer(root: Path) -> Any:
    """A BPE on the texts of a token corpus' train split."""
    from dualtoken.data.curated import iter_metas
    from dualtoken.data.sequences import SPECIAL_TOKENS
    from dualtoken.data.shards import shard_urls
    from dualtoken.data.texts import corpus_texts
    from dualtoken.text import train_bpe

    return train_bpe(corpus_texts(iter_metas(shard_urls(root, "train"))), 300, extra_special_tokens=SPECIAL_TOKENS)


def tiny_mllm(tokenizer: Any, grid: int = 2, depth: int = 2, codebook: int = 32, seed: int = 0) -> Any:
    """A 2-layer width-32 Qwen2 with depth heads of width 16 for codes laid out like ``write_token_corpus``'s."""
    from dualtoken.data.sequences import SPECIAL_TOKENS
    from dualtoken.data.tokens import STREAMS
    from dualtoken.models.mllm import DualTokenMLLM, DualTokenMLLMConfig

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


def tiny_token_columns(root: Path, tokenizer: Any, max_text_tokens: int = 16, vqa_turns: int = 1) -> dict[str, Any]:
    """Every train sample of a token corpus decoded as the MLLM loader's workers decode them (draw = index)."""
    from dualtoken.data.pieces import RawSample
    from dualtoken.data.sequences import TokenSampleDecoder
    from dualtoken.data.shards import shard_urls
    from dualtoken.data.tarstream import iter_shard_samples
    from dualtoken.data.tokens import read_layout

    raw = []
    for url in shard_urls(root, "train"):
        with open(url, "rb") as handle:
            raw += [RawSample(key, parts, f"{url}: {key}", len(raw) + i)
                    for i, (key, parts) in enumerate(iter_shard_samples(handle, url))]
    return TokenSampleDecoder(read_layout(root), tokenizer, max_text_tokens, vqa_turns)(raw)


def tiny_mllm_batches(columns: dict[str, Any], tokenizer: Any, weights: dict[str, float], size: int, steps: int,
                      positions: int) -> list[Any]:
    """``steps`` training batches of ``size`` sequences in the mixture ``weights``, cycling through decoded
    samples (``tiny_token_columns``) as the streams would: for benchmarks of a training step."""
    from dualtoken.data.sequences import SequenceBuilder, task_counts

    builder, rows, out = SequenceBuilder(tokenizer, positions), len(columns["key"]), []
    for step in range(steps):
        sequences, i = [], step * size
        for task, n in task_counts(weights, size).items():
            for _ in range(n):
                while task == "vqa" and not columns["has_qa"][i % rows]:
                    i += 1
                sequences.append(builder.build(task, columns, i % rows, prompt_dropout=0.1))
                i += 1
        out.append(builder.collate(sequences))
    return out
