"""``python -m tumortrace synth|predict|evaluate|explain-eval ...``: argparse, then the package.

Performance scripts are not subcommands: they live in ``benchmarks/`` beside the package (run
``python benchmarks/bench_infer.py``), as they time the package rather than belong to it.

Each subcommand maps its flags onto package calls; a :class:`TumorTraceError` is printed as one line
on stderr and the exit code is non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tumortrace.errors import TumorTraceError


def _cmd_synth(args: argparse.Namespace) -> int:
    from tumortrace.config import CLASSES
    from tumortrace.phantom_cohort import write_cohort

    cases = write_cohort(
        Path(args.out),
        {c: args.n_per_class for c in CLASSES},
        seed=args.seed,
        size=args.size,
        progress=not args.quiet,
    )
    print(f"wrote {len(cases)} volumes, {Path(args.out) / 'manifest.csv'} and montage.png")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    """CSV (or one JSON document) on stdout; one stderr line per bad input; exit 1 if any failed."""
    from tumortrace.batch import format_rows, predict_paths
    from tumortrace.guards import printable
    from tumortrace.infer import InferenceSettings, Predictor

    archs = None if args.arch == "all" else [args.arch]
    settings = InferenceSettings(input_checks=not args.skip_checks)
    predictor = Predictor.from_dir(args.weights, archs=archs, settings=settings)
    for arch, reason in predictor.refused.items():  # the other networks still predict
        print(f"warning: network {arch} left out: {reason}", file=sys.stderr)
    rows = predict_paths(
        predictor,
        args.paths,
        cam_out=args.cam_out,
        progress=not args.quiet,
        dicom_out=args.dicom_out,
        dicom_seg=args.dicom_seg,
    )
    sys.stdout.write(format_rows(rows, args.format))
    sys.stdout.flush()
    failed = [r for r in rows if not r.ok]
    for row in failed:
        print(f"error: {printable(row.path)}: {row.error}", file=sys.stderr)
    dicom = [(r, r.report["dicom"]) for r in rows if r.ok and "dicom" in r.report]
    for row, d in dicom:
        if "skipped" in d:
            print(f"note: {printable(row.path)}: no DICOM results, {d['skipped']}", file=sys.stderr)
        elif "error" in d:
            print(
                f"error: {printable(row.path)}: DICOM results not written: {d['error']}",
                file=sys.stderr,
            )
    if any("error" in d for _, d in dicom):
        return 1
    if not rows:
        print("error: no input volumes found in the given paths", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """A metrics table (or one JSON document) on stdout; progress bar on stderr."""
    import json

    from tumortrace.scoring import format_report, score_report

    report = score_report(args.weights, args.manifest, device=args.device, progress=not args.quiet)
    if args.format == "json":
        print(json.dumps(report.to_dict(), allow_nan=False))
    else:
        print(format_report(report))
    return 0


def _cmd_explain_eval(args: argparse.Namespace) -> int:
    """The summary table (or the whole JSON document) on stdout; ``--out`` also writes the JSON."""
    import json

    from tumortrace.explain_eval import evaluate_explanations, format_summary
    from tumortrace.files import atomic_write_json
    from tumortrace.infer import InferenceSettings

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    archs = None if args.arch == "all" else [args.arch]
    settings = InferenceSettings(restrict_to_brain=not args.no_brain_mask)
    report = evaluate_explanations(
        args.weights,
        args.manifest,
        methods=methods,
        archs=archs,
        cohort=args.cohort or f"lesion cases of {args.manifest}",
        progress=not args.quiet,
        settings=settings,
    )
    doc = report.to_dict()
    if args.out:
        atomic_write_json(Path(args.out), doc)
    if args.format == "json":
        print(json.dumps(doc, allow_nan=False))
    else:
        print(format_summary(report), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser (one subparser per command)."""
    parser = argparse.ArgumentParser(prog="python -m tumortrace", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic healthy/LGG/HGG cohort (NIfTI + manifest)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n-per-class", type=int, required=True, help="volumes per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=("brats", "ixi", "small"), default="brats")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("predict", help="classify volumes with the shipped weights")
    p.add_argument("paths", nargs="+", help="NIfTI files, DICOM folders/zips, or folders")
    p.add_argument("--weights", default="weights", help="folder with <arch>.json cards")
    p.add_argument("--arch", default="all", help="all, or one of the architectures")
    p.add_argument("--cam-out", default=None, help="write Grad-CAM NIfTI maps to this folder")
    p.add_argument(
        "--dicom-out",
        default=None,
        help="write each DICOM-series input's Structured Report and one Parametric Map per "
        "network to this folder (NIfTI inputs are skipped, with a note)",
    )
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="with --dicom-out, also a DICOM Segmentation of each map above the display threshold",
    )
    p.add_argument("--format", choices=("json", "csv"), default="csv")
    p.add_argument(
        "--skip-checks",
        action="store_true",
        help="skip brain extraction, registration and the input checks (legacy native-space "
        "weights only; standard-space weights always run them)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="score a weights card on a manifest")
    p.add_argument("--weights", required=True, help="path to weights/<arch>.json")
    p.add_argument("--manifest", required=True, help="manifest CSV")
    p.add_argument("--format", choices=("json", "text"), default="text")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "explain-eval", help="score the networks' maps on lesion masks (pointing game, energy)"
    )
    p.add_argument("--weights", default="weights", help="folder with <arch>.json cards")
    p.add_argument(
        "--manifest",
        required=True,
        help="manifest CSV; lesion masks from a 'mask' column or <subject>_lesion.nii.gz",
    )
    p.add_argument("--arch", default="all", help="all, or one of the architectures")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated map methods (default: the legacy and the default method); "
        "slow references: guided-gradcam, occlusion",
    )
    p.add_argument("--cohort", default="", help="what the cohort is (stored in the JSON)")
    p.add_argument(
        "--no-brain-mask",
        action="store_true",
        help="do not restrict the maps to the brain (the app's behaviour before issue 16)",
    )
    p.add_argument("--out", default=None, help="also write the JSON document here")
    p.add_argument("--format", choices=("json", "text"), default="text")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_explain_eval)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        from tumortrace.tempdirs import clean_stale_tempdirs

        clean_stale_tempdirs()  # extracted series left by a killed run
        return int(args.func(args) or 0)
    except TumorTraceError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
