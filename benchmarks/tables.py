"""benchmarks/run.py's tables: the protocols and the papers' figures (protocols.json, paper_tables.json), the
aggregation of a sweep's runs (mean +- std over seeds per class, the paper's cell and the difference), and its
renderings (the sweep's .md, side-by-side ablations, the results section of benchmarks/README.md)."""
import datetime
import glob
import math
import os
import shlex

from sweeps import BadInput, HERE, host_text, mean_std, read_json, run_key, write_atomic

README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"


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


