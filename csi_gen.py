"""Boosting Semi-Supervised Anomaly Detection via Contrasting Synthetic Images — Sheng-Feng Yu and
Wei-Chen Chiu; standing on CSI: Contrasting Shifted Instances (Tack, Mo, Jeong, Shin, NeurIPS 2020).

CSI learns a feature extractor F by contrasting each image not only with other images but also with its
own rotated copies (shifted instances), and scores a test image by its cosine similarity to the nearest
training image times its feature norm. Yu & Chiu add an adversarial-autoencoder generator (encoder E,
generator G, image discriminator D, latent discriminator D') trained on the normal images, and feed its
synthetic inliers G(h) into F's contrastive learning as extra instances. G is also trained to make images
F handles like normal ones (L_CSI-S), and E/G reconstruct real images both in pixels and in F's feature
space (L_REC), so the synthetic images stay close to the normal class.

What this file reproduces: the one-class protocol (train on one class, test on the whole test split,
paper line 149) with the ablation of Sec. 3.2 / Table 1: --variant csi (F alone: the CSI baseline),
--variant g (generator without encoder), --variant full (default); the score M (Eq. 11) and its ensemble
M_ens (line 133); Figure 2's grid of real inliers and outliers with their reconstructions G(E(x)), and
samples G(h) (--save-samples).

Equation map
    Sec. 2.1 shifts S (rotations 0/90/180/270) ................ shift_batch()
    Sec. 2.1 transformations T (CSI's order, see below) ......... augment()
    Eq. (1)-(2) L_con-SI, NT-Xent over shifted instances ........ nt_xent()
    Eq. (3) L_cls-SI, shift classification ...................... csi_loss()
    Eq. (4) L_CSI = L_con-SI + L_cls-SI ......................... csi_loss()
    Eq. (5) L_JOINT = L_CSI(X u X~) ............................. generative_step(), last block
    Eq. (6) L_CSI-S = L_CSI(X~) ................................. generative_step()
    Eq. (7) L_D (real, synthetic, reconstructed) ................ loss_d(), loss_d_fool()
    Eq. (8) L_REC = lambda ||x - x^||^2 - sim(F(T1 x), F(T2 x^)) ... loss_rec()
    Eq. (9) L_LD (latent discriminator) ......................... loss_ld(), loss_ld_fool()
    Eq. (10) L_LREC = ||E(G(h)) - h||^2 ......................... loss_lrec()
    Alg. 1 (F every batch, generative block every N batches) .... train(), generative_step()
    Eq. (11) score M; M_ens (line 133) .......................... score_m(), shifted_features(), anomaly_scores()

What comes from CSI (Tack et al. 2020, ref. [32]; its released code alinlab/CSI) rather than this paper
    The paper gives Eq. (11) and says M is "a simplified score function from [32]" and that M_ens applies
    "multiple random transformations {T_r} ~ T in addition to S" (lines 125-133), without saying how the R
    draws are combined. M_ens here is CSI's evaluation (evals/ood_pre.py, README's one-class eval command
    `--ood_samples 10 --resize_factor 0.54 --resize_fix`): for every image and every shift S, the projection
    features F(T_r(S(x))) of R random draws are AVERAGED first, and Eq. (11) is applied to the averaged
    features of the test image and of every training image. The test-time draw T_r is CSI's training T with
    the random-resized-crop area fixed at 0.54 of the image (--test-crop-scale); flips are drawn per image and
    per shift, as in CSI's get_features. Also from CSI: the augmentation policy T (order and probabilities,
    below), the flip before the shift, the projection head's output as the score's feature space (CSI's
    s_con), NT-Xent temperature 0.5, batch 32 and the epoch count (--iters).
    What stays this paper's (Eq. 11): one nearest neighbour x~ for all shifts, M = max_x' sum_S m(S x, S x'),
    and no shift-classifier term and no per-shift weights (CSI's s_CSI takes a separate max per shift, adds
    the shift-classifier score and weights each term by 1/mean norm).

Choices where the paper is silent (and the flag that controls each)
    - Score argmax: the printed arg max drops S inside (sum_S m(x_test, x')); we take the x~ that maximises
      the same sum the score uses, sum_S m(S x_test, S x'), so M is the max over x' of one expression.
    - T (training, CSI's CIFAR policy, models/classifier.py get_simclr_augmentation): horizontal flip p 0.5,
      then the shift S, then colour jitter (brightness, contrast, saturation 0.4, hue 0.1) p 0.8, grayscale
      p 0.2, random resized crop of area (0.08, 1) and aspect (3/4, 4/3). The paper's line 43 lists Gaussian
      blur too ("following SimCLR"); CSI's CIFAR policy has none, so --blur-p defaults to 0 (SimCLR's ImageNet
      value 0.5 turns it on; blur then comes last, as in SimCLR). Inside the jitter we apply brightness,
      contrast, saturation, hue in this fixed order (torchvision's factors; hue as a rotation in YIQ space);
      CSI applies contrast and an HSV step in random order. Out-of-image crops are clamped to the image
      (CSI falls back to the whole image). On gray images (MNIST, F-MNIST) hue and saturation do nothing.
    - Batch norm: F's forward passes that train G/E (L_CSI-S, Eq. 6; the feature term of L_REC, Eq. 8) run
      with F frozen AND in eval mode, so synthetic and reconstructed batches never update F's running
      statistics; those come from F's own training batches (L_CSI on real X every batch; L_JOINT on X u X~,
      Eq. 5, F's training step). Scoring uses eval mode.
    - L_D and L_LD are the standard GAN cross-entropies; D and D' minimise them, (G, E) and E take the
      non-saturating step (targets flipped) instead of maximising them.
    - ||x - x^||^2 in Eq. (8) is the mean over pixels (with a sum over 3072 pixels lambda = 100 would
      drown the feature term); ||E(G(h)) - h||^2 in Eq. (10) is the sum over the latent's coordinates.
      Both are averaged over the batch. sim in Eq. (8) is cosine similarity of F's projection outputs.
    - X~ in Eq. (5) and (6) is a fresh batch G(h) of the same size as X; in Eq. (5) it is detached (only
      F steps on L_JOINT).
    - Alg. 1's generative block runs on batches 0, N, 2N, ... (0-based), so the smoke run --iters 2 runs it.
    - Architectures (--width, --gan-width, --latent-dim, --ld-width): F = CIFAR ResNet-18 (common.py);
      G and D = the "standard CNN" of the spectral-normalisation paper (Miyato et al., 2018, Table 3), D
      with spectral norm, G with BN; E mirrors G (strided convolutions, BN, LeakyReLU 0.2); D' = MLP with
      two hidden layers (as in adversarial autoencoders).
    - Optimiser: Adam, lr 2e-4, betas (0.9, 0.999) for every network (line 146), constant, no weight decay.
      Schedule (--iters): the paper gives no epoch count and says "most of our optimization settings
      follows [32]" (line 146); CSI's released code trains --epochs 1000 by default (common/common.py), so
      the default is 1000 epochs of the normal training set at batch 32 (CSI's per-GPU --batch_size; its
      README runs 4 GPUs). CSI's LARS/cosine schedule is not used: the paper names Adam.
    - 28x28 grayscale sets (MNIST, Fashion-MNIST, digits) are repeated to 3 channels and zero-padded to 32x32.
    - Images live in [0, 1]; F and E map them to [-1, 1] inside (CSI's normalise layer); G ends in tanh,
      mapped back to [0, 1].
    - --dataset digits (offline install check, not in the paper): widths 8 and --ensemble 2 unless given,
      so that the default run finishes in about a minute on a CPU (printed at start-up).

Measured (Sec. 3.2's ablation at the cpu_ablation protocol of benchmarks/protocols.json: 150 batches of 32,
widths 8, single-view M, Fashion-MNIST, ten classes, seeds 0 and 1, 2-core CPU;
benchmarks/results/csi_gen_fashion-mnist_cpu_ablation.md):
        variant                       seed 0   seed 1   both    paired difference to CSI (class x seed)
        --variant csi (CSI alone)     85.42    79.46    82.44   -
        --variant g   (CSI + G)       83.41    81.53    82.47   +0.03 +- 7.66 (higher in 8 of 20 pairs)
        --variant full (CSI + G + E)  84.26    78.11    81.19   -1.26 +- 2.22 (higher in 6 of 20 pairs)
    The generator did not help at this budget (0.08% of the default schedule; its samples are still coarse,
    benchmarks/results/figures/csi_gen_fashion-mnist_cpu_ablation_full_c0.png); the paper's gains (+0.5 G, +0.8
    full on CIFAR-10, Sec. 3.2) are at full training. M_ens at this budget, one probe (`--variant csi
    --iters 150 --width 8 --gan-width 8 --ensemble 10 --normal 0 --seed 0` on Fashion-MNIST): 80.42, against
    85.80 for the single-view M of the same run, so the protocol scores with M.

Run:  python csi_gen.py --dataset cifar10 --normal 0 --variant full
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

from common import DataError, IMAGE_DATASETS, ResNet18, load_images, one_class_split, parse_normal

SHIFTS = 4                  # rotations by 0, 90, 180, 270 degrees (Sec. 2.1, line 137)
ADAM_BETAS = (0.9, 0.999)   # line 146
EPOCHS = 1000               # CSI's released code, --epochs default (the paper gives none; line 146 follows [32])
DIGITS = dict(width=8, gan_width=8, ensemble=2)   # offline install check only (not in the paper)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors in the project's shape: 'error: <what>. <what to do>', exit 2."""

    def error(self, message):
        print(f"error: {message}. Run `python {self.prog} --help` for the accepted values.", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None):
    p = ArgumentParser(description="CSI + adversarial-autoencoder synthetic inliers (Yu & Chiu)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="cifar10", choices=list(IMAGE_DATASETS),
                   help="cifar10 (Sec. 3); others follow the same protocol (28x28 gray: 3 channels, zero-padded "
                        "to 32x32; cifar100 = 20 superclasses; digits = offline install check)")
    p.add_argument("--normal", default="0", help="normal class, or a comma list for multi-class normal data "
                                                 "(line 149: one class)")
    p.add_argument("--variant", default="full", choices=["csi", "g", "full"],
                   help="Sec. 3.2 ablation: csi = F alone (the CSI baseline); g = + generator without encoder "
                        "(L_D on real and G(h), L_CSI-S, L_JOINT); full = + encoder (all of Alg. 1)")
    p.add_argument("--data-root", default=None, help="datasets in torchvision's layout (default: $AD_DATA_ROOT, "
                                                     "else ./data)")
    p.add_argument("--seed", type=int, default=0, help="random seed (CPU runs are repeatable)")
    p.add_argument("--device", default="auto", help="auto = cuda if available, else cpu")
    p.add_argument("--iters", type=int, default=None,
                   help=f"training batches (Alg. 1 loop). Default: {EPOCHS} epochs of the normal training set "
                        "(CSI's code default --epochs 1000; the paper gives no epoch count, line 146 follows [32])")
    p.add_argument("--batch-size", type=int, default=32,
                   help="real images per batch, before 4 shifts x 2 views (CSI's --batch_size 32 per GPU; paper "
                        "silent)")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate for every network, betas (0.9, "
                                                         "0.999) (line 146)")
    p.add_argument("--temperature", type=float, default=0.5, help="NT-Xent temperature tau (Eq. 1; CSI's 0.5)")
    p.add_argument("--gen-every", type=int, default=5,
                   help="N: the generative block runs every N batches (Alg. 1; N = 5, line 146)")
    p.add_argument("--lambda-rec", type=float, default=100.0, help="lambda of L_REC (Eq. 8; 100, line 84)")
    p.add_argument("--width", type=int, default=None,
                   help="F's ResNet-18 base width; 64 = the standard 512-d network (line 137). Smaller for CPU "
                        "runs. Default 64 (digits: 8)")
    p.add_argument("--proj-dim", type=int, default=128, help="projection head output size (SimCLR/CSI: 128)")
    p.add_argument("--gan-width", type=int, default=None,
                   help="base width of G, E and D: SN-GAN standard CNN has 64..512 channels = 64 (Miyato et al., "
                        "Table 3; line 146 cites [23]). Smaller for CPU runs. Default 64 (digits: 8)")
    p.add_argument("--latent-dim", type=int, default=128, help="size of h ~ N(0, I) (SN-GAN's 128; paper silent)")
    p.add_argument("--ld-width", type=int, default=1000,
                   help="hidden width of the latent discriminator D' (two layers; adversarial autoencoders' 1000; "
                        "paper silent)")
    p.add_argument("--blur-p", type=float, default=0.0,
                   help="probability of Gaussian blur in T. 0 = CSI's CIFAR policy (alinlab/CSI "
                        "get_simclr_augmentation has no blur); the paper's line 43 lists blur after SimCLR, whose "
                        "ImageNet value is 0.5")
    p.add_argument("--ensemble", type=int, default=None,
                   help="R: M_ens (line 133) averages F's features over R random draws of T per image and shift, "
                        "then scores (CSI's evaluation, --ood_samples 10 in its README); reported as auroc_ens. "
                        "0 = single view only. Default 10 (digits: 2)")
    p.add_argument("--test-crop-scale", type=float, default=0.54,
                   help="area fraction of the test-time random resized crop in M_ens (CSI's README eval: "
                        "--resize_factor 0.54 --resize_fix); the other test-time steps and probabilities are T's "
                        "(flip 0.5 [CSI], jitter 0.8 [CSI], grayscale 0.2 [CSI], blur --blur-p)")
    p.add_argument("--log-every", type=int, default=100, help="progress line every this many batches")
    p.add_argument("--save-samples", default=None,
                   help="PNG grid like Figure 2: real inliers, their reconstructions G(E(x)), real outliers (test split) "
                        "and their reconstructions (full only), samples G(h)")
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                   help="memory format of F (speed only; not in the paper). auto: on for CPU, where it measured faster")
    p.add_argument("--json", default=None, help="also write the RESULT keys to this JSON file (atomic)")
    args = p.parse_args(argv)
    args.digits_defaults = []
    for name, paper_value in (("width", 64), ("gan_width", 64), ("ensemble", 10)):
        if getattr(args, name) is None:
            if args.dataset == "digits":
                setattr(args, name, DIGITS[name])
                args.digits_defaults.append(f"--{name.replace('_', '-')} {DIGITS[name]}")
            else:
                setattr(args, name, paper_value)
    return args


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------ bad input

