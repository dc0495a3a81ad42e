"""``tether eval``: datasets (add, show, history, list), experiments (run, show, list),
``compare`` with its CI exit code, and ``calibrate`` for an LLM judge. Every command has ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tether.bus import BusConfig, connect

from ._format import Style
from ._views import parse_since

__all__ = ["add_commands", "parse_scorer", "run"]

SCORERS_HELP = ("exact, contains[:TEXT], regex:PATTERN, numeric[:TOLERANCE], similarity[:THRESHOLD], "
                "json_schema:FILE, called_tool:NAME, no_dead_letters, cost_below:USD, retries_at_most:N, "
                "custom:MODULE:FUNCTION")


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    ev = sub.add_parser("eval", help="evaluation: datasets, experiments, compare (CI gate), judge calibration",
                        description="Datasets as events (from recorded runs, files), experiments over them, "
                        "scores, and comparisons with paired statistics. See docs/evaluation.md.")
    ev.set_defaults(print_help=ev.print_help)
    evsub = ev.add_subparsers(dest="eval_command", metavar="ACTION")

    ds = evsub.add_parser("dataset", help="add items, show a dataset (as of a point), its history, list datasets")
    ds.set_defaults(print_help=ds.print_help)
    dssub = ds.add_subparsers(dest="dataset_command", metavar="ACTION")
    add = dssub.add_parser("add", help="add items from recorded runs, a run filter, or a JSONL/CSV file",
                           description="Each recorded run becomes an item (its input; its output as the "
                           "expected one when it finished ok, unless --expected none), with the run as its source.")
    add.add_argument("dataset", metavar="NAME")
    add.add_argument("--from-run", action="append", default=[], metavar="RUN", help="a recorded run (repeatable)")
    add.add_argument("--agent", help="every run of this agent (with --status, --since)")
    add.add_argument("--status", choices=["ok", "error", "cancelled", "any"], default="error",
                     help="with --agent: runs that finished so (default: error)")
    add.add_argument("--since", metavar="DATE|7d", help="with --agent: runs started since (ISO, or 30m, 12h, 7d)")
    add.add_argument("--file", type=Path, metavar="PATH", help="a .jsonl or .csv file of items")
    add.add_argument("--expected", choices=["output", "none"], default="output",
                     help="for runs: take the run's output as the expected output (default), or none")
    show = dssub.add_parser("show", help="a dataset's items, now or as of a sequence or a time")
    show.add_argument("dataset", metavar="NAME")
    show.add_argument("--as-of", metavar="SEQ|TIME", help="the dataset as of a stream sequence or an ISO time")
    hist = dssub.add_parser("history", help="every addition, new version and removal of a dataset's items")
    hist.add_argument("dataset", metavar="NAME")
    rm = dssub.add_parser("remove", help="remove an item (it stays in the log and the history)")
    rm.add_argument("dataset", metavar="NAME")
    rm.add_argument("item", metavar="ITEM")
    lst = dssub.add_parser("list", help="every dataset")

    runp = evsub.add_parser("run", help="run an agent over a dataset with a variant, scoring each item",
                            description="Call AGENT(input, variant) for each item inside a tether run linked to "
                            "the experiment; record each trial and score as events. --replay answers the "
                            "tools of items taken from recorded runs with the results those runs recorded.")
    runp.add_argument("dataset", metavar="DATASET")
    runp.add_argument("--agent-fn", required=True, metavar="MODULE:FUNCTION", help="the agent's entry point")
    runp.add_argument("--name", help="the experiment's name (default: a new one)")
    runp.add_argument("--model", help="the variant's model")
    runp.add_argument("--prompt", help="the variant's prompt")
    runp.add_argument("--policy", type=Path, metavar="FILE",
                      help="the variant's reliability policy: a tether.toml the agent passes to tether.instrument "
                           "(variant.policies())")
    runp.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                      help="a variant parameter (VALUE read as JSON when it parses; repeatable)")
    runp.add_argument("--scorer", action="append", default=[], metavar="SPEC", help=f"repeatable: {SCORERS_HELP}")
    runp.add_argument("--concurrency", type=int, default=4, metavar="N", help="items at once (default 4)")
    runp.add_argument("--budget", type=float, metavar="USD", help="skip the remaining items once this is spent")
    runp.add_argument("--replay", action="store_true", help="tool results from each item's source run")
    runp.add_argument("--as-of", type=int, metavar="SEQ", help="the dataset as of this stream sequence")
    runp.add_argument("--agent-id", default="eval-agent", help="the agent id of the runs (default eval-agent)")
    exp = evsub.add_parser("show", help="an experiment: its variant, trials and scores")
    exp.add_argument("experiment", metavar="EXPERIMENT")
    explist = evsub.add_parser("list", help="every experiment")
    cmp_ = evsub.add_parser("compare", help="B against A, paired by item; exit 1 on a significant regression",
                            description="Per scorer: pass rates with McNemar's exact test, or mean values with a "
                            "paired bootstrap interval; cost and latency deltas. Exits 1 only when some scorer "
                            "is worse in B by more than --tolerance AND the difference is significant at --alpha.")
    cmp_.add_argument("a", metavar="A")
    cmp_.add_argument("b", metavar="B")
    cmp_.add_argument("--tolerance", type=float, default=0.0, help="a drop smaller than this is no regression")
    cmp_.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    cmp_.add_argument("--lower-is-better", action="append", default=[], metavar="SCORER",
                      help="a numeric scorer whose value should go down (an error); repeatable")
    cal = evsub.add_parser("calibrate", help="an LLM judge against gold labels: agreement, TPR, FPR, corrected rate")
    cal.add_argument("experiment", metavar="EXPERIMENT")
    cal.add_argument("--scorer", default="judge", help="the judge scorer's name (default judge)")
    cal.add_argument("--gold", type=Path, required=True, metavar="FILE",
                     help='JSONL: {"id": ITEM, "passed": true|false} per line')
    for p in (add, show, hist, rm, lst, runp, exp, explist, cmp_, cal):
        common(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")


def parse_scorer(spec: str) -> Any:
    """A scorer from its command-line spec (see ``SCORERS_HELP``); ValueError saying what is wrong."""
    import tether.eval as ev

    name, _, arg = spec.partition(":")
    try:
        match name:
            case "exact":
                return ev.exact()
            case "contains":
                return ev.contains(arg or None)
            case "regex" if arg:
                return ev.regex(arg)
            case "numeric":
                return ev.numeric(tolerance=float(arg or 0))
            case "similarity":
                return ev.similarity(float(arg or 0.8))
            case "json_schema" if arg:
                return ev.json_schema(json.loads(Path(arg).read_text()))
            case "called_tool" if arg:
                return ev.called_tool(arg)
            case "no_dead_letters":
                return ev.no_dead_letters()
            case "cost_below" if arg:
                return ev.cost_below(float(arg))
            case "retries_at_most" if arg:
                return ev.retries_at_most(int(arg))
            case "custom" if ":" in arg:
                return ev.custom(ev.load_agent(arg), name=arg.rpartition(":")[2])  # type: ignore[arg-type]
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--scorer {spec}: {exc}") from None
    raise ValueError(f"--scorer {spec!r}: not a scorer; scorers are {SCORERS_HELP}")


def _param(text: str) -> tuple[str, Any]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise ValueError(f"--param {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _as_of(text: str | None) -> int | datetime | None:
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    return parse_since(text)


def _print(args: argparse.Namespace, data: Any, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    else:
        for line in lines:
            print(line)


async def run(args: argparse.Namespace) -> int:
    """Run a ``tether eval`` command; its exit status."""
    import tether.eval as ev

    command = args.eval_command
    if command is None or (command == "dataset" and args.dataset_command is None):
        args.print_help()
        return 2
    label = f"tether eval {command}" + (f" {args.dataset_command}" if command == "dataset" else "")
    try:
        checked = _check(args)
    except ValueError as exc:
        print(f"{label}: {exc}", file=sys.stderr)
        return 2
    bus = await connect(config=BusConfig.from_env(url=args.url, home=args.home))
    try:
        async with ev.Evals(bus) as evals:
            return await _dispatch(args, evals, checked)
    except (ValueError, ev.DatasetError) as exc:
        print(f"{label}: {exc}", file=sys.stderr)
        return 2
    finally:
        await bus.close()


def _check(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that can be refused before connecting: nothing is written when it is."""
    import tether.eval as ev

    out: dict[str, Any] = {}
    if args.eval_command == "dataset" and args.dataset_command == "add":
        sources = bool(args.from_run) + bool(args.agent) + bool(args.file)
        if sources != 1:
            raise ValueError("give one source: --from-run RUN (repeatable), --agent NAME (a filter), or --file PATH")
        if args.since and not args.agent:
            raise ValueError("--since filters --agent's runs; add --agent NAME")
        if args.file:
            out["items"] = ev.items_from_file(args.file)
        if args.since:
            out["since"] = parse_since(args.since)
    if args.eval_command == "dataset" and args.dataset_command == "show":
        out["as_of"] = _as_of(args.as_of)
    if args.eval_command == "run":
        out["scorers"] = [parse_scorer(s) for s in args.scorer]
        out["params"] = dict(_param(p) for p in args.param)
        if args.policy is not None:
            if not args.policy.is_file():
                raise ValueError(f"--policy {args.policy}: no such file (give a tether.toml with the variant's "
                                 "policies)")
            ev.Variant(policy=str(args.policy)).policies()  # PolicyConfigError names the offending key
        out["agent"] = ev.load_agent(args.agent_fn)
        if args.concurrency < 1:
            raise ValueError(f"--concurrency must be 1 or more, got {args.concurrency}")
    if args.eval_command == "calibrate":
        gold: dict[str, bool] = {}
        try:
            lines = args.gold.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"--gold {args.gold}: cannot read it ({exc.strerror or exc})") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("passed"), bool) or "id" not in row:
                raise ValueError(f'{args.gold}:{number}: expected {{"id": ITEM, "passed": true|false}}')
            gold[str(row["id"])] = row["passed"]
        out["gold"] = gold
    return out


