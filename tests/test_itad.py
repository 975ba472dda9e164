"""Tests for itad.py: the equations of Alg. 1-5 against hand computations, the batched augmentation,
two-iteration runs of both models on generated data, bad input, and a fast learning check."""
import math
import os
import sys
import types

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import itad  # noqa: E402
from conftest import read_json, run_script  # noqa: E402

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test machine's cores are shared: one intra-op thread is several times faster there."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


TINY = ["--batch-size", "16", "--width", "4", "--z-dim", "8", "--ndf", "4", "--nrkhs", "8", "--ndepth", "1"]


def test_alg1_clipped_similarity_matches_hand_computation():
    a = torch.tensor([[1.0, 2.0]])
    b = torch.tensor([[3.0, 4.0], [0.0, -1.0]])
    s = itad.clipped_similarity(a, b, c1=2.0, c2=20.0)
    # s = a b^T = [11, -2]; s' = 20 tanh(s / 40)
    assert torch.allclose(s, torch.tensor([[20 * math.tanh(11 / 40), 20 * math.tanh(-2 / 40)]]))
    big = itad.clipped_similarity(100 * a, 100 * b, c1=1.0, c2=20.0)
    assert big.abs().max() <= 20.0                          # soft clipping bounds every logit by c2


def test_eq18_nce_loss_excludes_self_pairs_matches_hand_computation():
    # 2 images, 4 views: rows 0,1 are image 0, rows 2,3 image 1
    s = torch.tensor([[9.0, 1.0, 0.5, -1.0],
                      [1.0, 7.0, 0.0, 2.0],
                      [0.5, 0.0, 5.0, 3.0],
                      [-1.0, 2.0, 3.0, 8.0]])
    expected = 0.0
    for i, partner in ((0, 1), (1, 0), (2, 3), (3, 2)):
        others = [k for k in range(4) if k != i]              # k != i: the self-pair is not a negative
        expected += -(s[i, partner] - torch.logsumexp(s[i, others], 0)).item()
    expected /= 4                                             # (1/2N) sum over the 2N views
    assert itad.nce_loss(s).item() == pytest.approx(expected, abs=1e-6)
    s2 = s.clone()
    s2.diagonal().fill_(-50.0)                                # the diagonal must not matter
    assert itad.nce_loss(s2).item() == pytest.approx(expected, abs=1e-6)


def test_alg3_global_local_nce_uses_other_views_local_maps():
    s = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    expected = (-(2.0 - math.log(math.exp(2) + 1)) - (3.0 - math.log(math.exp(1) + math.exp(3)))) / 2
    assert itad.nce_loss_global_local(s).item() == pytest.approx(expected, abs=1e-6)


def test_alg3_global_local_similarity_sums_over_positions():
    g = torch.tensor([[1.0, -1.0]])
    l = torch.arange(8.0).view(1, 2, 2, 2)                    # channel 0: 0..3, channel 1: 4..7
    s = itad.global_local_similarity(g, l, c1=1.0, c2=20.0)
    raw = (0 + 1 + 2 + 3) - (4 + 5 + 6 + 7)                   # sum_p g^T l[p] = -16
    assert s.item() == pytest.approx(20 * math.tanh(raw / 20), abs=1e-5)


def test_eq19_entropy_bound_l1_l2_matches_hand_computation():
    z = torch.tensor([[3.0, -4.0], [0.0, 1.0]])
    assert itad.entropy_bound(z, 1).item() == pytest.approx((7 + 1) / 2)      # Laplace: L1, mean over views
    assert itad.entropy_bound(z, 2).item() == pytest.approx((5 + 1) / 2)      # Gaussian: L2
    maps = torch.tensor([[[[1.0, -2.0]], [[0.0, 3.0]]]])                      # (1, 2, 1, 2): flattened
    assert itad.entropy_bound(maps, 1).item() == pytest.approx(6.0)
    # --entropy-reduce mean: ||z||_q / d^(1/q): L1 -> mean |z_j|, L2 -> RMS
    assert itad.entropy_bound(z, 1, "mean").item() == pytest.approx((7 / 2 + 1 / 2) / 2)
    assert itad.entropy_bound(z, 2, "mean").item() == pytest.approx((5 / math.sqrt(2) + 1 / math.sqrt(2)) / 2)
    assert itad.entropy_bound(maps, 1, "mean").item() == pytest.approx(6.0 / 4)


