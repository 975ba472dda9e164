"""What the five reproductions share and that belongs to none of the papers, once.

Sections, in this order:
    built-in data   the datasets the papers use, read into tensors (torchvision, scikit-learn's digits, Omniglot,
                    MNIST-C, the tabular sets), the one-class protocol and the preprocessing the papers name
    your data       --dataset PATH: .npz (split, or X and y), .csv or .mat tables, image folders (MVTec AD layout);
                    the one split rule for unsplit data
    ResNet blocks   a CIFAR-style ResNet-18
    run layer       the command line every script shares: flags and argument types, progress lines, the
                    NaN/inf/constant-score guard, the RESULT line, JSON with provenance, score files,
                    checkpoints and the exit codes

It never holds a model of a paper, a loss, a training loop or a score: those stay in each paper's script.
Copying a method into another project = copying its script and this file.

Where the data lives: ``--data-root`` if given, else the environment variable ``AD_DATA_ROOT``, else ``./data``,
in torchvision's layout (``ROOT/MNIST/raw/...``, ``ROOT/cifar-10-batches-py/...``); tabular files in ``ROOT`` or
``ROOT/tabular``. Missing files are downloaded; ``AD_OFFLINE=1`` never tries. Every data problem raises
``DataError`` with a readable message; the scripts print it and exit with status 2.
"""
import argparse
import contextlib
import json
import math
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE_DATASETS = {  # name -> (number of classes, channels, side)
    "mnist": (10, 1, 28),
    "fashion-mnist": (10, 1, 28),
    "digits": (10, 1, 28),
    "cifar10": (10, 3, 32),
    "cifar100": (20, 3, 32),  # the 20 superclasses (coarse labels), as every one-class paper uses them
    "svhn": (10, 3, 32),
}
TABULAR_DATASETS = ("arrhythmia", "thyroid", "abalone")
ENV_ROOT, ENV_OFFLINE = "AD_DATA_ROOT", "AD_OFFLINE"


class DataError(Exception):
    """A dataset or protocol problem the user can fix; scripts print it without a traceback."""


def data_root(arg=None):
    """--data-root, else $AD_DATA_ROOT, else ./data."""
    return os.path.expanduser(arg or os.environ.get(ENV_ROOT) or "./data")


def _offline():
    return os.environ.get(ENV_OFFLINE, "") not in ("", "0")


def _missing(what, root, expected, why):
    return DataError(
        f"{what} was not found under '{root}' and could not be downloaded ({why}). Expected {expected}. "
        f"Point --data-root (or the environment variable {ENV_ROOT}) at a folder holding these files in "
        f"torchvision's layout, e.g. --data-root ./data, or run once with network access so "
        f"torchvision can download them there.")


# ======================================================================================================================
# BUILT-IN DATA: the datasets the papers use, the one-class protocol, the preprocessing the papers name
# ======================================================================================================================

# ------------------------------------------------------------------------------------------ images

_IMAGE_FILES = {
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (or the .gz originals)",
    "fashion-mnist": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (or the .gz originals)",
    "cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (md5-exact originals)",
    "cifar100": "cifar-100-python/{train,test,meta} (md5-exact originals)",
    "svhn": "train_32x32.mat and test_32x32.mat (md5-exact originals)",
}


def _torchvision_split(name, root, train):
    import torchvision.datasets as tvd
    download = not _offline()
    if name == "mnist":
        return tvd.MNIST(root, train=train, download=download)
    if name == "fashion-mnist":
        return tvd.FashionMNIST(root, train=train, download=download)
    if name == "cifar10":
        return tvd.CIFAR10(root, train=train, download=download)
    if name == "cifar100":
        return tvd.CIFAR100(root, train=train, download=download)
    if name == "svhn":
        return tvd.SVHN(root, split="train" if train else "test", download=download)
    raise AssertionError(name)


def _images_and_labels(name, ds, train):
    """torchvision dataset object -> (uint8 N×C×H×W, int64 N) without going through PIL per image."""
    if name in ("mnist", "fashion-mnist"):
        return ds.data.unsqueeze(1).clone(), torch.as_tensor(ds.targets, dtype=torch.int64)
    if name == "cifar10":
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets)
    if name == "cifar100":
        # torchvision exposes only the 100 fine labels; the pickles also hold the 20 coarse ones.
        files = ds.train_list if train else ds.test_list
        coarse = []
        for file_name, _ in files:
            with open(os.path.join(ds.root, ds.base_folder, file_name), "rb") as f:
                coarse.extend(pickle.load(f, encoding="latin1")["coarse_labels"])
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(coarse)
    if name == "svhn":
        return torch.from_numpy(ds.data).contiguous(), torch.as_tensor(ds.labels, dtype=torch.int64)
    raise AssertionError(name)


def _digits():
    """scikit-learn's bundled 8×8 digits (1797 images, values 0..16) resized to 28×28 in [0, 1].
    Fixed split: every third image (index % 3 == 0) is the test split."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0            # (1797, 1, 8, 8)
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(d.target, dtype=torch.int64)
    test = torch.arange(len(y)) % 3 == 0
    return x[~test], y[~test], x[test], y[test]


_IDX_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_TV_FILES = {  # the files torchvision checks by md5 before reading them
    "cifar10": ["cifar-10-batches-py/" + f for f in ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch",
                                                                                              "batches.meta"]],
    "cifar100": ["cifar-100-python/" + f for f in ("train", "test", "meta")],
    "svhn": ["train_32x32.mat", "test_32x32.mat"],
}


def _check_idx_files(name, root):
    """A present but truncated or corrupt MNIST/Fashion-MNIST IDX file -> DataError naming it (torchvision would
    fail on it with a shape error that reads like a missing dataset)."""
    folder = os.path.join(root, _IDX_FOLDER[name], "raw")
    for prefix in ("train", "t10k"):
        for kind, magic, dims in (("images-idx3", 2051, 3), ("labels-idx1", 2049, 1)):
            path = os.path.join(folder, f"{prefix}-{kind}-ubyte")
            if not os.path.exists(path):
                continue
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(4 + 4 * dims)
            if len(head) < 4 + 4 * dims:
                why = f"it has {size} bytes, fewer than an IDX header"
            else:
                m, *shape = (int.from_bytes(head[i:i + 4], "big") for i in range(0, len(head), 4))
                expected = 4 + 4 * dims + int(np.prod(shape))
                if m != magic:
                    why = f"its magic number is {m}, not {magic}: it is not an IDX {kind[-4:]} file"
                elif size != expected:
                    why = (f"its header announces {shape[0]} items ({expected} bytes) but the file has {size} bytes "
                           "(truncated or corrupt)")
                else:
                    continue
            raise DataError(f"{name} file '{path}' is unusable: {why}. Delete it (and its .gz) so that torchvision "
                            "downloads it again, or copy a complete original there")


def _corrupt_torchvision_files(name, root):
    """For md5-checked datasets: the expected files that are present (if all are, they failed torchvision's md5)."""
    paths = [os.path.join(root, f) for f in _TV_FILES.get(name, [])]
    return paths if paths and all(os.path.exists(p) for p in paths) else []


_DOWNLOAD_FOLDERS = {"mnist": ("MNIST", "MNIST/raw"), "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw")}


def _new_folders(root, candidates):
    """Remembers which of the candidate folders exist now; the returned call removes those created since that are
    still empty (deepest first), e.g. what a failed download made."""
    existed = {d for d in candidates if os.path.exists(d)}

    def clean():
        for d in sorted(set(candidates) - existed, key=len, reverse=True):
            if os.path.isdir(d) and not os.listdir(d):
                os.rmdir(d)
    return clean


