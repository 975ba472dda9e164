"""Deep Unsupervised Image Anomaly Detection: An Information Theoretic Framework (ITAD).
Fei Ye, Huangjie Zheng, Chaoqin Huang, Ya Zhang. arXiv:2012.04837, 2020.

Anomaly detection as max KL[p_n(x, z) || p_a(x, z)] (Eq. 2), bounded from below, if normal and anomalous data are
separable in the latent space, by an objective of normal data alone: max I(x, z) - beta H(z) (Eq. 10-13). I(x, z) is
estimated with InfoNCE between two augmented views (Eq. 14, 18-20), H(z) bounded by E||z||_q (a zero-centred Laplace,
q = 1, or Gaussian, q = 2, reference; Eq. 15-17). A normal image's code has a large soft-clipped self-similarity
z^T z (Eq. 23): the entropy term shrinks anomalies' codes faster than normal ones (Sec. IV-B, Fig. 3).

Reproduces the base model (Alg. 1-2, Eq. 13 / 23) and the extension model (Alg. 3-5, Eq. 21 / 24) on Table IV's
encoder (Table III); Table I (--mi jsd, --entropy l2); the beta study of Fig. 1-3 (--beta; --curve-every K: Fig. 2's
test AUROC over training, in the JSON); Table II's scores in every RESULT: auroc = NormalScore_ori (Eq. 23 / 24),
auroc_rand (Eq. 22), auroc_mc (Eq. 29). Not here: ImageNet (Table V). Your own images: --dataset PATH (common.py).

Equation map (a user calls build_encoder -> train -> anomaly_scores)
    Table IV encoder; phi_theta2 of Alg. 4 ........................ build_encoder(), AmdimEncoder, LocalProjection
    Alg. 1 lines 2-6: two augmented views per image ............... two_views(), draw_augmentation(), augment()
    Alg. 1 lines 11-12 / Alg. 3 lines 8-9: clipped similarity ..... similarity(), soft_clip()
    Alg. 1 lines 13-17, Alg. 3 (Eq. 18, 20); Eq. (28), Table I .... nce_loss(); jsd_loss()
    Alg. 1 line 18 (Eq. 15-17, 19): (1/2N) sum_k ||z_k||_q ........ entropy_bound()
    Eq. (13) / Alg. 1 line 19; Eq. (21) / Alg. 4 lines 13-16 ...... base_loss(); extension_loss()
    Alg. 1 / Alg. 4, the training loop ............................ train()
    Eq. (23) / Alg. 2, Eq. (24) / Alg. 5; Eq. (22) and (29) ....... ori_score(); pair_score()
    Alg. 2 / 5 on a test set, anomaly score = -NormalScore ........ anomaly_scores(kind="ori" | "rand" | "mc")
    every RESULT score and Fig. 2-3's diagnostics, each once ...... evaluate()
    a trained encoder to a file and back .......................... save(), load()

Readings where the text is open (default first). c1, "the size of z_i" (Alg. 1) = sqrt(d), the scale AMDIM's code
(ref. [36], followed by the paper) gives its scores before the same tanh clip at c2 = 20 (c1 = d leaves a unit-variance
code's similarities too flat for an InfoNCE over 2N - 1 candidates). "Normalized vectors" (Sec. III-C): the codes end
in an affine BatchNorm, as AMDIM's. L_entropy [--entropy-reduce]: sum = ||z||_q as Alg. 1 line 18 prints it, or mean
= ||z||_q / d^(1/q), the same loss as sum at beta / d^(1/q). Sec. IV-B's claims (L_NCE and L_H converge to a
similar scale; normal codes keep the larger ||z||, Fig. 3; beta > 0 beats beta = 0) held in the measured runs only
at beta / d^(1/q) of about 0.008-0.04 (mean, beta 1-5, d = 128); at beta 20 both readings switch the code off at that
size (benchmarks/results/itad_curves.md). BatchNorm statistics when scoring [--bn-stats]: test = re-estimated on the
test images, as AMDIM's evaluation does (train-mode passes before model.eval()), or train = training's averages; test
ranks normal images first wherever the code has learned, and is transductive (a score depends on the test set).

Deviations (flag in brackets)
  - Batch 200, AMDIM's (the paper gives none) [--batch-size]; epochs of random batches, the last incomplete one
    dropped [--epochs, --iters]; Adam, default betas (AMDIM's weight decay, warm-up, logit penalty: not used).
  - Augmentation, AMDIM's CIFAR policy (Sec. III-C), per sample: one flip per image; per view a shift up to 4 px
    (reflect padding, p 0.8), colour jitter 0.4/0.4/0.4/0.2 with hue as a YIQ rotation (p 0.8), grayscale (p
    0.25). Grey images as 3 channels (Sec. IV-E), 28x28 zero-padded to 32x32, pixels in [-1, 1] (Sec. IV-A).
  - Encoder: AMDIM's (no BN inside, residual branches' last conv zero-initialised), but a strided kxk conv shortcut
    where a layer widens: AMDIM's zero-padded average pool left all but ndf code dimensions constant and
    gradient-free at initialisation (Table IV prints shapes, not an initialisation).
  - Alg. 3 line 8 sums g^T phi(l) over all f_local positions [--local-size]; L_gvl (Alg. 4 line 14) is one Alg. 3
    loss over the 2N x 2N global/local pairs of both views; the entropy term covers g and phi(l) (Alg. 4 line 15;
    Eq. 21: g only). Eq. 22 / 29 (global code) soft-clip each pair's similarity like Alg. 2 line 8 (printed raw);
    Eq. 29's sum is a mean, H = 100 (Sec. IV-D) [--mc-samples]. --entropy l2 = ||z||_2 as Alg. 1 line 18 writes it
    (Eq. 16: squared); --mi jsd: Eq. 28's critic is the clipped similarity. Scores in float64; the last model is
    tested. Not in the paper: svhn, digits (offline check), RESULT's nce_end, entropy_end, znorm_normal / _anomaly
    (Fig. 3), dims_alive.

Run:  python itad.py --dataset fashion-mnist --normal 0 --data-root ./data    # Table IV sizes, 400 epochs (a GPU)
      python itad.py --dataset digits --normal 3 --iters 2                    # offline check
"""
import argparse
import contextlib
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

from common import (DataError, IMAGE_DATASETS, fit_images, is_user_dataset, load_image_folder, load_images, load_npz,
                    one_class_split, parse_normal, to_minus1_1)

# The paper's values: beta (Sec. IV-B), L1 entropy (Table I), lr and epochs (Sec. IV-A), c2 (Alg. 1), H of Eq. 29
# (Sec. IV-D), Table IV's encoder sizes; batch 200 is AMDIM's (the paper gives none).
PAPER = dict(beta=20.0, entropy="l1", lr=2e-4, epochs=400, batch_size=200, c2=20.0, mc_samples=100, ndf=128,
             nrkhs=1024, ndepth=10)
DIGITS = dict(ndf=16, nrkhs=128, ndepth=1, mc_samples=10)     # --dataset digits: ~120 normal images, an install check
SHAPES = ((1, 28, 28), (3, 32, 32))                          # the inputs the Table IV encoder takes (grey padded)


# ------------------------------------------------------------------------------------------ model (Table IV)

