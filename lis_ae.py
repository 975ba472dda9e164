"""Latent-Insensitive Autoencoders for Anomaly Detection.
Battikh & Lenskiy, Mathematics 10(1):112, 2022 (arXiv:2110.13101).

An autoencoder trained on normal data reconstructs many anomalies well too. LIS-AE trains in two phases
(Alg. 1). Phase 1 trains an ordinary autoencoder on the positive (normal) set D+. Phase 2 freezes the encoder E
and the decoder D and retrains only the latent layer Z on Eq. (1): the positives' reconstruction error stays
low while the error of a negative set D- (unlabelled data from a similar domain) is pulled up to a target gamma.
The anomaly score is the reconstruction error (Sec. 3.4). LinSep-LIS-AE (Sec. 4.2) adds to phase 1 the BCE of a
linear classifier on Z's pre-activation, so that D+ and D- are linearly separable there when phase 2 starts.

Reproduces AE (phase 1) vs LIS-AE vs LinSep-LIS-AE (--linsep) AUROC under Sec. 5's negative sets: Table 1 (MNIST
vs Omniglot, Fashion-MNIST vs the next class, 2-class MNIST: --normal 0,1), Table 2 (SVHN / CIFAR-10 halves,
supervised upper bounds), Table 3 (--negative <dataset> --test-half), the None / Comb. / Sup. rows of Tables 4-5
and A1-A4 (single negative classes are not offered), Figure 3 (--save-recon). Each run scores the phase-1 AE
(auroc_ae) and the shaped model (auroc), which share E and D: "the most direct comparison" (Sec. 5.1).

Your own images: --dataset FILE.npz (x_train normal, x_test, y_test) or an MVTec AD folder; grey images become
1x28x28 (MNIST's settings), RGB 3x32x32 (CIFAR-10's). D- depends on D+ (Sec. 3.2), so it must be named:
--negative PATH (unlabelled images of a similar domain: an .npz holding x, or a folder of images), omniglot, a
built-in dataset, or none (the plain AE of the None rows). --save-scores, --save-model, --load-model keep a run.

Equation map (a user's calls: build_model, train_phase1, train_phase2, anomaly_scores; save, load)
    Sec. 3.1 s = E(x), z = Z(s), x_hat = D(z); Sec. 5.1 layers ... build_model(), LatentInsensitiveAE
    Sec. 3.4 score ||x_hat - x||_2 ................................ reconstruction_error(), anomaly_scores()
    Alg. 1, phase 1 (feature extraction) .......................... train_phase1()
    Sec. 4.2 LinSep BCE on Z's pre-activation (phase 1) ........... linsep_loss()
    Eq. (1) latent-shaping loss ................................... latent_shaping_loss()
    Alg. 1, phase 2 (E and D frozen, Z trained on Eq. (1)) ........ train_phase2()
    Sec. 3.2 / 5.1 D+, D- and the test set; Omniglot augmentation . prepare(), negative_set(), augment_negatives()

Deviations, and choices where the paper is silent
  - Phase-1 standardisation of Z's pre-activation (not in the paper; --latent-norm batch). Trained as written
    (tanh, Adam 1e-3), phase 1 saturates the tanh: codes +-1, no gradient in phase 2, LIS-AE = its AE. So in
    phase 1 the pre-activation is standardised per unit over the batch of positives (BatchNorm1d without scale or
    shift), folded into Z's weight and bias at its end: phase 2 and scoring use the paper's linear layer + tanh.
    --latent-norm none is the saturating original; the log shows `sat` (|z| > 0.99), RESULT latent_saturated.
  - --latent-act linear drops Z's tanh: an ablation (Sec. 3.1 keeps the tanh).
  - Sizes (Sec. 5.1 names the layers, not their widths): 28x28: E = conv 1->32->64 (4x4, stride 2), Z = linear
    3136->16, D = linear 16->3136, transposed convs 64->32->32, 3x3 conv + sigmoid, LeakyReLU 0.2; 32x32x3: the
    same at width 64, Z = 8192->128 (--width, --latent; 16 was the best of 16, 32, 64 in a short sweep).
  - ||.||_2 is the per-sample Euclidean norm (not squared), averaged over the batch. Eq. (1)'s |gamma - .| is
    taken per negative sample, as printed, so it also pulls errors above gamma down (Sec. 3.3's "satisfied if
    [it] exceeds a certain value" would be a hinge). gamma = 2 x the phase-1 AE's mean error on 2048 negatives
    (--gamma-scale, --gamma); beta = 1 (--beta). Adam, lr 1e-3, 128 positives (+ 128 negatives) per step, 2000
    steps per phase on 28x28 sets, 5000 on 32x32 sets (Alg. 1: "until convergence") (--lr, --batch-size,
    --iters). No validation set.
  - LinSep: nn.Linear(latent, 1), BCE weight 1 (train_phase1's linsep_weight), dropped after phase 1; phase 1
    still reconstructs positives only; negatives use the positives' standardisation statistics.
  - Omniglot (Sec. 5.1: blur, crop, flips): per sample, flips (p 0.5 each), crop after 2-pixel zero padding,
    Gaussian blur (p 0.5, 5x5, sigma ~ U(0.1, 1.5)); resized to 28x28, white strokes on black.
  - next-class with several normal classes: the first non-normal class after the largest normal one (9 -> 0).
    split / supervised: halves 0..n/2-1 and n/2..n-1, all normal classes in one half, tested on that half;
    supervised (an upper bound) takes as D- the normal half's other classes, i.e. the test anomalies.
Run:  python lis_ae.py --dataset mnist --normal 8 (Omniglot negatives); add --linsep for LinSep-LIS-AE
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
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from common import (DataError, IMAGE_DATASETS, fit_images, is_anomaly, is_user_dataset, load_image_folder, load_images,
                    load_npz, load_omniglot, load_unlabelled_images, parse_normal)

# Sec. 5.1: each dataset's negative set D-. The sizes and budgets below are our choices (the paper gives none);
# their keys are keyword names of build_model (latent, width) and train_phase1/2 (iters, batch_size).
NEGATIVE = {"mnist": "omniglot", "fashion-mnist": "next-class", "digits": "next-class", "svhn": "split",
            "cifar10": "split", "cifar100": "split"}
PAPER = {
    "mnist":         dict(iters=2000, batch_size=128, latent=16, width=32),
    "fashion-mnist": dict(iters=2000, batch_size=128, latent=16, width=32),
    "digits":        dict(iters=2000, batch_size=64, latent=16, width=32),    # ~120 training images per class
    "svhn":          dict(iters=5000, batch_size=128, latent=128, width=64),
    "cifar10":       dict(iters=5000, batch_size=128, latent=128, width=64),
    "cifar100":      dict(iters=5000, batch_size=128, latent=128, width=64),
}
INPUT_SHAPES = ((1, 28, 28), (3, 32, 32))
LABEL_MODES = ("next-class", "split", "supervised")
SATURATED = 0.99    # |z| above this counts as a saturated tanh unit (tanh' < 0.02)


# ------------------------------------------------------------------------------------------ model

class LatentInsensitiveAE(nn.Module):
    """s = E(x), z = Z(s) = act(latent(s)), x_hat = D(z) (Sec. 3.1). Phase 2 trains only `latent`, the linear part
    of Z. `norm` standardises Z's pre-activation during phase 1 (latent_norm="batch"); fold_latent_norm() folds it
    into `latent` when phase 1 ends, after which it is the identity."""

    def __init__(self, input_shape, encoder, latent, decoder, act, norm=None):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.encoder, self.latent, self.decoder, self.act = encoder, latent, decoder, act
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, x):
        s = self.encoder(x)              # s = E(x)
        u = self.norm(self.latent(s))    # Z's pre-activation (LinSep's classifier reads this)
        z = self.act(u)                  # z = Z(s), in [-1, 1] for tanh
        return self.decoder(z), u        # x_hat = D(z)


def build_model(input_shape=(1, 28, 28), latent=16, width=32, latent_act="tanh", latent_norm="batch"):
    """Sec. 5.1's architecture for (1, 28, 28) or (3, 32, 32) images in [0, 1]: E = two convs with LeakyReLU;
    Z = one fully connected layer with tanh (latent_act="linear" drops it, an ablation); D = fully connected +
    LeakyReLU, two transposed convs with LeakyReLU, a conv with sigmoid. latent_norm="batch" adds the phase-1
    standardisation of Z's pre-activation (not in the paper; see the deviations). The command line uses latent
    128 and width 64 for 32x32 sets."""
    input_shape = tuple(int(d) for d in input_shape)
    if input_shape not in INPUT_SHAPES:
        raise ValueError(f"input_shape must be (1, 28, 28) or (3, 32, 32) for this model, got {input_shape}")
    channels, side = input_shape[0], input_shape[1]
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
    norm = nn.BatchNorm1d(latent, affine=False) if latent_norm == "batch" else None
    act = nn.Tanh() if latent_act == "tanh" else nn.Identity()
    return LatentInsensitiveAE(input_shape, encoder, latent_layer, decoder, act, norm)


@torch.no_grad()
def fold_latent_norm(model):
    """End of phase 1: fold the standardisation (u - mean) / sqrt(var + eps) (running statistics) into Z's weight
    and bias: Z is the paper's linear layer + tanh for phase 2 and scoring, with the same outputs in eval mode."""
    bn = model.norm
    if not isinstance(bn, nn.BatchNorm1d):
        return
    scale = (bn.running_var + bn.eps).rsqrt()                               # (latent,)
    model.latent.weight.mul_(scale[:, None])
    model.latent.bias.sub_(bn.running_mean).mul_(scale)
    model.norm = nn.Identity()


