"""compose.tasks.lengths: what max_length cuts is measured and said, and `auto` picks a length from the data."""

from __future__ import annotations

import json

import pytest

from compose.recipe.load import load_recipe
from compose.tasks import build_task
from compose.tasks.lengths import auto_max_length, length_stats, quantile, truncation_warning
from compose.testing import run_recipe


def test_stats_count_what_the_limit_cuts():
    lengths = [5] * 90 + [20] * 9 + [40]
    stats = length_stats(lengths, limit=16)
    assert (stats["rows"], stats["p95"], stats["p99"], stats["max"]) == (100, 20, 20, 40)
    assert (stats["truncated_rows"], stats["truncated_share"]) == (10, 0.1)
    assert stats["fits_share_with"] == 24  # 99% of the rows fit in 20 tokens, rounded up to a multiple of 8
    warning = truncation_warning("train", stats)
    assert warning.startswith("split 'train': max_length 16 truncates 10.0% of its 100 rows")
    assert warning.endswith("task.max_length: 24 cuts at most 1% (or max_length: auto)")
    assert truncation_warning("train", length_stats(lengths, limit=40)) is None


def test_auto_is_the_99th_percentile_rounded_up_to_8_within_the_tokenizers_limit():
    lengths = list(range(1, 201))  # p99: 198
    assert quantile(lengths, 0.99) == 198
    assert auto_max_length(lengths) == 200
    assert auto_max_length(lengths, cap=128) == 128
    assert auto_max_length([3, 4]) == 8


def write_pairs(folder, n: int = 64) -> None:
    """A sentence-pair split: the second text of each row is long, so a short max_length cuts most pairs."""
    words = ["good", "great", "bad", "awful", "the", "film", "plot", "was", "fun", "dull"]
    for split in ("train", "dev"):
        lines = ["#1 String\t#2 String\tlabel"]
        for i in range(n):
            first = " ".join(words[(i + k) % len(words)] for k in range(3))
            second = " ".join(words[(i * 3 + k) % len(words)] for k in range(6 + i % 9))
            lines.append(f"{first}\t{second}\t{i % 2}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def pair_recipe(write_recipe, tiny_data_dir, folder, max_length) -> object:
    write_pairs(folder)
    path = write_recipe(
        "- {name: ft, uses: train, with: {epochs: 0.5, batch_size: 16, eval_every_epoch: false}}\n",
        extra=f"output: {{dir: {folder / 'run'}}}\n",
    )
    text = path.read_text().replace(str(tiny_data_dir), str(folder)).replace("  max_length: 16\n", "")
    text = text.replace("task:\n", "task:\n  text_column: '#1 String'\n  text_pair_column: '#2 String'\n")
    path.write_text(
        text.replace(
            "  kind: sequence-classification\n", f"  kind: sequence-classification\n  max_length: {max_length}\n"
        )
    )
    return path


def test_pair_rows_are_measured_with_both_texts(write_recipe, host, tiny_data_dir, tiny_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    recipe = load_recipe(pair_recipe(write_recipe, tiny_data_dir, tmp_path, 8), [], host)
    task = build_task(recipe.data["task"], 0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    lengths = task.untruncated_lengths("train", tokenizer)
    single = [len(ids) for ids in tokenizer([r["#1 String"] for r in task.rows("train")])["input_ids"]]
    assert all(pair > one for pair, one in zip(lengths, single))  # [CLS] a [SEP] b [SEP]
    assert task.length_report(tokenizer)["train"]["truncated_share"] == 1.0


def test_plan_warns_and_auto_fits_the_data(write_recipe, host, tiny_data_dir, tmp_path, capsys):
    path = pair_recipe(write_recipe, tiny_data_dir, tmp_path, 8)
    assert run_recipe("plan", str(path)) == 0
    out = capsys.readouterr().out
    assert "# warning: split 'train': max_length 8 truncates 100.0% of its 64 rows" in out
    assert "#   ft: 2 steps (0.50 passes," in out
    auto = pair_recipe(write_recipe, tiny_data_dir, tmp_path, "auto")
    assert run_recipe("plan", str(auto), "--json") == 0
    data = json.loads(capsys.readouterr().out)["data"]
    assert data["max_length_written"] == "auto" and data["max_length"] % 8 == 0
    assert data["lengths"]["train"]["truncated_share"] <= 0.01 and not data["warnings"]


@pytest.mark.parametrize("max_length", ["auto", 8])
def test_the_report_records_what_was_truncated(write_recipe, tiny_data_dir, tmp_path, monkeypatch, max_length):
    path = pair_recipe(write_recipe, tiny_data_dir, tmp_path, max_length)
    assert run_recipe("apply", str(path), "--quiet") == 0
    data = json.loads((tmp_path / "run" / "report.json").read_text())["data"]
    assert data["max_length_written"] == max_length
    share = data["lengths"]["train"]["truncated_share"]
    assert (share <= 0.01) if max_length == "auto" else share == 1.0
