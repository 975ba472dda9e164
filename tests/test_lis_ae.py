"""lis_ae.py: Eq. (1) by hand, phase 2 touching only the latent layer, the Sec. 4.2 linear example, the
Sec. 5 negative-set protocols end to end on generated data (every --negative mode), the batched
augmentation, bad input, a learning test where LIS-AE beats its own phase-1 AE, and the Python API (a fresh
folder holding only lis_ae.py and common.py; the same scores as the command line; shape errors).

Guards of issue 14 (a saturated tanh latent made phase 2 a no-op, so LIS-AE = AE): after a short phase 1
with the script's defaults the latent codes vary across inputs and are not saturated (a); phase 2 moves Z,
raises the negatives' error while the positives' stays, and LIS-AE's scores differ from the AE's (b); phase 2
leaves E and D bit-identical and Z changed (c). test_guards_catch_the_saturating_configuration runs the same
checks on the old configuration (--latent-norm none) and asserts that they fail there; the log shows the
saturation (`sat=`, latent_saturated, a WARNING).

Issue 24 (your own data, keep what a run produces): each input kind (grey .npz, RGB image folder, no negatives) runs
end to end on generated files; the score file gives the RESULT's AUROCs; --load-model (optimiser booby-trapped)
reproduces every saved array exactly; the JSON holds config and provenance; every bad input is one error naming the
file, exit 2, before training; all-equal and NaN scores exit 3 and write nothing."""
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score

import lis_ae
from conftest import REPO, read_json, readme_block, run_script

TINY = ["--iters", "2", "--batch-size", "8", "--width", "4", "--latent", "4"]
quiet = lambda *a, **k: None


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """The machine's cores are shared: small models run far faster on one thread than on contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the subprocess runs
    yield
    torch.set_num_threads(n)


def mlp_lis_ae(d_in, hidden, latent, act=nn.Tanh()):
    """A small fully connected LIS-AE with the same E / Z / D split as the image model."""
    encoder = nn.Sequential(nn.Linear(d_in, hidden), nn.LeakyReLU(0.2))
    z = nn.Linear(hidden, latent)                                   # created in E, Z, D order (the seeds' draws)
    decoder = nn.Sequential(nn.Linear(latent, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, d_in))
    return lis_ae.LatentInsensitiveAE((d_in,), encoder, z, decoder, act)


# ------------------------------------------------------------------------------------------ equations

def test_eq1_latent_shaping_loss_matches_hand_computation():
    x_pos = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    x_hat_pos = torch.tensor([[0.0, 0.0], [1.0, 1.0]])           # errors 5 and 0 -> mean 2.5
    x_neg = torch.tensor([[0.0, 0.0], [6.0, 8.0]])
    x_hat_neg = torch.tensor([[0.0, 1.0], [0.0, 0.0]])           # errors 1 and 10 -> mean 5.5
    loss, rec_pos, rec_neg = lis_ae.latent_shaping_loss(x_hat_pos, x_pos, x_hat_neg, x_neg, beta=2.0, gamma=4.0)
    # 2.5 + 2 * (|4 - 1| + |4 - 10|) / 2 = 2.5 + 2 * 4.5 = 11.5: |gamma - error| per sample, then the mean
    assert loss.item() == 11.5 and rec_pos.item() == 2.5 and rec_neg.item() == 5.5
    loss0, _, _ = lis_ae.latent_shaping_loss(x_hat_pos, x_pos, x_hat_neg, x_neg, beta=0.0, gamma=4.0)
    assert loss0.item() == 2.5                                     # beta = 0: the phase-1 objective


def test_anomaly_score_is_the_euclidean_reconstruction_error_not_squared():
    x = torch.zeros(2, 1, 2, 2)
    x_hat = torch.tensor([[[[3.0, 4.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    assert lis_ae.reconstruction_error(x_hat, x).tolist() == [5.0, 2.0]


def test_linsep_bce_reads_the_latent_preactivation_and_matches_hand_computation():
    clf = nn.Linear(2, 1)
    with torch.no_grad():
        clf.weight.copy_(torch.tensor([[1.0, -1.0]]))
        clf.bias.zero_()
    u_pos, u_neg = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])   # logits 2 (label 1), -1 (label 0)
    expected = (torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log1p(torch.exp(torch.tensor(-1.0)))) / 2
    assert torch.isclose(lis_ae.linsep_loss(clf, u_pos, u_neg), expected)
    model = lis_ae.build_model((1, 28, 28), latent=3, width=4, latent_norm="none")
    x = torch.rand(2, 1, 28, 28)
    _, u = model(x)
    assert torch.equal(u, model.latent(model.encoder(x)))         # pre-activation of Z, before tanh


@pytest.mark.parametrize("channels,side,latent", [(1, 28, 32), (3, 32, 128)])
def test_architecture_shapes_and_latent_in_minus1_1(channels, side, latent):
    model = lis_ae.build_model((channels, side, side), latent=latent, width=8)
    x = torch.rand(3, channels, side, side)
    x_hat, u = model(x)
    assert x_hat.shape == x.shape and u.shape == (3, latent)
    assert 0 <= x_hat.min() and x_hat.max() <= 1                  # sigmoid output, inputs in [0, 1]
    assert isinstance(model.act, nn.Tanh) and isinstance(model.latent, nn.Linear)


def test_alg1_phase2_changes_only_the_latent_layer():
    torch.manual_seed(0)
    model = lis_ae.build_model((1, 28, 28), latent=4, width=4, latent_norm="none")   # phase 2 alone, untrained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pos, neg = torch.rand(32, 1, 28, 28) * 0.3, torch.rand(32, 1, 28, 28)
    lis_ae.train_phase2(model, pos, neg, iters=3, batch_size=8, lr=1e-2, beta=1.0, gamma=20.0, log=quiet)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"latent.weight", "latent.bias"}
    assert all(p.requires_grad for p in model.parameters())       # unfrozen again for any later use


def test_saturated_tanh_blocks_phase2_and_linear_latent_does_not():
    """The documented failure mode of --latent-act tanh: once Z's pre-activations are beyond |u| ~ 9, tanh'
    is exactly 0 in float32 and phase 2 cannot move Z; with --latent-act linear it can."""
    pos, neg = torch.rand(32, 1, 28, 28) * 0.3, torch.rand(32, 1, 28, 28)
    for act, moves in (("tanh", False), ("linear", True)):
        torch.manual_seed(0)
        model = lis_ae.build_model((1, 28, 28), latent=4, width=4, latent_act=act, latent_norm="none")
        assert isinstance(model.act, nn.Tanh if act == "tanh" else nn.Identity)
        with torch.no_grad():                                        # saturate: large pre-activations
            model.latent.bias.copy_(torch.tensor([30.0, -30.0, 30.0, -30.0]))
        before = model.latent.weight.clone()
        lis_ae.train_phase2(model, pos, neg, iters=3, batch_size=8, lr=1e-2, beta=1.0, gamma=20.0, log=quiet)
        assert (not torch.equal(before, model.latent.weight)) == moves, act


# ------------------------------------------------------------------------------------------ issue 14 guards

GUARD_STEPS = 30      # phase 1 and phase 2 each; the saturating configuration is fully saturated by then


def shape_latent(tiny_root, **model_kw):
    """The script's two phases with its default model (width 32, latent 32, Adam 1e-3) and the given options, on
    the tiny MNIST: positives = classes 0-4, negatives = classes 5-9. Returns what the guards inspect."""
    from common import load_images
    x, y, _, _ = load_images("mnist", tiny_root)
    pos, neg = x[y < 5], x[y >= 5]
    torch.manual_seed(0)
    model = lis_ae.build_model((1, 28, 28), latent=32, width=32, **model_kw)
    lis_ae.train_phase1(model, pos, iters=GUARD_STEPS, batch_size=32, lr=1e-3, log=quiet)
    z = lis_ae.latent_codes(model, pos)                             # (200, 32) codes of the positives
    before = {k: v.clone() for k, v in model.state_dict().items()}
    err = lambda v: float(lis_ae.anomaly_scores(model, v).mean())
    pos0, neg0, ae_scores = err(pos), err(neg), lis_ae.anomaly_scores(model, x)
    lis_ae.train_phase2(model, pos, neg, iters=GUARD_STEPS, batch_size=32, lr=1e-3, beta=1.0, gamma=2 * neg0,
                        log=quiet)
    return dict(z=z, before=before, after=model.state_dict(), pos=(pos0, err(pos)), neg=(neg0, err(neg)),
                scores=(ae_scores, lis_ae.anomaly_scores(model, x)))


@pytest.fixture(scope="module")
def shaped(tiny_root):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield shape_latent(tiny_root)                                   # the script's defaults
    torch.set_num_threads(n)


def codes_vary(z):
    """Guard (a): per-unit std of z across inputs above 0.1 for every unit; under 10% of |z| > 0.99."""
    return float(z.std(0).min()) > 0.1 and lis_ae.saturated_fraction(z) < 0.1


def shaping_works(r):
    """Guard (b): Z moved, the negatives' mean error rose by >= 5%, the positives' changed by < 5%."""
    (p0, p1), (n0, n1) = r["pos"], r["neg"]
    moved = not torch.equal(r["before"]["latent.weight"], r["after"]["latent.weight"])
    return moved and n1 > 1.05 * n0 and abs(p1 - p0) < 0.05 * p0


def only_z_changed(r):
    """Guard (c), Alg. 1 FreezeEncoder()/FreezeDecoder(): E and D bit-identical, Z's weight changed."""
    same = all(torch.equal(r["before"][k], r["after"][k]) for k in r["after"] if k.startswith(("encoder.", "decoder.")))
    dz = float((r["after"]["latent.weight"] - r["before"]["latent.weight"]).abs().max())
    return same and dz > 1e-4


