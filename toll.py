"""Targeted collapse regularized autoencoder for anomaly detection: black hole at the center ("Toll").
Ghafourian, Shui, Upadhyay, Gupta, Filev, Soltani. IEEE TNNLS 2024, arXiv:2306.12627.

An autoencoder whose loss adds the plain L2 norm of the latent code to the reconstruction error (Sec. 3.2).
The norm term pulls every code toward the origin ("targeted collapse"); normal data keep informative codes
because the reconstruction term needs them, while unseen anomalies fall outside that balance. Training loss
and anomaly score are one expression, ||x_hat - x||_2 + beta * ||z||_2 (higher = more anomalous).

Reproduces Tables 1-4 (MNIST; CIFAR-10; Fashion-MNIST and the CIFAR-100 superclasses; Arrhythmia, F1) under
the Sec. 4.1 protocol (2000 random batches, validation every 20, the best validation checkpoint tested), the
beta = 0 ablation of Table 7 and the beta grid of Fig. 4 (--beta), and Table 8's norms (--norm 1|2|inf).
Fig. 2 and Theorems 1-2 (linear autoencoder) live in benchmarks/toll_figures.py and the tests. Not here:
Tables 5-6 (the collapse term added to FITYMI, a classifier on a pre-trained ViT).

Equation map (a user calls build_model -> train -> anomaly_scores)
    Appendix B.1 / B.2 / B.3 architectures ........................ build_model(): MnistAE, CifarAE, TabularAE
    Eq. (2) loss, batch mean of the per-sample term ................ toll_loss()
    Eq. (3) anomaly score, the same per-sample term ................ toll_score(), anomaly_scores()
    Table 8: ||z||_1, ||z||_2 or ||z||_inf in Eq. (2) and (3) alike .. p= (--norm)
    Sec. 4.1: random batches, Adam, validation, model selection .... train()
    Sec. 4.1: AUROC; Arrhythmia's F1 of the top-scored 15% ......... auroc(), f1_top_ratio()
    Sec. 4.1: splits and preprocessing of the built-in datasets .... prepare()

Deviations: where the paper is silent, or this file differs or adds
    - No padding: the printed kernels and strides reach 64x4x4 (MNIST) and 1x1 (CIFAR) without it.
    - CIFAR decoder: the last Conv(3, 1, 1) has an ordinary bias, as printed in Appendix B.2 (the authors'
      code: a bias-free convolution plus a learned per-pixel output bias).
    - CIFAR-10 and CIFAR-100 alike: GCN (L1), then min-max with the extremes of the GCN'd normal training
      images (Sec. 4.1 names no extremes; the authors' code hard-codes per-class pairs). MNIST-type data are
      standardised with the whole train split's mean and std (Sec. 4.1: "zero mean and a standard deviation
      of 1"). Arrhythmia: the raw ODDS matrix, as in the authors' code.
    - Arrhythmia's beta 10 and lr 1e-3 are the authors' README's (Appendix B.3 prints the architecture only).
    - --split random (default): images hold out --val-size labelled train-split samples (Sec. 4.1: 10000);
      Arrhythmia 20% test / 30% validation per class (Sec. 4.1; stratified, the text does not say), the
      anomalies outside both unused. --split official: the authors' index files (GitHub Soltanilara/Toll,
      folder `val IDs/`, MIT License) in <data-root>/toll_splits/; Arrhythmia cut at 20% / 40% as their
      src/data.py does (20% validation, not the text's 30%); one split for every seed.
    - F1: the top r of scores are called anomalous, r = the data's anomaly ratio (66/452; Sec. 4.1: "the
      expected 15 percent"), on validation and test alike.
    - --seed drives initialisation, batch order and the random split (the authors' code reseeds numpy with
      42 for every seed: their batch order is the same for all seeds).
    - Not in the paper: thyroid (Arrhythmia's protocol with its own ratio), digits (an offline install check
      with the MNIST model), --select last (no labels: the final model is tested).

Run:  python toll.py --dataset mnist --normal 8 --beta 1000
      python toll.py --dataset arrhythmia --split official --data-root ./data
"""
import argparse
import copy
import json
import math
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import f1_score, roc_auc_score

