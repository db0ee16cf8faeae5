"""compose.evaluation.devices: batches move to the device whole, other values stay as they are."""

import torch

from compose.evaluation.devices import synchronize, to_device


def test_tensors_move_and_other_values_stay():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "ids": [4, 5], "texts": ("a", "b")}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["input_ids"].device.type == "cpu" and moved["ids"] == [4, 5] and moved["texts"] == ("a", "b")


def test_synchronizing_a_cpu_is_a_no_op():
    synchronize(torch.device("cpu"))
    synchronize("cpu")
