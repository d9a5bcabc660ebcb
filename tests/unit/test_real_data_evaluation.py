"""Evaluation on real data by the paper's protocols, on small labelled data made here: zero-shot for any
labelled source (class names + prompt templates, the 80 OpenAI ImageNet ones a named set), image-text R@1
through the tokenizer's quantized path, and rFID as clean-fid measures it (antialiased bicubic resize, an
optional JPEG round trip, the whole split streamed)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dualtoken.data.curated import iter_image_batches
from dualtoken.evaluation.config import EvaluateConfig, FidConfig
from dualtoken.evaluation.distance import RunningMoments, feature_moments, frechet_distance
from dualtoken.evaluation.features import FeatureExtractor, clean_resize
from dualtoken.evaluation.fid import jpeg_round_trip, reconstruction_fd
from dualtoken.evaluation.tokenizer import path_embeddings, retrieval_paths, zero_shot_paths, zero_shot_tasks
from dualtoken.metrics.prompts import OPENAI_IMAGENET, read_classes, read_templates
from dualtoken.metrics.zeroshot import TASKS, labelled_task, zero_shot
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.models.teacher import text_embedder
from dualtoken.schema import ConfigError
from dualtoken.text import train_bpe
from tiny import tiny_split, tiny_teacher, tiny_tokenizer_config, write_curated_corpus

SHAPE = next(t for t in TASKS if t.name == "shape")
MEAN_COLOUR = FeatureExtractor("FD-mean-colour", "per-channel means", lambda x: x.float().mean((2, 3)))


def _labelled(split):
    """The demo scenes with one shape, labelled with its name (half by name, half by class index)."""
    for i, meta in enumerate(split.meta):
        attrs = meta["attributes"]
        if attrs.get("kind") == "shapes" and attrs.get("count") == 1:
            name = attrs["objects"][0]["shape"]
            meta["label"] = name if i % 2 else SHAPE.classes.index(name)
    return split


def test_the_openai_imagenet_set_has_its_80_templates_and_files_are_read_strictly(tmp_path):
    assert len(OPENAI_IMAGENET) == len(set(OPENAI_IMAGENET)) == 80 and all("{c}" in t for t in OPENAI_IMAGENET)
    assert read_templates("openai-imagenet") == OPENAI_IMAGENET and read_templates("photo") == ("a photo of a {c}.",)
    (tmp_path / "t.txt").write_text("a {c}\n\nart of a {c}\n")
    assert read_templates(str(tmp_path / "t.txt")) == ("a {c}", "art of a {c}")
    (tmp_path / "bad.txt").write_text("a {c}\nno class here\n")
    with pytest.raises(ValueError, match="no class here"):
        read_templates(str(tmp_path / "bad.txt"))
    with pytest.raises(FileNotFoundError, match="neither a named set"):
        read_templates("imagenet-81")
    (tmp_path / "classes.txt").write_text("tench\ngoldfish\ntench\n")
    with pytest.raises(ValueError, match=r"repeated: \['tench'\]"):
        read_classes(tmp_path / "classes.txt")


def test_a_labelled_task_reads_names_indices_and_nested_fields_and_names_a_stray_label():
    task = labelled_task("fish", ("tench", "goldfish"), ("a photo of a {c}.",), "info.label", "photo")
    assert task.label({"info": {"label": "goldfish"}}) == "goldfish" and task.label({"info": {"label": 0}}) == "tench"
    assert task.label({"captions": ["a fish"]}) is None  # no label: sits the task out
    with pytest.raises(ValueError, match=r"task 'fish': label 'shark' .*field 'info\.label'"):
        task.label({"info": {"label": "shark"}})
    with pytest.raises(ValueError, match="label 2"):
        task.label({"info": {"label": 2}})
    with pytest.raises(ValueError, match="none of the 1 images has a label"):  # configured: never silently empty
        zero_shot(torch.eye(2)[:1], [{"captions": ["x"]}], lambda p: torch.ones(len(p), 2), (task,))


def test_a_labelled_source_scores_as_the_built_in_task_with_the_same_classes_and_prompts(tmp_path):
    """Labels from a metadata field (names and indices mixed) through the real tiny teacher and tokenizer: the
    same accuracy, image count and prompts as the built-in shape task, on every path."""
    split = _labelled(tiny_split(40))
    (tmp_path / "shapes.txt").write_text("\n".join(SHAPE.classes) + "\n")
    (tmp_path / "prompts.txt").write_text("\n".join(SHAPE.templates) + "\n")
    e = EvaluateConfig(zero_shot=[{"name": "shapes", "classes": str(tmp_path / "shapes.txt"),
                                   "templates": str(tmp_path / "prompts.txt")}])
    tasks = zero_shot_tasks(e)
    text = train_bpe([c for m in split.meta for c in m["captions"]] + [p for t in TASKS for c in t.classes
                                                                        for p in t.prompts(c)], 300)
    teacher = tiny_teacher(vocab_size=len(text), pad_token_id=text.pad_token_id).eval()
    model = DualTokenModel.from_siglip(teacher.vision_model, tiny_tokenizer_config()).eval()
    embeds = path_embeddings(model, teacher, split.images, 16, torch.device("cpu"))
    embed_texts = text_embedder(teacher, text, 16, torch.device("cpu"))
    result = zero_shot_paths(embeds, split.meta, embed_texts, tasks)
    ours, builtin = result["shapes"], result["shape"]
    assert ours["images"] == builtin["images"] == sum("label" in m for m in split.meta) > 0
    assert all(ours[p] == builtin[p] for p in ("teacher", "teacher_quantized", "tokenizer"))
    assert ours["classes"] == len(SHAPE.classes) and ours["templates"].endswith(f"({len(SHAPE.templates)})")


def test_zero_shot_tasks_name_the_key_of_a_bad_file(tmp_path):
    with pytest.raises(ConfigError, match=r"evaluate\.zero_shot\.0\.classes: class-names file .* not found"):
        zero_shot_tasks(EvaluateConfig(zero_shot=[{"name": "in1k", "classes": str(tmp_path / "none.txt")}]))
    (tmp_path / "c.txt").write_text("a\nb\n")
    with pytest.raises(ConfigError, match=r"evaluate\.zero_shot\.0\.templates: "):
        zero_shot_tasks(EvaluateConfig(zero_shot=[{"name": "x", "classes": str(tmp_path / "c.txt"),
                                                   "templates": "no-such-set"}]))
    with pytest.raises(ConfigError, match=r"evaluate\.zero_shot\.0\.name: 'shape' is a demo attribute task"):
        zero_shot_tasks(EvaluateConfig(zero_shot=[{"name": "shape", "classes": str(tmp_path / "c.txt")}]))
    with pytest.raises(ValueError, match="repeated"):
        EvaluateConfig(zero_shot=[{"name": "x", "classes": "c"}, {"name": "x", "classes": "d"}])


def test_retrieval_through_each_path_on_known_embeddings():
    metas = [{"captions": ["a cat"]}, {"captions": ["a dog"]}, {"captions": ["a bird"]}, {"qa": []}]
    texts = {"a cat": [1.0, 0.0, 0.0], "a dog": [0.0, 1.0, 0.0], "a bird": [0.0, 0.0, 1.0]}

    def embed_texts(captions):
        return torch.tensor([texts[c] for c in captions])

    eye = torch.eye(3)
    embeds = {"teacher": torch.cat([eye, eye[:1]]), "tokenizer": torch.cat([eye[[0, 2, 1]], eye[:1]]),
              "teacher_quantized": torch.cat([eye, eye[:1]])}
    out = retrieval_paths(embeds, metas, embed_texts)
    assert out["pairs"] == 3  # the caption-less image is left out
    assert out["teacher"] == {"image_to_text": 1.0, "text_to_image": 1.0}
    assert out["tokenizer"]["image_to_text"] == pytest.approx(1 / 3)  # the dog and the bird swapped
    assert retrieval_paths(embeds, metas[3:], embed_texts) == {}


def test_running_moments_match_the_moments_of_all_rows_at_once():
    x = torch.randn(101, 7, dtype=torch.float64) * 3 + 5
    running = RunningMoments()
    for chunk in x.split(10):
        running.add(chunk)
    mean, cov = running.moments()
    want_mean, want_cov = feature_moments(x)
    assert running.count == 101 and torch.allclose(mean, want_mean) and torch.allclose(cov, want_cov)


def test_the_clean_resize_is_pil_bicubic_with_antialias():
    """clean-fid resizes float images with PIL's bicubic: ours agrees to a thousandth of a grey level."""
    image = np.random.default_rng(0).integers(0, 256, (3, 40, 40), dtype=np.uint8)
    ours = clean_resize(torch.from_numpy(image)[None])[0].numpy()
    pil = np.stack([np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC))
                    for c in image])
    assert ours.shape == (3, 299, 299) and np.abs(ours - pil).max() < 1e-2


