"""Tests for PMM's cyclic pseudo masks: the block (wsss_blocks.pseudo_mask.CyclicPseudoMask) and the trainer's
relabelling round around it (wsss_blocks.train.cyclic).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import wsss_blocks.data.io as wio
from wsss_blocks.crf import PRESETS
from wsss_blocks.losses import PretendedUnderFittingLoss
from wsss_blocks.pseudo_mask import CYCLIC_CRF, CyclicPseudoMask, _rescale_factor, _slide_logits
from wsss_blocks.train.cyclic import RelabelResult, loss_for_round, relabel, select_checkpoint

pytest.importorskip("PIL")

FAST = dict(scales=(1.0,), flip=False, img_scale=None, slide=None, crf=None)


class PixelNet(torch.nn.Module):
    """A per-pixel (1×1 conv) 'segmentation model' with K = 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x) * 4.0


class CountingDataset:
    """A VOC-like dataset: ``names`` + integer indexing, counting how often samples are loaded."""

    def __init__(self, n: int = 4, size=(12, 16)) -> None:
        g = torch.Generator().manual_seed(7)
        self.names = [f"img{i}" for i in range(n)]
        self.images = [torch.rand(3, *size, generator=g) for _ in range(n)]
        self.labels = [torch.tensor([1.0, 0.0, 0.0]) for _ in range(n)]
        self.loads = 0

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        self.loads += 1
        return {"name": self.names[i], "image": self.images[i], "labels": self.labels[i]}


# ------------------------------------------------------------------------------------------ inference


def test_predict_single_pass_is_softmax():
    net = PixelNet()
    x = torch.rand(2, 3, 8, 10)
    probs = CyclicPseudoMask(**FAST).predict(net, x)
    torch.testing.assert_close(probs, torch.softmax(net(x), 1))


def test_predict_flip_and_scales_average_softmaxes():
    net = torch.nn.Conv2d(3, 4, 3, padding=1)  # not flip-equivariant
    x = torch.rand(1, 3, 8, 10)
    cp = CyclicPseudoMask(scales=(1.0, 0.5), flip=True, img_scale=None, slide=None, crf=None)
    probs = cp.predict(net, x)
    half = F.interpolate(x, size=(4, 5), mode="bilinear", align_corners=False)
    up = lambda z: F.interpolate(z, size=(8, 10), mode="bilinear", align_corners=False)
    with torch.no_grad():
        terms = [torch.softmax(net(x), 1), torch.softmax(net(x.flip(-1)), 1).flip(-1),
                 torch.softmax(up(net(half)), 1), torch.softmax(up(net(half.flip(-1))), 1).flip(-1)]
    torch.testing.assert_close(probs, sum(terms) / 4)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 8, 10))


def test_slide_inference_matches_whole_for_a_pixelwise_model():
    net = PixelNet()
    x = torch.rand(2, 3, 13, 17)
    with torch.no_grad():
        whole = net(x)
        slid = _slide_logits(net, x, crop=(6, 8), stride=(5, 6))  # overlapping windows, edge-anchored
    torch.testing.assert_close(slid, whole, rtol=1e-5, atol=1e-5)
    cp = CyclicPseudoMask(scales=(1.0,), flip=True, img_scale=None, slide=(6, 5), crf=None)
    ref = CyclicPseudoMask(scales=(1.0,), flip=True, img_scale=None, slide=None, crf=None)
    torch.testing.assert_close(cp.predict(net, x), ref.predict(net, x), rtol=1e-5, atol=1e-5)


def test_slide_windows_average_overlaps():
    """A model returning its crop's mean colour as the logit: slid logits = average over covering windows."""
    x = torch.zeros(1, 3, 1, 5)
    x[..., 4] = 5.0
    model = lambda z: z.mean(dim=(1, 2, 3), keepdim=True).expand(z.shape[0], 1, *z.shape[-2:])
    out = _slide_logits(model, x, crop=(1, 3), stride=(1, 2))
    # windows [0:3] (mean 0) and [2:5] (mean m2); pixel 2 is covered by both
    m2 = x[..., 2:5].mean().item()
    assert out[0, 0, 0].tolist() == pytest.approx([0.0, 0.0, m2 / 2, m2, m2])


def test_img_scale_matches_mmseg_keep_ratio():
    assert _rescale_factor(375, 500, (2048, 512), 1.0) == pytest.approx(512 / 375)
    assert _rescale_factor(375, 500, (2048, 512), 0.5) == pytest.approx(256 / 375)
    assert _rescale_factor(100, 1000, (2048, 512), 1.0) == pytest.approx(2.048)  # long side binds


