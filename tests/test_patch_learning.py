"""Tests for wsss_blocks.patch_learning (PPL: patch destruction, patch learning, schedule, Puzzle-CAM companion)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from wsss_blocks.cam import cam_from_features, normalize_cams
from wsss_blocks.patch_learning import (
    PatchDestruction,
    PatchLearning,
    ProgressiveSchedule,
    StageSpec,
    backbone_stages,
    merge_patches,
    patch_learning,
    split_patches,
)
from wsss_blocks.puzzle_cam import PuzzleReconstructionLoss, puzzle_alpha, puzzle_reconstruction_loss, tile_images


# --------------------------------------------------------------------------- helpers
def tiny_stages(width: int = 8) -> list[nn.Module]:
    """A ResNet-like 4-stage trunk: stem (stride 2), stage1, stage2 (s2), stage3 (s2): overall stride 8."""
    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    return [block(3, width, 2), block(width, width, 1), block(width, 2 * width, 2), block(2 * width, 2 * width, 2)]


def conv_stages() -> list[nn.Module]:
    """Plain convolutions with bias, no normalisation (strictly per-sample)."""
    return [nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 6, 3, 1, 1), nn.Conv2d(6, 6, 3, 2, 1)]


def puzzle_reference_tiles(x: torch.Tensor, q: int) -> torch.Tensor:
    """Puzzle-CAM's tile layout written independently: row-major tiles, concatenated tile-major."""
    h, w = x.shape[2] // q, x.shape[3] // q
    return torch.cat([x[:, :, a * h:(a + 1) * h, b * w:(b + 1) * w] for a in range(q) for b in range(q)], 0)


# --------------------------------------------------------------------------- split / merge
def test_split_hand_computed_batch_major_and_tile_major():
    x = torch.arange(2 * 16.0).view(2, 1, 4, 4)
    bm = split_patches(x, 2, order="batch_major")
    tm = split_patches(x, 2, order="tile_major")
    assert bm.shape == tm.shape == (8, 1, 2, 2)
    # image 0, patch (0, 1) = rows 0-1, cols 2-3
    assert bm[1, 0].tolist() == [[2.0, 3.0], [6.0, 7.0]]
    # batch-major: image 1's first patch is sample 4; tile-major: it is sample 1
    assert bm[4, 0].tolist() == [[16.0, 17.0], [20.0, 21.0]]
    assert tm[1, 0].tolist() == [[16.0, 17.0], [20.0, 21.0]]
    assert tm[2, 0].tolist() == [[2.0, 3.0], [6.0, 7.0]]
    # rectangular grid: 1 row × 4 columns
    r = split_patches(torch.arange(8.0).view(1, 1, 2, 4), (1, 4))
    assert r[:, 0].tolist() == [[[0.0], [4.0]], [[1.0], [5.0]], [[2.0], [6.0]], [[3.0], [7.0]]]


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 3), C=st.integers(1, 3), gh=st.integers(1, 4), gw=st.integers(1, 4),
       h=st.integers(1, 4), w=st.integers(1, 4), order=st.sampled_from(["batch_major", "tile_major"]))
def test_merge_is_exact_inverse_of_split(B, C, gh, gw, h, w, order):
    x = torch.randn(B, C, gh * h, gw * w)
    p = split_patches(x, (gh, gw), order)
    assert p.shape == (gh * gw * B, C, h, w)
    assert torch.equal(merge_patches(p, B, (gh, gw), order), x)
    # and split(merge(p)) == p
    assert torch.equal(split_patches(merge_patches(p, B, (gh, gw), order), (gh, gw), order), p)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 2), H=st.integers(3, 11), W=st.integers(3, 11), g=st.integers(1, 3),
       mode=st.sampled_from(["constant", "replicate", "reflect"]))
