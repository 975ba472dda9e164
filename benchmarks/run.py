"""Run one of the scripts over normal classes x seeds and tabulate the result next to the paper's figure.

Each (class, seed) is one subprocess of the script, exactly as a user would start it:

    python <script> <flags> --normal C --seed S --json benchmarks/results/<name>/runs/c<C>_s<S>.json

A run whose JSON exists is finished and never repeated, so an interrupted sweep resumes where it stopped
(rerun the same command). A run that exits non-zero, or exits 0 without writing its JSON, leaves
runs/c<C>_s<S>.failed (exit code and the tail of stderr); it is reported in the table, does not stop the
sweep, and is tried again on the next invocation unless --skip-failed is given. After every run the report is
rewritten: benchmarks/results/<name>.json and <name>.md with, per class, the mean +- sample std (n-1) over
seeds of the main metric (auroc; f1 on tabular sets) and of every <metric>_<variant> and auroc_<variant> key,
the average over classes, the paper's figure from benchmarks/paper_tables.json, ours minus the paper, wall
seconds and device.

Usage
    # explicit flags after "--" (passed to the script unchanged)
    python benchmarks/run.py --script toll.py --name toll_fmnist_try --classes 0-9 --seeds 0,1 \\
        --paper toll/table3/fashion-mnist -- --dataset fashion-mnist --iters 150 --data-root /work/shared/data

    # a named protocol from benchmarks/protocols.json (flags, default seeds and paper table per dataset)
    python benchmarks/run.py --script toll.py --protocol cpu --dataset fashion-mnist -- --data-root /work/shared/data
    python benchmarks/run.py --script toll.py --protocol cpu --dataset arrhythmia      # no classes: seeds only

    python benchmarks/run.py --script toll.py --protocol cpu --dataset mnist --dry-run   # commands still to run
    python benchmarks/run.py --list                      # protocols and paper tables known
    python benchmarks/run.py --name toll_fashion-mnist_cpu --report   # re-render from stored runs, run nothing
    python benchmarks/run.py --readme                    # print README's results section from results/*.json
    python benchmarks/run.py --readme --write            # replace it in README.md between the markers

Exit status 1 when any requested run has failed (the tables are still written), else 0.
Standard library only (plus the scripts' own dependencies in the subprocesses). Runs are sequential, with the
repository root as working directory: relative paths in the script's flags are relative to it. Flags under one
--name are fixed at its first run (a different set is refused, so results are never mixed); classes and seeds
may be extended. Each run's stdout/stderr are kept in runs/<key>.log and .err, its wall time, exact command and
host in runs/<key>.meta.json.
"""
import argparse
import datetime
import glob
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"
# number of classes per image dataset (common.IMAGE_DATASETS; cifar100 = 20 superclasses). Any other dataset
# (arrhythmia, thyroid, abalone) has no --normal to vary: seeds only.
N_CLASSES = {"mnist": 10, "fashion-mnist": 10, "digits": 10, "cifar10": 10, "cifar100": 20, "svhn": 10}


# ------------------------------------------------------------------------------------------ small helpers