from common import (DataError, IMAGE_DATASETS, data_root, global_contrast_normalization, is_anomaly, load_images,
                    load_tabular, minmax_scale, one_class_split, parse_normal, standardize)

# The paper's values per dataset (Sec. 4.1 batch sizes and validation size, Appendix B beta, lr and latent size);
# the keys are the keyword names of build_model(), train(), anomaly_scores() and prepare().
PAPER = {
    "mnist":         dict(beta=1000, lr=1e-4, latent=128, batch_size=1000, val_size=10000),
    "fashion-mnist": dict(beta=100, lr=1e-4, latent=256, batch_size=500, val_size=10000),
    "cifar10":       dict(beta=10, lr=1e-2, latent=64, batch_size=50, val_size=10000),
    "cifar100":      dict(beta=100, lr=1e-3, latent=64, batch_size=100, val_size=10000),
    "arrhythmia":    dict(beta=10, lr=1e-3, latent=16, batch_size=100, val_size=None),   # beta, lr: authors' code
    "thyroid":       dict(beta=10, lr=1e-3, latent=16, batch_size=100, val_size=None),   # not in the paper
    "digits":        dict(beta=1000, lr=1e-4, latent=128, batch_size=64, val_size=300),  # install check
}
TABULAR = ("arrhythmia", "thyroid")
NORMS = {"1": 1.0, "2": 2.0, "inf": math.inf}   # --norm -> p of ||z||_p (Table 8)
SPLIT_DIR = "toll_splits"                        # --split official: the authors' index files, per dataset
SPLIT_FILES = {
    "mnist": ["10000_val_indices_mnist.npy"],
    "fashion-mnist": ["10000_val_indices_fmnist.npy"],
    "cifar10": ["10000_val_indices_cifar10.npy"],
    "cifar100": ["10000_val_indices_cifar100.npy"],
    "arrhythmia": ["randomized_normal_indices_arrhythmia.npy", "randomized_anomalous_indices_arrhythmia.npy"],
}


# ------------------------------------------------------------------------------------------ models (Appendix B)

class TollAE(nn.Module):
    """x -> z = encoder(x) -> x_hat = decoder(z); input_shape is one sample's shape."""

    def forward(self, x):
        z = self.encoder(x)
        return self.decoder(z), z


class MnistAE(TollAE):
    """Appendix B.1, MNIST / Fashion-MNIST (1×28×28)."""
    input_shape = (1, 28, 28)

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
    """Appendix B.2, CIFAR-10 / CIFAR-100 (3×32×32). All convolutions bias-free except the last of the
    encoder and the last of the decoder; LeakyReLU slope 0.1; latent = the 64 channels of a 1×1 map."""
    input_shape = (3, 32, 32)

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
    """Appendix B.3, Arrhythmia: D-256-128-latent / latent-128-256-D with BN and ReLU."""

    def __init__(self, dim, latent=16):
        super().__init__()
        self.input_shape = (dim,)
        self.encoder = nn.Sequential(nn.Linear(dim, 256), nn.BatchNorm1d(256), nn.ReLU(),
                                     nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, 128), nn.BatchNorm1d(128), nn.ReLU(),
                                     nn.Linear(128, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, dim))


def build_model(input_shape, latent=PAPER["mnist"]["latent"]):
    """Appendix B's autoencoder for one sample's shape: (D,) tabular (B.3), (1, 28, 28) (B.1), (3, 32, 32) (B.2)."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 1 and shape[0] >= 1:
        return TabularAE(shape[0], latent)
    if shape == MnistAE.input_shape:
        return MnistAE(latent)
    if shape == CifarAE.input_shape:
        return CifarAE(latent)
    raise ValueError(f"input_shape must be (D,) for tabular data, (1, 28, 28) or (3, 32, 32) for images "
                     f"(Appendix B), got {shape}")


def as_input(model, x, name="x"):
    """numpy array or tensor -> float32 tensor on the model's device, checked against the model's input shape."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.ndim < 2 or tuple(x.shape[1:]) != model.input_shape:
        expected = ", ".join(map(str, ("N",) + model.input_shape))
        raise ValueError(f"{name} must have shape ({expected}) for this model, got {tuple(x.shape)}")
    return x.to(next(model.parameters()).device)


