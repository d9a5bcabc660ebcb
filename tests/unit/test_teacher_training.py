"""Teacher training from scratch, streaming its shards: the sigmoid loss falls, a killed run resumes with the
uninterrupted losses (captions chosen by each sample's draw, tokenised in the workers), and the trainer
decodes what it trains on, not its whole split."""

import pytest
import torch
from rich.console import Console

from dualtoken.data import curated as curated_module
from dualtoken.data.shards import split_shards
from dualtoken.text import train_bpe
from dualtoken.training.config import TeacherConfig
from dualtoken.training.distributed import DistContext
from dualtoken.training.teacher import train_teacher
from tiny import tiny_teacher, write_curated_corpus

CPU = DistContext(0, 1, 0, torch.device("cpu"))
QUIET = Console(quiet=True)


class Killed(Exception):
    pass


def _setup(tmp_path, sizes):
    shards = split_shards(write_curated_corpus(tmp_path / "corpus", {"train": sizes}), "train")
    text = train_bpe([f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square")] * 4, 280)
    return shards, text


def _model(text):
    return tiny_teacher(vocab_size=len(text), pad_token_id=text.pad_token_id)


def _cfg(work, **overrides):
    base = {"steps": 6, "batch_size": 8, "work_dir": str(work), "shuffle_buffer": 8,
            "text": {"max_length": 16}, "optim": {"lr": 1e-3, "warmup_steps": 1},
            "runtime": {"device": "cpu", "log_every": 1, "checkpoint_every": 3, "loader_workers": 0}}
    return TeacherConfig.model_validate({**base, **overrides})


def test_killed_run_resumes_with_the_same_losses(tmp_path):
    shards, text = _setup(tmp_path, [9, 8, 6])
    full = train_teacher(_cfg(tmp_path / "a", runtime={"device": "cpu", "log_every": 1, "checkpoint_every": 3,
                                                       "loader_workers": 2}),
                         _model(text), text, shards, CPU, 0, {}, QUIET)

    def kill_at_5(step, metrics):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train_teacher(_cfg(tmp_path / "b"), _model(text), text, shards, CPU, 0, {}, QUIET, sink=kill_at_5)
    torch.manual_seed(7)
    rest = train_teacher(_cfg(tmp_path / "b"), _model(text), text, shards, CPU, 0, {}, QUIET)
    assert len(full) == 6 and rest == full[3:]
    longer = train_teacher(_cfg(tmp_path / "c", steps=30), _model(text), text, shards, CPU, 0, {}, QUIET)
    assert sum(longer[-5:]) < sum(longer[:5])  # it learns


def test_the_trainer_streams_its_split_instead_of_holding_it(tmp_path, monkeypatch):
    shards, text = _setup(tmp_path, [150, 150])
    decoded = []
    real = curated_module.decode_image
    monkeypatch.setattr(curated_module, "decode_image", lambda data, where: decoded.append(where) or real(data, where))
    train_teacher(_cfg(tmp_path / "w", steps=5), _model(text), text, shards, CPU, 0, {}, QUIET)
    assert 40 <= len(decoded) <= 40 + 8 + 64


def test_attribute_heads_add_their_loss_and_resume_exactly(tmp_path):
    """attribute_loss > 0: the heads' cross-entropy joins the sigmoid loss (larger losses than without), and a
    killed run resumes heads and all with the uninterrupted losses."""
    shards, text = _setup(tmp_path, [9, 8, 6])
    plain = train_teacher(_cfg(tmp_path / "p"), _model(text), text, shards, CPU, 0, {}, QUIET)
    full = train_teacher(_cfg(tmp_path / "a", attribute_loss=1.0), _model(text), text, shards, CPU, 0, {}, QUIET)
    assert all(f > p for f, p in zip(full, plain, strict=True))

    def kill_at_5(step, metrics):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train_teacher(_cfg(tmp_path / "b", attribute_loss=1.0), _model(text), text, shards, CPU, 0, {}, QUIET,
                      sink=kill_at_5)
    rest = train_teacher(_cfg(tmp_path / "b", attribute_loss=1.0), _model(text), text, shards, CPU, 0, {}, QUIET)
    assert rest == full[3:]


def test_attribute_targets_follow_the_zero_shot_labels():
    from dualtoken.metrics.zeroshot import TASKS, attribute_targets

    one = {"attributes": {"kind": "shapes", "count": 1, "objects": [{"shape": "star", "colour": "red"}]}}
    two = {"attributes": {"kind": "shapes", "count": 2, "objects": [{"shape": "star", "colour": "red"}] * 2}}
    digit = {"attributes": {"kind": "digit", "digit": 7, "colour": "blue"}}
    names = [t.name for t in TASKS]
    got = attribute_targets([one, two, digit, {"captions": ["a photo"]}])
    row = dict(zip(names, got[0].tolist(), strict=True))
    assert row == {"shape": TASKS[0].classes.index("star"), "colour": TASKS[1].classes.index("red"), "digit": -100,
                   "count": 0}
    assert dict(zip(names, got[1].tolist(), strict=True)) == {"shape": -100, "colour": -100, "digit": -100,
                                                              "count": 1}
    assert dict(zip(names, got[2].tolist(), strict=True))["digit"] == 7
    assert got[3].tolist() == [-100] * len(TASKS)


def test_every_attribute_head_gets_a_gradient_even_without_labels_in_the_batch():
    """DDP needs the same parameters to receive gradients on every rank: a rank whose batch holds no digit must
    still give the digit head a (zero) gradient, and the labelled heads the mean cross-entropy of their labels."""
    import torch.nn.functional as F

    from dualtoken.metrics.zeroshot import TASKS
    from dualtoken.training.teacher import TeacherObjective, sigmoid_loss

    model = tiny_teacher()
    objective = TeacherObjective(model, attribute_loss=1.0)
    ids = torch.randint(1, 300, (4, 8))
    pixels = torch.randn(4, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
    targets = torch.full((4, len(TASKS)), -100)
    targets[:, 0] = torch.tensor([0, 1, 2, 0])  # shapes only: no digit, colour or count label
    loss = objective(ids, pixels, targets)
    loss.backward()
    with torch.no_grad():  # the sigmoid loss + the shape head's mean cross-entropy on both embeddings
        out = model(input_ids=ids, pixel_values=pixels)
        expected = sigmoid_loss(out.image_embeds, out.text_embeds, model.logit_scale, model.logit_bias, ids) + sum(
            F.cross_entropy(objective.heads[0](e), targets[:, 0])
            for e in (out.vision_model_output.pooler_output, out.text_model_output.pooler_output))
    assert torch.allclose(loss, expected, rtol=1e-5)
    grads = [head.weight.grad for head in objective.heads]
    assert all(g is not None for g in grads)
    assert grads[0].abs().sum() > 0 and all(g.abs().sum() == 0 for g in grads[1:])
