"""Instructions per agent step of one framework's agent (``bench/framework_agent.py``) in one variant,
every thread, under valgrind's callgrind: deterministic to a fraction of a percent where CPU time on a
shared machine moves by a millisecond. Run it with the framework's venv (``.venv-<framework>``, or another
checkout's: the old code beside the new); NATS and the fake provider run beside it, uninstrumented.

Instrumentation is switched on only for ``--runs`` runs, after ``--warmup`` runs and their events' acks.
``model`` against ``observer`` is the framework's own cost of a hook that does nothing; ``observer``
against ``tether`` is what tether's hooks do (runs, tool events and the tool journal, the run's acked
model calls). User-space instructions only: the kernel's share of a wake-up or a socket write is not in
them (``bench/hooks_share.py`` measures those in CPU time).

    .venv-pydantic-ai/bin/python bench/framework_callgrind.py pydantic-ai tether --runs 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile


async def instrumented(framework: str, mode: str, runs: int, warmup: int) -> None:
    import framework_agent  # bench/ is this script's directory
    from call_loop import counted

    await counted(getattr(framework_agent, framework.replace("-", "_") + "_agent")(mode), runs, warmup=warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("framework", help="as bench/frameworks.py names them: pydantic-ai, langgraph, google-adk, ...")
    parser.add_argument("mode", choices=("bare", "model", "observer", "tether"))
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from llm_path import tether_beside_a_fake_provider

        with tether_beside_a_fake_provider() as url:
            os.environ.update(OPENAI_BASE_URL=url, OPENAI_API_KEY="sk-bench-0000")
            asyncio.run(instrumented(args.framework, args.mode, args.runs, args.warmup))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("this script needs valgrind (and its callgrind_control) on the PATH")
    with tempfile.TemporaryDirectory() as tmp:
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={tmp}/out.%p",
                   sys.executable, __file__, "--child", args.framework, args.mode, "--runs", str(args.runs),
                   "--warmup", str(args.warmup)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    collected = [line for line in done.stderr.splitlines() if "Collected :" in line]
    instructions = int(collected[-1].split(":")[-1].strip().replace(",", ""))
    print(json.dumps({"framework": args.framework, "mode": args.mode, "runs": args.runs,
                      "instructions_per_step": instructions / (args.runs * 2), "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
