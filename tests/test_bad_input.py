"""Issue 18: every script, every bad input -> 'error: <what is wrong>. <what to do>' on stderr, exit status 2,
no traceback, and no training step taken (the optimiser's step is booby-trapped, so a case that trains fails).

Each case goes through the script's own main([...]) in this process, so the matrix costs seconds: the checks run
before any data is loaded or model built, except the data cases (missing / truncated files), which fail while
loading. The last test runs each script once on the offline digits set with its defaults (`--iters 2`), as the
README's install check does."""
import importlib
import os
import shutil
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SCRIPTS = ["toll", "lis_ae", "cance", "itad", "csi_gen"]
BASE = ["--dataset", "digits", "--normal", "3", "--iters", "2"]

# (case id, flags replacing or extending BASE). The same mistakes for every script.
COMMON = [
    ("lr-nan", ["--lr", "nan"]),
    ("lr-inf", ["--lr", "inf"]),
    ("lr-zero", ["--lr", "0"]),
    ("lr-negative", ["--lr", "-1e-3"]),
    ("seed-negative", ["--seed", "-5"]),
    ("seed-too-big", ["--seed", str(2 ** 32)]),
    ("iters-zero", ["--iters", "0"]),
    ("iters-negative", ["--iters", "-3"]),
    ("batch-zero", ["--batch-size", "0"]),
    ("batch-negative", ["--batch-size", "-8"]),
    ("device-unknown", ["--device", "tpu"]),
    ("device-bad-index", ["--device", "cuda:7"]),
    ("json-no-folder", ["--json", "/no/such/dir/out.json"]),
    ("json-unwritable", ["--json", "/proc/out.json"]),
    ("json-is-folder", ["--json", "{tmp}"]),
    ("dataset-unknown", ["--dataset", "nope"]),
    ("normal-out-of-range", ["--normal", "10"]),
    ("normal-not-a-number", ["--normal", "a"]),
    ("normal-empty", ["--normal", ""]),
    ("normal-duplicate", ["--normal", "1,1"]),
    ("normal-every-class", ["--normal", "0,1,2,3,4,5,6,7,8,9"]),
    ("mnist-missing-offline", ["--dataset", "mnist", "--data-root", "{empty}"]),
    ("mnist-truncated", ["--dataset", "mnist", "--data-root", "{truncated}"]),
]
if not torch.cuda.is_available():
    COMMON.append(("device-cuda-absent", ["--device", "cuda"]))
