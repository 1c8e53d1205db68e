"""Composable pseudo-mask chains: post-processing steps, one refiner and one mask rule, named in the config.

The pseudo-mask stage turns each image's fused CAMs into a mask through a chain of named steps:

```yaml
pseudo:
  post: [cov]            # steps on the fused CAMs, in order (default none)
  refine: none           # none | crf:<preset> (or a bare CRF preset name) | par | varm | irn | attn_aff
  rule: ppmg             # argmax | ppmg | smaf | reliable
  args:                  # arguments of the steps (released defaults; unknown keys are refused)
    cov: {fg_threshold: 0.05, cv_scale: 0.3}
    ppmg: {alpha: 11.0}
seg:
  loss: ce               # ce | puf | balanced
```

A **post** step maps the CAMs to new CAMs (PMM's CoV smoothing, SMAF's softmax-before-upsampling fusion, a
saliency gate). A **refiner** takes the CAMs and a background score and returns refined foreground maps and,
where it refines the background too, a background map (a dense CRF, AFA's PAR, TSCD's VARM, IRN's random walk,
AFA's attention-affinity propagation). A **rule** turns them into a B×H×W mask (0 background, c + 1 class c,
255 ignore): the constant-background argmax, PMM's PPMG, SMAF's argmax + hard-label CRF, or the AFA/TSCD reliable
labels with an ignore band; a rule asks the refiner for the background scores it needs (``reliable`` asks for two).
Every method's packaged config spells out its released chain with these keys, so ``--set pseudo.refine=varm
--set pseudo.rule=ppmg`` runs L2G's CAMs through TSCD's refiner and PMM's rule.

Each step is a function registered with `register_step` under its kind and name, with a dataclass of arguments
(its defaults are the released values) and the things it needs (``saliency`` maps, a dense ``crf`` backend, the
CAM ``network``, its ``attention`` affinity, a trained ``irn`` boundary network). `check_chain` runs when a
config is loaded and refuses, before anything is written, an unknown step, a wrong argument or a combination
whose needs the run cannot meet.

Examples:
    >>> import torch
    >>> from wsss_blocks.train.schema import load_run_config
    >>> cfg = load_run_config({"pseudo": {"post": ["cov"], "rule": "argmax"}})
    >>> chain = PseudoChain(cfg)
    >>> cams = torch.zeros(1, 2, 4, 4); cams[0, 1, :2] = 0.9
    >>> chain.masks(cams, torch.tensor([[0.0, 1.0]]), torch.rand(1, 3, 4, 4), bg_score=0.15)[0, :, 0].tolist()
    [2, 2, 0, 0]
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_blocks.cam import cams_to_mask

from .config import ConfigError, from_dict, to_dict

__all__ = [
    "STEP_KINDS",
    "NEEDS",
    "Step",
    "ChainSpec",
    "ChainState",
    "Refined",
    "PseudoChain",
    "register_step",
    "get_step",
    "available_steps",
    "chain_spec",
    "chain_settings",
    "check_chain",
    "make_seg_loss",
    "MOVED_METHOD_ARGS",
    "CovArgs",
    "SmafFusionArgs",
    "SaliencyArgs",
    "CRFArgs",
    "PARArgs",
    "VARMArgs",
    "IRNArgs",
    "AttnAffArgs",
    "PPMGArgs",
    "SmafRuleArgs",
    "ReliableArgs",
]

STEP_KINDS = ("post", "refine", "rule", "loss")
"""The kinds of steps, in chain order (``loss`` is the segmentation stage's ``seg.loss``)."""
NEEDS = ("image", "saliency", "crf", "network", "attention", "irn")
"""What a step may need; `check_chain` refuses a chain whose needs the run cannot meet."""

# method_args that belonged to a method's pseudo-mask rule before the chain: (method, key) -> new key
MOVED_METHOD_ARGS: dict[tuple[str, str], str] = {
    **{("pmm", k): f"pseudo.args.ppmg.{k}" for k in ("alpha", "posterior_threshold", "foreground", "crf_params",
                                                              "crf_channel_order")},
    **{("pmm", k): f"pseudo.args.cov.{k}" for k in ("fg_threshold", "cv_scale", "min_exponent")},
    ("smaf", "crf"): "pseudo.args.smaf.crf",
    ("smaf", "crf_params"): "pseudo.args.smaf.crf_params",
    ("tscd", "pseudo_rule"): "pseudo.rule (refined: 'reliable' with pseudo.refine: varm; threshold: 'argmax')",
    ("tscd", "pseudo_ignore"): "pseudo.args.reliable.ignore",
}


# ---------------------------------------------------------------------------------------------------- registry
CRFBackends = Callable[[str, Any], list[tuple[str, Mapping[str, Any]]]]
"""``(step name, args) -> [(config path, DenseCRF config mapping)]`` of the dense CRFs a step runs."""


@dataclass(frozen=True)
class Step:
    """A registered chain step.

    Attributes:
        kind: ``"post"``, ``"refine"``, ``"rule"`` or ``"loss"``.
        name: its config name.
        fn: the implementation (signature per kind: see `register_step`).
        args: dataclass of its arguments (defaults = the released values), or ``None``.
        needs: entries of `NEEDS`; ``crf`` counts only when `crf_backends` names a backend.
        source: the paper and released code it follows.
        summary: one line for the docs and error messages.
        crf_backends: ``(step name, args) -> [(config path, DenseCRF params)]``: the dense CRFs it runs with these
            arguments (checked at config load: their values, and the pydensecrf backend when it is forced).
        check: ``(run config, args) -> reason or None``, a step-specific compatibility check.
    """

    kind: str
    name: str
    fn: Callable[..., Any]
    args: type | None = None
    needs: tuple[str, ...] = ()
    source: str = ""
    summary: str = ""
    crf_backends: CRFBackends | None = None
    check: Callable[[Any, Any], str | None] | None = None


_STEPS: dict[str, dict[str, Step]] = {k: {} for k in STEP_KINDS}


def register_step(kind: str, name: str, *, args: type | None = None, needs: Sequence[str] = (), source: str = "",
                  summary: str = "", crf_backends: CRFBackends | None = None,
                  check: Callable[[Any, Any], str | None] | None = None
                  ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` as the step ``kind``/``name`` (adding a step is one function).

    Signatures: ``post``: ``fn(state, args) -> ChainState``; ``refine``: ``fn(state, args, bg) -> Refined``
    with ``bg`` a background score (float); ``rule``: ``fn(state, refine, args) -> B×H×W int64 mask`` where
    ``refine(bg)`` returns the chain refiner's `Refined` maps for that background score; ``loss``:
    ``fn(args) -> criterion(logits, target)``. ``args`` is an instance of the ``args`` dataclass (``None``
    without one). A name registered twice must come from the same function name (re-imports).

    Examples:
        >>> @register_step("post", "square_example", summary="square the CAMs (an example)")
        ... def _square(state, args):
        ...     return dataclasses.replace(state, cams=state.cams ** 2)
        >>> get_step("post", "square_example").summary
        'square the CAMs (an example)'
    """
    if kind not in STEP_KINDS:
        raise ValueError(f"kind must be one of {list(STEP_KINDS)}, got {kind!r}")
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise ValueError(f"needs must be entries of {list(NEEDS)}, got {bad}")
    if args is not None and not dataclasses.is_dataclass(args):
        raise TypeError(f"args of step {name!r} must be a dataclass, got {args!r}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        old = _STEPS[kind].get(name)
        if old is not None and getattr(old.fn, "__qualname__", None) != getattr(fn, "__qualname__", None):
            raise ValueError(f"{kind} step {name!r} is already registered by {old.fn!r}")
        _STEPS[kind][name] = Step(kind, name, fn, args, tuple(needs), source, summary, crf_backends, check)
        return fn

    return deco


def _canonical(kind: str, name: str) -> str:
    if kind == "refine" and name != "irn":
        from wsss_blocks.crf import PRESETS

        key = name.lower().replace("_", "-")
        if key.startswith("crf:"):
            key = key[4:]
            return f"crf:{key}" if key in PRESETS else name
        if key in PRESETS:
            return f"crf:{key}"
    return name


def _args_key(kind: str, name: str) -> str:
    """The ``pseudo.args`` key of a step (every CRF preset shares ``crf``)."""
    return "crf" if kind == "refine" and name.startswith("crf:") else name


def get_step(kind: str, name: str) -> Step:
    """The registered step ``kind``/``name``; unknown names raise ``ConfigError`` with the closest name.

    Refiner names: ``crf:<preset>`` or a bare preset name of [DenseCRF][wsss_blocks.crf.DenseCRF]
    (``deeplab``, ``psa``, ...) are the dense CRF with that preset; ``irn`` is IRN's random walk (its label CRF
    is ``crf:irn``).
    """
    if kind not in STEP_KINDS:
        raise ValueError(f"kind must be one of {list(STEP_KINDS)}, got {kind!r}")
    canon = _canonical(kind, name)
    reg = _STEPS[kind]
    if canon.startswith("crf:"):
        return dataclasses.replace(reg["crf"], name=canon)
    if canon not in reg:
        names = available_steps(kind)
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        what = "pseudo." + kind if kind != "loss" else "seg.loss"
        raise ConfigError(f"unknown {what} step {name!r}{hint} (available: {', '.join(names)})")
    return reg[canon]


def available_steps(kind: str) -> list[str]:
    """Registered step names of ``kind`` (refiners: ``crf:<preset>`` for every CRF preset)."""
    if kind not in STEP_KINDS:
        raise ValueError(f"kind must be one of {list(STEP_KINDS)}, got {kind!r}")
    names = [n for n in _STEPS[kind] if not (kind == "refine" and n == "crf")]
    if kind == "refine":
        from wsss_blocks.crf import PRESETS

        names += [f"crf:{p}" for p in PRESETS]
    return names


# ---------------------------------------------------------------------------------------------------- chain data
@dataclass
class ChainContext:
    """What steps may use besides the tensors: the method (network steps), the run config, cached modules.

    Attributes:
        method: the trained `CAMMethod` (``None`` in pure uses; network and attention steps need it).
        cfg: the run config (``None`` in pure uses).
        irn_boundary: ``image01 -> B×1×h×w`` boundary probabilities at stride 4 (IRNet), set by the pseudo stage
            once IRNet is trained (`wsss_blocks.train.irn_stage`).
        cache: modules built once per chain (CRFs, refiners).
    """

    method: Any = None
    cfg: Any = None
    irn_boundary: Callable[[Tensor], Tensor] | None = None
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChainState:
    """The tensors a chain step sees.

    Attributes:
        cams: B×C×H×W current maps in [0, 1] (post steps replace them).
        raw_cams: the fused CAMs before any post step (PPMG's importance uses them).
        labels: B×C multi-hot image labels.
        image01: B×3×H×W RGB in [0, 1].
        bg_score: the constant background score of the stage (``pseudo.bg_score``, or the swept best one).
        images: the normalised network input (network and attention steps), or ``None``.
        saliency: B×1×H×W saliency in [0, 1], or ``None``.
        refiner: the chain's refiner name (rules that combine with a particular refiner read it).
        refine_args: the refiner's arguments.
        context: see `ChainContext`.
    """

    cams: Tensor
    raw_cams: Tensor
    labels: Tensor
    image01: Tensor
    bg_score: float
    images: Tensor | None = None
    saliency: Tensor | None = None
    refiner: str = "none"
    refine_args: Any = None
    context: ChainContext = field(default_factory=ChainContext)


@dataclass
class Refined:
    """A refiner's output for one background score.

    Attributes:
        cams: B×C×H×W refined foreground maps (absent classes 0).
        bg: B×1×H×W refined background map, or ``None`` when the refiner leaves the background to the rule's
            constant score.
    """

    cams: Tensor
    bg: Tensor | None = None


@dataclass(frozen=True)
class ChainSpec:
    """A resolved chain: step names (canonical) and validated argument dataclasses by ``pseudo.args`` key."""

    post: tuple[str, ...]
    refine: str
    rule: str
    args: dict[str, Any]
    loss: str = "ce"

    def steps(self) -> list[Step]:
        """The post steps, the refiner and the rule, in order."""
        return ([get_step("post", n) for n in self.post] + [get_step("refine", self.refine)]
                + [get_step("rule", self.rule)])

    def args_of(self, step: Step) -> Any:
        """The argument dataclass of ``step`` (``None`` without one)."""
        return self.args.get(_args_key(step.kind, step.name))

    def describe(self) -> str:
        """One line: ``post [cov] -> refine none -> rule ppmg -> loss puf``."""
        return (f"post [{', '.join(self.post)}] -> refine {self.refine} -> rule {self.rule} -> loss {self.loss}")


# ---------------------------------------------------------------------------------------------------- helpers
def _present(labels: Tensor, like: Tensor) -> Tensor:
    return labels.to(like.device).bool()[:, :, None, None]


def _bg_plane(cams: Tensor, bg: float | Tensor) -> Tensor:
    if isinstance(bg, Tensor):
        return bg.to(device=cams.device, dtype=cams.dtype)
    return cams.new_full((cams.shape[0], 1, *cams.shape[-2:]), float(bg))


def argmax_mask(r: Refined, labels: Tensor, bg: float) -> Tensor:
    """``argmax([background; present foreground maps])`` with ties to the background (then the lower class).

    Without a refined background map this is `wsss_blocks.cam.cams_to_mask` with the constant ``bg``.
    """
    if r.bg is None:
        return cams_to_mask(r.cams, labels, float(bg))
    fg = r.cams.float().masked_fill(~_present(labels, r.cams), float("-inf"))
    return torch.cat([r.bg.float(), fg], dim=1).argmax(dim=1)


def _crf_uses_pydensecrf(params: Mapping[str, Any]) -> bool:
    return str(dict(params).get("backend", "auto")) == "pydensecrf"


def _cached(state: ChainState, key: str, build: Callable[[], Any]) -> Any:
    cache = state.context.cache
    if key not in cache:
        cache[key] = build()
    return cache[key]


# ---------------------------------------------------------------------------------------------------- post steps
@dataclass
class CovArgs:
    """``cov``: PMM's coefficient-of-variation smoothing (defaults: ``--cam_thresh 0.05``, ``--cv_scale 0.3``)."""

    fg_threshold: float = 0.05
    cv_scale: float = 0.3
    min_exponent: float | None = None


@register_step("post", "cov", args=CovArgs,
               source="PMM (Li et al., ICCV 2021), Eli-YiLi/PMM pipline/refine_cam.py get_CoV + ppmg",
               summary="raise each class map to the power 1 - cv_scale·CoV (weak activations lifted)")
def _post_cov(state: ChainState, args: CovArgs) -> ChainState:
    from wsss_blocks.pseudo_mask import cov_smooth

    cams = cov_smooth(state.cams.float().clamp(0.0, 1.0), args.fg_threshold, args.cv_scale, args.min_exponent)
    return dataclasses.replace(state, cams=cams)


@dataclass
class SmafFusionArgs:
    """``smaf_fusion``: SMAF's multi-scale attention fusion (``gen_fused_cam.py``: scales 0.5-2 + flips, bicubic)."""

    scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    flip: bool = True
    image_interpolation: Literal["bicubic", "bilinear"] = "bicubic"


# methods whose CAM inference already is SMAF's fusion (``cam_fn`` returns per-pass softmax probabilities)
_FUSED_CAM_METHODS = frozenset({"smaf"})


def _check_smaf_fusion(cfg: Any, args: Any) -> str | None:
    if cfg.method in _FUSED_CAM_METHODS:
        return (f"pseudo.post step 'smaf_fusion' would fuse method {cfg.method!r}'s CAMs twice: its CAM inference "
                f"already is SMAF's softmax fusion; leave it out of pseudo.post")
    return None


@register_step("post", "smaf_fusion", args=SmafFusionArgs, needs=("network",), check=_check_smaf_fusion,
               source="SMAF (Yang et al., arXiv 2305.05841), bupt-ai-cz/SMAF gen_fused_cam.py",
               summary="recompute the CAMs with SMAF's fusion: per-pass softmax over the network's maps before "
                       "upsampling, class-aware sum over scales and flips, per-class max")
def _post_smaf_fusion(state: ChainState, args: SmafFusionArgs) -> ChainState:
    from wsss_blocks.multiscale_fusion import multiscale_attention_fusion

    method = state.context.method
    if method is None or state.images is None:
        raise RuntimeError("pseudo.post step 'smaf_fusion' re-runs the CAM network: the chain needs the method and "
                           "the normalised images (the pseudo stage passes both)")
    fused = multiscale_attention_fusion(method.cam_fn, state.images, state.labels, scales=tuple(args.scales),
                                        flip=args.flip, activation="softmax", bg_channel="none", reduce="sum",
                                        normalize="max",
                                        out_size=(int(state.cams.shape[-2]), int(state.cams.shape[-1])),
                                        image_interpolation=args.image_interpolation, eval_mode=False)
    return dataclasses.replace(state, cams=fused.float())


@dataclass
class SaliencyArgs:
    """``saliency``: multiply the CAMs by the saliency map raised to ``power``."""

    power: float = 1.0


@register_step("post", "saliency", args=SaliencyArgs, needs=("saliency",),
               source="saliency as object evidence, as in L2G's shape transfer (PengtaoJiang/L2G "
                      "scripts/train_l2g_sal_voc.py: foreground target = saliency); not a released pseudo-mask step",
               summary="gate the CAMs with the saliency map: cams · saliency^power (non-salient pixels fall to "
                       "background)")
def _post_saliency(state: ChainState, args: SaliencyArgs) -> ChainState:
    if state.saliency is None:
        raise ValueError("pseudo.post step 'saliency' got no saliency maps; set data.saliency_dir")
    sal = state.saliency.to(device=state.cams.device, dtype=torch.float32).clamp(0.0, 1.0)
    if tuple(sal.shape[-2:]) != tuple(state.cams.shape[-2:]):
        sal = F.interpolate(sal, size=tuple(state.cams.shape[-2:]), mode="bilinear", align_corners=False)
    return dataclasses.replace(state, cams=state.cams.float() * sal.pow(float(args.power)))


# ---------------------------------------------------------------------------------------------------- refiners
@register_step("refine", "none", summary="no refinement: the rule sees the CAMs")
def _refine_none(state: ChainState, args: Any, bg: float) -> Refined:
    return Refined(state.cams)


@dataclass
class CRFArgs:
    """``crf:<preset>``: a dense CRF; ``None`` keeps the preset's value (`wsss_blocks.crf.PRESETS`)."""

    backend: Literal["auto", "torch", "pydensecrf"] = "auto"
    iterations: int | None = None
    pos_w: float | None = None
    pos_xy: float | None = None
    bi_w: float | None = None
    bi_xy: float | None = None
    bi_rgb: float | None = None
    gt_prob: float | None = None


def _crf_params(preset: str, args: CRFArgs) -> dict[str, Any]:
    kw = {k: v for k, v in dataclasses.asdict(args).items() if v is not None}
    return {"preset": preset, **kw}


def _crf_refine_backends(name: str, args: CRFArgs) -> list[tuple[str, Mapping[str, Any]]]:
    return [("pseudo.args.crf", _crf_params(name.split(":", 1)[1], args))]


@register_step("refine", "crf", args=CRFArgs, needs=("image", "crf"), crf_backends=_crf_refine_backends,
               source="Krähenbühl & Koltun (NeurIPS 2011); label presets (irn, smaf) as IRN misc/imutils.py "
                      "crf_inference_label, probability presets on [bg; CAMs] as PSA tool/imutils.py crf_inference",
               summary="dense CRF on [background; present CAMs]: a label preset (irn, smaf) refines the argmax "
                       "labels (gt_prob), the others refine the scores as probabilities")
def _refine_crf(state: ChainState, args: CRFArgs, bg: float) -> Refined:
    from wsss_blocks.crf import PRESETS, DenseCRF

    preset = state.refiner.split(":", 1)[1]
    label_crf = "gt_prob" in PRESETS[preset]
    # probability presets: the scores are used as given, as PSA feeds [bg; CAM] to unary_from_softmax
    extra = {} if label_crf else {"sum_to_one": "ignore"}
    crf = _cached(state, f"crf:{preset}", lambda: DenseCRF.from_config({**_crf_params(preset, args), **extra}))
    cams = state.cams.float()
    B, _, H, W = cams.shape
    out_fg = torch.zeros_like(cams)
    out_bg = cams.new_zeros(B, 1, H, W)
    plane = _bg_plane(cams, bg)
    present = state.labels.to(cams.device).bool()
    for b in range(B):  # the label count depends on the image's classes
        idx = present[b].nonzero().flatten()
        if idx.numel() == 0:  # no class: background everywhere (a one-label CRF changes nothing)
            out_bg[b] = 1.0
            continue
        scores = torch.cat([plane[b], cams[b, idx]])  # (1 + K)×H×W
        img = state.image01[b:b + 1].float().clamp(0.0, 1.0)
        if label_crf:
            q = crf.from_mask(img, scores.argmax(0)[None], num_classes=int(scores.shape[0]))[0]
        else:
            q = crf(img, scores[None].clamp(0.0, 1.0))[0]
        q = q.to(cams.device)
        out_bg[b, 0] = q[0]
        out_fg[b, idx] = q[1:]
    return Refined(out_fg, out_bg)


def _softmax_refine(state: ChainState, module: Any, bg: float | Tensor, scale_factor: float) -> Refined:
    """AFA/TSCD ``refine_cams_with_bkg_v2`` for one background score: softmax over [bg; present], refine, resize."""
    cams = state.cams.float()
    B, _, H, W = cams.shape
    hs, ws = int(H * scale_factor + 1e-6), int(W * scale_factor + 1e-6)
    if hs < 1 or ws < 1:
        raise ValueError(f"images of size {H}×{W} are too small for the refiner's scale_factor {scale_factor}")
    img = F.interpolate(state.image01.float(), size=(hs, ws), mode="bilinear", align_corners=False)
    small = F.interpolate(torch.cat([_bg_plane(cams, bg), cams], 1), size=(hs, ws), mode="bilinear",
                          align_corners=False)
    keys = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=cams.device), state.labels.to(cams.device).bool()], 1)
    probs = small.masked_fill(~keys[:, :, None, None], float("-inf")).softmax(dim=1)
    probs = probs.masked_fill(~keys[:, :, None, None], 0.0)
    refined = F.interpolate(module(img, probs), size=(H, W), mode="bilinear", align_corners=False)
    refined = refined.masked_fill(~keys[:, :, None, None], 0.0)
    return Refined(refined[:, 1:], refined[:, :1])


@dataclass
class PARArgs:
    """``par``: AFA's PAR (``wetr/PAR.py``: dilations 1-24, 10 iterations, at half resolution)."""

    dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    num_iter: int = 10
    scale_factor: float = 0.5


@register_step("refine", "par", args=PARArgs, needs=("image",),
               source="AFA (Ru et al., CVPR 2022), rulixiang/afa wetr/PAR.py, utils/camutils.py "
                      "refine_cams_with_bkg_v2",
               summary="pixel-adaptive refinement of softmax([bg; present CAMs]) with colour/position weights of "
                       "48 dilated neighbours")
def _refine_par(state: ChainState, args: PARArgs, bg: float) -> Refined:
    from wsss_blocks.refine import PixelAdaptiveRefine

    module = _cached(state, "par", lambda: PixelAdaptiveRefine(tuple(args.dilations), args.num_iter))
    return _softmax_refine(state, module, bg, args.scale_factor)


@dataclass
class VARMArgs:
    """``varm``: TSCD's VARM (``network/VARM.py``: dilations 1-24, 10 iterations, at half resolution)."""

    dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    num_iter: int = 10
    scale_factor: float = 0.5


@register_step("refine", "varm", args=VARMArgs, needs=("image",),
               source="TSCD (Xu et al., AAAI 2023), Rongtao-Xu/RepresentationLearning SCD-AAAI2023 network/VARM.py",
               summary="variation-aware refinement of softmax([bg; present CAMs]): a sharp colour kernel minus an "
                       "image-variation penalty")
def _refine_varm(state: ChainState, args: VARMArgs, bg: float) -> Refined:
    from wsss_blocks.refine import VariationAwareRefine

    module = _cached(state, "varm", lambda: VariationAwareRefine(tuple(args.dilations), args.num_iter))
    return _softmax_refine(state, module, bg, args.scale_factor)


@dataclass
class IRNArgs:
    """``irn``: IRN's IRNet training and random walk (jiwoon-ahn/irn; the released values).

    IR labels: ``conf_fg_thres`` 0.30 / ``conf_bg_thres`` 0.05 with the label CRF ``"irn"``
    (``run_sample.py:35-36``, ``step/cam_to_ir_label.py``). IRNet: torchvision ResNet-50 layout, frozen, ImageNet
    init (``net/resnet50_irn.py``); training: scale 0.5-1.5, flip, crop 512, labels downsampled ×0.25, pair radius
    10, SGD lr 0.1, weight decay 1e-4, batch 32, 3 epochs, poly 0.9 (``step/train_irn.py``, ``run_sample.py:40-44``);
    SGD's momentum slot receives 1e-4 (``misc/torchutils.py`` ``PolyOptimizer`` passes the weight decay
    positionally), kept as released. Walk: radius 5, beta 10, exp_times 8, background 0.25
    (``run_sample.py:47-52``, ``step/make_sem_seg_labels.py``).
    """

    high_threshold: float = 0.30
    low_threshold: float = 0.05
    crf_params: dict[str, Any] = field(default_factory=lambda: {"preset": "irn"})
    layers: tuple[int, ...] = (3, 4, 6, 3)
    width_per_group: int = 64
    pretrained: str | None = "resnet50-imagenet"
    scale_range: tuple[float, float] = (0.5, 1.5)
    hflip: bool = True
    crop_size: int = 512
    train_radius: int = 10
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 1e-4
    poly_power: float = 0.9
    batch_size: int = 32
    epochs: int = 3
    steps: int | None = None
    pad_to: int | None = 512
    radius: int = 5
    beta: float = 10.0
    exp_times: int = 8
    bg_score: float | None = 0.25


IRN_WALK_ARGS = ("pad_to", "radius", "beta", "exp_times", "bg_score")
"""IRN arguments that act at inference only (the walk): changing them keeps the trained IRNet."""


def _irn_backends(name: str, args: IRNArgs) -> list[tuple[str, Mapping[str, Any]]]:
    return [("pseudo.args.irn.crf_params", args.crf_params)]


def _check_irn(cfg: Any, args: IRNArgs) -> str | None:
    if importlib.util.find_spec("torchvision") is None:
        return "pseudo.refine 'irn' builds IRNet on torchvision's ResNet-50: pip install \"wsss-blocks[train]\""
    if not args.low_threshold <= args.high_threshold:
        return (f"pseudo.args.irn.low_threshold must be <= high_threshold, got {args.low_threshold} > "
                f"{args.high_threshold}")
    if args.crop_size < 8 or args.crop_size % 4:
        return (f"pseudo.args.irn.crop_size must be a multiple of 4 (the boundary map has stride 4), got "
                f"{args.crop_size}")
    need = 4 * (2 * args.train_radius - 1)  # PathIndex: the stride-4 grid must be >= 2·radius - 1 wide
    if args.train_radius < 2 or args.crop_size < need:
        return (f"pseudo.args.irn.crop_size {args.crop_size} is too small for train_radius {args.train_radius} "
                f"(pairs within the radius need a crop of at least {need} px, released 512 with radius 10)")
    if args.batch_size < 1 or args.epochs < 1 or args.lr <= 0:
        return "pseudo.args.irn needs batch_size >= 1, epochs >= 1 and lr > 0"
    return None


@register_step("refine", "irn", args=IRNArgs, needs=("image", "irn", "crf"), crf_backends=_irn_backends,
               check=_check_irn,
               source="IRN (Ahn et al., CVPR 2019), jiwoon-ahn/irn step/train_irn.py, misc/indexing.py "
                      "propagate_to_edge, step/make_sem_seg_labels.py",
               summary="train IRNet's class-boundary branch on IR labels from the CAMs, then propagate the CAMs by "
                       "a random walk over the boundary-aware affinities (background 0.25)")
def _refine_irn(state: ChainState, args: IRNArgs, bg: float) -> Refined:
    from wsss_blocks.irn import random_walk, strided_size

    boundary_fn = state.context.irn_boundary
    if boundary_fn is None:
        raise RuntimeError("pseudo.refine 'irn' needs a trained IRNet: the pseudo stage trains it in <out>/irn "
                           "(wsss_blocks.train.irn_stage.train_irn) before the masks are made")
    cams = state.cams.float()
    H, W = int(cams.shape[-2]), int(cams.shape[-1])
    small = F.interpolate(cams, size=strided_size((H, W), 4), mode="bilinear", align_corners=False)
    small = small * _present(state.labels, small)
    small = small / (small.amax(dim=(2, 3), keepdim=True) + 1e-5)  # IRN make_cam.py: per-class max + 1e-5
    boundary = boundary_fn(state.image01).to(cams.device).float()
    walked = random_walk(small, boundary, state.labels, radius=args.radius, beta=args.beta, exp_times=args.exp_times)
    x = F.interpolate(walked, scale_factor=4.0, mode="bilinear", align_corners=False)[:, :, :H, :W]
    x = x * _present(state.labels, x)
    mx = x.amax(dim=(1, 2, 3), keepdim=True)  # make_sem_seg_labels.py:44: one max over classes and pixels
    x = torch.where(mx > 0, x / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(x))
    score = bg if args.bg_score is None else float(args.bg_score)
    return Refined(x, _bg_plane(x, score))


@dataclass
class AttnAffArgs:
    """``attn_aff``: AFA's propagation with the attention affinity (``propagte_aff_cam_with_bkg``)."""

    radius: int = 8
    power: float = 2.0
    eps: float = 0.1


def _check_attention(cfg: Any, args: Any) -> str | None:
    cls = cfg.method_class()
    if not callable(getattr(cls, "attention_affinity", None)):
        return (f"pseudo.refine 'attn_aff' propagates the CAMs with the CAM network's attention affinity, but "
                f"method {cfg.method!r} has none (a method with attention_affinity(images), e.g. tscd); choose "
                f"another refiner")
    return None


@register_step("refine", "attn_aff", args=AttnAffArgs, needs=("network", "attention"), check=_check_attention,
               source="AFA (Ru et al., CVPR 2022), rulixiang/afa utils/camutils.py propagte_aff_cam_with_bkg",
               summary="propagate softmax([bg; present CAMs]) on the token grid with the network's learned "
                       "attention affinity (pairs within a radius, affinity^2, column-normalised)")
def _refine_attn_aff(state: ChainState, args: AttnAffArgs, bg: float) -> Refined:
    from wsss_blocks.correspondence import radius_mask

    method = state.context.method
    if method is None or state.images is None:
        raise RuntimeError("pseudo.refine 'attn_aff' needs the method and the normalised images")
    aff, (h, w) = method.attention_affinity(state.images)  # B×N×N on the h×w token grid
    aff = aff.float()
    cams = state.cams.float()
    B, C, H, W = cams.shape
    mask = radius_mask(h, w, args.radius, device=aff.device).to(aff.dtype)
    aff = (aff * mask).pow(float(args.power))
    aff = aff / (aff.sum(dim=1, keepdim=True) + float(args.eps))
    small = F.interpolate(torch.cat([_bg_plane(cams, bg), cams], 1), size=(h, w), mode="bilinear",
                          align_corners=False)
    keys = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=cams.device), state.labels.to(cams.device).bool()], 1)
    probs = small.masked_fill(~keys[:, :, None, None], float("-inf")).softmax(dim=1)
    probs = probs.masked_fill(~keys[:, :, None, None], 0.0).reshape(B, C + 1, h * w)
    out = torch.bmm(probs, aff.to(probs.device)).reshape(B, C + 1, h, w)
    out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)
    out = out.masked_fill(~keys[:, :, None, None], 0.0)
    return Refined(out[:, 1:], out[:, :1])


# ---------------------------------------------------------------------------------------------------- rules
@register_step("rule", "argmax",
               source="IRN seeds (Ahn et al., CVPR 2019), step/eval_cam.py; L2G gen_gt.py",
               summary="argmax([constant background pseudo.bg_score; present CAMs]); ties go to the background")
def _rule_argmax(state: ChainState, refine: Callable[[float], Refined], args: Any) -> Tensor:
    return argmax_mask(refine(state.bg_score), state.labels, state.bg_score)


@dataclass
class PPMGArgs:
    """``ppmg``: PMM's proportional pseudo-mask generation (``run.py`` stages D/E: alpha 11, ``fg_thresh`` 0.5).

    ``crf_channel_order``: the colour order of the image the per-class CRF sees, ``"bgr"`` as released
    (``cv2.imread`` in ``pipeline/refine_cam.py``) or ``"rgb"``; it changes 0.1-1.7 % of the mask pixels (the
    lattice approximation of the dense CRF is not symmetric in the channels).
    """

    alpha: float = 11.0
    posterior_threshold: float = 0.5
    foreground: Literal["crf", "threshold"] = "crf"
    crf_params: dict[str, Any] = field(default_factory=lambda: {"preset": "pmm-binary"})
    crf_channel_order: Literal["bgr", "rgb"] = "bgr"


def _ppmg_backends(name: str, args: PPMGArgs) -> list[tuple[str, Mapping[str, Any]]]:
    return [("pseudo.args.ppmg.crf_params", args.crf_params)] if args.foreground == "crf" else []


def _check_ppmg(cfg: Any, args: PPMGArgs) -> str | None:
    if args.alpha <= 0:
        return f"pseudo.args.ppmg.alpha must be > 0, got {args.alpha}"
    if not 0.0 <= args.posterior_threshold < 1.0:
        return f"pseudo.args.ppmg.posterior_threshold must lie in [0, 1), got {args.posterior_threshold}"
    return None


@register_step("rule", "ppmg", args=PPMGArgs, needs=("image", "crf"), crf_backends=_ppmg_backends,
               check=_check_ppmg,
               source="PMM (Li et al., ICCV 2021), Eli-YiLi/PMM pipline/refine_cam.py ppmg",
               summary="per-class binary dense-CRF foregrounds on [(1-A)^alpha, A], overlaps resolved by each "
                       "pixel's share of its class's CAM mass")
def _rule_ppmg(state: ChainState, refine: Callable[[float], Refined], args: PPMGArgs) -> Tensor:
    from wsss_blocks.pseudo_mask import proportional_pseudo_mask

    r = refine(state.bg_score)
    smoothed = r.cams.float().clamp(0.0, 1.0)  # Ã: the maps after the post steps (cov) and the refiner
    raw = state.raw_cams.float().clamp(0.0, 1.0)  # A: PPMG's importance uses the CAMs themselves
    image01 = state.image01.float().clamp(0.0, 1.0)
    present = state.labels.to(raw.device).bool()
    bi, ci = present.nonzero(as_tuple=True)
    crf = None
    if args.foreground == "crf":
        from wsss_blocks.crf import DenseCRF

        crf = _cached(state, "ppmg_crf", lambda: DenseCRF.from_config(args.crf_params))

    def foreground(_probs: Tensor, image_uint8: Tensor | None) -> Tensor:
        s = smoothed[bi, ci]
        probs = torch.stack([(1.0 - s).clamp_min(0.0).pow(float(args.alpha)), s], dim=1)
        if crf is None:
            pc = probs.clamp(1e-5, 1.0)
            return pc[:, 1] / pc.sum(1)
        assert image_uint8 is not None  # N×3×H×W RGB
        img = image_uint8 if args.crf_channel_order == "rgb" else image_uint8.flip(1)  # released: cv2 BGR
        return crf(None, probs.float(), image_uint8=img.permute(0, 2, 3, 1))[:, 1]

    # cv_scale 0 and fg_threshold 0 make the block's own smoothing the identity: Ã comes from the chain
    return proportional_pseudo_mask(raw, state.labels, image01, alpha=args.alpha, fg_threshold=0.0, cv_scale=0.0,
                                    posterior_threshold=args.posterior_threshold, foreground=foreground)


@dataclass
class SmafRuleArgs:
    """``smaf``: SMAF's pseudo masks (``gen_pseudo_mask.py``: argmax at 0.2, then the hard-label CRF)."""

    crf: bool = True
    crf_params: dict[str, Any] = field(default_factory=lambda: {"preset": "smaf", "backend": "auto"})


def _smaf_backends(name: str, args: SmafRuleArgs) -> list[tuple[str, Mapping[str, Any]]]:
    return [("pseudo.args.smaf.crf_params", args.crf_params)] if args.crf else []


@register_step("rule", "smaf", args=SmafRuleArgs, needs=("image", "crf"), crf_backends=_smaf_backends,
               source="SMAF (Yang et al., arXiv 2305.05841), bupt-ai-cz/SMAF gen_pseudo_mask.py lines 155-193",
               summary="argmax([pseudo.bg_score; present maps]) refined by a dense CRF started from the hard labels "
                       "(gt_prob 0.7, all C + 1 labels)")
def _rule_smaf(state: ChainState, refine: Callable[[float], Refined], args: SmafRuleArgs) -> Tensor:
    from wsss_blocks.multiscale_fusion import smaf_pseudo_mask

    r = refine(state.bg_score)
    crf = None
    if args.crf:
        from wsss_blocks.crf import DenseCRF

        crf = _cached(state, "smaf_crf", lambda: DenseCRF.from_config(args.crf_params))
    if r.bg is None:
        return smaf_pseudo_mask(r.cams, state.labels, bg_score=state.bg_score, image01=state.image01, crf=crf,
                                gt_prob=crf.gt_prob if crf is not None else 0.7)
    hard = argmax_mask(r, state.labels, state.bg_score)
    if crf is None:
        return hard
    q = crf.from_mask(state.image01, hard, gt_prob=crf.gt_prob, num_classes=state.cams.shape[1] + 1)
    return q.argmax(dim=1).long().to(hard.device)


@dataclass
class ReliableArgs:
    """``reliable``: AFA/TSCD's high/low background labels with an ignore band (0.55 / 0.35)."""

    high_threshold: float = 0.55
    low_threshold: float = 0.35
    ignore: Literal["keep", "background"] = "keep"


def _check_reliable(cfg: Any, args: ReliableArgs) -> str | None:
    if args.low_threshold > args.high_threshold:
        return (f"pseudo.args.reliable.low_threshold must be <= high_threshold, got {args.low_threshold} > "
                f"{args.high_threshold}")
    return None


@register_step("rule", "reliable", args=ReliableArgs, check=_check_reliable,
               source="AFA (Ru et al., CVPR 2022) / TSCD (Xu et al., AAAI 2023) utils/camutils.py "
                      "refine_cams_with_bkg_v2; IRN's IR labels are the same rule with 0.30 / 0.05 and crf:irn",
               summary="foreground where the high-background label says so, background where even the "
                       "low-background label does, 255 (ignore) in between")
def _rule_reliable(state: ChainState, refine: Callable[[float], Refined], args: ReliableArgs) -> Tensor:
    if state.refiner in ("par", "varm"):
        # the released form: both background scores refined in one call (refine_cams_with_bkg_v2)
        from wsss_blocks.refine import reliable_pseudo_mask

        module = refine_module(state)
        y = reliable_pseudo_mask(module, state.image01.float(), state.cams.float(), state.labels,
                                 high_threshold=args.high_threshold, low_threshold=args.low_threshold,
                                 scale_factor=state.refine_args.scale_factor)
    else:
        hi = argmax_mask(refine(args.high_threshold), state.labels, args.high_threshold)
        lo = argmax_mask(refine(args.low_threshold), state.labels, args.low_threshold)
        y = hi.clone()
        y[hi == 0] = 255
        y[(hi == 0) & (lo == 0)] = 0
    if args.ignore == "background":
        y = y.masked_fill(y == 255, 0)
    return y


def refine_module(state: ChainState) -> Any:
    """The PAR / VARM module of the chain's refiner (built once)."""
    from wsss_blocks.refine import PixelAdaptiveRefine, VariationAwareRefine

    a = state.refine_args
    cls = PixelAdaptiveRefine if state.refiner == "par" else VariationAwareRefine
    return _cached(state, state.refiner, lambda: cls(tuple(a.dilations), a.num_iter))


# ---------------------------------------------------------------------------------------------------- seg losses
@register_step("loss", "ce", source="DeepLab (deeplab-pytorch): cross-entropy, ignore 255",
               summary="cross-entropy over the pseudo mask, 255 ignored")
def _loss_ce(args: Mapping[str, Any]) -> Callable[[Tensor, Tensor], Tensor]:
    if args:
        raise ConfigError(f"seg.loss 'ce' takes no seg.loss_args, got {sorted(args)}")
    return lambda logits, target: F.cross_entropy(logits, target, ignore_index=255)


@register_step("loss", "puf", source="PMM (Li et al., ICCV 2021), Eli-YiLi/WSSS_MMSeg pretended under-fitting",
               summary="pretended under-fitting: the cross-entropy of the most confident wrong pixels is damped "
                       "(seg.loss_args: beta, k, mode)")
def _loss_puf(args: Mapping[str, Any]) -> Callable[[Tensor, Tensor], Tensor]:
    from wsss_blocks.losses import PretendedUnderFittingLoss

    try:
        return PretendedUnderFittingLoss(**dict(args))
    except TypeError as e:
        raise ConfigError(f"seg.loss_args do not fit seg.loss 'puf': {e}") from None


@register_step("loss", "balanced", source="AFA / TSCD scripts/dist_train_voc.py get_seg_loss",
               summary="½ cross-entropy over background pixels + ½ over foreground pixels (255 ignored); "
                       "seg.loss_args: empty_is_zero (default true)")
def _loss_balanced(args: Mapping[str, Any]) -> Callable[[Tensor, Tensor], Tensor]:
    from wsss_blocks.losses import balanced_seg_loss

    extra = sorted(set(args) - {"empty_is_zero"})
    if extra:
        raise ConfigError(f"seg.loss 'balanced' takes seg.loss_args empty_is_zero only, got {extra}")
    empty_is_zero = bool(args.get("empty_is_zero", True))
    return lambda logits, target: balanced_seg_loss(logits, target, empty_is_zero=empty_is_zero)


def make_seg_loss(name: str, args: Mapping[str, Any] | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """The segmentation criterion ``seg.loss`` names, built with ``seg.loss_args``.

    Examples:
        >>> crit = make_seg_loss("balanced")
        >>> float(crit(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 255]]]))) > 0
        True
    """
    return get_step("loss", name).fn(dict(args or {}))


# ---------------------------------------------------------------------------------------------------- resolution
def chain_spec(cfg: Any) -> ChainSpec:
    """Resolve and validate ``cfg.pseudo``'s chain (names canonical, arguments as dataclasses with defaults).

    Raises:
        ConfigError: an unknown step or argument, a wrongly typed value, a post step listed twice.
    """
    p = cfg.pseudo
    post = tuple(str(n) for n in p.post)
    for n in post:
        get_step("post", n)
    dup = sorted({n for n in post if post.count(n) > 1})
    if dup:
        raise ConfigError(f"pseudo.post lists {dup} more than once")
    refine = _canonical("refine", str(p.refine))
    get_step("refine", refine)
    rule = str(p.rule)
    get_step("rule", rule)
    loss = str(cfg.seg.loss)
    get_step("loss", loss)
    args_in = dict(p.args or {})
    keys = {}
    for kind, names in (("post", post), ("refine", (refine,)), ("rule", (rule,))):
        for n in names:
            keys[_args_key(kind, n)] = get_step(kind, n)
    known = {_args_key(k, n): s for k in ("post", "refine", "rule") for n, s in _STEPS[k].items()}
    args: dict[str, Any] = {}
    for key, value in args_in.items():
        step = keys.get(key) or known.get(key)
        if step is None:
            close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; steps with arguments: {sorted(known)}"
            raise ConfigError(f"unknown pseudo.args key {key!r}{hint}")
        if step.args is None:
            if value:
                raise ConfigError(f"pseudo step {key!r} takes no arguments, got pseudo.args.{key}: {value!r}")
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"pseudo.args.{key} must be a mapping of {step.args.__name__} fields, got {value!r}")
        parsed: Any = from_dict(step.args, value, path=f"pseudo.args.{key}")
        if key in keys:
            args[key] = parsed
    for key, step in keys.items():
        if step.args is not None and key not in args:
            args[key] = step.args()
    return ChainSpec(post, refine, rule, args, loss)


def chain_settings(cfg: Any) -> dict[str, Any]:
    """The chain as plain values for the stage fingerprint: steps and the arguments of the steps in use.

    Arguments are filled with their defaults, so writing a default out changes nothing; arguments of steps that
    are not in the chain do not count.
    """
    spec = chain_spec(cfg)
    return {"post": list(spec.post), "refine": spec.refine, "rule": spec.rule,
            "args": {k: to_dict(v) for k, v in sorted(spec.args.items())}}


def _need_reasons(cfg: Any, spec: ChainSpec) -> list[str]:
    from wsss_blocks.crf import DenseCRF
    from wsss_blocks.crf.pydensecrf_backend import pydensecrf_available

    reasons: list[str] = []
    for step in spec.steps():
        a = spec.args_of(step)
        where = f"pseudo.{step.kind} step {step.name!r}"
        if "saliency" in step.needs and cfg.data.saliency_dir is None:
            reasons.append(f"{where} needs saliency maps, but data.saliency_dir is not set")
        if "crf" in step.needs and step.crf_backends is not None and a is not None:
            for path, params in step.crf_backends(step.name, a):
                try:
                    DenseCRF.from_config(params)
                except (ValueError, TypeError) as e:
                    reasons.append(f"{where}: {path} is not a valid dense CRF ({e})")
                    continue
                if _crf_uses_pydensecrf(params) and not pydensecrf_available():
                    reasons.append(f"{where} runs its dense CRF on backend 'pydensecrf' ({path}), which is not "
                                   f"installed: pip install \"wsss-blocks[crf]\", or set the backend to 'torch' or "
                                   f"'auto'")
        if step.check is not None:
            r = step.check(cfg, a)
            if r:
                reasons.append(r)
    return reasons


def check_chain(cfg: Any) -> ChainSpec:
    """Validate the chain of a run config and its compatibility with the run (called when a config is loaded).

    Refused, with one message listing every reason: unknown steps or arguments; a step that needs saliency
    without ``data.saliency_dir``; a dense CRF forced onto the pydensecrf backend without pydensecrf
    installed; a refiner that needs the CAM network's attention when the method has none; ``smaf_fusion`` on a
    method whose CAMs already are SMAF's fusion; step-specific value checks. Nothing has been written when this
    raises.

    Raises:
        ConfigError: the chain cannot run with this config.
    """
    spec = chain_spec(cfg)
    reasons = _need_reasons(cfg, spec)
    if reasons:
        raise ConfigError(f"pseudo-mask chain {spec.describe()} cannot run: " + "; ".join(reasons))
    return spec


def check_moved_method_args(method: str, method_args: Mapping[str, Any]) -> None:
    """Refuse a ``method_args`` key that moved into the pseudo-mask chain, naming its new place."""
    for k in method_args:
        new = MOVED_METHOD_ARGS.get((method, str(k)))
        if new is not None:
            raise ConfigError(f"method_args.{k} of {method} moved to {new} (the pseudo-mask chain, see the "
                              f"'Ablations in one command' page of the docs)")


# ---------------------------------------------------------------------------------------------------- runtime
class PseudoChain:
    """The configured chain of a run, ready to turn CAMs into masks.

    Args:
        cfg: the run config (its ``pseudo`` section names the chain).
        method: the trained method (needed by network and attention steps).
        irn_boundary: ``image01 -> boundary`` of a trained IRNet (needed by ``refine: irn``).

    Examples:
        >>> from wsss_blocks.train.schema import load_run_config
        >>> chain = PseudoChain(load_run_config({"pseudo": {"refine": "varm", "rule": "reliable"}}))
        >>> chain.spec.describe()
        'post [] -> refine varm -> rule reliable -> loss ce'
    """

    def __init__(self, cfg: Any, method: Any = None, irn_boundary: Callable[[Tensor], Tensor] | None = None):
        self.cfg = cfg
        self.spec = chain_spec(cfg)
        self.context = ChainContext(method=method, cfg=cfg, irn_boundary=irn_boundary)

    @property
    def needs(self) -> set[str]:
        """The union of the needs of the chain's steps."""
        return {n for s in self.spec.steps() for n in s.needs}

    def state(self, cams: Tensor, labels: Tensor, image01: Tensor, bg_score: float, *, images: Tensor | None = None,
              saliency: Tensor | None = None) -> ChainState:
        """The state after the post steps (what the refiner and rule receive)."""
        refine = get_step("refine", self.spec.refine)
        st = ChainState(cams=cams.float(), raw_cams=cams.float(), labels=labels, image01=image01,
                        bg_score=float(bg_score), images=images, saliency=saliency, refiner=self.spec.refine,
                        refine_args=self.spec.args_of(refine), context=self.context)
        for name in self.spec.post:
            step = get_step("post", name)
            st = step.fn(st, self.spec.args_of(step))
        return st

    def post_cams(self, cams: Tensor, labels: Tensor, image01: Tensor, *, images: Tensor | None = None,
                  saliency: Tensor | None = None) -> Tensor:
        """The CAMs after the post steps (IRN's IR labels are made from them)."""
        return self.state(cams, labels, image01, 0.0, images=images, saliency=saliency).cams

    @torch.no_grad()
    def masks(self, cams: Tensor, labels: Tensor, image01: Tensor, bg_score: float, *, images: Tensor | None = None,
              saliency: Tensor | None = None) -> Tensor:
        """B×H×W int64 pseudo masks of fused, normalised CAMs (B×C×H×W in [0, 1], absent classes 0).

        Args:
            cams: the CAM stage's fused CAMs at image size.
            labels: B×C multi-hot image labels.
            image01: B×3×H×W RGB in [0, 1].
            bg_score: the constant background score (``pseudo.bg_score`` or the swept best one).
            images: the normalised network input (network and attention steps).
            saliency: B×1×H×W saliency maps (the ``saliency`` step).
        """
        st = self.state(cams, labels, image01, bg_score, images=images, saliency=saliency)
        refine = get_step("refine", self.spec.refine)
        cache: dict[float, Refined] = {}

        def refined(bg: float) -> Refined:
            key = round(float(bg), 9)
            if key not in cache:
                cache[key] = refine.fn(st, st.refine_args, float(bg))
            return cache[key]

        rule = get_step("rule", self.spec.rule)
        mask = rule.fn(st, refined, self.spec.args_of(rule))
        return mask.long()
