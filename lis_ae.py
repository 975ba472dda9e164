"""Latent-Insensitive Autoencoders for Anomaly Detection.
Battikh & Lenskiy, Mathematics 10(1):112, 2022 (arXiv:2110.13101).

An autoencoder trained on normal data reconstructs many anomalies well too. LIS-AE trains in two phases (Alg. 1).
Phase 1 trains an ordinary autoencoder on the positive (normal) set D+. Phase 2 freezes the encoder E and the decoder
D and retrains only the latent layer Z on Eq. (1): the positives' reconstruction error stays low while the error of a
negative set D- (unlabelled data of a similar domain) is pulled up to a target gamma. The anomaly score is the
reconstruction error (Sec. 3.4). LinSep-LIS-AE (Sec. 4.2) adds to phase 1 the BCE of a linear classifier on Z's
pre-activation, so that D+ and D- are linearly separable there when phase 2 starts.

Reproduces AE (phase 1) vs LIS-AE vs LinSep-LIS-AE (--linsep) AUROC under Sec. 5's negative sets: Table 1 (MNIST vs
Omniglot, Fashion-MNIST vs the next class, 2-class MNIST: --normal 0,1), Table 2 (SVHN / CIFAR-10 halves, supervised
upper bounds), Table 3 (--negative <dataset> --test-half), Tables 4-5 and A1-A4's None / Comb. / Sup. rows, Figure 3
(--save-recon). Each run scores the AE (auroc_ae) and LIS-AE (auroc): "the most direct comparison" (Sec. 5.1).

Equation map (a user calls fit -> score; save / load keep a fitted model)
    Sec. 3.1 s = E(x), z = Z(s), x_hat = D(z); Sec. 5.1 layers ... build_model(), LatentInsensitiveAE
    Sec. 3.4 score ||x_hat - x||_2 ................................ reconstruction_error(), anomaly_scores(), score()
    Alg. 1, phase 1 (feature extraction) .......................... train_phase1()
    Eq. (1) latent-shaping loss; Sec. 4.2 LinSep's BCE (phase 1) .. latent_shaping_loss(), linsep_loss()
    Alg. 1, phase 2 (E and D frozen, Z trained on Eq. (1)) ........ train_phase2()
    Alg. 1 whole; the phase-1 AE of Sec. 5.1's comparison ......... fit(), phase1_ae()
    Sec. 3.2 / 5.1 D+, D- and the test set; Omniglot augmentation . prepare(), negative_set(), augment_negatives()

Deviations, and choices where the paper is silent
  - Phase-1 standardisation of Z's pre-activation (not in the paper; --latent-norm batch). Trained as written
    (tanh, Adam 1e-3), phase 1 saturates the tanh: codes +-1, no gradient in phase 2, LIS-AE = its AE. So phase 1
    standardises the pre-activation per unit over the batch of positives (BatchNorm1d without scale or shift),
    folded into Z's weight and bias at its end: phase 2 and scoring use the paper's linear layer + tanh. --latent-norm
    none is the saturating original (log `sat`: |z| > 0.99; RESULT latent_saturated); --latent-act linear drops
    the tanh, an ablation (Sec. 3.1 keeps it).
  - Sizes (Sec. 5.1 names the layers, not their widths): 28x28: E = conv 1->32->64 (4x4, stride 2), Z = linear
    3136->16, D = linear 16->3136, transposed convs 64->32->32, 3x3 conv + sigmoid, LeakyReLU 0.2; 32x32x3: the
    same at width 64, Z = 8192->128 (--width, --latent; 16 was the best of 16, 32, 64 in a short sweep).
  - ||.||_2: per sample, not squared, averaged over the batch. Eq. (1)'s |gamma - .| is taken per negative, as
    printed, so it also pulls errors above gamma down (Sec. 3.3's "satisfied if [it] exceeds a certain value"
    would be a hinge). gamma = 2 x the phase-1 AE's mean error on 2048 negatives (--gamma-scale, --gamma); beta 1.
    Adam, lr 1e-3, 128 positives (+ 128 negatives) per step, 2000 steps per phase on 28x28 sets, 5000 on 32x32
    (Alg. 1: "until convergence"); no validation. LinSep: nn.Linear(latent, 1), BCE weight 1, dropped after phase 1.
  - Omniglot (Sec. 5.1: blur, crop, flips): per sample, flips (p 0.5 each), crop after 2-pixel zero padding,
    Gaussian blur (p 0.5, 5x5, sigma ~ U(0.1, 1.5)); resized to 28x28, white strokes on black.
  - next-class with several normal classes: the first non-normal class after the largest normal one (9 -> 0).
    split / supervised: halves 0..n/2-1 and n/2..n-1, all normal classes in one half, tested on that half;
    supervised (an upper bound) takes as D- the normal half's other classes, i.e. the test anomalies.
  - Your own images (--dataset PATH): grey as 1x28x28 with MNIST's settings, RGB as 3x32x32 with CIFAR-10's; D-
    must be named (Sec. 3.2): --negative PATH (unlabelled images), omniglot, a built-in dataset, or none.
Run:  python lis_ae.py --dataset mnist --normal 8 (Omniglot negatives); add --linsep for LinSep-LIS-AE
"""
import copy
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from common import (DataError, IMAGE_DATASETS, Progress, as_input, check_finite, check_input_shape, check_scores,
                    command_line, dataset_type, exit_codes, finish, flags, is_anomaly, is_user_dataset,
                    load_checkpoint, load_images, load_omniglot, load_unlabelled_images, load_weights, loaded_note,
                    number, output_flags, parse, parse_normal, png_path, read_user_data, run_name, save_checkpoint,
                    saving_run, say, set_seed, user_data_kind)

