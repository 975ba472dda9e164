"""Targeted collapse regularized autoencoder for anomaly detection: black hole at the center ("Toll").
Ghafourian, Shui, Upadhyay, Gupta, Filev, Soltani. IEEE TNNLS 2024, arXiv:2306.12627.

An autoencoder whose loss adds the plain L2 norm of the latent code to the reconstruction error (Sec. 3.2). The norm
term pulls every code toward the origin ("targeted collapse"); normal data keep informative codes because the
reconstruction term needs them, while unseen anomalies fall outside that balance. Training loss and anomaly score are
one expression, ||x_hat - x||_2 + beta * ||z||_2 (higher = more anomalous).

Reproduces Tables 1-4 (MNIST; CIFAR-10; Fashion-MNIST and the CIFAR-100 superclasses; Arrhythmia, F1) under the Sec.
4.1 protocol (2000 random batches, validation every 20, the best validation checkpoint tested), the beta = 0 ablation
of Table 7 and the beta grid of Fig. 4 (--beta), and Table 8's norms (--norm 1|2|inf). Fig. 2 and Theorems 1-2
(linear autoencoder): benchmarks/toll_figures.py and the tests. Not here: Tables 5-6.

Equation map (a user calls fit -> score; save / load keep a fitted model)
    Appendix B.1 / B.2 / B.3 architectures ........................ build_model(): MnistAE, CifarAE, TabularAE
    Eq. (2) loss, batch mean of the per-sample term ................ toll_loss()
    Eq. (3) anomaly score, the same per-sample term ................ toll_score(), anomaly_scores(), score()
    Table 8: ||z||_1, ||z||_2 or ||z||_inf in Eq. (2) and (3) alike .. p= (--norm)
    Sec. 4.1: random batches, Adam, validation, model selection .... train(), fit()
    Sec. 4.1: AUROC; Arrhythmia's F1 of the top-scored 15% ......... auroc(), f1_top_ratio()
    Sec. 4.1: splits and preprocessing ............................. prepare(), tabular_split(), normalise()

Deviations: where the paper is silent, or this file differs or adds
    - No padding: the printed kernels and strides reach 64x4x4 (MNIST) and 1x1 (CIFAR) without it.
    - CIFAR decoder: the last Conv(3, 1, 1) has an ordinary bias, as printed in Appendix B.2 (the authors' code: a
      bias-free convolution plus a learned per-pixel output bias).
    - CIFAR-10 and CIFAR-100 alike: GCN (L1), then min-max with the extremes of the GCN'd normal training images (Sec.
      4.1 names no extremes; the authors' code hard-codes per-class pairs). MNIST-type data are standardised with the
      whole train split's mean and std (Sec. 4.1: "zero mean and a standard deviation of 1"). Arrhythmia: the raw ODDS
      matrix, as in the authors' code.
    - Arrhythmia's beta 10 and lr 1e-3 are the authors' README's (Appendix B.3 prints the architecture only).
    - --split random (default): images hold out --val-size labelled train-split samples (Sec. 4.1: 10000); Arrhythmia
      20% test / 30% validation per class (Sec. 4.1; stratified, the text does not say), the anomalies outside both
      unused. --split official: the authors' index files (GitHub Soltanilara/Toll, folder `val IDs/`, MIT License) in
      <data-root>/toll_splits/; Arrhythmia cut at 20% / 40% as their src/data.py does (20% validation, not the text's
      30%); one split for every seed.
    - F1: the top r of scores are anomalous, r = the data's anomaly ratio (66/452; Sec. 4.1: "the expected 15
      percent"). --seed drives init, batches and the split (the authors' code reseeds numpy with 42 every time).
    - Not in the paper: thyroid (Arrhythmia's protocol), digits (an install check with the MNIST model), --select last
      (the final model is tested), your own data (--dataset PATH: tables take Arrhythmia's model and values,
      common.split_table's split with a labelled validation set and the training rows' standardisation; grey images
      MNIST's, RGB images CIFAR-10's).
Run:  python toll.py --dataset mnist --normal 8 --beta 1000
"""
import copy
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import f1_score, roc_auc_score

