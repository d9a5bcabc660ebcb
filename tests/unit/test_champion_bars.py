"""The champion bars: each bound resolved (a number or another metric), the verdict, and errors naming the key."""

import pytest

from dualtoken.evaluation.bars import check_bars
from dualtoken.evaluation.config import BarConfig, EvaluateConfig
from dualtoken.schema import ConfigError

METRICS = {"tokenizer": {"reconstruction": {"psnr": 23.5, "protocol": "uint8"}},
           "mllm": {"vqa": {"accuracy": 0.68, "majority_baseline": 0.39}}}


def _bars(*raw):
    return EvaluateConfig.model_validate({"champion_bars": list(raw)}).champion_bars


def test_bars_hold_against_numbers_and_other_metrics():
    verdict = check_bars(METRICS, _bars({"metric": "tokenizer.reconstruction.psnr", "min": 20},
                                        {"metric": "mllm.vqa.accuracy", "min": "mllm.vqa.majority_baseline",
                                         "max": 1.0}))
    assert verdict == {"passed": True, "bars": [
        {"metric": "tokenizer.reconstruction.psnr", "value": 23.5, "min": 20.0, "max": None, "passed": True},
        {"metric": "mllm.vqa.accuracy", "value": 0.68, "min": 0.39, "max": 1.0, "passed": True}]}


def test_one_bar_missed_fails_the_verdict_and_bounds_are_inclusive():
    verdict = check_bars(METRICS, _bars({"metric": "tokenizer.reconstruction.psnr", "min": 23.5},
                                        {"metric": "mllm.vqa.majority_baseline", "max": 0.3}))
    assert [b["passed"] for b in verdict["bars"]] == [True, False] and verdict["passed"] is False


def test_a_bar_needs_a_bound():
    with pytest.raises(ValueError, match=r"champion_bars\.0[\s\S]*sets neither min nor max"):
        _bars({"metric": "mllm.vqa.accuracy"})
    with pytest.raises(ValueError, match=r"champion_bars\.0\.maximum"):
        _bars({"metric": "mllm.vqa.accuracy", "maximum": 1})


@pytest.mark.parametrize(("bar", "message"), [
    ({"metric": "mllm.vqa.acc", "min": 0.5}, r"champion_bars\.0\.metric: the metrics have no 'mllm\.vqa\.acc' "
                                             r"\(at 'acc'; there: \['accuracy', 'majority_baseline'\]\)"),
    ({"metric": "mllm.vqa.accuracy", "min": "mllm.baseline"}, r"champion_bars\.0\.min: .*'mllm\.baseline'"),
    ({"metric": "tokenizer.reconstruction.protocol", "max": 1}, r"champion_bars\.0\.metric: .* is no number"),
])
def test_a_bar_on_no_number_names_its_key(bar, message):
    with pytest.raises(ConfigError, match=message):
        check_bars(METRICS, [BarConfig.model_validate(bar)])
