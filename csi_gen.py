"""Boosting Semi-Supervised Anomaly Detection via Contrasting Synthetic Images — Sheng-Feng Yu and Wei-Chen
Chiu, MVA 2021 (no arXiv version); built on CSI (Tack, Mo, Jeong, Shin, NeurIPS 2020, arXiv:2007.08176).

CSI trains a feature extractor F (ResNet-18) to tell each image apart from the others AND from its own rotated
copies (shifted instances); a test image scores its feature similarity to the nearest training image times its
feature norm. Yu & Chiu add an adversarial autoencoder (encoder E, generator G, discriminators D, D') trained on
the normal images: F also contrasts the synthetic inliers G(h) (L_JOINT), G learns from F's contrastive loss on
its own samples (L_CSI-S), and E, G reconstruct real images in pixels and in F's feature space (L_REC).

Reproduces: the one-class protocol of Sec. 3 (one normal class, the whole test split scored), Table 1 on
CIFAR-10 and CIFAR-100 superclasses (not ImageNet-30), the Sec. 3.2 ablation (variant csi = CSI alone, g = + G,
full = + E), the scores M (Eq. 11) and M_ens (Sec. 2.3), and Figure 2's grid (--save-samples).

Equation map (a user calls fit -> score; save / load keep a fitted model)
    Sec. 2.1 shifts S, transformations T ...................... shift_batch(), random_hflip(), augment()
    Eq. (1)-(2) L_con-SI, NT-Xent over shifted instances ......... nt_xent()
    Eq. (3)-(4) L_cls-SI; L_CSI = L_con-SI + L_cls-SI ............ csi_loss()
    Eq. (5) L_JOINT, Eq. (6) L_CSI-S ............................. generative_step()
    Eq. (7) L_D; Eq. (8) L_REC ................................... loss_d(), loss_d_fool(); loss_rec()
    Eq. (9) L_LD; Eq. (10) L_LREC ................................ loss_ld(), loss_ld_fool(); loss_lrec()
    Alg. 1 (lines counted from "Initialize" = 1) ......... build_models(), train(), generative_step(), fit()
    Eq. (11) M; M_ens (Sec. 2.3) ... score_m(), shifted_features(), normal_features(), anomaly_scores(), score()
    Sec. 3 one-class protocol; your own images ................... prepare()

Deviations: the paper is silent (S), the code follows CSI's released code alinlab/CSI (C), or adds (A)
  - (C) Schedule: 1000 epochs of the normal set at batch 32 (--iters, --batch-size; the paper names none and
    "follows [32]", Sec. 3); Adam 2e-4, betas (0.9, 0.999) for every network, constant (Sec. 3), no LARS.
  - (C) T: flip p 0.5 before the shift, then colour jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2,
    random resized crop (0.08, 1); no blur (--blur-p 0; Sec. 2.1 lists blur after SimCLR). Jitter steps in a
    fixed order (CSI: random); crops clamped to the image. NT-Xent tau 0.5 (--temperature), 128-d projection.
  - (C) M_ens (--ensemble R, CSI's 10; default 0: no table uses it, Sec. 3.2 starts from CSI's single-view 94.3):
    R draws of T, crop area fixed (--test-crop-scale 0.54), the R features of an image and shift averaged, then
    Eq. (11); (A) draws from --seed. Both scores use the projection head's output.
  - (S) Eq. (11)'s arg max: x~ maximises sum_S m(S x_test, S x') (the printed arg max drops S), so M is one max.
  - (S) F's passes for L_CSI-S and L_REC run frozen in eval mode: only F's own steps (L_CSI, L_JOINT) move
    its BN statistics. D and D' minimise the cross-entropies of "real" = 1 (Alg. 1's arg min of L_D, Eq. 7,
    is the same game with D read as P(fake)); G and E take the non-saturating step.
  - (C) Eq. (1)-(3) sum over instances; the losses here are batch means, as in CSI's code.
  - (S) Eq. (8)'s pixel term is a mean over pixels (lambda 100 times a sum would drown the feature term); sim
    is the cosine of projections; Eq. (10) sums over the latent. X~ in Eq. (5)-(6) is a fresh batch G(h) of
    |X| images (detached in Eq. 5). The generative block runs on batches 0, N, 2N, ... (0-based).
  - (S) Networks: F = CIFAR ResNet-18 (common.py), projection d-d-128, linear shift head; G and D = SN-GAN's
    standard CNN (Miyato et al. 2018, Table 3; D spectrally normalised); E mirrors G; D' = MLP 1000-1000
    (adversarial autoencoders); h ~ N(0, I) 128-d (--width, --gan-width, --proj-dim, --latent-dim, --ld-width).
  - (A) Images in [0, 1]; 28x28 gray images are repeated to 3 channels and zero-padded to 32x32. On a CPU, F
    runs in channels_last memory format (speed; it changes float rounding, so it stays on to repeat runs).
  - (A) --dataset digits (offline install check): widths 8 unless given. --dataset PATH: your
    own images (common.read_user_data) with the paper's values; 1x28x28 grey stays, others become 3x32x32.
Run:  python csi_gen.py --dataset cifar10 --normal 0 --variant full
"""
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from common import (DataError, IMAGE_DATASETS, Progress, ResNet18, as_rgb32, check_finite, check_input_shape,
                    check_scores, command_line, exit_codes, finish, fit_batch, flags, load_checkpoint, load_images,
                    load_weights, loaded_note, number, one_class_split, output_flags, parse, parse_normal, png_path,
                    read_user_data, run_name, save_checkpoint, saving_run, say, set_seed)

