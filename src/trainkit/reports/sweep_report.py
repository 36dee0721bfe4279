"""A sweep's report: one self-contained HTML page (inline PNGs, no script or style from anywhere).

Reads each job folder (metrics.json, .hydra/overrides.yaml, the TensorBoard curves) and, when the
sweep searched (trainkit_optuna), its study: how each parameter was searched (log, choice, linear)
and the importance of each. A plain grid sweep (`-m a=1,2 b=x,y`) gets the same page from its overrides.
The only module besides the other reports that imports matplotlib: never on the training path.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import statistics
from pathlib import Path

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from trainkit import metrics as M
from trainkit.errors import UserError
from trainkit.run.job_names import short_floats
from trainkit.run.study import load_study_in
from trainkit.run.sweep_summary import collect_runs, is_seed, varying_overrides
from trainkit.status import Status

REPORT = "report.html"
TOP_K = 5  # validation curves drawn
MIN_TRIALS_FOR_IMPORTANCE = 20  # measured: with fewer, fANOVA gives a parameter that does nothing ~0.4
FAILED = (Status.FAILED, Status.DIVERGED, Status.INTERRUPTED, Status.RUNNING)
STYLE = {"completed": dict(marker="o", color="tab:blue"), "pruned": dict(marker="o", facecolors="none", edgecolors="0.5"),
         "failed": dict(marker="x", color="tab:red")}


def write_report(sweep_dir: Path, top: int = TOP_K) -> Path:
    """Write <sweep_dir>/report.html; UserError when the folder holds no run."""
    runs = read_runs(sweep_dir)
    page = render(sweep_dir, runs, top)
    out = sweep_dir / REPORT
    out.write_text(page, encoding="utf-8")
    return out


# -- reading the sweep -----------------------------------------------------------------------------
def read_runs(sweep_dir: Path) -> list[dict]:
    if not sweep_dir.is_dir():
        raise UserError(f"report {sweep_dir}: no such folder; give a sweep folder (outputs/sweeps/...)")
    runs = collect_runs(sweep_dir)
    if not runs:
        raise UserError(f"report {sweep_dir}: no runs in it (no job folder with .hydra/); run a sweep first, "
                        "e.g. trainkit train -m hparams_search=lr_wd_coarse")
    for r in runs:
        r["params"] = {o.split("=", 1)[0]: value_of(o.split("=", 1)[1]) for o in r["override_list"] if "=" in o}
        r["kind"] = "completed" if r.get("status") == Status.COMPLETED else (
            "pruned" if r.get("status") == Status.PRUNED else "failed")
    return runs


def value_of(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def searched(sweep_dir: Path, runs: list[dict], study) -> dict[str, str]:
    """The swept parameters and how to plot each ('log', 'linear', 'choice'): from the study's
    distributions when there is one, else from the overrides that vary between jobs."""
    kinds = {}
    if study is not None:
        for t in study.get_trials(deepcopy=False):
            for k, d in t.distributions.items():
                kinds[k] = "choice" if type(d).__name__ == "CategoricalDistribution" else ("log" if d.log else "linear")
        return kinds
    for key in dict.fromkeys(k for r in runs for k in r["params"]):
        values = [r["params"].get(key) for r in runs]
        if len({json.dumps(v, default=str) for v in values}) < 2 or is_seed(f"{key}="):
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        wide = numeric and min(values) > 0 and max(values) / min(values) >= 100
        kinds[key] = ("log" if wide else "linear") if numeric else "choice"
    return kinds


def curve(run: dict, monitor: str) -> list[tuple[int, float]]:
    """(epoch, value) of the monitored metric from the run's TensorBoard events: an epoch's scalars
    are logged at its last global step, beside the `epoch` scalar that names it."""
    tb = Path(run["dir"]) / "tensorboard"
    if not tb.is_dir():
        return []
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # its "No path found after ..." is not the user's concern
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))
    if monitor not in tags:
        return []
    epochs = {e.step: int(e.value) for e in acc.Scalars(M.EPOCH)} if M.EPOCH in tags else {}
    return sorted((epochs.get(e.step, e.step), e.value) for e in acc.Scalars(monitor))


# -- tables --------------------------------------------------------------------------------------------
def ranked(runs: list[dict], mode: str) -> list[dict]:
    """Completed runs best first, then pruned ones (by their partial best), then the rest."""
    sign = -1 if mode == "max" else 1
    order = {"completed": 0, "pruned": 1, "failed": 2}

    def key(r):
        best = r.get("best")
        ok = best is not None and math.isfinite(best)
        return (order[r["kind"]], 0 if ok else 1, sign * best if ok else 0.0)

    return sorted(runs, key=key)


def pooled(runs: list[dict], mode: str) -> list[dict]:
    """One row per configuration (the overrides without the seed): mean ± std over its seeds."""
    groups: dict[str, list[dict]] = {}
    unseeded = [{**r, "override_list": [o for o in r["override_list"] if not is_seed(o)]} for r in runs]
    varying = varying_overrides(unseeded)  # what tells the configurations apart
    for r in unseeded:
        groups.setdefault(varying[r["job"]] or "(the same config)", []).append(r)
    rows = []
    for config, members in groups.items():
        done = [float(r["best"]) for r in members if r["kind"] == "completed" and r.get("best") is not None]
        test = [float(r["test"][M.TEST_ACC]) for r in members
                if r["kind"] == "completed" and (r.get("test") or {}).get(M.TEST_ACC) is not None]
        rows.append({"config": config, "jobs": [r["job"] for r in members], "done": len(done),
                     "statuses": sorted({str(r.get("status")) for r in members}),
                     "mean": statistics.fmean(done) if done else None,
                     "std": statistics.stdev(done) if len(done) > 1 else (0.0 if done else None),
                     "test": statistics.fmean(test) if test else None,
                     "test_std": statistics.stdev(test) if len(test) > 1 else (0.0 if test else None),
                     "partial": max((float(r["best"]) for r in members if r.get("best") is not None
                                     and math.isfinite(r["best"])), default=None)})
    sign = -1 if mode == "max" else 1
    # Configurations with completed runs by their mean; the others (pruned) after them, by their best before stopping.
    rows.sort(key=lambda r: (r["mean"] is None, sign * (r["mean"] if r["mean"] is not None else (r["partial"] or 0.0))))
    return rows


def gap(run: dict) -> float | None:
    """train - val of the monitored kind (accuracy or loss) at the last epoch: > 0 is overfitting for
    accuracy, < 0 for loss; shown as 'how much better train is than val'."""
    final = run.get("final") or {}
    if M.TRAIN_ACC in final and M.VAL_ACC in final:
        return float(final[M.TRAIN_ACC]) - float(final[M.VAL_ACC])
    return None


def diagnosis_text(record: dict) -> str | None:
    """Issue 11's end-of-run diagnosis, whatever its shape (text, or a mapping with a verdict)."""
    d = record.get("diagnosis")
    if not d:
        return None
    if isinstance(d, str):
        return d
    if isinstance(d, dict):
        head = d.get("verdict") or d.get("summary") or d.get("status") or ""
        detail = d.get("message") or d.get("reason") or ""
        remedies = d.get("remedies") or d.get("overrides") or []
        text = ": ".join(str(x) for x in (head, detail) if x)
        if remedies:
            text += " (try: " + "; ".join(map(str, remedies if isinstance(remedies, list) else [remedies])) + ")"
        return text or json.dumps(d)
    return str(d)


