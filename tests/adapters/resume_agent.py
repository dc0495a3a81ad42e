"""A scripted agent for the crash tests, run as a process: ``python -m tests.adapters.resume_agent
BASE_URL RUN_ID STEPS RESUME [GATEWAY_KEY]``.

Each step asks with the whole conversation so far (so a replayed answer must be the recorded
one for the next step to match), every third step streamed; it prints ``<step> <answer>`` as
each answer comes. Through ``tether.instrument`` (sync OpenAI SDK, tether's background bus from
``TETHER_NATS_URL``) inside ``tether.run(run_id, resume=...)``; with a gateway key, through the
gateway instead (``x-tether-run-id``, and ``x-tether-resume: <RESUME>`` unless it is 0).
``RESUME_AGENT_DIE_AFTER=N``: the process SIGKILLs itself the moment it has step N's answer (unprinted).
"""

from __future__ import annotations

import os
import signal
import sys

import openai

import tether
import tether.adapters


def main(base_url: str, run_id: str, steps: int, resume: str, key: str | None = None) -> list[str]:
    if key is None:
        sdk = tether.instrument(openai.OpenAI(base_url=base_url, api_key="sk-test"))
        framed = tether.run(agent="crash-bot", run_id=run_id, resume=resume != "0")
    else:
        headers = {"x-tether-run-id": run_id, **({"x-tether-resume": resume} if resume != "0" else {})}
        sdk = openai.OpenAI(base_url=base_url + "/v1", api_key=key, default_headers=headers, max_retries=0)
        framed = None
    history: list[dict[str, str]] = [{"role": "system", "content": "You are terse."}]
    answers = []
    die_after = int(os.environ.get("RESUME_AGENT_DIE_AFTER", "-1"))
    if framed is not None:
        framed.__enter__()
    for step in range(steps):
        history.append({"role": "user", "content": f"step {step}"})
        if step % 3 == 2:
            stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=history, stream=True)  # type: ignore[arg-type]
            answer = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        else:
            reply = sdk.chat.completions.create(model="gpt-4o-mini", messages=history, temperature=0)  # type: ignore[arg-type]
            answer = reply.choices[0].message.content or ""
        if step == die_after:
            os.kill(os.getpid(), signal.SIGKILL)
        history.append({"role": "assistant", "content": answer})
        answers.append(f"{step} {answer}".replace("\n", " "))
        print(answers[-1], flush=True)
    if framed is not None:
        framed.__exit__(None, None, None)
        tether.adapters.shutdown()
    return answers


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], *sys.argv[5:6])