def check_number(args, name, low=None, high=None, low_open=False):
    """--name must be finite and within [low, high] (low excluded with low_open); None = not given (default)."""
    v = getattr(args, name)
    if v is None:
        return
    flag = "--" + name.replace("_", "-")
    if isinstance(v, float) and not math.isfinite(v):
        raise DataError(f"{flag} must be a finite number (got {v}). Pass a plain number such as {flag} 1")
    if (low is not None and (v < low or (low_open and v == low))) or (high is not None and v > high):
        fmt = lambda x: str(int(x)) if float(x).is_integer() else f"{x:g}"      # 4294967295, not 4.29497e+09
        rng = f"{'>' if low_open else '>='} {fmt(low)}" if high is None else f"in [{fmt(low)}, {fmt(high)}]"
        raise DataError(f"{flag} must be {rng} (got {fmt(v)}). Pass a value in that range")


def check_output_path(path, flag):
    """An output path is tried BEFORE training, so that no finished run is thrown away at the end."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise DataError(f"{flag} {path} is a folder. Give a file name, e.g. {flag} {os.path.join(path, 'out.json')}")
    if not os.path.isdir(folder):
        raise DataError(f"{flag} {path}: the folder {folder} does not exist. Create it first, or choose another path")
    probe = os.path.join(folder, f".write-test-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise DataError(f"{flag} {path}: cannot write into {folder} ({e.strerror}). Choose a writable folder") from None


def pick_device(name):
    """--device auto|cpu|cuda|cuda:N -> torch.device; an unknown or absent device is an error before any work."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DataError(f"unknown --device '{name}'. Use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError(f"--device {name} was asked for, but torch finds no CUDA GPU on this machine. "
                            "Use --device cpu (or auto, which picks cuda only when there is one)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DataError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"numbered 0..{torch.cuda.device_count() - 1}. Pick one of those")
    elif device.type != "cpu":
        raise DataError(f"--device {name} is not supported by this script. Use auto, cpu, cuda or cuda:N")
    return device


def check_args(args):
    """Every user-typed number, the device and every output path, before any data is loaded."""
    check_number(args, "seed", 0, 2 ** 32 - 1)
    check_number(args, "iters", 1)
    check_number(args, "batch_size", 2)   # NT-Xent needs other instances and F has batch norm
    check_number(args, "lr", 0, low_open=True)
    check_number(args, "temperature", 0, low_open=True)
    check_number(args, "gen_every", 1)
    check_number(args, "lambda_rec", 0)
    for name in ("width", "proj_dim", "gan_width", "latent_dim", "ld_width", "log_every"):
        check_number(args, name, 1)
    check_number(args, "blur_p", 0, 1)
    check_number(args, "ensemble", 0)
    check_number(args, "test_crop_scale", 0, 1)
    if args.test_crop_scale == 0:
        raise DataError("--test-crop-scale must be > 0 (got 0). Pass an area fraction in (0, 1], e.g. 0.54")
    if args.save_samples and args.variant == "csi":
        raise DataError("--save-samples needs a generator, and --variant csi has none. Use --variant g or full, "
                        "or drop --save-samples")
    check_output_path(args.json, "--json")
    check_output_path(args.save_samples, "--save-samples")
    return pick_device(args.device)


def check_finite(value, where):
    if not math.isfinite(value):
        raise FloatingPointError(f"training diverged: {where} is {value}. Try a smaller --lr")


# ------------------------------------------------------------------------------------------ shifts and T

def shift_batch(x):
    """S(x) for the four rotations: (B, C, H, W) -> (4B, C, H, W), copy k = rotation by 90k degrees,
    and the shift labels (4B,) = k (Sec. 2.1)."""
    xs = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(SHIFTS)])
    labels = torch.arange(SHIFTS, device=x.device).repeat_interleave(len(x))
    return xs, labels


