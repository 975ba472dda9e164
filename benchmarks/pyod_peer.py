"""PyOD peer row: PyOD's AutoEncoder and DeepSVDD on exactly toll.py's splits and preprocessing.

What a practitioner would reach for first, run under the same protocol as the five scripts, so the tables
show what the papers' methods buy over it. Benchmark-only: needs `pip install -r benchmarks/requirements.txt`
(PyOD), which is not a dependency of the project.

Data: toll.prepare() itself (the same one-class split, the same validation hold-out removed from the training
split, the same per-dataset standardisation / GCN + min-max, the same tabular split), images flattened to
vectors. The validation part is not used: PyOD selects no model. Score: PyOD's decision_function (higher =
more anomalous); AUROC on the whole test split; on tabular sets also toll.py's F1 (top r of scores flagged).

Choices (PyOD's defaults unless stated)
    - preprocessing=False: the inputs are already toll.py's; --pyod-preprocessing adds PyOD's own per-feature
      standardisation on top.
    - --epochs 2, --batch-size 128 (our budget choice: about the cpu protocol's 7,680 training samples on
      ~6,000 normal images is 1.3 epochs); PyOD's architectures ([64, 32] hidden layers) otherwise.
    - PyOD's constructor arguments changed between versions (epochs/epoch_num, hidden_neurons/
      hidden_neuron_list, DeepSVDD's n_features): only the arguments the installed version accepts are passed;
      the RESULT line records pyod's version.

Run:  python benchmarks/pyod_peer.py --method autoencoder --dataset fashion-mnist --normal 0 --val-size 1000
      python benchmarks/run.py --script benchmarks/pyod_peer.py --protocol cpu_autoencoder --dataset fashion-mnist
"""
import argparse
import inspect
import json
import os
import random
import sys
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import toll  # noqa: E402  (the reference script: its prepare() defines the splits and preprocessing)
from common import DataError, device_type  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PyOD AutoEncoder / DeepSVDD on toll.py's splits",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", default="autoencoder", choices=["autoencoder", "deepsvdd"])
    p.add_argument("--dataset", default="mnist", choices=list(toll.PAPER), help="as toll.py")
    p.add_argument("--normal", default="0", help="normal class, or a comma list (ignored for tabular sets)")
    p.add_argument("--data-root", default=None, help="as toll.py")
    p.add_argument("--seed", type=int, default=0, help="split, hold-out and PyOD's random_state")
    p.add_argument("--device", type=device_type, default="auto",
                   help="auto = cuda if available, else cpu (AutoEncoder only)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs (our budget choice, see docstring)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--val-size", type=int, default=None,
                   help="samples held out of the training split, as toll.py (default: toll.py's per dataset); "
                        "pass the protocol's value so the training set is identical")
    p.add_argument("--pyod-preprocessing", action="store_true", help="also apply PyOD's own standardisation")
    p.add_argument("--json", default=None, help="also write the RESULT keys to this JSON file (atomic)")
    return p.parse_args(argv)


def accepted(cls, **candidates):
    """Keep the constructor arguments the installed PyOD version accepts (names changed across versions)."""
    names = set(inspect.signature(cls.__init__).parameters)
    return {k: v for k, v in candidates.items() if k in names}


def import_pyod():
    try:
        import pyod
        from pyod.models.auto_encoder import AutoEncoder
        from pyod.models.deep_svdd import DeepSVDD
    except ImportError as e:
        raise DataError(f"PyOD could not be imported ({e}); it is a benchmark-only dependency: "
                        "pip install -r benchmarks/requirements.txt") from None
    return pyod.__version__, AutoEncoder, DeepSVDD


def build_detector(args, n_features, device):
    _, AutoEncoder, DeepSVDD = import_pyod()
    common = dict(epochs=args.epochs, epoch_num=args.epochs, batch_size=args.batch_size, random_state=args.seed,
                  verbose=0, preprocessing=args.pyod_preprocessing)
    if args.method == "autoencoder":
        return AutoEncoder(**accepted(AutoEncoder, device=device.type, **common))
    return DeepSVDD(**accepted(DeepSVDD, n_features=n_features, **common))


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run(args):
    t0 = time.time()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.epochs < 1 or args.batch_size < 2:
        raise DataError("--epochs must be >= 1 and --batch-size >= 2")
    pyod_version = import_pyod()[0]                 # fail before loading any data
    if args.val_size is None:
        args.val_size = toll.PAPER[args.dataset]["val_size"]
    device = args.device
    split, normal = toll.prepare(args.dataset, normal=args.normal, root=args.data_root, seed=args.seed,
                                 val_size=args.val_size)   # exactly toll.py's split and preprocessing
    tabular = args.dataset in toll.TABULAR
    flat = lambda x: toll.normalise(x, split["constants"]).flatten(1).numpy().astype(np.float64)   # toll's inputs
    x_train, x_test, y_test = flat(split["train"]), flat(split["test"][0]), split["test"][1].numpy()
    detector = build_detector(args, x_train.shape[1], device)
    print(f"pyod_peer: {args.method} (pyod {pyod_version}) dataset={args.dataset} "
          f"normal={','.join(map(str, normal))} train={len(x_train)} test={len(x_test)} epochs={args.epochs} "
          f"batch={args.batch_size}", flush=True)
    ts = time.time()
    detector.fit(x_train)
    train_time = time.time() - ts
    ts = time.time()
    scores = np.asarray(detector.decision_function(x_test), dtype=np.float64).reshape(-1)
    score_time = time.time() - ts
    if not np.all(np.isfinite(scores)):
        raise DataError(f"PyOD {args.method} produced non-finite scores; try fewer --epochs or --pyod-preprocessing")
    result = {"method": f"pyod_{args.method}", "dataset": args.dataset, "normal": ",".join(map(str, normal)),
              "seed": args.seed}
    if tabular:
        result["f1"] = round(toll.f1_top_ratio(y_test, scores, split["anomaly_ratio"]), 4)
    result["auroc"] = round(roc_auc_score(y_test, scores), 4)
    result.update({"epochs": args.epochs, "batch_size": args.batch_size, "pyod_version": pyod_version,
                   "device": device.type if args.method == "autoencoder" else "cpu",
                   "seconds": round(time.time() - t0, 1),
                   "train_samples_per_s": round(args.epochs * len(x_train) / max(train_time, 1e-9), 1),
                   "score_samples_per_s": round(len(x_test) / max(score_time, 1e-9), 1)})
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.json)
    return result


if __name__ == "__main__":
    main()
