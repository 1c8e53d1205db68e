"""Run folders: absolute paths from any working directory, stage fingerprints (reuse only unchanged stages, refuse
changed ones before writing anything), no debris from killed writes, fallback from a truncated checkpoint, clear
disk-full and checkpoint-shape errors, one prefix on progress bars. CPU, tiny synthetic runs.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from wsss_blocks.data.io import DiskFullError, atomic_write, remove_stale_temporaries
from wsss_blocks.train.checkpoint import CheckpointError, UnreadableCheckpointError, load_checkpoint, save_checkpoint
from wsss_blocks.train.paths import absolute, resolve_paths
from wsss_blocks.train.run_folder import (
    IGNORED_KEYS,
    RECORD_NAME,
    StaleRunError,
    changed_keys,
    fingerprint,
    stage_settings,
)
from wsss_blocks.train.schema import load_run_config

pytest.importorskip("PIL")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tiny, *extra):
    return load_run_config("baseline_synthetic", [*tiny, *extra])


def _snapshot(folder: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every entry under ``folder`` (and the folder itself): contents and modification time."""
    snap = {".": (None, folder.stat().st_mtime_ns)}
    for p in sorted(folder.rglob("*")):
        snap[str(p.relative_to(folder))] = (p.read_bytes() if p.is_file() else None, p.lstat().st_mtime_ns)
    return snap


@pytest.fixture(scope="module")
def finished_run(trainer_tiny, tmp_path_factory):
    """A finished tiny baseline run (all three stages) and its result; tests copy it before changing it."""
    from wsss_blocks.train.reproduce import reproduce

    out = tmp_path_factory.mktemp("finished") / "run"
    res = reproduce("baseline", out=out, overrides=trainer_tiny, verbose=False)
    return out, res


def _copy(finished_run, dest: Path) -> Path:
    shutil.copytree(finished_run[0], dest, symlinks=True)  # copy2 keeps modification times
    return dest


# ------------------------------------------------------------------------------------------ 1. paths
def test_paths_are_made_absolute_once_at_the_boundary(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "labels").mkdir(parents=True)
    (work / "labels" / "mine.npy").write_bytes(b"")
    monkeypatch.chdir(work)
    cfg = load_run_config("baseline_voc", ["data.root=VOC2012", "data.sbd_root=../SBD/SegmentationClassAug",
                                           "data.saliency_dir=Sal", "data.mask_dir=/masks", "cam.pretrained=w/r50.pth",
                                           "seg.pretrained=~/w/dl.pth", "data.synthetic.cache_dir=cache"])
    d = cfg.data
    assert d.root == str(work / "VOC2012")
    assert d.sbd_root == str(tmp_path / "SBD" / "SegmentationClassAug")
    # dataset-internal paths are relative to the dataset root, as the readers take them
    assert d.saliency_dir == str(work / "VOC2012" / "Sal")
    assert d.mask_dir == "/masks"
    assert d.labels_file is None  # baseline_voc derives labels from masks
    assert cfg.cam.pretrained == str(work / "w" / "r50.pth")
    assert cfg.seg.pretrained == str(Path.home() / "w" / "dl.pth")
    assert d.synthetic.cache_dir == str(work / "cache")
    # a labels file is taken from the working directory when it exists there (the readers' rule), else the root
    assert load_run_config("baseline_voc", ["data.root=VOC2012", "data.labels_file=labels/mine.npy"]
                           ).data.labels_file == str(work / "labels" / "mine.npy")
    assert load_run_config("baseline_voc", ["data.root=VOC2012", "data.labels_file=cls_labels.npy"]
                           ).data.labels_file == str(work / "VOC2012" / "cls_labels.npy")
    # synthetic data without a root: relative to the generated dataset in the (absolute) cache folder
    syn = load_run_config("l2g_synthetic", ["data.synthetic.cache_dir=c"]).data
    assert syn.saliency_dir is not None
    assert Path(syn.saliency_dir).parent.parent == work / "c"
    assert Path(syn.saliency_dir).name == "SaliencyMaps"
    assert Path(syn.saliency_dir).parent.name.startswith("synth")
    # without a root (a VOC config before --data-root) dataset-internal paths stay as given
    assert load_run_config("l2g_voc").data.saliency_dir == "Sal"
    # idempotent, and independent of a later working directory
    monkeypatch.chdir(tmp_path)
    assert resolve_paths(cfg) == cfg
    assert str(absolute("a/../b", "/x")) == "/x/b"


