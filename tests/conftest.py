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

#: TINY_BERT 4x wider (same vocabulary and depth): GPTQ group size 128 fits its layers.
WIDE_BERT = {**TINY_BERT, "hidden_size": 128, "intermediate_size": 256}


#: A Llama-style decoder (the `decoder` family): 2 layers, 4 heads of 8 dims, no grouped KV.
#: vocab_size and the special token ids come from the tokenizer (see compose.run.modeling).
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}

#: A T5 (the `encoder-decoder` family): 2 encoder and 2 decoder blocks, 4 heads of 8 dims.
TINY_T5 = {
    "model_type": "t5",
    "d_model": 32,
    "d_kv": 8,
    "num_heads": 4,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "d_ff": 64,
}

#: family -> (the default tiny config, task.kind)
FAMILY_SETUP = {
    "encoder": (TINY_BERT, "sequence-classification"),
    "decoder": (TINY_LLAMA, "causal-lm"),
    "encoder-decoder": (TINY_T5, "seq2seq"),
}
TARGETS = {0: "negative", 1: "positive"}


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


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory) -> Path:
    """train.txt / dev.txt: running text (one sentiment sentence per line) for causal-lm."""
    folder = tmp_path_factory.mktemp("text")
    for name, n, seed in (("train", 400, 3), ("dev", 80, 4)):
        lines = [s for s, _ in sentiment_rows(n, seed)]
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_bpe_tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer (the kind `model.tokenizer.train` builds) for the decoder and T5."""
    from compose.run.modeling import train_tokenizer

    folder = tmp_path_factory.mktemp("bpe")
    texts = [s for s, _ in sentiment_rows(400, 3)] + list(TARGETS.values()) * 20
    train_tokenizer(texts, {"vocab_size": 320, "min_frequency": 1}).save_pretrained(folder)
    return folder


def task_yaml(family: str, data_dir: Path, text_dir: Path | None) -> str:
    """The task section for a family: its kind, its tiny data files, its own settings."""
    files, kind, settings = data_dir, "sequence-classification", ["max_length: 16"]
    if family == "decoder":
        files, kind, settings = text_dir, "causal-lm", ["text_column: text", "block_size: 16"]
    elif family == "encoder-decoder":
        kind = "seq2seq"
        settings = ["targets: {0: negative, 1: positive}", "max_length: 16", "max_target_length: 8"]
    suffix = ".txt" if family == "decoder" else ".tsv"
    lines = ["task:", f"  kind: {kind}", "  data:"]
    lines += [f"    {split}: {{path: {files / (split + suffix)}}}" for split in ("train", "dev")]
    return "\n".join(lines + [f"  {line}" for line in settings]) + "\n"


def recipe_text(
    data_dir: Path,
    tokenizer_dir: Path,
    stages: str,
    extra: str = "",
    config: dict | None = None,
    family: str = "encoder",
    text_dir: Path | None = None,
) -> str:
    """A recipe over the tiny model and data of a family; ``stages`` is the YAML of the stage list."""
    config = config or FAMILY_SETUP[family][0]
    config_yaml = ", ".join(f"{k}: {v}" for k, v in config.items())
    return (
        textwrap.dedent(
            f"""\
            model:
              config: {{{config_yaml}}}
              tokenizer: {{path: {tokenizer_dir}}}
            """
        )
        + task_yaml(family, data_dir, text_dir)
        + textwrap.dedent(
            """\
            evaluate: {batch_size: 32, latency_batches: 2, latency: {batch1_samples: 5, throughput_batches: 2}}
            seed: 0
            """
        )
        + "stages:\n"
        + textwrap.indent(textwrap.dedent(stages), "  ")
        + textwrap.dedent(extra)
    )


def _recipe_writer(folder_for, data_dir, tokenizer_dir, text_dir, bpe_tokenizer_dir):
    def write(
        stages: str, extra: str = "", name: str = "recipe.yaml", config: dict | None = None, family: str = "encoder"
    ) -> Path:
        tokenizer = tokenizer_dir if family == "encoder" else bpe_tokenizer_dir
        path = folder_for() / name
        path.write_text(recipe_text(data_dir, tokenizer, stages, extra, config, family, text_dir), encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_recipe(tmp_path, tiny_data_dir, tiny_tokenizer_dir, tiny_text_dir, tiny_bpe_tokenizer_dir):
    """write_recipe(stages_yaml, extra_yaml="", name="recipe.yaml", config=None, family="encoder") -> Path.

    family: encoder (tiny BERT, sequence-classification), decoder (tiny Llama,
    causal-lm on running text) or encoder-decoder (tiny T5, seq2seq sentiment).
    """
    return _recipe_writer(lambda: tmp_path, tiny_data_dir, tiny_tokenizer_dir, tiny_text_dir, tiny_bpe_tokenizer_dir)


@pytest.fixture(scope="session")
def write_shared_recipe(tmp_path_factory, tiny_data_dir, tiny_tokenizer_dir, tiny_text_dir, tiny_bpe_tokenizer_dir):
    """write_recipe for module- and session-scoped fixtures: each call writes into a new folder."""
    return _recipe_writer(
        lambda: tmp_path_factory.mktemp("recipe"),
        tiny_data_dir,
        tiny_tokenizer_dir,
        tiny_text_dir,
        tiny_bpe_tokenizer_dir,
    )


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


def _tiny_model(cls_name: str, config: dict, tokenizer_dir: Path, task_kind: str):
    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from compose.run.modeling import tokenizer_config_kwargs

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    settings = dict(config)
    model_type = settings.pop("model_type")
    settings.update(tokenizer_config_kwargs(tokenizer, settings, task_kind))
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(AutoConfig.for_model(model_type, **settings))
    return model.eval(), tokenizer


@pytest.fixture
def tiny_llama(tiny_bpe_tokenizer_dir):
    """(model, tokenizer): a randomly initialised tiny LlamaForCausalLM (the decoder family)."""
    return _tiny_model("LlamaForCausalLM", TINY_LLAMA, tiny_bpe_tokenizer_dir, "causal-lm")


@pytest.fixture
def tiny_t5(tiny_bpe_tokenizer_dir):
    """(model, tokenizer): a randomly initialised tiny T5ForConditionalGeneration (encoder-decoder)."""
    return _tiny_model("T5ForConditionalGeneration", TINY_T5, tiny_bpe_tokenizer_dir, "seq2seq")


@pytest.fixture
def make_context(write_recipe, host, tmp_path):
    """make_context(stage_yaml, model, tokenizer, overrides=("model.fine_tuned=true",), config=None,
    family="encoder") -> StageContext.

    Validates a one-stage recipe over the tiny data (so the stage's settings get
    their schema defaults) and returns the context the executor would give the
    stage, for testing a stage's ``run`` directly.
    """
    import torch

    from compose.progress import Progress
    from compose.recipe.load import load_recipe
    from compose.stage import StageContext
    from compose.tasks import build_task

    def make(
        stage_yaml: str, model, tokenizer, overrides=("model.fine_tuned=true",), config=None, family: str = "encoder"
    ):
        recipe = load_recipe(write_recipe(stage_yaml, config=config, family=family), list(overrides), host)
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


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (tests/servers.py); skipped, with the reason, only where none
    can be started on this machine."""
    from tests import servers

    reason = servers.why_not()
    if reason is not None:
        pytest.skip(reason)
    server = servers.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """A new empty database on the session's server, for one test; its SQLAlchemy URL."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40] + f"_{id(request) % 100000}"
    return postgres_server.create_database(name)
