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
import glob
import json
import os
import re
import shlex
import signal
import sys
import threading

from sweeps import (BadInput, HERE, N_CLASSES, REPO, make_slots, normal_arg, parse_classes, parse_list, read_json,
                    run_key, slurm_minutes, sweep, sweep_submitit, write_atomic)
from tables import (aggregate, load_paper, load_protocols, render_md, render_readme_section, render_side_by_side,
                    replace_readme, resolve_protocol)


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
        cfg = {"name": name, "script": os.path.relpath(script_path, REPO),
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
