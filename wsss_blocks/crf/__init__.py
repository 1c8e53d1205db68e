"""Dense CRF: one front end ([`DenseCRF`][], [`dense_crf`][wsss_blocks.crf.dense_crf.dense_crf]) over two backends.

* ``"pydensecrf"`` — Krähenbühl's C++ code through ``pydensecrf`` (the ``crf`` extra), CPU;
  [`pool_map`][wsss_blocks.crf.pydensecrf_backend.pool_map] runs a dataset through it in a process pool.
* ``"torch"`` — [`wsss_blocks.crf.permutohedral`][wsss_blocks.crf.permutohedral], a batched pure-PyTorch permutohedral
  lattice with the same energy, normalisation and mean-field update, on CPU or CUDA.

Released parameter sets are in [`PRESETS`][wsss_blocks.crf.dense_crf.PRESETS] (sources in
[`PRESET_SOURCES`][wsss_blocks.crf.dense_crf.PRESET_SOURCES]).
"""

from .dense_crf import (
    BACKENDS,
    PRESET_SOURCES,
    PRESETS,
    DenseCRF,
    as_dense_crf,
    dense_crf,
    dense_crf_from_unary,
    resolve_backend,
    unary_from_mask,
    unary_from_probs,
)
from .permutohedral import PairwiseOperator, PermutohedralLattice, build_lattice, lattice_filter, mean_field
from .pydensecrf_backend import pool_map, pydensecrf_available, pydensecrf_inference

__all__ = [
    "BACKENDS",
    "PRESETS",
    "PRESET_SOURCES",
    "DenseCRF",
    "as_dense_crf",
    "dense_crf",
    "dense_crf_from_unary",
    "unary_from_probs",
    "unary_from_mask",
    "resolve_backend",
    "PermutohedralLattice",
    "build_lattice",
    "lattice_filter",
    "PairwiseOperator",
    "mean_field",
    "pydensecrf_available",
    "pydensecrf_inference",
    "pool_map",
]