def random_hflip(x):
    """Horizontal flip with p = 0.5 per sample (CSI: before the shift, so it cannot contradict the rotation)."""
    flip = torch.rand(len(x), 1, 1, 1, device=x.device) < 0.5
    return torch.where(flip, x.flip(3), x)


def random_resized_crop(x, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Per-sample random crop (area fraction ~ U(scale), log aspect ~ U(log ratio)) resized back to the
    input size, as one affine_grid/grid_sample call. Crops larger than the image are clamped to it."""
    b, dev = len(x), x.device
    area = torch.empty(b, device=dev).uniform_(*scale)
    aspect = torch.exp(torch.empty(b, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    w = torch.sqrt(area * aspect).clamp(max=1.0)          # crop width as a fraction of the side
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 1, 1] = w, h
    theta[:, 0, 2] = (torch.rand(b, device=dev) * 2 - 1) * (1 - w)   # centre, crop inside the image
    theta[:, 1, 2] = (torch.rand(b, device=dev) * 2 - 1) * (1 - h)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def gray(x):
    """ITU-R 601 luma, (B, 3, H, W) -> (B, 1, H, W)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def color_jitter(x, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8):
    """CSI's colour distortion strengths and probability (0.4, 0.4, 0.4, 0.1; p 0.8), per-sample factors."""
    b, dev = len(x), x.device
    factor = lambda s: 1 + (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * s
    y = (x * factor(brightness)).clamp(0, 1)
    m = gray(y).mean((1, 2, 3), keepdim=True)
    y = ((y - m) * factor(contrast) + m).clamp(0, 1)
    g = gray(y)
    y = ((y - g) * factor(saturation) + g).clamp(0, 1)
    angle = (torch.rand(b, device=dev) * 2 - 1) * hue * 2 * math.pi   # hue shift as a rotation of (I, Q)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(b, 3, 3, device=dev)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    yiq = _RGB2YIQ.to(dev)
    mat = torch.linalg.inv(yiq) @ rot @ yiq                            # (b, 3, 3) per-sample hue matrix
    y = torch.einsum("bij,bjhw->bihw", mat, y).clamp(0, 1)
    apply = torch.rand(b, 1, 1, 1, device=dev) < p
    return torch.where(apply, y, x)


def random_grayscale(x, p=0.2):
    """CSI's RandomColorGrayLayer: luma in all three channels with probability p = 0.2 per sample."""
    apply = torch.rand(len(x), 1, 1, 1, device=x.device) < p
    return torch.where(apply, gray(x).expand_as(x), x)


def gaussian_blur(x, p=0.5, sigma=(0.1, 2.0)):
    """Per-sample Gaussian blur (SimCLR: kernel 10% of the side, sigma ~ U(0.1, 2.0)), p per sample."""
    b, c, hgt, wid = x.shape
    k = max(3, int(math.ceil(0.1 * hgt)) // 2 * 2 + 1)
    s = torch.empty(b, 1, device=x.device).uniform_(*sigma)
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kern = torch.exp(-offsets ** 2 / (2 * s ** 2))
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, 0)          # (b*c, k)
    y = F.pad(x.reshape(1, b * c, hgt, wid), (k // 2,) * 4, mode="reflect")
    y = F.conv2d(y, kern.view(b * c, 1, k, 1), groups=b * c)                  # vertical pass
    y = F.conv2d(y, kern.view(b * c, 1, 1, k), groups=b * c)                  # horizontal pass
    apply = torch.rand(b, 1, 1, 1, device=x.device) < p
    return torch.where(apply, y.reshape(b, c, hgt, wid), x)


def augment(x, blur_p, crop_scale=(0.08, 1.0)):
    """T after the flip and the shift, in CSI's order (get_simclr_augmentation): colour jitter (p 0.8),
    grayscale (p 0.2), random resized crop (area ~ U(crop_scale)); then Gaussian blur with p = blur_p
    (off by default, as in CSI). Every sample draws its own parameters."""
    x = color_jitter(x)
    x = random_grayscale(x)
    x = random_resized_crop(x, crop_scale)
    return gaussian_blur(x, blur_p) if blur_p > 0 else x


# ------------------------------------------------------------------------------------------ models

def match_format(x, weight):
    """Speed only: give x the memory format (channels_last or not) of the first convolution it meets;
    mixing the two formats makes CPU convolutions and batch norm several times slower."""
    cl = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    return x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


class CSINet(nn.Module):
    """F: ResNet-18 (512-d for width 64) with the projection head 512->512->ReLU->128 for the contrastive
    loss and a linear head classifying the shift (Sec. 2.1). forward(x in [0, 1]) -> (z, shift logits)."""

    def __init__(self, width=64, proj_dim=128):
        super().__init__()
        self.backbone = ResNet18(3, width)
        d = self.backbone.out_dim
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, proj_dim))
        self.shift_head = nn.Linear(d, SHIFTS)

    def forward(self, x):
        x = match_format(x * 2 - 1, self.backbone.conv1.weight)
        feat = self.backbone(x)                              # (B, 8w)
        return self.projection(feat), self.shift_head(feat)  # (B, proj_dim), (B, 4)


class Generator(nn.Module):
    """G: SN-GAN standard CNN generator for 32x32 (Miyato et al., Table 3), h -> image in [0, 1]."""

    def __init__(self, latent_dim=128, w=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 8 * w * 16), nn.Unflatten(1, (8 * w, 4, 4)), nn.BatchNorm2d(8 * w), nn.ReLU(),
            nn.ConvTranspose2d(8 * w, 4 * w, 4, 2, 1), nn.BatchNorm2d(4 * w), nn.ReLU(),   # (B, 4w, 8, 8)
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1), nn.BatchNorm2d(2 * w), nn.ReLU(),   # (B, 2w, 16, 16)
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU(),           # (B, w, 32, 32)
            nn.Conv2d(w, 3, 3, 1, 1), nn.Tanh())                                           # (B, 3, 32, 32)

    def forward(self, h):
        return (self.net(h) + 1) / 2


