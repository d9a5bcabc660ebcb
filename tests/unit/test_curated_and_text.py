import json

import pytest
import torch
from transformers import AutoTokenizer

from dualtoken.config import parse_config
from dualtoken.curation.pipeline import run_phase1, run_phase2
from dualtoken.data.curated import from_model_output, read_images, to_model_input
from dualtoken.data.shards import shard_urls, split_shards
from dualtoken.data.synthetic import generate_example
from dualtoken.text import train_bpe


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curated")
    cfg = parse_config({"data": {"sources": [{"kind": "demo", "name": "shapes", "num_images": 120,
                                              "images_per_shard": 60}]},
                        "curate": {"output_dir": str(tmp / "out"), "work_dir": str(tmp / "work"), "workers": 1,
                                   "samples_per_shard": 40}})
    result = run_phase2(cfg.curate, run_phase1(cfg.data.sources, cfg.curate, cfg.storage))
    (tmp / "out" / "shards.json").write_text(json.dumps({"splits": result.stats["shards_by_split"],
                                                         "shards": result.stats["shards"]}))
    return tmp / "out", result


def test_read_images_matches_the_manifest_and_the_index_counts_each_shard(curated):
    root, result = curated
    train = read_images(root, "train", 1000)
    expected = [r for r in result.manifest_rows if r["split"] == "train"]
    assert len(train) == len(expected) and train.images.shape == (len(expected), 3, 64, 64)
    assert train.images.dtype == torch.uint8
    assert [m["key"] for m in train.meta] == [r["key"] for r in expected]
    assert {"captions", "qa", "attributes"} <= set(train.meta[0])
    assert len(read_images(root, "train", 5)) == 5
    shards = split_shards(root, "train")
    assert [s.samples for s in shards] == [sum(r["shard"] == s.name for r in expected) for s in shards]
    assert all((root / f"{s.name}.idx").is_file() for s in shards)
    x = to_model_input(train.images[:4])
    assert x.min() >= -1 and x.max() <= 1 and torch.equal(from_model_output(x), train.images[:4])


def test_missing_index_and_bad_split_are_clear(tmp_path, curated):
    with pytest.raises(FileNotFoundError, match=r"shards.json not found: run the stage"):
        shard_urls(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        shard_urls(curated[0], "dev")


def test_bpe_tokenizer_round_trip_and_offline_reload(tmp_path):
    captions = [c for i in range(300) for c in generate_example(0, i).captions]
    tok = train_bpe(captions, vocab_size=400, extra_special_tokens=("<image>",))
    again = train_bpe(captions, vocab_size=400, extra_special_tokens=("<image>",))
    assert tok.get_vocab() == again.get_vocab()  # deterministic
    text = "a small red circle at the top left"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True).strip() == text
    assert len(ids) < len(text.split()) + 4  # frequent words are single tokens
    assert tok.convert_tokens_to_ids("<image>") != tok.unk_token_id
    tok.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded(text)["input_ids"] == ids and loaded.pad_token == "<pad>"