def _reason(e):
    """An exception as one line, with the causes torchvision puts on the lines after 'Error downloading x:'."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:400]}{'...' if len(text) > 400 else ''}"


def load_images(name, root=None):
    """Return (x_train, y_train, x_test, y_test): float32 N×C×H×W in [0, 1] and int64 class labels."""
    if name not in IMAGE_DATASETS:
        raise DataError(f"unknown image dataset '{name}'. Choose one of {', '.join(IMAGE_DATASETS)}")
    if name == "digits":
        return _digits()
    root = data_root(root)
    if name in _IDX_FOLDER:
        _check_idx_files(name, root)
    out, folders = [], _new_folders(root, [root, *(os.path.join(root, d) for d in _DOWNLOAD_FOLDERS.get(name, ()))])
    for train in (True, False):
        try:
            ds = _torchvision_split(name, root, train)
        except Exception as e:  # torchvision raises RuntimeError / URLError / OSError when files are absent
            folders()                                       # a failed download leaves no empty folder behind
            present = _corrupt_torchvision_files(name, root)
            if present:
                names = ", ".join(os.path.relpath(p, root) for p in present)
                raise DataError(f"{name}: the files are in '{root}' ({names}) "
                                "but torchvision rejects them: their md5 does not match the originals (truncated or "
                                "corrupt copy?). Replace them with the original files, or delete them so that "
                                "torchvision downloads them again") from None
            why = "downloads disabled by AD_OFFLINE" if _offline() else _reason(e)
            raise _missing(name, root, _IMAGE_FILES[name], why) from None
        x, y = _images_and_labels(name, ds, train)
        out += [x.float().div_(255.0), y.long()]
    return tuple(out)


def load_omniglot(root=None, size=28):
    """Omniglot background images as float32 N×1×size×size in [0, 1], strokes bright on black (like MNIST).

    Sources, first found wins: torchvision's ``ROOT/omniglot-py`` (background set; downloaded if allowed);
    the official small subsets ``images_background_small1.zip`` / ``images_background_small2.zip`` in ROOT
    or ROOT/omniglot_subsets (2720 + 3120 images). Labels are character indices."""
    from PIL import Image
    root = data_root(root)
    try:
        import torchvision.datasets as tvd
        ds = tvd.Omniglot(root, background=True, download=not _offline())
        paths = [(os.path.join(ds.target_folder, ds._characters[c], f), c) for f, c in ds._flat_character_images]
        images = [np.asarray(Image.open(p).convert("L")) for p, _ in paths]
        labels = [c for _, c in paths]
        if not images:
            raise ValueError("no images in omniglot-py")                 # an empty extracted folder: try the zips
    except Exception:
        images, labels, chars, found = [], [], {}, []
        for sub in ("", "omniglot_subsets"):
            for k in (1, 2):
                zpath = os.path.join(root, sub, f"images_background_small{k}.zip")
                if not os.path.exists(zpath):
                    continue
                found.append(zpath)
                try:
                    with zipfile.ZipFile(zpath) as z:
                        for n in sorted(z.namelist()):
                            if n.endswith(".png"):
                                with z.open(n) as f:
                                    images.append(np.asarray(Image.open(f).convert("L")))
                                labels.append(chars.setdefault(os.path.dirname(n), len(chars)))
                except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:   # PIL's errors are OSErrors
                    raise DataError(f"'{zpath}' is not a readable zip archive of Omniglot PNGs ({type(e).__name__}: "
                                    f"{e}). Download it again (github.com/brendenlake/omniglot, python/"
                                    f"images_background_small{k}.zip)") from None
        folders = [d for d in (os.path.join(root, "omniglot_subsets"), os.path.join(root, "omniglot-py"))
                   if os.path.isdir(d)]
        if not images and (found or folders):
            raise DataError(f"no Omniglot images (.png) in {', '.join(found or folders)}. Put the official "
                            "images_background_small1.zip / images_background_small2.zip (github.com/brendenlake/"
                            "omniglot, python/) into ROOT/omniglot_subsets, or torchvision's "
                            "omniglot-py/images_background.zip into ROOT, and pass --data-root ROOT") from None
        if not images:
            raise _missing("omniglot", root, "omniglot-py/images_background.zip (torchvision) or "
                           "images_background_small1.zip / images_background_small2.zip (in ROOT or "
                           "ROOT/omniglot_subsets)", "downloads disabled by AD_OFFLINE" if _offline()
                           else "torchvision download failed") from None
    x = torch.from_numpy(np.stack(images)).float().unsqueeze(1) / 255.0           # (N, 1, 105, 105)
    x = 1.0 - x                                                                    # white strokes on black
    x = F.interpolate(x, size=(size, size), mode="area")                           # area = antialiased
    return x, torch.tensor(labels, dtype=torch.int64)


MNIST_C_URL = "https://zenodo.org/record/3239543 (mnist_c.zip; code: github.com/google-research/mnist-c)"


def _mnist_c_array(path, what):
    """One MNIST-C .npy file -> uint8 (N, 28, 28) images or int64 (N,) labels; DataError naming the file."""
    if not os.path.exists(path):
        raise DataError(f"MNIST-C file '{path}' was not found. MNIST-C is not downloaded automatically: get "
                        f"{MNIST_C_URL}, unzip it into the data root (it creates ROOT/mnist_c/<corruption>/"
                        f"{{train,test}}_{{images,labels}}.npy) and pass --data-root ROOT")
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"MNIST-C file '{path}' is not a readable .npy array ({type(e).__name__}: {e}). "
                        f"Download it again from {MNIST_C_URL}") from None
    if what == "images":
        if a.ndim == 4 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim != 3 or a.shape[1:] != (28, 28):
            raise DataError(f"MNIST-C file '{path}' holds an array of shape {a.shape}; expected (N, 28, 28, 1) "
                            f"images. Download it again from {MNIST_C_URL}")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8))
    if a.ndim != 1:
        raise DataError(f"MNIST-C file '{path}' holds an array of shape {a.shape}; expected (N,) labels")
    return torch.from_numpy(a.astype(np.int64))


def load_mnist_c(corruptions, root=None):
    """MNIST-C (Mu & Gilmer, 2019) in its public layout ``ROOT/mnist_c/<corruption>/{train,test}_{images,labels}.npy``
    (``identity`` = the original MNIST). The protocol of CANCE's Table 3 (after Lee & Lee, 2023): every image of
    MNIST's training split (``identity/train_images.npy``) is normal training data; the test set is MNIST's test
    split (``identity/test_images.npy``, label 0) plus the test images of each corruption in ``corruptions``
    (label 1). Never downloaded (the archive is large): a missing file is a DataError saying where to get it.
    Returns (x_train, x_test, y_test, source): float32 N×1×28×28 in [0, 1], int64 anomaly labels, and int64
    source indices (0 = identity, k = corruptions[k - 1])."""
    base = os.path.join(data_root(root), "mnist_c")
    x_train = _mnist_c_array(os.path.join(base, "identity", "train_images.npy"), "images")
    parts = [_mnist_c_array(os.path.join(base, "identity", "test_images.npy"), "images")]
    for c in corruptions:
        parts.append(_mnist_c_array(os.path.join(base, c, "test_images.npy"), "images"))
    source = torch.cat([torch.full((len(p),), k, dtype=torch.int64) for k, p in enumerate(parts)])
    to_float = lambda x: x.unsqueeze(1).float().div_(255.0)                        # (N, 1, 28, 28)
    return to_float(x_train), to_float(torch.cat(parts)), (source > 0).long(), source


# ------------------------------------------------------------------------------------------ tabular

_TABULAR_URLS = {
    "arrhythmia": ("arrhythmia.mat", "https://github.com/yzhao062/pyod/raw/master/data/arrhythmia.mat"),
    "thyroid": ("38_thyroid.npz",
                "https://github.com/Minqi824/ADBench/raw/main/adbench/datasets/Classical/38_thyroid.npz"),
    "abalone": ("abalone.data", "https://archive.ics.uci.edu/ml/machine-learning-databases/abalone/abalone.data"),
}
_TABULAR_FILES = {
    "arrhythmia": ["arrhythmia.mat", "arrhythmia.data"],
    "thyroid": ["thyroid.mat", "38_thyroid.npz"],
    "abalone": ["abalone.data"],
}


def _find_or_download(name, root):
    for sub in ("", "tabular"):
        for fname in _TABULAR_FILES[name]:
            p = os.path.join(root, sub, fname)
            if os.path.exists(p):
                return p
    expected = " or ".join(_TABULAR_FILES[name]) + " in ROOT or ROOT/tabular"
    if _offline():
        raise _missing(name, root, expected, "downloads disabled by AD_OFFLINE")
    fname, url = _TABULAR_URLS[name]
    dest = os.path.join(root, "tabular", fname)
    clean = _new_folders(root, [root, os.path.dirname(dest)])
    try:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        urllib.request.urlretrieve(url, dest + ".part")
        os.replace(dest + ".part", dest)
    except Exception as e:
        if os.path.exists(dest + ".part"):
            os.remove(dest + ".part")
        clean()
        raise _missing(name, root, expected, _reason(e)) from None
    return dest


def load_tabular(name, root=None):
    """Return (X float32 N×D, y int64 N with 1 = anomaly) as the anomaly-detection literature uses them.

    arrhythmia: ODDS version, 452×274, classes 3,4,5,7,8,9,14,15 anomalous (66). From ``arrhythmia.mat``;
        the UCI ``arrhythmia.data`` gives the same matrix after dropping its five columns with missing values.
    thyroid:    ODDS version, 3772×6, 93 anomalies (``thyroid.mat`` or ADBench's ``38_thyroid.npz``).
    abalone:    UCI, sex one-hot + 7 measurements (10 features); rings 3 and 21 anomalous, rings 8, 9, 10
        normal, all other rows dropped (the protocol of DROCC/GOAD-style tabular benchmarks).
    """
    if name not in TABULAR_DATASETS:
        raise DataError(f"unknown tabular dataset '{name}'. Choose one of {', '.join(TABULAR_DATASETS)}")
    path = _find_or_download(name, data_root(root))
    try:
        if path.endswith(".mat"):
            import scipy.io
            m = scipy.io.loadmat(path)
            X, y = m["X"], m["y"].ravel()
        elif path.endswith(".npz"):
            d = np.load(path)
            X, y = d["X"], d["y"].ravel()
        elif name == "arrhythmia":  # UCI raw file: 279 features + class, '?' for missing values
            rows = [line.strip().split(",") for line in open(path) if line.strip()]
            raw = np.array([[np.nan if v == "?" else float(v) for v in r] for r in rows])
            X, cls = raw[:, :-1], raw[:, -1].astype(int)
            X = X[:, ~np.isnan(X).any(0)]
            y = np.isin(cls, [3, 4, 5, 7, 8, 9, 14, 15]).astype(int)
        else:  # abalone.data: sex,length,diameter,height,whole,shucked,viscera,shell,rings
            rows = [line.strip().split(",") for line in open(path) if line.strip()]
            sex = np.array([[r[0] == s for s in "MFI"] for r in rows], dtype=float)
            num = np.array([[float(v) for v in r[1:8]] for r in rows])
            rings = np.array([int(r[8]) for r in rows])
            keep = np.isin(rings, [3, 21, 8, 9, 10])
            X, y = np.concatenate([sex, num], 1)[keep], np.isin(rings[keep], [3, 21]).astype(int)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"could not read {name} from '{path}' ({type(e).__name__}: {e}). The file is corrupt or "
                        "not the expected format: replace it with the original, or delete it so it is downloaded "
                        "again") from None
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


# ------------------------------------------------------------------------------------------ protocol

def parse_normal(text, n_classes):
    """'8' or '0,1' -> sorted list of distinct class indices in [0, n_classes); clear errors otherwise."""
    try:
        classes = [int(t) for t in str(text).split(",")]
    except ValueError:
        raise DataError(f"--normal must be a class index or a comma list like 0,1 (got '{text}'). "
                        f"Pass e.g. --normal 3 or --normal 0,1 (classes 0..{n_classes - 1})") from None
    bad = [c for c in classes if not 0 <= c < n_classes]
    if bad:
        raise DataError(f"--normal class {bad[0]} is out of range: this dataset has classes 0..{n_classes - 1}. "
                        "Pick classes in that range")
    if len(set(classes)) != len(classes):
        raise DataError(f"--normal lists a class twice ('{text}'). Name each normal class once")
    if len(classes) == n_classes:
        raise DataError("--normal names every class: nothing would be left as an anomaly. Leave at least one "
                        "class out of --normal")
    return sorted(classes)


def is_anomaly(y, normal):
    """Class labels -> anomaly labels (1 = not one of the normal classes)."""
    return (~torch.isin(y, torch.as_tensor(normal))).long()


def one_class_split(x_train, y_train, x_test, y_test, normal, val_size=0, seed=0):
    """The one-class protocol: train on the normal samples of the train split, test on the whole test split
    (label 1 = anomaly). With val_size > 0, a random hold-out of that many samples of the train split
    (normal and anomalous, labelled like the test set) is removed first, for papers that select models on it.
    Returns dict(train=x, val=(x, y) or None, test=(x, y))."""
    if val_size < 0 or val_size >= len(x_train):
        raise DataError(f"validation size {val_size} is impossible for a train split of {len(x_train)} samples. "
                        f"Pass --val-size between 0 and {len(x_train) - 1}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x_train), generator=g)
    val_idx, rest = perm[:val_size], perm[val_size:]
    rest = rest[torch.isin(y_train[rest], torch.as_tensor(normal))].sort().values
    if len(rest) == 0:
        raise DataError(f"no training samples of normal class(es) {normal} are left after the validation hold-out. "
                        "Pass a smaller --val-size")
    val = (x_train[val_idx], is_anomaly(y_train[val_idx], normal)) if val_size else None
    return {"train": x_train[rest], "val": val, "test": (x_test, is_anomaly(y_test, normal))}


# ------------------------------------------------------------------------------------------ preprocessing

def standardize(x, mean, std):
    """Standardisation (x - mean) / std: scalars of a whole training split (MNIST 0.1307/0.3081, Fashion-MNIST
    0.2860/0.3530 on the full sets), or per-column vectors of a table's training rows (row_moments)."""
    return (x - mean) / std


def global_contrast_normalization(x):
    """GCN with the L1 norm, per image: subtract the image mean, divide by the mean absolute deviation."""
    flat = x.flatten(1)
    flat = flat - flat.mean(1, keepdim=True)
    return (flat / flat.abs().mean(1, keepdim=True).clamp_min(1e-12)).view_as(x)


def minmax_scale(x, lo, hi):
    """Min-max scaling with scalars lo/hi (Deep SVDD: taken from the normal class's training images)."""
    return (x - lo) / (hi - lo)


def to_minus1_1(x):
    """[0, 1] -> [-1, 1]."""
    return x * 2.0 - 1.0


# ======================================================================================================================
# YOUR DATA: --dataset PATH (.npz, .csv, .mat, an image folder) read into the tensors the scripts take; one split rule
# ======================================================================================================================

# ------------------------------------------------------------------------------------------ your own data

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_user_dataset(name):
    """--dataset NAME, where NAME is none of the script's built-in datasets, names a file or folder of the user's."""
    return name.endswith((".npz", ".csv", ".mat")) or os.sep in name or os.path.isdir(name)


def fit_images(x, channels, size):
    """(N, C, H, W) in [0, 1] -> (N, channels, size, size), the input an architecture takes: RGB -> grey by ITU-R
    601 luma, grey -> RGB by repetition, then an antialiased resize when the side differs."""
    if x.shape[1] == 3 and channels == 1:
        x = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    elif x.shape[1] == 1 and channels == 3:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return x.clone(memory_format=torch.contiguous_format)   # row-major strides (a view of C = 1 may have others)


def _finite(x, path, key):
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise DataError(f"{path}: {key} holds NaN or inf (first at index {tuple(int(i) for i in bad)}). Remove or "
                        "impute those values first")


def _binary(y, path, key):
    values = sorted(set(np.unique(y).tolist()))
    if not set(values) <= {0, 1}:
        raise DataError(f"{path}: {key} must hold 0 (normal) and 1 (anomaly) only, but holds {values[:6]}. Map the "
                        "labels to 0/1 first")
    return torch.as_tensor(np.asarray(y), dtype=torch.int64)


def _as_nchw(x, path, key):
    """(N, D) stays; (N, H, W) -> (N, 1, H, W); (N, H, W, C) or (N, C, H, W) with C in {1, 3} -> (N, C, H, W).
    uint8 images are divided by 255; float images must already lie in [0, 1]."""
    if x.ndim == 2:
        return torch.as_tensor(x, dtype=torch.float32)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"{path}: {key} has shape {x.shape}; expected (N, D) features or images as (N, H, W), "
                        "(N, H, W, C) or (N, C, H, W) with C = 1 or 3. Reshape it")
    if x.dtype != np.uint8 and (x.min() < 0 or x.max() > 1):
        raise DataError(f"{path}: {key} holds images with values in [{x.min():g}, {x.max():g}]; expected uint8 or "
                        "floats in [0, 1]. Rescale them")
    x = torch.tensor(x, dtype=torch.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
    return x.clone(memory_format=torch.contiguous_format)          # row-major strides, also for C = 1


def load_npz(path):
    """An .npz file -> dict(train=x, val=(x, y) or None, test=(x, y)): x_train holds normal samples only; y = 1
    marks an anomaly. Or, in the ADBench / PyOD layout, X and y (1 = anomaly), the whole data unsplit ->
    dict(table=(X, y)), for split_table(). Features (N, D) or images (see _as_nchw); every check names the file and
    key."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise DataError(f"cannot read '{path}' as an .npz file ({type(e).__name__}: {e}). Write it with "
                        "numpy.savez(path, x_train=..., x_test=..., y_test=...) or numpy.savez(path, X=..., y=...)") \
            from None
    if "x_train" not in arrays and {"X", "y"} <= set(arrays):
        return {"table": _table(arrays["X"], arrays["y"], path)}
    missing = [k for k in ("x_train", "x_test", "y_test") if k not in arrays]
    if missing or (("x_val" in arrays) != ("y_val" in arrays)):
        raise DataError(f"'{path}' must hold x_train, x_test and y_test (and optionally x_val with y_val), or X and y "
                        f"(ADBench / PyOD: the whole data, 1 = anomaly); it holds "
                        f"{', '.join(sorted(arrays)) or 'nothing'}."
                        " Save it with those keys")
    out = {}
    for part in ("train", "val", "test"):
        if f"x_{part}" not in arrays:
            continue
        x = arrays[f"x_{part}"]
        if not np.issubdtype(x.dtype, np.number) or x.ndim < 2 or len(x) == 0:
            raise DataError(f"'{path}': x_{part} must be a non-empty numeric array of shape (N, ...), got {x.dtype} "
                            f"{x.shape}. Save numbers")
        _finite(x, path, f"x_{part}")
        x = _as_nchw(x, path, f"x_{part}")
        if part != "train":
            y = arrays[f"y_{part}"].reshape(-1)
            if len(y) != len(x):
                raise DataError(f"'{path}': x_{part} has {len(x)} samples but y_{part} has {len(y)} labels. Give one "
                                "label per sample")
            x = (x, _binary(y, path, f"y_{part}"))
        out[part] = x
    shapes = {k: tuple((v[0] if isinstance(v, tuple) else v).shape[1:]) for k, v in out.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"'{path}': the splits' sample shapes differ ({shapes}). Save every split with one shape")
    return {"train": out["train"], "val": out.get("val"), "test": out["test"]}


def _table(X, y, path):
    """X, y of an unsplit file -> (X (N, D) or images (N, C, H, W), y int64 (N,), 1 = anomaly), checked."""
    X, y = np.asarray(X), np.asarray(y).reshape(-1)
    if not np.issubdtype(X.dtype, np.number) or X.ndim < 2 or len(X) == 0:
        raise DataError(f"'{path}': X must be a non-empty numeric array of shape (N, ...), got {X.dtype} {X.shape}. "
                        "Save numbers")
    if len(y) != len(X):
        raise DataError(f"'{path}': X has {len(X)} samples but y has {len(y)} labels. Give one label per sample")
    _finite(X, path, "X")
    y = _binary(y, path, "y")
    if y.all() or not y.any():
        raise DataError(f"'{path}': {'every' if y.all() else 'no'} sample is an anomaly (y = 1), so there are "
                        f"{'no normal samples' if y.all() else 'no anomalies'}. Give both, 1 = anomaly")
    return _as_nchw(X.astype(np.float64) if X.ndim == 2 else X, path, "X"), y


def load_mat(path):
    """An ODDS-style MATLAB file holding X (N, D) and y (N, 1), 1 = anomaly -> (X float32, y int64)."""
    import scipy.io
    try:
        m = scipy.io.loadmat(path)
    except NotImplementedError:                             # MATLAB v7.3 files are HDF5
        raise DataError(f"'{path}' is a MATLAB v7.3 (HDF5) file, which scipy cannot read. Save it with "
                        "scipy.io.savemat or as an .npz file (X, y)") from None
    except Exception as e:
        raise DataError(f"cannot read '{path}' as a .mat file ({type(e).__name__}: {e}). Check the file") from None
    if not {"X", "y"} <= set(m):
        raise DataError(f"'{path}' must hold X and y (1 = anomaly), as the ODDS files do; it holds "
                        f"{', '.join(k for k in m if not k.startswith('__')) or 'nothing'}. Save it with those keys")
    return _table(m["X"], m["y"], path)


def load_csv(path, label_column="label", normal_label="0"):
    """A .csv file with a header row -> (X float32 (N, D), y int64 (N,), 1 = anomaly): every column but the label
    column is a numeric feature; rows whose label equals normal_label (compared as text) are normal."""
    import csv
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read '{path}' as a CSV file ({type(e).__name__}: {e}). Check the file") from None
    if len(rows) < 2:
        raise DataError(f"'{path}' holds no data rows (a header row, then one row per sample). Check the file")
    header, body = [c.strip() for c in rows[0]], rows[1:]
    if label_column not in header:
        raise DataError(f"'{path}' has no column '{label_column}' (columns: {', '.join(header)}). Name the label "
                        "column with --label-column")
    bad = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
    if bad:
        raise DataError(f"'{path}': line {bad[0]} has a different number of fields than the header "
                        f"({len(header)}). Fix that line")
    j = header.index(label_column)
    features = [c for c in range(len(header)) if c != j]
    X = np.empty((len(body), len(features)))
    for k, c in enumerate(features):
        try:
            X[:, k] = [float(r[c]) for r in body]
        except ValueError:
            raise DataError(f"'{path}': column '{header[c]}' is not numeric. Encode it as numbers (e.g. one-hot) or "
                            "drop it") from None
    _finite(X, path, "the features")
    y = np.array([r[j].strip() != str(normal_label) for r in body], dtype=np.int64)
    if y.all() or not y.any():
        raise DataError(f"'{path}': {'no' if y.all() else 'every'} row has {label_column} = {normal_label}, so there "
                        f"are {'no normal samples' if y.all() else 'no anomalies'}. Set --normal-label to the "
                        "normal rows' label")
    return torch.tensor(X, dtype=torch.float32), torch.from_numpy(y)


def _read_images(files, where, sizes):
    """Image files -> a list of (1, C, H, W) float tensors in [0, 1], grey files grey (C = 1), the others RGB; each
    file's 'WxH grey|RGB' is added to sizes. A file that is not an image is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError
    out = []
    for f in files:
        if not f.lower().endswith(IMAGE_SUFFIXES):
            raise DataError(f"'{f}' is not an image ({', '.join(IMAGE_SUFFIXES)}). Move it out of {where}")
        try:
            with Image.open(f) as img:
                grey = img.mode in ("1", "L", "LA", "I", "I;16", "F")
                a = np.asarray(img.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"'{f}' cannot be decoded as an image ({type(e).__name__}). Replace or remove it") from None
        out.append(torch.from_numpy(a).view(1, *a.shape[:2], -1).permute(0, 3, 1, 2))   # (1, C, H, W)
        sizes.add(f"{a.shape[1]}x{a.shape[0]} {'grey' if grey else 'RGB'}")
    return out


def load_image_folder(path, channels=None, size=None, grey28_only=False):
    """An image folder in the MVTec AD / anomalib layout -> dict(train=x, val=None, test=(x, y), source=text):
    train/good/ holds the normal training images, test/good/ the normal test images, every other test/<name>/
    folder anomalies. Images are read with PIL (torchvision's image loader), converted to `channels` (1 grey,
    3 RGB; None: grey if every image is grey, else RGB; with grey28_only, grey only if every image is also 28x28),
    scaled to [0, 1] and resized to size x size (antialiased; None: 28 for grey, 32 for RGB, the two inputs the
    scripts' architectures take)."""
    def folder(*parts):
        d = os.path.join(path, *parts)
        files = sorted(os.path.join(d, f) for f in os.listdir(d) if not f.startswith(".")) if os.path.isdir(d) else []
        return [f for f in files if os.path.isfile(f)]

    if not os.path.isdir(path):
        raise DataError(f"the dataset folder '{path}' does not exist. Give a data file, a built-in dataset name, or a "
                        "folder with train/good/ and test/<name>/ subfolders")
    train, good = folder("train", "good"), folder("test", "good")
    test_dir = os.path.join(path, "test")
    defects = sorted(d for d in (os.listdir(test_dir) if os.path.isdir(test_dir) else [])
                     if d != "good" and os.path.isdir(os.path.join(test_dir, d)))
    if not train:
        raise DataError(f"'{path}' has no images in train/good/. Use the MVTec AD layout: train/good/ (normal "
                        "training images), test/good/ (normal test images), test/<defect>/ (anomalies)")
    if not defects or not any(folder("test", d) for d in defects):
        raise DataError(f"'{path}' has no anomaly folder with images under test/ (a test/<defect>/ folder besides "
                        "test/good/). Add one: the test set needs anomalies to be scored against")
    bad = [folder("test", d) for d in defects]
    sizes = set()
    train = _read_images(train, path, sizes)
    test = _read_images(good + [f for files in bad for f in files], path, sizes)
    if channels is None:
        keep = (lambda x: x.shape[1:] == (1, 28, 28)) if grey28_only else (lambda x: x.shape[1] == 1)
        channels = 1 if all(keep(x) for x in train + test) else 3
    size = size or (28 if channels == 1 else 32)
    fit = lambda xs: torch.cat([fit_images(x, channels, size) for x in xs])
    y_test = torch.cat([torch.zeros(len(good), dtype=torch.int64), torch.ones(sum(map(len, bad)), dtype=torch.int64)])
    source = (f"{len(train)} train/good, {len(good)} test/good and {len(test) - len(good)} anomalous images "
              f"({', '.join(defects)}) of {', '.join(sorted(sizes))}, read as {channels}x{size}x{size}")
    return {"train": fit(train), "val": None, "test": (fit(test), y_test), "source": source}


def load_unlabelled_images(path, channels, size):
    """Unlabelled images (e.g. LIS-AE's negative set): an .npz file holding x ((N, H, W), (N, H, W, C) or
    (N, C, H, W); uint8 or floats in [0, 1]) or a folder of image files (subfolders included), returned as float32
    (N, channels, size, size) in [0, 1] (fit_images)."""
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as f:
                keys, x = f.files, (f["x"] if "x" in f.files else None)
        except Exception as e:
            raise DataError(f"cannot read '{path}' as an .npz file ({type(e).__name__}: {e}). Write it with "
                            "numpy.savez(path, x=images)") from None
        if x is None or not np.issubdtype(x.dtype, np.number) or x.ndim not in (3, 4) or len(x) == 0:
            got = f"x of {x.dtype} {x.shape}" if x is not None else ", ".join(sorted(keys)) or "nothing"
            raise DataError(f"'{path}' must hold the images as x, (N, H, W), (N, H, W, C) or (N, C, H, W); it holds "
                            f"{got}. Save them with numpy.savez(path, x=images)")
        _finite(x, path, "x")
        return fit_images(_as_nchw(x, path, "x"), channels, size)
    if not os.path.isdir(path):
        raise DataError(f"'{path}' is neither an .npz file nor a folder. Give an .npz file holding x or a folder of "
                        "images")
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names if not f.startswith("."))
    if not files:
        raise DataError(f"'{path}' holds no images ({', '.join(IMAGE_SUFFIXES)}). Give a folder of images")
    return torch.cat([fit_images(x, channels, size) for x in _read_images(files, path, set())])