class Encoder(nn.Module):
    """E: mirror image of G (Sec. 2.2), image in [0, 1] -> h."""

    def __init__(self, latent_dim=128, w=64):
        super().__init__()
        lrelu = lambda: nn.LeakyReLU(0.2)
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, 1, 1), nn.BatchNorm2d(w), lrelu(),                   # (B, w, 32, 32)
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.BatchNorm2d(2 * w), lrelu(),           # (B, 2w, 16, 16)
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.BatchNorm2d(4 * w), lrelu(),       # (B, 4w, 8, 8)
            nn.Conv2d(4 * w, 8 * w, 4, 2, 1), nn.BatchNorm2d(8 * w), lrelu(),       # (B, 8w, 4, 4)
            nn.Flatten(), nn.Linear(8 * w * 16, latent_dim))                        # (B, latent_dim)

    def forward(self, x):
        return self.net(x * 2 - 1)


class Discriminator(nn.Module):
    """D: SN-GAN standard CNN discriminator for 32x32 (Miyato et al., Table 3), spectral norm, LeakyReLU 0.1.
    Returns one logit per image."""

    def __init__(self, w=64):
        super().__init__()
        sn = nn.utils.spectral_norm
        lrelu = lambda: nn.LeakyReLU(0.1)
        self.net = nn.Sequential(
            sn(nn.Conv2d(3, w, 3, 1, 1)), lrelu(), sn(nn.Conv2d(w, w, 4, 2, 1)), lrelu(),                 # 16x16
            sn(nn.Conv2d(w, 2 * w, 3, 1, 1)), lrelu(), sn(nn.Conv2d(2 * w, 2 * w, 4, 2, 1)), lrelu(),     # 8x8
            sn(nn.Conv2d(2 * w, 4 * w, 3, 1, 1)), lrelu(), sn(nn.Conv2d(4 * w, 4 * w, 4, 2, 1)), lrelu(), # 4x4
            sn(nn.Conv2d(4 * w, 8 * w, 3, 1, 1)), lrelu(),
            nn.Flatten(), sn(nn.Linear(8 * w * 16, 1)))

    def forward(self, x):
        return self.net(x * 2 - 1).view(-1)


