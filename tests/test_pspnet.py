"""PMM's segmentation networks: Res2Net v1b, ScaleNet, PSPNet and slide inference.

Parity tests compare with transcriptions (below) of the released modules of ``Eli-YiLi/WSSS_MMSeg``
(``mmseg/models/backbones/res2net.py``, ``scalenet.py``, ``decode_heads/psp_head.py``, ``fcn_head.py``,
``segmentors/encoder_decoder.py`` ``slide_inference``) and ``Eli-YiLi/PMM`` ``network/scalenet.py``, with
SyncBN replaced by BatchNorm2d; the same random weights go into both sides.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss_blocks.models.pspnet import ConvModule, FCNHead, PSPHead, PSPNet, slide_inference
from wsss_blocks.models.res2net import Res2Net, res2net101_v1b
from wsss_blocks.models.scalenet import SCALENET101_STRUCTURE, ScaleNet, scalenet101


def _randomise(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * (0.2 if t.ndim > 1 else 0.5))


# --------------------------------------------------------------------------------------------------
# transcription of WSSS_MMSeg mmseg/models/backbones/res2net.py (SyncBN -> BatchNorm2d)
# --------------------------------------------------------------------------------------------------
class _RelBottle2neck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, baseWidth=26, scale=4, stype="normal",
                 dilation=1):
        super().__init__()
        width = math.floor(planes * (baseWidth / 64.0))
        self.conv1 = nn.Conv2d(inplanes, width * scale, kernel_size=1, bias=False, dilation=dilation)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.nums = 1 if scale == 1 else scale - 1
        if stype == "stage":
            self.pool = nn.AvgPool2d(kernel_size=3, stride=stride, padding=1)
        self.convs = nn.ModuleList([nn.Conv2d(width, width, kernel_size=3, stride=stride, bias=False,
                                              dilation=dilation, padding=dilation) for _ in range(self.nums)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(width) for _ in range(self.nums)])
        self.conv3 = nn.Conv2d(width * scale, planes * 4, kernel_size=1, bias=False, dilation=dilation)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stype, self.scale, self.width = stype, scale, width

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        spx = torch.split(out, self.width, 1)
        for i in range(self.nums):
            if i == 0 or self.stype == "stage":  # noqa: SIM108 - the released code's form
                sp = spx[i]
            else:
                sp = sp + spx[i]
            sp = self.relu(self.bns[i](self.convs[i](sp)))
            out = sp if i == 0 else torch.cat((out, sp), 1)
        if self.scale != 1 and self.stype == "normal":
            out = torch.cat((out, spx[self.nums]), 1)
        elif self.scale != 1 and self.stype == "stage":
            out = torch.cat((out, self.pool(spx[self.nums])), 1)
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        return self.relu(out + residual)


class _RelRes2Net(nn.Module):
    def __init__(self, layers, baseWidth=26, scale=4, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)):
        super().__init__()
        self.inplanes = 64
        self.baseWidth, self.scale = baseWidth, scale
        self.conv1 = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                                   nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                                   nn.Conv2d(32, 64, 3, 1, 1, bias=False))
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], strides[0], dilations[0])
        self.layer2 = self._make_layer(128, layers[1], strides[1], dilations[1])
        self.layer3 = self._make_layer(256, layers[2], strides[2], dilations[2])
        self.layer4 = self._make_layer(512, layers[3], strides[3], dilations[3])

    def _make_layer(self, planes, blocks, stride=1, dilation=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=1, bias=False), nn.BatchNorm2d(planes * 4))
        layers = [_RelBottle2neck(self.inplanes, planes, stride, downsample=downsample, stype="stage",
                                  baseWidth=self.baseWidth, scale=self.scale, dilation=dilation)]
        self.inplanes = planes * 4
        layers += [_RelBottle2neck(self.inplanes, planes, baseWidth=self.baseWidth, scale=self.scale,
                                   dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x1, x2, x3, x4]


@pytest.mark.parametrize(("strides", "dilations"), [((1, 2, 1, 1), (1, 1, 2, 4)), ((1, 2, 2, 2), (1, 1, 1, 1))])
def test_res2net_equals_released_res2net(strides, dilations):
    torch.manual_seed(0)
    ref = _RelRes2Net([2, 1, 2, 1], baseWidth=8, strides=strides, dilations=dilations).double().eval()
    ours = Res2Net((2, 1, 2, 1), base_width=8, strides=strides, dilations=dilations).double().eval()
    _randomise(ref)
    assert set(ours.state_dict()) == set(ref.state_dict())  # the released key layout
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 45, 61, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    s = 8 if strides[2] == 1 else 32
    assert ours.strides[-1] == s


def test_res2net_equals_timm_res2net_d_layout_at_output_stride_32():
    timm_resnet = pytest.importorskip("timm.models.resnet")
    from timm.models.res2net import Bottle2neck as TimmBottle2neck

    torch.manual_seed(0)
    tm = timm_resnet.ResNet(block=TimmBottle2neck, layers=[1, 2, 1, 1], base_width=8, stem_type="deep",
                            stem_width=32, avg_down=True, block_args=dict(scale=4), num_classes=0).eval()
    ours = Res2Net((1, 2, 1, 1), base_width=8, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1)).eval()
    _randomise(tm, 2)
    sd = tm.state_dict()
    assert set(ours.state_dict()) == set(sd)  # timm's res2net*d checkpoints load without a key map
    ours.load_state_dict(sd)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = tm.maxpool(tm.act1(tm.bn1(tm.conv1(x))))
        feats = []
        for layer in (tm.layer1, tm.layer2, tm.layer3, tm.layer4):
            y = layer(y)
            feats.append(y)
        for a, b in zip(ours(x), feats):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_res2net_variants_and_checks():
    v1 = Res2Net.tiny(deep_stem=False, avg_down=False)
    assert isinstance(v1.conv1, nn.Conv2d)
    assert v1.conv1.kernel_size == (7, 7)
    assert isinstance(v1.layer2[0].downsample[0], nn.Conv2d)
    assert v1.layer2[0].downsample[0].stride == (2, 2)
    net = res2net101_v1b()
    assert [len(getattr(net, f"layer{i}")) for i in (1, 2, 3, 4)] == [3, 4, 23, 3]
    assert net.layer3[5].convs[0].dilation == (2, 2)
    assert net.layer4[0].convs[2].dilation == (4, 4)
    assert net.layer3[0].convs[0].stride == (1, 1)
    assert net.strides == (4, 8, 8, 8)
    assert sum(p.numel() for p in net.parameters()) == 43_176_920  # = timm res2net101d without its fc
    assert Res2Net.tiny(out_indices=(1, 3)).out_channels == (512, 2048)
    with pytest.raises(ValueError, match="must hold 4 values"):
        Res2Net(layers=(1, 1, 1))
    with pytest.raises(ValueError, match="out_indices"):
        Res2Net.tiny(out_indices=(4,))
    with pytest.raises(ValueError, match="must be positive"):
        Res2Net.tiny(strides=(0, 2, 1, 1))


# --------------------------------------------------------------------------------------------------
# transcription of PMM network/scalenet.py SABlock/ScaleNet (= WSSS_MMSeg backbones/scalenet.py)
# --------------------------------------------------------------------------------------------------
class _RelSABlock(nn.Module):
    layer_idx = 0
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, bias=False, downsample=False, structure=(), dilation=1):
        super().__init__()
        channels = structure[_RelSABlock.layer_idx][:-1]
        side = structure[_RelSABlock.layer_idx][-1]
        _RelSABlock.layer_idx += 1
        self.scales = [None, 2, 4, 7]
        self.stride = stride
        self.downsample = None if not downsample else nn.Sequential(
            nn.Conv2d(inplanes, planes * 4, kernel_size=1, stride=1, bias=bias), nn.BatchNorm2d(planes * 4))
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.ModuleList([nn.Conv2d(planes, channels[i], kernel_size=3 if side / 2 ** i > 1 else 1, stride=1,
                                              padding=dilation if side / 2 ** i > 1 else 0, bias=bias,
                                              dilation=dilation if side / 2 ** i > 1 else 1)
                                    if channels[i] > 0 else None for i in range(4)])
        self.bn2 = nn.ModuleList([nn.BatchNorm2d(channels[i]) if channels[i] > 0 else None for i in range(4)])
        self.conv3 = nn.Conv2d(sum(channels), planes * 4, kernel_size=1, bias=bias)
        self.bn3 = nn.BatchNorm2d(planes * 4)

    def forward(self, x):
        x = F.max_pool2d(x, self.stride, self.stride) if self.stride > 1 else x
        residual = self.downsample(x) if self.downsample is not None else x
        out1 = F.relu(self.bn1(self.conv1(x)))
        out2_list = []
        size = [out1.size(2), out1.size(3)]
        for i in range(4):
            out2_i = out1
            if self.scales[i] is not None:
                if out2_i.shape[3] < self.scales[i] or out2_i.shape[2] < self.scales[i]:
                    out2_i = F.max_pool2d(out2_i, out2_i.shape[2], out2_i.shape[3])
                else:
                    out2_i = F.max_pool2d(out2_i, self.scales[i], self.scales[i])
            if self.conv2[i] is not None:
                out2_i = self.conv2[i](out2_i)
            if self.scales[i] is not None:
                mode = "nearest" if size[0] % out2_i.shape[2] == 0 and size[1] % out2_i.shape[3] == 0 else "bilinear"
                out2_i = F.interpolate(out2_i, size=size, mode=mode)
            if self.bn2[i] is not None:
                out2_list.append(self.bn2[i](out2_i))
        out3 = self.bn3(self.conv3(F.relu(torch.cat(out2_list, 1))))
        return F.relu(out3 + residual)


class _RelScaleNet(nn.Module):
    def __init__(self, layers, structure, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)):
        super().__init__()
        _RelSABlock.layer_idx = 0
        self.inplanes = 64
        self.structure = structure
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, layers[0], strides[0], dilations[0])
        self.layer2 = self._make_layer(128, layers[1], strides[1], dilations[1])
        self.layer3 = self._make_layer(256, layers[2], strides[2], dilations[2])
        self.layer4 = self._make_layer(512, layers[3], strides[3], dilations[3])

    def _make_layer(self, planes, blocks, stride=1, dilation=1):
        downsample = stride != 1 or self.inplanes != planes * 4
        layers = [_RelSABlock(self.inplanes, planes, stride, downsample=downsample, structure=self.structure,
                              dilation=dilation)]
        self.inplanes = planes * 4
        layers += [_RelSABlock(self.inplanes, planes, downsample=False, structure=self.structure, dilation=dilation)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x1, x2, x3, x4]


_TINY_STRUCTURE = [[5, 3, 2, 1, 56], [4, 2, 0, 1, 56], [9, 4, 2, 1, 28], [8, 4, 3, 0, 14], [6, 5, 3, 2, 14],
                   [12, 8, 0, 0, 7]]


@pytest.mark.parametrize(("dilations", "size"), [((1, 1, 1, 1), (64, 64)), ((1, 1, 2, 4), (61, 77))])
def test_scalenet_equals_released_scalenet(dilations, size):
    torch.manual_seed(0)
    ref = _RelScaleNet([2, 1, 2, 1], _TINY_STRUCTURE, dilations=dilations).eval()
    ours = ScaleNet(_TINY_STRUCTURE, (2, 1, 2, 1), dilations=dilations).eval()
    _randomise(ref, 4)
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert "layer4.0.conv2.2.weight" not in ours.state_dict()  # absent branches keep the released indices
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_scalenet101_structure_and_json(tmp_path):
    import json

    assert len(SCALENET101_STRUCTURE) == 33 == sum((3, 4, 23, 3))
    net = scalenet101(dilations=(1, 1, 2, 4))
    assert net.strides == (4, 8, 8, 8)
    assert net.out_channels == (256, 512, 1024, 2048)
    # a 7-px side (layer4) makes the factor-7 branch a 1x1 conv; layer3's (14 px) branches are 3x3, dilated 2
    assert net.layer4[2].conv2[3].kernel_size == (1, 1)
    assert net.layer3[1].conv2[3].dilation == (2, 2)
    assert net.layer1[2].conv2[3] is None  # [59, 24, 3, 0, 56]: no factor-7 branch
    path = tmp_path / "scalenet101.json"
    path.write_text(json.dumps([list(r) for r in SCALENET101_STRUCTURE]))
    from_json = ScaleNet(path)
    assert [tuple(p.shape) for p in from_json.parameters()] == [tuple(p.shape) for p in scalenet101().parameters()]
    with pytest.raises(ValueError, match="structure has 6 rows but layers"):
        ScaleNet(_TINY_STRUCTURE)
    with pytest.raises(ValueError, match="5 ints each"):
        ScaleNet([[1, 2, 3]] * 33)
    with pytest.raises(ValueError, match="channels must be 4 non-negative"):
        ScaleNet([[0, 0, 0, 0, 56], *_TINY_STRUCTURE[1:]], (2, 1, 2, 1))


# --------------------------------------------------------------------------------------------------
# PSP head, FCN head, PSPNet (transcription of mmseg 0.8 PPM / PSPHead / FCNHead forward)
# --------------------------------------------------------------------------------------------------
def _released_psp_forward(head: PSPHead, x):
    psp_outs = [x]
    for ppm in head.psp_modules:
        psp_outs.append(F.interpolate(ppm(x), size=x.size()[2:], mode="bilinear", align_corners=False))
    output = head.bottleneck.activate(head.bottleneck.bn(head.bottleneck.conv(torch.cat(psp_outs, dim=1))))
    return head.conv_seg(output)  # eval: dropout is the identity


def test_psp_head_structure_and_forward():
    head = PSPHead(32, 5, channels=8).eval()
    _randomise(head, 6)
    x = torch.randn(2, 32, 13, 17, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(head(x), _released_psp_forward(head, x), rtol=0, atol=0)
    keys = set(head.state_dict())
    assert {"psp_modules.0.1.conv.weight", "psp_modules.3.1.bn.running_var", "bottleneck.conv.weight",
            "conv_seg.weight", "conv_seg.bias"} <= keys
    assert head.bottleneck.conv.in_channels == 32 + 4 * 8
    assert head.bottleneck.conv.kernel_size == (3, 3)
    assert [m[0].output_size for m in head.psp_modules] == [1, 2, 3, 6]
    fresh = PSPHead(32, 5, channels=8)
    assert float(fresh.conv_seg.weight.detach().std()) == pytest.approx(0.01, rel=0.3)
    assert float(fresh.conv_seg.bias.detach().abs().max()) == 0
    assert isinstance(fresh.dropout, nn.Dropout2d)
    assert fresh.dropout.p == 0.1


def test_pspnet_released_configuration_and_aux_head():
    net = PSPNet(21, backbone="res2net_tiny", channels=16, aux_channels=8).eval()
    assert net.aux_weight == 0.4
    assert net.decode_head.psp_modules[0][1].conv.in_channels == 2048
    assert net.auxiliary_head is not None
    assert net.auxiliary_head.convs[0].conv.in_channels == 1024
    x = torch.rand(2, 3, 64, 48)
    main, aux = net.forward_with_aux(x)
    assert main.shape == aux.shape == (2, 21, 8, 6)
    torch.testing.assert_close(net(x), main)
    up = net.encode_decode(x)
    assert up.shape == (2, 21, 64, 48)
    torch.testing.assert_close(up, F.interpolate(main, size=(64, 48), mode="bilinear", align_corners=False))
    # BatchNorm is trainable (norm_eval False): running statistics move in train mode
    net.train()
    before = net.backbone.bn1.running_mean.clone()
    main, aux = net.forward_with_aux(x)
    (main.mean() + net.aux_weight * aux.mean()).backward()
    assert not torch.equal(before, net.backbone.bn1.running_mean)
    assert net.backbone.bn1.weight.grad is not None
    assert PSPNet(3, backbone="res2net_tiny", channels=8, aux_channels=None).forward_with_aux(x)[1] is None


def test_pspnet_other_backbones_and_checkpoints(tmp_path):
    tiny_sn = PSPNet(4, backbone=ScaleNet(_TINY_STRUCTURE, (2, 1, 2, 1), dilations=(1, 1, 2, 4)), channels=8,
                     aux_channels=8).eval()
    assert tiny_sn(torch.rand(1, 3, 64, 64)).shape == (1, 4, 8, 8)
    tv = PSPNet(4, backbone="resnet_tiny", channels=8, aux_channels=8).eval()  # any build_backbone name, OS 8
    assert tv(torch.rand(1, 3, 64, 64)).shape == (1, 4, 8, 8)
    # a backbone checkpoint with an ImageNet fc, then a whole mmseg-layout model
    bb = Res2Net.tiny()
    _randomise(bb, 8)
    torch.save({**bb.state_dict(), "fc.weight": torch.zeros(10, 2048), "fc.bias": torch.zeros(10)},
               tmp_path / "r2n.pth")
    net = PSPNet(21, backbone="res2net_tiny", pretrained=tmp_path / "r2n.pth", channels=8, aux_channels=8)
    assert torch.equal(net.backbone.layer4[0].conv3.weight, bb.layer4[0].conv3.weight)
    other = PSPNet(21, backbone="res2net_tiny", channels=8, aux_channels=8)
    torch.save({"state_dict": net.state_dict(), "meta": {}}, tmp_path / "iter_20000.pth")
    other.load_pretrained(tmp_path / "iter_20000.pth")
    assert torch.equal(other.decode_head.conv_seg.weight, net.decode_head.conv_seg.weight)
    with pytest.raises(ValueError, match="num_classes must be an int"):
        PSPNet(0, backbone="res2net_tiny")
    with pytest.raises(ValueError, match="dropout must lie in"):
        PSPNet(3, backbone="res2net_tiny", dropout=1.0)
    with pytest.raises(TypeError, match=r"backbone must be a name or an nn.Module"):
        PSPNet(3, backbone=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least two maps"):
        PSPNet(3, backbone=Res2Net.tiny(out_indices=(3,)))


def test_conv_module_and_fcn_head():
    m = ConvModule(4, 6, 3, padding=1)
    assert m.conv.bias is None
    assert isinstance(m.activate, nn.ReLU)
    head = FCNHead(16, 3, channels=8, num_convs=2)
    assert len(head.convs) == 2
    assert head(torch.rand(1, 16, 5, 5)).shape == (1, 3, 5, 5)
    with pytest.raises(ValueError, match="num_convs must be >= 1"):
        FCNHead(16, 3, num_convs=0)


# --------------------------------------------------------------------------------------------------
# slide inference
# --------------------------------------------------------------------------------------------------
def _released_slide_inference(encode_decode, img, crop, stride, num_classes):
    """Mmseg 0.8 ``EncoderDecoder.slide_inference`` (rescale=False)."""
    h_stride, w_stride = stride
    h_crop, w_crop = crop
    batch_size, _, h_img, w_img = img.size()
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = img.new_zeros((batch_size, num_classes, h_img, w_img))
    count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_seg_logit = encode_decode(img[:, :, y1:y2, x1:x2])
            preds += F.pad(crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count_mat[:, :, y1:y2, x1:x2] += 1
    return preds / count_mat


def test_slide_inference_equals_released_with_a_real_network():
    torch.manual_seed(0)
    net = PSPNet(5, backbone="res2net_tiny", channels=8, aux_channels=None).eval()
    x = torch.randn(2, 3, 70, 95, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = _released_slide_inference(net.encode_decode, x, (48, 48), (40, 40), 5)
    got = slide_inference(net, x, 48, 40, 5)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slide_inference(net, x, (48, 48), (40, 40), batch_size=2), got, rtol=1e-5, atol=1e-5)


def test_slide_inference_pure_position_model_gives_the_full_image_result():
    net = nn.Conv2d(3, 4, 1)
    x = torch.rand(1, 3, 33, 70)
    with torch.no_grad():
        torch.testing.assert_close(slide_inference(net, x, 16, 10), net(x), rtol=0, atol=1e-6)
        # image smaller than the crop: one window of its own size
        torch.testing.assert_close(slide_inference(net, x, 512, 480), net(x), rtol=0, atol=1e-6)


def test_slide_inference_averages_overlapping_windows_hand_checked():
    # the "model" returns the window's mean intensity everywhere: each pixel gets the mean over its windows
    def window_mean(crops):
        return crops.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *crops.shape[2:])

    x = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 3, 1, 10).contiguous()
    out = slide_inference(window_mean, x, (1, 4), (1, 3))
    # windows along x: [0, 4), [3, 7), [6, 10) with means 1.5, 4.5, 7.5
    expected = [1.5, 1.5, 1.5, 3.0, 4.5, 4.5, 6.0, 7.5, 7.5, 7.5]
    assert out[0, 0, 0].tolist() == pytest.approx(expected)


def test_slide_inference_bad_input():
    net = nn.Conv2d(3, 2, 1)
    x = torch.rand(1, 3, 20, 20)
    with pytest.raises(ValueError, match="crop_size must be a positive int"):
        slide_inference(net, x, 0, 4)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        slide_inference(net, x, 8, (4, 4, 4))
    with pytest.raises(ValueError, match="expected num_classes=3"):
        slide_inference(net, x, 8, 4, 3)
    with pytest.raises(ValueError, match="model must return a"):
        slide_inference(lambda c: c[0], x, 8, 4)
    with pytest.raises(ValueError, match="images must have shape"):
        slide_inference(net, x[0], 8, 4)
    with pytest.raises(TypeError, match="model must be callable"):
        slide_inference(3, x, 8, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        slide_inference(net, x, 8, 4, batch_size=0)
