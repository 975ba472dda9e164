"""Deep Unsupervised Image Anomaly Detection: An Information Theoretic Framework.
Fei Ye, Huangjie Zheng, Chaoqin Huang, Ya Zhang, arXiv:2012.04837 (2020) / ICIP 2021.
Text: ../shared/papers/000_b3fe84a0928e1534.txt (cited below as "line n").

Idea. Anomaly detection as max KL[p_n(x, z) || p_a(x, z)] (Eq. 2); assuming normal and anomalous data are
separable in the latent space, it is lower-bounded by an objective of normal data alone, max I(x, z) - beta H(z)
(Eq. 10-13). I(x, z) is estimated with InfoNCE between two augmented views (Eq. 14, 18-20, Alg. 1); H(z) is
bounded by E||z||_q, the cross-entropy with a zero-centred Laplace (q = 1) or Gaussian (q = 2) reference (Eq.
15-17). A test image is normal when its code has a large soft-clipped self-similarity z^T z (Eq. 23, Alg. 2): the
paper reports that the entropy term shrinks the anomalies' codes towards zero faster than the normal codes, which
the MI term keeps away from it (lines 350-354, Fig. 3).

What this file reproduces
    The base model (Alg. 1 training, Alg. 2 / Eq. 23 scoring) and the extension model (Alg. 3-5, Eq. 21 / 24:
    local DIM between the global code and Table IV's f_local), both on the Table IV encoder; the ablations of
    Table I (--mi jsd, --entropy l2) and of Fig. 1-3 (--beta); the three scores of Table II in every RESULT line:
    auroc = NormalScore_ori (Eq. 23 / 24, the paper's main score), auroc_rand (Eq. 22), auroc_mc (Eq. 29).
    Not reproduced: ImageNet (Table V's encoder; no ImageNet loader here).

Equation map
    Eq. (13) / Alg. 1 line 19: L = L_nce + beta L_entropy ............................. base_loss()
    Alg. 1 lines 11-12 / Alg. 3 lines 8-9: s_ij = sum sum z_i^T z_j, clipped .......... similarity(), soft_clip()
    Alg. 1 lines 13-17 / Alg. 3 lines 10-13 (Eq. 18, 20): InfoNCE over 2N views ........ nce_loss()
    Alg. 1 line 18 (Eq. 15-17, 19): L_entropy = (1/2N) sum_k ||z_k||_q ................. entropy_bound()
    Eq. (28): Jensen-Shannon estimator (Table I) ........................................ jsd_loss()
    Eq. (21) / Alg. 4 lines 13-16: L_gvg + L_gvl + beta (||g||_q + ||l||_q) ............ extension_loss()
    Eq. (23) / Alg. 2; Eq. (24) / Alg. 5 (clip on the sum, line 12) .................... ori_score()
    Eq. (22) and Eq. (29): one / H random augmented pairs ............................... pair_score(), normal_scores()
    Table IV encoder; phi_theta2 of Alg. 4 (AMDIM's 1x1 residual MLP) .................. AmdimEncoder, LocalProjection
    Augmentation (line 232: "we follow SimCLR [35] and AMDIM [36]") .................... draw_augmentation(), augment()
    Alg. 1 lines 2-6: two views per image ............................................... two_views()

Readings of what the text leaves open, and the measurements that decided them
    The text fixes the loss up to three scales and says nothing about the code's normalisation statistics at test
    time. Candidates, all selectable: c1, "the size of z_i" (Alg. 1 input, line 188): --c1 sqrt = sqrt(d), the
    scaling AMDIM's code (costs.py, ref. [36]) applies to its scores before the tanh clip at 20 that the paper keeps;
    --c1 dim = d, with which a unit-variance code's self-similarity is s / c1 ~ 1, too flat for an InfoNCE over 2N-1
    candidates (not measured). The code's scale: "the similarity between two normalized vectors" (line 228) and
    AMDIM's encoder, whose global feature leaves through BatchNorm2d(n_rkhs, affine=True): --code-norm affine; also
    fixed (no scale/shift) and none. The entropy reduction: --entropy-reduce sum = ||z||_1 summed over the code as
    Alg. 1 line 18 prints it; mean = divided by d. BatchNorm statistics when scoring (--bn-stats): train = the
    running averages of training; test = re-estimated on the test images, as AMDIM's evaluation routine does
    (utils.py test_model -> _warmup_batchnorm runs train-mode passes over the *test* loader before model.eval()).

    Exploration runs (Fashion-MNIST class 0 normal, Table IV encoder at ndf 16 / nrkhs 128 / ndepth 1, batch 64, lr
    2e-4, seed 0, this file's functions in a training loop that scores a fixed random 2000-image subset of the test
    set at checkpoints; "train" / "test" = AUROC of the Eq. 23 score with training / test BN statistics; the
    columns marked * used each 500-image test batch's own statistics instead of the subset's; InfoNCE at chance
    with 2N = 128 views: log 127 = 4.84):
        code norm, reduce, beta, steps      final NCE   train   test    mean ||z|| normal / anomalous (train stats)
        affine, mean, 20, 500                 4.37      0.22    0.28*   2.42 / 3.82
        affine, mean, 20, 300 (nrkhs 1024)    4.41      0.21    0.39    4.04 / 6.43
        fixed,  sum,  20, 500                 4.58      0.29    0.38*   2.26 / 2.69
        fixed,  sum,  20, 300 (BN eps 1e-12)  4.85      0.36    0.46    3.26 / 4.85
        none,   mean, 20, 500                 4.84      0.14    0.14*   0.01 / 0.01
        affine, mean,  1, 500                 2.79      0.16    0.69*   8.35 / 11.30
        affine, mean, 0.1, 600                2.14      0.20    0.79   8.83 / 10.77
        affine,  -- ,  0, 800                 1.75      0.21    0.78    9.22 / 11.18 (test stats: 10.56 / 8.64)
    What they show. (1) At beta = 20 every reading collapses: the NCE stays at chance and the code is switched off.
    With a BatchNorm-ended code the collapse runs through BatchNorm's eps: with affine / mean / beta 20, after 150
    steps 89% of the code's dimensions had a training variance before the BN below eps = 1e-5 while the BN scale
    stayed at 0.99 (a probe of the same run's BN buffers). Near z = 0 the L1 cost grows linearly in the code's
    scale and the NCE gain only quadratically, so z = 0 attracts; the per-dimension (mean) reduction and the
    paper's d = 1024 did not change that, nor did closing the eps route (the L1 then makes the code sparse and the
    NCE stays at chance). (2) With training statistics the anomalies always get the larger code, in every reading
    and at every beta: the code then measures the distance from the normal data's mean, like Deep SVDD, and Eq. 23
    ranks anomalies as more normal (consistent with the 38.5 AUROC of the previous Fashion-MNIST sweep, a ResNet-18
    base model scored with training statistics). (3) Only with the BN
    statistics re-estimated on the test set do the normal codes keep the larger norm (10.56 / 8.64 above), and
    only where the NCE has learned (beta 0 or small): with 10% normal test images, a dimension that separates the
    normal class leaves the minority (the normal images) far from the test mean. (4) The entropy term never
    improved the score here: beta 0.1 ~ beta 0 > beta 1 > beta 20.
    Defaults therefore: the literal Alg. 1 (sum, beta 20), AMDIM's affine BN and c1 = sqrt(d), and --bn-stats test,
    the only reading measured under which Eq. 23 ranks normal images higher. That reading is transductive: the
    score of one test image depends on the other test images and on the test set's anomaly ratio (1:9 here); the
    RESULT line always reports the same score with training statistics as auroc_trainbn. The paper's claims of
    lines 340-354 (beta in [0.5, 40] comparably good, beta = 0 failing to converge, anomalies' ||z|| shrinking
    faster as beta grows) did not hold in any reading measured; see the beta sweep below for the cpu protocol.

Measured with this file (cpu protocol: benchmarks/protocols.json "cpu"; benchmarks/results/itad_*)
    Ten classes, seed 0, 2-core CPU: main score (Eq. 23) MNIST 44.10 (Table III: 89.7), Fashion-MNIST 40.79
    (94.8); auroc_rand 47.49 / 45.38, auroc_mc 47.49 / 44.13, auroc_trainbn 39.73 / 24.58; the extension model
    (cpu_extension) 41.25 on Fashion-MNIST (97.1). Below chance on
    both sets: the codes collapse (dims_alive 5-12% of the code) and the score ranks anomalies as the more
    normal.
    beta sweep, Fashion-MNIST classes 0 and 1 (cpu protocol with --beta B; itad_fashion-mnist_cpu_beta<B>):
        beta           0      0.5     5       20      40
        auroc (mean)   82.12  36.49   34.93   34.31   37.46
        ||z|| normal / anomalous, class 0:  9.55 / 7.66 at beta 0;  2.22-2.30 / 2.51-2.58 at every beta > 0
    So at this budget the paper's three claims invert: beta in [0.5, 40] all fail alike, beta = 0 is the only
    value that learns, and only there do normal codes keep the larger norm (test-set BN statistics).

Deviations from the paper, and choices where it is silent (flag in brackets)
    - Batch size 200 (AMDIM's default; the paper gives none) [--batch-size]; on a set with fewer normal images all
      of them (digits: 122, said in the output). Each epoch visits the normal images in a random order in batches
      of N, the last incomplete batch dropped; --iters overrides epochs x floor(n / N).
    - Adam with PyTorch's default betas, no weight decay, no warm-up (AMDIM: betas (0.8, 0.999), weight decay 1e-5,
      a 500-step warm-up; the paper names none of these).
    - AMDIM's logit penalty (4e-2 mean of the squared scaled scores) is not used: the paper's loss has no such term.
    - Augmentation = AMDIM's CIFAR policy (datasets.py TransformsC10): one horizontal flip per image shared by both
      views; per view a translation by up to 4 px with reflect padding (p 0.8), colour jitter 0.4/0.4/0.4/0.2
      (p 0.8), grayscale (p 0.25); batched on the device with per-sample parameters. Jitter in a fixed order
      (torchvision permutes it), hue as a rotation of the YIQ chroma plane (torchvision goes through HSV). On the
      grayscale sets, expanded to 3 channels (line 482), saturation, hue and grayscale change nothing. Inputs in
      [-1, 1] (line 314); 28x28 images zero-padded to the encoder's 32x32.
    - Encoder: Table IV = AMDIM's 32x32 encoder without BN inside (AMDIM's default use_bn 0), residual branches'
      last conv zero-initialised (AMDIM's init), BatchNorm at the end of g and of phi(f_local) [--code-norm].
      Where a layer widens the channels, its shortcut is a strided kxk conv (AMDIM: average pool, zero-padded
      channels): with the zero-initialised branch, AMDIM's padding leaves all but ndf of the code's dimensions
      zero for every input at initialisation, and the global-vs-global InfoNCE and the L1 term give them no
      gradient, so they would never learn (Table IV prints shapes, not an initialisation);
      --encoder resnet18 (base model only, not in the paper) keeps the previous ResNet-18 option.
    - Alg. 3 line 8 sums g^T phi(l) over all f_local positions (the paper's double sum); AMDIM instead scores each
      position as its own positive. L_gvl (Alg. 4 line 14) is one Alg. 3 loss over the 2N x 2N pairs of global
      codes and local maps of both views (positives (2k-1, 2k) and (2k, 2k-1), denominators over k != i), which
      is the mean of the two halves line 14 writes.
    - Eq. 22 and Eq. 29 use the global code only, as they are written (z, z_g), also for the extension model;
      Eq. 29's sum over H pairs is taken as a mean (same ranking). H = 100 (line 471) [--mc-samples].
    - --entropy l2 uses ||z||_2 as Alg. 1 line 18 writes it (Eq. 16 has the squared norm).
    - --mi jsd: the critic T of Eq. (28) is the soft-clipped similarity (DIM's separable critic); positives the
      paired views, negatives every other pair k != i.
    - Scores are computed in float64, so that tanh saturation does not turn distinct scores into ties. No model
      selection: the last model is tested.
    - Diagnostics in RESULT (not in the paper): nce_end / entropy_end (mean over the last 10% of the steps),
      znorm_normal / znorm_anomaly (Fig. 3's mean ||z||_2 of the test codes, under --bn-stats), z_spread (mean
      per-dimension std of the normal test codes), dims_alive (fraction of code dimensions whose training variance
      before the BN exceeds BN's eps).

Run:  python itad.py --dataset mnist --normal 8 --data-root ../shared/data                  # the paper's sizes (GPU)
      python itad.py --dataset fashion-mnist --normal 0 --data-root ../shared/data --ndf 16 --nrkhs 128 --ndepth 1 \
          --batch-size 64 --iters 400 --mc-samples 2                                         # the cpu protocol
      python itad.py --dataset digits --normal 3 --iters 2                                   # offline check
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

# The paper's values: beta (line 342), entropy norm q (Table I, line 419), learning rate and epochs (line 320),
# clipping constant c2 (Alg. 1 input, line 188), H of Eq. 29 (line 471), Table IV encoder sizes (line 562).
PAPER = dict(beta=20.0, entropy="l1", lr=2e-4, epochs=400, c2=20.0, mc_samples=100, ndf=128, nrkhs=1024, ndepth=10)
# batch size: the paper is silent; AMDIM's default (train.py --batch_size 200), whose code the paper follows.
BATCH = 200
# `--dataset digits` (offline install check, ~120 normal images): sizes that fit it, used where not given.
DIGITS = dict(ndf=16, nrkhs=128, ndepth=1, mc_samples=10)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors in the project's shape: 'error: <what>. <what to do>', exit 2."""

    def error(self, message):
        print(f"error: {message}. Run `python {self.prog} --help` for the accepted values.", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None):
    p = ArgumentParser(prog="itad.py", description="ITAD: information-theoretic anomaly detection (Ye et al.)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=list(IMAGE_DATASETS),
                   help="one-class image benchmarks (Sec. IV-A): mnist, fashion-mnist, cifar10, cifar100 (20 "
                        "superclasses), svhn (not in the paper); digits = scikit-learn's digits, an offline check")
    p.add_argument("--normal", default="0",
                   help="normal class, or a comma list for multi-class normal data (the paper: one class)")
    p.add_argument("--data-root", default=None,
                   help="datasets in torchvision's layout (default: $AD_DATA_ROOT, else ./data)")
    p.add_argument("--seed", type=int, default=0, help="random seed: init, batches, augmentations")
    p.add_argument("--device", default="auto", help="auto = cuda if available, else cpu; cpu, cuda, cuda:N")
    p.add_argument("--model", default="base", choices=["base", "extension"],
                   help="base: Alg. 1-2, Eq. 13/23 (global code only); extension: Alg. 3-5, Eq. 21/24 (global "
                        "+ local DIM)")
    p.add_argument("--encoder", default="amdim", choices=["amdim", "resnet18"],
                   help="amdim = Table IV's small encoder, 'the model we used' for all sets but ImageNet (line "
                        "550); resnet18 (base model only, not in the paper) = common.py's ResNet-18 at --width "
                        "with a linear layer to --nrkhs")
    p.add_argument("--epochs", type=int, default=PAPER["epochs"], help="training epochs (line 320: 400)")
    p.add_argument("--iters", type=int, default=None,
                   help="optimisation steps; overrides --epochs (default: epochs x floor(n_train / batch))")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"N images per batch, 2N views (the paper is silent: AMDIM's {BATCH}; on a set with "
                        f"fewer normal images, all of them, and the script says so)")
    p.add_argument("--lr", type=float, default=PAPER["lr"], help="Adam learning rate (line 320: 2e-4)")
    p.add_argument("--beta", type=float, default=PAPER["beta"],
                   help="entropy weight (Eq. 13, Alg. 1 line 19; line 342: 20); 0 = no entropy term (Fig. 1-2)")
    p.add_argument("--entropy", default=PAPER["entropy"], choices=["l1", "l2"],
                   help="entropy bound ||z||_q: l1 = Laplace reference (Eq. 17, the paper's choice, Table I), "
                        "l2 = Gaussian (Eq. 16)")
    p.add_argument("--entropy-reduce", default="sum", choices=["sum", "mean"],
                   help="L_entropy per view: sum = ||z||_q as Alg. 1 line 18 prints it (default); mean = "
                        "||z||_q / d^(1/q), a per-dimension scale (not in the paper; a reading tried, see the "
                        "docstring)")
    p.add_argument("--mi", default="nce", choices=["nce", "jsd"],
                   help="mutual-information estimator: InfoNCE (Eq. 18, Alg. 1) or Jensen-Shannon (Eq. 28, "
                        "Table I)")
    p.add_argument("--c2", type=float, default=PAPER["c2"], help="soft-clipping bound c2 (Alg. 1, line 188: 20)")
    p.add_argument("--c1", default="sqrt", choices=["sqrt", "dim"],
                   help="c1 in c2 tanh(s / (c1 c2)), 'the size of z_i' (line 188): sqrt = sqrt(d), AMDIM's "
                        "scaling of its scores by sqrt(n_rkhs) (default, see the docstring); dim = d")
    p.add_argument("--code-norm", default="affine", choices=["affine", "fixed", "none"],
                   help="last layer of the codes g and phi(l): affine = BatchNorm with scale and shift, as "
                        "AMDIM's encoder ends ('normalized vectors', line 228; default); fixed = BatchNorm "
                        "without them; none = no normalisation")
    p.add_argument("--bn-stats", default="test", choices=["train", "test"],
                   help="statistics of the codes' BatchNorm when scoring: train = the running averages of training "
                        "(eval mode); test = re-estimated on the test images, as AMDIM's evaluation code does "
                        "(transductive; see the docstring). The RESULT line reports the ori score under the other "
                        "one as auroc_<other>bn")
    p.add_argument("--mc-samples", type=int, default=None,
                   help=f"H, augmented pairs of the Monte-Carlo score (Eq. 29; line 471: {PAPER['mc_samples']}; "
                        f"digits: {DIGITS['mc_samples']}); 0 = skip that score")
    p.add_argument("--ndf", type=int, default=None,
                   help=f"encoder base width (Table IV: {PAPER['ndf']}; digits: {DIGITS['ndf']})")
    p.add_argument("--nrkhs", type=int, default=None,
                   help=f"size d of the codes g and phi(l) (Table IV: {PAPER['nrkhs']}; digits: {DIGITS['nrkhs']})")
    p.add_argument("--ndepth", type=int, default=None,
                   help=f"residual layers per ResBlock (Table IV: {PAPER['ndepth']}; digits: {DIGITS['ndepth']})")
    p.add_argument("--local-size", type=int, default=5, choices=[5, 7],
                   help="extension: f_local's map, 5x5 = output of the first ResBlock(4ndf, 4ndf, 3, 1) (Table "
                        "IV, line 559); 7 = the block before it (AMDIM's second local map)")
    p.add_argument("--curve-every", type=int, default=0,
                   help="every K steps, the test AUROC of the Eq. 23 (24) score under both BatchNorm statistics, "
                        "mean ||z|| and dims_alive, printed and stored as 'curve' in the JSON (Fig. 2 records it "
                        "every 5 epochs; line 344); 0 = off. Monitoring only: the last model is tested")
    p.add_argument("--width", type=int, default=64, help="--encoder resnet18 only: ResNet width (64 = 512-d)")
    p.add_argument("--json", default=None, help="also write the RESULT keys to this JSON file (atomic)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ input checks

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
    check_number(args, "epochs", 1)
    check_number(args, "batch_size", 2)   # 2N >= 4 views: contrastive negatives and BatchNorm need them
    check_number(args, "lr", 0, low_open=True)
    check_number(args, "beta", 0)
    check_number(args, "c2", 0, low_open=True)
    check_number(args, "mc_samples", 0)
    check_number(args, "curve_every", 0)
    for name in ("ndf", "nrkhs", "ndepth", "width"):
        check_number(args, name, 1)
    if args.model == "extension" and args.encoder != "amdim":
        raise DataError("--model extension needs the Table IV encoder (its f_local). Use --encoder amdim")
    check_output_path(args.json, "--json")
    return pick_device(args.device)


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------ augmentation

def draw_augmentation(n, device):
    """Per-sample parameters of AMDIM's CIFAR policy (its datasets.py TransformsC10, which the paper follows,
    line 232): horizontal flip p=0.5; with p=0.8 a translation by up to 4 px (reflect padding); with p=0.8
    colour jitter (brightness, contrast, saturation 0.4, hue 0.2); grayscale p=0.25."""
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
    """Alg. 1 lines 3-6: (N, 3, H, W) in [0, 1] -> (2N, 3, H, W) in [-1, 1]; rows 2k and 2k+1 (the paper's
    2k-1 and 2k, 1-based) are t(x_k) and t'(x_k). As in AMDIM's TransformsC10, the flip is drawn once per
    image and shared by its two views; everything else is drawn per view."""
    x2 = x.repeat_interleave(2, dim=0)
    prm = draw_augmentation(len(x2), x.device)
    prm["flip"] = prm["flip"][0::2].repeat_interleave(2)
    return to_minus1_1(augment(x2, prm))


# ------------------------------------------------------------------------------------------ models

def code_norm_layer(kind, n):
    """The codes' last layer (--code-norm): AMDIM ends g and phi(l) in BatchNorm2d(n, affine=True)."""
    return nn.Identity() if kind == "none" else nn.BatchNorm2d(n, affine=kind == "affine")


class ConvResNxN(nn.Module):
    """AMDIM's residual layer ('ResBlock(n_in, n_out, k, stride, 1)' in Table IV): conv kxk (stride) ->
    ReLU -> conv 1x1 (zero-initialised, AMDIM's init), plus an average-pool shortcut when the channels stay, or
    a strided kxk conv shortcut when they change. AMDIM zero-pads the average-pool shortcut when the layer widens;
    with its zero-initialised residual branch those channels start constant, and ITAD's global-vs-global
    contrast gives them no gradient, so they would never learn (see the docstring's deviations).
    No BatchNorm inside (AMDIM's default use_bn=0)."""

    def __init__(self, n_in, n_out, k, stride):
        super().__init__()
        self.n_in, self.n_out, self.k, self.stride = n_in, n_out, k, stride
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
    """Table IV 'ResBlock(n_in, n_out, k, stride, ndepth)' = AMDIM's ConvResBlock: one strided kxk layer,
    then depth-1 1x1 layers."""
    return nn.Sequential(ConvResNxN(n_in, n_out, k, stride),
                         *[ConvResNxN(n_out, n_out, 1, 1) for _ in range(depth - 1)])


class LocalProjection(nn.Module):
    """phi_theta2 (Alg. 4 lines 10-12, Alg. 5 line 6): AMDIM's 'fake RKHS' 1x1-conv residual MLP on f_local,
    ending in the same normalisation as g."""

    def __init__(self, n_in, n_out, code_norm="affine"):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 1, bias=False)
        self.conv2 = nn.Conv2d(n_out, n_out, 1, bias=False)
        nn.init.zeros_(self.conv2.weight)
        self.shortcut = nn.Conv2d(n_in, n_out, 1, bias=True)
        self.norm = code_norm_layer(code_norm, n_out)

    def forward(self, x):
        return self.norm(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class AmdimEncoder(nn.Module):
    """Table IV (line 552-562), AMDIM's 32x32 encoder. forward -> g (B, nrkhs) and, with local=True, phi(f_local)
    (B, nrkhs, s, s), s = local_size (5: f_local of Table IV)."""

    def __init__(self, ndf=128, nrkhs=1024, ndepth=10, local=False, local_size=5, code_norm="affine"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, ndf, 3, 1, 0), nn.ReLU(),               # (B, ndf, 30, 30)
                                  ConvResNxN(ndf, ndf, 1, 1))                           # ResBlock(ndf, ndf, 1, 1)
        self.block1 = res_block(ndf, 2 * ndf, 4, 2, ndepth)                             # (B, 2ndf, 14, 14)
        self.block2 = res_block(2 * ndf, 4 * ndf, 2, 2, ndepth)                         # (B, 4ndf, 7, 7)
        self.block3 = res_block(4 * ndf, 4 * ndf, 3, 1, ndepth)                         # (B, 4ndf, 5, 5) f_local
        self.block4 = res_block(4 * ndf, 4 * ndf, 3, 1, ndepth)                         # (B, 4ndf, 3, 3)
        self.top = ConvResNxN(4 * ndf, nrkhs, 3, 1)                                     # (B, nrkhs, 1, 1) f_global
        self.norm = code_norm_layer(code_norm, nrkhs)
        self.local_size = local_size
        self.phi = LocalProjection(4 * ndf, nrkhs, code_norm) if local else None
        self.z_dim = nrkhs

    def forward(self, x):
        h7 = self.block2(self.block1(self.stem(x)))
        h5 = self.block3(h7)
        g = self.norm(self.top(self.block4(h5))).flatten(1)                            # (B, nrkhs)
        if self.phi is None:
            return g
        return g, self.phi(h5 if self.local_size == 5 else h7)                         # (B, nrkhs, s, s)


