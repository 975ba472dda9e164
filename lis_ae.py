"""Latent-Insensitive Autoencoders for Anomaly Detection.
Battikh and Lenskiy, Mathematics 10(1):112, 2022 (arXiv:2110.13101).

An autoencoder trained on normal data reconstructs many anomalies well too. LIS-AE trains in two phases. In
phase 1 an ordinary autoencoder learns to reconstruct the positive (normal) set D+. In phase 2 the encoder
and decoder are frozen and only the latent layer (the bottleneck) is trained again. Its loss keeps the
positives' reconstruction error low and pulls the error of a negative set D- up to a target gamma. D- is
unlabelled data from a similar domain (Omniglot for MNIST, another class or half of the dataset, another
dataset). The features learnt in phase 1 stay, but the bottleneck stops passing through what D- looks like.
The anomaly score is the reconstruction error. LinSep-LIS-AE also trains a linear classifier in phase 1.
It acts on the latent layer's input to its non-linearity and separates D+ from D-. Positives and negatives
are then linearly separable there when phase 2 starts.

What this file reproduces
    AE (phase 1 only) vs LIS-AE vs LinSep-LIS-AE AUROC under the paper's negative-set protocols (Sec. 5):
    MNIST with Omniglot negatives, Fashion-MNIST with the next class as negatives, SVHN/CIFAR-10 with the
    other half of the classes, cross-dataset negatives (Table 3), 2-class normal sets (Table 1), a
    supervised upper bound, and the reconstruction grid of Figure 3 (--save-recon). Every run prints the AUROC
    of the phase-1 autoencoder (auroc_ae) and of the shaped model (auroc) on the same test set.

Equation map
    forward pass s = E(x), z = Z(s), x_hat = D(z) ................. LatentInsensitiveAE.forward()
    reconstruction error ||x_hat - x||_2 (loss and score) ......... reconstruction_error()
    Alg. 1, phase 1 (feature extraction) .......................... train_phase1()
    Eq. (1) latent-shaping loss ................................... latent_shaping_loss()
    Alg. 1, phase 2 (only Z trained on Eq. (1)) ................... train_phase2()
    LinSep-LIS-AE: BCE of a linear classifier on Z's pre-activation linsep_loss(), train_phase1()
    Sec. 5 negative sets and test protocols ....................... negative_classes(), prepare()
    Sec. 5 Omniglot augmentation (blur, crop, flips) .............. augment_negatives()
    Sec. 4.2 linear example ....................................... tests/test_lis_ae.py

Choices where the paper is silent (each has a flag)
    - Widths and latent sizes. 28x28 inputs: E = conv 1->32 and 32->64 (4x4, stride 2), Z = linear 3136->32
      with tanh, D = linear 32->3136 then transposed convs 64->32->32 and a 3x3 conv to 1 channel. 32x32x3
      inputs: the same layers at width 64 (convs 3->64->128), Z = 8192->128. LeakyReLU slope 0.2. Flags
      --width and --latent.
    - ||.||_2 is the per-sample Euclidean norm (not squared), averaged over the batch. Eq. (1)'s |gamma - .|
      is taken per negative sample, then averaged.
    - gamma: by default --gamma-scale (2.0) times the phase-1 AE's mean error on an augmented sample of
      2048 negatives, measured when phase 2 starts. Give --gamma to fix it. beta = 1 (--beta).
    - Optimiser Adam, lr 1e-3, batch 128 positives (plus 128 negatives when negatives are used), 2000 steps
      in each phase for 28x28 sets and 5000 for 32x32 sets (--iters sets both phases).
    - LinSep: the classifier is nn.Linear(latent, 1) on Z's pre-activation, with BCE weight 1
      (--linsep-weight). It is dropped after phase 1. Phase 1 still reconstructs positives only.
    - Omniglot augmentation, per sample on the device: horizontal and vertical flips (p = 0.5 each), random
      crop after 2-pixel zero padding, Gaussian blur (p = 0.5, 5x5 kernel, sigma ~ U(0.1, 1.5))
      (--no-neg-augment turns it off). Omniglot is resized to 28x28 with white strokes on black, like MNIST.
    - next-class with several normal classes: D- is the first class after the largest normal class that is
      not itself normal (9 wraps to 0).
    - split: classes 0..n/2-1 and n/2..n-1 are the halves (0-4 / 5-9); all normal classes must be in one half.
    - supervised: D- is the training split of every test anomaly class. This is an upper bound, since it
      uses labels of the anomalies; it is printed as such.
    - Cross-dataset D- is the whole training split of the other dataset, which must have the same image shape.
    - Inputs stay in [0, 1] (the decoder ends in a sigmoid). No validation set: the paper selects no model.
    - KNOWN PROBLEM with Z's tanh (--latent-act): phase 1 drives Z's pre-activations far into saturation
      (MNIST class 0 after 300 steps: median |u| 19.6, every unit of 2000 test images beyond |u| > 9, where
      float32 tanh' is exactly 0), so phase 2, which trains only Z, receives no gradient and the shaped model
      equals the phase-1 AE: in the cpu sweeps LIS-AE's AUROC equals the AE's to four decimals on 10/10 MNIST
      and 8/10 Fashion-MNIST classes. --latent-act linear drops the tanh (not the described architecture).
    - RESULT: train_samples_per_s counts positives + negatives of both phases per second of optimisation
      steps; score_samples_per_s is test images per second of scoring them with the phase-1 AE (the
      shaped model has the same cost), AUROC computation included.

Run:  python lis_ae.py --dataset mnist --normal 8                 (Omniglot negatives)
      python lis_ae.py --dataset fashion-mnist --normal 0 --linsep (next-class negatives, LinSep-LIS-AE)
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
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from common import DataError, IMAGE_DATASETS, is_anomaly, load_images, load_omniglot, one_class_split, parse_normal

# Per-dataset defaults. The paper gives the negative-set protocol of each dataset (Sec. 5). Everything else
# here is our choice, because the paper does not state it.
DEFAULTS = {
    "mnist":         dict(negative="omniglot", iters=2000, batch_size=128, lr=1e-3, latent=32, width=32),
    "fashion-mnist": dict(negative="next-class", iters=2000, batch_size=128, lr=1e-3, latent=32, width=32),
    "digits":        dict(negative="next-class", iters=2000, batch_size=128, lr=1e-3, latent=32, width=32),
    "svhn":          dict(negative="split", iters=5000, batch_size=128, lr=1e-3, latent=128, width=64),
    "cifar10":       dict(negative="split", iters=5000, batch_size=128, lr=1e-3, latent=128, width=64),
    "cifar100":      dict(negative="split", iters=5000, batch_size=128, lr=1e-3, latent=128, width=64),
}
LABEL_MODES = ("next-class", "split", "supervised")
NEGATIVE_CHOICES = ("none", "omniglot") + LABEL_MODES + tuple(DEFAULTS)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="LIS-AE: latent-insensitive autoencoder (Battikh & Lenskiy)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=list(DEFAULTS),
                   help="mnist, fashion-mnist, svhn, cifar10 (Sec. 5); cifar100 (20 superclasses) and digits "
                        "(offline install check) are not in the paper")
    p.add_argument("--normal", default="0",
                   help="normal class, or a comma list for multi-class normal data (Table 1: 2-class MNIST)")
    p.add_argument("--negative", default=None, choices=NEGATIVE_CHOICES,
                   help="negative set D- (Sec. 5). Defaults: MNIST omniglot, Fashion-MNIST next-class, SVHN/CIFAR "
                        "split. next-class: the class after the normal one, removed from the test set. split: "
                        "the other half of the classes (0-4 / 5-9), test on the normal class's own half. "
                        "A dataset name: that dataset's training split (Table 3). none: plain AE. "
                        "supervised: the test anomaly classes' training data (upper bound)")
    p.add_argument("--data-root", default=None,
                   help="datasets in torchvision's layout (default: $AD_DATA_ROOT, else ./data); Omniglot from "
                        "ROOT/omniglot-py or the official small subsets in ROOT/omniglot_subsets")
    p.add_argument("--seed", type=int, default=0, help="random seed: init, batches, augmentation")
    p.add_argument("--device", default="auto", help="auto = cuda if available, else cpu")
    p.add_argument("--iters", type=int, default=None,
                   help="optimisation steps of each phase (Alg. 1 trains 'until convergence'; not given). "
                        "Our default: 2000 for 28x28 sets, 5000 for 32x32 sets")
    p.add_argument("--batch-size", type=int, default=None,
                   help="positives per step, and as many negatives (not in the paper: 128)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate in both phases (not in the paper: 1e-3)")
    p.add_argument("--latent", type=int, default=None,
                   help="latent size, the output size of Z (not given; the paper says it matters most). "
                        "Default 32 for 28x28 sets, 128 for 32x32 sets")
    p.add_argument("--latent-act", default="tanh", choices=["tanh", "linear"],
                   help="activation of Z (the architecture this file follows: tanh). linear = none: with tanh "
                        "the phase-1 AE saturates Z, so phase 2 gets zero gradient (see docstring)")
    p.add_argument("--width", type=int, default=None,
                   help="channels of the first conv; the second has twice as many (not in the paper: 32 for "
                        "28x28 sets, 64 for 32x32 sets)")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the negative term of Eq. (1) (not given: 1)")
    p.add_argument("--gamma", type=float, default=None,
                   help="target reconstruction error ||x_hat- - x-||_2 of negatives in Eq. (1) (not given). "
                        "Default: --gamma-scale times the phase-1 AE's mean error on D-")
    p.add_argument("--gamma-scale", type=float, default=2.0,
                   help="gamma = this times the phase-1 AE's mean error on negatives, when --gamma is not set "
                        "(our choice)")
    p.add_argument("--linsep", action="store_true",
                   help="LinSep-LIS-AE: in phase 1 also train a linear classifier on Z's pre-activation to "
                        "separate D+ from D- (BCE)")
    p.add_argument("--linsep-weight", type=float, default=1.0,
                   help="weight of the LinSep BCE term in phase 1 (not given: 1)")
    p.add_argument("--no-neg-augment", action="store_true",
                   help="do not augment Omniglot negatives (Sec. 5 augments them with blur, crop and flips)")
    p.add_argument("--save-recon", default=None,
                   help="write a PNG grid like Figure 3: rows of test inputs (8 normal, 8 anomalous), AE "
                        "output, LIS-AE output")
    p.add_argument("--json", default=None, help="also write the RESULT keys to this JSON file (atomic)")
    return p.parse_args(argv)


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ------------------------------------------------------------------------------------------ model

class LatentInsensitiveAE(nn.Module):
    """s = E(x), z = Z(s) = act(latent(s)), x_hat = D(z). Phase 2 trains only `latent`, the linear part of Z."""

    def __init__(self, encoder, latent, decoder, act):
        super().__init__()
        self.encoder, self.latent, self.decoder, self.act = encoder, latent, decoder, act

    def forward(self, x):
        s = self.encoder(x)              # s = E(x)
        u = self.latent(s)               # Z's pre-activation (LinSep's classifier reads this)
        z = self.act(u)                  # z = Z(s), in [-1, 1] for tanh
        return self.decoder(z), u        # x_hat = D(z)


def build_model(channels, side, width, latent, latent_act="tanh"):
    """The architecture the issue describes: E = two convs with LeakyReLU; Z = one fully connected layer
    with tanh (latent_act="linear": without it, see the docstring's KNOWN PROBLEM); D = fully connected + LeakyReLU, two transposed convs with LeakyReLU, a conv with sigmoid.
    The paper gives no widths or latent sizes: see --width, --latent."""
    f = side // 4                                                           # 28 -> 7, 32 -> 8
    feat = 2 * width * f * f
    lrelu = lambda: nn.LeakyReLU(0.2)
    encoder = nn.Sequential(
        nn.Conv2d(channels, width, 4, 2, 1), lrelu(),                       # (B, w, side/2, side/2)
        nn.Conv2d(width, 2 * width, 4, 2, 1), lrelu(),                      # (B, 2w, side/4, side/4)
        nn.Flatten())                                                       # (B, 2w*f*f)
    latent_layer = nn.Linear(feat, latent)                                  # (B, latent), then tanh
    decoder = nn.Sequential(
        nn.Linear(latent, feat), lrelu(), nn.Unflatten(1, (2 * width, f, f)),   # (B, 2w, f, f)
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1), lrelu(),             # (B, w, side/2, side/2)
        nn.ConvTranspose2d(width, width, 4, 2, 1), lrelu(),                 # (B, w, side, side)
        nn.Conv2d(width, channels, 3, 1, 1), nn.Sigmoid())                  # (B, C, side, side) in [0, 1]
    return LatentInsensitiveAE(encoder, latent_layer, decoder, nn.Tanh() if latent_act == "tanh" else nn.Identity())


# ------------------------------------------------------------------------------------------ losses and score

def reconstruction_error(x_hat, x):
    """Per-sample ||x_hat - x||_2: the phase-1 loss (batch mean) and the anomaly score."""
    return torch.linalg.vector_norm((x_hat - x).flatten(1), dim=1)


def latent_shaping_loss(x_hat_pos, x_pos, x_hat_neg, x_neg, beta, gamma):
    """Eq. (1): ||x_hat+ - x+||_2 + beta * |gamma - ||x_hat- - x-||_2|, each term a batch mean.
    Returns (loss, positive term, mean negative error)."""
    rec_pos = reconstruction_error(x_hat_pos, x_pos)
    rec_neg = reconstruction_error(x_hat_neg, x_neg)
    loss = rec_pos.mean() + beta * (gamma - rec_neg).abs().mean()          # Eq. (1)
    return loss, rec_pos.mean(), rec_neg.mean()


def linsep_loss(classifier, u_pos, u_neg):
    """LinSep-LIS-AE: binary cross-entropy of a linear classifier on Z's pre-activation, D+ = 1, D- = 0."""
    logits = classifier(torch.cat([u_pos, u_neg])).squeeze(1)
    target = torch.cat([torch.ones(len(u_pos)), torch.zeros(len(u_neg))]).to(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


@torch.no_grad()
def anomaly_scores(model, x, chunk=1000):
    """Anomaly score = reconstruction error ||x_hat - x||_2, in chunks."""
    return torch.cat([reconstruction_error(model(x[i:i + chunk])[0], x[i:i + chunk])
                      for i in range(0, len(x), chunk)]).cpu().numpy()


def auroc(model, x, y):
    return roc_auc_score(y.cpu().numpy(), anomaly_scores(model, x))


def check_finite(value, where):
    if not math.isfinite(value):
        raise FloatingPointError(f"training diverged: {where} is {value}; try a smaller --lr or --beta")


# ------------------------------------------------------------------------------------------ augmentation

def augment_negatives(x, pad=2, blur_p=0.5, sigma=(0.1, 1.5), ksize=5):
    """Sec. 5 augmentation of the small Omniglot set, with per-sample random parameters, batched on x's device:
    horizontal and vertical flips (p = 0.5 each), random crop of the original size from the image padded by
    `pad` zeros, Gaussian blur (probability blur_p, sigma ~ U(sigma), ksize x ksize, reflect padding)."""
    B, C, H, W = x.shape
    dev = x.device
    x = torch.where((torch.rand(B, device=dev) < 0.5)[:, None, None, None], x.flip(3), x)   # horizontal flip
    x = torch.where((torch.rand(B, device=dev) < 0.5)[:, None, None, None], x.flip(2), x)   # vertical flip
    xp = F.pad(x, (pad, pad, pad, pad))                                     # (B, C, H+2p, W+2p)
    rows = torch.randint(0, 2 * pad + 1, (B, 1), device=dev) + torch.arange(H, device=dev)  # (B, H)
    cols = torch.randint(0, 2 * pad + 1, (B, 1), device=dev) + torch.arange(W, device=dev)  # (B, W)
    b = torch.arange(B, device=dev)[:, None, None]
    x = xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)   # random crop
    s = torch.empty(B, 1, device=dev).uniform_(*sigma)
    r = (torch.arange(ksize, device=dev) - ksize // 2).float()
    k = torch.exp(-r ** 2 / (2 * s ** 2))                                   # (B, ksize) per-sample kernel
    k = k / k.sum(1, keepdim=True)
    delta = (r == 0).float().expand(B, ksize)
    k = torch.where((torch.rand(B, 1, device=dev) < blur_p), k, delta)      # blur only with probability blur_p
    k = k.repeat_interleave(C, 0)                                           # (B*C, ksize), one per channel
    y = x.reshape(1, B * C, H, W)
    h = ksize // 2
    y = F.conv2d(F.pad(y, (h, h, 0, 0), mode="reflect"), k[:, None, None, :], groups=B * C)  # blur along width
    y = F.conv2d(F.pad(y, (0, 0, h, h), mode="reflect"), k[:, None, :, None], groups=B * C)  # along height
    return y.reshape(B, C, H, W)


# ------------------------------------------------------------------------------------------ training

def sample(x, batch_size, augment=None):
    """A random batch (indices with replacement), augmented if asked."""
    xb = x[torch.randint(len(x), (batch_size,), device=x.device)]
    return augment(xb) if augment is not None else xb


def train_phase1(model, x_pos, iters, batch_size, lr, x_neg=None, classifier=None, linsep_weight=1.0,
                 augment=None, log=print):
    """Alg. 1, phase 1 (feature extraction): minimise ||x_hat+ - x+||_2 on D+. With a classifier
    (LinSep-LIS-AE), add linsep_weight * BCE of the classifier on Z's pre-activation for D+ vs D-.
    Returns (train seconds, samples seen)."""
    params = list(model.parameters()) + (list(classifier.parameters()) if classifier is not None else [])
    opt = torch.optim.Adam(params, lr=lr)
    t0, train_time, seen = time.time(), 0.0, 0
    for it in range(1, iters + 1):
        ts = time.time()
        xb = sample(x_pos, batch_size)
        x_hat, u_pos = model(xb)
        rec = reconstruction_error(x_hat, xb).mean()                        # Alg. 1, phase 1 loss
        loss, bce = rec, None
        if classifier is not None:
            _, u_neg = model(sample(x_neg, batch_size, augment))
            bce = linsep_loss(classifier, u_pos, u_neg)                     # LinSep-LIS-AE
            loss = rec + linsep_weight * bce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = loss.item()
        train_time += time.time() - ts
        seen += batch_size * (2 if classifier is not None else 1)
        check_finite(loss_value, f"the phase-1 loss at iteration {it}")
        if it % max(1, iters // 10) == 0 or it == iters:
            line = f"phase1 iter {it}/{iters} loss={loss_value:.4f} rec={rec.item():.4f}"
            if bce is not None:
                line += f" bce={bce.item():.4f}"
            log(f"{line} elapsed={time.time() - t0:.1f}s", flush=True)
    return train_time, seen


def train_phase2(model, x_pos, x_neg, iters, batch_size, lr, beta, gamma, augment=None, log=print):
    """Alg. 1, phase 2 (latent shaping): freeze E and D, train only the latent layer Z on Eq. (1) with
    batches from D+ and D-. Returns (train seconds, samples seen)."""
    for p in list(model.encoder.parameters()) + list(model.decoder.parameters()):
        p.requires_grad_(False)                                             # E and D frozen
    opt = torch.optim.Adam(model.latent.parameters(), lr=lr)               # only Z is trained
    t0, train_time, seen = time.time(), 0.0, 0
    for it in range(1, iters + 1):
        ts = time.time()
        xp, xn = sample(x_pos, batch_size), sample(x_neg, batch_size, augment)
        loss, rec_pos, rec_neg = latent_shaping_loss(model(xp)[0], xp, model(xn)[0], xn, beta, gamma)   # Eq. (1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = loss.item()
        train_time += time.time() - ts
        seen += 2 * batch_size
        check_finite(loss_value, f"the Eq. (1) loss at phase-2 iteration {it}")
        if it % max(1, iters // 10) == 0 or it == iters:
            log(f"phase2 iter {it}/{iters} loss={loss_value:.4f} rec_pos={rec_pos.item():.4f} "
                f"rec_neg={rec_neg.item():.4f} gamma={gamma:.4f} elapsed={time.time() - t0:.1f}s", flush=True)
    for p in model.parameters():
        p.requires_grad_(True)
    return train_time, seen


# ------------------------------------------------------------------------------------------ data

def negative_classes(mode, normal, n_classes):
    """Sec. 5: the classes of the same dataset that form D-, and the classes kept in the test set.
    Negative classes never appear in the test set, except for `supervised` (an upper bound)."""
    every = list(range(n_classes))
    if mode == "next-class":
        c = (max(normal) + 1) % n_classes
        while c in normal:
            c = (c + 1) % n_classes
        return [c], [k for k in every if k != c]
    if mode == "split":
        half = n_classes // 2
        halves = [every[:half], every[half:]]
        own = [h for h in halves if any(c in h for c in normal)]
        if len(own) != 1:
            raise DataError(f"--negative split needs every --normal class in one half ({halves[0][0]}-"
                            f"{halves[0][-1]} or {halves[1][0]}-{halves[1][-1]}); got {normal}")
        return [k for k in every if k not in own[0]], own[0]
    if mode == "supervised":
        return [k for k in every if k not in normal], every
    return [], every                                                        # none, omniglot, another dataset


def prepare(args):
    """Load D+, D- and the test set for the chosen protocol. Returns a dict of tensors and descriptions."""
    n_classes, channels, side = IMAGE_DATASETS[args.dataset]
    normal = parse_normal(args.normal, n_classes)
    if args.negative == args.dataset:
        raise DataError(f"--negative {args.negative} is the normal dataset itself; use next-class, split or "
                        f"supervised for negatives from the same dataset")
    x_tr, y_tr, x_te, y_te = load_images(args.dataset, args.data_root)
    neg_cls, test_cls = negative_classes(args.negative, normal, n_classes)
    x_pos = one_class_split(x_tr, y_tr, x_te, y_te, normal)["train"]
    keep = torch.isin(y_te, torch.tensor(test_cls))
    x_test, y_test = x_te[keep], is_anomaly(y_te[keep], normal)
    if y_test.sum() == 0 or y_test.sum() == len(y_test):
        raise DataError(f"the test set of classes {test_cls} has no anomalies or no normal samples")
    x_neg, neg_desc = None, "none (plain AE)"
    if args.negative in LABEL_MODES:
        x_neg = x_tr[torch.isin(y_tr, torch.tensor(neg_cls))]
        neg_desc = f"{args.dataset} train classes {','.join(map(str, neg_cls))}"
        if args.negative == "supervised":
            neg_desc += " (supervised UPPER BOUND: negatives are the test anomaly classes)"
    elif args.negative == "omniglot":
        if channels != 1 or side != 28:
            raise DataError(f"--negative omniglot gives 1x28x28 images; {args.dataset} is {channels}x{side}x{side}")
        x_neg, _ = load_omniglot(args.data_root, size=side)
        neg_desc = "omniglot background images"
    elif args.negative != "none":
        x_neg = load_images(args.negative, args.data_root)[0]
        if x_neg.shape[1:] != x_pos.shape[1:]:
            raise DataError(f"--negative {args.negative} has images of shape {tuple(x_neg.shape[1:])}, but "
                            f"{args.dataset} has {tuple(x_pos.shape[1:])}; pick a dataset of the same shape "
                            f"(Table 3 pairs MNIST with Fashion-MNIST and SVHN with CIFAR-10)")
        neg_desc = f"{args.negative} train split (all classes)"
    if x_neg is not None and len(x_neg) == 0:
        raise DataError("the negative set is empty")
    return dict(normal=normal, x_pos=x_pos, x_neg=x_neg, x_test=x_test, y_test=y_test, test_classes=test_cls,
                neg_classes=neg_cls, neg_desc=neg_desc, channels=channels, side=side)


# ------------------------------------------------------------------------------------------ main

def fill_defaults(args):
    for k, v in DEFAULTS[args.dataset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for name in ("iters", "batch_size", "latent", "width"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if args.lr <= 0 or args.beta < 0 or args.gamma_scale <= 0 or (args.gamma is not None and args.gamma < 0):
        raise DataError("need --lr > 0, --beta >= 0, --gamma >= 0 and --gamma-scale > 0")
    if args.linsep and args.negative == "none":
        raise DataError("--linsep needs a negative set; --negative none trains a plain AE")


def save_recon(path, x, ae, model):
    """Figure 3: row 1 inputs, row 2 the phase-1 AE's output, row 3 the LIS-AE output."""
    from torchvision.utils import save_image
    with torch.no_grad():
        grid = torch.cat([x, ae(x)[0], model(x)[0]])
    save_image(grid.cpu(), path, nrow=len(x), padding=2, pad_value=0.5)


def run(args, log=print):
    t_start = time.time()
    if args.negative is None:
        args.negative = DEFAULTS[args.dataset]["negative"]
    fill_defaults(args)
    set_seed(args.seed)
    device = pick_device(args.device)
    data = prepare(args)
    x_pos, x_test, y_test = data["x_pos"].to(device), data["x_test"].to(device), data["y_test"].to(device)
    x_neg = data["x_neg"].to(device) if data["x_neg"] is not None else None
    augment = augment_negatives if args.negative == "omniglot" and not args.no_neg_augment else None
    model = build_model(data["channels"], data["side"], args.width, args.latent, args.latent_act).to(device)
    classifier = nn.Linear(args.latent, 1).to(device) if args.linsep else None
    variant = "ae" if x_neg is None else ("linsep-lis-ae" if args.linsep else "lis-ae")
    test_normal = [c for c in data["test_classes"] if c in data["normal"]]
    test_anom = [c for c in data["test_classes"] if c not in data["normal"]]
    log(f"lis_ae: dataset={args.dataset} variant={variant} normal={','.join(map(str, data['normal']))} "
        f"D+={len(x_pos)} D-={0 if x_neg is None else len(x_neg)} ({data['neg_desc']}) latent={args.latent} "
        f"width={args.width} lr={args.lr:g} batch={args.batch_size} iters={args.iters}/phase device={device}",
        flush=True)
    log(f"test set: {len(x_test)} images, normal classes {test_normal}, anomaly classes {test_anom} "
        f"({int(y_test.sum())} anomalies); excluded from test: {[c for c in data['neg_classes'] if c not in data['test_classes']]}",
        flush=True)

    # Alg. 1, phase 1: the AE (LinSep adds the BCE term)
    t1, n1 = train_phase1(model, x_pos, args.iters, args.batch_size, args.lr, x_neg, classifier,
                          args.linsep_weight, augment, log)
    ae = copy.deepcopy(model)
    ts = time.time()
    auroc_ae = auroc(ae, x_test, y_test)
    score_time = time.time() - ts
    log(f"phase1 done: AE test auroc={auroc_ae:.4f}", flush=True)
    result = {"method": "lis_ae", "dataset": args.dataset, "normal": ",".join(map(str, data["normal"])),
              "seed": args.seed}
    t2, n2, gamma = 0.0, 0, None
    if x_neg is not None:
        # Alg. 1, phase 2: gamma relative to the AE's error on D- (our choice), then Eq. (1) on Z only
        gamma = args.gamma
        if gamma is None:
            with torch.no_grad():
                xn = sample(x_neg, 2048, augment)
                gamma = args.gamma_scale * float(anomaly_scores(model, xn).mean())
        t2, n2 = train_phase2(model, x_pos, x_neg, args.iters, args.batch_size, args.lr, args.beta, gamma,
                              augment, log)
        result["auroc"] = round(auroc(model, x_test, y_test), 4)
    else:
        result["auroc"] = round(auroc_ae, 4)
    result.update({"auroc_ae": round(auroc_ae, 4), "variant": variant, "negative": args.negative,
                   "test_classes": ",".join(map(str, data["test_classes"])), "latent": args.latent,
                   "latent_act": args.latent_act,
                   "beta": args.beta, "gamma": None if gamma is None else round(gamma, 4), "iters": args.iters,
                   "batch_size": args.batch_size, "device": device.type,
                   "seconds": round(time.time() - t_start, 1),
                   "train_samples_per_s": round((n1 + n2) / max(t1 + t2, 1e-9), 1),
                   "score_samples_per_s": round(len(x_test) / max(score_time, 1e-9), 1)})
    result = {k: v for k, v in result.items() if v is not None}
    names = {"ae": "AE", "lis-ae": "LIS-AE", "linsep-lis-ae": "LinSep-LIS-AE"}
    log(f"test auroc: AE (phase 1) {auroc_ae:.4f}" + ("" if x_neg is None else
        f", {names[variant]} (phase 2) {result['auroc']:.4f}"), flush=True)
    if args.save_recon:
        idx_n = torch.nonzero(y_test == 0).view(-1)[:8]
        idx_a = torch.nonzero(y_test == 1).view(-1)[:8]
        save_recon(args.save_recon, x_test[torch.cat([idx_n, idx_a])], ae, model)
        log(f"wrote {args.save_recon}", flush=True)
    log("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.json)
    return result


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except (DataError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
