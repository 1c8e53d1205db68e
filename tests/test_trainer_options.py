"""Trainer options that express released settings: step / every-N learning-rate schedules, short-side and
fixed-size resizes, bicubic inference, custom normalisation statistics, long-side resize at evaluation,
pseudo-mask scoring policies, and PMM's cyclic pseudo-mask rounds with best-val selection.
"""

from __future__ import annotations

import functools
import json
import operator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_blocks.data import load_label_png
from wsss_blocks.data.normalization import data_normalization, normalize_images
from wsss_blocks.metrics import SegmentationMetric
from wsss_blocks.train.config import ConfigError
from wsss_blocks.train.optim import lr_factor
from wsss_blocks.train.schema import OptimConfig, load_run_config

pytest.importorskip("PIL")
pytest.importorskip("yaml")

@pytest.fixture
def tiny(trainer_tiny):
    """The tiny synthetic run of tests/conftest.py with 4 segmentation steps (evaluations at steps 2 and 4)."""
    return [*trainer_tiny, "seg.steps=4"]


def _cfg(tiny, *extra):
    return load_run_config("baseline_synthetic", [*tiny, *extra])


class _Crash(Exception):
    pass


# ------------------------------------------------------------------------------------------ schedules
def test_step_schedule_decays_at_epoch_starts_and_keeps_warmup():
    o = OptimConfig(lr_schedule="step", lr_decay_epochs=(2, 3), lr_decay_gamma=0.5)
    got = [lr_factor(s, 50, o, steps_per_epoch=10) for s in (0, 19, 20, 29, 30, 49)]
    assert got == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    w = OptimConfig(lr_schedule="step", lr_decay_epochs=(1,), warmup_steps=4, warmup_ratio=0.0)
    assert [lr_factor(s, 20, w, 10) for s in (0, 2, 4, 9, 10)] == [0.0, 0.5, 1.0, 1.0, 0.1]


def test_lr_update_every_holds_the_poly_factor_for_n_steps():
    o = OptimConfig(poly_power=1.0, lr_update_every=10)
    assert [lr_factor(s, 100, o, 7) for s in (0, 9, 10, 19, 95)] == [1.0, 1.0, 0.9, 0.9, pytest.approx(0.1)]
    assert lr_factor(13, 100, OptimConfig(poly_power=1.0), 7) == pytest.approx(0.87)  # default: every step


def test_step_schedule_reaches_the_optimizer(tiny, tmp_path):
    from wsss_blocks.train.cam_stage import train_cam

    cfg = _cfg(tiny, "cam.lr_schedule=step", "cam.lr_decay_epochs=[1]", "cam.steps=6", "cam.lr=0.1")
    train_cam(cfg, tmp_path)  # 16 images / batch 4 = 4 steps per epoch: steps 4 and 5 run at lr 0.01
    recs = [json.loads(x) for x in (tmp_path / "cam" / "log.jsonl").read_text().splitlines()]
    lrs = {r["phase_step"]: r["lr"] for r in recs if "lr" in r}
    assert lrs[1] == pytest.approx(0.1)
    assert lrs[4] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.01)
    assert lrs[6] == pytest.approx(0.01)


def test_shuffle_false_keeps_the_dataset_order(tiny, tmp_path):
    from wsss_blocks.train.cam_stage import train_cam

    seen = []
    cfg = _cfg(tiny, "cam.shuffle=false", "cam.steps=5")
    train_cam(cfg, tmp_path, hooks=[lambda info: seen.append(info["indices"])])
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [0, 1, 2, 3]]
    shuffled = []
    train_cam(_cfg(tiny, "cam.steps=4"), tmp_path / "b", hooks=[lambda info: shuffled.append(info["indices"])])
    assert sorted(functools.reduce(operator.iadd, shuffled, [])) == list(range(16))
    assert functools.reduce(operator.iadd, shuffled, []) != list(range(16))