def test_reproduce_with_a_relative_out_from_another_working_directory(trainer_tiny, tmp_path, monkeypatch):
    from wsss_blocks.train.reproduce import reproduce

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = reproduce("baseline", out="runs/rel", overrides=trainer_tiny, verbose=False)
    out = elsewhere / "runs" / "rel"
    assert res["out"] == str(out)
    assert (out / "seg" / "model.pt").is_file()
    assert (out / "results.json").is_file()
    assert 0.0 < res["ours"]["val_miou"] < 1.0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert Path(saved["data"]["labels_file"]).is_absolute()
    assert Path(saved["data"]["labels_file"]).is_file()
    assert Path(saved["data"]["synthetic"]["cache_dir"]).is_absolute()
    assert json.loads((out / "pseudo" / "summary.json").read_text())["mask_dir"] == str(out / "pseudo" / "masks")
    # the recorded config, given back by a relative path from yet another folder, reproduces the same fingerprints:
    # every stage is reused
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")}
    monkeypatch.chdir(tmp_path)
    res2 = reproduce("baseline", config="elsewhere/runs/rel/config.yaml", out="elsewhere/runs/rel", verbose=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")} == mtimes
    assert res2["ours"] == res["ours"]


@pytest.mark.slow
def test_example_script_from_another_folder_default_out_and_one_line_errors(trainer_tiny, tmp_path):
    """The README's main command in miniature: ``examples/reproduce_voc.py`` with its default (relative) ``--out``."""
    work = tmp_path / "clone"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    sets = [a for o in trainer_tiny for a in ("--set", o)]

    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "examples" / "reproduce_voc.py"), *sets, *args], cwd=work,
                              capture_output=True, text=True, env=env, timeout=600)

    proc = run()
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = work / "runs" / "baseline_synthetic"
    assert (out / "results.json").is_file()
    assert "segmentation mIoU" in proc.stdout
    snap = _snapshot(out)
    # a changed setting: one error line naming the key and the ways out, exit status 2, nothing touched
    proc = run("--set", "seg.steps=5")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: run folder {str(out)!r}: the seg stage was made with other settings "
                                  f"(seg.steps: 3 -> 5); rerun with --restart-from seg")
    assert _snapshot(out) == snap
    # an OSError (here: too little free space) is one line too, not a traceback
    proc = run("--out", "other", "--set", "runtime.min_free_mb=1e12")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: output folder {str(work / 'other')!r} has only")
    assert not (work / "other").exists()