class ResNetEncoder(nn.Module):
    """--encoder resnet18 (not in the paper): common.py's ResNet-18 (3x3 stem, 32x32) -> linear -> code norm."""

    def __init__(self, width=64, nrkhs=1024, code_norm="affine"):
        super().__init__()
        self.encoder = ResNet18(in_channels=3, width=width)
        self.head = nn.Linear(self.encoder.out_dim, nrkhs)
        self.norm = code_norm_layer(code_norm, nrkhs)
        self.z_dim = nrkhs

    def forward(self, x):
        z = self.head(self.encoder(x))                                                  # (B, 8w) -> (B, nrkhs)
        return self.norm(z[:, :, None, None]).flatten(1)


# ------------------------------------------------------------------------------------------ losses

def soft_clip(s, c1, c2):
    """Alg. 1 line 12 (also Alg. 2 line 8, Alg. 3 line 9, Alg. 5 line 12): s' = c2 tanh(s / (c1 c2))."""
    return c2 * torch.tanh(s / (c1 * c2))


def similarity(a, b):
    """Alg. 1 line 11 / Alg. 3 line 8: s_ij = sum_{n1} sum_{n2} a_i^T b_j for codes (B, d) or maps
    (B, d, h, w); the double sum over positions equals the dot product of the position-summed codes."""
    a = a.flatten(2).sum(2) if a.dim() == 4 else a
    b = b.flatten(2).sum(2) if b.dim() == 4 else b
    return a @ b.t()                                                                    # (B_a, B_b)