# Sec. 5.1's negative set D- per dataset; sizes and budgets are our choices (the paper gives none), fit()'s keywords
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
USER_ROWS = {"grey": "mnist", "RGB": "cifar10"}   # your own images take these rows' values
LABEL_MODES = ("next-class", "split", "supervised")
SATURATED = 0.99    # |z| above this counts as a saturated tanh unit (tanh' < 0.02)
FIX = "Try a smaller lr (--lr) or beta (--beta)"    # what a diverged loss's message advises


# ------------------------------------------------------------------------------------------ model

class LatentInsensitiveAE(nn.Module):
    """s = E(x), z = Z(s) = act(latent(s)), x_hat = D(z) (Sec. 3.1). Phase 2 trains only `latent`, Z's linear part;
    `norm` standardises its output in phase 1 until fold_latent_norm() folds it into `latent`. fit() keeps Z as
    phase 1 left it in `ae_latent` (None for a plain AE): phase1_ae() rebuilds that AE."""

    def __init__(self, input_shape, encoder, latent, decoder, act, norm=None):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.encoder, self.latent, self.decoder, self.act = encoder, latent, decoder, act
        self.norm = norm if norm is not None else nn.Identity()
        self.ae_latent = None

    def forward(self, x):
        s = self.encoder(x)              # s = E(x)
        u = self.norm(self.latent(s))    # Z's pre-activation (LinSep's classifier reads this)
        z = self.act(u)                  # z = Z(s), in [-1, 1] for tanh
        return self.decoder(z), u        # x_hat = D(z)


def build_model(input_shape=(1, 28, 28), latent=16, width=32, latent_act="tanh", latent_norm="batch"):
    """Sec. 5.1's architecture for (1, 28, 28) or (3, 32, 32) images in [0, 1]: E = two convs with LeakyReLU; Z = one
    fully connected layer with tanh (or linear); D = fully connected + LeakyReLU, two transposed convs with LeakyReLU,
    a conv with sigmoid. latent_norm="batch": the phase-1 standardisation of Z's pre-activation (the deviations)."""
    input_shape = tuple(int(d) for d in input_shape)
    if input_shape not in ((1, 28, 28), (3, 32, 32)):
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


def phase1_ae(model):
    """Sec. 5.1's "AE" of a fitted LIS-AE: its E and D with Z as phase 1 left it (a plain AE is its own AE)."""
    if model.ae_latent is None:
        return model
    ae = copy.deepcopy(model)
    ae.latent, ae.ae_latent = ae.ae_latent, None
    return ae


# ------------------------------------------------------------------------------------------ losses and score

def reconstruction_error(x_hat, x):
    """Per-sample ||x_hat - x||_2: the phase-1 loss (batch mean) and the anomaly score (Sec. 3.4)."""
    return torch.linalg.vector_norm((x_hat - x).flatten(1), dim=1)


def latent_shaping_loss(x_hat_pos, x_pos, x_hat_neg, x_neg, beta, gamma):
    """Eq. (1): ||x_hat+ - x+||_2 + beta * |gamma - ||x_hat- - x-||_2|, batch means -> (loss, rec_pos, rec_neg)."""
    rec_pos, rec_neg = reconstruction_error(x_hat_pos, x_pos), reconstruction_error(x_hat_neg, x_neg)
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

def model_input(model, x, name="x"):
    """x (a numpy array or tensor) -> float32 tensor on the model's device, of the shape the model takes."""
    return as_input(x, model.input_shape, next(model.parameters()).device, name)


