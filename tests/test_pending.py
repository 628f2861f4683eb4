"""Undelivered notifications survive a restart through a small file; a damaged file is ignored."""

from __future__ import annotations

from pathlib import Path

from chargepoint.pending import save_pending, take_pending


def test_round_trip_keeps_order_and_filters(tmp_path: Path) -> None:
    path = tmp_path / "pending.json"
    save_pending(path, [("A", {"status": "x"}), ("B", {"n": 1}), ("A", {"status": "y"})], "test messages")
    assert take_pending(path, ["A"]) == [("A", {"status": "x"}), ("A", {"status": "y"})]
    assert not path.exists()  # taken once
    assert take_pending(path, ["A"]) == []


def test_nothing_to_keep_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pending.json"
    path.write_text("[]")
    save_pending(path, [], "test messages")
    assert not path.exists()


def test_damaged_file_is_ignored_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "pending.json"
    path.write_text("{not json")
    assert take_pending(path, ["A"]) == []
    assert not path.exists()
    path.write_text('[["A"], ["A", "no dict"], 5, ["A", {"ok": true}]]')
    assert take_pending(path, ["A"]) == [("A", {"ok": True})]


def test_unwritable_directory_is_logged_not_raised(tmp_path: Path, caplog) -> None:
    save_pending(tmp_path / "missing-dir" / "pending.json", [("A", {})], "test messages")
    assert "could not be saved" in caplog.text
