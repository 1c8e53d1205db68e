"""Reproduce a method's table: CAM mIoU, pseudo-mask mIoU and val mIoU next to the paper's numbers.

A thin front end over `wsss_blocks.train.reproduce` (same as ``wsss-blocks reproduce``)::

    python examples/reproduce_voc.py                      # baseline, synthetic data, CPU, a few minutes
    python examples/reproduce_voc.py --quick              # shorter sanity run
    python examples/reproduce_voc.py --method l2g --data-root /data/VOCdevkit/VOC2012 --out runs/l2g_voc
    torchrun --nproc_per_node 2 examples/reproduce_voc.py --method tscd --data-root ...
    python examples/reproduce_voc.py --method l2g --dataset coco --data-root /data/coco

Without ``--data-root`` the synthetic VOC-format dataset is generated once into the cache folder
(``$WSSS_BLOCKS_CACHE`` or ``~/.cache/wsss_blocks``) and the method's ``<method>_synthetic`` preset runs
on the CPU. With ``--data-root`` the ``<method>_voc`` (or, with ``--dataset coco``, ``<method>_coco``) config
with the released settings runs, and the table shows that dataset's paper numbers; use a GPU. Its initial
weights are named in the config and fetched into the cache before the first step (``wsss-blocks weights list``;
files that only exist behind Google Drive/Baidu pages must be downloaded by hand, and the error says where to
put them). ``--pretrained`` / ``--seg-pretrained`` override them with another registry name, a file, or none.
Rerunning with the same ``--out`` reuses finished stages and resumes interrupted ones; when a setting a stage
depends on changed, the run stops before writing anything and names the changed keys (``--restart-from STAGE``
redoes that stage and the ones after it).
"""

from __future__ import annotations

import argparse
import sys
import time

METHODS = ("baseline", "l2g", "ppl", "pmm", "smaf", "tscd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="baseline", choices=METHODS)
    p.add_argument("--data-root", default=None, help="VOC2012 folder (JPEGImages, ...); omit for synthetic data")
    p.add_argument("--dataset", default="voc", choices=("voc", "coco"),
                   help="with --data-root: the <method>_<dataset> config (COCO: l2g, pmm, tscd)")
    p.add_argument("--sbd-root", default=None, help="SegmentationClassAug folder when it is not under --data-root")
    p.add_argument("--pretrained", default=None,
                   help="CAM-backbone weights: registry name (wsss-blocks weights list), file, or none")
    p.add_argument("--seg-pretrained", default=None, help="segmentation-network weights: registry name, file or none")
    p.add_argument("--out", default=None, help="run folder (default runs/<method>_<dataset> in the working directory)")
    p.add_argument("--restart-from", choices=("cam", "pseudo", "seg"), default=None,
                   help="delete this stage and the stages after it in --out and redo them")
    p.add_argument("--quick", action="store_true", help="short sanity run (the preset's quick_overrides)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set cam.steps=100 (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from wsss_blocks.train.reproduce import reproduce

    t0 = time.time()
    res = reproduce(args.method, args.data_root, dataset=args.dataset, sbd_root=args.sbd_root,
                    pretrained=args.pretrained, seg_pretrained=args.seg_pretrained, out=args.out, quick=args.quick,
                    overrides=args.overrides, restart_from=args.restart_from)
    print(f"wall time: {time.time() - t0:.0f} s; results in {res['out']}/results.json", flush=True)
    return res


if __name__ == "__main__":
    try:
        main()
    except (ValueError, TypeError, OSError) as e:  # config, data, checkpoint, disk: one line, like the CLI
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
