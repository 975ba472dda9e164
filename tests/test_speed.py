"""benchmarks/speed.py with a fake script: the numbers in the table are the script's own RESULT values, a failing
row is shown as not run, and rerunning a row replaces it instead of duplicating it. A few seconds."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import speed  # noqa: E402

FAKE = r'''
import argparse, json, os, sys
p = argparse.ArgumentParser()
p.add_argument("--dataset"); p.add_argument("--device"); p.add_argument("--json"); p.add_argument("--data-root")
p.add_argument("--rate", type=float, default=10.0); p.add_argument("--fail", action="store_true")
a = p.parse_args()
if a.fail:
    print("error: cifar10 was not found under 'x' and could not be downloaded (URLError: a|b). Expected more.", file=sys.stderr); sys.exit(2)
r = {"batch_size": 7, "device": "cpu", "train_samples_per_s": a.rate, "score_samples_per_s": 2 * a.rate}
json.dump(r, open(a.json, "w"))
'''


def test_speed_table_reports_the_scripts_numbers(tmp_path, monkeypatch):
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    rows = [("ok", str(fake), "tiny net", ["--dataset", "x", "--rate", "12.5"], "image"),
            ("bad", str(fake), "cifar net", ["--dataset", "x", "--fail"], "image")]
    monkeypatch.setattr(speed, "ROWS", rows)
    monkeypatch.setattr(speed, "bare_loop", lambda row, device, seconds: (25.0, 20.0))   # bare train, bare forward
    out = str(tmp_path / "speed")
    assert speed.main(["--out", out, "--data-root", "somewhere"]) == 0
    md = open(out + ".md").read()
    assert "| tiny net | 7 | cpu | 12.5 | 25.0 | 0.5 | 25.0 | 20.0 | 1.25 | image |" in md   # script / bare
    assert "not run: error: cifar10 was not found under 'x' and could not be downloaded |" in md  # first clause
    assert "URLError" not in md and "Expected more" not in md
    assert "--data-root somewhere" in md and "--json" not in md            # the command a user can rerun
    monkeypatch.setattr(speed, "ROWS", [("ok", str(fake), "tiny net", ["--dataset", "x", "--rate", "3"], "image"),
                                        ("bad", str(fake), "cifar net", ["--dataset", "x", "--rate", "4"], "image")])
    speed.main(["--out", out])
    rows = json.load(open(out + ".json"))["rows"]
    assert sorted(r["id"] for r in rows) == ["bad", "ok"]                  # replaced, not duplicated
    assert [r["train_samples_per_s"] for r in rows if r["id"] == "ok"] == [3.0]
    assert [r.get("error") for r in rows if r["id"] == "bad"] == [None]    # a failed row is replaced once it runs
    assert "not run" not in open(out + ".md").read()


def test_bare_loop_builds_each_rows_network_with_the_scripts_own_classes():
    """Every row's bare network builds from the script's classes and takes one step on its input shape at batch 2
    (cheap); the timed loop itself runs on the small Arrhythmia MLP."""
    import torch
    torch.set_num_threads(1)
    for row in speed.ROWS:
        model, shape, per_step, per_score, loss_fn = speed.bare_model(row)
        assert per_step >= 1 and per_score >= 1
        x = torch.rand(2, *shape[1:])
        loss_fn(model, x).backward()
        assert any(p.grad is not None for p in model.parameters()), row[0]
    train, score = speed.bare_loop(next(r for r in speed.ROWS if r[0] == "toll-arrhythmia"), "cpu", seconds=0.05)
    assert train > 0 and score > 0


def test_sweep_row_times_the_same_sweep_with_one_and_two_jobs(tmp_path, monkeypatch):
    fake = tmp_path / "slow.py"
    fake.write_text("import argparse, json, time\np = argparse.ArgumentParser()\n"
                    "for f in ('--dataset', '--normal', '--seed', '--json'): p.add_argument(f)\n"
                    "a = p.parse_args(); time.sleep(0.4)\n"
                    "json.dump({'auroc': 0.5, 'device': 'cpu'}, open(a.json, 'w'))\n")
    monkeypatch.setattr(speed, "SWEEP", ["--script", str(fake), "--classes", "0-7", "--seeds", "0", "--cpu", "--",
                                         "--dataset", "digits"])
    out = str(tmp_path / "speed")
    assert speed.main(["--out", out, "--sweep"]) == 0
    sweep = json.load(open(out + ".json"))["sweep"]
    assert [r["jobs"] for r in sweep] == [1, 2] and all(r["ok"] for r in sweep)
    assert sweep[1]["speedup"] > 1.3                        # eight 0.4 s runs, two at a time
    assert "## A whole sweep: run.py --jobs 1 vs --jobs 2" in open(out + ".md").read()
