"""cance.py: Eq. (8)-(14) and the score by hand or against numpy/scipy, the reparameterised noise, the protocol
end to end on generated data (AE features, tabular F1, a random-weight stand-in for the ResNet-18 path), the
Python API (alone in an empty folder, and equal to the command line), bad input, and a learning test where CNCE
beats the reconstruction error."""
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn as nn
import torchvision
from sklearn.metrics import roc_auc_score

import cance
from common import DataError, load_mnist_c, row_moments, split_table
from conftest import REPO, class_images, read_json, readme_block, run_script

QUIET = lambda line: None


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """The suite shares 2 busy cores: one torch thread per process avoids oversubscription (10x faster here)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ equations

def test_eq12_covariance_loss_matches_hand_computation():
    # centred rows (-2,0), (0,-2), (2,2): Sigma = [[8,4],[4,8]] / 2 = [[4,2],[2,4]]; off-diagonals 2, 2
    z = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]])
    assert cance.covariance_loss(z).item() == pytest.approx((2 ** 2 + 2 ** 2) / (2 * 1))
    z = torch.randn(50, 4, dtype=torch.float64)
    sigma = np.cov(z.numpy(), rowvar=False)
    off = sigma - np.diag(np.diag(sigma))
    assert cance.covariance_loss(z).item() == pytest.approx((off ** 2).sum() / 12)
    assert cance.covariance_loss(torch.randn(10, 1)).item() == 0.0


def test_eq11_ae_loss_is_squared_error_summed_over_the_input_plus_lambda_cov():
    x, x_rec = torch.zeros(3, 2), torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    z = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]])
    # Eq. (11) as written: E_x ||x - x'||^2 = (1 + 4 + 2) / 3 rows (a sum over the d0 = 2 inputs, not a mean)
    loss, error, cov = cance.ae_loss(x, x_rec, z, lam=0.5)
    assert error.item() == pytest.approx((1 + 4 + 1 + 1) / 3)
    assert cov.item() == pytest.approx(4.0) and loss.item() == pytest.approx(7 / 3 + 0.5 * 4.0)
    # the validation loss reduces the same way (lambda = 0: L_error alone)
    ae = cance.TabularAE(4, 2)
    xv = torch.randn(10, 4)
    with torch.no_grad():
        ae.eval()
        rec, _ = ae(xv)
    assert cance.validation_loss(ae, xv, 0.0) == pytest.approx(float(((rec - xv) ** 2).sum()) / 10, rel=1e-5)


def test_composite_features_error_and_cosine_dissimilarity_by_hand():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    x_rec = torch.tensor([[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]])
    z = cance.composite_features(x, x_rec, torch.tensor([[7.0], [8.0], [9.0]]))
    assert z[:, 0].tolist() == [7.0, 8.0, 9.0]                                     # z_l passes through
    assert z[:, 1].tolist() == pytest.approx([(1 + 1) / 2, (1 + 1) / 2, 4 / 2])    # ||x - x'||^2 / d0
    assert z[:, 2].tolist() == pytest.approx([0.5, 0.0, 1.0], abs=1e-6)            # (1 - cos) / 2


def test_eq13_14_batchwise_mean_and_covariance_match_numpy_on_the_whole_set():
    z = torch.randn(1003, 5, dtype=torch.float64) * torch.tensor([1.0, 0.01, 10.0, 2.0, 1e-3]) + 5.0
    z[:, 1] += 0.3 * z[:, 0]
    moments = cance.RunningMoments(5)
    for start, stop in ((0, 1), (1, 130), (130, 131), (131, 900), (900, 1003)):   # uneven batches, one of 1
        moments.update(z[start:stop])
    assert moments.n == 1003
    np.testing.assert_allclose(moments.mean.numpy(), z.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(moments.covariance().numpy(), np.cov(z.numpy(), rowvar=False), rtol=1e-9, atol=1e-15)


def test_appendix_c_lognormal_mode_matches_a_sampled_lognormal():
    rng = np.random.default_rng(0)
    for m, s in ((-4.0, 0.5), (0.3, 0.25)):
        sample = rng.lognormal(m, s, size=2_000_000)
        estimate = cance.lognormal_mode(torch.tensor(sample.mean()), torch.tensor(sample.var())).item()
        assert estimate == pytest.approx(math.exp(m - s ** 2), rel=0.01)          # the log-normal's mode
        hist, edges = np.histogram(sample, bins=400, range=(0, np.quantile(sample, 0.99)))
        peak = 0.5 * (edges[hist.argmax()] + edges[hist.argmax() + 1])
        assert estimate == pytest.approx(peak, rel=0.05)


def test_eq8_augmentation_replaces_both_reconstruction_features_by_half_with_values_in_0_mode():
    torch.manual_seed(0)
    latent, n = 3, 20000
    z = torch.cat([torch.randn(n, latent), torch.full((n, 2), 7.0)], 1)
    mean, std, mode = torch.tensor([0.05, 0.2]), torch.tensor([0.02, 0.05]), torch.tensor([0.03, 0.15])
    out = cance.augment(z, latent, mean, std, mode)
    assert torch.equal(out[:, :latent], z[:, :latent]) and torch.equal(z[:, latent:], torch.full((n, 2), 7.0))
    changed = out[:, latent] != 7.0
    assert torch.equal(changed, out[:, latent + 1] != 7.0)                        # both features together
    assert abs(changed.float().mean().item() - 0.5) < 0.02                        # probability 1/2
    for j in range(2):
        v = out[changed, latent + j]
        assert v.min() >= 0 and v.max() <= mode[j]
    # N(mean, std^2) truncated to [0, mode]: compare the mean of z_e with scipy's truncated normal
    a, b = (0 - 0.05) / 0.02, (0.03 - 0.05) / 0.02
    expected = scipy.stats.truncnorm(a, b, loc=0.05, scale=0.02).mean()
    assert out[changed, latent].mean().item() == pytest.approx(expected, rel=0.01)


def test_noise_L_K_then_inverse_is_identity_and_K_is_at_least_one():
    cov = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]], dtype=torch.float64)
    noise = cance.NoiseDistribution(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), cov, learn_k=True)
    with torch.no_grad():
        noise.psi.copy_(torch.tensor([-30.0, 0.0, 3.0]))
    K = noise.K()
    assert (K >= 1).all() and K[0].item() == pytest.approx(1.0) and K[1].item() == pytest.approx(1 + math.log(2))
    z = torch.randn(100, 3)
    torch.testing.assert_close(noise.L_K(noise.L_K_inverse(z, K), K), z)
    torch.testing.assert_close(noise.L_K_inverse(noise.L_K(z, K), K), z)
    fixed = cance.NoiseDistribution(torch.zeros(3, dtype=torch.float64), cov, learn_k=False)
    assert torch.equal(fixed.K(), torch.ones(3)) and not fixed.psi.requires_grad


def test_k_init_sets_the_starting_K_through_the_softplus():
    cov = torch.eye(3, dtype=torch.float64)
    default = cance.NoiseDistribution(torch.zeros(3, dtype=torch.float64), cov, learn_k=True)
    assert default.K().tolist() == pytest.approx([1 + math.log(2)] * 3)          # psi = 0, Sec. 3.4
    near_one = cance.NoiseDistribution(torch.zeros(3, dtype=torch.float64), cov, learn_k=True, k_init=1.01)
    assert near_one.K().tolist() == pytest.approx([1.01] * 3, rel=1e-6)
    assert cance.parse_args([]).k_init == pytest.approx(1 + math.log(2))


def test_noise_samples_and_log_density_are_those_of_N_mu_K_sigma_K():
    torch.manual_seed(0)
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    noise = cance.NoiseDistribution(mean, cov, learn_k=True)
    with torch.no_grad():
        noise.psi.copy_(torch.tensor([0.5, -1.0]))
    K = noise.K().detach().double()
    cov_k = torch.diag(K) @ cov @ torch.diag(K)
    samples = noise.L_K(noise.sample_v(200_000), noise.K()).detach().double()
    np.testing.assert_allclose(np.cov(samples.numpy(), rowvar=False), cov_k.numpy(), rtol=0.02, atol=0.02)
    z = torch.randn(5, 2)
    expected = scipy.stats.multivariate_normal(mean.numpy(), cov_k.numpy()).logpdf(z.numpy())
    np.testing.assert_allclose(noise.log_prob(z).numpy(), expected, rtol=1e-5)


def test_eq9_nce_loss_matches_hand_values():
    assert cance.nce_loss(torch.zeros(4), torch.zeros(8), nu=2).item() == pytest.approx(3 * math.log(2))
    # T = ln 3 -> sigma = 3/4: data term -ln(3/4); noise term -nu ln(1/4)
    t = torch.tensor([math.log(3.0)])
    assert cance.nce_loss(t, t.repeat(5), nu=5).item() == pytest.approx(-math.log(0.75) - 5 * math.log(0.25))


def test_eq10_data_term_is_the_identity_in_value_but_depends_on_K_through_the_stop_gradient():
    mean = torch.tensor([1.0, -1.0], dtype=torch.float64)
    noise = cance.NoiseDistribution(mean, torch.eye(2, dtype=torch.float64), learn_k=True)
    with torch.no_grad():
        noise.psi.copy_(torch.tensor([0.3, -0.7]))
    z = torch.tensor([[2.0, 1.0], [0.0, 0.5]])
    w = torch.tensor([1.5, -2.0])
    K = noise.K()
    z_through = noise.L_K(noise.L_K_inverse(z, K).detach(), K)
    torch.testing.assert_close(z_through, z)
    (z_through @ w).sum().backward()                      # a linear T(z) = w.z
    # d/dpsi_j of K_j (u_j - mu_j) + mu_j with u fixed: (u_j - mu_j) sigmoid(psi_j), u - mu = (z - mu) / K
    expected = (w * ((z - noise.mean) / K.detach()).sum(0) * torch.sigmoid(noise.psi.detach()))
    torch.testing.assert_close(noise.psi.grad, expected)


def test_anomaly_score_adds_back_the_noise_log_density():
    """A T_theta equal to -ln nu everywhere says p_d = p_n, so S_C must be -ln p_n(z) exactly."""
    nu = 8
    mean = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.3, 0.0], [0.3, 2.0, 0.1], [0.0, 0.1, 0.5]], dtype=torch.float64)
    noise = cance.NoiseDistribution(mean, cov, learn_k=True)
    with torch.no_grad():
        noise.psi.copy_(torch.tensor([0.0, 1.0, -2.0]))

    class Constant(nn.Module):
        def forward(self, z):
            return torch.full((len(z),), -math.log(nu))

    z = torch.randn(7, 3)
    K = noise.K().detach().double().numpy()
    expected = -scipy.stats.multivariate_normal(mean.numpy(), np.diag(K) @ cov.numpy() @ np.diag(K)).logpdf(z.numpy())
    np.testing.assert_allclose(cance.anomaly_score(Constant(), noise, z, nu), expected, rtol=1e-5)


def test_f1_flags_the_test_anomaly_proportion_of_scores():
    scores, labels = np.arange(10.0), np.array([0] * 8 + [1] * 2)
    assert cance.f1_at_ratio(scores, labels) == 1.0
    assert cance.f1_at_ratio(scores[::-1].copy(), labels) == 0.0


def test_tabular_split_is_half_the_normal_rows_for_training(tiny_root):
    X, y = cance.load_tabular("thyroid", tiny_root)          # generated: 600 rows, 30 anomalies
    train_idx, test_idx = cance.tabular_split(y, seed=0)
    assert len(train_idx) == 285 and len(test_idx) == 315 and int(y[test_idx].sum()) == 30
    assert int(y[train_idx].sum()) == 0 and len(set(train_idx.tolist()) | set(test_idx.tolist())) == 600


def test_drocc_split_tests_every_anomaly_against_as_many_normal_rows(tiny_root):
    X, y = cance.load_tabular("thyroid", tiny_root)          # generated: 600 rows, 30 anomalies
    train_idx, test_idx = cance.tabular_split(y, seed=0, protocol="drocc")
    assert len(test_idx) == 60 and int(y[test_idx].sum()) == 30 and len(train_idx) == 540   # process_odds.py's sizes


def test_f1_drocc_rule_is_the_normal_class_f1_at_80_percent_predicted_normal():
    labels = np.array([0] * 5 + [1] * 5)                      # balanced, as the drocc split is
    perfect = np.arange(10.0)                                  # anomalies score highest
    # 8 predicted normal, 5 of them normal: precision 5/8, recall 1 -> F1 = 2 * 0.625 / 1.625
    assert cance.f1_drocc_rule(perfect, labels) == pytest.approx(2 * 0.625 / 1.625)
    assert cance.f1_at_ratio(perfect, labels) == 1.0


def test_conv_ae_shapes_and_batchnorm_directly_before_the_latent():
    for channels, side in ((1, 28), (3, 32)):
        ae = cance.ConvAE(channels, side, latent=5)
        x_rec, z = ae(torch.rand(4, channels, side, side))
        assert x_rec.shape == (4, channels, side, side) and z.shape == (4, 5)
        assert isinstance(ae.encoder[-1], nn.BatchNorm1d) and not ae.encoder[-1].affine


def test_proposition1_augmented_marginal_dominates_the_noise_on_0_to_mode_on_sampled_data():
    """Proposition 1 (Appendix D): on [0, m_z] the reconstruction-feature marginal of p_m = (p_0 + p_t) / 2 has a
    density no less than the noise marginal N(mu_z, sigma_z^2). Checked on sampled log-normal features pushed
    through augment() (histogram densities) and in closed form, for p_t centred at m_z (Appendix D, the default)
    and at mu_z (a reading once offered); without the augmentation the data alone fall below the noise near 0."""
    torch.manual_seed(0)
    n, latent = 400_000, 1
    z_e, z_c = torch.exp(-3.0 + 0.6 * torch.randn(n)), torch.exp(-1.5 + 0.4 * torch.randn(n))   # skewed, as in Sec. 3.4
    z = torch.stack([torch.randn(n), z_e, z_c], 1)
    mean, std = z[:, 1:].mean(0), z[:, 1:].std(0)
    mode = cance.lognormal_mode(mean, std ** 2)                                 # Appendix C
    assert (mode < mean).all()
    for loc in (mode, mean):
        out = cance.augment(z, latent, loc, std, mode)                           # Eq. (8)
        for j in range(2):
            edges = torch.linspace(0, float(mode[j]), 21)
            width = float(edges[1] - edges[0])
            density = torch.histc(out[:, latent + j], bins=20, min=0, max=float(mode[j])) / (n * width)
            centres = 0.5 * (edges[1:] + edges[:-1])
            noise = torch.distributions.Normal(mean[j].double(), std[j].double()).log_prob(centres.double()).exp()
            assert (density.double() >= 0.97 * noise).all(), (j, density, noise)
            # closed form: (p_0 + p_t) / 2 >= p_t / 2 >= the noise density on the whole interval
            grid = torch.linspace(0, float(mode[j]), 200).double()
            m, s = float(loc[j]), float(std[j])                                 # p_t = N(m, s^2) on [0, m_z]
            p_t = scipy.stats.truncnorm.pdf(grid.numpy(), (0 - m) / s, (float(mode[j]) - m) / s, loc=m, scale=s)
            half_pt = 0.5 * torch.from_numpy(p_t)
            p_noise = torch.distributions.Normal(mean[j].double(), std[j].double()).log_prob(grid).exp()
            assert (half_pt >= p_noise * (1 - 1e-9)).all()
    # without the augmentation (p = 0) the data marginal near 0 is below the noise's: the proposition needs Eq. (8)
    plain = cance.augment(z, latent, mode, std, mode, p=0.0)
    low = torch.histc(plain[:, latent], bins=20, min=0, max=float(mode[0]))[0] / (n * float(mode[0]) / 20)
    assert low < torch.distributions.Normal(mean[0], std[0]).log_prob(torch.tensor(0.0)).exp()


def test_nce_model_selection_returns_the_step_with_the_lowest_validation_loss():
    """Appendix E: 20 training points and a high rate make T_theta overfit, so the validation loss of Eq. (9)
    rises late; the returned model must be the best logged checkpoint, not the last iterate (without z_val)."""
    torch.manual_seed(0)
    z_train, z_val = torch.randn(20, 2), torch.randn(2000, 2)
    lines = []
    kw = dict(variant="cnce", nce_iters=400, lr=1e-2, batch_size=20, val_seed=1)
    T, noise, step = cance.train_nce(z_train, z_val, log=lines.append, **kw)
    logged = [(int(t.split()[2].split("/")[0]), float(t.split("val_loss=")[1].split()[0]))
              for t in lines if "val_loss=" in t]
    best_step, best_val = min(logged, key=lambda r: r[1])
    assert step == best_step < 400 and logged[-1][1] > best_val + 0.01
    assert f"selected step {step} of 400" in lines[-1]
    v_val = noise.sample_v(8 * len(z_val), generator=torch.Generator().manual_seed(1))   # the same fixed draws
    with torch.no_grad():
        again = cance.nce_loss(T(z_val), T(noise.L_K(v_val, noise.K())), 8).item()
    assert again == pytest.approx(best_val, abs=1e-4)
    _, _, last = cance.train_nce(z_train, log=QUIET, **kw)
    assert last == 400


# ------------------------------------------------------------------------------------------ Python API (issue 23)

# README's "Use a method in your own code" block for cance.py, run verbatim by the next test.
README_SNIPPET = readme_block("cance")   # README's block, run verbatim below

API_CHECKS = """
print("README block done")
import os
assert os.path.dirname(os.path.abspath(cance.__file__)) == os.getcwd()    # the copy, not the repository's


