"""Anomaly Detection via Autoencoder Composite Features and NCE. Yalin Liao, Austin J. Brockmeier, arXiv:2502.01920
(2025).

Idea (Sec. 3, Fig. 1). Step 1: an autoencoder (AE) with batch normalisation before its latent and a loss that
decorrelates the latent is trained on normal data; an input x becomes the composite feature z = (z_l, z_e, z_c):
latent code, squared reconstruction error, cosine dissimilarity of x and its reconstruction. Step 2: a network
T_theta learns by noise-contrastive estimation (NCE) against a Gaussian fitted to the training features the log-ratio
of feature and noise density; adding the noise log-density back estimates -ln p_d(z), the anomaly score. CANCE adds
normal points whose (z_e, z_c) are replaced by artificially small values (Eq. 8) and scales the noise covariance by
a diagonal K >= 1 trained adversarially to T_theta (Eq. 7, 10).

Reproduces the ablation Error / LatNCE / CNCE / CANCE of Tables 1, 7, 8 (every run reports all four, on one AE;
Table 8: --normal 0,1), Table 5 (--normal 0,1,2,3,4,6,7,8,9), MNIST-C (Table 3, --dataset mnist-c), the ResNet-18 +
PCA features of Tables 4, 5, 9 (--features resnet18-pca) and the tabular sets of Table 6 (F1).

Python API (copy cance.py and common.py): model = fit(x_normal, ...) runs Steps 1 and 2 on (N, D) rows or (N, 1, 28,
28) / (N, 3, 32, 32) images in [0, 1]; score(model, x) -> numpy anomaly scores (higher = more anomalous); save(model,
path) / load(path) keep a fitted model (weights, feature moments, K, PCA, z-scoring of rows). fit calls:
    Sec. 3.2 BN directly before the latent ........................ build_autoencoder(), ConvAE, TabularAE
    Eq. (11) L = L_error + lambda L_cov; Eq. (12) L_cov ............ ae_loss(), covariance_loss()
    Sec. 3.2, Appendix A two-stage training; Appendix E selection .. train_autoencoder()
    Sec. 3.1 z = (z_l, z_e, z_c) .................................. composite_features(), ae_features()
    Sec. 3.2 ResNet-18 + PCA instead of the AE .................... resnet18_embeddings(), pca_features()
    Sec. 3.3 p_n = N(mu, Sigma); Eq. (13)-(14) batch-wise moments .. RunningMoments
    Appendix C mode m_z; Eq. (8) augmentation; Proposition 1 ...... lognormal_mode(), augment(); tests
    Sec. 3.4 p_nK = N(mu, K Sigma K), L_K, K = 1 + softplus(psi) ... NoiseDistribution
    Eq. (9) loss of T_theta; Eq. (10) psi step; Appendix E ........ nce_loss(), train_nce()
    Sec. 3.3 S_C(z) = -(T_theta(z) + ln nu p_nK(z)) ................ anomaly_score(), score()

Deviations, and choices where the paper is silent
    - No architectures are given: ConvAE (DCGAN/LSA-style convolutions 32-64-128, BN, LeakyReLU, sigmoid output),
      TabularAE (MLP D-128-64-d on z-scored rows), T_theta an MLP d-128-128-1 (SiLU) on z standardised with the
      training moments. Adam for the AE, lr 1e-3, batch 128 (--lr, --batch-size) and the phase lengths (images
      5000/2000/5000 steps for AE stage 1 / stage 2 / each NCE model, tabular 2000/1000/3000; --iters caps each).
    - L_error is Eq. (11) as printed (squared norm summed over the input, batch mean); Appendix A's "mean squared
      error" would weigh L_cov d0 times more. L_cov: unbiased batch covariance. Stage 2 trains the decoder on
      L_error alone (encoder and its BN statistics frozen).
    - Appendix E's selection: the validation loss every tenth of a phase; for NCE, Eq. (9) on the validation
      features (CANCE: augmented) against noise draws through the current L_K, all drawn once with seed + 1.
    - p_t of Eq. (8): location m_z and the training std, as the proof of Proposition 1 writes it; a point is
      augmented with probability 1/2, z_e and z_c together. K starts at psi = 0 (K = 1 + ln 2, --k-init); a psi step
      follows each theta step. Sec. 4.1 names only the augmentation as CANCE's addition: here LatNCE and CNCE keep
      the fixed noise N(mu, Sigma) and only CANCE learns K; each score adds back its own noise's log-density.
    - resnet18-pca: grey images repeated to 3 channels, resized to --image-size, ImageNet-normalised; PCA without
      whitening. Table 5's CANCE column is this variant (it sits in Sec. 4's ResNet-18 part).
    - Table 6's preparation is not settled (Sec. 4 cites DAGMM, DROCC, DPAD). Default --tabular-split goad (half the
      normal rows train; the rest and every anomaly test; F1 flags the top r = test anomaly ratio): every Table 6
      entry is attainable under it, while on drocc (DROCC's process_odds.py: every anomaly against as many normal
      rows; also reports DROCC's f1_drocc_rule) a random scorer's F1 of 0.5 exceeds Table 6's DAGMM 0.20 and DROCC
      0.32. fit() z-scores rows with the training rows (a constant column keeps std 1); latent 3 (Arrhythmia 8),
      lambda 0.3. Your own data (--dataset FILE.npz | FILE.csv | FOLDER): rows take Thyroid's values, a CSV is
      split by --tabular-split, an npz keeps its split (x_val unused: the hold-out is 20% of x_train).
    - MNIST-C: Sec. 4 does not say whether the 15 corruptions were pooled: --corruption all pools them. CIFAR-100
      (20 superclasses) and SVHN use CIFAR-10's latent and lambda; digits (offline check) and your own grey images
      (1x28x28) MNIST's; your own RGB images (3x32x32) CIFAR-10's.
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
from sklearn.decomposition import PCA
from sklearn.metrics import f1_score, roc_auc_score

from common import (DataError, IMAGE_DATASETS, TABULAR_DATASETS, fit_images, is_user_dataset, load_csv,
                    load_image_folder, load_images, load_mnist_c, load_npz, load_tabular, one_class_split, parse_normal)

# fit()'s keywords per dataset. Phase lengths and batch size are not in the paper (chosen).
IMAGES = dict(ae_iters=5000, decoder_iters=2000, nce_iters=5000, batch_size=128)
TABULAR = dict(ae_iters=2000, decoder_iters=1000, nce_iters=3000, batch_size=128)
PAPER = {
    "mnist":         dict(IMAGES, latent=6, lam=0.3),       # Appendix G
    "fashion-mnist": dict(IMAGES, latent=6, lam=0.3),       # Appendix I: as MNIST
    "cifar10":       dict(IMAGES, latent=64, lam=0.004),    # Appendix G
    "mnist-c":       dict(IMAGES, latent=10, lam=0.3),      # Sec. 4: "latent dimension from 6 to 10"
    "cifar100":      dict(IMAGES, latent=64, lam=0.004),    # not in the paper: CIFAR-10's values
    "svhn":          dict(IMAGES, latent=64, lam=0.004),    # not in the paper: CIFAR-10's values
    "digits":        dict(IMAGES, latent=6, lam=0.3, batch_size=64),   # offline install check: MNIST's values
    "thyroid":       dict(TABULAR, latent=3, lam=0.3),      # not in the paper: chosen
    "abalone":       dict(TABULAR, latent=3, lam=0.3),      # not in the paper: chosen
    "arrhythmia":    dict(TABULAR, latent=8, lam=0.3),      # not in the paper: chosen
}
USER_ROWS = {"rows": "thyroid", "grey": "mnist", "RGB": "cifar10"}   # your own data takes these rows' values
NU = 8                    # noise samples per data sample (Appendix E)
VAL_FRACTION = 0.2        # Appendix E
K_INIT = 1 + math.log(2)  # psi = 0 (not in the paper: chosen)
VARIANTS = ("latnce", "cnce", "cance")   # Sec. 4.1; "error" (z_e alone) needs no training
MNIST_C_CORRUPTIONS = ("shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate",
                       "brightness", "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges")


# ------------------------------------------------------------------------------------------ models

class ConvAE(nn.Module):
    """DCGAN/LSA-style convolutional AE for 28x28 or 32x32 images (the paper gives no architecture).
    Batch normalisation (no affine) sits directly before the latent (Sec. 3.2)."""

    def __init__(self, channels, side, latent):
        super().__init__()
        self.input_shape = (channels, side, side)
        k = 3 if side == 28 else 4            # 7 -> 4 (28x28) or 8 -> 4 (32x32) in the last conv
        lrelu = lambda: nn.LeakyReLU(0.2)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1), nn.BatchNorm2d(32), lrelu(),   # (B, 32, 14|16, 14|16)
            nn.Conv2d(32, 64, 4, 2, 1), nn.BatchNorm2d(64), lrelu(),         # (B, 64, 7|8, 7|8)
            nn.Conv2d(64, 128, k, 2, 1), nn.BatchNorm2d(128), lrelu(),       # (B, 128, 4, 4)
            nn.Flatten(), nn.Linear(128 * 16, latent),                       # (B, latent)
            nn.BatchNorm1d(latent, affine=False))                            # BN directly before the latent
        self.decoder = nn.Sequential(
            nn.Linear(latent, 128 * 16), nn.BatchNorm1d(128 * 16), nn.ReLU(), nn.Unflatten(1, (128, 4, 4)),
            nn.ConvTranspose2d(128, 64, k, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),   # (B, 64, 7|8, 7|8)
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),    # (B, 32, 14|16, 14|16)
            nn.ConvTranspose2d(32, channels, 4, 2, 1), nn.Sigmoid())               # (B, C, 28|32, 28|32)

    def forward(self, x):
        z = self.encoder(x)
        return self.decoder(z), z


class TabularAE(nn.Module):
    """MLP AE D-128-64-latent / latent-64-128-D (our choice), BN (no affine) directly before the latent."""

    def __init__(self, dim, latent):
        super().__init__()
        self.input_shape = (dim,)
        self.encoder = nn.Sequential(nn.Linear(dim, 128), nn.BatchNorm1d(128), nn.ReLU(),
                                     nn.Linear(128, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                     nn.Linear(64, latent), nn.BatchNorm1d(latent, affine=False))
        self.decoder = nn.Sequential(nn.Linear(latent, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                     nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, dim))

    def forward(self, x):
        z = self.encoder(x)
        return self.decoder(z), z


AE_SHAPES = "(N, D), (N, 1, 28, 28) or (N, 3, 32, 32)"


def build_autoencoder(input_shape, latent=6):
    """The AE for one input's shape: (D,) -> TabularAE, (1, 28, 28) or (3, 32, 32) -> ConvAE."""
    shape = tuple(input_shape)
    if len(shape) == 1:
        return TabularAE(shape[0], latent)
    if shape in ((1, 28, 28), (3, 32, 32)):
        return ConvAE(shape[0], shape[1], latent)
    raise ValueError(f"x must have shape {AE_SHAPES} for this model, got (N, {', '.join(map(str, shape))})")


