"""Deep Unsupervised Image Anomaly Detection: An Information Theoretic Framework.
Fei Ye, Huangjie Zheng, Chaoqin Huang, Ya Zhang, arXiv:2012.04837 (2020) / ICIP 2021.

The paper writes anomaly detection as maximising the distance between the joint distributions p(x, z) of
normal and anomalous data and, assuming the two are separable in the latent space, lower-bounds that
objective by max I(x, z) - beta * H(z) (Eq. 13) over normal data only: keep the information about the
image in its code while compressing the code. I(x, z) is estimated contrastively (InfoNCE between two
augmented views of each image, Eq. 18) and H(z) is bounded by the cross-entropy with a fixed reference
density, which for a Laplace reference is the L1 norm of the code and for a Gaussian the L2 norm
(Eq. 15-17, 19). A test image is normal when its code has a high critic value with itself (Eq. 23).

What this file reproduces
    The base model (Alg. 1 training, Alg. 2 scoring) and the local-DIM extension model (Alg. 3-5, encoder
    of Table IV) under the one-class protocol; the ablations of Table I (--mi jsd: Jensen-Shannon estimator
    Eq. 28; --entropy l1|l2; --beta 0) and the alternative scores of Table II (--score rand, Eq. 22;
    --score mc, Eq. 29). Not reproduced: the ImageNet encoder of Table V (no ImageNet loader).

Equation map
    Eq. (13) objective max I(x,z) - beta H(z) as the loss L = -I + beta E||z||_q .... base_loss(), extension_loss()
    Eq. (15)-(17), (19) entropy bound E||z||_q (q=1 Laplace, q=2 Gaussian) ......... entropy_bound()
    Eq. (18) InfoNCE over the 2N views, self-pairs excluded (Alg. 1) ................. nce_loss()
    Alg. 1 s_ij = z_i^T z_j, soft clip c2 tanh(s / (c1 c2)) .......................... clipped_similarity()
    Alg. 3 global-local similarity, summed over spatial positions ................... global_local_similarity()
    Alg. 3 / 4 global-local InfoNCE across views .................................... nce_loss_global_local()
    Eq. (28) Jensen-Shannon MI estimator (Table I ablation, --mi jsd) ................ jsd_loss(), jsd_loss_global_local()
    Eq. (22) / (23) / (29) normal scores: rand pair / self / Monte-Carlo (Alg. 2, 5) . normal_scores()
    Eq. (24) extension score sim(g, g) + sim(g, l) (Alg. 5) ........................... pair_score()
    Table IV AMDIM-style encoder, global 1x1 and projected local 7x7 features ......... AmdimEncoder, LocalProjection
    SimCLR/AMDIM augmentation, batched with per-sample parameters ..................... draw_augmentation(), augment()

Choices where the paper (or the text this file was written from) is silent
    - c1 of the soft clipping: the paper calls it "the size of z"; AMDIM, where the clipping comes from,
      divides the dot product by sqrt(dim z). Default --clip-scale sqrt (AMDIM's code, which the paper
      cites for the clipping and whose c2 = 20 it uses): with c1 = dim z the logits of a 1024-d code are
      32x smaller still. --clip-scale dim is the paper's literal wording.
    - Base encoder: the ResNet-18 of common.py (3x3 stem, 32x32) at --width (64 = the standard 512-d
      network), followed by a SimCLR-style projection head Linear-BN-ReLU-Linear to --z-dim (128).
    - Code normalisation: both encoders end in a BatchNorm, as AMDIM's encoder does (--code-norm affine);
      --code-norm fixed drops its learnable scale, --code-norm none the layer itself.
    - Scale of the entropy term (OPEN QUESTION, the paper's text was not available here): the default is the
      printed E||z||_q, summed over the code's dimensions; --entropy-reduce mean divides it by d^(1/q). With
      either, beta = 20 collapsed the code in our CPU runs with --code-norm affine and none (fixed, whose
      BatchNorm pins each dimension's batch variance, was not measured). The reason: near z = 0 the NCE gain of
      the clipped dot-product critic grows like r^2 / c1 in the code's scale r while the L1 cost grows like beta
      r, so z = 0 is always a local minimum, and with beta = 20 the largest possible NCE gain, log(2N - 1), is
      smaller than the L1 cost of a code large enough to reach it (estimate for a dense code, d = 128, c1 =
      sqrt(d): logits of ~5 need ||z||_2 ~ 7.5, whose L1 cost at beta 20 is ~1700 summed or ~13 per dimension,
      against log 127 = 4.8 for N = 64). Measured (Fashion-MNIST class 0, 300 steps of 64, --width 8, seed 0;
      NCE at chance = log 127 = 4.84; AUROC of Eq. 23 self / Eq. 22 rand): beta 20 with affine+sum NCE 4.84,
      0.31 / 0.43; affine+mean 4.86, 0.36 / 0.51; none+sum 4.84, 0.34 / 0.43; none+mean 4.84, 0.37 / 0.40; beta
      0.1 none+sum 4.84, 0.40 / 0.46; beta 0.01 none+sum 3.38, 0.51 / 0.55; beta 1 none+mean 3.31, 0.45 / 0.50;
      beta 0 none 3.17, 0.44 / 0.52. So at this budget the self score (larger = normal, Eq. 23) ranks
      Fashion-MNIST class 0 below chance whenever the code collapses: the entropy term shrinks the codes of the
      training (normal) images most, so anomalies keep the larger codes (Toll's "black hole" effect; ranked the
      other way the same score is better than chance: 0.69 for class 0 here, 0.95 for class 1 in the cpu sweep,
      whose ten-class mean is 0.385, i.e. 0.615 reversed). When the NCE term does learn, the self score is near
      chance: 2000 steps, beta 0.01, none+sum reached NCE 1.42 and AUROC 0.48 / 0.53. Whether the paper scales
      the terms differently (e.g. NCE summed over the batch) or ranks the other way could not be checked here;
      the script keeps the score as Eq. (23) states it (larger = normal).
    - Extension local features: the 7x7 map (output of the second stride-2 block), as DIM's local
      infomax; the table marks one intermediate block, and this file was written without the table at
      hand: --local-size 5 takes the 5x5 map instead. phi is AMDIM's 1x1-conv residual MLP with BN.
      Encoder blocks without BN (AMDIM's default use_bn=0), conv2 of each residual block zero-initialised
      (AMDIM's fixup-style init).
    - Global-local NCE: for the global code of view a, the positive is the local map of the same image in
      view b and the negatives are the local maps of the other N-1 images in view b (AMDIM's g2l task).
      Extension self/random scores clip sim(g,l) too.
    - --mi jsd: the critic T of Eq. (28) is the same clipped similarity (DIM's separable critic), positives
      the paired views, negatives every other non-self pair.
    - Augmentation: AMDIM's torchvision policy (random resized crop scale 0.3-1, ratio 0.7-1.4; horizontal
      flip p=0.5; colour jitter 0.4/0.4/0.4/0.2 with p=0.8; grayscale p=0.25) done batched on the device.
      The jitter ops run in a fixed order (torchvision permutes them) and the hue shift is a rotation of
      the YIQ chroma plane (torchvision goes through HSV). On grayscale data saturation/hue/grayscale are
      no-ops.
    - 28x28 datasets are zero-padded to 32x32 (the AMDIM encoder's input size); grayscale repeated to 3
      channels; inputs in [-1, 1].
    - Epochs: --epochs 400 (paper); --iters overrides it (iters = epochs x ceil(n_train / batch)).
      --batch-size 200 chosen. No model selection: the final model is tested (no labels used).

Run:  python itad.py --dataset mnist --normal 8
      python itad.py --dataset mnist --normal 8 --model extension --ndf 32 --nrkhs 256 --ndepth 3
"""
import argparse
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

