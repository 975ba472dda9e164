"""Tests for csi_gen.py (Yu & Chiu: CSI + adversarial-autoencoder synthetic inliers), named after the
paper's equations and steps. Tiny widths and single-threaded torch keep the file fast on shared cores."""
import inspect
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import csi_gen  # noqa: E402
from conftest import read_json, readme_block, run_script  # noqa: E402

TINY = ["--width", "4", "--proj-dim", "16", "--gan-width", "4", "--latent-dim", "8", "--ld-width", "16",
        "--batch-size", "8", "--ensemble", "2"]
TINY_NETS = dict(width=4, proj_dim=16, gan_width=4, latent_dim=8, ld_width=16)    # the same sizes, for the API
QUIET = lambda line: None

# README, "Use a method in your own code" (run verbatim by test_api_runs_from_a_folder_with_only_the_two_files)
SNIPPET = readme_block("csi_gen")   # README's block, run verbatim below


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """2 shared cores: torch's default 2 threads spin against other processes and run ~10x slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def no_augment(monkeypatch):
    monkeypatch.setattr(csi_gen, "augment", lambda x, blur_p, *a, **k: x)
    monkeypatch.setattr(csi_gen, "random_hflip", lambda x: x)


def tiny_nets(variant="full", input_shape=(3, 32, 32)):
    return csi_gen.build_models(input_shape=input_shape, variant=variant, **TINY_NETS)


def adam(nets):
    return {k: torch.optim.Adam(v.parameters(), lr=2e-4) for k, v in nets.items()}


# ------------------------------------------------------------------------------------------ shifts and T

def test_sec21_shift_labels_match_rotated_images():
    x = torch.rand(3, 3, 32, 32)
    xs, labels = csi_gen.shift_batch(x)
    assert xs.shape == (12, 3, 32, 32) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for i in range(12):
        k, j = int(labels[i]), i % 3
        assert torch.equal(xs[i], torch.rot90(x[j], k, dims=(1, 2)))
    # label 1 is a 90-degree counter-clockwise turn: the top-right pixel moves to the top-left
    assert xs[3, 0, 0, 0] == x[0, 0, 0, 31]


def test_sec21_csi_views_share_the_rotation_and_layout(monkeypatch):
    """csi_loss feeds F 2 views x 4 shifts x B images; row r is rotation (r // B) % 4 of image r % B."""
    no_augment(monkeypatch)
    seen = {}

    def fake_net(v):
        seen["x"] = v
        return v.flatten(1)[:, :8], torch.zeros(len(v), 4)

    x = torch.rand(2, 3, 32, 32)
    csi_gen.csi_loss(fake_net, x, 0.5, 0.5)
    v = seen["x"]
    assert v.shape == (16, 3, 32, 32)
    for r in range(16):
        assert torch.equal(v[r], torch.rot90(x[r % 2], (r // 2) % 4, dims=(1, 2)))


def test_sec21_transformations_draw_parameters_per_sample():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32).repeat(16, 1, 1, 1)
    y = csi_gen.augment(x, blur_p=0.5)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert all(not torch.allclose(y[0], y[i]) for i in range(1, 16))
    # crop of the full area with aspect 1 is the identity
    assert torch.allclose(csi_gen.random_resized_crop(x, scale=(1, 1), ratio=(1, 1)), x, atol=1e-5)
    # hue rotation by 0 and unit factors leave the image unchanged
    assert torch.allclose(csi_gen.color_jitter(x, 0, 0, 0, 0, p=1.0), x, atol=1e-5)
    g = csi_gen.random_grayscale(x, p=1.0)
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])


def test_gray_28x28_is_repeated_and_zero_padded_to_32x32():
    x = torch.rand(2, 1, 28, 28)
    y = csi_gen.as_images(tiny_nets("csi", input_shape=(1, 28, 28)), x)
    assert y.shape == (2, 3, 32, 32)
    assert torch.equal(y[:, 1, 2:30, 2:30], x[:, 0]) and y[:, :, :2].abs().sum() == 0


# ------------------------------------------------------------------------------------------ losses

def test_eq2_nt_xent_matches_hand_computation():
    """Four 2-d projections: instances a, b in two views; positives (0, 2) and (1, 3)."""
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [-1.0, 1.0]])
    tau = 0.5
    u = [[a / math.hypot(a, b), b / math.hypot(a, b)] for a, b in z.tolist()]
    sim = [[(u[i][0] * u[j][0] + u[i][1] * u[j][1]) / tau for j in range(4)] for i in range(4)]
    pos = {0: 2, 1: 3, 2: 0, 3: 1}
    hand = sum(-math.log(math.exp(sim[i][pos[i]]) / sum(math.exp(sim[i][k]) for k in range(4) if k != i))
               for i in range(4)) / 4
    assert csi_gen.nt_xent(z, tau).item() == pytest.approx(hand, rel=1e-5)


def test_eq2_other_rotations_of_the_same_image_are_negatives():
    """With 1 image x 2 shifts x 2 views, the loss falls when the two rotations move apart."""
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])          # rotation 0 / rotation 1 of view 1
    apart = torch.cat([pos, pos])                         # view 2 equals view 1
    together = torch.tensor([[1.0, 0.0], [1.0, 0.01], [1.0, 0.0], [1.0, 0.01]])
    assert csi_gen.nt_xent(apart, 0.5) < csi_gen.nt_xent(together, 0.5)


def test_eq7_discriminator_loss_matches_hand_computation():
    logit = {1.0: 0.3, 2.0: -1.2, 3.0: 0.7}                 # D returns a fixed logit per image value
    d = lambda x: torch.tensor([logit[float(v)] for v in x.flatten(1)[:, 0]])
    x, x_syn, x_rec = (torch.full((1, 3, 2, 2), v) for v in (1.0, 2.0, 3.0))
    s = lambda a: 1 / (1 + math.exp(-a))
    hand = -math.log(s(0.3)) - math.log(1 - s(-1.2)) - math.log(1 - s(0.7))
    assert csi_gen.loss_d(d, x, x_syn, x_rec).item() == pytest.approx(hand, rel=1e-5)
    assert csi_gen.loss_d(d, x, x_syn).item() == pytest.approx(hand + math.log(1 - s(0.7)), rel=1e-5)
    assert csi_gen.loss_d_fool(d, x_syn, x_rec).item() == pytest.approx(-math.log(s(-1.2)) - math.log(s(0.7)), rel=1e-5)


