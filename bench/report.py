"""Summaries, ratios, and the printed / markdown / JSON forms of a run."""

from __future__ import annotations

import math
import statistics
from typing import Any, Optional

#: (key, label) of every load figure, in print order.
FIGURES = [
    ("bare", "bare Tornado JSON handler (GET, wrk)"),
    ("signed", "Tornado get_signed_cookie handler (GET, wrk)"),
    ("pyjwt", "PyJWT decode per request (GET, wrk)"),
    ("verify", "SessionRequestHandler GET, no blacklisting (wrk)"),
    ("verify_bl", "SessionRequestHandler GET, blacklisting (wrk)"),
    ("create", "create: login POST (wrk)"),
    ("refresh", "refresh loop, 32 clients, latest token (async client)"),
    ("client_ceiling", "async client on the bare handler (its ceiling)"),
    ("refresh_engine", "in process: SessionEngine.refresh_session x32"),
    ("refresh_raw", "in process: raw aiopg UPDATE ... RETURNING x32"),
]
LABELS = dict(FIGURES)

#: (figure, baseline, target or None for a reference, row label)
RATIOS = [
    ("verify", "bare", 0.85, "verify, SessionRequestHandler GET, no blacklisting"),
    ("verify_bl", "bare", 0.6, "verify with blacklisting"),
    ("refresh", "bare", 0.5, "refresh loop, 32 clients, each with its latest token"),
    ("create", "bare", 0.5, "create (login)"),
    ("refresh_engine", "refresh_raw", 0.7, "refresh, in process, vs raw aiopg UPDATE ... RETURNING"),
    ("signed", "bare", None, "reference: Tornado get_signed_cookie (issue: 0.72)"),
    ("pyjwt", "bare", None, "reference: PyJWT decode per request (issue: 0.68)"),
    ("client_ceiling", "bare", None,
     "reference: refresh client's own ceiling (client on bare / wrk on bare)"),
]

BASELINE_LABEL = {
    "bare": "bare handler (wrk)",
    "refresh_raw": "raw aiopg loop",
}

MICRO = [
    ("access_sign", "access token sign (encode_access_token)", "pyjwt_encode"),
    ("access_decode_fn", "access token verify (decode_access_token)", "pyjwt_decode"),
    ("verify_engine", "access token verify, engine path, new token each time", "pyjwt_decode"),
    ("verify_engine_repeat", "access token verify, engine path, same token (cached?)", "pyjwt_decode"),
    ("refresh_encrypt", "refresh token encrypt (AES-SIV)", None),
    ("refresh_decrypt", "refresh token decrypt (AES-SIV)", None),
    ("pyjwt_encode", "PyJWT jwt.encode, same claims", None),
    ("pyjwt_decode", "PyJWT jwt.decode, same claims", None),
]


def _med(values: list[float]) -> float:
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else float("nan")