# ------------------------------------------------------------------------------------------ 3. fingerprints
def test_stage_settings_count_what_changes_the_files():
    base = load_run_config("baseline_synthetic", ["pseudo.bg_score=0.15"])

    def diff(*overrides, for_eval=False):
        cfg = load_run_config("baseline_synthetic", ["pseudo.bg_score=0.15", *overrides])
        return [s for s in ("cam", "pseudo", "seg")
                if stage_settings(cfg, s, for_eval=for_eval) != stage_settings(base, s, for_eval=for_eval)]

    # speed, logging and placement never count
    never = ["runtime.device=cpu", "runtime.deterministic=true", "runtime.num_workers=3", "runtime.threads=2",
             "runtime.checkpoint_every=7", "runtime.keep_checkpoints=5", "runtime.log_every=3",
             "runtime.progress=false", "runtime.plots=false", "runtime.find_unused_parameters=false",
             "runtime.min_free_mb=5", "cam.overlay_samples=0", "pseudo.batch_size=2", "pseudo.pred_ignore=drop",
             "pseudo.score_eval_split=true", "description=x", "quick_overrides=[]", "data.preflight=false",
             "data.max_image_pixels=1000", "seg.report=last"]
    assert len(never) == len(IGNORED_KEYS)
    assert diff(*never) == []
    # a stage's settings and everything after it
    assert diff("cam.steps=1") == ["cam", "pseudo", "seg"]
    assert diff("runtime.seed=3") == ["cam", "pseudo", "seg"]
    assert diff("method_args.frozen_stages=1") == ["cam", "pseudo", "seg"]
    assert diff("data.synthetic.num_train=10") == ["cam", "pseudo", "seg"]
    assert diff("pseudo.scales=[1.0]") == ["pseudo", "seg"]
    assert diff("seg.lr=0.1") == ["seg"]
    # a method argument written out at its default value is no change
    assert diff("method_args.pooling=gap", "method_args.head_lr_mult=10.0") == []
    # evaluation settings count only where they pick or relabel the model (seg.eval_every, cyclic rounds)
    assert diff("seg.crf=true") == []
    assert diff("seg.eval_average=probs", "seg.eval_scale_reduce=mean", "seg.eval_slide=[16, 12]",
                "seg.eval_img_scale=[64, 16]") == []
    # new training settings count for the segmentation stage
    assert diff("seg.augment=mmseg") == ["seg"]
    assert diff("seg.min_lr=0.001") == ["seg"]
    assert diff("cam.saliency_interpolation=nearest") == ["cam", "pseudo", "seg"]
    assert diff("data.val_split=train") == []
    assert diff("data.max_eval_images=2") == []
    sel = load_run_config("baseline_synthetic", ["pseudo.bg_score=0.15", "seg.eval_every=2"])
    sel_crf = load_run_config("baseline_synthetic", ["pseudo.bg_score=0.15", "seg.eval_every=2", "seg.crf=true"])
    assert changed_keys(stage_settings(sel, "seg"), stage_settings(sel_crf, "seg")) == ["seg.crf: false -> true"]
    assert stage_settings(sel, "seg", for_eval=True) == stage_settings(sel_crf, "seg", for_eval=True)
    # with bg_score: sweep the evaluation split chooses the background score, so it counts for the masks
    sw = load_run_config("baseline_synthetic", ["pseudo.bg_score=sweep"])
    sw2 = load_run_config("baseline_synthetic", ["pseudo.bg_score=sweep", "data.max_eval_images=2"])
    assert changed_keys(stage_settings(sw, "pseudo"), stage_settings(sw2, "pseudo")) == [
        "data.max_eval_images: null -> 2"]
    assert stage_settings(sw, "cam") == stage_settings(sw2, "cam")
    # a method whose own head is validated during the CAM stage (seg.source: method, TSCD): val counts for the CAM
    # stage's files (cam/best.pt)
    ts = ["seg.eval_every=5"]
    t1 = load_run_config("tscd_synthetic", ts)
    t2 = load_run_config("tscd_synthetic", [*ts, "data.val_split=train"])
    assert changed_keys(stage_settings(t1, "cam"), stage_settings(t2, "cam")) == ["data.val_split: val -> train"]
    assert "seg.eval_every" in stage_settings(t1, "cam")
    assert "seg.eval_every" not in stage_settings(load_run_config("tscd_synthetic", ["seg.eval_every=null",
                                                                                     "seg.report=last"]), "cam")
    # the fingerprint is a function of the values, not of the key order
    s = stage_settings(base, "seg")
    assert fingerprint(dict(reversed(list(s.items())))) == fingerprint(s) != fingerprint(stage_settings(base, "cam"))
    assert changed_keys({"a": 1, "b": [1, 2]}, {"b": (1, 2), "c": None}) == ["c: (unset) -> null", "a: 1 -> (unset)"]


