"""The per-op and per-step prediction (tools/predict.py): the launches a GPT-2 step makes, recorded
by the harness's dry run at the real shapes; the launch arithmetic against the roofline formulas
of benchmarks/roofline.py; the eager model against hand-computed figures; the join with the
kernel report; the bank counter on the real kernels; and the command's outputs."""
import json
import math
import pathlib
import re

import pytest

from benchmarks import roofline
from benchmarks.gpus import GPUS
from tools import kernels as kr
from tools import predict as pr

LAYERNORM_CU = pathlib.Path(__file__).resolve().parent.parent / "csrc" / "layernorm.cu"
GPT2 = pr.MODELS["gpt2"]
A100, H100 = GPUS["A100-SXM-80GB"], GPUS["H100-SXM"]
B, C, H, D = GPT2.batch, GPT2.n_embd, GPT2.n_head, GPT2.n_embd // GPT2.n_head
M = B * pr.T


@pytest.fixture(scope="module")
def calls():
    return pr.record_step(GPT2.shapes, sm_count=A100.sms)


def by(calls, op, phase):
    return [c for c in calls if c.op == op and c.phase == phase]


def flops(calls, op, phase):
    return sum(w.flops for c in by(calls, op, phase) for w in pr.work(c))


def test_every_op_and_phase_is_recorded(calls):
    assert {(c.op, c.phase) for c in calls} == {(op, phase) for op in ("layernorm", "attention", "mlp")
                                                for phase in pr.PHASES} | {("init", "forward")}
    assert all(c.launches for c in calls)
    (fwd,) = by(calls, "attention", "forward")
    (launch,) = fwd.launches
    # One CTA per 64 query rows of each of the 144 (sequence, head) pairs.
    assert launch["grid"][0] * launch["grid"][1] == B * H * pr.T // 64, launch
    assert [len(c.launches) for c in by(calls, "attention", "backward")] == [3]  # delta, dK/dV, dQ


def test_launch_arithmetic_matches_the_roofline_formulas(calls):
    pairs = B * H * pr.T * (pr.T + 1) / 2
    assert flops(calls, "attention", "forward") == pytest.approx(4 * pairs * D)
    # dK/dV recomputes S and computes dP, dV, dK; dQ recomputes S and dP: 7 products to FA2's 5.
    assert flops(calls, "attention", "backward") == pytest.approx(7 * 2 * pairs * D)
    mlp = roofline.gelu_mlp_flops(M, C, 4 * C)
    assert flops(calls, "mlp", "forward") == pytest.approx(mlp["fwd"])
    assert flops(calls, "mlp", "backward") == pytest.approx(mlp["bwd"])
    (ln,) = by(calls, "layernorm", "forward")
    assert pr.ideal_bytes(ln) == roofline.add_layer_norm_bytes(M, C, 2)["fwd"]
    (init,) = by(calls, "init", "forward")
    assert pr.ideal_bytes(init) == 4 * sum(math.prod(s) for s in pr.init_shapes(GPT2))
    # The LayerNorm backward: each team keeps its dweight/dbias sums in registers and writes one
    # fp32 row per gradient per group of 16 rows, which the reduce kernel reads back; dy, xs,
    # ds read once and dx written once per row, the weight once per block.
    (lnb,) = by(calls, "layernorm", "backward")
    main, reduce = pr.work(lnb)
    source = LAYERNORM_CU.read_text()
    for constant, value in (("kGroupRows", pr.LN_GROUP_ROWS), ("kReduceLanes", pr.LN_REDUCE_LANES),
                            ("kReduceBatch", pr.LN_REDUCE_BATCH)):
        assert value == int(re.search(rf"{constant} = (\d+);", source)[1]), constant
    groups = M // pr.LN_GROUP_ROWS
    partials = groups * 2 * C * 4
    assert main.dram_bytes + reduce.dram_bytes == pytest.approx(pr.ideal_bytes(lnb) + 2 * partials)
    blocks = lnb.launches[0]["grid"][0]
    streamed = pr.ideal_bytes(lnb) - 3 * C * 2  # less weight, dweight, dbias
    assert main.global_bytes == pytest.approx(streamed + blocks * C * 2 + partials)
    assert sum(w.global_bytes for w in (main, reduce)) / pr.ideal_bytes(lnb) < 1.15
    # Each team's chain: the rows of its groups, one round trip each.
    teams = blocks * lnb.launches[0]["block"][1]
    assert main.serial_round_trips == math.ceil(groups / teams) * pr.LN_GROUP_ROWS


