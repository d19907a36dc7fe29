#!/usr/bin/env python3
"""The driver behind bench/run (see bench/README.md). Python 3 standard library only.

    bench/bench.py [--smoke] [--list] [group ...]

Groups: accept e2e backlog slow memory (the default run), scale (opt-in).
Environment: MXHOOK (binary), BENCH_TMPDIR (where the spools go), BENCH_REPEAT (runs per
figure, default 3), BENCH_RESULTS_DIR (default bench/results; not written by --smoke).

Every process it starts is registered and stopped by PID (SIGTERM, then SIGKILL) in a
finally block, which SIGINT and SIGTERM also reach. Every wait has a time limit.
"""

import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIGNING_KEY = "bench-signing-key"
CLK_TCK = os.sysconf("SC_CLK_TCK")
KB, MB = 1024, 1024 * 1024

GROUPS = ["accept", "e2e", "backlog", "slow", "memory", "auth", "formats", "scale"]
DEFAULT_GROUPS = ["accept", "e2e", "backlog", "slow", "memory", "auth", "formats"]

# Acceptance cells: (label, payload bytes for smtp-source -l, concurrency, messages in the
# full run, messages in --smoke). Counts are picked so that mxhook's run takes about 1 to 2 s
# on the reference machine; smtp-sink gets the same count.
ACCEPT_CELLS = [
    ("1 KB c1", 1 * KB, 1, 400, 10),
    ("1 KB c10", 1 * KB, 10, 2000, 20),
    ("1 KB c50", 1 * KB, 50, 3000, 60),
    ("100 KB c1", 100 * KB, 1, 200, 5),
    ("100 KB c10", 100 * KB, 10, 600, 20),
    ("100 KB c50", 100 * KB, 50, 800, 50),
    ("1 MB c10", 1 * MB, 10, 100, 10),
]


class Failure(Exception):
    pass


# --- processes ---------------------------------------------------------------------------

class Procs:
    """Every child process, so that each is stopped by its PID whatever happens."""

    def __init__(self):
        self.live = {}

    def start(self, name, cmd, **kw):
        p = subprocess.Popen(cmd, **kw)
        self.live[p.pid] = (name, p)
        return p

    def stop(self, p, grace=10.0):
        """SIGTERM, up to `grace` seconds, then SIGKILL. Returns the exit status."""
        if p is None:
            return None
        name = self.live.pop(p.pid, (str(p.pid), p))[0]
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                print(f"bench: {name} (pid {p.pid}) did not stop in {grace:.0f} s, killing it",
                      file=sys.stderr)
                p.kill()
                p.wait(10)
        return p.returncode

    def stop_all(self):
        for _, p in list(self.live.values()):
            self.stop(p, 5)


PROCS = Procs()


def run_timed(cmd, timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=None):
    """Runs cmd to completion (killed after `timeout` s). Returns (status, wall s, CPU s of
    the child, stderr text). wait4 gives the child's own rusage (user + system)."""
    t0 = time.perf_counter()
    p = PROCS.start(cmd[0], cmd, stdout=stdout, stderr=stderr, env=env)
    result = {}

    def reap():
        _, status, ru = os.wait4(p.pid, 0)
        result["t"] = time.perf_counter()
        result["status"] = os.waitstatus_to_exitcode(status)
        result["cpu"] = ru.ru_utime + ru.ru_stime

    # stderr is read by a thread so that a chatty child cannot block on a full pipe.
    err = []
    reader = None
    if stderr == subprocess.PIPE:
        reader = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)
        reader.start()
    waiter = threading.Thread(target=reap, daemon=True)
    waiter.start()
    waiter.join(timeout)
    if waiter.is_alive():
        p.kill()
        waiter.join(10)
        result.setdefault("status", -9)
        result.setdefault("t", time.perf_counter())
        result.setdefault("cpu", 0.0)
    p.returncode = result["status"]  # reaped by wait4: keep Popen from waiting again
    PROCS.live.pop(p.pid, None)
    if reader:
        reader.join(5)
    text = err[0].decode(errors="replace") if err and err[0] else ""
    return result["status"], result["t"] - t0, result["cpu"], text


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


# --- /proc --------------------------------------------------------------------------------

def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None


def machine_ticks():
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (iowait counts as idle)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v) - v[3] - v[4], sum(v)
    except (OSError, ValueError, IndexError):
        return None


def busy_cores(before, after):
    """Cores the whole machine kept busy between two machine_ticks() samples."""
    if not before or not after or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def count_entries(path):
    try:
        return len(os.listdir(path))
    except OSError:
        return 0


# --- the servers --------------------------------------------------------------------------

class Sink:
    """bench/sink.py on a free port."""

    def __init__(self, d, *opts, arrivals=False):
        os.makedirs(d, exist_ok=True)
        self.out = os.path.join(d, "sink.out")
        self.arrivals = os.path.join(d, "arrivals.txt") if arrivals else None
        cmd = [sys.executable, os.path.join(HERE, "sink.py"), "--port", "0",
               "--verify-key", SIGNING_KEY, *opts]
        if self.arrivals:
            cmd += ["--arrivals", self.arrivals]
        self.p = PROCS.start("sink", cmd, stdout=open(self.out, "w"),
                             stderr=open(os.path.join(d, "sink.err"), "w"))

        def port():
            try:
                with open(self.out) as f:
                    for line in f:
                        if line.startswith("listening "):
                            return int(line.split()[2])
            except OSError:
                pass
            return None
        self.port = wait_until(port, 10)
        if not self.port:
            raise Failure("sink did not start")

    def stats(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return {}

    def wait_distinct(self, n, timeout):
        """Waits until the sink has seen n distinct ids; returns its stats."""
        s = wait_until(lambda: (lambda st: st if st.get("distinct", 0) >= n else None)(self.stats()),
                       timeout, 0.02)
        return s or self.stats()

    def stop(self):
        PROCS.stop(self.p, 5)

    def read_arrivals(self):
        rows = {}
        try:
            with open(self.arrivals) as f:
                for line in f:
                    msg_id, arrived, answered = line.split()
                    rows.setdefault(msg_id, (float(arrived), float(answered)))
        except (OSError, ValueError, TypeError):
            pass
        return rows


class Mxhook:
    """mxhook with a clean environment (env -i), a spool under d, LOG_LEVEL=warn, signing."""

    def __init__(self, binary, d, webhook_port, env=None, ready_timeout=10.0, proxied=False):
        self.dir = d
        self.spool = os.path.join(d, "spool")
        os.makedirs(self.spool, exist_ok=True)
        self.port = free_port()
        e = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SPOOL_DIR": self.spool,
            "SMTP_LISTEN": f"127.0.0.1:{self.port}",
            "SMTP_HOSTNAME": "bench.local",
            "WEBHOOK_URL": f"http://127.0.0.1:{webhook_port}/hook",
            "WEBHOOK_SIGNING_KEY": SIGNING_KEY,
            "LOG_LEVEL": "warn",
            # All the load comes from 127.0.0.1: the default per-address cap (20) would
            # refuse the 50-client cells with 421.
            "SMTP_MAX_CONNECTIONS_PER_IP": "1000",
            # The acceptance cells measure the receiver alone; the auth cell turns the checks on.
            "AUTH_CHECKS": "none",
        }
        e.update(env or {})
        self.err = os.path.join(d, "mxhook.err")
        t0 = time.monotonic()
        self.p = PROCS.start("mxhook", [binary], env=e, stdout=subprocess.DEVNULL,
                             stderr=open(self.err, "a"))
        self.ready_s = None
        end = t0 + ready_timeout
        while time.monotonic() < end and self.p.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.settimeout(max(0.5, end - time.monotonic()))
                    if proxied:  # a PROXY header first (a readiness probe from loopback itself)
                        s.sendall(b"PROXY TCP4 127.0.0.1 127.0.0.1 1 25\r\n")
                    if s.recv(512).startswith(b"220"):
                        self.ready_s = time.monotonic() - t0
                        s.sendall(b"QUIT\r\n")
                        break
            except OSError:
                time.sleep(0.005)
        if self.ready_s is None:
            self.stop()
            raise Failure(f"mxhook did not greet on {self.port}: {open(self.err).read()[-500:]}")

    def ticks(self):
        return cpu_ticks(self.p.pid)

    def stop(self):
        return PROCS.stop(self.p, 15)

    def left(self):
        """Entries left in the four spool directories (after the stop)."""
        return {k: count_entries(os.path.join(self.spool, k))
                for k in ("tmp", "pending", "processing", "dead")}

    def log_lines(self):
        try:
            with open(self.err) as f:
                return f.read().splitlines()
        except OSError:
            return []


