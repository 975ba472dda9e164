"""benchmarks/run.py's runner: each (class, seed) of a sweep as one subprocess of the script, locally (--jobs, --gpus)
or through submitit (--launcher slurm | submitit-local), with the small helpers the sweep and its tables share.
run.py's docstring describes the files a run leaves and the resume rule."""
import concurrent.futures
import datetime
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


# ------------------------------------------------------------------------------------------ running

def run_command(cfg, runs_dir, cls, seed):
    """The exact command of one run (a list), and its JSON path."""
    out_json = os.path.join(runs_dir, run_key(cls, seed) + ".json")
    cmd = [sys.executable, cfg["script"], *cfg["script_args"]]        # paths relative to REPO, where runs start
    if cls is not None:
        cmd += ["--normal", normal_arg(cls, cfg.get("dataset"))]
    return cmd + ["--seed", str(seed), "--json", os.path.relpath(out_json, REPO)], out_json


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
    shown = ["python"] + cmd[1:]
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


