import inspect

import pytest

from dualtoken.config import load_config, parse_config
from dualtoken.models.configuration import DualTokenConfig
from dualtoken.schema import ConfigError, apply_overrides
from dualtoken.training.tokenizer_config import ArchitectureOverrides

MINIMAL = {"data": {"sources": [{"kind": "demo", "name": "shapes"}]}}


def test_repo_params_file_is_valid():
    from dualtoken.models.teacher import vision_config_of

    cfg = load_config("params.yaml")
    assert [s.kind for s in cfg.data.sources] == ["demo", "mnist"]
    # the curated images are what the demo towers take
    assert cfg.curate.resolution == vision_config_of(cfg.teacher.architecture)["image_size"] == 32


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"curate\.wokers: unknown key"):
        parse_config({**MINIMAL, "curate": {"wokers": 3}})


def test_the_mllm_learning_rate_is_only_set_per_phase():
    """One knob per fact: an ``mllm.optim.lr`` that no phase would read is refused, not ignored."""
    with pytest.raises(ConfigError, match=r"mllm\.optim\.lr: unknown key"):
        parse_config({**MINIMAL, "mllm": {"optim": {"lr": 1e-3}}})
    assert parse_config(MINIMAL).pipeline.stages[-1] == "evaluate"  # by default the flow runs the whole graph


def test_bad_value_names_key_and_range():
    with pytest.raises(ConfigError, match=r"curate\.workers: Input should be greater than or equal to 1 \(got 0\)"):
        parse_config({**MINIMAL, "curate": {"workers": 0}})


def test_split_fractions_must_sum_to_one():
    with pytest.raises(ConfigError, match="sum to 1"):
        parse_config({**MINIMAL, "curate": {"split": {"train": 0.5, "val": 0.1, "test": 0.1}}})


def test_unknown_source_kind_and_duplicate_names():
    with pytest.raises(ConfigError, match=r"data\.sources\.0"):
        parse_config({"data": {"sources": [{"kind": "ftp", "name": "x"}]}})
    with pytest.raises(ConfigError, match="unique"):
        parse_config({"data": {"sources": [{"kind": "demo", "name": "a"}, {"kind": "mnist", "name": "a"}]}})


def test_threshold_must_fit_hash():
    with pytest.raises(ConfigError, match="below the hash length"):
        parse_config({**MINIMAL, "curate": {"phash_size": 4, "near_dup_hamming": 16}})


def test_overrides_parse_like_yaml_and_index_lists():
    raw = apply_overrides(MINIMAL, ["curate.workers=4", "data.sources.0.num_images=10", "curate.publish_uri=null",
                                    "curate.split={train: 0.8, val: 0.1, test: 0.1}"])
    cfg = parse_config(raw)
    assert cfg.curate.workers == 4 and cfg.data.sources[0].num_images == 10
    assert cfg.curate.publish_uri is None and cfg.curate.split.train == 0.8
    assert MINIMAL["data"]["sources"][0] == {"kind": "demo", "name": "shapes"}  # input untouched


@pytest.mark.parametrize("bad", ["curate.workers", "data.sources.5.seed=1", "seed.x=1"])
def test_malformed_overrides_are_errors(bad):
    with pytest.raises(ConfigError):
        apply_overrides(MINIMAL | {"seed": 0}, [bad])


def test_secrets_have_no_place_in_params():
    with pytest.raises(ConfigError, match=r"storage\.aws_secret_access_key: unknown key"):
        parse_config({**MINIMAL, "storage": {"aws_secret_access_key": "x"}})


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_training_sections_are_validated_with_their_keys():
    with pytest.raises(ConfigError, match=r"tokenizer\.losses\.perceptal: unknown key"):
        parse_config({**MINIMAL, "tokenizer": {"losses": {"perceptal": 1.0}}})
    with pytest.raises(ConfigError, match=r"tokenizer\.losses: .*lpips_weights"):
        parse_config({**MINIMAL, "tokenizer": {"losses": {"perceptual_kind": "lpips", "lpips_weights": None}}})
    with pytest.raises(ConfigError, match=r"tokenizer\.losses: .*stage_2\.gan: stage 2 freezes the decoder"):
        parse_config({**MINIMAL, "tokenizer": {"losses": {"stage_2": {"semantic_tap": 1, "semantic_pooled": 5,
                                                                      "gan": True}}}})
    with pytest.raises(ConfigError, match=r"tokenizer\.losses\.stage_0\.semantic_tap_form: "):
        parse_config({**MINIMAL, "tokenizer": {"losses": {"stage_0": {"semantic_tap": 1, "semantic_pooled": 5,
                                                                      "gan": False, "semantic_tap_form": "l1"}}}})
    with pytest.raises(ConfigError, match=r"teacher\.optim\.betas: .*\[0, 1\)"):
        parse_config({**MINIMAL, "teacher": {"optim": {"betas": [0.9, 1.5]}}})
    with pytest.raises(ConfigError, match=r"tokenizer\.stage: .*got 3"):
        parse_config({**MINIMAL, "tokenizer": {"stage": 3}})
    cfg = parse_config({**MINIMAL, "tokenizer": {"runtime": {"nproc": 2, "precision": "bf16"}}})
    assert cfg.tokenizer.runtime.nproc == 2 and cfg.tokenizer.optim.betas == (0.5, 0.9)  # paper defaults


