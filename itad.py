"""Deep Unsupervised Image Anomaly Detection: An Information Theoretic Framework (ITAD).
Fei Ye, Huangjie Zheng, Chaoqin Huang, Ya Zhang. arXiv:2012.04837, 2020.

Anomaly detection as max KL[p_n(x, z) || p_a(x, z)] (Eq. 2), bounded from below, if normal and anomalous data are
separable in the latent space, by an objective of normal data alone: max I(x, z) - beta H(z) (Eq. 10-13). I(x, z) is
estimated with InfoNCE between two augmented views (Eq. 14, 18-20), H(z) bounded by E||z||_q (a zero-centred Laplace,
q = 1, or Gaussian, q = 2, reference; Eq. 15-17). A normal image's code has a large soft-clipped self-similarity
z^T z (Eq. 23): the entropy term shrinks anomalies' codes faster than normal ones (Sec. IV-B, Fig. 3).

Reproduces the base model (Alg. 1-2, Eq. 13 / 23) and the extension model (Alg. 3-5, Eq. 21 / 24) on Table IV's
encoder (Table III); Table I (--mi jsd, --entropy l2); the beta study of Fig. 1-3 (--beta; --curve-every K: Fig. 2's
test AUROC over training, in the JSON); Table II (--table2: auroc = NormalScore_ori, Eq. 23 / 24, beside auroc_rand,
Eq. 22, and auroc_mc, Eq. 29). Not here: ImageNet (Table V). Your own images: --dataset PATH (common.py).

Equation map (a user calls fit -> score; save / load keep a fitted encoder)
    Table IV encoder; phi_theta2 of Alg. 4 ........................ build_encoder(), AmdimEncoder, LocalProjection
    Alg. 1 lines 2-6: two augmented views per image ............... two_views(), draw_augmentation(), augment()
    Alg. 1 lines 11-17, Alg. 3 (Eq. 18, 20); Eq. (28), Table I .... similarity(), soft_clip(), nce_loss(); jsd_loss()
    Alg. 1 lines 18-19 (Eq. 13, 15-17); Eq. (21) / Alg. 4 13-16 ... entropy_bound(), base_loss(); extension_loss()
    Alg. 1 / Alg. 4, the training loop (fit: encoder + loop) ...... train(), fit()
    Eq. (23) / Alg. 2, Eq. (24) / Alg. 5; Eq. (22) and (29) ....... ori_score(); pair_score()
    Alg. 2 / 5, anomaly score = -NormalScore; every RESULT score ... anomaly_scores(), score(); evaluate()

Readings where the text is open (default first). c1, "the size of z_i" (Alg. 1) = sqrt(d), the scale AMDIM's code (ref.
[36]) gives its scores before the same tanh clip at c2 = 20 (c1 = d leaves the similarities too flat for InfoNCE).
"Normalized vectors" (Sec. III-C): an affine BatchNorm ends the codes, as AMDIM's. L_entropy [--entropy-reduce]: sum =
||z||_q (Alg. 1 line 18), or mean = ||z||_q / d^(1/q). Sec. IV-B's claims (L_NCE and L_H of a similar scale; normal
codes keep the larger ||z||, Fig. 3; beta > 0 beats beta = 0) held in the measured runs
(benchmarks/results/itad_curves.md) with mean at beta ~5 for d = 128 and 1024 alike; beta 20 summed switches the code
off at both sizes, as a mean it keeps a few % of the code at d = 1024: no reading puts the printed beta where the
claims hold, so the default stays as printed. BatchNorm statistics when scoring [--bn-stats]: test = re-estimated on
the test images, as AMDIM's evaluation does (transductive; it ranks normal images first wherever the code has learned);
train = training's averages.

Deviations (flag in brackets)
  - Batch 200, AMDIM's (the paper gives none) [--batch-size]; epochs of random batches, the last incomplete one dropped
    [--epochs, --iters]; Adam, default betas (AMDIM's weight decay, warm-up, logit penalty: not used).
  - Augmentation, AMDIM's CIFAR policy (Sec. III-C), per sample: one flip per image; per view a shift up to 4 px
    (reflect padding, p 0.8), colour jitter 0.4/0.4/0.4/0.2 with hue as a YIQ rotation (p 0.8), grayscale (p 0.25).
    Grey images as 3 channels (Sec. IV-E), 28x28 zero-padded to 32x32, pixels in [-1, 1] (Sec. IV-A).
  - Encoder: AMDIM's (no BN inside, last conv of a residual branch zero-initialised), but a strided kxk conv shortcut
    where a layer widens (AMDIM's zero-padded pool leaves all but ndf code dimensions dead at initialisation).
  - Alg. 3 line 8 sums g^T phi(l) over all f_local positions [--local-size]; L_gvl (Alg. 4 line 14) is one Alg. 3 loss
    over the 2N x 2N global/local pairs of both views; the entropy term covers g and phi(l) (Alg. 4 line 15; Eq. 21: g
    only). Eq. 22 / 29 (global code) soft-clip each pair's similarity like Alg. 2 line 8 (printed raw); Eq. 29's sum is
    a mean, H = 100 (Sec. IV-D) [--mc-samples]. --entropy l2 = ||z||_2 as Alg. 1 line 18 writes it (Eq. 16: squared);
    --mi jsd: Eq. 28's critic is the clipped similarity. Scores in float64; the last model is tested. Not in the paper:
    svhn, digits (offline check), RESULT's nce_end, entropy_end, znorm_normal / _anomaly (Fig. 3), dims_alive.
Run:  python itad.py --dataset fashion-mnist --normal 0 --data-root ./data    # Table IV sizes, 400 epochs (a GPU)
"""
import contextlib
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from common import (DataError, IMAGE_DATASETS, Progress, as_rgb32, check_finite, check_input_shape,
                    check_scores, command_line, exit_codes, finish, fit_batch, load_checkpoint, load_images,
                    load_weights, loaded_note, number, one_class_split, output_flags, parse, parse_normal,
                    read_user_data, run_name, save_checkpoint, saving_run, say, set_seed, to_minus1_1)

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
    return as_rgb32(x, model.input_shape, next(model.parameters()).device, name)


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
          curve_every=0, x_test=None, y_test=None, bn_stats="test", log=None):
    """Alg. 1 (base model) / Alg. 4 (extension) on normal images x_normal (N, *model.input_shape) in [0, 1]: Adam;
    epochs of random batches of batch_size images (the last incomplete batch dropped), two augmented views each;
    `iters` steps in all (default: epochs x floor(N / batch_size)). entropy "l1" | "l2" (q of Eq. 16-17, Table I),
    mi "nce" | "jsd" (Eq. 28, Table I). With curve_every = K > 0 and a labelled test set (y_test: 1 = anomaly),
    every K steps (and after step 1) the test AUROC of the Eq. 23 / 24 score under both BatchNorm statistics, mean
    ||z|| and dims_alive (Fig. 2; evaluate() with rand=False, mc_samples=0); no random numbers are drawn for it, so
    training is the same without it. Returns (model, info): info = iters, "<mi>_end" and "entropy_end" (means over
    the last 10% of the steps), train_seconds, curve (a list of dicts). log: where progress lines go (None: silent)."""
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
    say = log or (lambda line: None)
    say(f"{'Alg. 4' if model.phi is not None else 'Alg. 1'}: {iters} steps of {batch_size} images ({2 * batch_size} "
        f"views), c1 = sqrt({model.z_dim}), c2 = {c2:g}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch, progress = n // batch_size, Progress("iter", iters, log)
    quiet = lambda line: say(line) if "left" in line else None     # a curve point's passes: only when they are slow
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
        check_finite(loss_value, f"the loss at step {it}")
        trace.append((mi_value.item(), ent.item()))
        progress(it, f" loss={loss_value:.4f} {mi}={trace[-1][0]:.4f} entropy={trace[-1][1]:.4f}")
        if curve_every and (it % curve_every == 0 or it == 1):
            recent = trace[-curve_every:]
            _, metrics = evaluate(model, x_test, y_test, bn_stats, rand=False, mc_samples=0, c2=c2,
                                  where=f"the test set at step {it} (--curve-every)", log=quiet)
            point = dict(iter=it, **{mi: round(float(np.mean([t[0] for t in recent])), 4),
                                     "entropy": round(float(np.mean([t[1] for t in recent])), 4)}, **metrics)
            curve.append(point)
            say("curve " + " ".join(f"{k}={v}" for k, v in point.items()))
    tail = trace[-max(1, len(trace) // 10):]                                           # the last 10% of the steps
    return model, {"iters": iters, f"{mi}_end": float(np.mean([t[0] for t in tail])),
                   "entropy_end": float(np.mean([t[1] for t in tail])), "train_seconds": train_time, "curve": curve}


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
            progress = Progress("BatchNorm statistics of the test images", len(x), log)
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
                        len(x) * h * (1 if kind == "ori" else 2), log)
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
                   log=None):
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


def evaluate(model, x, y, bn_stats="test", rand=False, mc_samples=0, c2=PAPER["c2"],
             where="the test set", log=None, timing=None):
    """Every score and diagnostic the RESULT line reports, each computed once, on the test images x (N,
    *model.input_shape) in [0, 1] with labels y (1 = anomaly). Under bn_stats: the Eq. 23 / 24 score "ori" and,
    from its pass, Fig. 3's mean ||z||_2 of normal and anomalous codes and z_spread (the normal codes' mean
    per-dimension std); Table II's Eq. 22 "rand" (rand=True) and Eq. 29 "mc" (mc_samples = H > 0). Under the
    other statistics: the Eq. 23 / 24 score again, "<other>bn". The defaults (no random numbers drawn) are also one
    point of Fig. 2's curve. Returns (anomaly scores {kind: numpy (N,)}, higher = more anomalous, checked by
    check_scores (where names the set in its error); metrics: auroc, auroc_rand, auroc_mc, znorm_normal,
    znorm_anomaly, z_spread, auroc_<other>bn, dims_alive). The model's training buffers and mode are left as they
    were. timing: a dict that receives the seconds of the main score, "ori" (its BatchNorm re-estimation included)."""
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




# ------------------------------------------------------------------------------------------ fit, score, save, load

def fit(x_normal, *, model="base", ndf=PAPER["ndf"], nrkhs=PAPER["nrkhs"], ndepth=PAPER["ndepth"], local_size=5,
        beta=PAPER["beta"], entropy=PAPER["entropy"], entropy_reduce="sum", mi="nce", c2=PAPER["c2"], lr=PAPER["lr"],
        epochs=PAPER["epochs"], iters=None, batch_size=PAPER["batch_size"], bn_stats="test", curve_every=0,
        x_test=None, y_test=None, device="cpu", log=None):
    """Alg. 1 (model="base") / Alg. 4 ("extension") on normal images x_normal (N, 1, 28, 28) or (N, 3, 32, 32) in
    [0, 1]: build_encoder() for that shape, then train(). The encoder carries what score() and save() need: bn_stats
    (Eq. 23 / 24's BatchNorm statistics: "test" = re-estimated on the images scored, "train" = training's), c2, config
    (these settings), info (train()'s) and rng (the random state after training: the CLI's Eq. 22 / 29 start there)."""
    device = torch.device(device)
    enc = build_encoder(np.shape(x_normal)[1:], ndf, nrkhs, ndepth, model, local_size).to(device)
    enc, enc.info = train(enc, x_normal, beta=beta, lr=lr, epochs=epochs, iters=iters, batch_size=batch_size,
                          entropy=entropy, entropy_reduce=entropy_reduce, mi=mi, c2=c2, curve_every=curve_every,
                          x_test=x_test, y_test=y_test, bn_stats=bn_stats, log=log)
    enc.rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        enc.rng["cuda"] = torch.cuda.get_rng_state(device)
    enc.bn_stats, enc.c2 = bn_stats, c2
    enc.config = dict(model=model, epochs=epochs, iters=enc.info["iters"], batch_size=batch_size, lr=lr, beta=beta,
                      entropy=entropy, entropy_reduce=entropy_reduce, mi=mi, c2=c2, ndf=ndf, nrkhs=nrkhs,
                      ndepth=ndepth, local_size=local_size, curve_every=curve_every, bn_stats=bn_stats)
    return enc


def score(model, x, log=None):
    """Eq. (23) / (24) of images x (N, *model.input_shape) in [0, 1] -> numpy (N,), higher = more anomalous, under the
    model's BatchNorm statistics ("test": re-estimated on x itself, so pass the whole test set at once) and c2."""
    return anomaly_scores(model, x, "ori", getattr(model, "bn_stats", "test"), c2=getattr(model, "c2", PAPER["c2"]),
                          log=log)


def save(model, path, config=None):
    """Keep an encoder (fit()'s, load()'s or a bare build_encoder()): its weights with the BatchNorm buffers of
    training, its architecture and input shape, its settings (model.config, then `config`), bn_stats and the random
    state it carries (rng: --load-model continues the saving run's Eq. 22 / 29 augmentations); written atomically."""
    arch = dict(input_shape=list(model.input_shape), ndf=model.stem[0].out_channels, nrkhs=model.z_dim,
                ndepth=len(model.block1), model="base" if model.phi is None else "extension",
                local_size=model.local_size)
    preprocess = {"bn_stats": getattr(model, "bn_stats", "test"), "input": "images in [0, 1] of input_shape (uint8 / "
                  "255; common.fit_images converts and resizes); the encoder scales them to [-1, 1]"}
    state = {"encoder": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "rng": getattr(model, "rng", None) or {}}
    save_checkpoint(path, "itad", {**getattr(model, "config", {}), **(config or {}), **arch}, preprocess, state)


def load(path, device="cpu"):
    """An encoder written by save() or --save-model -> the encoder in eval mode with its training BatchNorm buffers,
    ready for score(x): bn_stats, c2 and config as fit() leaves them, rng the saving run's random state."""
    ck = load_checkpoint(path, "itad")
    cfg = ck["config"]
    try:
        model = build_encoder(cfg["input_shape"], cfg["ndf"], cfg["nrkhs"], cfg["ndepth"], cfg["model"],
                              cfg["local_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"'{path}' is an itad.py checkpoint whose settings build no Table IV encoder "
                        f"({type(e).__name__}: {e}). Write it again with --save-model") from None
    load_weights(model, ck["state"]["encoder"], path)
    model.config, model.info, model.rng = cfg, None, ck["state"].get("rng", {})
    model.bn_stats, model.c2 = ck["preprocess"].get("bn_stats", "test"), cfg.get("c2", PAPER["c2"])
    return model.to(device).eval()


def restore_rng(model, device="cpu"):
    """Continue the random state the encoder carries (where the saving run's Eq. 22 / 29 augmentations began)."""
    if "cpu" in model.rng:
        torch.set_rng_state(model.rng["cpu"])
    if "cuda" in model.rng and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(model.rng["cuda"], device)


# ------------------------------------------------------------------------------------------ data

def prepare(dataset, normal=None, data_root=None, seed=0):
    """Normal training images and a labelled test set, (N, 1, 28, 28) or (N, 3, 32, 32) in [0, 1] -> dict x_train,
    x_test, y_test (numpy, 1 = anomaly), normal, index (test images in their source), source. A built-in dataset: the
    one-class split (Sec. IV-A), normal classes default 0. Your own images (a path; normal None): read_user_data."""
    if dataset in IMAGE_DATASETS:
        x_tr, y_tr, x_te, y_te = load_images(dataset, data_root)
        normal = parse_normal("0" if normal is None else normal, IMAGE_DATASETS[dataset][0])
        split = one_class_split(x_tr, y_tr, x_te, y_te, normal)
        x_train, (x_test, y_test), index, source = split["train"], split["test"], None, None
    else:
        d, normal = read_user_data(dataset, "itad.py", seed, tables=False, grey28_only=True), None
        x_train, (x_test, y_test), index = d["train"], d["test"], d["index"]
        source = f"{os.path.basename(os.path.normpath(dataset))}: {d['source']}" + (
            "; the encoder sees 3x32x32 (grey repeated to 3 channels, zero-padded as MNIST's)" if d["kind"] == "grey"
            else "")
    index = np.arange(len(x_test)) if index is None else np.asarray(index)
    return dict(x_train=x_train, x_test=x_test, y_test=y_test.numpy(), normal=normal, index=index, source=source)


# ------------------------------------------------------------------------------------------ command line

TRAINING = ("model", "epochs", "iters", "batch_size", "lr", "beta", "entropy", "entropy_reduce", "mi", "c2", "ndf",
            "nrkhs", "ndepth", "local_size", "curve_every")     # fit()'s settings: --load-model reads the checkpoint's


def defaults(known):
    """The paper's values (--dataset digits: smaller sizes); with --load-model the checkpoint's (none shown)."""
    row = dict(PAPER, **(DIGITS if known.dataset == "digits" else {}), model="base", entropy_reduce="sum", mi="nce",
               local_size=5, curve_every=0, bn_stats="test")
    return dict(row, **dict.fromkeys(TRAINING + ("bn_stats",) if known.load_model else ()))


def parse_args(argv=None):
    p = command_line("itad.py", "ITAD: information-theoretic anomaly detection (Ye et al., arXiv:2012.04837)",
                     IMAGE_DATASETS, "mnist, fashion-mnist, cifar10, cifar100 (20 superclasses) (Sec. IV-A); not in "
                     "the paper: svhn, digits (an offline check, smaller sizes)", "1x28x28 grey images are padded as "
                     "MNIST's, other sizes or colours resized to 3x32x32; the paper's values",
                     "initialisation, batches, augmentations (not in the paper)", "Sec. IV-A", tables=False)
    add = lambda flag, kind, text: p.add_argument(flag, help=text, **(    # kind: an argument type, or the choices
        {"choices": kind, "type": type(kind[0])} if isinstance(kind, list) else {"type": kind}))
    add("--model", ["base", "extension"], "base: Alg. 1-2, Eq. 13 / 23; extension: Alg. 3-5, Eq. 21 / 24 (Sec. IV-A)")
    add("--epochs", number(int, 1), "training epochs (Sec. IV-A)")
    add("--iters", number(int, 1), "training steps, instead of --epochs x (normal images // batch) (not in the paper)")
    add("--batch-size", number(int, 2), "N images per step, 2N views (not in the paper: AMDIM's, which ITAD follows)")
    add("--lr", number(float, 0, low_open=True), "Adam's learning rate (Sec. IV-A)")
    add("--beta", number(float, 0), "entropy weight, Eq. 13 / Alg. 1 line 19; 0 = none (Sec. IV-B, Fig. 1-3)")
    add("--entropy", ["l1", "l2"], "bound ||z||_q: l1 = Laplace (Eq. 17), l2 = Gaussian (Eq. 16) (Table I)")
    add("--entropy-reduce", ["sum", "mean"], "L_entropy: sum = ||z||_q (Alg. 1 line 18); mean = ||z||_q / d^(1/q)")
    add("--mi", ["nce", "jsd"], "InfoNCE (Eq. 18, Alg. 1) or Jensen-Shannon (Eq. 28) (Table I)")
    add("--c2", number(float, 0, low_open=True), "soft-clipping bound c2 (Alg. 1 input)")
    add("--bn-stats", ["train", "test"], "the codes' BatchNorm statistics when scoring: test = re-estimated on the "
        "test images, train = training's; auroc_<other>bn: the other (not in the paper: AMDIM's evaluation code)")
    p.add_argument("--table2", action="store_true", help="also Table II's scores, Eq. 22 (auroc_rand: 2 more passes) "
                   "and Eq. 29 (auroc_mc: 2 H); without: Eq. 23 / 24 alone (Table III; Sec. IV-C, after Table II)")
    add("--mc-samples", number(int, 1), f"with --table2: H, the augmented pairs of Eq. 29 (Sec. IV-D; digits: "
        f"{DIGITS['mc_samples']}, not in the paper)")
    for key, what in (("ndf", "encoder base width"), ("nrkhs", "code size d"), ("ndepth", "layers per ResBlock")):
        add("--" + key, number(int, 1), f"{what} (Table IV: {PAPER[key]}; digits: {DIGITS[key]}, not in the paper)")
    add("--local-size", [5, 7], "extension: f_local, 5 = Table IV's 5x5 'provides f_local' block; 7 = the block "
        "before it (not in the paper: AMDIM's second)")
    add("--curve-every", number(int, 0), "every K steps (monitoring only) the test AUROC of Eq. 23 / 24 under both "
        "BatchNorm statistics, mean ||z||, dims_alive: printed, JSON 'curve'; 0 = off (Sec. IV-B, Fig. 2)")
    output_flags(p, "scores (Eq. 23 / 24), scores_trainbn or scores_testbn (the other statistics), with --table2 "
                 "scores_rand (Eq. 22), scores_mc (Eq. 29)", "the trained encoder with its training BatchNorm buffers, "
                 "every setting and --bn-stats", "; Eq. 22 / 29 continue from the saving run's random state")
    args = parse(p, argv, defaults, TRAINING)
    for key, applies, why in (
            ("mc-samples", args.table2, "sets H of Eq. 29, a Table II score that only --table2 computes. Add --table2"),
            ("local-size", args.model == "extension", "picks the extension model's f_local (Alg. 3), and --model base "
             "has no local features. Add --model extension")):
        if key.replace("-", "_") in args.given and not applies:
            p.error(f"--{key} {why}, or drop --{key}")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    with exit_codes():
        set_seed(args.seed)
        model = load(args.load_model, args.device) if args.load_model else None
        saving_run(args, model.config if model else None)       # its seed draws the split of unsplit data
        data = prepare(args.dataset, args.normal, args.data_root, args.seed)
        x_train, x_test, y_test = data["x_train"], data["x_test"], data["y_test"]
        h, rand = (args.mc_samples, True) if args.table2 else (0, False)     # Table II's scores only when asked
        (name, normal_text), shape = run_name(args.dataset, data["normal"]), tuple(x_test.shape[1:])
        cfg = {k: getattr(args, k) for k in TRAINING + ("bn_stats",)} if model is None else {
            **dict.fromkeys(TRAINING), **model.config, "c2": model.c2, "bn_stats": args.bn_stats or model.bn_stats}
        if model is None:                                  # a default batch larger than the training set is fitted
            cfg["batch_size"] = fit_batch(args.batch_size, len(x_train), "batch_size" in args.given, say,
                                          "normal training images")
        else:                                              # --load-model: its input shape, its random state
            check_input_shape(model.input_shape, shape, args.load_model, name)
            say(loaded_note(args.load_model, model.config)
                + ("; the Eq. 22 / 29 augmentations continue from its random state" if model.rng else ""))
            restore_rng(model, args.device)
        if data["source"]:
            say(f"itad: read {data['source']}" + ("" if args.load_model else "; the paper's values where not given"))
        say(f"itad: model={cfg['model']} dataset={name} normal={normal_text} train={len(x_train)} test={len(x_test)} "
            f"(anomalies {int(y_test.sum())}) mi={cfg['mi']} entropy={cfg['entropy']} ({cfg['entropy_reduce']}) "
            f"beta={cfg['beta']} bn_stats={cfg['bn_stats']} lr={cfg['lr']} batch={cfg['batch_size']} "
            f"ndf={cfg['ndf']} nrkhs={cfg['nrkhs']} ndepth={cfg['ndepth']}"
            + (f" local={cfg['local_size']}" if cfg["model"] == "extension" else "") + f" device={args.device}")
        say(f"scoring: {3 + 2 * rand + 2 * h} passes over the {len(x_test)} test images (BatchNorm statistics 1, "
            f"Eq. 23 / 24 under both statistics 2" + (f", Eq. 22 2, Eq. 29 2 x {h}" if rand else "") + ")"
            + ("; each curve point 3 more" if cfg["curve_every"] and model is None else ""))
        if model is None:
            model = fit(x_train, **cfg, x_test=x_test, y_test=y_test, device=args.device, log=say)
            cfg.update(model.config)                       # iters resolved
        timing, info = {}, model.info or {"iters": cfg["iters"], "train_seconds": None, "curve": []}
        scores, metrics = evaluate(model, x_test, y_test, cfg["bn_stats"], rand, h, cfg["c2"], log=say, timing=timing)
        result = {"method": "itad", "dataset": name, "normal": normal_text, "seed": args.seed,   # auroc_<other>bn:
                  **{k: v for k, v in metrics.items() if k.startswith("auroc")}, "scores": ",".join(scores),
                  **{k: cfg[k] for k in ("model", "mi", "entropy", "entropy_reduce")}, "code_norm": "affine",
                  "c1": "sqrt", "bn_stats": cfg["bn_stats"], "beta": cfg["beta"],   # *_end: only when trained here
                  **{k: round(info[k], 4) for k in (f"{cfg['mi']}_end", "entropy_end") if k in info},
                  **{k: metrics[k] for k in ("znorm_normal", "znorm_anomaly", "z_spread", "dims_alive")},
                  "iters": info["iters"], "batch_size": cfg["batch_size"]}
        run = {"loaded_from": args.load_model} if args.load_model else dict(dataset=args.dataset, normal=normal_text,
               seed=args.seed, device=args.device.type, values_of="digits" if args.dataset == "digits" else "paper")
        config = {**cfg, "table2": rand, "mc_samples": h, "input_shape": list(shape), **run}
        speed = (model.info and info["iters"] * cfg["batch_size"], info["train_seconds"], len(x_test), timing["ori"])
        return finish(args, argv, result, config, {("main" if k == "ori" else k): s for k, s in scores.items()},
                      y_test, data["index"], lambda path: save(model, path, config), speed,
                      extra={"curve": info["curve"]} if info["curve"] else None)


if __name__ == "__main__":
    main()