def standard_layout(x):
    """x with the row-major strides of its shape. One-channel images read as (N, H, W, 1) and permuted keep strides
    that torch takes for channels-last, whose conv kernels round differently: the same images from a folder and
    from an npz would train differently."""
    standard = x.stride() == torch.empty(x.shape, device="meta").stride()
    return x if standard else x.clone(memory_format=torch.contiguous_format)


def as_model_input(x, input_shape, device):
    """x as a float32 tensor on device; ValueError unless it is (N, *input_shape)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if tuple(x.shape[1:]) != tuple(input_shape) or x.dim() != len(input_shape) + 1:
        raise ValueError(f"x must have shape (N, {', '.join(map(str, input_shape))}) for this model, got "
                         f"{tuple(x.shape)}")
    return standard_layout(x.to(device))


class EstimationNetwork(nn.Module):
    """T_theta(z): the NCE log-ratio ln p_d(z) - ln(nu p_n(z)); MLP d-128-128-1 with SiLU (our choice),
    applied to z standardised with fixed training statistics."""

    def __init__(self, mean, std, hidden=128):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        d = len(mean)
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, z):
        return self.net((z - self.mean) / self.std).squeeze(-1)   # (B,)


class NoiseDistribution(nn.Module):
    """p_nK = N(mu, K Sigma K) with K = diag(1 + softplus(psi)) >= 1 (Sec. 3.4); samples by
    reparameterisation L_K(v) = K (v - mu) + mu with v ~ N(mu, Sigma). learn_k=False fixes K = I."""

    def __init__(self, mean, cov, learn_k, k_init=K_INIT):
        super().__init__()
        d = len(mean)
        # a jitter relative to each feature's own variance (z_e's variance can be ~1e-6 of z_l's)
        jitter = torch.diag(1e-9 * torch.diagonal(cov) + 1e-30)
        self.moments = {"mean": mean.double(), "cov": cov.double()}            # the features' mu, Sigma
        self.register_buffer("mean", mean.float())
        self.register_buffer("chol64", torch.linalg.cholesky(cov + jitter))   # Sigma = L L^T
        self.register_buffer("chol", self.chol64.float())
        self.learn_k = learn_k
        # K_jj = 1 + softplus(psi_j) starts at k_init: psi = softplus^-1(k_init - 1) (psi = 0 <-> K = 1 + ln 2)
        y = k_init - 1.0                                  # softplus^-1(y); for large y as y + log(1 - e^-y) (overflow)
        psi0 = (math.log(math.expm1(y)) if y < 20 else y + math.log(-math.expm1(-y))) if learn_k else 0.0
        self.psi = nn.Parameter(torch.full((d,), psi0), requires_grad=learn_k)

    def K(self):
        if not self.learn_k:
            return torch.ones_like(self.psi)
        return 1 + F.softplus(self.psi)                     # diagonal of K, each >= 1

    def L_K(self, v, K):
        return K * (v - self.mean) + self.mean              # L_K(v) = K (v - mu) + mu

    def L_K_inverse(self, z, K):
        return (z - self.mean) / K + self.mean              # L_K^-1(z) = K^-1 (z - mu) + mu

    def sample_v(self, n, generator=None):
        eps = torch.randn(n, len(self.mean), generator=generator).to(self.mean.device)
        return self.mean + eps @ self.chol.T                # v ~ N(mu, Sigma)

    def log_prob(self, z):
        """ln p_nK(z), in float64."""
        K = self.K().detach().double()
        scale_tril = K[:, None] * self.chol64               # K L, so the covariance is K Sigma K
        dist = torch.distributions.MultivariateNormal(self.mean.double(), scale_tril=scale_tril)
        return dist.log_prob(z.double())


# ------------------------------------------------------------------------------------------ losses and scores

def covariance_loss(z):
    """L_cov = ||off(Sigma)||_F^2 / (d(d-1)): mean squared off-diagonal of the latent batch covariance."""
    d = z.shape[1]
    if d < 2:
        return z.new_zeros(())
    zc = z - z.mean(0)
    sigma = zc.T @ zc / (len(z) - 1)                        # (d, d), unbiased batch covariance
    off = sigma - torch.diag(torch.diagonal(sigma))
    return (off ** 2).sum() / (d * (d - 1))                 # Eq. (12)


def reconstruction_loss(x, x_rec):
    """L_error = E_x ||x - D(E(x))||^2: the squared norm over the input, averaged over the batch (Eq. 11)."""
    return ((x_rec - x) ** 2).flatten(1).sum(1).mean()      # Eq. (11)


def ae_loss(x, x_rec, z, lam):
    """L = L_error + lambda * L_cov (Eq. 11); returns (L, L_error, L_cov)."""
    error = reconstruction_loss(x, x_rec)                   # Eq. (11), L_error
    cov = covariance_loss(z)                                # Eq. (12)
    return error + lam * cov, error, cov                    # Eq. (11)


def composite_features(x, x_rec, z_l):
    """z = (z_l, z_e, z_c): latent, ||x - x'||^2 / d0 and (1 - cos(x, x')) / 2 (Sec. 3.1). -> (B, d + 2)"""
    x, x_rec = x.flatten(1), x_rec.flatten(1)               # (B, d0)
    z_e = ((x - x_rec) ** 2).sum(1) / x.shape[1]            # reconstruction error
    z_c = 0.5 * (1 - F.cosine_similarity(x, x_rec, dim=1))  # cosine dissimilarity
    return torch.cat([z_l, z_e[:, None], z_c[:, None]], 1)


class RunningMoments:
    """Mean and covariance accumulated batch by batch (Appendix B, Eq. 13-14), in float64. Merge rule for a batch
    of b rows with mean m_b and scatter M_b:  n' = n + b,  mu' = mu + (m_b - mu) b / n',
    M' = M + M_b + (m_b - mu)(m_b - mu)^T n b / n'."""

    def __init__(self, dim):
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.scatter = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, z):
        z = z.detach().to("cpu", torch.float64)
        b = len(z)
        if b == 0:
            return
        mean_b = z.mean(0)
        centred = z - mean_b
        delta = mean_b - self.mean
        n = self.n + b
        self.mean += delta * b / n                                                       # Eq. (13)
        self.scatter += centred.T @ centred + torch.outer(delta, delta) * self.n * b / n  # Eq. (14)
        self.n = n

    def covariance(self):
        return self.scatter / (self.n - 1)


def lognormal_mode(mean, var):
    """Mode of the log-normal with this mean and variance: m_z = mu (sigma^2/mu^2 + 1)^(-3/2) (Appendix C)."""
    return mean * (var / mean.clamp_min(1e-12) ** 2 + 1) ** -1.5


def augment(z, latent, loc, std, mode, p=0.5, generator=None):
    """Eq. (8): with probability p, replace (z_e, z_c) of a normal point by independent draws from
    p_t = N(loc, std^2) truncated to [0, m_z] (per feature); std and m_z are the training std and log-normal
    mode of (z_e, z_c), loc is m_z in train_nce() (Appendix D)."""
    z = z.clone()
    chosen = torch.rand(len(z), generator=generator).to(z.device) < p
    k = int(chosen.sum())
    for j in range(2):                                      # j = 0: z_e, j = 1: z_c; inverse-CDF sampling of p_t
        draws = nn.init.trunc_normal_(torch.empty(k), float(loc[j]), float(std[j]), 0.0, float(mode[j]), generator)
        z[chosen, latent + j] = draws.to(z.device, z.dtype)  # Eq. (8)
    return z


def nce_loss(t_data, t_noise, nu):
    """Eq. (9): -E_data[ln sigma(T)] - nu E_noise[ln(1 - sigma(T))], with nu noise samples per data sample."""
    return -F.logsigmoid(t_data).mean() - nu * F.logsigmoid(-t_noise).mean()   # Eq. (9)


@torch.no_grad()
def anomaly_score(T, noise, z, nu, chunk=4096):
    """S_C(z) = -(T_theta(z) + ln(nu p_nK(z))) (Sec. 3.3): the NCE estimate of -ln p_d(z), as numpy; p_nK is the
    noise this T_theta was trained against (its final K; K = I for LatNCE/CNCE)."""
    T.eval()
    z = torch.as_tensor(z, dtype=torch.float32, device=noise.mean.device)
    out = []
    for i in range(0, len(z), chunk):
        zb = z[i:i + chunk]
        out.append(-(T(zb).double() + math.log(nu) + noise.log_prob(zb)))
    return torch.cat(out).cpu().numpy()


# ------------------------------------------------------------------------------------------ Step 1: features

def check_finite(value, where):
    if not math.isfinite(value):
        raise FloatingPointError(f"training diverged: {where} is {value}; try a smaller learning rate (--lr)")


@torch.no_grad()
def validation_loss(ae, x_val, lam, chunk=1024):
    """L of Eq. (11) on the whole validation set, in eval mode."""
    ae.eval()
    sq, zs = 0.0, []
    for i in range(0, len(x_val), chunk):
        xb = x_val[i:i + chunk]
        x_rec, z = ae(xb)
        sq += float(((x_rec - xb) ** 2).sum())
        zs.append(z)
    error = sq / len(x_val)                                             # as reconstruction_loss()
    cov = float(covariance_loss(torch.cat(zs))) if len(x_val) > 1 else 0.0
    return error + lam * cov


def train_autoencoder(ae, x_train, x_val=None, *, lam=0.3, ae_iters=5000, decoder_iters=2000, lr=1e-3,
                      batch_size=128, log=print):
    """Decoupled training (Sec. 3.2, Appendix A): stage 1 trains encoder and decoder on Eq. (11); stage 2 freezes
    the encoder and trains the decoder further on L_error. With x_val each stage keeps its checkpoint of lowest
    validation loss (Appendix E), without it the last. Returns (samples seen, seconds of optimisation steps)."""
    device = next(ae.parameters()).device
    x_train = as_model_input(x_train, ae.input_shape, device)
    x_val = None if x_val is None else as_model_input(x_val, ae.input_shape, device)
    n, train_time = len(x_train), 0.0
    for stage, n_iters in ((1, ae_iters), (2, decoder_iters)):
        if stage == 1:
            params, stage_lam = list(ae.parameters()), lam
        else:
            for p in ae.encoder.parameters():
                p.requires_grad_(False)
            params, stage_lam = list(ae.decoder.parameters()), 0.0    # L_cov has no gradient w.r.t. the decoder
        opt = torch.optim.Adam(params, lr=lr)
        best = None if x_val is None else (validation_loss(ae, x_val, stage_lam), 0, copy.deepcopy(ae.state_dict()))
        every, t0, progress = max(1, n_iters // 10), time.time(), Progress(f"ae{stage} iter", n_iters, log)
        for it in range(1, n_iters + 1):
            ts = time.time()
            ae.train()
            if stage == 2:
                ae.encoder.eval()                                  # frozen: BN running statistics fixed too
            xb = x_train[torch.randint(n, (batch_size,), device=device)]
            x_rec, z = ae(xb)
            loss, error, cov = ae_loss(xb, x_rec, z, stage_lam)   # Eq. (11)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            train_time += time.time() - ts
            if it % every == 0 or it == n_iters:
                value = loss.item()
                check_finite(value, f"the AE loss (Eq. 11) in stage {stage} at iteration {it}")
                cov_text = f" cov={cov.item():.5f}" if stage == 1 else ""     # stage 2 trains on L_error alone
                val_text = ""
                if best is not None:                                       # Appendix E: model selection
                    val = validation_loss(ae, x_val, stage_lam)
                    check_finite(val, f"the AE validation loss in stage {stage} at iteration {it}")
                    if val < best[0]:
                        best = (val, it, copy.deepcopy(ae.state_dict()))
                    val_text = f" val_loss={val:.5f} best={best[0]:.5f}@{best[1]}"
                log(f"ae{stage} iter {it}/{n_iters} loss={value:.5f} error={error.item():.5f}{cov_text}{val_text} "
                    f"elapsed={time.time() - t0:.1f}s")
                progress.last = time.time()                        # a line was just printed
            else:
                progress(it)                                       # at most every 10 s, with the time left
        if best is not None:
            ae.load_state_dict(best[2])
    ae.eval()
    return (ae_iters + decoder_iters) * batch_size, train_time


@torch.no_grad()
def ae_features(ae, x, chunk=1024, log=None):
    """Composite features (Sec. 3.1) of every row of x, in chunks -> (N, d + 2) tensor on the AE's device."""
    ae.eval()
    x = as_model_input(x, ae.input_shape, next(ae.parameters()).device)
    out, progress = [], Progress("AE features", len(x), log or (lambda line: None))
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        x_rec, z_l = ae(xb)
        out.append(composite_features(xb, x_rec, z_l))
        progress(i + len(xb))
    return torch.cat(out)


