"""The named MLLM shapes: the released Qwen2.5 LMs and the paper's heads, counted on the meta device (no memory);
and the architecture key's errors."""

import pytest
import torch

from dualtoken.apps.mllm import mllm_shape
from dualtoken.data.tokens import STREAMS
from dualtoken.models.mllm import DualTokenMLLM, DualTokenMLLMConfig
from dualtoken.models.mllm_shapes import SHAPES, named_shape
from dualtoken.schema import ConfigError
from dualtoken.training.mllm_config import MllmConfig

# the 384-px tokenizer (so400m-patch14-384): a 27 x 27 grid, 8 residual depths of 16,384 32-d codes per stream
PAPER_CODES = {"grid": [27, 27], **{s: {"depth": 8, "codebook_size": 16384, "dim": 32, "books": 1} for s in STREAMS}}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("name", "vocab", "llm_billions"), [("qwen2.5-3b", 151_936, 3.09),
                                                             ("qwen2.5-7b", 152_064, 7.62)])
def test_paper_shapes_have_the_released_lm_and_the_papers_258m_heads(name, vocab, llm_billions):
    shape = named_shape(name)
    with torch.device("meta"):
        model = DualTokenMLLM(DualTokenMLLMConfig(llm_config=shape.llm_config(vocab), codes=PAPER_CODES,
                                                  **shape.visual()))
    assert _count(model.llm) / 1e9 == pytest.approx(llm_billions, abs=0.01)  # Qwen2.5's published sizes
    for stream in STREAMS:  # "an additional visual head: 258M parameters" (the paper, at 3B)
        assert _count(model.heads[stream]) / 1e6 == pytest.approx(258, rel=0.03)
        assert len(model.heads[stream].transformer.layers) == 3 and model.heads[stream].depth == 8
    # the paper's "16M VQ embedding": a 16,384 x 1024 input table per stream, concatenated into its 2048 -> 2048
    for stream in STREAMS:
        assert tuple(model.input_codes[stream].weight.shape) == (1, 16384, 1024)
    assert model.projector[1].in_features == 2048 and model.projector[1].out_features == 2048
    assert model.projector[-1].out_features == shape.hidden_size


def test_wide_input_tables_start_as_an_isometric_lift_of_the_codebooks():
    """Each input code vector and so each residual sum keeps its lengths and angles; the heads keep the codes."""
    from dualtoken.models.depth_head import CodeEmbedding

    codes = {"grid": [2, 2], **{s: {"depth": 3, "codebook_size": 10, "dim": 4, "books": 1} for s in STREAMS}}
    llm = named_shape("demo").llm_config(64) | {"hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1,
                                                "intermediate_size": 64, "num_hidden_layers": 1}
    lm = DualTokenMLLM(DualTokenMLLMConfig(llm_config=llm, codes=codes, projector_hidden=16, head_width=8,
                                           head_layers=1, head_heads=2)).llm
    torch.manual_seed(0)
    books = {s: torch.randn(1, 10, 4) for s in STREAMS}
    config = DualTokenMLLMConfig(codes=codes, projector_hidden=16, head_width=8, head_layers=1, head_heads=2,
                                 input_code_dim=12)
    model = DualTokenMLLM.from_parts(lm, config, books)
    picked = torch.tensor([[3, 7, 1], [0, 0, 9]])
    for s in STREAMS:
        wide = model.input_codes[s]
        assert tuple(wide.weight.shape) == (1, 10, 12)
        assert torch.allclose(wide.weight[0] @ wide.weight[0].T, books[s][0] @ books[s][0].T, atol=1e-5)
        narrow = CodeEmbedding(1, 10, 4, 3)
        narrow.copy_codebooks(books[s])
        sums, reference = wide.summed(picked), narrow.summed(picked)
        assert torch.allclose(sums.norm(dim=-1), reference.norm(dim=-1), atol=1e-5)
        assert torch.equal(model.heads[s].embedding.weight, books[s])  # the heads predict the tokenizer's codes
    assert model.projector[1].in_features == 24


def test_the_demo_shape_is_the_demo_models():
    demo = SHAPES["demo"]
    assert (demo.hidden_size, demo.layers, demo.head_width, demo.head_layers, demo.max_positions) == (256, 4, 128, 2,
                                                                                                     256)


def test_the_architecture_and_its_overrides_are_checked_with_their_keys():
    with pytest.raises(ValueError, match=r"hidden_sise"):
        MllmConfig(overrides={"hidden_sise": 64})
    with pytest.raises(ConfigError, match=r"mllm\.architecture: unknown MLLM architecture 'qwen3'"):
        mllm_shape(MllmConfig(architecture="qwen3"))
    with pytest.raises(ConfigError, match=r"mllm\.overrides: hidden_size \(90\) must be divisible by heads"):
        mllm_shape(MllmConfig(architecture="demo", overrides={"hidden_size": 90}))
    shape = mllm_shape(MllmConfig(architecture="demo", overrides={"head_layers": 3}))
    assert shape.head_layers == 3 and shape.hidden_size == 256
    assert mllm_shape(MllmConfig()) == SHAPES["qwen2.5-3b"]  # the library default: the paper's MLLM
