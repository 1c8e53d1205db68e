"""Shared segmentation losses.

- :func:`pretended_underfitting_loss` / :class:`PretendedUnderFittingLoss`: PMM's pretended under-fitting
  (PUF) cross-entropy (Li et al., ICCV 2021; ``Eli-YiLi/WSSS_MMSeg``
  ``mmseg/models/losses/cross_entropy_loss.py``; ``specs/spec_pmm.md`` §8.2).
"""

from __future__ import annotations

from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_masks, check_tensor, shape_str

__all__ = ["pretended_underfitting_loss", "PretendedUnderFittingLoss"]

PUFMode = Literal["clamp", "pow", "ignore"]


def _check_puf_args(beta: float, k: float, mode: str | None, denominator: str) -> None:
    if not beta > 0:
        raise ValueError(f"beta (the PUF gate on the mean CE) must be > 0, got {beta}")
    if not k > 0:
        raise ValueError(f"k (the PUF per-pixel cap/exponent) must be > 0, got {k}")
    if mode not in ("clamp", "pow", "ignore", None, "none"):
        raise ValueError(f"mode must be 'clamp', 'pow', 'ignore' or None (plain CE), got {mode!r}")
    if denominator not in ("all", "valid"):
        raise ValueError(f"denominator must be 'all' (release) or 'valid', got {denominator!r}")


@overload
def pretended_underfitting_loss(
    logits: Tensor, target: Tensor, beta: float = ..., k: float = ..., mode: PUFMode | None = ...,
    ignore_index: int = ..., class_weight: Tensor | None = ..., denominator: Literal["all", "valid"] = ...,
    return_active: Literal[False] = ...) -> Tensor: ...
@overload
def pretended_underfitting_loss(
    logits: Tensor, target: Tensor, beta: float = ..., k: float = ..., mode: PUFMode | None = ...,
    ignore_index: int = ..., class_weight: Tensor | None = ..., denominator: Literal["all", "valid"] = ...,
    *, return_active: Literal[True]) -> tuple[Tensor, Tensor]: ...
