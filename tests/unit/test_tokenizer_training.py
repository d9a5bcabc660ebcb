"""Tokenizer training: losses fall when overfitting one batch, freezing schedules, a killed run resumes with
the uninterrupted losses (through the streaming loader, with workers), the trainer streams rather than holds
its split, SigLIP initialisation from a saved checkpoint, metrics on known inputs."""

import math
import os
import signal

import pytest
import torch
from rich.console import Console

from dualtoken.data import curated as curated_module
from dualtoken.data.curated import to_model_input
from dualtoken.data.shards import split_shards
from dualtoken.evaluation.tokenizer import codebook_usage
from dualtoken.metrics.reconstruction import psnr, ssim
from dualtoken.models.discriminator import PatchDiscriminator, hinge_g_loss
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.training.distributed import DistContext
from dualtoken.training.gan import GanSchedule
from dualtoken.training.tokenizer import Objective, train_tokenizer
from dualtoken.training.tokenizer_losses import apply_stage, stage_plan, teacher_feature_distance
from tiny import TOKENIZER, tiny_split, tiny_teacher, tiny_tokenizer_config, tokenizer_cfg, write_curated_corpus

CPU = DistContext(0, 1, 0, torch.device("cpu"))
QUIET = Console(quiet=True)


class Killed(Exception):
    pass


GAN_NOW = GanSchedule(start=0, epoch_steps=1, total=1, d_loss_weight=0.75, restart_epochs=None)


def _model(teacher):
    torch.manual_seed(1)
    return DualTokenModel.from_siglip(teacher.vision_model, tiny_tokenizer_config())


def _shards(tmp_path, sizes):
    return split_shards(write_curated_corpus(tmp_path / "corpus", {"train": sizes}), "train")


def test_from_siglip_loads_a_locally_saved_checkpoint(tmp_path):
    teacher = tiny_teacher()
    teacher.vision_model.save_pretrained(tmp_path / "siglip")
    model = DualTokenModel.from_siglip(tmp_path / "siglip", tiny_tokenizer_config())
    ours, theirs = model.vision.state_dict(), teacher.vision_model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    images = to_model_input(tiny_split(2).images)
    with torch.no_grad():  # the tower before any quantizer: same pooled output as the teacher's tower
        assert torch.allclose(model.vision(images).pooler_output, teacher.vision_model(images).pooler_output)
    with pytest.raises(ValueError, match="layer_semantic"):
        DualTokenModel.from_siglip(tmp_path / "siglip", tiny_tokenizer_config(), layer_semantic=9)


def test_overfitting_one_batch_lowers_every_loss(tmp_path):
    teacher = tiny_teacher()
    data = _shards(tmp_path, [8])  # every step: these 8 images, in another order
    seen: list[dict] = []
    cfg = tokenizer_cfg(tmp_path, steps=60, losses={"gan_start_step": 1000}, runtime={"checkpoint_every": 1000})
    train_tokenizer(cfg, _model(teacher), teacher.vision_model, data, CPU, 0, {}, QUIET,
                    sink=lambda step, m: seen.append(m))
    first, last = seen[0], seen[-1]
    for term in ("reconstruction", "semantic_tap", "semantic_pooled", "perceptual", "loss"):
        assert last[term] < 0.7 * first[term], (term, first[term], last[term])


def test_the_adaptive_gan_weight_balances_the_unweighted_reconstruction_loss(tmp_path):
    """As the released code: ||grad nll|| / ||grad g|| at the decoder's last layer with nll = MSE + perceptual
    weight x perceptual, the reconstruction weight (5) left out. So the weight does not move with that weight, and
    equals the ratio computed here by hand."""
    teacher = tiny_teacher()
    images = to_model_input(tiny_split(4).images)
    reported = []
    for weight in (1.0, 5.0):
        cfg = tokenizer_cfg(tmp_path, losses={"reconstruction": weight, "gan_start_step": 0, "gan_weight_min": 0.0,
                                              "gan_weight_max": 1e9, "perceptual_kind": "none"})
        model = _model(teacher).eval()  # no codebook update between the objective's forward and ours
        torch.manual_seed(2)
        disc = PatchDiscriminator(8, 2)
        objective = Objective(cfg, stage_plan(1, model.config), teacher.vision_model, disc, None, GAN_NOW)
        reported.append(objective(model, model, images, step=0)[1]["gan_adaptive_weight"])
    out = model(images)
    last = model.decoder_last_layer
    mse = torch.nn.functional.mse_loss(out.reconstruction, images)
    by_hand = (torch.autograd.grad(mse, last, retain_graph=True)[0].norm()
               / (torch.autograd.grad(hinge_g_loss(disc(out.reconstruction)), last)[0].norm() + 1e-4))
    assert reported[0] == pytest.approx(reported[1], rel=1e-5)
    assert reported[1] == pytest.approx(by_hand.item(), rel=1e-5)