class ConvResNxN(nn.Module):
    """AMDIM's residual layer ('ResBlock(n_in, n_out, k, stride, 1)' in Table IV): conv kxk (stride) -> ReLU ->
    conv 1x1 (zero-initialised, AMDIM's init), plus an average-pool shortcut when the channels stay, or a strided
    kxk conv shortcut when they change (AMDIM zero-pads the average pool there: see the docstring's deviations).
    No BatchNorm inside (AMDIM's default use_bn=0)."""

    def __init__(self, n_in, n_out, k, stride):
        super().__init__()
        self.k, self.stride = k, stride
        self.conv1 = nn.Conv2d(n_in, n_out, k, stride, 0, bias=False)
        self.conv2 = nn.Conv2d(n_out, n_out, 1, 1, 0, bias=False)
        nn.init.zeros_(self.conv2.weight)                    # AMDIM's fixup-style init of the residual branch
        self.conv3 = nn.Conv2d(n_in, n_out, k, stride, 0, bias=True) if n_out != n_in else None

    def forward(self, x):
        h = self.conv2(F.relu(self.conv1(x)))
        if self.conv3 is not None:
            return h + self.conv3(x)
        return h + F.avg_pool2d(x, self.k, self.stride, 0)


def res_block(n_in, n_out, k, stride, depth):
    """Table IV 'ResBlock(n_in, n_out, k, stride, ndepth)' = AMDIM's ConvResBlock: one strided kxk layer, then
    depth-1 1x1 layers."""
    return nn.Sequential(ConvResNxN(n_in, n_out, k, stride),
                         *[ConvResNxN(n_out, n_out, 1, 1) for _ in range(depth - 1)])


class LocalProjection(nn.Module):
    """phi_theta2 (Alg. 4 lines 10-12, Alg. 5 line 6): AMDIM's 1x1-conv residual MLP on f_local, ending in the same
    BatchNorm as g."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 1, bias=False)
        self.conv2 = nn.Conv2d(n_out, n_out, 1, bias=False)
        nn.init.zeros_(self.conv2.weight)
        self.shortcut = nn.Conv2d(n_in, n_out, 1, bias=True)
        self.norm = nn.BatchNorm2d(n_out)

    def forward(self, x):
        return self.norm(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class AmdimEncoder(nn.Module):
    """Table IV (Appendix A), AMDIM's 32x32 encoder: (B, 3, 32, 32) in [-1, 1] -> g (B, nrkhs) and, with
    local=True, phi(f_local) (B, nrkhs, s, s), s = local_size (5: Table IV's f_local; 7: the block before it)."""

    def __init__(self, ndf=128, nrkhs=1024, ndepth=10, local=False, local_size=5, input_shape=(3, 32, 32)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, ndf, 3, 1, 0), nn.ReLU(),               # (B, ndf, 30, 30)
                                  ConvResNxN(ndf, ndf, 1, 1))                           # ResBlock(ndf, ndf, 1, 1)
        self.block1 = res_block(ndf, 2 * ndf, 4, 2, ndepth)                             # (B, 2ndf, 14, 14)
        self.block2 = res_block(2 * ndf, 4 * ndf, 2, 2, ndepth)                         # (B, 4ndf, 7, 7)
        self.block3 = res_block(4 * ndf, 4 * ndf, 3, 1, ndepth)                         # (B, 4ndf, 5, 5) f_local
        self.block4 = res_block(4 * ndf, 4 * ndf, 3, 1, ndepth)                         # (B, 4ndf, 3, 3)
        self.top = ConvResNxN(4 * ndf, nrkhs, 3, 1)                                     # (B, nrkhs, 1, 1) f_global
        self.norm = nn.BatchNorm2d(nrkhs)                                               # "normalized vectors"
        self.local_size = local_size
        self.phi = LocalProjection(4 * ndf, nrkhs) if local else None
        self.z_dim, self.input_shape = nrkhs, tuple(input_shape)

    def forward(self, x):
        h7 = self.block2(self.block1(self.stem(x)))
        h5 = self.block3(h7)
        g = self.norm(self.top(self.block4(h5))).flatten(1)                            # (B, nrkhs)
        if self.phi is None:
            return g
        return g, self.phi(h5 if self.local_size == 5 else h7)                         # (B, nrkhs, s, s)


def build_encoder(input_shape=(3, 32, 32), ndf=PAPER["ndf"], nrkhs=PAPER["nrkhs"], ndepth=PAPER["ndepth"],
                  model="base", local_size=5):
    """The Table IV encoder for images of input_shape (1, 28, 28) or (3, 32, 32) in [0, 1]: model="base" returns
    the global code (Alg. 1), "extension" also phi(f_local) (Alg. 4). Move it to a device with .to(device)."""
    shape = tuple(int(s) for s in input_shape)
    if shape not in SHAPES:
        raise ValueError(f"input_shape must be (1, 28, 28) or (3, 32, 32) for the Table IV encoder (grey images are "
                         f"expanded to 3 channels and padded to 32x32), got {shape}")
    if model not in ("base", "extension") or local_size not in (5, 7):
        raise ValueError(f"model must be 'base' or 'extension' and local_size 5 or 7, got {model!r}, {local_size!r}")
    return AmdimEncoder(ndf, nrkhs, ndepth, model == "extension", local_size, shape)


def as_input(model, x, name="x"):
    """Images (N, *model.input_shape) in [0, 1], numpy or torch -> (N, 3, 32, 32) float32 on the model's device:
    grey expanded to 3 channels (Sec. IV-E), 28x28 zero-padded to the encoder's 32x32."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != model.input_shape or len(x) == 0:
        raise ValueError(f"{name} must have shape (N, {', '.join(map(str, model.input_shape))}) with N >= 1 for this "
                         f"model, got {tuple(x.shape)}")
    if not ((x >= 0) & (x <= 1)).all():
        raise ValueError(f"{name} must hold pixel values in [0, 1] (e.g. uint8 images / 255)")
    x = x.to(next(model.parameters()).device)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)                                                    # (N, 1, H, W) -> (N, 3, H, W)
    pad = (32 - x.shape[-1]) // 2
    return F.pad(x, (pad, pad, pad, pad)).contiguous() if pad > 0 else x.contiguous()  # 28 -> 32


# ------------------------------------------------------------------------------------------ losses and scores

def soft_clip(s, c1, c2=PAPER["c2"]):
    """Alg. 1 line 12 (also Alg. 2 line 8, Alg. 3 line 9, Alg. 5 line 12): s' = c2 tanh(s / (c1 c2))."""
    return c2 * torch.tanh(s / (c1 * c2))


def similarity(a, b):
    """Alg. 1 line 11 / Alg. 3 line 8: s_ij = sum_{n1} sum_{n2} a_i^T b_j for codes (B, d) or maps (B, d, h, w);
    the double sum over positions equals the dot product of the position-summed codes."""
    a = a.flatten(2).sum(2) if a.dim() == 4 else a
    b = b.flatten(2).sum(2) if b.dim() == 4 else b
    return a @ b.t()                                                                    # (B_a, B_b)


def nce_loss(s):
    """Alg. 1 lines 13-17 / Alg. 3 lines 10-13 on the (2N, 2N) clipped similarities of 2N views (rows 2k, 2k+1 =
    the two views of image k): s^ = s' - max(S); l(i, j) = -log(exp s^_ij / sum_{k != i} exp s^_ik);
    L_nce = (1/2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]."""
    n2 = s.shape[0]
    s_hat = s - s.max().detach()                                                        # line 14: S - s_max
    s_hat = s_hat.masked_fill(torch.eye(n2, dtype=torch.bool, device=s.device), float("-inf"))  # k != i
    log_p = s_hat - torch.logsumexp(s_hat, dim=1, keepdim=True)                         # line 16
    i = torch.arange(n2, device=s.device)
    return -log_p[i, i ^ 1].mean()                                                      # line 17: 2k <-> 2k+1


