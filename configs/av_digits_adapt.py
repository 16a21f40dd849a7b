"""Multimodal domain adaptation on audio-visual digits: fusion Transformer, source only vs DANN.

Source: MNIST images with one half of the FSDD speakers; target: USPS images with the other half
(datasets av_digits_da_source / av_digits_da_target). Both modalities shift at once: the image
domain and the voices. Args: source_only | dann | target_oracle (trained on the labelled target).
The model is the av_digits early-fusion Transformer; DANN's domain classifier reads its fused feature.
"""
import pathlib

from mmjax.config import load_module

av_digits = load_module(pathlib.Path(__file__).with_name("av_digits.py"))
ARGS = ("source_only", "dann", "target_oracle")


def get_config(arg=None):
  arg = arg or "dann"
  if arg not in ARGS:
    raise ValueError(f"unknown av_digits_adapt arg {arg!r}; use one of {', '.join(ARGS)}")
  c = av_digits.get_config("early")
  source, target = "av_digits_da_source", "av_digits_da_target"
  c.data.train = target if arg == "target_oracle" else source
  c.evals = dict(source_test=dict(dataset=source, split="test"),
                 target_test=dict(dataset=target, split="test"))
  if arg == "dann":
    c.method = "dann"
    c.data.target = target
    c.adapt.gamma = 10.0
    c.adapt.lambda_max = 0.3
    c.adapt.domain_hidden = 256
    c.adapt.domain_layers = 2
  return c


def sweep():
  return [{"arg": arg} for arg in ARGS]