def test_killed_run_resumes_with_the_same_losses(tmp_path, monkeypatch):
    import dualtoken.training.tokenizer as trainer

    renewals = []

    def renew(disc, fresh, optimizer):
        renewals.append(sum(len(state) for state in optimizer.state.values()) > 0)  # it had moments to forget
        trainer_renew(disc, fresh, optimizer)
        assert not optimizer.state and all(torch.equal(a, b) for a, b in
                                           zip(disc.state_dict().values(), fresh.state_dict().values(), strict=True))

    trainer_renew = trainer.renew_discriminator
    monkeypatch.setattr(trainer, "renew_discriminator", renew)
    teacher = tiny_teacher()
    data = _shards(tmp_path, [10, 7, 9])  # 26 samples: steps of 8 cross shard and epoch boundaries
    # 3 steps an epoch: the GAN from step 2, a fresh discriminator at step 3 (where the resumed run starts)
    gan = {"discriminator_restart_epochs": 1}
    full = train_tokenizer(tokenizer_cfg(tmp_path / "a", shuffle_buffer=8, runtime={"loader_workers": 2},
                                         losses=gan), _model(teacher), teacher.vision_model, data, CPU, 0, {}, QUIET)
    assert renewals == [True]

    def kill_at_step_5(step, metrics):
        if step == 5:
            raise Killed

    cfg = tokenizer_cfg(tmp_path / "b", shuffle_buffer=8, losses=gan)  # 0 workers: the same batches
    with pytest.raises(Killed):  # dies after step 5, the last checkpoint being step 3
        train_tokenizer(cfg, _model(teacher), teacher.vision_model, data, CPU, 0, {}, QUIET, sink=kill_at_step_5)
    torch.manual_seed(99)  # a new process starts from other RNG state and other weights
    fresh = DualTokenModel.from_siglip(teacher.vision_model, tiny_tokenizer_config())
    rest = train_tokenizer(cfg, fresh, teacher.vision_model, data, CPU, 0, {}, QUIET)
    assert len(full) == 6 and len(rest) == 3
    assert rest == full[3:]  # bit-identical: weights, both optimizers, EMA codebooks, sampler and RNG restored
    assert renewals == [True, True, True]  # the killed run passed step 3, and the resumed one starts there

    changed = tokenizer_cfg(tmp_path / "b", shuffle_buffer=8, steps=7)  # another configuration: set aside
    again = train_tokenizer(changed, _model(teacher), teacher.vision_model, data, CPU, 0, {"other": 1}, QUIET)
    assert len(again) == 7 and any((tmp_path / "b").glob("checkpoints.stale-*"))


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_a_schedulers_signal_checkpoints_the_step_and_the_rerun_resumes(tmp_path, signum):
    """Slurm's warning before the time limit (USR1) or a preemption (TERM) mid-run: the trainer finishes the
    step, writes its checkpoint and raises Preempted; the rerun goes on with the uninterrupted run's losses."""
    from dualtoken.training.preemption import REQUEUE_EXIT, Preempted

    teacher = tiny_teacher()
    data = _shards(tmp_path, [10, 7, 9])
    full = train_tokenizer(tokenizer_cfg(tmp_path / "a", shuffle_buffer=8), _model(teacher), teacher.vision_model,
                           data, CPU, 0, {}, QUIET)

    def signal_in_step_2(step, metrics):
        if step == 2:
            os.kill(os.getpid(), signum)

    cfg = tokenizer_cfg(tmp_path / "b", shuffle_buffer=8, runtime={"checkpoint_every": 1000})
    before = signal.getsignal(signum)
    with pytest.raises(Preempted, match=r"after step 2/6") as stopped:
        train_tokenizer(cfg, _model(teacher), teacher.vision_model, data, CPU, 0, {}, QUIET, sink=signal_in_step_2)
    assert stopped.value.exit_code == REQUEUE_EXIT and signal.getsignal(signum) == before  # handlers restored
    assert [p.name for p in (tmp_path / "b" / "checkpoints").glob("step-*")] == ["step-00000002"]
    rest = train_tokenizer(cfg, _model(teacher), teacher.vision_model, data, CPU, 0, {}, QUIET)
    assert rest == full[2:]


