#!/usr/bin/env python3
"""Benchmark: coturn's turnutils_uclient (client-to-client mode) against
videochat-turn and against coturn's turnserver, same flags, alternating runs.

Reports medians of transmit time, lost packets, server CPU seconds and peak
RSS, and the ratios ours/coturn. Usage:

    cargo build --release -p videochat-turn
    python3 turn-server/bench/compare_coturn.py --load B --runs 5
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

LOADS = {
    "A": ["-y", "-c", "-m", "100", "-n", "1000", "-l", "172", "-z", "1"],
    "B": ["-y", "-c", "-m", "400", "-n", "500", "-l", "172", "-z", "1"],
}
SECRET = "bench-secret"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    # A port free on both UDP and TCP.
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def cpu_and_rss(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    rss_kb = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                rss_kb = int(line.split()[1])
    return cpu, rss_kb / 1024.0


def udp_rcvbuf_errors():
    # Machine-wide count of datagrams dropped because a socket buffer was full
    # (client and server sockets alike): tells buffer overflow from other loss.
    with open("/proc/net/snmp") as f:
        rows = [l.split() for l in f if l.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def socket_drops(server_pid):
    """Datagrams dropped on full receive buffers, (server's sockets, all others)."""
    out = subprocess.run(["ss", "-uapmn"], capture_output=True, text=True).stdout
    server = other = 0
    for block in re.split(r"\n(?=\S)", out):
        m = re.search(r"skmem:\([^)]*\bd(\d+)\)", block)
        if not m:
            continue
        if f"pid={server_pid}," in block:
            server += int(m.group(1))
        else:
            other += int(m.group(1))
    return server, other


def start(kind, port, binary, extra=()):
    if kind == "ours":
        cmd = [binary, "--listen-address", "127.0.0.1", "--listen-port", str(port),
               "--secret", SECRET, "--realm", "videochat", "--allow-loopback-peers",
               "--relay-min-port", "20000", "--relay-max-port", "29999",
               "--max-allocations-per-user", "0", "--max-allocations", "0", "--no-admin",
               "--log", "warn", *extra]
    else:
        cmd = ["turnserver", "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
               "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=videochat",
               "--allow-loopback-peers", "--no-cli", "--relay-ip=127.0.0.1",
               "--min-port=20000", "--max-port=29999", "--no-tls", "--no-dtls",
               "--log-file=/dev/null", "--simple-log"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if p.poll() is not None:
        sys.exit(f"{kind} server exited at start: {cmd}")
    return p


def run_once(kind, load, binary, extra=()):
    port = free_port()
    server = start(kind, port, binary, extra)
    try:
        cmd = ["turnutils_uclient", *LOADS[load], "-W", SECRET, "-u", "bench",
               "-p", str(port), "127.0.0.1"]
        drops_before = udp_rcvbuf_errors()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        drops = udp_rcvbuf_errors() - drops_before
        text = out.stdout + out.stderr
        cpu, rss = cpu_and_rss(server.pid)
        server_drops, _ = socket_drops(server.pid)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    t = re.findall(r"Total transmit time is (\d+)", text)
    lost = re.findall(r"Total lost packets (\d+) \(([\d.]+)%\)", text)
    sent = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", text)
    if not t or not lost:
        sys.exit(f"unexpected uclient output for {kind}:\n{text[-2000:]}")
    return {
        "time": int(t[-1]),
        "lost": int(lost[-1][0]),
        "lost_pct": float(lost[-1][1]),
        "sent": int(sent[-1][0]) if sent else 0,
        "cpu": cpu,
        "rss": rss,
        "rcvbuf_drops": drops,
        "server_drops": server_drops,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", choices=sorted(LOADS), default="B")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/videochat-turn"))
    ap.add_argument("--ours-arg", action="append", default=[],
                    help="extra flag for videochat-turn, e.g. --ours-arg=--udp-listeners=1")
    args = ap.parse_args()
    for tool in ("turnutils_uclient", "turnserver"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: install Debian package coturn")
    results = {"ours": [], "coturn": []}
    for i in range(args.runs):
        order = ("ours", "coturn") if i % 2 == 0 else ("coturn", "ours")
        for kind in order:
            r = run_once(kind, args.load, args.binary, args.ours_arg)
            results[kind].append(r)
            print(f"run {i + 1} {kind:6} time={r['time']}s lost={r['lost']} ({r['lost_pct']}%) "
                  f"cpu={r['cpu']:.2f}s rss={r['rss']:.1f}MiB rcvbuf_drops={r['rcvbuf_drops']} (at server sockets {r['server_drops']}) "
                  f"load={os.getloadavg()[0]:.1f}", flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("time", "lost", "lost_pct", "cpu", "rss")}
           for k, v in results.items()}
    print(f"\nload {args.load}: uclient {' '.join(LOADS[args.load])}, {args.runs} runs, medians")
    print("| server | transmit time (s) | lost packets | server CPU (s) | peak RSS (MiB) |")
    print("| --- | --- | --- | --- | --- |")
    for k in ("ours", "coturn"):
        m = med[k]
        print(f"| {k} | {m['time']:g} | {m['lost']:g} ({m['lost_pct']:g} %) | {m['cpu']:.2f} | {m['rss']:.1f} |")
    ratio = lambda key: med["ours"][key] / med["coturn"][key] if med["coturn"][key] else float("nan")
    print(f"| ours/coturn | {ratio('time'):.2f} | - | {ratio('cpu'):.2f} | {ratio('rss'):.2f} |")


if __name__ == "__main__":
    main()
