"""toll.py and cance.py against classical detectors on the ADBench classical tables, on the same splits.

What a user gets by passing an ADBench file straight to a script (`python toll.py --dataset 2_annthyroid.npz`),
next to what scikit-learn's IsolationForest, OneClassSVM and LocalOutlierFactor (novelty) and PyOD's ECOD give
on the same test rows. Benchmark-only: the baselines need `pip install -r benchmarks/requirements.txt`.

Protocol (the same for every method)
    - Data: every `*.npz` (X, y; 1 = anomaly) in --data, ADBench's "Classical" folder. A file of more than 50,000
      rows is first subsampled to 50,000, stratified (the anomaly ratio kept), with numpy's default_rng(0): one
      subsample for every method and seed, written to --cache so that the scripts read exactly those rows.
    - Split: common.split_table, the rule every script applies to an unsplit table: each class shuffled with the
      seed, half of each class (rounded up) is the test set. The baselines train on the normal rows of the other
      half; cance.py too; toll.py holds out 40% of that half (normal and anomalous rows) as its labelled
      validation set (Sec. 4.1's model selection) and trains on the rest of its normal rows.
    - Features standardised with the mean and std of the training rows (the scripts' default for your own tables).
    - Scripts: their command lines with their defaults (`python toll.py --dataset FILE --seed S --json ...`);
      baselines: the libraries' defaults, random_state = seed where there is one. Score: higher = more anomalous
      (negated decision_function / score_samples). Metric: AUROC on the test rows; wall seconds per run (fit and
      scoring; the scripts' include reading the file).
    - Table: per file the mean AUROC over the seeds; per method the mean over files and the average rank (1 = the
      best mean AUROC of a file; ties share their ranks).

    python benchmarks/adbench.py --data ./data/adbench --seeds 0,1,2 --jobs 2      # resumes: finished runs stay
    python benchmarks/adbench.py --report                                           # the table from stored runs

Writes benchmarks/results/adbench/runs/<file>_<method>_s<seed>.json and benchmarks/results/adbench.md / .json.
"""
import argparse
import concurrent.futures
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
from common import row_moments, split_table  # noqa: E402

OUT = os.path.join(HERE, "results", "adbench")
METHODS = ("toll", "cance", "iforest", "ocsvm", "lof", "ecod")
MAX_ROWS = 50_000


def subsample(path, cache):
    """The file itself, or (more than MAX_ROWS rows) its stratified subsample of MAX_ROWS rows, written once."""
    with np.load(path) as d:
        n = len(d["y"])
        if n <= MAX_ROWS:
            return path
        X, y = d["X"], d["y"].reshape(-1).astype(np.int64)
    out = os.path.join(cache, os.path.basename(path))
    if not os.path.exists(out):
        rng, keep = np.random.default_rng(0), []
        for label in (0, 1):
            idx = np.flatnonzero(y == label)
            keep.append(rng.choice(idx, int(round(MAX_ROWS * len(idx) / n)), replace=False))
        keep = np.sort(np.concatenate(keep))
        os.makedirs(cache, exist_ok=True)
        np.savez(out + ".tmp.npz", X=X[keep], y=y[keep])
        os.replace(out + ".tmp.npz", out)
    return out


def baseline(method, X, y, seed):
    """One classical detector on common.split_table's split, standardised with the training rows -> (AUROC, s)."""
    import torch
    from sklearn.metrics import roc_auc_score
    parts = split_table(torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y), seed)
    mean, std = row_moments(parts["train"])
    z = lambda x: ((x - mean) / std).double().numpy()
    x_train, (x_test, y_test) = z(parts["train"]), parts["test"]
    t0 = time.time()
    if method == "iforest":
        from sklearn.ensemble import IsolationForest
        scores = -IsolationForest(random_state=seed).fit(x_train).score_samples(z(x_test))
    elif method == "ocsvm":
        from sklearn.svm import OneClassSVM
        scores = -OneClassSVM().fit(x_train).decision_function(z(x_test))
    elif method == "lof":
        from sklearn.neighbors import LocalOutlierFactor
        scores = -LocalOutlierFactor(novelty=True).fit(x_train).decision_function(z(x_test))
    else:
        from pyod.models.ecod import ECOD
        scores = ECOD().fit(x_train).decision_function(z(x_test))
    return float(roc_auc_score(y_test.numpy(), scores)), time.time() - t0


def run_one(path, method, seed, runs):
    """One (file, method, seed): its JSON in runs/ (kept: a finished run is not repeated)."""
    name = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(runs, f"{name}_{method}_s{seed}.json")
    if os.path.exists(out):
        return out
    t0 = time.time()
    if method in ("toll", "cance"):
        cmd = [sys.executable, f"{method}.py", "--dataset", os.path.relpath(path, REPO), "--seed", str(seed),
               "--json", os.path.relpath(out + ".run", REPO)]
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
        if p.returncode != 0:
            with open(out.replace(".json", ".failed"), "w") as f:
                f.write(f"{' '.join(cmd)}\nexit {p.returncode}\n{p.stderr[-3000:]}")
            return None
        with open(out + ".run") as f:
            r = json.load(f)
        os.remove(out + ".run")
        result = dict(auroc=r["auroc"], seconds=round(time.time() - t0, 1), command="python " + " ".join(cmd[1:]))
    else:
        with np.load(path) as d:
            X, y = d["X"], d["y"].reshape(-1).astype(np.int64)
        auroc, seconds = baseline(method, X, y, seed)
        result = dict(auroc=round(auroc, 4), seconds=round(seconds, 1))
    with open(out + ".tmp", "w") as f:
        json.dump(dict(file=name, method=method, seed=seed, **result), f, indent=1)
    os.replace(out + ".tmp", out)
    return out


