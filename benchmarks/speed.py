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

Each row also times a bare loop of the same network (the script's own classes, random tensors of the row's
batch shape: forward + backward + Adam, and an eval-mode forward) in this process right before the script's
run, and reports script / bare: the ratio survives a noisy machine, the absolute numbers do not.

Usage
    python benchmarks/speed.py --data-root ./data                         # this machine, all rows
    python benchmarks/speed.py --data-root DIR --device cuda --only toll,itad
    python benchmarks/speed.py --sweep                                     # run.py --jobs 1 vs --jobs 2
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
from sweeps import host_info, host_text, write_atomic  # noqa: E402

NINE = ["--dataset", "digits", "--normal", "0,1,2,3,4,5,6,7,8"]
# (row id, script, architecture in words, flags, what a training sample counts)
ROWS = [
    ("toll-28", "toll.py", "Appendix B MNIST/F-MNIST AE", NINE + ["--iters", "20", "--batch-size", "128",
                                                                "--select", "last", "--val-size", "0"], "image"),
    ("toll-cifar", "toll.py", "Appendix B CIFAR AE", ["--dataset", "cifar10", "--normal", "0", "--iters", "20",
                                                      "--batch-size", "128", "--select", "last", "--val-size", "0"], "image"),
    ("toll-arrhythmia", "toll.py", "Appendix B Arrhythmia MLP", ["--dataset", "arrhythmia", "--iters", "200"], "row"),
    ("lis_ae-28", "lis_ae.py", "28x28 conv AE (width 32, latent 16)",
     ["--dataset", "digits", "--normal", "0,1,2,3,4,5,6,7", "--iters", "50", "--width", "32", "--latent", "16",
      "--batch-size", "128"], "positive + negative image, both phases"),
    ("cance-28", "cance.py", "28x28 conv AE (latent 6) + NCE", NINE + ["--iters", "100", "--latent", "6",
                                                                        "--batch-size", "128"],
     "image through the AE (stages 1-2)"),
    ("itad-base-cpu", "itad.py", "base: Table IV encoder ndf 16, nrkhs 128, ndepth 1 (cpu protocol)",
     NINE + ["--iters", "20", "--batch-size", "64", "--ndf", "16", "--nrkhs", "128", "--ndepth", "1"], "image (2 views)"),
    ("itad-ext-cpu", "itad.py", "extension: Table IV encoder ndf 16, nrkhs 128, ndepth 1 + local 5x5",
     NINE + ["--model", "extension", "--iters", "20", "--batch-size", "64", "--ndf", "16", "--nrkhs", "128",
             "--ndepth", "1"], "image (2 views)"),
    ("itad-base-paper", "itad.py", "base: Table IV encoder ndf 128, nrkhs 1024, ndepth 10 (paper sizes)",
     NINE + ["--iters", "2", "--batch-size", "64", "--ndf", "128", "--nrkhs", "1024", "--ndepth", "10",
             "--mc-samples", "0"], "image (2 views)"),         # Eq. 29's H passes are not timed; skip them
    ("csi_gen-w8-csi", "csi_gen.py", "F ResNet-18 width 8, CSI alone (--variant csi)",
     NINE + ["--iters", "20", "--width", "8", "--gan-width", "8", "--variant", "csi"], "image (4 shifts x 2 views)"),
    ("csi_gen-w8-full", "csi_gen.py", "F width 8 + SN-GAN G/E/D width 8, full model",
     NINE + ["--iters", "20", "--width", "8", "--gan-width", "8", "--variant", "full"], "image (4 shifts x 2 views)"),
    ("csi_gen-w64", "csi_gen.py", "F ResNet-18 width 64, SN-GAN width 64 (default)", NINE + ["--iters", "5", "--width", "64", "--gan-width", "64", "--ensemble", "0"],
     "image (4 shifts x 2 views)"),
]


# ------------------------------------------------------------------------------------------ bare loops

def _value(flags, name, default):
    return type(default)(flags[flags.index(name) + 1]) if name in flags else default


