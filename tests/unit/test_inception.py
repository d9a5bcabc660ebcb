"""FID Inception-v3: pytorch-fid's state-dict layout, pool3 features, the TF pool branches, strict local loading."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dualtoken.models.inception import WEIGHTS_NAME, FIDInceptionV3

# torchvision inception_v3 without AuxLogits: 21,785,568 below the head, plus the 1008-class fc (2048 * 1008 + 1008).
PARAMETERS = 23_850_960
SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_1.conv.weight": (128, 768, 1, 1),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_2.conv.weight": (384, 448, 3, 3),
    "Mixed_7c.branch3x3_2a.conv.weight": (384, 384, 1, 3),
    "Mixed_7c.branch_pool.bn.running_mean": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def model() -> FIDInceptionV3:
    """Random weights that keep activations O(1) (He-initialised convs, random BN statistics), frozen."""
    torch.manual_seed(0)
    net = FIDInceptionV3()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
            module.bias.data.uniform_(-0.1, 0.1)
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def features(model: FIDInceptionV3, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images)


def test_state_dict_matches_pytorch_fid_layout(model: FIDInceptionV3) -> None:
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS
    for key, shape in SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    convs = [k for k in state if k.endswith(".conv.weight")]
    assert len(convs) == 94 and not any(k.endswith(".conv.bias") for k in state)
    assert len(state) == 94 * 6 + 2  # conv weight + bn weight/bias/running_mean/running_var/num_batches_tracked, fc
    assert not any(k.startswith("AuxLogits") for k in state)
    assert all(m.eps == 0.001 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_pool3_features(features: torch.Tensor, model: FIDInceptionV3, images: torch.Tensor) -> None:
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    assert torch.isfinite(features).all() and (features >= 0).all() and features.std() > 0
    quantised = (images[:1] * 255).round()
    with torch.no_grad():
        assert torch.equal(model(quantised.to(torch.uint8)), model(quantised / 255))


@pytest.mark.parametrize(("block", "pool"), [
    ("Mixed_5b", "avg"), ("Mixed_6b", "avg"), ("Mixed_7b", "avg"), ("Mixed_7c", "max"),
])
def test_pool_branches_follow_tf(model: FIDInceptionV3, block: str, pool: str) -> None:
    """The last block output channels are the pool branch: averages skip padding, Mixed_7c max-pools."""
    mixed = getattr(model, block)
    cin = mixed.branch_pool.conv.in_channels
    x = torch.rand(1, cin, 5, 5, generator=torch.Generator().manual_seed(2))
    pooled = (F.max_pool2d(x, 3, 1, 1) if pool == "max" else F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    with torch.no_grad():
        expected = mixed.branch_pool(pooled)
        assert torch.allclose(mixed(x)[:, -expected.shape[1]:], expected, rtol=1e-5, atol=1e-6)


def test_from_file_round_trips(model: FIDInceptionV3, images: torch.Tensor, features: torch.Tensor,
                               tmp_path) -> None:
    state = model.state_dict()
    save_file(state, tmp_path / "inception.safetensors")
    torch.save(state, tmp_path / "inception.pth")
    for name in ("inception.safetensors", "inception.pth"):
        loaded = FIDInceptionV3.from_file(tmp_path / name)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        with torch.no_grad():
            assert torch.equal(loaded(images), features), name


def test_from_file_rejects_mismatched_or_missing(model: FIDInceptionV3, tmp_path) -> None:
    state = dict(model.state_dict())
    del state["Mixed_6b.branch7x7_1.conv.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing keys Mixed_6b\.branch7x7_1\.conv\.weight"):
        FIDInceptionV3.from_file(tmp_path / "missing.pth")

    state = {**model.state_dict(), "AuxLogits.fc.weight": torch.zeros(1008, 768)}
    save_file(state, tmp_path / "aux.safetensors")
    with pytest.raises(ValueError, match=r"unexpected keys AuxLogits\.fc\.weight"):
        FIDInceptionV3.from_file(tmp_path / "aux.safetensors")

    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        FIDInceptionV3.from_file(tmp_path / "absent.pth")