def test_the_column_sum_reduce_loop_takes_four_rows_a_step():
    """REDUCE_UNROLL is what nvcc makes of the column sum's final loop: its main loop loads 4
    rows of partials per iteration."""
    rows = pr.cuda_rows(("sm_80", "sm_90a"))
    finals = [(key, row) for key, row in rows.items() if key[1].startswith("nk_cuda::column_sum_final_kernel<")]
    assert finals
    for (arch, name), row in finals:
        assert row.loop_global_bytes == pr.REDUCE_UNROLL * 32 * 4, (arch, name, row.loop_global_bytes)


def test_report_name():
    assert pr.report_name("void nk_cpu::gemm_tc_kernel<__half, nk_cpu::TileConfig<64, 64, 2, 2, 3, 4>, true, "
                          "false, true>(nk::GemmParams)") == \
        "nk_cuda::gemm_tc_kernel<__half, nk_cuda::TileConfig<64, 64, 2, 2, 3, 4>, true, false, true>"
    assert pr.report_name("void nk_cpu::(anonymous namespace)::k(float const*, long)") == \
        "nk_cuda::(anonymous namespace)::k"


def test_eager_model_hand_computed():
    attention = 4 * B * H * pr.T * (pr.T + 1) / 2 * D
    assert pr.eager_seconds("attention", "forward", GPT2.shapes, A100) == pytest.approx(attention / (312e12 * 0.45))
    assert pr.eager_seconds("attention", "backward", GPT2.shapes, H100) == pytest.approx(2.5 * attention / (989e12 * 0.15))
    act = M * C * 2
    bandwidth = 2.039e12 * 0.8
    assert pr.eager_seconds("layernorm", "forward", GPT2.shapes, A100) == pytest.approx(
        (3 * act + 2 * act + 2 * M * 4) / bandwidth)
    gemm = 2 * M * 4 * C * C / (312e12 * 0.75)
    assert pr.eager_seconds("mlp", "forward", GPT2.shapes, A100) == pytest.approx(2 * gemm + 8 * act / bandwidth)


def fake_rows(calls, archs=("sm_80", "sm_90a")):
    """A report row for every recorded kernel: 64 registers, 6 slots and 160 B per HMMA."""
    rows = {}
    for call in calls:
        for launch in call.launches:
            name = pr.report_name(launch["kernel"])
            for arch in archs:
                rows[(arch, name)] = kr.KernelResources(
                    source="cuda", file="", name=name, arch=arch, kind="gemm", registers=64, global_loads=4,
                    global_loads_128=4, issue_per_mma=6.0, shared_bytes_per_mma=160.0)
    return rows


def test_predict_step_from_rows(calls, monkeypatch):
    monkeypatch.setattr(pr, "record_step", lambda shapes, ops, sm_count=0, rows=None, arch="": calls)
    result = pr.predict(models=("gpt2",), gpus=("A100-SXM-80GB",), rows=fake_rows(calls), banks=False,
                        backends=("cuda",))
    (step,) = result["steps"]
    ops = {(o.op, o.phase): o for o in result["ops"]}
    layer = lambda side: sum(getattr(o, side) * (2 if o.op == "layernorm" else 1)  # noqa: E731
                             for o in ops.values() if o.op != "init")
    assert step["complete"]
    assert step["ours_s"] == pytest.approx(GPT2.n_layer * layer("ours_s") + step["rest_s"])
    assert step["eager_s"] == pytest.approx(GPT2.n_layer * layer("eager_s") + step["rest_s"])
    assert step["speedup"] == pytest.approx(step["eager_s"] / step["ours_s"])
    # 6 slots per HMMA on an A100 is within the 8 the tensor cores allow: tensor-bound GEMMs.
    gemms = [lp for lp in result["launches"] if "gemm" in lp.kernel]
    assert gemms and all(lp.limiter == "tensor" for lp in gemms)
    assert all(lp.seconds >= pr.MIN_LAUNCH_S for lp in result["launches"])
    md = pr.markdown(result)
    assert "| GPT-2 124M | A100 SXM4 80GB | cuda | attention | forward |" in md and "step, ours (ms)" in md
    assert json.loads(json.dumps(pr.to_json(result)))["steps"][0]["speedup"] == pytest.approx(step["speedup"])