def load_resnet18(weights_path=None):
    """torchvision's resnet18 with ImageNet weights from a state_dict file, else torchvision's download or cache."""
    import torchvision
    model, w = torchvision.models.resnet18(weights=None), torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(w.url))
    try:
        if weights_path:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        elif os.environ.get("AD_OFFLINE", "") not in ("", "0") and not os.path.exists(cached):
            raise RuntimeError("downloads disabled by AD_OFFLINE")
        else:
            state = w.get_state_dict(progress=False)
        model.load_state_dict(state)
        return model
    except Exception as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if weights_path:
        raise DataError(f"could not load resnet18 weights from '{weights_path}' ({why}). Pass a torchvision resnet18 "
                        "state_dict file")
    raise DataError(f"the ImageNet ResNet-18 weights were not found at '{cached}' and could not be downloaded "
                    f"({why}). Download {w.url} elsewhere and pass it with --weights PATH (a torchvision "
                    f"resnet18 state_dict), or put it at '{cached}'")


@torch.no_grad()
def resnet18_embeddings(model, x, size, chunk=256, log=None):
    """512-d embeddings after the last average pool (Sec. 3.2): grey -> 3 channels, resize, ImageNet
    normalisation."""
    model.eval()
    model.fc = nn.Identity()
    mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
    out, progress = [], Progress("ResNet-18 embeddings", len(x), log or (lambda line: None))
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        if xb.shape[1] == 1:
            xb = xb.repeat(1, 3, 1, 1)                                                  # (B, 3, H, W)
        xb = F.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False)  # (B, 3, size, size)
        out.append(model((xb - mean) / std))                                            # (B, 512)
        progress(i + len(xb))
    return torch.cat(out)


