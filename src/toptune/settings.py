"""Kedro project settings."""

from toptune.integrations.ranks import RankHooks, leave_log_file_to_rank_zero
from toptune.train import distributed

leave_log_file_to_rank_zero()  # under torchrun, before the imports below log anything

from toptune.integrations.guards import GuardHooks, ToptuneContext  # noqa: E402
from toptune.integrations.hooks import ToptuneHooks  # noqa: E402
from toptune.integrations.resume import ResumableMlflowHook  # noqa: E402
from toptune.integrations.tracking import TrackingServerHooks  # noqa: E402

# kedro-mlflow's hook is registered here (extended to continue a resumed run's MLflow run) instead of
# through its plugin entry point, and only on rank 0: under torchrun one process talks to MLflow (the
# tracking server's checks included); the other ranks keep their outputs in memory (RankHooks).
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")  # its metadata name, and the PyPI spelling
HOOKS = (
    RankHooks(),
    ToptuneHooks(),
    GuardHooks(),
    *((TrackingServerHooks(), ResumableMlflowHook()) if distributed.is_main() else ()),
)

CONTEXT_CLASS = ToptuneContext  # parameters reach the nodes typed by GuardHooks, not by Kedro itself

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # "soft": conf/local/parameters.yml overrides only the keys it names (data.text_template, say),
    # every other parameter of the group keeps its base value.
    "merge_strategy": {"parameters": "soft"},
}