from common import (DataError, IMAGE_DATASETS, Progress, as_input, check_finite, check_input_shape, check_scores,
                    command_line, data_root, exit_codes, finish, fit_batch, global_contrast_normalization, is_anomaly,
                    load_checkpoint, load_images, load_tabular, load_weights, loaded_note, minmax_scale, number,
                    one_class_split, output_flags, parse, parse_normal, read_index_file, read_user_data, row_moments,
                    run_name, save_checkpoint, saving_run, say, set_seed, standardize, user_data_kind)

# The paper's values per dataset (Sec. 4.1 batch sizes and validation size, Appendix B beta, lr and latent size);
# the keys are the keyword names of fit() and prepare().
PAPER = {
    "mnist":         dict(beta=1000, lr=1e-4, latent=128, batch_size=1000, val_size=10000),
    "fashion-mnist": dict(beta=100, lr=1e-4, latent=256, batch_size=500, val_size=10000),
    "cifar10":       dict(beta=10, lr=1e-2, latent=64, batch_size=50, val_size=10000),
    "cifar100":      dict(beta=100, lr=1e-3, latent=64, batch_size=100, val_size=10000),
    "arrhythmia":    dict(beta=10, lr=1e-3, latent=16, batch_size=100, val_size=None),   # beta, lr: authors' code
    "thyroid":       dict(beta=10, lr=1e-3, latent=16, batch_size=100, val_size=None),   # not in the paper
    "digits":        dict(beta=1000, lr=1e-4, latent=128, batch_size=32, val_size=100),  # install check
}
USER_ROWS = {"rows": "arrhythmia", "grey": "mnist", "RGB": "cifar10"}   # your own data takes these rows' values
TABULAR = ("arrhythmia", "thyroid")
NORMS = {"1": 1.0, "2": 2.0, "inf": math.inf}   # --norm -> p of ||z||_p (Table 8)
NORM_NAME = {p: name for name, p in NORMS.items()}
FIT = ("beta", "lr", "latent", "iters", "batch_size", "eval_every")   # fit()'s keywords the command line sets
SPLIT_DIR = "toll_splits"                        # --split official: the authors' index files, per dataset
SPLIT_FILES = {d: [f"10000_val_indices_{f}.npy"] for d, f in (("mnist", "mnist"), ("fashion-mnist", "fmnist"),
                                                              ("cifar10", "cifar10"), ("cifar100", "cifar100"))}