from common import DataError, IMAGE_DATASETS, ResNet18, load_images, one_class_split, parse_normal, to_minus1_1

# the paper's values: beta, entropy norm q, learning rate, epochs, clipping constant c2 (Alg. 1)
PAPER = dict(beta=20.0, entropy="l1", lr=2e-4, epochs=400, c2=20.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="ITAD: information-theoretic anomaly detection (Ye et al.)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=list(IMAGE_DATASETS),
                   help="one-class image benchmarks: mnist, fashion-mnist, cifar10, cifar100 (20 superclasses), "
                        "svhn; digits = scikit-learn's digits, an offline install check")
    p.add_argument("--normal", default="0",
                   help="normal class, or a comma list for multi-class normal data (the paper: one class)")
    p.add_argument("--data-root", default=None,
                   help="datasets in torchvision's layout (default: $AD_DATA_ROOT, else ./data)")
    p.add_argument("--seed", type=int, default=0, help="random seed: init, batches, augmentations")
    p.add_argument("--device", default="auto", help="auto = cuda if available, else cpu")
    p.add_argument("--model", default="base", choices=["base", "extension"],
                   help="base: Alg. 1-2 (global code only); extension: Alg. 3-5 (global + local, Table IV)")
    p.add_argument("--epochs", type=int, default=PAPER["epochs"], help="training epochs (the paper: 400)")
    p.add_argument("--iters", type=int, default=None,
                   help="optimisation steps; overrides --epochs (default: epochs x ceil(n_train / batch))")
    p.add_argument("--batch-size", type=int, default=200,
                   help="N images per batch, 2N views (not in the text this file follows: 200 chosen)")
    p.add_argument("--lr", type=float, default=PAPER["lr"], help="Adam learning rate (the paper: 2e-4)")
    p.add_argument("--beta", type=float, default=PAPER["beta"],
                   help="weight of the entropy bound (Eq. 13; the paper: 20); 0 = no entropy term (Table I; "
                        "the paper reports it fails to converge)")
    p.add_argument("--entropy", default=PAPER["entropy"], choices=["l1", "l2"],
                   help="entropy bound E||z||_q: l1 = Laplace reference (the paper's choice), l2 = Gaussian "
                        "(Eq. 15-17, Table I)")
    p.add_argument("--mi", default="nce", choices=["nce", "jsd"],
                   help="mutual-information estimator: InfoNCE (Eq. 18) or Jensen-Shannon (Eq. 28, Table I)")
    p.add_argument("--c2", type=float, default=PAPER["c2"], help="soft-clipping bound c2 (Alg. 1: 20)")
    p.add_argument("--clip-scale", default="sqrt", choices=["sqrt", "dim"],
                   help="c1 in c2 tanh(s / (c1 c2)): sqrt = sqrt(dim z) as in AMDIM (default, see docstring); "
                        "dim = dim z, the paper's wording")
    p.add_argument("--score", default="self", choices=["self", "rand", "mc"],
                   help="normal score: self = sim(z, z) of the clean image (Eq. 23 / 24, the paper's choice); "
                        "rand = one random augmented pair (Eq. 22); mc = mean over --mc-samples pairs (Eq. 29)")
    p.add_argument("--mc-samples", type=int, default=100, help="H, augmented pairs for --score mc (Eq. 29; the paper: 100)")
    p.add_argument("--width", type=int, default=64,
                   help="base model: ResNet-18 width (64 = 512-d features; the encoder is our choice, see docstring)")
    p.add_argument("--z-dim", type=int, default=128,
                   help="base model: size of z after the projection head (not given; SimCLR's 128 chosen)")
    p.add_argument("--ndf", type=int, default=128, help="extension encoder base width (Table IV: 128)")
    p.add_argument("--nrkhs", type=int, default=1024, help="extension code size of g and phi(l) (Table IV: 1024)")
    p.add_argument("--ndepth", type=int, default=10, help="residual layers per extension block (Table IV: 10)")
    p.add_argument("--local-size", type=int, default=7, choices=[7, 5],
                   help="extension: spatial size of the local feature map (7 = after the second stride-2 "
                        "block; our reading of Table IV, see docstring)")
    p.add_argument("--code-norm", default="affine", choices=["affine", "fixed", "none"],
                   help="last layer of the codes z, g, phi(l) (the paper is silent; see docstring): affine = "
                        "BatchNorm with learnable scale and shift, as AMDIM's encoder ends (default); fixed = "
                        "BatchNorm without them; none = the linear output itself")
    p.add_argument("--entropy-reduce", default="sum", choices=["sum", "mean"],
                   help="entropy bound per code: sum = ||z||_q, the printed E||z||_q (default); mean = ||z||_q / "
                        "d^(1/q), i.e. mean |z_j| for L1 (a per-dimension scale; not in the paper, see docstring)")
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


