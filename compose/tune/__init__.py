"""`recipe tune`: search a recipe's settings (its ``search:`` section) for the smallest, fastest pipeline
that keeps the accuracy asked for, on Optuna.

``space`` turns the search section into trial overrides and validates it; ``store`` shares
finished stages between trials by their fingerprints; ``study`` runs the trials and writes
what they found.
"""
