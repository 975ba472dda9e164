"""Latent-Insensitive Autoencoders for Anomaly Detection.
Battikh and Lenskiy, Mathematics 10(1):112, 2022 (arXiv:2110.13101).
Paper text used here: ../shared/papers/003_b4ac146db443d313.txt (line numbers below refer to it).

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
    Table 1 (MNIST with Omniglot negatives, Fashion-MNIST with the next class as negatives, 2-class MNIST),
    Table 2 (SVHN / CIFAR-10 split into two 5-class halves, LIS-AE, LinSep-LIS-AE and the supervised upper
    bounds), Table 3 (other negative sets, tested on the normal class's half: --test-half), and the
    reconstruction grid of Figure 3 (--save-recon). Every run prints the AUROC of the phase-1 autoencoder
    (auroc_ae) and of the shaped model (auroc) on the same test set: they share encoder and decoder weights,
    "the most direct comparison" (line 246).

Equation map
    forward pass s = E(x), z = Z(s), x_hat = D(z) (Sec. 3.1) ...... LatentInsensitiveAE.forward()
    reconstruction error ||x_hat - x||_2 (loss and score, Sec. 3.4) reconstruction_error()
    Alg. 1, phase 1 (feature extraction) .......................... train_phase1()
    Eq. (1) latent-shaping loss ................................... latent_shaping_loss()
    Alg. 1, phase 2 (only Z trained on Eq. (1)) ................... train_phase2()
    LinSep-LIS-AE: BCE of a linear classifier on Z's pre-activation linsep_loss(), train_phase1()
    Sec. 5 negative sets and test protocols (lines 266, 271-273) .. negative_classes(), prepare()
    Sec. 5 Omniglot augmentation (blur, crop, flips; line 266) .... augment_negatives()
    Sec. 4.2 linear example ....................................... tests/test_lis_ae.py

Z's tanh and phase-1 standardisation (--latent-norm; the fix of the saturated latent)
    The paper's Z is "a fully connected bottleneck layer with a tanh activation" (line 244), and Sec. 3.1
    credits the tanh with a regularising effect (line 68). Trained as written with Adam (lr 1e-3, PyTorch's
    default init), phase 1 drives Z's pre-activation u into saturation within a few dozen steps. Measured
    on MNIST class 0 with Omniglot negatives (latent 32, 300 + 300 steps, seed 0; a diagnostic loop over
    this file's functions): 97.8% of |z| over 2000 test images exceed 0.99 after 10 steps and 100% after 30,
    every input gets the same code, so the "AE" outputs one fixed image, and phase 2 gets exactly zero
    gradient through tanh: LIS-AE = AE = 0.9662 (the earlier cpu sweeps: equal to four decimals on 10/10
    MNIST and 8/10 Fashion-MNIST classes). The cause: Adam moves each of a unit's 3136 weights by ~lr per
    step, in the same direction for every input while the decoder is still learning the mean image, so u
    drifts as one for all inputs. Alternatives measured in the same setting: lr 1e-4 still saturates (100%
    by step 100; AE 0.9655, LIS-AE 0.9707); Z's init scaled by 0.1 saturates as fast (AE = LIS-AE 0.9661);
    Z's own learning rate scaled by 0.03 keeps z in range (0% saturated, AE 0.9878), but phase 2 at lr 1e-3
    then wrecks the positives (their mean error 2.66 -> 6.30; LIS-AE 0.9757 < AE). Chosen, --latent-norm
    batch: during phase 1, u is standardised per unit over the batch of positives (BatchNorm1d without scale
    or shift), which removes the common drift: 0.6% of |z| > 0.99 on the test normals, AE 0.9899, and phase
    2 works as the paper describes, the positives' mean error 2.54 -> 2.51 while the negatives' rises 5.19
    -> 9.54 (gamma 9.49), LIS-AE 0.9947. When phase 1 ends, the standardisation (running mean and variance)
    is folded into Z's weight and bias, so from then on Z is exactly the paper's linear layer + tanh: phase 2
    trains that layer alone, and AE and LIS-AE are both scored with it. --latent-norm none restores the
    saturating original (the guard tests run it to show that they catch the failure); --latent-act linear
    drops the tanh (an ablation, not the paper's architecture). Every progress line prints `sat`, the
    fraction of |z| > 0.99 in the batch; RESULT records latent_saturated (phase-1 AE, whole test set); a
    warning is printed when more than half of the latent is saturated at the end of phase 1.

Choices where the paper is silent (each has a flag)
    - Widths and latent sizes. 28x28 inputs: E = conv 1->32 and 32->64 (4x4, stride 2), Z = linear 3136->16
      with tanh, D = linear 16->3136 then transposed convs 64->32->32 and a 3x3 conv to 1 channel. 32x32x3
      inputs: the same layers at width 64 (convs 3->64->128), Z = 8192->128. LeakyReLU slope 0.2. Flags
      --width and --latent. The paper reports "the best performing latent dimension for all models"
      (line 244) without giving it. We measured 16, 32 and 64 on four classes (cpu protocol: 300 + 300
      steps, seed 0, 2-core CPU), LIS-AE / AE AUROC:
          latent   MNIST 5          MNIST 8          F-MNIST 2        F-MNIST 6        mean
          16       0.9816/0.9703    0.9327/0.8805    0.8991/0.8686    0.8036/0.7933    0.9042/0.8782
          32       0.9809/0.9280    0.9137/0.8069    0.8996/0.8527    0.7884/0.7777    0.8957/0.8413
          64       0.9761/0.9124    0.9371/0.7701    0.8981/0.8598    0.7827/0.7723    0.8985/0.8286
      16 is best for LIS-AE and for the AE, so it is the default for 28x28 sets; RESULT records `latent`.
      The 32x32 default (128) is not measured: there is no SVHN/CIFAR data on this machine.
    - ||.||_2 is the per-sample Euclidean norm (not squared), averaged over the batch. Eq. (1)'s |gamma - .|
      is taken per negative sample, then averaged.
    - gamma: by default --gamma-scale (2.0) times the phase-1 AE's mean error on an augmented sample of
      2048 negatives, measured when phase 2 starts. Give --gamma to fix it. beta = 1 (--beta).
    - Optimiser Adam, lr 1e-3, batch 128 positives (plus 128 negatives when negatives are used), 2000 steps
      in each phase for 28x28 sets and 5000 for 32x32 sets (--iters sets both phases). digits: batch 64.
    - LinSep: the classifier is nn.Linear(latent, 1) on Z's pre-activation, with BCE weight 1
      (--linsep-weight). It is dropped after phase 1. Phase 1 still reconstructs positives only. The
      negatives' pre-activation is standardised with the positives' running statistics (not their own).
    - Omniglot augmentation, per sample on the device: horizontal and vertical flips (p = 0.5 each), random
      crop after 2-pixel zero padding, Gaussian blur (p = 0.5, 5x5 kernel, sigma ~ U(0.1, 1.5))
      (--no-neg-augment turns it off). Omniglot is resized to 28x28 with white strokes on black, like MNIST.
    - next-class with several normal classes: D- is the first class after the largest normal class that is
      not itself normal (9 wraps to 0); it is removed from the test set (line 266).
    - split and supervised (Table 2, lines 271-273; Table 4's "Sup. (0-4)", line 316): classes 0..n/2-1 and
      n/2..n-1 are the halves (0-4 / 5-9); all normal classes must be in one half and the test set is that
      half only. split: D- = the other half. supervised (an upper bound: it uses the anomalies' labels):
      D- = the normal half's other classes, i.e. exactly the test anomaly classes.
    - Cross-dataset D- is the whole training split of the other dataset, which must have the same image shape.
      --test-half tests on the normal class's half only, as Table 3 does for every negative set (line 300).
    - Inputs stay in [0, 1] (the decoder ends in a sigmoid). No validation set: the paper selects no model.
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
    "mnist":         dict(negative="omniglot", iters=2000, batch_size=128, lr=1e-3, latent=16, width=32),
    "fashion-mnist": dict(negative="next-class", iters=2000, batch_size=128, lr=1e-3, latent=16, width=32),
    "digits":        dict(negative="next-class", iters=2000, batch_size=64, lr=1e-3, latent=16, width=32),
    "svhn":          dict(negative="split", iters=5000, batch_size=128, lr=1e-3, latent=128, width=64),
    "cifar10":       dict(negative="split", iters=5000, batch_size=128, lr=1e-3, latent=128, width=64),
    "cifar100":      dict(negative="split", iters=5000, batch_size=128, lr=1e-3, latent=128, width=64),
}
LABEL_MODES = ("next-class", "split", "supervised")
NEGATIVE_CHOICES = ("none", "omniglot") + LABEL_MODES + tuple(DEFAULTS)
SATURATED = 0.99    # |z| above this counts as a saturated tanh unit (tanh' < 0.02)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors in the project's shape: 'error: <what>. <what to do>', exit 2."""

    def error(self, message):
        print(f"error: {message}. Run `python {self.prog} --help` for the accepted values.", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None):
    p = ArgumentParser(description="LIS-AE: latent-insensitive autoencoder (Battikh & Lenskiy)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=list(DEFAULTS),
                   help="mnist, fashion-mnist, svhn, cifar10 (Sec. 5); cifar100 (20 superclasses) and digits "
                        "(offline install check) are not in the paper")
    p.add_argument("--normal", default="0",
                   help="normal class, or a comma list for multi-class normal data (Table 1: 2-class MNIST 0,1 "
                        "2,3 ... 8,9)")
    p.add_argument("--negative", default=None, choices=NEGATIVE_CHOICES,
                   help="negative set D- (Sec. 5). Defaults: MNIST omniglot (line 266), Fashion-MNIST next-class "
                        "(line 266), SVHN/CIFAR split (lines 271-273). next-class: the class after the normal "
                        "one, removed from the test set. split: the other half of the classes (0-4 / 5-9); test on "
                        "the normal class's own half. supervised: the normal half's other classes, i.e. the test "
                        "anomalies themselves (upper bound, Table 2's Sup. rows). A dataset name: that dataset's "
                        "training split (Table 3). none: plain AE")
    p.add_argument("--test-half", action="store_true",
                   help="test only on the normal classes' half (0-4 or 5-9), as Table 3 does for every negative "
                        "set (line 300); split and supervised always do")
    p.add_argument("--data-root", default=None,
                   help="datasets in torchvision's layout (default: $AD_DATA_ROOT, else ./data); Omniglot from "
                        "ROOT/omniglot-py or the official small subsets in ROOT/omniglot_subsets")
    p.add_argument("--seed", type=int, default=0, help="random seed: init, batches, augmentation")
    p.add_argument("--device", default="auto", help="auto = cuda if available, else cpu; cpu, cuda, cuda:N")
    p.add_argument("--iters", type=int, default=None,
                   help="optimisation steps of each phase (Alg. 1 trains 'until convergence'; not given). "
                        "Our default: 2000 for 28x28 sets, 5000 for 32x32 sets")
    p.add_argument("--batch-size", type=int, default=None,
                   help="positives per step, and as many negatives (not in the paper: 128; digits 64)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate in both phases (not in the paper: 1e-3; with --latent-norm batch it "
                        "no longer saturates Z, see the docstring)")
    p.add_argument("--latent", type=int, default=None,
                   help="latent size, the output size of Z (not given; the paper reports 'the best performing "
                        "latent dimension', line 244). Default 16 for 28x28 sets (best of 16, 32, 64 on MNIST 5, 8 "
                        "and F-MNIST 2, 6 at 300 steps: mean LIS-AE 0.9042 / 0.8957 / 0.8985, AE 0.8782 / 0.8413 "
                        "/ 0.8286; docstring), 128 for 32x32 sets (not measured: no SVHN/CIFAR data here)")
    p.add_argument("--latent-norm", default="batch", choices=["batch", "none"],
                   help="batch: in phase 1 Z's pre-activation is standardised over the batch of positives, then "
                        "folded into Z's weights, so Z is linear + tanh from phase 2 on (not in the paper; chosen "
                        "because without it phase 1 saturates the tanh and phase 2 gets no gradient: MNIST class 0, "
                        "latent 32, 300 steps: 100%% of |z| > 0.99 and LIS-AE = AE = 0.9662; with it 0.6%%, AE "
                        "0.9899, LIS-AE 0.9947; lr 1e-4 or a smaller init did not help, see the docstring). "
                        "none: the saturating original, kept to show the failure")
    p.add_argument("--latent-act", default="tanh", choices=["tanh", "linear"],
                   help="activation of Z: tanh (line 244). linear drops it: an ablation, not the paper's "
                        "architecture")
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
                        "separate D+ from D- (BCE; Sec. 4.2)")
    p.add_argument("--linsep-weight", type=float, default=1.0,
                   help="weight of the LinSep BCE term in phase 1 (not given: 1)")
    p.add_argument("--no-neg-augment", action="store_true",
                   help="do not augment Omniglot negatives (line 266 augments them with blur, crop and flips)")
    p.add_argument("--save-recon", default=None,
                   help="write a PNG grid like Figure 3: rows of test inputs (8 normal, 8 anomalous), AE "
                        "output, LIS-AE output")
    p.add_argument("--json", default=None, help="also write the RESULT keys to this JSON file (atomic)")
    return p.parse_args(argv)


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------ input checks (issue 18)

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
    """Defaults per dataset, every user-typed number, the class list and negative protocol, the device and every
    output path, before any data is loaded."""
    if args.negative is None:
        args.negative = DEFAULTS[args.dataset]["negative"]
    check_number(args, "seed", 0, 2 ** 32 - 1)
    check_number(args, "iters", 1)
    check_number(args, "batch_size", 2)   # phase 1 standardises Z over the batch: needs >= 2
    check_number(args, "lr", 0, low_open=True)
    check_number(args, "latent", 1)
    check_number(args, "width", 1)
    check_number(args, "beta", 0)
    check_number(args, "gamma", 0)
    check_number(args, "gamma_scale", 0, low_open=True)
    check_number(args, "linsep_weight", 0)
    args.defaulted = [k for k, v in DEFAULTS[args.dataset].items() if getattr(args, k) is None]
    for k in args.defaulted:
        setattr(args, k, DEFAULTS[args.dataset][k])
    if args.linsep and args.negative == "none":
        raise DataError("--linsep needs a negative set, and --negative none trains a plain AE. Drop --linsep, or "
                        "pick a --negative set")
    n_classes, channels, side = IMAGE_DATASETS[args.dataset]
    if args.negative == args.dataset:
        raise DataError(f"--negative {args.negative} is the normal dataset itself. Use next-class, split or "
                        f"supervised for negatives from the same dataset")
    if args.negative == "omniglot" and (channels, side) != (1, 28):
        raise DataError(f"--negative omniglot gives 1x28x28 images, but {args.dataset} has {channels}x{side}x{side} "
                        f"images. Pick a negative set of the same shape (e.g. --negative split)")
    if args.negative in DEFAULTS and IMAGE_DATASETS[args.negative][1:] != (channels, side):
        c2, s2 = IMAGE_DATASETS[args.negative][1:]
        raise DataError(f"--negative {args.negative} has {c2}x{s2}x{s2} images, but {args.dataset} has "
                        f"{channels}x{side}x{side}. Pick a dataset of the same shape (Table 3 pairs MNIST with "
                        f"Fashion-MNIST and SVHN with CIFAR-10)")
    args.normal_classes = parse_normal(args.normal, n_classes)
    negative_classes(args.negative, args.normal_classes, n_classes, args.test_half)   # raises if impossible
    check_output_path(args.json, "--json")
    check_output_path(args.save_recon, "--save-recon")
    return pick_device(args.device)


