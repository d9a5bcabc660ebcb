"""Evaluation metrics on inputs with known answers, and against independent implementations."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dualtoken.data.texts import TextStats
from dualtoken.evaluation.ablation import VARIANTS, ablation_table, model_overrides, table_markdown, variant_config
from dualtoken.evaluation.captioning import caption_scores, coco_tokens
from dualtoken.evaluation.config import AblationConfig
from dualtoken.evaluation.distance import frechet_distance
from dualtoken.evaluation.mllm import score_answers
from dualtoken.evaluation.tokenizer import teacher_quantized_embedding
from dualtoken.metrics.reconstruction import psnr, ssim
from dualtoken.metrics.zeroshot import TASKS, zero_shot
from dualtoken.models.configuration import named_config
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.tokenization.stats import code_statistics, depth_histogram
from dualtoken.training.tokenizer_config import TokenizerConfig
from tiny import tiny_split, tiny_teacher, tiny_tokenizer_config


def _images(n=3, size=40, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


def test_frechet_distance_matches_the_scipy_sqrtm_formula_and_is_zero_for_a_set_with_itself():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(size=(250, 16)) * 1.5 + 0.3
    mu_a, mu_b, s_a, s_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b).real  # pytorch-fid's formula
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(root)
    assert frechet_distance(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(torch.tensor(a), torch.tensor(a)) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([3.0] + [0.0] * 15, dtype=torch.float64)  # same covariance, mean moved by 3
    assert frechet_distance(torch.tensor(a), torch.tensor(a) + shift) == pytest.approx(9.0, rel=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(torch.zeros(1, 4), torch.zeros(5, 4))


def test_psnr_and_ssim_agree_with_scikit_image():
    ref = _images()
    noisy = (ref.int() + torch.from_numpy(np.random.default_rng(1).integers(-30, 31, ref.shape))).clamp(0, 255)
    noisy = noisy.to(torch.uint8)
    ours_ssim, ours_psnr = ssim(ref, noisy), psnr(ref, noisy)
    for i in range(len(ref)):
        x, y = ref[i].numpy(), noisy[i].numpy()
        expected = structural_similarity(x, y, channel_axis=0, data_range=255, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
        assert float(ours_ssim[i]) == pytest.approx(expected, abs=1e-4)
        assert float(ours_psnr[i]) == pytest.approx(peak_signal_noise_ratio(x, y, data_range=255), abs=1e-4)
    assert torch.allclose(ssim(ref, ref), torch.ones(len(ref)))
    shifted = (ref.int() + 5).clamp(max=255).to(torch.uint8)
    flat = torch.full_like(ref, 100)
    assert float(psnr(flat, flat + 5)[0]) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-4)
    assert bool((psnr(ref, shifted) > 30).all())


def test_caption_scores_on_known_values():
    assert coco_tokens("A red circle, at the top-left.") == "a red circle at the top left"
    captions = ["a small red circle", "a blue square on grey", "two green stars at the top"]
    exact = caption_scores([[c] for c in captions], captions)
    assert exact["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert exact["cider_d"] == pytest.approx(10.0, abs=1e-6)  # x10, all 1- to 4-gram vectors identical
    # a 3-word caption has no 4-grams: that n's similarity is 0, so the image scores 10 x 3/4
    short = caption_scores([["a red circle"], ["a blue square on grey"]], ["a red circle", "a blue square on grey"])
    assert short["cider_d"] == pytest.approx((7.5 + 10) / 2, abs=1e-6)
    # p1..p4 = 4/5, 3/4, 2/3, 1/2, equal lengths (no brevity penalty): BLEU-4 = 0.2 ** 0.25
    assert caption_scores([["a b c d f"]], ["a b c d e"])["bleu4"] == pytest.approx(0.2**0.25, abs=1e-6)
    swapped = caption_scores([["a red circle"], ["a blue square on grey"], ["two green stars"]],
                             ["two green stars", "a red circle", "a blue square on grey"])
    assert swapped["cider_d"] < 0.5 and swapped["bleu4"] < 0.01
    with pytest.raises(ValueError, match="one candidate per image"):
        caption_scores([["a"]], ["a", "b"])


def test_vqa_scores_per_type_beside_the_majority_answer():
    train = [{"qa": [{"type": "colour", "answer": "red"}, {"type": "count", "answer": "two"}]},
             {"qa": [{"type": "colour", "answer": "Red."}, {"type": "count", "answer": "one"}]},
             {"qa": [{"type": "colour", "answer": "blue"}, {"type": "count", "answer": "one"}]}]
    stats = TextStats()
    for meta in train:
        stats.add(meta)
    majority = TextStats.from_dict(stats.to_dict(top=1)).majority()  # what the tokenize stage records
    assert majority == {"colour": "red", "count": "one"}
    qas = [{"type": "colour", "answer": "red"}, {"type": "colour", "answer": "blue"},
           {"type": "count", "answer": "two"}, {"type": "count", "answer": "one"}]
    scored = score_answers(["Red", "red", "two.", "three"], qas, majority)
    assert scored["accuracy"] == 0.5 and scored["majority_baseline"] == 0.5 and scored["questions"] == 4
    assert scored["per_type"]["colour"] == {"accuracy": 0.5, "questions": 2, "majority_baseline": 0.5}
    assert scored["per_type"]["count"]["accuracy"] == 0.5 and scored["correct"] == [True, False, True, False]


def test_zero_shot_accuracy_follows_a_known_confusion_matrix():
    task = next(t for t in TASKS if t.name == "colour")
    k = len(task.classes)

    def embed_texts(prompts):  # a colour prompt -> the one-hot of its colour; other tasks' prompts -> zeros
        def one(p):
            hits = [i for i, c in enumerate(task.classes) if f" {c} " in f" {p} "]
            return torch.eye(k)[hits[0]] if hits else torch.zeros(k)
        return torch.stack([one(p) for p in prompts])

    confusion = torch.zeros(k, k, dtype=torch.long)  # rows: true class, columns: predicted
    confusion[0, 0], confusion[0, 1], confusion[1, 1], confusion[2, 0], confusion[3, 3] = 3, 1, 2, 2, 1
    metas, embeds = [], []
    for true in range(k):
        for pred in range(k):
            for _ in range(int(confusion[true, pred])):
                metas.append({"attributes": {"kind": "digit", "digit": 1, "colour": task.classes[true]}})
                embeds.append(torch.eye(k)[pred])
    result = zero_shot(torch.stack(embeds), metas, embed_texts)["colour"]
    assert result["images"] == int(confusion.sum())
    assert result["accuracy"] == pytest.approx(float(confusion.trace()) / float(confusion.sum()))


def test_code_perplexity_is_the_number_of_equally_used_codes():
    uniform = np.tile(np.arange(16), 4).reshape(-1, 1)  # 16 codes, equally used, one depth
    single = np.zeros((64, 1), dtype=np.int64)
    stats = code_statistics({"pixel": depth_histogram(uniform, 32), "semantic": depth_histogram(single, 32)})
    assert stats["pixel"]["perplexity"]["d1"] == pytest.approx(16.0) and stats["pixel"]["usage"]["d1"] == 0.5
    assert stats["semantic"]["perplexity"]["d1"] == pytest.approx(1.0)


def test_teacher_with_quantized_features_equals_the_semantic_path_when_the_towers_are_the_same():
    teacher = tiny_teacher().eval()
    model = DualTokenModel.from_siglip(teacher.vision_model, tiny_tokenizer_config()).eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher_quantized_embedding(teacher, model, pixels), model.semantic_embedding(pixels),
                              atol=1e-5)


def test_ablation_variants_share_the_budget_and_differ_where_the_paper_says():
    base = named_config("demo")
    tokenizer, ablation = TokenizerConfig(steps=999, batch_size=64), AblationConfig(steps=7, batch_size=4)
    configs = {name: variant_config(tokenizer, ablation, name, base) for name in VARIANTS}
    assert {(c.steps, c.batch_size, c.stage, c.register_as) for c in configs.values()} == {(7, 4, 1, None)}
    assert configs["d_dualtoken"].overrides == {} and configs["d_dualtoken"].losses == tokenizer.losses
    one = configs["a_one_codebook"]
    assert one.overrides["single_codebook"] and one.overrides["layer_pixel"] == base.layer_semantic
    assert one.losses == tokenizer.losses and one.losses.stage_1.semantic_tap > 0
    for name in ("b_recon_semantic_layer", "c_recon_pixel_layer"):
        c = configs[name]
        assert c.losses.stage_1.semantic_tap == c.losses.stage_1.semantic_pooled == 0.0 and c.losses.reconstruction > 0
    assert model_overrides("b_recon_semantic_layer", base)["layer_pixel"] == base.layer_semantic
    # (c) is (d)'s model, pixel tap and shortcut included: only the semantic losses differ between them
    assert configs["c_recon_pixel_layer"].overrides == configs["d_dualtoken"].overrides == {}
    d_losses = configs["d_dualtoken"].losses
    assert configs["c_recon_pixel_layer"].losses == d_losses.model_copy(update={"stage_1": d_losses.stage_1.model_copy(
        update={"semantic_tap": 0.0, "semantic_pooled": 0.0})})
    assert len({c.output_dir for c in configs.values()}) == len(VARIANTS)


def test_ablation_table_has_the_teacher_rows_and_only_the_variants_that_ran():
    def result(psnr_value, zs):
        return {"reconstruction": {"psnr": psnr_value, "ssim": 0.5, "fd_name": "FD-teacher", "FD-teacher": 12.0},
                "zero_shot": {"shape": {"teacher": 0.8, "teacher_quantized": 0.7, "tokenizer": zs, "images": 4},
                              "colour": {"teacher": 0.6, "teacher_quantized": 0.5, "tokenizer": zs, "images": 4}},
                "steps": 3, "train_seconds": 1.0}

    table = ablation_table({"d_dualtoken": result(20.0, 0.6), "b_recon_semantic_layer": result(21.0, 0.1)})
    rows = {r["variant"]: r for r in table["rows"]}
    assert list(rows) == ["teacher_continuous", "teacher_dualtoken_quantizer", "b_recon_semantic_layer",
                          "d_dualtoken"]
    assert rows["teacher_continuous"]["zero_shot"] == pytest.approx(0.7)
    assert rows["teacher_dualtoken_quantizer"]["zero_shot"] == pytest.approx(0.6)
    assert rows["teacher_dualtoken_quantizer"]["paper"]["zero_shot"] is None  # not the paper's quantity
    assert rows["b_recon_semantic_layer"]["zero_shot"] is None  # no semantic objective: '-' as in the paper
    assert rows["d_dualtoken"]["fd"] == 12.0 and rows["d_dualtoken"]["paper"]["psnr"] == 28.69
    markdown = table_markdown(table)
    assert "| FD-teacher |" in markdown and "(d) DualToken" in markdown and "(a)" not in markdown


def test_single_codebook_model_decodes_its_semantic_codes_and_round_trips(tmp_path):
    cfg = named_config("demo", single_codebook=True, layer_pixel=5, layer_shortcut=None)
    assert cfg.pixel_depth == cfg.semantic_depth and cfg.pixel_codebook_size == cfg.semantic_codebook_size
    model = DualTokenModel(cfg).eval()
    assert "pixel_quantizer" not in model._modules and model.pixel_quantizer is model.semantic_quantizer
    pixels = torch.randn(2, 3, 64, 64)
    out = model(pixels)
    assert out.pixel is out.semantic and out.reconstruction.shape == pixels.shape
    codes = model.encode(pixels)
    assert torch.equal(codes.pixel, codes.semantic)
    model.save_pretrained(tmp_path)
    again = DualTokenModel.from_pretrained(tmp_path).eval()
    assert torch.allclose(again.reconstruct(pixels), model.reconstruct(pixels))
    with pytest.raises(ValueError, match="single_codebook quantizes one tap"):
        named_config("demo", single_codebook=True)


def test_tiny_split_feeds_every_zero_shot_task_with_a_label():
    split = tiny_split(40)
    from dualtoken.metrics.zeroshot import label_of

    counts = {t.name: sum(label_of(t.name, m) is not None for m in split.meta) for t in TASKS}
    assert counts["count"] == sum(m["attributes"].get("kind") == "shapes" for m in split.meta) > 0
    assert 0 < counts["shape"] < counts["count"]


def test_the_feature_extractor_is_named_for_its_features(tmp_path):
    from safetensors.torch import save_file

    from dualtoken.evaluation.features import feature_extractor
    from dualtoken.models.inception import FIDInceptionV3

    weights = tmp_path / "inception.safetensors"
    save_file(FIDInceptionV3().state_dict(), str(weights))
    images = _images(n=2, size=32)
    inception = feature_extractor(str(weights), None, torch.device("cpu"))
    assert inception.name == "FID-inception" and inception.features(images, 2).shape == (2, 2048)
    teacher = feature_extractor(None, tiny_teacher().eval(), torch.device("cpu"))
    assert teacher.name == "FD-teacher" and teacher.features(images, 1).shape == (2, 32)


def test_reconstruction_quality_reports_lpips_when_given():
    from dualtoken.evaluation.tokenizer import Reconstructed, reconstruction_quality
    from dualtoken.models.lpips import LPIPS

    torch.manual_seed(0)
    lpips = LPIPS().eval().requires_grad_(False)
    for i in range(5):  # the released heads are non-negative weights per channel
        getattr(lpips, f"lin{i}").model[1].weight.abs_()
    images = _images(n=4, size=32)
    noisy = (images.int() + 40).clamp(max=255).to(torch.uint8)
    codes = torch.zeros(4, 2, 2, 1, dtype=torch.long)
    same = reconstruction_quality(Reconstructed(images, images, codes, codes), 2, lpips)
    assert same["lpips"] == pytest.approx(0.0, abs=1e-6) and same["psnr"] > 100
    worse = reconstruction_quality(Reconstructed(images, noisy, codes, codes), 3, lpips)
    assert worse["lpips"] > 0
    assert "lpips" not in reconstruction_quality(Reconstructed(images, noisy, codes, codes), 2)


def test_spread_takes_evenly_spaced_items_and_none_for_zero():
    from dualtoken.evaluation.mllm import spread

    assert spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert spread(list(range(3)), 5) == [0, 1, 2] and spread(list(range(3)), 0) == []