def parse_list(text, what):
    """'0-9' / '0,2,5' / '0-3,7' -> sorted distinct ints; 'none' or '' -> []."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return []
    out = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part)
        try:
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise SystemExit(f"error: --{what} must look like 0-9, 0,2,5 or 0-3,7 (got '{text}')") from None
    return sorted(set(out))


def write_atomic(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def mean_std(values):
    """Mean and sample standard deviation (n-1); std is None for a single value."""
    n = len(values)
    if n == 0:
        return None, None
    m = sum(values) / n
    if n == 1:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def host_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {"cpu": cpu, "cpu_cores_usable": usable, "python": platform.python_version(), "os": platform.platform(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset (torch uses every usable core)")}
    try:  # the GPU's name, where there is one (the scripts' JSON only says "cuda")
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            info["gpu"] = out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def host_text(h):
    threads = h.get("OMP_NUM_THREADS")
    threads = f", OMP_NUM_THREADS={threads}" if threads and threads[0].isdigit() else ""
    return f"{h.get('gpu') + ', ' if h.get('gpu') else ''}{h['cpu']}, {h['cpu_cores_usable']} usable cores{threads}"


def run_key(cls, seed):
    return f"s{seed}" if cls is None else f"c{cls}_s{seed}"


# ------------------------------------------------------------------------------------------ protocols and paper tables

def load_protocols(path):
    return read_json(path) if os.path.exists(path) else {}


def resolve_protocol(protocols, script, name, dataset):
    """-> (flags, default seeds, paper key, note) of a named protocol for one script and dataset."""
    stem = os.path.basename(script)
    entry = protocols.get(stem)
    if entry is None:
        raise SystemExit(f"error: benchmarks/protocols.json has no entry for {stem}")
    proto = entry.get("protocols", {}).get(name)
    if proto is None:
        raise SystemExit(f"error: {stem} has no protocol '{name}' (known: {', '.join(entry.get('protocols', {}))})")
    if proto.get("args") is None:
        raise SystemExit(f"error: protocol '{name}' of {stem} is not defined yet: {proto.get('note', 'TODO')}")
    flags, seeds, note = list(proto["args"]), proto.get("seeds", "0"), proto.get("note", "")
    per = proto.get("datasets", {}).get(dataset, {}) if dataset else {}
    if per:
        if per.get("args") is not None:
            flags = list(per["args"])
        seeds = per.get("seeds", seeds)
        note = per.get("note", note)
    paper = entry.get("paper_tables", {}).get(dataset) if dataset else None
    return flags, seeds, paper, note


def load_paper(path, key):
    """The paper_tables.json entry `key` (None if no key). Values are converted to the scripts' 0..1 scale."""
    if not key:
        return None
    tables = read_json(path) if os.path.exists(path) else {}
    if key not in tables.get("tables", {}):
        raise SystemExit(f"error: {os.path.relpath(path)} has no table '{key}' (see: python benchmarks/run.py --list)")
    t = dict(tables["tables"][key])
    t["key"] = key
    scale = 100.0 if t.get("unit") == "percent" else 1.0
    t["per_class_01"] = {str(k): (None if v is None else v / scale) for k, v in (t.get("values") or {}).items()}
    t["average_01"] = None if t.get("average") is None else t["average"] / scale
    return t


# ------------------------------------------------------------------------------------------ running

