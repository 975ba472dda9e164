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
    out = str(tmp_path / "speed")
    assert speed.main(["--out", out, "--data-root", "somewhere"]) == 0
    md = open(out + ".md").read()
    assert "| tiny net | 7 | cpu | 12.5 | 25.0 | image |" in md
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