# ------------------------------------------------------------------------------------------ augmentation

def draw_augmentation(n, device, generator=None):
    """Per-sample random parameters of AMDIM's policy (crop, flip, colour jitter, grayscale)."""
    u = lambda *shape: torch.rand(*shape, device=device, generator=generator)
    area = 0.3 + 0.7 * u(n)                                                    # crop area fraction in [0.3, 1]
    log_ratio = math.log(0.7) + (math.log(1.4) - math.log(0.7)) * u(n)         # aspect ratio in [0.7, 1.4]
    w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)                         # crop width / image width
    h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    cx = (1 - w) * (2 * u(n) - 1)                                              # crop centre, grid units [-1, 1]
    cy = (1 - h) * (2 * u(n) - 1)
    flip = torch.where(u(n) < 0.5, -1.0, 1.0)
    jitter = u(n) < 0.8                                                        # RandomApply(ColorJitter, p=0.8)
    one = torch.ones(n, device=device)
    return dict(w=w, h=h, cx=cx, cy=cy, flip=flip,
                brightness=torch.where(jitter, 0.6 + 0.8 * u(n), one),         # factor in [0.6, 1.4]
                contrast=torch.where(jitter, 0.6 + 0.8 * u(n), one),
                saturation=torch.where(jitter, 0.6 + 0.8 * u(n), one),
                hue=torch.where(jitter, 0.4 * u(n) - 0.2, 0 * one),            # shift in [-0.2, 0.2] turns
                gray=u(n) < 0.25)                                              # RandomGrayscale(p=0.25)