async def _dispatch(args: argparse.Namespace, evals: Any, checked: dict[str, Any]) -> int:
    import tether.eval as ev

    s = Style()
    command = args.eval_command
    if command == "dataset":
        name = getattr(args, "dataset", None)
        sub = args.dataset_command
        if sub == "add":
            runs: list[str] = list(args.from_run)
            if args.file:
                seq = await evals.add_items(name, checked["items"])
                added = len(checked["items"])
            elif args.agent:
                seq, runs = await evals.add_matching_runs(
                    name, agent=args.agent, status=None if args.status == "any" else args.status,
                    since=checked.get("since"), expected=args.expected)
                added = len(runs)
                if not runs:
                    print(f"tether eval dataset add: no run of agent {args.agent!r} matches "
                          f"(status {args.status}{', since ' + args.since if args.since else ''}); nothing was added",
                          file=sys.stderr)
                    return 1
            else:
                seq = await evals.add_runs(name, runs, expected=args.expected)
                added = len(runs)
            _print(args, {"dataset": name, "added": added, "seq": seq, "runs": runs},
                   [s.green(f"added {added} item(s) to {name} (dataset version: seq {seq})")])
            return 0
        if sub == "show":
            items = await evals.items(name, as_of=checked.get("as_of"))
            if not items and not args.json:
                print(f"tether eval dataset show: dataset {name!r} has no items"
                      f"{'' if args.as_of is None else ' as of ' + args.as_of}", file=sys.stderr)
                return 1
            _print(args, [i.as_dict() for i in items],
                   [f"{i.id}  v{i.version}  input={json.dumps(i.input)[:60]}  expected={json.dumps(i.expected)[:40]}"
                    + (f"  tags={','.join(i.tags)}" if i.tags else "") for i in items])
            return 0
        if sub == "history":
            changes = await evals.history(name)
            _print(args, [c.as_dict() for c in changes],
                   [f"seq {c.seq}  {c.item_id}  {c.op}" + (f" v{c.version}" if c.op == "added" else "")
                    for c in changes])
            return 0
        if sub == "remove":
            seq = await evals.remove_item(name, args.item)
            _print(args, {"dataset": name, "removed": args.item, "seq": seq}, [f"removed {args.item} (seq {seq})"])
            return 0
        found = await evals.datasets()
        _print(args, found, [f"{d['dataset']}  {d['items']} item(s)  version seq {d['seq']}" for d in found])
        return 0
    if command == "run":
        variant = ev.Variant(model=args.model, prompt=args.prompt, params=checked["params"],
                             policy=None if args.policy is None else str(args.policy))
        result = await ev.run_experiment(evals, args.dataset, checked["agent"], variant=variant,
                                         scorers=checked["scorers"], name=args.name, concurrency=args.concurrency,
                                         budget_usd=args.budget, replay=args.replay, agent_id=args.agent_id,
                                         progress=True, as_of=args.as_of)
        summary = _summary(await evals.scores(result.experiment))
        _print(args, {**result.as_dict(), "scores": summary},
               [s.green(f"experiment {result.experiment}: {result.ran} of {result.items} item(s) ran, "
                        f"{result.errors} error(s), {result.skipped} skipped, ${result.cost_usd:.6f}"),
                *_summary_lines(summary)])
        return 0
    if command == "show":
        info = await evals.experiment(args.experiment)
        scores = await evals.scores(args.experiment)
        if info is None and scores:  # an online scorer's: scores of live runs, no experiment started
            summary = _summary(scores)
            _print(args, {"experiment": args.experiment, "scores": summary},
                   [f"{args.experiment}: scores of {len({s.item_id for s in scores})} live run(s)",
                    *_summary_lines(summary)])
            return 0
        if info is None:
            print(f"tether eval show: no experiment {args.experiment!r} (`tether eval list`)", file=sys.stderr)
            return 1
        summary = _summary(scores)
        _print(args, {**info, "scores": summary},
               [f"experiment {info['experiment']} on {info['dataset']} (seq {info['dataset_seq']}), "
                f"variant {json.dumps(info['variant'])}", f"  {info['trials']} trial(s), {info['errors']} error(s), "
                f"${info['cost_usd'] or 0:.6f}", *_summary_lines(summary)])
        return 0
    if command == "list":
        found = await evals.experiments()
        _print(args, found, [f"{e['experiment']}  {e['dataset']}  {e['trials']} trial(s)  "
                             f"{json.dumps(e['variant'])}" for e in found])
        return 0
    if command == "compare":
        for name in (args.a, args.b):
            if await evals.experiment(name) is None and not name.startswith("online:"):
                print(f"tether eval compare: no experiment {name!r} (`tether eval list`)", file=sys.stderr)
                return 2
        compared = ev.compare(args.a, args.b, await evals.scores(args.a), await evals.scores(args.b),
                            await evals.trials(args.a), await evals.trials(args.b), tolerance=args.tolerance,
                            alpha=args.alpha, lower_is_better=args.lower_is_better)
        _print(args, compared.as_dict(), _compare_lines(s, compared))
        return 1 if compared.regressed else 0
    if command == "calibrate":
        report = ev.judge_report(await evals.scores(args.experiment), args.scorer, checked["gold"])
        c = report.calibration
        _print(args, report.as_dict(), [
            f"judge {report.scorer} on {c.n} gold-labelled item(s): agreement {c.agreement:.2f}, "
            f"TPR {_rate(c.tpr)}, FPR {_rate(c.fpr)}",
            f"pass rate over {report.judged} judged item(s): observed {report.observed_pass_rate:.2f}, corrected "
            f"{_rate(report.corrected_pass_rate)}" + (f" ({report.note})" if report.note else "")])
        return 0
    args.print_help()
    return 2


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _summary(scores: list[Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for sc in scores:
        row = out.setdefault(sc.scorer, {"n": 0, "passed": 0, "verdicts": 0, "sum": 0.0, "values": 0})
        row["n"] += 1
        if sc.passed is not None:
            row["verdicts"] += 1
            row["passed"] += sc.passed
        if sc.value is not None:
            row["values"] += 1
            row["sum"] += sc.value
    for row in out.values():
        row["pass_rate"] = row["passed"] / row["verdicts"] if row["verdicts"] else None
        row["mean"] = row.pop("sum") / row["values"] if row["values"] else None
    return out


def _summary_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    return [f"  {name}: " + (f"pass rate {row['pass_rate']:.2f} ({row['passed']}/{row['verdicts']})"
                             if row["pass_rate"] is not None else f"mean {_rate(row['mean'])} over {row['values']}")
            for name, row in sorted(summary.items())]


def _compare_lines(s: Style, result: Any) -> list[str]:
    lines = [f"{result.b} against {result.a} (tolerance {result.tolerance:g}, alpha {result.alpha:g})"]
    for d in result.scorers:
        if d.kind == "pass":
            stat = f"p={d.p_value:.4f} (McNemar: {d.pass_to_fail} pass→fail, {d.fail_to_pass} fail→pass)"
        else:
            stat = f"95% CI [{d.interval[0]:+.4f}, {d.interval[1]:+.4f}] (paired bootstrap)" if d.interval else ""
        text = f"  {d.scorer}: {d.mean_a:.3f} → {d.mean_b:.3f} ({d.delta:+.3f}) over {d.n} item(s), {stat}"
        lines.append(s.red(text + "  REGRESSION") if d.regression else text)
    lines.append(f"  cost: ${result.cost_a:.6f} → ${result.cost_b:.6f} ({result.cost_b - result.cost_a:+.6f})")
    if result.latency_a is not None and result.latency_b is not None:
        lines.append(f"  mean latency: {result.latency_a:.0f} ms → {result.latency_b:.0f} ms "
                     f"({result.latency_b - result.latency_a:+.0f} ms)")
    lines.append(s.red("regression: failing") if result.regressed else s.green("no significant regression"))
    return lines
