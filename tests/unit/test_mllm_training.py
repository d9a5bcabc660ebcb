"""MLLM training with DeepSpeed on CPU, streaming its sequences from token shards: a killed run resumes with
the same losses, two ZeRO-2 or ZeRO-3 processes train like one process with the same global batch, phases
freeze what they do not train, the trainer never holds its split."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from dualtoken.data import tokens as tokens_module
from dualtoken.data.shards import split_shards
from dualtoken.data.tokens import read_layout
from dualtoken.training.distributed import DistContext
from dualtoken.training.mllm import PhaseData, TokenSource, freeze_for, phase_micro_batch, train_mllm
from dualtoken.training.mllm_config import MllmConfig
from tiny import tiny_mllm, tiny_text_tokenizer, write_token_corpus

REPO = Path(__file__).resolve().parents[2]
CPU = DistContext(0, 1, 0, torch.device("cpu"))
QUIET = Console(file=open(os.devnull, "w"))  # noqa: SIM115


class Killed(Exception):
    pass


def _source(root: Path) -> TokenSource:
    tokenizer = tiny_text_tokenizer(root)
    return TokenSource(split_shards(root, "train"), read_layout(root), tokenizer)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _source(write_token_corpus(tmp_path_factory.mktemp("tokens"), {"train": [10, 14]}, qa_every=2))


def _cfg(work: Path, **overrides) -> MllmConfig:
    base = {"batch_size": 4, "work_dir": str(work), "zero_stage": 2, "max_text_tokens": 16,
            "phases": [{"name": "understand", "steps": 4, "lr": 3e-3, "train": ["projector", "llm"],
                        "tasks": {"caption": 1, "vqa": 1}},
                       {"name": "generate", "steps": 4, "lr": 3e-3, "train": ["heads"], "tasks": {"t2i": 1}}],
            "runtime": {"device": "cpu", "log_every": 1, "checkpoint_every": 2, "keep_checkpoints": 2,
                        "loader_workers": 0}}
    return MllmConfig.model_validate({**base, **overrides})


def _train(data, work, sink=None, **overrides):
    model = tiny_mllm(data.tokenizer)
    rows = train_mllm(_cfg(work, **overrides), model, data, CPU, 0, {"test": 1}, QUIET, sink=sink)
    return rows, model


@pytest.mark.parametrize("zero", [2, 3])
def test_killed_run_resumes_with_the_same_losses(data, tmp_path, zero):
    full, full_model = _train(data, tmp_path / "full", zero_stage=zero)
    assert len(full) == 8 and full[0]["loss"] > 0

    def kill_at_7(step, row):
        if step == 7:
            raise Killed

    with pytest.raises(Killed):  # with loader workers: the same batches
        _train(data, tmp_path / "killed", sink=kill_at_7, zero_stage=zero,
               runtime={"device": "cpu", "log_every": 1, "checkpoint_every": 2, "loader_workers": 2})
    tags = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["00-step00000004", "01-step00000002"]  # the newest two kept; step 7 never checkpointed
    resumed, resumed_model = _train(data, tmp_path / "killed", zero_stage=zero)
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full[6:]], rel=1e-5)
    _assert_same_weights(full_model, resumed_model)
    done, done_model = _train(data, tmp_path / "killed", zero_stage=zero)
    assert done == []  # finished: nothing left to train, and the model is the trained one (e.g. `dvc repro -f`)
    _assert_same_weights(full_model, done_model)


def test_a_schedulers_signal_checkpoints_the_step_and_the_rerun_resumes(data, tmp_path):
    """SIGUSR1 (Slurm's warning before the time limit) in step 3 of phase 1: DeepSpeed's checkpoint of step 3 and
    the loader's position are written and the run leaves; the rerun has the uninterrupted losses."""
    import signal

    from dualtoken.training.preemption import Preempted

    full, _ = _train(data, tmp_path / "full")

    def signal_at_3(step, row):
        if step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(Preempted, match=r"mllm phase 'understand': stopped after step 3/4"):
        _train(data, tmp_path / "stopped", sink=signal_at_3)
    tags = sorted(p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir() if p.is_dir())
    assert tags[-1] == "00-step00000003"
    resumed, _ = _train(data, tmp_path / "stopped")
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full[3:]], rel=1e-5)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), name


def test_a_run_killed_at_a_phase_boundary_resumes_from_the_finished_phase(data, tmp_path):
    """The newest checkpoint closes phase 1: phase 2 must start from its weights, not from the initial ones."""
    full, full_model = _train(data, tmp_path / "full")

    def kill_at_5(step, row):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        _train(data, tmp_path / "killed", sink=kill_at_5)
    assert (tmp_path / "killed" / "checkpoints" / "latest").read_text().strip() == "00-step00000004"
    resumed, resumed_model = _train(data, tmp_path / "killed")
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full[4:]], rel=1e-5)
    _assert_same_weights(full_model, resumed_model)


