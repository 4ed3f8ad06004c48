"""A planted music world: a token grammar with known attributes, its exact scorer, and (to
come) a small MusicGen trained on it, so features and steering can be measured against truth."""
