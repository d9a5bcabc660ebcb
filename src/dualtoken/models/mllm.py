"""The unified MLLM on DualToken codes (docs/method.md) as a transformers ``PreTrainedModel``.

Any causal LM (``AutoModelForCausalLM``) carries the sequence. At an image placeholder the input is an MLP
projection of the concatenated semantic and pixel code embeddings of that position (one position, one
token: the visual sequence is as long as the grid). At positions whose *next* token is a generated image's
placeholder, two depth heads (semantic, pixel) predict that position's residual codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from dualtoken.data.sequences import IMAGE_TOKEN, SPECIAL_TOKENS
from dualtoken.data.tokens import STREAMS
from dualtoken.models.depth_head import CodeEmbedding, DepthHead


class DualTokenMLLMConfig(PretrainedConfig):
    """The wrapped LM's config (``llm_config``, any causal LM architecture) plus the visual parts.

    ``codes`` describes the tokenizer's code layout (grid, per stream: depth, codebook size, code dim,
    number of codebooks); ``input_code_dim`` widens the input code tables (None: the code dim);
    ``tokenizer_path``/``tokenizer_sha256`` point at the DualToken tokenizer that
    decodes generated pixel codes. Special token ids are those of the saved text tokenizer.
    """

    model_type = "dualtoken_mllm"

    def __init__(self, llm_config: dict[str, Any] | None = None, codes: dict[str, Any] | None = None,
                 projector_hidden: int = 512, head_width: int = 256, head_layers: int = 2, head_heads: int = 4,
                 input_code_dim: int | None = None, special_token_ids: dict[str, int] | None = None,
                 tokenizer_path: str | None = None, tokenizer_sha256: str | None = None, **kwargs: Any) -> None:
        self.llm_config = dict(llm_config or {"model_type": "qwen2"})
        self.codes = dict(codes or {"grid": [8, 8],
                                    **{s: {"depth": 4, "codebook_size": 512, "dim": 16, "books": 1} for s in STREAMS}})
        self.projector_hidden, self.head_width = projector_hidden, head_width
        self.head_layers, self.head_heads, self.input_code_dim = head_layers, head_heads, input_code_dim
        self.special_token_ids = dict(special_token_ids or {})
        self.tokenizer_path, self.tokenizer_sha256 = tokenizer_path, tokenizer_sha256
        super().__init__(**kwargs)

    def llm(self) -> PretrainedConfig:
        raw = dict(self.llm_config)
        return AutoConfig.for_model(raw.pop("model_type"), **raw)

    @property
    def positions(self) -> int:
        h, w = self.codes["grid"]
        return int(h) * int(w)

    def token_id(self, token: str) -> int:
        if token not in self.special_token_ids:
            raise ValueError(f"no id for {token!r}: the config was built without the text tokenizer's ids")
        return int(self.special_token_ids[token])


@dataclass
class MLLMOutput:
    loss: Tensor
    text_loss: Tensor
    visual_losses: dict[str, Tensor]  # "semantic.d1" .. "pixel.dD": mean cross-entropy per stream and depth
    text_tokens: int
    visual_positions: int


def _mean_cross_entropy(logits: Tensor, targets: Tensor, denominator: float | None = None) -> Tensor:
    """Summed over rows and divided by ``denominator`` (default: the row count, a mean); 0, still attached to
    the graph, when there are no rows: every parameter gets a gradient."""
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    return total / (denominator if denominator is not None else max(targets.numel(), 1))


class DualTokenMLLM(PreTrainedModel):
    config_class = DualTokenMLLMConfig
    base_model_prefix = "dualtoken_mllm"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: DualTokenMLLMConfig) -> None:
        super().__init__(config)
        self.llm = AutoModelForCausalLM.from_config(config.llm(), attn_implementation="sdpa")
        width = self.llm.config.hidden_size
        specs = {s: config.codes[s] for s in STREAMS}

        def table(s: str, dim: int | None = None) -> CodeEmbedding:
            return CodeEmbedding(specs[s]["books"], specs[s]["codebook_size"], dim or specs[s]["dim"],
                                 specs[s]["depth"])

        self.input_codes = nn.ModuleDict({s: table(s, config.input_code_dim) for s in STREAMS})
        code_width = sum(t.weight.shape[-1] for t in self.input_codes.values())
        self.projector = nn.Sequential(nn.LayerNorm(code_width), nn.Linear(code_width, config.projector_hidden),
                                       nn.GELU(), nn.Linear(config.projector_hidden, width))
        self.heads = nn.ModuleDict({s: DepthHead(width, config.head_width, config.head_layers, config.head_heads,
                                                 table(s)) for s in STREAMS})
        # The input embeddings of the tokens added to the LM's vocabulary (image delimiters), apart from the LM's
        # table so that they train with the projector when the LM is frozen (the paper's phase 1), not stay random
        self.special_embeddings = nn.Embedding(len(self.special_tokens()), width)
        self.post_init()

    def special_tokens(self) -> tuple[str, ...]:
        """The added tokens whose input embedding ``special_embeddings`` holds (the placeholder's is visual)."""
        return tuple(t for t in SPECIAL_TOKENS if t != IMAGE_TOKEN and t in self.config.special_token_ids)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, PreTrainedModel) and module is not self:
            return  # the LM initialises itself
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def from_parts(cls, llm: PreTrainedModel, config: DualTokenMLLMConfig, codebooks: dict[str, Tensor]
                   ) -> DualTokenMLLM:
        """An MLLM around an existing LM (its weights kept) with code tables from the tokenizer's codebooks (wider
        input tables: their isometric lift) and the added tokens' input embeddings from the LM's rows for them (as
        its embedding resize initialised them)."""
        config.llm_config = llm.config.to_dict()
        model = cls(config)
        model.llm.load_state_dict(llm.state_dict())
        ids = torch.tensor([config.token_id(t) for t in model.special_tokens()], dtype=torch.long)
        with torch.no_grad():
            model.special_embeddings.weight.copy_(llm.get_input_embeddings().weight[ids])
        for stream, books in codebooks.items():
            model.input_codes[stream].copy_codebooks(books, lift=True)
            model.heads[stream].embedding.copy_codebooks(books)
        return model

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parts training phases freeze or train: ``projector`` (input code tables + MLP), ``llm``, ``heads``.
        The added tokens' embeddings belong to both the projector and the LM: they train when either does."""
        special = list(self.special_embeddings.parameters())
        return {"projector": [*self.input_codes.parameters(), *self.projector.parameters(), *special],
                "llm": [*self.llm.parameters(), *special], "heads": list(self.heads.parameters())}

    # ------------------------------------------------------------------------------- embeddings
    def visual_embeddings(self, semantic: Tensor, pixel: Tensor) -> Tensor:
        """Codes (..., depth) per stream -> LLM-width embeddings (..., width) of those positions."""
        joint = torch.cat([self.input_codes["semantic"].summed(semantic), self.input_codes["pixel"].summed(pixel)], -1)
        return self.projector(joint.to(self.projector[1].weight.dtype))

    def embed(self, input_ids: Tensor, semantic: Tensor | None = None, pixel: Tensor | None = None) -> Tensor:
        """Token embeddings, the added tokens' from ``special_embeddings``, with every placeholder replaced by its
        position's visual embedding.

        ``semantic``/``pixel`` hold the codes of all placeholders in reading order, (P, depth) each.
        """
        embeds = self.llm.get_input_embeddings()(input_ids)
        if self.special_embeddings.num_embeddings:
            rows = torch.full_like(input_ids, -1)
            for row, token in enumerate(self.special_tokens()):
                rows = rows.masked_fill(input_ids == self.config.token_id(token), row)
            # through the module's forward, so ZeRO-3 gathers its partitioned weight
            special = self.special_embeddings(rows.clamp(min=0)).to(embeds.dtype)
            embeds = torch.where(rows.unsqueeze(-1) >= 0, special, embeds)
        placeholders = input_ids == self.config.token_id(IMAGE_TOKEN)
        count = int(placeholders.sum())
        if semantic is None or pixel is None:
            if count:
                raise ValueError(f"{count} image placeholders but no codes")
            return embeds
        if semantic.shape[0] != count or pixel.shape[0] != count:
            raise ValueError(f"{count} image placeholders but {semantic.shape[0]} semantic and {pixel.shape[0]} "
                             "pixel code rows")
        visual = self.visual_embeddings(semantic, pixel).to(embeds.dtype)
        return embeds.masked_scatter(placeholders.unsqueeze(-1), visual)

    def hidden_states(self, embeds: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Any:
        return self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    # ------------------------------------------------------------------------------- training
    def forward(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, semantic: Tensor, pixel: Tensor,
                visual_targets: Tensor, text_weight: float = 1.0, visual_weight: float = 1.0,
                text_denominator: float | None = None, visual_denominator: float | None = None) -> MLLMOutput:
        """``labels``: next-token targets aligned with ``input_ids`` (-100 where no loss);
        ``visual_targets``: (B, L) True at the placeholders of generated images (their codes are predicted
        from the hidden state one position earlier). The losses are means over this batch's targets unless
        a denominator is given (training divides by the step's global counts instead)."""
        hidden = self.hidden_states(self.embed(input_ids, semantic, pixel), attention_mask).last_hidden_state
        text_rows = labels[:, 1:] != -100
        text_logits = self.llm.get_output_embeddings()(hidden[:, :-1][text_rows])
        text_loss = _mean_cross_entropy(text_logits, labels[:, 1:][text_rows], text_denominator)

        placeholders = input_ids == self.config.token_id(IMAGE_TOKEN)
        is_target = visual_targets[placeholders]  # which placeholder rows are generation targets
        before = hidden[:, :-1][visual_targets[:, 1:]]
        visual_losses = {}
        for stream, codes in (("semantic", semantic), ("pixel", pixel)):
            targets = codes[is_target]
            logits = self.heads[stream](before, targets)
            for d in range(targets.shape[-1]):
                visual_losses[f"{stream}.d{d + 1}"] = _mean_cross_entropy(logits[:, d], targets[:, d],
                                                                          visual_denominator)
        loss = text_weight * text_loss + visual_weight * torch.stack(list(visual_losses.values())).sum()
        return MLLMOutput(loss, text_loss, visual_losses, int(text_rows.sum()), int(is_target.sum()))


AutoConfig.register("dualtoken_mllm", DualTokenMLLMConfig, exist_ok=True)
AutoModel.register(DualTokenMLLMConfig, DualTokenMLLM, exist_ok=True)
