"""Anomaly Detection via Autoencoder Composite Features and NCE — Yalin Liao and Austin J. Brockmeier,
arXiv:2502.01920 (2025).

An autoencoder (AE) is trained on normal data with a loss that decorrelates its batch-normalised latent.
Each input x is then described by a composite feature z = (z_l, z_e, z_c): the latent code z_l, the
reconstruction error z_e and the cosine dissimilarity z_c between x and its reconstruction x'. A small
network T_theta learns, by noise-contrastive estimation (NCE) against a Gaussian fitted to the training
features, the log-ratio between the density of normal composite features and the noise density; adding the
noise log-density back gives an estimate of -ln p_d(z), the anomaly score. Two additions ("CANCE") reduce
false negatives: normal points whose reconstruction features are replaced by artificially small values
(so the learned density keeps decreasing as the error grows), and a noise covariance whose per-axis scale
K >= 1 is optimised adversarially against T_theta.

What this file reproduces: the four-way ablation of Table 1 (Error, LatNCE, CNCE, CANCE), printed by every
run on one shared AE; the unimodal (--normal 3) and multimodal (--normal 0,1) image settings, including
the nine-normal-class setting of Table 5 (--normal 0,1,2,3,4,6,7,8,9); the per-class MNIST ablation of
Table 7; the ResNet-18 + PCA feature variant (--features resnet18-pca); and the tabular sets (Thyroid,
Arrhythmia, Abalone) with F1. The paper reports the mean +- std of five runs: run --seed 0..4.

Equation map
    Eq. (11) L = L_error + lambda * L_cov ........................ ae_loss()
    Eq. (12) L_cov = ||off(Sigma)||_F^2 / (d(d-1)) ............... covariance_loss()
    composite feature z = (z_l, z_e, z_c) (Sec. 3) .............. composite_features()
    Eq. (13)-(14) batch-wise mean and covariance (Appendix B) ... RunningMoments.update()
    Appendix C log-normal mode m_z .............................. lognormal_mode()
    Eq. (8) augmentation of (z_e, z_c) ........................... augment()
    noise p_nK = N(mu, K Sigma K), L_K and its inverse (Sec. 3.4)  NoiseDistribution
    Eq. (9) NCE loss for T_theta ................................. nce_loss()
    Eq. (10) noise update, data term through sg(L_K^-1(z)) ....... train_nce(), the psi step
    anomaly score S_C(z) = -(T_theta(z) + ln(nu p_nK(z))) ........ anomaly_score()
    Appendix A/E decoupled AE training, 20% validation ........... train_autoencoder()
    Table 1 ablation ............................................. run()

Choices where the paper is silent (or where this file had to decide)
    - AE architecture (the paper gives none): a DCGAN/LSA-style convolutional AE, ConvAE below (3 strided
      convolutions 32-64-128 with BN and LeakyReLU(0.2), a linear layer to the latent, then BatchNorm1d
      without affine parameters directly before the latent; the decoder mirrors it and ends in a sigmoid,
      inputs are left in [0, 1]). Tabular sets: MLP D-128-64-latent / latent-64-128-D with BN and ReLU,
      inputs z-scored with the training rows' mean and std.
    - L_cov uses the unbiased (B-1) batch covariance. Stage 2 (decoder only, encoder frozen in eval mode)
      minimises L_error alone: L_cov does not depend on the decoder.
    - Iteration budgets, learning rate and batch size are not given: Adam/AdamW lr 1e-3, batch 128;
      images: 5000 stage-1, 2000 stage-2 and 5000 NCE iterations, tabular: 2000 / 1000 / 3000 (--iters caps
      every phase). Validation loss is computed every tenth of a phase; the best checkpoint is kept.
    - T_theta: MLP (d_z - 128 - 128 - 1, SiLU) applied to z standardised with the training mean and std
      (a fixed reparameterisation of the input; the density is still that of z).
    - Truncated normals of Eq. (8): N(mean_z, std_z^2) of the feature's training values, truncated to
      [0, m_z]; each normal point is augmented with probability 1/2, both features replaced together.
    - K = diag(1 + softplus(psi)) starts at psi = 0 (K = 1.69); psi ascends the Eq. (9)/(10) objective
      (adversarial to theta), one psi step after each theta step, both AdamW with --lr.
    - Ablation: LatNCE and CNCE use the fixed noise N(mu, Sigma) (K = I); only CANCE learns K and uses the
      augmentation. Every score adds back the log-density of the noise its T_theta was trained against.
    - The NCE model and the moments are fitted on the AE's training part (80% of the normal training data);
      the same part is used to fit PCA for --features resnet18-pca (the validation part is then unused).
    - --features resnet18-pca: grey images are repeated to 3 channels, resized to --image-size (224) and
      ImageNet-normalised; PCA from scikit-learn without whitening; z_e, z_c compare the 512-d embedding with
      its PCA reconstruction.
    - Tabular protocol (DAGMM/GOAD preparation): a random half of the normal rows is the training data, the
      test set is the other half plus all anomalies; F1 flags the top r of test scores as anomalies, r = the
      test set's anomaly proportion. Latent sizes: thyroid 3, abalone 3, arrhythmia 8; lambda 0.3 (chosen).
    - CIFAR-100 (20 superclasses) and SVHN use CIFAR-10's latent and lambda; digits (offline check) MNIST's.
    - RESULT: seconds is the whole run; train_samples_per_s counts AE training samples per second of AE
      optimisation steps (resnet18-pca: training images embedded per second); nce_seconds covers the three
      NCE models and their scoring; score_samples_per_s = test images per second of computing their
      composite features (AE forward, or ResNet-18 + PCA) and the CANCE score.

Run:  python cance.py --dataset mnist --normal 3
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
from sklearn.decomposition import PCA
from sklearn.metrics import f1_score, roc_auc_score

from common import DataError, IMAGE_DATASETS, TABULAR_DATASETS, load_images, load_tabular, one_class_split, parse_normal

# the paper's latent size and lambda for MNIST / Fashion-MNIST / CIFAR-10; the rest are our choices (see docstring)
PAPER = {
    "mnist":         dict(latent=6, lam=0.3),
    "fashion-mnist": dict(latent=6, lam=0.3),      # "as MNIST"
    "cifar10":       dict(latent=64, lam=0.004),
    "cifar100":      dict(latent=64, lam=0.004),   # not in the paper: CIFAR-10's values
    "svhn":          dict(latent=64, lam=0.004),   # not in the paper: CIFAR-10's values
    "digits":        dict(latent=6, lam=0.3),      # offline install check, MNIST's values
    "thyroid":       dict(latent=3, lam=0.3),      # chosen
    "abalone":       dict(latent=3, lam=0.3),      # chosen
    "arrhythmia":    dict(latent=8, lam=0.3),      # chosen
}
# phase lengths (AE stage 1, AE stage 2, each NCE model): not in the paper, chosen
PHASES = {"image": (5000, 2000, 5000), "tabular": (2000, 1000, 3000)}
VAL_FRACTION = 0.2  # Appendix E


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="CANCE: autoencoder composite features + NCE (Liao & Brockmeier)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=list(PAPER),
                   help="mnist, fashion-mnist, cifar10 (Sec. 4); thyroid, arrhythmia, abalone (tabular, F1); "
                        "cifar100, svhn (CIFAR-10 settings, our choice); digits (offline install check)")
    p.add_argument("--normal", default="0",
                   help="normal class, or a comma list for multi-class normal data (Sec. 4: one class, or "
                        "several, e.g. 0,1,2,3,4,6,7,8,9 for Table 5); tabular sets: must be 0 (label 0 = normal)")
    p.add_argument("--data-root", default=None,
                   help="datasets in torchvision's layout (default: $AD_DATA_ROOT, else ./data)")
    p.add_argument("--seed", type=int, default=0, help="random seed (CPU runs are repeatable); the paper "
                   "reports mean +- std of five runs")
    p.add_argument("--device", default="auto", help="auto = cuda if available, else cpu")
    p.add_argument("--iters", type=int, default=None,
                   help="caps every phase (AE stage 1, AE stage 2, each NCE model); default per phase, not in "
                        "the paper: images 5000/2000/5000, tabular 2000/1000/3000")
    p.add_argument("--batch-size", type=int, default=128,
                   help="AE batch and NCE data batch (not in the paper: chosen)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="learning rate of Adam (AE) and AdamW (theta and psi) (not in the paper: chosen)")
    p.add_argument("--latent", type=int, default=None,
                   help="latent size (the paper's values): MNIST and Fashion-MNIST 6, CIFAR-10 64; tabular: "
                        "thyroid 3, abalone 3, arrhythmia 8 (chosen)")
    p.add_argument("--lam", type=float, default=None,
                   help="weight lambda of L_cov in Eq. (11) (the paper's values): MNIST and Fashion-MNIST 0.3, "
                        "CIFAR-10 0.004; tabular 0.3 (chosen)")
    p.add_argument("--nu", type=int, default=8, help="noise samples per data sample (Sec. 3.3-3.4)")
    p.add_argument("--features", default="ae", choices=["ae", "resnet18-pca"],
                   help="ae: the composite-feature autoencoder (Sec. 3); resnet18-pca: ImageNet ResNet-18 "
                        "embeddings with PCA to --latent dimensions (Sec. 4, pretrained variant)")
    p.add_argument("--weights", default=None,
                   help="resnet18-pca: a torchvision resnet18 state_dict file (default: torchvision's "
                        "IMAGENET1K_V1 download, or its cached copy)")
    p.add_argument("--image-size", type=int, default=224,
                   help="resnet18-pca: input resolution the images are resized to (ImageNet size; smaller "
                        "is faster and not the paper's setting)")
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


def check_finite(value, where):
    if not math.isfinite(value):
        raise FloatingPointError(f"training diverged: {where} is {value}; try a smaller --lr")


# ------------------------------------------------------------------------------------------ autoencoders

class ConvAE(nn.Module):
    """DCGAN/LSA-style convolutional AE for 28x28 or 32x32 images (the paper gives no architecture).
    Batch normalisation (no affine) sits directly before the latent (Appendix A)."""

    def __init__(self, channels, side, latent):
        super().__init__()
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
        self.encoder = nn.Sequential(nn.Linear(dim, 128), nn.BatchNorm1d(128), nn.ReLU(),
                                     nn.Linear(128, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                     nn.Linear(64, latent), nn.BatchNorm1d(latent, affine=False))
        self.decoder = nn.Sequential(nn.Linear(latent, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                     nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, dim))

    def forward(self, x):
        z = self.encoder(x)
        return self.decoder(z), z


# ------------------------------------------------------------------------------------------ AE losses, features

def covariance_loss(z):
    """L_cov = ||off(Sigma)||_F^2 / (d(d-1)): mean squared off-diagonal of the latent batch covariance."""
    d = z.shape[1]
    if d < 2:
        return z.new_zeros(())
    zc = z - z.mean(0)
    sigma = zc.T @ zc / (len(z) - 1)                        # (d, d), unbiased batch covariance
    off = sigma - torch.diag(torch.diagonal(sigma))
    return (off ** 2).sum() / (d * (d - 1))                 # Eq. (12)


def ae_loss(x, x_rec, z, lam):
    """L = L_error + lambda * L_cov, L_error the mean squared reconstruction error."""
    error = ((x_rec - x) ** 2).mean()                       # Eq. (11), L_error
    cov = covariance_loss(z)                                # Eq. (12)
    return error + lam * cov, error, cov                    # Eq. (11)


def composite_features(x, x_rec, z_l):
    """z = (z_l, z_e, z_c): latent, ||x - x'||^2 / d0 and (1 - cos(x, x')) / 2 (Sec. 3). -> (B, d + 2)"""
    x, x_rec = x.flatten(1), x_rec.flatten(1)               # (B, d0)
    z_e = ((x - x_rec) ** 2).sum(1) / x.shape[1]            # reconstruction error
    z_c = 0.5 * (1 - F.cosine_similarity(x, x_rec, dim=1))  # cosine dissimilarity
    return torch.cat([z_l, z_e[:, None], z_c[:, None]], 1)


class RunningMoments:
    """Mean and covariance accumulated batch by batch (Appendix B, Eq. 13-14), in float64, so the training
    features never need to be in memory at once. Merge rule for a batch of b rows with mean m_b and
    scatter M_b:  n' = n + b,  mu' = mu + (m_b - mu) b / n',  M' = M + M_b + (m_b - mu)(m_b - mu)^T n b / n'."""

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


