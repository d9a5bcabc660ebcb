"""Tokenise a corpus and die the way a killed process does (``os._exit``: no cleanup, no finally blocks)
right after the first shard is marked done. Arguments: curated dir, model dir, work dir, loader workers."""

import os
import sys

import torch

from dualtoken.data.tokens import TokenLayout
from dualtoken.models.dualtoken import DualTokenModel
from dualtoken.partition import WorkSlice
from dualtoken.storage import StorageConfig
from dualtoken.tokenization.job import Settings, ShardStore, make_plan, tokenize_slice

IDENTITY = {"test": "kill"}
BATCH = 4

if __name__ == "__main__":
    curated, model_dir, work, workers = sys.argv[1:5]
    model = DualTokenModel.from_pretrained(model_dir)
    plan = make_plan(curated, ["train", "val", "test"], TokenLayout.of_model(model.config), StorageConfig())
    settings = Settings(BATCH, torch.device("cpu"), "fp32", loader_workers=int(workers))
    tokenize_slice(model, plan, ShardStore(work), WorkSlice(), IDENTITY, settings, StorageConfig(),
                   on_shard=lambda record, done, total: os._exit(137))
