"""ROC curves and normal-vs-anomaly score histograms from the score files the scripts write with --save-scores.

    python benchmarks/plots.py toll.npz lis_ae.npz cance.npz --out scores.png
    python benchmarks/plots.py --five-methods        # benchmarks/results/figures/scores_mnist_c8.png (see below)

Each score file holds `scores` (the run's main score, higher = more anomalous), optionally `scores_<variant>`, and
`labels` (1 = anomaly). One column per file: the ROC curve of every score in it (AUROC in the legend) above the
histogram of the main score for normal and anomalous test samples. Needs matplotlib (benchmarks/requirements.txt).

--five-methods draws the figure of the five methods on one split, MNIST with normal class 8, each at its `cpu`
protocol (benchmarks/protocols.json), seed 0, from the score files in benchmarks/results/scores/ that these
commands write (run from the repository root; about 25 minutes on one CPU core):

    python benchmarks/plots.py --five-methods --commands    # prints them
"""
import argparse
import os
import sys

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

HERE = os.path.dirname(os.path.abspath(__file__))
SCORES = os.path.join(HERE, "results", "scores")
FIVE = [  # (script, protocol flags as in protocols.json)
    ("toll", ["--iters", "60", "--batch-size", "64", "--val-size", "1000", "--eval-every", "30"]),
    ("lis_ae", ["--iters", "300"]),
    ("cance", ["--iters", "500"]),
    ("itad", ["--ndf", "16", "--nrkhs", "128", "--ndepth", "1", "--batch-size", "64", "--iters", "400",
              "--table2", "--mc-samples", "2"]),
    ("csi_gen", ["--iters", "150", "--width", "8", "--gan-width", "8", "--ensemble", "10"]),
]


def five_commands(data_root="./data", normal=8, seed=0):
    return [f"python {script}.py --dataset mnist --normal {normal} --seed {seed} --data-root {data_root} "
            + " ".join(flags) + f" --save-scores benchmarks/results/scores/{script}_mnist_c{normal}_s{seed}.npz "
            f"--json benchmarks/results/scores/{script}_mnist_c{normal}_s{seed}.json" for script, flags in FIVE]


def read(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            d = {k: f[k] for k in f.files}
    except Exception as e:
        raise SystemExit(f"error: cannot read '{path}' ({type(e).__name__}: {e}). Give a file written by "
                         "--save-scores")
    if "scores" not in d or "labels" not in d:
        raise SystemExit(f"error: '{path}' holds {', '.join(sorted(d))}, not scores and labels. Give a file written "
                         "by --save-scores")
    return d


def plot(paths, out, titles=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(2, len(paths), figsize=(3.6 * len(paths), 6.6), squeeze=False)
    for k, path in enumerate(paths):
        d = read(path)
        y = d["labels"]
        for name in ["scores"] + sorted(n for n in d if n.startswith("scores_")):
            fpr, tpr, _ = roc_curve(y, d[name])
            label = "main" if name == "scores" else name[len("scores_"):]
            ax[0, k].plot(fpr, tpr, lw=1.8 if name == "scores" else 1.0,
                          label=f"{label} {roc_auc_score(y, d[name]):.3f}")
        ax[0, k].plot([0, 1], [0, 1], color="grey", lw=0.6)
        ax[0, k].set_title(titles[k] if titles else os.path.basename(path), fontsize=9)
        ax[0, k].set_xlabel("false positive rate", fontsize=8)
        ax[0, k].legend(fontsize=7, title="AUROC", title_fontsize=7)
        s = d["scores"]
        lo, hi = np.percentile(s, [0.5, 99.5])
        bins = np.linspace(lo, hi, 50) if hi > lo else 50
        ax[1, k].hist(s[y == 0], bins=bins, alpha=0.6, density=True, label="normal")
        ax[1, k].hist(s[y == 1], bins=bins, alpha=0.6, density=True, label="anomalous")
        ax[1, k].set_xlabel("main score (higher = more anomalous)", fontsize=8)
        ax[1, k].legend(fontsize=7)
    ax[0, 0].set_ylabel("true positive rate", fontsize=8)
    ax[1, 0].set_ylabel("density", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="score files written by a script's --save-scores")
    p.add_argument("--out", default="scores.png", help="the figure to write (PNG)")
    p.add_argument("--five-methods", action="store_true",
                   help="the five methods on MNIST class 8 from benchmarks/results/scores/ (see the docstring)")
    p.add_argument("--commands", action="store_true", help="with --five-methods: print the commands that write them")
    a = p.parse_args(argv)
    if a.five_methods:
        if a.commands:
            print("\n".join(five_commands()))
            return 0
        paths = [os.path.join(SCORES, f"{script}_mnist_c8_s0.npz") for script, _ in FIVE]
        missing = [x for x in paths if not os.path.exists(x)]
        if missing:
            raise SystemExit(f"error: {', '.join(missing)} not found. Run the commands of "
                             "`python benchmarks/plots.py --five-methods --commands` first")
        out = os.path.join(HERE, "results", "figures", "scores_mnist_c8.png")
        plot(paths, out, titles=[f"{script}.py" for script, _ in FIVE])
    elif a.files:
        out = a.out
        plot(a.files, out)
    else:
        p.error("give score files, or --five-methods")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
