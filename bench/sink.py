#!/usr/bin/env python3
"""Fast local webhook sink for mxhook benchmarks (Python 3 standard library only).

    bench/sink.py [--host 127.0.0.1] [--port 0] [--status 200] [--delay-ms 0]
                  [--delay-phase after-body|before-body] [--expect N]
                  [--verify-key KEY] [--arrivals FILE]

Answers every POST with --status (default 200) after reading exactly Content-Length bytes
(or a chunked body) and throwing them away, optionally sleeping --delay-ms first. Counts
deliveries (requests), distinct X-Mxhook-Id values, duplicates and body bytes. With
--verify-key it also checks each request's signature (HMAC-SHA256 of timestamp + token,
fields found in the first MiB of a urlencoded or multipart body) and counts bad ones. With
--arrivals FILE it writes, on SIGTERM, one line per request: "<X-Mxhook-Id> <arrived unix>
<answered unix>" (arrived: request headers read; answered: reply written), for latency.

stdout, one line each, flushed at once:
    listening <host> <port>                 first line (--port 0 picks a free port)
    deliveries <n> bytes <b> t <unix>       at every multiple of 100 requests
    expect <N> reached t <unix> first <unix> distinct <d>
                                            when the N-th request has been read (--expect)
    final deliveries <n> distinct <d> bytes <b> first <unix> last <unix>
                                            on SIGTERM/SIGINT (with max_in_flight)
GET /stats answers the same counters as JSON, for scripts that poll.
"""

import argparse
import hashlib
import hmac
import json
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 1 << 20
# timestamp, token and signature precede body-mime in both encodings (README "The webhook
# payload"), so the first chunk of the body holds them.
SIG_URLENCODED = re.compile(rb"(?:^|&)timestamp=(\d+)&token=([0-9a-f]+)&signature=([0-9a-f]+)")
SIG_MULTIPART = re.compile(rb'name="timestamp"\r\n\r\n(\d+)\r\n.*?name="token"\r\n\r\n([0-9a-f]+)\r\n'
                           rb'.*?name="signature"\r\n\r\n([0-9a-f]+)\r\n', re.S)


