"""compose.run.distributed outside a launcher: one process, which is the main one, and gathering returns its own."""

import torch

from compose.run.distributed import Ranks, current_ranks, gather_objects, init_ranks, launched_world_size


def test_a_single_process_is_main_and_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_world_size() == 1
    ranks = init_ranks(torch.device("cpu"))
    assert ranks == Ranks() and ranks.is_main and not ranks.distributed
    assert current_ranks() == Ranks()


def test_gathering_in_one_process_returns_its_object():
    assert gather_objects({"digest": "abc"}) == [{"digest": "abc"}]


def test_several_ranks_know_which_is_main():
    assert Ranks(rank=1, world_size=2).distributed and not Ranks(rank=1, world_size=2).is_main
