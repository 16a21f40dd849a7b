"""Paper-style tables from finished cells: mean ± std over seeds beside the published numbers.

Writes Markdown (for the README), LaTeX (booktabs) and CSV from the cells' `results.json` files,
and the plots of `mmjax.plots`. Values are fractions in CSV and percentages in Markdown and LaTeX.
"""
import csv
import dataclasses
import io
import json
import pathlib

import numpy as np

from mmjax import experiments

PROTOCOLS = {
    "fixed": "fixed hyperparameters from the paper, last checkpoint (no model selection)",
    "fixed_ours": "fixed hyperparameters set once before the runs, not tuned on any target data; "
                  "last checkpoint",
    "source_val": "hyperparameters chosen on a held-out source validation set",
    "reverse_val": "hyperparameters chosen by reverse validation (Ganin et al. 2016, §5.1.2)",
    "oracle": "hyperparameters chosen on target test labels (target oracle; an upper bound)",
    "early_stopping": "fixed hyperparameters, and the weights of the epoch chosen by early stopping "
                      "on a held-out source validation set",
    "selected_checkpoint": "fixed hyperparameters; each run's numbers at its evaluation step with "
                           "the best value of the selection metric named below (config.select; on "
                           "a target test set that is a target oracle, an upper bound)",
}


@dataclasses.dataclass
class TableSpec:
  """What a table reports and how it is labelled."""
  name: str                         # file stem under the output folder
  title: str
  metric: str                       # "<eval set>/<number>" in results.json, e.g. "target_test/accuracy"
  rows: list                        # row labels (methods), in order
  columns: list                     # column labels (tasks), in order
  protocol: str | dict              # a key of PROTOCOLS, or {row: key} when rows differ in it
  published: dict = dataclasses.field(default_factory=dict)  # (row, column) -> fraction
  published_source: str = ""
  extra_metrics: dict = dataclasses.field(default_factory=dict)  # label -> "<eval>/<number>"
  notes: str = ""
  mean_column: bool = False         # add a "mean" column per row: the mean over the columns
  checkpoint: str = "last"          # "last": results.json's "eval"; "selected": its "selected"
                                    #   (the step config.select chose; protocol selected_checkpoint)


def _value(results: dict, metric: str, checkpoint: str = "last") -> float:
  eval_set, number = metric.split("/")
  if checkpoint == "last":
    return float(results["eval"][eval_set][number])
  if checkpoint != "selected":
    raise ValueError(f"checkpoint={checkpoint!r}: expected 'last' or 'selected'")
  selected = results.get("selected") or {}
  if not selected.get("eval"):
    raise ValueError("a finished cell has no selected evaluation: run the cells with "
                     "select.metric set (e.g. --set=select.metric=source_val/accuracy "
                     "--set=eval_every=500) in a workdir of their own")
  return float(selected["eval"][eval_set][number])


def _selected_by(results: list) -> str:
  """"<metric> (<mode>)" of the cells' selections, for the caption; a metric on a target set or
  on meta_test is marked as the target-label oracle it is."""
  def text(selected):
    eval_set = selected["metric"].split("/")[0]
    oracle = eval_set.startswith("target") or eval_set == "meta_test"
    return (f"{selected['metric']} ({selected['mode']})"
            + (", a target-label oracle (an upper bound)" if oracle else ""))
  return "; ".join(sorted({text(r["selected"]) for r in results}))


def collect(root, cells, spec: TableSpec) -> list:
  """One record per (column, row): the values of its finished seeds and their summary."""
  finished = {}
  for cell in cells:
    path = experiments.cell_dir(root, cell) / "results.json"
    if experiments.is_finished(root, cell):
      finished.setdefault((cell.row, cell.column), []).append(json.loads(path.read_text()))
  runs = {key: [{"value": _value(r, spec.metric, spec.checkpoint), "wall_time_s": r["wall_time_s"],
                 **{label: _value(r, m, spec.checkpoint) for label, m in spec.extra_metrics.items()}}
                for r in rs]
          for key, rs in finished.items()}
  records = records_from_runs(spec, runs)
  stopped = sum("stopped_early" in r for rs in finished.values() for r in rs)
  if stopped:  # the caption says so: their last checkpoint is where select.patience stopped them
    for record in records:
      record["stopped_early"] = f"{stopped} of {sum(map(len, finished.values()))}"
  if spec.checkpoint == "selected":
    by = _selected_by([r for rs in finished.values() for r in rs])
    for record in records:
      record["selected_by"] = by
  return records


def records_from_runs(spec: TableSpec, runs: dict) -> list:
  """The table's records from {(row, column): [{"value", "wall_time_s", <extra label>: number}]},
  one dict per finished seed: for tables whose runs are not engine cells."""
  records = []
  for column in spec.columns:
    for row in spec.rows:
      found = runs.get((row, column), [])
      values = np.array([r["value"] for r in found])
      published = spec.published.get((row, column))
      mean = float(values.mean()) if len(values) else float("nan")
      records.append({
          "column": column, "row": row, "n": len(values), "mean": mean,
          "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
          "published": published,
          "diff": mean - published if published is not None and len(values) else None,
          "wall_time_s": float(sum(r["wall_time_s"] for r in found)),
          **{label: float(np.mean([r[label] for r in found])) if found else float("nan")
             for label in spec.extra_metrics},
      })
  if spec.mean_column:
    records += [_mean_over_columns(spec, row, [r for r in records if r["row"] == row])
                for row in spec.rows]
  return records


