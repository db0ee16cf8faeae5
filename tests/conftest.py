"""Shared fixtures: tiny real transformers models, a tiny tokenizer, tiny data files.

Everything here is real (real BERT classes, a real WordPiece tokenizer, real TSV
files); only the sizes are small, so that every test runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from compose.quiet import quiet_libraries

quiet_libraries()

POSITIVE = ["good", "great", "fun", "lovely", "brilliant", "moving", "charming", "superb"]
NEGATIVE = ["bad", "awful", "boring", "dull", "terrible", "flat", "tedious", "weak"]
FILLER = ["the", "film", "was", "a", "story", "and", "very", "plot", "acting", "it"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: A BERT small enough to train in seconds: 2 layers, 4 heads of 8 dims.
TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "vocab_size": len(SPECIAL) + len(POSITIVE) + len(NEGATIVE) + len(FILLER),
}


def sentiment_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """Sentences whose label is which word list dominates them: learnable by a tiny model."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(POSITIVE if label else NEGATIVE, 2) + rng.sample(FILLER, 4)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    from transformers import BertTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    words = SPECIAL + POSITIVE + NEGATIVE + FILLER
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    for name, n, seed in (("train", 256, 1), ("dev", 64, 2)):
        lines = ["sentence\tlabel"] + [f"{s}\t{label}" for s, label in sentiment_rows(n, seed)]
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def recipe_text(data_dir: Path, tokenizer_dir: Path, stages: str, extra: str = "", config: dict | None = None) -> str:
    """A recipe over the tiny model and data; ``stages`` is the YAML of the stage list."""
    config = config or TINY_BERT
    config_yaml = ", ".join(f"{k}: {v}" for k, v in config.items())
    return (
        textwrap.dedent(
            f"""\
            model:
              config: {{{config_yaml}}}
              tokenizer: {{path: {tokenizer_dir}}}
            task:
              kind: sequence-classification
              data:
                train: {{path: {data_dir / 'train.tsv'}}}
                dev: {{path: {data_dir / 'dev.tsv'}}}
              max_length: 16
            evaluate: {{batch_size: 32, latency_batches: 2}}
            seed: 0
            """
        )
        + "stages:\n"
        + textwrap.indent(textwrap.dedent(stages), "  ")
        + textwrap.dedent(extra)
    )


@pytest.fixture
def write_recipe(tmp_path, tiny_data_dir, tiny_tokenizer_dir):
    """write_recipe(stages_yaml, extra_yaml="", name="recipe.yaml", config=None) -> Path."""

    def write(stages: str, extra: str = "", name: str = "recipe.yaml", config: dict | None = None) -> Path:
        path = tmp_path / name
        path.write_text(recipe_text(tiny_data_dir, tiny_tokenizer_dir, stages, extra, config), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def host():
    """The plugin host with the installed plugins (built-ins and the example plugin)."""
    from compose.plugin_host import create_host

    return create_host()


@pytest.fixture
def tiny_bert(tiny_tokenizer_dir):
    """(model, tokenizer): a randomly initialised tiny BertForSequenceClassification."""
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    settings = dict(TINY_BERT)
    settings.pop("model_type")
    config = AutoConfig.for_model("bert", num_labels=2, **settings)
    import torch

    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval(), AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture
def make_context(write_recipe, host, tmp_path):
    """make_context(stage_yaml, model, tokenizer, overrides=("model.fine_tuned=true",)) -> StageContext.

    Validates a one-stage recipe over the tiny data (so the stage's settings get
    their schema defaults) and returns the context the executor would give the
    stage, for testing a stage's ``run`` directly.
    """
    import torch

    from compose.progress import Progress
    from compose.recipe import load_recipe
    from compose.stage import StageContext
    from compose.tasks import build_task

    def make(stage_yaml: str, model, tokenizer, overrides=("model.fine_tuned=true",), config=None):
        recipe = load_recipe(write_recipe(stage_yaml, config=config), list(overrides), host)
        stage = recipe.stages[0]
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        return StageContext(
            name=stage["name"],
            plugin=stage["uses"],
            settings=stage["with"],
            model=model,
            tokenizer=tokenizer,
            task=build_task(recipe.data["task"], recipe.data["seed"]),
            family=recipe.family,
            work_dir=work,
            seed=recipe.data["seed"],
            device=torch.device("cpu"),
            progress=Progress(enabled=False),
            recipe=recipe.data,
            plugin_host=host,
        )

    return make
