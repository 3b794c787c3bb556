"""The benchmark suite (`python -m tools bench`) in its CPU smoke mode: every output
file is written with the expected columns, every op is covered, plots are real PNGs, the
summary says these are not GPU figures; a failing or missing provider is a record, never a
crash; and the roofline arithmetic matches hand-computed values."""
import csv
import json
import sys

import pytest
import torch

from benchmarks import bench_e2e, common, roofline
from tools import bench

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    # --smoke: the same CPU run with or without a GPU on the machine.
    out = tmp_path_factory.mktemp("bench")
    status = bench.main(["--smoke", "--out", str(out)])
    return status, out


def test_smoke_run_succeeds(smoke_run):
    status, out = smoke_run
    assert status == 0
    assert {p.name for p in out.iterdir()} >= {"results.csv", "results.json", "summary.md", "plots"}


def test_results_csv(smoke_run):
    _, out = smoke_run
    with open(out / "results.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert list(reader.fieldnames[:len(common.COLUMNS)]) == list(common.COLUMNS)
    assert {r["op"] for r in rows} == set(bench.OPS)
    assert {r["status"] for r in rows} <= {"ok", "skipped", "error", "invalid"}
    assert all(r["smoke"] == "True" for r in rows)
    for op in bench.OPS:
        if op == "gpt2_train_step":
            continue  # needs nanogpt_kernels.GPT; see test_end_to_end_rows
        ok = [r for r in rows if r["op"] == op and r["status"] == "ok"]
        # The eager baseline is always measured, in every mode its benchmark has.
        assert {r["mode"] for r in ok if r["provider"] == ok[0]["provider"]} == (
            {"fwd"} if op == "normal_init" else {"fwd", "bwd", "fwd+bwd"}), op
        for r in ok:
            assert float(r["ms"]) > 0 and r["shape"] and r["dtype"], r
            assert float(r["GB/s"] or r["TFLOP/s"]) > 0, r
            assert r["roofline_pct"] != "", r
    not_ok = [r for r in rows if r["status"] != "ok"]
    assert all(r["reason"] for r in not_ok)
    # torch.compile and the GPU-only peers are skipped on the CPU, with the reason.
    assert any(r["provider"] == "torch.compile" and "GPU only" in r["reason"] for r in not_ok)
    assert any(r["provider"] == "sdpa-flash" and r["status"] == "skipped" for r in not_ok)


def test_results_json_metadata(smoke_run):
    _, out = smoke_run
    data = json.loads((out / "results.json").read_text())
    meta = data["meta"]
    for key in ("gpu", "driver", "cuda", "torch", "triton", "nanogpt_kernels", "git_commit", "date", "peaks",
                "datasheet_peaks", "dtype", "quick", "ops", "seconds"):
        assert key in meta, key
    assert meta["smoke"] is True and "not GPU figures" in meta["label"]
    assert meta["torch"] == torch.__version__ and meta["peaks"]["bandwidth"] > 0
    assert data["results"] and all(r["status"] == "ok" and r["valid"] for r in data["results"])
    assert all(r["status"] != "ok" for r in data["skipped"])
    for r in data["results"]:
        for key in ("op", "provider", "mode", "shape", "size", "dtype", "ms"):
            assert r[key] is not None, (key, r)


def test_summary_markdown(smoke_run):
    _, out = smoke_run
    text = (out / "summary.md").read_text()
    assert "not GPU figures" in text
    for op in ("layer_norm", "add_layer_norm", "causal_attention", "gelu_mlp", "normal_init"):
        assert f"## {op} (" in text, op
        assert f"![{op}](plots/{op}.png)" in text
    assert "| shape | provider | fwd | bwd | fwd+bwd |" in text
    assert "## Not measured" in text and "GPU only" in text


def test_plots_are_pngs(smoke_run):
    _, out = smoke_run
    import matplotlib.image

    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.stem for p in pngs} == set(bench.OPS)
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE, png
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100, png
        assert image.std() > 0.01, f"{png} is blank"


def test_end_to_end_rows(smoke_run):
    _, out = smoke_run
    rows = [r for r in json.loads((out / "results.json").read_text())["results"]
            + json.loads((out / "results.json").read_text())["skipped"] if r["op"] == "gpt2_train_step"]
    by_provider = {r["provider"]: r for r in rows}
    assert set(by_provider) == {"eager", "eager+compile", "fused-triton", "fused-cuda", "fused-triton+compile",
                                "fused-cuda+compile"}
    assert by_provider["eager+compile"]["status"] == "skipped"
    if isinstance(bench_e2e.model_api(), common.Skip):
        assert by_provider["eager"]["status"] == "skipped" and "GPT" in by_provider["eager"]["reason"]
    else:
        eager = by_provider["eager"]
        assert eager["status"] == "ok", eager["reason"]
        assert eager["tokens/s"] > 0 and eager["TFLOP/s"] > 0 and eager["MFU_measured"] > 0


# -- a failing provider is a record -------------------------------------------------------------------

