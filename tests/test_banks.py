"""The harness's instruments (csrc/harness/cuda_cpu.h): tests/harness/banks_test.cu checks the
shared-memory bank counter on hand-counted conflict-free, 2-way and 8-way patterns (wavefronts()
alone, ldmatrix and cp.async in kernels) and the launch recorder's dry run; here also through
the extension (`_C.harness_instruments`), on the real kernels the performance model reads."""
import json

import pytest
import torch

from test_harness import build, run

import nanogpt_kernels as nk


@pytest.fixture(scope="module")
def banks_test(tmp_path_factory):
    return build(tmp_path_factory, "tests/harness/banks_test.cu")


def test_bank_counter_and_launch_recorder(banks_test):
    result = run(banks_test)
    assert result.returncode == 0 and "4 passed, 0 failed" in result.stdout, result.stdout + result.stderr
