"""Attention maps of a trained fusion Transformer, exported as PNG overlays.

python -m mmjax.visualize --workdir=RUN_DIR [--examples=4] [--out=RUN_DIR/attention]

For each example of the run's first eval set, and each attention relation the model has, one PNG
with a column per layer (heads averaged): what the queries of one modality attend to among another
modality's tokens (`early`: all of the query modality's tokens in the one fused encoder;
`cross_attention`: the query modality's class token in `<q>_to_<k>`; `bottleneck`: the B bottleneck
tokens reading each modality; unimodal encoders: the class token over its own tokens). Image keys are
drawn as heat maps over the image, audio keys over the log-mel spectrogram, other keys as bars over
their token positions. For VQA runs the title shows the question and the true and predicted answers.
"""
import dataclasses
import pathlib
import re

import jax
import matplotlib
import numpy as np
from absl import app, flags, logging

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mmjax import config as config_lib  # noqa: E402
from mmjax import data as data_lib  # noqa: E402
from mmjax import methods  # noqa: E402
from mmjax.methods import inputs as inputs_lib  # noqa: E402
from mmjax.models import tokenizers  # noqa: E402
from mmjax.train import checkpoint  # noqa: E402

IMAGE_TOKENIZERS = {"patch", *tokenizers.CNN_LAYERS}


@dataclasses.dataclass
class Relation:
  """One attention map to draw: `query` modality's rows over `key` modality's token columns."""
  title: str
  query: str
  key: str
  layers: list  # per layer: weights [B, heads, q_len, k_len]
  rows: slice   # query positions averaged
  columns: slice  # key positions of the key modality's tokens (class token excluded)


def _sown(intermediates):
  """{module path: weights} for every sown attention map, paths like 'fusion_encoder/layer_0/...'."""
  flat = jax.tree_util.tree_flatten_with_path(intermediates,
                                              is_leaf=lambda x: isinstance(x, tuple))[0]
  maps = {}
  for path, value in flat:
    names = [getattr(p, "key", str(p)) for p in path]
    if names[-1] == "attention_weights":
      maps["/".join(names[:-1])] = np.asarray(value[0] if isinstance(value, tuple) else value)
  return maps


def _layer(path):
  match = re.search(r"layer_(\d+)", path)
  return int(match.group(1)) if match else 0


def relations(model_cfg, maps, lengths) -> list:
  """Groups the sown maps into the relations the module docstring lists."""
  modalities = list(model_cfg.modalities)
  out = []

  def add(title, query, key, pattern, rows, columns):
    found = sorted((p for p in maps if re.search(pattern, p)), key=_layer)
    if found:
      out.append(Relation(title, query, key, [maps[p] for p in found], rows, columns))

  fusion = model_cfg.get("fusion", "early")
  starts = dict(zip(modalities, np.cumsum([0] + [lengths[m] for m in modalities[:-1]])))
  for m in modalities:
    add(f"{m} class token over its own tokens", m, m, rf"(^|/){m}_encoder/layer_\d+/",
        slice(0, 1), slice(1, lengths[m]))
  if fusion == "early":
    for q in modalities:
      for k in modalities:
        if q != k:
          add(f"{q} tokens over {k} tokens (early fusion)", q, k, r"fusion_encoder/layer_\d+/",
              slice(starts[q], starts[q] + lengths[q]),
              slice(starts[k] + 1, starts[k] + lengths[k]))
  for q in modalities:
    for k in modalities:
      add(f"{q} class token over {k} tokens (cross-attention)", q, k,
          rf"{q}_to_{k}/layer_\d+/", slice(0, 1), slice(1, lengths[k]))
  for m in modalities:
    b = model_cfg.get("bottleneck_tokens", 0)
    add(f"bottleneck tokens over {m} tokens", "bottleneck", m, rf"bottleneck/layer_\d+/{m}/",
        slice(lengths[m], lengths[m] + b), slice(1, lengths[m]))
  return out


def _token_lengths(captured):
  lengths = {}
  for name, value in captured.items():
    if name.endswith("_tokenizer"):
      tokens = value["__call__"][0][0]
      lengths[name[:-len("_tokenizer")]] = tokens.shape[1]
  return lengths


