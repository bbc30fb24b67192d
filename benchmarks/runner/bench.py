#!/usr/bin/env python3
"""The job runner's benchmark (benchmarks/runner/README.md).

Starts real swiftletd daemons and measures:
  1. the daemon's own added latency per synchronous invoke, from its
     `Server-Timing` header: request received -> VMM given the job
     (`daemon-pre`, minus any wait for a slot), and VMM reaped -> response
     built (`daemon-post`); p50, p99;
  2. end-to-end latency, client clock, of a warm-pool invoke, a cold invoke
     (process start + snapshot restore) and `swiftlet run --snapshot`
     directly on the same snapshot, in one run, as ratios;
  3. throughput (jobs/s) of queued `true` jobs at --max-vms 1, 2 and 4;
  4. PSS per held VM (a warm pool of 4) and the daemon's own RSS.
Writes JSON, a Markdown table and an SVG chart.
"""
import argparse, json, os, platform, shutil, signal, socket, statistics, subprocess, sys, tempfile, time
import urllib.request, urllib.error


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, swiftletd, swiftlet, state, max_vms, extra=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(state, f"daemon-{self.port}.log"), "wb")
        self.p = subprocess.Popen([swiftletd, "serve", "--listen", f"127.0.0.1:{self.port}", "--state-dir", state,
                                   "--swiftlet", swiftlet, "--max-vms", str(max_vms), "--no-jail", *extra],
                                  stdout=self.log, stderr=self.log)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("daemon did not become ready")

    def request(self, method, path, body=None, headers=None, timeout=600):
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def get(self, path):
        return self.request("GET", path, timeout=5)

    def metric(self, name):
        for line in self.get("/metrics")[2].decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=120)
        self.log.close()


def server_timing(headers):
    out = {}
    for part in headers.get("Server-Timing", "").split(","):
        name, _, rest = part.strip().partition(";dur=")
        if rest:
            out[name] = float(rest)
    return out


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def summary(values):
    return dict(n=len(values), p50=statistics.median(values), p90=pct(values, 90), p99=pct(values, 99),
                min=min(values), max=max(values))


def timer_overshoot_ms(seconds=20.0, sleep_s=0.0005):
    """The machine's own noise floor: how late a 0.5 ms sleep wakes, over
    `seconds` of an idle host (vCPU steal and scheduling; no daemon work)."""
    over = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic_ns()
        time.sleep(sleep_s)
        over.append((time.monotonic_ns() - t) / 1e6 - sleep_s * 1000)
    s = summary(over)
    s.update(p999=pct(over, 99.9), over_2ms=sum(o > 2 for o in over), over_4ms=sum(o > 4 for o in over))
    return s


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None


def vmm_children(daemon_pid):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == daemon_pid and b"run" in cmd:
            pids.append(int(d))
    return pids


