"""The parameters: one place for their defaults (the dataclasses; parameters.yml and the reference page
follow them), and strict parsing of what Kedro loads (``conf/`` with ``kedro run --params`` merged in)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node
from omegaconf import OmegaConf

from toptune.config import GROUPS, ConfigError, RunConfig, TrainingConfig, parse_params
from toptune.config.reference import reference
from toptune.integrations.guards import RUN_CONFIG, GuardHooks

ROOT = Path(__file__).resolve().parents[2]


def kedro_params(conf: Path, *dotlist: str) -> dict:
    """The parameters as ``kedro run --params a.b=c,…`` gets them: the CLI's dot-list through OmegaConf,
    merged over ``conf/base`` (and ``conf/local``) by Kedro's config loader."""
    runtime = OmegaConf.to_container(OmegaConf.from_dotlist(list(dotlist)))
    loader = OmegaConfigLoader(
        str(conf),
        base_env="base",
        default_run_env="local",
        runtime_params=runtime,
        merge_strategy={"parameters": "soft"},
    )
    return loader["parameters"]


def test_parameters_yml_holds_every_default():
    params = kedro_params(ROOT / "conf")
    assert sorted(params) == sorted(GROUPS)
    for group, cls in GROUPS.items():
        assert sorted(params[group]) == sorted(f for f in cls.__dataclass_fields__), group
    assert parse_params(params) == RunConfig()  # every value equals the dataclass's default


def test_reference_page_is_written_from_the_dataclasses():
    page = (ROOT / "docs/reference/parameters.md").read_text()
    assert page == reference(), "docs/reference/parameters.md is stale: python -m toptune.config --reference > it"


@pytest.mark.parametrize(
    "override,message",
    [
        ("training.lr=abc", "training.lr='abc' must be a number, not a string"),
        ("training.epochs=1.5", "training.epochs=1.5 must be an integer, not a number"),
        ("training.progress=1", "training.progress=1 must be true or false, not an integer"),
        (
            "model.trainable_layers=true",
            "model.trainable_layers=True must be an integer or a list of integers, not a bool",
        ),
        ("training.lrr=0.1", "unknown parameter training.lrr (did you mean training.lr?); known: batch_size,"),
        ("trainig.epochs=5", "unknown parameter group 'trainig' (did you mean 'training'?)"),
        (
            "training.prefix_mode=fast",
            "training.prefix_mode='fast' must be one of 'auto', 'no_grad', 'autograd', 'cache'",
        ),
        ("model.dtype=fp16", "model.dtype='fp16' must be one of 'auto', 'float32', 'bfloat16'"),
        ("predict.device=tpu", "predict.device='tpu' must be one of 'auto', 'cpu', 'cuda'"),
        ("data.bad_rows=skip", "data.bad_rows='skip' must be 'drop' or 'error'"),
        ("inspect.split=dev", "inspect.split='dev' must be one of 'train', 'val', 'test'"),
        ("training.lr=0", "training.lr=0.0 must be > 0"),
        ("lora.r=0", "lora.r=0 must be >= 1"),
        ("training.warmup_ratio=1", "training.warmup_ratio=1.0 must be in [0, 1)"),
        ("data.test_fraction=0.5", "data.test_fraction=0.5 must be in (0, 0.5)"),
        ("training.checkpoint_every=-1", "training.checkpoint_every=-1 must be >= 0 or null"),
        ("training.resume=' '", "training.resume=' ' must not be empty"),
    ],
)
def test_a_bad_override_fails_in_one_line_naming_it(override, message):
    with pytest.raises(ConfigError) as e:
        parse_params(kedro_params(ROOT / "conf", override))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_what_kedro_loads_is_accepted_as_today(tmp_path):
    cfg = parse_params(
        kedro_params(
            ROOT / "conf",
            "training.lr=1e-3",
            "export.merge_atol=1",
            "training.resume=never",
            "model.trainable_layers=[3,1,3]",
            "data.sample_rows=null",
        )
    )
    assert cfg.training.lr == 0.001 and cfg.export.merge_atol == 1.0 and isinstance(cfg.export.merge_atol, float)
    assert cfg.training.resume == "never" and cfg.model.trainable_layers == [1, 3] and cfg.data.sample_rows is None
    # A quoted number in a YAML file is a string, and a string is not a number (no coercion).
    (tmp_path / "base").mkdir()
    (tmp_path / "local").mkdir()
    (tmp_path / "base" / "parameters.yml").write_text('training:\n  lr: "3e-3"\n')
    with pytest.raises(ConfigError, match="training.lr='3e-3' must be a number, not a string"):
        parse_params(kedro_params(tmp_path))
    (tmp_path / "base" / "parameters.yml").write_text("training:\n  lr: 3e-3\n")  # unquoted: OmegaConf reads a float
    assert parse_params(kedro_params(tmp_path)).training.lr == 0.003


def test_nodes_get_the_typed_configs_of_their_params_inputs():
    cfg = parse_params(kedro_params(ROOT / "conf", "training.epochs=2"))
    catalog = DataCatalog({RUN_CONFIG: MemoryDataset(cfg, copy_mode="assign")})
    node = Node(
        lambda table, training, model: None, ["primary_table", "params:training", "params:model"], None, name="typed"
    )
    inputs = GuardHooks().before_node_run(node, catalog)
    assert inputs == {"params:training": cfg.training, "params:model": cfg.model}
    assert isinstance(inputs["params:training"], TrainingConfig) and inputs["params:training"].epochs == 2
    assert GuardHooks().before_node_run(Node(lambda x: x, "a", "b", name="untyped"), catalog) is None
