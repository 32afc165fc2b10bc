"""Download files: what they hold, unguessable folders, pruning that tolerates other requests."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import threading

import pytest
from scripted_engine import ScriptedEngine

from greedyscore import exports as exports_module
from greedyscore.exports import Exports
from greedyscore.service import Service
from greedyscore.types import Message, Settings


@pytest.fixture(scope="module")
def reply():
    return Service(ScriptedEngine({"hi": "Hello, \"world\"\n你好"})).chat([Message("user", "hi")], Settings(top_k=2))


def test_files_hold_the_reply(tmp_path, reply):
    j, c = Exports(tmp_path).write(reply)
    assert json.loads(open(j, encoding="utf-8").read()) == json.loads(json.dumps(reply.to_json()))
    rows = list(csv.DictReader(io.StringIO(open(c, encoding="utf-8").read())))
    assert [r["text"] for r in rows] == [t.text for t in reply.tokens]


def test_folder_names_are_unguessable(tmp_path, reply):
    ex = Exports(tmp_path)
    names = {os.path.basename(os.path.dirname(ex.write(reply)[0])) for _ in range(20)}
    assert len(names) == 20 and all(len(n) >= 22 for n in names)  # 16 random bytes, url-safe base64


def test_old_folders_go_and_a_folder_removed_meanwhile_is_no_error(tmp_path, reply, monkeypatch):
    """Two requests prune at once: one lists a folder, the other removes it first. The listing
    request must still write its own files (the reply was already computed)."""
    ex = Exports(tmp_path, ttl_s=60)
    old = os.path.dirname(ex.write(reply)[0])
    os.utime(old, (0, 0))  # an hour-old export
    listed = list(os.scandir(tmp_path))
    shutil.rmtree(old)  # ... pruned by the other request after we listed it
    monkeypatch.setattr(exports_module, "scandir", lambda path: iter(listed))
    j, c = ex.write(reply)
    assert os.path.isfile(j) and os.path.isfile(c)


def test_pruning_keeps_fresh_exports(tmp_path, reply):
    ex = Exports(tmp_path, ttl_s=60)
    old, fresh = (os.path.dirname(ex.write(reply)[0]) for _ in range(2))
    os.utime(old, (0, 0))
    ex.write(reply)
    assert not os.path.exists(old) and os.path.isdir(fresh)


def test_many_requests_export_at_once(tmp_path, reply):
    ex = Exports(tmp_path, ttl_s=60)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(30):
                folder = os.path.dirname(ex.write(reply)[0])
                os.utime(folder, (0, 0))  # immediately old: every other writer prunes it
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