def user_data_kind(path):
    """What --dataset PATH holds, told cheaply before reading it (so that --help shows the defaults that will
    apply): "rows", "grey" or "RGB" as read_user_data() will read it; None where it cannot be told (reading it then
    says what is wrong)."""
    from PIL import Image
    try:
        if path.endswith((".csv", ".mat")):
            return "rows"
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as f:
                shape = f["x_train" if "x_train" in f.files else "X"].shape
            if len(shape) == 2:
                return "rows"
            c, hw = (1, shape[1:3]) if len(shape) == 3 else (shape[1], shape[2:]) if shape[1] in (1, 3) else \
                (shape[3], shape[1:3])
            return "grey" if c == 1 else "RGB"
        files = [os.path.join(d, f) for d, _, names in os.walk(path) for f in names
                 if f.lower().endswith(IMAGE_SUFFIXES)
                 and os.path.relpath(d, path).split(os.sep)[0] in ("train", "test")]
        grey, sizes = set(), set()
        for f in files:
            with Image.open(f) as img:
                grey.add(img.mode in ("1", "L", "LA", "I", "I;16", "F"))
                sizes.add(img.size)
        return None if not files else "grey" if grey == {True} else "RGB"
    except Exception:
        return None


def read_user_data(path, script, seed=0, tables=True, grey28_only=False, validates=False, label_column="label",
                   normal_label="0"):
    """--dataset PATH -> dict(kind="rows" | "grey" | "RGB", train=x, val=(x, y) or None, test=(x, y), index=the
    test samples' indices in their source, table=(X, y) of data that came unsplit (a .csv, a .mat, an .npz holding
    X and y: split by split_table() with the seed, with a validation set if the script validates) else None,
    source=what was read and what it became). Images become the inputs the scripts' networks take, (N, 1, 28, 28)
    grey or (N, 3, 32, 32) RGB; with grey28_only (encoders that see 3x32x32) only 28x28 grey images stay grey. A
    script that takes no rows (tables=False) refuses them; one that does not validate says x_val is unused."""
    name = os.path.basename(os.path.normpath(path))
    no_rows = f"{script} takes images, and '{name}' holds {{}} feature rows. Use toll.py or cance.py for tabular data"
    if path.endswith((".csv", ".mat")) and not tables:
        raise DataError(no_rows.format("a table of"))
    d = {"table": load_csv(path, label_column, normal_label)} if path.endswith(".csv") else \
        {"table": load_mat(path)} if path.endswith(".mat") else load_npz(path) if path.endswith(".npz") else None
    if d is None and os.path.isfile(path):
        raise DataError(f"'{path}' is a file {script} cannot read. Give an .npz{', .csv or .mat' if tables else ''} "
                        "file, an image folder (train/good/, test/good/, test/<defect>/) or a built-in dataset name")
    if d is None:
        d = load_image_folder(path, grey28_only=grey28_only)
        d.update(kind="grey" if d["train"].shape[1] == 1 else "RGB", table=None, index=torch.arange(len(d["test"][0])))
        return _both_kinds(d, path)
    x = d["table"][0] if "table" in d else d["train"]
    stored = tuple(x.shape[1:])
    if len(stored) == 1 and not tables:
        raise DataError(no_rows.format(f"{(len(x),) + stored}"))
    grey = len(stored) == 3 and stored[0] == 1 and (stored == (1, 28, 28) or not grey28_only)
    kind, (c, side) = "rows" if len(stored) == 1 else "grey" if grey else "RGB", (1, 28) if grey else (3, 32)
    fit = (lambda x: x) if kind == "rows" else lambda x: fit_images(x, c, side)
    what = f"rows of {stored[0]} features" if kind == "rows" else \
        f"images of {'x'.join(map(str, stored))}, read as {c}x{side}x{side}"
    if "table" in d:
        X, y = fit(d["table"][0]), d["table"][1]
        d = split_table(X, y, seed, validates)
        d.update(table=(X, y), source=f"{len(X)} {what}, {int(y.sum())} anomalies (y = 1), unsplit; {d['source']}")
    else:
        counts = f"{len(d['train'])} x_train, {len(d['test'][0])} x_test" + (f", {len(d['val'][0])} x_val"
                                                                              if d["val"] else "")
        d.update(train=fit(d["train"]), test=(fit(d["test"][0]), d["test"][1]), table=None, source=f"{counts} {what}",
                 val=None if d["val"] is None else (fit(d["val"][0]), d["val"][1]),
                 index=torch.arange(len(d["test"][0])))
        if d["val"] is not None and not validates:
            d["source"] += f"; x_val / y_val unused ({script} does not validate)"
    return _both_kinds(dict(d, kind=kind), path)


