"""Generate the docs' pages that must not drift from their source:

- ``docs/settings.md``: every command's ``--help``, as the CLIs print it (the single source of the flags' text);
- ``kfold/core/presets/techniques.json``: the techniques' measurements (benchmarks/techniques.py) as data for the
  planner;
- the results tables: each ``benchmarks/results/NAME.json`` (written by a benchmark script that drives the product's
  commands, or a simulation of the report's intervals) becomes a table between ``<!-- results:NAME -->`` and
  ``<!-- /results -->`` in ``docs/results.md``, ``docs/techniques.md``, ``docs/metrics.md`` and ``README.md``.

``python docs/generate.py`` rewrites them; ``python docs/generate.py --check`` exits 1 naming each file that differs
from what it would write (the test suite runs the check).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TABLE_PAGES = (ROOT / "docs" / "results.md", ROOT / "docs" / "techniques.md", ROOT / "docs" / "metrics.md",
               ROOT / "README.md")
#: (title, program, argv) of every command in the settings reference
COMMANDS = [
    ("kfold run", "kfold", ["run"]), ("kfold auto", "kfold", ["auto"]), ("kfold check-data", "kfold", ["check-data"]),
    ("kfold report", "kfold", ["report"]), ("kfold predict", "kfold", ["predict"]), ("kfold pretrain", "kfold", ["pretrain"]),
    ("ensemble compare", "ensemble", ["compare"]), ("ensemble blend", "ensemble", ["blend"]),
    ("ensemble check", "ensemble", ["check"]), ("tuning search", "tuning", ["search"]),
    ("tuning best", "tuning", ["best"]), ("tuning dashboard", "tuning", ["dashboard"]),
]


def help_text(program: str, argv: list[str]) -> str:
    """What ``program argv --help`` prints (80 columns, so the page does not depend on the terminal)."""
    from ensemble.cli import main as ensemble_main
    from kfold.cli import main as kfold_main
    from tuning.cli import main as tuning_main

    main = {"kfold": kfold_main, "ensemble": ensemble_main, "tuning": tuning_main}[program]
    out = io.StringIO()
    os.environ["COLUMNS"] = "80"
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*argv, "--help"])
    return out.getvalue().rstrip()


def settings_page() -> str:
    lines = ["# Settings reference", "",
             "Generated from each command's `--help` by `python docs/generate.py` (the CLIs are the single source of",
             "these texts; the test suite checks this page is current). Every `kfold run` setting is also a key of",
             "a `--config` file and a preset.", ""]
    for title, program, argv in COMMANDS:
        lines += [f"## `{title}`", "", "```text", help_text(program, argv), "```", ""]
    return "\n".join(lines)


def _num(value, fmt: str = ".2f") -> str:
    return "" if value is None else format(value, fmt) if isinstance(value, (int, float)) else str(value)


def _diff(d: dict | None) -> str:
    """``+0.42 [-0.31, +1.10]``: a paired difference and its 95% interval."""
    return "" if not d else f"{d['diff']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]"


def table(record: dict) -> str:
    """The markdown of one results file: its table, then the machine, the command(s) and any note."""
    rows = record["rows"]
    first = rows[0]
    if "arm" in first:  # benchmarks/techniques.py: each arm against the first
        base = first["arm"]
        metrics = [k[4:] for k in first if k.startswith("oof_") and "_vs_" not in k]
        tests = [k[5:] for k in first if k.startswith("test_") and "_vs_" not in k]
        head = ["arm", "flags", "minutes", "cost per step", *[f"OOF {m}" for m in metrics],
                *[f"OOF {m} vs `{base}` [95%]" for m in metrics], *[f"test {m}" for m in tests],
                *[f"test {m} vs `{base}` [95%]" for m in tests]]
        pretrained = any(r.get("pretrain") for r in rows)
        if pretrained:
            head.insert(4, "pretraining: minutes, MLM loss per epoch, test text")
        body = [[f"`{r['arm']}`", f"`{r['flags']}`" if r["flags"] else "", _num(r["minutes"], ".1f"),
                 _num(r.get("cost_per_step")) + ("x" if r.get("cost_per_step") else ""),
                 *[_num(r[f"oof_{m}"]) for m in metrics], *[_diff(r.get(f"oof_{m}_vs_{base}")) for m in metrics],
                 *[_num(r[f"test_{m}"]) for m in tests], *[_diff(r.get(f"test_{m}_vs_{base}")) for m in tests]]
                for r in rows]
        if pretrained:
            for r, cells in zip(rows, body):
                pre = r.get("pretrain")
                cells.insert(4, "" if not pre else f"{pre['minutes']:.1f}; {', '.join(f'{x:.2f}' for x in pre['mlm_loss'])}; "
                             + ("yes" if pre["test_text_used"] else "no"))
        if any(r.get("pseudo") for r in rows):
            head.insert(4, "pseudo rows per fold (refit); their labels' test accuracy")
            for r, cells in zip(rows, body):
                cells.insert(4, _pseudo_cell(r.get("pseudo")))
    elif "coverage" in first:  # benchmarks/interval_coverage.py
        head = ["setting", "rows", "metric", "plain bootstrap (rows)", "stratified (label counts fixed)", "truth"]
        cells: dict = {}
        for r in rows:
            cells.setdefault((r["setting"], r["n"], r["metric"]), {})[r["scheme"]] = r
        body = [[setting, str(n), metric, *[_coverage_cell(by.get(s)) for s in ("plain", "stratified")],
                 _num(next(iter(by.values()))["truth"])] for (setting, n, metric), by in cells.items()]
    elif "budget" in first:  # benchmarks/auto_budgets.py
        head = ["`--budget`", "runs", "chosen blend", "honest OOF", "best run alone", "test (labelled file)", "wall"]
        body = [[f"`{r['budget']}`", str(len(r.get("members", []))), r.get("method", ""), _num(r.get("honest")),
                 _num(r.get("best_member")), _num(r.get("test", {}).get(r.get("metric", ""))),
                 f"{r['wall_minutes']:.1f} min"] for r in rows]
    elif "honest" in first:  # benchmarks/backbones.py auto
        extra = [k for k in ("micro_f1", "auprc") if k in first.get("best_run_oof", {})]
        head = ["backbone", "probe train rows/s", "runs trained", "chosen blend", f"honest OOF {first['metric']}",
                *[f"best run's OOF {k}" for k in extra], "wall"]
        body = [[f"`{r['backbone']}`", _num(r.get("probe_rows_per_s"), ".1f"), str(r["runs"]), r["method"],
                 _num(r["honest"]), *[_num(r["best_run_oof"][k]) for k in extra],
                 _num(r.get("wall_min"), ".1f") + " min"] for r in rows]
    else:  # benchmarks/backbones.py run
        scores = [k for k in ("accuracy", "micro_f1", "auprc", "semeval") if k in first]
        head = ["backbone", *[f"OOF {k}" for k in scores], "train rows/s", "fold wall", "tokens per row (median)"]
        body = [[f"`{r['backbone']}`", *[_num(r[k]) for k in scores], _num(r["train_rows_per_s"], ".1f"),
                 f"{r['fold_wall_s']} s", str(r["tokens_per_row"])] for r in rows]
    out = [f"**{record['title']}**" if record.get("title") else "", "",
           "| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in body]
    out += ["", f"Machine: {record['machine']}; measured {record['measured']}. "
            + ("Command: " if len(record["commands"]) == 1 else "Commands: ")
            + "; ".join(f"`{c}`" for c in record["commands"]) + "."]
    if record.get("note"):
        out += ["", record["note"]]
    return "\n".join(line for line in out[(0 if out[0] else 2):])


def _pseudo_cell(pseudo: dict | None) -> str:
    """``2713, 2710 (2717); 88.1-97.0%``: a pseudo-labelled arm's rows per fold and for the refit, and the range of
    their labels' accuracy on the test file's own labels."""
    if not pseudo:
        return ""
    parts = pseudo["parts"]
    folds = [p["rows"] for name, p in parts.items() if name != "refit"]
    acc = [p["accuracy_on_test_labels"] for p in parts.values() if p.get("accuracy_on_test_labels") is not None]
    return (f"{', '.join(map(str, folds))} ({parts['refit']['rows']})"
            + (f"; {100 * min(acc):.1f}-{100 * max(acc):.1f}%" if acc else ""))


def _coverage_cell(r: dict | None) -> str:
    """``93.3% (2.8% below, 3.9% above)``: how often the 95% interval held the truth, and on which side it missed."""
    return "" if not r else f"{r['coverage']:.1f}% ({r['too_low']:.1f}% below, {r['too_high']:.1f}% above)"


def headline(record: dict) -> str:
    """One results file in one cell: each row's main figure."""
    rows = record["rows"]
    if "coverage" in rows[0]:
        from kfold.report import scheme_for

        used = [r["coverage"] for r in rows if r["scheme"] == scheme_for(r["metric"])]
        fixed = [r["coverage"] for r in rows if r["scheme"] == "stratified" and r["metric"] == "accuracy"]
        return (f"the report's 95% intervals held the truth in **{min(used):.1f}-{max(used):.1f}%** of replicates; "
                f"with label counts held fixed (the scheme before), accuracy's in {min(fixed):.1f}-{max(fixed):.1f}%")
    if "arm" in rows[0]:
        metric = next(k[4:] for k in rows[0] if k.startswith("oof_") and "_vs_" not in k)
        base = rows[0]["arm"]
        return "; ".join(f"`{r['arm']}` OOF {metric} **{_diff(r[f'oof_{metric}_vs_{base}'])}**"
                         + (f" at {r['cost_per_step']:.2f}x per step" if r.get("cost_per_step") else "")
                         + (f" after {r['pretrain']['minutes']:.0f} min of pretraining" if r.get("pretrain") else "")
                         for r in rows[1:])
    if "budget" in rows[0]:
        return "; ".join(f"`--budget {r['budget']}`: test {r['metric']} **{r['test'][r['metric']]:.2f}**, honest OOF "
                         f"{r['honest']:.2f}, {r['wall_minutes']:.1f} min" for r in rows)
    if "honest" in rows[0]:
        return "; ".join(f"`{r['backbone']}`: honest OOF {r['metric']} **{r['honest']:.2f}** ({r['runs']} run(s) "
                         f"in {_num(r.get('wall_min'), '.1f')} min)" for r in rows)
    key = next(k for k in ("semeval", "micro_f1", "accuracy") if k in rows[0])
    return "; ".join(f"`{r['backbone']}`: OOF {key} **{r[key]:.2f}**" for r in rows)  # speeds: in the full table


