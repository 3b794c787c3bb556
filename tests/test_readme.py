"""README.md's performance section is generated (tools/readme.py): it must be up to date with the
predictions and budgets, and once a GPU run is committed under benchmarks/results/, it shows that
run's measurements, naming the GPU and the date."""
import json

from tools import readme


def test_performance_section_is_up_to_date():
    assert readme.main(["--check"]) == 0


def test_a_committed_gpu_run_replaces_the_predictions(tmp_path, monkeypatch):
    results = tmp_path / "results"
    run = results / "h200-2026-12-02" / "bench"
    run.mkdir(parents=True)
    smoke = results / "cpu-2026-12-03" / "bench"
    smoke.mkdir(parents=True)
    row = {"op": "gelu_mlp", "shape": "M=12288 C=768 H=3072", "mode": "fwd+bwd"}
    run_data = {"meta": {"gpu": "NVIDIA H200", "date": "2026-12-02T10:00:00+00:00", "smoke": False, "quick": True},
                "results": [{**row, "provider": "eager", "ms": 2.0},
                            {**row, "provider": "cuda", "ms": 1.0, "predicted_ms": 0.8},
                            {**row, "provider": "triton", "ms": 1.5}]}
    (run / "results.json").write_text(json.dumps(run_data))
    (smoke / "results.json").write_text(json.dumps({**run_data, "meta": {**run_data["meta"], "smoke": True,
                                                                         "date": "2026-12-03"}}))
    monkeypatch.setattr(readme, "RESULTS", results)
    monkeypatch.setattr(readme, "ROOT", tmp_path)
    text = readme.render()
    assert "## Performance: measured on NVIDIA H200, 2026-12-02" in text  # the smoke run is not a GPU run
    assert "`results/h200-2026-12-02`" in text
    assert "| gelu_mlp | M=12288 C=768 H=3072 | 2 | 1 | 1.5 | 2.00x | 0.8 | 1.25 |" in text
    assert "predictions, not measurements" not in text