@pytest.mark.parametrize(("overrides", "match"), [
    (["cam.lr_schedule=step"], "lr_decay_epochs"),
    (["cam.lr_update_every=0"], "lr_update_every"),
    (["cam.resize_short=[512, 512]"], "at most one of"),
    (["cam.resize_long=null", "cam.resize_short=[9, 8]"], "resize_short"),
    (["data.normalize=caffe", "data.mean=[0.5, 0.5, 0.5]"], "need data.normalize: imagenet"),
    (["data.std=[0.2, 0.0, 0.2]"], "data.std must be positive"),
    (["seg.cyclic_rounds=-1"], "cyclic_rounds"),
    (["seg.eval_every=0"], "eval_every"),
    (["seg.cyclic_rounds=1", "seg.source=method"], "seg.source: deeplab"),
])
def test_bad_option_values_are_refused(tiny, overrides, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tiny, *overrides)


# ------------------------------------------------------------------------------------------ data options
def test_custom_normalisation_statistics(tiny):
    cfg = _cfg(tiny, "data.mean=[0.471, 0.448, 0.408]", "data.std=[0.234, 0.239, 0.242]")
    norm = data_normalization(cfg.data)
    assert norm == ((0.471, 0.448, 0.408), (0.234, 0.239, 0.242))
    x = torch.tensor([0.471, 0.448 + 0.239, 0.408 - 0.242]).view(1, 3, 1, 1)
    assert torch.allclose(normalize_images(x, norm).flatten(), torch.tensor([0.0, 1.0, -1.0]), atol=1e-6)
    assert data_normalization(_cfg(tiny).data) == "imagenet"
    # only std given: ImageNet mean with that std
    m, s = data_normalization(_cfg(tiny, "data.std=[0.5, 0.5, 0.5]").data)  # type: ignore[misc]
    assert m == pytest.approx((0.485, 0.456, 0.406))
    assert s == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="std must be positive"):
        normalize_images(x, ((0.0, 0.0, 0.0), (1.0, 0.0, 1.0)))


