"""The command-line entry points and the benchmark script run end to end (tiny shapes)."""
import json
import pathlib
import subprocess
import sys

import torch

from nanogpt_kernels.__main__ import main

ROOT = pathlib.Path(__file__).resolve().parent.parent


def assert_every_check_passed(out):
    for op in ("layer_norm", "add_layer_norm", "causal_attention", "gelu_mlp"):
        for backend in ("eager", "triton", "cuda"):
            assert f"{op:<18}{backend}" in out
    assert "all checks passed" in out and "FAIL" not in out


def test_check_command_passes(capsys):
    assert main(["check", "--rows", "5", "--hidden", "48"]) == 0
    assert_every_check_passed(capsys.readouterr().out)


def test_check_command_passes_at_default_shapes(capsys):
    """`check` as users run it: 64 x 768 on the CPU (30-80 s on two cores), 4096 x 768 on a GPU.
    Errors grow with the reduction lengths (K = 3072 in the MLP), so the tiny shapes above
    cannot stand in for these: an fp32 GEMM once passed at 5 x 48 and failed here."""
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert f"shape [{4096 if torch.cuda.is_available() else 64}, 768]" in out
    assert_every_check_passed(out)


def test_benchmark_smoke_run(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_layernorm.py"), "--rows", "3",
                             "--hidden", "48", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["smoke"] is True
    providers = {r["provider"] for r in data["results"]}
    assert {"eager", "triton", "cuda"} <= providers
    assert all(r["valid"] for r in data["results"])


def run_smoke_benchmark(tmp_path, script, *args):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["smoke"] is True
    assert all(r["valid"] for r in data["results"])
    assert {r["mode"] for r in data["results"]} == {"fwd", "bwd", "fwd+bwd"}
    return {r["provider"] for r in data["results"]}


def test_attention_benchmark_smoke_run(tmp_path):
    assert {"eager-math", "sdpa", "triton", "cuda"} <= run_smoke_benchmark(tmp_path, "bench_attention.py")


def test_mlp_benchmark_smoke_run(tmp_path):
    assert {"eager", "triton", "cuda"} <= run_smoke_benchmark(tmp_path, "bench_mlp.py", "--approximate", "tanh")
