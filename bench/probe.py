#!/usr/bin/env python3
"""Ceiling probes for bench/run (Python 3 standard library only).

    bench/probe.py disk --dir DIR --size BYTES --writers W [--seconds 1.0] [--delete-lag N] [--spool]
    bench/probe.py http --port PORT --size BYTES --threads T [--seconds 1.0]

disk: W threads each repeat one durable commit, the way a spool commits a message:
create a file of BYTES in DIR/tmp, write it, fsync it, rename it into DIR/done, fsync
DIR/done. Threads are enough: os.write, os.fsync and os.rename release the GIL, and the
GIL-held part of a commit is a few microseconds against a fsync of 0.1 to 10 ms. Runs for
--seconds (at least one commit per writer), then removes its files (not timed). With
--delete-lag N each writer also deletes the file it committed N commits earlier, as a
spool that delivers removes what it took in (the steady state; on ext4 without a journal
each new inode is then checked against the recently deleted ones). Also reports the
probe's CPU per commit (user + system, from getrusage). With --spool each commit has the
shape of a spool item instead of one file: mkdir tmp/N, message.eml (BYTES) and meta.json
(512 bytes) each written and fsynced, fsync tmp/N, rename it into done/, fsync done/ (and
with --delete-lag, the item's two files and directory are removed later).

http: T threads each POST BYTES over one keep-alive connection to 127.0.0.1:PORT/hook
(bench/sink.py) as fast as the answers come, for --seconds. The client shares the GIL
between its threads, so the rate is a lower bound of what the sink sustains.

Both print one JSON object: {"ops": n, "elapsed_s": t, "per_s": n / t, ...}.
"""

import argparse
import http.client
import json
import collections
import os
import resource
import shutil
import threading
import time


def write_durable(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path):
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def disk(args):
    tmp = os.path.join(args.dir, "tmp")
    done = os.path.join(args.dir, "done")
    os.makedirs(tmp, exist_ok=True)
    os.makedirs(done, exist_ok=True)
    data = os.urandom(args.size)
    meta = b"{" + b" " * 510 + b"}"
    counts = [0] * args.writers
    errors = []
    start = threading.Barrier(args.writers + 1)
    deadline = [0.0]

    def writer(w):
        start.wait()
        n = 0
        committed = collections.deque()
        try:
            while n == 0 or time.perf_counter() < deadline[0]:
                name = f"{w}-{n}"
                src = os.path.join(tmp, name)
                if args.spool:
                    os.mkdir(src, 0o700)
                    write_durable(os.path.join(src, "message.eml"), data)
                    write_durable(os.path.join(src, "meta.json"), meta)
                    fsync_dir(src)
                else:
                    write_durable(src, data)
                os.rename(src, os.path.join(done, name))
                dfd = os.open(done, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
                if args.delete_lag > 0:
                    committed.append(os.path.join(done, name))
                    if len(committed) > args.delete_lag:
                        old = committed.popleft()
                        if args.spool:
                            os.unlink(os.path.join(old, "message.eml"))
                            os.unlink(os.path.join(old, "meta.json"))
                            os.rmdir(old)
                        else:
                            os.unlink(old)
                n += 1
        except OSError as exc:
            errors.append(str(exc))
        counts[w] = n

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(args.writers)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + args.seconds
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(done, ignore_errors=True)
    ops = sum(counts)
    return {"probe": "disk", "size": args.size, "writers": args.writers, "delete_lag": args.delete_lag,
            "spool": args.spool,
            "ops": ops, "elapsed_s": elapsed, "per_s": ops / elapsed,
            "cpu_ms_per_op": cpu_s * 1000 / ops if ops else None, "errors": errors[:3]}


def http_probe(args):
    body = b"x" * args.size
    counts = [0] * args.threads
    errors = []
    deadline = time.perf_counter() + args.seconds

    def client(i):
        n = 0
        try:
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
            while time.perf_counter() < deadline:
                conn.request("POST", "/hook", body, {
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Mxhook-Id": f"probe-{i}-{n}"})
                resp = conn.getresponse()
                resp.read()
                n += 1
            conn.close()
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        counts[i] = n

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ops = sum(counts)
    return {"probe": "http", "size": args.size, "threads": args.threads, "ops": ops,
            "elapsed_s": elapsed, "per_s": ops / elapsed, "errors": errors[:3]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    d = sub.add_parser("disk")
    d.add_argument("--dir", required=True)
    d.add_argument("--size", type=int, required=True)
    d.add_argument("--writers", type=int, default=1)
    d.add_argument("--seconds", type=float, default=1.0)
    d.add_argument("--delete-lag", type=int, default=0)
    d.add_argument("--spool", action="store_true")
    h = sub.add_parser("http")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--size", type=int, default=1024)
    h.add_argument("--threads", type=int, default=8)
    h.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    r = disk(args) if args.what == "disk" else http_probe(args)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
