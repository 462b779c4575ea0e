from kedro.pipeline import Node, Pipeline

from toptune.pipelines.export.nodes import log_model, merge_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(merge_model, ["adapter", "params:export"], ["merged_model", "export_metrics"], name="merge_adapter"),
            Node(log_model, ["merged_model", "params:export"], "pyfunc_model_info", name="log_pyfunc_model"),
        ]
    )
