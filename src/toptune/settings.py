"""Kedro project settings."""

from toptune.hooks import ToptuneHooks
from toptune.pipelines.guards import GuardHooks
from toptune.pipelines.tracking import TrackingServerHooks

HOOKS = (ToptuneHooks(), GuardHooks(), TrackingServerHooks())

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # "soft": conf/local/parameters.yml overrides only the keys it names (data.text_template, say),
    # every other parameter of the group keeps its base value.
    "merge_strategy": {"parameters": "soft"},
}
