"""The benchmarks of each op (`python -m benchmarks.bench_<op>`), their shared measuring code
(common.py) and roofline figures (roofline.py); `python -m tools bench` runs them all."""
