"""The cases of the mutation test: one valid call per public callable (see ``mutation_harness``).

Conventions of the inputs: batch B = 2, C = 3 foreground classes (K = C + 1 with background), spatial size
(h, w) from the harness (8×8, and 9×7 for the ``odd`` mutation), deterministic values (seeded generators).
Run ``python tests/mutation_cases.py [NAME ...]`` for the table and the failures.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from mutation_harness import CASES, EXCLUDED, FAILURES, case, run_all, scratch, table
from torch import nn

import wsss_blocks as wb
from wsss_blocks import crf as wcrf
from wsss_blocks import data as wdata
from wsss_blocks import models as wm

__all__ = ["CASES", "EXCLUDED"]

B, C = 2, 3
K = C + 1
LABELS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _R:
    """Seeded random tensors for one inputs factory."""

    def __init__(self, seed: int = 0) -> None:
        self.g = _gen(seed)

    def u(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g)

    def n(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g)

    def probs(self, *shape: int) -> torch.Tensor:
        return torch.softmax(3 * self.n(*shape), dim=-3 if len(shape) >= 3 else -1)

    def mask(self, b: int, h: int, w: int, k: int = K, ignore: bool = True) -> torch.Tensor:
        m = torch.randint(0, k, (b, h, w), generator=self.g)
        if ignore:
            m[:, 0, 0] = 255
        return m


def _net(cin: int, cout: int, seed: int = 0, **kw: Any) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, kw.pop("k", 1), **kw).eval()


CONV_K = _net(3, C)  # a "CAM network" with C maps
CONV_K1 = _net(3, K)  # C + 1 maps


def _exclude(reason: str, *names: str) -> None:
    for n in names:
        EXCLUDED[n] = reason


# ----------------------------------------------------------------------------------------------------------
# exclusions (each with its reason)
# ----------------------------------------------------------------------------------------------------------
_exclude("a result container (dataclass/TypedDict) that blocks return; it computes nothing",
         "MultiScaleOutput", "SweepResult", "LocalPatches", "L2GOutput", "PatchLearningOutput", "CoVSmoothOutput",
         "PseudoMaskParts", "PUFOutput", "FusionOutput", "SCDOutput", "IRNCams", "AffinityTargets",
         "AffinityLossTerms", "crf.PermutohedralLattice", "models.LoadReport", "models.BackboneEntry",
         "models.WeightsEntry", "data.DataProblem", "data.DataCheckReport")
_exclude("an exception type", "models.WeightsUnavailableError", "data.DataCheckError")
_exclude("abstract engine of PixelAdaptiveRefine and VariationAwareRefine (its affinity is left to subclasses)",
         "DilatedNeighbourRefine")
_exclude("changes a process-wide registry; tested in tests/test_models.py", "models.register_backbone",
         "models.register_key_map")
_exclude("downloads or converts released weights; tested against a local HTTP server in tests/test_weights.py",
         "models.fetch_weights", "models.convert_weights", "models.resolve_weights", "models.check_run_weights")
_exclude("a process pool over crf.pydensecrf_inference (which has a case); tested in tests/test_crf.py",
         "crf.pool_map")


# ----------------------------------------------------------------------------------------------------------
# checks switch
# ----------------------------------------------------------------------------------------------------------
@case("set_checks", "checks", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"enabled": True}


@case("checks_enabled", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {}


# ----------------------------------------------------------------------------------------------------------
# CAM core
# ----------------------------------------------------------------------------------------------------------
@case("cam_from_features", batch=(), classes=(("features", 1), ("weight", 1)))
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"features": r.n(B, 5, h, w), "weight": r.n(C, 5), "bias": r.n(C)}


@case("tokens_to_map", no_mutate=())
def _(h: int, w: int) -> dict[str, Any]:
    return {"tokens": _R().n(B, 1 + h * w, 5), "image_hw": (2 * h, 2 * w), "patch_size": 2}


@case("normalize_cams", "CAMNormalize", any_rank=("cams",),
      calls={"normalize_cams": wb.normalize_cams, "CAMNormalize": lambda **kw: wb.CAMNormalize()(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"cams": _R().n(B, C, h, w)}


@case("normalize_cams[eps=0]", any_rank=("cams",), calls={"normalize_cams[eps=0]":
                                                           lambda **kw: wb.normalize_cams(**kw, eps=0.0)})
def _(h: int, w: int) -> dict[str, Any]:
    cams = _R().n(B, C, h, w)
    cams[0, 1] = 0.0  # an all-zero map
    return {"cams": cams}


@case("cams_to_mask", batch=("cams", "labels"), classes=(("cams", 1), ("labels", 1)), labels=("labels",))
def _(h: int, w: int) -> dict[str, Any]:
    return {"cams": _R().u(B, C, h, w), "labels": LABELS.clone()}


@case("multiscale_cams", "multiscale_cams_detailed", "MultiScaleCAM",
      calls={"multiscale_cams": lambda **kw: wb.multiscale_cams(CONV_K, **kw, scales=(1.0, 0.5)),
             "multiscale_cams_detailed": lambda **kw: wb.multiscale_cams_detailed(CONV_K, **kw, scales=(1.0, 0.5)),
             "MultiScaleCAM": lambda **kw: wb.MultiScaleCAM(CONV_K, scales=(1.0, 0.5))(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"images": _R().n(B, 3, h, w)}


# ----------------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------------
def _metric(**kw: Any) -> Any:
    m = wb.SegmentationMetric(K)
    m.update(**kw)
    return m.compute()


@case("confusion_matrix", "SegmentationMetric", batch=("pred", "target"), masks={"pred": K, "target": K},
      aliases={"pred": ("confmat",), "target": ("confmat",)},
      calls={"confusion_matrix": lambda **kw: wb.confusion_matrix(**kw, num_classes=K),
             "SegmentationMetric": _metric})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"pred": r.mask(B, h, w, ignore=False), "target": r.mask(B, h, w)}


@case("scores_from_confusion", bad_values={"confmat": (-1,)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"confmat": torch.tensor([[5, 1, 0, 2], [0, 4, 1, 0], [2, 0, 6, 1], [0, 1, 0, 3]])}


def _sweep(**kw: Any) -> Any:
    m = wb.BgScoreSweep(K, bg_scores=(0.1, 0.5))
    m.update(**kw)
    return m.compute()


@case("BgScoreSweep", "sweep_bg_score", batch=("cams", "labels", "target"), classes=(("cams", 1), ("labels", 1)),
      labels=("labels",), masks={"target": K}, aliases={"cams": ("confmat",)},
      calls={"BgScoreSweep": _sweep,
             "sweep_bg_score": lambda cams, labels, target: wb.sweep_bg_score((cams, labels, target), K, (0.1, 0.5))})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"cams": r.u(B, C, h, w), "labels": LABELS.clone(), "target": r.mask(B, h, w)}


def _coverage(**kw: Any) -> Any:
    m = wb.RegionCoverage(3)
    m.update(**kw)
    return m.compute()


@case("region_coverage_counts", "RegionCoverage", batch=("pred_mask", "target_mask", "region_mask"),
      bad_values={"pred_mask": (-1,), "target_mask": (-1,)}, masks={"region_mask": 3},
      calls={"region_coverage_counts": lambda **kw: wb.region_coverage_counts(**kw, num_regions=3),
             "RegionCoverage": _coverage})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"pred_mask": r.mask(B, h, w, ignore=False), "target_mask": r.mask(B, h, w),
            "region_mask": r.mask(B, h, w, k=3, ignore=False)}


def _boundary(**kw: Any) -> Any:
    m = wb.BoundaryMetric(K, tolerance=1)
    m.update(**kw)
    return m.compute()


@case("boundary_counts", batch=("pred_mask", "target_mask"), bad_values={"pred_mask": (-1,), "target_mask": (-1,)},
      calls={"boundary_counts": lambda **kw: wb.boundary_counts(**kw, tolerance=1)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"pred_mask": r.mask(B, h, w, ignore=False), "target_mask": r.mask(B, h, w)}


@case("BoundaryMetric", batch=("pred_mask", "target_mask"), masks={"pred_mask": K, "target_mask": K},
      calls={"BoundaryMetric": _boundary})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"pred_mask": r.mask(B, h, w, ignore=False), "target_mask": r.mask(B, h, w)}


@case("label_boundaries", "boundary_band", bad_values={"mask": (-1,)}, any_rank=("mask",),
      calls={"label_boundaries": lambda **kw: wb.label_boundaries(**kw),
             "boundary_band": lambda **kw: wb.boundary_band(**kw, width=1)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"mask": _R().mask(B, h, w)}


# ----------------------------------------------------------------------------------------------------------
# dense CRF
# ----------------------------------------------------------------------------------------------------------
@case("dense_crf", "DenseCRF", batch=("image01", "probs"),
      calls={"dense_crf": lambda **kw: wb.dense_crf(**kw, iterations=3),
             "DenseCRF": lambda **kw: wb.DenseCRF(iterations=3)(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"image01": r.u(B, 3, h, w), "probs": r.probs(B, K, h, w)}


@case("dense_crf[image_uint8]", batch=("image_uint8", "probs"),
      calls={"dense_crf[image_uint8]": lambda **kw: wb.dense_crf(None, **kw, iterations=3)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"image_uint8": (255 * r.u(B, h, w, 3)).to(torch.uint8), "probs": r.probs(B, K, h, w)}


@case("dense_crf[torch]", batch=("image01", "probs"),
      calls={"dense_crf[torch]": lambda **kw: wb.dense_crf(**kw, iterations=3, backend="torch")})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"image01": r.u(B, 3, h, w), "probs": r.probs(B, K, h, w)}


@case("dense_crf_from_unary", batch=("image01", "unary"),
      calls={"dense_crf_from_unary": lambda **kw: wb.dense_crf_from_unary(**kw, iterations=3)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"image01": r.u(B, 3, h, w), "unary": 3 * r.u(B, K, h, w)}


@case("unary_from_probs", any_rank=("probs",))
def _(h: int, w: int) -> dict[str, Any]:
    return {"probs": _R().probs(B, K, h, w)}


@case("unary_from_mask", masks={"mask": K}, calls={"unary_from_mask": lambda **kw: wb.unary_from_mask(**kw,
                                                                                                    num_classes=K)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"mask": _R().mask(B, h, w, ignore=False)}


@case("resolve_backend", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"backend": "auto", "device": "cpu"}


@case("as_dense_crf", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"crf": {"preset": "irn", "bi_xy": 40.0}}


# ----------------------------------------------------------------------------------------------------------
# operations
# ----------------------------------------------------------------------------------------------------------
@case("roi_align", bad_values={"boxes": (-1, 0.5, 2)},
      calls={"roi_align": lambda **kw: wb.roi_align(**kw, output_size=2)})
def _(h: int, w: int) -> dict[str, Any]:
    boxes = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 2.0, 5.0, 6.0]])
    return {"features": _R().n(B, C, h, w), "boxes": boxes}


@case("boxes_from_mask")
def _(h: int, w: int) -> dict[str, Any]:
    m = torch.zeros(B, h, w, dtype=torch.bool)
    m[0, 1:4, 2:5] = True
    m[1, 2:, :3] = True
    return {"mask": m}


# ----------------------------------------------------------------------------------------------------------
# L2G (stride 2, 4-pixel patches: local maps 2×2, global map h/2 × w/2)
# ----------------------------------------------------------------------------------------------------------
@case("sample_patch_boxes", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"batch_size": B, "image_hw": (h, w), "num_patches": 5, "patch_size": 4, "generator": _gen()}


BOXES = torch.tensor([[[0, 0, 4, 4], [4, 4, 8, 8]], [[0, 4, 4, 8], [2, 2, 6, 6]]])


@case("crop_local_patches", batch=("images", "boxes", "labels", "saliency"), labels=("labels",),
      bad_values={"boxes": (-1, 100)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"images": r.n(B, 3, h, w), "boxes": BOXES.clone(), "labels": LABELS.clone(),
            "saliency": r.u(B, 1, h, w)}


@case("boxes_to_roi_format")
def _(h: int, w: int) -> dict[str, Any]:
    return {"boxes": BOXES.clone()}


@case("LocalPatchSampler", batch=("images", "labels", "saliency"), labels=("labels",),
      calls={"LocalPatchSampler": lambda **kw: wb.LocalPatchSampler(num_patches=5, patch_size=4,
                                                                    generator=_gen())(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"images": r.n(B, 3, h, w), "labels": LABELS.clone(), "saliency": r.u(B, 1, h, w)}


def _l2g_inputs(h: int, w: int, target_only: bool = False) -> dict[str, Any]:
    r = _R()
    out = {"local_cams": r.n(B * 2, K, 2, 2), "boxes": BOXES.clone(), "labels": LABELS.clone(),
           "patch_saliency": r.u(B * 2, 1, 4, 4)}
    if not target_only:
        out = {"global_logits": r.n(B, K, h // 2, w // 2), **out}
    return out


_L2G = {"labels": ("labels",), "batch": ("global_logits", "labels"),
        "classes": (("global_logits", 1), ("local_cams", 1)), "bad_values": {"boxes": (-1,)}}


@case("l2g_target", labels=("labels",), bad_values={"boxes": (-1,)},
      calls={"l2g_target": lambda **kw: wb.l2g_target(**kw, stride=2)})
def _(h: int, w: int) -> dict[str, Any]:
    return _l2g_inputs(h, w, target_only=True)


@case("l2g_transfer", "l2g_loss", "LocalToGlobalTransfer", **_L2G,
      calls={"l2g_transfer": lambda **kw: wb.l2g_transfer(**kw, stride=2),
             "l2g_loss": lambda **kw: wb.l2g_loss(**kw, stride=2),
             "LocalToGlobalTransfer": lambda **kw: wb.LocalToGlobalTransfer(C, stride=2)(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    return _l2g_inputs(h, w)


# ----------------------------------------------------------------------------------------------------------
# PPL / Puzzle-CAM
# ----------------------------------------------------------------------------------------------------------
# split/merge/tile only move values: NaN passes through them, as through any layer (nan_ok)
@case("split_patches", nan_ok=("x",))
def _(h: int, w: int) -> dict[str, Any]:
    return {"x": _R().n(B, 3, h, w)}


@case("tile_images", nan_ok=("images",))
def _(h: int, w: int) -> dict[str, Any]:
    return {"images": _R().n(B, 3, h, w)}


@case("merge_patches", nan_ok=("patches",), calls={"merge_patches": lambda **kw: wb.merge_patches(**kw, batch=B)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"patches": _R().n(4 * B, 3, h, w)}


@case("PatchDestruction", nan_ok=("x",),
      calls={"PatchDestruction": lambda **kw: wb.PatchDestruction(grid=2)(**kw, fn=lambda t: t[..., ::2, ::2])})
def _(h: int, w: int) -> dict[str, Any]:
    return {"x": _R().n(B, 3, h, w)}


def _stages() -> list[nn.Module]:
    torch.manual_seed(0)
    return [nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 16, 3, 2, 1)]


@case("patch_learning", size=(16, 16), odd_size=(17, 15),
      calls={"patch_learning": lambda **kw: wb.patch_learning(_stages(), **kw, insert_after=1)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"images": r.n(B, 3, h, w), "classifier_weight": r.n(5, 32)}


@case("PatchLearning", size=(16, 16), odd_size=(17, 15),
      calls={"PatchLearning": lambda **kw: _seeded(lambda: wb.PatchLearning(_stages(), insert_after=1,
                                                                              num_classes=5, feat_dim=16))(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"images": _R().n(B, 3, h, w)}


def _seeded(make: Callable[[], Any]) -> Any:
    torch.manual_seed(0)
    return make()


@case("backbone_stages", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    net = nn.Module()
    net.stem, net.stages = nn.Conv2d(3, 8, 2, 2), nn.Sequential(nn.Identity(), nn.Identity())
    return {"model": net}


@case("StageSpec", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"insert_after": 1, "grid": 2}


@case("ProgressiveSchedule", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"stages": [2, 3], "epochs_per_stage": 2}


@case("puzzle_reconstruction_loss", "PuzzleReconstructionLoss", batch=("cams", "merged_cams", "labels"),
      classes=(("cams", 1), ("merged_cams", 1), ("labels", 1)), labels=("labels",),
      calls={"PuzzleReconstructionLoss": lambda **kw: wb.PuzzleReconstructionLoss()(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"cams": r.n(B, C, h, w), "merged_cams": r.n(B, C, h, w), "labels": LABELS.clone()}


@case("puzzle_alpha", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"step": 25, "max_step": 100, "alpha": 4.0}


# ----------------------------------------------------------------------------------------------------------
# PMM
# ----------------------------------------------------------------------------------------------------------
@case("cov_smooth", "cov_smooth_detailed", "CoVSmooth", any_rank=("cams",),
      calls={"CoVSmooth": lambda **kw: wb.CoVSmooth()(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"cams": _R().u(B, C, h, w)}


def _ppmg_detailed(**kw: Any) -> Any:
    parts = wb.proportional_pseudo_mask_detailed(**kw)
    # the scores of absent classes are -inf by design (documented): they never win the argmax
    return dataclasses.replace(parts, scores=parts.scores.clamp_min(-1e30))


@case("proportional_pseudo_mask", "proportional_pseudo_mask_detailed", "ProportionalPseudoMask",
      batch=("cams", "labels", "image01"), classes=(("cams", 1), ("labels", 1)), labels=("labels",),
      calls={"ProportionalPseudoMask": lambda **kw: wb.ProportionalPseudoMask()(**kw),
             "proportional_pseudo_mask_detailed": _ppmg_detailed})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"cams": r.u(B, C, h, w), "labels": LABELS.clone(), "image01": r.u(B, 3, h, w)}


@case("CyclicPseudoMask", batch=("image01", "labels"), labels=("labels",),
      calls={"CyclicPseudoMask": lambda **kw: wb.CyclicPseudoMask(scales=(1.0, 0.5), img_scale=None, slide=None,
                                                                  crf=None, policy="restrict")(CONV_K1, **kw)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"image01": _R().u(B, 3, h, w), "labels": LABELS.clone()}


@case("multi_crop_boxes", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"height": 40, "width": 50, "scales": (1.0, 2.0), "crop_size": 32, "stride": 24}


@case("tile_labels", classes=(("rough_probs", 0), ("labels", 0)), labels=("labels",), any_rank=("labels",),
      calls={"tile_labels": lambda **kw: wb.tile_labels(**kw, boxes=[(0, 0, 4, 4), (2, 2, 6, 7)])})
def _(h: int, w: int) -> dict[str, Any]:
    return {"rough_probs": _R().probs(K, h, w), "labels": torch.tensor([1.0, 0.0, 1.0])}


@case("sample_multi_crop_tile", classes=(("rough_probs", 0), ("labels", 0)), labels=("labels",), any_rank=("labels",),
      calls={"sample_multi_crop_tile": lambda **kw: wb.sample_multi_crop_tile(**kw, scales=(1.0,), crop_size=6,
                                                                              stride=4, generator=_gen())})
def _(h: int, w: int) -> dict[str, Any]:
    return {"rough_probs": _R().probs(K, h, w), "labels": torch.tensor([1.0, 0.0, 1.0])}


@case("multi_crop_cams", "MultiCropCAM", batch=("images", "labels"), labels=("labels",),
      calls={"multi_crop_cams": lambda **kw: wb.multi_crop_cams(CONV_K, **kw, scales=(1.0,), crop_size=6, stride=4),
             "MultiCropCAM": lambda **kw: wb.MultiCropCAM(CONV_K, scales=(1.0,), crop_size=6, stride=4)(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"images": _R().n(B, 3, h, w), "labels": LABELS.clone()}


@case("rough_mask_cams", batch=("images", "labels"), labels=("labels",),
      calls={"rough_mask_cams": lambda **kw: wb.rough_mask_cams(CONV_K, **kw, scales=(1.0, 0.5))})
def _(h: int, w: int) -> dict[str, Any]:
    return {"images": _R().n(B, 3, h, w), "labels": LABELS.clone()}


@case("rough_masks", batch=("cams", "labels", "image01"), classes=(("cams", 1), ("labels", 1)), labels=("labels",),
      calls={"rough_masks": lambda **kw: wb.rough_masks(**kw, crf={"preset": "psa", "backend": "torch",
                                                                    "iterations": 2})})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"cams": r.u(B, C, h, w), "labels": LABELS.clone(), "image01": r.u(B, 3, h, w)}


# ----------------------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------------------
@case("pretended_underfitting_loss", "pretended_underfitting_loss_detailed", "PretendedUnderFittingLoss",
      "balanced_seg_loss", "BalancedSegLoss", batch=("logits", "target"), masks={"target": K},
      calls={"PretendedUnderFittingLoss": lambda **kw: wb.PretendedUnderFittingLoss()(**kw),
             "BalancedSegLoss": lambda **kw: wb.BalancedSegLoss()(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"logits": r.n(B, K, h, w), "target": r.mask(B, h, w)}


@case("adaptive_min_pooling_loss", "AdaptiveMinPoolingLoss",
      calls={"AdaptiveMinPoolingLoss": lambda **kw: wb.AdaptiveMinPoolingLoss()(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"cams": _R().n(B, C, h, w)}


@case("dense_energy_loss", "DenseEnergyLoss", batch=("probs", "image01", "target", "valid_mask"),
      masks={"target": K}, calls={"DenseEnergyLoss": lambda **kw: wb.DenseEnergyLoss()(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    valid = torch.ones(B, h, w, dtype=torch.bool)
    valid[:, -1] = False
    return {"probs": r.probs(B, K, h, w), "image01": r.u(B, 3, h, w), "target": r.mask(B, h, w),
            "valid_mask": valid}


@case("eps_saliency_loss", "EPSSaliencyLoss", batch=("cam_logits", "saliency", "labels"), labels=("labels",),
      calls={"EPSSaliencyLoss": lambda **kw: wb.EPSSaliencyLoss()(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"cam_logits": r.n(B, K, h // 2, w // 2), "saliency": r.u(B, 1, h, w), "labels": LABELS.clone()}


# ----------------------------------------------------------------------------------------------------------
# SMAF
# ----------------------------------------------------------------------------------------------------------
@case("multiscale_attention_fusion", "multiscale_attention_fusion_detailed", "MultiScaleAttentionFusion",
      batch=("images", "labels"), labels=("labels",),
      calls={"multiscale_attention_fusion":
             lambda **kw: wb.multiscale_attention_fusion(CONV_K1, **kw, scales=(1.0, 0.5)),
             "multiscale_attention_fusion_detailed":
             lambda **kw: wb.multiscale_attention_fusion_detailed(CONV_K1, **kw, scales=(1.0, 0.5)),
             "MultiScaleAttentionFusion": lambda **kw: wb.MultiScaleAttentionFusion(scales=(1.0, 0.5))(CONV_K1, **kw)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"images": _R().n(B, 3, h, w), "labels": LABELS.clone()}


@case("denoise", "smaf_target", "smaf_pseudo_mask", batch=("maps", "labels"), classes=(("maps", 1), ("labels", 1)),
      labels=("labels",))
def _(h: int, w: int) -> dict[str, Any]:
    return {"maps": _R().u(B, C, h, w), "labels": LABELS.clone()}


@case("reactivate")
def _(h: int, w: int) -> dict[str, Any]:
    return {"scores": _R().u(B, K, h, w)}


@case("smaf_loss", "SMAFLoss", batch=("student_logits", "target"),
      classes=(("student_logits", 1), ("target", 1)), calls={"SMAFLoss": lambda **kw: wb.SMAFLoss()(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"student_logits": r.n(B, K, h // 2, w // 2), "target": wb.smaf_target(r.u(B, C, h, w), LABELS)}


# ----------------------------------------------------------------------------------------------------------
# SCD / TSCD / AFA
# ----------------------------------------------------------------------------------------------------------
@case("scd_weight", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"iteration": 2500}


@case("sample_points", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"batch": B, "num_samples": 4, "generator": _gen()}


@case("self_correspondence_loss", "self_correspondence_loss_detailed", "SelfCorrespondenceDistillation",
      batch=("teacher_a", "teacher_b", "student_a", "student_b"),
      calls={"self_correspondence_loss": lambda **kw: wb.self_correspondence_loss(**kw, num_samples=4,
                                                                                  generator=_gen()),
             "self_correspondence_loss_detailed":
             lambda **kw: wb.self_correspondence_loss_detailed(**kw, num_samples=4, generator=_gen()),
             "SelfCorrespondenceDistillation":
             lambda **kw: wb.SelfCorrespondenceDistillation(num_samples=4)(**kw, generator=_gen())})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"teacher_a": r.u(B, C, h, w), "teacher_b": r.u(B, C, 5, 5), "student_a": r.n(B, K, h, w),
            "student_b": r.n(B, K, 5, 5)}


@case("equivariant_regularization", batch=("cams", "cams_small"), classes=(("cams", 1), ("cams_small", 1)))
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"cams": r.u(B, K, h, w), "cams_small": r.u(B, K, 4, 4)}


@case("radius_mask", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"h": 3, "w": 4, "radius": 1}


@case("attention_affinity_targets", bad_values={"pseudo_mask": (-1,)},
      calls={"attention_affinity_targets": lambda **kw: wb.attention_affinity_targets(**kw, radius=1, stride=2)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"pseudo_mask": _R().mask(B, h, w)}


@case("affinity_from_attention_loss", "AffinityFromAttentionLoss", batch=("aff_pred", "pseudo_mask"),
      bad_values={"pseudo_mask": (-1,)},
      calls={"affinity_from_attention_loss": lambda **kw: wb.affinity_from_attention_loss(**kw, radius=1, stride=2),
             "AffinityFromAttentionLoss": lambda **kw: wb.AffinityFromAttentionLoss(radius=1, stride=2)(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    n = (h // 2) * (w // 2)
    return {"aff_pred": r.u(B, n, n), "pseudo_mask": r.mask(B, h, w)}


# ----------------------------------------------------------------------------------------------------------
# refiners and dilated-neighbour propagation
# ----------------------------------------------------------------------------------------------------------
_REF = {"dilations": (1, 2), "num_iter": 2}


@case("pixel_adaptive_refine", "variation_aware_refine", "PixelAdaptiveRefine", "VariationAwareRefine",
      "refine_maps", batch=("image01", "maps"),
      calls={"pixel_adaptive_refine": lambda **kw: wb.pixel_adaptive_refine(**kw, **_REF),
             "variation_aware_refine": lambda **kw: wb.variation_aware_refine(**kw, **_REF),
             "PixelAdaptiveRefine": lambda **kw: wb.PixelAdaptiveRefine(**_REF)(**kw),
             "VariationAwareRefine": lambda **kw: wb.VariationAwareRefine(**_REF)(**kw),
             "refine_maps": lambda **kw: wb.refine_maps(**kw, **_REF)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"image01": r.u(B, 3, h, w), "maps": r.probs(B, K, h, w)}


@case("reliable_pseudo_mask", batch=("image01", "cams", "labels", "boxes"), classes=(("cams", 1), ("labels", 1)),
      labels=("labels",), bad_values={"boxes": (0.5,)},
      calls={"reliable_pseudo_mask": lambda **kw: wb.reliable_pseudo_mask(wb.VariationAwareRefine(**_REF), **kw)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"image01": r.u(B, 3, h, w), "cams": r.u(B, C, h, w), "labels": LABELS.clone(),
            "boxes": torch.tensor([[0, 0, w, h], [1, 2, w - 1, h - 2]])}


@case("neighbour_offsets", "path_offsets", odd_size=None,
      calls={"path_offsets": lambda dilations: wb.path_offsets(2)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"dilations": (1, 2)}


@case("dilated_neighbours", nan_ok=("x",), calls={"dilated_neighbours": lambda **kw: wb.dilated_neighbours(**kw,
                                                                                                         dilations=(1,))})
def _(h: int, w: int) -> dict[str, Any]:
    return {"x": _R().n(B, C, h, w)}


@case("refine_affinity", calls={"refine_affinity": lambda **kw: wb.refine_affinity(**kw, dilations=(1, 2))})
def _(h: int, w: int) -> dict[str, Any]:
    return {"image01": _R().u(B, 3, h, w)}


@case("propagate", batch=("maps", "affinity"),
      calls={"propagate": lambda **kw: wb.propagate(**kw, dilations=(1,), num_iter=2)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    aff = r.u(B, 8, h, w)
    return {"maps": r.u(B, C, h, w), "affinity": aff / aff.sum(1, keepdim=True)}


# ----------------------------------------------------------------------------------------------------------
# IRN
# ----------------------------------------------------------------------------------------------------------
@case("PathIndex", "path_index", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"radius": 2, "size": (6, 7)}


@case("strided_size", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"size": (9, 7), "stride": 4}


CONV_S16 = _net(3, C, k=3, stride=16, padding=1)


@case("irn_multiscale_cams", batch=("images", "labels"), labels=("labels",), size=(32, 32), odd_size=(33, 29),
      calls={"irn_multiscale_cams": lambda **kw: wb.irn_multiscale_cams(CONV_S16, **kw, scales=(1.0, 0.5))})
def _(h: int, w: int) -> dict[str, Any]:
    return {"images": _R().n(B, 3, h, w), "labels": LABELS.clone()}


@case("confident_seed_mask", "ConfidentSeedMask", batch=("cams", "labels", "image01"),
      classes=(("cams", 1), ("labels", 1)), labels=("labels",),
      calls={"confident_seed_mask": lambda **kw: wb.confident_seed_mask(**kw, crf={"preset": "irn",
                                                                                  "iterations": 2}),
             "ConfidentSeedMask": lambda **kw: wb.ConfidentSeedMask(crf={"preset": "irn", "iterations": 2})(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"cams": r.u(B, C, h, w), "labels": LABELS.clone(), "image01": r.u(B, 3, h, w)}


@case("downsample_mask", calls={"downsample_mask": lambda **kw: wb.downsample_mask(**kw, scale_factor=0.5)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"mask": _R().mask(B, h, w)}


@case("affinity_targets", bad_values={"seed_mask": (-1,)},
      calls={"affinity_targets": lambda **kw: wb.affinity_targets(**kw, radius=2)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"seed_mask": _R().mask(B, h, w)}


@case("boundary_to_affinity", any_rank=("boundary",),
      calls={"boundary_to_affinity": lambda **kw: wb.boundary_to_affinity(**kw, radius=2)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"boundary": _R().u(B, 1, h, w)}


@case("boundary_affinity_loss", "boundary_affinity_loss_detailed", "BoundaryAffinityLoss",
      batch=("boundary_logits", "targets"), bad_values={"targets": (-1,)},
      calls={"boundary_affinity_loss": lambda **kw: wb.boundary_affinity_loss(**kw, radius=2),
             "boundary_affinity_loss_detailed": lambda **kw: wb.boundary_affinity_loss_detailed(**kw, radius=2),
             "BoundaryAffinityLoss": lambda **kw: wb.BoundaryAffinityLoss(radius=2)(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"boundary_logits": r.n(B, 1, h, w), "targets": r.mask(B, h, w)}


@case("random_walk", batch=("cams", "boundary", "labels"), classes=(("cams", 1), ("labels", 1)), labels=("labels",),
      calls={"random_walk": lambda **kw: wb.random_walk(**kw, radius=2, exp_times=2)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"cams": r.u(B, C, h, w), "boundary": r.u(B, 1, h, w), "labels": LABELS.clone()}


@case("RandomWalk", batch=("cams", "boundary", "labels"), classes=(("cams", 1), ("labels", 1)), labels=("labels",),
      calls={"RandomWalk": lambda **kw: wb.RandomWalk(radius=2, exp_times=2)(**kw)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"cams": r.u(B, C, h, w), "boundary": r.u(B, 1, h, w), "labels": LABELS.clone()}


@case("random_walk_mask", batch=("walked", "labels"), classes=(("walked", 1), ("labels", 1)), labels=("labels",),
      calls={"random_walk_mask": lambda **kw: wb.random_walk_mask(**kw, scale_factor=1.0)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"walked": _R().u(B, C, h, w), "labels": LABELS.clone()}


# ----------------------------------------------------------------------------------------------------------
# visualisation
# ----------------------------------------------------------------------------------------------------------
@case("colorize_mask", bad_values={"mask": (-1, 256)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"mask": _R().mask(1, h, w)[0].numpy()}


@case("heatmap")
def _(h: int, w: int) -> dict[str, Any]:
    return {"cam": _R().u(h, w).numpy()}


@case("cam_overlay")
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"image01": r.u(3, h, w), "cam": r.u(h // 2, w // 2)}


@case("image_grid", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"rows": [[np.zeros((h, w, 3), np.uint8), np.full((h, w, 3), 7, np.uint8)]]}


@case("to_uint8_image")
def _(h: int, w: int) -> dict[str, Any]:
    return {"image01": _R().u(3, h, w)}


@case("save_cam_overlays", batch=("images01", "cams", "labels", "masks"), classes=(("cams", 1), ("labels", 1)),
      labels=("labels",), masks={"masks": K},
      calls={"save_cam_overlays": lambda **kw: wb.save_cam_overlays(scratch() / "overlay.png", **kw)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"images01": r.u(B, 3, h, w), "cams": r.u(B, C, h, w), "labels": LABELS.clone(), "masks": r.mask(B, h, w)}


def _plot(**kw: Any) -> Any:
    log = scratch() / "log.jsonl"
    log.write_text("\n".join(json.dumps({"step": i, "loss": 1.0 / (i + 1)}) for i in range(5)) + "\n")
    return wb.plot_curves(log, scratch() / "curves.png", **kw)


@case("plot_curves", odd_size=None, calls={"plot_curves": _plot})
def _(h: int, w: int) -> dict[str, Any]:
    return {"title": "t"}


# ----------------------------------------------------------------------------------------------------------
# wsss_blocks.crf internals
# ----------------------------------------------------------------------------------------------------------
def _lattice() -> Any:
    f = _R(1).u(4 * 5, 3) * 4
    return wcrf.build_lattice(f)


@case("crf.build_lattice", any_rank=("features",))
def _(h: int, w: int) -> dict[str, Any]:
    return {"features": _R().u(h * w, 3) * 4}


@case("crf.lattice_filter", odd_size=None, calls={"crf.lattice_filter": lambda **kw: wcrf.lattice_filter(_lattice(),
                                                                                                         **kw)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"values": _R().u(20, K)}


@case("crf.PairwiseOperator", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"lattices": [_lattice()], "weights": [3.0]}


@case("crf.mean_field", odd_size=None,
      calls={"crf.mean_field": lambda **kw: wcrf.mean_field(**kw, operator=wcrf.PairwiseOperator([_lattice()], [3.0]),
                                                            iterations=3)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"unary": 3 * _R().u(20, K)}


@case("crf.pydensecrf_available", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {}


@case("crf.pydensecrf_inference",
      calls={"crf.pydensecrf_inference": lambda **kw: wcrf.pydensecrf_inference(**kw, iterations=3)})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"image": (255 * r.u(h, w, 3)).to(torch.uint8).numpy(), "unary": (3 * r.u(K, h, w)).numpy()}


# ----------------------------------------------------------------------------------------------------------
# wsss_blocks.data
# ----------------------------------------------------------------------------------------------------------
_VOC: list[Any] = []


def _voc_root() -> Any:
    if not _VOC:
        _VOC.append(wdata.make_synthetic_voc(scratch() / "voc", num_train=2, num_val=1, image_size=16,
                                             num_classes=C))
    return _VOC[0]


@case("data.VOCSegmentation", odd_size=None,
      calls={"data.VOCSegmentation": lambda **kw: wdata.VOCSegmentation(_voc_root(), **kw)[0]})
def _(h: int, w: int) -> dict[str, Any]:
    return {"split": "val", "labels_file": "cls_labels.npy"}


def _coco_root() -> Any:
    root = scratch() / "coco"
    if not root.is_dir():
        wdata.save_image(root / "JPEGImages/val2014/a.jpg", np.zeros((8, 8, 3), np.uint8))
        wdata.save_label_png(root / "SegmentationClass/val2014/a.png", np.full((8, 8), 90, np.uint8), palette=False)
    return root


@case("data.COCOSegmentation", odd_size=None,
      calls={"data.COCOSegmentation": lambda **kw: wdata.COCOSegmentation(_coco_root(), **kw)[0]})
def _(h: int, w: int) -> dict[str, Any]:
    return {"split": "val", "raw_category_ids": True}


@case("data.coco_id_to_contiguous", any_rank=("ids",), bad_values={"ids": (-1, 12)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"ids": torch.tensor([[1, 90], [0, 44], [255, 2]])}


@case("data.contiguous_to_coco_id", any_rank=("values",), bad_values={"values": (-1, 81)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"values": torch.tensor([[1, 80], [0, 40], [255, 2]])}


def _atomic(**kw: Any) -> Any:
    with wdata.atomic_write(scratch() / "atomic.txt", **kw) as f:
        f.write("x\n")
    return (scratch() / "atomic.txt").read_text()


@case("data.atomic_write", odd_size=None, calls={"data.atomic_write": _atomic})
def _(h: int, w: int) -> dict[str, Any]:
    return {"mode": "w"}


def _image_file() -> Any:
    p = scratch() / "img.png"
    if not p.exists():
        wdata.save_image(p, (255 * _R().u(6, 5, 3)).to(torch.uint8).numpy())
    return p


def _label_file() -> Any:
    p = scratch() / "label.png"
    if not p.exists():
        wdata.save_label_png(p, _R().mask(1, 6, 5)[0].to(torch.uint8).numpy())
    return p


@case("data.load_image", odd_size=None, calls={"data.load_image": lambda: wdata.load_image(_image_file())})
def _(h: int, w: int) -> dict[str, Any]:
    return {}


@case("data.load_label_png", odd_size=None,
      calls={"data.load_label_png": lambda: wdata.load_label_png(_label_file())})
def _(h: int, w: int) -> dict[str, Any]:
    return {}


@case("data.save_image", any_rank=("array",),
      calls={"data.save_image": lambda **kw: (wdata.save_image(scratch() / "out.png", **kw),
                                              wdata.load_image(scratch() / "out.png"))[1]})
def _(h: int, w: int) -> dict[str, Any]:
    return {"array": (255 * _R().u(h, w, 3)).to(torch.uint8)}


@case("data.save_label_png", bad_values={"mask": (-1, 256)},
      calls={"data.save_label_png": lambda **kw: (wdata.save_label_png(scratch() / "out_label.png", **kw),
                                                  wdata.load_label_png(scratch() / "out_label.png"))[1]})
def _(h: int, w: int) -> dict[str, Any]:
    return {"mask": _R().mask(1, h, w)[0]}


@case("data.voc_palette", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"num_colors": 256}


@case("data.make_synthetic_voc", odd_size=None,
      calls={"data.make_synthetic_voc": lambda **kw: wdata.make_synthetic_voc(scratch() / "synth", **kw)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"num_train": 1, "num_val": 1, "image_size": 16, "num_classes": C}


@case("data.render_synthetic_sample", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"rng": np.random.default_rng(0), "image_size": 16, "num_classes": C}


@case("data.synthetic_class_names", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"num_classes": C}


def _transform(make: Callable[[], Any]) -> Callable[..., Any]:
    def call(image: torch.Tensor, mask: torch.Tensor, saliency: torch.Tensor) -> Any:
        return make()({"image": image, "mask": mask, "saliency": saliency}, generator=_gen())
    return call


_TRANSFORMS: dict[str, Callable[[], Any]] = {
    "data.ColorJitter": lambda: wdata.ColorJitter(),
    "data.Compose": lambda: wdata.Compose([wdata.RandomHorizontalFlip(p=1.0), wdata.RandomCrop(6)]),
    "data.Normalize": lambda: wdata.Normalize(),
    "data.RandomCrop": lambda: wdata.RandomCrop(6),
    "data.RandomHorizontalFlip": lambda: wdata.RandomHorizontalFlip(p=1.0),
    "data.RandomRescale": lambda: wdata.RandomRescale(scales=[1.5]),
    "data.RandomResizeLong": lambda: wdata.RandomResizeLong(10, 12),
    "data.RandomResizeShort": lambda: wdata.RandomResizeShort(10, 12),
    "data.Resize": lambda: wdata.Resize((6, 5)),
    "data.RecordGeometry": lambda: wdata.Compose([wdata.RecordGeometry(), wdata.RandomCrop(6)]),
}


@case(*_TRANSFORMS, bad_values={"mask": (-1,)}, any_rank=("image",),
      calls={n: _transform(m) for n, m in _TRANSFORMS.items()})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"image": r.u(3, h, w), "mask": r.mask(1, h, w)[0], "saliency": r.u(1, h, w)}



def _geometry(**kw: Any) -> Any:
    x = kw["x"]
    return wdata.apply_geometry(**kw, geom=torch.tensor([x.shape[-2], x.shape[-1], 8, 8, 1, -1, 0, 6, 5]))


@case("data.apply_geometry", any_rank=("x",), nan_ok=("x",), calls={"data.apply_geometry": _geometry})
def _(h: int, w: int) -> dict[str, Any]:
    return {"x": _R().u(2, h, w)}


@case("data.identity_geometry", any_rank=("image",), nan_ok=("image",))
def _(h: int, w: int) -> dict[str, Any]:
    return {"image": _R().u(3, h, w)}


@case("data.sample_generator", odd_size=None,
      calls={"data.sample_generator": lambda **kw: torch.rand(2, generator=wdata.sample_generator(**kw))})
def _(h: int, w: int) -> dict[str, Any]:
    return {"seed": 0, "index": 5, "epoch": 1}


@case("data.class_names_file", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"dataset": "voc"}


@case("data.derive_train_aug", odd_size=None,
      calls={"data.derive_train_aug": lambda **kw: wdata.derive_train_aug(_voc_root(), **kw)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"mask_dir": "SegmentationClassAug"}


def _xml() -> Any:
    p = scratch() / "a.xml"
    p.write_text("<annotation><object><name>dog</name></object><object><name>person</name></object></annotation>")
    return p


@case("data.labels_from_annotation", odd_size=None,
      calls={"data.labels_from_annotation": lambda: wdata.labels_from_annotation(_xml())})
def _(h: int, w: int) -> dict[str, Any]:
    return {}


@case("data.labels_from_mask", masks={"mask": K}, bad_values={"mask": (1.7,)},
      calls={"data.labels_from_mask": lambda **kw: wdata.labels_from_mask(**kw, num_classes=C)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"mask": _R().mask(1, h, w)[0].numpy()}


def _cls_labels() -> Any:
    p = scratch() / "cls_labels.npy"
    wdata.save_cls_labels(p, {"a": np.array([1.0, 0.0, 1.0], np.float32)})
    return p


@case("data.save_cls_labels", "data.load_cls_labels", odd_size=None,
      calls={"data.save_cls_labels": lambda: _cls_labels(),
             "data.load_cls_labels": lambda: wdata.load_cls_labels(_cls_labels(), num_classes=C)})
def _(h: int, w: int) -> dict[str, Any]:
    return {}


@case("data.write_split_list", "data.read_split_list", odd_size=None,
      calls={"data.write_split_list": lambda: wdata.write_split_list(scratch() / "s.txt", ["a", "b"]),
             "data.read_split_list": lambda: wdata.read_split_list(wdata.write_split_list(scratch() / "s.txt",
                                                                                           ["a", "b"]))})
def _(h: int, w: int) -> dict[str, Any]:
    return {}


@case("data.dataset_files", odd_size=None,
      calls={"data.dataset_files": lambda: wdata.dataset_files(wdata.VOCSegmentation(_voc_root(), "val",
                                                                                     labels_file="cls_labels.npy"))})
def _(h: int, w: int) -> dict[str, Any]:
    return {}


@case("data.check_data_files", "data.SampleFiles", odd_size=None,
      calls={"data.check_data_files": lambda: wdata.check_data_files(
          [wdata.SampleFiles(_image_file(), _label_file())], num_classes=C, progress=False).problems,
             "data.SampleFiles": lambda: wdata.SampleFiles(_image_file(), _label_file())})
def _(h: int, w: int) -> dict[str, Any]:
    return {}


@case("data.check_data_root", odd_size=None,
      calls={"data.check_data_root": lambda: wdata.check_data_root(_voc_root(), splits=("val",),
                                                                   progress=False).files})
def _(h: int, w: int) -> dict[str, Any]:
    return {}


# ----------------------------------------------------------------------------------------------------------
# wsss_blocks.models: networks on tiny configurations (NaN in the input propagates, as in any nn.Module)
# ----------------------------------------------------------------------------------------------------------
_NETS: dict[str, Any] = {}


def _model(key: str, make: Callable[[], nn.Module]) -> nn.Module:
    if key not in _NETS:
        torch.manual_seed(0)
        _NETS[key] = make().eval()
    return _NETS[key]  # type: ignore[no-any-return]


def _forward(key: str, make: Callable[[], nn.Module]) -> Callable[..., Any]:
    return lambda **kw: _model(key, make)(**kw)


_IMAGE_NETS: dict[str, Callable[[], nn.Module]] = {
    "models.TinyBackbone": lambda: wm.TinyBackbone(widths=(4, 8, 8)),
    "models.TorchvisionResNet": lambda: wm.TorchvisionResNet.tiny(),
    "models.TimmBackbone": lambda: wm.TimmBackbone("test_resnet", out_indices=(1, 2)),
    "models.IRNet": lambda: wm.IRNet.tiny(),
    "models.MixTransformer": lambda: wm.mit_tiny(),
    "models.CAMNet": lambda: wm.CAMNet("tiny", C, backbone_kwargs={"widths": (4, 8, 8)}),
    "models.SMAFNet": lambda: wm.SMAFNet(wm.ResNet38.tiny(), C),
    "models.L2GNet": lambda: wm.L2GNet(wm.ResNet38.tiny(), C),
    "models.SEAMNet": lambda: wm.SEAMNet(wm.ResNet38.tiny(), C),
    "models.DeepLabV2": lambda: wm.DeepLabV2(K, backbone="tiny"),
    "models.DeepLabV3Plus": lambda: wm.DeepLabV3Plus(K, backbone="tiny", output_stride=8),
    "models.SegFormer": lambda: wm.SegFormer(K, encoder="mit_tiny", cam_classes=C),
    "models.PSPNet": lambda: wm.PSPNet(K, backbone="tiny", channels=8, aux_channels=4),
    "models.Res2Net": lambda: wm.Res2Net.tiny(),
    "models.ScaleNet": lambda: wm.ScaleNet([[4, 2, 1, 1, 56], [8, 4, 2, 2, 28], [8, 4, 2, 2, 14], [8, 8, 0, 0, 7]],
                                           layers=(1, 1, 1, 1)),
    "models.ResNet38": lambda: wm.ResNet38.tiny(),
}


@case(*_IMAGE_NETS, size=(32, 32), odd_size=(33, 29), nan_ok=("images",), atol=1e-4,
      calls={n: _forward(n, m) for n, m in _IMAGE_NETS.items()})
def _(h: int, w: int) -> dict[str, Any]:
    return {"images": _R().n(B, 3, h, w)}


_FEATURE_HEADS: dict[str, Callable[[], nn.Module]] = {
    "models.ASPPv2": lambda: wm.ASPPv2(8, K, rates=(1, 2)),
    "models.CAMHead": lambda: wm.CAMHead(8, C),
    "models.FCNHead": lambda: wm.FCNHead(8, K, channels=4),
    "models.PSPHead": lambda: wm.PSPHead(8, K, channels=4, pool_scales=(1, 2)),
    "models.ConvModule": lambda: wm.ConvModule(8, 4, 3, padding=1),
    "models.Bottle2neck": lambda: wm.Bottle2neck(8, 2, base_width=64, scale=2),
    "models.SABlock": lambda: wm.SABlock(8, 2, (4, 2, 1, 1), 4),
}
_FEATURE_ARG = {"models.ASPPv2": "features", "models.CAMHead": "features"}


for _n, _m in _FEATURE_HEADS.items():
    _arg = _FEATURE_ARG.get(_n, "x")

    def _inputs(h: int, w: int, _arg: str = _arg) -> dict[str, Any]:
        return {_arg: _R().n(B, 8, h, w)}

    case(_n, nan_ok=(_arg,), atol=1e-4, calls={_n: _forward(_n, _m)})(_inputs)


@case("models.global_pool", nan_ok=("features",))
def _(h: int, w: int) -> dict[str, Any]:
    return {"features": _R().n(B, 8, h, w)}


@case("models.DeepLabV3PlusHead", "models.SegFormerHead", "models.BoundaryHead", nan_ok=("features",), atol=1e-4,
      calls={"models.DeepLabV3PlusHead": lambda features: _model(
                 "v3p", lambda: wm.DeepLabV3PlusHead(8, 4, K, rates=(1, 2), aspp_channels=4, low_level_reduced=2))(
                 [features[:, :4], features]),
             "models.SegFormerHead": lambda features: _model(
                 "sfh", lambda: wm.SegFormerHead((8, 8, 8, 8), K, embed_dim=4))([features] * 4),
             "models.BoundaryHead": lambda features: _model(
                 "bh", lambda: wm.BoundaryHead((8, 8, 8, 8, 8), mid_channels=4, num_groups=2,
                                               scale_factors=(1, 1, 1, 1, 1)))([features] * 5)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"features": _R().n(B, 8, h, w)}


@case("models.PixelCorrelation", batch=("x", "images", "mid", "high"), nan_ok=("x", "images", "mid", "high"),
      atol=1e-4, calls={"models.PixelCorrelation": _forward("pcm", lambda: wm.PixelCorrelation(8, 16))})
def _(h: int, w: int) -> dict[str, Any]:
    r = _R()
    return {"x": r.u(B, K, h, w), "images": r.n(B, 3, 4 * h, 4 * w), "mid": r.n(B, 8, h, w),
            "high": r.n(B, 16, h, w)}


@case("models.seam_pcm_input", nan_ok=("cam",))
def _(h: int, w: int) -> dict[str, Any]:
    return {"cam": _R().n(B, K, h, w)}


def _meta(make: Callable[..., nn.Module]) -> Callable[..., Any]:
    def call(**kw: Any) -> Any:
        with torch.device("meta"):
            net = make(**kw)
        return sum(p.numel() for p in net.parameters())
    return call


@case("models.mit_b0", "models.mit_b1", "models.mit_b2", "models.mit_b3", "models.mit_b4", "models.mit_b5",
      "models.mit_tiny", "models.res2net101_v1b", "models.scalenet101", odd_size=None,
      calls={n: _meta(getattr(wm, n.split(".")[1])) for n in
             ("models.mit_b0", "models.mit_b1", "models.mit_b2", "models.mit_b3", "models.mit_b4", "models.mit_b5",
              "models.mit_tiny", "models.res2net101_v1b", "models.scalenet101")})
def _(h: int, w: int) -> dict[str, Any]:
    return {}


@case("models.available_backbones", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {}


@case("models.build_backbone", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"name": "tiny", "widths": (4, 8), "output_stride": 4}


@case("models.build_frozen_backbone", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"name": "tiny", "pretrained": None, "backbone_kwargs": {"widths": (4, 8, 8)}, "frozen": ("stages",),
            "freeze_bn": False}


@case("models.backbone_entry", odd_size=None, calls={"models.backbone_entry": lambda name: wm.backbone_entry(name)
                                                     is not None})
def _(h: int, w: int) -> dict[str, Any]:
    return {"name": "tiny"}


@case("models.deeplab_pytorch_key_map", "models.irnet_key_map", "models.mxnet_resnet38_name",
      "models.resnet38_key_map", "models.seam_resnet38_key_map", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"key": "layer1.0.conv1.weight"}


@case("models.get_key_map", odd_size=None,
      calls={"models.get_key_map": lambda key_map: wm.get_key_map(key_map)("module.fc.weight")})
def _(h: int, w: int) -> dict[str, Any]:
    return {"key_map": {"module.": ""}}


@case("models.is_random_init", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"pretrained": "none"}


@case("models.load_pretrained", odd_size=None,
      calls={"models.load_pretrained": lambda source: wm.load_pretrained(nn.Linear(3, 2), source).loaded})
def _(h: int, w: int) -> dict[str, Any]:
    return {"source": {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}}


@case("models.read_state_dict", "models.read_checkpoint", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"source": {"state_dict": {"module.fc.weight": torch.ones(2, 3)}}}


@case("models.set_bn_eval", odd_size=None)
def _(h: int, w: int) -> dict[str, Any]:
    return {"module": nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()}


@case("models.load_resnet38", odd_size=None,
      calls={"models.load_resnet38": lambda: wm.load_resnet38(wm.ResNet38.tiny(), wm.ResNet38.tiny().state_dict())})
def _(h: int, w: int) -> dict[str, Any]:
    return {}


@case("models.msc_forward", nan_ok=("images",), atol=1e-4,
      calls={"models.msc_forward": lambda **kw: wm.msc_forward(CONV_K1, **kw)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"images": _R().n(B, 3, h, w)}


@case("models.slide_inference", nan_ok=("images",), atol=1e-4,
      calls={"models.slide_inference": lambda **kw: wm.slide_inference(CONV_K1, **kw, crop_size=6, stride=4,
                                                                      num_classes=K)})
def _(h: int, w: int) -> dict[str, Any]:
    return {"images": _R().n(B, 3, h, w)}


@case("models.param_groups", odd_size=None,
      calls={"models.param_groups": lambda: len(wm.param_groups(wm.CAMNet("tiny", C), 0.01))})
def _(h: int, w: int) -> dict[str, Any]:
    return {}


@case("models.get_weights_entry", odd_size=None,
      calls={"models.get_weights_entry": lambda name: wm.get_weights_entry(name).name})
def _(h: int, w: int) -> dict[str, Any]:
    return {"name": next(iter(wm.WEIGHTS))}


if __name__ == "__main__":
    torch.set_num_threads(1)
    sel = sys.argv[1:] or None
    res = run_all(sel)
    print(table(res))
    for o in res:
        if o.status in FAILURES:
            print(f"{o.status:8} {o.case:40} {o.arg:16} {o.mutation:14} {o.detail}")
