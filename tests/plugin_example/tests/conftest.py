"""What the example package's tests share: a tiny BERT recipe over generated data, run with `recipe apply`."""

from __future__ import annotations

import random

import pytest

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "great", "fun", "bad", "awful", "dull", "the", "film"]


@pytest.fixture
def example_recipe(tmp_path):
    """example_recipe(stages_yaml) -> the path of a recipe over a tiny BERT, its tokenizer and 64/32 generated
    rows in tmp_path, whose run folder is tmp_path/run. ``stages_yaml``: the stage list's items, indented."""

    def write(stages: str):
        from transformers import BertTokenizer

        BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(tmp_path / "tok")
        rng = random.Random(0)
        for split, n in (("train", 64), ("dev", 32)):
            rows = [(rng.randint(0, 1), rng.choice(WORDS[11:])) for _ in range(n)]
            lines = [f"{rng.choice(['good great fun', 'bad awful dull'][1 - y].split())} {w}\t{y}" for y, w in rows]
            (tmp_path / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(lines) + "\n", encoding="utf-8")
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(
            f"""\
model:
  config: {{model_type: bert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4,
           intermediate_size: 64, max_position_embeddings: 32, vocab_size: {len(WORDS)}}}
  tokenizer: {{path: {tmp_path / "tok"}}}
task:
  kind: sequence-classification
  data: {{train: {{path: {tmp_path / "train.tsv"}}}, dev: {{path: {tmp_path / "dev.tsv"}}}}}
  max_length: 8
evaluate: {{batch_size: 32, latency_batches: 1}}
stages:
{stages}output: {{dir: {tmp_path / "run"}}}
""",
            encoding="utf-8",
        )
        return recipe

    return write
