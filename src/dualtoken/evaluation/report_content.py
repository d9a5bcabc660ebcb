"""What the evaluation report shows, from the metrics and the images the evaluation kept."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dualtoken.evaluation.ablation import VARIANTS, table_markdown
from dualtoken.evaluation.config import AblationConfig
from dualtoken.evaluation.report import Raw, Section, figure, img, line_plot, paragraph, render, table
from dualtoken.metrics.reconstruction import image_grid
from dualtoken.tracking import git_commit


def _hwc(images: torch.Tensor) -> Any:
    return image_grid([images]).numpy()


def _tokenizer_section(metrics: dict[str, Any], assets: dict[str, Any]) -> Section:
    t = metrics["tokenizer"]
    rec = t["reconstruction"]
    fd = rec.get("fd_name", "FD")
    blocks = [table(["images", "PSNR (dB)", "SSIM", "LPIPS", fd],
                    [[t["images"], rec["psnr"], rec["ssim"], rec.get("lpips"), rec.get(fd)]]),
              paragraph(f"Protocol: {rec['protocol']}. {fd}: {rec.get('fd_protocol', '-')}, over "
                        f"{rec.get('fd_images', '-')} images. LPIPS needs evaluate.lpips_weights.", note=True),
              table(["task", "images", "classes", "prompts", "teacher (continuous)",
                     "teacher + the semantic quantizer", "tokenizer semantic path"],
                    [[task, r["images"], r.get("classes"), r.get("templates"), r["teacher"], r["teacher_quantized"],
                      r["tokenizer"]] for task, r in t["zero_shot"].items()]),
              *_retrieval_blocks(t.get("retrieval") or {}),
              table(["stream", "codebook", "usage (all depths)", "perplexity (all depths)", "perplexity per depth"],
                    [[s, c["codebook_size"], c["usage"]["all_depths"], c["perplexity"]["all_depths"],
                      ", ".join(f"{k} {v:.1f}" for k, v in c["perplexity"].items() if k != "all_depths")]
                     for s, c in t["codes"].items()]),
              figure(image_grid([assets["originals"], assets["reconstructions"]]).numpy(),
                     "originals (top) and reconstructions from the pixel codes (bottom)", width=768)]
    return Section("Tokenizer", blocks)


def _retrieval_blocks(retrieval: dict[str, Any]) -> list[Any]:
    if not retrieval:
        return []
    return [table(["path", "image -> text R@1", "text -> image R@1"],
                  [[path, retrieval[path]["image_to_text"], retrieval[path]["text_to_image"]]
                   for path in ("teacher", "tokenizer")]),
            paragraph(f"Retrieval: {retrieval['protocol']}.", note=True)]


def _ablation_section(ablation: AblationConfig, metrics: dict[str, Any]) -> Section:
    table_ = metrics["ablation"]
    if not table_["rows"]:
        return Section("Ablation: single vs dual codebook", [paragraph("No ablation variant has run yet "
                                                                       "(dvc repro ablation).")])
    fd = table_["fd"] or "FD"
    rows = [[r["row"], None if r.get("zero_shot") is None else 100 * r["zero_shot"], r.get("fd"), r.get("psnr"),
             r.get("ssim"), r["paper"]["zero_shot"],
             r["paper"]["rfid"], r["paper"]["psnr"], r["paper"]["ssim"]] for r in table_["rows"]]
    blocks = [table(["variant", "zero-shot (%)", fd, "PSNR", "SSIM", "paper zero-shot", "paper rFID", "paper PSNR",
                     "paper SSIM"], rows),
              paragraph(f"Same budget for every variant ({ablation.steps} steps of {ablation.batch_size}). "
                        f"Zero-shot: mean over {', '.join(table_['zero_shot_tasks'])}; the paper's is ImageNet with "
                        "SigLIP-So400m/14-384. '-': no semantic objective. The numbers are an experiment, not a "
                        "claim.", note=True)]
    for name in ablation.variants:
        preview = Path(ablation.output_dir) / name / "preview.png"
        if preview.is_file():
            blocks.append(figure(Image.open(preview).convert("RGB"), VARIANTS[name].row, width=512))
    return Section("Ablation: single vs dual codebook", blocks)


def _vqa_section(vqa: dict[str, Any], decoded: dict[int, torch.Tensor]) -> Section:
    if not vqa:
        return Section("VQA", [paragraph("No questions in this split.")])
    blocks = [table(["question type", "questions", "accuracy", "majority baseline"],
                    [["all", vqa["questions"], vqa["accuracy"], vqa["majority_baseline"]]]
                    + [[k, v["questions"], v["accuracy"], v["majority_baseline"]] for k, v in vqa["per_type"].items()])]
    for verdict, css in (("right", "ok"), ("wrong", "bad")):
        examples = vqa["examples"][verdict]
        blocks.append(f'<h3 class="{css}">Answered {verdict} ({len(examples)} shown)</h3>')
        blocks.append(table(["image", "question", "expected", "answered"],
                            [[Raw(img(_hwc(decoded[x["row"]][None]), 96)), x["question"], x["answer"], x["predicted"]]
                             for x in examples if x["row"] in decoded]))
    return Section("VQA", blocks)


def _caption_section(captions: dict[str, Any], decoded: dict[int, torch.Tensor]) -> Section:
    if not captions:
        return Section("Captions", [paragraph("No captions in this split.")])
    blocks = [table(["images", "BLEU-4", "CIDEr-D"], [[captions["images"], captions["bleu4"], captions["cider_d"]]]),
              paragraph("pycocoevalcap scorers; lower-cased, punctuation removed (as COCO's PTB tokenizer); every "
                        "caption of an image is a reference.", note=True),
              table(["image", "generated caption", "a reference"],
                    [[Raw(img(_hwc(decoded[x["row"]][None]), 96)), x["predicted"], x["references"][0]]
                     for x in captions["examples"] if x["row"] in decoded])]
    return Section("Captions", blocks)


def _generation_section(metrics: dict[str, Any], assets: dict[str, Any]) -> Section:
    gen = metrics["mllm"]["generation"]
    if not gen:
        return Section("Text-to-image", [paragraph("No prompts to generate from.")])
    fd = metrics["fd_features"]
    tasks = [k for k, v in gen.items() if isinstance(v, dict) and "chance" in v]
    blocks = [table(["attribute", "images", "teacher zero-shot on generated", "chance", "on tokenized real images"],
                    [[k, gen[k]["images"], gen[k]["accuracy"], gen[k]["chance"], gen[k]["teacher_on_tokenized_real"]]
                     for k in tasks]),
              table([f"{fd}: generated vs real", f"{fd}: tokenized real vs real", "images", "seed"],
                    [[gen.get(fd), gen.get(f"{fd}_tokenized_real"), gen["images"], gen["seed"]]]),
              paragraph(f"Sampling {gen['sampling']}; one image per prompt (the first caption of a held-out image).",
                        note=True)]
    for prompt, images in assets["per_prompt"]:
        blocks.append(f"<div>{paragraph(prompt)}{img(_hwc(images), 96 * len(images))}</div>")
    shown = min(len(assets["generated"]), 16)
    if shown:
        blocks.append(figure(image_grid([assets["generated"][:shown], assets["real"][:shown]]).numpy(),
                             "generated (top) and the real images of the same prompts (bottom)", width=64 * shown))
    return Section("Text-to-image", blocks)


@dataclass(frozen=True)
class Plots:
    """Other stages' plots the report shows, as the evaluate app finds them in the config."""
    tokenizer_csv: str | None
    mllm_csv: str | None
    code_usage: Path