def test_changed_settings_are_refused_and_unchanged_ones_reused(finished_run, trainer_tiny, tmp_path, capsys):
    from wsss_blocks.cli import main
    from wsss_blocks.train.reproduce import reproduce

    out = _copy(finished_run, tmp_path / "run")
    before = finished_run[1]
    snap = _snapshot(out)
    # a setting of the segmentation stage
    with pytest.raises(StaleRunError) as e:
        reproduce("baseline", out=out, overrides=[*trainer_tiny, "seg.steps=5"], verbose=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == (
        f"run folder {str(out)!r}: the seg stage was made with other settings (seg.steps: 3 -> 5); rerun with "
        f"--restart-from seg to redo it and the stages after it, or choose a new --out")
    # a CAM setting names the cam stage (the stages after it are never reused)
    with pytest.raises(StaleRunError, match=r"the cam stage was made with other settings \(cam\.lr: 0\.1 -> 0\.05\)"):
        reproduce("baseline", out=out, overrides=[*trainer_tiny, "cam.lr=0.05", "seg.steps=5"], verbose=False)
    # restarting only a later stage does not get around a changed earlier one
    with pytest.raises(StaleRunError, match=r"the cam stage .*--restart-from cam"):
        reproduce("baseline", out=out, overrides=[*trainer_tiny, "cam.lr=0.05"], restart_from="seg", verbose=False)
    # the CLI prints it as one line, exit status 2
    sets = [a for o in trainer_tiny for a in ("--set", o)]
    assert main(["reproduce", "--out", str(out), *sets, "--set", "seg.steps=5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: run folder")
    assert "seg.steps: 3 -> 5" in err
    assert _snapshot(out) == snap
    # settings that change nothing the stages keep: every stage reused, the evaluation redone with the new setting
    models = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    res = reproduce("baseline", out=out, verbose=False, overrides=[*trainer_tiny, "runtime.log_every=5",
                    "runtime.checkpoint_every=9", "pseudo.batch_size=2", "seg.eval_flip=true"])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == models
    assert res["ours"]["cam_miou"] == before["ours"]["cam_miou"]
    assert res["ours"]["pseudo_miou"] == before["ours"]["pseudo_miou"]
    assert json.loads((out / "seg" / "eval_val.json").read_text())["flip"] is True
    # --restart-from seg: the segmentation stage is redone with the new setting, the earlier stages are kept
    cam_model, mask = out / "cam" / "model.pt", sorted((out / "pseudo" / "masks").glob("*.png"))[0]
    keep = (cam_model.stat().st_mtime_ns, mask.stat().st_mtime_ns)
    res = reproduce("baseline", out=out, overrides=[*trainer_tiny, "seg.steps=5"], restart_from="seg", verbose=False)
    assert (cam_model.stat().st_mtime_ns, mask.stat().st_mtime_ns) == keep
    assert load_checkpoint(out / "seg" / "model.pt")["step"] == 5
    assert json.loads((out / "seg" / RECORD_NAME).read_text())["settings"]["seg.steps"] == 5
    assert json.loads((out / "results.json").read_text())["ours"] == res["ours"]
    # and the folder now matches seg.steps=5
    reproduce("baseline", out=out, overrides=[*trainer_tiny, "seg.steps=5"], verbose=False)
    assert load_checkpoint(out / "seg" / "model.pt")["step"] == 5


def test_downstream_stages_of_a_changed_stage_are_never_reused(finished_run, trainer_tiny, tmp_path):
    from wsss_blocks.train.cam_stage import train_cam
    from wsss_blocks.train.pseudo_stage import make_pseudo_masks
    from wsss_blocks.train.seg_stage import eval_seg, train_seg

    out = _copy(finished_run, tmp_path / "run")
    new = _cfg(trainer_tiny, "cam.lr=0.05")
    # a CAM stage made elsewhere with another learning rate is put into the folder: the pseudo masks (made from the
    # old one) are refused by the pseudo and segmentation stages, and by the evaluation
    train_cam(new, tmp_path / "other")
    shutil.rmtree(out / "cam")
    shutil.copytree(tmp_path / "other" / "cam", out / "cam")
    for fn in (make_pseudo_masks, train_seg, eval_seg):
        with pytest.raises(StaleRunError, match=r"the pseudo stage was made with other settings \(cam\.lr: 0\.1 -> "
                                                r"0\.05\)"):
            fn(new, out)
    # a missing CAM stage: retraining it under existing pseudo masks is refused
    shutil.rmtree(out / "cam")
    with pytest.raises(StaleRunError, match="the pseudo stage holds files but the cam stage before it is missing"):
        train_cam(_cfg(trainer_tiny), out)
    assert not (out / "cam").exists()


def test_stages_without_a_record_and_no_resume_are_refused_unchanged(finished_run, trainer_tiny, tmp_path):
    from wsss_blocks.train.reproduce import reproduce

    out = _copy(finished_run, tmp_path / "run")
    (out / "pseudo" / RECORD_NAME).unlink()
    snap = _snapshot(out)
    with pytest.raises(StaleRunError, match=f"the pseudo stage holds files but no {RECORD_NAME}"):
        reproduce("baseline", out=out, overrides=trainer_tiny, verbose=False)
    with pytest.raises(FileExistsError, match="the cam stage already holds files and resuming is off"):
        reproduce("baseline", out=out, overrides=trainer_tiny, resume=False, verbose=False)
    assert _snapshot(out) == snap


# ------------------------------------------------------------------------------------------ 4. refused = unchanged
def test_a_refused_run_leaves_the_folder_byte_identical(finished_run, trainer_tiny, tmp_path):
    from wsss_blocks.train.reproduce import reproduce

    out = _copy(finished_run, tmp_path / "run")
    snap = _snapshot(out)
    # another method into a finished baseline folder: refused before config.yaml (or anything else) is written
    with pytest.raises(StaleRunError, match=r"the cam stage was made with other settings \(method: baseline -> l2g; "):
        reproduce("l2g", out=out, overrides=trainer_tiny, verbose=False)
    assert _snapshot(out) == snap
    with pytest.raises(ValueError, match="restart_from must be one of"):
        reproduce("baseline", out=out, overrides=trainer_tiny, restart_from="eval", verbose=False)
    assert _snapshot(out) == snap
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == "baseline"
    # a run refused for a missing split does not even create its folder
    with pytest.raises(FileNotFoundError):
        reproduce("baseline", out=tmp_path / "new", overrides=[*trainer_tiny, "data.val_split=nope"], verbose=False)
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------ 5. debris, truncation
def _killed_write(path: Path) -> Path:
    """Start an atomic write of ``path`` in another process and SIGKILL it mid-write; return the left-over file."""
    code = ("import os, signal, sys\nfrom wsss_blocks.data.io import atomic_write\n"
            "with atomic_write(sys.argv[1], 'wb') as f:\n    f.write(b'half a file'); f.flush()\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9
    left = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.") and p.name.endswith(".tmp")]
    assert len(left) == 1
    return left[0]


@pytest.mark.slow
def test_resuming_removes_temporaries_of_killed_writes(finished_run, trainer_tiny, tmp_path):
    from wsss_blocks.train.reproduce import reproduce

    out = _copy(finished_run, tmp_path / "run")
    mask = sorted((out / "pseudo" / "masks").glob("*.png"))[2]
    mask.unlink()
    stale_mask = _killed_write(mask)
    stale_ckpt = _killed_write(out / "cam" / "checkpoints" / "step_00000003.pt")
    stale_top = _killed_write(out / "results.json")
    others = [out / "pseudo" / "masks" / "notes.tmp", out / "pseudo" / ".keep.tmp", out / "cam" / ".x.pt.ab12.tmp"]
    for p in others:
        p.write_text("not ours")
    res = reproduce("baseline", out=out, overrides=trainer_tiny, verbose=False)
    assert mask.is_file()
    assert not stale_mask.exists()
    assert not stale_ckpt.exists()
    assert not stale_top.exists()
    assert all(p.read_text() == "not ours" for p in others)  # only names atomic_write makes are removed
    assert res["ours"] == finished_run[1]["ours"]
    # the helper on its own
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    for name in (".a.png.abcd_123.tmp", "sub/.b.json.zz9_zz9z.tmp", ".c.png.short.tmp", "a.png"):
        (d / name).write_bytes(b"")
    assert [p.name for p in remove_stale_temporaries(d)] == [".a.png.abcd_123.tmp", ".b.json.zz9_zz9z.tmp"]
    assert sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()) == [".c.png.short.tmp", "a.png"]


class _Crash(RuntimeError):
    pass


def _state(path):
    return load_checkpoint(path)["model"]


def test_resume_falls_back_to_the_newest_readable_checkpoint(trainer_tiny, tmp_path):
    from wsss_blocks.train.cam_stage import train_cam

    cfg = _cfg(trainer_tiny, "cam.steps=7", "runtime.deterministic=true")
    ref = _state(train_cam(cfg, tmp_path / "a"))

    def crash(info):
        if info["phase_step"] == 5:
            raise _Crash

    with pytest.raises(_Crash):
        train_cam(cfg, tmp_path / "b", hooks=[crash])
    ckpts = tmp_path / "b" / "cam" / "checkpoints"
    newest = ckpts / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated, as by a full disk
    seen = []
    with pytest.warns(UserWarning, match=r"step_00000004\.pt' cannot be read \(truncated or corrupt"):
        got = _state(train_cam(cfg, tmp_path / "b", resume=True, hooks=[lambda i: seen.append(i["phase_step"])]))
    assert seen[0] == 3  # resumed from step 2
    assert (ckpts / "step_00000004.pt.unreadable").is_file()  # set aside: neither loaded nor pruned later
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    # a truncated final model: finished again from the last checkpoint, identical weights
    final = tmp_path / "b" / "cam" / "model.pt"
    final.write_bytes(final.read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"model\.pt' cannot be read"):
        got = _state(train_cam(cfg, tmp_path / "b", resume=True))
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    # nothing readable left: one clear error, nothing trained
    with pytest.raises(_Crash):
        train_cam(cfg, tmp_path / "c", hooks=[lambda i: (_ for _ in ()).throw(_Crash()) if i["phase_step"] == 3 else 0])
    only = tmp_path / "c" / "cam" / "checkpoints" / "step_00000002.pt"
    only.write_bytes(b"")
    with pytest.warns(UserWarning, match="cannot be read"), \
            pytest.raises(UnreadableCheckpointError, match="no readable checkpoint"):
        train_cam(cfg, tmp_path / "c", resume=True)


# ------------------------------------------------------------------------------------------ 6. clear errors
@pytest.fixture
def full_disk(monkeypatch):
    """``atomic_write`` temporaries whose name starts with ``prefix`` get a file descriptor of ``/dev/full``: every
    write to them fails in the kernel with ENOSPC, as on a full disk.
    """
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    real = tempfile.mkstemp

    def install(prefix=""):
        def mkstemp(*args, **kwargs):
            fd, name = real(*args, **kwargs)
            if Path(name).name.startswith(prefix):
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)
            return fd, name

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)

    return install