def _mean_over_columns(spec, row, recs) -> dict:
  """The row's mean over the columns that ran of their per-column means, beside the published mean
  over the same columns (std: over columns, not seeds)."""
  ran = [r for r in recs if r["n"]]
  label = "mean" if len(ran) == len(recs) else f"mean of {len(ran)}/{len(recs)}"
  means = np.array([r["mean"] for r in ran])
  published = [r["published"] for r in ran]
  mean = float(means.mean()) if ran else float("nan")
  pub = float(np.mean(published)) if ran and all(p is not None for p in published) else None
  return {"column": label, "row": row, "n": min((r["n"] for r in ran), default=0), "mean": mean,
          "std": float(means.std(ddof=1)) if len(means) > 1 else 0.0, "published": pub,
          "diff": mean - pub if pub is not None else None,
          "wall_time_s": float(sum(r["wall_time_s"] for r in recs)),
          **{label_: float(np.mean([r[label_] for r in ran])) if ran else float("nan")
             for label_ in spec.extra_metrics}}


def caption(spec: TableSpec, records, seeds_asked: int) -> str:
  ns = sorted({r["n"] for r in records})
  seeds = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
  text = (f"{spec.title}. {spec.metric.replace('/', ' ')} in %, mean ± std over {seeds} seed(s)"
          f" (of {seeds_asked} asked). Model selection: {_protocol_text(spec.protocol)}.")
  if spec.published_source:
    text += f" Published: {spec.published_source}; Δ = ours − published."
  if spec.mean_column:
    text += " The mean rows average the per-column means; their ± is the std over columns."
  if spec.checkpoint == "selected":
    by = sorted({r.get("selected_by", "") for r in records} - {""})
    text += f" Selection metric: {'; '.join(by) or 'none found'}."
  stopped = next((r["stopped_early"] for r in records if r.get("stopped_early")), None)
  if stopped:
    text += (f" {stopped} runs stopped early (config.select.patience): their last checkpoint is "
             "the stop step.")
  if spec.notes:
    text += " " + spec.notes
  return text


def _protocol_text(protocol) -> str:
  if isinstance(protocol, str):
    return PROTOCOLS[protocol]
  return "; ".join(f"{row}: {PROTOCOLS[key]}" for row, key in protocol.items())


def _pct(x, digits=1):
  return "–" if x is None or x != x else f"{100 * x:.{digits}f}"


def _ours(r, pm: str = "±") -> str:
  """mean ± std; a cell of one seed has no spread to show, so only its value."""
  if not r["n"]:
    return "not run"
  if r["n"] == 1 and not str(r["column"]).startswith("mean"):
    return _pct(r["mean"])
  return f"{_pct(r['mean'])} {pm} {_pct(r['std'])}"


def to_markdown(spec, records, seeds_asked) -> str:
  extra = list(spec.extra_metrics)
  head = ["Task", "Method", "Ours", "n", "Published", "Δ"] + extra
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in records:
    ours = _ours(r)
    cells = [r["column"], r["row"], ours, str(r["n"]), _pct(r["published"]),
             "–" if r["diff"] is None else f"{100 * r['diff']:+.1f}"]
    cells += [_pct(r[label]) for label in extra]
    lines.append("| " + " | ".join(cells) + " |")
  return f"**{spec.title}**\n\n" + "\n".join(lines) + f"\n\n{caption(spec, records, seeds_asked)}\n"


def _tex(text: str) -> str:
  return (text.replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%")
          .replace("_", "\\_").replace("#", "\\#").replace("→", "$\\to$")
          .replace("±", "$\\pm$").replace("Δ", "$\\Delta$").replace("–", "--"))


def to_latex(spec, records, seeds_asked) -> str:
  extra = list(spec.extra_metrics)
  cols = "ll" + "r" * (4 + len(extra))
  head = ["Task", "Method", "Ours", "$n$", "Published", "$\\Delta$"] + [_tex(e) for e in extra]
  body = []
  for r in records:
    ours = _ours(r, "$\\pm$")
    cells = [_tex(r["column"]), _tex(r["row"]), ours, str(r["n"]), _tex(_pct(r["published"])),
             "--" if r["diff"] is None else f"{100 * r['diff']:+.1f}"]
    cells += [_tex(_pct(r[label])) for label in extra]
    body.append(" & ".join(cells) + " \\\\")
  return "\n".join([
      "\\begin{table}[t]", "\\centering", f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
      " & ".join(head) + " \\\\", "\\midrule", *body, "\\bottomrule", "\\end{tabular}",
      f"\\caption{{{_tex(caption(spec, records, seeds_asked))}}}",
      f"\\label{{tab:{spec.name}}}", "\\end{table}", ""])


def to_csv(spec, records) -> str:
  out = io.StringIO()
  fields = ["column", "row", "n", "mean", "std", "published", "diff", "wall_time_s"]
  fields += list(spec.extra_metrics)
  writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
  writer.writeheader()
  for r in records:
    writer.writerow({k: ("" if r[k] is None else r[k]) for k in fields})
  return out.getvalue()


def write_all(out_dir, spec: TableSpec, records, seeds_asked: int) -> dict:
  """Writes <name>.md, .tex and .csv; returns their paths."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {ext: out_dir / f"{spec.name}.{ext}" for ext in ("md", "tex", "csv")}
  paths["md"].write_text(to_markdown(spec, records, seeds_asked))
  paths["tex"].write_text(to_latex(spec, records, seeds_asked))
  paths["csv"].write_text(to_csv(spec, records))
  return paths
