"""OSC control surface (python-osc): a controller that only writes to the engine's parameter bus."""
