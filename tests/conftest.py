"""Shared test fixtures: a tiny data root written in the real on-disk formats, so the scripts' real
torchvision / scipy loading paths run with no network and no ../shared.

tiny_root layout (all generated here, a few hundred KB):
    MNIST/raw/*-ubyte, FashionMNIST/raw/*-ubyte      IDX files, 28×28, 10 classes
    cifar-10-batches-py/, cifar-100-python/          pickles as torchvision reads them (md5s patched by
                                                     the `torchvision_md5` fixture, since they are not the originals)
    train_32x32.mat, test_32x32.mat                  SVHN layout
    omniglot_subsets/images_background_small1.zip    105×105 PNG strokes
    tabular/arrhythmia.mat, thyroid.mat, abalone.data

Every class c is an easy pattern: a bright square blob whose position depends on c, plus noise, so
"normal = class 0" versus the rest is separable by any working method.
"""
import hashlib
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN, N_TEST = 400, 200  # per split, all classes together


def class_images(n, side, channels, n_classes, seed):
    """uint8 (n, side, side, channels) images and int labels: class c = a bright blob at a class-specific place."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    x = rng.integers(0, 40, size=(n, side, side, channels)).astype(np.float64)
    grid = int(np.ceil(np.sqrt(n_classes)))
    cell = side // grid
    for i, c in enumerate(y):
        r, q = divmod(int(c), grid)
        r0, q0 = r * cell + 1, q * cell + 1
        x[i, r0:r0 + cell - 2, q0:q0 + cell - 2, :] += 200 + rng.integers(0, 15)
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


def write_idx(folder, prefix, x, y):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(x), 28, 28) + x[..., 0].tobytes())
    with open(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">II", 2049, len(y)) + y.astype(np.uint8).tobytes())


def make_tiny_root(root, n_train=N_TRAIN, n_test=N_TEST):
    """The generated data root; n_train / n_test images per split, all classes together."""
    for name, seed in (("MNIST", 1), ("FashionMNIST", 2)):
        for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 100)):
            x, y = class_images(n, 28, 1, 10, s)
            write_idx(os.path.join(root, name, "raw"), prefix, x, y)
    # CIFAR-10: data rows are 3072 values, channel-major, as in the originals
    c10 = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(c10, exist_ok=True)
    for i, fname in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x, y = class_images(n_train // 5 if i < 5 else n_test, 32, 3, 10, 10 + i)
        with open(os.path.join(c10, fname), "wb") as f:
            pickle.dump({"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), "labels": y.tolist()}, f)
    with open(os.path.join(c10, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"c{k}" for k in range(10)]}, f)
    c100 = os.path.join(root, "cifar-100-python")
    os.makedirs(c100, exist_ok=True)
    for fname, n, s in (("train", n_train, 30), ("test", n_test, 31)):
        x, coarse = class_images(n, 32, 3, 20, s)
        with open(os.path.join(c100, fname), "wb") as f:
            pickle.dump({"data": x.transpose(0, 3, 1, 2).reshape(n, -1), "fine_labels": (coarse * 5).tolist(),
                         "coarse_labels": coarse.tolist()}, f)
    with open(os.path.join(c100, "meta"), "wb") as f:
        pickle.dump({"fine_label_names": [f"f{k}" for k in range(100)]}, f)
    import scipy.io
    for fname, n, s in (("train_32x32.mat", n_train, 40), ("test_32x32.mat", n_test, 41)):
        x, y = class_images(n, 32, 3, 10, s)
        y = np.where(y == 0, 10, y)  # SVHN stores digit 0 as label 10
        scipy.io.savemat(os.path.join(root, fname), {"X": x.transpose(1, 2, 3, 0), "y": y.reshape(-1, 1)})
    # Omniglot small subset: 105×105 black strokes on white, 1-bit PNGs, zip layout of the official files
    from PIL import Image
    os.makedirs(os.path.join(root, "omniglot_subsets"), exist_ok=True)
    rng = np.random.default_rng(50)
    with zipfile.ZipFile(os.path.join(root, "omniglot_subsets", "images_background_small1.zip"), "w") as z:
        for ch in range(6):
            for k in range(5):
                img = np.ones((105, 105), dtype=bool)
                r = rng.integers(10, 80, size=2)
                img[r[0]:r[0] + 15, 10:95] = False
                img[10:95, r[1]:r[1] + 8] = False
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                z.writestr(f"images_background_small1/Alpha/character{ch:02d}/{ch:04d}_{k:02d}.png", buf.getvalue())
    tab = os.path.join(root, "tabular")
    os.makedirs(tab, exist_ok=True)
    rng = np.random.default_rng(60)
    for fname, n, d, n_anom in (("arrhythmia.mat", 452, 274, 66), ("thyroid.mat", 600, 6, 30)):
        X = rng.normal(size=(n, d))
        y = np.zeros(n)
        y[:n_anom] = 1
        X[:n_anom] += 4.0  # anomalies far from the normal cloud
        scipy.io.savemat(os.path.join(tab, fname), {"X": X, "y": y.reshape(-1, 1)})
    with open(os.path.join(tab, "abalone.data"), "w") as f:
        for i in range(400):
            rings = [3, 21][i % 2] if i < 20 else [8, 9, 10, 5][i % 4]
            size = 0.2 if rings == 3 else (0.9 if rings == 21 else 0.5)
            vals = [size + rng.normal(0, 0.03) for _ in range(7)]
            f.write(",".join(["MFI"[i % 3]] + [f"{v:.4f}" for v in vals] + [str(rings)]) + "\n")
    return root


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the opt-in slow group (README gives its duration)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the opt-in group (python -m pytest -q --slow): what the default suite "
                                       "checks in brief, at length or at the papers' network sizes")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--slow"):
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="the slow group: pass --slow"))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return make_tiny_root(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may touch the network: the loaders read AD_OFFLINE and never try a download."""
    monkeypatch.setenv("AD_OFFLINE", "1")


