"""The bundled Hydra config tree (a package so that pkg://trainkit.configs resolves).

Importing it registers the schemas its YAML files name (trainkit.config.schema)."""

from trainkit.config.schema import register

register()
