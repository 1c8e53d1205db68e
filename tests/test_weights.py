"""The weights registry, its converters, the CLI contract and the before-step-1 refusal of real-data runs.

Binary formats are written by the tests themselves: MXNet ``.params`` byte by byte following the NDArray
list layout, caffemodels serialized with protobuf from a hand-built descriptor, Hugging Face SegFormer state
dicts renamed by a transcription of transformers' conversion script. Downloads go to the ``http_server``
fixture on 127.0.0.1 (conftest.py); everything else runs offline with an empty cache per test.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_blocks import hub
from wsss_blocks.cli import main
from wsss_blocks.models import DeepLabV2, ResNet38, build_backbone, load_pretrained, mit_tiny
from wsss_blocks.models import weights as W
from wsss_blocks.models.converters import (
    caffe_to_deeplab_name,
    caffemodel_to_deeplab,
    hf_segformer_to_mit,
    read_caffemodel,
    read_mxnet_params,
)
from wsss_blocks.train.schema import load_run_config


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(hub.CACHE_ENV, str(root))
    return root / "weights"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _torch_bytes(sd) -> bytes:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def _rand_like(sd, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(v.shape, generator=g) + 0.5 if "running_var" in k else torch.randn(v.shape, generator=g))
            if v.is_floating_point() else v.clone() for k, v in sd.items()}


# ------------------------------------------------------------------------------------------------------
# MXNet .params, written byte by byte (apache/mxnet src/ndarray/ndarray.cc NDArray::Save / LegacyLoad)
# ------------------------------------------------------------------------------------------------------
_MX_FLAG = {np.dtype("float32"): 0, np.dtype("float64"): 1, np.dtype("float16"): 2, np.dtype("int64"): 6,
            np.dtype("uint8"): 3}


def _mx_array(a: np.ndarray, layout: str = "v2") -> bytes:
    a = np.ascontiguousarray(a)
    if layout == "v2":
        head = struct.pack("<Ii", 0xF993FAC9, 0) + struct.pack("<I", a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape)
    elif layout == "v1":
        head = struct.pack("<I", 0xF993FAC8) + struct.pack("<I", a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape)
    else:  # legacy: uint32 ndim, uint32 dims
        head = struct.pack("<I", a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape)
    ctx = struct.pack("<ii", 2, 0)  # saved from GPU 0: the data is stored as on the CPU anyway
    return head + ctx + struct.pack("<i", _MX_FLAG[a.dtype]) + a.astype(a.dtype.newbyteorder("<")).tobytes()


def _mx_file(arrays: dict[str, np.ndarray], layout: str = "v2", extra: bytes = b"") -> bytes:
    out = struct.pack("<QQ", 0x112, 0) + struct.pack("<Q", len(arrays))
    out += b"".join(_mx_array(v, layout) for v in arrays.values()) + extra
    out += struct.pack("<Q", len(arrays))
    for k in arrays:
        kb = k.encode()
        out += struct.pack("<Q", len(kb)) + kb
    return out


@pytest.mark.parametrize("layout", ["v2", "v1", "legacy"])
def test_mxnet_params_reader_layouts_and_dtypes(tmp_path, layout):
    rng = np.random.default_rng(0)
    arrays = {"arg:conv_weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
              "aux:bn_moving_var": rng.random(4).astype(np.float64) + 1,
              "arg:half": rng.standard_normal((2, 5)).astype(np.float16),
              "aux:count": np.array([7, -3], dtype=np.int64)}
    p = tmp_path / "m.params"
    p.write_bytes(_mx_file(arrays, layout))
    got = read_mxnet_params(p)
    assert list(got) == list(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype, k
        assert np.array_equal(got[k], v), k


def test_mxnet_params_reader_rejects_bad_files(tmp_path):
    good = _mx_file({"a": np.ones(3, np.float32)})
    cases = {
        "torch.pth": _torch_bytes({"a": torch.ones(2)}),
        "short.params": good[:-5],
        "nonames.params": good[:-(8 + 8 + 1)] + struct.pack("<Q", 0),
    }
    sparse = struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<Ii", 0xF993FAC9, 1)
    cases["sparse.params"] = sparse + b"\0" * 64
    expect = {"torch.pth": "not an MXNet .params file", "short.params": "truncated",
              "nonames.params": "1 arrays but 0 names", "sparse.params": "sparse"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=expect[name]):
            read_mxnet_params(tmp_path / name)


def _r38_mxnet_names(depths=(3, 3, 6, 3)) -> list[tuple[str, str]]:
    """(MXNet name, library name) for every tensor of ResNet-38 ("res<stage><a|bN>_branch<x>" naming)."""
    bn = (("arg:", "gamma", "weight"), ("arg:", "beta", "bias"), ("aux:", "moving_mean", "running_mean"),
          ("aux:", "moving_var", "running_var"))
    blocks = []
    for stage, n in zip((2, 3, 4, 5), depths):
        for i in range(n):
            blocks.append((f"{stage}a" if i == 0 else f"{stage}b{i}", f"b{stage}" if i == 0 else f"b{stage}_{i}",
                           ["2a", "2b1"] + (["1"] if i == 0 else [])))
    blocks += [("6a", "b6", ["2a", "2b1", "2b2", "1"]), ("7a", "b7", ["2a", "2b1", "2b2", "1"])]
    pairs = [("arg:conv1a_weight", "conv1a.weight")]
    for mx, lib, branches in blocks:
        for br in branches:
            pairs.append((f"arg:res{mx}_branch{br}_weight", f"{lib}.conv_branch{br}.weight"))
            if br != "1":
                pairs += [(f"{pre}bn{mx}_branch{br}_{m}", f"{lib}.bn_branch{br}.{t}") for pre, m, t in bn]
    pairs += [(f"{pre}bn7_{m}", f"bn7.{t}") for pre, m, t in bn]
    return pairs


def test_resnet38_params_file_loads_without_mxnet(tmp_path):
    net = ResNet38(width=1 / 16)  # released depth, 1/16 width: the file layout of the release, small
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    pairs = _r38_mxnet_names()
    assert {lib for _, lib in pairs} == {k for k in shapes if not k.endswith("num_batches_tracked")}
    rng = np.random.default_rng(1)
    arrays = {mx: (rng.random(shapes[lib]) + 0.1).astype(np.float32) for mx, lib in pairs}
    arrays["arg:linear1000_weight"] = rng.standard_normal((1000, 256)).astype(np.float32)
    arrays["arg:linear1000_bias"] = rng.standard_normal(1000).astype(np.float32)
    path = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    path.write_bytes(_mx_file(arrays, "legacy"))  # the 2016 release predates the NDArray magic numbers
    bb = build_backbone("resnet38d", pretrained=path, width=1 / 16)
    sd = bb.state_dict()
    for mx, lib in pairs:
        assert np.array_equal(sd[lib].numpy(), arrays[mx]), (mx, lib)


# ------------------------------------------------------------------------------------------------------
# caffemodel, serialized with protobuf from the caffe.proto field numbers (BVLC/caffe src/caffe/proto)
# ------------------------------------------------------------------------------------------------------
def _caffe_messages():
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="test_caffe.proto", package="caffe", syntax="proto2")

    def msg(name, fields):
        m = fdp.message_type.add(name=name)
        for fname, num, ftype, label, tname, packed in fields:
            f = m.field.add(name=fname, number=num, type=ftype, label=label)
            if tname:
                f.type_name = tname
            if packed:
                f.options.packed = True

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    msg("BlobShape", [("dim", 1, F.TYPE_INT64, rep, None, True)])
    msg("BlobProto", [("shape", 7, F.TYPE_MESSAGE, opt, ".caffe.BlobShape", False),
                      ("data", 5, F.TYPE_FLOAT, rep, None, True),
                      ("double_data", 8, F.TYPE_DOUBLE, rep, None, True),
                      ("num", 1, F.TYPE_INT32, opt, None, False), ("channels", 2, F.TYPE_INT32, opt, None, False),
                      ("height", 3, F.TYPE_INT32, opt, None, False), ("width", 4, F.TYPE_INT32, opt, None, False)])
    msg("ConvolutionParameter", [("num_output", 1, F.TYPE_UINT32, opt, None, False),
                                 ("pad", 3, F.TYPE_UINT32, rep, None, False)])
    msg("LayerParameter", [("name", 1, F.TYPE_STRING, opt, None, False), ("type", 2, F.TYPE_STRING, opt, None, False),
                           ("bottom", 3, F.TYPE_STRING, rep, None, False), ("top", 4, F.TYPE_STRING, rep, None, False),
                           ("blobs", 7, F.TYPE_MESSAGE, rep, ".caffe.BlobProto", False),
                           ("convolution_param", 106, F.TYPE_MESSAGE, opt, ".caffe.ConvolutionParameter", False)])
    msg("NetParameter", [("name", 1, F.TYPE_STRING, opt, None, False),
                         ("layer", 100, F.TYPE_MESSAGE, rep, ".caffe.LayerParameter", False)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))


def _msra_resnet_caffemodel(net: DeepLabV2, seed: int = 0, legacy_shapes: bool = False):
    """A caffemodel of ``net``'s backbone in MSRA/DeepLab layer names; returns (bytes, expected deeplab dict)."""
    NetParameter = _caffe_messages()
    proto = NetParameter(name="ResNet-tiny")
    g = torch.Generator().manual_seed(seed)
    expected: dict[str, torch.Tensor] = {}

    def blob(layer, t):
        b = layer.blobs.add()
        if legacy_shapes and t.ndim == 1:
            b.num, b.channels, b.height, b.width = 1, 1, 1, t.numel()
        else:
            b.shape.dim.extend(list(t.shape))
        b.data.extend(t.flatten().tolist())

    def conv(name, w, target):
        layer = proto.layer.add(name=name, type="Convolution", bottom=["x"], top=[name])
        layer.convolution_param.num_output = int(w.shape[0])
        layer.convolution_param.pad.append(1)
        blob(layer, w)
        expected[f"{target}.weight"] = w

    def bn(name, scale_name, c, target):
        mean, var = torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5
        factor = 999.982  # Caffe's moving-average normaliser: stored statistics are multiplied by it
        layer = proto.layer.add(name=name, type="BatchNorm")
        for t in (mean * factor, var * factor, torch.tensor([factor])):
            blob(layer, t)
        gamma, beta = torch.randn(c, generator=g), torch.randn(c, generator=g)
        sc = proto.layer.add(name=scale_name, type="Scale")
        blob(sc, gamma)
        blob(sc, beta)
        expected.update({f"{target}.running_mean": mean, f"{target}.running_var": var,
                         f"{target}.weight": gamma, f"{target}.bias": beta})

    proto.layer.add(name="data", type="Data", top=["data"])  # no blobs: skipped
    bb = net.backbone.state_dict()
    conv("conv1", torch.randn(bb["conv1.weight"].shape, generator=g), "layer1.conv1.conv")
    bn("bn_conv1", "scale_conv1", bb["bn1.weight"].numel(), "layer1.conv1.bn")
    for stage in range(2, 6):
        layer = getattr(net.backbone, f"layer{stage - 1}")
        for b in range(len(layer)):
            mx = f"{stage}a" if b == 0 else f"{stage}b{b}"
            src = f"layer{stage}.block{b + 1}"
            branches = [("2a", "reduce", 1), ("2b", "conv3x3", 2), ("2c", "increase", 3)]
            if b == 0:
                branches = [("1", "shortcut", 0), *branches]
            for br, dname, idx in branches:
                wkey = f"layer{stage - 1}.{b}." + ("downsample.0.weight" if idx == 0 else f"conv{idx}.weight")
                conv(f"res{mx}_branch{br}", torch.randn(bb[wkey].shape, generator=g), f"{src}.{dname}.conv")
                c = bb[wkey].shape[0]
                bn(f"bn{mx}_branch{br}", f"scale{mx}_branch{br}", c, f"{src}.{dname}.bn")
    # a shared-weights copy of the multi-scale VOC model, skipped as in deeplab-pytorch convert.py
    proto.layer.add(name="res2a_branch1_res05", type="Convolution").blobs.add().data.extend([1.0])
    fc = torch.randn(91, 2048, 3, 3, generator=g)
    layer = proto.layer.add(name="fc1_coco", type="Convolution")
    blob(layer, fc)
    expected["fc.weight"] = fc
    return proto.SerializeToString(), expected


