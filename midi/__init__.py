"""MIDI control surface (mido): a controller that only writes to the engine's parameter bus."""
