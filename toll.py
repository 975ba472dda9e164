"""Targeted collapse regularized autoencoder for anomaly detection: black hole at the center.
Ghafourian, Shui, Upadhyay, Gupta, Filev, Soltani ("Toll"), IEEE TNNLS 2024 / arXiv:2306.12627.
Paper text used here: ../shared/papers/004_b6afa29a94aab1dd.txt (line numbers below refer to it).

An autoencoder whose loss adds the plain L2 norm of the latent code to the reconstruction error. The norm
term pulls every code toward the origin ("targeted collapse"); training data keep their codes informative
because the reconstruction term needs them, while unseen anomalies fall outside that balance and score high
on the same quantity. Training loss and anomaly score are one expression: ||x_hat - x||_2 + beta * ||z||_p
(p = 2 in the paper's Eq. 2-3; --norm 1|inf for Table 8).

What this file reproduces
    Table 1 (MNIST), Table 3 (Fashion-MNIST, CIFAR-100 superclasses), Table 2 (CIFAR-10), Table 4
    (Arrhythmia, F1), the beta = 0 ablation of Table 7 and the beta sweep of Fig. 4 (--beta; 0 is the plain
    autoencoder), and Table 8's choice of norm (--norm 1|2|inf), under the protocol of Sec. 4.1 (line 176):
    2000 random batches, validation every 20 batches on labelled samples held out of the training split,
    test metric of the best validation checkpoint. Fig. 2 (the 2-D linear autoencoder) is drawn by
    benchmarks/toll_figures.py; it is documentation, not part of the method.

Equation map
    Eq. (2) training loss, batch mean of the per-sample term ...... toll_loss()
    Eq. (3) anomaly score, the same per-sample term ................ toll_score()
    Table 8: L1 / L2 / L-inf norm of z in Eq. (2) and (3) alike .... toll_score(p=...), --norm
    Appendix B architectures ........................................ MnistAE, CifarAE, TabularAE
    Sec. 4.1 protocol (random batches, validation, selection) ...... train()
    Sec. 4.1 splits (seeded, or the authors' index files) ......... tabular_split(), official_*_split()
    Theorem 1 (linear encoder under the norm loss), Fig. 2 claim .... tests/test_toll.py, tests/test_toll_fig2.py

Splits (--split)
    random (default): drawn from --seed. Images: --val-size (10000, line 170) labelled samples of the train
        split, all classes, are the validation set; the normal rest trains. Arrhythmia: per class 20% test and
        30% validation, as the paper's text says (line 172), the remaining normal rows train (193 of 386);
        the anomalies outside test and validation (33 of 66) are unused.
    official: the index files the authors' public code loads (GitHub Soltanilara/Toll, folder `val IDs/`,
        MIT License), read from <data-root>/toll_splits/. Images: the 10000 listed train-split indices are the
        validation set (10000_val_indices_{mnist,fmnist,cifar10,cifar100}.npy). Arrhythmia: permutations of
        the normal and of the anomalous rows, cut at np.round(0.2 n) / np.round(0.4 n) into test / validation
        / rest, as in the authors' src/data.py: 20% test and 20% validation (77 + 13 rows each), 232 normal
        rows train, 40 anomalies unused. This is NOT the paper's 30% validation (line 172); it is the split
        behind the authors' published code. The same split serves every seed: only initialisation and
        batch order change.
    Measured (Arrhythmia, the `paper` protocol = these defaults, seeds 0-9, CPU; test F1 mean +- sample std):
        --split random 55.39 +- 6.07 (benchmarks/results/toll_arrhythmia_paper.md), --split official 60.00 +-
        7.07 (toll_arrhythmia_paper_official.md); Table 4 prints 60.00 (line 265). With 13 test anomalies, one
        more anomaly in the top 14.6% moves a run's F1 by 7.7 points.
    Measured (MNIST, the cpu protocols of benchmarks/protocols.json: 60 batches of 64, 0.19% of Sec. 4.1's
    training samples, validation on 1,000 held-out samples, ten classes, seed 0, CPU):
        beta 1000, ||z||_2 96.47 (Table 1: 98.4); beta 0 (the plain AE) 90.62 (Table 7: 94.7), lower on 9 of
        10 classes; ||z||_1 96.63 (Table 8: 98.4); ||z||_inf 81.23 (Table 8: 97.4).
        Fig. 4's beta grid on class 8, seeds 0-2 (benchmarks/results/toll_mnist_fig4.md): beta 0 80.26, 1 48.22, 10
        48.72, 100 85.80, 1000 94.19, 10000 94.76: beta 1 and 10 are near chance at this budget, 100 and above beat
        beta 0.

Choices where the paper is silent, and differences from the authors' public code
    - Spatial sizes: the printed kernel/stride lists reach the stated shapes with no padding
      (MNIST 28->25->22->10->7->4, so 64x4x4 = 1024 features; CIFAR 32->28->13->10->4->1), so none is added.
    - CIFAR decoder: the authors' code ends with a bias-free 1x1 convolution plus a learned per-pixel output
      bias (3x32x32) that the paper does not mention. We follow Appendix B.2: the last Conv(3, 1, 1) is
      printed without bias=False, so it has an ordinary bias.
    - CIFAR min-max scaling (line 174 says only "rescaled to [0, 1] with min-max scaling"): we take the
      extremes of the GCN'd normal training images; the authors' code hard-codes per-class (min, max) pairs
      (the values Deep SVDD's code computed on each class's full training set).
    - Arrhythmia: the paper names no preprocessing; the ODDS matrix is fed raw, as in the authors' code.
      The 20% / 30% split of line 172 is stratified per class (the text does not say; the authors' code
      stratifies). F1 threshold (line 178: "the expected 15 percent of samples with the highest anomaly
      scores"): the top r of scores are called anomalous, r = the dataset's anomaly ratio (66/452 = 14.6%;
      the authors' code uses exactly 1 - 0.854), on the validation and the test set alike. Thyroid (not in
      the paper) runs the same protocol and architecture with its own ratio (2.5%).
    - Seeds: the authors' code reseeds numpy with 42 for every seed, so their batch order is the same for
      all seeds and only the initialisation varies; here --seed drives both (and the random split).
    - digits (scikit-learn's 8x8 digits at 28x28, for an offline install check) uses the MNIST model and
      MNIST's beta and lr, batch 64, validation 300.
    - --select last: no labels at all, the final model is tested (the paper selects on labelled validation).

Run:  python toll.py --dataset mnist --normal 8 --beta 1000
      python toll.py --dataset arrhythmia --split official --data-root ../shared/data
"""
import argparse
import copy
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import f1_score, roc_auc_score

