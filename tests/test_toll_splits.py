"""toll.py --split official: the authors' index files (GitHub Soltanilara/Toll, `val IDs/`), tested on generated
index files in a generated data root (the real copies in ../shared/data/toll_splits are never read here).

Image sets: the listed train-split indices are the labelled validation set, the normal rest trains, the whole test
split tests. Arrhythmia: permutations of the normal and of the anomalous rows cut at np.round(0.2 n), np.round(0.4 n)
into test / validation / rest (the authors' src/data.py). Files that are missing or do not fit the data are a
one-line error and exit 2 before any training."""
import os

import numpy as np
import pytest
import torch

import toll
from common import load_images, load_tabular, standardize


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def root(tiny_root, tmp_path):
    """A data root that links the generated datasets and has its own toll_splits/ folder to write into."""
    for name in os.listdir(tiny_root):
        os.symlink(os.path.join(tiny_root, name), tmp_path / name)
    (tmp_path / "toll_splits").mkdir()
    return tmp_path


def write(root, name, array):
    path = root / "toll_splits" / name
    np.save(path, array)
    return path


def arrhythmia_files(root, seed=0, normal=None, anomalous=None):
    rng = np.random.default_rng(seed)
    n_normal, n_anom = 452 - 66, 66                     # the generated arrhythmia.mat has the real counts
    normal = rng.permutation(n_normal).astype(np.int32) if normal is None else normal
    anomalous = rng.permutation(n_anom).astype(np.int32) if anomalous is None else anomalous
    write(root, "randomized_normal_indices_arrhythmia.npy", normal)
    write(root, "randomized_anomalous_indices_arrhythmia.npy", anomalous)
    return normal, anomalous


def rows(t):
    return {tuple(r.tolist()) for r in t}


def test_official_arrhythmia_split_cuts_the_permutations_at_20_and_40_percent(root):
    normal, anomalous = arrhythmia_files(root)
    split, _ = toll.prepare("arrhythmia", root=str(root), split="official")
    X, y = load_tabular("arrhythmia", str(root))
    Xn, Xa = X[y == 0], X[y == 1]
    # the authors' bounds: np.round(0.2 * 386) = 77, np.round(0.4 * 386) = 154; 66 -> 13, 26
    assert torch.equal(split["test"][0], torch.cat([Xn[normal[:77]], Xa[anomalous[:13]]]))
    assert torch.equal(split["val"][0], torch.cat([Xn[normal[77:154]], Xa[anomalous[13:26]]]))
    assert torch.equal(split["train"], Xn[normal[154:]])
    assert split["test"][1].tolist() == [0] * 77 + [1] * 13 and split["val"][1].tolist() == [0] * 77 + [1] * 13
    assert len(split["train"]) == 232
    assert not (rows(split["train"]) & rows(split["test"][0])) and not (rows(split["val"][0]) & rows(split["test"][0]))


def test_official_split_is_the_same_for_every_seed_random_split_is_not(root):
    arrhythmia_files(root)
    splits = {}
    for kind in ("official", "random"):
        for seed in (0, 1):
            splits[kind, seed] = toll.prepare("arrhythmia", root=str(root), seed=seed, split=kind)[0]["test"][0]
    assert torch.equal(splits["official", 0], splits["official", 1])
    assert not torch.equal(splits["random", 0], splits["random", 1])


@pytest.mark.parametrize("dataset,fname", [("mnist", "10000_val_indices_mnist.npy"),
                                           ("fashion-mnist", "10000_val_indices_fmnist.npy")])
def test_official_image_split_validates_on_exactly_the_listed_train_indices(root, dataset, fname):
    x_tr, y_tr, x_te, y_te = load_images(dataset, str(root))
    idx = np.random.default_rng(1).choice(len(x_tr), 100, replace=False)
    write(root, fname, idx)
    split, normal = toll.prepare(dataset, normal="3", root=str(root), split="official")
    f = lambda x: standardize(x, x_tr.mean(), x_tr.std())
    split = dict(split, train=toll.normalise(split["train"], split["constants"]),     # prepare() keeps them raw
                 val=(toll.normalise(split["val"][0], split["constants"]), split["val"][1]))
    assert torch.equal(split["val"][0], f(x_tr[idx]))
    assert split["val"][1].tolist() == (y_tr[idx] != 3).long().tolist()
    rest = np.setdiff1d(np.arange(len(x_tr)), idx)
    assert torch.equal(split["train"], f(x_tr[rest[(y_tr[rest] == 3).numpy()]]))
    assert len(split["test"][0]) == len(x_te)


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_official_split_runs_end_to_end_on_every_image_dataset(root, torchvision_md5, dataset):
    n_train = 400                                            # conftest's generated train splits
    fname = {"fashion-mnist": "fmnist"}.get(dataset, dataset)
    write(root, f"10000_val_indices_{fname}.npy", np.random.default_rng(2).choice(n_train, 60, replace=False))
    r = toll.main(["--dataset", dataset, "--normal", "1", "--data-root", str(root), "--split", "official",
                   "--iters", "2", "--batch-size", "4", "--eval-every", "1"])
    assert r["split"] == "official" and 0 <= r["auroc"] <= 1 and "val_auroc" in r