def jsd_loss(s):
    """Eq. (28), Table I: -I_JSD = -(E_pos[-softplus(-T)] - E_neg[softplus(T)]) with the clipped similarity as
    critic T (DIM's separable critic); positives are the paired views, negatives every pair k != i."""
    i = torch.arange(len(s), device=s.device)
    pos = i.unsqueeze(1) ^ 1 == i.unsqueeze(0)                                          # (2k, 2k+1), (2k+1, 2k)
    neg = ~pos & ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    return -((-F.softplus(-s[pos])).mean() - F.softplus(s[neg]).mean())


def entropy_bound(z, q=1, reduce="sum"):
    """Alg. 1 line 18 (Eq. 15-17, 19): L_entropy = (1/2N) sum_k ||z_k||_q (q=1 Laplace, q=2 Gaussian reference);
    a local map is flattened first (Alg. 4 line 15). reduce="mean" divides each norm by d^(1/q): mean |z_kj| for
    q = 1, the RMS for q = 2."""
    z = z.flatten(1)
    norm = z.norm(p=q, dim=1)                                # (2N, d) -> ||z_k||_q
    if reduce == "mean":
        norm = norm / z.shape[1] ** (1.0 / q)
    return norm.mean()                                       # (1/2N) sum_k


def mi_loss(s, mi="nce"):
    return nce_loss(s) if mi == "nce" else jsd_loss(s)


def base_loss(z, c1, beta=PAPER["beta"], c2=PAPER["c2"], q=1, reduce="sum", mi="nce"):
    """Eq. (13) / Alg. 1 lines 11-19: L = L_nce + beta L_entropy on the codes z (2N, d) of 2N views.
    Returns (L, L_nce, L_entropy)."""
    mi_value = mi_loss(soft_clip(similarity(z, z), c1, c2), mi)                        # lines 11-17
    ent = entropy_bound(z, q, reduce)                                                   # line 18
    return mi_value + beta * ent, mi_value, ent                                         # line 19


def extension_loss(g, l, c1, beta=PAPER["beta"], c2=PAPER["c2"], q=1, reduce="sum", mi="nce"):
    """Eq. (21) / Alg. 4 lines 13-16: L = L_gvg + L_gvl + beta (1/2N) sum_k (||g_k||_q + ||l_k||_q), each L_nce
    the Alg. 3 loss over all 2N x 2N pairs of views. L_gvl = 0.5 [L_nce(g_2k, l_2k-1) + L_nce(g_2k-1, l_2k)]: the
    two halves of one Alg. 3 loss on S_ij = sim(g_i, l_j), whose positives are (2k-1, 2k) and (2k, 2k-1)."""
    gvg = mi_loss(soft_clip(similarity(g, g), c1, c2), mi)                              # line 13
    gvl = mi_loss(soft_clip(similarity(g, l), c1, c2), mi)                              # line 14
    ent = entropy_bound(g, q, reduce) + entropy_bound(l, q, reduce)                     # line 15
    return gvg + gvl + beta * ent, gvg + gvl, ent                                       # line 16


def ori_score(codes, c1, c2=PAPER["c2"]):
    """NormalScore_ori of un-augmented images (larger = more normal), float64. Base, codes = z: Eq. (23) and
    Alg. 2 lines 7-8, s' = c2 tanh(z^T z / (c1 c2)). Extension, codes = (g, phi(l)): Eq. (24) and Alg. 5 lines
    9-12, s = sim(g, g) + sim(g, l), clipped once, on the sum, as Alg. 5 line 12 writes it."""
    if isinstance(codes, tuple):
        g, l = (t.double() for t in codes)
        s = (g * g).sum(1) + (g * l.flatten(2).sum(2)).sum(1)
    else:
        s = (codes.double() ** 2).sum(1)
    return soft_clip(s, c1, c2)


def pair_score(codes_a, codes_b, c1, c2=PAPER["c2"]):
    """Eq. (22) (one random pair) / the summand of Eq. (29): c2 tanh(sim(z_a, z_b) / (c1 c2)) of two augmented
    views of the same images; the global code only, as both equations write it (z, z_g)."""
    za = codes_a[0] if isinstance(codes_a, tuple) else codes_a
    zb = codes_b[0] if isinstance(codes_b, tuple) else codes_b
    return soft_clip((za.double() * zb.double()).sum(1), c1, c2)


# ------------------------------------------------------------------------------------------ augmentation

def draw_augmentation(n, device):
    """Per-sample parameters of AMDIM's CIFAR policy (its datasets.py TransformsC10, which the paper follows, Sec.
    III-C): horizontal flip p=0.5; with p=0.8 a translation by up to 4 px (reflect padding); with p=0.8 colour
    jitter (brightness, contrast, saturation 0.4, hue 0.2); grayscale p=0.25."""
    u = lambda *shape: torch.rand(*shape, device=device)
    one = torch.ones(n, device=device)
    shift = u(n) < 0.8                                                          # RandomApply(translate, p=0.8)
    jitter = u(n) < 0.8                                                         # RandomApply(ColorJitter, p=0.8)
    return dict(flip=u(n) < 0.5,
                dx=torch.where(shift, torch.randint(-4, 5, (n,), device=device), 0),
                dy=torch.where(shift, torch.randint(-4, 5, (n,), device=device), 0),
                brightness=torch.where(jitter, 0.6 + 0.8 * u(n), one),          # factor in [0.6, 1.4]
                contrast=torch.where(jitter, 0.6 + 0.8 * u(n), one),
                saturation=torch.where(jitter, 0.6 + 0.8 * u(n), one),
                hue=torch.where(jitter, 0.4 * u(n) - 0.2, 0 * one),             # shift in [-0.2, 0.2] turns
                gray=u(n) < 0.25)                                               # RandomGrayscale(p=0.25)


def _gray(x):
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # (B, 1, H, W)


def augment(x, prm):
    """Apply draw_augmentation's parameters to x (B, 3, H, W) in [0, 1]; returns the same shape in [0, 1]."""
    b, _, h, w = x.shape
    v = lambda t: t.view(b, 1, 1, 1)
    x = torch.where(v(prm["flip"]), x.flip(-1), x)
    pad = F.pad(x, (4, 4, 4, 4), mode="reflect")                                # (B, 3, H+8, W+8)
    rows = (4 - prm["dy"]).view(b, 1) + torch.arange(h, device=x.device)        # content moves by (dx, dy)
    cols = (4 - prm["dx"]).view(b, 1) + torch.arange(w, device=x.device)
    x = pad[torch.arange(b, device=x.device).view(b, 1, 1), :, rows.view(b, h, 1), cols.view(b, 1, w)]
    x = x.permute(0, 3, 1, 2)                                                   # (B, H, W, 3) -> (B, 3, H, W)
    x = (x * v(prm["brightness"])).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (v(prm["contrast"]) * x + (1 - v(prm["contrast"])) * mean).clamp(0, 1)
    x = (v(prm["saturation"]) * x + (1 - v(prm["saturation"])) * _gray(x)).clamp(0, 1)
    # hue: rotate the chroma (I, Q) plane of YIQ by 2 pi * shift
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device)
    ang = 2 * math.pi * prm["hue"]
    rot = torch.zeros(b, 3, 3, device=x.device)
    rot[:, 0, 0], rot[:, 1, 1], rot[:, 2, 2] = 1, ang.cos(), ang.cos()
    rot[:, 1, 2], rot[:, 2, 1] = -ang.sin(), ang.sin()
    m = torch.linalg.inv(yiq) @ rot @ yiq                                       # (B, 3, 3)
    x = torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 1)
    return torch.where(v(prm["gray"]), _gray(x).expand_as(x), x)


