"""Anomaly Detection via Autoencoder Composite Features and NCE. Y. Liao, A. J. Brockmeier, arXiv:2502.01920 (2025).

Idea (Sec. 3, Fig. 1). Step 1: an autoencoder (AE) with batch normalisation before its latent and a loss that
decorrelates the latent is trained on normal data; an input x becomes the composite feature z = (z_l, z_e, z_c):
latent code, squared reconstruction error, cosine dissimilarity of x and its reconstruction. Step 2: a network
T_theta learns by noise-contrastive estimation (NCE) against a Gaussian fitted to the training features the log-ratio
of feature and noise density; adding the noise log-density back estimates -ln p_d(z), the anomaly score. CANCE adds
normal points whose (z_e, z_c) are replaced by artificially small values (Eq. 8) and scales the noise covariance by
a diagonal K >= 1 trained adversarially to T_theta (Eq. 7, 10). Reproduces Error / LatNCE / CNCE / CANCE of
Tables 1, 7, 8 (all four on one AE, every run; Table 8: --normal 0,1), Table 3 (--dataset mnist-c), Tables 4, 5, 9
(--features resnet18-pca; Table 5: nine normal classes) and the tabular sets of Table 6 (F1).

Equation map (a user calls fit -> score; save / load keep a fitted model: weights, moments, K, PCA, z-scoring)
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
    - L_error as Eq. (11) prints it (squared norm summed over the input; Appendix A's "mean squared error" would weigh
      L_cov d0 times more); L_cov: unbiased batch covariance. Stage 2: the decoder on L_error, the encoder frozen.
    - Appendix E's selection: the validation loss every tenth of a phase; for NCE, Eq. (9) on the validation
      features (CANCE: augmented) against noise draws through the current L_K, all drawn once with seed + 1.
    - p_t of Eq. (8): location m_z and the training std, as the proof of Proposition 1 writes it; a point is
      augmented with probability 1/2, z_e and z_c together. K starts at psi = 0 (K = 1 + ln 2, --k-init); a psi step
      follows each theta step. Sec. 4.1 names only the augmentation as CANCE's addition: here LatNCE and CNCE keep
      the fixed noise N(mu, Sigma) and only CANCE learns K; each score adds back its own noise's log-density.
    - resnet18-pca (Table 5's CANCE column, in Sec. 4's ResNet-18 part): grey images repeated to 3 channels,
      resized to --image-size, ImageNet-normalised; PCA without whitening.
    - Table 6's preparation is not settled (Sec. 4 cites DAGMM, DROCC, DPAD). Default --tabular-split goad (half the
      normal rows train; the rest and every anomaly test; F1 flags the top r = test anomaly ratio): every Table 6
      entry is attainable under it, while on drocc (DROCC's process_odds.py: every anomaly against as many normal
      rows; adds DROCC's f1_drocc_rule) a random scorer's F1 of 0.5 exceeds Table 6's DAGMM 0.20 and DROCC 0.32.
      fit() z-scores rows with the training rows (a constant column keeps std 1); latent 3 (Arrhythmia 8).
    - Not in the paper: MNIST-C's 15 corruptions pooled (--corruption all); CIFAR-100 and SVHN with CIFAR-10's
      values, digits (offline check) MNIST's. Your own data (--dataset PATH): tables take Thyroid's values, the split
      of common.split_table and z-scoring with the training rows (--raw-features: none); an .npz keeps its split
      (x_val unused: the hold-out is 20% of x_train); grey images (1x28x28) take MNIST's values, RGB CIFAR-10's.
"""
import copy
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.decomposition import PCA
from sklearn.metrics import f1_score, roc_auc_score

from common import (DataError, IMAGE_DATASETS, Progress, TABULAR_DATASETS, as_input, check_finite, check_input_shape,
                    check_scores, command_line, exit_codes, finish, fit_batch, flags, load_checkpoint, load_images,
                    load_mnist_c, load_tabular, load_weights, loaded_note, number, one_class_split, output_flags,
                    parse, parse_normal, read_user_data, row_moments, run_name, save_checkpoint, saving_run, say,
                    set_seed, user_data_kind)

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
FIT = ("features", "latent", "lam", "lr", "nu", "k_init", "seed", "weights", "image_size")   # fit()'s, set by flags
NU = 8                    # noise samples per data sample (Appendix E)
VAL_FRACTION = 0.2        # Appendix E
HELD_OUT = "normal training samples left after Appendix E's 20% hold-out"   # what a batch may not exceed
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
    """x with the row-major strides of its shape. Images permuted from (N, H, W, 1) keep strides torch takes for
    channels-last, whose conv kernels round differently: the same images would train differently."""
    standard = x.stride() == torch.empty(x.shape, device="meta").stride()
    return x if standard else x.clone(memory_format=torch.contiguous_format)


