"""Reading and writing training logs, curricula and score files (one module per encoding).

Layer: the lowest above the shared data types (``runs``, ``errors``); never imports ``model``,
``store``, ``analysis`` or ``cli``.
"""
