"""benchmarks/bench_infer.py runs end to end in its random-init mode (the one bench_commits.py
uses to compare commits whose cards differ) and writes what the README's cost row reads.

The runs here are tiny (a 16x32x32 grid, a 64x64 matmul in place of the 2048x2048 peak): they
check that the benchmark works and writes its record in seconds; its figures come from running it.
(At 16x24x16, layer 4's output is 2x2x1, and torch 2.14's oneDNN bf16 convolutions on AMX then
return garbage now and then, NaN included: the grid of the other tests here avoids it.)
"""

from __future__ import annotations

import json

import torch
from conftest import load_script

from tumortrace.runtime import NATIVE_BF16_ENV, Bf16Support

TINY_RUN = [
    "--archs",
    "mc3",
    "--shape",
    "16",
    "32",
    "32",
    "--repeats",
    "1",
    "--warmup",
    "0",
    "--peak-size",
    "64",
]


def _run(tmp_path, *extra: str) -> dict:
    out = tmp_path / "inference.json"
    assert (
        load_script("benchmarks/bench_infer.py").main([*TINY_RUN, *extra, "--out", str(out)]) == 0
    )
    return json.loads(out.read_text(encoding="utf-8"))


def test_random_init_run_writes_both_paths(tmp_path):
    result = _run(tmp_path)
    assert result["weights"] == "random-init (create_model)"
    for path in ("naive", "fast"):
        assert result[path]["mc3"] > 0 and result[path]["total"] >= result[path]["mc3"]
    assert 0 <= result["max_prob_diff"] < 0.2  # the fast path (bf16 where native) against fp32
    assert result["peak_matmul_n"] == 64 and result["peak_gflops"]["fp32"] > 0


def test_bf16_not_native_is_not_measured_and_the_record_says_why(tmp_path, monkeypatch):
    """Where bf16 is not native (an AVX2 EPYC; here marked so by the environment variable the
    runtime honours) the run takes the fp32 path, never multiplies in bf16 and writes null with the
    reason."""
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    bench = load_script("benchmarks/bench_infer.py")
    dtypes = []
    real_peak = bench.matmul_peak
    monkeypatch.setattr(bench, "matmul_peak", lambda dt, n: dtypes.append(dt) or real_peak(dt, n))
    out = tmp_path / "inference.json"
    assert bench.main([*TINY_RUN, "--out", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert dtypes == [torch.float32]
    assert result["peak_gflops"]["bf16"] is None and result["peak_gflops"]["fp32"] > 0
    assert result["bf16"] == {
        "native": False,
        "reason": f"marked not native by {NATIVE_BF16_ENV}=0",
    }
    assert result["settings"]["precision"] == "fp32"
    assert result["fraction_of_peak"]["fast"]["mc3"] > 0  # against the fp32 peak
    assert result["max_prob_diff"] < 1e-4  # fp32 against fp32: rounding only


def test_bf16_peak_is_measured_where_native(monkeypatch):
    bench = load_script("benchmarks/bench_infer.py")
    peak = bench.matmul_peaks(64, Bf16Support(True))
    assert peak["fp32"] > 0 and peak["bf16"] > 0
    assert bench.peak_words(peak, Bf16Support(True)).endswith(" GFLOP/s")
    emulated = Bf16Support(False, "emulated on this CPU")
    words = bench.peak_words({"fp32": 171.6, "bf16": None}, emulated)
    assert words == "fp32 172 GFLOP/s, bf16 not native: emulated on this CPU"


def test_a_peak_size_below_one_is_one_error_line(tmp_path, capsys):
    bench = load_script("benchmarks/bench_infer.py")
    assert bench.main(["--peak-size", "0", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --peak-size must be at least 1, got 0"]
    assert not (tmp_path / "x.json").exists()


def test_an_unknown_bf16_override_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(NATIVE_BF16_ENV, "yes")
    bench = load_script("benchmarks/bench_infer.py")
    assert bench.main([*TINY_RUN, "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {NATIVE_BF16_ENV} must be '0' (bf16 not native) or 'auto' (detect), got 'yes'."
    ]