def test_eq8_reconstruction_loss_matches_hand_computation(monkeypatch):
    no_augment(monkeypatch)
    net = lambda x: (x.flatten(1), None)                  # F = identity projection
    x = torch.tensor([[[[1.0, 0.0]]]])                    # (1, 1, 1, 2)
    x_rec = torch.tensor([[[[0.5, 0.5]]]])
    loss, pixel, sim = csi_gen.loss_rec(net, x, x_rec, 100.0, 0.5)
    hand_pixel = (0.5 ** 2 + 0.5 ** 2) / 2
    hand_sim = 0.5 / (1.0 * math.sqrt(0.5))
    assert pixel.item() == pytest.approx(hand_pixel) and sim.item() == pytest.approx(hand_sim, rel=1e-5)
    assert loss.item() == pytest.approx(100 * hand_pixel - hand_sim, rel=1e-5)


def test_eq9_eq10_latent_losses_match_hand_computation():
    h, h_cycle = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[1.5, 1.0], [1.0, 0.0]])
    assert csi_gen.loss_lrec(h, h_cycle).item() == pytest.approx(((0.25 + 1.0) + 1.0) / 2)
    d_lat = lambda z: z.sum(1)                            # logit = sum of coordinates
    s = lambda a: 1 / (1 + math.exp(-a))
    hand = (-math.log(s(3.0)) - math.log(s(0.0))) / 2 + (-math.log(1 - s(2.5)) - math.log(1 - s(1.0))) / 2
    assert csi_gen.loss_ld(d_lat, h, h_cycle).item() == pytest.approx(hand, rel=1e-5)


# ------------------------------------------------------------------------------------------ Algorithm 1

def test_alg1_generative_block_runs_only_every_nth_batch(monkeypatch):
    calls, steps = [], []
    monkeypatch.setattr(csi_gen, "generative_step", lambda nets, opts, x, *a: calls.append(a[-1]) or {})
    real_step = csi_gen.step
    monkeypatch.setattr(csi_gen, "step", lambda opts, loss, *names: steps.append(names) or real_step(opts, loss, *names))
    nets = tiny_nets("full")
    csi_gen.train(nets, torch.rand(10, 3, 32, 32), iters=5, batch_size=2, gen_every=2, log=QUIET)
    assert calls == [1, 3, 5]                             # batches 0, N, 2N (0-based) of 5, N = 2
    assert steps == [("F",)] * 5                          # F on L_CSI(X) every batch (Alg. 1, line 3)
    calls.clear()
    csi_gen.train(tiny_nets("csi"), torch.rand(10, 3, 32, 32), iters=3, batch_size=2, gen_every=1, log=QUIET)
    assert calls == []                                    # no generator, no generative block


@pytest.mark.parametrize("variant, order", [
    ("full", [("D",), ("G", "E"), ("G",), ("D_lat",), ("E",), ("G", "E"), ("E",), ("F",)]),
    ("g", [("D",), ("G",), ("G",), ("F",)])])
def test_alg1_generative_block_steps_in_the_papers_order(monkeypatch, variant, order):
    torch.manual_seed(0)
    steps = []
    real_step = csi_gen.step
    monkeypatch.setattr(csi_gen, "step", lambda opts, loss, *names: steps.append(names) or real_step(opts, loss, *names))
    nets = tiny_nets(variant)
    assert sorted(nets) == sorted(["F", "G", "D"] + (["E", "D_lat"] if variant == "full" else []))
    before = {k: [p.detach().clone() for p in v.parameters()] for k, v in nets.items()}
    out = csi_gen.generative_step(nets, adam(nets), torch.rand(4, 3, 32, 32), 0.5, 0.5, 100.0, 1)
    assert steps == order
    for k, v in nets.items():                             # every network was updated
        assert any(not torch.equal(a, b) for a, b in zip(before[k], v.parameters())), k
    assert all(p.requires_grad for v in nets.values() for p in v.parameters())   # nothing left frozen
    assert ("l_rec" in out) == (variant == "full")


def bn_stats(net):
    return [b.clone() for m in net.modules() if isinstance(m, nn.BatchNorm2d) for b in (m.running_mean, m.running_var)]


@pytest.mark.parametrize("variant", ["g", "full"])
def test_frozen_f_passes_do_not_move_f_batchnorm_statistics(monkeypatch, variant):
    """L_CSI-S (Eq. 6) and L_REC (Eq. 8) score synthetic / reconstructed images with F frozen: F's running
    BN statistics must not move during any G/E/D step; they move on F's own training step (L_JOINT, Eq. 5)."""
    torch.manual_seed(0)
    nets = tiny_nets(variant)
    before, seen = bn_stats(nets["F"]), []
    real_step = csi_gen.step
    monkeypatch.setattr(csi_gen, "step", lambda opts, loss, *names: seen.append((names, bn_stats(nets["F"])))
                        or real_step(opts, loss, *names))
    csi_gen.generative_step(nets, adam(nets), torch.rand(4, 3, 32, 32), 0.5, 0.5, 100.0, 1)
    assert [n for n, _ in seen][-1] == ("F",)
    for names, stats in seen[:-1]:                  # every G/E/D step: F's statistics untouched so far
        assert all(torch.equal(a, b) for a, b in zip(before, stats)), names
    assert any(not torch.equal(a, b) for a, b in zip(before, seen[-1][1]))   # the check can fail: L_JOINT moves them
    assert nets["F"].training and all(p.requires_grad for p in nets["F"].parameters())


# ------------------------------------------------------------------------------------------ score (Sec. 2.3)

def test_sec23_score_nearest_neighbour_equals_brute_force():
    torch.manual_seed(0)
    test, train = torch.randn(4, 7, 5), torch.randn(4, 11, 5)
    m, idx = csi_gen.score_m(test, train, chunk=3)
    for i in range(7):
        totals = []
        for j in range(11):   # M = sum over shifts of cos(F(S x), F(S x')) * ||F(S x)||
            totals.append(sum(F.cosine_similarity(test[s, i], train[s, j], dim=0) * test[s, i].norm()
                              for s in range(4)).item())
        assert idx[i].item() == max(range(11), key=lambda j: totals[j])
        assert m[i].item() == pytest.approx(max(totals), rel=1e-5)


