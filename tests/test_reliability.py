"""Regression tests of the reliability findings of issue 19: each input once accepted silently, crashing deep
inside torch/NumPy or giving NaN is now computed correctly or refused with an error naming the argument.

(The dense CRF's layout and bfloat16 findings are tested in tests/test_crf.py, the model × backbone combinations
in tests/test_models.py, the 16-bit image in tests/test_data_io.py.)
"""

from __future__ import annotations

import pytest
import torch

import wsss_blocks as wb


@pytest.fixture(autouse=True)
def _checks_on():
    wb.set_checks(True)
    yield
    wb.set_checks(True)


def test_normalize_cams_with_eps_zero_keeps_all_zero_maps_zero():
    cams = torch.tensor([[[[2.0, -1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[-3.0, -1.0], [-2.0, -5.0]]]])
    for mode in ("max", "minmax", "seam_minmax"):
        out = wb.normalize_cams(cams, mode=mode, eps=0.0)
        assert bool(torch.isfinite(out).all()), mode
        assert out[0, 1:].abs().max() == 0, mode  # all-zero after the ReLU
    assert wb.normalize_cams(cams, eps=0.0)[0, 0].tolist() == [[1.0, 0.0], [0.5, 0.0]]  # the docstring example
    const = torch.full((1, 1, 3, 3), 0.7)
    assert wb.normalize_cams(const, mode="minmax", eps=0.0).abs().max() == 0  # max - min = 0: zero, not NaN
    empty = torch.zeros(2, 3, 0, 0)
    assert wb.normalize_cams(empty).shape == (2, 3, 0, 0)  # was an IndexError
    assert wb.normalize_cams(torch.zeros(0, 3, 4, 4)).shape == (0, 3, 4, 4)


def test_roi_align_checks_the_batch_index_column():
    feats = torch.arange(2 * 16.0).view(2, 1, 4, 4)
    ok = wb.roi_align(feats, torch.tensor([[1.0, 0.0, 0.0, 2.0, 2.0]]), 2, aligned=True)
    assert ok[0, 0].tolist() == [[16.0, 17.0], [20.0, 21.0]]
    for bad in (-1.0, 0.5, 2.0):  # was: the last image, image 0 (truncated), IndexError
        with pytest.raises(ValueError, match=rf"boxes\[:, 0\] holds the batch index.*\[0, 1\].*has {bad:g}"):
            wb.roi_align(feats, torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0], [bad, 0.0, 0.0, 2.0, 2.0]]), 2)
    with pytest.raises(ValueError, match="boxes contains non-finite"):
        wb.roi_align(feats, torch.tensor([[0.0, float("nan"), 0.0, 2.0, 2.0]]), 2)
    int_rows = torch.tensor([[1, 0, 0, 2, 2]])  # integer rows are fine
    torch.testing.assert_close(wb.roi_align(feats, int_rows, 2, aligned=True), ok)
    with wb.checks(False):  # a value check: off with the switch
        wb.roi_align(feats, torch.tensor([[0.5, 0.0, 0.0, 2.0, 2.0]]), 2)


def test_scores_from_confusion_refuses_negative_counts_and_empty_matrices():
    cm = torch.tensor([[3, 1], [0, 4]])
    assert round(float(wb.scores_from_confusion(cm)["miou"]), 4) == 0.775
    with pytest.raises(ValueError, match="confmat holds counts, which cannot be negative; got min -1"):
        wb.scores_from_confusion(torch.tensor([[3, 1], [-1, 4]]))
    with pytest.raises(ValueError, match="confmat counts no pixel"):
        wb.scores_from_confusion(torch.zeros(3, 3, dtype=torch.long))  # was: NaN mIoU
    metric = wb.SegmentationMetric(3)
    metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255))  # only ignored pixels
    with pytest.raises(ValueError, match="confmat counts no pixel"):
        metric.compute()


