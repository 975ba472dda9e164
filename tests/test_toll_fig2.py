"""Fig. 2's claim (004_b6afa29a94aab1dd.txt, caption line 144) and Theorem 2 (Eq. 9-10) on the linear autoencoder
of benchmarks/toll_figures.py: 2-D Gaussian with variances 4 (x1) and 1 (x2), 1-D latent, loss and score
(1 - beta) * rec + beta * norm. Without the norm term the AE encodes x1, so its score is flat along x1 and grows only
with |x2|; with it, points far out along x1 score high too, and the code keeps some x2 (line 144: "prevents the
complete vanishing of variation along x2 in the bottleneck"). No matplotlib needed."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import toll_figures as tf  # noqa: E402

BETA = 0.8   # the figure's beta (benchmarks/toll_figures.py)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    X = tf.gaussian_2d()
    return X, {b: tf.fit_linear_ae(X, 1 - b, b) for b in (0.0, BETA)}


def score(W, b, pts):
    return tf.linear_ae_score(torch.tensor(pts, dtype=torch.float64), *W, 1 - b, b)


def test_data_has_the_captions_variances():
    X = tf.gaussian_2d()
    var = X.var(0)
    assert var[0].item() == pytest.approx(4.0, rel=0.1) and var[1].item() == pytest.approx(1.0, rel=0.1)


def test_without_the_norm_term_the_score_is_flat_along_x1_and_grows_with_x2(fitted):
    X, W = fitted
    train = tf.linear_ae_score(X, *W[0.0], 1.0, 0.0)
    along_x1 = score(W[0.0], 0.0, [[2.0, 0.0], [4.0, 0.0], [6.0, 0.0], [8.0, 0.0], [-8.0, 0.0]])
    along_x2 = score(W[0.0], 0.0, [[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]])
    assert along_x1.max() < train.median()          # 4 std out along x1 scores like a typical normal sample
    assert (along_x2.diff() > 0).all() and along_x2[-1] > train.quantile(0.99)
    w1 = W[0.0][0][0]
    assert abs(w1[1] / w1[0]) < 0.05                 # the code is (nearly) x1 alone: the first principal component


def test_with_the_norm_term_far_points_along_x1_score_high(fitted):
    X, W = fitted
    train = tf.linear_ae_score(X, *W[BETA], 1 - BETA, BETA)
    assert score(W[BETA], BETA, [[6.0, 0.0]]) > train.quantile(0.95)      # 3 std along x1
    assert score(W[BETA], BETA, [[8.0, 0.0]]) > train.quantile(0.99)      # 4 std along x1
    assert score(W[BETA], BETA, [[-8.0, 0.0]]) > train.quantile(0.99)


def test_the_norm_term_keeps_x2_in_the_code_and_ranks_the_3_sigma_ellipse_higher(fitted):
    X, W = fitted
    w0, wb = W[0.0][0][0], W[BETA][0][0]
    assert abs(wb[1] / wb[0]) > 3 * abs(w0[1] / w0[0])     # x2 kept in the code (seed 0: 0.049 vs 0.013)
    auc0, aucb = tf.ring_auroc(X, *W[0.0], 0.0), tf.ring_auroc(X, *W[BETA], BETA)
    assert aucb > auc0 + 0.1 and aucb > 0.95


def test_theorem2_gradient_of_eq9_is_minus_eq10():
    """Eq. (9) L = 1/(2n) sum (X_hat - X)^2 + beta/(2n) sum Z^2; gradient flow (Eq. 10a/10b):
    dW1/dt = [W2^T - W2^T W2 W1 - beta W1] S,  dW2/dt = [I - W2 W1] S W1^T,  S = X^T X / n (samples as rows)."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(200, 4, generator=g, dtype=torch.float64)
    W1 = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    W2 = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    beta = 0.7
    loss = tf.linear_ae_score(X, W1, W2, 1.0, beta).mean()                       # Eq. (9)
    g1, g2 = torch.autograd.grad(loss, (W1, W2))
    S, I = X.T @ X / len(X), torch.eye(4, dtype=torch.float64)
    W1, W2 = W1.detach(), W2.detach()
    assert torch.allclose(-g1, (W2.T - W2.T @ W2 @ W1 - beta * W1) @ S)       # Eq. (10a)
    assert torch.allclose(-g2, (I - W2 @ W1) @ S @ W1.T)                       # Eq. (10b)
