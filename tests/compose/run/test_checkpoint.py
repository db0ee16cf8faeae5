"""compose.run.checkpoint: in-stage checkpoints are written atomically and only resumed by their own stage."""

import copy

import pytest
import torch

from compose.run import checkpoint
from compose.run.checkpoint import Position


def training_state(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    extra = torch.nn.Linear(2, 2)
    params = list(model.parameters()) + list(extra.parameters())
    optimizer = torch.optim.AdamW(params, lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    for _ in range(3):  # some optimizer moments and schedule progress worth saving
        loss = extra(model(torch.randn(5, 4))).pow(2).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, extra, optimizer, scheduler


def same_tensors(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return a == b


def test_save_then_restore_gives_back_every_state(tmp_path):
    model, extra, optimizer, scheduler = training_state(0)
    folder = tmp_path / checkpoint.FOLDER
    torch.manual_seed(123)
    saved_rng = torch.get_rng_state()
    checkpoint.save(folder, "fp", Position(3, 1, 3, 0.25), model, [extra], optimizer, scheduler)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no .partial or .old left

    fresh_model, fresh_extra, fresh_optimizer, fresh_scheduler = training_state(1)
    assert not same_tensors(fresh_model.state_dict(), model.state_dict())
    torch.rand(10)  # the random state moves on
    rng = checkpoint.restore(folder, fresh_model, [fresh_extra], fresh_optimizer, fresh_scheduler)
    assert torch.equal(rng["cpu"], saved_rng)
    assert same_tensors(fresh_model.state_dict(), model.state_dict())
    assert same_tensors(fresh_extra.state_dict(), extra.state_dict())
    assert same_tensors(fresh_optimizer.state_dict(), optimizer.state_dict())
    assert fresh_scheduler.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"] == 3
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_only_the_stage_with_the_same_fingerprint_resumes(tmp_path):
    model, extra, optimizer, scheduler = training_state(0)
    folder = tmp_path / checkpoint.FOLDER
    assert checkpoint.find(folder, "fp") is None  # nothing saved yet
    checkpoint.save(folder, "fp", Position(4, 2, 1, None), model, [], optimizer, scheduler)
    assert checkpoint.find(folder, "fp") == Position(step=4, epoch=2, batches_in_epoch=1, last_loss=None)
    assert checkpoint.find(folder, "another stage or settings") is None
    assert checkpoint.find(folder, "") is None  # a stage without a fingerprint never resumes


def test_saving_again_replaces_the_checkpoint(tmp_path):
    model, extra, optimizer, scheduler = training_state(0)
    folder = tmp_path / checkpoint.FOLDER
    checkpoint.save(folder, "fp", Position(2, 1, 2, 0.5), model, [extra], optimizer, scheduler)
    later = copy.deepcopy(model)
    with torch.no_grad():
        later[0].weight.add_(1.0)
    checkpoint.save(folder, "fp", Position(4, 1, 4, 0.4), later, [extra], optimizer, scheduler)
    assert checkpoint.find(folder, "fp").step == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    checkpoint.restore(folder, model, [extra], optimizer, scheduler)
    assert torch.equal(model[0].weight, later[0].weight)


def test_a_save_that_fails_half_way_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, extra, optimizer, scheduler = training_state(0)
    folder = tmp_path / checkpoint.FOLDER
    checkpoint.save(folder, "fp", Position(2, 1, 2, 0.5), model, [extra], optimizer, scheduler)
    before = copy.deepcopy(model.state_dict())

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", killed)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(folder, "fp", Position(4, 1, 4, 0.4), model, [extra], optimizer, scheduler)
    monkeypatch.undo()
    partial = tmp_path / "checkpoint.partial"
    assert not partial.exists()  # what the interrupted save had written went with it
    assert checkpoint.find(folder, "fp").step == 2  # and the previous checkpoint is the one read
    checkpoint.restore(folder, model, [extra], optimizer, scheduler)
    assert same_tensors(model.state_dict(), before)
    checkpoint.save(folder, "fp", Position(6, 1, 6, 0.3), model, [extra], optimizer, scheduler)
    assert not partial.exists() and checkpoint.find(folder, "fp").step == 6


def test_a_partial_or_unreadable_checkpoint_is_not_resumed(tmp_path):
    partial = tmp_path / "checkpoint.partial"
    partial.mkdir()
    (partial / "meta.json").write_text(
        '{"fingerprint": "fp", "step": 9, "epoch": 1, "batches_in_epoch": 9, "last_loss": 0.1}'
    )
    assert checkpoint.find(tmp_path / "checkpoint", "fp") is None
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "meta.json").write_text('{"fingerprint": "fp", "st')  # cut off
    assert checkpoint.find(folder, "fp") is None


def test_remove(tmp_path):
    model, extra, optimizer, scheduler = training_state(0)
    folder = tmp_path / checkpoint.FOLDER
    checkpoint.save(folder, "fp", Position(1, 1, 1, 0.5), model, [], optimizer, scheduler)
    checkpoint.remove(folder)
    assert not folder.exists() and checkpoint.find(folder, "fp") is None
    checkpoint.remove(folder)  # nothing there: no error


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))],
)
def test_the_random_state_resumes_on_the_device_that_trains(tmp_path, device):
    """Dropout draws from the generator of the device it runs on."""
    model, extra, optimizer, scheduler = training_state(0)
    folder = tmp_path / checkpoint.FOLDER
    torch.rand(3, device=device)  # the generator is in use
    checkpoint.save(folder, "fp", Position(1, 1, 1, 0.5), model, [], optimizer, scheduler)
    expected = torch.nn.functional.dropout(torch.ones(64, device=device), 0.5)
    torch.rand(100, device=device)
    state = checkpoint.restore(folder, model, [], optimizer, scheduler)
    assert (state["cuda"] is not None) == (device == "cuda")
    checkpoint.set_random_state(state)
    assert torch.equal(torch.nn.functional.dropout(torch.ones(64, device=device), 0.5), expected)