def augment_negatives(x, pad=2, blur_p=0.5, sigma=(0.1, 1.5), ksize=5):
    """Sec. 5.1 augmentation of the small Omniglot set, with per-sample random parameters, batched on x's device:
    horizontal and vertical flips (p = 0.5 each), random crop of the original size from the image padded by
    `pad` zeros, Gaussian blur (probability blur_p, sigma ~ U(sigma), ksize x ksize, reflect padding)."""
    (B, C, H, W), dev = x.shape, x.device
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
    y, h = x.reshape(1, B * C, H, W), ksize // 2
    y = F.conv2d(F.pad(y, (h, h, 0, 0), mode="reflect"), k[:, None, None, :], groups=B * C)  # blur along width
    y = F.conv2d(F.pad(y, (0, 0, h, h), mode="reflect"), k[:, None, :, None], groups=B * C)  # along height
    return y.reshape(B, C, H, W)


def sample(x, batch_size, augment=False):
    """A random mini-batch (indices with replacement), with Sec. 5.1's augmentation if asked."""
    xb = x[torch.randint(len(x), (batch_size,), device=x.device)]
    return augment_negatives(xb) if augment else xb


def train_phase1(model, x_normal, x_negative=None, linsep=False, iters=2000, batch_size=128, lr=1e-3,
                 linsep_weight=1.0, augment=False, log=None):
    """Alg. 1, phase 1 (feature extraction): Adam on ||x_hat+ - x+||_2 over batches of x_normal (N, *input_shape).
    linsep=True (LinSep-LIS-AE, Sec. 4.2) adds linsep_weight x the BCE of a new linear classifier on Z's pre-activation,
    x_normal vs x_negative (augmented if asked; the positives' standardisation statistics), dropped afterwards. The
    standardisation is folded into Z at the end. log: progress lines. Returns the model, trained, in eval mode."""
    x_pos = model_input(model, x_normal, "x_normal")
    classifier = None
    if linsep:
        if x_negative is None:
            raise ValueError("linsep=True needs x_negative, the negative set the classifier separates from x_normal")
        x_neg = model_input(model, x_negative, "x_negative")
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
        check_finite(loss.item(), f"the phase-1 loss at iteration {it}", FIX)
        bce = "" if bce is None else f" bce={bce.item():.4f}"
        sat = saturated_fraction(model.act(u_pos))
        progress(it, f" loss={loss.item():.4f} rec={rec.item():.4f}{bce} sat={sat:.3f}")
    fold_latent_norm(model)                                                 # Z = linear + tanh from here on
    return model.eval()


@torch.no_grad()
def negative_target(model, x_negative, gamma_scale=2.0, augment=False, n=2048):
    """Eq. (1)'s gamma when none is given (not in the paper): gamma_scale x the model's mean reconstruction error
    on n negatives drawn with replacement (augmented if asked), measured on the phase-1 AE."""
    x_neg = model_input(model, x_negative, "x_negative")
    return gamma_scale * float(anomaly_scores(model, sample(x_neg, n, augment)).mean())


def train_phase2(model, x_normal, x_negative, iters=2000, batch_size=128, lr=1e-3, beta=1.0, gamma=None,
                 gamma_scale=2.0, augment=False, log=None):
    """Alg. 1, phase 2 (latent shaping): freeze E and D and train only the latent layer Z with Adam on Eq. (1),
    with batches from x_normal (D+) and x_negative (D-, augmented when augment=True). gamma=None: gamma_scale x
    the phase-1 AE's mean error on the negatives (negative_target). Returns the model, trained in place."""
    x_pos, x_neg = model_input(model, x_normal, "x_normal"), model_input(model, x_negative, "x_negative")
    fold_latent_norm(model)                                                 # no-op when phase 1 already did it
    model.eval()
    if gamma is None:
        gamma = negative_target(model, x_neg, gamma_scale, augment)
    model.encoder.requires_grad_(False)                                     # Alg. 1: FreezeEncoder()
    model.decoder.requires_grad_(False)                                     # Alg. 1: FreezeDecoder()
    opt = torch.optim.Adam(model.latent.parameters(), lr=lr)               # only Z is trained
    progress = Progress("phase2 iter", iters, log)
    for it in range(1, iters + 1):
        xp, xn = sample(x_pos, batch_size), sample(x_neg, batch_size, augment)   # Alg. 1: (x+, x-) from (D+, D-)
        (x_hat_p, u_p), (x_hat_n, u_n) = model(xp), model(xn)
        loss, rec_pos, rec_neg = latent_shaping_loss(x_hat_p, xp, x_hat_n, xn, beta, gamma)   # Eq. (1)
        opt.zero_grad(set_to_none=True)
        loss.backward()                                                     # Alg. 1: minimise L
        opt.step()
        check_finite(loss.item(), f"the Eq. (1) loss at phase-2 iteration {it}", FIX)
        progress(it, f" loss={loss.item():.4f} rec_pos={rec_pos.item():.4f} rec_neg={rec_neg.item():.4f} gamma="
                     f"{gamma:.4f} sat_pos={saturated_fraction(model.act(u_p)):.3f} sat_neg="
                     f"{saturated_fraction(model.act(u_n)):.3f}")
    model.requires_grad_(True)                                              # unfrozen for any later use
    return model


