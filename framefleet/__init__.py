"""framefleet: run a model over a spiky stream of videos on a crash-prone fleet."""

__version__ = "0.1.0"
