"""Regression: the pseudo masks of every method's packaged chain on a tiny fixed input, frozen as hashes.

The hashes were computed with the methods' own ``pseudo_masks`` rules before the rules moved into the configured
chain of `wsss_blocks.train.pipeline` (commit "Regression test: the pseudo masks of every method's rule ..."); the
chain of each synthetic preset must keep producing these exact masks. Each case loads the preset (with the chain
keys that select the old variant), feeds fixed smooth CAMs, labels and an image, and hashes the uint8 masks. The
dense CRFs run on the PyTorch backend so the hashes do not depend on whether pydensecrf is installed. ``ppl`` sets
``pseudo.refine=none``: the PPL preset now refines with IRN (its released profile), which the old rule did not.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from wsss_blocks.train.pipeline import PseudoChain
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
    assert masks.shape == (B, H, W)
    assert masks.dtype == torch.int64
    return hashlib.sha256(masks.to(torch.uint8).numpy().tobytes()).hexdigest()[:16]


# case -> (preset method, overrides of the synthetic preset, background score of the rule, frozen hash); the
# comment gives the overrides of the old method_args that made the hash
CASES: dict[str, tuple[str, list[str], float, str]] = {
    "baseline": ("baseline", [], 0.15, "16e29ac50d9d35f0"),
    "l2g": ("l2g", [], 0.25, "728df0bcec88d56d"),
    "ppl": ("ppl", ["pseudo.refine=none"], 0.15, "16e29ac50d9d35f0"),
    # method_args.crf_params={preset: pmm-binary, backend: torch}; the method's rule gave its CRF the RGB image
    "pmm": ("pmm", ["pseudo.args.ppmg.crf_params={preset: pmm-binary, backend: torch}",
                    "pseudo.args.ppmg.crf_channel_order=rgb"], 0.1, "df42b42eba1b3d6e"),
    # method_args.foreground=threshold
    "pmm_threshold": ("pmm", ["pseudo.args.ppmg.foreground=threshold"], 0.1, "63692efde4dbaae6"),
    # method_args.crf_params={preset: smaf, backend: torch}
    "smaf": ("smaf", ["pseudo.args.smaf.crf_params={preset: smaf, backend: torch}"], 0.2, "6a916079cc0e04f8"),
    # method_args.crf=false
    "smaf_no_crf": ("smaf", ["pseudo.args.smaf.crf=false"], 0.2, "6b70a4e478b33fdc"),
    "tscd": ("tscd", [], 0.45, "1648e7d5c752887a"),
    # method_args.pseudo_ignore=keep
    "tscd_keep_ignore": ("tscd", ["pseudo.args.reliable.ignore=keep"], 0.45, "cbcb185895f78865"),
    # method_args.pseudo_rule=threshold
    "tscd_threshold": ("tscd", ["pseudo.refine=none", "pseudo.rule=argmax"], 0.45, "e057fdc69589d824"),
}


def _chain_masks(name: str) -> torch.Tensor:
    method, overrides, bg, _ = CASES[name]
    cfg = load_run_config(f"{method}_synthetic", overrides)
    cams, labels, img = _inputs()
    return PseudoChain(cfg).masks(cams, labels, img, bg)


@pytest.mark.parametrize("name", sorted(CASES))
def test_chain_masks_equal_frozen_hash(name):
    masks = _chain_masks(name)
    assert _digest(masks) == CASES[name][3]
