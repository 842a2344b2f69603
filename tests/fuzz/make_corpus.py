#!/usr/bin/python3
"""Writes the seed corpora of keel's fuzz harnesses into tests/fuzz/corpus/<harness>/.

Seeds are small valid and near-valid inputs: .npy files of every dtype keel reads in format
versions 1.0/2.0/3.0 (plus truncated and malformed ones), every layer class keel has in its
TF 1.15, Keras 2.13 and Keras 3 config spellings, and Keras model JSON in the three spellings.
Regression inputs for fixed findings live next to them (names starting with "regression-") and
are not touched. Run with Debian's /usr/bin/python3 (it has numpy): tests/fuzz/make_corpus.py
"""
import copy
import io
import json
import pathlib
import struct

import numpy as np
from numpy.lib import format as npy_format

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"


def clear(harness):
    directory = ROOT / harness
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.iterdir():
        if not path.name.startswith("regression-"):
            path.unlink()
    return directory


# ---------------------------------------------------------------------------------------- .npy
def npy_bytes(array, version):
    buffer = io.BytesIO()
    npy_format.write_array(buffer, array, version=version, allow_pickle=False)
    return buffer.getvalue()


def raw_npy(header, payload=b"", version=(1, 0)):
    length = struct.pack("<H" if version[0] == 1 else "<I", len(header))
    return b"\x93NUMPY" + bytes(version) + length + header.encode("latin1") + payload


def write_npy_corpus():
    directory = clear("npy_fuzzer")
    dtypes = ["<f2", "<f4", "<f8", ">f4", ">f8", "|i1", "<i2", ">i4", "<i8", "|u1", ">u2", "<u4",
              "<u8", "|b1"]
    versions = [(1, 0), (2, 0), (3, 0)]
    for index, dtype in enumerate(dtypes):
        version = versions[index % 3]
        array = (np.arange(6) % 3).astype(dtype).reshape(2, 3)
        name = dtype.replace("<", "le_").replace(">", "be_").replace("|", "")
        (directory / f"{name}_v{version[0]}.npy").write_bytes(npy_bytes(array, version))
    for version in versions:
        fortran = np.asfortranarray(np.arange(24, dtype="<f4").reshape(2, 3, 4))
        (directory / f"fortran_f4_v{version[0]}.npy").write_bytes(npy_bytes(fortran, version))
    shapes = {"scalar": (), "empty": (0,), "empty_2d": (3, 0), "vector": (5,), "rank8": (1,) * 8}
    for name, shape in shapes.items():
        array = np.ones(shape, dtype="<f4")
        (directory / f"{name}.npy").write_bytes(npy_bytes(array, (1, 0)))
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"
    near = {
        "truncated_payload": raw_npy(header, b"\0" * 7),
        "extra_payload": raw_npy(header, b"\0" * 9),
        "truncated_header": raw_npy(header)[:30],
        "bad_magic": b"\x93NUMPX" + raw_npy(header, b"\0" * 8)[6:],
        "version_4": raw_npy(header, b"\0" * 8, (4, 0)),
        "object": raw_npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", b"\0" * 8),
        "structured": raw_npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                              b"\0" * 4),
        "negative_dim": raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 2), }"),
        "overflow": raw_npy("{'descr': '<f8', 'fortran_order': False, "
                            "'shape': (4294967296, 4294967296, 4), }"),
        "huge_dim": raw_npy("{'descr': '<f4', 'fortran_order': True, "
                            "'shape': (99999999999999999999,), }"),
        "long_literal": raw_npy("{'descr': '<i8', 'fortran_order': False, 'shape': (2L,), }",
                                b"\0" * 16),
        "unicode": raw_npy("{'descr': '<U4', 'fortran_order': False, 'shape': (1,), }", b"\0" * 16),
        "rank9": raw_npy("{'descr': '|u1', 'fortran_order': False, "
                         "'shape': (1, 1, 1, 1, 1, 1, 1, 1, 1), }", b"\0"),
        "duplicate_key": raw_npy("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, "
                                 "'shape': (), }", b"\0" * 4),
        "v2_length_overflow": b"\x93NUMPY\x02\x00\xff\xff\xff\xff{}",
    }
    for name, data in near.items():
        (directory / f"near_{name}.npy").write_bytes(data)


# ------------------------------------------------------------------------------- layer configs
def initializer(class_name, generation, **config):
    if generation == "tf115":
        return {"class_name": class_name, "config": {**config, "dtype": "float32"}}
    entry = {"module": "keras.initializers", "class_name": class_name, "config": config,
             "registered_name": None}
    return entry


def dtype_of(generation):
    if generation == "keras3":
        return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
                "registered_name": None}
    return "float32"


def base(name, generation):
    return {"name": name, "trainable": True, "dtype": dtype_of(generation)}


