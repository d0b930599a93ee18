"""Training the bundled default model: corpus, sample mixes, copy probes, the training loop."""