def nce_loss(s):
    """Alg. 1 lines 13-17 / Alg. 3 lines 10-13 on the (2N, 2N) clipped similarities of 2N views (rows 2k,
    2k+1 = the two views of image k): s^ = s' - max(S); l(i, j) = -log(exp s^_ij / sum_{k != i} exp s^_ik);
    L_nce = (1/2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]."""
    n2 = s.shape[0]
    s_hat = s - s.max().detach()                                                        # line 14: S - s_max
    s_hat = s_hat.masked_fill(torch.eye(n2, dtype=torch.bool, device=s.device), float("-inf"))  # k != i
    log_p = s_hat - torch.logsumexp(s_hat, dim=1, keepdim=True)                         # line 16
    i = torch.arange(n2, device=s.device)
    return -log_p[i, i ^ 1].mean()                                                      # line 17: partner of 2k is 2k+1


def pair_partner_mask(n2, device):
    i = torch.arange(n2, device=device)
    return i.unsqueeze(1) ^ 1 == i.unsqueeze(0)              # (2N, 2N) True at (2k, 2k+1) and (2k+1, 2k)


def jsd_loss(s):
    """Eq. (28), Table I: -I_JSD = -(E_pos[-softplus(-T)] - E_neg[softplus(T)]) with the clipped similarity
    as critic T (DIM's separable critic); positives are the paired views, negatives every pair k != i."""
    pos = pair_partner_mask(len(s), s.device)
    neg = ~pos & ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    return -((-F.softplus(-s[pos])).mean() - F.softplus(s[neg]).mean())


