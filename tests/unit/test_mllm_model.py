"""The MLLM's sequences, losses, heads and sampling on a tiny model: what goes where, what is trained on
what, codes always in range, guidance at scale 1 equal to no guidance, save/load round trip."""

import pytest
import torch

from dualtoken.data.sequences import (
    IGNORE,
    TASKS,
    SequenceBuilder,
    bucket,
    image_prefix,
    stream_task_counts,
    task_counts,
)
from dualtoken.models.depth_head import CodeEmbedding, filter_logits, sample_logits
from dualtoken.models.mllm import DualTokenMLLM
from dualtoken.models.mllm_generation import answer, generate_codes
from dualtoken.models.sampling import SamplingConfig
from tiny import tiny_mllm, tiny_text_tokenizer, tiny_token_columns, write_token_corpus

GRID, DEPTH, BOOK = 2, 2, 32


class Split:
    """The decoded samples as tensors of codes (what evaluation reads) next to their loader columns."""

    def __init__(self, columns):
        self.columns = columns
        self.semantic, self.pixel = columns["semantic"].long(), columns["pixel"].long()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = write_token_corpus(tmp_path_factory.mktemp("tokens"), {"train": [24]}, grid=GRID, depth=DEPTH,
                              codebook=BOOK)
    tokenizer = tiny_text_tokenizer(root)
    columns = tiny_token_columns(root, tokenizer)
    return Split(columns), tokenizer, SequenceBuilder(tokenizer, GRID * GRID)


def _seq(parts, task, row, **kw):
    split, _, builder = parts
    return builder.build(task, split.columns, row, **kw)


def test_sequences_put_losses_only_on_targets(parts):
    split, _tokenizer, builder = parts
    v = builder.vocab
    cap = _seq(parts, "caption", 0)
    caption = split.columns["caption"][0]
    assert cap.ids == [v.bos, v.image_start, *[v.image] * GRID * GRID, v.image_end, *caption, v.eos]
    assert [t for t in cap.labels if t != IGNORE] == [*caption, v.eos]
    assert cap.labels[: 3 + GRID * GRID] == [IGNORE] * (3 + GRID * GRID) and not cap.generates
    qa = _seq(parts, "vqa", 3)
    [(question, ans)] = split.columns["qa"][3]
    assert [t for t in qa.labels if t != IGNORE] == [*ans, v.eos]
    assert qa.ids[-len(ans) - 1 - len(question): -len(ans) - 1] == question
    gen = _seq(parts, "t2i", 0)
    assert gen.generates and all(t == IGNORE for t in gen.labels)
    assert gen.ids[: len(caption) + 2] == [v.bos, *caption, v.gen_start]
    assert _seq(parts, "t2i", 0, prompt_dropout=1.0).ids[:3] == [v.bos, v.gen_start, v.image]


def test_multi_turn_vqa_asks_distinct_questions_of_one_image_with_a_loss_on_every_answer(parts, tmp_path):
    split, tokenizer, builder = parts
    v = builder.vocab
    root = write_token_corpus(tmp_path, {"train": [24]}, grid=GRID, depth=DEPTH, codebook=BOOK)
    many = tiny_token_columns(root, tokenizer, vqa_turns=100)
    for row in range(24):
        single, turns = split.columns["qa"][row], many["qa"][row]
        if not single:
            assert not turns
            continue
        assert turns[0] == single[0]  # the draw's question first: one turn is the single-question sequence
        assert len(turns) == len({tuple(q) for q, _ in turns}) > 1  # every question of the sample, once
        seq = builder.build("vqa", many, row)
        assert [t for t in seq.labels if t != IGNORE] == [t for _, a in turns for t in (*a, v.eos)]
        expected = image_prefix(v, GRID * GRID) + [t for q, a in turns for t in (*q, *a, v.eos)]
        assert seq.ids == expected and len(seq.labels) == len(seq.ids)


def test_visual_sequence_length_is_the_number_of_positions_and_codes_land_in_order(parts):
    split, tokenizer, builder = parts
    batch = builder.collate([_seq(parts, "caption", 0), _seq(parts, "t2i", 5)])
    placeholders = batch.input_ids == builder.vocab.image
    assert placeholders.sum(1).tolist() == [GRID * GRID] * 2  # one token per position, not one per stream
    assert batch.visual_targets.sum() == GRID * GRID and not batch.visual_targets[0].any()
    images = [0, 5]
    assert torch.equal(batch.semantic, split.semantic[images].reshape(-1, DEPTH))
    model = tiny_mllm(tokenizer, GRID, DEPTH, BOOK)
    embeds = model.embed(batch.input_ids, batch.semantic, batch.pixel)
    assert embeds.shape == (*batch.input_ids.shape, 32)
    second = images[1]
    expected = model.visual_embeddings(split.semantic[second].reshape(-1, DEPTH),
                                       split.pixel[second].reshape(-1, DEPTH))
    assert torch.allclose(embeds[1][placeholders[1]], expected)
    with pytest.raises(ValueError, match="placeholders"):
        model.embed(batch.input_ids, batch.semantic[:-1], batch.pixel[:-1])