from common import (DataError, IMAGE_DATASETS, data_root, global_contrast_normalization, is_anomaly, load_images,
                    load_tabular, minmax_scale, one_class_split, parse_normal, standardize)

# Appendix B / Sec. 4.1 values per dataset: beta, learning rate, latent size, batch size, validation size
PAPER = {
    "mnist":         dict(beta=1000, lr=1e-4, latent=128, batch_size=1000, val_size=10000),
    "fashion-mnist": dict(beta=100, lr=1e-4, latent=256, batch_size=500, val_size=10000),
    "cifar10":       dict(beta=10, lr=1e-2, latent=64, batch_size=50, val_size=10000),
    "cifar100":      dict(beta=100, lr=1e-3, latent=64, batch_size=100, val_size=10000),
    "arrhythmia":    dict(beta=10, lr=1e-3, latent=16, batch_size=100, val_size=None),
    "thyroid":       dict(beta=10, lr=1e-3, latent=16, batch_size=100, val_size=None),   # not in the paper
    "digits":        dict(beta=1000, lr=1e-4, latent=128, batch_size=64, val_size=300),  # install check
}
TABULAR = ("arrhythmia", "thyroid")
NORMS = {"1": 1.0, "2": 2.0, "inf": math.inf}   # --norm -> p of ||z||_p (Table 8)
# --split official: the authors' index files (GitHub Soltanilara/Toll, folder `val IDs/`, MIT License)
SPLIT_DIR = "toll_splits"
SPLIT_FILES = {
    "mnist": ["10000_val_indices_mnist.npy"],
    "fashion-mnist": ["10000_val_indices_fmnist.npy"],
    "cifar10": ["10000_val_indices_cifar10.npy"],
    "cifar100": ["10000_val_indices_cifar100.npy"],
    "arrhythmia": ["randomized_normal_indices_arrhythmia.npy", "randomized_anomalous_indices_arrhythmia.npy"],
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors in the project's shape: 'error: <what>. <what to do>', exit 2."""

    def error(self, message):
        print(f"error: {message}. Run `python {self.prog} --help` for the accepted values.", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None):
    p = ArgumentParser(description="Toll: targeted collapse regularized autoencoder (Ghafourian et al.)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=list(PAPER),
                   help="mnist, fashion-mnist, cifar10, cifar100 (20 superclasses), arrhythmia (Sec. 4); "
                        "thyroid (not in the paper); digits (offline install check)")
    p.add_argument("--normal", default="0",
                   help="normal class, or a comma list for multi-class normal data (Sec. 4.1: one class); "
                        "ignored for tabular sets, whose normal label is 0")
    p.add_argument("--data-root", default=None,
                   help="datasets in torchvision's layout (default: $AD_DATA_ROOT, else ./data)")
    p.add_argument("--seed", type=int, default=0, help="random seed: batches, initialisation, random split")
    p.add_argument("--device", default="auto", help="auto = cuda if available, else cpu; cpu, cuda, cuda:N")
    p.add_argument("--iters", type=int, default=2000, help="number of random training batches (Sec. 4.1)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default per dataset (Sec. 4.1): MNIST 1000, F-MNIST 500, CIFAR-10 50, CIFAR-100 100, "
                        "Arrhythmia 100; thyroid 100 and digits 64 (our choice)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate, fixed (Appendix B): MNIST and F-MNIST 1e-4 (B.1), CIFAR-10 1e-2, "
                        "CIFAR-100 1e-3 (B.2), Arrhythmia 1e-3 (B.3); thyroid 1e-3, digits 1e-4 (our choice)")
    p.add_argument("--beta", type=float, default=None,
                   help="weight of ||z|| (Eq. 2, Appendix B): MNIST 1000, F-MNIST 100 (B.1), CIFAR-10 10, "
                        "CIFAR-100 100 (B.2), Arrhythmia 10 (B.3); 0 = plain autoencoder (Table 7, Fig. 4)")
    p.add_argument("--norm", default="2", choices=list(NORMS),
                   help="p of the latent norm ||z||_p in loss and score alike: 2 = Eq. (2)-(3); 1 and inf are "
                        "Table 8's alternatives")
    p.add_argument("--latent", type=int, default=None,
                   help="latent size (Appendix B): MNIST 128, F-MNIST 256, CIFAR 64 (fixed by the "
                        "architecture), Arrhythmia 16")
    p.add_argument("--split", default="random", choices=["random", "official"],
                   help="random: validation (and Arrhythmia's test) split drawn from --seed, Arrhythmia 20%% "
                        "test / 30%% validation as the paper's text says; official: the authors' index files "
                        f"from <data-root>/{SPLIT_DIR}/ (Arrhythmia 20%% / 20%%, as their code does)")
    p.add_argument("--eval-every", type=int, default=20, help="validate every this many batches (Sec. 4.1)")
    p.add_argument("--val-size", type=int, default=None,
                   help="labelled validation samples held out of the training split (Sec. 4.1: 10000; "
                        "digits 300); tabular sets use a 30%% split instead; fixed by the file with --split official")
    p.add_argument("--select", default="val", choices=["val", "last"],
                   help="val: test the checkpoint with the best validation metric (Sec. 4.1, uses anomaly "
                        "labels); last: test the final model, no labels used (not in the paper)")
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                   help="memory format for the conv nets (speed only; not in the paper). auto: on for CPU "
                        "CIFAR-size nets, where it was measured faster")
    p.add_argument("--json", default=None, help="also write the RESULT keys to this JSON file (atomic)")
    return p.parse_args(argv)


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------ input checks (issue 18)

