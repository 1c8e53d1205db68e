"""wsss-blocks: building blocks for weakly supervised semantic segmentation.

The blocks are re-exported here; importing the package needs only torch, einops and NumPy
(torchvision, timm, pydensecrf, SciPy and Pillow are imported lazily by the parts that need them).
"""

from ._checks import checks, checks_enabled, set_checks
from .cam import (
    CAMNormalize,
    MultiScaleCAM,
    cam_from_features,
    cams_to_mask,
    multiscale_cams,
    normalize_cams,
    tokens_to_map,
)
from .correspondence import AffinityFromAttentionLoss, SelfCorrespondenceDistillation, scd_weight
from .crf import DenseCRF, dense_crf
from .irn import (
    BoundaryAffinityLoss,
    ConfidentSeedMask,
    PathIndex,
    RandomWalk,
    affinity_targets,
    boundary_affinity_loss,
    boundary_to_affinity,
    confident_seed_mask,
    irn_multiscale_cams,
    random_walk,
    random_walk_mask,
)
from .local_global import (
    LocalPatchSampler,
    LocalToGlobalTransfer,
    l2g_loss,
    l2g_target,
    l2g_transfer,
)
from .losses import PretendedUnderFittingLoss, pretended_underfitting_loss
from .metrics import BgScoreSweep, SegmentationMetric, confusion_matrix, sweep_bg_score
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
    MultiScaleAttentionFusion,
    SMAFLoss,
    denoise,
    multiscale_attention_fusion,
    reactivate,
    smaf_loss,
    smaf_pseudo_mask,
    smaf_target,
)
from .ops import roi_align
from .patch_learning import (
    PatchDestruction,
    PatchLearning,
    ProgressiveSchedule,
    merge_patches,
    patch_learning,
    split_patches,
)
from .pseudo_mask import (
    CoVSmooth,
    CyclicPseudoMask,
    ProportionalPseudoMask,
    cov_smooth,
    proportional_pseudo_mask,
)
from .puzzle_cam import puzzle_reconstruction_loss, tile_images
from .refine import PixelAdaptiveRefine, VariationAwareRefine, reliable_pseudo_mask

__version__ = "0.1.0.dev0"

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
    "MultiScaleCAM",
    "CAMNormalize",
    # metrics
    "confusion_matrix",
    "SegmentationMetric",
    "BgScoreSweep",
    "sweep_bg_score",
    # dense CRF
    "DenseCRF",
    "dense_crf",
    # L2G
    "LocalPatchSampler",
    "LocalToGlobalTransfer",
    "l2g_target",
    "l2g_loss",
    "l2g_transfer",
    "roi_align",
    # PPL
    "PatchDestruction",
    "PatchLearning",
    "ProgressiveSchedule",
    "patch_learning",
    "split_patches",
    "merge_patches",
    "tile_images",
    "puzzle_reconstruction_loss",
    # PMM
    "cov_smooth",
    "CoVSmooth",
    "proportional_pseudo_mask",
    "ProportionalPseudoMask",
    "PretendedUnderFittingLoss",
    "pretended_underfitting_loss",
    "CyclicPseudoMask",
    "rough_mask_cams",
    "rough_masks",
    "multi_crop_boxes",
    "tile_labels",
    "sample_multi_crop_tile",
    "multi_crop_cams",
    "MultiCropCAM",
    # SMAF
    "MultiScaleAttentionFusion",
    "multiscale_attention_fusion",
    "denoise",
    "reactivate",
    "smaf_target",
    "smaf_loss",
    "SMAFLoss",
    "smaf_pseudo_mask",
    # SCD / TSCD / AFA
    "SelfCorrespondenceDistillation",
    "scd_weight",
    "AffinityFromAttentionLoss",
    "PixelAdaptiveRefine",
    "VariationAwareRefine",
    "reliable_pseudo_mask",
    # IRN
    "irn_multiscale_cams",
    "confident_seed_mask",
    "ConfidentSeedMask",
    "PathIndex",
    "affinity_targets",
    "boundary_to_affinity",
    "boundary_affinity_loss",
    "BoundaryAffinityLoss",
    "random_walk",
    "random_walk_mask",
    "RandomWalk",
]
