"""The bundled Hydra config tree (a package so that pkg://trainkit.configs resolves)."""
