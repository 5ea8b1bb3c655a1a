"""Peak memory and time per malformed input, each in its own process.

Writes the corpus of ``tests/_corpus.py`` (50 kinds) to a temporary folder, optionally adds the
full-size inputs of issue 19 (``--big``: a 1024x1024x512 uint8 ``.nii.gz`` of about 0.5 MB, and a
zip of 400 deflated 1024x1024 DICOM slices), then runs one process per input and reads its peak
RSS from ``wait4``:

* ``--mode predict``: ``python -m tumortrace predict FILE --weights W --quiet`` (the CLI; the
  limits checked are < 2 GB and < 30 s and exactly one ``error:`` line);
* ``--mode load``: ``tumortrace.io.load_volume(FILE)`` and the resampling guard
  (``preprocess.check_resampling``), no networks (the "refused from headers" check, < 1 GB).

Prints one row per input and a summary; exit code 1 when a row breaks a limit.

    .venv/bin/python benchmarks/bench_hostile.py --mode load --big
    .venv/bin/python benchmarks/bench_hostile.py --mode predict --weights weights --arch mc3
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

LOAD = (
    "import sys\n"
    "from tumortrace.config import PreprocessConfig\n"
    "from tumortrace.errors import TumorTraceError\n"
    "from tumortrace.io import load_volume\n"
    "from tumortrace.preprocess import check_resampling\n"
    "try:\n"
    "    check_resampling(load_volume(sys.argv[1]), PreprocessConfig())\n"
    "except TumorTraceError as err:\n"
    "    print(f'error: {err}', file=sys.stderr)\n"
    "    sys.exit(1)\n"
)


def big_nifti(path: Path) -> Path:
    """1024x1024x512 uint8, within the byte caps, streamed to gzip (never in memory)."""
    import nibabel as nib
    import numpy as np

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1024, 1024, 512))
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = 352
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_sform(np.eye(4), code=1)
    with gzip.open(path, "wb", compresslevel=6) as f:
        f.write(hdr.binaryblock + bytes(4))
        block = bytes(1 << 20)
        for _ in range(512):
            f.write(block)
    return path


def big_dicom_zip(path: Path, slices: int = 400) -> Path:
    """A zip of ``slices`` deflated 1024x1024 int16 DICOM slices of zeros (a few MB)."""
    import numpy as np
    from _dicom import write_dicom_series

    tmp = Path(tempfile.mkdtemp(prefix="bench-dicom-"))
    one = write_dicom_series(np.zeros((1024, 1024, 1), np.int16), np.eye(4), tmp)[0]
    import pydicom

    ds = pydicom.dcmread(one)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k in range(slices):
            ds.ImagePositionPatient = [0, 0, float(k)]
            ds.InstanceNumber = k + 1
            out = tmp / f"s{k:04d}.dcm"
            ds.save_as(out)
            zf.write(out, f"series/s{k:04d}.dcm")
            out.unlink()
    return path


def run_one(cmd: list[str], timeout: float) -> tuple[int, float, float, str]:
    """(exit code, wall s, peak RSS MiB, stderr) of one process."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    return proc.returncode, wall, usage.ru_maxrss / 1024, text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("predict", "load"), default="load")
    parser.add_argument("--weights", default=str(ROOT / "weights"))
    parser.add_argument("--arch", default="all")
    parser.add_argument("--big", action="store_true", help="add the full-size issue-19 inputs")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--max-mib", type=float, default=None)
    parser.add_argument("--max-s", type=float, default=30.0)
    args = parser.parse_args()
    max_mib = args.max_mib or (2048.0 if args.mode == "predict" else 1024.0)

    from _corpus import write_corpus

    work = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    cases = write_corpus(work / "corpus")
    if args.big:
        t0 = time.perf_counter()
        cases["big-1024x1024x512-uint8-full"] = big_nifti(work / "big.nii.gz")
        cases["big-400x1024^2-dicom-zip"] = big_dicom_zip(work / "big_dicom.zip")
        print(
            f"# big inputs written in {time.perf_counter() - t0:.0f} s: "
            + ", ".join(
                f"{p.name} {p.stat().st_size / 1e6:.2f} MB" for p in list(cases.values())[-2:]
            )
        )
    print(f"# {len(cases)} inputs, mode {args.mode}, limits {max_mib:.0f} MiB and {args.max_s} s")
    print("| input | exit | error lines | other stderr lines | s | peak MiB | ok |")
    print("|---|---|---|---|---|---|---|")
    worst_s = worst_mib = 0.0
    bad = 0
    for name, path in cases.items():
        if args.mode == "predict":
            cmd = [sys.executable, "-m", "tumortrace", "predict", str(path), "--weights",
                   args.weights, "--arch", args.arch, "--quiet"]  # fmt: skip
        else:
            cmd = [sys.executable, "-c", LOAD, str(path)]
        code, wall, mib, err = run_one(cmd, args.timeout)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        ok = code != 0 and len(errors) == 1 and len(lines) == 1
        ok = ok and mib < max_mib and wall < args.max_s
        bad += not ok
        worst_s, worst_mib = max(worst_s, wall), max(worst_mib, mib)
        print(f"| {name} | {code} | {len(errors)} | {len(lines) - len(errors)} | {wall:.2f} | "
              f"{mib:.0f} | {'yes' if ok else 'NO'} |", flush=True)  # fmt: skip
    print(f"# max {worst_s:.2f} s, max {worst_mib:.0f} MiB; {bad} of {len(cases)} broke a limit")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
