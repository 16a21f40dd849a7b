"""What a process pays before its first step: reading the data with and without the split cache.

python benchmarks/startup.py [--repeats=3] [--out=benchmarks/results/startup.json]

Each case runs in fresh subprocesses (the repeats alternate between cases), timed from start to
exit, and reports the median and range of its wall-clock seconds and whether the process imported
TensorFlow:
- `import_tensorflow`: `import tensorflow` alone, the cost the split cache avoids;
- `load_cached` / `load_tfds`: import mmjax.data and read the digits splits of a small run
  (USPS train and test, MNIST test) from the split cache, or from tfds (MMJAX_NO_SPLIT_CACHE=1);
- `launch_cached` / `launch_tfds`: `launch.py` of configs/digits.py:usps_mnist for 30 steps of
  batch 32 (the test suite's small run, here on one device, XLA's default optimization level and
  no compilation cache, unlike the tests), into a fresh workdir each time, removed at the end
  (run with `-X importtime`, which tells whether TensorFlow was imported and costs a little).
The data directories are the usual ones ($MMJAX_DATA_DIR, $MMJAX_TFDS_DIR); the split cache is
filled by a first read before timing.
"""
import argparse
import json
import os
import shutil
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SPLITS = (("usps", "train"), ("usps", "test"), ("mnist", "test"))
LOAD = ("import sys\nfrom mmjax.data import load_split\n"
        f"for name, split in {SPLITS!r}:\n  load_split(name, split)\n"
        "print('TF', 'tensorflow' in sys.modules)\n")
IMPORT_TF = "import sys, tensorflow\nprint('TF', 'tensorflow' in sys.modules)\n"


def _launch_args(workdir: str) -> list[str]:
  return [sys.executable, "-X", "importtime", str(REPO / "launch.py"), "--config=configs/digits.py:usps_mnist",
          f"--workdir={workdir}", "--config.train.steps=30", "--config.train.log_every=5",
          "--config.checkpoint.every=30", "--config.data.global_batch=32"]


def _run(args: list[str], env: dict) -> tuple[float, bool | None]:
  start = time.perf_counter()
  proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f"{args[:3]} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
  marks = [line for line in proc.stdout.splitlines() if line.startswith("TF ")]
  if marks:
    return seconds, marks[-1] == "TF True"
  # -X importtime: one stderr line per imported module, "... | <indent>name"
  return seconds, any(line.startswith("import time:") and line.split("|")[-1].strip() == "tensorflow"
                      for line in proc.stderr.splitlines())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=str(REPO / "benchmarks/results/startup.json"))
  flags = parser.parse_args()
  base = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
          "TF_CPP_MIN_LOG_LEVEL": "2", "MMJAX_ARRAYS_DIR": ""}
  base.pop("MMJAX_NO_SPLIT_CACHE", None)
  tfds = {**base, "MMJAX_NO_SPLIT_CACHE": "1"}
  _run([sys.executable, "-c", LOAD], base)  # fills the split cache (and prepares what is missing)
  scratch = tempfile.mkdtemp(prefix="mmjax_startup_")
  count = iter(range(10**6))
  cases = {
      "import_tensorflow": lambda: _run([sys.executable, "-c", IMPORT_TF], base),
      "load_cached": lambda: _run([sys.executable, "-c", LOAD], base),
      "load_tfds": lambda: _run([sys.executable, "-c", LOAD], tfds),
      "launch_cached": lambda: _run(_launch_args(f"{scratch}/{next(count)}"), base),
      "launch_tfds": lambda: _run(_launch_args(f"{scratch}/{next(count)}"), tfds),
  }
  seconds = {name: [] for name in cases}
  imported = {}
  for r in range(flags.repeats):
    for name in (cases if r % 2 == 0 else reversed(list(cases))):
      took, tf_seen = cases[name]()
      seconds[name].append(took)
      imported[name] = imported.get(name) or tf_seen  # in any repeat
  shutil.rmtree(scratch, ignore_errors=True)
  results = {"machine": os.uname().nodename, "date": time.strftime("%Y-%m-%d"),
             "python": sys.version.split()[0], "repeats": flags.repeats, "cases": {}}
  print(f"{'case':<20} {'median s':>9} {'min s':>7} {'max s':>7}  TensorFlow imported")
  for name, values in seconds.items():
    row = {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values),
           "seconds": values, "imported_tensorflow": imported[name]}
    results["cases"][name] = row
    seen = "-" if imported[name] is None else str(imported[name])
    print(f"{name:<20} {row['median_s']:9.2f} {row['min_s']:7.2f} {row['max_s']:7.2f}  {seen}")
  out = pathlib.Path(flags.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
