"""common.py, section by section: the built-in data through the real torchvision / scipy paths, the one-class
protocol and preprocessing; your data (every layout, the split rule, standardisation, a failed download); the
ResNet's shapes; the run layer (argument types, the degenerate-score guard, exit codes, the RESULT line, JSON, score
files and checkpoints, progress lines)."""
import json
import os
import re

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


# ------------------------------------------------------------------------------------------ your own data

def _npz(tmp_path, name="d.npz", **arrays):
    import numpy as np
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path


def test_npz_tabular_and_image_layouts_load_as_the_scripts_expect(tmp_path):
    import numpy as np
    rng = np.random.default_rng(0)
    d = common.load_npz(_npz(tmp_path, x_train=rng.normal(size=(30, 20)), x_test=rng.normal(size=(10, 20)),
                             y_test=np.r_[np.zeros(7), np.ones(3)]))
    assert d["train"].shape == (30, 20) and d["val"] is None and d["test"][1].tolist() == [0] * 7 + [1] * 3
    hwc = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)                   # (N, H, W, C) uint8
    d = common.load_npz(_npz(tmp_path, x_train=hwc, x_test=hwc[:4], y_test=[0, 1, 0, 1], x_val=hwc[:2],
                             y_val=[1, 0]))
    assert d["train"].shape == (12, 3, 32, 32) and d["train"].max() <= 1
    assert torch.allclose(d["train"][3, 2], torch.from_numpy(hwc[3, :, :, 2]).float() / 255)
    assert d["val"][1].tolist() == [1, 0]
    grey = rng.random(size=(6, 28, 28))                                                   # (N, H, W) floats
    assert common.load_npz(_npz(tmp_path, x_train=grey, x_test=grey, y_test=[0] * 5 + [1]))["train"].shape == \
        (6, 1, 28, 28)


@pytest.mark.parametrize("arrays,words", [
    (dict(x_train=[[1.0]], x_test=[[1.0]]), "it holds x_test, x_train"),
    (dict(x_train=[[1.0]], x_test=[[1.0], [2.0]], y_test=[0]), "has 2 samples but y_test has 1"),
    (dict(x_train=[[1.0]], x_test=[[1.0], [2.0]], y_test=[0, 2]), "0 (normal) and 1 (anomaly) only"),
    (dict(x_train=[[1.0], [float("nan")]], x_test=[[1.0]], y_test=[1]), "x_train holds NaN or inf"),
    (dict(x_train=[[1.0]], x_test=[[1.0, 2.0]], y_test=[1]), "shapes differ"),
    (dict(x_train=[[[[2.0]]]], x_test=[[[[1.0]]]], y_test=[1]), "values in [2, 2]"),
])
def test_npz_problems_are_named(tmp_path, arrays, words):
    with pytest.raises(common.DataError) as e:
        common.load_npz(_npz(tmp_path, **arrays))
    assert words in str(e.value) and "d.npz" in str(e.value)


def test_npz_that_is_not_an_npz_is_named(tmp_path):
    path = tmp_path / "x.npz"
    path.write_text("hello")
    with pytest.raises(common.DataError, match="cannot read .*x.npz"):
        common.load_npz(str(path))


def test_csv_features_and_labels(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,2\n")
    X, y = common.load_csv(str(path))
    assert X.tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]] and y.tolist() == [0, 1, 0, 1]
    X, y = common.load_csv(str(path), label_column="a", normal_label="1")
    assert X.shape == (4, 2) and y.tolist() == [0, 1, 1, 1]


@pytest.mark.parametrize("text,kwargs,words", [
    ("a,b\n1,2\n", {}, "no column 'label' (columns: a, b)"),
    ("a,label\nx,0\ny,1\n", {}, "column 'a' is not numeric"),
    ("a,label\nnan,0\n1,1\n", {}, "the features holds NaN or inf"),
    ("a,label\n1,0\n2,0\n", {}, "no anomalies"),
    ("a,label\n1,0\n2\n", {}, "line 3 has a different number of fields"),
])
def test_csv_problems_are_named(tmp_path, text, kwargs, words):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(common.DataError) as e:
        common.load_csv(str(path), **kwargs)
    assert words in str(e.value) and "t.csv" in str(e.value)


