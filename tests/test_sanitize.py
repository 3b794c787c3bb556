"""The hazard checks that stand in for compute-sanitizer on machines without a GPU:
scripts/sanitize runs every CUDA kernel's harness driver under every schedule, with deferred
and checked cp.async copies, two poison bytes, AddressSanitizer and ThreadSanitizer; the
hazards a first GPU run would hit, injected into a copy of csrc/, are each reported with the
kernel's source line; scripts/mutate's fast subset (every barrier, wait and commit deleted
in the attention and GEMM main loops) is killed to the last mutant."""
import pathlib
import re
import runpy
import shutil
import subprocess
import sys

import pytest
from test_harness import build, run

ROOT = pathlib.Path(__file__).resolve().parent.parent


def script(name, *args, timeout=2400):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_every_kernel_is_clean_in_every_mode():
    result = script("sanitize")
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert result.stdout.splitlines()[-1].startswith("sanitize: 5 driver(s)"), result.stdout[-2000:]


# name -> (file, the line's text, the code in it, its mutation, driver): the bugs that the
# harness let through before it deferred copies and ran warps out of lockstep.
INJECTED = {
    "attention forward waits one group short": (
        "attention.cu", "// all but the newest group landed", "cp_async_wait<1>();", "cp_async_wait<2>();", "attention"),
    "GEMM waits one group short": (
        "mlp.cu", "cp_async_wait<Cfg::STAGES - 2>();", "cp_async_wait<Cfg::STAGES - 2>();",
        "cp_async_wait<Cfg::STAGES - 1>();", "mlp"),
    "attention forward without its stage barrier": (
        "attention.cu", "// the next iteration's copies overwrite", "__syncthreads();", ";", "attention"),
}


@pytest.mark.parametrize("name", list(INJECTED))
def test_injected_hazard_is_reported_with_its_source_line(tmp_path, name):
    file, anchor, code, mutation, driver = INJECTED[name]
    csrc = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc", csrc)
    lines = (csrc / file).read_text().splitlines(keepends=True)
    at = [i for i, line in enumerate(lines) if anchor in line and code in line]
    assert len(at) == 1, f"no single line of csrc/{file} holds {anchor!r} and {code!r}"
    lines[at[0]] = lines[at[0]].replace(code, mutation)
    (csrc / file).write_text("".join(lines))
    result = script("sanitize", "--csrc", str(csrc), "--modes", "schedules", "--stop-at-first", "--no-launch-bounds",
                    "--jobs", "1", driver)
    assert result.returncode != 0, result.stdout
    assert "nk_harness: " in result.stdout and re.search(rf"at \S*/csrc/{re.escape(file)}:\d+", result.stdout), result.stdout


def test_sanitize_reports_a_deliberately_racy_kernel(tmp_path):
    """A copy of csrc/ whose LayerNorm block reduction lost the barrier between writing the
    per-warp partials and reading them: ThreadSanitizer names the two lines."""
    csrc = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc", csrc)
    text = (csrc / "layernorm.cu").read_text()
    barriers = [m.start() for m in re.finditer(r"__syncthreads\(\);", text)]
    assert barriers, "csrc/layernorm.cu has no __syncthreads to remove"
    (csrc / "layernorm.cu").write_text(text[:barriers[0]] + ";" + text[barriers[0] + len("__syncthreads();"):])
    result = script("sanitize", "--csrc", str(csrc), "--modes", "tsan", "--no-launch-bounds", "--jobs", "1", "layernorm")
    assert result.returncode != 0, result.stdout
    assert "WARNING: ThreadSanitizer: data race" in result.stdout and "/csrc/layernorm.cu:" in result.stdout, result.stdout


def test_mutation_fast_subset_is_all_killed(tmp_path):
    report = tmp_path / "mutants.md"
    result = script("mutate", "--fast", "--modes", "schedules", "--report", str(report))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    text = report.read_text()
    total = re.search(r"(\d+) mutants, (\d+) killed, 0 survived", text)
    assert total and int(total.group(1)) >= 15, text


def test_launch_bounds_from_nvcc_are_enforced(tmp_path, tmp_path_factory):
    """A kernel compiled with __launch_bounds__(64) and launched with 128 threads fails in the
    harness as on the GPU, once sanitize has read the bound from nvcc's PTX."""
    sanitize = runpy.run_path(str(ROOT / "scripts" / "sanitize"))
    bounds = sanitize["launch_bounds"](sanitize["tree"](ROOT / "csrc", tmp_path), tmp_path)
    assert "bounded_kernel" in bounds.read_text() and "6nk_cpu" in bounds.read_text()
    binary = build(tmp_path_factory, "tests/harness/harness_test.cu")
    result = run(binary, "launch_bounds", env={"NK_HARNESS_LAUNCH_BOUNDS": str(bounds)})
    assert result.returncode != 0 and "__launch_bounds__ (64)" in result.stdout, result.stdout + result.stderr
    assert run(binary, "launch_bounds").returncode == 0  # without the table the harness cannot know