def pca_features(pca, e, chunk=4096):
    """Composite features from embeddings e: z_l = PCA projection, x' = PCA reconstruction of e (Sec. 3.2)."""
    out = []
    for i in range(0, len(e), chunk):
        eb = e[i:i + chunk]
        z_l = pca.transform(eb.cpu().numpy())
        rec = pca.inverse_transform(z_l)
        out.append(composite_features(eb, torch.as_tensor(rec, dtype=eb.dtype, device=eb.device),
                                      torch.as_tensor(z_l, dtype=eb.dtype, device=eb.device)))
    return torch.cat(out)


# ------------------------------------------------------------------------------------------ Step 2: NCE

def train_nce(z_train, z_val=None, *, variant="cance", nu=NU, k_init=K_INIT, nce_iters=5000, lr=1e-3,
              batch_size=128, val_seed=1, log=print):
    """Train T_theta for one variant on composite features z_train (N, d + 2) (Sec. 3.3-3.4): "latnce" uses z_l
    alone, "cnce" all of z, both against the fixed noise N(mu, Sigma) of the training moments; "cance" adds the
    augmentation of Eq. (8) and learns K. theta minimises Eq. (9); psi ascends Eq. (10), the same objective with
    the data passed through L_K(sg(L_K^-1(z))) (the identity in value, but differentiable in K). With z_val,
    Eq. (9) on it (CANCE: augmented, with fixed draws from a generator seeded val_seed) every tenth of the phase
    selects the returned (theta, psi) (Appendix E); without it the last. Returns (T, noise, selected step)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    z_train = torch.as_tensor(z_train, dtype=torch.float32)
    device, d = z_train.device, z_train.shape[1] - 2
    moments = RunningMoments(d + 2)                             # Sec. 3.3: the noise is fitted to the features
    for i in range(0, len(z_train), 1024):
        moments.update(z_train[i:i + 1024])                     # Eq. (13)-(14), batch-wise (Appendix B)
    mean, cov = moments.mean, moments.covariance()
    if variant == "latnce":                                     # NCE on the latent z_l alone
        z_train, mean, cov = z_train[:, :d], mean[:d], cov[:d, :d]
        z_val = None if z_val is None else z_val[:, :d]
    learn_k = variant == "cance"                                # CANCE: learned K and Eq. (8)
    std = torch.sqrt(torch.diagonal(cov)).clamp_min(1e-12)
    T = EstimationNetwork(mean.float(), std.float()).to(device)
    noise = NoiseDistribution(mean, cov, learn_k, k_init).to(device)
    opt_theta = torch.optim.AdamW(T.parameters(), lr=lr)                 # Sec. 3.4: AdamW for theta and psi
    opt_psi = torch.optim.AdamW([noise.psi], lr=lr) if learn_k else None
    if learn_k:              # Appendix C: training mean, variance and log-normal mode of (z_e, z_c)
        rec_mean, rec_var = mean[d:].float(), torch.diagonal(cov)[d:].float()
        rec_mode = lognormal_mode(rec_mean, rec_var)                      # Appendix D: p_t centred at m_z
    if z_val is not None:      # fixed validation draws (own generator: the training streams stay unchanged)
        g = torch.Generator().manual_seed(val_seed)
        z_val = torch.as_tensor(z_val, dtype=torch.float32, device=device)
        if learn_k:
            z_val = augment(z_val, d, rec_mode, rec_var.sqrt(), rec_mode, generator=g)   # Eq. (8)
        v_val = noise.sample_v(nu * len(z_val), generator=g)
    best = (math.inf, nce_iters, None)
    n, every, t0 = len(z_train), max(1, nce_iters // 10), time.time()
    progress = Progress(f"{variant} iter", nce_iters, log)
    for it in range(1, nce_iters + 1):
        zb = z_train[torch.randint(n, (batch_size,), device=device)]
        if learn_k:
            zb = augment(zb, d, rec_mode, rec_var.sqrt(), rec_mode)          # Eq. (8)
        v = noise.sample_v(nu * len(zb))
        # theta step: minimise Eq. (9) with noise samples L_K(v) ~ p_nK (K held fixed)
        loss = nce_loss(T(zb), T(noise.L_K(v, noise.K().detach())), nu)    # Eq. (9)
        opt_theta.zero_grad(set_to_none=True)
        loss.backward()
        opt_theta.step()
        if learn_k:
            # psi step: ascend Eq. (10); the data term goes through L_K(sg(L_K^-1(z)))
            K = noise.K()
            z_through = noise.L_K(noise.L_K_inverse(zb, K).detach(), K)      # Eq. (10), data term
            objective = nce_loss(T(z_through), T(noise.L_K(v, K)), nu)       # Eq. (10)
            opt_psi.zero_grad(set_to_none=True)
            (-objective).backward()                                         # adversarial: ascend
            opt_psi.step()
            T.zero_grad(set_to_none=True)
        if it % every == 0 or it == nce_iters:
            value = loss.item()
            check_finite(value, f"the {variant} NCE loss (Eq. 9) at iteration {it}")
            k_text = f" k_mean={noise.K().mean().item():.4f}" if learn_k else ""
            val_text = ""
            if z_val is not None:
                with torch.no_grad():                                       # Eq. (9) on the validation part
                    val = nce_loss(T(z_val), T(noise.L_K(v_val, noise.K())), nu).item()
                check_finite(val, f"the {variant} NCE validation loss at iteration {it}")
                if val < best[0]:
                    best = (val, it, (copy.deepcopy(T.state_dict()), noise.psi.detach().clone()))
                val_text = f" val_loss={val:.4f} best={best[0]:.4f}@{best[1]}"
            log(f"{variant} iter {it}/{nce_iters} loss={value:.4f}{k_text}{val_text} elapsed={time.time() - t0:.1f}s")
            progress.last = time.time()                                     # a line was just printed
        else:
            progress(it)                                                    # at most every 10 s, with the time left
    if z_val is not None:
        T.load_state_dict(best[2][0])
        with torch.no_grad():
            noise.psi.copy_(best[2][1])
        log(f"{variant}: selected step {best[1]} of {nce_iters} (lowest validation loss {best[0]:.4f})")
    return T, noise, best[1]


# ------------------------------------------------------------------------------------------ the whole method

class CANCE:
    """What fit() returns: Step 1's feature map (the AE, or ResNet-18 + PCA; for rows also their z-scoring) and, per
    variant, T_theta with the noise it was trained against (Step 2); config (the resolved hyperparameters), steps
    (the selected NCE steps) and stats for the record. save() / load() keep it."""

    def __init__(self, input_shape, nu, device):
        self.input_shape, self.nu, self.device = tuple(input_shape), nu, device
        self.ae = self.resnet = self.pca = self.x_mean = self.x_std = None
        self.image_size, self.batch_size = 224, None
        self.heads, self.steps, self.stats, self.config = {}, {}, {}, {}

    @torch.no_grad()
    def features(self, x, log=None):
        """Composite features z = (z_l, z_e, z_c) of x -> (N, d + 2) tensor on the model's device."""
        x = torch.as_tensor(x, dtype=torch.float32)
        if self.x_mean is not None:                  # rows: the training rows' z-scoring, on the CPU as in fit()
            x = (as_model_input(x, self.input_shape, "cpu") - self.x_mean) / self.x_std
        if self.ae is not None:
            return ae_features(self.ae, x, log=log)
        x = as_model_input(x, self.input_shape, self.device)
        return pca_features(self.pca, resnet18_embeddings(self.resnet, x, self.image_size, log=log))


