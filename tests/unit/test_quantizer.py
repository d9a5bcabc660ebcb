import itertools

import pytest
import torch

from dualtoken.models.quantizer import ResidualQuantizer, kmeans_plus_plus, nearest_codes


def _clustered(n: int, dim: int, centres: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centres, dim, generator=g) * 3
    return means[torch.randint(centres, (n,), generator=g)] + 0.3 * torch.randn(n, dim, generator=g)


def test_chunked_search_equals_unchunked_and_brute_force():
    g = torch.Generator().manual_seed(0)
    x, book = torch.randn(1000, 16, generator=g), torch.randn(300, 16, generator=g)
    full = nearest_codes(x, book, chunk_size=10_000)
    assert torch.equal(nearest_codes(x, book, chunk_size=7), full)
    assert torch.equal(full, torch.cdist(x, book).argmin(1))


def test_search_keeps_float32_under_bf16_autocast():
    torch.manual_seed(0)
    x, book = torch.randn(2000, 32), torch.randn(512, 32)
    exact = torch.cdist(x, book).argmin(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(nearest_codes(x, book), exact)
        scores = torch.addmm((book**2).sum(1), x, book.t(), beta=1.0, alpha=-2.0)
    assert not torch.equal(scores.float().argmin(1), exact)  # what bf16 scoring would have chosen


@pytest.mark.parametrize("shared", [True, False])
def test_shapes_codes_in_range_and_residual_shrinks_with_depth(shared):
    rq = ResidualQuantizer(dim=8, codebook_size=64, depth=4, shared_codebook=shared)
    z = _clustered(2048, 8, 40).reshape(8, 16, 16, 8)
    out = rq(z)
    assert out.quantized.shape == z.shape and out.codes.shape == (8, 16, 16, 4)
    assert out.codes.dtype == torch.long and out.codes.min() >= 0 and out.codes.max() < 64
    assert out.partial_sums.shape == (8, 16, 16, 4, 8)
    assert torch.allclose(out.partial_sums[..., -1, :], out.quantized, atol=1e-5)
    errors = [(z - out.partial_sums[..., k, :]).norm(dim=-1).mean().item() for k in range(4)]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    rq.eval()  # training updated the codebooks after the forward; eval leaves them be
    out = rq(z)
    assert torch.allclose(rq.embed_codes(out.codes), out.quantized, atol=1e-5)
    assert ((out.usage > 0) & (out.usage <= 1)).all() and ((out.perplexity >= 1) & (out.perplexity <= 64)).all()


def test_straight_through_gradient_reaches_the_encoder():
    encoder = torch.nn.Linear(4, 8)
    rq = ResidualQuantizer(dim=8, codebook_size=32, depth=2)
    x = torch.randn(256, 4)
    out = rq(encoder(x))
    (out.quantized.sum() + out.commitment_loss).backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    # The identity part of the gradient: d(sum quantized)/dz = 1 for every element.
    z = torch.randn(64, 8, requires_grad=True)
    rq(z).quantized.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))


def test_ema_update_matches_hand_computed_example():
    rq = ResidualQuantizer(dim=1, codebook_size=2, depth=1, decay=0.5, eps=0.0, restart_threshold=0.0)
    rq.codebooks.data = torch.tensor([[[0.0], [10.0]]])
    rq.embed_sum.copy_(rq.codebooks)
    rq.cluster_size.fill_(1.0)
    rq.initialized.fill_(True)
    rq(torch.tensor([[1.0], [2.0], [9.0]]))
    # code 0 takes {1, 2}: count 0.5*1 + 0.5*2 = 1.5, sum 0.5*0 + 0.5*3 = 1.5
    # code 1 takes {9}:    count 0.5*1 + 0.5*1 = 1.0, sum 0.5*10 + 0.5*9 = 9.5
    assert torch.allclose(rq.cluster_size, torch.tensor([[1.5, 1.0]]))
    assert torch.allclose(rq.embed_sum, torch.tensor([[[1.5], [9.5]]]))
    # eps = 0: Laplace smoothing is the identity, so each code is sum / count
    assert torch.allclose(rq.codebooks, torch.tensor([[[1.0], [9.5]]]))


def test_a_shared_book_updates_after_each_depth_as_released_by_hand():
    """Depth 2, one book, decay 0.5, eps 0: depth 1 assigns, the book updates, depth 2 searches the updated book
    and the book updates again; the chosen vectors are the updated ones. Once a step instead: one update from
    both depths' assignments, on the book both searched."""
    x = torch.tensor([[1.0], [2.0], [9.0]])

    def quantizer(ema_updates):
        rq = ResidualQuantizer(dim=1, codebook_size=2, depth=2, decay=0.5, eps=0.0, restart_threshold=0.0,
                               ema_updates=ema_updates)
        rq.codebooks.data = torch.tensor([[[0.0], [10.0]]])
        rq.embed_sum.copy_(rq.codebooks)
        rq.initialized.fill_(True)
        return rq

    rq = quantizer("depth")
    out = rq(x)
    # depth 1: {1, 2} -> code 0, {9} -> code 1; counts 1.5 / 1.0, sums 1.5 / 9.5: the book becomes [1.0, 9.5]
    # residuals 0, 1, -0.5 -> all code 0 of [1.0, 9.5]: count 0.75 + 1.5 = 2.25, sum 0.75 + 0.25 = 1.0
    #   code 1: count 0.5, sum 4.75: the book becomes [1/2.25, 9.5]
    assert out.codes.tolist() == [[0, 0], [0, 0], [1, 0]]
    assert torch.allclose(rq.cluster_size, torch.tensor([[2.25, 0.5]]))
    assert torch.allclose(rq.codebooks, torch.tensor([[[1.0 / 2.25], [9.5]]]))
    first, second = torch.tensor([1.0, 1.0, 9.5]), torch.full((3,), 1.0 / 2.25)
    assert torch.allclose(out.quantized[:, 0], first + second) and int(rq.updates) == 2

    once = quantizer("step")
    out = once(x)
    # both depths search [0, 10]: depth 1 as above; residuals 1, 2, -1 -> all code 0. One update from the five
    # assignments to code 0 (1, 2, 1, 2, -1) and one to code 1 (9): counts 0.5 + 2.5 = 3.0 / 1.0
    assert out.codes.tolist() == [[0, 0], [0, 0], [1, 0]]
    assert torch.allclose(once.cluster_size, torch.tensor([[3.0, 1.0]])) and int(once.updates) == 1
    assert torch.allclose(once.codebooks, torch.tensor([[[2.5 / 3.0], [9.5]]]))


