"""Speed table: training and scoring samples/s of every script and architecture, as the scripts report them.

Each row is one short run of a script, started exactly as a user would (a subprocess with --json); the
numbers are the script's own train_samples_per_s and score_samples_per_s (RESULT line), so they include
batching, augmentation and data movement, not just the network. Runs use scikit-learn's bundled digits
(--dataset digits: 8x8 images resized to 28x28, so the 28x28 architectures do exactly the per-sample work
they do on MNIST) because its test split (599 images) keeps full-width scoring short; nine normal classes
give ~1,080 training images (lis_ae: eight, so that next-class negatives leave one anomaly class in the test
split). The tabular row uses Arrhythmia from --data-root. CIFAR-size (32x32, 3
channel) rows need CIFAR-10 in --data-root and are skipped without it.

What one "training sample" is differs per script (column 'counts'): toll/itad/csi_gen one image of the batch
per step (itad: 2 views, csi_gen: 4 shifts x 2 views of it); lis_ae positives + negatives of both phases;
cance images through the autoencoder (stage 1 and 2). Scoring is the test set through the scoring path.

Usage
    python benchmarks/speed.py --data-root ../shared/data                 # this machine, all rows
    python benchmarks/speed.py --data-root DIR --device cuda --only toll,itad
Writes benchmarks/results/speed.md and speed.json (rows of earlier invocations on other devices are kept;
a row is replaced when the same row runs again on the same device and host).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from run import host_info, host_text, write_atomic  # noqa: E402

NINE = ["--dataset", "digits", "--normal", "0,1,2,3,4,5,6,7,8"]
# (row id, script, architecture in words, flags, what a training sample counts)
ROWS = [
    ("toll-28", "toll.py", "Appendix B MNIST/F-MNIST AE", NINE + ["--iters", "20", "--batch-size", "128",
                                                                "--select", "last", "--val-size", "0"], "image"),
    ("toll-cifar", "toll.py", "Appendix B CIFAR AE", ["--dataset", "cifar10", "--normal", "0", "--iters", "20",
                                                      "--batch-size", "128", "--select", "last", "--val-size", "0"], "image"),
    ("toll-arrhythmia", "toll.py", "Appendix B Arrhythmia MLP", ["--dataset", "arrhythmia", "--iters", "200"], "row"),
    ("lis_ae-28", "lis_ae.py", "28x28 conv AE (width 32, latent 32)",
     ["--dataset", "digits", "--normal", "0,1,2,3,4,5,6,7", "--iters", "50"],
     "positive + negative image, both phases"),
    ("cance-28", "cance.py", "28x28 conv AE (latent 6) + NCE", NINE + ["--iters", "100"],
     "image through the AE (stages 1-2)"),
    ("itad-base-w64", "itad.py", "base: ResNet-18 width 64 + head (default)", NINE + ["--iters", "4", "--batch-size", "64"],
     "image (2 views)"),
    ("itad-base-w8", "itad.py", "base: ResNet-18 width 8 + head (cpu protocol)", NINE + ["--iters", "20", "--batch-size", "64",
                                                                                     "--width", "8"], "image (2 views)"),
    ("itad-ext-small", "itad.py", "extension: Table IV encoder ndf 32, nrkhs 256, ndepth 3", NINE + [
        "--model", "extension", "--iters", "4", "--batch-size", "64", "--ndf", "32", "--nrkhs", "256", "--ndepth", "3"],
     "image (2 views)"),
    ("csi_gen-w64", "csi_gen.py", "F ResNet-18 width 64, SN-GAN width 64 (default)", NINE + ["--iters", "5"],
     "image (4 shifts x 2 views)"),
    ("csi_gen-w8", "csi_gen.py", "F width 8, SN-GAN width 8 (cpu protocol)", NINE + ["--iters", "20", "--width", "8",
                                                                                  "--gan-width", "8"],
     "image (4 shifts x 2 views)"),
]


def run_row(row, data_root, device, timeout):
    rid, script, arch, flags, counts = row
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        cmd = [sys.executable, script, *flags, "--device", device]
        if data_root:
            cmd += ["--data-root", data_root]
        shown = " ".join(["python"] + cmd[1:])
        cmd += ["--json", out]
        t0 = time.time()
        try:
            p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"id": rid, "script": script, "architecture": arch, "command": shown,
                    "error": f"timed out after {timeout} s"}
        wall = time.time() - t0
        if p.returncode != 0 or not os.path.exists(out):
            last = (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]
            first_sentence = last.split(" (")[0].split(". ")[0]       # e.g. "error: cifar10 was not found under ..."
            return {"id": rid, "script": script, "architecture": arch, "command": shown,
                    "error": first_sentence[:160].replace("|", "/")}
        with open(out) as f:
            r = json.load(f)
    return {"id": rid, "script": script, "architecture": arch, "command": shown, "counts": counts,
            "batch_size": r.get("batch_size"), "device": r.get("device"),
            "train_samples_per_s": r.get("train_samples_per_s"), "score_samples_per_s": r.get("score_samples_per_s"),
            "wall_s": round(wall, 1)}


def render(rows):
    lines = ["# Speed: samples per second as the scripts report them", "",
             "Generated by `python benchmarks/speed.py` (see its docstring for what each row runs and counts). "
             "Short runs: a few iterations, warm-up included, so long runs are somewhat faster. "
             "Every number was printed by the script's RESULT line.", ""]
    hosts = {}
    for r in rows:
        hosts.setdefault(r["host_text"], []).append(r)
    for host, rs in hosts.items():
        when = max(r["when"] for r in rs)
        lines += [f"## {host}", "", f"Last measured {when}. 'threads' = torch threads of the process; 'load' = "
                  "the 1-minute load average when the row started (near 0 = idle machine).", "",
                  "| script | architecture | batch | device | train samples/s | score samples/s | a training sample is "
                  "| wall s | threads | load | when |",
                  "|---|---|---:|---|---:|---:|---|---:|---:|---:|---|"]
        for r in rs:
            if "error" in r:
                lines.append(f"| {r['script']} | {r['architecture']} | | | not run: {r['error']} | | | | "
                             f"{r.get('threads')} | {r.get('load')} | {r['when']} |")
                continue
            lines.append(f"| {r['script']} | {r['architecture']} | {r['batch_size']} | {r['device']} | "
                         f"{r['train_samples_per_s']} | {r['score_samples_per_s']} | {r['counts']} | {r['wall_s']} | "
                         f"{r.get('threads')} | {r.get('load')} | {r['when']} |")
        lines += ["", "Commands:", ""] + [f"- `{r['command']}`" for r in rs] + [""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", default=None, help="passed to every script (Arrhythmia, CIFAR-10)")
    p.add_argument("--device", default="auto", help="passed to every script")
    p.add_argument("--only", default=None, help="comma list of row-id prefixes, e.g. toll,itad-base")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per row")
    p.add_argument("--out", default=os.path.join(HERE, "results", "speed"), help="writes OUT.md and OUT.json")
    args = p.parse_args(argv)
    rows = [r for r in ROWS if not args.only or any(r[0].startswith(o) for o in args.only.split(","))]
    host = host_info()
    try:
        import torch
        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    old = []
    if os.path.exists(args.out + ".json"):
        with open(args.out + ".json") as f:
            old = json.load(f)["rows"]
    for row in rows:
        print(f"{row[0]}: running", flush=True)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        r = run_row(row, args.data_root, args.device, args.timeout)
        r.update({"host": host, "host_text": host_text(host), "threads": threads, "requested_device": args.device,
                  "load": None if load is None else round(load, 2), "python": platform.python_version(),
                  "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")})
        print(f"{row[0]}: " + (f"not run ({r['error']})" if "error" in r else
                               f"train {r['train_samples_per_s']}/s score {r['score_samples_per_s']}/s"), flush=True)
        old = [o for o in old if not (o["id"] == r["id"] and o["host_text"] == r["host_text"]
                                      and o.get("requested_device") == args.device)] + [r]
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        write_atomic(args.out + ".json", json.dumps({"rows": old}, indent=1) + "\n")
        write_atomic(args.out + ".md", render(old))
    return 0


if __name__ == "__main__":
    sys.exit(main())
