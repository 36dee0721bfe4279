"""The bundled Hydra config tree (a package so that pkg://trainkit.configs resolves).

Importing it registers the schemas its YAML files name (trainkit.config.schema), and our sweeper.

hydra/sweeper=trainkit_optuna lives in src/hydra_plugins/, where Hydra's plugin scan finds it in a
normal install. An editable install (pip install -e .) maps packages through a finder that the scan
cannot walk, so the sweeper is registered here too: every process that composes trainkit's configs
imports this package first. Plugins.register is Hydra's public way to add a plugin by hand."""

from hydra.core.plugins import Plugins
from hydra_plugins.trainkit_sweeper.trainkit_optuna import TrainkitOptunaSweeper

from trainkit.config.schema import register

register()
Plugins.instance().register(TrainkitOptunaSweeper)
