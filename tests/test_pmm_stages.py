"""PMM's stages B and C in the trainer (``methods/pmm.py``): rough masks, tiles, stage-C network, multi-crop CAMs.

Each piece is compared with the library's blocks composed the way the release composes them
(``Eli-YiLi/PMM`` ``run.py``, ``pipeline/infer_multi_scale.py``, ``tool/data.py`` ``VOC12ClsHeatCropDataset``,
``network/scalenet_SEAM.py``, ``pipeline/infer_multi_crop.py``); the blocks themselves are tested against
transcriptions of the release in ``tests/test_multi_crop.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wsss_blocks.multi_crop import multi_crop_cams, rough_mask_cams, rough_masks, sample_multi_crop_tile
from wsss_blocks.train.methods.base import PhaseContext
from wsss_blocks.train.methods.pmm import MultiCropTile, PMMMethod, RoughMaskStore
from wsss_blocks.train.schema import load_run_config

pytest.importorskip("PIL")
pytest.importorskip("yaml")

TINY = {"widths": [8, 16, 16], "output_stride": 8}
ARGS = {"frozen": [], "freeze_bn": False, "stage_c_backbone": "tiny",
        "stage_c_backbone_kwargs": TINY, "stage_c_pretrained": "none", "stage_c_frozen": [],
        "stage_c_freeze_bn": False, "crop_scales": [1.0, 2.0], "crop_size": 24, "crop_stride": 16,
        "rough_mask_scales": [1.0, 0.5], "rough_mask_crf": {"preset": "psa", "backend": "torch"},
        "stage_c_batch_size": 4, "stage_c_steps": 3}


def _cfg(**args):
    return load_run_config({"method": "pmm", "cam": {"backbone": "tiny", "backbone_kwargs": TINY},
                            "data": {"dataset": "synthetic", "num_classes": 5},
                            "pseudo": {"args": {"ppmg": {"foreground": "threshold"}}},
                            "method_args": {**ARGS, **args}})


def _method(**args) -> PMMMethod:
    cfg = _cfg(**args)
    return PMMMethod(cfg, cfg.method_config(), 5)


def _samples(n=3, h=40, w=48):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        labels = torch.zeros(5)
        labels[i % 5] = 1
        labels[(i + 2) % 5] = 1
        out.append({"name": f"im{i}", "image": torch.rand(3, h, w, generator=g), "labels": labels, "index": i})
    return out


def test_phases_follow_the_released_stages():
    assert _method().phases == ("stage_a", "stage_c")
    m = _method(stages="C")
    assert m.phases == ("stage_c",)
    assert m.net is None  # COCO: no stage-A network is built
    assert _method(stages="A").phases == ("stage_a",)
    assert PMMMethod.uses_cam_backbone(_cfg(stages="C").method_config()) is False
    assert PMMMethod.extra_weights(_cfg().method_config()) == [
        ("method_args.stage_c_pretrained", "none", "tiny")]
    assert PMMMethod.extra_weights(_cfg(stages="A").method_config()) == []


def test_stage_b_rough_masks_are_the_released_crf_regions(tmp_path):
    """make_rough_masks = rough_mask_cams (stage-A cam_rv, scales, flips) -> rough_masks (alpha 24) -> > 0.9."""
    m = _method(tile_fg_threshold=0.5).eval()
    data = _samples()
    image01 = torch.stack([d["image"] for d in data])
    labels = torch.stack([d["labels"] for d in data])
    got = m.make_rough_masks(image01, labels)
    from wsss_blocks.data.normalization import normalize_images

    x = normalize_images(image01, "imagenet")
    with torch.no_grad():
        cams = rough_mask_cams(lambda z: m.net(z)[1][:, 1:].relu(), x, labels, (1.0, 0.5))
    post = rough_masks(cams, labels, image01, alpha=24.0, crf={"preset": "psa", "backend": "torch"})
    expected = torch.zeros(3, 40, 48, dtype=torch.uint8)
    for c in range(5):
        expected[post[:, c + 1] > 0.5] = c + 1
    assert torch.equal(got, expected)
    assert bool((got > 0).any())
    # only present classes are ever written
    for b in range(3):
        assert set(got[b].unique().tolist()) <= {0} | {int(c) + 1 for c in labels[b].nonzero().flatten()}


def test_stage_b_store_is_atomic_resumable_and_refuses_other_settings(tmp_path):
    calls = []

    def make(image01, labels):
        calls.append(image01.shape[0])
        return torch.full((image01.shape[0], *image01.shape[-2:]), 2, dtype=torch.uint8)

    store = RoughMaskStore(tmp_path / "rough", {"alpha": 24})
    assert store.precompute(_samples(), make, torch.device("cpu")) == 3
    assert store.precompute(_samples(), make, torch.device("cpu")) == 0  # nothing missing: nothing recomputed
    (tmp_path / "rough" / "im1.png").unlink()
    assert store.precompute(_samples(), make, torch.device("cpu")) == 1
    assert sum(calls) == 4
    assert int(store.load("im0")[0, 0]) == 2
    assert json.loads((tmp_path / "rough" / "meta.json").read_text()) == {"alpha": 24}
    with pytest.raises(ValueError, match="other settings"):
        RoughMaskStore(tmp_path / "rough", {"alpha": 11}).precompute(_samples(), make, torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="rough mask"):
        store.load("nope")


def test_tile_transform_equals_the_released_sampler_on_the_full_posteriors(tmp_path):
    """Restricting the posteriors to the present classes draws the same tile and the same labels."""
    region = torch.zeros(60, 80, dtype=torch.long)
    region[5:30, 10:40] = 2   # class 1
    region[35:58, 50:78] = 4  # class 3
    labels = torch.tensor([0.0, 1, 0, 1, 0])
    store = RoughMaskStore(tmp_path, {})
    from wsss_blocks.data.io import save_label_png

    save_label_png(store.path("a"), region.to(torch.uint8).numpy(), palette=False)
    full = torch.stack([(region == k).float() for k in range(6)])  # one-hot posteriors of every class
    t = MultiCropTile(store, (1.0, 2.0, 3.0), 24, 16, 0.9, 0.1)
    image = torch.rand(3, 60, 80)
    for seed in range(12):
        out = t({"name": "a", "image": image, "labels": labels}, generator=torch.Generator().manual_seed(seed))
        box, lab = sample_multi_crop_tile(full, labels, (1.0, 2.0, 3.0), crop_size=24, stride=16,
                                          generator=torch.Generator().manual_seed(seed))
        x1, y1, x2, y2 = box
        assert torch.equal(out["image"], image[:, y1:y2, x1:x2])
        assert torch.equal(out["labels"], lab)
        assert bool((out["labels"] <= labels).all())


def test_stage_c_phase_builds_the_network_dataset_and_optimiser(tmp_path):
    from wsss_blocks.train.datasets import AugmentedDataset
    from wsss_blocks.train.schema import CAMStageConfig

    m = _method()
    data = _samples(4)
    m.on_phase_start(PhaseContext("stage_a", 0, 3, tmp_path, torch.device("cpu"), dataset=data))
    assert m.net_c is None
    assert all(p.requires_grad for p in m.net.parameters())
    m.on_phase_start(PhaseContext("stage_c", 1, 3, tmp_path, torch.device("cpu"), dataset=data))
    assert m.net_c is not None
    assert sorted(p.name for p in (tmp_path / "rough_masks").glob("*.png")) == [f"im{i}.png" for i in range(4)]
    # stage A is frozen; stage C's optimiser holds only the stage-C network
    assert not any(p.requires_grad for p in m.net.parameters())
    ids = {id(p) for g in m.param_groups(0.02, 5e-4) for p in g["params"]}
    assert ids == {id(p) for p in m.net_c.parameters() if p.requires_grad}
    optim = m.phase_optim("stage_c", CAMStageConfig(batch_size=24, epochs=8, lr=0.02))
    assert (optim.batch_size, optim.epochs, optim.steps, optim.lr) == (4, 20, 3, 0.02)
    assert m.phase_optim("stage_a", CAMStageConfig(batch_size=24)).batch_size == 24
    # the tile dataset: tiles resized to crop_size, labels re-derived
    default = AugmentedDataset(data, None, 7)
    ds = m.phase_dataset("stage_c", data, default)
    assert ds is not default
    s = ds[(0, 1)]
    assert tuple(s["image01"].shape) == (3, 24, 24)
    assert bool((s["labels"] <= data[1]["labels"]).all())
    assert torch.equal(ds[(0, 1)]["image01"], s["image01"])  # deterministic per (seed, epoch, index)
    assert m.phase_dataset("stage_a", data, default) is default
    # training and CAMs use the stage-C network now
    out = m.training_step({"image": torch.randn(2, 3, 24, 24), "labels": torch.eye(5)[:2]}, 0, 3)
    out["loss"].backward()
    assert m.net_c.fc8.weight.grad is not None
    assert m.net.fc8.weight.grad is None
    m.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m.cam_fn(x), m.net_c(x)[1][:, 1:].relu())


def test_coco_stage_c_trains_on_the_cam_augmentation(tmp_path):
    from wsss_blocks.train.datasets import AugmentedDataset

    m = _method(stages="C")
    m.on_phase_start(PhaseContext("stage_c", 0, 3, tmp_path, torch.device("cpu"), dataset=_samples()))
    assert not (tmp_path / "rough_masks").exists()
    default = AugmentedDataset(_samples(), None, 0)
    assert m.phase_dataset("stage_c", _samples(), default) is default


def test_multi_crop_inference_is_the_released_merge_and_feeds_the_pseudo_stage():
    from wsss_blocks.train.pseudo_stage import compute_cams

    cfg = _cfg(stages="A")
    m = PMMMethod(cfg, cfg.method_config(), 5).eval()
    image01 = torch.rand(1, 3, 40, 48)
    labels = torch.tensor([[0.0, 1, 0, 1, 0]])
    from wsss_blocks.data.normalization import normalize_images

    x = normalize_images(image01, "imagenet")
    with torch.no_grad():
        expected = multi_crop_cams(m.cam_fn, x, labels, (1.0, 2.0), crop_size=24, stride=16)
        torch.testing.assert_close(m.infer_cams(x, labels), expected)
        got = compute_cams(m, image01, labels, cfg)
    torch.testing.assert_close(got, expected * labels[:, :, None, None])
    assert float(got[0, 0].abs().max()) == 0.0
    assert float(got[0, 1].max()) == pytest.approx(1.0, abs=1e-4)
    cfg2 = _cfg(stages="A", cam_inference="multi_scale")
    assert PMMMethod(cfg2, cfg2.method_config(), 5).infer_cams(x, labels) is None


@pytest.mark.slow
def test_stage_c_resume_matches_the_uninterrupted_run(tmp_path, trainer_tiny):
    """A crash in stage C (after stage B) resumes bit-exactly: rough masks reused, tiles drawn alike."""
    from wsss_blocks.train.cam_stage import restore_method, train_cam
    from wsss_blocks.train.distributed import DistEnv

    over = [*trainer_tiny, "cam.backbone_kwargs={widths: [8, 8, 16], output_stride: 4}",
            *[f"method_args.{k}={json.dumps(v)}" for k, v in ARGS.items() if k != "stage_c_backbone_kwargs"],
            "method_args.stage_c_backbone_kwargs={widths: [8, 8, 16], output_stride: 4}", "method_args.stage_c_steps=4",
            "runtime.checkpoint_every=2", "pseudo.args.ppmg.foreground=threshold"]
    cfg = load_run_config("pmm_synthetic", over)
    a = train_cam(cfg, tmp_path / "a")

    class Crash(Exception):
        pass

    def crash(info):
        if info["phase"] == "stage_c" and info["phase_step"] == 3:
            raise Crash

    with pytest.raises(Crash):
        train_cam(cfg, tmp_path / "b", hooks=[crash])
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "b" / "cam" / "rough_masks").glob("*.png")}
    b = train_cam(cfg, tmp_path / "b", resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "b" / "cam" / "rough_masks").glob("*.png")} == stamp
    sa, sb = torch.load(a, weights_only=False)["model"], torch.load(b, weights_only=False)["model"]
    assert sorted(sa) == sorted(sb)
    assert any(k.startswith("net_c.") for k in sa)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    m = restore_method(cfg, a, DistEnv())
    assert m.net_c is not None
    assert m.phases == ("stage_a", "stage_c")
    assert Path(a).parent.joinpath("rough_masks", "meta.json").is_file()


def test_fingerprints_cover_the_stage_b_and_c_settings():
    from wsss_blocks.train.run_folder import changed_keys, stage_settings

    base = load_run_config("pmm_synthetic")
    for override, key in (("method_args.rough_mask_alpha=11", "method_args.rough_mask_alpha: 24.0 -> 11.0"),
                          ("method_args.crop_stride=30", "method_args.crop_stride: 38 -> 30"),
                          ("method_args.stage_c_steps=10", "method_args.stage_c_steps: 125 -> 10"),
                          ("method_args.cam_inference=multi_scale",
                           "method_args.cam_inference: multi_crop -> multi_scale")):
        other = load_run_config("pmm_synthetic", [override])
        assert changed_keys(stage_settings(base, "cam"), stage_settings(other, "cam")) == [key]