def _image_folder(root, defects=("scratch",), extra=None):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for sub, n in [("train/good", 4), ("test/good", 2)] + [(f"test/{d}", 3) for d in defects]:
        os.makedirs(root / sub, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)).save(root / sub / f"{i}.png")
    if extra:
        (root / extra[0]).write_bytes(extra[1])
    return str(root)


def test_image_folder_in_the_mvtec_layout(tmp_path):
    d = common.load_image_folder(_image_folder(tmp_path / "f", defects=("crack", "hole")), channels=1, size=28)
    assert d["train"].shape == (4, 1, 28, 28) and d["test"][0].shape == (8, 1, 28, 28)
    assert d["test"][1].tolist() == [0, 0] + [1] * 6 and 0 <= d["train"].min() and d["train"].max() <= 1
    d = common.load_image_folder(_image_folder(tmp_path / "g"), channels=3, size=32)
    assert d["train"].shape == (4, 3, 32, 32)
    d = common.load_image_folder(_image_folder(tmp_path / "h"))                          # RGB files: 3 x 32 x 32
    assert d["train"].shape == (4, 3, 32, 32) and "50x40 RGB" in d["source"] and "3x32x32" in d["source"]


@pytest.mark.parametrize("defects,extra,words", [
    ((), None, "no anomaly folder"),
    (("scratch",), ("train/good/notes.txt", b"hi"), "notes.txt' is not an image"),
    (("scratch",), ("test/scratch/9.png", b"not a png"), "9.png' cannot be decoded"),
])
def test_image_folder_problems_are_named(tmp_path, defects, extra, words):
    with pytest.raises(common.DataError) as e:
        common.load_image_folder(_image_folder(tmp_path / "f", defects, extra), channels=1, size=28)
    assert words in str(e.value)


def test_image_folder_without_train_good_is_named(tmp_path):
    os.makedirs(tmp_path / "f" / "test" / "bad")
    with pytest.raises(common.DataError, match="no images in train/good"):
        common.load_image_folder(str(tmp_path / "f"), channels=1, size=28)


def test_user_data_without_normal_test_images_or_with_one_training_sample_is_named(tmp_path):
    """read_user_data(): AUROC and F1 need normal and anomalous test samples (an empty test/good is named), and
    training needs 2 normal samples (one is named), before any model is built."""
    import numpy as np
    folder = _image_folder(tmp_path / "f")
    for f in os.listdir(os.path.join(folder, "test", "good")):
        os.remove(os.path.join(folder, "test", "good", f))
    with pytest.raises(common.DataError, match="holds only anomalies; AUROC and F1 need both"):
        common.read_user_data(folder, "itad.py", tables=False)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "one.npz", x_train=rng.random((1, 5)), x_test=rng.random((4, 5)), y_test=[0, 0, 1, 1])
    with pytest.raises(common.DataError, match="gives 1 normal training sample.s.; a model needs 2 or more"):
        common.read_user_data(str(tmp_path / "one.npz"), "toll.py")
    with pytest.raises(common.DataError, match="1 normal training samples are too few"):
        common.fit_batch(8, 1, given=False)


def test_saving_run_takes_the_checkpoints_seed_unless_given(capsys):
    """--load-model: the saving run's seed (it draws the split of unsplit data) replaces the default, with a note;
    a seed the user typed stays; no checkpoint (config None) changes nothing."""
    import argparse
    args = argparse.Namespace(seed=0, split="random", given=set())
    common.saving_run(args, {"seed": 3, "split": "official"}, ("seed", "split"))
    assert (args.seed, args.split) == (3, "official")
    assert "note: --seed 3, the saving run's (its split keeps its training rows out of the test set)" in \
        capsys.readouterr().out
    args = argparse.Namespace(seed=1, given={"seed"})
    common.saving_run(args, {"seed": 3})
    common.saving_run(args, None)
    assert args.seed == 1 and capsys.readouterr().out == ""


