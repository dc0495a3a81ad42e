"""``tether gateway`` as a process, as users run it (``python -m tether gateway``, on its default loop: uvloop):
configuration from tether.toml, serving, a clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tether.adapters.gateway import digest
from tether.cli._gateway import new_key
from tether.testing import NatsServer
from tether.testing.fake_provider import FakeProvider

pytestmark = pytest.mark.nats


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(seed=2) as provider:
        yield provider


def gateway_process(config: Path, nats: NatsServer, home: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}  # TETHER_EVENT_LOOP too
    env.update(TETHER_HOME=str(home), UPSTREAM_KEY="sk-upstream-cli-0123456789")
    errors = (home.parent / "gateway.err").open("w")  # a file: a full stderr pipe would block the gateway
    return subprocess.Popen([sys.executable, "-m", "tether", "gateway", "--url", nats.url, "--config", str(config),
                             "--port", "0", *extra], env=env, stdout=subprocess.PIPE, stderr=errors, text=True)


def test_serves_until_sigterm(fake: FakeProvider, nats_server: NatsServer, tmp_path: Path) -> None:
    key = new_key()
    config = tmp_path / "tether.toml"
    config.write_text(f'[providers.openai]\nkind = "openai"\nbase_url = "{fake.url}"\napi_key_env = "UPSTREAM_KEY"\n\n'
                      f'[gateway]\ndefault_provider = "openai"\n\n[gateway.keys]\n"sha256:{digest(key)}" = "cli-bot"\n')
    child = gateway_process(config, nats_server, tmp_path / "home")
    try:
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first.startswith("gateway listening on http://127.0.0.1:"), (tmp_path / "gateway.err").read_text()
        url = first.split()[3].rstrip(":")
        lines = [child.stdout.readline() for _ in range(3)]
        assert "openai (openai)" in lines[0] and "1 gateway key(s)" in lines[2]
        answer = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                            json={"model": f"gpt-cli-{key[-6:]}", "messages": [{"role": "user", "content": "hi"}]},
                            timeout=30)  # a model of its own: breakers are shared through the session's KV
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
        assert httpx.get(url + "/healthz").json()["nats"] is True
        child.send_signal(signal.SIGTERM)
        assert child.wait(15) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        if child.stdout is not None:
            child.stdout.close()
    assert len(fake.log) == 1
    assert "Traceback" not in (tmp_path / "gateway.err").read_text()


def test_configuration_error_exits_2(nats_server: NatsServer, tmp_path: Path) -> None:
    config = tmp_path / "tether.toml"
    config.write_text('[gateway]\ndefault_provider = "missing"\n')
    child = gateway_process(config, nats_server, tmp_path / "home")
    child.communicate(timeout=30)
    assert child.returncode == 2 and "gateway.default_provider" in (tmp_path / "gateway.err").read_text()


def test_new_key(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tether", "gateway", "--new-key", "--agent", "openclaw-main"],
                          capture_output=True, text=True, timeout=30, check=True)
    key = done.stdout.splitlines()[0]
    assert key.startswith("tg-") and len(key) == 35
    assert f'"sha256:{digest(key)}" = "openclaw-main"' in done.stdout
    toml = done.stdout.split("\n\n", 1)[1]
    (tmp_path / "tether.toml").write_text(toml)
    from tether.adapters.gateway import load_gateway_config

    assert load_gateway_config(tmp_path / "tether.toml").keys == {digest(key): "openclaw-main"}


@pytest.mark.anyio
async def test_start_in_up(nats_server: NatsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What `tether up --gateway-port` calls: the gateway on up's bus, None after a configuration error."""
    from tether.bus import connect
    from tether.cli._gateway import start_in_up

    config = tmp_path / "tether.toml"
    config.write_text('[providers.openai]\nkind = "openai"\n\n[gateway.keys]\n"tg-abcdef" = "bot"\n')
    async with await connect(nats_server.url, home=tmp_path / "home") as bus:
        server = await start_in_up(bus, config, host="127.0.0.1", port=0)
        assert server is not None
        try:
            async with httpx.AsyncClient() as http:
                assert (await http.get(server.url + "/healthz")).json()["providers"] == ["openai"]
        finally:
            await server.stop()
        assert "gateway listening on" in capsys.readouterr().out
        config.write_text('[gateway]\nport = "x"\n')
        assert await start_in_up(bus, config, host=None, port=0) is None
        assert "gateway.port" in capsys.readouterr().err