SHIFTS = 4                  # rotations by 0, 90, 180, 270 degrees (Sec. 3)
ADAM_BETAS = (0.9, 0.999)   # Sec. 3; lr 2e-4 is train()'s default
EPOCHS = 1000               # CSI's released --epochs (the paper gives no schedule; Sec. 3 follows [32])
INPUT_SHAPES = ((1, 28, 28), (3, 32, 32))
ARCH = ("input_shape", "variant", "width", "proj_dim", "gan_width", "latent_dim", "ld_width")   # build_models
M_ENS = ("blur_p", "ensemble", "test_crop_scale")  # the settings a set of normal-set features was made with
DIGITS = dict(width=8, gan_width=8)   # --dataset digits, an offline install check (not in the paper)

# ------------------------------------------------------------------------------------------ models (Sec. 2.2, 3)

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
        self.latent_dim = latent_dim
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


def build_models(input_shape, variant="full", width=64, proj_dim=128, gan_width=64, latent_dim=128, ld_width=1000,
                 device="cpu"):
    """The networks of one variant (Sec. 3.2) as a ModuleDict: F (csi); + G, D (g); + E, D' as "D_lat" (full).
    input_shape: (1, 28, 28) or (3, 32, 32) -- every image is fed to the networks as 3 x 32 x 32.
    Widths 64 are the paper's networks (ResNet-18 and SN-GAN's standard CNN, Sec. 3)."""
    if tuple(input_shape) not in INPUT_SHAPES:
        raise ValueError(f"input_shape must be (1, 28, 28) or (3, 32, 32) for this model, got {tuple(input_shape)}")
    if variant not in ("csi", "g", "full"):
        raise ValueError(f"variant must be 'csi', 'g' or 'full', got {variant!r}")
    device = torch.device(device)
    nets = nn.ModuleDict({"F": CSINet(width, proj_dim)})
    if variant != "csi":
        nets.update({"G": Generator(latent_dim, gan_width), "D": Discriminator(gan_width)})
    if variant == "full":
        nets.update({"E": Encoder(latent_dim, gan_width), "D_lat": LatentDiscriminator(latent_dim, ld_width)})
    nets.to(device)
    if device.type == "cpu":   # speed: F dominates the cost; G, E, D stay in the default format
        nets["F"].to(memory_format=torch.channels_last)
    nets.input_shape = tuple(input_shape)
    nets.arch = dict(input_shape=list(input_shape), variant=variant, width=width, proj_dim=proj_dim,
                     gan_width=gan_width, latent_dim=latent_dim, ld_width=ld_width)     # what save() keeps
    return nets


def as_images(nets, x, name="x"):
    """Array or tensor (N, C, H, W) in [0, 1], of the shape nets were built for -> float32 (N, 3, 32, 32) on
    their device: gray 28 x 28 images repeated to 3 channels and zero-padded 2 pixels per side."""
    return as_rgb32(x, nets.input_shape, next(nets.parameters()).device, name)


# ------------------------------------------------------------------------------------------ shifts and T (Sec. 2.1)

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


