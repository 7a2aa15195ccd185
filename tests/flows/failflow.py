"""A linear flow whose middle step raises unless MFFS_FAILFLOW_PASS=1: used for a failed run, its resume, and a
passing run with a code package."""
import os

from metaflow import FlowSpec, step


class FailFlow(FlowSpec):
    @step
    def start(self):
        self.greeting = "hello"
        self.next(self.middle)

    @step
    def middle(self):
        print("middle running")
        if os.environ.get("MFFS_FAILFLOW_PASS") != "1":
            raise KeyError("middle fails unless MFFS_FAILFLOW_PASS=1")
        self.result = 42
        self.next(self.end)

    @step
    def end(self):
        print("result", self.result)


if __name__ == "__main__":
    FailFlow()
