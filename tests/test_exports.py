"""The public API: every block is exported from its module and from ``wsss_blocks``, and a block's
``nn.Module`` takes the options its function takes.
"""

from __future__ import annotations

import importlib
import inspect

import pytest
from torch import nn

import wsss_blocks

#: Modules whose functions and classes are blocks (re-exported flat from ``wsss_blocks``). The data, model,
#: trainer, hub and CLI packages keep their own namespaces.
BLOCK_MODULES = (
    "cam", "metrics", "crf.dense_crf", "ops", "local_global", "patch_learning", "puzzle_cam", "pseudo_mask",
    "multi_crop", "losses", "multiscale_fusion", "correspondence", "refine", "propagation", "irn", "viz",
)


def _public_callables(module_name: str) -> list[str]:
    mod = importlib.import_module(f"wsss_blocks.{module_name}")
    return [n for n in mod.__all__ if inspect.isfunction(getattr(mod, n)) or inspect.isclass(getattr(mod, n))]


def _defined_public(module_name: str) -> list[str]:
    mod = importlib.import_module(f"wsss_blocks.{module_name}")
    return [n for n, o in vars(mod).items() if not n.startswith("_") and (inspect.isfunction(o) or inspect.isclass(o))
            and o.__module__ == mod.__name__]


@pytest.mark.parametrize("module_name", BLOCK_MODULES)
def test_every_public_block_is_in_its_module_all_and_in_the_package(module_name):
    mod = importlib.import_module(f"wsss_blocks.{module_name}")
    not_in_all = [n for n in _defined_public(module_name) if n not in mod.__all__]
    assert not_in_all == [], f"public in wsss_blocks.{module_name} but not in its __all__: {not_in_all}"
    missing = [n for n in _public_callables(module_name) if n not in wsss_blocks.__all__]
    assert missing == [], f"in wsss_blocks.{module_name}.__all__ but not in wsss_blocks.__all__: {missing}"
    for n in _public_callables(module_name):
        assert getattr(wsss_blocks, n) is getattr(mod, n), n


def test_package_all_has_no_duplicates_and_resolves():
    assert len(wsss_blocks.__all__) == len(set(wsss_blocks.__all__))
    for name in wsss_blocks.__all__:
        assert hasattr(wsss_blocks, name), name


#: (functions, Module, inputs the Module computes itself, Module-only options with the reason).
#: The Module's constructor must take every option of its functions (their arguments minus what ``forward``
#: takes and minus the computed inputs), and nothing else unless listed with a reason.
PAIRS: list[tuple[tuple[str, ...], str, set[str], dict[str, str]]] = [
    (("multiscale_cams",), "MultiScaleCAM", {"fn"}, {"model": "the network, called as fn"}),
    (("normalize_cams",), "CAMNormalize", set(), {}),
    (("sample_patch_boxes", "crop_local_patches"), "LocalPatchSampler",
     {"batch_size", "image_hw", "device", "boxes"}, {}),
    (("l2g_transfer",), "LocalToGlobalTransfer", set(), {}),
    (("split_patches",), "PatchDestruction", set(), {}),
    (("patch_learning",), "PatchLearning", {"classifier_weight", "classifier_bias"},
     {"classifier": "builds the patch classifier", "feat_dim": "builds the patch classifier",
      "num_classes": "builds the patch classifier", "grid": "the patch grid of the wrapped PatchDestruction",
      "insert_after": "where the patch split enters the backbone"}),
    (("puzzle_reconstruction_loss",), "PuzzleReconstructionLoss", set(), {}),
    (("cov_smooth",), "CoVSmooth", set(), {}),
    (("proportional_pseudo_mask",), "ProportionalPseudoMask", set(), {}),
    (("multi_crop_cams",), "MultiCropCAM", {"fn"}, {"model": "the network, called as fn"}),
    (("pretended_underfitting_loss",), "PretendedUnderFittingLoss", set(), {"weight": "loss weight"}),
    (("adaptive_min_pooling_loss",), "AdaptiveMinPoolingLoss", set(), {}),
    (("balanced_seg_loss",), "BalancedSegLoss", set(), {}),
    (("dense_energy_loss",), "DenseEnergyLoss", set(), {}),
    (("eps_saliency_loss",), "EPSSaliencyLoss", set(), {}),
    (("multiscale_attention_fusion",), "MultiScaleAttentionFusion", set(), {}),
    (("smaf_loss",), "SMAFLoss", set(), {}),
    (("self_correspondence_loss",), "SelfCorrespondenceDistillation", set(),
     {"weight": "loss weight", "start_iter": "the weight schedule (scd_weight)"}),
    (("affinity_from_attention_loss",), "AffinityFromAttentionLoss", set(), {}),
    (("pixel_adaptive_refine",), "PixelAdaptiveRefine", set(), {}),
    (("variation_aware_refine",), "VariationAwareRefine", set(), {}),
    (("confident_seed_mask",), "ConfidentSeedMask", set(), {}),
    (("boundary_affinity_loss",), "BoundaryAffinityLoss", set(), {}),
    (("random_walk", "random_walk_mask"), "RandomWalk", {"walked"}, {}),
    (("dense_crf",), "DenseCRF", set(), {"gt_prob": "label confidence of DenseCRF.from_mask"}),
]


def _params(fn: object) -> set[str]:
    return {n for n, p in inspect.signature(fn).parameters.items()  # type: ignore[arg-type]
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


@pytest.mark.parametrize(("functions", "module", "computed", "extra"), PAIRS, ids=[p[1] for p in PAIRS])
def test_module_takes_the_options_of_its_functions(functions, module, computed, extra):
    cls = getattr(wsss_blocks, module)
    inputs = _params(cls.forward)
    options = set().union(*(_params(getattr(wsss_blocks, f)) for f in functions)) - inputs - computed
    init = _params(cls.__init__)
    assert options - init == set(), f"{module} lacks options of {functions}: {sorted(options - init)}"
    assert init - options == set(extra), (f"{module} has options its functions lack: {sorted(init - options)} "
                                          f"(expected only {sorted(extra)})")


def test_every_module_block_is_paired():
    """Every block nn.Module with a ``forward`` appears in PAIRS, unless it is listed here with a reason."""
    unpaired = {
        "DilatedNeighbourRefine": "abstract engine of PixelAdaptiveRefine and VariationAwareRefine",
        "CyclicPseudoMask": "a Module only: it runs a segmentation model over images, no function form",
    }
    paired = {m for _, m, _, _ in PAIRS}
    for module_name in BLOCK_MODULES:
        mod = importlib.import_module(f"wsss_blocks.{module_name}")
        for n in _public_callables(module_name):
            obj = getattr(mod, n)
            if not (inspect.isclass(obj) and issubclass(obj, nn.Module)) or obj.forward is nn.Module.forward:
                continue  # not a Module, or a stateful accumulator (SegmentationMetric, BgScoreSweep)
            assert n in paired or n in unpaired, f"{module_name}.{n} is an nn.Module block without an entry in PAIRS"