def bare_model(row):
    """The row's network, built with the script's own classes, and what one training step feeds it:
    -> (model, input shape of one training step, counted samples per step, inputs per counted sample at scoring,
        loss(model, x) -> scalar). The loss is the network's output through a cheap surrogate (the papers'
    losses cost little next to the network), so the loop is 'forward + backward + Adam on random tensors'."""
    rid, script, _, flags, _ = row
    sys.path.insert(0, REPO)
    mean_sq = lambda *outs: sum(o.float().pow(2).mean() for o in outs)
    if script == "toll.py":
        import toll
        if rid == "toll-arrhythmia":
            return toll.build_model((274,), latent=16), (100, 274), 100, 1, lambda m, x: mean_sq(*m(x))
        side, ch, lat = (32, 3, 64) if "cifar" in rid else (28, 1, 128)
        b = _value(flags, "--batch-size", 128)
        return toll.build_model((ch, side, side), latent=lat), (b, ch, side, side), b, 1, lambda m, x: mean_sq(*m(x))
    if script == "lis_ae.py":
        import lis_ae
        m = lis_ae.build_model((1, 28, 28), latent=_value(flags, "--latent", 16), width=_value(flags, "--width", 32))
        b = _value(flags, "--batch-size", 128)
        return m, (2 * b, 1, 28, 28), 2 * b, 1, lambda m, x: mean_sq(*m(x))
    if script == "cance.py":
        import cance
        b = _value(flags, "--batch-size", 128)
        return cance.ConvAE(1, 28, _value(flags, "--latent", 6)), (b, 1, 28, 28), b, 1, lambda m, x: mean_sq(*m(x))
    if script == "itad.py":
        import itad
        b = _value(flags, "--batch-size", 64)
        ext = _value(flags, "--model", "base") == "extension"
        m = itad.build_encoder((3, 32, 32), ndf=_value(flags, "--ndf", 128), nrkhs=_value(flags, "--nrkhs", 1024),
                               ndepth=_value(flags, "--ndepth", 10), model="extension" if ext else "base")

        def loss(m, x):
            out = m(x)
            return mean_sq(*out) if isinstance(out, tuple) else mean_sq(out)
        return m, (2 * b, 3, 32, 32), b, 1, loss                   # 2 views per counted image
    if script == "csi_gen.py":
        import csi_gen
        b = _value(flags, "--batch-size", 32)
        m = csi_gen.CSINet(_value(flags, "--width", 64))
        return m, (8 * b, 3, 32, 32), b, 4, lambda m, x: mean_sq(*m(x))   # 4 shifts x 2 views; scoring: 4 shifts
    raise KeyError(script)


def bare_loop(row, device, seconds=4.0, score_chunk=256):
    """Samples/s of the bare training step (forward + backward + Adam on random tensors of the row's shape and
    batch) and of a bare eval-mode forward (chunks of score_chunk inputs, counted per scored sample)."""
    import torch
    model, shape, per_step, per_score, loss_fn = bare_model(row)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    model = model.to(dev)
    x = torch.rand(*shape, device=dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    def timed(step, count):
        step(); step(); sync()                                 # warm-up
        n, t0 = 0, time.time()
        while time.time() - t0 < seconds or n < 3:
            step()
            n += 1
        sync()
        return round(n * count / (time.time() - t0), 1)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model, x).backward()
        opt.step()

    model.train()
    train = timed(train_step, per_step)
    model.eval()
    xs = torch.rand(min(score_chunk, shape[0]), *shape[1:], device=dev)

    @torch.no_grad()
    def fwd():
        model(xs)
    score = timed(fwd, len(xs) / per_score)
    return train, score


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


