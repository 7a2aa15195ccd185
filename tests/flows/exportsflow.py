"""What the mount's exports, cards and code views need beyond the standard datastore: a matplotlib figure, a dict
that value.json cannot render (two keys become the same JSON key), two cards of different types (one with an id),
and a code package when run with METAFLOW_FEAT_ALWAYS_UPLOAD_CODE_PACKAGE=1."""
from metaflow import FlowSpec, card, current, step


class ExportsFlow(FlowSpec):
    @card(type="blank", id="summary")
    @card
    @step
    def start(self):
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
        from metaflow.cards import Markdown

        figure = Figure(figsize=(2, 1.5), dpi=40)
        figure.add_subplot().plot([0, 1, 2], [0, 1, 4])
        self.figure = figure
        self.clashing_keys = {1: "int key", "1": "str key"}
        current.card["summary"].append(Markdown("# Summary of %s" % current.pathspec))
        self.next(self.end)

    @step
    def end(self):
        print("exports done")


if __name__ == "__main__":
    ExportsFlow()