def summary(records: dict[str, dict], names: list[str]) -> str:
    """The README's one results table: a row per results file (what, result, machine, command)."""
    out = ["| what | result | machine | command |", "|---|---|---|---|"]
    for name in names:
        r = records[name]
        command = r["commands"][-1] if len(r["commands"]) == 1 else r["commands"][-1] + " (and the others: docs)"
        out.append(f"| {r['title']} | {headline(r)} | {r['machine']} | `{command}` |")
    return "\n".join(out)


def fill_tables(text: str, records: dict[str, dict], path: Path) -> str:
    """Every ``<!-- results:NAME -->`` block of ``text`` replaced by NAME's table; ``<!-- results:summary A,B -->``
    by the one-row-per-file summary of A and B."""

    def block(match: re.Match) -> str:
        name = match.group(1)
        if name.startswith("summary "):
            names = name.split(" ", 1)[1].split(",")
            missing = [n for n in names if n not in records]
            if missing:
                raise SystemExit(f"{path}: <!-- results:{name} --> names no file {RESULTS / (missing[0] + '.json')}")
            return f"<!-- results:{name} -->\n{summary(records, names)}\n<!-- /results -->"
        if name not in records:
            raise SystemExit(f"{path}: <!-- results:{name} --> names no file {RESULTS / (name + '.json')}")
        return f"<!-- results:{name} -->\n{table(records[name])}\n<!-- /results -->"

    return re.sub(r"<!-- results:([\w ,-]+?) -->.*?<!-- /results -->", block, text, flags=re.S)


