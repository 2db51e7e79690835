"""The Dense baseline: `config.py` (DenseConfig, torch-free) and `model.py` (the torch model).
Nothing is imported here, so a stage that only counts parameters never imports torch."""