def test_loss_counts_targets_and_every_trainable_part_gets_a_gradient(parts):
    _split, tokenizer, builder = parts
    model = tiny_mllm(tokenizer, GRID, DEPTH, BOOK)
    batch = builder.collate([_seq(parts, "vqa", 1), _seq(parts, "t2i", 2), _seq(parts, "caption", 4)])
    out = model(**batch.model_inputs())
    assert out.text_tokens == int((batch.labels != IGNORE).sum()) == batch.text_targets
    assert out.visual_positions == GRID * GRID == batch.visual_target_positions
    assert sorted(out.visual_losses) == ["pixel.d1", "pixel.d2", "semantic.d1", "semantic.d2"]
    assert torch.allclose(out.loss, out.text_loss + sum(out.visual_losses.values()))
    # the trainer divides by the step's global counts instead: a sum over targets, not this batch's mean
    scaled = model(**batch.model_inputs(), text_denominator=2 * out.text_tokens, visual_denominator=1.0)
    assert torch.allclose(scaled.text_loss, out.text_loss / 2)
    assert torch.allclose(scaled.visual_losses["pixel.d1"], out.visual_losses["pixel.d1"] * GRID * GRID)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads.parameters())
    # a batch without generation targets still reaches the heads (zero gradients, not None): ZeRO needs them
    model.zero_grad(set_to_none=True)
    text_only = builder.collate([_seq(parts, "caption", 0)])
    model(**text_only.model_inputs()).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in model.heads.parameters())


def test_depth_head_is_causal_over_depth(parts):
    _, tokenizer, _ = parts
    head = tiny_mllm(tokenizer, GRID, 3, BOOK).heads["pixel"].eval()
    hidden, codes = torch.randn(6, 32), torch.randint(BOOK, (6, 3))
    base = head(hidden, codes)
    last_changed = codes.clone()
    last_changed[:, 2] = (codes[:, 2] + 1) % BOOK  # the last depth's code is only ever a target
    assert torch.equal(head(hidden, last_changed), base)
    first_changed = codes.clone()
    first_changed[:, 0] = (codes[:, 0] + 1) % BOOK  # seen by depths 2 and 3, not by depth 1
    after = head(hidden, first_changed)
    assert torch.allclose(after[:, 0], base[:, 0], atol=1e-6)
    assert not torch.allclose(after[:, 1], base[:, 1]) and not torch.allclose(after[:, 2], base[:, 2])


def test_code_embedding_gradients_are_identical_run_to_run():
    """Many rows repeating few codes, on two threads: advanced indexing's backward summed them in a varying
    order, which made two identical MLLM trainings end with different weights."""
    embedding = CodeEmbedding(books=2, codebook_size=16, dim=8, depth=4)
    codes, upstream = torch.randint(16, (8000, 4)), torch.randn(8000, 4, 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(4):
            embedding.zero_grad()
            (embedding(codes) * upstream).sum().backward()
            grads.append(embedding.weight.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    books = torch.arange(4) % 2  # depth d reads table d % books
    assert torch.equal(embedding(codes[:5]), embedding.weight[books, codes[:5]])


def test_depth_head_sampling_returns_codes_in_range_for_every_depth(parts):
    _, tokenizer, _ = parts
    model = tiny_mllm(tokenizer, GRID, DEPTH, BOOK).eval()
    hidden = torch.randn(50, 32)
    gen = torch.Generator().manual_seed(0)
    for kw in ({"temperature": 1.0}, {"temperature": 0.0}, {"temperature": 2.0, "top_k": 3, "top_p": 0.5}):
        codes = model.heads["pixel"].sample(hidden, lambda logits, kw=kw: sample_logits(logits, generator=gen, **kw))
        assert codes.shape == (50, DEPTH) and codes.dtype == torch.long
        assert int(codes.min()) >= 0 and int(codes.max()) < BOOK
    greedy = model.heads["semantic"].sample(hidden, lambda logits: logits.argmax(-1))
    logits = model.heads["semantic"](hidden, greedy)  # teacher forcing on the greedy path picks the same codes
    assert torch.equal(logits.argmax(-1), greedy)


def test_top_k_and_top_p_keep_the_right_logits():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False, False]]
    probs = logits.softmax(-1)[0]  # 0.64, 0.23, 0.09, ...
    kept = torch.isfinite(filter_logits(logits, top_p=float(probs[0] + 0.01)))
    assert kept.tolist() == [[True, True, False, False, False]]
    shuffled = logits[:, [3, 0, 4, 1, 2]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.5)).tolist() == [[False, True, False, False, False]]


