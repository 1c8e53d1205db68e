"""TSCD's synthetic preset (``tscd_synthetic.yaml``).

The preset runs the released TSCD pipeline on the synthetic VOC-format data with a tiny random-init MiT. With
``mit_tiny``'s stock first stage (7×7 patch embedding at stride 4, 8 channels, 6×6 CAMs on 96-px crops) the
classifier memorised the 200 training images (validation classification at the label prior) and the CAMs, pseudo
masks and segmentation stayed near the all-background score (14.7 / 15.6 / 9.8 mIoU). The preset therefore uses a
stride-2, 16-channel first stage (12×12 CAMs on 96 px; 8×8 on the benchmark protocol's 64 px); these tests pin
that network and check that every value differing
from the released ``tscd_voc.yaml`` is a size/schedule value documented with a ``release: …`` comment, while the
method's behaviour (loss weights, thresholds, refiner, pooling, ...) stays the released one.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from wsss_blocks.train.config import packaged_config
from wsss_blocks.train.methods.tscd import TSCDMethod
from wsss_blocks.train.schema import load_run_config

SECTIONS = ("cam", "pseudo", "seg", "runtime")
#: method arguments the synthetic preset may change: network size and schedule only.
SIZE_AND_SCHEDULE = {"strides", "embed_dim", "drop_path_rate", "cam_scales", "cam_iters", "scd_num_samples"}


def _differences() -> list[tuple[str, str]]:
    voc, syn = load_run_config("tscd_voc"), load_run_config("tscd_synthetic")
    out = []
    for sec in SECTIONS:
        a, b = getattr(voc, sec), getattr(syn, sec)
        out += [(sec, f.name) for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
    a, b = voc.method_config(), syn.method_config()
    out += [("method_args", f.name) for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
    return out


def _yaml_lines(section: str) -> dict[str, str]:
    """``key -> line`` of the top-level ``section`` of tscd_synthetic.yaml (two-space indented keys)."""
    lines = packaged_config("tscd_synthetic").read_text().splitlines()
    out: dict[str, str] = {}
    inside = False
    for line in lines:
        if line and not line.startswith((" ", "#")):
            inside = line.split(":")[0] == section
            continue
        if inside and line.startswith("  ") and not line.startswith("   ") and ":" in line:
            out[line.strip().split(":")[0]] = line
    return out


def test_synthetic_preset_differs_from_release_only_where_commented():
    diffs = _differences()
    # the values this preset is about (a sanity check that the comparison sees them)
    for d in [("cam", "backbone"), ("cam", "backbone_kwargs"), ("cam", "steps"), ("method_args", "strides"),
              ("method_args", "cam_iters")]:
        assert d in diffs
    missing = []
    for sec, key in diffs:
        line = _yaml_lines(sec).get(key)
        if line is None or "release:" not in line:
            missing.append(f"{sec}.{key}")
    assert not missing, f"values differing from tscd_voc.yaml without a 'release: ...' comment: {missing}"


def test_synthetic_preset_keeps_the_released_method_behaviour():
    changed = {key for sec, key in _differences() if sec == "method_args"}
    assert changed <= SIZE_AND_SCHEDULE, changed - SIZE_AND_SCHEDULE
    syn = load_run_config("tscd_synthetic")
    c = syn.method_config()
    # the released recipe is untouched
    assert (c.cls_weight, c.seg_weight, c.aff_weight, c.reg_weight, c.scd_weight, c.er_weight) == (
        1.0, 0.1, 0.1, 0.01, 0.1, 0.1)
    assert (c.high_threshold, c.low_threshold, c.refiner, c.pooling, c.attn_symmetric) == (0.55, 0.35, "varm", "gmp",
                                                                                           False)
    assert (syn.cam.optimizer, syn.cam.poly_power, syn.cam.scale_range) == ("adamw", 1.0, (0.5, 2.0))
    # the benchmark protocol sweeps the background score on the training images; TSCD's pseudo masks are its VARM
    # labels (pseudo.refine: varm, pseudo.rule: reliable), so the score changes the reported CAM mIoU only
    assert syn.pseudo.bg_score == "sweep"
    from wsss_blocks.train.pipeline import chain_spec

    spec = chain_spec(syn)
    assert (spec.refine, spec.rule) == ("varm", "reliable")
    # the classification-only warm-up keeps the release's share of the schedule (2000 of 20000)
    assert c.cam_iters / syn.cam.steps == pytest.approx(2000 / 20000)
    assert syn.cam.warmup_steps / syn.cam.steps == pytest.approx(1500 / 20000, abs=1 / syn.cam.steps)  # whole steps


@pytest.mark.parametrize("quick", [False, True])
def test_synthetic_preset_network_has_a_stride2_16_channel_stem(quick):
    cfg = load_run_config("tscd_synthetic", ["cam.pretrained=null"], quick=quick)
    torch.manual_seed(0)
    m = TSCDMethod(cfg, cfg.method_config(), cfg.data.num_classes).eval()
    stem = m.net.encoder.patch_embed1.proj
    assert (stem.stride, stem.out_channels) == ((2, 2), 16)  # mit_tiny's stock stem: stride 4, 8 channels
    assert m.net.encoder.strides == (2, 4, 8, 8)
    assert m.stride == 8
    s = cfg.cam.crop_size
    x = torch.rand(2, 3, s, s)
    with torch.no_grad():
        assert tuple(m.cam_fn(x).shape) == (2, 20, s // 8, s // 8)  # 8×8 CAMs on the 64-px crops
        assert tuple(m.seg_fn(x).shape) == (2, 21, s // 2, s // 2)  # the decoder works at the first stage's stride
        # the SCD view (x0.3) of the smallest training-time CAM scale passes the encoder's size check
        small = int(int(s * cfg.method_config().scd_view_scale_factor) * min(cfg.method_config().cam_scales))
        assert m.cam_fn(torch.rand(1, 3, small, small)).shape[-1] >= 1


def test_voc_preset_network_is_unchanged():
    cfg = load_run_config("tscd_voc", ["cam.pretrained=none"])  # the network only; mit-b1-imagenet is not needed
    m = TSCDMethod(cfg, cfg.method_config(), cfg.data.num_classes)
    stem = m.net.encoder.patch_embed1.proj
    assert (stem.stride, stem.out_channels, stem.kernel_size) == ((4, 4), 64, (7, 7))  # MiT-B1
    assert m.net.encoder.strides == (4, 8, 16, 16)
    assert m.net.encoder.embed_dims == (64, 128, 320, 512)
    assert cfg.method_config().cam_scales == (1.0, 0.5, 1.5)
    assert cfg.cam.backbone_kwargs == {}


def test_synthetic_preset_training_step_at_the_preset_crop():
    cfg = load_run_config("tscd_synthetic", ["cam.pretrained=null"])
    torch.manual_seed(0)
    m = TSCDMethod(cfg, cfg.method_config(), cfg.data.num_classes).train()
    s = cfg.cam.crop_size
    g = torch.Generator().manual_seed(1)
    x01 = torch.rand(2, 3, s, s, generator=g)
    labels = torch.zeros(2, 20)
    labels[0, 1] = labels[1, [0, 4]] = 1
    batch = {"image": (x01 - 0.45) / 0.225, "image01": x01, "labels": labels,
             "valid": torch.ones(2, s, s, dtype=torch.bool)}
    out = m.training_step(batch, cfg.method_config().cam_iters + 1, cfg.cam.steps)  # after the warm-up: all losses
    assert all(math.isfinite(float(v.detach())) for v in out.values())
    out["loss"].backward()
    stem = m.net.encoder.patch_embed1.proj.weight.grad
    assert stem is not None
    assert float(stem.abs().sum()) > 0
    assert float(m.net.decoder.linear_pred.weight.grad.abs().sum()) > 0  # type: ignore[union-attr]
