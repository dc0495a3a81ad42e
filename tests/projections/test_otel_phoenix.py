"""tether's demo exported into a real Arize Phoenix, read back through Phoenix's own API.

Phoenix lives in ``.venv-phoenix``, built from ``requirements/phoenix.txt`` by ``tests/_envs.py``
(reused while the lock file is unchanged). The test starts ``phoenix serve`` on free loopback
ports with its working directory under ``tmp_path``, runs ``tether up --demo --runs 5`` into it
with content capture on, exports the same views again without content into a second project, and
checks what a Phoenix user sees: cost per call, error traces, content, project and sessions.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.projections import open_view
from tether.projections.otel import otel_available

from .._envs import optional_env

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not otel_available(), reason="needs the otel extra")]

TETHER = str(Path(sys.executable).with_name("tether"))
PROJECT, PLAIN = "tether-phoenix-test", "tether-phoenix-plain"
RUNS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.loads(reply.read())


def _graphql(base: str, query: str) -> Any:
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        answer = json.loads(reply.read())
    assert "errors" not in answer, answer["errors"]
    return answer["data"]


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Phoenix server of its own on loopback; its base URL."""
    env = optional_env("phoenix")
    print(f"\n.venv-phoenix: {'reused' if not env.build_s else f'built in {env.build_s:.1f} s'}")
    work = tmp_path_factory.mktemp("phoenix")
    port, grpc = _free_port(), _free_port()
    log = (work / "phoenix.log").open("w")
    process = subprocess.Popen(
        [str(env.bin("phoenix")), "serve"], cwd=work, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PHOENIX_WORKING_DIR": str(work), "PHOENIX_HOST": "127.0.0.1",
             "PHOENIX_PORT": str(port), "PHOENIX_GRPC_PORT": str(grpc), "PHOENIX_TELEMETRY_ENABLED": "false"})
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() - started > 180:
                    log.flush()
                    pytest.fail(f"phoenix serve did not come up (exit {process.poll()}): "
                                f"{(work / 'phoenix.log').read_text()[-3000:]}")
                time.sleep(0.5)
        print(f"phoenix serve up in {time.monotonic() - started:.1f} s")
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _spans(base: str, project: str) -> list[dict[str, Any]]:
    return list(_get(f"{base}/v1/projects/{project}/spans?limit=1000")["data"])


def _settled(base: str, project: str, expected_llm: int) -> list[dict[str, Any]]:
    """The project's spans once Phoenix has ingested them all (it queues what arrives)."""
    deadline, last = time.monotonic() + 60, -1
    while True:
        try:
            spans = _spans(base, project)
        except OSError:  # 404 until the project's first span is in
            spans = []
        llm = sum(s["span_kind"] == "LLM" for s in spans)
        roots = sum(s["parent_id"] is None for s in spans)
        if llm == expected_llm and roots == RUNS and len(spans) == last:
            return spans
        assert time.monotonic() < deadline, f"{project}: {llm} LLM spans of {expected_llm}, {roots} roots"
        last = len(spans)
        time.sleep(1)


