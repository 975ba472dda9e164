"""Issue 26: no command line ends in a traceback. benchmarks/fuzz.py draws command lines from each script's own
parser (every option, values at and beyond the edges of their ranges, NaN/inf, non-numbers, bad paths) on the
offline digits set and generated files; the property: exit 0 with a RESULT line, or exactly one `error:` line with
no traceback and no output file left behind, and no training step before an exit 2. CI runs a bounded, seeded
number of examples per script (FUZZ_EXAMPLES, default 5); `python benchmarks/fuzz.py --examples 300` is the long
run (benchmarks/results/fuzz.md). Below it, the regression tests for what the fuzzer found, each the minimal
command line."""
import importlib
import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import fuzz  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return fuzz.write_fixtures(str(tmp_path_factory.mktemp("fuzz")))


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("script", fuzz.SCRIPTS)
def test_no_command_line_ends_in_a_traceback(script, fixtures, tmp_path):
    mod = importlib.import_module(script)

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzz.strategies(mod, fixtures))
    def holds(argv):
        r, bad = fuzz.check(mod, argv, str(tmp_path))
        assert bad is None, f"{script}.py {' '.join(r['argv'])}: {bad}"
    holds()


def test_the_property_catches_a_traceback_and_a_late_exit_2(tmp_path):
    """The checker itself: a script that raises, or exits 2 after training, breaks the property."""
    class Raises:
        @staticmethod
        def main(argv):
            raise ValueError("boom")

    class TrainsThenExits2:
        @staticmethod
        def main(argv):
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.Adam([p])
            p.sum().backward()
            opt.step()
            print("error: too late. Nothing", file=sys.stderr)
            raise SystemExit(2)

    assert fuzz.check(Raises, [], str(tmp_path))[1].startswith("traceback")
    assert "after 1 optimiser steps" in fuzz.check(TrainsThenExits2, [], str(tmp_path))[1]