def _both_kinds(d, path):
    """AUROC and F1 need normal and anomalous test samples (and a model needs 2 normal ones to train on)."""
    y = d["test"][1]
    if y.min() == y.max():
        raise DataError(f"the test set of '{path}' holds {'only anomalies' if y[0] else 'no anomalies'}; AUROC and F1 "
                        "need both. Give a test set with normal and anomalous samples")
    if len(d["train"]) < 2:
        raise DataError(f"'{path}' gives {len(d['train'])} normal training sample(s); a model needs 2 or more. Give "
                        "more normal training samples")
    return d


SPLIT_RULE = ("each class shuffled with --seed; half of each class (rounded up) is the test set, the same rows "
              "in every script; the normal rows of the other half train")


def split_table(X, y, seed=0, validation=False):
    """The one rule for data that come unsplit (X, y; 1 = anomaly), in every script: each class is shuffled with
    the seed, and the first half of each class (rounded up) is the test set, so a seed gives the same test rows
    whichever script runs, with the file's anomaly ratio. The normal rows of the other half train. With validation
    (a script that selects its model on labelled data), 40% of that other half, normal and anomalous rows alike
    (20% of each class), is a labelled validation set instead. Anomalies outside test and validation are unused.
    -> dict(train=X, val=(X, y) or None, test=(X, y), index=the test rows' indices in X, source=the counts)."""
    g = torch.Generator().manual_seed(seed)
    parts = {"train": [], "val": [], "test": []}
    for label in (0, 1):
        idx = torch.nonzero(y == label).view(-1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = (len(idx) + 1) // 2
        n_val = int(round(0.4 * (len(idx) - n_test))) if validation else 0
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        if label == 0:
            parts["train"].append(idx[n_test + n_val:])
    train, val, test = (torch.cat(parts[k]) for k in ("train", "val", "test"))
    if len(train) < 2:
        raise DataError(f"{len(X)} samples ({int(y.sum())} anomalies) are too few to split: half of each class tests, "
                        "and the rest must hold 2 normal samples to train. Give more samples")
    counts = lambda i: f"{len(i)} ({int(y[i].sum())} anomalies)"
    source = f"split: train {len(train)} normal, " + (f"validation {counts(val)}, " if validation else "") + \
        f"test {counts(test)}; the rule: {SPLIT_RULE}" + ("; 40% of the other half validates" if validation else "")
    return dict(train=X[train], val=(X[val], y[val]) if validation else None, test=(X[test], y[test]), index=test,
                source=source)


def row_moments(x):
    """Per-column mean and std of rows x (N, D), the std of a constant column set to 1: standardising a user's
    table with the statistics of its training rows only."""
    x = torch.as_tensor(x, dtype=torch.float32)
    std = x.std(0) if len(x) > 1 else torch.ones(x.shape[1])
    return x.mean(0), torch.where(std > 0, std, torch.ones_like(std))


def read_index_file(path, n, what, exact=False, fix=""):
    """An .npy file of row indices -> int64 tensor of indices into n rows (`what`, e.g. "normal rows"); a
    non-integer array, out-of-range or repeated indices, or a length that does not fit the data (exact: a
    permutation of all n rows; else at least one and fewer than n), are DataErrors naming the file, ending in fix."""
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{path} is not a readable .npy index file ({type(e).__name__}: {e}). {fix}") from None
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{path} must hold a 1-D array of integer indices, but holds {a.dtype} of shape {a.shape}. "
                        f"{fix}")
    if (exact and len(a) != n) or (not exact and not 0 < len(a) < n):
        rule = "the file must list each once" if exact else "at least one must be listed and some left to train"
        raise DataError(f"{path} holds {len(a)} indices, but the data has {n} {what}: {rule}. {fix}")
    bad = a[(a < 0) | (a >= n)]
    if len(bad):
        raise DataError(f"{path}: index {int(bad[0])} is out of range for the {n} {what} (0..{n - 1}). {fix}")
    values, counts = np.unique(a, return_counts=True)
    if (counts > 1).any():
        dup, times = int(values[counts > 1][0]), int(counts[counts > 1][0])
        raise DataError(f"{path}: index {dup} appears {times} times; a split lists each row once. {fix}")
    return torch.from_numpy(a.astype(np.int64))

