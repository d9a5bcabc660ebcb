"""``dualtoken`` command line (also ``python -m stages``): every stage, as DVC runs it, plus inspection and
serving commands. ``-S section.key=value`` overrides a param for one run, as ``dvc exp run -S`` does.

The pipeline itself runs through DVC (``dvc repro``) and the Prefect flow (``make demo``); a stage command here
is the same code DVC's ``cmd:`` runs (``python -m stages <stage>``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from dualtoken.config import load_config
from dualtoken.errors import DualtokenError
from dualtoken.models.sampling import SamplingConfig
from dualtoken.schema import ConfigError
from stages import STAGES
from stages.runner import PROG, fail, run


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. -S curate.workers=4 (repeatable, like dvc exp run -S)")


def _add_stage_commands(sub: argparse._SubParsersAction) -> None:
    for stage in STAGES.values():
        p = sub.add_parser(stage.name, help=stage.help, description=f"{stage.help}. The same as DVC's stage.")
        if stage.variants:
            p.add_argument("variants", nargs="*", help="variants to run (default: ablation.variants)")
        _add_config_args(p)
        if stage.sliceable:
            p.add_argument("--rank", type=int, help="only slice RANK of WORLD of the input shards (one task of a "
                                                    "job array; default: the launcher's environment)")
            p.add_argument("--world", type=int, help="how many slices the input shard list is cut into")
        if stage.finalize:
            p.add_argument("--finalize", action="store_true", help="assemble, verify and log once every slice "
                                                                   "is done")
        p.set_defaults(stage=stage)


def _cmd_config(args: argparse.Namespace) -> None:
    cfg = load_config(args.params, args.overrides)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")


def _cmd_report(args: argparse.Namespace) -> None:
    """Where the evaluation report is, and its headline numbers."""
    folder = Path(load_config(args.params, args.overrides).evaluate.output_dir)
    report, summary = folder / "report.html", folder / "summary.md"
    if not report.is_file():
        raise FileNotFoundError(f"no report in {folder}: run the evaluate stage first (dvc repro evaluate)")
    if summary.is_file() and not args.path_only:
        print(summary.read_text())
    print(report.resolve().as_uri() if not args.path_only else report.resolve())


def _sampling(args: argparse.Namespace) -> SamplingConfig:
    return SamplingConfig(cfg_scale=args.cfg, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


def _cmd_chat(args: argparse.Namespace) -> None:
    from PIL import Image, UnidentifiedImageError

    from dualtoken.serving.inference import chat, load_mllm

    try:
        image = Image.open(args.image)
        image.load()
    except (OSError, UnidentifiedImageError) as err:
        raise ConfigError(f"--image {args.image}: not a readable image ({err})") from None
    loaded = load_mllm(args.model, args.tokenizer, args.device)
    print(chat(loaded, image, args.question, args.max_new_tokens))


def _cmd_generate(args: argparse.Namespace) -> None:
    from dualtoken.serving.inference import generate_images, load_mllm

    loaded = load_mllm(args.model, args.tokenizer, args.device)
    out = Path(args.out)
    images = generate_images(loaded, [args.prompt] * args.num, _sampling(args), args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if args.num == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(args.num)]
    for image, path in zip(images, paths, strict=True):
        image.save(path)
        print(path)


def _cmd_demo_corpus(args: argparse.Namespace) -> None:
    """Write the built-in demo corpus as WebDataset shards, e.g. to try the webdataset source."""
    from dualtoken.data.synthetic import write_demo_corpus

    shards = write_demo_corpus(Path(args.out), args.num, args.per_shard, args.size, args.seed)
    print(f"wrote {args.num} samples to {len(shards)} shard(s) in {args.out}")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="models/mllm",
                        help="MLLM folder or MLflow URI, e.g. models:/dualtoken-mllm/1 (default: %(default)s)")
    parser.add_argument("--tokenizer", help="DualToken tokenizer folder (default: the one the model records)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def _add_other_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="validate params.yaml (+ overrides) and print the resolved config")
    _add_config_args(p)
    p.set_defaults(func=_cmd_config)
    p = sub.add_parser("report", help="print where the evaluation report is, with its headline numbers")
    p.add_argument("--path-only", action="store_true", help="print only the report's path")
    _add_config_args(p)
    p.set_defaults(func=_cmd_report)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # the deepspeed launcher passes this before the command; the rank is read from LOCAL_RANK, which it sets too
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_stage_commands(sub)
    _add_other_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if hasattr(args, "stage"):
        return run(args.stage, args, argv)
    try:
        args.func(args)
    except (DualtokenError, FileNotFoundError) as err:
        return fail(PROG, err)
    return 0
