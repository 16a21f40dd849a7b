"""Model selection for domain adaptation: one hyperparameter setting per task, chosen among a grid.

The cells of a table run once per candidate setting (`candidate_cells`, told apart by Cell.tag);
a criterion scores each finished candidate, and `select` keeps per (row, column) the candidate with
the best score averaged over seeds. The criteria:

- "source_val": accuracy on the held-out source validation set (the run's "source_val" eval, e.g.
  data split "train_val" while training on "train_fit"). Uses no target labels.
- "reverse_val": reverse validation (Ganin et al., JMLR 2016, §5.1.2; Zhong et al. 2010). The
  candidate's model, trained on labelled S and unlabelled T, pseudo-labels T; a reverse model with
  the same hyperparameters trains on the pseudo-labelled T as its source and the unlabelled S as its
  target, and its accuracy on the held-out source validation set is the score. Uses no target labels.
- "oracle": accuracy on the target test labels. An upper bound, never a fair result.
"""
import collections
import dataclasses
import json
import os

import numpy as np
from absl import logging

from mmjax import experiments, tables
from mmjax.analysis import runs

CRITERIA = {"source_val": "source_val/accuracy", "reverse_val": "source_val/accuracy",
            "oracle": "target_test/accuracy"}
PSEUDO_LABELS = "pseudo_labelled_target.npz"


def candidate_cells(cells, grid: dict) -> list:
  """Every cell once per candidate: grid maps a tag ("lambda_max=0.3") to its config overrides."""
  return [dataclasses.replace(cell, overrides=cell.overrides + tuple(overrides), tag=tag)
          for cell in cells for tag, overrides in grid.items()]


def write_pseudo_labels(root, cell) -> str:
  """Labels the finished cell's target examples with its model; writes them (inputs and predicted
  labels) as <cell dir>/pseudo_labelled_target.npz, a dataset "npz:<path>"; returns that name.

  A finished cell never changes, so a file written before is kept.
  """
  workdir = experiments.cell_dir(root, cell)
  path = workdir.resolve() / PSEUDO_LABELS
  if path.is_file():
    return f"npz:{path}"
  config, model, params = runs.load_run(workdir)
  if not config.data.target:
    raise ValueError(f"{workdir}: reverse validation needs a run with data.target")
  arrays = runs.load_data(config, config.data.target, config.data.target_split)
  logits = runs.apply_model(config, model, params, arrays)["logits"]
  partial = path.with_name("partial_" + PSEUDO_LABELS)  # renamed when complete: never half a file
  np.savez(partial, **{**arrays, "label": np.argmax(logits, -1).astype(np.int32)})
  os.replace(partial, path)
  return f"npz:{path}"


def reverse_cell(root, cell) -> experiments.Cell:
  """The reverse-validation run of a finished forward cell: the same config and hyperparameters,
  the pseudo-labelled target as source, the forward source (unlabelled) as target. Its
  "source_val" eval still reads the forward source's held-out split."""
  config = json.loads((experiments.cell_dir(root, cell) / "config.json").read_text())
  swap = (("data.train", write_pseudo_labels(root, cell)), ("data.train_split", "train"),
          ("data.target", config["data"]["train"]),
          ("data.target_split", config["data"]["train_split"]))
  return dataclasses.replace(cell, overrides=cell.overrides + swap, tag=f"{cell.tag} reverse")


def _metric(root, cell, metric: str) -> float:
  results = json.loads((experiments.cell_dir(root, cell) / "results.json").read_text())
  eval_set, number = metric.split("/")
  return float(results["eval"][eval_set][number])


def scores(root, cells, criterion: str, reverse=None) -> dict:
  """{cell: score} for the finished cells; reverse_val reads reverse[cell], the cell's reverse run."""
  if criterion not in CRITERIA:
    raise ValueError(f"unknown selection criterion {criterion!r}; use one of {', '.join(CRITERIA)}")
  out = {}
  for cell in cells:
    scored = reverse.get(cell) if criterion == "reverse_val" else cell
    if scored is not None and experiments.is_finished(root, scored):
      out[cell] = _metric(root, scored, CRITERIA[criterion])
  return out


def select(cell_scores: dict) -> tuple[list, dict]:
  """(chosen cells, {(row, column): (tag, mean score)}): per (row, column) the tag whose seeds have
  the highest mean score; ties go to the tag listed first."""
  by_task = collections.defaultdict(lambda: collections.defaultdict(list))
  for cell, score in cell_scores.items():
    by_task[(cell.row, cell.column)][cell.tag].append(score)
  choices = {}
  for task, tags in by_task.items():
    means = {tag: float(np.mean(values)) for tag, values in tags.items()}
    best = max(means, key=lambda tag: (means[tag], -list(means).index(tag)))
    choices[task] = (best, means[best])
    logging.info("%s: chose %s (%s)", task, best,
                 ", ".join(f"{t} {m:.3f}" for t, m in means.items()))
  chosen = [c for c in cell_scores if choices[(c.row, c.column)][0] == c.tag]
  return chosen, choices


def reverse_cells(root, cells) -> dict:
  """{cell: its reverse-validation cell} for the finished cells."""
  return {c: reverse_cell(root, c) for c in cells if experiments.is_finished(root, c)}


def run_with_reverse(runner: experiments.Runner, cells) -> tuple[dict, dict]:
  """Runs the candidate cells, then the reverse-validation run of each finished one.

  Returns ({cell: its reverse cell}, {cell key: status} of both rounds)."""
  status = runner.run(cells)
  reverse = reverse_cells(runner.root, cells)
  status.update(runner.run(list(reverse.values())))
  return reverse, status


def table_records(spec: tables.TableSpec, root, cells, reverse, rows: dict,
                  fixed_tag: str) -> tuple[list, dict]:
  """One table of every protocol: rows maps "fixed" and each criterion to its row label.

  The "fixed" row holds the candidates tagged `fixed_tag`; each criterion's row holds, per task,
  the candidate it chose. The cells' own row label (their method) is replaced by the protocol's;
  spec.published is keyed by the protocol's label. Returns (records, each criterion's choices)."""
  chosen = {"fixed": [c for c in cells if c.tag == fixed_tag]}
  choices = {}
  for criterion in CRITERIA:
    chosen[criterion], choices[criterion] = select(scores(root, cells, criterion, reverse))
  records = []
  for key, label in rows.items():
    methods = sorted({c.row for c in chosen[key]}) or [label]
    one_row = dataclasses.replace(spec, rows=methods, published={
        (m, column): value for (row, column), value in spec.published.items() if row == label
        for m in methods})
    records += [{**r, "row": label} for r in tables.collect(root, chosen[key], one_row)]
  order = {c: i for i, c in enumerate(spec.columns)}
  records.sort(key=lambda r: (order.get(r["column"], len(order)), spec.rows.index(r["row"])))
  return records, choices


def choices_markdown(choices: dict, rows: dict) -> str:
  """The candidate each criterion chose per task, with its score, as Markdown lines."""
  lines = ["", "Chosen per task (criterion: task → candidate, its score):", ""]
  for criterion, picks in choices.items():
    text = ", ".join(f"{column} {tag.split('=', 1)[-1]} ({100 * score:.1f})"
                     for (_, column), (tag, score) in sorted(picks.items(), key=lambda kv: kv[0][1]))
    lines.append(f"- {rows[criterion]}: {text}")
  return "\n".join(lines) + "\n"