class EstimationNetwork(nn.Module):
    """T_theta(z): the NCE log-ratio ln p_d(z) - ln(nu p_n(z)); MLP d-128-128-1 with SiLU (our choice),
    applied to z standardised with fixed training statistics."""

    def __init__(self, mean, std, hidden=128):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.net = nn.Sequential(nn.Linear(len(mean), hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, z):
        return self.net((z - self.mean) / self.std).squeeze(-1)   # (B,)


class NoiseDistribution(nn.Module):
    """p_nK = N(mu, K Sigma K) with K = diag(1 + softplus(psi)) >= 1 (Sec. 3.4); samples by
    reparameterisation L_K(v) = K (v - mu) + mu with v ~ N(mu, Sigma). learn_k=False fixes K = I."""

    def __init__(self, mean, cov, learn_k, k_init=K_INIT):
        super().__init__()
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
        self.psi = nn.Parameter(torch.full((len(mean),), psi0), requires_grad=learn_k)

    def K(self):
        return 1 + F.softplus(self.psi) if self.learn_k else torch.ones_like(self.psi)   # diagonal of K, each >= 1

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
        self.n, self.mean = 0, torch.zeros(dim, dtype=torch.float64)
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
                      batch_size=128, log=None):
    """Decoupled training (Sec. 3.2, Appendix A): stage 1 trains encoder and decoder on Eq. (11); stage 2 freezes
    the encoder and trains the decoder further on L_error. With x_val each stage keeps its checkpoint of lowest
    validation loss (Appendix E), without it the last. Returns (samples seen, seconds of optimisation steps)."""
    device, log = next(ae.parameters()).device, log or (lambda line: None)
    x_train = standard_layout(as_input(x_train, ae.input_shape, device))
    x_val = None if x_val is None else standard_layout(as_input(x_val, ae.input_shape, device))
    n, train_time = len(x_train), 0.0
    for stage, n_iters in ((1, ae_iters), (2, decoder_iters)):
        if stage == 2:                                 # the encoder frozen; L_cov has no gradient w.r.t. the decoder
            ae.encoder.requires_grad_(False)
        params, stage_lam = (list(ae.parameters()), lam) if stage == 1 else (list(ae.decoder.parameters()), 0.0)
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
    x = standard_layout(as_input(x, ae.input_shape, next(ae.parameters()).device))
    out, progress = [], Progress("AE features", len(x), log)
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
        if not weights_path and os.environ.get("AD_OFFLINE", "") not in ("", "0") and not os.path.exists(cached):
            raise RuntimeError("downloads disabled by AD_OFFLINE")
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True) if weights_path
                              else w.get_state_dict(progress=False))
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
    """512-d embeddings after the last average pool (Sec. 3.2): grey -> 3 channels, resize, ImageNet normalisation."""
    model.eval()
    model.fc = nn.Identity()
    mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
    out, progress = [], Progress("ResNet-18 embeddings", len(x), log)
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
              batch_size=128, val_seed=1, log=None):
    """Train T_theta for one variant on composite features z_train (N, d + 2) (Sec. 3.3-3.4): "latnce" uses z_l alone,
    "cnce" all of z, both against the fixed noise N(mu, Sigma) of the training moments; "cance" adds Eq. (8)'s
    augmentation and learns K. theta minimises Eq. (9); psi ascends Eq. (10), the same objective with the data passed
    through L_K(sg(L_K^-1(z))) (the identity in value, differentiable in K). With z_val, Eq. (9) on it (CANCE:
    augmented, fixed draws seeded val_seed) every tenth of the phase selects the returned (theta, psi) (Appendix E);
    without it the last. Returns (T, noise, selected step)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    z_train, log = torch.as_tensor(z_train, dtype=torch.float32), log or (lambda line: None)
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
        rec_mode, rec_std = lognormal_mode(rec_mean, rec_var), rec_var.sqrt().clamp_min(1e-12)   # p_t at m_z (App. D)
    if z_val is not None:      # fixed validation draws (own generator: the training streams stay unchanged)
        g = torch.Generator().manual_seed(val_seed)
        z_val = torch.as_tensor(z_val, dtype=torch.float32, device=device)
        if learn_k:
            z_val = augment(z_val, d, rec_mode, rec_std, rec_mode, generator=g)   # Eq. (8)
        v_val = noise.sample_v(nu * len(z_val), generator=g)
    best = (math.inf, nce_iters, None)
    n, every, t0 = len(z_train), max(1, nce_iters // 10), time.time()
    progress = Progress(f"{variant} iter", nce_iters, log)
    for it in range(1, nce_iters + 1):
        zb = z_train[torch.randint(n, (batch_size,), device=device)]
        if learn_k:
            zb = augment(zb, d, rec_mode, rec_std, rec_mode)          # Eq. (8)
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


# ------------------------------------------------------------------------------------------ fit, score, save, load

class CANCE:
    """What fit() returns: Step 1's feature map (the AE, or ResNet-18 + PCA; rows: also their z-scoring), per variant
    T_theta with the noise it was trained against (Step 2), config, the selected NCE steps and stats."""

    def __init__(self, input_shape, nu, device):
        self.input_shape, self.nu, self.device, self.image_size = tuple(input_shape), nu, device, 224
        self.ae = self.resnet = self.pca = self.x_mean = self.x_std = self.batch_size = None
        self.heads, self.steps, self.stats, self.config = {}, {}, {}, {}

    @torch.no_grad()
    def features(self, x, log=None):
        """Composite features z = (z_l, z_e, z_c) of x -> (N, d + 2) tensor on the model's device."""
        x = torch.as_tensor(x, dtype=torch.float32)
        if self.x_mean is not None:                  # rows: the training rows' z-scoring, on the CPU as in fit()
            x = (as_input(x, self.input_shape, "cpu") - self.x_mean) / self.x_std
        if self.ae is not None:
            return ae_features(self.ae, x, log=log)
        x = standard_layout(as_input(x, self.input_shape, self.device))
        return pca_features(self.pca, resnet18_embeddings(self.resnet, x, self.image_size, log=log))


