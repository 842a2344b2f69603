#!/usr/bin/python3
"""Runs `keel graph-run` on the whole-graph golden cases and compares with reference.py.

For each case directory written by make_graph_cases.py, per run listed in case.json:
  optimized    `graph-run MODEL --weights W --input ... --out DIR --repeat 2`: exit 0;
               result.json: outputs = the model's output layers, optimized true, passes a list
               (non-empty when the case expects a rewrite, e.g. BN folded into a Conv2D),
               median_ms > 0; every output DIR/<name>.npy float32, within the error bound
  unoptimized  the same with --no-optimize: optimized false, passes empty
  training     --training: optimized false; outputs in training mode and the moving statistics
               DIR/variables/<layer>/<variable>.npy of every BatchNormalization, within bounds
  serve        --threads 2 --requests 8: exit 0, requests_per_s > 0, outputs within bounds
  error        exit 2 and result.json {"error": {"category", "message"}}, the category among the
               expected ones and the message naming what is wrong

Bounds are elementwise: |got - exact| <= err, both from reference.py (see its module text for the
derivation); the worst ratio |got - exact| / err of every array is printed, so a reader sees how
much of the bound keel uses. Usage: check_graph_run.py --keel PATH --cases DIR [--case NAME ...]
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np


class Report:
    def __init__(self, name, max_lines):
        self.name = name
        self.max_lines = max_lines
        self.failures = []
        self.notes = []

    def fail(self, text):
        self.failures.append(text)

    def compare(self, label, got, expected, bound):
        got = np.asarray(got, dtype=np.float64)
        if got.shape != expected.shape:
            self.fail(f"{label}: shape {list(got.shape)}, expected {list(expected.shape)}")
            return
        error = np.abs(got - expected)
        bad = ~(error <= bound)  # NaN fails
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(bound > 0, error / bound, np.where(error > 0, np.inf, 0.0))
        worst = float(np.nanmax(ratio)) if ratio.size else 0.0
        relative_bound = float(bound.max() / max(np.abs(expected).max(), 1e-30))
        self.notes.append(f"{label}: worst |error|/bound {worst:.3g} (bound up to "
                          f"{relative_bound:.2g}·max|value|)")
        if not bad.any():
            return
        indices = np.argwhere(bad)
        order = np.argsort(-ratio[bad])
        self.fail(f"{label}: {len(indices)} of {got.size} elements outside the bound")
        for k in order[:self.max_lines]:
            index = tuple(int(i) for i in indices[k])
            self.fail(f"    index {list(index)}: got {got[index]!r}, expected "
                      f"{expected[index]!r}, |diff| {error[index]:.3e} > bound {bound[index]:.3e}")
        if len(indices) > self.max_lines:
            self.fail(f"    ... {len(indices) - self.max_lines} more")


def load_json(path):
    with open(path) as handle:
        return json.load(handle)


def run_keel(keel, case_dir, case, out, extra, timeout):
    if os.path.exists(out):
        shutil.rmtree(out)
    command = [keel, "graph-run", os.path.join(case_dir, "model.json"), "--weights",
               os.path.join(case_dir, "weights"), "--out", out]
    for name in case["inputs"]:
        command += ["--input", os.path.join(case_dir, name)]
    process = subprocess.run(command + extra, capture_output=True, text=True, timeout=timeout,
                             env=dict(os.environ, KEEL_LOG_LEVEL="warn"))
    result = None
    result_path = os.path.join(out, "result.json")
    if os.path.exists(result_path):
        try:
            result = load_json(result_path)
        except ValueError as error:
            result = f"(not JSON: {error})"
    return process.returncode, process.stderr, result


RUN_OPTIONS = {"optimized": ["--repeat", "2"], "unoptimized": ["--no-optimize", "--repeat", "2"],
               "training": ["--training"], "serve": ["--threads", "2", "--requests", "8"],
               "error": []}


def check_result_fields(report, label, run, result, case):
    if result.get("outputs") != case["outputs"]:
        report.fail(f"{label}: result.json outputs {result.get('outputs')!r}, expected "
                    f"{case['outputs']}")
    want_optimized = run in ("optimized", "serve")
    if result.get("optimized") is not want_optimized:
        report.fail(f"{label}: optimized {result.get('optimized')!r}, expected {want_optimized}")
    passes = result.get("passes")
    if not isinstance(passes, list) or not all(isinstance(p, str) for p in passes):
        report.fail(f"{label}: passes {passes!r} is not a list of names")
    elif run == "optimized" and case["expect_passes"] and not passes:
        report.fail(f"{label}: no rewrite reported; the model has foldable Conv2D+BN pairs")
    elif not want_optimized and passes:
        report.fail(f"{label}: passes {passes} reported without optimization")
    median = result.get("median_ms")
    if not isinstance(median, (int, float)) or isinstance(median, bool) or not median > 0:
        report.fail(f"{label}: median_ms {median!r}, expected a number > 0")
    if run == "serve":
        rate = result.get("requests_per_s")
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not rate > 0:
            report.fail(f"{label}: requests_per_s {rate!r}, expected a number > 0")
    else:
        report.notes.append(f"{label}: passes {passes}")


def check_arrays(report, label, out, case, expected):
    for name in case["outputs"]:
        path = os.path.join(out, f"{name}.npy")
        if not os.path.exists(path):
            report.fail(f"{label}: no {name}.npy")
            continue
        got = np.load(path)
        if got.dtype != np.float32:
            report.fail(f"{label}: {name}.npy has dtype {got.dtype}, expected float32")
        report.compare(f"{label} {name}", got, expected[name], expected[f"{name}.err"])
    written = sorted(os.path.relpath(p, os.path.join(out, "variables"))[:-len(".npy")]
                     for p in glob.glob(os.path.join(out, "variables", "*", "*.npy")))
    wanted = case.get("variables", []) if label.endswith("training") else []
    if written != wanted:
        report.fail(f"{label}: variables written {written}, expected {wanted}")
    for variable in set(written) & set(wanted):
        got = np.load(os.path.join(out, "variables", f"{variable}.npy"))
        if got.dtype != np.float32:
            report.fail(f"{label}: {variable}.npy has dtype {got.dtype}, expected float32")
        key = f"variables/{variable}"
        report.compare(f"{label} {variable}", got, expected[key], expected[f"{key}.err"])


def check_error(report, status, result, case):
    expected = case["error"]
    if status != 2:
        report.fail(f"error: exit status {status}, expected 2")
    error = result.get("error") if isinstance(result, dict) else None
    if not isinstance(error, dict):
        report.fail(f"error: result.json {result!r} has no 'error' object")
        return
    category, message = error.get("category"), error.get("message")
    if category not in expected["categories"]:
        report.fail(f"error: category {category!r}, expected one of {expected['categories']} "
                    f"(message {message!r})")
    if not isinstance(message, str):
        report.fail(f"error: message {message!r} is not a string")
        return
    for text in expected["message_contains"]:
        if text not in message:
            report.fail(f"error: message {message!r} does not name {text!r}")
    report.notes.append(f"error: {category}: {message}")


def check_case(keel, case_dir, timeout, max_lines):
    case = load_json(os.path.join(case_dir, "case.json"))
    report = Report(case["name"], max_lines)
    expected = None
    if "error" not in case:
        expected = dict(np.load(os.path.join(case_dir, "expected.npz")))
    for run in case["runs"]:
        out = os.path.join(case_dir, f"out_{run}")
        label = run
        try:
            status, stderr, result = run_keel(keel, case_dir, case, out, RUN_OPTIONS[run],
                                              timeout)
        except subprocess.TimeoutExpired as expired:
            report.fail(f"{label}: keel graph-run did not finish within {expired.timeout} s")
            continue
        if status < 0:
            report.fail(f"{label}: killed by signal {-status}; stderr {stderr.strip()[-600:]}")
            continue
        if run == "error":
            check_error(report, status, result, case)
            continue
        if status != 0 or not isinstance(result, dict):
            report.fail(f"{label}: exit status {status}, result {json.dumps(result)[:600]}; "
                        f"stderr {stderr.strip()[-600:]}")
            continue
        check_result_fields(report, label, run, result, case)
        check_arrays(report, label, out, case, expected)
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keel", required=True, help="the keel executable")
    parser.add_argument("--cases", required=True, help="directory written by make_graph_cases.py")
    parser.add_argument("--case", action="append", help="only these cases (repeatable)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per keel run")
    parser.add_argument("--max-lines", type=int, default=8,
                        help="mismatching elements listed per array")
    arguments = parser.parse_args()
    if not os.access(arguments.keel, os.X_OK):
        print(f"FAIL: {arguments.keel} is not an executable")
        return 1
    selected = sorted(os.path.dirname(p)
                      for p in glob.glob(os.path.join(arguments.cases, "*", "case.json")))
    if arguments.case:
        selected = [d for d in selected if os.path.basename(d) in arguments.case]
        missing = set(arguments.case) - {os.path.basename(d) for d in selected}
        if missing:
            print(f"FAIL: no case {sorted(missing)} in {arguments.cases}")
            return 1
    if not selected:
        print(f"FAIL: no cases in {arguments.cases}")
        return 1
    failed = 0
    for case_dir in selected:
        report = check_case(arguments.keel, case_dir, arguments.timeout, arguments.max_lines)
        print(f"{'FAIL' if report.failures else 'ok  '} {report.name}")
        for line in report.notes:
            print(f"    {line}")
        for line in report.failures:
            print(f"  {line}")
        failed += bool(report.failures)
    print(f"{len(selected) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