# filled in from measurements (see the closing notes of issue 12): why a script runs under 0.9 of its bare loop
# Where the rows under 0.9 lose time, measured 2026-11-30 on the 2-core host with the scripts' own functions
# timed in one process beside two single-thread sweeps (so absolute figures are low; the comparisons hold).
WHERE_TIME_GOES = [
    "itad.py training (0.72 / 0.65): not the script. The same base row rerun beside two busy single-thread jobs "
    "gave 81.1 (20 steps) and 81.7 (100 steps) training samples/s against its bare loop's 81.2 (ratio 1.00); "
    "the augmentation (two_views, 64 images) takes 5-9 ms of a 154 ms step. The rows above caught a load change "
    "between their two halves (load 1.7-1.8 on 2 cores).",
    "itad.py scoring (0.28-0.39): by design, two passes per test image: the --bn-stats test re-estimation (one "
    "train-mode pass over the test set, AMDIM's evaluation routine) and then the Eq. 23 pass, so at most 0.5.",
    "csi_gen.py scoring (0.13 / 0.14 / 0.53): Eq. 11 needs the features of the normal training set too, encoded "
    "in the timed section (digits: 1,080 training + 599 test images = 2.8 passes per scored image; "
    "measured 66% training-set features, 33% test features, under 1% nearest neighbours), and the two width-8 "
    "rows run digits' default --ensemble 2, which encodes both sets twice more for M_ens: 8.4 passes per "
    "scored image, ratio <= 0.12. In one process shifted_features runs at the bare forward's speed (321 vs 306 "
    "scored images/s). The width-64 row (--ensemble 0) is the single-view score.",
    "csi_gen.py full-model training (0.59): the bare loop is F alone; the full model also trains G, E and D "
    "every --gen-every batch (Alg. 1 lines 5-13). The CSI-alone row (0.98) is the same F at bare speed. The "
    "width-64 row (0.80) is 5 steps with the first, slower ones included.",
    "lis_ae.py (0.42) and toll.py (0.78) scoring: not the scoring code. In one process anomaly_scores runs at the "
    "bare forward's speed (lis_ae 0.534 s vs 0.501 s for 599 images; toll 11.9 s vs 12.1 s, one thread). The "
    "script times one cold pass of a fraction of a second over digits' 599 test images: lis_ae's first call "
    "measured 0.86 s against 0.67 s warm.",
    "toll.py Arrhythmia scoring (0.60): the test split is 90 rows, scored in well under a millisecond; fixed "
    "costs (moving scores to numpy) dominate.",
]
BARE_NOTE = ("'bare train' = forward + backward + Adam of the same network (built with the script's own classes) on "
             "random tensors of the row's batch shape, in speed.py's process right before the script's run, counted "
             "in the script's training samples (itad: 2 views per image; csi_gen: 4 shifts x 2 views; lis_ae: "
             "positives + negatives); its loss is a surrogate (mean square of the outputs), since the papers' losses "
             "cost little next to the network. 'bare forward' = eval-mode forward in chunks of up to 256 inputs, "
             "counted per scored sample (csi_gen: 4 shifts per image). The ratios are the figures that survive a "
             "noisy machine: both sides of a row run back to back under the same load. A ratio under 0.9 is "
             "explained in the 'Where the time goes' list below.")