# ======================================================================================================================
# RESNET BLOCKS: a CIFAR-style ResNet-18 (CSI's encoder)
# ======================================================================================================================

# ------------------------------------------------------------------------------------------ ResNet

class BasicBlock(nn.Module):
    """ResNet basic block (He et al., 2016): two 3×3 convolutions with BN, identity or 1×1 shortcut."""
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32×32 inputs as in SimCLR/CSI's CIFAR code: 3×3 stride-1 stem, no max-pool,
    four stages of two BasicBlocks (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2), global average pool.
    forward(x) -> (B, 8w) penultimate features; w = 64 gives the standard 512-d network."""

    def __init__(self, in_channels=3, width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, in_planes = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = width * 2 ** i
            layers += [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.out_dim = in_planes

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))                # (B, w, 32, 32)
        out = self.layers(out)                               # (B, 8w, 4, 4)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)      # (B, 8w)


# ======================================================================================================================
# RUN LAYER: the command line every script shares (flags and argument types, progress lines, the degenerate-score
# guard, RESULT line, JSON with provenance, score files, checkpoints, exit codes)
# ======================================================================================================================

class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error shape, 'error: <what is wrong>. <what to do>', and exit status 2."""

    def error(self, message):
        print(f"error: {message}. Run `python {self.prog} --help` for the accepted values.", file=sys.stderr)
        sys.exit(2)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help prints the value each option really takes ('(default: 0.0001)'), and nothing where there is none."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        if isinstance(action.default, float):
            return f"{action.help} (default: {action.default:g})"
        return super()._get_help_string(action)