def fit(x_normal, *, variants=("cance",), features="ae", latent=6, lam=0.3, ae_iters=5000, decoder_iters=2000,
        nce_iters=5000, lr=1e-3, batch_size=128, nu=NU, k_init=K_INIT, seed=0, weights=None, image_size=224,
        standardize=True, device=None, log=print):
    """CANCE (Sec. 3) on normal data: x_normal is (N, D) rows or (N, 1, 28, 28) / (N, 3, 32, 32) images in [0, 1]
    (features="resnet18-pca": (N, 1 or 3, H, W), weights = a resnet18 state_dict file, else torchvision's). Rows are
    z-scored with their mean and std (standardize; a constant column keeps std 1, GOAD's norm_data); the model
    keeps the constants. A random 20% is held out for model selection (Appendix E); Step 1 trains the AE on the rest
    (or embeds it with ResNet-18 and fits PCA), Step 2 trains one NCE model per variant. seed seeds torch, numpy and
    random first (one seed, one result on CPU); device None = cuda if available. Defaults: MNIST's (PAPER["mnist"]).
    Returns a CANCE model."""
    if any(v not in VARIANTS for v in variants):
        raise ValueError(f"variants must be among {', '.join(VARIANTS)}, got {tuple(variants)}")
    x = standard_layout(torch.as_tensor(x_normal, dtype=torch.float32))
    if features == "ae" and not (x.dim() == 2 or tuple(x.shape[1:]) in ((1, 28, 28), (3, 32, 32))):
        raise ValueError(f"x must have shape {AE_SHAPES} for this model, got {tuple(x.shape)}")
    if features == "resnet18-pca" and not (x.dim() == 4 and x.shape[1] in (1, 3)):
        raise ValueError(f"x must have shape (N, 1, H, W) or (N, 3, H, W) for ResNet-18, got {tuple(x.shape)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    set_seed(seed)
    perm = torch.randperm(len(x))                                       # Appendix E: 20% validation
    n_val = int(round(VAL_FRACTION * len(x)))
    if n_val < 2 or len(x) - n_val < 2:
        raise DataError(f"{len(x)} normal training samples are too few for a 20% validation split (Appendix E). "
                        "Use at least 8, e.g. pick normal classes with more training samples")
    model = CANCE(x.shape[1:], nu, device)
    if standardize and x.dim() == 2:                                    # rows: z-scored with the training rows
        x = x.cpu()
        model.x_mean, std = x.mean(0), x.std(0)
        model.x_std = torch.where(std > 0, std, torch.ones_like(std))
        x = (x - model.x_mean) / model.x_std
    x_val, x_train = x[perm[:n_val]].to(device), x[perm[n_val:]].to(device)
    if batch_size > len(x_train):
        log(f"note: batch size {batch_size} exceeds the {len(x_train)} training samples; using {len(x_train)}")
        batch_size = len(x_train)
    if features == "resnet18-pca" and latent > min(len(x_train), 512):
        raise DataError(f"latent {latent} exceeds what PCA can give from {len(x_train)} training samples of 512 "
                        "features. Pass a smaller latent (--latent)")
    log(f"fit: train={len(x_train)} val={len(x_val)} features={features} latent={latent} lambda={lam:g} nu={nu} "
        f"lr={lr:g} batch={batch_size} k_init={k_init:.3f} iters(ae1/ae2/nce)={ae_iters}/{decoder_iters}/"
        f"{nce_iters} device={device}")
    model.batch_size = batch_size
    model.config = dict(input_shape=list(x.shape[1:]), variants=list(variants), features=features, latent=latent,
                        lam=lam, ae_iters=ae_iters, decoder_iters=decoder_iters, nce_iters=nce_iters, lr=lr,
                        batch_size=batch_size, nu=nu, k_init=k_init, seed=seed, weights=weights,
                        image_size=image_size, standardize=model.x_mean is not None)
    # Step 1: composite features z = (z_l, z_e, z_c) of the training and validation parts
    if features == "ae":
        model.ae = build_autoencoder(x.shape[1:], latent).to(device)
        samples, seconds = train_autoencoder(model.ae, x_train, x_val, lam=lam, ae_iters=ae_iters,
                                             decoder_iters=decoder_iters, lr=lr, batch_size=batch_size, log=log)
        z_train, z_val = ae_features(model.ae, x_train, log=log), ae_features(model.ae, x_val)
    else:
        t0 = time.time()
        model.resnet, model.image_size = load_resnet18(weights).to(device), image_size
        e_train = resnet18_embeddings(model.resnet, x_train, image_size, log=log)
        model.pca = PCA(n_components=latent, random_state=seed).fit(e_train.cpu().numpy())
        samples, seconds = len(x_train), time.time() - t0
        z_train, z_val = pca_features(model.pca, e_train), model.features(x_val)
        log(f"resnet18-pca: {len(x_train)} training embeddings, PCA to {latent} dims, explained variance "
            f"{model.pca.explained_variance_ratio_.sum():.4f}")
    # Step 2: one NCE model per variant on the shared features
    t0 = time.time()
    for variant in variants:
        T, noise, model.steps[variant] = train_nce(z_train, z_val, variant=variant, nu=nu, k_init=k_init,
                                                   nce_iters=nce_iters, lr=lr, batch_size=batch_size,
                                                   val_seed=seed + 1, log=log)
        model.heads[variant] = (T, noise)
    model.stats = dict(train_samples_per_s=samples / max(seconds, 1e-9), nce_seconds=time.time() - t0)
    return model


def score(model, x, variant="cance", log=None):
    """Anomaly scores of x as numpy, higher = more anomalous: S_C(z), the estimate of -ln p_d(z) by the variant's
    NCE model (Sec. 3.3), or z_e alone for variant="error" (Table 1's Error). log: progress of the feature pass."""
    return score_features(model, model.features(x, log), variant)


def score_features(model, z, variant="cance"):
    """score() on composite features z = model.features(x) computed once for several variants."""
    d = z.shape[1] - 2
    if variant == "error":
        return z[:, d].cpu().numpy()                        # z_e alone
    if variant not in model.heads:
        raise ValueError(f"variant {variant!r} was not trained: fit(..., variants=...) trained {tuple(model.heads)}")
    T, noise = model.heads[variant]
    return anomaly_score(T, noise, z[:, :d] if variant == "latnce" else z, model.nu)


def save(model, path, data=None):
    """Write a fitted model to path in --save-model's format: config = its resolved hyperparameters (and under "data"
    how its training data were prepared, e.g. the command line's dataset, normal classes and split);
    preprocess = what scoring new data needs besides the weights: the rows' z-scoring, the PCA, and per variant the
    feature moments (mu, Sigma) of its noise and its K; state = the weights (AE or ResNet-18, T_theta, psi)."""
    pre = {"x_mean": model.x_mean, "x_std": model.x_std, "pca": None, "moments": {}, "K": {}}
    state = {"ae": model.ae.state_dict()} if model.ae is not None else {"resnet": model.resnet.state_dict()}
    if model.pca is not None:
        pre["pca"] = {k: torch.from_numpy(getattr(model.pca, k + "_")) for k in ("components", "mean",
                                                                                  "explained_variance")}
    for v, (T, noise) in model.heads.items():
        pre["moments"][v], pre["K"][v] = noise.moments, noise.K().detach().cpu()
        state[f"T_{v}"], state[f"noise_{v}"] = T.state_dict(), noise.state_dict()
    config = dict(model.config, steps=model.steps, **({"data": data} if data else {}))
    save_checkpoint(path, "cance", config, pre, state)


def load(path, device="cpu"):
    """A model written by save() or --save-model, on device, ready for score() (no training)."""
    return model_from_checkpoint(load_checkpoint(path, "cance"), device)


def model_from_checkpoint(ck, device="cpu"):
    config, pre, state = ck["config"], ck["preprocess"], ck["state"]
    model = CANCE(config["input_shape"], config["nu"], torch.device(device))
    model.config, model.steps, model.batch_size = config, config["steps"], config["batch_size"]
    model.x_mean, model.x_std = pre["x_mean"], pre["x_std"]
    if "ae" in state:
        model.ae = build_autoencoder(config["input_shape"], config["latent"])
        model.ae.load_state_dict(state["ae"])
        model.ae.to(model.device).eval()
    else:
        import torchvision
        model.resnet, model.image_size = torchvision.models.resnet18(weights=None), config["image_size"]
        model.resnet.fc = nn.Identity()                                     # as resnet18_embeddings() left it
        model.resnet.load_state_dict(state["resnet"])
        model.resnet.to(model.device).eval()
        model.pca = PCA(n_components=config["latent"])
        for k, v in pre["pca"].items():                                    # components_, mean_, explained_variance_
            setattr(model.pca, k + "_", v.numpy())
        model.pca.n_components_, model.pca.n_features_in_ = pre["pca"]["components"].shape
    for v in config["variants"]:
        moments = pre["moments"][v]
        T = EstimationNetwork(moments["mean"].float(), torch.ones(len(moments["mean"])))
        T.load_state_dict(state[f"T_{v}"])
        noise = NoiseDistribution(moments["mean"], moments["cov"], learn_k=v == "cance")
        noise.load_state_dict(state[f"noise_{v}"])
        model.heads[v] = (T.to(model.device).eval(), noise.to(model.device))
    return model


# ------------------------------------------------------------------------------------------ evaluation

def f1_at_ratio(scores, labels):
    """F1 of the anomaly class when the top r of scores are flagged, r = the test set's anomaly proportion
    (DAGMM/GOAD's rule; on the drocc split r = 1/2)."""
    pred = np.zeros(len(scores), dtype=int)
    pred[np.argsort(-scores)[:int(round(labels.mean() * len(scores)))]] = 1
    return f1_score(labels, pred)


def f1_drocc_rule(scores, labels):
    """The F1 of DROCC's released trainer (drocc_trainer.py, test(metric='F1')): the 80% of test rows with the
    lowest anomaly score are predicted NORMAL and the F1 of the normal class is reported. On the balanced
    drocc split its maximum is 2 * 0.625 / 1.625 = 0.769."""
    normal_pred = scores <= np.percentile(scores, 80)
    return f1_score(1 - labels, normal_pred.astype(int))


# ------------------------------------------------------------------------------------------ data

def check_tabular(X, name):
    """A tabular file must hold finite numbers and at least one non-constant column."""
    bad = ~torch.isfinite(X)
    if bad.any():
        rows, cols = torch.nonzero(bad, as_tuple=True)
        raise DataError(f"the {name} file holds {int(bad.sum())} NaN/inf value(s) (first at row {int(rows[0])}, "
                        f"column {int(cols[0])}). Replace or drop them (this script does not impute missing values)")
    constant = (X.std(0) == 0) if len(X) > 1 else torch.ones(X.shape[1], dtype=torch.bool)
    if constant.all():
        raise DataError(f"every column of the {name} file is constant: there is nothing to learn. "
                        "Check that the file is the dataset's")
    return int(constant.sum())


def tabular_split(y, seed, protocol="goad"):
    """Tabular train/test split -> (training rows, test rows) as indices. goad (GOAD/DAGMM): a random half of the
    normal rows trains, the other half plus every anomaly is the test set. drocc (DROCC's process_odds.py): the test
    set is every anomaly plus as many random normal rows, the other normal rows train. fit() z-scores the rows."""
    g = torch.Generator().manual_seed(seed)
    normal_idx = torch.nonzero(y == 0).view(-1)
    anomaly_idx = torch.nonzero(y == 1).view(-1)
    normal_idx = normal_idx[torch.randperm(len(normal_idx), generator=g)]
    n_test_normal = len(anomaly_idx) if protocol == "drocc" else len(normal_idx) - len(normal_idx) // 2
    return normal_idx[n_test_normal:], torch.cat([normal_idx[:n_test_normal], anomaly_idx])


def prepare(args, log=print):
    """The command line's data -> dict(train=normal training samples, test=(x, y) with y = 1 for an anomaly,
    index=each test sample's index in its source, row=the PAPER row whose values apply, text=what was read).
    Rows stay as they are in the file (fit() z-scores them); images become (N, 1, 28, 28) or (N, 3, 32, 32)."""
    name, row, text, index = args.dataset, args.dataset, None, None
    if name in TABULAR_DATASETS or name.endswith(".csv"):
        if name in TABULAR_DATASETS:
            X, y = load_tabular(name, args.data_root)
        else:
            X, y = load_csv(name, args.label_column, args.normal_label)
            row, text = USER_ROWS["rows"], f"{len(X)} rows of {X.shape[1]} features ({int(y.sum())} anomalies)"
        n_constant = check_tabular(X, name)
        if n_constant:
            log(f"{name}: {n_constant} of {X.shape[1]} columns are constant in the file (they stay 0 after z-scoring)")
        train_idx, test_idx = tabular_split(y, args.seed, args.tabular_split)
        x_train, x_test, y_test, index = X[train_idx], X[test_idx], y[test_idx], test_idx
    elif name == "mnist-c":
        names = MNIST_C_CORRUPTIONS if args.corruption == "all" else args.corruption.split(",")
        x_train, x_test, y_test, _ = load_mnist_c(list(names), args.data_root)
    elif name in PAPER:
        x_tr, y_tr, x_te, y_te = load_images(name, args.data_root)
        split = one_class_split(x_tr, y_tr, x_te, y_te, args.normal_classes)
        x_train, (x_test, y_test) = split["train"], split["test"]
    elif name.endswith(".npz"):
        d = load_npz(name)
        x_train, (x_test, y_test) = d["train"], d["test"]
        shape = "x".join(map(str, x_train.shape[1:]))
        if x_train.dim() == 2:
            check_tabular(x_train, f"{name} x_train")
            row, text = USER_ROWS["rows"], f"x_train: {len(x_train)} rows of {x_train.shape[1]} features"
        else:                                              # images -> the input the ConvAE takes
            c, side = x_train.shape[1], 28 if x_train.shape[1] == 1 else 32
            x_train, x_test = fit_images(x_train, c, side), fit_images(x_test, c, side)
            row, text = USER_ROWS["grey" if c == 1 else "RGB"], f"{len(x_train)} {shape} images -> {c}x{side}x{side}"
        if d["val"] is not None:
            log(f"{name}: x_val/y_val are not used (the 20% hold-out of Appendix E comes from x_train)")
    else:
        if os.path.isfile(name):
            raise DataError(f"'{name}' is a file but neither .npz nor .csv. Give an .npz or .csv file, or a folder "
                            "with train/good/ and test/<name>/ subfolders")
        d = load_image_folder(name)
        x_train, (x_test, y_test), text = d["train"], d["test"], d["source"]
        row = USER_ROWS["grey" if x_train.shape[1] == 1 else "RGB"]
    if x_train.dim() == 2 and args.features == "resnet18-pca":
        raise DataError(f"--features resnet18-pca takes images, and {name} holds {x_train.shape[1]}-feature rows. "
                        "Drop --features resnet18-pca (the AE takes rows)")
    if int(y_test.min()) == int(y_test.max()):
        raise DataError(f"{name}: every test sample is {'an anomaly' if int(y_test[0]) else 'normal'}, so no metric "
                        "can be computed. Give a test set with both normal (0) and anomalous (1) samples")
    index = torch.arange(len(x_test)) if index is None else index
    return dict(train=x_train, test=(x_test, y_test), index=index, row=row, text=text)


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


def corruption_list(text):
    """argparse type: 'all' or a comma list of distinct MNIST-C corruptions."""
    names = MNIST_C_CORRUPTIONS if text == "all" else text.split(",")
    if any(c not in MNIST_C_CORRUPTIONS for c in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"'{text}' is not 'all' or a list of distinct MNIST-C corruptions; use "
                                         f"names from: {', '.join(MNIST_C_CORRUPTIONS)}")
    return text


def dataset_name(text):
    """argparse type: a built-in dataset's name, or your own .npz / .csv file or image folder."""
    if text in PAPER or is_user_dataset(text):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: '{text}' (choose from {', '.join(PAPER)}, or give an .npz or "
                                     ".csv file or an image folder)")


MODEL_FLAGS = ("features", "weights", "image_size", "latent", "lam", "nu", "k_init", "iters", "batch_size", "lr",
               "save_model")   # what --load-model takes from the checkpoint instead


def parse_args(argv=None):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset", default="mnist")
    dataset = pre.parse_known_args(argv)[0].dataset
    p = ArgumentParser(description="CANCE: autoencoder composite features + NCE (Liao & Brockmeier)",
                       formatter_class=HelpFormatter)
    p.add_argument("--dataset", type=dataset_name, default="mnist",
                   help="mnist, fashion-mnist, cifar10, mnist-c (Table 3), thyroid, arrhythmia, abalone (Table 6) "
                        "(Sec. 4); cifar100, svhn, digits = offline install check; or your own data: FILE.npz "
                        "(x_train normal, x_test, y_test; (N, D) rows or images), FILE.csv (rows, a label column) or "
                        "a FOLDER (train/good/, test/good/, test/<anomaly>/ images). Rows take thyroid's values, "
                        "grey images MNIST's as 1x28x28, RGB images CIFAR-10's as 3x32x32 (not in the paper)")
    p.add_argument("--normal",
                   help="normal class or comma list, e.g. 0,1 for Table 8, nine classes for Table 5; default 0 for "
                        "the built-in sets, fixed at 0 for tabular sets and mnist-c (Sec. 4); not for your own data")
    p.add_argument("--data-root", default=os.environ.get("AD_DATA_ROOT", "./data"),
                   help="datasets folder, torchvision's layout ($AD_DATA_ROOT if set)")
    p.add_argument("--seed", type=number(int, 0, 2 ** 32 - 1), default=0,
                   help="random seed; CPU runs repeat exactly; with --load-model the checkpoint's (Sec. 4: five runs)")
    p.add_argument("--device", type=device_type, default="auto",
                   help="auto (cuda if available), cpu, cuda or cuda:N (not in the paper)")
    p.add_argument("--iters", type=number(int, 1),
                   help="cap on every phase; uncapped: AE stage 1 / stage 2 / each NCE model 5000/2000/5000 on "
                        "images, 2000/1000/3000 on tabular sets (not in the paper: chosen)")
    p.add_argument("--batch-size", type=number(int, 2),
                   help="AE and NCE data batch, at most the training part (not in the paper: chosen; digits 64)")
    p.add_argument("--lr", type=number(float, 0, low_open=True), default=1e-3,
                   help="learning rate of Adam (AE) and AdamW (theta, psi; Sec. 3.4) (not in the paper: chosen)")
    p.add_argument("--json", type=output_path,
                   help="also write the RESULT keys, the resolved hyperparameters and the provenance to this JSON "
                        "file (not in the paper: for benchmarks/run.py)")
    p.add_argument("--latent", type=number(int, 1),
                   help="latent size d: MNIST, F-MNIST 6, CIFAR-10 64 (Appendix G, I), MNIST-C 10 (Sec. 4); not in "
                        "the paper (chosen): thyroid, abalone 3, arrhythmia 8, cifar100, svhn 64")
    p.add_argument("--lam", type=number(float, 0),
                   help="lambda of Eq. (11): MNIST, F-MNIST, MNIST-C 0.3, CIFAR-10 0.004 (Appendix G, I); not in "
                        "the paper (chosen): tabular 0.3, cifar100, svhn 0.004")
    p.add_argument("--nu", type=number(int, 1), default=NU, help="noise samples per data sample (Appendix E)")
    p.add_argument("--k-init", type=number(float, 1, low_open=True), default=K_INIT,
                   help="initial K_jj of CANCE's noise (Sec. 3.4 asks K_jj >= 1; not in the paper: psi = 0)")
    p.add_argument("--features", default="ae", choices=["ae", "resnet18-pca"],
                   help="the composite-feature AE, or ImageNet ResNet-18 embeddings + PCA to --latent dimensions "
                        "(Sec. 3.2; Tables 4, 5, 9)")
    p.add_argument("--weights", help="resnet18-pca: a torchvision resnet18 state_dict file (not in the paper: "
                                     "else torchvision's IMAGENET1K_V1 download or cache)")
    p.add_argument("--image-size", type=number(int, 32), default=224,
                   help="resnet18-pca: side the images are resized to (ImageNet's; smaller is not the paper's)")
    p.add_argument("--tabular-split", default="goad", choices=["goad", "drocc"],
                   help="Table 6's preparation of a tabular set or .csv file: goad = half the normal rows train, the "
                        "rest + every anomaly test; drocc = every anomaly + as many normal rows test (not in the "
                        "paper: Sec. 4 cites both; goad fits Table 6, see the docstring)")
    p.add_argument("--corruption", type=corruption_list, default="all",
                   help="mnist-c: 'all' (pooled) or a comma list of the corruptions that are the anomalies (not "
                        "in the paper: Sec. 4 does not say)")
    p.add_argument("--label-column", default="label", help="a .csv --dataset's label column (not in the paper)")
    p.add_argument("--normal-label", default="0",
                   help="the label of a .csv --dataset's normal rows; any other label is an anomaly (not in the paper)")
    p.add_argument("--save-scores", type=output_path,
                   help="write the test scores to this .npz: scores (CANCE), scores_error, scores_latnce, scores_cnce "
                        "(higher = more anomalous), labels (1 = anomaly), index (each test sample's index in its "
                        "source) (not in the paper)")
    p.add_argument("--save-model", type=output_path,
                   help="write the fitted model to this file: the AE (or ResNet-18 + PCA), the z-scoring of rows, each "
                        "variant's T_theta, feature moments and K, every hyperparameter (not in the paper)")
    p.add_argument("--load-model",
                   help="score with a model written by --save-model instead of training it; the model's flags come "
                        "from the checkpoint, --seed and --tabular-split too unless given (not in the paper)")
    row = dataset if dataset in PAPER else USER_ROWS["rows"] if dataset.endswith(".csv") else None
    p.set_defaults(**(PAPER[row] if row else {}))       # an .npz or folder: its kind decides, once it is read
    args = p.parse_args(argv)
    unset = object()                          # parsed again into a namespace of `unset`: the flags typed remain
    typed = vars(p.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), unset))))
    args.given = {k for k, v in typed.items() if v is not unset}
    tabular, csv = args.dataset in TABULAR_DATASETS, args.dataset.endswith(".csv")
    if args.features == "resnet18-pca" and tabular:
        p.error("--features resnet18-pca is for image datasets; drop it, or pick an image --dataset")
    if {"label_column", "normal_label"} & args.given and not csv:
        p.error(f"--label-column and --normal-label are for a .csv --dataset, not '{args.dataset}'; drop them")
    idle = [k for k in ("weights", "image_size") if k in args.given and args.features != "resnet18-pca"]
    if idle and not args.load_model:
        flags = " and ".join("--" + k.replace("_", "-") for k in idle)
        p.error(f"{flags} set the ResNet-18 of --features resnet18-pca, and this run trains the AE. Add --features "
                f"resnet18-pca, or drop {'it' if len(idle) == 1 else 'them'}")
    if "corruption" in args.given and args.dataset != "mnist-c":
        p.error(f"--corruption picks MNIST-C's anomalies, and --dataset is '{args.dataset}'. Use --dataset mnist-c, "
                "or drop --corruption")
    if "tabular_split" in args.given and not (tabular or csv):
        p.error(f"--tabular-split splits a tabular set or a .csv file; '{args.dataset}' is split already. Drop it")
    if args.load_model and args.given & set(MODEL_FLAGS):
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(args.given & set(MODEL_FLAGS)))
        p.error(f"{flags} cannot apply with --load-model: the checkpoint fixes the model. Drop them, or train anew")
    if args.dataset not in PAPER:
        if args.normal is not None:
            how = "; the normal rows' label is --normal-label" if csv else ""
            p.error(f"--normal does not apply to your own data ('{args.dataset}'): its labels say which samples are "
                    f"anomalies (1){how}. Leave --normal out")
        args.normal_classes = None
    elif tabular or args.dataset == "mnist-c":
        if args.normal not in (None, "0"):
            what = "label 0 is normal" if tabular else "every MNIST class is normal, MNIST-C's corruptions are not"
            p.error(f"--normal is fixed for {args.dataset} ({what}); got '{args.normal}'. Leave --normal out")
        args.normal_classes = [0]
    else:
        try:
            normal = "0" if args.normal is None else args.normal
            args.normal_classes = parse_normal(normal, IMAGE_DATASETS[args.dataset][0])
        except DataError as e:
            p.error(str(e))
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    log = lambda line: print(line, flush=True)
    try:
        t_start = time.time()
        ck = load_checkpoint(args.load_model, "cance") if args.load_model else None
        if ck is not None:                    # the split beside which the checkpoint was trained, unless given
            trained = ck["config"].get("data", {})
            for k in ("seed", "tabular_split"):
                if k not in args.given and k in trained:
                    setattr(args, k, trained[k])
        data = prepare(args, log)
        x_normal, (x_test, y_test) = data["train"], data["test"]
        for k, v in PAPER[data["row"]].items():               # your own data: the matching built-in row's values
            setattr(args, k, v if getattr(args, k, None) is None else getattr(args, k))
        name = os.path.basename(os.path.normpath(args.dataset))
        normal = "-" if args.normal_classes is None else ",".join(map(str, args.normal_classes))
        mine = "" if data["row"] == args.dataset else f"; read {data['text']}" + (
            "" if ck else f"; hyperparameters of {data['row']}")          # your own data: what it was and became
        log(f"cance: dataset={name} normal={normal} test={len(x_test)} (anomalies {int(y_test.sum())}){mine}")
        if ck is None:
            cap = lambda n: min(n, args.iters or n)
            iters = dict(ae_iters=cap(args.ae_iters), decoder_iters=cap(args.decoder_iters),
                         nce_iters=cap(args.nce_iters))
            model = fit(x_normal, variants=VARIANTS, features=args.features, latent=args.latent, lam=args.lam,
                        **iters, lr=args.lr, batch_size=args.batch_size, nu=args.nu, k_init=args.k_init,
                        seed=args.seed, weights=args.weights, image_size=args.image_size, device=args.device, log=log)
        else:
            model = model_from_checkpoint(ck, args.device)
            c = model.config
            if tuple(model.input_shape) != tuple(x_test.shape[1:]):
                raise DataError(f"'{args.load_model}' holds a model of inputs {tuple(model.input_shape)}, but "
                                f"{name} gives {tuple(x_test.shape[1:])}. Score data of the kind it was trained on")
            if set(model.heads) != set(VARIANTS):
                raise DataError(f"'{args.load_model}' holds the variants {', '.join(model.heads)}; the command line "
                                f"reports all of {', '.join(VARIANTS)}. Save a model fitted with variants=VARIANTS")
            t = c.get("data", {})
            log(f"--load-model {args.load_model}: trained on dataset={t.get('dataset', '?')} normal="
                f"{t.get('normal', '?')} seed={c['seed']}; features={c['features']} latent={c['latent']} (no "
                f"training; seed {args.seed})")
        log(f"scoring: one pass of the {'AE' if model.ae is not None else 'ResNet-18 + PCA'} over the {len(x_test)} "
            "test samples; the four scores share its features")
        ts = time.time()
        z_test = model.features(x_test, log)
        scores = {v: score_features(model, z_test, v) for v in ("cance", "error", "latnce", "cnce")}   # Table 1
        score_time = time.time() - ts
        check_scores(scores, "the test set")
        k_final = model.heads["cance"][1].K().detach().cpu()
        log("ablation (Table 1): error = z_e alone; latnce = NCE on z_l; cnce = NCE on (z_l, z_e, z_c), both against "
            "N(mu, Sigma); cance = cnce + Eq. (8) + learned K (Eq. 10); each adds ln(nu p_n) of its own noise")
        log("K (cance) = " + " ".join(f"{k:.3f}" for k in k_final.tolist()))
        labels, suffix = y_test.cpu().numpy(), {"cance": "", "error": "_error", "latnce": "_latnce", "cnce": "_cnce"}
        split = args.dataset in TABULAR_DATASETS or args.dataset.endswith(".csv")
        c = model.config
        result = {"method": "cance", "dataset": name, "normal": normal, "seed": args.seed}
        if x_test.dim() == 2:                   # rows: Table 6's F1 (the top r = test anomaly ratio flagged)
            result.update({f"f1{k}": round(float(f1_at_ratio(scores[v], labels)), 4) for v, k in suffix.items()})
            if split:
                result["tabular_split"] = args.tabular_split
            if split and args.tabular_split == "drocc":   # DROCC's released metric is defined for its balanced split
                result["f1_drocc_rule"] = round(float(f1_drocc_rule(scores["cance"], labels)), 4)
        result.update({f"auroc{k}": round(float(roc_auc_score(labels, scores[v])), 4) for v, k in suffix.items()})
        # error_reduce, trunc_loc and nce_select record readings that were once options (older runs carry them)
        result.update({"features": c["features"], "latent": c["latent"], "lam": c["lam"], "error_reduce": "sum",
                       "k_init": round(c["k_init"], 4), "trunc_loc": "mode", "nce_select": "val",
                       "k_mean": round(float(k_final.mean()), 4),
                       "nce_steps": "/".join(str(model.steps[v]) for v in VARIANTS),
                       "iters": f"{c['ae_iters']}/{c['decoder_iters']}/{c['nce_iters']}",
                       "batch_size": model.batch_size,
                       "device": model.device.type, "nce_seconds": round(model.stats.get("nce_seconds", 0.0), 1),
                       "seconds": round(time.time() - t_start, 1),
                       "train_samples_per_s": round(model.stats.get("train_samples_per_s", 0.0), 1),
                       "score_samples_per_s": round(len(x_test) / max(score_time, 1e-9), 1)})
        if args.dataset == "mnist-c":
            result["corruption"] = args.corruption
        run = {"dataset": args.dataset, "normal": normal, "seed": args.seed, "hyperparameters_of": data["row"],
               "device": str(model.device), **({"tabular_split": args.tabular_split} if split else {}),
               **({"label_column": args.label_column, "normal_label": args.normal_label}
                  if args.dataset.endswith(".csv") else {}),
               **({"corruption": args.corruption} if args.dataset == "mnist-c" else {}),
               **({"load_model": args.load_model} if ck is not None else {})}
        config = dict(c, steps=model.steps, **run)
        if args.save_scores:
            variants = {"main": scores["cance"], "error": scores["error"], "latnce": scores["latnce"],
                        "cnce": scores["cnce"]}
            save_scores(args.save_scores, variants, labels, data["index"])
        if args.save_model:
            save(model, args.save_model, run)
        write_result(result, args.json, log, extra=dict(config=config, provenance=provenance(argv)))
        return result
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        print("\ninterrupted: no result was written", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