# ------------------------------------------------------------------------------------------ model

class LatentInsensitiveAE(nn.Module):
    """s = E(x), z = Z(s) = act(latent(s)), x_hat = D(z). Phase 2 trains only `latent`, the linear part of Z.
    `norm` standardises Z's pre-activation during phase 1 (--latent-norm batch); fold_latent_norm() folds it
    into `latent` when phase 1 ends, after which it is the identity."""

    def __init__(self, encoder, latent, decoder, act, norm=None):
        super().__init__()
        self.encoder, self.latent, self.decoder, self.act = encoder, latent, decoder, act
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, x):
        s = self.encoder(x)              # s = E(x)
        u = self.norm(self.latent(s))    # Z's pre-activation (LinSep's classifier reads this)
        z = self.act(u)                  # z = Z(s), in [-1, 1] for tanh
        return self.decoder(z), u        # x_hat = D(z)


def build_model(channels, side, width, latent, latent_act="tanh", latent_norm="batch"):
    """The architecture of Sec. 5 (line 244): E = two convs with LeakyReLU; Z = one fully connected layer with
    tanh (latent_act="linear" drops it, an ablation); D = fully connected + LeakyReLU, two transposed convs with
    LeakyReLU, a conv with sigmoid. latent_norm="batch" adds the phase-1 standardisation of Z's pre-activation
    (BatchNorm1d without scale and shift; see the docstring). The paper gives no widths or latent sizes: see
    --width, --latent."""
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
    return LatentInsensitiveAE(encoder, latent_layer, decoder, nn.Tanh() if latent_act == "tanh" else nn.Identity(),
                               norm)


