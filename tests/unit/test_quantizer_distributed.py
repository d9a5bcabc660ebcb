"""EMA statistics are all-reduced: two gloo ranks on halves of a batch == one process on the whole batch."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dualtoken.models.quantizer import ResidualQuantizer


def _quantizer() -> ResidualQuantizer:
    rq = ResidualQuantizer(dim=4, codebook_size=16, depth=3, decay=0.8, restart_threshold=-1.0)
    rq.codebooks.data = torch.randn(1, 16, 4, generator=torch.Generator().manual_seed(1))
    rq.embed_sum.copy_(rq.codebooks)
    rq.initialized.fill_(True)
    return rq


def _batch() -> torch.Tensor:
    return torch.randn(512, 4, generator=torch.Generator().manual_seed(2))


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rq = _quantizer()
        for _ in range(3):
            rq(_batch().chunk(world)[rank])
        torch.save(rq.codebooks.clone(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    single = _quantizer()
    for _ in range(3):
        single(_batch())
    assert torch.equal(rank0, rank1)
    assert torch.allclose(rank0, single.codebooks, atol=1e-5)
    assert not torch.allclose(rank0, _quantizer().codebooks)  # the update did something
