"""Shared fixtures: one real embedded model for the whole session (loading takes ~2 s)."""

from __future__ import annotations

import pytest

from greedyscore.engines.transformers import TransformersEngine
from greedyscore.service import Service


@pytest.fixture(scope="session")
def engine() -> TransformersEngine:
    return TransformersEngine.load(None, device="cpu")


@pytest.fixture(scope="session")
def service(engine: TransformersEngine) -> Service:
    return Service(engine)
