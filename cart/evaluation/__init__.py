"""Evaluation: what a trained run scores (its validation loss, PPL and BPB: cart/training/validation.py).

    session.py      what the evaluation stages share: settings, one start-up, the studies' jobs
    rows.py         the rows every evaluation stage writes and the results store reads
    harness.py      the lm-evaluation-harness adapter (`--model cart`); lm_eval_cli.py lm-eval's own CLI with it
    benchmarks/     the benchmark tasks (lm-eval YAML tasks on the real files, and offline smoke copies)
"""