def test_short_side_and_fixed_resize_in_the_cam_augmentation(tiny):
    from wsss_blocks.data.transforms import RandomResizeShort, Resize
    from wsss_blocks.train.datasets import cam_train_transform

    img = torch.rand(3, 30, 40)
    cfg = _cfg(tiny, "cam.resize_long=null", "cam.resize_short=[60, 60]", "cam.crop_size=64", "cam.hflip=false",
               "cam.interpolation=bicubic")
    t = cam_train_transform(cfg)
    assert isinstance(t.transforms[0], RandomResizeShort)
    assert t.transforms[0].interpolation == "bicubic"
    resized = t.transforms[0]({"image": img.clone()}, generator=torch.Generator().manual_seed(0))["image"]
    ref = torch.nn.functional.interpolate(img[None], size=(60, 80), mode="bicubic", align_corners=False)[0]
    assert torch.allclose(resized, ref.clamp(float(img.min()), float(img.max())), atol=1e-6)
    out = t({"image": img.clone()}, generator=torch.Generator().manual_seed(0))["image"]
    assert out.shape == (3, 64, 64)
    assert int((out[0] != -1.0).sum()) == 60 * 64
    cfg = _cfg(tiny, "cam.resize_long=null", "cam.resize=[16, 16]", "cam.crop_size=16", "cam.hflip=false")
    t = cam_train_transform(cfg)
    assert isinstance(t.transforms[0], Resize)
    out = t({"image": img.clone()}, generator=torch.Generator().manual_seed(0))["image"]
    ref = torch.nn.functional.interpolate(img[None], size=(16, 16), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(out, ref, atol=1e-6)  # warped, aspect ratio not kept, nothing cropped away


def test_bicubic_pseudo_stage_interpolation(tiny):
    from wsss_blocks.cam import multiscale_cams, normalize_cams
    from wsss_blocks.train.pseudo_stage import compute_cams

    cfg = _cfg(tiny, "pseudo.interpolation=bicubic", "pseudo.scales=[1.0, 0.5]", "pseudo.flip=false")

    class M:
        cam_normalization = "max"

        @staticmethod
        def cam_fn(x):
            return torch.relu(x[:, :2] * 3.0)

    img = torch.rand(1, 3, 12, 12)
    lab = torch.ones(1, 2)
    got = compute_cams(M(), img, lab, cfg)
    x = normalize_images(img, "imagenet")
    ref = normalize_cams(multiscale_cams(M.cam_fn, x, scales=(1.0, 0.5), flip=False, interpolation="bicubic"))
    bil = normalize_cams(multiscale_cams(M.cam_fn, x, scales=(1.0, 0.5), flip=False, interpolation="bilinear"))
    assert torch.allclose(got, ref, atol=1e-6)
    assert not torch.allclose(got, bil, atol=1e-4)


# ------------------------------------------------------------------------------------------ evaluation options
def test_eval_resize_long_feeds_the_resized_image_and_scores_at_full_size(tiny):
    from wsss_blocks.train.cam_stage import prepare_env
    from wsss_blocks.train.datasets import open_split
    from wsss_blocks.train.evaluation import evaluate_segmentation

    cfg = _cfg(tiny, "seg.eval_resize_long=16", "seg.eval_scales=[1.0, 0.5]")
    env = prepare_env(cfg, None)
    ds = open_split(cfg, "val", return_mask=True)
    seen = []

    def fn(x):
        seen.append(tuple(x.shape[-2:]))
        out = torch.zeros(x.shape[0], cfg.data.num_classes + 1, *x.shape[-2:])
        out[:, 0] = 1.0  # always background
        return out

    res = evaluate_segmentation(cfg, fn, "imagenet", ds, env, "t")
    assert set(seen) == {(16, 16), (8, 8)}  # 32 px images: long side 16, then × 1.0 and × 0.5
    m = SegmentationMetric(cfg.data.num_classes + 1)
    for i in range(len(ds)):
        gt = torch.from_numpy(ds.load_mask(i)).long()
        m.update(torch.zeros_like(gt), gt)
    assert res["miou"] == pytest.approx(float(m.compute()["miou"]))
    assert res["num_images"] == len(ds)


def _register_ignore_border_rule() -> str:
    """A chain rule (registered like any user rule) that writes 255 into the top three rows."""
    from wsss_blocks.cam import cams_to_mask
    from wsss_blocks.train.pipeline import register_step

    @register_step("rule", "ignore_border_test", summary="constant-background argmax, top rows ignored (a test)")
    def _masks_with_ignore_border(state, refine, args):
        m = cams_to_mask(refine(state.bg_score).cams, state.labels, state.bg_score)
        m[:, :3] = 255
        return m

    return "ignore_border_test"


@pytest.mark.parametrize("policy", ["background", "drop"])
def test_pseudo_scoring_policy_for_ignore_pixels_and_eval_split_masks(tiny, tmp_path, policy):
    from wsss_blocks.train.cam_stage import train_cam
    from wsss_blocks.train.datasets import open_split
    from wsss_blocks.train.pseudo_stage import make_pseudo_masks

    rule = _register_ignore_border_rule()
    cfg = _cfg(tiny, "cam.steps=2", "data.cam_eval_split=val", "pseudo.score_eval_split=true",
               f"pseudo.pred_ignore={policy}", f"pseudo.rule={rule}")
    train_cam(cfg, tmp_path)
    summary = make_pseudo_masks(cfg, tmp_path)
    ev = open_split(cfg, "val", return_mask=True)
    eval_dir = tmp_path / "pseudo" / "eval_masks"
    assert sorted(p.stem for p in eval_dir.glob("*.png")) == sorted(ev.names)
    assert summary["num_eval_written"] == len(ev)
    assert summary["num_scored"] == len(ev)
    assert not any((tmp_path / "pseudo" / "masks" / f"{n}.png").exists() for n in ev.names)
    m = SegmentationMetric(cfg.data.num_classes + 1)
    for i, n in enumerate(ev.names):
        pred = torch.from_numpy(load_label_png(eval_dir / f"{n}.png")).long()
        assert (pred[:3] == 255).all()
        if policy == "background":
            pred = torch.where(pred == 255, torch.zeros_like(pred), pred)
        gt = torch.from_numpy(ev.load_mask(i)).long()
        keep = pred != 255
        m.update(pred[keep], gt[keep])
    assert summary["pseudo_miou"] == pytest.approx(float(m.compute()["miou"]))


# ------------------------------------------------------------------------------------------ cyclic rounds
def _state(path):
    from wsss_blocks.train.checkpoint import load_checkpoint

    return load_checkpoint(path)["model"]


def test_cyclic_round_relabels_with_the_best_model_and_retrains_with_ce(tiny, tmp_path, monkeypatch):
    from wsss_blocks.pseudo_mask import CyclicPseudoMask
    from wsss_blocks.train.cam_stage import prepare_env, train_cam
    from wsss_blocks.train.checkpoint import load_checkpoint
    from wsss_blocks.train.datasets import open_split
    from wsss_blocks.train.pseudo_stage import make_pseudo_masks
    from wsss_blocks.train.seg_stage import _load_seg_model, eval_seg, seg_logits, seg_model_path, train_seg

    cfg = _cfg(tiny, "cam.steps=2", "seg.eval_every=2", "seg.cyclic_rounds=1", "seg.loss=puf",
               "seg.loss_args={beta: 0.5, k: 0.5}", "seg.eval_scales=[1.0, 0.5]", "seg.eval_flip=true")
    train_cam(cfg, tmp_path)
    make_pseudo_masks(cfg, tmp_path)
    import wsss_blocks.train.seg_stage as seg_stage

    modes = []
    real = seg_stage.seg_logits

    def spy(model, x):
        if not torch.is_grad_enabled():  # inference: val evaluations and the relabelling pass
            modes.append(model.training)
        return real(model, x)

    monkeypatch.setattr(seg_stage, "seg_logits", spy)
    final = train_seg(cfg, tmp_path, evaluate=False)
    assert modes
    assert not any(modes)
    seg = tmp_path / "seg"
    assert final == seg / "round1" / "model.pt" == seg_model_path(cfg, tmp_path)
    # round 0: PUF, evaluated at steps 2 and 4; best.pt = the best of those evaluations
    recs = [json.loads(x) for x in (seg / "log.jsonl").read_text().splitlines()]
    evals = {r["phase_step"]: r["val_miou"] for r in recs if "val_miou" in r}
    assert sorted(evals) == [2, 4]
    best = load_checkpoint(seg / "best.pt")
    top = max(evals.values())
    assert best["val_miou"] == pytest.approx(top)
    assert best["step"] == min(s for s, v in evals.items() if v == top)
    assert load_checkpoint(seg / "model.pt")["loss"] == "puf"
    assert load_checkpoint(final)["loss"] == "ce"
    assert load_checkpoint(final)["round"] == 1
    # the cyclic masks are the best round-0 model's multi-scale + flip predictions (CRF off, like seg.crf)
    env_model = _load_seg_model(cfg, seg / "best.pt", prepare_env(cfg, None))
    train = open_split(cfg, "train_aug", return_mask=False)
    cyc = seg / "cyclic_masks_r1"
    assert sorted(p.stem for p in cyc.glob("*.png")) == sorted(train.names)
    cp = CyclicPseudoMask(scales=(1.0, 0.5), flip=True, img_scale=None, slide=None, crf=None,
                          preprocess=lambda x: normalize_images(x, "imagenet"))
    env_model.eval()
    for i in (0, 5):
        s = train[i]
        with torch.no_grad():
            want = cp(lambda x: seg_logits(env_model, x), s["image"][None])[0]
        got = torch.from_numpy(load_label_png(cyc / f"{s['name']}.png")).long()
        assert torch.equal(got, want)
    info = json.loads((seg / "cyclic_masks_r1.json").read_text())
    assert info["written"] == len(train)
    assert info["model"].endswith("best.pt")
    res = eval_seg(cfg, tmp_path)
    assert res["model"].endswith("round1/model.pt")
    assert res["cyclic_rounds"] == 1
    from wsss_blocks.train.reproduce import _seg_round_history

    hist = _seg_round_history(cfg, tmp_path)
    assert [h["round"] for h in hist] == [0, 1]
    assert hist[0]["best_val"] == pytest.approx(top)
    assert hist[0]["best_step"] == best["step"]
    assert hist[0]["last_val"] == pytest.approx(evals[4])
    assert hist[1]["last_step"] == 4


@pytest.mark.slow
def test_cyclic_rounds_resume_bit_exact_and_reuse_finished_rounds(tiny, tmp_path, seg_run_pair):
    from wsss_blocks.train.seg_stage import train_seg

    cfg = _cfg(tiny, "cam.steps=2", "seg.eval_every=2", "seg.cyclic_rounds=1", "runtime.deterministic=true")
    seg_run_pair(cfg, tmp_path)
    ref = _state(train_seg(cfg, tmp_path / "a", evaluate=False))

    def hook(info):
        if info["phase"] == "seg_round1" and info["phase_step"] == 3:
            raise _Crash

    with pytest.raises(_Crash):
        train_seg(cfg, tmp_path / "b", hooks=[hook], evaluate=False)
    r0 = (tmp_path / "b" / "seg" / "model.pt").stat().st_mtime_ns
    got = _state(train_seg(cfg, tmp_path / "b", resume=True, evaluate=False))
    assert (tmp_path / "b" / "seg" / "model.pt").stat().st_mtime_ns == r0  # round 0 reused, not retrained
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    a = sorted((tmp_path / "a" / "seg" / "cyclic_masks_r1").glob("*.png"))
    for p in a:
        assert np.array_equal(load_label_png(p), load_label_png(tmp_path / "b" / "seg" / "cyclic_masks_r1" / p.name))


def test_cyclic_select_best_needs_the_evaluations(tiny, tmp_path):
    from wsss_blocks.train.cam_stage import train_cam
    from wsss_blocks.train.pseudo_stage import make_pseudo_masks
    from wsss_blocks.train.seg_stage import train_seg

    with pytest.raises(ConfigError, match=r"seg.eval_every"):
        _cfg(tiny, "seg.cyclic_rounds=1")
    cfg = _cfg(tiny, "cam.steps=2", "seg.cyclic_rounds=1", "seg.steps=2", "seg.cyclic_select=last")
    train_cam(cfg, tmp_path)
    make_pseudo_masks(cfg, tmp_path)
    final = train_seg(cfg, tmp_path, evaluate=False)
    assert final.parent.name == "round1"
    assert not (tmp_path / "seg" / "best.pt").exists()
    assert json.loads((tmp_path / "seg" / "cyclic_masks_r1.json").read_text())["model"].endswith("seg/model.pt")


# ------------------------------------------------------------------------------------------ the final table
def test_table_shows_the_paper_numbers_of_the_dataset_that_ran():
    from wsss_blocks.train.methods import get_method
    from wsss_blocks.train.reproduce import format_table, paper_numbers

    assert paper_numbers(get_method("l2g"), "coco")["val_miou"] == 44.2
    assert paper_numbers(get_method("l2g"), "voc")["val_miou"] == 72.1
    assert paper_numbers(get_method("l2g"), "synthetic")["val_miou"] == 72.1
    assert paper_numbers(get_method("smaf"), "coco") == {"cam_miou": None, "pseudo_miou": None, "val_miou": None}
    res = {"method": "pmm", "preset": "pmm_coco", "device": "cpu", "seconds": 1.0, "paper_dataset": "coco",
           "ours": {"cam_miou": 0.3, "pseudo_miou": 0.4, "val_miou": 0.35},
           "paper": paper_numbers(get_method("pmm"), "coco"),
           "info": {"cam_eval_split": "train", "bg_score": 0.1, "val_split": "val", "crf": True, "cyclic_rounds": 1}}
    table = format_table(res)
    row = next(line for line in table.splitlines() if line.startswith("segmentation mIoU"))
    assert "val +CRF +1 cyclic" in row
    assert row.split()[-2:] == ["35.0", "40.2"]
    assert "MS-COCO" in table


# ------------------------------------------------------------------------------------------ DDP
def _ddp_seg_worker(rank, world, port, overrides, out, result_dir):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from wsss_blocks.train.checkpoint import load_checkpoint
    from wsss_blocks.train.distributed import cleanup
    from wsss_blocks.train.seg_stage import train_seg

    cfg = load_run_config("baseline_synthetic", overrides)
    try:
        final = train_seg(cfg, out, evaluate=True)
        torch.save({"state": load_checkpoint(final)["model"]}, f"{result_dir}/seg_rank{rank}.pt")
    finally:
        cleanup()


@pytest.mark.slow
@pytest.mark.timeout(300)  # a collective called on one rank only would hang instead of failing
def test_ddp_cyclic_round_shards_the_relabelling_and_keeps_ranks_identical(tiny, tmp_path):
    import socket

    import torch.multiprocessing as mp

    from wsss_blocks.train.cam_stage import train_cam
    from wsss_blocks.train.datasets import open_split
    from wsss_blocks.train.pseudo_stage import make_pseudo_masks

    extra = ["cam.steps=2", "seg.eval_every=2", "seg.cyclic_rounds=1", "seg.steps=3", "runtime.device=cpu"]
    cfg = _cfg(tiny, *extra)
    train_cam(cfg, tmp_path / "run")
    make_pseudo_masks(cfg, tmp_path / "run")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_ddp_seg_worker, args=(2, port, [*tiny, *extra], str(tmp_path / "run"), str(tmp_path)),
                       nprocs=2, join=True, start_method=method)
    r0 = torch.load(tmp_path / "seg_rank0.pt", weights_only=False)["state"]
    r1 = torch.load(tmp_path / "seg_rank1.pt", weights_only=False)["state"]
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    train = open_split(cfg, "train_aug", return_mask=False)
    cyc = tmp_path / "run" / "seg" / "cyclic_masks_r1"
    assert sorted(p.stem for p in cyc.glob("*.png")) == sorted(train.names)  # both shards written, nothing twice
    info = json.loads((cyc.parent / "cyclic_masks_r1.json").read_text())
    assert info["written"] == len(train)
    assert info["skipped"] == 0
    res = json.loads((tmp_path / "run" / "seg" / "eval_val.json").read_text())
    assert res["num_images"] == 4
    assert res["model"].endswith("round1/model.pt")


