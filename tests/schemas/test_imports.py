"""``tether.schemas`` stands alone: a publisher in another process can validate events without the bus."""

from __future__ import annotations

import json
import subprocess
import sys

CHECK = """
import json, sys
import tether.schemas
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("nats", "aiohttp", "httpx", "tether"))))
"""


def test_importing_schemas_loads_neither_nats_nor_aiohttp() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(done.stdout)
    assert "tether.schemas" in loaded  # the check ran
    assert [m for m in loaded if m.split(".")[0] in ("nats", "aiohttp", "httpx")] == []
    assert [m for m in loaded if m.startswith("tether.") and not m.startswith("tether.schemas")] == []


def test_tether_still_offers_connect_and_bus_on_first_use() -> None:
    done = subprocess.run([sys.executable, "-c", "import tether, sys; assert 'nats' not in sys.modules; "
                           "from tether import Bus, connect; import tether.bus; "
                           "assert tether.connect is tether.bus.connect and tether.Bus is tether.bus.Bus; "
                           "assert 'nats' in sys.modules; print('ok')"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_long_running_commands_do_not_import_the_mcp_sdk() -> None:
    """The MCP SDK was about 40% of the start-up imports of `tether up`, `worker` and `gateway`, none
    of which serves MCP: a child process of the tests took over 40 s to start on a loaded machine.
    It is imported when `tether mcp` builds its server (tests/adapters/test_gateway_mcp.py)."""
    check = ("import sys, tether._config, tether.cli._up, tether.cli._reliability, tether.cli._gateway, "
             "tether.adapters.gateway; print(sorted({m.split('.')[0] for m in sys.modules} & {'mcp', 'mcp_types'}))")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
