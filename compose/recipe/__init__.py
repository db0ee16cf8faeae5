"""Reading a recipe, without torch: YAML with locations, composition, schemas, rules, data and model checks.

Nothing in this package imports torch or transformers, so ``recipe validate`` and
``recipe plan`` stay fast (tests/compose/recipe/test_load.py checks it).
"""