def test_guidance_at_scale_one_equals_unguided_sampling_and_other_scales_differ(parts):
    _, tokenizer, _ = parts
    model = tiny_mllm(tokenizer, GRID, DEPTH, BOOK).eval()
    prompts = ["a red circle", "a small blue square at the top left"]

    def codes(scale, guided):
        return generate_codes(model, tokenizer, prompts, SamplingConfig(cfg_scale=scale), guided=guided,
                              generator=torch.Generator().manual_seed(7))

    plain, scale_one, strong = codes(1.0, False), codes(1.0, True), codes(8.0, True)
    assert plain.pixel.shape == (2, GRID, GRID, DEPTH) and plain.semantic.shape == (2, GRID, GRID, DEPTH)
    assert torch.equal(plain.pixel, scale_one.pixel) and torch.equal(plain.semantic, scale_one.semantic)
    assert not torch.equal(plain.pixel, strong.pixel)


def test_kv_cached_generation_matches_a_full_forward(parts):
    _split, tokenizer, builder = parts
    model = tiny_mllm(tokenizer, GRID, DEPTH, BOOK).eval()
    greedy = SamplingConfig(temperature=0.0)
    out = generate_codes(model, tokenizer, ["a red circle"], greedy, guided=False)
    # re-score the generated image with teacher forcing: greedy codes are each position's argmax
    ids = [builder.vocab.bos, *tokenizer("a red circle", add_special_tokens=False)["input_ids"],
           builder.vocab.gen_start, *[builder.vocab.image] * GRID * GRID]
    ids_t = torch.tensor([ids])
    sem, pix = out.semantic.reshape(-1, DEPTH), out.pixel.reshape(-1, DEPTH)
    hidden = model.hidden_states(model.embed(ids_t, sem, pix), torch.ones_like(ids_t)).last_hidden_state
    before = hidden[0, -GRID * GRID - 1: -1]
    assert torch.equal(model.heads["pixel"](before, pix).argmax(-1), pix)
    assert torch.equal(model.heads["semantic"](before, sem).argmax(-1), sem)


def test_answers_are_text_and_save_load_round_trips(parts, tmp_path):
    split, tokenizer, builder = parts
    model = tiny_mllm(tokenizer, GRID, DEPTH, BOOK).eval()
    replies = answer(model, tokenizer, split.semantic[:3], split.pixel[:3], ["what colour?", "how many?", "shape"], 4)
    assert len(replies) == 3 and all(isinstance(r, str) for r in replies)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = DualTokenMLLM.from_pretrained(tmp_path, local_files_only=True).eval()
    batch = builder.collate([_seq(parts, "vqa", 0), _seq(parts, "t2i", 1)])
    assert torch.equal(model(**batch.model_inputs()).loss, loaded(**batch.model_inputs()).loss)
    assert loaded.config.special_token_ids == model.config.special_token_ids
    assert answer(loaded, tokenizer, split.semantic[:3], split.pixel[:3], ["what colour?", "how many?", "shape"],
                  4) == replies


def test_step_counts_follow_the_mixture_exactly_and_bucketing_sorts_by_length(parts):
    assert task_counts({"caption": 1, "vqa": 2, "t2i": 1}, 10) == {"caption": 3, "vqa": 5, "t2i": 2}
    assert task_counts({"t2i": 1}, 7) == {"t2i": 7}
    weights = {"caption": 1, "vqa": 2, "t2i": 2}
    for streams, per in ((1, 8), (4, 2), (3, 5)):
        per_stream = stream_task_counts(weights, streams, per)
        assert all(sum(c.values()) == per for c in per_stream)
        totals = {t: sum(c.get(t, 0) for c in per_stream) for t in TASKS}
        assert {t: n for t, n in totals.items() if n} == task_counts(weights, streams * per)  # exact globally
    sequences = [_seq(parts, task, row) for row in range(6) for task in TASKS]
    micro = bucket(sequences, 3)
    assert [len(m) for m in micro] == [6, 6, 6]
    assert sorted(id(s) for m in micro for s in m) == sorted(map(id, sequences))
    lengths = [len(s.ids) for m in micro for s in m]
    assert lengths == sorted(lengths)  # contiguous micro batches hold similar lengths: little padding
