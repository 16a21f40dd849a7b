"""Cross-modal retrieval with a two-stream dual encoder (method retrieval).

Training: symmetric InfoNCE between the two modalities' embeddings of a batch, with a learned
temperature (CLIP, Radford et al. 2021, eq. in Fig. 3). Evaluation embeds a whole eval split and
ranks it in both directions: Recall@K is the fraction of queries with an item of the same `label`
among their K nearest by cosine similarity. With per-drawing labels this is instance retrieval; with
class labels (AV digits) a hit is any item of the query's class.
"""
import jax.numpy as jnp
import numpy as np

from mmjax import models
from mmjax.losses import contrastive
from mmjax.methods import inputs as inputs_lib
from mmjax.methods.supervised import streams  # noqa: F401 (one stream, its labels unused in training)

EVAL_COLLECTS = True  # evaluation needs every embedding of a split, not per-batch sums
KS = (1, 5, 10)


def _modalities(config):
  names = inputs_lib.input_names(config.data.input_key)
  if len(names) != 2:
    raise ValueError(f"method 'retrieval' pairs two modalities; config.data.input_key is "
                     f"{config.data.input_key!r}")
  return names


def build_model(config):
  return models.build_model(config.model, config.dtype)


def make_loss(config):
  a, b = _modalities(config)

  def loss_fn(model, params, batch, rng, progress):
    del progress
    batch = batch["train"]
    out = model.apply({"params": params}, inputs_lib.model_inputs(batch, config.data.input_key),
                      train=True, rngs={"dropout": rng})
    emb_a, emb_b = out["embeddings"][a], out["embeddings"][b]
    loss = contrastive.symmetric_info_nce(emb_a, emb_b, out["logit_scale"])
    # In-batch top-1 accuracy of the a->b direction (the diagonal is the positive).
    hit = jnp.argmax(emb_a @ emb_b.T, axis=1) == jnp.arange(emb_a.shape[0])
    return loss, {"loss": loss, "batch_top1": hit.mean(),
                  "temperature": jnp.exp(-out["logit_scale"])}
  return loss_fn


def make_eval(config):
  a, b = _modalities(config)

  def eval_fn(model, params, batch):
    """Per-example outputs (collected over the split by the trainer): embeddings, labels, mask."""
    out = model.apply({"params": params}, inputs_lib.model_inputs(batch, config.data.input_key),
                      train=False)
    return {"a": out["embeddings"][a], "b": out["embeddings"][b], "label": batch["label"],
            "mask": batch["mask"]}
  return eval_fn


def summarize_eval(collected):
  """Recall@1/5/10 both ways from the split's embeddings (real rows only)."""
  emb_a, emb_b = np.asarray(collected["a"], np.float32), np.asarray(collected["b"], np.float32)
  labels = np.asarray(collected["label"])
  results = {k: float(v) for k, v in contrastive.two_way_recall(emb_a, emb_b, labels, labels,
                                                               ks=KS).items()}
  results["n"] = int(len(labels))
  return results
