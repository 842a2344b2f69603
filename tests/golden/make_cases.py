#!/usr/bin/python3
"""Generates the golden cases for `keel layer-run` (BatchNormalization, issues 4 and 5).

Each case is a directory holding
  SCRIPT.json                      the runner's script (issue 4, "Conformance runner")
  x<i>.npy, adj<i>_{scale,bias}.npy, var_<name>.npy   its arrays, representable in the input dtype
  case.json                        group, description, what is expected (error stage and
                                   categories, or TF's fused decision), tolerance constants
  expected.npz                     free-running reference, per step i:
      step<i>_y                    the exact output (float64)
      step<i>_<var>                each variable after step i (float32 values, as float64)
      step<i>_<var>.tol            the accumulated allowance for it (tolerances.py)

Inputs are designed from the arithmetic where it matters: symmetric pairs μ ± k·u on a grid that
the dtype represents exactly, so every channel's batch mean is exactly μ and the variance exact in
double; plus normal data from a fixed seed. Usage: make_cases.py --out DIR
"""

import argparse
import json
import os
import shutil
import sys

import layer_script
import tolerances
import batch_normalization_reference as ref

import numpy as np

SEED = 20240415


class Step:
    def __init__(self, x, training=True, adjustment=None, omit_training=False):
        self.x = x
        self.training = training
        self.adjustment = adjustment
        self.omit_training = omit_training


def train(x, adjustment=None):
    return Step(x, True, adjustment)


def infer(x):
    return Step(x, False)


def unspecified(x):
    """A step without "training": Keras' learning phase, i.e. inference (spec §5)."""
    return Step(x, None, omit_training=True)


class CaseWriter:
    def __init__(self, out):
        self.out = out
        self.names = set()
        self.counts = {}

    def add(self, group, name, description, config, steps, behavior="v2", input_dtype="float32",
            variables=None, error_stage=None):
        if name in self.names:
            raise ValueError(f"duplicate case name {name}")
        self.names.add(name)
        directory = os.path.join(self.out, name)
        os.makedirs(directory)
        script = {"layer": {"class_name": "BatchNormalization", "config": config},
                  "behavior": behavior, "input_dtype": input_dtype, "steps": []}
        if variables:
            script["variables"] = {}
            for variable, value in variables.items():
                file = f"var_{variable}.npy"
                # Variables are float32 in keel and TF: the file holds the float32 value.
                np.save(os.path.join(directory, file),
                        _exact(ref.round_to_dtype(value, "float32"), "float32"))
                script["variables"][variable] = file
        for index, step in enumerate(steps):
            file = f"x{index}.npy"
            np.save(os.path.join(directory, file), _exact(step.x, input_dtype))
            entry = {"input": file}
            if not step.omit_training:
                entry["training"] = step.training
            if step.adjustment is not None:
                entry["adjustment"] = {"scale": f"adj{index}_scale.npy",
                                       "bias": f"adj{index}_bias.npy"}
                np.save(os.path.join(directory, entry["adjustment"]["scale"]),
                        _exact(step.adjustment[0], input_dtype))
                np.save(os.path.join(directory, entry["adjustment"]["bias"]),
                        _exact(step.adjustment[1], input_dtype))
            script["steps"].append(entry)
        script_path = os.path.join(directory, "SCRIPT.json")
        with open(script_path, "w") as handle:
            json.dump(script, handle, indent=1)

        case = {"name": name, "group": group, "description": description,
                "tolerance": tolerances.parameters()}
        case["expected"] = self._expected(script_path, directory, error_stage, name)
        with open(os.path.join(directory, "case.json"), "w") as handle:
            json.dump(case, handle, indent=1)
        self.counts[group] = self.counts.get(group, 0) + 1

    def _expected(self, script_path, directory, error_stage, name):
        try:
            script = layer_script.Script(script_path)
            layer, results = layer_script.run_free(script)
        except ref.LayerError as error:
            if error.stage != error_stage:
                raise AssertionError(f"{name}: the reference fails at stage {error.stage} "
                                     f"({error.message}); the case expects {error_stage}")
            return {"error": {"stage": error.stage, "categories": list(error.categories),
                              "reason": error.message}}
        if error_stage is not None:
            raise AssertionError(f"{name}: the case expects a {error_stage} error; the reference "
                                 "ran every step")
        names = layer.variable_names()
        allowance = {variable: np.zeros(layer.param_shape) for variable in names}
        arrays = {}
        for index, (result, variables) in enumerate(results):
            allowance = tolerances.propagate_variable_tolerances(layer, result, allowance)
            arrays[f"step{index}_y"] = result.y
            for variable in names:
                arrays[f"step{index}_{variable}"] = variables[variable].astype(np.float64)
                arrays[f"step{index}_{variable}.tol"] = np.asarray(allowance[variable],
                                                                   dtype=np.float64)
        np.savez(os.path.join(directory, "expected.npz"), **arrays)
        return {"fused_semantics": bool(layer.fused), "steps": len(results),
                "variables": names, "param_shape": list(layer.param_shape),
                "output_dtype": script.output_dtype()}


def _exact(values, dtype):
    """The array to save: it must already be representable in `dtype` (cases are designed so)."""
    values = np.asarray(values, dtype=np.float64)
    rounded = ref.round_to_dtype(values, dtype)
    if not np.array_equal(rounded, values, equal_nan=True):
        raise AssertionError(f"values not representable in {dtype}")
    return values.astype(np.float16 if dtype == "float16" else np.float32)


# --- data -------------------------------------------------------------------------------------

