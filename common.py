"""Shared data loading and ResNet blocks for the five reproductions.

This file holds only what every script would otherwise copy verbatim: reading datasets into tensors,
the one-class protocol (which samples are normal, which test samples are anomalies), the preprocessing
each paper names, and a CIFAR-style ResNet-18. Everything that belongs to one paper stays in that
paper's script.

Datasets (``load_images`` / ``load_tabular`` / ``load_omniglot``)
    mnist, fashion-mnist, cifar10, cifar100 (20 superclasses), svhn   -- through torchvision's classes
    digits       -- scikit-learn's bundled 8x8 digits resized to 28x28: no network, no files
    omniglot     -- torchvision's Omniglot, or the official small background subsets as a fallback
    arrhythmia, thyroid, abalone -- tabular, from their public files (ODDS .mat / UCI .data)

Your own data (``load_user_data``): ``--dataset PATH`` with PATH an ``.npz`` file (x_train = normal samples,
x_test, y_test with 1 = anomaly, optionally x_val / y_val), a ``.csv`` file (numeric feature columns and a label
column) or an image folder in the MVTec AD / anomalib layout (train/good/, test/good/, test/<defect>/).

Where the data lives: ``--data-root`` if given, else the environment variable ``AD_DATA_ROOT``, else
``./data``. Files are looked for in torchvision's layout (``ROOT/MNIST/raw/...``,
``ROOT/cifar-10-batches-py/...``) and tabular files in ``ROOT`` or ``ROOT/tabular``. Missing files are
downloaded; set ``AD_OFFLINE=1`` to never try. Every failure raises ``DataError`` with a readable
message; the scripts print it and exit with status 2.
"""
import os
import pickle
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


def load_images(name, root=None):
    """Return (x_train, y_train, x_test, y_test): float32 N×C×H×W in [0, 1] and int64 class labels."""
    if name not in IMAGE_DATASETS:
        raise DataError(f"unknown image dataset '{name}'. Choose one of {', '.join(IMAGE_DATASETS)}")
    if name == "digits":
        return _digits()
    root = data_root(root)
    if name in _IDX_FOLDER:
        _check_idx_files(name, root)
    out = []
    for train in (True, False):
        try:
            ds = _torchvision_split(name, root, train)
        except Exception as e:  # torchvision raises RuntimeError / URLError / OSError when files are absent
            present = _corrupt_torchvision_files(name, root)
            if present:
                raise DataError(f"{name}: the files are in '{root}' ({', '.join(os.path.relpath(p, root) for p in present)}) "
                                "but torchvision rejects them: their md5 does not match the originals (truncated or "
                                "corrupt copy?). Replace them with the original files, or delete them so that "
                                "torchvision downloads them again") from None
            why = "downloads disabled by AD_OFFLINE" if _offline() else f"{type(e).__name__}: {str(e).splitlines()[0]}"
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
    try:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        urllib.request.urlretrieve(url, dest + ".part")
        os.replace(dest + ".part", dest)
    except Exception as e:
        raise _missing(name, root, expected, f"{type(e).__name__}: {e}") from None
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


# ------------------------------------------------------------------------------------------ your own data

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_user_dataset(name):
    """--dataset NAME, where NAME is none of the script's built-in datasets, names a file or folder of the user's."""
    return name.endswith((".npz", ".csv")) or os.sep in name or os.path.isdir(name)


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
    marks an anomaly. Features (N, D) or images (see _as_nchw); every check names the file and key."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise DataError(f"cannot read '{path}' as an .npz file ({type(e).__name__}: {e}). Write it with "
                        "numpy.savez(path, x_train=..., x_test=..., y_test=...)") from None
    missing = [k for k in ("x_train", "x_test", "y_test") if k not in arrays]
    if missing or (("x_val" in arrays) != ("y_val" in arrays)):
        raise DataError(f"'{path}' must hold x_train, x_test and y_test (and optionally x_val with y_val); it "
                        f"holds {', '.join(sorted(arrays)) or 'nothing'}. Save it with those keys")
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


def load_image_folder(path, channels=None, size=None):
    """An image folder in the MVTec AD / anomalib layout -> dict(train=x, val=None, test=(x, y), source=text):
    train/good/ holds the normal training images, test/good/ the normal test images, every other test/<name>/
    folder anomalies. Images are read with PIL (torchvision's image loader), converted to `channels` (1 grey,
    3 RGB; None: grey if every image is grey, else RGB), scaled to [0, 1] and resized to size x size
    (antialiased; None: 28 for grey, 32 for RGB, the two inputs the scripts' architectures take)."""
    def folder(*parts):
        d = os.path.join(path, *parts)
        files = sorted(os.path.join(d, f) for f in os.listdir(d) if not f.startswith(".")) if os.path.isdir(d) else []
        return [f for f in files if os.path.isfile(f)]

    if not os.path.isdir(path):
        raise DataError(f"the dataset folder '{path}' does not exist. Give an .npz or .csv file, a built-in dataset "
                        "name, or a folder with train/good/ and test/<name>/ subfolders")
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
    train, test = _read_images(train, path, sizes), _read_images(good + [f for files in bad for f in files], path, sizes)
    if channels is None:
        channels = 1 if all(x.shape[1] == 1 for x in train + test) else 3
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
    """Per-dataset standardisation (x - mean) / std with scalars from the whole training split
    (MNIST 0.1307/0.3081 and Fashion-MNIST 0.2860/0.3530 on the full sets)."""
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