def wait_warm(d, n, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if d.metric("swiftlet_warm_vms") >= n:
            return True
        time.sleep(0.05)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30, help="invokes per kind")
    ap.add_argument("--jobs", type=int, default=24, help="queued jobs per throughput point")
    ap.add_argument("--swiftletd", default=os.environ.get("SWIFTLETD", ".build/release/swiftletd"))
    ap.add_argument("--swiftlet", default=os.environ.get("SWIFTLET", ".build/release/swiftlet"))
    ap.add_argument("--out", default="benchmarks/results/runner")
    a = ap.parse_args()
    state = tempfile.mkdtemp(prefix="swd-bench-")
    results = dict(date=time.strftime("%Y-%m-%d"), host=platform.node(), kernel=platform.release(),
                   nested_pvm=os.path.exists("/sys/module/kvm_pvm"), cpus=os.cpu_count(), n=a.n,
                   swiftletd=a.swiftletd, swiftlet=a.swiftlet)
    try:
        # --- latency: cold, warm, and swiftlet run directly -------------------
        d = Daemon(a.swiftletd, a.swiftlet, state, max_vms=2)
        spec = {"command": ["cat"], "timeoutSeconds": 60}
        assert d.request("PUT", "/v1/functions/cold", json.dumps(spec).encode())[0] in (200, 201)
        assert d.request("PUT", "/v1/functions/warm", json.dumps(dict(spec, warm=1)).encode())[0] in (200, 201)
        t = time.time()
        st, _, body = d.request("POST", "/2015-03-31/functions/cold/invocations", b"first")
        assert st == 200 and body == b"first", (st, body)
        results["snapshot_create_s"] = time.time() - t
        assert wait_warm(d, 1)
        kinds = {"warm": [], "cold": []}
        pre, post, ids = [], [], []
        for i in range(a.n):
            for kind in ("cold", "warm"):
                if kind == "warm":
                    assert wait_warm(d, 1), "the warm pool did not refill"
                t0 = time.perf_counter()
                st, h, body = d.request("POST", f"/2015-03-31/functions/{kind}/invocations", b"x%d" % i)
                kinds[kind].append((time.perf_counter() - t0) * 1000)
                assert st == 200 and body == b"x%d" % i and "X-Amz-Function-Error" not in h, (kind, st, h, body)
                timing = server_timing(h)
                pre.append(timing["daemon-pre"] - timing.get("queue", 0))
                post.append(timing["daemon-post"])
                ids.append(h["X-Amzn-RequestId"])
        snapshots = [os.path.join(state, "snapshots", x) for x in os.listdir(os.path.join(state, "snapshots")) if ".tmp-" not in x]
        direct = []
        for i in range(a.n):
            t0 = time.perf_counter()
            r = subprocess.run([a.swiftlet, "run", "--snapshot", snapshots[0], "--seccomp", "strict", "--", "cat"],
                               input=b"d%d" % i, capture_output=True)
            direct.append((time.perf_counter() - t0) * 1000)
            assert r.returncode == 0 and r.stdout == b"d%d" % i, r
        results["daemon_pre_ms"] = summary(pre)
        results["daemon_post_ms"] = summary(post)
        # The daemon logs when each response was handed to SwiftNIO to write.
        sent = {}
        with open(d.log.name, "rb") as f:
            for line in f:
                o = json.loads(line)
                if o.get("msg") == "response sent":
                    sent[o["job"]] = float(o["vm_exit_to_sent_ms"])
        results["daemon_post_sent_ms"] = summary([sent[i] for i in ids])
        # Every sample, in call order (cold and warm alternate), for other percentiles.
        results["samples"] = dict(kind=["cold", "warm"] * a.n, daemon_pre_ms=pre, daemon_post_ms=post,
                                  daemon_post_sent_ms=[sent[i] for i in ids])
        results["invoke_warm_ms"] = summary(kinds["warm"])
        results["invoke_cold_ms"] = summary(kinds["cold"])
        results["run_direct_ms"] = summary(direct)
        w, c, r_ = (results[k]["p50"] for k in ("invoke_warm_ms", "invoke_cold_ms", "run_direct_ms"))
        results["ratios_p50"] = dict(warm_over_direct=w / r_, cold_over_direct=c / r_, warm_over_cold=w / c)
        results["daemon_rss_kib_after_latency"] = int(open(f"/proc/{d.p.pid}/status").read().split("VmRSS:")[1].split()[0])
        d.stop()
        results["timer_overshoot_ms"] = timer_overshoot_ms()

        # --- PSS per held VM: a warm pool of 4 -------------------------------
        d = Daemon(a.swiftletd, a.swiftlet, state, max_vms=4)
        assert d.request("PUT", "/v1/functions/warm", json.dumps(dict(spec, warm=4)).encode())[0] in (200, 201)
        assert wait_warm(d, 4)
        time.sleep(2)
        pids = vmm_children(d.p.pid)
        pss = [p for p in (pss_kib(x) for x in pids) if p]
        results["held_vms"] = len(pss)
        results["pss_per_vm_kib"] = summary(pss) if pss else None
        results["daemon_pss_kib"] = pss_kib(d.p.pid)
        d.stop()

        # --- throughput at --max-vms 1, 2, 4 ---------------------------------
        results["throughput"] = {}
        for vms in (1, 2, 4):
            d = Daemon(a.swiftletd, a.swiftlet, state, max_vms=vms)
            assert d.request("PUT", "/v1/functions/t", json.dumps({"command": ["true"], "concurrency": 16}).encode())[0] in (200, 201)
            st, _, _ = d.request("POST", "/2015-03-31/functions/t/invocations", b"")  # snapshot ready (shared shape)
            assert st == 200
            t0 = time.perf_counter()
            ids = [json.loads(d.request("POST", "/v1/functions/t/jobs", b"")[2])["id"] for _ in range(a.jobs)]
            for i in ids:
                while True:
                    j = json.loads(d.request("GET", f"/v1/jobs/{i}?wait=30")[2])
                    if j["state"] not in ("queued", "running"):
                        assert j["state"] == "succeeded", j
                        break
            elapsed = time.perf_counter() - t0
            results["throughput"][str(vms)] = dict(jobs=a.jobs, seconds=elapsed, jobs_per_s=a.jobs / elapsed)
            d.stop()
    finally:
        shutil.rmtree(state, ignore_errors=True)

    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    stem = f"{a.out}-{results['date']}"
    with open(stem + ".json", "w") as f:
        json.dump(results, f, indent=2)
    md = [f"# swiftletd benchmark, {results['date']} ({'nested PVM' if results['nested_pvm'] else 'KVM'}, {results['cpus']} CPUs)", "",
          "| figure | p50 | p90 | p99 |", "|---|---|---|---|"]
    for k, label in [("daemon_pre_ms", "daemon: request received -> VMM given the job (ms)"),
                     ("daemon_post_ms", "daemon: VMM reaped -> response built (ms)"),
                     ("daemon_post_sent_ms", "daemon: VMM reaped -> response handed to SwiftNIO (ms)"),
                     ("invoke_warm_ms", "warm-pool invoke, end to end (ms)"),
                     ("invoke_cold_ms", "cold invoke (restore), end to end (ms)"),
                     ("run_direct_ms", "`swiftlet run --snapshot` directly (ms)")]:
        s = results[k]
        md.append(f"| {label} | {s['p50']:.3f} | {s['p90']:.3f} | {s['p99']:.3f} |")
    r = results["ratios_p50"]
    md += ["", f"Ratios of medians: warm / direct {r['warm_over_direct']:.2f}, cold / direct {r['cold_over_direct']:.2f}, "
               f"warm / cold {r['warm_over_cold']:.2f}."]
    t = results["timer_overshoot_ms"]
    md += ["", f"Noise floor, the same host idle: a 0.5 ms sleep woke late by p50 {t['p50']:.3f}, p99 {t['p99']:.3f}, "
               f"p99.9 {t['p999']:.3f}, max {t['max']:.3f} ms ({t['over_2ms']} of {t['n']} over 2 ms, {t['over_4ms']} over 4 ms).", "",
           "| --max-vms | jobs | s | jobs/s |", "|---|---|---|---|"]
    for vms, t in results["throughput"].items():
        md.append(f"| {vms} | {t['jobs']} | {t['seconds']:.1f} | {t['jobs_per_s']:.2f} |")
    if results["pss_per_vm_kib"]:
        md += ["", f"PSS per held VM (warm pool of {results['held_vms']}): median {results['pss_per_vm_kib']['p50']} KiB; "
                   f"daemon PSS {results['daemon_pss_kib']} KiB."]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        labels = ["warm invoke", "cold invoke", "swiftlet run"]
        keys = ["invoke_warm_ms", "invoke_cold_ms", "run_direct_ms"]
        ax1.bar(labels, [results[k]["p50"] for k in keys], yerr=[[0] * 3, [results[k]["p90"] - results[k]["p50"] for k in keys]])
        ax1.set_ylabel("ms, median (bar) to p90")
        ax1.set_title("End-to-end latency, same snapshot")
        vms = list(results["throughput"].keys())
        ax2.plot(vms, [results["throughput"][v]["jobs_per_s"] for v in vms], marker="o")
        ax2.set_xlabel("--max-vms")
        ax2.set_ylabel("jobs/s (queued `true`)")
        ax2.set_title(f"Throughput, {results['cpus']} host CPUs")
        fig.suptitle(f"swiftletd {results['date']}: daemon's own time p50 {results['daemon_pre_ms']['p50']:.2f} ms before the VMM, "
                     f"{results['daemon_post_ms']['p50']:.2f} ms after")
        fig.tight_layout()
        fig.savefig(stem + ".svg")
        print(f"chart: {stem}.svg")
    except ImportError:
        print("matplotlib not installed: no chart (benchmarks/runner/run.sh installs it)")


if __name__ == "__main__":
    main()
