"""CART: `config.py` (CARTConfig, torch-free: fields, validation, accounting, the paper-text vs
paper-code table), `model.py` (the torch model), `authors.py` (loading the authors' checkpoints).
Nothing is imported here, so a stage that only counts parameters never imports torch."""