def check_number(args, name, low=None, high=None, low_open=False):
    """--name must be finite and within [low, high] (low excluded with low_open); None = not given (default)."""
    v = getattr(args, name)
    if v is None:
        return
    flag = "--" + name.replace("_", "-")
    if isinstance(v, float) and not math.isfinite(v):
        raise DataError(f"{flag} must be a finite number (got {v}). Pass a plain number such as {flag} 1")
    if (low is not None and (v < low or (low_open and v == low))) or (high is not None and v > high):
        fmt = lambda x: str(int(x)) if float(x).is_integer() else f"{x:g}"      # 4294967295, not 4.29497e+09
        rng = f"{'>' if low_open else '>='} {fmt(low)}" if high is None else f"in [{fmt(low)}, {fmt(high)}]"
        raise DataError(f"{flag} must be {rng} (got {fmt(v)}). Pass a value in that range")


def check_output_path(path, flag):
    """An output path is tried BEFORE training, so that no finished run is thrown away at the end."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise DataError(f"{flag} {path} is a folder. Give a file name, e.g. {flag} {os.path.join(path, 'out.json')}")
    if not os.path.isdir(folder):
        raise DataError(f"{flag} {path}: the folder {folder} does not exist. Create it first, or choose another path")
    probe = os.path.join(folder, f".write-test-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise DataError(f"{flag} {path}: cannot write into {folder} ({e.strerror}). Choose a writable folder") from None


def pick_device(name):
    """--device auto|cpu|cuda|cuda:N -> torch.device; an unknown or absent device is an error before any work."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DataError(f"unknown --device '{name}'. Use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError(f"--device {name} was asked for, but torch finds no CUDA GPU on this machine. "
                            "Use --device cpu (or auto, which picks cuda only when there is one)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DataError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"numbered 0..{torch.cuda.device_count() - 1}. Pick one of those")
    elif device.type != "cpu":
        raise DataError(f"--device {name} is not supported by this script. Use auto, cpu, cuda or cuda:N")
    return device


def split_paths(args):
    """--split official: the authors' index files for this dataset; a clear error when there are none or
    they are missing (checked before any data is loaded)."""
    if args.dataset not in SPLIT_FILES:
        raise DataError(f"--split official: the Toll authors ship no index files for {args.dataset} "
                        f"(they have {', '.join(SPLIT_FILES)}). Use --split random")
    folder = os.path.join(data_root(args.data_root), SPLIT_DIR)
    paths = [os.path.join(folder, f) for f in SPLIT_FILES[args.dataset]]
    missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"--split official reads {', '.join(SPLIT_FILES[args.dataset])} from {folder}, and "
                        f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not there. These are the index files of the authors' code (GitHub "
                        f"Soltanilara/Toll, folder `val IDs/`, MIT License): copy them into {folder}, or use "
                        "--split random")
    return paths


