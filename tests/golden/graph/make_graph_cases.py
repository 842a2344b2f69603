#!/usr/bin/python3
"""Generates the whole-graph golden cases for `keel graph-run` (issue 6).

Each case is a directory holding
  model.json                      a Keras functional model as model.to_json() writes it, in one of
                                  three spellings: TF 1.15 ("Model", batch_input_shape, nested-list
                                  inbound_nodes), tf_keras 2.13 ("Functional", module,
                                  registered_name, build_config) or Keras 3 (batch_shape,
                                  {"args", "kwargs"} inbound nodes, DTypePolicy objects)
  weights/<layer>/<variable>.npy  float32, Keras names and layouts (Conv2D HWIO, Dense (in, out))
  input<i>.npy                    float32 model inputs, in input_layers order
  expected.npz                    from reference.py in float64: for each output layer <name> its
                                  exact value and "<name>.err", the error bound of a float32
                                  engine; for training cases also "variables/<layer>/<variable>"
                                  (+ ".err"), the moving statistics after the run
  case.json                       what the checker runs and expects

Values are drawn from a fixed seed, rounded to float32 before the reference sees them; moving
statistics are set near each BatchNormalization input's own batch statistics so activations stay
in a useful range (ReLUs neither dead nor all-positive, ReLU(6) clipping some values).
Usage: make_graph_cases.py --out DIR
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np

import reference as ref

SEED = 20240611
SPELLINGS = ("tf115", "keras213", "keras3")
# A moving variance below TF's fused epsilon floor (1.001e-5): with epsilon 1e-7 or 1e-6,
# sqrt(variance + epsilon) differs by a factor 1.5 to 2.4 between the floor and no floor.
SMALL_VARIANCE = 2e-6


def f32(values):
    return np.asarray(values, dtype=np.float32).astype(np.float64)


class Ref:
    """The tensor produced by application `node` of layer `layer` (Keras' keras_history)."""

    def __init__(self, layer, node):
        self.layer = layer
        self.node = node


class Layer:
    def __init__(self, class_name, name, args, weights):
        self.class_name = class_name
        self.name = name
        self.args = args
        self.weights = weights
        self.nodes = []  # per application: the list of input Refs


class Graph:
    """A Keras functional model being built; layers run on the sample inputs as they are applied
    (inference mode), so that weights can be chosen from the data they will see."""

    def __init__(self, name, spelling):
        assert spelling in SPELLINGS
        self.name = name
        self.spelling = spelling
        self.layers = {}
        self.applications = []  # (layer name, node index) in topological order
        self.inputs = []
        self.outputs = []
        self.values = {}
        self.shapes = {}
        self.samples = []

    def input(self, name, sample):
        layer = Layer("InputLayer", name, {"shape": list(sample.shape[1:])}, {})
        self.layers[name] = layer
        self.inputs.append(name)
        self.samples.append(f32(sample))
        self.values[(name, 0)] = ref.T(self.samples[-1])
        self.shapes[(name, 0)] = sample.shape
        return Ref(name, 0)

    def value(self, tensor):
        return self.values[(tensor.layer, tensor.node)].value

    def apply(self, class_name, name, inputs, weights=None, **args):
        if name in self.layers:
            raise ValueError(f"duplicate layer {name}")
        layer = Layer(class_name, name, args,
                      {key: f32(value) for key, value in (weights or {}).items()})
        self.layers[name] = layer
        return self.reuse(name, inputs)

    def reuse(self, name, inputs):
        """Applies an existing layer again (shared weights): a new inbound node."""
        layer = self.layers[name]
        inputs = inputs if isinstance(inputs, list) else [inputs]
        layer.nodes.append(inputs)
        node = len(layer.nodes) - 1
        self.applications.append((name, node))
        tensors = [self.values[(t.layer, t.node)] for t in inputs]
        self.values[(name, node)] = evaluate_layer(layer, tensors, False, {})
        self.shapes[(name, node)] = self.values[(name, node)].shape
        return Ref(name, node)

    def output(self, tensor):
        self.outputs.append(tensor)


def evaluate_layer(layer, tensors, training, updates):
    """One application of a layer in the reference; training-mode BN records its updates."""
    a, w = layer.args, layer.weights
    x = tensors[0]
    kind = layer.class_name
    if kind == "Conv2D":
        return ref.conv2d(x, w["kernel"], w.get("bias"), a.get("strides", 1),
                          a.get("padding", "valid"), a.get("dilation_rate", 1),
                          a.get("groups", 1), a.get("data_format", "channels_last"),
                          a.get("activation"))
    if kind == "DepthwiseConv2D":
        return ref.depthwise_conv2d(x, w["depthwise_kernel"], w.get("bias"),
                                    a.get("strides", 1), a.get("padding", "valid"),
                                    a.get("dilation_rate", 1),
                                    a.get("data_format", "channels_last"), a.get("activation"))
    if kind == "Dense":
        return ref.dense(x, w["kernel"], w.get("bias"), a.get("activation"))
    if kind == "BatchNormalization":
        arguments = dict(gamma_=w["gamma"], beta=w["beta"], moving_mean=w["moving_mean"],
                         moving_variance=w["moving_variance"], axis=a.get("axis", -1),
                         epsilon=a.get("epsilon", 1e-3))
        if not training:
            return ref.batch_normalization_inference(x, **arguments)
        out, moving = ref.batch_normalization_training(x, momentum=a.get("momentum", 0.99),
                                                       **arguments)
        updates[layer.name] = moving
        return out
    if kind == "Activation":
        return ref.activation(a["activation"], x)
    if kind == "ReLU":
        return ref.relu_layer(x, a.get("max_value"), a.get("negative_slope", 0.0),
                              a.get("threshold", 0.0))
    if kind == "Softmax":
        return ref.softmax(x, a.get("axis", -1))
    if kind == "Add":
        return ref.add(tensors)
    if kind == "Multiply":
        return ref.multiply(tensors)
    if kind == "Concatenate":
        return ref.concatenate(tensors, a.get("axis", -1))
    if kind == "MaxPooling2D":
        return ref.max_pooling2d(x, a.get("pool_size", 2), a.get("strides"),
                                 a.get("padding", "valid"), a.get("data_format", "channels_last"))
    if kind == "AveragePooling2D":
        return ref.average_pooling2d(x, a.get("pool_size", 2), a.get("strides"),
                                     a.get("padding", "valid"),
                                     a.get("data_format", "channels_last"))
    if kind == "GlobalAveragePooling2D":
        return ref.global_average_pooling2d(x, a.get("data_format", "channels_last"),
                                            a.get("keepdims", False))
    if kind == "Flatten":
        return ref.flatten(x)
    if kind == "Reshape":
        return ref.reshape(x, a["target_shape"])
    raise ValueError(f"no reference for {kind}")


def evaluate(graph, training):
    """The whole graph on its sample inputs: (outputs, BN updates by layer name)."""
    values = {(name, 0): ref.T(sample) for name, sample in zip(graph.inputs, graph.samples)}
    updates = {}
    for name, node in graph.applications:
        layer = graph.layers[name]
        tensors = [values[(t.layer, t.node)] for t in layer.nodes[node]]
        values[(name, node)] = evaluate_layer(layer, tensors, training, updates)
    return [values[(t.layer, t.node)] for t in graph.outputs], updates


# --- Keras JSON in three spellings ----------------------------------------------------------

def initializer(spelling, class_name, config=None):
    config = dict(config or {})
    if spelling == "tf115":
        config["dtype"] = "float32"
        return {"class_name": class_name, "config": config}
    return {"module": "keras.initializers", "class_name": class_name, "config": config,
            "registered_name": None}


def dtype_entry(spelling):
    if spelling == "keras3":
        return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
                "registered_name": None}
    return "float32"


