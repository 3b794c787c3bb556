"""`python -m nanogpt_kernels tune` and the measured default: the smoke run writes a table that
reads back, and backend=None on CUDA tensors follows a table's choice (a fake GPU here: its name
and which backends it can run are patched), after an explicit argument and
$NANOGPT_KERNELS_BACKEND, and falls back to cuda > triton > eager when the table has nothing
usable."""
import dataclasses
import json
import re
import warnings

import pytest
import torch

import nanogpt_kernels as nk
from nanogpt_kernels import _backend, tune
from nanogpt_kernels.__main__ import main, print_defaults

CUDA = torch.device("cuda")
GPU = "Fake GPU 80GB"


@pytest.fixture
def table_path(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "tuned.json"
    monkeypatch.setenv(_backend.TUNE_TABLE_VAR, str(path))
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    _backend.reset_tuned_table()
    yield path
    _backend.reset_tuned_table()  # the next test must not see this one's table


@pytest.fixture
def fake_gpu(table_path, monkeypatch):
    """A GPU named GPU on which the backends in the returned set can run (all three at first)."""
    runs = set(_backend.BACKENDS)
    monkeypatch.setattr(_backend, "gpu_name", lambda device: GPU)
    monkeypatch.setattr(_backend, "_why_unavailable", lambda backend, device: None if backend in runs else "not here")
    return runs


def entry(choices, **fields):
    """A current tuned entry choosing choices[op] for each op, with made-up timings."""
    ms = {"eager": 0.5, "triton": 0.3, "cuda": 0.4}
    ops = {op: {"shapes": {}, "choice": choice,
                "backends": {b: {"verdict": "pass", "ms": ms[b]} for b in _backend.BACKENDS}}
           for op, choice in choices.items()}
    return {"tuned_at": "2026-05-04T10:00:00+00:00", "nanogpt_kernels": nk.__version__, "torch": torch.__version__,
            "ops": ops, **fields}


def write(path, gpus):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": _backend.TUNE_FORMAT, "gpus": gpus}))


def default(op):
    return _backend.resolve_backend(None, CUDA, op=op)


def test_smoke_run_writes_a_table_that_reads_back(table_path, capsys):
    write(table_path, {GPU: entry({"gelu_mlp": "triton"})})
    assert main(["tune", "--smoke"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {table_path}" in out
    for op in tune.OPS:
        assert f"\n{op:<18}" in out
    gpus, why = _backend.tuned_table()
    assert why is None and json.loads(table_path.read_text())["gpus"] == gpus
    assert gpus[GPU] == entry({"gelu_mlp": "triton"}), "tuning one device replaced another's entry"
    smoke = gpus[tune.SMOKE_KEY]
    assert (smoke["nanogpt_kernels"], smoke["torch"], smoke["device"]) == (nk.__version__, torch.__version__, "cpu")
    assert smoke["shape"] == {"batch": 2, "block": 17, "n_embd": 48, "n_head": 3, "head_dim": 16}
    assert set(smoke["ops"]) == set(tune.OPS)
    for op, result in smoke["ops"].items():
        assert result["shapes"], op
        for backend, measured in result["backends"].items():
            assert measured["verdict"] == "pass" and measured["ms"] > 0, (op, backend, measured)
        times = {b: m["ms"] for b, m in result["backends"].items()}
        assert result["choice"] == min(times, key=times.get)


def test_failing_or_wrong_backends_are_never_chosen(table_path, monkeypatch, capsys):
    real = tune.CASES["layer_norm"]

    def broken(shape, device, gen):
        case = real(shape, device, gen)

        def fail(*args):
            raise RuntimeError("no kernel today")

        kernels = {"triton": fail, "cuda": lambda x, w, b: case.eager(x, w, b) * 1.5}  # cuda: fast and wrong
        return dataclasses.replace(case, ours=lambda backend: kernels.get(backend) or case.ours(backend))

    monkeypatch.setitem(tune.CASES, "layer_norm", broken)
    monkeypatch.setattr(tune, "OPS", ("layer_norm",))
    assert main(["tune", "--smoke"]) == 1
    out = capsys.readouterr().out
    result = _backend.tuned_table()[0][tune.SMOKE_KEY]["ops"]["layer_norm"]
    assert {b: m["verdict"] for b, m in result["backends"].items()} == \
        {"eager": "pass", "triton": "failed", "cuda": "wrong"}
    assert result["choice"] == "eager"
    assert "layer_norm on triton: RuntimeError: no kernel today" in out
    assert re.search(r"layer_norm on cuda: \w+ off by [0-9.e+-]+, tolerance", out)
    assert "some backends failed or disagreed with eager (they are never chosen): layer_norm on triton, " \
        "layer_norm on cuda" in out


def test_tuned_choice_wins(fake_gpu, table_path):
    write(table_path, {GPU: entry({"layer_norm": "triton", "gelu_mlp": "eager", "causal_attention": "cuda",
                                   "normal_init_": "triton"}),
                       "Another GPU": entry({"add_layer_norm": "triton"})})
    assert [default(op) for op in ("layer_norm", "gelu_mlp", "causal_attention", "normal_init_")] == \
        ["triton", "eager", "cuda", "triton"]
    assert default("add_layer_norm") == "cuda", "an op the entry has no choice for takes the fixed order"
    assert default(None) == "cuda", "a caller naming no op takes the fixed order"
    assert _backend.resolve_backend(None, torch.device("cpu"), op="layer_norm") == "eager", "CPU tensors: eager"
    assert _backend.explain_default("layer_norm", "cuda") == \
        ("triton", f"tuned on {GPU} 2026-05-04: triton 0.3 ms vs eager 0.5 ms, cuda 0.4 ms")
    assert _backend.explain_default("add_layer_norm", "cuda") == \
        ("cuda", f"add_layer_norm has no tuned choice for {GPU}: first available of cuda, triton, eager")


def test_argument_and_environment_beat_the_table(fake_gpu, table_path, monkeypatch):
    write(table_path, {GPU: entry({"layer_norm": "triton"})})
    assert _backend.resolve_backend("eager", CUDA, op="layer_norm") == "eager"
    monkeypatch.setenv(_backend.ENV_VAR, "cuda")
    assert default("layer_norm") == "cuda"
    assert _backend.explain_default("layer_norm", CUDA) == ("cuda", f"${_backend.ENV_VAR}=cuda")
    assert _backend.resolve_backend("eager", CUDA, op="layer_norm") == "eager"


def test_unavailable_tuned_choice_falls_back(fake_gpu, table_path):
    write(table_path, {GPU: entry({"layer_norm": "triton", "gelu_mlp": "cuda"})})
    fake_gpu.discard("triton")
    assert default("layer_norm") == "cuda"
    backend, why = _backend.explain_default("layer_norm", CUDA)
    assert backend == "cuda" and why.startswith("layer_norm's tuned choice 'triton' is not available (not here)")
    fake_gpu.discard("cuda")
    assert default("gelu_mlp") == "eager"


@pytest.mark.parametrize("gpus, why", [
    ({"Another GPU": entry({"layer_norm": "triton"})}, f"no tuned entry for {GPU}"),
    ({GPU: entry({"layer_norm": "triton"}, torch="1.0.0")}, "rerun `python -m nanogpt_kernels tune`"),
    ({GPU: entry({"layer_norm": "triton"}, nanogpt_kernels="0.0.1")}, "rerun `python -m nanogpt_kernels tune`"),
    ({GPU: entry({"layer_norm": None})}, f"layer_norm has no tuned choice for {GPU}"),
    ({GPU: entry({"layer_norm": "cudnn"})}, f"layer_norm has no tuned choice for {GPU}"),
    ({GPU: "not an entry"}, f"no tuned entry for {GPU}"),
])
def test_entry_without_a_usable_choice_falls_back(fake_gpu, table_path, gpus, why):
    write(table_path, gpus)
    fake_gpu.discard("cuda")
    assert default("layer_norm") == "triton"
    assert why in _backend.explain_default("layer_norm", CUDA)[1]


def test_missing_table_falls_back_silently(fake_gpu, table_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert default("layer_norm") == "cuda"
        assert _backend.explain_default("layer_norm", CUDA) == \
            ("cuda", f"no tuned table at {table_path}: first available of cuda, triton, eager")


@pytest.mark.parametrize("text", ["{not json", '["a list"]', '{"format": 99, "gpus": {}}', '{"format": 1}'])
def test_malformed_table_falls_back_with_one_warning(fake_gpu, table_path, text):
    table_path.parent.mkdir(parents=True)
    table_path.write_text(text)
    with pytest.warns(UserWarning, match=f"tuned table {table_path} .*backend=None ignores it"):
        assert default("layer_norm") == "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert default("gelu_mlp") == "cuda"


def test_tune_replaces_a_malformed_table(table_path, capsys):
    table_path.parent.mkdir(parents=True)
    table_path.write_text("{not json")
    assert tune.write_entry(GPU, entry({"layer_norm": "cuda"})) == table_path
    assert "replacing" in capsys.readouterr().out
    assert _backend.tuned_table() == ({GPU: entry({"layer_norm": "cuda"})}, None)


def test_each_op_names_itself(monkeypatch):
    """The ops pass their own name, the table's key, to resolve_backend."""
    names, real = [], _backend.resolve_backend
    monkeypatch.setattr(_backend, "resolve_backend", lambda backend, device, op=None: names.append(op) or
                        real(backend, device, op=op))
    x, w = torch.randn(3, 48), torch.randn(48)
    nk.layer_norm(x, w)
    nk.add_layer_norm(x, x, w)
    nk.gelu_mlp(x, torch.randn(64, 48), None, torch.randn(48, 64), None)
    q = torch.randn(1, 1, 3, 16)
    nk.causal_attention(q, q, q)
    nk.normal_init_([torch.empty(5)], [0.02], seed=0, backend="eager")
    assert names == ["layer_norm", "add_layer_norm", "gelu_mlp", "causal_attention", "normal_init_"]
    assert set(names) == set(tune.OPS)


def test_check_explains_the_cuda_defaults(fake_gpu, table_path, capsys):
    write(table_path, {GPU: entry({"causal_attention": "triton"})})
    print_defaults(CUDA)
    out = capsys.readouterr().out
    assert "backend=None on cuda tensors:" in out
    assert f"  {'causal_attention':<18}{'triton':<9}tuned on {GPU} 2026-05-04: triton 0.3 ms" in out
    assert f"  {'layer_norm':<18}{'cuda':<9}layer_norm has no tuned choice" in out


def test_tune_without_a_gpu_says_so(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["tune"]) == 2
    assert "--smoke runs the same path on the CPU" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "argument --batch-size: must be a positive integer, got '0'"),
    (["--repeats", "x"], "argument --repeats: must be a positive integer, got 'x'"),
    (["--model", "gpt5"], "argument --model: invalid choice: 'gpt5'"),
])
def test_bad_arguments_name_themselves(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(["tune", *argv])
    assert message in capsys.readouterr().err


def test_bad_device_names_itself():
    with pytest.raises(ValueError, match="--device must be a CUDA device"):
        main(["tune", "--device", "cpu"])


def test_op_argument_keeps_resolution_constant_under_compile(monkeypatch):
    """resolve_backend, op argument included, runs while tracing and leaves no graph break."""
    monkeypatch.setenv(_backend.ENV_VAR, "cuda")
    from nanogpt_kernels.ops import layernorm

    calls, real = [], layernorm._cuda_fwd
    monkeypatch.setattr(layernorm, "_cuda_fwd", lambda *a: calls.append(1) or real(*a))
    x, w = torch.randn(3, 48), torch.randn(48)
    out = torch.compile(lambda x, w: nk.layer_norm(x, w) * 2, fullgraph=True)(x, w)
    assert calls, "the default (cuda, from the environment) did not run"
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(x, (48,), w) * 2, atol=1e-5, rtol=1e-5)
