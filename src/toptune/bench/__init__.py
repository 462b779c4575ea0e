"""Benchmarks: ``make bench`` (prefix modes against HF Trainer + PEFT; :mod:`toptune.bench.main`) and
``make bench-scale`` (the cached path as rows grow; :mod:`toptune.bench.scale`)."""
