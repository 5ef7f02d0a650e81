"""Measured latency (eval.latency*, prune.target=latency): one meter, the dtype a model is deployed in, and
what the figure was measured on.

meter.py   the one meter: interleaved latency comparison of two models, with its spread (eval and prune stages)
dtype.py   eval.latency_dtype: the dtype and inputs a model is timed in
device.py  the CPU a figure was measured on
"""