def layer_configs(generation):
    """{class name: config} as Keras' get_config() writes them in this generation."""
    g = generation
    keras3 = g == "keras3"
    glorot = initializer("GlorotUniform", g, seed=None)
    zeros = initializer("Zeros", g)
    ones = initializer("Ones", g)
    regularizers = {"kernel_regularizer": None, "bias_regularizer": None,
                    "activity_regularizer": None, "kernel_constraint": None,
                    "bias_constraint": None}
    dense = {**base("dense", g), "units": 2, "activation": "relu", "use_bias": True,
             "kernel_initializer": glorot, "bias_initializer": zeros, **regularizers}
    conv = {**base("conv", g), "filters": 2, "kernel_size": [3, 3], "strides": [1, 1],
            "padding": "same", "data_format": "channels_last", "dilation_rate": [1, 1],
            "activation": "linear", "use_bias": True, "kernel_initializer": glorot,
            "bias_initializer": zeros, **regularizers}
    if g != "tf115":
        conv["groups"] = 1
    if keras3:
        dense["lora_rank"] = None
        conv["lora_rank"] = None
    depthwise = {**base("dw", g), "kernel_size": [3, 3], "strides": [2, 2], "padding": "valid",
                 "data_format": "channels_last", "dilation_rate": [1, 1], "depth_multiplier": 2,
                 "activation": "relu6", "use_bias": True, "depthwise_initializer": glorot,
                 "bias_initializer": zeros, "depthwise_regularizer": None,
                 "bias_regularizer": None, "activity_regularizer": None,
                 "depthwise_constraint": None, "bias_constraint": None}
    if g == "keras213":
        depthwise["groups"] = 1
    batch_norm = {**base("bn", g), "axis": [3] if g == "tf115" else -1, "momentum": 0.99,
                  "epsilon": 0.001, "center": True, "scale": True, "beta_initializer": zeros,
                  "gamma_initializer": ones, "moving_mean_initializer": zeros,
                  "moving_variance_initializer": ones, "beta_regularizer": None,
                  "gamma_regularizer": None, "beta_constraint": None, "gamma_constraint": None}
    if keras3:
        batch_norm["synchronized"] = False
    pooling = {"pool_size": [2, 2], "padding": "valid", "strides": [2, 2],
               "data_format": "channels_last"}
    global_pooling = {**base("gap", g), "data_format": "channels_last"}
    if g != "tf115":
        global_pooling["keepdims"] = False
    return {
        "Activation": {**base("activation", g), "activation": "tanh"},
        "Add": base("add", g),
        "AveragePooling2D": {**base("avg", g), **pooling},
        "BatchNormalization": batch_norm,
        "Concatenate": {**base("concat", g), "axis": -1},
        "Conv2D": conv,
        "Dense": dense,
        "DepthwiseConv2D": depthwise,
        "Flatten": {**base("flatten", g), "data_format": "channels_last"},
        "GlobalAveragePooling2D": global_pooling,
        "MaxPooling2D": {**base("max", g), **pooling, "padding": "same"},
        "Multiply": base("multiply", g),
        "ReLU": {**base("relu", g), "max_value": 6.0, "negative_slope": 0.0, "threshold": 0.0},
        "Reshape": {**base("reshape", g), "target_shape": [25, 3]},
        "Softmax": {**base("softmax", g), "axis": -1},
    }