def test_caffemodel_converter_matches_deeplab_names_and_values(tmp_path):
    net = DeepLabV2(21, backbone="resnet_tiny")
    data, expected = _msra_resnet_caffemodel(net, legacy_shapes=True)
    path = tmp_path / "init.caffemodel"
    path.write_bytes(data)
    layers = read_caffemodel(path)
    assert layers[0].name == "conv1"
    assert layers[0].type == "Convolution"
    sd = caffemodel_to_deeplab(path)
    assert set(sd) == set(expected) | {k.rsplit(".", 1)[0] + ".num_batches_tracked" for k in expected
                                       if k.endswith("running_mean")}
    for k, v in expected.items():
        torch.testing.assert_close(sd[k], v, rtol=1e-6, atol=1e-6, msg=k)  # float32 / factor round trip
    # into the library's DeepLab-v2 (deeplab_pytorch key map; the 91-class DeepLab-v1 fc is dropped)
    net.load_pretrained(sd)
    b = net.backbone
    torch.testing.assert_close(b.layer2[0].conv2.weight, expected["layer3.block1.conv3x3.conv.weight"])
    torch.testing.assert_close(b.layer1[0].downsample[1].running_var, expected["layer2.block1.shortcut.bn.running_var"],
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.bn1.bias, expected["layer1.conv1.bn.bias"])