def test_fit_images_converts_channels_and_side():
    x = torch.rand(2, 3, 40, 40)
    g = common.fit_images(x, 1, 28)
    assert g.shape == (2, 1, 28, 28) and 0 <= g.min() and g.max() <= 1
    assert common.fit_images(torch.rand(2, 1, 28, 28), 3, 32).shape == (2, 3, 32, 32)
    same = torch.rand(2, 1, 28, 28)
    assert torch.equal(common.fit_images(same, 1, 28), same)


def test_user_images_come_with_row_major_strides(tmp_path):
    """Torch picks its convolution kernels by the strides: the same images from a folder and from an .npz must
    have the same layout, or two runs on the same data round differently."""
    import numpy as np
    grey = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    for x in (common.load_npz(_npz(tmp_path, x_train=grey, x_test=grey, y_test=[0] * 5 + [1]))["train"],
              common.fit_images(torch.rand(2, 28, 28, 1).permute(0, 3, 1, 2), 1, 28),
              common.load_image_folder(_image_folder(tmp_path / "f"), channels=1)["train"]):
        assert x.stride() == torch.empty(x.shape).stride()


# ------------------------------------------------------------------------------------------ your data (issue 34)

def table(n_normal=60, n_anomalous=14, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.cat([torch.randn(n_normal, d, generator=g), torch.randn(n_anomalous, d, generator=g) + 5])
    return X, torch.cat([torch.zeros(n_normal), torch.ones(n_anomalous)]).long()


def test_split_rule_tests_on_half_of_each_class_the_same_rows_with_or_without_validation():
    """common.split_table: half of each class (rounded up) is the test set, the same rows for a seed whether or not
    the script validates; the other half's normal rows train, or 60% of them when 40% of that half validates."""
    X, y = table(61, 15)
    plain, val = common.split_table(X, y, seed=3), common.split_table(X, y, seed=3, validation=True)
    assert torch.equal(plain["index"], val["index"])
    test_y = y[plain["index"]]
    assert int((test_y == 0).sum()) == 31 and int(test_y.sum()) == 8                 # ceil(61 / 2), ceil(15 / 2)
    assert len(plain["train"]) == 30 and plain["val"] is None
    assert len(val["train"]) == 30 - 12 and len(val["val"][0]) == 12 + 3             # round(0.4 * 30), round(0.4 * 7)
    rows = lambda x: {tuple(r.tolist()) for r in x}
    assert not rows(plain["train"]) & rows(plain["test"][0]) and not rows(val["val"][0]) & rows(val["test"][0])
    assert not rows(val["train"]) & rows(val["val"][0]) and (y[val["index"]] == val["test"][1]).all()
    assert not torch.equal(common.split_table(X, y, seed=4)["index"], plain["index"])
    assert "test 39 (8 anomalies)" in plain["source"] and "train 30 normal" in plain["source"]


def test_every_table_layout_reads_as_one_dataset(tmp_path):
    """A table as a CSV (label column), an ADBench / PyOD .npz (X, y) or an ODDS .mat (X, y as a column) gives the
    same split, rows and labels."""
    import numpy as np
    import scipy.io
    X, y = table()
    with open(tmp_path / "t.csv", "w") as f:
        f.write("a,b,c,d,label\n" + "".join(",".join(map(repr, r.tolist())) + f",{int(c)}\n" for r, c in zip(X, y)))
    np.savez(tmp_path / "t.npz", X=X.numpy(), y=y.numpy())
    scipy.io.savemat(tmp_path / "t.mat", {"X": X.numpy().astype(np.float64), "y": y.numpy()[:, None]})
    reads = [common.read_user_data(str(tmp_path / f"t.{s}"), "toll.py", seed=1) for s in ("csv", "npz", "mat")]
    for d in reads:
        assert d["kind"] == "rows" and d["table"] is not None and "74 rows of 4 features, 14 anomalies" in d["source"]
        for key in ("train", "index"):
            assert torch.equal(d[key], reads[0][key])
        assert torch.equal(d["test"][0], reads[0]["test"][0]) and torch.equal(d["test"][1], reads[0]["test"][1])
    assert all(common.user_data_kind(str(tmp_path / f"t.{s}")) == "rows" for s in ("csv", "npz", "mat"))


@pytest.mark.parametrize("arrays,words", [
    (dict(X=[[1.0, 2.0]] * 4, y=[0, 0, 0, 0]), "no sample is an anomaly"),
    (dict(X=[[1.0, 2.0]] * 4, y=[0, 1, 2, 0]), "0 (normal) and 1 (anomaly) only"),
    (dict(X=[[1.0, 2.0]] * 4, y=[0, 1, 0]), "X has 4 samples but y has 3 labels"),
    (dict(x=[[1.0]], labels=[0]), "or X and y (ADBench / PyOD")])
def test_table_layout_problems_are_named(tmp_path, arrays, words):
    import numpy as np
    np.savez(tmp_path / "bad.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    with pytest.raises(common.DataError, match=r"bad\.npz") as e:
        common.read_user_data(str(tmp_path / "bad.npz"), "toll.py")
    assert words in str(e.value)


def test_a_mat_file_without_x_and_y_is_named(tmp_path):
    import numpy as np
    import scipy.io
    scipy.io.savemat(tmp_path / "m.mat", {"data": np.zeros((3, 2))})
    with pytest.raises(common.DataError, match=r"must hold X and y .* it holds data"):
        common.load_mat(str(tmp_path / "m.mat"))


def test_image_scripts_refuse_tables_naming_the_scripts_that_take_them(tmp_path):
    import numpy as np
    X, y = table()
    np.savez(tmp_path / "t.npz", X=X.numpy(), y=y.numpy())
    with pytest.raises(common.DataError, match="itad.py takes images.*Use toll.py or cance.py"):
        common.read_user_data(str(tmp_path / "t.npz"), "itad.py", tables=False)


def test_row_moments_are_the_training_rows_and_a_constant_column_keeps_std_1():
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    mean, std = common.row_moments(x)
    assert mean.tolist() == [2.0, 5.0] and std.tolist() == [pytest.approx(2 ** 0.5), 1.0]


# ------------------------------------------------------------------------------------------ downloads (issue 34)

def test_a_failed_download_names_its_reason_and_leaves_no_empty_folder(tmp_path, monkeypatch):
    """torchvision's error is 'Error downloading <file>:' with the causes on the next lines: the message carries
    them, and the MNIST/raw folder the attempt created is removed again."""
    import urllib.error
    import urllib.request
    monkeypatch.setenv("AD_OFFLINE", "0")
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("no route to host")))
    root = tmp_path / "data"
    with pytest.raises(common.DataError) as e:
        common.load_images("mnist", str(root))
    assert "no route to host" in str(e.value) and "Error downloading train-images-idx3-ubyte.gz" in str(e.value)
    assert not root.exists()
    with pytest.raises(common.DataError, match="no route to host"):
        common.load_tabular("thyroid", str(root))
    assert not root.exists()


