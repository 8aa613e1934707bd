"""Simulators: the Simfluence model, its normal equations and solvers, the rollout kernel,
sharding, fit diagnostics, baselines and external scores as simulators.

Layer: above ``io``; never imports ``store``, ``analysis`` or ``cli`` (workers get picklable
data sources, not store paths).
"""