# ------------------------------------------------------------------------------------------ loss, score, metrics

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
def anomaly_scores(model, x, beta=PAPER["mnist"]["beta"], p=2, chunk=1000):
    """Eq. (3) for every sample of x -> numpy (N,), higher = more anomalous; in eval mode (BN running statistics).
    Use the beta and p the model was trained with: Eq. (3) is Eq. (2)'s per-sample term."""
    x = as_input(model, x)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        x_hat, z = model(xb)
        out.append(toll_score(xb, x_hat, z, beta, p)[0])
    model.train(was_training)
    return torch.cat(out).cpu().numpy()


def auroc(labels, scores):
    """Sec. 4.1: area under the ROC curve (labels 1 = anomaly)."""
    return roc_auc_score(labels, scores)


def f1_top_ratio(labels, scores, ratio):
    """Sec. 4.1, Arrhythmia: the top `ratio` of scores are called anomalous, then F1 (labels 1 = anomaly)."""
    pred = np.zeros(len(scores), dtype=int)
    pred[np.argsort(-scores)[:int(round(ratio * len(scores)))]] = 1
    return f1_score(labels, pred)


def check_finite(value, where):
    if not np.all(np.isfinite(value)):
        raise FloatingPointError(f"training diverged: {where} is not finite. Try a smaller --lr or --beta")


# ------------------------------------------------------------------------------------------ training (Sec. 4.1)


def train(model, x_normal, x_val=None, y_val=None, beta=PAPER["mnist"]["beta"], lr=PAPER["mnist"]["lr"],
          iters=2000, batch_size=PAPER["mnist"]["batch_size"], eval_every=20, p=2, metric=auroc, log=print):
    """Sec. 4.1: `iters` random batches of normal samples (no repeats within a batch), Adam with a fixed learning
    rate on the Eq. (2) loss. With labelled validation data (y_val: 1 = anomaly), every `eval_every` batches
    metric(y_val, scores) is computed and the best checkpoint is loaded at the end; without it the final model
    stays. Returns (model, dict(best_val, best_iter, train_seconds)); best_val is None without validation."""
    x_normal = as_input(model, x_normal, "x_normal")
    if not 2 <= batch_size <= len(x_normal):
        raise ValueError(f"batch_size must be in [2, {len(x_normal)}] (BatchNorm needs 2; x_normal has "
                         f"{len(x_normal)} samples), got {batch_size}")
    if x_val is not None:
        x_val = as_input(model, x_val, "x_val")
        y_val = np.asarray(y_val.cpu() if torch.is_tensor(y_val) else y_val)
        if y_val.shape != (len(x_val),):
            raise ValueError(f"y_val must have shape ({len(x_val)},), a label per x_val sample (1 = anomaly), got "
                             f"{y_val.shape}")
    name = getattr(metric, "__name__", "metric")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best = (-1.0, 0, None)  # (metric, iteration, state)
    n, t0, train_time = len(x_normal), time.time(), 0.0
    for it in range(1, iters + 1):
        ts = time.time()
        xb = x_normal[torch.randperm(n, device=x_normal.device)[:batch_size]]
        x_hat, z = model(xb)
        loss, rec, reg = toll_loss(xb, x_hat, z, beta, p)        # Eq. (2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = loss.item()
        train_time += time.time() - ts
        check_finite(loss_value, f"the Eq. (2) loss at iteration {it}")
        if it % eval_every == 0 or it == iters:
            line = f"iter {it}/{iters} loss={loss_value:.4f} rec={rec.item():.4f} znorm={reg.item():.4f}"
            if x_val is not None:
                scores = anomaly_scores(model, x_val, beta, p)
                check_finite(scores, f"an Eq. (3) validation score at iteration {it}")
                m = metric(y_val, scores)
                if m > best[0]:
                    best = (m, it, copy.deepcopy(model.state_dict()))
                line += f" val_{name}={m:.4f} best={best[0]:.4f}@{best[1]}"
            log(f"{line} elapsed={time.time() - t0:.1f}s")
    if best[2] is not None:
        model.load_state_dict(best[2])
    info = dict(best_val=best[0], best_iter=best[1]) if x_val is not None else dict(best_val=None, best_iter=iters)
    return model, dict(info, train_seconds=train_time)


