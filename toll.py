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

Equation map (a user calls build_model -> train -> anomaly_scores; save / load keep a trained model)
    Appendix B.1 / B.2 / B.3 architectures ........................ build_model(): MnistAE, CifarAE, TabularAE
    Eq. (2) loss, batch mean of the per-sample term ................ toll_loss()
    Eq. (3) anomaly score, the same per-sample term ................ toll_score(), anomaly_scores()
    Table 8: ||z||_1, ||z||_2 or ||z||_inf in Eq. (2) and (3) alike .. p= (--norm)
    Sec. 4.1: random batches, Adam, validation, model selection .... train()
    Sec. 4.1: AUROC; Arrhythmia's F1 of the top-scored 15% ......... auroc(), f1_top_ratio()
    Sec. 4.1: splits and preprocessing (built-in sets, your data) .. prepare(), normalise()

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
    - Your own data (--dataset PATH, not in the paper): tabular rows take Arrhythmia's model and values, features
      as given (a CSV split and scored as Arrhythmia, F1 at the file's anomaly ratio; an .npz by its own splits,
      the ratio of y_test); grey images MNIST's, standardised with the training images' mean and std; RGB
      images CIFAR-10's.

Run:  python toll.py --dataset mnist --normal 8 --beta 1000
      python toll.py --dataset arrhythmia --split official --data-root ./data
      python toll.py --dataset sensors.csv --save-scores s.npz --save-model toll.pt    # your own data
"""
import argparse
import copy
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import f1_score, roc_auc_score

from common import (DataError, IMAGE_DATASETS, data_root, fit_images, global_contrast_normalization, is_anomaly,
                    is_user_dataset, load_csv, load_image_folder, load_images, load_npz, load_tabular, minmax_scale,
                    one_class_split, parse_normal, standardize)

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
        self.latent = latent
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
        self.latent = latent
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
        self.input_shape, self.latent = (dim,), latent
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
def anomaly_scores(model, x, beta=PAPER["mnist"]["beta"], p=2, chunk=1000, log=None, what="scoring"):
    """Eq. (3) for every sample of x -> numpy (N,), higher = more anomalous; in eval mode (BN running statistics).
    Use the beta and p the model was trained with: Eq. (3) is Eq. (2)'s per-sample term. With log, a pass of more
    than one chunk reports its progress."""
    x = as_input(model, x)
    was_training = model.training
    model.eval()
    out, progress = [], Progress(what, len(x), log) if log and len(x) > chunk else None
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        x_hat, z = model(xb)
        out.append(toll_score(xb, x_hat, z, beta, p)[0])
        if progress:
            progress(i + len(xb))
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
    stays. Returns (model, dict(best_val, best_iter, train_seconds)); best_val is None without validation.
    A non-finite loss, or NaN/inf or all-equal validation scores, raise FloatingPointError (a degenerate run)."""
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
    n, t0, train_time, progress = len(x_normal), time.time(), 0.0, Progress("training", iters, log)
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
        if it % eval_every and it != iters:
            progress(it)                                          # a line at most every 10 s between validations
        else:
            line = f"iter {it}/{iters} loss={loss_value:.4f} rec={rec.item():.4f} znorm={reg.item():.4f}"
            if x_val is not None:
                scores = anomaly_scores(model, x_val, beta, p, log=log, what=f"validation scoring at iteration {it}")
                check_scores({"Eq. (3)": scores}, f"the validation set at iteration {it}")
                m = metric(y_val, scores)
                if m > best[0]:
                    best = (m, it, copy.deepcopy(model.state_dict()))
                line += f" val_{name}={m:.4f} best={best[0]:.4f}@{best[1]}"
            log(f"{line} elapsed={time.time() - t0:.1f}s")
    if best[2] is not None:
        model.load_state_dict(best[2])
    info = dict(best_val=best[0], best_iter=best[1]) if x_val is not None else dict(best_val=None, best_iter=iters)
    return model, dict(info, train_seconds=train_time)


def save(model, path, beta=PAPER["mnist"]["beta"], p=2, constants=None, config=None):
    """Keep a trained model: its weights, input shape and latent size (plus any hyperparameters in config), and
    what scoring new data needs: beta, p and prepare()'s constants (the "preprocess" entry). Written atomically."""
    config = dict(config or {}, input_shape=list(model.input_shape), latent=model.latent)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(path, "toll", config, dict(constants or {}, beta=beta, p=p), state)