def number(kind=float, low=None, high=None, low_open=False):
    """argparse type: a finite int or float in [low, high] (low itself excluded with low_open)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got "
                                             f"'{text}'") from None
        plain = lambda x: str(int(x)) if float(x).is_integer() else f"{x:g}"     # 4294967295, not 4.29497e+09
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number (got {text})")
        if (low is not None and (value < low or (low_open and value == low))) or (high is not None and value > high):
            rng = (f"{'>' if low_open else '>='} {plain(low)}" if high is None else
                   f"in {'(' if low_open else '['}{plain(low)}, {plain(high)}]")
            raise argparse.ArgumentTypeError(f"must be {rng} (got {text})")
        return value
    return parse


def device_type(name):
    """argparse type: auto (cuda if present, else cpu), cpu, cuda or cuda:N -> torch.device; an absent one: refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and (count == 0 or (device.index or 0) >= count):
        raise argparse.ArgumentTypeError(f"'{name}' was asked for, but torch finds {count} CUDA device(s) on this "
                                         "machine; use --device cpu (or auto)")
    return device


def output_path(path):
    """argparse type: a file this run can write, tried now so that no finished run is lost at the end."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name such as {os.path.join(path, 'out')}")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"the folder {folder} does not exist; create it first or choose another")
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot write into {folder} ({e.strerror}); choose a writable folder") \
            from None
    return path


def png_path(path):
    """argparse type: where a PNG picture goes (a writable file whose name ends in .png)."""
    if not path.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"{path} does not end in .png, and the picture is a PNG; give a name such as "
                                         "figure.png")
    return output_path(path)


def dataset_type(builtin, tables=True):
    """argparse type: one of the script's built-in datasets, else a path to your own data (read when prepared)."""
    def parse(name):
        if name in builtin or is_user_dataset(name):
            return name
        own = "an .npz, .csv or .mat file or an image folder" if tables else "an .npz file or an image folder"
        raise argparse.ArgumentTypeError(f"unknown dataset '{name}': choose one of {', '.join(builtin)}, or give your "
                                         f"own data as {own} (a path)")
    return parse


