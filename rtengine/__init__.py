"""rtengine: a real-time neural spectral audio engine."""

__version__ = "0.1.0"