SPLIT_FILES["arrhythmia"] = [f"randomized_{k}_indices_arrhythmia.npy" for k in ("normal", "anomalous")]
FIX = "Use the authors' file for this dataset (GitHub Soltanilara/Toll, folder `val IDs/`), or --split random"


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
        self.latent, lrelu = latent, lambda: nn.LeakyReLU(0.2)
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
    """Appendix B.2, CIFAR-10 / CIFAR-100 (3×32×32). All convolutions bias-free except the last of the encoder and
    the last of the decoder; LeakyReLU slope 0.1; latent = the 64 channels of a 1×1 map."""
    input_shape = (3, 32, 32)

    def __init__(self, latent=64):
        super().__init__()
        self.latent, lrelu = latent, lambda: nn.LeakyReLU(0.1)

        def conv(cin, cout, k, s=1, t=False):
            c = nn.ConvTranspose2d if t else nn.Conv2d
            return [c(cin, cout, k, s, bias=False), nn.BatchNorm2d(cout), lrelu()]

        self.encoder = nn.Sequential(
            *conv(3, 32, 5), *conv(32, 64, 4, 2), *conv(64, 128, 4),          # -> 32x28x28, 64x13x13, 128x10x10
            *conv(128, 256, 4, 2), *conv(256, 512, 4), *conv(512, 512, 1),   # -> 256x4x4, 512x1x1, 512x1x1
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
    if shape in (MnistAE.input_shape, CifarAE.input_shape):
        return (MnistAE if shape == MnistAE.input_shape else CifarAE)(latent)
    raise ValueError(f"input_shape must be (D,) for tabular data, (1, 28, 28) or (3, 32, 32) for images "
                     f"(Appendix B), got {shape}")


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
    """Eq. (3) for every sample of x -> numpy (N,), higher = more anomalous, in eval mode, with the beta and p the
    model was trained with (Eq. 3 is Eq. 2's per-sample term); with log, a pass of many chunks reports progress."""
    x, was_training = as_input(x, model.input_shape, next(model.parameters()).device), model.training
    model.eval()
    out, progress = [], Progress(what, len(x), log if len(x) > chunk else None)
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        x_hat, z = model(xb)
        out.append(toll_score(xb, x_hat, z, beta, p)[0])
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


# ------------------------------------------------------------------------------------------ training (Sec. 4.1)

def train(model, x_normal, x_val=None, y_val=None, beta=PAPER["mnist"]["beta"], lr=PAPER["mnist"]["lr"],
          iters=2000, batch_size=PAPER["mnist"]["batch_size"], eval_every=20, p=2, metric=auroc, log=None):
    """Sec. 4.1: `iters` random batches of normal samples (no repeats within a batch), Adam with a fixed learning
    rate on the Eq. (2) loss. With labelled validation data (y_val: 1 = anomaly), every `eval_every` batches
    metric(y_val, scores) is computed and the best checkpoint is loaded at the end; without it the final model
    stays. Returns (model, dict(best_val, best_iter, train_seconds)); best_val is None without validation.
    A non-finite loss, or NaN/inf or all-equal validation scores, raise FloatingPointError (a degenerate run)."""
    device = next(model.parameters()).device
    x_normal = as_input(x_normal, model.input_shape, device, "x_normal")
    if not 2 <= batch_size <= len(x_normal):
        raise ValueError(f"batch_size must be in [2, {len(x_normal)}] (BatchNorm needs 2; x_normal has "
                         f"{len(x_normal)} samples), got {batch_size}")
    if x_val is not None:
        x_val = as_input(x_val, model.input_shape, device, "x_val")
        y_val = np.asarray(y_val.cpu() if torch.is_tensor(y_val) else y_val)
        if y_val.shape != (len(x_val),):
            raise ValueError(f"y_val must have shape ({len(x_val)},), a label per x_val sample (1 = anomaly), got "
                             f"{y_val.shape}")
    name, log = getattr(metric, "__name__", "metric"), log or (lambda line: None)
    opt, best = torch.optim.Adam(model.parameters(), lr=lr), (-1.0, 0, None)   # best: (metric, iteration, state)
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
        check_finite(loss_value, f"the Eq. (2) loss at iteration {it}", "Try a smaller --lr or --beta")
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


# ------------------------------------------------------------------------------------------ fit, score, save, load

def fit(x_normal, x_val=None, y_val=None, *, beta=PAPER["mnist"]["beta"], lr=PAPER["mnist"]["lr"],
        latent=PAPER["mnist"]["latent"], iters=2000, batch_size=PAPER["mnist"]["batch_size"], eval_every=20, p=2,
        metric=auroc, constants=None, device="cpu", log=None):
    """Sec. 4.1 on raw samples x_normal (N, D), (N, 1, 28, 28) or (N, 3, 32, 32): the preprocessing (constants;
    None = fit_constants(x_normal)), Appendix B's autoencoder for that shape, train() on Eq. (2), the best
    checkpoint on labelled x_val / y_val (raw; 1 = anomaly) if given, else the last. The model carries beta, p,
    constants, config (the hyperparameters) and info (train()'s): all that score() and save() need."""
    constants = fit_constants(x_normal) if constants is None else constants
    x, x_val = normalise(x_normal, constants), None if x_val is None else normalise(x_val, constants)
    model = build_model(x.shape[1:], latent=latent).to(device)
    model, model.info = train(model, x, x_val, y_val, beta=beta, lr=lr, iters=iters, batch_size=batch_size,
                              eval_every=eval_every, p=p, metric=metric, log=log)
    model.beta, model.p, model.constants = beta, p, constants
    model.config = dict(beta=beta, lr=lr, latent=latent, iters=iters, batch_size=batch_size, eval_every=eval_every)
    return model


def score(model, x, log=None):
    """Eq. (3) for raw samples x, preprocessed with the model's constants -> numpy (N,), higher = more anomalous."""
    return anomaly_scores(model, normalise(x, model.constants), beta=model.beta, p=model.p, log=log)


def save(model, path, config=None):
    """Keep a fitted model: weights, input shape, latent size, hyperparameters (and `config`), and what scoring needs
    ("preprocess": beta, p, the constants; a bare build_model() is saved with beta 1000, p 2)."""
    config = {**getattr(model, "config", {}), **(config or {}), "input_shape": list(model.input_shape),
              "latent": model.latent}
    preprocess = dict(getattr(model, "constants", {}), beta=getattr(model, "beta", 1000), p=getattr(model, "p", 2.0))
    save_checkpoint(path, "toll", config, preprocess, {k: v.detach().cpu() for k, v in model.state_dict().items()})


def load(path, device="cpu"):
    """A model of save() or --save-model -> in eval mode, with beta, p, constants and config as fit() leaves them."""
    ck = load_checkpoint(path, "toll")
    model = load_weights(build_model(ck["config"]["input_shape"], latent=ck["config"]["latent"]), ck["state"], path)
    model.constants, model.config, model.info = dict(ck["preprocess"]), ck["config"], None
    model.beta, model.p = model.constants.pop("beta"), model.constants.pop("p")
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------ data (Sec. 4.1)

def fit_constants(x, standardize=True):
    """normalise()'s constants fitted on x: grey images' mean and std (Sec. 4.1: "zero mean and a standard deviation of
    1"), RGB images' extremes after GCN (Deep SVDD's), rows' column means and stds (standardize=False: as given)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() == 2:
        return dict(zip(("row_mean", "row_std"), (v.tolist() for v in row_moments(x)))) if standardize else {}
    gcn = global_contrast_normalization(x) if x.shape[1] == 3 else None
    return {"mean": float(x.mean()), "std": float(x.std())} if gcn is None else {"gcn_min": float(gcn.min()),
                                                                                  "gcn_max": float(gcn.max())}


def normalise(x, constants):
    """The preprocessing with its constants (fit_constants(), a checkpoint's): grey images standardised with mean /
    std, RGB images GCN (L1) then min-max with gcn_min / gcn_max, rows with row_mean / row_std or as they are."""
    x = torch.as_tensor(x, dtype=torch.float32)
    c = {k: torch.tensor(v, device=x.device) for k, v in constants.items()}
    if "gcn_min" in c:
        return minmax_scale(global_contrast_normalization(x), c["gcn_min"], c["gcn_max"])
    if "mean" in c or "row_mean" in c:
        return standardize(x, c.get("mean", c.get("row_mean")), c.get("std", c.get("row_std")))
    return x


def prepare(dataset, normal=None, root=None, seed=0, val_size=None, split="random", label_column="label",
            normal_label="0", standardize=True):
    """A dataset as Sec. 4.1 splits it, raw (fit() and score() preprocess) -> (dict, normal classes or None): train
    (normal samples), val=(x, y) or None, test=(x, y) (1 = anomaly), index (test samples in their source), constants
    (normalise()'s; MNIST-type data: the whole train split's mean and std), anomaly_ratio (F1's r for rows), row (the
    PAPER row that fits), source. val_size: an image train split's labelled hold-out (None: PAPER's)."""
    paths = None
    if split == "official":              # the authors' index files: a DataError, before loading, where missing
        if dataset not in SPLIT_FILES:
            raise DataError(f"--split official: the Toll authors ship no index files for {dataset} "
                            f"(they have {', '.join(SPLIT_FILES)}). Use --split random")
        folder = os.path.join(data_root(root), SPLIT_DIR)
        paths = [os.path.join(folder, f) for f in SPLIT_FILES[dataset]]
        missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
        if missing:
            raise DataError(f"--split official reads {', '.join(SPLIT_FILES[dataset])} from {folder}, and "
                            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not there: copy the "
                            "authors' files (GitHub Soltanilara/Toll, folder `val IDs/`, MIT License) into it, or "
                            "--split random")
    x_fit, ratio, source = None, None, None       # x_fit: the images whose mean / std standardise grey data
    if dataset in TABULAR:
        X, y = load_tabular(dataset, root)
        parts, ratio, normal, standardize = tabular_split(X, y, seed, paths), float(y.float().mean()), [0], False
    elif dataset in PAPER:
        normal = parse_normal("0" if normal is None else normal, IMAGE_DATASETS[dataset][0])
        x_tr, y_tr, x_te, y_te = load_images(dataset, root)
        if paths:
            parts = official_image_split(x_tr, y_tr, x_te, y_te, normal, paths[0])
        else:
            val_size = PAPER[dataset]["val_size"] if val_size is None else val_size
            parts = one_class_split(x_tr, y_tr, x_te, y_te, normal, val_size=val_size, seed=seed)
        x_fit = x_tr if x_tr.shape[1] == 1 else None    # grey: the whole train split's mean and std (MNIST 0.1307)
    else:
        parts, normal = read_user_data(dataset, "toll.py", seed, validates=True, label_column=label_column,
                                       normal_label=normal_label), None
        if parts["kind"] == "rows":             # F1 at the file's anomaly ratio (an npz: its test set's)
            ratio = float((parts["test"][1] if parts["table"] is None else parts["table"][1]).float().mean())
        source = parts["source"] + ("; rows standardised with the training rows' mean and std"
                                    if parts["kind"] == "rows" and standardize else "")
    x_train, x_test = parts["train"], parts["test"][0]             # both kinds tested: each split gives both
    kind = "rows" if x_train.ndim == 2 else "grey" if x_train.shape[1] == 1 else "RGB"
    return dict(parts, index=parts.get("index", torch.arange(len(x_test))), source=source, anomaly_ratio=ratio,
                constants=dict(fit_constants(x_train if x_fit is None else x_fit, standardize),
                               **({} if ratio is None else {"anomaly_ratio": ratio})),      # F1's r: kept with a model
                row=dataset if dataset in PAPER else USER_ROWS[kind]), normal


def official_image_split(x_tr, y_tr, x_te, y_te, normal, path):
    """--split official for images: the train-split indices listed in `path` validate, the normal rest trains."""
    val_idx = read_index_file(path, len(x_tr), "train-split images", fix=FIX)
    rest = ~torch.isin(torch.arange(len(x_tr)), val_idx) & torch.isin(y_tr, torch.as_tensor(normal))   # the normal rest
    if not rest.any():
        raise DataError(f"no training samples of normal class(es) {normal} are left outside {path}. {FIX}")
    return {"train": x_tr[rest], "val": (x_tr[val_idx], is_anomaly(y_tr[val_idx], normal)),
            "test": (x_te, is_anomaly(y_te, normal))}


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
            idx = idx[read_index_file(paths[label], len(idx), what, exact=True, fix=FIX)]
            a, b = int(np.round(0.2 * len(idx))), int(np.round(0.4 * len(idx)))
        parts["test"].append(idx[:a])
        parts["val"].append(idx[a:b])
        parts["train"] += [idx[b:]] if label == 0 else []
    test, val = torch.cat(parts["test"]), torch.cat(parts["val"])
    return {"train": X[parts["train"][0]], "val": (X[val], y[val]), "test": (X[test], y[test]), "index": test}


# ------------------------------------------------------------------------------------------ command line

LOADED = ("beta", "norm", "lr", "latent", "iters", "batch_size", "eval_every", "select", "val_size")  # --load-model's


def defaults(known):
    """The options' defaults for --dataset: its PAPER row (your data: its kind's); --load-model: the checkpoint's."""
    row = dict(PAPER.get(known.dataset) or PAPER[USER_ROWS[user_data_kind(known.dataset) or "grey"]], iters=2000,
               eval_every=20)
    image_split = known.split == "random" and known.dataset in PAPER and known.dataset not in TABULAR
    return dict(row, **dict.fromkeys(LOADED if known.load_model else () if image_split else ["val_size"]))


