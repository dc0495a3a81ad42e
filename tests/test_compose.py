"""compose/ cannot run here (no Docker engine); check what can be checked without it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_compose_runs_jetstream_and_tether_up_against_it() -> None:
    text = (ROOT / "compose" / "docker-compose.yml").read_text()
    assert re.search(r"^  nats:\n", text, re.M) and re.search(r"^  tether:\n", text, re.M)
    assert '"-js"' in text
    assert 'command: ["tether", "up", "--demo"]' in text
    assert "TETHER_NATS_URL: nats://nats:4222" in text
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    assert "pip install" in dockerfile and "COPY tether" in dockerfile