def _gray(x):
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # (B, 1, H, W)


def augment(x, prm):
    """Apply draw_augmentation's parameters to x (B, 3, H, W) in [0, 1]; returns the same shape in [0, 1]."""
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = prm["w"] * prm["flip"]
    theta[:, 0, 2] = prm["cx"]
    theta[:, 1, 1] = prm["h"]
    theta[:, 1, 2] = prm["cy"]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # crop+resize+flip
    v = lambda t: t.view(b, 1, 1, 1)
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
    m = torch.linalg.inv(yiq) @ rot @ yiq                                      # (B, 3, 3)
    x = torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 1)
    x = torch.where(v(prm["gray"]), _gray(x).expand_as(x), x)
    return x


def two_views(x):
    """(N, 3, H, W) in [0, 1] -> (2N, 3, H, W) in [-1, 1], rows 2k and 2k+1 two views of image k (Alg. 1)."""
    x2 = x.repeat_interleave(2, dim=0)
    return to_minus1_1(augment(x2, draw_augmentation(len(x2), x.device)))


# ------------------------------------------------------------------------------------------ models

def code_norm_layer(kind, n, dims):
    """The code's last layer (--code-norm): none = identity; affine / fixed = BatchNorm with / without a
    learnable scale and shift (dims 1: a vector code, 2: a feature map)."""
    if kind == "none":
        return nn.Identity()
    return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(n, affine=kind == "affine")


class BaseModel(nn.Module):
    """Base model: ResNet-18 (common.py) -> projection head -> z, ending in BatchNorm (see --code-norm)."""

    def __init__(self, width=64, z_dim=128, code_norm="affine"):
        super().__init__()
        self.encoder = ResNet18(in_channels=3, width=width)
        d = self.encoder.out_dim
        self.head = nn.Sequential(nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(),
                                  nn.Linear(d, z_dim), code_norm_layer(code_norm, z_dim, 1))
        self.z_dim = z_dim

    def forward(self, x):
        return self.head(self.encoder(x))                    # (B, 3, 32, 32) -> (B, 8w) -> (B, z_dim)