# ------------------------------------------------------------------------------------------ scoring

@torch.no_grad()
def in_chunks(model, x, fn, what="scoring", log=None, chunk=1000):
    """fn(model, batch) over x (numpy or tensor) in chunks, in eval mode -> tensor (N, ...); log: the progress."""
    x = model_input(model, x)
    was, out, progress = model.training, [], Progress(what, len(x), log)
    model.eval()
    for i in range(0, len(x), chunk):
        out.append(fn(model, x[i:i + chunk]))
        progress(min(i + chunk, len(x)))
    model.train(was)
    return torch.cat(out)


def anomaly_scores(model, x, log=None):
    """Sec. 3.4: ||x_hat - x||_2 of each sample of x (N, *input_shape) -> numpy (N,), higher = more anomalous."""
    return in_chunks(model, x, lambda m, xb: reconstruction_error(m(xb)[0], xb), "scores", log).cpu().numpy()


def latent_codes(model, x, log=None):
    """z = Z(E(x)) of each sample (N, latent), to inspect the tanh's saturation."""
    return in_chunks(model, x, lambda m, xb: m.act(m(xb)[1]), "latent codes", log)


def auroc(model, x, y):
    """AUROC of anomaly_scores against labels y (1 = anomaly)."""
    return roc_auc_score(torch.as_tensor(y).cpu().numpy(), anomaly_scores(model, x))


def evaluate(model, x, y, log=None):
    """Sec. 5.1's "most direct comparison" on test images x, y (1 = anomaly): the phase-1 AE's and the LIS-AE's scores
    and AUROC, and the AE's latent saturation (|z| > 0.99) -> dict(scores={"ae", "main"}, auroc, auroc_ae,
    latent_saturated, score_seconds). NaN/inf or all-equal scores raise FloatingPointError (a degenerate run)."""
    ae, y, log = phase1_ae(model), torch.as_tensor(y).cpu().numpy(), log or (lambda line: None)
    log(f"scoring: {2 if ae is model else 3} passes over the test set (the phase-1 AE's scores and latent codes"
        f"{'' if ae is model else ', then LIS-AE scores'})")
    ts, log_ae = time.time(), lambda line: log("phase-1 AE " + line)
    scores = {"ae": anomaly_scores(ae, x, log_ae)}
    seconds = time.time() - ts
    check_scores(scores, "the test set")
    auroc_ae, z = roc_auc_score(y, scores["ae"]), latent_codes(ae, x, log_ae)
    sat, z_std = saturated_fraction(z), z[torch.as_tensor(y == 0, device=z.device)].std(0)
    log(f"phase-1 AE: test auroc={auroc_ae:.4f}; latent on the test set: {sat:.3f} of |z| > {SATURATED}, per-unit std "
        f"over test normals min {float(z_std.min()):.3f} mean {float(z_std.mean()):.3f}")
    if isinstance(ae.act, nn.Tanh) and sat > 0.5:
        log(f"WARNING: {sat:.0%} of the latent is saturated (|z| > {SATURATED}): phase 2 gets (almost) no gradient "
            "through tanh, so LIS-AE stays close to the AE (--latent-norm batch avoids it)")
    scores["main"] = scores["ae"] if ae is model else score(model, x, lambda line: log("LIS-AE " + line))
    check_scores(scores, "the test set")
    auroc_lis = roc_auc_score(y, scores["main"])
    if ae is not model:
        log(f"test auroc: AE (phase 1) {auroc_ae:.4f}, {model.config['variant']} (phase 2) {auroc_lis:.4f}")
    return dict(scores=scores, auroc=auroc_lis, auroc_ae=auroc_ae, latent_saturated=sat, score_seconds=seconds)


def save_recon(path, x, y, ae, model):
    """Figure 3: the first 8 normal and 8 anomalous images of x, the phase-1 AE's and the LIS-AE's outputs -> path."""
    from torchvision.utils import save_image
    x = model_input(model, x[torch.cat([torch.nonzero(torch.as_tensor(y) == k).view(-1)[:8] for k in (0, 1)])])
    with torch.no_grad():
        grid = torch.cat([x, ae(x)[0], model(x)[0]])
    save_image(grid.cpu(), path, nrow=len(x), padding=2, pad_value=0.5)
    return path