def test_disk_full_names_the_file(full_disk, tmp_path):
    from wsss_blocks.train.reporting import MetricLogger

    full_disk()
    with pytest.raises(DiskFullError) as e:  # torch.save reports it as "RuntimeError: ... unexpected pos"
        save_checkpoint(tmp_path, {"model": {"w": torch.zeros(10_000)}}, method="x", num_classes=1, step=3)
    path = tmp_path / "step_00000003.pt"
    assert isinstance(e.value, OSError)
    assert e.value.errno == errno.ENOSPC
    assert e.value.filename == str(path)
    assert str(e.value).startswith(f"[Errno {errno.ENOSPC}] could not write {str(path)!r}: the disk is full")
    assert list(tmp_path.iterdir()) == []  # no temporary left behind
    with pytest.raises(DiskFullError, match=r"could not write '.*/x\.txt': the disk is full"), \
            atomic_write(tmp_path / "x.txt", "w") as f:
        f.write("x" * 100_000)
    with pytest.raises(DiskFullError, match="could not write '/dev/full': the disk is full"):
        MetricLogger("/dev/full").log({"loss": 1.0})  # the metric log appends instead of renaming


def test_disk_full_during_training_is_one_cli_line(full_disk, trainer_tiny, tmp_path, capsys):
    from wsss_blocks.cli import main

    full_disk(prefix=".step_")
    sets = [a for o in trainer_tiny for a in ("--set", o)]
    assert main(["train-cam", "--config", "baseline_synthetic", "--out", str(tmp_path), *sets]) == 2
    err = capsys.readouterr().err
    ck = tmp_path / "cam" / "checkpoints" / "step_00000002.pt"
    assert err.count("\n") == 1
    assert err.startswith(f"error: [Errno 28] could not write {str(ck)!r}: the disk is full")
    assert not list((tmp_path / "cam" / "checkpoints").iterdir())


