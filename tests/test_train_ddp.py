"""``torchrun --nproc_per_node=2 train.py`` on CPU (Gloo) trains a tiny run to the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_head_cohort
from test_train import argv_for

from tumortrace.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_to_the_end(tmp_path):
    manifest = write_head_cohort(tmp_path / "cohort")
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "train.py", *argv_for(manifest, out, tmp_path / "data"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("macro-F1") == 1, "only rank 0 reports"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [
        "benchmarks/mc3.json", "benchmarks/mc3.splits.json", "mc3.json", "mc3.safetensors",
    ]  # fmt: skip
    bench = json.loads((out / "benchmarks" / "mc3.json").read_text())
    assert bench["runtime"].endswith("x2")
    for fold in bench["folds"]:  # predictions gathered from both ranks, each case once
        assert int(np.sum(fold["confusion"])) == fold["n_test"]
    load_checkpoint(out / "mc3.json")
