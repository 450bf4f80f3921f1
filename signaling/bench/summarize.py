#!/usr/bin/env python3
"""Medians of compare.sh rounds, and the median of the per-round ratios
ours / reference, as Markdown tables.

Usage: signaling/bench/summarize.py out.jsonl
"""
import json
import re
import statistics
import sys
from collections import defaultdict

runs = defaultdict(dict)  # round -> label -> report
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    report = json.loads(line)
    m = re.match(r"r(\d+) (.*)", report["label"])
    if m:
        runs[int(m.group(1))][m.group(2)] = report
rounds = sorted(runs)


def cpu_us_per_ack(r):
    if not r.get("server_cpu_percent") or not r.get("acked_per_sec"):
        return None
    return r["server_cpu_percent"] / 100 / r["acked_per_sec"] * 1e6


def per_round(label, field):
    out = []
    for n in rounds:
        r = runs[n].get(label)
        if r is None:
            out.append(None)
        elif callable(field):
            out.append(field(r))
        else:
            out.append(r.get(field))
    return out


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return [x / y if x is not None and y else None for x, y in zip(a, b)]


def fmt(v, digits=2):
    return "–" if v is None else f"{v:,.{digits}f}"


def fmt_all(values, digits=2):
    return ", ".join(fmt(v, digits) for v in values)


print(f"rounds: {len(rounds)}\n")
print("| round | disk 4 KiB write+fsync p50 / p99 ms (before, after) | load avg 1 min |")
print("| --- | --- | --- |")
for n in rounds:
    before, after = runs[n].get("disk", {}), runs[n].get("disk after", {})
    loads = [v["load_avg_1m"] for k, v in runs[n].items() if "load_avg_1m" in v]
    print(
        f"| {n} | {fmt(before.get('disk_write_fsync_p50_ms'))} / {fmt(before.get('disk_write_fsync_p99_ms'))}, "
        f"{fmt(after.get('disk_write_fsync_p50_ms'))} / {fmt(after.get('disk_write_fsync_p99_ms'))} "
        f"| {fmt(min(loads), 1)}–{fmt(max(loads), 1)} |"
    )

rates = sorted(
    {int(m.group(1)) for n in rounds for k in runs[n] for m in [re.match(r"ours (\d+)/s", k)] if m}
)
print()
print("| offered | server | acked/s | fan-out p50 / p99 ms (p99 per round) | ack p99 ms | CPU % | CPU µs per acked msg (per round) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for rate in rates:
    for server in ("ours", "node"):
        label = f"{server} {rate}/s"
        print(
            f"| {rate:,}/s | {'ours' if server == 'ours' else 'Node ref.'} "
            f"| {fmt(med(per_round(label, 'acked_per_sec')), 0)} "
            f"| {fmt(med(per_round(label, 'fanout_p50_ms')))} / {fmt(med(per_round(label, 'fanout_p99_ms')))} "
            f"({fmt_all(per_round(label, 'fanout_p99_ms'))}) "
            f"| {fmt(med(per_round(label, 'ack_p99_ms')))} "
            f"| {fmt(med(per_round(label, 'server_cpu_percent')), 0)} "
            f"| {fmt(med(per_round(label, cpu_us_per_ack)), 1)} ({fmt_all(per_round(label, cpu_us_per_ack), 1)}) |"
        )
    ours, node = f"ours {rate}/s", f"node {rate}/s"
    p99 = ratio(per_round(ours, "fanout_p99_ms"), per_round(node, "fanout_p99_ms"))
    cpu = ratio(per_round(ours, cpu_us_per_ack), per_round(node, cpu_us_per_ack))
    print(
        f"| {rate:,}/s | ours/ref. | | p99 {fmt(med(p99))} ({fmt_all(p99)}) | | "
        f"| {fmt(med(cpu))} ({fmt_all(cpu)}) |"
    )

print()
sat = {}
for server in ("ours", "node"):
    sat[server] = [
        max((r["acked_per_sec"] for k, r in runs[n].items() if k.startswith(f"{server} ") and "acked_per_sec" in r), default=None)
        for n in rounds
    ]
idle = {s: per_round(f"{s} idle", "rss_per_connection_kib") for s in ("ours", "node")}
print("| | ours | Node ref. | ours/ref. (per round) |")
print("| --- | --- | --- | --- |")
r = ratio(sat["ours"], sat["node"])
print(f"| most acked msgs/s at any offered rate | {fmt(med(sat['ours']), 0)} | {fmt(med(sat['node']), 0)} | {fmt(med(r))} ({fmt_all(r)}) |")
r = ratio(idle["ours"], idle["node"])
print(f"| RSS per idle connection, KiB | {fmt(med(idle['ours']))} | {fmt(med(idle['node']))} | {fmt(med(r))} ({fmt_all(r)}) |")