def test_restrict_policy_versus_release_replace():
    """A model that predicts class 3 everywhere; the image only has class 0 (value 1)."""
    class Always3(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 4, *x.shape[-2:])
            out[:, 3] = 5.0
            out[:, 1] = 1.0 + x[:, :1]  # runner-up: class 0
            return out

    x = torch.rand(1, 3, 6, 6)
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    replace = CyclicPseudoMask(**FAST)(Always3(), x, labels)
    assert (replace == 3).all()  # release: the prediction replaces the mask, labels are not used
    restrict = CyclicPseudoMask(**FAST, policy="restrict")(Always3(), x, labels)
    assert (restrict == 1).all()
    probs = CyclicPseudoMask(**FAST, policy="restrict").predict(Always3(), x, labels)
    assert (probs[:, 2:] == 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 6, 6))
    with pytest.raises(ValueError, match="needs the image labels"):
        CyclicPseudoMask(**FAST, policy="restrict").predict(Always3(), x)


@pytest.mark.crf
def test_predict_with_crf_matches_pydensecrf_on_the_average():
    pytest.importorskip("pydensecrf")
    import pydensecrf.densecrf as dcrf

    net = PixelNet()
    x = torch.rand(1, 3, 10, 12)
    x[:, :, :, 6:] *= 0.2
    cp = CyclicPseudoMask(scales=(1.0,), flip=True, img_scale=None, slide=None, crf=CYCLIC_CRF)
    probs = cp.predict(net, x)
    avg = CyclicPseudoMask(scales=(1.0,), flip=True, img_scale=None, slide=None, crf=None).predict(net, x)
    img = (x[0] * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    d = dcrf.DenseCRF2D(12, 10, 4)
    d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(avg[0].numpy(), 1e-5, 1)).reshape(4, -1)))
    d.addPairwiseGaussian(sxy=1, compat=3)
    d.addPairwiseBilateral(sxy=67, srgb=3, rgbim=img, compat=4)
    ref = np.array(d.inference(10)).reshape(4, 10, 12)
    np.testing.assert_allclose(probs[0].numpy(), ref, rtol=1e-3, atol=1e-3)
    assert {k: PRESETS[CYCLIC_CRF][k] for k in ("iterations", "pos_w", "pos_xy", "bi_w", "bi_xy", "bi_rgb")} == {
        "iterations": 10, "pos_w": 3.0, "pos_xy": 1.0, "bi_w": 4.0, "bi_xy": 67.0, "bi_rgb": 3.0}


# ------------------------------------------------------------------------------------------ relabel


def test_relabel_writes_predictions_next_to_old_masks(tmp_path):
    net = PixelNet()
    net.train()
    ds = CountingDataset()
    old = tmp_path / "ppmg"
    old.mkdir()
    cp = CyclicPseudoMask(**FAST)
    res = relabel(cp, net, ds, old_root=old)
    root = res.out_root
    assert root == tmp_path / "ppmg_cyclic"
    assert sorted(os.listdir(root)) == [f"img{i}.png" for i in range(4)]
    assert net.training  # mode restored
    for i in range(4):
        saved = wio.load_label_png(root / f"img{i}.png")
        expected = cp(net, ds.images[i][None])[0].numpy()
        np.testing.assert_array_equal(saved, expected)
    assert (res.written, res.skipped) == (4, 0)


def test_relabel_refuses_to_overwrite_the_old_masks(tmp_path):
    old = tmp_path / "ppmg"
    old.mkdir()
    with pytest.raises(ValueError, match="never over them"):
        relabel(CyclicPseudoMask(**FAST), PixelNet(), CountingDataset(), out_root=old, old_root=old)
    with pytest.raises(ValueError, match="give out_root"):
        relabel(CyclicPseudoMask(**FAST), PixelNet(), CountingDataset())


def test_relabel_resumes_without_rewriting(tmp_path, monkeypatch):
    net = PixelNet()
    out = tmp_path / "cyclic"
    ds = CountingDataset()
    cp = CyclicPseudoMask(**FAST)
    relabel(cp, net, [ds[0], ds[1]], out)  # an earlier, partial run (plain list: no names attribute)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    writes = []
    real_save = wio.save_label_png
    monkeypatch.setattr(wio, "save_label_png", lambda path, *a, **k: (writes.append(os.path.basename(path)),
                                                                       real_save(path, *a, **k)))
    ds.loads = 0
    res = relabel(cp, net, ds, out)
    assert writes == ["img2.png", "img3.png"]
    assert ds.loads == 2  # finished samples are not even loaded
    assert (res.written, res.skipped) == (2, 2)
    for name, t in mtimes.items():
        assert (out / name).stat().st_mtime_ns == t
    writes.clear()
    res = relabel(cp, net, ds, out)
    assert writes == []
    assert (res.written, res.skipped) == (0, 4)
    relabel(CyclicPseudoMask(**FAST), net, ds, out, overwrite=True)
    assert len(writes) == 4


