"""Training methods: config.method -> a module with the method's parts.

Each has `streams(config)` (the named training inputs it reads), `build_model(config)`,
`make_loss(config)` -> loss(model, params, batch, rng, progress) -> (loss, metrics) that the engine
differentiates (batch maps stream names to batches; progress is step / train.steps), and
`eval_fn` / `summarize_eval` for the eval sets. "maml" is the meta trainer's method (config.trainer
= "meta"): its parts are the meta-gradient and meta-test functions of mmjax/methods/maml.py.
"""
from mmjax.methods import cdan, dan, dann, maml, retrieval, supervised, vqa

METHODS = {"supervised": supervised, "dann": dann, "cdan": cdan, "cdan_e": cdan, "dan": dan,
           "vqa": vqa, "retrieval": retrieval, "maml": maml}


def get_method(name: str):
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
  return METHODS[name]