def test_padding_when_not_divisible_is_cropped_back(B, H, W, g, mode):
    x = torch.randn(B, 2, H, W)
    pd = PatchDestruction(g, pad_mode=mode, pad_value=7.0)
    p = pd.split(x)
    hp, wp = -(-H // g), -(-W // g)
    assert p.shape == (g * g * B, 2, hp, wp)
    assert torch.equal(pd(x), x)  # identity fn: merge crops the padding back
    assert torch.equal(pd.merge(p, B, out_size=(H, W)), x)
    merged = pd.merge(p, B)
    if mode == "constant" and (hp * g > H):
        assert bool((merged[:, :, H:, :] == 7.0).all())  # padding sits at the bottom/right


def test_pointwise_fn_commutes_with_patching_even_when_padded():
    conv = nn.Conv2d(3, 5, 1)
    for shape in [(2, 3, 8, 6), (1, 3, 7, 5)]:
        x = torch.randn(shape)
        pd = PatchDestruction(2, pad_mode="constant")
        torch.testing.assert_close(pd(x, conv), conv(x))


def test_padded_crop_follows_stride_of_fn():
    conv = nn.Conv2d(2, 2, 3, stride=2, padding=1)
    pd = PatchDestruction(2, pad_mode="constant")
    x = torch.randn(1, 2, 7, 11)  # padded 8×12, patches 4×6 -> 2×3 (stride 2) -> merged 4×6, crop ⌈7/2⌉×⌈11/2⌉
    out = pd(x, conv)
    assert out.shape[-2:] == conv(x).shape[-2:] == (4, 6)
    up = pd(x, nn.Upsample(scale_factor=2))
    torch.testing.assert_close(up, F.interpolate(x, scale_factor=2))  # nearest ×2 commutes, crop 14×22
    x2 = torch.randn(1, 2, 7, 9)  # patches 4×5 -> 2×3: not an integer stride, crop ambiguous
    with pytest.raises(ValueError, match="cannot infer the crop after padding"):
        pd(x2, conv)
    assert pd(x2, conv, out_size=(4, 5)).shape[-2:] == conv(x2).shape[-2:]


def test_patch_processing_is_independent():
    """Changing one patch's input changes only that patch's output region; a full-map conv leaks."""
    torch.manual_seed(1)
    fn = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1))
    pd = PatchDestruction(2)
    x = torch.randn(2, 2, 8, 8)
    y = x.clone()
    y[1, :, 0:4, 4:8] += torch.randn(2, 4, 4)  # image 1, patch (0, 1)
    with torch.no_grad():
        a, b = pd(x, fn), pd(y, fn)
        full_a, full_b = fn(x), fn(y)
    changed = (a != b).any(1)
    inside = torch.zeros_like(changed)
    inside[1, 0:4, 4:8] = True
    assert bool(changed[inside].all())
    assert not bool(changed[~inside].any())
    # before merging: only one patch sample differs
    pa, pb = fn(pd.split(x)), fn(pd.split(y))
    diff = (pa != pb).flatten(1).any(1)
    assert diff.tolist() == [False] * 5 + [True] + [False] * 2  # batch-major index 1·4 + 1
    # the same perturbation leaks across the patch border without destruction
    assert bool((full_a != full_b).any(1)[1, 0:4, 3].any())


def test_tile_major_matches_puzzle_cam_layout():
    x = torch.randn(3, 2, 8, 12)
    assert torch.equal(tile_images(x, 2), puzzle_reference_tiles(x, 2))
    assert torch.equal(tile_images(x, 2), split_patches(x, 2, order="tile_major"))
    assert torch.equal(merge_patches(tile_images(x, 2), 3, 2, order="tile_major"), x)


def test_split_keeps_dtype_and_device():
    for dtype in (torch.float64, torch.bfloat16, torch.int64):
        x = torch.arange(2 * 3 * 4 * 6).view(2, 3, 4, 6).to(dtype)
        p = split_patches(x, (2, 3))
        assert p.dtype == dtype
        assert p.device == x.device
        assert torch.equal(merge_patches(p, 2, (2, 3)), x)


def test_patch_destruction_compiles():
    pd = PatchDestruction(2)
    conv = nn.Conv2d(2, 2, 1)
    compiled = torch.compile(lambda t: pd(t, conv), backend="eager")
    x = torch.randn(2, 2, 4, 4)
    torch.testing.assert_close(compiled(x), pd(x, conv))


