#!/usr/bin/env python3
"""Benchmark: coturn's turnutils_uclient (client-to-client mode) against
videochat-turn and against coturn's turnserver, same flags, alternating runs.

Reports medians of transmit time, lost packets, server CPU seconds, server
CPU per relayed datagram and peak RSS, and the ratios ours/coturn. Usage:

    cargo build --release -p videochat-turn
    python3 turn-server/bench/compare_coturn.py --load B --runs 5
    # the same over TLS (turns:) for both servers, certificate made here:
    python3 turn-server/bench/compare_coturn.py --load B --runs 5 --tls
    # saturation: the largest session count each server carries without loss
    python3 turn-server/bench/compare_coturn.py --sweep 400,800,1200,1600 --runs 3
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
import tempfile
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


def make_cert(directory):
    """A self-signed certificate for 127.0.0.1 (uclient does not verify it)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def start(kind, port, binary, extra=(), tls=None):
    if kind == "ours":
        cmd = [binary, "--listen-address", "127.0.0.1", "--listen-port", str(port),
               "--secret", SECRET, "--realm", "videochat", "--allow-loopback-peers",
               "--relay-min-port", "20000", "--relay-max-port", "29999",
               "--max-allocations-per-user", "0", "--max-allocations", "0", "--no-admin",
               # uclient opens every TCP/TLS session from one address; coturn
               # has no per-address cap, so none here either.
               "--max-connections-per-address", "0",
               "--log", "warn", *extra]
        if tls:
            cmd += ["--tls-cert-file", tls[0], "--tls-key-file", tls[1],
                    "--tls-ports", str(tls[2])]
    else:
        cmd = ["turnserver", "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
               "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=videochat",
               "--allow-loopback-peers", "--no-cli", "--relay-ip=127.0.0.1",
               "--min-port=20000", "--max-port=29999", "--no-dtls",
               "--log-file=/dev/null", "--simple-log"]
        if tls:
            cmd += [f"--cert={tls[0]}", f"--pkey={tls[1]}", f"--tls-listening-port={tls[2]}"]
        else:
            cmd += ["--no-tls"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if p.poll() is not None:
        sys.exit(f"{kind} server exited at start: {cmd}")
    return p


def run_once(kind, flags, binary, extra=(), tls=None):
    port = free_port()
    if tls:
        # TLS on the port uclient uses; the plain listeners move to another.
        tls = (tls[0], tls[1], port)
        server = start(kind, free_port(), binary, [*extra, "--no-tcp"], tls)
    else:
        server = start(kind, port, binary, extra)
    load_before = os.getloadavg()[0]
    try:
        cmd = ["turnutils_uclient", *flags, "-W", SECRET, "-u", "bench",
               "-p", str(port), "127.0.0.1"]
        if tls:
            cmd[1:1] = ["-t", "-S"]
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
        "recv": int(sent[-1][1]) if sent else 0,
        "cpu_us": cpu / int(sent[-1][1]) * 1e6 if sent and int(sent[-1][1]) else float("nan"),
        "rcvbuf_drops": drops,
        "server_drops": server_drops,
        "load": max(load_before, os.getloadavg()[0]),
    }


def line(i, kind, r):
    return (f"run {i + 1} {kind:6} time={r['time']}s lost={r['lost']} ({r['lost_pct']}%) "
            f"cpu={r['cpu']:.2f}s cpu/datagram={r['cpu_us']:.2f}us rss={r['rss']:.1f}MiB "
            f"rcvbuf_drops={r['rcvbuf_drops']} (at server sockets {r['server_drops']}) "
            f"load={r['load']:.1f}")


def compare(flags, runs, binary, extra, tls):
    results = {"ours": [], "coturn": []}
    for i in range(runs):
        order = ("ours", "coturn") if i % 2 == 0 else ("coturn", "ours")
        for kind in order:
            r = run_once(kind, flags, binary, extra, tls)
            results[kind].append(r)
            print(line(i, kind, r), flush=True)
    return results


def sweep(levels, messages, runs, binary, extra):
    """Per session count, each server's runs alternate; a level is carried
    when the median run loses nothing."""
    carried = {"ours": 0, "coturn": 0}
    for m in levels:
        flags = ["-y", "-c", "-m", str(m), "-n", str(messages), "-l", "172", "-z", "1"]
        results = compare(flags, runs, binary, extra, None)
        for kind in ("ours", "coturn"):
            lost = statistics.median(r["lost"] for r in results[kind])
            print(f"level {m}x{messages} {kind}: median lost {lost:g}, "
                  f"runs lost {[r['lost'] for r in results[kind]]}", flush=True)
            if lost == 0:
                carried[kind] = max(carried[kind], m * messages)
    print(f"\nlargest load carried with zero loss (median of {runs}): "
          f"ours {carried['ours']}, coturn {carried['coturn']}, ratio "
          f"{carried['ours'] / carried['coturn'] if carried['coturn'] else float('nan'):.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", choices=sorted(LOADS), default="B")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/videochat-turn"))
    ap.add_argument("--ours-arg", action="append", default=[],
                    help="extra flag for videochat-turn, e.g. --ours-arg=--udp-listeners=1")
    ap.add_argument("--tls", action="store_true", help="both servers over TLS (uclient -t -S)")
    ap.add_argument("--sweep", help="saturation: comma-separated session counts (-m)")
    ap.add_argument("--messages", type=int, default=500, help="messages per session in --sweep")
    args = ap.parse_args()
    for tool in ("turnutils_uclient", "turnserver"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: install Debian package coturn")
    if args.sweep:
        sweep([int(m) for m in args.sweep.split(",")], args.messages, args.runs,
              args.binary, args.ours_arg)
        return
    with tempfile.TemporaryDirectory() as d:
        tls = make_cert(d) if args.tls else None
        results = compare(LOADS[args.load], args.runs, args.binary, args.ours_arg, tls)
    metrics = ("time", "lost", "lost_pct", "cpu", "cpu_us", "rss")
    med = {k: {m: statistics.median(r[m] for r in v) for m in metrics}
           for k, v in results.items()}
    over = " over TLS" if args.tls else ""
    print(f"\nload {args.load}{over}: uclient {' '.join(LOADS[args.load])}, {args.runs} runs, medians")
    print("| server | transmit time (s) | lost packets | server CPU (s) | CPU per datagram (us) | peak RSS (MiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k in ("ours", "coturn"):
        m = med[k]
        print(f"| {k} | {m['time']:g} | {m['lost']:g} ({m['lost_pct']:g} %) | {m['cpu']:.2f} | "
              f"{m['cpu_us']:.2f} | {m['rss']:.1f} |")
    ratio = lambda key: med["ours"][key] / med["coturn"][key] if med["coturn"][key] else float("nan")
    print(f"| ours/coturn | {ratio('time'):.2f} | - | {ratio('cpu'):.2f} | {ratio('cpu_us'):.2f} | {ratio('rss'):.2f} |")


if __name__ == "__main__":
    main()
