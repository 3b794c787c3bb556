"""`python -m nanogpt_kernels demo` end to end at toy sizes: on a text file and on nanoGPT's
prepared train.bin/val.bin; the embedded default corpus; the per-op backend choice."""
import csv
import pickle

import pytest
import torch

from nanogpt_kernels import demo
from nanogpt_kernels.__main__ import main

TOY = ["--steps", "4", "--fused-steps", "2", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
       "--block-size", "16", "--batch-size", "2", "--sample-tokens", "12", "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_demo_on_a_text_file(backend, tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 40)
    out = tmp_path / "out"
    assert main(["demo", *TOY, "--backend", backend, "--data", str(text), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"fused backend: {backend}" in printed and "not used" not in printed
    assert "vocab 29" in printed  # a pangram: 26 letters, space, '.', newline
    assert "eager loss" in printed and "fused loss" in printed and "speedup" in printed
    assert "sample from the fused model" in printed
    rows = list(csv.DictReader(open(out / "losses.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert all(r["eager_loss"] for r in rows) and [bool(r["fused_loss"]) for r in rows] == [True, True, False, False]
    # Same init, same batches: the first steps' losses agree to float32 rounding.
    for r in rows[:2]:
        assert float(r["fused_loss"]) == pytest.approx(float(r["eager_loss"]), rel=1e-4)
    assert (out / "losses.png").exists() or "plot skipped: matplotlib is not installed" in printed


def test_demo_on_nanogpt_bin_files(tmp_path, capsys):
    import numpy as np  # installed by ./dev.sh
    chars = sorted(set("hello world\n"))
    ids = np.array([chars.index(c) for c in "hello world\n" * 50], dtype=np.uint16)
    ids[:500].tofile(tmp_path / "train.bin")
    ids[500:].tofile(tmp_path / "val.bin")
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                     "stoi": {c: i for i, c in enumerate(chars)}}, f)
    assert main(["demo", *TOY, "--steps", "2", "--fused-steps", "1", "--backend", "triton", "--data", str(tmp_path),
                 "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert f"500 train tokens, vocab {len(chars)} (meta.pkl)" in printed
    sample = printed.split("sample from the fused model")[1]
    assert set(sample.split("-" * 60)[1].strip()) <= set(chars)


def test_default_corpus_and_backend_choice():
    text = demo.stdlib_corpus(max_chars=50_000)
    assert len(text) == 50_000 and "def " in text and set(text) <= set(map(chr, range(32, 127))) | {"\n"}
    data = demo.load_data(None)
    assert data.vocab_size <= 96 and len(data.train) >= 9 * len(data.val)
    x, y = data.batch("train", 3, 8, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert x.shape == (3, 8) and torch.equal(x[:, 1:], y[:, :-1])
    chosen, why = demo.choose_backend(torch.device("cpu"), 16, "triton")
    assert chosen == {"layernorm": "triton", "attention": "triton", "mlp": "triton"} and not why
    chosen, why = demo.choose_backend(torch.device("cpu"), 8, "triton")  # head_dim 8: no kernel
    assert chosen["attention"] == "eager" and any("head_dim" in w for w in why)
