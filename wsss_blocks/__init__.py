"""wsss-blocks: building blocks for weakly supervised semantic segmentation.

Every block (a function and, where it has state or hyperparameters, an ``nn.Module``) is re-exported here;
importing the package needs only torch, einops and NumPy (torchvision, timm, pydensecrf, SciPy, Pillow and
matplotlib are imported lazily by the parts that need them).
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

from ._checks import checks, checks_enabled, set_checks
from .cam import (
    CAMNormalize,
    MultiScaleCAM,
    MultiScaleOutput,
    cam_from_features,
    cams_to_mask,
    multiscale_cams,
    multiscale_cams_detailed,
    normalize_cams,
    tokens_to_map,
)
from .correspondence import (
    AffinityFromAttentionLoss,
    SCDOutput,
    SelfCorrespondenceDistillation,
    affinity_from_attention_loss,
    attention_affinity_targets,
    equivariant_regularization,
    radius_mask,
    sample_points,
    scd_weight,
    self_correspondence_loss,
    self_correspondence_loss_detailed,
)
from .crf import (
    DenseCRF,
    as_dense_crf,
    dense_crf,
    dense_crf_from_unary,
    resolve_backend,
    unary_from_mask,
    unary_from_probs,
)
from .irn import (
    AffinityLossTerms,
    AffinityTargets,
    BoundaryAffinityLoss,
    ConfidentSeedMask,
    IRNCams,
    PathIndex,
    RandomWalk,
    affinity_targets,
    boundary_affinity_loss,
    boundary_affinity_loss_detailed,
    boundary_to_affinity,
    confident_seed_mask,
    downsample_mask,
    irn_multiscale_cams,
    path_index,
    path_offsets,
    random_walk,
    random_walk_mask,
    strided_size,
)
from .local_global import (
    L2GOutput,
    LocalPatches,
    LocalPatchSampler,
    LocalToGlobalTransfer,
    boxes_to_roi_format,
    crop_local_patches,
    l2g_loss,
    l2g_target,
    l2g_transfer,
    sample_patch_boxes,
)
from .losses import (
    AdaptiveMinPoolingLoss,
    BalancedSegLoss,
    DenseEnergyLoss,
    EPSSaliencyLoss,
    PretendedUnderFittingLoss,
    PUFOutput,
    adaptive_min_pooling_loss,
    balanced_seg_loss,
    dense_energy_loss,
    eps_saliency_loss,
    pretended_underfitting_loss,
    pretended_underfitting_loss_detailed,
)
from .metrics import (
    BgScoreSweep,
    SegmentationMetric,
    SweepResult,
    confusion_matrix,
    scores_from_confusion,
    sweep_bg_score,
)
from .multi_crop import (
    MultiCropCAM,
    multi_crop_boxes,
    multi_crop_cams,
    rough_mask_cams,
    rough_masks,
    sample_multi_crop_tile,
    tile_labels,
)
from .multiscale_fusion import (
    FusionOutput,
    MultiScaleAttentionFusion,
    SMAFLoss,
    denoise,
    multiscale_attention_fusion,
    multiscale_attention_fusion_detailed,
    reactivate,
    smaf_loss,
    smaf_pseudo_mask,
    smaf_target,
)
from .ops import (
    boxes_from_mask,
    roi_align,
)
from .patch_learning import (
    PatchDestruction,
    PatchLearning,
    PatchLearningOutput,
    ProgressiveSchedule,
    StageSpec,
    backbone_stages,
    merge_patches,
    patch_learning,
    split_patches,
)
from .propagation import (
    DilatedNeighbourRefine,
    dilated_neighbours,
    neighbour_offsets,
    propagate,
    refine_affinity,
    refine_maps,
)
from .pseudo_mask import (
    CoVSmooth,
    CoVSmoothOutput,
    CyclicPseudoMask,
    ProportionalPseudoMask,
    PseudoMaskParts,
    cov_smooth,
    cov_smooth_detailed,
    proportional_pseudo_mask,
    proportional_pseudo_mask_detailed,
)
from .puzzle_cam import (
    PuzzleReconstructionLoss,
    puzzle_alpha,
    puzzle_reconstruction_loss,
    tile_images,
)
from .refine import (
    PixelAdaptiveRefine,
    VariationAwareRefine,
    pixel_adaptive_refine,
    reliable_pseudo_mask,
    variation_aware_refine,
)
from .viz import (
    cam_overlay,
    colorize_mask,
    heatmap,
    image_grid,
    plot_curves,
    save_cam_overlays,
    to_uint8_image,
)

try:  # the version lives in pyproject.toml only; the installed distribution's metadata carries it
    __version__ = _distribution_version("wsss-blocks")
except PackageNotFoundError:  # pragma: no cover - a source tree on sys.path without an installed distribution
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    # validation switch
    "set_checks",
    "checks_enabled",
    "checks",
    # CAM core
    "cam_from_features",
    "tokens_to_map",
    "normalize_cams",
    "cams_to_mask",
    "multiscale_cams",
    "multiscale_cams_detailed",
    "MultiScaleOutput",
    "MultiScaleCAM",
    "CAMNormalize",
    # metrics
    "confusion_matrix",
    "scores_from_confusion",
    "SegmentationMetric",
    "BgScoreSweep",
    "SweepResult",
    "sweep_bg_score",
    # dense CRF
    "DenseCRF",
    "as_dense_crf",
    "dense_crf",
    "dense_crf_from_unary",
    "unary_from_probs",
    "unary_from_mask",
    "resolve_backend",
    # operations
    "roi_align",
    "boxes_from_mask",
    # L2G
    "sample_patch_boxes",
    "crop_local_patches",
    "boxes_to_roi_format",
    "LocalPatches",
    "LocalPatchSampler",
    "l2g_target",
    "l2g_transfer",
    "l2g_loss",
    "L2GOutput",
    "LocalToGlobalTransfer",
    # PPL
    "split_patches",
    "merge_patches",
    "PatchDestruction",
    "PatchLearningOutput",
    "patch_learning",
    "PatchLearning",
    "backbone_stages",
    "StageSpec",
    "ProgressiveSchedule",
    # Puzzle-CAM
    "tile_images",
    "puzzle_reconstruction_loss",
    "PuzzleReconstructionLoss",
    "puzzle_alpha",
    # PMM
    "cov_smooth",
    "cov_smooth_detailed",
    "CoVSmoothOutput",
    "CoVSmooth",
    "proportional_pseudo_mask",
    "proportional_pseudo_mask_detailed",
    "ProportionalPseudoMask",
    "PseudoMaskParts",
    "CyclicPseudoMask",
    # PMM multi-crop
    "multi_crop_boxes",
    "tile_labels",
    "sample_multi_crop_tile",
    "multi_crop_cams",
    "MultiCropCAM",
    "rough_mask_cams",
    "rough_masks",
    # losses
    "pretended_underfitting_loss",
    "pretended_underfitting_loss_detailed",
    "PUFOutput",
    "PretendedUnderFittingLoss",
    "adaptive_min_pooling_loss",
    "AdaptiveMinPoolingLoss",
    "balanced_seg_loss",
    "BalancedSegLoss",
    "dense_energy_loss",
    "DenseEnergyLoss",
    "eps_saliency_loss",
    "EPSSaliencyLoss",
    # SMAF
    "multiscale_attention_fusion",
    "multiscale_attention_fusion_detailed",
    "FusionOutput",
    "MultiScaleAttentionFusion",
    "denoise",
    "reactivate",
    "smaf_target",
    "smaf_loss",
    "SMAFLoss",
    "smaf_pseudo_mask",
    # SCD / TSCD / AFA
    "scd_weight",
    "sample_points",
    "self_correspondence_loss",
    "self_correspondence_loss_detailed",
    "SCDOutput",
    "SelfCorrespondenceDistillation",
    "equivariant_regularization",
    "radius_mask",
    "attention_affinity_targets",
    "affinity_from_attention_loss",
    "AffinityFromAttentionLoss",
    # refiners (AFA PAR, TSCD VARM)
    "pixel_adaptive_refine",
    "variation_aware_refine",
    "PixelAdaptiveRefine",
    "VariationAwareRefine",
    "reliable_pseudo_mask",
    # dilated-neighbour propagation
    "neighbour_offsets",
    "dilated_neighbours",
    "refine_affinity",
    "propagate",
    "refine_maps",
    "DilatedNeighbourRefine",
    # IRN
    "path_offsets",
    "PathIndex",
    "path_index",
    "strided_size",
    "irn_multiscale_cams",
    "IRNCams",
    "confident_seed_mask",
    "ConfidentSeedMask",
    "downsample_mask",
    "AffinityTargets",
    "affinity_targets",
    "boundary_to_affinity",
    "AffinityLossTerms",
    "boundary_affinity_loss",
    "boundary_affinity_loss_detailed",
    "BoundaryAffinityLoss",
    "random_walk",
    "random_walk_mask",
    "RandomWalk",
    # visualisation
    "colorize_mask",
    "heatmap",
    "cam_overlay",
    "image_grid",
    "save_cam_overlays",
    "plot_curves",
    "to_uint8_image",
]
