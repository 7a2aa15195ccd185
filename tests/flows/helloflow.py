"""The smallest flow: used for a run by another user and for the many-runs benchmark datastore."""
from metaflow import FlowSpec, Parameter, step


class HelloFlow(FlowSpec):
    lr = Parameter("lr", default=0.1, type=float, help="A float that differs between benchmark runs")

    @step
    def start(self):
        self.score = round(1.0 - self.lr, 6)
        self.next(self.end)

    @step
    def end(self):
        print("score", self.score)


if __name__ == "__main__":
    HelloFlow()
