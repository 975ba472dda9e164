"""Issue 26: no command line ends in a traceback. benchmarks/fuzz.py draws command lines from each script's own
parser (every option, values at and beyond the edges of their ranges, NaN/inf, non-numbers, bad paths) on the
offline digits set and generated files; the property: exit 0 with a RESULT line, or exactly one `error:` line with
no traceback and no output file left behind, and no training step before an exit 2. CI runs a bounded, seeded
number of examples per script (FUZZ_EXAMPLES, default 5; the --slow group 40); `python benchmarks/fuzz.py
--examples 300` is the long run (benchmarks/results/fuzz.md). Below it, the regression tests for what the fuzzer
found, each the minimal command line."""
import importlib
import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import fuzz  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))
SLOW_EXAMPLES = 40                                  # the --slow group's run of the same property


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return fuzz.write_fixtures(str(tmp_path_factory.mktemp("fuzz")))


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("examples", [EXAMPLES, pytest.param(SLOW_EXAMPLES, marks=pytest.mark.slow)],
                         ids=["brief", "at-length"])
@pytest.mark.parametrize("script", fuzz.SCRIPTS)
def test_no_command_line_ends_in_a_traceback(script, examples, fixtures, tmp_path):
    mod = importlib.import_module(script)

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
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


# Regression tests: each a minimal command line for a case the fuzzer or the issue found, with the words it now gets.

def run(script, argv, tmp_path):
    r, bad = fuzz.check(importlib.import_module(script), argv, str(tmp_path))
    assert bad is None, bad
    return r


def test_regression_toll_score_overflow_is_exit_3_not_a_scikit_learn_traceback(tmp_path):
    """Issue 26's first case: finite losses, infinite validation scores (ValueError from roc_auc_score before)."""
    r = run("toll", ["--dataset", "digits", "--normal", "3", "--beta", "1e30", "--lr", "10", "--iters", "3",
                     "--eval-every", "1", "--val-size", "50"], tmp_path)
    assert r["code"] == 3 and "the validation set at iteration 1" in r["stderr"]


def test_regression_toll_thyroid_normal_is_refused(tmp_path):
    """Issue 26's second case: --normal on a tabular set whose normal label is fixed (it printed normal=0)."""
    r = run("toll", ["--dataset", "thyroid", "--normal", "1"], tmp_path)
    assert r["code"] == 2 and "--normal does not apply to thyroid" in r["stderr"]


@pytest.mark.parametrize("script,argv,words", [
    ("itad", ["--dataset", "digits", "--local-size", "7"], "--model base has no local features"),
    ("csi_gen", ["--dataset", "digits", "--variant", "csi", "--gen-every", "2"], "no effect with --variant csi"),
    ("csi_gen", ["--dataset", "digits", "--variant", "csi", "--gen-every", "2", "--save-samples", "s.png"],
     "--gen-every, --save-samples have no effect with --variant csi"),
    ("csi_gen", ["--dataset", "digits", "--variant", "g", "--lambda-rec", "1"], "trains no encoder E"),
    ("lis_ae", ["--dataset", "digits", "--negative", "none", "--gamma", "1"], "--negative none trains a plain AE"),
    ("lis_ae", ["--dataset", "digits", "--negative", "none", "--linsep"], "--negative none trains a plain AE"),
    ("lis_ae", ["--dataset", "digits", "--gamma", "1", "--gamma-scale", "3"], "both were given"),
    ("cance", ["--dataset", "digits", "--image-size", "64"], "--features resnet18-pca"),
    ("cance", ["--dataset", "digits", "--corruption", "all"], "Use --dataset mnist-c"),
    ("toll", ["--dataset", "digits", "--select", "last", "--val-size", "50"], "never uses"),
])
def test_regression_an_option_that_does_not_apply_is_refused(script, argv, words, tmp_path):
    r = run(script, argv, tmp_path)
    assert r["code"] == 2 and words in r["stderr"], r["stderr"]


def test_regression_toll_select_last_trains_on_every_normal_image(tmp_path, monkeypatch):
    """--select last held out --val-size labelled images that nothing used; now they train (the header counts
    them; training itself is cut short by a Ctrl-C at its start)."""
    import toll
    monkeypatch.setattr(toll, "fit", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    r = fuzz.run_one(toll, ["--dataset", "digits", "--normal", "3", "--iters", "2", "--select", "last"], str(tmp_path))
    every = len(toll.prepare("digits", "3", val_size=0)[0]["train"])
    held = len(toll.prepare("digits", "3")[0]["train"])
    assert r["code"] == 130 and f"train={every} val=0 " in r["stdout"] and held < every


def test_regression_cance_huge_k_init_is_not_an_overflow_traceback(tmp_path):
    """--k-init 1e30 raised OverflowError in softplus^-1 (math.expm1); K = 1 + softplus(psi) now starts at it."""
    import cance
    noise = cance.NoiseDistribution(torch.zeros(2), torch.eye(2), True, 1e30)
    assert 1 + torch.nn.functional.softplus(list(noise.parameters())[-1].detach()).max().item() == pytest.approx(1e30)
    tiny = fuzz.write_fixtures(str(tmp_path / "f"))
    r = run("cance", ["--dataset", tiny["csv"], "--iters", "1", "--nu", "3", "--lam", "1e-3", "--k-init", "1e30"],
            tmp_path)
    assert r["code"] in (0, 3)


@pytest.mark.parametrize("script,flag", [("lis_ae", "--save-recon"), ("csi_gen", "--save-samples")])
def test_regression_a_picture_path_without_png_is_refused_before_training(script, flag, tmp_path):
    """--save-recon result.out trained, then PIL raised 'unknown file extension' at the end."""
    r = run(script, ["--dataset", "digits", "--iters", "2", flag, str(tmp_path / "result.out")], tmp_path)
    assert r["code"] == 2 and "does not end in .png" in r["stderr"]


def test_regression_csi_gen_batch_larger_than_the_training_set_is_refused(tmp_path):
    """--batch-size 2^63 reached torch.randint and overflowed; a batch larger than the normal set is now an error."""
    folder = fuzz.write_fixtures(str(tmp_path / "f"))["folder"]
    r = run("csi_gen", ["--dataset", folder, "--iters", "2", "--batch-size", str(2 ** 63)], tmp_path)
    assert r["code"] == 2 and "exceeds the 8 normal training images" in r["stderr"] and r["steps"] == 0