def _draw_keys(ax, weights, key, kind, example, patch_size):
  """Draws attention weights over key tokens on the key modality's own picture."""
  if kind in IMAGE_TOKENIZERS:
    image = np.asarray(example[key])
    h, w = image.shape[:2]
    step = 2 ** tokenizers.CNN_LAYERS[kind] if kind in tokenizers.CNN_LAYERS else patch_size
    grid = weights.reshape(-(-h // step), -(-w // step))
    ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None)
    ax.imshow(grid, cmap="inferno", alpha=0.55, extent=(0, grid.shape[1] * step,
                                                        grid.shape[0] * step, 0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
  elif kind == "audio":
    spectrogram = np.asarray(tokenizers.log_mel_spectrogram(np.asarray(example[key])[None]))[0]
    p = tokenizers.AudioTokenizer.__dataclass_fields__["patch_size"].default
    grid = weights.reshape(-(-spectrogram.shape[0] // p), -(-spectrogram.shape[1] // p))
    ax.imshow(spectrogram.T, origin="lower", aspect="auto", cmap="gray")
    ax.imshow(grid.T, origin="lower", aspect="auto", cmap="inferno", alpha=0.55,
              extent=(0, grid.shape[0] * p, 0, grid.shape[1] * p))
    ax.set_xlim(0, spectrogram.shape[0])
    ax.set_ylim(0, spectrogram.shape[1])
  else:
    ax.bar(np.arange(len(weights)), weights)
  ax.set_xticks([])
  ax.set_yticks([])


def _examples(config, count):
  """The first `count` examples of the first eval set, as the model sees them, plus titles."""
  name, ev = next(iter(config.evals.items()))
  arrays = data_lib.load_split(ev.dataset, ev.split, data_dir=config.data.dir,
                               tfds_dir=config.data.tfds_dir, arrays_dir=config.data.arrays_dir)
  batch = next(data_lib.eval_batches({k: v[:count] for k, v in arrays.items()},
                                     global_batch=count))
  if config.method == "vqa":
    from mmjax.data import sort_of_clevr
    from mmjax.methods import vqa
    q = batch["label"].shape[1]
    index = np.stack([np.zeros(count, int), np.full(count, q - 1)], 1)  # one of each question type
    inputs, labels, _ = vqa.pairs(batch, index)
    inputs = jax.tree.map(np.asarray, inputs)
    titles = [sort_of_clevr.describe_question(question) + f" (answer: {sort_of_clevr.ANSWERS[a]})"
              for question, a in zip(inputs["question"], np.asarray(labels))]
    return inputs, titles, sort_of_clevr.ANSWERS
  inputs = inputs_lib.model_inputs(batch, config.data.input_key)
  if not isinstance(inputs, dict):
    inputs = {config.model.modalities[0]: inputs}
  return inputs, [f"{name} example {i} (label {l})" for i, l in enumerate(batch["label"])], None


def export(workdir, out=None, count: int = 4, step: int = -1) -> list:
  """Writes the PNGs and returns their paths."""
  config = config_lib.from_workdir(workdir)
  if config.model.name != "fusion_transformer":
    raise ValueError(f"{workdir} trained {config.model.name!r}; attention maps exist for "
                     "model 'fusion_transformer' only")
  model = methods.get_method(config.method).build_model(config)
  params, _ = checkpoint.read_params(workdir, step)
  inputs, titles, answers = _examples(config, count)
  model_inputs = inputs if len(inputs) > 1 else next(iter(inputs.values()))
  is_tokenizer = lambda module, _: isinstance(module, tokenizers.ModalityTokenizer)  # noqa: E731
  outputs, state = model.apply({"params": params}, model_inputs, train=False,
                               mutable=["intermediates"], capture_intermediates=is_tokenizer)
  captured = state["intermediates"].get("backbone", state["intermediates"])
  lengths = _token_lengths(captured)
  kinds = dict(zip(config.model.modalities, config.model.tokenizers))
  rels = relations(config.model, _sown(captured), lengths)
  if not rels:
    raise ValueError(f"the model of {workdir} sowed no attention maps")
  predictions = np.argmax(np.asarray(outputs["logits"]), -1)
  out = pathlib.Path(out or pathlib.Path(workdir) / "attention")
  out.mkdir(parents=True, exist_ok=True)
  paths = []
  for i, title in enumerate(titles):
    example = {k: v[i] for k, v in inputs.items()}
    predicted = answers[predictions[i]] if answers else int(predictions[i])
    for r, rel in enumerate(rels):
      fig, axes = plt.subplots(1, len(rel.layers), figsize=(2.6 * len(rel.layers), 2.9),
                               squeeze=False)
      for layer, (ax, weights) in enumerate(zip(axes[0], rel.layers)):
        w = weights[i].mean(axis=0)[rel.rows, rel.columns].mean(axis=0)
        _draw_keys(ax, w, rel.key, kinds[rel.key], example, config.model.get("patch_size", 8))
        ax.set_title(f"layer {layer}", fontsize=8)
      fig.suptitle(f"{title}; predicted {predicted}\n{rel.title}", fontsize=8)
      fig.tight_layout()
      path = out / f"example{i}_{r}_{rel.query}_to_{rel.key}.png"
      fig.savefig(path, dpi=110)
      plt.close(fig)
      paths.append(path)
  logging.info("wrote %d attention maps to %s", len(paths), out)
  return paths


def main(argv):
  del argv
  from mmjax import logs
  logs.setup()
  for path in export(FLAGS.workdir, FLAGS.out, FLAGS.examples, FLAGS.step):
    print(path)


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "a trained run's workdir", required=True)
  flags.DEFINE_string("out", None, "output folder (default <workdir>/attention)")
  flags.DEFINE_integer("examples", 4, "examples of the first eval set to draw")
  flags.DEFINE_integer("step", -1, "checkpoint step (-1: the latest)")
  FLAGS = flags.FLAGS
  app.run(main)
