"""Training: the LightningModule, the methods, callbacks, speed options, strategies, the
stages, checkpoints and resuming, the Trainer as lp builds it, and the base a run starts from."""