def test_the_jpeg_round_trip_is_pil_at_the_given_quality():
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8))
    out = jpeg_round_trip(images, 90)
    buffer = io.BytesIO()
    Image.fromarray(images[1].permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=90)
    assert torch.equal(out[1], torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))).permute(2, 0, 1))
    assert not torch.equal(out, images) and out.dtype == torch.uint8


def test_reconstruction_fd_streams_the_whole_split_as_the_in_memory_formula(tmp_path):
    corpus = write_curated_corpus(tmp_path / "c", {"train": [4], "val": [4], "test": [5, 4]})
    torch.manual_seed(0)
    model = DualTokenModel(tiny_tokenizer_config()).eval()
    everything = torch.cat(list(iter_image_batches(corpus, "test", 100)))
    assert len(everything) == 9 and [len(b) for b in iter_image_batches(corpus, "test", 4, limit=6)] == [4, 2]

    def by_hand(images, quality=None):
        recon = ((model.reconstruct(images.float() / 127.5 - 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        if quality:
            images, recon = jpeg_round_trip(images, quality), jpeg_round_trip(recon, quality)
        return frechet_distance(MEAN_COLOUR.embed(images), MEAN_COLOUR.embed(recon))

    plain = reconstruction_fd(model, iter_image_batches(corpus, "test", 4), MEAN_COLOUR,
                              FidConfig(jpeg_quality=None), torch.device("cpu"))
    assert plain["fd_images"] == 9 and plain["FD-mean-colour"] == pytest.approx(by_hand(everything), rel=1e-6)
    assert "whole split, no JPEG" in plain["fd_protocol"]
    jpeg = reconstruction_fd(model, iter_image_batches(corpus, "test", 2), MEAN_COLOUR, FidConfig(),
                             torch.device("cpu"))
    assert jpeg["FD-mean-colour"] == pytest.approx(by_hand(everything, 95), rel=1e-6)
    assert jpeg["FD-mean-colour"] != pytest.approx(plain["FD-mean-colour"], rel=1e-6)
    assert "quality 95" in jpeg["fd_protocol"]
