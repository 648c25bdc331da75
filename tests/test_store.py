import numpy as np
import pytest

from sparsect.data.store import atomic_dir, load_array, save_array
from sparsect.errors import InputError


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        save_array(tmp, "x", np.arange(4))
    assert load_array(target, "x").tolist() == [0, 1, 2, 3]

    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        save_array(tmp, "x", np.zeros(4))
        raise RuntimeError("killed mid-way")
    # the old output survives and no temporary folder is left behind
    assert load_array(target, "x").tolist() == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_arrays_are_memory_mapped(tmp_path):
    save_array(tmp_path, "hu", np.ones((3, 4, 4), np.float32))
    assert isinstance(load_array(tmp_path, "hu"), np.memmap)


def test_missing_array_names_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.npy"):
        load_array(tmp_path, "missing")


def test_unwritable_output_is_explained(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="Cannot write output"), atomic_dir(blocker / "out"):
        pass


def test_folders_of_killed_writers_are_removed_by_the_next_run(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "out"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom sparsect.data.store import atomic_dir\n"
        "with atomic_dir(sys.argv[1]) as tmp:\n    (tmp / 'part').write_text('x')\n"
        "    time.sleep(60)\n"), str(target)])
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.tmp-*/part")) and time.time() < deadline:
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)  # no cleanup code runs
    writer.wait()
    (leftover,) = tmp_path.glob(".out.tmp-*")
    import os
    import socket

    # folders of live writers, and of other hosts sharing the file system, stay
    live = tmp_path / f".out.tmp-0000abcd-{os.getpid()}@{socket.gethostname()}"
    elsewhere = tmp_path / ".out.tmp-0000abcd-1@another-host"
    live.mkdir()
    elsewhere.mkdir()
    with atomic_dir(target) as tmp:
        save_array(tmp, "x", np.arange(2))
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name,
                                                                 elsewhere.name])


def test_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    import socket

    from sparsect.data.store import atomic_write_bytes

    dead = tmp_path / f".x.json.tmp-0000abcd-{2 ** 22 + 12345}@{socket.gethostname()}"
    dead.write_text("half")  # pid above the kernel's pid_max: no such process
    atomic_write_bytes(tmp_path / "x.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