def test_split_merge_bad_input():
    x = torch.randn(1, 2, 6, 7)
    with pytest.raises(ValueError, match=r"grid \(2, 2\) does not divide x of spatial size 6×7"):
        split_patches(x, 2)
    with pytest.raises(ValueError, match=r"grid \(8, 8\) does not fit x of spatial size 6×7"):
        split_patches(x, 8, pad_mode="constant")
    with pytest.raises(ValueError, match="x must have shape B×C×H×W"):
        split_patches(torch.randn(2, 6, 6), 2)
    with pytest.raises(ValueError, match="grid must be >= 1"):
        split_patches(x, 0)
    with pytest.raises(TypeError, match="grid must be an int or a"):
        split_patches(x, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pad_mode must be one of"):
        split_patches(x, 2, pad_mode="zeros")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="order must be one of"):
        split_patches(x[..., :6], 2, order="row")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"patches has 6 samples, expected G·B = 4·2 = 8"):
        merge_patches(torch.randn(6, 1, 2, 2), 2, 2)
    with pytest.raises(ValueError, match=r"patches has 4 samples, expected G·B = 4·0 = 0"):
        merge_patches(torch.randn(4, 1, 2, 2), 0, 2)
    assert merge_patches(torch.randn(0, 1, 2, 3), 0, 2).shape == (0, 1, 4, 6)  # an empty batch
    with pytest.raises(ValueError, match="batch must be an int >= 0, got -1"):
        merge_patches(torch.randn(4, 1, 2, 2), -1, 2)
    with pytest.raises(ValueError, match=r"out_size \(5, 4\) must lie within the merged size 4×4"):
        merge_patches(torch.randn(4, 1, 2, 2), 1, 2, out_size=(5, 4))
    with pytest.raises(ValueError, match="fn must return a 4×C×h×w tensor for 4 patches"):
        PatchDestruction(2)(torch.randn(1, 1, 4, 4), lambda t: t.mean(0, keepdim=True))


# --------------------------------------------------------------------------- patch learning
def test_fused_cams_equal_cam_from_features_and_parts_add_up():
    torch.manual_seed(0)
    net = PatchLearning(tiny_stages(), insert_after=2, num_classes=5, feat_dim=16)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.features.shape == (2, 32, 4, 4)
    assert out.cams.shape == (2, 5, 4, 4)
    torch.testing.assert_close(out.cams, cam_from_features(out.features, net.classifier.weight))
    torch.testing.assert_close(out.logits, out.cams.mean((2, 3)))
    torch.testing.assert_close(out.logits, net.classifier(out.features.mean((2, 3), keepdim=True)).flatten(1))
    torch.testing.assert_close(out.parts["local@2"] + out.parts["global"], out.cams)
    W = net.classifier.weight.flatten(1)
    torch.testing.assert_close(out.full_cams, cam_from_features(out.features[:, 16:], W[:, 16:]))
    torch.testing.assert_close(out.full_logits, out.full_cams.mean((2, 3)))
    assert out.insert_after == (2,)


def test_features_are_merged_patch_path_then_full_path():
    """Z = [M(u_s(P(F_s))), F_N] computed by hand with the same stage modules."""
    torch.manual_seed(0)
    stages = conv_stages()
    x = torch.randn(2, 3, 16, 16)
    w = torch.randn(4, 12)
    out = patch_learning(stages, x, w, insert_after=1)
    f1 = stages[0](x)
    glob = stages[2](stages[1](f1))
    pd = PatchDestruction(2)
    local = pd.merge(stages[2](stages[1](pd.split(f1))), 2)
    torch.testing.assert_close(out.features, torch.cat([local, glob], 1))
    # patching at a higher point differs (the 3×3 convs see the patch borders)
    out2 = patch_learning(stages, x, w, insert_after=2)
    assert not torch.allclose(out2.features[:, :6], out.features[:, :6])
    torch.testing.assert_close(out2.features[:, 6:], glob)


def test_patch_order_does_not_change_the_result():
    stages = conv_stages()
    x = torch.randn(3, 3, 16, 16)
    w = torch.randn(2, 12)
    a = patch_learning(stages, x, w, insert_after=1, order="batch_major")
    b = patch_learning(stages, x, w, insert_after=1, order="tile_major")
    torch.testing.assert_close(a.features, b.features)