def test_losses_on_an_empty_batch_are_zero_not_nan():
    """puzzle_reconstruction_loss, smaf_loss and the SCD loss returned NaN for B = 0 (a mean over nothing)."""
    g = torch.Generator().manual_seed(0)
    cams = torch.randn(0, 3, 4, 4, requires_grad=True)
    losses = {
        "puzzle": wb.puzzle_reconstruction_loss(cams, torch.randn(0, 3, 4, 4), torch.zeros(0, 3)),
        "smaf": wb.smaf_loss(cams.new_zeros(0, 4, 2, 2).requires_grad_(), torch.zeros(0, 4, 4, 4)),
        "scd": wb.self_correspondence_loss(torch.rand(0, 3, 8, 8), torch.rand(0, 3, 5, 5),
                                           torch.randn(0, 4, 8, 8, requires_grad=True),
                                           torch.randn(0, 4, 5, 5), num_samples=4, generator=g),
        "eps": wb.eps_saliency_loss(torch.randn(0, 4, 4, 4), torch.rand(0, 1, 8, 8), torch.zeros(0, 3)),
        "amp": wb.adaptive_min_pooling_loss(torch.randn(0, 3, 4, 4)),
        "equivariant": wb.equivariant_regularization(torch.rand(0, 4, 8, 8), torch.rand(0, 4, 4, 4)),
        "energy": wb.dense_energy_loss(torch.rand(0, 3, 8, 8), torch.rand(0, 3, 8, 8),
                                       torch.zeros(0, 8, 8, dtype=torch.long)),
    }
    for name, loss in losses.items():
        assert loss.ndim == 0, name
        assert float(loss.detach()) == 0.0, name
    losses["puzzle"].backward()  # still attached to the graph
    assert cams.grad is not None
    assert cams.grad.shape == (0, 3, 4, 4)
    # a non-empty batch is unchanged: the released mean
    a, b = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    assert float(wb.puzzle_reconstruction_loss(a, b, torch.tensor([[1.0, 0.0]]))) == 0.5


def test_affinity_targets_and_loss_refuse_negative_labels():
    y = torch.zeros(1, 8, 8, dtype=torch.long)
    y[:, :, 4:] = 1
    assert int(wb.attention_affinity_targets(y, radius=1, stride=2).max()) == 255
    bad = y.clone()
    bad[0, 0, 0] = -1
    with pytest.raises(ValueError, match=r"pseudo_mask holds class indices .* cannot be negative; got -1"):
        wb.attention_affinity_targets(bad, radius=1, stride=2)
    with pytest.raises(ValueError, match="pseudo_mask holds class indices"):
        wb.affinity_from_attention_loss(torch.rand(1, 16, 16), bad, radius=1, stride=2)
    with pytest.raises(ValueError, match="seed_mask"):  # IRN's affinity targets likewise
        wb.affinity_targets(bad, radius=2)


def test_build_lattice_names_nan_features():
    from wsss_blocks.crf import build_lattice

    f = torch.rand(10, 3)
    f[4, 1] = float("nan")  # was: "index 9223372036854775807 is out of bounds"
    with pytest.raises(ValueError, match=r"features contains non-finite values \(1 NaN, 0 Inf\)"):
        build_lattice(f)
    f[4, 1] = float("inf")
    with wb.checks(False), pytest.raises(ValueError, match=r"features contains non-finite values \(0 NaN, 1 Inf\)"):
        build_lattice(f)  # always checked: there is no lattice position for it


def test_lattice_filter_refuses_extra_value_rows():
    from wsss_blocks.crf import build_lattice, lattice_filter, mean_field
    from wsss_blocks.crf.permutohedral import PairwiseOperator

    lat = build_lattice(torch.rand(6, 2))
    ok = lattice_filter(lat, torch.ones(6, 2))
    assert ok.shape == (6, 2)
    with pytest.raises(ValueError, match=r"values must have one row per lattice pixel: 6 rows .* got \(7, 2\)"):
        lattice_filter(lat, torch.ones(7, 2))  # was: the 7th row silently dropped
    with pytest.raises(ValueError, match=r"unary must have one row per lattice pixel"):
        mean_field(torch.rand(5, 3), PairwiseOperator([lat], [3.0]), iterations=2)


def test_save_cam_overlays_checks_batch_and_class_counts(tmp_path):
    images, cams = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    assert wb.save_cam_overlays(tmp_path / "ok.png", images, cams, labels, masks).is_file()
    with pytest.raises(ValueError, match="images01 and cams must have the same batch size"):
        wb.save_cam_overlays(tmp_path / "a.png", images[:1], cams, labels)  # was: silently drew one row
    with pytest.raises(ValueError, match="labels has 2 classes, expected 3"):
        wb.save_cam_overlays(tmp_path / "b.png", images, cams, labels[:, :2])
    with pytest.raises(ValueError, match="labels has batch size 1, expected 2"):
        wb.save_cam_overlays(tmp_path / "c.png", images, cams, labels[:1])
    bad = masks.clone()
    bad[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"masks has value 9 outside \[0, 3\]"):
        wb.save_cam_overlays(tmp_path / "d.png", images, cams, labels, bad)
    assert not (tmp_path / "a.png").exists()
    assert not (tmp_path / "d.png").exists()


