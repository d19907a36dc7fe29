#!/usr/bin/env python3
"""SMTP load generator for mxhook benchmarks (Python 3 standard library only).

    bench/smtp_load.py --port 2525 [--host 127.0.0.1] [--connections 16] [--messages 2000]
                       [--size 4096] [--per-connection K] [--timeout 60] [--json FILE]
                       [--ids FILE]

C connections run at once and share N messages. Each connection sends EHLO once per
session, then MAIL FROM (with SIZE=), RCPT TO, DATA, the dot-stuffed message, and reads
the reply to the final "<CRLF>.<CRLF>". With --per-connection K a session ends (QUIT)
after K messages and a new one is opened; by default one session per connection carries
all of its messages.

A message is realistic headers plus a multipart/mixed body: a short text part (with a
line that starts with "." so dot-stuffing is exercised) and a base64 attachment of random
bytes in 76-character lines, padded so the whole message is about --size bytes.

Latency of a message = time from writing the final ".<CRLF>" (after the whole body has
been handed to the kernel) to reading the complete reply. Non-2xx replies, timeouts and
lost connections are counted as errors; the run goes on. With --ids FILE, one line per
accepted message: "<id> <unix time the reply was read>", the id taken from the reply's
"Queued as <id>" (bench/run matches it with the sink's X-Mxhook-Id for latency to the POST).
"""