def test_official_arrhythmia_runs_end_to_end(root, capsys):
    arrhythmia_files(root)
    r = toll.main(["--dataset", "arrhythmia", "--data-root", str(root), "--split", "official", "--iters", "3",
                   "--eval-every", "1"])
    assert r["split"] == "official" and "f1" in r and "val_f1" in r
    assert "train=232 val=90 test=90" in capsys.readouterr().out


def bad_exit(argv, capsys, monkeypatch):
    """main(argv) must exit 2 with one 'error:' line, before any optimiser step."""
    def no_training(*a, **k):
        raise AssertionError("an optimiser step ran: the bad input was not rejected before training")
    monkeypatch.setattr(torch.optim.Adam, "step", no_training)
    with pytest.raises(SystemExit) as e:
        toll.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_missing_split_files_name_the_files_and_where_they_come_from(root, capsys, monkeypatch):
    write(root, "randomized_normal_indices_arrhythmia.npy", np.arange(386))
    err = bad_exit(["--dataset", "arrhythmia", "--data-root", str(root), "--split", "official"], capsys, monkeypatch)
    assert "randomized_anomalous_indices_arrhythmia.npy is not there" in err
    assert "Soltanilara/Toll" in err and str(root / "toll_splits") in err and "--split random" in err
    err = bad_exit(["--dataset", "mnist", "--data-root", str(root), "--split", "official"], capsys, monkeypatch)
    assert "10000_val_indices_mnist.npy is not there" in err


@pytest.mark.parametrize("case,normal,anomalous,words", [
    ("out-of-range", np.r_[np.arange(385), 386], None, "index 386 is out of range"),
    ("negative", np.r_[-1, np.arange(1, 386)], None, "index -1 is out of range"),
    ("duplicate", np.r_[np.arange(385), 0], None, "index 0 appears 2 times"),
    ("too-short", np.arange(385), None, "holds 385 indices, but the data has 386 normal rows (y = 0)"),
    ("too-long", np.arange(387), None, "holds 387 indices"),
    ("anomalous-wrong-length", None, np.arange(65), "holds 65 indices, but the data has 66 anomalous rows"),
    ("float", np.arange(386, dtype=float), None, "1-D array of integer indices"),
    ("two-d", np.arange(386).reshape(2, 193), None, "1-D array of integer indices"),
])
def test_arrhythmia_index_file_that_does_not_fit_is_an_error(root, capsys, monkeypatch, case, normal, anomalous,
                                                             words):
    arrhythmia_files(root, normal=normal, anomalous=anomalous)
    err = bad_exit(["--dataset", "arrhythmia", "--data-root", str(root), "--split", "official"], capsys, monkeypatch)
    assert words in err and "arrhythmia.npy" in err, err


@pytest.mark.parametrize("case,idx,words", [
    ("out-of-range", np.r_[np.arange(99), 400], "index 400 is out of range"),
    ("duplicate", np.r_[np.arange(99), 5], "index 5 appears 2 times"),
    ("whole-train-split", np.arange(400), "holds 400 indices, but the data has 400 train-split images"),
    ("empty", np.array([], dtype=np.int64), "holds 0 indices"),
])
def test_image_index_file_that_does_not_fit_is_an_error(root, capsys, monkeypatch, case, idx, words):
    write(root, "10000_val_indices_mnist.npy", idx)
    err = bad_exit(["--dataset", "mnist", "--data-root", str(root), "--split", "official"], capsys, monkeypatch)
    assert words in err and "10000_val_indices_mnist.npy" in err, err


def test_corrupt_index_file_is_named(root, capsys, monkeypatch):
    (root / "toll_splits" / "10000_val_indices_mnist.npy").write_bytes(b"\x93NUMPY garbage")
    err = bad_exit(["--dataset", "mnist", "--data-root", str(root), "--split", "official"], capsys, monkeypatch)
    assert "10000_val_indices_mnist.npy is not a readable .npy index file" in err


@pytest.mark.parametrize("argv,words", [
    (["--dataset", "thyroid"], "ship no index files for thyroid"),
    (["--dataset", "digits"], "ship no index files for digits"),
    (["--dataset", "mnist", "--val-size", "100"], "--val-size does not apply with --split official"),
])
def test_official_split_refuses_what_it_cannot_do(root, capsys, monkeypatch, argv, words):
    write(root, "10000_val_indices_mnist.npy", np.arange(100))
    err = bad_exit(argv + ["--data-root", str(root), "--split", "official"], capsys, monkeypatch)
    assert words in err
