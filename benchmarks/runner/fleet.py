#!/usr/bin/env python3
"""The fleet benchmark: swiftletd hosts sharing one PostgreSQL (benchmarks/runner/README.md).

    sudo benchmarks/runner/fleet.py [--jobs J] [--seconds S]

It starts a throwaway PostgreSQL cluster (initdb in a temporary directory, Unix
socket only, pg_stat_statements loaded) and measures:

1. Jobs/s with 1, 2 and 3 hosts on this machine (one VM slot each, J queued
   `cat` jobs submitted at once, round-robin over the hosts), from the first
   submit to the last job's recorded end. The hosts share this machine's
   CPUs, so this shows the overhead of the fleet, not its scaling.
2. Per job, what scales: the claim's latency (client side: the daemon's
   swiftlet_claim_seconds; server side: pg_stat_statements' mean execution
   time of the claim), and the database round trips per job (statements
   from pg_stat_statements, split into the job's own and the background
   ones: heartbeats, rescues, idle claims).
3. pgbench on the claim statement alone: claims/s at 1 to 32 clients, against
   a queue of 200,000 jobs, each claimed job then completed (so every
   transaction is one job's whole database work).

Results: benchmarks/results/fleet-DATE.{json,md}.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import urllib.error
import urllib.request

REPO = Path(__file__).resolve().parents[2]
SWIFTLETD = Path(os.environ.get("SWIFTLETD", REPO / ".build-rel/release/swiftletd"))
SWIFTLET = Path(os.environ.get("SWIFTLET", REPO / ".build/release/swiftlet"))
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
DROP = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups"]


def http(method, url, body=None, timeout=60):
    """(status, body bytes): the standard library only, so any python3 runs this."""
    data = body.encode() if isinstance(body, str) else (json.dumps(body).encode() if isinstance(body, dict) else body)
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_json(method, url, body=None, timeout=60):
    status, data = http(method, url, body, timeout)
    assert status < 300, (method, url, status, data[:300])
    return json.loads(data)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    def __init__(self, root):
        self.dir = root / "pg"
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run([*DROP, PG_BIN / "initdb", "-D", self.dir / "data", "-U", "postgres", "--auth=trust", "--no-sync",
                        "-E", "UTF8", "--locale=C"], check=True, stdout=subprocess.DEVNULL)
        self.proc = subprocess.Popen([*DROP, "--pdeathsig", "KILL", PG_BIN / "postgres", "-D", self.dir / "data", "-k", self.dir,
                                      "-c", "listen_addresses=", "-c", "shared_preload_libraries=pg_stat_statements",
                                      "-c", "max_connections=200", "-c", "pg_stat_statements.track=all"],
                                     stdout=open(self.dir / "log", "ab"), stderr=subprocess.STDOUT)
        for _ in range(200):
            if self.psql("postgres", "SELECT 1", check=False) == "1":
                return
            time.sleep(0.05)
        raise SystemExit("postgres did not start")

    def psql(self, db, sql, check=True):
        r = subprocess.run([PG_BIN / "psql", "-h", self.dir, "-U", "postgres", "-d", db, "-AtXc", sql],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if check and r.returncode:
            raise SystemExit(f"psql {sql[:80]}: {r.stdout}")
        return r.stdout.strip()

    def url(self, db):
        return f"postgres://postgres@/{db}?host={self.dir}"

    def stop(self):
        self.proc.send_signal(2)
        self.proc.wait(30)


class Host:
    def __init__(self, root, name, args):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.state = root / name
        self.log = open(root / f"{name}.log", "ab")
        self.proc = subprocess.Popen([SWIFTLETD, "serve", "--listen", f"127.0.0.1:{self.port}", "--state-dir", self.state,
                                      "--swiftlet", SWIFTLET, "--host-id", name, *args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(600):
            try:
                if http("GET", self.base + "/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited: {(root / f'{name}.log').read_text()[-2000:]}")
            time.sleep(0.1)
        raise SystemExit(f"{name} not ready")

    def metric(self, name):
        total = 0.0
        for line in http("GET", self.base + "/metrics")[1].decode().splitlines():
            if re.match(rf"^{re.escape(name)}(\{{.*\}})? ", line):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)


def wait_final(host, ids, timeout=1800):
    deadline = time.time() + timeout
    jobs = {}
    for i in ids:
        while True:
            j = http_json("GET", f"{host.base}/v1/jobs/{i}?wait=30")
            if j["state"] in ("succeeded", "failed", "timed_out", "cancelled"):
                jobs[i] = j
                break
            if time.time() > deadline:
                raise SystemExit(f"job {i} not final: {j}")
    return jobs


CLAIM_MARK = "WITH pick AS"


def statements(pg, db):
    rows = pg.psql(db, "SELECT calls, mean_exec_time, replace(query, E'\\n', ' ') FROM pg_stat_statements "
                       f"WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '{db}')")
    out = []
    for line in rows.splitlines():
        calls, mean, query = line.split("|", 2)
        out.append((int(calls), float(mean), query))
    return out


def run_fleet(pg, root, hosts, jobs, snapshot_dir, seconds_idle=5):
    db = f"fleet{hosts}"
    pg.psql("postgres", f"CREATE DATABASE {db}")
    pg.psql(db, "CREATE EXTENSION pg_stat_statements")
    args = ["--store", pg.url(db), "--max-vms", "1", "--no-jail", "--snapshot-dir", snapshot_dir, "--lease-seconds", "30"]
    fleet = [Host(root, f"n{hosts}-h{i}", args) for i in range(1, hosts + 1)]
    try:
        http_json("PUT", f"{fleet[0].base}/v1/functions/bench", {"command": ["cat"]})
        time.sleep(1.5)  # every host has verified the image (the functions notification)
        # Background statements alone (heartbeats, idle claims), over a quiet spell.
        pg.psql(db, "SELECT pg_stat_statements_reset()")
        time.sleep(seconds_idle)
        idle = sum(c for c, _, q in statements(pg, db) if "pg_stat_statements" not in q)
        idle_per_s = idle / seconds_idle
        pg.psql(db, "SELECT pg_stat_statements_reset()")
        t0 = time.time()
        ids = [http_json("POST", f"{fleet[i % hosts].base}/v1/functions/bench/jobs", f"j{i}")["id"] for i in range(jobs)]
        done = wait_final(fleet[0], ids)
        wall = max(datetime.datetime.fromisoformat(j["finishedAt"].replace("Z", "+00:00")).timestamp() for j in done.values()) - t0
        stats = statements(pg, db)
        claims = [(c, m) for c, m, q in stats if CLAIM_MARK in q]
        total = sum(c for c, _, q in stats if "pg_stat_statements" not in q)
        background = idle_per_s * wall
        claim_count = sum(h.metric("swiftlet_claim_seconds_count") for h in fleet)
        claim_sum = sum(h.metric("swiftlet_claim_seconds_sum") for h in fleet)
        ok = sum(1 for j in done.values() if j["state"] == "succeeded")
        runs = {}
        for h in fleet:
            runs[h.state.name] = h.metric("swiftlet_claims_total")
        return {
            "hosts": hosts, "jobs": jobs, "succeeded": ok, "wall_s": round(wall, 2), "jobs_per_s": round(jobs / wall, 3),
            "claims_by_host": runs,
            "claim_ms_client_mean": round(1000 * claim_sum / claim_count, 3) if claim_count else None,
            "claim_ms_server_mean": round(sum(c * m for c, m in claims) / max(1, sum(c for c, _ in claims)), 3),
            "claim_statements": sum(c for c, _ in claims),
            "statements_total": total,
            "background_statements_per_s": round(idle_per_s, 2),
            "statements_per_job": round((total - background) / jobs, 2),
            "statements_per_job_with_background": round(total / jobs, 2),
        }
    finally:
        for h in fleet:
            h.stop()


PGBENCH_CLAIM = """\
WITH pick AS (
    SELECT j.seq FROM jobs j JOIN versions v ON v.function = j.function AND v.version = j.version
    WHERE j.state = 'queued' AND j.not_before <= 1e12
        AND v.image_sha256 = ANY(ARRAY['img']) AND j.function <> ALL(ARRAY[]::text[])
        AND COALESCE((v.spec::jsonb->>'memoryMiB')::bigint, 128) <= 100000
        AND (SELECT COUNT(*) FROM jobs r WHERE r.function = j.function AND r.state = 'running')
            < COALESCE((v.spec::jsonb->>'concurrency')::bigint, 1000000)
    ORDER BY j.seq LIMIT 1 FOR UPDATE OF j SKIP LOCKED),
