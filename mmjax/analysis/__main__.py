"""python -m mmjax.analysis --workdir=RUN [--baseline=SOURCE_ONLY_RUN]: PAD and t-SNE of a run.

Reads RUN's config.json and latest checkpoint, takes its source (data.train, data.train_split) and
target (data.target, data.target_split) examples, and writes RUN/pad.json (proxy A-distance) and
RUN/tsne.png (t-SNE, source blue, target red) for each representation: the raw inputs, the
features of --baseline (e.g. a source-only run of the same pair: "before adaptation"), and RUN's
features ("after adaptation", for an adaptation run).
"""
from absl import app, flags

from mmjax import logs
from mmjax.analysis.report import analyse

flags.DEFINE_string("workdir", None, "the trained run to analyse")
flags.DEFINE_string("baseline", None, "optional second run (e.g. source only) shown before RUN")
flags.DEFINE_string("target", None, "target dataset when RUN's config has no data.target")
flags.DEFINE_integer("max_points", 1000, "examples per domain at most (t-SNE is O(N^2))")
flags.DEFINE_float("perplexity", 30.0, "t-SNE perplexity")
flags.DEFINE_integer("seed", 0, "subsampling, PAD halves and t-SNE initialisation")
flags.DEFINE_string("out", None, "output folder (default: --workdir)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logs.setup()
  analyse(FLAGS.workdir, FLAGS.out or FLAGS.workdir, baseline=FLAGS.baseline, target=FLAGS.target,
          max_points=FLAGS.max_points, perplexity=FLAGS.perplexity, seed=FLAGS.seed)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