#: The techniques' measurements as data, beside the presets, for ``kfold auto``'s planner (one entry per arm).
TECHNIQUES = ROOT / "kfold" / "core" / "presets" / "techniques.json"


def _arm_command(record: dict, row: dict) -> str:
    """The command of an arm (its ``--tag``), after the pretraining that made its backbone when it has one."""
    run = next(c for c in record["commands"] if f" --tag {row['arm']} " in c + " ")
    folder = (row.get("pretrain") or {}).get("folder")
    made = [c for c in record["commands"] if c.startswith("kfold pretrain ") and folder
            and re.search(rf"--out \S*/{re.escape(folder)}( |$)", c)]
    return "; ".join(made + [run])


def techniques_record(records: dict[str, dict]) -> str:
    """Every technique measured against the same run without it (benchmarks/techniques.py results), one entry per
    arm: the task type (directed labels like SemEval's, or not, and how many labels), the paired differences with
    their intervals, the cost per step and minutes, and where and how it was measured."""
    entries = []
    for name, record in records.items():
        rows = record["rows"]
        if "arm" not in rows[0]:
            continue
        base = rows[0]
        for r in rows[1:]:
            entries.append({
                "technique": r["arm"], "flags": r["flags"], "baseline": base["arm"], "data": record["data"],
                "directed_labels": r["directed"], "labels": r["labels"], "rows": r["rows"],
                "differences": {k: v for k, v in r.items() if "_vs_" in k},
                "cost_per_step": r.get("cost_per_step"), "pretrain": r.get("pretrain"), "pseudo": r.get("pseudo"),
                "minutes": r["minutes"], "baseline_minutes": base["minutes"],
                "machine": record["machine"], "measured": record["measured"],
                "source": f"benchmarks/results/{name}.json", "command": _arm_command(record, r)})
    return json.dumps({"about": "Generated by docs/generate.py from benchmarks/results (benchmarks/techniques.py): "
                                "each technique against the same run without it; differences are paired bootstraps "
                                "(diff, 95% interval, share of resamples where the technique is better).",
                       "techniques": entries}, indent=1, ensure_ascii=False) + "\n"


def outputs() -> dict[Path, str]:
    """Each generated file and the text it should have."""
    records = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(RESULTS.glob("*.json"))}
    out = {ROOT / "docs" / "settings.md": settings_page() + "\n", TECHNIQUES: techniques_record(records)}
    for page in TABLE_PAGES:
        out[page] = fill_tables(page.read_text(encoding="utf-8"), records, page)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a generated file is stale")
    args = ap.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            stale.append(path)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    verb = "stale (run python docs/generate.py)" if args.check else "written"
    for path in stale:
        print(f"{path.relative_to(ROOT)}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
