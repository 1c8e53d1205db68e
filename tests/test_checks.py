"""The validation layer (wsss_blocks._checks) and the switch for the value checks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import wsss_blocks
from wsss_blocks import cams_to_mask, normalize_cams
from wsss_blocks._checks import (
    _enabled_by_environment,
    check_choice,
    check_finite,
    check_int,
    check_labels,
    check_masks,
    check_number,
    check_range,
    compute_dtype,
)


@pytest.fixture(autouse=True)
def _checks_on():
    wsss_blocks.set_checks(True)
    yield
    wsss_blocks.set_checks(True)


def test_value_checks_raise_by_default():
    assert wsss_blocks.checks_enabled()
    with pytest.raises(ValueError, match=r"x contains non-finite values \(1 NaN, 0 Inf\)"):
        check_finite(torch.tensor([1.0, float("nan")]), "x")
    with pytest.raises(ValueError, match=r"x must lie in \[0.0, 1.0\]"):
        check_range(torch.tensor([0.5, 2.0]), "x", 0.0, 1.0)
    with pytest.raises(ValueError, match="multi-hot"):
        check_labels(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="outside"):
        check_masks(torch.tensor([[3]]), "mask", 2)


def test_switch_turns_value_checks_off_but_not_structure_checks():
    nan = torch.tensor([[[[float("nan"), 1.0]]]])
    wsss_blocks.set_checks(False)
    assert not wsss_blocks.checks_enabled()
    check_finite(nan, "x")
    check_range(torch.tensor([5.0]), "x", 0.0, 1.0)
    assert check_labels(torch.tensor([[0.5, 1.0]])).tolist() == [[0.5, 1.0]]  # converted, not checked
    check_masks(torch.tensor([[3]]), "mask", 2)
    assert torch.isnan(normalize_cams(nan)).any()  # NaN in, NaN out instead of an error
    with pytest.raises(ValueError, match="B×C×H×W"):  # shapes are still checked
        cams_to_mask(torch.rand(2, 3))
    with pytest.raises(TypeError, match="integer tensor"):  # dtypes too
        check_masks(torch.rand(1, 2), "mask", 2)
    with pytest.raises(ValueError, match="mode must be one of"):  # and hyperparameters
        normalize_cams(nan, mode="sum")  # type: ignore[arg-type]
    wsss_blocks.set_checks(True)
    with pytest.raises(ValueError, match="non-finite"):
        normalize_cams(nan)
    with pytest.raises(TypeError, match="enabled must be a bool"):
        wsss_blocks.set_checks(0)  # type: ignore[arg-type]


def test_context_manager_restores_the_previous_state():
    with wsss_blocks.checks(False):
        assert not wsss_blocks.checks_enabled()
        with wsss_blocks.checks(True):
            assert wsss_blocks.checks_enabled()
        assert not wsss_blocks.checks_enabled()
    assert wsss_blocks.checks_enabled()
    with pytest.raises(RuntimeError), wsss_blocks.checks(False):
        raise RuntimeError("restored even on an error")
    assert wsss_blocks.checks_enabled()


def test_no_host_sync_with_checks_off(monkeypatch):
    """With value checks off, a block that would read values to validate them reads none (no ``bool(tensor)``)."""
    calls = []
    real_bool = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda self: calls.append(1) or real_bool(self))
    cams, labels = torch.rand(2, 3, 4, 4), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    cams_to_mask(cams, labels)
    assert calls  # on: the NaN and the {0, 1} checks read the values
    calls.clear()
    with wsss_blocks.checks(False):
        cams_to_mask(cams, labels)
    assert calls == []


def test_environment_variable_values():
    for on in (None, "", "1", "yes", " on ", "true"):
        assert _enabled_by_environment(on), on
    for off in ("0", "false", "False", "no", "OFF", " off "):
        assert not _enabled_by_environment(off), off


@pytest.mark.slow
def test_environment_variable_sets_the_initial_state():
    code = "import wsss_blocks; print(wsss_blocks.checks_enabled())"
    env = {**os.environ, "WSSS_BLOCKS_CHECKS": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
    env["WSSS_BLOCKS_CHECKS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "True"


def test_scalar_checks_name_the_argument():
    assert check_int(3, "n", minimum=1) == 3
    assert check_int(torch.tensor(3).numpy()[()], "n") == 3  # numpy integers are ints
    with pytest.raises(ValueError, match="n must be an int >= 1, got 0"):
        check_int(0, "n", minimum=1)
    with pytest.raises(ValueError, match=r"n must be an int in \[0, 2\], got 3"):
        check_int(3, "n", minimum=0, maximum=2)
    with pytest.raises(TypeError, match="n must be an int >= 1, got bool True"):
        check_int(True, "n", minimum=1)
    with pytest.raises(TypeError, match=r"n must be an int, got float 1.5"):
        check_int(1.5, "n")
    assert check_number(2, "w", 0.0) == 2.0
    with pytest.raises(ValueError, match="w must be > 0, got 0"):
        check_number(0, "w", 0.0, strict=True)
    with pytest.raises(ValueError, match="w must be <= 1, got 2"):
        check_number(2, "w", maximum=1.0)
    with pytest.raises(ValueError, match="w must be a finite number, got nan"):
        check_number(float("nan"), "w")
    check_choice("a", "mode", ("a", "b"))
    with pytest.raises(ValueError, match="mode must be one of 'a', 'b', got 'c'"):
        check_choice("c", "mode", ("a", "b"))


def test_compute_dtype_promotes_to_float32_and_keeps_float64():
    half, f64 = torch.zeros(1, dtype=torch.float16), torch.zeros(1, dtype=torch.float64)
    assert compute_dtype(half) == torch.float32
    assert compute_dtype(torch.zeros(1, dtype=torch.bfloat16)) == torch.float32
    assert compute_dtype(half, f64) == torch.float64
    assert compute_dtype(torch.zeros(1, dtype=torch.long)) == torch.float32