# ------------------------------------------------------------------------------------------ fit, score, save, load

def fit(x_normal, x_negative=None, *, linsep=False, iters=2000, batch_size=128, lr=1e-3, latent=16, width=32,
        latent_act="tanh", latent_norm="batch", beta=1.0, gamma=None, gamma_scale=2.0, augment=False, device="cpu",
        log=None):
    """Alg. 1 on images in [0, 1], x_normal = D+ (N, 1, 28, 28) or (N, 3, 32, 32): build_model(), phase 1 (linsep:
    with LinSep's BCE), then with x_negative = D- (Sec. 3.2; augment: Sec. 5.1's Omniglot augmentation) phase 2 on
    Eq. (1); without D- the plain AE. gamma=None: gamma_scale x the phase-1 AE's mean error on D-. The model keeps
    the phase-1 latent layer (ae_latent), config (settings, gamma, variant) and info (samples trained on, seconds)."""
    t0 = time.time()
    model = build_model(tuple(x_normal.shape[1:]), latent=latent, width=width, latent_act=latent_act,
                        latent_norm=latent_norm).to(device)
    train_phase1(model, x_normal, x_negative, linsep=linsep, iters=iters, batch_size=batch_size, lr=lr,
                 augment=augment, log=log)                                  # Alg. 1, phase 1
    if x_negative is not None:
        model.ae_latent = copy.deepcopy(model.latent)                       # the AE's Z; E and D are shared
        gamma = negative_target(model, x_negative, gamma_scale, augment) if gamma is None else gamma
        train_phase2(model, x_normal, x_negative, iters=iters, batch_size=batch_size, lr=lr, beta=beta, gamma=gamma,
                     augment=augment, log=log)                              # Alg. 1, phase 2: Eq. (1) on Z only
    model.config = dict(iters=iters, batch_size=batch_size, lr=lr, latent=latent, width=width, latent_norm=latent_norm,
                        latent_act=latent_act, beta=beta, gamma=gamma, gamma_scale=gamma_scale, linsep=linsep,
                        augment=augment,
                        variant="ae" if x_negative is None else "linsep-lis-ae" if linsep else "lis-ae")
    passes = (2 if linsep else 1) + (0 if x_negative is None else 2)      # batches of positives and negatives
    model.info = dict(train_seconds=time.time() - t0, samples=iters * batch_size * passes)
    return model


def score(model, x, log=None):
    """Sec. 3.4 for images x in [0, 1] -> numpy (N,), higher = more anomalous: the LIS-AE's reconstruction error."""
    return anomaly_scores(model, x, log)


def save(model, path, config=None):
    """Keep a model: its weights, the phase-1 AE's latent layer (when phase 2 ran; E and D are shared), build_model's
    settings, the input shape and its config (plus `config`). A bare build_model() is saved as a plain AE."""
    arch = dict(input_shape=list(model.input_shape), latent=model.latent.out_features,
                width=model.encoder[0].out_channels, latent_act="tanh" if isinstance(model.act, nn.Tanh) else "linear")
    state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("ae_latent.")}}
    if model.ae_latent is not None:
        state["ae_latent"] = {k: v.detach().cpu() for k, v in model.ae_latent.state_dict().items()}
    preprocess = {"input": "images in [0, 1] (uint8 / 255) of input_shape; common.fit_images converts and resizes"}
    save_checkpoint(path, "lis_ae", {**getattr(model, "config", {}), **(config or {}), **arch}, preprocess, state)


def load(path, device="cpu"):
    """A model written by save() or --save-model -> that model in eval mode, with ae_latent and config, for score()."""
    cfg, state = (ck := load_checkpoint(path, "lis_ae"))["config"], ck["state"]
    model = build_model(cfg["input_shape"], latent=cfg["latent"], width=cfg["width"], latent_act=cfg["latent_act"],
                        latent_norm="batch" if "norm.running_mean" in state["model"] else "none")   # folded?
    load_weights(model, state["model"], path)
    if "ae_latent" in state:
        model.ae_latent = load_weights(copy.deepcopy(model.latent), state["ae_latent"], path)
    model.config = {"variant": "ae" if model.ae_latent is None else "lis-ae", **cfg}
    model.info = dict(samples=0, train_seconds=None)                       # not trained here
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------ data

