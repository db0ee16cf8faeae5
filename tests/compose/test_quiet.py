"""compose.quiet: library chatter stays off the terminal, and nothing a library changes inside the block outlives it."""

import contextlib
import logging

from compose.quiet import VERBOSE_ENV, library_chatter_off


@contextlib.contextmanager
def bare_root_logger():
    """The root logger as in a fresh process: no handlers (pytest's capture handlers taken off), level WARNING."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def test_a_basicconfig_inside_the_block_leaves_no_handler_and_no_level_behind(capfd, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    with bare_root_logger() as bare_root:
        check_basicconfig_is_undone(bare_root)
    assert capfd.readouterr().err == ""


def check_basicconfig_is_undone(bare_root):
    with library_chatter_off():
        logging.basicConfig(level=logging.INFO)  # what importing ONNX Runtime's MatMulNBits quantizer does
        logging.getLogger("onnxruntime.quantization").info("start to quantize node 1")
        logging.getLogger("onnxruntime.quantization").warning("please consider pre-processing")
    logging.getLogger("some.library").info("a later INFO line of another library")
    assert bare_root.handlers == [] and bare_root.level == logging.WARNING
    assert logging.root.manager.disable == logging.NOTSET


def test_errors_still_reach_the_terminal(capfd, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    with bare_root_logger() as bare_root, library_chatter_off():
        bare_root.addHandler(logging.StreamHandler())
        logging.getLogger("lib").error("the model file is corrupt")
    assert "the model file is corrupt" in capfd.readouterr().err


def test_stdout_chatter_is_dropped_only_when_asked(capsys, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    with library_chatter_off(stdout=True):
        print("GPTQModel banner")
    with library_chatter_off():
        print("kept")
    assert capsys.readouterr().out == "kept\n"


def test_verbose_lets_the_libraries_speak(capfd, monkeypatch):
    monkeypatch.setenv(VERBOSE_ENV, "1")
    with bare_root_logger() as bare_root, library_chatter_off(stdout=True):
        bare_root.addHandler(logging.StreamHandler())
        print("GPTQModel banner")
        logging.getLogger("lib").warning("a library warning")
    captured = capfd.readouterr()
    assert "GPTQModel banner" in captured.out and "a library warning" in captured.err
