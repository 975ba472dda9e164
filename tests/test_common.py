"""common.py: dataset loading through the real torchvision / scipy paths, the one-class protocol,
preprocessing, ResNet shapes, and the clear errors for bad input."""
import os

import pytest
import torch

import common


@pytest.mark.parametrize("name,shape,n_classes", [
    ("mnist", (1, 28, 28), 10), ("fashion-mnist", (1, 28, 28), 10), ("cifar10", (3, 32, 32), 10),
    ("cifar100", (3, 32, 32), 20), ("svhn", (3, 32, 32), 10)])
def test_load_images_through_torchvision(tiny_root, torchvision_md5, name, shape, n_classes):
    x_tr, y_tr, x_te, y_te = common.load_images(name, tiny_root)
    assert x_tr.shape[1:] == shape and x_te.shape[1:] == shape
    assert x_tr.dtype == torch.float32 and 0 <= x_tr.min() and x_tr.max() <= 1
    assert set(y_tr.tolist()) == set(range(n_classes)) and len(y_te) == len(x_te)


def test_cifar100_uses_coarse_superclass_labels(tiny_root, torchvision_md5):
    _, y, _, _ = common.load_images("cifar100", tiny_root)
    assert y.max() == 19  # the fine labels written by the fixture go up to 95


def test_svhn_digit_zero_is_class_zero(tiny_root, torchvision_md5):
    _, y, _, _ = common.load_images("svhn", tiny_root)
    assert y.min() == 0 and y.max() == 9


def test_digits_needs_no_files():
    x_tr, y_tr, x_te, y_te = common.load_images("digits", "/nonexistent")
    assert x_tr.shape[1:] == (1, 28, 28) and len(x_tr) + len(x_te) == 1797


def test_omniglot_small_subset_fallback(tiny_root):
    x, y = common.load_omniglot(tiny_root)
    assert x.shape == (30, 1, 28, 28) and y.max() == 5
    assert x.mean() < 0.5  # strokes bright on a dark background, like MNIST


@pytest.mark.parametrize("name,d", [("arrhythmia", 274), ("thyroid", 6), ("abalone", 10)])
def test_load_tabular(tiny_root, name, d):
    X, y = common.load_tabular(name, tiny_root)
    assert X.shape[1] == d and set(y.tolist()) == {0, 1}


def test_abalone_keeps_rings_3_21_as_anomalies_and_8_9_10_as_normal(tiny_root):
    X, y = common.load_tabular("abalone", tiny_root)
    assert int(y.sum()) == 20 and len(y) == 20 + 285  # fixture: 20 anomalies; rings 5 are dropped


def test_missing_data_offline_is_a_clear_error(tmp_path):
    for load in (lambda: common.load_images("mnist", str(tmp_path)), lambda: common.load_tabular("thyroid", str(tmp_path)),
                 lambda: common.load_omniglot(str(tmp_path))):
        with pytest.raises(common.DataError) as e:
            load()
        assert str(tmp_path) in str(e.value) and "--data-root" in str(e.value)


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(common.DataError, match="unknown image dataset"):
        common.load_images("imagenet")


@pytest.mark.parametrize("text,err", [("x", "comma list"), ("10", "out of range"), ("-1", "out of range"),
                                      ("1,1", "twice"), (",".join(map(str, range(10))), "every class")])
def test_parse_normal_rejects_bad_input(text, err):
    with pytest.raises(common.DataError, match=err):
        common.parse_normal(text, 10)


def test_parse_normal_accepts_one_or_many():
    assert common.parse_normal("8", 10) == [8]
    assert common.parse_normal("3,0", 10) == [0, 3]


def test_one_class_split_protocol():
    x = torch.arange(100).float().view(100, 1)
    y = torch.arange(100) % 10
    s = common.one_class_split(x, y, x[:50], y[:50], [2, 3], val_size=20, seed=0)
    train_ids = set(s["train"].view(-1).long().tolist())
    val_x, val_y = s["val"]
    assert all(i % 10 in (2, 3) for i in train_ids)                      # train: normal samples only
    assert train_ids.isdisjoint(val_x.view(-1).long().tolist())          # hold-out removed from training
    assert (val_y == (~torch.isin(val_x.view(-1).long() % 10, torch.tensor([2, 3]))).long()).all()
    assert s["test"][1].tolist() == [0 if i % 10 in (2, 3) else 1 for i in range(50)]
    with pytest.raises(common.DataError, match="impossible"):
        common.one_class_split(x, y, x, y, [2], val_size=100)


def test_preprocessing_by_name():
    x = torch.rand(4, 3, 8, 8)
    g = common.global_contrast_normalization(x)
    assert torch.allclose(g.flatten(1).mean(1), torch.zeros(4), atol=1e-5)
    assert torch.allclose(g.flatten(1).abs().mean(1), torch.ones(4), atol=1e-5)
    m = common.minmax_scale(g, g.min(), g.max())
    assert m.min() == 0 and m.max() == 1
    assert common.to_minus1_1(torch.tensor([0.0, 1.0])).tolist() == [-1.0, 1.0]
    assert torch.allclose(common.standardize(torch.tensor([0.5]), 0.25, 0.5), torch.tensor([0.5]))


def test_resnet18_for_32x32():
    net = common.ResNet18(in_channels=3, width=8)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    full = common.ResNet18()
    assert full.out_dim == 512 and sum(p.numel() for p in full.parameters()) == 11168832
