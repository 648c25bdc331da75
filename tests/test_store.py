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