class Data:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def normal(self, shape, loc=0.0, scale=1.0, dtype="float32"):
        return ref.round_to_dtype(loc + scale * self.rng.standard_normal(shape), dtype)

    def uniform(self, shape, low, high, dtype="float32"):
        return ref.round_to_dtype(self.rng.uniform(low, high, shape), dtype)

    def grid(self, shape, low, high, unit):
        """Multiples of `unit` in [low, high]: exact in every dtype for a coarse enough unit."""
        return self.rng.integers(round(low / unit), round(high / unit) + 1, shape) * unit

    def pairs(self, shape, axes, center, unit, max_steps=8):
        """center_c ± k·unit (integer k): each channel's batch mean is exactly center_c and its
        variance exact in double. `axes` are the resolved normalized axes."""
        shape = tuple(shape)
        others = [i for i in range(len(shape)) if i not in axes]
        channel_shape = [shape[a] for a in axes]
        channels = int(np.prod(channel_shape))
        count = int(np.prod([shape[i] for i in others]))
        centers = np.broadcast_to(np.asarray(center, dtype=np.float64), channel_shape) \
            .reshape(channels)
        rows = np.empty((channels, count))
        for c in range(channels):
            steps = self.rng.integers(1, max_steps + 1, count // 2) * unit
            values = np.concatenate([centers[c] + steps, centers[c] - steps,
                                     [centers[c]] * (count % 2)])
            rows[c] = self.rng.permutation(values)
        moved = rows.reshape(channel_shape + [shape[i] for i in others])
        return np.transpose(moved, np.argsort(list(axes) + others))


def param(data, shape, low, high):
    return data.uniform(shape, low, high)


# --- cases ------------------------------------------------------------------------------------

def axes_cases(w, data):
    """Every axis form on ranks 2-5: int, negative, single-element list, multi-axis."""
    forms = [
        ((6, 5), -1, [1]), ((6, 5), 1, [1]), ((6, 5), 0, [0]), ((6, 5), -2, [0]),
        ((6, 5), [1], [1]), ((6, 5), [-1], [1]),
        ((4, 5, 3), -1, [2]), ((4, 5, 3), 1, [1]), ((4, 5, 3), -2, [1]),
        ((4, 5, 3), [1, 2], [1, 2]),
        ((4, 5, 3), [0, -1], [0, 2]),
        ((3, 4, 5, 6), 3, [3]), ((3, 4, 5, 6), -1, [3]), ((3, 4, 5, 6), 1, [1]),
        ((3, 4, 5, 6), -3, [1]), ((3, 4, 5, 6), 2, [2]), ((3, 4, 5, 6), -2, [2]),
        ((3, 4, 5, 6), [3], [3]), ((3, 4, 5, 6), [1], [1]), ((3, 4, 5, 6), [1, 3], [1, 3]),
        ((3, 4, 5, 6), [-3, -2, -1], [1, 2, 3]),
        ((2, 3, 4, 2, 5), -1, [4]), ((2, 3, 4, 2, 5), 1, [1]), ((2, 3, 4, 2, 5), 4, [4]),
        ((2, 3, 4, 2, 5), -3, [2]), ((2, 3, 4, 2, 5), [1, 4], [1, 4]),
        ((2, 3, 4, 2, 5), [2, 3], [2, 3]),
    ]
    for shape, axis, resolved in forms:
        channel_shape = [shape[a] for a in resolved]
        param_shape = (channel_shape[0],) if len(resolved) == 1 else \
            tuple(shape[i] if i in resolved else 1 for i in range(len(shape)))
        name = f"axes_rank{len(shape)}_axis{_label(axis)}"
        centers = data.grid(channel_shape, -2, 2, 0.25)
        steps = [train(data.pairs(shape, resolved, centers, 1 / 32)),
                 train(data.normal(shape, 0.5, 2.0)),
                 infer(data.normal(shape, 0.3, 1.5))]
        w.add("axes", name, f"axis={axis} on rank {len(shape)}: two training calls, inference",
              {"axis": axis, "momentum": 0.9}, steps,
              variables={"gamma": param(data, param_shape, 0.5, 2.0),
                         "beta": param(data, param_shape, -1.0, 1.0)})
    # Channel counts around SIMD widths, and a single channel.
    for shape, axis in (((7, 33), -1), ((2, 5, 3, 19), -1), ((2, 19, 3, 5), 1), ((5, 1), -1),
                        ((4, 1, 3, 3), 1), ((3, 17, 9), 1)):
        steps = [train(data.normal(shape, -0.7, 3.0)), train(data.normal(shape, 0.2, 0.5)),
                 infer(data.normal(shape, 0.0, 1.0))]
        w.add("axes", f"axes_channels_{'x'.join(map(str, shape))}_axis{_label(axis)}",
              "channel counts below, at and above vector widths", {"axis": axis, "momentum": 0.8},
              steps)


def _label(axis):
    if isinstance(axis, list):
        return "list_" + "_".join(str(a).replace("-", "m") for a in axis)
    return str(axis).replace("-", "m")


def center_scale_cases(w, data):
    for label, shape, axis in (("generic", (8, 5), -1), ("fused_nhwc", (2, 3, 3, 4), -1),
                               ("fused_nchw", (2, 4, 3, 3), 1), ("rank3", (3, 4, 5), 1)):
        resolved = [axis % len(shape)]
        for center, scale in ((False, True), (True, False), (False, False)):
            variables = {}
            if scale:
                variables["gamma"] = param(data, (shape[resolved[0]],), 0.5, 2.0)
            if center:
                variables["beta"] = param(data, (shape[resolved[0]],), -1.0, 1.0)
            steps = [train(data.pairs(shape, resolved, 0.75, 1 / 64)),
                     train(data.normal(shape, 1.0, 2.0)), infer(data.normal(shape, 0.5, 1.0))]
            w.add("center_scale", f"center{int(center)}_scale{int(scale)}_{label}",
                  "center/scale switched off: no beta/gamma variables, identity in their place",
                  {"axis": axis, "center": center, "scale": scale, "momentum": 0.9}, steps,
                  variables=variables)


def fused_generic_cases(w, data):
    """The same data through TF's fused and generic semantics: Bessel and the epsilon floor."""
    shape = (4, 3, 2, 5)
    xs = [data.normal(shape, 1.0, 2.0) for _ in range(3)] + [data.normal(shape, 0.5, 1.5)]
    steps = [train(xs[0]), train(xs[1]), train(xs[2]), infer(xs[3])]
    for fused in (None, False):
        w.add("fused_generic", f"same_data_fused_{str(fused).lower()}",
              "rank 4 axis 3: fused=None gives TF's fused semantics (Bessel-corrected moving "
              "variance), fused=False the generic ones, on identical data",
              {"axis": 3, "fused": fused, "momentum": 0.5}, steps)

    # Batches of 1, 2 and 3 samples with nothing else reduced: n = 1, 2, 3 (Bessel n/max(n-1, 1)).
    for samples in (1, 2, 3):
        for label, config, shape in (
                ("fused", {"axis": -1}, (samples, 1, 1, 4)),
                ("fused_nchw", {"axis": 1}, (samples, 4, 1, 1)),
                ("generic_rank4", {"axis": -1, "fused": False}, (samples, 1, 1, 4)),
                ("generic_rank2", {"axis": -1}, (samples, 4))):
            resolved = [config["axis"] % len(shape)]
            steps = [train(data.normal(shape, 0.5, 2.0)),
                     train(data.pairs(shape, resolved, data.grid([4], -1, 1, 0.5), 1 / 8)
                           if samples % 2 == 0 else data.normal(shape, -0.5, 1.0)),
                     infer(data.normal(shape, 0.0, 1.0))]
            w.add("fused_generic", f"batch{samples}_{label}",
                  f"{samples} sample(s), n = {samples}: where Bessel's correction shows",
                  dict(config, momentum=0.5), steps,
                  variables={"moving_variance": param(data, (4,), 0.5, 2.0)})

    # epsilon 1e-10: the fused path raises it to 1.001e-5 (training and inference), the generic
    # path keeps it. Variances near 1e-5 make the difference large; one channel is constant.
    shape = (4, 2, 2, 3)
    x = data.pairs(shape, [3], [0.5, -0.25, 1.0], 2.0 ** -9, max_steps=4)
    x[..., 2] = 1.0
    inference = data.pairs(shape, [3], [0.5, -0.25, 1.0], 2.0 ** -9, max_steps=4)
    for fused in (None, False):
        w.add("fused_generic", f"tiny_epsilon_fused_{str(fused).lower()}",
              "epsilon 1e-10: fused clamps to 1.001e-5, generic does not",
              {"axis": -1, "epsilon": 1e-10, "fused": fused, "momentum": 0.0},
              [train(x), infer(inference)])
    w.add("fused_generic", "tiny_epsilon_generic_rank2",
          "epsilon 1e-10 on rank 2 (never fused)", {"axis": -1, "epsilon": 1e-10, "momentum": 0.0},
          [train(data.pairs((8, 3), [1], [0.5, 2.0, -1.0], 2.0 ** -10)),
           infer(data.pairs((8, 3), [1], [0.5, 2.0, -1.0], 2.0 ** -10))])
    w.add("fused_generic", "epsilon_above_floor_fused",
          "epsilon 2e-5 > 1.001e-5 is kept on the fused path", {"axis": -1, "epsilon": 2e-5},
          [train(data.normal((3, 2, 2, 4), 0.0, 0.003)),
           infer(data.normal((3, 2, 2, 4), 0.0, 0.003))],
          variables={"moving_variance": param(data, (4,), 1e-5, 3e-5)})


def behavior_cases(w, data):
    """v1, v2, tf_keras and keras3: trainable=false, fused fallbacks, rank-5 fusing, learning
    phase, Keras 3's generic-only arithmetic."""
    for behavior in ("v2", "v1", "tf_keras"):
        for label, config, shape in (
                ("fused", {"axis": -1}, (4, 2, 3, 3)),
                ("generic", {"axis": -1}, (6, 3)),
                ("renorm", {"axis": -1, "renorm": True, "renorm_clipping": {"rmax": 1.5}}, (6, 3))):
            steps = [train(data.normal(shape, 1.0, 2.0)), train(data.normal(shape, -1.0, 0.5)),
                     infer(data.normal(shape, 0.0, 1.0))]
            w.add("behavior", f"{behavior}_trainable_false_{label}",
                  "trainable=false: v2/tf_keras normalize with the moving statistics; v1 with the "
                  "batch's; nothing updates in any",
                  dict(config, trainable=False, momentum=0.5), steps, behavior=behavior,
                  variables={"moving_mean": param(data, (3,), -0.5, 0.5),
                             "moving_variance": param(data, (3,), 0.5, 2.0)})
        shape = (3, 2, 2, 3)
        w.add("behavior", f"{behavior}_learning_phase",
              "a step without 'training' runs in inference",
              {"axis": -1, "momentum": 0.5},
              [train(data.normal(shape, 1.0, 1.0)), unspecified(data.normal(shape, 1.0, 1.0))],
              behavior=behavior)

    w.add("behavior", "v1_fused_true_rank2", "v1: fused=true on rank 2 silently falls back",
          {"axis": -1, "fused": True, "momentum": 0.5},
          [train(data.normal((5, 4), 0.0, 1.0)), infer(data.normal((5, 4)))], behavior="v1")
    w.add("behavior", "v1_fused_true_renorm", "v1: fused=true with renorm falls back, no error",
          {"axis": -1, "fused": True, "renorm": True, "momentum": 0.5},
          [train(data.normal((3, 2, 2, 4), 0.5, 2.0)), infer(data.normal((3, 2, 2, 4)))],
          behavior="v1")
    w.add("behavior", "v1_fused_true_axis2", "v1: fused=true with axis 2 on rank 4 falls back",
          {"axis": 2, "fused": True, "momentum": 0.5},
          [train(data.normal((2, 3, 4, 3))), infer(data.normal((2, 3, 4, 3)))], behavior="v1")
    w.add("behavior", "v1_axis_list_3_fused", "v1: axis [3] on rank 4 fuses",
          {"axis": [3], "momentum": 0.5},
          [train(data.normal((3, 2, 1, 4), 1.0, 2.0)), infer(data.normal((3, 2, 1, 4)))],
          behavior="v1")
    w.add("behavior", "v1_fused_false_rank4", "v1: fused=false never fuses",
          {"axis": -1, "fused": False, "momentum": 0.5},
          [train(data.normal((3, 2, 1, 4), 1.0, 2.0)), infer(data.normal((3, 2, 1, 4)))],
          behavior="v1")

    # Rank 5: fused only in tf_keras, with axis 1 or 4 (and -4 resolving to 1).
    shape = (3, 2, 2, 1, 4)
    xs = [data.normal(shape, 1.0, 2.0), data.normal(shape, 0.0, 1.0)]
    for behavior, axis in (("tf_keras", -1), ("tf_keras", 4), ("v2", -1), ("v1", -1)):
        w.add("behavior", f"{behavior}_rank5_axis{_label(axis)}",
              "rank 5: tf_keras fuses (NDHWC), 1.15 never does",
              {"axis": axis, "momentum": 0.5}, [train(xs[0]), infer(xs[1])], behavior=behavior)
    shape = (3, 4, 2, 1, 2)
    xs = [data.normal(shape, 1.0, 2.0), data.normal(shape, 0.0, 1.0)]
    for behavior, axis in (("tf_keras", 1), ("tf_keras", -4), ("tf_keras", 2), ("v2", 1)):
        w.add("behavior", f"{behavior}_rank5_ncdhw_axis{_label(axis)}",
              "rank 5 channels-first: tf_keras fuses axis 1/-4, not axis 2",
              {"axis": axis, "momentum": 0.5}, [train(xs[0]), infer(xs[1])], behavior=behavior)
    w.add("behavior", "tf_keras_fused_true_rank5", "tf_keras accepts fused=true on rank 5",
          {"axis": -1, "fused": True, "momentum": 0.5},
          [train(data.normal((2, 2, 1, 2, 3), 0.5, 1.0)), infer(data.normal((2, 2, 1, 2, 3)))],
          behavior="tf_keras")
    w.add("behavior", "tf_keras_virtual_batch_inference_indivisible",
          "tf_keras: inference with virtual batches has no divisibility rule",
          {"axis": -1, "virtual_batch_size": 2, "momentum": 0.5},
          [train(data.normal((4, 3), 1.0, 1.0)), infer(data.normal((5, 3)))],
          behavior="tf_keras")
    w.add("behavior", "v2_fused_true_rank4", "v2: fused=true on rank 4 axis -3 (NCHW)",
          {"axis": -3, "fused": True, "momentum": 0.5},
          [train(data.normal((3, 4, 2, 1), 0.5, 1.0)), infer(data.normal((3, 4, 2, 1)))])

    # Keras 3 (spec §11.8): never fused, so on rank 4 epsilon stays below TF's floor and the
    # moving variance takes the biased variance; updates blend v·m + value·(1 − m).
    for label, axis, shape in (("nhwc", -1, (4, 3, 2, 5)), ("nchw", 1, (3, 4, 2, 3)),
                               ("rank2", -1, (7, 3))):
        w.add("behavior", f"keras3_{label}", "keras3: generic arithmetic on every rank",
              {"axis": axis, "momentum": 0.7, "epsilon": 1e-7},
              [infer(data.normal(shape, 0.0, 1e-3)), train(data.normal(shape, 2.0, 0.5)),
               train(data.normal(shape, -1.0, 3.0)), infer(data.normal(shape, 0.0, 1.0))],
              behavior="keras3",
              variables={"moving_variance": param(data, (shape[axis],), 1e-6, 2e-6)})
    w.add("behavior", "keras3_trainable_false", "keras3: a frozen layer runs in inference",
          {"axis": -1, "momentum": 0.5, "trainable": False},
          [train(data.normal((3, 2, 2, 3), 1.0, 2.0)), infer(data.normal((3, 2, 2, 3)))],
          behavior="keras3")
    w.add("behavior", "keras3_bfloat16", "keras3: 16-bit input computed in float32",
          {"axis": -1, "momentum": 0.5, "dtype": "bfloat16"},
          [train(data.normal((4, 2, 2, 3), 1.0, 2.0, dtype="bfloat16")),
           infer(data.normal((4, 2, 2, 3), dtype="bfloat16"))], behavior="keras3",
          input_dtype="bfloat16")
    for label, config in (("renorm", {"renorm": True}), ("axis_list", {"axis": [1, 3]}),
                          ("virtual_batch_size", {"virtual_batch_size": 2}),
                          ("fused_true", {"fused": True})):
        w.add("behavior", f"keras3_refuses_{label}", "keras3: an argument Keras 3 does not have",
              config, [train(data.normal((4, 2, 2, 3)))], behavior="keras3",
              error_stage="construction")


def numerics_cases(w, data):
    # Mean 1e4, spread 1e-2: f32 grid at 1e4 is 2^-10, so μ ± k·2^-10 is exact and the batch mean
    # is exactly μ; the output is the ulp32(mean) term's territory.
    for label, config, shape, axes in (
            ("fused_nhwc", {"axis": -1}, (4, 3, 3, 4), [3]),
            ("fused_nchw", {"axis": 1}, (4, 4, 3, 3), [1]),
            ("generic_rank2", {"axis": -1}, (64, 4), [1]),
            ("generic_multi_axis", {"axis": [1, 3]}, (4, 2, 3, 2), [1, 3])):
        channel_shape = [shape[a] for a in axes]
        centers = 1e4 + data.grid(channel_shape, -8, 8, 2.0 ** -6)
        steps = [train(data.pairs(shape, axes, centers, 2.0 ** -10, max_steps=16)),
                 train(data.pairs(shape, axes, centers + 0.25, 2.0 ** -10, max_steps=16)),
                 infer(data.pairs(shape, axes, centers, 2.0 ** -10, max_steps=16))]
        w.add("numerics", f"mean_1e4_spread_1e-2_{label}",
              "data with mean 1e4 and spread 1e-2 (momentum 0, so inference uses those stats)",
              dict(config, momentum=0.0, epsilon=1e-6), steps)
    w.add("numerics", "mean_1e4_random_generic",
          "normal data around 1e4 with spread 1e-2, momentum 0.99",
          {"axis": -1, "epsilon": 1e-8},
          [train(data.normal((32, 5), 1e4, 1e-2)), train(data.normal((32, 5), 1e4, 1e-2)),
           infer(data.normal((32, 5), 1e4, 1e-2))],
          variables={"moving_mean": np.full(5, 1e4), "moving_variance": np.full(5, 1e-4)})

    # Variance far below epsilon: σ² ~ 1e-10 against ε = 1e-3.
    for label, config, shape, axes in (("fused", {"axis": -1}, (4, 2, 2, 3), [3]),
                                       ("generic", {"axis": -1}, (8, 3), [1])):
        steps = [train(data.pairs(shape, axes, [0.5, -2.0, 3.0], 2.0 ** -17)),
                 infer(data.pairs(shape, axes, [0.5, -2.0, 3.0], 2.0 ** -17))]
        w.add("numerics", f"variance_far_below_epsilon_{label}", "σ² ~ 1e-9 with ε = 1e-3",
              dict(config, momentum=0.0), steps)

    # momentum 0 (stats become the batch's, up to f32 rounding of v - (v - value)) and 1.
    for momentum in (0.0, 1.0):
        for label, config, shape in (("fused", {"axis": -1}, (3, 2, 2, 4)),
                                     ("generic", {"axis": 1}, (5, 4, 3))):
            steps = [train(data.normal(shape, 2.0, 3.0)), train(data.normal(shape, -1.0, 0.5)),
                     infer(data.normal(shape, 0.0, 1.0))]
            w.add("numerics", f"momentum_{int(momentum)}_{label}",
                  f"momentum {momentum}: moving stats {'= batch' if momentum == 0 else 'frozen'}",
                  dict(config, momentum=momentum), steps,
                  variables={"moving_mean": param(data, (4,), -1.0, 1.0),
                             "moving_variance": param(data, (4,), 0.5, 2.0)})

    # Initial variables from .npy, inference first (no training before).
    for label, config, shape, param_shape in (
            ("fused", {"axis": -1}, (2, 3, 3, 5), (5,)),
            ("generic_rank3", {"axis": 1}, (4, 5, 3), (5,)),
            ("multi_axis", {"axis": [1, 3]}, (2, 3, 2, 4), (1, 3, 1, 4))):
        variables = {"gamma": param(data, param_shape, -2.0, 2.0),
                     "beta": param(data, param_shape, -1.0, 1.0),
                     "moving_mean": param(data, param_shape, -1.0, 1.0),
                     "moving_variance": param(data, param_shape, 0.01, 3.0)}
        steps = [infer(data.normal(shape, 0.0, 2.0)), train(data.normal(shape, 0.5, 1.0)),
                 infer(data.normal(shape, 0.0, 2.0))]
        w.add("numerics", f"initial_variables_{label}",
              "every variable given by the script (negative gamma included), inference first",
              dict(config, momentum=0.7), steps, variables=variables)

    w.add("numerics", "constant_initializers",
          "initializers by Keras name and {class_name, config}",
          {"axis": -1, "momentum": 0.75,
           "gamma_initializer": {"class_name": "Constant", "config": {"value": 2.5}},
           "beta_initializer": {"class_name": "Constant", "config": {"value": -0.5}},
           "moving_mean_initializer": "ones", "moving_variance_initializer":
               {"class_name": "Constant", "config": {"value": 4.0}}},
          [train(data.normal((6, 3), 1.0, 1.0)), infer(data.normal((6, 3)))])
    for label, config, shape in (("fused", {"axis": -1}, (3, 2, 2, 3)),
                                 ("generic", {"axis": -1}, (6, 3))):
        x = data.normal(shape, 0.0, 1.0)
        x[..., 1] = 0.375
        w.add("numerics", f"constant_channel_{label}",
              "a channel with zero batch variance: output is beta there",
              dict(config, momentum=0.5), [train(x), infer(x)],
              variables={"beta": param(data, (3,), -1.0, 1.0)})
    w.add("numerics", "large_values_generic", "values around ±1e3 with unit spread",
          {"axis": -1, "momentum": 0.9},
          [train(data.normal((16, 3), 1000.0, 1.0)), train(data.normal((16, 3), -1000.0, 1.0)),
           infer(data.normal((16, 3), 0.0, 1000.0))])


def dtype_cases(w, data):
    """bf16 and f16 inputs: representable values in, output in the dtype, variables in f32."""
    units = {"bfloat16": 2.0 ** -4, "float16": 2.0 ** -8}
    for dtype in ("bfloat16", "float16"):
        unit = units[dtype]
        for label, config, shape, axes in (
                ("fused_nhwc", {"axis": -1}, (4, 3, 3, 8), [3]),
                ("fused_nchw", {"axis": 1}, (4, 8, 3, 3), [1]),
                ("generic_rank2", {"axis": -1}, (16, 5), [1]),
                ("multi_axis_rank3", {"axis": [1, 2]}, (6, 2, 3), [1, 2])):
            channel_shape = [shape[a] for a in axes]
            centers = data.grid(channel_shape, -1, 1, 0.25)
            steps = [train(data.pairs(shape, axes, centers, unit)),
                     train(data.normal(shape, 0.5, 2.0, dtype)),
                     infer(data.normal(shape, 0.0, 1.0, dtype))]
            w.add("dtypes", f"{dtype}_{label}", f"{dtype} input and output",
                  dict(config, dtype=dtype, momentum=0.9), steps, input_dtype=dtype)
        w.add("dtypes", f"{dtype}_renorm", f"{dtype} with renorm (clipping active)",
              {"axis": -1, "dtype": dtype, "renorm": True, "momentum": 0.9,
               "renorm_clipping": {"rmax": 1.25, "dmax": 0.25}},
              [train(data.normal((8, 3), 1.0, 3.0, dtype)), train(data.normal((8, 3), 0, 1, dtype)),
               infer(data.normal((8, 3), 0.0, 1.0, dtype))], input_dtype=dtype)
        w.add("dtypes", f"{dtype}_virtual_batch", f"{dtype} with virtual batches",
              {"axis": -1, "dtype": dtype, "virtual_batch_size": 2, "momentum": 0.9},
              [train(data.normal((6, 2, 3), 1.0, 2.0, dtype)),
               infer(data.normal((6, 2, 3), 0.0, 1.0, dtype))], input_dtype=dtype)
        shape = (4, 2, 2, 3)
        w.add("dtypes", f"{dtype}_adjustment", f"{dtype} with a per-sample adjustment",
              {"axis": -1, "dtype": dtype, "momentum": 0.9},
              [train(data.normal(shape, 1.0, 2.0, dtype),
                     (data.grid((4, 1, 1, 3), 0.5, 1.5, 0.125),
                      data.grid((4, 1, 1, 3), -1, 1, 0.25))),
               infer(data.normal(shape, 0.0, 1.0, dtype))], input_dtype=dtype)
    w.add("dtypes", "float16_large_spread", "float16 with values up to ~±200",
          {"axis": -1, "dtype": "float16", "momentum": 0.5},
          [train(data.normal((8, 2, 2, 4), 10.0, 60.0, "float16")),
           infer(data.normal((8, 2, 2, 4), 10.0, 60.0, "float16"))], input_dtype="float16")


def empty_cases(w, data):
    """keel's decision (spec §6i): an empty batch gives an empty output and updates nothing."""
    w.add("empty", "empty_generic", "empty training and inference batches between normal ones",
          {"axis": -1, "momentum": 0.5},
          [train(data.normal((4, 3), 1.0, 1.0)), train(np.zeros((0, 3))), infer(np.zeros((0, 3))),
           infer(data.normal((4, 3)))])
    w.add("empty", "empty_first_fused", "the layer is built from an empty batch (fused path)",
          {"axis": -1, "momentum": 0.5},
          [train(np.zeros((0, 2, 2, 3))), train(data.normal((2, 2, 2, 3), 1.0, 1.0)),
           train(np.zeros((0, 2, 2, 3))), infer(data.normal((2, 2, 2, 3)))])
    w.add("empty", "empty_fused_nchw", "empty batches on the NCHW fused path",
          {"axis": 1, "momentum": 0.5},
          [train(data.normal((2, 3, 2, 2), 1.0, 1.0)), train(np.zeros((0, 3, 2, 2))),
           infer(np.zeros((0, 3, 2, 2)))])
    w.add("empty", "empty_renorm", "an empty batch moves no renorm statistic either",
          {"axis": -1, "renorm": True, "momentum": 0.5, "renorm_momentum": 0.5},
          [train(data.normal((4, 3), 1.0, 2.0)), train(np.zeros((0, 3))),
           train(data.normal((4, 3), 0.0, 1.0))])
    w.add("empty", "empty_multi_axis", "empty batch with multi-axis parameters",
          {"axis": [1, 2], "momentum": 0.5},
          [train(np.zeros((0, 2, 3))), train(data.normal((3, 2, 3), 1.0, 1.0)),
           infer(np.zeros((0, 2, 3)))])
    w.add("empty", "empty_bfloat16", "empty batch in bfloat16",
          {"axis": -1, "dtype": "bfloat16", "momentum": 0.5},
          [train(data.normal((3, 2, 2, 4), 1.0, 1.0, "bfloat16")), train(np.zeros((0, 2, 2, 4)))],
          input_dtype="bfloat16")


def renorm_cases(w, data):
    """Batch renormalization (spec §6c)."""
    # TF's testRenorm setting: shape (4, 3), gamma 2, beta 3, momentum 0.99, renorm_momentum 0.8,
    # rmin 0.9, rmax 1.1, dmax 0.1, five training steps then inference.
    xs = [data.uniform((4, 3), 0.0, 1.0) for _ in range(5)]
    base = {"axis": 1, "momentum": 0.99, "renorm": True, "renorm_momentum": 0.8,
            "epsilon": 1e-3,
            "gamma_initializer": {"class_name": "Constant", "config": {"value": 2.0}},
            "beta_initializer": {"class_name": "Constant", "config": {"value": 3.0}}}
    w.add("renorm", "renorm_tf_test_clipped", "TF testRenorm's configuration (clips bind)",
          dict(base, renorm_clipping={"rmax": 1.1, "rmin": 0.9, "dmax": 0.1}),
          [train(x) for x in xs] + [infer(data.uniform((4, 3), 0.0, 1.0))])
    w.add("renorm", "renorm_unclipped", "no renorm_clipping: r and d unbounded",
          dict(base, momentum=0.9), [train(x) for x in xs] + [infer(xs[0])])

    # Scales far from the renorm stddev and shifted means: rmax, rmin and dmax all bind in turn.
    shape = (8, 4)
    steps = [train(data.normal(shape, 3.0, 5.0)), train(data.normal(shape, -2.0, 0.1)),
             train(data.normal(shape, 0.0, 1.0)), train(data.normal(shape, 0.5, 4.0)),
             infer(data.normal(shape, 0.0, 2.0))]
    clip = {"rmin": 0.5, "rmax": 2.0, "dmax": 0.5}
    w.add("renorm", "renorm_clipping_active", "rmin, rmax and dmax each bind on some channel",
          {"axis": -1, "renorm": True, "renorm_clipping": clip, "momentum": 0.9,
           "renorm_momentum": 0.6}, steps)
    for key in ("rmin", "rmax", "dmax"):
        w.add("renorm", f"renorm_only_{key}", f"only {key}: the other bounds are absent",
              {"axis": -1, "renorm": True, "renorm_clipping": {key: clip[key]}, "momentum": 0.9,
               "renorm_momentum": 0.6}, steps)
    w.add("renorm", "renorm_rmin_equals_rmax", "rmin = rmax pins r",
          {"axis": -1, "renorm": True, "renorm_clipping": {"rmin": 1.5, "rmax": 1.5},
           "momentum": 0.9}, steps[:3])
    w.add("renorm", "renorm_stddev_floor",
          "renorm_stddev below sqrt(ε) is floored in r and d, the variable itself is not",
          {"axis": -1, "renorm": True, "momentum": 0.8, "renorm_momentum": 0.5, "epsilon": 0.01},
          [train(data.normal((6, 3), 0.5, 0.05)), train(data.normal((6, 3), 0.5, 0.05)),
           infer(data.normal((6, 3), 0.5, 0.05))],
          variables={"renorm_stddev": np.array([0.0, 0.05, 0.5]),
                     "renorm_mean": np.array([0.5, 0.25, -1.0]),
                     "moving_stddev": np.array([0.5, 1.0, 2.0]),
                     "moving_variance": np.array([0.25, 1.0, 4.0])})
    w.add("renorm", "renorm_nchw", "renorm on rank 4 axis 1 (never fused)",
          {"axis": 1, "renorm": True, "renorm_clipping": {"rmax": 1.5, "dmax": 1.0},
           "momentum": 0.9, "renorm_momentum": 0.7},
          [train(data.normal((3, 4, 2, 3), 1.0, 3.0)), train(data.normal((3, 4, 2, 3), 0.0, 0.5)),
           infer(data.normal((3, 4, 2, 3)))])
    w.add("renorm", "renorm_multi_axis", "renorm with multi-axis parameters",
          {"axis": [1, 2], "renorm": True, "renorm_clipping": {"rmin": 0.8, "dmax": 0.5},
           "momentum": 0.9, "renorm_momentum": 0.7},
          [train(data.normal((5, 2, 3), 1.0, 3.0)), train(data.normal((5, 2, 3), -1.0, 0.3)),
           infer(data.normal((5, 2, 3)))])
    w.add("renorm", "renorm_virtual_batch",
          "renorm with virtual batches: r and d from the group-averaged moments",
          {"axis": -1, "renorm": True, "virtual_batch_size": 3,
           "renorm_clipping": {"rmax": 1.5, "dmax": 0.5}, "momentum": 0.9,
           "renorm_momentum": 0.7},
          [train(data.normal((6, 2, 3), 1.0, 3.0)), train(data.normal((6, 2, 3), -0.5, 0.5)),
           infer(data.normal((6, 2, 3)))])
    w.add("renorm", "renorm_adjustment",
          "renorm with adjustment: ((x̂·r + d)·adj_scale + adj_bias)·γ + β",
          {"axis": -1, "renorm": True, "renorm_clipping": {"rmax": 1.5, "dmax": 0.5},
           "momentum": 0.9, "renorm_momentum": 0.7},
          [train(data.normal((4, 2, 3), 1.0, 3.0),
                 (data.grid((3,), 0.5, 1.5, 0.125), data.grid((3,), -0.5, 0.5, 0.125))),
           train(data.normal((4, 2, 3), 0.0, 0.5),
                 (data.grid((4, 1, 3), 0.5, 1.5, 0.125), data.grid((4, 1, 1), -0.5, 0.5, 0.125))),
           infer(data.normal((4, 2, 3)))],
          variables={"gamma": param(data, (3,), 0.5, 2.0), "beta": param(data, (3,), -1, 1)})
    w.add("renorm", "renorm_center_scale_off", "renorm without gamma and beta: y = x̂·r + d",
          {"axis": -1, "renorm": True, "center": False, "scale": False,
           "renorm_clipping": {"rmax": 1.25}, "momentum": 0.5, "renorm_momentum": 0.5},
          [train(data.normal((5, 3), 2.0, 2.0)), train(data.normal((5, 3), 0.0, 1.0)),
           infer(data.normal((5, 3)))])
    w.add("renorm", "renorm_momentum_0", "momentum and renorm_momentum 0",
          {"axis": -1, "renorm": True, "momentum": 0.0, "renorm_momentum": 0.0},
          [train(data.normal((5, 3), 2.0, 2.0)), train(data.normal((5, 3), 0.0, 1.0)),
           infer(data.normal((5, 3)))])


def virtual_batch_cases(w, data):
    """Ghost batches (spec §6d): strided grouping, mean of per-group moments, extra param dim."""
    # Samples 0-2 around -3, samples 3-5 around +3. TF reshapes to [vbs, B/vbs]: with vbs = 2 the
    # groups are {0, 3}, {1, 4}, {2, 5}, with vbs = 3 they are {0, 2, 4}, {1, 3, 5}; every strided
    # group mixes both halves, whereas contiguous groups ({0, 1}, ... or {0, 1, 2}, {3, 4, 5})
    # would be nearly homogeneous: outputs and moving variances differ by orders of magnitude.
    shape = (6, 4)
    first_half = data.normal((3, 4), -3.0, 0.5)
    second_half = data.normal((3, 4), 3.0, 2.0)
    x = np.concatenate([first_half, second_half])
    for vbs in (2, 3):
        w.add("virtual_batch", f"strided_grouping_vbs{vbs}",
              "B = 6: strided and contiguous grouping give different numbers",
              {"axis": -1, "virtual_batch_size": vbs, "momentum": 0.5},
              [train(x), train(data.normal(shape, 1.0, 1.0)), infer(data.normal(shape))])
    for vbs in (1, 6):
        w.add("virtual_batch", f"vbs{vbs}_rank2",
              "vbs = 1 (every sample its own batch: output = beta) or vbs = B (plain batch norm)",
              {"axis": -1, "virtual_batch_size": vbs, "momentum": 0.5},
              [train(x), infer(data.normal(shape))],
              variables={"beta": param(data, (1, 1, 4), -1.0, 1.0)})
    for vbs in (1, 2, 4):
        w.add("virtual_batch", f"vbs{vbs}_nhwc", "virtual batches on NHWC (never fused)",
              {"axis": -1, "virtual_batch_size": vbs, "momentum": 0.5},
              [train(data.normal((4, 2, 3, 3), 1.0, 2.0)), train(data.normal((4, 2, 3, 3))),
               infer(data.normal((4, 2, 3, 3)))])
    w.add("virtual_batch", "vbs2_nchw", "virtual batches on NCHW: param shape (1,1,C,1,1)",
          {"axis": 1, "virtual_batch_size": 2, "momentum": 0.5},
          [train(data.normal((6, 3, 2, 2), 1.0, 2.0)), infer(data.normal((6, 3, 2, 2)))],
          variables={"gamma": param(data, (1, 1, 3, 1, 1), 0.5, 2.0)})
    w.add("virtual_batch", "vbs_multi_axis", "multi-axis with virtual batches",
          {"axis": [1, 3], "virtual_batch_size": 2, "momentum": 0.5},
          [train(data.normal((4, 3, 2, 2), 1.0, 2.0)), train(data.normal((4, 3, 2, 2))),
           infer(data.normal((4, 3, 2, 2)))])
    w.add("virtual_batch", "vbs_rank3_axis1", "virtual batches on rank 3, axis 1",
          {"axis": 1, "virtual_batch_size": 3, "momentum": 0.5},
          [train(data.normal((6, 3, 4), 1.0, 2.0)), infer(data.normal((9, 3, 4)))])
    w.add("virtual_batch", "vbs_center_scale_off", "virtual batches without gamma and beta",
          {"axis": -1, "virtual_batch_size": 2, "center": False, "scale": False,
           "momentum": 0.5}, [train(data.normal((4, 3), 1.0, 2.0)), infer(data.normal((4, 3)))])
    w.add("virtual_batch", "vbs_batch_changes", "the batch size may change between calls",
          {"axis": -1, "virtual_batch_size": 2, "momentum": 0.5},
          [train(data.normal((4, 3), 1.0, 2.0)), train(data.normal((8, 3), -1.0, 1.0)),
           infer(data.normal((2, 3)))],
          variables={"moving_mean": param(data, (1, 1, 3), -1, 1)})
    for behavior in ("v1", "tf_keras"):
        w.add("virtual_batch", f"vbs_{behavior}", f"virtual batches under {behavior}",
              {"axis": -1, "virtual_batch_size": 2, "momentum": 0.5},
              [train(data.normal((4, 2, 3), 1.0, 2.0)), infer(data.normal((4, 2, 3)))],
              behavior=behavior)


def adjustment_cases(w, data):
    """adjustment (spec §6e): NumPy broadcasting, training only, composition with gamma/beta."""
    def scale_bias(scale_shape, bias_shape):
        return data.grid(scale_shape, 0.5, 1.5, 0.125), data.grid(bias_shape, -1, 1, 0.125)

    n, c = 3, 4
    for label, config, shape, scale_shape, bias_shape, gamma_shape in (
            ("nhwc_per_channel", {"axis": -1}, (n, 2, 2, c), (c,), (c,), (c,)),
            ("nhwc_per_sample", {"axis": -1}, (n, 2, 2, c), (n, 1, 1, c), (n, 1, 1, c), (c,)),
            ("nhwc_scalar_and_channel", {"axis": -1}, (n, 2, 2, c), (), (1, 1, 1, c), (c,)),
            ("nchw_per_channel", {"axis": 1}, (n, c, 2, 2), (1, c, 1, 1), (1, c, 1, 1), (c,)),
            ("nchw_per_sample", {"axis": 1}, (n, c, 2, 2), (n, c, 1, 1), (n, 1, 1, 1), (c,)),
            ("rank2_per_channel", {"axis": -1}, (n, c), (c,), (c,), (c,)),
            ("rank2_per_sample", {"axis": -1}, (n, c), (n, 1), (n, 1), (c,)),
            ("rank2_full", {"axis": -1}, (n, c), (n, c), (n, c), (c,)),
            ("rank3_axis1", {"axis": 1}, (n, c, 2), (1, c, 1), (n, c, 2), (c,)),
            ("multi_axis", {"axis": [1, 3]}, (n, 2, 2, c), (n, 1, 1, c), (1, 2, 1, 1),
             (1, 2, 1, c))):
        w.add("adjustment", f"adjustment_{label}",
              f"adjustment scale {scale_shape}, bias {bias_shape}; inference ignores it",
              dict(config, momentum=0.5),
              [train(data.normal(shape, 1.0, 2.0), scale_bias(scale_shape, bias_shape)),
               train(data.normal(shape, -0.5, 1.0), scale_bias(scale_shape, bias_shape)),
               infer(data.normal(shape))],
              variables={"gamma": param(data, gamma_shape, 0.5, 2.0),
                         "beta": param(data, gamma_shape, -1.0, 1.0)})
    for center, scale in ((False, True), (True, False), (False, False)):
        w.add("adjustment", f"adjustment_center{int(center)}_scale{int(scale)}",
              "adjustment without gamma and/or beta",
              {"axis": -1, "center": center, "scale": scale, "momentum": 0.5},
              [train(data.normal((n, c), 1.0, 2.0), scale_bias((c,), (c,))),
               infer(data.normal((n, c)))])
    w.add("adjustment", "adjustment_v1_trainable_false",
          "v1 frozen layer still trains in batch mode, so the adjustment applies",
          {"axis": -1, "trainable": False, "momentum": 0.5},
          [train(data.normal((n, c), 1.0, 2.0), scale_bias((c,), (c,)))], behavior="v1")


def error_cases(w, data):
    """Every validation error, at TF's stage (construction, build, call)."""
    x2 = data.normal((4, 3))
    x4 = data.normal((2, 3, 2, 4))

    def construction(name, config, steps=None, behavior="v2"):
        w.add("errors", f"construction_{name}", "invalid configuration", config,
              steps or [train(x2)], behavior=behavior, error_stage="construction")

    construction("axis_string", {"axis": "1"})
    construction("axis_float", {"axis": 1.5})
    construction("axis_list_with_string", {"axis": [1, "a"]})
    construction("fused_true_renorm", {"axis": -1, "fused": True, "renorm": True}, [train(x4)])
    construction("fused_true_renorm_tf_keras", {"axis": -1, "fused": True, "renorm": True},
                 [train(x4)], behavior="tf_keras")
    construction("fused_true_axis2", {"axis": 2, "fused": True}, [train(x4)])
    construction("fused_true_multi_axis", {"axis": [1, 3], "fused": True}, [train(x4)])
    construction("fused_true_virtual_batch", {"axis": -1, "fused": True,
                                              "virtual_batch_size": 2}, [train(x4)])
    construction("fused_true_adjustment", {"axis": -1, "fused": True},
                 [train(x4, (np.ones(4), np.zeros(4)))])
    construction("renorm_clipping_unknown_key",
                 {"axis": -1, "renorm": True, "renorm_clipping": {"rmax": 3.0, "rmix": 0.5}})
    construction("renorm_rmin_above_rmax",
                 {"axis": -1, "renorm": True, "renorm_clipping": {"rmin": 2.0, "rmax": 1.0}})
    construction("epsilon_negative", {"axis": -1, "epsilon": -1e-3})
    construction("momentum_above_1", {"axis": -1, "momentum": 1.5})
    construction("momentum_negative", {"axis": -1, "momentum": -0.1})
    construction("unknown_initializer", {"axis": -1, "gamma_initializer": "no_such_initializer"})
    construction("unknown_regularizer", {"axis": -1, "beta_regularizer": "no_such_regularizer"})
    construction("unknown_constraint", {"axis": -1, "gamma_constraint": "no_such_constraint"})
    construction("unknown_config_key", {"axis": -1, "virtual_batch": 2})

    def build(name, config, steps, behavior="v2", variables=None):
        w.add("errors", f"build_{name}", "rejected against the first input's shape", config,
              steps, behavior=behavior, variables=variables, error_stage="build")

    build("axis_out_of_range", {"axis": 2}, [train(x2)])
    build("axis_negative_out_of_range", {"axis": -3}, [train(x2)])
    build("axis_duplicate_after_resolution", {"axis": [1, -1]}, [train(x2)])
    build("axis_duplicate", {"axis": [1, 1]}, [train(data.normal((2, 3, 4)))])
    build("axis_list_out_of_range", {"axis": [1, 4]}, [train(x4)])
    build("virtual_batch_size_zero", {"axis": -1, "virtual_batch_size": 0}, [train(x2)])
    build("virtual_batch_size_negative", {"axis": -1, "virtual_batch_size": -2}, [train(x2)])
    build("virtual_batch_axis_0", {"axis": 0, "virtual_batch_size": 2}, [train(x2)])
    build("virtual_batch_axis_resolving_to_0", {"axis": [-2, 1], "virtual_batch_size": 2},
          [train(x2)])
    build("virtual_batch_with_adjustment", {"axis": -1, "virtual_batch_size": 2},
          [train(x2, (np.ones(3), np.zeros(3)))])
    for rank, shape in ((2, (4, 3)), (3, (2, 3, 4)), (5, (2, 3, 2, 2, 4))):
        build(f"fused_true_rank{rank}", {"axis": -1, "fused": True},
              [train(data.normal(shape))])
    build("fused_true_rank3_tf_keras", {"axis": -1, "fused": True},
          [train(data.normal((2, 3, 4)))], behavior="tf_keras")
    build("tf_keras_axis_m4_rank4", {"axis": -4}, [train(x4)], behavior="tf_keras")
    build("rank0", {"axis": -1}, [train(np.array(1.5))])
    build("variable_wrong_shape", {"axis": -1}, [train(x2)], variables={"gamma": np.ones(4)})
    build("variable_vbs_shape_without_extra_dim", {"axis": -1, "virtual_batch_size": 2},
          [train(x2)], variables={"moving_mean": np.zeros(3)})
    build("variable_unknown", {"axis": -1}, [train(x2)], variables={"moving_stddev": np.ones(3)})

    def call(name, config, steps, behavior="v2"):
        w.add("errors", f"call_{name}", "rejected by a call after a successful build", config,
              steps, behavior=behavior, error_stage="call")

    call("rank_change", {"axis": -1}, [train(x2), train(data.normal((4, 2, 3)))])
    call("rank_change_inference", {"axis": -1}, [train(x2), infer(data.normal((4, 2, 3)))])
    call("axis_size_change", {"axis": -1}, [train(x2), train(data.normal((4, 5)))])
    call("axis_size_change_fused", {"axis": -1}, [train(x4), infer(data.normal((2, 3, 2, 5)))])
    call("multi_axis_size_change", {"axis": [1, 2]},
         [train(data.normal((2, 3, 4))), train(data.normal((2, 3, 5)))])
    for behavior in ("v2", "v1", "tf_keras"):
        call(f"virtual_batch_indivisible_training_{behavior}",
             {"axis": -1, "virtual_batch_size": 4}, [train(data.normal((6, 3)))], behavior)
    for behavior in ("v2", "v1"):
        call(f"virtual_batch_indivisible_inference_{behavior}",
             {"axis": -1, "virtual_batch_size": 2},
             [train(data.normal((4, 3))), infer(data.normal((5, 3)))], behavior)
    call("virtual_batch_indivisible_trainable_false_v2",
         {"axis": -1, "virtual_batch_size": 2, "trainable": False},
         [infer(data.normal((4, 3))), train(data.normal((3, 3)))])
    call("adjustment_missing_in_training", {"axis": -1},
         [train(x2, (np.ones(3), np.zeros(3))), train(x2)])


GROUPS = {
    "axes": axes_cases, "center_scale": center_scale_cases, "fused_generic": fused_generic_cases,
    "behavior": behavior_cases, "numerics": numerics_cases, "dtypes": dtype_cases,
    "empty": empty_cases, "renorm": renorm_cases, "virtual_batch": virtual_batch_cases,
    "adjustment": adjustment_cases, "errors": error_cases,
}


def generate(out):
    """(Re)creates `out` with every case; returns the number of cases per group."""
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    writer = CaseWriter(out)
    for index, (group, make) in enumerate(GROUPS.items()):
        make(writer, Data(SEED + index))  # one stream per group: adding a case moves no other group
    with open(os.path.join(out, "groups.json"), "w") as handle:
        json.dump(writer.counts, handle, indent=1)
    return writer.counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to (re)create with the cases")
    arguments = parser.parse_args()
    counts = generate(arguments.out)
    print(f"wrote {sum(counts.values())} cases to {arguments.out}: "
          + ", ".join(f"{group} {count}" for group, count in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
