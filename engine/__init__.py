"""The resident engine: the only part of musicgen-steer that touches the model."""