def test_pointwise_stages_hand_computed_logits():
    """With 1×1 stages patching commutes, so L_s = G and logits = (W_L + W_G)·GAP(G) (+ b)."""
    stages = [nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)]
    x = torch.randn(3, 3, 6, 4)
    clf = nn.Linear(4, 3)
    net = PatchLearning(stages, insert_after=1, classifier=clf)
    out = net(x)
    G = stages[2](stages[1](stages[0](x)))
    expect = G.mean((2, 3)) @ (clf.weight[:, :2] + clf.weight[:, 2:]).T + clf.bias
    torch.testing.assert_close(out.logits, expect)
    torch.testing.assert_close(out.full_logits, G.mean((2, 3)) @ clf.weight[:, 2:].T + clf.bias)
    torch.testing.assert_close(out.parts["local@1"] + out.parts["global"] + clf.bias.view(1, -1, 1, 1), out.cams)


def test_weights_are_shared_between_paths():
    torch.manual_seed(0)
    stages = conv_stages()
    net = PatchLearning(stages, insert_after=1, num_classes=3, feat_dim=6)
    n_stage = sum(p.numel() for s in stages for p in s.parameters())
    assert sum(p.numel() for p in net.parameters()) == n_stage + 3 * 12
    assert all(a is b for a, b in zip(net.stages, stages))
    x = torch.randn(2, 3, 16, 16)
    before = net(x)
    with torch.no_grad():
        stages[2].weight.mul_(2.0)  # one upper-stage tensor feeds both paths
    after = net(x)
    assert not torch.allclose(after.parts["local@1"], before.parts["local@1"])
    assert not torch.allclose(after.parts["global"], before.parts["global"])
    # the patch path alone trains the shared upper stage: zero the global classifier block
    with torch.no_grad():
        net.classifier.weight[:, 6:] = 0
    net.zero_grad()
    net(x).logits.sum().backward()
    assert stages[2].weight.grad is not None
    assert float(stages[2].weight.grad.abs().sum()) > 0


def test_explicit_fusion_detaches_branch_inputs():
    """Fig. 5: with the global classifier block zeroed, stages below the lowest branch get no gradient."""
    torch.manual_seed(0)
    stages = conv_stages()
    x = torch.randn(2, 3, 16, 16)
    net = PatchLearning(stages, insert_after=(1, 2), num_classes=3, feat_dim=6)
    assert net.classifier.weight.shape == (3, 18, 1, 1)
    assert "detach_branch_input=True" in repr(net)
    with torch.no_grad():
        net.classifier.weight[:, 12:] = 0  # no global path contribution
    out = net(x)
    assert list(out.parts) == ["local@1", "local@2", "global"]
    out.logits.sum().backward()
    assert float(stages[0].weight.grad.abs().sum()) == 0.0  # only reachable through the detached inputs
    assert float(stages[1].weight.grad.abs().sum()) > 0  # runs inside branch 1
    assert float(stages[2].weight.grad.abs().sum()) > 0
    # without the cut the lowest stage is trained through the branches
    net2 = PatchLearning(stages, insert_after=(1, 2), num_classes=3, feat_dim=6, detach_branch_input=False)
    with torch.no_grad():
        net2.classifier.weight.copy_(net.classifier.weight)
    net2.zero_grad()
    net2(x).logits.sum().backward()
    assert float(stages[0].weight.grad.abs().sum()) > 0
    # the cut changes gradients, not values
    torch.testing.assert_close(net2(x).cams, net(x).cams)


def test_single_insertion_default_has_no_detach():
    stages = conv_stages()
    net = PatchLearning(stages, insert_after=2, num_classes=3, feat_dim=6)
    with torch.no_grad():
        net.classifier.weight[:, 6:] = 0
    net(torch.randn(1, 3, 16, 16)).logits.sum().backward()
    assert float(stages[0].weight.grad.abs().sum()) > 0  # Fig. 2 draws no cut


def test_patch_path_independence_in_network():
    torch.manual_seed(0)
    net = PatchLearning(tiny_stages(), insert_after=2, num_classes=3, feat_dim=16).eval()  # BN per-sample in eval
    f = torch.randn(1, 8, 16, 16)
    g = f.clone()
    g[0, :, 8:, 0:8] += 1.0  # patch (1, 0)
    with torch.no_grad():
        a, b = net.patch_path(f, 2), net.patch_path(g, 2)
    assert a.shape == (1, 16, 4, 4)
    changed = (a != b).any(1)[0]
    assert bool(changed[2:, :2].all())
    assert int(changed.sum()) == 4