def test_caffe_layer_names():
    assert caffe_to_deeplab_name("conv1") == "layer1.conv1.conv"
    assert caffe_to_deeplab_name("res2a_branch1") == "layer2.block1.shortcut.conv"
    assert caffe_to_deeplab_name("bn3b3_branch2c") == "layer3.block4.increase.bn"
    assert caffe_to_deeplab_name("res5c_branch2b") == "layer5.block3.conv3x3.conv"
    assert caffe_to_deeplab_name("res4b22_branch2a") == "layer4.block23.reduce.conv"
    assert caffe_to_deeplab_name("fc1_voc12_c2") == "aspp.c2"
    assert caffe_to_deeplab_name("pool1") is None
    assert caffe_to_deeplab_name("loss") is None
    with pytest.raises(ValueError, match="holds no layers"):
        read_caffemodel(b"\x0a\x03abc")  # a NetParameter with a name and nothing else
    with pytest.raises(ValueError, match="not a readable caffemodel"):
        read_caffemodel(b"\xa2\x06\xff\xff")  # layer field announcing more bytes than there are


# ------------------------------------------------------------------------------------------------------
# Hugging Face SegFormer names (transformers models/segformer/convert_segformer_original_to_pytorch.py)
# ------------------------------------------------------------------------------------------------------
def _to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Transcription of transformers' rename_keys(encoder_only=True) + read_in_k_v."""
    out = {}
    for key, value in sd.items():
        if not key.startswith("head"):
            key = "segformer.encoder." + key
        if "patch_embed" in key:
            idx = key[key.find("patch_embed") + len("patch_embed")]
            key = key.replace(f"patch_embed{idx}", f"patch_embeddings.{int(idx) - 1}")
        if "norm" in key:
            key = key.replace("norm", "layer_norm")
        if "segformer.encoder.layer_norm" in key:
            idx = key[key.find("segformer.encoder.layer_norm") + len("segformer.encoder.layer_norm")]
            key = key.replace(f"layer_norm{idx}", f"layer_norm.{int(idx) - 1}")
        if "layer_norm1" in key:
            key = key.replace("layer_norm1", "layer_norm_1")
        if "layer_norm2" in key:
            key = key.replace("layer_norm2", "layer_norm_2")
        if "block" in key:
            idx = key[key.find("block") + len("block")]
            key = key.replace(f"block{idx}", f"block.{int(idx) - 1}")
        if "attn.q" in key:
            key = key.replace("attn.q", "attention.self.query")
        if "attn.proj" in key:
            key = key.replace("attn.proj", "attention.output.dense")
        if "attn" in key:
            key = key.replace("attn", "attention.self")
        if "fc1" in key:
            key = key.replace("fc1", "dense1")
        if "fc2" in key:
            key = key.replace("fc2", "dense2")
        if key.startswith("head"):
            key = key.replace("head", "classifier")
        out[key] = value
    for k in [k for k in out if k.endswith(("attention.self.kv.weight", "attention.self.kv.bias"))]:
        kv = out.pop(k)
        c = kv.shape[0] // 2
        base, param = k.rsplit(".kv.", 1)
        out[f"{base}.key.{param}"], out[f"{base}.value.{param}"] = kv[:c], kv[c:]
    return out


def test_hf_segformer_converter_round_trip(tmp_path):
    enc = mit_tiny()
    sd = _rand_like(enc.state_dict())
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, 32), torch.randn(1000)
    hf = _to_hf(sd)
    assert "segformer.encoder.block.0.0.attention.self.key.weight" in hf
    assert "classifier.weight" in hf
    back = hf_segformer_to_mit(hf)
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    # a SegformerModel state dict ("encoder." prefix) saved as safetensors, loaded through weights.convert
    st = pytest.importorskip("safetensors.torch")
    model_only = {k.replace("segformer.encoder.", "encoder."): v.contiguous() for k, v in hf.items()
                  if not k.startswith("classifier")}
    st.save_file(model_only, str(tmp_path / "model.safetensors"))
    enc2 = mit_tiny()
    load_pretrained(enc2, hf_segformer_to_mit(W.read_checkpoint(tmp_path / "model.safetensors")))
    assert torch.equal(enc2.block1[0].attn.kv.weight, sd["block1.0.attn.kv.weight"])
    with pytest.raises(ValueError, match="only the \\['key'\\] part"):
        hf_segformer_to_mit({k: v for k, v in hf.items() if ".value." not in k})
    with pytest.raises(ValueError, match=r"not Hugging Face SegFormer encoder keys: decoder.x"):
        hf_segformer_to_mit({**hf, "decoder.x": torch.ones(1)})