def command_line(script, description, datasets, builtin, own, seed_help, section, default="mnist", tables=True):
    """The parser with the flags every script shares: --dataset (builtin: the built-in names and their sources; own:
    which values your data take), --normal (section: where the paper says one class is normal), --data-root,
    --seed, --device, and for a script that takes tables --label-column, --normal-label and --raw-features. The
    script adds its own options (--iters, --batch-size, --lr among them: their defaults and sources differ), then
    output_flags()."""
    p = ArgumentParser(prog=script, description=description, formatter_class=HelpFormatter, allow_abbrev=False)
    layouts = "an .npz (x_train normal, x_test, y_test with 1 = anomaly, optional x_val / y_val; or X, y), " + \
        ("a .csv or .mat table, " if tables else "") + "or an image folder (train/good, test/good, test/<defect>)"
    p.add_argument("--dataset", type=dataset_type(datasets, tables), default=default, metavar="NAME|PATH",
                   help=f"{builtin}; or your own data (a path): {layouts}; {own}")
    p.add_argument("--normal", help=f"normal class, or a comma list ({section}: one class); default 0 for the built-in "
                                    "sets; not used with your own data (its labels mark the anomalies)")
    p.add_argument("--data-root", default=os.environ.get(ENV_ROOT, "./data"),
                   help="datasets folder, torchvision's layout ($AD_DATA_ROOT if set)")
    p.add_argument("--seed", type=number(int, 0, 2 ** 32 - 1), default=0, help=seed_help)
    p.add_argument("--device", type=device_type, default="auto",
                   help="auto (cuda if present, else cpu), cpu, cuda or cuda:N (not in the paper)")
    if tables:
        p.add_argument("--label-column", default="label", help="a .csv dataset's label column (not in the paper)")
        p.add_argument("--normal-label", default="0", help="a .csv dataset's label of normal rows; every other label "
                                                           "is an anomaly (not in the paper)")
        p.add_argument("--raw-features", action="store_true",
                       help="your own tables: keep the features as they are; without it every column is standardised "
                            "with the mean and std of the training rows (not in the paper; the built-in tables keep "
                            "each paper's preprocessing)")
    return p


def output_flags(p, scores, model, load=""):
    """--json, --save-scores (scores: what the .npz holds besides labels and index), --save-model (model: what the
    checkpoint holds), --load-model (load: what else comes from the checkpoint)."""
    p.add_argument("--json", type=output_path, metavar="FILE.json",
                   help="also write the RESULT keys, the resolved settings and the provenance to this file (not in "
                        "the paper)")
    p.add_argument("--save-scores", type=output_path, metavar="FILE.npz",
                   help=f"write the test scores, higher = more anomalous: {scores}, labels (1 = anomaly), index (each "
                        "test sample's index in its source) (not in the paper)")
    p.add_argument("--save-model", type=output_path, metavar="FILE.pt",
                   help=f"write {model} to this file (not in the paper)")
    p.add_argument("--load-model", metavar="FILE.pt",
                   help="score the test data with a model written by --save-model, without training; the model and "
                        f"training options come from it and may not be given{load} (not in the paper)")


def parse(p, argv, defaults=None, training=(), pre=()):
    """Parse argv with p. defaults(known) -> the defaults that apply (set before parsing, so that --help shows them),
    from `known`, a first reading of --dataset, --load-model and the options named in `pre`. Sets args.given (the
    options typed on the command line). Refused: with --load-model, an option in `training` (the checkpoint holds
    it) and --save-model; --normal with your own data (its labels mark the anomalies); table options with data that
    is no table file."""
    if defaults:
        first = ArgumentParser(prog=p.prog, add_help=False, allow_abbrev=False)
        for key in ("dataset", "load_model") + tuple(pre):
            first.add_argument("--" + key.replace("_", "-"), default=p.get_default(key))
        p.set_defaults(**defaults(first.parse_known_args(argv)[0]))
    args = p.parse_args(argv)
    unset = object()                                     # parsed into a namespace of `unset`: the typed flags remain
    typed = vars(p.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), unset))))
    args.given = {k for k, v in typed.items() if v is not unset}
    args.script, args.started = p.prog, time.time()      # finish() reports the run's seconds from here
    held = [k for k in tuple(training) + ("save_model",) if k in args.given]
    if args.load_model and held:
        p.error(f"{flags(held)} set{'s' if len(held) == 1 else ''} the model or its training, which --load-model reads "
                f"from the checkpoint. Drop {'it' if len(held) == 1 else 'them'}")
    if args.normal is not None and is_user_dataset(args.dataset):
        p.error(f"--normal names classes of a built-in dataset; in your own data ({args.dataset}) the labels (y = 1, "
                "a test/<defect>/ folder) mark the anomalies. Drop --normal")
    if {"label_column", "normal_label"} & args.given and not args.dataset.endswith(".csv"):
        p.error(f"--label-column and --normal-label apply to a .csv dataset only, not to {args.dataset}. Drop them")
    if getattr(args, "raw_features", None) and not (is_user_dataset(args.dataset) and
                                                    user_data_kind(args.dataset) in ("rows", None)):
        p.error(f"--raw-features keeps your own table's features as they are, and '{args.dataset}' is none (the "
                "built-in tables keep each paper's preprocessing). Drop it")
    return args


def flags(keys):
    """Option names as typed: ["batch_size", "lr"] -> '--batch-size, --lr'."""
    return ", ".join("--" + k.replace("_", "-") for k in keys)


def as_input(x, shape, device=None, name="x"):
    """The API's input check: a numpy array or tensor of samples of `shape` -> float32 tensor on device; anything
    else is a ValueError naming the shape the model takes."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.ndim < 2 or tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} must have shape ({', '.join(map(str, ('N',) + tuple(shape)))}) for this model, got "
                         f"{tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError(f"{name} holds no samples")
    return x if device is None else x.to(device)


def as_rgb32(x, shape, device=None, name="x"):
    """as_input() for encoders of 3x32x32 images (itad.py, csi_gen.py): images of `shape` in [0, 1] -> float32 (N, 3,
    32, 32), grey repeated to 3 channels, 28x28 zero-padded to 32x32; values outside [0, 1] are a ValueError."""
    x = as_input(x, shape, device, name)
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{name} must hold images scaled to [0, 1], got values in [{x.min():g}, {x.max():g}]")
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x                     # (N, 1, H, W) -> (N, 3, H, W)
    pad = (32 - x.shape[-1]) // 2
    return (F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x).contiguous()      # 28 -> 32


def check_finite(value, where, fix="Try a smaller --lr"):
    """A training loss that is NaN or infinite ends the run (exit 3): FloatingPointError saying where."""
    if not math.isfinite(value):
        raise FloatingPointError(f"training diverged: {where} is {value}. {fix}")


def load_weights(module, state, path):
    """module.load_state_dict(state); weights that do not fit the checkpoint's own settings are a DataError."""
    try:
        module.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as e:
        raise DataError(f"'{path}' holds weights that do not fit its own settings ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}). Save the model again") from None
    return module