def test_guard_a_latent_codes_vary_across_inputs_after_a_short_phase1(shaped):
    assert float(shaped["z"].std(0).min()) > 0.1, "some latent unit is constant across inputs"
    assert lis_ae.saturated_fraction(shaped["z"]) < 0.1, "the tanh latent is saturated"
    assert codes_vary(shaped["z"])


def test_guard_b_phase2_raises_the_negatives_error_and_keeps_the_positives(shaped):
    (p0, p1), (n0, n1) = shaped["pos"], shaped["neg"]
    assert not torch.equal(shaped["before"]["latent.weight"], shaped["after"]["latent.weight"]), \
        "phase 2 did not change Z (zero gradient through a saturated tanh?)"
    assert n1 > 1.05 * n0, (n0, n1)                                 # Eq. (1) pulls the negatives' error up
    assert abs(p1 - p0) < 0.05 * p0, (p0, p1)                       # and keeps the positives'
    assert shaping_works(shaped)
    ae, lis = shaped["scores"]                                      # LIS-AE is not its phase-1 AE
    assert np.abs(lis - ae).max() > 1e-2 * ae.mean(), "LIS-AE scores = AE scores: phase 2 was a no-op"


def test_guard_c_phase2_leaves_encoder_and_decoder_bit_identical(shaped):
    assert {k.split(".")[0] for k in shaped["after"]} == {"encoder", "latent", "decoder"}   # norm folded into Z
    for k in shaped["after"]:
        if k.startswith(("encoder.", "decoder.")):
            assert torch.equal(shaped["before"][k], shaped["after"][k]), k
    assert only_z_changed(shaped), "Z did not change in phase 2: only frozen weights, nothing trained"


def test_guards_catch_the_saturating_configuration(tiny_root):
    """The old configuration (--latent-norm none: no standardisation of Z's pre-activation) saturates the tanh:
    each of the three guards above must reject it, otherwise they could not catch the bug coming back."""
    old = shape_latent(tiny_root, latent_norm="none")
    assert lis_ae.saturated_fraction(old["z"]) > 0.9
    assert not codes_vary(old["z"]) and not shaping_works(old) and not only_z_changed(old)
    ae, lis = old["scores"]
    assert np.abs(lis - ae).max() <= 1e-2 * ae.mean()              # LIS-AE = its AE: guard (b)'s score check fails


def test_the_log_shows_a_saturated_latent(tiny_root, capsys):
    """The saturated tanh stays visible in a run's output: `sat=` per progress line, latent_saturated in RESULT,
    and a WARNING after phase 1, for the saturating configuration; no warning with the default."""
    flags = ["--dataset", "mnist", "--normal", "2", "--negative", "none", "--data-root", tiny_root, "--iters", "30",
             "--batch-size", "32", "--width", "8", "--latent", "32"]
    for norm, saturated in (("none", True), ("batch", False)):
        r = lis_ae.main(flags + ["--latent-norm", norm])
        out = capsys.readouterr().out
        assert (r["latent_saturated"] > 0.9) == saturated and ("WARNING" in out) == saturated, (norm, r)
        assert "phase1 iter 30/30" in out and " sat=" in out and f"latent_saturated={r['latent_saturated']}" in out


def test_fold_latent_norm_keeps_the_outputs_and_leaves_a_plain_linear_tanh_layer():
    torch.manual_seed(0)
    model = lis_ae.build_model((1, 28, 28), latent=3, width=4)
    x = torch.rand(16, 1, 28, 28)
    model.train()
    model(x)                                                        # running statistics move away from (0, 1)
    model(x * 0.5)
    model.eval()
    x_hat, u = model(x)
    lis_ae.fold_latent_norm(model)
    assert isinstance(model.norm, nn.Identity) and isinstance(model.latent, nn.Linear)
    x_hat2, u2 = model(x)
    assert torch.allclose(u, u2, atol=1e-5) and torch.allclose(x_hat, x_hat2, atol=1e-6)
    assert torch.allclose(u2, model.latent(model.encoder(x)))       # Z = linear + tanh, nothing else


