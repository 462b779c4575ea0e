"""``make bench-sweep``: toptune's sweep on one prefix cache against the same trials run as HF Trainer + PEFT.

The bench model and recipe of ``make bench`` (28 blocks, batch 16, max_length 128, seed 42), 2 epochs per
trial. Three sides, one after another in one process, on the same splits:

    toptune          :func:`toptune.sweep.run_sweep` with the pruner off: one prefix cache built at the
                     deepest K of the space, every trial trained on it (a trial of fewer blocks runs
                     the blocks between frozen from the cached states)
    hf_trainer       the same trial configurations, in the same order, each a fresh ``from_pretrained``
                     + PEFT + ``Trainer`` (:func:`toptune.bench.hf.run_hf_trainer`), as a user's loop
                     over configurations runs them
    toptune_pruned   the sweep again from an empty cache and study, Optuna's median pruner on

``seconds`` is end to end: toptune's whole ``run_sweep`` (study, cache build, every trial's model and
epochs, the best trial's weights kept and loaded back); HF's every trial's ``setup_seconds`` +
``train_seconds``. A trial's ``value`` is its best epoch's validation accuracy (toptune keeps that epoch,
``training.metric_for_best``; HF's ``load_best_model_at_end`` would). The best trial of each side is
then scored on the test split, off the clock.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toptune.bench.config import BenchConfig, Setup, config_dict, device_name, prepare_setup
from toptune.bench.hf import run_hf_trainer
from toptune.bench.main import quiet_libraries
from toptune.bench.report import write_report
from toptune.bench.runs import warm_up
from toptune.bench.timing import timed
from toptune.config import DataConfig, RunConfig, SweepConfig
from toptune.model.tiny import TinyQwenSpec, ensure_tiny_qwen
from toptune.sweep import run_sweep
from toptune.sweep.space import apply
from toptune.train.recipe import predict

SWEEP_JSON = "bench_sweep.json"
SIDES = ("toptune", "hf_trainer", "toptune_pruned")
"""Every side of ``make bench-sweep``, in the order they run (``hf_trainer`` takes ``toptune``'s trials)."""


@dataclass
class SweepBenchConfig:
    """What ``make bench-sweep`` runs (flags of ``python -m toptune.integrations.bench_sweep`` override fields)."""

    bench: BenchConfig = field(default_factory=BenchConfig)
    """The model, data and shared recipe of ``make bench`` (its ``training.epochs`` is replaced by ``epochs``)."""
    trials: int = 4
    """Trials of each side."""
    epochs: int = 2
    """Epochs of each trial."""
    space: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "training.lr": {"low": 5e-4, "high": 5e-3, "log": True},
            "lora.r": {"choices": [4, 8, 16]},
            "model.trainable_layers": {"choices": [2, 3, 4]},
        }
    )
    """``sweep.space`` of the trials: K ≤ 4, so the one cache sits at block L − 4."""
    sides: tuple[str, ...] = SIDES
    """Which sides, in order (any of ``SIDES``; ``hf_trainer`` needs ``toptune`` before it)."""
    work_dir: str = "data/04_feature/bench_sweep"
    """The sweeps' prefix caches, Optuna storages and kept trials (emptied before each side)."""


def run_config(sc: SweepBenchConfig, setup: Setup, prune: bool) -> RunConfig:
    """The bench recipe as a sweep's parameters: validation accuracy picks the kept epoch and the best trial."""
    bc = sc.bench
    training = bc.train_cfg("cache", epochs=sc.epochs, metric_for_best="accuracy", cache_dir=f"{sc.work_dir}/cache")
    return RunConfig(
        data=DataConfig(),
        model=setup.model_cfg,
        lora=setup.lora,
        training=training,
        sweep=SweepConfig(trials=sc.trials, space=sc.space, metric="accuracy", study="bench", prune=prune),
    )


@contextlib.contextmanager
def untracked(number: int, params: dict):
    """A trial record that keeps nothing (a bench's sweep is tracked by its JSON, not per trial)."""
    yield lambda name, value, step: None