def bce(logits, label):
    """Cross-entropy of discriminator logits against one label: 1 = real / prior, 0 = generated / encoded."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(label)))


def loss_d(d, x, x_syn, x_rec=None):
    """Eq. (7) for D: real x -> 1, synthetic G(h) -> 0, reconstructed G(E(x)) -> 0 (inputs detached)."""
    loss = bce(d(x), 1)
    for fake in ([x_syn] if x_rec is None else [x_syn, x_rec]):
        loss = loss + bce(d(fake.detach()), 0)
    return loss


def loss_d_fool(d, x_syn, x_rec=None):
    """Eq. (7) for (G, E), non-saturating: synthetic and reconstructed images -> 1."""
    return sum(bce(d(fake), 1) for fake in ([x_syn] if x_rec is None else [x_syn, x_rec]))


def loss_ld(d_lat, h, h_enc):
    """Eq. (9) for D': prior samples h -> 1, codes E(x) -> 0 (detached)."""
    return bce(d_lat(h), 1) + bce(d_lat(h_enc.detach()), 0)


def loss_ld_fool(d_lat, h_enc):
    """Eq. (9) for E, non-saturating: codes E(x) -> 1."""
    return bce(d_lat(h_enc), 1)


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


# ------------------------------------------------------------------------------------------ training (Alg. 1)

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


def generative_step(nets, opts, x, temperature, blur_p, lambda_rec, it):
    """Alg. 1, lines 5-13, the block run every N batches, in the paper's order; without E (variant g) the
    encoder's steps are skipped. Returns the loss values."""
    f, g, d = nets["F"], nets["G"], nets["D"]
    full = "E" in nets
    b, dev = len(x), x.device
    out = {}
    randn = lambda: torch.randn(b, g.latent_dim, device=dev)                      # Alg. 1, line 5

    # Alg. 1, lines 6-7: D against (G, E) on L_D (Eq. 7): real x, synthetic G(h), reconstructed G(E(x))
    x_syn = g(randn())
    x_rec = g(nets["E"](x)) if full else None
    l_d = loss_d(d, x, x_syn, x_rec)
    step(opts, l_d, "D")
    set_requires_grad(d, False)
    l_fool = loss_d_fool(d, x_syn, x_rec)
    step(opts, l_fool, *(["G", "E"] if full else ["G"]))
    set_requires_grad(d, True)
    out.update(l_d=l_d.item(), l_gan=l_fool.item())

    # Alg. 1, line 8: G on L_CSI-S = L_CSI(X~) (Eq. 6), F frozen (eval-mode BN)
    freeze(f)
    l_csi_s = csi_loss(f, g(randn()), temperature, blur_p)[0]
    step(opts, l_csi_s, "G")
    out["l_csi_s"] = l_csi_s.item()

    if full:
        e, d_lat = nets["E"], nets["D_lat"]
        # Alg. 1, line 9: D' against E on L_LD (Eq. 9)
        h_enc = e(x)
        l_ld = loss_ld(d_lat, randn(), h_enc)
        step(opts, l_ld, "D_lat")
        set_requires_grad(d_lat, False)
        l_ld_fool = loss_ld_fool(d_lat, h_enc)
        step(opts, l_ld_fool, "E")
        set_requires_grad(d_lat, True)
        # Alg. 1, lines 10-11: G and E on L_REC (Eq. 8), T1, T2 drawn inside, F frozen (eval-mode BN)
        l_rec, pixel, sim = loss_rec(f, x, g(e(x)), lambda_rec, blur_p)
        step(opts, l_rec, "G", "E")
        # Alg. 1, line 12: E on L_LREC (Eq. 10)
        h = randn()
        l_lrec = loss_lrec(h, e(g(h).detach()))
        step(opts, l_lrec, "E")
        out.update(l_ld=l_ld.item(), l_e_fool=l_ld_fool.item(), l_rec=l_rec.item(), pixel=pixel.item(),
                   sim=sim.item(), l_lrec=l_lrec.item())
    unfreeze(f)

    # Alg. 1, line 13: F on L_JOINT = L_CSI(X u X~) (Eq. 5), X~ a fresh detached batch G(h); F trains here
    with torch.no_grad():
        x_syn = g(randn())
    l_joint = csi_loss(f, torch.cat([x, x_syn]), temperature, blur_p)[0]
    step(opts, l_joint, "F")
    out["l_joint"] = l_joint.item()
    for k, v in out.items():
        check_finite(v, f"{k} at iteration {it}")
    return out


