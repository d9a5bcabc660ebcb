"""The SigLIP teacher: a pretrained checkpoint on local disk, or a tiny one trained from scratch.

The tokenizer's tower starts from the teacher's vision tower and a frozen copy of it is the distillation
target, so both share one ``SiglipVisionConfig``. The text tower is what makes zero-shot evaluation of
the quantized semantic path possible.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase, SiglipConfig, SiglipModel

from dualtoken.models.configuration import NAMED_CONFIGS
from dualtoken.models.conv_stem import stem_channels, with_conv_stem


def vision_config_of(architecture: str) -> dict[str, Any]:
    """The SigLIP vision config of a named tokenizer configuration."""
    if architecture not in NAMED_CONFIGS:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(NAMED_CONFIGS)}")
    return dict(NAMED_CONFIGS[architecture]["vision_config"])


def scratch_config(vision: dict[str, Any], vocab_size: int, max_length: int, hidden_size: int, intermediate_size: int,
                   layers: int, heads: int, pad_token_id: int) -> SiglipConfig:
    """A SigLIP config: the given vision tower + a small text tower projecting to its width."""
    text = {"vocab_size": vocab_size, "max_position_embeddings": max_length, "hidden_size": hidden_size,
            "intermediate_size": intermediate_size, "num_hidden_layers": layers, "num_attention_heads": heads,
            "projection_size": vision["hidden_size"], "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
            "pad_token_id": pad_token_id, "bos_token_id": None, "eos_token_id": None}
    return SiglipConfig(vision_config=vision, text_config=text)


def new_teacher(config: SiglipConfig, batch_size: int) -> SiglipModel:
    """SigLIP's sigmoid-loss initialisation: temperature 10, bias -log(batch size).

    The paper's bias of -10 is -log(32k), the prior odds of a positive pair in its batches; a small demo
    batch needs its own prior, or the bias (which Adam moves by about lr per step) starts far off.
    """
    model = SiglipModel(config)
    with_conv_stem(model.vision_model)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-math.log(batch_size))
    return model


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 over the weight and config files of a checkpoint folder (its identity for lineage)."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json", ".bin"))
    if not files:
        raise FileNotFoundError(f"{root} holds no checkpoint files (*.safetensors, *.json)")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_teacher(path: str | Path) -> tuple[SiglipModel, PreTrainedTokenizerBase]:
    """A SigLIP checkpoint and its tokenizer from a local folder; never reaches a model hub."""
    root = Path(path)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"teacher checkpoint {root} not found (no config.json): set teacher.pretrained to a "
                                "local SigLIP folder (save_pretrained layout), or null to train the demo teacher")
    config = SiglipConfig.from_pretrained(root, local_files_only=True)
    if stem_channels(config.vision_config) is None:
        model = SiglipModel.from_pretrained(root, local_files_only=True)
    else:  # transformers does not know the stem: build it, then load every weight strictly
        model = SiglipModel(config)
        with_conv_stem(model.vision_model)
        model.load_state_dict(load_file(root / "model.safetensors"), strict=True)
        model.eval()
    tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
    return model, tokenizer


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> torch.Tensor:
    """SigLIP text input: padded to ``max_length`` (the tower pools the last position), no attention mask."""
    out: dict[str, Any] = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                                    return_tensors="pt")
    return out["input_ids"]


def image_embedder(model: SiglipModel) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda pixels: model.get_image_features(pixel_values=pixels).pooler_output


def text_embedder(model: SiglipModel, tokenizer: PreTrainedTokenizerBase, max_length: int, device: torch.device,
                  batch_size: int = 512) -> Callable[[list[str]], torch.Tensor]:
    def embed(texts: list[str]) -> torch.Tensor:
        ids = tokenize(tokenizer, texts, max_length).to(device)
        return torch.cat([model.get_text_features(input_ids=ids[i : i + batch_size]).pooler_output
                          for i in range(0, len(ids), batch_size)])
    return embed