def test_failing_and_missing_providers_are_records():
    settings = common.Settings(device=torch.device("cpu"), smoke=True, dtype=torch.float32,
                               peaks={"flops": 1e9, "bandwidth": 1e9}, log=lambda line: None)

    def broken(x):
        raise RuntimeError("kernel exploded\nsecond line")

    def make():
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
        return [x], [torch.ones(4, 8)]

    case = common.Case(op="tanh", shape={"n": 32}, size=32, size_name="n", dtype=torch.float32, flops={},
                       bytes={m: 256.0 for m in roofline.MODES}, metric="GB/s", make_inputs=make,
                       reference=torch.tanh, input_names=("x",),
                       providers={"eager": torch.tanh, "broken": broken, "wrong": lambda x: torch.tanh(x) + 1e-3,
                                  # the right output, the wrong gradient (0.5 instead of 1 - tanh^2)
                                  "wrong-grad": lambda x: torch.tanh(x).detach() + (0.5 * x - (0.5 * x).detach()),
                                  "missing": common.Skip("not installed")})
    records = common.measure(case, settings)
    status = {(r["provider"], r["mode"]): (r["status"], r["reason"]) for r in records}
    assert {m for (p, m) in status if p == "eager"} == set(roofline.MODES)
    assert all(status["eager", m][0] == "ok" for m in roofline.MODES)
    assert status["broken", "*"] == ("error", "RuntimeError: kernel exploded")
    assert status["wrong", "*"][0] == "invalid" and status["wrong", "*"][1].startswith("out0: max error")
    assert status["wrong-grad", "*"][0] == "invalid" and status["wrong-grad", "*"][1].startswith("dx: max error")
    assert status["missing", "*"] == ("skipped", "not installed")
    ok = [r for r in records if r["status"] == "ok"]
    assert all(r["GB/s"] == pytest.approx(256 / (r["ms"] * 1e-3) / 1e9) for r in ok)
    assert all(r["roofline_pct"] == pytest.approx(100 * (256 / 1e9) / (r["ms"] * 1e-3)) for r in ok)


def test_exit_status_on_wrong_results(tmp_path, monkeypatch):
    wrong = {"op": "layer_norm", "provider": "cuda", "mode": "*", "shape": "rows=1 hidden=8", "size": 8,
             "dtype": "bfloat16", "status": "invalid", "reason": "y: max error 1 > tolerance 0.01", "valid": False,
             "smoke": True}
    monkeypatch.setattr(bench, "run_suite", lambda ops, settings: [wrong])
    assert bench.main(["--ops", "layernorm", "--out", str(tmp_path)]) == 1
    monkeypatch.setattr(bench, "run_suite", lambda ops, settings: [{**wrong, "provider": "apex"}])
    assert bench.main(["--ops", "layer_norm", "--out", str(tmp_path)]) == 0  # a peer's numbers are not ours


