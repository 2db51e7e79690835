"""Training: one loop for every run of every family.

    trainer.py        the training loop (data, optimizer, evaluation every N steps, checkpoints, resume)
    step.py           one optimizer step, shared with the throughput benchmark
    checkpoint.py     run directories, checkpoints and loading a run's model
    run_summary.py    a run's summary.json, checked
    validation.py     validation loss in nats, perplexity, bits per byte (the evaluation stages report them too)
    curves.py         training and validation curves through DVCLive
    distributed.py    DistributedDataParallel under torchrun; launch.py what a launched process needs first
"""