def pair(value):
    return list(value) if isinstance(value, (list, tuple)) else [value, value]


def keras_config(graph, layer):
    """The layer's "config" as that Keras generation's get_config() writes it."""
    spelling, a = graph.spelling, layer.args
    if layer.class_name == "InputLayer":
        shape = [None] + a["shape"]
        if spelling == "keras3":
            return {"batch_shape": shape, "dtype": "float32", "sparse": False,
                    "name": layer.name}
        config = {"batch_input_shape": shape, "dtype": "float32", "sparse": False}
        if spelling == "keras213":
            config["ragged"] = False
        config["name"] = layer.name
        return config
    config = {"name": layer.name, "trainable": True, "dtype": dtype_entry(spelling)}
    kind = layer.class_name
    glorot = initializer(spelling, "GlorotUniform", {"seed": None})
    zeros = initializer(spelling, "Zeros")
    ones = initializer(spelling, "Ones")
    if kind in ("Conv2D", "DepthwiseConv2D"):
        if kind == "Conv2D":
            config["filters"] = a["filters"]
        config.update({"kernel_size": pair(a["kernel_size"]), "strides": pair(a.get("strides", 1)),
                       "padding": a.get("padding", "valid"),
                       "data_format": a.get("data_format", "channels_last"),
                       "dilation_rate": pair(a.get("dilation_rate", 1))})
        if spelling != "tf115" and not (kind == "DepthwiseConv2D" and spelling == "keras3"):
            config["groups"] = a.get("groups", 1)
        config.update({"activation": a.get("activation") or "linear",
                       "use_bias": "bias" in layer.weights})
        prefix = "kernel" if kind == "Conv2D" else "depthwise"
        if kind == "DepthwiseConv2D":
            config["depth_multiplier"] = a.get("depth_multiplier", 1)
        config.update({f"{prefix}_initializer": glorot, "bias_initializer": zeros,
                       f"{prefix}_regularizer": None, "bias_regularizer": None,
                       "activity_regularizer": None, f"{prefix}_constraint": None,
                       "bias_constraint": None})
    elif kind == "Dense":
        config.update({"units": a["units"], "activation": a.get("activation") or "linear",
                       "use_bias": "bias" in layer.weights, "kernel_initializer": glorot,
                       "bias_initializer": zeros, "kernel_regularizer": None,
                       "bias_regularizer": None, "activity_regularizer": None,
                       "kernel_constraint": None, "bias_constraint": None})
        if spelling == "keras3":
            config["lora_rank"] = None
    elif kind == "BatchNormalization":
        axis = a.get("axis", -1)
        rank = len(graph.shapes[(layer.nodes[0][0].layer, layer.nodes[0][0].node)])
        # TF's build() turns the axis into a list of non-negative axes before to_json().
        config["axis"] = axis if spelling == "keras3" else [axis % rank]
        config.update({"momentum": a.get("momentum", 0.99), "epsilon": a.get("epsilon", 1e-3),
                       "center": True, "scale": True, "beta_initializer": zeros,
                       "gamma_initializer": ones, "moving_mean_initializer": zeros,
                       "moving_variance_initializer": ones, "beta_regularizer": None,
                       "gamma_regularizer": None, "beta_constraint": None,
                       "gamma_constraint": None})
        if spelling == "keras3":
            config["synchronized"] = False
    elif kind == "Activation":
        config["activation"] = a["activation"]
    elif kind == "ReLU":
        config.update({"max_value": a.get("max_value"),
                       "negative_slope": float(a.get("negative_slope", 0.0)),
                       "threshold": float(a.get("threshold", 0.0))})
    elif kind in ("Softmax", "Concatenate"):
        config["axis"] = a.get("axis", -1)
    elif kind in ("MaxPooling2D", "AveragePooling2D"):
        pool = a.get("pool_size", 2)
        config.update({"pool_size": pair(pool), "padding": a.get("padding", "valid"),
                       "strides": pair(a.get("strides") or pool),
                       "data_format": a.get("data_format", "channels_last")})
    elif kind == "GlobalAveragePooling2D":
        config["data_format"] = a.get("data_format", "channels_last")
        if spelling != "tf115":  # keepdims arrived in TF 2.6
            config["keepdims"] = a.get("keepdims", False)
        elif a.get("keepdims", False):
            raise ValueError("TF 1.15 has no keepdims")
    elif kind == "Flatten":
        config["data_format"] = "channels_last"
    elif kind == "Reshape":
        config["target_shape"] = list(a["target_shape"])
    elif kind not in ("Add", "Multiply"):
        raise ValueError(f"no config writer for {kind}")
    return config