class ConvResNxN(nn.Module):
    """AMDIM residual layer: conv kxk (stride) -> ReLU -> conv 1x1, plus an avg-pool (padded) shortcut."""

    def __init__(self, n_in, n_out, k, stride):
        super().__init__()
        self.n_in, self.n_out, self.k, self.stride = n_in, n_out, k, stride
        self.conv1 = nn.Conv2d(n_in, n_out, k, stride, 0, bias=False)
        self.conv2 = nn.Conv2d(n_out, n_out, 1, 1, 0, bias=False)
        nn.init.zeros_(self.conv2.weight)                    # AMDIM's fixup-style init of the residual branch
        self.conv3 = nn.Conv2d(n_in, n_out, k, stride, 0, bias=True) if n_out < n_in else None

    def forward(self, x):
        h = self.conv2(F.relu(self.conv1(x)))
        if self.conv3 is not None:
            return h + self.conv3(x)
        short = F.avg_pool2d(x, self.k, self.stride, 0)
        return h + F.pad(short, (0, 0, 0, 0, 0, self.n_out - self.n_in))


def conv_res_block(n_in, n_out, k, stride, depth):
    """AMDIM ConvResBlock: one strided ConvResNxN, then depth-1 ConvResNxN 1x1 layers."""
    return nn.Sequential(ConvResNxN(n_in, n_out, k, stride), *[ConvResNxN(n_out, n_out, 1, 1) for _ in range(depth - 1)])


class LocalProjection(nn.Module):
    """phi: AMDIM's 'fake RKHS' 1x1-conv residual MLP with BN on the output, on the local map."""

    def __init__(self, n_in, n_out, code_norm="affine"):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 1, bias=False)
        self.conv2 = nn.Conv2d(n_out, n_out, 1, bias=False)
        nn.init.zeros_(self.conv2.weight)
        self.shortcut = nn.Conv2d(n_in, n_out, 1, bias=True)
        self.bn = code_norm_layer(code_norm, n_out, 2)

    def forward(self, x):
        return self.bn(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class AmdimEncoder(nn.Module):
    """Table IV: AMDIM's 32x32 encoder. Returns g (B, nrkhs) and phi(l) (B, nrkhs, s, s), s = --local-size."""

    def __init__(self, ndf=128, nrkhs=1024, ndepth=10, local_size=7, code_norm="affine"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, ndf, 3, 1, 0), nn.ReLU(),               # (B, ndf, 30, 30)
                                  ConvResNxN(ndf, ndf, 1, 1))                           # (B, ndf, 30, 30)
        self.block1 = conv_res_block(ndf, 2 * ndf, 4, 2, ndepth)                        # (B, 2ndf, 14, 14)
        self.block2 = conv_res_block(2 * ndf, 4 * ndf, 2, 2, ndepth)                    # (B, 4ndf, 7, 7)
        self.block3 = conv_res_block(4 * ndf, 4 * ndf, 3, 1, ndepth)                    # (B, 4ndf, 5, 5)
        self.block4 = conv_res_block(4 * ndf, 4 * ndf, 3, 1, ndepth)                    # (B, 4ndf, 3, 3)
        self.top = nn.Sequential(ConvResNxN(4 * ndf, nrkhs, 3, 1),                      # (B, nrkhs, 1, 1)
                                 code_norm_layer(code_norm, nrkhs, 2))
        self.local_size = local_size
        self.phi = LocalProjection(4 * ndf, nrkhs, code_norm)
        self.z_dim = nrkhs

    def forward(self, x):
        h7 = self.block2(self.block1(self.stem(x)))
        h5 = self.block3(h7)
        g = self.top(self.block4(h5)).flatten(1)                                        # (B, nrkhs)
        l = self.phi(h7 if self.local_size == 7 else h5)                                # (B, nrkhs, s, s)
        return g, l


# ------------------------------------------------------------------------------------------ losses

def clipped_similarity(a, b, c1, c2):
    """Alg. 1: s_ij = a_i^T b_j, soft-clipped to (-c2, c2) by s' = c2 tanh(s / (c1 c2))."""
    return c2 * torch.tanh(a @ b.t() / (c1 * c2))


def global_local_similarity(g, l, c1, c2):
    """Alg. 3: s_ij = sum over positions p of g_i^T phi(l_j)[p], soft-clipped as in Alg. 1."""
    s = g @ l.flatten(2).sum(dim=2).t()                      # (B, C) x (C, B): the sum over p commutes
    return c2 * torch.tanh(s / (c1 * c2))


