from kedro.pipeline import Node, Pipeline

from toptune.pipelines.data.nodes import prepare, tokenise


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                prepare,
                ["raw_data", "params:data"],
                ["primary_table", "label_map", "data_quality", "input_example"],
                name="prepare_table",
            ),
            Node(
                tokenise,
                ["primary_table", "label_map", "params:data", "params:model", "params:training"],
                ["tokenised", "tokenise_stats"],
                name="split_and_tokenise",
            ),
        ]
    )