def test_laplace_smoothing_keeps_rarely_used_codes_finite():
    rq = ResidualQuantizer(dim=2, codebook_size=4, depth=1, decay=0.0, eps=1e-5, restart_threshold=-1.0)
    rq.initialized.fill_(True)
    rq(torch.zeros(10, 2) + torch.tensor([5.0, 5.0]))  # one code takes everything, three get nothing
    assert torch.isfinite(rq.codebooks).all()


def test_dead_codes_are_restarted_from_the_batch():
    rq = ResidualQuantizer(dim=2, codebook_size=8, depth=1, decay=0.0, restart_threshold=0.5)
    rq.codebooks.data = torch.full((1, 8, 2), 100.0)
    rq.codebooks.data[0, 0] = 0.0
    rq.embed_sum.copy_(rq.codebooks)
    rq.initialized.fill_(True)
    batch = torch.randn(64, 2)
    rq(batch)
    restarted = rq.codebooks[0, 1:]
    assert (restarted.abs() < 50).all()  # no longer the far-away dead value
    member = (restarted[:, None, :] == batch[None]).all(-1).any(-1)
    assert member.all()  # each restarted code is a vector of the batch
    assert (rq.cluster_size[0, 1:] == 1.0).all()


@pytest.mark.parametrize(("threshold", "updates_until_restart_expected"), [(1.0, 1), (1e-3, 688)])
def test_the_released_restart_rule_revives_an_unused_code_at_its_first_update(threshold,
                                                                               updates_until_restart_expected):
    """The default (1.0) is the released code's rule: a code whose EMA count is below 1 after an update restarts
    then. From a count of 1 at decay 0.99 that is the first update without it; at 1e-3 it is the 688th
    (0.99^687 = 1.0e-3, 0.99^688 < 1e-3)."""
    assert ResidualQuantizer(dim=1, codebook_size=2, depth=1).restart_threshold == 1.0
    rq = ResidualQuantizer(dim=1, codebook_size=2, depth=1, decay=0.99, restart_threshold=threshold)
    rq.codebooks.data = torch.tensor([[[0.0], [1000.0]]])  # code 1 is never nearest to the batch
    rq.embed_sum.copy_(rq.codebooks)
    rq.initialized.fill_(True)
    batch = torch.tensor([[0.5], [-0.5]])

    def updates_until_restart() -> int:
        for update in range(1, 1000):
            rq(batch)
            if rq.codebooks[0, 1, 0] < 500:  # EMA smoothing moves it a little; a restart moves it to the batch
                return update
        return -1

    assert updates_until_restart() == updates_until_restart_expected
    assert rq.codebooks[0, 1, 0] in batch and rq.cluster_size[0, 1] == 1.0


def test_learned_codebook_gets_gradients_and_ema_codebook_does_not():
    learned = ResidualQuantizer(dim=4, codebook_size=16, depth=2, update="learned")
    out = learned(torch.randn(128, 4))
    (out.codebook_loss + out.commitment_loss).backward()
    assert learned.codebooks.grad is not None and learned.codebooks.grad.abs().sum() > 0
    ema = ResidualQuantizer(dim=4, codebook_size=16, depth=2)
    assert not any(p.requires_grad for p in ema.parameters())
    assert ema(torch.randn(128, 4)).codebook_loss.item() == 0.0


def test_training_reduces_quantization_error():
    torch.manual_seed(0)
    data = _clustered(4096, 8, 64, seed=1)
    rq = ResidualQuantizer(dim=8, codebook_size=32, depth=2, decay=0.9, init="sample")
    first = rq(data).commitment_loss.item()
    for _ in range(30):
        last = rq(data[torch.randperm(4096)[:1024]]).commitment_loss.item()
    rq.eval()
    assert rq(data).commitment_loss.item() < first and last < first


def test_kmeans_plus_plus_spreads_centres():
    means = torch.stack(torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij"), -1).reshape(12, 2) * 10
    x = means.repeat(100, 1) + 0.01 * torch.randn(1200, 2, generator=torch.Generator().manual_seed(0))
    centres = kmeans_plus_plus(x, 12, torch.Generator().manual_seed(0))
    assert centres.shape == (12, 2)
    assert torch.cdist(centres, means).argmin(1).unique().numel() == 12  # one centre per cluster
    few = kmeans_plus_plus(x[:3], 8, torch.Generator().manual_seed(0))
    assert few.shape == (8, 2)


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="update"):
        ResidualQuantizer(4, 8, 2, update="adam")
    with pytest.raises(ValueError, match="last dimension 4"):
        ResidualQuantizer(4, 8, 2)(torch.randn(3, 5))