def test_patch_bn_stats_frozen_keeps_running_stats_to_the_full_path():
    torch.manual_seed(0)
    stages = tiny_stages()
    x = torch.randn(2, 3, 32, 32)
    bn = stages[3][1]
    snapshot = {k: v.clone() for k, v in nn.ModuleList(stages).state_dict().items()}
    with torch.no_grad():
        for st in stages:
            st.train()
        full = nn.Sequential(*stages)(x)  # running stats after the full path alone
    after_full = (bn.running_mean.clone(), int(bn.num_batches_tracked))
    nn.ModuleList(stages).load_state_dict(snapshot)
    frozen = PatchLearning(stages, insert_after=2, num_classes=2, feat_dim=16, patch_bn_stats="frozen")
    with torch.no_grad():
        out = frozen(x)
    torch.testing.assert_close(bn.running_mean, after_full[0])
    assert int(bn.num_batches_tracked) == after_full[1]
    assert bn.momentum == 0.1
    torch.testing.assert_close(out.features[:, 16:], full)
    nn.ModuleList(stages).load_state_dict(snapshot)
    with torch.no_grad():
        PatchLearning(stages, insert_after=2, num_classes=2, feat_dim=16)(x)  # default "update"
    assert not torch.allclose(bn.running_mean, after_full[0])
    assert int(bn.num_batches_tracked) == 2
    with pytest.raises(ValueError, match="patch_bn_stats must be one of"):
        PatchLearning(stages, insert_after=2, num_classes=2, feat_dim=16, patch_bn_stats="off")  # type: ignore


def test_training_step_tiny_resnet_like():
    torch.manual_seed(0)
    net = PatchLearning(tiny_stages(), insert_after=2, num_classes=4, feat_dim=16)
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(8):
        out = net(x)
        loss = F.multilabel_soft_margin_loss(out.logits, y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_schedule_drives_the_model_and_keeps_one_classifier():
    torch.manual_seed(0)
    net = PatchLearning(tiny_stages(), insert_after=1, num_classes=3, feat_dim=16)
    clf = net.classifier
    sched = ProgressiveSchedule([1, 2, StageSpec(3, grid=(1, 2))], epochs_per_stage=1)
    x = torch.randn(2, 3, 32, 32)
    seen = []
    for _epoch, specs in sched:
        for spec in specs:
            out = net(x, insert_after=spec.insert_after, grid=spec.grid)
            seen.append(out.insert_after)
            assert out.cams.shape == (2, 3, 4, 4)
    assert seen == [(1,), (2,), (3,)]
    net.set_insertion(3)
    assert net.insert_after == (3,)
    assert net.classifier is clf
    with pytest.raises(ValueError, match="must keep 1 insertion point"):
        net.set_insertion((1, 2))


def test_torchvision_resnet18_stages():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        glob = model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(x))))))))
        for insert_after in (0, 2, 4):  # input image, after layer1, after layer3
            net = PatchLearning.from_backbone(model, insert_after=insert_after, num_classes=3).eval()
            assert net.num_stages == 5
            assert net.classifier.in_channels == 2 * 512
            assert all(p is q for p, q in zip(net.stages.parameters(), model.parameters()))
            out = net(x)
            assert out.cams.shape == (2, 3, 2, 2)
            torch.testing.assert_close(out.features[:, 512:], glob)
            torch.testing.assert_close(out.cams, cam_from_features(out.features, net.classifier.weight))
            assert not torch.allclose(out.features[:, :512], glob)  # the patch path differs from the full path


@pytest.mark.parametrize(("name", "insert_after", "feat"), [("test_resnet", 2, 96), ("test_convnext", 1, 64)])
def test_timm_stage_lists(name, insert_after, feat):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    stages = backbone_stages(model)
    net = PatchLearning(stages, insert_after=insert_after, num_classes=4, feat_dim=feat)
    x = torch.randn(2, 3, 64, 64)
    out = net(x)
    ref = model.forward_features(x)
    torch.testing.assert_close(out.features[:, feat:], ref)
    F.multilabel_soft_margin_loss(out.logits, torch.ones(2, 4)).backward()
    assert out.cams.shape == (2, 4, 2, 2)