def check(s, n):
    assert isinstance(s, np.ndarray) and s.shape == (n,) and np.isfinite(s).all() and s.std() > 0, s


check(scores, 100)
assert scores[50:].mean() > scores[:50].mean()
assert np.array_equal(same, scores)                                       # the saved model scores identically
for shape in ((1, 28, 28), (3, 32, 32)):
    x = rng.random((48, *shape), dtype=np.float32)
    m = cance.fit(x_normal=x, variants=("latnce", "cnce", "cance"), latent=4, lam=0.3, ae_iters=2, decoder_iters=2,
                  nce_iters=3, batch_size=16, seed=0, device="cpu", log=lambda line: None)
    for variant in ("error", "latnce", "cnce", "cance"):
        check(cance.score(model=m, x=rng.random((10, *shape), dtype=np.float32), variant=variant), 10)
# one call per step of Fig. 1, without validation parts (the last iterates are kept)
ae = cance.build_autoencoder(input_shape=(20,), latent=3)
cance.train_autoencoder(ae=ae, x_train=x_normal, lam=0.3, ae_iters=5, decoder_iters=5, batch_size=64, log=print)
T, noise, step = cance.train_nce(z_train=cance.ae_features(ae=ae, x=x_normal), variant="cance", nce_iters=5,
                                 batch_size=64)