class LatentDiscriminator(nn.Module):
    """D': MLP on h telling the prior N(0, I) from E(x) (Sec. 2.2)."""

    def __init__(self, latent_dim=128, hidden=1000):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, h):
        return self.net(h).view(-1)


# ------------------------------------------------------------------------------------------ losses

def nt_xent(z, temperature):
    """SimCLR's NT-Xent over 2M projections: rows [0, M) are view 1 and rows [M, 2M) view 2 of the same M
    instances (here M = 4B: every shifted copy is its own instance). Anchor i's positive is i +- M; all
    other 2M - 2 rows, other rotations of the same image included, are negatives (Eq. 1-2)."""
    n = len(z)
    z = F.normalize(z, dim=1)
    logits = z @ z.t() / temperature                                      # sim(z_i, z_j) / tau
    logits = logits.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), float("-inf"))  # k != i
    positives = (torch.arange(n, device=z.device) + n // 2) % n
    return F.cross_entropy(logits, positives)     # Eq. (2): mean over anchors of -log softmax at the positive


def csi_loss(net, x, temperature, blur_p):
    """L_CSI(X) = L_con-SI + L_cls-SI (Eq. 4) for a batch x (B, 3, 32, 32) in [0, 1]. Each image gets two
    independently flipped views; both carry every shift S; then T with per-sample parameters."""
    views = random_hflip(torch.cat([x, x]))                      # (2B): view 1, view 2
    v1, labels = shift_batch(views[:len(x)])                     # (4B), shifts of view 1
    v2, _ = shift_batch(views[len(x):])                          # (4B), same shifts of view 2
    z, logits = net(augment(torch.cat([v1, v2]), blur_p))        # (8B, d), (8B, 4)
    l_con = nt_xent(z, temperature)                              # Eq. (1)-(2)
    l_cls = F.cross_entropy(logits, labels.repeat(2))            # Eq. (3)
    return l_con + l_cls, l_con, l_cls                           # Eq. (4)


def loss_d(d, x, x_syn, x_rec=None):
    """Eq. (7) for D: real x -> 1, synthetic G(h) -> 0, reconstructed G(E(x)) -> 0 (inputs detached)."""
    bce = F.binary_cross_entropy_with_logits
    real = d(x)
    loss = bce(real, torch.ones_like(real))
    for fake in ([x_syn] if x_rec is None else [x_syn, x_rec]):
        out = d(fake.detach())
        loss = loss + bce(out, torch.zeros_like(out))
    return loss


def loss_d_fool(d, x_syn, x_rec=None):
    """Eq. (7) for (G, E), non-saturating: synthetic and reconstructed images -> 1."""
    loss = 0.0
    for fake in ([x_syn] if x_rec is None else [x_syn, x_rec]):
        out = d(fake)
        loss = loss + F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
    return loss


def loss_ld(d_lat, h, h_enc):
    """Eq. (9) for D': prior samples h -> 1, codes E(x) -> 0 (detached)."""
    bce = F.binary_cross_entropy_with_logits
    real, fake = d_lat(h), d_lat(h_enc.detach())
    return bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))