@pytest.mark.parametrize("kind", ["affine", "fixed", "none"])
def test_code_norm_options_build_the_last_layer(kind):
    base = itad.BaseModel(width=4, z_dim=8, code_norm=kind)
    ext = itad.AmdimEncoder(ndf=4, nrkhs=8, ndepth=1, code_norm=kind)
    for last in (base.head[-1], ext.top[-1], ext.phi.bn):
        if kind == "none":
            assert isinstance(last, torch.nn.Identity)
        else:
            assert isinstance(last, torch.nn.modules.batchnorm._BatchNorm) and last.affine == (kind == "affine")
    z = base.eval()(torch.rand(3, 3, 32, 32))
    g, l = ext.eval()(torch.rand(3, 3, 32, 32))
    assert z.shape == (3, 8) and g.shape == (3, 8) and l.shape == (3, 8, 7, 7)


def test_eq28_jsd_matches_hand_computation():
    s = torch.tensor([[0.0, 1.0, -1.0, 2.0],
                      [1.0, 0.0, 0.5, 0.0],
                      [-1.0, 0.5, 0.0, 3.0],
                      [2.0, 0.0, 3.0, 0.0]])
    pos = itad.pair_partner_mask(4, "cpu")
    sp = lambda t: math.log1p(math.exp(t))
    e_pos = sum(-sp(-s[i, j].item()) for i, j in ((0, 1), (1, 0), (2, 3), (3, 2))) / 4
    neg = [(i, j) for i in range(4) for j in range(4) if i != j and j != i ^ 1]
    e_neg = sum(sp(s[i, j].item()) for i, j in neg) / len(neg)
    assert itad.jsd_loss(s, pos).item() == pytest.approx(-(e_pos - e_neg), abs=1e-6)


def test_augmentation_draws_different_parameters_per_sample():
    torch.manual_seed(0)
    n = 64
    prm = itad.draw_augmentation(n, "cpu")
    crops = torch.stack([prm[k] for k in ("w", "h", "cx", "cy")], 1)
    assert crops.unique(dim=0).shape[0] == n                  # every sample has its own crop box
    assert prm["w"].unique().numel() > n // 2 and prm["h"].unique().numel() > n // 2
    assert 0 < (prm["flip"] < 0).sum() < n                    # some flipped, some not
    jittered = prm["brightness"] != 1.0
    assert 0 < jittered.sum() < n and prm["brightness"][jittered].unique().numel() == int(jittered.sum())
    assert 0 < prm["gray"].sum() < n
    x = torch.rand(1, 3, 32, 32).expand(n, -1, -1, -1).contiguous()   # one image repeated
    y = itad.augment(x, prm)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    flat = y.flatten(1)
    assert torch.cdist(flat, flat).fill_diagonal_(1.0).min() > 1e-3   # every sample got its own transform


def test_augmentation_identity_parameters_leave_image_unchanged():
    x = torch.rand(2, 3, 32, 32)
    one, zero = torch.ones(2), torch.zeros(2)
    prm = dict(w=one, h=one, cx=zero, cy=zero, flip=one, brightness=one, contrast=one, saturation=one,
               hue=zero, gray=torch.zeros(2, dtype=torch.bool))
    assert torch.allclose(itad.augment(x, prm), x, atol=1e-5)
    prm["flip"] = -one
    assert torch.allclose(itad.augment(x, prm), x.flip(-1), atol=1e-5)


def test_eq23_self_score_is_clipped_squared_norm():
    torch.manual_seed(0)
    args = types.SimpleNamespace(model="base", c2=20.0)
    model = itad.BaseModel(width=4, z_dim=8).eval()
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        z = model(itad.to_minus1_1(x))
        expected = 20 * torch.tanh((z * z).sum(1) / (math.sqrt(8) * 20))
        got = itad.normal_scores(model, x, args, math.sqrt(8), "self")
    assert torch.allclose(torch.as_tensor(got), expected, atol=1e-5)


