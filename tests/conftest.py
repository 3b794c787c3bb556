"""`--gpu-only`: keep just the tests parametrised with device="cuda", for a GPU machine whose
time is short (scripts/validate_gpu.sh); the CPU, interpreter and harness tests are CI's.

The tests never read the tuned table a user's `python -m nanogpt_kernels tune` left in their
cache: backend=None must mean the same on every machine (tests/test_tune.py points the table
elsewhere where it needs one)."""
import os
import tempfile

from nanogpt_kernels._backend import TUNE_TABLE_VAR


def pytest_configure(config):
    os.environ[TUNE_TABLE_VAR] = os.path.join(tempfile.mkdtemp(prefix="nanogpt_kernels-tests-"), "tuned.json")


def pytest_addoption(parser):
    parser.addoption("--gpu-only", action="store_true",
                     help="run only the tests parametrised with device='cuda' (needs a GPU)")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--gpu-only"):
        return
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        (keep if callspec is not None and callspec.params.get("device") == "cuda" else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