def _curves_section(plots: Plots) -> Section:
    blocks = []
    for stage, plot, keys in (("tokenizer", plots.tokenizer_csv, ("loss", "reconstruction", "semantic_tap",
                                                                  "commitment")),
                              ("mllm", plots.mllm_csv, ("loss", "text_loss", "pixel.d1", "semantic.d1"))):
        path = Path(plot) if plot else None
        if path is not None and path.is_file():
            with open(path) as handle:
                rows = list(csv.DictReader(handle))
            picture = line_plot(rows, keys, f"{stage} training")
            if picture is not None:
                blocks.append(figure(picture, f"{stage}: {path}"))
    if plots.code_usage.is_file():
        blocks.append(figure(Image.open(plots.code_usage).convert("RGB"), "code usage of the tokenised corpus"))
    return Section("Training curves and code usage", blocks or [paragraph("No curves yet.")])


def build_report(metrics: dict[str, Any], assets: dict[str, Any], ablation: AblationConfig, plots: Plots) -> str:
    mllm = metrics["mllm"]
    sections = [Section("Summary", [table(["metric", "value"], headline(metrics))]),
                _tokenizer_section(metrics, assets), _ablation_section(ablation, metrics),
                _vqa_section(mllm["vqa"], assets["decoded"]), _caption_section(mllm["captions"], assets["decoded"]),
                _generation_section(metrics, assets), _curves_section(plots)]
    subtitle = (f"split {metrics['split']}, seed {metrics['seed']}, Fréchet distances on {metrics['fd_features']} "
                f"features, git {git_commit()[:12]}")
    return render("dualtoken evaluation", sections, subtitle)