def check_args(args):
    """Every user-typed number, the device, the split files and every output path, before any data is loaded."""
    check_number(args, "seed", 0, 2 ** 32 - 1)
    check_number(args, "iters", 1)
    check_number(args, "batch_size", 2)   # BN needs >= 2
    check_number(args, "lr", 0, low_open=True)
    check_number(args, "beta", 0)
    check_number(args, "latent", 1)
    check_number(args, "eval_every", 1)
    check_number(args, "val_size", 0)
    if args.split == "official":
        split_paths(args)
        if args.val_size is not None and args.dataset not in TABULAR:
            raise DataError("--val-size does not apply with --split official: the validation set is the index "
                            "file's samples (10000 in the authors' files). Drop --val-size, or use --split random")
    check_output_path(args.json, "--json")
    return pick_device(args.device)


def load_index_file(path, n, what, exact=False):
    """An index file of --split official -> int64 tensor of indices into n rows (`what`, e.g. "normal rows");
    out-of-range or repeated indices, or a length that does not fit the data (exact: a permutation of all n
    rows; else at least one and fewer than n), are errors naming the file."""
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{path} is not a readable .npy index file ({type(e).__name__}: {e}). Copy it again from "
                        "the authors' repository (GitHub Soltanilara/Toll, folder `val IDs/`)") from None
    fix = "Use the authors' file for this dataset (GitHub Soltanilara/Toll, folder `val IDs/`), or --split random"
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{path} must hold a 1-D array of integer indices, but holds {a.dtype} of shape {a.shape}. {fix}")
    if exact and len(a) != n:
        raise DataError(f"{path} holds {len(a)} indices, but the data has {n} {what}: the file must list each "
                        f"once. {fix}")
    if not exact and not 0 < len(a) < n:
        raise DataError(f"{path} holds {len(a)} indices, but the data has {n} {what}: at least one must be listed "
                        f"and some left to train. {fix}")
    bad = a[(a < 0) | (a >= n)]
    if len(bad):
        raise DataError(f"{path}: index {int(bad[0])} is out of range for the {n} {what} (0..{n - 1}). {fix}")
    values, counts = np.unique(a, return_counts=True)
    if (counts > 1).any():
        dup, times = int(values[counts > 1][0]), int(counts[counts > 1][0])
        raise DataError(f"{path}: index {dup} appears {times} times; a split lists each row once. {fix}")
    return torch.from_numpy(a.astype(np.int64))