def truncated_normal(n, mean, std, low, high):
    """n draws of N(mean, std^2) restricted to [low, high] (inverse-CDF sampling, torch's trunc_normal_)."""
    out = torch.empty(n)
    nn.init.trunc_normal_(out, mean=float(mean), std=float(std), a=float(low), b=float(high))
    return out


def augment(z, latent, mean, std, mode, p=0.5):
    """Eq. (8): with probability p, replace (z_e, z_c) of a normal point by draws from N(mean, std^2)
    truncated to [0, m_z], per feature; mean, std, mode are the training values of (z_e, z_c)."""
    z = z.clone()
    chosen = torch.rand(len(z), device=z.device) < p
    k = int(chosen.sum())
    for j in range(2):                                      # j = 0: z_e, j = 1: z_c
        draws = truncated_normal(k, mean[j], std[j], 0.0, mode[j]).to(z.device, z.dtype)
        z[chosen, latent + j] = draws                       # Eq. (8)
    return z


# ------------------------------------------------------------------------------------------ NCE

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

    def __init__(self, mean, cov, learn_k):
        super().__init__()
        d = len(mean)
        # a jitter relative to each feature's own variance (z_e's variance can be ~1e-6 of z_l's)
        jitter = torch.diag(1e-9 * torch.diagonal(cov) + 1e-30)
        self.register_buffer("mean", mean.float())
        self.register_buffer("chol64", torch.linalg.cholesky(cov + jitter))   # Sigma = L L^T
        self.register_buffer("chol", self.chol64.float())
        self.learn_k = learn_k
        self.psi = nn.Parameter(torch.zeros(d), requires_grad=learn_k)

    def K(self):
        if not self.learn_k:
            return torch.ones_like(self.psi)
        return 1 + F.softplus(self.psi)                     # diagonal of K, each >= 1

    def L_K(self, v, K):
        return K * (v - self.mean) + self.mean              # L_K(v) = K (v - mu) + mu

    def L_K_inverse(self, z, K):
        return (z - self.mean) / K + self.mean              # L_K^-1(z) = K^-1 (z - mu) + mu

    def sample_v(self, n):
        eps = torch.randn(n, len(self.mean), device=self.mean.device)
        return self.mean + eps @ self.chol.T                # v ~ N(mu, Sigma)

    def log_prob(self, z):
        """ln p_nK(z), in float64."""
        K = self.K().detach().double()
        scale_tril = K[:, None] * self.chol64               # K L, so the covariance is K Sigma K
        dist = torch.distributions.MultivariateNormal(self.mean.double(), scale_tril=scale_tril)
        return dist.log_prob(z.double())


