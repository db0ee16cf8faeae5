"""The exit codes are defined once; the help text and the README's table follow them."""

import re
from pathlib import Path

from compose.cli.main import build_parser, main
from compose.exit_codes import EXIT_INTERNAL, EXIT_STAGE_FAILED, MEANINGS

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_exit_code_is_in_the_help_and_the_readme():
    help_text = build_parser().format_help()
    table = README.read_text(encoding="utf-8").split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, flags=re.M)}
    assert documented == {code for code, _ in MEANINGS}
    for code, meaning in MEANINGS:
        assert f"{code:<3} {meaning}" in help_text


def test_an_internal_error_has_its_own_exit_code(monkeypatch, capsys):
    assert EXIT_INTERNAL != EXIT_STAGE_FAILED
    import compose.cli.validate as validate

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(validate, "run", broken)
    parser_main = main(["validate", "recipes/minilm-sst2.yaml"])
    assert parser_main == EXIT_INTERNAL
    assert "internal error: RuntimeError: a bug" in capsys.readouterr().err
