"""Checkpoint + resume gives the uninterrupted run's losses; schedule shape; atomic, pruned folders."""

import itertools

import pytest
import torch

from dualtoken.data.stream import Emitter, StreamOrder
from dualtoken.training.checkpoint import Checkpointer
from dualtoken.training.config import OptimConfig
from dualtoken.training.schedule import build_optimizer, warmup_cosine, warmup_cosine_scheduler

DATA = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
TARGET = DATA @ torch.randn(8, 1, generator=torch.Generator().manual_seed(1))


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = warmup_cosine_scheduler(optimizer, warmup_steps=3, total_steps=12)
    return model, optimizer, scheduler, Emitter(StreamOrder([64], 1, seed=5, shuffle_buffer=16), 0)


def _train(model, optimizer, scheduler, sampler, steps, start=0, ckpt=None, save_at=None):
    losses = []
    for step in range(start, steps):
        _, idx = sampler.take(8)
        loss = torch.nn.functional.mse_loss(model(DATA[idx]), TARGET[idx])  # dropout draws from the RNG
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if ckpt is not None and step + 1 == save_at:
            ckpt.save(step + 1, {"model": model}, {"optimizer": optimizer}, {"scheduler": scheduler},
                      {"position": sampler.position})
            return losses
    return losses


def test_resume_after_kill_reproduces_the_losses(tmp_path):
    full = _train(*_setup(), steps=12)
    ckpt = Checkpointer(tmp_path / "ckpt")
    first = _train(*_setup(), steps=12, ckpt=ckpt, save_at=5)  # "killed" right after saving step 5
    torch.manual_seed(123)  # the new process starts from some other RNG state
    model, optimizer, scheduler, sampler = _setup()
    step, state = ckpt.load(ckpt.latest(), {"model": model}, {"optimizer": optimizer}, {"scheduler": scheduler})
    sampler = Emitter(sampler.order, 0, state["position"])
    rest = _train(model, optimizer, scheduler, sampler, steps=12, start=step)
    assert step == 5 and first + rest == full


def test_half_written_checkpoints_are_ignored_and_old_ones_pruned(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, {"model": model})
    (tmp_path / ".step-00000004.tmp").mkdir()  # a save killed half-way
    assert [p.name for p in ckpt.checkpoints()] == ["step-00000002", "step-00000003"]
    assert ckpt.latest().name == "step-00000003"
    assert Checkpointer(tmp_path / "none").latest() is None


def test_schedule_warms_up_then_decays():
    values = [warmup_cosine(s, 4, 20, min_ratio=0.1) for s in range(25)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(values[3:]))
    assert values[-1] == pytest.approx(0.1)


def test_tokenizer_checkpoint_keeps_codebooks_and_ema_state(tmp_path):
    from dualtoken.models.configuration import named_config
    from dualtoken.models.dualtoken import DualTokenModel

    torch.manual_seed(0)
    model = DualTokenModel(named_config("demo")).train()
    model(torch.randn(2, 3, 64, 64))  # initialises codebooks, moves EMA statistics
    path = Checkpointer(tmp_path).save(1, {"model": model})
    restored = DualTokenModel(named_config("demo"))
    assert Checkpointer(tmp_path).load(path, {"model": restored})[0] == 1
    ours, theirs = model.state_dict(), restored.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert bool(restored.semantic_quantizer.initialized)


@pytest.mark.parametrize("decay_all", [False, True])
def test_biases_and_norms_are_exempt_from_weight_decay_unless_asked(decay_all):
    """As released: with no gradient, AdamW's decoupled decay alone moves a weight by lr x wd x value per step;
    a bias or a norm scale does not move unless ``decay_biases_and_norms``. The lr scale of a group is kept."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optim = OptimConfig(lr=0.1, weight_decay=0.5, decay_biases_and_norms=decay_all)
    optimizer, _ = build_optimizer([{"params": model.parameters(), "lr_scale": 2.0}], optim, total_steps=10)
    assert {g["lr"] for g in optimizer.param_groups} == {0.2}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        shrink = 1 - 0.2 * 0.5 if decay_all or p.ndim >= 2 else 1.0
        assert torch.allclose(p, before[name] * shrink), name
