"""What the simulators are used for: evaluation and metrics, example effects (``top``),
what-if edits and group effects, curriculum design, plots.

Layer: above ``store`` and ``model``; never imports ``cli``.
"""
