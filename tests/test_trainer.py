"""Reference trainer: end to end on tiny synthetic data, bit-exact resume, DDP on 2 CPU processes, configs,
bad input caught before training, CLI. CPU only, one thread, a few optimizer steps per run.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_blocks.data import load_label_png
from wsss_blocks.metrics import SegmentationMetric
from wsss_blocks.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from wsss_blocks.train.config import ConfigError
from wsss_blocks.train.distributed import epoch_batches
from wsss_blocks.train.schema import load_run_config

pytest.importorskip("PIL")
pytest.importorskip("yaml")

@pytest.fixture
def tiny(trainer_tiny):
    """Overrides for a tiny synthetic run (tests/conftest.py) with a session-wide data cache."""
    return trainer_tiny


def _cfg(tiny, *extra):
    return load_run_config("baseline_synthetic", [*tiny, *extra])


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_baseline_all_stages_end_to_end(tiny, tmp_path):
    from wsss_blocks.train.reproduce import format_table, reproduce

    out = tmp_path / "run"
    res = reproduce("baseline", out=out, overrides=[*tiny, "runtime.plots=true", "cam.overlay_samples=2"],
                    verbose=False)
    for key in ("cam_miou", "pseudo_miou", "val_miou"):
        assert 0.0 < res["ours"][key] < 1.0
    assert res["paper"]["cam_miou"] == 48.8
    # stage outputs
    assert (out / "cam" / "model.pt").is_file()
    assert (out / "seg" / "model.pt").is_file()
    assert (out / "cam" / "curves.png").is_file()
    assert list((out / "cam" / "overlays").glob("*.png"))
    masks = sorted((out / "pseudo" / "masks").glob("*.png"))
    assert len(masks) == 16
    # the reported pseudo-mask mIoU is the mIoU of the written files against GT (recomputed independently)
    from wsss_blocks.data import VOCSegmentation

    cfg = _cfg(tiny)
    from wsss_blocks.train.datasets import data_root

    gt = VOCSegmentation(data_root(cfg), "train", labels_file="cls_labels.npy")
    m = SegmentationMetric(21)
    for i, name in enumerate(gt.names):
        pred = torch.from_numpy(load_label_png(out / "pseudo" / "masks" / f"{name}.png")).long()
        assert int(pred.max()) <= 20
        m.update(pred, gt[i]["mask"])
    assert float(m.compute()["miou"]) == pytest.approx(res["ours"]["pseudo_miou"], abs=1e-6)
    # the pseudo masks follow the IRN seed rule at the reported background score: absent classes never appear
    for i, name in enumerate(gt.names[:4]):
        present = set((torch.nonzero(gt[i]["labels"]).flatten() + 1).tolist()) | {0}
        assert set(np.unique(load_label_png(out / "pseudo" / "masks" / f"{name}.png")).tolist()) <= present
    table = format_table(res)
    assert "CAM mIoU" in table
    assert "48.8" in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["ours"] == res["ours"]
    # re-running reuses every finished stage (nothing retrains: the model files are untouched)
    mtime = (out / "cam" / "model.pt").stat().st_mtime_ns
    res2 = reproduce("baseline", out=out, overrides=tiny, verbose=False)
    assert (out / "cam" / "model.pt").stat().st_mtime_ns == mtime
    assert res2["ours"] == res["ours"]


def test_pseudo_masks_resume_skips_existing_files(tiny, tmp_path):
    from wsss_blocks.train.cam_stage import train_cam
    from wsss_blocks.train.pseudo_stage import make_pseudo_masks

    cfg = _cfg(tiny, "cam.steps=2")
    train_cam(cfg, tmp_path)
    first = make_pseudo_masks(cfg, tmp_path)
    assert first["num_written"] == 16
    victim = sorted((tmp_path / "pseudo" / "masks").glob("*.png"))[3]
    victim.unlink()
    second = make_pseudo_masks(cfg, tmp_path)
    assert second["num_written"] == 1
    assert victim.is_file()
    assert second["pseudo_miou"] == pytest.approx(first["pseudo_miou"])


# ------------------------------------------------------------------------------------------ resume
class _Crash(RuntimeError):
    pass


def _state(path):
    return load_checkpoint(path)["model"]


def test_resume_after_crash_is_bit_exact(tiny, tmp_path):
    from wsss_blocks.train.cam_stage import train_cam

    cfg = _cfg(tiny, "cam.steps=7", "runtime.deterministic=true", "cam.color_jitter=[0.3, 0.3, 0.3, 0.05]")
    ref = _state(train_cam(cfg, tmp_path / "a"))
    crash_at = random.Random(1).choice([3, 5, 6])  # after a checkpoint (every 2 steps), before the end

    def hook(info):
        if info["phase_step"] == crash_at:
            raise _Crash(f"simulated crash at step {crash_at}")

    with pytest.raises(_Crash):
        train_cam(cfg, tmp_path / "b", hooks=[hook])
    assert not (tmp_path / "b" / "cam" / "model.pt").exists()
    resumed_from = []
    got = _state(train_cam(cfg, tmp_path / "b", resume=True,
                           hooks=[lambda info: resumed_from.append(info["phase_step"])]))
    assert resumed_from[0] == crash_at - crash_at % 2 + 1  # restarted after the last checkpoint
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    # the metric log has no duplicated steps after the resume
    steps = [r["phase_step"] for r in map(json.loads, (tmp_path / "b" / "cam" / "log.jsonl").read_text().splitlines())]
    assert steps == sorted(set(steps)) == list(range(1, 8))


def test_without_resume_a_changed_start_changes_weights(tiny, tmp_path):
    # the resume test can fail: a different seed gives different weights
    from wsss_blocks.train.cam_stage import train_cam

    a = _state(train_cam(_cfg(tiny, "cam.steps=2"), tmp_path / "a"))
    b = _state(train_cam(_cfg(tiny, "cam.steps=2", "runtime.seed=1"), tmp_path / "b"))
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_seg_stage_resume_is_bit_exact(tiny, tmp_path, seg_run_pair):
    from wsss_blocks.train.seg_stage import train_seg

    cfg = _cfg(tiny, "cam.steps=2", "seg.steps=5", "runtime.deterministic=true")
    seg_run_pair(cfg, tmp_path)
    ref = _state(train_seg(cfg, tmp_path / "a", evaluate=False))

    def hook(info):
        if info["phase_step"] == 3:
            raise _Crash

    with pytest.raises(_Crash):
        train_seg(cfg, tmp_path / "b", hooks=[hook], evaluate=False)
    got = _state(train_seg(cfg, tmp_path / "b", resume=True, evaluate=False))
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


# ------------------------------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, overrides, out, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from wsss_blocks.train.cam_stage import train_cam
    from wsss_blocks.train.distributed import cleanup

    cfg = load_run_config("baseline_synthetic", overrides)
    seen = []
    try:
        train_cam(cfg, out, hooks=[lambda info: seen.append(info["indices"])])
        state = load_checkpoint(Path(out) / "cam" / "model.pt")["model"]
        torch.save({"seen": seen, "state": state}, Path(result_dir) / f"rank{rank}.pt")
    finally:
        cleanup()


@pytest.mark.slow
@pytest.mark.timeout(300)  # a collective called on one rank only would hang instead of failing
def test_ddp_two_cpu_processes_disjoint_shards_identical_weights(tiny, tmp_path):
    import torch.multiprocessing as mp

    # generate the data once in this process so the workers only read it
    cfg = _cfg(tiny)
    from wsss_blocks.train.datasets import data_root

    data_root(cfg)
    # 5 steps: one epoch end (4 steps) draws overlays on rank 0 only, which must not block rank 1
    overrides = [*tiny, "cam.steps=5", "runtime.checkpoint_every=2", "runtime.device=cpu", "runtime.plots=true",
                 "cam.overlay_samples=1"]
    # fork: the workers inherit the imported modules (spawn re-imports torch, ~20 s on a loaded machine)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_ddp_worker, args=(2, _free_port(), overrides, str(tmp_path / "run"), str(tmp_path)),
                       nprocs=2, join=True, start_method=method)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert len(r0["seen"]) == len(r1["seen"]) == 5
    assert (tmp_path / "run" / "cam" / "overlays" / "cam_epoch_001.png").is_file()
    for step, (a, b) in enumerate(zip(r0["seen"], r1["seen"])):
        assert len(a) == len(b) == 2
        assert not set(a) & set(b)
        # together the two shards are exactly the single-process global batch of that step
        assert sorted(a + b) == sorted(epoch_batches(16, 4, epoch=step // 4, seed=cfg.runtime.seed)[step % 4])
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # rank 0 wrote the checkpoints, with both ranks' RNG states
    ck = load_checkpoint(sorted((tmp_path / "run" / "cam" / "checkpoints").glob("step_*.pt"))[-1])
    assert ck["world_size"] == 2
    assert len(ck["rng"]) == 2


def test_epoch_batches_shards_are_disjoint_and_cover_the_batch():
    full = epoch_batches(50, 8, epoch=3, seed=7)
    shards = [epoch_batches(50, 8, epoch=3, seed=7, rank=r, world_size=4) for r in range(4)]
    assert len(full) == 6  # 50 // 8, last incomplete batch dropped
    for b, batch in enumerate(full):
        parts = [s[b] for s in shards]
        assert functools.reduce(operator.iadd, parts, []) == batch
        assert len(set(functools.reduce(operator.iadd, parts, []))) == 8
    assert epoch_batches(50, 8, epoch=4, seed=7) != full  # a new permutation per epoch
    with pytest.raises(ValueError, match="divisible"):
        epoch_batches(50, 6, epoch=0, seed=0, world_size=4)
    with pytest.raises(ValueError, match="fewer than one batch"):
        epoch_batches(3, 4, epoch=0, seed=0)


# ------------------------------------------------------------------------------------------ configs
def test_unknown_keys_suggest_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'cam.lrr'; did you mean 'lr'\?"):
        load_run_config("baseline_synthetic", ["cam.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"'runtime.checkpoint_evry'; did you mean 'checkpoint_every'"):
        load_run_config({"runtime": {"checkpoint_evry": 3}})
    with pytest.raises(ConfigError, match=r"'method_args.frozen_stage'; did you mean 'frozen_stages'"):
        load_run_config({"method": "baseline", "method_args": {"frozen_stage": 1}})
    with pytest.raises(ValueError, match=r"unknown method 'basline'; did you mean 'baseline'"):
        load_run_config({"method": "basline"})
    with pytest.raises(ConfigError, match=r"cam.batch_size must be an integer"):
        load_run_config({"cam": {"batch_size": "16"}})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config("baseline_synthetic", ["cam.backbone_kwargs={widths:"])
    with pytest.raises(FileNotFoundError, match="did you mean 'baseline_voc'"):
        load_run_config("baseline_vco")


def test_baseline_voc_config_equals_released_values():
    import yaml

    from wsss_blocks.train.config import packaged_config

    raw = yaml.safe_load(packaged_config("baseline_voc").read_text())
    cfg = load_run_config("baseline_voc")
    # IRN run_sample.py / README / step/train_cam.py / misc/torchutils.py
    assert (cfg.cam.backbone, cfg.cam.backbone_kwargs["output_stride"]) == ("resnet50", 16)
    assert (cfg.cam.lr, cfg.cam.weight_decay, cfg.cam.batch_size, cfg.cam.epochs) == (0.1, 1e-4, 16, 5)
    assert cfg.cam.momentum == 1e-4
    assert cfg.cam.poly_power == 0.9
    assert tuple(cfg.cam.resize_long) == (320, 640)
    assert cfg.cam.crop_size == 512
    assert cfg.cam.hflip
    assert tuple(cfg.pseudo.scales) == (1.0, 0.5, 1.5, 2.0)
    assert cfg.pseudo.flip
    assert cfg.pseudo.bg_score == 0.15
    assert (cfg.data.train_split, cfg.data.cam_eval_split, cfg.data.val_split) == ("train_aug", "train", "val")
    m = cfg.method_config()
    assert (m.frozen_stages, m.freeze_bn, m.head_lr_mult) == (2, True, 10.0)
    # deeplab-pytorch configs/voc12.yaml
    s = cfg.seg
    assert (s.model, s.backbone, s.style, s.normalize) == ("deeplabv2", "resnet101", "caffe", "caffe")
    assert (s.lr, s.momentum, s.weight_decay, s.poly_power) == (2.5e-4, 0.9, 5e-4, 0.9)
    assert (s.batch_size, s.accumulate, s.steps, s.crop_size) == (5, 2, 20000, 321)
    assert tuple(s.scales) == (0.5, 0.75, 1.0, 1.25, 1.5)
    assert tuple(s.msc_train) == (0.5, 0.75)
    assert s.crf
    assert raw["seg"]["crf_params"] == {"preset": "deeplab"}
    assert cfg.runtime.amp


def test_quick_overrides_and_total_steps():
    from wsss_blocks.train.optim import total_steps_for

    cfg = load_run_config("baseline_synthetic", quick=True)
    assert cfg.cam.steps == 100
    assert cfg.data.synthetic.num_train == 96
    voc = load_run_config("baseline_voc")
    assert total_steps_for(voc.cam, 10582) == 10582 // 16 * 5  # IRN max_step


def test_poly_schedule_and_normalisation():
    from wsss_blocks.data.normalization import normalize_images
    from wsss_blocks.train.optim import poly_factor

    assert poly_factor(0, 100) == 1.0
    assert poly_factor(50, 100, power=0.9) == pytest.approx(0.5 ** 0.9)
    assert poly_factor(100, 100) == 0.0
    assert poly_factor(5, 100, warmup_steps=10, warmup_ratio=0.0) == pytest.approx(0.5)
    x = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    assert torch.allclose(normalize_images(x, "imagenet"), torch.zeros(1, 3, 1, 1), atol=1e-6)
    caffe = normalize_images(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1), "caffe").flatten()
    assert caffe.tolist() == pytest.approx([-104.008, -116.669, 255 - 122.675])  # RGB -> BGR


def test_augmentation_is_a_function_of_seed_epoch_index(tiny):
    from wsss_blocks.train.datasets import AugmentedDataset, cam_train_transform, open_split

    cfg = _cfg(tiny, "cam.crop_size=40")
    ds = AugmentedDataset(open_split(cfg, "train_aug", return_mask=False), cam_train_transform(cfg), seed=3)
    a, b, c = ds[(1, 5)], ds[(1, 5)], ds[(2, 5)]
    assert torch.equal(a["image01"], b["image01"])
    assert not torch.equal(a["image01"], c["image01"])
    assert a["image01"].shape == (3, 40, 40)
    assert a["index"] == 5
    # crop 40 > image 28..36: padded pixels are marked invalid and zeroed
    assert 0 < int(a["valid"].sum()) < 40 * 40
    assert float(a["image01"][:, ~a["valid"]].abs().sum()) == 0.0


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input_fails_before_training(tiny, tmp_path):
    from wsss_blocks.train.cam_stage import train_cam
    from wsss_blocks.train.reproduce import reproduce
    from wsss_blocks.train.seg_stage import train_seg

    # missing dataset folder
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_cam(load_run_config("baseline_voc", [f"data.root={tmp_path / 'nope'}"]), tmp_path / "r0")
    # missing split list: a copy of the synthetic set without val.txt fails in reproduce's pre-flight check
    import shutil

    from wsss_blocks.train.datasets import data_root

    root = tmp_path / "voc"
    shutil.copytree(data_root(_cfg(tiny)), root)
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="no list file for split 'val'"):
        reproduce("baseline", out=tmp_path / "r1", overrides=[*tiny, f"data.root={root}"], verbose=False)
    assert not (tmp_path / "r1" / "cam").exists()
    # an image file listed in a split is missing
    shutil.copy(data_root(_cfg(tiny)) / "ImageSets" / "Segmentation" / "val.txt", root / "ImageSets" / "Segmentation")
    first_val = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    (root / "JPEGImages" / f"{first_val}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=f"no image file .*{first_val}.jpg"):
        reproduce("baseline", out=tmp_path / "r2", overrides=[*tiny, f"data.root={root}"], verbose=False)
    # unwritable / impossible output folder (a path below a regular file)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        train_cam(_cfg(tiny), blocker / "out")
    # out of disk
    with pytest.raises(OSError, match="MiB free"):
        train_cam(_cfg(tiny, "runtime.min_free_mb=1e12"), tmp_path / "r3")
    # segmentation without pseudo masks
    with pytest.raises(FileNotFoundError, match="make-pseudo"):
        train_seg(_cfg(tiny), tmp_path / "r4")


@pytest.mark.parametrize(("method", "classes", "match"), [("l2g", 20, "written by method 'l2g'"),
                                                  ("baseline", 80, "has 80 classes")])
def test_foreign_checkpoint_is_refused_before_training(tiny, tmp_path, method, classes, match):
    from wsss_blocks.train.cam_stage import train_cam

    ck_dir = tmp_path / "cam" / "checkpoints"
    save_checkpoint(ck_dir, {"model": {}, "stage": "cam", "phase_index": 0, "phase_step": 2}, method=method,
                    num_classes=classes, step=2)
    with pytest.raises(CheckpointError, match=match):
        train_cam(_cfg(tiny), tmp_path, resume=True)
    assert not (tmp_path / "cam" / "log.jsonl").exists()  # nothing was trained or logged


def test_existing_checkpoints_need_resume(tiny, tmp_path):
    from wsss_blocks.train.cam_stage import train_cam

    def stop(info):
        raise _Crash

    with pytest.raises(_Crash):
        train_cam(_cfg(tiny, "runtime.checkpoint_every=1"), tmp_path, hooks=[stop])
    with pytest.raises(FileExistsError, match="--resume"):
        train_cam(_cfg(tiny), tmp_path)


# ------------------------------------------------------------------------------------------ CLI
@pytest.mark.slow
def test_cli_help_and_commands(tiny, tmp_path, capsys):
    from wsss_blocks.cli import main

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "wsss_blocks.cli", "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0
    for cmd in ("train-cam", "make-pseudo", "eval-cams", "train-seg", "eval-seg", "reproduce"):
        assert cmd in proc.stdout
    assert main(["configs"]) == 0
    assert "baseline_voc" in capsys.readouterr().out
    sets = [a for o in tiny for a in ("--set", o)]
    assert main(["train-cam", "--config", "baseline_synthetic", "--out", str(tmp_path), *sets,
                 "--set", "cam.steps=1"]) == 0
    assert (tmp_path / "cam" / "model.pt").is_file()
    assert main(["eval-cams", "--config", "baseline_synthetic", "--out", str(tmp_path), *sets,
                 "--set", "cam.steps=1"]) == 0
    assert "CAM mIoU on train (16 images)" in capsys.readouterr().out
    # a bad key is one clear error line and exit status 2, before anything runs
    assert main(["train-cam", "--config", "baseline_synthetic", "--out", str(tmp_path / "x"),
                 "--set", "cam.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key 'cam.lrr'; did you mean 'lr'?")
    assert not (tmp_path / "x").exists()
