"""Regression: the pseudo masks of every method's packaged chain on a tiny fixed input, frozen as hashes.

The hashes were computed with the methods' own ``pseudo_masks`` rules before the rules moved into the configured
chain of `wsss_blocks.train.pipeline`; the chain must keep producing these exact masks. Each case builds the
method from its synthetic preset (tiny networks, nothing trained: the rules read only the CAMs, labels and image),
feeds fixed smooth CAMs, labels and an image, and hashes the uint8 masks. The dense CRFs run on the PyTorch backend
so the hashes do not depend on whether pydensecrf is installed.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
import torch.nn.functional as F

from wsss_blocks.train.schema import load_run_config

B, C, H, W = 2, 20, 24, 32


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    low = torch.rand(B, C, 4, 5, generator=g) ** 4
    cams = F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)
    cams = cams / cams.amax(dim=(2, 3), keepdim=True)
    labels = torch.zeros(B, C)
    labels[0, [1, 4]] = 1.0
    labels[1, [0, 2, 5]] = 1.0
    cams = cams * labels[:, :, None, None]
    img = F.interpolate(torch.rand(B, 3, 6, 8, generator=g), size=(H, W), mode="bilinear", align_corners=False)
    img = (img + 0.1 * torch.rand(B, 3, H, W, generator=g)).clamp(0.0, 1.0)
    return cams, labels, img


def _digest(masks: torch.Tensor) -> str:
    assert masks.shape == (B, H, W) and masks.dtype == torch.int64
    return hashlib.sha256(masks.to(torch.uint8).numpy().tobytes()).hexdigest()[:16]


# case -> (preset method, overrides of the synthetic preset, background score of the rule, frozen hash)
CASES: dict[str, tuple[str, list[str], float, str]] = {
    "baseline": ("baseline", [], 0.15, "16e29ac50d9d35f0"),
    "l2g": ("l2g", [], 0.25, "728df0bcec88d56d"),
    "ppl": ("ppl", [], 0.15, "16e29ac50d9d35f0"),
    "pmm": ("pmm", ["method_args.crf_params={preset: pmm-binary, backend: torch}"], 0.1, "df42b42eba1b3d6e"),
    "pmm_threshold": ("pmm", ["method_args.foreground=threshold"], 0.1, "63692efde4dbaae6"),
    "smaf": ("smaf", ["method_args.crf_params={preset: smaf, backend: torch}"], 0.2, "6a916079cc0e04f8"),
    "smaf_no_crf": ("smaf", ["method_args.crf=false"], 0.2, "6b70a4e478b33fdc"),
    "tscd": ("tscd", [], 0.45, "1648e7d5c752887a"),
    "tscd_keep_ignore": ("tscd", ["method_args.pseudo_ignore=keep"], 0.45, "cbcb185895f78865"),
    "tscd_threshold": ("tscd", ["method_args.pseudo_rule=threshold"], 0.45, "e057fdc69589d824"),
}


def _old_masks(name: str) -> torch.Tensor:
    method, overrides, bg, _ = CASES[name]
    cfg = load_run_config(f"{method}_synthetic", overrides)
    m = cfg.method_class()(cfg, cfg.method_config(), C).eval()
    cams, labels, img = _inputs()
    pcfg = dataclasses.replace(cfg.pseudo, bg_score=bg)
    with torch.no_grad():
        return m.pseudo_masks(cams, labels, img, pcfg)


@pytest.mark.parametrize("name", sorted(CASES))
def test_chain_masks_equal_frozen_hash(name):
    masks = _old_masks(name)
    assert _digest(masks) == CASES[name][3]
