"""The MLLM as an application: build it around an LM and the tokenizer's codebooks, train the selected
phases with DeepSpeed, evaluate, save, log and register.

Output ``models/mllm/`` (``save_pretrained``: LM, projector, heads, the text tokenizer, and the DualToken
tokenizer's path and SHA-256 in the config) and ``metrics/mllm.json``: VQA exact match beside the
majority-answer baseline, generated images' shape and colour accuracy (teacher zero-shot) beside chance,
the last losses and throughput. MLflow: per-step losses (text, semantic and pixel per depth), tokens/s,
learning rate, a grid of generated images, the model registered as ``mllm.register_as``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from dualtoken.application import CurveLog, log_final_metrics, setup_process, tracked, write_metrics
from dualtoken.config import Config
from dualtoken.data.curated import iter_metas
from dualtoken.data.sequences import SPECIAL_TOKENS
from dualtoken.data.shards import read_shard_index, split_shards
from dualtoken.data.texts import TextStats, corpus_texts
from dualtoken.data.tokens import STREAMS, TokenSplit, check_layout, read_layout, read_text_stats, read_token_split
from dualtoken.evaluation.mllm import generation_quality, generation_rows, vqa_accuracy
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.models.mllm import DualTokenMLLM, DualTokenMLLMConfig
from dualtoken.models.mllm_shapes import MllmShape, named_shape
from dualtoken.models.teacher import checkpoint_digest, load_teacher
from dualtoken.schema import ConfigError
from dualtoken.storage import StorageConfig, location, save_folder_atomically
from dualtoken.text import train_bpe
from dualtoken.tracking import log_dataset, run_url
from dualtoken.training.distributed import shutdown_distributed
from dualtoken.training.mllm import TokenSource, train_mllm
from dualtoken.training.mllm_config import MllmConfig

STAGE = "mllm"


def text_tokenizer(cfg: MllmConfig, train_urls: list[str], storage: StorageConfig | None = None) -> Any:
    """The pretrained LM's tokenizer with the special tokens added, or a BPE trained on the captions, questions
    and answers of the first ``llm.bpe_samples`` training samples (their texts only; no codes are decoded)."""
    if cfg.llm.pretrained:
        tokenizer = AutoTokenizer.from_pretrained(cfg.llm.pretrained, local_files_only=True)
        tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
        return tokenizer
    return train_bpe(corpus_texts(iter_metas(train_urls, storage, cfg.llm.bpe_samples)), cfg.llm.vocab_size,
                     extra_special_tokens=SPECIAL_TOKENS)


def mllm_shape(cfg: MllmConfig) -> MllmShape:
    """The named architecture with its overrides; an unknown name, or a shape that does not fit, names the key."""
    try:
        return named_shape(cfg.architecture, **cfg.overrides)
    except ValueError as err:
        key = "mllm.architecture" if "unknown MLLM architecture" in str(err) else "mllm.overrides"
        raise ConfigError(f"{key}: {err}") from None


def language_model(cfg: MllmConfig, shape: MllmShape, vocab_size: int) -> PreTrainedModel:
    """The pretrained LM (embeddings resized for the added tokens), or one built from the architecture's shape.
    A pretrained LM of another width than the architecture's is an error: the heads are sized for that width."""
    if cfg.llm.pretrained:
        model = AutoModelForCausalLM.from_pretrained(cfg.llm.pretrained, local_files_only=True)
        if model.config.hidden_size != shape.hidden_size:
            raise ConfigError(f"mllm.llm.pretrained: {cfg.llm.pretrained} is {model.config.hidden_size} wide, "
                              f"mllm.architecture {cfg.architecture!r} {shape.hidden_size}: name the architecture "
                              "of that LM (e.g. qwen2.5-7b) or override hidden_size")
        model.resize_token_embeddings(vocab_size)
        return model
    config = AutoConfig.for_model(**shape.llm_config(vocab_size))
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def build_model(cfg: MllmConfig, shape: MllmShape, tokenizer: Any, visual: DualTokenModel, tokenizer_path: str
                ) -> DualTokenMLLM:
    quantizers = {"pixel": visual.pixel_quantizer, "semantic": visual.semantic_quantizer}
    grid = visual.config.grid_size
    codes = {"grid": [grid, grid], **{s: {"depth": q.depth, "codebook_size": q.codebook_size, "dim": q.dim,
                                          "books": q.codebooks.shape[0]} for s, q in quantizers.items()}}
    config = DualTokenMLLMConfig(
        codes=codes, **shape.visual(),
        special_token_ids={t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS},
        tokenizer_path=tokenizer_path, tokenizer_sha256=checkpoint_digest(tokenizer_path))
    llm = language_model(cfg, shape, len(tokenizer))
    return DualTokenMLLM.from_parts(llm, config, {s: quantizers[s].codebooks.detach().float() for s in STREAMS})


def check_tasks(cfg: MllmConfig, texts: TextStats) -> None:
    """Every task a selected phase asks for has items in the training split (your own data may have no QA)."""
    selected = {p.name for p in cfg.selected_phases()}
    items = {"caption": texts.captions, "t2i": texts.captions, "vqa": texts.questions}
    for i, phase in enumerate(cfg.phases):
        if phase.name not in selected:
            continue
        for task, weight in phase.tasks.items():
            if weight > 0 and items[task] == 0:
                raise ConfigError(f"mllm.phases.{i}.tasks.{task}: phase {phase.name!r} asks for {task} sequences but "
                                  f"the training split has none; give it weight 0 or add them to the corpus")