def train(nets, x_normal, iters=None, batch_size=32, lr=2e-4, temperature=0.5, gen_every=5, lambda_rec=100.0,
          blur_p=0.0, log=None):
    """Alg. 1 on the normal images x_normal (N, C, H, W) in [0, 1]: every batch F steps on L_CSI(X); on batches
    0, N, 2N, ... (N = gen_every) the generative block follows, when nets has a generator. iters = None: 1000
    epochs of x_normal (CSI's schedule). Adam for every network (Sec. 3). log: any callable of one string; a
    line with the losses and the time left at most every 10 s, and after the last batch (None: silent).
    Returns nets, trained in place; a non-finite loss raises FloatingPointError."""
    x = as_images(nets, x_normal, "x_normal")
    n, gen = len(x), {}
    if not 2 <= batch_size <= n or gen_every < 1:   # NT-Xent needs other instances in the batch
        raise ValueError(f"batch_size must be in [2, {n}] (the images in x_normal) and gen_every >= 1, got "
                         f"{batch_size} and {gen_every}")
    iters = iters or EPOCHS * math.ceil(n / batch_size)
    opts = {k: torch.optim.Adam(v.parameters(), lr=lr, betas=ADAM_BETAS) for k, v in nets.items()}
    progress = Progress("iter", iters, log)
    for it in range(iters):                                                       # Alg. 1, line 2
        xb = x[torch.randint(n, (batch_size,), device=x.device)]
        l_csi, l_con, l_cls = csi_loss(nets["F"], xb, temperature, blur_p)         # Alg. 1, line 3
        step(opts, l_csi, "F")
        check_finite(l_csi.item(), f"L_CSI at iteration {it + 1}")
        if "G" in nets and it % gen_every == 0:                                   # Alg. 1, line 4
            gen = generative_step(nets, opts, xb, temperature, blur_p, lambda_rec, it + 1)
        losses = dict(l_csi=l_csi.item(), l_con=l_con.item(), l_cls=l_cls.item(), **gen)
        progress(it + 1, "".join(f" {k}={v:.4f}" for k, v in losses.items()))
    return nets


# ------------------------------------------------------------------------------------------ scoring (Sec. 2.3)

@torch.no_grad()
def shifted_features(net, x, views=0, blur_p=0.0, crop_scale=0.54, chunk=64, progress=None):
    """F(S(x)) for every shift S: (N, 3, 32, 32) -> (4, N, d), in eval mode.
    views = 0: one plain view per shift (Eq. 11 as printed).
    views = R > 0 (M_ens, CSI's get_features): R random test-time draws per image and shift -- flip (drawn
    per image and per shift, before the rotation), then T with the crop area fixed at crop_scale -- and the
    R feature vectors are AVERAGED, so the score sees one mean feature per image and shift.
    progress: a Progress over N * max(R, 1) images (one image = its 4 shifts through F)."""
    was_training = net.training
    net.eval()
    out = []
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        if views == 0:
            feats = net(shift_batch(xb)[0])[0]                                      # (4b, d)
        else:
            feats = 0
            for r in range(views):
                xs = torch.cat([torch.rot90(random_hflip(xb), k, dims=(2, 3)) for k in range(SHIFTS)])
                feats = feats + net(augment(xs, blur_p, (crop_scale, crop_scale)))[0]
                if progress and r + 1 < views:
                    progress(i * views + (r + 1) * len(xb))
            feats = feats / views                                                   # mean over the R draws
        out.append(feats.view(SHIFTS, len(xb), -1))
        if progress:
            progress((i + len(xb)) * max(views, 1))
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


def seeded_features(nets, x, ensemble, blur_p, test_crop_scale, seed, log, what):
    """shifted_features() of images x on their own random stream: M_ens's test-time draws of T come from seed,
    and the global random state is left as it was (training and the other passes draw the same numbers)."""
    name = f"M_ens (R={ensemble})" if ensemble else "M (Eq. 11)"
    progress = Progress(f"{name}, {what}:", len(x) * max(ensemble, 1), log) if log else None
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return shifted_features(nets["F"], x, ensemble, blur_p, test_crop_scale, progress=progress)


def normal_features(nets, x_normal, ensemble=0, blur_p=0.0, test_crop_scale=0.54, seed=0, log=None):
    """Eq. (11)'s nearest-neighbour set: F(S x') of every normal training image x' (N, C, H, W) in [0, 1] and
    shift S (ensemble = R > 0: M_ens's mean over R draws of T) -> dict(features=(4, N, d) tensor, ensemble=,
    blur_p=, test_crop_scale=): all that anomaly_scores() needs of the normal images, and what save() keeps."""
    x = as_images(nets, x_normal, "x_normal")
    return dict(features=seeded_features(nets, x, ensemble, blur_p, test_crop_scale, seed, log, "normal images"),
                ensemble=int(ensemble), blur_p=float(blur_p), test_crop_scale=float(test_crop_scale))