# ------------------------------------------------------------------------------------------------------
# PMM: resnet38_SEAM.pth into the SEAM network (backbone, fc8 and PCM), with a report of every key
# ------------------------------------------------------------------------------------------------------
def _pmm(pretrained):
    from wsss_blocks.train.methods.pmm import PMMMethod

    cfg = load_run_config({"method": "pmm", "cam": {"backbone": "resnet38d_tiny", "pretrained": pretrained},
                           "method_args": {"frozen": ["conv1a"]}})
    return PMMMethod(cfg, cfg.method_config(), 20)


def test_pmm_loads_seam_checkpoint_fc8_and_pcm(tmp_path):
    ref = _pmm(None).net
    ck = {k[len("backbone."):]: v for k, v in _rand_like(ref.state_dict(), seed=3).items() if k.startswith("backbone.")}
    ck = {k: v for k, v in ck.items() if not k.endswith("num_batches_tracked")}  # PyTorch 0.4-era file
    g = torch.Generator().manual_seed(4)
    for k in ("fc8.weight", "pcm.f8_3.weight", "pcm.f8_4.weight", "pcm.f9.weight"):
        ck[k.replace("pcm.", "")] = torch.randn(ref.state_dict()[k].shape, generator=g)
    torch.save(ck, tmp_path / "resnet38_SEAM.pth")
    m = _pmm(str(tmp_path / "resnet38_SEAM.pth"))
    sd = m.net.state_dict()
    for k, v in ck.items():
        target = "pcm." + k if k.startswith(("f8_", "f9")) else k if k.startswith("fc8") else "backbone." + k
        assert torch.equal(sd[target], v), k
    lines = m.init_report.lines()
    assert "loaded   f9.weight -> pcm.f9.weight" in lines
    assert "loaded   fc8.weight -> fc8.weight" in lines
    assert "loaded   b2.conv_branch2a.weight -> backbone.b2.conv_branch2a.weight" in lines
    assert len([x for x in lines if x.startswith("loaded")]) == len(ck)
    assert not m.init_report.unexpected
    assert not m.init_report.dropped
    assert all("BatchNorm step counter" in x for x in lines if x.startswith("missing"))