check(cance.anomaly_score(T=T, noise=noise, z=cance.ae_features(ae=ae, x=x_new), nu=8), 100)
print("API OK")
"""


def test_api_trains_and_scores_in_an_empty_folder_holding_only_cance_and_common(tmp_path):
    """The README snippet verbatim, then keyword-only calls on 1x28x28 and 3x32x32 images and one call per step,
    in a fresh process whose folder holds cance.py and common.py alone."""
    for name in ("cance.py", "common.py"):
        shutil.copy(os.path.join(REPO, name), tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", AD_OFFLINE="1")
    p = subprocess.run([sys.executable, "-c", README_SNIPPET + API_CHECKS], cwd=tmp_path, capture_output=True,
                       text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.startswith("README block done\n") and p.stdout.rstrip().endswith("API OK")   # fit() printed
    # nothing unasked (log=None)


@pytest.mark.parametrize("dataset", ["thyroid", "mnist"])
def test_command_line_and_api_give_the_same_scores_for_the_same_seed(tiny_root, dataset, monkeypatch):
    seen, real = {}, cance.score_features

    def spy(model, z, variant="cance"):
        seen[variant] = real(model, z, variant)
        return seen[variant]

    monkeypatch.setattr(cance, "score_features", spy)
    argv = ["--dataset", dataset, "--data-root", tiny_root, "--iters", "4", "--seed", "3"]
    cance.main(argv + (["--normal", "3", "--batch-size", "16"] if dataset == "mnist" else []))
    cli = dict(seen)
    if dataset == "thyroid":
        X, y = cance.load_tabular("thyroid", tiny_root)
        train_idx, test_idx = cance.tabular_split(y, seed=3)
        x_normal, x_test = X[train_idx], X[test_idx]                 # raw rows: fit() z-scores them
        kw = dict(cance.PAPER["thyroid"])
    else:
        x_tr, y_tr, x_te, y_te = cance.load_images("mnist", tiny_root)
        split = cance.one_class_split(x_tr, y_tr, x_te, y_te, [3])
        x_normal, x_test = split["train"], split["test"][0]
        kw = dict(cance.PAPER["mnist"], batch_size=16)
    kw.update(ae_iters=4, decoder_iters=4, nce_iters=4)
    model = cance.fit(x_normal.numpy(), variants=cance.VARIANTS, seed=3, device="cpu", log=QUIET, **kw)
    assert set(cli) == {"error", "latnce", "cnce", "cance"}
    for variant, scores in cli.items():
        np.testing.assert_array_equal(cance.score(model, x_test.numpy(), variant), scores)


def test_wrong_input_shapes_are_a_value_error_naming_the_expected_shape():
    with pytest.raises(ValueError, match=r"\(N, D\), \(N, 1, 28, 28\) or \(N, 3, 32, 32\) .*got \(5, 28, 28\)"):
        cance.fit(np.zeros((5, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\) for this model, got \(5, 1, 32, 32\)"):
        cance.fit(np.zeros((5, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\) or \(N, 3, H, W\) for ResNet-18, got \(5, 20\)"):
        cance.fit(np.zeros((5, 20), np.float32), features="resnet18-pca")
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\) for this model, got \(N, 2, 28, 28\)"):
        cance.build_autoencoder((2, 28, 28))
    x = np.random.default_rng(0).normal(size=(40, 20)).astype(np.float32)
    model = cance.fit(x, latent=2, ae_iters=1, decoder_iters=1, nce_iters=1, batch_size=8, device="cpu", log=QUIET)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 20\) for this model, got \(5, 21\)"):
        cance.score(model, np.zeros((5, 21), np.float32))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 20\) for this model, got \(20,\)"):
        cance.score(model, np.zeros(20, np.float32))
    with pytest.raises(ValueError, match="'cnce' was not trained"):
        cance.score(model, x, variant="cnce")


# ------------------------------------------------------------------------------------------ end to end

def test_end_to_end_mnist_two_iterations_subprocess(tiny_root, tmp_path):
    out = tmp_path / "r.json"
    p, r = run_script("cance.py", "--dataset", "mnist", "--normal", "3", "--data-root", tiny_root, "--iters", 2,
                      "--batch-size", 16, "--json", out)
    for phase in ("ae1 iter 2/2", "ae2 iter 2/2", "latnce iter 2/2", "cnce iter 2/2", "cance iter 2/2", "ablation"):
        assert phase in p.stdout
    assert r["method"] == "cance" and r["normal"] == "3" and r["latent"] == "6" and r["lam"] == "0.3"
    for key in ("auroc", "auroc_error", "auroc_latnce", "auroc_cnce"):
        assert 0 <= float(r[key]) <= 1
    assert float(r["train_samples_per_s"]) > 0 and float(r["k_mean"]) >= 1
    assert read_json(out)["auroc"] == float(r["auroc"]) and not os.path.exists(str(out) + ".tmp")


def test_end_to_end_fashion_mnist_nine_normal_classes(tiny_root):
    r = cance.main(["--dataset", "fashion-mnist", "--normal", "0,1,2,3,4,6,7,8,9", "--data-root", tiny_root,
                    "--iters", "2", "--batch-size", "8", "--latent", "3"])
    assert r["normal"] == "0,1,2,3,4,6,7,8,9" and 0 <= r["auroc_cnce"] <= 1


@pytest.mark.parametrize("dataset,latent", [("thyroid", 3), ("arrhythmia", 8), ("abalone", 3)])
def test_end_to_end_tabular_f1_for_all_four_variants(tiny_root, dataset, latent):
    r = cance.main(["--dataset", dataset, "--data-root", tiny_root, "--iters", "2"])
    for key in ("f1", "f1_error", "f1_latnce", "f1_cnce", "auroc", "auroc_error"):
        assert 0 <= r[key] <= 1
    assert r["latent"] == latent and r["lam"] == 0.3
    assert r["tabular_split"] == "goad" and "f1_drocc_rule" not in r   # the default split (docstring: Table 6)


def test_drocc_split_reports_drocc_s_metric_too(tiny_root):
    r = cance.main(["--dataset", "thyroid", "--data-root", tiny_root, "--iters", "2", "--tabular-split", "drocc"])
    assert r["tabular_split"] == "drocc" and 0.4615 - 1e-4 <= r["f1_drocc_rule"] <= 0.7693


def test_eq10_psi_step_moves_k_only_when_k_is_learned():
    """Eq. (10): CANCE's noise scale K = 1 + softplus(psi) is trained (adversarially to T_theta); LatNCE/CNCE keep
    K = I, and LatNCE's noise lives on the 3 latent dimensions. Fails if the psi step is dropped or K is frozen."""
    torch.manual_seed(0)
    z = torch.cat([torch.randn(1500, 3), torch.randn(1500, 2).abs() * 0.5 + 0.2], 1)   # latent 3 + (z_e, z_c)
    kw = dict(nce_iters=60, lr=1e-2, batch_size=128, log=QUIET)
    _, noise, _ = cance.train_nce(z, variant="cance", **kw)
    k = noise.K().detach()
    assert (k >= 1).all() and (k - cance.K_INIT).abs().max() > 1e-3          # moved away from its start
    _, noise0, _ = cance.train_nce(z, variant="cnce", **kw)
    assert torch.equal(noise0.K().detach(), torch.ones(5))
    _, noise_lat, _ = cance.train_nce(z, variant="latnce", **kw)
    assert torch.equal(noise_lat.K().detach(), torch.ones(3))