def fresh_sweep(cfg: RunConfig, setup: Setup, work_dir: str) -> dict:
    """``cfg``'s sweep on train and val from an empty cache and study in ``work_dir``: end-to-end ``seconds``,
    ``cache_builds``, every trial, the ``best``, and the best's accuracy on the test split (off the clock)."""
    work = Path(work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = {k: v for k, v in setup.data.items() if k != "test"}
    with timed(setup.device) as t:
        result = run_sweep(cfg, data, setup.id2label, f"sqlite:///{work / 'optuna.db'}", work / "kept", untracked)
    acc = None
    if result.classifier is not None:
        acc = predict(result.classifier, setup.data["test"], cfg.training.eval_batch_size).accuracy
    return {
        "seconds": t.seconds,
        "cache_builds": result.cache_builds,
        "trials": result.trials,
        "best": result.best,
        "best_test_accuracy": acc,
    }


def run_toptune(sc: SweepBenchConfig, setup: Setup, prune: bool) -> dict:
    """toptune's sweep from an empty cache and study (:func:`fresh_sweep`), with the count of pruned trials."""
    side = fresh_sweep(run_config(sc, setup, prune), setup, sc.work_dir)
    return side | {"pruned": sum(tr["state"] == "PRUNED" for tr in side["trials"])}


def run_hf(sc: SweepBenchConfig, setup: Setup, trials: list[dict]) -> dict:
    """Each of ``trials``' parameters as a fresh HF Trainer + PEFT run, one after another."""
    cfg, bc = run_config(sc, setup, False), sc.bench
    rows = []
    for trial in trials:
        run = apply(cfg, trial["params"])
        k = run.model.trainable_layers
        if not isinstance(k, int):
            raise ValueError(f"bench-sweep: the HF side takes K as a count of top blocks, not the list {k}")
        hbc = dataclasses.replace(bc, trainable_layers=k, training=run.training)
        r = run_hf_trainer(dataclasses.replace(setup, model_cfg=run.model, lora=run.lora), hbc, False)
        rows.append(
            {
                "number": trial["number"],
                "params": trial["params"],
                "value": max(r["val_accuracy"]),
                "state": "COMPLETE",
                "seconds": r["setup_seconds"] + r["train_seconds"],
                "val_accuracy": r["val_accuracy"],
                "test_accuracy": r["test_accuracy"],
            }
        )
    best = max(rows, key=lambda r: r["value"]) if rows else None  # the first of equal values, as Optuna's
    return {
        "seconds": sum(r["seconds"] for r in rows),
        "trials": rows,
        "best": best,
        "best_test_accuracy": best["test_accuracy"] if best else None,
    }


def summary(sides: dict[str, dict]) -> dict[str, float]:
    """HF's seconds over each toptune side's, and HF's best validation value minus each toptune side's best."""
    hf = sides.get("hf_trainer")
    out: dict[str, float] = {}
    for name in ("toptune", "toptune_pruned"):
        side = sides.get(name)
        if hf is None or side is None:
            continue
        out[f"hf_trainer_over_{name}"] = hf["seconds"] / side["seconds"]
        if hf["best"] is not None and side["best"] is not None:
            out[f"best_gap_hf_trainer_minus_{name}"] = hf["best"]["value"] - side["best"]["value"]
    return out


def run_bench(sc: SweepBenchConfig) -> dict:
    """``{"config", "device", "sides", "summary"}``: every side of ``sc.sides`` on the bench model."""
    unknown = [s for s in sc.sides if s not in SIDES]
    if unknown:
        raise ValueError(f"bench-sweep sides: unknown side {unknown[0]!r}; known: {', '.join(SIDES)}")
    if "hf_trainer" in sc.sides and "toptune" not in sc.sides[: sc.sides.index("hf_trainer")]:
        raise ValueError("bench-sweep sides: hf_trainer runs toptune's trials, so toptune must come before it")
    bc = dataclasses.replace(sc.bench, training=dataclasses.replace(sc.bench.training, epochs=sc.epochs))
    sc = dataclasses.replace(sc, bench=bc)
    spec = {"num_layers": bc.num_layers, **bc.spec}
    setup = prepare_setup(bc, str(ensure_tiny_qwen(bc.model_path(), TinyQwenSpec(**spec))))
    if bc.warm_up:
        warm_up(setup, bc, ("hf_trainer", "cache"))
    sides: dict[str, dict] = {}
    for name in sc.sides:
        if name == "hf_trainer":
            sides[name] = run_hf(sc, setup, sides["toptune"]["trials"])
        else:
            sides[name] = run_toptune(sc, setup, prune=name == "toptune_pruned")
    config = config_dict(bc, setup, spec) | {"trials": sc.trials, "space": sc.space, "sides": list(sc.sides)}
    return {"config": config, "device": device_name(setup.device), "sides": sides, "summary": summary(sides)}


def format_table(result: dict) -> str:
    """One line per trial of each side, then the summary."""
    lines = [f"bench-sweep on {result['device']}"]
    for name, side in result["sides"].items():
        lines.append(f"{name}: {side['seconds']:.1f} s, best test accuracy {side['best_test_accuracy']}")
        for t in side["trials"]:
            lines.append(f"  trial {t['number']} {t['state']:<8} value {t['value']} {t['seconds']:.1f} s {t['params']}")
    lines += [f"{k}: {v:.4g}" for k, v in result["summary"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> SweepBenchConfig:
    sc = SweepBenchConfig()
    p = argparse.ArgumentParser(prog="python -m toptune.integrations.bench_sweep", description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=sc.trials)
    p.add_argument("--epochs", type=int, default=sc.epochs)
    p.add_argument("--sample-rows", type=int, default=None, help="use only N rows of the bundled table")
    p.add_argument("--sides", default=",".join(sc.sides), help="comma-separated subset of " + ", ".join(SIDES))
    p.add_argument("--out-dir", default=sc.bench.out_dir)
    p.add_argument("--no-warm-up", action="store_true", help="skip the unmeasured warm-up pass")
    a = p.parse_args(argv)
    bench = dataclasses.replace(sc.bench, sample_rows=a.sample_rows, out_dir=a.out_dir, warm_up=not a.no_warm_up)
    sides = tuple(s for s in a.sides.split(",") if s)
    return dataclasses.replace(sc, bench=bench, trials=a.trials, epochs=a.epochs, sides=sides)


def main(argv: list[str] | None = None, sc: SweepBenchConfig | None = None) -> dict:
    """Run the bench (``sc``, else from ``argv``), write ``bench_sweep.json``, print the table."""
    quiet_libraries()
    sc = sc or parse_args(argv)
    result = run_bench(sc)
    write_report(result, sc.bench.out_dir, SWEEP_JSON, format_table(result))
    return result


if __name__ == "__main__":
    main()