def keras_tensor(graph, tensor):
    shape = [None] + list(graph.shapes[(tensor.layer, tensor.node)][1:])
    return {"class_name": "__keras_tensor__",
            "config": {"shape": shape, "dtype": "float32",
                       "keras_history": [tensor.layer, tensor.node, 0]}}


MERGING = ("Add", "Multiply", "Concatenate")


def inbound_nodes(graph, layer):
    nodes = []
    for inputs in layer.nodes:
        if graph.spelling == "keras3":
            tensors = [keras_tensor(graph, t) for t in inputs]
            kwargs = {"mask": None} if layer.class_name in ("BatchNormalization",
                                                            "Softmax") else {}
            args = [tensors] if layer.class_name in MERGING else tensors
            nodes.append({"args": args, "kwargs": kwargs})
        else:
            nodes.append([[t.layer, t.node, 0, {}] for t in inputs])
    return nodes


def model_json(graph):
    spelling = graph.spelling
    layers = []
    for layer in graph.layers.values():
        entry = {"class_name": layer.class_name, "config": keras_config(graph, layer),
                 "name": layer.name, "inbound_nodes": inbound_nodes(graph, layer)}
        if spelling != "tf115":
            entry["module"] = "keras.layers"
            entry["registered_name"] = None
            if layer.class_name != "InputLayer":
                shapes = [[None] + list(graph.shapes[(t.layer, t.node)][1:])
                          for t in layer.nodes[0]]
                entry["build_config"] = {"input_shape": shapes if len(shapes) > 1
                                         else shapes[0]}
        layers.append(entry)
    config = {"name": graph.name, "layers": layers,
              "input_layers": [[name, 0, 0] for name in graph.inputs],
              "output_layers": [[t.layer, t.node, 0] for t in graph.outputs]}
    if spelling == "tf115":
        return {"class_name": "Model", "config": config, "keras_version": "2.2.4-tf",
                "backend": "tensorflow"}
    config = {"name": graph.name, "trainable": True, **config}
    if spelling == "keras213":
        return {"class_name": "Functional", "config": config, "keras_version": "2.13.1",
                "backend": "tensorflow"}
    return {"module": "keras.src.models.functional", "class_name": "Functional",
            "config": config, "registered_name": "Functional"}


