"""Property-based fuzzing of the five scripts' command lines: no command line ends in a traceback.

Each example is a command line drawn from the script's own parser (its argparse actions, read from the parser
the script builds): the offline `digits` set (toll.py and cance.py also generated tabular files, every script
generated .npz files and an image folder), then up to four more options, each with a value drawn for its kind:
    numbers (the scripts' `number(kind, low, high)` types): the edges of the valid range and just outside them,
        0, negatives, NaN, +-inf, 1e30, 1e-30, a non-number and the empty string. Integer options set sizes and
        budgets (iterations, widths, batch sizes): their valid values are drawn small, so that every example ends
        in seconds; huge valid budgets (steps, passes) are valid and merely slow, and are not run, while 2^63 is
        drawn for every other integer (a width or a size that no tensor can have);
    choices: every choice and one that is not;
    files (output paths, --data-root, --dataset, --load-model): a writable file, a folder, a missing folder, an
        unwritable place, a file of the wrong kind;
    flags: present or absent.
The property, per example (run in-process through `main(argv)`, stdout and stderr captured):
    exit 0 and the last line printed starts with `RESULT `; or
    a non-zero exit with exactly one `error:` line on stderr and no traceback, and no output file left behind;
    exit 2 (bad input) only before training: no optimiser step was taken.
Any other exception is a failure (that is a traceback for a user).

    python benchmarks/fuzz.py --examples 300                 # every script; writes benchmarks/results/fuzz.md
    python benchmarks/fuzz.py --scripts toll --examples 20   # one script

tests/test_fuzz.py runs the same property for a bounded, seeded number of examples per script. Needs hypothesis
(requirements.txt: a test extra, not a dependency of the scripts).
"""
import argparse
import contextlib
import importlib
import inspect
import io
import json
import os
import signal
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
import common  # noqa: E402
SCRIPTS = ("toll", "lis_ae", "cance", "itad", "csi_gen")
TABULAR = ("toll", "cance")                     # the scripts that take tabular data
CHEAP_FOLDER = ("toll", "lis_ae", "cance")      # the tiny image folder runs faster than digits (toll's MNIST AE)
SKIP = {"help", "dataset"}                      # --help exits 0 without a RESULT line; --dataset is drawn first
BUDGETS = {"iters", "epochs", "mc_samples", "ensemble"}   # counts of steps or passes: any size is valid, just slow
TIME_LIMIT = 300                                # seconds per example before it counts as a failure (a hang)


class _Captured(Exception):
    pass


def parser_of(mod):
    """The ArgumentParser that mod.parse_args builds (its last parse_args call), without running it."""
    seen = []
    cls = common.ArgumentParser                  # every script builds its parser from common.py
    original = cls.parse_args

    def grab(self, args=None, namespace=None):
        seen.append(self)
        raise _Captured
    cls.parse_args = grab
    try:
        mod.parse_args(["--dataset", "digits"])
    except _Captured:
        pass
    finally:
        cls.parse_args = original
    return seen[-1]


def number_spec(action):
    """(kind, low, high, low_open) of a `number(...)` argparse type, or None for any other type."""
    t = action.type
    if t is None or getattr(t, "__name__", "") != "parse" or not t.__closure__:
        return None
    v = inspect.getclosurevars(t).nonlocals
    return (v["kind"], v.get("low"), v.get("high"), v.get("low_open", False)) if "kind" in v else None


