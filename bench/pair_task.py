"""A sentence-pair task built from SST-2, for checking that recipes carry to data they were not written for.

    python bench/pair_task.py OUT_DIR [--train 4000 --dev 800]

Writes OUT_DIR/train.tsv and OUT_DIR/dev.tsv: pairs of SST-2 sentences labelled 1 when both
have the same sentiment, in MRPC's layout (columns ``#1 String``, ``#2 String``,
``Quality``), and OUT_DIR/pair-task.yaml: the default recipe (recipes/minilm-sst2.yaml)
moved to this task by changing only the data, the columns, the labels, the metric (F1 of
"same") and ``max_length: auto``. Train pairs come from SST-2's training sentences (whole
sentences of 6 words or more, not its phrases), dev pairs from its dev sentences, so the
two never share a sentence. Read from ../shared/data/sst2 (or --sst2); nothing is written
into the repository.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def sentences(path: Path, min_words: int) -> list[tuple[str, str]]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:] if "\t" in line]
    texts = [(text.strip(), label.strip()) for text, label in rows if len(text.split()) >= min_words]
    inner = set()
    for text, _ in texts:  # SST-2's train file holds phrases of its sentences as rows: keep whole sentences
        words = text.split()
        inner |= {
            " ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1) if j - i < len(words)
        }
    return [(text, label) for text, label in dict.fromkeys(texts) if text not in inner]


def pairs(pool: list[tuple[str, str]], count: int, seed: int) -> list[tuple[str, str, int]]:
    rng = random.Random(seed)
    found = []
    for _ in range(count):
        (a, la), (b, lb) = rng.sample(pool, 2)
        found.append((a, b, int(la == lb)))
    return found


RECIPE = """\
# recipes/minilm-sst2.yaml moved to a sentence-pair task (bench/pair_task.py wrote the data beside this file):
# only the data, the columns, the labels, the metric and max_length changed.
extends: {base}
task:
  data:
    train: {{path: train.tsv}}
    dev: {{path: dev.tsv}}
  text_column: '#1 String'
  text_pair_column: '#2 String'
  label_column: Quality
  labels: {{0: different, 1: same}}
  metric: f1
  max_length: auto
"""


def write(out: Path, train: int = 4000, dev: int = 800, sst2: Path = SST2, seed: int = 0) -> Path:
    """Write the task's data and recipe into ``out``; the recipe's path."""
    out.mkdir(parents=True, exist_ok=True)
    header = "#1 String\t#2 String\tQuality\n"
    for name, source, count in (("train", sst2 / "train.tsv", train), ("dev", sst2 / "dev.tsv", dev)):
        rows = pairs(sentences(source, 6), count, seed + (name == "dev"))
        (out / f"{name}.tsv").write_text(header + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows), encoding="utf-8")
    recipe = out / "pair-task.yaml"
    recipe.write_text(RECIPE.format(base=ROOT / "recipes" / "minilm-sst2.yaml"), encoding="utf-8")
    return recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--dev", type=int, default=800)
    parser.add_argument("--sst2", type=Path, default=SST2)
    args = parser.parse_args()
    print(write(args.out, args.train, args.dev, args.sst2))


if __name__ == "__main__":
    main()