def render(rows, sweep=(), first_try=()):
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
                  "| script | architecture | batch | device | train samples/s | bare train | train / bare | "
                  "score samples/s | bare forward | score / bare | a training sample is | wall s | threads | load | when |",
                  "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"]
        g = lambda r, k: "–" if r.get(k) is None else r[k]
        for r in rs:
            if "error" in r:
                lines.append(f"| {r['script']} | {r['architecture']} | | | not run: {r['error']} | "
                             f"{g(r, 'bare_train_samples_per_s')} | | | {g(r, 'bare_score_samples_per_s')} | | | | "
                             f"{r.get('threads')} | {r.get('load')} | {r['when']} |")
                continue
            lines.append(f"| {r['script']} | {r['architecture']} | {r['batch_size']} | {r['device']} | "
                         f"{r['train_samples_per_s']} | {g(r, 'bare_train_samples_per_s')} | {g(r, 'train_ratio')} | "
                         f"{r['score_samples_per_s']} | {g(r, 'bare_score_samples_per_s')} | {g(r, 'score_ratio')} | "
                         f"{r['counts']} | {r['wall_s']} | {r.get('threads')} | {r.get('load')} | {r['when']} |")
        lines += ["", "Commands:", ""] + [f"- `{r['command']}`" for r in rs] + [""]
        lines += ["", BARE_NOTE, ""]
        if WHERE_TIME_GOES:
            lines += ["Where the time goes (rows under 0.9):", ""] + [f"- {t}" for t in WHERE_TIME_GOES] + [""]
    if sweep:
        lines += ["## A whole sweep: run.py --jobs 1 vs --jobs 2", "",
                  "The same 8 runs (cance.py on the digits set, classes 0-7), through `benchmarks/run.py`, one "
                  "invocation right after the other; --jobs 2 gives each run half the cores (OMP_NUM_THREADS).", "",
                  "| host | --jobs | threads per run | wall s | speed-up vs --jobs 1 | load | when |",
                  "|---|---:|---|---:|---:|---:|---|"]
        for r in sweep:
            lines.append(f"| {r['host_text']} | {r['jobs']} | {r['threads_per_run']} | "
                         f"{r['wall_s'] if r['ok'] else 'failed: ' + str(r['error'])} | {r.get('speedup') or '–'} | "
                         f"{r['load']} | {r['when']} |")
        lines += ["", "Commands:", ""] + [f"- `{r['command']}`" for r in sweep] + [""]
    if first_try:
        lines += ["## A user's first try: each script's defaults, --iters 2, a CIFAR-10-layout set", "",
                  "Written by `python benchmarks/first_try.py` (its docstring: the generated set of 5,000 normal "
                  "training and 1,000 test images, how it is read). 'wall s': from python's start to the RESULT line. "
                  "'necessary passes': the time the main score's passes over images take at the bare forward's speed "
                  "of the same network, measured right before (csi_gen: Eq. 11 encodes every normal training and "
                  "test image under the 4 shifts; itad: 3 passes over the test images); the target is 3 minutes, or "
                  "1.2x the necessary passes where they alone take longer. 'load': the 1-minute load average when the row "
                  "started; it still counts jobs paused (SIGSTOP) just before, as the background sweeps were here.", "",
                  "| host | script | wall s | necessary passes s | wall / necessary | auroc | load | when |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in first_try:
            lines.append(f"| {r['host_text']} | {r['script']} | {r['wall_s']} | {r['needed_s'] or '–'} | "
                         f"{r['ratio'] or '–'} | {r['auroc']} | {r['load']} | {r['when']} |")
        lines += ["", "Commands (the set's folder as --data-root):", ""] + [f"- `{r['command']}`" for r in first_try] + [""]
    return "\n".join(lines)


SWEEP = ["--script", "cance.py", "--classes", "0-7", "--seeds", "0", "--cpu", "--", "--dataset", "digits",
         "--iters", "50"]


def sweep_rows(jobs_list=(1, 2)):
    """Issue 20: the same 8-run sweep (cance.py on digits, classes 0-7) through run.py with --jobs 1 and --jobs 2,
    each into a fresh results folder, back to back; wall time of each and the ratio."""
    rows = []
    for jobs in jobs_list:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, os.path.join(HERE, "run.py"), "--name", "sweep", "--results-dir", tmp,
                   "--jobs", str(jobs), *SWEEP]
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            t0 = time.time()
            p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            wall = round(time.time() - t0, 1)
            ok = p.returncode == 0
            threads = sorted({json.load(open(f)).get("host", {}).get("OMP_NUM_THREADS") for f in
                              __import__("glob").glob(os.path.join(tmp, "sweep", "runs", "*.meta.json"))})
        rows.append({"jobs": jobs, "wall_s": wall if ok else None, "ok": ok, "threads_per_run": ",".join(map(str, threads)),
                     "load": None if load is None else round(load, 2),
                     "command": "python benchmarks/run.py --name sweep --jobs %d %s" % (jobs, " ".join(SWEEP)),
                     "error": None if ok else (p.stderr.strip().splitlines() or ["?"])[-1][:160]})
    base = rows[0]["wall_s"]
    for r in rows:
        r["speedup"] = round(base / r["wall_s"], 2) if base and r["wall_s"] else None
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", default=None, help="passed to every script (Arrhythmia, CIFAR-10)")
    p.add_argument("--device", default="auto", help="passed to every script")
    p.add_argument("--only", default=None, help="comma list of row-id prefixes, e.g. toll,itad-base")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per row")
    p.add_argument("--out", default=os.path.join(HERE, "results", "speed"), help="writes OUT.md and OUT.json")
    p.add_argument("--bare-seconds", type=float, default=4.0, help="timed seconds of each bare loop")
    p.add_argument("--no-bare", action="store_true", help="skip the bare loops (the scripts' figures only)")
    p.add_argument("--sweep", action="store_true",
                   help="only the sweep row: an 8-run digits sweep through run.py with --jobs 1 and --jobs 2")
    args = p.parse_args(argv)
    rows = [r for r in ROWS if not args.only or any(r[0].startswith(o) for o in args.only.split(","))]
    host = host_info()
    if args.sweep:
        data = json.load(open(args.out + ".json")) if os.path.exists(args.out + ".json") else {"rows": []}
        sw = sweep_rows()
        for r in sw:
            r.update({"host_text": host_text(host), "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")})
            print(f"sweep --jobs {r['jobs']}: {r['wall_s']} s (speed-up {r['speedup']})", flush=True)
        data["sweep"] = [o for o in data.get("sweep", []) if o["host_text"] != host_text(host)] + sw
        write_atomic(args.out + ".json", json.dumps(data, indent=1) + "\n")
        write_atomic(args.out + ".md", render(data["rows"], data["sweep"], data.get("first_try", [])))
        return 0
    try:
        import torch
        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    old = []
    if os.path.exists(args.out + ".json"):
        with open(args.out + ".json") as f:
            old = [o for o in json.load(f)["rows"] if o["id"] in {r[0] for r in ROWS}]   # rows of removed setups go
    for row in rows:
        print(f"{row[0]}: running", flush=True)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        try:                        # the bare loop of the same network, in this process, right before the script
            bare = bare_loop(row, args.device, seconds=args.bare_seconds) if not args.no_bare else None
        except Exception as e:      # noqa: BLE001 -- a row whose network cannot be built still gets its script figure
            bare = None
            print(f"{row[0]}: bare loop failed ({type(e).__name__}: {e})", flush=True)
        r = run_row(row, args.data_root, args.device, args.timeout)
        if bare is not None:
            r["bare_train_samples_per_s"], r["bare_score_samples_per_s"] = bare
            if r.get("train_samples_per_s") and bare[0]:
                r["train_ratio"] = round(r["train_samples_per_s"] / bare[0], 2)
            if r.get("score_samples_per_s") and bare[1]:
                r["score_ratio"] = round(r["score_samples_per_s"] / bare[1], 2)
        r.update({"host": host, "host_text": host_text(host), "threads": threads, "requested_device": args.device,
                  "load": None if load is None else round(load, 2), "python": platform.python_version(),
                  "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")})
        print(f"{row[0]}: " + (f"not run ({r['error']})" if "error" in r else
                               f"train {r['train_samples_per_s']}/s score {r['score_samples_per_s']}/s"), flush=True)
        old = [o for o in old if not (o["id"] == r["id"] and o["host_text"] == r["host_text"]
                                      and o.get("requested_device") == args.device)] + [r]
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        kept = json.load(open(args.out + ".json")) if os.path.exists(args.out + ".json") else {}
        sweep, first = kept.get("sweep", []), kept.get("first_try", [])
        write_atomic(args.out + ".json", json.dumps({"rows": old, "sweep": sweep, "first_try": first}, indent=1) + "\n")
        write_atomic(args.out + ".md", render(old, sweep, first))
    return 0


if __name__ == "__main__":
    sys.exit(main())
