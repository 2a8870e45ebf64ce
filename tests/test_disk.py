"""The disk report counts each file once, however many names (hard links) it has."""

import os

from nectargan_core.reports.disk import DiskRow, disk_report, dvc_remote_folders, format_report

from .helpers import project_settings


def test_hard_links_count_once_in_the_total(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the project folder, as for `nectargan disk`: relative settings resolve here
    run = tmp_path / "outputs" / "train"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.pt").write_bytes(b"x" * 1000)
    cache = tmp_path / ".dvc" / "cache" / "files" / "md5" / "ab"
    cache.mkdir(parents=True)
    os.link(run / "checkpoints" / "latest.pt", cache / "cdef")  # DVC's hardlink cache entry
    (run / "snapshots").mkdir()
    (run / "snapshots" / "epoch_0001.pt").write_bytes(b"y" * 100)
    (tmp_path / ".dvc" / "config").write_text("[core]\n    remote = local\n['remote \"local\"']\n    url = ../store\n")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "blob").write_bytes(b"z" * 10)
    settings = project_settings({"train.output_dir": str(run), "tracking.uri": "http://127.0.0.1:9"})
    rows, total = disk_report(settings, tmp_path, [DiskRow("MLflow run a", "abc", 2, 5)])
    by_what = {row.what: row for row in rows}
    assert by_what["run: full state"].bytes == 1000 and by_what["DVC cache"].bytes == 1000
    assert by_what["run: snapshots"].files == 1 and by_what["DVC remote"].bytes == 10
    assert total == 1000 + 100 + 10 + 5  # the cache entry is the checkpoint, not a second copy
    assert dvc_remote_folders(tmp_path) == [(tmp_path / "store").resolve()]
    assert "total, hard links once" in format_report(rows, total)
