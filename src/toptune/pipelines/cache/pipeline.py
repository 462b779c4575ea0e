from kedro.pipeline import Node, Pipeline

from toptune.pipelines.cache.nodes import build_prefix_cache


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                build_prefix_cache,
                ["tokenised", "label_map", "params:model", "params:lora", "params:training"],
                ["prefix_cache", "prefix_cache_metrics"],
                name="build_prefix_cache",
            ),
        ]
    )