def anomaly_scores(nets, normal, x, ensemble=0, blur_p=0.0, test_crop_scale=0.54, seed=0, log=None):
    """Anomaly score of every image of x = -M (Eq. 11; M scores normality, so the sign is flipped): higher =
    more anomalous, as a numpy array (N,). normal: the normal training images (Eq. 11's nearest-neighbour
    set), or normal_features() of them made with the same ensemble, blur_p and test_crop_scale. ensemble = R >
    0: -M_ens instead, Eq. (11) on features averaged over R test-time draws of T (CSI's evaluation, R = 10
    there; blur_p as in training), drawn from seed: the same model, images and seed give the same scores."""
    x = as_images(nets, x, "x")
    if not isinstance(normal, dict):
        normal = normal_features(nets, normal, ensemble, blur_p, test_crop_scale, seed, log)
    asked = dict(ensemble=ensemble, blur_p=blur_p, test_crop_scale=test_crop_scale)
    keys = list(asked) if ensemble or normal["ensemble"] else ["ensemble"]        # M draws nothing from T
    if any(normal[k] != asked[k] for k in keys):
        made = ", ".join(f"{k}={normal[k]:g}" for k in keys)
        raise ValueError(f"normal holds features made with {made}, but {', '.join(f'{k}={asked[k]:g}' for k in keys)} "
                         f"was asked; score with {made}, or make the features again with normal_features()")
    test = seeded_features(nets, x, ensemble, blur_p, test_crop_scale, seed, log, "scored images")
    return -score_m(test, normal["features"].to(test.device))[0].cpu().numpy()


# ------------------------------------------------------------------------------------------ fit, score, save, load

def fit(x_normal, *, variant="full", width=64, proj_dim=128, gan_width=64, latent_dim=128, ld_width=1000, iters=None,
        batch_size=32, lr=2e-4, temperature=0.5, gen_every=5, lambda_rec=100.0, blur_p=0.0, ensemble=0,
        test_crop_scale=0.54, seed=0, device="cpu", log=None):
    """Alg. 1 on the normal images x_normal (N, 1, 28, 28) or (N, 3, 32, 32) in [0, 1], then Eq. (11)'s
    nearest-neighbour set: set_seed(seed), build_models() for that shape, train(), and normal_features() for M
    and, with ensemble = R > 0, for M_ens (its test-time draws from seed). -> the networks (an nn.ModuleDict) with
    banks (the features), config (every setting) and info (seconds): all that score() and save() need."""
    set_seed(seed)
    nets = build_models(tuple(x_normal.shape[1:]), variant, width, proj_dim, gan_width, latent_dim, ld_width, device)
    iters = iters or EPOCHS * math.ceil(len(x_normal) / batch_size)
    t0 = time.time()
    train(nets, x_normal, iters=iters, batch_size=batch_size, lr=lr, temperature=temperature, gen_every=gen_every,
          lambda_rec=lambda_rec, blur_p=blur_p, log=log)
    t1 = time.time()
    nets.banks = [normal_features(nets, x_normal, r, blur_p, test_crop_scale, seed, log) for r in sorted({0, ensemble})]
    nets.config = dict(nets.arch, iters=iters, batch_size=batch_size, lr=lr, temperature=temperature,
                       gen_every=gen_every, lambda_rec=lambda_rec, blur_p=blur_p, ensemble=ensemble,
                       test_crop_scale=test_crop_scale, seed=seed)
    nets.info = dict(samples=iters * batch_size, train_seconds=t1 - t0, features_seconds=time.time() - t1)
    return nets


def score(model, x, ensemble=False, seed=None, log=None):
    """-M (Eq. 11) of the images x against the model's normal-set features -> numpy (N,), higher = more anomalous.
    ensemble=True: -M_ens (Sec. 2.3) with the M_ens features fit() made (ensemble R > 0), its test-time draws from
    seed (None: the model's)."""
    bank = next((b for b in model.banks if bool(b["ensemble"]) == bool(ensemble)), None)
    if bank is None:
        raise ValueError(f"the model holds no normal-set features for {'M_ens' if ensemble else 'M'}: fit it with "
                         f"{'ensemble > 0' if ensemble else 'the normal images'}, or set model.banks")
    seed = getattr(model, "config", {}).get("seed", 0) if seed is None else seed
    return anomaly_scores(model, bank, x, **{k: bank[k] for k in M_ENS}, seed=seed, log=log)


