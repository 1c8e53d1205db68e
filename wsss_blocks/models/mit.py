"""Mix Transformer (MiT-B0...B5), the SegFormer encoder used by AFA and TSCD (MiT-B1).

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
NeurIPS 2021; as used (with patch-embed strides ``(4, 2, 2, 1)`` and attention maps returned) by Ru et al.,
"Learning Affinity from Attention" (AFA, CVPR 2022, ``wetr/mix_transformer.py``) and by TSCD (AAAI 2023).

Each of the four stages is an overlapping patch embedding (conv 7×7 stride 4, then 3×3 convs) + LayerNorm,
``depths[i]`` transformer blocks with spatial-reduction attention (keys/values from a ``sr_ratio``-strided
conv + LayerNorm) and a Mix-FFN (Linear -> 3×3 depth-wise conv -> GELU -> Linear), then a LayerNorm. Module
and parameter names equal the SegFormer release (``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``,
``block1.0.attn.kv.weight``, ``block1.0.attn.sr.weight``, ``block1.0.mlp.dwconv.dwconv.weight``,
``norm1.weight`` ...), so the released ImageNet ``mit_b1.pth`` loads with no key map (its ``head.*`` classifier
is ignored) and AFA/TSCD checkpoints load under the ``encoder.`` prefix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch  # noqa: F401  (namespace of the docstring examples)
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_blocks._checks import check_batch

from .registry import register_backbone

__all__ = ["MixTransformer", "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5", "mit_tiny",
           "MIT_CONFIGS"]

MIT_CONFIGS: dict[str, dict[str, tuple[int, ...]]] = {
    "mit_b0": dict(embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8), depths=(2, 2, 2, 2)),
    "mit_b1": dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(2, 2, 2, 2)),
    "mit_b2": dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 4, 6, 3)),
    "mit_b3": dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 4, 18, 3)),
    "mit_b4": dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 8, 27, 3)),
    "mit_b5": dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 6, 40, 3)),
    "mit_tiny": dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 2, 4), depths=(1, 1, 1, 2)),
}
"""Embed dims, heads, depths per variant (SegFormer ``mix_transformer.py``); all use sr (8, 4, 2, 1), mlp ratio 4,
qkv bias, LayerNorm eps 1e-6 and drop-path 0.1."""


class _DropPath(nn.Module):
    """Stochastic depth per sample (global RNG, like ``nn.Dropout``); identity in eval or at rate 0."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, stride: int, cin: int, dim: int, eps: float):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, stride, padding=patch // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-5)  # SegFormer's patch-embed norm keeps the default eps

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, sr_ratio: int, qkv_bias: bool, eps: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed dim {dim} must be divisible by the number of heads {heads}")
        self.heads, self.sr_ratio = heads, sr_ratio
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: Tensor, h: int, w: int, want_attn: bool) -> tuple[Tensor, Tensor | None]:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        src = x
        if self.sr_ratio > 1:
            src = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            src = self.norm(src)
        kv = self.kv(src).reshape(b, src.shape[1], 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        logits = q @ k.transpose(-2, -1)  # raw q·kᵀ, B×heads×N×Nk
        attn = (logits * self.scale).softmax(dim=-1)
        out = self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        raw = None
        if want_attn:
            raw = logits
            if self.sr_ratio > 1:  # AFA pools the query grid down to the key grid
                nk = logits.shape[-1]
                grid = logits.reshape(b, self.heads, h, w, nk).permute(0, 1, 4, 2, 3).reshape(b, self.heads * nk, h, w)
                grid = F.avg_pool2d(grid, self.sr_ratio, self.sr_ratio)
                raw = grid.reshape(b, self.heads, nk, grid.shape[-2] * grid.shape[-1]).transpose(-2, -1)
        return out, raw


class _DWConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class _MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, sr_ratio: int, qkv_bias: bool, drop_path: float,
                 eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, heads, sr_ratio, qkv_bias, eps)
        self.drop_path = _DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, h: int, w: int, want_attn: bool) -> tuple[Tensor, Tensor | None]:
        y, attn = self.attn(self.norm1(x), h, w, want_attn)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x), h, w))
        return x, attn


