"""Few-shot tasks ("episodes") for meta-learning, drawn statelessly from (seed, step, task index).

A task is {"support": batch, "query": batch}; a batch maps the input names (e.g. "image") and
"label" to arrays. Because task i of step s depends only on (seed, s, i), a run resumes exactly
from its step number, and each process draws only its own share of a meta-batch.
"""
import numpy as np

from mmjax.data import arrays
from mmjax.data import sinusoid


class EpisodeSampler:
  """N-way K-shot classification tasks over any labelled split (Vinyals et al. 2016, §4.1).

  Each task picks `ways` distinct classes in a fresh random order (task label j is the j-th pick),
  then `shots + queries` distinct examples of each, the first `shots` for the support set and the
  rest for the query set, so support and query never share an example. With `rotate_classes`,
  every class rotated by 90, 180 and 270 degrees is a class of its own (Santoro et al. 2016; MAML).
  Every array of the split but "label" is carried, row by row, so the modalities of a multimodal
  example (omniglot_strokes' image and strokes) stay together; rotations need all of them to be
  images. uint8 inputs come out as float32 in [0, 1], like the engine's pipeline.
  """

  def __init__(self, arrays, *, ways: int, shots: int, queries: int, rotate_classes: bool = False):
    labels = np.asarray(arrays["label"])
    self.classes = np.unique(labels)
    self.by_class = [np.flatnonzero(labels == c) for c in self.classes]
    self.inputs = {k: v for k, v in arrays.items() if k != "label"}
    self.ways, self.shots, self.queries = ways, shots, queries
    self.rotations = 4 if rotate_classes else 1
    if rotate_classes and any(v.ndim != 4 for v in self.inputs.values()):
      raise ValueError("meta.rotate_classes needs image inputs [N, H, W, C]; got shapes "
                       f"{ {k: v.shape for k, v in self.inputs.items()} }")
    smallest = min(len(i) for i in self.by_class)
    if smallest < shots + queries:
      raise ValueError(f"a class has only {smallest} examples; meta.shots + meta.queries = "
                       f"{shots + queries} must not exceed it")
    if self.num_classes < ways:
      raise ValueError(f"meta.ways={ways} but the split has only {self.num_classes} classes")

  @property
  def num_classes(self) -> int:
    return len(self.classes) * self.rotations

  def task_indices(self, seed: int, step: int, index: int):
    """[(class, rotation, example indices [shots + queries])] of task `index` of `step`."""
    rng = np.random.default_rng([seed, step, index])
    picks = rng.choice(self.num_classes, self.ways, replace=False)
    out = []
    for pick in picks:
      base, rotation = divmod(int(pick), self.rotations)
      members = self.by_class[base]
      out.append((base, rotation, members[rng.choice(len(members), self.shots + self.queries,
                                                      replace=False)]))
    return out

  def task(self, seed: int, step: int, index: int) -> dict:
    chosen = self.task_indices(seed, step, index)
    parts = {"support": (slice(0, self.shots), self.shots),
             "query": (slice(self.shots, None), self.queries)}
    task = {}
    for part, (rows, count) in parts.items():
      batch = {name: np.concatenate([_rotate(values[idx[rows]], rotation)
                                     for _, rotation, idx in chosen])
               for name, values in self.inputs.items()}
      batch = {k: v.astype(np.float32) / 255.0 if v.dtype == np.uint8 else v
               for k, v in batch.items()}
      batch["label"] = np.repeat(np.arange(self.ways, dtype=np.int32), count)
      task[part] = batch
    return task


def _rotate(images, quarter_turns: int):
  """Images [N, H, W, C] rotated by quarter_turns x 90 degrees; other arrays only when unrotated."""
  return np.rot90(images, quarter_turns, axes=(1, 2)) if quarter_turns else images


def batch(source, seed: int, step: int, indices) -> dict:
  """Tasks `indices` of step `step` of a task source, stacked on a leading task axis."""
  if hasattr(source, "batch"):  # sources that draw many tasks in one call (sinusoid)
    return source.batch(seed, step, indices)
  tasks = [source.task(seed, step, i) for i in indices]
  return {part: {k: np.stack([t[part][k] for t in tasks]) for k in tasks[0][part]}
          for part in tasks[0]}


def make_task_source(config, split: str):
  """The task source of config.meta.dataset: sinusoid regression, or episodes of a dataset."""
  meta = config.meta
  if meta.dataset == "sinusoid":
    return sinusoid.SinusoidTasks(shots=meta.shots, queries=meta.queries)
  loaded = arrays.load_split(meta.dataset, split, data_dir=config.data.dir,
                             tfds_dir=config.data.tfds_dir, arrays_dir=config.data.arrays_dir)
  return EpisodeSampler(loaded, ways=meta.ways, shots=meta.shots, queries=meta.queries,
                        rotate_classes=meta.rotate_classes)
