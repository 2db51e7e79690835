"""LRT: `config.py` (LRTConfig, torch-free: fields, validation, accounting) and `model.py` (the
torch model: interleaved parallel training, the exact recurrence for decoding).
Nothing is imported here, so a stage that only counts parameters never imports torch."""
