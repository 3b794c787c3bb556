"""Every launcher of csrc/*.cu refuses, with its own error message, a problem whose grid would
pass a GPU's limits (grid.x <= 2^31 - 1, grid.y <= 65535) instead of narrowing the block count
to unsigned: tests/harness/launch_limits_test.cu, built once per kernel file (the files cannot
share a translation unit). -O0: no kernel runs, so the build is all that costs (~3-4 s each)."""
import subprocess

import pytest

from test_harness import BASE_FLAGS, CXX, ROOT, run


@pytest.mark.parametrize("index,source", [(1, "attention.cu"), (2, "mlp.cu"), (3, "layernorm.cu")])
def test_launchers_refuse_grids_beyond_the_limits(tmp_path, index, source):
    out = tmp_path / f"launch_limits_{source.removesuffix('.cu')}"
    flags = [f for f in BASE_FLAGS if f not in ("-O1", "-g")]
    cmd = [CXX, *flags, "-O0", f"-DNK_LIMITS_FILE={index}", str(ROOT / "tests/harness/launch_limits_test.cu"),
           "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr}"
    result = run(out)
    assert result.returncode == 0 and "1 passed, 0 failed" in result.stdout, result.stdout + result.stderr