# each script's own flags (from its issue)
OWN = {
    "toll": [("beta-negative", ["--beta", "-1"]), ("beta-nan", ["--beta", "nan"]), ("latent-zero", ["--latent", "0"]),
             ("eval-every-zero", ["--eval-every", "0"]), ("val-size-negative", ["--val-size", "-1"]),
             ("select-val-without-validation", ["--val-size", "0"]), ("split-official-digits", ["--split", "official"]),
             ("normal-fixed-tabular", ["--dataset", "thyroid"]), ("normal-with-own-data", ["--dataset", "{tmp}/x.csv"]),
             ("label-column-not-csv", ["--label-column", "y"]),
             ("save-scores-no-folder", ["--save-scores", "/no/such/dir/s.npz"]),
             ("save-model-no-folder", ["--save-model", "/no/such/dir/m.pt"]),
             ("load-model-with-training-flags", ["--load-model", "{tmp}/m.pt"])],
    "lis_ae": [("latent-zero", ["--latent", "0"]), ("save-recon-no-folder", ["--save-recon", "/no/such/dir/r.png"]),
               ("gamma-scale-zero", ["--gamma-scale", "0"]), ("linsep-without-negatives", ["--negative", "none", "--linsep"]),
               ("negative-unknown", ["--negative", "nope"]), ("own-data-with-normal", ["--dataset", "{tmp}/mine.npz"]),
               ("save-scores-no-folder", ["--save-scores", "/no/such/dir/s.npz"]),
               ("save-model-no-folder", ["--save-model", "/no/such/dir/m.pt"]),
               ("load-model-missing", ["--load-model", "/no/such/dir/m.pt"]),
               ("load-model-with-training-flag", ["--load-model", "/no/such/dir/m.pt", "--latent", "8"])],
    "cance": [("nu-zero", ["--nu", "0"]), ("latent-zero", ["--latent", "0"]), ("lam-negative", ["--lam", "-1"]),
              ("k-init-one", ["--k-init", "1"]), ("image-size-small", ["--image-size", "8"]),
              ("corruption-unknown", ["--corruption", "nope"]),
              ("normal-fixed-tabular", ["--dataset", "thyroid", "--normal", "2"]),
              ("resnet18-pca-tabular", ["--dataset", "thyroid", "--normal", "0", "--features", "resnet18-pca"]),
              ("save-scores-no-folder", ["--save-scores", "/no/such/dir/s.npz"]),
              ("save-model-no-folder", ["--save-model", "/no/such/dir/m.pt"]),
              ("label-column-not-csv", ["--label-column", "y"]), ("tabular-split-images", ["--tabular-split", "drocc"]),
              ("normal-with-own-data", ["--dataset", "{tmp}/x.csv"]),
              ("load-model-with-training-flags", ["--load-model", "{tmp}/m.pt"])],
    "itad": [("beta-nan", ["--beta", "nan"]), ("beta-negative", ["--beta", "-1"]),
             ("curve-every-negative", ["--curve-every", "-1"]), ("mc-samples-negative", ["--mc-samples", "-1"]),
             ("batch-exceeds-normal-images", ["--batch-size", "500"]),
             ("normal-with-own-data", ["--dataset", "{tmp}/own.npz"]),
             ("save-scores-no-folder", ["--save-scores", "/no/such/dir/s.npz"]),
             ("save-model-no-folder", ["--save-model", "/no/such/dir/m.pt"]),
             ("load-model-with-training-flags", ["--load-model", "/no/such/m.pt"])],
    "csi_gen": [("gen-every-zero", ["--gen-every", "0"]), ("ensemble-negative", ["--ensemble", "-1"]),
                ("save-samples-no-folder", ["--save-samples", "/no/such/dir/s.png"]),
                ("save-samples-without-generator", ["--variant", "csi", "--save-samples", "{tmp}/s.png"]),
                ("test-crop-scale-zero", ["--test-crop-scale", "0"]),
                ("normal-with-own-data", ["--dataset", "{tmp}/mine.npz"]),
                ("save-scores-no-folder", ["--save-scores", "/no/such/dir/s.npz"]),
                ("save-model-no-folder", ["--save-model", "/no/such/dir/m.pt"]),
                ("load-model-with-training-flag", ["--load-model", "/no/such/dir/m.pt"])],
}
CASES = [(s, cid, flags) for s in SCRIPTS for cid, flags in COMMON + OWN[s]]


@pytest.fixture(scope="module")
def roots(tmp_path_factory, tiny_root):
    empty = tmp_path_factory.mktemp("empty_root")
    truncated = tmp_path_factory.mktemp("truncated_root")
    shutil.copytree(os.path.join(tiny_root, "MNIST"), truncated / "MNIST")
    path = truncated / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])
    return {"empty": str(empty), "truncated": str(truncated), "tmp": str(tmp_path_factory.mktemp("out"))}


def fill(flags, roots):
    return [f.format(**roots) for f in flags]


def merge(base, flags):
    """flags override BASE's value of the same flag."""
    out, i = list(base), 0
    while i < len(flags):
        if flags[i] in out and i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            out[out.index(flags[i]) + 1] = flags[i + 1]
            i += 2
        elif flags[i] in out:
            i += 1
        else:
            out += flags[i:i + 2]
            i += 2
    return out


