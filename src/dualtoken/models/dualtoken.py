"""The DualToken unified visual tokenizer as a transformers ``PreTrainedModel``.

One SigLIP vision tower, two taps:
* pixel branch: hidden state after ``layer_pixel`` (+ ``weight_shortcut`` x the state after
  ``layer_shortcut``) -> down projection -> pixel residual quantizer -> up projection -> decoder;
* semantic branch: hidden state after ``layer_semantic`` -> down -> semantic residual quantizer -> up,
  which *replaces* the hidden state: the remaining layers, post-layernorm and pooling head run on it, so
  the pooled output stays in SigLIP's image-text space.

With ``single_codebook`` there is no pixel quantizer: the pixel codes *are* the semantic codes, decoded
through the pixel up projection (the paper's one-codebook baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, SiglipVisionModel

from dualtoken.models.configuration import DualTokenConfig
from dualtoken.models.conv_stem import with_conv_stem
from dualtoken.models.layers import PixelDecoder, token_projection
from dualtoken.models.quantizer import QuantizerOutput, ResidualQuantizer


@dataclass
class DualTokenCodes:
    pixel: Tensor  # (B, h, w, pixel_depth) int64
    semantic: Tensor  # (B, h, w, semantic_depth) int64


@dataclass
class DualTokenOutput:
    reconstruction: Tensor  # (B, 3, H, W), same normalisation as the input
    semantic_features: Tensor  # (B, N, width): quantized features at the semantic tap (after up projection)
    pooled: Tensor | None  # (B, width): pooling head output through the quantized semantic path
    last_hidden_state: Tensor  # (B, N, width): after the post-layernorm
    pixel: QuantizerOutput
    semantic: QuantizerOutput


class DualTokenPreTrainedModel(PreTrainedModel):
    config_class = DualTokenConfig
    base_model_prefix = "dualtoken"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True


class DualTokenModel(DualTokenPreTrainedModel):
    def __init__(self, config: DualTokenConfig) -> None:
        super().__init__(config)
        vision = config.vision_config
        width = vision.hidden_size
        self.vision = with_conv_stem(SiglipVisionModel._from_config(vision))

        def projection(a: int, b: int) -> nn.Module:
            causal = config.up_projection_causal and a < b
            return token_projection(a, b, config.projection, config.projection_heads, causal)

        def quantizer(size: int, dim: int, depth: int, update: str) -> ResidualQuantizer:
            return ResidualQuantizer(dim, size, depth, shared_codebook=config.shared_codebook, update=update,
                                     decay=config.ema_decay, restart_threshold=config.restart_threshold,
                                     ema_updates=config.ema_updates)

        # Construction order fixes the initial weights for a seed: the pixel branch first, as it always was.
        if not config.single_codebook:
            self.pixel_down = projection(width, config.pixel_code_dim)
            self.pixel_quantizer = quantizer(config.pixel_codebook_size, config.pixel_code_dim, config.pixel_depth,
                                             config.pixel_update)
        if config.layer_shortcut is not None and config.shortcut_space == "code":
            self.shortcut_down = projection(width, config.pixel_code_dim)
        self.pixel_up = projection(config.pixel_code_dim, width)
        self.semantic_down = projection(width, config.semantic_code_dim)
        self.semantic_quantizer = quantizer(config.semantic_codebook_size, config.semantic_code_dim,
                                            config.semantic_depth, config.semantic_update)
        self.semantic_up = projection(config.semantic_code_dim, width)
        self.decoder = PixelDecoder(width, config.decoder_channels, config.decoder_channel_mult,
                                    config.decoder_res_blocks, config.decoder_attention_levels, config.latent_size,
                                    config.decoder_input_block)
        self.post_init()

    @classmethod
    def from_siglip(cls, tower: SiglipVisionModel | str | Path, config: DualTokenConfig | None = None,
                    **overrides: Any) -> DualTokenModel:
        """A tokenizer whose tower starts from a SigLIP vision tower (a module, or a local SigLIP folder).

        The tower's own ``SiglipVisionConfig`` wins over the one in ``config``; layer taps are checked
        against its depth. Projections, quantizers and decoder start fresh.
        """
        if not isinstance(tower, SiglipVisionModel):
            tower = SiglipVisionModel.from_pretrained(tower, local_files_only=True)
        base = (config or DualTokenConfig()).to_dict()
        for key in ("vision_config", "model_type", "transformers_version", "architectures"):
            base.pop(key, None)
        model = cls(DualTokenConfig(**{**base, **overrides, "vision_config": tower.config.to_dict()}))
        model.vision.load_state_dict(tower.state_dict())
        return model

    # One codebook: the pixel branch's down projection and quantizer are the semantic ones (registered once).
    @property
    def pixel_down(self) -> nn.Module:
        return self._modules["semantic_down" if self.config.single_codebook else "pixel_down"]

    @property
    def pixel_quantizer(self) -> ResidualQuantizer:
        return self._modules["semantic_quantizer" if self.config.single_codebook else "pixel_quantizer"]

    @property
    def decoder_last_layer(self) -> torch.nn.Parameter:
        """Weight of the decoder's output convolution: where the adaptive GAN weight compares gradients."""
        return self.decoder.conv_out[-1].weight

    # ----------------------------------------------------------------------------------- tower
    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.vision.encoder.layers

    def _run_layers(self, hidden: Tensor, start: int, stop: int) -> Tensor:
        """Encoder layers ``start+1 .. stop`` (1-based, inclusive), i.e. ``layers[start:stop]``."""
        for layer in self.layers[start:stop]:
            hidden = layer(hidden, attention_mask=None)
        return hidden

    def _taps(self, pixel_values: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """(pixel tap, shortcut layer's state or None, semantic tap)."""
        cfg = self.config
        hidden = self.vision.embeddings(pixel_values)
        shortcut = None
        if cfg.layer_shortcut is not None:
            hidden = self._run_layers(hidden, 0, cfg.layer_shortcut)
            shortcut = hidden
        pixel = hidden = self._run_layers(hidden, cfg.layer_shortcut or 0, cfg.layer_pixel)
        return pixel, shortcut, self._run_layers(hidden, cfg.layer_pixel, cfg.layer_semantic)

    def _pixel_latent(self, pixel: Tensor, shortcut: Tensor | None) -> Tensor:
        """The pixel quantizer's input: the down-projected pixel tap plus ``weight_shortcut`` x the shortcut
        layer's state, added in code space (its own projection) or in width space (before the one)."""
        cfg = self.config
        if shortcut is None:
            return self.pixel_down(pixel)
        if cfg.shortcut_space == "code":
            return self.pixel_down(pixel) + cfg.weight_shortcut * self.shortcut_down(shortcut)
        return self.pixel_down(pixel + cfg.weight_shortcut * shortcut)

    def _finish_tower(self, semantic: Tensor) -> tuple[Tensor, Tensor | None]:
        hidden = self._run_layers(semantic, self.config.layer_semantic, len(self.layers))
        hidden = self.vision.post_layernorm(hidden)
        pooled = self.vision.head(hidden) if self.vision.use_head else None
        return hidden, pooled

    def _to_map(self, tokens: Tensor) -> Tensor:
        b, _, c = tokens.shape
        side = self.config.grid_size
        return tokens.transpose(1, 2).reshape(b, c, side, side)

    def _grid(self, tokens: Tensor) -> Tensor:
        b, _, c = tokens.shape
        return tokens.reshape(b, self.config.grid_size, self.config.grid_size, c)

    # ----------------------------------------------------------------------------------- public API
    def forward(self, pixel_values: Tensor) -> DualTokenOutput:
        pixel_features, shortcut, semantic_features = self._taps(pixel_values)
        semantic_q = self.semantic_quantizer(self._grid(self.semantic_down(semantic_features)))
        pixel_q = (semantic_q if self.config.single_codebook
                   else self.pixel_quantizer(self._grid(self._pixel_latent(pixel_features, shortcut))))
        b = pixel_values.shape[0]
        pixel_tokens = self.pixel_up(pixel_q.quantized.reshape(b, -1, pixel_q.quantized.shape[-1]))
        semantic_tokens = self.semantic_up(semantic_q.quantized.reshape(b, -1, self.config.semantic_code_dim))
        last_hidden, pooled = self._finish_tower(semantic_tokens)
        reconstruction = self.decoder(self._to_map(pixel_tokens))
        return DualTokenOutput(reconstruction, semantic_tokens, pooled, last_hidden, pixel_q, semantic_q)

    @torch.no_grad()
    def encode(self, pixel_values: Tensor) -> DualTokenCodes:
        pixel_features, shortcut, semantic_features = self._taps(pixel_values)
        semantic = self.semantic_quantizer.quantize(self._grid(self.semantic_down(semantic_features)))
        if self.config.single_codebook:
            return DualTokenCodes(pixel=semantic, semantic=semantic)
        pixel = self.pixel_quantizer.quantize(self._grid(self._pixel_latent(pixel_features, shortcut)))
        return DualTokenCodes(pixel=pixel, semantic=semantic)

    def embed_codes(self, pixel: Tensor | None = None, semantic: Tensor | None = None) -> dict[str, Tensor]:
        """Code-space embeddings (sum over residual depth) of pixel and/or semantic codes (..., depth)."""
        out = {}
        if pixel is not None:
            out["pixel"] = self.pixel_quantizer.embed_codes(pixel)
        if semantic is not None:
            out["semantic"] = self.semantic_quantizer.embed_codes(semantic)
        return out

    @torch.no_grad()
    def decode(self, pixel_codes: Tensor) -> Tensor:
        """(B, h, w, depth) pixel codes -> images (B, 3, H, W)."""
        b = pixel_codes.shape[0]
        vectors = self.pixel_quantizer.embed_codes(pixel_codes).reshape(b, -1, self.pixel_quantizer.dim)
        return self.decoder(self._to_map(self.pixel_up(vectors.to(self.dtype))))

    @torch.no_grad()
    def reconstruct(self, pixel_values: Tensor) -> Tensor:
        return self.decode(self.encode(pixel_values).pixel)

    @torch.no_grad()
    def semantic_embedding(self, pixel_values: Tensor) -> Tensor:
        """Pooled output through the quantized semantic path: comparable with SigLIP text embeddings."""
        _, _, semantic_features = self._taps(pixel_values)
        codes = self.semantic_quantizer.quantize(self._grid(self.semantic_down(semantic_features)))
        vectors = self.semantic_quantizer.embed_codes(codes).reshape(pixel_values.shape[0], -1,
                                                                     self.config.semantic_code_dim)
        _, pooled = self._finish_tower(self.semantic_up(vectors.to(self.dtype)))
        if pooled is None:
            raise ValueError("this vision config has no pooling head (vision_use_head=False)")
        return pooled


AutoConfig.register("dualtoken", DualTokenConfig, exist_ok=True)
AutoModel.register(DualTokenConfig, DualTokenModel, exist_ok=True)
