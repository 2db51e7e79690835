"""Hugging Face interoperability: export a training run as a `transformers` model folder.

    python -m pipeline.export runs/stage2/d1024-R6-s42 hf/cart-d1024-R6

configuration_cart.py and modeling_cart.py (the PretrainedConfig and PreTrainedModel wrapper
around any family of cart.models) are copied into the exported folder with the family's source,
so loading it needs transformers and torch only; tokenizer.py turns the run's SentencePiece model
into a fast tokenizer; export.py writes and checks the folder.
"""
