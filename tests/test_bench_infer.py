"""benchmarks/bench_infer.py runs end to end in its random-init mode (the one bench_commits.py
uses to compare commits whose cards differ) and writes what the README's cost row reads."""

from __future__ import annotations

import json

from conftest import load_script


def test_random_init_run_writes_both_paths(tmp_path):
    out = tmp_path / "inference.json"
    argv = ["--archs", "mc3", "--shape", "16", "24", "16", "--repeats", "1", "--warmup", "0"]
    assert load_script("benchmarks/bench_infer.py").main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["weights"] == "random-init (create_model)"
    for path in ("naive", "fast"):
        assert result[path]["mc3"] > 0 and result[path]["total"] >= result[path]["mc3"]
    assert 0 <= result["max_prob_diff"] < 0.2  # bf16 against fp32 on the same weights