def test_eq11_score_on_hand_made_features_equals_hand_computation():
    """Eq. (11) by hand: m(a, b) = sim(a, b) * ||a|| = <a, b / ||b||>, summed over the 4 shifts, max over x'.
    Test image t, training images x1, x2 (d = 2); the training vectors' lengths must not matter, t's must."""
    t = [[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]          # F(S_k t), k = 0..3
    u = [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]          # a second test image
    x1 = [[5.0, 0.0], [1.0, 0.0], [0.0, 3.0], [1.0, -1.0]]
    x2 = [[0.0, 1.0], [0.0, 7.0], [1.0, 0.0], [2.0, 2.0]]
    # t:  x1 -> 3 + 1 + 2 + 0 = 6;  x2 -> 4 + 0 + 0 + 2/sqrt(2) = 5.414...   => M = 6, x~ = x1
    # u:  x1 -> 0 + 0 + 0 + 0 = 0;  x2 -> 1 + 1 + 1 + 2/sqrt(2) = 4.414...   => M = 4.414..., x~ = x2
    test = torch.tensor([t, u]).transpose(0, 1)                   # (4 shifts, 2 images, 2)
    train = torch.tensor([x1, x2]).transpose(0, 1)
    m, idx = csi_gen.score_m(test, train)
    assert m.tolist() == pytest.approx([6.0, 3 + math.sqrt(2)], rel=1e-6) and idx.tolist() == [0, 1]
    m2, _ = csi_gen.score_m(test * 2, train)                      # ||F(x_test)|| enters linearly
    assert m2.tolist() == pytest.approx([12.0, 6 + 2 * math.sqrt(2)], rel=1e-6)


class SumNet(nn.Module):
    """A stand-in F whose projection is (sum of pixels, 1): linear in the image, blind to flips and rotations."""

    def forward(self, x):
        return torch.stack([x.flatten(1).sum(1), torch.ones(len(x))], 1), torch.zeros(len(x), 4)


def test_m_ens_averages_features_over_draws_before_scoring(monkeypatch):
    """M_ens (Sec. 2.3) as CSI evaluates it: R test-time draws per image and shift, features AVERAGED, then
    Eq. (11); the draws use CSI's fixed test-time crop area (--test-crop-scale 0.54)."""
    calls = []

    def fake_augment(x, blur_p, crop_scale=(0.08, 1.0)):
        calls.append(crop_scale)
        return x * len(calls)                                     # draw r multiplies the image by r

    monkeypatch.setattr(csi_gen, "augment", fake_augment)
    x = torch.rand(3, 3, 32, 32)
    feats = csi_gen.shifted_features(SumNet(), x, views=3, crop_scale=0.54)
    assert feats.shape == (4, 3, 2) and calls == [(0.54, 0.54)] * 3
    expected = x.flatten(1).sum(1) * (1 + 2 + 3) / 3                # mean of the three draws' features
    assert torch.allclose(feats[:, :, 0], expected.expand(4, 3), rtol=1e-5)
    plain = csi_gen.shifted_features(SumNet(), x)                   # views = 0: no transformation at all
    assert len(calls) == 3 and torch.allclose(plain[:, :, 0], x.flatten(1).sum(1).expand(4, 3), rtol=1e-5)


def test_every_long_phase_reports_progress_with_the_time_left(monkeypatch):
    """Issue 24: training, the normal set's features and each scoring pass (M_ens: R draws per image) report
    through Progress, here forced to print every update: 'what i/n ... elapsed, about ...s left'."""
    real, lines = csi_gen.Progress, []
    monkeypatch.setattr(csi_gen, "Progress", lambda *a, **k: real(*a, **dict(k, every=0)))
    feats = csi_gen.shifted_features(SumNet(), torch.rand(10, 3, 32, 32), views=2, chunk=3,
                                     progress=csi_gen.Progress("M_ens, scored images:", 20, lines.append, every=0))
    assert feats.shape == (4, 10, 2)
    assert [ln.split()[3] for ln in lines] == ["3/20", "6/20", "9/20", "12/20", "15/20", "18/20", "19/20", "20/20"]
    assert all(" left" in ln for ln in lines[:-1]) and "left" not in lines[-1]
    nets, lines = tiny_nets("csi", (1, 28, 28)), []
    x = np.random.rand(6, 1, 28, 28)
    csi_gen.train(nets, x, iters=3, batch_size=2, log=lines.append)
    assert [ln.split()[:2] for ln in lines] == [["iter", "1/3"], ["iter", "2/3"], ["iter", "3/3"]]
    assert " l_csi=" in lines[0] and "about" in lines[0]
    lines.clear()
    csi_gen.anomaly_scores(nets, x, x[:4], ensemble=2, log=lines.append)
    assert lines[-1].startswith("M_ens (R=2), scored images: 8/8 ") and any(
        ln.startswith("M_ens (R=2), normal images: 12/12 ") for ln in lines)


def test_csi_augmentation_order_and_probabilities(monkeypatch):
    """T in CSI's order (get_simclr_augmentation): jitter p 0.8, grayscale p 0.2, crop (0.08, 1); blur only
    when --blur-p > 0 (CSI's CIFAR policy has none: default 0), and last."""
    assert inspect.signature(csi_gen.color_jitter).parameters["p"].default == 0.8
    assert inspect.signature(csi_gen.random_grayscale).parameters["p"].default == 0.2
    order = []
    monkeypatch.setattr(csi_gen, "color_jitter", lambda x: order.append("jitter") or x)
    monkeypatch.setattr(csi_gen, "random_grayscale", lambda x: order.append("gray") or x)
    monkeypatch.setattr(csi_gen, "random_resized_crop", lambda x, scale: order.append(("crop", scale)) or x)
    monkeypatch.setattr(csi_gen, "gaussian_blur", lambda x, p: order.append(("blur", p)) or x)
    x = torch.rand(2, 3, 32, 32)
    csi_gen.augment(x, 0.0)
    assert order == ["jitter", "gray", ("crop", (0.08, 1.0))]
    order.clear()
    csi_gen.augment(x, 0.5)
    assert order == ["jitter", "gray", ("crop", (0.08, 1.0)), ("blur", 0.5)]
    a = csi_gen.parse_args([])
    assert a.blur_p == 0.0 and a.test_crop_scale == 0.54 and a.ensemble == 0 and a.lr == 2e-4
    train = inspect.signature(csi_gen.train).parameters                 # the API's defaults are the CLI's
    assert [train[k].default for k in ("batch_size", "lr", "temperature", "gen_every", "lambda_rec", "blur_p")] == \
        [a.batch_size, a.lr, a.temperature, a.gen_every, a.lambda_rec, a.blur_p]
    build = inspect.signature(csi_gen.build_models).parameters
    assert [build[k].default for k in ("width", "proj_dim", "gan_width", "latent_dim", "ld_width")] == \
        [a.width, a.proj_dim, a.gan_width, a.latent_dim, a.ld_width]


def help_text(capsys, argv):
    with pytest.raises(SystemExit):
        csi_gen.parse_args(argv + ["--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_states_the_source_of_each_value_and_real_defaults(capsys):
    out = help_text(capsys, [])
    assert "CSI's CIFAR policy" in out and "0.54 --resize_fix" in out and "jitter 0.8 [CSI]" in out
    assert "grayscale 0.2 [CSI]" in out and "(Sec. 3) (default: 0.0002)" in out and "(default: None)" not in out
    assert "--width WIDTH base width of F's ResNet-18" in out and "install check) (default: 64)" in out
    digits = help_text(capsys, ["--dataset", "digits"])                 # the dataset's own defaults
    assert "install check) (default: 8)" in digits and "no table of the paper uses M_ens (default: 0)" in digits


def test_digits_defaults_fit_the_offline_set():
    a = csi_gen.parse_args(["--dataset", "digits"])
    assert (a.width, a.gan_width, a.ensemble) == (8, 8, 0)
    assert csi_gen.parse_args(["--dataset", "digits", "--width", "4"]).width == 4
    a = csi_gen.parse_args(["--dataset", "mnist"])   # the paper's scale elsewhere
    assert (a.width, a.gan_width, a.ensemble) == (64, 64, 0)


# ------------------------------------------------------------------------------------------ Python API

def test_api_runs_from_a_folder_with_only_the_two_files(tmp_path):
    """A user copies csi_gen.py and common.py: the README snippet runs as is (1 x 28 x 28), and a 3 x 32 x 32
    model of the g variant trains and scores with M_ens, keyword arguments only, in a fresh process."""
    for f in ("csi_gen.py", "common.py"):
        shutil.copy(os.path.join(REPO, f), tmp_path / f)
    code = SNIPPET + """
assert np.array_equal(again, scores)
assert scores.shape == scores_ens.shape == (10,) and np.isfinite(scores).all() and np.ptp(scores) > 0, scores
assert [b["ensemble"] for b in model.banks] == [0, 2] and model.config["iters"] == 5
x32 = np.random.rand(12, 3, 32, 32).astype(np.float32)
nets = csi_gen.build_models(input_shape=(3, 32, 32), variant="g", width=4, proj_dim=16, gan_width=4, latent_dim=8)
csi_gen.train(nets=nets, x_normal=x32, iters=2, batch_size=4, log=lambda line: None)
s32 = csi_gen.anomaly_scores(nets=nets, normal=x32, x=x32[:6], ensemble=2, log=lambda line: None)
assert s32.shape == (6,) and np.isfinite(s32).all() and np.ptp(s32) > 0, s32
print("API OK")
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0 and p.stdout == "API OK\n", p.stderr[-3000:]    # the library prints nothing unasked
    assert (tmp_path / "csi_gen.pt").exists()


def test_cli_and_api_give_the_same_scores(tiny_root, monkeypatch, capsys):
    """main() is a thin layer: fit() and score() with the same seed reproduce the CLI's scores exactly (M and M_ens,
    full variant, 6 batches: the generative block runs twice), and so do the step-by-step functions fit() calls."""
    seen, real = [], csi_gen.anomaly_scores
    monkeypatch.setattr(csi_gen, "anomaly_scores", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    r = csi_gen.main(["--dataset", "mnist", "--normal", "0", "--data-root", tiny_root, "--iters", "6",
                      "--device", "cpu", *TINY])
    data = csi_gen.prepare("mnist", "0", tiny_root, seed=0)
    x_normal, x_test, y_test = data["x_train"], data["x_test"], data["y_test"]
    model = csi_gen.fit(x_normal, **TINY_NETS, iters=6, batch_size=8, ensemble=2, seed=0)
    assert len(seen) == 2 and np.array_equal(seen[0], csi_gen.score(model, x_test))
    assert np.array_equal(seen[1], csi_gen.score(model, x_test, ensemble=True))
    csi_gen.set_seed(0)
    nets = csi_gen.build_models(input_shape=x_normal.shape[1:], variant="full", **TINY_NETS)
    csi_gen.train(nets, x_normal, iters=6, batch_size=8, log=QUIET)
    m = real(nets, x_normal, x_test, log=QUIET)
    m_ens = real(nets, x_normal, x_test, ensemble=2, log=QUIET)
    assert np.array_equal(seen[0], m) and np.array_equal(seen[1], m_ens)
    assert r["auroc"] == round(roc_auc_score(y_test, m), 4) and r["auroc_ens"] == round(roc_auc_score(y_test, m_ens), 4)


@pytest.mark.parametrize("shape", [(5, 28, 28), (5, 3, 28, 28), (5, 1, 32, 32), (0, 1, 28, 28)])
def test_wrong_input_shapes_raise_a_value_error_naming_the_expected_shape(shape):
    nets = tiny_nets("csi", input_shape=(1, 28, 28))
    good = np.random.rand(4, 1, 28, 28)
    what = "holds no samples" if shape[0] == 0 else r"must have shape \(N, 1, 28, 28\) for this model, got"
    with pytest.raises(ValueError, match="x_normal " + what):
        csi_gen.train(nets, np.random.rand(*shape), iters=1, batch_size=2, log=QUIET)
    with pytest.raises(ValueError, match="^x " + what):
        csi_gen.anomaly_scores(nets, good, np.random.rand(*shape), log=QUIET)
    with pytest.raises(ValueError, match="^x " + what):
        csi_gen.score(csi_gen.fit(good, variant="csi", **TINY_NETS, iters=1, batch_size=2, ensemble=0),
                      np.random.rand(*shape))


def test_bad_model_inputs_raise_value_errors():
    with pytest.raises(ValueError, match=r"input_shape must be \(1, 28, 28\) or \(3, 32, 32\).*got \(3, 28, 28\)"):
        csi_gen.build_models(input_shape=(3, 28, 28))
    with pytest.raises(ValueError, match="variant must be"):
        csi_gen.build_models(input_shape=(1, 28, 28), variant="ours")
    nets = tiny_nets("csi", input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"scaled to \[0, 1\], got values in \[0, 255\]"):
        csi_gen.train(nets, np.linspace(0, 255, 4 * 784).reshape(4, 1, 28, 28), iters=1, log=QUIET)


# ------------------------------------------------------------------------------------------ command line

def test_full_variant_two_iterations_subprocess(tiny_root, tmp_path):
    js, png = tmp_path / "r.json", tmp_path / "s.png"
    p, r = run_script("csi_gen.py", "--dataset", "mnist", "--normal", "0", "--data-root", tiny_root, "--iters", "2",
                      *TINY, "--json", js, "--save-samples", png)
    assert r["method"] == "csi_gen" and r["variant"] == "full" and 0 <= float(r["auroc"]) <= 1
    assert 0 <= float(r["auroc_ens"]) <= 1 and float(r["train_samples_per_s"]) > 0
    assert read_json(js)["auroc"] == float(r["auroc"]) and png.stat().st_size > 0
    assert "l_rec=" in p.stdout and "l_joint=" in p.stdout and "iter 2/2" in p.stdout
    # Figure 2 grid: inliers, G(E(inliers)), outliers, G(E(outliers)), G(h); 8 columns of 32 px, padding 2
    from PIL import Image
    assert "sample grid (5 rows" in p.stdout and Image.open(png).size == (8 * 34 + 2, 5 * 34 + 2)


@pytest.mark.parametrize("variant", ["csi", "g"])
def test_cifar10_variants_two_iterations(tiny_root, torchvision_md5, variant, capsys):
    r = csi_gen.main(["--dataset", "cifar10", "--normal", "3", "--data-root", tiny_root, "--iters", "2",
                      "--variant", variant, *TINY])
    out = capsys.readouterr().out
    assert r["variant"] == variant and r["dataset"] == "cifar10" and 0 <= r["auroc"] <= 1
    assert ("l_csi_s=" in out) == (variant == "g") and "l_rec=" not in out


def test_cpu_runs_are_repeatable(tiny_root, capsys):
    argv = ["--dataset", "fashion-mnist", "--normal", "1,2", "--data-root", tiny_root, "--iters", "2", *TINY]
    assert csi_gen.main(argv)["auroc"] == csi_gen.main(argv)["auroc"]


BAD_INPUTS = [   # (argv, words the error must contain); every case must stop before any data is loaded
    (["--gen-every", "0"], "--gen-every: must be >= 1"), (["--ensemble", "-1"], "--ensemble: must be >= 0"),
    (["--save-samples", "/no/such/dir/s.png"], "does not exist"),
    (["--variant", "csi", "--save-samples", "x.png"], "trains no generator"),
    (["--lr", "nan"], "finite"), (["--lr", "0"], "--lr: must be > 0"), (["--seed", "-5"], "--seed: must be in"),
    (["--iters", "0"], "--iters: must be >= 1"), (["--batch-size", "1"], "--batch-size: must be >= 2"),
    (["--device", "tpu"], "--device"), (["--json", "/no/such/dir/out.json"], "does not exist"),
    (["--temperature", "0"], "--temperature: must be > 0"), (["--lambda-rec", "-1"], "--lambda-rec: must be >= 0"),
    (["--blur-p", "1.5"], "--blur-p: must be in"), (["--test-crop-scale", "0"], "--test-crop-scale: must be in"),
    (["--test-crop-scale", "2"], "--test-crop-scale: must be in"), (["--width", "0"], "--width: must be >= 1"),
    (["--dataset"], "expected one argument"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS)
def test_bad_input_is_one_error_line_before_any_work(monkeypatch, tmp_path, capsys, argv, message):
    """Issue 18 / issue 17: exit 2, 'error: <what>. <what to do>', no traceback, and nothing loaded or trained."""
    monkeypatch.setattr(csi_gen, "load_images", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(SystemExit) as e:
        csi_gen.main(["--dataset", "mnist", "--data-root", str(tmp_path), *TINY, *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and "Traceback" not in err
    assert err.count(". ") >= 1                           # '<what is wrong>. <what to do>'


@pytest.mark.parametrize("argv, message", [
    (["--normal", "10"], "out of range"), (["--normal", "a,b"], "comma list"), (["--normal", "1,1"], "twice"),
    (["--normal", ",".join(map(str, range(10)))], "every class"), (["--dataset", "imagenet"], "unknown dataset 'imagenet'")])
def test_bad_class_lists_and_choices_exit_2(tiny_root, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        csi_gen.main(["--dataset", "mnist", "--data-root", tiny_root, *TINY, *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error:" in err and message in err and "Traceback" not in err


def test_ctrl_c_exits_130_and_writes_no_result(tiny_root, monkeypatch, tmp_path, capsys):
    js = tmp_path / "r.json"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(csi_gen, "train", interrupted)
    with pytest.raises(SystemExit) as e:
        csi_gen.main(["--dataset", "mnist", "--data-root", tiny_root, *TINY, "--iters", "10", "--json", str(js)])
    err = capsys.readouterr().err
    assert e.value.code == 130 and "interrupted: no result was written" in err and "Traceback" not in err
    assert not js.exists()


def test_missing_data_offline_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        csi_gen.main(["--dataset", "mnist", "--data-root", str(tmp_path), "--iters", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "MNIST/raw" in err


def test_learning_separates_an_easy_synthetic_anomaly_set(tiny_root, capsys):
    """Normal = a bright blob at one place; anomalies = blobs elsewhere. CSI must rank them apart with the
    single-view M after 60 batches (the same run stopped after 2 batches scores 0.7531: the check can fail).
    M_ens is not checked here: its test-time crops move the blob, the one thing that tells these classes apart."""
    r = csi_gen.main(["--dataset", "mnist", "--normal", "0", "--data-root", tiny_root, "--iters", "60",
                      "--variant", "csi", "--width", "8", "--proj-dim", "32", "--batch-size", "16", "--ensemble", "0",
                      ])
    assert r["auroc"] > 0.95


# ------------------------------------------------------------------------------------------ issue 24: your own data

def own_npz(path, channels=1, side=28, n_test=30, **arrays):
    """A user's .npz: uint8 images (N, side, side[, channels]), normal = a bright block top left, anomaly = one
    bottom right; x_train normal only, y_test 1 = anomaly. `arrays` replace or add keys."""
    rng = np.random.default_rng(0)

    def draw(n, anomalous):
        x = rng.integers(0, 40, (n, side, side, channels))
        r = slice(side // 2, side - 2) if anomalous else slice(2, side // 2)
        x[:, r, r] += 200
        return x.astype(np.uint8)[..., 0] if channels == 1 else x.astype(np.uint8)

    y = np.arange(n_test) % 2
    mask = y.reshape(-1, *[1] * (2 if channels == 1 else 3))
    data = dict(x_train=draw(40, False), x_test=np.where(mask, draw(n_test, True), draw(n_test, False)), y_test=y)
    np.savez(path, **{**data, **arrays})
    return str(path)


def own_folder(path, rgb=True, side=(40, 50), files=None):
    """A user's MVTec AD folder of PNGs: train/good, test/good, test/crack; `files` add {relative path: bytes}."""
    from PIL import Image
    rng = np.random.default_rng(1)
    h, w = side
    for sub, n, hot in (("train/good", 12, False), ("test/good", 5, False), ("test/crack", 5, True)):
        os.makedirs(path / sub)
        for i in range(n):
            a = rng.integers(0, 40, (h, w, 3) if rgb else (h, w))
            a[h // 2:h - 2, w // 2:w - 2] += 200 if hot else 0
            Image.fromarray(a.astype(np.uint8)).save(path / sub / f"{i:02d}.png")
    for rel, blob in (files or {}).items():
        (path / rel).write_bytes(blob)
    return str(path)


def run_main(argv, capsys):
    """main(argv) -> (exit status, stdout, stderr, RESULT dict or None)."""
    try:
        r, code = csi_gen.main(argv), 0
    except SystemExit as e:
        r, code = None, e.code
    out, err = capsys.readouterr()
    return code, out, err, r


@pytest.fixture
def no_training(monkeypatch):
    """Booby-trap the optimiser: a run that takes a step fails (loading a model, or an input refused in time)."""
    def step(*a, **k):
        raise AssertionError("an optimiser step ran")
    monkeypatch.setattr(torch.optim.Adam, "step", step)


def same_files(a, b):
    return sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)


@pytest.mark.parametrize("kind,shape", [("npz-grey-28", "1x28x28"), ("npz-rgb-36", "3x32x32"),
                                        ("folder-rgb", "3x32x32"), ("folder-grey-28", "1x28x28"),
                                        ("folder-grey-40x50", "3x32x32")])
def test_own_images_end_to_end_score_file_and_checkpoint_round_trip(tmp_path, capsys, monkeypatch, kind, shape):
    """Each kind of own images trains and scores through --dataset PATH (1x28x28 grey stays as MNIST's, anything
    else becomes 3x32x32), the score file gives the RESULT's AUROCs (scores = M, scores_ens = M_ens), and
    --load-model reproduces every array without training or encoding the normal images."""
    if kind.startswith("npz"):
        data = own_npz(tmp_path / "mine.npz", channels=1 if "grey" in kind else 3, side=28 if "28" in kind else 36)
    else:
        data = own_folder(tmp_path / "mine", rgb="rgb" in kind, side=(28, 28) if "28" in kind else (40, 50))
    a, b, ck = (str(tmp_path / f) for f in ("a.npz", "b.npz", "m.pt"))
    code, out, err, r = run_main(["--dataset", data, "--iters", "2", *TINY, "--save-scores", a, "--save-model", ck],
                                 capsys)
    assert code == 0, err
    assert r["dataset"] == os.path.basename(data) and r["normal"] == "-" and r["width"] == 4
    assert f"read as {shape}" in out and "the paper's values where not given" in out
    assert "scoring: 3 passes over the" in out and "normal set's features: 3 passes over its" in out
    fa = np.load(a)
    assert r["auroc"] == round(roc_auc_score(fa["labels"], fa["scores"]), 4)
    assert r["auroc_ens"] == round(roc_auc_score(fa["labels"], fa["scores_ens"]), 4)
    assert np.array_equal(fa["index"], np.arange(len(fa["labels"]))) and 0 < fa["labels"].mean() < 1
    monkeypatch.setattr(csi_gen, "normal_features", lambda *a, **k: pytest.fail("the normal set was encoded"))
    monkeypatch.setattr(torch.optim.Adam, "step", None)                            # loading trains nothing
    code, out, err, r2 = run_main(["--dataset", data, "--load-model", ck, "--save-scores", b], capsys)
    assert code == 0, err
    assert same_files(fa, np.load(b)) and "not trained here" in out and "the checkpoint's" in out
    assert {k: r2[k] for k in ("auroc", "auroc_ens", "iters", "width")} == {k: r[k] for k in ("auroc", "auroc_ens",
                                                                                               "iters", "width")}
    assert "train_samples_per_s" not in r2


def test_builtin_round_trip_json_config_and_provenance(tiny_root, tmp_path, capsys, monkeypatch):
    """MNIST (tiny): the JSON has every resolved setting and the provenance, the RESULT keeps its keys, the score
    file holds the built-in test split's indices, and the checkpoint reproduces M and M_ens exactly; the
    checkpoint keeps the normal images' features (4 x proj_dim per image and score), not the images."""
    base = ["--dataset", "mnist", "--normal", "2", "--data-root", tiny_root]
    code, _, err, r = run_main(base + TINY + ["--iters", "3", "--save-scores", str(tmp_path / "a.npz"), "--json",
                                              str(tmp_path / "r.json"), "--save-model", str(tmp_path / "m.pt")],
                               capsys)
    assert code == 0, err
    a = np.load(tmp_path / "a.npz")
    from common import load_images
    y_te = load_images("mnist", tiny_root)[3].numpy()
    assert np.array_equal(a["labels"], (y_te[a["index"]] != 2).astype(int)) and len(a["index"]) == len(y_te)
    js = read_json(tmp_path / "r.json")
    assert {k: js[k] for k in r} == r and "config" not in r and "provenance" not in r
    assert set(csi_gen.TRAINING) <= set(js["config"]) and js["config"]["input_shape"] == [1, 28, 28]
    assert js["config"]["lr"] == 2e-4 and js["config"]["proj_dim"] == 16 and js["config"]["temperature"] == 0.5
    prov = js["provenance"]
    assert "--save-model" in prov["command"] and set(prov["versions"]) == {"torch", "torchvision", "numpy",
                                                                           "scikit-learn"}
    assert "git_commit" in prov and "git_dirty" in prov
    ck = torch.load(tmp_path / "m.pt", weights_only=True)
    banks = ck["preprocess"]["normal_features"]
    n_normal = int((load_images("mnist", tiny_root)[1] == 2).sum())
    assert [b["ensemble"] for b in banks] == [0, 2] and all(b["features"].shape == (4, n_normal, 16) for b in banks)
    assert set(ck["state"]) == set(csi_gen.build_models((1, 28, 28), **TINY_NETS).state_dict())
    monkeypatch.setattr(torch.optim.Adam, "step", None)
    code, out, err, r2 = run_main(base + ["--load-model", str(tmp_path / "m.pt"), "--save-scores",
                                          str(tmp_path / "b.npz")], capsys)
    assert code == 0, err
    assert same_files(a, np.load(tmp_path / "b.npz")) and r2["auroc_ens"] == r["auroc_ens"]


def test_api_save_load_and_m_ens_draws_from_their_own_seed(tmp_path):
    """fit() -> save() -> load() keeps weights, sizes, config and features: the same M and M_ens; M_ens is a function
    of (model, images, seed) and leaves the global random state alone; features made with other M_ens settings are
    refused, and so is score() on features the model does not hold."""
    torch.manual_seed(0)
    x, x_new = torch.rand(8, 3, 32, 32), torch.rand(5, 3, 32, 32)
    model = csi_gen.fit(x, variant="g", **TINY_NETS, iters=2, batch_size=4, ensemble=2)
    assert [b["ensemble"] for b in model.banks] == [0, 2] and model.config["seed"] == 0
    state = torch.get_rng_state()
    s = csi_gen.score(model, x_new, ensemble=True)
    assert torch.equal(torch.get_rng_state(), state)                                # the global stream is untouched
    assert np.array_equal(s, csi_gen.anomaly_scores(model, model.banks[1], x_new, ensemble=2))
    assert np.array_equal(s, csi_gen.anomaly_scores(model, x, x_new, ensemble=2))   # images = their features
    assert not np.array_equal(s, csi_gen.score(model, x_new, ensemble=True, seed=1))
    csi_gen.save(model, str(tmp_path / "m.pt"), config={"note": "mine"})
    loaded = csi_gen.load(str(tmp_path / "m.pt"))
    config = loaded.config
    assert config["note"] == "mine" and config["variant"] == "g" and config["proj_dim"] == 16 and config["iters"] == 2
    assert sorted(loaded) == ["D", "F", "G"]
    assert np.array_equal(csi_gen.score(loaded, x_new, ensemble=True), s)
    assert np.array_equal(csi_gen.score(loaded, x_new), csi_gen.score(model, x_new))
    with pytest.raises(ValueError, match=r"features made with ensemble=2, blur_p=0, test_crop_scale=0.54, but "
                                         r"ensemble=0, blur_p=0, test_crop_scale=0.54 was asked; score with ensemble=2"):
        csi_gen.anomaly_scores(loaded, loaded.banks[1], x_new)
    with pytest.raises(ValueError, match=r"test_crop_scale=0.54, but ensemble=2, blur_p=0, test_crop_scale=0.3"):
        csi_gen.anomaly_scores(loaded, loaded.banks[1], x_new, ensemble=2, test_crop_scale=0.3)
    loaded.banks = loaded.banks[:1]
    with pytest.raises(ValueError, match="holds no normal-set features for M_ens"):
        csi_gen.score(loaded, x_new, ensemble=True)


def test_cli_scores_a_model_saved_through_the_api(tmp_path, capsys, no_training):
    """A checkpoint of save() without training settings: --load-model scores it as anomaly_scores() does; one
    without M's features (ensemble=0) is refused."""
    data, ck = own_npz(tmp_path / "g.npz"), str(tmp_path / "m.pt")
    with np.load(data) as f:
        x_train, x_test = f["x_train"][:, None] / 255.0, f["x_test"][:, None] / 255.0
    nets = tiny_nets("csi", (1, 28, 28))
    nets.banks = [csi_gen.normal_features(nets, x_train, log=QUIET)]     # step by step: the features save() keeps
    csi_gen.save(nets, ck)
    code, out, err, r = run_main(["--dataset", data, "--load-model", ck, "--save-scores", str(tmp_path / "a.npz")],
                                 capsys)
    assert code == 0, err
    assert np.array_equal(np.load(tmp_path / "a.npz")["scores"], csi_gen.anomaly_scores(nets, nets.banks[0], x_test))
    assert "auroc_ens" not in r and "iters" not in r and r["ensemble"] == 0 and "lr=None" in out
    assert "test_crop_scale" not in r                   # M_ens's crop is reported only where M_ens is computed
    nets.banks = [csi_gen.normal_features(nets, x_train, ensemble=2, log=QUIET)]
    csi_gen.save(nets, ck)
    code, _, err, _ = run_main(["--dataset", data, "--load-model", ck], capsys)
    assert code == 2 and "holds no features for M (normal_features() with ensemble=0)" in err


def test_a_default_batch_larger_than_the_normal_set_is_fitted_with_a_note(tmp_path, capsys):
    """Issue 34 (common.fit_batch): the default --batch-size 32 on 12 normal images trains with batch 12 and says so;
    the same value given explicitly is an error before training."""
    argv = ["--dataset", own_folder(tmp_path / "f"), "--iters", "1", "--variant", "csi", *TINY[:10], "--ensemble", "0"]
    code, out, err, r = run_main(argv, capsys)
    assert code == 0 and r["batch_size"] == 12, err
    assert "note: --batch-size 12: the default 32 exceeds the 12 normal training images" in out
    code, _, err, _ = run_main(argv + ["--batch-size", "32"], capsys)
    assert code == 2 and "--batch-size 32 exceeds the 12 normal training images. Pass --batch-size 12 or less" in err


@pytest.mark.parametrize("case,message", [
    ("other-script", "is a checkpoint of toll.py, not of csi_gen.py"),
    ("not-a-checkpoint", "cannot read"),
    ("other-shape", "holds a model for inputs of 1x28x28, but"),
    ("training-flags", "--width, --lr, --ensemble set the model or its training, which --load-model reads"),
    ("samples-without-generator", "--save-samples needs a generator"),
])
def test_load_model_refuses_what_it_cannot_use(tmp_path, capsys, no_training, case, message):
    ck = tmp_path / "m.pt"
    if case == "other-script":
        csi_gen.save_checkpoint(str(ck), "toll", {}, {}, {})
    elif case == "not-a-checkpoint":
        ck.write_bytes(b"not a torch file")
    else:
        nets = tiny_nets("csi", (1, 28, 28))
        nets.banks = [csi_gen.normal_features(nets, np.random.rand(4, 1, 28, 28))]
        csi_gen.save(nets, str(ck))
    data = own_folder(tmp_path / "rgb") if case == "other-shape" else own_npz(tmp_path / "g.npz")
    extra = {"training-flags": ["--width", "8", "--lr", "0.01", "--ensemble", "0"],
             "samples-without-generator": ["--save-samples", str(tmp_path / "s.png")]}.get(case, [])
    code, _, err, _ = run_main(["--dataset", data, "--load-model", str(ck), *extra], capsys)
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def bad_input(tmp_path, case):
    """(argv, words the error must contain) for one bad input, with the files it needs generated in tmp_path."""
    npz = lambda **kw: own_npz(tmp_path / "d.npz", **kw)
    if case == "missing-file":
        return ["--dataset", str(tmp_path / "nothing.npz")], "nothing.npz"
    if case == "missing-folder":
        return ["--dataset", str(tmp_path / "nowhere")], "does not exist"
    if case == "unreadable-file":
        (tmp_path / "d.npz").write_bytes(b"garbage")
        return ["--dataset", str(tmp_path / "d.npz")], "cannot read"
    if case == "npz-without-keys":
        np.savez(tmp_path / "d.npz", images=np.zeros((3, 8, 8)))
        return ["--dataset", str(tmp_path / "d.npz")], "it holds images"
    if case == "lengths-differ":
        return ["--dataset", npz(y_test=np.zeros(29))], "has 30 samples but y_test has 29"
    if case == "labels-not-0-1":
        return ["--dataset", npz(y_test=np.arange(30) % 3)], "0 (normal) and 1 (anomaly) only"
    if case == "nan-features":
        return ["--dataset", npz(x_train=np.full((5, 28, 28), np.nan))], "NaN or inf"
    if case == "only-normal-test":
        return ["--dataset", npz(y_test=np.zeros(30, dtype=int))], "holds no anomalies"
    if case == "tabular-npz":
        return ["--dataset", npz(x_train=np.zeros((5, 20)), x_test=np.zeros((30, 20)))], \
            "holds (5, 20) feature rows. Use toll.py or cance.py"
    if case == "csv":
        (tmp_path / "t.csv").write_text("a,label\n1,0\n2,1\n")
        return ["--dataset", str(tmp_path / "t.csv")], "'t.csv' holds a table of feature rows. Use toll.py or cance.py"
    if case == "other-file":
        (tmp_path / "t.txt").write_text("x")
        return ["--dataset", str(tmp_path / "t.txt")], "t.txt' is a file csi_gen.py cannot read"
    if case == "folder-without-train-good":
        os.makedirs(tmp_path / "f" / "test" / "crack")
        return ["--dataset", str(tmp_path / "f")], "no images in train/good"
    if case == "folder-without-anomalies":
        d = own_folder(tmp_path / "f")
        shutil.rmtree(os.path.join(d, "test", "crack"))
        return ["--dataset", d], "no anomaly folder"
    if case == "folder-non-image":
        return ["--dataset", own_folder(tmp_path / "f", files={"train/good/notes.txt": b"x"})], "notes.txt"
    if case == "folder-broken-image":
        return ["--dataset", own_folder(tmp_path / "f", files={"test/crack/x.png": b"no png"})], "cannot be decoded"
    if case == "normal-with-own-data":
        return ["--dataset", npz(), "--normal", "3"], "Drop --normal"
    raise KeyError(case)


BAD_OWN = ["missing-file", "missing-folder", "unreadable-file", "npz-without-keys", "lengths-differ", "labels-not-0-1",
           "nan-features", "only-normal-test", "tabular-npz", "csv", "other-file", "folder-without-train-good",
           "folder-without-anomalies", "folder-non-image", "folder-broken-image", "normal-with-own-data"]


@pytest.mark.parametrize("case", BAD_OWN)
def test_bad_own_data_is_one_error_naming_the_file_exit_2_before_training(tmp_path, capsys, no_training, case):
    argv, words = bad_input(tmp_path, case)
    code, out, err, _ = run_main(argv + ["--iters", "2", *TINY], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in err, err
    assert "Traceback" not in err and "RESULT" not in out
    if case not in ("normal-with-own-data", "tabular-npz", "csv"):    # the file is named (rows: by its name)
        assert str(tmp_path) in err


@pytest.mark.parametrize("case", ["constant-model", "score-overflow", "training-divergence"])
def test_a_degenerate_run_exits_3_and_writes_nothing(tiny_root, tmp_path, capsys, monkeypatch, case):
    """One score for every image (F's projection zeroed after training), NaN/inf scores (--lr 1e30, F alone: the
    one step leaves L_CSI finite and F's weights huge, so the scores overflow) and a diverged training (--lr 1e30
    with a generator: a loss of the generative block is NaN at iteration 1) stop the run with one error and exit
    3; nothing is written."""
    outs = {f: str(tmp_path / f) for f in ("r.json", "s.npz", "m.pt", "g.png")}
    flags = ["--json", outs["r.json"], "--save-scores", outs["s.npz"], "--save-model", outs["m.pt"], "--save-samples",
             outs["g.png"]]
    argv = ["--dataset", "mnist", "--normal", "0", "--data-root", tiny_root, *TINY]
    if case == "constant-model":
        real = csi_gen.train

        def zeroed(nets, *a, **k):
            real(nets, *a, **k)
            nn.init.zeros_(nets["F"].projection[-1].weight)
            nn.init.zeros_(nets["F"].projection[-1].bias)
            return nets

        monkeypatch.setattr(csi_gen, "train", zeroed)
        argv, words = argv + ["--iters", "2"], "every M (Eq. 11) score of the test set is"
    elif case == "score-overflow":                         # --variant csi: no generator, so no sample grid
        argv, words = argv + ["--variant", "csi", "--iters", "1", "--lr", "1e30"], "the M (Eq. 11) scores of the test"
        flags = flags[:-2]
    else:
        argv, words = argv + ["--iters", "1", "--lr", "1e30"], "training diverged"
    code, out, err, _ = run_main(argv + flags, capsys)
    assert code == 3 and err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1, err
    assert "RESULT" not in out and not any(os.path.exists(p) for p in outs.values())


def test_help_for_own_data_names_kinds_values_and_outputs(capsys):
    out = help_text(capsys, ["--dataset", "mine.npz"])
    assert "(default: None)" not in out and "--dataset NAME|PATH" in out and "one set for every dataset" in out
    assert "1x28x28 grey images are padded as MNIST's" in out and "default 0 for the built-in sets" in out
    assert "scores_ens (M_ens, auroc_ens" in out and "--load-model FILE.pt" in out