def load(path, device="cpu"):
    """A model written by save() or --save-model -> (model in eval mode, config, preprocess). New data:
    anomaly_scores(model, normalise(x, preprocess), beta=preprocess["beta"], p=preprocess["p"])."""
    ck = load_checkpoint(path, "toll")
    model = build_model(ck["config"]["input_shape"], latent=ck["config"]["latent"])
    try:
        model.load_state_dict(ck["state"])
    except RuntimeError as e:
        raise DataError(f"'{path}' holds weights that do not fit its own config ({str(e).splitlines()[0][:200]}). "
                        "Save the model again") from None
    return model.to(device).eval(), ck["config"], ck["preprocess"]


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
    return {"train": X[parts["train"][0]], "val": (X[val], y[val]), "test": (X[test], y[test]), "index": test}


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


def normalise(x, constants):
    """prepare()'s preprocessing with its constants (a checkpoint's `preprocess`): grey images standardised with
    mean / std, RGB images GCN (L1) then min-max with gcn_min / gcn_max, tabular rows as they are."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if "mean" in constants:
        return standardize(x, torch.tensor(constants["mean"]), torch.tensor(constants["std"]))
    if "gcn_min" in constants:
        return minmax_scale(global_contrast_normalization(x), torch.tensor(constants["gcn_min"]),
                            torch.tensor(constants["gcn_max"]))
    return x


def prepare(dataset, normal=None, root=None, seed=0, val_size=None, split="random", label_column="label",
            normal_label="0", constants=None):
    """Load, split and preprocess a dataset -> (dict, the normal classes; None for your own data). The dict:
    train=x (normal samples), val=(x, y) or None, test=(x, y) (labels 1 = anomaly), index=each test sample's index
    in its source, constants=normalise()'s (tabular: the anomaly_ratio, also under anomaly_ratio=), row=the PAPER
    row whose values fit, source=what was read (your own data).
    Built-in sets as Sec. 4.1 specifies: normal default "0"; val_size, the labelled hold-out of an image train split
    (None: PAPER's; unused with split="official"). Your own data (dataset = a path): an .npz by its own splits, a
    .csv (label_column, normal_label) split like Arrhythmia, an image folder (no validation set); see common.py.
    constants (a checkpoint's): used instead of the ones fitted here when they are of the data's kind."""
    paths = split_paths(dataset, root) if split == "official" else None
    x_fit, source = None, None                     # x_fit: the images whose mean / std standardise grey data
    if dataset in TABULAR:
        X, y = load_tabular(dataset, root)
        parts, ratio, normal = tabular_split(X, y, seed, paths), float(y.float().mean()), [0]
    elif dataset in PAPER:
        normal = parse_normal("0" if normal is None else normal, IMAGE_DATASETS[dataset][0])
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
        x_fit = x_tr   # MNIST-type data: the whole training split's mean and std (MNIST 0.1307/0.3081)
    elif dataset.endswith(".csv"):
        X, y = load_csv(dataset, label_column, normal_label)
        parts, ratio, normal = tabular_split(X, y, seed), float(y.float().mean()), None
        source = f"{len(X)} rows of {X.shape[1]} features, {int(y.sum())} anomalies; 20% test / 30% validation " \
                 "per class drawn from --seed"
    elif dataset.endswith(".npz"):
        parts, normal = load_npz(dataset), None
        shape, val = tuple(parts["train"].shape[1:]), parts["val"]
        source = (f"{len(parts['train'])} x_train, {len(parts['test'][0])} x_test and "
                  f"{len(val[0]) if val else 'no'} x_val")
        if len(shape) == 1:
            ratio = float(parts["test"][1].float().mean())
            source += f" rows of {shape[0]} features"
        else:          # images -> the input of MnistAE (grey) or CifarAE (RGB)
            fit = lambda x: fit_images(x, shape[0], 28 if shape[0] == 1 else 32)
            parts = {"train": fit(parts["train"]), "val": None if val is None else (fit(val[0]), val[1]),
                     "test": (fit(parts["test"][0]), parts["test"][1])}
            source += f" images of {'x'.join(map(str, shape))}, read as {'x'.join(map(str, parts['train'].shape[1:]))}"
    elif os.path.isfile(dataset):
        raise DataError(f"'{dataset}' is a file toll.py cannot read. Give an .npz or .csv file, an image folder "
                        "(train/good/, test/good/, test/<defect>/) or a built-in dataset name")
    else:
        parts, normal = load_image_folder(dataset), None
        source = parts["source"]
    x_train, (x_test, y_test) = parts["train"], parts["test"]
    if y_test.min() == y_test.max():
        raise DataError(f"the test set of {dataset} holds {'only anomalies' if y_test[0] else 'no anomalies'}; "
                        "AUROC and F1 need both kinds. Give a test set with normal and anomalous samples")
    kind = "tabular" if x_train.ndim == 2 else ("grey" if x_train.shape[1] == 1 else "RGB")
    if kind == "tabular":      # features as given (Arrhythmia: the raw ODDS matrix, as in the authors' code)
        fitted = {"anomaly_ratio": ratio}
    elif kind == "grey":       # standardisation (Sec. 4.1: "zero mean and a standard deviation of 1")
        x_fit = x_train if x_fit is None else x_fit
        fitted = {"mean": float(x_fit.mean()), "std": float(x_fit.std())}
    else:                      # Deep-SVDD convention: GCN (L1), then min-max with the normal training images' extremes
        gcn = global_contrast_normalization(x_train)
        fitted = {"gcn_min": float(gcn.min()), "gcn_max": float(gcn.max())}
    constants = {k: (constants if constants and set(fitted) <= set(constants) else fitted)[k] for k in fitted}
    val = None if parts["val"] is None else (normalise(parts["val"][0], constants), parts["val"][1])
    out = {"train": normalise(x_train, constants), "val": val, "test": (normalise(x_test, constants), y_test),
           "index": parts.get("index", torch.arange(len(x_test))), "constants": constants, "source": source,
           "row": dataset if dataset in PAPER else {"tabular": "arrhythmia", "grey": "mnist", "RGB": "cifar10"}[kind]}
    return dict(out, anomaly_ratio=constants["anomaly_ratio"]) if kind == "tabular" else out, normal


# ------------------------------------------------------------------------------------------ command line
# These lines are the same in all five scripts (only data loading and ResNet blocks are shared via common.py).
# Needs: import argparse, json, math, os, random, subprocess, sys, tempfile, time; numpy as np; torch.

class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error shape, 'error: <what is wrong>. <what to do>', and exit status 2."""

    def error(self, message):
        print(f"error: {message}. Run `python {os.path.basename(__file__)} --help` for the accepted values.",
              file=sys.stderr)
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
            rng = (f"{'>' if low_open else '>='} {plain(low)}" if high is None else
                   f"in {'(' if low_open else '['}{plain(low)}, {plain(high)}]")
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


def write_result(result, json_path=None, log=print, extra=None):
    """The RESULT line (the last line a run prints) and, with --json, the same keys plus `extra` (configuration,
    provenance, ...: the JSON only) written atomically."""
    log("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    if json_path:
        with open(json_path + ".tmp", "w") as f:
            json.dump({**result, **(extra or {})}, f, indent=1)
        os.replace(json_path + ".tmp", json_path)


class Progress:
    """Progress of a long phase: 'what i/n, 12s elapsed, about 30s left', printed at most every `every` seconds
    (and at the end), so that no phase stays silent for long."""

    def __init__(self, what, total, log=print, every=10.0):
        self.what, self.total, self.log, self.every = what, total, log, every
        self.t0 = self.last = time.time()

    def __call__(self, done, extra=""):
        now = time.time()
        if done < self.total and now - self.last < self.every:
            return
        self.last, spent = now, now - self.t0
        left = f", about {spent / done * (self.total - done):.0f}s left" if 0 < done < self.total else ""
        self.log(f"{self.what} {done}/{self.total}{extra} {spent:.0f}s elapsed{left}")


def check_scores(scores, where):
    """A degenerate run is not a result: NaN/inf scores, or one value for every sample, stop the run (exit 3)."""
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        if not np.isfinite(s).all():
            raise FloatingPointError(f"the {name} scores of {where} hold {int((~np.isfinite(s)).sum())} NaN/inf "
                                     f"values of {s.size}: the model diverged, or the data hold values too large for "
                                     "float32. Try a smaller --lr, or rescale the data")
        if s.size > 1 and s.min() == s.max():
            raise FloatingPointError(f"every {name} score of {where} is {s[0]:.6g}: the model gives one score to "
                                     "every sample, so no metric means anything. Try another --lr or more --iters")


def provenance(argv):
    """What made this result: the command line, package versions, and the git commit of the script's folder."""
    import sklearn
    import torchvision
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        git = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = git.stdout.strip() if git.returncode == 0 else None
        dirty = commit and subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                                          capture_output=True, text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"command": " ".join(["python", os.path.basename(__file__), *argv]), "git_commit": commit,
            "git_dirty": dirty, "python": sys.version.split()[0],
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
                         "scikit-learn": sklearn.__version__}}


def save_scores(path, scores, labels, index):
    """--save-scores: every reported variant's test scores (higher = more anomalous; `scores` is the main one,
    `scores_<variant>` the others), the labels (1 = anomaly) and the test samples' indices, written atomically."""
    arrays = {("scores" if k == "main" else f"scores_{k}"): np.asarray(v, dtype=np.float64) for k, v in scores.items()}
    tmp = path + ".tmp.npz"
    np.savez(tmp, labels=np.asarray(labels, dtype=np.int64), index=np.asarray(index, dtype=np.int64), **arrays)
    os.replace(tmp, path)


def save_checkpoint(path, script, config, preprocess, state):
    """--save-model: the weights, every resolved hyperparameter and the preprocessing constants, atomically."""
    torch.save({"script": script, "config": config, "preprocess": preprocess, "state": state}, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path, script):
    """--load-model: a checkpoint this script wrote, or a DataError saying what it is instead."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"cannot read '{path}' as a checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                        f"Give a file written by `{script}.py --save-model`") from None
    if not isinstance(ck, dict) or ck.get("script") != script:
        who = ck.get("script") if isinstance(ck, dict) else None
        raise DataError(f"'{path}' is {f'a checkpoint of {who}.py' if who else 'not a checkpoint of this project'}, "
                        f"not of {script}.py. Load it with the script that wrote it")
    return ck


def dataset_name(name):
    """argparse type: a built-in dataset's name, else a path to your own data (checked when it is read)."""
    if name in PAPER or is_user_dataset(name):
        return name
    raise argparse.ArgumentTypeError(f"unknown dataset '{name}': choose one of {', '.join(PAPER)}, or give your own "
                                     "data as an .npz or .csv file or an image folder (a path)")


LOADED = ("beta", "norm", "lr", "latent", "iters", "batch_size", "eval_every", "select", "val_size")  # --load-model's


def parse_args(argv=None):
    pre = ArgumentParser(add_help=False, allow_abbrev=False)
    for flag, default in (("--dataset", "mnist"), ("--split", "random"), ("--load-model", None)):
        pre.add_argument(flag, default=default)
    known = pre.parse_known_args(argv)[0]
    p = ArgumentParser(description="Toll: targeted collapse regularized autoencoder (Ghafourian et al., TNNLS 2024)",
                       formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--dataset", type=dataset_name, default="mnist", metavar="NAME|PATH",
                   help="mnist, fashion-mnist, cifar10, cifar100 (20 superclasses), arrhythmia (Sec. 4.1); not in "
                        "the paper: thyroid (Arrhythmia's values), digits (install check: MNIST's, batch 64, val 300) "
                        "and your own data: an .npz (x_train normal samples, x_test, y_test 1 = anomaly, optional "
                        "x_val / y_val), a .csv (features as given, split and F1 as Arrhythmia's) or an image folder "
                        "(train/good, test/good, test/<defect>), with Arrhythmia's model and values for tabular data, "
                        "MNIST's for grey images (1x28x28), CIFAR-10's for RGB ones (3x32x32)")
    p.add_argument("--normal", help="normal class, or a comma list (default 0 for the built-in image sets; Sec. 4.1: "
                                    "one class); tabular sets and your own data have their own normal label")
    p.add_argument("--label-column", help="a .csv dataset's label column (default: label; not in the paper)")
    p.add_argument("--normal-label", help="a .csv dataset's label of normal rows, the others are anomalies "
                                          "(default: 0; not in the paper)")
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
    p.add_argument("--eval-every", type=number(int, 1), default=20, help="validate every this many batches (Sec. 4.1); with --select last, print a line")
    p.add_argument("--val-size", type=number(int, 0),
                   help="labelled samples held out of an image train split for validation (Sec. 4.1: 10000); "
                        "tabular sets hold out 30%% (Sec. 4.1), --split official the index file's")
    p.add_argument("--select", default="val", choices=["val", "last"],
                   help="val: test the checkpoint of the best validation metric (Sec. 4.1, uses anomaly labels); "
                        "last: test the final model, no image held out for validation (not in the paper: for data "
                        "without labels)")
    p.add_argument("--json", type=output_path, help="also write the RESULT keys, the resolved configuration and "
                                                    "the provenance to this file (not in the paper)")
    p.add_argument("--save-scores", type=output_path, metavar="FILE.npz",
                   help="write the test scores (Eq. 3, higher = more anomalous), labels (1 = anomaly) and each test "
                        "sample's index in its source (not in the paper)")
    p.add_argument("--save-model", type=output_path, metavar="FILE.pt",
                   help="write the trained weights, the resolved hyperparameters and the preprocessing constants "
                        "(not in the paper)")
    p.add_argument("--load-model", metavar="FILE.pt",
                   help="score the test data with a model written by --save-model instead of training; its "
                        "hyperparameters and preprocessing constants are used (not in the paper)")
    user = known.dataset not in PAPER
    defaults = dict.fromkeys(PAPER["mnist"]) if user else dict(PAPER[known.dataset])   # your data: after reading it
    if known.split == "official" or known.dataset in TABULAR:
        defaults["val_size"] = None                              # fixed by the split, not by --val-size
    if known.load_model:
        defaults.update(dict.fromkeys(LOADED))                   # the checkpoint's values
    p.set_defaults(**defaults)
    args = p.parse_args(argv)
    tabular = args.dataset in TABULAR
    given = [f"--{k.replace('_', '-')}" for k in LOADED + ("save_model",) if getattr(args, k) is not None]
    if args.load_model and given:
        p.error(f"{', '.join(given)} cannot be used with --load-model: the model is scored as the checkpoint holds it, "
                "with its hyperparameters, and nothing is trained. Drop them, or train a model without --load-model")
    if args.normal is not None and (user or tabular):
        why = "its normal label is 0" if tabular else "your own data labels its anomalies itself"
        p.error(f"--normal does not apply to {args.dataset}: {why}. Leave --normal out")
    if (args.label_column is not None or args.normal_label is not None) and not args.dataset.endswith(".csv"):
        p.error(f"--label-column and --normal-label apply to a .csv dataset only, not to {args.dataset}. Drop them")
    if args.val_size is not None and (user or tabular):
        p.error(f"--val-size does not apply to {args.dataset}: tabular sets validate on 30% of each class (Sec. 4.1), "
                "your own data brings its validation set (an .npz's x_val / y_val). Drop --val-size")
    if args.val_size is not None and args.split == "official":
        p.error("--val-size does not apply with --split official: the validation set is the index file's samples "
                "(10000 in the authors' files). Drop --val-size, or use --split random")
    if args.select == "val" and args.val_size == 0:
        p.error("--select val needs a validation set, and --val-size is 0. Pass --val-size > 0, or --select last")
    if args.select == "last" and args.val_size:         # nothing would use a labelled hold-out: train on all of it
        unset = object()
        if p.parse_args(argv, argparse.Namespace(val_size=unset)).val_size is not unset:
            p.error(f"--val-size {args.val_size} holds out samples that --select last never uses. Drop --val-size (all "
                    "normal training samples then train), or use --select val")
        args.val_size = 0
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    log = lambda line: print(line, flush=True)
    t_start = time.time()
    try:
        model, config, constants = load(args.load_model, args.device) if args.load_model else (None, {}, None)
        set_seed(args.seed)
        data, normal = prepare(args.dataset, args.normal, args.data_root, args.seed, args.val_size, args.split,
                               args.label_column or "label", args.normal_label or "0", constants)
        shape, (x_test, y_test) = tuple(data["train"].shape[1:]), data["test"]
        y_test, tabular = y_test.numpy(), len(shape) == 1
        if model is not None and tuple(config["input_shape"]) != shape:
            raise DataError(f"'{args.load_model}' is a model for inputs of shape {tuple(config['input_shape'])}, but "
                            f"{args.dataset} gives {shape}. Score data of that shape, or train a model on this data")
        # the resolved hyperparameters: the checkpoint's; else the flags, whose defaults are the dataset's PAPER row
        # (your own data: the row that fits it, tabular -> arrhythmia, grey -> mnist, RGB -> cifar10)
        if model is not None:
            cfg = {k: config[k] for k in LOADED}
        else:
            cfg = {k: PAPER[data["row"]].get(k) if getattr(args, k) is None else getattr(args, k) for k in LOADED}
        p = NORMS[cfg["norm"]]
        if tabular:
            def f1(labels, scores):
                return f1_top_ratio(labels, scores, data["anomaly_ratio"])
        metric = f1 if tabular else auroc
        x_val, y_val = data["val"] if cfg["select"] == "val" and data["val"] and model is None else (None, None)
        if model is None:
            if cfg["batch_size"] > len(data["train"]):
                raise DataError(f"--batch-size {cfg['batch_size']} exceeds the {len(data['train'])} normal training "
                                "samples. Pass a smaller --batch-size")
            if cfg["select"] == "val" and (x_val is None or y_val.min() == y_val.max()):
                raise DataError(f"--select val needs labelled validation data with normal and anomalous samples, and "
                                f"{args.dataset} has {'none' if x_val is None else 'only one kind'}. Pass --select last"
                                + (", or add x_val and y_val to the .npz" if args.dataset.endswith(".npz") else ""))
            model = build_model(shape, latent=cfg["latent"]).to(args.device)
        name = os.path.basename(os.path.normpath(args.dataset)) if normal is None else args.dataset
        split = args.split if args.dataset in PAPER or args.dataset.endswith(".csv") else "own"   # own: the file's
        if data["source"]:
            log(f"toll: read {name}: {data['source']}; the model and hyperparameters of --dataset {data['row']}")
        if args.load_model:
            log(f"toll: model {args.load_model} (trained on {config.get('dataset')}, seed {config.get('seed')}): its "
                "hyperparameters and preprocessing constants, no training")
        log(f"toll: dataset={name} normal={'-' if normal is None else ','.join(map(str, normal))} split={split} "
            f"train={len(data['train'])} val={len(data['val'][0]) if data['val'] else 0} test={len(x_test)} "
            f"(anomalies {int(y_test.sum())}) beta={cfg['beta']:g} norm=L{cfg['norm']} lr={cfg['lr']:g} "
            f"batch={cfg['batch_size']} latent={cfg['latent']} select={cfg['select']} device={args.device}; "
            "scores: Eq. (3), one pass over the test set")
        if args.load_model:
            info = dict(best_val=None, best_iter=None, train_seconds=None)
        else:
            model, info = train(model, data["train"], x_val, y_val, beta=cfg["beta"], lr=cfg["lr"],
                                iters=cfg["iters"], batch_size=cfg["batch_size"], eval_every=cfg["eval_every"], p=p,
                                metric=metric, log=log)
        ts = time.time()
        scores = anomaly_scores(model, x_test, beta=cfg["beta"], p=p, log=log)
        score_time = time.time() - ts
        check_scores({"Eq. (3)": scores}, "the test set")
        metric_name = metric.__name__
        result = {"method": "toll", "dataset": name, "normal": "-" if normal is None else ",".join(map(str, normal)),
                  "seed": args.seed, metric_name: round(metric(y_test, scores), 4)}
        if tabular:
            result["auroc"] = round(auroc(y_test, scores), 4)
        train_s = info["train_seconds"]
        val = None if x_val is None else round(info["best_val"], 4)
        result.update({"select": cfg["select"], f"val_{metric_name}": val, "best_iter": info["best_iter"],
                       "beta": cfg["beta"], "norm": cfg["norm"], "split": split, "iters": cfg["iters"],
                       "batch_size": cfg["batch_size"], "device": args.device.type,
                       "seconds": round(time.time() - t_start, 1),
                       "train_samples_per_s": None if train_s is None else
                       round(cfg["iters"] * cfg["batch_size"] / max(train_s, 1e-9), 1),
                       "score_samples_per_s": round(len(x_test) / max(score_time, 1e-9), 1)})
        result = {k: v for k, v in result.items() if v is not None}
        config = dict(config, **cfg, dataset=args.dataset, normal=result["normal"], seed=args.seed,
                      split=split, input_shape=list(shape), paper_row=config.get("paper_row", data["row"]))
        if args.save_scores:
            save_scores(args.save_scores, {"main": scores}, y_test, data["index"])
        if args.save_model:
            save(model, args.save_model, beta=cfg["beta"], p=p, constants=data["constants"], config=config)
    except (DataError, FloatingPointError) as e:     # a degenerate run (FloatingPointError) is not a result: exit 3
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3 if isinstance(e, FloatingPointError) else 2)
    except KeyboardInterrupt:
        print("\ninterrupted: no result was written", file=sys.stderr)
        sys.exit(130)
    write_result(result, args.json, log, extra=dict(config=config, provenance=provenance(argv)))
    return result


if __name__ == "__main__":
    main()
