from kedro.pipeline import Node, Pipeline

from toptune.pipelines.evaluate.nodes import evaluate


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                evaluate,
                ["classifier", "tokenised", "params:training"],
                ["metrics", "test_metrics", "classification_report", "test_predictions", "test_plots"],
                name="evaluate_test",
            ),
        ]
    )
