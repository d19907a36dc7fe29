#!/usr/bin/env python3
"""Helpers of tests/scale/run.sh (python3 standard library only).

  scale.py sink --host H --port-file F --log L --control-dir D
      A webhook on H (any free port, written to F). A POST to /inbound/<replica> is one
      delivery by that replica; one JSON line per POST goes to L:
        {"t", "by": <replica of the URL>, "xid": X-Mxhook-Id, "test_id": the message's
         X-Scale-Test-Id, "received_by": the host in mxhook's Received: header,
         "client_ip": the client address in it, "status": the answer}
      The answer is 200, or 503 while D holds a file named refuse-<replica> or refuse-all.

  scale.py load --port P --count N --concurrency C --phase NAME --out F [--size B]
      N messages of about B bytes to 127.0.0.1:P from C threads, at most --per-session
      messages per SMTP session. Each carries a unique test id (header X-Scale-Test-Id,
      Subject and body). A session that fails (refused, cut, 4xx, timeout) is closed and
      the message is sent again on a new one, like an MTA (at least once), up to
      --max-attempts times. One JSON line per 250 goes to F as it happens
      ({"test_id", "queue_id", "t", "attempts"}); a summary JSON object to stdout. With
      --at-acks K --at-acks-cmd CMD --at-acks-file M: CMD runs (shell) right after the K-th
      250, and M gets {"t", "rc", "acked"}.

  scale.py delivered --log L --acks F... : exit 0 when every acknowledged test id has a
      200 in L; prints how many are missing.

  scale.py report ...: checks the whole run and prints the Markdown table (see run.sh).
"""
import argparse
import collections
import json
import os
import random
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECEIVED = re.compile(
    rb"^Received: from \S+ \((?:\S+ )?\[?(?:IPv6:)?([0-9A-Fa-f.:]+)\]?\)\r?\n"
    rb"(?:\s+\([^)]*\)\r?\n)?\s+by (\S+) \(mxhook\)",
    re.M,
)
TEST_ID = re.compile(rb"^X-Scale-Test-Id: (\S+)", re.M)


# ---- the webhook sink -------------------------------------------------------------------
def sink(args) -> int:
    log = open(args.log, "a", encoding="utf-8", buffering=1)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *fmt_args):
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            by = self.path.rstrip("/").rsplit("/", 1)[-1]
            form = urllib.parse.parse_qs(body, keep_blank_values=True)
            mime = form.get(b"body-mime", [b""])[0]
            head = mime.split(b"\r\n\r\n", 1)[0]
            received = RECEIVED.search(head)
            test_id = TEST_ID.search(head)
            refused = os.path.exists(os.path.join(args.control_dir, "refuse-all")) or os.path.exists(
                os.path.join(args.control_dir, "refuse-" + by)
            )
            status = 503 if refused else 200
            record = {
                "t": round(time.time(), 3),
                "by": by,
                "xid": self.headers.get("X-Mxhook-Id", ""),
                "test_id": test_id.group(1).decode() if test_id else "",
                "received_by": received.group(2).decode() if received else "",
                "client_ip": received.group(1).decode() if received else "",
                "status": status,
            }
            with lock:
                log.write(json.dumps(record) + "\n")
            reply = b"ok\n" if status == 200 else b"refused for the test\n"
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer((args.host, 0), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    tmp = args.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)
    try:
        server.serve_forever(poll_interval=0.2)
    except SystemExit:
        pass
    return 0


# ---- the SMTP load client ---------------------------------------------------------------
def message(test_id: str, size: int) -> bytes:
    head = (
        f"From: Scale Test <load@client.example.org>\r\n"
        f"To: <inbox@example.com>\r\n"
        f"Subject: scale test {test_id}\r\n"
        f"Message-ID: <{test_id}@client.example.org>\r\n"
        f"X-Scale-Test-Id: {test_id}\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"test id {test_id}\r\n"
    )
    line = "The quick brown fox jumps over the lazy dog, again and again, for the scale test.\r\n"
    body = []
    length = len(head)
    while length + len(line) <= size:
        body.append(line)
        length += len(line)
    return (head + "".join(body)).encode("ascii")