def summarize(rounds: list[dict]) -> dict:
    """Median and range over rounds of one figure."""
    if not rounds:
        return {}
    rps = [r["rps"] for r in rounds]
    cpu = [r["cpu_us_per_req"] for r in rounds]
    out = {
        "rounds": len(rounds),
        "rps_median": _med(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "p50_ms_median": _med([r["p50_ms"] for r in rounds]),
        "p99_ms_median": _med([r["p99_ms"] for r in rounds]),
        "p99_ms_max": max(r["p99_ms"] for r in rounds),
        "cpu_us_median": _med(cpu),
        "cpu_us_min": min(cpu),
        "cpu_us_max": max(cpu),
        "requests": sum(r["requests"] for r in rounds),
        "failed": sum(r["failed"] for r in rounds),
    }
    if all("other_cpu_cores" in r for r in rounds):
        out["other_cpu_cores_median"] = _med([r["other_cpu_cores"] for r in rounds])
    if "client_cpu_share" in rounds[0]:
        out["client_cpu_share_median"] = _med([r["client_cpu_share"] for r in rounds])
    return out


def ratios(results: dict[str, list[dict]], summaries: dict[str, dict]) -> list[dict]:
    rows = []
    for fig, base, target, label in RATIOS:
        s, b = summaries.get(fig), summaries.get(base)
        if not s or not b:
            continue
        value = s["rps_median"] / b["rps_median"] if b["rps_median"] else float("nan")
        paired = [
            f["rps"] / g["rps"]
            for f, g in zip(results[fig], results[base])
            if g["rps"]
        ]
        cpu_ratio = (b["cpu_us_median"] / s["cpu_us_median"]
                     if s["cpu_us_median"] and not math.isnan(s["cpu_us_median"]) else float("nan"))
        failed = s["failed"] + b["failed"]
        row: dict[str, Any] = {
            "figure": fig,
            "baseline": base,
            "label": label,
            "ratio": value,
            "paired_min": min(paired) if paired else float("nan"),
            "paired_max": max(paired) if paired else float("nan"),
            "cpu_ratio": cpu_ratio,
            "target": target,
            "failed": failed,
        }
        if target is not None:
            row["pass"] = bool(value >= target and failed == 0)
        rows.append(row)
    return rows


def micro_summary(micro_rounds: list[dict]) -> dict:
    if not micro_rounds:
        return {}
    out: dict[str, Any] = {}
    for key, _, _ in MICRO:
        values = [m[key] for m in micro_rounds if key in m]
        if values:
            out[key] = {"median": _med(values), "min": min(values), "max": max(values)}
    out["cache_attributes"] = micro_rounds[-1].get("cache_attributes", [])
    out["token_bytes"] = micro_rounds[-1].get("token_bytes")
    return out


# -- text ---------------------------------------------------------------------------


def _f(v: float, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:,.{digits}f}"


def figure_rows(summaries: dict[str, dict]) -> list[list[str]]:
    rows = []
    for key, label in FIGURES:
        s = summaries.get(key)
        if not s:
            continue
        rows.append([
            label,
            f"{_f(s['rps_median'])} ({_f(s['rps_min'])}-{_f(s['rps_max'])})",
            _f(s["p50_ms_median"], 2),
            f"{_f(s['p99_ms_median'], 2)} (max {_f(s['p99_ms_max'], 2)})",
            f"{_f(s['cpu_us_median'])} ({_f(s['cpu_us_min'])}-{_f(s['cpu_us_max'])})",
            _f(s.get("other_cpu_cores_median", float("nan")), 2),
            f"{s['failed']}/{s['requests']:,}",
        ])
    return rows


FIGURE_HEAD = ["figure", "req/s median (min-max)", "p50 ms", "p99 ms", "CPU us/req (min-max)",
               "other CPU", "failed/total"]
RATIO_HEAD = ["figure", "baseline", "ratio (median)", "per-round range", "CPU ratio", "target",
              "result"]


def ratio_rows(rows: list[dict], pools: Optional[dict], cleanup: Optional[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        if r["target"] is None:
            verdict, target = "reference", "-"
        else:
            verdict = "PASS" if r["pass"] else "FAIL"
            if r["failed"]:
                verdict += f" ({r['failed']} failed requests)"
            target = f">= {r['target']}"
        out.append([
            r["label"],
            BASELINE_LABEL.get(r["baseline"], r["baseline"]),
            _f(r["ratio"], 3),
            f"{_f(r['paired_min'], 3)}-{_f(r['paired_max'], 3)}",
            _f(r["cpu_ratio"], 3),
            target,
            verdict,
        ])
    if pools is not None:
        detail = ", ".join(
            f"{p['pool']}: {'ok' if p['ok'] else 'FAIL'} {p['elapsed_s']:.2f}s" for p in pools["pools"]
        )
        ok = all(p["ok"] for p in pools["pools"])
        out.append(["any pool size >= 1, 32 concurrent refreshes", "-", detail, "-", "-",
                    "completes, no deadlock, no timeout", "PASS" if ok else "FAIL"])
    if cleanup is not None:
        full = cleanup["expired"] >= 1_000_000 and cleanup["live"] >= 100_000
        size = f"{cleanup['expired']:,} expired + {cleanup['live']:,} live"
        value = (f"stall {cleanup['max_stall_ms']:.1f} ms"
                 f" ({cleanup.get('max_stall_on_cpu_ms', float('nan')):.1f} ms of it on CPU);"
                 f" cleanup {cleanup['cleanup_s']:.1f} s; {size}")
        good = cleanup["ok"] and cleanup["max_stall_ms"] < 50
        verdict = ("PASS" if good else "FAIL") + ("" if full else " (reduced size: not the target run)")
        out.append(["cleanup of 1M expired + 100k live rows", "-", value, "-", "-",
                    "longest IOLoop stall < 50 ms", verdict])
    return out


def micro_rows(micro: dict) -> list[list[str]]:
    rows = []
    for key, label, vs in MICRO:
        m = micro.get(key)
        if not m:
            continue
        rel = "-"
        if vs and micro.get(vs):
            rel = f"{m['median'] / micro[vs]['median']:.2f}x {vs.replace('_', ' ')}"
        rows.append([label, _f(m["median"], 1), f"{_f(m['min'], 1)}-{_f(m['max'], 1)}", rel])
    return rows


MICRO_HEAD = ["operation", "us/op median", "range", "vs PyJWT"]


def text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def md_table(head: list[str], rows: list[list[str]]) -> str:
    def esc(c: str) -> str:
        return str(c).replace("|", "\\|")

    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