# --- weights --------------------------------------------------------------------------------

class Data:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def normal(self, shape, scale=1.0, loc=0.0):
        return f32(loc + scale * self.rng.standard_normal(shape))

    def uniform(self, shape, low, high):
        return f32(self.rng.uniform(low, high, shape))

    def kernel(self, shape, fan_in, bias=None):
        """He-scaled weights (keeps activations O(1) through the graph) and an optional bias."""
        weights = {"kernel": self.normal(shape, np.sqrt(2.0 / fan_in))}
        if bias is not None:
            weights["bias"] = self.normal((bias,), 0.2)
        return weights

    def batch_norm(self, graph, tensor, axis, small_variance_channel=None):
        """gamma, beta and moving statistics near the batch statistics of `tensor`; one channel
        may get a moving variance close to epsilon, where the fused epsilon floor shows."""
        values = graph.value(tensor)
        moved = np.moveaxis(values, axis, -1).reshape(-1, values.shape[axis])
        channels = moved.shape[1]
        mean = moved.mean(axis=0) + self.normal((channels,), 0.1) * moved.std(axis=0)
        # A floor keeps nearly constant channels (a ReLU unit dead on most of a small batch)
        # from amplifying rounding errors by 1/sqrt(variance).
        spread = moved.var(axis=0) + 0.05 * (moved ** 2).mean(axis=0) + 0.01
        variance = spread * self.uniform((channels,), 0.7, 1.4)
        gamma = self.uniform((channels,), 0.5, 2.0) * self.rng.choice([-1, 1], channels)
        if small_variance_channel is not None:
            # gamma shrinks with the variance so that the channel's output stays O(1) while
            # epsilon remains a visible part of variance + epsilon.
            channel = small_variance_channel
            gamma[channel] = f32(gamma[channel] * np.sqrt(SMALL_VARIANCE / variance[channel]))
            variance[channel] = SMALL_VARIANCE
        return {"gamma": gamma, "beta": self.normal((channels,), 0.3), "moving_mean": mean,
                "moving_variance": variance}


