"""Policies: defaults, per-route lookup, budgets, and the config file with exact error paths."""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tether.middleware import (
    BreakerPolicy,
    BudgetLimits,
    FallbackPolicy,
    Policy,
    PolicyConfigError,
    PolicySet,
    RateLimitPolicy,
    RetryPolicy,
    RunawayGuard,
    Target,
    _policy,
    load_policies,
)

# -- dataclasses -----------------------------------------------------------------------


def test_defaults() -> None:
    policy = Policy()
    assert policy.retry == RetryPolicy(3, 0.25, 20.0, frozenset({408, 409, 425, 429, 500, 502, 503, 504}))
    assert (policy.timeout_s, policy.deadline_s, policy.max_total_attempts) == (60.0, 300.0, None)
    assert policy.breaker == BreakerPolicy(True, 5, 0.5, 10, 20, 30.0)
    assert policy.fallback.targets == ()
    assert policy.fallback.on == {"rate_limit", "server_error", "timeout", "connection", "breaker_open"}
    assert (policy.fallback.max_fallbacks, policy.fallback.after_retry_after_s) == (2, 5.0)
    assert policy.rate_limit == RateLimitPolicy(None, None)
    assert RunawayGuard() == RunawayGuard(500, 5)
    assert BudgetLimits() == BudgetLimits(None, None, None)


def test_total_attempts_is_shared_across_the_chain() -> None:
    assert Policy().total_attempts == 3 + 2
    policy = Policy(retry=RetryPolicy(max_attempts=4), fallback=FallbackPolicy(max_fallbacks=1))
    assert policy.total_attempts == 5
    assert Policy(max_total_attempts=2).total_attempts == 2


def test_target() -> None:
    target = Target.parse("openai:gpt-4o")
    assert target == Target("openai", "gpt-4o")
    assert target.route == str(target) == "openai:gpt-4o"
    assert Target.parse("ollama:llama3:8b") == Target("ollama", "llama3:8b")
    for bad in ("gpt-4o", ":gpt-4o", "openai:"):
        with pytest.raises(ValueError, match="provider:model"):
            Target.parse(bad)


