"""The Experiments page: every experiment of the eval view with its scorers' pass rates or means,
and one experiment item by item (its run, output, latency, cost and scores). Pure markup."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ._pages import e, ms, usd, when

__all__ = ["experiment_page", "experiments_page", "summarise"]


def summarise(scores: Sequence[Any]) -> dict[str, str]:
    """Per scorer: ``pass 5/6`` (verdicts) or ``mean 0.83`` (values)."""
    rows: dict[str, list[Any]] = {}
    for s in scores:
        rows.setdefault(s.scorer, []).append(s)
    out = {}
    for name, found in sorted(rows.items()):
        verdicts = [s.passed for s in found if s.passed is not None]
        numeric = any(s.metadata.get("kind") == "numeric" for s in found)
        values = [s.value for s in found if s.value is not None]
        if verdicts and not numeric:
            out[name] = f"pass {sum(verdicts)}/{len(verdicts)}"
        elif values:
            out[name] = f"mean {sum(values) / len(values):.3g}"
        else:
            out[name] = "no score"
    return out


def _variant(variant: Any) -> str:
    if not isinstance(variant, Mapping):
        return ""
    parts = [f"{k}={v}" for k, v in (("model", variant.get("model")), ("prompt", variant.get("prompt"))) if v]
    parts += [f"{k}={json.dumps(v)}" for k, v in (variant.get("params") or {}).items()]
    return ", ".join(parts)


def experiments_page(experiments: Sequence[Mapping[str, Any]], summaries: Mapping[str, Mapping[str, str]]) -> str:
    out = ["<h1>Experiments</h1><p class=dim>Each experiment ran an agent over a dataset with one variant "
           "(`tether eval run`); online scorers appear as <code>online:NAME</code>. "
           "Compare two with <code>tether eval compare A B</code>.</p>"]
    if not experiments and not summaries:
        out.append("<p class=dim>no experiments yet</p>")
        return "".join(out)
    out.append("<table class='totals experiments'><thead><tr><th>experiment</th><th>dataset</th><th>variant</th>"
               "<th class=r>trials</th><th class=r>errors</th><th class=r>cost</th><th>scores</th>"
               "<th>started (UTC)</th></tr></thead><tbody>")
    for x in experiments:
        name = str(x["experiment"])
        scores = "; ".join(f"{e(k)}: {e(v)}" for k, v in summaries.get(name, {}).items())
        replay = " <span class='tag dim'>replay</span>" if x.get("replay") else ""
        out.append(f"<tr data-experiment='{e(name)}'><td><a href='/experiments/{quote(name, safe='')}'>{e(name)}</a>"
                   f"{replay}</td><td>{e(x.get('dataset'))} <span class=dim>@{e(x.get('dataset_seq'))}</span></td>"
                   f"<td>{e(_variant(x.get('variant')))}</td><td class=r>{x.get('trials', 0):,}</td>"
                   f"<td class=r>{x.get('errors', 0):,}</td><td class=r>{usd(x.get('cost_usd'))}</td>"
                   f"<td>{scores}</td><td>{when(x.get('time'))}</td></tr>")
    for name, summary in summaries.items():
        if name.startswith("online:"):
            scores = "; ".join(f"{e(k)}: {e(v)}" for k, v in summary.items())
            out.append(f"<tr data-experiment='{e(name)}'><td><a href='/experiments/{quote(name, safe='')}'>"
                       f"{e(name)}</a></td><td class=dim>live runs</td><td></td><td></td><td></td><td></td>"
                       f"<td>{scores}</td><td></td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _cell(score: Any) -> str:
    if score is None:
        return "<td></td>"
    mark = "" if score.passed is None else "✓ " if score.passed else "✗ "
    value = "" if score.value is None else f"{score.value:.3g}"
    cls = "" if score.passed is None else " class=ok" if score.passed else " class=err"
    return f"<td{cls} title='{e(score.reason)}'>{mark}{e(value)}</td>"


def experiment_page(name: str, info: Mapping[str, Any] | None, trials: Sequence[Any], scores: Sequence[Any]) -> str:
    if info is None and not scores:
        return f"<h1>Experiment</h1><p class=err>no experiment {e(name)} in the eval view</p>"
    head = f"<h1>Experiment {e(name)}</h1>"
    if info is not None:
        head += (f"<p>dataset {e(info.get('dataset'))} as of seq {e(info.get('dataset_seq'))}; variant "
                 f"{e(_variant(info.get('variant'))) or '-'}; agent {e(info.get('agent'))}"
                 f"{' (replay: tool results from the log)' if info.get('replay') else ''}; "
                 f"{info.get('trials', 0)} trial(s), {info.get('errors', 0)} error(s), {usd(info.get('cost_usd'))}</p>")
    names = sorted({s.scorer for s in scores})
    by = {(s.item_id, s.scorer): s for s in scores}
    trial = {t.item_id: t for t in trials}
    items = sorted(set(trial) | {s.item_id for s in scores})
    out = [head, "<table class='totals experiment'><thead><tr><th>item</th><th>run</th><th>output</th>"
           "<th class=r>latency</th><th class=r>cost</th>", *(f"<th>{e(n)}</th>" for n in names),
           "</tr></thead><tbody>"]
    for item in items:
        t = trial.get(item)
        run = (t.run_id if t is not None else None) or next(
            (s.run_id for s in scores if s.item_id == item and s.run_id), None)
        link = f"<a href='/runs/{quote(run, safe='')}'>{e(run)}</a>" if run else ""
        output = "" if t is None else (f"<span class=err>{e((t.error or {}).get('type'))}</span>" if t.error
                                       else e(json.dumps(t.output, ensure_ascii=False)[:120]))
        out.append(f"<tr data-item='{e(item)}'><td>{e(item)}</td><td>{link}</td><td>{output}</td>"
                   f"<td class=r>{ms(t.latency_ms) if t else ''}</td><td class=r>{usd(t.cost_usd) if t else ''}</td>"
                   + "".join(_cell(by.get((item, n))) for n in names) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)
