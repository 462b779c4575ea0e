from kedro.pipeline import Node, Pipeline

from toptune.pipelines.inspect.nodes import inspect_memory


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                inspect_memory,
                ["tokenised", "label_map", "params:model", "params:lora", "params:training", "params:inspect"],
                ["memory_report", "memory_metrics", "memory_by_block_plot", "model_blocks_plot"],
                name="inspect_memory",
            ),
        ]
    )