def test_linsep_phase1_trains_a_classifier_on_positives_vs_negatives(monkeypatch):
    seen, real = [], lis_ae.linsep_loss

    def spy(classifier, u_pos, u_neg):
        if not seen:
            seen.append((classifier, classifier.weight.detach().clone()))
        assert u_pos.shape == u_neg.shape == (8, 4)                 # Z's pre-activation, D+ and D- batches
        return real(classifier, u_pos, u_neg)

    monkeypatch.setattr(lis_ae, "linsep_loss", spy)
    torch.manual_seed(0)
    model = lis_ae.build_model((1, 28, 28), latent=4, width=4)
    lis_ae.train_phase1(model, np.random.rand(16, 1, 28, 28), np.random.rand(16, 1, 28, 28), linsep=True, iters=2,
                        batch_size=8, lr=1e-2, log=quiet)
    clf, w0 = seen[0]
    assert not torch.equal(w0, clf.weight)                          # the classifier was trained with the AE
    assert isinstance(model.norm, nn.Identity)                      # and dropped: the model is E, Z, D only


def test_sec42_linear_example_negatives_along_z_raise_only_the_z_error():
    """Sec. 4.2: x ~ N(0, diag(1, 0.2, 0.01)), a linear AE with a 1-d latent (r = 1), negatives only along z.
    After phase 2 a point off the plane along z is reconstructed far worse, one along y barely changes, and
    the positives keep their error."""
    torch.manual_seed(0)
    x = torch.randn(1000, 3) * torch.tensor([1.0, 0.2, 0.01]).sqrt()
    model = mlp_lis_ae(3, 3, 1, act=nn.Identity())
    model.encoder, model.decoder = nn.Linear(3, 3), nn.Linear(1, 3)   # purely linear E, Z, D
    lis_ae.train_phase1(model, x, iters=300, batch_size=256, lr=3e-2, log=quiet)
    neg = torch.zeros(1000, 3)
    neg[:, 2] = torch.randn(1000)
    err = lambda v: lis_ae.reconstruction_error(model(v)[0], v).detach()
    probe = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])      # unit offsets along y and along z
    (y0, z0), pos0 = err(probe).tolist(), err(x).mean().item()
    assert abs(y0 - 1) < 0.1 and abs(z0 - 1) < 0.1                 # phase 1 keeps only the x direction (r = 1)
    lis_ae.train_phase2(model, x, neg, iters=300, batch_size=256, lr=3e-2, beta=1.0, gamma=3 * err(neg).mean().item(),
                        log=quiet)
    (y1, z1), pos1 = err(probe).tolist(), err(x).mean().item()
    assert z1 > 1.5 * z0                                          # the negative direction is no longer passed
    assert abs(y1 - y0) < 0.1 * y0                                # the positives' own directions are unchanged
    assert pos1 < 1.25 * pos0                                     # positives keep (nearly) their error


# ------------------------------------------------------------------------------------------ Sec. 5 protocols

def test_sec5_negative_classes_and_test_classes():
    assert lis_ae.negative_classes("next-class", [3], 10) == ([4], [0, 1, 2, 3, 5, 6, 7, 8, 9])
    assert lis_ae.negative_classes("next-class", [9], 10)[0] == [0]          # 9 wraps to 0
    assert lis_ae.negative_classes("next-class", [0, 9], 10)[0] == [1]       # skips normal classes
    assert lis_ae.negative_classes("split", [2], 10) == ([5, 6, 7, 8, 9], [0, 1, 2, 3, 4])
    assert lis_ae.negative_classes("split", [7, 8], 10) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    # supervised upper bound (Table 2's Sup. rows; Table 4's "Sup. (0-4)", line 316): D- = the test anomalies,
    # which are the normal half's other classes; tested on the normal half, like split
    assert lis_ae.negative_classes("supervised", [1], 10) == ([0, 2, 3, 4], [0, 1, 2, 3, 4])
    assert lis_ae.negative_classes("supervised", [6, 7], 10) == ([5, 8, 9], [5, 6, 7, 8, 9])
    for mode in ("none", "omniglot", "fashion-mnist"):
        assert lis_ae.negative_classes(mode, [1], 10) == ([], list(range(10)))
        assert lis_ae.negative_classes(mode, [1], 10, test_half=True) == ([], [0, 1, 2, 3, 4])   # Table 3
    assert lis_ae.negative_classes("next-class", [3], 10, test_half=True) == ([4], [0, 1, 2, 3])
    for mode in ("split", "supervised"):
        with pytest.raises(lis_ae.DataError, match="one half"):
            lis_ae.negative_classes(mode, [1, 6], 10)
    with pytest.raises(lis_ae.DataError, match="one half"):
        lis_ae.negative_classes("omniglot", [4, 5], 10, test_half=True)


@pytest.mark.parametrize("mode,normal", [("next-class", [0, 1, 2, 3, 4, 5, 6, 7, 9]),   # only class 8 left: it is D-
                                         ("split", [0, 1, 2, 3, 4]), ("supervised", [5, 6, 7, 8, 9]),
                                         ("next-class", [0, 1, 2, 3])])
def test_a_protocol_that_leaves_no_anomaly_class_is_an_error(mode, normal):
    test_half = normal == [0, 1, 2, 3]                              # D- = class 4, the half's last other class
    with pytest.raises(lis_ae.DataError, match="leaves no anomaly class"):
        lis_ae.negative_classes(mode, normal, 10, test_half)


def test_augment_negatives_is_batched_per_sample_and_keeps_range():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 4:10, 4:20] = 1.0                                      # one asymmetric stroke, identical in every sample
    out = lis_ae.augment_negatives(x)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1 + 1e-6
    distinct = {tuple(o.flatten().round(decimals=4).tolist()) for o in out}
    assert len(distinct) > 10                                     # different random parameters per sample
    assert torch.allclose(out.sum((1, 2, 3)).mean(), x.sum((1, 2, 3)).mean(), rtol=0.1)   # no content lost


@pytest.mark.parametrize("negative,extra,variant,excluded", [
    ("omniglot", [], "lis-ae", None),
    ("next-class", ["--linsep"], "linsep-lis-ae", "3"),
    ("supervised", [], "lis-ae", None),
    ("none", [], "ae", None),
])
def test_end_to_end_two_iterations_each_negative_mode(tiny_root, capsys, negative, extra, variant, excluded):
    r = lis_ae.main(["--dataset", "mnist", "--normal", "2", "--data-root", tiny_root, "--negative", negative,
                     *TINY, *extra])
    out = capsys.readouterr().out
    assert r["variant"] == variant and r["negative"] == negative and 0 <= r["auroc"] <= 1
    assert ("auroc_linsep" in r) == (variant == "linsep-lis-ae") and r.get("auroc_linsep", r["auroc"]) == r["auroc"]
    assert "phase1 iter 2/2" in out and ("phase2 iter 2/2" in out) == (negative != "none")
    if excluded:
        assert excluded not in r["test_classes"].split(",") and f"excluded from test: [{excluded}]" in out
    if negative == "supervised":
        assert "UPPER BOUND" in out and r["test_classes"] == "0,1,2,3,4"
    assert f"latent_saturated={r['latent_saturated']}" in out and " sat=" in out   # the log shows saturation


