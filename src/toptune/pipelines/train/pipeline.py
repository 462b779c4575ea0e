from kedro.pipeline import Node, Pipeline

from toptune.pipelines.train.nodes import bundle_model, train_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_model,
                [
                    "tokenised",
                    "label_map",
                    "params:data",
                    "params:model",
                    "params:lora",
                    "params:training",
                    "prefix_cache",
                ],
                ["classifier", "train_history", "val_history", "model_facts", "train_summary"],
                name="train_model",
            ),
            Node(
                bundle_model,
                ["classifier", "input_example", "params:data", "params:model", "params:training"],
                "adapter",
                name="bundle_model",
            ),
        ]
    )