@pytest.mark.parametrize("backend", pr.BACKENDS)
def test_every_launch_is_in_the_kernel_report(backend):
    """The harness's kernel names (nvcc's) and the Triton configurations join the report's rows
    for every launch, on both arches: registers, shared memory and main-loop figures come from
    the compiled kernel, not a guess."""
    rows = pr.kernel_rows((backend,))
    for gpu in (A100, H100):
        launches = pr.predict_launches(pr.record_backend(GPT2.shapes, pr.OPS, backend, gpu, rows), rows, gpu, GPT2.name)
        missing = {lp.kernel for lp in launches if lp.notes}
        assert not missing, missing
        assert all(lp.registers and lp.ctas_per_sm >= 1 and lp.backend == backend for lp in launches)


def test_bank_conflicts_of_the_attention_kernels():
    """The harness runs two blocks of each launch at GPT-2's shapes and counts every ldmatrix and
    cp.async request: the attention kernels' are conflict-free (their tiles are swizzled)."""
    conflicts = pr.record_banks(GPT2.shapes, ops=("attention",))
    assert len(conflicts) == 3, conflicts
    for kernel, degrees in conflicts.items():
        assert set(degrees) == {"ldmatrix", "ldmatrix.trans", "cp.async"}, kernel
        assert all(d == 1.0 for d in degrees.values()), (kernel, degrees)


def test_command_writes_json_and_markdown(tmp_path, capsys):
    status = pr.main(["--model", "gpt2", "--gpu", "H100-SXM", "--op", "layernorm", "--backend", "cuda", "--launches",
                      "--json", str(tmp_path / "p.json"), "--markdown", str(tmp_path / "p.md")])
    out = capsys.readouterr().out
    assert status == 0 and "layer_norm_bwd_kernel" in out and "not measurements" in out
    data = json.loads((tmp_path / "p.json").read_text())
    assert {o["op"] for o in data["ops"]} == {"layernorm"} and data["steps"][0]["complete"] is False
    assert "| GPT-2 124M | H100 SXM5 | cuda | layernorm | backward |" in (tmp_path / "p.md").read_text()


def test_budgets_hold():
    """CI's gate: every launch, call and op of both models on A100 and H100 within its budget
    (tools/budgets.json), bank conflicts counted."""
    assert pr.main([]) == 0


def test_budget_gate_catches_a_worse_figure(calls, monkeypatch):
    """Budgets recorded from a run pass it; a launch with fewer CTAs per SM (worse waves), a slower
    op (lower speedup) and a call moving more bytes each fail, naming the figure that moved."""
    monkeypatch.setattr(pr, "record_step", lambda shapes, ops, sm_count=0, rows=None, arch="": calls)
    rows = fake_rows(calls)
    result = pr.predict(models=("gpt2",), gpus=pr.BUDGET_GPUS, rows=rows, banks=False, backends=("cuda",))
    recorded = pr.record_budgets(result, {}, "today")
    assert {s: bool(recorded[s]) for s in ("launches", "calls", "ops")} == dict.fromkeys(("launches", "calls", "ops"), True)
    assert pr.check_budgets(result, recorded) == []
    for launch in result["launches"]:
        if "attn_fwd" in launch.kernel:
            launch.wave_efficiency *= 0.5
    for op in result["ops"]:
        if op.op == "mlp":
            op.ours_s *= 2
    for call in result["calls"]:
        if call["call"] == "cuda_layer_norm_fwd":
            call["bytes_moved"] *= 2
    failures = pr.check_budgets(result, recorded)
    assert any("attn_fwd_kernel" in f and "wave_efficiency" in f and "< budget" in f for f in failures), failures
    assert any(" cuda mlp forward: speedup" in f for f in failures), failures
    assert any("cuda_layer_norm_fwd: bytes_ratio" in f and "> budget" in f for f in failures), failures
    assert all(f.split(": ")[0] in {**recorded["launches"], **recorded["ops"], **recorded["calls"]} for f in failures)
    unbudgeted = pr.check_budgets(result, {})
    assert unbudgeted and all("no budget" in f for f in unbudgeted)