# ------------------------------------------------------------------------------------------ run layer (issue 31)

def test_progress_gives_the_time_left_in_hours_and_minutes(monkeypatch):
    lines, clock = [], iter([0.0, 3600.0 * 42.5 / 2, 3600.0 * 42.5, 0.0, 0.0])
    monkeypatch.setattr(common.time, "time", lambda: next(clock))
    progress = common.Progress("training", 100, lines.append)
    progress(50)
    progress(100)
    assert lines == ["training 50/100 21 h 15 min elapsed, about 21 h 15 min left", "training 100/100 42 h 30 min "
                     "elapsed"]
    assert [common.duration(s) for s in (45, 725, 153085)] == ["45s", "12 min 5 s", "42 h 31 min"]
    common.Progress("silent", 2, None)(1)                              # log=None: prints nothing, no error


def test_fit_batch_fits_a_default_with_a_note_and_refuses_a_given_value():
    notes = []
    assert common.fit_batch(1000, 700, given=False, log=notes.append) == 700
    assert notes == ["note: --batch-size 700: the default 1000 exceeds the 700 normal training samples, so every one "
                     "is in every batch"]
    with pytest.raises(common.DataError, match="--batch-size 1000 exceeds the 700 normal training samples"):
        common.fit_batch(1000, 700, given=True)