def fit(x_normal, *, variants=("cance",), features="ae", latent=6, lam=0.3, ae_iters=5000, decoder_iters=2000,
        nce_iters=5000, lr=1e-3, batch_size=128, nu=NU, k_init=K_INIT, seed=0, weights=None, image_size=224,
        standardize=True, device="cpu", log=None):
    """CANCE (Sec. 3) on normal data x_normal: (N, D) rows or (N, 1, 28, 28) / (N, 3, 32, 32) images in [0, 1]
    (features="resnet18-pca": (N, 1 or 3, H, W); weights: a resnet18 state_dict file, else torchvision's). Rows are
    z-scored with their mean and std (standardize; a constant column keeps std 1, GOAD's norm_data), the model keeps
    the constants. 20% is held out for model selection (Appendix E); Step 1 trains the AE on the rest (or embeds it
    with ResNet-18 and fits PCA), Step 2 one NCE model per variant. seed seeds torch, numpy and random (one seed, one
    result on CPU); device: "cpu" or "cuda"; log: gets each progress line. Defaults: MNIST's -> a CANCE."""
    if any(v not in VARIANTS for v in variants):
        raise ValueError(f"variants must be among {', '.join(VARIANTS)}, got {tuple(variants)}")
    x = standard_layout(torch.as_tensor(x_normal, dtype=torch.float32))
    if features == "ae" and not (x.dim() == 2 or tuple(x.shape[1:]) in ((1, 28, 28), (3, 32, 32))):
        raise ValueError(f"x must have shape {AE_SHAPES} for this model, got {tuple(x.shape)}")
    if features == "resnet18-pca" and not (x.dim() == 4 and x.shape[1] in (1, 3)):
        raise ValueError(f"x must have shape (N, 1, H, W) or (N, 3, H, W) for ResNet-18, got {tuple(x.shape)}")
    device, log = torch.device(device), log or (lambda line: None)
    set_seed(seed)
    perm, n_val = torch.randperm(len(x)), int(round(VAL_FRACTION * len(x)))      # Appendix E: 20% validation
    if n_val < 2 or len(x) - n_val < 2:
        raise DataError(f"{len(x)} normal training samples are too few for a 20% validation split (Appendix E). "
                        "Use at least 8, e.g. pick normal classes with more training samples")
    model = CANCE(x.shape[1:], nu, device)
    if standardize and x.dim() == 2:                                    # rows: z-scored with the training rows
        model.x_mean, model.x_std = row_moments(x.cpu())
        x = (x.cpu() - model.x_mean) / model.x_std
    x_val, x_train = x[perm[:n_val]].to(device), x[perm[n_val:]].to(device)
    model.batch_size = batch_size = fit_batch(batch_size, len(x_train), False, log, HELD_OUT)
    if features == "resnet18-pca" and latent > min(len(x_train), 512):
        raise DataError(f"latent {latent} exceeds what PCA can give from {len(x_train)} training samples of 512 "
                        "features. Pass a smaller latent (--latent)")
    log(f"fit: train={len(x_train)} val={len(x_val)} features={features} latent={latent} lambda={lam:g} nu={nu} "
        f"lr={lr:g} batch={batch_size} k_init={k_init:.3f} iters={ae_iters}/{decoder_iters}/{nce_iters} on {device}")
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
        T, noise, model.steps[variant] = train_nce(z_train, z_val, variant=variant, nu=nu, k_init=k_init, log=log,
                                                   lr=lr, nce_iters=nce_iters, batch_size=batch_size, val_seed=seed + 1)
        model.heads[variant] = (T, noise)
    model.stats = dict(samples=samples, train_seconds=seconds, nce_seconds=time.time() - t0)
    return model


