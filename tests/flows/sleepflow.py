"""start -> sleeper -> end. With a long --seconds the builder kills the run while `sleeper` runs, leaving an
unfinished run on disk forever."""
import time

from metaflow import FlowSpec, Parameter, step


class SleepFlow(FlowSpec):
    seconds = Parameter("seconds", default=0, type=int, help="How long the sleeper step sleeps")

    @step
    def start(self):
        self.next(self.sleeper)

    @step
    def sleeper(self):
        print("sleeping %d s" % self.seconds, flush=True)
        time.sleep(self.seconds)
        self.slept = self.seconds
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SleepFlow()