def write_fixtures(root):
    """Generated data for the fuzzer: the tests' tiny data root (built-in formats), user files and bad files."""
    import conftest
    from PIL import Image
    conftest.make_tiny_root(os.path.join(root, "data"), n_train=100, n_test=40)   # small: a draw may take any size
    rng = np.random.default_rng(0)
    f = {"data": os.path.join(root, "data")}
    x = rng.random((16, 1, 28, 28)).astype(np.float32)            # few images: a draw may be at the paper's sizes
    f["npz_images"] = os.path.join(root, "images.npz")
    np.savez(f["npz_images"], x_train=x[:8], x_test=x[8:], y_test=np.r_[np.zeros(4), np.ones(4)],
             x_val=x[8:], y_val=np.r_[np.zeros(4), np.ones(4)])
    t = rng.normal(size=(200, 20)).astype(np.float32)
    t[-30:] += 3
    y = np.r_[np.zeros(170), np.ones(30)]
    f["npz_tabular"] = os.path.join(root, "rows.npz")
    np.savez(f["npz_tabular"], x_train=t[:100], x_test=t[100:], y_test=y[100:], x_val=t[100:], y_val=y[100:])
    f["csv"] = os.path.join(root, "rows.csv")
    with open(f["csv"], "w") as h:
        h.write(",".join([f"f{i}" for i in range(20)] + ["label"]) + "\n")
        for row, label in zip(t, y):
            h.write(",".join(f"{v:.6f}" for v in row) + f",{int(label)}\n")
    f["folder"] = os.path.join(root, "folder")
    for sub, n, shift in (("train/good", 8, 0), ("test/good", 4, 0), ("test/defect", 4, 120)):
        os.makedirs(os.path.join(f["folder"], sub))
        for i in range(n):
            img = np.clip(rng.normal(60 + shift, 30, size=(30, 30)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(f["folder"], sub, f"{i}.png"))
    f["text"] = os.path.join(root, "notes.txt")
    with open(f["text"], "w") as h:
        h.write("not data\n")
    f["bad_npz"] = os.path.join(root, "bad.npz")
    np.savez(f["bad_npz"], x=np.zeros((3, 2)))
    f["empty_dir"] = os.path.join(root, "empty")
    os.makedirs(f["empty_dir"])
    return f


def strategies(mod, fixtures):
    """A hypothesis strategy of (argv, out_dir-relative) command lines for one script."""
    from hypothesis import strategies as st
    name = mod.__name__
    parser = parser_of(mod)
    actions = [a for a in parser._actions if a.option_strings and a.dest not in SKIP]

    def pools(a):
        """(valid-looking values, invalid values) of one option."""
        if a.choices:
            return [str(c) for c in a.choices], ["nope", ""]
        spec = number_spec(a)
        if spec:
            kind, low, high, low_open = spec
            bad = ["nan", "inf", "-inf", "abc", "", "1e30", "-1"]
            if kind is int:
                lo = (low or 0) + (1 if low_open else 0)
                valid = [lo, lo + 1, lo + 2] if high is None else [lo, high, (lo + high) // 2]
                huge = [] if a.dest in BUDGETS else [str(2 ** 63)]          # a budget of 2^63 steps merely runs
                return [str(v) for v in valid], bad + [str(lo - 1), "1.5"] + huge
            edges = [str(v) for v in (low, high) if v is not None]
            return edges + ["1", "0.5", "1e-30", "1e-3", "10", "1e30", "2"], bad + ["0", "-1e-3"]
        kind = getattr(a.type, "__name__", "")
        if kind == "output_path":
            return ["{out}/result.out"], ["{out}", "{out}/missing/x.out", "/proc/x.out", ""]
        if kind == "device_type":
            return ["cpu", "auto"], ["cuda", "cuda:7", "tpu", ""]
        if a.dest == "data_root":
            return [fixtures["data"]], ["/nonexistent", fixtures["text"], fixtures["empty_dir"]]
        if a.dest == "load_model":
            return [], ["/nonexistent.pt", fixtures["text"], fixtures["bad_npz"], "{out}"]
        if a.dest == "normal":
            return ["0", "3", "0,1"], ["1,1", "10", "-1", "a", ""]
        return ["0", "1", "label"], ["x", "", "/nonexistent", fixtures["text"]]

    def values(a):
        if a.nargs == 0:                                                  # a store_true flag
            return st.just(None)
        valid, invalid = pools(a)
        options = [st.sampled_from(valid)] * 3 if valid else []           # valid-looking values 3 times as often
        return st.one_of(*options, st.sampled_from(invalid))

    datasets = [["--dataset", "digits", "--normal", "3"], ["--dataset", fixtures["folder"]], ["--dataset", "digits"],
                ["--dataset", fixtures["npz_images"]], ["--dataset", fixtures["npz_tabular"]],
                ["--dataset", fixtures["csv"]], ["--dataset", "mnist", "--data-root", fixtures["data"]]]
    if name in CHEAP_FOLDER:              # hypothesis starts from the first: the cheapest valid run of the script
        datasets[:2] = datasets[1::-1]
    if name in TABULAR:
        datasets += [["--dataset", "thyroid", "--data-root", fixtures["data"]],
                     ["--dataset", "arrhythmia", "--data-root", fixtures["data"]]]
    broken = [["--dataset", "nope"], ["--dataset", fixtures["text"]], ["--dataset", fixtures["empty_dir"]],
              ["--dataset", fixtures["bad_npz"]]]

    @st.composite
    def argv(draw):
        line = list(draw(st.one_of(st.sampled_from(datasets), st.sampled_from(datasets), st.sampled_from(broken))))
        line += ["--iters", "2"]
        for a in draw(st.lists(st.sampled_from(actions), max_size=4, unique_by=lambda a: a.dest)):
            flag = a.option_strings[-1]
            v = draw(values(a))
            if flag in line and v is not None:                               # replace the base's value
                line[line.index(flag) + 1] = v
            else:
                line += [flag] if v is None else [flag, v]
        return line
    return argv()


def run_one(mod, argv, out_dir):
    """main(argv) in this process -> dict(code, stdout, stderr, steps, traceback, seconds)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    argv = [a.replace("{out}", out_dir) for a in argv]
    steps = [0]

    def count(opt, args, kwargs):
        steps[0] += 1
    hook = register_optimizer_step_pre_hook(count)
    out, err, tb, code = io.StringIO(), io.StringIO(), None, 0

    def alarm(signum, frame):
        raise TimeoutError(f"no end after {TIME_LIMIT} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(TIME_LIMIT)
    t0 = time.time()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            mod.main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:                                                    # noqa: B036 (a user's traceback)
        code, tb = None, traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        hook.remove()
    return dict(argv=argv, code=code, stdout=out.getvalue(), stderr=err.getvalue(), steps=steps[0], traceback=tb,
                seconds=time.time() - t0)


def violation(r, out_dir, before):
    """None if the run satisfies the property, else what it broke."""
    if r["code"] is None:
        return "traceback:\n" + r["traceback"]
    if r["code"] == 0:
        lines = r["stdout"].strip().splitlines()
        return None if lines and lines[-1].startswith("RESULT ") else "exit 0 without a RESULT line"
    errors = [ln for ln in r["stderr"].splitlines() if ln.startswith("error: ")]
    if len(errors) != 1 or "Traceback" in r["stderr"]:
        return f"exit {r['code']} with {len(errors)} error lines:\n{r['stderr'][-2000:]}"
    left = sorted(set(os.listdir(out_dir)) - before)
    if left:
        return f"exit {r['code']} left files behind: {left}"
    if r["code"] == 2 and r["steps"]:
        return f"exit 2 (bad input) after {r['steps']} optimiser steps: the input was not refused before training"
    return None


def check(mod, argv, workdir):
    """Run one example and return (result, violation or None)."""
    out_dir = tempfile.mkdtemp(dir=workdir)
    before = set(os.listdir(out_dir))
    r = run_one(mod, argv, out_dir)
    return r, violation(r, out_dir, before)


def record(out, name, row):
    """Keep one script's outcome in OUT's .json beside it (the other scripts' rows stay) and rewrite OUT's table."""
    store = os.path.splitext(out)[0] + ".json"
    rows = json.load(open(store)) if os.path.exists(store) else {}
    rows[name] = row
    with open(store + ".tmp", "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(store + ".tmp", store)
    lines = ["# Fuzzing the command lines (issue 26)", "",
             "Each command line is drawn from the script's own parser (see the docstring of benchmarks/fuzz.py); the "
             "property: exit 0 with a RESULT line, or one `error:` line, no traceback, no output file left behind, "
             "and no training step before an exit 2. CPU, one thread; each row's command reruns it (seeded).", "",
             "| script | command | date | distinct command lines | exit 0 | exit 2 | exit 3 | other exit | violations "
             "| seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n in sorted(rows):
        r, c = rows[n], rows[n]["counts"]
        lines.append(f"| {n}.py | `{r['command']}` | {r['date']} | {r['lines']} | {c['exit 0']} | {c['exit 2']} | "
                     f"{c['exit 3']} | {c['other exit']} | {c['violations']} | {r['seconds']} |")
    bad = [(n, line, why) for n in sorted(rows) for line, why in rows[n]["failures"]]
    slow = sum(f"no end after {TIME_LIMIT} s" in why for _, _, why in bad)
    lines += ["", f"Violations: {len(bad)}" + (f", of which {slow} reached the {TIME_LIMIT} s limit per command line "
                                               "(its traceback is the fuzzer's alarm, not the script's)" if slow else "")
              + "."]
    for n, line, why in bad:
        lines += ["", f"- `{n}.py {line}`", "", "```", why, "```"]
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description="Fuzz the scripts' command lines (issue 26).")
    p.add_argument("--scripts", default=",".join(SCRIPTS))
    p.add_argument("--examples", type=int, default=300, help="distinct command lines per script")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results", "fuzz.md"))
    p.add_argument("--verbose", action="store_true", help="print every command line, its exit status and last line")
    a = p.parse_args(argv)
    os.environ["AD_OFFLINE"] = "1"
    import torch
    from hypothesis import HealthCheck, given, seed, settings
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="fuzz-")
    fixtures = write_fixtures(work)
    failures = []
    for name in a.scripts.split(","):
        mod = importlib.import_module(name)
        counts = {"exit 0": 0, "exit 2": 0, "exit 3": 0, "other exit": 0, "violations": 0}
        seen = set()
        t0 = time.time()

        @seed(a.seed)
        @settings(max_examples=2 * a.examples, deadline=None, database=None, phases=["generate"],
                  suppress_health_check=list(HealthCheck))
        @given(strategies(mod, fixtures))
        def fuzz(line):
            key = tuple(line)
            if key in seen or len(seen) >= a.examples:          # --examples distinct command lines, then idle draws
                return
            seen.add(key)
            r, bad = check(mod, line, work)
            c = r["code"]
            if a.verbose:
                last = (r["stdout"].strip().splitlines() or [""])[-1] if c == 0 else r["stderr"].strip()[-200:]
                print(f"  exit {c} {r['seconds']:.1f}s {' '.join(r['argv'])}\n    {last[:200]}", flush=True)
            counts["exit 0" if c == 0 else "exit 2" if c == 2 else "exit 3" if c == 3 else "other exit"] += 1
            if bad:
                counts["violations"] += 1
                failures.append((name, " ".join(r["argv"]), bad))
        fuzz()
        print(name, len(seen), counts, f"{time.time() - t0:.0f}s", flush=True)
        record(a.out, name, {"command": f"python benchmarks/fuzz.py --scripts {name} --examples {a.examples} "
                                        f"--seed {a.seed}", "date": time.strftime("%Y-%m-%d"), "lines": len(seen),
                             "counts": counts, "seconds": round(time.time() - t0),
                             "failures": [(line, bad.strip()[-3000:]) for n, line, bad in failures if n == name]})
    print(f"wrote {a.out}: {len(failures)} violations")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