def _tether(home: Path, *argv: str) -> str:
    done = subprocess.run([TETHER, *argv], env={**os.environ, "TETHER_HOME": str(home), "NO_COLOR": "1"},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"tether {' '.join(argv)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_demo_reads_right_in_phoenix(phoenix: str, tmp_path: Path) -> None:
    home = tmp_path / ".tether"
    said = _tether(home, "up", "--demo", "--runs", str(RUNS), "--interval", "0.2", "--otel-endpoint", phoenix,
                   "--otel-service-name", PROJECT, "--otel-capture-content")
    assert f"(service and project {PROJECT}, with prompts and results)" in said
    # the same spans again would be dropped (Phoenix keeps a span id once): a second demo, content off
    said = _tether(tmp_path / ".tether-plain", "up", "--demo", "--runs", str(RUNS), "--interval", "0.2",
                   "--otel-endpoint", phoenix, "--otel-service-name", PLAIN)
    assert f"(service and project {PLAIN}, without content)" in said

    runs = {r["run_id"]: r for r in json.loads(_tether(home, "runs", "--json"))}
    assert len(runs) == RUNS
    failed = {r for r, row in runs.items() if row["status"] == "error"}
    assert len(failed) == 1, "the demo's third run has a call dead-lettered"
    cost_db = open_view(home / "views", "cost")
    assert cost_db is not None
    with sqlite3.connect(f"file:{cost_db}?mode=ro", uri=True) as db:  # the ledger `tether cost` reads
        ledger = dict(db.execute("SELECT call_id, usd FROM calls WHERE priced = 1"))
    by_run = {r["run"]: r["usd"] for r in json.loads(_tether(home, "cost", "--by", "run", "--json"))["rows"]}
    llm_calls = sum(r["llm_calls"] for r in runs.values())
    plain_failed = {r["run_id"] for r in json.loads(_tether(tmp_path / ".tether-plain", "runs", "--status", "error",
                                                            "--json"))}

    spans = _settled(phoenix, PROJECT, llm_calls)
    plain = _settled(phoenix, PLAIN, llm_calls)

    # project: the service name; nothing in "default"
    projects = {p["node"]["name"]: p["node"] for p in _graphql(phoenix, "{ projects { edges { node { name traceCount "
                                                                        "} } } }")["projects"]["edges"]}
    assert projects[PROJECT]["traceCount"] == projects[PLAIN]["traceCount"] == RUNS
    assert projects.get("default", {"traceCount": 0})["traceCount"] == 0

    # cost: Phoenix's own price of each call, within 1 % of tether's, and per run of `tether cost`
    data = _graphql(phoenix, "{ projects { edges { node { name spans(first: 1000) { edges { node { spanKind "
                             "context { traceId spanId } costSummary { total { cost } } } } } } } } }")
    [node] = [p["node"] for p in data["projects"]["edges"] if p["node"]["name"] == PROJECT]
    costs = {s["node"]["context"]["spanId"]: s["node"]["costSummary"] for s in node["spans"]["edges"]}
    priced = 0
    per_trace: dict[str, float] = {}
    for span in spans:
        attributes = span["attributes"]
        call = attributes.get("tether.call.id")
        if span["span_kind"] != "LLM" or call not in ledger:
            continue
        summary = costs[span["context"]["span_id"]]
        assert summary is not None, f"Phoenix did not price {span['name']} ({attributes.get('llm.model_name')})"
        assert summary["total"]["cost"] == pytest.approx(ledger[call], rel=0.01), span["name"]
        per_trace[attributes["session.id"]] = per_trace.get(attributes["session.id"], 0.0) + summary["total"]["cost"]
        priced += 1
    assert priced == len(ledger) > 0
    assert per_trace == pytest.approx(by_run, rel=0.01)

    # errors: exactly the failed run's trace, and its banner says what failed
    assert len(plain_failed) == 1
    for project, sent in ((PROJECT, spans), (PLAIN, plain)):
        errors = _get(f"{phoenix}/v1/projects/{project}/traces?error=true&limit=100")["data"]
        ok = _get(f"{phoenix}/v1/projects/{project}/traces?error=false&limit=100")["data"]
        assert (len(errors), len(ok)) == (len(failed), RUNS - len(failed)), project
        [root] = [s for s in sent if s["parent_id"] is None and s["context"]["trace_id"] == errors[0]["trace_id"]]
        assert {root["attributes"]["tether.run.id"]} == (failed if project == PROJECT else plain_failed)
        assert root["status_code"] == "ERROR"
        assert root["status_message"].startswith("1 call dead-lettered: BadRequestError"), root["status_message"]
    assert not [s["name"] for s in spans if s["span_kind"] in ("UNKNOWN", "unknown")]

    # sessions: one per run (the demo's runs are separate conversations)
    sessions = _graphql(phoenix, '{ projects { edges { node { name sessions(first: 50) { edges { node { sessionId '
                                 '} } } } } } }')["projects"]["edges"]
    [mine] = [p["node"] for p in sessions if p["node"]["name"] == PROJECT]
    assert {s["node"]["sessionId"] for s in mine["sessions"]["edges"]} == set(runs)

    # content: there when asked for, not otherwise
    llm = [s["attributes"] for s in spans if s["span_kind"] == "LLM" and s["attributes"].get("tether.call.id")
           in ledger]
    assert all(a.get("llm.input_messages.0.message.content") for a in llm), "prompts, as Phoenix parsed them"
    assert all(a.get("llm.output_messages.0.message.content") for a in llm), "completions"
    tools = [s["attributes"] for s in spans if s["span_kind"] == "TOOL"]
    assert len(tools) == RUNS and all(json.loads(a["input.value"])["q"] for a in tools)
    agents = [s["attributes"] for s in spans if s["span_kind"] == "AGENT"]
    assert all(json.loads(a["input.value"])["question"] for a in agents)
    for span in plain:
        a = span["attributes"]
        content = [k for k in a if k.startswith(("llm.input_messages", "llm.output_messages", "input.",
                                                 "gen_ai.input", "gen_ai.output", "gen_ai.tool.call.a",
                                                 "gen_ai.tool.call.r", "tool.parameters"))]
        assert content == [], (span["name"], content)
        # Phoenix makes an output of the response model on its own: that is all there is
        assert set(json.loads(a.get("output.value", "{}"))) <= {"id", "model"}, span["name"]
