"""``make bench-probe``: does the probe's recommended K train as well as the best K of a sweep over K?

On the pretrained ``qwen2`` checkpoint (:mod:`toptune.bench.pretrained`, 30 blocks) and the bundled reviews:

1. the probe (:func:`toptune.probe.run.run_probe`): a logistic regression per block on the frozen model's
   pooled outputs, fitted on train, scored on validation, and the K it recommends;
2. a grid sweep over ``model.trainable_layers`` (:func:`toptune.bench.sweep.fresh_sweep`, ``sweep.sampler: grid``,
   pruner off) on one prefix cache at the deepest K, the recommended K among the choices; each trial's
   ``value`` is its best epoch's validation accuracy;
3. ``gap``: the best trial's value minus the recommended K's (the question: is it ≤ 0.01?).

Writes ``data/08_reporting/bench_probe.json``; the MLflow logging is in :mod:`toptune.integrations.bench_probe`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from toptune.bench.config import BenchConfig, bench_training, device_name, prepare_setup
from toptune.bench.main import quiet_libraries
from toptune.bench.pretrained import PRETRAINED_DIR, ensure_pretrained_qwen2
from toptune.bench.report import write_report
from toptune.bench.sweep import fresh_sweep
from toptune.config import DataConfig, LoraSettings, ProbeConfig, RunConfig, SweepConfig
from toptune.probe.run import run_probe

PROBE_JSON = "bench_probe.json"


@dataclass
class ProbeBenchConfig:
    """What ``make bench-probe`` runs (flags of ``python -m toptune.integrations.bench_probe`` override fields)."""

    model_dir: str = PRETRAINED_DIR
    """The pretrained checkpoint (written by ``make pretrained`` when missing)."""
    data_path: str = "data/01_raw/reviews.csv"
    """The bundled reviews table."""
    sample_rows: int | None = 3000
    """Rows of the bundled table (split 80/10/10): 3,000 keep the K = 8 trial to a few minutes on 2 cores."""
    ks: tuple[int, ...] = (1, 2, 4, 8)
    """The sweep's ``model.trainable_layers`` choices; the probe's recommendation is added when missing."""
    epochs: int = 2
    """Epochs of each trial."""
    lr: float = 1e-3
    """Every trial's learning rate (LoRA r 8, alpha 16: the product's defaults)."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """The probe's parameters (the product's defaults)."""
    work_dir: str = "data/04_feature/bench_probe"
    """The sweep's prefix cache, Optuna storage and kept trial (emptied first)."""
    out_dir: str = "data/08_reporting"
    """Where ``bench_probe.json`` goes."""


def run_bench(pc: ProbeBenchConfig) -> dict:
    """``{"config", "device", "probe", "sweep", "recommended", "best", "gap"}``."""
    model_dir = str(ensure_pretrained_qwen2(pc.model_dir))
    training = dataclasses.replace(
        bench_training(),
        epochs=pc.epochs,
        lr=pc.lr,
        metric_for_best="accuracy",
        cache_dir=f"{pc.work_dir}/cache",
        prefix_mode="cache",
    )
    bc = BenchConfig(data_path=pc.data_path, sample_rows=pc.sample_rows, training=training, model_dir=model_dir)
    setup = prepare_setup(bc, model_dir)
    problem = DataConfig().problem_type
    probe = run_probe(setup.model_cfg, training, pc.probe, setup.data, setup.id2label, problem)
    k = int(probe["recommended_trainable_layers"])
    ks = sorted(set(pc.ks) | {k})
    space = {"model.trainable_layers": {"choices": ks}}
    cfg = RunConfig(
        data=DataConfig(),
        model=setup.model_cfg,
        lora=LoraSettings(),
        training=training,
        sweep=SweepConfig(trials=len(ks), space=space, metric="accuracy", study="probe", prune=False, sampler="grid"),
    )
    sweep = fresh_sweep(cfg, setup, pc.work_dir)
    by_k = {t["params"]["model.trainable_layers"]: t for t in sweep["trials"]}
    best = sweep.pop("best")
    return {
        "config": {
            "model": model_dir,
            "examples": {s: len(v) for s, v in setup.data.items()},
            "ks": ks,
            "epochs": pc.epochs,
            "lr": pc.lr,
            "probe": dataclasses.asdict(pc.probe),
        },
        "device": device_name(setup.device),
        "probe": probe,
        "sweep": sweep,
        "recommended": {"trainable_layers": k, "value": by_k[k]["value"]},
        "best": {"trainable_layers": best["params"]["model.trainable_layers"], "value": best["value"]}
        if best
        else None,
        "gap": best["value"] - by_k[k]["value"] if best else None,
    }


def format_table(result: dict) -> str:
    """The probe's curve by block, then the sweep's value by K, the recommendation and the gap."""
    lines = [f"bench-probe on {result['device']}: {result['config']['model']}"]
    lines += [f"  block {r['block']:>2} val {r['metric']} {r['value']:.4f}" for r in result["probe"]["layers"]]
    lines.append(f"probe: recommended K = {result['recommended']['trainable_layers']} ({result['probe']['rule']})")
    for t in sorted(result["sweep"]["trials"], key=lambda t: t["params"]["model.trainable_layers"]):
        lines.append(f"  K={t['params']['model.trainable_layers']:>2} val accuracy {t['value']} {t['seconds']:.1f} s")
    lines.append(f"best K = {(result['best'] or {}).get('trainable_layers')}, gap best − recommended = {result['gap']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> ProbeBenchConfig:
    pc = ProbeBenchConfig()
    p = argparse.ArgumentParser(prog="python -m toptune.integrations.bench_probe", description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", default=pc.model_dir)
    p.add_argument("--sample-rows", type=int, default=pc.sample_rows, help="rows of the bundled table; 0 = all")
    p.add_argument("--ks", default=",".join(map(str, pc.ks)), help="the sweep's K choices, comma-separated")
    p.add_argument("--epochs", type=int, default=pc.epochs)
    p.add_argument("--lr", type=float, default=pc.lr)
    p.add_argument("--out-dir", default=pc.out_dir)
    a = p.parse_args(argv)
    ks = tuple(int(k) for k in a.ks.split(",") if k)
    return dataclasses.replace(
        pc, model_dir=a.model_dir, sample_rows=a.sample_rows or None, ks=ks, epochs=a.epochs, lr=a.lr, out_dir=a.out_dir
    )


def main(argv: list[str] | None = None, pc: ProbeBenchConfig | None = None) -> dict:
    """Run the bench (``pc``, else from ``argv``), write ``bench_probe.json``, print the table."""
    quiet_libraries()
    pc = pc or parse_args(argv)
    result = run_bench(pc)
    write_report(result, pc.out_dir, PROBE_JSON, format_table(result))
    return result


if __name__ == "__main__":
    main()
