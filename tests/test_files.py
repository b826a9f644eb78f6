"""The one atomic-write helper that the store, the query cache, exports, the divergence cache and
the model memos write through."""

import pytest

from quantbench.files import atomic_path, atomic_write_text


def test_the_target_appears_whole_and_no_temp_file_stays(tmp_path):
    target = tmp_path / "new" / "dir" / "out.txt"
    with atomic_path(target, durable=True) as tmp:
        tmp.write_text("all of it")
        assert not target.exists() and tmp.parent == target.parent and tmp.name.startswith(".")
    assert target.read_text() == "all of it"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_an_error_while_writing_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_rewrite_replaces_the_content(tmp_path):
    target = tmp_path / "memo.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
