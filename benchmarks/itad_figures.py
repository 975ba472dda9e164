"""ITAD's AUROC over training (the paper's Fig. 2: "the AUROC result every 5 epochs during the training process ...
with different beta", Sec. IV-B) from runs of `itad.py --curve-every K --json FILE`: documentation of itad.py, not
part of the method. Needs matplotlib (benchmarks/requirements.txt).

    python benchmarks/itad_figures.py                 # benchmarks/results/itad_curves*/*.json
    python benchmarks/itad_figures.py a.json b.json   # your own runs

Writes benchmarks/results/itad_curves.md: a summary row per run (final and best AUROC, Fig. 3's mean ||z||_2 of
normal / anomalous test codes, L_NCE and L_H of the last steps as Sec. IV-B compares them, dims_alive), then each
run's curve; and one figure per code size d in benchmarks/results/figures/ (itad_curves.png for d = 128,
itad_curves_d<d>.png for the others): four panels against the training step (the Eq. 23 score's test AUROC with
BatchNorm statistics re-estimated on the test set, solid, and with training statistics, dashed; the InfoNCE loss;
the mean ||z||_2 of normal, solid, and anomalous, dashed, test codes; the fraction of code dimensions alive).
"""
import argparse
import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def weight(r):
    """The entropy term's weight per code dimension: beta (sum, Alg. 1 line 18) or beta / d (mean, L1)."""
    d = r["config"]["nrkhs"]
    return r["beta"] / d if r.get("entropy_reduce", "sum") == "mean" else r["beta"]


def label(run):
    r = run["result"]
    reduce = "" if r.get("entropy_reduce", "sum") == "sum" else f", {r['entropy_reduce']}"
    return (f"d {r['config']['nrkhs']}, beta {r['beta']:g}{reduce}" + (f", seed {r['seed']}" if r["seed"] else "")
            + (f", {r['model']}" if r.get("model", "base") != "base" else ""))


def load(paths):
    runs = []
    for path in paths:
        with open(path) as f:
            r = json.load(f)
        if not r.get("curve"):
            raise SystemExit(f"error: {path} holds no 'curve'. Run itad.py with --curve-every K --json {path}")
        runs.append({"path": path, "result": r, "curve": r["curve"]})
    key = lambda run: (run["result"]["config"]["nrkhs"], run["result"].get("entropy_reduce", "sum"),
                       run["result"]["beta"], run["result"]["seed"])
    return sorted(runs, key=key)


