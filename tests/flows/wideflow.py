"""A single foreach of --width tasks, for the large-run benchmark datastore."""
from metaflow import FlowSpec, Parameter, step


class WideFlow(FlowSpec):
    width = Parameter("width", default=10, type=int, help="Number of foreach tasks")

    @step
    def start(self):
        self.items = list(range(self.width))
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.square = self.input * self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(inp.square for inp in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("total", self.total)


if __name__ == "__main__":
    WideFlow()