def score(model, x, variant="cance", log=None):
    """Anomaly scores of x as numpy, higher = more anomalous: S_C(z), the estimate of -ln p_d(z) by the variant's
    NCE model (Sec. 3.3), or z_e alone for variant="error" (Table 1's Error). log: progress of the feature pass."""
    return score_features(model, model.features(x, log), variant)


def ablation_scores(model, x, log=None):
    """Table 1's four scores of x from one pass of the feature map -> {"cance", "error", "latnce", "cnce": numpy}."""
    z = model.features(x, log)
    scores = {v: score_features(model, z, v) for v in ("cance", "error", "latnce", "cnce")}
    if log:
        K = " ".join(f"{k:.3f}" for k in model.heads["cance"][1].K().detach().tolist())
        log(f"scoring: one pass of the {'ResNet-18 + PCA' if model.ae is None else 'AE'} over the {len(x)} samples; "
            "ablation (Table 1): error = z_e; latnce, cnce = NCE on z_l, on z, both against N(mu, Sigma); cance = "
            f"cnce + Eq. (8) + learned K = {K}")
    return scores


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
    """Write a fitted model to path (--save-model's format): config = its hyperparameters (under "data": how its
    training data were prepared, e.g. prepare()'s record); preprocess = what scoring needs besides the weights: the
    rows' z-scoring, the PCA, per variant its noise's feature moments (mu, Sigma) and K; state = the weights."""
    pre = {"x_mean": model.x_mean, "x_std": model.x_std, "pca": None, "moments": {}, "K": {}}
    state = {"ae": model.ae.state_dict()} if model.ae is not None else {"resnet": model.resnet.state_dict()}
    if model.pca is not None:
        pre["pca"] = {k: torch.tensor(vars(model.pca)[k + "_"]) for k in ("components", "mean", "explained_variance")}
    for v, (T, noise) in model.heads.items():
        pre["moments"][v], pre["K"][v] = noise.moments, noise.K().detach().cpu()
        state[f"T_{v}"], state[f"noise_{v}"] = T.state_dict(), noise.state_dict()
    config = dict(model.config, steps=model.steps, **({"data": data} if data else {}))
    save_checkpoint(path, "cance", config, pre, state)