@pytest.mark.parametrize(("stage", "tower_trains", "pixel_trains"), [(0, False, True), (1, True, True),
                                                                      (2, True, False)])
def test_freezing_schedules(stage, tower_trains, pixel_trains):
    model = DualTokenModel(tiny_tokenizer_config()).train()
    apply_stage(model, stage_plan(stage, model.config))
    cfg = model.config
    assert model.semantic_down.linear.weight.requires_grad and model.vision.head.probe.requires_grad
    assert model.layers[cfg.layer_semantic - 1].mlp.fc1.weight.requires_grad == tower_trains
    assert model.vision.embeddings.patch_embedding.weight.requires_grad == (stage == 1)
    assert model.decoder_last_layer.requires_grad == pixel_trains
    assert model.pixel_quantizer.training == pixel_trains  # a frozen quantizer's EMA must not move


def test_teacher_perceptual_distance_is_zero_on_identical_images_only():
    tower = tiny_teacher().vision_model.eval()
    images = to_model_input(tiny_split(4).images)
    assert teacher_feature_distance(tower, images, images, (1,)).item() == pytest.approx(0.0, abs=1e-6)
    assert teacher_feature_distance(tower, images, images.flip(-1), (1,)).item() > 0.01


def test_psnr_and_ssim_on_known_inputs():
    a = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    b = (a.int() + 5).clamp(0, 255).to(torch.uint8)  # ~ every pixel off by 5: PSNR ~ 20 log10(255 / 5)
    assert psnr(a, b).mean().item() == pytest.approx(34.15, abs=0.3)
    assert ssim(a, a).min().item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(a, 255 - a).max().item() < 0.0  # an inverted image is anti-correlated
    assert ssim(a, b).min().item() > 0.95


def test_codebook_usage_counts_distinct_codes():
    codes = torch.tensor([[0, 1], [0, 2], [3, 2]])  # depth 0 uses {0, 3}, depth 1 uses {1, 2}
    shared = codebook_usage(codes, 8, shared=True)
    assert shared["per_depth"] == [0.25, 0.25] and shared["overall"] == 0.5
    assert codebook_usage(codes, 8, shared=False)["overall"] == 0.25