def nce_loss(t_data, t_noise, nu):
    """Eq. (9): -E_data[ln sigma(T)] - nu E_noise[ln(1 - sigma(T))], with nu noise samples per data sample."""
    return -F.logsigmoid(t_data).mean() - nu * F.logsigmoid(-t_noise).mean()   # Eq. (9)


@torch.no_grad()
def anomaly_score(T, noise, z, nu, chunk=4096):
    """S_C(z) = -(T_theta(z) + ln(nu p_nK(z))): the NCE estimate of -ln p_d(z); p_nK is the noise this T_theta
    was trained against (its final K; K = I for LatNCE/CNCE)."""
    T.eval()
    out = []
    for i in range(0, len(z), chunk):
        zb = z[i:i + chunk]
        out.append(-(T(zb).double() + math.log(nu) + noise.log_prob(zb)))
    return torch.cat(out).cpu().numpy()


def train_nce(name, z_train, moments, args, learn_k, augment_latent=None, log=print):
    """Train T_theta (and, with learn_k, the noise scale psi) on training features z_train (N, d).
    theta minimises Eq. (9); psi ascends Eq. (10), the same objective with the data passed through
    L_K(sg(L_K^-1(z))) (the identity in value, but differentiable in K). Alternating AdamW steps."""
    device = z_train.device
    mean, cov = moments.mean, moments.covariance()
    std = torch.sqrt(torch.diagonal(cov)).clamp_min(1e-12)
    T = EstimationNetwork(mean.float(), std.float()).to(device)
    noise = NoiseDistribution(mean, cov, learn_k).to(device)
    opt_theta = torch.optim.AdamW(T.parameters(), lr=args.lr)
    opt_psi = torch.optim.AdamW([noise.psi], lr=args.lr) if learn_k else None
    if augment_latent is not None:          # Appendix C: training mean, variance and log-normal mode of (z_e, z_c)
        rec_mean, rec_var = mean[augment_latent:].float(), torch.diagonal(cov)[augment_latent:].float()
        rec_mode = lognormal_mode(rec_mean, rec_var)
    n_iters, n, t0 = args.nce_iters, len(z_train), time.time()
    every = max(1, n_iters // 10)
    for it in range(1, n_iters + 1):
        zb = z_train[torch.randint(n, (args.batch_size,), device=device)]
        if augment_latent is not None:
            zb = augment(zb, augment_latent, rec_mean, rec_var.sqrt(), rec_mode)     # Eq. (8)
        v = noise.sample_v(args.nu * len(zb))
        # theta step: minimise Eq. (9) with noise samples L_K(v) ~ p_nK (K held fixed)
        T.train()
        loss = nce_loss(T(zb), T(noise.L_K(v, noise.K().detach())), args.nu)        # Eq. (9)
        opt_theta.zero_grad(set_to_none=True)
        loss.backward()
        opt_theta.step()
        if learn_k:
            # psi step: ascend Eq. (10); the data term goes through L_K(sg(L_K^-1(z)))
            K = noise.K()
            z_through = noise.L_K(noise.L_K_inverse(zb, K).detach(), K)              # Eq. (10), data term
            objective = nce_loss(T(z_through), T(noise.L_K(v, K)), args.nu)          # Eq. (10)
            opt_psi.zero_grad(set_to_none=True)
            (-objective).backward()                                                 # adversarial: ascend
            opt_psi.step()
            T.zero_grad(set_to_none=True)
        if it % every == 0 or it == n_iters:
            value = loss.item()
            check_finite(value, f"the {name} NCE loss (Eq. 9) at iteration {it}")
            k_text = f" k_mean={noise.K().mean().item():.4f}" if learn_k else ""
            log(f"{name} iter {it}/{n_iters} loss={value:.4f}{k_text} elapsed={time.time() - t0:.1f}s", flush=True)
    return T, noise


# ------------------------------------------------------------------------------------------ AE training

@torch.no_grad()
def validation_loss(ae, x_val, lam, chunk=1024):
    """Eq. (11) on the whole validation set (eval mode); returns (L, L_error, L_cov)."""
    ae.eval()
    sq, zs = 0.0, []
    for i in range(0, len(x_val), chunk):
        xb = x_val[i:i + chunk]
        x_rec, z = ae(xb)
        sq += float(((x_rec - xb) ** 2).sum())
        zs.append(z)
    error = sq / x_val.numel()
    cov = float(covariance_loss(torch.cat(zs))) if len(x_val) > 1 else 0.0
    ae.train()
    return error + lam * cov, error, cov


def train_autoencoder(ae, x_train, x_val, args, log=print):
    """Decoupled training (Appendix A/E): stage 1 trains encoder and decoder on Eq. (11); stage 2 freezes
    the encoder and trains the decoder further on L_error. Each stage keeps the checkpoint with the lowest
    validation loss. Returns (AE samples processed, seconds spent in optimisation steps)."""
    n, samples, train_time = len(x_train), 0, 0.0
    for stage, n_iters in ((1, args.ae_iters), (2, args.decoder_iters)):
        if stage == 1:
            params, lam = list(ae.parameters()), args.lam
        else:
            for p in ae.encoder.parameters():
                p.requires_grad_(False)
            params, lam = list(ae.decoder.parameters()), 0.0      # L_cov has no gradient w.r.t. the decoder
        opt = torch.optim.Adam(params, lr=args.lr)
        best = (validation_loss(ae, x_val, lam)[0], 0, copy.deepcopy(ae.state_dict()))
        every, t0 = max(1, n_iters // 10), time.time()
        for it in range(1, n_iters + 1):
            ts = time.time()
            ae.train()
            if stage == 2:
                ae.encoder.eval()                                  # frozen: BN running statistics fixed too
            xb = x_train[torch.randint(n, (args.batch_size,), device=x_train.device)]
            x_rec, z = ae(xb)
            loss, error, cov = ae_loss(xb, x_rec, z, lam)          # Eq. (11)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            train_time += time.time() - ts
            samples += len(xb)
            if it % every == 0 or it == n_iters:
                value = loss.item()
                check_finite(value, f"the AE loss (Eq. 11) in stage {stage} at iteration {it}")
                val, val_error, val_cov = validation_loss(ae, x_val, lam)
                check_finite(val, f"the AE validation loss in stage {stage} at iteration {it}")
                if val < best[0]:
                    best = (val, it, copy.deepcopy(ae.state_dict()))
                cov_text = f" cov={cov.item():.5f}" if stage == 1 else ""     # stage 2 trains on L_error alone
                log(f"ae{stage} iter {it}/{n_iters} loss={value:.5f} error={error.item():.5f}{cov_text} "
                    f"val_loss={val:.5f} best={best[0]:.5f}@{best[1]} elapsed={time.time() - t0:.1f}s", flush=True)
        ae.load_state_dict(best[2])
    ae.eval()
    return samples, train_time


@torch.no_grad()
def ae_features(ae, x, moments=None, chunk=1024):
    """Composite features of every row of x, in chunks; updates moments (Eq. 13-14) when given."""
    ae.eval()
    out = []
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        x_rec, z_l = ae(xb)
        z = composite_features(xb, x_rec, z_l)
        if moments is not None:
            moments.update(z)
        out.append(z)
    return torch.cat(out)


# ------------------------------------------------------------------------------------------ ResNet-18 + PCA

def load_resnet18(weights_path):
    """torchvision's resnet18 with ImageNet weights from --weights or torchvision's download/cache."""
    import torchvision
    model = torchvision.models.resnet18(weights=None)
    if weights_path:
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as e:
            raise DataError(f"could not load resnet18 weights from '{weights_path}': {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from None
        return model
    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(w.url))
    offline = os.environ.get("AD_OFFLINE", "") not in ("", "0")
    if offline and not os.path.exists(cached):
        why = "downloads disabled by AD_OFFLINE"
    else:
        try:
            model.load_state_dict(w.get_state_dict(progress=False))
            return model
        except Exception as e:
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    raise DataError(f"the ImageNet ResNet-18 weights were not found at '{cached}' and could not be downloaded "
                    f"({why}). Download {w.url} elsewhere and pass it with --weights PATH (a torchvision "
                    f"resnet18 state_dict), or put it at '{cached}'.")


@torch.no_grad()
def resnet18_embeddings(model, x, size, chunk=256):
    """512-d embeddings after the last average pool: grey -> 3 channels, resize, ImageNet normalisation."""
    model.eval()
    model.fc = nn.Identity()
    mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        if xb.shape[1] == 1:
            xb = xb.repeat(1, 3, 1, 1)                                                  # (B, 3, H, W)
        xb = F.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False)  # (B, 3, size, size)
        out.append(model((xb - mean) / std))                                            # (B, 512)
    return torch.cat(out)


def pca_features(pca, e, moments=None, chunk=4096):
    """Composite features from embeddings e: z_l = PCA projection, x' = PCA reconstruction of e."""
    out = []
    for i in range(0, len(e), chunk):
        eb = e[i:i + chunk]
        z_l = pca.transform(eb.cpu().numpy())
        rec = pca.inverse_transform(z_l)
        z = composite_features(eb, torch.as_tensor(rec, dtype=eb.dtype, device=eb.device),
                               torch.as_tensor(z_l, dtype=eb.dtype, device=eb.device))
        if moments is not None:
            moments.update(z)
        out.append(z)
    return torch.cat(out)


# ------------------------------------------------------------------------------------------ data, evaluation

def tabular_split(X, y, seed):
    """DAGMM/GOAD preparation: a random half of the normal rows trains; the other half plus every anomaly
    is the test set. Features are z-scored with the training rows' mean and std."""
    g = torch.Generator().manual_seed(seed)
    normal_idx = torch.nonzero(y == 0).view(-1)
    normal_idx = normal_idx[torch.randperm(len(normal_idx), generator=g)]
    half = len(normal_idx) // 2
    train_idx = normal_idx[:half]
    test_idx = torch.cat([normal_idx[half:], torch.nonzero(y == 1).view(-1)])
    mean, std = X[train_idx].mean(0), X[train_idx].std(0).clamp_min(1e-6)
    return (X[train_idx] - mean) / std, ((X[test_idx] - mean) / std, y[test_idx])


def f1_at_ratio(scores, labels):
    """F1 when the top r of scores are flagged, r = the test set's anomaly proportion."""
    pred = np.zeros(len(scores), dtype=int)
    pred[np.argsort(-scores)[:int(round(labels.mean() * len(scores)))]] = 1
    return f1_score(labels, pred)


def prepare(args):
    """(normal training data, (test data, test anomaly labels), normal classes)."""
    if args.dataset in TABULAR_DATASETS:
        if args.normal != "0":
            raise DataError(f"--normal is fixed for tabular sets (label 0 = normal); got '{args.normal}'")
        X, y = load_tabular(args.dataset, args.data_root)
        x_train, test = tabular_split(X, y, args.seed)
        return x_train, test, [0]
    x_tr, y_tr, x_te, y_te = load_images(args.dataset, args.data_root)
    normal = parse_normal(args.normal, IMAGE_DATASETS[args.dataset][0])
    split = one_class_split(x_tr, y_tr, x_te, y_te, normal)
    return split["train"], split["test"], normal


# ------------------------------------------------------------------------------------------ main

def run(args, log=print):
    t_start = time.time()
    tabular = args.dataset in TABULAR_DATASETS
    for k, v in PAPER[args.dataset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    phases = PHASES["tabular" if tabular else "image"]
    if args.iters is not None and args.iters < 1:
        raise DataError(f"--iters must be at least 1 (got {args.iters})")
    args.ae_iters, args.decoder_iters, args.nce_iters = (min(p, args.iters or p) for p in phases)
    if args.batch_size < 2:
        raise DataError("--batch-size must be at least 2: batch normalisation and the batch covariance need two")
    if args.latent < 1 or args.nu < 1 or args.lr <= 0 or args.lam < 0 or args.image_size < 32:
        raise DataError("need --latent >= 1, --nu >= 1, --lr > 0, --lam >= 0 and --image-size >= 32")
    if args.features == "resnet18-pca" and tabular:
        raise DataError("--features resnet18-pca is for image datasets")
    set_seed(args.seed)
    device = pick_device(args.device)
    x_normal, (x_test, y_test), normal = prepare(args)
    # Appendix E: 20% of the normal training data is the validation set
    perm = torch.randperm(len(x_normal))
    n_val = int(round(VAL_FRACTION * len(x_normal)))
    if n_val < 2 or len(x_normal) - n_val < 2:
        raise DataError(f"{len(x_normal)} normal training samples are too few for a 20% validation split")
    x_val, x_train = x_normal[perm[:n_val]].to(device), x_normal[perm[n_val:]].to(device)
    x_test = x_test.to(device)
    if args.features == "resnet18-pca" and args.latent > min(len(x_train), 512):
        raise DataError(f"--latent {args.latent} exceeds what PCA can give from {len(x_train)} training samples")
    log(f"cance: dataset={args.dataset} normal={','.join(map(str, normal))} features={args.features} "
        f"train={len(x_train)} val={len(x_val)} test={len(x_test)} (anomalies {int(y_test.sum())}) "
        f"latent={args.latent} lambda={args.lam:g} nu={args.nu} lr={args.lr:g} batch={args.batch_size} "
        f"iters(ae1/ae2/nce)={args.ae_iters}/{args.decoder_iters}/{args.nce_iters} device={device}", flush=True)

    # Step 1: composite features z = (z_l, z_e, z_c) and their mean/covariance (Eq. 13-14)
    moments = RunningMoments(args.latent + 2)
    if args.features == "ae":
        if tabular:
            ae = TabularAE(x_train.shape[1], args.latent).to(device)
        else:
            ae = ConvAE(x_train.shape[1], x_train.shape[-1], args.latent).to(device)
        ae_samples, ae_time = train_autoencoder(ae, x_train, x_val, args, log)
        z_train = ae_features(ae, x_train, moments)
        ts = time.time()
        z_test = ae_features(ae, x_test)
        score_time = time.time() - ts
    else:
        ts = time.time()
        model = load_resnet18(args.weights).to(device)
        e_train = resnet18_embeddings(model, x_train, args.image_size)
        pca = PCA(n_components=args.latent, random_state=args.seed).fit(e_train.cpu().numpy())
        z_train = pca_features(pca, e_train, moments)
        ae_samples, ae_time = len(x_train), time.time() - ts
        ts_score = time.time()
        z_test = pca_features(pca, resnet18_embeddings(model, x_test, args.image_size))
        score_time = time.time() - ts_score
        log(f"resnet18-pca: {len(x_train)} training embeddings, PCA to {args.latent} dims, explained variance "
            f"{pca.explained_variance_ratio_.sum():.4f}", flush=True)

    # Step 2: the ablation of Table 1 on the shared features
    d = args.latent
    lat_moments = RunningMoments(d)
    lat_moments.n, lat_moments.mean, lat_moments.scatter = moments.n, moments.mean[:d], moments.scatter[:d, :d]
    ts = time.time()
    scores = {"error": z_test[:, d].cpu().numpy()}                                       # z_e alone
    T, noise = train_nce("latnce", z_train[:, :d], lat_moments, args, learn_k=False, log=log)
    scores["latnce"] = anomaly_score(T, noise, z_test[:, :d], args.nu)
    T, noise = train_nce("cnce", z_train, moments, args, learn_k=False, log=log)
    scores["cnce"] = anomaly_score(T, noise, z_test, args.nu)
    T, noise = train_nce("cance", z_train, moments, args, learn_k=True, augment_latent=d, log=log)
    ts_score = time.time()
    scores["cance"] = anomaly_score(T, noise, z_test, args.nu)
    score_time += time.time() - ts_score                                 # features + CANCE score of the test set
    nce_time = time.time() - ts
    k_final = noise.K().detach().cpu()

    labels = y_test.cpu().numpy()
    for name, s in scores.items():
        if not np.all(np.isfinite(s)):
            raise FloatingPointError(f"the {name} anomaly scores contain NaN/inf")
    auroc = {name: round(float(roc_auc_score(labels, s)), 4) for name, s in scores.items()}
    log("ablation (Table 1): error = reconstruction error z_e alone; latnce = NCE on z_l, fixed noise "
        "N(mu,Sigma); cnce = NCE on (z_l,z_e,z_c), fixed noise N(mu,Sigma) (K = I, not learned); cance = "
        "cnce + augmentation (Eq. 8) + learned K (Eq. 10); NCE scores add ln(nu p_n) of their own noise", flush=True)
    log("K (cance) = " + " ".join(f"{k:.3f}" for k in k_final.tolist()), flush=True)
    result = {"method": "cance", "dataset": args.dataset, "normal": ",".join(map(str, normal)), "seed": args.seed}
    if tabular:
        f1 = {name: round(float(f1_at_ratio(s, labels)), 4) for name, s in scores.items()}
        result.update({"f1": f1["cance"], "f1_error": f1["error"], "f1_latnce": f1["latnce"], "f1_cnce": f1["cnce"]})
    result.update({"auroc": auroc["cance"], "auroc_error": auroc["error"], "auroc_latnce": auroc["latnce"],
                   "auroc_cnce": auroc["cnce"], "features": args.features, "latent": args.latent, "lam": args.lam,
                   "k_mean": round(float(k_final.mean()), 4),
                   "iters": f"{args.ae_iters}/{args.decoder_iters}/{args.nce_iters}",
                   "batch_size": args.batch_size, "device": device.type,
                   "nce_seconds": round(nce_time, 1), "seconds": round(time.time() - t_start, 1),
                   "train_samples_per_s": round(ae_samples / max(ae_time, 1e-9), 1),
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
