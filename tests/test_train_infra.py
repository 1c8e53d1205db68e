"""Trainer infrastructure: strict configs and atomic, validated checkpoints."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from wsss_blocks.train.checkpoint import (
    CheckpointError,
    check_output_dir,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from wsss_blocks.train.config import ConfigError, apply_overrides, from_dict, load_config, to_dict


@dataclasses.dataclass
class Opt:
    lr: float = 0.1
    momentum: float = 0.9


@dataclasses.dataclass
class Cfg:
    method: str = "baseline"
    steps: int = 10
    scales: tuple[float, ...] = (1.0, 0.5)
    optim: Opt = dataclasses.field(default_factory=Opt)
    crf: str | None = None


def test_from_dict_nested_and_roundtrip():
    cfg = from_dict(Cfg, {"steps": 5, "optim": {"lr": 1}, "scales": [1.0, 2.0]})
    assert cfg.steps == 5
    assert cfg.optim.lr == 1.0
    assert isinstance(cfg.optim.lr, float)
    assert cfg.scales == (1.0, 2.0)
    assert from_dict(Cfg, to_dict(cfg)) == cfg


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean 'lr'\?"):
        from_dict(Cfg, {"optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match="unknown config key 'stepz'; did you mean 'steps'"):
        from_dict(Cfg, {"stepz": 3})


def test_wrong_types_name_the_path():
    with pytest.raises(ConfigError, match="steps must be an integer, got 'ten'"):
        from_dict(Cfg, {"steps": "ten"})
    with pytest.raises(ConfigError, match="optim must be a mapping"):
        from_dict(Cfg, {"optim": 3})
    with pytest.raises(ConfigError, match=r"scales\[1\] must be a number"):
        from_dict(Cfg, {"scales": [1.0, "x"]})


def test_overrides_and_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 7\noptim:\n  lr: 0.5\n")
    cfg = load_config(Cfg, p, ["optim.momentum=0.5", "crf=deeplab"])
    assert (cfg.steps, cfg.optim.lr, cfg.optim.momentum, cfg.crf) == (7, 0.5, 0.5, "deeplab")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.mom'"):
        load_config(Cfg, p, ["optim.mom=1"])
    with pytest.raises(ConfigError, match=r"must look like section.key=value"):
        apply_overrides({}, ["nonsense"])
    with pytest.raises(FileNotFoundError, match="no packaged config"):
        load_config(Cfg, "no_such_config_name")


def test_checkpoint_roundtrip_keep_last_and_validation(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, {"w": torch.tensor([float(step)])}, method="l2g", num_classes=20, step=step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002.pt", "step_00000003.pt"]
    last = latest_checkpoint(tmp_path)
    assert last is not None
    assert last.name == "step_00000003.pt"
    ck = load_checkpoint(last, method="l2g", num_classes=20)
    assert ck["w"].item() == 3.0
    assert ck["step"] == 3
    with pytest.raises(CheckpointError, match="written by method 'l2g', this run is 'ppl'"):
        load_checkpoint(last, method="ppl")
    with pytest.raises(CheckpointError, match="has 20 classes, this run has 80"):
        load_checkpoint(last, num_classes=80)
    bad = tmp_path / "step_00000009.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_crash_leaves_no_partial_file(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk died")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk died"):
        save_checkpoint(tmp_path, {"w": 1}, method="x", num_classes=1, step=1)
    assert list(tmp_path.iterdir()) == []


def test_rng_state_roundtrip():
    s = rng_state()
    a = torch.rand(3)
    set_rng_state(s)
    assert torch.equal(a, torch.rand(3))


def test_check_output_dir(tmp_path):
    assert check_output_dir(tmp_path / "new").is_dir()
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(PermissionError, match="not writable"):
            check_output_dir(ro / "sub")
    with pytest.raises(OSError, match="MiB free"):
        check_output_dir(tmp_path, min_free_mb=1e12)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        check_output_dir(f / "sub")