# ------------------------------------------------------------------------------------------ losses and score

def reconstruction_error(x_hat, x):
    """Per-sample ||x_hat - x||_2: the phase-1 loss (batch mean) and the anomaly score (Sec. 3.4)."""
    return torch.linalg.vector_norm((x_hat - x).flatten(1), dim=1)


def latent_shaping_loss(x_hat_pos, x_pos, x_hat_neg, x_neg, beta, gamma):
    """Eq. (1): ||x_hat+ - x+||_2 + beta * |gamma - ||x_hat- - x-||_2|, each term a batch mean.
    Returns (loss, positive term, mean negative error)."""
    rec_pos = reconstruction_error(x_hat_pos, x_pos)
    rec_neg = reconstruction_error(x_hat_neg, x_neg)
    loss = rec_pos.mean() + beta * (gamma - rec_neg).abs().mean()          # Eq. (1)
    return loss, rec_pos.mean(), rec_neg.mean()


def linsep_loss(classifier, u_pos, u_neg):
    """LinSep-LIS-AE (Sec. 4.2): binary cross-entropy of a linear classifier on Z's pre-activation, D+ = 1, D- = 0."""
    logits = classifier(torch.cat([u_pos, u_neg])).squeeze(1)
    target = torch.cat([torch.ones(len(u_pos)), torch.zeros(len(u_neg))]).to(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def saturated_fraction(z):
    """Fraction of latent entries with |z| > 0.99 (tanh' < 0.02): near 1 means phase 2 gets no gradient."""
    return float((z.detach().abs() > SATURATED).float().mean())


# ------------------------------------------------------------------------------------------ training

def as_input(model, x, name="x"):
    """A numpy array or tensor -> float32 tensor on the model's device, of the shape the model takes."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if tuple(x.shape[1:]) != model.input_shape or len(x) == 0:
        raise ValueError(f"{name} must have shape (N, {', '.join(map(str, model.input_shape))}) with N >= 1 for "
                         f"this model, got {tuple(x.shape)}")
    return x.to(next(model.parameters()).device)


def augment_negatives(x, pad=2, blur_p=0.5, sigma=(0.1, 1.5), ksize=5):
    """Sec. 5.1 augmentation of the small Omniglot set, with per-sample random parameters, batched on x's device:
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


def sample(x, batch_size, augment=False):
    """A random mini-batch (indices with replacement), with Sec. 5.1's augmentation if asked."""
    xb = x[torch.randint(len(x), (batch_size,), device=x.device)]
    return augment_negatives(xb) if augment else xb


def check_finite(value, where):
    if not math.isfinite(value):
        raise FloatingPointError(f"training diverged: {where} is {value}. Try a smaller lr (--lr) or beta (--beta)")


def train_phase1(model, x_normal, x_negative=None, linsep=False, iters=2000, batch_size=128, lr=1e-3,
                 linsep_weight=1.0, augment=False, log=print):
    """Alg. 1, phase 1 (feature extraction): Adam on ||x_hat+ - x+||_2 over batches of x_normal (N, *input_shape).
    linsep=True (LinSep-LIS-AE, Sec. 4.2) adds linsep_weight x the BCE of a new linear classifier on Z's
    pre-activation, x_normal vs x_negative (augmented when augment=True); the classifier is dropped afterwards.
    With latent_norm="batch", negatives use the positives' running statistics, and the standardisation is folded
    into Z at the end. Returns the model, trained in place, in evaluation mode."""
    x_pos = as_input(model, x_normal, "x_normal")
    classifier = None
    if linsep:
        if x_negative is None:
            raise ValueError("linsep=True needs x_negative, the negative set the classifier separates from x_normal")
        x_neg = as_input(model, x_negative, "x_negative")
        classifier = nn.Linear(model.latent.out_features, 1).to(x_pos.device)
    params = list(model.parameters()) + (list(classifier.parameters()) if linsep else [])
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    progress = Progress("phase1 iter", iters, log)
    for it in range(1, iters + 1):
        xb = sample(x_pos, batch_size)                                      # Alg. 1: a mini-batch x+ from D+
        x_hat, u_pos = model(xb)                                            # x_hat+ = D(Z(E(x+)))
        rec = reconstruction_error(x_hat, xb).mean()                        # L = ||x_hat+ - x+||_2
        loss, bce = rec, None
        if linsep:
            model.norm.eval()                                               # negatives: the positives' statistics
            _, u_neg = model(sample(x_neg, batch_size, augment))
            model.norm.train()
            bce = linsep_loss(classifier, u_pos, u_neg)                     # LinSep-LIS-AE (Sec. 4.2)
            loss = rec + linsep_weight * bce
        opt.zero_grad(set_to_none=True)
        loss.backward()                                                     # Alg. 1: minimise L
        opt.step()
        check_finite(loss.item(), f"the phase-1 loss at iteration {it}")
        bce = "" if bce is None else f" bce={bce.item():.4f}"
        sat = saturated_fraction(model.act(u_pos))
        progress(it, f" loss={loss.item():.4f} rec={rec.item():.4f}{bce} sat={sat:.3f}")
    fold_latent_norm(model)                                                 # Z = linear + tanh from here on
    return model.eval()


@torch.no_grad()
def negative_target(model, x_negative, gamma_scale=2.0, augment=False, n=2048):
    """Eq. (1)'s gamma when none is given (not in the paper): gamma_scale x the model's mean reconstruction error
    on n negatives drawn with replacement (augmented if asked), measured on the phase-1 AE."""
    x_neg = as_input(model, x_negative, "x_negative")
    return gamma_scale * float(anomaly_scores(model, sample(x_neg, n, augment)).mean())


def train_phase2(model, x_normal, x_negative, iters=2000, batch_size=128, lr=1e-3, beta=1.0, gamma=None,
                 gamma_scale=2.0, augment=False, log=print):
    """Alg. 1, phase 2 (latent shaping): freeze E and D and train only the latent layer Z with Adam on Eq. (1),
    with batches from x_normal (D+) and x_negative (D-, augmented when augment=True). gamma=None: gamma_scale x
    the phase-1 AE's mean error on the negatives (negative_target). Returns the model, trained in place."""
    x_pos, x_neg = as_input(model, x_normal, "x_normal"), as_input(model, x_negative, "x_negative")
    fold_latent_norm(model)                                                 # no-op when phase 1 already did it
    model.eval()
    if gamma is None:
        gamma = negative_target(model, x_neg, gamma_scale, augment)
    for p in list(model.encoder.parameters()) + list(model.decoder.parameters()):
        p.requires_grad_(False)                                             # Alg. 1: FreezeEncoder(), FreezeDecoder()
    opt = torch.optim.Adam(model.latent.parameters(), lr=lr)               # only Z is trained
    progress = Progress("phase2 iter", iters, log)
    for it in range(1, iters + 1):
        xp, xn = sample(x_pos, batch_size), sample(x_neg, batch_size, augment)   # Alg. 1: (x+, x-) from (D+, D-)
        (x_hat_p, u_p), (x_hat_n, u_n) = model(xp), model(xn)
        loss, rec_pos, rec_neg = latent_shaping_loss(x_hat_p, xp, x_hat_n, xn, beta, gamma)   # Eq. (1)
        opt.zero_grad(set_to_none=True)
        loss.backward()                                                     # Alg. 1: minimise L
        opt.step()
        check_finite(loss.item(), f"the Eq. (1) loss at phase-2 iteration {it}")
        progress(it, f" loss={loss.item():.4f} rec_pos={rec_pos.item():.4f} rec_neg={rec_neg.item():.4f} gamma="
                     f"{gamma:.4f} sat_pos={saturated_fraction(model.act(u_p)):.3f} sat_neg="
                     f"{saturated_fraction(model.act(u_n)):.3f}")
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# ------------------------------------------------------------------------------------------ scoring

@torch.no_grad()
def in_chunks(model, x, fn, what="scoring", log=None, chunk=1000):
    """fn(model, batch) over x (a numpy array or tensor, N samples) in chunks, in evaluation mode -> tensor (N, ...);
    with log, the progress of the pass."""
    x = as_input(model, x)
    was, out = model.training, []
    model.eval()
    progress = Progress(what, len(x), log) if log else None
    for i in range(0, len(x), chunk):
        out.append(fn(model, x[i:i + chunk]))
        if progress:
            progress(min(i + chunk, len(x)))
    model.train(was)
    return torch.cat(out)


def anomaly_scores(model, x, log=None):
    """Sec. 3.4: the reconstruction error ||x_hat - x||_2 of each sample of x (N, *input_shape) -> numpy array (N,),
    higher = more anomalous. log: a callable that receives the pass's progress (silent by default)."""
    return in_chunks(model, x, lambda m, xb: reconstruction_error(m(xb)[0], xb), "scores", log).cpu().numpy()


def latent_codes(model, x, log=None):
    """z = Z(E(x)) of each sample (N, latent), to inspect the tanh's saturation."""
    return in_chunks(model, x, lambda m, xb: m.act(m(xb)[1]), "latent codes", log)


def auroc(model, x, y):
    """AUROC of anomaly_scores against labels y (1 = anomaly)."""
    return roc_auc_score(torch.as_tensor(y).cpu().numpy(), anomaly_scores(model, x))


def save_recon(path, x, ae, model):
    """Figure 3: row 1 inputs, row 2 the phase-1 AE's output, row 3 the LIS-AE output."""
    from torchvision.utils import save_image
    with torch.no_grad():
        grid = torch.cat([x, ae(x)[0], model(x)[0]])
    save_image(grid.cpu(), path, nrow=len(x), padding=2, pad_value=0.5)


def save(model, path, ae=None, config=None):
    """Write a trained model to path (.pt): the weights, build_model's settings and the input shape (plus `config`,
    e.g. the training settings); with ae, the phase-1 AE's latent layer too (E and D are shared, Alg. 1)."""
    if ae is not None and any(not torch.equal(v, ae.state_dict()[k]) for k, v in model.state_dict().items()
                              if not k.startswith("latent.")):
        raise ValueError("ae must be the phase-1 AE of model: the same E and D, only the latent layer differs")
    arch = dict(input_shape=list(model.input_shape), latent=model.latent.out_features,
                width=model.encoder[0].out_channels, latent_act="tanh" if isinstance(model.act, nn.Tanh) else "linear")
    state = {"model": model.state_dict(), **({"ae_latent": ae.latent.state_dict()} if ae is not None else {})}
    preprocess = {"input": "images in [0, 1] (uint8 / 255) of input_shape; common.fit_images converts and resizes"}
    save_checkpoint(path, "lis_ae", {**(config or {}), **arch}, preprocess, state)


def load(path):
    """A checkpoint of save() or --save-model -> (model, ae or None, checkpoint dict), in evaluation mode."""
    ck = load_checkpoint(path, "lis_ae")
    cfg, state = ck["config"], ck["state"]
    try:
        model = build_model(cfg["input_shape"], latent=cfg["latent"], width=cfg["width"], latent_act=cfg["latent_act"],
                            latent_norm="batch" if "norm.running_mean" in state["model"] else "none")   # folded?
        model.load_state_dict(state["model"])
        ae = copy.deepcopy(model) if "ae_latent" in state else None
        if ae is not None:
            ae.latent.load_state_dict(state["ae_latent"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise DataError(f"'{path}' is a lis_ae.py checkpoint whose weights do not fit its settings "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Write it again with --save-model") \
            from None
    return model.eval(), None if ae is None else ae.eval(), ck


# ------------------------------------------------------------------------------------------ data

def negative_classes(mode, normal, n_classes, test_half=False):
    """Sec. 5: (classes of the same dataset that form D-, classes kept in the test set). next-class: the next class,
    not tested; split: the other half, tested on the normal half; supervised (Table 2's Sup. rows, Table 4's
    "Sup. (0-4)"): the normal half's other classes, i.e. the test anomalies. Other modes take D- from elsewhere;
    test_half tests the normal half only (Table 3). A protocol that leaves no anomaly class is a DataError."""
    every = list(range(n_classes))
    halves = [every[:n_classes // 2], every[n_classes // 2:]]
    own = None
    if mode in ("split", "supervised") or test_half:
        own = [h for h in halves if any(c in h for c in normal)]
        if len(own) != 1:
            why = f"--negative {mode}" if mode in ("split", "supervised") else "--test-half"
            raise DataError(f"{why} needs every --normal class in one half of the classes ({halves[0][0]}-"
                            f"{halves[0][-1]} or {halves[1][0]}-{halves[1][-1]}), got {','.join(map(str, normal))}. "
                            f"Name normal classes from one half")
        own = own[0]
    tested = own if own is not None else every
    if mode == "next-class":
        c = (max(normal) + 1) % n_classes
        while c in normal:
            c = (c + 1) % n_classes
        neg, test = [c], [k for k in tested if k != c]
    elif mode == "split":
        neg, test = [k for k in every if k not in own], own
    elif mode == "supervised":
        neg, test = [k for k in own if k not in normal], own
    else:                                                                   # none, omniglot, another dataset
        neg, test = [], tested
    if not [k for k in test if k not in normal]:
        raise DataError(f"--negative {mode}{' with --test-half' if test_half else ''} leaves no anomaly class to "
                        f"test: the test classes {','.join(map(str, test))} are all normal (--normal "
                        f"{','.join(map(str, normal))})"
                        + (f" once the negative class {neg[0]} is removed" if mode == "next-class" else "")
                        + ". Name fewer normal classes, or pick another --negative (omniglot, a dataset name)")
    return neg, test


def negative_set(negative, shape, data_root=None):
    """D- from outside the normal data (Sec. 3.2, Table 3) for inputs of shape (C, S, S): omniglot, a built-in
    dataset's training split (all classes), or the user's own images (common.load_unlabelled_images). -> (x, description)."""
    if negative == "omniglot" or negative in IMAGE_DATASETS:
        has = (1, 28) if negative == "omniglot" else IMAGE_DATASETS[negative][1:]
        if has != tuple(shape[:2]):
            raise DataError(f"--negative {negative} gives {has[0]}x{has[1]}x{has[1]} images, but the normal data has "
                            f"{'x'.join(map(str, shape))} images. Pick a negative set of the same shape (Table 3 pairs "
                            "MNIST with Fashion-MNIST and SVHN with CIFAR-10), or your own images (--negative PATH)")
        if negative == "omniglot":
            return load_omniglot(data_root, size=shape[-1])[0], "omniglot background images"
        return load_images(negative, data_root)[0], f"{negative} train split (all classes)"
    return load_unlabelled_images(negative, shape[0], shape[-1]), f"your images {os.path.basename(os.path.normpath(negative))}"


def prepare(dataset, normal, negative, test_half=False, data_root=None, with_negatives=True):
    """The protocol's D+, D- and test set: a built-in dataset, or the user's own images (an .npz file or an image
    folder, see prepare_own). Checks the combination before loading, then returns a dict of tensors (x_pos, x_neg
    or None, x_test, y_test with 1 = anomaly, index = each test image's index in its source split) and text.
    with_negatives=False (scoring a saved model) skips loading D-."""
    if dataset not in IMAGE_DATASETS:
        return prepare_own(dataset, negative, data_root, with_negatives)
    n_classes, channels, side = IMAGE_DATASETS[dataset]
    normal = parse_normal(normal, n_classes)
    if negative == dataset:
        raise DataError(f"--negative {negative} is the normal dataset itself. Use next-class, split or supervised "
                        f"for negatives from the same dataset")
    neg_cls, test_cls = negative_classes(negative, normal, n_classes, test_half)
    x_tr, y_tr, x_te, y_te = load_images(dataset, data_root)
    x_pos = x_tr[torch.isin(y_tr, torch.tensor(normal))]                  # D+: the normal training images
    keep = torch.isin(y_te, torch.tensor(test_cls))
    x_test, y_test = x_te[keep], is_anomaly(y_te[keep], normal)
    if y_test.sum() == 0 or y_test.sum() == len(y_test):
        raise DataError(f"the test split of {dataset} has no images of the anomaly classes or none of the normal "
                        f"classes among classes {test_cls}. Check that the data files are complete")
    x_neg, neg_desc = None, "none (plain AE)"
    if negative in LABEL_MODES:
        x_neg = x_tr[torch.isin(y_tr, torch.tensor(neg_cls))]
        neg_desc = f"{dataset} train classes {','.join(map(str, neg_cls))}"
        if negative == "supervised":
            neg_desc += " (supervised UPPER BOUND: negatives are the test anomaly classes)"
    elif negative != "none" and with_negatives:
        x_neg, neg_desc = negative_set(negative, (channels, side, side), data_root)
    if x_neg is not None and len(x_neg) == 0:
        raise DataError(f"the negative set ({neg_desc}) is empty in the data under --data-root. Check that the "
                        f"data files are complete, or pick another --negative")
    return dict(normal=normal, x_pos=x_pos, x_neg=x_neg, x_test=x_test, y_test=y_test, test_classes=test_cls,
                neg_desc=neg_desc, index=torch.nonzero(keep).view(-1), source=None, like=dataset)


def prepare_own(path, negative, data_root=None, with_negatives=True):
    """--dataset PATH: the user's images, an .npz file (x_train normal, x_test, y_test; x_val / y_val unused) or an
    MVTec AD folder, read by common.py: grey -> (1, 28, 28), RGB -> (3, 32, 32), trained with the settings of
    MNIST (grey) or CIFAR-10 (RGB) (`like`). D- must be given: none, omniglot, a built-in dataset or a PATH."""
    name = os.path.basename(os.path.normpath(path))
    if path.endswith(".csv"):
        raise DataError(f"lis_ae.py takes images, and '{name}' is a CSV file of feature rows; use toll.py or cance.py "
                        "for tabular data")
    if negative in LABEL_MODES or (negative is None and with_negatives):
        why = "" if negative is None else f"; --negative {negative} needs the classes of a built-in dataset"
        raise DataError(f"{name} needs a negative set D- (Sec. 3.2: unlabelled images from a similar domain){why}. "
                        "Give --negative PATH (an .npz file holding x, or a folder of images), omniglot, a built-in "
                        "dataset of the same shape, or none (the plain AE of Tables 3-5's None rows)")
    if path.endswith(".npz"):
        d = load_npz(path)
        stored = tuple(d["train"].shape[1:])
        if len(stored) == 1:
            raise DataError(f"lis_ae.py takes images, and '{name}' holds ({len(d['train'])}, {stored[0]}) feature "
                            "rows; use toll.py or cance.py for tabular data")
        channels, side = (1, 28) if stored[0] == 1 else (3, 32)
        (x_test, y_test), x_pos = d["test"], fit_images(d["train"], channels, side)
        x_test = fit_images(x_test, channels, side)
        source = (f"{len(x_pos)} x_train and {len(x_test)} x_test images of {'x'.join(map(str, stored))}, read as "
                  f"{channels}x{side}x{side}" + ("; x_val / y_val unused (no validation)" if d["val"] else ""))
    else:
        d = load_image_folder(path)
        (x_pos, (x_test, y_test)), source = (d["train"], d["test"]), d["source"]
    shape = tuple(x_pos.shape[1:])
    x_neg, neg_desc = None, "none (plain AE)"
    if negative not in (None, "none") and with_negatives:
        x_neg, neg_desc = negative_set(negative, shape, data_root)
    return dict(normal=None, x_pos=x_pos, x_neg=x_neg, x_test=x_test, y_test=y_test, test_classes=None,
                neg_desc=neg_desc, index=torch.arange(len(x_test)), source=source,
                like="mnist" if shape[0] == 1 else "cifar10")


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


def png_path(path):
    """argparse type: where a PNG picture goes (a writable file whose name ends in .png)."""
    if not path.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"{path} does not end in .png, and the picture is a PNG; give a name such as "
                                         "figure.png")
    return output_path(path)


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


# the model and training options; --load-model takes them from the checkpoint and refuses them on the command line
TRAINING = ("iters", "batch_size", "lr", "latent", "width", "latent_norm", "latent_act", "beta", "gamma",
            "gamma_scale", "linsep")


def name_or_path(choices, path):
    """argparse type: one of choices, or a path to the user's own images (see common.is_user_dataset)."""
    def parse(name):
        if name in choices or is_user_dataset(name):
            return name
        raise argparse.ArgumentTypeError(f"invalid choice: '{name}' (choose from {', '.join(choices)}, or give {path})")
    return parse


def parse_args(argv=None):
    pre = ArgumentParser(add_help=False)                  # the dataset first: --help shows its defaults
    pre.add_argument("--dataset", default="mnist")
    dataset = pre.parse_known_args(argv)[0].dataset
    p = ArgumentParser(description="LIS-AE: latent-insensitive autoencoder (Battikh & Lenskiy, Mathematics 2022)",
                       formatter_class=HelpFormatter)
    p.add_argument("--dataset", type=name_or_path(tuple(PAPER), "your own images: an .npz file or an image folder"),
                   default="mnist",
                   help="mnist, fashion-mnist, svhn, cifar10 (Sec. 5); cifar100 (20 superclasses) and digits "
                        "(offline install check) are not in the paper; or your own images: an .npz file (x_train "
                        "normal, x_test, y_test with 1 = anomaly) or a folder (train/good, test/good, test/<defect>), "
                        "grey read as 1x28x28 with MNIST's settings, RGB as 3x32x32 with CIFAR-10's")
    p.add_argument("--normal", help="normal class, or a comma list for several (Table 1's 2-class MNIST: 0,1 2,3 ... "
                                    "8,9); default 0 for the built-in sets, none for your own data")
    p.add_argument("--negative", metavar="NAME|PATH", type=name_or_path(("none", "omniglot") + LABEL_MODES + tuple(
                       PAPER), "a path: an .npz file holding x, or an image folder"),
                   help="negative set D-: omniglot (MNIST; from ROOT/omniglot-py or ROOT/omniglot_subsets); "
                        "next-class (Fashion-MNIST), removed from the test set; split (SVHN, CIFAR), the other half "
                        "of the classes; supervised, the normal half's other classes = the test anomalies (upper "
                        "bound, Table 2's Sup. rows); a dataset, its training split (Table 3); none, a plain AE "
                        "(Sec. 5.1); PATH, your own unlabelled images of a similar domain (Sec. 3.2), an .npz file "
                        "holding x or a folder of images. Your own --dataset needs one of omniglot, a dataset, "
                        "PATH or none")
    p.add_argument("--test-half", action="store_true",
                   help="test only on the normal classes' half (0-4 or 5-9), as Table 3 does; split and supervised "
                        "always do (Sec. 5.2)")
    p.add_argument("--data-root", default=os.environ.get("AD_DATA_ROOT", "./data"),
                   help="datasets folder, torchvision's layout ($AD_DATA_ROOT if set)")
    p.add_argument("--seed", type=number(int, 0, 2 ** 32 - 1), default=0,
                   help="random seed: init, batches, augmentation (not in the paper)")
    p.add_argument("--device", type=device_type, default="auto",
                   help="auto (cuda if present, else cpu), cpu, cuda or cuda:N (not in the paper)")
    p.add_argument("--iters", type=number(int, 1),
                   help="optimisation steps of each phase: 2000 on 28x28 sets, 5000 on 32x32 sets (not in the "
                        "paper: Alg. 1 trains 'until convergence')")
    p.add_argument("--batch-size", type=number(int, 2),
                   help="positives per step, and as many negatives: 128, digits 64 (not in the paper: digits' "
                        "classes have ~120 training images)")
    p.add_argument("--lr", type=number(float, 0, low_open=True), default=1e-3,
                   help="Adam's learning rate in both phases (not in the paper: Adam's usual value)")
    p.add_argument("--latent", type=number(int, 1),
                   help="latent size: 16 on 28x28 sets, 128 on 32x32 sets (not in the paper, which reports 'the "
                        "best performing latent dimension' (Sec. 5.1): 16 was the best of 16, 32, 64 here)")
    p.add_argument("--width", type=number(int, 1),
                   help="channels of the first conv, twice as many in the second: 32 on 28x28 sets, 64 on 32x32 "
                        "sets (not in the paper: Sec. 5.1 gives 'higher capacity networks' for SVHN and CIFAR-10)")
    p.add_argument("--latent-norm", default="batch", choices=["batch", "none"],
                   help="batch: standardise Z's pre-activation over the batch in phase 1, then fold it into Z; "
                        "none: the saturating original (not in the paper: it keeps the tanh out of saturation)")
    p.add_argument("--latent-act", default="tanh", choices=["tanh", "linear"],
                   help="activation of Z: tanh; linear drops it, an ablation (Sec. 3.1)")
    p.add_argument("--beta", type=number(float, 0), default=1.0,
                   help="weight of the negative term of Eq. (1) (not in the paper: no value given)")
    p.add_argument("--gamma", type=number(float, 0),
                   help="target error of the negatives in Eq. (1); unset: --gamma-scale times the phase-1 AE's "
                        "mean error on D- (not in the paper: no value given)")
    p.add_argument("--gamma-scale", type=number(float, 0, low_open=True), default=2.0,
                   help="gamma = this times the phase-1 AE's mean error on D- (not in the paper: the negatives' "
                        "error must rise above the AE's)")
    p.add_argument("--linsep", action="store_true",
                   help="LinSep-LIS-AE: phase 1 also trains a linear classifier (BCE) on Z's pre-activation, D+ "
                        "vs D- (Sec. 4.2)")
    p.add_argument("--save-recon", type=png_path,
                   help="write a PNG: 8 normal and 8 anomalous test images, the AE's and the LIS-AE's outputs "
                        "(Figure 3)")
    p.add_argument("--save-scores", type=output_path,
                   help="write the test scores to this .npz: scores (LIS-AE, phase 2), scores_ae (the phase-1 AE), "
                        "scores_linsep with --linsep (= scores), labels (1 = anomaly), index (each test image's index "
                        "in its source) (not in the paper)")
    p.add_argument("--save-model", type=output_path,
                   help="write the trained model to this .pt: LIS-AE's weights, the phase-1 AE's latent layer, every "
                        "setting and the input shape (not in the paper)")
    p.add_argument("--load-model",
                   help="score the test set with a model written by --save-model, without training; the model and "
                        "training options come from it and may not be given (not in the paper)")
    p.add_argument("--json", type=output_path,
                   help="also write the RESULT keys, the resolved settings and the provenance to this file (not in "
                        "the paper)")
    if dataset in PAPER:
        p.set_defaults(negative=NEGATIVE[dataset], **PAPER[dataset])
    args = p.parse_args(argv)
    if args.dataset not in PAPER:
        for flag, bad in (("--normal", args.normal is not None), ("--test-half", args.test_half)):
            if bad:
                p.error(f"{flag} names classes of a built-in dataset; in your own data ({args.dataset}) y_test = 1 or "
                        f"a test/<defect>/ folder marks the anomalies. Drop {flag}")
    unset = object()                                     # which options the command line set (not defaults)
    given = {k for k, v in vars(p.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), unset)))).items()
             if v is not unset}
    flags = lambda keys: ", ".join("--" + k.replace("_", "-") for k in keys)
    if args.load_model:
        held = [k for k in TRAINING if k in given]
        if held:
            p.error(f"{flags(held)} set the model or its training, which --load-model reads from the "
                    f"checkpoint. Drop {'it' if len(held) == 1 else 'them'}")
        return args
    idle = [k for k in ("linsep", "beta", "gamma", "gamma_scale") if k in given and args.negative == "none"]
    if idle:                                            # phase 2 and LinSep need D-
        p.error(f"{flags(idle)} {'needs' if len(idle) == 1 else 'need'} a negative set (phase 2, Eq. (1)), and "
                "--negative none trains a plain AE. Pick a --negative set, or drop "
                f"{'it' if len(idle) == 1 else 'them'}")
    if {"gamma", "gamma_scale"} <= given:
        p.error("--gamma-scale sets gamma when --gamma is not given; both were given. Drop one of them")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    log = lambda line: print(line, flush=True)
    try:
        t_start = time.time()
        set_seed(args.seed)
        model, ae, ck = load(args.load_model) if args.load_model else (None, None, None)
        own = args.dataset not in PAPER
        normal = "0" if args.normal is None else args.normal                  # the built-in sets' default
        data = prepare(args.dataset, normal, args.negative, args.test_half, args.data_root, with_negatives=ck is None)
        x_pos, x_test, y_test = (data[k].to(args.device) for k in ("x_pos", "x_test", "y_test"))
        x_neg = None if data["x_neg"] is None else data["x_neg"].to(args.device)
        shape, fmt = tuple(x_test.shape[1:]), lambda shape: "x".join(map(str, shape))
        if ck and model.input_shape != shape:
            raise DataError(f"'{args.load_model}' holds a model for {fmt(model.input_shape)} images, but "
                            f"{args.dataset} gives {fmt(shape)} images. Score data of the model's shape, or train a "
                            "model on this data")
        for k in TRAINING:                                  # the checkpoint's settings; own data: MNIST's or CIFAR-10's
            if ck or getattr(args, k) is None:
                setattr(args, k, ck["config"].get(k) if ck else PAPER[data["like"]].get(k))
        augment = args.negative == "omniglot"               # Sec. 5.1 augments Omniglot only
        if ck:
            variant = ck["config"].get("variant", "lis-ae" if "ae_latent" in ck["state"] else "ae")
        else:
            variant = "ae" if x_neg is None else ("linsep-lis-ae" if args.linsep else "lis-ae")
        base = lambda path: os.path.basename(os.path.normpath(path))
        name, negative = (base(args.dataset) if own else args.dataset), args.negative
        negative = base(negative) if negative and is_user_dataset(negative) else negative
        normal, tested = ("-", "-") if own else (",".join(map(str, data["normal"])), data["test_classes"])
        neg = f"{0 if x_neg is None else len(x_neg)} ({data['neg_desc']})" if not ck else "not used (no training)"
        log(f"lis_ae: dataset={name} variant={variant} normal={normal} D+={len(x_pos)} D-={neg} latent={args.latent} "
            f"latent_norm={args.latent_norm} latent_act={args.latent_act} width={args.width} lr={args.lr:g} "
            f"batch={args.batch_size} iters={args.iters}/phase device={args.device}")
        if own:
            log(f"data: {data['source']}; {data['like']}'s settings where not given")
        excluded = [] if own else [c for c in range(IMAGE_DATASETS[args.dataset][0]) if c not in tested]
        log(f"test set: {len(x_test)} images{'' if own else f' of classes {tested}'} ({int(y_test.sum())} anomalies)"
            + ("" if own else f"; excluded from test: {excluded}"))
        if ck:
            log(f"model: {args.load_model}, not trained here; " + " ".join(f"{k}={v}" for k, v in ck["config"].items()))
        log(f"scoring: {2 if variant == 'ae' else 3} passes over the test set (the phase-1 AE's scores and latent "
            f"codes{'' if variant == 'ae' else ', then LIS-AE scores'})")
        t1 = t2 = 0.0
        if ck:
            model, ae = model.to(args.device), (ae or model).to(args.device)
        else:
            model = build_model(shape, latent=args.latent, width=args.width, latent_act=args.latent_act,
                                latent_norm=args.latent_norm).to(args.device)
            t1 = time.time()                                # Alg. 1, phase 1 (LinSep adds the BCE term)
            train_phase1(model, x_pos, x_neg, linsep=args.linsep, iters=args.iters, batch_size=args.batch_size,
                         lr=args.lr, augment=augment, log=log)
            t1, ae = time.time() - t1, copy.deepcopy(model)  # the phase-1 AE, scored beside the LIS-AE
        ts = time.time()
        scores = {"ae": anomaly_scores(ae, x_test, log=lambda line: log("phase-1 AE " + line))}
        score_time = time.time() - ts
        check_scores(scores, "the test set")
        auroc_ae = roc_auc_score(y_test.cpu().numpy(), scores["ae"])
        z_test = latent_codes(ae, x_test, log=lambda line: log("phase-1 AE " + line))
        sat, z_std = saturated_fraction(z_test), z_test[y_test == 0].std(0)
        log(f"phase-1 AE: test auroc={auroc_ae:.4f}; latent on the test set: {sat:.3f} of |z| > {SATURATED}, "
            f"per-unit std over test normals min {float(z_std.min()):.3f} mean {float(z_std.mean()):.3f}")
        if args.latent_act == "tanh" and sat > 0.5:
            log(f"WARNING: {sat:.0%} of the latent is saturated (|z| > {SATURATED}): phase 2 gets (almost) no "
                f"gradient through tanh and LIS-AE will stay close to the AE (--latent-norm batch avoids it)")
        scores["main"], gamma = scores["ae"], args.gamma
        if variant != "ae":
            if not ck:                                      # Alg. 1, phase 2: Eq. (1) on Z only
                gamma = gamma if gamma is not None else negative_target(model, x_neg, args.gamma_scale, augment)
                t2 = time.time()
                train_phase2(model, x_pos, x_neg, iters=args.iters, batch_size=args.batch_size, lr=args.lr,
                             beta=args.beta, gamma=gamma, augment=augment, log=log)
                t2 = time.time() - t2
            scores["main"] = anomaly_scores(model, x_test, log=lambda line: log("LIS-AE " + line))
            scores.update({"linsep": scores["main"]} if args.linsep else {})
            check_scores(scores, "the test set")
        auroc_lis = roc_auc_score(y_test.cpu().numpy(), scores["main"])
        if variant != "ae":
            log(f"test auroc: AE (phase 1) {auroc_ae:.4f}, {variant} (phase 2) {auroc_lis:.4f}")
        seen = 0 if ck else args.iters * args.batch_size * ((2 if args.linsep else 1) + (0 if variant == "ae" else 2))
        result = {"method": "lis_ae", "dataset": name, "normal": normal, "seed": args.seed,
                  "auroc": round(auroc_lis, 4), "auroc_linsep": round(auroc_lis, 4) if args.linsep else None,
                  "auroc_ae": round(auroc_ae, 4), "variant": variant, "negative": negative,
                  "test_classes": tested if own else ",".join(map(str, tested)), "latent": args.latent,
                  "latent_act": args.latent_act, "latent_norm": args.latent_norm, "latent_saturated": round(sat, 4),
                  "beta": args.beta, "gamma": None if gamma is None else round(gamma, 4), "iters": args.iters,
                  "batch_size": args.batch_size, "lr": args.lr, "device": args.device.type,
                  "seconds": round(time.time() - t_start, 1),
                  "train_samples_per_s": None if ck else round(seen / max(t1 + t2, 1e-9), 1),  # positives + negatives
                  "score_samples_per_s": round(len(x_test) / max(score_time, 1e-9), 1)}
        config = ck["config"] if ck else dict(
            {k: getattr(args, k) for k in TRAINING}, gamma=gamma, variant=variant, dataset=args.dataset,
            normal=args.normal, negative=args.negative, test_half=args.test_half, seed=args.seed, augment=augment,
            input_shape=list(shape), settings_of=data["like"])
        if args.save_recon:                                 # written only now: a degenerate run writes nothing
            idx = torch.cat([torch.nonzero(y_test == k).view(-1)[:8] for k in (0, 1)])     # 8 normal, 8 anomalous
            save_recon(args.save_recon, x_test[idx], ae, model)
            log(f"wrote {args.save_recon}")
        if args.save_scores:
            save_scores(args.save_scores, scores, y_test.cpu().numpy(), data["index"].numpy())
            log(f"wrote {args.save_scores}: {', '.join('scores' + ('' if k == 'main' else '_' + k) for k in scores)}"
                ", labels, index")
        if args.save_model:
            save(model, args.save_model, None if variant == "ae" else ae, config)
            log(f"wrote {args.save_model}")
        result = {k: v for k, v in result.items() if v is not None}
        write_result(result, args.json, log, extra=dict(config=config, provenance=provenance(argv)))
        return result
    except (DataError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3 if isinstance(e, FloatingPointError) else 2)
    except KeyboardInterrupt:
        print("\ninterrupted: no result was written", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
