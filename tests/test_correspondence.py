"""Tests for wsss_blocks.correspondence: SCD (TSCD), L_ER and the AFA affinity-from-attention loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_blocks.correspondence import (
    SCD_START_ITER,
    SCD_WEIGHT,
    AffinityFromAttentionLoss,
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


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _views(seed=0, b=2, ct=5, cs=6, dtype=torch.float32):
    g = _g(seed)
    return (torch.rand(b, ct, 16, 16, generator=g, dtype=dtype), torch.rand(b, ct, 7, 9, generator=g, dtype=dtype),
            torch.randn(b, cs, 12, 12, generator=g, dtype=dtype), torch.randn(b, cs, 5, 6, generator=g, dtype=dtype))


def _released_scd(t1, t2, s1, s2, c1, c2):
    """The released corr_loss written out from SCD ``utils/corrloss.py``.

    STEGO helper, pointwise, zero clamp, shift 0.
    """
    def sample(t, c):
        return F.grid_sample(t, c.permute(0, 2, 1, 3), padding_mode="border", align_corners=True)

    def corr(a, b):
        return torch.einsum("nchw,ncij->nhwij", F.normalize(a, dim=1, eps=1e-10), F.normalize(b, dim=1, eps=1e-10))

    fd = corr(sample(t1, c1), sample(t2, c2))
    old = fd.mean()
    fd = fd - fd.mean([3, 4], keepdim=True)
    fd = fd - fd.mean() + old
    cd = corr(sample(s1, c1), sample(s2, c2))
    return (-cd.clamp(0) * fd).mean()


# --------------------------------------------------------------------------- SCD
def test_scd_equals_released_formula_with_given_points():
    ta, tb, sa, sb = _views()
    ca, cb = sample_points(2, 6, generator=_g(1)), sample_points(2, 6, generator=_g(2))
    ours = self_correspondence_loss(ta, tb, sa, sb, ca, cb)
    torch.testing.assert_close(ours, _released_scd(ta, tb, sa, sb, ca, cb), rtol=0, atol=1e-7)
    assert float(ours) != 0.0


def test_scd_hand_checked_two_points():
    # One point per view (N = 1): F = cos(t, t') is centred to itself, C = cos(s, s') clamped at 0.
    ta = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3)
    tb = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3)
    sa = torch.tensor([3.0, 4.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 3, 3)
    sb = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 3, 3)
    pts = torch.zeros(1, 1, 1, 2)
    loss = self_correspondence_loss(ta, tb, sa, sb, pts, pts)
    assert float(loss) == pytest.approx(-(4 / 5) * (1 / 2**0.5), abs=1e-6)
    loss_neg = self_correspondence_loss(ta, tb, sa, -sb, pts, pts)  # C = -0.8 -> clamped: no loss
    assert float(loss_neg) == 0.0
    loss_unclamped = self_correspondence_loss(ta, tb, sa, -sb, pts, pts, zero_clamp=False, shift=0.2)
    assert float(loss_unclamped) == pytest.approx((4 / 5) * (1 / 2**0.5 - 0.2), abs=1e-6)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), kt=st.floats(0.01, 100.0), ks=st.floats(0.01, 100.0))
def test_scd_invariant_to_positive_rescaling(seed, kt, ks):
    ta, tb, sa, sb = _views(seed)
    ca, cb = sample_points(2, 5, generator=_g(seed + 1)), sample_points(2, 5, generator=_g(seed + 2))
    base = self_correspondence_loss(ta, tb, sa, sb, ca, cb)
    scaled = self_correspondence_loss(ta * kt, tb * kt, sa * ks, sb * ks, ca, cb)
    torch.testing.assert_close(scaled, base, rtol=1e-5, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_scd_centred_rows_have_the_batch_mean(seed):
    ta, tb, sa, sb = _views(seed)
    ca, cb = sample_points(2, 5, generator=_g(seed + 1)), sample_points(2, 5, generator=_g(seed + 2))
    raw = self_correspondence_loss_detailed(ta, tb, sa, sb, ca, cb, pointwise_center=False).teacher_corr
    out = self_correspondence_loss_detailed(ta, tb, sa, sb, ca, cb)
    centred, cd = out.teacher_corr, out.student_corr
    assert torch.equal(out.loss, self_correspondence_loss(ta, tb, sa, sb, ca, cb))
    row_means = centred.mean(dim=(3, 4))
    torch.testing.assert_close(row_means, torch.full_like(row_means, float(raw.mean())), rtol=0, atol=1e-6)
    assert centred.shape == cd.shape == (2, 5, 5, 5, 5)
    assert bool((raw >= 0).all())
    assert bool((raw <= 1 + 1e-6).all())


def test_scd_gradient_only_into_students():
    ta, tb, sa, sb = (t.requires_grad_() for t in _views())
    loss = SelfCorrespondenceDistillation(num_samples=6)(ta, tb, sa, sb, generator=_g())
    loss.backward()
    assert ta.grad is None
    assert tb.grad is None
    assert sa.grad is not None
    assert sb.grad is not None
    assert bool(sa.grad.abs().sum() > 0)
    assert bool(sb.grad.abs().sum() > 0)


def test_scd_no_gradient_through_negative_student_pairs():
    ta, tb, _, _ = _views()
    sa = torch.rand(2, 6, 12, 12).add(0.1).requires_grad_()  # positive orthant
    sb = (-torch.rand(2, 6, 5, 6) - 0.1).requires_grad_()  # negative orthant: every C < 0
    loss = self_correspondence_loss(ta, tb, sa, sb, generator=_g(), num_samples=4)
    loss.backward()
    assert loss.item() == 0.0
    assert float(sa.grad.abs().sum()) == 0.0
    assert float(sb.grad.abs().sum()) == 0.0


def _linear_maps(channels, h, w, sign=1.0):
    """Maps affine in the normalised coordinates: bilinear sampling is exact at any resolution."""
    ys = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    xs = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    a = torch.arange(1, channels + 1, dtype=torch.float32).view(1, -1, 1, 1)
    return sign * (2.0 + 0.3 * a * xs - 0.2 * ys / a + 0.0 * ys * xs).expand(1, channels, h, w).contiguous()


def test_scd_views_at_different_resolutions():
    ca, cb = sample_points(1, 5, generator=_g(1)), sample_points(1, 5, generator=_g(2))
    t_hi, s_hi = _linear_maps(4, 33, 33), _linear_maps(5, 29, 31)
    ref = self_correspondence_loss(t_hi, t_hi, s_hi, s_hi, ca, cb)
    # Same content, view b at a lower resolution (and a third size for its student): same loss.
    lo = self_correspondence_loss(t_hi, _linear_maps(4, 10, 10), s_hi, _linear_maps(5, 3, 4), ca, cb)
    torch.testing.assert_close(lo, ref, rtol=1e-5, atol=1e-6)
    # A generic case with four different sizes runs and is finite.
    ta, tb, sa, sb = _views()
    assert torch.isfinite(self_correspondence_loss(ta, tb, sa, sb, generator=_g()))


def test_scd_gradcheck_float64():
    ta, tb, sa, sb = _views(dtype=torch.float64, b=1, ct=3, cs=3)
    sa, sb = sa[:, :, :4, :4].contiguous().requires_grad_(), sb[:, :, :3, :3].contiguous().requires_grad_()
    ca, cb = sample_points(1, 2, generator=_g(1), dtype=torch.float64), sample_points(1, 2, generator=_g(2),
                                                                                     dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: self_correspondence_loss(ta, tb, a, b, ca, cb), (sa, sb))
    assert self_correspondence_loss(ta, tb, sa, sb, ca, cb).dtype == torch.float64


def test_scd_generator_determinism_and_module_schedule():
    ta, tb, sa, sb = _views()
    scd = SelfCorrespondenceDistillation(num_samples=5)
    a = scd(ta, tb, sa, sb, generator=_g(3))
    b = scd(ta, tb, sa, sb, generator=_g(3))
    c = scd(ta, tb, sa, sb, generator=_g(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (SCD_WEIGHT, SCD_START_ITER) == (0.1, 2000)
    assert scd.weight_at(0) == scd.weight_at(2000) == 0.0
    assert scd.weight_at(2001) == 0.1
    assert scd_weight(10, weight=0.5, start_iter=5) == 0.5
    assert "num_samples=5" in repr(scd)
    assert sample_points(3, 4, generator=_g()).abs().max() <= 1


def test_scd_half_inputs_computed_in_float32():
    ta, tb, sa, sb = _views()
    ca, cb = sample_points(2, 4, generator=_g(1)), sample_points(2, 4, generator=_g(2))
    out = self_correspondence_loss(ta.half(), tb.half(), sa.half(), sb.half(), ca, cb)
    assert out.dtype == torch.float32
    ref = self_correspondence_loss(ta.half().float(), tb.half().float(), sa.half().float(), sb.half().float(), ca, cb)
    torch.testing.assert_close(out, ref)


def test_scd_bad_input():
    ta, tb, sa, sb = _views()
    with pytest.raises(ValueError, match="teacher_a and student_b must have the same batch size"):
        self_correspondence_loss(ta, tb, sa, sb[:1])
    with pytest.raises(ValueError, match="teacher_a and teacher_b must have the same channels"):
        self_correspondence_loss(ta, tb[:, :3], sa, sb)
    with pytest.raises(ValueError, match="student_a and student_b must have the same channels"):
        self_correspondence_loss(ta, tb, sa, sb[:, :3])
    with pytest.raises(ValueError, match=r"coords_a must have shape B×N×N×2"):
        self_correspondence_loss(ta, tb, sa, sb, coords_a=torch.zeros(2, 4, 4, 3))
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        SelfCorrespondenceDistillation(num_samples=0)
    with pytest.raises(ValueError, match="teacher_a contains non-finite values"):
        self_correspondence_loss(ta / 0, tb, sa, sb)
    with pytest.raises(ValueError, match=r"student_a must have shape B×C×H×W"):
        self_correspondence_loss(ta, tb, sa[0], sb)


# --------------------------------------------------------------------------- L_ER
def test_equivariant_regularization_values():
    cams = torch.zeros(1, 3, 11, 11)
    cams[:, 0] = 1.0
    cams[:, 2] = 0.5
    small = torch.zeros(1, 3, 4, 4)
    assert float(equivariant_regularization(cams, small)) == pytest.approx(0.25)  # channel 0 skipped
    assert float(equivariant_regularization(cams, small, skip_first_channel=False)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="must agree in batch and channels"):
        equivariant_regularization(cams, small[:, :2])


# --------------------------------------------------------------------------- affinity from attention
def _released_radius_mask(h, w, radius):
    hw = h * w
    mask = torch.zeros(hw, hw)
    for i in range(hw):
        r, c = divmod(i, w)
        for i1 in range(max(0, r - radius), min(h, r + radius + 1)):
            for i2 in range(max(0, c - radius), min(w, c + radius + 1)):
                mask[i, i1 * w + i2] = 1
                mask[i1 * w + i2, i] = 1
    return mask.bool()


@pytest.mark.parametrize(("h", "w", "radius"), [(4, 5, 1), (6, 3, 2), (5, 5, 8)])
def test_radius_mask_equals_released_loops(h, w, radius):
    assert torch.equal(radius_mask(h, w, radius), _released_radius_mask(h, w, radius))


def test_affinity_labels_hand_checked():
    y = torch.tensor([[[0, 0, 1, 255]]])  # 1×4 grid, stride 1
    lab = attention_affinity_targets(y, radius=2, stride=1)
    assert lab[0].tolist() == [
        [1, 1, 0, 255],
        [1, 1, 0, 255],
        [0, 0, 1, 255],
        [255, 255, 255, 255],
    ]
    # Nearest downsampling by the stride picks the top-left pixel of each cell.
    big = torch.zeros(1, 32, 32, dtype=torch.long)
    big[:, :16, :16] = 3
    big[:, 0, 16] = 3  # top-left pixel of cell (0, 1)
    small_lab = attention_affinity_targets(big, radius=8, stride=16)
    assert small_lab.shape == (1, 4, 4)
    assert small_lab[0, 0].tolist() == [1, 1, 0, 0]


def test_affinity_loss_hand_checked_and_gradcheck():
    y = torch.tensor([[[0, 0, 1, 255]]])
    aff = torch.tensor([[[0.9, 0.8, 0.3, 0.5], [0.7, 0.95, 0.1, 0.5], [0.2, 0.4, 0.6, 0.5], [0.5] * 4]])
    # Positives (label 1): (0,0) (0,1) (1,0) (1,1) (2,2); negatives: (0,2) (1,2) (2,0) (2,1).
    pos = (0.1 + 0.2 + 0.3 + 0.05 + 0.4) / (5 + 1)
    neg = (0.3 + 0.1 + 0.2 + 0.4) / (4 + 1)
    loss_fn = AffinityFromAttentionLoss(radius=2, stride=1)
    assert float(loss_fn(aff, y)) == pytest.approx(0.5 * pos + 0.5 * neg, abs=1e-6)
    aff64 = aff.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: affinity_from_attention_loss(a, y, 2, 1), (aff64,))


def test_affinity_loss_released_defaults_and_bad_input():
    g = _g()
    y = torch.randint(0, 3, (2, 64, 48), generator=g)
    aff = torch.rand(2, 12, 12, generator=g)
    loss = AffinityFromAttentionLoss()(aff, y)
    assert 0 < float(loss) < 1
    with pytest.raises(ValueError, match=r"aff_pred must have shape B×n×n with n = \(64//16\)·\(48//16\) = 12"):
        AffinityFromAttentionLoss()(torch.rand(2, 16, 16), y)
    with pytest.raises(ValueError, match=r"aff_pred must lie in \[0.0, 1.0\]"):
        AffinityFromAttentionLoss()(aff * 3, y)
    with pytest.raises(TypeError, match="pseudo_mask must be an integer tensor"):
        AffinityFromAttentionLoss()(aff, y.float())
    with pytest.raises(ValueError, match="aff_pred and pseudo_mask must have the same batch size"):
        AffinityFromAttentionLoss()(aff[:1], y)
    with pytest.raises(ValueError, match="radius must be an int >= 0"):
        AffinityFromAttentionLoss(radius=-1)
