"""`sparsect recover`: the DVC state a hard kill leaves is repaired, and only that.

DVC rewrites ``.dvc/tmp/rwlock`` and ``dvc.lock`` in place; a kill between the
truncation and the write leaves them cut, and DVC then refuses every `dvc status` and
`dvc repro`. These tests build those states in a real DVC project and check that DVC
refuses them, that ``recover`` repairs them, that readable files are left alone, and
that nothing is touched while another DVC command runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import BIN, sh, tool_env

RECOVER = [sys.executable, "-m", "sparsect.cli", "recover"]
CORRUPT = "JSON structure is corrupted"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A real one-stage DVC project, run once."""
    env = tool_env(tmp_path)
    sh("git", "init", "-q", cwd=tmp_path)
    sh(str(BIN / "dvc"), "init", "-q", cwd=tmp_path, env=env)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  hello:\n    cmd: echo hello > out.txt\n    outs: [out.txt]\n")
    sh(str(BIN / "dvc"), "repro", cwd=tmp_path, env=env)
    return tmp_path


def dvc_status(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dvc"), "status"], cwd=project, env=tool_env(project),
                          capture_output=True, text=True, check=False)


def recover(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run(RECOVER, cwd=project, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("cut", ["", '{"read": {"out.txt": [{"pid": 1'])
def test_a_table_cut_mid_write_is_removed_and_dvc_runs_again(project, cut):
    table = project / ".dvc" / "tmp" / "rwlock"
    table.write_text(cut)
    refused = dvc_status(project)
    assert refused.returncode != 0 and CORRUPT in refused.stderr  # the state DVC cannot leave

    done = recover(project)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("removed .dvc/tmp/rwlock")
    assert f"({len(cut)} bytes)" in done.stdout
    assert not table.exists()
    status = dvc_status(project)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stderr
    assert "nothing to recover" in recover(project).stdout  # and a second call is a no-op


def test_a_readable_table_is_left_as_it_is(project):
    table = project / ".dvc" / "tmp" / "rwlock"
    entry = {"read": {"out.txt": [{"pid": 999_999_999, "cmd": "dvc repro"}]}}
    table.write_text(json.dumps(entry))  # stale, but DVC clears stale entries itself
    done = recover(project)
    assert done.returncode == 0 and "nothing to recover" in done.stdout, done.stderr
    assert json.loads(table.read_text()) == entry


def test_nothing_is_touched_while_another_dvc_command_runs(project):
    """A DVC command holds the repository lock while it runs; recover waits, then
    refuses in one sentence and leaves the table, however unreadable, alone."""
    from dvc.repo import Repo

    table = project / ".dvc" / "tmp" / "rwlock"
    table.write_text("")
    with Repo(str(project)) as repo, repo.lock:
        done = recover(project)
    assert done.returncode == 2 and done.stdout == ""
    message = done.stderr.strip()
    assert "Another DVC command is running" in message and "rerun sparsect recover" in message
    assert len(message.splitlines()) == 1
    assert table.exists() and table.read_text() == ""


def commit(project: Path) -> None:
    sh("git", "add", "dvc.yaml", "dvc.lock", ".gitignore", cwd=project)
    sh("git", "-c", "user.name=sparsect", "-c", "user.email=sparsect@localhost", "commit",
       "-q", "-m", "hello", cwd=project)


def cut_lockfile(project: Path) -> str:
    """dvc.lock cut inside a key, as a kill during DVC's rewrite leaves it."""
    lockfile = project / "dvc.lock"
    text = lockfile.read_text()
    cut = text[:text.index("md5:") + 2]
    lockfile.write_text(cut)
    return text


def test_a_cut_dvc_lock_is_put_back_from_git(project):
    commit(project)
    whole = cut_lockfile(project)
    refused = dvc_status(project)
    assert refused.returncode != 0 and "dvc.lock" in refused.stderr, refused.stdout

    done = recover(project)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("restored dvc.lock from git's last commit")
    assert (project / "dvc.lock").read_text() == whole
    assert [p.name for p in project.iterdir() if ".tmp-" in p.name] == []
    status = dvc_status(project)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stderr
    assert "nothing to recover" in recover(project).stdout


def test_a_cut_dvc_lock_git_never_saw_is_left_to_the_user(project):
    cut_lockfile(project)
    cut = (project / "dvc.lock").read_text()
    done = recover(project)
    assert done.returncode == 2 and done.stdout == ""
    assert "git has no committed copy" in done.stderr and "remove it" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert (project / "dvc.lock").read_text() == cut


def test_outside_a_dvc_project_recover_says_where_to_run(tmp_path):
    done = recover(tmp_path)
    assert done.returncode == 2 and "run from the sparsect project root" in done.stderr
