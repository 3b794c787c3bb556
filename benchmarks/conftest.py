"""pytest-benchmark entry: `pytest benchmarks/ --benchmark-only` runs the suite's measurements
(the same cases, providers, validation and modes as `python -m tools bench`) through
pytest-benchmark's `benchmark` fixture. On a machine without a GPU it uses the tiny smoke shapes
and CPU providers (not GPU figures). `--quick` here is `NANOGPT_KERNELS_BENCH_QUICK=1`.

Collecting builds every case (no tensors yet: inputs are made when a case first runs)."""
from __future__ import annotations

import importlib
import os

from . import common
from .roofline import measure_peaks

MODULES = ("bench_layernorm", "bench_attention", "bench_mlp", "bench_init", "bench_e2e")


def settings() -> common.Settings:
    import torch

    quick = os.environ.get("NANOGPT_KERNELS_BENCH_QUICK", "0") not in ("", "0")
    return common.Settings.detect(quick=quick, dtype=torch.bfloat16, reps_ms=30 if quick else 100,
                                  log=lambda line: None)


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    s = settings()
    s.peaks = measure_peaks(s.device, quick=True)
    params, ids = [], []
    for name in MODULES:
        for case in importlib.import_module(f".{name}", __package__).cases(s):
            for provider in case.providers:
                for mode in case.modes:
                    params.append((s, case, provider, mode))
                    ids.append(f"{case.op}[{case.label}]-{provider}-{mode}".replace(" ", ","))
    metafunc.parametrize("bench_case", params, ids=ids)