def test_labels_from_mask_refuses_values_that_are_no_class():
    import numpy as np

    from wsss_blocks.data import labels_from_mask

    ok = labels_from_mask(np.array([[0, 1], [20, 255]]), num_classes=20)
    assert ok.nonzero()[0].tolist() == [0, 19]
    for bad in (21, 254, -1):  # was: silently ignored
        with pytest.raises(ValueError, match=rf"mask has value {bad} outside \[0, 20\] and 255"):
            labels_from_mask(np.array([[0, bad]]), num_classes=20)
    with pytest.raises(ValueError, match=r"mask must hold whole class indices, got value 1\.7"):
        labels_from_mask(np.array([[0.0, 1.7]]), num_classes=20)  # was: truncated to class 0
    assert labels_from_mask(torch.tensor([[0.0, 2.0]]), num_classes=3).tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="mask must have shape H×W"):
        labels_from_mask(np.zeros((1, 2, 2), np.int64))


def test_deeplabv2_builds_with_every_output_stride_8_backbone():
    """DeepLabV2(21, backbone="tiny") and "resnet38d_tiny" raised TypeError: unexpected keyword argument 'style'."""
    from wsss_blocks.models import DeepLabV2

    x = torch.randn(1, 3, 33, 33)
    for name in ("tiny", "resnet38d_tiny", "resnet_tiny"):
        net = DeepLabV2(21, backbone=name).eval()
        assert net(x).shape == (1, 21, 5, 5), name
    with pytest.raises(ValueError, match=r"cannot build DeepLabV2 with backbone 'resnet18' .*BasicBlocks.*"
                                         r"output stride is 32 only"):
        DeepLabV2(21, backbone="resnet18")
    with pytest.raises(ValueError, match=r"cannot build DeepLabV2 with backbone 'mit_tiny' \(output_stride=8\): "
                                         r"MiT output_stride must be 16 or 32"):
        DeepLabV2(21, backbone="mit_tiny")


def _combinations():
    from wsss_blocks import models as wm

    names = wm.available_backbones()
    combos = [(m, b) for m in ("CAMNet", "DeepLabV2", "DeepLabV3Plus", "PSPNet") for b in names]
    combos += [("PSPNet", b) for b in ("res2net101_v1b", "res2net_tiny", "scalenet101")]
    combos += [("SegFormer", b) for b in names if b.startswith("mit_")]
    return combos


@pytest.mark.slow
@pytest.mark.parametrize(("model", "backbone"), _combinations())
def test_every_model_backbone_combination_builds_or_says_why(model, backbone):
    """With default arguments each combination constructs (on the meta device: no memory, no init cost) or
    raises a ValueError naming the network, the backbone and the reason.
    """
    from wsss_blocks import models as wm

    cls = getattr(wm, model)
    try:
        with torch.device("meta"):
            net = cls(encoder=backbone) if model == "SegFormer" else cls(backbone=backbone)
    except ValueError as exc:
        msg = str(exc)
        assert msg.startswith(f"cannot build {model} with backbone {backbone!r}"), msg
        assert any(w in msg for w in ("output stride", "output_stride", "unknown backbone")), msg
    else:
        assert sum(p.numel() for p in net.parameters()) > 0


def test_networks_check_their_input_structure():
    from wsss_blocks.models import CAMNet, ResNet38, ScaleNet, mit_tiny

    net = CAMNet("tiny", 3).eval()
    with pytest.raises(ValueError, match=r"images must have shape B×3×H×W"):
        net(torch.rand(3, 32, 32))  # was: a batch-norm error from inside torch
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        net(torch.zeros(1, 3, 32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match=r"images must have 3 channels"):
        ResNet38.tiny()(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"images of size 16×16 are too small for this MiT"):
        mit_tiny()(torch.rand(1, 3, 16, 16))  # was: "Kernel size can't be greater than actual input size"
    tiny = [[4, 2, 1, 1, 56], [8, 4, 2, 2, 28], [8, 4, 2, 2, 14], [8, 8, 0, 0, 7]]
    out = ScaleNet(tiny, layers=(1, 1, 1, 1)).eval()(torch.rand(1, 3, 33, 29))  # non-square: was a crash
    assert [tuple(f.shape[1:]) for f in out] == [(256, 9, 8), (512, 4, 4), (1024, 4, 4), (2048, 4, 4)]
    assert all(bool(torch.isfinite(f).all()) for f in out)
    nan = torch.rand(1, 3, 32, 32)
    nan[0, 0, 0, 0] = float("nan")
    assert torch.isnan(net(nan)["logits"]).all()  # a layer reads no values: NaN in, NaN out (documented)
