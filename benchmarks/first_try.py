"""A user's first try, timed: each script with its defaults and `--iters 2` on a CIFAR-10-layout set.

    python benchmarks/first_try.py                 # the five scripts; rows go into results/speed.md and speed.json
    python benchmarks/first_try.py --only itad,csi_gen

The set: CIFAR-10's files (cifar-10-batches-py: five training batches and a test batch of pickled 3x32x32 images)
generated here with the tests' easy pattern (a class-dependent bright square on noise): 5,000 training images per
class, so the normal class --normal 1 has 5,000, and 1,000 test images (100 per class). No CIFAR-10 files are
available here; torchvision reads these exactly as it reads the originals once its md5 table names them, which the
launcher does (as tests/conftest.py's torchvision_md5 fixture does for the tests' tiny files).

Each row: the command's wall time (python start to the RESULT line), and for the scripts whose main score needs
more passes than fit in 3 minutes on 2 cores, the time those passes take at the bare forward's speed of the same
network, measured in this process right before the run (benchmarks/speed.py's bare loop): csi_gen's Eq. 11
encodes every normal training image and every test image under the 4 shifts; itad's Eq. 23 with --bn-stats test
is 3 passes over the test images (the BatchNorm re-estimation, the score, the score under training statistics).
"""
import argparse
import datetime
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
from speed import bare_loop, render  # noqa: E402
from sweeps import host_info, host_text, write_atomic  # noqa: E402

PER_CLASS, TEST_PER_CLASS, LIMIT = 5000, 100, 180.0
SCRIPTS = ("toll", "lis_ae", "cance", "itad", "csi_gen")
# the passes over images that the main score needs, and the bare row whose network makes them:
# (images passed through the network per scored image in the bare loop's count, bare row of speed.py)
PASSES = {"itad": ("itad-paper", lambda n_train, n_test: 3 * n_test),
          "csi_gen": ("csi_gen-64", lambda n_train, n_test: n_train + n_test)}
BARE_ROWS = {"itad-paper": ("itad-paper", "itad.py", "", ["--batch-size", "200"], ""),
             "csi_gen-64": ("csi_gen-64", "csi_gen.py", "", ["--width", "64", "--batch-size", "32"], "")}

LAUNCH = """
import hashlib, os, runpy, sys
import torchvision.datasets as tvd
root, script = sys.argv[1], sys.argv[2]
folder = os.path.join(root, "cifar-10-batches-py")
md5 = lambda f: hashlib.md5(open(os.path.join(folder, f), "rb").read()).hexdigest()
tvd.CIFAR10.train_list = [[f, md5(f)] for f, _ in tvd.CIFAR10.train_list]
tvd.CIFAR10.test_list = [[f, md5(f)] for f, _ in tvd.CIFAR10.test_list]
tvd.CIFAR10.meta = dict(tvd.CIFAR10.meta, md5=md5(tvd.CIFAR10.meta["filename"]))
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
"""


def make_set(root):
    """CIFAR-10's layout under root, 5,000 training images per class and 100 test images per class."""
    import conftest
    folder = os.path.join(root, "cifar-10-batches-py")
    if os.path.exists(os.path.join(folder, "batches.meta")):
        return root
    os.makedirs(folder, exist_ok=True)
    for i in range(6):
        n = PER_CLASS * 10 // 5 if i < 5 else TEST_PER_CLASS * 10
        x, y = conftest.class_images(n, 32, 3, 10, 70 + i)
        name = f"data_batch_{i + 1}" if i < 5 else "test_batch"
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": x.transpose(0, 3, 1, 2).reshape(n, -1), "labels": y.tolist()}, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"c{k}" for k in range(10)]}, f)
    return root


def run(script, root):
    """The script's defaults with --iters 2 -> (RESULT dict, wall seconds, command as a user types it)."""
    flags = ["--dataset", "cifar10", "--normal", "1", "--iters", "2", "--data-root", root]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        t0 = time.time()
        p = subprocess.run([sys.executable, "-c", LAUNCH, root, f"{script}.py", *flags, "--json", out], cwd=REPO,
                           capture_output=True, text=True)
        wall = time.time() - t0
        if p.returncode != 0:
            raise SystemExit(f"error: {script}.py failed:\n{p.stderr[-2000:]}")
        with open(out) as f:
            result = json.load(f)
    return result, wall, "python " + " ".join([f"{script}.py", *flags[:-1], "<generated set>"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma list of scripts")
    p.add_argument("--cache", default=os.path.join(HERE, "results", "first_try_data"), help="where the set is written")
    p.add_argument("--out", default=os.path.join(HERE, "results", "speed"))
    args = p.parse_args(argv)
    root = make_set(args.cache)
    host, rows = host_info(), []
    for script in [s for s in SCRIPTS if not args.only or s in args.only.split(",")]:
        load = os.getloadavg()[0]
        needed = None
        if script in PASSES:
            bare_id, count = PASSES[script]
            train, forward = bare_loop(BARE_ROWS[bare_id], "cpu", seconds=8.0)   # samples/s: train, score
            needed = round(count(PER_CLASS, TEST_PER_CLASS * 10) / forward + 2 * int(BARE_ROWS[bare_id][3][1]) / train, 1)
        result, wall, command = run(script, root)
        rows.append({"script": f"{script}.py", "command": command, "wall_s": round(wall, 1), "needed_s": needed,
                     "ratio": None if needed is None else round(wall / needed, 2), "load": round(load, 2),
                     "host_text": host_text(host), "auroc": result["auroc"],
                     "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")})
        print(f"{script}: {rows[-1]['wall_s']} s" + ("" if needed is None else f" (necessary passes {needed} s)"),
              flush=True)
    data = json.load(open(args.out + ".json")) if os.path.exists(args.out + ".json") else {"rows": []}
    keep = [o for o in data.get("first_try", []) if (o["host_text"], o["script"]) not in
            {(r["host_text"], r["script"]) for r in rows}]
    data["first_try"] = keep + rows
    write_atomic(args.out + ".json", json.dumps(data, indent=1) + "\n")
    write_atomic(args.out + ".md", render(data["rows"], data.get("sweep", []), data["first_try"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
