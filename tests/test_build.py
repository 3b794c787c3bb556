"""setup.py without CUDA: the extension still builds, says what it skipped, and its
harness-compiled kernels run on CPU tensors."""
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_build_without_cuda(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", "build", "*.so", "__pycache__", ".git"))
    env = dict(os.environ, NANOGPT_KERNELS_SKIP_CUDA="1", MAX_JOBS="2")
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=src, env=env,
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-4000:]
    assert "building WITHOUT CUDA kernels: NANOGPT_KERNELS_SKIP_CUDA is set" in build.stderr
    code = (
        "import torch, nanogpt_kernels as nk\n"
        "from nanogpt_kernels import _backend\n"
        "assert not _backend.cuda_built(), 'CUDA kernels built despite NANOGPT_KERNELS_SKIP_CUDA'\n"
        "x, w = torch.randn(7, 100), torch.randn(100)\n"
        "y = nk.layer_norm(x, w, backend='cuda')\n"
        "ref = torch.nn.functional.layer_norm(x, (100,), w)\n"
        "assert (y - ref).abs().max() < 1e-5\n"
        "print(nk.available_backends('cpu'))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=src, env=dict(os.environ, PYTHONPATH=str(src)),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "'cuda'" in run.stdout
