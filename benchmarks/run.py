"""Run one of the scripts over normal classes x seeds and tabulate the result next to the paper's figure.

Each (class, seed) is one subprocess of the script, exactly as a user would start it:

    python <script> <flags> --normal C --seed S --json benchmarks/results/<name>/runs/c<C>_s<S>.json

A run whose JSON exists is finished and never repeated, so an interrupted sweep resumes where it stopped
(rerun the same command). A run that exits non-zero, or exits 0 without writing its JSON, leaves
runs/c<C>_s<S>.failed (exit code and the tail of stderr); it is reported in the table, does not stop the
sweep, and is tried again on the next invocation unless --skip-failed is given. After every run the report is
rewritten: benchmarks/results/<name>.json and <name>.md with, per class, the mean +- sample std (n-1) over
seeds of the main metric (auroc; f1 on tabular sets) and of every <metric>_<variant> and auroc_<variant> key,
the average over classes, the paper's figure from benchmarks/paper_tables.json, ours minus the paper, wall
seconds and device.

Usage
    # explicit flags after "--" (passed to the script unchanged)
    python benchmarks/run.py --script toll.py --name toll_fmnist_try --classes 0-9 --seeds 0,1 \\
        --paper toll/table3/fashion-mnist/toll -- --dataset fashion-mnist --iters 150 --data-root ./data

    # a named protocol from benchmarks/protocols.json (flags, default seeds and paper tables per dataset)
    python benchmarks/run.py --script toll.py --protocol cpu --dataset fashion-mnist -- --data-root ./data
    python benchmarks/run.py --script toll.py --protocol cpu --dataset arrhythmia      # no classes: seeds only

    # classes: 0-9, 0,3,8; groups of normal classes '0+1,2+3' (--normal 0,1 ...); '~3' = every class but 3
    python benchmarks/run.py --script cance.py --protocol cpu --dataset mnist --classes 0+1,0+8,1+8 -- --data-root ./data

    python benchmarks/run.py --script toll.py --protocol cpu --dataset mnist --dry-run   # commands still to run
    python benchmarks/run.py --list                      # protocols and paper tables known
    python benchmarks/run.py --name toll_fashion-mnist_cpu --report   # re-render from stored runs, run nothing
    python benchmarks/run.py --report-all                # re-render every sweep (e.g. after a table was transcribed)
    python benchmarks/run.py --readme                    # print the results section from results/*.json
    python benchmarks/run.py --readme --write            # replace it in benchmarks/README.md between the markers
    # an ablation (one sweep per variant) in one table, with paired differences to the first sweep
    python benchmarks/run.py --side-by-side NAME_A,NAME_B,NAME_C --reference KEY,KEY --out results/ablation.md

Running runs side by side (the same runs, the same files, the same resume)
    --jobs N              N runs at once as subprocesses; on CPU each gets OMP_NUM_THREADS = cores / N (or --threads)
    --gpus 0,1 --per-gpu K    on a GPU host (default: every visible GPU, one run each): K runs share each device,
                          placed round-robin through CUDA_VISIBLE_DEVICES
    --launcher slurm      a job array through submitit (benchmarks/requirements.txt), with --slurm-partition,
                          --slurm-time, --slurm-gpus-per-task, --slurm-cpus-per-task, --slurm-mem; the command waits
                          for the jobs, or returns at once with --no-wait and a later invocation collects them.
                          A job that dies is a failed run whose .failed file names its SLURM log.
    --launcher submitit-local   the same path through submitit's local executor, on this machine
Ctrl-C stops the running children, keeps every finished run (exit status 130); the same command resumes. On CPU
a run gives the same RESULT whichever way it was launched, for the same thread count (each run's meta file
records launcher, host, device, OMP_NUM_THREADS and CUDA_VISIBLE_DEVICES).

Paper tables: protocols.json maps each dataset to paper_tables.json keys, per script ("paper_tables") and per
protocol (e.g. a beta = 0 protocol points at the paper's beta = 0 row): a plain key is the main metric's
table; a dict also maps variants ({"main": KEY, "auroc_ae": KEY}), which then get their own paper and Δ
columns. --paper / --paper-variant override it for one sweep. The paper's average is its printed one when the
sweep covers the table's classes, else the mean of its cells for the classes run.

Exit status: 2 for bad input (before anything runs), 130 when interrupted, 1 when any requested run has failed
(the tables are still written), else 0. Standard library only (plus submitit for the slurm launcher, and the
scripts' own dependencies in the subprocesses). The repository root is every run's working directory:
relative paths in the script's flags are relative to it. Flags under one --name are fixed at its first run (a
different set is refused, so results are never mixed); classes and seeds may be extended. Each run's
stdout/stderr are kept in runs/<key>.log and .err, its wall time, exact command and host in runs/<key>.meta.json.
"""
import argparse
import concurrent.futures
import datetime
import glob
import json
import math
import os
import platform
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"
# number of classes per image dataset (common.IMAGE_DATASETS; cifar100 = 20 superclasses). Any other dataset
# (arrhythmia, thyroid, abalone) has no --normal to vary: seeds only.
N_CLASSES = {"mnist": 10, "fashion-mnist": 10, "digits": 10, "cifar10": 10, "cifar100": 20, "svhn": 10}


# ------------------------------------------------------------------------------------------ small helpers

class BadInput(SystemExit):
    """Bad input: 'error: <what is wrong>. <what to do>' on stderr, exit status 2, before any run starts."""

    def __init__(self, message):
        super().__init__(2)
        self.message = message

    def __str__(self):
        return self.message


def parse_list(text, what):
    """'0-9' / '0,2,5' / '0-3,7' -> sorted distinct ints; 'none' or '' -> []."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return []
    out = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part)
        try:
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise BadInput(f"error: --{what} must look like 0-9, 0,2,5 or 0-3,7 (got '{text}')") from None
    return sorted(set(out))


def parse_classes(text, dataset):
    """--classes -> list of class tokens: plain ints (0-9, 0,3,8, 0-3,7), groups of normal classes joined by '+'
    ('0+1' = normal classes 0 and 1), and '~k' = every class of the dataset but k (k is the only anomaly).
    'none' or '' -> [] (tabular sets: seeds only). Plain classes stay ints; groups and complements are strings."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return []
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if re.fullmatch(r"\d+(\+\d+)+", part):
            members = sorted({int(v) for v in part.split("+")})
            out.append("+".join(map(str, members)))
        elif re.fullmatch(r"~\d+", part):
            if dataset not in N_CLASSES:
                raise BadInput(f"error: --classes '{part}' (every class but one) needs --dataset with a known number "
                                 f"of classes ({', '.join(N_CLASSES)}). Add --dataset")
            if int(part[1:]) >= N_CLASSES[dataset]:
                raise BadInput(f"error: --classes '{part}': {dataset} has classes 0..{N_CLASSES[dataset] - 1}. "
                                 "Pick one of those")
            out.append(part)
        else:
            out.extend(parse_list(part, "classes"))
    seen, unique = set(), []
    for c in out:
        if str(c) not in seen:
            seen.add(str(c))
            unique.append(c)
    return unique


def normal_arg(cls, dataset):
    """Class token -> the script's --normal value: 3 -> '3', '0+1' -> '0,1', '~3' -> every other class."""
    text = str(cls)
    if text.startswith("~"):
        return ",".join(str(k) for k in range(N_CLASSES[dataset]) if k != int(text[1:]))
    return text.replace("+", ",")