def test_eq8_augmentation_runs_in_the_cance_phase_only(tiny_root, monkeypatch):
    """fit(): Eq. (8) augments (z_e, z_c) of CANCE's training batches (latent = d), never LatNCE's or CNCE's;
    CANCE learns K. Fails if fit() trains CANCE without the augmentation or without the K step."""
    calls, real, real_train = [], cance.augment, cance.train_nce

    def spy_augment(z, latent, *a, **k):
        calls.append((phase[0], latent))
        return real(z, latent, *a, **k)

    phase, learned = [None], {}

    def spy_train(*a, variant, **k):
        phase[0] = variant
        T, noise, step = real_train(*a, variant=variant, **k)
        learned[variant] = noise.learn_k
        return T, noise, step

    monkeypatch.setattr(cance, "augment", spy_augment)
    monkeypatch.setattr(cance, "train_nce", spy_train)
    r = cance.main(["--dataset", "mnist", "--normal", "0", "--data-root", tiny_root, "--iters", "3",
                    "--batch-size", "8", "--latent", "3"])
    assert calls and {p for p, _ in calls} == {"cance"} and {lat for _, lat in calls} == {3}
    assert learned == {"latnce": False, "cnce": False, "cance": True} and r["k_mean"] >= 1


def test_end_to_end_cifar10_two_iterations_uses_the_papers_latent_and_lambda(tiny_root, torchvision_md5):
    r = cance.main(["--dataset", "cifar10", "--normal", "2", "--data-root", tiny_root, "--iters", "2",
                    "--batch-size", "8"])
    assert r["latent"] == 64 and r["lam"] == 0.004 and 0 <= r["auroc"] <= 1


def test_end_to_end_resnet18_pca_with_a_weights_file(tiny_root, tmp_path):
    """A random resnet18 state_dict written with torch.save stands in for the ImageNet weights: the real
    --weights loading path, embeddings, PCA and NCE all run, with no download."""
    path = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    r = cance.main(["--dataset", "mnist", "--normal", "1", "--data-root", tiny_root, "--features", "resnet18-pca",
                    "--weights", str(path), "--image-size", "32", "--iters", "2"])
    assert r["features"] == "resnet18-pca" and 0 <= r["auroc"] <= 1 and r["latent"] == 6