def negative_classes(mode, normal, n_classes, test_half=False):
    """Sec. 5: (D-'s classes of the same dataset, the tested classes). next-class: the next class, not tested; split:
    the other half, tested on the normal half; supervised (Table 2's Sup. rows, Table 4's "Sup. (0-4)"): the normal
    half's other classes = the test anomalies. test_half tests the normal half (Table 3). No anomaly left: DataError"""
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
    dataset's training split (all classes), or your own images (common.load_unlabelled_images) -> (x, text)."""
    if negative == "omniglot" or negative in IMAGE_DATASETS:
        has = (1, 28) if negative == "omniglot" else IMAGE_DATASETS[negative][1:]
        if has != tuple(shape[:2]):
            raise DataError(f"--negative {negative} gives {has[0]}x{has[1]}x{has[1]} images, but the normal data has "
                            f"{'x'.join(map(str, shape))} images. Pick a negative set of the same shape (Table 3 pairs "
                            "MNIST with Fashion-MNIST and SVHN with CIFAR-10), or your own images (--negative PATH)")
        if negative == "omniglot":
            return load_omniglot(data_root, size=shape[-1])[0], "omniglot background images"
        return load_images(negative, data_root)[0], f"{negative} train split (all classes)"
    return load_unlabelled_images(negative, shape[0], shape[-1]), f"your images {run_name(negative, None)[0]}"


def prepare(dataset, normal, negative, test_half=False, data_root=None, with_negatives=True, seed=0):
    """The protocol's D+, D- and test set, checked before loading -> dict of tensors (x_pos, x_neg or None, x_test,
    y_test with 1 = anomaly, index: each test image's index in its source) and text. A built-in dataset (Sec. 5), or
    your images (common.read_user_data; the seed splits an unsplit file; grey -> 1x28x28, RGB -> 3x32x32, taking the
    PAPER row `like`), whose D- must be named (Sec. 3.2). with_negatives=False: no D- from outside the dataset."""
    if dataset not in IMAGE_DATASETS:
        if negative in LABEL_MODES or (negative is None and with_negatives):
            why = "" if negative is None else f"; --negative {negative} needs the classes of a built-in dataset"
            raise DataError(f"{run_name(dataset, None)[0]} needs a negative set D- (Sec. 3.2: unlabelled images of a "
                            f"similar domain){why}. Give --negative PATH (an .npz holding x, or an image folder), "
                            "omniglot, a built-in dataset of the same shape, or none (a plain AE: Tables 3-5's None)")
        d = read_user_data(dataset, "lis_ae.py", seed, tables=False)
        data = dict(normal=None, x_pos=d["train"], x_test=d["test"][0], y_test=d["test"][1], index=d["index"],
                    source=d["source"], like=USER_ROWS[d["kind"]], test_classes=None, excluded=None)
    else:
        n_classes = IMAGE_DATASETS[dataset][0]
        normal = parse_normal(normal, n_classes)
        if negative == dataset:
            raise DataError(f"--negative {negative} is the normal dataset itself. Use next-class, split or supervised "
                            f"for negatives from the same dataset")
        neg_cls, test_cls = negative_classes(negative, normal, n_classes, test_half)
        x_tr, y_tr, x_te, y_te = load_images(dataset, data_root)
        keep = torch.isin(y_te, torch.tensor(test_cls))
        data = dict(normal=normal, x_pos=x_tr[torch.isin(y_tr, torch.tensor(normal))],   # D+: the normal train images
                    x_test=x_te[keep], y_test=is_anomaly(y_te[keep], normal), index=torch.nonzero(keep).view(-1),
                    source=None, like=dataset, test_classes=test_cls,
                    excluded=[c for c in range(n_classes) if c not in test_cls])
        if int(data["y_test"].sum()) in (0, len(data["y_test"])):
            raise DataError(f"the test split of {dataset} has no images of the anomaly classes or none of the normal "
                            f"classes among classes {test_cls}. Check that the data files are complete")
    x_neg, neg_desc = None, "none (plain AE)"
    if negative in LABEL_MODES:                                             # D- from the same dataset's classes
        x_neg = x_tr[torch.isin(y_tr, torch.tensor(neg_cls))]
        neg_desc = f"{dataset} train classes {','.join(map(str, neg_cls))}" + (
            " (supervised UPPER BOUND: negatives are the test anomaly classes)" if negative == "supervised" else "")
    elif negative not in (None, "none") and with_negatives:
        x_neg, neg_desc = negative_set(negative, tuple(data["x_pos"].shape[1:]), data_root)
    if x_neg is not None and len(x_neg) == 0:
        raise DataError(f"the negative set ({neg_desc}) is empty in the data under --data-root. Check that the "
                        f"data files are complete, or pick another --negative")
    return dict(data, x_neg=x_neg, neg_desc=neg_desc)


# ------------------------------------------------------------------------------------------ command line

