#!/usr/bin/env python3
"""Regression gate for the boot suite's results (benchmarks/boot/suite.py).

    python3 benchmarks/boot/gate.py CURRENT.json --baseline BASE.json --max-regression PCT

A figure regressed when, for the same kernel, VMM and figure name, its median
is more than PCT percent above the baseline's median AND the two 95%
confidence intervals of the medians do not overlap (the current interval lies
wholly above the baseline's). Every figure is lower-is-better (times, CPU,
memory). Figures missing on either side are listed, never a failure. Exit
status: 0 pass, 1 at least one regression, 2 bad input.
"""
import argparse
import json
import sys


def figures(result):
    """{(kernel, vmm, figure): summary dict} from a suite result."""
    out = {}
    for row in result.get("figures", []):
        key = (row.get("kernel"), row.get("vmm"), row.get("figure"))
        if row.get("median") is not None:
            out[key] = row
    return out


def compare(current, baseline, max_regression_pct):
    """Returns (regressions, checked, missing): lists of human-readable
    lines / keys. `current` and `baseline` are parsed result dicts."""
    cur, base = figures(current), figures(baseline)
    regressions, checked, missing = [], [], []
    for key, b in sorted(base.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        c = cur.get(key)
        if c is None:
            missing.append(key)
            continue
        checked.append(key)
        bm, cm = b["median"], c["median"]
        limit = bm * (1 + max_regression_pct / 100.0) if bm >= 0 else bm
        b_hi = (b.get("ci95") or [bm, bm])[1]
        c_lo = (c.get("ci95") or [cm, cm])[0]
        if cm > limit and c_lo > b_hi:
            pct = (cm / bm - 1) * 100 if bm else float("inf")
            regressions.append(
                f"{key[0]} / {key[1]} / {key[2]}: median {cm:g} vs baseline {bm:g} "
                f"(+{pct:.1f}% > {max_regression_pct:g}%), 95% CI [{c_lo:g}, ...] above baseline's [..., {b_hi:g}]")
    return regressions, checked, missing


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("current")
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--max-regression", type=float, required=True, metavar="PCT")
    a = ap.parse_args(argv)
    try:
        current = json.load(open(a.current))
        baseline = json.load(open(a.baseline))
    except (OSError, ValueError) as e:
        print(f"gate: cannot read results: {e}", file=sys.stderr)
        return 2
    return report(current, baseline, a.max_regression, a.baseline)


def report(current, baseline, pct, baseline_name="baseline"):
    regressions, checked, missing = compare(current, baseline, pct)
    for key in missing:
        print(f"gate: not in this run, not checked: {' / '.join(map(str, key))}", file=sys.stderr)
    if regressions:
        print(f"gate: FAIL: {len(regressions)} of {len(checked)} figures regressed beyond {pct:g}% "
              f"against {baseline_name} (non-overlapping 95% CIs):", file=sys.stderr)
        for line in regressions:
            print("  " + line, file=sys.stderr)
        return 1
    print(f"gate: pass: {len(checked)} figures within {pct:g}% of {baseline_name} "
          f"or with overlapping 95% CIs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