def nce_loss(s):
    """Eq. (18) / Alg. 1 on the (2N, 2N) clipped similarities of 2N views (rows 2k, 2k+1 paired):
    l(i, j) = -log(exp s^_ij / sum_{k != i} exp s^_ik), s^ = s' - max; L = (1/2N) sum_k [l(2k-1,2k) + l(2k,2k-1)]."""
    n2 = s.shape[0]
    s = s.masked_fill(torch.eye(n2, dtype=torch.bool, device=s.device), float("-inf"))   # k != i
    s_hat = s - s.max(dim=1, keepdim=True).values.detach()                              # subtract the max
    log_p = s_hat - torch.logsumexp(s_hat, dim=1, keepdim=True)
    i = torch.arange(n2, device=s.device)
    return -log_p[i, i ^ 1].mean()                                                       # partner of 2k is 2k+1


def nce_loss_global_local(s):
    """Alg. 3 / 4: (N, N) similarities of global codes of one view (rows) and local maps of the other view
    (columns); the positive of row i is column i, the other N-1 columns are negatives."""
    s_hat = s - s.max(dim=1, keepdim=True).values.detach()
    log_p = s_hat - torch.logsumexp(s_hat, dim=1, keepdim=True)
    return -log_p.diagonal().mean()


def jsd_loss(s, pos):
    """Eq. (28): -I_JSD = -(E_pos[-softplus(-T)] - E_neg[softplus(T)]) with the clipped similarity as
    critic T; pos marks positive pairs, negatives are all other pairs off the diagonal."""
    neg = ~pos & ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    return -((-F.softplus(-s[pos])).mean() - F.softplus(s[neg]).mean())


def jsd_loss_global_local(s):
    pos = torch.eye(len(s), dtype=torch.bool, device=s.device)
    return -((-F.softplus(-s[pos])).mean() - F.softplus(s[~pos]).mean())


def entropy_bound(z, q, reduce="sum"):
    """Eq. (15)-(17), (19): H(z) <= E||z||_q up to constants (q=1 Laplace, q=2 Gaussian reference);
    estimated as (1/2N) sum_k ||z_k||_q over the views (a local map is flattened first). reduce="mean"
    (--entropy-reduce) uses the norm per dimension, ||z_k||_q / d^(1/q): mean |z_kj| for q = 1."""
    z = z.flatten(1)
    norm = z.norm(p=q, dim=1)                                # (2N, d) -> ||z_k||_q
    if reduce == "mean":
        norm = norm / z.shape[1] ** (1.0 / q)
    return norm.mean()                                       # (1/2N) sum_k


def pair_partner_mask(n2, device):
    i = torch.arange(n2, device=device)
    return i.unsqueeze(1) ^ 1 == i.unsqueeze(0)              # (2N, 2N) True at (2k, 2k+1) and (2k+1, 2k)


def base_loss(z, args, c1):
    """Alg. 1: L = L_nce + beta L_entropy on z (2N, d) of 2N views."""
    s = clipped_similarity(z, z, c1, args.c2)
    mi = nce_loss(s) if args.mi == "nce" else jsd_loss(s, pair_partner_mask(len(z), z.device))
    ent = entropy_bound(z, args.q, args.entropy_reduce)
    return mi + args.beta * ent, mi, ent


def extension_loss(g, l, args, c1):
    """Alg. 4: L = L_gvg + 1/2 [L_nce(g_2k, l_2k-1) + L_nce(g_2k-1, l_2k)] + beta (1/2N) sum (||g||_q + ||l||_q)."""
    s_gg = clipped_similarity(g, g, c1, args.c2)
    g_a, g_b, l_a, l_b = g[0::2], g[1::2], l[0::2], l[1::2]                # view 1 and view 2 of each image
    s_ba = global_local_similarity(g_b, l_a, c1, args.c2)                  # g_2k vs l_2k-1
    s_ab = global_local_similarity(g_a, l_b, c1, args.c2)                  # g_2k-1 vs l_2k
    if args.mi == "nce":
        gvg, gvl = nce_loss(s_gg), 0.5 * (nce_loss_global_local(s_ba) + nce_loss_global_local(s_ab))
    else:
        gvg = jsd_loss(s_gg, pair_partner_mask(len(g), g.device))
        gvl = 0.5 * (jsd_loss_global_local(s_ba) + jsd_loss_global_local(s_ab))
    ent = entropy_bound(g, args.q, args.entropy_reduce) + entropy_bound(l, args.q, args.entropy_reduce)
    return gvg + gvl + args.beta * ent, gvg + gvl, ent