# -- plots ---------------------------------------------------------------------------------------------
def png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def jitter(job: str) -> float:
    """A strip plot's horizontal spread, the same for a job every time the page is made."""
    import zlib

    return ((zlib.crc32(job.encode()) % 1000) / 1000 - 0.5) * 0.3


def metric_plots(runs: list[dict], kinds: dict[str, str], monitor: str) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt

    finite = [r["best"] for r in runs if r.get("best") is not None and math.isfinite(r["best"])]
    floor = min(finite) if finite else 0.0
    out = []
    for key, kind in kinds.items():
        fig, ax = plt.subplots(figsize=(4.4, 3.1))
        have = [r for r in runs if key in r["params"]]
        cats = list(dict.fromkeys(str(r["params"][key]) for r in have)) if kind == "choice" else []
        for name, style in STYLE.items():
            pts = [r for r in have if r["kind"] == name]
            if not pts:
                continue
            # A failed run has no value: drawn at the floor, so it is still seen where it was tried.
            ys = [r["best"] if r.get("best") is not None and math.isfinite(r["best"]) else floor for r in pts]
            if kind == "choice":
                xs = [cats.index(str(r["params"][key])) + jitter(r["job"]) for r in pts]
            else:
                xs = [float(r["params"][key]) for r in pts]
            ax.scatter(xs, ys, s=30, label=f"{name} ({len(pts)})", **style)
        if kind == "choice":
            ax.set_xticks(range(len(cats)), cats, rotation=20)
        elif kind == "log":
            ax.set_xscale("log")
        ax.set_xlabel(key + (" (log scale)" if kind == "log" else ""))
        ax.set_ylabel(f"best {monitor}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out.append((key, png(fig)))
    return out


def curves_plot(top_runs: list[dict], monitor: str) -> str | None:
    import matplotlib.pyplot as plt

    drawn = [(r, c) for r in top_runs if (c := curve(r, monitor))]
    if not drawn:
        return None
    fig, ax = plt.subplots(figsize=(6.8, 3.6))
    for r, c in drawn:
        epochs, values = zip(*c)
        ax.plot(epochs, values, marker=".", label=short_floats(r["job"].replace(",", " "))[:60])
    ax.set_xlabel("epoch")
    ax.set_ylabel(monitor)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return png(fig)


def gap_plot(runs: list[dict]) -> str | None:
    import matplotlib.pyplot as plt

    rows = [(r["job"].split("_", 1)[0], g) for r in runs if (g := gap(r)) is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.8, 2.8))
    ax.bar(range(len(rows)), [g for _, g in rows], color=["tab:red" if g > 0.05 else "tab:blue" for _, g in rows])
    ax.set_xticks(range(len(rows)), [j for j, _ in rows])
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("job")
    ax.set_ylabel("train acc - val acc")
    return png(fig)


