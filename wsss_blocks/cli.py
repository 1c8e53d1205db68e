"""The ``wsss-blocks`` console command: the reference trainer's stages from the shell.

Subcommands (each takes ``--config NAME|FILE``, repeated ``--set section.key=value``, ``--out DIR``):

    wsss-blocks train-cam   --config baseline_synthetic --out runs/b [--resume]
    wsss-blocks eval-cams   --config baseline_synthetic --out runs/b     # CAM mIoU threshold sweep
    wsss-blocks make-pseudo --config baseline_synthetic --out runs/b     # resumable pseudo masks
    wsss-blocks train-seg   --config baseline_synthetic --out runs/b [--resume]
    wsss-blocks eval-seg    --config baseline_synthetic --out runs/b [--set seg.crf=true]
    wsss-blocks reproduce   --method l2g --data-root VOC2012 [--sbd-root ...] [--pretrained ...] [--quick]
                            [--restart-from cam|pseudo|seg] [--skip-data-check]
    wsss-blocks configs                                                   # list packaged configs
    wsss-blocks weights list [--files]                                    # the weights registry
    wsss-blocks weights fetch NAME [NAME ...] [--force]                   # download + verify into the cache
    wsss-blocks weights convert NAME FILE [--out OUT.pth]                 # a local/foreign copy -> the cache
    wsss-blocks weights path NAME | forget NAME [--delete]

Multi-GPU: ``torchrun --nproc_per_node 4 -m wsss_blocks.cli train-cam ...``. Configuration, data and
checkpoint problems are reported as one ``error:`` line (exit status 2) before any training starts, and the
pre-flight data check lists every unreadable or invalid image and mask in one error (``--skip-data-check``
skips it); ``--debug`` shows the traceback instead. Relative paths are taken from the working directory. A run folder
whose stages were made with other settings is refused before anything is written; the line names the
changed keys (``reproduce --restart-from STAGE`` redoes that stage and the later ones).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def _common(p: argparse.ArgumentParser, out_required: bool = True) -> None:
    p.add_argument("--config", "-c", required=True, help="packaged config name (e.g. baseline_synthetic) or YAML path")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set cam.lr=0.01 (repeatable)")
    p.add_argument("--out", "-o", required=out_required, help="run folder (stages write into <out>/cam, ...)")
    p.add_argument("--quick", action="store_true", help="apply the config's quick_overrides (short sanity run)")


def _skip_data_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-data-check", action="store_true",
                   help="skip the pre-flight data check (decoding every image and mask before training; "
                        "same as --set data.preflight=false)")


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    """``wsss-blocks data prepare voc|coco|saliency``, ``data check``, ``data sources`` (run by data/prepare.py)."""
    p = sub.add_parser("data", help="download and prepare VOC 2012 + SBD, COCO 2014, saliency maps")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    prep = dsub.add_parser("prepare", help="download, verify, extract and convert a dataset (resumable)")
    psub = prep.add_subparsers(dest="prepare_what", required=True, metavar="DATASET")

    def opts(q: argparse.ArgumentParser, archives_help: str) -> None:
        q.add_argument("--root", required=True, help="folder to prepare into (created if needed)")
        q.add_argument("--archives", default=None, help=archives_help)
        q.add_argument("--download-dir", default=None, help="where downloads go (default ROOT/archives)")
        q.add_argument("--quiet", action="store_true", help="print only errors")
        q.add_argument("--no-progress", action="store_true", help="no progress bars")

    official = "folder with the official archives under their official names (used instead of downloading)"
    q = psub.add_parser("voc", help="PASCAL VOC 2012 + SBD: SegmentationClassAug, train_aug, cls_labels.npy")
    opts(q, official)
    q.add_argument("--no-verify", action="store_true", help="skip the published MD5 checks")
    q.add_argument("--no-sbd", action="store_true", help="VOC 2012 only (no SBD, no train_aug)")
    q.add_argument("--remove-archives", action="store_true", help="delete the downloads once prepared")
    q = psub.add_parser("coco", help="MS COCO 2014: VOC-style label PNGs (80 classes), splits, cls_labels.npy")
    opts(q, official)
    q.add_argument("--no-verify", action="store_true", help="skip checksum checks (COCO publishes none)")
    q.add_argument("--splits", nargs="+", default=["train", "val"], choices=("train", "val"))
    q.add_argument("--convention", default="coco2voc", choices=("coco2voc", "recam"),
                   help="overlap/crowd rules of the label PNGs (default coco2voc: smallest object wins, crowd "
                        "is foreground, unannotated images skipped)")
    q.add_argument("--raw-category-ids", action="store_true", help="write raw COCO ids 1..90 instead of 1..80")
    q.add_argument("--workers", type=int, default=1, help="processes rendering masks")
    q.add_argument("--remove-archives", action="store_true", help="delete the downloads once prepared")
    q = psub.add_parser("saliency", help="install a released saliency-map set (wsss-blocks data sources)")
    q.add_argument("name", help="poolnet-voc, poolnet-coco, pfan-voc or pfan-coco")
    opts(q, "folder holding the set's archive (sets with a direct link only)")
    q.add_argument("--from", dest="source", default=None, help="the downloaded archive or folder of PNG maps")

    q = dsub.add_parser("check", help="say what a data root lacks and which command prepares it; with --files, "
                                      "also decode every image and mask and list the unusable ones")
    q.add_argument("data_root")
    q.add_argument("--dataset", default="voc", choices=("voc", "coco"))
    q.add_argument("--saliency-dir", default=None, help="also check this saliency folder (e.g. Sal)")
    q.add_argument("--labels-file", default="cls_labels.npy", help="image-label file expected under the root")
    q.add_argument("--files", action="store_true",
                   help="decode every image and mask of the splits (truncated files, bit depth, mask values, "
                        "sizes, oversized images); cached, so a rerun decodes only changed files")
    q.add_argument("--splits", nargs="+", default=None,
                   help="splits to decode with --files (default VOC train_aug, train, val; COCO train, val)")
    q.add_argument("--max-image-pixels", type=int, default=None,
                   help="largest accepted width × height with --files (default 16000000)")
    q.add_argument("--workers", type=int, default=None, help="decoding threads with --files (default min(8, CPUs))")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    dsub.add_parser("sources", help="the official archives (URL, published hash) and the saliency sets")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(prog="wsss-blocks", description="wsss-blocks reference trainer")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data_parser(sub)

    p = sub.add_parser("train-cam", help="stage 1: train the CAM network")
    _common(p)
    _skip_data_check(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")

    p = sub.add_parser("eval-cams", help="CAM mIoU sweep over background scores on data.cam_eval_split")
    _common(p)
    p.add_argument("--force", action="store_true", help="recompute even if cam_sweep.json is up to date")

    p = sub.add_parser("make-pseudo", help="stage 2: write pseudo masks (skips existing files)")
    _common(p)
    _skip_data_check(p)

    p = sub.add_parser("train-seg", help="stage 3: train the segmentation network on the pseudo masks")
    _common(p)
    _skip_data_check(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")

    p = sub.add_parser("eval-seg", help="evaluate the segmentation network (multi-scale, optional CRF)")
    _common(p)
    p.add_argument("--split", default=None, help="split to evaluate (default data.val_split)")

    p = sub.add_parser("reproduce", help="all stages + the final table next to the paper's numbers")
    p.add_argument("--method", "-m", default="baseline", help="baseline, l2g, ppl, pmm, smaf or tscd")
    p.add_argument("--data-root", default=None, help="VOC2012 root; omit for the synthetic preset on CPU")
    p.add_argument("--dataset", default="voc", choices=("voc", "coco"), help="with --data-root")
    p.add_argument("--sbd-root", default=None, help="SegmentationClassAug folder if not under --data-root")
    p.add_argument("--pretrained", default=None,
                   help="CAM-backbone weights: a registry name (wsss-blocks weights list), a file, or none")
    p.add_argument("--seg-pretrained", default=None,
                   help="segmentation-network weights: a registry name, a file, or none")
    p.add_argument("--config", "-c", default=None, help="use this config instead of <method>_<dataset>")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", "-o", default=None, help="run folder (default runs/<preset> in the working directory)")
    p.add_argument("--quick", action="store_true", help="short sanity run (the preset's quick_overrides)")
    p.add_argument("--no-resume", action="store_true", help="refuse to reuse stages already in --out")
    p.add_argument("--restart-from", choices=("cam", "pseudo", "seg"), default=None,
                   help="delete this stage and the stages after it in --out and redo them")
    _skip_data_check(p)

    sub.add_parser("configs", help="list the packaged configs")

    p = sub.add_parser("weights", help="the registry of released initialisations: list, fetch, convert")
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    q = wsub.add_parser("list", help="one row per entry: name, hash (or 'unpinned'), size, download, cached")
    q.add_argument("--files", action="store_true", help="print 'NAME FILENAME' per entry only")
    q = wsub.add_parser("fetch", help="download (and convert) into the cache and verify")
    q.add_argument("names", nargs="+", metavar="NAME")
    q.add_argument("--force", action="store_true", help="download again even if a verified copy is cached")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q = wsub.add_parser("convert", help="verify or convert a local file (caffemodel, HF copy, .params) into "
                                        "the cache, or with --out to a PyTorch state dict in library names")
    q.add_argument("name", metavar="NAME")
    q.add_argument("source", metavar="FILE")
    q.add_argument("--out", default=None, help="write here instead of the cache")
    q = wsub.add_parser("path", help="print where the file of NAME lives (or must be put)")
    q.add_argument("name", metavar="NAME")
    q = wsub.add_parser("forget", help="drop the recorded hash of an unpinned entry (its next copy is the new "
                                       "reference)")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--delete", action="store_true", help="also delete the cached file")
    return parser


def _weights(args: argparse.Namespace) -> int:
    from .models import weights as W

    cmd = args.weights_command
    if cmd == "list":
        entries = list(W.WEIGHTS.values())
        if args.files:
            for e in entries:
                print(f"{e.name} {e.file_name}")
            return 0
        recs = W.recorded_hashes()
        rows = [("name", "hash", "size", "download", "cached", "file")]
        for e in entries:
            how = "auto" if e.urls else "auto+convert" if e.sources else "manual"
            cached = "recorded" if e.file_name in recs and e.path.is_file() else "yes" if e.path.is_file() else "no"
            rows.append((e.name, e.hash_label, str(e.size) if e.size is not None else "-", how, cached, e.file_name))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
        print(lines[0], file=sys.stderr)  # header and cache folder on stderr: stdout has one row per entry
        print("\n".join(lines[1:]))
        print(f"(cache: {W.weights_dir()}; 'unpinned': no published hash, the first verified copy is recorded)",
              file=sys.stderr)
        return 0
    if cmd == "fetch":
        for name in args.names:
            W.get_weights_entry(name)  # unknown names fail before any download
        failed = 0
        for name in args.names:
            try:
                path = W.fetch_weights(name, progress=not args.no_progress, force=args.force)
            except _USER_ERRORS as err:
                if args.debug or len(args.names) == 1:
                    raise
                print(f"error: {err}", file=sys.stderr)  # one line per weight; the others are still fetched
                failed += 1
                continue
            e = W.get_weights_entry(name)
            rec = W.recorded_hashes().get(e.file_name, {})
            print(f"{name}: {path} (sha256 {rec.get('sha256', '?')}, verified)")
        return 2 if failed else 0
    if cmd == "convert":
        print(W.convert_weights(args.name, args.source, out=args.out))
        return 0
    if cmd == "path":
        print(W.get_weights_entry(args.name).path)
        return 0
    if cmd == "forget":
        gone = W.forget_weights(args.name, delete_file=args.delete)
        print(f"{args.name}: forgot {', '.join(gone) if gone else 'nothing (no recorded hash)'}")
        return 0
    raise ValueError(f"unknown weights action {cmd!r}")


_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, PermissionError,
                                                 TypeError, OSError)


def _run(args: argparse.Namespace) -> int:
    if args.command == "data":
        from .data.prepare import run_cli

        return run_cli(args)
    if args.command == "configs":
        from .train.config import list_packaged_configs

        print("\n".join(list_packaged_configs()))
        return 0
    if args.command == "weights":
        return _weights(args)
    overrides = list(getattr(args, "overrides", []))
    if getattr(args, "skip_data_check", False):
        overrides.append("data.preflight=false")
    if args.command == "reproduce":
        from .train.reproduce import reproduce

        reproduce(args.method, args.data_root, dataset=args.dataset, sbd_root=args.sbd_root,
                  pretrained=args.pretrained, seg_pretrained=args.seg_pretrained, out=args.out, quick=args.quick,
                  config=args.config, overrides=overrides, resume=not args.no_resume,
                  restart_from=args.restart_from)
        return 0
    from .train.schema import load_run_config

    cfg = load_run_config(args.config, overrides, quick=args.quick)
    if args.command == "train-cam":
        from .train.cam_stage import train_cam

        print(train_cam(cfg, args.out, resume=args.resume))
    elif args.command == "eval-cams":
        from .train.pseudo_stage import eval_cams

        res = eval_cams(cfg, args.out, force=args.force)
        print(f"CAM mIoU on {res['split']} ({res['num_images']} images): best {100 * res['best_miou']:.2f} at "
              f"bg {res['best_threshold']:.2f}"
              + (f"; {100 * res['miou_at_bg']:.2f} at bg {res['bg_score']:.2f}" if "miou_at_bg" in res else ""))
    elif args.command == "make-pseudo":
        from .train.pseudo_stage import make_pseudo_masks

        res = make_pseudo_masks(cfg, args.out)
        print(json.dumps({k: v for k, v in res.items() if k != "pseudo_per_class_iou"}, indent=1))
    elif args.command == "train-seg":
        from .train.seg_stage import train_seg

        print(train_seg(cfg, args.out, resume=args.resume))
    elif args.command == "eval-seg":
        from .train.seg_stage import eval_seg

        res = eval_seg(cfg, args.out, split=args.split)
        print(f"segmentation mIoU on {res['split']} ({res['num_images']} images): {100 * res['miou']:.2f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wsss-blocks`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except _USER_ERRORS as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        from .train.distributed import cleanup

        cleanup()


if __name__ == "__main__":
    sys.exit(main())
