"""Where models come from: the conversion cache is keyed on the GGUF's content, not its path."""

from __future__ import annotations

import shutil

import pytest

from greedyscore.models import EMBEDDED_NAME, cache_dir, content_key, converted_dir, embedded_gguf


def test_a_copy_of_the_same_gguf_finds_the_conversion_done(tmp_path, monkeypatch):
    """A second checkout (another install path, another mtime) must not convert again (~25 s)."""
    original = embedded_gguf()
    done = converted_dir(original, EMBEDDED_NAME)  # converted once per machine (the tests' engine did it)
    copy = tmp_path / "elsewhere" / original.name
    copy.parent.mkdir()
    shutil.copyfile(original, copy)  # new path, new mtime
    assert content_key(copy) == content_key(original)

    def no_conversion(*_):
        pytest.fail("converted the same GGUF again")

    monkeypatch.setattr("greedyscore.models._convert", no_conversion)
    assert converted_dir(copy, EMBEDDED_NAME) == done
    assert done.parent == cache_dir()


def test_a_different_file_gets_a_different_key(tmp_path):
    original = embedded_gguf()
    head = tmp_path / "changed-header.gguf"
    shutil.copyfile(original, head)
    with head.open("r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    tail = tmp_path / "changed-tail.gguf"
    shutil.copyfile(original, tail)
    with tail.open("r+b") as f:
        f.seek(-10, 2)
        byte = f.read(1)
        f.seek(-10, 2)
        f.write(bytes([byte[0] ^ 1]))
    keys = {content_key(original), content_key(head), content_key(tail)}
    assert len(keys) == 3
    small = tmp_path / "small.bin"
    small.write_bytes(b"abc")
    assert content_key(small) != content_key(tmp_path / "changed-tail.gguf")


def test_a_transformers_older_than_the_pin_is_refused_with_what_to_install(monkeypatch):
    """Before 5.24 the KV cache keyword was `past_key_values`: the engine's `cache=` would be
    ignored and cached steps scored without their context (seen with 5.17), so load refuses."""
    import re
    from pathlib import Path

    import transformers

    from greedyscore.engines.transformers import MIN_TRANSFORMERS, TransformersEngine, check_transformers
    from greedyscore.errors import EngineUnavailable

    pin = re.search(r"^transformers>=([\d.]+)", (Path(__file__).parents[1] / "requirements-common.txt").read_text(),
                    re.M)
    assert pin and pin.group(1) == MIN_TRANSFORMERS  # the refusal follows the requirement
    check_transformers()  # the installed one passes
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    with pytest.raises(EngineUnavailable, match=r"needs transformers >= 5.24, found 5.17.0: pip install"):
        TransformersEngine.load(None, device="cpu")