taken AS (
    UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = 1, lease_owner = 'bench',
        lease_until = extract(epoch from clock_timestamp()) + 30
    FROM pick WHERE jobs.seq = pick.seq RETURNING jobs.*)
SELECT seq FROM taken \\gset
UPDATE jobs SET state = 'succeeded', finished_at = 2, lease_owner = NULL, lease_until = NULL
    WHERE seq = :seq AND attempts = 1 AND lease_owner = 'bench';
"""


def run_pgbench(pg, root, seconds, queue=200_000):
    """The claim (and the job's completion) alone, against a deep queue."""
    db = "claims"
    pg.psql("postgres", f"CREATE DATABASE {db}")
    # The schema exactly as the runner migrates it: one host started and stopped.
    h = Host(root, "migrator", ["--store", pg.url(db), "--no-jail"])
    h.stop()
    pg.psql(db, "INSERT INTO versions VALUES ('f', 1, '{\"memoryMiB\":128,\"concurrency\":1000000}', 'img', '/i', 0)")
    pg.psql(db, "INSERT INTO functions VALUES ('f', 1, 0, 0)")
    script = root / "claim.sql"
    script.write_text(PGBENCH_CLAIM)
    results = []
    for clients in (1, 2, 4, 8, 16, 32):
        pg.psql(db, "TRUNCATE jobs")
        pg.psql(db, f"INSERT INTO jobs (id, function, version, state, invocation, attempts, max_attempts, created_at, not_before, origin) "
                    f"SELECT 'j' || g, 'f', 1, 'queued', 'async', 0, 3, 0, 0, 'h' FROM generate_series(1, {queue}) g")
        pg.psql(db, "VACUUM ANALYZE jobs")
        out = subprocess.run([PG_BIN / "pgbench", "-h", pg.dir, "-U", "postgres", "-n", "-f", script, "-c", str(clients),
                              "-j", str(min(clients, 4)), "-T", str(seconds), "-r", db],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tps = re.search(r"tps = ([0-9.]+)", out.stdout)
        lat = re.search(r"latency average = ([0-9.]+) ms", out.stdout)
        if not tps:
            raise SystemExit(out.stdout)
        claimed = int(pg.psql(db, "SELECT COUNT(*) FROM jobs WHERE state = 'succeeded'"))
        results.append({"clients": clients, "claims_per_s": round(float(tps.group(1)), 1),
                        "latency_ms": float(lat.group(1)) if lat else None, "jobs_claimed": claimed})
        print(f"  pgbench {clients:2} clients: {results[-1]['claims_per_s']} claims/s", flush=True)
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--seconds", type=int, default=10, help="pgbench seconds per point")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the PostgreSQL cluster runs as the postgres user)")
    root = Path(tempfile.mkdtemp(prefix="swf-bench-", dir="/tmp"))
    shutil.chown(root, "root", "root")
    os.chmod(root, 0o755)
    pg = Postgres(root)
    out = {"date": datetime.date.today().isoformat(), "machine": f"{os.cpu_count()} CPUs", "jobs": a.jobs}
    try:
        snapshot_dir = root / "snapshots"
        warm = Host(root, "warm", ["--max-vms", "1", "--no-jail", "--snapshot-dir", snapshot_dir])
        http_json("PUT", f"{warm.base}/v1/functions/w", {"command": ["true"]})
        wait_final(warm, [http_json("POST", f"{warm.base}/v1/functions/w/jobs", b"")["id"]])
        warm.stop()
        out["fleet"] = []
        for hosts in (1, 2, 3):
            r = run_fleet(pg, root, hosts, a.jobs, snapshot_dir)
            print(f"{hosts} host(s): {r['jobs_per_s']} jobs/s, claim {r['claim_ms_client_mean']} ms (server "
                  f"{r['claim_ms_server_mean']} ms), {r['statements_per_job']} statements/job", flush=True)
            out["fleet"].append(r)
        out["pgbench"] = run_pgbench(pg, root, a.seconds)
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    results = REPO / "benchmarks/results"
    stem = results / f"fleet-{out['date']}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# Fleet benchmark, {out['date']} ({out['machine']}, {a.jobs} jobs per point)", "",
             "| hosts | jobs/s | claim, client mean (ms) | claim, server mean (ms) | statements/job | background statements/s |",
             "|---|---|---|---|---|---|"]
    for r in out["fleet"]:
        lines.append(f"| {r['hosts']} | {r['jobs_per_s']} | {r['claim_ms_client_mean']} | {r['claim_ms_server_mean']} | "
                     f"{r['statements_per_job']} | {r['background_statements_per_s']} |")
    lines += ["", "pgbench, the claim and the job's completion alone (one transaction per job):", "",
              "| clients | claims/s | latency (ms) |", "|---|---|---|"]
    for r in out["pgbench"]:
        lines.append(f"| {r['clients']} | {r['claims_per_s']} | {r['latency_ms']} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
