"""``DualTokenConfig`` and the named configurations (the demo and the paper's released settings)."""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PretrainedConfig, SiglipVisionConfig


class DualTokenConfig(PretrainedConfig):
    """A SigLIP vision tower with two taps, two residual quantizers and a pixel decoder.

    Layers are counted from 1: ``layer_pixel=6`` taps the hidden state after the sixth encoder layer.
    The semantic tap's quantized features replace the hidden state after ``layer_semantic`` and run
    through the remaining layers, the post-layernorm and the pooling head.

    ``restart_threshold``: a code whose EMA count falls below it takes a vector of the batch at that update;
    1.0 is the released code's rule (a code unused for one update at decay 0.99 restarts at once).
    ``ema_updates``: ``depth`` updates the EMA codebooks after each residual depth (the released code: a shared
    book takes ``depth`` updates a step), ``step`` once a step from every depth's assignments.

    ``projection``: ``released`` is the official structure (linear + attention paths, a GeGLU MLP), whose up
    projections attend causally in raster order with ``up_projection_causal`` (the latest released code);
    ``conv`` is the first released checkpoint's residual convolution block; ``attention`` / ``linear`` are
    lighter. ``shortcut_space``: the layer-``layer_shortcut`` state is added to
    the pixel tap in ``code`` space through its own down projection (released) or in ``width`` space before
    the one projection. ``decoder_input_block``: a residual block before the decoder (the released
    PostQuantResnetBlock).

    ``single_codebook=True`` is the paper's conflict baseline (its ablation row (a)): one tap, one quantizer,
    whose codes both feed the remaining layers and are decoded to pixels (``layer_pixel == layer_semantic``).
    """

    model_type = "dualtoken"
    sub_configs: ClassVar[dict[str, type]] = {"vision_config": SiglipVisionConfig}

    def __init__(
        self,
        vision_config: dict[str, Any] | SiglipVisionConfig | None = None,
        layer_pixel: int = 6,
        layer_shortcut: int | None = 4,
        weight_shortcut: float = 0.6,
        layer_semantic: int = 26,
        projection: str = "attention",
        projection_heads: int = 8,
        up_projection_causal: bool = False,
        shortcut_space: str = "width",
        pixel_codebook_size: int = 16384,
        pixel_code_dim: int = 32,
        pixel_depth: int = 8,
        semantic_codebook_size: int = 16384,
        semantic_code_dim: int = 32,
        semantic_depth: int = 8,
        shared_codebook: bool = True,
        pixel_update: str = "ema",
        semantic_update: str = "ema",
        ema_decay: float = 0.99,
        restart_threshold: float = 1.0,
        ema_updates: str = "depth",
        decoder_channels: int = 128,
        decoder_channel_mult: tuple[int, ...] | list[int] = (1, 1, 4, 4, 8),
        decoder_res_blocks: int = 2,
        decoder_attention_levels: int = 1,
        latent_size: int | None = None,
        decoder_input_block: bool = False,
        single_codebook: bool = False,
        **kwargs: Any,
    ) -> None:
        if isinstance(vision_config, dict):
            vision_config = SiglipVisionConfig(**vision_config)
        self.vision_config = vision_config if vision_config is not None else SiglipVisionConfig()
        self.layer_pixel, self.layer_shortcut, self.weight_shortcut = layer_pixel, layer_shortcut, weight_shortcut
        self.layer_semantic = layer_semantic
        self.projection, self.projection_heads, self.shortcut_space = projection, projection_heads, shortcut_space
        self.up_projection_causal = up_projection_causal
        self.pixel_codebook_size, self.pixel_code_dim, self.pixel_depth = (
            pixel_codebook_size, pixel_code_dim, pixel_depth)
        self.semantic_codebook_size, self.semantic_code_dim, self.semantic_depth = (
            semantic_codebook_size, semantic_code_dim, semantic_depth)
        self.shared_codebook = shared_codebook
        self.pixel_update, self.semantic_update = pixel_update, semantic_update
        self.ema_decay, self.restart_threshold, self.ema_updates = ema_decay, restart_threshold, ema_updates
        self.decoder_channels = decoder_channels
        self.decoder_channel_mult = list(decoder_channel_mult)
        self.decoder_res_blocks, self.decoder_attention_levels = decoder_res_blocks, decoder_attention_levels
        self.latent_size, self.decoder_input_block = latent_size, decoder_input_block
        self.single_codebook = single_codebook
        if single_codebook:  # one codebook: the pixel codes are the semantic codes
            self.pixel_codebook_size, self.pixel_code_dim, self.pixel_depth = (
                semantic_codebook_size, semantic_code_dim, semantic_depth)
        super().__init__(**kwargs)
        self.validate_layout()

    @property
    def grid_size(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def decoder_latent_size(self) -> int:
        return self.latent_size or self.grid_size

    def validate_layout(self) -> None:
        layers = self.vision_config.num_hidden_layers
        if not 1 <= self.layer_pixel <= self.layer_semantic <= layers:
            raise ValueError(f"need 1 <= layer_pixel ({self.layer_pixel}) <= layer_semantic "
                             f"({self.layer_semantic}) <= num_hidden_layers ({layers})")
        if self.layer_shortcut is not None and not 1 <= self.layer_shortcut <= self.layer_pixel:
            raise ValueError(f"layer_shortcut ({self.layer_shortcut}) must lie in 1..layer_pixel ({self.layer_pixel})")
        if self.single_codebook and (self.layer_pixel != self.layer_semantic or self.layer_shortcut is not None):
            raise ValueError(f"single_codebook quantizes one tap: needs layer_pixel == layer_semantic (got "
                             f"{self.layer_pixel} and {self.layer_semantic}) and layer_shortcut null "
                             f"(got {self.layer_shortcut})")
        if self.projection not in ("released", "conv", "attention", "linear"):
            raise ValueError(f"projection must be 'released', 'conv', 'attention' or 'linear', got "
                             f"{self.projection!r}")
        if self.up_projection_causal and self.projection != "released":
            raise ValueError(f"up_projection_causal needs projection 'released', got {self.projection!r}")
        if self.ema_updates not in ("depth", "step"):
            raise ValueError(f"ema_updates must be 'depth' or 'step', got {self.ema_updates!r}")
        if self.shortcut_space not in ("width", "code"):
            raise ValueError(f"shortcut_space must be 'width' or 'code', got {self.shortcut_space!r}")
        out = self.decoder_latent_size * 2 ** (len(self.decoder_channel_mult) - 1)
        if out != self.vision_config.image_size:
            levels = len(self.decoder_channel_mult) - 1
            raise ValueError(f"decoder gives {out}px ({self.decoder_latent_size} x 2^{levels}) but images are "
                             f"{self.vision_config.image_size}px: adjust latent_size or the levels")


def _siglip(**kw: Any) -> dict[str, Any]:
    return {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": True, **kw}


NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    # Tiny, for CPU: 64 px, 8 px patches -> 8 x 8 tokens, 6 layers of width 128.
    "demo": {
        "vision_config": _siglip(image_size=64, patch_size=8, hidden_size=128, intermediate_size=512,
                                 num_hidden_layers=6, num_attention_heads=4),
        "layer_pixel": 2, "layer_shortcut": 1, "weight_shortcut": 0.6, "layer_semantic": 5,
        "projection_heads": 4,
        "pixel_codebook_size": 512, "pixel_code_dim": 16, "pixel_depth": 4,
        "semantic_codebook_size": 512, "semantic_code_dim": 16, "semantic_depth": 4,
        # Widths 8/16/32/64 from 64 px up to 8 px: convolutions at full resolution dominate a CPU step.
        "decoder_channels": 8, "decoder_channel_mult": [1, 2, 4, 8], "decoder_res_blocks": 1,
    },
    # The demo's (benchmarks/demo_sweep.py): 32 px, a 2-conv stem (3x3 stride 2, patch 4) -> 8 x 8 tokens; a
    # supervised shape probe reaches 0.79 in 400 steps with it, 0.36 with patchify (chance 0.17).
    "demo-32px": {
        "vision_config": _siglip(image_size=32, patch_size=4, hidden_size=128, intermediate_size=512,
                                 num_hidden_layers=6, num_attention_heads=4, conv_stem=[16, 32]),
        "layer_pixel": 2, "layer_shortcut": 1, "weight_shortcut": 0.6, "layer_semantic": 5,
        "projection_heads": 4,
        "pixel_codebook_size": 512, "pixel_code_dim": 16, "pixel_depth": 4,
        "semantic_codebook_size": 512, "semantic_code_dim": 16, "semantic_depth": 4,
        "decoder_channels": 16, "decoder_channel_mult": [1, 2, 4], "decoder_res_blocks": 1,
    },
    # The paper's main setting: SigLIP-So400m/14 at 384 px (27 x 27 tokens), taps after layers 6 and 26.
    "so400m-patch14-384": {
        "vision_config": _siglip(image_size=384, patch_size=14, hidden_size=1152, intermediate_size=4304,
                                 num_hidden_layers=27, num_attention_heads=16),
        "layer_pixel": 6, "layer_shortcut": 4, "weight_shortcut": 0.6, "layer_semantic": 26,
        # the released structure (the code of the 32-d configs): its projections, the up ones causal, the shortcut
        # in code space, a residual block before the decoder
        "projection": "released", "up_projection_causal": True, "shortcut_space": "code", "decoder_input_block": True,
        "pixel_codebook_size": 16384, "pixel_code_dim": 32, "pixel_depth": 8,
        "semantic_codebook_size": 16384, "semantic_code_dim": 32, "semantic_depth": 8,
        "decoder_channels": 128, "decoder_channel_mult": [1, 1, 4, 4, 8], "latent_size": 24,
    },
}
# Released SigLIP2 variant: 256 px with 16 px patches (16 x 16 tokens, no latent resize), residual depth 4.
NAMED_CONFIGS["siglip2-so400m-patch16-256"] = {
    **NAMED_CONFIGS["so400m-patch14-384"],
    "vision_config": {**NAMED_CONFIGS["so400m-patch14-384"]["vision_config"], "image_size": 256, "patch_size": 16},
    "pixel_depth": 4, "semantic_depth": 4, "latent_size": None,
}

# The paper's ablation tower: SigLIP-L/16 at 256 px (24 layers of width 1024, 16 x 16 tokens, depth 4). The
# semantic tap is the second-to-last layer, as layer 26 of the So400m's 27; the pixel tap and shortcut as above.
NAMED_CONFIGS["siglip-l16-256"] = {
    **NAMED_CONFIGS["siglip2-so400m-patch16-256"],
    "vision_config": _siglip(image_size=256, patch_size=16, hidden_size=1024, intermediate_size=4096,
                             num_hidden_layers=24, num_attention_heads=16),
    "layer_semantic": 23,
}

# The released checkpoint (the README's DualToken-256: 384 px, 729 tokens, 256-d codes), an earlier code: SigLIP
# So400m/14-384, taps after layers 6 and 26 and no shortcut, 32,768 codes of 256 in 8 depths per branch, the
# residual convolution projections. ``python -m dualtoken.models.released_checkpoint`` imports its weights.
NAMED_CONFIGS["dualtoken-256"] = {
    **NAMED_CONFIGS["so400m-patch14-384"],
    "layer_shortcut": None, "projection": "conv", "up_projection_causal": False,
    "pixel_codebook_size": 32768, "pixel_code_dim": 256, "semantic_codebook_size": 32768, "semantic_code_dim": 256,
}


def named_config(name: str, **overrides: Any) -> DualTokenConfig:
    if name not in NAMED_CONFIGS:
        raise ValueError(f"unknown tokenizer config {name!r}; known: {sorted(NAMED_CONFIGS)}")
    return DualTokenConfig(**{**NAMED_CONFIGS[name], **overrides})