def test_smaf_uses_the_custom_normalisation_statistics():
    from wsss_blocks.train.methods.smaf import SMAFMethod

    cfg = load_run_config({"method": "smaf", "cam": {"backbone": "resnet38d_tiny"},
                           "data": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
                           "method_args": {"eps_saliency": False, "frozen": ["conv1a"]}})
    m = SMAFMethod(cfg, cfg.method_config(), 20)
    assert m._fused_meta()["normalize"] == [[0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]  # stored maps record it


# ------------------------------------------------------------------------------------------ PSPNet (PMM) recipe
PSP = ["seg.model=pspnet", "seg.backbone=tiny", "seg.backbone_kwargs={widths: [8, 8, 16], output_stride: 8}",
       "seg.model_kwargs={channels: 8, aux_channels: 4, pool_scales: [1, 2]}", "seg.augment=mmseg",
       "seg.img_scale=[64, 16]", "seg.ratio_range=[1.0, 2.0]", "seg.cat_max_ratio=0.75",
       "seg.photometric_distortion=true", "seg.param_groups=uniform", "seg.sync_bn=true", "seg.loss=puf",
       "seg.loss_args={beta: 0.5, k: 0.5, mode: clamp}", "seg.loss_at=labels", "seg.msc_train=[]",
       "seg.lr=0.005", "seg.min_lr=0.001", "seg.normalize=imagenet", "seg.eval_average=probs",
       "seg.eval_scale_reduce=mean", "seg.eval_img_scale=[64, 16]", "seg.eval_scales=[1.0, 1.5]",
       "seg.eval_slide=[24, 16]", "seg.eval_flip=true"]


def test_pspnet_recipe_trains_with_aux_loss_uniform_lr_and_min_lr(tiny, tmp_path):
    from wsss_blocks.train.cam_stage import train_cam
    from wsss_blocks.train.pseudo_stage import make_pseudo_masks
    from wsss_blocks.train.seg_stage import _seg_param_groups, build_seg_model, train_seg

    cfg = _cfg(tiny, *PSP)
    model = build_seg_model(cfg)
    assert type(model).__name__ == "PSPNet"
    groups = _seg_param_groups(cfg, model)
    assert len(groups) == 1  # mmseg: one lr and weight decay for every parameter (BatchNorm and biases too)
    assert len(groups[0]["params"]) == len(list(model.parameters()))
    train_cam(cfg, tmp_path)
    make_pseudo_masks(cfg, tmp_path)
    train_seg(cfg, tmp_path, evaluate=False)
    recs = [json.loads(x) for x in (tmp_path / "seg" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "lr" in r]
    # poly to min_lr: (0.005 - 0.001)·(1 - t/4)^0.9 + 0.001, the factor taken before step t's update
    for r in steps:
        t = r["phase_step"] - 1
        assert r["lr"] == pytest.approx((0.005 - 0.001) * (1 - t / 4) ** 0.9 + 0.001)
    for r in steps:
        assert r["loss"] == pytest.approx(r["loss_decode"] + 0.4 * r["loss_aux"], rel=1e-5)


def test_pspnet_mmseg_augmentation_pipeline(tiny):
    from wsss_blocks.train.datasets import AugmentedDataset, open_split, seg_train_transform

    cfg = _cfg(tiny, *PSP)
    names = [type(t).__name__ for t in seg_train_transform(cfg).transforms]
    assert names == ["RandomResizeRatio", "RandomCropInside", "RandomHorizontalFlip", "PhotoMetricDistortion", "PadTo"]
    base = open_split(cfg, cfg.data.train_split, return_mask=True)
    ds = AugmentedDataset(base, seg_train_transform(cfg), 0)
    padded = 0
    for i in range(6):
        s = ds[(0, i)]
        padded += int((~s["valid"]).any())
        assert tuple(s["image01"].shape) == (3, 32, 32)
        h, w = int(s["valid"].any(1).sum()), int(s["valid"].any(0).sum())
        # padding only at the bottom/right, image and mask padded alike
        assert bool(s["valid"][:h, :w].all())
        assert bool((s["mask"][~s["valid"]] == 255).all())
        assert bool(((s["image01"] * 255) - (s["image01"] * 255).round()).abs().max() < 1e-3)  # 8-bit distortion
    assert padded > 0  # short sides of 16-32 px under a 32-px crop

def test_pspnet_evaluation_averages_softmaxes_of_slide_windows_at_img_scale_ratios(tiny):
    from wsss_blocks.models import slide_inference
    from wsss_blocks.train.evaluation import predict_probs

    cfg = _cfg(tiny, *PSP)
    net = torch.nn.Conv2d(3, cfg.data.num_classes + 1, 3, padding=1)
    seen = []

    def fn(x):
        seen.append(tuple(x.shape[-2:]))
        return net(x)

    img = torch.rand(1, 3, 20, 30)
    got = predict_probs(cfg, fn, img, "imagenet")
    # mmseg aug_test by hand: ratios 1.0 and 1.5 of img_scale (64, 16) keep-ratio -> short side 16 and 24
    x = normalize_images(img, "imagenet")
    ref = torch.zeros_like(got)
    for size in ((16, 24), (24, 36)):
        xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for flip in (False, True):
            z = xs.flip(-1) if flip else xs
            out = slide_inference(net, z, 24, 16)
            p = F.interpolate(out, size=(20, 30), mode="bilinear", align_corners=False).softmax(1)
            ref += (p.flip(-1) if flip else p) / 4
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert (24, 24) in seen  # windows of 24 px
