"""The plugin author's contract: every hook recipe-compose calls, in one place.

A plugin is a module (or object) with functions decorated by ``compose.hookimpl``
whose names match the hooks below. Publish it through the ``recipe_compose``
entry-point group in your package's ``pyproject.toml``::

    [project.entry-points.recipe_compose]
    my-plugin = "my_package.plugin"

The built-in plugins are found through that same group and use only these hooks
and the names exported by ``compose.api``: the stages ``train``, ``distill``,
``prune-heads``, ``prune-ffn``, ``prune-vocab``, ``gptq``, ``qad`` and ``export``, and the training settings
``amp``, ``checkpointing`` and ``parallel`` (``compose_register_training_extensions``). docs/plugins/tutorial.md builds a plugin step by step; docs/plugins/contract.md is the reference.

Hook implementations may declare any subset of a hook's arguments, by name.
pluggy rejects, at registration, an implementation that asks for an argument the
hook does not have.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "recipe_compose"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)

# ---------------------------------------------------------------------------
# Registration: called once, when the plugin host starts
# ---------------------------------------------------------------------------


@hookspec
def compose_register_stages(register):
    """Declare the stage types this plugin provides.

    Called once for every plugin, when the plugin host is created (before any
    recipe is read).

    :param register: call ``register(StageType(...))`` once per stage type (see
        ``compose.api.StageType``). The host validates each declaration at once:
        a name already registered by another plugin, or a settings schema that is
        not valid JSON Schema, is an error that names your plugin and its package.

    :return: ignored.
    """


@hookspec
def compose_register_training_extensions(register):
    """Declare settings that every training stage accepts (mixed precision, checkpointing...).

    Called once for every plugin, when the plugin host is created, like
    ``compose_register_stages``.

    :param register: call ``register(TrainingExtension(...))`` once per setting
        (see ``compose.api.TrainingExtension``). Its ``name`` becomes a key of the
        shared training settings; a name that another plugin or the training loop
        itself already uses is an error naming your plugin and its package.

    :return: ignored.
    """


# ---------------------------------------------------------------------------
# Training: called by the shared training loop (``compose.api.train_model``),
# which the ``train`` and ``distill`` stages, and any third-party stage that
# trains, go through.
# ---------------------------------------------------------------------------


@hookspec
def compose_training_setup(setup):
    """Adjust a training run before it starts.

    Called once at the start of every call to ``compose.api.train_model``, on
    every process, before the model, optimizer and data are handed to
    accelerate.

    :param setup: a ``compose.api.TrainingSetup``. Change it in place: add
        keyword arguments for ``accelerate.Accelerator`` to
        ``setup.accelerator_kwargs``, replace ``setup.model``, append callables
        to ``setup.on_step_end``. ``setup.stage`` and ``setup.settings`` say which
        stage is training and with what settings.

    :return: ignored.
    """


@hookspec
def compose_training_step_end(step):
    """Observe a finished optimizer step.

    Called after every optimizer step of ``compose.api.train_model``, on every
    process.

    :param step: a ``compose.api.TrainingStep`` with ``stage``, ``step``
        (1-based), ``total_steps``, ``epoch``, ``loss`` (float, this process) and
        ``model``.

    :return: ignored.
    """
