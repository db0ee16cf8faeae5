"""compose.run.interrupts: a signal's request survives code that drops its KeyboardInterrupt; named pause points."""

import os
import signal
import subprocess
import sys
import time

import pytest

from compose.run import interrupts
from compose.testing import HANG_S


def test_without_a_signal_points_and_checks_do_nothing():
    with interrupts.handling_signals():
        interrupts.point("a/step 1")
        interrupts.check()
        assert interrupts.received() is None


def test_a_dropped_keyboard_interrupt_is_raised_again_at_the_next_point():
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN where the runner was started so
    with interrupts.handling_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # the handler runs at the next bytecode boundary
                pass
        except KeyboardInterrupt:
            pass  # dropped, as a careless library would
        assert interrupts.received() == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            interrupts.point("b/step 3")
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        with interrupts.stopping():
            interrupts.point("run/stopping")  # while stopping, points do not raise again
    assert signal.getsignal(signal.SIGINT) == before  # restored after the block


def test_a_second_signal_ends_the_process_at_once_with_130():
    code = (
        "import os, signal, time\n"
        "from compose.run import interrupts\n"
        "with interrupts.handling_signals():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
        "    except KeyboardInterrupt:\n"
        "        with interrupts.stopping():\n"
        "            os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
        "            print('cleanup finished')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 130
    assert "SIGINT again: stopping now" in done.stderr and "cleanup finished" not in done.stdout


def test_a_run_pauses_once_at_the_first_point_matching_each_pattern(tmp_path):
    flag = tmp_path / "paused"
    code = (
        "import signal, sys\n"
        "from compose.run import interrupts\n"
        "with interrupts.handling_signals():\n"
        "    for step in range(1, 6):\n"
        "        try:\n"
        "            interrupts.point(f'a/step {step}')\n"
        "        except KeyboardInterrupt:\n"
        "            print('stopped at', step); sys.exit(130)\n"
    )
    env = {**os.environ, interrupts.PAUSE_AT_ENV: "a/step [3-9]", interrupts.PAUSE_FILE_ENV: str(flag)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    while not flag.exists():
        assert child.poll() is None, "the process ended before it paused"
        time.sleep(0.01)
    name, pid = flag.read_text().split("\n")[:2]
    assert (name, int(pid)) == ("a/step 3", child.pid)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=HANG_S)
    assert child.returncode == 130 and out.strip() == "stopped at 3"