def entropy_bound(z, q, reduce="sum"):
    """Alg. 1 line 18 (Eq. 15-17, 19): L_entropy = (1/2N) sum_k ||z_k||_q (q=1 Laplace, q=2 Gaussian
    reference); a local map is flattened first (Alg. 4 line 15). reduce="mean" (--entropy-reduce) divides
    each norm by d^(1/q): mean |z_kj| for q = 1, the RMS for q = 2."""
    z = z.flatten(1)
    norm = z.norm(p=q, dim=1)                                # (2N, d) -> ||z_k||_q
    if reduce == "mean":
        norm = norm / z.shape[1] ** (1.0 / q)
    return norm.mean()                                       # (1/2N) sum_k


def mi_loss(s, args):
    return nce_loss(s) if args.mi == "nce" else jsd_loss(s)


def base_loss(z, args, c1):
    """Alg. 1 lines 11-19: L = L_nce + beta L_entropy on the codes z (2N, d) of 2N views."""
    mi = mi_loss(soft_clip(similarity(z, z), c1, args.c2), args)                          # lines 11-17
    ent = entropy_bound(z, args.q, args.entropy_reduce)                                   # line 18
    return mi + args.beta * ent, mi, ent                                                  # line 19


def extension_loss(g, l, args, c1):
    """Alg. 4 lines 13-16 (Eq. 21): L = L_gvg + L_gvl + beta (1/2N) sum_k (||g_k||_q + ||l_k||_q), each L_nce
    the Alg. 3 loss over all 2N x 2N pairs of views. L_gvl = 0.5 [L_nce(g_2k, l_2k-1) + L_nce(g_2k-1, l_2k)]:
    the two halves of one Alg. 3 loss on S_ij = sim(g_i, l_j), whose positives are (2k-1, 2k) and (2k, 2k-1),
    i.e. the mean of l(i, partner) over all 2N rows."""
    gvg = mi_loss(soft_clip(similarity(g, g), c1, args.c2), args)                         # line 13
    gvl = mi_loss(soft_clip(similarity(g, l), c1, args.c2), args)                         # line 14
    ent = entropy_bound(g, args.q, args.entropy_reduce) + entropy_bound(l, args.q, args.entropy_reduce)  # line 15
    return gvg + gvl + args.beta * ent, gvg + gvl, ent                                    # line 16