def test_pmm_with_imagenet_resnet38_reports_why_heads_keep_their_init(tmp_path):
    ref = _pmm(None).net
    bb = {k[len("backbone."):]: v for k, v in _rand_like(ref.state_dict(), seed=5).items()
          if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    ck = {**bb, "fc.weight": torch.randn(1000, 256)}
    torch.save(ck, tmp_path / "r38.pth")
    m = _pmm(str(tmp_path / "r38.pth"))
    assert torch.equal(m.net.backbone.b7.conv_branch2b2.weight, bb["b7.conv_branch2b2.weight"])
    lines = m.init_report.lines()
    assert "dropped  fc.weight (ImageNet classifier, not part of the CAM network)" in lines
    assert any(x.startswith("missing  pcm.f9.weight (the checkpoint has no PCM") for x in lines)
    assert any(x.startswith("missing  fc8.weight (the checkpoint has no SEAM classifier") for x in lines)


# ------------------------------------------------------------------------------------------------------
# registry: real entries
# ------------------------------------------------------------------------------------------------------
def _packaged(name):
    from wsss_blocks.train.config import list_packaged_configs

    return [n for n in list_packaged_configs() if n.endswith(name)]


def test_registry_entries_are_consistent():
    for name, e in W.WEIGHTS.items():
        assert e.name == name
        assert e.file_name
        assert e.origin
        assert e.license
        assert e.title
        assert e.automatic or e.pages, f"{name}: neither a download nor a page"
        assert e.check_keys, name
        for u in (*e.urls, *(u for s in e.sources for u in s.urls)):
            assert u.startswith(("http://", "https://")), u
        if e.sha256:
            assert len(e.sha256) >= 8
            assert all(c in "0123456789abcdef" for c in e.sha256)
            if len(e.sha256) < 64:  # a torch.hub prefix: it is the one in the file name
                assert e.file_name.rsplit("-", 1)[1].split(".")[0] == e.sha256
        if e.pinned or e.size:
            assert e.hash_source, name
    assert W.get_weights_entry("resnet38-imagenet").md5 == "ff21f45d6bf03284100dcbec571edfad"
    assert {n for n, e in W.WEIGHTS.items() if not e.pinned} == {
        "resnet38-seam", "mit-b1-imagenet", "deeplabv1-resnet101-coco", "deeplabv1-resnet101-imagenet",
        "scalenet101-imagenet"}
    with pytest.raises(ValueError, match="did you mean 'resnet50-imagenet'"):
        W.get_weights_entry("resnet50-imagnet")


def test_every_real_data_config_names_registry_weights():
    seen = set()
    for name in _packaged("_voc") + _packaged("_coco"):
        cfg = load_run_config(name)
        fields = W._fields(cfg, ("cam", "seg"))  # what check_run_weights verifies: the networks the run builds
        assert fields, name
        for field_name, value, _, _ in fields:
            assert value in W.WEIGHTS, (name, field_name, value)
            seen.add(value)
    assert seen == set(W.WEIGHTS) - {"resnet101-imagenet"}
    # PMM: the stage-C network's init is checked too; on COCO (stage C only) stage A's cam.pretrained is not used
    assert [f[0] for f in W._fields(load_run_config("pmm_voc"), ("cam",))] == [
        "cam.pretrained", "method_args.stage_c_pretrained"]
    assert [f[0] for f in W._fields(load_run_config("pmm_coco"), ("cam",))] == ["method_args.stage_c_pretrained"]
    # names and "none" survive the loader's path resolution; paths become absolute
    assert load_run_config("l2g_voc", ["cam.pretrained=none"]).cam.pretrained == "none"
    assert load_run_config("l2g_voc", ["cam.pretrained=w/x.pth"]).cam.pretrained == str(Path.cwd() / "w" / "x.pth")
    for name in _packaged("_synthetic"):  # synthetic presets: the backbone pretrained on synthetic data
        cfg = load_run_config(name)
        assert cfg.cam.pretrained == "synthetic", name
        assert cfg.seg.pretrained == ("synthetic" if cfg.seg.source == "deeplab" else None), name
        assert W.check_run_weights(cfg, log=lambda _: None) == {  # made by the trainer, not the registry
            "cam.pretrained": None, **({"seg.pretrained": None} if cfg.seg.source == "deeplab" else {}),
            **({"method_args.stage_c_pretrained": None} if cfg.method == "pmm" else {})}


def test_offline_errors_say_what_how_and_where(cache):
    with pytest.raises(W.WeightsUnavailableError) as ei:
        W.resolve_weights("resnet38-imagenet", field_name="cam.pretrained")
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith("weights 'resnet38-imagenet' for cam.pretrained are not available")
    assert "WSSS_BLOCKS_OFFLINE=1" in msg
    assert "`wsss-blocks weights fetch resnet38-imagenet`" in msg
    assert str(cache / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params") in msg
    assert "https://github.com/itijyou/ademxapp" in msg
    assert "no script can download them" in msg
    with pytest.raises(W.WeightsUnavailableError, match=r"fetch them with `wsss-blocks weights fetch mit-b1-imagenet`"
                                                       r" \(needs internet\) or put mit_b1.pth at "):
        W.resolve_weights("mit-b1-imagenet")
    with pytest.raises(FileNotFoundError, match="neither a file nor a weights name"):
        W.resolve_weights("no/such/file.pth")


def test_placed_file_of_a_pinned_entry_is_verified(cache):
    cache.mkdir(parents=True)
    e = W.get_weights_entry("resnet38-imagenet")
    e.path.write_bytes(_mx_file({"arg:conv1a_weight": np.zeros((64, 3, 3, 3), np.float32)}))
    with pytest.raises(hub.ChecksumError, match="expected md5 ff21f45d6bf03284100dcbec571edfad"):
        W.resolve_weights("resnet38-imagenet")


# ------------------------------------------------------------------------------------------------------
# registry machinery with test entries served on 127.0.0.1
# ------------------------------------------------------------------------------------------------------
def _tiny_backbone_sd(seed=0):
    return _rand_like(build_backbone("tiny", widths=(8, 8, 16), output_stride=4).state_dict(), seed)


def _entry(name, server, path, **kw):
    sd_keys = {"stages.0.0.weight": (8, 3, 3, 3), "stages.2.3.weight": (16, 16, 3, 3)}
    base = dict(name=name, file_name=f"{name}.pth", title="test", model="tiny", origin="test", license="test",
                urls=(server.url + path,) if path else (), check_keys=sd_keys)
    base.update(kw)
    return W.WeightsEntry(**base)


def test_unpinned_entry_records_first_verified_copy(http_server, monkeypatch, cache):
    sd = _tiny_backbone_sd()
    blob = _torch_bytes(sd)
    http_server.files["/w/tiny.pth"] = blob
    monkeypatch.setitem(W.WEIGHTS, "test-tiny", _entry("test-tiny", http_server, "/w/tiny.pth"))
    path = W.fetch_weights("test-tiny", progress=False)
    assert path == cache / "test-tiny.pth"
    assert path.read_bytes() == blob
    rec = W.recorded_hashes()["test-tiny.pth"]
    assert rec["sha256"] == _sha(blob)
    assert rec["size"] == len(blob)
    assert rec["source"] == "download"
    # by name, wherever a checkpoint path is accepted
    bb = build_backbone("tiny", "test-tiny", widths=(8, 8, 16), output_stride=4)
    assert torch.equal(bb.stages[2][3].weight, sd["stages.2.3.weight"])
    # the server now has another file: a new download must match the recorded hash
    path.unlink()
    http_server.files["/w/tiny.pth"] = _torch_bytes(_tiny_backbone_sd(seed=1))
    with pytest.raises(W.WeightsUnavailableError, match=f"expected sha256 {_sha(blob)}") as ei:
        W.fetch_weights("test-tiny", progress=False)
    assert "\n" not in str(ei.value)
    assert not path.exists()
    assert W.forget_weights("test-tiny") == ["test-tiny.pth"]
    W.fetch_weights("test-tiny", progress=False)  # the new copy becomes the reference
    assert W.recorded_hashes()["test-tiny.pth"]["sha256"] != _sha(blob)


def test_tampered_cache_file_is_refused(http_server, monkeypatch, cache):
    http_server.files["/w/t.pth"] = _torch_bytes(_tiny_backbone_sd())
    monkeypatch.setitem(W.WEIGHTS, "test-t", _entry("test-t", http_server, "/w/t.pth"))
    path = W.fetch_weights("test-t", progress=False)
    assert W.resolve_weights("test-t") == path  # fast path: size and mtime as recorded
    st = path.stat()
    path.write_bytes(_torch_bytes(_tiny_backbone_sd(seed=2)))  # same size, other bytes
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # file-system clocks can be coarser than a test
    with pytest.raises(hub.ChecksumError, match="weights forget test-t"):
        W.resolve_weights("test-t")


def test_pinned_entry_wrong_download_and_unparsable_download(http_server, monkeypatch, cache):
    blob = _torch_bytes(_tiny_backbone_sd())
    http_server.files["/w/p.pth"] = blob
    monkeypatch.setitem(W.WEIGHTS, "test-p", _entry("test-p", http_server, "/w/p.pth", sha256=_sha(b"other")))
    with pytest.raises(W.WeightsUnavailableError) as ei:
        W.fetch_weights("test-p", progress=False)
    assert _sha(b"other") in str(ei.value)
    assert _sha(blob) in str(ei.value)
    assert sorted(p.name for p in cache.iterdir()) == ["test-p.pth.lock"]
    # an HTML page where a checkpoint should be (moved links): refused and deleted
    http_server.files["/w/page.pth"] = b"<html><body>This file has moved</body></html>"
    monkeypatch.setitem(W.WEIGHTS, "test-h", _entry("test-h", http_server, "/w/page.pth"))
    with pytest.raises(W.WeightsUnavailableError, match="not a readable torch checkpoint"):
        W.fetch_weights("test-h", progress=False)
    assert not (cache / "test-h.pth").exists()
    assert "test-h.pth" not in W.recorded_hashes()


def test_manual_entry_comes_from_the_mirror(http_server, monkeypatch, cache):
    blob = _torch_bytes(_tiny_backbone_sd())
    http_server.files["/mirror/test-m.pth"] = blob
    monkeypatch.setitem(W.WEIGHTS, "test-m", _entry("test-m", http_server, None, pages=("https://example.org/drive",)))
    with pytest.raises(W.WeightsUnavailableError, match=r"no script can download them: get test-m.pth from "
                                                        "https://example.org/drive"):
        W.fetch_weights("test-m", progress=False)
    monkeypatch.setenv(hub.MIRROR_ENV, http_server.url + "/mirror")
    assert W.fetch_weights("test-m", progress=False).read_bytes() == blob
    assert [e["path"] for e in http_server.log] == ["/mirror/test-m.pth"]


def test_converted_source_from_a_zip_archive(http_server, monkeypatch, cache):
    net = DeepLabV2(21, backbone="resnet_tiny")
    data, expected = _msra_resnet_caffemodel(net, seed=7)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("prototxt/train.prototxt", "name: 'x'")
        z.writestr("init.caffemodel", data)
    http_server.files["/released/prototxt_and_model.zip"] = buf.getvalue()
    url = http_server.url + "/released/prototxt_and_model.zip"
    src = W.WeightsSource(file_name="prototxt_and_model.zip", urls=(url,), converter="caffemodel-deeplab",
                          member="init.caffemodel")
    entry = _entry("test-dl", http_server, None, key_map="deeplab_pytorch", sources=(src,),
                   check_keys={"conv1.weight": tuple(expected["layer1.conv1.conv.weight"].shape)})
    monkeypatch.setitem(W.WEIGHTS, "test-dl", entry)
    path = W.fetch_weights("test-dl", progress=False)
    sd = torch.load(path, weights_only=True)
    torch.testing.assert_close(sd["layer4.block1.increase.bn.running_mean"],
                               expected["layer4.block1.increase.bn.running_mean"], rtol=1e-6, atol=1e-6)
    recs = W.recorded_hashes()
    assert recs["prototxt_and_model.zip"]["sha256"] == _sha(buf.getvalue())
    assert recs["test-dl.pth"]["source"] == "converted (caffemodel-deeplab) from prototxt_and_model.zip"
    assert not (cache / "sources" / "prototxt_and_model.zip").exists()  # the archive is not kept
    fresh = DeepLabV2(21, backbone="resnet_tiny", pretrained="test-dl")
    torch.testing.assert_close(fresh.backbone.layer4[0].conv3.weight, expected["layer5.block1.increase.conv.weight"])


def test_convert_local_files(tmp_path, monkeypatch, cache):
    net = ResNet38(width=1 / 16)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    pairs = _r38_mxnet_names()
    rng = np.random.default_rng(2)
    arrays = {mx: rng.standard_normal(shapes[lib]).astype(np.float32) for mx, lib in pairs}
    params = tmp_path / "a1.params"
    params.write_bytes(_mx_file(arrays))
    entry = W.WeightsEntry(name="test-r38", file_name="test-r38.params", title="t", model="t", origin="t",
                           license="t", md5=hashlib.md5(params.read_bytes()).hexdigest(), file_format="mxnet",
                           key_map="resnet38",
                           check_keys={"b7.conv_branch2b2.weight": shapes["b7.conv_branch2b2.weight"]},
                           pages=("https://example.org",))
    monkeypatch.setitem(W.WEIGHTS, "test-r38", entry)
    # the released format: verified against the published md5 and copied into the cache
    assert W.convert_weights("test-r38", params) == cache / "test-r38.params"
    assert W.resolve_weights("test-r38") == cache / "test-r38.params"
    # --out: a PyTorch state dict in the library's names (what psa's convert_mxnet_to_torch writes)
    out = W.convert_weights("test-r38", params, out=tmp_path / "res38d.pth")
    sd = torch.load(out, weights_only=True)
    assert set(sd) == {lib for _, lib in pairs}
    assert np.array_equal(sd["b4_5.conv_branch2b1.weight"].numpy(), arrays["arg:res4b5_branch2b1_weight"])
    # a copy with other bytes is refused for a pinned entry
    arrays["arg:conv1a_weight"] += 1
    params.write_bytes(_mx_file(arrays))
    with pytest.raises(hub.ChecksumError, match="expected md5"):
        W.convert_weights("test-r38", params)
    with pytest.raises(ValueError, match="takes a mxnet file"):
        W.convert_weights("test-r38", tmp_path / "res38d.pth")


# ------------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------------
def test_cli_weights_list_contract(capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in out] == list(W.WEIGHTS)
    for line, e in zip(out, W.WEIGHTS.values()):
        assert line.split()[1] == e.hash_label
        assert (e.sha256 or e.md5 or "unpinned") in line
    assert main(["weights", "list", "--files"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    assert rows == [[e.name, e.file_name] for e in W.WEIGHTS.values()]


def test_cli_fetch_convert_path_forget(http_server, monkeypatch, cache, capsys, tmp_path):
    blob = _torch_bytes(_tiny_backbone_sd())
    http_server.files["/w/c.pth"] = blob
    monkeypatch.setitem(W.WEIGHTS, "test-c", _entry("test-c", http_server, "/w/c.pth"))
    assert main(["weights", "fetch", "test-c", "--no-progress"]) == 0
    assert f"test-c: {cache / 'test-c.pth'} (sha256 {_sha(blob)}, verified)" in capsys.readouterr().out
    assert main(["weights", "path", "test-c"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "test-c.pth")
    assert main(["weights", "forget", "test-c", "--delete"]) == 0
    assert not (cache / "test-c.pth").exists()
    assert "test-c.pth" not in W.recorded_hashes()
    (tmp_path / "mine.pth").write_bytes(blob)
    assert main(["weights", "convert", "test-c", str(tmp_path / "mine.pth")]) == 0
    assert (cache / "test-c.pth").read_bytes() == blob
    capsys.readouterr()
    assert main(["weights", "fetch", "test-cc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "unknown weights 'test-cc'" in err[0]
    assert "did you mean 'test-c'" in err[0]


def test_cli_fetch_offline_is_one_error_line(capsys, cache):
    assert main(["weights", "fetch", "deeplabv1-resnet101-coco"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: weights 'deeplabv1-resnet101-coco' are not available")
    assert str(cache / "deeplabv1_resnet101-coco.pth") in err[0]


# ------------------------------------------------------------------------------------------------------
# the trainer: all weights resolved before step 1
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_voc(tmp_path_factory):
    """A VOC-format folder with every file the *_voc configs read (20 classes, 32 px images, saliency)."""
    import shutil

    from wsss_blocks.data.synthetic import make_synthetic_voc

    root = make_synthetic_voc(tmp_path_factory.mktemp("fake_voc") / "VOC2012", num_train=4, num_val=2,
                              image_size=32, num_classes=20)
    for sal in ("Sal", "SALImages"):  # L2G's PoolNet and EPS/SMAF's PFAN saliency folders
        shutil.copytree(root / "SaliencyMaps", root / sal)
    return root


RUNTIME = ["runtime.progress=false", "runtime.plots=false", "runtime.min_free_mb=1", "runtime.threads=1",
           "runtime.device=cpu"]
VOC_CONFIGS = {"baseline": ("resnet50-imagenet", "deeplabv1-resnet101-coco"),
               "l2g": ("resnet38-imagenet", "deeplabv1-resnet101-coco"),
               "ppl": ("resnet50-imagenet", "deeplabv1-resnet101-coco"),
               "pmm": ("resnet38-seam", "res2net101-v1b-imagenet"),
               "smaf": ("resnet38-imagenet", "deeplabv1-resnet101-coco"),
               "tscd": ("mit-b1-imagenet", None)}


def test_every_voc_config_is_covered():
    assert sorted(VOC_CONFIGS) == sorted(n[:-len("_voc")] for n in _packaged("_voc"))


@pytest.mark.parametrize("method", sorted(VOC_CONFIGS))
def test_voc_config_refuses_before_step_1(method, fake_voc, tmp_path, cache, capsys):
    from wsss_blocks.train.reproduce import reproduce

    cam_w, seg_w = VOC_CONFIGS[method]
    out = tmp_path / "run"
    with pytest.raises(W.WeightsUnavailableError) as ei:
        reproduce(method, fake_voc, out=out, overrides=RUNTIME, verbose=False)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"weights '{cam_w}' for cam.pretrained are not available")
    assert f"`wsss-blocks weights fetch {cam_w}`" in msg
    assert str(W.get_weights_entry(cam_w).path) in msg
    assert not (out / "cam").exists()  # nothing trained, no checkpoint
    if seg_w is not None:  # random CAM init (explicit, with a warning): the segmentation init is checked too
        # (PMM's stage-C network is checked after stage A's: without it too, the segmentation init is next)
        extra = ["method_args.stage_c_pretrained=none"] if method == "pmm" else []
        with pytest.warns(UserWarning, match="cam.pretrained=none: .* starts from random weights"), \
                pytest.raises(W.WeightsUnavailableError, match=f"weights '{seg_w}' for seg.pretrained"):
            reproduce(method, fake_voc, out=out, overrides=[*RUNTIME, "cam.pretrained=none", *extra], verbose=False)
        assert not (out / "cam").exists()
    # the command line: one error line, exit status 2
    capsys.readouterr()
    rc = main(["reproduce", "--method", method, "--data-root", str(fake_voc), "--out", str(tmp_path / "cli"),
               *[x for s in RUNTIME for x in ("--set", s)]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1
    assert err[0].startswith(f"error: weights '{cam_w}' for cam.pretrained")


def test_train_cam_refuses_unset_weights_on_real_data(fake_voc, tmp_path):
    from wsss_blocks.train.cam_stage import train_cam

    cfg = load_run_config("pmm_voc", [f"data.root={fake_voc}", *RUNTIME, "cam.pretrained=null"])
    with pytest.raises(W.WeightsUnavailableError, match=r"cam.pretrained is not set for backbone resnet38d on voc "
                                                        r"data: name the weights \(e.g. --set "
                                                        r"cam.pretrained=resnet38-imagenet"):
        train_cam(cfg, tmp_path / "r")
    assert not (tmp_path / "r" / "cam" / "checkpoints").exists()


def test_synthetic_run_resolves_registry_name_before_step_1(http_server, monkeypatch, cache, trainer_tiny, tmp_path):
    from wsss_blocks.train.cam_stage import build_method, prepare_env, train_cam

    sd = _tiny_backbone_sd(seed=9)
    http_server.files["/w/b.pth"] = _torch_bytes(sd)
    monkeypatch.setitem(W.WEIGHTS, "test-b", _entry("test-b", http_server, "/w/b.pth"))
    cfg = load_run_config("baseline_synthetic", [*trainer_tiny, "cam.pretrained=test-b"])
    lines: list[str] = []
    resolved = W.check_run_weights(cfg, ("cam",), progress=False, log=lines.append)
    assert resolved == {"cam.pretrained": cache / "test-b.pth"}
    assert lines == [f"weights: cam.pretrained = test-b -> {cache / 'test-b.pth'} (verified)"]
    method = build_method(cfg, prepare_env(cfg))
    assert torch.equal(method.net.backbone.stages[1][0].weight, sd["stages.1.0.weight"])
    train_cam(cfg, tmp_path / "run")
    assert len(http_server.log) == 1  # fetched once; the run used the verified cached file
    # the server loses the file: a fresh cache cannot get it and the run stops before its first step
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "empty"))
    del http_server.files["/w/b.pth"]
    with pytest.raises(W.WeightsUnavailableError, match="HTTP 404"):
        train_cam(cfg, tmp_path / "run2")
    assert not (tmp_path / "run2" / "cam" / "checkpoints").exists()


def test_divergence_message_names_the_missing_initialisation(trainer_tiny, tmp_path):
    from wsss_blocks.train.cam_stage import train_cam

    assert W.missing_init_hint({"seg": {"backbone": "resnet101", "style": "caffe", "pretrained": "none"}}, "seg") == (
        "; seg.pretrained is 'none': resnet101 started from random weights, while the released recipe fine-tunes "
        "'deeplabv1-resnet101-coco' (set seg.pretrained=deeplabv1-resnet101-coco)")
    assert W.missing_init_hint({"cam": {"backbone": "resnet50", "pretrained": "resnet50-imagenet"}}, "cam") == ""
    assert W.missing_init_hint({"cam": {"backbone": "tiny", "pretrained": None}}, "cam") == ""
    # a diverging CAM stage of a backbone with a released init, trained from random weights
    cfg = load_run_config("baseline_synthetic", [*trainer_tiny, "cam.backbone=resnet_tiny", "cam.backbone_kwargs={}",
                                                 "cam.lr=1e30", "cam.steps=3"])
    with pytest.raises(FloatingPointError, match="lower the learning rate or check the data") as ei:
        train_cam(cfg, tmp_path / "nan")
    assert "cam.pretrained" not in str(ei.value)  # resnet_tiny has no released init: no note
    cfg = load_run_config("baseline_synthetic", [*trainer_tiny, "cam.backbone=resnet50", "cam.backbone_kwargs={}",
                                                 "cam.lr=1e30", "cam.steps=2", "cam.batch_size=2"])
    with pytest.raises(FloatingPointError, match=r"cam.pretrained is None: resnet50 started from random weights, "
                                                 r"while the released recipe fine-tunes 'resnet50-imagenet'"):
        train_cam(cfg, tmp_path / "nan50")


def test_docs_registry_table_is_current():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "weights.md").read_text()
    assert W.registry_markdown() in doc
    for e in W.WEIGHTS.values():  # manual steps documented for every entry a script cannot download
        if not e.automatic:
            assert e.pages[0] in doc, e.name


def test_recorded_hashes_file_is_json(http_server, monkeypatch, cache):
    http_server.files["/w/j.pth"] = _torch_bytes(_tiny_backbone_sd())
    monkeypatch.setitem(W.WEIGHTS, "test-j", _entry("test-j", http_server, "/w/j.pth"))
    W.fetch_weights("test-j", progress=False)
    data = json.loads((cache / "recorded_hashes.json").read_text())
    assert data["version"] == 1
    assert set(data["files"]) == {"test-j.pth"}
    (cache / "recorded_hashes.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"recorded_hashes.json is not valid JSON"):
        W.recorded_hashes()


def test_check_keys_fit_the_library_models():
    """Every entry's tensor checks describe the full-size model it initialises (built on the meta device)."""
    import torchvision

    from wsss_blocks.models import get_key_map, mit_b1, res2net101_v1b, scalenet101

    with torch.device("meta"):
        deeplab = DeepLabV2(21, backbone="resnet101").backbone
        models = {"resnet50-imagenet": torchvision.models.resnet50(),
                  "resnet101-imagenet": torchvision.models.resnet101(),
                  "resnet38-imagenet": ResNet38(), "resnet38-seam": ResNet38(b7_dilation=2),
                  "mit-b1-imagenet": mit_b1(),
                  "deeplabv1-resnet101-coco": deeplab, "deeplabv1-resnet101-imagenet": deeplab,
                  "res2net101-v1b-imagenet": res2net101_v1b(), "scalenet101-imagenet": scalenet101()}
    assert set(models) == set(W.WEIGHTS)
    for name, model in models.items():
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        for key, shape in W.WEIGHTS[name].check_keys.items():
            assert shapes[key] == shape, (name, key)
    # the DeepLab checks are written in library names: a deeplab-pytorch file passes them through its key map
    fn = get_key_map("deeplab_pytorch")
    assert fn("layer4.block23.increase.conv.weight") == "layer3.22.conv3.weight"
    assert fn("layer5.block3.increase.bn.running_var") == "layer4.2.bn3.running_var"


def test_cli_fetch_several_reports_each_failure(http_server, monkeypatch, cache, capsys):
    http_server.files["/w/ok.pth"] = _torch_bytes(_tiny_backbone_sd())
    monkeypatch.setitem(W.WEIGHTS, "test-ok", _entry("test-ok", http_server, "/w/ok.pth"))
    monkeypatch.setitem(W.WEIGHTS, "test-gone", _entry("test-gone", http_server, "/w/gone.pth"))
    assert main(["weights", "fetch", "test-gone", "test-ok", "--no-progress"]) == 2
    io_ = capsys.readouterr()
    assert io_.out.startswith(f"test-ok: {cache / 'test-ok.pth'}")
    err = io_.err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: weights 'test-gone' are not available")
    assert "HTTP 404" in err[0]


def test_caffemodel_converter_without_heads_keeps_the_resnet_only(tmp_path):
    net = DeepLabV2(21, backbone="resnet_tiny")
    data, _ = _msra_resnet_caffemodel(net, seed=11)
    sd = caffemodel_to_deeplab(data, heads=False)
    assert "fc.weight" not in sd
    assert set(sd) == {k for k in caffemodel_to_deeplab(data) if not k.startswith("fc.")}
    NetParameter = _caffe_messages()
    dup = NetParameter()
    dup.ParseFromString(data)
    dup.layer.append(dup.layer[1])  # conv1 twice: a second layer cannot silently overwrite the first
    with pytest.raises(ValueError, match=r"maps onto 'layer1.conv1.conv', which an earlier layer filled"):
        caffemodel_to_deeplab(dup.SerializeToString())