def load(path, device="cpu"):
    """A model written by save() or --save-model, on device, ready for score() (no training): the scoring uses the
    checkpoint's constants (the rows' z-scoring, the PCA, the feature moments), never refits them."""
    config, pre, state = map(load_checkpoint(path, "cance").get, ("config", "preprocess", "state"))
    model = CANCE(config["input_shape"], config["nu"], torch.device(device))
    model.config, model.steps, model.batch_size = config, config["steps"], config["batch_size"]
    model.x_mean, model.x_std = pre["x_mean"], pre["x_std"]
    if "ae" in state:
        model.ae = load_weights(build_autoencoder(config["input_shape"], config["latent"]), state["ae"], path)
        model.ae.to(model.device).eval()
    else:
        import torchvision
        model.resnet, model.image_size = torchvision.models.resnet18(weights=None), config["image_size"]
        model.resnet.fc = nn.Identity()                                     # as resnet18_embeddings() left it
        load_weights(model.resnet, state["resnet"], path).to(model.device).eval()
        model.pca = PCA(n_components=config["latent"])
        for k, v in pre["pca"].items():                                    # components_, mean_, explained_variance_
            setattr(model.pca, k + "_", v.numpy())
        model.pca.n_components_, model.pca.n_features_in_ = pre["pca"]["components"].shape
    for v in config["variants"]:
        mean, cov = pre["moments"][v]["mean"], pre["moments"][v]["cov"]
        T = load_weights(EstimationNetwork(mean.float(), torch.ones(len(mean))), state[f"T_{v}"], path)
        noise = load_weights(NoiseDistribution(mean, cov, learn_k=v == "cance"), state[f"noise_{v}"], path)
        model.heads[v] = (T.to(model.device).eval(), noise.to(model.device))
    return model


# ------------------------------------------------------------------------------------------ evaluation

def f1_at_ratio(scores, labels):
    """F1 of the anomaly class with the top r of scores flagged, r = the test set's anomaly ratio (DAGMM/GOAD's)."""
    pred = np.zeros(len(scores), dtype=int)
    pred[np.argsort(-scores)[:int(round(labels.mean() * len(scores)))]] = 1
    return f1_score(labels, pred)


def f1_drocc_rule(scores, labels):
    """The F1 of DROCC's released trainer (drocc_trainer.py, test(metric='F1')): the 80% of test rows with the lowest
    anomaly score are predicted NORMAL, the normal class's F1 reported (on the drocc split at most 0.769)."""
    normal_pred = scores <= np.percentile(scores, 80)
    return f1_score(1 - labels, normal_pred.astype(int))


def ablation_metrics(scores, labels, rows=False, split=None):
    """AUROC of each of the four scores (Table 1); for rows also Table 6's F1 (the top r = the test anomaly ratio
    flagged), and after --tabular-split drocc (split) DROCC's own F1 rule besides."""
    suffix = {"cance": "", "error": "_error", "latnce": "_latnce", "cnce": "_cnce"}
    out = {f"f1{k}": round(float(f1_at_ratio(scores[v], labels)), 4) for v, k in suffix.items()} if rows else {}
    out.update({"tabular_split": split} if split else {})
    out.update({"f1_drocc_rule": round(float(f1_drocc_rule(scores["cance"], labels)), 4)} if split == "drocc" else {})
    return dict(out, **{f"auroc{k}": round(float(roc_auc_score(labels, scores[v])), 4) for v, k in suffix.items()})


# ------------------------------------------------------------------------------------------ data

def check_tabular(X, name):
    """A tabular file must hold finite numbers and at least one non-constant column -> a note on the constant ones."""
    bad = ~torch.isfinite(X)
    if bad.any():
        rows, cols = torch.nonzero(bad, as_tuple=True)
        raise DataError(f"the {name} file holds {int(bad.sum())} NaN/inf value(s) (first at row {int(rows[0])}, "
                        f"column {int(cols[0])}). Replace or drop them (this script does not impute missing values)")
    constant = (X.std(0) == 0) if len(X) > 1 else torch.ones(X.shape[1], dtype=torch.bool)
    if constant.all():
        raise DataError(f"every column of the {name} file is constant: there is nothing to learn. "
                        "Check that the file is the dataset's")
    return f"{int(constant.sum())} of {X.shape[1]} columns are constant (0 after z-scoring)" if constant.any() else ""