def check_finite(value, where):
    if not math.isfinite(value):
        raise FloatingPointError(f"training diverged: {where} is {value}. Try a smaller --lr")


# ------------------------------------------------------------------------------------------ training

def train(model, x_train, args, c1, log=print, test=None):
    """Alg. 1 (base) / Alg. 4 (extension): Adam; epochs of random minibatches of N normal images (the last
    incomplete batch dropped), two augmented views each; --iters steps in all. With test = (x, y) and
    --curve-every K, the test AUROC every K steps (Fig. 2), returned as a list of curve_point() dicts."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    curve, every_curve = [], getattr(args, "curve_every", 0) if test is not None else 0
    n, t0, train_time = len(x_train), time.time(), 0.0
    every = max(1, args.iters // 20)
    per_epoch = n // args.batch_size
    model.train()
    trace = []
    for it in range(1, args.iters + 1):
        args.progress = f"training, iteration {it}/{args.iters}"
        ts = time.time()
        if (it - 1) % per_epoch == 0:
            order = torch.randperm(n, device=x_train.device)
        j = (it - 1) % per_epoch
        xb = x_train[order[j * args.batch_size:(j + 1) * args.batch_size]]              # Alg. 1, line 1
        views = two_views(xb)                                                           # Alg. 1, lines 2-6
        if args.model == "base":
            loss, mi, ent = base_loss(model(views), args, c1)                           # Alg. 1, lines 7-19
        else:
            loss, mi, ent = extension_loss(*model(views), args, c1)                     # Alg. 4, lines 7-16
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()                                                                      # Alg. 1, line 20
        loss_value = loss.item()
        train_time += time.time() - ts
        check_finite(loss_value, f"the loss at iteration {it}")
        trace.append((mi.item(), ent.item()))
        if it % every == 0 or it == args.iters:
            log(f"iter {it}/{args.iters} loss={loss_value:.4f} {args.mi}={mi.item():.4f} "
                f"entropy={ent.item():.4f} elapsed={time.time() - t0:.1f}s", flush=True)
        if every_curve and (it % every_curve == 0 or it == 1):
            recent = trace[-every_curve:]
            point = dict(iter=it, **{args.mi: round(float(np.mean([t[0] for t in recent])), 4),
                                     "entropy": round(float(np.mean([t[1] for t in recent])), 4)},
                         **curve_point(model, *test, args, c1))
            curve.append(point)
            log("curve " + " ".join(f"{k}={v}" for k, v in point.items()), flush=True)
    tail = trace[-max(1, len(trace) // 10):]                                            # last 10% of the steps
    return train_time, float(np.mean([t[0] for t in tail])), float(np.mean([t[1] for t in tail])), curve


# ------------------------------------------------------------------------------------------ scoring

def encode(model, x, args):
    """Codes of x (B, 3, 32, 32) in [-1, 1]: g, or (g, phi(l)); BatchNorm uses its running statistics."""
    return model(x)


@torch.no_grad()
def set_bn_statistics(model, x, which, saved=None, chunk=500):
    """--bn-stats: the statistics the codes' BatchNorm uses when scoring. train = the running averages of
    training (returns them, for switching back); test = AMDIM's evaluation routine (utils.py test_model ->
    _warmup_batchnorm: train-mode passes over the test loader before model.eval()), here as the exact mean and
    variance of the un-augmented test images x (M, 3, 32, 32) in [0, 1]. Transductive: see the docstring."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if which == "train":
        for m, (mean, var) in zip(bns, saved or []):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
        model.eval()
        return [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    kept = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                                    # cumulative average over the passes
    model.train()
    for i in range(0, len(x), chunk):
        model(to_minus1_1(x[i:i + chunk]))
    model.eval()
    for m, (_, _, momentum) in zip(bns, kept):
        m.momentum = momentum
    return [(mean, var) for mean, var, _ in kept]


def ori_score(model, x, args, c1):
    """Normal score of the un-augmented images (Alg. 2 / Alg. 5; larger = more normal), float64.
    base, Eq. (23) and Alg. 2 lines 7-8: s' = c2 tanh(z^T z / (c1 c2)).
    extension, Eq. (24) and Alg. 5 lines 9-12: s = sim(g, g) + sim(g, l), s' = c2 tanh(s / (c1 c2)), the
    clip applied to the sum as Alg. 5 line 12 writes it."""
    out = encode(model, x, args)
    if args.model == "base":
        s = (out.double() ** 2).sum(1)
    else:
        g, l = (t.double() for t in out)
        s = (g * g).sum(1) + (g * l.flatten(2).sum(2)).sum(1)
    return soft_clip(s, c1, args.c2)


def pair_score(model, xa, xb, args, c1):
    """Eq. (22) (one random pair) / the summand of Eq. (29): c2 tanh(sim(z_a, z_b) / (c1 c2)) of two augmented
    views of the same images; the global code only, as both equations write it (z, z_g)."""
    za, zb = encode(model, xa, args), encode(model, xb, args)
    if args.model == "extension":
        za, zb = za[0], zb[0]
    return soft_clip((za.double() * zb.double()).sum(1), c1, args.c2)


@torch.no_grad()
def normal_scores(model, x, args, c1, kind, chunk=500):
    """Scores of x (M, 3, 32, 32) in [0, 1], larger = more normal. ori: Eq. (23) / (24); rand: Eq. (22), one
    random augmented pair per image; mc: Eq. (29), the mean over --mc-samples pairs (H)."""
    model.eval()
    out = []
    for i in range(0, len(x), chunk):
        args.progress = f"scoring ({kind}), image {i}/{len(x)}"
        xb = x[i:i + chunk]
        if kind == "ori":
            out.append(ori_score(model, to_minus1_1(xb), args, c1))
            continue
        h = 1 if kind == "rand" else args.mc_samples
        total = torch.zeros(len(xb), device=x.device, dtype=torch.float64)
        for _ in range(h):
            views = two_views(xb)
            total += pair_score(model, views[0::2], views[1::2], args, c1)
        out.append(total / h)
    return torch.cat(out).cpu().numpy()


@torch.no_grad()
def global_codes(model, x, args, chunk=500):
    """Global codes z (g) of the un-augmented images (M, d): their norms ||z||_2 are Fig. 3's (line 352)."""
    codes = []
    for i in range(0, len(x), chunk):
        out = encode(model, to_minus1_1(x[i:i + chunk]), args)
        codes.append(out[0] if args.model == "extension" else out)
    return torch.cat(codes)


@torch.no_grad()
def dims_alive(model, x, chunk=500):
    """Fraction of the global code's dimensions that vary across the images x (M, 3, 32, 32) in [0, 1] before the
    code's normalisation (variance > 1e-5, BatchNorm's eps): a dimension below it is switched off (the collapse
    of Sec. IV-B). Not in the paper: a diagnostic."""
    pre = []
    hook = model.norm.register_forward_hook(lambda m, inp, out: pre.append(inp[0].flatten(1).double()))
    was_training = model.training
    model.eval()
    for i in range(0, len(x), chunk):
        model(to_minus1_1(x[i:i + chunk]))
    hook.remove()
    model.train(was_training)
    return (torch.cat(pre).var(0) > 1e-5).double().mean().item()


def curve_point(model, x, y, args, c1):
    """One point of AUROC over training (Fig. 2, line 344: 'the AUROC result every 5 epochs'): the Eq. 23 / 24
    score of the test images under both BatchNorm statistics (auroc = --bn-stats, auroc_<other>bn), Fig. 3's
    mean ||z|| of normal and anomalous test codes (under --bn-stats) and dims_alive. No random numbers are drawn,
    and the training BatchNorm buffers are put back, so the training run is the same with or without it."""
    saved = set_bn_statistics(model, x, "train")
    point = {}
    for which in (args.bn_stats, "test" if args.bn_stats == "train" else "train"):
        set_bn_statistics(model, x, which, saved)
        key = "auroc" if which == args.bn_stats else f"auroc_{which}bn"
        point[key] = round(auroc(normal_scores(model, x, args, c1, "ori"), y), 4)
        if which == args.bn_stats:
            norms = global_codes(model, x, args).norm(dim=1)
            point.update(znorm_normal=round(norms[y == 0].mean().item(), 4),
                         znorm_anomaly=round(norms[y == 1].mean().item(), 4))
    set_bn_statistics(model, x, "train", saved)
    point["dims_alive"] = round(dims_alive(model, x), 4)
    model.train()
    return point


def auroc(normal_score, is_anomaly):
    """AUROC with anomaly = 1 and the anomaly score = -normal score (Alg. 2 line 10)."""
    return roc_auc_score(is_anomaly.cpu().numpy(), -normal_score)


# ------------------------------------------------------------------------------------------ data

def prepare(args):
    """One-class split (Sec. IV-A); images as (N, 3, 32, 32) in [0, 1]: grayscale expanded to 3 channels (line
    482), 28x28 zero-padded to the encoder's 32x32."""
    x_tr, y_tr, x_te, y_te = load_images(args.dataset, args.data_root)
    normal = parse_normal(args.normal, IMAGE_DATASETS[args.dataset][0])
    split = one_class_split(x_tr, y_tr, x_te, y_te, normal)

    def to32(x):
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)                                                # (N, 1, H, W) -> (N, 3, H, W)
        pad = (32 - x.shape[-1]) // 2
        return F.pad(x, (pad, pad, pad, pad)).contiguous() if pad > 0 else x.contiguous()  # 28 -> 32

    return to32(split["train"]), to32(split["test"][0]), split["test"][1], normal


