"""The built-in stage plugins (installed as ``compose.plugins``).

Each module here is registered through the ``recipe_compose`` entry-point group,
exactly as a third-party plugin is, and uses only ``compose.api``.
"""