def test_end_to_end_subprocess_cross_dataset_two_class_normal_json_and_recon(tiny_root, tmp_path):
    js, png = tmp_path / "r.json", tmp_path / "recon.png"
    p, r = run_script("lis_ae.py", "--dataset", "mnist", "--normal", "0,1", "--negative", "fashion-mnist",
                      "--data-root", tiny_root, *TINY, "--json", js, "--save-recon", png)
    assert r["method"] == "lis_ae" and r["normal"] == "0,1" and r["negative"] == "fashion-mnist"
    for key in ("auroc", "auroc_ae", "gamma", "seconds", "train_samples_per_s"):
        assert float(r[key]) >= 0
    assert read_json(js)["auroc"] == float(r["auroc"])
    from PIL import Image
    w, h = Image.open(png).size
    assert h == 3 * 28 + 4 * 2 and w == 16 * 28 + 17 * 2           # Figure 3: inputs / AE / LIS-AE, 16 columns


@pytest.mark.parametrize("dataset,negative,test_classes", [
    ("cifar10", "split", "5,6,7,8,9"), ("svhn", "cifar10", "0,1,2,3,4,5,6,7,8,9"), ("svhn", "split", "5,6,7,8,9"),
    ("cifar10", "supervised", "5,6,7,8,9")])
def test_end_to_end_svhn_cifar10_two_iterations(tiny_root, torchvision_md5, dataset, negative, test_classes):
    r = lis_ae.main(["--dataset", dataset, "--normal", "6", "--negative", negative, "--data-root", tiny_root, *TINY])
    assert r["test_classes"] == test_classes and r["latent"] == 4 and 0 <= r["auroc"] <= 1


def test_table3_test_half_with_a_cross_dataset_negative_set(tiny_root):
    r = lis_ae.main(["--dataset", "fashion-mnist", "--normal", "7", "--negative", "mnist", "--test-half",
                     "--data-root", tiny_root, *TINY])
    assert r["test_classes"] == "5,6,7,8,9" and r["negative"] == "mnist"


def test_defaults_follow_the_paper_protocol_per_dataset(tiny_root, capsys):
    r = lis_ae.main(["--dataset", "fashion-mnist", "--normal", "9", "--data-root", tiny_root, *TINY])
    assert r["negative"] == "next-class" and "0" not in r["test_classes"].split(",")
    assert lis_ae.NEGATIVE["mnist"] == "omniglot" and lis_ae.NEGATIVE["cifar10"] == "split"


