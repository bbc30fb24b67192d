#!/usr/bin/env python3
"""`--image` costs (issue 17): converting a real distribution's tarball to
ext4, a cold run against a restored one, and a restored job in that image
against the same in Swiftlet's busybox rootfs.

    benchmarks/images/bench.py --image DEBIAN.tar [-n 10] [--cold 2] [--out benchmarks/results/DATE-images]

DEBIAN.tar: Tests/images/build.sh builds one (mmdebstrap, python3-minimal).
Every conversion starts from an empty image cache (a temporary one); the
restored runs alternate between the two images, so load moves both alike.
Writes OUT.json and OUT.md."""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "boot"))
from harness import SWIFTLET, cpu_and_kvm  # noqa: E402


def timings(stderr):
    """The --timings line's fields."""
    for line in stderr.splitlines():
        if line.startswith("swiftlet-timings:"):
            return dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
    raise RuntimeError("no timings line: " + stderr[-500:])


def run(argv, env):
    t0 = time.monotonic()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=900)
    wall = (time.monotonic() - t0) * 1000
    if p.returncode != 0:
        raise RuntimeError(f"{argv}: exit {p.returncode}: {p.stderr[-500:]}")
    return wall, p


def summary(xs):
    xs = sorted(xs)
    return {"n": len(xs), "median": statistics.median(xs), "min": xs[0], "max": xs[-1]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", required=True, help="a Debian rootfs tarball with python3")
    ap.add_argument("-n", type=int, default=10, help="restored runs per case")
    ap.add_argument("--cold", type=int, default=2, help="cold runs")
    ap.add_argument("--conversions", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    scratch = tempfile.mkdtemp(prefix="swiftlet-image-bench.")
    env = dict(os.environ, SWIFTLET_SNAPSHOT_CACHE=os.path.join(scratch, "snapshots"),
               SWIFTLET_IMAGE_CACHE=os.path.join(scratch, "images"))
    res = {"swiftlet": os.path.realpath(SWIFTLET), "image": os.path.realpath(a.image),
           "image_bytes": os.path.getsize(a.image), "host": dict(zip(("cpu", "kvm"), cpu_and_kvm())),
           "loadavg_before": os.getloadavg()}
    try:
        # Conversion, each from an empty cache.
        conv = []
        for i in range(a.conversions):
            shutil.rmtree(env["SWIFTLET_IMAGE_CACHE"], ignore_errors=True)
            wall, p = run([SWIFTLET, "image", "prepare", a.image], env)
            conv.append(wall)
            print(f"conversion {i + 1}: {wall:.0f} ms", file=sys.stderr)
        ext4 = p.stdout.strip()
        st = os.stat(ext4)
        res["conversion_ms"] = summary(conv)
        res["ext4_apparent_bytes"] = st.st_size
        res["ext4_allocated_bytes"] = st.st_blocks * 512
        # A cached prepare: what every later run pays.
        res["cached_prepare_ms"] = summary([run([SWIFTLET, "image", "prepare", a.image], env)[0] for _ in range(5)])

        py = ["--", "python3", "-c", "pass"]
        cases = {
            "debian python3 -c pass": [SWIFTLET, "run", "--timings", "--image", a.image] + py,
            "debian true": [SWIFTLET, "run", "--timings", "--image", a.image, "--", "true"],
            "busybox true": [SWIFTLET, "run", "--timings", "--", "true"],
        }
        # Snapshot creation (the first run of each), not counted.
        for name, argv in cases.items():
            wall, p = run(argv, env)
            print(f"first run ({name}): {wall:.0f} ms, {timings(p.stderr).get('start')}", file=sys.stderr)
        cold = []
        for i in range(a.cold):
            wall, p = run([SWIFTLET, "run", "--cold", "--timings", "--image", a.image] + py, env)
            t = timings(p.stderr)
            cold.append({"wall_ms": wall, **{k: t[k] for k in ("start", "boot-ms", "job-ms", "total-ms")}})
            print(f"cold {i + 1}: {wall:.0f} ms", file=sys.stderr)
        res["cold_python"] = cold
        samples = {name: [] for name in cases}
        for i in range(a.n):
            for name, argv in cases.items():
                wall, p = run(argv, env)
                t = timings(p.stderr)
                assert t["start"] == "snapshot", t
                samples[name].append({"wall_ms": wall, "boot_ms": float(t["boot-ms"]), "job_ms": float(t["job-ms"]),
                                      "total_ms": float(t["total-ms"])})
            print(f"restored round {i + 1}/{a.n}", file=sys.stderr)
        res["restored"] = {name: {k: summary([s[k] for s in xs]) for k in ("wall_ms", "boot_ms", "job_ms", "total_ms")}
                           for name, xs in samples.items()}
        res["cold_vs_restored_python_total"] = statistics.median(float(c["total-ms"]) for c in cold) / \
            res["restored"]["debian python3 -c pass"]["total_ms"]["median"]
        res["debian_true_vs_busybox_true_total"] = res["restored"]["debian true"]["total_ms"]["median"] / \
            res["restored"]["busybox true"]["total_ms"]["median"]
        res["loadavg_after"] = os.getloadavg()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        with open(a.out + ".json", "w") as f:
            f.write(text + "\n")
        with open(a.out + ".md", "w") as f:
            f.write(markdown(res))


def markdown(r):
    lines = [f"# `--image` costs: {os.path.basename(r['image'])} ({r['image_bytes'] / 1e6:.1f} MB tarball)", "",
             f"Host: {r['host']['cpu']}; KVM: {r['host']['kvm']}. Load average {r['loadavg_before'][0]:.2f} before, "
             f"{r['loadavg_after'][0]:.2f} after.", "",
             "| figure | median | min | max |", "|---|---:|---:|---:|"]
    c = r["conversion_ms"]
    lines.append(f"| conversion to ext4, empty cache (n={c['n']}) | {c['median']:.0f} ms | {c['min']:.0f} | {c['max']:.0f} |")
    c = r["cached_prepare_ms"]
    lines.append(f"| `image prepare`, cached (n={c['n']}) | {c['median']:.1f} ms | {c['min']:.1f} | {c['max']:.1f} |")
    lines.append(f"| ext4 size: apparent / allocated | {r['ext4_apparent_bytes'] / 2**20:.0f} MiB / "
                 f"{r['ext4_allocated_bytes'] / 2**20:.0f} MiB | | |")
    for cold in r["cold_python"]:
        lines.append(f"| cold `python3 -c pass` total | {float(cold['total-ms']):.0f} ms | | |")
    for name, figs in r["restored"].items():
        for k in ("total_ms", "job_ms", "boot_ms"):
            s = figs[k]
            lines.append(f"| restored `{name}`: {k} (n={s['n']}) | {s['median']:.0f} ms | {s['min']:.0f} | {s['max']:.0f} |")
    lines += ["", f"Cold / restored, `python3 -c pass` total: **{r['cold_vs_restored_python_total']:.1f}x**.",
              f"Restored `true`, Debian / busybox total: **{r['debian_true_vs_busybox_true_total']:.2f}**.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
