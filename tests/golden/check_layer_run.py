#!/usr/bin/python3
"""Runs `keel layer-run` on every golden case and compares with the NumPy reference.

For each case directory written by make_cases.py:
  * runs `KEEL layer-run SCRIPT.json --out DIR` (a signal or a timeout is a failure);
  * error cases: exit status 2 and result.json {"error": {"category", "message", "stage"}} with the
    expected stage and one of the categories that fit the failure;
  * other cases: exit status 0; result.json has one entry per step with "path" in
    {"onednn", "custom"} (an "implementation" name when oneDNN ran) and "fused_semantics" equal
    to TF's fused decision; each step's output and every variable after it are compared with the
    tolerances of tolerances.py. The expected output of step i is the reference evaluated in
    float64 from the same inputs: x_i and the variables keel wrote after step i-1 (step 0 starts
    from the initial variables), so a wrong update is reported at the step that made it. The
    variables are compared with the free-running reference and its accumulated allowance.

Every mismatch is reported with case, step, array, index, got, expected and allowed.
Usage: check_layer_run.py --keel PATH --cases DIR [--group G ...] [--case NAME ...]
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys

import layer_script
import tolerances

import numpy as np

PATHS = ("onednn", "custom")
CATEGORIES = ("invalid_argument", "shape_mismatch", "unsupported", "internal")
STAGES = ("script", "construction", "build", "call")


class Report:
    def __init__(self, name, max_lines):
        self.name = name
        self.max_lines = max_lines
        self.failures = []

    def fail(self, text):
        self.failures.append(f"{self.name}: {text}")

    def compare(self, label, got, expected, allowed):
        """Elementwise |got - expected| <= allowed; NaN/inf in `got` always fails."""
        got = np.asarray(got, dtype=np.float64)
        if got.shape != expected.shape:
            self.fail(f"{label}: shape {list(got.shape)}, expected {list(expected.shape)}")
            return False
        allowed = np.broadcast_to(allowed, expected.shape)
        error = np.abs(got - expected)
        bad = ~(error <= allowed)  # catches NaN
        if not bad.any():
            return True
        indices = np.argwhere(bad)
        order = np.argsort(-(error[bad] - allowed[bad]))
        self.fail(f"{label}: {len(indices)} of {got.size} elements outside tolerance")
        for k in order[:self.max_lines]:
            index = tuple(int(i) for i in indices[k])
            self.failures.append(
                f"    index {list(index)}: got {got[index]!r}, expected {expected[index]!r}, "
                f"|diff| {error[index]:.3e} > allowed {allowed[index]:.3e}")
        if len(indices) > self.max_lines:
            self.failures.append(f"    ... {len(indices) - self.max_lines} more")
        return False


def keel_runner(keel, timeout):
    """runner(script, out) -> (exit status, stderr); a negative status is a signal."""
    def run(script, out):
        process = subprocess.run([keel, "layer-run", script, "--out", out], capture_output=True,
                                 text=True, timeout=timeout,
                                 env=dict(os.environ, KEEL_LOG_LEVEL="warn"))
        return process.returncode, process.stderr
    return run


def load_json(path):
    with open(path) as handle:
        return json.load(handle)


def check_case(runner, case_dir, max_lines, out=None):
    """Runs one case into `out` (default: the case's own out/) and checks it: a Report."""
    case = load_json(os.path.join(case_dir, "case.json"))
    report = Report(case["name"], max_lines)
    out = out or os.path.join(case_dir, "out")
    if os.path.exists(out):
        shutil.rmtree(out)
    script_path = os.path.join(case_dir, "SCRIPT.json")
    try:
        status, stderr = runner(script_path, out)
    except subprocess.TimeoutExpired as timeout:
        report.fail(f"keel layer-run did not finish within {timeout.timeout} s")
        return report
    if status < 0:
        report.fail(f"keel layer-run was killed by signal {-status}; stderr: "
                    f"{stderr.strip()[-800:]}")
        return report
    result_path = os.path.join(out, "result.json")
    result = None
    if os.path.exists(result_path):
        try:
            result = load_json(result_path)
        except ValueError as error:
            report.fail(f"result.json is not JSON: {error}")
            return report

    expected = case["expected"]
    if "error" in expected:
        check_error(report, status, result, expected["error"])
    else:
        check_steps(report, status, stderr, result, expected, case_dir, out)
    return report


def check_error(report, status, result, expected):
    want = f"a {expected['stage']} error ({'|'.join(expected['categories'])}: " \
           f"{expected['reason']})"
    if status != 2:
        report.fail(f"exit status {status}, expected 2 for {want}")
    if result is None:
        report.fail(f"no result.json; expected {want}")
        return
    error = result.get("error") if isinstance(result, dict) else None
    if not isinstance(error, dict):
        report.fail(f"result.json has no 'error' object; expected {want}")
        return
    message = error.get("message")
    if not isinstance(message, str) or not message:
        report.fail("error.message is missing or empty")
    if error.get("stage") not in STAGES or error.get("category") not in CATEGORIES:
        report.fail(f"error stage/category {error.get('stage')!r}/{error.get('category')!r} "
                    f"are not among {STAGES}/{CATEGORIES}")
    if error.get("stage") != expected["stage"] or error.get("category") not in \
            expected["categories"]:
        report.fail(f"got {error.get('category')} at stage {error.get('stage')} "
                    f"(\"{message}\"); expected {want}")


def _step_entries(result):
    if isinstance(result, dict) and isinstance(result.get("steps"), list):
        return result["steps"]
    if isinstance(result, list):
        return result
    return None


def check_steps(report, status, stderr, result, expected, case_dir, out):
    if status != 0:
        detail = result.get("error") if isinstance(result, dict) else None
        report.fail(f"exit status {status}, expected 0; error {detail}; stderr: "
                    f"{stderr.strip()[-800:]}")
        return
    entries = _step_entries(result)
    if entries is None or len(entries) != expected["steps"]:
        report.fail(f"result.json should list {expected['steps']} steps: "
                    f"{json.dumps(result)[:400]}")
        return
    for index, entry in enumerate(entries):
        path = entry.get("path") if isinstance(entry, dict) else None
        if path not in PATHS:
            report.fail(f"step {index}: path {path!r}, expected one of {PATHS}")
        elif path == "onednn" and "jit" not in str(entry.get("implementation", "")):
            report.fail(f"step {index}: oneDNN ran {entry.get('implementation')!r}; issue 4 uses "
                        "oneDNN only where it reports a JIT implementation")
        fused = entry.get("fused_semantics") if isinstance(entry, dict) else None
        if fused is not expected["fused_semantics"]:
            report.fail(f"step {index}: fused_semantics {fused!r}, TF's decision is "
                        f"{expected['fused_semantics']}")

    script = layer_script.Script(os.path.join(case_dir, "SCRIPT.json"))
    layer = script.new_layer()
    names = expected["variables"]
    output_dtype = expected["output_dtype"]
    state = layer.state()
    free_running = np.load(os.path.join(case_dir, "expected.npz"))
    for index, step in enumerate(script.steps):
        got_names = sorted(os.path.basename(p)[len(f"step{index}_"):-len(".npy")]
                           for p in glob.glob(os.path.join(out, f"step{index}_*.npy")))
        if "y" not in got_names:
            report.fail(f"step {index}: no step{index}_y.npy")
        extra = sorted(set(got_names) - set(names) - {"y"})
        missing = sorted(set(names) - set(got_names))
        if extra or missing:
            report.fail(f"step {index}: variables written {sorted(set(got_names) - {'y'})}, "
                        f"Keras has {names}")

        layer.set_state(state)
        reference = layer.call(step["x"], step["training"], step["adjustment"])
        if "y" in got_names:
            got = np.load(os.path.join(out, f"step{index}_y.npy"))
            if got.dtype != np.float32:
                report.fail(f"step {index} y: dtype {got.dtype}, expected float32")
            entry = entries[index] if isinstance(entries[index], dict) else {}
            mean_in_float32 = entry.get("path") == "onednn" and bool(
                entry.get("effective_training", step["training"]))
            report.compare(f"step {index} y", got, reference.y,
                           tolerances.output_tolerance(reference, output_dtype, mean_in_float32))

        next_state = {}
        for name in names:
            expected_value = free_running[f"step{index}_{name}"]
            allowed = free_running[f"step{index}_{name}.tol"]
            next_state[name] = expected_value
            if name not in got_names:
                continue
            got = np.load(os.path.join(out, f"step{index}_{name}.npy"))
            if got.dtype != np.float32:
                report.fail(f"step {index} {name}: dtype {got.dtype}, expected float32")
            report.compare(f"step {index} {name}", got, expected_value, allowed)
            if got.shape == expected_value.shape:
                next_state[name] = got
        # The next step starts from keel's own variables (the free-running reference's where keel
        # wrote none), so a wrong update is reported once, where it happened, and the next
        # outputs are still judged on their own arithmetic.
        state = next_state


def select_cases(cases, groups=None, names=None):
    """Case directories under `cases`, optionally only those of some groups or names."""
    selected = []
    for case_json in sorted(glob.glob(os.path.join(cases, "*", "case.json"))):
        case = load_json(case_json)
        if (not groups or case["group"] in groups) and (not names or case["name"] in names):
            selected.append(os.path.dirname(case_json))
    return selected


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keel", required=True, help="the keel executable")
    parser.add_argument("--cases", required=True, help="directory written by make_cases.py")
    parser.add_argument("--group", action="append", help="only these groups (repeatable)")
    parser.add_argument("--case", action="append", help="only these cases (repeatable)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per keel run")
    parser.add_argument("--max-lines", type=int, default=8,
                        help="mismatching elements listed per array")
    parser.add_argument("--out-name", default="out",
                        help="folder inside each case for keel's outputs (lets variants of the "
                             "same cases, e.g. one per kernel, run side by side)")
    arguments = parser.parse_args()

    if not os.access(arguments.keel, os.X_OK):
        print(f"FAIL: {arguments.keel} is not an executable")
        return 1
    probe = subprocess.run([arguments.keel, "layer-run", "--help"], capture_output=True,
                           text=True, timeout=arguments.timeout)
    if probe.returncode != 0:
        print(f"FAIL: '{arguments.keel} layer-run --help' exited with {probe.returncode}: "
              f"{(probe.stderr or probe.stdout).strip()[-400:]}")
        return 1

    selected = select_cases(arguments.cases, arguments.group, arguments.case)
    if not selected:
        print(f"FAIL: no case matches groups {arguments.group} / cases {arguments.case} in "
              f"{arguments.cases}")
        return 1

    runner = keel_runner(arguments.keel, arguments.timeout)
    passed = failed = 0
    for case_dir in selected:
        report = check_case(runner, case_dir, arguments.max_lines,
                            os.path.join(case_dir, arguments.out_name))
        if report.failures:
            failed += 1
            print(f"FAIL {report.name}")
            for line in report.failures:
                print(f"  {line}")
        else:
            passed += 1
            print(f"ok   {report.name}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
