"""Tests for wsss_blocks.models: backbones, ResNet-38, MiT, heads, networks, loaders and parameter groups.

Checkpoint-loading tests build fake state dicts with the *distributed* key names (written out here from the
released naming schemes, not derived from the library) and check every value lands in the right parameter.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from wsss_blocks.models import (
    ASPPv2,
    CAMHead,
    CAMNet,
    DeepLabV2,
    DeepLabV3Plus,
    MixTransformer,
    ResNet38,
    SegFormer,
    SegFormerHead,
    TinyBackbone,
    TorchvisionResNet,
    build_backbone,
    deeplab_pytorch_key_map,
    global_pool,
    load_pretrained,
    mit_b1,
    msc_forward,
    mxnet_resnet38_name,
    param_groups,
    read_state_dict,
)


def _fill_distinct(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if k.endswith("running_var"):
            out[k] = torch.rand(s, generator=g) + 0.5
        else:
            out[k] = torch.randn(s, generator=g)
    return out


# ------------------------------------------------------------------------------------------------------
# ResNet-38: released names, in the test's own words
# ------------------------------------------------------------------------------------------------------
R38_STAGES = {2: 3, 3: 3, 4: 6, 5: 3}  # released block counts of b2..b5


def r38_block_names() -> list[tuple[int, int, str]]:
    names = []
    for s, n in R38_STAGES.items():
        for i in range(n):
            names.append((s, i, f"b{s}" if i == 0 else f"b{s}_{i}"))
    return names


def r38_converted_keys(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Keys of the converted ImageNet .pth (PSA convert_mxnet_to_torch output), with the model's shapes."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    keys = ["conv1a.weight"]
    bn = ("weight", "bias", "running_mean", "running_var")
    for _s, i, name in r38_block_names():
        keys += [f"{name}.bn_branch2a.{p}" for p in bn] + [f"{name}.conv_branch2a.weight"]
        keys += [f"{name}.bn_branch2b1.{p}" for p in bn] + [f"{name}.conv_branch2b1.weight"]
        if i == 0:  # every stage's first block changes the width -> 1x1 shortcut
            keys.append(f"{name}.conv_branch1.weight")
    for name in ("b6", "b7"):
        for br in ("2a", "2b1", "2b2"):
            keys += [f"{name}.bn_branch{br}.{p}" for p in bn] + [f"{name}.conv_branch{br}.weight"]
        keys.append(f"{name}.conv_branch1.weight")
    keys += [f"bn7.{p}" for p in bn]
    return {k: shapes[k] for k in keys}


def r38_mxnet_names() -> list[tuple[str, str]]:
    """(MXNet name, expected torch name) pairs for ilsvrc-cls_rna-a1_cls1000_ep-0001.params."""
    pairs = [("arg:conv1a_weight", "conv1a.weight")]
    bn = (("arg:", "gamma", "weight"), ("arg:", "beta", "bias"), ("aux:", "moving_mean", "running_mean"),
          ("aux:", "moving_var", "running_var"))
    blocks = []
    for s, i, name in r38_block_names():
        mx = f"{s}a" if i == 0 else f"{s}b{i}"
        brs = ["2a", "2b1"] + (["1"] if i == 0 else [])
        blocks.append((mx, name, brs))
    blocks += [("6a", "b6", ["2a", "2b1", "2b2", "1"]), ("7a", "b7", ["2a", "2b1", "2b2", "1"])]
    for mx, name, brs in blocks:
        for br in brs:
            pairs.append((f"arg:res{mx}_branch{br}_weight", f"{name}.conv_branch{br}.weight"))
            if br != "1":
                for pre, mxp, tp in bn:
                    pairs.append((f"{pre}bn{mx}_branch{br}_{mxp}", f"{name}.bn_branch{br}.{tp}"))
    for pre, mxp, tp in bn:
        pairs.append((f"{pre}bn7_{mxp}", f"bn7.{tp}"))
    return pairs


def test_resnet38_full_size_layout_matches_release():
    with torch.device("meta"):
        net = ResNet38()
    sd = net.state_dict()
    expected = r38_converted_keys(net)
    params = {k for k in sd if not k.endswith("num_batches_tracked")}
    assert params == set(expected)
    # hand-derived shapes of the released network
    assert sd["conv1a.weight"].shape == (64, 3, 3, 3)
    assert sd["b2.conv_branch1.weight"].shape == (128, 64, 1, 1)
    assert "b2_1.conv_branch1.weight" not in sd
    assert sd["b4_5.conv_branch2b1.weight"].shape == (512, 512, 3, 3)
    assert sd["b5.conv_branch2a.weight"].shape == (512, 512, 3, 3)
    assert sd["b5.conv_branch1.weight"].shape == (1024, 512, 1, 1)
    assert sd["b5_2.conv_branch2b1.weight"].shape == (1024, 512, 3, 3)
    assert sd["b6.conv_branch2a.weight"].shape == (512, 1024, 1, 1)
    assert sd["b6.conv_branch2b1.weight"].shape == (1024, 512, 3, 3)
    assert sd["b7.conv_branch2b2.weight"].shape == (4096, 2048, 1, 1)
    assert sd["bn7.running_var"].shape == (4096,)
    assert net.out_channels == (256, 512, 1024, 4096)
    assert net.strides == (4, 8, 8, 8)
    # dilations: b5 first conv 1 then 2, b6/b7 4
    assert net.b5.conv_branch2a.dilation == (1, 1)
    assert net.b5.conv_branch2b1.dilation == (2, 2)
    assert net.b5_1.conv_branch2a.dilation == (2, 2)
    assert net.b6.conv_branch2b1.dilation == (4, 4)
    assert net.b7.conv_branch2b1.dilation == (4, 4)
    assert net.b6.dropout_2b1.p == 0.3
    assert net.b7.dropout_2b2.p == 0.5
    with torch.device("meta"):
        seam = ResNet38(b7_dilation=2)
    assert seam.b7.conv_branch2b1.dilation == (2, 2)


def test_resnet38_output_stride_8_and_channels():
    net = ResNet38.tiny().eval()
    feats = net(torch.randn(2, 3, 64, 48))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 12), (2, 32, 8, 6), (2, 64, 8, 6), (2, 256, 8, 6)]
    d = net.forward_dict(torch.randn(1, 3, 33, 33))
    assert d["conv6"].shape[-2:] == (5, 5)  # ceil(33 / 8)
    assert bool((d["conv6"] >= 0).all())  # ReLU(bn7)


def _bn(x, m):
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def _randomize_bn(net: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_resnet38_blocks_compute_released_function():
    torch.manual_seed(0)
    net = ResNet38(width=1 / 16, depths=(2, 1, 1, 1)).eval()
    _randomize_bn(net)
    x = torch.randn(1, 4, 8, 8)
    # identity block b2_1: x + conv2b1(relu(bn2b1(conv2a(relu(bn2a(x))))))
    blk = net.b2_1
    x8 = torch.randn(1, 8, 6, 6)
    pre = F.relu(_bn(x8, blk.bn_branch2a))
    y = F.conv2d(F.relu(_bn(F.conv2d(pre, blk.conv_branch2a.weight, padding=1), blk.bn_branch2b1)),
                 blk.conv_branch2b1.weight, padding=1)
    out, pre_out = blk(x8)
    torch.testing.assert_close(out, x8 + y)
    torch.testing.assert_close(pre_out, pre)
    # downsampling block b2: shortcut is a strided 1x1 conv on the BN-ReLU'd input (pre-activation)
    blk = net.b2
    pre = F.relu(_bn(x, blk.bn_branch2a))
    short = F.conv2d(pre, blk.conv_branch1.weight, stride=2)
    y = F.conv2d(F.relu(_bn(F.conv2d(pre, blk.conv_branch2a.weight, stride=2, padding=1), blk.bn_branch2b1)),
                 blk.conv_branch2b1.weight, padding=1)
    torch.testing.assert_close(blk(x)[0], short + y)
    # bottleneck b7 (eval, no dropout)
    blk = net.b7
    x128 = torch.randn(1, 128, 5, 5)
    pre = F.relu(_bn(x128, blk.bn_branch2a))
    y = F.conv2d(pre, blk.conv_branch2a.weight)
    y = F.conv2d(F.relu(_bn(y, blk.bn_branch2b1)), blk.conv_branch2b1.weight, padding=4, dilation=4)
    y = F.conv2d(F.relu(_bn(y, blk.bn_branch2b2)), blk.conv_branch2b2.weight)
    torch.testing.assert_close(blk(x128)[0], F.conv2d(pre, blk.conv_branch1.weight) + y)


def test_resnet38_frozen_bn_and_conv1a():
    torch.manual_seed(0)
    net = ResNet38.tiny(dropout=(0.0, 0.0)).train()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    assert all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    assert not net.conv1a.weight.requires_grad
    before = net.bn7.running_mean.clone()
    net(torch.randn(2, 3, 32, 32))[-1].sum().backward()
    torch.testing.assert_close(net.bn7.running_mean, before)  # statistics not updated in train()
    assert net.conv1a.weight.grad is None
    assert net.b2.conv_branch2a.weight.grad is not None
    l2g = ResNet38.tiny(frozen=("conv1a", "b2"))
    assert not any(p.requires_grad for p in l2g.b2.parameters())
    with pytest.raises(ValueError, match="frozen names unknown modules"):
        ResNet38.tiny(frozen=("b2_2",))  # the tiny net has one block per stage


def test_resnet38_loads_converted_pth_keys(tmp_path):
    net = ResNet38(width=1 / 16)  # released depth, 1/16 width
    shapes = r38_converted_keys(net)
    sd = _fill_distinct(shapes)
    sd["fc8.weight"] = torch.randn(20, 256, 1, 1)  # a classifier head in the file is ignored by the backbone
    path = tmp_path / "res38d.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    bb = build_backbone("resnet38d", pretrained=path, width=1 / 16)
    got = bb.state_dict()
    for k in shapes:
        assert torch.equal(got[k], sd[k]), k


def test_resnet38_loads_mxnet_names():
    net = ResNet38(width=1 / 16)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    pairs = r38_mxnet_names()
    assert {t for _, t in pairs} == {k for k in shapes if not k.endswith("num_batches_tracked")}
    g = torch.Generator().manual_seed(1)
    mx = {m: torch.rand(shapes[t], generator=g) + 0.1 for m, t in pairs}
    mx["arg:linear1000_weight"] = torch.randn(1000, 256)
    mx["arg:linear1000_bias"] = torch.randn(1000)
    mx_np = {k: v.numpy() for k, v in mx.items()}  # mxnet.nd.load(...) -> asnumpy() gives numpy arrays
    bb = build_backbone("resnet38d", pretrained=mx_np, width=1 / 16)
    for m, t in pairs:
        assert torch.equal(bb.state_dict()[t], mx[m]), (m, t)
    # literal spot checks of the translation
    assert mxnet_resnet38_name("arg:res4b5_branch2b1_weight") == "b4_5.conv_branch2b1.weight"
    assert mxnet_resnet38_name("aux:bn5a_branch2a_moving_var") == "b5.bn_branch2a.running_var"
    assert mxnet_resnet38_name("bn7_beta") == "bn7.bias"
    assert mxnet_resnet38_name("arg:res2a_branch1_weight") == "b2.conv_branch1.weight"
    assert mxnet_resnet38_name("arg:linear1000_weight") is None


def test_resnet38_rejects_wrong_checkpoints():
    net = ResNet38.tiny()
    other = ResNet38.tiny(width=1 / 8).state_dict()
    with pytest.raises(ValueError, match="shape differs"):
        load_pretrained(net, other)
    tv = {"conv1.weight": torch.randn(64, 3, 7, 7), "layer1.0.conv1.weight": torch.randn(64, 64, 1, 1)}
    with pytest.raises(ValueError, match="another architecture"):
        load_pretrained(net, tv)
    partial = {k: v for k, v in net.state_dict().items() if not k.startswith("b7.")}
    with pytest.raises(ValueError, match=r"missing in checkpoint .*b7\."):
        load_pretrained(net, partial)
    extra = dict(net.state_dict(), **{"f9.weight": torch.randn(4, 4, 1, 1)})
    with pytest.raises(ValueError, match=r"unexpected in checkpoint .*f9\.weight"):
        load_pretrained(net, extra)
    report = load_pretrained(net, extra, strict=False)
    assert report.unexpected == ["f9.weight"]
    assert report.missing == []


# ------------------------------------------------------------------------------------------------------
# CAM network + PSA/L2G-style checkpoints
# ------------------------------------------------------------------------------------------------------
def test_camnet_loads_psa_cam_checkpoint_and_rejects_class_count():
    net = CAMNet(ResNet38.tiny(), num_classes=21)
    ck = {k: torch.randn_like(v) if v.is_floating_point() else v
          for k, v in net.backbone.state_dict().items()}
    ck["fc8.weight"] = torch.randn(21, 256, 1, 1)
    ck["f8_3.weight"] = torch.randn(64, 32, 1, 1)  # L2G PCM convs, not part of CAMNet
    key_map = {"fc8.": "head.classifier.", "f8_": None, "f9.": None, "": "backbone."}
    report = load_pretrained(net, {"state_dict": ck}, key_map)
    assert torch.equal(net.head.classifier.weight, ck["fc8.weight"])
    assert torch.equal(net.backbone.b7.conv_branch2b2.weight, ck["b7.conv_branch2b2.weight"])
    assert report.dropped == ["f8_3.weight"]
    net20 = CAMNet(ResNet38.tiny(), num_classes=20)
    with pytest.raises(ValueError, match="another class count"):
        load_pretrained(net20, ck, key_map)


def test_camhead_hand_computed_gap_and_gmp():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, -1.0], [5.0, 0.0]]]])  # 1×2×2×2
    w = torch.tensor([[1.0, 0.0], [0.5, -1.0]]).view(2, 2, 1, 1)
    head = CAMHead(2, 2, pooling="gap")
    head.classifier.weight.data.copy_(w)
    out = head(f)
    cams = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.5, 2.0], [-3.5, 2.0]]]])
    torch.testing.assert_close(out["cams"], cams)
    torch.testing.assert_close(out["logits"], torch.tensor([[2.5, 0.25]]))  # = CAM means
    gmp = CAMHead(2, 2, pooling="gmp")
    gmp.classifier.weight.data.copy_(w)
    # max-pooled features (4, 5) through the classifier: (4, 0.5*4 - 5)
    torch.testing.assert_close(gmp(f)["logits"], torch.tensor([[4.0, -3.0]]))
    torch.testing.assert_close(global_pool(f, "gmp"), torch.tensor([[4.0, 5.0]]))


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 3), d=st.integers(1, 6), k=st.integers(1, 5), h=st.integers(1, 5), w=st.integers(1, 5))
def test_camhead_gap_logits_equal_cam_means(b, d, k, h, w):
    torch.manual_seed(b * 100 + d * 10 + k)
    head = CAMHead(d, k, pooling="gap")
    out = head(torch.randn(b, d, h, w))
    torch.testing.assert_close(out["logits"], out["cams"].mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)


def test_camhead_gradcheck_and_validation():
    head = CAMHead(3, 2, pooling="gmp").double()
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: head(t)["logits"], (x,))
    assert torch.autograd.gradcheck(lambda t: head(t)["cams"], (x,))
    with pytest.raises(ValueError, match="features must have 3 channels"):
        head(torch.randn(1, 4, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="B×D×h×w"):
        head(torch.randn(3, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="pooling must be 'gap' or 'gmp'"):
        CAMHead(3, 2, pooling="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dropout"):
        CAMHead(3, 2, dropout=1.0)


def test_camhead_dropout_only_touches_logits_and_hidden_head():
    torch.manual_seed(0)
    head = CAMHead(8, 3, dropout=0.5).train()
    x = torch.randn(2, 8, 4, 4)
    a, b = head(x), head(x)
    torch.testing.assert_close(a["cams"], b["cams"])
    assert not torch.allclose(a["logits"], b["logits"])
    head.eval()
    torch.testing.assert_close(head(x)["logits"], head(x)["cams"].mean(dim=(2, 3)))
    smaf = CAMHead(8, 21, hidden_channels=4)
    out = smaf(x)
    assert out["features"].shape == (2, 4, 4, 4)
    assert out["cams"].shape == (2, 21, 4, 4)


def test_camnet_forward_backward_dtype_and_bad_input():
    torch.manual_seed(0)
    net = CAMNet("tiny", num_classes=5).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out = net(x)
    assert out["logits"].dtype == torch.float64
    assert out["cams"].shape == (2, 5, 4, 4)
    assert net.stride == 8
    out["logits"].sum().backward()
    assert net.head.classifier.weight.grad is not None
    with pytest.raises(ValueError, match="images must have shape B×3×H×W"):
        net(torch.randn(3, 32, 32, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"backbone must be a name or an nn.Module"):
        CAMNet(3, num_classes=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="feature_index"):
        CAMNet("tiny", num_classes=2, feature_index=5)
    with pytest.raises(ValueError, match="unknown backbone 'resnet38x'"):
        CAMNet("resnet38x", num_classes=2)


def test_camnet_compiles_with_eager_backend():
    torch.manual_seed(0)
    net = CAMNet("tiny", num_classes=3, backbone_kwargs={"widths": (4, 8), "output_stride": 4}).eval()
    x = torch.randn(1, 3, 16, 16)
    compiled = torch.compile(net, backend="eager")
    torch.testing.assert_close(compiled(x)["cams"], net(x)["cams"])


# ------------------------------------------------------------------------------------------------------
# MiT
# ------------------------------------------------------------------------------------------------------
def test_mit_b1_layout_and_parameter_counts():
    with torch.device("meta"):
        enc = mit_b1()
        sizes = {n: sum(p.numel() for p in build_backbone(n).parameters()) / 1e6
                 for n in ("mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5")}
    sd = enc.state_dict()
    # SegFormer release names and hand-derived shapes (dims 64/128/320/512, sr 8/4/2/1, mlp ratio 4)
    assert sd["patch_embed1.proj.weight"].shape == (64, 3, 7, 7)
    assert sd["patch_embed2.proj.weight"].shape == (128, 64, 3, 3)
    assert sd["block1.0.attn.q.weight"].shape == (64, 64)
    assert sd["block1.0.attn.kv.weight"].shape == (128, 64)
    assert sd["block1.0.attn.sr.weight"].shape == (64, 64, 8, 8)
    assert sd["block1.1.attn.norm.weight"].shape == (64,)
    assert sd["block3.1.attn.sr.weight"].shape == (320, 320, 2, 2)
    assert "block4.0.attn.sr.weight" not in sd  # sr ratio 1
    assert sd["block4.1.attn.q.bias"].shape == (512,)
    assert sd["block2.0.mlp.fc1.weight"].shape == (512, 128)
    assert sd["block2.0.mlp.dwconv.dwconv.weight"].shape == (512, 1, 3, 3)
    assert sd["block2.0.mlp.fc2.weight"].shape == (128, 512)
    assert sd["norm4.weight"].shape == (512,)
    assert enc.block1[0].norm1.eps == 1e-6
    assert enc.patch_embed1.norm.eps == 1e-5
    # SegFormer paper, Table 1 (encoder parameters, M)
    for name, paper in {"mit_b1": 13.1, "mit_b2": 24.2, "mit_b3": 44.0, "mit_b4": 60.8, "mit_b5": 81.4}.items():
        assert abs(sizes[name] - paper) < 0.1, (name, sizes[name])


def mit_release_keys(embed_dims, depths, sr_ratios) -> list[str]:
    keys = []
    for i in range(4):
        s = i + 1
        keys += [f"patch_embed{s}.proj.weight", f"patch_embed{s}.proj.bias", f"patch_embed{s}.norm.weight",
                 f"patch_embed{s}.norm.bias"]
        for j in range(depths[i]):
            p = f"block{s}.{j}."
            keys += [p + n for n in ("norm1.weight", "norm1.bias", "attn.q.weight", "attn.q.bias",
                                     "attn.kv.weight", "attn.kv.bias", "attn.proj.weight", "attn.proj.bias",
                                     "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                                     "mlp.dwconv.dwconv.weight", "mlp.dwconv.dwconv.bias", "mlp.fc2.weight",
                                     "mlp.fc2.bias")]
            if sr_ratios[i] > 1:
                keys += [p + n for n in ("attn.sr.weight", "attn.sr.bias", "attn.norm.weight", "attn.norm.bias")]
        keys += [f"norm{s}.weight", f"norm{s}.bias"]
    return keys


def test_mit_loads_segformer_release_checkpoint(tmp_path):
    enc = build_backbone("mit_tiny")
    keys = mit_release_keys((8, 16, 24, 32), (1, 1, 1, 2), (8, 4, 2, 1))
    shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert set(keys) == set(shapes)
    sd = _fill_distinct({k: shapes[k] for k in keys}, seed=3)
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, 32), torch.randn(1000)  # ImageNet classifier
    path = tmp_path / "mit_tiny.pth"
    torch.save(sd, path)
    loaded = build_backbone("mit_tiny", pretrained=path)
    for k in keys:
        assert torch.equal(loaded.state_dict()[k], sd[k]), k
    # AFA/TSCD checkpoints keep the encoder under "encoder."
    net = SegFormer(21, encoder="mit_tiny", embed_dim=16)
    full = {k: v.clone() for k, v in net.state_dict().items()}
    full["encoder.block1.0.attn.q.weight"] = torch.full_like(full["encoder.block1.0.attn.q.weight"], 0.25)
    load_pretrained(net, full)
    assert bool((net.encoder.block1[0].attn.q.weight == 0.25).all())
    wrong = dict(full, **{"classifier.weight": torch.randn(80, 32, 1, 1)})
    with pytest.raises(ValueError, match="another class count"):
        load_pretrained(net, wrong)


def test_mit_attention_matches_reference_and_raw_logits():
    torch.manual_seed(0)
    enc = MixTransformer(embed_dims=(8, 16, 24, 32), num_heads=(2, 2, 2, 4), depths=(1, 1, 1, 1),
                         sr_ratios=(2, 2, 2, 1), drop_path_rate=0.0).eval()
    attn = enc.block1[0].attn
    b, h, w, c, heads = 2, 4, 4, 8, 2
    x = torch.randn(b, h * w, c)
    out, raw = attn(x, h, w, True)
    # reference: spatial-reduction attention with PyTorch's scaled dot product attention
    q = attn.q(x).view(b, -1, heads, c // heads).transpose(1, 2)
    red = F.conv2d(x.transpose(1, 2).reshape(b, c, h, w), attn.sr.weight, attn.sr.bias, stride=2)
    red = F.layer_norm(red.flatten(2).transpose(1, 2), (c,), attn.norm.weight, attn.norm.bias, attn.norm.eps)
    k, v = attn.kv(red).view(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    ref = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
    torch.testing.assert_close(out, attn.proj(ref), rtol=1e-5, atol=1e-5)
    # raw logits q·kᵀ (unscaled), query grid 4×4 average-pooled by 2 to the 2×2 key grid
    logits = (q @ k.transpose(-2, -1)).view(b, heads, h, w, 4)
    pooled = logits.view(b, heads, 2, 2, 2, 2, 4).mean(dim=(3, 5)).reshape(b, heads, 4, 4)
    torch.testing.assert_close(raw, pooled, rtol=1e-5, atol=1e-5)


def test_mit_strides_and_forward_backward():
    torch.manual_seed(0)
    enc = build_backbone("mit_tiny", strides=(4, 2, 2, 1))
    assert enc.strides == (4, 8, 16, 16)
    feats = enc(torch.randn(2, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 4]
    sum(f.mean() for f in feats).backward()
    assert all(p.grad is not None for p in enc.parameters())
    with torch.device("meta"):
        assert build_backbone("mit_b1", output_stride=16).strides == (4, 8, 16, 16)
    with pytest.raises(ValueError, match="embed_dims must have 4 entries"):
        MixTransformer(embed_dims=(8, 16, 32))
    with pytest.raises(ValueError, match="divisible by the number of heads"):
        MixTransformer(embed_dims=(8, 16, 24, 30), num_heads=(1, 2, 5, 8))


# ------------------------------------------------------------------------------------------------------
# SegFormer network and head
# ------------------------------------------------------------------------------------------------------
def test_segformer_head_concat_order_and_value():
    torch.manual_seed(0)
    head = SegFormerHead((4, 6, 8, 10), 3, embed_dim=5).eval()
    _randomize_bn(head)
    feats = [torch.randn(1, c, s, s) for c, s in zip((4, 6, 8, 10), (8, 4, 2, 2))]
    ups = []
    for i in (4, 3, 2, 1):
        y = getattr(head, f"linear_c{i}").proj(feats[i - 1].flatten(2).transpose(1, 2)).transpose(1, 2)
        y = y.reshape(1, 5, *feats[i - 1].shape[2:])
        ups.append(F.interpolate(y, size=(8, 8), mode="bilinear", align_corners=False))
    fused = F.relu(_bn(F.conv2d(torch.cat(ups, 1), head.linear_fuse.conv.weight), head.linear_fuse.bn))
    ref = F.conv2d(fused, head.linear_pred.weight, head.linear_pred.bias)
    torch.testing.assert_close(head(feats), ref, rtol=1e-5, atol=1e-5)
    # with the fuse conv reading only the first block, the output depends on c4 alone (order c4,c3,c2,c1)
    with torch.no_grad():
        head.linear_fuse.conv.weight[:, 5:] = 0
    base = head(feats)
    feats2 = [feats[0] + 1, feats[1] + 1, feats[2] + 1, feats[3]]
    torch.testing.assert_close(head(feats2), base)
    with pytest.raises(ValueError, match="features must be a list of 4 maps"):
        head(feats[:3])


def test_segformer_network_outputs_and_release_names():
    torch.manual_seed(0)
    net = SegFormer(21, encoder="mit_tiny", embed_dim=16, cam_classes=20)
    out = net(torch.randn(2, 3, 64, 64), return_attn=True)
    assert out["seg"].shape == (2, 21, 16, 16)  # stride 4
    assert out["cams"].shape == (2, 20, 4, 4)  # strides (4, 2, 2, 1): last stage at 1/16
    f4 = out["feature_maps"][-1]
    torch.testing.assert_close(out["logits"], f4.amax(dim=(2, 3)) @ net.classifier.weight.flatten(1).t())
    a = out["attn_pred"]
    assert a.shape == (2, 16, 16)
    assert bool(((a > 0) & (a < 1)).all())
    torch.testing.assert_close(a, a.transpose(1, 2))  # symmetrised before the projection
    assert net.attn_proj.in_channels == 2 * 4  # heads of the last two blocks
    keys = set(net.state_dict())
    for k in ("encoder.patch_embed1.proj.weight", "decoder.linear_c4.proj.weight", "decoder.linear_fuse.conv.weight",
              "decoder.linear_fuse.bn.running_mean", "decoder.linear_pred.bias", "classifier.weight",
              "attn_proj.weight", "attn_proj.bias"):
        assert k in keys, k
    assert "classifier.bias" not in keys
    (out["seg"].mean() + out["logits"].mean() + a.mean()).backward()
    plain = SegFormer(21, encoder="mit_tiny", embed_dim=16, cam_classes=None, strides=(4, 2, 2, 2))
    assert set(plain(torch.randn(1, 3, 32, 32))) == {"seg", "feature_maps"}


# ------------------------------------------------------------------------------------------------------
# torchvision ResNet / DeepLab-v2
# ------------------------------------------------------------------------------------------------------
def test_torchvision_resnet_output_strides():
    x = torch.randn(1, 3, 64, 64)
    for os_, last in ((8, 8), (16, 4), (32, 2)):
        bb = build_backbone("resnet_tiny", output_stride=os_).eval()
        feats = bb(x)
        assert feats[-1].shape[-1] == last
        assert bb.strides[-1] == os_
        assert bb.out_channels == (256, 512, 1024, 2048)
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        build_backbone("resnet_tiny", output_stride=4)


def _deeplab_keys(layers=(1, 1, 1, 1)) -> list[tuple[str, str]]:
    """deeplab-pytorch names -> torchvision names, written out from both naming schemes."""
    bn = ("weight", "bias", "running_mean", "running_var")
    pairs = [("layer1.conv1.conv.weight", "conv1.weight")]
    pairs += [(f"layer1.conv1.bn.{p}", f"bn1.{p}") for p in bn]
    for li, n in enumerate(layers):
        for b in range(n):
            src, dst = f"layer{li + 2}.block{b + 1}", f"layer{li + 1}.{b}"
            for name, idx in (("reduce", 1), ("conv3x3", 2), ("increase", 3)):
                pairs.append((f"{src}.{name}.conv.weight", f"{dst}.conv{idx}.weight"))
                pairs += [(f"{src}.{name}.bn.{p}", f"{dst}.bn{idx}.{p}") for p in bn]
            if b == 0:
                pairs.append((f"{src}.shortcut.conv.weight", f"{dst}.downsample.0.weight"))
                pairs += [(f"{src}.shortcut.bn.{p}", f"{dst}.downsample.1.{p}") for p in bn]
    return pairs


def test_deeplabv2_loads_deeplab_pytorch_checkpoint(tmp_path):
    net = DeepLabV2(21, backbone="resnet_tiny")
    target = net.state_dict()
    pairs = _deeplab_keys()
    ck = {}
    g = torch.Generator().manual_seed(0)
    for src, dst in pairs:
        ck["base." + src] = torch.rand(target["backbone." + dst].shape, generator=g) + 0.1
    for i in range(4):  # released ASPP, 21 classes
        ck[f"base.aspp.c{i}.weight"] = torch.randn(21, 2048, 3, 3, generator=g)
        ck[f"base.aspp.c{i}.bias"] = torch.randn(21, generator=g)
    torch.save(ck, tmp_path / "deeplabv2_resnet101_msc-vocaug.pth")
    net.load_pretrained(tmp_path / "deeplabv2_resnet101_msc-vocaug.pth")
    sd = net.state_dict()
    for src, dst in pairs:
        assert torch.equal(sd["backbone." + dst], ck["base." + src]), (src, dst)
    assert torch.equal(net.head.convs[2].weight, ck["base.aspp.c2.weight"])
    assert torch.equal(net.head.convs[3].bias, ck["base.aspp.c3.bias"])
    # the COCO init (DeepLab-v1 names, 91-class fc): backbone loads, fc dropped, ASPP keeps its init
    init = {src: ck["base." + src] for src, _ in pairs}
    init["fc.weight"], init["fc.bias"] = torch.randn(91, 2048, 1, 1), torch.randn(91)
    fresh = DeepLabV2(21, backbone="resnet_tiny", pretrained=init)
    assert torch.equal(fresh.backbone.layer3[0].conv2.weight, ck["base.layer4.block1.conv3x3.conv.weight"])
    assert float(fresh.head.convs[0].bias.detach().abs().sum()) == 0.0
    # a released checkpoint for COCO (81 classes) into a VOC model
    coco = dict(ck, **{f"base.aspp.c{i}.weight": torch.randn(81, 2048, 3, 3) for i in range(4)})
    coco.update({f"base.aspp.c{i}.bias": torch.randn(81) for i in range(4)})
    with pytest.raises(ValueError, match="another class count"):
        DeepLabV2(21, backbone="resnet_tiny", pretrained=coco)
    assert deeplab_pytorch_key_map("layer2.block1.proj.bn.weight") == "layer1.0.downsample.1.weight"


def test_deeplabv2_caffe_style_block_function():
    torch.manual_seed(0)
    net = DeepLabV2(21, backbone="resnet_tiny").eval()
    bb = net.backbone
    _randomize_bn(bb)
    assert bb.maxpool.ceil_mode
    blk = bb.layer2[0]
    assert blk.conv1.stride == (2, 2)
    assert blk.conv2.stride == (1, 1)
    # layers 3 and 4: every block at the stage dilation (2 and 4), stride 1
    assert bb.layer3[0].conv2.dilation == (2, 2)
    assert bb.layer4[0].conv2.dilation == (4, 4)
    assert bb.layer3[0].conv1.stride == (1, 1)
    assert bb.layer3[0].conv2.stride == (1, 1)
    x = torch.randn(1, 256, 9, 9)
    h = F.relu(_bn(F.conv2d(x, blk.conv1.weight, stride=2), blk.bn1))
    h = F.relu(_bn(F.conv2d(h, blk.conv2.weight, padding=1), blk.bn2))
    h = _bn(F.conv2d(h, blk.conv3.weight), blk.bn3)
    ref = F.relu(h + _bn(F.conv2d(x, blk.downsample[0].weight, stride=2), blk.downsample[1]))
    torch.testing.assert_close(blk(x), ref)
    assert net(torch.randn(1, 3, 65, 65)).shape == (1, 21, 9, 9)  # deeplab-pytorch: 513 -> 65
    tv = TorchvisionResNet.tiny(style="pytorch")
    assert tv.layer2[0].conv2.stride == (2, 2)
    assert not tv.maxpool.ceil_mode


def test_deeplabv2_frozen_bn_param_groups_and_aspp():
    net = DeepLabV2(21, backbone="resnet_tiny").train()
    assert all(not m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    groups = {g["name"]: g for g in param_groups(net, 2.5e-4, weight_decay=5e-4)}
    assert set(groups) == {"backbone_weight", "head_weight", "head_bias"}  # BN frozen -> not optimised
    assert groups["head_weight"]["lr"] == pytest.approx(2.5e-3)
    assert groups["head_weight"]["weight_decay"] == 5e-4
    assert groups["head_bias"]["lr"] == pytest.approx(5e-3)
    assert groups["head_bias"]["weight_decay"] == 0.0
    n_convs = sum(1 for m in net.backbone.modules() if isinstance(m, nn.Conv2d))
    assert len(groups["backbone_weight"]["params"]) == n_convs
    aspp = net.head
    assert aspp.rates == (6, 12, 18, 24)
    x = torch.randn(1, 2048, 5, 5)
    ref = sum(F.conv2d(x, c.weight, c.bias, padding=r, dilation=r) for c, r in zip(aspp.convs, aspp.rates))
    torch.testing.assert_close(aspp(x), ref)
    big = ASPPv2(64, 21)
    w = torch.cat([c.weight.flatten() for c in big.convs])
    assert abs(float(w.detach().std()) - 0.01) < 0.001
    assert all(float(c.bias.detach().abs().sum()) == 0 for c in big.convs)


def test_msc_forward_max_fusion():
    torch.manual_seed(0)
    net = DeepLabV2(3, backbone="resnet_tiny").eval()
    x = torch.randn(1, 3, 48, 48)
    outs = msc_forward(net, x)
    assert len(outs) == 4
    full, s05, s075, fused = outs
    torch.testing.assert_close(full, net(x))
    torch.testing.assert_close(s05, net(F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)))
    up = [F.interpolate(t, size=full.shape[2:], mode="bilinear", align_corners=False) for t in (s05, s075)]
    torch.testing.assert_close(fused, torch.maximum(full, torch.maximum(*up)))
    with pytest.raises(ValueError, match="scales must be > 0"):
        msc_forward(net, x, scales=(0.0,))


def test_deeplabv3plus_tiny():
    torch.manual_seed(0)
    net = DeepLabV3Plus(21, backbone="tiny", output_stride=8, aspp_channels=16)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 21, 32, 32)
    out.mean().backward()


# ------------------------------------------------------------------------------------------------------
# param groups (AFA preset), tiny backbone, loader utilities, timm, lazy imports
# ------------------------------------------------------------------------------------------------------
def test_param_groups_afa_preset_and_partition():
    net = SegFormer(21, encoder="mit_tiny", embed_dim=16, cam_classes=20)
    groups = param_groups(net, 6e-5, weight_decay=0.01, head_lr_mult=10, head_bias_mult=10, bias_lr_mult=1,
                          bias_weight_decay=None, norm_lr_mult=0.0, norm_weight_decay=0.0)
    by = {g["name"]: g for g in groups}
    # AFA: encoder params with "norm" in their name at lr 0 / wd 0
    afa_norm = {id(p) for n, p in net.encoder.named_parameters() if "norm" in n}
    assert {id(p) for p in by["backbone_norm"]["params"]} == afa_norm
    assert by["backbone_norm"]["lr"] == 0.0
    assert by["backbone_norm"]["weight_decay"] == 0.0
    assert by["backbone_bias"]["lr"] == pytest.approx(6e-5)
    assert by["backbone_bias"]["weight_decay"] == 0.01
    head_ids = {id(p) for g in ("head_weight", "head_bias") for p in by[g]["params"]}
    assert head_ids == {id(p) for n, p in net.named_parameters() if not n.startswith("encoder.")}
    assert all(g["lr"] == pytest.approx(6e-4) for n, g in by.items() if n.startswith("head"))
    # every trainable parameter exactly once
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in net.parameters() if p.requires_grad)
    torch.optim.AdamW(groups)  # accepted by an optimizer
    with pytest.raises(ValueError, match="base_lr must be > 0"):
        param_groups(net, 0.0)


def test_param_groups_psa_convention_on_resnet38():
    net = CAMNet(ResNet38.tiny(), num_classes=21)
    groups = param_groups(net, 0.01, weight_decay=5e-4)
    assert [g["name"] for g in groups] == ["backbone_weight", "head_weight"]  # no biases, BN/conv1a frozen
    assert len(groups[1]["params"]) == 1
    assert groups[1]["params"][0] is net.head.classifier.weight
    assert groups[1]["lr"] == pytest.approx(0.1)
    assert groups[1]["lr_mult"] == 10.0
    assert all(p is not net.backbone.conv1a.weight for p in groups[0]["params"])


def test_tiny_backbone_strides_and_validation():
    bb = TinyBackbone(widths=(4, 8, 16), output_stride=4)
    feats = bb(torch.randn(1, 3, 32, 32))
    assert bb.strides == (2, 4, 4)
    assert [f.shape[-1] for f in feats] == [16, 8, 8]
    with pytest.raises(ValueError, match="output_stride must be a power of two"):
        TinyBackbone(widths=(4, 8), output_stride=8)
    with pytest.raises(ValueError, match="widths must be a non-empty"):
        TinyBackbone(widths=())


def test_read_state_dict_unwrapping_and_errors(tmp_path):
    nested = {"Net": {"model_state": {"module.a.weight": torch.ones(2)}, "objective_vectors": [1, 2]}, "iter": 5}
    assert list(read_state_dict(nested)) == ["a.weight"]  # EPS/SMAF layout
    with pytest.raises(FileNotFoundError, match="is neither a file nor a weights name"):
        read_state_dict(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="holds no tensors"):
        read_state_dict({"epoch": 3})
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read checkpoint"):
        read_state_dict(bad)
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="not a registered key map"):
        load_pretrained(net, net.state_dict(), key_map="nope")
    with pytest.raises(ValueError, match="same model key"):
        load_pretrained(net, {"x.weight": torch.ones(2, 2), "weight": torch.ones(2, 2)}, key_map={"x.": ""})
    with pytest.raises(TypeError, match=r"model must be an nn.Module"):
        load_pretrained("net", {})  # type: ignore[arg-type]


def test_read_state_dict_missing_reader_names_the_pip_package(tmp_path, monkeypatch):
    """Safetensors is in no extra: the ImportError must name the pip package, not an extra.

    MXNet files need no mxnet (they are read with NumPy): a bad one is named as such, with the import blocked.
    """
    st_file = tmp_path / "w.safetensors"
    st_file.write_bytes(b"unused")
    mx_file = tmp_path / "w.params"
    mx_file.write_bytes(b"unused but longer than the 24-byte header")
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "mxnet", None)
    with pytest.raises(ImportError, match=r"install it with `pip install safetensors`") as st_err:
        read_state_dict(st_file)
    assert "wsss-blocks[" not in str(st_err.value)
    assert isinstance(st_err.value.__cause__, ImportError)
    with pytest.raises(ValueError, match=r"w.params' is not an MXNet .params file: header"):
        read_state_dict(mx_file)


def test_read_state_dict_safetensors_roundtrip(tmp_path):
    st_torch = pytest.importorskip("safetensors.torch")
    sd = {"module.fc.weight": torch.arange(6.0).view(2, 3), "module.fc.bias": torch.tensor([1.0, -1.0])}
    st_torch.save_file(sd, str(tmp_path / "w.safetensors"))
    out = read_state_dict(tmp_path / "w.safetensors")
    assert sorted(out) == ["fc.bias", "fc.weight"]
    assert torch.equal(out["fc.weight"], sd["module.fc.weight"])
    assert torch.equal(out["fc.bias"], sd["module.fc.bias"])


def test_timm_backbone_loads_local_file_without_download(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    import timm.models._builder as builder

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    for name in ("load_state_dict_from_url", "download_cached_file", "load_state_dict_from_hf"):
        if hasattr(builder, name):
            monkeypatch.setattr(builder, name, no_network)
    ref = timm.create_model("resnet18", pretrained=False)
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    torch.save({"model": sd}, tmp_path / "resnet18.pth")
    bb = build_backbone("timm:resnet18", pretrained=tmp_path / "resnet18.pth", out_indices=(2, 4))
    assert bb.out_channels == (128, 512)
    assert bb.strides == (8, 32)
    assert torch.equal(bb.body.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    feats = bb(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(128, 8, 8), (512, 2, 2)]
    with pytest.raises(ValueError, match="not a timm model name"):
        build_backbone("timm:no_such_net")


@pytest.mark.slow
def test_import_does_not_pull_optional_dependencies():
    code = ("import sys, wsss_blocks.models; "
            "print(int('torchvision' in sys.modules), int('timm' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["0", "0"]