TRAINING = ("iters", "batch_size", "lr", "latent", "width", "latent_norm", "latent_act", "beta", "gamma", "gamma_scale",
            "linsep")           # fit()'s options: the dataset's PAPER row or flags; --load-model: the checkpoint's


def defaults(known):
    """--dataset's PAPER row and D- (your images: MNIST's or CIFAR-10's row, D- to be named); --load-model: none."""
    row = known.dataset if known.dataset in PAPER else USER_ROWS.get(user_data_kind(known.dataset), "mnist")
    return dict(PAPER[row], negative=NEGATIVE.get(known.dataset), **dict.fromkeys(TRAINING if known.load_model else ()))


def parse_args(argv=None):
    p = command_line("lis_ae.py", "LIS-AE: latent-insensitive autoencoder (Battikh & Lenskiy, Mathematics 2022)", PAPER,
                     "mnist, fashion-mnist, svhn, cifar10 (Sec. 5); not in the paper: cifar100 (20 superclasses), "
                     "digits (offline install check)", "grey read as 1x28x28 with MNIST's settings, RGB as 3x32x32 "
                     "with CIFAR-10's", "random seed: init, batches, augmentation, the split of an unsplit file (not "
                     "in the paper)", "Sec. 5.1", tables=False)
    p.add_argument("--negative", metavar="NAME|PATH", type=dataset_type(("none", "omniglot") + LABEL_MODES + tuple(
        PAPER), tables=False), help="negative set D- (Sec. 5.1): omniglot (MNIST); next-class (Fashion-MNIST), not "
        "tested; split (SVHN, CIFAR), the other half; supervised, the test anomalies (upper bound, Table 2's Sup. "
        "rows); a dataset's train split (Table 3); none, a plain AE; PATH, your unlabelled images (Sec. 3.2)")
    p.add_argument("--test-half", action="store_true", help="test only on the normal classes' half (0-4 or 5-9), as "
                   "Table 3 does; split and supervised always do (Sec. 5.2)")
    p.add_argument("--iters", type=number(int, 1), help="optimisation steps of each phase: 2000 on 28x28 sets, 5000 "
                   "on 32x32 sets (not in the paper: Alg. 1 trains 'until convergence')")
    p.add_argument("--batch-size", type=number(int, 2), help="positives per step, and as many negatives: 128, digits "
                   "64 (not in the paper: digits' classes have ~120 training images)")
    p.add_argument("--lr", type=number(float, 0, low_open=True), default=1e-3,
                   help="Adam's learning rate in both phases (not in the paper: Adam's usual value)")
    p.add_argument("--latent", type=number(int, 1), help="latent size: 16 on 28x28 sets, 128 on 32x32 sets (not in "
                   "the paper, which reports 'the best performing latent dimension' (Sec. 5.1): best of 16, 32, 64)")
    p.add_argument("--width", type=number(int, 1), help="channels of the first conv, twice as many in the second: 32 "
                   "on 28x28 sets, 64 on 32x32 sets (not in the paper: Sec. 5.1's 'higher capacity' for SVHN, CIFAR)")
    p.add_argument("--latent-norm", default="batch", choices=["batch", "none"], help="batch: standardise Z's input "
                   "over the batch in phase 1, then fold it into Z; none: the saturating original (not in the paper)")
    p.add_argument("--latent-act", default="tanh", choices=["tanh", "linear"],
                   help="activation of Z: tanh; linear drops it, an ablation (Sec. 3.1)")
    p.add_argument("--beta", type=number(float, 0), default=1.0,
                   help="weight of the negative term of Eq. (1) (not in the paper: no value given)")
    p.add_argument("--gamma", type=number(float, 0), help="target error of the negatives in Eq. (1); unset: "
                   "--gamma-scale times the phase-1 AE's mean error on D- (not in the paper: no value given)")
    p.add_argument("--gamma-scale", type=number(float, 0, low_open=True), default=2.0, help="gamma = this times the "
                   "phase-1 AE's mean error on D- (not in the paper: the negatives' error must rise above the AE's)")
    p.add_argument("--linsep", action="store_true", help="LinSep-LIS-AE: phase 1 also trains a linear classifier "
                   "(BCE) on Z's pre-activation, D+ vs D- (Sec. 4.2)")
    p.add_argument("--save-recon", type=png_path, metavar="FILE.png", help="write a PNG: 8 normal and 8 anomalous "
                   "test images, the AE's and the LIS-AE's outputs (Figure 3)")
    output_flags(p, "scores (LIS-AE, phase 2), scores_ae (the phase-1 AE), scores_linsep with --linsep (= scores)",
                 "LIS-AE's weights, the phase-1 AE's latent layer, every setting and the input shape")
    args = parse(p, argv, defaults, TRAINING)
    idle = [k for k in ("linsep", "beta", "gamma", "gamma_scale") if k in args.given] if args.negative == "none" else []
    if args.test_half and args.dataset not in PAPER:
        p.error(f"--test-half names classes of a built-in dataset; in your own data ({args.dataset}) the labels (y = "
                "1, a test/<defect>/ folder) mark the anomalies. Drop --test-half")
    if idle and not args.load_model:                    # phase 2 and LinSep need D-
        p.error(f"{flags(idle)} need{'s' if len(idle) == 1 else ''} a negative set (phase 2, Eq. (1)), and --negative "
                f"none trains a plain AE. Pick a --negative set, or drop {'it' if len(idle) == 1 else 'them'}")
    if {"gamma", "gamma_scale"} <= args.given and not args.load_model:
        p.error("--gamma-scale sets gamma when --gamma is not given; both were given. Drop one of them")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    set_seed(args.seed)
    with exit_codes():
        model = load(args.load_model, args.device) if args.load_model else None
        saving_run(args, model.config if model else None)       # its seed draws the split of unsplit data
        data = prepare(args.dataset, "0" if args.normal is None else args.normal, args.negative, args.test_half,
                       args.data_root, with_negatives=model is None, seed=args.seed)
        x_neg, x_test, y_test, tested = data["x_neg"], data["x_test"], data["y_test"], data["test_classes"]
        name, normal = run_name(args.dataset, data["normal"])
        if model is not None:                               # --load-model: its settings, nothing trained
            check_input_shape(model.input_shape, x_test.shape[1:], args.load_model, name)
            say(loaded_note(args.load_model, model.config))
        cfg = {k: getattr(args, k) if model is None else model.config.get(k) for k in TRAINING}
        variant = model.config["variant"] if model else "ae" if x_neg is None else \
            "linsep-lis-ae" if cfg["linsep"] else "lis-ae"
        neg = "not used (no training)" if model else f"{0 if x_neg is None else len(x_neg)} ({data['neg_desc']})"
        say(f"lis_ae: dataset={name} variant={variant} normal={normal} D+={len(data['x_pos'])} D-={neg} latent="
            f"{cfg['latent']} latent_norm={cfg['latent_norm']} latent_act={cfg['latent_act']} width={cfg['width']} "
            f"lr={cfg['lr']} batch={cfg['batch_size']} iters={cfg['iters']}/phase device={args.device}")
        say((f"lis_ae: read {name}: {data['source']}; {data['like']}'s settings where not given\n" if data["source"]
             else "") + f"test set: {len(x_test)} images{'' if tested is None else f' of classes {tested}'} "
            f"({int(y_test.sum())} anomalies){'' if not tested else '; excluded from test: ' + str(data['excluded'])}")
        if model is None:                                   # Alg. 1; Sec. 5.1 augments Omniglot only
            model = fit(data["x_pos"], x_neg, **cfg, augment=args.negative == "omniglot", device=args.device, log=say)
        ev, gamma = evaluate(model, x_test, y_test, log=say), model.config.get("gamma")
        scores = dict(ev["scores"], **({"linsep": ev["scores"]["main"]} if cfg["linsep"] else {}))
        result = dict(method="lis_ae", dataset=name, normal=normal, seed=args.seed, auroc=round(ev["auroc"], 4),
                      auroc_linsep=round(ev["auroc"], 4) if cfg["linsep"] else None, auroc_ae=round(ev["auroc_ae"], 4),
                      variant=variant, negative=run_name(args.negative, None)[0] if is_user_dataset(args.negative or "")
                      else args.negative, test_classes="-" if tested is None else ",".join(map(str, tested)),
                      **{k: cfg[k] for k in ("latent", "latent_act", "latent_norm")},
                      latent_saturated=round(ev["latent_saturated"], 4), beta=cfg["beta"], gamma=None if gamma is None
                      else round(gamma, 4), **{k: cfg[k] for k in ("iters", "batch_size", "lr")})
        config = model.config if args.load_model else dict(
            model.config, dataset=args.dataset, normal=normal, negative=args.negative, test_half=args.test_half,
            seed=args.seed, input_shape=list(x_test.shape[1:]), settings_of=data["like"])
        if args.save_recon:                                 # written only now: a degenerate run writes nothing
            say(f"wrote {save_recon(args.save_recon, x_test, y_test, phase1_ae(model), model)}")
        speed = (model.info["samples"], model.info["train_seconds"], len(x_test), ev["score_seconds"])
        return finish(args, argv, result, config, scores, y_test.numpy(), data["index"].numpy(),
                      lambda path: save(model, path, config), speed)


if __name__ == "__main__":
    main()