def near_valid_layer_configs():
    """Configs one step from valid: wrong types, out-of-range values, unknown keys."""
    tf2 = layer_configs("keras213")
    variants = []

    def variant(class_name, changes, shape=""):
        config = copy.deepcopy(tf2[class_name])
        config.update(changes)
        variants.append((class_name, shape, config))

    variant("BatchNormalization", {"momentum": 1.5})
    variant("BatchNormalization", {"epsilon": -1})
    variant("BatchNormalization", {"axis": [1, 3], "renorm": True,
                                   "renorm_clipping": {"rmax": 3, "rmin": 0.3, "dmax": 5},
                                   "renorm_momentum": 0.9})
    variant("BatchNormalization", {"axis": 7})
    variant("BatchNormalization", {"momentum": "0.9"})
    variant("BatchNormalization", {"gamma_regularizer": {"class_name": "L2",
                                                         "config": {"l2": 0.01}}})
    variant("BatchNormalization", {"beta_constraint": {"class_name": "MaxNorm",
                                                       "config": {"max_value": 2, "axis": 0}}})
    variant("Dense", {"units": 0})
    variant("Dense", {"units": -3})
    variant("Dense", {"units": 2.5})
    variant("Dense", {"kernel_initializer": {"class_name": "VarianceScaling",
                                             "config": {"scale": 2.0, "mode": "fan_in",
                                                        "distribution": "truncated_normal",
                                                        "seed": 1}}})
    variant("Dense", {"kernel_initializer": {"class_name": "RandomUniform",
                                             "config": {"minval": 1, "maxval": -1, "seed": 3}}})
    variant("Dense", {"kernel_initializer": {"class_name": "Orthogonal",
                                             "config": {"gain": 1.0, "seed": None}}})
    variant("Dense", {"kernel_regularizer": {"class_name": "L1L2",
                                             "config": {"l1": 0.1, "l2": 0.2}}})
    variant("Dense", {"units": 9223372036854775807})
    variant("Conv2D", {"kernel_size": [7, 7]})
    variant("Conv2D", {"strides": [0, 1]})
    variant("Conv2D", {"dilation_rate": [2, 2], "padding": "causal"})
    variant("Conv2D", {"data_format": "channels_first"})
    variant("Conv2D", {"filters": 4294967296, "kernel_size": 1})
    variant("Conv2D", {"kernel_constraint": {"class_name": "UnitNorm", "config": {"axis": [0, 1, 2]}}})
    variant("DepthwiseConv2D", {"depth_multiplier": 0})
    variant("DepthwiseConv2D", {"kernel_size": 5, "padding": "same"})
    variant("MaxPooling2D", {"pool_size": [6, 6]})
    variant("AveragePooling2D", {"strides": None, "padding": "same"})
    variant("Reshape", {"target_shape": [-1, 5]})
    variant("Reshape", {"target_shape": [-1, -1]})
    variant("Reshape", {"target_shape": [7]})
    variant("Concatenate", {"axis": 0})
    variant("Concatenate", {"axis": 3}, "2,5,5,3;2,5,5,1")
    variant("Add", {}, "2,5,5,3;2,1,5,3")
    variant("Multiply", {}, "-1,4;-1,4;-1,4")
    variant("Softmax", {"axis": [1, 2]})
    variant("ReLU", {"max_value": -1.0})
    variant("ReLU", {"max_value": None, "negative_slope": 0.1, "threshold": 1e308})
    variant("Activation", {"activation": "gelu"})
    variant("Activation", {"activation": {"class_name": "LeakyReLU", "config": {}}})
    variant("Flatten", {}, "-1")
    variant("GlobalAveragePooling2D", {"keepdims": True}, "2,0,5,3")
    variant("Dense", {}, "-1,-1,3")
    variant("Dense", {}, "")
    return variants


def write_layer_config_corpus():
    directory = clear("layer_config_fuzzer")
    for generation in ("tf115", "keras213", "keras3"):
        for class_name, config in layer_configs(generation).items():
            text = class_name + "\n" + json.dumps(config)
            (directory / f"{class_name}_{generation}").write_text(text)
    for index, (class_name, shape, config) in enumerate(near_valid_layer_configs()):
        first_line = class_name + (" " + shape if shape else "")
        (directory / f"near_{index:02d}_{class_name}").write_text(
            first_line + "\n" + json.dumps(config))
    (directory / "near_unknown_class").write_text("LayerNormalization\n{}")
    (directory / "near_not_object").write_text("Dense\n[1, 2]")


# --------------------------------------------------------------------------------- model JSON
def keras_tensor(layer):
    return {"class_name": "__keras_tensor__",
            "config": {"shape": [None, 5, 5, 3], "dtype": "float32",
                       "keras_history": [layer, 0, 0]}}


def model(generation, layers, inputs, outputs, input_shape):
    """A functional model.to_json() in one generation: layers are (class, name, config, inbound)."""
    entries = []
    for name in inputs:
        config = {"dtype": "float32", "sparse": False, "name": name}
        if generation == "keras3":
            config["batch_shape"] = [None, *input_shape]
        else:
            config["batch_input_shape"] = [None, *input_shape]
        if generation == "keras213":
            config["ragged"] = False
        entries.append({"class_name": "InputLayer", "name": name, "config": config,
                        "inbound_nodes": []})
    for class_name, name, config, inbound in layers:
        config = {**base(name, generation), **config}
        if generation == "keras3":
            nodes = [{"args": [[keras_tensor(i) for i in inbound]] if len(inbound) > 1
                      else [keras_tensor(inbound[0])], "kwargs": {}}]
        else:
            nodes = [[[i, 0, 0, {}] for i in inbound]]
        entries.append({"class_name": class_name, "name": name, "config": config,
                        "inbound_nodes": nodes})
    for entry in entries:
        if generation != "tf115":
            entry["module"] = "keras.layers"
            entry["registered_name"] = None
    document = {"class_name": "Model" if generation == "tf115" else "Functional",
                "config": {"name": "model", "layers": entries,
                           "input_layers": [[i, 0, 0] for i in inputs],
                           "output_layers": [[o, 0, 0] for o in outputs]}}
    if generation == "tf115":
        document.update({"keras_version": "2.2.4-tf", "backend": "tensorflow"})
    return document