def save(model, path, config=None):
    """Keep a fitted model in one file, written atomically (read it with load() or --load-model): every network's
    weights and sizes, its config (and `config`) and model.banks, the normal_features() it scores against, kept
    instead of the normal images: 4 x proj_dim = 512 numbers per image and score against 3072 pixels of a 3x32x32
    image (784 of a 1x28x28 one), and new images are scored without encoding the normal set again."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    banks = [dict(b, features=b["features"].detach().cpu()) for b in getattr(model, "banks", [])]
    config = {**getattr(model, "config", {}), **(config or {}), **model.arch}
    save_checkpoint(path, "csi_gen", config, {"normal_features": banks}, state)


def load(path, device="cpu"):
    """A model written by save() or --save-model -> the networks with banks and config, as fit() leaves them:
    score(model, x) scores new images. The config's M_ens settings are those of its M_ens features (ensemble 0
    without them); a checkpoint without M's features (normal_features() with ensemble=0) is refused."""
    ck = load_checkpoint(path, "csi_gen")
    try:
        nets = build_models(device=device, **{k: ck["config"][k] for k in ARCH})
        nets.banks = list(ck["preprocess"]["normal_features"])
        ens = [b for b in nets.banks if b["ensemble"]][:1]
        nets.config = {**ck["config"], "ensemble": 0, **{k: ens[0][k] for k in M_ENS if ens}}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"'{path}' is a csi_gen.py checkpoint without its settings ({type(e).__name__}: {e}). Save "
                        "the model again") from None
    if not any(b["ensemble"] == 0 for b in nets.banks):
        raise DataError(f"'{path}' holds no features for M (normal_features() with ensemble=0). Save the model with "
                        "them")
    nets.info = dict(samples=0, train_seconds=None, features_seconds=0.0)        # nothing trained or encoded here
    return load_weights(nets, ck["state"], path)


# ------------------------------------------------------------------------------------------ data and Figure 2

def prepare(dataset, normal=None, root=None, seed=0):
    """The images to train on and to score -> dict(x_train = the normal training images, x_test, y_test (numpy,
    1 = anomaly), normal = the normal classes (None for your own data), index = each test image's index in its
    source, source = what was read (None for a built-in set)); images (N, C, H, W) in [0, 1], (1, 28, 28) or
    (3, 32, 32). A built-in dataset: the one-class protocol (Sec. 3), the normal class(es) of the train split
    (default "0") and the whole test split. Your own images (dataset = a path; normal unused), read by
    common.read_user_data: 1x28x28 grey images stay as MNIST's, any other size or colour becomes 3x32x32."""
    if dataset in IMAGE_DATASETS:
        normal = parse_normal("0" if normal is None else normal, IMAGE_DATASETS[dataset][0])
        d = one_class_split(*load_images(dataset, root), normal, seed=seed)
        d.update(index=torch.arange(len(d["test"][0])), source=None)
    else:
        d, normal = read_user_data(dataset, "csi_gen.py", seed, tables=False, grey28_only=True), None
        d["source"] += "; F sees 3x32x32 (grey repeated to 3 channels, 28x28 zero-padded)"
    return dict(x_train=d["train"], x_test=d["test"][0], y_test=d["test"][1].numpy(), normal=normal, index=d["index"],
                source=d["source"])


@torch.no_grad()
def save_samples(nets, x_normal, path, x_outliers=None, n=8):
    """Figure 2 as one grid of n columns (torchvision.utils.save_image). Rows: real inliers x; their
    reconstructions G(E(x)) (Fig. 2a); real outliers and their reconstructions (Fig. 2b); samples G(h),
    h ~ N(0, I). Without an encoder (variant g): inliers and samples only. Returns the number of rows."""
    import torchvision.utils
    modes = {k: v.training for k, v in nets.items()}
    nets.eval()
    g, x = nets["G"], as_images(nets, x_normal[:n], "x_normal")
    rows = [x]
    if "E" in nets:
        rows.append(g(nets["E"](x)))
        if x_outliers is not None and len(x_outliers) >= n:
            xo = as_images(nets, x_outliers[:n], "x_outliers")
            rows += [xo, g(nets["E"](xo))]
    rows.append(g(torch.randn(n, g.latent_dim, device=x.device)))
    torchvision.utils.save_image(torch.cat(rows).float().cpu(), path, nrow=n, padding=2)
    for k, net in nets.items():
        net.train(modes[k])
    return len(rows)


# ------------------------------------------------------------------------------------------ command line

