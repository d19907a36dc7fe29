#!/usr/bin/env python3
"""End-to-end test against a real Rails: mxhook delivers the shared mail corpus to Rails
Action Mailbox's Mailgun and Postmark ingresses (tests/rails/app/app.rb, Rails 6.1 from
Debian's packages) and every message must be stored by Rails byte for byte.

It runs the corpus three times, each time with a fresh mxhook and spool, against one Rails
app (modes, in order):

  urlencoded  WEBHOOK_ENCODING=urlencoded to the Mailgun ingress: shows which messages
              Rails refuses when every body is urlencoded (Rack/ActionDispatch answer 400
              "Invalid encoding for parameter" to a field that is not UTF-8). Reported,
              never a failure.
  auto        WEBHOOK_ENCODING=auto (the default) to the Mailgun ingress: every message
              must be accepted (an InboundEmail exists for its spool id), nothing may be
              left in mxhook's spool or dead/, and the raw email Rails stored must be
              "X-Original-To: <recipient>\\n" (the ingress adds it) + mxhook's Received:
              header + exactly the bytes sent.
  postmark    WEBHOOK_FORMAT=json WEBHOOK_JSON_RAW_EMAIL=true to the Postmark ingress (HTTP
              basic auth from the credentials in WEBHOOK_URL): the same checks, except that
              the ingress stores RawEmail as it is (no X-Original-To), so the raw email must
              be mxhook's Received: header + exactly the bytes sent; for a message that is
              not valid UTF-8, each byte that does not begin a valid UTF-8 sequence is
              U+FFFD (what mxhook puts in RawEmail), compared exactly too.

Usage: run_rails_test.py --mxhook PATH [--corpus DIR] [--keep]
  The corpus is $MXHOOK_TEST_CORPUS, else --corpus, else ../shared/corpus of the repo root.
  --keep leaves the scratch directory (logs, spools, Rails database) in place.
  MXHOOK_RAILS_MODES=auto,postmark (comma list; default urlencoded,auto,postmark) runs only
  the modes named; any other name is a WEBHOOK_ENCODING value sent to the Mailgun ingress.

Exit codes: 0 passed, 1 failed, 77 skipped (no ruby / Rails / corpus), as ctest's
SKIP_RETURN_CODE. Every wait is bounded; every process it starts is stopped by its PID.
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

SKIP = 77
HERE = Path(__file__).resolve().parent
APP = HERE / "app" / "app.rb"
REPO = HERE.parent.parent
SIGNING_KEY = "rails-e2e-signing-key"
INGRESS_PASSWORD = "rails-e2e-ingress-password"   # Postmark ingress, user actionmailbox
DEFAULT_MODES = "urlencoded,auto,postmark"
RECIPIENT = "user@example.com"
SENDER = "corpus@example.org"
HOSTNAME = "mx.test"
CONNECTIONS = 4
RAILS_BOOT_TIMEOUT = 90      # seconds; it takes about 5 s on 2 cores
SMTP_READY_TIMEOUT = 10
SETTLE_TIMEOUT = 90          # bound on the wait for one run's deliveries
REFUSED_AFTER_ATTEMPTS = 3   # an item still pending after this many attempts is refused
ROUTING_TIMEOUT = 20         # bound on the wait for Rails' background routing (informational)

children = []                # Popen objects still to stop, by PID


def log(msg):
    print(msg, flush=True)


def skip(reason):
    log(f"SKIPPED: {reason}")
    sys.exit(SKIP)


# ----------------------------------------------------------------------------- processes

def stop(proc, name, timeout=15):
    """SIGTERM to the PID, then SIGKILL after `timeout` seconds. Returns the exit code."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"  {name} (pid {proc.pid}) did not exit {timeout} s after SIGTERM: SIGKILL")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    if proc in children:
        children.remove(proc)
    return proc.returncode


def stop_all():
    for proc in list(children):
        stop(proc, f"pid {proc.pid}", timeout=10)


def on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