def test_lpips_loads_a_weight_file_strictly_and_measures_distance(tmp_path):
    from safetensors.torch import save_file

    from dualtoken.models.lpips import LPIPS

    torch.manual_seed(0)
    reference = LPIPS()
    for i in range(5):  # LPIPS heads are non-negative by construction
        head = getattr(reference, f"lin{i}").model[1]
        head.weight.data = head.weight.data.abs()
    save_file(reference.state_dict(), str(tmp_path / "lpips.safetensors"))
    lpips = LPIPS.from_file(tmp_path / "lpips.safetensors")
    images = to_model_input(tiny_split(2).images)
    assert lpips(images, images).item() == pytest.approx(0.0, abs=1e-6)
    assert lpips(images, images.flip(-1)).item() > lpips(images, images + 0.01).item() > 0
    save_file({"features.0.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(RuntimeError, match="Missing key"):
        LPIPS.from_file(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="perceptual_kind 'teacher'"):
        LPIPS.from_file(tmp_path / "none.safetensors")


def test_lpips_weights_merge_from_the_reference_files_and_are_required_by_default(tmp_path):
    """torchvision's VGG16 file (features + classifier) and the lpips package's heads become one strict file
    (through the command the error names); the default perceptual loss is LPIPS, so a run without the file
    fails at once, naming the key, the file and the command, instead of falling back to another loss."""
    from safetensors.torch import load_file

    from dualtoken.models import lpips as lpips_module
    from dualtoken.schema import ConfigError
    from dualtoken.training.tokenizer_config import LPIPS_WEIGHTS, TokenizerConfig
    from dualtoken.training.tokenizer_losses import perceptual_loss

    ours = lpips_module.LPIPS().state_dict()
    vgg16 = {k: v for k, v in ours.items() if k.startswith("features.")}
    vgg16 |= {"features.30.weight": torch.zeros(1), "classifier.0.weight": torch.zeros(4, 4)}  # dropped
    heads = {k: v for k, v in ours.items() if k.startswith("lin")}
    torch.save(vgg16, tmp_path / "vgg16.pth")
    torch.save(heads, tmp_path / "vgg.pth")
    out = tmp_path / "weights" / "lpips_vgg.safetensors"
    lpips_module.main([str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg.pth"), str(out)])
    merged = load_file(str(out))
    assert merged.keys() == ours.keys() and all(torch.equal(merged[k], ours[k]) for k in ours)
    assert lpips_module.LPIPS.from_file(out) is not None
    with pytest.raises(RuntimeError, match="lin4"):  # a heads file without the last head: named
        lpips_module.merge_reference_weights(vgg16, {k: v for k, v in heads.items() if not k.startswith("lin4")})

    losses = TokenizerConfig().losses
    assert losses.perceptual_kind == "lpips" and losses.lpips_weights == LPIPS_WEIGHTS
    missing = losses.model_copy(update={"lpips_weights": str(tmp_path / "absent.safetensors")})
    with pytest.raises(ConfigError, match=r"tokenizer\.losses\.lpips_weights: .*absent\.safetensors not found.*"
                                          r"python -m dualtoken\.models\.lpips"):
        perceptual_loss(missing, tiny_teacher().vision_model, 1, torch.device("cpu"))
    found = perceptual_loss(losses.model_copy(update={"lpips_weights": str(out)}), tiny_teacher().vision_model, 1,
                            torch.device("cpu"))
    images = to_model_input(tiny_split(2).images)
    assert found(images, images).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_each_stage_optimises_the_released_weights(tmp_path, stage):
    """Stage 0: 5 x pooled, no tap term, the pixel losses on; stage 1: 5 x tap (MSE + cos) + 1 x pooled; stage 2:
    1 x tap by cosine alone + 5 x pooled, no pixel losses. The loss is recomputed here from the model's outputs."""
    from dualtoken.training.tokenizer_losses import mse_cos, tower_states

    teacher = tiny_teacher()
    model = _model(teacher).eval()  # no codebook update between the objective's forward and ours
    plan = stage_plan(stage, model.config)
    apply_stage(model, plan)
    model.eval()
    cfg = tokenizer_cfg(tmp_path, stage=stage, losses={"gan_start_step": 0, "perceptual_kind": "none"})
    objective = Objective(cfg, plan, teacher.vision_model, PatchDiscriminator(8, 2), None, GAN_NOW)
    images = to_model_input(tiny_split(4).images)
    loss, report, _ = objective(model, model, images, step=0)

    layer = model.config.layer_semantic
    with torch.no_grad():
        out = model(images)
        states, pooled = tower_states(teacher.vision_model, images, (layer,), pooled=True)
        cos = (1 - torch.nn.functional.cosine_similarity(out.semantic_features, states[layer], dim=-1)).mean()
        tap = {0: mse_cos(out.semantic_features, states[layer]), 1: mse_cos(out.semantic_features, states[layer]),
               2: cos}[stage]
        tap_weight, pooled_weight = {0: (0.0, 5.0), 1: (5.0, 1.0), 2: (1.0, 5.0)}[stage]
        commitment = out.semantic.commitment_loss + out.semantic.codebook_loss
        by_hand = tap_weight * tap + pooled_weight * mse_cos(out.pooled, pooled)
        if stage != 2:
            commitment = commitment + out.pixel.commitment_loss + out.pixel.codebook_loss
            by_hand = by_hand + 5.0 * torch.nn.functional.mse_loss(out.reconstruction, images)
        by_hand = by_hand + 5.0 * commitment
    assert ("reconstruction" in report) == (stage != 2)
    assert objective.gan_active(0) == (stage == 1) and ("gan_generator" in report) == (stage == 1)
    if stage == 1:  # the GAN term is on top of the weighted sum
        by_hand = by_hand + 0.75 * report["gan_adaptive_weight"] * report["gan_generator"]
    assert report["semantic_tap"] == pytest.approx(tap.item(), rel=1e-5)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_the_gan_starts_half_an_epoch_in_unless_a_step_is_given(tmp_path):
    from dualtoken.data.shards import Shard
    from dualtoken.training.gan import gan_schedule

    train = [Shard("a", "a", 1000), Shard("b", "b", 600)]  # 1600 samples: 50 steps of 32 are an epoch
    schedule = gan_schedule(tokenizer_cfg(tmp_path, batch_size=32, losses={"gan_start_step": None}), train)
    assert (schedule.start, schedule.epoch_steps) == (25, 50)
    assert gan_schedule(tokenizer_cfg(tmp_path, batch_size=32, losses={"gan_start_step": 7}), train).start == 7


def test_the_discriminator_loss_counts_fully_only_in_the_epoch_the_gan_starts():
    mid = GanSchedule(start=25, epoch_steps=50, total=400, d_loss_weight=0.75, restart_epochs=None)
    assert [mid.d_weight(s) for s in (25, 49, 50, 399)] == [1.0, 1.0, 0.75, 0.75]
    late = GanSchedule(start=60, epoch_steps=50, total=400, d_loss_weight=0.75, restart_epochs=None)
    assert [late.d_weight(s) for s in (60, 99, 100)] == [1.0, 1.0, 0.75]
    assert mid.restarts() == []


def test_a_fresh_discriminator_every_n_epochs_restarts_its_lr_schedule():
    from dualtoken.training.config import OptimConfig

    schedule = GanSchedule(start=25, epoch_steps=50, total=400, d_loss_weight=0.75, restart_epochs=2)
    assert schedule.restarts() == [100, 200, 300]  # epochs 2, 4, 6 after the GAN's first (epoch 0)
    optim = OptimConfig(warmup_steps=0, min_lr_ratio=0.0)
    lr = [schedule.d_lr_multiplier(step - 25, optim) for step in range(25, 400)]
    assert lr[0] == 1.0 and lr[100 - 25] == lr[200 - 25] == lr[300 - 25] == 1.0  # each life starts at the peak
    first_life = 100 - 25  # steps 25-99, cosine to 0 over 75 steps
    assert lr[first_life - 1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 74 / 75)))
    assert lr[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))  # the last life: 300-399


def test_tokenizer_overrides_are_checked_against_the_model_config(tmp_path):
    from dualtoken.config import parse_config
    from dualtoken.schema import ConfigError
    from dualtoken.training.tokenizer import build_tokenizer_model

    base = {"data": {"sources": [{"kind": "demo"}]}}
    teacher = tiny_teacher().vision_model
    with pytest.raises(ConfigError, match=r"tokenizer\.overrides\.layr_pixel: unknown key"):
        build_tokenizer_model(
            parse_config({**base, "tokenizer": {"overrides": {"layr_pixel": 1}}}).tokenizer, teacher)
    with pytest.raises(ConfigError, match=r"tokenizer\.overrides: .*layer_semantic"):
        build_tokenizer_model(
            parse_config({**base, "tokenizer": {"overrides": {"layer_semantic": 7}}}).tokenizer, teacher)
    with pytest.raises(ConfigError, match=r"tokenizer\.architecture: unknown tokenizer config"):
        build_tokenizer_model(
            parse_config({**base, "tokenizer": {"architecture": "vit-huge"}}).tokenizer, teacher)
    model = build_tokenizer_model(
        parse_config({**base, "tokenizer": {"overrides": {**TOKENIZER, "pixel_depth": 3}}}).tokenizer, teacher)
    assert model.config.pixel_depth == 3 and model.config.vision_config.image_size == 32  # the teacher's tower wins


def test_gpu_code_paths_bf16_autocast_and_gradient_checkpointing_run_on_cpu(tmp_path):
    """What `precision: auto` and `gradient_checkpointing: auto` switch on with CUDA, exercised on CPU."""
    teacher = tiny_teacher()
    model = _model(teacher)
    cfg = tokenizer_cfg(tmp_path, steps=3, losses={"gan_start_step": 1},
                        runtime={"precision": "bf16", "gradient_checkpointing": "on", "checkpoint_every": 1000})
    losses = train_tokenizer(cfg, model, teacher.vision_model, _shards(tmp_path, [16]), CPU, 0, {}, QUIET)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert all(layer.gradient_checkpointing for layer in model.layers)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: fp32 master weights


def test_logging_a_grid_keeps_a_frozen_quantizer_frozen(tmp_path):
    from dualtoken.training.tokenizer import reconstruction_grid

    model = DualTokenModel(tiny_tokenizer_config()).train()
    apply_stage(model, stage_plan(2, model.config))
    grid = reconstruction_grid(model, tiny_split(3).images, torch.device("cpu"))
    assert grid.shape == (2 * 32, 3 * 32, 3) and grid.dtype == torch.uint8
    assert model.training and model.semantic_quantizer.training and not model.pixel_quantizer.training


def test_the_trainer_streams_its_split_instead_of_holding_it(tmp_path, monkeypatch):
    """600 images, 10 steps of 8: a trainer that read its split up front would decode all 600."""
    data = _shards(tmp_path, [200, 200, 200])
    decoded = []
    real = curated_module.decode_image
    monkeypatch.setattr(curated_module, "decode_image", lambda data, where: decoded.append(where) or real(data, where))
    teacher = tiny_teacher()
    cfg = tokenizer_cfg(tmp_path / "w", steps=10, shuffle_buffer=32, runtime={"loader_workers": 0})
    train_tokenizer(cfg, _model(teacher), teacher.vision_model, data, CPU, 0, {}, QUIET)
    assert 80 <= len(decoded) <= 80 + 32 + 64  # the batches, the shuffle window, one piece ahead