import argparse
import asyncio
import base64
import json
import os
import re
import socket
import sys
import time
from email.utils import formatdate


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n * p / 100)
    return sorted_values[int(min(rank, len(sorted_values))) - 1]


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 4.5.2: a line starting with "." gets one more "."."""
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed


def random_base64_lines(nbytes: int) -> bytes:
    """About nbytes of base64 text in 76-char CRLF lines (the MIME shape)."""
    raw = os.urandom(max(3, nbytes * 3 // 4))
    return base64.encodebytes(raw).replace(b"\n", b"\r\n")[:max(0, nbytes)]


def make_body(target_total: int, header_len: int, boundary: str) -> bytes:
    """Message body (after the header block) so that header_len + body ≈ target_total."""
    text_part = (
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
        "Hello,\r\n"
        "\r\n"
        "this is a benchmark message from bench/smtp_load.py.\r\n"
        ". This line starts with a dot and must survive dot-stuffing.\r\n"
        "..and this one with two.\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: application/octet-stream; name=\"payload.bin\"\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename=\"payload.bin\"\r\n"
        "\r\n"
    ).encode()
    trailer = f"\r\n--{boundary}--\r\n".encode()
    room = target_total - header_len - len(text_part) - len(trailer)
    lines = random_base64_lines(max(0, room))
    # Cut back to whole lines so the attachment stays well-formed; end without CRLF
    # (the trailer starts with one).
    cut = lines.rfind(b"\r\n")
    if cut < 0:
        lines = lines[: max(0, min(len(lines), 76))]
    else:
        tail = lines[cut + 2:]
        lines = lines[:cut] if len(tail) < 4 else lines[: cut + 2] + tail[: len(tail) // 4 * 4]
    return text_part + lines + trailer


def make_headers(seq: int, boundary: str, mail_from: str, rcpt: str) -> bytes:
    return (
        f"Return-Path: <{mail_from}>\r\n"
        f"From: Bench Sender <{mail_from}>\r\n"
        f"To: Bench Recipient <{rcpt}>\r\n"
        f"Subject: mxhook benchmark message {seq}\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        f"Message-ID: <{seq}.{os.getpid()}.{os.urandom(6).hex()}@bench.example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n"
        "X-Mailer: mxhook-bench/1\r\n"
        "\r\n"
    ).encode()


class Stats:
    def __init__(self):
        self.latencies = []          # seconds, accepted messages only
        self.accepted = 0
        self.accepted_bytes = 0      # bytes of message content (before dot-stuffing)
        self.errors = {}             # reason -> count
        self.first_send = None
        self.last_accept = None
        self.ids = []                # (queue id from the reply, unix time of the reply)

    def error(self, reason):
        self.errors[reason] = self.errors.get(reason, 0) + 1


QUEUED_AS = re.compile(r"[Qq]ueued as (\S+)")


class SmtpError(Exception):
    pass


async def read_reply(reader, timeout):
    """One (possibly multi-line) SMTP reply -> (code, text)."""
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise ConnectionError("connection closed by server")
        lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            break
    first = lines[0]
    try:
        code = int(first[:3])
    except ValueError:
        raise SmtpError(f"bad reply {first!r}")
    return code, "\n".join(lines)


class Generator:
    """Hands out message contents: unique headers, body from a small pool of random bodies."""

    def __init__(self, size, pool, mail_from, rcpt):
        self.mail_from, self.rcpt = mail_from, rcpt
        self.boundary = "=_mxhook_bench_" + os.urandom(8).hex()
        sample_header = len(make_headers(10 ** 9, self.boundary, mail_from, rcpt))
        self.bodies = [dot_stuff(make_body(size, sample_header, self.boundary))
                       for _ in range(pool)]

    def message(self, seq):
        headers = make_headers(seq, self.boundary, self.mail_from, self.rcpt)
        body = self.bodies[seq % len(self.bodies)]
        return headers, body


async def send_message(reader, writer, gen, seq, args, stats):
    """One transaction on an open session. Returns False when the session is unusable."""
    headers, body = gen.message(seq)
    size = len(headers) + len(body)  # stuffed size: a close upper bound, as real clients send
    writer.write(f"MAIL FROM:<{args.mail_from}> SIZE={size}\r\n".encode())
    code, text = await read_reply(reader, args.timeout)
    if code // 100 != 2:
        stats.error(f"MAIL {code}")
        return await rset(reader, writer, args)
    writer.write(f"RCPT TO:<{args.rcpt}>\r\n".encode())
    code, text = await read_reply(reader, args.timeout)
    if code // 100 != 2:
        stats.error(f"RCPT {code}")
        return await rset(reader, writer, args)
    writer.write(b"DATA\r\n")
    code, text = await read_reply(reader, args.timeout)
    if code != 354:
        stats.error(f"DATA {code}")
        return await rset(reader, writer, args)
    writer.write(headers)
    view = memoryview(body)
    chunk = 256 * 1024
    for off in range(0, len(view), chunk):
        writer.write(view[off:off + chunk])
        await asyncio.wait_for(writer.drain(), args.timeout)
    await asyncio.wait_for(writer.drain(), args.timeout)
    t0 = time.perf_counter()
    writer.write(b".\r\n")  # the body ends with CRLF: this completes <CRLF>.<CRLF>
    code, text = await read_reply(reader, args.timeout)
    t1 = time.perf_counter()
    if code // 100 == 2:
        stats.accepted += 1
        stats.accepted_bytes += size
        stats.latencies.append(t1 - t0)
        stats.last_accept = t1
        if args.ids:
            m = QUEUED_AS.search(text)
            stats.ids.append((m.group(1) if m else "-", time.time()))
    else:
        stats.error(f"end-of-data {code}")
        if args.verbose:
            print(f"smtp_load: message {seq}: {text}", file=sys.stderr)
        if code == 421:
            return False
    return True


async def rset(reader, writer, args):
    writer.write(b"RSET\r\n")
    code, _ = await read_reply(reader, args.timeout)
    return code // 100 == 2


async def worker(wid, queue, gen, args, stats):
    """One connection: sessions of up to --per-connection messages until the queue is empty."""
    while True:
        if queue[0] >= args.messages:
            return
        writer = None
        sent_here = 0
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port, limit=1 << 16), args.timeout)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code, text = await read_reply(reader, args.timeout)
            if code != 220:
                stats.error(f"greeting {code}")
                raise SmtpError("no 220 greeting")
            writer.write(f"EHLO {args.helo}\r\n".encode())
            code, text = await read_reply(reader, args.timeout)
            if code != 250:
                stats.error(f"EHLO {code}")
                raise SmtpError("EHLO refused")
            while queue[0] < args.messages and (args.per_connection <= 0
                                                or sent_here < args.per_connection):
                seq = queue[0]
                queue[0] += 1
                sent_here += 1
                if stats.first_send is None:
                    stats.first_send = time.perf_counter()
                try:
                    usable = await send_message(reader, writer, gen, seq, args, stats)
                except asyncio.TimeoutError:
                    stats.error("timeout")
                    raise
                except (ConnectionError, OSError) as exc:
                    stats.error(f"connection: {type(exc).__name__}")
                    raise
                if not usable:
                    raise SmtpError("session unusable")
            writer.write(b"QUIT\r\n")
            try:
                await read_reply(reader, args.timeout)
            except (asyncio.TimeoutError, ConnectionError, OSError, SmtpError):
                pass
        except (asyncio.TimeoutError, ConnectionError, OSError, SmtpError) as exc:
            if args.verbose:
                print(f"smtp_load: connection {wid}: {type(exc).__name__}: {exc}", file=sys.stderr)
            if sent_here == 0:
                # Do not spin on a dead or refusing server: a session that fails before
                # its first message (connect, greeting, EHLO) uses up one message.
                if writer is None:
                    stats.error(f"connect: {type(exc).__name__}")
                elif not isinstance(exc, SmtpError):
                    stats.error(f"session setup: {type(exc).__name__}")
                queue[0] += 1
                await asyncio.sleep(0.05)
        finally:
            if writer is not None:
                writer.close()
                try:
                    await asyncio.wait_for(writer.wait_closed(), 5)
                except (asyncio.TimeoutError, ConnectionError, OSError):
                    pass


async def run(args):
    pool = max(1, min(args.messages, (64 << 20) // max(1, args.size)))
    gen = Generator(args.size, pool, args.mail_from, args.rcpt)
    stats = Stats()
    queue = [0]  # next message number; one event loop thread, so no lock is needed
    wall0 = time.time()
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(worker(i, queue, gen, args, stats))
             for i in range(args.connections)]
    done, pending = await asyncio.wait(tasks, timeout=args.deadline)
    for task in pending:
        task.cancel()
    if pending:
        stats.error("deadline")
        await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            stats.error(f"worker crashed: {type(task.exception()).__name__}")
    t_end = stats.last_accept or time.perf_counter()
    start = stats.first_send or t0
    elapsed = max(1e-9, t_end - start)
    lat = sorted(stats.latencies)
    result = {
        "messages": args.messages,
        "connections": args.connections,
        "size": args.size,
        "message_bytes": len(gen.message(0)[0]) + len(gen.bodies[0]),
        "accepted": stats.accepted,
        "accepted_bytes": stats.accepted_bytes,
        "errors": sum(stats.errors.values()),
        "error_kinds": stats.errors,
        "connect_unix": wall0,  # before the first connection is opened
        "start_unix": wall0 + (start - t0),
        "end_unix": wall0 + (t_end - t0),
        "elapsed_s": elapsed,
        "msgs_per_s": stats.accepted / elapsed,
        "mb_per_s": stats.accepted_bytes / elapsed / 1e6,
        "p50_ms": None if not lat else percentile(lat, 50) * 1000,
        "p90_ms": None if not lat else percentile(lat, 90) * 1000,
        "p99_ms": None if not lat else percentile(lat, 99) * 1000,
        "max_ms": None if not lat else lat[-1] * 1000,
    }
    return result, stats.ids


def fmt_ms(v):
    return "-" if v is None else f"{v:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connections", "-c", type=int, default=16)
    ap.add_argument("--messages", "-n", type=int, default=2000)
    ap.add_argument("--size", "-s", type=int, default=4096, help="approximate message size in bytes")
    ap.add_argument("--per-connection", "-k", type=int, default=0,
                    help="messages per SMTP session (0: all on one session per connection)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for any one reply")
    ap.add_argument("--deadline", type=float, default=300.0, help="seconds for the whole run")
    ap.add_argument("--helo", default="bench.example.org")
    ap.add_argument("--mail-from", default="sender@bench.example.org")
    ap.add_argument("--rcpt", default="user@example.com")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--ids", metavar="FILE", help="write '<queue id> <reply unix>' per accepted message")
    ap.add_argument("--verbose", "-v", action="store_true", help="print each error's reply")
    args = ap.parse_args()
    if args.connections < 1 or args.messages < 0 or args.size < 0:
        ap.error("--connections must be >= 1, --messages and --size >= 0")
    args.connections = min(args.connections, max(1, args.messages))

    r, ids = asyncio.run(run(args))
    if args.ids:
        with open(args.ids, "w") as f:
            for qid, t in ids:
                f.write(f"{qid} {t:.6f}\n")
    print(f"sent {r['messages']} x ~{r['message_bytes']} B over {r['connections']} connections"
          f" ({'all' if args.per_connection <= 0 else args.per_connection} per session)")
    print(f"accepted {r['accepted']} in {r['elapsed_s']:.2f} s: {r['msgs_per_s']:.1f} msg/s,"
          f" {r['mb_per_s']:.2f} MB/s")
    print(f"latency end-of-data -> reply (ms): p50 {fmt_ms(r['p50_ms'])}  p90 {fmt_ms(r['p90_ms'])}"
          f"  p99 {fmt_ms(r['p99_ms'])}  max {fmt_ms(r['max_ms'])}")
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(r["error_kinds"].items()))
    print(f"errors {r['errors']}" + (f" ({kinds})" if kinds else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f)
    sys.exit(0 if r["errors"] == 0 and r["accepted"] == r["messages"] else 1)


if __name__ == "__main__":
    main()