def load(args) -> int:
    run = args.run_id
    ids = [f"{args.phase}-{i:05d}-{run}" for i in range(args.count)]
    todo = collections.deque(ids)
    todo_lock = threading.Lock()
    out = open(args.out, "a", encoding="utf-8", buffering=1)
    out_lock = threading.Lock()
    stats = collections.Counter()
    stats_lock = threading.Lock()
    failures = []
    start = time.monotonic()
    wall_start = time.time()
    ack_times = []

    def bump(key, n=1):
        with stats_lock:
            stats[key] += n

    def next_id():
        with todo_lock:
            return todo.popleft() if todo else None

    def worker(n: int):
        rng = random.Random(n)
        session = None
        sent_on_session = 0
        test_id = next_id()
        attempts = 0
        while test_id is not None:
            try:
                if session is None:
                    bump("sessions")
                    session = smtplib.SMTP(args.host, args.port, local_hostname="client.example.org", timeout=args.timeout)
                    code, _ = session.ehlo()
                    if code != 250:
                        raise smtplib.SMTPResponseException(code, "EHLO refused")
                    sent_on_session = 0
                attempts += 1
                code, reply = session.mail("load@client.example.org")
                if code != 250:
                    raise smtplib.SMTPResponseException(code, reply)
                code, reply = session.rcpt("inbox@example.com")
                if code not in (250, 251):
                    raise smtplib.SMTPResponseException(code, reply)
                code, reply = session.data(message(test_id, args.size))
                if code != 250:
                    raise smtplib.SMTPResponseException(code, reply)
                m = re.search(rb"Queued as (\S+)", reply)
                now = time.time()
                with out_lock:
                    out.write(
                        json.dumps(
                            {"test_id": test_id, "queue_id": m.group(1).decode() if m else "", "t": round(now, 4), "attempts": attempts}
                        )
                        + "\n"
                    )
                    ack_times.append(now)
                bump("acked")
                if args.at_acks and stats["acked"] == args.at_acks:
                    threading.Thread(target=at_acks, daemon=True).start()
                if attempts > 1:
                    bump("acked_after_retry")
                sent_on_session += 1
                test_id, attempts = next_id(), 0
                if sent_on_session >= args.per_session or test_id is None:
                    try:
                        session.quit()
                    except (smtplib.SMTPException, OSError):
                        pass
                    session = None
            except (smtplib.SMTPException, OSError) as error:
                permanent = isinstance(error, smtplib.SMTPResponseException) and 500 <= error.smtp_code < 600
                bump("session_failures")
                if session is not None:
                    try:
                        session.close()
                    except OSError:
                        pass
                    session = None
                if permanent or attempts >= args.max_attempts:
                    with stats_lock:
                        failures.append({"test_id": test_id, "error": repr(error)[:200], "attempts": attempts})
                    test_id, attempts = next_id(), 0
                    continue
                if attempts > 0:
                    bump("retries")
                time.sleep(min(1.0, 0.05 * (2 ** min(attempts, 5))) * (0.5 + rng.random()))
        if session is not None:
            try:
                session.quit()
            except (smtplib.SMTPException, OSError):
                pass

    def at_acks():
        # --at-acks-cmd, once, when the N-th acknowledgment came; its time and exit status
        # go to --at-acks-file (the test waits for that file).
        t = time.time()
        rc = subprocess.run(args.at_acks_cmd, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        tmp = args.at_acks_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"t": t, "rc": rc, "acked": args.at_acks}, f)
        os.rename(tmp, args.at_acks_file)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.concurrency)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + args.time_limit
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    timed_out = any(t.is_alive() for t in threads)
    elapsed = time.monotonic() - start
    acked = stats["acked"]
    last = max(ack_times) if ack_times else wall_start
    summary = {
        "phase": args.phase,
        "count": args.count,
        "concurrency": args.concurrency,
        "size": args.size,
        "acked": acked,
        "failed": len(failures),
        "failures": failures[:5],
        "sessions": stats["sessions"],
        "session_failures": stats["session_failures"],
        "retries": stats["retries"],
        "acked_after_retry": stats["acked_after_retry"],
        "elapsed_s": round(elapsed, 3),
        "start": wall_start,
        "rate": round(acked / max(0.001, last - wall_start), 1),
        "timed_out": timed_out,
    }
    print(json.dumps(summary))
    return 0 if not failures and not timed_out and acked == args.count else 1