def test_resnet18_without_weights_offline_is_a_clear_error(tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))           # an empty torch hub cache
    with pytest.raises(SystemExit) as e:
        cance.main(["--dataset", "mnist", "--data-root", tiny_root, "--features", "resnet18-pca", "--iters", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--weights" in err and "AD_OFFLINE" in err


def test_seed_makes_cpu_runs_repeatable(tiny_root):
    argv = ["--dataset", "thyroid", "--data-root", tiny_root, "--iters", "4", "--seed", "3"]
    a, b = cance.main(argv), cance.main(argv)
    for key in ("f1", "auroc", "auroc_error", "auroc_latnce", "auroc_cnce", "k_mean"):
        assert a[key] == b[key]


def test_end_to_end_cifar10_nine_normal_classes_table5(tiny_root, torchvision_md5):
    """Table 5's CIFAR-10 column (9 normal classes vs 1) by construction: the loading path, the 9-class split
    (only class 9 is anomalous) and the paper's CIFAR-10 latent and lambda."""
    r = cance.main(["--dataset", "cifar10", "--normal", "0,1,2,3,4,5,6,7,8", "--data-root", tiny_root,
                    "--iters", "2", "--batch-size", "8"])
    assert r["normal"] == "0,1,2,3,4,5,6,7,8" and r["latent"] == 64 and 0 <= r["auroc"] <= 1


def test_digits_runs_with_its_defaults_and_says_which_batch_it_picked(capsys):
    r = cance.main(["--dataset", "digits", "--normal", "3", "--iters", "2"])
    assert r["batch_size"] == 64 and 0 <= r["auroc"] <= 1
    assert "batch=64" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ MNIST-C (Table 3)

def write_mnist_c(root, corruptions=("fog", "shear"), n_train=300, n_test=100):
    """Generated files in MNIST-C's public layout: mnist_c/<corruption>/{train,test}_{images,labels}.npy,
    uint8 (N, 28, 28, 1) images. identity = the clean set; 'fog' brightens, 'shear' rolls the images."""
    x_tr, y_tr = class_images(n_train, 28, 1, 10, seed=70)
    x_te, y_te = class_images(n_test, 28, 1, 10, seed=71)
    sets = {"identity": (x_tr, x_te)}
    for c in corruptions:
        make = (lambda x: np.clip(x.astype(int) + 120, 0, 255).astype(np.uint8)) if c == "fog" else \
            (lambda x: np.roll(x, 7, axis=2))
        sets[c] = (make(x_tr), make(x_te))
    for name, (a, b) in sets.items():
        folder = os.path.join(root, "mnist_c", name)
        os.makedirs(folder, exist_ok=True)
        for split, x, y in (("train", a, y_tr), ("test", b, y_te)):
            np.save(os.path.join(folder, f"{split}_images.npy"), x)
            np.save(os.path.join(folder, f"{split}_labels.npy"), y)
    return x_tr, x_te


def test_mnist_c_loader_reads_the_public_layout(tmp_path):
    x_tr, x_te = write_mnist_c(str(tmp_path))
    x_train, x_test, y_test, source = load_mnist_c(["fog", "shear"], str(tmp_path))
    assert x_train.shape == (300, 1, 28, 28) and x_test.shape == (300, 1, 28, 28)
    assert x_train.dtype == torch.float32 and 0 <= x_train.min() and x_train.max() <= 1
    torch.testing.assert_close(x_train[:, 0], torch.from_numpy(x_tr[..., 0]).float() / 255)       # identity train
    assert y_test.tolist() == [0] * 100 + [1] * 200 and source.tolist() == [0] * 100 + [1] * 100 + [2] * 100
    torch.testing.assert_close(x_test[:100, 0], torch.from_numpy(x_te[..., 0]).float() / 255)     # identity test
    assert (x_test[100:200] >= x_test[:100]).all()                                                 # fog brightens


def test_mnist_c_missing_or_malformed_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="zenodo.org/record/3239543") as e:
        load_mnist_c(["fog"], str(tmp_path))
    assert os.path.join("mnist_c", "identity", "train_images.npy") in str(e.value)
    write_mnist_c(str(tmp_path), corruptions=("fog",))
    with pytest.raises(DataError, match=r"shear.test_images\.npy' was not found"):
        load_mnist_c(["fog", "shear"], str(tmp_path))
    np.save(os.path.join(str(tmp_path), "mnist_c", "fog", "test_images.npy"), np.zeros((5, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"shape \(5, 32, 32, 3\)"):
        load_mnist_c(["fog"], str(tmp_path))
    with open(os.path.join(str(tmp_path), "mnist_c", "fog", "test_images.npy"), "wb") as f:
        f.write(b"\x93NUMPY truncated")
    with pytest.raises(DataError, match="not a readable .npy"):
        load_mnist_c(["fog"], str(tmp_path))


def test_end_to_end_mnist_c_table3_on_generated_files(tmp_path):
    write_mnist_c(str(tmp_path))
    r = cance.main(["--dataset", "mnist-c", "--corruption", "fog,shear", "--data-root", str(tmp_path),
                    "--iters", "2", "--batch-size", "16"])
    assert r["latent"] == 10 and r["corruption"] == "fog,shear" and 0 <= r["auroc"] <= 1   # Sec. 4: latent 10


# ------------------------------------------------------------------------------------------ bad input (issue 18)

def tabular_root(tmp_path, X):
    import scipy.io
    os.makedirs(tmp_path / "tabular", exist_ok=True)
    y = np.zeros(len(X))
    y[:10] = 1
    scipy.io.savemat(str(tmp_path / "tabular" / "thyroid.mat"), {"X": X, "y": y.reshape(-1, 1)})
    return str(tmp_path)


EVERY_CLASS = ",".join(map(str, range(10)))


@pytest.mark.parametrize("args,message", [
    (["--dataset", "omniglot"], "unknown dataset 'omniglot'"),
    (["--dataset", "mnist", "--normal", "10"], "out of range"),
    (["--dataset", "mnist", "--normal", "1;2"], "comma list"),
    (["--dataset", "mnist", "--normal", "a"], "comma list"),
    (["--dataset", "mnist", "--normal", ""], "comma list"),
    (["--dataset", "mnist", "--normal", "1,1"], "twice"),
    (["--dataset", "mnist", "--normal", EVERY_CLASS], "every class"),
    (["--dataset", "fashion-mnist", "--normal", EVERY_CLASS], "every class"),
    (["--dataset", "mnist", "--batch-size", "1"], "--batch-size: must be >= 2"),
    (["--dataset", "mnist", "--batch-size", "0"], "--batch-size: must be >= 2"),
    (["--dataset", "mnist", "--iters", "0"], "--iters: must be >= 1"),
    (["--dataset", "mnist", "--iters", "-3"], "--iters: must be >= 1"),
    (["--dataset", "mnist", "--latent", "0"], "--latent: must be >= 1"),
    (["--dataset", "mnist", "--nu", "0"], "--nu: must be >= 1"),
    (["--dataset", "mnist", "--lam", "-1"], "--lam: must be >= 0"),
    (["--dataset", "mnist", "--k-init", "1"], "--k-init: must be > 1"),
    (["--dataset", "mnist", "--k-init", "nan"], "--k-init: must be a finite number"),
    (["--dataset", "mnist", "--image-size", "8"], "--image-size: must be >= 32"),
    (["--dataset", "mnist", "--lr", "nan"], "--lr: must be a finite number"),
    (["--dataset", "mnist", "--lr", "inf"], "--lr: must be a finite number"),
    (["--dataset", "mnist", "--lr", "0"], "--lr: must be > 0"),
    (["--dataset", "mnist", "--lr", "-1"], "--lr: must be > 0"),
    (["--dataset", "mnist", "--seed", "-5"], "--seed: must be in [0, "),
    (["--dataset", "mnist", "--seed", str(2 ** 32)], "--seed: must be in [0, "),
    (["--dataset", "mnist", "--device", "tpu"], "unknown device 'tpu'"),
    (["--dataset", "mnist", "--device", "mps"], "unknown device 'mps'"),
    (["--dataset", "mnist", "--device", "nonsense:x"], "unknown device"),
    (["--dataset", "mnist", "--json", "/no/such/dir/out.json"], "does not exist"),
    (["--dataset", "mnist", "--json", "/proc/x.json"], "cannot write into"),
    (["--dataset", "thyroid", "--normal", "2"], "fixed for thyroid"),
    (["--dataset", "thyroid", "--features", "resnet18-pca"], "image datasets"),
    (["--dataset", "mnist-c", "--corruption", "nope"], "'nope' is not 'all'"),
    (["--dataset", "mnist-c", "--normal", "3"], "fixed for mnist-c"),
    (["--dataset", "my.csv", "--normal", "1"], "--normal names classes of a built-in dataset; in your own data"),
    (["--dataset", "./folder", "--normal", "0"], "--normal names classes of a built-in dataset"),
    (["--dataset", "mnist", "--label-column", "y"], "apply to a .csv dataset only"),
    (["--dataset", "x.npz", "--normal-label", "1"], "apply to a .csv dataset only"),
    (["--dataset", "x.npz", "--tabular-split", "drocc"], "--tabular-split splits a tabular set of Table 6, and 'x.npz' "
                                                         "is none (your own tables follow the split rule"),
    (["--dataset", "my.csv", "--tabular-split", "goad"], "--tabular-split splits a tabular set"),
    (["--dataset", "mnist", "--tabular-split", "goad"], "--tabular-split splits a tabular set"),
    (["--dataset", "thyroid", "--raw-features"], "--raw-features keeps your own table's features"),
    (["--dataset", "mnist", "--raw-features"], "--raw-features keeps your own table's features"),
    (["--load-model", "m.pt", "--latent", "4", "--lr", "1"], "--latent, --lr set the model or its training, which "
                                                             "--load-model reads from the checkpoint"),
    (["--load-model", "m.pt", "--raw-features"], "--raw-features sets the model or its training"),
    (["--load-model", "m.pt", "--save-model", "n.pt"], "--save-model sets the model or its training"),
    (["--dataset", "mnist", "--save-scores", "/no/such/dir/s.npz"], "does not exist"),
    (["--dataset", "mnist", "--save-model", "/no/such/dir/m.pt"], "does not exist"),
])
def test_bad_input_is_a_clear_error_before_any_data_is_read(tmp_path, capsys, args, message):
    """Every check runs inside parse_args, before the data: the data root here is EMPTY, so a check that ran after
    loading would report missing data instead of the expected message."""
    with pytest.raises(SystemExit) as e:
        cance.main(args + ["--data-root", str(tmp_path)])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and "iter" not in out


def test_bad_input_device_cuda_without_a_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for device in ("cuda", "cuda:7"):
        with pytest.raises(SystemExit) as e:
            cance.main(["--device", device, "--data-root", str(tmp_path)])
        assert e.value.code == 2 and "torch finds 0 CUDA device(s)" in capsys.readouterr().err


def test_bad_input_json_pointing_at_a_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cance.main(["--json", str(tmp_path), "--data-root", str(tmp_path)])
    assert e.value.code == 2 and "is a folder" in capsys.readouterr().err


def test_tabular_file_with_nan_is_a_clear_error(tmp_path, capsys):
    X = np.random.default_rng(0).normal(size=(100, 6))
    X[17, 4] = np.nan
    with pytest.raises(SystemExit) as e:
        cance.main(["--dataset", "thyroid", "--data-root", tabular_root(tmp_path, X), "--iters", "2"])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and "NaN/inf" in err and "row 17, column 4" in err and "iter" not in out


def test_tabular_file_with_only_constant_columns_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cance.main(["--dataset", "thyroid", "--data-root", tabular_root(tmp_path, np.ones((100, 6))), "--iters", "2"])
    assert e.value.code == 2 and "every column" in capsys.readouterr().err


def test_tabular_constant_column_is_reported_and_kept_finite(tmp_path, capsys):
    """The real ODDS Arrhythmia file has 17 constant columns, so one constant column is not an error: it is
    reported, and z-scoring keeps it at 0 (std 1, GOAD's norm_data) instead of dividing by ~0."""
    X = np.random.default_rng(0).normal(size=(200, 6))
    X[:, 2] = 5.0
    X[:10, 3] = 0.0                                     # the anomalies' column 3 is constant-free; train rows vary
    r = cance.main(["--dataset", "thyroid", "--data-root", tabular_root(tmp_path, X), "--iters", "2"])
    assert "1 of 6 columns are constant" in capsys.readouterr().out and 0 <= r["f1"] <= 1
    model = cance.fit(X[10:], latent=2, ae_iters=1, decoder_iters=1, nce_iters=1, batch_size=8, device="cpu", log=QUIET)
    assert model.x_std[2] == 1 and model.x_mean[2] == 5                # fit() z-scores with the training rows
    assert model.features(X).isfinite().all()


def test_ctrl_c_exits_130_and_writes_no_result(tiny_root, tmp_path, monkeypatch, capsys):
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    real = cance.ae_loss
    monkeypatch.setattr(cance, "ae_loss", interrupted)
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as e:
        cance.main(["--dataset", "thyroid", "--data-root", tiny_root, "--iters", "5", "--json", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 130 and "interrupted: no result was written" in err and "Traceback" not in err
    assert not out.exists() and not os.path.exists(str(out) + ".tmp")


def test_missing_data_offline_exits_with_one_paragraph(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:                      # main() catches DataError: no traceback
        cance.main(["--dataset", "mnist", "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "--data-root" in err and "MNIST/raw" in err


def test_divergence_stops_with_a_message_saying_where_and_exit_3(tiny_root, capsys):
    with pytest.raises(SystemExit) as e:
        cance.main(["--dataset", "thyroid", "--data-root", tiny_root, "--iters", "50", "--lr", "1e30"])
    assert e.value.code == 3
    err = capsys.readouterr().err
    assert "diverged" in err and "iteration" in err


# ------------------------------------------------------------------------------------------ learning

def test_learning_cnce_beats_reconstruction_error_on_unusual_latents():
    """Embeddings on a 3-d subspace of R^20 plus isotropic noise off it. Anomalies lie on the same subspace but
    far out in the latent space, so their reconstruction error (the off-subspace noise) is normal: Error is
    near chance, while NCE on the composite feature finds them."""
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(20, 3))[0]                          # (20, 3), orthonormal
    off = lambda n: 0.1 * torch.randn(n, 20)

    def embed(latent):
        return latent @ basis.T + off(len(latent))                          # (n, 20)

    e_train = embed(torch.randn(2000, 3))
    e_normal = embed(torch.randn(300, 3))
    direction = torch.nn.functional.normalize(torch.randn(300, 3), dim=1)
    e_anomal = embed(direction * 5.0)                                        # radius 5 in a unit-variance latent
    from sklearn.decomposition import PCA
    pca = PCA(n_components=3, random_state=0).fit(e_train.numpy())
    z_train = cance.pca_features(pca, e_train)
    z_test = cance.pca_features(pca, torch.cat([e_normal, e_anomal]))
    labels = np.r_[np.zeros(300), np.ones(300)]
    T, noise, _ = cance.train_nce(z_train, variant="cnce", nce_iters=300, lr=3e-3, batch_size=128, log=QUIET)
    auroc_cnce = roc_auc_score(labels, cance.anomaly_score(T, noise, z_test, nu=8))
    auroc_error = roc_auc_score(labels, z_test[:, 3].numpy())
    assert auroc_error < 0.65 and auroc_cnce > 0.95


# ------------------------------------------------------------------------------------------ your own data (issue 24)

def write_csv(path, X, y, label="label"):
    """Rows as exact float32 text (numpy's shortest round-trip form) and a label column."""
    with open(path, "w") as f:
        f.write(",".join([f"f{j}" for j in range(X.shape[1])] + [label]) + "\n")
        for row, lab in zip(np.asarray(X, dtype=np.float32), np.asarray(y).tolist()):
            f.write(",".join(str(v) for v in row) + f",{lab}\n")
    return str(path)


def blob_images(n, side, channels, anomalous, seed):
    """uint8 (n, side, side, channels): normal images hold a bright square top left, anomalies bottom right."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, size=(n, side, side, channels))
    q = side // 4
    if anomalous:
        x[:, -2 * q:-q, -2 * q:-q] += 200
    else:
        x[:, q:2 * q, q:2 * q] += 200
    return np.clip(x, 0, 255).astype(np.uint8)


def write_folder(root, side=28, channels=1, n=(40, 10, 10)):
    from PIL import Image
    for sub, count, anomalous, seed in (("train/good", n[0], False, 0), ("test/good", n[1], False, 1),
                                        ("test/crack", n[2], True, 2)):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        for i, a in enumerate(blob_images(count, side, channels, anomalous, seed)):
            Image.fromarray(a[..., 0] if channels == 1 else a).save(os.path.join(root, sub, f"{i:03d}.png"))
    return str(root)


def rows_npz(path, n_train=120, d=20, **extra):
    rng = np.random.default_rng(0)
    x_test = np.concatenate([rng.normal(size=(30, d)), rng.normal(4.0, 1.0, size=(10, d))])
    arrays = dict(x_train=rng.normal(size=(n_train, d)), x_test=x_test, y_test=np.r_[np.zeros(30), np.ones(10)])
    np.savez(path, **dict(arrays, **extra))
    return str(path)


def result_line(out):
    return dict(kv.split("=", 1) for kv in out.strip().splitlines()[-1].split()[1:])


def test_csv_is_split_by_the_one_rule_and_a_score_file_recomputes_its_result(tiny_root, tmp_path, capsys):
    """Thyroid written as CSV (exact float32 text, a label column) is your own table: split by common.split_table
    (not by --tabular-split, Table 6's preparation of the built-in set), z-scored with its training rows, Thyroid's
    hyperparameters; the score file holds the four variants, the labels and each test row's index in the file and
    recomputes the result; the JSON adds the config and provenance, the RESULT line does not."""
    X, y = cance.load_tabular("thyroid", tiny_root)
    path = write_csv(tmp_path / "thyroid.csv", X.numpy(), y.numpy())
    scores, out = tmp_path / "s.npz", tmp_path / "r.json"
    mine = cance.main(["--dataset", path, "--save-scores", str(scores), "--json", str(out), "--iters", "2",
                       "--seed", "1"])
    stdout = capsys.readouterr().out
    assert "read thyroid.csv: 600 rows of 6 features, 30 anomalies (y = 1), unsplit; split: train 285 normal, " \
           "test 300 (15 anomalies)" in stdout
    assert "rows z-scored with the training rows' mean and std; hyperparameters of thyroid" in stdout
    assert mine["dataset"] == "thyroid.csv" and mine["normal"] == "-" and mine["latent"] == 3
    assert "tabular_split" not in mine and "f1" in mine
    f = np.load(scores)
    assert sorted(f.files) == ["index", "labels", "scores", "scores_cnce", "scores_error", "scores_latnce"]
    assert np.array_equal(f["index"], split_table(X, y, seed=1)["index"].numpy())
    assert np.array_equal(f["labels"], y.numpy()[f["index"]])
    assert round(cance.f1_at_ratio(f["scores"], f["labels"]), 4) == mine["f1"]
    for variant, key in (("scores", "auroc"), ("scores_error", "auroc_error"), ("scores_cnce", "auroc_cnce")):
        assert round(roc_auc_score(f["labels"], f[variant]), 4) == mine[key]
    js = read_json(out)
    assert js["config"]["hyperparameters_of"] == "thyroid" and js["config"]["label_column"] == "label"
    assert js["config"]["lr"] == 1e-3 and js["config"]["input_shape"] == [6] and js["config"]["nce_iters"] == 2
    assert js["config"]["standardize"] is True and "tabular_split" not in js["config"]
    assert set(js["provenance"]) >= {"command", "git_commit", "git_dirty", "versions"}
    assert "--save-scores" in js["provenance"]["command"] and "torch" in js["provenance"]["versions"]
    assert "config" not in stdout.strip().splitlines()[-1] and "provenance" not in stdout.strip().splitlines()[-1]


def own_table(n=300, anomalies=40, d=8, seed=0, shift=0.0, scale=1.0):
    """A generated table, float32 (exact in CSV text), columns of different scales; y = 1 marks an anomaly."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(n - anomalies, d)), rng.normal(3.0, 1.0, size=(anomalies, d))])
    return (x * np.arange(1, d + 1) * scale + shift).astype(np.float32), np.r_[np.zeros(n - anomalies),
                                                                              np.ones(anomalies)].astype(np.int64)


def test_every_table_layout_gives_the_same_split_and_scores(tmp_path, capsys):
    """Issue 34: one table as a CSV, an ADBench / PyOD .npz (X, y) and an ODDS .mat (X, y (N, 1)) is one dataset:
    split by common.split_table (the rule toll.py uses too), z-scored with the training rows and scored identically.
    --raw-features keeps the features as they are (other scores)."""
    import scipy.io
    x, y = own_table()
    np.savez(tmp_path / "t.npz", X=x, y=y)
    scipy.io.savemat(tmp_path / "t.mat", {"X": x, "y": y[:, None]})
    runs = {}
    for path, flags in ((write_csv(tmp_path / "t.csv", x, y), []), (str(tmp_path / "t.npz"), []),
                        (str(tmp_path / "t.mat"), []), (str(tmp_path / "t.mat"), ["--raw-features"])):
        r = cance.main(["--dataset", path, "--iters", "3", "--seed", "4", "--save-scores", str(tmp_path / "s.npz")]
                       + flags)
        runs[path[-3:] + "".join(flags)] = dict(np.load(tmp_path / "s.npz"), f1=r["f1"], auroc=r["auroc"])
    out = capsys.readouterr().out
    assert out.count("rows z-scored with the training rows' mean and std") == 3 and "rows as they are" in out
    rule = split_table(torch.from_numpy(x), torch.from_numpy(y), seed=4)
    np.testing.assert_array_equal(runs["csv"]["index"], rule["index"])
    np.testing.assert_array_equal(runs["csv"]["labels"], y[rule["index"]])
    for layout in ("npz", "mat"):
        for k in ("scores", "scores_error", "scores_latnce", "scores_cnce", "labels", "index", "f1", "auroc"):
            np.testing.assert_array_equal(runs[layout][k], runs["csv"][k])
    assert not np.array_equal(runs["mat"]["scores"], runs["mat--raw-features"]["scores"])   # standardised by default


def test_own_tables_are_standardised_with_the_training_rows_only(tmp_path):
    """Issue 34: the z-scoring of your own table comes from its training rows alone: moving every test row far away
    (x 1000 + 50) leaves the saved model's constants as they were, the training rows' mean and std (a test row in
    the statistics would move them)."""
    x, y = own_table()
    rule = split_table(torch.from_numpy(x), torch.from_numpy(y), seed=0)
    far = x.copy()
    far[rule["index"].numpy()] = far[rule["index"].numpy()] * 1000 + 50
    for name, rows in (("near", x), ("far", far)):
        cance.main(["--dataset", write_csv(tmp_path / f"{name}.csv", rows, y), "--iters", "2", "--save-model",
                    str(tmp_path / f"{name}.pt")])
    near, moved = cance.load(str(tmp_path / "near.pt")), cance.load(str(tmp_path / "far.pt"))
    mean, std = row_moments(rule["train"])
    assert torch.equal(near.x_mean, mean) and torch.equal(near.x_std, std) and near.config["standardize"]
    assert torch.equal(moved.x_mean, mean) and torch.equal(moved.x_std, std)
    assert not torch.allclose(row_moments(torch.from_numpy(x))[0], mean)            # every row's mean differs


def test_a_default_batch_larger_than_the_training_part_is_fitted_an_explicit_one_is_an_error(tmp_path, capsys):
    """Issue 34: 300 rows leave 130 normal training rows, 104 after Appendix E's 20% hold-out: Thyroid's default
    batch 128 becomes 104 with a note; --batch-size 500, given by the user, stops before training (exit 2)."""
    path = write_csv(tmp_path / "t.csv", *own_table())
    r = cance.main(["--dataset", path, "--iters", "2"])
    assert r["batch_size"] == 104 and "note: --batch-size 104: the default 128 exceeds the 104 normal training " \
                                       "samples left after Appendix E's 20% hold-out" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cance.main(["--dataset", path, "--iters", "2", "--batch-size", "500"])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and "--batch-size 500 exceeds the 104 normal training samples" in err and "iter" not in out


def test_load_model_on_other_data_uses_the_checkpoints_z_scoring_never_refitted(tmp_path, capsys, request):
    """Issue 34: --load-model on another table (other rows, another location and scale) scores with the z-scoring
    the checkpoint holds, the saving run's training rows' mean and std: the API's score() of the loaded model gives
    the same scores, and constants refitted on the new table's training rows would give others."""
    x, y = own_table(seed=0)
    cance.main(["--dataset", write_csv(tmp_path / "a.csv", x, y), "--iters", "3", "--save-model",
                str(tmp_path / "m.pt")])
    x2, y2 = own_table(seed=1, shift=3.0, scale=5.0)
    request.getfixturevalue("no_training")                          # from here on, an optimiser step fails
    r = cance.main(["--dataset", write_csv(tmp_path / "b.csv", x2, y2), "--load-model", str(tmp_path / "m.pt"),
                    "--save-scores", str(tmp_path / "b.npz")])
    assert "not trained here" in capsys.readouterr().out and 0 <= r["auroc"] <= 1
    f, model = np.load(tmp_path / "b.npz"), cance.load(str(tmp_path / "m.pt"))
    assert torch.equal(model.x_mean, row_moments(split_table(torch.from_numpy(x), torch.from_numpy(y))["train"])[0])
    np.testing.assert_array_equal(cance.score(model, x2[f["index"]]), f["scores"])   # the checkpoint's constants
    model.x_mean, model.x_std = row_moments(split_table(torch.from_numpy(x2), torch.from_numpy(y2))["train"])
    assert not np.allclose(cance.score(model, x2[f["index"]]), f["scores"])          # what refitting would give


@pytest.mark.parametrize("kind", ["rows", "grey", "rgb"])
def test_npz_rows_and_images_run_end_to_end(tmp_path, capsys, kind):
    """An .npz of (N, D) rows takes Thyroid's values and reports F1; grey images become 1x28x28 with MNIST's values,
    RGB images (here (N, H, W, C) 40x40) 3x32x32 with CIFAR-10's; the header says what was read and what it became."""
    if kind == "rows":
        path = rows_npz(tmp_path / "d.npz")
    else:
        side, c = (28, 1) if kind == "grey" else (40, 3)
        x = lambda n, anomalous, seed: blob_images(n, side, c, anomalous, seed)[..., 0] if c == 1 else \
            blob_images(n, side, c, anomalous, seed)
        path = str(tmp_path / "d.npz")
        np.savez(path, x_train=x(60, False, 0), x_test=np.concatenate([x(10, False, 1), x(10, True, 2)]),
                 y_test=[0] * 10 + [1] * 10)
    r = cance.main(["--dataset", path, "--iters", "2", "--batch-size", "16"])
    out = capsys.readouterr().out
    assert r["dataset"] == "d.npz" and r["normal"] == "-" and 0 <= r["auroc"] <= 1
    expected = {"rows": ("120 x_train, 40 x_test rows of 20 features; rows z-scored with the training rows' mean "
                         "and std; hyperparameters of thyroid", 3),
                "grey": ("60 x_train, 20 x_test images of 1x28x28, read as 1x28x28; hyperparameters of mnist", 6),
                "rgb": ("60 x_train, 20 x_test images of 3x40x40, read as 3x32x32; hyperparameters of cifar10",
                        64)}[kind]
    assert expected[0] in out and r["latent"] == expected[1]
    assert ("f1" in r) == (kind == "rows") and "tabular_split" not in r


def test_image_folder_runs_end_to_end(tmp_path, capsys):
    scores = tmp_path / "s.npz"
    r = cance.main(["--dataset", write_folder(tmp_path / "parts"), "--iters", "2", "--batch-size", "16",
                    "--save-scores", str(scores)])
    out = capsys.readouterr().out
    assert "40 train/good, 10 test/good and 10 anomalous images (crack) of 28x28 grey, read as 1x28x28" in out
    assert "scoring: one pass of the AE over the 20 samples" in out
    assert r["dataset"] == "parts" and r["normal"] == "-" and r["latent"] == 6
    f = np.load(scores)
    assert f["index"].tolist() == list(range(20)) and f["labels"].tolist() == [0] * 10 + [1] * 10
    assert round(roc_auc_score(f["labels"], f["scores"]), 4) == r["auroc"]


@pytest.fixture
def no_training(monkeypatch):
    def trap(*a, **k):
        raise AssertionError("an optimiser step ran")
    monkeypatch.setattr(torch.optim.Optimizer, "step", trap)
    monkeypatch.setattr(torch.optim.Adam, "step", trap)
    monkeypatch.setattr(torch.optim.AdamW, "step", trap)


def resnet_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("kind", ["csv", "folder", "resnet18-pca"])
def test_save_model_then_load_model_scores_identically_without_training(kind, tiny_root, tmp_path, capsys, request):
    """Round trip: --load-model rebuilds every variant from the checkpoint (the AE or ResNet-18 + PCA, the rows'
    z-scoring, each T_theta with its noise moments and K) and gives the saving run's scores exactly, with no
    optimiser step; --seed and --tabular-split default to the checkpoint's."""
    if kind == "csv":
        X, y = cance.load_tabular("thyroid", tiny_root)
        data = ["--dataset", write_csv(tmp_path / "t.csv", X.numpy() * 100 + 7, y.numpy())]
        train = ["--seed", "2"]
    elif kind == "folder":
        data, train = ["--dataset", write_folder(tmp_path / "f")], ["--batch-size", "16"]
    else:
        data = ["--dataset", "mnist", "--normal", "1", "--data-root", tiny_root]
        train = ["--features", "resnet18-pca", "--weights", resnet_weights(tmp_path), "--image-size", "32"]
    model, first, second = tmp_path / "m.pt", tmp_path / "a.npz", tmp_path / "b.npz"
    saved = cance.main(data + train + ["--iters", "2", "--save-model", str(model), "--save-scores", str(first)])
    capsys.readouterr()
    request.getfixturevalue("no_training")                          # from here on, an optimiser step fails
    loaded = cance.main(data + ["--load-model", str(model), "--save-scores", str(second)])
    assert "its settings and preprocessing, not trained here" in capsys.readouterr().out
    a, b = np.load(first), np.load(second)
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key
    for key in ("auroc", "auroc_error", "auroc_latnce", "auroc_cnce", "k_mean", "latent", "nce_steps", "iters"):
        assert loaded[key] == saved[key], key
    if kind == "csv":
        assert loaded["seed"] == 2                                  # the checkpoint's split of the table


def test_load_model_refuses_another_scripts_checkpoint_another_input_shape_and_a_non_checkpoint(tiny_root, tmp_path,
                                                                                               capsys, request):
    model = cance.fit(np.random.default_rng(0).normal(size=(40, 6)), variants=cance.VARIANTS, latent=2, ae_iters=1,
                      decoder_iters=1, nce_iters=1, batch_size=8, device="cpu", log=QUIET)
    request.getfixturevalue("no_training")                          # from here on, an optimiser step fails
    cance.save(model, str(tmp_path / "rows.pt"))
    cance.save_checkpoint(str(tmp_path / "toll.pt"), "toll", {}, {}, {})
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    cases = [(["--dataset", "mnist", "--normal", "3", "--data-root", tiny_root, "--load-model",
               str(tmp_path / "rows.pt")], "holds a model for inputs of 6 features, but mnist gives 1x28x28"),
             (["--dataset", "thyroid", "--data-root", tiny_root, "--load-model", str(tmp_path / "toll.pt")],
              "is a checkpoint of toll.py, not of cance.py"),
             (["--dataset", "thyroid", "--data-root", tiny_root, "--load-model", str(tmp_path / "junk.pt")],
              "cannot read"),
             (["--dataset", "thyroid", "--data-root", tiny_root, "--load-model", str(tmp_path / "none.pt")],
              "cannot read")]
    for argv, words in cases:
        with pytest.raises(SystemExit) as e:
            cance.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and words in err and "Traceback" not in err, err
    assert np.array_equal(cance.score(cance.load(str(tmp_path / "rows.pt")), np.ones((3, 6))),
                          cance.score(model, np.ones((3, 6))))


def test_constant_scores_are_not_a_result_exit_3_and_nothing_written(tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cance, "score_features", lambda model, z, variant="cance": np.full(len(z), 0.5))
    outs = [tmp_path / "r.json", tmp_path / "s.npz", tmp_path / "m.pt"]
    with pytest.raises(SystemExit) as e:
        cance.main(["--dataset", "thyroid", "--data-root", tiny_root, "--iters", "2", "--json", str(outs[0]),
                    "--save-scores", str(outs[1]), "--save-model", str(outs[2])])
    err = capsys.readouterr().err
    assert e.value.code == 3 and "every cance score of the test set is 0.5" in err and "Traceback" not in err
    assert not any(os.path.exists(p) for p in outs) and os.listdir(tmp_path) == []


def test_score_overflow_is_not_a_result_exit_3(tmp_path, capsys):
    """A test row at 1e30 passes training (it is not in x_train) but its squared reconstruction error overflows
    float32: the scores hold inf, which is an error (exit 3), not a traceback from scikit-learn."""
    rng = np.random.default_rng(0)
    x_test = rng.normal(size=(40, 20))
    x_test[-1] = 1e30
    path = rows_npz(tmp_path / "d.npz", x_test=x_test)
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as e:
        cance.main(["--dataset", path, "--iters", "2", "--json", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 3 and "NaN/inf values of 40" in err and "Traceback" not in err and not out.exists()


def bad_files(tmp_path):
    """(case, --dataset path, extra flags, words the error must hold) on generated files."""
    t = lambda name: str(tmp_path / name)
    rng = np.random.default_rng(0)
    (tmp_path / "text.npz").write_text("not an npz")
    np.savez(t("nokeys.npz"), x_train=rng.normal(size=(20, 4)), x_tst=rng.normal(size=(5, 4)))
    rows_npz(t("lengths.npz"), y_test=np.zeros(39))
    rows_npz(t("labels.npz"), y_test=np.r_[np.zeros(30), np.full(10, 2)])
    x_nan = rng.normal(size=(120, 20))
    x_nan[3, 4] = np.nan
    rows_npz(t("nan.npz"), x_train=x_nan)
    rows_npz(t("allnormal.npz"), y_test=np.zeros(40))
    (tmp_path / "nolabel.csv").write_text("a,b,class\n1,2,0\n3,4,1\n")
    (tmp_path / "text.csv").write_text("a,b,label\n1,x,0\n3,4,1\n")
    write_folder(tmp_path / "notrain")
    shutil.rmtree(tmp_path / "notrain" / "train")
    write_folder(tmp_path / "nodefect")
    shutil.rmtree(tmp_path / "nodefect" / "test" / "crack")
    write_folder(tmp_path / "stray")
    (tmp_path / "stray" / "test" / "crack" / "notes.txt").write_text("x")
    (tmp_path / "plain.txt").write_text("x")
    rows = write_csv(tmp_path / "rows.csv", rng.normal(size=(40, 5)), [0] * 30 + [1] * 10)
    return [("missing-npz", t("none.npz"), [], "cannot read"), ("missing-csv", t("none.csv"), [], "cannot read"),
            ("missing-folder", t("none") + os.sep, [], "does not exist"),
            ("unreadable-npz", t("text.npz"), [], "cannot read"),
            ("npz-keys", t("nokeys.npz"), [], "it holds x_train, x_tst"),
            ("npz-lengths", t("lengths.npz"), [], "x_test has 40 samples but y_test has 39 labels"),
            ("npz-labels", t("labels.npz"), [], "0 (normal) and 1 (anomaly) only"),
            ("npz-nan", t("nan.npz"), [], "x_train holds NaN or inf"),
            ("npz-one-class-test", t("allnormal.npz"), [], "holds no anomalies"),
            ("csv-no-label", t("nolabel.csv"), [], "no column 'label' (columns: a, b, class)"),
            ("csv-text-column", t("text.csv"), [], "column 'b' is not numeric"),
            ("folder-no-train", t("notrain"), [], "no images in train/good"),
            ("folder-no-anomalies", t("nodefect"), [], "no anomaly folder"),
            ("folder-non-image", t("stray"), [], "notes.txt' is not an image"),
            ("neither-kind", "." + os.sep + os.path.relpath(t("plain.txt")), [], "is a file cance.py cannot read"),
            ("rows-to-resnet", rows, ["--features", "resnet18-pca"], "resnet18-pca takes images")]


def test_bad_files_are_one_error_naming_the_file_exit_2_before_training(tmp_path, capsys, no_training):
    for case, path, flags, words in bad_files(tmp_path):
        with pytest.raises(SystemExit) as e:
            cance.main(["--dataset", path, "--iters", "2"] + flags)
        out, err = capsys.readouterr()
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert e.value.code == 2 and len(lines) == 1 and words in err and "Traceback" not in err, (case, err)
        assert os.path.basename(path.rstrip(os.sep)) in err and "iter" not in out, (case, err)


def test_long_phases_report_progress_with_the_time_left(monkeypatch):
    """Training (each AE stage, each NCE model) and each feature pass report through Progress; with its 10 s
    interval shrunk to 0, every step between the logged tenths prints 'i/n ... about Ns left'."""
    real = cance.Progress
    monkeypatch.setattr(cance, "Progress", lambda what, total, log: real(what, total, log, every=0))
    lines = []
    x = np.random.default_rng(0).normal(size=(60, 5))
    model = cance.fit(x, variants=("cance",), latent=2, ae_iters=20, decoder_iters=20, nce_iters=20, batch_size=16,
                      device="cpu", log=lines.append)
    cance.score(model, x, log=lines.append)
    for what in ("ae1 iter 1/20", "ae2 iter 1/20", "cance iter 1/20"):
        assert any(line.startswith(what) and "s left" in line for line in lines), what
    assert sum(line.startswith("AE features 60/60") for line in lines) == 1            # the scoring pass


def test_the_same_images_from_a_folder_and_an_npz_score_identically(tmp_path):
    """A one-channel image folder reads as (N, 1, H, W) with channels-last strides; fit() and score() lay every
    input out row-major first, so the conv kernels (and their rounding) are those of the npz's arrays."""
    from PIL import Image
    folder = write_folder(tmp_path / "f")
    read = lambda sub: np.stack([np.asarray(Image.open(os.path.join(folder, sub, f)))
                                 for f in sorted(os.listdir(os.path.join(folder, sub)))])
    np.savez(tmp_path / "f.npz", x_train=read("train/good"), x_test=np.concatenate([read("test/good"),
                                                                                       read("test/crack")]),
             y_test=[0] * 10 + [1] * 10)
    for source, out in ((folder, "a.npz"), (str(tmp_path / "f.npz"), "b.npz")):
        cance.main(["--dataset", source, "--iters", "3", "--batch-size", "16", "--save-scores", str(tmp_path / out)])
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key
