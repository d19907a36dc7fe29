#!/usr/bin/env python3
"""Test webhook for tests/docker/run.sh (python3 standard library only).

Listens on HOST:PORT (port 0: any free port, written to --port-file), checks the HMAC
signature of every POST the way the README tells webhook authors to, answers 200 and
appends one JSON line per delivery to --log:
  {"id": X-Mxhook-Id, "recipient": ..., "subject": ..., "signature_ok": bool,
   "tls": bool (the Received: header says ESMTPS), "bytes": len(body-mime)}
"""
import argparse
import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    key = args.key.encode()
    log_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *fmt_args):  # quiet: the JSON log is the record
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            form = urllib.parse.parse_qs(body, keep_blank_values=True)

            def field(name: str) -> bytes:
                values = form.get(name.encode(), [b""])
                return values[0]

            timestamp = field("timestamp").decode()
            token = field("token").decode()
            signature = field("signature").decode()
            expected = hmac.new(key, (timestamp + token).encode(), hashlib.sha256).hexdigest()
            fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) <= 300
            mime = field("body-mime")
            first_header = mime.split(b"\r\n\r\n", 1)[0]
            record = {
                "id": self.headers.get("X-Mxhook-Id", ""),
                "recipient": field("recipient").decode(errors="replace"),
                "subject": field("subject").decode(errors="replace"),
                "signature_ok": bool(signature) and fresh and hmac.compare_digest(expected, signature),
                "tls": b"with ESMTPS" in first_header,
                "bytes": len(mime),
                "spf": field("X-Mailgun-Spf").decode(errors="replace"),
                "auth_header": mime.startswith(b"Authentication-Results: "),
            }
            with log_lock, open(args.log, "a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
            reply = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    tmp = args.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    try:
        server.serve_forever()
    except SystemExit:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
