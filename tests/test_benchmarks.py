"""benchmarks/run.py with a fake script: resume, aggregation (mean ± sample std), table rendering against a paper
table, a failing run reported rather than hidden, seeds-only (tabular) mode, README section. A few seconds."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import run as bench  # noqa: E402

FAKE = r'''
import argparse, json, os, sys
p = argparse.ArgumentParser()
p.add_argument("--dataset", default="mnist")
p.add_argument("--normal", default=None)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--json", default=None)
p.add_argument("--fail-class", type=int, default=None)
p.add_argument("--no-json", action="store_true")
p.add_argument("--calls", required=True)
p.add_argument("--sleep", type=float, default=0)
p.add_argument("--offset", type=float, default=0)
a = p.parse_args()
import time; time.sleep(a.sleep)
with open(a.calls, "a") as f:
    f.write(f"{a.normal} {a.seed}\n")
cls = None if a.normal is None else [int(v) for v in a.normal.split(",")]
if cls is not None and cls == [a.fail_class]:
    print("Traceback (most recent call last):\nRuntimeError: fake failure for class %s" % a.normal, file=sys.stderr)
    sys.exit(3)
if a.normal is None:   # tabular: f1 is the main metric, auroc a secondary one
    r = {"method": "fake", "dataset": a.dataset, "normal": "0", "seed": a.seed, "f1": 0.4 + 0.1 * a.seed,
         "f1_error": 0.3, "auroc": 0.9, "auroc_error": 0.8, "device": "cpu", "seconds": 1.0}
else:
    c = sum(cls)
    r = {"method": "fake", "dataset": a.dataset, "normal": a.normal, "seed": a.seed,
         "auroc": round(0.5 + 0.01 * c + 0.001 * a.seed + a.offset, 4), "auroc_ae": 0.5, "device": "cpu", "seconds": 2.0}
print("iter 1/1 loss=0.1", flush=True)
print("RESULT " + " ".join(f"{k}={v}" for k, v in r.items()), flush=True)
if a.json and not a.no_json:
    with open(a.json + ".tmp", "w") as f:
        json.dump(r, f)
    os.replace(a.json + ".tmp", a.json)
'''


@pytest.fixture
def setup(tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    tables = {"tables": {
        "fake/table1": {"paper": "Fake et al.", "table": "Table 1", "where": "p. 3", "metric": "AUROC (%)",
                        "unit": "percent", "source": "https://example.org", "values": {"0": 60.0, "1": 50.0, "2": 40.0},
                        "average": None},
        "fake/f1": {"paper": "Fake et al.", "table": "Table 4", "metric": "F1 (%)", "unit": "percent",
                    "values": {"all": 50.0}, "average": None}}}
    (tmp_path / "tables.json").write_text(json.dumps(tables))
    protocols = {"fake.py": {"protocols": {
        "cpu": {"args": ["--fail-class", "2"], "seeds": "0,1", "note": "a tiny budget"},
        "gpu": {"args": None, "note": "TODO: not defined"}},
        "paper_tables": {"mnist": "fake/table1"}}}
    (tmp_path / "protocols.json").write_text(json.dumps(protocols))
    common = ["--results-dir", str(tmp_path / "results"), "--paper-tables", str(tmp_path / "tables.json"),
              "--protocols", str(tmp_path / "protocols.json"), "--readme-file", str(tmp_path / "README.md")]
    calls = tmp_path / "calls.txt"

    def invoke(*args, extra=()):
        return bench.main([*args, *common, "--", "--calls", str(calls), *extra])

    def n_calls():
        return len(calls.read_text().splitlines()) if calls.exists() else 0

    return dict(tmp=tmp_path, script=str(script), invoke=invoke, n_calls=n_calls, results=tmp_path / "results")


def load(setup, name):
    return json.loads((setup["results"] / f"{name}.json").read_text())


def test_sweep_aggregates_mean_and_sample_std_and_reports_the_failure(setup):
    rc = setup["invoke"]("--script", setup["script"], "--name", "t", "--classes", "0-2", "--seeds", "0,1",
                         "--paper", "fake/table1", extra=["--fail-class", "2"])
    assert rc == 1                                           # a failed run makes the exit status non-zero
    assert setup["n_calls"]() == 6
    s = load(setup, "t")
    assert s["metric"] == "auroc" and s["variants"] == ["auroc_ae"]
    r0, r1, r2 = s["rows"]
    assert r0["values"] == [0.5, 0.501]
    assert r0["mean"] == pytest.approx(0.5005)
    assert r0["std"] == pytest.approx(0.001 / 2 ** 0.5)      # sample std (n-1) of two values 0.001 apart
    assert r1["mean"] == pytest.approx(0.5105)
    assert r0["paper"] == pytest.approx(0.60) and r0["diff"] == pytest.approx(0.5005 - 0.60)
    assert r0["variants"]["auroc_ae"]["mean"] == pytest.approx(0.5)
    assert (r2["n"], r2["n_failed"], r2["mean"]) == (0, 2, None)
    assert s["runs_ok"] == 4 and s["runs_failed"] == 2
    assert [(f["class"], f["seed"], f["returncode"]) for f in s["failed"]] == [(2, 0, 3), (2, 1, 3)]
    assert "fake failure for class 2" in s["failed"][0]["stderr_tail"]
    failed = json.loads((setup["results"] / "t" / "runs" / "c2_s0.failed").read_text())
    assert failed["returncode"] == 3 and "RuntimeError" in failed["stderr_tail"]
    # the average covers the classes with results only, and then gives no difference to the paper's average
    assert s["average"]["mean"] == pytest.approx((0.5005 + 0.5105) / 2)
    assert s["average"]["classes_with_results"] == 2 and s["average"]["diff"] is None
    assert s["average"]["paper"] == pytest.approx(0.50)


def test_resume_runs_nothing_already_finished(setup):
    args = ("--script", setup["script"], "--name", "t", "--classes", "0-2", "--seeds", "0,1")
    setup["invoke"](*args, extra=["--fail-class", "2"])
    assert setup["n_calls"]() == 6
    setup["invoke"](*args, "--skip-failed", extra=["--fail-class", "2"])
    assert setup["n_calls"]() == 6                           # nothing new: finished runs and known failures skipped
    setup["invoke"](*args, extra=["--fail-class", "2"])
    assert setup["n_calls"]() == 8                           # by default only the two failed runs are tried again


def test_fixed_failure_is_retried_and_cleared(setup):
    args = ("--script", setup["script"], "--name", "t", "--classes", "0,1", "--seeds", "0")
    assert setup["invoke"](*args, extra=["--fail-class", "1"]) == 1
    # same flags (the runner refuses to mix flags under one name); the bug is "fixed" in the script itself
    fake = open(setup["script"]).read().replace("cls is not None and cls == [a.fail_class]", "False")
    open(setup["script"], "w").write(fake)
    assert setup["invoke"](*args, extra=["--fail-class", "1"]) == 0
    assert setup["n_calls"]() == 3                           # class 0 was not run again
    assert not (setup["results"] / "t" / "runs" / "c1_s0.failed").exists()
    assert load(setup, "t")["runs_failed"] == 0


def test_exit_zero_without_json_is_a_failure(setup):
    rc = setup["invoke"]("--script", setup["script"], "--name", "nojson", "--classes", "0", "--seeds", "0",
                         extra=["--no-json"])
    assert rc == 1
    s = load(setup, "nojson")
    assert s["failed"][0]["returncode"] == 0 and "wrote no" in s["failed"][0]["stderr_tail"]


def test_markdown_table_has_paper_figure_difference_failure_and_command(setup):
    setup["invoke"]("--script", setup["script"], "--name", "t", "--classes", "0-2", "--seeds", "0,1",
                    "--paper", "fake/table1", extra=["--fail-class", "2"])
    md = (setup["results"] / "t.md").read_text()
    assert "python benchmarks/run.py --script" in md and "--classes 0-2 --seeds 0,1" in md
    assert "--normal C --seed S --json" in md
    assert "Paper: Fake et al., Table 1" in md and "(p. 3)" in md
    row0 = next(line for line in md.splitlines() if line.startswith("| 0 |"))
    assert "50.05 ± 0.07" in row0 and "| 60.00 |" in row0 and "| -9.95 |" in row0 and "| cpu |" in row0
    row2 = next(line for line in md.splitlines() if line.startswith("| 2 |"))
    assert "2 FAILED" in row2
    assert "## Failed runs" in md and "exit status 3" in md and "fake failure for class 2" in md
    avg = next(line for line in md.splitlines() if line.startswith("| **average**"))
    assert "2/3 classes" in avg and "50.55" in avg


def test_seeds_only_mode_uses_f1_and_the_papers_single_figure(setup):
    rc = setup["invoke"]("--script", setup["script"], "--name", "tab", "--classes", "none", "--seeds", "0-2",
                         "--paper", "fake/f1", extra=["--dataset", "arrhythmia"])
    assert rc == 0
    assert sorted(os.listdir(setup["results"] / "tab" / "runs")) == sorted(
        f"s{s}.{ext}" for s in range(3) for ext in ("json", "meta.json", "log", "err"))
    s = load(setup, "tab")
    assert s["metric"] == "f1" and s["variants"] == ["f1_error", "auroc", "auroc_error"]
    (row,) = s["rows"]
    assert row["class"] is None and row["mean"] == pytest.approx(0.5) and row["std"] == pytest.approx(0.1)
    assert row["paper"] == pytest.approx(0.5) and row["diff"] == pytest.approx(0.0)
    md = (setup["results"] / "tab.md").read_text()
    assert "| all | 3 | 50.00 ± 10.00 |" in md and "Classes: none (seeds only)" in md


def test_named_protocol_supplies_flags_seeds_paper_table_and_name(setup):
    rc = setup["invoke"]("--script", setup["script"], "--protocol", "cpu", "--dataset", "mnist", "--classes", "0-2")
    assert rc == 1                                           # the protocol's --fail-class 2
    s = load(setup, "fake_mnist_cpu")
    assert s["seeds"] == [0, 1] and s["paper"]["key"] == "fake/table1" and s["protocol_note"] == "a tiny budget"
    assert s["script_args"][:4] == ["--fail-class", "2", "--dataset", "mnist"]
    with pytest.raises(SystemExit, match="not defined yet"):
        setup["invoke"]("--script", setup["script"], "--protocol", "gpu", "--dataset", "mnist")


def test_changed_flags_under_the_same_name_are_refused(setup):
    args = ("--script", setup["script"], "--name", "t", "--classes", "0", "--seeds", "0")
    setup["invoke"](*args)
    with pytest.raises(SystemExit, match="mixing them would be wrong"):
        setup["invoke"](*args, extra=["--dataset", "fashion-mnist"])
    with pytest.raises(SystemExit):
        setup["invoke"](*args, extra=["--seed", "3"])         # the runner sets --seed itself


def test_side_by_side_puts_an_ablation_in_one_table_with_paired_differences(setup, capsys):
    """--side-by-side: one table of sweeps over the same classes and seeds (issue 17's ablation table), read from
    the stored runs; the second sweep is the first + 0.02 on every run, so its paired difference is +2.00 ± 0.00
    in 4 of 4 pairs; paper rows listed with --reference; an unknown name is an error."""
    base = ("--script", setup["script"], "--classes", "0,1", "--seeds", "0,1")
    setup["invoke"](*base, "--name", "a")
    setup["invoke"](*base, "--name", "b", extra=["--offset", "0.02"])
    out = setup["tmp"] / "ab.md"
    common = ["--results-dir", str(setup["results"]), "--paper-tables", str(setup["tmp"] / "tables.json")]
    assert bench.main(["--side-by-side", "a,b", "--reference", "fake/f1", "--out", str(out), *common]) == 0
    text = out.read_text()
    assert "| 0 | 50.05 ± 0.07 (n=2) | 52.05 ± 0.07 (n=2) |" in text       # class 0: 0.500 and 0.501 (+0.02)
    assert "| **average over classes** | **50.55** (2 classes) | **52.55** (2 classes) |" in text
    assert "| paired Δ vs a | – | +2.00 ± 0.00 (4 of 4 pairs higher) |" in text
    assert "50.0 — " in text and "--side-by-side a,b" in text              # the reference row and the command
    with pytest.raises(SystemExit) as e:
        bench.main(["--side-by-side", "a,nope", *common])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:                              # --out alone would be silently ignored
        bench.main(["--out", str(out), *common])
    assert e.value.code == 2


def test_report_only_rerenders_without_running(setup):
    setup["invoke"]("--script", setup["script"], "--name", "t", "--classes", "0", "--seeds", "0")
    (setup["results"] / "t.md").unlink()
    assert bench.main(["--name", "t", "--report", "--results-dir", str(setup["results"]),
                       "--paper-tables", str(setup["tmp"] / "tables.json")]) == 0
    assert setup["n_calls"]() == 1 and (setup["results"] / "t.md").exists()


def test_readme_section_is_generated_between_the_markers(setup, capsys):
    setup["invoke"]("--script", setup["script"], "--name", "t", "--classes", "0-1", "--seeds", "0",
                    "--paper", "fake/table1")
    readme = setup["tmp"] / "README.md"
    readme.write_text("intro\n\n## Results\n\n<!-- results:begin -->\nold numbers\n<!-- results:end -->\n\n## After\n")
    assert setup["invoke"]("--readme", "--write") == 0
    text = readme.read_text()
    assert text.startswith("intro\n\n## Results\n\n<!-- results:begin -->") and text.endswith("<!-- results:end -->\n\n## After\n")
    assert "old numbers" not in text
    row = next(line for line in text.splitlines() if line.startswith("| [t]("))
    assert "| custom |" in row and "| 2 × 1 | 2 / 0 | auroc | 50.50 | auroc_ae 50.00 | 55.00 | -4.50 |" in row
    readme.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="markers"):
        setup["invoke"]("--readme", "--write")
    capsys.readouterr()
    assert setup["invoke"]("--readme") == 0
    assert "<!-- results:begin -->" in capsys.readouterr().out


@pytest.mark.parametrize("text,expected", [("0-9", list(range(10))), ("0,3,8", [0, 3, 8]), ("0-2,7", [0, 1, 2, 7]),
                                           ("none", []), ("5", [5])])
def test_parse_list(text, expected):
    assert bench.parse_list(text, "classes") == expected


def test_parse_list_rejects_garbage():
    with pytest.raises(SystemExit, match="--classes must look like"):
        bench.parse_list("zero", "classes")


def test_dataset_after_the_separator_sets_the_label_and_default_classes(setup):
    assert setup["invoke"]("--script", setup["script"], "--name", "tab2", "--seeds", "0",
                           extra=["--dataset", "arrhythmia"]) == 0
    s = load(setup, "tab2")
    assert s["dataset"] == "arrhythmia" and s["classes"] == [] and s["metric"] == "f1"


def test_a_run_past_the_timeout_is_killed_and_recorded(setup):
    rc = setup["invoke"]("--script", setup["script"], "--name", "slow", "--classes", "0", "--seeds", "0",
                         "--timeout", "0.5", extra=["--sleep", "30"])
    assert rc == 1
    (f,) = load(setup, "slow")["failed"]
    assert f["returncode"] == "timeout" and "--timeout 0.5" in f["stderr_tail"]


def test_dry_run_lists_the_pending_commands_and_runs_nothing(setup, capsys):
    setup["invoke"]("--script", setup["script"], "--name", "t", "--classes", "0", "--seeds", "0")
    capsys.readouterr()
    assert setup["invoke"]("--script", setup["script"], "--name", "t", "--classes", "0-1", "--seeds", "0",
                           "--dry-run") == 0
    out = capsys.readouterr().out
    assert "--normal 1 --seed 0 --json" in out and "--normal 0 " not in out and "1 run(s) to do" in out
    assert setup["n_calls"]() == 1


# ------------------------------------------------------------------------------------------ class groups, variants

def test_class_groups_and_complements_reach_the_script_as_normal_lists(setup):
    rc = setup["invoke"]("--script", setup["script"], "--name", "grp", "--classes", "1+0,~2", "--seeds", "0",
                         extra=["--dataset", "mnist"])
    assert rc == 0
    calls = (setup["tmp"] / "calls.txt").read_text().splitlines()
    assert calls == ["0,1 0", "0,1,3,4,5,6,7,8,9 0"]
    runs = sorted(os.listdir(setup["results"] / "grp" / "runs"))
    assert "c0+1_s0.json" in runs and "cnot2_s0.json" in runs
    s = load(setup, "grp")
    assert [r["class"] for r in s["rows"]] == ["0+1", "~2"]
    assert s["rows"][0]["mean"] == pytest.approx(0.51)           # the fake's 0.5 + 0.01 * (0 + 1)


def test_complement_needs_a_dataset_with_known_classes():
    with pytest.raises(SystemExit, match="every class but one"):
        bench.parse_classes("~3", None)
    with pytest.raises(SystemExit, match="classes 0..9"):
        bench.parse_classes("~12", "mnist")
    assert bench.parse_classes("0-2,1+0,~4", "mnist") == [0, 1, 2, "0+1", "~4"]
    assert bench.normal_arg("~4", "mnist") == "0,1,2,3,5,6,7,8,9" and bench.normal_arg("0+8", "mnist") == "0,8"


def test_variant_paper_columns_from_the_protocol_mapping(setup):
    tables = json.loads((setup["tmp"] / "tables.json").read_text())
    tables["tables"]["fake/ae"] = {"paper": "Fake et al.", "table": "Table 1", "row": "AE", "where": "x.txt, line 9",
                                   "unit": "fraction", "values": {"0": 0.40, "1": 0.45}, "average": None}
    (setup["tmp"] / "tables.json").write_text(json.dumps(tables))
    protocols = json.loads((setup["tmp"] / "protocols.json").read_text())
    protocols["fake.py"]["paper_tables"]["mnist"] = {"main": "fake/table1", "auroc_ae": "fake/ae"}
    (setup["tmp"] / "protocols.json").write_text(json.dumps(protocols))
    setup["invoke"]("--script", setup["script"], "--protocol", "cpu", "--dataset", "mnist", "--classes", "0-1",
                    "--seeds", "0")
    s = load(setup, "fake_mnist_cpu")
    r0 = s["rows"][0]
    assert r0["variants"]["auroc_ae"]["paper"] == pytest.approx(0.40)
    assert r0["variants"]["auroc_ae"]["diff"] == pytest.approx(0.10)
    # the paper's average over the same classes (0 and 1 of a 3-column table): the mean of those two cells
    assert s["average"]["paper"] == pytest.approx(0.55)
    assert s["average"]["variant_papers"]["auroc_ae"] == {"paper": pytest.approx(0.425), "diff": pytest.approx(0.075)}
    md = (setup["results"] / "fake_mnist_cpu.md").read_text()
    assert "| paper auroc_ae | Δ auroc_ae |" in md and "row 'AE'" in md
    setup["invoke"]("--readme", "--write") if (setup["tmp"] / "README.md").exists() else None
    section = bench.render_readme_section(str(setup["results"]))
    assert "auroc_ae 50.00 (paper 42.50, Δ +7.50)" in section


def test_report_picks_up_a_table_mapped_after_the_runs(setup):
    protocols = json.loads((setup["tmp"] / "protocols.json").read_text())
    protocols["fake.py"]["paper_tables"] = {}
    (setup["tmp"] / "protocols.json").write_text(json.dumps(protocols))
    setup["invoke"]("--script", setup["script"], "--protocol", "cpu", "--dataset", "mnist", "--classes", "0",
                    "--seeds", "0")
    assert load(setup, "fake_mnist_cpu")["rows"][0]["paper"] is None
    protocols["fake.py"]["paper_tables"] = {"mnist": "fake/table1"}
    (setup["tmp"] / "protocols.json").write_text(json.dumps(protocols))
    assert bench.main(["--report-all", "--results-dir", str(setup["results"]), "--protocols",
                       str(setup["tmp"] / "protocols.json"), "--paper-tables", str(setup["tmp"] / "tables.json")]) == 0
    assert load(setup, "fake_mnist_cpu")["rows"][0]["paper"] == pytest.approx(0.60)
    assert setup["n_calls"]() == 1


# ------------------------------------------------------------------------------------------ parallel runs, launchers

def test_parallel_jobs_run_at_the_same_time_with_divided_threads(setup):
    import time
    t0 = time.time()
    assert setup["invoke"]("--script", setup["script"], "--name", "par", "--classes", "0-3", "--seeds", "0",
                           "--jobs", "4", "--cpu", extra=["--sleep", "1.5"]) == 0
    assert time.time() - t0 < 5.5                           # four 1.5 s runs side by side, not 6 s one after another
    meta = json.loads((setup["results"] / "par" / "runs" / "c0_s0.meta.json").read_text())
    assert meta["launcher"] == "local" and meta["host"]["OMP_NUM_THREADS"].isdigit()


@pytest.mark.parametrize("flags,message", [(["--jobs", "0"], "--jobs must be at least 1"),
                                           (["--per-gpu", "0"], "--per-gpu must be at least 1"),
                                           (["--threads", "0"], "--threads must be at least 1"),
                                           (["--gpus", "7"], "GPU 7 is not visible"),
                                           (["--launcher", "slurm", "--slurm-time", "soon"], "--slurm-time")])
def test_bad_runner_input_is_an_error_before_any_run(setup, flags, message, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")        # one visible GPU: --gpus 7 is absent
    with pytest.raises(SystemExit, match=message) as e:
        setup["invoke"]("--script", setup["script"], "--name", "bad", "--classes", "0", "--seeds", "0", *flags)
    assert e.value.code == 2 and str(e.value).startswith("error: ")
    assert setup["n_calls"]() == 0 and not (setup["results"] / "bad").exists()


def test_slurm_launcher_without_submitit_says_how_to_install_it(setup, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)      # import submitit -> ImportError
    with pytest.raises(SystemExit, match="pip install -r benchmarks/requirements.txt") as e:
        setup["invoke"]("--script", setup["script"], "--name", "bad", "--classes", "0", "--seeds", "0",
                        "--launcher", "slurm")
    assert e.value.code == 2 and setup["n_calls"]() == 0


def test_bad_input_exit_status_2_from_the_command_line(tmp_path):
    import subprocess
    out = subprocess.run([sys.executable, os.path.join(bench.HERE, "run.py"), "--script", "toll.py", "--name", "x",
                          "--classes", "0", "--jobs", "0", "--results-dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: --jobs must be at least 1")
    assert "Traceback" not in out.stderr


def test_interrupted_parallel_sweep_keeps_finished_runs_and_resumes(setup):
    import signal
    import subprocess
    import time
    cmd = [sys.executable, os.path.join(bench.HERE, "run.py"), "--script", setup["script"], "--name", "intr",
           "--classes", "0-3", "--seeds", "0", "--jobs", "2", "--cpu", "--results-dir", str(setup["results"]),
           "--paper-tables", str(setup["tmp"] / "tables.json"), "--protocols", str(setup["tmp"] / "protocols.json"),
           "--", "--calls", str(setup["tmp"] / "calls.txt")]
    runs = setup["results"] / "intr" / "runs"
    # classes 0 and 1 are quick, 2 and 3 sleep long: interrupt once the quick ones are done
    fake = open(setup["script"]).read().replace("time.sleep(a.sleep)",
                                                 "time.sleep(60 if a.normal in ('2', '3') else 0)")
    open(setup["script"], "w").write(fake)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not ((runs / "c0_s0.json").exists() and (runs / "c1_s0.json").exists()
                                          and (runs / "c2_s0.log").exists() and (runs / "c3_s0.log").exists()):
        time.sleep(0.1)
    time.sleep(0.5)                                          # the slow runs are inside their sleep
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Rerun the same command to resume" in err
    assert sorted(p.name for p in runs.glob("*.json") if not p.name.endswith("meta.json")) == ["c0_s0.json", "c1_s0.json"]
    assert not list(runs.glob("*.failed"))                  # stopped runs are not failures
    open(setup["script"], "w").write(fake.replace("time.sleep(60 if a.normal in ('2', '3') else 0)", "pass"))
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    calls = (setup["tmp"] / "calls.txt").read_text().splitlines()
    assert sorted(calls[:2]) == ["0 0", "1 0"] and sorted(calls[2:]) == ["2 0", "3 0"]   # stopped runs ran again only
    assert load(setup, "intr")["runs_ok"] == 4


def test_submitit_local_executor_runs_the_same_sweep(setup):
    pytest.importorskip("submitit")
    args = ("--script", setup["script"], "--classes", "0-1", "--seeds", "0")
    assert setup["invoke"](*args, "--name", "loc") == 0
    assert setup["invoke"](*args, "--name", "sub", "--launcher", "submitit-local") == 0
    a, b = load(setup, "loc"), load(setup, "sub")
    assert [r["values"] for r in a["rows"]] == [r["values"] for r in b["rows"]] and b["runs_ok"] == 2
    meta = json.loads((setup["results"] / "sub" / "runs" / "c0_s0.meta.json").read_text())
    assert meta["launcher"].startswith("submitit")
    assert not list((setup["results"] / "sub" / "runs").glob("*.submitted"))
    md_a, md_b = ((setup["results"] / f"{n}.md").read_text().split("## Failed")[0] for n in ("loc", "sub"))
    rows = lambda md: [ln.split("|")[1:5] for ln in md.splitlines() if ln.startswith("| 0 |") or ln.startswith("| 1 |")]
    assert rows(md_a) == rows(md_b)                        # the same report


def test_real_script_gives_the_same_result_sequential_parallel_and_through_submitit(tmp_path):
    """Determinism across launchers (issue 20): cance.py on the offline digits set, one class, one thread per
    run; every RESULT key but the timings is equal whether the runs went one after another, two at a time, or
    through submitit's local executor."""
    results = tmp_path / "results"
    base = ["--script", "cance.py", "--classes", "0", "--seeds", "0", "--threads", "1", "--cpu",
            "--results-dir", str(results), "--paper-tables", str(tmp_path / "none.json"),
            "--protocols", str(tmp_path / "none.json")]
    flags = ["--", "--dataset", "digits", "--iters", "3"]
    launchers = {"seq": ["--jobs", "1"], "par": ["--jobs", "2"]}
    if __import__("importlib").util.find_spec("submitit"):
        launchers["sub"] = ["--launcher", "submitit-local"]
    for name, extra in launchers.items():
        assert bench.main([*base, "--name", name, *extra, *flags]) == 0
    timing = {"seconds", "train_samples_per_s", "score_samples_per_s", "nce_seconds", "provenance"}   # + its --json
    for c in (0,):
        got = {name: {k: v for k, v in json.loads((results / name / "runs" / f"c{c}_s0.json").read_text()).items()
                      if k not in timing} for name in launchers}
        assert got["seq"]["auroc"] > 0.5
        for name in launchers:
            assert got[name] == got["seq"], name


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_to_a_background_sweep_stops_it_like_ctrl_c(setup, signame):
    import signal
    import subprocess
    import time
    fake = open(setup["script"]).read().replace("time.sleep(a.sleep)", "time.sleep(60 if a.normal == '1' else 0)")
    open(setup["script"], "w").write(fake)
    cmd = [sys.executable, os.path.join(bench.HERE, "run.py"), "--script", setup["script"], "--name", "term",
           "--classes", "0-1", "--seeds", "0", "--results-dir", str(setup["results"]),
           "--paper-tables", str(setup["tmp"] / "tables.json"), "--protocols", str(setup["tmp"] / "protocols.json"),
           "--", "--calls", str(setup["tmp"] / "calls.txt")]
    # started the way `nohup ... &` starts it from a script: SIGINT ignored
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    runs = setup["results"] / "term" / "runs"
    deadline = time.time() + 60
    while time.time() < deadline and not ((runs / "c0_s0.json").exists() and (runs / "c1_s0.log").exists()):
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(getattr(signal, signame))               # SIGINT works although a shell would ignore it
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert (runs / "c0_s0.json").exists() and not list(runs.glob("*.failed"))


def test_adbench_ranks_share_ties_and_the_report_counts_only_complete_files(tmp_path):
    """benchmarks/adbench.py: average ranks (1 = the best mean AUROC of a file, ties share theirs); a file enters
    the table only when every method has every seed; files of the data folder without runs are counted."""
    import adbench
    assert adbench.ranks([0.9, 0.7, 0.9, 0.5]) == [1.5, 3.0, 1.5, 4.0]
    runs, data = tmp_path / "runs", tmp_path / "data"
    runs.mkdir()
    data.mkdir()
    for name in ("1_a", "2_b", "3_c"):
        (data / f"{name}.npz").write_bytes(b"")
    cells = {("1_a", "toll"): [0.8, 0.6], ("1_a", "ecod"): [0.9, 0.9], ("2_b", "toll"): [0.5, 0.5],
             ("2_b", "ecod"): [0.4]}                                       # 2_b: ecod's seed 1 missing
    for (f, m), aurocs in cells.items():
        for s, a in enumerate(aurocs):
            run = dict(file=f, method=m, seed=s, auroc=a, seconds=1.0)
            (runs / f"{f}_{m}_s{s}.json").write_text(json.dumps(run))
    summary = adbench.report(str(runs), [0, 1], ["toll", "ecod"], "python benchmarks/adbench.py", str(data),
                             out=str(tmp_path))
    assert summary["toll"]["mean_auroc"] == 0.7 and summary["ecod"]["mean_auroc"] == 0.9
    assert summary["ecod"]["average_rank"] == 1.0 and summary["toll"]["average_rank"] == 2.0
    assert summary["ecod"]["best_on"] == 1 and summary["toll"]["best_on"] == 0
    md = (tmp_path / "adbench.md").read_text()
    assert "| ecod | 0.9 | 1.0 | 1 | 1.0 |" in md                     # mean, rank, files best on, seconds
    assert "1 files complete of 3 in the data folder; not complete yet: 2_b; not started: 1 files" in md