def saving_run(args, config, keys=("seed",), log=None):
    """--load-model: the saving run's value of each of `keys` that the command line did not set (config: the
    checkpoint's), above all its seed, which draws the split of unsplit data: with another seed the test set would
    hold rows the model trained on."""
    for k in keys if config else ():                     # config None: no checkpoint, nothing to take
        if k not in args.given and config.get(k) is not None and config[k] != getattr(args, k):
            setattr(args, k, config[k])
            (log or say)(f"note: --{k.replace('_', '-')} {config[k]}, the saving run's (its split keeps its training "
                         "rows out of the test set)")


def check_input_shape(model_shape, data_shape, path, dataset):
    """--load-model: the data must have the shape the checkpoint's model takes."""
    if tuple(model_shape) != tuple(data_shape):
        shape = lambda s: "x".join(map(str, s)) if len(s) > 1 else f"{s[0]} features"
        raise DataError(f"'{path}' holds a model for inputs of {shape(tuple(model_shape))}, but {dataset} gives "
                        f"{shape(tuple(data_shape))}. Score data of the model's shape, or train a model on this data")


def loaded_note(path, config):
    """The header line of a --load-model run: where the model comes from, and that nothing is trained."""
    seen = ", ".join(f"{k} {config[k]}" for k in ("dataset", "normal", "seed") if config.get(k) is not None)
    return f"model {path}{f' (trained on {seen})' if seen else ''}: its settings and preprocessing, not trained here"


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def say(line):
    """The scripts' log: a line to stdout, flushed (progress shows while a long phase runs)."""
    print(line, flush=True)


def duration(seconds):
    """Seconds as a person reads them: '45s', '12 min 5 s', '42 h 30 min'."""
    s = int(round(seconds))
    return f"{s}s" if s < 60 else f"{s // 60} min {s % 60} s" if s < 3600 else f"{s // 3600} h {s % 3600 // 60} min"


class Progress:
    """Progress of a long phase: 'what i/n, 12s elapsed, about 30s left', printed at most every `every` seconds
    (and at the end), so that no phase stays silent for long. log=None prints nothing."""

    def __init__(self, what, total, log=print, every=10.0):
        self.what, self.total, self.log, self.every = what, total, log, every
        self.t0 = self.last = time.time()

    def __call__(self, done, extra=""):
        now = time.time()
        if self.log is None or (done < self.total and now - self.last < self.every):
            return
        self.last, spent = now, now - self.t0
        left = f", about {duration(spent / done * (self.total - done))} left" if 0 < done < self.total else ""
        self.log(f"{self.what} {done}/{self.total}{extra} {duration(spent)} elapsed{left}")


def fit_batch(batch_size, n, given, log=print, what="normal training samples"):
    """The batch size a run takes: a default larger than the n training samples is fitted to n, with a note; a
    value the user gave (given) that cannot work stays an error."""
    if n < 2:
        raise DataError(f"{n} {what} are too few: training takes batches of 2 or more. Give more normal samples")
    if batch_size <= n:
        return batch_size
    if given:
        raise DataError(f"--batch-size {batch_size} exceeds the {n} {what}. Pass --batch-size {n} or less")
    log(f"note: --batch-size {n}: the default {batch_size} exceeds the {n} {what}, so every one is in every batch")
    return n


def check_scores(scores, where):
    """A degenerate run is not a result: NaN/inf scores, or one value for every sample, stop the run (exit 3)."""
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        if not np.isfinite(s).all():
            raise FloatingPointError(f"the {name} scores of {where} hold {int((~np.isfinite(s)).sum())} NaN/inf "
                                     f"values of {s.size}: the model diverged, or the data hold values too large for "
                                     "float32. Try a smaller --lr, or rescale the data")
        if s.size > 1 and s.min() == s.max():
            raise FloatingPointError(f"every {name} score of {where} is {s[0]:.6g}: the model gives one score to "
                                     "every sample, so no metric means anything. Try another --lr or more --iters")


@contextlib.contextmanager
def exit_codes():
    """Around a run: bad input (DataError) -> exit 2, a degenerate run (FloatingPointError: divergence, NaN/inf or
    all-equal scores) -> exit 3, Ctrl-C -> 130; each with one 'error:' paragraph, no traceback, nothing written."""
    try:
        yield
    except (DataError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3 if isinstance(e, FloatingPointError) else 2)
    except KeyboardInterrupt:
        print("\ninterrupted: no result was written", file=sys.stderr)
        sys.exit(130)


def provenance(argv, script):
    """What made this result: the command line, package versions, and the git commit of this file's folder."""
    import sklearn
    import torchvision
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        git = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = git.stdout.strip() if git.returncode == 0 else None
        dirty = commit and subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                                          capture_output=True, text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"command": " ".join(["python", script, *argv]), "git_commit": commit, "git_dirty": dirty,
            "python": sys.version.split()[0],
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
                         "scikit-learn": sklearn.__version__}}


def write_result(result, json_path=None, log=print, extra=None):
    """The RESULT line (the last line a run prints) and, with --json, the same keys plus `extra` (configuration,
    provenance, ...: the JSON only) written atomically."""
    log("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    if json_path:
        with open(json_path + ".tmp", "w") as f:
            json.dump({**result, **(extra or {})}, f, indent=1)
        os.replace(json_path + ".tmp", json_path)


def save_scores(path, scores, labels, index):
    """--save-scores: every reported variant's test scores (higher = more anomalous; `scores` is the main one,
    `scores_<variant>` the others), the labels (1 = anomaly) and the test samples' indices, written atomically."""
    arrays = {("scores" if k == "main" else f"scores_{k}"): np.asarray(v, dtype=np.float64) for k, v in scores.items()}
    tmp = path + ".tmp.npz"
    np.savez(tmp, labels=np.asarray(labels, dtype=np.int64), index=np.asarray(index, dtype=np.int64), **arrays)
    os.replace(tmp, path)


def finish(args, argv, result, config, scores=None, labels=None, index=None, save_model=None, speed=(0, None, 0, 1),
           extra=None, log=say):
    """The end of every run, once its scores passed check_scores. The RESULT gets its last keys: device, seconds
    since parse(), and from speed = (samples trained on, seconds of training or None, samples scored, seconds of
    scoring) train_samples_per_s and score_samples_per_s; None values are dropped. Then --save-scores (scores:
    {"main": ..., variant: ...}), --save-model (save_model(path) writes it), the RESULT line and --json (the JSON
    adds `extra`, the resolved config and the provenance). Returns the result."""
    seen, train_s, scored, score_s = speed
    result = dict(result, device=args.device.type, seconds=round(time.time() - args.started, 1),
                  train_samples_per_s=None if train_s is None else round(seen / max(train_s, 1e-9), 1),
                  score_samples_per_s=round(scored / max(score_s, 1e-9), 1))
    result = {k: v for k, v in result.items() if v is not None}
    if args.save_scores:
        save_scores(args.save_scores, scores, labels, index)
        log(f"wrote {args.save_scores}: " + ", ".join("scores" + ("" if k == "main" else "_" + k) for k in scores)
            + ", labels, index")
    if args.save_model:
        save_model(args.save_model)
        log(f"wrote {args.save_model}")
    extra = dict(extra or {}, config=config, provenance=provenance(argv, args.script))
    write_result(result, args.json, log, extra=extra)
    return result


def run_name(dataset, normal):
    """The RESULT's dataset and normal: a built-in name and its normal classes, or your data's file name and '-'."""
    if normal is None:
        return os.path.basename(os.path.normpath(dataset)), "-"
    return dataset, ",".join(map(str, normal))


def save_checkpoint(path, script, config, preprocess, state):
    """--save-model: the weights, every resolved hyperparameter and the preprocessing constants, atomically."""
    torch.save({"script": script, "config": config, "preprocess": preprocess, "state": state}, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path, script):
    """--load-model: a checkpoint this script wrote, or a DataError saying what it is instead."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"cannot read '{path}' as a checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                        f"Give a file written by `{script}.py --save-model`") from None
    if not isinstance(ck, dict) or ck.get("script") != script:
        who = ck.get("script") if isinstance(ck, dict) else None
        raise DataError(f"'{path}' is {f'a checkpoint of {who}.py' if who else 'not a checkpoint of this project'}, "
                        f"not of {script}.py. Load it with the script that wrote it")
    return ck
