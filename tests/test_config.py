"""One model reads tether.toml (tether._config): every section, its errors, its JSON Schema."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tether._config import SCHEMA_FILE, TetherConfig, config_schema, export_config_schema, load_config
from tether.adapters.gateway import GatewaySection
from tether.memory import InvalidMemory, MemorySection, load_settings
from tether.middleware import (
    ELSEWHERE,
    FallbackPolicy,
    PolicyConfigError,
    RetryPolicy,
    WorkerFile,
    WorkerSection,
    load_worker_config,
)

ROOT = Path(__file__).resolve().parents[1]


def refused(tmp_path: Path, text: str) -> PolicyConfigError:
    file = tmp_path / "tether.toml"
    file.write_text(text)
    with pytest.raises(PolicyConfigError) as caught:
        load_config(file)
    assert str(caught.value).startswith(f"{file}: "), "every line names the file"
    return caught.value


def test_one_model_has_every_section_and_the_worker_skips_only_the_others() -> None:
    assert set(TetherConfig.model_fields) == {"routes", "rate_limits", "budgets", "runaway", "providers", "worker",
                                              "gateway", "memory", "resume"}
    assert set(TetherConfig.model_fields) - set(WorkerFile.model_fields) == set(ELSEWHERE)


def test_no_file_gives_the_defaults_of_every_section(tmp_path: Path) -> None:
    config, source = load_config(cwd=tmp_path)
    assert source is None
    assert config.gateway == GatewaySection() and config.memory == MemorySection()
    assert config.worker == WorkerSection() and config.worker_config().policies.policy_for("a:b").retry == RetryPolicy()


@pytest.mark.parametrize(("text", "path", "hint"), [
    ("[routs]\n", "routs", "did you mean 'routes'?"),
    ('[routes."*"]\ntimeout = 5\n', 'routes."*".timeout', "did you mean 'timeout_s'?"),
    ('[routes."openai:*".breaker]\nstreak = 5\n', 'routes."openai:*".breaker.streak', "did you mean 'failure_streak'?"),
    ('[routes."openai:*".breaker]\nopen = 5\n', 'routes."openai:*".breaker.open', "known keys: cooldown_s, enabled,"),
    ("[rate_limits.openai]\nrpm = 5\n", "rate_limits.openai.rpm", "known keys: requests_per_minute"),
    ("[budgets.team]\n", "budgets.team", "did you mean 'tenant'?"),
    ("[budgets.user]\n", "budgets.user", "known keys: agent, run, tenant"),
    ('[budgets.run."*"]\ndollars = 1\n', 'budgets.run."*".dollars', "known keys: calls, tokens, usd"),
    ("[runaway]\nmax_calls = 1\n", "runaway.max_calls", "did you mean 'max_calls_per_run'?"),
    ('[providers.openai]\nkind = "openai"\nbase = "x"\n', "providers.openai.base", "did you mean 'base_url'?"),
    ("[worker]\nconcurency = 4\n", "worker.concurency", "did you mean 'concurrency'?"),
    ("[gateway]\nprot = 1\n", "gateway.prot", "did you mean 'port'?"),
    ("[memory]\nmax_txt = 1\n", "memory.max_txt", "did you mean 'max_text_bytes'?"),
    ("[memory]\ncolour = 1\n", "memory.colour",
     "known keys: dedupe, embedder, grants, key_store, keyfile, max_text_bytes, view_dir"),
    ('[memory.grants]\nbot = { reed = ["x"] }\n', "memory.grants.bot.reed", "did you mean 'read'?"),
])
def test_an_unknown_key_at_any_level_is_refused_with_its_path_and_what_is_allowed(
        tmp_path: Path, text: str, path: str, hint: str) -> None:
    error = refused(tmp_path, text)
    assert error.path == path
    assert error.problem.startswith("unknown key") and hint in error.problem


@pytest.mark.parametrize(("text", "path", "problem"), [
    ('[routes."*"]\ntimeout_s = "60"\n', 'routes."*".timeout_s', "expected a number, got a string"),
    ('[routes."*".retry]\nmax_attempts = 2.5\n', 'routes."*".retry.max_attempts', "expected an integer, got a number"),
    ('[routes."*".fallback]\ntargets = "openai:x"\n', 'routes."*".fallback.targets', "expected an array"),
    ('[providers.openai]\nkind = "mistral"\n', "providers.openai.kind",
     "must be one of 'openai', 'anthropic' or 'gemini', got 'mistral'"),
    ('[providers.openai]\nheaders = { x = 1 }\n', "providers.openai.headers.x", "expected a string, got an integer"),
    ('[worker]\nconcurrency = "64"\n', "worker.concurrency", "expected an integer, got a string"),
    ('[worker]\ntools = "myapp.tools"\n', "worker.tools", "expected an array, got a string"),
    ('[gateway]\nport = "8400"\n', "gateway.port", "expected an integer, got a string"),
    ('[gateway]\ncapture = "yes"\n', "gateway.capture", "expected true or false, got a string"),
    ("[gateway]\nmax_body_mb = true\n", "gateway.max_body_mb", "expected a number, got a boolean"),
    ('[memory]\nmax_text_bytes = "32k"\n', "memory.max_text_bytes", "expected an integer, got a string"),
    ("[memory]\nview_dir = 5\n", "memory.view_dir", "expected a string, got an integer"),
    ("[memory]\ngrants = 3\n", "memory.grants", "must be a table, got an integer"),
    ('[memory]\nkey_store = "s3"\n', "memory.key_store", "must be one of 'file' or 'nats', got 's3'"),
    ("gateway = 3\n", "gateway", "must be a table, got an integer"),
])
def test_a_wrong_type_is_refused_with_its_path(tmp_path: Path, text: str, path: str, problem: str) -> None:
    error = refused(tmp_path, text)
    assert (error.path, error.problem) == (path, problem) or (error.path == path and problem in error.problem)


@pytest.mark.parametrize(("text", "path", "problem"), [
    ('[routes."*"]\ndeadline_s = -1\n', 'routes."*".deadline_s', "must be positive, got -1, or false for none"),
    ("[worker]\nconcurrency = 0\n", "worker.concurrency", "must be at least 1, got 0"),
    ("[gateway]\nport = 70000\n", "gateway.port", "must be at most 65535, got 70000"),
    ("[gateway]\nretry_after_s = -1\n", "gateway.retry_after_s", "must not be negative, got -1"),
    ("[memory]\nmax_text_bytes = 0\n", "memory.max_text_bytes", "must be at least 1, got 0"),
    ("[memory]\nmax_text_bytes = 600000\n", "memory.max_text_bytes", "must be at most 524288, got 600000"),
    ('[memory.grants]\nbot = { read = [""] }\n', "memory.grants.bot.read[0]", "must not be empty"),
    ('[providers.openai]\napi_key = "sk-..."\n', "providers.openai", "the key itself never goes in the file"),
])
def test_an_out_of_range_value_is_refused_with_its_path(tmp_path: Path, text: str, path: str, problem: str) -> None:
    error = refused(tmp_path, text)
    assert error.path == path and problem in error.problem


def test_every_problem_is_reported_at_once_each_where_it_was_written(tmp_path: Path) -> None:
    error = refused(tmp_path, '[routes."*".retry]\nmax_attempts = 0\n[routes."openai:gpt-4o"]\ntimeout_s = 5\n'
                              "[worker]\nconcurrency = 0\n[memory]\ndedupe = 1\n")
    file = tmp_path / "tether.toml"
    assert str(error).splitlines() == [
        f'{file}: routes."*".retry.max_attempts: must be at least 1, got 0',  # once, though two routes inherit it
        f"{file}: worker.concurrency: must be at least 1, got 0",
        f"{file}: memory.dedupe: expected true or false, got an integer",
    ]
    assert [path for path, _ in error.problems] == ['routes."*".retry.max_attempts', "worker.concurrency",
                                                    "memory.dedupe"]


def test_the_parts_read_their_sections_with_the_same_models(tmp_path: Path) -> None:
    file = tmp_path / "tether.toml"
    file.write_text("[memory]\nmax_text_bytes = 0\n")
    with pytest.raises(InvalidMemory, match=re.escape(f"{file}: memory.max_text_bytes: must be at least 1, got 0")):
        load_settings(file)
    assert load_worker_config(file).source == str(file), "the worker leaves [memory] to memory"
    file.write_text("[gateway]\nport = 1\n[worker]\nconcurrency = 3\n[memory]\ndedupe = false\n")
    config, _ = load_config(file)
    assert (config.gateway.port, config.worker.concurrency, config.memory.dedupe) == (1, 3, False)
    assert load_worker_config(file).concurrency == 3 and load_settings(file).dedupe is False


# -- the JSON Schema ------------------------------------------------------------------------------


def _doc_blocks() -> list[tuple[str, str]]:
    found = []
    for doc in ("reliability.md", "gateway.md", "memory.md", "configuration.md"):
        text = (ROOT / "docs" / doc).read_text()
        found += [(f"{doc}[{i}]", block) for i, block in enumerate(re.findall(r"```toml\n(.*?)```", text, re.S))]
    return found


def test_the_schema_accepts_every_documented_config_and_refuses_what_the_model_refuses() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = config_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    blocks = _doc_blocks()
    assert len(blocks) >= 6
    for name, block in blocks:
        data = tomllib.loads(block)
        assert not list(validator.iter_errors(data)), name
        TetherConfig.model_validate(data)
    for bad in ({"routs": {}}, {"routes": {"*": {"retry": {"max_atempts": 1}}}}, {"worker": {"concurrency": 0}},
                {"gateway": {"port": "80"}}, {"memory": {"grants": {"a": {"reed": []}}}},
                {"routes": {"*": {"deadline_s": True}}}, {"routes": {"gpt-4o": {}}}, {"routes": {"openai:gpt-*": {}}}):
        assert list(validator.iter_errors(bad)), bad
    assert list(validator.iter_errors({"routes": {"*": {"deadline_s": False}}})) == [], "false: no deadline"


def test_the_schema_carries_the_models_defaults_and_no_null() -> None:
    schema = config_schema()
    text = json.dumps(schema)
    assert "null" not in text, "TOML has no null: an unset option is an absent key"
    retry = schema["$defs"]["RetryPolicy"]["properties"]
    assert retry["max_attempts"]["default"] == RetryPolicy().max_attempts
    assert schema["properties"]["worker"]["default"]["concurrency"] == WorkerSection().concurrency
    assert schema["$defs"]["GatewaySection"]["properties"]["port"]["default"] == GatewaySection().port
    assert schema["$defs"]["MemorySection"]["properties"]["max_text_bytes"]["default"] == 32 * 1024
    assert schema["$defs"]["RetryPolicy"]["additionalProperties"] is False
    assert schema["$defs"]["FallbackPolicy"]["properties"]["on"]["default"] == sorted(FallbackPolicy().on), (
        "a set's default in order: the export does not change from one run to the next")
    assert "``" not in text and ":attr:" not in text, "descriptions in Markdown, as editors show them"


def test_export_writes_the_schema_file_that_a_directive_names(tmp_path: Path) -> None:
    path = export_config_schema(tmp_path / "schemas")
    assert path == tmp_path / "schemas" / SCHEMA_FILE
    assert json.loads(path.read_text()) == json.loads(json.dumps(config_schema()))
    file = tmp_path / "tether.toml"
    file.write_text("#:schema ./schemas/tether-config.json\n[worker]\nconcurrency = 8\n")  # as docs/configuration.md
    assert load_config(file)[0].worker.concurrency == 8


# -- what users run -------------------------------------------------------------------------------


def _tether(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_HOME=str(cwd / "home"), NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "tether", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_worker_refuses_a_bad_key_in_any_section_of_the_file(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text("[memory]\nmax_txt = 1\n")
    done = _tether("worker", "--url", "nats://127.0.0.1:1", cwd=tmp_path)
    assert done.returncode == 2
    assert f"tether worker: {tmp_path / 'tether.toml'}: memory.max_txt: unknown key" in done.stderr
    assert "Traceback" not in done.stderr


def test_memory_commands_refuse_a_bad_key_in_any_section_of_the_file(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text("[gateway]\nprot = 1\n")
    done = _tether("memory", "get", "user:ann", "k", "--url", "nats://127.0.0.1:1", cwd=tmp_path)
    assert done.returncode == 2
    assert "gateway.prot: unknown key (did you mean 'port'?)" in done.stderr and "Traceback" not in done.stderr


def test_schemas_export_writes_the_config_schema_beside_the_event_schemas(tmp_path: Path) -> None:
    done = _tether("schemas", "export", "schemas", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "schemas" / SCHEMA_FILE).read_text()) == json.loads(json.dumps(config_schema()))
    assert (tmp_path / "schemas" / "envelope.json").is_file()
    assert SCHEMA_FILE in done.stdout


