from kedro.pipeline import Node, Pipeline

from toptune.pipelines.report.nodes import plot_curves


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([Node(plot_curves, "train_summary", "curves_plot", name="plot_curves")])
