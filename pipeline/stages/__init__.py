"""One package per stage: `config.py` (its section, pydantic only), `stage.py` (its `STAGE`), and its
internals.

The order, the config classes and each stage's inputs are listed once, in pipeline/registry.py.
"""
