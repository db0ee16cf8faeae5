"""The public plugin API: everything a stage plugin may use from the core.

Plugins import from here (and ``compose.hookimpl``), never from other core modules::

    from compose import hookimpl
    from compose.api import StageType, StageResult, load_schema_file

The hooks a plugin implements, and what each must do, are in ``compose.hookspecs``;
helpers for testing a plugin are in ``compose.testing``. Besides the names below, two
conventions are part of the contract:

- a stage that trains puts ``{"$ref": TRAINING_SETTINGS_REF}`` (``"compose:training"``)
  in its settings schema, as the whole schema or as one property's, and gets the shared
  training settings (schemas/training.schema.json) plus every training extension's key;
- a quantized module that implements ``Dequantizable`` (a ``dequantized()`` method)
  is made float by the ``export`` stage, so a third-party quantization stage exports;
- what one stage may learn of another goes through this API only: a quantizing stage
  declares its ``QuantizationScheme`` (``StageType.quantization``), a stage that prepares
  for it reads it (``PlanView.next_quantization``, ``StageContext.next_quantization``) and
  records what it trained the model for (``record_trained_for`` / ``trained_for``);
- a settings key named ``split``, or ending in ``_split``, names one of the task's data
  splits: ``recipe plan`` and the data checks read it by that name, so give a setting
  that chooses a split such a name;
- building blocks several techniques share (architectures and the layer walk, the
  distillation loss and teacher cache, quantization grids) are the library package
  ``compose.plugins.shared``, public like this module; one plugin never imports another's.
"""

from typing import TYPE_CHECKING

from compose import hookimpl
from compose.atomic import writing_folder
from compose.errors import ComposeError, DataError, ModelLoadError
from compose.progress import Progress
from compose.quantization_scheme import (
    QuantizationScheme,
    TensorQuantization,
    record_trained_for,
    trained_for,
)
from compose.quiet import library_chatter_off
from compose.recipe.rules import PlanView
from compose.recipe.schema import TRAINING_SETTINGS_REF
from compose.run.artifacts import load_artifact, record_transform, save_artifact, size_on_disk, transforms_of
from compose.run.budget import describe_length
from compose.run.modeling import count_parameters, task_model_kwargs
from compose.run.training import train_model
from compose.run.training_types import TrainingSetup, TrainingStep, TrainingSummary
from compose.stage import (
    FAMILIES,
    KNOWN_FACTS,
    Check,
    Dequantizable,
    StageContext,
    StageCost,
    StageResult,
    StageType,
    TrainingExtension,
)

if TYPE_CHECKING:  # for type checkers and linters; at run time `__getattr__` below
    from compose.evaluation.evaluator import Evaluation, evaluate
    from compose.tasks import Task

#: Names whose modules import torch: loaded on first use, so that loading the plugins
#: (which validation does) does not import torch.
_LAZY = {
    "Evaluation": "compose.evaluation.evaluator",
    "evaluate": "compose.evaluation.evaluator",
    "Task": "compose.tasks",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'compose.api' has no attribute {name!r}")


def load_schema_file(package: str, filename: str) -> dict:
    """A JSON Schema shipped as package data (e.g. a third-party plugin's settings schema)."""
    import json
    from importlib import resources

    return json.loads(resources.files(package).joinpath(filename).read_text(encoding="utf-8"))


__all__ = [
    "FAMILIES",
    "KNOWN_FACTS",
    "Check",
    "ComposeError",
    "DataError",
    "Dequantizable",
    "Evaluation",
    "ModelLoadError",
    "PlanView",
    "Progress",
    "QuantizationScheme",
    "StageContext",
    "StageCost",
    "StageResult",
    "StageType",
    "TRAINING_SETTINGS_REF",
    "Task",
    "TensorQuantization",
    "TrainingExtension",
    "TrainingSetup",
    "TrainingStep",
    "TrainingSummary",
    "count_parameters",
    "describe_length",
    "evaluate",
    "hookimpl",
    "library_chatter_off",
    "load_artifact",
    "load_schema_file",
    "record_trained_for",
    "record_transform",
    "save_artifact",
    "size_on_disk",
    "task_model_kwargs",
    "train_model",
    "trained_for",
    "transforms_of",
    "writing_folder",
]
