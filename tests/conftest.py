"""`--gpu-only`: keep just the tests parametrised with device="cuda", for a GPU machine whose
time is short (scripts/validate_gpu.sh); the CPU, interpreter and harness tests are CI's."""


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
