"""Data: text to token windows.

    corpus.py        text per domain (builtin, local files, Hugging Face datasets), split and written as JSONL
    tokenizer.py     a SentencePiece model trained on the corpus, or a given one (the paper's Llama-2)
    bins.py          token bins written by the bins stage; the training and validation windows read from them
    builtin_text.py  the offline smoke text behind `corpus.source: builtin`
"""
