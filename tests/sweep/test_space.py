"""``sweep.space``: checked when parsed, drawn per trial by Optuna, applied to the typed configs as parsing
would, and the deepest K it can draw (where the sweep's one cache stores its states)."""

from __future__ import annotations

import optuna
import pytest

from toptune.config import ConfigError, parse_params
from toptune.sweep import apply, deepest_block, suggest

SPACE = {
    "training.lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "training.batch_size": {"low": 8, "high": 32},
    "lora.r": {"choices": [4, 8]},
    "model.trainable_layers": {"choices": [1, 3]},
}


def test_a_trial_draws_each_kind_of_dimension_within_its_range():
    cfg = parse_params({"sweep": {"space": SPACE}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = suggest(study.ask(), cfg.sweep.space)
        assert 1e-4 <= values["training.lr"] <= 1e-2 and isinstance(values["training.lr"], float)
        assert 8 <= values["training.batch_size"] <= 32 and isinstance(values["training.batch_size"], int)
        assert values["lora.r"] in (4, 8) and values["model.trainable_layers"] in (1, 3)


def test_values_apply_to_their_groups_and_are_checked_as_parsing_checks_them():
    cfg = parse_params({"training": {"epochs": 2}})
    run = apply(cfg, {"training.lr": 0.02, "lora.r": 16, "model.trainable_layers": 1})
    assert (run.training.lr, run.lora.r, run.model.trainable_layers) == (0.02, 16, 1)
    assert run.training.epochs == 2 and cfg.training.lr != 0.02  # the rest kept, the base untouched
    with pytest.raises(ConfigError, match="training.lr=-1.0 must be > 0"):
        apply(cfg, {"training.lr": -1.0})


def test_the_cache_block_is_the_deepest_k_the_space_can_draw():
    cfg = parse_params({"model": {"trainable_layers": 2}})
    assert deepest_block({}, cfg, 8) == 6  # K fixed at 2
    assert deepest_block({"model.trainable_layers": {"choices": [1, 3]}}, cfg, 8) == 5
    assert deepest_block({"model.trainable_layers": {"low": 1, "high": 4}}, cfg, 8) == 4
    assert deepest_block({"model.trainable_layers": {"choices": [[6, 7], [3, 7]]}}, cfg, 8) == 3


@pytest.mark.parametrize(
    "space,message",
    [
        ({"training.lrr": {"low": 1, "high": 2}}, "sweep.space names 'training.lrr', which is not a parameter of"),
        ({"data.val_fraction": {"low": 0.1, "high": 0.2}}, "sweep.space names 'data.val_fraction'"),
        ({"training.lr": {"low": 1e-3}}, "sweep.space.training.lr must be {low, high, log} or {choices: [...]}"),
        ({"training.lr": {"low": 1e-2, "high": 1e-3}}, "sweep.space.training.lr: low=0.01 must be a number below high"),
        ({"training.lr": {"low": 0, "high": 1e-3, "log": True}}, "a log scale needs low > 0"),
        ({"lora.r": {"choices": []}}, "sweep.space.lora.r.choices must be a non-empty list"),
    ],
    ids=["unknown-key", "not-swept-group", "no-high", "low-above-high", "log-at-zero", "no-choices"],
)
def test_a_bad_space_is_one_line_naming_it(space, message):
    with pytest.raises(ConfigError) as e:
        parse_params({"sweep": {"space": space}})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_sweep_metric_the_kind_lacks_is_refused():
    with pytest.raises(ConfigError, match="sweep.metric='rmse' is not a single_label_classification metric"):
        parse_params({"sweep": {"metric": "rmse"}})


def test_a_grid_sweep_draws_every_combination_once_and_refuses_a_range():
    from toptune.sweep.study import sampler

    space = {"model.trainable_layers": {"choices": [1, 2, 4]}, "lora.r": {"choices": [4, 8]}}
    cfg = parse_params({"sweep": {"space": space, "sampler": "grid"}})
    study = optuna.create_study(sampler=sampler(cfg.sweep, 0))
    drawn = []
    study.optimize(lambda trial: drawn.append(tuple(suggest(trial, cfg.sweep.space).values())) or 0.5, n_trials=20)
    assert sorted(drawn) == [(k, r) for k in (1, 2, 4) for r in (4, 8)]  # the grid once, then the study stops
    with pytest.raises(
        ConfigError, match="sweep.sampler grid needs {choices: \\[...\\]} for every dimension; training"
    ):
        parse_params({"sweep": {"space": {"training.lr": {"low": 1e-4, "high": 1e-3}}, "sampler": "grid"}})