@pytest.mark.parametrize("zero", [0, 2])
def test_each_phase_trains_only_its_parts(data, tmp_path, zero):
    model = tiny_mllm(data.tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = _cfg(tmp_path, run_phases=["generate"], zero_stage=zero)
    train_mllm(cfg, model, data, CPU, 0, {}, QUIET)
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"heads"}
    assert freeze_for(model, cfg.phases[0]) == sum(p.numel() for p in [*model.input_codes.parameters(),
                                                                        *model.projector.parameters(),
                                                                        *model.llm.parameters(),
                                                                        *model.special_embeddings.parameters()])


def test_the_papers_first_phase_trains_the_added_tokens_with_the_projector_and_leaves_the_lm(data, tmp_path):
    """Phase 1 trains the projector alone, the LM frozen: the image delimiters' input embeddings (new rows,
    random in a frozen LM table before) train with it; the LM's own weights do not move."""
    model = tiny_mllm(data.tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    align = [{"name": "align", "steps": 3, "lr": 3e-3, "train": ["projector"], "tasks": {"caption": 1}}]
    train_mllm(_cfg(tmp_path, phases=align), model, data, CPU, 0, {}, QUIET)
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"input_codes", "projector", "special_embeddings"}
    # the embedding the LM reads at an added token is that table's row, not the LM's
    token = model.special_tokens()[0]
    ids = torch.tensor([[model.config.token_id(token)]])
    assert torch.equal(model.embed(ids)[0, 0], model.special_embeddings.weight[0])
    assert not torch.equal(model.embed(ids)[0, 0], model.llm.get_input_embeddings().weight[ids[0, 0]])


def test_a_changed_configuration_does_not_resume_old_checkpoints(data, tmp_path):
    _train(data, tmp_path, run_phases=["understand"])
    rows, _ = _train(data, tmp_path, run_phases=["understand"], batch_size=8)
    assert len(rows) == 4  # started over
    assert any(p.name.startswith("checkpoints.stale-") for p in tmp_path.iterdir())


@pytest.mark.parametrize("zero", [2, 3])
def test_two_zero_processes_match_one_process_with_the_same_global_batch(tmp_path, zero):
    """Two phases (the second wraps the same module in a new engine), 2 ranks x 1 micro batch under
    ZeRO-2/3 against 1 process x 2 micro batches under ZeRO-0: same losses, same final weights."""
    script = REPO / "tests" / "scripts" / "mllm_train_steps.py"
    corpus = str(write_token_corpus(tmp_path / "tokens", {"train": [11, 14]}, qa_every=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.json"), "2", str(tmp_path / "w1"), "0", corpus],
                   check=True, env=env, cwd=REPO, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    str(script), str(tmp_path / "two.json"), "1", str(tmp_path / "w2"), str(zero), corpus],
                   check=True, env=env, cwd=REPO, timeout=300)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert len(one["losses"]) == 4 and one["losses"][1] < one["losses"][0]
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)
    assert two["weights"] == pytest.approx(one["weights"], rel=1e-5)


def test_the_trainer_streams_its_split_instead_of_holding_it(tmp_path, monkeypatch):
    """400 token samples, 6 steps of 4 sequences: a trainer that read its split up front would decode all 400."""
    data = _source(write_token_corpus(tmp_path / "tokens", {"train": [200, 200]}))
    decoded = []
    real = tokens_module.read_codes
    monkeypatch.setattr(tokens_module, "read_codes", lambda *a: decoded.append(a[2]) or real(*a))
    monkeypatch.setattr("dualtoken.data.sequences.read_codes", tokens_module.read_codes)
    rows, _ = _train(data, tmp_path / "w", shuffle_buffer=16,
                     phases=[{"name": "all", "steps": 6, "lr": 3e-3, "train": ["projector", "llm", "heads"],
                              "tasks": {"caption": 1, "vqa": 1, "t2i": 2}}])
    assert len(rows) == 6
    assert len(decoded) <= 3 * (16 + 64)  # per task stream: its window and one piece, not the corpus


def test_each_phase_takes_its_own_batch_size(data):
    """A phase's ``batch_size`` (the paper's 64 / 256 / 128 / 256) decides how many sequences each of its steps
    reads; a phase without one takes ``mllm.batch_size``. An uneven split names the phase's key."""
    cfg = _cfg(Path("unused"), phases=[
        {"name": "understand", "steps": 1, "lr": 1e-3, "batch_size": 8, "train": ["llm"], "tasks": {"caption": 1}},
        {"name": "generate", "steps": 1, "lr": 1e-3, "train": ["heads"], "tasks": {"t2i": 1}}])
    read = []
    for phase in cfg.phases:
        phase_data = PhaseData.open(cfg, data, CPU, 0, phase)
        with phase_data.loader:
            read.append(len(phase_data.step_sequences(0.0)))
    assert read == [8, 4]
    with pytest.raises(ValueError, match=r"mllm\.phases\.understand\.batch_size \(8\) must be divisible"):
        phase_micro_batch(cfg, cfg.phases[0], 3)
    assert [(p.lr, p.batch_size) for p in MllmConfig().phases] == [(1e-3, 64), (2e-5, 256), (1e-4, 128),
                                                                   (1e-5, 256)]
