"""PyQt6 knob panel: a controller that only writes to the engine's parameter bus."""
