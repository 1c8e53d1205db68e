"""Readers and key converters for released weights that are not PyTorch state dicts (no foreign frameworks).

* `read_mxnet_params` reads an MXNet ``.params`` file (the NDArray list format that ``mxnet.nd.save``
  writes; apache/mxnet ``src/ndarray/ndarray.cc``, ``NDArray::Save``/``Load``) with NumPy alone. ResNet-38's
  ImageNet weights ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` (itijyou/ademxapp) exist only in this format.
* `read_caffemodel` parses a Caffe ``.caffemodel`` (a serialized ``caffe.NetParameter`` protobuf,
  BVLC/caffe ``src/caffe/proto/caffe.proto``) with a small protobuf wire-format decoder, and
  `caffemodel_to_deeplab` turns the DeepLab-v2 ResNet-101 layers into the state dict that
  kazuto1011/deeplab-pytorch ``convert.py`` writes (``deeplabv1_resnet101-coco.pth``).
* `hf_segformer_to_mit` renames a Hugging Face ``SegformerModel`` / ``SegformerForImageClassification``
  state dict (``nvidia/mit-b1``) to the SegFormer release names that
  `MixTransformer` uses (``mit_b1.pth``), undoing transformers'
  ``convert_segformer_original_to_pytorch.py``.

Examples:
    >>> import torch
    >>> hf = {"segformer.encoder.block.0.0.attention.self.query.weight": torch.ones(2, 2),
    ...       "segformer.encoder.patch_embeddings.1.layer_norm.bias": torch.zeros(2)}
    >>> sorted(hf_segformer_to_mit(hf))
    ['block1.0.attn.q.weight', 'patch_embed2.norm.bias']
    >>> caffe_to_deeplab_name("res4b22_branch2a"), caffe_to_deeplab_name("bn_conv1")
    ('layer4.block23.reduce.conv', 'layer1.conv1.bn')
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "read_mxnet_params",
    "MXNET_LIST_MAGIC",
    "CaffeLayer",
    "read_caffemodel",
    "caffe_to_deeplab_name",
    "caffemodel_to_deeplab",
    "hf_segformer_to_mit",
]

# ----------------------------------------------------------------------------------------------------------
# MXNet .params
# ----------------------------------------------------------------------------------------------------------
MXNET_LIST_MAGIC = 0x112
"""First uint64 of an NDArray list file (``kMXAPINDArrayListMagic``)."""
_ND_V1, _ND_V2, _ND_V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
# mshadow type flags -> NumPy dtypes (little endian, as written on x86/ARM)
_MX_DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8", 7: "?", 8: "<i2", 9: "<u2",
              10: "<u4", 11: "<u8"}


class _Reader:
    def __init__(self, buf: Any, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(f"{self.path!r} is truncated or not an MXNet .params file: {what} needs {n} bytes at "
                             f"offset {self.pos}, the file has {len(self.buf)}")
        out = memoryview(self.buf)[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))


def _read_ndarray(r: _Reader, index: int) -> np.ndarray | None:
    (magic,) = r.unpack("<I", f"array {index} header")
    if magic in (_ND_V2, _ND_V3):
        (stype,) = r.unpack("<i", f"array {index} storage type")
        if stype != 0:
            raise ValueError(f"{r.path!r}: array {index} is sparse (storage type {stype}); only dense arrays are "
                             "supported")
    if magic in (_ND_V1, _ND_V2, _ND_V3):
        (ndim,) = r.unpack("<i", f"array {index} ndim")
        if ndim < 0:  # V3 unknown shape: an empty NDArray
            return None
        shape = r.unpack(f"<{ndim}q", f"array {index} shape") if ndim else ()
        if ndim == 0 and magic != _ND_V3:  # before numpy semantics, ndim 0 marks an empty NDArray
            return None
    else:  # legacy layout (before the magic numbers): the first word is ndim, dims are uint32
        ndim = magic
        if ndim > 32:
            raise ValueError(f"{r.path!r}: array {index} starts with {magic:#x}, which is neither an NDArray magic "
                             "number nor a plausible number of dimensions; not an MXNet .params file")
        shape = r.unpack(f"<{ndim}I", f"array {index} shape") if ndim else ()
        if ndim == 0:
            return None
    r.unpack("<ii", f"array {index} context")  # dev_type, dev_id: data is always stored as on the CPU
    (type_flag,) = r.unpack("<i", f"array {index} type flag")
    if type_flag not in _MX_DTYPES:
        raise ValueError(f"{r.path!r}: array {index} has unsupported MXNet type flag {type_flag}")
    dtype = np.dtype(_MX_DTYPES[type_flag])
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    data = r.take(count * dtype.itemsize, f"array {index} data ({count} × {dtype})")
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape).copy()


def read_mxnet_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an MXNet NDArray file (``.params``, ``mxnet.nd.save``) into ``{name: ndarray}`` with NumPy only.

    Layout (little endian): ``uint64 0x112``, ``uint64 0``, ``uint64 n`` then ``n`` NDArrays, then ``uint64 n``
    names (``uint64 length`` + UTF-8 bytes each). An NDArray is ``uint32 0xF993fac9`` (V2; 0xF993faca V3,
    numpy-shape semantics) + ``int32 storage type`` (0 = dense), or ``0xF993fac8`` (V1) with no storage type,
    followed by the shape (``uint32 ndim`` + ``int64`` dims), the context (``int32 dev_type``, ``int32 dev_id``),
    the ``int32`` mshadow type flag and the raw data. Files from before the magic numbers start directly with
    ``uint32 ndim`` and ``uint32`` dims. Module checkpoints prefix names with ``arg:`` / ``aux:``; they are kept.

    Raises:
        ValueError: not an NDArray list, truncated, sparse, or without names.
        FileNotFoundError: no such file.
    """
    p = os.fspath(path)
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise ValueError(f"{p!r} has {size} bytes; an MXNet .params file has at least a 24-byte header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            r = _Reader(buf, p)
            magic, _reserved = r.unpack("<QQ", "header")
            if magic != MXNET_LIST_MAGIC:
                raise ValueError(f"{p!r} is not an MXNet .params file: header {magic:#x}, expected "
                                 f"{MXNET_LIST_MAGIC:#x}")
            (n,) = r.unpack("<Q", "array count")
            if n > size:
                raise ValueError(f"{p!r}: implausible array count {n} for a {size}-byte file")
            arrays = [_read_ndarray(r, i) for i in range(n)]
            (k,) = r.unpack("<Q", "name count")
            if k != n:
                raise ValueError(f"{p!r} holds {n} arrays but {k} names; a weights file names every array")
            names = []
            for i in range(k):
                (length,) = r.unpack("<Q", f"name {i} length")
                names.append(bytes(r.take(length, f"name {i}")).decode("utf-8"))
            del r
    out: dict[str, np.ndarray] = {}
    for name, arr in zip(names, arrays):
        if arr is not None:
            out[name] = arr
    return out


# ----------------------------------------------------------------------------------------------------------
# Caffe .caffemodel (protobuf wire format)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class CaffeLayer:
    """One ``LayerParameter`` of a caffemodel: name, type string and its blobs as float32 arrays."""

    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated protobuf varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed protobuf varint")


def _fields(buf: memoryview) -> Any:
    """Yield ``(field_number, wire_type, value)``; value is an int for varints and a memoryview otherwise."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
            yield num, wt, val
        elif wt == 1:
            yield num, wt, buf[pos:pos + 8]
            pos += 8
        elif wt == 2:
            length, pos = _varint(buf, pos)
            if pos + length > n:
                raise ValueError(f"truncated protobuf field {num}: {length} bytes announced, {n - pos} left")
            yield num, wt, buf[pos:pos + length]
            pos += length
        elif wt == 5:
            yield num, wt, buf[pos:pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt} (field {num})")


def _packed_varints(buf: memoryview) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        v, pos = _varint(buf, pos)
        out.append(v)
    return out


def _blob(buf: memoryview) -> np.ndarray:
    """``BlobProto``: shape (7: BlobShape.dim, 1-4: legacy num/channels/height/width), data (5) or double_data (8)."""
    dims: list[int] = []
    legacy = {1: 0, 2: 0, 3: 0, 4: 0}
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    for num, wt, val in _fields(buf):
        if num == 7 and wt == 2:
            for n2, w2, v2 in _fields(val):
                if n2 == 1:
                    dims.extend(_packed_varints(v2) if w2 == 2 else [int(v2)])
        elif num in legacy and wt == 0:
            legacy[num] = int(val)
        elif num == 5:
            floats.append(np.frombuffer(val, dtype="<f4"))  # packed (wt 2) or one value (wt 5)
        elif num == 8:
            doubles.append(np.frombuffer(val, dtype="<f8"))
    data = (np.concatenate(floats) if floats else np.concatenate(doubles).astype(np.float32) if doubles
            else np.zeros(0, np.float32))
    shape = tuple(dims) if dims else tuple(v for v in (legacy[1], legacy[2], legacy[3], legacy[4]))
    if not dims and all(v == 0 for v in shape):
        shape = (data.size,)
    if int(np.prod(shape, dtype=np.int64)) != data.size:
        raise ValueError(f"caffemodel blob holds {data.size} values but its shape is {shape}")
    return data.astype(np.float32).reshape(shape)


def read_caffemodel(source: str | os.PathLike | bytes) -> list[CaffeLayer]:
    """Parse a ``.caffemodel`` (``NetParameter``) into its layers with blobs, without Caffe or protobuf.

    Only the fields needed for weights are decoded: ``NetParameter.layer`` (field 100),
    ``LayerParameter.name``/``type``/``blobs`` (1, 2, 7) and ``BlobProto`` shape and data. Layers without
    blobs are skipped. Files in the pre-2015 ``layers`` (V1) format are refused with a hint.

    Raises:
        ValueError: not a caffemodel, or V1 layers only.
    """
    if isinstance(source, (bytes, bytearray)):
        raw, label = bytes(source), "<bytes>"
    else:
        label = os.fspath(source)
        with open(label, "rb") as f:
            raw = f.read()
    buf = memoryview(raw)
    layers: list[CaffeLayer] = []
    n_v1 = 0
    try:
        for num, wt, val in _fields(buf):
            if num == 100 and wt == 2:
                name, typ, blobs = "", "", []
                for n2, w2, v2 in _fields(val):
                    if n2 == 1 and w2 == 2:
                        name = bytes(v2).decode("utf-8")
                    elif n2 == 2 and w2 == 2:
                        typ = bytes(v2).decode("utf-8")
                    elif n2 == 7 and w2 == 2:
                        blobs.append(_blob(v2))
                if blobs:
                    layers.append(CaffeLayer(name, typ, blobs))
            elif num == 2 and wt == 2:
                n_v1 += 1
    except ValueError as e:
        raise ValueError(f"{label!r} is not a readable caffemodel: {e}") from None
    if not layers:
        hint = (f" It holds {n_v1} layers in the old V1 'layers' format; convert it once with Caffe's "
                "upgrade_net_proto_binary tool." if n_v1 else "")
        raise ValueError(f"{label!r} holds no layers with weights (not a caffemodel?).{hint}")
    return layers


_BLOCK = {"a": 1, "b": 2, "c": 3}
_BRANCH = {"1": "shortcut", "2a": "reduce", "2b": "conv3x3", "2c": "increase"}


def caffe_to_deeplab_name(layer: str) -> str | None:
    """The deeplab-pytorch module name of an MSRA/DeepLab ResNet-101 caffe layer.

    As ``convert.py`` ``translate_layer_name``; ``None`` for a name it does not translate.

    ``conv1`` -> ``layer1.conv1.conv``; ``bn_conv1`` -> ``layer1.conv1.bn``; ``res3b2_branch2b`` ->
    ``layer3.block3.conv3x3.conv``; ``bn4a_branch1`` -> ``layer4.block1.shortcut.bn``; ``fc1_voc12_c0`` ->
    ``aspp.c0``; ``fc1_coco`` -> ``fc``.
    """
    toks = layer.split("_")
    if "pool" in toks[0]:
        return None  # pooling layers have no weights
    if "fc" in toks[0]:
        return f"aspp.{toks[2]}" if len(toks) == 3 else "fc"
    if "conv1" in toks[0]:
        return "layer1.conv1.conv"
    if len(toks) > 1 and "conv1" in toks[1]:
        return "layer1.conv1.bn"
    m = re.fullmatch(r"(res|bn)(\d)([a-z])(\d*)", toks[0])
    if m is None or len(toks) < 2 or not toks[1].startswith("branch") or toks[1][6:] not in _BRANCH:
        return None
    kind, stage, letter, idx = m.groups()
    block = _BLOCK.get(letter) if not idx else int(idx) + 1
    if block is None:
        return None
    return f"layer{stage}.block{block}.{_BRANCH[toks[1][6:]]}.{'conv' if kind == 'res' else 'bn'}"


def caffemodel_to_deeplab(layers: list[CaffeLayer] | str | os.PathLike | bytes, *, heads: bool = True
                          ) -> dict[str, Tensor]:
    """The deeplab-pytorch state dict of a DeepLab-v2 / MSRA ResNet-101 caffemodel (``convert.py`` semantics).

    Convolution and InnerProduct blobs become ``<name>.weight`` (and ``.bias``); a BatchNorm layer's mean and
    variance are divided by its scale factor (blob 2; Caffe treats a factor of 0 as 0) and get
    ``num_batches_tracked = 0``; the Scale layer that follows it gives the BN ``weight`` and ``bias``. The
    half- and three-quarter-scale copies of the multi-scale VOC model (``res05``, ``res075``) are skipped,
    as in ``convert.py``. The result loads into `DeepLabV2` through the
    ``deeplab_pytorch`` key map.

    Args:
        layers: parsed layers, a caffemodel path or its bytes.
        heads: keep the classifier layers (``fc*`` -> ``fc`` or ``aspp.c*``). ``False`` keeps the ResNet only,
            which is what an initialisation needs: deeplab-pytorch loads its init with the ASPP skipped
            (``main.py``, ``strict=False``) and this library drops the DeepLab-v1 ``fc``; the class count and
            layout of a release's classifier then do not matter.

    Raises:
        ValueError: a Scale layer without a preceding BatchNorm, or a layer name with weights that is not
            a ResNet-101 / DeepLab name (the caffemodel is of another architecture).
    """
    if not isinstance(layers, list):
        layers = read_caffemodel(layers)
    out: dict[str, Tensor] = {}
    last_bn: str | None = None
    prev_type = ""
    unknown: list[str] = []
    for layer in layers:
        if "res075" in layer.name or "res05" in layer.name:
            continue
        typ, b = layer.type, layer.blobs
        if "Scale" in typ:
            if prev_type != "BatchNorm" or last_bn is None:
                raise ValueError(f"caffemodel layer {layer.name!r} (Scale) does not follow a BatchNorm layer")
            out[f"{last_bn}.weight"] = torch.from_numpy(b[0].reshape(-1).copy())
            out[f"{last_bn}.bias"] = torch.from_numpy(b[1].reshape(-1).copy())
            prev_type = typ
            continue
        target = caffe_to_deeplab_name(layer.name)
        if target is None:
            unknown.append(f"{layer.name} ({typ})")
            prev_type = typ
            continue
        if not heads and (target == "fc" or target.startswith("aspp.")):
            prev_type = typ
            continue
        if target != "fc" and (f"{target}.weight" in out or f"{target}.running_mean" in out):
            raise ValueError(f"caffemodel layer {layer.name!r} maps onto {target!r}, which an earlier layer filled")
        if "BatchNorm" in typ:
            factor = float(b[2].reshape(-1)[0]) if len(b) > 2 else 1.0
            scale = 0.0 if factor == 0 else 1.0 / factor
            out[f"{target}.running_mean"] = torch.from_numpy((b[0].reshape(-1) * scale).astype(np.float32))
            out[f"{target}.running_var"] = torch.from_numpy((b[1].reshape(-1) * scale).astype(np.float32))
            out[f"{target}.num_batches_tracked"] = torch.tensor(0)
            last_bn = target
        elif "Convolution" in typ:
            out[f"{target}.weight"] = torch.from_numpy(b[0].copy())
            if len(b) > 1:
                out[f"{target}.bias"] = torch.from_numpy(b[1].reshape(-1).copy())
        elif "InnerProduct" in typ:
            w = b[0]
            out[f"{target}.weight"] = torch.from_numpy(w.reshape(w.shape[-2], w.shape[-1]) if w.ndim > 2 else w.copy())
            if len(b) > 1:
                out[f"{target}.bias"] = torch.from_numpy(b[1].reshape(-1).copy())
        prev_type = typ
    if unknown:
        raise ValueError(f"caffemodel layers with weights that are not DeepLab / ResNet-101 layers: "
                         f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    return out


# ----------------------------------------------------------------------------------------------------------
# Hugging Face SegFormer -> SegFormer release (mmseg) names
# ----------------------------------------------------------------------------------------------------------
_HF_BLOCK = {"layer_norm_1": "norm1", "layer_norm_2": "norm2", "attention.self.query": "attn.q",
             "attention.self.sr": "attn.sr", "attention.self.layer_norm": "attn.norm",
             "attention.output.dense": "attn.proj", "mlp.dense1": "mlp.fc1", "mlp.dense2": "mlp.fc2",
             "mlp.dwconv.dwconv": "mlp.dwconv.dwconv"}


def hf_segformer_to_mit(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """Rename a Hugging Face SegFormer encoder state dict to the SegFormer release names (``mit_b*.pth``).

    ``segformer.encoder.`` (``SegformerForImageClassification``) or ``encoder.`` (``SegformerModel``) prefixes
    are removed; ``patch_embeddings.{i}.{proj,layer_norm}`` -> ``patch_embed{i+1}.{proj,norm}``;
    ``block.{i}.{j}.{layer_norm_1, attention.self.query, attention.output.dense, mlp.dense1, ...}`` ->
    ``block{i+1}.{j}.{norm1, attn.q, attn.proj, mlp.fc1, ...}``; the separate ``key`` and ``value`` projections
    are concatenated (key first) into ``attn.kv``; ``layer_norm.{i}`` -> ``norm{i+1}``; the ImageNet
    ``classifier`` -> ``head``.

    Raises:
        ValueError: a key that is not part of a SegFormer encoder, or a key without its value partner.
    """
    out: dict[str, Tensor] = {}
    kv: dict[str, dict[str, Tensor]] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        t = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
        k = key
        for prefix in ("segformer.encoder.", "encoder."):
            if k.startswith(prefix):
                k = k[len(prefix):]
                break
        else:
            if k.startswith("classifier."):
                out["head." + k[len("classifier."):]] = t
                continue
            unknown.append(key)
            continue
        m = re.fullmatch(r"patch_embeddings\.(\d+)\.(proj|layer_norm)\.(weight|bias)", k)
        if m:
            out[f"patch_embed{int(m.group(1)) + 1}.{'proj' if m.group(2) == 'proj' else 'norm'}.{m.group(3)}"] = t
            continue
        m = re.fullmatch(r"layer_norm\.(\d+)\.(weight|bias)", k)
        if m:
            out[f"norm{int(m.group(1)) + 1}.{m.group(2)}"] = t
            continue
        m = re.fullmatch(r"block\.(\d+)\.(\d+)\.(.+)\.(weight|bias)", k)
        if m:
            stage, idx, mod, param = int(m.group(1)) + 1, m.group(2), m.group(3), m.group(4)
            base = f"block{stage}.{idx}."
            if mod in ("attention.self.key", "attention.self.value"):
                kv.setdefault(f"{base}attn.kv.{param}", {})[mod.rsplit(".", 1)[1]] = t
                continue
            if mod in _HF_BLOCK:
                out[f"{base}{_HF_BLOCK[mod]}.{param}"] = t
                continue
        unknown.append(key)
    for name, parts in kv.items():
        if set(parts) != {"key", "value"}:
            raise ValueError(f"Hugging Face SegFormer checkpoint has only the {sorted(parts)} part of {name}")
        out[name] = torch.cat([parts["key"], parts["value"]], dim=0)
    if unknown:
        raise ValueError(f"not Hugging Face SegFormer encoder keys: {', '.join(unknown[:8])}"
                         f"{' ...' if len(unknown) > 8 else ''}")
    return out
