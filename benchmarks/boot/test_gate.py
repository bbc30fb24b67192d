#!/usr/bin/env python3
"""The boot suite's regression gate on two synthetic result files (no VM,
well under a second): `python3 -B -m unittest benchmarks/boot/test_gate.py`."""
import json
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import gate  # noqa: E402

DATA = os.path.join(HERE, "testdata")


def load(name):
    with open(os.path.join(DATA, name)) as f:
        return json.load(f)


def run_cli(current):
    return subprocess.run([sys.executable, os.path.join(HERE, "gate.py"), os.path.join(DATA, current),
                           "--baseline", os.path.join(DATA, "gate-baseline.json"), "--max-regression", "10"],
                          capture_output=True, text=True)


class GateTests(unittest.TestCase):
    def test_within_threshold_or_overlapping_passes(self):
        regressions, checked, missing = gate.compare(load("gate-pass.json"), load("gate-baseline.json"), 10)
        self.assertEqual(regressions, [])
        self.assertEqual(len(checked), 3)
        self.assertEqual(missing, [])
        r = run_cli("gate-pass.json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("gate: pass", r.stderr)

    def test_regression_with_disjoint_intervals_fails(self):
        regressions, checked, _ = gate.compare(load("gate-fail.json"), load("gate-baseline.json"), 10)
        self.assertEqual(len(regressions), 1)
        self.assertIn("swiftlet / run_init_ms", regressions[0])
        r = run_cli("gate-fail.json")
        self.assertEqual(r.returncode, 1)
        self.assertIn("gate: FAIL", r.stderr)
        self.assertIn("run_init_ms", r.stderr)

    def test_a_looser_threshold_lets_it_pass(self):
        regressions, _, _ = gate.compare(load("gate-fail.json"), load("gate-baseline.json"), 25)
        self.assertEqual(regressions, [])

    def test_missing_figures_are_listed_not_failed(self):
        cur = load("gate-pass.json")
        cur["figures"] = [f for f in cur["figures"] if f["vmm"] != "qemu"]
        regressions, checked, missing = gate.compare(cur, load("gate-baseline.json"), 10)
        self.assertEqual(regressions, [])
        self.assertEqual(missing, [("peers", "qemu", "run_init_ms")])

    def test_unreadable_input_is_status_2(self):
        r = run_cli("no-such-file.json")
        self.assertEqual(r.returncode, 2)


if __name__ == "__main__":
    unittest.main()
