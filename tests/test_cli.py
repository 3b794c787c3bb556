"""The command-line entry points and the benchmark scripts run end to end (tiny shapes); the
developer tools are `python -m tools ...` from the checkout, which the package never imports."""
import json
import pathlib
import subprocess
import sys

from nanogpt_kernels.__main__ import main

ROOT = pathlib.Path(__file__).resolve().parent.parent


def assert_every_check_passed(out):
    for op in ("layer_norm", "add_layer_norm", "causal_attention", "gelu_mlp"):
        for backend in ("eager", "triton", "cuda"):
            assert f"{op:<18}{backend}" in out
    assert "all checks passed" in out and "FAIL" not in out


def test_check_command_passes(capsys):
    assert main(["check", "--rows", "5", "--hidden", "48"]) == 0
    out = capsys.readouterr().out
    assert_every_check_passed(out)
    # It ends saying what backend=None means for each op here (tests/test_tune.py: on a GPU).
    assert out.endswith("\nbackend=None on cpu tensors:\n"
                        f"  {'layer_norm':<18}{'eager':<9}CPU tensors: eager\n"
                        f"  {'add_layer_norm':<18}{'eager':<9}CPU tensors: eager\n"
                        f"  {'causal_attention':<18}{'eager':<9}CPU tensors: eager\n"
                        f"  {'gelu_mlp':<18}{'eager':<9}CPU tensors: eager\n"
                        f"  {'normal_init_':<18}{'c++ cpu':<9}CPU tensors: our multithreaded C++ generator, "
                        "eager's bits\n"), out[-600:]


def test_developer_tools_are_not_in_the_package():
    """`python -m nanogpt_kernels bench | kernels` say where the tools are, without importing
    them (a wheel has no tools/); `python -m tools` lists both."""
    for tool in ("bench", "kernels"):
        code = (f"import sys; from nanogpt_kernels.__main__ import main; status = main([{tool!r}]); "
                "assert 'tools' not in sys.modules; sys.exit(status)")
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 2, result.stderr
        assert f"`{tool}` is a developer tool that needs the source checkout" in result.stderr
        assert f"python -m tools {tool} ..." in result.stderr
    result = subprocess.run([sys.executable, "-m", "tools", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "bench" in result.stdout and "kernels" in result.stdout, result.stderr
    result = subprocess.run([sys.executable, "-m", "tools", "kernels", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and "NANOGPT_KERNELS_TOOLS_CACHE" in result.stdout, result.stderr


def test_benchmark_smoke_run(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_layernorm", "--rows", "3", "--hidden", "48",
                             "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["smoke"] is True
    providers = {r["provider"] for r in data["results"]}
    assert {"eager", "triton", "cuda"} <= providers
    assert all(r["valid"] for r in data["results"])


def run_smoke_benchmark(tmp_path, module, *args):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args, "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["smoke"] is True
    assert all(r["valid"] for r in data["results"])
    assert {r["mode"] for r in data["results"]} == {"fwd", "bwd", "fwd+bwd"}
    return {r["provider"] for r in data["results"]}


def test_attention_benchmark_smoke_run(tmp_path):
    assert {"eager-math", "sdpa", "triton", "cuda"} <= run_smoke_benchmark(tmp_path, "bench_attention")


def test_mlp_benchmark_smoke_run(tmp_path):
    assert {"eager", "triton", "cuda"} <= run_smoke_benchmark(tmp_path, "bench_mlp", "--approximate", "tanh")
