"""The ablation variants and the evaluate stage on the tiny trained pipeline: metrics, the ablation table,
a self-contained report with every section, MLflow runs, ``dualtoken report``."""

import io
import json
import re

import pytest
import yaml
from mlflow.tracking import MlflowClient
from rich.console import Console

from dualtoken.apps.ablation import main as ablation_main
from dualtoken.apps.evaluate import crown
from dualtoken.apps.evaluate import main as evaluate_main
from dualtoken.data.curated import iter_image_batches
from dualtoken.evaluation.config import ZeroShotTaskConfig
from dualtoken.schema import ConfigError
from stages.cli import main as cli
from tiny import TOKENIZER

RAN = ["a_one_codebook", "d_dualtoken"]


@pytest.fixture(autouse=True)
def _configured_tracking_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    _root, cfg, _ = trained
    out = tmp_path_factory.mktemp("evaluate")
    # the tiny teacher's tower under the demo architecture's taps: 3 x 2x upsampling from the 4 x 4 grid
    overrides = {k: v for k, v in TOKENIZER.items() if k != "latent_size"} | {"decoder_channel_mult": [1, 1, 2, 2]}
    raw = cfg.model_dump(mode="json")
    raw["tokenizer"].update(overrides=overrides, runtime={"device": "cpu", "log_every": 1},
                            losses={"gan_start_step": 100, "discriminator_channels": 8, "discriminator_layers": 2,
                                    "perceptual_kind": "teacher"})
    raw["ablation"] = {"variants": RAN, "steps": 2, "batch_size": 4, "output_dir": str(out / "ablation"),
                       "metrics_dir": str(out / "ablation-metrics"), "work_dir": str(out / "ablation-work")}
    raw["evaluate"] = {"split": "val", "output_dir": str(out / "reports"), "metrics_path": str(out / "evaluate.json"),
                       "plots_dir": str(out / "plots"), "images": 4, "batch_size": 4, "vqa_questions": 6,
                       "caption_images": 3, "generated_images": 3, "report_prompts": 2, "report_samples": 2,
                       "device": "cpu", "champion_bars": [{"metric": "mllm.vqa.questions", "min": 6},
                                                          {"metric": "tokenizer.images", "max": "tokenizer.images"}]}
    params = out / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    from dualtoken.config import load_config

    cfg = load_config(params)
    ablation = {v: ablation_main(cfg, v) for v in RAN}
    return out, cfg, params, ablation, evaluate_main(cfg)


def test_ablation_variants_are_trained_measured_and_logged(evaluated):
    out, cfg, _, ablation, _ = evaluated
    one, dual = ablation["a_one_codebook"], ablation["d_dualtoken"]
    assert one["overrides"]["single_codebook"] and one["steps"] == dual["steps"] == 2
    assert set(one["codes"]) == {"semantic"} and set(dual["codes"]) == {"pixel", "semantic"}
    for result in (one, dual):
        assert result["reconstruction"]["FD-teacher"] >= 0 and 0 < result["reconstruction"]["ssim"] <= 1
        assert {"teacher", "teacher_quantized", "tokenizer"} <= set(result["zero_shot"]["count"])
        assert (out / "ablation" / result["variant"] / "preview.png").is_file()
    client = MlflowClient(cfg.tracking.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("dualtoken").experiment_id],
                              "tags.`dualtoken.variant` = 'a_one_codebook'")
    assert runs and runs[0].data.tags["dualtoken.stage"] == "ablation@a_one_codebook"
    assert "reconstruction.psnr" in runs[0].data.metrics
    with pytest.raises(ConfigError, match="not selected"):
        ablation_main(cfg, "c_recon_pixel_layer")
    # a bad class-names file stops the variant before anything loads (here the teacher would be missing, too)
    task = ZeroShotTaskConfig(name="in1k", classes=str(out / "none.txt"))
    broken = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"zero_shot": [task]}),
                                    "teacher": cfg.teacher.model_copy(update={"output_dir": str(out / "none")})})
    with pytest.raises(ConfigError, match=r"evaluate\.zero_shot\.0\.classes"):
        ablation_main(broken, "d_dualtoken")


def test_evaluation_metrics_cover_the_tokenizer_the_mllm_and_the_ablation(evaluated):
    out, _cfg, _, _, metrics = evaluated
    assert json.loads((out / "evaluate.json").read_text())["mllm"]["vqa"]["accuracy"] == metrics["mllm"]["vqa"][
        "accuracy"]
    tok = metrics["tokenizer"]
    assert tok["images"] == 4 and "native resolution" in tok["reconstruction"]["protocol"]
    assert metrics["fd_features"] == "FD-teacher" and tok["reconstruction"]["FD-teacher"] >= 0
    # the Fréchet distance over the whole split (the clean-fid protocol), however many images the rest read
    whole = sum(len(b) for b in iter_image_batches(_cfg.curated(_cfg.evaluate.input), "val", 100))
    assert tok["reconstruction"]["fd_images"] == whole and "JPEG" in tok["reconstruction"]["fd_protocol"]
    retrieval = tok["retrieval"]
    assert retrieval["pairs"] == 4 and 0 <= retrieval["tokenizer"]["image_to_text"] <= 1
    assert 1 <= tok["codes"]["pixel"]["perplexity"]["d1"] <= tok["codes"]["pixel"]["codebook_size"]
    vqa = metrics["mllm"]["vqa"]
    assert vqa["questions"] == 6 and sum(t["questions"] for t in vqa["per_type"].values()) == 6
    assert len(vqa["examples"]["right"]) + len(vqa["examples"]["wrong"]) == 6
    captions = metrics["mllm"]["captions"]
    assert captions["images"] == 3 and 0 <= captions["bleu4"] <= 1 and captions["cider_d"] >= 0
    gen = metrics["mllm"]["generation"]
    assert gen["images"] == 3 and gen["seed"] == 0 and gen["FD-teacher"] >= 0 and "count" in gen
    rows = [r["variant"] for r in metrics["ablation"]["rows"]]
    assert rows == ["teacher_continuous", "teacher_dualtoken_quantizer", *RAN]
    codes_csv = (out / "plots" / "codes.csv").read_text().splitlines()
    assert codes_csv[0] == "stream,depth,usage,perplexity" and len(codes_csv) == 1 + 2 + 2  # 2 streams x 2 depths