POS, POSITIVE = number(int, 1), number(float, 0, low_open=True)
OPTIONS = [   # (flag, type, help naming the value's source); the defaults are fit()'s, --dataset digits takes DIGITS
    ("iters", POS, f"training batches (Alg. 1); default {EPOCHS} epochs (not in the paper: CSI's released --epochs)"),
    ("batch-size", number(int, 2), "images per batch, 4 shifts x 2 views each (not in the paper: CSI's --batch_size)"),
    ("lr", POSITIVE, "Adam learning rate of every network, betas (0.9, 0.999) (Sec. 3)"),
    ("temperature", POSITIVE, "NT-Xent temperature tau, Eq. (1) (not in the paper: CSI's 0.5)"),
    ("gen-every", POS, "N: the generative block runs every N batches (Alg. 1; N = 5 in Sec. 3)"),
    ("lambda-rec", number(float, 0), "lambda of L_REC (Eq. 8, Sec. 2.2)"),
    ("width", POS, "base width of F's ResNet-18; 64 = the standard 512-d network (Sec. 3); digits: 8 (not in the "
                   "paper: install check)"),
    ("proj-dim", POS, "projection head output size (not in the paper: SimCLR's and CSI's 128)"),
    ("gan-width", POS, "base width of G, E and D; 64 = SN-GAN's standard CNN (Sec. 3: [23], Miyato et al. Table 3)"),
    ("latent-dim", POS, "size of h ~ N(0, I) (not in the paper: SN-GAN's 128)"),
    ("ld-width", POS, "hidden width of D', two layers (not in the paper: adversarial autoencoders' 1000)"),
    ("blur-p", number(float, 0, 1), "probability of Gaussian blur in T; Sec. 2.1 lists blur after SimCLR (not in the "
                                    "paper: 0 = CSI's CIFAR policy, which has none; SimCLR's ImageNet value is 0.5)"),
    ("ensemble", number(int, 0), "R > 0: also M_ens (Sec. 2.3, auroc_ens), features averaged over R draws of T per "
                                 "image and shift, R more passes over both image sets; CSI's --ood_samples 10. 0 = M "
                                 "(Eq. 11) alone: no table of the paper uses M_ens"),
    ("test-crop-scale", number(float, 0, 1, low_open=True), "area fraction of M_ens's test-time random resized crop; "
     "the other test-time steps are T's: flip 0.5 [CSI], jitter 0.8 [CSI], grayscale 0.2 [CSI], blur --blur-p (not in "
     "the paper: CSI's README eval, --resize_factor 0.54 --resize_fix)")]
TRAINING = ARCH[1:] + ("iters", "batch_size", "lr", "temperature", "gen_every", "lambda_rec") + M_ENS   # checkpoint's


def defaults(known):
    """The defaults that apply: fit()'s, DIGITS's for --dataset digits, none with --load-model (the checkpoint's)."""
    return dict.fromkeys(TRAINING) if known.load_model else DIGITS if known.dataset == "digits" else {}