def test_backbone_stages_bad_input():
    with pytest.raises(ValueError, match="cannot find stages in Conv2d"):
        backbone_stages(nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match=r"model must be an nn.Module"):
        backbone_stages("resnet50")  # type: ignore[arg-type]


def test_size_mismatch_error_resize_and_padding():
    stages = [nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1)]
    w = torch.randn(2, 8)
    x = torch.randn(1, 3, 20, 20)  # F_1 = 10×10 -> patches 5×5 -> 3×3 -> merged 6×6, full path 5×5
    with pytest.raises(ValueError, match=r"merged patch features at insert_after=1 have spatial size 6×6 but "
                                         r"the full path gives 5×5"):
        patch_learning(stages, x, w, insert_after=1)
    out = patch_learning(stages, x, w, insert_after=1, size_mismatch="resize")
    assert out.cams.shape == (1, 2, 5, 5)
    # odd feature map (9×9) with padding: patches 5×5 -> 3×3 -> merged 6×6, cropped to the full path's 5×5
    x2 = torch.randn(1, 3, 18, 18)
    with pytest.raises(ValueError, match=r"grid \(2, 2\) does not divide the stage-1 features of images 18×18 of "
                                         r"spatial size 9×9"):
        patch_learning(stages, x2, w, insert_after=1)
    out2 = patch_learning(stages, x2, w, insert_after=1, pad_mode="constant")
    f1 = stages[0](x2)
    manual = merge_patches(stages[1](split_patches(f1, 2, pad_mode="constant")), 1, 2)[..., :5, :5]
    torch.testing.assert_close(out2.features[:, :4], manual)


def test_plain_cam_baseline_and_global_off():
    stages = conv_stages()
    x = torch.randn(2, 3, 16, 16)
    base = PatchLearning(stages, insert_after=(), num_classes=3, feat_dim=6)
    out = base(x)
    torch.testing.assert_close(out.cams, cam_from_features(stages[2](stages[1](stages[0](x))), base.classifier.weight))
    assert list(out.parts) == ["global"]
    local_only = PatchLearning(stages, insert_after=1, num_classes=3, feat_dim=6, include_global=False)
    out2 = local_only(x)
    assert out2.full_cams is None
    assert out2.full_logits is None
    assert out2.features.shape[1] == 6


def test_grid_mapping_per_insertion_point():
    stages = conv_stages()
    net = PatchLearning(stages, insert_after=(1, 2), grid={1: 2, 2: (1, 4)}, num_classes=2, feat_dim=6)
    x = torch.randn(1, 3, 16, 16)
    out = net(x)
    f2 = stages[1](stages[0](x))  # 8×8, grid 1×4 -> 8×2 patches -> 4×1 -> merged 4×4
    local2 = net.patch_path(f2, 2)
    assert local2.shape == (1, 6, 4, 4)
    torch.testing.assert_close(out.features[:, 6:12], local2)
    torch.testing.assert_close(local2, merge_patches(stages[2](split_patches(f2, (1, 4))), 1, (1, 4)))
    assert out.cams.shape == (1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"grid mapping has no entry for insertion point\(s\) \[2\]"):
        PatchLearning(stages, insert_after=(1, 2), grid={1: 2}, num_classes=2, feat_dim=6)


def test_float64_and_compile():
    stages = [m.double() for m in conv_stages()]
    net = PatchLearning(stages, insert_after=1, num_classes=2, feat_dim=6).double()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    out = net(x)
    assert out.cams.dtype == out.logits.dtype == torch.float64
    compiled = torch.compile(net, backend="eager")
    torch.testing.assert_close(compiled(x).cams, out.cams)


