"""The body every `experiments/<table>.py` shares: flags, run the grid, write the table and plots.

A table script declares its TableSpec, its settings (row, column, config spec per cell, usually from
a config's sweep()) and its --quick overrides, then calls `main(...)`.
"""
import dataclasses
import pathlib

from absl import flags, logging

from mmjax import experiments, logs, plots, selection, tables

flags.DEFINE_string("workdir", None, "root of the cells' workdirs")
flags.DEFINE_integer("seeds", 5, "seeds per cell")
flags.DEFINE_bool("quick", False, "tiny scale (a few steps, one seed) to check the whole path")
flags.DEFINE_integer("parallel", 1, "cells (or sweeps) run at once")
flags.DEFINE_bool("sweep", True, "train cells that differ only in seed, datasets and float "
                  "hyperparameters together, vmapped (mmjax/train/sweep.py); --nosweep: one by one")
flags.DEFINE_list("only", [], "run only the cells whose config arg (after the ':') is listed, e.g. "
                  "--only=early; the table still shows every finished cell")
flags.DEFINE_string("out", None, "where the table and plots go "
                    "(default docs/results, or <workdir>/tables with --quick)")
flags.DEFINE_multi_string("set", [], "KEY=VALUE config override for every cell, e.g. "
                          "--set=data.order=numpy (repeat for more); use a --workdir of its own")
flags.DEFINE_bool("tables_only", False, "train nothing: write the table from the finished cells")
flags.DEFINE_string("note", "", "appended to the table's notes (e.g. the machine the runs ran on)")
flags.DEFINE_enum("checkpoint", "last", ["last", "selected"], "report each run's last step, or "
                  "the step its config.select chose (cells run with e.g. --set=select.metric="
                  "source_val/accuracy --set=eval_every=500); writes <name>_selected.*")
flags.DEFINE_list("columns", None, "model-selection tables: the columns (tasks) to run, e.g. "
                  "A→W,D→C; default all")
FLAGS = flags.FLAGS


def settings_from_sweep(config: str, labels: dict) -> list:
  """Cells' settings from `config`'s sweep(): labels maps each arg to its (row, column)."""
  sweep = experiments.load_config_module(config).sweep()
  return [{"row": labels[s["arg"]][0], "column": labels[s["arg"]][1],
           "config": f"{config}:{s['arg']}"} for s in sweep if s["arg"] in labels]


def set_overrides(items) -> tuple:
  """(("key", "value"), ...) from --set KEY=VALUE items; each key is checked when a cell's config loads."""
  pairs = []
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. --set=data.order=numpy")
    pairs.append((key, value))
  return tuple(pairs)


def only_cells(cells, only) -> list:
  """The cells whose config arg (after the ':') is in `only` (all of them if `only` is empty)."""
  if not only:
    return list(cells)
  arg = lambda cell: cell.config.rpartition(":")[2]
  unknown = sorted(set(only) - {arg(c) for c in cells})
  if unknown:
    raise SystemExit(f"--only: unknown config args {unknown}; this table has "
                     f"{sorted({arg(c) for c in cells})}")
  return [c for c in cells if arg(c) in only]


def output_dir(root) -> pathlib.Path:
  """--out, else <workdir>/tables for --quick and docs/results for a real table."""
  return pathlib.Path(FLAGS.out or (root / "tables" if FLAGS.quick else experiments.REPO / "docs/results"))


def report_failures(status: dict) -> int:
  """Logs each failed or stopped cell of a Runner's status; 1 if there is one, else 0."""
  failed = {k: v for k, v in status.items() if v.startswith(("failed", "stopped"))}
  for key, why in failed.items():
    logging.error("cell %s: %s", key, why)
  return 1 if failed else 0


def write_outputs(spec: tables.TableSpec, root, cells, seeds_asked: int, conclusion=None) -> dict:
  """Writes the table of `cells` (finished ones) and its figures; prints the Markdown; their paths.

  `conclusion(records) -> str`, if given, is computed from the collected records and appended to
  the table's notes (e.g. how much the best fusion beats the best single modality).
  """
  records = tables.collect(root, cells, spec)
  if conclusion is not None:
    spec = tables.TableSpec(**{**vars(spec), "notes": f"{spec.notes} {conclusion(records)}".strip()})
  out = output_dir(root)
  paths = tables.write_all(out, spec, records, seeds_asked)
  paths["curves"] = plots.learning_curves(root, cells, spec, "train/loss", out / f"{spec.name}_curves")
  paths["metric_curves"] = plots.learning_curves(root, cells, spec, spec.metric,
                                                 out / f"{spec.name}_metric_curves")
  paths["bars"] = plots.bars(spec, records, out / f"{spec.name}_bars")
  print(paths["md"].read_text())
  return paths


