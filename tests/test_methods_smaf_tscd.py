"""Trainer methods SMAF and TSCD: released config values, training steps, end-to-end synthetic runs.

The expected values are the released ones (bupt-ai-cz/SMAF, the TSCD and AFA repositories). EPS values (SMAF's
first stage) come from halbielee/EPS ``script/voc12_eps.sh``, ``main.py`` and ``metadata/dataset.py``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from wsss_blocks.losses import balanced_seg_loss, dense_energy_loss, eps_saliency_loss
from wsss_blocks.ops import boxes_from_mask
from wsss_blocks.train.methods import PhaseContext, get_method
from wsss_blocks.train.methods.smaf import SMAFMethod
from wsss_blocks.train.methods.tscd import TSCDMethod
from wsss_blocks.train.schema import load_run_config

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# ------------------------------------------------------------------------------------------------ (a) released values
# SMAF VOC: line numbers in the comments.
SMAF_VOC = {
    "cam.backbone": "resnet38d",
    "cam.optimizer": "sgd",
    "cam.lr": 0.01,
    "cam.batch_size": 8,
    "cam.steps": 20000,                       # (max_iters, both phases; EPS --max_iters 20000)
    "cam.weight_decay": 5e-4,
    "cam.momentum": 5e-4,                     # (PolyOptimizer quirk)
    "cam.poly_power": 0.9,
    "cam.crop_size": 448,
    "cam.resize_long": (256, 512),
    "cam.interpolation": "bicubic",
    "cam.hflip": True,
    "cam.color_jitter": None,                 # (self-training: no jitter)
    "data.train_split": "train_aug",
    "data.cam_eval_split": "train",
    "data.normalize": "imagenet",
    "pseudo.scales": (0.5, 1.0, 1.5, 2.0),
    "pseudo.flip": True,
    "pseudo.reduce": "sum",
    "pseudo.bg_score": 0.2,
    "seg.model": "deeplabv2",
    "seg.backbone": "resnet101",
    "seg.lr": 2.5e-4,
    "seg.momentum": 0.9,
    "seg.weight_decay": 5e-4,
    "seg.poly_power": 0.9,
    "seg.batch_size": 5,                      # (5 x iter_size 2)
    "seg.accumulate": 2,
    "seg.steps": 20000,
    "seg.crop_size": 321,
    "seg.scales": (0.5, 0.75, 1.0, 1.25, 1.5),
    "seg.crf": True,
    "runtime.seed": 1337,
    "method_args.head": "smaf",
    "method_args.head_channels": 128,
    "method_args.frozen": ("conv1a", "b2", "b2_1", "b2_2"),
    "method_args.freeze_bn": True,
    "method_args.target_mode": "offline",     # (fused once per full image) (cut per crop)
    "method_args.offline_dtype": "float32",
    "method_args.offline_align_corners": True,
    "method_args.target_scales": (0.5, 1.0, 1.5, 2.0),
    "method_args.target_flip": True,          # (8 passes)
    "method_args.target_image_interpolation": "bicubic",
    "method_args.target_bg_score": 0.2,
    "method_args.target_scale_factor": 0.25,  # (448 -> 112)
    "method_args.loss_weight": 100.0,
    "pseudo.rule": "smaf",                    # gen_pseudo_mask.py: argmax at 0.2, then the hard-label CRF
    "pseudo.refine": "none",
    "chain.smaf.crf": True,
    "chain.smaf.crf_params": {"preset": "smaf", "backend": "auto"},
    "method_args.eps_saliency": True,
    "method_args.eps_tau": 0.4,               # EPS script/voc12_eps.sh --tau 0.4
    "method_args.eps_lambda": 0.5,            # EPS main.py --lam 0.5
    "method_args.eps_color_jitter": (0.3, 0.3, 0.3, 0.1),  # EPS metadata/dataset.py L76
}
# SMAF pseudo-mask CRF: (unary_from_labels gt_prob 0.7; Gaussian 3/3; bilateral 50/5/10; 10 it.)
SMAF_CRF = {"iterations": 10, "pos_xy": 3.0, "pos_w": 3.0, "bi_xy": 50.0, "bi_rgb": 5.0, "bi_w": 10.0, "gt_prob": 0.7}
# deeplab-pytorch test CRF:
DEEPLAB_CRF = {"iterations": 10, "pos_w": 3.0, "pos_xy": 1.0, "bi_w": 4.0, "bi_xy": 67.0, "bi_rgb": 3.0}

# TSCD VOC: line numbers.
TSCD_VOC = {
    "cam.backbone": "mit_b1",
    "cam.optimizer": "adamw",
    "cam.lr": 6e-5,
    "cam.betas": (0.9, 0.999),
    "cam.weight_decay": 0.01,
    "cam.warmup_steps": 1500,
    "cam.warmup_ratio": 1e-6,
    "cam.poly_power": 1.0,
    "cam.steps": 20000,
    "cam.batch_size": 4,                      # (2 per GPU x 2)
    "cam.crop_size": 512,
    "cam.scale_range": (0.5, 2.0),
    "cam.hflip": True,
    "cam.color_jitter": None,
    "data.train_split": "train_aug",
    "pseudo.scales": (1.0, 0.5, 1.5),
    "pseudo.flip_reduce": "max",
    "pseudo.reduce": "sum",
    "pseudo.bg_score": 0.45,
    "seg.source": "method",                   # end to end
    "seg.eval_scales": (1.0, 0.5, 0.75),
    "seg.eval_flip": True,
    "seg.eval_flip_reduce": "mean",
    "seg.eval_scale_reduce": "max",
    "seg.eval_resize_long": 512,
    "seg.crf": True,
    "runtime.seed": 1,
    "runtime.deterministic": True,
    "runtime.sync_bn": True,
    "method_args.strides": (4, 2, 2, 1),
    "method_args.embed_dim": 256,
    "method_args.drop_path_rate": 0.1,
    "method_args.pooling": "gmp",
    "method_args.attn_symmetric": False,
    "method_args.cam_scales": (1.0, 0.5, 1.5),
    "method_args.cam_iters": 2000,
    "method_args.cls_weight": 1.0,
    "method_args.seg_weight": 0.1,
    "method_args.aff_weight": 0.1,
    "method_args.reg_weight": 0.01,
    "method_args.scd_weight": 0.1,
    "method_args.er_weight": 0.1,
    "method_args.high_threshold": 0.55,
    "method_args.low_threshold": 0.35,
    "method_args.refiner": "varm",
    "pseudo.refine": "varm",                  # stage-2 masks: the VARM reliable labels
    "pseudo.rule": "reliable",
    "chain.varm.dilations": (1, 2, 4, 8, 12, 24),
    "chain.varm.num_iter": 10,
    "chain.varm.scale_factor": 0.5,
    "chain.reliable.high_threshold": 0.55,
    "chain.reliable.low_threshold": 0.35,
    "method_args.refine_num_iter": 10,
    "method_args.refine_dilations": (1, 2, 4, 8, 12, 24),
    "method_args.refine_scale_factor": 0.5,   # (half resolution)
    "method_args.aff_radius": 8,
    "method_args.scd_view_scale_factor": 0.3,
    "method_args.scd_num_samples": 40,
    "method_args.er_grad": False,
    "method_args.seg_align_corners": True,
    "method_args.reg_energy_weight": 1e-7,
    "method_args.reg_sigma_rgb": 15.0,
    "method_args.reg_sigma_xy": 100.0,
    "method_args.reg_scale_factor": 0.5,
}
# AFA/TSCD test CRF:
AFA_CRF = {"iterations": 10, "pos_w": 3.0, "pos_xy": 3.0, "bi_w": 4.0, "bi_xy": 64.0, "bi_rgb": 5.0}
# COCO: (AFA coco_attn_reg.yaml); batch 8 = 2 x 4 processes (AFA launch script)
TSCD_COCO = {**{k: v for k, v in TSCD_VOC.items() if k not in ("cam.steps", "cam.batch_size", "method_args.cam_iters",
                                                                   "data.train_split")},
             "cam.steps": 80000, "cam.batch_size": 8, "method_args.cam_iters": 5000, "data.num_classes": 80,
             "data.dataset": "coco", "data.train_split": "train"}


def _get(cfg, dotted):
    obj = cfg
    parts = dotted.split(".")
    if parts[0] == "method_args":
        obj = cfg.method_config()
        parts = parts[1:]
    elif parts[0] == "chain":  # the arguments of a pseudo-mask chain step
        from wsss_blocks.train.pipeline import chain_spec

        obj = chain_spec(cfg).args[parts[1]]
        parts = parts[2:]
    for p in parts:
        obj = getattr(obj, p)
    return tuple(obj) if isinstance(obj, list) else obj


@pytest.mark.parametrize(("name", "expected"),
                         [("smaf_voc", SMAF_VOC), ("tscd_voc", TSCD_VOC), ("tscd_coco", TSCD_COCO)])
def test_released_config_values(name, expected):
    cfg = load_run_config(name)
    wrong = {k: (_get(cfg, k), v) for k, v in expected.items()
             if not (_get(cfg, k) == v or (isinstance(v, float) and math.isclose(_get(cfg, k), v, rel_tol=1e-9)))}
    assert not wrong, f"{name}: values differ from the release (got, expected): {wrong}"


def test_released_crf_values():
    from wsss_blocks.crf import DenseCRF

    smaf = load_run_config("smaf_voc")
    from wsss_blocks.train.pipeline import chain_spec

    crf = DenseCRF.from_config(chain_spec(smaf).args["smaf"].crf_params)
    assert {k: getattr(crf, k) for k in SMAF_CRF} == SMAF_CRF

    def seg_crf(cfg):
        crf = DenseCRF.from_config(cfg.seg.crf_params)
        return {k: getattr(crf, k) for k in DEEPLAB_CRF}

    assert seg_crf(smaf) == DEEPLAB_CRF
    for name in ("tscd_voc", "tscd_coco"):
        assert seg_crf(load_run_config(name)) == AFA_CRF


def test_no_smaf_coco_config_and_paper_numbers():
    from wsss_blocks.train.config import list_packaged_configs

    names = set(list_packaged_configs())
    assert {"smaf_voc", "smaf_synthetic", "tscd_voc", "tscd_coco", "tscd_synthetic"} <= names
    assert "smaf_coco" not in names  # SMAF reports no COCO number
    assert get_method("smaf").paper_numbers["val_miou"] == 72.4
    assert get_method("smaf").paper_numbers["pseudo_miou"] == 73.88
    assert get_method("tscd").paper_numbers["val_miou"] == 67.3
    assert get_method("tscd").paper_numbers_by_dataset["coco"]["val_miou"] == 40.1


def test_registry_flags():
    smaf, tscd = get_method("smaf"), get_method("tscd")
    assert smaf.phases == ("eps", "self_train")
    assert not smaf.has_segmentation
    assert tscd.phases == ("cam",)
    assert tscd.has_segmentation
    assert tscd.cam_normalization == "minmax"


# ------------------------------------------------------------------------------------------------ helpers
def _smaf(**args):
    base = {"frozen": ["conv1a"], "freeze_bn": False, "eps_saliency": False, "target_scales": [1.0, 0.5]}
    base.update(args)
    cfg = load_run_config({"method": "smaf", "cam": {"backbone": "resnet38d_tiny", "crop_size": 32},
                           "data": {"saliency_dir": "SaliencyMaps"}, "method_args": base})
    return SMAFMethod(cfg, cfg.method_config(), 3)


def _tscd(**args):
    base = {"embed_dim": 16, "scd_num_samples": 6, "cam_iters": 0, "drop_path_rate": 0.0}
    base.update(args)
    cfg = load_run_config({"method": "tscd", "cam": {"backbone": "mit_tiny", "crop_size": 64,
                                                     "backbone_kwargs": {"sr_ratios": [2, 1, 1, 1]}},
                           "method_args": base})
    return TSCDMethod(cfg, cfg.method_config(), 3)


def _ctx(phase, index):
    return PhaseContext(phase=phase, index=index, total_steps=10, out_dir=None, device=torch.device("cpu"))


def _batch(b=2, s=32, c=3, pad=0):
    g = torch.Generator().manual_seed(1)
    img01 = torch.rand(b, 3, s, s, generator=g)
    valid = torch.ones(b, s, s, dtype=torch.bool)
    if pad:
        valid[:, :, s - pad:] = False
        img01 = img01 * valid[:, None]
    labels = torch.zeros(b, c)
    labels[0, 0] = 1
    labels[1, [1, 2]] = 1
    return {"image": (img01 - 0.45) / 0.225 * valid[:, None], "image01": img01, "labels": labels, "valid": valid,
            "saliency": (img01.mean(1, keepdim=True) > 0.5).float()}


def _grads(module):
    return {n: p.grad for n, p in module.named_parameters()}


# ------------------------------------------------------------------------------------------------ (b) SMAF steps
def test_eps_saliency_loss_hand_values():
    # all-zero logits: P = 1/3 everywhere, round(P) = 0 -> overlap 0 -> the present class joins the background:
    # bg = 1/3 + 1/3, fg = 0, prediction = 0.5 * 0 + 0.5 * (1 - 2/3) = 1/6
    loss = eps_saliency_loss(torch.zeros(1, 3, 2, 2), torch.ones(1, 1, 2, 2), torch.tensor([[1.0, 0.0]]))
    assert float(loss) == pytest.approx((5 / 6) ** 2, abs=1e-6)
    # class 0 confident exactly on the salient half -> overlap 1 > 0.4 -> foreground
    z = torch.zeros(1, 3, 2, 2)
    z[0, 0, :, 0] = 20.0
    z[0, 0, :, 1] = -20.0
    sal = torch.zeros(1, 1, 2, 2)
    sal[..., 0] = 1.0
    loss = eps_saliency_loss(z, sal, torch.tensor([[1.0, 0.0]]))
    # salient column: pred ~ 0.5*1 + 0.5*(1 - 0) = 1 (= S); other column: P = (0, 1/2, 1/2): pred = 0.5*(1-0.5)
    assert float(loss) == pytest.approx(0.5 * 0.25 ** 2, abs=1e-6)


def test_eps_saliency_loss_gradcheck_and_bad_input():
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(1, 3, 3, 3, generator=g, dtype=torch.float64) * 2).requires_grad_()
    sal = torch.rand(1, 1, 3, 3, generator=g, dtype=torch.float64)
    lab = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: eps_saliency_loss(x, sal, lab), (z,))
    with pytest.raises(ValueError, match="labels must have shape"):
        eps_saliency_loss(z, sal, torch.ones(1, 3))


def test_smaf_eps_phase_gradients():
    m = _smaf(eps_saliency=True).train()
    m.on_phase_start(_ctx("eps", 0))
    out = m.training_step(_batch(), 0, 10)
    assert torch.isfinite(out["loss"])
    assert set(out) == {"loss", "loss_cls", "loss_sal"}
    out["loss"].backward()
    gr = _grads(m.net)
    assert gr["backbone.conv1a.weight"] is None  # frozen
    for k in ("fc8.weight", "cov_feat.weight", "backbone.b7.conv_branch2b2.weight"):
        assert gr[k] is not None, k
        assert gr[k].abs().sum() > 0, k
    assert m.teacher is None


def test_smaf_eps_phase_without_saliency_is_classification_only():
    m = _smaf(eps_saliency=False, eps_color_jitter=None).train()
    m.on_phase_start(_ctx("eps", 0))
    b = _batch()
    out = m.training_step(b, 0, 10)
    logits = m.net(b["image"])["logits"][:, :-1]
    # dropout in b6/b7 is active in train mode, so compare in eval mode
    m.eval()
    with torch.no_grad():
        out = m.training_step(b, 0, 10)
        ref = F.multilabel_soft_margin_loss(m.net(b["image"])["logits"][:, :-1], b["labels"])
    assert set(out) == {"loss", "loss_cls"}
    assert float(out["loss"]) == pytest.approx(float(ref), rel=1e-6)
    assert logits.shape == (2, 3)


def test_smaf_self_train_teacher_frozen_and_target():
    m = _smaf(target_mode="online").train()
    m.on_phase_start(_ctx("eps", 0))
    m.on_phase_start(_ctx("self_train", 1))
    assert m.teacher is not None
    assert not m.teacher.training
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in m.net.state_dict().items())  # student starts from teacher
    opt = torch.optim.SGD([g for grp in m.param_groups(0.1, 0.0) for g in grp["params"]], lr=0.1)
    out = m.training_step(_batch(), 0, 10)
    assert set(out) == {"loss", "loss_smaf"}
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in m.teacher.parameters())
    assert m.net.fc8.weight.grad.abs().sum() > 0
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in m.teacher.state_dict().items())
    assert not torch.equal(before["fc8.weight"], m.net.fc8.weight)
    assert all(id(p) not in {id(q) for q in m.teacher.parameters()}
               for grp in m.param_groups(0.1, 0.0) for p in grp["params"])


def test_smaf_target_values_and_padding():
    m = _smaf(target_mode="online")
    m.on_phase_start(_ctx("self_train", 1))
    b = _batch(pad=8)
    t = m.fused_target(b["image"], b["labels"], b["valid"])
    assert t.shape == (2, 4, 8, 8)  # C + 1 channels at 1/4 of the 32 px crop
    torch.testing.assert_close(t.amax(1), torch.ones(2, 8, 8))  # reactivation: winner = 1
    # zero-padded columns (the last quarter) become one-hot background
    assert torch.equal(t[:, 0, :, -1], torch.ones(2, 8))
    assert t[:, 1:, :, -1].abs().max() == 0
    assert t[0, 2:].abs().max() == 0  # absent classes (image 0 has class 0 only)


def test_smaf_loss_matches_release_formula():
    m = _smaf(target_mode="online").eval()
    m.on_phase_start(_ctx("self_train", 1))
    b = _batch()
    with torch.no_grad():
        out = m.training_step(b, 0, 10)
        t = m.fused_target(b["image"], b["labels"], b["valid"])
        z = F.interpolate(m.net.cam_logits(b["image"]), size=(8, 8), mode="bilinear", align_corners=True)
        q = torch.softmax(z, 1)
        ref = 100 * ((q - torch.cat([t[:, 1:], t[:, :1]], 1)) ** 2).mean()  # background last
    assert float(out["loss"]) == pytest.approx(float(ref), rel=1e-5)


def test_smaf_cam_fn_and_chain_masks():
    m = _smaf().eval()
    x = torch.randn(1, 3, 32, 32)
    cams = m.cam_fn(x)
    probs = torch.softmax(m.net.cam_logits(x), 1)
    torch.testing.assert_close(cams, probs[:, :-1])
    cams = torch.zeros(1, 3, 4, 4)
    cams[0, 0, :2] = 0.9
    cams[0, 1, 2:, :2] = 0.19  # below 0.2 -> background
    from wsss_blocks.train.pipeline import PseudoChain

    cfg = load_run_config({"method": "smaf", "pseudo": {"rule": "smaf", "args": {"smaf": {"crf": False}}}})
    chain = PseudoChain(cfg)
    mask = chain.masks(cams, torch.tensor([[1.0, 1.0, 0.0]]), torch.rand(1, 3, 4, 4), bg_score=0.2)
    expect = torch.zeros(1, 4, 4, dtype=torch.long)
    expect[0, :2] = 1
    assert torch.equal(mask, expect)


def test_smaf_bad_input():
    cfg = load_run_config({"method": "smaf", "cam": {"backbone": "resnet38d_tiny"},
                           "method_args": {"frozen": ["conv1a"]}})
    with pytest.raises(ValueError, match="saliency"):
        SMAFMethod(cfg, cfg.method_config(), 3)
    with pytest.raises(ValueError, match="target_scale_factor"):
        _smaf(target_scale_factor=0.0)
    m = _smaf(eps_saliency=True)
    m.on_phase_start(_ctx("eps", 0))
    b = _batch()
    del b["saliency"]
    with pytest.raises(ValueError, match="without 'saliency'"):
        m.training_step(b, 0, 10)


# ------------------------------------------------------------------------------------------------ (b) TSCD steps
def test_balanced_seg_loss_hand_values_and_guard():
    logits = torch.zeros(1, 3, 1, 3)
    logits[0, 1, 0, 1] = 2.0
    y = torch.tensor([[[0, 1, 255]]])
    ce_bg = math.log(3.0)
    ce_fg = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert float(balanced_seg_loss(logits, y)) == pytest.approx(0.5 * (ce_bg + ce_fg), rel=1e-6)
    only_bg = torch.zeros(1, 1, 3, dtype=torch.long)
    assert math.isnan(float(balanced_seg_loss(logits, only_bg, empty_is_zero=False)))  # released 0/0
    ce_all_bg = (2 * math.log(3.0) + math.log(math.exp(2) + 2)) / 3  # pixel 1 favours class 1
    assert float(balanced_seg_loss(logits, only_bg)) == pytest.approx(0.5 * ce_all_bg, rel=1e-6)


def _released_multi_scale_cam(cam_fn, images, scales):
    """Transcription of AFA/TSCD ``multi_scale_cam`` (SCD ``utils/camutils.py`` L85-147): no-grad CAMs of
    ``[x; flip x]`` at ``int(s·H)`` sizes, upsampled (bilinear), flip pair fused by max, ReLU, summed over
    scales, per-channel min-max normalised.
    """
    b, _, h, w = images.shape
    total = None
    with torch.no_grad():
        for s in scales:
            x = images if s == 1.0 else F.interpolate(images, size=(int(s * h), int(s * w)), mode="bilinear",
                                                      align_corners=False)
            cam = cam_fn(torch.cat([x, x.flip(-1)], dim=0)).float()
            cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
            cam = F.relu(torch.maximum(cam[:b], cam[b:].flip(-1)))
            total = cam if total is None else total + cam
        total = total - total.amin(dim=(-2, -1), keepdim=True)
        return total / (total.amax(dim=(-2, -1), keepdim=True) + 1e-5)


def test_img_box_and_multiscale_minmax_cam():
    v = torch.zeros(2, 6, 7, dtype=torch.bool)
    v[0, 1:4, 2:7] = True
    v[1] = True
    assert boxes_from_mask(v).tolist() == [[2, 1, 7, 4], [0, 0, 7, 6]]  # (x1, y1, x2, y2)
    m = _tscd().train()
    for h, w in ((64, 64), (67, 45)):  # 67·0.5 = 33.5, 45·1.5 = 67.5: floor (released) and round differ
        x = torch.randn(2, 3, h, w)
        cam = m._training_cams(x)
        torch.testing.assert_close(cam, _released_multi_scale_cam(m._cam_raw, x, m.cfg.cam_scales))
        assert cam.requires_grad is False
    x = torch.randn(2, 3, 8, 8)
    ref = torch.maximum(x[:, :2], x[:, :2]).relu()  # flip pair max of an equivariant map = the map
    ref = ref - ref.amin((2, 3), keepdim=True)
    ref = ref / (ref.amax((2, 3), keepdim=True) + 1e-5)
    torch.testing.assert_close(_released_multi_scale_cam(lambda z: z[:, :2], x, (1.0,)), ref)


def test_dense_energy_loss_gradient_is_released_formula():
    from wsss_blocks.crf.permutohedral import bilateral_features, build_lattice, lattice_filter

    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(2, 3, 8, 8, generator=g), 1).requires_grad_()
    img01 = torch.rand(2, 3, 8, 8, generator=g)
    img = img01 * 255
    y = torch.zeros(2, 8, 8, dtype=torch.long)
    y[:, :2] = 255
    roi = torch.ones(2, 8, 8)
    roi[1, :, 6:] = 0
    loss = dense_energy_loss(p, img01, y, roi, weight=1.0, scale_factor=1.0, sigma_xy=4.0, sigma_rgb=30.0)
    loss.backward()
    with torch.no_grad():
        s = p * roi[:, None]
        gate = (roi - p.amax(1)).masked_fill(y == 255, 1.0).clamp(min=0)
        lat = build_lattice(bilateral_features(img.permute(0, 2, 3, 1), 4.0, 30.0), pad_like_pydensecrf=False)
        ws = lattice_filter(lat, s.permute(0, 2, 3, 1).reshape(-1, 3)).view(2, 8, 8, 3).permute(0, 3, 1, 2)
        ws = ws * gate[:, None]
    assert float(loss.detach()) == pytest.approx(float(-(s * ws).sum() / 2), rel=1e-5)
    assert float(loss.detach()) < 0
    torch.testing.assert_close(p.grad, -2 * ws / 2 * roi[:, None])


def test_tscd_training_step_gradients():
    m = _tscd().train()
    b = _batch(s=64, pad=16)
    out = m.training_step(b, 1, 10)
    keys = {"loss", "loss_cls", "loss_seg", "loss_aff", "loss_reg", "loss_scd", "loss_er"}
    assert set(out) == keys
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    gr = _grads(m.net)
    for k in ("classifier.weight", "attn_proj.weight", "decoder.linear_pred.weight",
              "encoder.patch_embed1.proj.weight"):
        assert gr[k] is not None, k
        assert gr[k].abs().sum() > 0, k


def test_tscd_warmup_is_classification_only():
    m = _tscd(cam_iters=5).eval()  # eval: no dropout, so two forwards agree
    b = _batch(s=64)
    out = m.training_step(b, 5, 10)  # n_iter <= cam_iters (inclusive)
    assert float(out["loss"].detach()) == pytest.approx(float(out["loss_cls"]), rel=1e-6)
    out["loss"].backward()
    assert float(m.net.decoder.linear_pred.weight.grad.abs().sum()) == 0.0


def test_tscd_scd_teacher_is_detached():
    zero = {k: 0.0 for k in ("cls_weight", "seg_weight", "aff_weight", "reg_weight", "er_weight")}
    m = _tscd(**zero, scd_weight=1.0).train()
    torch.manual_seed(0)
    out = m.training_step(_batch(s=64), 1, 10)
    out["loss"].backward()
    cls_grad = m.net.classifier.weight.grad
    assert cls_grad is None or float(cls_grad.abs().sum()) == 0.0  # CAM teacher carries no gradient
    assert float(m.net.decoder.linear_pred.weight.grad.abs().sum()) > 0  # student = seg logits
    assert float(out["loss"].detach()) == pytest.approx(float(out["loss_scd"]), rel=1e-6)


def test_tscd_er_is_inert_unless_er_grad():
    zero = {k: 0.0 for k in ("cls_weight", "seg_weight", "aff_weight", "reg_weight", "scd_weight")}
    for er_grad, moves in ((False, False), (True, True)):
        m = _tscd(**zero, er_weight=1.0, er_grad=er_grad).train()
        out = m.training_step(_batch(s=64), 1, 10)
        out["loss"].backward()
        g = m.net.classifier.weight.grad
        assert (g is not None and float(g.abs().sum()) > 0) == moves


def test_tscd_param_groups_release_lrs():
    m = _tscd()
    groups = {g["name"]: g for g in m.param_groups(6e-5, 0.01)}
    assert groups["backbone_norm"]["lr"] == 0.0
    assert groups["backbone_norm"]["weight_decay"] == 0.0
    assert groups["backbone_weight"]["lr"] == pytest.approx(6e-5)
    assert groups["backbone_bias"]["lr"] == pytest.approx(6e-5)
    assert groups["head_weight"]["lr"] == pytest.approx(6e-4)
    assert groups["head_bias"]["lr"] == pytest.approx(6e-4)
    assert all(g["weight_decay"] == 0.01 for n, g in groups.items() if n != "backbone_norm")
    head = {id(p) for p in groups["head_weight"]["params"]}
    assert id(m.net.classifier.weight) in head
    assert id(m.net.attn_proj.weight) in head


def test_tscd_seg_fn_cam_fn_and_chain_masks():
    m = _tscd().eval()
    x = torch.randn(1, 3, 64, 64)
    assert m.seg_fn(x).shape == (1, 4, 16, 16)
    assert m.cam_fn(x).shape == (1, 3, 4, 4)
    assert float(m.cam_fn(x).min()) >= 0
    cams = torch.zeros(1, 3, 32, 32)
    cams[0, 0, 8:24, 8:24] = 1.0
    img = torch.zeros(1, 3, 32, 32)
    img[:, :, 8:24, 8:24] = 1.0
    from wsss_blocks.train.pipeline import PseudoChain

    def chain(**pseudo):
        return PseudoChain(load_run_config({"method": "tscd", "pseudo": pseudo}))

    lab = torch.tensor([[1.0, 0.0, 0.0]])
    released = chain(refine="varm", rule="reliable", args={"reliable": {"ignore": "background"}})
    y = released.masks(cams, lab, img, bg_score=0.45)
    assert set(y.unique().tolist()) <= {0, 1}
    assert (y[0, 12:20, 12:20] == 1).all()
    assert (y[0, :4, :4] == 0).all()
    soft = cams.clone()
    soft[0, 0] = soft[0, 0].clamp(min=0.5)  # between tau_l and tau_h: foreground only in the low label -> ignore
    kept = chain(refine="varm", rule="reliable", args={"reliable": {"ignore": "keep"}}).masks(soft, lab, img, 0.45)
    assert (kept == 255).any()
    assert set(kept.unique().tolist()) <= {0, 1, 255}
    as_bg = released.masks(soft, lab, img, bg_score=0.45)
    assert torch.equal(as_bg, kept.masked_fill(kept == 255, 0))
    t = chain(refine="none", rule="argmax").masks(cams, lab, img, bg_score=0.45)
    assert torch.equal(t, (cams[:, 0] > 0.45).long())


def test_tscd_bad_input():
    cfg = load_run_config({"method": "tscd", "cam": {"backbone": "mit_tiny", "crop_size": 64}})
    with pytest.raises(ValueError, match="too small"):
        TSCDMethod(cfg, cfg.method_config(), 3)
    cfg = load_run_config({"method": "tscd", "cam": {"backbone": "mit_tiny", "crop_size": 72,
                                                     "backbone_kwargs": {"sr_ratios": [1, 1, 1, 1]}}})
    with pytest.raises(ValueError, match="multiple of the encoder's output stride"):
        TSCDMethod(cfg, cfg.method_config(), 3)
    cfg = load_run_config({"method": "tscd", "cam": {"backbone": "resnet38d_tiny"}})
    with pytest.raises(ValueError, match="MiT encoder"):
        TSCDMethod(cfg, cfg.method_config(), 3)
    with pytest.raises(ValueError, match="low_threshold must be <= high_threshold"):
        _tscd(low_threshold=0.6)


# ------------------------------------------------------------------------------------------------ (c) end to end
TINY = ["runtime.progress=false", "runtime.plots=false", "data.synthetic.num_train=16", "data.synthetic.num_val=6",
        "data.synthetic.image_size=64", "cam.crop_size=64", "seg.crop_size=64", "pseudo.scales=[1.0, 0.5]",
        "seg.eval_scales=[1.0]", "cam.pretrained=null", "seg.pretrained=null"]  # random init: no pretraining


@pytest.mark.parametrize(("method", "extra"), [
    ("smaf", ["method_args.eps_steps=3", "method_args.self_train_steps=2", "seg.steps=2", "cam.batch_size=4",
              "seg.batch_size=4", "cam.resize_long=[48, 72]", "method_args.target_scales=[1.0, 0.5]"]),
    ("tscd", ["cam.steps=4", "method_args.cam_iters=1", "cam.batch_size=4", "method_args.scd_num_samples=6",
              "cam.backbone_kwargs={sr_ratios: [2, 1, 1, 1]}",
              "seg.eval_every=2", "seg.report=best"]),  # tscd_voc's selection (the preset makes no choice on val)
])
@pytest.mark.slow
def test_synthetic_preset_runs_all_stages(tmp_path, method, extra):
    reproduce = pytest.importorskip("wsss_blocks.train.reproduce").reproduce
    res = reproduce(method, out=tmp_path / "run", overrides=TINY + extra + [
        f"data.synthetic.cache_dir={tmp_path / 'cache'}"], verbose=False)
    for k in ("cam_miou", "pseudo_miou", "val_miou"):
        assert 0.0 <= res["ours"][k] <= 1.0, (k, res["ours"])
    run = tmp_path / "run"
    summary = json.loads((run / "pseudo" / "summary.json").read_text())
    assert summary["num_masks"] == len(list((run / "pseudo" / "masks").glob("*.png")))
    cam = json.loads((run / "cam" / "summary.json").read_text())
    if method == "smaf":
        assert cam["phase_steps"] == [3, 2]
        assert (run / "seg" / "model.pt").is_file()
    else:
        assert cam["phase_steps"] == [4]
        assert not (run / "seg" / "model.pt").exists()  # seg.source: method — the head is TSCD's own
        # the released selection: the best val checkpoint is reported, the last one shown next to it
        assert res["info"]["seg_report"] == "best"
        assert (run / "cam" / "best.pt").is_file()
        assert res["ours"]["val_miou"] == res["info"]["val_miou_best"]
        assert 0.0 <= res["info"]["val_miou_last"] <= 1.0
        assert res["info"]["last_step"] == 4


@pytest.mark.slow
def test_tscd_best_val_checkpoint_is_reported_and_last_shown(tmp_path):
    """seg.eval_every with seg.source: method validates TSCD's head during the CAM stage (single scale, no CRF, as
    the release's validate) and keeps cam/best.pt; seg.report picks which model eval_seg reports.
    """
    import torch

    from wsss_blocks.train.cam_stage import restore_method, train_cam
    from wsss_blocks.train.checkpoint import load_checkpoint
    from wsss_blocks.train.distributed import DistEnv
    from wsss_blocks.train.reporting import MetricLogger
    from wsss_blocks.train.reproduce import format_table
    from wsss_blocks.train.seg_stage import eval_seg

    over = [*TINY, "cam.steps=6", "method_args.cam_iters=1", "cam.batch_size=4", "method_args.scd_num_samples=6",
            "cam.backbone_kwargs={sr_ratios: [2, 1, 1, 1]}", "seg.eval_every=2", "seg.report=best", "cam.lr=0.001",
            f"data.synthetic.cache_dir={tmp_path / 'cache'}"]
    cfg = load_run_config("tscd_synthetic", over)
    assert (cfg.seg.report, cfg.seg.eval_every) == ("best", 2)
    run = tmp_path / "run"
    train_cam(cfg, run)
    recs = [r for r in MetricLogger(run / "cam" / "log.jsonl", enabled=False).records() if "val_miou" in r]
    assert [r["phase_step"] for r in recs] == [2, 4, 6]
    best = max(recs, key=lambda r: (r["val_miou"], -r["phase_step"]))
    ck = load_checkpoint(run / "cam" / "best.pt", method="tscd", num_classes=20)
    assert ck["step"] == best["step"]
    assert ck["val_miou"] == pytest.approx(best["val_miou"])
    # the selection score is the single-scale validation of the restored best model
    env = DistEnv()
    m = restore_method(cfg, run / "cam" / "best.pt", env)
    for k, v in m.state_dict().items():
        assert torch.equal(v, ck["model"][k]), k
    res = eval_seg(cfg, run, env)
    assert res["report"] == "best"
    assert res["miou"] == res["best"]["miou"]
    assert res["best"]["step"] == best["step"]
    assert res["last"]["step"] == 6
    assert res["best"]["selection_val_miou"] == pytest.approx(best["val_miou"])
    last_only = eval_seg(load_run_config("tscd_synthetic", [*over, "seg.report=last"]), run, env)
    assert last_only["report"] == "last"
    assert "best" not in last_only
    assert last_only["miou"] == pytest.approx(res["last"]["miou"])
    info = {"cam_eval_split": "train", "bg_score": 0.45, "val_split": "val", "crf": False, "seg_report": "best",
            "val_miou_last": res["last"]["miou"], "best_step": res["best"]["step"], "last_step": 6}
    table = format_table({"method": "tscd", "preset": "tscd_synthetic", "device": "cpu", "seconds": 1.0,
                          "ours": {"cam_miou": 0.1, "pseudo_miou": 0.1, "val_miou": res["miou"]},
                          "paper": {}, "info": info})
    assert "best ckpt" in table
    assert "last ckpt" in table
    assert f"step {res['best']['step']} of 6" in table


@pytest.mark.slow
def test_smaf_resume_inside_self_training_matches_uninterrupted(tmp_path):
    import numpy as np

    from wsss_blocks.train.cam_stage import train_cam

    ov = [*TINY, "method_args.eps_steps=2", "method_args.self_train_steps=3", "cam.batch_size=4",
          "cam.resize_long=[48, 72]", "method_args.target_scales=[1.0, 0.5]", "runtime.checkpoint_every=1",
          "runtime.deterministic=true", "runtime.num_workers=0", f"data.synthetic.cache_dir={tmp_path / 'c'}"]
    cfg = load_run_config("smaf_synthetic", ov)
    full = torch.load(train_cam(cfg, tmp_path / "a"), weights_only=False)["model"]

    class Crash(RuntimeError):
        pass

    def crash(info):
        if info["phase"] == "self_train" and info["phase_step"] == 2:
            raise Crash

    with pytest.raises(Crash):
        train_cam(cfg, tmp_path / "b", hooks=[crash])
    resumed = torch.load(train_cam(cfg, tmp_path / "b", resume=True), weights_only=False)["model"]
    assert any(k.startswith("teacher.") for k in resumed)
    # offline targets (the default): one stored full-image map per training image, identical in both runs
    maps_a = sorted((tmp_path / "a" / "cam" / "fused_cams").glob("*.npy"))
    maps_b = sorted((tmp_path / "b" / "cam" / "fused_cams").glob("*.npy"))
    assert len(maps_a) == 16
    assert [p.name for p in maps_a] == [p.name for p in maps_b]
    assert all(np.array_equal(np.load(a), np.load(b)) for a, b in zip(maps_a, maps_b))
    for k, v in full.items():
        torch.testing.assert_close(resumed[k], v, msg=k)
