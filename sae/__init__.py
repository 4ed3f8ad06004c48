"""Sparse autoencoders on MusicGen's residual stream: model, files, harvest, training, labels."""
