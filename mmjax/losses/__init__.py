"""Losses shared by the adaptation methods: discrepancies between source and target features."""
from mmjax.losses.mmd import gaussian_kernels, mk_mmd  # noqa: F401 (re-exported)