# ------------------------------------------------------------------------------------------ data (Sec. 4.1)

def tabular_split(X, y, seed=0, paths=None):
    """Sec. 4.1 (--split random): per class 20% test and 30% validation drawn from seed, the remaining normal rows
    train. With paths (--split official): the authors' permutations of the normal and of the anomalous rows, cut
    at np.round(0.2 n) and np.round(0.4 n) into test / validation / rest (their src/data.py, load_arrhythmia)."""
    g = torch.Generator().manual_seed(seed)
    parts = {"train": [], "val": [], "test": []}
    for label in (0, 1):
        idx = torch.nonzero(y == label).view(-1)
        if paths is None:
            idx = idx[torch.randperm(len(idx), generator=g)]
            a, b = round(0.2 * len(idx)), round(0.2 * len(idx)) + round(0.3 * len(idx))
        else:
            what = "normal rows (y = 0)" if label == 0 else "anomalous rows (y = 1)"
            idx = idx[load_index_file(paths[label], len(idx), what, exact=True)]
            a, b = int(np.round(0.2 * len(idx))), int(np.round(0.4 * len(idx)))
        parts["test"].append(idx[:a])
        parts["val"].append(idx[a:b])
        if label == 0:
            parts["train"].append(idx[b:])
    test, val = torch.cat(parts["test"]), torch.cat(parts["val"])
    return {"train": X[parts["train"][0]], "val": (X[val], y[val]), "test": (X[test], y[test])}


def split_paths(dataset, root=None):
    """--split official: the authors' index files for this dataset; a DataError when there are none or they
    are missing (checked before any data is loaded)."""
    if dataset not in SPLIT_FILES:
        raise DataError(f"--split official: the Toll authors ship no index files for {dataset} "
                        f"(they have {', '.join(SPLIT_FILES)}). Use --split random")
    folder = os.path.join(data_root(root), SPLIT_DIR)
    paths = [os.path.join(folder, f) for f in SPLIT_FILES[dataset]]
    missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"--split official reads {', '.join(SPLIT_FILES[dataset])} from {folder}, and "
                        f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not there. These are the "
                        f"index files of the authors' code (GitHub Soltanilara/Toll, folder `val IDs/`, MIT "
                        f"License): copy them into {folder}, or use --split random")
    return paths


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
    if (exact and len(a) != n) or (not exact and not 0 < len(a) < n):
        rule = "the file must list each once" if exact else "at least one must be listed and some left to train"
        raise DataError(f"{path} holds {len(a)} indices, but the data has {n} {what}: {rule}. {fix}")
    bad = a[(a < 0) | (a >= n)]
    if len(bad):
        raise DataError(f"{path}: index {int(bad[0])} is out of range for the {n} {what} (0..{n - 1}). {fix}")
    values, counts = np.unique(a, return_counts=True)
    if (counts > 1).any():
        dup, times = int(values[counts > 1][0]), int(counts[counts > 1][0])
        raise DataError(f"{path}: index {dup} appears {times} times; a split lists each row once. {fix}")
    return torch.from_numpy(a.astype(np.int64))


