from kedro.pipeline import Node, Pipeline

from toptune.pipelines.data.pipeline import create_pipeline as data_pipeline
from toptune.pipelines.evaluate.pipeline import create_pipeline as evaluate_pipeline
from toptune.pipelines.sweep.nodes import bundle_best, sweep_trials


def create_pipeline(**kwargs) -> Pipeline:
    """The data step, the trials on one prefix cache, then the best trial's bundle, tested once on the test
    split (composed here: ``kedro run --pipeline sweep`` discovers only ``sweep``)."""
    return (
        data_pipeline()
        + Pipeline(
            [
                Node(
                    sweep_trials,
                    [
                        "tokenised",
                        "label_map",
                        "params:data",
                        "params:model",
                        "params:lora",
                        "params:training",
                        "params:sweep",
                    ],
                    ["classifier", "sweep_report", "sweep_plots"],
                    name="sweep_trials",
                ),
                Node(
                    bundle_best,
                    ["classifier", "input_example", "params:data", "params:model", "params:training", "sweep_report"],
                    "adapter",
                    name="bundle_best",
                ),
            ]
        )
        + evaluate_pipeline()
    )