@torch.no_grad()
def fold_latent_norm(model):
    """End of phase 1: fold the standardisation (u - mean) / sqrt(var + eps), with its running statistics, into
    Z's weight and bias, so that Z is the paper's linear layer + tanh for phase 2 and for scoring.
    The outputs are unchanged (up to float rounding) in evaluation mode."""
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


@torch.no_grad()
def latent_codes(model, x, chunk=1000):
    """z = Z(E(x)) for every image, in chunks (evaluation mode)."""
    was = model.training
    model.eval()
    z = torch.cat([model.act(model(x[i:i + chunk])[1]) for i in range(0, len(x), chunk)])
    model.train(was)
    return z


@torch.no_grad()
def anomaly_scores(model, x, chunk=1000):
    """Anomaly score = reconstruction error ||x_hat - x||_2 (Sec. 3.4), in chunks (evaluation mode)."""
    was = model.training
    model.eval()
    s = torch.cat([reconstruction_error(model(x[i:i + chunk])[0], x[i:i + chunk]) for i in range(0, len(x), chunk)])
    model.train(was)
    return s.cpu().numpy()


def auroc(model, x, y):
    return roc_auc_score(y.cpu().numpy(), anomaly_scores(model, x))


def check_finite(value, where):
    if not math.isfinite(value):
        raise FloatingPointError(f"training diverged: {where} is {value}. Try a smaller --lr or --beta")


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
                 augment=None, log=print, progress=None):
    """Alg. 1, phase 1 (feature extraction): minimise ||x_hat+ - x+||_2 on D+. With a classifier
    (LinSep-LIS-AE), add linsep_weight * BCE of the classifier on Z's pre-activation for D+ vs D-.
    With --latent-norm batch, Z's pre-activation is standardised over the batch of positives; negatives
    (LinSep) use the positives' running statistics. The standardisation is folded into Z when phase 1 ends.
    progress(text), if given, is told the current step (for the Ctrl-C message). Returns (train seconds,
    samples seen)."""
    params = list(model.parameters()) + (list(classifier.parameters()) if classifier is not None else [])
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    t0, train_time, seen = time.time(), 0.0, 0
    for it in range(1, iters + 1):
        if progress is not None:
            progress(f"phase 1, iteration {it}/{iters}")
        ts = time.time()
        xb = sample(x_pos, batch_size)
        x_hat, u_pos = model(xb)
        rec = reconstruction_error(x_hat, xb).mean()                        # Alg. 1, phase 1 loss
        loss, bce = rec, None
        if classifier is not None:
            model.norm.eval()                                               # negatives: the positives' statistics
            _, u_neg = model(sample(x_neg, batch_size, augment))
            model.norm.train()
            bce = linsep_loss(classifier, u_pos, u_neg)                     # LinSep-LIS-AE
            loss = rec + linsep_weight * bce
        opt.zero_grad(set_to_none=True)
        loss.backward()                                                     # Alg. 1, phase 1: minimise L
        opt.step()
        loss_value = loss.item()
        train_time += time.time() - ts
        seen += batch_size * (2 if classifier is not None else 1)
        check_finite(loss_value, f"the phase-1 loss at iteration {it}")
        if it % max(1, iters // 10) == 0 or it == iters:
            line = f"phase1 iter {it}/{iters} loss={loss_value:.4f} rec={rec.item():.4f}"
            if bce is not None:
                line += f" bce={bce.item():.4f}"
            log(f"{line} sat={saturated_fraction(model.act(u_pos)):.3f} elapsed={time.time() - t0:.1f}s", flush=True)
    fold_latent_norm(model)                                                 # Z = linear + tanh from here on
    model.eval()
    return train_time, seen


def train_phase2(model, x_pos, x_neg, iters, batch_size, lr, beta, gamma, augment=None, log=print, progress=None):
    """Alg. 1, phase 2 (latent shaping): freeze E and D, train only the latent layer Z on Eq. (1) with
    batches from D+ and D-. Returns (train seconds, samples seen)."""
    fold_latent_norm(model)                                                 # no-op when phase 1 already did it
    model.eval()
    for p in list(model.encoder.parameters()) + list(model.decoder.parameters()):
        p.requires_grad_(False)                                             # Alg. 1: FreezeEncoder(), FreezeDecoder()
    opt = torch.optim.Adam(model.latent.parameters(), lr=lr)               # only Z is trained
    t0, train_time, seen = time.time(), 0.0, 0
    for it in range(1, iters + 1):
        if progress is not None:
            progress(f"phase 2, iteration {it}/{iters}")
        ts = time.time()
        xp, xn = sample(x_pos, batch_size), sample(x_neg, batch_size, augment)
        (x_hat_p, u_p), (x_hat_n, u_n) = model(xp), model(xn)
        loss, rec_pos, rec_neg = latent_shaping_loss(x_hat_p, xp, x_hat_n, xn, beta, gamma)   # Eq. (1)
        opt.zero_grad(set_to_none=True)
        loss.backward()                                                     # Alg. 1, phase 2: minimise L
        opt.step()
        loss_value = loss.item()
        train_time += time.time() - ts
        seen += 2 * batch_size
        check_finite(loss_value, f"the Eq. (1) loss at phase-2 iteration {it}")
        if it % max(1, iters // 10) == 0 or it == iters:
            log(f"phase2 iter {it}/{iters} loss={loss_value:.4f} rec_pos={rec_pos.item():.4f} "
                f"rec_neg={rec_neg.item():.4f} gamma={gamma:.4f} sat_pos={saturated_fraction(model.act(u_p)):.3f} "
                f"sat_neg={saturated_fraction(model.act(u_n)):.3f} elapsed={time.time() - t0:.1f}s", flush=True)
    for p in model.parameters():
        p.requires_grad_(True)
    return train_time, seen


# ------------------------------------------------------------------------------------------ data

def negative_classes(mode, normal, n_classes, test_half=False):
    """Sec. 5: the classes of the same dataset that form D-, and the classes kept in the test set.
    next-class (line 266): D- = the next class, removed from the test set. split (lines 271-273): D- = the other
    half, tested on the normal half only. supervised (Table 2's Sup. rows, line 316): D- = the normal half's other
    classes, which are the test anomalies. Other modes take D- from elsewhere; test_half keeps only the normal
    half (Table 3, line 300). A protocol that leaves no anomaly class to test is a DataError."""
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


def prepare(args):
    """Load D+, D- and the test set for the chosen protocol. Returns a dict of tensors and descriptions."""
    n_classes, channels, side = IMAGE_DATASETS[args.dataset]
    normal = args.normal_classes
    neg_cls, test_cls = negative_classes(args.negative, normal, n_classes, args.test_half)
    x_tr, y_tr, x_te, y_te = load_images(args.dataset, args.data_root)
    x_pos = one_class_split(x_tr, y_tr, x_te, y_te, normal)["train"]
    keep = torch.isin(y_te, torch.tensor(test_cls))
    x_test, y_test = x_te[keep], is_anomaly(y_te[keep], normal)
    if y_test.sum() == 0 or y_test.sum() == len(y_test):
        raise DataError(f"the test split of {args.dataset} has no images of the anomaly classes or none of the "
                        f"normal classes among classes {test_cls}. Check that the data files are complete")
    x_neg, neg_desc = None, "none (plain AE)"
    if args.negative in LABEL_MODES:
        x_neg = x_tr[torch.isin(y_tr, torch.tensor(neg_cls))]
        neg_desc = f"{args.dataset} train classes {','.join(map(str, neg_cls))}"
        if args.negative == "supervised":
            neg_desc += " (supervised UPPER BOUND: negatives are the test anomaly classes)"
    elif args.negative == "omniglot":
        x_neg, _ = load_omniglot(args.data_root, size=side)
        neg_desc = "omniglot background images"
    elif args.negative != "none":
        x_neg = load_images(args.negative, args.data_root)[0]
        neg_desc = f"{args.negative} train split (all classes)"
    if x_neg is not None and len(x_neg) == 0:
        raise DataError(f"the negative set ({neg_desc}) is empty in the data under --data-root. Check that the "
                        f"data files are complete, or pick another --negative")
    return dict(normal=normal, x_pos=x_pos, x_neg=x_neg, x_test=x_test, y_test=y_test, test_classes=test_cls,
                neg_classes=neg_cls, neg_desc=neg_desc, channels=channels, side=side)


# ------------------------------------------------------------------------------------------ main

def save_recon(path, x, ae, model):
    """Figure 3: row 1 inputs, row 2 the phase-1 AE's output, row 3 the LIS-AE output."""
    from torchvision.utils import save_image
    with torch.no_grad():
        grid = torch.cat([x, ae(x)[0], model(x)[0]])
    save_image(grid.cpu(), path, nrow=len(x), padding=2, pad_value=0.5)


def run(args, log=print):
    t_start = time.time()
    if not hasattr(args, "progress"):
        args.progress = "start-up (no training step taken yet)"
    device = check_args(args)
    set_seed(args.seed)
    args.progress = "data loading (no training step taken yet)"
    data = prepare(args)
    x_pos, x_test, y_test = data["x_pos"].to(device), data["x_test"].to(device), data["y_test"].to(device)
    x_neg = data["x_neg"].to(device) if data["x_neg"] is not None else None
    augment = augment_negatives if args.negative == "omniglot" and not args.no_neg_augment else None
    model = build_model(data["channels"], data["side"], args.width, args.latent, args.latent_act,
                        args.latent_norm).to(device)
    classifier = nn.Linear(args.latent, 1).to(device) if args.linsep else None
    variant = "ae" if x_neg is None else ("linsep-lis-ae" if args.linsep else "lis-ae")
    test_normal = [c for c in data["test_classes"] if c in data["normal"]]
    test_anom = [c for c in data["test_classes"] if c not in data["normal"]]
    log(f"lis_ae: dataset={args.dataset} variant={variant} normal={','.join(map(str, data['normal']))} "
        f"D+={len(x_pos)} D-={0 if x_neg is None else len(x_neg)} ({data['neg_desc']}) latent={args.latent} "
        f"latent_norm={args.latent_norm} latent_act={args.latent_act} width={args.width} lr={args.lr:g} "
        f"batch={args.batch_size} iters={args.iters}/phase device={device}", flush=True)
    if args.dataset == "digits" and "batch_size" in args.defaulted:
        log(f"digits (offline install check): batch {args.batch_size}, since a class has only ~120 training "
            f"images", flush=True)
    log(f"test set: {len(x_test)} images, normal classes {test_normal}, anomaly classes {test_anom} "
        f"({int(y_test.sum())} anomalies); excluded from test: "
        f"{[c for c in range(IMAGE_DATASETS[args.dataset][0]) if c not in data['test_classes']]}", flush=True)
    progress = lambda text: setattr(args, "progress", text)

    # Alg. 1, phase 1: the AE (LinSep adds the BCE term); Z's standardisation is folded in at its end
    t1, n1 = train_phase1(model, x_pos, args.iters, args.batch_size, args.lr, x_neg, classifier,
                          args.linsep_weight, augment, log, progress)
    args.progress = "scoring the phase-1 AE (phase 1 finished)"
    ae = copy.deepcopy(model)
    ts = time.time()
    auroc_ae = auroc(ae, x_test, y_test)
    score_time = time.time() - ts
    z_test = latent_codes(ae, x_test)
    sat = saturated_fraction(z_test)
    z_std = z_test[y_test == 0].std(0)
    log(f"phase1 done: AE test auroc={auroc_ae:.4f}; latent on the test set: {sat:.3f} of |z| > {SATURATED}, "
        f"per-unit std over test normals min {float(z_std.min()):.3f} mean {float(z_std.mean()):.3f}", flush=True)
    if args.latent_act == "tanh" and sat > 0.5:
        log(f"WARNING: {sat:.0%} of the latent is saturated (|z| > {SATURATED}): phase 2 gets (almost) no gradient "
            f"through tanh and LIS-AE will stay close to the AE (see the docstring; --latent-norm batch avoids it)",
            flush=True)
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
                              augment, log, progress)
        args.progress = "scoring the LIS-AE (training finished)"
        result["auroc"] = round(auroc(model, x_test, y_test), 4)
        if args.linsep:
            result["auroc_linsep"] = result["auroc"]                       # the variant's own column
    else:
        result["auroc"] = round(auroc_ae, 4)
    result.update({"auroc_ae": round(auroc_ae, 4), "variant": variant, "negative": args.negative,
                   "test_classes": ",".join(map(str, data["test_classes"])), "latent": args.latent,
                   "latent_act": args.latent_act, "latent_norm": args.latent_norm, "latent_saturated": round(sat, 4),
                   "beta": args.beta, "gamma": None if gamma is None else round(gamma, 4), "iters": args.iters,
                   "batch_size": args.batch_size, "lr": args.lr, "device": device.type,
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