def write_model_json_corpus():
    directory = clear("model_json_fuzzer")
    bn = {"axis": -1, "momentum": 0.9, "epsilon": 0.001}
    models = {
        "bn": ([("BatchNormalization", "bn", bn, ["x"])], ["x"], ["bn"], [2, 3]),
        "conv_bn_relu": ([("Conv2D", "conv", {"filters": 2, "kernel_size": [3, 3],
                                              "padding": "same"}, ["x"]),
                          ("Activation", "act", {"activation": "relu"}, ["conv"]),
                          ("GlobalAveragePooling2D", "gap", {}, ["act"]),
                          ("Dense", "dense", {"units": 2}, ["gap"])],
                         ["x"], ["dense"], [5, 5, 3]),
        "branches": ([("DepthwiseConv2D", "dw", {"kernel_size": 3, "padding": "same"}, ["x"]),
                      ("BatchNormalization", "bn", bn, ["dw"]),
                      ("ReLU", "relu", {"max_value": 6.0}, ["bn"]),
                      ("Add", "add", {}, ["relu", "x"]),
                      ("Concatenate", "concat", {"axis": -1}, ["add", "x"]),
                      ("MaxPooling2D", "pool", {"pool_size": 2}, ["concat"]),
                      ("Flatten", "flatten", {}, ["pool"]),
                      ("Softmax", "softmax", {}, ["flatten"])],
                     ["x"], ["softmax"], [5, 5, 3]),
        "two_inputs": ([("Multiply", "multiply", {}, ["a", "b"]),
                        ("Reshape", "reshape", {"target_shape": [75]}, ["multiply"]),
                        ("AveragePooling2D", "avg", {"pool_size": 2, "padding": "same"}, ["b"])],
                       ["a", "b"], ["reshape", "avg"], [5, 5, 3]),
    }
    for generation in ("tf115", "keras213", "keras3"):
        for name, (layers, inputs, outputs, shape) in models.items():
            text = json.dumps(model(generation, layers, inputs, outputs, shape))
            (directory / f"{name}_{generation}.json").write_text(text)
    base_model = model("keras213", *models["bn"])
    near = {}
    cycle = copy.deepcopy(base_model)
    second = copy.deepcopy(cycle["config"]["layers"][1])
    second["name"] = second["config"]["name"] = "bn2"
    second["inbound_nodes"] = [[["bn", 0, 0, {}]]]
    cycle["config"]["layers"][1]["inbound_nodes"] = [[["bn2", 0, 0, {}]]]
    cycle["config"]["layers"].append(second)
    near["cycle"] = cycle
    dangling = copy.deepcopy(base_model)
    dangling["config"]["layers"][1]["inbound_nodes"] = [[["x", 3, 0, {}]]]
    near["dangling_node"] = dangling
    missing_weights = copy.deepcopy(base_model)
    missing_weights["config"]["layers"][1]["name"] = "bn_without_weights"
    missing_weights["config"]["output_layers"] = [["bn_without_weights", 0, 0]]
    near["missing_weights"] = missing_weights
    wrong_shape = copy.deepcopy(base_model)
    wrong_shape["config"]["layers"][0]["config"]["batch_input_shape"] = [None, 2, 4]
    near["weight_shape_mismatch"] = wrong_shape
    shared = model("keras213", *models["bn"])
    shared["config"]["layers"][1]["inbound_nodes"].append([["bn", 0, 0, {}]])
    shared["config"]["output_layers"] = [["bn", 1, 0]]
    near["shared_layer_twice"] = shared
    near["not_functional"] = {"class_name": "Sequential", "config": {"layers": []}}
    for name, document in near.items():
        (directory / f"near_{name}.json").write_text(json.dumps(document))


def write_json_file_corpus():
    directory = clear("json_file_fuzzer")
    (directory / "layer_run_script.json").write_text(
        '{\n  // a keel layer-run script\n  "layer": {"class_name": "BatchNormalization", '
        '"config": {"axis": -1, "momentum": 0.9}},\n  "behavior": "v2",\n  "steps": '
        '[{"input": "x0.npy", "training": true}]\n}\n')
    (directory / "numbers.json").write_text('[0, -1, 1.5e300, 1e-320, 18446744073709551615, '
                                            '-9223372036854775808, "\\u00e9\\ud83d\\ude00"]')
    (directory / "near_deep.json").write_text("[" * 70 + "]" * 70)
    (directory / "near_out_of_range.json").write_text('{"momentum": 1e400}')
    (directory / "near_unterminated.json").write_text('{"a": [1, 2')
    for path in (ROOT / "model_json_fuzzer").glob("*_keras3.json"):
        (directory / path.name).write_text(path.read_text())


if __name__ == "__main__":
    write_npy_corpus()
    write_layer_config_corpus()
    write_model_json_corpus()
    write_json_file_corpus()