def parse_args(argv=None):
    values = lambda key: ", ".join(f"{k} {v[key]:g}" for k, v in PAPER.items() if k not in ("thyroid", "digits"))
    p = command_line("toll.py", "Toll: targeted collapse regularized autoencoder (Ghafourian et al., TNNLS 2024)",
                     PAPER, "mnist, fashion-mnist, cifar10, cifar100 (20 superclasses), arrhythmia (Sec. 4.1); not in "
                     "the paper: thyroid (Arrhythmia's values), digits (install check: MNIST's, batch 32, val 100)",
                     "tables take Arrhythmia's settings, grey images (1x28x28) MNIST's, RGB (3x32x32) CIFAR-10's",
                     "initialisation, batch order and the random split (Sec. 4.1 averages 10 seeds)", "Sec. 4.1")
    for flag, kind, text in (    # kind: an argument type, or the choices (the first is the default)
            ("iters", number(int, 1), "random training batches (Sec. 4.1)"),
            ("batch-size", number(int, 2), f"{values('batch_size')} (Sec. 4.1)"),
            ("lr", number(float, 0, low_open=True), f"Adam's fixed learning rate: {values('lr')} (Appendix B; "
                                                     "Arrhythmia's: the authors' code)"),
            ("beta", number(float, 0), f"weight of ||z|| in Eq. (2)-(3); 0 = the plain autoencoder (Table 7, Fig. 4): "
                                       f"{values('beta')} (Appendix B; Arrhythmia's: the authors' code)"),
            ("norm", ["2", "1", "inf"], "p of ||z||_p in loss and score alike: 2 = Eq. (2)-(3); 1 and inf (Table 8)"),
            ("latent", number(int, 1), f"latent size: {values('latent')} (Appendix B)"),
            ("split", ["random", "official"], "random: validation (and Arrhythmia's test) split drawn from --seed "
             f"(Sec. 4.1); official: the index files in <data-root>/{SPLIT_DIR}/ (not in the paper: the authors')"),
            ("eval-every", number(int, 1), "validate every this many batches (Sec. 4.1); with --select last, a line"),
            ("val-size", number(int, 0), "labelled samples held out of an image train split to validate (Sec. 4.1)"),
            ("select", ["val", "last"], "val: test the checkpoint of the best validation metric (Sec. 4.1; data "
             "without labelled validation: last, said in the header); last: test the final model (not in the paper)")):
        p.add_argument("--" + flag, help=text, **({"choices": kind, "default": kind[0]} if isinstance(kind, list)
                                                  else {"type": kind}))
    output_flags(p, "scores (Eq. 3)", "the weights, the resolved hyperparameters and the preprocessing constants")
    args = parse(p, argv, defaults, LOADED + ("raw_features",), pre=("split",))
    if args.normal is not None and args.dataset in TABULAR:
        p.error(f"--normal does not apply to {args.dataset}: its normal label is 0. Leave --normal out")
    if "val_size" in args.given and (args.dataset not in PAPER or args.dataset in TABULAR or args.split == "official"):
        where = "with --split official" if args.split == "official" else f"to {args.dataset}"
        p.error(f"--val-size does not apply {where}: tabular sets validate on 30% of each class (Sec. 4.1), --split "
                "official on the index files' samples, your data on its x_val / y_val or the split rule's. Drop it")
    if "val_size" in args.given and args.select == "last" and args.val_size:
        p.error(f"--val-size {args.val_size} holds out samples that --select last never uses. Drop --val-size (every "
                "normal training sample then trains) or use --select val")
    if args.select == "val" and args.val_size == 0:
        p.error("--select val needs a validation set, and --val-size is 0. Pass --val-size > 0, or --select last")
    args.val_size = 0 if args.select == "last" and args.val_size else args.val_size   # nothing held out
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    with exit_codes():
        model = load(args.load_model, args.device) if args.load_model else None
        saving_run(args, model and {k: v for k, v in model.config.items() if v != "own"}, ("seed", "split"))
        set_seed(args.seed)
        data, normal = prepare(args.dataset, args.normal, args.data_root, args.seed, args.val_size, args.split,
                               args.label_column, args.normal_label,          # a model's own standardisation
                               "row_mean" in model.constants if model else not args.raw_features)
        shape, (x_test, y_test), ratio = tuple(data["train"].shape[1:]), data["test"], data["anomaly_ratio"]
        (name, normal_text), split = run_name(args.dataset, normal), args.split if args.dataset in PAPER else "own"
        cfg, note = {k: getattr(args, k) for k in LOADED}, ""
        if model is not None:                                     # the checkpoint's hyperparameters and F1 ratio
            check_input_shape(model.input_shape, shape, args.load_model, name)
            cfg, ratio = dict({k: model.config.get(k) for k in LOADED}, beta=model.beta, norm=NORM_NAME[model.p]), \
                model.constants.get("anomaly_ratio", ratio)
            say(loaded_note(args.load_model, model.config))
        val = data["val"] if data["val"] and data["val"][1].min() < data["val"][1].max() else None
        if model is None:
            cfg["batch_size"] = fit_batch(cfg["batch_size"], len(data["train"]), "batch_size" in args.given, say)
            if cfg["select"] == "val" and val is None and "select" in args.given:
                raise DataError(f"--select val needs labelled validation data with normal and anomalous samples, and "
                                f"{args.dataset} has none. Pass --select last (an .npz can add x_val and y_val)")
            if cfg["select"] == "val" and val is None:
                cfg["select"], note = "last", " (no labelled validation data: the last model is tested)"
        def f1(labels, scores):                                    # Sec. 4.1: F1 for tables at the ratio r
            return f1_top_ratio(labels, scores, ratio)
        metric, m = (auroc, "auroc") if ratio is None else (f1, "f1")
        if data["source"]:
            say(f"toll: read {name}: {data['source']}; the model and hyperparameters of --dataset {data['row']}")
        say(f"toll: dataset={name} normal={normal_text} split={split} train={len(data['train'])} val="
            f"{len(data['val'][0]) if data['val'] else 0} test={len(x_test)} (anomalies {int(y_test.sum())}) beta="
            f"{cfg['beta']:g} norm=L{cfg['norm']} lr={cfg['lr']} batch={cfg['batch_size']} latent={cfg['latent']} "
            f"select={cfg['select']}{note} device={args.device}; scores: Eq. (3), one pass over the test set")
        if model is None:
            x_val, y_val = val if cfg["select"] == "val" else (None, None)
            model = fit(data["train"], x_val, y_val, **{k: cfg[k] for k in FIT}, p=NORMS[cfg["norm"]], metric=metric,
                        constants=data["constants"], device=args.device, log=say)
        info = model.info or dict(best_val=None, best_iter=None, train_seconds=None)       # a loaded model: none
        ts, scores, y_test = time.time(), score(model, x_test, log=say), y_test.numpy()
        speed = ((cfg["iters"] or 0) * (cfg["batch_size"] or 0), info["train_seconds"], len(x_test), time.time() - ts)
        check_scores({"Eq. (3)": scores}, "the test set")
        result = {"method": "toll", "dataset": name, "normal": normal_text, "seed": args.seed,
                  m: round(metric(y_test, scores), 4), "auroc": round(auroc(y_test, scores), 4),
                  "select": cfg["select"], f"val_{m}": None if info["best_val"] is None else round(info["best_val"], 4),
                  "best_iter": info["best_iter"], "beta": cfg["beta"], "norm": cfg["norm"], "split": split,
                  "iters": cfg["iters"], "batch_size": cfg["batch_size"]}
        config = {**model.config, **cfg, "dataset": args.dataset, "normal": normal_text, "seed": args.seed,
                  "split": split, "input_shape": list(shape), "paper_row": model.config.get("paper_row", data["row"])}
        return finish(args, argv, result, config, {"main": scores}, y_test, data["index"],
                      lambda path: save(model, path, config), speed)


if __name__ == "__main__":
    main()