def prepare(dataset, normal="0", root=None, seed=0, val_size=None, split="random"):
    """Load, split and preprocess a built-in dataset as Sec. 4.1 specifies -> (dict(train=x, val=(x, y) or None,
    test=(x, y), anomaly_ratio= on tabular sets), the normal classes). Labels: 1 = anomaly. val_size: the
    labelled hold-out of the image train split (None: the dataset's PAPER value; unused with split="official")."""
    paths = split_paths(dataset, root) if split == "official" else None
    if dataset in TABULAR:
        X, y = load_tabular(dataset, root)
        parts = tabular_split(X, y, seed, paths)
        return dict(parts, anomaly_ratio=float(y.float().mean())), [0]
    normal = parse_normal(normal, IMAGE_DATASETS[dataset][0])
    x_tr, y_tr, x_te, y_te = load_images(dataset, root)
    if paths:      # --split official: the listed train-split indices validate, the normal rest trains
        val_idx = load_index_file(paths[0], len(x_tr), "train-split images")
        rest = torch.ones(len(x_tr), dtype=torch.bool)
        rest[val_idx] = False
        rest &= torch.isin(y_tr, torch.as_tensor(normal))
        if not rest.any():
            raise DataError(f"no training samples of normal class(es) {normal} are left outside {paths[0]}. "
                            "Use the authors' file for this dataset, or --split random")
        parts = {"train": x_tr[rest], "val": (x_tr[val_idx], is_anomaly(y_tr[val_idx], normal)),
                 "test": (x_te, is_anomaly(y_te, normal))}
    else:
        val_size = PAPER[dataset]["val_size"] if val_size is None else val_size
        parts = one_class_split(x_tr, y_tr, x_te, y_te, normal, val_size=val_size, seed=seed)
    if dataset.startswith("cifar"):
        # Deep-SVDD convention: GCN (L1) per image, then min-max with the normal training images' extremes
        lo_hi = global_contrast_normalization(parts["train"])
        lo, hi = lo_hi.min(), lo_hi.max()
        f = lambda x: minmax_scale(global_contrast_normalization(x), lo, hi)
    else:
        # per-dataset standardisation with the whole training split's mean and std (MNIST 0.1307/0.3081)
        mean, std = x_tr.mean(), x_tr.std()
        f = lambda x: standardize(x, mean, std)
    val = (f(parts["val"][0]), parts["val"][1]) if parts["val"] else None
    return {"train": f(parts["train"]), "val": val, "test": (f(parts["test"][0]), parts["test"][1])}, normal


# ------------------------------------------------------------------------------------------ command line
# These lines are the same in all five scripts (only data loading and ResNet blocks are shared via common.py).
# Needs: import argparse, json, math, os, random, sys, tempfile; numpy as np; torch.

class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error shape, 'error: <what is wrong>. <what to do>', and exit status 2."""

    def error(self, message):
        print(f"error: {message}. Run `python {self.prog} --help` for the accepted values.", file=sys.stderr)
        sys.exit(2)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help prints the value each option really takes ('(default: 0.0001)'), and nothing where there is none."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        if isinstance(action.default, float):
            return f"{action.help} (default: {action.default:g})"
        return super()._get_help_string(action)


def number(kind=float, low=None, high=None, low_open=False):
    """argparse type: a finite int or float in [low, high] (low itself excluded with low_open)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got "
                                             f"'{text}'") from None
        plain = lambda x: str(int(x)) if float(x).is_integer() else f"{x:g}"     # 4294967295, not 4.29497e+09
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number (got {text})")
        if (low is not None and (value < low or (low_open and value == low))) or (high is not None and value > high):
            rng = f"{'>' if low_open else '>='} {plain(low)}" if high is None else f"in [{plain(low)}, {plain(high)}]"
            raise argparse.ArgumentTypeError(f"must be {rng} (got {text})")
        return value
    return parse