def test_relabel_crash_leaves_no_partial_files(tmp_path, monkeypatch):
    from PIL import Image

    net = PixelNet()
    out = tmp_path / "cyclic"
    ds = CountingDataset(n=5)
    real_save = Image.Image.save
    calls = {"n": 0}

    def flaky_save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            fp.write(b"\x89PNG\r\n\x1a\n partial")  # half a file, then the process "dies"
            raise RuntimeError("simulated crash")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", flaky_save)
    cp = CyclicPseudoMask(**FAST)
    partial = RelabelResult(out_root=out)
    with pytest.raises(RuntimeError, match="simulated crash"):
        relabel(cp, net, ds, out, result=partial)
    assert sorted(os.listdir(out)) == ["img0.png", "img1.png"]  # no partial img2.png, no temp files
    for name in ("img0.png", "img1.png"):
        assert wio.load_label_png(out / name).shape == (12, 16)
    assert (partial.written, partial.skipped) == (2, 0)  # the counts of the interrupted call
    monkeypatch.setattr(Image.Image, "save", real_save)
    res = relabel(cp, net, ds, out)
    assert (res.written, res.skipped) == (3, 2)  # the two masks written before the crash are kept
    assert sorted(os.listdir(out)) == [f"img{i}.png" for i in range(5)]


def test_relabel_restrict_policy_uses_sample_labels(tmp_path):
    class Always3(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 4, *x.shape[-2:])
            out[:, 3] = 5.0
            return out

    ds = CountingDataset(n=2)
    root = relabel(CyclicPseudoMask(**FAST, policy="restrict"), Always3(), ds, tmp_path / "r").out_root
    assert set(np.unique(wio.load_label_png(root / "img0.png")).tolist()) <= {0, 1}
    root = relabel(CyclicPseudoMask(**FAST), Always3(), ds, tmp_path / "p").out_root
    assert (wio.load_label_png(root / "img0.png") == 3).all()


def test_relabel_bad_samples(tmp_path):
    with pytest.raises(ValueError, match="'name'"):
        relabel(CyclicPseudoMask(**FAST), PixelNet(), [{"image": torch.rand(3, 4, 4)}], tmp_path / "a")
    with pytest.raises(ValueError, match="3×H×W"):
        relabel(CyclicPseudoMask(**FAST), PixelNet(), [{"name": "x", "image": torch.rand(4, 4)}], tmp_path / "b")
    normalised = (torch.rand(3, 4, 4) - 0.45) / 0.22
    with pytest.raises(ValueError, match="preprocess"):
        relabel(CyclicPseudoMask(**FAST), PixelNet(), [{"name": "x", "image": normalised}], tmp_path / "c")


def test_preprocess_is_applied_before_the_model_only():
    seen = {}

    def model(z):
        seen["min"] = float(z.min())
        return torch.zeros(z.shape[0], 2, *z.shape[-2:])

    cp = CyclicPseudoMask(**FAST, preprocess=lambda z: z - 10.0)
    cp.predict(model, torch.rand(1, 3, 4, 4))
    assert seen["min"] < -9


def test_constructor_validation():
    with pytest.raises(ValueError, match="policy"):
        CyclicPseudoMask(policy="fuse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scales"):
        CyclicPseudoMask(scales=())
    with pytest.raises(ValueError, match="scales"):
        CyclicPseudoMask(scales=(1.0, -0.5))
    with pytest.raises(ValueError, match="slide"):
        CyclicPseudoMask(slide=(0, 480))
    with pytest.raises(ValueError, match="img_scale"):
        CyclicPseudoMask(img_scale=(2048, 0))
    cp = CyclicPseudoMask()
    assert cp.scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    assert cp.flip
    assert cp.crf is not None
    assert cp.img_scale == (2048, 512)
    assert cp.slide == (512, 480)
    assert cp.policy == "replace"
    assert repr(cp).startswith("CyclicPseudoMask(")
    assert "policy='replace'" in repr(cp)


def test_select_checkpoint_and_round_losses():
    hist = [{"iter": 2000, "miou": 0.58, "path": "a"}, {"iter": 4000, "miou": 0.61, "path": "b"},
            {"iter": 6000, "miou": float("nan"), "path": "c"}, {"iter": 8000, "miou": 0.61, "path": "d"}]
    assert select_checkpoint(hist)["path"] == "b"
    with pytest.raises(ValueError, match="no 'miou'"):
        select_checkpoint([{"iter": 1}])
    with pytest.raises(ValueError, match="no record"):
        select_checkpoint([])
    r0 = loss_for_round(0)
    r1 = loss_for_round(1)
    assert isinstance(r0, PretendedUnderFittingLoss)
    assert r0.mode == "clamp"
    assert r0.beta == 0.5
    assert r1.mode is None
    assert loss_for_round(0, "coco").k == 0.8
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    torch.testing.assert_close(r1(logits, target), F.cross_entropy(logits, target))
    with pytest.raises(ValueError, match="round_index"):
        loss_for_round(-1)


@pytest.mark.crf
def test_restrict_policy_with_crf_keeps_a_distribution():
    pytest.importorskip("pydensecrf")
    x = torch.rand(1, 3, 8, 8)
    labels = torch.tensor([[0.0, 1.0, 0.0]])
    cp = CyclicPseudoMask(scales=(1.0,), flip=False, img_scale=None, slide=None, crf=CYCLIC_CRF, policy="restrict")
    probs = cp.predict(PixelNet(), x, labels)
    assert (probs[:, [1, 3]] == 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 8, 8))
    assert set(cp(PixelNet(), x, labels).unique().tolist()) <= {0, 2}
