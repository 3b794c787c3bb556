"""The package as a user installs it: a wheel in a fresh venv, used from outside the checkout.

The venv holds only torch (the very distributions of this environment, linked in, with their
dependencies: installing a CUDA build of torch again would copy 5 GB) and what the wheel's
metadata pulls in: numpy, which Triton's interpreter needs, is deliberately not linked, so a
wheel that forgot to declare it fails here as it would for a user."""
import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def torch_closure() -> list[importlib.metadata.Distribution]:
    """torch and every distribution it requires on this platform, transitively."""
    from packaging.requirements import Requirement

    found, todo = {}, ["torch"]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        dist = found[key] = importlib.metadata.distribution(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(found.values())


def link_into(site: pathlib.Path, dists) -> None:
    """Make `dists` installed in the venv whose site-packages is `site`: each top-level file or
    folder of theirs (their code, their .dist-info) becomes a symlink to this environment's."""
    for dist in dists:
        base = pathlib.Path(dist.locate_file(""))
        tops = {pathlib.Path(f).parts[0] for f in dist.files or []}
        for top in tops:
            source = base / top
            if top in ("..", "bin") or not source.exists() or (site / top).exists():
                continue
            (site / top).symlink_to(source)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
    # setup.py keeps its object files in build/, so this reuses the editable install's objects.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                    "-w", str(tmp / "dist"), str(ROOT)], check=True, env=env, timeout=1800)
    (wheel,) = (tmp / "dist").glob("nanogpt_kernels-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    assert sysconfig.get_paths()["purelib"] != purelib
    link_into(pathlib.Path(purelib), torch_closure())
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600)
    work = tmp / "elsewhere"  # not the checkout: nothing of csrc/, tools/ or tests/ is reachable
    work.mkdir()
    return wheel, python, work


def run(python, work, *args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NANOGPT_KERNELS_BACKEND")}
    return subprocess.run([str(python), *args], cwd=work, capture_output=True, text=True, env=env, timeout=timeout)


def test_wheel_holds_the_runtime_package_only(wheel_venv):
    wheel, _, _ = wheel_venv
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"nanogpt_kernels"}, tops
    assert any(re.fullmatch(r"nanogpt_kernels/_C\..*\.so", n) for n in names), "no compiled extension"
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    import torch

    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.MULTILINE)
    assert f"torch=={torch.__version__.split('+')[0]}" in requires
    assert "numpy" in requires and any(r.startswith("triton~=3.8.0") for r in requires)


def test_installed_wheel_passes_check_at_default_shapes(wheel_venv):
    """`python -m nanogpt_kernels check` as the README gives it, as a user runs it: 64 x 768 on
    the CPU (every op on eager, triton in the interpreter and cuda through the harness; errors
    grow with the reduction lengths, so tiny shapes cannot stand in for these), 4096 x 768 on
    a GPU."""
    _, python, work = wheel_venv
    result = run(python, work, "-m", "nanogpt_kernels", "check", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    for op in ("layer_norm", "add_layer_norm", "causal_attention", "gelu_mlp", "normal_init_"):
        for backend in ("eager", "triton", "cuda") if op != "normal_init_" else ("triton", "cuda"):
            assert re.search(rf"^{op}\s+{backend}\s.*pass", result.stdout, re.MULTILINE), (op, backend, result.stdout)
    assert "all checks passed" in result.stdout and "FAIL" not in result.stdout


def test_installed_wheel_runs_the_demo_and_the_api(wheel_venv):
    _, python, work = wheel_venv
    result = run(python, work, "-m", "nanogpt_kernels", "demo", "--steps", "2", "--n-layer", "1", "--n-head", "2",
                 "--n-embd", "32", "--block-size", "16", "--batch-size", "2", "--sample-tokens", "8",
                 "--no-progress", "--out", str(work / "demo"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (work / "demo" / "losses.csv").is_file()
    code = ("import torch, nanogpt_kernels as nk\n"
            "x = torch.randn(3, 17, 48); w = torch.randn(48); b = torch.randn(48)\n"
            "for backend in ('eager', 'triton', 'cuda'):\n"
            "    y = nk.layer_norm(x, w, b, backend=backend)\n"
            "    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, (48,), w, b), rtol=1e-5, atol=1e-5)\n"
            "print(nk.__file__)\n")
    result = run(python, work, "-c", code)
    assert result.returncode == 0, result.stderr
    assert str(ROOT) not in result.stdout, "imported the checkout, not the installed wheel"


@pytest.mark.parametrize("command", ["bench", "kernels"])
def test_installed_wheel_names_the_tooling_command(wheel_venv, command):
    """The contributor tools are not in the wheel: the runtime says where they are, in one
    sentence, instead of a traceback."""
    _, python, work = wheel_venv
    result = run(python, work, "-m", "nanogpt_kernels", command)
    assert result.returncode == 2
    assert f"python -m tools {command}" in result.stderr and "Traceback" not in result.stderr
