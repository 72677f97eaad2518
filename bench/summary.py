"""The issue's targets against bench/results.json (written by the other bench scripts of this run).

Prints one line per target: the figure, the target and whether it is met. Exits 0 either way: a benchmark
reports, it does not gate (the machine is shared and noisy).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"


def rows(s: dict[str, Any]) -> list[tuple[str, float | None, str, bool | None]]:
    """(what, figure, target, met) for every target whose scenario ran."""
    out: list[tuple[str, float | None, str, bool | None]] = []
    if "catchup" in s:
        med = s["catchup"]["median_rows_per_s"]
        for mode in ("evict", "update"):
            vs_raw, vs_naive = med[mode] / med["raw"], med[mode] / med["naive"]
            out.append((f"catch-up {mode} vs raw library iteration", vs_raw, ">= 0.9x (stretch > 1.5x)", vs_raw >= 0.9))
            out.append((f"catch-up {mode} vs naive per-row loop", vs_naive, ">= 5x", vs_naive >= 5))
    if "small_txns" in s:
        for mode, ratio in s["small_txns"]["ratios"].items():
            out.append((f"single-row txns, {mode}, vs raw library", ratio, ">= 1.5x (moonshot 3x)", ratio >= 1.5))
        startup = sorted(s["small_txns"]["startup_s"])[len(s["small_txns"]["startup_s"]) // 2]
        out.append(("worker start-up to first heartbeat (s)", startup, "(small)", None))
    if "latency" in s:
        for rate, res in sorted(s["latency"]["latency"].items(), key=lambda kv: float(kv[0])):
            p99 = res["p99_ms"]
            out.append((f"commit-to-cache p99 at {rate} tx/s (ms)", p99, "<= 10 ms", p99 <= 10))
    if "sysbench" in s:
        for rate, res in s["sysbench"]["runs"].items():
            age = res["heartbeat_age_ms"]["p99"]
            label = f"sysbench {rate}" + (" tx/s" if rate != "unpaced" else "")
            out.append(
                (
                    f"{label}: heartbeat age p99 (ms)",
                    age,
                    "<= 250 ms" if rate == "300" else "(no target)",
                    age <= 250 if rate == "300" else None,
                )
            )
            c2c = res["commit_to_cache_ms"]["p99"]
            out.append((f"{label}: commit-to-cache p99 (ms)", c2c, "(no target)", None))
    if "verifier" in s:
        ratio = s["verifier"]["ratio_on_off"]
        out.append(("catch-up with the sampled verifier on vs off", ratio, ">= 0.95x", ratio >= 0.95))
        steady = s["verifier"]["steady"]["on"]
        out.append(("sampled verifier: keys checked/s under steady load", steady["checks_per_s"], "(measured)", None))
        out.append(
            ("sampled verifier: inconsistencies found", steady["inconsistencies"], "0", steady["inconsistencies"] == 0)
        )
    if "reader" in s:
        hit = s["reader"]["ratios"]["hit_vs_raw_get"]
        out.append(("reader hit vs raw GET", hit, "<= 1.15x", hit <= 1.15))
        miss = s["reader"]["ratios"]["miss_vs_naive"]
        out.append(("reader miss vs naive GET->SELECT->SET", miss, "(no target)", None))
        near = s["reader"]["ratios"].get("near_hit_vs_raw_get")
        if near is not None:
            out.append(("reader near-cache hit vs raw GET", near, "<= 0.1x", near <= 0.1))
            share = s["reader"]["near_cache"]["share_served_locally"]
            out.append(("near cache: share of hot lookups served locally", share, "(measured)", None))
            ryw = s["reader"]["read_your_writes_ms"]["p99"]
            out.append(("read-your-writes: commit to get_row p99 (ms)", ryw, "(measured)", None))
    if "memory" in s:
        for name, res in s["memory"].items():
            if isinstance(res, dict) and "peak_rss_mb" in res:
                rss = res["peak_rss_mb"]
                out.append((f"peak RSS, {name.replace('_', ' ')} (MB)", rss, "<= 150 MB", rss <= 150))
    if "verify" in s:
        v = s["verify"]
        out.append(
            (
                f"verify {v['keys']:,} keys, end to end (s)",
                v["median_seconds"],
                "well under 60 s",
                v["median_seconds"] < 60,
            )
        )
        out.append(("verify keys/s", v["keys_per_s"], "(no target)", None))
    if "cluster" in s:
        c = s["cluster"]
        for mode in ("evict", "update"):
            ratio = c[f"ratio_{mode}"]
            out.append((f"cluster catch-up {mode} vs one node", ratio, ">= 0.8x", ratio >= 0.8))
        for name, res in c["latency"].items():
            out.append((f"{name}: commit-to-cache p99 (ms)", res["p99_ms"], "(no target)", None))
        for name, res in c["reader_hit"].items():
            out.append((f"{name}: reader hit round trips", res["round_trips"], "(measured)", None))
    return out


def main() -> None:
    if not RESULTS.exists():
        sys.exit(f"{RESULTS} is missing: run the bench scripts first (make bench)")
    data = json.loads(RESULTS.read_text())
    print(f"\nbench summary ({data.get('date', '?')}, {data.get('machine', {}).get('cpu', '?')})")
    print(f"{'target':<46}{'figure':>10}  {'wanted':<26}{'met':>4}")
    for what, figure, target, met in rows(data.get("scenarios", {})):
        shown = "n/a" if figure is None else f"{figure:.2f}"
        flag = "" if met is None else ("yes" if met else "NO")
        print(f"{what:<46}{shown:>10}  {target:<26}{flag:>4}")


if __name__ == "__main__":
    main()