def greet(args) -> int:
    """Prints the distinct host names in the 220 greetings of --tries connections."""
    names = set()
    for _ in range(args.tries):
        try:
            with socket.create_connection(("127.0.0.1", args.port), timeout=5) as s:
                s.settimeout(5)
                line = s.makefile("rb").readline()
                if line.startswith(b"220 "):
                    names.add(line.split()[1].decode(errors="replace"))
                s.sendall(b"QUIT\r\n")
        except OSError:
            pass
    for name in sorted(names):
        print(name)
    return 0


def meta_ips(args) -> int:
    """Reads concatenated meta.json documents on stdin; prints a JSON list of remote.ip."""
    text = sys.stdin.read()
    decoder = json.JSONDecoder()
    docs, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)
    if args.show_one:
        if docs:
            d = docs[0]
            print(json.dumps({k: d.get(k) for k in ("id", "createdAt", "attempts", "sender", "recipients", "subject", "remote", "lastError")}, indent=1))
        return 0
    print(json.dumps([d.get("remote", {}).get("ip", "") for d in docs]))
    return 0


# ---- checks -----------------------------------------------------------------------------
def read_jsonl(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def delivered(args) -> int:
    ok_ids = {r["test_id"] for r in read_jsonl(args.log) if r["status"] == 200}
    acked = set()
    for path in args.acks:
        acked |= {r["test_id"] for r in read_jsonl(path)}
    missing = acked - ok_ids
    print(f"{len(acked) - len(missing)}/{len(acked)} delivered, {len(missing)} missing")
    return 0 if not missing else 1


def report(args) -> int:
    """Checks the run; prints findings, then the Markdown table. Exit 1 on a failed check."""
    deliveries = read_jsonl(args.log)
    ok = [r for r in deliveries if r["status"] == 200]
    phases = json.load(open(args.phases, encoding="utf-8"))  # {name: {"summary":..., "acks": path}}
    facts = json.load(open(args.facts, encoding="utf-8"))
    problems = []

    acks = {}
    for name, phase in phases.items():
        for r in read_jsonl(phase["acks"]):
            acks.setdefault(r["test_id"], []).append(r)
    acked_ids = set(acks)
    queue_ids = {a["queue_id"] for rs in acks.values() for a in rs if a["queue_id"]}

    by_test = collections.defaultdict(set)
    for r in ok:
        by_test[r["test_id"]].add(r["xid"])
    missing = sorted(acked_ids - set(by_test))
    if missing:
        problems.append(f"{len(missing)} acknowledged messages never delivered, e.g. {missing[:5]}")
    delivered_xids = {r["xid"] for r in ok}
    missing_q = sorted(queue_ids - delivered_xids)
    if missing_q:
        problems.append(f"{len(missing_q)} acknowledged queue ids never delivered, e.g. {missing_q[:5]}")

    # Duplicates: the same X-Mxhook-Id answered 200 more than once (at least once after a kill).
    xid_count = collections.Counter(r["xid"] for r in ok)
    dup_xids = {x: n for x, n in xid_count.items() if n > 1}
    dup_deliveries = sum(n - 1 for n in dup_xids.values())
    received_of = {r["xid"]: r["received_by"] for r in ok}
    killed = facts.get("killed", "")
    stray_dups = sorted(x for x in dup_xids if received_of.get(x) != killed)
    if stray_dups:
        problems.append(f"{len(stray_dups)} ids delivered twice that the SIGKILLed replica {killed} did not hold, e.g. {stray_dups[:3]}")
    # Client re-sends: one test id acknowledged or stored under several ids (the 250 was lost
    # with the killed session, the client sent again).
    resent = sum(1 for t, xs in by_test.items() if len(xs) > 1)

    # Split: which replica received (Received: by) and which one delivered (the URL).
    received_split = collections.Counter(received_of[x] for x in xid_count)
    delivered_split = collections.Counter()
    seen = set()
    for r in ok:
        if r["xid"] not in seen:
            seen.add(r["xid"])
            delivered_split[r["by"]] += 1

    # Adopted items: same id, delivered by a survivor, received by the drained replica.
    drained = facts.get("drained", "")
    adopter = facts.get("adopter", "")
    adopted = facts.get("adopted_ids", [])
    adopted_ok = [x for x in adopted if any(r["xid"] == x and r["by"] == adopter for r in ok)]
    refused_before = [x for x in adopted if any(r["xid"] == x and r["by"] == drained and r["status"] == 503 for r in deliveries)]
    if facts.get("drain_ran"):
        if not adopted:
            problems.append(f"the drained replica {drained} had nothing left to adopt (the test meant it to)")
        if len(adopted_ok) != len(adopted):
            problems.append(f"{len(adopted) - len(adopted_ok)} of {len(adopted)} adopted ids not delivered by {adopter} under the same X-Mxhook-Id")
        if len(refused_before) != len(adopted):
            problems.append(f"{len(adopted) - len(refused_before)} adopted ids had no earlier (refused) attempt by {drained} under that id")
        late = [r for r in ok if r["received_by"] == drained and r["t"] > facts.get("drained_at", 0) and r["xid"] not in adopted and r["by"] == drained]
        if late:
            problems.append(f"{len(late)} deliveries by {drained} after it was drained")
        if facts.get("received_by_drained_after_drain", 0):
            problems.append(f"{facts['received_by_drained_after_drain']} messages sent after the drain were received by {drained}")

    # Stranded: spool stats of every replica and of the adopted volume.
    stranded = {}
    for name, st in facts.get("spool_stats", {}).items():
        left = {k: st.get(k, {}).get("items", -1) for k in ("pending", "processing", "dead")}
        stranded[name] = left
        if any(v != 0 for v in left.values()):
            problems.append(f"spool of {name} not empty at the end: {left}")

    # PROXY protocol: the client addresses in meta.json and in the Received: headers.
    gateway, haproxy_ip = facts.get("client_expected", ""), facts.get("haproxy_ip", "")
    meta_ips = facts.get("meta_ips", {})
    for name, ips in meta_ips.items():
        if not ips:
            problems.append(f"no meta.json read from {name}")
        bad = [ip for ip in ips if ip != gateway]
        if bad:
            problems.append(f"{name}: meta.json remote.ip {sorted(set(bad))}, expected the client {gateway} (HAProxy is {haproxy_ip})")
    received_ips = collections.Counter(r["client_ip"] for r in ok)
    if set(received_ips) != {gateway}:
        problems.append(f"Received: client addresses {dict(received_ips)}, expected only {gateway}")

    for name, phase in phases.items():
        s = phase["summary"]
        if s["acked"] != s["count"] or s["failed"]:
            problems.append(f"phase {name}: {s['acked']}/{s['count']} acknowledged, {s['failed']} failed: {s['failures']}")

    def split_of(phase):
        counts = collections.Counter()
        for r in ok:
            if r["test_id"].startswith(phase + "-") and r["xid"] not in counts_seen[phase]:
                counts_seen[phase].add(r["xid"])
                counts[r["received_by"]] += 1
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))

    counts_seen = collections.defaultdict(set)
    a, a3, b = phases["A"]["summary"], phases["A3"]["summary"], phases["B"]["summary"]
    rows = [
        ("load (phases A, A3, B)", f"{a['count']} messages of {a['size']} B each, {a['concurrency']} concurrent SMTP clients (Python smtplib) through HAProxy, ≤ 10 per session"),
        ("1 replica (A): accepted msgs/s", f"{a['rate']}"),
        ("3 replicas (A3): accepted msgs/s", f"{a3['rate']}"),
        ("3 vs 1 replica", f"{a3['rate'] / a['rate']:.2f}×" if a["rate"] else "-"),
        (f"B: 3 replicas, SIGKILL of {killed} after {facts.get('killed_after_acks')} acks, back (healthy) after",
         f"{facts.get('killed_down_s')} s"),
        ("B: accepted msgs/s, whole phase (kill and restart included)", f"{b['rate']}"),
        ("B: sessions failed / messages sent again by the clients", f"{b['session_failures']} / {b['retries']}"),
        ("acknowledged (250), all phases", f"{len(acked_ids)}"),
        ("acknowledged and delivered (by test id)", f"{len(acked_ids) - len(missing)}"),
        ("lost", f"{len(missing)}"),
        ("duplicate deliveries (same X-Mxhook-Id twice)", f"{dup_deliveries} ({len(dup_xids)} ids, all received by {killed})" if dup_xids else "0"),
        ("messages stored twice (the client re-sent after a cut session)", f"{resent}"),
        ("A3: received by replica", split_of("A3")),
        ("B: received by replica", split_of("B")),
        ("all phases: received by replica (Received: by)", ", ".join(f"{k} {v}" for k, v in sorted(received_split.items()))),
        ("all phases: delivered by replica (webhook URL)", ", ".join(f"{k} {v}" for k, v in sorted(delivered_split.items()))),
        (f"drain of {drained} (webhook refusing it, DRAIN_TIMEOUT_MS={facts.get('drain_timeout_ms')})",
         f"exit {facts.get('drain_exit')}, {facts.get('drain_seconds')} s: {facts.get('drain_report', '')}"),
        (f"adopted by {adopter} from {drained}'s volume", f"{len(adopted)} items ({facts.get('adopt_exit_line', '')}); {len(adopted_ok)} delivered with the same X-Mxhook-Id"),
        ("left in spools at the end (pending/processing/dead)",
         "; ".join(f"{k} {v['pending']}/{v['processing']}/{v['dead']}" for k, v in sorted(stranded.items()))),
        ("client address in meta.json (PROXY v2)",
         "; ".join(f"{k}: {', '.join(sorted(set(v)))} ({len(v)} read)" for k, v in sorted(meta_ips.items())) + f" — HAProxy is {haproxy_ip}"),
    ]
    table = ["| measure | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    text = "\n".join(table) + "\n"
    for p in problems:
        print(f"PROBLEM: {p}")
    print(text)
    if args.table:
        with open(args.table, "w", encoding="utf-8") as f:
            f.write(text)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sink")
    p.add_argument("--host", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--control-dir", required=True)
    p = sub.add_parser("load")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--phase", required=True)
    p.add_argument("--run-id", default="r")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--per-session", type=int, default=10)
    p.add_argument("--max-attempts", type=int, default=20)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--time-limit", type=float, default=150)
    p.add_argument("--at-acks", type=int, default=0, help="run --at-acks-cmd after this many 250s")
    p.add_argument("--at-acks-cmd", default="")
    p.add_argument("--at-acks-file", default="")
    p = sub.add_parser("greet")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tries", type=int, default=12)
    p = sub.add_parser("meta-ips")
    p.add_argument("--show-one", action="store_true")
    p = sub.add_parser("delivered")
    p.add_argument("--log", required=True)
    p.add_argument("--acks", nargs="+", required=True)
    p = sub.add_parser("report")
    p.add_argument("--log", required=True)
    p.add_argument("--phases", required=True)
    p.add_argument("--facts", required=True)
    p.add_argument("--table", default="")
    args = parser.parse_args()
    commands = {"sink": sink, "load": load, "greet": greet, "meta-ips": meta_ips, "delivered": delivered, "report": report}
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