def test_eq24_extension_score_is_gg_plus_gl():
    torch.manual_seed(0)
    args = types.SimpleNamespace(model="extension", c2=20.0)
    model = itad.AmdimEncoder(ndf=4, nrkhs=8, ndepth=1).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        g, l = model(itad.to_minus1_1(x))
        assert g.shape == (3, 8) and l.shape == (3, 8, 7, 7)
        c1 = math.sqrt(8)
        expected = (itad.clipped_similarity(g, g, c1, 20).diagonal()
                    + itad.global_local_similarity(g, l, c1, 20).diagonal())
        got = itad.normal_scores(model, x, args, c1, "self")
    assert torch.allclose(torch.as_tensor(got), expected, atol=1e-4)


def test_table4_encoder_local_size_5():
    g, l = itad.AmdimEncoder(ndf=4, nrkhs=8, ndepth=2, local_size=5)(torch.rand(2, 3, 32, 32))
    assert g.shape == (2, 8) and l.shape == (2, 8, 5, 5)


def test_base_two_iterations_as_a_user_runs_it(tiny_root, tmp_path):
    out = tmp_path / "r.json"
    p, r = run_script("itad.py", "--dataset", "mnist", "--normal", "3", "--data-root", tiny_root, "--iters", "2",
                      "--json", out, *TINY)
    assert "iter 2/2" in p.stdout
    assert r["method"] == "itad" and r["model"] == "base" and r["normal"] == "3"
    assert 0 <= float(r["auroc"]) <= 1 and "auroc_rand" in r
    j = read_json(out)
    assert j["auroc"] == float(r["auroc"]) and j["iters"] == 2


def test_extension_two_iterations_jsd_l2_mc_score(tiny_root):
    r = itad.main(["--dataset", "fashion-mnist", "--normal", "0,1", "--data-root", tiny_root, "--iters", "2",
                   "--model", "extension", "--mi", "jsd", "--entropy", "l2", "--score", "mc", "--mc-samples", "2",
                   "--code-norm", "none", "--entropy-reduce", "mean", *TINY])
    assert r["model"] == "extension" and r["score"] == "mc" and r["normal"] == "0,1"
    assert 0 <= r["auroc"] <= 1 and 0 <= r["auroc_self"] <= 1 and 0 <= r["auroc_rand"] <= 1


def test_cifar10_extension_two_iterations_beta0(tiny_root, torchvision_md5):
    r = itad.main(["--dataset", "cifar10", "--normal", "2", "--data-root", tiny_root, "--iters", "2",
                   "--model", "extension", "--beta", "0", "--local-size", "5", *TINY])
    assert r["dataset"] == "cifar10" and r["beta"] == 0.0 and 0 <= r["auroc"] <= 1


@pytest.mark.parametrize("args, message", [
    (["--normal", "10"], "out of range"),
    (["--normal", "a,b"], "comma list"),
    (["--batch-size", "1"], "at least 2"),
    (["--batch-size", "5000"], "exceeds"),
    (["--iters", "0"], "at least 1"),
    (["--mc-samples", "0"], "at least 1"),
])
def test_bad_input_exits_with_message(tiny_root, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        itad.main(["--dataset", "mnist", "--data-root", tiny_root, *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_missing_data_offline_is_a_clear_error_without_traceback(tmp_path):
    p, _ = run_script("itad.py", "--dataset", "mnist", "--data-root", tmp_path, "--iters", "2", expect_rc=2)
    assert "MNIST/raw" in p.stderr and "Traceback" not in p.stderr


def test_unknown_dataset_is_rejected(capsys):
    with pytest.raises(SystemExit) as e:
        itad.main(["--dataset", "imagenet"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_cpu_runs_are_repeatable(tiny_root):
    argv = ["--dataset", "mnist", "--data-root", tiny_root, "--iters", "2", *TINY]
    assert itad.main(argv)["auroc"] == itad.main(argv)["auroc"]


def test_learning_separates_an_easy_anomaly_set(tiny_root):
    """Generated data: class c is a bright blob at a class-specific place; class 0 is normal. Paper defaults
    (beta = 20, L1, InfoNCE, self score) with a tiny ResNet; AUROC 0.88 when written (seed 0, 120 steps)."""
    r = itad.main(["--dataset", "mnist", "--normal", "0", "--data-root", tiny_root, "--iters", "120",
                   "--batch-size", "32", "--width", "8", "--z-dim", "16", "--seed", "0"])
    assert r["auroc"] > 0.8, r