def ranks(values):
    """Average ranks, 1 = largest; ties share the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    r = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def report(runs, seeds, methods, command, data=None, out=os.path.join(HERE, "results")):
    rows = {}
    for f in glob.glob(os.path.join(runs, "*.json")):
        with open(f) as fh:
            r = json.load(fh)
        if r["seed"] in seeds and r["method"] in methods:
            rows.setdefault(r["file"], {}).setdefault(r["method"], []).append(r)
    files = sorted((f for f, m in rows.items() if all(len(m.get(k, [])) == len(seeds) for k in methods)),
                   key=lambda f: int(f.split("_")[0]))
    mean = {f: {m: float(np.mean([r["auroc"] for r in rows[f][m]])) for m in methods} for f in files}
    rank = {f: dict(zip(methods, ranks([mean[f][m] for m in methods]))) for f in files}
    secs = {m: float(np.mean([r["seconds"] for f in files for r in rows[f][m]])) if files else None for m in methods}
    summary = {m: dict(mean_auroc=round(float(np.mean([mean[f][m] for f in files])), 4) if files else None,
                       average_rank=round(float(np.mean([rank[f][m] for f in files])), 2) if files else None,
                       best_on=sum(mean[f][m] == max(mean[f].values()) for f in files),     # ties count for each
                       seconds_per_run=None if secs[m] is None else round(secs[m], 1)) for m in methods}
    missing = sorted(set(rows) - set(files))
    named = {os.path.splitext(os.path.basename(q))[0] for q in glob.glob(os.path.join(data or "", "*.npz"))}
    unstarted = len(named - set(rows)) if data else 0                  # files in --data without a run yet
    lines = ["# toll.py and cance.py against classical detectors (ADBench classical tables)", "",
             f"Written by `{command}`. Protocol: benchmarks/adbench.py's docstring (common.split_table's split, the "
             "same test rows for every method; training rows standardised; the scripts' defaults; the libraries' "
             f"defaults). Seeds {','.join(map(str, seeds))}; AUROC on the test rows, mean over the seeds; files of "
             f"more than {MAX_ROWS:,} rows subsampled to {MAX_ROWS:,} (stratified, seed 0). Device: CPU, one thread "
             "per run (seconds: the wall time of one run; --jobs runs go side by side).", "",
             f"{len(files)} files complete" + (f" of {len(named)} in the data folder" if named else "") +
             (f"; not complete yet: {', '.join(missing)}" if missing else "") +
             (f"; not started: {unstarted} files (the command above resumes)" if unstarted else "") + ".",
             "", "| method | mean AUROC | average rank | best on (files; ties count for each) | seconds per run |",
             "|---|---|---|---|---|"]
    for m in sorted(methods, key=lambda m: summary[m]["average_rank"] or 0):
        s = summary[m]
        lines.append(f"| {m} | {s['mean_auroc']} | {s['average_rank']} | {s['best_on']} | {s['seconds_per_run']} |")
    lines += ["", "| file | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for f in files:
        best = max(mean[f].values())
        cell = lambda m: f"**{mean[f][m]:.4f}**" if mean[f][m] == best else f"{mean[f][m]:.4f}"
        lines.append(f"| {f} | " + " | ".join(cell(m) for m in methods) + " |")
    with open(os.path.join(out, "adbench.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "adbench.json"), "w") as fh:
        json.dump(dict(command=command, seeds=seeds, summary=summary, per_file=mean), fh, indent=1)
    return summary


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.path.join(".", "data", "adbench"), help="folder of ADBench *.npz files")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--files", default=None, help="comma list of file names (default: every *.npz in --data)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (one thread each)")
    p.add_argument("--cache", default=os.path.join(OUT, "cache"), help="where subsampled files are written")
    p.add_argument("--report", action="store_true", help="only rewrite the table from the stored runs")
    args = p.parse_args(argv)
    seeds, methods = [int(s) for s in args.seeds.split(",")], args.methods.split(",")
    runs = os.path.join(OUT, "runs")
    os.makedirs(runs, exist_ok=True)
    command = f"python benchmarks/adbench.py --data {args.data} --seeds {args.seeds}" + (
        f" --methods {args.methods}" if args.methods != ",".join(METHODS) else "")      # the sweep that writes it
    if not args.report:
        paths = sorted(glob.glob(os.path.join(args.data, "*.npz")), key=os.path.getsize)   # small files first
        if args.files:
            paths = [q for q in paths if os.path.basename(q) in args.files.split(",")]
        if not paths:
            raise SystemExit(f"error: no .npz files in {args.data}. Point --data at ADBench's Classical folder")
        jobs = [(subsample(q, args.cache), m, s) for q in paths for s in seeds for m in methods]
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for i, out in enumerate(pool.map(lambda j: run_one(*j, runs), jobs)):
                print(f"{i + 1}/{len(jobs)} {jobs[i][1]} {os.path.basename(jobs[i][0])} s{jobs[i][2]}: "
                      f"{'failed' if out is None else 'done'}", flush=True)
                if (i + 1) % len(methods) == 0:
                    report(runs, seeds, methods, command, args.data)
    print(json.dumps(report(runs, seeds, methods, command, args.data), indent=1))


if __name__ == "__main__":
    main()
