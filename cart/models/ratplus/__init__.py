"""RAT+: `config.py` (RATPlusConfig, torch-free: fields, validation, attention and cache
accounting) and `model.py` (the torch model: the gated recurrence and attention at a pattern).
The patterns themselves (models/patterns.py, models/pattern_attention.py) are shared with the
Dense control. Nothing is imported here, so a stage that only counts parameters never imports torch."""
