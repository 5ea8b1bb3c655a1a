"""tumortrace.runtime's one bf16 rule and the environment variable that marks bf16 not native."""

from __future__ import annotations

import pytest
import torch

from tumortrace import runtime
from tumortrace.errors import ConfigError
from tumortrace.model_prep import InferenceSettings
from tumortrace.runtime import (
    EMULATED_ON_CPU,
    NATIVE_BF16_ENV,
    Bf16Support,
    bf16_support,
    fast_dtype,
    fast_runtime,
    native_bf16,
)

CPU = torch.device("cpu")


def test_a_cpu_without_native_bf16_says_it_is_emulated(monkeypatch):
    monkeypatch.delenv(NATIVE_BF16_ENV, raising=False)
    monkeypatch.setattr(runtime, "_cpu_bf16_native", lambda: False)
    assert bf16_support(CPU) == Bf16Support(False, EMULATED_ON_CPU)
    assert EMULATED_ON_CPU == "emulated on this CPU"
    assert not native_bf16(CPU) and fast_dtype(CPU) == torch.float32
    monkeypatch.setattr(runtime, "_cpu_bf16_native", lambda: True)
    assert bf16_support(CPU) == Bf16Support(True, None) and fast_dtype(CPU) == torch.bfloat16


@pytest.mark.parametrize("value", ["", "auto", " AUTO "])
def test_auto_or_unset_detects(value, monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_bf16_native", lambda: True)
    monkeypatch.setenv(NATIVE_BF16_ENV, value)
    assert native_bf16(CPU)


def test_the_override_gives_every_user_of_the_rule_the_fp32_path(monkeypatch):
    """Training (fast_runtime), inference (InferenceSettings 'auto') and the benchmarks ask the same
    function, so one variable moves them all onto the path of a CPU without native bf16."""
    monkeypatch.setattr(runtime, "_cpu_bf16_native", lambda: True)
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    support = bf16_support(CPU)
    assert support == Bf16Support(False, f"marked not native by {NATIVE_BF16_ENV}=0")
    assert fast_runtime(CPU).amp_dtype is None and fast_runtime(CPU).channels_last
    assert InferenceSettings(precision="auto", device="cpu").compute_dtype() == torch.float32
    assert InferenceSettings(precision="bf16", device="cpu").compute_dtype() == torch.bfloat16


@pytest.mark.parametrize("value", ["1", "yes", "false"])
def test_an_unknown_override_is_refused(value, monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, value)
    with pytest.raises(ConfigError, match=rf"{NATIVE_BF16_ENV} must be '0' .* got '{value}'"):
        native_bf16(CPU)
