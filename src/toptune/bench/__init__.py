"""Benchmarks: ``make bench`` (prefix modes against HF Trainer + PEFT; :mod:`toptune.bench.main`) and
``make bench-scale`` (the cached path as rows grow; :mod:`toptune.bench.scale`).

Rooms: ``config`` (what a bench runs, the shared setup) · ``timing`` (the clock every run is timed by)
· ``runs`` (toptune's runs and the floor) · ``hf`` (the HF Trainer + PEFT baseline) · ``gpu`` (the
Qwen3-4B-shaped bench on CUDA) · ``report`` (ratios, table, chart) · ``scale`` · ``rss`` (the host
memory sampler). Their MLflow recording lives in :mod:`toptune.integrations.bench` and
:mod:`toptune.integrations.bench_scale` (the library imports no MLflow)."""