def summary(runs):
    lines = ["| run | weight per dimension | final auroc | best auroc (step) | ‖z‖ normal / anomalous | L_NCE | L_H | "
             "dims_alive | s |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        r, best = run["result"], max(run["curve"], key=lambda p: p["auroc"])
        lines.append(f"| {label(run)} | {weight(r):.4g} | {r['auroc']:.4f} | {best['auroc']:.4f} ({best['iter']}) | "
                     f"{r['znorm_normal']:.2f} / {r['znorm_anomaly']:.2f} | {r.get('nce_end', float('nan')):.3f} | "
                     f"{r['entropy_end']:.3f} | {r['dims_alive']:.3f} | {r['seconds']:.0f} |")
    return lines


def table(runs):
    lines = ["# itad.py: AUROC over training", "",
             "Written by `python benchmarks/itad_figures.py` from the runs' JSON files (`--curve-every`): Fashion-MNIST "
             "class 0, 4000 steps of batch 64, the Table IV encoder at ndf 16, ndepth 1 and the code size d (nrkhs) "
             "given per run, one CPU thread. The Eq. 23 score is larger-is-normal, reported as the AUROC of anomaly = "
             "not normal, so 0.5 is chance and below 0.5 ranks anomalies as more normal. 'Weight per dimension': the "
             "entropy term's weight on each |z_j| (sum: beta, as Alg. 1 line 18 prints it; mean: beta / d). L_NCE and "
             "L_H: means over the last 10% of the steps (InfoNCE at chance: log(127) = 4.84).", ""] + summary(runs)
    lines += ["", "Each run's curve: the test AUROC (`auroc`: BatchNorm statistics re-estimated on the test set; "
              "`auroc_trainbn`: training statistics), the mean InfoNCE loss of the last K steps, Fig. 3's mean ||z||_2 "
              "of normal / anomalous test codes, and dims_alive. The command is the run's as recorded (its git commit "
              "in the JSON's provenance); on today's itad.py, Eq. 22 / 29 need --table2 (--mc-samples 0 is no longer a "
              "value: drop it).", ""]
    for run in runs:
        r = run["result"]
        cmd = r.get("provenance", {}).get("command")
        lines += [f"## {label(run)}", "", f"`{cmd or run['path']}`", "",
                  f"Final RESULT: auroc {r['auroc']}, auroc_rand {r.get('auroc_rand')}, auroc_mc {r.get('auroc_mc')}, "
                  f"dataset {r['dataset']}, normal class {r['normal']}, seed {r['seed']}, {r['iters']} steps of "
                  f"batch {r['batch_size']}, device {r['device']}, {r['seconds']} s.", "",
                  "| step | auroc | auroc_trainbn | nce | entropy | ‖z‖ normal | ‖z‖ anomalous | dims_alive |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in run["curve"]:
            other = p.get("auroc_trainbn", p.get("auroc_testbn"))
            lines.append(f"| {p['iter']} | {p['auroc']:.4f} | {other:.4f} | {p.get('nce', p.get('jsd', float('nan'))):.3f} "
                         f"| {p['entropy']:.3f} | {p['znorm_normal']:.4f} | {p['znorm_anomaly']:.4f} | "
                         f"{p['dims_alive']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def plot(runs, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 4, figsize=(18, 4.2))
    for k, run in enumerate(runs):
        c, it = f"C{k}", [p["iter"] for p in run["curve"]]
        ax[0].plot(it, [p["auroc"] for p in run["curve"]], color=c, label=label(run))
        ax[0].plot(it, [p.get("auroc_trainbn", p.get("auroc_testbn")) for p in run["curve"]], color=c, ls="--")
        ax[1].plot(it, [p.get("nce", p.get("jsd")) for p in run["curve"]], color=c)
        ax[2].plot(it, [p["znorm_normal"] for p in run["curve"]], color=c)
        ax[2].plot(it, [p["znorm_anomaly"] for p in run["curve"]], color=c, ls="--")
        ax[3].plot(it, [p["dims_alive"] for p in run["curve"]], color=c)
    ax[0].axhline(0.5, color="grey", lw=0.8)
    titles = ["test AUROC, Eq. 23 (solid: test BN stats; dashed: training)", "InfoNCE loss (last K steps)",
              "mean ||z||_2 (solid: normal; dashed: anomalous)", "code dimensions alive"]
    for a, t in zip(ax, titles):
        a.set_title(t, fontsize=9)
        a.set_xlabel("training step")
    ax[2].set_yscale("log")
    ax[0].legend(fontsize=8)
    r = runs[0]["result"]
    fig.suptitle(f"itad.py on {r['dataset']}, normal class {r['normal']}, code size d = {r['config']['nrkhs']}, "
                 f"batch {r['batch_size']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="JSON files of itad.py runs with --curve-every (default: "
                                           "benchmarks/results/itad_curves*/*.json)")
    p.add_argument("--figures", default=os.path.join(RESULTS, "figures"))
    p.add_argument("--md", default=os.path.join(RESULTS, "itad_curves.md"))
    a = p.parse_args(argv)
    runs = load(a.runs or sorted(glob.glob(os.path.join(RESULTS, "itad_curves*", "*.json"))))
    if not runs:
        raise SystemExit("error: no runs. Give JSON files of itad.py runs made with --curve-every K --json FILE")
    with open(a.md, "w") as f:
        f.write(table(runs) + "\n")
    written = [a.md]
    for d in sorted({run["result"]["config"]["nrkhs"] for run in runs}):
        out = os.path.join(a.figures, "itad_curves.png" if d == 128 else f"itad_curves_d{d}.png")
        plot([run for run in runs if run["result"]["config"]["nrkhs"] == d], out)
        written.append(out)
    print("wrote " + ", ".join(written))


if __name__ == "__main__":
    main()