# ------------------------------------------------------------------------------------------ models

class TollAE(nn.Module):
    """x -> z = encoder(x) -> x_hat = decoder(z)."""

    def forward(self, x):
        z = self.encoder(x)
        return self.decoder(z), z


class MnistAE(TollAE):
    """Appendix B, MNIST / Fashion-MNIST (1×28×28)."""

    def __init__(self, latent=128):
        super().__init__()
        lrelu = lambda: nn.LeakyReLU(0.2)
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 64, 4, 1), nn.BatchNorm2d(64), lrelu(),        # (B, 64, 25, 25)
            nn.Conv2d(64, 128, 4, 1), nn.BatchNorm2d(128), lrelu(),     # (B, 128, 22, 22)
            nn.Conv2d(128, 256, 4, 2), nn.BatchNorm2d(256), lrelu(),    # (B, 256, 10, 10)
            nn.Conv2d(256, 512, 4, 1), nn.BatchNorm2d(512), lrelu(),    # (B, 512, 7, 7)
            nn.Conv2d(512, 64, 4, 1),                                   # (B, 64, 4, 4)
            nn.Flatten(), nn.Linear(1024, latent))                      # (B, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, 1024), nn.Unflatten(1, (64, 4, 4)),       # (B, 64, 4, 4)
            nn.ConvTranspose2d(64, 512, 4, 1), nn.BatchNorm2d(512), lrelu(),    # (B, 512, 7, 7)
            nn.ConvTranspose2d(512, 256, 4, 1), nn.BatchNorm2d(256), lrelu(),   # (B, 256, 10, 10)
            nn.ConvTranspose2d(256, 128, 4, 2), nn.BatchNorm2d(128), lrelu(),   # (B, 128, 22, 22)
            nn.ConvTranspose2d(128, 64, 4, 1), nn.BatchNorm2d(64), lrelu(),     # (B, 64, 25, 25)
            nn.ConvTranspose2d(64, 1, 4, 1))                                    # (B, 1, 28, 28)


class CifarAE(TollAE):
    """Appendix B, CIFAR-10 / CIFAR-100 (3×32×32). All convolutions bias-free except the last of the
    encoder and the last of the decoder; LeakyReLU slope 0.1; latent = the 64 channels of a 1×1 map."""

    def __init__(self, latent=64):
        super().__init__()
        lrelu = lambda: nn.LeakyReLU(0.1)

        def conv(cin, cout, k, s=1, t=False):
            c = nn.ConvTranspose2d if t else nn.Conv2d
            return [c(cin, cout, k, s, bias=False), nn.BatchNorm2d(cout), lrelu()]

        self.encoder = nn.Sequential(
            *conv(3, 32, 5), *conv(32, 64, 4, 2), *conv(64, 128, 4),    # (B, 32, 28, 28) (B, 64, 13, 13) (B, 128, 10, 10)
            *conv(128, 256, 4, 2), *conv(256, 512, 4), *conv(512, 512, 1),   # (B, 256, 4, 4) (B, 512, 1, 1)
            nn.Conv2d(512, latent, 1), nn.Flatten())                    # (B, latent)
        self.decoder = nn.Sequential(
            nn.Unflatten(1, (latent, 1, 1)),
            *conv(latent, 256, 4, t=True), *conv(256, 128, 4, 2, t=True),   # (B, 256, 4, 4) (B, 128, 10, 10)
            *conv(128, 64, 4, t=True), *conv(64, 32, 4, 2, t=True),         # (B, 64, 13, 13) (B, 32, 28, 28)
            *conv(32, 32, 5, t=True), *conv(32, 32, 1),                     # (B, 32, 32, 32)
            nn.Conv2d(32, 3, 1))                                            # (B, 3, 32, 32)


