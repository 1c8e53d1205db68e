"""SMAF offline teacher targets (``method_args.target_mode: offline``, the released behaviour).

The frozen teacher fuses its maps once per full training image (``gen_fused_cam.py``), the maps are
stored per image (present classes only), and each crop's target is cut from its image's map with the crop's
recorded geometry, then denoised and reactivated.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_blocks.data.normalization import normalize_images
from wsss_blocks.data.transforms import Compose, RandomCrop, RandomHorizontalFlip, RandomResizeLong, identity_geometry
from wsss_blocks.multiscale_fusion import smaf_target
from wsss_blocks.train.methods import PhaseContext
from wsss_blocks.train.methods.smaf import FUSED_DIR, SMAFMethod
from wsss_blocks.train.schema import load_run_config

H, W = 24, 40


class _Images:
    """A tiny un-augmented training set: names, images in [0, 1] and 3-class labels."""

    def __init__(self, n=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.names = [f"img_{i}" for i in range(n)]
        self.images = [torch.rand(3, H, W, generator=g) for _ in range(n)]
        self.labels = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1.0, 0.0, 1.0])]
        self.loads = 0

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        self.loads += 1
        return {"name": self.names[i], "image": self.images[i], "labels": self.labels[i % 3]}


def _smaf(**args):
    base = {"frozen": ["conv1a"], "freeze_bn": False, "eps_saliency": False, "target_scales": [1.0, 0.5]}
    base.update(args)
    cfg = load_run_config({"method": "smaf", "cam": {"backbone": "resnet38d_tiny", "crop_size": 32},
                           "method_args": base})
    m = SMAFMethod(cfg, cfg.method_config(), 3)
    m.on_phase_start(PhaseContext("eps", 0, 10, None, torch.device("cpu")))
    return m


def _start(m, out_dir, ds, resuming=False):
    m.on_phase_start(PhaseContext("self_train", 1, 10, out_dir, torch.device("cpu"), resuming=resuming, dataset=ds))


def _full_batch(ds, idx):
    img01 = torch.stack([ds.images[i] for i in idx])
    return {"image": normalize_images(img01), "image01": img01, "labels": torch.stack([ds.labels[i % 3] for i in idx]),
            "valid": torch.ones(len(idx), H, W, dtype=torch.bool), "name": [ds.names[i] for i in idx],
            "index": torch.tensor(idx), "geom": torch.stack([identity_geometry(ds.images[i]) for i in idx])}


def test_stored_maps_are_the_full_image_fusion_present_classes_only(tmp_path):
    m, ds = _smaf(), _Images()
    _start(m, tmp_path, ds)
    folder = tmp_path / FUSED_DIR
    assert sorted(p.name for p in folder.glob("*.npy")) == [f"img_{i}.npy" for i in range(3)]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["scales"] == [1.0, 0.5]
    assert meta["dtype"] == "float32"
    assert meta["flip"] is True
    for i in range(3):
        arr = np.load(folder / f"img_{i}.npy")
        present = torch.nonzero(ds.labels[i]).flatten()
        assert arr.dtype == np.float32
        assert arr.shape == (len(present), H, W)
        ref = m._teacher_fused(normalize_images(ds.images[i][None]), ds.labels[i][None])[0, present]
        torch.testing.assert_close(torch.from_numpy(arr), ref)
        # per-class max over the whole image: every stored class peaks at max/(max + 1e-5) ~ 1
        assert np.all(np.abs(arr.reshape(len(present), -1).max(1) - 1.0) < 1e-4)


def test_second_run_skips_existing_maps_and_float16_storage(tmp_path):
    m, ds = _smaf(offline_dtype="float16", offline_batch_size=2), _Images()
    _start(m, tmp_path, ds)
    folder = tmp_path / FUSED_DIR
    arr = np.load(folder / "img_1.npy")
    assert arr.dtype == np.float16
    assert arr.shape == (2, H, W)
    ref = m._teacher_fused(normalize_images(ds.images[1][None]), ds.labels[1][None])[0, 1:]
    torch.testing.assert_close(torch.from_numpy(arr).float(), ref, atol=5e-4, rtol=0)
    sentinel = np.full((2, H, W), 0.25, np.float16)
    np.save(folder / "img_1.npy", sentinel)
    (folder / "img_2.npy").unlink()
    ds.loads = 0
    assert m.precompute_fused_maps(ds, folder) == 1  # only the missing map is computed
    assert ds.loads == 1
    assert np.array_equal(np.load(folder / "img_1.npy"), sentinel)
    assert (folder / "img_2.npy").is_file()


def test_offline_target_of_an_unaugmented_full_image_equals_the_online_target(tmp_path):
    m, ds = _smaf(), _Images()
    _start(m, tmp_path, ds)
    b = _full_batch(ds, [0, 1, 2])
    off = m.offline_target(b["labels"], b["geom"], b["name"], b["index"].tolist())
    on = m.fused_target(b["image"], b["labels"])  # online fusion on the (full-image) crop
    assert off.shape == (3, 4, H // 4, W // 4)
    torch.testing.assert_close(off, on)
    # the training step uses it: the loss is 100·MSE(softmax(student), target) with the background last
    m.eval()
    with torch.no_grad():
        loss = m.training_step(b, 0, 10)["loss"]
        z = F.interpolate(m.net.cam_logits(b["image"]), size=(H // 4, W // 4), mode="bilinear", align_corners=True)
        ref = 100 * ((torch.softmax(z, 1) - torch.cat([off[:, 1:], off[:, :1]], 1)) ** 2).mean()
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)


def test_offline_target_follows_flip_and_padding(tmp_path):
    m, ds = _smaf(), _Images()
    _start(m, tmp_path, ds)
    lab, names = torch.stack([ds.labels[1]]), ["img_1"]
    base = m.offline_target(lab, identity_geometry(ds.images[1])[None], names)
    flipped = m.offline_target(lab, torch.tensor([[H, W, H, W, 1, 0, 0, H, W]]), names)
    torch.testing.assert_close(flipped, base.flip(-1))
    # 8 padded rows on top and 16 columns on the right (crop 32×56 of the 24×40 image)
    padded = m.offline_target(lab, torch.tensor([[H, W, H, W, 0, -8, 0, 32, 56]]), names)
    assert padded.shape == (1, 4, 8, 14)
    bg = torch.zeros(1, 4, 8, 14, dtype=torch.bool)
    bg[..., :2, :] = True
    bg[..., :, 10:] = True
    bg = bg[:, 0]
    assert torch.equal(padded[:, 0][bg], torch.ones(int(bg.sum())))  # padding = one-hot background
    assert padded[:, 1:].permute(1, 0, 2, 3)[:, bg].abs().max() == 0
    # a random-resized crop: the released map resize is bilinear with align_corners=True
    arr = torch.from_numpy(np.load(tmp_path / FUSED_DIR / "img_1.npy"))
    g = torch.tensor([[H, W, 30, 50, 1, 2, -3, 32, 32]])
    expect = F.interpolate(arr[None], size=(30, 50), mode="bilinear", align_corners=True)[0].flip(-1)
    crop = torch.zeros(3, 32, 32)
    crop[1:, :28, 3:] = expect[:, 2:30, 0:29]
    torch.testing.assert_close(m.offline_target(lab, g, names), smaf_target(crop[None], lab, scale_factor=0.25))


def test_offline_targets_with_a_real_augmentation_pipeline(tmp_path):
    m, ds = _smaf(), _Images()
    _start(m, tmp_path, ds)
    t = Compose([RandomResizeLong(20, 50), RandomHorizontalFlip(), RandomCrop(32, pad_image_value=-1.0)],
                record_geometry=True)
    outs = [t({"image": ds.images[i], "name": ds.names[i]}, generator=torch.Generator().manual_seed(i))
            for i in range(3)]
    geom = torch.stack([o["geom"] for o in outs])
    valid = torch.stack([o["image"][0] != -1.0 for o in outs])
    target = m.offline_target(torch.stack(ds.labels), geom, ds.names)
    assert target.shape == (3, 4, 8, 8)
    torch.testing.assert_close(target.amax(1), torch.ones(3, 8, 8))
    # the target pixels that sample only padded crop pixels (32 -> 8, bilinear, align_corners=True) are exactly
    # the one-hot background ones: every valid pixel of the untrained teacher's map is > 0
    reach = F.interpolate(valid[:, None].float(), scale_factor=0.25, mode="bilinear", align_corners=True)[:, 0]
    pad = reach == 0
    assert int(pad.sum()) == 77  # these seeds: 24 + 29 + 24 target pixels see only padding
    fg = target[:, 1:].amax(1)
    assert torch.all(target[:, 0][pad] == 1)
    assert torch.all(fg[pad] == 0)
    assert torch.all(fg[~pad] > 0)


def test_missing_map_is_rebuilt_after_resume(tmp_path):
    m, ds = _smaf(), _Images()
    _start(m, tmp_path, ds)
    path = tmp_path / FUSED_DIR / "img_2.npy"
    before = np.load(path)
    path.unlink()
    m2 = _smaf()
    _start(m2, tmp_path, ds, resuming=True)  # resuming: nothing is computed at phase start
    assert not path.exists()
    m2.load_state_dict(m.state_dict())  # the loop loads the checkpoint after the hook
    m2.training_step(_full_batch(ds, [2, 0]), 0, 10)
    np.testing.assert_allclose(np.load(path), before, rtol=0, atol=1e-6)


def test_offline_bad_input(tmp_path):
    m, ds = _smaf(), _Images()
    with pytest.raises(ValueError, match="needs the training dataset"):
        m.on_phase_start(PhaseContext("self_train", 1, 10, None, torch.device("cpu")))
    m = _smaf()
    _start(m, tmp_path, ds)
    b = _full_batch(ds, [0, 1])
    del b["geom"]
    with pytest.raises(ValueError, match=r"target_mode='offline' needs batch\['geom'\]"):
        m.training_step(b, 0, 10)
    b = _full_batch(ds, [0, 1])
    with pytest.raises(ValueError, match=r"must be B×9"):
        m.offline_target(b["labels"], b["geom"][:, :5], b["name"])
    np.save(tmp_path / FUSED_DIR / "img_0.npy", np.zeros((1, 5, 5), np.float32))
    with pytest.raises(ValueError, match="belongs to another dataset"):
        m.training_step(_full_batch(ds, [0, 1]), 0, 10)
    with pytest.raises(ValueError, match="other settings"):
        _start(_smaf(target_scales=[1.0]), tmp_path, ds)
    with pytest.raises(ValueError, match="target_mode must be"):
        _smaf(target_mode="cached")
    with pytest.raises(ValueError, match="offline_batch_size"):
        _smaf(offline_batch_size=0)
