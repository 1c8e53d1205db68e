"""SMAF's offline teacher maps on disk: one fused map per training image, written once, read per crop.

The released SMAF (``bupt-ai-cz/SMAF`` ``gen_fused_cam.py``) fuses the frozen teacher's multi-scale maps once per
full training image and stores them; self-training then cuts every crop's target out of its image's stored map.
[`FusedMapStore`][] keeps those files: ``<folder>/<name>.npy`` holds the present classes of one image
(ascending class order) as a ``C_present × H × W`` array, ``<folder>/meta.json`` the settings that made them, so
a later run with other settings is refused instead of training on stale maps. Files are written atomically and
existing ones are kept, so an interrupted run resumes; under DDP every rank writes its share.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["FusedMapStore", "FuseFn"]

FuseFn = Callable[[Tensor, Tensor], Tensor]
"""``fuse(image01, labels) -> maps``: B×3×H×W images in [0, 1] and B×C labels on the teacher's device to the B×C×H×W
fused, per-class max-normalised maps."""


class FusedMapStore:
    """A folder of fused teacher maps (``<name>.npy``, present classes only) with its ``meta.json``.

    Args:
        folder: where the maps live.
        meta: the settings the maps are made with; written to ``meta.json`` and compared on later runs.
        dtype: storage type, ``"float32"`` (released) or ``"float16"``.
        cache_mb: keep loaded maps in memory up to this many MB (0 = read each time from disk).

    Examples:
        >>> import tempfile
        >>> store = FusedMapStore(tempfile.mkdtemp(), meta={"scales": [1.0]})
        >>> fuse = lambda images, labels: torch.ones(images.shape[0], labels.shape[1], *images.shape[-2:])
        >>> data = [{"name": "a", "image": torch.rand(3, 4, 5), "labels": torch.tensor([0.0, 1.0])}]
        >>> store.fill(data, [0], fuse, torch.device("cpu"), batch_size=1)
        1
        >>> store.load("a").shape  # one present class
        torch.Size([1, 4, 5])
    """

    def __init__(self, folder: str | Path, meta: Mapping[str, Any], dtype: str = "float32",
                 cache_mb: float = 256.0) -> None:
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.folder = Path(folder)
        self.meta = json.loads(json.dumps(dict(meta)))
        self.dtype = dtype
        self.cache_mb = float(cache_mb)
        self._cache: dict[str, Tensor] = {}
        self._cache_bytes = 0

    def path(self, name: str) -> Path:
        """The file of image ``name``."""
        return self.folder / f"{name}.npy"

    def has(self, name: str) -> bool:
        """Whether the map of image ``name`` is on disk."""
        return self.path(name).is_file()

    def check_meta(self) -> None:
        """Raise ``ValueError`` if ``meta.json`` exists and records other settings than `meta`."""
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            return
        found = json.loads(meta_path.read_text())
        if found != self.meta:
            diff = {k: (found.get(k), self.meta.get(k)) for k in sorted(set(found) | set(self.meta))
                    if found.get(k) != self.meta.get(k)}
            raise ValueError(f"the stored SMAF fused maps in {str(self.folder)!r} were made with other settings "
                             f"(stored, now): {diff}; delete that folder or restore the settings")

    def write_meta(self) -> None:
        """Write ``meta.json`` (atomically) unless it exists."""
        from wsss_blocks.data.io import atomic_write

        if not (self.folder / "meta.json").is_file():
            with atomic_write(self.folder / "meta.json", "w", fsync=False) as f:
                f.write(json.dumps(self.meta, indent=1))

    def fill(self, dataset: Any, indices: Sequence[int], fuse: FuseFn, device: torch.device, batch_size: int = 1,
             progress: Callable[[int], object] | None = None) -> int:
        """Compute and write the maps of ``indices`` that are not on disk yet (this process only, no barrier).

        Consecutive images of equal size are fused in batches of up to ``batch_size``; ``dataset[i]`` must give
        ``name``, ``image`` (3×H×W in [0, 1]) and ``labels`` (C multi-hot). ``progress(n)`` is called after
        every ``n`` images written. Returns the number of maps written.
        """
        from wsss_blocks.data.io import atomic_write

        from .datasets import iter_inference_batches
        from .distributed import DistEnv

        written = 0
        for batch in iter_inference_batches(dataset, DistEnv(), batch_size, indices=indices):
            group = [g for g in batch if not self.has(str(g["name"]))]
            if not group:
                continue
            images = torch.stack([g["image"] for g in group]).to(device)
            labels = torch.stack([g["labels"] for g in group]).float().to(device)
            fused = fuse(images.float(), labels)
            for g, f, lab in zip(group, fused, labels):
                present = torch.nonzero(lab > 0.5).flatten()
                arr = f.index_select(0, present).cpu().numpy().astype(self.dtype)
                with atomic_write(self.path(str(g["name"])), "wb", fsync=False) as fh:
                    np.save(fh, arr)
            written += len(group)
            if progress is not None:
                progress(len(group))
        return written

    def precompute(self, dataset: Any, fuse: FuseFn, device: torch.device, batch_size: int = 1,
                   show_progress: bool = False) -> int:
        """Store the map of every image of ``dataset`` (each rank its share under DDP, then a barrier).

        Checks ``meta.json`` first ([`check_meta`][]) and writes it on rank 0; images whose file exists are
        skipped without being loaded when ``dataset`` has ``names``. Returns the number of maps this rank wrote.
        """
        from .distributed import barrier, shard_indices

        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.check_meta()
        if rank == 0:
            self.write_meta()
        mine = shard_indices(len(dataset), rank, world)
        names = getattr(dataset, "names", None)
        if names is not None:  # skip finished images without loading them
            mine = [i for i in mine if not self.has(str(names[i]))]
        pbar = None
        if show_progress and rank == 0 and mine:
            try:
                from tqdm.auto import tqdm

                pbar = tqdm(total=len(mine), desc="smaf:fused_maps", dynamic_ncols=True, mininterval=1.0)
            except ImportError:  # pragma: no cover - tqdm is a train dependency
                pbar = None
        try:
            written = self.fill(dataset, mine, fuse, device, batch_size, None if pbar is None else pbar.update)
        finally:
            if pbar is not None:
                pbar.close()
        barrier()
        return written

    def load(self, name: str, rebuild: Callable[[], object] | None = None) -> Tensor:
        """The stored map of one image (C_present × H × W, float32, CPU), from the in-memory cache if held.

        A missing file is rebuilt with ``rebuild()`` (which must write it) when given, else
        ``FileNotFoundError`` is raised.
        """
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        path = self.path(name)
        if not path.is_file():
            if rebuild is None:
                raise FileNotFoundError(f"SMAF fused map {str(path)!r} is missing and cannot be rebuilt (no "
                                        f"training dataset or batch['index']); rerun the self-training phase")
            rebuild()
        arr = torch.from_numpy(np.load(path).astype(np.float32))
        nbytes = arr.numel() * 4
        if self._cache_bytes + nbytes <= self.cache_mb * 2**20:
            self._cache[name] = arr
            self._cache_bytes += nbytes
        return arr
