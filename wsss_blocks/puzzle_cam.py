"""Puzzle-CAM: image tiling, the reconstruction loss between full and merged tile CAMs, and its weight ramp.

Jo & Yu, "Puzzle-CAM: Improved Localization via Matching Partial and Full Features", ICIP 2021 (official code
OFRIN/PuzzleCAM). The classifier runs on the whole image and on its tiles; the merged tile CAMs are pulled
towards the full-image CAMs. It is the closest published relative of PPL's patch learning
([`wsss_blocks.patch_learning`][wsss_blocks.patch_learning]), whose split/merge operators it reuses.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from typing_extensions import override

from ._checks import check_choice, check_finite, check_labels, check_tensor, shape_str
from .cam import normalize_cams
from .patch_learning import Grid, Order, _grid_pair, _split

__all__ = ["tile_images", "puzzle_reconstruction_loss", "PuzzleReconstructionLoss", "puzzle_alpha"]


def tile_images(images: Tensor, grid: Grid = 2, order: Order = "tile_major") -> Tensor:
    """Puzzle-CAM image tiling: cut each image into a g×g grid of tiles stacked along the batch axis.

    Puzzle-CAM (Jo & Yu, ICIP 2021) runs the whole classifier on the tiles of the input image and
    compares the merged tile CAMs with the full-image CAMs ([`puzzle_reconstruction_loss`][]). Default
    2×2 tiles in tile-major order, as ``core/puzzle_utils.py`` ``tile_features``; merge the tile
    outputs with ``merge_patches(out, B, grid, order="tile_major")``. Unlike the release, sizes not
    divisible by the grid raise instead of producing extra tiles (the released crops are 512, divisible).

    Shape:
        - images: B×C×H×W
        - output: (G·B)×C×H/g_h×W/g_w

    Examples:
        >>> tile_images(torch.randn(2, 3, 8, 8)).shape
        torch.Size([8, 3, 4, 4])
    """
    check_tensor(images, "images", 4, layout="B×C×H×W")
    check_choice(order, "order", ("batch_major", "tile_major"))
    g = _grid_pair(grid)
    H, W = images.shape[-2:]
    if H % g[0] or W % g[1]:
        raise ValueError(f"grid {g} does not divide images of spatial size {H}×{W} (shape {shape_str(images)}); "
                         f"Puzzle-CAM tiles need H and W divisible by the grid (crop or resize the images)")
    return _split(images, g, order, "error", 0.0, "images")


def puzzle_reconstruction_loss(
    cams: Tensor,
    merged_cams: Tensor,
    labels: Tensor | None = None,
    p: Literal[1, 2] = 1,
    class_mode: Literal["masking", "selection", "none"] = "masking",
    level: Literal["feature", "cam"] = "feature",
) -> Tensor:
    """Puzzle-CAM reconstruction loss between full-image CAMs and merged tile CAMs.

    From OFRIN/PuzzleCAM ``train_classification_with_puzzle.py`` (defaults = its argparse defaults):
    elementwise |A − Ã|^p (L1 default, ``p=2`` for L2), with ``class_mode`` (the release's ``re_loss_option``)

    - ``"masking"`` (default): multiplied by the image label y_{b,k} and averaged over **all** B·K·h·w
      entries (absent classes contribute zeros to the mean);
    - ``"selection"``: averaged over the present classes of each image, then over the batch;
    - ``"none"``: plain mean over every entry (``labels`` may be None).

    ``level="cam"`` first applies ReLU and per-map max normalisation (``make_cam``, eps 1e-5) to both.
    Gradients flow into both inputs (nothing is detached in Puzzle-CAM).

    Shape:
        - cams, merged_cams: B×K×h×w
        - labels: B×K
        - output: scalar

    Examples:
        >>> a = torch.zeros(1, 2, 2, 2); b = torch.ones(1, 2, 2, 2)
        >>> puzzle_reconstruction_loss(a, b, torch.tensor([[1.0, 0.0]]))
        tensor(0.5000)
    """
    _check_puzzle_options(p, class_mode, level)
    return _puzzle_loss(cams, merged_cams, labels, p, class_mode, level)


def _check_puzzle_options(p: int, class_mode: str, level: str) -> None:
    check_choice(p, "p", (1, 2))
    check_choice(class_mode, "class_mode", ("masking", "selection", "none"))
    check_choice(level, "level", ("feature", "cam"))


def _puzzle_loss(cams: Tensor, merged_cams: Tensor, labels: Tensor | None, p: int, class_mode: str, level: str
                 ) -> Tensor:
    """[`puzzle_reconstruction_loss`][] with checked options."""
    check_tensor(cams, "cams", 4, layout="B×K×h×w", floating=True)
    check_tensor(merged_cams, "merged_cams", 4, layout="B×K×h×w", floating=True)
    if cams.shape != merged_cams.shape:
        raise ValueError(f"cams and merged_cams must have the same shape, got {shape_str(cams)} and "
                         f"{shape_str(merged_cams)}")
    check_finite(cams, "cams")
    check_finite(merged_cams, "merged_cams")
    if labels is not None:
        check_labels(labels, "labels", batch=cams.shape[0], num_classes=cams.shape[1])
    if cams.numel() == 0:  # an empty batch (or map): zero loss, not the NaN of a mean over nothing
        return (cams.sum() + merged_cams.sum()) * 0.0
    a, b = cams, merged_cams
    if level == "cam":
        a, b = normalize_cams(a, "max", 1e-5), normalize_cams(b, "max", 1e-5)
    diff = (a - b).abs() if p == 1 else (a - b).pow(2)
    if class_mode == "none":
        return diff.mean()
    if labels is None:
        raise ValueError(f"labels are required for class_mode={class_mode!r}")
    y = check_labels(labels, "labels", batch=cams.shape[0], num_classes=cams.shape[1]).to(diff)
    if class_mode == "masking":
        return (diff * y[:, :, None, None]).mean()
    per_class = diff.flatten(2).mean(-1)  # B×K
    n = y.sum(1)
    if bool((n == 0).any()):
        raise ValueError("class_mode='selection' needs at least one present class per image (an image has none)")
    return ((per_class * y).sum(1) / n).mean()


class PuzzleReconstructionLoss(nn.Module):
    """Module form of [`puzzle_reconstruction_loss`][] (Puzzle-CAM, Jo & Yu, ICIP 2021).

    Shape:
        - cams, merged_cams: B×K×h×w; labels: B×K; output: scalar

    Examples:
        >>> PuzzleReconstructionLoss()(torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2), torch.ones(1, 2))
        tensor(1.)
    """

    def __init__(self, p: Literal[1, 2] = 1, class_mode: Literal["masking", "selection", "none"] = "masking",
                 level: Literal["feature", "cam"] = "feature") -> None:
        super().__init__()
        _check_puzzle_options(p, class_mode, level)
        self.p: Literal[1, 2] = p
        self.class_mode: Literal["masking", "selection", "none"] = class_mode
        self.level: Literal["feature", "cam"] = level

    @override
    def forward(self, cams: Tensor, merged_cams: Tensor, labels: Tensor | None = None) -> Tensor:
        return _puzzle_loss(cams, merged_cams, labels, self.p, self.class_mode, self.level)


def puzzle_alpha(step: int, max_step: int, alpha: float = 1.0, ramp: float = 0.5) -> float:
    """Puzzle-CAM's reconstruction-loss weight: α_t = min(α·t / (T·ramp), α); ``ramp=0`` gives constant α.

    Argparse defaults α = 1, ramp 0.5; the README's best VOC run uses α = 4.

    Examples:
        >>> puzzle_alpha(25, 100, alpha=4.0), puzzle_alpha(80, 100, alpha=4.0)
        (2.0, 4.0)
    """
    if max_step < 1:
        raise ValueError(f"max_step must be >= 1, got {max_step}")
    if ramp < 0:
        raise ValueError(f"ramp must be >= 0, got {ramp}")
    if ramp == 0:
        return float(alpha)
    return float(min(alpha * step / (max_step * ramp), alpha))
