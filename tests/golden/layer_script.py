"""Reads a `keel layer-run` SCRIPT.json the way issue 4's "Conformance runner" section defines it,
and drives the NumPy reference through it.

Shared by make_cases.py (which writes the expected results) and check_layer_run.py (which
re-evaluates each step's output from the variables keel actually held before that step).
"""

import json
import os
import sys

try:
    import numpy as np
except ImportError:  # numpy is a declared dependency of the golden tests: fail, don't skip.
    sys.exit("the golden tests need numpy (Debian: python3-numpy); run them with /usr/bin/python3")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))

import batch_normalization_reference as ref  # noqa: E402


class Script:
    """A parsed SCRIPT.json with its arrays loaded and rounded to the input dtype."""

    def __init__(self, path):
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))
        with open(path) as handle:
            self.text = json.load(handle)
        layer = self.text["layer"]
        if layer.get("class_name") != "BatchNormalization":
            raise ValueError(f"{path}: unsupported class {layer.get('class_name')!r}")
        self.config = layer.get("config", {})
        self.behavior = self.text.get("behavior", "v2")
        self.input_dtype = self.text.get("input_dtype", "float32")
        self.variables = {name: self._load(file, "float32")
                          for name, file in self.text.get("variables", {}).items()}
        self.steps = []
        for step in self.text["steps"]:
            adjustment = step.get("adjustment")
            if adjustment is not None:
                # The callable returns tensors of the layer's dtype; keel composes them in f32.
                adjustment = (self._load(adjustment["scale"], self.input_dtype),
                              self._load(adjustment["bias"], self.input_dtype))
            self.steps.append({"x": self._load(step["input"], self.input_dtype),
                               "training": bool(step.get("training") or False),
                               "adjustment": adjustment})
        self.has_adjustment = any(step.get("adjustment") is not None
                                  for step in self.text["steps"])

    def _load(self, file, dtype):
        return ref.round_to_dtype(np.load(os.path.join(self.base, file)), dtype)

    def output_dtype(self):
        """Outputs are in the layer's compute dtype: the config's dtype when given (issue 4)."""
        return self.config.get("dtype") or "float32"

    def new_layer(self, layer_class=ref.BatchNormalizationReference):
        """Constructs and builds the reference layer as the runner does (build errors included)."""
        layer = layer_class(self.config, self.behavior, self.has_adjustment)
        layer.build(self.steps[0]["x"].shape)
        layer.set_variables(self.variables)
        return layer


def run_free(script, layer_class=ref.BatchNormalizationReference):
    """Runs every step from the initial variables: [(StepResult, variables after)], or raises
    ref.LayerError at the first failing stage (construction, build or a call)."""
    layer = script.new_layer(layer_class)
    layer.state()  # every variable must be known (random initializers need "variables")
    results = []
    for index, step in enumerate(script.steps):
        try:
            result = layer.call(step["x"], step["training"], step["adjustment"])
        except ref.LayerError as error:
            error.step = index
            raise
        results.append((result, layer.state()))
    return layer, results
