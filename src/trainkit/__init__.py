"""trainkit: a config-driven experiment runner for training image classifiers."""

__version__ = "0.1.0"
