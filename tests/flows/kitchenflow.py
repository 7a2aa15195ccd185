"""Control-flow shapes in one run: static split/join, @retry with a failing first attempt, nested foreach,
@catch, @card, IncludeFile, parameters, and non-ASCII stdout/stderr."""
import sys

from metaflow import FlowSpec, IncludeFile, Parameter, card, catch, current, retry, step


class KitchenFlow(FlowSpec):
    alpha = Parameter("alpha", default=0.5, help="A float parameter")
    label = Parameter("label", default="kitchen", help="A string parameter")
    table = IncludeFile("table", required=True, help="A small CSV file with non-ASCII text")

    @card
    @step
    def start(self):
        print("start stdout: é ✓ 日本 😀")
        print("start stderr: é ✓ 日本 😀", file=sys.stderr)
        self.rows = self.table.splitlines()
        self.next(self.branch_a, self.branch_b)

    @step
    def branch_a(self):
        self.a = 1
        self.x = "from a"
        self.next(self.join_ab)

    @retry(times=1)
    @step
    def branch_b(self):
        print("branch_b attempt %d" % current.retry_count)
        self.b = 2
        self.x = "from b"
        if current.retry_count == 0:
            raise ValueError("branch_b fails on its first attempt")
        self.next(self.join_ab)

    @step
    def join_ab(self, inputs):
        self.xs = sorted(inp.x for inp in inputs)
        self.merge_artifacts(inputs, exclude=["x"])
        self.next(self.fan_out)

    @step
    def fan_out(self):
        self.letters = ["a", "b"]
        self.next(self.foreach_outer, foreach="letters")

    @step
    def foreach_outer(self):
        self.letter = self.input
        self.nums = [1, 2]
        self.next(self.foreach_inner, foreach="nums")

    @catch(var="caught")
    @step
    def foreach_inner(self):
        self.pair = "%s%d" % (self.letter, self.input)
        print("inner", self.pair)
        if self.pair == "b2":
            raise RuntimeError("foreach_inner b2 fails and @catch records it")
        self.next(self.join_inner)

    @step
    def join_inner(self, inputs):
        self.pairs = [inp.pair for inp in inputs]
        self.caught_messages = [str(inp.caught) for inp in inputs if inp.caught is not None]
        self.merge_artifacts(inputs, exclude=["pair", "caught"])
        self.next(self.join_outer)

    @step
    def join_outer(self, inputs):
        self.all_pairs = sorted(p for inp in inputs for p in inp.pairs)
        self.merge_artifacts(inputs, exclude=["letter", "pairs", "caught_messages"])
        self.next(self.end)

    @step
    def end(self):
        print("all pairs:", ", ".join(self.all_pairs))
        # The last log line has no trailing newline on purpose.
        sys.stdout.write("end without newline ✓")


if __name__ == "__main__":
    KitchenFlow()