def adjust_spec(spec: tables.TableSpec, *, quick_note=None, checkpoint="last", note="",
                overrides=()) -> tables.TableSpec:
  """The table as the flags make it: a quick check's notes, the selected checkpoint's name and
  protocol, --note, and the --set overrides every cell ran with (the notes describe the recipe's
  own config, so a table run with e.g. train.steps=50000 says so in its caption)."""
  notes = f"QUICK CHECK: {quick_note}; not a reproduction." if quick_note else spec.notes
  fields = {"notes": " ".join(filter(None, [
      notes, note, f"Every cell ran with --set {', '.join(overrides)}." if overrides else ""]))}
  if checkpoint == "selected":
    fields.update(name=f"{spec.name}_selected", checkpoint="selected",
                  protocol="selected_checkpoint")
  return dataclasses.replace(spec, **fields)


def main(spec: tables.TableSpec, settings: list, quick_overrides: tuple, quick_note: str,
         conclusion=None) -> int:
  """Runs the unfinished cells, writes <name>.md/.tex/.csv and the figures; 1 if a cell failed."""
  if not FLAGS.workdir:
    raise SystemExit("--workdir is required")
  logs.setup()
  seeds = range(1 if FLAGS.quick else FLAGS.seeds)
  cells = experiments.grid(settings, seeds,
                           (quick_overrides if FLAGS.quick else ()) + set_overrides(FLAGS.set))
  root = pathlib.Path(FLAGS.workdir)
  to_run = [] if FLAGS.tables_only else only_cells(cells, FLAGS.only)
  status = experiments.Runner(root, FLAGS.parallel, sweep=FLAGS.sweep).run(to_run)
  spec = adjust_spec(spec, quick_note=quick_note if FLAGS.quick else None,
                     checkpoint=FLAGS.checkpoint, note=FLAGS.note, overrides=FLAGS.set)
  paths = write_outputs(spec, root, cells, len(seeds), conclusion)
  code = report_failures(status)
  logging.info("wrote %s", ", ".join(str(p) for p in paths.values()))
  return code


def selection_main(spec: tables.TableSpec, settings: list, grid: dict, rows: dict, fixed_tag: str,
                   quick_overrides: tuple, quick_columns: tuple, max_sweep: int | None = None) -> int:
  """A model-selection table (mmjax.selection): every cell once per candidate of `grid`, the
  reverse-validation runs, then one row per protocol (`rows`: "fixed" and each criterion -> label).

  `max_sweep` caps the runs of one sweep: reverse runs each read their own pseudo-labelled dataset,
  which a sweep holds in memory."""
  if not FLAGS.workdir:
    raise SystemExit("--workdir is required")
  if FLAGS.checkpoint != "last":
    raise SystemExit("--checkpoint=selected is for the main tables; model-selection tables choose "
                     "hyperparameters at the last step")
  logs.setup()
  if FLAGS.quick:
    spec = tables.TableSpec(**{**vars(spec), "notes": "QUICK CHECK: a few steps, 1 seed; not a result."})
  if FLAGS.columns or FLAGS.quick:
    columns = [c for c in spec.columns if c in (FLAGS.columns or quick_columns)]
    unknown = sorted(set(FLAGS.columns or ()) - set(spec.columns))
    if unknown:
      raise SystemExit(f"--columns: unknown {unknown}; this table has {', '.join(spec.columns)}")
    settings = [s for s in settings if s["column"] in columns]
    spec = tables.TableSpec(**{**vars(spec), "columns": columns, "notes":
                               f"{spec.notes} Tasks run: {len(columns)} of {len(spec.columns)}."})
  spec = adjust_spec(spec, note=FLAGS.note, overrides=FLAGS.set)
  seeds = range(1 if FLAGS.quick else FLAGS.seeds)
  root = pathlib.Path(FLAGS.workdir)
  overrides = (quick_overrides if FLAGS.quick else ()) + set_overrides(FLAGS.set)
  cells = selection.candidate_cells(experiments.grid(settings, seeds, overrides), grid)
  runner = experiments.Runner(root, FLAGS.parallel, sweep=FLAGS.sweep, max_sweep=max_sweep)
  if FLAGS.tables_only:
    reverse, status = selection.reverse_cells(root, cells), {}
  else:
    reverse, status = selection.run_with_reverse(runner, cells)
  records, choices = selection.table_records(spec, root, cells, reverse, rows, fixed_tag)
  out = output_dir(root)
  paths = tables.write_all(out, spec, records, len(seeds))
  with paths["md"].open("a") as md:
    md.write(selection.choices_markdown(choices, rows))
  paths["bars"] = plots.bars(spec, records, out / f"{spec.name}_bars")
  print(paths["md"].read_text())
  return report_failures(status)