def parse_args(argv=None):
    p = command_line("csi_gen.py", "CSI + adversarial-autoencoder synthetic inliers (Yu & Chiu, MVA 2021)",
                     IMAGE_DATASETS, "cifar10, cifar100 (20 superclasses) as in Sec. 3; the others by its protocol "
                     "(not in the paper: 28x28 sets padded to 3x32x32; digits = install check)", "the paper's values "
                     "(one set for every dataset); 1x28x28 grey images are padded as MNIST's, others to 3x32x32",
                     "seed of training and M_ens's draws (not in the paper)", "Sec. 3", default="cifar10", tables=False)
    p.add_argument("--variant", default="full", choices=["csi", "g", "full"], help="csi = F alone (CSI); g = + G; "
                   "full = + E, all of Alg. 1 (Sec. 3.2 ablation); one flag set serves all three")
    for flag, kind, text in OPTIONS:
        p.add_argument("--" + flag, type=kind, default=fit.__kwdefaults__[flag.replace("-", "_")], help=text)
    p.add_argument("--save-samples", type=png_path, help="write a PNG grid: real inliers, G(E(x)), real outliers of "
                   "the test split, G(E(x)) (full only), samples G(h) (Figure 2, Sec. 3.1)")
    output_flags(p, "scores (M, Eq. 11, the RESULT's auroc), scores_ens (M_ens, auroc_ens; unless --ensemble 0)",
                 "every network's weights, every setting and the normal set's features (Eq. 11; M and M_ens)")
    args = parse(p, argv, defaults, TRAINING)
    idle = [k for k in ("gen_every", "save_samples", "lambda_rec") if k in args.given and args.variant in
            (("csi", "g") if k == "lambda_rec" else ("csi",))]      # G's steps without G, L_REC without E
    if idle:
        p.error(f"{flags(idle)} {'has' if len(idle) == 1 else 'have'} no effect with --variant {args.variant}, which "
                f"trains no {'generator' if args.variant == 'csi' else 'encoder E'}. Use --variant full, or drop "
                f"{'it' if len(idle) == 1 else 'them'}")
    if "test_crop_scale" in args.given and not args.ensemble:      # M_ens's crop without M_ens
        p.error("--test-crop-scale sets M_ens's crop, and --ensemble 0 computes M alone. Add --ensemble R, or drop it")
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    with exit_codes():
        model = load(args.load_model, args.device) if args.load_model else None
        saving_run(args, model.config if model else None)       # its seed: the split, M_ens's draws
        set_seed(args.seed)
        data = prepare(args.dataset, args.normal, args.data_root, args.seed)
        x_train, x_test, y_test = data["x_train"], data["x_test"], data["y_test"]
        (name, normal_text), shape = run_name(args.dataset, data["normal"]), tuple(x_train.shape[1:])
        cfg = {k: model.config.get(k) if model is not None else getattr(args, k) for k in TRAINING}   # as saved
        if model is not None:
            check_input_shape(model.input_shape, shape, args.load_model, name)
            if args.save_samples and "G" not in model:
                raise DataError(f"--save-samples needs a generator; '{args.load_model}' has none. Drop --save-samples")
            say(loaded_note(args.load_model, model.config))
        else:
            cfg["batch_size"] = fit_batch(args.batch_size, len(x_train), "batch_size" in args.given, say,
                                          "normal training images")
            cfg["iters"] = args.iters or EPOCHS * math.ceil(len(x_train) / cfg["batch_size"])
        r, passes = cfg["ensemble"], f"{1 + cfg['ensemble']} pass{'es' if cfg['ensemble'] else ''} over"
        if data["source"]:
            say(f"csi_gen: read {name}: {data['source']}; the paper's values where not given (one for every dataset)")
        say(f"csi_gen: variant={cfg['variant']} dataset={name} normal={normal_text} train={len(x_train)} "
            f"test={len(x_test)} (anomalies {int(y_test.sum())}) iters={cfg['iters']} batch={cfg['batch_size']} "
            f"lr={cfg['lr']} tau={cfg['temperature']} N={cfg['gen_every']} width={cfg['width']} "
            f"gan_width={cfg['gan_width']} blur_p={cfg['blur_p']} ensemble={r} device={args.device}")
        say(f"scoring: {passes} the {len(x_test)} test images (M 1" + (f", M_ens {r}" if r else "") + "; a pass = "
            "the 4 shifts of every image through F); the normal set's features: "
            + ("the checkpoint's" if args.load_model else f"{passes} its {len(x_train)} images"))
        model = fit(x_train, **cfg, seed=args.seed, device=args.device, log=say) if model is None else model
        ts = time.time() - model.info["features_seconds"]         # scoring: the normal set's features, the test set
        scores = {k: score(model, x_test, k == "ens", args.seed, say) for k in ("main", "ens")[:1 + (r > 0)]}
        check_scores({"M (Eq. 11)" if k == "main" else f"M_ens (R={r})": s for k, s in scores.items()}, "the test set")
        result = {"method": "csi_gen", "dataset": name, "normal": normal_text, "seed": args.seed,
                  "auroc": round(roc_auc_score(y_test, scores["main"]), 4),
                  "auroc_ens": round(roc_auc_score(y_test, scores["ens"]), 4) if r else None,
                  **{k: cfg[k] for k in ("variant", "iters", "batch_size", "width", "gan_width", "blur_p", "ensemble")},
                  "test_crop_scale": cfg["test_crop_scale"] if r else None}          # M_ens's crop: only with M_ens
        origin = {"loaded_from": args.load_model, "trained_on": model.config.get("dataset")} if args.load_model else \
            {"values_of": "digits" if args.dataset == "digits" else "paper"}
        config = dict(cfg, input_shape=list(shape), dataset=args.dataset, normal=normal_text, seed=args.seed,
                      device=args.device.type, **origin)
        if args.save_samples:
            rows = save_samples(model, x_train, args.save_samples, x_test[torch.as_tensor(y_test) == 1])
            say(f"csi_gen: sample grid ({rows} rows, Figure 2) written to {args.save_samples}")
        return finish(args, argv, result, config, scores, y_test, data["index"], lambda path: save(model, path, config),
                      (model.info["samples"], model.info["train_seconds"], len(x_test), time.time() - ts))   # speed


if __name__ == "__main__":
    main()
