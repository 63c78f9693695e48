"""live-puppet: real-time webcam puppeteering of portraits."""

__version__ = "0.1.0"