def test_report_is_self_contained_with_every_section_and_logged(evaluated, capsys):
    out, cfg, params, _, _ = evaluated
    report = (out / "reports" / "report.html").read_text()
    for title in ("Summary", "Tokenizer", "Ablation: single vs dual codebook", "VQA", "Captions", "Text-to-image",
                  "Training curves and code usage"):
        assert f">{title}</h2>" in report
    assert report.count("data:image/png;base64,") >= 6  # grids, previews, examples, generations
    assert not re.search(r'(src|href)="(?!data:|#)', report)  # nothing outside the file
    assert "Answered right" in report and "Answered wrong" in report
    assert f"mllm: {cfg.mllm.plots_path}" in report  # the MLLM's training curve
    assert "(d) DualToken" in (out / "reports" / "ablation.md").read_text()
    assert "VQA accuracy" in (out / "reports" / "summary.md").read_text()
    assert "retrieval R@1" in (out / "reports" / "summary.md").read_text() and "Retrieval: R@1 among 4" in report
    client = MlflowClient(cfg.tracking.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dualtoken").experiment_id],
                                "tags.`dualtoken.stage` = 'evaluate'")
    assert {"evaluate/report.html", "evaluate/ablation.md"} <= {a.path for a in client.list_artifacts(
        run.info.run_id, "evaluate")}
    assert "mllm.captions.cider_d" in run.data.metrics
    assert cli(["report", "--params", str(params)]) == 0
    printed = capsys.readouterr().out
    assert printed.strip().endswith((out / "reports" / "report.html").resolve().as_uri())
    assert "| metric | value |" in printed
    assert cli(["report", "--params", str(params), "-S", f"evaluate.output_dir={out / 'nowhere'}"]) == 2
    assert "dvc repro evaluate" in capsys.readouterr().err


def test_bars_held_so_champion_moved_to_the_measured_mllm_and_the_verdict_is_recorded(evaluated):
    out, cfg, _, _, metrics = evaluated
    verdict = metrics["champion_bars"]
    assert verdict["passed"] and [b["min"] for b in verdict["bars"]] == [6.0, None]
    assert verdict["bars"][1]["max"] == 4.0  # another metric's value
    assert "## Champion bars: all held" in (out / "reports" / "summary.md").read_text()
    client = MlflowClient(cfg.tracking.tracking_uri)
    champion = client.get_model_version_by_alias("dualtoken-mllm", "champion")
    assert champion.version == client.get_model_version_by_alias("dualtoken-mllm", "candidate").version
    (run,) = client.search_runs([client.get_experiment_by_name("dualtoken").experiment_id],
                                "tags.`dualtoken.stage` = 'evaluate'")
    assert run.data.tags["champion.dualtoken-mllm"] == f"models:/dualtoken-mllm/{champion.version}"
    assert "champion.dualtoken-tokenizer" not in run.data.tags  # the tiny tokenizer was never registered


def test_missed_bars_or_an_unregistered_model_leave_champion_where_it_is_and_say_why(evaluated):
    _, cfg, _, _, _ = evaluated
    console = Console(file=io.StringIO(), width=200)
    missed = {"passed": False, "bars": [{"metric": "mllm.vqa.accuracy", "value": 0.1, "min": 0.5, "max": None,
                                         "passed": False}]}
    assert crown(cfg, missed, console) == {}
    assert crown(cfg, None, console) == {}  # no bars configured
    held = {"passed": True, "bars": []}
    crowned = crown(cfg, held, console)
    assert list(crowned) == ["dualtoken-mllm"]
    printed = console.file.getvalue()
    assert "champion not moved: bars not met (mllm.vqa.accuracy = 0.1)" in printed
    assert "champion not moved for dualtoken-tokenizer: no version of dualtoken-tokenizer holds" in printed


def test_evaluating_with_another_tokenizer_than_the_mllm_trained_with_is_a_config_error(evaluated):
    out, cfg, _, _, _ = evaluated
    elsewhere = cfg.mllm.model_copy(update={"tokenizer": str(out / "ablation" / "d_dualtoken")})
    other = cfg.model_copy(update={"mllm": elsewhere})
    with pytest.raises(ConfigError, match="is not the DualToken tokenizer"):
        evaluate_main(other)