def loss_ld_fool(d_lat, h_enc):
    """Eq. (9) for E, non-saturating: codes E(x) -> 1."""
    out = d_lat(h_enc)
    return F.binary_cross_entropy_with_logits(out, torch.ones_like(out))


def loss_rec(net, x, x_rec, lam, blur_p):
    """Eq. (8): lambda ||x - x^||^2 (mean over pixels and batch) - sim(F(T1(x)), F(T2(x^))) (cosine of the
    projection outputs, batch mean); T1, T2 independent draws of T."""
    pixel = ((x - x_rec) ** 2).flatten(1).mean(1).mean()
    z_real, _ = net(augment(random_hflip(x), blur_p))
    z_rec, _ = net(augment(random_hflip(x_rec), blur_p))
    sim = F.cosine_similarity(z_real, z_rec, dim=1).mean()
    return lam * pixel - sim, pixel, sim


def loss_lrec(h, h_cycle):
    """Eq. (10): ||E(G(h)) - h||^2, summed over the latent coordinates, batch mean."""
    return ((h_cycle - h) ** 2).sum(1).mean()


# ------------------------------------------------------------------------------------------ training

def set_requires_grad(net, flag):
    for q in net.parameters():
        q.requires_grad_(flag)


def freeze(net):
    """F as a fixed scorer while G/E learn: no gradients to its weights, and eval-mode batch norm, so the
    synthetic or reconstructed batch neither normalises with its own statistics nor moves F's running ones."""
    set_requires_grad(net, False)
    net.eval()


def unfreeze(net):
    set_requires_grad(net, True)
    net.train()


def step(opts, loss, *names):
    """One optimisation step of the named networks on loss (their gradients only)."""
    for n in names:
        opts[n].zero_grad(set_to_none=True)
    loss.backward()
    for n in names:
        opts[n].step()


