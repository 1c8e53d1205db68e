"""IRNet (wsss_blocks.models.irnet): parity with a transcription of the released network, frozen backbone,
flip-averaged boundary map, checkpoint loading in the released key layout, errors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss_blocks.models.irnet import BoundaryHead, IRNet, irnet_key_map


# --------------------------------------------------------------------------------------------------
# transcription of jiwoon-ahn/irn net/resnet50.py + net/resnet50_irn.py (a2ece00), for comparison only
# --------------------------------------------------------------------------------------------------
class _FixedBatchNorm(nn.BatchNorm2d):
    def forward(self, input):
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = _FixedBatchNorm(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = _FixedBatchNorm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = _FixedBatchNorm(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        return self.relu(out + residual)


class _ReleaseResNet(nn.Module):
    def __init__(self, layers, strides=(2, 2, 2, 1)):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=strides[0], padding=3, bias=False)
        self.bn1 = _FixedBatchNorm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], strides[1])
        self.layer3 = self._make_layer(256, layers[2], strides[2])
        self.layer4 = self._make_layer(512, layers[3], strides[3])

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       _FixedBatchNorm(planes * 4))
        layers = [_Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [_Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


def _gn_branch(cin, cout, groups, up=None):
    layers = [nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(groups, cout)]
    if up:
        layers.append(nn.Upsample(scale_factor=up, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _ReleaseIRNet(nn.Module):
    """``Net`` + ``EdgeDisplacement`` of the release, with the buffers ``AffinityDisplacementLoss`` saves."""

    def __init__(self, layers=(1, 1, 1, 1), crop_size=64):
        super().__init__()
        self.resnet50 = _ReleaseResNet(layers)
        r = self.resnet50
        self.stage1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.stage2 = nn.Sequential(r.layer1)
        self.stage3 = nn.Sequential(r.layer2)
        self.stage4 = nn.Sequential(r.layer3)
        self.stage5 = nn.Sequential(r.layer4)
        self.register_buffer("mean_shift_running_mean", torch.zeros(2))
        self.fc_edge1 = _gn_branch(64, 32, 4)
        self.fc_edge2 = _gn_branch(256, 32, 4)
        self.fc_edge3 = _gn_branch(512, 32, 4, 2)
        self.fc_edge4 = _gn_branch(1024, 32, 4, 4)
        self.fc_edge5 = _gn_branch(2048, 32, 4, 4)
        self.fc_edge6 = nn.Conv2d(160, 1, 1, bias=True)
        self.fc_dp1 = _gn_branch(64, 64, 8)
        self.fc_dp7 = nn.Sequential(nn.Conv2d(448, 256, 1, bias=False), nn.GroupNorm(16, 256), nn.ReLU(),
                                    nn.Conv2d(256, 2, 1, bias=False))
        self.register_buffer("path_indices0", torch.zeros(3, 2, 5, dtype=torch.long))
        self.register_buffer("disp_target", torch.zeros(1, 2, 3, 1))
        self.crop_size = crop_size

    def net_forward(self, x):
        x1 = self.stage1(x).detach()
        x2 = self.stage2(x1).detach()
        x3 = self.stage3(x2).detach()
        x4 = self.stage4(x3).detach()
        x5 = self.stage5(x4).detach()
        edge1 = self.fc_edge1(x1)
        edge2 = self.fc_edge2(x2)
        edge3 = self.fc_edge3(x3)[..., :edge2.size(2), :edge2.size(3)]
        edge4 = self.fc_edge4(x4)[..., :edge2.size(2), :edge2.size(3)]
        edge5 = self.fc_edge5(x5)[..., :edge2.size(2), :edge2.size(3)]
        return self.fc_edge6(torch.cat([edge1, edge2, edge3, edge4, edge5], dim=1))

    def edge_displacement(self, x):  # x: the image and its flip, (2, 3, H, W)
        feat_size = (x.size(2) - 1) // 4 + 1, (x.size(3) - 1) // 4 + 1
        x = F.pad(x, [0, self.crop_size - x.size(3), 0, self.crop_size - x.size(2)])
        edge_out = self.net_forward(x)[..., :feat_size[0], :feat_size[1]]
        return torch.sigmoid(edge_out[0] / 2 + edge_out[1].flip(-1) / 2)


def _randomise(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * (0.1 if t.ndim > 1 else 0.5))


@pytest.fixture(scope="module")
def release_and_ours(tmp_path_factory):
    torch.manual_seed(0)
    ref = _ReleaseIRNet().eval()
    _randomise(ref)
    sd = {k.replace("mean_shift_running_mean", "mean_shift.running_mean"): v for k, v in ref.state_dict().items()}
    assert "stage1.0.weight" in sd
    assert "resnet50.conv1.weight" in sd
    path = tmp_path_factory.mktemp("irn") / "res50_irn.pth"
    torch.save(sd, path)
    ours = IRNet(path, layers=(1, 1, 1, 1)).eval()
    return ref, ours


def test_loads_released_checkpoint_and_matches_release_forward(release_and_ours):
    ref, ours = release_and_ours
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref.net_forward(x), rtol=1e-5, atol=1e-5)
    for k, v in ref.state_dict().items():
        mapped = irnet_key_map(k)
        if mapped is not None and mapped in ours.state_dict():
            assert torch.equal(ours.state_dict()[mapped], v)


def test_boundary_map_equals_release_edge_displacement(release_and_ours):
    ref, ours = release_and_ours
    img = torch.randn(1, 3, 50, 61, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref.edge_displacement(torch.cat([img, img.flip(-1)]))
    got = ours.boundary_map(img, pad_to=64)
    assert got.shape == (1, 1, 13, 16)
    torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=1e-6)
    # batched images give the per-image results
    two = torch.cat([img, img * 0.5])
    torch.testing.assert_close(ours.boundary_map(two, pad_to=64)[:1], got, rtol=1e-5, atol=1e-6)
    # without the flip: the plain sigmoid of the cropped logits
    plain = torch.sigmoid(ours(F.pad(img, [0, 3, 0, 14]))[..., :13, :16])
    torch.testing.assert_close(ours.boundary_map(img, flip=False, pad_to=64), plain, rtol=1e-5, atol=1e-6)


def test_backbone_is_frozen_and_only_the_boundary_branch_trains():
    net = IRNet.tiny().train()
    assert not net.resnet50.training
    assert net.edge.training
    assert all(not m.training for m in net.resnet50.modules())
    bn = net.resnet50.bn1
    stats = bn.running_mean.clone()
    out = net(torch.randn(2, 3, 48, 48))
    out.sum().backward()
    assert torch.equal(bn.running_mean, stats)  # running statistics never move
    assert all(p.grad is None for p in net.resnet50.parameters())
    assert all(p.grad is not None for p in net.edge.parameters())
    assert {id(p) for p in net.trainable_parameters()} == {id(p) for p in net.edge.parameters()}


def test_strides_and_output_size():
    net = IRNet.tiny().eval()
    feats = net.features(torch.rand(1, 3, 67, 90))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 17, 23), (256, 17, 23), (512, 9, 12), (1024, 5, 6),
                                                   (2048, 5, 6)]  # strides 4, 4, 8, 16, 16
    assert net(torch.rand(1, 3, 67, 90)).shape == (1, 1, 17, 23)
    # larger than pad_to: padded to a multiple of 16 instead of failing
    assert net.boundary_map(torch.rand(1, 3, 70, 20), pad_to=64).shape == (1, 1, 18, 5)
    b = net.boundary_map(torch.rand(1, 3, 30, 20), pad_to=None)
    assert b.shape == (1, 1, 8, 5)
    assert float(b.min()) > 0
    assert float(b.max()) < 1


def test_torchvision_checkpoint_loads_backbone_only(tmp_path):
    import torchvision

    tv = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], width_per_group=8)
    _randomise(tv, 3)
    torch.save(tv.state_dict(), tmp_path / "r50.pth")
    net = IRNet.tiny()
    report = net.load_pretrained(tmp_path / "r50.pth")
    assert torch.equal(net.resnet50.layer4[0].conv3.weight, tv.layer4[0].conv3.weight)
    assert any(k.startswith("edge.") for k in report.missing)
    assert "fc.weight" in report.dropped
    with pytest.raises(ValueError, match="does not fit IRNet"):
        net.load_pretrained({"foo.weight": torch.zeros(1)})


def test_boundary_head_checks():
    with pytest.raises(ValueError, match="5 entries"):
        BoundaryHead((1, 2, 3))
    with pytest.raises(ValueError, match="multiple of num_groups"):
        BoundaryHead(mid_channels=30)
    head = BoundaryHead((4, 8, 8, 16, 16), scale_factors=(1, 1, 1, 1, 1))
    feats = [torch.rand(1, 4, 8, 8), torch.rand(1, 8, 8, 8), torch.rand(1, 8, 4, 4), torch.rand(1, 16, 2, 2),
             torch.rand(1, 16, 2, 2)]
    with pytest.raises(ValueError, match="smaller than the stage-2 map"):
        head(feats)
    with pytest.raises(ValueError, match="features must hold the 5 stage maps"):
        head(feats[:4])
    with pytest.raises(ValueError, match="strides must be 4 values"):
        IRNet.tiny(strides=(2, 2, 2))
    net = IRNet.tiny()
    with pytest.raises(ValueError, match="images must have 3 channels"):
        net(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match="pad_to must be an int >= 1"):
        net.boundary_map(torch.rand(1, 3, 32, 32), pad_to=0)