def check_finite(value, where):
    if not math.isfinite(value):
        raise FloatingPointError(f"training diverged: {where} is {value}; try a smaller --lr")


# ------------------------------------------------------------------------------------------ training

def train(model, x_train, args, c1, log=print):
    """Alg. 1 (base) / Alg. 4 (extension): Adam, --iters steps; each step a random batch of N normal
    images (without replacement within the batch), two augmented views each."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    n, t0, train_time = len(x_train), time.time(), 0.0
    every = max(1, args.iters // 20)
    model.train()
    for it in range(1, args.iters + 1):
        ts = time.time()
        xb = x_train[torch.randperm(n, device=x_train.device)[:args.batch_size]]       # Alg. 1, line 2
        views = two_views(xb)                                                          # Alg. 1, line 3: t, t' ~ T
        if args.model == "base":
            loss, mi, ent = base_loss(model(views), args, c1)                          # Alg. 1, lines 4-8
        else:
            loss, mi, ent = extension_loss(*model(views), args, c1)                    # Alg. 4
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()                                                                     # Alg. 1, line 9
        loss_value = loss.item()
        train_time += time.time() - ts
        check_finite(loss_value, f"the loss at iteration {it}")
        if it % every == 0 or it == args.iters:
            log(f"iter {it}/{args.iters} loss={loss_value:.4f} {args.mi}={mi.item():.4f} "
                f"entropy={ent.item():.4f} elapsed={time.time() - t0:.1f}s", flush=True)
    return train_time


# ------------------------------------------------------------------------------------------ scoring

def pair_score(model, xa, xb, args, c1):
    """Critic value of two inputs of the same images, per image: base sim(z_a, z_b) (Eq. 22 / 23);
    extension sim(g_a, g_b) + sim(g_a, l_b) (Eq. 24). Diagonal of the clipped similarities."""
    if args.model == "base":
        za = model(xa)
        zb = za if xb is xa else model(xb)
        return args.c2 * torch.tanh((za * zb).sum(1) / (c1 * args.c2))
    ga, la = model(xa)
    gb, lb = (ga, la) if xb is xa else model(xb)
    gg = args.c2 * torch.tanh((ga * gb).sum(1) / (c1 * args.c2))
    gl = args.c2 * torch.tanh((ga * lb.flatten(2).sum(2)).sum(1) / (c1 * args.c2))
    return gg + gl


@torch.no_grad()
def normal_scores(model, x, args, c1, kind, chunk=500):
    """Alg. 2 / 5, larger = more normal. x: (M, 3, 32, 32) in [0, 1].
    self: Eq. (23) / (24) on the un-augmented image; rand: Eq. (22), one random augmented pair;
    mc: Eq. (29), the mean of --mc-samples random augmented pairs."""
    model.eval()
    out = []
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        if kind == "self":
            clean = to_minus1_1(xb)
            out.append(pair_score(model, clean, clean, args, c1))
            continue
        h = 1 if kind == "rand" else args.mc_samples
        total = torch.zeros(len(xb), device=x.device)
        for _ in range(h):
            va = to_minus1_1(augment(xb, draw_augmentation(len(xb), x.device)))
            vb = to_minus1_1(augment(xb, draw_augmentation(len(xb), x.device)))
            total += pair_score(model, va, vb, args, c1)
        out.append(total / h)
    model.train()
    return torch.cat(out).cpu().numpy()


def auroc(normal_score, is_anomaly):
    """AUROC with anomaly = 1 and the anomaly score = -normal score."""
    return roc_auc_score(is_anomaly.cpu().numpy(), -normal_score)


# ------------------------------------------------------------------------------------------ data

def prepare(args):
    """One-class split; images as (N, 3, 32, 32) in [0, 1] (grayscale repeated, 28x28 zero-padded)."""
    x_tr, y_tr, x_te, y_te = load_images(args.dataset, args.data_root)
    normal = parse_normal(args.normal, IMAGE_DATASETS[args.dataset][0])
    split = one_class_split(x_tr, y_tr, x_te, y_te, normal)

    def to32(x):
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)                                               # (N, 1, H, W) -> (N, 3, H, W)
        pad = (32 - x.shape[-1]) // 2
        return F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x                    # 28 -> 32

    return to32(split["train"]), to32(split["test"][0]), split["test"][1], normal


# ------------------------------------------------------------------------------------------ main

def run(args, log=print):
    t_start = time.time()
    for name in ("epochs", "batch_size", "mc_samples", "width", "z_dim", "ndf", "nrkhs", "ndepth"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if args.iters is not None and args.iters < 1:
        raise DataError(f"--iters must be at least 1 (got {args.iters})")
    if args.batch_size < 2:
        raise DataError("--batch-size must be at least 2: contrastive negatives and batch normalisation need it")
    if args.beta < 0 or args.lr <= 0 or args.c2 <= 0:
        raise DataError("--beta must be >= 0, --lr and --c2 > 0")
    args.q = 1 if args.entropy == "l1" else 2
    set_seed(args.seed)
    device = pick_device(args.device)
    x_train, x_test, y_test, normal = prepare(args)
    if args.batch_size > len(x_train):
        raise DataError(f"--batch-size {args.batch_size} exceeds the {len(x_train)} normal training samples; "
                        f"pass a smaller --batch-size")
    if args.iters is None:
        args.iters = args.epochs * math.ceil(len(x_train) / args.batch_size)
    x_train, x_test, y_test = x_train.to(device), x_test.to(device), y_test.to(device)
    if args.model == "base":
        model = BaseModel(args.width, args.z_dim, args.code_norm)
    else:
        model = AmdimEncoder(args.ndf, args.nrkhs, args.ndepth, args.local_size, args.code_norm)
    model = model.to(device)
    c1 = math.sqrt(model.z_dim) if args.clip_scale == "sqrt" else float(model.z_dim)
    size = (f"width={args.width} z_dim={args.z_dim}" if args.model == "base"
            else f"ndf={args.ndf} nrkhs={args.nrkhs} ndepth={args.ndepth} local={args.local_size}")
    log(f"itad: model={args.model} dataset={args.dataset} normal={','.join(map(str, normal))} train={len(x_train)} "
        f"test={len(x_test)} (anomalies {int(y_test.sum())}) mi={args.mi} entropy={args.entropy} "
        f"({args.entropy_reduce}) beta={args.beta:g} code_norm={args.code_norm} "
        f"lr={args.lr:g} batch={args.batch_size} iters={args.iters} c1={c1:.3g} c2={args.c2:g} {size} "
        f"device={device}", flush=True)
    train_time = train(model, x_train, args, c1, log)
    ts = time.time()
    scores = normal_scores(model, x_test, args, c1, args.score)
    score_time = time.time() - ts
    if not np.isfinite(scores).all():
        raise FloatingPointError("the normal scores of the test set are not finite")
    result = {"method": "itad", "dataset": args.dataset, "normal": ",".join(map(str, normal)), "seed": args.seed,
              "auroc": round(auroc(scores, y_test), 4)}
    for kind in ("self", "rand"):                      # the other cheap scores of Table II, same model
        if kind != args.score:
            result[f"auroc_{kind}"] = round(auroc(normal_scores(model, x_test, args, c1, kind), y_test), 4)
    result.update({"model": args.model, "score": args.score, "mi": args.mi, "entropy": args.entropy,
                   "entropy_reduce": args.entropy_reduce, "code_norm": args.code_norm,
                   "beta": args.beta, "iters": args.iters, "batch_size": args.batch_size, "device": device.type,
                   "seconds": round(time.time() - t_start, 1),
                   "train_samples_per_s": round(args.iters * args.batch_size / max(train_time, 1e-9), 1),
                   "score_samples_per_s": round(len(x_test) / max(score_time, 1e-9), 1)})
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
