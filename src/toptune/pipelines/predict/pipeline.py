from kedro.pipeline import Node, Pipeline

from toptune.pipelines.predict.nodes import predict


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                predict,
                ["predict_input", "merged_model", "params:predict"],
                ["predictions", "predict_stats"],
                name="predict",
            ),
        ]
    )