class Counters:
    def __init__(self, expect):
        self.lock = threading.Lock()
        self.deliveries = 0
        self.bytes = 0
        self.ids = set()
        self.duplicates = 0
        self.bad_signatures = 0
        self.arrivals = []  # (id, arrived, answered), only with --arrivals
        self.answered_last = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.first = None
        self.last = None
        self.expect = expect
        self.expect_reached = None

    def snapshot(self):
        with self.lock:
            return {
                "deliveries": self.deliveries, "distinct": len(self.ids),
                "duplicates": self.duplicates, "bad_signatures": self.bad_signatures,
                "bytes": self.bytes, "answered_last": self.answered_last,
                "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                "first": self.first, "last": self.last,
                "expect": self.expect, "expect_reached": self.expect_reached,
            }


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; "100 Continue" handled by the base class
    server_version = "mxhook-bench-sink"
    counters: Counters = None
    status = 200
    delay = 0.0
    delay_before = False
    verify_key = None     # bytes: check signatures
    keep_arrivals = False

    def log_message(self, fmt, *args):  # no per-request log lines
        pass

    def discard_body(self, mac=None):
        """Read the request body exactly; return (length, first chunk or b""). mac, when
        given, is updated with every byte of the body."""
        head = b""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return total, head
                left = size
                while left:
                    got = self.rfile.read(min(left, CHUNK))
                    if not got:
                        raise ConnectionError("body cut short")
                    if mac is not None:
                        mac.update(got)
                    if len(head) < CHUNK:
                        head += got[:CHUNK - len(head)]
                    left -= len(got)
                total += size
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        left = length
        while left:
            got = self.rfile.read(min(left, CHUNK))
            if not got:
                raise ConnectionError(f"body cut short: {length - left} of {length} bytes")
            if mac is not None:
                mac.update(got)
            if not head:
                head = got
            left -= len(got)
        return length, head

    def signature_ok(self, head):
        # The fields come first: searching the first 64 KiB keeps the sink's CPU out of the
        # measurement (a search through a whole parsed payload cost 5 ms per request).
        head = head[:65536]
        m = SIG_URLENCODED.search(head) or SIG_MULTIPART.search(head)
        if not m:
            return False
        expected = hmac.new(self.verify_key, m.group(1) + m.group(2), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected.encode(), m.group(3))

    def do_GET(self):
        body = json.dumps(self.counters.snapshot()).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        c = self.counters
        arrived = time.time()
        with c.lock:
            c.in_flight += 1
            c.max_in_flight = max(c.max_in_flight, c.in_flight)
        try:
            if self.delay_before and self.delay:
                time.sleep(self.delay)
            # WEBHOOK_FORMAT=json signs the whole body in request headers (README "Parsed and
            # JSON payloads"): HMAC-SHA256 of timestamp + token + body.
            json_mac = None
            if self.verify_key is not None and self.headers.get("Content-Type", "").startswith("application/json"):
                json_mac = hmac.new(self.verify_key, (self.headers.get("X-Mxhook-Timestamp", "") +
                                                      self.headers.get("X-Mxhook-Token", "")).encode(), hashlib.sha256)
            try:
                n, head = self.discard_body(json_mac)
            except (ConnectionError, ValueError) as exc:
                say(f"error {exc}")
                self.close_connection = True
                return
            if not self.delay_before and self.delay:
                time.sleep(self.delay)
            now = time.time()
            msg_id = self.headers.get("X-Mxhook-Id", "")
            if json_mac is not None:
                bad = not hmac.compare_digest(json_mac.hexdigest(), self.headers.get("X-Mxhook-Signature", ""))
            else:
                bad = self.verify_key is not None and not self.signature_ok(head)
            line = None
            with c.lock:
                c.deliveries += 1
                c.bad_signatures += bad
                c.bytes += n
                if msg_id in c.ids:
                    c.duplicates += 1
                elif msg_id:
                    c.ids.add(msg_id)
                if c.first is None:
                    c.first = now
                c.last = now
                if c.deliveries % 100 == 0:
                    line = f"deliveries {c.deliveries} bytes {c.bytes} t {now:.6f}"
                if c.expect and c.expect_reached is None and c.deliveries >= c.expect:
                    c.expect_reached = now
                    line = ((line + "\n") if line else "") + (
                        f"expect {c.expect} reached t {now:.6f} first {c.first:.6f}"
                        f" distinct {len(c.ids)}")
            if line:
                say(line)
            self.send_response(self.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.wfile.flush()
            answered = time.time()
            with c.lock:
                c.answered_last = answered if c.answered_last is None else max(c.answered_last, answered)
                if self.keep_arrivals:
                    c.arrivals.append((msg_id, arrived, answered))
        finally:
            with c.lock:
                c.in_flight -= 1


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: pick a free port (printed)")
    ap.add_argument("--status", type=int, default=200, help="HTTP status to answer")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="sleep per request")
    ap.add_argument("--delay-phase", choices=["after-body", "before-body"], default="after-body",
                    help="sleep after reading the body (a slow handler, default) or before "
                         "(a slow reader: the sender's body is held back by TCP)")
    ap.add_argument("--expect", type=int, default=0, help="print when this many have arrived")
    ap.add_argument("--verify-key", help="WEBHOOK_SIGNING_KEY: count requests whose signature is wrong")
    ap.add_argument("--arrivals", metavar="FILE",
                    help="on exit, write '<X-Mxhook-Id> <arrived> <answered>' per request to FILE")
    args = ap.parse_args()

    Handler.counters = Counters(args.expect)
    Handler.status = args.status
    Handler.delay = args.delay_ms / 1000.0
    Handler.delay_before = args.delay_phase == "before-body"
    Handler.verify_key = args.verify_key.encode() if args.verify_key else None
    Handler.keep_arrivals = bool(args.arrivals)
    server = Server((args.host, args.port), Handler)

    def stop(signum, frame):
        # shutdown() blocks until serve_forever returns: call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    say(f"listening {host} {port}")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        s = Handler.counters.snapshot()
        say(f"final deliveries {s['deliveries']} distinct {s['distinct']} bytes {s['bytes']}"
            f" first {s['first'] or 0:.6f} last {s['last'] or 0:.6f}"
            f" max_in_flight {s['max_in_flight']} duplicates {s['duplicates']}"
            f" bad_signatures {s['bad_signatures']}")
        if args.arrivals:
            with Handler.counters.lock, open(args.arrivals, "w") as f:
                for msg_id, arrived, answered in Handler.counters.arrivals:
                    f.write(f"{msg_id or '-'} {arrived:.6f} {answered:.6f}\n")
        server.server_close()


if __name__ == "__main__":
    main()