def headline(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    t, m = metrics["tokenizer"], metrics["mllm"]
    rec, fd = t["reconstruction"], metrics["fd_features"]
    zs = t["zero_shot"]
    out = [("tokenizer PSNR (dB)", rec["psnr"]), ("tokenizer SSIM", rec["ssim"]), (f"tokenizer {fd}", rec.get(fd)),
           *((f"zero-shot {k}: teacher / quantized / tokenizer",
              f"{v['teacher']:.3f} / {v['teacher_quantized']:.3f} / {v['tokenizer']:.3f}") for k, v in zs.items())]
    if retrieval := t.get("retrieval"):
        out.append(("retrieval R@1 image -> text: teacher / tokenizer",
                    f"{retrieval['teacher']['image_to_text']:.3f} / {retrieval['tokenizer']['image_to_text']:.3f}"))
    if m["vqa"]:
        vqa = m["vqa"]
        out.append(("VQA accuracy (majority baseline)", f"{vqa['accuracy']:.3f} ({vqa['majority_baseline']:.3f})"))
    if m["captions"]:
        out.append(("captions BLEU-4 / CIDEr-D", f"{m['captions']['bleu4']:.3f} / {m['captions']['cider_d']:.3f}"))
    gen = m["generation"]
    for task in ("shape", "colour", "count"):
        if task in gen:
            out.append((f"generated {task} (chance)", f"{gen[task]['accuracy']:.3f} ({gen[task]['chance']:.3f})"))
    if fd in gen:
        out.append((f"generated vs real {fd}", gen[fd]))
    return out


def summary_markdown(metrics: dict[str, Any]) -> str:
    """The Prefect artifact: headline numbers, the champion bars and the ablation table."""
    lines = [f"# dualtoken evaluation ({metrics['split']} split)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v if v is not None else '-'} |"
              for k, v in headline(metrics)]
    if verdict := metrics.get("champion_bars"):
        lines += ["", f"## Champion bars: {'all held' if verdict['passed'] else 'not met'}", "",
                  "| metric | value | min | max | held |", "|---|---|---|---|---|"]
        lines += [f"| {b['metric']} | {b['value']:.4g} | {_or_dash(b['min'])} | {_or_dash(b['max'])} | "
                  f"{'yes' if b['passed'] else 'no'} |" for b in verdict["bars"]]
    if metrics["ablation"]["rows"]:
        lines += ["", "## Ablation: single vs dual codebook", "", table_markdown(metrics["ablation"])]
    return "\n".join(lines) + "\n"


def _or_dash(bound: float | None) -> str:
    return "-" if bound is None else f"{bound:.4g}"