def device_type(name):
    """argparse type: auto (cuda if present, else cpu), cpu, cuda or cuda:N -> torch.device; an absent one is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and (count == 0 or (device.index or 0) >= count):
        raise argparse.ArgumentTypeError(f"'{name}' was asked for, but torch finds {count} CUDA device(s) on this "
                                         "machine; use --device cpu (or auto)")
    return device


def output_path(path):
    """argparse type: a file this run can write, tried now so that no finished run is lost at the end."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name such as {os.path.join(path, 'out')}")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"the folder {folder} does not exist; create it first or choose another")
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot write into {folder} ({e.strerror}); choose a writable folder") from None
    return path


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_result(result, json_path=None, log=print):
    """The RESULT line (the last line a run prints) and, with --json, the same keys written atomically."""
    log("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    if json_path:
        with open(json_path + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(json_path + ".tmp", json_path)


def parse_args(argv=None):
    pre = ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--dataset", default="mnist")
    pre.add_argument("--split", default="random")
    known = pre.parse_known_args(argv)[0]
    p = ArgumentParser(description="Toll: targeted collapse regularized autoencoder (Ghafourian et al., TNNLS 2024)",
                       formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--dataset", default="mnist", choices=list(PAPER),
                   help="mnist, fashion-mnist, cifar10, cifar100 (20 superclasses), arrhythmia (Sec. 4.1); not in "
                        "the paper: thyroid (Arrhythmia's values), digits (install check: MNIST's, batch 64, val 300)")
    p.add_argument("--normal", default="0", help="normal class, or a comma list; tabular sets ignore it, their "
                                                 "normal label is 0 (Sec. 4.1: one class)")
    p.add_argument("--data-root", default=os.environ.get("AD_DATA_ROOT", "./data"),
                   help="datasets folder, torchvision's layout ($AD_DATA_ROOT if set)")
    p.add_argument("--seed", type=number(int, 0, 2 ** 32 - 1), default=0,
                   help="initialisation, batch order and the random split (Sec. 4.1 averages 10 seeds)")
    p.add_argument("--device", type=device_type, default="auto",
                   help="auto (cuda if present, else cpu), cpu, cuda or cuda:N (not in the paper)")
    p.add_argument("--iters", type=number(int, 1), default=2000, help="random training batches (Sec. 4.1)")
    p.add_argument("--batch-size", type=number(int, 2),
                   help="MNIST 1000, F-MNIST 500, CIFAR-10 50, CIFAR-100 100, Arrhythmia 100 (Sec. 4.1)")
    p.add_argument("--lr", type=number(float, 0, low_open=True),
                   help="Adam's fixed learning rate: MNIST, F-MNIST 1e-4 (Appendix B.1), CIFAR-10 1e-2, "
                        "CIFAR-100 1e-3 (B.2), Arrhythmia 1e-3 (the authors' code)")
    p.add_argument("--beta", type=number(float, 0),
                   help="weight of ||z|| in Eq. (2)-(3); 0 = the plain autoencoder (Table 7, Fig. 4): MNIST 1000, "
                        "F-MNIST 100 (Appendix B.1), CIFAR-10 10, CIFAR-100 100 (B.2), Arrhythmia 10 (the authors' "
                        "code)")
    p.add_argument("--norm", default="2", choices=list(NORMS),
                   help="p of ||z||_p in loss and score alike: 2 = Eq. (2)-(3); 1 and inf (Table 8)")
    p.add_argument("--latent", type=number(int, 1),
                   help="latent size: MNIST 128, F-MNIST 256 (Appendix B.1), CIFAR 64 (B.2), Arrhythmia 16 (B.3)")
    p.add_argument("--split", default="random", choices=["random", "official"],
                   help="random: validation (and Arrhythmia's test) split drawn from --seed (Sec. 4.1); official: "
                        f"the index files in <data-root>/{SPLIT_DIR}/ (not in the paper: the authors' code's)")
    p.add_argument("--eval-every", type=number(int, 1), default=20, help="validate every this many batches (Sec. 4.1)")
    p.add_argument("--val-size", type=number(int, 0),
                   help="labelled samples held out of an image train split for validation (Sec. 4.1: 10000); "
                        "tabular sets hold out 30%% (Sec. 4.1), --split official the index file's")
    p.add_argument("--select", default="val", choices=["val", "last"],
                   help="val: test the checkpoint of the best validation metric (Sec. 4.1, uses anomaly labels); "
                        "last: test the final model (not in the paper: for data without labels)")
    p.add_argument("--json", type=output_path, help="also write the RESULT keys to this file (not in the paper)")
    defaults = dict(PAPER.get(known.dataset, PAPER["mnist"]))
    if known.split == "official" or known.dataset in TABULAR:
        defaults["val_size"] = None                              # fixed by the split, not by --val-size
    p.set_defaults(**defaults)
    args = p.parse_args(argv)
    if args.val_size is not None and args.split == "official" and args.dataset not in TABULAR:
        p.error("--val-size does not apply with --split official: the validation set is the index file's samples "
                "(10000 in the authors' files). Drop --val-size, or use --split random")
    if args.select == "val" and args.val_size == 0 and args.dataset not in TABULAR:
        p.error("--select val needs a validation set, and --val-size is 0. Pass --val-size > 0, or --select last")
    return args


def main(argv=None):
    args = parse_args(argv)
    log = lambda line: print(line, flush=True)
    t_start = time.time()
    try:
        tabular, p = args.dataset in TABULAR, NORMS[args.norm]
        set_seed(args.seed)
        split, normal = prepare(args.dataset, args.normal, args.data_root, args.seed, args.val_size, args.split)
        if args.batch_size > len(split["train"]):
            raise DataError(f"--batch-size {args.batch_size} exceeds the {len(split['train'])} normal training "
                            "samples. Pass a smaller --batch-size")
        x_test, y_test = split["test"][0], split["test"][1].numpy()
        if tabular:
            def f1(labels, scores):
                return f1_top_ratio(labels, scores, split["anomaly_ratio"])
        metric = f1 if tabular else auroc
        model = build_model(split["train"].shape[1:], latent=args.latent).to(args.device)
        x_val, y_val = split["val"] if args.select == "val" else (None, None)
        log(f"toll: dataset={args.dataset} normal={','.join(map(str, normal))} split={args.split} "
            f"train={len(split['train'])} val={len(split['val'][0]) if split['val'] else 0} test={len(x_test)} "
            f"(anomalies {int(y_test.sum())}) beta={args.beta:g} norm=L{args.norm} lr={args.lr:g} "
            f"batch={args.batch_size} latent={args.latent} select={args.select} device={args.device}")
        model, info = train(model, split["train"], x_val, y_val, beta=args.beta, lr=args.lr, iters=args.iters,
                            batch_size=args.batch_size, eval_every=args.eval_every, p=p, metric=metric, log=log)
        ts = time.time()
        scores = anomaly_scores(model, x_test, beta=args.beta, p=p)
        score_time = time.time() - ts
        check_finite(scores, "an Eq. (3) test score")
    except (DataError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: no result was written", file=sys.stderr)
        sys.exit(130)
    name = metric.__name__
    result = {"method": "toll", "dataset": args.dataset, "normal": ",".join(map(str, normal)), "seed": args.seed,
              name: round(metric(y_test, scores), 4)}
    if tabular:
        result["auroc"] = round(auroc(y_test, scores), 4)
    result.update({"select": args.select, f"val_{name}": None if x_val is None else round(info["best_val"], 4),
                   "best_iter": info["best_iter"], "beta": args.beta, "norm": args.norm, "split": args.split,
                   "iters": args.iters, "batch_size": args.batch_size, "device": args.device.type,
                   "seconds": round(time.time() - t_start, 1),
                   "train_samples_per_s": round(args.iters * args.batch_size / max(info["train_seconds"], 1e-9), 1),
                   "score_samples_per_s": round(len(x_test) / max(score_time, 1e-9), 1)})
    result = {k: v for k, v in result.items() if v is not None}
    write_result(result, args.json, log)
    return result


if __name__ == "__main__":
    main()