def tabular_split(y, seed, protocol="goad"):
    """Tabular train/test split -> (training rows, test rows) as indices. goad (GOAD/DAGMM): a random half of the
    normal rows trains, the other half plus every anomaly is the test set. drocc (DROCC's process_odds.py): the test
    set is every anomaly plus as many random normal rows, the other normal rows train. fit() z-scores the rows."""
    normal_idx, anomaly_idx = torch.nonzero(y == 0).view(-1), torch.nonzero(y == 1).view(-1)
    normal_idx = normal_idx[torch.randperm(len(normal_idx), generator=torch.Generator().manual_seed(seed))]
    n_test_normal = len(anomaly_idx) if protocol == "drocc" else len(normal_idx) - len(normal_idx) // 2
    return normal_idx[n_test_normal:], torch.cat([normal_idx[:n_test_normal], anomaly_idx])


def prepare(dataset, normal=None, root=None, seed=0, protocol="goad", corruption="all", label_column="label",
            normal_label="0", standardize=True):
    """A dataset as Sec. 4 prepares it -> dict(train=normal training samples, test=(x, y) with y = 1 for an anomaly,
    index=each test sample's index in its source, normal=the normal classes (None: your data), row=the PAPER row
    whose values apply, source=what was read, standardize=fit()'s, record=how the data were prepared). Rows stay as
    in the file (fit() z-scores them); images become (N, 1, 28, 28) or (N, 3, 32, 32). The built-in tables are split
    by tabular_split(protocol), your own (.csv, .mat, .npz of X and y) by common.split_table, every script's rule."""
    row, source = dataset, None
    if dataset in TABULAR_DATASETS:
        X, y = load_tabular(dataset, root)
        source, (train_idx, test_idx) = check_tabular(X, dataset) or None, tabular_split(y, seed, protocol)
        parts, normal = dict(train=X[train_idx], test=(X[test_idx], y[test_idx]), index=test_idx), [0]
    elif dataset == "mnist-c":
        names = list(MNIST_C_CORRUPTIONS) if corruption == "all" else corruption.split(",")
        if set(names) - set(MNIST_C_CORRUPTIONS) or len(set(names)) != len(names):
            raise DataError(f"--corruption '{corruption}' is not 'all' or a list of distinct MNIST-C corruptions. Use "
                            f"names from: {', '.join(MNIST_C_CORRUPTIONS)}")
        x_train, x_test, y_test, _ = load_mnist_c(names, root)
        parts, normal = dict(train=x_train, test=(x_test, y_test)), [0]
    elif dataset in PAPER:
        normal = parse_normal("0" if normal is None else normal, IMAGE_DATASETS[dataset][0])
        parts = one_class_split(*load_images(dataset, root), normal)
    else:
        parts = read_user_data(dataset, "cance.py", seed, label_column=label_column, normal_label=normal_label)
        row, source, normal = USER_ROWS[parts["kind"]], parts["source"], None
        if parts["kind"] == "rows":
            note = check_tabular(parts["table"][0] if parts["table"] else parts["train"], dataset)
            source += (f"; {note}" if note else "") + ("; rows z-scored with the training rows' mean and std" if
                                                       standardize else "; rows as they are (--raw-features)")
    record = dict(dataset=dataset, normal=run_name(dataset, normal)[1], seed=seed, hyperparameters_of=row,
                  **({"tabular_split": protocol} if dataset in TABULAR_DATASETS else {}),
                  **({"label_column": label_column, "normal_label": normal_label} if dataset.endswith(".csv") else {}),
                  **({"corruption": corruption} if dataset == "mnist-c" else {}))
    return dict(parts, index=parts.get("index", torch.arange(len(parts["test"][1]))), normal=normal, row=row,
                source=source, standardize=standardize or dataset in PAPER, record=record)


# ------------------------------------------------------------------------------------------ command line

LOADED = ("features", "weights", "image_size", "latent", "lam", "nu", "k_init", "iters", "batch_size", "lr",
          "raw_features")                                              # --load-model takes these from the checkpoint


def defaults(known):
    """Defaults for --dataset: its PAPER row (your own data: its kind's); with --load-model: the checkpoint's."""
    row = PAPER.get(known.dataset) or PAPER[USER_ROWS[user_data_kind(known.dataset) or "grey"]]
    return dict(row, **dict.fromkeys(LOADED if known.load_model else ()))