# --- cases ----------------------------------------------------------------------------------

def conv(graph, data, name, x, filters, kernel_size, bias=True, groups=1, **args):
    channels_first = args.get("data_format") == "channels_first"
    channels = graph.value(x).shape[1 if channels_first else -1]
    shape = (kernel_size, kernel_size, channels // groups, filters)
    weights = data.kernel(shape, kernel_size * kernel_size * channels // groups,
                          filters if bias else None)
    return graph.apply("Conv2D", name, x, weights, filters=filters, kernel_size=kernel_size,
                       groups=groups, **args)


def batch_norm(graph, data, name, x, axis=-1, small_variance_channel=None, **args):
    weights = data.batch_norm(graph, x, axis, small_variance_channel)
    return graph.apply("BatchNormalization", name, x, weights, axis=axis, **args)


def dense(graph, data, name, x, units, bias=True, **args):
    fan_in = graph.value(x).shape[-1]
    weights = data.kernel((fan_in, units), fan_in, units if bias else None)
    return graph.apply("Dense", name, x, weights, units=units, **args)


def resnet_block(data, spelling="keras213"):
    g = Graph("resnet_block", spelling)
    x = g.input("image", data.normal((2, 8, 8, 8)))
    h = conv(g, data, "conv1", x, 8, 3, bias=False, padding="same")
    h = batch_norm(g, data, "bn1", h)
    h = g.apply("Activation", "relu1", h, activation="relu")
    h = conv(g, data, "conv2", h, 8, 3, padding="same")
    h = batch_norm(g, data, "bn2", h)
    h = g.apply("Add", "residual", [h, x])
    h = g.apply("ReLU", "relu2", h)
    h = g.apply("GlobalAveragePooling2D", "pool", h)
    h = dense(g, data, "logits", h, 10)
    g.output(g.apply("Softmax", "probabilities", h))
    return g


def inception_block(data):
    """Branches of stride 2 on an even 8×8 input: every 'same' window has the TF split with the
    odd padding pixel at the end, and AveragePooling2D's edge windows average fewer pixels."""
    g = Graph("inception_block", "keras3")
    x = g.input("image", data.normal((2, 8, 8, 6)))
    b1 = conv(g, data, "b1_conv", x, 4, 1, strides=2, activation="relu")
    b2 = conv(g, data, "b2_reduce", x, 4, 1, activation="relu")
    b2 = conv(g, data, "b2_conv", b2, 6, 3, strides=2, padding="same", activation="relu")
    b3 = g.apply("MaxPooling2D", "b3_pool", x, pool_size=3, strides=2, padding="same")
    b3 = conv(g, data, "b3_conv", b3, 4, 1)
    b4 = g.apply("AveragePooling2D", "b4_pool", x, pool_size=3, strides=2, padding="same")
    b5 = conv(g, data, "b5_conv", x, 4, 3, padding="same", dilation_rate=2)
    b5 = g.apply("MaxPooling2D", "b5_pool", b5, pool_size=2)
    h = g.apply("Concatenate", "mix", [b1, b2, b3, b4, b5], axis=-1)
    g.output(conv(g, data, "mix_conv", h, 8, 3, groups=4, padding="same", activation="swish"))
    return g


def mobilenet_block(data):
    g = Graph("mobilenet_block", "tf115")
    x = g.input("image", data.normal((2, 10, 10, 8)))
    h = conv(g, data, "expand", x, 16, 1, bias=False)
    h = batch_norm(g, data, "expand_bn", h)
    h = g.apply("ReLU", "expand_relu", h, max_value=6.0)
    weights = {"depthwise_kernel": data.normal((3, 3, 16, 2), np.sqrt(2.0 / 9))}
    h = g.apply("DepthwiseConv2D", "depthwise", h, weights, kernel_size=3, strides=2,
                padding="same", depth_multiplier=2)
    # epsilon 1e-7 is below the fused floor: TF normalises with 1.001e-5, visible on the channel
    # whose moving variance is SMALL_VARIANCE.
    h = batch_norm(g, data, "depthwise_bn", h, epsilon=1e-7, small_variance_channel=5)
    h = g.apply("ReLU", "depthwise_relu", h, max_value=6.0)
    h = conv(g, data, "project", h, 8, 1, bias=False)
    g.output(batch_norm(g, data, "project_bn", h))
    return g


def nchw_block(data):
    g = Graph("nchw_block", "keras213")
    x = g.input("image", data.normal((2, 4, 10, 10)))
    h = conv(g, data, "conv1", x, 6, 3, strides=2, padding="same", data_format="channels_first")
    h = batch_norm(g, data, "bn1", h, axis=1, epsilon=1e-6, small_variance_channel=2)
    h = g.apply("Activation", "relu1", h, activation="relu")
    h = g.apply("MaxPooling2D", "pool1", h, pool_size=2, data_format="channels_first")
    h = conv(g, data, "conv2", h, 4, 3, padding="same", dilation_rate=2,
             data_format="channels_first", activation="tanh")
    g.output(g.apply("AveragePooling2D", "pool2", h, pool_size=2, strides=1, padding="same",
                     data_format="channels_first"))
    return g


def mlp(data):
    """Two inputs, two outputs; Dense on rank-3 input; a non-fused (rank 2) BatchNormalization
    whose epsilon is below the fused floor, which must therefore not apply."""
    g = Graph("mlp", "keras3")
    x = g.input("features", data.normal((8, 4, 6)))
    z = g.input("gate", data.uniform((8, 16), -1.0, 1.0))
    h = g.apply("Flatten", "flatten", x)
    h = dense(g, data, "hidden", h, 16, activation="relu")
    h = batch_norm(g, data, "hidden_bn", h, epsilon=1e-7, small_variance_channel=3)
    a = dense(g, data, "branch_sigmoid", h, 16, activation="sigmoid")
    b = dense(g, data, "branch_tanh", h, 16, activation="tanh")
    h = g.apply("Multiply", "gated", [a, z])
    h = g.apply("Add", "merged", [h, b])
    h = g.apply("Reshape", "tokens", h, target_shape=(4, 4))
    h = dense(g, data, "token_dense", h, 5, activation="gelu")
    t = g.apply("ReLU", "token_relu", h, negative_slope=0.1, threshold=0.25)
    before = g.values[(h.layer, h.node)]
    if np.any(np.abs(before.value - 0.25) <= 2.0 * before.err):
        # Either side of the jump is right within rounding; such a draw tests nothing.
        raise ValueError("a ReLU input lies at its threshold")
    g.output(t)
    h = g.apply("Flatten", "flatten_tokens", t)
    h = dense(g, data, "head", h, 6, activation="swish")
    g.output(g.apply("Activation", "probabilities", h, activation="softmax"))
    return g


def draw(build, data, attempts=8):
    """build(data), drawing again (deterministically) when the data falls on a discontinuity."""
    for _ in range(attempts):
        try:
            return build(data)
        except ValueError:
            continue
    raise AssertionError(f"{build.__name__}: no usable draw in {attempts} attempts")


def shared_layer(data, spelling):
    """One Conv2D applied twice (inbound node 1 refers to its second application); the second
    application feeds a BatchNormalization that an optimizer may fold only into a copy."""
    g = Graph(f"shared_{spelling}", spelling)
    x = g.input("image", data.normal((2, 6, 6, 4)))
    first = conv(g, data, "shared_conv", x, 4, 3, padding="same")
    h = g.apply("ReLU", "relu", first)
    second = g.reuse("shared_conv", h)
    second = batch_norm(g, data, "bn", second)
    h = g.apply("Add", "sum", [first, second])
    h = g.apply("Flatten", "flatten", h)
    g.output(dense(g, data, "logits", h, 3))
    return g


def training_block(data):
    """Fused (rank 4, NHWC) and generic (rank 2) BatchNormalization in training mode, on two
    short chains (errors compound through training-mode normalisation, so chains stay short)."""
    g = Graph("training_block", "keras213")
    x = g.input("image", data.normal((16, 6, 6, 3), 1.5, 0.5))
    v = g.input("vector", data.normal((16, 12)))
    h = conv(g, data, "conv1", x, 8, 3, bias=False, padding="same")
    h = batch_norm(g, data, "bn1", h, momentum=0.9)
    h = g.apply("ReLU", "relu1", h)
    h = conv(g, data, "conv2", h, 8, 3, strides=2, padding="same")
    g.output(batch_norm(g, data, "bn2", h, momentum=0.8, epsilon=1e-6))
    h = dense(g, data, "dense", v, 6)
    h = batch_norm(g, data, "bn3", h, momentum=0.5)
    g.output(g.apply("Softmax", "probabilities", h))
    return g


# --- writing --------------------------------------------------------------------------------

def write_weights(graph, directory):
    for layer in graph.layers.values():
        for variable, value in layer.weights.items():
            folder = os.path.join(directory, layer.name)
            os.makedirs(folder, exist_ok=True)
            np.save(os.path.join(folder, f"{variable}.npy"), value.astype(np.float32))


def write_case(out, graph, description, runs, expect_passes=False, error=None,
               mutate=None):
    directory = os.path.join(out, graph.name if error is None else error["case"])
    os.makedirs(directory)
    document = model_json(graph)
    weights = os.path.join(directory, "weights")
    write_weights(graph, weights)
    if mutate is not None:
        mutate(document, weights)
    with open(os.path.join(directory, "model.json"), "w") as handle:
        json.dump(document, handle, indent=1)
    inputs = []
    for index, sample in enumerate(graph.samples):
        inputs.append(f"input{index}.npy")
        np.save(os.path.join(directory, inputs[-1]), sample.astype(np.float32))
    case = {"name": os.path.basename(directory), "description": description,
            "spelling": graph.spelling, "inputs": inputs,
            "outputs": [t.layer for t in graph.outputs], "runs": runs,
            "expect_passes": expect_passes, "tolerance": tolerance_constants()}
    if error is not None:
        case["error"] = {key: value for key, value in error.items() if key != "case"}
    else:
        arrays = {}
        training = "training" in runs
        outputs, updates = evaluate(graph, training)
        for tensor, result in zip(graph.outputs, outputs):
            arrays[tensor.layer] = result.value
            arrays[f"{tensor.layer}.err"] = result.err
            if not np.all(np.isfinite(result.value)):
                raise AssertionError(f"{graph.name}: non-finite reference output")
        for layer_name, moving in updates.items():
            for variable, update in moving.items():
                arrays[f"variables/{layer_name}/{variable}"] = update.value
                arrays[f"variables/{layer_name}/{variable}.err"] = update.err
        case["variables"] = sorted(f"{layer}/{variable}" for layer, moving in updates.items()
                                   for variable in moving)
        np.savez(os.path.join(directory, "expected.npz"), **arrays)
    with open(os.path.join(directory, "case.json"), "w") as handle:
        json.dump(case, handle, indent=1)


def tolerance_constants():
    return {"u": ref.U, "dot_extra": ref.DOT_EXTRA, "bn_ulps": ref.BN_ULPS,
            "update_ulps": ref.UPDATE_ULPS, "decay_ulps": ref.DECAY_ULPS,
            "activation_ulps": ref.ACTIVATION_ULPS}


def remove_weight(layer, variable):
    def mutate(document, weights):
        os.remove(os.path.join(weights, layer, f"{variable}.npy"))
    return mutate


def insert_layer_normalization(document, weights):
    """Replaces relu2 by a LayerNormalization (a Keras layer keel does not implement)."""
    for entry in document["config"]["layers"]:
        if entry["name"] == "relu2":
            entry["class_name"] = "LayerNormalization"
            entry["config"].update({"axis": [3], "epsilon": 0.001, "center": True,
                                    "scale": True})


def generate(out):
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    data = Data(SEED)
    inference = ["optimized", "unoptimized"]
    write_case(out, resnet_block(data),
               "ResNet block: Conv2D(no bias)→BN→relu→Conv2D→BN→Add(input)→ReLU→GAP→Dense→"
               "Softmax; folding must report passes; also served from 2 threads",
               inference + ["serve"], expect_passes=True)
    write_case(out, inception_block(data),
               "Inception block: 1×1/3×3 stride-2 'same' convs, dilated conv, MaxPooling2D and "
               "AveragePooling2D 'same', Concatenate, grouped Conv2D with swish (Keras 3)",
               inference)
    write_case(out, mobilenet_block(data),
               "MobileNet block: Conv2D→BN→ReLU(6)→DepthwiseConv2D(multiplier 2)→BN(ε 1e-7)→"
               "ReLU(6)→Conv2D→BN (TF 1.15)", inference)
    write_case(out, nchw_block(data),
               "channels_first: Conv2D stride 2 'same'→BN(axis 1, ε 1e-6)→relu→MaxPooling2D→"
               "dilated Conv2D tanh→AveragePooling2D 'same'", inference)
    write_case(out, draw(mlp, data),
               "MLP: two inputs, two outputs; Flatten, Dense, rank-2 BN (ε 1e-7, no floor), "
               "sigmoid/tanh, Multiply, Add, Reshape, Dense on rank 3 with gelu, "
               "ReLU(slope, threshold), swish, softmax",
               inference)
    for spelling in ("tf115", "keras3"):
        write_case(out, shared_layer(data, spelling),
                   f"a Conv2D applied twice (inbound node index 1), {spelling} spelling",
                   inference)
    write_case(out, training_block(data),
               "training mode: fused BN (NHWC, Bessel-corrected moving variance, ε floor) and "
               "generic rank-2 BN (biased variance); moving statistics written back",
               ["training"])
    write_case(out, resnet_block(Data(SEED), "tf115"),
               "a missing weight file: exit 2 naming conv2/kernel.npy", ["error"],
               error={"case": "error_missing_weight", "categories": ["invalid_argument"],
                      "message_contains": ["conv2", "kernel.npy"]},
               mutate=remove_weight("conv2", "kernel"))
    write_case(out, resnet_block(Data(SEED), "keras3"),
               "an unsupported layer class (LayerNormalization): exit 2", ["error"],
               error={"case": "error_unsupported_layer", "categories": ["unsupported"],
                      "message_contains": ["LayerNormalization"]},
               mutate=insert_layer_normalization)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for the cases (replaced)")
    generate(parser.parse_args().out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
