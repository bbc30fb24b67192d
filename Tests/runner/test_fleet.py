"""Fleet mode: three swiftletd hosts sharing one PostgreSQL (`serve --store postgres://`).

The set-up is made here and removed afterwards: a throwaway PostgreSQL cluster
(Debian's server, `initdb` in a temporary directory) in its own network
namespace behind a bridge, and one namespace per host with a veth link to that
bridge; this process reaches the bridge through one more veth. A host is
partitioned by taking its link down.

What ran where is read from the daemons' own logs: every attempt a host starts
logs "job started" (one VMM), every recorded end "job finished", and a host
that lost a lease "lease lost" and "result discarded". A job that ran twice
would show two starts; one recorded twice, two finishes.
"""

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)), None)
PREFIX = f"sf{os.getpid() % 100000}"


def free_subnet():
    """A /24 of the benchmarking range 198.18.0.0/15 (RFC 2544) that no route or
    address of this host's namespace overlaps: a fixed subnet could be the CI
    machine's own network, and then psql would reach something else."""
    r = subprocess.run(["ip", "-4", "route", "show", "table", "all"], stdout=subprocess.PIPE, text=True, check=True)
    used = []
    for line in r.stdout.splitlines():
        words = line.split()
        if words and words[0] in ("local", "broadcast", "unicast"):
            words = words[1:]
        if words and words[0] != "default":
            try:
                used.append(ipaddress.ip_network(words[0], strict=False))
            except ValueError:
                pass
    for k in range(512):
        net = ipaddress.ip_network(f"198.{18 + (os.getpid() + k) % 512 // 256}.{(os.getpid() + k) % 256}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise AssertionError(f"no free /24 in 198.18.0.0/15 for the fleet tests: {r.stdout}")


SUBNET = free_subnet()


def subnet_host(n):
    return str(SUBNET.network_address + n)


PG_NS, PG_ADDR = f"{PREFIX}-pg", subnet_host(1)
ROOT_LINK, ROOT_ADDR = f"{PREFIX}-r", subnet_host(254)
HOSTS = 3
LEASE = 4  # seconds: the partition and kill tests wait for one to run out


def sh(*argv, check=True):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {r.returncode}: {r.stdout}")
    return r.stdout.strip()


def in_ns(ns, *argv, check=True):
    return sh("ip", "netns", "exec", ns, *argv, check=check)


def host_ns(i):
    return f"{PREFIX}-h{i}"


def host_addr(i):
    return subnet_host(10 + i)


class Postgres:
    """One cluster in the PostgreSQL namespace, on TCP at PG_ADDR:5432 (trust, this subnet only)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="swf-pg-", dir="/tmp")
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = f"{self.dir}/data"
        self.drop = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups"]
        sh(*self.drop, str(PG_BIN.parent / "initdb"), "-D", self.data, "-U", "postgres", "--auth=trust",
           "--no-sync", "-E", "UTF8", "--locale=C")
        with open(f"{self.data}/pg_hba.conf", "a") as f:
            f.write(f"host all all {SUBNET} trust\n")
        self.proc = None

    def start(self):
        self.log = open(f"{self.dir}/postgres.log", "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", PG_NS, *self.drop, "--pdeathsig", "KILL", str(PG_BIN),
                                      "-D", self.data, "-k", self.dir, "-c", f"listen_addresses={PG_ADDR}",
                                      "-c", "fsync=off", "-c", "max_connections=300"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        answer = ""
        for _ in range(200):
            answer = self.psql("postgres", "SELECT 1", check=False)
            if answer == "1":
                return
            time.sleep(0.05)
        raise AssertionError(f"postgres did not answer on {PG_ADDR}: psql said {answer!r}, {self.last_error!r}; "
                             f"routes: {sh('ip', '-4', 'route', 'get', PG_ADDR, check=False)}; "
                             f"log: {Path(self.dir, 'postgres.log').read_text()[-2000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: fast shutdown, clients disconnected
            self.proc.wait(30)
        self.proc = None

    def psql(self, db, query, check=True):
        """The query's rows; stderr kept apart, so a warning psql prints cannot
        pass for (or spoil) an answer."""
        argv = [str(PG_BIN.parent / "psql"), "-h", PG_ADDR, "-U", "postgres", "-d", db, "-Atc", query]
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PGCONNECT_TIMEOUT": "5"})
        self.last_error = r.stderr.strip()
        if check and r.returncode != 0:
            raise AssertionError(f"psql {query!r}: exit {r.returncode}: {r.stdout}{r.stderr}")
        return r.stdout.strip()

    def create_db(self, name):
        self.psql("postgres", f"CREATE DATABASE {name}")
        return f"postgres://postgres@{PG_ADDR}:5432/{name}"

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def network():
    """The namespaces and links; removed afterwards (deleting a namespace deletes its links)."""
    if PG_BIN is None:
        pytest.fail("no PostgreSQL server under /usr/lib/postgresql (make deps installs postgresql)")
    if os.geteuid() != 0:
        pytest.fail("the fleet tests make network namespaces: run them as root")
    made = []
    try:
        sh("ip", "netns", "add", PG_NS)
        made.append(PG_NS)
        in_ns(PG_NS, "ip", "link", "set", "lo", "up")
        in_ns(PG_NS, "ip", "link", "add", "br0", "type", "bridge")
        in_ns(PG_NS, "ip", "addr", "add", f"{PG_ADDR}/24", "dev", "br0")
        in_ns(PG_NS, "ip", "link", "set", "br0", "up")
        sh("ip", "link", "add", ROOT_LINK, "type", "veth", "peer", "name", "root", "netns", PG_NS)
        sh("ip", "addr", "add", f"{ROOT_ADDR}/24", "dev", ROOT_LINK)
        sh("ip", "link", "set", ROOT_LINK, "up")
        in_ns(PG_NS, "ip", "link", "set", "root", "master", "br0", "up")
        for i in range(1, HOSTS + 1):
            ns = host_ns(i)
            sh("ip", "netns", "add", ns)
            made.append(ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
            in_ns(PG_NS, "ip", "link", "add", f"h{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            in_ns(PG_NS, "ip", "link", "set", f"h{i}", "master", "br0", "up")
            in_ns(ns, "ip", "addr", "add", f"{host_addr(i)}/24", "dev", "eth0")
            in_ns(ns, "ip", "link", "set", "eth0", "up")
        yield
    finally:
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", ROOT_LINK, check=False)


@pytest.fixture(scope="module")
def postgres(network):
    pg = Postgres()
    pg.start()
    yield pg
    pg.close()


@pytest.fixture(scope="module")
def snapshot_dir(module_factory):
    """One snapshot directory for every host of every test here, its snapshot
    made once up front (a cold boot, 30-60 s here): hosts on one machine share it."""
    d = tempfile.mkdtemp(prefix="swf-snap-", dir="/tmp")
    warm = module_factory.start("--max-vms", "1", "--snapshot-dir", d, name="snapshot-maker")
    warm.put_function("warm", {"command": ["true"]})
    job = warm.wait_job(warm.submit("warm")["id"])
    assert job["state"] == "succeeded", job
    assert warm.stop() == 0
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fleet(daemon_factory, postgres, api_token, snapshot_dir):
    """start(n, db): n hosts on a fresh database; returns (url, [daemons])."""
    def start(db, n=HOSTS, extra=(), slots=2):
        url = postgres.create_db(db)
        args = ["--store", url, "--lease-seconds", str(LEASE), "--max-vms", str(slots), "--drain-timeout", "20",
                "--snapshot-dir", snapshot_dir, *extra]
        daemons = [daemon_factory.start(*args, "--host-id", f"h{i}", token=api_token, keys=False, name=f"h{i}",
                                        netns=host_ns(i), address=host_addr(i), wait=False)
                   for i in range(1, n + 1)]
        for d in daemons:
            d.wait_ready()
        return url, daemons
    return start


def log_events(daemons, msg):
    """job id -> how many times any daemon logged `msg` for it."""
    seen = Counter()
    for d in daemons:
        for line in d.log_path.read_text(errors="replace").splitlines():
            if f'"msg":"{msg}"' not in line:
                continue
            try:
                seen[json.loads(line).get("job")] += 1
            except ValueError:
                pass
    return seen


def runs_by_host(daemons):
    return {d.name: sum(log_events([d], "job started").values()) for d in daemons}


def deploy(d, name, command, **spec):
    return d.put_function(name, {"command": command, **spec})


def wait_all(d, ids, timeout=900):
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda i: d.wait_job(i, timeout=timeout), ids))


def test_simultaneous_first_starts_migrate_the_database_once(fleet, postgres):
    url, daemons = fleet("migrate_once")
    rows = postgres.psql("migrate_once", "SELECT version, applied_by FROM schema_migrations")
    assert len(rows.splitlines()) == 1, rows
    assert rows.split("|")[1] in {d.name for d in daemons}
    hosts = daemons[0].get("/v1/hosts").json()["hosts"]
    assert [h["id"] for h in hosts] == ["h1", "h2", "h3"] and all(h["alive"] for h in hosts), hosts


def test_300_jobs_over_three_hosts_each_run_and_recorded_once(fleet):
    # One slot a host: three VMs on this machine's two CPUs (six thrash: the
    # guest kernel runs emulated here).
    url, daemons = fleet("three_hundred", slots=1)
    deploy(daemons[0], "echo", ["sh", "-c", "cat"])
    ids = {}
    for i in range(300):
        job = daemons[i % HOSTS].submit("echo", f"job-{i}".encode())
        ids[job["id"]] = i
    jobs = wait_all(daemons[1], list(ids))
    assert all(j["state"] == "succeeded" and j["attempts"] == 1 for j in jobs), \
        [j for j in jobs if j["state"] != "succeeded" or j["attempts"] != 1][:5]
    for job_id, i in list(ids.items())[::15]:
        r = daemons[2].get(f"/v1/jobs/{job_id}/output")
        assert r.content == f"job-{i}".encode(), (job_id, r.content)
    started, finished = log_events(daemons, "job started"), log_events(daemons, "job finished")
    assert all(started[j] == 1 for j in ids), {j: started[j] for j in ids if started[j] != 1}
    assert all(finished[j] == 1 for j in ids), {j: finished[j] for j in ids if finished[j] != 1}
    by_host = runs_by_host(daemons)
    assert all(n > 0 for n in by_host.values()), by_host


def test_a_killed_host_s_jobs_finish_on_the_others(fleet):
    url, daemons = fleet("killed_host")
    deploy(daemons[0], "sleepy", ["sh", "-c", "sleep 6; cat"])
    ids = [daemons[i % HOSTS].submit("sleepy", f"k{i}".encode())["id"] for i in range(8)]
    victim = daemons[0]
    deadline = time.time() + 120
    while not log_events([victim], "job started") and time.time() < deadline:
        time.sleep(0.2)
    on_victim = set(log_events([victim], "job started"))
    assert on_victim, f"h1 started nothing\n{victim.log_tail()}"
    victim.kill()
    jobs = wait_all(daemons[1], ids)
    assert all(j["state"] == "succeeded" for j in jobs), jobs
    survivors = daemons[1:]
    finished = log_events(survivors, "job finished")
    for j in jobs:
        if j["id"] in on_victim:
            assert j["attempts"] == 2, j  # rescued once its lease ran out
        assert finished[j["id"]] == 1, (j, finished[j["id"]])
    assert daemons[1].get(f"/v1/jobs/{ids[0]}/output").content == b"k0"
    hosts = {h["id"]: h for h in daemons[1].get("/v1/hosts").json()["hosts"]}
    assert not hosts["h1"]["alive"] and hosts["h2"]["alive"], hosts


def test_a_partitioned_host_loses_its_job_and_its_late_result_is_discarded(fleet, postgres):
    url, daemons = fleet("partition")
    h1 = daemons[0]
    deploy(h1, "slow", ["sh", "-c", "sleep 12; echo finished"], concurrency=1)
    # Only h1 can take it at first: the others are not up yet... so pick whoever starts it.
    job = h1.submit("slow")
    deadline = time.time() + 120
    owner = None
    while owner is None and time.time() < deadline:
        for d in daemons:
            if job["id"] in log_events([d], "job started"):
                owner = d
        time.sleep(0.2)
    assert owner is not None, f"nobody started {job['id']}"
    index = daemons.index(owner) + 1
    others = [d for d in daemons if d is not owner]
    in_ns(PG_NS, "ip", "link", "set", f"h{index}", "down")
    try:
        # The lease runs out: the owner stops its VM; another host rescues and reruns the job.
        final = others[0].wait_job(job["id"], timeout=120)
        assert final["state"] == "succeeded" and final["attempts"] == 2, final
        lost_at = time.time()
        while not log_events([owner], "lease lost: stopping the job's VM") and time.time() < lost_at + 10:
            time.sleep(0.2)
        assert log_events([owner], "lease lost: stopping the job's VM")[job["id"]] == 1, owner.log_tail()
        assert not owner.vmms(), f"{owner.name} still runs a VMM: {owner.vmms()}"
    finally:
        in_ns(PG_NS, "ip", "link", "set", f"h{index}", "up")
    # Reconnected: the owner's discarded result never reached the database.
    deadline = time.time() + 30
    while time.time() < deadline:
        hosts = {h["id"]: h for h in others[0].get("/v1/hosts").json()["hosts"]}
        if hosts[owner.name]["alive"]:
            break
        time.sleep(0.5)
    assert hosts[owner.name]["alive"], hosts
    assert log_events([owner], "result discarded: the lease was lost")[job["id"]] == 1, owner.log_tail()
    assert log_events([owner], "job finished")[job["id"]] == 0
    attempts = postgres.psql("partition", f"SELECT number, host, outcome FROM attempts WHERE job = '{job['id']}' ORDER BY number")
    assert attempts.splitlines()[0].startswith(f"1|{owner.name}|lease expired"), attempts
    assert others[0].get(f"/v1/jobs/{job['id']}/output").content == b"finished\n"


def test_postgres_away_for_10_seconds_loses_nothing(fleet, postgres):
    url, daemons = fleet("outage", extra=("--lease-seconds", "30"))
    deploy(daemons[0], "work", ["sh", "-c", "sleep 3; cat"])
    ids = [daemons[i % HOSTS].submit("work", f"o{i}".encode())["id"] for i in range(12)]
    deadline = time.time() + 120
    while sum(log_events(daemons, "job started").values()) < 2 and time.time() < deadline:
        time.sleep(0.2)
    postgres.stop()
    stopped = time.time()
    try:
        # The API says so at once instead of hanging: 503 with Retry-After.
        t0 = time.time()
        r = daemons[1].get(f"/v1/jobs/{ids[0]}", timeout=30)
        assert r.status_code == 503 and r.headers.get("Retry-After"), (r.status_code, r.text)
        assert time.time() - t0 < 8
        time.sleep(max(0, 10 - (time.time() - stopped)))
    finally:
        postgres.start()
    jobs = wait_all(daemons[2], ids, timeout=300)
    assert all(j["state"] == "succeeded" for j in jobs), jobs
    finished = log_events(daemons, "job finished")
    kept = log_events(daemons, "a kept job end was recorded")
    for j in ids:
        assert finished[j] == 1, (j, finished[j])
    assert all(d.get("/readyz").status_code == 200 for d in daemons)
    print(f"job ends kept through the outage and written after: {sum(kept.values())}")


def test_a_synchronous_invoke_runs_on_another_host_when_its_own_is_full(fleet):
    url, daemons = fleet("sync_elsewhere", slots=1)
    h1 = daemons[0]
    deploy(h1, "hold", ["sh", "-c", "sleep 4; cat"], concurrency=10)
    path = "/2015-03-31/functions/hold/invocations"
    with ThreadPoolExecutor(2) as pool:
        # Two at once at h1, which has one slot: one runs there, the other on h2 or h3.
        calls = [pool.submit(h1.post, path, data=f"s{i}".encode(), timeout=300) for i in range(2)]
        answers = [c.result() for c in calls]
    assert sorted((r.status_code, r.content) for r in answers) == [(200, b"s0"), (200, b"s1")], \
        [(r.status_code, r.text[:200]) for r in answers]
    started = {d.name: sum(log_events([d], "job started").values()) for d in daemons}
    assert started["h1"] == 1 and started["h2"] + started["h3"] == 1, started


def test_a_cancel_reaches_the_running_host(fleet):
    url, daemons = fleet("cancel_elsewhere")
    deploy(daemons[0], "long", ["sh", "-c", "sleep 60"])
    job = daemons[0].submit("long")
    deadline = time.time() + 120
    owner = None
    while owner is None and time.time() < deadline:
        owner = next((d for d in daemons if job["id"] in log_events([d], "job started")), None)
        time.sleep(0.2)
    assert owner is not None, f"nobody started {job['id']}"
    while not owner.vmms() and time.time() < deadline:
        time.sleep(0.1)
    other = next(d for d in daemons if d is not owner)
    t0 = time.time()
    r = other.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled", (r.status_code, r.text)
    while owner.vmms() and time.time() < t0 + 2:
        time.sleep(0.05)
    assert not owner.vmms(), f"{owner.name} still runs a VMM 2 s after the cancel: {owner.vmms()}"
    assert time.time() - t0 < 2.5