class TabularAE(TollAE):
    """Appendix B, Arrhythmia: D-256-128-latent / latent-128-256-D with BN and ReLU."""

    def __init__(self, dim, latent=16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, 256), nn.BatchNorm1d(256), nn.ReLU(),
                                     nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, 128), nn.BatchNorm1d(128), nn.ReLU(),
                                     nn.Linear(128, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, dim))


def build_model(dataset, latent, dim=None):
    if dataset in TABULAR:
        return TabularAE(dim, latent)
    if dataset.startswith("cifar"):
        return CifarAE(latent)
    return MnistAE(latent)


# ------------------------------------------------------------------------------------------ loss and score

def toll_score(x, x_hat, z, beta, p=2.0):
    """Per-sample ||x_hat - x||_2 + beta * ||z||_p (Eq. 3 with p = 2; norms, not squared; Table 8: p = 1, inf)."""
    rec = (x_hat - x).flatten(1).norm(dim=1)                              # Eq. (3), first term
    reg = torch.linalg.vector_norm(z.flatten(1), ord=p, dim=1)           # Eq. (3), second term (Table 8: p)
    return rec + beta * reg, rec, reg


def toll_loss(x, x_hat, z, beta, p=2.0):
    """Batch mean of the per-sample term (Eq. 2)."""
    score, rec, reg = toll_score(x, x_hat, z, beta, p)
    return score.mean(), rec.mean(), reg.mean()    # Eq. (2)


@torch.no_grad()
def anomaly_scores(model, x, beta, p=2.0, chunk=1000):
    """Eq. (3) for every row of x, in eval mode (BN running statistics), in chunks."""
    model.eval()
    out = []
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        x_hat, z = model(xb)
        out.append(toll_score(xb, x_hat, z, beta, p)[0])
    model.train()
    return torch.cat(out).cpu().numpy()


def metric(scores, labels, tabular, anomaly_ratio=None):
    """AUROC for images; for tabular sets F1 with the top anomaly_ratio of scores called anomalous (line 178)."""
    labels = labels.cpu().numpy()
    if not tabular:
        return roc_auc_score(labels, scores)
    pred = np.zeros(len(scores), dtype=int)
    pred[np.argsort(-scores)[:int(round(anomaly_ratio * len(scores)))]] = 1
    return f1_score(labels, pred)


def check_finite(value, where):
    if not math.isfinite(value):
        raise FloatingPointError(f"training diverged: {where} is {value}. Try a smaller --lr or --beta")


# ------------------------------------------------------------------------------------------ training