def main(cfg: Config, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True, soft_wrap=True)
    m = cfg.mllm
    ctx = setup_process(m.runtime, cfg.seed)
    try:
        shape = mllm_shape(m)  # a bad architecture or override fails before any data is read
        tokens_root = m.tokens or cfg.tokenize.output_dir
        visual_path = m.tokenizer or cfg.tokenizer.output_dir
        if not (Path(visual_path) / "config.json").is_file():
            raise FileNotFoundError(f"no DualToken tokenizer in {visual_path}: run the tokenizer stage first "
                                    "(dvc repro tokenizer) or set mllm.tokenizer")
        visual = DualTokenModel.from_pretrained(visual_path, local_files_only=True).eval()
        check_layout(tokens_root, visual.config, cfg.storage)
        train = split_shards(tokens_root, "train", cfg.storage)
        texts = read_text_stats(tokens_root, "train", cfg.storage)
        check_tasks(m, texts)
        val = read_token_split(tokens_root, "val", m.eval.images, cfg.storage)
        tokenizer = text_tokenizer(m, [s.url for s in train], cfg.storage)
        model = build_model(m, shape, tokenizer, visual, visual_path)
        source = TokenSource(train, read_layout(tokens_root, cfg.storage), tokenizer, cfg.storage)
        index_digest = hashlib.sha256(str(read_shard_index(tokens_root, cfg.storage)).encode()).hexdigest()[:16]
        identity = {"seed": cfg.seed, "tokens": index_digest, "tokenizer": model.config.tokenizer_sha256,
                    "llm": m.llm.pretrained and checkpoint_digest(m.llm.pretrained)}
        with tracked(STAGE, cfg, ("seed", "mllm"), ctx) as run:
            if run is not None:
                import mlflow

                log_dataset("tokens", location(tokens_root), index_digest, context="training")
                mlflow.set_tag("dualtoken.tokenizer_sha256", model.config.tokenizer_sha256)
            params = sum(p.numel() for p in model.parameters())
            console.print(f"\\[mllm] {params:,} parameters (LM {sum(p.numel() for p in model.llm.parameters()):,}), "
                          f"{texts.samples} train images in {len(train)} shards -> {texts.captions} captions, "
                          f"{texts.questions} questions; text vocabulary {len(tokenizer)}")
            t0 = time.perf_counter()
            curve = CurveLog("train")
            rows = train_mllm(m, model, source, ctx, cfg.seed, identity, console, sink=curve if ctx.is_main else None)
            train_seconds = time.perf_counter() - t0
            if not ctx.is_main:
                return {}
            metrics = evaluate(cfg, model.eval(), tokenizer, visual.to(ctx.device), texts.majority(), val, console)
            metrics.update({"train_seconds": round(train_seconds, 1), "final": rows[-1] if rows else None,
                            "steps": sum(p.steps for p in m.selected_phases()), "parameters": params})

            def save(folder: Path) -> None:
                model.save_pretrained(folder)
                tokenizer.save_pretrained(folder)

            out = save_folder_atomically(m.output_dir, save)
            write_metrics(m.metrics_path, metrics)
            curve.write_csv(m.plots_path)
            import mlflow

            log_final_metrics({k: v for k, v in metrics.items() if k != "final"}, step=metrics["steps"])
            mlflow.log_artifact(m.metrics_path, artifact_path="mllm")
            from dualtoken.serving.registry import log_mllm

            model_uri = log_mllm(out, visual_path, m.register_as)
            url = run_url(cfg.tracking, run.info.run_id)
        vqa, gen = metrics.get("vqa", {}), metrics.get("generation", {})
        console.print(
            f"[bold green]mllm done[/] in {train_seconds:.0f} s: VQA {vqa.get('accuracy', float('nan')):.3f} (majority "
            f"baseline {vqa.get('majority_baseline', float('nan')):.3f}); generated images judged by the teacher: "
            + ", ".join(f"{t} {gen[t]['accuracy']:.3f} (chance {gen[t]['chance']:.3f})" for t in ("shape", "colour")
                        if t in gen)
            + f"\n  model:    {out}\n  metrics:  {m.metrics_path}\n  MLflow:   {url}\n  logged:   {model_uri}"
            + (f" (registered as {m.register_as})" if m.register_as else "")
            + "\n  try:      dualtoken chat --image IMAGE.png \"what colour is the shape?\"\n"
              "            dualtoken generate \"a small red circle at the top left\" -o out.png")
        return metrics
    finally:
        shutdown_distributed()


def evaluate(cfg: Config, model: DualTokenMLLM, tokenizer: Any, visual: DualTokenModel, majority: dict[str, str],
             val: TokenSplit, console: Console) -> dict[str, Any]:
    """VQA and generation on the first ``mllm.eval.images`` val samples; the majority answers are the train
    split's (counted by the tokenize stage)."""
    e = cfg.mllm.eval
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {"vqa": vqa_accuracy(model, tokenizer, val, majority, e.vqa_questions, e.batch_size)}
    if e.generated_images and Path(cfg.teacher.output_dir, "config.json").is_file():
        teacher, teacher_tokenizer = load_teacher(cfg.teacher.output_dir)
        generation, pictures = generation_quality(model, tokenizer, visual, teacher.to(model.device).eval(),
                                                  teacher_tokenizer, val, generation_rows(val, e.generated_images),
                                                  e.batch_size, e.sampling, cfg.seed)
        metrics["generation"] = generation
        if len(pictures):
            import mlflow

            from dualtoken.metrics.reconstruction import image_grid

            shown = pictures[: max(8, len(pictures) // 8 * 8)][:32]
            mlflow.log_image(image_grid(list(shown.split(8))).numpy(), key="generated", step=0)
    elif e.generated_images:
        console.print(f"\\[mllm] no teacher in {cfg.teacher.output_dir}: generated images are not judged")
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return metrics
