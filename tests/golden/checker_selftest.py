#!/usr/bin/python3
"""Tests the checker and the cases themselves with an in-process stand-in for `keel layer-run`.

The stand-in runs the reference with the float32 habits of a real kernel (the batch mean held in
float32, the moving average in another float32 rounding form, outputs rounded to their dtype):
every case must pass, which shows the tolerances admit an honest float32 implementation. Then
each known way of getting TensorFlow's semantics wrong is injected in turn (Bessel's correction on
the wrong path, contiguous ghost batches, no sqrt(ε) floor in renorm, a one-pass float32 variance,
errors at the wrong stage, a crash, ...): the cases written to catch it must fail, which shows the
suite can fail for each reason it exists.
"""

import contextlib
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import layer_script
import batch_normalization_reference as ref
import check_layer_run
import make_cases

import numpy as np


class Float32Layer(ref.BatchNormalizationReference):
    """The reference as a float32 kernel would compute it, plus an optional injected fault."""

    fault = None

    def __init__(self, config, behavior="v2", has_adjustment=False):
        super().__init__(config, behavior, has_adjustment)
        if self.fault == "v1_frozen_like_v2" and self.behavior == "v1":
            self.behavior = "v2"

    def _reduction_axes(self, working):
        axes = self._working_axes()
        return tuple(i for i in range(working.ndim) if i not in axes
                     and not (self.virtual_batch_size is not None and i == 1))

    def _moments(self, working):
        moments = super()._moments(working)
        if self.fault == "one_pass_float32_variance":
            x = working.astype(np.float32)
            reduce = self._reduction_axes(working)
            mean = x.mean(axis=reduce, keepdims=True, dtype=np.float32)
            square = (x * x).mean(axis=reduce, keepdims=True, dtype=np.float32)
            moments.mean = mean.astype(np.float64)
            moments.variance = np.maximum(square - mean * mean, 0).astype(np.float64)
            return moments
        # A mean held in float32: a two-pass variance around it gains exactly the squared error.
        mean32 = moments.mean.astype(np.float32).astype(np.float64)
        moments.variance = moments.variance + (moments.mean - mean32) ** 2
        moments.mean = mean32
        if self.fault == "no_bessel" and self.fused:
            moments.count = 1
        return moments

    def epsilon_used(self):
        if self.fault == "no_epsilon_floor":
            return float(self.epsilon)
        if self.fault == "epsilon_floor_on_generic":
            return max(self.epsilon, ref.FUSED_EPSILON_FLOOR)
        return super().epsilon_used()

    def _decide_fused(self, rank, resolved):
        if self.fault == "tf_keras_like_v2" and self.behavior == "tf_keras":
            self.behavior = "v2"
            try:
                return super()._decide_fused(rank, resolved)
            finally:
                self.behavior = "tf_keras"
        return super()._decide_fused(rank, resolved)

    def call(self, x, training=False, adjustment=None):
        x = np.asarray(x, dtype=np.float64)
        vbs = self.virtual_batch_size
        if self.fault == "contiguous_groups" and vbs and training and x.shape[0] % vbs == 0:
            # Feed the strided algorithm a permutation that turns its groups into contiguous
            # ones, then undo it on the output.
            groups = x.shape[0] // vbs
            order = np.array([(i % groups) * vbs + i // groups for i in range(x.shape[0])])
            result = super().call(x[order], training, adjustment)
            y = np.empty_like(result.y)
            y[order] = result.y
            result.y = y
            return result
        if self.fault == "adjustment_outside_affine" and adjustment is not None and training:
            self.has_adjustment = False
            try:
                result = super().call(x, training)
            finally:
                self.has_adjustment = True
            result.y = result.y * adjustment[0] + adjustment[1]
            return result
        result = super().call(x, training, adjustment)
        if self.fault == "empty_batch_nan" and x.shape[0] == 0 and training:
            for name in ("moving_mean", "moving_variance"):
                self.variables[name] = np.full(self.param_shape, np.nan, dtype=np.float32)
        return result

    def renorm_stddev_floor(self, eps):
        if self.fault == "renorm_no_floor":
            return 1e-30  # only keeps a zero renorm_stddev from dividing by zero
        return super().renorm_stddev_floor(eps)

    def _update_generic(self, result, mean, variance, eps):
        if self.fault == "bessel_on_generic" and not self.renorm:
            count = result.moments.count
            variance = variance * count / max(count - 1, 1)
        old_variance = self.variables["moving_variance"]
        super()._update_generic(result, mean, variance, eps)
        if self.fault == "renorm_variance_ema" and self.renorm:
            self.variables["moving_variance"] = ref.ema_update(
                old_variance, self._to_param(variance), ref.generic_decay(self.momentum))


def other_rounding_update(variable, value, decay):
    """momentum·v + decay·value in float32: the same maths as TF's form, other roundings."""
    v = np.asarray(variable, dtype=np.float32)
    target = np.asarray(value, dtype=np.float64).astype(np.float32)
    keep = np.float32(np.float32(1.0) - np.float32(decay))
    return (keep * v + np.float32(decay) * target).astype(np.float32)


@contextlib.contextmanager
def patched(module, **replacements):
    saved = {name: getattr(module, name) for name in replacements}
    for name, value in replacements.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def fake_runner(fault=None):
    """A `keel layer-run` stand-in: runner(script, out) -> (status, stderr)."""
    def run(script_path, out):
        os.makedirs(out, exist_ok=True)
        if fault == "signal":
            return -11, "Segmentation fault"
        layer_class = type("FaultyLayer", (Float32Layer,), {"fault": fault})
        replacements = {"ema_update": other_rounding_update}
        if fault == "decay_is_momentum":
            replacements.update(generic_decay=lambda m: np.float32(m),
                                fused_decay=lambda m: np.float32(m))
        try:
            with patched(ref, **replacements):
                script = layer_script.Script(script_path)
                layer, results = layer_script.run_free(script, layer_class)
        except ref.LayerError as error:
            stage = "call" if fault == "error_stage_call" else error.stage
            if fault != "no_result_json":
                with open(os.path.join(out, "result.json"), "w") as handle:
                    json.dump({"error": {"category": error.categories[0],
                                         "message": error.message, "stage": stage}}, handle)
            return 2, error.message
        dtype = script.output_dtype()
        for index, (result, variables) in enumerate(results):
            y = ref.round_to_dtype(result.y, dtype).astype(np.float32)
            if fault == "y_nan" and y.size:
                y.flat[0] = np.nan
            np.save(os.path.join(out, f"step{index}_y.npy"), y)
            for name, value in variables.items():
                if fault == "missing_variable_file" and name == "moving_variance":
                    continue
                np.save(os.path.join(out, f"step{index}_{name}.npy"), value.astype(np.float32))
        fused = (not layer.fused) if fault == "fused_report_inverted" else bool(layer.fused)
        if fault != "no_result_json":
            with open(os.path.join(out, "result.json"), "w") as handle:
                # It holds its mean in float32 as oneDNN does, so it claims that path's allowance.
                json.dump({"steps": [{"path": "onednn", "implementation": "stand-in-jit",
                                      "fused_semantics": fused} for _ in results]}, handle)
        return 0, ""
    return run


# Each fault and cases that exist to catch it (every one listed must fail).
FAULTS = {
    "bessel_on_generic": ["same_data_fused_false", "batch2_generic_rank2", "batch3_generic_rank4"],
    "no_bessel": ["same_data_fused_none", "batch2_fused", "batch3_fused_nchw",
                  "tf_keras_rank5_axism1"],
    "no_epsilon_floor": ["tiny_epsilon_fused_none"],
    "epsilon_floor_on_generic": ["tiny_epsilon_fused_false", "tiny_epsilon_generic_rank2"],
    "contiguous_groups": ["strided_grouping_vbs2", "strided_grouping_vbs3"],
    "renorm_no_floor": ["renorm_stddev_floor"],
    "renorm_variance_ema": ["renorm_unclipped", "renorm_virtual_batch"],
    "v1_frozen_like_v2": ["v1_trainable_false_generic", "v1_trainable_false_fused",
                          "v1_trainable_false_renorm", "adjustment_v1_trainable_false"],
    "tf_keras_like_v2": ["tf_keras_rank5_axism1", "tf_keras_rank5_ncdhw_axism4",
                         "build_tf_keras_axis_m4_rank4"],
    "fused_report_inverted": ["axes_rank2_axism1", "axes_rank4_axis3"],
    "decay_is_momentum": ["axes_rank2_axism1", "axes_rank4_axis3", "renorm_unclipped"],
    "adjustment_outside_affine": ["adjustment_nhwc_per_channel", "adjustment_nchw_per_sample",
                                  "renorm_adjustment"],
    "one_pass_float32_variance": ["mean_1e4_spread_1e-2_generic_rank2",
                                  "mean_1e4_spread_1e-2_fused_nhwc"],
    "empty_batch_nan": ["empty_generic", "empty_first_fused", "empty_renorm"],
    "error_stage_call": ["construction_axis_string", "build_axis_out_of_range"],
    "no_result_json": ["axes_rank2_axism1", "construction_axis_string"],
    "signal": ["axes_rank2_axism1", "call_rank_change"],
    "missing_variable_file": ["axes_rank2_axism1"],
    "y_nan": ["axes_rank2_axism1", "bfloat16_fused_nhwc"],
}


class CheckerSelfTest(unittest.TestCase):
    cases = None  # --cases DIR: reuse cases made by make_cases.py (left untouched)

    @classmethod
    def setUpClass(cls):
        cls.temporary = tempfile.TemporaryDirectory(prefix="keel_golden_selftest_")
        if cls.cases is None:
            cls.cases = os.path.join(cls.temporary.name, "cases")
            make_cases.generate(cls.cases)

    @classmethod
    def tearDownClass(cls):
        cls.temporary.cleanup()

    def run_cases(self, runner, names=None):
        failures = {}
        for case_dir in check_layer_run.select_cases(self.cases, names=names):
            out = os.path.join(self.temporary.name, "out", os.path.basename(case_dir))
            report = check_layer_run.check_case(runner, case_dir, max_lines=4, out=out)
            if report.failures:
                failures[os.path.basename(case_dir)] = report.failures
        return failures

    def test_float32_implementation_passes_every_case(self):
        failures = self.run_cases(fake_runner())
        self.assertFalse(failures, "\n".join(line for lines in failures.values()
                                             for line in lines[:6]))

    def test_every_fault_is_caught(self):
        for fault, names in FAULTS.items():
            with self.subTest(fault=fault):
                missing = [n for n in names
                           if not os.path.isdir(os.path.join(self.cases, n))]
                self.assertFalse(missing, f"no such cases: {missing}")
                failures = self.run_cases(fake_runner(fault), names)
                self.assertEqual(sorted(failures), sorted(names),
                                 f"{fault}: cases that failed {sorted(failures)}")

    def test_fault_reports_are_specific(self):
        failures = self.run_cases(fake_runner("no_bessel"), ["batch2_fused"])
        text = "\n".join(failures["batch2_fused"])
        self.assertIn("moving_variance", text)
        self.assertIn("index", text)
        self.assertNotIn("step 0 y:", text)  # the output itself is right on that path


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--cases":
        CheckerSelfTest.cases = sys.argv[2]
        del sys.argv[1:3]
    unittest.main(verbosity=1)