def test_patch_learning_bad_input():
    stages = conv_stages()
    with pytest.raises(TypeError, match=r"stages\[1\] must be an nn.Module, got function"):
        PatchLearning([stages[0], lambda t: t], insert_after=0, num_classes=2, feat_dim=6)
    with pytest.raises(TypeError, match="got a single Conv2d"):
        PatchLearning(stages[0], insert_after=0, num_classes=2, feat_dim=4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"stages must contain at least one nn.Module"):
        PatchLearning([], insert_after=0, num_classes=2, feat_dim=4)
    with pytest.raises(ValueError, match=r"insert_after=3 is out of range for 3 stages: expected 0 <= "
                                         r"insert_after <= 2"):
        PatchLearning(stages, insert_after=3, num_classes=2, feat_dim=6)
    with pytest.raises(ValueError, match="insert_after=-1 is out of range"):
        PatchLearning(stages, insert_after=(-1, 1), num_classes=2, feat_dim=6)
    with pytest.raises(TypeError, match="insert_after must be an int or a sequence of ints"):
        PatchLearning(stages, insert_after=1.0, num_classes=2, feat_dim=6)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not repeat an insertion point"):
        PatchLearning(stages, insert_after=(1, 1), num_classes=2, feat_dim=6)
    with pytest.raises(ValueError, match="pass a classifier, or num_classes and feat_dim"):
        PatchLearning(stages, insert_after=1)
    with pytest.raises(ValueError, match=r"classifier has 6 input channels, expected 2·6 = 12"):
        PatchLearning(stages, insert_after=1, classifier=nn.Conv2d(6, 2, 1), feat_dim=6)
    with pytest.raises(ValueError, match="classifier must be a 1×1, stride-1"):
        PatchLearning(stages, insert_after=1, classifier=nn.Conv2d(12, 2, 3))
    with pytest.raises(TypeError, match=r"classifier must be an nn.Conv2d"):
        PatchLearning(stages, insert_after=1, classifier=nn.Sequential(nn.Conv2d(12, 2, 1)))
    net = PatchLearning(stages, insert_after=1, classifier=nn.Conv2d(10, 2, 1))  # width checked at forward
    with pytest.raises(ValueError, match=r"classifier_weight has 10 input channels, expected 2·6 = 12"):
        net(torch.randn(1, 3, 16, 16))
    net = PatchLearning(stages, insert_after=2, grid=16, num_classes=2, feat_dim=6)
    with pytest.raises(ValueError, match=r"grid \(16, 16\) does not fit the stage-2 features of images 16×16 of "
                                         r"spatial size 8×8"):
        net(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"insert_after must give 1 insertion point\(s\)"):
        net(torch.randn(1, 3, 16, 16), insert_after=(1, 2))
    with pytest.raises(ValueError, match="images must have shape B×3×H×W"):
        net(torch.randn(3, 16, 16))


# --------------------------------------------------------------------------- progressive schedule
def test_schedule_sequential_stage_sequence():
    s = ProgressiveSchedule([2, 3, 4], epochs_per_stage=[1, 2, 3])
    assert len(s) == s.total_epochs == 6
    assert s.sequence == [(2,), (3,), (3,), (4,), (4,), (4,)]
    assert [s.is_stage_start(e) for e in range(6)] == [True, True, False, True, False, False]
    assert s.step(10)[0].insert_after == 4  # past the end: stays at the last stage
    assert [e for e, _ in s] == list(range(6))


def test_schedule_cyclic_pmg_style():
    s = ProgressiveSchedule([StageSpec(1, grid=4), StageSpec(2, grid=2, loss_weight=2.0)], mode="cyclic",
                            total_epochs=3)
    assert s.sequence == [(1, 2)] * 3
    specs = s.step(1)
    assert [sp.grid for sp in specs] == [4, 2]
    assert specs[1].loss_weight == 2.0
    assert [s.is_stage_start(e) for e in range(3)] == [True, False, False]
    assert "mode='cyclic'" in repr(s)


