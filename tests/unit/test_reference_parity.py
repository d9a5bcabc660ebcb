"""Our torchvision-free LPIPS-VGG and FID Inception-v3 against the reference packages (lpips, pytorch-fid).

Both references need torchvision, which cannot be installed on the CPU machines this suite runs on (only CUDA
builds exist there, and they break ``import transformers``), so these skip there with that reason; a machine
with torchvision, lpips and pytorch-fid runs them. Neither downloads anything: the networks are compared with
the same random weights, which is what parity of the architecture needs (the published weights then load into
ours strictly, as the unit tests of each module check).
"""

import pytest
import torch

NO_TORCHVISION = "torchvision is not installable on these machines (CUDA-only builds break transformers)"


def _reference(name: str):
    pytest.importorskip("torchvision", reason=NO_TORCHVISION)
    return pytest.importorskip(name, reason=f"{name} is not installed")


def test_lpips_matches_the_reference_package():
    lpips = _reference("lpips")
    from dualtoken.models.lpips import LPIPS, merge_reference_weights

    torch.manual_seed(0)
    # pnet_rand: torchvision's VGG16 with random weights (no download); the linear heads ship in the package
    reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    state = reference.state_dict()
    vgg16 = {"features." + k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("net.slice")}
    ours = LPIPS()
    ours.load_state_dict(merge_reference_weights(vgg16, state), strict=True)
    a, b = torch.rand(2, 2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert ours.eval()(a, b).item() == pytest.approx(reference(a, b).mean().item(), rel=1e-5)


def test_fid_inception_matches_pytorch_fid(monkeypatch):
    inception = _reference("pytorch_fid.inception")
    from dualtoken.models.inception import FIDInceptionV3

    torch.manual_seed(0)
    ours = FIDInceptionV3().eval()
    for module in ours.modules():  # running statistics away from the identity, so BatchNorm is exercised
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    # the reference loads its weights by URL: hand it ours instead (same names, as the TF port's file)
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: ours.state_dict())
    reference = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                                      normalize_input=True, use_fid_inception=True).eval()
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        theirs = reference(images)[0].flatten(1)
        assert torch.allclose(ours(images), theirs, rtol=1e-4, atol=1e-4)