def test_unknown_op_is_an_error(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--ops", "softmax"])
    assert "unknown op" in capsys.readouterr().err


def test_progress_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    progress = bench._Progress(2)
    progress.step("layer_norm rows=8")
    progress.log("a line")
    progress.close()
    out, err = capsys.readouterr()
    assert (out, err) == ("a line\n", "[1/2] layer_norm rows=8\n")


# -- roofline arithmetic, against hand-computed values -----------------------------------------------

def test_layer_norm_bytes():
    # rows=4, hidden=8, bf16: activations 64 B, weight+bias 32 B, mean+rstd 2*4*4 = 32 B.
    assert roofline.layer_norm_bytes(4, 8, 2) == {"fwd": 64 * 2 + 32 + 32, "bwd": 64 * 3 + 16 + 32 + 32,
                                                   "fwd+bwd": 192 + 272}
    assert roofline.layer_norm_bytes(4, 8, 2, bias=False) == {"fwd": 176, "bwd": 256, "fwd+bwd": 432}
    # GPT-2 small at 16k tokens in bf16: x in, y out = 2 x 25.17 MB, plus 3 KB of parameters, 128 KB of stats.
    assert roofline.layer_norm_bytes(16384, 768, 2)["fwd"] == 2 * 16384 * 768 * 2 + 768 * 4 + 16384 * 8


def test_add_layer_norm_bytes():
    assert roofline.add_layer_norm_bytes(4, 8, 2) == {"fwd": 64 * 4 + 32 + 32, "bwd": 64 * 4 + 16 + 32 + 32,
                                                       "fwd+bwd": 320 + 336}


def test_attention_flops_and_bytes():
    # Causal half: 4 B H T^2 D / 2 = 4 * 2 * 3 * 16 * 5 / 2 = 960; backward 2.5x.
    assert roofline.attention_flops(2, 3, 4, 5) == {"fwd": 960, "bwd": 2400, "fwd+bwd": 3360}
    # nanoGPT's shape: 2 * 12 * 12 * 1024^2 * 64 = 19.33 GFLOP forward.
    assert roofline.attention_flops(12, 12, 1024, 64)["fwd"] == 19327352832
    # q, k, v, o of 2*3*4*5 bf16 = 240 B each; lse 2*3*4 floats = 96 B.
    assert roofline.attention_bytes(2, 3, 4, 5, 2) == {"fwd": 4 * 240 + 96, "bwd": 8 * 240 + 96,
                                                        "fwd+bwd": 1056 + 2016}


def test_gelu_mlp_flops_and_bytes():
    assert roofline.gelu_mlp_flops(12288, 768, 3072) == {"fwd": 115964116992, "bwd": 231928233984,
                                                          "fwd+bwd": 347892350976}
    # M=2, C=3, H=12, bf16: x 6, w1 36, b1 12, w2 36, b2 3, y 6 elements forward;
    # dy 6, x 6, w1 36, b1 12, w2 36 in, dx 6, dw1 36, db1 12, dw2 36, db2 3 out backward.
    assert roofline.gelu_mlp_bytes(2, 3, 12, 2) == {"fwd": 99 * 2, "bwd": 189 * 2, "fwd+bwd": 288 * 2}


def test_normal_init_bytes():
    assert roofline.normal_init_bytes(1000, 4) == 4000
    assert roofline.normal_init_bytes(124_475_904, 2) == 248_951_808


def test_roofline_bounds():
    # 1 TFLOP and 1 GB at 100 TFLOP/s and 1 TB/s: compute-bound, 10 ms; measured 20 ms is 50%.
    assert roofline.roofline_seconds(1e12, 1e9, 1e14, 1e12) == pytest.approx(0.01)
    assert roofline.percent_of_roofline(0.02, 1e12, 1e9, {"flops": 1e14, "bandwidth": 1e12}) == pytest.approx(50)
    # Memory-bound: no FLOPs, 1 GB at 2 TB/s is 0.5 ms.
    assert roofline.percent_of_roofline(1e-3, 0, 1e9, {"flops": 1e14, "bandwidth": 2e12}) == pytest.approx(50)
    assert roofline.attainable_flops(10, 1e14, 1e12) == 1e13
    assert roofline.attainable_flops(1000, 1e14, 1e12) == 1e14


@pytest.mark.parametrize("name, flops, bandwidth", [
    ("NVIDIA H100 80GB HBM3", 989e12, 3.35e12),
    ("NVIDIA H100 PCIe", 756e12, 2.0e12),
    ("NVIDIA H100 NVL", 835e12, 3.9e12),
    ("NVIDIA H200", 989e12, 4.8e12),
    ("NVIDIA GH200 480GB", 989e12, 4.0e12),  # not an H200
    ("NVIDIA A100-SXM4-80GB", 312e12, 2.039e12),
    ("NVIDIA A100-SXM4-40GB", 312e12, 1.555e12),
    ("NVIDIA A100-PCIE-40GB", 312e12, 1.555e12),
    ("NVIDIA A100 80GB PCIe", 312e12, 1.935e12),  # not the SXM part's bandwidth
])
def test_datasheet_peaks(name, flops, bandwidth):
    peaks = roofline.datasheet_peaks(name)
    assert (peaks["flops"], peaks["bandwidth"]) == (flops, bandwidth)
    assert roofline.datasheet_peaks("NVIDIA GeForce RTX 4090") is None
    assert roofline.datasheet_peaks("NVIDIA H100 PCIe")["flops"] == 756e12
    assert roofline.datasheet_peaks("Tesla T4") is None and roofline.datasheet_peaks(None) is None


def test_e2e_flops_per_token():
    model = torch.nn.Module()
    model.transformer = torch.nn.ModuleDict({"wpe": torch.nn.Embedding(16, 8)})
    model.lm_head = torch.nn.Linear(8, 10, bias=False)
    # N = 80 (the position embedding left out); 6 N + 12 L H Q T = 480 + 12 * 2 * 2 * 4 * 16.
    assert bench_e2e.flops_per_token(model, {"n_layer": 2, "n_head": 2, "n_embd": 8}, 16) == 480 + 3072


def test_measured_beside_predicted(smoke_run):
    """Every measured eager and cuda time of the ops the static model covers has the model's
    prediction beside it (a smoke run predicts for an A100 and says its ratios mean nothing);
    the run records and prints what backend=None takes for each op."""
    _, out = smoke_run
    data = json.loads((out / "results.json").read_text())
    covered = [r for r in data["results"] if r["provider"] in ("cuda", "eager") and r["op"] != "gpt2_train_step"]
    assert covered
    for r in covered:
        assert r["predicted_for"] == "A100 SXM4 80GB" and r["predicted_ms"] > 0, r
        assert r["measured_over_predicted"] == pytest.approx(r["ms"] / r["predicted_ms"])
    text = (out / "summary.md").read_text()
    assert "## Measured against predicted" in text and "the ratios mean nothing" in text
    defaults = data["meta"]["default_backends"]
    assert set(defaults) == set(bench.DEFAULT_BACKEND_OPS) and all(b == "eager" for b, _ in defaults.values())
    assert "## backend=None" in text and "| layer_norm | eager | CPU tensors: eager |" in text