def test_schedule_bad_input():
    with pytest.raises(ValueError, match="stages must be a non-empty sequence"):
        ProgressiveSchedule([])
    with pytest.raises(TypeError, match=r"stages\[1\] must be an int or a StageSpec, got str"):
        ProgressiveSchedule([1, "2"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="epochs_per_stage has 2 entries, expected one per stage"):
        ProgressiveSchedule([1, 2, 3], epochs_per_stage=[1, 2])
    with pytest.raises(ValueError, match="epochs_per_stage must be >= 1"):
        ProgressiveSchedule([1], epochs_per_stage=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        ProgressiveSchedule([1], mode="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        ProgressiveSchedule([1]).step(-1)
    with pytest.raises(ValueError, match=r"stages\[0\].insert_after must be >= 0"):
        ProgressiveSchedule([-1])


# --------------------------------------------------------------------------- Puzzle-CAM companion
def test_puzzle_reconstruction_loss_hand_computed():
    a = torch.zeros(2, 2, 1, 2)
    b = torch.tensor([[[[1.0, 3.0]], [[2.0, 2.0]]], [[[0.0, 4.0]], [[1.0, 1.0]]]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # |a-b|·y summed = (1+3) + (0+4) + (1+1) = 10 over 8 entries
    assert float(puzzle_reconstruction_loss(a, b, y)) == pytest.approx(10 / 8)
    # selection: image 0 -> mean(1,3)=2; image 1 -> mean(0,4,1,1)=1.5; batch mean 1.75
    assert float(puzzle_reconstruction_loss(a, b, y, class_mode="selection")) == pytest.approx(1.75)
    assert float(puzzle_reconstruction_loss(a, b, class_mode="none")) == pytest.approx(14 / 8)
    assert float(puzzle_reconstruction_loss(a, b, y, p=2)) == pytest.approx((1 + 9 + 16 + 1 + 1) / 8)
    # level="cam": make_cam (relu / (max + 1e-5)) on both before the L1
    c = torch.tensor([[[[2.0, -1.0]]]])
    d = torch.tensor([[[[1.0, 1.0]]]])
    expect = (normalize_cams(c) - normalize_cams(d)).abs().mean()
    torch.testing.assert_close(puzzle_reconstruction_loss(c, d, torch.ones(1, 1), level="cam"), expect)
    assert float(PuzzleReconstructionLoss(class_mode="selection")(a, b, y)) == pytest.approx(1.75)


def test_puzzle_reconstruction_loss_gradcheck():
    a = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    for mask in ("masking", "selection"):
        assert torch.autograd.gradcheck(lambda u, v, m=mask: puzzle_reconstruction_loss(u, v, y, 2, m), (a, b))


def test_puzzle_tiling_round_trip_with_network():
    """Puzzle-CAM forward: tile the image, run the net, merge tile-major; a 1×1 net reproduces the full pass."""
    net = nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        merged = merge_patches(net(tile_images(x)), 2, 2, order="tile_major")
        torch.testing.assert_close(merged, net(x))
        assert float(puzzle_reconstruction_loss(net(x), merged, torch.ones(2, 4))) == pytest.approx(0.0, abs=1e-6)


def test_puzzle_alpha_ramp():
    assert puzzle_alpha(0, 100) == 0.0
    assert puzzle_alpha(25, 100, alpha=4.0) == pytest.approx(2.0)
    assert puzzle_alpha(50, 100, alpha=4.0) == 4.0 == puzzle_alpha(99, 100, alpha=4.0)
    assert puzzle_alpha(3, 100, alpha=1.5, ramp=0.0) == 1.5


def test_puzzle_bad_input():
    a = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match=r"cams and merged_cams must have the same shape, got \(1, 2, 2, 2\) and"):
        puzzle_reconstruction_loss(a, torch.zeros(1, 2, 2, 3), torch.ones(1, 2))
    with pytest.raises(ValueError, match="labels are required for class_mode='masking'"):
        puzzle_reconstruction_loss(a, a)
    with pytest.raises(ValueError, match="labels has 3 classes, expected 2"):
        puzzle_reconstruction_loss(a, a, torch.ones(1, 3))
    with pytest.raises(ValueError, match="p must be one of 1, 2, got 3"):
        puzzle_reconstruction_loss(a, a, torch.ones(1, 2), p=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cams contains non-finite values"):
        puzzle_reconstruction_loss(a + float("nan"), a, torch.ones(1, 2))
    with pytest.raises(ValueError, match="needs at least one present class per image"):
        puzzle_reconstruction_loss(a, a, torch.zeros(1, 2), class_mode="selection")
    with pytest.raises(ValueError, match=r"grid \(2, 2\) does not divide images of spatial size 5×5"):
        tile_images(torch.zeros(1, 3, 5, 5))
    with pytest.raises(ValueError, match="max_step must be >= 1"):
        puzzle_alpha(1, 0)
