"""jaxcf.training: train state, optimizer, pure train steps and the training loop."""
