"""The suite's measurements as pytest-benchmark tests: `pytest benchmarks/ --benchmark-only`.

One test per op, shape, provider and mode. A provider that is not installed or cannot run here
is skipped with the reason; one of ours (triton, cuda, fused-*) that raises or gives wrong
results fails; a peer that does is skipped with what went wrong. The throughput (TFLOP/s or
GB/s, and % of the roofline) is stored in each benchmark's extra_info.
"""
import pytest
import torch

from . import common

_prepared: dict = {}  # the last (case, provider) validated, reused by its other modes


def _is_ours(provider: str) -> bool:
    return provider in ("triton", "cuda", "c++ cpu") or provider.startswith("fused-")


def _modes(settings, case, provider):
    key = (id(case), provider)
    if key not in _prepared:
        _prepared.clear()
        _prepared[key] = common.prepare(case, provider, settings)
    return _prepared[key]


def test_benchmark(benchmark, bench_case):
    settings, case, provider, mode = bench_case
    try:
        fn = _modes(settings, case, provider)[mode]
    except common.NotMeasured as e:
        if e.status == "skipped" or not _is_ours(provider):
            pytest.skip(f"{provider}: {e.reason}")
        pytest.fail(f"{provider} {e.status}: {e.reason}")

    def run():
        fn()
        if settings.device.type == "cuda":
            torch.cuda.synchronize()

    if case.timer is not None:  # a training step: a few rounds, as its own timer does
        benchmark.pedantic(run, rounds=case.extra.get("steps", 3), warmup_rounds=case.extra.get("warmup", 1))
    elif settings.smoke:
        benchmark.pedantic(run, rounds=1, iterations=1)
    else:
        benchmark.pedantic(run, rounds=20, warmup_rounds=3)
    seconds = benchmark.stats.stats.median
    row = common.ok_record(case, provider, mode, seconds, None, settings)
    benchmark.extra_info.update({k: row[k] for k in ("op", "shape", "provider", "mode", "dtype", "TFLOP/s", "GB/s",
                                                     "roofline_pct", "smoke") if k in row})
    for k in ("tokens/s", "MFU", "MFU_measured"):
        if k in row:
            benchmark.extra_info[k] = row[k]