def train(model, x_train, args, val=None, evaluate=None, log=print):
    """Sec. 4.1: --iters random batches (drawn without replacement within a batch), Adam with a fixed
    learning rate; every --eval-every batches the validation metric, keeping the best model (--select val)."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    best = (-1.0, 0, None)  # (metric, iteration, state)
    n, t0, train_time = len(x_train), time.time(), 0.0
    p = NORMS[args.norm]
    for it in range(1, args.iters + 1):
        args.progress = f"training, iteration {it}/{args.iters}" + (f" (best validation {args.metric} "
                                                                     f"{best[0]:.4f} at {best[1]})" if best[1] else "")
        ts = time.time()
        xb = x_train[torch.randperm(n, device=x_train.device)[:args.batch_size]]
        x_hat, z = model(xb)
        loss, rec, reg = toll_loss(xb, x_hat, z, args.beta, p)        # Eq. (2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = loss.item()
        train_time += time.time() - ts
        check_finite(loss_value, f"the Eq. (2) loss at iteration {it}")
        last = it == args.iters
        if it % args.eval_every == 0 or last:
            line = f"iter {it}/{args.iters} loss={loss_value:.4f} rec={rec.item():.4f} znorm={reg.item():.4f}"
            if val is not None:
                m = evaluate(model, *val)
                check_finite(m, f"the validation metric at iteration {it}")
                if m > best[0]:
                    best = (m, it, copy.deepcopy(model.state_dict()))
                line += f" val_{args.metric}={m:.4f} best={best[0]:.4f}@{best[1]}"
            log(f"{line} elapsed={time.time() - t0:.1f}s", flush=True)
    if val is not None and best[2] is not None:
        model.load_state_dict(best[2])
    return best[0], best[1], train_time


# ------------------------------------------------------------------------------------------ data

def tabular_split(X, y, seed):
    """--split random: per class 20% test, 30% validation; train on the remaining normal samples (line 172)."""
    g = torch.Generator().manual_seed(seed)
    parts = {"train": [], "val": [], "test": []}
    for label in (0, 1):
        idx = torch.nonzero(y == label).view(-1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test, n_val = round(0.2 * len(idx)), round(0.3 * len(idx))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        if label == 0:
            parts["train"].append(idx[n_test + n_val:])
    test, val = torch.cat(parts["test"]), torch.cat(parts["val"])
    return {"train": X[parts["train"][0]], "val": (X[val], y[val]), "test": (X[test], y[test])}


def official_tabular_split(X, y, paths):
    """--split official (Arrhythmia): the authors' permutations of the normal rows and of the anomalous rows
    (in file order), each cut at np.round(0.2 n) and np.round(0.4 n): [0, 20%) test, [20%, 40%) validation,
    the normal rest trains (the authors' src/data.py, load_arrhythmia)."""
    parts = {"train": [], "val": [], "test": []}
    for label, path in zip((0, 1), paths):
        rows = torch.nonzero(y == label).view(-1)
        name = "normal rows (y = 0)" if label == 0 else "anomalous rows (y = 1)"
        perm = load_index_file(path, len(rows), name, exact=True)
        idx = rows[perm]
        a, b = int(np.round(0.2 * len(idx))), int(np.round(0.4 * len(idx)))
        parts["test"].append(idx[:a])
        parts["val"].append(idx[a:b])
        if label == 0:
            parts["train"].append(idx[b:])
    test, val = torch.cat(parts["test"]), torch.cat(parts["val"])
    return {"train": X[parts["train"][0]], "val": (X[val], y[val]), "test": (X[test], y[test])}


def official_image_split(x_train, y_train, x_test, y_test, normal, path):
    """--split official (images): the listed train-split indices are the labelled validation set (all classes);
    the normal samples among the rest train; the whole test split tests (the authors' src/data.py)."""
    val_idx = load_index_file(path, len(x_train), "train-split images")
    rest = torch.ones(len(x_train), dtype=torch.bool)
    rest[val_idx] = False
    rest &= torch.isin(y_train, torch.as_tensor(normal))
    if not rest.any():
        raise DataError(f"no training samples of normal class(es) {normal} are left outside {path}. "
                        "Use the authors' file for this dataset, or --split random")
    return {"train": x_train[rest], "val": (x_train[val_idx], is_anomaly(y_train[val_idx], normal)),
            "test": (x_test, is_anomaly(y_test, normal))}


def prepare(args):
    """Load, split and preprocess as the paper specifies; returns the split dict and the normal classes."""
    official = getattr(args, "split", "random") == "official"
    paths = split_paths(args) if official else None
    if args.dataset in TABULAR:
        X, y = load_tabular(args.dataset, args.data_root)
        split = official_tabular_split(X, y, paths) if official else tabular_split(X, y, args.seed)
        split["anomaly_ratio"] = float(y.float().mean())
        return split, [0]
    normal = parse_normal(args.normal, IMAGE_DATASETS[args.dataset][0])
    x_tr, y_tr, x_te, y_te = load_images(args.dataset, args.data_root)
    if official:
        split = official_image_split(x_tr, y_tr, x_te, y_te, normal, paths[0])
    else:
        split = one_class_split(x_tr, y_tr, x_te, y_te, normal, val_size=args.val_size, seed=args.seed)
    if args.dataset.startswith("cifar"):
        # Deep-SVDD convention: GCN (L1) per image, then min-max with the normal training images' extremes
        lo_hi = global_contrast_normalization(split["train"])
        lo, hi = lo_hi.min(), lo_hi.max()
        f = lambda x: minmax_scale(global_contrast_normalization(x), lo, hi)
    else:
        # per-dataset standardisation with the whole training split's mean and std (MNIST 0.1307/0.3081)
        mean, std = x_tr.mean(), x_tr.std()
        f = lambda x: standardize(x, mean, std)
    split = {"train": f(split["train"]), "val": (f(split["val"][0]), split["val"][1]) if split["val"] else None,
             "test": (f(split["test"][0]), split["test"][1])}
    return split, normal


# ------------------------------------------------------------------------------------------ main

def run(args, log=print):
    t_start = time.time()
    if not hasattr(args, "progress"):
        args.progress = "start-up (no training step taken yet)"
    device = check_args(args)
    for k, v in PAPER[args.dataset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    tabular = args.dataset in TABULAR
    args.metric = "f1" if tabular else "auroc"
    p = NORMS[args.norm]
    if not tabular and args.dataset.startswith("cifar") and args.latent != 64:
        log("note: the CIFAR architecture's latent is 64 channels of a 1x1 map in Appendix B; using --latent "
            f"{args.latent}")
    set_seed(args.seed)
    args.progress = "data loading (no training step taken yet)"
    split, normal = prepare(args)
    if args.select == "val" and split["val"] is None:
        raise DataError("--select val needs a validation set, and --val-size is 0. Pass --val-size > 0, "
                        "or --select last")
    x_train = split["train"].to(device)
    if args.batch_size > len(x_train):
        raise DataError(f"--batch-size {args.batch_size} exceeds the {len(x_train)} normal training samples. "
                        f"Pass a smaller --batch-size")
    val = tuple(t.to(device) for t in split["val"]) if split["val"] else None
    x_test, y_test = (t.to(device) for t in split["test"])
    model = build_model(args.dataset, args.latent, x_train.shape[1] if tabular else None).to(device)
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and device.type == "cpu"
                                                    and args.dataset.startswith("cifar"))
    if channels_last and not tabular:
        model = model.to(memory_format=torch.channels_last)
        x_train, x_test = x_train.contiguous(memory_format=torch.channels_last), x_test.contiguous(memory_format=torch.channels_last)
        val = (val[0].contiguous(memory_format=torch.channels_last), val[1]) if val else None
    ratio = split.get("anomaly_ratio")
    evaluate = lambda m, x, y: metric(anomaly_scores(m, x, args.beta, p), y, tabular, ratio)
    log(f"toll: dataset={args.dataset} normal={','.join(map(str, normal))} split={args.split} train={len(x_train)} "
        f"val={len(val[0]) if val else 0} test={len(x_test)} (anomalies {int(y_test.sum())}) beta={args.beta:g} "
        f"norm=L{args.norm} lr={args.lr:g} batch={args.batch_size} latent={args.latent} select={args.select} "
        f"device={device}", flush=True)
    use_val = args.select == "val"
    best_val, best_iter, train_time = train(model, x_train, args, val if use_val else None, evaluate, log)
    args.progress = "test scoring (training finished)"
    ts = time.time()
    scores = anomaly_scores(model, x_test, args.beta, p)
    score_time = time.time() - ts
    result = {"method": "toll", "dataset": args.dataset, "normal": ",".join(map(str, normal)), "seed": args.seed,
              args.metric: round(metric(scores, y_test, tabular, ratio), 4)}
    if tabular:
        result["auroc"] = round(roc_auc_score(y_test.cpu().numpy(), scores), 4)
    result.update({"select": args.select, f"val_{args.metric}": round(best_val, 4) if use_val else None,
                   "best_iter": best_iter if use_val else args.iters, "beta": args.beta, "norm": args.norm,
                   "split": args.split, "iters": args.iters, "batch_size": args.batch_size, "device": device.type,
                   "seconds": round(time.time() - t_start, 1),
                   "train_samples_per_s": round(args.iters * args.batch_size / max(train_time, 1e-9), 1),
                   "score_samples_per_s": round(len(x_test) / max(score_time, 1e-9), 1)})
    result = {k: v for k, v in result.items() if v is not None}
    log("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.json)
    return result


def main(argv=None):
    args = parse_args(argv)
    args.progress = "start-up (no training step taken yet)"
    try:
        return run(args)
    except (DataError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted during {args.progress}; no result was written", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