def write_atomic(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def mean_std(values):
    """Mean and sample standard deviation (n-1); std is None for a single value."""
    n = len(values)
    if n == 0:
        return None, None
    m = sum(values) / n
    if n == 1:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def host_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {"cpu": cpu, "cpu_cores_usable": usable, "python": platform.python_version(), "os": platform.platform(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset (torch uses every usable core)")}
    try:  # the GPU's name, where there is one (the scripts' JSON only says "cuda")
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            info["gpu"] = out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def host_text(h):
    threads = h.get("OMP_NUM_THREADS")
    threads = f", OMP_NUM_THREADS={threads}" if threads and threads[0].isdigit() else ""
    return f"{h.get('gpu') + ', ' if h.get('gpu') else ''}{h['cpu']}, {h['cpu_cores_usable']} usable cores{threads}"


def run_key(cls, seed):
    """File stem of one run: s<S> (no classes), c<C>_s<S>; '~3' is written 'not3' in file names."""
    return f"s{seed}" if cls is None else f"c{str(cls).replace('~', 'not')}_s{seed}"


# ------------------------------------------------------------------------------------------ protocols and paper tables

def load_protocols(path):
    return read_json(path) if os.path.exists(path) else {}


def paper_map(value):
    """A paper_tables mapping value -> {metric: key}: a plain key is the main metric's table ("main");
    a dict maps the main metric ("main", or its name) and variants ("auroc_ae") to keys."""
    if not value:
        return {}
    if isinstance(value, str):
        return {"main": value}
    return dict(value)


def resolve_protocol(protocols, script, name, dataset):
    """-> (flags, default seeds, {metric: paper key}, note) of a named protocol for one script and dataset.
    Paper tables: the script's "paper_tables" for the dataset, overridden by the protocol's own
    "paper_tables" (e.g. a beta = 0 protocol compares with the paper's beta = 0 row)."""
    stem = os.path.basename(script)
    entry = protocols.get(stem)
    if entry is None:
        raise BadInput(f"error: benchmarks/protocols.json has no entry for {stem}")
    proto = entry.get("protocols", {}).get(name)
    if proto is None:
        raise BadInput(f"error: {stem} has no protocol '{name}' (known: {', '.join(entry.get('protocols', {}))})")
    if proto.get("args") is None:
        raise BadInput(f"error: protocol '{name}' of {stem} is not defined yet: {proto.get('note', 'TODO')}")
    flags, seeds, note = list(proto["args"]), proto.get("seeds", "0"), proto.get("note", "")
    per = proto.get("datasets", {}).get(dataset, {}) if dataset else {}
    if per:
        if per.get("args") is not None:
            flags = list(per["args"])
        seeds = per.get("seeds", seeds)
        note = per.get("note", note)
    paper = {}
    if dataset:
        paper.update(paper_map(entry.get("paper_tables", {}).get(dataset)))
        if dataset in proto.get("paper_tables", {}):
            paper = paper_map(proto["paper_tables"][dataset])
    return flags, seeds, paper, note


def load_paper(path, key):
    """The paper_tables.json entry `key` (None if no key). Values are converted to the scripts' 0..1 scale."""
    if not key:
        return None
    tables = read_json(path) if os.path.exists(path) else {}
    if key not in tables.get("tables", {}):
        raise BadInput(f"error: {os.path.relpath(path)} has no table '{key}' (see: python benchmarks/run.py --list)")
    t = dict(tables["tables"][key])
    t["key"] = key
    notes = tables.get("table_notes", {})
    t["table_note"] = notes.get("/".join(key.split("/")[:3])) or notes.get("/".join(key.split("/")[:2]))
    scale = 100.0 if t.get("unit") == "percent" else 1.0
    t["per_class_01"] = {str(k): (None if v is None else v / scale) for k, v in (t.get("values") or {}).items()}
    t["average_01"] = None if t.get("average") is None else t["average"] / scale
    if t["average_01"] is None and set(t["per_class_01"]) == {"all"}:   # a table that prints one figure only
        t["average_01"] = t["per_class_01"]["all"]
    return t


# ------------------------------------------------------------------------------------------ running

def run_command(cfg, runs_dir, cls, seed):
    """The exact command of one run (a list), and its JSON path."""
    out_json = os.path.join(runs_dir, run_key(cls, seed) + ".json")
    cmd = [sys.executable, cfg["script_path"], *cfg["script_args"]]
    if cls is not None:
        cmd += ["--normal", normal_arg(cls, cfg.get("dataset"))]
    return cmd + ["--seed", str(seed), "--json", out_json], out_json


def run_one(cfg, runs_dir, cls, seed, timeout, slot=None, launcher="local", procs=None, stop=None):
    """One subprocess of the script -> ('ok' | 'failed' | 'interrupted', wall seconds). Writes <key>.json (the
    script), <key>.log/.err (its output), and <key>.meta.json on success or <key>.failed otherwise.
    slot: environment for this run (OMP_NUM_THREADS, CUDA_VISIBLE_DEVICES). procs/stop: the parallel runner's
    set of live children and its stop event (Ctrl-C), so that an interrupted run is not recorded as failed."""
    key = run_key(cls, seed)
    cmd, out_json = run_command(cfg, runs_dir, cls, seed)
    failed = os.path.join(runs_dir, key + ".failed")
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(slot or {}))
    t0 = time.time()
    with open(os.path.join(runs_dir, key + ".log"), "w") as out, open(os.path.join(runs_dir, key + ".err"), "w") as err:
        # its own session: a Ctrl-C in the terminal reaches the runner, which stops the children itself
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env=env, start_new_session=True)
        if procs is not None:
            procs.add(proc)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            rc = "timeout"
        finally:
            if procs is not None:
                procs.discard(proc)
    wall = round(time.time() - t0, 1)
    if stop is not None and stop.is_set() and not os.path.exists(out_json):
        return "interrupted", wall
    shown = ["python"] + [os.path.relpath(c, REPO) if c in (cfg["script_path"], out_json) else c for c in cmd[1:]]
    host = host_info()
    for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES"):
        if k in env:
            host[k] = env[k]
    meta = {"command": shlex.join(shown), "wall_s": wall, "returncode": rc, "launcher": launcher, "host": host,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if rc == 0 and os.path.exists(out_json):
        try:
            meta["device"] = read_json(out_json).get("device")
        except (OSError, ValueError):
            pass
        write_atomic(os.path.join(runs_dir, key + ".meta.json"), json.dumps(meta, indent=1))
        if os.path.exists(failed):
            os.remove(failed)
        return "ok", wall
    with open(os.path.join(runs_dir, key + ".err")) as f:
        tail = f.read().splitlines()[-30:]
    if rc == 0:
        tail.append(f"(exit status 0, but the script wrote no {os.path.basename(out_json)})")
    if rc == "timeout":
        tail.append(f"(killed after --timeout {timeout}s)")
    meta["stderr_tail"] = "\n".join(tail)
    write_atomic(failed, json.dumps(meta, indent=1))
    return "failed", wall


def kill_group(proc):
    """Stop a child started in its own session, and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def visible_gpus():
    """Indices of the GPUs this process may use: $CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, ln in enumerate(out.stdout.splitlines()) if ln.startswith("GPU ")] if out.returncode == 0 else []


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_slots(args):
    """-> list of per-run environments, one per run that may go at once.
    CPU: --jobs N slots, each with OMP_NUM_THREADS = --threads (default: the usable cores divided among the N
    runs, at least 1; an OMP_NUM_THREADS already set in the environment is kept). GPUs (--gpus, default every
    visible one, unless --jobs is given on a host without GPUs): --per-gpu K runs share each device, placed
    round-robin through CUDA_VISIBLE_DEVICES."""
    gpus = visible_gpus()
    if args.gpus is not None:
        wanted = [g.strip() for g in args.gpus.split(",") if g.strip()]
        missing = [g for g in wanted if g not in gpus]
        if not wanted or missing:
            seen = ",".join(gpus) if gpus else "none"
            raise BadInput(f"error: --gpus {args.gpus}: GPU {missing[0] if missing else '(empty)'} is not visible "
                             f"on this host (visible: {seen}). Pass visible indices, or leave --gpus out")
        gpus = wanted
    if args.per_gpu < 1:
        raise BadInput(f"error: --per-gpu must be at least 1 (got {args.per_gpu}). Pass how many runs may share one GPU")
    if args.jobs is not None and args.jobs < 1:
        raise BadInput(f"error: --jobs must be at least 1 (got {args.jobs}). Pass how many runs may go at once")
    if args.threads is not None and args.threads < 1:
        raise BadInput(f"error: --threads must be at least 1 (got {args.threads}). Pass the threads per run")
    if gpus and not args.cpu:
        n = args.jobs or len(gpus) * args.per_gpu
        placement = [gpus[i % len(gpus)] for i in range(n)]      # round-robin over devices, per_gpu deep
        threads = args.threads or max(1, usable_cores() // n)
        return [{"CUDA_VISIBLE_DEVICES": g, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
                for g in placement]
    n = args.jobs or 1
    threads = str(args.threads) if args.threads else os.environ.get("OMP_NUM_THREADS", str(max(1, usable_cores() // n)))
    return [{"OMP_NUM_THREADS": threads} for _ in range(n)]


def sweep(cfg, runs_dir, skip_failed, timeout, report, slots, log=print):
    """Run the (class, seed) pairs still to do, up to len(slots) at once; the report is rewritten after every
    finished run. Ctrl-C stops the running children, keeps every finished run, and re-raises (exit 130)."""
    todo = []
    pairs = [(c, s) for c in (cfg["classes"] or [None]) for s in cfg["seeds"]]
    for i, (c, s) in enumerate(pairs, 1):
        what = f"[{i}/{len(pairs)}] {'' if c is None else f'class {c} '}seed {s}"
        key = run_key(c, s)
        if os.path.exists(os.path.join(runs_dir, key + ".json")):
            continue
        if os.path.exists(os.path.join(runs_dir, key + ".submitted")):
            log(f"{what}: submitted to the cluster before; collect it with --launcher slurm", flush=True)
            continue
        if skip_failed and os.path.exists(os.path.join(runs_dir, key + ".failed")):
            log(f"{what}: failed before, skipped (--skip-failed)", flush=True)
            continue
        todo.append((what, c, s))
    free, procs, stop, lock = queue.Queue(), set(), threading.Event(), threading.Lock()
    for slot in slots:
        free.put(slot)

    def work(item):
        what, c, s = item
        slot = free.get()
        try:
            if stop.is_set():
                return "interrupted"
            where = ", ".join(f"{k}={v}" for k, v in slot.items())
            log(f"{what}: running ({where})", flush=True)
            status, wall = run_one(cfg, runs_dir, c, s, timeout, slot, "local", procs, stop)
            with lock:
                if status == "ok":
                    r = read_json(os.path.join(runs_dir, run_key(c, s) + ".json"))
                    m = cfg.get("metric") or ("f1" if "f1" in r else "auroc")
                    log(f"{what}: {m}={r.get(m)} ({wall}s)", flush=True)
                elif status == "failed":
                    log(f"{what}: FAILED, see {os.path.relpath(os.path.join(runs_dir, run_key(c, s) + '.failed'), REPO)}",
                        flush=True)
                if status != "interrupted":
                    report()
            return status
        finally:
            free.put(slot)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(slots))
    futures = [pool.submit(work, item) for item in todo]
    try:
        while not all(f.done() for f in futures):
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop.set()
        for proc in list(procs):
            kill_group(proc)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    for f in futures:
        f.result()          # a bug in the runner itself surfaces here
    return sum(1 for f in futures if f.result() in ("ok", "failed"))


# ------------------------------------------------------------------------------------------ SLURM (submitit)

def cluster_job(cfg, runs_dir, cls, seed, timeout):
    """What one SLURM task does: the same run_one as a local run (the files land in the shared runs/ folder)."""
    slot = {"OMP_NUM_THREADS": os.environ.get("SLURM_CPUS_PER_TASK", os.environ.get("OMP_NUM_THREADS", "1"))}
    return run_one(cfg, runs_dir, cls, seed, timeout, slot, launcher=f"submitit ({os.environ.get('SLURM_JOB_ID', 'local')})")


def slurm_minutes(text):
    """--slurm-time: minutes (90) or [D-]HH:MM[:SS] -> minutes."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d+)(?::(\d+))?", str(text).strip())
    if m:
        d, h, mi, sec = (int(v or 0) for v in m.groups())
        return d * 1440 + h * 60 + mi + (1 if sec else 0)
    if re.fullmatch(r"\d+", str(text).strip()):
        return int(text)
    raise BadInput(f"error: --slurm-time must be minutes (90) or HH:MM:SS (got '{text}'). Pass e.g. --slurm-time 2:00:00")


def sweep_submitit(cfg, runs_dir, args, report, log=print):
    """--launcher slurm (or submitit-local, submitit's LocalExecutor on this machine): the runs still to do go
    to the queue as one job array; the queueing is submitit's and SLURM's. Each submitted run leaves
    runs/<key>.submitted (job id, log paths). Without --no-wait the command waits for the jobs; a later
    invocation collects jobs submitted with --no-wait (finished -> their JSON is there; ended without one ->
    recorded as failed with the path of the SLURM log; still queued or running -> left alone)."""
    try:
        import submitit
    except ImportError:
        raise BadInput("error: --launcher slurm needs the package submitit, which is not installed. "
                         "Run: pip install -r benchmarks/requirements.txt") from None
    if __name__ != "__main__":      # imported (tests, another tool): ship this module's code with each job
        import cloudpickle
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    folder = os.path.join(os.path.dirname(runs_dir), "submitit")
    cluster = "local" if args.launcher == "submitit-local" else "slurm"
    pairs = [(c, s) for c in (cfg["classes"] or [None]) for s in cfg["seeds"]]
    todo, pending = [], []
    for c, s in pairs:
        key = run_key(c, s)
        base = os.path.join(runs_dir, key)
        if os.path.exists(base + ".json"):
            continue
        if os.path.exists(base + ".submitted"):
            sub = read_json(base + ".submitted")
            job = submitit.SlurmJob(folder=folder, job_id=sub["job_id"]) if cluster == "slurm" else None
            state = job.state if job is not None else "UNKNOWN"
            if state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"):
                log(f"{key}: job {sub['job_id']} is {state}; collect it later", flush=True)
                pending.append(key)
                continue
            if not os.path.exists(base + ".failed"):
                record_job_failure(base, sub, f"SLURM job {sub['job_id']} ended ({state}) without the run's JSON")
            os.remove(base + ".submitted")
            continue
        if args.skip_failed and os.path.exists(base + ".failed"):
            continue
        todo.append((c, s))
    if args.no_wait and cluster == "local":
        raise BadInput("error: --no-wait needs --launcher slurm (submitit's local executor runs jobs as children "
                         "of this command). Leave out --no-wait")
    if not todo:
        return 0
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = {"timeout_min": slurm_minutes(args.slurm_time), "name": cfg["name"]}
    if args.slurm_cpus_per_task:
        params["cpus_per_task"] = args.slurm_cpus_per_task
    if cluster == "slurm":
        if args.slurm_partition:
            params["slurm_partition"] = args.slurm_partition
        if args.slurm_gpus_per_task:
            params["slurm_gpus_per_task"] = args.slurm_gpus_per_task
        if args.slurm_mem:
            params["slurm_mem"] = args.slurm_mem
    ex.update_parameters(**params)
    jobs = []
    with ex.batch():                                          # one job array
        for c, s in todo:
            jobs.append(((c, s), ex.submit(cluster_job, cfg, runs_dir, c, s, args.timeout)))
    for (c, s), job in jobs:
        sub = {"job_id": str(job.job_id), "launcher": args.launcher, "stdout": str(job.paths.stdout),
               "stderr": str(job.paths.stderr),
               "submitted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        write_atomic(os.path.join(runs_dir, run_key(c, s) + ".submitted"), json.dumps(sub, indent=1))
        log(f"{run_key(c, s)}: submitted as job {job.job_id}", flush=True)
    if args.no_wait:
        log(f"{len(jobs)} job(s) submitted; rerun the same command to collect them", flush=True)
        return 0
    for (c, s), job in jobs:
        base = os.path.join(runs_dir, run_key(c, s))
        sub = read_json(base + ".submitted")
        try:
            status, wall = job.result()
            log(f"{run_key(c, s)}: {status} ({wall}s)", flush=True)
        except Exception as e:       # the job died (killed, out of time or memory) before run_one returned
            record_job_failure(base, sub, f"job {sub['job_id']} failed: {type(e).__name__}: {str(e)[-2000:]}")
            log(f"{run_key(c, s)}: job FAILED, see {sub['stderr']}", flush=True)
        os.remove(base + ".submitted")
        report()
    return len(jobs)


def record_job_failure(base, sub, why):
    meta = {"command": "(cluster job)", "returncode": "job failed", "launcher": sub.get("launcher"),
            "stderr_tail": f"{why}\nSLURM log: {sub.get('stderr')}", "slurm_log": sub.get("stderr"),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    write_atomic(base + ".failed", json.dumps(meta, indent=1))


# ------------------------------------------------------------------------------------------ aggregation

def paper_cell(t, c):
    """The paper's figure for one class token (None: no table, or no such cell)."""
    if t is None:
        return None
    pv = t["per_class_01"].get("all" if c is None else str(c))
    if pv is None and c is None:
        pv = t["average_01"]
    return pv


def paper_average(t, classes):
    """The paper's figure to compare a class average with: the printed average when the sweep covers every
    class column of the table (or the table prints one figure only), else the mean of the paper's cells for the
    same classes; None when a needed cell is missing."""
    if t is None:
        return None
    cols = {k for k in t["per_class_01"] if k != "all"}
    wanted = {str(c) for c in classes}
    if not cols or wanted == cols:
        if t["average_01"] is not None:
            return t["average_01"]
    cells = [t["per_class_01"].get(k) for k in wanted]
    return None if not cells or any(v is None for v in cells) else sum(cells) / len(cells)


def table_info(t):
    return None if t is None else {k: t.get(k) for k in ("key", "paper", "table", "where", "row", "metric", "unit",
                                                         "source", "table_note", "note")}


def aggregate(cfg, runs_dir, paper, variant_papers=None):
    """Collect the run JSONs and .failed files of the requested classes x seeds into one summary dict.
    paper: the main metric's reference table (or None); variant_papers: {variant key: table} for the other
    reported variants (e.g. auroc_ae next to the paper's AE row)."""
    variant_papers = variant_papers or {}
    classes = cfg["classes"] or [None]
    runs = {}
    for c in classes:
        for s in cfg["seeds"]:
            key = run_key(c, s)
            base = os.path.join(runs_dir, key)
            if os.path.exists(base + ".json"):
                r = read_json(base + ".json")
                meta = read_json(base + ".meta.json") if os.path.exists(base + ".meta.json") else {}
                runs[(c, s)] = ("ok", r, meta)
            elif os.path.exists(base + ".failed"):
                runs[(c, s)] = ("failed", None, read_json(base + ".failed"))
    ok = [r for st, r, _ in runs.values() if st == "ok"]
    metric = cfg.get("metric") or ("f1" if ok and all("f1" in r for r in ok) else "auroc")
    variants = sorted({k for r in ok for k in r if k.startswith(metric + "_") and isinstance(r[k], (int, float))})
    if metric != "auroc":   # tabular: the F1 variants, then AUROC and its variants
        variants += (["auroc"] if any("auroc" in r for r in ok) else []) + sorted(
            {k for r in ok for k in r if k.startswith("auroc_") and isinstance(r[k], (int, float))})
    rows, failed, hosts = [], [], set()
    for c in classes:
        vals, var_vals, secs, walls, devices, n_fail, missing = [], {v: [] for v in variants}, [], [], set(), 0, 0
        for s in cfg["seeds"]:
            st, r, meta = runs.get((c, s), (None, None, None))
            if st is None:
                missing += 1
                continue
            if st == "failed":
                n_fail += 1
                failed.append({"class": c, "seed": s, "returncode": meta.get("returncode"),
                               "stderr_tail": meta.get("stderr_tail", ""), "command": meta.get("command", "")})
                continue
            if not isinstance(r.get(metric), (int, float)):
                n_fail += 1
                failed.append({"class": c, "seed": s, "returncode": 0, "command": meta.get("command", ""),
                               "stderr_tail": f"the run's JSON has no numeric '{metric}' key"})
                continue
            vals.append(float(r[metric]))
            for v in variants:
                if isinstance(r.get(v), (int, float)):
                    var_vals[v].append(float(r[v]))
            if isinstance(r.get("seconds"), (int, float)):
                secs.append(float(r["seconds"]))
            if "wall_s" in meta:
                walls.append(float(meta["wall_s"]))
            devices.add(str(r.get("device", "unknown")))
            if meta.get("host"):
                hosts.add(host_text(meta["host"]))
        m, sd = mean_std(vals)
        pv = paper_cell(paper, c)
        var_rows = {}
        for v in variants:
            vm, vsd = mean_std(var_vals[v])
            var_rows[v] = {"mean": vm, "std": vsd, "n": len(var_vals[v])}
            if v in variant_papers:
                vp = paper_cell(variant_papers[v], c)
                var_rows[v].update(paper=vp, diff=None if vm is None or vp is None else vm - vp)
        rows.append({"class": c, "n": len(vals), "n_failed": n_fail, "n_missing": missing, "values": vals,
                     "mean": m, "std": sd, "variants": var_rows,
                     "paper": pv, "diff": None if m is None or pv is None else m - pv,
                     "seconds_mean": mean_std(secs)[0], "wall_s_total": sum(walls), "devices": sorted(devices)})
    done = [r for r in rows if r["mean"] is not None]
    avg = {"mean": mean_std([r["mean"] for r in done])[0], "classes_with_results": len(done),
           "classes_requested": len(rows),
           "variants": {v: mean_std([r["variants"][v]["mean"] for r in done if r["variants"][v]["mean"] is not None])[0]
                        for v in variants}}
    complete = len(done) == len(rows)
    if paper:
        avg["paper"] = paper_average(paper, classes)
        avg["diff"] = None if avg["mean"] is None or avg["paper"] is None or not complete else avg["mean"] - avg["paper"]
    avg["variant_papers"] = {}
    for v in variants:
        if v in variant_papers:
            vp, vm = paper_average(variant_papers[v], classes), avg["variants"][v]
            avg["variant_papers"][v] = {"paper": vp, "diff": None if vm is None or vp is None or not complete else vm - vp}
    return {"name": cfg["name"], "script": cfg["script"], "protocol": cfg.get("protocol"), "dataset": cfg.get("dataset"),
            "protocol_note": cfg.get("protocol_note"), "command": cfg["command"], "run_command": cfg["run_command"],
            "script_args": cfg["script_args"], "classes": cfg["classes"], "seeds": cfg["seeds"], "metric": metric,
            "variants": variants, "rows": rows, "average": avg, "failed": failed,
            "runs_ok": sum(r["n"] for r in rows), "runs_failed": len(failed),
            "runs_missing": sum(r["n_missing"] for r in rows),
            "wall_s_total": round(sum(r["wall_s_total"] for r in rows), 1),
            "devices": sorted({d for r in rows for d in r["devices"]}), "hosts": sorted(hosts),
            "paper": table_info(paper),
            "variant_papers": {v: table_info(t) for v, t in variant_papers.items() if v in variants},
            "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# ------------------------------------------------------------------------------------------ rendering

def pct(x, signed=False):
    """0..1 -> percent with two decimals (the papers print AUROC/F1 in percent)."""
    if x is None:
        return "–"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def pm(mean, std):
    if mean is None:
        return "–"
    return pct(mean) if std is None else f"{pct(mean)} ± {100 * std:.2f}"


def render_md(s):
    metric, paper = s["metric"], s["paper"]
    L = [f"# {s['name']}", ""]
    L.append(f"`{s['script']}`" + (f", protocol `{s['protocol']}`" if s["protocol"] else "")
             + (f", dataset `{s['dataset']}`" if s["dataset"] else "") + f"; updated {s['updated']}.")
    L += ["", "Command (rerun it to resume; finished runs are not repeated):", "", "```", s["command"], "```", "",
          "Each run:", "", "```", s["run_command"], "```", ""]
    if s.get("protocol_note"):
        L += [f"Protocol: {s['protocol_note']}", ""]
    cls_txt = "none (seeds only)" if not s["classes"] else ",".join(map(str, s["classes"]))
    L.append(f"Classes: {cls_txt}. Seeds: {','.join(map(str, s['seeds']))}. Runs: {s['runs_ok']} finished, "
             f"{s['runs_failed']} failed, {s['runs_missing']} not run yet. Wall time of the runs: {s['wall_s_total']:.0f} s. "
             f"Device: {', '.join(s['devices']) or '–'} (host: {'; '.join(s['hosts']) or '–'}).")
    L.append("")
    vpapers = s.get("variant_papers") or {}
    if paper or vpapers:
        shown = set()
        for what, t in [(metric, paper)] + sorted(vpapers.items()):
            if not t:
                continue
            head = f"{t['paper']}, {t['table']}"
            if head not in shown:
                shown.add(head)
                L.append(f"Paper: {head}, metric {t.get('metric')}" + (f"; source {t['source']}" if t.get("source") else "")
                         + "." + (f" {t['table_note']}" if t.get("table_note") else ""))
                L.append("")
            L.append(f"- `{what}` ↔ row '{t.get('row') or t['key']}' ({t.get('where') or 'page/section not recorded'})"
                     + (f": {t['note']}" if t.get("note") else ""))
        L.append("")
    else:
        L += ["Paper: no reference table given (--paper).", ""]
    L += [f"Numbers in percent: ours = mean ± sample std (n-1) over seeds of `{metric}`; "
          "Δ = ours − paper in percentage points.", ""]
    head = ["class", "n", f"ours {metric}", "paper", "Δ"]
    for v in s["variants"]:
        head += [v] + ([f"paper {v}", f"Δ {v}"] if v in vpapers else [])
    head += ["s/run", "device", "note"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    for r in s["rows"]:
        note = []
        if r["n_failed"]:
            note.append(f"**{r['n_failed']} FAILED**")
        if r["n_missing"]:
            note.append(f"{r['n_missing']} not run")
        cells = ["all" if r["class"] is None else str(r["class"]), str(r["n"]), pm(r["mean"], r["std"]),
                 pct(r["paper"]), pct(r["diff"], signed=True)]
        for v in s["variants"]:
            rv = r["variants"][v]
            cells.append(pm(rv["mean"], rv["std"]))
            if v in vpapers:
                cells += [pct(rv.get("paper")), pct(rv.get("diff"), signed=True)]
        cells += ["–" if r["seconds_mean"] is None else f"{r['seconds_mean']:.0f}", ",".join(r["devices"]) or "–",
                  "; ".join(note)]
        L.append("| " + " | ".join(cells) + " |")
    if s["classes"]:
        a = s["average"]
        cells = ["**average**", f"{a['classes_with_results']}/{a['classes_requested']} classes", pct(a["mean"]),
                 pct(a.get("paper")), pct(a.get("diff"), signed=True)]
        for v in s["variants"]:
            cells.append(pct(a["variants"][v]))
            if v in vpapers:
                vp = (a.get("variant_papers") or {}).get(v, {})
                cells += [pct(vp.get("paper")), pct(vp.get("diff"), signed=True)]
        cells += ["", "", ""]
        L.append("| " + " | ".join(cells) + " |")
        if a["classes_with_results"] < a["classes_requested"]:
            L += ["", "The average covers only the classes with results; Δ of the average is left out until all are done."]
    if s["failed"]:
        L += ["", "## Failed runs", ""]
        for f in s["failed"]:
            who = ("" if f["class"] is None else f"class {f['class']} ") + f"seed {f['seed']}"
            L += [f"- {who}: exit status {f['returncode']}; `{f['command']}`", "", "```",
                  *(f["stderr_tail"] or "(no stderr)").splitlines()[-15:], "```", ""]
    return "\n".join(L).rstrip() + "\n"


def render_side_by_side(results_dir, names, reference_keys, paper_tables_path, argv):
    """One table of several sweeps over the same classes and seeds (an ablation: one sweep per variant), from
    their stored runs: per class mean ± sample std over seeds, the class average, the average per seed, and
    each later sweep's paired difference to the first (mean ± sample std over the (class, seed) pairs both
    have). reference_keys: paper_tables.json rows printed below for reference (they are not the same data)."""
    cfgs = []
    for name in names:
        path = os.path.join(results_dir, name, "config.json")
        if not os.path.exists(path):
            raise BadInput(f"error: --side-by-side: no stored runs for '{name}' ({path} is missing). "
                           "Give names of sweeps under --results-dir")
        cfgs.append(read_json(path))
    agg = os.path.join(results_dir, names[0] + ".json")               # the metric the sweep's report settled on
    metric = cfgs[0]["metric"] or (read_json(agg).get("metric") if os.path.exists(agg) else None) or "auroc"
    classes = cfgs[0]["classes"] or [None]
    seeds = sorted({s for c in cfgs for s in c["seeds"]})

    def value(cfg, c, s):
        f = os.path.join(results_dir, cfg["name"], "runs", run_key(c, s) + ".json")
        return read_json(f).get(metric) if os.path.exists(f) else None

    vals = {cfg["name"]: {(c, s): value(cfg, c, s) for c in classes for s in seeds} for cfg in cfgs}

    def mean_std(xs):
        xs = [x for x in xs if x is not None]
        if not xs:
            return None, None, 0
        m = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
        return m, sd, len(xs)

    def cell(xs):
        m, sd, n = mean_std(xs)
        return "–" if m is None else f"{pm(m, sd)} (n={n})"

    L = [f"# Side by side: {', '.join(names)}", "",
         f"Generated by `{shlex.join(['python', 'benchmarks/run.py', *argv])}` from the stored runs; do not edit by "
         f"hand. {metric} in percent; per class: mean ± sample std over seeds (n runs).", ""]
    for cfg in cfgs:
        L.append(f"- `{cfg['name']}`: `{cfg['command']}` ([per-class table]({cfg['name']}.md))")
    L += ["", "| class | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for c in classes:
        L.append(f"| {'all' if c is None else c} | " + " | ".join(
            cell([vals[n][(c, s)] for s in seeds]) for n in names) + " |")

    def class_avg(n, ss):
        per = [mean_std([vals[n][(c, s)] for s in ss])[0] for c in classes]
        per = [x for x in per if x is not None]
        return (sum(per) / len(per), len(per)) if per else (None, 0)

    L.append("| **average over classes** | " + " | ".join(
        (lambda a: "–" if a[0] is None else f"**{pct(a[0])}** ({a[1]} classes)")(class_avg(n, seeds))
        for n in names) + " |")
    for s in seeds:
        L.append(f"| average, seed {s} | " + " | ".join(
            (lambda a: "–" if a[0] is None else f"{pct(a[0])} ({a[1]} classes)")(class_avg(n, [s]))
            for n in names) + " |")
    base = names[0]
    row = [f"paired Δ vs {base}"]
    for n in names:
        if n == base:
            row.append("–")
            continue
        d = [vals[n][k] - vals[base][k] for k in vals[base] if vals[n][k] is not None and vals[base][k] is not None]
        m, sd, k = mean_std(d)
        wins = sum(x > 0 for x in d)
        row.append("–" if m is None else f"{pct(m, signed=True)} ± {100 * (sd or 0):.2f} ({wins} of {k} pairs higher)")
    L.append("| " + " | ".join(row) + " |")
    if reference_keys:
        tables = read_json(paper_tables_path)["tables"]
        L += ["", "For reference, the paper's figures (other data and protocol; from paper_tables.json):", ""]
        for key in reference_keys:
            if key not in tables:
                raise BadInput(f"error: --reference: '{key}' is not in {paper_tables_path}. Use a key listed by --list")
            t = tables[key]
            avg = t.get("average") if t.get("average") is not None else (t.get("values") or {}).get("all")
            L.append(f"- {t.get('row', key)} ({t.get('dataset', '?')}): {avg} — {t.get('where', '?')}")
    return "\n".join(L) + "\n"


def render_readme_section(results_dir, readme_dir=HERE):
    """The results section of benchmarks/README.md: one row per benchmarks/results/*.json, generated, never typed;
    links relative to readme_dir (the folder of the README it goes into)."""
    files = sorted(glob.glob(os.path.join(results_dir, "*.json")))
    L = [README_BEGIN, "",
         "Generated by `python benchmarks/run.py --readme --write` from `benchmarks/results/*.json`; do not edit by hand. "
         "AUROC/F1 in percent, mean over classes of the per-class mean over seeds; Δ = ours − paper (percentage "
         "points). Each name links to the per-class table with the exact command and protocol. 'other' = the "
         "same runs' other reported variants (averaged the same way); 'wall' = the runs' summed wall time.", ""]
    if not files:
        L += ["No benchmark results yet.", "", README_END]
        return "\n".join(L) + "\n"
    L += ["| benchmark | script | protocol | dataset | classes × seeds | runs ok / failed | metric | ours | other | paper | Δ "
          "| wall | device |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in files:
        s = read_json(path)
        if "rows" not in s or "average" not in s:       # e.g. speed.json
            continue
        a = s["average"]
        ours = a["mean"] if s["classes"] else s["rows"][0]["mean"]
        paper = a.get("paper") if s["classes"] else s["rows"][0]["paper"]
        diff = a.get("diff") if s["classes"] else s["rows"][0]["diff"]
        ncls = len(s["classes"]) if s["classes"] else "–"
        if s["classes"]:
            other = {k: (v, (a.get("variant_papers") or {}).get(k, {})) for k, v in (a.get("variants") or {}).items()}
        else:
            other = {k: (v.get("mean"), v) for k, v in (s["rows"][0].get("variants") or {}).items()}
        other = ", ".join(f"{k} {pct(v)}" + (f" (paper {pct(p['paper'])}, Δ {pct(p.get('diff'), signed=True)})"
                                             if p.get("paper") is not None else "")
                          for k, (v, p) in other.items() if v is not None) or "–"
        rel = os.path.relpath(os.path.splitext(path)[0] + ".md", readme_dir)
        L.append(f"| [{s['name']}]({rel}) | `{s['script']}` | {s.get('protocol') or 'custom'} | {s.get('dataset') or '–'} | "
                 f"{ncls} × {len(s['seeds'])} | {s['runs_ok']} / {s['runs_failed']} | {s['metric']} | {pct(ours)} | {other} | "
                 f"{pct(paper)} | {pct(diff, signed=True)} | {s['wall_s_total'] / 60:.0f} min | {', '.join(s['devices']) or '–'} |")
    L += ["", README_END]
    return "\n".join(L) + "\n"


def replace_readme(readme_path, section):
    with open(readme_path) as f:
        text = f.read()
    i, j = text.find(README_BEGIN), text.find(README_END)
    if i < 0 or j < i:
        raise BadInput(f"error: {readme_path} has no '{README_BEGIN}' ... '{README_END}' markers; add them where "
                         "the results section belongs, then rerun")
    write_atomic(readme_path, text[:i] + section.rstrip("\n") + text[j + len(README_END):])


# ------------------------------------------------------------------------------------------ main

def parse_args(argv):
    if "--" in argv:
        k = argv.index("--")
        argv, extra = argv[:k], argv[k + 1:]
    else:
        extra = []
    p = argparse.ArgumentParser(description="Run a script over normal classes x seeds; tabulate against the paper.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="Flags after '--' go to the script unchanged (after the protocol's).")
    p.add_argument("--script", help="the script to run, relative to the repository root (toll.py, ...)")
    p.add_argument("--name", help="results go to RESULTS_DIR/NAME/ and NAME.{json,md} "
                                  "(default with --protocol: <stem>_<dataset>_<protocol>)")
    p.add_argument("--protocol", help="named protocol from protocols.json (cpu, paper): its flags, seeds, paper table")
    p.add_argument("--dataset", help="adds --dataset to the script's flags; picks the protocol's per-dataset "
                                     "settings, the paper table and the default classes")
    p.add_argument("--classes", default=None,
                   help="normal classes, e.g. 0-9 or 0,3,8; 'none' = seeds only, no --normal (tabular sets). "
                        "Default: every class of --dataset, none for tabular sets")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 0-4 or 0,1 (default: the protocol's, else 0)")
    p.add_argument("--paper", default=None, help="key of the reference table in paper_tables.json "
                                                 "(default: the protocol's for --dataset)")
    p.add_argument("--paper-variant", action="append", default=None, metavar="V=KEY",
                   help="reference table of a reported variant, e.g. auroc_ae=lis_ae/table1/mnist/ae (repeatable; "
                        "default: the protocol's paper_tables mapping)")
    p.add_argument("--report-all", action="store_true",
                   help="re-render every sweep under RESULTS_DIR from its stored runs (after a table was transcribed)")
    p.add_argument("--metric", default=None, help="main metric key (default: f1 if every run reports it, else auroc)")
    p.add_argument("--timeout", type=float, default=None, help="seconds after which one run is killed and recorded as failed")
    p.add_argument("--skip-failed", action="store_true", help="do not retry runs that failed before")
    p.add_argument("--report", action="store_true", help="only re-render NAME's report from its stored runs")
    p.add_argument("--dry-run", action="store_true", help="print the commands of the runs still to do; run nothing")
    p.add_argument("--list", action="store_true", help="list the protocols and paper tables, then exit")
    p.add_argument("--side-by-side", default=None, metavar="NAME,NAME,...",
                   help="one table of stored sweeps side by side (an ablation), with paired differences to the "
                        "first; printed, or written with --out")
    p.add_argument("--reference", default=None, metavar="KEY,KEY",
                   help="with --side-by-side: paper_tables.json rows to list under the table")
    p.add_argument("--out", default=None, help="with --side-by-side: write the table to this file")
    p.add_argument("--readme", action="store_true", help="print the results section of benchmarks/README.md built from RESULTS_DIR/*.json")
    p.add_argument("--write", action="store_true", help="with --readme: replace the section in --readme-file (benchmarks/README.md)")
    p.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--protocols", default=os.path.join(HERE, "protocols.json"))
    p.add_argument("--paper-tables", default=os.path.join(HERE, "paper_tables.json"))
    p.add_argument("--readme-file", default=os.path.join(HERE, "README.md"))
    g = p.add_argument_group("running runs side by side")
    g.add_argument("--jobs", type=int, default=None,
                   help="runs at once (default 1 on CPU; on a GPU host: len(--gpus) x --per-gpu)")
    g.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS of each run (default: $OMP_NUM_THREADS, else the usable cores divided by "
                        "the runs at once). Results on CPU are repeatable for a fixed thread count")
    g.add_argument("--gpus", default=None, help="GPU indices to place runs on, round-robin by CUDA_VISIBLE_DEVICES "
                                                "(default: every visible GPU)")
    g.add_argument("--per-gpu", type=int, default=1, help="runs sharing one GPU")
    g.add_argument("--cpu", action="store_true", help="ignore the GPUs: CPU slots only")
    g.add_argument("--launcher", default="local", choices=["local", "slurm", "submitit-local"],
                   help="local: subprocesses here; slurm: a job array through submitit (pip install -r "
                        "benchmarks/requirements.txt); submitit-local: submitit's local executor (a dry run of the "
                        "slurm path on this machine)")
    g.add_argument("--no-wait", action="store_true", help="slurm: submit and return; rerun the command to collect")
    g.add_argument("--slurm-partition", default=None)
    g.add_argument("--slurm-time", default="240", help="per run: minutes or HH:MM:SS")
    g.add_argument("--slurm-gpus-per-task", type=int, default=None)
    g.add_argument("--slurm-cpus-per-task", type=int, default=None)
    g.add_argument("--slurm-mem", default=None, help="e.g. 16G")
    args = p.parse_args(argv)
    args.extra = extra
    return args, p


def cli_papers(args):
    """--paper KEY and --paper-variant V=KEY -> {metric: key} ("main" = the main metric)."""
    out = {"main": args.paper} if args.paper else {}
    for item in args.paper_variant or []:
        if "=" not in item:
            raise BadInput(f"error: --paper-variant must look like auroc_ae=lis_ae/table1/mnist/ae (got '{item}'). "
                           "Give the variant's RESULT key, '=', and a paper_tables.json key")
        v, key = item.split("=", 1)
        out[v.strip()] = key.strip()
    return out


def papers_for(cfg, args):
    """Reference tables of a sweep: the ones given on its first command line (--paper, --paper-variant), else
    the protocol's mapping as protocols.json has it NOW (so a table transcribed later shows up on --report),
    else a key stored by an older run.py. -> (main table or None, {variant: table})."""
    mapping = dict(cfg.get("paper_cli") or {})
    if not mapping and cfg.get("protocol") and cfg.get("dataset"):
        try:
            mapping = resolve_protocol(load_protocols(args.protocols), cfg["script"], cfg["protocol"], cfg["dataset"])[2]
        except BadInput:
            mapping = {}
    if not mapping and cfg.get("paper"):
        mapping = {"main": cfg["paper"]}
    main_key = mapping.pop("main", None) or mapping.pop(cfg.get("metric") or "", None)
    return load_paper(args.paper_tables, main_key), {v: load_paper(args.paper_tables, k) for v, k in mapping.items() if k}


def list_known(args):
    protocols = load_protocols(args.protocols)
    for stem, entry in protocols.items():
        if stem.startswith("_"):
            continue
        print(stem)
        for name, proto in entry.get("protocols", {}).items():
            flags = "(TODO)" if proto.get("args") is None else " ".join(proto["args"]) or "(the script's defaults)"
            print(f"  {name:6s} {flags}  seeds {proto.get('seeds', '0')}")
            for ds, per in proto.get("datasets", {}).items():
                f = flags if per.get("args") is None else " ".join(per["args"]) or "(the script's defaults)"
                print(f"         {ds}: {f}  seeds {per.get('seeds', proto.get('seeds', '0'))}")
        for ds, key in entry.get("paper_tables", {}).items():
            print(f"  paper table for {ds}: {key}")
    tables = read_json(args.paper_tables).get("tables", {}) if os.path.exists(args.paper_tables) else {}
    print("paper tables:")
    for key, t in tables.items():
        state = "transcribed" if any(v is not None for v in (t.get("values") or {}).values()) or t.get("average") is not None else "NOT transcribed"
        print(f"  {key}: {t.get('paper', '')[:40]} {t.get('table')} [{state}]")


def _stop(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    """Ctrl-C, and also SIGTERM (kill) and a SIGINT sent to a sweep started in the background (where the shell
    ignores SIGINT), stop a sweep the same way: running children stopped, finished runs kept, exit 130."""
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    old = signal.signal(signal.SIGINT, signal.default_int_handler), signal.signal(signal.SIGTERM, _stop)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])


def _main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, p = parse_args(argv)
    if args.list:
        list_known(args)
        return 0
    if args.side_by_side:
        names = [n for n in args.side_by_side.split(",") if n]
        if len(names) < 2:
            p.error("--side-by-side needs at least two sweep names, comma-separated")
        text = render_side_by_side(args.results_dir, names, [k for k in (args.reference or "").split(",") if k],
                                   args.paper_tables, argv)
        if args.out:
            write_atomic(args.out, text)
            print(f"wrote {args.out}")
        else:
            print(text, end="")
        return 0
    if args.out or args.reference:
        p.error("--out and --reference go with --side-by-side")
    if args.readme:
        section = render_readme_section(args.results_dir, os.path.dirname(os.path.abspath(args.readme_file)))
        if args.write:
            replace_readme(args.readme_file, section)
            print(f"replaced the results section of {args.readme_file}")
        else:
            print(section, end="")
        return 0
    if args.write:
        p.error("--write goes with --readme")
    # everything about where runs go is checked before anything is written or started
    slots = make_slots(args) if not (args.report or args.dry_run) and args.launcher == "local" else None
    if args.launcher != "local" and not (args.report or args.dry_run):
        slurm_minutes(args.slurm_time)          # the user's own typo first, then what the machine lacks
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise BadInput(f"error: --launcher {args.launcher} needs the package submitit, which is not installed. "
                           "Run: pip install -r benchmarks/requirements.txt") from None

    if args.report_all:
        names = sorted(os.path.basename(os.path.dirname(c))
                       for c in glob.glob(os.path.join(args.results_dir, "*", "config.json")))
        for name in names:
            _main(["--name", name, "--report", "--results-dir", args.results_dir, "--protocols", args.protocols,
                  "--paper-tables", args.paper_tables])
        return 0
    cfg_path = None
    if args.report:
        if not args.name:
            p.error("--report needs --name")
        cfg_path = os.path.join(args.results_dir, args.name, "config.json")
        if not os.path.exists(cfg_path):
            p.error(f"no stored runs for '{args.name}' ({cfg_path} is missing)")
        cfg = read_json(cfg_path)
    else:
        if not args.script:
            p.error("--script is required (or --report / --readme / --list)")
        script_path = args.script if os.path.isabs(args.script) else os.path.join(REPO, args.script)
        if not os.path.exists(script_path):
            p.error(f"script not found: {script_path}")
        flags, seeds, paper_key, note = [], "0", None, None
        if args.protocol:
            flags, seeds, paper_key, note = resolve_protocol(load_protocols(args.protocols), args.script,
                                                             args.protocol, args.dataset)
        if args.dataset:
            flags = flags + ["--dataset", args.dataset]
        script_args = flags + args.extra
        dataset = args.dataset
        if dataset is None and "--dataset" in script_args[:-1]:   # given after "--": still label and default classes
            dataset = script_args[script_args.index("--dataset") + 1]
        if "--normal" in script_args or "--seed" in script_args or "--json" in script_args:
            p.error("--normal, --seed and --json are set by the runner per run; use --classes and --seeds")
        if args.classes is not None:
            classes = parse_classes(args.classes, dataset)
        elif dataset is not None:
            classes = list(range(N_CLASSES[dataset])) if dataset in N_CLASSES else []
        else:
            p.error("give --classes (e.g. 0-9, or none for tabular sets) or --dataset")
        seeds = parse_list(args.seeds if args.seeds is not None else seeds, "seeds")
        if not seeds:
            p.error("--seeds must name at least one seed")
        name = args.name or (args.protocol and args.dataset and
                             f"{os.path.splitext(os.path.basename(args.script))[0]}_{args.dataset}_{args.protocol}")
        if not name:
            p.error("--name is required without --protocol and --dataset")
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            p.error(f"--name may hold letters, digits and _.+- only (got '{name}')")
        stem_cmd = shlex.join(["python", os.path.relpath(script_path, REPO), *script_args])
        cfg = {"name": name, "script": os.path.relpath(script_path, REPO), "script_path": script_path,
               "script_args": script_args, "classes": classes, "seeds": seeds, "protocol": args.protocol,
               "dataset": dataset, "protocol_note": note, "paper_cli": cli_papers(args) or None,
               "metric": args.metric,
               "command": shlex.join(["python", "benchmarks/run.py", *argv]),
               "run_command": stem_cmd + (" --normal C" if classes else "") + f" --seed S --json "
                              f"{os.path.relpath(os.path.join(args.results_dir, name, 'runs'), REPO)}/"
                              + ("c<C>_s<S>.json" if classes else "s<S>.json")}
        cfg_path = os.path.join(args.results_dir, name, "config.json")
        if os.path.exists(cfg_path):
            old = read_json(cfg_path)
            if (old["script"], old["script_args"]) != (cfg["script"], cfg["script_args"]):
                raise BadInput(
                    f"error: results/{name} holds runs of `{shlex.join([old['script'], *old['script_args']])}`, not "
                    f"`{shlex.join([cfg['script'], *cfg['script_args']])}`; mixing them would be wrong. Use another "
                    f"--name, or delete {os.path.dirname(cfg_path)} to start over")
        if not args.dry_run:
            write_atomic(cfg_path, json.dumps(cfg, indent=1))

    paper, variant_papers = papers_for(cfg, args)
    runs_dir = os.path.join(args.results_dir, cfg["name"], "runs")
    out_base = os.path.join(args.results_dir, cfg["name"])

    def report():
        s = aggregate(cfg, runs_dir, paper, variant_papers)
        write_atomic(out_base + ".json", json.dumps(s, indent=1))
        write_atomic(out_base + ".md", render_md(s))
        return s

    if args.dry_run:
        todo = [(c, s) for c in (cfg["classes"] or [None]) for s in cfg["seeds"]
                if not os.path.exists(os.path.join(runs_dir, run_key(c, s) + ".json"))]
        for c, s in todo:
            extra = ([] if c is None else ["--normal", normal_arg(c, cfg.get("dataset"))]) + ["--seed", str(s), "--json", os.path.relpath(
                os.path.join(runs_dir, run_key(c, s) + ".json"), REPO)]
            print(shlex.join(["python", cfg["script"], *cfg["script_args"], *extra]))
        print(f"{len(todo)} run(s) to do")
        return 0
    os.makedirs(runs_dir, exist_ok=True)
    if not args.report:
        try:
            if args.launcher == "local":
                n = sweep(cfg, runs_dir, args.skip_failed, args.timeout, report, slots)
            else:
                n = sweep_submitit(cfg, runs_dir, args, report)
        except KeyboardInterrupt:
            s = report()
            print(f"\ninterrupted: the running runs were stopped; {s['runs_ok']} finished runs are kept. Rerun the "
                  "same command to resume", file=sys.stderr, flush=True)
            return 130
        print(f"{n} run(s) started this time", flush=True)
    s = report()
    print(f"wrote {os.path.relpath(out_base, REPO)}.md and .json: {s['runs_ok']} runs finished, "
          f"{s['runs_failed']} failed, {s['runs_missing']} not run", flush=True)
    return 1 if s["runs_failed"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BadInput as e:
        print(e, file=sys.stderr)
        sys.exit(2)
