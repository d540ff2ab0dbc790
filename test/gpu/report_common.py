"""Helpers shared by the GPU suites' reports: a results Markdown is rendered from the run's
measured JSON only, and its checks (expected outcome, measured outcome, pass/fail) decide the
suite's exit status. Nothing here is typed by hand into a report.

A check is a dict {"scenario", "check", "expected", "measured", "ok"}; cluster_suite.py's
checks carry "detail" instead of "expected"/"measured"."""
import json

DASH = "–"


def v(x, unit=""):
    """x with its unit, or a dash where nothing was measured."""
    return DASH if x is None else f"{x}{unit}"


def get(d, *keys):
    """d[k1][k2]...; None where a level is missing or not a dict."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def cell(x, limit=300):
    """x as one Markdown table cell: no pipes, no newlines, at most limit characters."""
    s = json.dumps(x, default=str) if isinstance(x, (dict, list)) else str(x)
    s = s.replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= limit else s[:limit] + "…"


def check(checks, scenario, name, expected, measured, ok):
    """Appends one check; ok is its verdict (measured against expected)."""
    checks.append({"scenario": scenario, "check": name, "expected": expected, "measured": measured, "ok": bool(ok)})


def passed(checks, errors=()):
    """True only when there are checks, all of them passed and nothing broke off."""
    return bool(checks) and all(c["ok"] for c in checks) and not errors


def verdict_line(checks, errors=()):
    n_ok = sum(c["ok"] for c in checks)
    word = "ALL CHECKS PASSED" if passed(checks, errors) else "FAILED"
    more = f"; errors: {len(errors)}" if errors else ""
    return f"**{word}**: {n_ok} of {len(checks)} checks passed{more}."


def checks_table(checks):
    out = ["| scenario | check | expected | measured | result |", "|---|---|---|---|---|"]
    for c in checks:
        out.append(f"| {c['scenario']} | {cell(c['check'])} | {cell(c['expected'])} | {cell(c['measured'])} | "
                   f"{'PASS' if c['ok'] else '**FAIL**'} |")
    return out


def errors_section(errors, limit=1500):
    """A fenced block per error (the tail of each), or nothing."""
    if not errors:
        return []
    out = ["## Errors", ""]
    for e in errors:
        text = e if isinstance(e, str) else json.dumps(e, default=str, indent=1)
        out += ["```", text.strip()[-limit:], "```", ""]
    return out


def load(path):
    with open(path) as f:
        return json.load(f)
