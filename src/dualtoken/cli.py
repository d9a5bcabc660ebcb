"""``dualtoken`` command line: run library jobs directly, with ``-S section.key=value`` overrides.

The pipeline itself runs through DVC stages and the Prefect flow (see README); these commands are for
inspecting configuration, curating your own data ad hoc, and producing sample data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from dualtoken.config import ConfigError, SamplingConfig, load_config
from dualtoken.errors import DualtokenError
from dualtoken.partition import WorkSlice


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. -S curate.workers=4 (repeatable, like dvc exp run -S)")


def _cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.params, args.overrides)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _add_slice_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--rank", type=int, help=f"{what} only slice RANK of WORLD (e.g. one task of a job array)")
    parser.add_argument("--world", type=int, help="how many slices the input shard list is cut into")


def _slice(args: argparse.Namespace) -> WorkSlice | None:
    if (args.rank is None) != (args.world is None):
        raise ConfigError("--rank and --world go together (this process's slice of the shard list)")
    return WorkSlice(args.rank, args.world) if args.rank is not None else None


def _cmd_curate(args: argparse.Namespace) -> int:
    from dualtoken.apps.curate import main as curate_main
    from dualtoken.curation.job import ValidationFailed
    from dualtoken.storage import StorageError

    try:
        curate_main(load_config(args.params, args.overrides), part=_slice(args))
    except (ValidationFailed, StorageError) as err:
        print(f"curate: {err}", file=sys.stderr)
        return 1
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """Teacher, tokenizer or MLLM training, as the DVC stage runs it (``runtime.nproc > 1`` relaunches under
    torchrun; the deepspeed launcher's ``--local_rank`` is accepted)."""
    import importlib

    from dualtoken.training.distributed import needs_torchrun, relaunch_under_torchrun

    cfg = load_config(args.params, args.overrides)
    nproc = getattr(cfg, args.command).runtime.nproc
    if needs_torchrun(nproc):
        argv = [args.command, "--params", args.params, *(f"-S{o}" for o in args.overrides)]
        return relaunch_under_torchrun("dualtoken.cli", nproc, argv)
    importlib.import_module(f"dualtoken.apps.{args.command}").main(cfg)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dualtoken.apps.evaluate import main as evaluate_main

    evaluate_main(load_config(args.params, args.overrides))
    return 0


def _cmd_ablation(args: argparse.Namespace) -> int:
    from dualtoken.apps.ablation import main as ablation_main

    cfg = load_config(args.params, args.overrides)
    for variant in args.variants or cfg.ablation.variants:
        ablation_main(cfg, variant)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """Where the evaluation report is, and its headline numbers."""
    cfg = load_config(args.params, args.overrides)
    folder = Path(cfg.evaluate.output_dir)
    report, summary = folder / "report.html", folder / "summary.md"
    if not report.is_file():
        raise FileNotFoundError(f"no report in {folder}: run the evaluate stage first (dvc repro evaluate)")
    if summary.is_file() and not args.path_only:
        print(summary.read_text())
    print(report.resolve().as_uri() if not args.path_only else report.resolve())
    return 0


def _cmd_tokenize(args: argparse.Namespace) -> int:
    """The tokenize stage; ``--rank/--world`` tokenise one slice only, ``--finalize`` assembles afterwards."""
    from dualtoken.partition import slice_from_env
    from dualtoken.training.distributed import needs_torchrun, relaunch_under_torchrun, under_torchrun

    cfg = load_config(args.params, args.overrides)
    work = _slice(args)
    if args.finalize and work is not None:
        raise ConfigError("--finalize assembles what every slice wrote: it takes no --rank/--world")
    if work is None and not under_torchrun() and not slice_from_env().whole:
        work = slice_from_env()  # an array task: one process on its slice, whatever runtime.nproc says
    if needs_torchrun(cfg.tokenize.runtime.nproc) and work is None and not args.finalize:
        argv = ["tokenize", "--params", args.params, *(f"-S{o}" for o in args.overrides)]
        return relaunch_under_torchrun("dualtoken.cli", cfg.tokenize.runtime.nproc, argv)
    from dualtoken.apps.tokenize import main as tokenize_main

    tokenize_main(cfg, work=work, finalize_only=args.finalize)
    return 0


def _sampling(args: argparse.Namespace) -> SamplingConfig:
    return SamplingConfig(cfg_scale=args.cfg, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


def _cmd_chat(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    from dualtoken.apps.inference import chat, load_mllm

    try:
        image = Image.open(args.image)
        image.load()
    except (OSError, UnidentifiedImageError) as err:
        raise ConfigError(f"--image {args.image}: not a readable image ({err})") from None
    loaded = load_mllm(args.model, args.tokenizer, args.device)
    print(chat(loaded, image, args.question, args.max_new_tokens))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from dualtoken.apps.inference import generate_images, load_mllm

    loaded = load_mllm(args.model, args.tokenizer, args.device)
    out = Path(args.out)
    images = generate_images(loaded, [args.prompt] * args.num, _sampling(args), args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if args.num == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(args.num)]
    for image, path in zip(images, paths, strict=True):
        image.save(path)
        print(path)
    return 0


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="models/mllm",
                        help="MLLM folder or MLflow URI, e.g. models:/dualtoken-mllm/1 (default: %(default)s)")
    parser.add_argument("--tokenizer", help="DualToken tokenizer folder (default: the one the model records)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def _cmd_demo_corpus(args: argparse.Namespace) -> int:
    """Write the built-in demo corpus as WebDataset shards, e.g. to try the webdataset source."""
    from dualtoken.data.synthetic import generate_example
    from dualtoken.data.tarstream import RollingTarWriter

    writer = RollingTarWriter(Path(args.out), "demo", args.per_shard)
    ok = False
    try:
        for i in range(args.num):
            ex = generate_example(args.seed, i, args.size)
            meta = {"qa": ex.qa, "attributes": ex.attributes, "captions": ex.captions}
            writer.add_sample(ex.key, {"png": ex.png, "txt": ex.captions[0].encode(),
                                       "json": json.dumps(meta).encode()})
        ok = True
    finally:
        writer.close(ok=ok)
    print(f"wrote {args.num} samples to {len(writer.shards)} shard(s) in {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualtoken", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="validate params.yaml (+ overrides) and print the resolved config")
    _add_config_args(p)
    p.set_defaults(func=_cmd_config)
    p = sub.add_parser("curate", help="run the curation job (same as the DVC stage) with overrides",
                       description="Without options: the whole job (or this launcher's slice of the input shards, "
                                   "an array task: then only phase 1 of that slice, reused by the whole job).")
    _add_config_args(p)
    _add_slice_args(p, "curate")
    p.set_defaults(func=_cmd_curate)
    for name, text in (("teacher", "train the demo SigLIP teacher (or record a pretrained one)"),
                       ("tokenizer", "train the DualToken tokenizer from the teacher"),
                       ("mllm", "train the unified MLLM on the token shards (DeepSpeed)")):
        p = sub.add_parser(name, help=f"{text}; same as the DVC stage, with overrides")
        _add_config_args(p)
        p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
        p.set_defaults(func=_cmd_train)
    p = sub.add_parser("evaluate", help="measure every model on the held-out split and write the HTML report; "
                                        "same as the DVC stage")
    _add_config_args(p)
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser("ablation", help="train and measure the conflict-ablation tokenizer variants "
                                        "(dvc repro ablation runs each as its own stage)")
    p.add_argument("variants", nargs="*", help="variants to run (default: ablation.variants)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_ablation)
    p = sub.add_parser("report", help="print where the evaluation report is, with its headline numbers")
    p.add_argument("--path-only", action="store_true", help="print only the report's path")
    _add_config_args(p)
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("tokenize", help="tokenise the curated corpus into dual-code shards; same as the DVC stage",
                       description="Without options: every shard (or this launcher's slice: torchrun, Slurm array, "
                                   "Kubernetes indexed job), then assemble, verify and log.")
    _add_config_args(p)
    _add_slice_args(p, "tokenise")
    p.add_argument("--finalize", action="store_true", help="assemble, verify and log once every slice is done")
    p.set_defaults(func=_cmd_tokenize)
    p = sub.add_parser("chat", help="ask the trained MLLM about an image")
    p.add_argument("question")
    p.add_argument("--image", required=True, help="an image file (resized to the tokenizer's input size)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    _add_model_args(p)
    p.set_defaults(func=_cmd_chat)
    p = sub.add_parser("generate", help="generate images from a text prompt with the trained MLLM")
    p.add_argument("prompt")
    p.add_argument("-o", "--out", default="generated.png", help="PNG path; with --num N, -0..-N-1 are appended")
    p.add_argument("--num", type=int, default=1)
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale; 1 turns it off")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    _add_model_args(p)
    p.set_defaults(func=_cmd_generate)
    p = sub.add_parser("demo-corpus", help="write the synthetic demo corpus as WebDataset tar shards")
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--per-shard", type=int, default=250)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo_corpus)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DualtokenError, FileNotFoundError) as err:
        from dualtoken.training.distributed import report_rank_error

        print(f"dualtoken: {err}", file=sys.stderr)
        report_rank_error(f"dualtoken: {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