def two_views(x):
    """Alg. 1 lines 2-6: (N, 3, H, W) in [0, 1] -> (2N, 3, H, W) in [-1, 1]; rows 2k and 2k+1 (the paper's 2k-1 and
    2k, 1-based) are t(x_k) and t'(x_k). As in AMDIM's TransformsC10, the flip is drawn once per image and shared
    by its two views; everything else is drawn per view."""
    x2 = x.repeat_interleave(2, dim=0)
    prm = draw_augmentation(len(x2), x.device)
    prm["flip"] = prm["flip"][0::2].repeat_interleave(2)
    return to_minus1_1(augment(x2, prm))


# ------------------------------------------------------------------------------------------ training

def train(model, x_normal, beta=PAPER["beta"], lr=PAPER["lr"], epochs=PAPER["epochs"], iters=None,
          batch_size=PAPER["batch_size"], entropy=PAPER["entropy"], entropy_reduce="sum", mi="nce", c2=PAPER["c2"],
          curve_every=0, x_test=None, y_test=None, bn_stats="test", log=print):
    """Alg. 1 (base model) / Alg. 4 (extension) on normal images x_normal (N, *model.input_shape) in [0, 1]: Adam;
    epochs of random batches of batch_size images (the last incomplete batch dropped), two augmented views each;
    `iters` steps in all (default: epochs x floor(N / batch_size)). entropy "l1" | "l2" (q of Eq. 16-17, Table I),
    mi "nce" | "jsd" (Eq. 28, Table I). With curve_every = K > 0 and a labelled test set (y_test: 1 = anomaly),
    every K steps (and after step 1) the test AUROC of the Eq. 23 / 24 score under both BatchNorm statistics, mean
    ||z|| and dims_alive (Fig. 2; evaluate() with rand=False, mc_samples=0); no random numbers are drawn for it, so
    training is the same without it. Returns (model, info): info = iters, "<mi>_end" and "entropy_end" (means over
    the last 10% of the steps), train_seconds, curve (a list of dicts)."""
    x = as_input(model, x_normal, "x_normal")
    n = len(x)
    if not 2 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [2, {n}] (the number of normal images), got {batch_size}")
    if curve_every and (x_test is None or y_test is None):
        raise ValueError("curve_every needs x_test and y_test (1 = anomaly)")
    if curve_every:
        as_input(model, x_test, "x_test")                                              # checked before training
    iters = iters or epochs * (n // batch_size)
    c1, q = math.sqrt(model.z_dim), 1 if entropy == "l1" else 2
    loss_kw = dict(beta=beta, c2=c2, q=q, reduce=entropy_reduce, mi=mi)
    log(f"{'Alg. 4' if model.phi is not None else 'Alg. 1'}: {iters} steps of {batch_size} images ({2 * batch_size} "
        f"views), c1 = sqrt({model.z_dim}), c2 = {c2:g}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch, progress = n // batch_size, Progress("iter", iters, log)
    quiet = lambda line: log(line) if "left" in line else None     # a curve point's passes: only when they are slow
    trace, curve, train_time = [], [], 0.0
    model.train()
    for it in range(1, iters + 1):
        ts = time.time()
        if (it - 1) % per_epoch == 0:
            order = torch.randperm(n, device=x.device)                                 # a new epoch
        j = (it - 1) % per_epoch
        views = two_views(x[order[j * batch_size:(j + 1) * batch_size]])              # Alg. 1, lines 1-6
        codes = model(views)                                                           # Alg. 1, lines 7-9
        if isinstance(codes, tuple):
            loss, mi_value, ent = extension_loss(*codes, c1, **loss_kw)                # Alg. 4, lines 13-16
        else:
            loss, mi_value, ent = base_loss(codes, c1, **loss_kw)                      # Alg. 1, lines 10-19
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()                                                                     # Alg. 1, line 20
        loss_value = loss.item()
        train_time += time.time() - ts
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training diverged: the loss at step {it} is {loss_value}. Try a smaller --lr")
        trace.append((mi_value.item(), ent.item()))
        progress(it, f" loss={loss_value:.4f} {mi}={trace[-1][0]:.4f} entropy={trace[-1][1]:.4f}")
        if curve_every and (it % curve_every == 0 or it == 1):
            recent = trace[-curve_every:]
            _, metrics = evaluate(model, x_test, y_test, bn_stats, rand=False, mc_samples=0, c2=c2,
                                  where=f"the test set at step {it} (--curve-every)", log=quiet)
            point = dict(iter=it, **{mi: round(float(np.mean([t[0] for t in recent])), 4),
                                     "entropy": round(float(np.mean([t[1] for t in recent])), 4)}, **metrics)
            curve.append(point)
            log("curve " + " ".join(f"{k}={v}" for k, v in point.items()))
    tail = trace[-max(1, len(trace) // 10):]                                           # the last 10% of the steps
    return model, {"iters": iters, f"{mi}_end": float(np.mean([t[0] for t in tail])),
                   "entropy_end": float(np.mean([t[1] for t in tail])), "train_seconds": train_time, "curve": curve}


def save(model, path, bn_stats="test", config=None, rng=None):
    """Keep a trained encoder: its weights with the BatchNorm buffers of training, its architecture and input shape
    (plus `config`, e.g. the training settings), and the scoring choice bn_stats; written atomically. rng: a
    random state stored beside the weights (the command line stores the one its Eq. 22 / 29 augmentations started
    from, so that --load-model reproduces those scores too)."""
    arch = dict(input_shape=list(model.input_shape), ndf=model.stem[0].out_channels, nrkhs=model.z_dim,
                ndepth=len(model.block1), model="base" if model.phi is None else "extension",
                local_size=model.local_size)
    preprocess = {"bn_stats": bn_stats, "input": "images in [0, 1] of input_shape (uint8 / 255; common.fit_images "
                                                 "converts and resizes); the encoder scales them to [-1, 1]"}
    state = {"encoder": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "rng": rng or {}}
    save_checkpoint(path, "itad", {**(config or {}), **arch}, preprocess, state)


def load(path, device="cpu"):
    """An encoder written by save() or --save-model -> (model, checkpoint dict with "config" and "preprocess").
    Score new images x: anomaly_scores(model, x, bn_stats=checkpoint["preprocess"]["bn_stats"], c2=config's c2)."""
    ck = load_checkpoint(path, "itad")
    try:
        cfg = ck["config"]
        model = build_encoder(cfg["input_shape"], ndf=cfg["ndf"], nrkhs=cfg["nrkhs"], ndepth=cfg["ndepth"],
                              model=cfg["model"], local_size=cfg["local_size"])
        model.load_state_dict(ck["state"]["encoder"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"'{path}' is an itad.py checkpoint whose weights do not fit its settings ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}). Write it again with --save-model") from None
    return model.to(device).eval(), ck


# ------------------------------------------------------------------------------------------ scoring

@torch.no_grad()
def encode(model, x, batch=100, progress=None, done=0):
    """The model's codes of x (M, 3, 32, 32) in [-1, 1], `batch` images at a time, calling progress(done + images
    encoded) after each batch. In eval mode the codes are those of one call (no batch statistics)."""
    out = []
    for j in range(0, len(x), batch):
        out.append(model(x[j:j + batch]))
        if progress:
            progress(done + min(j + batch, len(x)))
    return tuple(torch.cat(t) for t in zip(*out)) if isinstance(out[0], tuple) else torch.cat(out)


@contextlib.contextmanager
def bn_statistics(model, x, which="test", chunk=500, log=None):
    """Inside the block the model is in eval mode and its BatchNorm layers use `which` statistics; the training
    buffers and mode are put back afterwards. train = the running averages of training. test = re-estimated on the
    un-augmented images x (M, 3, 32, 32) in [0, 1]: the average over chunks of train-mode batch statistics, as
    AMDIM's evaluation routine does (utils.py test_model -> _warmup_batchnorm runs train-mode passes over the
    test loader before model.eval()). Transductive: a score then depends on the other images in x."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    kept = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum) for m in bns]
    was_training = model.training
    try:
        if which == "test":
            if len(x) < 2:
                raise ValueError("bn_stats='test' estimates BatchNorm statistics on x: it needs 2 images or more")
            chunk += len(x) % chunk == 1                     # no chunk of one image (no batch variance)
            for m in bns:
                m.reset_running_stats()
                m.momentum = None                            # cumulative average over the chunks
            # The BatchNorms are the encoder's last layers (none inside, AMDIM's use_bn=0): a chunk's train-mode
            # statistics are those of their inputs, gathered in eval mode a batch at a time (for progress).
            inputs = {m: [] for m in bns}
            hooks = [m.register_forward_hook(lambda m, inp, out: inputs[m].append(inp[0])) for m in bns]
            progress = Progress("BatchNorm statistics of the test images", len(x), log or (lambda line: None))
            model.eval()
            try:
                for i in range(0, len(x), chunk):
                    encode(model, to_minus1_1(x[i:i + chunk]), progress=progress, done=i)
                    with torch.no_grad():
                        for m, h in [(m, torch.cat(inputs[m])) for m in bns]:
                            m.train()(h)                     # one train-mode batch of the chunk's images
                            m.eval()
                    for m in bns:
                        inputs[m].clear()
            finally:
                for hook in hooks:
                    hook.remove()
        model.eval()
        yield model
    finally:
        for m, (mean, var, count, momentum) in zip(bns, kept):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
            m.momentum = momentum
        model.train(was_training)


EQUATION = {"ori": "Eq. 23 / 24", "rand": "Eq. 22", "mc": "Eq. 29"}


@torch.no_grad()
def normal_scores(model, x, kind="ori", mc_samples=PAPER["mc_samples"], c2=PAPER["c2"], chunk=500, log=None):
    """NormalScore of x (M, 3, 32, 32) in [0, 1] with the model as it is (mode, BatchNorm statistics), float64,
    larger = more normal. ori: Eq. (23) / (24); rand: Eq. (22), one random augmented pair per image; mc: Eq. (29),
    the mean over mc_samples pairs (H), augmentations drawn `chunk` images at a time. Passes over x: 1 (ori), 2
    (rand), 2 H (mc)."""
    c1 = math.sqrt(model.z_dim)
    h = {"ori": 1, "rand": 1, "mc": mc_samples}[kind]
    progress = Progress(f"scoring {kind} ({EQUATION[kind]}), {'images' if kind == 'ori' else 'augmented views'}",
                        len(x) * h * (1 if kind == "ori" else 2), log or (lambda line: None))
    out = []
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        if kind == "ori":
            out.append(ori_score(encode(model, to_minus1_1(xb), progress=progress, done=i), c1, c2))
            continue
        total = torch.zeros(len(xb), device=x.device, dtype=torch.float64)
        for k in range(h):
            views, done = two_views(xb), 2 * (i * h + k * len(xb))
            codes_a = encode(model, views[0::2], progress=progress, done=done)
            total += pair_score(codes_a, encode(model, views[1::2], progress=progress, done=done + len(xb)), c1, c2)
        out.append(total / h)
    return torch.cat(out).cpu().numpy()


def anomaly_scores(model, x, kind="ori", bn_stats="test", mc_samples=PAPER["mc_samples"], c2=PAPER["c2"],
                   log=print):
    """Anomaly scores of images x (N, *model.input_shape) in [0, 1] -> numpy (N,), HIGHER = MORE ANOMALOUS: the
    negative of the paper's NormalScore (larger = normal, Alg. 2 line 9), kind "ori" (Eq. 23 / 24, the paper's
    main score), "rand" (Eq. 22) or "mc" (Eq. 29, mc_samples pairs). bn_stats "test" re-estimates the codes'
    BatchNorm statistics on x itself (transductive: pass the whole test set at once); "train" uses the running
    averages of training. The model's training buffers are left as they were. evaluate() computes every kind, and
    the metrics, with one re-estimation."""
    if kind not in ("ori", "rand", "mc") or bn_stats not in ("train", "test") or (kind == "mc" and mc_samples < 1):
        raise ValueError(f"kind must be ori, rand or mc (mc with mc_samples >= 1) and bn_stats train or test, got "
                         f"{kind!r}, {bn_stats!r}, mc_samples={mc_samples}")
    x = as_input(model, x)
    with bn_statistics(model, x, bn_stats, log=log):
        return -normal_scores(model, x, kind, mc_samples, c2, log=log)


@torch.no_grad()
def global_codes(model, x, pre_norm=False, chunk=500):
    """Global codes z (g) of the un-augmented images x (M, 3, 32, 32) in [0, 1] -> (M, d), as the model is (Fig. 3
    plots their ||z||_2); pre_norm: the code before its BatchNorm."""
    codes = []
    hook = model.norm.register_forward_hook(lambda m, inp, out: codes.append((inp[0] if pre_norm else out).flatten(1)))
    for i in range(0, len(x), chunk):
        model(to_minus1_1(x[i:i + chunk]))
    hook.remove()
    return torch.cat(codes)


def alive(pre):
    """Fraction of the dimensions of pre-BatchNorm codes (M, d) that vary across the images (variance > 1e-5, the
    BatchNorm's eps)."""
    return (pre.double().var(0) > 1e-5).double().mean().item()


def dims_alive(model, x):
    """Fraction of the code's dimensions that vary across the images x (M, 3, 32, 32) before the code's BatchNorm,
    whatever the BatchNorm statistics: a diagnostic (not in the paper)."""
    was_training = model.training
    pre = global_codes(model.eval(), x, pre_norm=True)
    model.train(was_training)
    return alive(pre)


def auroc(labels, scores):
    """AUROC, anomaly = 1 ranked by the anomaly score (Alg. 2 line 10)."""
    return roc_auc_score(np.asarray(labels), scores)


def scoring_passes(mc_samples, rand=True):
    """Passes over the test set that evaluate() makes: the BatchNorm re-estimation, Eq. 23 / 24 under both
    statistics, two views for Eq. 22, 2 H for Eq. 29."""
    return 3 + 2 * rand + 2 * mc_samples


def evaluate(model, x, y, bn_stats="test", rand=True, mc_samples=PAPER["mc_samples"], c2=PAPER["c2"],
             where="the test set", log=None, timing=None):
    """Every score and diagnostic the RESULT line reports, each computed once, on the test images x (N,
    *model.input_shape) in [0, 1] with labels y (1 = anomaly); with rand=False and mc_samples=0, one point of
    Fig. 2's curve (no random numbers drawn). Under bn_stats: the Eq. 23 / 24 score "ori", and from the same pass
    Fig. 3's mean ||z||_2 of normal and anomalous codes and z_spread (the normal codes' mean per-dimension std);
    Eq. 22 "rand"; Eq. 29 "mc" (mc_samples = H > 0). Under the other statistics: the Eq. 23 / 24 score again,
    "<other>bn". Returns (anomaly scores {kind: numpy (N,)}, higher = more anomalous, checked by check_scores
    (where names the set in its error); metrics: auroc, auroc_rand, auroc_mc, znorm_normal, znorm_anomaly,
    z_spread, auroc_<other>bn, dims_alive). The model's training buffers and mode are left as they were. timing: a
    dict that receives the seconds of the main score, "ori" (its BatchNorm re-estimation included)."""
    x, other = as_input(model, x), "train" if bn_stats == "test" else "test"
    is_normal = torch.as_tensor(np.asarray(y) == 0, device=x.device)
    scores, seen, t0 = {}, [], time.time()
    with bn_statistics(model, x, bn_stats, log=log):
        hook = model.norm.register_forward_hook(lambda m, inp, out: seen.append((inp[0].flatten(1), out.flatten(1))))
        try:
            scores["ori"] = -normal_scores(model, x, "ori", c2=c2, log=log)
        finally:
            hook.remove()
        if timing is not None:
            timing["ori"] = time.time() - t0
        if rand:
            scores["rand"] = -normal_scores(model, x, "rand", c2=c2, log=log)
        if mc_samples > 0:
            scores["mc"] = -normal_scores(model, x, "mc", mc_samples, c2, log=log)
    with bn_statistics(model, x, other, log=log):
        scores[f"{other}bn"] = -normal_scores(model, x, "ori", c2=c2, log=log)
    names = dict(EQUATION, **{f"{other}bn": f"{EQUATION['ori']} ({other} BatchNorm statistics)"})
    check_scores({names[k]: s for k, s in scores.items()}, where)
    pre, z = (torch.cat(t) for t in zip(*seen))                                        # (N, d) before / after the BN
    norms = z.norm(dim=1)
    metrics = {f"auroc{'' if k == 'ori' else '_' + k}": round(auroc(y, s), 4) for k, s in scores.items()
               if not k.endswith("bn")}
    metrics.update(znorm_normal=round(norms[is_normal].mean().item(), 4),
                   znorm_anomaly=round(norms[~is_normal].mean().item(), 4),
                   z_spread=round(z[is_normal].std(0).mean().item(), 4),
                   **{f"auroc_{other}bn": round(auroc(y, scores[f"{other}bn"]), 4)}, dims_alive=round(alive(pre), 4))
    return scores, metrics


# ------------------------------------------------------------------------------------------ data

def prepare(dataset, normal=None, data_root=None):
    """The normal training images and the labelled test set as images (N, C, H, W) in [0, 1] of an encoder input,
    (1, 28, 28) or (3, 32, 32) (as_input expands and pads them). A built-in dataset: the one-class split (Sec.
    IV-A), normal = the normal class(es), default 0. Your own images, a path (normal unused): an .npz file (x_train
    normal, x_test, y_test with 1 = anomaly; x_val / y_val unused) or an image folder (train/good, test/good,
    test/<defect>), read by common.py: 1x28x28 grey images stay as MNIST's do, any other size or colour becomes
    3x32x32 (common.fit_images). Returns a dict: x_train, x_test, y_test (numpy), normal (a list, None for your own
    data), index (each test image's index in its source), source (what was read; None for the built-in sets)."""
    if dataset in IMAGE_DATASETS:
        x_tr, y_tr, x_te, y_te = load_images(dataset, data_root)
        normal = parse_normal("0" if normal is None else normal, IMAGE_DATASETS[dataset][0])
        split = one_class_split(x_tr, y_tr, x_te, y_te, normal)
        x_train, (x_test, y_test), source = split["train"], split["test"], None
    else:
        name, normal = os.path.basename(os.path.normpath(dataset)), None
        tabular = f"itad.py takes images, and '{dataset}' {{}}. Use toll.py or cance.py for tabular data"
        fit = lambda x: x if tuple(x.shape[1:]) == (1, 28, 28) else fit_images(x, 3, 32)
        shape = lambda x: "x".join(map(str, x.shape[1:]))
        if dataset.endswith(".csv"):
            raise DataError(tabular.format("is a CSV file of feature rows"))
        if dataset.endswith(".npz"):
            d = load_npz(dataset)
            if d["train"].ndim == 2:
                raise DataError(tabular.format(f"holds {tuple(d['train'].shape)} feature rows"))
            x_train, (x_test, y_test) = fit(d["train"]), d["test"]
            source = f"{len(x_train)} x_train and {len(x_test)} x_test images of {shape(d['train'])}, read as " \
                     f"{shape(x_train)}" + ("; x_val / y_val unused (ITAD does not validate)" if d["val"] else "")
            x_test = fit(x_test)
        elif os.path.isfile(dataset):
            raise DataError(f"'{dataset}' is neither an .npz file nor an image folder. Give an .npz file (x_train, "
                            "x_test, y_test), a folder with train/good/ and test/<name>/ subfolders, or a built-in "
                            "dataset name")
        else:
            d = load_image_folder(dataset)                 # grey -> 1x28x28, RGB -> 3x32x32 (common.py's choice)
            if d["train"].shape[1] == 1 and "of 28x28 grey, read as" not in d["source"]:
                d = load_image_folder(dataset, channels=3, size=32)          # grey of another size: resized to 32
            x_train, (x_test, y_test), source = d["train"], d["test"], d["source"]
        if x_train.shape[1] == 1:
            source += "; the encoder sees 3x32x32 (grey repeated to 3 channels, zero-padded as MNIST's)"
        source = f"{name}: {source}"
        if y_test.min() == y_test.max():
            raise DataError(f"the test set of '{dataset}' holds {'only anomalies' if y_test[0] else 'no anomalies'}; "
                            "AUROC needs both. Give a test set with normal and anomalous images")
    return dict(x_train=x_train, x_test=x_test, y_test=y_test.numpy(), normal=normal,
                index=np.arange(len(x_test)), source=source)


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
    """argparse type: a built-in dataset's name, else a path to your own images (read when the data is prepared)."""
    if name in IMAGE_DATASETS or is_user_dataset(name):
        return name
    raise argparse.ArgumentTypeError(f"invalid choice: '{name}' (choose from {', '.join(IMAGE_DATASETS)}, or give your "
                                     "own images: an .npz file or an image folder)")


# the model and its training: --load-model reads them from the checkpoint and refuses them on the command line
TRAINING = ("model", "epochs", "iters", "batch_size", "lr", "beta", "entropy", "entropy_reduce", "mi", "c2", "ndf",
            "nrkhs", "ndepth", "local_size", "curve_every", "save_model")


def parse_args(argv=None):
    pre = ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--dataset", default="mnist")
    digits = pre.parse_known_args(argv)[0].dataset == "digits"
    p = ArgumentParser(prog="itad.py", description="ITAD: information-theoretic anomaly detection (Ye et al., "
                       "arXiv:2012.04837)", formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--dataset", type=dataset_name, default="mnist", metavar="NAME|PATH",
                   help="mnist, fashion-mnist, cifar10, cifar100 (20 superclasses) (Sec. IV-A); not in the paper: "
                        "svhn, digits (scikit-learn's digits, an offline check with smaller sizes), or your own "
                        "images: an .npz file (x_train normal, x_test, y_test with 1 = anomaly) or a folder "
                        "(train/good, test/good, test/<defect>); 1x28x28 grey images are padded as MNIST's, any "
                        "other size or colour resized to 3x32x32; the paper's values (the same for MNIST and CIFAR-10)")
    p.add_argument("--normal", help="normal class, or a comma list (Sec. IV-A: one class); default 0 for the "
                                    "built-in sets, not used with your own images (y_test marks the anomalies)")
    p.add_argument("--data-root", default=os.environ.get("AD_DATA_ROOT", "./data"),
                   help="datasets folder, torchvision's layout ($AD_DATA_ROOT if set)")
    p.add_argument("--seed", type=number(int, 0, 2 ** 32 - 1), default=0,
                   help="initialisation, batches, augmentations (not in the paper)")
    p.add_argument("--device", type=device_type, default="auto",
                   help="auto (cuda if present, else cpu), cpu, cuda or cuda:N (not in the paper)")
    p.add_argument("--model", default="base", choices=["base", "extension"],
                   help="base: Alg. 1-2, Eq. 13 / 23 (global code); extension: Alg. 3-5, Eq. 21 / 24 (global + "
                        "local DIM) (Sec. IV-A)")
    p.add_argument("--epochs", type=number(int, 1), default=PAPER["epochs"], help="training epochs (Sec. IV-A)")
    p.add_argument("--iters", type=number(int, 1),
                   help="training steps instead of --epochs x floor(normal training images / batch), the "
                        "default (Sec. IV-A gives epochs)")
    p.add_argument("--batch-size", type=number(int, 2),
                   help=f"N images per step, 2N views: {PAPER['batch_size']}, or all normal training images where "
                        "fewer (not in the paper: AMDIM's default, whose code the paper follows)")
    p.add_argument("--lr", type=number(float, 0, low_open=True), default=PAPER["lr"],
                   help="Adam's learning rate (Sec. IV-A)")
    p.add_argument("--beta", type=number(float, 0), default=PAPER["beta"],
                   help="entropy weight of Eq. 13 / Alg. 1 line 19; 0 = no entropy term (Sec. IV-B, Fig. 1-3)")
    p.add_argument("--entropy", default=PAPER["entropy"], choices=["l1", "l2"],
                   help="entropy bound ||z||_q: l1 = Laplace reference (Eq. 17), l2 = Gaussian (Eq. 16) (Table I)")
    p.add_argument("--entropy-reduce", default="sum", choices=["sum", "mean"],
                   help="L_entropy per view: sum = ||z||_q as Alg. 1 line 18 prints it; mean = ||z||_q / d^(1/q) "
                        "(not in the paper: a per-dimension reading)")
    p.add_argument("--mi", default="nce", choices=["nce", "jsd"],
                   help="mutual-information estimator: InfoNCE (Eq. 18, Alg. 1) or Jensen-Shannon (Eq. 28) (Table I)")
    p.add_argument("--c2", type=number(float, 0, low_open=True), default=PAPER["c2"],
                   help="soft-clipping bound c2 (Alg. 1 input)")
    p.add_argument("--bn-stats", choices=["train", "test"],
                   help="statistics of the codes' BatchNorm when scoring: test (the default; with --load-model the "
                        "checkpoint's choice) = re-estimated on the test images (transductive), train = training's "
                        "running averages; RESULT gives the Eq. 23 / 24 score under the other one as "
                        "auroc_<other>bn (not in the paper: AMDIM's evaluation code)")
    p.add_argument("--mc-samples", type=number(int, 0), default=PAPER["mc_samples"],
                   help="H, augmented pairs of the Eq. 29 score (auroc_mc), 2 H passes over the test set; 0 = skip "
                        f"it. Sec. IV-D: {PAPER['mc_samples']}; digits: {DIGITS['mc_samples']} (not in the paper)")
    p.add_argument("--ndf", type=number(int, 1), default=PAPER["ndf"],
                   help=f"encoder base width (Table IV: {PAPER['ndf']}; digits: {DIGITS['ndf']}, not in the paper)")
    p.add_argument("--nrkhs", type=number(int, 1), default=PAPER["nrkhs"],
                   help=f"code size d (Table IV: {PAPER['nrkhs']}; digits: {DIGITS['nrkhs']}, not in the paper)")
    p.add_argument("--ndepth", type=number(int, 1), default=PAPER["ndepth"],
                   help=f"layers per ResBlock (Table IV: {PAPER['ndepth']}; digits: {DIGITS['ndepth']}, not in the "
                        "paper)")
    p.add_argument("--local-size", type=int, default=5, choices=[5, 7],
                   help="extension: f_local's map, 5 = the 5x5 output of Table IV's 'provides f_local' block; 7 = "
                        "the block before it (not in the paper: AMDIM's second local map)")
    p.add_argument("--curve-every", type=number(int, 0), default=0,
                   help="every K steps, the test AUROC of the Eq. 23 / 24 score under both BatchNorm statistics, "
                        "mean ||z|| and dims_alive, printed and stored as 'curve' in the JSON; 0 = off. Monitoring "
                        "only: the last model is tested (Sec. IV-B, Fig. 2: every 5 epochs)")
    p.add_argument("--json", type=output_path, help="also write the RESULT keys, the curve, the resolved settings and "
                                                    "the provenance to this file (not in the paper)")
    p.add_argument("--save-scores", type=output_path, metavar="FILE.npz",
                   help="write the test scores, higher = more anomalous (the negated NormalScore): scores (Eq. 23 / "
                        "24 under --bn-stats), scores_rand (Eq. 22), scores_mc (Eq. 29, unless --mc-samples 0), "
                        "scores_trainbn or scores_testbn (Eq. 23 / 24 under the other statistics), labels (1 = "
                        "anomaly), index (each test image's index in its source) (not in the paper)")
    p.add_argument("--save-model", type=output_path, metavar="FILE.pt",
                   help="write the trained encoder (its training BatchNorm buffers included), every setting, the "
                        "input shape and --bn-stats to this file (not in the paper)")
    p.add_argument("--load-model", metavar="FILE.pt",
                   help="score the test set with an encoder written by --save-model, without training; the model "
                        "and training options come from it and may not be given; the Eq. 22 / 29 augmentations "
                        "continue from the saving run's random state (not in the paper)")
    if digits:
        p.set_defaults(**DIGITS)
    args = p.parse_args(argv)
    if args.dataset not in IMAGE_DATASETS and args.normal is not None:
        p.error(f"--normal names classes of a built-in dataset; in your own images ({args.dataset}) y_test = 1 or a "
                "test/<defect>/ folder marks the anomalies. Drop --normal")
    unset = object()                                     # which options the command line set (not defaults)
    given = {k for k, v in vars(p.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), unset)))).items()
             if v is not unset}
    if args.load_model:
        held = ["--" + k.replace("_", "-") for k in TRAINING if k in given]
        if held:
            p.error(f"{', '.join(held)} set{'s' if len(held) == 1 else ''} the model or its training, which "
                    f"--load-model reads from the checkpoint. Drop {'it' if len(held) == 1 else 'them'}")
    elif "local_size" in given and args.model == "base":
        p.error("--local-size picks the extension model's f_local (Alg. 3), and --model base has no local features. "
                "Add --model extension, or drop --local-size")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    log = lambda line: print(line, flush=True)
    t_start = time.time()
    try:
        set_seed(args.seed)
        model, ck = load(args.load_model, args.device) if args.load_model else (None, None)
        data = prepare(args.dataset, args.normal, args.data_root)
        x_train, x_test, y_test, normal = data["x_train"], data["x_test"], data["y_test"], data["normal"]
        shape = tuple(x_test.shape[1:])
        if ck:                                              # the checkpoint's settings, --bn-stats its choice if unset
            cfg = {**dict.fromkeys(TRAINING), "c2": PAPER["c2"], **ck["config"]}  # API-saved: sizes only
            cfg["bn_stats"] = args.bn_stats or ck["preprocess"]["bn_stats"]
            if tuple(cfg["input_shape"]) != shape:
                raise DataError(f"'{args.load_model}' holds a model for {'x'.join(map(str, cfg['input_shape']))} "
                                f"images, but {args.dataset} gives {'x'.join(map(str, shape))} images. Score data of "
                                "the model's shape, or train a model on this data")
        else:
            cfg = {k: getattr(args, k) for k in TRAINING if k != "save_model"}
            cfg["bn_stats"] = args.bn_stats or "test"
            cfg["batch_size"] = args.batch_size or min(PAPER["batch_size"], len(x_train))
            if cfg["batch_size"] > len(x_train):
                raise DataError(f"--batch-size {cfg['batch_size']} exceeds the {len(x_train)} normal training images. "
                                f"Pass --batch-size {len(x_train)} or less")
            if args.batch_size is None and cfg["batch_size"] < PAPER["batch_size"]:
                log(f"note: --batch-size {cfg['batch_size']}: the default {PAPER['batch_size']} exceeds the "
                    f"{len(x_train)} normal training images of {args.dataset}, so every image is in every batch")
            model = build_encoder(shape, ndf=cfg["ndf"], nrkhs=cfg["nrkhs"], ndepth=cfg["ndepth"],
                                  model=cfg["model"], local_size=cfg["local_size"]).to(args.device)
            cfg["iters"] = cfg["iters"] or cfg["epochs"] * (len(x_train) // cfg["batch_size"])
        name = args.dataset if normal else os.path.basename(os.path.normpath(args.dataset))
        normal_text = ",".join(map(str, normal)) if normal else "-"
        if data["source"]:
            log(f"itad: read {data['source']}" + ("" if ck else "; the paper's values where not given (Table IV, "
                                                            "Sec. IV-A)"))
        if ck:
            log(f"itad: model {args.load_model}, not trained here: its settings"
                + (f" (trained on {cfg['dataset']}, normal {cfg['normal']}, seed {cfg['seed']}, {cfg['iters']} steps)"
                   if cfg.get("dataset") else "")
                + (", its random state for the Eq. 22 / 29 augmentations" if ck["state"].get("rng") else ""))
        log(f"itad: model={cfg['model']} dataset={name} normal={normal_text} train={len(x_train)} test={len(x_test)} "
            f"(anomalies {int(y_test.sum())}) mi={cfg['mi']} entropy={cfg['entropy']} ({cfg['entropy_reduce']}) "
            f"beta={cfg['beta']} bn_stats={cfg['bn_stats']} lr={cfg['lr']} batch={cfg['batch_size']} "
            f"ndf={cfg['ndf']} nrkhs={cfg['nrkhs']} ndepth={cfg['ndepth']}"
            + (f" local={cfg['local_size']}" if cfg["model"] == "extension" else "") + f" device={args.device}")
        h = args.mc_samples
        log(f"scoring: {scoring_passes(h)} passes over the {len(x_test)} test images (BatchNorm statistics 1, Eq. 23 / "
            f"24 under both statistics 2, Eq. 22 2" + (f", Eq. 29 2 x {h}" if h else "") + ")"
            + ("; each curve point 3 more" if cfg["curve_every"] and not ck else ""))
        if ck:
            info = {"iters": cfg["iters"], "curve": [], "train_seconds": None}
            rng = ck["state"].get("rng", {})
            if "cpu" in rng:
                torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and args.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], args.device)
        else:
            model, info = train(model, x_train, beta=cfg["beta"], lr=cfg["lr"], iters=cfg["iters"],
                                batch_size=cfg["batch_size"], entropy=cfg["entropy"],
                                entropy_reduce=cfg["entropy_reduce"], mi=cfg["mi"], c2=cfg["c2"],
                                curve_every=cfg["curve_every"], x_test=x_test, y_test=y_test,
                                bn_stats=cfg["bn_stats"], log=log)
            rng = {"cpu": torch.get_rng_state()}            # where the Eq. 22 / 29 augmentations start
            if args.device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(args.device)
        timing = {}
        scores, metrics = evaluate(model, x_test, y_test, cfg["bn_stats"], mc_samples=h, c2=cfg["c2"], log=log,
                                   timing=timing)
        other = f"auroc_{'test' if cfg['bn_stats'] == 'train' else 'train'}bn"  # Eq. 23 / 24 under the other statistics
        result = {"method": "itad", "dataset": name, "normal": normal_text, "seed": args.seed,
                  **{k: metrics[k] for k in ("auroc", "auroc_rand", "auroc_mc", other) if k in metrics},
                  "model": cfg["model"], "mi": cfg["mi"], "entropy": cfg["entropy"],
                  "entropy_reduce": cfg["entropy_reduce"], "code_norm": "affine", "c1": "sqrt",
                  "bn_stats": cfg["bn_stats"], "beta": cfg["beta"],
                  f"{cfg['mi']}_end": None if ck else round(info[f"{cfg['mi']}_end"], 4),     # ck: not trained here
                  "entropy_end": None if ck else round(info["entropy_end"], 4),
                  **{k: metrics[k] for k in ("znorm_normal", "znorm_anomaly", "z_spread", "dims_alive")},
                  "iters": info["iters"], "batch_size": cfg["batch_size"], "device": args.device.type,
                  "seconds": round(time.time() - t_start, 1),
                  "train_samples_per_s": None if ck else
                  round(info["iters"] * cfg["batch_size"] / max(info["train_seconds"], 1e-9), 1),
                  "score_samples_per_s": round(len(x_test) / max(timing["ori"], 1e-9), 1)}         # the main score
        result = {k: v for k, v in result.items() if v is not None}
        config = dict(cfg, mc_samples=h, input_shape=list(shape), **({"loaded_from": args.load_model} if ck else
                      {"dataset": args.dataset, "normal": normal_text, "seed": args.seed, "device": args.device.type,
                       "values_of": "digits" if args.dataset == "digits" else "paper"}))
        if args.save_scores:
            save_scores(args.save_scores, {("main" if k == "ori" else k): s for k, s in scores.items()}, y_test,
                        data["index"])
            log(f"wrote {args.save_scores}: " + ", ".join("scores" + ("" if k == "ori" else "_" + k) for k in scores)
                + ", labels, index")
        if args.save_model:
            save(model, args.save_model, cfg["bn_stats"], config, rng)
            log(f"wrote {args.save_model}")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        print("\ninterrupted: no result was written", file=sys.stderr)
        sys.exit(130)
    curve = dict(curve=info["curve"]) if info["curve"] else {}              # the curve: the JSON only
    write_result(result, args.json, log, extra=dict(curve, config=config, provenance=provenance(argv)))
    return result


if __name__ == "__main__":
    main()
