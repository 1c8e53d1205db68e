"""The mutation test: every public callable, called validly and with each tensor argument broken.

Each outcome must be a correct result (finite; for a change of memory layout equal to the valid call's) or a
``ValueError``/``TypeError`` raised by the library naming the argument: never an error from inside torch/NumPy,
a silent acceptance of invalid input, or NaN out of finite input. The harness and its classification are in
``tests/mutation_harness.py``, the valid calls in ``tests/mutation_cases.py``; ``python tests/mutation_cases.py``
prints the summary table.
"""

from __future__ import annotations

import pytest
from mutation_cases import CASES, EXCLUDED
from mutation_harness import FAILURES, public_callables, run_case

import wsss_blocks


@pytest.fixture(autouse=True)
def _checks_on():
    wsss_blocks.set_checks(True)
    yield
    wsss_blocks.set_checks(True)


def test_every_public_callable_has_a_case():
    """A new public callable needs a valid call in tests/mutation_cases.py (or an exclusion with its reason)."""
    public = public_callables()
    missing = sorted(n for n in public if n not in CASES and n not in EXCLUDED)
    assert missing == [], f"public callables without a mutation case: {missing}"
    stale = sorted({n.split("[")[0] for n in CASES} - set(public)) + sorted(set(EXCLUDED) - set(public))
    assert stale == [], f"mutation cases or exclusions for names that are not public (any more): {stale}"
    assert not set(CASES) & set(EXCLUDED)
    assert all(reason.strip() for reason in EXCLUDED.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_mutations(name):
    outcomes = run_case(CASES[name])
    assert outcomes[0].mutation == "valid"
    bad = [o for o in outcomes if o.status in FAILURES]
    assert bad == [], "\n".join(f"{o.status}: {o.arg} {o.mutation}: {o.detail}" for o in bad)


def test_mutation_outcomes_are_deterministic():
    names = ["dense_crf[torch]", "l2g_transfer", "self_correspondence_loss", "data.RandomCrop"]
    first = [[(o.arg, o.mutation, o.status) for o in run_case(CASES[n])] for n in names]
    again = [[(o.arg, o.mutation, o.status) for o in run_case(CASES[n])] for n in names]
    assert first == again
    assert all(len(f) > 5 for f in first)  # the cases do mutate their arguments


def test_the_harness_catches_each_failure_kind():
    """The classification itself: a silent acceptance, a deep error, an unnamed error, NaN out and a layout
    mismatch are each reported (a harness that cannot fail would prove nothing).
    """
    import torch
    from mutation_harness import Case

    def lazy(x: torch.Tensor) -> torch.Tensor:  # checks nothing: accepts NaN, wrong ranks, everything
        return x.sum(-1)

    def deep(x: torch.Tensor) -> torch.Tensor:  # lets torch fail on a wrong rank
        return torch.nn.functional.conv2d(x, torch.ones(1, 3, 1, 1))

    def unnamed(x: torch.Tensor) -> torch.Tensor:  # a library error that names another argument
        from wsss_blocks._checks import check_tensor

        return check_tensor(x, "something_else", 4)

    def nan_out(x: torch.Tensor) -> torch.Tensor:
        return x / (x - x)

    def layout(x: torch.Tensor) -> torch.Tensor:
        return x.flatten() if x.is_contiguous() else -x.flatten()

    statuses = {}
    for fn in (lazy, deep, unnamed, nan_out, layout):
        c = Case(fn.__name__, fn, lambda h, w: {"x": torch.rand(2, 3, h, w)}, odd_size=None)
        statuses[fn.__name__] = {o.status for o in run_case(c)}
    assert "silent" in statuses["lazy"]
    assert "deep" in statuses["deep"]
    assert "unnamed" in statuses["unnamed"]
    assert "nan" in statuses["nan_out"]
    assert "mismatch" in statuses["layout"]