def smtp_sink_cmd(port):
    cmd = ["smtp-sink"]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]  # required when started as root
    return cmd + [f"127.0.0.1:{port}", "256"]


def smtp_source(port, size, conc, n, timeout=120):
    cmd = ["smtp-source", "-s", str(conc), "-m", str(n), "-l", str(size),
           "-f", "from@example.com", "-t", "to@example.org", f"127.0.0.1:{port}"]
    return run_timed(cmd, timeout)


def find_tool(name):
    for d in ("/usr/sbin", "/usr/bin", "/sbin"):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return shutil.which(name)


# --- spool items written directly (backlog and scale) -------------------------------------

def make_items(pending, n, size=1024):
    """n fresh items in pending/ in mxhook's exact layout (pending/<id>/message.eml and
    meta.json as src/spool writes them; ids "<unix-ms>-<uuid4>"), never attempted. Not
    fsynced one by one: one sync() at the end, so their writeback does not land in the
    measurement."""
    os.makedirs(pending, exist_ok=True)
    body = b"".join(b"%dX" % i + b"X" * 76 + b"\r\n" for i in range(size // 80 + 1))[:size]
    now = time.time()
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(now))
    created = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{int(now * 1000) % 1000:03d}Z"
    ms = int(now * 1000)
    for i in range(n):
        item_id = f"{ms}-{uuid.uuid4()}"
        d = os.path.join(pending, item_id)
        os.mkdir(d, 0o700)
        received = (f"from bench (localhost [127.0.0.1]) by bench.local (mxhook) with SMTP id {item_id} "
                    f"for <to@example.org>; {date}")
        msgid = f"<{i}.backlog@bench>"
        headers = [["Received", received], ["From", "<from@example.com>"], ["To", "<to@example.org>"],
                   ["Date", date], ["Message-Id", msgid]]
        eml = ("Received: from bench (localhost [127.0.0.1])\r\n"
               f"\tby bench.local (mxhook) with SMTP id {item_id}\r\n"
               f"\tfor <to@example.org>; {date}\r\n"
               "From: <from@example.com>\r\nTo: <to@example.org>\r\n"
               f"Date: {date}\r\nMessage-Id: {msgid}\r\n\r\n").encode() + body
        meta = {"id": item_id, "createdAt": created, "attempts": 0, "nextAttemptAt": None,
                "sender": "from@example.com", "recipients": ["to@example.org"],
                "from": "<from@example.com>", "subject": "", "headers": headers,
                "remote": {"ip": "127.0.0.1", "host": "localhost", "helo": "bench"}}
        for name, data in (("message.eml", eml), ("meta.json", (json.dumps(meta, indent=2) + "\n").encode())):
            fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
    os.sync()


# --- the bench ----------------------------------------------------------------------------

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec=".0f", unit=""):
    return "—" if v is None else format(v, spec) + unit


