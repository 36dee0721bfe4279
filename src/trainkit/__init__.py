"""trainkit: a config-driven experiment runner for training image classifiers."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_run"]


def __getattr__(name: str):
    """trainkit.load_run, imported on first use (PEP 562): `import trainkit` stays free of torch."""
    if name == "load_run":
        from trainkit.run.load import load_run

        return load_run
    raise AttributeError(f"module 'trainkit' has no attribute {name!r}")