def generative_step(nets, opts, x, args, it):
    """Alg. 1, the block run every N batches, in the paper's order. Returns the loss values."""
    f, g, d = nets["F"], nets["G"], nets["D"]
    full = args.variant == "full"
    b, dev = len(x), x.device
    out = {}
    randn = lambda: torch.randn(b, args.latent_dim, device=dev)

    # Alg. 1, lines 109-111: D against (G, E) on L_D (Eq. 7): real x, synthetic G(h), reconstructed G(E(x))
    x_syn = g(randn())
    x_rec = g(nets["E"](x)) if full else None
    l_d = loss_d(d, x, x_syn, x_rec)
    step(opts, l_d, "D")
    set_requires_grad(d, False)
    l_fool = loss_d_fool(d, x_syn, x_rec)
    step(opts, l_fool, *(["G", "E"] if full else ["G"]))
    set_requires_grad(d, True)
    out.update(l_d=l_d.item(), l_gan=l_fool.item())

    # Alg. 1, line 112: G on L_CSI-S = L_CSI(X~) (Eq. 6), F frozen (eval-mode BN)
    freeze(f)
    l_csi_s = csi_loss(f, g(randn()), args.temperature, args.blur_p)[0]
    step(opts, l_csi_s, "G")
    out["l_csi_s"] = l_csi_s.item()

    if full:
        e, d_lat = nets["E"], nets["D_lat"]
        # Alg. 1, line 113: D' against E on L_LD (Eq. 9)
        h_enc = e(x)
        l_ld = loss_ld(d_lat, randn(), h_enc)
        step(opts, l_ld, "D_lat")
        set_requires_grad(d_lat, False)
        l_ld_fool = loss_ld_fool(d_lat, h_enc)
        step(opts, l_ld_fool, "E")
        set_requires_grad(d_lat, True)
        # Alg. 1, lines 114-115: G and E on L_REC (Eq. 8), F frozen (eval-mode BN)
        l_rec, pixel, sim = loss_rec(f, x, g(e(x)), args.lambda_rec, args.blur_p)
        step(opts, l_rec, "G", "E")
        # Alg. 1, line 116: E on L_LREC (Eq. 10)
        h = randn()
        l_lrec = loss_lrec(h, e(g(h).detach()))
        step(opts, l_lrec, "E")
        out.update(l_ld=l_ld.item(), l_e_fool=l_ld_fool.item(), l_rec=l_rec.item(), pixel=pixel.item(),
                   sim=sim.item(), l_lrec=l_lrec.item())
    unfreeze(f)

    # Alg. 1, line 117: F on L_JOINT = L_CSI(X u X~) (Eq. 5), X~ a fresh detached batch G(h); F trains here
    with torch.no_grad():
        x_syn = g(randn())
    l_joint = csi_loss(f, torch.cat([x, x_syn]), args.temperature, args.blur_p)[0]
    step(opts, l_joint, "F")
    out["l_joint"] = l_joint.item()
    for k, v in out.items():
        check_finite(v, f"{k} at iteration {it}")
    return out


def train(nets, opts, x_train, args, log=print):
    """Alg. 1: every batch F steps on L_CSI(X); on batches 0, N, 2N, ... the generative block follows."""
    n, t0, gen = len(x_train), time.time(), {}
    for it in range(args.iters):
        args.progress = f"training, batch {it + 1}/{args.iters}"
        xb = x_train[torch.randint(n, (args.batch_size,), device=x_train.device)]
        l_csi, l_con, l_cls = csi_loss(nets["F"], xb, args.temperature, args.blur_p)     # Alg. 1, line 107
        step(opts, l_csi, "F")
        check_finite(l_csi.item(), f"L_CSI at iteration {it + 1}")
        if args.variant != "csi" and it % args.gen_every == 0:                           # Alg. 1, line 108
            gen = generative_step(nets, opts, xb, args, it + 1)
        if (it + 1) % args.log_every == 0 or it + 1 == args.iters:
            extra = "".join(f" {k}={v:.4f}" for k, v in gen.items())
            log(f"iter {it + 1}/{args.iters} l_csi={l_csi.item():.4f} l_con={l_con.item():.4f} "
                f"l_cls={l_cls.item():.4f}{extra} elapsed={time.time() - t0:.1f}s", flush=True)
    return time.time() - t0


# ------------------------------------------------------------------------------------------ score

@torch.no_grad()
def shifted_features(net, x, views=0, blur_p=0.0, crop_scale=0.54, chunk=64):
    """F(S(x)) for every shift S: (N, 3, 32, 32) -> (4, N, d), in eval mode.
    views = 0: one plain view per shift (Eq. 11 as printed).
    views = R > 0 (M_ens, CSI's get_features): R random test-time draws per image and shift -- flip (drawn
    per image and per shift, before the rotation), then T with the crop area fixed at crop_scale -- and the
    R feature vectors are AVERAGED, so the score sees one mean feature per image and shift."""
    was_training = net.training
    net.eval()
    out = []
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        if views == 0:
            feats = net(shift_batch(xb)[0])[0]                                      # (4b, d)
        else:
            feats = 0
            for _ in range(views):
                xs = torch.cat([torch.rot90(random_hflip(xb), k, dims=(2, 3)) for k in range(SHIFTS)])
                feats = feats + net(augment(xs, blur_p, (crop_scale, crop_scale)))[0]
            feats = feats / views                                                   # mean over the R draws
        out.append(feats.view(SHIFTS, len(xb), -1))
    net.train(was_training)
    return torch.cat(out, 1)


@torch.no_grad()
def score_m(test_feats, train_feats, chunk=1024):
    """Eq. (11): M(x) = max_x' sum_S m(S x, S x'), m(a, b) = sim(F(a), F(b)) * ||F(a)||, over the training
    set. test_feats (4, Nt, d), train_feats (4, N, d). sim * ||F(a)|| = <F(a), F(b)/||F(b)||>, so for each
    chunk of test images the sum over S is one batched matrix product. Returns (M, index of x~)."""
    bank = F.normalize(train_feats, dim=2)                                        # (4, N, d)
    scores, nn_idx = [], []
    for i in range(0, test_feats.size(1), chunk):
        summed = torch.bmm(test_feats[:, i:i + chunk], bank.transpose(1, 2)).sum(0)  # (chunk, N)
        best = summed.max(1)
        scores.append(best.values)
        nn_idx.append(best.indices)
    return torch.cat(scores), torch.cat(nn_idx)