def test_seed_makes_cpu_runs_repeatable(tiny_root):
    args = ["--dataset", "mnist", "--normal", "1", "--data-root", tiny_root, "--iters", "3", "--batch-size", "8",
            "--width", "4", "--latent", "4"]
    a, b = lis_ae.main(args), lis_ae.main(args)
    assert (a["auroc"], a["auroc_ae"], a["gamma"]) == (b["auroc"], b["auroc_ae"], b["gamma"])


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("args,message", [
    (["--dataset", "mnist", "--normal", "12"], "out of range"),
    (["--dataset", "mnist", "--normal", "a,b"], "comma list"),
    (["--dataset", "mnist", "--negative", "mnist"], "normal dataset itself"),
    (["--dataset", "mnist", "--negative", "cifar10"], "same shape"),
    (["--dataset", "cifar10", "--negative", "omniglot"], "1x28x28"),
    (["--dataset", "cifar10", "--normal", "1,7"], "one half"),
    (["--dataset", "mnist", "--latent", "0"], "argument --latent: must be >= 1 (got 0)"),
    (["--dataset", "mnist", "--width", "-2"], "argument --width: must be >= 1"),
    (["--dataset", "mnist", "--gamma-scale", "0"], "argument --gamma-scale: must be > 0"),
    (["--dataset", "mnist", "--gamma", "nan"], "argument --gamma: must be a finite number"),
    (["--dataset", "mnist", "--gamma", "inf"], "argument --gamma: must be a finite number"),
    (["--dataset", "mnist", "--batch-size", "1"], "argument --batch-size: must be >= 2"),
    (["--dataset", "mnist", "--negative", "none", "--linsep"], "--linsep needs"),
    (["--dataset", "fashion-mnist", "--normal", "0,1,2,3,4,5,6,7,9"], "leaves no anomaly class"),
    (["--dataset", "mnist", "--negative", "split", "--normal", "0,1,2,3,4"], "leaves no anomaly class"),
    (["--dataset", "mnist", "--test-half", "--normal", "4,5"], "one half"),
    (["--dataset", "mnist", "--save-recon", "/no/such/dir/r.png"], "does not exist"),
])
def test_bad_input_is_a_clear_error(tiny_root, torchvision_md5, capsys, monkeypatch, args, message):
    monkeypatch.setattr(lis_ae, "train_phase1", None)              # no case may reach training
    with pytest.raises(SystemExit) as e:
        lis_ae.main([*args, "--data-root", tiny_root, "--iters", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and "Traceback" not in err


def omniglot_root(tmp_path, tiny_root, what):
    """A data root with the tiny MNIST and a broken Omniglot: an empty folder, a zip without images, a damaged zip."""
    root = tmp_path / what
    (root / "omniglot_subsets").mkdir(parents=True)
    os.symlink(os.path.join(tiny_root, "MNIST"), root / "MNIST")
    z = root / "omniglot_subsets" / "images_background_small1.zip"
    if what == "no-png":
        with zipfile.ZipFile(z, "w") as f:
            f.writestr("images_background_small1/readme.txt", "no images here")
    elif what == "damaged":
        z.write_bytes(b"PK\x03\x04 this is not a whole zip archive")
    return str(root)


@pytest.mark.parametrize("what,message", [("empty", "no Omniglot images"), ("no-png", "no Omniglot images"),
                                          ("damaged", "not a readable zip archive")])
def test_omniglot_folder_without_images_is_a_clear_error(tmp_path, tiny_root, capsys, monkeypatch, what, message):
    monkeypatch.setattr(lis_ae, "train_phase1", None)
    with pytest.raises(SystemExit) as e:
        lis_ae.main(["--dataset", "mnist", "--data-root", omniglot_root(tmp_path, tiny_root, what), "--iters", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and "omniglot_subsets" in err


def test_ctrl_c_says_no_result_was_written_and_exits_130(tiny_root, capsys, monkeypatch):
    calls, real = [], lis_ae.reconstruction_error

    def interrupt_on_third_call(x_hat, x):                         # a Ctrl-C during phase-1 iteration 3
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(x_hat, x)

    monkeypatch.setattr(lis_ae, "reconstruction_error", interrupt_on_third_call)
    with pytest.raises(SystemExit) as e:
        lis_ae.main(["--dataset", "mnist", "--normal", "2", "--data-root", tiny_root, *TINY[2:], "--iters", "5"])
    err = capsys.readouterr().err
    assert e.value.code == 130 and "interrupted: no result was written" in err and "Traceback" not in err
    assert "RESULT" not in capsys.readouterr().out


def test_digits_runs_with_its_defaults():
    r = lis_ae.main(["--dataset", "digits", "--normal", "3", "--iters", "2", "--width", "4"])
    assert r["batch_size"] == 64 and r["latent"] == 16 and r["negative"] == "next-class"


def test_help_shows_each_datasets_real_defaults(capsys):
    for dataset, shown in (("mnist", ["(default: omniglot)", "(default: 2000)", "(default: 16)"]),
                           ("digits", ["(default: next-class)", "(default: 64)"]),
                           ("cifar10", ["(default: split)", "(default: 5000)", "(default: 128)", "(default: 64)"])):
        with pytest.raises(SystemExit) as e:
            lis_ae.parse_args(["--dataset", dataset, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and all(s in out for s in shown), (dataset, out)
        assert "(default: None)" not in out and "(default: 0.001)" in out and out.count("$AD_DATA_ROOT") == 1


def test_unknown_dataset_and_missing_data_exit_without_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        lis_ae.parse_args(["--dataset", "imagenet"])
    assert e.value.code == 2 and "unknown dataset 'imagenet'" in capsys.readouterr().err     # common's wording
    with pytest.raises(SystemExit) as e:
        lis_ae.main(["--dataset", "mnist", "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: mnist was not found") and str(tmp_path) in err


def test_divergence_stops_with_a_message_saying_where(tiny_root, capsys, monkeypatch):
    real = lis_ae.latent_shaping_loss
    nan_loss = lambda *a: (real(*a)[0] * float("nan"),) + real(*a)[1:]   # phase 2 diverges at its first step
    monkeypatch.setattr(lis_ae, "latent_shaping_loss", nan_loss)
    with pytest.raises(SystemExit) as e:
        lis_ae.main(["--dataset", "mnist", "--data-root", tiny_root, *TINY])
    err = capsys.readouterr().err
    assert e.value.code == 3 and "Eq. (1) loss at phase-2 iteration 1 is nan" in err       # issue 24: exit 3


# ------------------------------------------------------------------------------------------ learning

def test_learning_lis_ae_beats_its_phase1_autoencoder_on_synthetic_data():
    """Positives fill a shell |u| > 1.5 of a 4-d Gaussian embedded in R^16; anomalies (and, drawn separately,
    the negatives) fill the hole |u| < 1. A plain AE interpolates through the hole and reconstructs anomalies
    well; shaping the latent layer with negatives from the hole makes them score high."""
    torch.manual_seed(0)
    A = torch.randn(4, 16) / 2

    def draw(n, inside):
        u = torch.randn(20 * n, 4)
        r = u.norm(dim=1)
        return u[(r < 1.0) if inside else (r > 1.5)][:n] @ A

    pos, neg = draw(1000, False), draw(1000, True)
    x_test = torch.cat([draw(300, False), draw(300, True)])
    y_test = torch.cat([torch.zeros(300), torch.ones(300)])
    model = mlp_lis_ae(16, 64, 8)
    lis_ae.train_phase1(model, pos, iters=400, batch_size=128, lr=3e-3, log=quiet)
    auroc_ae = lis_ae.auroc(model, x_test, y_test)
    gamma = 2 * float(lis_ae.anomaly_scores(model, neg).mean())
    lis_ae.train_phase2(model, pos, neg, iters=400, batch_size=128, lr=3e-3, beta=1.0, gamma=gamma, log=quiet)
    auroc_lis = lis_ae.auroc(model, x_test, y_test)
    assert auroc_ae < 0.85 and auroc_lis > 0.9 and auroc_lis > auroc_ae + 0.1


# ------------------------------------------------------------------------------------------ Python API

# README, "Use a method in your own code": copy lis_ae.py and common.py. Run verbatim by the next test.
README_SNIPPET = readme_block("lis_ae")   # README's block, run verbatim below

CHECKS = """
assert scores.shape == (20,) and np.isfinite(scores).all() and scores.std() > 0, scores
loaded = lis_ae.load("lis_ae.pt")
assert np.array_equal(again, scores) and loaded.config["variant"] == "lis-ae" and loaded.config["iters"] == 5
ae, ae_loaded = lis_ae.phase1_ae(model), lis_ae.phase1_ae(loaded)   # the phase-1 AE rides along (E and D shared)
assert np.array_equal(lis_ae.score(ae, x_new), lis_ae.score(ae_loaded, x_new))
assert not np.array_equal(lis_ae.score(ae, x_new), scores)
plain = lis_ae.fit(x_normal, iters=2)                                # no D-: the plain AE (Sec. 3.2)
assert plain.ae_latent is None and plain.config["variant"] == "ae" and lis_ae.phase1_ae(plain) is plain
x_new, trained = np.random.rand(7, 1, 28, 28), lis_ae.build_model((1, 28, 28))   # the step functions: same scores
lis_ae.train_phase1(trained, x_normal, iters=2)
lis_ae.save(trained, "t.pt")
assert np.array_equal(lis_ae.anomaly_scores(trained, x_new), lis_ae.score(lis_ae.load("t.pt"), x_new))
lines = []
x32 = lambda n: np.random.rand(n, 3, 32, 32).astype("float32")
m32 = lis_ae.build_model(input_shape=(3, 32, 32), latent=8, width=8)
lis_ae.train_phase1(m32, x_normal=x32(64), x_negative=x32(64), linsep=True, iters=3, batch_size=16, log=lines.append)
lis_ae.train_phase2(m32, x_normal=x32(64), x_negative=x32(64), iters=3, batch_size=16, augment=True, log=lines.append)
s32 = lis_ae.anomaly_scores(m32, x=x32(20))
assert s32.shape == (20,) and np.isfinite(s32).all() and s32.std() > 0, s32
assert any(ln.startswith("phase1 iter 3/3") for ln in lines) and any(ln.startswith("phase2 iter 3/3") for ln in lines)
print("API OK")
"""


def test_api_trains_and_scores_plain_arrays_in_a_folder_with_only_lis_ae_and_common(tmp_path):
    for name in ("lis_ae.py", "common.py"):
        shutil.copy(os.path.join(REPO, name), tmp_path / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", README_SNIPPET + CHECKS], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(env, OMP_NUM_THREADS="1"), timeout=300)
    assert p.returncode == 0 and p.stdout == "API OK\n", p.stderr[-3000:]     # the library prints nothing unasked


def test_command_line_and_api_give_the_same_scores_for_the_same_seed(tiny_root, monkeypatch):
    seen, real = [], lis_ae.anomaly_scores
    monkeypatch.setattr(lis_ae, "anomaly_scores", lambda model, x, log=None: seen.append(real(model, x)) or seen[-1])
    r = lis_ae.main(["--dataset", "mnist", "--normal", "2", "--negative", "next-class", "--seed", "3",
                     "--data-root", tiny_root, *TINY])
    cli_ae, cli_lis = seen[-2:]                             # the test set: phase-1 AE, then LIS-AE (after fit)
    data = lis_ae.prepare("mnist", "2", "next-class", data_root=tiny_root)
    x_normal, x_negative, x_test = (data[k].numpy() for k in ("x_pos", "x_neg", "x_test"))
    lis_ae.set_seed(3)
    model = lis_ae.fit(x_normal, x_negative, iters=2, batch_size=8, latent=4, width=4)      # what main() calls
    np.testing.assert_array_equal(real(lis_ae.phase1_ae(model), x_test), cli_ae)
    np.testing.assert_array_equal(lis_ae.score(model, x_test), cli_lis)
    lis_ae.set_seed(3)                                      # fit() = Alg. 1's step functions, in this order
    model = lis_ae.build_model((1, 28, 28), latent=4, width=4)
    lis_ae.train_phase1(model, x_normal, iters=2, batch_size=8, log=quiet)
    ae = real(model, x_test)
    lis_ae.train_phase2(model, x_normal, x_negative, iters=2, batch_size=8, log=quiet)
    lis = real(model, x_test)
    np.testing.assert_array_equal(ae, cli_ae)
    np.testing.assert_array_equal(lis, cli_lis)
    assert not np.array_equal(lis, ae) and r["auroc"] == round(roc_auc_score(data["y_test"], lis), 4)


def test_wrong_input_shapes_are_a_value_error_naming_the_expected_shape():
    with pytest.raises(ValueError, match=r"input_shape must be \(1, 28, 28\) or \(3, 32, 32\).*got \(28, 28\)"):
        lis_ae.build_model((28, 28))
    model = lis_ae.build_model((1, 28, 28), latent=4, width=4)
    with pytest.raises(ValueError, match=r"x_normal must have shape \(N, 1, 28, 28\).*got \(5, 28, 28\)"):
        lis_ae.train_phase1(model, np.zeros((5, 28, 28)))
    with pytest.raises(ValueError, match=r"x_negative must have shape \(N, 1, 28, 28\).*got \(5, 3, 32, 32\)"):
        lis_ae.train_phase2(model, np.zeros((5, 1, 28, 28)), np.zeros((5, 3, 32, 32)))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 28, 28\).*got \(5, 784\)"):
        lis_ae.anomaly_scores(model, np.zeros((5, 784)))
    with pytest.raises(ValueError, match="x holds no samples"):                   # common.as_input's wording
        lis_ae.anomaly_scores(model, np.zeros((0, 1, 28, 28)))
    with pytest.raises(ValueError, match="linsep=True needs x_negative"):
        lis_ae.train_phase1(model, np.zeros((5, 1, 28, 28)), linsep=True)


# ------------------------------------------------------------------------------------------ issue 24: your own data

def own_npz(path, channels=1, side=20, n_test=30, **arrays):
    """A user's .npz: uint8 images (N, side, side[, channels]), normal = a bright block top left, anomaly = bottom
    right; x_train normal only, y_test 1 = anomaly. `arrays` replace or add keys."""
    rng = np.random.default_rng(0)

    def draw(n, anomalous):
        x = rng.integers(0, 40, (n, side, side, channels))
        r = slice(side // 2, side - 2) if anomalous else slice(2, side // 2)
        x[:, r, r] += 200
        return x.astype(np.uint8)[..., 0] if channels == 1 else x.astype(np.uint8)

    y = np.arange(n_test) % 2
    data = dict(x_train=draw(40, False), x_test=np.where(y[:, None, None] if channels == 1 else y[:, None, None, None],
                                                            draw(n_test, True), draw(n_test, False)), y_test=y)
    np.savez(path, **{**data, **arrays})
    return str(path)


def own_folder(path, rgb=True, files=None):
    """A user's MVTec AD folder of PNGs (40x50): train/good, test/good, test/crack; `files` add {relative: bytes}."""
    from PIL import Image
    rng = np.random.default_rng(1)
    for sub, n, hot in (("train/good", 12, False), ("test/good", 5, False), ("test/crack", 5, True)):
        os.makedirs(path / sub)
        for i in range(n):
            a = rng.integers(0, 40, (40, 50, 3) if rgb else (40, 50))
            a[20:36, 25:45] += 200 if hot else 0
            Image.fromarray(a.astype(np.uint8)).save(path / sub / f"{i:02d}.png")
    for rel, blob in (files or {}).items():
        (path / rel).write_bytes(blob)
    return str(path)


def negatives(path, kind):
    """The user's unlabelled negative images: an .npz holding x, or a folder of PNGs (in a subfolder)."""
    rng = np.random.default_rng(2)
    if kind == "npz":
        np.savez(path, x=rng.integers(0, 255, (24, 24, 24), dtype=np.uint8))
        return str(path)
    from PIL import Image
    os.makedirs(path / "set1")
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(path / "set1" / f"{i}.png")
    return str(path)


@pytest.fixture
def no_training(monkeypatch):
    """Booby-trap the optimiser: a run that takes a step fails (loading a model, or an input refused in time)."""
    def step(*a, **k):
        raise AssertionError("an optimiser step ran")
    monkeypatch.setattr(torch.optim.Adam, "step", step)


def run_main(argv, capsys):
    """main(argv) -> (exit status, stdout, stderr, RESULT dict or None)."""
    try:
        r, code = lis_ae.main(argv), 0
    except SystemExit as e:
        r, code = None, e.code
    out, err = capsys.readouterr()
    return code, out, err, r


@pytest.mark.parametrize("kind,shape,like_latent", [("npz-grey", "1x28x28", 16), ("folder-rgb", "3x32x32", 128),
                                                    ("npz-rgb-no-negatives", "3x32x32", 128)])
def test_own_data_end_to_end_score_file_and_checkpoint_round_trip(tmp_path, capsys, monkeypatch, kind, shape,
                                                                  like_latent):
    """Each input kind trains and scores through --dataset PATH (grey -> 1x28x28 with MNIST's settings, RGB ->
    3x32x32 with CIFAR-10's), the score file gives the RESULT's AUROCs, and --load-model scores identically."""
    if kind == "npz-grey":
        data, neg = own_npz(tmp_path / "mine.npz"), negatives(tmp_path / "neg.npz", "npz")
    elif kind == "folder-rgb":
        data, neg = own_folder(tmp_path / "mine"), negatives(tmp_path / "negs", "folder")
    else:
        data, neg = own_npz(tmp_path / "mine.npz", channels=3, side=36), "none"
    flags = ["--dataset", data, "--iters", "2", "--width", "4", "--save-scores", str(tmp_path / "a.npz")]
    code, out, err, r = run_main(flags + ["--negative", neg, "--save-model", str(tmp_path / "m.pt")], capsys)
    assert code == 0, err
    assert r["dataset"] == os.path.basename(data) and r["normal"] == "-" and r["test_classes"] == "-"
    assert r["latent"] == like_latent and r["batch_size"] == 128                  # MNIST's / CIFAR-10's settings
    assert f"read as {shape}" in out and "passes over the test set" in out and "phase-1 AE scores" in out
    a = np.load(tmp_path / "a.npz")
    assert r["auroc"] == round(roc_auc_score(a["labels"], a["scores"]), 4)
    assert r["auroc_ae"] == round(roc_auc_score(a["labels"], a["scores_ae"]), 4)
    assert np.array_equal(a["index"], np.arange(len(a["labels"]))) and a["labels"].sum() == len(a["labels"]) // 2
    assert r["variant"] == ("ae" if neg == "none" else "lis-ae")
    monkeypatch.setattr(torch.optim.Adam, "step", None)                            # loading trains nothing
    flags[-1] = str(tmp_path / "b.npz")
    code, out, err, r2 = run_main(flags[:2] + flags[6:] + ["--load-model", str(tmp_path / "m.pt")], capsys)
    assert code == 0, err
    b = np.load(tmp_path / "b.npz")
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert {k: r2[k] for k in ("auroc", "auroc_ae", "latent_saturated")} == {k: r[k] for k in ("auroc", "auroc_ae",
                                                                                              "latent_saturated")}


def test_an_image_folder_and_an_npz_of_the_same_images_give_the_same_scores(tmp_path, capsys):
    """The same grey images as PNG files and as an .npz train and score bit-identically (common.fit_images gives
    row-major strides: a one-channel view with a channel stride of 1 selected conv's channels-last kernels)."""
    from PIL import Image
    d = np.load(own_npz(tmp_path / "same.npz", side=28))          # 28x28: no resize, which would hide the strides
    for sub, x in (("train/good", d["x_train"]), ("test/good", d["x_test"][d["y_test"] == 0]),
                   ("test/crack", d["x_test"][d["y_test"] == 1])):
        os.makedirs(tmp_path / "same" / sub)
        for i, a in enumerate(x):
            Image.fromarray(a).save(tmp_path / "same" / sub / f"{i:03d}.png")
    order = np.r_[np.flatnonzero(d["y_test"] == 0), np.flatnonzero(d["y_test"] == 1)]   # the folder's test order
    scores = []
    for data in (str(tmp_path / "same"), str(tmp_path / "same.npz")):
        out = str(tmp_path / f"{os.path.basename(data)}.scores.npz")
        code, _, err, _ = run_main(["--dataset", data, "--negative", negatives(tmp_path / "n.npz", "npz"), *TINY[2:],
                                    "--iters", "3", "--save-scores", out], capsys)
        assert code == 0, err
        scores.append(np.load(out))
    folder, npz = scores
    for key in ("scores", "scores_ae", "labels"):
        assert np.array_equal(folder[key], npz[key][order]), key


def test_images_as_x_and_y_are_split_by_the_one_rule(tmp_path, capsys):
    """Issue 34: images in the ADBench / PyOD layout (X, y; 1 = anomaly) come unsplit: common.split_table with the
    seed picks the test images (half of each class), the same rows in every script."""
    from common import split_table
    d = np.load(own_npz(tmp_path / "o.npz"))
    X, y = np.concatenate([d["x_train"], d["x_test"]]), np.r_[np.zeros(40, dtype=int), d["y_test"]]
    np.savez(tmp_path / "xy.npz", X=X, y=y)
    code, out, err, r = run_main(["--dataset", str(tmp_path / "xy.npz"), "--negative", "none", *TINY, "--seed", "4",
                                  "--save-scores", str(tmp_path / "s.npz")], capsys)
    assert code == 0 and "unsplit" in out and r["normal"] == "-", err
    rule, s = split_table(torch.from_numpy(X), torch.from_numpy(y), seed=4), np.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(s["index"], rule["index"])
    np.testing.assert_array_equal(s["labels"], y[rule["index"]])


def test_builtin_round_trip_with_linsep_json_config_and_provenance(tiny_root, tmp_path, capsys, monkeypatch):
    """--save-scores holds scores (LinSep-LIS-AE), scores_ae, scores_linsep and the built-in test split's indices
    (next-class removes class 3); --load-model reproduces every array exactly; the JSON has config + provenance."""
    base = ["--dataset", "mnist", "--normal", "2", "--negative", "next-class", "--data-root", tiny_root]
    code, _, err, r = run_main(base + TINY + ["--linsep", "--save-scores", str(tmp_path / "a.npz"), "--save-model",
                                              str(tmp_path / "m.pt"), "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    a = np.load(tmp_path / "a.npz")
    for key in ("", "_ae", "_linsep"):
        assert r["auroc" + key] == round(roc_auc_score(a["labels"], a["scores" + key]), 4)
    from common import load_images
    y_te = load_images("mnist", tiny_root)[3].numpy()
    assert np.array_equal(a["labels"], (y_te[a["index"]] != 2).astype(int)) and 3 not in y_te[a["index"]]
    js = read_json(tmp_path / "r.json")
    assert {k: js[k] for k in r} == r and "config" not in r                       # RESULT keeps its keys
    assert set(lis_ae.TRAINING) <= set(js["config"]) and js["config"]["input_shape"] == [1, 28, 28]
    assert js["config"]["gamma"] == pytest.approx(r["gamma"], abs=1e-4) and js["config"]["linsep"] is True
    prov = js["provenance"]
    assert "--linsep" in prov["command"] and set(prov["versions"]) == {"torch", "torchvision", "numpy", "scikit-learn"}
    assert "git_commit" in prov and "git_dirty" in prov
    monkeypatch.setattr(torch.optim.Adam, "step", None)
    code, out, err, r2 = run_main(base + ["--load-model", str(tmp_path / "m.pt"), "--save-scores",
                                          str(tmp_path / "b.npz")], capsys)
    assert code == 0, err
    b = np.load(tmp_path / "b.npz")
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert r2["variant"] == "linsep-lis-ae" and "train_samples_per_s" not in r2 and "not trained here" in out
    assert all(r2[k] == r[k] for k in ("auroc", "auroc_ae", "auroc_linsep", "latent", "gamma", "iters"))


def test_api_save_load_keeps_both_phases_in_the_checkpoint_format_of_before():
    """One model carries the phase-1 AE's latent layer (E and D are shared); the checkpoint keeps the format of
    before the four calls: {"script", "config", "preprocess", "state": {"model", "ae_latent"}}."""
    torch.manual_seed(0)
    pos, neg, x = (np.random.rand(16, 1, 28, 28) for _ in range(3))
    model = lis_ae.fit(pos, neg, iters=2, batch_size=8, latent=4, width=4)
    ae = lis_ae.phase1_ae(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ae.state_dict().items() if not k.startswith("latent."))
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        lis_ae.save(model, os.path.join(d, "m.pt"), config={"note": "mine"})
        m2, ck = lis_ae.load(os.path.join(d, "m.pt")), torch.load(os.path.join(d, "m.pt"), weights_only=True)
        old = os.path.join(d, "old.pt")                     # written as the code before fit/score/save/load wrote it
        lis_ae.save_checkpoint(old, "lis_ae", {k: v for k, v in ck["config"].items() if k != "variant"}, {}, {
            "model": {k: v for k, v in model.state_dict().items() if not k.startswith("ae_latent.")},
            "ae_latent": ae.latent.state_dict()})
        m3 = lis_ae.load(old)
    assert m2.config["note"] == "mine" and m2.config["latent"] == 4 and ck["script"] == "lis_ae"
    assert set(ck["state"]) == {"model", "ae_latent"} and not any(k.startswith("ae_") for k in ck["state"]["model"])
    assert m3.config["variant"] == "lis-ae"                 # an API checkpoint of before: told by its ae_latent
    for loaded in (m2, m3):
        assert np.array_equal(lis_ae.score(loaded, x), lis_ae.score(model, x))
        assert np.array_equal(lis_ae.anomaly_scores(lis_ae.phase1_ae(loaded), x), lis_ae.anomaly_scores(ae, x))
    assert not np.array_equal(lis_ae.anomaly_scores(ae, x), lis_ae.score(model, x))


@pytest.mark.parametrize("case,message", [
    ("other-script", "is a checkpoint of toll.py, not of lis_ae.py"),
    ("not-a-checkpoint", "cannot read"),
    ("other-shape", "holds a model for inputs of 1x28x28, but"),
    ("training-flag", "--lr, --latent set the model or its training, which --load-model reads"),
])
def test_load_model_refuses_what_it_cannot_use(tmp_path, capsys, no_training, case, message):
    ck = tmp_path / "m.pt"
    if case == "other-script":
        lis_ae.save_checkpoint(str(ck), "toll", {}, {}, {})
    elif case == "not-a-checkpoint":
        ck.write_bytes(b"not a torch file")
    else:
        lis_ae.save(lis_ae.build_model((1, 28, 28), latent=4, width=4), str(ck))
    data = own_folder(tmp_path / "rgb") if case == "other-shape" else own_npz(tmp_path / "g.npz")
    extra = ["--latent", "8", "--lr", "0.01"] if case == "training-flag" else []
    code, _, err, _ = run_main(["--dataset", data, "--load-model", str(ck), *extra], capsys)
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def bad_input(tmp_path, case):
    """(argv, words the error must contain) for one bad input, with the files it needs generated in tmp_path."""
    npz = lambda **kw: own_npz(tmp_path / "d.npz", **kw)
    neg = ["--negative", "none"]
    if case == "missing-file":
        return ["--dataset", str(tmp_path / "nothing.npz"), *neg], "nothing.npz"
    if case == "unreadable-file":
        (tmp_path / "d.npz").write_bytes(b"garbage")
        return ["--dataset", str(tmp_path / "d.npz"), *neg], "cannot read"
    if case == "npz-without-keys":
        np.savez(tmp_path / "d.npz", images=np.zeros((3, 8, 8)))
        return ["--dataset", str(tmp_path / "d.npz"), *neg], "it holds images"
    if case == "lengths-differ":
        return ["--dataset", npz(y_test=np.zeros(29)), *neg], "has 30 samples but y_test has 29"
    if case == "labels-not-0-1":
        return ["--dataset", npz(y_test=np.arange(30) % 3), *neg], "0 (normal) and 1 (anomaly) only"
    if case == "nan-features":
        return ["--dataset", npz(x_train=np.full((5, 20, 20), np.nan)), *neg], "NaN or inf"
    if case == "tabular-npz":
        return ["--dataset", npz(x_train=np.zeros((5, 20)), x_test=np.zeros((30, 20))), *neg], "Use toll.py or cance.py"
    if case == "csv":
        (tmp_path / "t.csv").write_text("a,label\n1,0\n2,1\n")
        return ["--dataset", str(tmp_path / "t.csv"), *neg], "Use toll.py or cance.py"
    if case == "folder-without-train-good":
        os.makedirs(tmp_path / "f" / "test" / "crack")
        return ["--dataset", str(tmp_path / "f"), *neg], "no images in train/good"
    if case == "folder-without-anomalies":
        d = own_folder(tmp_path / "f")
        shutil.rmtree(os.path.join(d, "test", "crack"))
        return ["--dataset", d, *neg], "no anomaly folder"
    if case == "folder-non-image":
        return ["--dataset", own_folder(tmp_path / "f", files={"train/good/notes.txt": b"x"}), *neg], "notes.txt"
    if case == "normal-with-own-data":
        return ["--dataset", npz(), "--normal", "3", *neg], "Drop --normal"
    if case == "test-half-with-own-data":
        return ["--dataset", npz(), "--test-half", *neg], "Drop --test-half"
    if case == "no-negative-set":
        return ["--dataset", npz()], "needs a negative set D-"
    if case == "label-negative-with-own-data":
        return ["--dataset", npz(), "--negative", "next-class"], "needs the classes of a built-in dataset"
    if case == "negatives-npz-without-x":
        np.savez(tmp_path / "n.npz", images=np.zeros((3, 8, 8)))
        return ["--dataset", npz(), "--negative", str(tmp_path / "n.npz")], "must hold the images as x"
    if case == "negatives-feature-rows":
        np.savez(tmp_path / "n.npz", x=np.zeros((3, 20)))
        return ["--dataset", npz(), "--negative", str(tmp_path / "n.npz")], "x of float64 (3, 20)"
    if case == "negatives-folder-non-image":
        d = negatives(tmp_path / "negs", "folder")
        (tmp_path / "negs" / "set1" / "readme.md").write_text("x")
        return ["--dataset", npz(), "--negative", d], "readme.md' is not an image"
    if case == "negatives-wrong-shape":
        return ["--dataset", npz(), "--negative", "cifar10"], "gives 3x32x32 images, but the normal data has 1x28x28"
    raise KeyError(case)


BAD_OWN = ["missing-file", "unreadable-file", "npz-without-keys", "lengths-differ", "labels-not-0-1", "nan-features",
           "tabular-npz", "csv", "folder-without-train-good", "folder-without-anomalies", "folder-non-image",
           "normal-with-own-data", "test-half-with-own-data", "no-negative-set", "label-negative-with-own-data",
           "negatives-npz-without-x", "negatives-feature-rows", "negatives-folder-non-image", "negatives-wrong-shape"]


@pytest.mark.parametrize("case", BAD_OWN)
def test_bad_own_data_is_one_error_naming_the_file_exit_2_before_training(tmp_path, capsys, no_training, case):
    argv, words = bad_input(tmp_path, case)
    code, out, err, _ = run_main(argv + ["--iters", "2"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in err, err
    assert "Traceback" not in err and "RESULT" not in out
    if case not in ("no-negative-set", "label-negative-with-own-data", "normal-with-own-data",
                    "test-half-with-own-data", "negatives-wrong-shape"):
        assert str(tmp_path) in err or os.path.basename(argv[1]) in err          # the file is named


@pytest.mark.parametrize("case", ["constant-test-images", "score-overflow"])
def test_a_degenerate_run_exits_3_and_writes_nothing(tmp_path, capsys, case):
    """All-equal scores (a test set of one repeated image: the model gives every sample one score) and NaN scores
    (--lr 1e30: one step leaves the loss finite and the weights huge, so the test scores overflow) stop the run
    with one error and exit 3; no JSON, score file, checkpoint or figure is written."""
    outs = {f: str(tmp_path / f) for f in ("r.json", "s.npz", "m.pt", "r.png")}
    flags = ["--json", outs["r.json"], "--save-scores", outs["s.npz"], "--save-model", outs["m.pt"], "--save-recon",
             outs["r.png"]]
    if case == "constant-test-images":
        x = np.full((30, 20, 20), 90, dtype=np.uint8)
        argv = ["--dataset", own_npz(tmp_path / "c.npz", x_test=x), "--negative", "none", *TINY[2:], "--iters", "2"]
        words = "every ae score of the test set is"
    else:
        argv = ["--dataset", "digits", "--normal", "3", "--negative", "none", "--iters", "1", "--lr", "1e30",
                "--width", "4"]
        words = "NaN/inf values"
    code, out, err, _ = run_main(argv + flags, capsys)
    assert code == 3 and err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1, err
    assert "RESULT" not in out and not any(os.path.exists(p) for p in outs.values())


def test_help_for_own_data_shows_where_the_settings_come_from(capsys):
    with pytest.raises(SystemExit) as e:
        lis_ae.parse_args(["--dataset", "mine.npz", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and "(default: None)" not in out
    assert "MNIST's settings, RGB as 3x32x32 with CIFAR-10's" in out and "--negative NAME|PATH" in out
    assert "scores_ae (the phase-1 AE)" in out
