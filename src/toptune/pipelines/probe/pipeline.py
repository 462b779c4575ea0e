from kedro.pipeline import Node, Pipeline

from toptune.pipelines.data.pipeline import create_pipeline as data_pipeline
from toptune.pipelines.probe.nodes import probe_by_block


def create_pipeline(**kwargs) -> Pipeline:
    """The data step, then the probe: the probe reads the token store this run's ``data.*`` parameters make
    (composed here, not in ``pipeline_registry``: ``kedro run --pipeline probe`` discovers only ``probe``)."""
    return data_pipeline() + Pipeline(
        [
            Node(
                probe_by_block,
                ["tokenised", "label_map", "params:data", "params:model", "params:training", "params:probe"],
                ["probe_report", "probe_metrics", "probe_plot"],
                name="probe_by_block",
            ),
        ]
    )
