"""Mutation harness: one valid call per public callable, and the same call with each argument broken.

Scope: every callable in ``wsss_blocks.__all__``, ``wsss_blocks.crf.__all__``, ``wsss_blocks.data.__all__`` and
``wsss_blocks.models.__all__`` (the trainer, hub and CLI are out of scope: they take configs and folders, not
tensors, and have their own tests). Each one has an entry in `CASES` (a factory of inputs and the call),
unless `EXCLUDED` names it with the reason; ``test_every_public_callable_has_a_case`` fails when a new
public callable has neither.

Mutations of each tensor (or NumPy array) argument:

- ``rank+`` / ``rank-``: one dimension more / less;
- ``batch``: a batch size that differs from the other batched arguments;
- ``classes``: a class count that differs from the other arguments';
- ``nan`` / ``inf``: one non-finite value in a floating-point argument;
- ``labels=2`` / ``labels=-1`` / ``labels=0.5``: multi-hot labels outside {0, 1};
- ``mask=K`` / ``mask=-1`` / ``mask=254``: mask values outside [0, K) ∪ {255};
- ``value=v``: a value the argument must not hold (``Case.bad_values``, e.g. a negative count);
- ``dtype``: an integer tensor for a floating-point argument, a float one for an integer argument;
- ``zero``: zero-size batch (all batched arguments together);
- ``noncontig`` / ``channels_last``: the same values in another memory layout;
- ``odd``: the whole call rebuilt at an odd spatial size.

Each outcome is classified (`run_case`): a result (finite; for ``noncontig`` / ``channels_last`` equal to the
valid call's result; for ``dtype`` equal to the call on the converted values) or a ``ValueError``/``TypeError``
raised by the library whose message names the argument are fine. The failures are ``deep`` (an exception from
inside torch/NumPy/PIL, or of another type), ``unnamed`` (a library error that does not name the argument),
``silent`` (invalid input accepted), ``nan`` (a non-finite result from finite input, or NaN in, NaN out without a
word) and ``mismatch`` (a layout change that changes the result).

The cases live in ``tests/mutation_cases.py``; ``python tests/mutation_cases.py [NAME ...]`` prints the table.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import tempfile
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import wsss_blocks

PACKAGE_DIR = str(Path(wsss_blocks.__file__).resolve().parent)

#: the public namespaces in scope, with the prefix their names get in CASES (top-level names have none)
SCOPE = {"wsss_blocks": "", "wsss_blocks.crf": "crf.", "wsss_blocks.data": "data.", "wsss_blocks.models": "models."}

Array = torch.Tensor | np.ndarray
Inputs = dict[str, Any]


@dataclass
class Case:
    """One public callable: ``call(**inputs(h, w))`` is a valid call; the other fields say what to break."""

    name: str
    call: Callable[..., Any]
    inputs: Callable[[int, int], Inputs]
    size: tuple[int, int] = (8, 8)
    odd_size: tuple[int, int] | None = (9, 7)
    batch: tuple[str, ...] = ()
    classes: tuple[tuple[str, int], ...] = ()
    labels: tuple[str, ...] = ()
    masks: dict[str, int] = field(default_factory=dict)
    bad_values: dict[str, tuple[float, ...]] = field(default_factory=dict)
    any_rank: tuple[str, ...] = ()
    nan_ok: tuple[str, ...] = ()
    no_mutate: tuple[str, ...] = ()
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    atol: float = 1e-5
    skip: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    case: str
    arg: str
    mutation: str
    status: str  # ok | clear | deep | unnamed | silent | nan | mismatch | by_design
    detail: str = ""


FAILURES = ("deep", "unnamed", "silent", "nan", "mismatch")

CASES: dict[str, Case] = {}
EXCLUDED: dict[str, str] = {}


def case(*names: str, **spec: Any) -> Callable[[Callable[[int, int], Inputs]], Callable[[int, int], Inputs]]:
    """Register ``names`` (``"name"`` or ``("name", call)`` pairs via ``calls=``) with the decorated input factory.

    ``calls`` maps each name to its callable; by default the name is looked up in its namespace.
    """
    calls: dict[str, Callable[..., Any]] = spec.pop("calls", {})

    def deco(inputs: Callable[[int, int], Inputs]) -> Callable[[int, int], Inputs]:
        for n in names:
            if n in CASES:
                raise AssertionError(f"duplicate case {n}")
            call = calls.get(n) or _lookup(n)
            CASES[n] = Case(n, call, inputs, **spec)
        return inputs

    return deco


def _lookup(name: str) -> Callable[..., Any]:
    name = name.split("[")[0]  # "dense_crf[image_uint8]": a second case of dense_crf
    mod = "wsss_blocks"
    if "." in name:
        prefix, name = name.split(".", 1)
        mod = f"wsss_blocks.{prefix}"
    return getattr(importlib.import_module(mod), name)  # type: ignore[no-any-return]


def public_callables() -> dict[str, object]:
    """Every callable of the namespaces in `SCOPE`, by its CASES name (objects re-exported at the top
    level appear once, under the top-level name).
    """
    out: dict[str, object] = {}
    seen: set[int] = set()
    for mod_name, prefix in SCOPE.items():
        mod = importlib.import_module(mod_name)
        for n in mod.__all__:
            obj = getattr(mod, n)
            if not callable(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            out[prefix + n] = obj
    return out


# ----------------------------------------------------------------------------------------------------------
# mutations
# ----------------------------------------------------------------------------------------------------------
def _to_torch(x: Array) -> torch.Tensor:
    return torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x


def _like(orig: Array, x: torch.Tensor) -> Array:
    return x.numpy() if isinstance(orig, np.ndarray) else x


def _with_value(x: Array, value: float) -> Array | None:
    """``x`` with its middle element set to ``value`` (None when the dtype cannot hold it)."""
    t = _to_torch(x).clone()
    if t.numel() == 0:
        return None
    if not t.is_floating_point() and float(value) != int(value):
        t = t.double()  # a non-integer value for an integer argument: the caller gets a float array
    elif not t.is_floating_point() and t.dtype != torch.bool:
        info = torch.iinfo(t.dtype)
        if not info.min <= value <= info.max:
            return None  # the dtype cannot hold it (uint8 and -1): nothing to test
    try:
        t.view(-1)[t.numel() // 2] = value
    except RuntimeError:
        return None
    return _like(x, t)


def _noncontig(x: Array) -> Array | None:
    if isinstance(x, np.ndarray):
        if x.ndim < 2:
            return None
        y = np.ascontiguousarray(np.swapaxes(x, -1, -2))
        return np.swapaxes(y, -1, -2)
    if x.ndim == 0 or x.numel() < 2:
        return None
    if x.ndim == 1:
        return torch.stack([x, x], -1)[:, 0]
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


def _is_float(x: Array) -> bool:
    return bool(x.dtype.kind == "f") if isinstance(x, np.ndarray) else x.is_floating_point()


def _is_int(x: Array) -> bool:
    if isinstance(x, np.ndarray):
        return bool(x.dtype.kind in "iu")
    return not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool


def mutations(c: Case, inputs: Inputs) -> Iterator[tuple[str, str, Inputs, bool, tuple[str, ...]]]:
    """``(arg, mutation, inputs, valid, names)``: ``valid`` says whether a result is acceptable (else it must be
    an error), ``names`` the argument names an error may name.
    """
    tensors = {k: v for k, v in inputs.items() if isinstance(v, (torch.Tensor, np.ndarray)) and k not in c.no_mutate}
    for name, x in tensors.items():
        names = (name, *c.aliases.get(name, ()))

        def put(v: Array | None, _name: str = name) -> Inputs:
            return {**inputs, _name: v}

        t = _to_torch(x)
        if t.ndim >= 1:
            yield name, "rank+", put(_like(x, t.unsqueeze(0))), name in c.any_rank, names
            yield name, "rank-", put(_like(x, t[0])), name in c.any_rank, names
        if _is_float(x):
            yield name, "nan", put(_with_value(x, float("nan"))), False, names
            yield name, "inf", put(_with_value(x, float("inf"))), False, names
            yield name, "dtype", put(_like(x, (t * 3).round().long())), False, names
        elif _is_int(x):
            yield name, "dtype", put(_like(x, t.float())), False, names
        if name in c.labels:
            for v in (2.0, -1.0, 0.5):
                if v == 0.5 and not _is_float(x):
                    continue
                yield name, f"labels={v:g}", put(_with_value(x, v)), False, names
        if name in c.masks:
            k = c.masks[name]
            for v in (k, -1, 254):
                yield name, f"mask={v}", put(_with_value(x, v)), False, names
        for v in c.bad_values.get(name, ()):
            yield name, f"value={v:g}", put(_with_value(x, v)), False, names
        nc = _noncontig(x)
        if nc is not None:
            yield name, "noncontig", put(nc), True, names
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            yield name, "channels_last", put(x.contiguous(memory_format=torch.channels_last)), True, names
    group = [n for n in c.batch if n in tensors]
    if len(group) >= 2:
        first = _to_torch(tensors[group[0]])
        if first.shape[0] >= 2:
            yield group[0], "batch", {**inputs, group[0]: _like(tensors[group[0]], first[:1])}, False, tuple(group)
    cls = [(n, d) for n, d in c.classes if n in tensors]
    if len(cls) >= 2:
        n, d = cls[0]
        t = _to_torch(tensors[n])
        if t.shape[d] >= 2:
            yield n, "classes", {**inputs, n: _like(tensors[n], t.narrow(d, 0, t.shape[d] - 1))}, False, \
                tuple(x for x, _ in cls)
    if group or len(tensors) == 1:
        zgroup = group or list(tensors)
        zero = {**inputs}
        for n in zgroup:
            zero[n] = _like(tensors[n], _to_torch(tensors[n])[:0])
        yield zgroup[0], "zero", zero, True, tuple(n for t in tensors for n in (t, *c.aliases.get(t, ())))


# ----------------------------------------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------------------------------------
def _leaves(out: Any) -> list[Any]:
    if isinstance(out, (torch.Tensor, np.ndarray, float, int, bool)) or out is None:
        return [out]
    if isinstance(out, dict):
        return [x for v in out.values() for x in _leaves(v)]
    if isinstance(out, (list, tuple)):
        return [x for v in out for x in _leaves(v)]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [x for f in dataclasses.fields(out) for x in _leaves(getattr(out, f.name))]
    return []


def finite(out: Any) -> bool:
    for v in _leaves(out):
        if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()):
            if not bool(torch.isfinite(v.detach()).all()):
                return False
        elif isinstance(v, np.ndarray) and v.dtype.kind == "f":
            if not bool(np.isfinite(v).all()):
                return False
        elif isinstance(v, float) and not math.isfinite(v):
            return False
    return True


def same(a: Any, b: Any, atol: float, dtypes: bool = True) -> bool:
    la, lb = _leaves(a), _leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.array(x))
        if isinstance(y, np.ndarray):
            y = torch.from_numpy(np.array(y))
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            x, y = x.detach(), y.detach()
            if x.shape != y.shape or (dtypes and x.dtype != y.dtype):
                return False
            if x.is_floating_point() or y.is_floating_point():
                if not torch.allclose(x.double(), y.double(), rtol=1e-5, atol=atol, equal_nan=True):
                    return False
            elif not torch.equal(x, y):
                return False
        elif isinstance(x, float) and isinstance(y, float):
            if not math.isclose(x, y, rel_tol=1e-5, abs_tol=atol):
                return False
        elif x != y:
            return False
    return True


def _raised_in_library(exc: BaseException) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and str(Path(last.tb_frame.f_code.co_filename).resolve()).startswith(PACKAGE_DIR)


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    f = frames[-1]
    return f"{Path(f.filename).name}:{f.lineno}"


def classify_error(exc: BaseException, names: tuple[str, ...]) -> tuple[str, str]:
    msg = str(exc).split("\n")[0][:160]
    detail = f"{type(exc).__name__} at {_where(exc)}: {msg}"
    if not isinstance(exc, (ValueError, TypeError)) or not _raised_in_library(exc):
        return "deep", detail
    if not any(n in str(exc) for n in names):
        return "unnamed", detail
    return "clear", detail


def _call(c: Case, inputs: Inputs) -> Any:
    with torch.no_grad():
        return c.call(**inputs)


def run_case(c: Case) -> list[Outcome]:
    """The valid call, then every mutation; the outcomes of all of them."""
    torch.manual_seed(0)
    out: list[Outcome] = []
    inputs = c.inputs(*c.size)
    try:
        base = _call(c, inputs)
    except Exception as exc:
        out.append(Outcome(c.name, "-", "valid", "deep", f"valid call failed: {classify_error(exc, ())[1]}"))
        return out
    out.append(Outcome(c.name, "-", "valid", "ok" if finite(base) else "nan", "" if finite(base) else
                       "non-finite result of the valid call"))
    for arg, kind, mutated, valid, names in mutations(c, inputs):
        if kind in c.skip or any(v is None for k, v in mutated.items() if inputs.get(k) is not None):
            continue
        out.append(_judge(c, arg, kind, mutated, valid, names, base, inputs))
    if c.odd_size is not None and "odd" not in c.skip:
        try:
            odd_inputs = c.inputs(*c.odd_size)
        except Exception as exc:
            out.append(Outcome(c.name, "-", "odd", "deep", f"odd-size inputs failed: {exc}"))
        else:
            out.append(_judge(c, "-", "odd", odd_inputs, True, tuple(odd_inputs), None, odd_inputs))
    return out


def _judge(c: Case, arg: str, kind: str, mutated: Inputs, valid: bool, names: tuple[str, ...], base: Any,
           inputs: Inputs) -> Outcome:
    torch.manual_seed(0)
    try:
        res = _call(c, mutated)
    except Exception as exc:
        status, detail = classify_error(exc, names)
        return Outcome(c.name, arg, kind, status, detail)
    if kind in ("nan", "inf") and arg in c.nan_ok:
        return Outcome(c.name, arg, kind, "by_design", "non-finite values propagate (documented)")
    if not valid:
        if kind == "dtype":  # accepted and converted: must equal the call on the converted values
            orig = inputs[arg]
            conv = _to_torch(mutated[arg]).to(_to_torch(orig).dtype)
            torch.manual_seed(0)
            try:
                ref = _call(c, {**inputs, arg: _like(orig, conv)})
            except Exception:
                ref = None
            if ref is not None and same(res, ref, c.atol, dtypes=False) and finite(res):
                return Outcome(c.name, arg, kind, "ok", "converted")
            return Outcome(c.name, arg, kind, "silent", "wrong dtype accepted, result differs from converted input")
        if not finite(res):
            return Outcome(c.name, arg, kind, "nan", "invalid input accepted, non-finite result")
        return Outcome(c.name, arg, kind, "silent", "invalid input accepted")
    if not finite(res):
        return Outcome(c.name, arg, kind, "nan", "non-finite result from finite input")
    if kind in ("noncontig", "channels_last") and not same(res, base, c.atol):
        return Outcome(c.name, arg, kind, "mismatch", "result differs from the contiguous input's")
    return Outcome(c.name, arg, kind, "ok")


_SCRATCH: list[Path] = []


def scratch() -> Path:
    """A temporary folder for the cases that read or write files (one per process, removed at exit)."""
    if not _SCRATCH:
        d = tempfile.TemporaryDirectory(prefix="wsss_mutation_")
        _SCRATCH.append(Path(d.name))
        _KEEP.append(d)
    return _SCRATCH[0]


_KEEP: list[Any] = []


def run_all(names: list[str] | None = None) -> list[Outcome]:
    out: list[Outcome] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in names or sorted(CASES):
            out.extend(run_case(CASES[n]))
    return out


def table(outcomes: list[Outcome]) -> str:
    cnt = Counter(o.status for o in outcomes)
    calls = len(outcomes)
    cases = len({o.case for o in outcomes})
    rows = [("callables", cases), ("calls", calls), ("results (valid or by design)", cnt["ok"] + cnt["by_design"]),
            ("clear errors", cnt["clear"]), ("deep errors", cnt["deep"]),
            ("errors not naming the argument", cnt["unnamed"]), ("silent acceptances", cnt["silent"]),
            ("NaN out", cnt["nan"]), ("layout changes the result", cnt["mismatch"])]
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{w}}  {b:>6}" for a, b in rows)