def pretended_underfitting_loss(
    logits: Tensor,
    target: Tensor,
    beta: float = 0.5,
    k: float = 0.5,
    mode: PUFMode | None = "clamp",
    ignore_index: int = 255,
    class_weight: Tensor | None = None,
    denominator: Literal["all", "valid"] = "all",
    return_active: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Pixel cross-entropy with PMM's pretended under-fitting (PUF) gate.

    PMM (Li et al., ICCV 2021), PUF (``WSSS_MMSeg:mmseg/models/losses/cross_entropy_loss.py``)::

        ℓ_i = CE(z_i, y_i)            (0 where y_i = ignore_index; times class_weight[y_i] if given)
        L̄   = (1/N) Σ_i ℓ_i           N = all pixels of this call, ignored ones included
        if L̄ < beta:                  (strict, computed on this call's tensors only)
            clamp:  ℓ_i ← min(ℓ_i, k)         zero gradient wherever ℓ_i > k   (every shipped config)
            pow:    ℓ_i ← (ℓ_i + 1e-9) ** k
            ignore: ℓ_i ← ℓ_i · [ℓ_i <= k]     (clamp's gradients, different value)
        loss = (1/N) Σ_i ℓ_i

    Once the network fits the pseudo-masks on average, pixels it still gets badly wrong (CE > k, i.e. the
    probability of the pseudo-label below ``e^-k``) are treated as label noise and stop pulling the
    model. Before that (L̄ ≥ beta) the loss is plain CE, an automatic warm-up. Released values: VOC
    ``beta = k = 0.5``, COCO ``beta = k = 0.8`` (``PretendedUnderFittingLoss.coco()``); PMM applies it to
    the decode head (weight 1) and the auxiliary head (weight 0.4) with one gate per head, and each GPU
    gates on its own local batch. ``mode=None`` gives plain CE.

    ``denominator="all"`` is the release (mmseg 0.8): the gate and the final mean divide by every
    pixel, so ignored/padded pixels dilute both. ``denominator="valid"`` (opt-in deviation) divides both
    by the number of non-ignored pixels instead (0 when there are none). The CE is computed in float32
    (float64 inputs stay float64); the gate uses ``torch.where`` (no host sync, compile-friendly).

    Gradients flow into ``logits`` only.

    Args:
        logits: unnormalised class scores (channel 0 = background).
        target: int64 class indices in ``[0, K)`` or ``ignore_index``.
        beta: gate: PUF is active when the mean CE is below ``beta``.
        k: per-pixel cap (``clamp``/``ignore``) or exponent (``pow``).
        mode: ``"clamp"`` (release configs), ``"pow"``, ``"ignore"`` or ``None`` (plain CE).
        ignore_index: target value that contributes 0.
        class_weight: optional K per-class weights (mmseg ``class_weight``; multiplies ℓ_i, not N).
        denominator: ``"all"`` (release) or ``"valid"``.
        return_active: also return the gate as a 0-dim bool tensor.

    Shape:
        - logits: N×K×H×W (any N×K×… works)
        - target: N×H×W (the logits' shape without dim 1)
        - output: scalar (and a 0-dim bool tensor with ``return_active``)

    Examples:
        >>> logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])  # 1×2×1×2, confident
        >>> target = torch.tensor([[[0, 0]]])                        # second pixel disagrees (CE ≈ 8)
        >>> loss, active = pretended_underfitting_loss(logits, target, beta=5.0, k=0.5, return_active=True)
        >>> bool(active), round(loss.item(), 4)  # mean CE ≈ 4 < 5, so the wrong pixel is capped at 0.5
        (True, 0.2502)
    """
    _check_puf_args(beta, k, mode, denominator)
    check_tensor(logits, "logits", floating=True)
    if logits.ndim < 2:
        raise ValueError(f"logits must have shape N×K×… (at least 2-D), got {shape_str(logits)}")
    check_tensor(target, "target")
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target must have shape {expected} (logits {shape_str(logits)} without the class "
                         f"dim), got {shape_str(target)}")
    check_masks(target, "target", logits.shape[1], ignore_index)
    x = logits if logits.dtype == torch.float64 else logits.float()
    w = None
    if class_weight is not None:
        check_tensor(class_weight, "class_weight", 1, layout="K")
        if class_weight.shape[0] != logits.shape[1]:
            raise ValueError(f"class_weight must have {logits.shape[1]} entries, got {shape_str(class_weight)}")
        w = class_weight.to(device=x.device, dtype=x.dtype)
    ce = F.cross_entropy(x, target.long(), weight=w, ignore_index=ignore_index, reduction="none")
    if denominator == "all":
        n = torch.tensor(float(max(ce.numel(), 1)), device=ce.device, dtype=ce.dtype)
    else:
        n = (target != ignore_index).sum().to(ce.dtype).clamp_min(1.0)
    mean_ce = ce.sum() / n
    if mode is None or mode == "none":
        active = torch.zeros((), dtype=torch.bool, device=ce.device)
        out = mean_ce
    else:
        active = mean_ce < beta
        if mode == "clamp":
            puf = ce.clamp(max=k)
        elif mode == "pow":
            puf = (ce + 1e-9).pow(k)
            if denominator == "valid":  # ignored pixels are excluded from the mean entirely
                puf = puf * (target != ignore_index).to(puf.dtype)
        else:  # ignore
            puf = ce * (ce <= k).to(ce.dtype)
        out = torch.where(active, puf.sum() / n, mean_ce)
    if return_active:
        return out, active
    return out


class PretendedUnderFittingLoss(nn.Module):
    """PMM's pretended under-fitting cross-entropy as a module (see :func:`pretended_underfitting_loss`).

    Use one instance per head: PMM gates the decode head (``weight=1.0``) and the auxiliary head
    (``weight=0.4``) separately. The non-persistent buffer ``last_active`` records whether the gate was on
    in the latest call (for logging; it is updated without a host sync).

    Args:
        beta: gate on the mean CE (VOC 0.5, COCO 0.8).
        k: per-pixel cap / exponent (VOC 0.5, COCO 0.8).
        mode: ``"clamp"`` (release), ``"pow"``, ``"ignore"`` or ``None`` (plain CE).
        ignore_index: ignored target value.
        weight: loss weight (mmseg ``loss_weight``).
        class_weight: optional per-class weights.
        denominator: ``"all"`` (release: ignored pixels count in N) or ``"valid"``.

    Shape:
        - logits: N×K×H×W
        - target: N×H×W int64
        - output: scalar

    Examples:
        >>> crit = PretendedUnderFittingLoss()          # VOC: beta = k = 0.5
        >>> logits = torch.randn(2, 21, 8, 8, requires_grad=True)
        >>> target = torch.randint(0, 21, (2, 8, 8))
        >>> crit(logits, target).backward()
        >>> PretendedUnderFittingLoss.coco().beta
        0.8
    """

    last_active: Tensor

    def __init__(
        self,
        beta: float = 0.5,
        k: float = 0.5,
        mode: PUFMode | None = "clamp",
        ignore_index: int = 255,
        weight: float = 1.0,
        class_weight: Tensor | None = None,
        denominator: Literal["all", "valid"] = "all",
    ) -> None:
        super().__init__()
        _check_puf_args(beta, k, mode, denominator)
        self.beta = float(beta)
        self.k = float(k)
        self.mode = mode
        self.ignore_index = int(ignore_index)
        self.weight = float(weight)
        self.denominator = denominator
        if class_weight is not None:
            self.register_buffer("class_weight", torch.as_tensor(class_weight, dtype=torch.float32))
        else:
            self.class_weight = None
        self.register_buffer("last_active", torch.zeros((), dtype=torch.bool), persistent=False)

    @classmethod
    def coco(cls, **kwargs: object) -> PretendedUnderFittingLoss:
        """COCO preset of the release: ``beta = k = 0.8`` (``*_40kx32_coco.py`` configs)."""
        params: dict = {"beta": 0.8, "k": 0.8}
        params.update(kwargs)
        return cls(**params)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        loss, active = pretended_underfitting_loss(
            logits, target, self.beta, self.k, self.mode, self.ignore_index, self.class_weight,
            self.denominator, return_active=True)
        self.last_active.copy_(active.to(self.last_active.device))
        return self.weight * loss

    def extra_repr(self) -> str:
        return (f"beta={self.beta}, k={self.k}, mode={self.mode!r}, ignore_index={self.ignore_index}, "
                f"weight={self.weight}, denominator={self.denominator!r}")
