"""The configured pseudo-mask chain: registry, values of each step against the blocks (and a transcription of
AFA's released attention propagation), refusals before anything is written, fingerprints, IRN sub-stage, losses.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from wsss_blocks.cam import cams_to_mask
from wsss_blocks.train.config import ConfigError
from wsss_blocks.train.pipeline import (
    PseudoChain,
    Refined,
    argmax_mask,
    available_steps,
    chain_settings,
    chain_spec,
    get_step,
    make_seg_loss,
    register_step,
)
from wsss_blocks.train.schema import load_run_config

B, C, H, W = 2, 6, 24, 28


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cams = F.interpolate(torch.rand(B, C, 4, 5, generator=g) ** 3, size=(H, W), mode="bilinear", align_corners=False)
    cams = cams / cams.amax(dim=(2, 3), keepdim=True)
    labels = torch.zeros(B, C)
    labels[0, [1, 3]] = 1.0
    labels[1, [0, 2, 4]] = 1.0
    cams = cams * labels[:, :, None, None]
    img = F.interpolate(torch.rand(B, 3, 5, 6, generator=g), size=(H, W), mode="bilinear", align_corners=False)
    return cams, labels, img


def _cfg(pseudo: dict | None = None, method: str = "baseline", **sections):
    return load_run_config({"method": method, "data": {"num_classes": C}, "pseudo": pseudo or {}, **sections})


def _chain(pseudo: dict | None = None, method: str = "baseline", **kw):
    return PseudoChain(_cfg(pseudo, method), **kw)


# ------------------------------------------------------------------------------------------ registry and resolution
def test_registry_lists_the_steps_of_every_kind():
    assert set(available_steps("post")) >= {"cov", "smaf_fusion", "saliency"}
    refiners = available_steps("refine")
    assert {"none", "par", "varm", "irn", "attn_aff", "crf:deeplab", "crf:irn", "crf:psa"} <= set(refiners)
    assert "crf" not in refiners
    assert set(available_steps("rule")) >= {"argmax", "ppmg", "smaf", "reliable"}
    assert set(available_steps("loss")) >= {"ce", "puf", "balanced"}
    for kind in ("post", "refine", "rule", "loss"):
        for name in available_steps(kind):
            step = get_step(kind, name)
            assert step.summary
            assert step.kind == kind


def test_bare_preset_names_are_the_crf_refiner_and_irn_is_the_random_walk():
    assert chain_spec(_cfg({"refine": "deeplab"})).refine == "crf:deeplab"
    assert chain_spec(_cfg({"refine": "crf:toco_label"})).refine == "crf:toco-label"
    assert chain_spec(_cfg({"refine": "irn"})).refine == "irn"
    assert chain_spec(_cfg({"refine": "crf:irn"})).refine == "crf:irn"
    a = chain_settings(_cfg({"refine": "deeplab"}))
    b = chain_settings(_cfg({"refine": "crf:deeplab", "args": {"crf": {"backend": "auto"}}}))
    assert a == b  # a default written out changes nothing


@pytest.mark.parametrize(("pseudo", "match"), [
    ({"rule": "argmx"}, r"unknown pseudo\.rule step 'argmx'; did you mean 'argmax'"),
    ({"refine": "vram"}, r"did you mean 'varm'"),
    ({"post": ["cvo"]}, r"did you mean 'cov'"),
    ({"post": ["cov", "cov"]}, r"lists \['cov'\] more than once"),
    ({"args": {"ppmgg": {}}}, r"unknown pseudo\.args key 'ppmgg'; did you mean 'ppmg'"),
    ({"rule": "ppmg", "args": {"ppmg": {"alhpa": 2}}}, r"pseudo\.args\.ppmg\.alhpa.*did you mean 'alpha'"),
    ({"rule": "ppmg", "args": {"ppmg": {"alpha": "big"}}}, r"pseudo\.args\.ppmg\.alpha must be a number"),
    ({"rule": "ppmg", "args": {"ppmg": {"alpha": -1.0}}}, r"alpha must be > 0"),
    ({"rule": "reliable", "args": {"reliable": {"low_threshold": 0.6}}}, r"low_threshold must be <= high"),
    ({"refine": "deeplab", "args": {"crf": {"bi_xy": -3.0}}}, r"pseudo\.args\.crf is not a valid dense CRF"),
    ({"refine": "irn", "args": {"irn": {"crop_size": 64}}}, r"crop_size 64 is too small for train_radius 10"),
])
def test_bad_chains_are_refused_at_load(pseudo, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(pseudo)


def test_moved_method_args_name_their_new_place():
    with pytest.raises(ConfigError, match=r"method_args\.alpha of pmm moved to pseudo\.args\.ppmg\.alpha"):
        load_run_config({"method": "pmm", "method_args": {"alpha": 5.0}})
    with pytest.raises(ConfigError, match=r"moved to pseudo\.args\.smaf\.crf_params"):
        load_run_config({"method": "smaf", "method_args": {"crf_params": {"preset": "smaf"}}})
    with pytest.raises(ConfigError, match=r"pseudo_ignore of tscd moved to pseudo\.args\.reliable\.ignore"):
        load_run_config({"method": "tscd", "method_args": {"pseudo_ignore": "keep"}})


def test_seg_loss_registry_and_its_arguments():
    with pytest.raises(ConfigError, match=r"unknown seg\.loss step 'dice'"):
        load_run_config({"seg": {"loss": "dice"}})
    with pytest.raises(ConfigError, match=r"'ce' takes no seg\.loss_args"):
        load_run_config({"seg": {"loss": "ce", "loss_args": {"beta": 0.5}}})
    with pytest.raises(ConfigError, match=r"do not fit seg\.loss 'puf'"):
        load_run_config({"seg": {"loss": "puf", "loss_args": {"gamma": 0.5}}})
    assert load_run_config({"seg": {"loss": "balanced"}}).seg.loss == "balanced"
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[0, 0] = 255
    from wsss_blocks.losses import PretendedUnderFittingLoss, balanced_seg_loss

    torch.testing.assert_close(make_seg_loss("ce")(logits, target), F.cross_entropy(logits, target, ignore_index=255))
    torch.testing.assert_close(make_seg_loss("balanced")(logits, target), balanced_seg_loss(logits, target))
    torch.testing.assert_close(make_seg_loss("puf", {"beta": 0.5, "k": 0.5})(logits, target),
                               PretendedUnderFittingLoss(beta=0.5, k=0.5)(logits, target))


# ------------------------------------------------------------------------------------------ values of the steps
def test_argmax_without_refiner_is_cams_to_mask():
    cams, labels, img = _inputs()
    out = _chain().masks(cams, labels, img, 0.3)
    assert torch.equal(out, cams_to_mask(cams, labels, 0.3))


def test_argmax_with_a_background_map_gives_ties_to_background_and_never_an_absent_class():
    cams = torch.tensor([[[[0.5, 0.2]], [[0.9, 0.6]]]])
    labels = torch.tensor([[1.0, 0.0]])
    bg = torch.tensor([[[[0.5, 0.1]]]])
    assert argmax_mask(Refined(cams, bg), labels, 0.0).tolist() == [[[0, 1]]]


def test_cov_post_step_is_cov_smooth():
    from wsss_blocks.pseudo_mask import cov_smooth

    cams, labels, img = _inputs()
    chain = _chain({"post": ["cov"], "args": {"cov": {"cv_scale": 0.5}}})
    st = chain.state(cams, labels, img, 0.2)
    torch.testing.assert_close(st.cams, cov_smooth(cams, 0.05, 0.5))
    assert torch.equal(st.raw_cams, cams)
    assert torch.equal(chain.masks(cams, labels, img, 0.2), cams_to_mask(cov_smooth(cams, 0.05, 0.5), labels, 0.2))


def test_saliency_post_gates_the_cams():
    cams, labels, img = _inputs()
    sal = torch.rand(B, 1, H, W, generator=torch.Generator().manual_seed(1))
    chain = PseudoChain(_cfg({"post": ["saliency"], "args": {"saliency": {"power": 2.0}}},
                             data={"num_classes": C, "saliency_dir": "Sal"}))
    out = chain.masks(cams, labels, img, 0.2, saliency=sal)
    assert torch.equal(out, cams_to_mask(cams * sal ** 2, labels, 0.2))


def test_ppmg_without_cov_is_ppmg_with_the_identity_smoothing():
    from wsss_blocks.pseudo_mask import proportional_pseudo_mask

    cams, labels, img = _inputs()
    out = _chain({"rule": "ppmg", "args": {"ppmg": {"foreground": "threshold"}}}).masks(cams, labels, img, 0.2)
    ref = proportional_pseudo_mask(cams, labels, img, foreground="threshold", fg_threshold=0.0, cv_scale=0.0)
    assert torch.equal(out, ref)
    with_cov = _chain({"post": ["cov"], "rule": "ppmg", "args": {"ppmg": {"foreground": "threshold"}}})
    assert torch.equal(with_cov.masks(cams, labels, img, 0.2),
                       proportional_pseudo_mask(cams, labels, img, foreground="threshold"))


def test_pmm_chain_on_the_default_crf_backend_equals_the_released_ppmg_block():
    from wsss_blocks.pseudo_mask import PPMG_CRF, proportional_pseudo_mask

    cams, labels, img = _inputs()
    cfg = load_run_config("pmm_synthetic", [f"data.num_classes={C}"])
    out = PseudoChain(cfg).masks(cams, labels, img, 0.1)
    assert torch.equal(out, proportional_pseudo_mask(cams, labels, img, crf=PPMG_CRF))


def test_crf_refiner_with_zero_iterations_keeps_the_argmax_of_its_scores():
    cams, labels, img = _inputs()
    for preset in ("psa", "deeplab"):
        chain = _chain({"refine": preset, "args": {"crf": {"iterations": 0, "backend": "torch"}}})
        torch.testing.assert_close(chain.masks(cams, labels, img, 0.25), cams_to_mask(cams, labels, 0.25))


def test_crf_irn_with_the_reliable_rule_is_irns_ir_label():
    from wsss_blocks.irn import confident_seed_mask

    cams, labels, img = _inputs()
    chain = _chain({"refine": "crf:irn", "rule": "reliable",
                    "args": {"reliable": {"high_threshold": 0.30, "low_threshold": 0.05}}})
    ref = confident_seed_mask(cams, labels, img, high_threshold=0.30, low_threshold=0.05, crf="irn")
    out = chain.masks(cams, labels, img, 0.15)
    assert torch.equal(out, ref)
    assert (out == 255).any()
    plain = _chain({"rule": "reliable", "args": {"reliable": {"high_threshold": 0.30, "low_threshold": 0.05}}})
    assert torch.equal(plain.masks(cams, labels, img, 0.15),
                       confident_seed_mask(cams, labels, img, high_threshold=0.30, low_threshold=0.05, crf=None))


@pytest.mark.parametrize("refiner", ["par", "varm"])
def test_neighbour_refiners_with_argmax_equal_the_reliable_block_at_one_threshold(refiner):
    from wsss_blocks.refine import PixelAdaptiveRefine, VariationAwareRefine, reliable_pseudo_mask

    cams, labels, img = _inputs()
    module = PixelAdaptiveRefine() if refiner == "par" else VariationAwareRefine()
    out = _chain({"refine": refiner}).masks(cams, labels, img, 0.4)
    ref = reliable_pseudo_mask(module, img, cams, labels, high_threshold=0.4, low_threshold=0.4)
    assert torch.equal(out, ref)
    rel = _chain({"refine": refiner, "rule": "reliable"}).masks(cams, labels, img, 0.4)
    assert torch.equal(rel, reliable_pseudo_mask(module, img, cams, labels))


def test_irn_refiner_is_irns_random_walk_and_semantic_label_step():
    from wsss_blocks.irn import random_walk, random_walk_mask, strided_size

    cams, labels, img = _inputs()
    hw = strided_size((H, W), 4)
    boundary = torch.rand(B, 1, *hw, generator=torch.Generator().manual_seed(5)) ** 4
    chain = _chain({"refine": "irn", "args": {"irn": {"exp_times": 4}}}, irn_boundary=lambda image01: boundary)
    out = chain.masks(cams, labels, img, 0.15)
    small = F.interpolate(cams, size=hw, mode="bilinear", align_corners=False)
    small = small / (small.amax(dim=(2, 3), keepdim=True) + 1e-5)
    ref = random_walk_mask(random_walk(small, boundary, labels, exp_times=4), labels, (H, W), bg_score=0.25)
    assert torch.equal(out, ref)
    with pytest.raises(RuntimeError, match="needs a trained IRNet"):
        _chain({"refine": "irn"}).masks(cams, labels, img, 0.15)


def _afa_propagate_transcribed(cams, aff, mask, cls_labels, bkg_score):
    """AFA ``utils/camutils.py`` ``propagte_aff_cam_with_bkg`` (rulixiang/afa), transcribed."""
    b, _, h, w = cams.shape
    bkg = torch.ones(size=(b, 1, h, w)) * bkg_score
    cls_labels = torch.cat((torch.ones(size=(b, 1)), cls_labels), dim=1)
    cams_with_bkg = torch.cat((bkg, cams), dim=1)
    cams_rw = torch.zeros_like(cams_with_bkg)
    b, c, h, w = cams_with_bkg.shape
    aff = aff.clone()
    for i in range(b):
        aff[i, mask == 0] = 0
    aff = aff.detach() ** 2
    aff = aff / (torch.sum(aff, dim=1, keepdim=True) + 1e-1)
    for i in range(b):
        _cams = cams_with_bkg[i].reshape(c, -1)
        valid_key = torch.nonzero(cls_labels[i, ...])[:, 0]
        _cams = F.softmax(_cams[valid_key, ...], dim=0)
        cams_rw[i, valid_key, :] = torch.matmul(_cams, aff[i]).reshape(-1, cams_rw.shape[2], cams_rw.shape[3])
    return cams_rw


class _AttentionMethod:
    """A stand-in network with an attention affinity on a 3×4 token grid."""

    def __init__(self, aff):
        self.aff = aff

    def attention_affinity(self, images):
        return self.aff, (3, 4)


def test_attention_refiner_equals_afas_released_propagation():
    from wsss_blocks.correspondence import radius_mask

    cams, labels, img = _inputs()
    aff = torch.rand(B, 12, 12, generator=torch.Generator().manual_seed(2))
    chain = PseudoChain(_cfg({"refine": "attn_aff", "args": {"attn_aff": {"radius": 1}}}, method="tscd"),
                        method=_AttentionMethod(aff))
    small = F.interpolate(cams, size=(3, 4), mode="bilinear", align_corners=False)
    ref = _afa_propagate_transcribed(small, aff, radius_mask(3, 4, 1), labels, 0.35)
    ref = F.interpolate(ref, size=(H, W), mode="bilinear", align_corners=False)
    out = chain.masks(cams, labels, img, 0.35, images=img)
    expect = argmax_mask(Refined(ref[:, 1:], ref[:, :1]), labels, 0.35)
    assert torch.equal(out, expect)


def test_smaf_fusion_recomputes_the_cams_with_the_released_fusion():
    from wsss_blocks.multiscale_fusion import multiscale_attention_fusion

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, C, 3, padding=1)

    class M:
        cam_fn = staticmethod(lambda x: net(x))

    cams, labels, img = _inputs()
    chain = PseudoChain(_cfg({"post": ["smaf_fusion"], "args": {"smaf_fusion": {"scales": [1.0, 0.5]}}}), method=M())
    st = chain.state(cams, labels, img, 0.2, images=img)
    ref = multiscale_attention_fusion(M.cam_fn, img, labels, scales=(1.0, 0.5), activation="softmax",
                                      bg_channel="none", eval_mode=False)
    torch.testing.assert_close(st.cams, ref)


def test_smaf_rule_after_a_refiner_runs_the_hard_label_crf_on_the_refined_argmax():
    from wsss_blocks.crf import DenseCRF

    cams, labels, img = _inputs()
    chain = _chain({"refine": "varm", "rule": "smaf", "args": {"smaf": {"crf_params": {"preset": "smaf",
                                                                                       "backend": "torch"}}}})
    out = chain.masks(cams, labels, img, 0.2)
    hard = _chain({"refine": "varm"}).masks(cams, labels, img, 0.2)
    q = DenseCRF.preset("smaf", backend="torch").from_mask(img, hard, num_classes=C + 1)
    assert torch.equal(out, q.argmax(1))


def test_a_registered_rule_is_one_function():
    @register_step("rule", "upper_half_test", summary="the top half as class 1 where present (a test)")
    def _upper(state, refine, args):
        m = torch.zeros(state.cams.shape[0], *state.cams.shape[-2:], dtype=torch.long)
        m[:, : m.shape[1] // 2] = 1
        return m

    cams, labels, img = _inputs()
    out = _chain({"rule": "upper_half_test"}).masks(cams, labels, img, 0.2)
    assert out[:, : H // 2].eq(1).all()
    assert out[:, H // 2:].eq(0).all()


# ------------------------------------------------------------------------------------------ refusals
def test_saliency_step_without_saliency_is_refused():
    with pytest.raises(ConfigError, match=r"step 'saliency' needs saliency maps, but data\.saliency_dir is not set"):
        _cfg({"post": ["saliency"]})


def test_forced_pydensecrf_backend_without_pydensecrf_is_refused(monkeypatch):
    import wsss_blocks.crf.pydensecrf_backend as backend

    monkeypatch.setattr(backend, "pydensecrf_available", lambda: False)
    with pytest.raises(ConfigError, match=r"rule step 'ppmg' runs its dense CRF on backend 'pydensecrf'"):
        _cfg({"post": ["cov"], "rule": "ppmg", "args": {"ppmg": {"crf_params": {"preset": "pmm-binary",
                                                                             "backend": "pydensecrf"}}}})
    # auto falls back to the PyTorch backend: accepted
    _cfg({"post": ["cov"], "rule": "ppmg", "args": {"ppmg": {"crf_params": {"preset": "pmm-binary"}}}})
    # the threshold foreground runs no CRF at all
    _cfg({"rule": "ppmg", "args": {"ppmg": {"foreground": "threshold", "crf_params": {"backend": "pydensecrf"}}}})


def test_attention_refiner_needs_a_network_with_attention():
    with pytest.raises(ConfigError, match=r"method 'l2g' has none"):
        _cfg({"refine": "attn_aff"}, method="l2g")
    assert chain_spec(_cfg({"refine": "attn_aff"}, method="tscd")).refine == "attn_aff"


def test_smaf_fusion_on_smaf_is_refused():
    with pytest.raises(ConfigError, match=r"would fuse method 'smaf'"):
        load_run_config("smaf_synthetic", ["pseudo.post=[smaf_fusion]"])


def test_reproduce_refuses_an_incompatible_chain_before_writing(tmp_path):
    from wsss_blocks.train.reproduce import reproduce

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="saliency"):
        reproduce("baseline", out=out, overrides=["pseudo.post=[saliency]"], verbose=False)
    assert not out.exists()


def test_cli_style_combination_loads(tmp_path):
    cfg = load_run_config("l2g_synthetic", ["pseudo.refine=varm", "pseudo.rule=ppmg"])
    spec = chain_spec(cfg)
    assert (spec.refine, spec.rule) == ("varm", "ppmg")


# ------------------------------------------------------------------------------------------ fingerprints
def test_pseudo_fingerprint_covers_the_chain_and_only_the_steps_in_it():
    from wsss_blocks.train.run_folder import changed_keys, stage_settings

    base = load_run_config("pmm_synthetic")
    a = stage_settings(base, "pseudo")
    assert a["pseudo.post"] == ["cov"]
    assert a["pseudo.args.ppmg.alpha"] == 11.0
    changed = changed_keys(a, stage_settings(load_run_config("pmm_synthetic", ["pseudo.args.ppmg.alpha=5"]), "pseudo"))
    assert changed == ["pseudo.args.ppmg.alpha: 11.0 -> 5.0"]
    unused = stage_settings(load_run_config("pmm_synthetic", ["pseudo.args.varm.num_iter=3"]), "pseudo")
    assert changed_keys(a, unused) == []
    rule = changed_keys(a, stage_settings(load_run_config("pmm_synthetic", ["pseudo.rule=argmax"]), "pseudo"))
    assert rule[0] == "pseudo.rule: ppmg -> argmax"
    assert changed_keys(stage_settings(base, "cam"),
                        stage_settings(load_run_config("pmm_synthetic", ["pseudo.rule=argmax"]), "cam")) == []


# ------------------------------------------------------------------------------------------ IRN sub-stage
IRN_TINY = ["pseudo.refine=irn",
            "pseudo.args.irn={layers: [1, 1, 1, 1], width_per_group: 8, pretrained: none, crop_size: 32, "
            "train_radius: 4, batch_size: 4, epochs: 1, pad_to: null, exp_times: 3}"]


def test_irn_stage_trains_resumes_and_checks_its_record(trainer_tiny, tmp_path):
    from wsss_blocks.data.io import load_label_png
    from wsss_blocks.train.cam_stage import train_cam
    from wsss_blocks.train.irn_stage import check_irn_folder, irn_dir, irn_settings
    from wsss_blocks.train.pseudo_stage import make_pseudo_masks
    from wsss_blocks.train.run_folder import StaleRunError

    cfg = load_run_config("baseline_synthetic", [*trainer_tiny, *IRN_TINY])
    train_cam(cfg, tmp_path)
    summary = make_pseudo_masks(cfg, tmp_path)
    folder = irn_dir(tmp_path)
    labels = sorted(folder.glob("ir_labels/*.png"))
    assert len(labels) == cfg.data.synthetic.num_train
    values = set()
    for p in labels:
        values |= set(load_label_png(p).flatten().tolist())
    assert {0, 255} <= values  # background and the ignore band
    assert values - {0, 255}  # and some class
    rec = json.loads((folder / "fingerprint.json").read_text())
    assert rec["settings"] == json.loads(json.dumps(irn_settings(cfg)))
    assert (folder / "model.pt").is_file()
    assert "refine irn" in summary["chain"]
    assert summary["num_masks"] == summary["num_written"]
    mtime = (folder / "model.pt").stat().st_mtime_ns
    # the walk's values do not count: IRNet is reused
    walk = load_run_config("baseline_synthetic", [*trainer_tiny, *IRN_TINY, "pseudo.args.irn.beta=5.0"])
    assert check_irn_folder(walk, tmp_path) is False
    # a training value counts: refused before anything is written, unless the pseudo stage is redone
    other = load_run_config("baseline_synthetic", [*trainer_tiny, *IRN_TINY, "pseudo.args.irn.lr=0.05"])
    with pytest.raises(StaleRunError, match=r"pseudo\.args\.irn\.lr: 0\.1 -> 0\.05"):
        check_irn_folder(other, tmp_path)
    assert check_irn_folder(other, tmp_path, redo=True) is True
    # a second run reuses the finished IRNet and the masks
    again = make_pseudo_masks(cfg, tmp_path)
    assert again["num_written"] == 0
    assert (folder / "model.pt").stat().st_mtime_ns == mtime


def test_reproduce_with_irn_keeps_irnet_when_only_the_rule_changes(trainer_tiny, tmp_path):
    from wsss_blocks.train.irn_stage import irn_dir
    from wsss_blocks.train.reproduce import reproduce

    ov = [*trainer_tiny, *IRN_TINY]
    reproduce("baseline", out=tmp_path, overrides=ov, verbose=False)
    mtime = (irn_dir(tmp_path) / "model.pt").stat().st_mtime_ns
    res = reproduce("baseline", out=tmp_path, overrides=[*ov, "pseudo.rule=reliable"], restart_from="pseudo",
                    verbose=False)
    assert (irn_dir(tmp_path) / "model.pt").stat().st_mtime_ns == mtime
    assert res["ours"]["pseudo_miou"] is not None
    reproduce("baseline", out=tmp_path, overrides=[*ov, "pseudo.args.irn.epochs=2"], restart_from="pseudo",
              verbose=False)
    assert (irn_dir(tmp_path) / "model.pt").stat().st_mtime_ns != mtime


def test_docs_page_lists_every_registered_step():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "ablations.md").read_text()
    for kind in ("post", "refine", "rule", "loss"):
        for name in available_steps(kind):
            if name.startswith("crf:"):
                continue  # one row for every preset
            if name.endswith(("_test", "_example")):
                continue  # steps the tests and the docstring examples register
            assert f"| `{name}` |" in text, f"{kind} step {name!r} is missing from docs/ablations.md"


def test_crf_refiner_on_an_image_without_classes_gives_background():
    cams, labels, img = _inputs()
    labels[1] = 0.0
    cams[1] = 0.0
    for preset in ("crf:irn", "psa"):
        out = _chain({"refine": preset, "args": {"crf": {"backend": "torch"}}}).masks(cams, labels, img, 0.2)
        assert out[1].eq(0).all()
        assert out[0].ne(0).any()
