"""compose.stage: what a stage declares and receives, and the Dequantizable protocol the export stage honours."""

from compose.progress import Progress
from compose.stage import Dequantizable, StageContext


class Packed:
    def dequantized(self):
        return "float module"


def test_a_module_with_dequantized_is_dequantizable_and_others_are_not():
    assert isinstance(Packed(), Dequantizable)
    assert not isinstance(object(), Dequantizable)


def test_log_lines_name_the_stage(capsys):
    lines = []
    progress = Progress(enabled=False)
    progress.log = lines.append
    ctx = StageContext(
        name="prune",
        plugin="prune-heads",
        settings={},
        model=None,
        tokenizer=None,
        task=None,
        family="encoder",
        work_dir=None,
        seed=0,
        device=None,
        progress=progress,
        recipe={},
    )
    ctx.log("removing 4 heads")
    assert lines == ["[prune] removing 4 heads"]
