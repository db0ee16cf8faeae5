"""Training: the `train` stage and the extensions of every training stage.

``train`` declares the stage; ``amp`` (mixed precision), ``checkpointing`` (gradient
checkpointing) and ``parallel`` (data, tensor and hybrid parallelism) each declare a
training extension: a settings block every stage that trains accepts. Each module is its
own entry point; each settings schema lies beside it.
"""
