"""The named choices of the analyses (plain Python, no numpy), so the CLI can list them in
its options without loading the numerical stack."""

MODES = ("keep-steps", "repack", "shrink", "neutral")  # how whatif edits change the batches
NEUTRAL = "<neutral>"  # placeholder example of mode 'neutral' (A = 1/b, B = 0)
ORDERS = ("shuffle", "shuffle-steps", "reverse")  # whatif --order
OBJECTIVES = ("mean-final-loss",)  # design --objective
