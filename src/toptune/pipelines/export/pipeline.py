from kedro.pipeline import Node, Pipeline

from toptune.pipelines.export.nodes import log_model, merge_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(merge_model, ["adapter", "label_map", "tokenised", "params:data", "params:model", "params:training",
                           "params:export"], ["merged_model", "export_metrics"], name="merge_adapter"),
        Node(log_model, ["merged_model", "raw_data", "params:export"], "pyfunc_model_info", name="log_pyfunc_model"),
    ])