def test_parse_sets_the_datasets_defaults_records_what_was_typed_and_refuses_model_flags_with_load_model(capsys):
    p = common.command_line("x.py", "test", ["a", "b"], "a or b", "b's values", "seed", "Sec. 1", default="a")
    p.add_argument("--lr", type=float)
    common.output_flags(p, "scores", "the model")
    defaults = lambda known: {"lr": {"a": 0.1, "b": 0.2}.get(known.dataset, 0.3)}
    args = common.parse(p, ["--dataset", "b"], defaults, training=("lr",))
    assert args.lr == 0.2 and args.given == {"dataset"} and args.script == "x.py"
    with pytest.raises(SystemExit) as e:
        common.parse(p, ["--load-model", "m.pt", "--lr", "1"], defaults, training=("lr",))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --lr sets the model or its training, which --load-model")
    assert "Run `python x.py --help`" in err


def test_argument_types_accept_the_range_and_say_what_is_wrong(tmp_path):
    import argparse
    n = common.number(int, 0, 2 ** 32 - 1)
    assert n("5") == 5
    for text, words in (("-5", "[0, 4294967295] (got -5)"), ("x", "expected an integer"), ("inf", "expected an integer")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(words)):
            n(text)
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be > 0 \(got 0\)"):
        common.number(float, 0, low_open=True)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="must be a finite number"):
        common.number(float)("nan")
    assert common.output_path(str(tmp_path / "a.json")) == str(tmp_path / "a.json") and os.listdir(tmp_path) == []
    for bad, words in ((str(tmp_path), "is a folder"), (str(tmp_path / "no" / "a.json"), "does not exist")):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            common.output_path(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="does not end in .png"):
        common.png_path(str(tmp_path / "a.jpg"))
    assert common.dataset_type(["mnist"])("mnist") == "mnist" and common.dataset_type(["mnist"])("my.csv") == "my.csv"
    with pytest.raises(argparse.ArgumentTypeError, match="unknown dataset 'nope': choose one of mnist"):
        common.dataset_type(["mnist"], tables=False)("nope")


def test_degenerate_scores_and_losses_are_floating_point_errors_naming_where():
    with pytest.raises(FloatingPointError, match="the Eq. 1 scores of the test set hold 1 NaN/inf values of 3"):
        common.check_scores({"Eq. 1": [0.1, float("nan"), 0.3]}, "the test set")
    with pytest.raises(FloatingPointError, match="every Eq. 1 score of the test set is 0.5"):
        common.check_scores({"Eq. 1": [0.5, 0.5]}, "the test set")
    common.check_scores({"Eq. 1": [0.5, 0.6]}, "the test set")
    with pytest.raises(FloatingPointError, match="training diverged: the loss at step 3 is inf. Try"):
        common.check_finite(float("inf"), "the loss at step 3")


