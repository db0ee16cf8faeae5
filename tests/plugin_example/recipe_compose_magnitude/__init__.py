"""recipe-compose-magnitude: the `magnitude-prune` stage for recipe-compose.

The stage lives in ``recipe_compose_magnitude.plugin``; recipe-compose finds it
through the ``recipe_compose`` entry point named ``magnitude``.
"""

__version__ = "0.1.0"