@pytest.mark.parametrize("script,case,flags", CASES, ids=[f"{s}-{c}" for s, c, _ in CASES])
def test_bad_input_is_one_error_line_and_exit_2_before_training(script, case, flags, roots, capsys, monkeypatch):
    monkeypatch.setenv("AD_OFFLINE", "1")
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)       # scripts may set threads; keep the test's

    def no_training(*a, **k):
        raise AssertionError(f"{script} {case}: an optimiser step ran: the input was not rejected before training")

    monkeypatch.setattr(torch.optim.Optimizer, "step", no_training)
    monkeypatch.setattr(torch.optim.Adam, "step", no_training)
    mod = importlib.import_module(script)
    argv = merge(BASE, fill(flags, roots))
    with pytest.raises(SystemExit) as e:
        mod.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, f"exit status {e.value.code}; stderr: {err}"
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    what_to_do = lines[0][len("error: "):]
    assert ". " in what_to_do.rstrip(".") or "Run `python" in what_to_do, f"no 'what to do' sentence: {lines[0]}"


def test_the_same_mistake_gets_the_same_words_in_every_script(roots, capsys, monkeypatch):
    monkeypatch.setenv("AD_OFFLINE", "1")
    for case, flags in (("lr-nan", ["--lr", "nan"]), ("seed", ["--seed", "-5"]), ("device", ["--device", "tpu"]),
                        ("json", ["--json", "/no/such/dir/out.json"])):
        words = set()
        for script in SCRIPTS:
            with pytest.raises(SystemExit):
                importlib.import_module(script).main(merge(BASE, flags))
            words.add(capsys.readouterr().err.strip().replace(f"{script}.py", "<script>"))   # the same but the name
        assert len(words) == 1, (case, words)
        if case == "seed":                                   # the range in plain digits, not 4.29497e+09
            assert "[0, 4294967295] (got -5)" in words.pop()


def test_truncated_data_file_is_named_in_the_message(roots, capsys, monkeypatch):
    monkeypatch.setenv("AD_OFFLINE", "1")
    with pytest.raises(SystemExit):
        importlib.import_module("toll").main(merge(BASE, ["--dataset", "mnist", "--data-root", roots["truncated"]]))
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "truncated" in err and "not found" not in err


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "toll"])
def test_offline_install_check_runs_with_the_defaults(script, tmp_path):
    """`python <script> --dataset digits --normal 3 --iters 2` runs as it is (defaults that fit digits). toll.py's
    is README's offline check (tests/test_readme.py)."""
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, f"{script}.py", *BASE, "--json", str(out)], cwd=REPO, capture_output=True,
                       text=True, env=dict(os.environ, OMP_NUM_THREADS="1", AD_OFFLINE="1"), timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1].startswith(f"RESULT method={script} dataset=digits normal=3 seed=0 ")
    assert out.exists()


def test_corrupt_cifar_pickle_is_reported_as_corrupt_not_missing(tiny_root, torchvision_md5, tmp_path, capsys):
    shutil.copytree(os.path.join(tiny_root, "cifar-10-batches-py"), tmp_path / "cifar-10-batches-py")
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(SystemExit) as e:
        importlib.import_module("toll").main(["--dataset", "cifar10", "--normal", "0", "--iters", "2",
                                              "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "md5 does not match" in err and "data_batch_1" in err


# the --slow group: each script at the papers' network sizes (its defaults), as a user's first try on real-sized
# images would run them, two iterations on the tests' tiny MNIST (toll, cance, lis_ae) or CIFAR-10 (itad, csi_gen)
PAPER_SIZES = {"toll": ["--dataset", "mnist", "--val-size", "100"], "cance": ["--dataset", "mnist"],
               "lis_ae": ["--dataset", "mnist", "--negative", "fashion-mnist"], "itad": ["--dataset", "cifar10"],
               "csi_gen": ["--dataset", "cifar10"]}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_the_papers_network_sizes_run_two_iterations(script, tiny_root, torchvision_md5, capsys):
    r = importlib.import_module(script).main([*PAPER_SIZES[script], "--normal", "1", "--data-root", tiny_root,
                                              "--iters", "2"])
    assert r["method"] == script and 0 <= r["auroc"] <= 1, r