def run_one(cfg, runs_dir, cls, seed, timeout):
    """One subprocess of the script -> ('ok' | 'failed', wall seconds). Writes <key>.json (the script),
    <key>.log/.err (its output), and <key>.meta.json on success or <key>.failed otherwise."""
    key = run_key(cls, seed)
    out_json = os.path.join(runs_dir, key + ".json")
    failed = os.path.join(runs_dir, key + ".failed")
    cmd = [sys.executable, cfg["script_path"], *cfg["script_args"]]
    if cls is not None:
        cmd += ["--normal", str(cls)]
    cmd += ["--seed", str(seed), "--json", out_json]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.time()
    with open(os.path.join(runs_dir, key + ".log"), "w") as out, open(os.path.join(runs_dir, key + ".err"), "w") as err:
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=err, cwd=REPO, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = round(time.time() - t0, 1)
    shown = ["python"] + [os.path.relpath(c, REPO) if c in (cfg["script_path"], out_json) else c for c in cmd[1:]]
    meta = {"command": shlex.join(shown), "wall_s": wall, "returncode": rc, "host": host_info(),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if rc == 0 and os.path.exists(out_json):
        write_atomic(os.path.join(runs_dir, key + ".meta.json"), json.dumps(meta, indent=1))
        if os.path.exists(failed):
            os.remove(failed)
        return "ok", wall
    with open(os.path.join(runs_dir, key + ".err")) as f:
        tail = f.read().splitlines()[-30:]
    if rc == 0:
        tail.append(f"(exit status 0, but the script wrote no {os.path.basename(out_json)})")
    if rc == "timeout":
        tail.append(f"(killed after --timeout {timeout}s)")
    meta["stderr_tail"] = "\n".join(tail)
    write_atomic(failed, json.dumps(meta, indent=1))
    return "failed", wall


def sweep(cfg, runs_dir, skip_failed, timeout, report, log=print):
    todo = [(c, s) for c in (cfg["classes"] or [None]) for s in cfg["seeds"]]
    n_new = 0
    for i, (c, s) in enumerate(todo, 1):
        key = run_key(c, s)
        what = f"[{i}/{len(todo)}] {'' if c is None else f'class {c} '}seed {s}"
        if os.path.exists(os.path.join(runs_dir, key + ".json")):
            continue
        if skip_failed and os.path.exists(os.path.join(runs_dir, key + ".failed")):
            log(f"{what}: failed before, skipped (--skip-failed)", flush=True)
            continue
        log(f"{what}: running", flush=True)
        status, wall = run_one(cfg, runs_dir, c, s, timeout)
        n_new += 1
        if status == "ok":
            r = read_json(os.path.join(runs_dir, key + ".json"))
            m = cfg.get("metric") or ("f1" if "f1" in r else "auroc")
            log(f"{what}: {m}={r.get(m)} ({wall}s)", flush=True)
        else:
            log(f"{what}: FAILED, see {os.path.relpath(os.path.join(runs_dir, key + '.failed'), REPO)}", flush=True)
        report()
    return n_new


# ------------------------------------------------------------------------------------------ aggregation

def aggregate(cfg, runs_dir, paper):
    """Collect the run JSONs and .failed files of the requested classes x seeds into one summary dict."""
    classes = cfg["classes"] or [None]
    runs = {}
    for c in classes:
        for s in cfg["seeds"]:
            key = run_key(c, s)
            base = os.path.join(runs_dir, key)
            if os.path.exists(base + ".json"):
                r = read_json(base + ".json")
                meta = read_json(base + ".meta.json") if os.path.exists(base + ".meta.json") else {}
                runs[(c, s)] = ("ok", r, meta)
            elif os.path.exists(base + ".failed"):
                runs[(c, s)] = ("failed", None, read_json(base + ".failed"))
    ok = [r for st, r, _ in runs.values() if st == "ok"]
    metric = cfg.get("metric") or ("f1" if ok and all("f1" in r for r in ok) else "auroc")
    variants = sorted({k for r in ok for k in r if k.startswith(metric + "_") and isinstance(r[k], (int, float))})
    if metric != "auroc":   # tabular: the F1 variants, then AUROC and its variants
        variants += (["auroc"] if any("auroc" in r for r in ok) else []) + sorted(
            {k for r in ok for k in r if k.startswith("auroc_") and isinstance(r[k], (int, float))})
    rows, failed, hosts = [], [], set()
    for c in classes:
        vals, var_vals, secs, walls, devices, n_fail, missing = [], {v: [] for v in variants}, [], [], set(), 0, 0
        for s in cfg["seeds"]:
            st, r, meta = runs.get((c, s), (None, None, None))
            if st is None:
                missing += 1
                continue
            if st == "failed":
                n_fail += 1
                failed.append({"class": c, "seed": s, "returncode": meta.get("returncode"),
                               "stderr_tail": meta.get("stderr_tail", ""), "command": meta.get("command", "")})
                continue
            if not isinstance(r.get(metric), (int, float)):
                n_fail += 1
                failed.append({"class": c, "seed": s, "returncode": 0, "command": meta.get("command", ""),
                               "stderr_tail": f"the run's JSON has no numeric '{metric}' key"})
                continue
            vals.append(float(r[metric]))
            for v in variants:
                if isinstance(r.get(v), (int, float)):
                    var_vals[v].append(float(r[v]))
            if isinstance(r.get("seconds"), (int, float)):
                secs.append(float(r["seconds"]))
            if "wall_s" in meta:
                walls.append(float(meta["wall_s"]))
            devices.add(str(r.get("device", "unknown")))
            if meta.get("host"):
                hosts.add(host_text(meta["host"]))
        m, sd = mean_std(vals)
        pv = None
        if paper:
            pv = paper["per_class_01"].get("all" if c is None else str(c))
            if pv is None and c is None:
                pv = paper["average_01"]
        rows.append({"class": c, "n": len(vals), "n_failed": n_fail, "n_missing": missing, "values": vals,
                     "mean": m, "std": sd,
                     "variants": {v: dict(zip(("mean", "std"), mean_std(var_vals[v])), n=len(var_vals[v]))
                                  for v in variants},
                     "paper": pv, "diff": None if m is None or pv is None else m - pv,
                     "seconds_mean": mean_std(secs)[0], "wall_s_total": sum(walls), "devices": sorted(devices)})
    done = [r for r in rows if r["mean"] is not None]
    avg = {"mean": mean_std([r["mean"] for r in done])[0], "classes_with_results": len(done),
           "classes_requested": len(rows),
           "variants": {v: mean_std([r["variants"][v]["mean"] for r in done if r["variants"][v]["mean"] is not None])[0]
                        for v in variants}}
    if paper:
        # the paper's average: its printed one where the table has it, else the mean of its per-class figures
        pvals = [r["paper"] for r in rows if r["paper"] is not None]
        avg["paper"] = paper["average_01"] if paper["average_01"] is not None else (
            mean_std(pvals)[0] if len(pvals) == len(rows) else None)
        avg["diff"] = None if avg["mean"] is None or avg["paper"] is None or len(done) < len(rows) else avg["mean"] - avg["paper"]
    return {"name": cfg["name"], "script": cfg["script"], "protocol": cfg.get("protocol"), "dataset": cfg.get("dataset"),
            "protocol_note": cfg.get("protocol_note"), "command": cfg["command"], "run_command": cfg["run_command"],
            "script_args": cfg["script_args"], "classes": cfg["classes"], "seeds": cfg["seeds"], "metric": metric,
            "variants": variants, "rows": rows, "average": avg, "failed": failed,
            "runs_ok": sum(r["n"] for r in rows), "runs_failed": len(failed),
            "runs_missing": sum(r["n_missing"] for r in rows),
            "wall_s_total": round(sum(r["wall_s_total"] for r in rows), 1),
            "devices": sorted({d for r in rows for d in r["devices"]}), "hosts": sorted(hosts),
            "paper": None if not paper else {k: paper.get(k) for k in
                                             ("key", "paper", "table", "where", "metric", "unit", "source", "note")},
            "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# ------------------------------------------------------------------------------------------ rendering

def pct(x, signed=False):
    """0..1 -> percent with two decimals (the papers print AUROC/F1 in percent)."""
    if x is None:
        return "–"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def pm(mean, std):
    if mean is None:
        return "–"
    return pct(mean) if std is None else f"{pct(mean)} ± {100 * std:.2f}"


def render_md(s):
    metric, paper = s["metric"], s["paper"]
    L = [f"# {s['name']}", ""]
    L.append(f"`{s['script']}`" + (f", protocol `{s['protocol']}`" if s["protocol"] else "")
             + (f", dataset `{s['dataset']}`" if s["dataset"] else "") + f"; updated {s['updated']}.")
    L += ["", "Command (rerun it to resume; finished runs are not repeated):", "", "```", s["command"], "```", "",
          "Each run:", "", "```", s["run_command"], "```", ""]
    if s.get("protocol_note"):
        L += [f"Protocol: {s['protocol_note']}", ""]
    cls_txt = "none (seeds only)" if not s["classes"] else ",".join(map(str, s["classes"]))
    L.append(f"Classes: {cls_txt}. Seeds: {','.join(map(str, s['seeds']))}. Runs: {s['runs_ok']} finished, "
             f"{s['runs_failed']} failed, {s['runs_missing']} not run yet. Wall time of the runs: {s['wall_s_total']:.0f} s. "
             f"Device: {', '.join(s['devices']) or '–'} (host: {'; '.join(s['hosts']) or '–'}).")
    L.append("")
    if paper:
        L.append(f"Paper: {paper['paper']}, {paper['table']} ({paper.get('where') or 'page/section not recorded'}), "
                 f"metric {paper.get('metric')}; source {paper.get('source') or '–'}."
                 + (f" Note: {paper['note']}" if paper.get("note") else ""))
    else:
        L.append("Paper: no reference table given (--paper).")
    L += ["", f"Numbers in percent: ours = mean ± sample std (n-1) over seeds of `{metric}`; "
          "Δ = ours − paper in percentage points.", ""]
    head = ["class", "n", f"ours {metric}"] + [f"{v}" for v in s["variants"]] + ["paper", "Δ", "s/run", "device", "note"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    for r in s["rows"]:
        note = []
        if r["n_failed"]:
            note.append(f"**{r['n_failed']} FAILED**")
        if r["n_missing"]:
            note.append(f"{r['n_missing']} not run")
        cells = ["all" if r["class"] is None else str(r["class"]), str(r["n"]), pm(r["mean"], r["std"])]
        cells += [pm(r["variants"][v]["mean"], r["variants"][v]["std"]) for v in s["variants"]]
        cells += [pct(r["paper"]), pct(r["diff"], signed=True),
                  "–" if r["seconds_mean"] is None else f"{r['seconds_mean']:.0f}", ",".join(r["devices"]) or "–",
                  "; ".join(note)]
        L.append("| " + " | ".join(cells) + " |")
    if s["classes"]:
        a = s["average"]
        cells = ["**average**", f"{a['classes_with_results']}/{a['classes_requested']} classes", pct(a["mean"])]
        cells += [pct(a["variants"][v]) for v in s["variants"]]
        cells += [pct(a.get("paper")), pct(a.get("diff"), signed=True), "", "", ""]
        L.append("| " + " | ".join(cells) + " |")
        if a["classes_with_results"] < a["classes_requested"]:
            L += ["", "The average covers only the classes with results; Δ of the average is left out until all are done."]
    if s["failed"]:
        L += ["", "## Failed runs", ""]
        for f in s["failed"]:
            who = ("" if f["class"] is None else f"class {f['class']} ") + f"seed {f['seed']}"
            L += [f"- {who}: exit status {f['returncode']}; `{f['command']}`", "", "```",
                  *(f["stderr_tail"] or "(no stderr)").splitlines()[-15:], "```", ""]
    return "\n".join(L).rstrip() + "\n"


def render_readme_section(results_dir):
    """README's results section: one row per benchmarks/results/*.json, generated, never typed."""
    files = sorted(glob.glob(os.path.join(results_dir, "*.json")))
    L = [README_BEGIN, "",
         "Generated by `python benchmarks/run.py --readme --write` from `benchmarks/results/*.json`; do not edit by hand. "
         "AUROC/F1 in percent, mean over classes of the per-class mean over seeds; Δ = ours − paper (percentage "
         "points). Each name links to the per-class table with the exact command and protocol. 'other' = the "
         "same runs' other reported variants (averaged the same way); 'wall' = the runs' summed wall time.", ""]
    if not files:
        L += ["No benchmark results yet.", "", README_END]
        return "\n".join(L) + "\n"
    L += ["| benchmark | script | protocol | dataset | classes × seeds | runs ok / failed | metric | ours | other | paper | Δ "
          "| wall | device |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in files:
        s = read_json(path)
        if "rows" not in s or "average" not in s:       # e.g. speed.json
            continue
        a = s["average"]
        ours = a["mean"] if s["classes"] else s["rows"][0]["mean"]
        paper = a.get("paper") if s["classes"] else s["rows"][0]["paper"]
        diff = a.get("diff") if s["classes"] else s["rows"][0]["diff"]
        ncls = len(s["classes"]) if s["classes"] else "–"
        if s["classes"]:
            other = {k: v for k, v in (a.get("variants") or {}).items()}
        else:
            other = {k: v.get("mean") for k, v in (s["rows"][0].get("variants") or {}).items()}
        other = ", ".join(f"{k} {pct(v)}" for k, v in other.items() if v is not None) or "–"
        rel = os.path.relpath(os.path.splitext(path)[0] + ".md", REPO)
        L.append(f"| [{s['name']}]({rel}) | `{s['script']}` | {s.get('protocol') or 'custom'} | {s.get('dataset') or '–'} | "
                 f"{ncls} × {len(s['seeds'])} | {s['runs_ok']} / {s['runs_failed']} | {s['metric']} | {pct(ours)} | {other} | "
                 f"{pct(paper)} | {pct(diff, signed=True)} | {s['wall_s_total'] / 60:.0f} min | {', '.join(s['devices']) or '–'} |")
    L += ["", README_END]
    return "\n".join(L) + "\n"


def replace_readme(readme_path, section):
    with open(readme_path) as f:
        text = f.read()
    i, j = text.find(README_BEGIN), text.find(README_END)
    if i < 0 or j < i:
        raise SystemExit(f"error: {readme_path} has no '{README_BEGIN}' ... '{README_END}' markers; add them where "
                         "the results section belongs, then rerun")
    write_atomic(readme_path, text[:i] + section.rstrip("\n") + text[j + len(README_END):])


# ------------------------------------------------------------------------------------------ main

def parse_args(argv):
    if "--" in argv:
        k = argv.index("--")
        argv, extra = argv[:k], argv[k + 1:]
    else:
        extra = []
    p = argparse.ArgumentParser(description="Run a script over normal classes x seeds; tabulate against the paper.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="Flags after '--' go to the script unchanged (after the protocol's).")
    p.add_argument("--script", help="the script to run, relative to the repository root (toll.py, ...)")
    p.add_argument("--name", help="results go to RESULTS_DIR/NAME/ and NAME.{json,md} "
                                  "(default with --protocol: <stem>_<dataset>_<protocol>)")
    p.add_argument("--protocol", help="named protocol from protocols.json (cpu, paper): its flags, seeds, paper table")
    p.add_argument("--dataset", help="adds --dataset to the script's flags; picks the protocol's per-dataset "
                                     "settings, the paper table and the default classes")
    p.add_argument("--classes", default=None,
                   help="normal classes, e.g. 0-9 or 0,3,8; 'none' = seeds only, no --normal (tabular sets). "
                        "Default: every class of --dataset, none for tabular sets")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 0-4 or 0,1 (default: the protocol's, else 0)")
    p.add_argument("--paper", default=None, help="key of the reference table in paper_tables.json "
                                                 "(default: the protocol's for --dataset)")
    p.add_argument("--metric", default=None, help="main metric key (default: f1 if every run reports it, else auroc)")
    p.add_argument("--timeout", type=float, default=None, help="seconds after which one run is killed and recorded as failed")
    p.add_argument("--skip-failed", action="store_true", help="do not retry runs that failed before")
    p.add_argument("--report", action="store_true", help="only re-render NAME's report from its stored runs")
    p.add_argument("--dry-run", action="store_true", help="print the commands of the runs still to do; run nothing")
    p.add_argument("--list", action="store_true", help="list the protocols and paper tables, then exit")
    p.add_argument("--readme", action="store_true", help="print README's results section built from RESULTS_DIR/*.json")
    p.add_argument("--write", action="store_true", help="with --readme: replace the section in README.md")
    p.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--protocols", default=os.path.join(HERE, "protocols.json"))
    p.add_argument("--paper-tables", default=os.path.join(HERE, "paper_tables.json"))
    p.add_argument("--readme-file", default=os.path.join(REPO, "README.md"))
    args = p.parse_args(argv)
    args.extra = extra
    return args, p


def list_known(args):
    protocols = load_protocols(args.protocols)
    for stem, entry in protocols.items():
        if stem.startswith("_"):
            continue
        print(stem)
        for name, proto in entry.get("protocols", {}).items():
            flags = "(TODO)" if proto.get("args") is None else " ".join(proto["args"]) or "(the script's defaults)"
            print(f"  {name:6s} {flags}  seeds {proto.get('seeds', '0')}")
            for ds, per in proto.get("datasets", {}).items():
                f = flags if per.get("args") is None else " ".join(per["args"]) or "(the script's defaults)"
                print(f"         {ds}: {f}  seeds {per.get('seeds', proto.get('seeds', '0'))}")
        for ds, key in entry.get("paper_tables", {}).items():
            print(f"  paper table for {ds}: {key}")
    tables = read_json(args.paper_tables).get("tables", {}) if os.path.exists(args.paper_tables) else {}
    print("paper tables:")
    for key, t in tables.items():
        state = "transcribed" if any(v is not None for v in (t.get("values") or {}).values()) or t.get("average") is not None else "NOT transcribed"
        print(f"  {key}: {t.get('paper', '')[:40]} {t.get('table')} [{state}]")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, p = parse_args(argv)
    if args.list:
        list_known(args)
        return 0
    if args.readme:
        section = render_readme_section(args.results_dir)
        if args.write:
            replace_readme(args.readme_file, section)
            print(f"replaced the results section of {args.readme_file}")
        else:
            print(section, end="")
        return 0
    if args.write:
        p.error("--write goes with --readme")

    cfg_path = None
    if args.report:
        if not args.name:
            p.error("--report needs --name")
        cfg_path = os.path.join(args.results_dir, args.name, "config.json")
        if not os.path.exists(cfg_path):
            p.error(f"no stored runs for '{args.name}' ({cfg_path} is missing)")
        cfg = read_json(cfg_path)
    else:
        if not args.script:
            p.error("--script is required (or --report / --readme / --list)")
        script_path = args.script if os.path.isabs(args.script) else os.path.join(REPO, args.script)
        if not os.path.exists(script_path):
            p.error(f"script not found: {script_path}")
        flags, seeds, paper_key, note = [], "0", None, None
        if args.protocol:
            flags, seeds, paper_key, note = resolve_protocol(load_protocols(args.protocols), args.script,
                                                             args.protocol, args.dataset)
        if args.dataset:
            flags = flags + ["--dataset", args.dataset]
        script_args = flags + args.extra
        dataset = args.dataset
        if dataset is None and "--dataset" in script_args[:-1]:   # given after "--": still label and default classes
            dataset = script_args[script_args.index("--dataset") + 1]
        if "--normal" in script_args or "--seed" in script_args or "--json" in script_args:
            p.error("--normal, --seed and --json are set by the runner per run; use --classes and --seeds")
        if args.classes is not None:
            classes = parse_list(args.classes, "classes")
        elif dataset is not None:
            classes = list(range(N_CLASSES[dataset])) if dataset in N_CLASSES else []
        else:
            p.error("give --classes (e.g. 0-9, or none for tabular sets) or --dataset")
        seeds = parse_list(args.seeds if args.seeds is not None else seeds, "seeds")
        if not seeds:
            p.error("--seeds must name at least one seed")
        name = args.name or (args.protocol and args.dataset and
                             f"{os.path.splitext(os.path.basename(args.script))[0]}_{args.dataset}_{args.protocol}")
        if not name:
            p.error("--name is required without --protocol and --dataset")
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            p.error(f"--name may hold letters, digits and _.+- only (got '{name}')")
        stem_cmd = shlex.join(["python", os.path.relpath(script_path, REPO), *script_args])
        cfg = {"name": name, "script": os.path.relpath(script_path, REPO), "script_path": script_path,
               "script_args": script_args, "classes": classes, "seeds": seeds, "protocol": args.protocol,
               "dataset": dataset, "protocol_note": note, "paper": args.paper or paper_key,
               "metric": args.metric,
               "command": shlex.join(["python", "benchmarks/run.py", *argv]),
               "run_command": stem_cmd + (" --normal C" if classes else "") + f" --seed S --json "
                              f"{os.path.relpath(os.path.join(args.results_dir, name, 'runs'), REPO)}/"
                              + ("c<C>_s<S>.json" if classes else "s<S>.json")}
        cfg_path = os.path.join(args.results_dir, name, "config.json")
        if os.path.exists(cfg_path):
            old = read_json(cfg_path)
            if (old["script"], old["script_args"]) != (cfg["script"], cfg["script_args"]):
                raise SystemExit(
                    f"error: results/{name} holds runs of `{shlex.join([old['script'], *old['script_args']])}`, not "
                    f"`{shlex.join([cfg['script'], *cfg['script_args']])}`; mixing them would be wrong. Use another "
                    f"--name, or delete {os.path.dirname(cfg_path)} to start over")
        if not args.dry_run:
            write_atomic(cfg_path, json.dumps(cfg, indent=1))

    paper = load_paper(args.paper_tables, cfg.get("paper"))
    runs_dir = os.path.join(args.results_dir, cfg["name"], "runs")
    out_base = os.path.join(args.results_dir, cfg["name"])

    def report():
        s = aggregate(cfg, runs_dir, paper)
        write_atomic(out_base + ".json", json.dumps(s, indent=1))
        write_atomic(out_base + ".md", render_md(s))
        return s

    if args.dry_run:
        todo = [(c, s) for c in (cfg["classes"] or [None]) for s in cfg["seeds"]
                if not os.path.exists(os.path.join(runs_dir, run_key(c, s) + ".json"))]
        for c, s in todo:
            extra = ([] if c is None else ["--normal", str(c)]) + ["--seed", str(s), "--json", os.path.relpath(
                os.path.join(runs_dir, run_key(c, s) + ".json"), REPO)]
            print(shlex.join(["python", cfg["script"], *cfg["script_args"], *extra]))
        print(f"{len(todo)} run(s) to do")
        return 0
    os.makedirs(runs_dir, exist_ok=True)
    if not args.report:
        n = sweep(cfg, runs_dir, args.skip_failed, args.timeout, report)
        print(f"{n} run(s) started this time", flush=True)
    s = report()
    print(f"wrote {os.path.relpath(out_base, REPO)}.md and .json: {s['runs_ok']} runs finished, "
          f"{s['runs_failed']} failed, {s['runs_missing']} not run", flush=True)
    return 1 if s["runs_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