def fill_defaults(args, n_train, log):
    """Paper values where the user gave none; on a set too small for them (digits), values that fit, said."""
    small = args.dataset == "digits"
    for name in ("ndf", "nrkhs", "ndepth", "mc_samples"):
        if getattr(args, name) is None:
            setattr(args, name, DIGITS[name] if small else PAPER[name])
            if small:
                log(f"note: --{name.replace('_', '-')} {DIGITS[name]} for digits (paper: {PAPER[name]}), so "
                    f"that the offline check runs in a minute; pass it to override", flush=True)
    if args.batch_size is None:
        args.batch_size = min(BATCH, n_train)
        if args.batch_size < BATCH:
            log(f"note: --batch-size {args.batch_size}: the default {BATCH} exceeds the {n_train} normal "
                f"training images of {args.dataset}, so every image is in every batch", flush=True)
    elif args.batch_size > n_train:
        raise DataError(f"--batch-size {args.batch_size} exceeds the {n_train} normal training images. "
                        f"Pass --batch-size {n_train} or less")
    if args.iters is None:
        args.iters = args.epochs * (n_train // args.batch_size)


# ------------------------------------------------------------------------------------------ main

def run(args, log=print):
    t_start = time.time()
    device = check_args(args)
    args.q = 1 if args.entropy == "l1" else 2
    set_seed(args.seed)
    x_train, x_test, y_test, normal = prepare(args)
    fill_defaults(args, len(x_train), log)
    x_train, x_test, y_test = x_train.to(device), x_test.to(device), y_test.to(device)
    if args.encoder == "amdim":
        model = AmdimEncoder(args.ndf, args.nrkhs, args.ndepth, args.model == "extension", args.local_size,
                             args.code_norm)
    else:
        model = ResNetEncoder(args.width, args.nrkhs, args.code_norm)
    model = model.to(device)
    c1 = math.sqrt(model.z_dim) if args.c1 == "sqrt" else float(model.z_dim)
    size = (f"ndf={args.ndf} nrkhs={args.nrkhs} ndepth={args.ndepth}" if args.encoder == "amdim"
            else f"resnet18 width={args.width} nrkhs={args.nrkhs}")
    log(f"itad: model={args.model} dataset={args.dataset} normal={','.join(map(str, normal))} train={len(x_train)} "
        f"test={len(x_test)} (anomalies {int(y_test.sum())}) mi={args.mi} entropy={args.entropy} "
        f"({args.entropy_reduce}) beta={args.beta:g} code_norm={args.code_norm} bn_stats={args.bn_stats} "
        f"lr={args.lr:g} batch={args.batch_size} iters={args.iters} c1={c1:.4g} c2={args.c2:g} {size}"
        + (f" local={args.local_size}" if args.model == "extension" else "") + f" device={device}", flush=True)
    train_time, mi_end, ent_end, curve = train(model, x_train, args, c1, log, test=(x_test, y_test))
    ts = time.time()
    train_stats = set_bn_statistics(model, x_test, "train")                   # eval mode, training statistics
    alive = dims_alive(model, x_test)
    if args.bn_stats == "test":
        set_bn_statistics(model, x_test, "test")
    scores = normal_scores(model, x_test, args, c1, "ori")
    score_time = time.time() - ts
    if not np.isfinite(scores).all():
        raise FloatingPointError("the normal scores of the test set are not finite. Try a smaller --lr")
    result = {"method": "itad", "dataset": args.dataset, "normal": ",".join(map(str, normal)), "seed": args.seed,
              "auroc": round(auroc(scores, y_test), 4),
              "auroc_rand": round(auroc(normal_scores(model, x_test, args, c1, "rand"), y_test), 4)}
    if args.mc_samples > 0:
        result["auroc_mc"] = round(auroc(normal_scores(model, x_test, args, c1, "mc"), y_test), 4)
    z = global_codes(model, x_test, args)
    norms = z.norm(dim=1)
    other = "test" if args.bn_stats == "train" else "train"                  # the ori score under the other one
    set_bn_statistics(model, x_test, other, train_stats)
    result[f"auroc_{other}bn"] = round(auroc(normal_scores(model, x_test, args, c1, "ori"), y_test), 4)
    result.update({"model": args.model, "mi": args.mi, "entropy": args.entropy, "entropy_reduce": args.entropy_reduce,
                   "code_norm": args.code_norm, "c1": args.c1, "bn_stats": args.bn_stats, "beta": args.beta,
                   f"{args.mi}_end": round(mi_end, 4), "entropy_end": round(ent_end, 4),
                   "znorm_normal": round(norms[y_test == 0].mean().item(), 4),
                   "znorm_anomaly": round(norms[y_test == 1].mean().item(), 4),
                   "z_spread": round(z[y_test == 0].std(0).mean().item(), 4),     # per-dimension std, normal
                   "dims_alive": round(alive, 4),        # code dims that vary across the test images
                   "iters": args.iters, "batch_size": args.batch_size, "device": device.type,
                   "seconds": round(time.time() - t_start, 1),
                   "train_samples_per_s": round(args.iters * args.batch_size / max(train_time, 1e-9), 1),
                   "score_samples_per_s": round(len(x_test) / max(score_time, 1e-9), 1)})
    log("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    if curve:
        result["curve"] = curve                                                  # the JSON only
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