def test_exit_codes_map_bad_input_degenerate_runs_and_ctrl_c(capsys):
    for exc, code in ((common.DataError("no file. Give one"), 2), (FloatingPointError("nan. Lower --lr"), 3),
                      (KeyboardInterrupt(), 130)):
        with pytest.raises(SystemExit) as e:
            with common.exit_codes():
                raise exc
        err = capsys.readouterr().err
        assert e.value.code == code and "Traceback" not in err
        assert err.startswith("error: ") if code != 130 else "interrupted: no result was written" in err


def test_finish_writes_scores_the_model_the_result_line_and_atomic_json(tmp_path, capsys):
    import argparse
    import numpy as np
    args = argparse.Namespace(save_scores=str(tmp_path / "s.npz"), save_model=str(tmp_path / "m.pt"),
                              json=str(tmp_path / "r.json"), device=torch.device("cpu"), started=0.0, script="x.py")
    saved = []
    r = common.finish(args, ["--seed", "1"], {"method": "x", "auroc": 0.5, "skip": None}, {"lr": 1},
                      {"main": [0.1, 0.2], "ae": [0.3, 0.4]}, [0, 1], [7, 9], lambda p: saved.append(p),
                      (10, 2.0, 2, 1.0), log=print)
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("RESULT method=x auroc=0.5 device=cpu seconds=") and "skip" not in out[-1]
    assert r["train_samples_per_s"] == 5.0 and r["score_samples_per_s"] == 2.0 and saved == [args.save_model]
    s = np.load(tmp_path / "s.npz")
    assert sorted(s.files) == ["index", "labels", "scores", "scores_ae"] and s["index"].tolist() == [7, 9]
    j = json.load(open(tmp_path / "r.json"))
    assert j["config"] == {"lr": 1} and j["provenance"]["command"] == "python x.py --seed 1" and j["auroc"] == 0.5
    assert sorted(os.listdir(tmp_path)) == ["r.json", "s.npz"]                    # atomic: no .tmp left


def test_checkpoints_name_their_script_and_weights_that_do_not_fit_are_a_data_error(tmp_path):
    path = str(tmp_path / "m.pt")
    net = torch.nn.Linear(2, 1)
    common.save_checkpoint(path, "toll", {"a": 1}, {"b": 2}, net.state_dict())
    assert common.load_checkpoint(path, "toll")["config"] == {"a": 1}
    with pytest.raises(common.DataError, match="is a checkpoint of toll.py, not of itad.py"):
        common.load_checkpoint(path, "itad")
    with pytest.raises(common.DataError, match="do not fit its own settings"):
        common.load_weights(torch.nn.Linear(3, 1), common.load_checkpoint(path, "toll")["state"], path)
    with pytest.raises(common.DataError, match="holds a model for inputs of 1x28x28, but x gives 3x32x32"):
        common.check_input_shape((1, 28, 28), (3, 32, 32), path, "x")
    assert "not trained here" in common.loaded_note(path, {"dataset": "mnist", "seed": 0})


def test_api_inputs_are_checked_against_the_model_shape():
    assert common.as_input([[1, 2]], (2,)).dtype == torch.float32
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\) for this model, got \(1, 2\)"):
        common.as_input([[1, 2]], (3,))
    with pytest.raises(ValueError, match="x holds no samples"):
        common.as_input(torch.zeros(0, 2), (2,))
    assert common.run_name("a/b/mine.npz", None) == ("mine.npz", "-") and common.run_name("mnist", [0, 1]) == \
        ("mnist", "0,1")


def test_index_files_are_read_as_permutations_or_subsets_and_bad_ones_named(tmp_path):
    import numpy as np
    np.save(tmp_path / "i.npy", np.array([2, 0, 1]))
    assert common.read_index_file(str(tmp_path / "i.npy"), 3, "rows", exact=True).tolist() == [2, 0, 1]
    np.save(tmp_path / "d.npy", np.array([0, 0]))
    with pytest.raises(common.DataError, match="index 0 appears 2 times.*Fix it"):
        common.read_index_file(str(tmp_path / "d.npy"), 3, "rows", fix="Fix it")
