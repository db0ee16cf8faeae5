"""compose.errors: the machine's faults in words that name the path and the fix; other errors unchanged."""

import errno
import os

import pytest

from compose.errors import DiskFull, MachineFault, OutOfMemory, explain_failure, file_fault_message


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_names_the_file_and_says_finished_stages_are_kept(code):
    message = file_fault_message(OSError(code, os.strerror(code), "/runs/x/stages/02-b/model.safetensors"))
    assert "/runs/x/stages/02-b/model.safetensors" in message and "finished stages are kept" in message
    assert isinstance(explain_failure(OSError(code, "x", "/f")), DiskFull)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS, errno.ENOTDIR, errno.ENAMETOOLONG])
def test_other_file_faults_are_machine_faults_naming_the_path(code):
    fault = explain_failure(OSError(code, os.strerror(code), "/runs/x/report.json"))
    assert isinstance(fault, MachineFault) and "/runs/x/report.json" in str(fault)


def test_an_os_error_told_only_in_a_library_message_is_recognised():
    fault = explain_failure(RuntimeError("Error while serializing: IoError(No space left) (os error 28)"))
    assert isinstance(fault, DiskFull)


def test_memory_errors_say_what_to_lower():
    assert "batch_size" in str(explain_failure(MemoryError("cannot allocate")))
    assert isinstance(explain_failure(MemoryError()), OutOfMemory)


def test_anything_else_is_left_as_it_was():
    error = ValueError("a bug")
    assert explain_failure(error) is error
    assert file_fault_message(OSError(errno.EIO, "I/O error")) is None
