"""Contrastive learning of a shared embedding space and its retrieval evaluation.

`symmetric_info_nce` is CLIP's loss (Radford et al. 2021, Fig. 3): with paired embeddings a_i, b_i,
logits s * a_i . b_j, cross-entropy of each row over the b's and of each column over the a's, the
positives on the diagonal, averaged. `recall_at_k` is Recall@K for cross-modal retrieval.
"""
import jax.numpy as jnp
import optax


def symmetric_info_nce(emb_a, emb_b, logit_scale):
  """Mean of the a->b and b->a InfoNCE cross-entropies; logit_scale is log(1 / temperature).

  emb_a, emb_b [N, D] are the two modalities' embeddings of the same N items (normally L2-normalised,
  so a . b is the cosine similarity); item i of a and item i of b are the only positive pair.
  """
  if emb_a.shape != emb_b.shape:
    raise ValueError(f"paired embeddings must have equal shapes, got {emb_a.shape} and {emb_b.shape}")
  logits = jnp.exp(logit_scale) * (emb_a.astype(jnp.float32) @ emb_b.astype(jnp.float32).T)
  labels = jnp.arange(logits.shape[0])
  a_to_b = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  b_to_a = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
  return (a_to_b + b_to_a) / 2


def recall_at_k(similarity, query_labels, gallery_labels, ks=(1, 5, 10)):
  """{k: fraction of queries with an item of their label among their k most similar gallery items}.

  similarity [Q, G] (higher = closer). For instance-level retrieval the labels are item ids; for
  class-level retrieval, class labels. Ties are broken toward the lower gallery index (argsort is
  stable); k larger than G counts the whole gallery.
  """
  order = jnp.argsort(-similarity, axis=1, stable=True)
  hits = gallery_labels[order] == query_labels[:, None]
  first_hit = jnp.cumsum(hits, axis=1) > 0
  num_gallery = similarity.shape[1]
  return {k: jnp.mean(first_hit[:, min(k, num_gallery) - 1].astype(jnp.float32)) for k in ks}


def two_way_recall(emb_a, emb_b, labels_a, labels_b, names=("a", "b"), ks=(1, 5, 10)):
  """Recall@K of retrieving b from a and a from b by the dot product of L2-normalised [N, D]
  embeddings (their cosine similarity).

  Returns {"<a>_to_<b>_R@k": value, "<b>_to_<a>_R@k": value} (no "/": tables name a metric
  "<eval set>/<number>").
  """
  similarity = emb_a @ emb_b.T
  a, b = names
  results = {f"{a}_to_{b}_R@{k}": v
             for k, v in recall_at_k(similarity, labels_a, labels_b, ks).items()}
  results.update({f"{b}_to_{a}_R@{k}": v
                  for k, v in recall_at_k(similarity.T, labels_b, labels_a, ks).items()})
  return results
