# Hydra finds plugins only under the hydra_plugins namespace package (hydra_plugins/ itself has no __init__.py).
