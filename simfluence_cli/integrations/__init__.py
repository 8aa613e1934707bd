"""Optional helpers that log training runs from popular frameworks as encoding A.

Nothing here is imported by ``import simfluence_cli``; each submodule needs its extra:

- :mod:`simfluence_cli.integrations.pytorch` (``pip install 'simfluence-cli[torch]'``): an ID-carrying
  dataset wrapper, per-example test losses, a run logger for plain PyTorch loops, and
  :func:`~simfluence_cli.integrations.pytorch.log_runs` (N runs from one checkpoint).
- :mod:`simfluence_cli.integrations.huggingface` (``pip install 'simfluence-cli[transformers]'``): a
  ``transformers.Trainer`` callback.
- :mod:`simfluence_cli.integrations.jax` (no extra: it imports no jax itself): a run logger for
  JAX / Optax loops that moves device values to the host in blocks, and the learning rate an
  optax update used.

This package module itself imports neither torch nor transformers.
"""
