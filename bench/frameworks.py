"""Framework overhead: each agent framework bare vs under tether, per agent step, in the same run.

One ``nats-server -js`` and one fake provider (in a process of its own, answering at once) are
started here. For each framework (its own venv, ``.venv-<framework>``, built as the tests build
it from ``requirements/<framework>.txt``), ``bench/framework_agent.py`` runs the same agent (one
tool, two model calls per run: two agent steps) bare and under tether, in child processes that
alternate in blocks so drift hits both, each round starting one variant later than the last (no
variant always runs right after another: use ``--rounds`` a multiple of the variants). *Added* per
step is the tethered percentile minus the bare one, halved (two steps per run); CPU is the agent
process's (``time.process_time``), per step.
A third variant, ``model``, gives tether the model's client without ``tether.init()``: the LLM
path alone (tether's call loop), so the rest of *added* is the framework hooks (runs, tool
events, and the framework's own work for a hook: LangChain builds a run tree for every node once
a callback handler is present). ``observer`` is ``model`` plus a hook that does nothing, where
tether's goes: the framework's own cost of being observed at all. At the end EVENTS must hold one
``run.started`` per tethered run.
Last, ``hooks``: the adapter's hooks alone, driven as the framework drives them for one run (no
framework, no model), CPU per run with and without them, the publisher's included.

``--base-root DIR``: another checkout of tether (an older commit, say), whose framework venvs
(``DIR/.venv-<framework>``, built as here, tether installed from ``DIR``) run the same agent as
``model-base`` and ``tether-base``, in the same rotation: old and new code side by side in one run.
``--modes`` picks the variants (``bare`` always runs).

    .venv/bin/python bench/frameworks.py
    .venv/bin/python bench/frameworks.py --runs 200 --rounds 3 --json
    .venv/bin/python bench/frameworks.py --frameworks google-adk-gemini   # ADK on its native Gemini model
    .venv/bin/python bench/frameworks.py --frameworks llama-index,llama-index-nostream   # what streaming costs
    .venv/bin/python bench/frameworks.py --frameworks autogen --modes tether --base-root /tmp/base
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tether.bus import connect
from tether.testing import NatsServer, collect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._envs import optional_env  # noqa: E402  (the tests' builder of the framework venvs)

FRAMEWORKS = ("langgraph", "openai-agents", "autogen", "google-adk", "crewai", "litellm", "pydantic-ai", "llama-index")
MODES = ("bare", "model", "observer", "tether")
STEPS_PER_RUN = 2
RUNS_PER_AGENT_RUN = {"crewai": 2}  # a crew's run and its task's child run
# not in FRAMEWORKS (name them in --frameworks), each run by another's venv: ADK's native Gemini model;
# LlamaIndex's FunctionAgent with streaming=False (it streams every model call by default)
VENVS = {"google-adk-gemini": "google-adk", "llama-index-nostream": "llama-index"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def start_provider() -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen([sys.executable, "-m", "tether", "fake-provider", "--seed", "1"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    url = child.stdout.readline().strip()
    if not url.startswith("http"):
        child.kill()
        raise RuntimeError(f"the fake provider did not start: {url!r}")
    return child, url


def block(python: Path, framework: str, mode: str, runs: int, warmup: int, env: dict[str, str],
          work: Path) -> dict[str, Any]:
    mode = mode.removesuffix("-base")  # the same agent, run by the other checkout's venv
    done = subprocess.run([str(python), str(ROOT / "bench" / "framework_agent.py"), framework, mode, str(runs),
                           str(warmup)], env=env, cwd=work, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{framework} {mode}: exit {done.returncode}\n{done.stderr[-3000:]}")
    samples: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return samples


async def started_runs(url: str, home: Path) -> int:
    async with await connect(url, home=home) as bus:
        return sum(1 for r in await collect(bus) if r.event is not None and r.event.type == "tether.run.started")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="agent runs per block")
    parser.add_argument("--rounds", type=int, default=3, help="blocks of each variant")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--hook-runs", type=int, default=2000, help="runs of the hooks alone")
    parser.add_argument("--modes", default=",".join(MODES[1:]), help="variants beside bare")
    parser.add_argument("--base-root", type=Path, help="another checkout: its venvs run model-base and tether-base")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    chosen = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(chosen) - set(MODES[1:]))
    if unknown:
        parser.error(f"unknown --modes {unknown}: choose among {', '.join(MODES[1:])}")
    modes = ["bare"]
    for mode in chosen:  # each beside its old code's run, if asked
        modes += [mode, f"{mode}-base"] if args.base_root is not None and mode in ("model", "tether") else [mode]
    results: dict[str, Any] = {}
    provider, url = start_provider()
    try:
        with NatsServer() as nats, tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for framework in args.frameworks.split(","):
                venv = optional_env(VENVS.get(framework, framework), project=True).path
                base = (optional_env(VENVS.get(framework, framework), project=True, root=args.base_root).path
                        if args.base_root else None)
                env = {**os.environ, "TETHER_NATS_URL": nats.url, "TETHER_HOME": str(work / "home"),
                       "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-bench-0000", "PYTHONDONTWRITEBYTECODE": "1"}
                samples: dict[str, dict[str, list[float]]] = {m: {"wall_ms": [], "cpu_ms": []} for m in modes}
                before = asyncio.run(started_runs(nats.url, work / "home"))
                for round_ in range(args.rounds):
                    # each round starts one variant later: none always runs right after bare, or last
                    shift = round_ % len(modes)
                    for mode in modes[shift:] + modes[:shift]:
                        python = (base if mode.endswith("-base") and base is not None else venv) / "bin" / "python"
                        got = block(python, framework, mode, args.runs, args.warmup, env, work)
                        for key in ("wall_ms", "cpu_ms"):
                            samples[mode][key] += got[key]
                recorded = asyncio.run(started_runs(nats.url, work / "home")) - before
                # the "tether" blocks' runs (and "tether-base"'s)
                expected = (args.rounds * (args.runs + args.warmup) * RUNS_PER_AGENT_RUN.get(framework, 1)
                            * sum(m in ("tether", "tether-base") for m in modes))
                assert recorded == expected, f"{framework}: {recorded} runs recorded, {expected} made"
                row: dict[str, float] = {}
                for key in ("wall_ms", "cpu_ms"):
                    for q, name in ((0.5, "p50"), (0.99, "p99")):
                        bare = percentile(samples["bare"][key], q) / STEPS_PER_RUN
                        for mode in modes[1:]:
                            tethered = percentile(samples[mode][key], q) / STEPS_PER_RUN
                            row[f"{key}_{name}_bare"] = bare
                            row[f"{key}_{name}_{mode}"] = tethered
                            row[f"{key}_{name}_{mode}_added"] = tethered - bare
                if args.hook_runs:
                    got_hooks = block(venv / "bin" / "python", framework, "hooks", args.hook_runs, 0, env, work)
                    row["hooks_cpu_ms_per_run"] = got_hooks["tether"] - got_hooks["bare"]
                results[framework] = row
    finally:
        provider.terminate()
        provider.wait(15)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"per agent step ({STEPS_PER_RUN} per run: one model call, and a tool call or the answer), "
          f"{args.rounds} x {args.runs} runs per variant")
    print(f"{'framework':<19}{'variant':<12}{'p50':>9}{'added p50':>11}{'added p99':>11}{'CPU p50':>10}"
          f"{'CPU added':>11}")
    for framework, row in results.items():
        print(f"{framework:<19}{'bare':<12}{row['wall_ms_p50_bare']:>7.2f}ms{'':>11}{'':>11}"
              f"{row['cpu_ms_p50_bare']:>8.2f}ms")
        for mode in modes[1:]:
            print(f"{'':<19}{mode:<12}{row[f'wall_ms_p50_{mode}']:>7.2f}ms{row[f'wall_ms_p50_{mode}_added']:>9.2f}ms"
                  f"{row[f'wall_ms_p99_{mode}_added']:>9.2f}ms{row[f'cpu_ms_p50_{mode}']:>8.2f}ms"
                  f"{row[f'cpu_ms_p50_{mode}_added']:>9.2f}ms")
        if "hooks_cpu_ms_per_run" in row:
            print(f"{'':<19}hooks alone: {row['hooks_cpu_ms_per_run']:.3f} ms CPU per run "
                  f"({row['hooks_cpu_ms_per_run'] / STEPS_PER_RUN:.3f} ms per step)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
