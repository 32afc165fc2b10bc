"""tests/shape.py (issue 22's bars, measured) flags what it is meant to and nothing else."""

from __future__ import annotations

from shape import measure


def test_shape_flags_long_functions_big_classes_big_modules_and_engine_probes(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "engines").mkdir(parents=True)
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    methods = "\n".join(f"    def m{i}(self):\n        pass" for i in range(16))
    (pkg / "long.py").write_text(f"def long():\n{body}\n\n\ndef short():\n    pass\n")
    (pkg / "big.py").write_text(f"class Big:\n{methods}\n\n\nclass Small:\n    def a(self):\n        pass\n")
    (pkg / "probe.py").write_text("def f(self, engine):\n    engine.drift = 1\n    return hasattr(self.engine, 'x')\n")
    (pkg / "engines" / "lmdeploy.py").write_text("def g(engine):\n    return getattr(engine, 'hf_cfg', None)\n")
    (pkg / "huge.py").write_text("x = 1\n" * 401)
    misses, total = measure(pkg)
    text = "\n".join(misses)
    assert "function long of 62 lines" in text and "short" not in text
    assert "class Big with 16 methods" in text and "Small" not in text
    assert "probe.py:2" in text and "probe.py:3" in text and "lmdeploy.py" not in text  # lmdeploy's own engine
    assert "huge.py: module of 402 lines" in text
    assert len(misses) == 5 and total > 400


def test_the_package_meets_every_bar():
    """What `make lint` checks, kept by the suite too: a new long function or a probed engine fails here."""
    misses, _ = measure()
    assert misses == []