def parse_args(argv=None):
    p = command_line("cance.py", "CANCE: autoencoder composite features + NCE (Liao & Brockmeier, arXiv:2502.01920)",
                     PAPER, "mnist, fashion-mnist, cifar10, mnist-c (Table 3), thyroid, arrhythmia, abalone (Table 6) "
                     "(Sec. 4); not in the paper: cifar100, svhn (CIFAR-10's values), digits (install check)",
                     "tables take Thyroid's values, grey images (1x28x28) MNIST's, RGB (3x32x32) CIFAR-10's",
                     "random seed; CPU runs repeat exactly (Sec. 4: five runs)", "Table 8: 0,1; Table 5: nine; else")
    p.add_argument("--iters", type=number(int, 1), help="cap on every phase; uncapped: AE stage 1 / stage 2 / each "
                   "NCE model 5000/2000/5000 on images, 2000/1000/3000 on tables (not in the paper: chosen)")
    p.add_argument("--batch-size", type=number(int, 2), help="AE and NCE data batch (not in the paper: chosen)")
    p.add_argument("--latent", type=number(int, 1), help="latent size d: MNIST, F-MNIST 6, CIFAR-10 64 (Appendix G, "
                   "I), MNIST-C 10 (Sec. 4); not in the paper (chosen): tables 3 (arrhythmia 8), cifar100, svhn 64")
    p.add_argument("--lam", type=number(float, 0), help="lambda of Eq. (11): MNIST, F-MNIST, MNIST-C 0.3, CIFAR-10 "
                   "0.004 (Appendix G, I); not in the paper (chosen): tables 0.3, cifar100, svhn 0.004")
    p.add_argument("--nu", type=number(int, 1), default=NU, help="noise samples per data sample (Appendix E)")
    p.add_argument("--lr", type=number(float, 0, low_open=True), default=1e-3,
                   help="learning rate of Adam (AE) and AdamW (theta, psi; Sec. 3.4) (not in the paper: chosen)")
    p.add_argument("--k-init", type=number(float, 1, low_open=True), default=K_INIT,
                   help="initial K_jj of CANCE's noise (Sec. 3.4 asks K_jj >= 1; not in the paper: psi = 0)")
    p.add_argument("--features", default="ae", choices=["ae", "resnet18-pca"], help="the composite-feature AE, or "
                   "ImageNet ResNet-18 embeddings + PCA to --latent dimensions (Sec. 3.2; Tables 4, 5, 9)")
    p.add_argument("--weights", help="resnet18-pca: a resnet18 state_dict (not in the paper: else torchvision's)")
    p.add_argument("--image-size", type=number(int, 32), default=224,
                   help="resnet18-pca: side the images are resized to (ImageNet's; smaller is not the paper's)")
    p.add_argument("--tabular-split", default="goad", choices=["goad", "drocc"], help="Table 6's preparation of a "
                   "built-in table: goad = half the normal rows train, the rest + every anomaly test; drocc = every "
                   "anomaly + as many normal rows test (not in the paper: Sec. 4 cites both; goad fits Table 6)")
    p.add_argument("--corruption", default="all", help="mnist-c: 'all' (pooled) or a comma list of the corruptions "
                   "that are the anomalies (not in the paper: Sec. 4 does not say)")
    output_flags(p, "scores (CANCE), scores_error, scores_latnce, scores_cnce", "the AE or ResNet-18 + PCA, the rows' "
                 "z-scoring, each T_theta with its moments and K", "; --seed and --tabular-split: the checkpoint's")
    args = parse(p, argv, defaults, LOADED)
    own, tables, name = args.dataset not in PAPER, args.dataset in TABULAR_DATASETS, args.dataset
    kind, idle = user_data_kind(name) if own else None, [k for k in ("weights", "image_size") if k in args.given]
    for wrong, message in (
            (args.features == "resnet18-pca" and (tables or kind == "rows"), f"--features resnet18-pca takes images "
             f"(image datasets only), and '{name}' holds feature rows. Drop it: the AE takes rows"),
            (idle and args.features != "resnet18-pca", f"{flags(idle)}: for --features resnet18-pca only. Drop it"),
            ("corruption" in args.given and name != "mnist-c", f"--corruption picks MNIST-C's anomalies, and "
             f"--dataset is '{name}'. Use --dataset mnist-c, or drop --corruption"),
            ("tabular_split" in args.given and not tables, f"--tabular-split splits a tabular set of Table 6, and "
             f"'{name}' is none{' (your own tables follow the split rule of every script)' if own else ''}. Drop it"),
            (args.normal not in (None, "0") and (tables or name == "mnist-c"), f"--normal is fixed for {name} (label "
             f"0 is normal; mnist-c: the MNIST images); got '{args.normal}'. Leave --normal out")):
        if wrong:
            p.error(message)
    return args