@pytest.fixture
def torchvision_md5(monkeypatch, tiny_root):
    """The generated CIFAR/SVHN files are not the originals, so point torchvision's md5 tables at them.
    Only the checksums change; torchvision's own reading code runs unchanged."""
    import torchvision.datasets as tvd

    def md5(path):
        return hashlib.md5(open(path, "rb").read()).hexdigest()

    for cls, folder in ((tvd.CIFAR10, "cifar-10-batches-py"), (tvd.CIFAR100, "cifar-100-python")):
        for attr in ("train_list", "test_list"):
            monkeypatch.setattr(cls, attr, [[f, md5(os.path.join(tiny_root, folder, f))] for f, _ in getattr(cls, attr)])
        monkeypatch.setattr(cls, "meta", dict(cls.meta, md5=md5(os.path.join(tiny_root, folder, cls.meta["filename"]))))
    monkeypatch.setattr(tvd.SVHN, "split_list", {
        k: [u, f, md5(os.path.join(tiny_root, f)) if os.path.exists(os.path.join(tiny_root, f)) else m]
        for k, (u, f, m) in tvd.SVHN.split_list.items()})


def run_script(script, *args, expect_rc=0):
    """Run a script as a user would (a subprocess, offline); return (completed process, RESULT dict)."""
    env = dict(os.environ, AD_OFFLINE="1", PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=600)
    assert p.returncode == expect_rc, f"exit {p.returncode}\nSTDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-3000:]}"
    result = None
    if expect_rc == 0:
        last = p.stdout.strip().splitlines()[-1]
        assert last.startswith("RESULT "), last
        result = dict(kv.split("=", 1) for kv in last.split()[1:])
    return p, result


def read_json(path):
    with open(path) as f:
        return json.load(f)


def readme_block(script):
    """README's "Use a method in your own code" block for `script`, verbatim: each script's API test runs it in a
    folder holding only that script and common.py (tests/test_readme.py checks there is one block per script)."""
    with open(os.path.join(REPO, "README.md")) as f:
        section = f.read().split("## Use a method in your own code", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if re.search(rf"^import {script}$", b, re.M)]
    assert len(blocks) == 1, f"README holds {len(blocks)} python blocks importing {script}"
    return blocks[0]