class Bench:
    def __init__(self, smoke, groups):
        self.smoke = smoke
        self.groups = groups
        self.repeat = 1 if smoke else max(1, int(os.environ.get("BENCH_REPEAT", "3")))
        self.binary = os.environ.get("MXHOOK") or os.path.join(ROOT, "build", "release", "mxhook")
        base = os.environ.get("BENCH_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
        self.work = tempfile.mkdtemp(prefix="mxhook-bench.", dir=base)
        # Each run's directory in a block group of its own (ext4's Orlov allocator spreads
        # the subdirectories of a "top" directory): on ext4 without a journal every new inode
        # is checked against those freed in its group in the last 30 s, so a probe that has
        # just removed its files would otherwise slow the next contender's file creations.
        self.topdir = subprocess.run(["chattr", "+T", self.work], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL).returncode == 0 if shutil.which("chattr") else False
        # A tmpfs for the cells that measure mxhook's own CPU without the disk's kernel work.
        try:
            self.shm = tempfile.mkdtemp(prefix="mxhook-bench.", dir="/dev/shm")
        except OSError:
            self.shm = None
        self.seq = 0
        self.rows = []        # (cell, mxhook, ceilings, ratio, bound by, target, met)
        self.problems = []    # lost messages, missing numbers: fail --smoke
        self.notes = []
        self.probes = {}      # (size, writers, shape) -> [commits/s]
        self.probe_cpu = {}   # (size, writers, shape) -> [CPU ms per commit]
        self.accept = {}      # label -> dict of medians
        self.smtp_source = find_tool("smtp-source")
        self.smtp_sink = find_tool("smtp-sink")
        if not self.smtp_source or not self.smtp_sink:
            raise Failure("smtp-source/smtp-sink not found: run scripts/bootstrap (Debian postfix)")

    def newdir(self, name, base=None):
        self.seq += 1
        d = os.path.join(base or self.work, f"{self.seq:03d}-{name.replace(' ', '')}")
        os.makedirs(d)
        return d

    def say(self, text):
        print(text, flush=True)

    def problem(self, text):
        self.problems.append(text)
        print(f"   PROBLEM: {text}", flush=True)

    def row(self, cell, mx, ceil, ratio, bound, target, met):
        self.rows.append((cell, mx, ceil, ratio, bound, target,
                          "—" if met is None else ("yes" if met else "**no**")))

    def check_done(self, cell, mx, sink, accepted, extra=0):
        """After mxhook stopped: the sink saw every accepted message once, spool empty."""
        st = sink.stats()
        want = accepted + extra
        if st.get("distinct", 0) < want:
            self.problem(f"{cell}: sink saw {st.get('distinct', 0)} distinct ids of {want}")
        if st.get("bad_signatures"):
            self.problem(f"{cell}: {st['bad_signatures']} bad signatures")
        left = mx.left()
        if any(left.values()):
            self.problem(f"{cell}: left in the spool: {left}")
        warn = mx.log_lines()
        if warn:
            self.notes.append(f"{cell}: mxhook logged {len(warn)} line(s) at warn+, first: {warn[0][:160]}")

    # -- ceilings --------------------------------------------------------------------------

    def probe(self, kind, *args, timeout=60):
        """bench/probe.py KIND ARGS -> its JSON result (per_s), or None."""
        cmd = [sys.executable, os.path.join(HERE, "probe.py"), kind, *args]
        try:
            p = PROCS.start("probe", cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            PROCS.stop(p, 2)
            return None
        finally:
            PROCS.live.pop(p.pid, None)
        try:
            return json.loads(out)
        except ValueError:
            print(f"   probe {kind} failed: {err.decode(errors='replace')[-300:]}", flush=True)
            return None

    def disk_rate(self, size, writers, shape=""):
        """shape "": the plain probe (a ceiling). "spool" / "spool, deleting": commits shaped
        like spool items (a directory with two files), kept or deleted 64 commits later."""
        d = self.newdir(f"disk-{size}-{writers}-{shape.replace(', ', '-')}")
        extra = (["--spool"] if shape else []) + (["--delete-lag", "64"] if "deleting" in shape else [])
        r = self.probe("disk", "--dir", d, "--size", str(size), "--writers", str(writers),
                       "--seconds", "0.2" if self.smoke else "1.0", *extra)
        v = r["per_s"] if r else None
        self.probes.setdefault((size, writers, shape), []).append(v)
        self.probe_cpu.setdefault((size, writers, shape), []).append(r.get("cpu_ms_per_op") if r else None)
        return v

    def http_rate(self, threads):
        d = self.newdir("http-probe")
        sink = Sink(d)
        try:
            r = self.probe("http", "--port", str(sink.port), "--size", "1024", "--threads", str(threads),
                           "--seconds", "0.3" if self.smoke else "1.0")
        finally:
            sink.stop()
        return r["per_s"] if r else None

    # -- acceptance ------------------------------------------------------------------------

    def accept_mxhook(self, label, size, conc, n, base=None):
        """Acceptance alone: the webhook holds the one request mxhook may have in flight
        (WEBHOOK_CONCURRENCY=1), so deliveries neither spend CPU nor disk while the cell runs,
        as smtp-sink and the disk probe spend none. What acceptance costs while mxhook also
        delivers is the e2e cells' "accepted" figure. After the stop every accepted message
        must be in pending/: nothing lost, nothing half-written. base: where the spool goes
        (default: the bench's work directory; /dev/shm for the tmpfs cells)."""
        d = self.newdir(label, base)
        sink = Sink(d, "--delay-ms", "600000", "--delay-phase", "before-body")
        mx = None
        try:
            mx = Mxhook(self.binary, d, sink.port, env={"WEBHOOK_CONCURRENCY": "1", "SHUTDOWN_GRACE_MS": "200"})
            c0, m0 = mx.ticks(), machine_ticks()
            status, wall, client_cpu, err = smtp_source(mx.port, size, conc, n)
            c1, m1 = mx.ticks(), machine_ticks()
            ok = status == 0
            if not ok:
                self.problem(f"{label}: smtp-source against mxhook exited {status}: {err.strip()[:200]}")
            hwm = status_kb(mx.p.pid, "VmHWM")
            mx.stop()
            left = mx.left()
            want = {"tmp": 0, "pending": n if ok else left["pending"], "processing": 0, "dead": 0}
            if left != want:
                self.problem(f"{label}: after the stop the spool holds {left}, expected {want}")
            cpu_s = (c1 - c0) / CLK_TCK
            return {"rate": n / wall if ok else None, "cpu_ms": cpu_s * 1000 / n if ok else None,
                    "cores": cpu_s / wall, "client_cores": client_cpu / wall, "hwm_kb": hwm,
                    "machine_cores": busy_cores(m0, m1)}
        finally:
            if mx:
                mx.stop()
            sink.stop()

    def accept_sink(self, label, size, conc, n):
        port = free_port()
        d = self.newdir(label + "-smtp-sink")
        p = PROCS.start("smtp-sink", smtp_sink_cmd(port), stdout=subprocess.DEVNULL,
                        stderr=open(os.path.join(d, "smtp-sink.err"), "w"))
        try:
            def up():
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return True
                except OSError:
                    return False
            if not wait_until(up, 10, 0.01):
                raise Failure("smtp-sink did not start")
            t0 = cpu_ticks(p.pid)
            status, wall, _, err = smtp_source(port, size, conc, n)
            t1 = cpu_ticks(p.pid)
            if status != 0:
                self.problem(f"{label}: smtp-source against smtp-sink exited {status}: {err.strip()[:200]}")
                return None, None
            return n / wall, (t1 - t0) / CLK_TCK / wall
        finally:
            PROCS.stop(p, 5)

    def run_accept(self):
        self.say(f"== acceptance: smtp-source, one connection per message, deliveries held; mxhook,"
                 f" smtp-sink and the disk probes interleaved, {self.repeat} run(s) each")
        for label, size, conc, n_full, n_smoke in ACCEPT_CELLS:
            n = n_smoke if self.smoke else n_full
            writers = min(conc, 32)
            tmpfs = self.shm is not None and size == KB and conc in (10, 50)
            mx_runs, shm_runs, sink_runs, sink_cores, disk_runs, spool_runs = [], [], [], [], [], []
            for _ in range(self.repeat):
                mx_runs.append(self.accept_mxhook(label, size, conc, n))
                if tmpfs:
                    shm_runs.append(self.accept_mxhook(label + " tmpfs", size, conc, n, self.shm))
                rate, cores = self.accept_sink(label, size, conc, n)
                sink_runs.append(rate)
                sink_cores.append(cores)
                disk_runs.append(self.disk_rate(size, writers))
                spool_runs.append(self.disk_rate(size, writers, "spool"))
                if size == KB and writers == 32:  # reported below the table only
                    self.disk_rate(size, writers, "spool, deleting")
            r = {k: med([m[k] for m in mx_runs]) for k in mx_runs[0]}
            r.update(sink=med(sink_runs), sink_cores=med(sink_cores), disk=med(disk_runs), writers=writers,
                     spool=med(spool_runs), n=n)
            if shm_runs:
                r["tmpfs"] = {k: med([m[k] for m in shm_runs]) for k in shm_runs[0]}
            self.accept[label] = r
            self.say(f"   {label}: {n} msgs; mxhook {fmt(r['rate'])} msg/s ({fmt(r['cpu_ms'], '.3f')} ms CPU/msg,"
                     f" {fmt(r['cores'], '.2f')} cores; smtp-source {fmt(r['client_cores'], '.2f')} cores);"
                     f" smtp-sink {fmt(r['sink'])} msg/s; disk probe ({writers} writer{'s' if writers > 1 else ''})"
                     f" {fmt(r['disk'])} commits/s, spool-shaped {fmt(r['spool'])}"
                     f"   [mxhook runs: {', '.join(fmt(m['rate']) for m in mx_runs)}]")
        for label, size, conc, _, _ in ACCEPT_CELLS:
            r = self.accept[label]
            ceil = [v for v in (r["sink"], r["disk"]) if v]
            binding = min(ceil) if ceil else None
            ws = f"{r['writers']} writer{'s' if r['writers'] > 1 else ''}"
            bound = None if binding is None else ("smtp-sink" if binding == r["sink"] else f"disk ({ws})")
            ratio = r["rate"] / binding if r["rate"] and binding else None
            # The plain probe commits one file with two fsyncs; a spool item (the layout
            # haraka-webhook set: a directory, message.eml and meta.json) needs four. The
            # spool-shaped probe is the disk bound mxhook cannot go under.
            if r["spool"] and r["rate"]:
                bound = (bound or "—") + f"; spool-shaped probe {r['spool']:.0f}: {r['rate'] / r['spool']:.2f} of it"
            # A session cannot answer 250 before its commit is durable, nor commit before
            # the dialogue has brought the message: per message, the time (and, on a busy
            # machine, the CPU) of an smtp-sink dialogue and of a spool-shaped commit add up.
            # Their series is the ceiling the layout and the machine leave.
            if r["spool"] and r["sink"] and r["rate"]:
                serial = 1 / (1 / r["sink"] + 1 / r["spool"])
                bound += f"; smtp-sink and spool-shaped probe in series {serial:.0f}: {r['rate'] / serial:.2f} of it"
            busy = f"; mxhook {r['cores']:.2f} cores" if r.get("cores") is not None else ""
            if (r.get("client_cores") or 0) >= 0.8:
                busy += f", smtp-source {r['client_cores']:.2f} cores"
            if r.get("machine_cores") is not None:
                busy += f", machine {r['machine_cores']:.2f} of {os.cpu_count()} cores busy"
            self.row(f"accept {label}, msgs/s", f"{fmt(r['rate'])} ({fmt(r['cpu_ms'], '.2f')} ms CPU/msg)",
                     f"smtp-sink {fmt(r['sink'])}, disk {fmt(r['disk'])}", fmt(ratio, ".2f"),
                     (bound or "—") + busy, "≥ 0.70", None if ratio is None else ratio >= 0.70)
        for label in ("1 KB c10", "1 KB c50"):
            r = self.accept[label]
            spool_cpu = med(self.probe_cpu.get((KB, r["writers"], "spool"), []))
            self.row(f"CPU per accepted 1 KB msg ({label.split()[-1]})", fmt(r["cpu_ms"], ".3f", " ms"),
                     f"smtp-sink {r['sink_cores'] * 1000 / r['sink']:.3f} ms" if r.get("sink") and r.get("sink_cores") is not None else "—",
                     "—", f"mxhook {fmt(r['cores'], '.2f')} cores; the spool-shaped probe alone spends"
                     f" {fmt(spool_cpu, '.3f')} ms per commit", "≤ 0.25 ms",
                     None if r["cpu_ms"] is None else r["cpu_ms"] <= 0.25)
            t = r.get("tmpfs")
            if t:
                self.row(f"CPU per accepted 1 KB msg ({label.split()[-1]}), spool on tmpfs",
                         f"{fmt(t['cpu_ms'], '.3f', ' ms')} ({fmt(t['rate'])} msgs/s)", "—", "—",
                         f"mxhook {fmt(t['cores'], '.2f')} cores; no disk work", "≤ 0.25 ms",
                         None if t["cpu_ms"] is None else t["cpu_ms"] <= 0.25)
        r = self.accept["1 KB c50"]
        hwm = r["hwm_kb"] / 1024 if r["hwm_kb"] else None
        self.row("peak RSS, 50 concurrent 1 KB sessions", fmt(hwm, ".1f", " MiB"), "—", "—", "—",
                 "≤ 20 MB", None if hwm is None else hwm * 1.048576 <= 20)

    # -- end to end ------------------------------------------------------------------------

    def e2e_once(self, conc, n, base=None):
        d = self.newdir(f"e2e-c{conc}", base)
        sink = Sink(d, arrivals=True)
        mx = None
        try:
            mx = Mxhook(self.binary, d, sink.port)
            c0 = mx.ticks()
            load_json, ids_file = os.path.join(d, "load.json"), os.path.join(d, "ids.txt")
            status, wall, client_cpu, err = run_timed(
                [sys.executable, os.path.join(HERE, "smtp_load.py"), "--port", str(mx.port),
                 "--messages", str(n), "--size", "1024", "--connections", str(conc), "--per-connection", "1",
                 "--timeout", "30", "--deadline", "100", "--json", load_json, "--ids", ids_file], 110)
            try:
                load = json.load(open(load_json))
            except (OSError, ValueError):
                load = {}
            accepted = load.get("accepted", 0)
            if status != 0 or accepted != n:
                self.problem(f"e2e c{conc}: smtp_load exited {status}, accepted {accepted} of {n}: {err.strip()[:200]}")
            st = sink.wait_distinct(accepted, 60 if not self.smoke else 20)
            c1 = mx.ticks()
            mx.stop()
            self.check_done(f"e2e c{conc}", mx, sink, accepted)
        finally:
            if mx:
                mx.stop()
            sink.stop()
        arrivals = sink.read_arrivals()
        lat = []
        for line in open(ids_file) if os.path.exists(ids_file) else []:
            qid, t = line.split()
            if qid in arrivals:
                lat.append((arrivals[qid][0] - float(t)) * 1000)
        lat.sort()
        start = load.get("connect_unix")
        last = st.get("answered_last")
        if not (start and last and accepted and lat):
            return None
        return {"deliver_rate": accepted / (last - start),
                "accept_rate": accepted / (load["end_unix"] - start),
                "p50": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                "cpu_ms": (c1 - c0) / CLK_TCK * 1000 / accepted,
                "client_cores": client_cpu / wall}

    def flow_once(self, conc, n, base=None, env=None, size=KB):
        """smtp-source as in the acceptance cells, but with deliveries flowing (the sink answers
        at once): mxhook's CPU from the first connection to the last POST answered, per
        message. The Python e2e cells run at the Python client's pace, which spreads the same
        work over more idle wake-ups; this is the same work at smtp-source's pace."""
        d = self.newdir(f"flow-c{conc}", base)
        sink = Sink(d)
        mx = None
        try:
            mx = Mxhook(self.binary, d, sink.port, env=env)
            c0, t0 = mx.ticks(), time.time()
            status, _, _, err = smtp_source(mx.port, size, conc, n)
            if status != 0:
                self.problem(f"flow c{conc}: smtp-source against mxhook exited {status}: {err.strip()[:200]}")
                return None
            sink.wait_distinct(n, 60 if not self.smoke else 20)
            c1, t1 = mx.ticks(), time.time()
            mx.stop()
            self.check_done(f"flow c{conc}", mx, sink, n)
            return {"cpu_ms": (c1 - c0) / CLK_TCK * 1000 / n, "rate": n / (t1 - t0)}
        finally:
            if mx:
                mx.stop()
            sink.stop()

    def run_flow(self, n):
        for conc in (10, 50):
            for base, where in ((None, ""), (self.shm, ", spool on tmpfs")):
                if base is None and where:
                    continue
                runs = [r for r in (self.flow_once(conc, n, base) for _ in range(self.repeat)) if r]
                if not runs:
                    self.problem(f"flow c{conc}{where}: no result")
                    continue
                cpu, rate = med([r["cpu_ms"] for r in runs]), med([r["rate"] for r in runs])
                self.say(f"   smtp-source c{conc}{where}, deliveries flowing: {fmt(rate)} msgs/s delivered,"
                         f" {fmt(cpu, '.3f')} ms CPU/msg")
                self.row(f"CPU per msg accepted + delivered, smtp-source c{conc}{where}",
                         f"{fmt(cpu, '.3f', ' ms')} ({fmt(rate)} deliveries/s)", "—", "—",
                         "the acceptance cells' client, deliveries flowing" + ("; no disk work" if where else ""),
                         "≤ 0.40 ms", cpu <= 0.40)

    def run_e2e(self):
        n = self.e2e_n = 40 if self.smoke else 2000
        self.say(f"== end to end: {n} x 1 KB, one connection per message (bench/smtp_load.py), sink answers at once")
        for conc in (10, 50):
            runs, shm_runs = [], []
            for _ in range(self.repeat):
                runs.append(self.e2e_once(conc, n))
                if self.shm:
                    shm_runs.append(self.e2e_once(conc, n, self.shm))
            runs = [r for r in runs if r]
            shm_runs = [r for r in shm_runs if r]
            if not runs:
                self.problem(f"e2e c{conc}: no result")
                r = dict.fromkeys(("deliver_rate", "accept_rate", "p50", "p99", "cpu_ms", "client_cores"))
            else:
                r = {k: med([x[k] for x in runs]) for k in runs[0]}
            self.say(f"   c{conc}: delivered {fmt(r['deliver_rate'])}/s, accepted {fmt(r['accept_rate'])}/s,"
                     f" 250-to-POST p50 {fmt(r['p50'], '.1f')} ms p99 {fmt(r['p99'], '.1f')} ms,"
                     f" {fmt(r['cpu_ms'], '.3f')} ms CPU/msg, client {fmt(r['client_cores'], '.2f')} cores")
            ratio = r["deliver_rate"] / r["accept_rate"] if r["deliver_rate"] and r["accept_rate"] else None
            smtp_src = self.accept.get(f"1 KB c{conc}", {}).get("rate")
            self.row(f"e2e {n} × 1 KB c{conc}, deliveries/s", fmt(r["deliver_rate"]),
                     f"accepted {fmt(r['accept_rate'])}/s same run" +
                     (f" (smtp-source cell {smtp_src:.0f})" if smtp_src else ""), fmt(ratio, ".2f"),
                     f"client (Python) {fmt(r['client_cores'], '.2f')} cores", "≥ 0.90",
                     None if ratio is None else ratio >= 0.90)
            self.row(f"e2e c{conc}, 250 → POST p50 / p99", f"{fmt(r['p50'], '.1f')} / {fmt(r['p99'], '.1f')} ms",
                     "—", "—", "—", "< 5 / < 50 ms",
                     None if r["p50"] is None else (r["p50"] < 5 and r["p99"] < 50))
            self.row(f"e2e c{conc}, CPU per msg accepted + delivered", fmt(r["cpu_ms"], ".3f", " ms"), "—", "—",
                     "—", "≤ 0.40 ms", None if r["cpu_ms"] is None else r["cpu_ms"] <= 0.40)
            if shm_runs:
                t = {k: med([x[k] for x in shm_runs]) for k in shm_runs[0]}
                self.row(f"e2e c{conc}, CPU per msg accepted + delivered, spool on tmpfs",
                         f"{fmt(t['cpu_ms'], '.3f', ' ms')} ({fmt(t['deliver_rate'])} deliveries/s)", "—", "—",
                         "no disk work", "≤ 0.40 ms", None if t["cpu_ms"] is None else t["cpu_ms"] <= 0.40)
        self.run_flow(n)

    # -- backlog ---------------------------------------------------------------------------

    def backlog_once(self, items, m):
        d = self.newdir("backlog")
        make_items(os.path.join(d, "spool", "pending"), items)
        sink = Sink(d)
        mx = None
        try:
            t0 = time.time()
            mx = Mxhook(self.binary, d, sink.port)
            rss_ready = status_kb(mx.p.pid, "VmRSS")
            # during the drain: 1 KB at concurrency 10, right after the banner
            status, wall, _, err = smtp_source(mx.port, 1024, 10, m)
            during = m / wall if status == 0 else None
            if status != 0:
                self.problem(f"backlog: smtp-source during the drain exited {status}: {err.strip()[:200]}")
            # CPU per delivery from here to the end of the drain (no SMTP load meanwhile)
            c0, n0 = mx.ticks(), sink.stats().get("deliveries", 0)
            st = sink.wait_distinct(items + m, 120 if not self.smoke else 20)
            c1 = mx.ticks()
            got = st.get("deliveries", 0) - n0
            cpu_ms = (c1 - c0) / CLK_TCK * 1000 / got if got > 0 else None
            drained = st.get("distinct", 0)
            drain_rate = drained / (st["answered_last"] - t0) if st.get("answered_last") else None
            if st.get("distinct", 0) < items + m:
                self.problem(f"backlog: drained {drained} of {items + m} in time")
            # idle: the same load with the spool empty, same process
            status, wall, _, err = smtp_source(mx.port, 1024, 10, m)
            idle = m / wall if status == 0 else None
            sink.wait_distinct(items + 2 * m, 30)
            mx.stop()
            self.check_done("backlog", mx, sink, items + 2 * m)
            return drain_rate, during, idle, cpu_ms, (rss_ready or 0) / 1024
        finally:
            if mx:
                mx.stop()
            sink.stop()

    def run_backlog(self):
        items, m = (200, 20) if self.smoke else (10000, 1000)
        self.say(f"== backlog: {items} items in pending/ at start; drain rate; {m} x 1 KB at c10 during the"
                 f" drain and idle; ceilings: sink (HTTP probe, 16 threads) and disk probe (1 KB, 16 writers)")
        drains, durings, idles, https, disks, cpus, rsss = [], [], [], [], [], [], []
        for _ in range(self.repeat):
            https.append(self.http_rate(16))
            disks.append(self.disk_rate(1024, 16))
            dr, du, il, cpu, rss = self.backlog_once(items, m)
            drains.append(dr); durings.append(du); idles.append(il); cpus.append(cpu); rsss.append(rss)
        dr, du, il, hp, dp = med(drains), med(durings), med(idles), med(https), med(disks)
        cpu, rss = med(cpus), med(rsss)
        self.say(f"   drain {fmt(dr)}/s (runs {', '.join(fmt(x) for x in drains)}); acceptance during {fmt(du)}/s,"
                 f" idle {fmt(il)}/s; sink probe {fmt(hp)}/s, disk probe {fmt(dp)}/s; {fmt(cpu, '.3f')} ms CPU"
                 f" per delivery; VmRSS {fmt(rss, '.1f')} MiB at the banner")
        ceil = [v for v in (hp, dp) if v]
        binding = min(ceil) if ceil else None
        ratio = dr / binding if dr and binding else None
        self.row(f"backlog {items} pending, drain deliveries/s",
                 f"{fmt(dr)} ({fmt(cpu, '.2f')} ms CPU/delivery; RSS {fmt(rss, '.1f')} MiB at start)",
                 f"sink ≥ {fmt(hp)}, disk {fmt(dp)}", fmt(ratio, ".2f"),
                 "—" if binding is None else ("sink (lower bound)" if binding == hp else "disk (16 writers)"),
                 "≥ 0.70", None if ratio is None else ratio >= 0.70)
        ratio = du / il if du and il else None
        self.row("backlog, acceptance during drain vs idle", f"{fmt(du)} vs {fmt(il)} msg/s", "idle, same process",
                 fmt(ratio, ".2f"), "—", "≥ 0.70", None if ratio is None else ratio >= 0.70)

    # -- slow webhook ----------------------------------------------------------------------

    def slow_once(self, conc, delay_ms, m, reps):
        """Sink sleeping delay_ms per request, WEBHOOK_CONCURRENCY=conc. Deliveries/s from the
        sink's answer times: the (i + j*conc)-th answer is the same delivery slot j turns
        later, so j*conc / (t[i + j*conc] - t[i]) is the rate whatever the phase."""
        d = self.newdir(f"slow-{conc}")
        sink = Sink(d, "--delay-ms", str(delay_ms), arrivals=True)
        mx = None
        backlog = 8 * conc
        accepted = 0
        try:
            mx = Mxhook(self.binary, d, sink.port, env={"WEBHOOK_CONCURRENCY": str(conc)})
            status, _, _, err = smtp_source(mx.port, 1024, 10, backlog)
            if status == 0:
                accepted += backlog
            else:
                self.problem(f"slow c{conc}: smtp-source exited {status}: {err.strip()[:200]}")
            wait_until(lambda: sink.stats().get("in_flight", 0) >= conc, 10, 0.05)
            rates = []
            for _ in range(reps):  # acceptance meanwhile (1 KB c10, m messages)
                status, wall, _, err = smtp_source(mx.port, 1024, 10, m)
                if status == 0:
                    accepted += m
                    rates.append(m / wall)
            if self.smoke:
                sink.wait_distinct(accepted, 30)
            else:  # let the first `backlog` deliveries finish (they were queued first)
                sink.wait_distinct(backlog, backlog / conc * delay_ms / 1000 * 2 + 10)
            mx.stop()
            if self.smoke:
                self.check_done(f"slow c{conc}", mx, sink, accepted)
        finally:
            if mx:
                mx.stop()
            sink.stop()
        answers = sorted(a[1] for a in sink.read_arrivals().values())[:backlog]
        rate = None
        i = conc  # skip the first turn (the sessions start one by one)
        j = (len(answers) - 1 - i) // conc
        if j >= 1:
            rate = j * conc / (answers[i + j * conc] - answers[i])
        return rate, med(rates)

    def run_slow(self):
        delay, m = (200, 10) if self.smoke else (1000, 500)
        concs = (4,) if self.smoke else (8, 32)
        self.say(f"== slow webhook: sink sleeps {delay} ms per request; WEBHOOK_CONCURRENCY {concs};"
                 f" {m} x 1 KB at c10 meanwhile, {self.repeat} time(s)")
        normal = self.accept.get("1 KB c10", {}).get("rate")
        for conc in concs:
            rate, acc = self.slow_once(conc, delay, m, self.repeat)
            ideal = conc * 1000 / delay
            self.say(f"   N={conc}: {fmt(rate, '.1f')} deliveries/s (ideal {ideal:.0f}); acceptance meanwhile {fmt(acc)}/s")
            ratio = rate / ideal if rate else None
            self.row(f"slow webhook ({delay} ms) N={conc}, deliveries/s", fmt(rate, ".1f"), f"N / delay = {ideal:.0f}",
                     fmt(ratio, ".2f"), "webhook", "0.90–1.10", None if ratio is None else 0.9 <= ratio <= 1.1)
            ratio = acc / normal if acc and normal else None
            self.row(f"slow webhook N={conc}, acceptance 1 KB c10", fmt(acc),
                     f"normal {fmt(normal)} (accept 1 KB c10)" if normal else "— (needs the accept group)",
                     fmt(ratio, ".2f"), "—", "≥ 0.80", None if ratio is None else ratio >= 0.80)

    # -- memory ----------------------------------------------------------------------------

    def memory_once(self, n, size, delay_ms):
        d = self.newdir("memory")
        sink = Sink(d, "--delay-ms", str(delay_ms))
        mx = None
        try:
            mx = Mxhook(self.binary, d, sink.port,
                        # a 25 MiB POST to a sink that sleeps 2 s can pass the default 10 s
                        # timeout on a busy machine: it would be retried 30 s later
                        env={"SMTP_MAX_MESSAGE_BYTES": "30000000", "WEBHOOK_CONCURRENCY": str(n),
                             "WEBHOOK_TIMEOUT_MS": "60000"})
            status, _, _, err = run_timed(
                [sys.executable, os.path.join(HERE, "smtp_load.py"), "--port", str(mx.port), "--messages",
                 str(n), "--size", str(size), "--connections", str(n), "--timeout", "60", "--deadline", "100"], 110)
            if status != 0:
                self.problem(f"memory: smtp_load exited {status}: {err.strip()[:200]}")
            st = sink.wait_distinct(n if status == 0 else 0, 90)
            hwm = status_kb(mx.p.pid, "VmHWM")
            mx.stop()
            self.check_done("memory", mx, sink, n if status == 0 else 0)
            return (hwm / 1024 if hwm else None), st.get("max_in_flight")
        finally:
            if mx:
                mx.stop()
            sink.stop()

    def run_memory(self):
        n, size, delay = (4, 2 * MB, 200) if self.smoke else (16, 25 * MB, 2000)
        self.say(f"== memory: {n} sessions x {size // MB} MiB, sink sleeps {delay} ms, WEBHOOK_CONCURRENCY={n}")
        runs = [self.memory_once(n, size, delay) for _ in range(self.repeat)]
        hwm = med([r[0] for r in runs])
        inflight = max((r[1] or 0) for r in runs)
        self.say(f"   peak RSS {fmt(hwm, '.1f')} MiB (runs {', '.join(fmt(r[0], '.1f') for r in runs)}),"
                 f" sink had up to {inflight} requests in flight")
        self.row(f"peak RSS, {n} × {size // MB} MiB in + {n} deliveries in flight", fmt(hwm, ".1f", " MiB"),
                 "—", "—", f"{inflight} POSTs in flight", "≤ 96 MB" if not self.smoke else "—",
                 None if hwm is None or self.smoke else hwm * 1.048576 <= 96)

    # -- auth --------------------------------------------------------------------------------

    def auth_once(self, label, checks, conc, n):
        """smtp-source -> HAProxy (which presents every connection as 192.0.2.10 with the
        PROXY protocol: a loopback client would pass SPF without a lookup) -> mxhook, whose
        DNS is dnsmasq on loopback answering from memory. Deliveries held, as in the
        acceptance cells. With the checks on, every message costs an SPF and a DMARC lookup,
        the DKIM pass over the message and the Authentication-Results rewrite."""
        d = self.newdir(label)
        dns_port, front = free_port(), free_port()
        procs = []
        sink = Sink(d, "--delay-ms", "600000", "--delay-phase", "before-body")
        mx = None
        try:
            procs.append(PROCS.start("dnsmasq", [
                self.dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", f"--port={dns_port}",
                "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                "--pid-file=", "--local=/example.com/", "--local=/example.org/",
                "--txt-record=example.com,v=spf1 ip4:192.0.2.0/24 -all",
                "--txt-record=_dmarc.example.com,v=DMARC1; p=reject"],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "dnsmasq.err"), "w")))
            env = {"WEBHOOK_CONCURRENCY": "1", "SHUTDOWN_GRACE_MS": "200",
                   "SMTP_PROXY_PROTOCOL_FROM": "127.0.0.1", "DNS_SERVERS": f"127.0.0.1:{dns_port}",
                   "AUTH_CHECKS": checks}
            mx = Mxhook(self.binary, d, sink.port, env=env, proxied=True)
            cfg = os.path.join(d, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write("global\n  maxconn 4096\n"
                        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
                        f"frontend smtp\n  bind 127.0.0.1:{front}\n"
                        "  tcp-request connection set-src ipv4(192.0.2.10)\n  default_backend mx\n"
                        f"backend mx\n  server mx 127.0.0.1:{mx.port} send-proxy\n")
            procs.append(PROCS.start("haproxy", [self.haproxy, "-db", "-f", cfg], stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(d, "haproxy.err"), "w")))

            def greets():
                try:
                    with socket.create_connection(("127.0.0.1", front), timeout=1) as sock:
                        sock.settimeout(2)
                        ok = sock.recv(512).startswith(b"220")
                        sock.sendall(b"QUIT\r\n")
                        return ok
                except OSError:
                    return False
            if not wait_until(greets, 10, 0.02):
                raise Failure(f"{label}: no greeting through HAProxy")
            c0, m0 = mx.ticks(), machine_ticks()
            status, wall, _, err = smtp_source(front, KB, conc, n)
            c1, m1 = mx.ticks(), machine_ticks()
            ok = status == 0
            if not ok:
                self.problem(f"{label}: smtp-source through HAProxy exited {status}: {err.strip()[:200]}")
            mx.stop()
            left = mx.left()
            if ok and left != {"tmp": 0, "pending": n, "processing": 0, "dead": 0}:
                self.problem(f"{label}: after the stop the spool holds {left}")
            # The checks must have run, and found what dnsmasq serves.
            want = {"spf": "pass", "dkim": "none", "dmarc": "pass"} if checks != "none" else None
            pending = os.path.join(mx.spool, "pending")
            for item in sorted(os.listdir(pending))[:3]:
                with open(os.path.join(pending, item, "meta.json")) as f:
                    got = json.load(f).get("verdicts")
                if got != want:
                    self.problem(f"{label}: meta.json auth is {got}, expected {want}")
            cpu_s = (c1 - c0) / CLK_TCK
            return {"rate": n / wall if ok else None, "cpu_ms": cpu_s * 1000 / n if ok else None,
                    "machine_cores": busy_cores(m0, m1)}
        finally:
            if mx:
                mx.stop()
            for p in reversed(procs):
                PROCS.stop(p, 5)
            sink.stop()

    def run_auth(self):
        self.dnsmasq, self.haproxy = find_tool("dnsmasq"), find_tool("haproxy")
        if not self.dnsmasq or not self.haproxy:
            self.notes.append("auth: needs dnsmasq and haproxy (scripts/bootstrap installs them); skipped")
            self.row("1 KB c50, SPF+DKIM+DMARC on", "— (dnsmasq or haproxy missing)", "—", "—", "—", "—", None)
            return
        conc, n = (50, 60) if self.smoke else (50, 3000)
        self.say(f"== auth: 1 KB c{conc} through HAProxy (PROXY protocol, client 192.0.2.10), DNS from dnsmasq;"
                 f" checks off and on interleaved, {self.repeat} run(s) each")
        off, on = [], []
        for _ in range(self.repeat):
            off.append(self.auth_once("auth-off", "none", conc, n))
            on.append(self.auth_once("auth-on", "spf,dkim,dmarc", conc, n))
        r_off, r_on = med([r["rate"] for r in off]), med([r["rate"] for r in on])
        cpu_off, cpu_on = med([r["cpu_ms"] for r in off]), med([r["cpu_ms"] for r in on])
        cores = med([r["machine_cores"] for r in on])
        ratio = r_on / r_off if r_on and r_off else None
        self.say(f"   checks off {fmt(r_off)}/s at {fmt(cpu_off, '.3f')} ms CPU each;"
                 f" on {fmt(r_on)}/s at {fmt(cpu_on, '.3f')} ms (runs off {', '.join(fmt(r['rate']) for r in off)};"
                 f" on {', '.join(fmt(r['rate']) for r in on)})")
        self.row(f"1 KB c{conc} through HAProxy, SPF+DKIM+DMARC on", fmt(r_on, ".0f", "/s"),
                 f"{fmt(r_off)}/s with the checks off", fmt(ratio, ".2f"),
                 f"CPU {fmt(cpu_on, '.3f')} vs {fmt(cpu_off, '.3f')} ms/message; machine {fmt(cores, '.1f')} cores busy",
                 "≥ 0.80 of checks off" if not self.smoke else "—",
                 None if ratio is None or self.smoke else ratio >= 0.8)

    # -- payload formats -------------------------------------------------------------------

    def run_formats(self):
        """WEBHOOK_FORMAT=parsed and json take the message apart with GMime and write the body to
        a scratch file before posting: what that costs against the mime payload, same load."""
        conc = 10
        self.say(f"== formats: smtp-source c{conc}, deliveries flowing, WEBHOOK_FORMAT mime / parsed / json"
                 f" interleaved, {self.repeat} run(s) each")
        for size, n, label in ((KB, 40 if self.smoke else 3000, "1 KB"), (100 * KB, 10 if self.smoke else 500, "100 KB")):
            runs = {f: [] for f in ("mime", "parsed", "json")}
            for _ in range(self.repeat):
                for f in runs:
                    runs[f].append(self.flow_once(conc, n, env={"WEBHOOK_FORMAT": f}, size=size))
            result = {}
            for f, rs in runs.items():
                rs = [r for r in rs if r]
                if not rs:
                    self.problem(f"formats {label} {f}: no result")
                    continue
                result[f] = (med([r["rate"] for r in rs]), med([r["cpu_ms"] for r in rs]))
            if "mime" not in result:
                continue
            base_rate, base_cpu = result["mime"]
            self.say(f"   {label}: " + "; ".join(f"{f} {fmt(r)}/s at {fmt(c, '.3f')} ms CPU" for f, (r, c) in result.items()))
            for f in ("parsed", "json"):
                if f not in result:
                    continue
                rate, cpu = result[f]
                ratio = rate / base_rate if base_rate else None
                self.row(f"{label} c{conc} accepted + delivered, WEBHOOK_FORMAT={f}",
                         f"{fmt(rate)}/s ({fmt(cpu, '.3f', ' ms')} CPU/msg)",
                         f"mime {fmt(base_rate)}/s ({fmt(base_cpu, '.3f', ' ms')})", fmt(ratio, ".2f"),
                         "parse (GMime) + body file + stream", "≥ 0.50 of mime" if not self.smoke else "—",
                         None if ratio is None or self.smoke else ratio >= 0.5)

    # -- scale -----------------------------------------------------------------------------

    def run_scale(self):
        items = 300 if self.smoke else 100000
        self.say(f"== scale: {items} items in pending/ at start: time to the SMTP banner, RSS, first deliveries")
        d = self.newdir("scale")
        t = time.monotonic()
        make_items(os.path.join(d, "spool", "pending"), items)
        self.say(f"   wrote {items} items in {time.monotonic() - t:.1f} s")
        readies, rss0s, rsss, rates, cpus = [], [], [], [], []
        sink = Sink(d)
        delivered = 0
        try:
            for _ in range(self.repeat):
                mx = Mxhook(self.binary, d, sink.port, ready_timeout=60)
                try:
                    readies.append(mx.ready_s)
                    rss0s.append((status_kb(mx.p.pid, "VmRSS") or 0) / 1024)
                    base = sink.stats().get("deliveries", 0)
                    c0, t0 = mx.ticks(), time.monotonic()
                    time.sleep(0.5 if self.smoke else 2.0)
                    c1, t1 = mx.ticks(), time.monotonic()
                    got = sink.stats().get("deliveries", 0) - base
                    rsss.append((status_kb(mx.p.pid, "VmRSS") or 0) / 1024)
                    rates.append(got / (t1 - t0))
                    cpus.append((c1 - c0) / CLK_TCK * 1000 / got if got else None)
                    if self.smoke:
                        sink.wait_distinct(items, 20)
                finally:
                    mx.stop()
            delivered = sink.stats().get("distinct", 0)
            if self.smoke:
                if delivered < items:
                    self.problem(f"scale: sink saw {delivered} of {items}")
                left = mx.left()
                if any(left.values()):
                    self.problem(f"scale: left in the spool: {left}")
        finally:
            sink.stop()
        ready, rss0, rss, rate, cpu = med(readies), med(rss0s), med(rsss), med(rates), med(cpus)
        self.say(f"   ready in {fmt(ready, '.2f')} s (runs {', '.join(fmt(x, '.2f') for x in readies)}); VmRSS"
                 f" {fmt(rss0, '.1f')} MiB at the banner, {fmt(rss, '.1f')} MiB after the first seconds:"
                 f" {fmt(rate)} deliveries/s, {fmt(cpu, '.3f')} ms CPU each")
        self.row(f"scale {items} pending, start to SMTP banner", fmt(ready, ".2f", " s"), "—", "—",
                 f"RSS {fmt(rss0, '.1f')} MiB at start, {fmt(rss, '.1f')} MiB after; {fmt(rate)} deliveries/s"
                 f" at {fmt(cpu, '.2f')} ms CPU each",
                 "< 2 s", None if ready is None else ready < 2)

    # -- report ----------------------------------------------------------------------------

    def machine(self):
        def read(path):
            try:
                with open(path) as f:
                    return f.read()
            except OSError:
                return ""
        model = next((l.split(":", 1)[1].strip() for l in read("/proc/cpuinfo").splitlines()
                      if l.startswith("model name")), "unknown")
        mem = next((int(l.split()[1]) for l in read("/proc/meminfo").splitlines() if l.startswith("MemTotal")), 0)

        def cmd(*c):
            try:
                return subprocess.run(c, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                return ""
        fs = cmd("findmnt", "-no", "SOURCE,FSTYPE,OPTIONS", "-T", self.work)
        # The binary does not record its commit: name the newest commit older than the
        # binary, and HEAD (they differ when the tree was committed or rebuilt since).
        try:
            mtime = os.stat(self.binary).st_mtime
            built = datetime.fromtimestamp(mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            before = cmd("git", "log", "-1", "--format=%h", f"--before=@{int(mtime)}")
        except OSError:
            built, before = "?", ""
        head = cmd("git", "rev-parse", "--short", "HEAD")
        dirty = cmd("git", "status", "--porcelain", "--untracked-files=no", "--", "src", "include", "CMakeLists.txt")
        commit = os.environ.get("BENCH_COMMIT") or (
            f"newest commit before the build {before or '?'}; HEAD {head}"
            + (" with src/ or include/ modified" if dirty else ""))
        return [
            f"- machine: `{platform.node()}`, {os.cpu_count()} cores ({model}), {mem / 1024 / 1024:.1f} GiB,"
            f" kernel {platform.release()}, load average at start {read('/proc/loadavg').split()[:3]}",
            f"- spool filesystem: `{fs or 'unknown'}` ({self.work}; `chattr +T`"
            f" {'set: each run in its own block group' if self.topdir else 'not supported here'})",
            f"- binary: `{self.binary}`, built {built}; git: {commit or 'unknown'}",
            f"- tools: `smtp-source`/`smtp-sink` (Postfix {cmd('dpkg-query', '-W', '-f=${Version}', 'postfix') or '?'}),"
            f" Python {platform.python_version()}; runs per figure: {self.repeat} (median)",
        ]

    def table(self):
        head = ("cell", "mxhook", "ceiling(s)", "ratio", "bound by", "target", "met?")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            lines.append("| " + " | ".join(r) + " |")
        return lines

    def probe_lines(self):
        if not self.probes:
            return []
        out = ["Disk probe (write + fsync + rename + directory fsync), median commits/s and the probe's CPU",
               "per commit. \"spool\": each commit shaped like a spool item (mkdir, message.eml and meta.json",
               "written and fsynced, directory fsynced, renamed); \"deleting\": each item removed again 64 commits",
               "later, as a spool that delivers does. The plain probe is the table's disk ceiling; the",
               "spool-shaped one is the bound that the spool's four fsyncs per item put on mxhook, named in",
               "the \"bound by\" column.", ""]
        for (size, writers, shape), v in sorted(self.probes.items()):
            label = f"{size // MB} MB" if size >= MB else f"{size // KB} KB"
            cpu = med(self.probe_cpu.get((size, writers, shape), []))
            out.append(f"- {label}, {writers} writer{'s' if writers > 1 else ''}{', ' + shape if shape else ''}:"
                       f" {fmt(med(v))} (runs {', '.join(fmt(x) for x in v)}); {fmt(cpu, '.3f')} ms CPU per commit")
        return out

    def run(self):
        t0 = time.monotonic()
        self.header = self.machine()
        for line in self.header:
            self.say(line)
        steps = {"accept": self.run_accept, "e2e": self.run_e2e, "backlog": self.run_backlog,
                 "slow": self.run_slow, "memory": self.run_memory, "auth": self.run_auth, "formats": self.run_formats,
                 "scale": self.run_scale}
        for g in self.groups:
            try:
                steps[g]()
            except Failure as exc:
                self.problem(f"{g}: {exc}")
        elapsed = time.monotonic() - t0
        # every cell must have produced its number
        for r in self.rows:
            if r[1].startswith("—"):
                self.problem(f"no number for: {r[0]}")
        table = self.table()
        print()
        print("\n".join(table))
        print()
        for line in self.probe_lines():
            print(line)
        for n in self.notes:
            print(f"note: {n}")
        self.say(f"\nbench: {'smoke ' if self.smoke else ''}run took {elapsed:.0f} s; "
                 f"{len(self.problems)} problem(s)")
        if not self.smoke:
            out_dir = os.environ.get("BENCH_RESULTS_DIR") or os.path.join(HERE, "results")
            os.makedirs(out_dir, exist_ok=True)
            now = datetime.now(timezone.utc)
            # the default run is <date>-<host>.md; a run of some groups only gets their names
            suffix = "" if self.groups == DEFAULT_GROUPS else "-" + "-".join(self.groups)
            path = os.path.join(out_dir, f"{now:%Y-%m-%d}-{platform.node()}{suffix}.md")
            with open(path, "w") as f:
                f.write(f"# mxhook benchmark, {now:%Y-%m-%d %H:%M} UTC\n\n")
                f.write(f"`bench/run {' '.join(self.groups)}`, {elapsed:.0f} s.\n\n")
                f.write("\n".join(self.header) + "\n\n")
                f.write("\n".join(table) + "\n\n")
                f.write("\n".join(self.probe_lines()) + "\n")
                if self.notes or self.problems:
                    f.write("\n" + "\n".join(f"- {x}" for x in self.notes + [f"PROBLEM: {p}" for p in self.problems]) + "\n")
            self.say(f"bench: table written to {os.path.relpath(path, ROOT)}")
        return 1 if self.problems else 0


def main():
    args = sys.argv[1:]
    if "--list" in args:
        print("\n".join(GROUPS))
        return 0
    smoke = "--smoke" in args
    groups = [a for a in args if a != "--smoke"]
    for g in groups:
        if g not in GROUPS:
            print(f"bench/run: unknown group '{g}' (try --list)", file=sys.stderr)
            return 2
    if not groups:
        groups = list(GROUPS) if smoke else list(DEFAULT_GROUPS)

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bench = None
    try:
        bench = Bench(smoke, groups)
        return bench.run()
    except Failure as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        PROCS.stop_all()
        if bench:
            shutil.rmtree(bench.work, ignore_errors=True)
            if bench.shm:
                shutil.rmtree(bench.shm, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