def anomaly_scores(net, x_train, x_test, ensemble=0, blur_p=0.0, crop_scale=0.54):
    """Anomaly score = -M (M is a normality score), single view; with ensemble R > 0 also -M_ens, Eq. (11)
    on features averaged over R test-time draws of T (CSI's evaluation)."""
    m, _ = score_m(shifted_features(net, x_test), shifted_features(net, x_train))
    m_ens = None
    if ensemble > 0:
        m_ens, _ = score_m(shifted_features(net, x_test, ensemble, blur_p, crop_scale),
                           shifted_features(net, x_train, ensemble, blur_p, crop_scale))
        m_ens = -m_ens.cpu().numpy()
    return -m.cpu().numpy(), m_ens


# ------------------------------------------------------------------------------------------ data, main

def to_32x32_rgb(x):
    """(N, 1, 28, 28) gray -> (N, 3, 32, 32): repeat to 3 channels, zero-pad 2 pixels per side."""
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    pad = (32 - x.shape[-1]) // 2
    return F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x


@torch.no_grad()
def save_samples(nets, x_train, args, path, x_outliers=None, n=8):
    """Figure 2 as one grid of n columns, saved with torchvision.utils.save_image. Rows: real inliers x;
    their reconstructions G(E(x)) (Fig. 2a); real outliers from the test split and their reconstructions
    (Fig. 2b); samples G(h), h ~ N(0, I). Without an encoder (--variant g): inliers and samples only."""
    import torchvision.utils
    modes = {k: v.training for k, v in nets.items()}
    for net in nets.values():
        net.eval()
    g, x = nets["G"], x_train[:n]
    rows = [x]
    if args.variant == "full":
        rows.append(g(nets["E"](x)))
        if x_outliers is not None and len(x_outliers) >= n:
            rows += [x_outliers[:n], g(nets["E"](x_outliers[:n]))]
    rows.append(g(torch.randn(n, args.latent_dim, device=x.device)))
    torchvision.utils.save_image(torch.cat(rows).float().cpu(), path, nrow=n, padding=2)
    for k, net in nets.items():
        net.train(modes[k])
    return len(rows)


def build(args, device, channels_last):
    nets = {"F": CSINet(args.width, args.proj_dim)}
    if args.variant != "csi":
        nets.update(G=Generator(args.latent_dim, args.gan_width), D=Discriminator(args.gan_width))
    if args.variant == "full":
        nets.update(E=Encoder(args.latent_dim, args.gan_width), D_lat=LatentDiscriminator(args.latent_dim, args.ld_width))
    nets = {k: v.to(device) for k, v in nets.items()}
    if channels_last:   # F dominates the cost; G, E, D stay in the default format
        nets["F"] = nets["F"].to(memory_format=torch.channels_last)
    # line 146: Adam, lr 2e-4, betas (0.9, 0.999), for every network
    opts = {k: torch.optim.Adam(v.parameters(), lr=args.lr, betas=ADAM_BETAS) for k, v in nets.items()}
    return nets, opts


def run(args, log=print):
    t_start = time.time()
    device = check_args(args)
    set_seed(args.seed)
    x_tr, y_tr, x_te, y_te = load_images(args.dataset, args.data_root)
    normal = parse_normal(args.normal, IMAGE_DATASETS[args.dataset][0])
    split = one_class_split(x_tr, y_tr, x_te, y_te, normal, seed=args.seed)
    x_train = to_32x32_rgb(split["train"]).to(device)
    x_test, y_test = to_32x32_rgb(split["test"][0]).to(device), split["test"][1]
    if args.iters is None:
        args.iters = EPOCHS * math.ceil(len(x_train) / args.batch_size)
    if args.digits_defaults:
        log(f"csi_gen: digits is an offline install check: using {', '.join(args.digits_defaults)} "
            "(paper-scale defaults: widths 64, --ensemble 10)", flush=True)
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and device.type == "cpu")
    nets, opts = build(args, device, channels_last)
    log(f"csi_gen: variant={args.variant} dataset={args.dataset} normal={','.join(map(str, normal))} "
        f"train={len(x_train)} test={len(x_test)} (anomalies {int(y_test.sum())}) iters={args.iters} "
        f"batch={args.batch_size} lr={args.lr:g} tau={args.temperature:g} N={args.gen_every} "
        f"width={args.width} gan_width={args.gan_width} blur_p={args.blur_p:g} ensemble={args.ensemble} "
        f"device={device}", flush=True)
    train_time = train(nets, opts, x_train, args, log)
    if args.save_samples:
        rows = save_samples(nets, x_train, args, args.save_samples, x_test[y_test.to(device) == 1])
        log(f"csi_gen: sample grid ({rows} rows, Figure 2) written to {args.save_samples}", flush=True)
    args.progress = f"scoring (training finished after {args.iters} batches)"
    ts = time.time()
    scores, scores_ens = anomaly_scores(nets["F"], x_train, x_test, args.ensemble, args.blur_p, args.test_crop_scale)
    score_time = time.time() - ts
    labels = y_test.numpy()
    result = {"method": "csi_gen", "dataset": args.dataset, "normal": ",".join(map(str, normal)), "seed": args.seed,
              "auroc": round(roc_auc_score(labels, scores), 4)}
    if scores_ens is not None:
        result["auroc_ens"] = round(roc_auc_score(labels, scores_ens), 4)
    result.update({"variant": args.variant, "iters": args.iters, "batch_size": args.batch_size,
                   "width": args.width, "gan_width": args.gan_width, "blur_p": args.blur_p,
                   "ensemble": args.ensemble, "test_crop_scale": args.test_crop_scale,
                   "device": device.type, "seconds": round(time.time() - t_start, 1),
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
    args.progress = "start-up (no training step taken yet)"
    try:
        return run(args)
    except (DataError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted during {args.progress}; no result was written", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