def main(argv=None):
    """The command line: prepare the data, fit (or load) the model, score the test set with all four variants."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    with exit_codes():
        model = None if not args.load_model else load(args.load_model, args.device)     # --load-model: no training
        saving_run(args, model.config.get("data") if model else None, ("seed", "tabular_split"))   # its split
        data = prepare(args.dataset, args.normal, args.data_root, args.seed, args.tabular_split, args.corruption,
                       args.label_column, args.normal_label,       # a loaded model: its own z-scoring
                       model.x_mean is not None if model else not args.raw_features)
        (x_test, y_test), (name, normal), record = data["test"], run_name(args.dataset, data["normal"]), data["record"]
        if data["source"]:
            say(f"cance: read {name}: {data['source']}" + ("" if model else f"; hyperparameters of {data['row']}"))
        say(f"cance: dataset={name} normal={normal} test={len(x_test)} (anomalies {int(y_test.sum())})")
        if model is None:
            n = len(data["train"]) - int(round(VAL_FRACTION * len(data["train"])))       # Appendix E's hold-out
            caps = {k: min(vars(args)[k], args.iters or math.inf) for k in ("ae_iters", "decoder_iters", "nce_iters")}
            model = fit(data["train"], variants=VARIANTS, **{k: getattr(args, k) for k in FIT}, **caps,
                        batch_size=fit_batch(args.batch_size, n, "batch_size" in args.given, say, HELD_OUT),
                        standardize=data["standardize"], device=args.device, log=say)
        else:
            check_input_shape(model.input_shape, x_test.shape[1:], args.load_model, name)
            if set(model.heads) != set(VARIANTS):
                raise DataError(f"'{args.load_model}' holds the variants {', '.join(model.heads)}; the command line "
                                f"reports all of {', '.join(VARIANTS)}. Save a model fitted with variants=VARIANTS")
            say(loaded_note(args.load_model, model.config.get("data", {})))
        ts, scores = time.time(), ablation_scores(model, x_test, log=say)       # Table 1: one feature pass, four scores
        score_time, labels, c, st = time.time() - ts, y_test.cpu().numpy(), model.config, model.stats
        check_scores(scores, "the test set")
        result = {"method": "cance", "dataset": name, "normal": normal, "seed": args.seed,
                  **ablation_metrics(scores, labels, x_test.dim() == 2, record.get("tabular_split")),
                  # error_reduce, trunc_loc, nce_select: readings that were once options (older runs carry them)
                  "features": c["features"], "latent": c["latent"], "lam": c["lam"], "error_reduce": "sum",
                  "k_init": round(c["k_init"], 4), "trunc_loc": "mode", "nce_select": "val",
                  "k_mean": round(float(model.heads["cance"][1].K().detach().mean()), 4),
                  "nce_steps": "/".join(str(model.steps[v]) for v in VARIANTS),
                  "iters": f"{c['ae_iters']}/{c['decoder_iters']}/{c['nce_iters']}", "batch_size": model.batch_size,
                  "device": args.device.type, "nce_seconds": round(st["nce_seconds"], 1) if st else None,
                  "corruption": record.get("corruption")}
        run = dict(record, device=str(model.device), **({"load_model": args.load_model} if args.load_model else {}))
        return finish(args, argv, result, dict(c, steps=model.steps, **run), dict(main=scores.pop("cance"), **scores),
                      labels, data["index"], lambda path: save(model, path, run),
                      (st.get("samples", 0), st.get("train_seconds"), len(x_test), score_time))


if __name__ == "__main__":
    main()