def importance(study) -> tuple[dict[str, float] | None, str]:
    """Optuna's fANOVA evaluator (a random forest from scikit-learn) over the completed trials."""
    if study is None:
        return None, "This sweep has no study (a grid sweep): importance needs hparams_search=... (trainkit_optuna)."
    import optuna

    n = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if n < MIN_TRIALS_FOR_IMPORTANCE:
        return None, (f"{n} completed trials; importance is shown from {MIN_TRIALS_FOR_IMPORTANCE} on (with fewer, "
                      "fANOVA scores a parameter that does nothing at about 0.4).")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        return optuna.importance.get_param_importances(study, evaluator=evaluator), f"fANOVA over {n} completed trials."
    except (RuntimeError, ValueError) as e:  # e.g. every completed trial has the same value
        return None, f"fANOVA could not rank the parameters: {e}"


# -- the page ------------------------------------------------------------------------------------------
def render(sweep_dir: Path, runs: list[dict], top: int) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display; before pyplot
    e = html.escape
    monitor = next((r["monitor"] for r in runs if r.get("monitor")), M.VAL_ACC)
    mode = next((r["mode"] for r in runs if r.get("mode")), "max")
    cfg = OmegaConf.load(sweep_dir / "multirun.yaml") if (sweep_dir / "multirun.yaml").is_file() else None
    study = load_study_in(sweep_dir, cfg.hydra.sweeper if cfg is not None else None)
    order = ranked(runs, mode)
    counts = {k: sum(r["kind"] == k for r in runs) for k in ("completed", "pruned", "failed")}
    parts = [f"<h1>Sweep report</h1><p class='path'>{e(str(sweep_dir))}</p>",
             f"<p>{len(runs)} runs: {counts['completed']} completed, {counts['pruned']} pruned, {counts['failed']} failed "
             f"or unfinished. Ranked by {e(monitor)} ({'higher' if mode == 'max' else 'lower'} is better).</p>"]
    best = order[0]
    if best["kind"] != "failed":
        line = " ".join(best["override_list"])  # hparams_search= too: its groups (e.g. adamw, dropout) are part of the run
        parts += ["<h2>Best run</h2>",
                  f"<p>job {e(best['job'])}: best {e(monitor)} = {fmt(best.get('best'))}"
                  f"{'' if best['kind'] == 'completed' else ' (' + best['kind'] + ')'}, "
                  f"test accuracy {fmt((best.get('test') or {}).get(M.TEST_ACC))}. Run it again with:</p>",
                  f"<pre id='best-command'>trainkit train {e(shell_line(line))}</pre>"]
    parts += [f"<h2>Ranking{' (pooled over seeds: mean ± std)' if any(len(r['jobs']) > 1 for r in pooled(runs, mode)) else ''}</h2>",
              "<table id='ranking'><tr><th>#</th><th>configuration</th><th>jobs</th>"
              f"<th>best {e(monitor)}</th><th>test acc</th><th>completed</th><th>status</th></tr>"]
    for i, row in enumerate(pooled(runs, mode), 1):
        value = "" if row["mean"] is None else (f"{row['mean']:.4f}" + (f" ± {row['std']:.4f}" if len(row["jobs"]) > 1 else ""))
        if row["mean"] is None and row["partial"] is not None:
            value = f"({row['partial']:.4f} before it stopped)"
        test = "" if row["test"] is None else (f"{row['test']:.4f}" + (f" ± {row['test_std']:.4f}" if len(row["jobs"]) > 1 else ""))
        jobs = ", ".join(j.split("_", 1)[0] for j in row["jobs"])  # the job numbers (folders named N_...)
        parts.append(f"<tr><td>{i}</td><td><code>{e(short_floats(row['config']))}</code></td><td>{e(jobs)}</td>"
                     f"<td>{value}</td><td>{test}</td><td>{row['done']}/{len(row['jobs'])}</td><td>{e(', '.join(row['statuses']))}</td></tr>")
    parts.append("</table>")
    kinds = searched(sweep_dir, runs, study)
    if kinds:
        parts.append(f"<h2>{e(monitor)} against each hyperparameter</h2>"
                     "<p>Filled: completed; hollow grey: pruned (its best before it stopped); red x: failed, at the floor.</p>"
                     "<div class='grid'>")
        parts += [f"<figure><img alt='{e(k)}' src='{src}'><figcaption>{e(k)}</figcaption></figure>"
                  for k, src in metric_plots(runs, kinds, monitor)]
        parts.append("</div>")
    curves = curves_plot([r for r in order if r["kind"] != "failed"][:top], monitor)
    if curves:
        parts.append(f"<h2>Validation curves of the top {top}</h2><img alt='curves' src='{curves}'>")
    imp, note = importance(study)
    parts.append(f"<h2>Hyperparameter importance</h2><p>{e(note)}</p>")
    if imp:
        parts.append("<table id='importance'>" + "".join(f"<tr><td>{e(k)}</td><td>{v:.3f}</td></tr>" for k, v in imp.items())
                     + "</table>")
    gaps = gap_plot(runs)
    if gaps:
        parts.append("<h2>Train/val gap at the last epoch</h2><img alt='gap' src='" + gaps + "'>")
    diagnosed = [(r["job"], t) for r in runs if (t := diagnosis_text(r))]
    if diagnosed:
        parts.append("<h2>End-of-run diagnosis</h2><ul>" + "".join(f"<li><b>{e(j)}</b>: {e(t)}</li>" for j, t in diagnosed)
                     + "</ul>")
    return PAGE.format(title=e(f"sweep {sweep_dir.name}"), body="\n".join(parts))