def _die_with_parent():
    """In the child before exec: SIGTERM when this script dies, even by SIGKILL (a ctest
    timeout), so no Rails or mxhook outlives the test."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start(argv, env, log_path):
    out = open(log_path, "wb")
    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)
    out.close()
    children.append(proc)
    return proc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def tail(path, lines=40):
    try:
        data = Path(path).read_bytes().decode("utf-8", "replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    | " + l for l in data[-lines:])


# ----------------------------------------------------------------------------- SMTP

def as_crlf(data):
    """Bare LF line ends become CRLF; a final CRLF is added when missing (corpus_test.cpp)."""
    data = re.sub(rb"(?<!\r)\n", b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def encode_data(message):
    """DATA payload: dot-stuffed, then ".\\r\\n" (smtp_client.cpp's encode_data)."""
    out = bytearray()
    line_start = True
    for i, b in enumerate(message):
        if line_start and b == 0x2E:
            out += b"."
        out.append(b)
        line_start = b == 0x0A and i > 0 and message[i - 1] == 0x0D
    out += b".\r\n"
    return bytes(out)


class Smtp:
    def __init__(self, port, timeout=20):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def reply(self):
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return 0, lines + ["(connection closed)"]
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            text = line.decode("latin-1")
            lines.append(text[4:])
            if len(text) < 4 or text[3] != "-":
                try:
                    return int(text[:3]), lines
                except ValueError:
                    return -1, lines

    def cmd(self, line):
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def send(self, message):
        for line in (f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>"):
            code, text = self.cmd(line)
            if code != 250:
                return code, text
        code, text = self.cmd("DATA")
        if code != 354:
            return code, text
        self.sock.sendall(encode_data(message))
        return self.reply()

    def close(self):
        try:
            self.cmd("QUIT")
        except OSError:
            pass
        self.sock.close()


def wait_smtp(port, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            s = Smtp(port, timeout=2)
            code, _ = s.reply()
            s.close()
            if code == 220:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def send_corpus(port, files):
    """Four sessions share the corpus, as corpus_test.cpp does; sets f['id'] or f['error']."""
    nxt = iter(range(len(files)))
    lock = threading.Lock()

    def worker():
        try:
            client = Smtp(port)
            greeting = client.reply()
            ehlo = client.cmd("EHLO client.test")
        except OSError as e:
            greeting, ehlo = (-1, [str(e)]), (-1, [])
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                break
            f = files[i]
            if greeting[0] != 220 or ehlo[0] != 250:
                f["error"] = f"session: {greeting} / {ehlo}"
                continue
            try:
                code, text = client.send(f["bytes"])
            except OSError as e:
                code, text = -1, [str(e)]
            m = re.search(r"Queued as (\S+)", " ".join(text)) if code == 250 else None
            if m:
                f["id"] = m.group(1)
            else:
                f["error"] = f"not queued: {code} {' / '.join(text)}"
                if code <= 0:
                    break
                client.cmd("RSET")
        try:
            client.close()
        except (OSError, UnboundLocalError):
            pass

    threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)


# ----------------------------------------------------------------------------- spool

def spool_items(spool, state):
    """Item directories in one state. tmp/<id>.delivered is a delivered item on its way
    out or kept for reuse, not a message."""
    d = spool / state
    return sorted(p.name for p in d.iterdir()
                  if p.is_dir() and not p.name.endswith(".delivered")) if d.is_dir() else []


def read_meta(item_dir):
    try:
        return json.loads((item_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def settled(spool):
    """True when nothing is in flight and every item still pending was tried at least
    REFUSED_AFTER_ATTEMPTS times (it is being refused, not merely slow)."""
    if spool_items(spool, "processing") or spool_items(spool, "tmp"):
        return False
    for item in spool_items(spool, "pending"):
        meta = read_meta(spool / "pending" / item)
        if not meta or meta.get("attempts", 0) < REFUSED_AFTER_ATTEMPTS:
            return False
    return True


def split_received(raw):
    """The Received: block mxhook prepends (first line + continuations) and the rest."""
    if not raw.startswith(b"Received: "):
        return None
    pos = 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return None
        pos = eol + 2
        if pos >= len(raw) or raw[pos:pos + 1] not in (b" ", b"\t"):
            return raw[:pos], raw[pos:]


def first_difference(expected, actual):
    i = 0
    while i < len(expected) and i < len(actual) and expected[i] == actual[i]:
        i += 1
    lo = max(0, i - 20)
    return (f"sizes: expected {len(expected)}, got {len(actual)}; first difference at byte {i}: "
            f"expected {expected[lo:lo + 60]!r} got {actual[lo:lo + 60]!r}")


def replace_invalid_utf8(data):
    """RawEmail's text: every byte that does not begin a valid UTF-8 sequence becomes U+FFFD,
    one per byte (src/mime/text.cpp), not one per maximal subpart as Python's "replace"."""
    out = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        n = 1 if b < 0x80 else 2 if 0xC2 <= b <= 0xDF else 3 if 0xE0 <= b <= 0xEF else 4 if 0xF0 <= b <= 0xF4 else 0
        if n and i + n <= len(data):
            try:
                data[i:i + n].decode("utf-8")
                out += data[i:i + n]
                i += n
                continue
            except UnicodeDecodeError:
                pass
        out += "\ufffd".encode()
        i += 1
    return bytes(out)


# ----------------------------------------------------------------------------- one run

def mode_setup(mode, rails_port):
    """(title, mxhook environment for the webhook, prefix the ingress adds, asserting?)"""
    if mode == "postmark":
        url = (f"http://actionmailbox:{INGRESS_PASSWORD}@127.0.0.1:{rails_port}"
               "/rails/action_mailbox/postmark/inbound_emails")
        return ("WEBHOOK_FORMAT=json WEBHOOK_JSON_RAW_EMAIL=true, Postmark ingress",
                {"WEBHOOK_URL": url, "WEBHOOK_FORMAT": "json", "WEBHOOK_JSON_RAW_EMAIL": "true"},
                b"", True)
    url = f"http://127.0.0.1:{rails_port}/rails/action_mailbox/mailgun/inbound_emails/mime"
    return (f"WEBHOOK_ENCODING={mode}, Mailgun ingress", {"WEBHOOK_URL": url, "WEBHOOK_ENCODING": mode},
            f"X-Original-To: {RECIPIENT}\n".encode(), mode != "urlencoded")


def run_mode(mode, args, tmp, rails_port, files):
    title, webhook_env, prefix, asserting = mode_setup(mode, rails_port)
    log(f"\n== {mode}: {title} ==")
    for f in files:
        f.pop("id", None)
        f.pop("error", None)
    spool = tmp / f"spool-{mode}"
    smtp_port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SMTP_LISTEN": f"127.0.0.1:{smtp_port}",
        "SMTP_HOSTNAME": HOSTNAME,
        "SPOOL_DIR": str(spool),
        "WEBHOOK_SIGNING_KEY": SIGNING_KEY,
        **webhook_env,
        "WEBHOOK_CONCURRENCY": "4",
        "WEBHOOK_TIMEOUT_MS": "30000",
        "ACCEPT_ALL_RECIPIENTS": "true",
        "RETRY_SCAN_INTERVAL_MS": "100",
        "RETRY_INTERVAL_MS": "200",
        "RETRY_MAX_INTERVAL_MS": "1000",
        "LOG_LEVEL": "info",
        "AUTH_CHECKS": "none",  # byte-for-byte round trip: no Authentication-Results header
    }
    mxlog = tmp / f"mxhook-{mode}.log"
    rails_log = tmp / "rails.log"
    rails_log_start = rails_log.stat().st_size if rails_log.exists() else 0
    started = time.monotonic()
    mx = start([args.mxhook], env, mxlog)
    result = {"mode": mode, "title": title, "asserting": asserting, "ok": False, "problems": {}}
    try:
        if not wait_smtp(smtp_port, mx, SMTP_READY_TIMEOUT):
            log(f"  mxhook did not answer 220 on port {smtp_port} within {SMTP_READY_TIMEOUT} s "
                f"(exit code {mx.poll()}); its log:\n{tail(mxlog)}")
            result["fatal"] = "mxhook did not start"
            result["problems"]["(run)"] = f"mxhook did not answer 220 within {SMTP_READY_TIMEOUT} s"
            return result
        send_corpus(smtp_port, files)
        queued = [f for f in files if f.get("id")]
        log(f"  sent {len(files)}, queued {len(queued)}; waiting for the spool to settle (<= {SETTLE_TIMEOUT} s)")
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline and not settled(spool):
            time.sleep(0.2)
        settled_ok = settled(spool)
        elapsed = time.monotonic() - started
        left = {}
        for state in ("tmp", "pending", "processing", "dead"):
            for item in spool_items(spool, state):
                meta = read_meta(spool / state / item) or {}
                error_txt = spool / state / item / "error.txt"
                left[item] = {
                    "state": state,
                    "attempts": meta.get("attempts"),
                    "lastError": meta.get("lastError") or (error_txt.read_text(errors="replace").strip()
                                                           if error_txt.exists() else None),
                }
    finally:
        code = stop(mx, "mxhook")
    if code != 0:
        log(f"  note: mxhook exited with {code} after SIGTERM")

    # The last delivery line of each id, for the report.
    last_line = {}
    for line in mxlog.read_bytes().decode("utf-8", "replace").splitlines():
        m = re.search(r"delivery id=(\S+) .*status=", line)
        if m:
            last_line[m.group(1)] = line.split("] ", 1)[-1] if "] " in line else line
    # What Rails logged for refused requests (the 400's reason).
    rails_text = rails_log.read_bytes()[rails_log_start:].decode("utf-8", "replace")
    rails_reasons = sorted(set(re.findall(r"^(ActionController::\w+ \([^:\n]*(?::[^:\n]*)?)", rails_text, re.M)))

    base = f"http://127.0.0.1:{rails_port}"
    run_ids = {f["id"] for f in files if f.get("id")}
    stored = {}
    for email in json.loads(http_get(f"{base}/inbound_emails.json")[1]):
        raw = base64.b64decode(email["raw_base64"])
        m = re.search(rb"^Received: .*?\bid (\S+)", raw, re.M | re.S)
        if m and m.group(1).decode() in run_ids:
            stored.setdefault(m.group(1).decode(), []).append((email, raw))
    # Routing runs in the background: give it a bounded moment so the statuses are final.
    mine = {e["id"] for recs in stored.values() for e, _ in recs}
    status_of = {}
    deadline = time.monotonic() + ROUTING_TIMEOUT
    while True:
        status_of = {e["id"]: e["status"] for e in json.loads(http_get(f"{base}/inbound_emails.json?raw=0")[1])
                     if e["id"] in mine}
        if time.monotonic() > deadline or not any(v in ("pending", "processing") for v in status_of.values()):
            break
        time.sleep(0.3)
    # Every POST Rails saw for this run: media type and status, by X-Mxhook-Id.
    posts = {}
    for req in json.loads(http_get(f"{base}/requests.json")[1]):
        if req.get("id") in run_ids:
            posts.setdefault(req["id"], []).append((req["media_type"], req["status"]))
    post_counts = {}
    for reqs in posts.values():
        for media_type, st in reqs:
            key = f"{media_type.split('/')[-1]}:{st}"
            post_counts[key] = post_counts.get(key, 0) + 1

    counts = {"sent": len(files), "queued": 0, "accepted": 0, "identical": 0, "replaced": 0, "refused": 0,
              "left_in_spool": 0, "dead": 0}
    replacing = mode == "postmark"   # RawEmail is a JSON string: U+FFFD for bytes not UTF-8
    rails_status = {}
    refused = []
    for f in files:
        problem = f.get("error")
        if not problem:
            counts["queued"] += 1
            fid = f["id"]
            if fid in left:
                counts["left_in_spool"] += 1
                if left[fid]["state"] == "dead":
                    counts["dead"] += 1
            records = stored.get(fid, [])
            if not records:
                counts["refused"] += 1
                info = left.get(fid, {})
                why = info.get("lastError") or "no InboundEmail and not in the spool"
                refused.append((f["name"], f["utf8"], info.get("attempts"), why, posts.get(fid, []),
                                last_line.get(fid, "")))
                problem = f"not accepted by Rails ({info.get('state', '?')}, attempts={info.get('attempts')}: {why})"
            else:
                counts["accepted"] += 1
                email, raw = records[0]
                st = status_of.get(email["id"], email["status"])
                rails_status[st] = rails_status.get(st, 0) + 1
                expected = f["bytes"] if f["utf8"] or not replacing else replace_invalid_utf8(f["bytes"])
                if not raw.startswith(prefix):
                    problem = f"stored raw email does not start with {prefix!r}: {raw[:60]!r}"
                else:
                    split = split_received(raw[len(prefix):])
                    if not split:
                        problem = ("stored raw email has no Received: header"
                                   + (" after X-Original-To" if prefix else ""))
                    elif split[1] != expected:
                        problem = ("stored bytes differ" + ("" if expected is f["bytes"] else
                                                            " (expected U+FFFD for each byte not UTF-8)")
                                   + ": " + first_difference(expected, split[1]))
                    elif expected is f["bytes"]:
                        counts["identical"] += 1
                    else:
                        counts["replaced"] += 1
                if not problem and fid in left:
                    problem = f"accepted by Rails but still in the spool ({left[fid]['state']})"
        if problem:
            result["problems"][f["name"]] = problem

    non_utf8 = [(f["name"], posts.get(f.get("id"), [])) for f in files if not f["utf8"]]
    result.update(counts=counts, rails_status=rails_status, refused=refused, settled=settled_ok,
                  seconds=elapsed, rails_reasons=rails_reasons, post_counts=post_counts)
    result["ok"] = not result["problems"]
    log(f"  done in {elapsed:.1f} s{'' if settled_ok else ' (did NOT settle in time)'}: "
        f"{counts['accepted']} accepted by Rails, {counts['refused']} refused, "
        f"{counts['identical']} byte-identical"
        + (f", {counts['replaced']} identical but for U+FFFD in place of bytes not UTF-8" if replacing else ""))
    log("  POSTs Rails saw (media type:status): "
        + (" ".join(f"{k}={v}" for k, v in sorted(post_counts.items())) or "none"))
    for name, reqs in non_utf8:
        log(f"  not UTF-8: {name}: " + (", ".join(f"{mt} {st}" for mt, st in reqs) or "no POST seen"))
    if refused:
        log(f"  refused ({len(refused)}): name | UTF-8? | attempts | last error | POSTs | last delivery log line")
        for name, utf8, attempts, why, reqs, line in refused:
            media = ",".join(sorted({f"{mt.split('/')[-1]}:{st}" for mt, st in reqs})) or "-"
            log(f"    {name} | {'yes' if utf8 else 'no'} | {attempts} | {why} | {media} | {line}")
    for reason in rails_reasons:
        log(f"  Rails logged: {reason}")
    return result


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mxhook", required=True, help="path of the mxhook binary")
    ap.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()

    if not shutil.which("ruby"):
        skip("ruby is not installed (apt-get install ruby-railties ruby-actionmailbox ruby-sqlite3)")
    probe = subprocess.run(
        ["ruby", "-e", '%w[railties actionmailbox activestorage activerecord actionpack activejob webrick]'
                       '.each { |g| Gem::Specification.find_by_name(g) }; require "sqlite3"; require "rails"; '
                       'print Rails.version'],
        capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        skip("Rails with Action Mailbox, SQLite and WEBrick is not installed (apt-get install "
             "ruby-railties ruby-actionmailbox ruby-sqlite3): " + (probe.stderr.strip().splitlines() or ["?"])[0])
    rails_version = probe.stdout.strip()
    if not os.access(args.mxhook, os.X_OK):
        log(f"FAILED: mxhook binary {args.mxhook} is missing or not executable")
        return 1
    corpus = Path(os.environ.get("MXHOOK_TEST_CORPUS") or args.corpus)
    if not corpus.is_dir():
        skip(f"no corpus at {corpus} (set MXHOOK_TEST_CORPUS to a directory of messages)")
    files = []
    for p in sorted(corpus.rglob("*")):
        if p.is_file() and p.name not in ("README.md", "LICENSE"):
            data = as_crlf(p.read_bytes())
            try:
                data.decode("utf-8")
                utf8 = True
            except UnicodeDecodeError:
                utf8 = False
            files.append({"name": str(p.relative_to(corpus)), "bytes": data, "utf8": utf8})
    if not files:
        skip(f"corpus at {corpus} is empty")
    modes = [m for m in os.environ.get("MXHOOK_RAILS_MODES", DEFAULT_MODES).split(",") if m]
    non_utf8 = sum(1 for f in files if not f["utf8"])
    log(f"corpus: {len(files)} messages from {corpus} ({non_utf8} not valid UTF-8); Rails {rails_version}; "
        f"mxhook {args.mxhook}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="mxhook-rails-"))
    t0 = time.monotonic()
    results = []
    try:
        rails_port = free_port()
        (tmp / "rails").mkdir()
        rails_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp / "rails"),
            "LANG": "C.UTF-8",
            "RAILS_APP_DIR": str(tmp / "rails"),
            "RAILS_APP_PORT": str(rails_port),
            "MAILGUN_INGRESS_SIGNING_KEY": SIGNING_KEY,
            "RAILS_INBOUND_EMAIL_PASSWORD": INGRESS_PASSWORD,
        }
        rails_log = tmp / "rails.log"
        rails = start(["ruby", str(APP)], rails_env, rails_log)
        boot_deadline = time.monotonic() + RAILS_BOOT_TIMEOUT
        booted = False
        while time.monotonic() < boot_deadline and rails.poll() is None:
            try:
                booted = http_get(f"http://127.0.0.1:{rails_port}/up", timeout=5)[0] == 200
            except (OSError, urllib.error.URLError):
                pass
            if booted:
                break
            time.sleep(0.1)
        boot_seconds = time.monotonic() - t0
        if not booted:
            log(f"FAILED: the Rails app did not answer on 127.0.0.1:{rails_port} within "
                f"{RAILS_BOOT_TIMEOUT} s (exit code {rails.poll()}); its log:\n{tail(rails_log)}")
            return 1
        log(f"Rails app (pid {rails.pid}) up on 127.0.0.1:{rails_port} in {boot_seconds:.1f} s")

        for mode in modes:
            results.append(run_mode(mode, args, tmp, rails_port, files))
        if rails.poll() is not None:
            log(f"FAILED: the Rails app exited ({rails.returncode}) during the test; its log:\n{tail(rails_log)}")
            return 1
    finally:
        stop_all()
        if args.keep:
            log(f"scratch directory kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    log("\nsummary (one Rails app; a fresh mxhook and spool per mode)")
    header = ("mode", "sent", "queued", "accepted", "refused", "identical", "U+FFFD", "in spool", "dead",
              "seconds", "InboundEmail status", "POSTs (type:status)")
    rows = [header]
    for r in results:
        c = r.get("counts")
        if not c:
            rows.append((r["mode"], "-", "-", "-", "-", "-", "-", "-", "-", "-", r.get("fatal", ""), ""))
            continue
        rows.append((r["mode"], c["sent"], c["queued"], c["accepted"], c["refused"], c["identical"],
                     c["replaced"] if r["mode"] == "postmark" else "-",
                     c["left_in_spool"], c["dead"], f"{r['seconds']:.1f}",
                     " ".join(f"{k}={v}" for k, v in sorted(r["rails_status"].items())),
                     " ".join(f"{k}={v}" for k, v in sorted(r["post_counts"].items()))))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for row in rows:
        log("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    log(f"total {time.monotonic() - t0:.1f} s (Rails boot {boot_seconds:.1f} s)")

    failed = False
    for r in results:
        if not r["asserting"]:
            continue   # urlencoded is informational: shows what the fix is for
        if not r["ok"]:
            failed = True
            log(f"\nFAILED: {r['mode']} ({r['title']}): {len(r['problems'])} of {len(files)} messages:")
            for name, problem in sorted(r["problems"].items()):
                log(f"  {name}: {problem}")
    if failed:
        if not args.keep:
            log("(run it again with --keep to keep the logs, spools and Rails database)")
        return 1
    log("PASSED" if any(r["asserting"] for r in results) else "PASSED (no asserting mode was run)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()