def test_fallback_targets_may_be_written_as_strings() -> None:
    fallback = FallbackPolicy(targets=("openai:gpt-4o-mini", Target("anthropic", "claude-haiku-4-5")))  # type: ignore[arg-type]
    assert fallback.targets == (Target("openai", "gpt-4o-mini"), Target("anthropic", "claude-haiku-4-5"))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RetryPolicy(max_attempts=0), "max_attempts: must be at least 1"),
        (lambda: RetryPolicy(base_delay_s=-1), "base_delay_s"),
        (lambda: RetryPolicy(retry_statuses=frozenset({42})), "retry_statuses"),
        (lambda: BreakerPolicy(failure_rate=0), "failure_rate"),
        (lambda: BreakerPolicy(min_calls=30, window=20), "min_calls: must not exceed window"),
        (lambda: FallbackPolicy(on=frozenset({"sometimes"})), "unknown failure category 'sometimes'"),
        (lambda: FallbackPolicy(max_fallbacks=-1), "max_fallbacks"),
        (lambda: RateLimitPolicy(requests_per_minute=0), "requests_per_minute"),
        (lambda: Policy(timeout_s=0), "timeout_s"),
        (lambda: Policy(max_total_attempts=0), "max_total_attempts"),
        (lambda: BudgetLimits(usd=-1), "usd"),
        (lambda: RunawayGuard(max_identical_calls=0), "max_identical_calls"),
    ],
)
def test_bad_values_in_code_are_refused(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


# -- lookup ----------------------------------------------------------------------------


def test_most_specific_route_wins() -> None:
    exact, provider, anything, tools, one_tool = (Policy(timeout_s=t) for t in (1, 2, 3, 4, 5))
    policies = PolicySet(routes={"openai:gpt-4o": exact, "openai:*": provider, "*": anything, "tool:*": tools,
                                 "tool:search": one_tool})
    assert policies.policy_for("openai:gpt-4o") is exact
    assert policies.policy_for("openai:gpt-4o-mini") is provider
    assert policies.policy_for("anthropic:claude-haiku-4-5") is anything
    assert policies.policy_for("tool:search") is one_tool
    assert policies.policy_for("tool:weather") is tools
    assert PolicySet().policy_for("openai:gpt-4o") == Policy()


def test_rate_limit_per_provider() -> None:
    openai = RateLimitPolicy(requests_per_minute=500)
    fallback = RateLimitPolicy(tokens_per_minute=10_000)
    assert PolicySet(rate_limits={"openai": openai, "*": fallback}).rate_limit_for("openai") is openai
    assert PolicySet(rate_limits={"openai": openai, "*": fallback}).rate_limit_for("mistral") is fallback
    assert not PolicySet().rate_limit_for("openai").limited


def test_budgets_for_specific_ids_beat_the_default() -> None:
    default_run, big_run, bot, acme = (BudgetLimits(usd=u) for u in (1, 10, 5, 50))
    policies = PolicySet(budgets={("run", "*"): default_run, ("run", "r-big"): big_run, ("agent", "bot"): bot,
                                  ("tenant", "acme"): acme})
    assert policies.budgets_for(run_id="r1", agent_id="bot", tenant="acme") == [
        ("run", "r1", default_run), ("agent", "bot", bot), ("tenant", "acme", acme)]
    assert policies.budgets_for(run_id="r-big", agent_id="other", tenant=None) == [("run", "r-big", big_run)]
    assert policies.budgets_for(run_id=None, agent_id=None, tenant=None) == []


# -- configuration ---------------------------------------------------------------------

FULL = """
[runaway]
max_calls_per_run = 200
max_identical_calls = false

[routes."*"]
timeout_s = 20
deadline_s = 120

[routes."*".retry]
max_attempts = 4
base_delay_s = 0.5
retry_statuses = [429, 500, 503]

[routes."*".breaker]
failure_streak = 3
cooldown_s = 10

[routes."openai:*".retry]
max_delay_s = 5

[routes."openai:gpt-4o"]
timeout_s = 30
max_total_attempts = 6

[routes."openai:gpt-4o".retry]
max_attempts = 2

[routes."openai:gpt-4o".fallback]
targets = ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"]
on = ["server_error", "rate_limit"]
max_fallbacks = 1

[routes."tool:*".retry]
max_attempts = 1

[rate_limits.openai]
requests_per_minute = 500
tokens_per_minute = 200000

[budgets.run."*"]
usd = 1.5
[budgets.agent."bot"]
calls = 1000
[budgets.tenant."acme"]
tokens = 5000000
"""


def test_full_config(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text(FULL)
    policies = load_policies(cwd=tmp_path)
    assert policies.runaway == RunawayGuard(max_calls_per_run=200, max_identical_calls=None)

    gpt4o = policies.policy_for("openai:gpt-4o")
    # its own keys...
    assert (gpt4o.timeout_s, gpt4o.max_total_attempts, gpt4o.retry.max_attempts) == (30.0, 6, 2)
    assert gpt4o.fallback == FallbackPolicy(
        targets=(Target("openai", "gpt-4o-mini"), Target("anthropic", "claude-haiku-4-5")),
        on=frozenset({"server_error", "rate_limit"}), max_fallbacks=1)
    # ...then openai:*'s...
    assert gpt4o.retry.max_delay_s == 5.0
    # ...then *'s, field by field
    assert (gpt4o.deadline_s, gpt4o.retry.base_delay_s, gpt4o.retry.retry_statuses) == (
        120.0, 0.5, frozenset({429, 500, 503}))
    assert gpt4o.breaker == BreakerPolicy(failure_streak=3, cooldown_s=10.0)

    mini = policies.policy_for("openai:gpt-4o-mini")
    assert (mini.retry.max_attempts, mini.retry.max_delay_s, mini.timeout_s) == (4, 5.0, 20.0)
    assert mini.fallback == FallbackPolicy()

    claude = policies.policy_for("anthropic:claude-haiku-4-5")
    assert (claude.retry.max_attempts, claude.retry.max_delay_s) == (4, 20.0)

    assert policies.policy_for("tool:search").retry.max_attempts == 1
    assert policies.policy_for("tool:search").timeout_s == 20.0

    assert policies.rate_limit_for("openai") == RateLimitPolicy(500, 200_000)
    assert policies.budgets_for(run_id="r1", agent_id="bot", tenant="acme") == [
        ("run", "r1", BudgetLimits(usd=1.5)), ("agent", "bot", BudgetLimits(calls=1000)),
        ("tenant", "acme", BudgetLimits(tokens=5_000_000))]


def test_pyproject_tool_tether(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "app"\n\n[tool.tether.routes."*".retry]\nmax_attempts = 7\n')
    assert load_policies(cwd=tmp_path).policy_for("openai:gpt-4o").retry.max_attempts == 7


def test_pyproject_without_tool_tether_gives_defaults(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "app"\n[tool.ruff]\nline-length = 100\n')
    assert load_policies(cwd=tmp_path) == PolicySet.default()


def test_tether_toml_beats_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.tether.routes."*"]\ntimeout_s = 1\n')
    (tmp_path / "tether.toml").write_text('[routes."*"]\ntimeout_s = 2\n')
    assert load_policies(cwd=tmp_path).policy_for("x:y").timeout_s == 2.0


def test_explicit_path_beats_cwd(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text('[routes."*"]\ntimeout_s = 2\n')
    other = tmp_path / "conf" / "prod.toml"
    other.parent.mkdir()
    other.write_text('[routes."*"]\ntimeout_s = 3\n')
    assert load_policies(other, cwd=tmp_path).policy_for("x:y").timeout_s == 3.0
    assert load_policies(str(other)).policy_for("x:y").timeout_s == 3.0


def test_explicit_pyproject_reads_its_tool_tether_table(tmp_path: Path) -> None:
    file = tmp_path / "pyproject.toml"
    file.write_text('[tool.tether.runaway]\nmax_calls_per_run = 9\n')
    assert load_policies(file).runaway.max_calls_per_run == 9


def test_no_config_gives_defaults(tmp_path: Path) -> None:
    assert load_policies(cwd=tmp_path) == PolicySet.default()


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_policies(tmp_path / "nope.toml")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text("[routes\n")
    with pytest.raises(PolicyConfigError, match=r"tether\.toml: not valid TOML"):
        load_policies(cwd=tmp_path)


def test_error_names_the_file_and_the_path(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text('[routes."openai:*".retry]\nmax_atempts = 3\n')
    with pytest.raises(PolicyConfigError) as caught:
        load_policies(cwd=tmp_path)
    assert caught.value.path == 'routes."openai:*".retry.max_atempts'
    assert str(caught.value) == (f'{tmp_path / "tether.toml"}: routes."openai:*".retry.max_atempts: '
                                 "unknown key (did you mean 'max_attempts'?)")


@pytest.mark.parametrize(
    ("data", "path", "problem"),
    [
        ({"routes": {"openai:*": {"retry": {"max_atempts": 3}}}},
         'routes."openai:*".retry.max_atempts', "unknown key"),
        ({"route": {}}, "route", "unknown key (did you mean 'routes'?)"),
        ({"routes": {"*": {"retries": {}}}}, 'routes."*".retries', "unknown key"),
        ({"routes": {"*": {"retry": {"max_attempts": "3"}}}}, 'routes."*".retry.max_attempts',
         "expected an integer, got a string"),
        ({"routes": {"*": {"retry": {"max_attempts": True}}}}, 'routes."*".retry.max_attempts',
         "expected an integer, got a boolean"),
        ({"routes": {"*": {"retry": {"max_attempts": 0}}}}, 'routes."*".retry.max_attempts',
         "must be at least 1, got 0"),
        ({"routes": {"*": {"retry": {"retry_statuses": [500, "502"]}}}}, 'routes."*".retry.retry_statuses[1]',
         "expected an integer"),
        ({"routes": {"*": {"retry": {"retry_statuses": [500, 700]}}}}, 'routes."*".retry.retry_statuses[1]',
         "HTTP statuses lie in 100..599"),
        ({"routes": {"*": {"timeout_s": "fast"}}}, 'routes."*".timeout_s', "expected a number"),
        ({"routes": {"*": {"deadline_s": True}}}, 'routes."*".deadline_s', "or false for none"),
        ({"routes": {"*": "fast"}}, 'routes."*"', "must be a table, got a string"),
        ({"routes": {"gpt-4o": {}}}, "routes.gpt-4o", "a route is '*', 'provider:model'"),
        ({"routes": {"openai:gpt-*": {}}}, 'routes."openai:gpt-*"', "only a whole '*' model"),
        ({"routes": {"openai:gpt-4o": {"fallback": {"targets": ["gpt-4o-mini"]}}}},
         'routes."openai:gpt-4o".fallback.targets[0]', "provider:model"),
        ({"routes": {"openai:gpt-4o": {"fallback": {"targets": ["tool:search"]}}}},
         'routes."openai:gpt-4o".fallback.targets[0]', "one model"),
        ({"routes": {"openai:gpt-4o": {"fallback": {"on": ["server_error", "bad_luck"]}}}},
         'routes."openai:gpt-4o".fallback.on[1]', "unknown failure category 'bad_luck'"),
        ({"routes": {"*": {"breaker": {"failure_rate": 1.5}}}}, 'routes."*".breaker.failure_rate',
         "must be in (0, 1]"),
        ({"routes": {"*": {"breaker": {"window": 5}}}}, 'routes."*".breaker.min_calls',
         "must not exceed window (5), got 10 (the default)"),
        ({"routes": {"*": {"breaker": {"window": 50}}, "openai:gpt-4o": {"breaker": {"min_calls": 60}}}},
         'routes."openai:gpt-4o".breaker.min_calls', "must not exceed window (50)"),
        ({"rate_limits": {"openai": {"rpm": 5}}}, "rate_limits.openai.rpm", "unknown key"),
        ({"rate_limits": {"openai": {"requests_per_minute": 0}}}, "rate_limits.openai.requests_per_minute",
         "must be at least 1"),
        ({"budgets": {"team": {}}}, "budgets.team", "unknown key"),
        ({"budgets": {"run": {"*": {"dollars": 1}}}}, 'budgets.run."*".dollars', "unknown key"),
        ({"budgets": {"run": {"*": {"usd": -1}}}}, 'budgets.run."*".usd', "must not be negative"),
        ({"runaway": {"max_calls_per_run": 0}}, "runaway.max_calls_per_run", "must be at least 1"),
        ({"runaway": {"max_calls": 9}}, "runaway.max_calls", "unknown key"),
    ],
)
def test_config_errors_name_the_exact_path(data: dict[str, Any], path: str, problem: str) -> None:
    with pytest.raises(PolicyConfigError) as caught:
        PolicySet.from_mapping(data)
    assert caught.value.path == path
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"{path}: ")
    assert isinstance(caught.value, ValueError)


def test_bad_value_in_the_default_route_is_reported_where_written() -> None:
    data = {"routes": {"*": {"retry": {"max_attempts": 0}}, "openai:gpt-4o": {"timeout_s": 5}}}
    with pytest.raises(PolicyConfigError) as caught:
        PolicySet.from_mapping(data)
    assert caught.value.path == 'routes."*".retry.max_attempts'


def test_false_switches_optional_limits_off() -> None:
    policies = PolicySet.from_mapping({
        "routes": {"*": {"deadline_s": False, "max_total_attempts": False,
                         "rate_limit": {"requests_per_minute": False}}},
        "runaway": {"max_calls_per_run": False},
    })
    policy = policies.policy_for("a:b")
    assert (policy.deadline_s, policy.max_total_attempts, policy.rate_limit.requests_per_minute) == (
        None, None, None)
    assert policies.runaway.max_calls_per_run is None


def test_sections_owned_elsewhere_can_be_ignored() -> None:
    data = {"providers": {"openai": {"base_url": "http://localhost"}}, "routes": {}}
    with pytest.raises(PolicyConfigError, match="providers: unknown key"):
        PolicySet.from_mapping(data)
    assert PolicySet.from_mapping(data, ignore={"providers"}) == PolicySet.default()


def test_integers_are_accepted_for_seconds() -> None:
    policy = PolicySet.from_mapping({"routes": {"*": {"timeout_s": 5}}}).policy_for("a:b")
    assert policy.timeout_s == 5.0
    assert isinstance(policy.timeout_s, float)


def _docstring_blocks() -> list[str]:
    doc = _policy.__doc__ or ""
    blocks = []
    for part in doc.split("::\n\n")[1:]:
        lines = []
        for line in part.splitlines():
            if line and not line.startswith("    "):
                break
            lines.append(line)
        blocks.append(textwrap.dedent("\n".join(lines)))
    return blocks


def test_the_documented_schema_and_example_parse() -> None:
    schema, example = _docstring_blocks()
    documented = PolicySet.from_mapping(tomllib.loads(schema))
    # the schema block spells out the defaults (apart from the sample rate limits and budgets)
    assert documented.policy_for("any:model") == Policy()
    assert documented.runaway == RunawayGuard()
    assert documented.rate_limit_for("openai") == RateLimitPolicy(500, 200_000)
    policies = PolicySet.from_mapping(tomllib.loads(example))
    gpt4o = policies.policy_for("openai:gpt-4o")
    assert (gpt4o.retry.max_attempts, gpt4o.timeout_s) == (4, 30.0)
    assert [t.route for t in gpt4o.fallback.targets] == ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"]
    assert policies.policy_for("tool:search").retry.max_attempts == 1


def test_the_response_cache_is_per_route_and_inherited_key_by_key() -> None:
    policies = PolicySet.from_mapping({"routes": {
        "*": {"cache": {"ttl_s": 60}}, "openai:*": {"cache": {"enabled": True}},
        "openai:gpt-4o": {"cache": {"sampling": True}}}})
    assert policies.policy_for("anthropic:claude").cache.enabled is False
    mini, big = policies.policy_for("openai:gpt-4o-mini").cache, policies.policy_for("openai:gpt-4o").cache
    assert (mini.enabled, mini.ttl_s, mini.sampling) == (True, 60, False)
    assert (big.enabled, big.ttl_s, big.sampling) == (True, 60, True)
    with pytest.raises(PolicyConfigError) as caught:
        PolicySet.from_mapping({"routes": {"*": {"cache": {"ttl_s": 0}}}})
    assert caught.value.path == 'routes."*".cache.ttl_s'
    with pytest.raises(PolicyConfigError, match="unknown key"):
        PolicySet.from_mapping({"routes": {"*": {"cache": {"enable": True}}}})