class MixTransformer(nn.Module):
    """SegFormer's hierarchical Mix Transformer encoder (MiT), four stages.

    Args:
        embed_dims: channels of the four stages.
        num_heads: attention heads per stage.
        depths: transformer blocks per stage.
        sr_ratios: spatial-reduction ratios of the keys/values per stage.
        strides: patch-embedding strides; SegFormer ``(4, 2, 2, 2)`` (output stride 32), AFA/TSCD
            ``(4, 2, 2, 1)`` (the last stage stays at 1/16; pretrained weights still load).
        mlp_ratio: Mix-FFN expansion.
        qkv_bias: biases in q and kv.
        drop_path_rate: stochastic-depth rate, linearly increasing over all blocks (released 0.1).
        norm_eps: eps of the block and stage LayerNorms (released 1e-6; the patch-embed and
            spatial-reduction norms keep 1e-5 as in the release).
        in_channels: image channels.

    Attributes:
        out_channels: ``embed_dims``; strides: cumulative strides of the four maps.

    Shape:
        - images: B×3×H×W
        - output: list of four B×embed_dims[i]×h_i×w_i maps; `forward_with_attention` also returns a list with
          one raw attention-logit tensor per block (q·kᵀ before scaling and softmax, B×heads×N_k×N_k; for
          ``sr_ratio > 1`` the query grid is average-pooled to the key grid, as in AFA).

    Examples:
        >>> enc = mit_tiny()
        >>> feats, attns = enc.forward_with_attention(torch.randn(1, 3, 32, 32))
        >>> [tuple(f.shape[1:]) for f in feats], tuple(attns[-1].shape)
        ([(8, 8, 8), (16, 4, 4), (24, 2, 2), (32, 1, 1)], (1, 4, 1, 1))
    """

    def __init__(self, embed_dims: Sequence[int] = (64, 128, 320, 512), num_heads: Sequence[int] = (1, 2, 5, 8),
                 depths: Sequence[int] = (2, 2, 2, 2), sr_ratios: Sequence[int] = (8, 4, 2, 1),
                 strides: Sequence[int] = (4, 2, 2, 2), mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.1, norm_eps: float = 1e-6, in_channels: int = 3):
        super().__init__()
        for name, seq in (("embed_dims", embed_dims), ("num_heads", num_heads), ("depths", depths),
                          ("sr_ratios", sr_ratios), ("strides", strides)):
            if len(seq) != 4:
                raise ValueError(f"{name} must have 4 entries (one per stage), got {tuple(seq)}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must lie in [0, 1), got {drop_path_rate}")
        self.embed_dims = tuple(int(d) for d in embed_dims)
        self.depths = tuple(int(d) for d in depths)
        self.num_heads = tuple(int(h) for h in num_heads)
        self.stride_cfg = tuple(int(s) for s in strides)
        n_blocks = sum(self.depths)
        dpr = [drop_path_rate * i / (n_blocks - 1) if n_blocks > 1 else 0.0 for i in range(n_blocks)]
        self.in_channels = int(in_channels)
        cur, cin = 0, in_channels
        for i in range(4):
            patch = 7 if i == 0 else 3
            self.add_module(f"patch_embed{i + 1}",
                            _PatchEmbed(patch, self.stride_cfg[i], cin, self.embed_dims[i], norm_eps))
            self.add_module(f"block{i + 1}", nn.ModuleList([
                _Block(self.embed_dims[i], self.num_heads[i], mlp_ratio, int(sr_ratios[i]), qkv_bias,
                       dpr[cur + j], norm_eps) for j in range(self.depths[i])]))
            self.add_module(f"norm{i + 1}", nn.LayerNorm(self.embed_dims[i], eps=norm_eps))
            cur += self.depths[i]
            cin = self.embed_dims[i]
        self.out_channels: tuple[int, ...] = self.embed_dims
        acc, strides_out = 1, []
        for s in self.stride_cfg:
            acc *= s
            strides_out.append(acc)
        self.strides: tuple[int, ...] = tuple(strides_out)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> list[Tensor]:
        """The four stage maps (see the class docstring)."""
        return self._run(images, False)[0]

    def forward_with_attention(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The four stage maps and the raw attention logits of every block (see the class docstring)."""
        return self._run(images, True)

    def _run(self, images: Tensor, with_attention: bool) -> tuple[list[Tensor], list[Tensor]]:
        check_batch(images, "images", self.in_channels)
        b = images.shape[0]
        x, feats, attns = images, [], []
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            sr = getattr(self, f"block{i}")[0].attn.sr_ratio
            if h < sr or w < sr:
                raise ValueError(f"images of size {images.shape[-2]}×{images.shape[-1]} are too small for this MiT: "
                                 f"stage {i} is {h}×{w}, smaller than its spatial-reduction ratio {sr}; use larger "
                                 f"images (at least 32 px per side for the released configurations)")
            for blk in getattr(self, f"block{i}"):
                x, attn = blk(x, h, w, with_attention)
                if attn is not None:
                    attns.append(attn)
            x = getattr(self, f"norm{i}")(x)
            x = x.reshape(b, h, w, x.shape[-1]).permute(0, 3, 1, 2).contiguous()
            feats.append(x)
        return feats, attns


def _build(name: str, **kwargs: Any) -> MixTransformer:
    cfg: dict[str, Any] = dict(MIT_CONFIGS[name])
    cfg.update(kwargs)
    return MixTransformer(**cfg)


def mit_b0(**kwargs: Any) -> MixTransformer:
    """MiT-B0 (3.3 M parameters). Keyword arguments override [`MixTransformer`][] defaults."""
    return _build("mit_b0", **kwargs)


def mit_b1(**kwargs: Any) -> MixTransformer:
    """MiT-B1 (13.2 M parameters), the AFA/TSCD encoder. For their setting pass ``strides=(4, 2, 2, 1)``."""
    return _build("mit_b1", **kwargs)


def mit_b2(**kwargs: Any) -> MixTransformer:
    """MiT-B2 (24.2 M parameters)."""
    return _build("mit_b2", **kwargs)


def mit_b3(**kwargs: Any) -> MixTransformer:
    """MiT-B3 (44.0 M parameters)."""
    return _build("mit_b3", **kwargs)


def mit_b4(**kwargs: Any) -> MixTransformer:
    """MiT-B4 (60.8 M parameters)."""
    return _build("mit_b4", **kwargs)


def mit_b5(**kwargs: Any) -> MixTransformer:
    """MiT-B5 (81.4 M parameters)."""
    return _build("mit_b5", **kwargs)


def mit_tiny(**kwargs: Any) -> MixTransformer:
    """A 4-stage MiT with 8-32 channels for CPU tests (same module names as MiT-B1, other shapes)."""
    kwargs.setdefault("drop_path_rate", 0.0)
    return _build("mit_tiny", **kwargs)


def _registry_builder(variant: Any) -> Any:
    def build(output_stride: int | None = None, **kwargs: Any) -> MixTransformer:
        if output_stride is not None:
            strides = {32: (4, 2, 2, 2), 16: (4, 2, 2, 1)}
            if output_stride not in strides:
                raise ValueError(f"MiT output_stride must be 16 or 32, got {output_stride}")
            kwargs.setdefault("strides", strides[output_stride])
        return variant(**kwargs)

    return build


for _variant in (mit_b0, mit_b1, mit_b2, mit_b3, mit_b4, mit_b5, mit_tiny):
    register_backbone(_variant.__name__, _registry_builder(_variant), ignore_unexpected=("head.",))