def test_disk_full_on_a_real_small_file_system(trainer_tiny, tmp_path):
    """A 64 KiB tmpfs: the first checkpoint (~80 KB) does not fit (needs root and mount; skipped otherwise)."""
    from wsss_blocks.train.cam_stage import train_cam

    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        with pytest.raises(DiskFullError, match=r"could not write '.*/step_00000002\.pt': the disk is full"):
            train_cam(_cfg(trainer_tiny, "runtime.min_free_mb=0"), mnt / "run")
        assert not list((mnt / "run" / "cam" / "checkpoints").glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_checkpoint_of_another_network_is_one_line_naming_file_and_key(trainer_tiny, tmp_path):
    from wsss_blocks.train.cam_stage import restore_method, train_cam
    from wsss_blocks.train.checkpoint import load_model_state, save_model_file
    from wsss_blocks.train.distributed import DistEnv

    cfg = _cfg(trainer_tiny, "cam.steps=1")
    path = train_cam(cfg, tmp_path)
    env = DistEnv(device=torch.device("cpu"))
    wider = _cfg(trainer_tiny, "cam.steps=1", "cam.backbone_kwargs={widths: [8, 8, 24], output_stride: 4}")
    with pytest.raises(CheckpointError) as e:
        restore_method(wider, path, env)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"checkpoint {str(path)!r} does not fit this network: key '")
    assert "has shape [16, 8, 3, 3] in the checkpoint, [24, 8, 3, 3] in the network" in msg
    ck = load_checkpoint(path)
    first = next(iter(ck["model"]))
    del ck["model"][first]
    bad = save_model_file(tmp_path / "bad.pt", ck["model"], method="baseline", num_classes=20, step=1)
    with pytest.raises(CheckpointError, match=f"bad.pt' does not fit this network: key {first!r} is missing from the "
                                              f"checkpoint \\(1 missing, 0 unexpected, 0 of another shape\\)"):
        restore_method(cfg, bad, env)
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="key 'extra' is not in the network"):
        load_model_state(lin, {**lin.state_dict(), "extra": torch.zeros(1)}, "x.pt")


# ------------------------------------------------------------------------------------------ 7. progress bars
def test_progress_bars_name_the_stage_once(trainer_tiny, tmp_path, capfd):
    pytest.importorskip("tqdm")
    from wsss_blocks.train.cam_stage import train_cam

    train_cam(_cfg(trainer_tiny, "cam.steps=2", "runtime.progress=true"), tmp_path)
    err = capfd.readouterr().err
    assert "cam: 100%" in err
    assert "cam:cam" not in err