def shell_line(line: str) -> str:
    """The overrides as a shell takes them: each quoted where the shell would split or expand it."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return " ".join(shlex.quote(o.input_line) for o in OverridesParser.create().parse_overrides(line.split(" ")))
    except Exception:  # an override with a space in it: quoted as a whole
        return " ".join(shlex.quote(o) for o in line.split(" "))


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


# The script checks the page's own images only: each broken one gets a red outline and is counted
# in <body data-images-broken>, which the headless-browser test reads back with --dump-dom.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left}} .grid{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0}} pre{{background:#f4f4f4;padding:6px;white-space:pre-wrap}} .path{{color:#666}}
img.broken{{outline:3px solid red}}</style></head>
<body data-images-broken="unchecked">
{body}
<script>
window.addEventListener("load", () => {{
  const imgs = [...document.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0);
  broken.forEach(i => i.classList.add("broken"));
  document.body.dataset.imagesBroken = String(broken.length);
  document.body.dataset.images = String(imgs.length);
}});
</script>
</body></html>
"""


class SweepReport(HydraCallback):
    """Hydra callback: report.html at the end of every sweep (after SweepSummary's summary.csv)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        import logging

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        try:
            out = write_report(sweep_dir)
        except Exception as e:  # a report must never turn a finished sweep into a failed one
            logging.getLogger("trainkit").warning(f"report.html not written: {type(e).__name__}: {e}")
            return
        from trainkit.console import console

        console.print(f"report: {out}")
