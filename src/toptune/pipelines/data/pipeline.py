from kedro.pipeline import Node, Pipeline

from toptune.pipelines.data.nodes import prepare


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                prepare,
                ["raw_data", "params:data", "params:model", "params:training"],
                ["tokenised", "label_map", "data_quality", "input_example", "tokenise_stats"],
                name="prepare_data",
            ),
        ]
    )