def test_uneven_batch_split_is_a_named_error():
    from dualtoken.training.rank_data import micro_batch

    assert micro_batch(32, 2, 4, "tokenizer") == 4
    with pytest.raises(ValueError, match=r"tokenizer\.batch_size \(30\).*2 x 4"):
        micro_batch(30, 2, 4, "tokenizer")


def test_launch_settings_are_checked_against_the_stages():
    def launch(stages: dict, **extra) -> None:
        parse_config({**MINIMAL, **extra, "launch": {"stages": stages}})

    launch({"tokenize": {"backend": "slurm", "array": 4}, "mllm": {"backend": "slurm", "nodes": 2}})
    with pytest.raises(ConfigError, match=r"stages.teacher.array: only curate, tokenize"):
        launch({"teacher": {"array": 2}})
    with pytest.raises(ConfigError, match=r"launch.stages.mlm.\[key\]"):
        launch({"mlm": {}})
    with pytest.raises(ConfigError, match="nodes=2 needs a scheduler"):
        launch({"mllm": {"nodes": 2}})
    with pytest.raises(ConfigError, match=r"stages.curate.nodes: curate runs in one process"):
        launch({"curate": {"backend": "slurm", "nodes": 2}})
    launch({"ablation": {"backend": "slurm", "gpus_per_node": 8}})  # one process per GPU, whatever nproc says
    with pytest.raises(ConfigError, match=r"launch.stages.mllm.mem"):
        launch({"mllm": {"mem": "lots"}})
    with pytest.raises(ConfigError, match="each array task runs on one node"):
        launch({"tokenize": {"backend": "slurm", "array": 2, "nodes": 2}})
    with pytest.raises(ConfigError, match="needs a memory limit"):
        launch({"teacher": {"backend": "kubernetes"}})
    with pytest.raises(ConfigError, match=r"stages.teacher: a Kubernetes job needs the workspace"):
        launch({"teacher": {"backend": "kubernetes", "mem": "8G"}})
    parse_config({**MINIMAL, "launch": {"kubernetes": {"workspace_claim": "ws"},
                                        "stages": {"teacher": {"backend": "kubernetes", "mem": "8G"}}}})


def test_a_launch_file_replaces_only_where_stages_run(tmp_path):
    other = tmp_path / "launch.yaml"
    other.write_text("launch:\n  stages:\n    tokenize: {backend: slurm, array: 3}\n")
    cfg = load_config("params.yaml", launch_file=other)
    assert cfg.launch.for_stage("tokenize").array == 3 and cfg.launch.for_stage("curate").backend == "local"
    assert cfg.model_dump(exclude={"launch"}) == load_config("params.yaml").model_dump(exclude={"launch"})
    assert load_config("params.yaml", launch_file="infra/slurm/launch.yaml").launch.for_stage("mllm").backend == "slurm"
    other.write_text("launch: {}\nmllm: {steps: 1}\n")
    with pytest.raises(ConfigError, match=r"only a `launch:` section .* found \['launch', 'mllm'\]"):
        load_config("params.yaml", launch_file=other)
    other.write_text("launch: {stages: {tokenize: {array: -1}}}\n")
    with pytest.raises(ConfigError, match=r"params.yaml with .*launch.yaml:\n  launch.stages.tokenize.array"):
        load_config("params.yaml", launch_file=other)


def test_architecture_overrides_name_every_dualtoken_config_key():
    """The typed ``tokenizer.overrides`` mirror the model's configuration: a key added to one is in the other."""
    keys = set(inspect.signature(DualTokenConfig.__init__).parameters) - {"self", "kwargs", "vision_config"}
    assert set(ArchitectureOverrides.model_fields) == keys
