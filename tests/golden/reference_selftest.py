#!/usr/bin/python3
"""Tests the oracle itself: the NumPy reference against hand-derivable expectations of the spec
(../shared/spec/tf-batchnorm-semantics.md), each computed here independently of the reference's
code (explicit loops over samples, TF's own test recurrences)."""

import math
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import layer_script  # noqa: F401  (puts the reference on the path, checks numpy)
import batch_normalization_reference as ref
import make_cases

import numpy as np

F32_RELATIVE = 2.0 ** -23


def layer(config, shape, behavior="v2", has_adjustment=False, variables=None):
    bn = ref.BatchNormalizationReference(config, behavior, has_adjustment)
    bn.build(shape)
    if variables:
        bn.set_variables(variables)
    return bn


def close(test, got, expected, relative=1e-12, absolute=1e-12):
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    test.assertEqual(got.shape, expected.shape)
    limit = absolute + relative * np.abs(expected)
    worst = np.max(np.abs(got - expected) - limit) if got.size else -1
    test.assertTrue(np.all(np.abs(got - expected) <= limit), f"worst excess {worst}")


class GhostBatches(unittest.TestCase):
    """§6d: groups are strided; moving stats get the mean of the per-group moments."""

    def test_strided_groups_rank2(self):
        rng = np.random.default_rng(1)
        batch, vbs, eps = 6, 3, 1e-3
        x = rng.normal(size=(batch, 4))
        gamma = rng.uniform(0.5, 2, 4).astype(np.float32)
        beta = rng.uniform(-1, 1, 4).astype(np.float32)
        bn = layer({"axis": -1, "virtual_batch_size": vbs, "momentum": 0.5, "epsilon": eps},
                   x.shape, variables={"gamma": gamma.reshape(1, 1, 4),
                                       "beta": beta.reshape(1, 1, 4)})
        result = bn.call(x, training=True)
        stride = batch // vbs
        expected = np.empty_like(x)
        means, variances = [], []
        for j in range(stride):
            members = [j + k * stride for k in range(vbs)]
            group = x[members]
            mean, variance = group.mean(0), group.var(0)
            means.append(mean)
            variances.append(variance)
            expected[members] = (group - mean) / np.sqrt(variance + eps) * gamma + beta
        close(self, result.y, expected)
        moving_mean = np.float32(0) - (np.float32(0) - np.mean(means, 0).astype(np.float32)) \
            * np.float32(0.5)
        close(self, bn.variables["moving_mean"].reshape(4), moving_mean, 0, 0)
        moving_variance = (np.float32(1) - (np.float32(1) - np.mean(variances, 0)
                                             .astype(np.float32)) * np.float32(0.5))
        close(self, bn.variables["moving_variance"].reshape(4), moving_variance, 0, 0)
        # Contiguous grouping would differ on this data.
        contiguous = x[:vbs]
        self.assertGreater(np.max(np.abs(result.y[:vbs] - (contiguous - contiguous.mean(0))
                                         / np.sqrt(contiguous.var(0) + eps) * gamma - beta)), 0.1)

    def test_strided_groups_nchw(self):
        rng = np.random.default_rng(2)
        x = rng.normal(size=(4, 3, 2, 2))
        bn = layer({"axis": 1, "virtual_batch_size": 2, "epsilon": 0.01}, x.shape)
        self.assertEqual(bn.param_shape, (1, 1, 3, 1, 1))
        y = bn.call(x, training=True).y
        for j in range(2):
            group = x[[j, j + 2]]
            mean = group.mean(axis=(0, 2, 3), keepdims=True)
            variance = group.var(axis=(0, 2, 3), keepdims=True)
            close(self, y[[j, j + 2]], (group - mean) / np.sqrt(variance + 0.01))

    def test_vbs_equal_batch_is_plain_batch_norm(self):
        x = np.random.default_rng(3).normal(size=(6, 5))
        ghost = layer({"axis": -1, "virtual_batch_size": 6, "momentum": 0.9}, x.shape)
        plain = layer({"axis": -1, "momentum": 0.9}, x.shape)
        close(self, ghost.call(x, True).y, plain.call(x, True).y)
        for name in ("moving_mean", "moving_variance"):
            close(self, ghost.variables[name].reshape(5), plain.variables[name], 0, 0)

    def test_vbs_one_gives_beta(self):
        x = np.random.default_rng(4).normal(size=(4, 3))
        beta = np.array([[[0.25, -0.5, 1.0]]], dtype=np.float32)
        bn = layer({"axis": -1, "virtual_batch_size": 1}, x.shape, variables={"beta": beta})
        close(self, bn.call(x, True).y, np.broadcast_to(beta.reshape(3), x.shape))

    def test_divisibility(self):
        for behavior, inference_raises in (("v2", True), ("v1", True), ("tf_keras", False)):
            bn = layer({"axis": -1, "virtual_batch_size": 2}, (4, 3), behavior)
            with self.assertRaises(ref.LayerError) as caught:
                bn.call(np.ones((3, 3)), True)
            self.assertEqual(caught.exception.stage, "call")
            if inference_raises:
                with self.assertRaises(ref.LayerError):
                    bn.call(np.ones((3, 3)), False)
            else:
                self.assertEqual(bn.call(np.ones((3, 3)), False).y.shape, (3, 3))


class Renorm(unittest.TestCase):
    """§6c, with the recurrences of TF 1.15's testRenorm written out in float64."""

    def run_recurrence(self, clipping, renorm_stddev0=1.0, eps=1e-3, steps=5):
        gamma, beta, momentum, renorm_momentum = 2.0, 3.0, 0.99, 0.8
        rng = np.random.default_rng(5)
        config = {"axis": 1, "renorm": True, "renorm_clipping": clipping, "epsilon": eps,
                  "momentum": momentum, "renorm_momentum": renorm_momentum,
                  "gamma_initializer": {"class_name": "Constant", "config": {"value": gamma}},
                  "beta_initializer": {"class_name": "Constant", "config": {"value": beta}}}
        bn = layer(config, (4, 3), variables={"renorm_stddev": np.full(3, renorm_stddev0)})
        moving_mean, moving_stddev, renorm_mean = 0.0, 1.0, 0.0
        renorm_stddev = float(np.float32(renorm_stddev0))
        rmin, rmax, dmax = (clipping.get(k, default) for k, default in
                            (("rmin", 0.0), ("rmax", math.inf), ("dmax", math.inf)))
        for _ in range(steps):
            x = rng.random((4, 3))
            mean, variance = x.mean(0), x.var(0)
            stddev = np.sqrt(variance + eps)
            floored = np.maximum(renorm_stddev, math.sqrt(eps))
            r = np.minimum(np.maximum(stddev / floored, rmin), rmax)
            d = np.clip((mean - renorm_mean) / floored, -dmax, dmax)
            y_train = ((x - mean) / stddev * r + d) * gamma + beta
            renorm_mean = renorm_mean + (mean - renorm_mean) * (1 - renorm_momentum)
            renorm_stddev = renorm_stddev + (stddev - renorm_stddev) * (1 - renorm_momentum)
            moving_mean = moving_mean + (mean - moving_mean) * (1 - momentum)
            moving_stddev = moving_stddev + (stddev - moving_stddev) * (1 - momentum)
            y_test = (x - moving_mean) / moving_stddev * gamma + beta
            result = bn.call(x, True)
            # The reference's variables are float32: the recurrences agree to f32 rounding.
            close(self, result.y, y_train, 1e-5, 1e-5)
            close(self, result.renorm_r, r, 1e-5, 1e-6)
            close(self, result.renorm_d, d, 1e-5, 1e-6)
            close(self, bn.variables["renorm_mean"], renorm_mean, 1e-6, 1e-7)
            close(self, bn.variables["renorm_stddev"], renorm_stddev, 1e-6, 1e-7)
            close(self, bn.variables["moving_stddev"], moving_stddev, 1e-6, 1e-7)
            close(self, bn.variables["moving_variance"],
                  np.maximum(moving_stddev ** 2 - eps, 0), 1e-6, 1e-7)
            close(self, bn.call(x, False).y, y_test, 1e-5, 1e-5)
            y_clipped = np.any((stddev / floored < rmin) | (stddev / floored > rmax))
            self.clipped = getattr(self, "clipped", False) or y_clipped

    def test_tf_test_renorm(self):
        self.run_recurrence({"rmax": 1.1, "rmin": 0.9, "dmax": 0.1})
        self.assertTrue(self.clipped)  # the bounds bind on this data

    def test_unclipped(self):
        self.run_recurrence({})

    def test_stddev_floor(self):
        self.run_recurrence({}, renorm_stddev0=0.0, eps=0.01, steps=2)

    def test_clip_order_rmin_above_rmax_is_rmax(self):
        # keel rejects rmin > rmax at construction; the order still matters for rmin == rmax.
        bn = layer({"axis": -1, "renorm": True, "renorm_clipping": {"rmin": 1.5, "rmax": 1.5}},
                   (4, 2))
        result = bn.call(np.random.default_rng(6).normal(size=(4, 2)), True)
        close(self, result.renorm_r, [1.5, 1.5], 0, 0)
        with self.assertRaises(ref.LayerError):
            ref.BatchNormalizationReference(
                {"renorm": True, "renorm_clipping": {"rmin": 2.0, "rmax": 1.0}})

    def test_v1_frozen_keeps_renorm_statistics(self):
        bn = layer({"axis": -1, "renorm": True, "trainable": False}, (4, 2), "v1")
        before = bn.state()
        result = bn.call(np.random.default_rng(7).normal(size=(4, 2)), True)
        self.assertTrue(result.training)
        self.assertFalse(result.updates)
        for name, value in bn.state().items():
            np.testing.assert_array_equal(value, before[name])


class FusedAndGeneric(unittest.TestCase):
    """§6a vs §6b: Bessel's correction, the epsilon floor, the decay constants."""

    def test_bessel(self):
        for samples, factor in ((1, 1.0), (2, 2.0), (3, 1.5)):
            x = np.random.default_rng(samples).normal(size=(samples, 1, 1, 3))
            fused = layer({"axis": -1, "momentum": 0.0}, x.shape)
            generic = layer({"axis": -1, "momentum": 0.0, "fused": False}, x.shape)
            self.assertTrue(fused.fused)
            self.assertFalse(generic.fused)
            y_fused = fused.call(x, True).y
            y_generic = generic.call(x, True).y
            close(self, y_fused, y_generic, 1e-9, 1e-12)  # same output (ε = 1e-3 on both)
            biased = x.reshape(samples, 3).var(0)
            close(self, fused.variables["moving_variance"], biased * factor, 3e-7, 1e-30)
            close(self, generic.variables["moving_variance"], biased, 3e-7, 1e-30)
            self.assertFalse(np.any(np.isnan(fused.variables["moving_variance"])))

    def test_epsilon_floor(self):
        x = np.random.default_rng(8).normal(scale=3e-3, size=(4, 2, 2, 3))
        mean, variance = x.mean((0, 1, 2)), x.var((0, 1, 2))
        for eps, fused, used in ((1e-10, None, 1.001e-5), (1e-10, False, 1e-10),
                                 (2e-5, None, 2e-5), (1.001e-5, None, 1.001e-5)):
            bn = layer({"axis": -1, "epsilon": eps, "fused": fused, "momentum": 0.0}, x.shape)
            close(self, bn.call(x, True).y, (x - mean) / np.sqrt(variance + used), 1e-9)
            moving_mean = bn.variables["moving_mean"].astype(np.float64)
            moving_variance = bn.variables["moving_variance"].astype(np.float64)
            close(self, bn.call(x, False).y,
                  (x - moving_mean) / np.sqrt(moving_variance + used), 1e-12)

    def test_decay_constants(self):
        self.assertEqual(ref.fused_decay(0.99), np.float32(0.0099999905))
        self.assertEqual(ref.generic_decay(0.99), np.float32(0.01))
        self.assertNotEqual(ref.fused_decay(0.99), ref.generic_decay(0.99))

    def test_ema_is_float32_arithmetic(self):
        got = ref.ema_update(np.float32([1.0]), [1e-4], np.float32(1.0))
        step = np.float32(np.float32(1.0) - np.float32(1e-4)) * np.float32(1.0)
        self.assertEqual(got[0], np.float32(np.float32(1.0) - step))
        self.assertNotEqual(float(got[0]), float(np.float32(1e-4)))  # §13: not exactly value
        self.assertLess(abs(float(got[0]) - 1e-4), 1e-7)


class Decisions(unittest.TestCase):
    """§2–§5: fused decision, parameter shapes, errors by stage, trainable."""

    def test_fused_decision(self):
        table = [  # behavior, config, shape, fused
            ("v2", {"axis": -1}, (2, 3, 4, 5), True), ("v2", {"axis": 1}, (2, 3, 4, 5), True),
            ("v2", {"axis": 2}, (2, 3, 4, 5), False), ("v2", {"axis": [3]}, (2, 3, 4, 5), True),
            ("v2", {"axis": -1}, (2, 3), False), ("v2", {"axis": -1}, (2, 3, 4, 5, 6), False),
            ("v2", {"axis": -1, "fused": False}, (2, 3, 4, 5), False),
            ("v2", {"axis": -1, "renorm": True}, (2, 3, 4, 5), False),
            ("v2", {"axis": [1, 3]}, (2, 3, 4, 5), False),
            ("v1", {"axis": -1, "fused": True}, (2, 3), False),
            ("v1", {"axis": -1, "fused": True, "renorm": True}, (2, 3, 4, 5), False),
            ("v1", {"axis": -3}, (2, 3, 4, 5), True), ("v1", {"axis": 2}, (2, 3, 4, 5), False),
            ("tf_keras", {"axis": -1}, (2, 3, 4, 5, 6), True),
            ("tf_keras", {"axis": 1}, (2, 3, 4, 5, 6), True),
            ("tf_keras", {"axis": -4}, (2, 3, 4, 5, 6), True),
            ("tf_keras", {"axis": 2}, (2, 3, 4, 5, 6), False),
            ("tf_keras", {"axis": 3}, (2, 3, 4, 5, 6), False),
            ("tf_keras", {"axis": -1}, (2, 3, 4), False),
        ]
        for behavior, config, shape, fused in table:
            with self.subTest(behavior=behavior, config=config, shape=shape):
                self.assertEqual(layer(config, shape, behavior).fused, fused)

    def test_param_shapes(self):
        table = [({"axis": -1, "virtual_batch_size": 2}, (4, 3), (1, 1, 3)),
                 ({"axis": -1, "virtual_batch_size": 2}, (4, 5, 6, 3), (1, 1, 1, 1, 3)),
                 ({"axis": 1, "virtual_batch_size": 2}, (4, 3, 5, 6), (1, 1, 3, 1, 1)),
                 ({"axis": [1, 3]}, (4, 5, 6, 3), (1, 5, 1, 3)),
                 ({"axis": 1}, (4, 5, 6, 3), (5,)), ({"axis": [-1]}, (4, 3), (3,))]
        for config, shape, param_shape in table:
            with self.subTest(config=config, shape=shape):
                self.assertEqual(layer(config, shape).param_shape, param_shape)

    def test_renorm_variables(self):
        bn = layer({"renorm": True, "moving_variance_initializer":
                    {"class_name": "Constant", "config": {"value": 4.0}}}, (2, 3))
        self.assertEqual(bn.variable_names(), ["gamma", "beta", "moving_mean", "moving_variance",
                                               "moving_stddev", "renorm_mean", "renorm_stddev"])
        np.testing.assert_array_equal(bn.variables["moving_stddev"], [2.0] * 3)
        np.testing.assert_array_equal(bn.variables["renorm_stddev"], [2.0] * 3)

    def test_error_stages(self):
        construction = [({"axis": "1"}, "v2", False), ({"axis": (1,)}, "v2", False),
                        ({"axis": -1, "fused": True, "renorm": True}, "v2", False),
                        ({"axis": 2, "fused": True}, "v2", False),
                        ({"axis": -1, "fused": True}, "v2", True),
                        ({"renorm": True, "renorm_clipping": {"rmix": 1}}, "v1", False),
                        ({"epsilon": -1.0}, "v1", False), ({"epsilon": math.nan}, "v2", False),
                        ({"momentum": 1.5}, "v2", False),
                        ({"gamma_initializer": "nope"}, "v2", False)]
        for config, behavior, adjustment in construction:
            with self.subTest(config=config), self.assertRaises(ref.LayerError) as caught:
                ref.BatchNormalizationReference(config, behavior, adjustment)
            self.assertEqual(caught.exception.stage, "construction")
        # Not errors in V1 (silent fallback).
        ref.BatchNormalizationReference({"axis": 2, "fused": True}, "v1")
        build = [({"axis": 2}, (4, 3), "v2", False), ({"axis": [1, -1]}, (4, 3), "v2", False),
                 ({"virtual_batch_size": 0}, (4, 3), "v2", False),
                 ({"axis": 0, "virtual_batch_size": 2}, (4, 3), "v2", False),
                 ({"virtual_batch_size": 2}, (4, 3), "v2", True),
                 ({"fused": True}, (4, 3), "v2", False), ({"axis": -1}, (), "v2", False),
                 ({"axis": -4}, (2, 3, 4, 5), "tf_keras", False)]
        for config, shape, behavior, adjustment in build:
            bn = ref.BatchNormalizationReference(config, behavior, adjustment)
            with self.subTest(config=config), self.assertRaises(ref.LayerError) as caught:
                bn.build(shape)
            self.assertEqual(caught.exception.stage, "build")
        bn = layer({"axis": -1}, (4, 3))
        for shape in ((4, 3, 1), (4, 5)):
            with self.assertRaises(ref.LayerError) as caught:
                bn.call(np.ones(shape), True)
            self.assertEqual(caught.exception.stage, "call")

    def test_trainable_false(self):
        x = np.random.default_rng(9).normal(size=(5, 3))
        for behavior, batch_statistics in (("v2", False), ("tf_keras", False), ("v1", True)):
            bn = layer({"trainable": False, "momentum": 0.5}, x.shape, behavior)
            result = bn.call(x, True)
            self.assertEqual(result.training, batch_statistics)
            self.assertFalse(result.updated)
            expected = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3) if batch_statistics \
                else x / np.sqrt(1 + 1e-3)
            close(self, result.y, expected)
            np.testing.assert_array_equal(bn.variables["moving_mean"], np.zeros(3))

    def test_empty_batch(self):
        bn = layer({"axis": -1}, (0, 3))
        result = bn.call(np.zeros((0, 3)), True)
        self.assertEqual(result.y.shape, (0, 3))
        np.testing.assert_array_equal(bn.variables["moving_variance"], np.ones(3))


class Adjustment(unittest.TestCase):
    """§6e: ((x̂·r + d)·adj_scale + adj_bias)·γ + β with NumPy broadcasting."""

    def test_composition_nchw(self):
        rng = np.random.default_rng(10)
        x = rng.normal(size=(2, 3, 2, 2))
        gamma = np.float32([0.5, 2.0, -1.0])
        beta = np.float32([0.25, 0.0, 1.0])
        adj_scale = rng.uniform(0.5, 1.5, (2, 3, 1, 1))
        adj_bias = rng.uniform(-1, 1, (1, 3, 1, 1))
        bn = layer({"axis": 1}, x.shape, has_adjustment=True,
                   variables={"gamma": gamma, "beta": beta})
        mean = x.mean((0, 2, 3), keepdims=True)
        x_hat = (x - mean) / np.sqrt(x.var((0, 2, 3), keepdims=True) + 1e-3)
        expected = (x_hat * adj_scale + adj_bias) * gamma.reshape(1, 3, 1, 1) \
            + beta.reshape(1, 3, 1, 1)
        close(self, bn.call(x, True, (adj_scale, adj_bias)).y, expected)
        with self.assertRaises(ref.LayerError):
            bn.call(x, True)  # training without the adjustment's arrays

    def test_composition_with_renorm_and_without_affine(self):
        rng = np.random.default_rng(11)
        x = rng.normal(2.0, 3.0, size=(4, 2))
        adj_scale, adj_bias = rng.uniform(0.5, 1.5, (4, 1)), rng.uniform(-1, 1, (2,))
        bn = layer({"renorm": True, "center": False, "scale": False,
                    "renorm_clipping": {"rmax": 1.5, "dmax": 0.5}}, x.shape, has_adjustment=True)
        result = bn.call(x, True, (adj_scale, adj_bias))
        mean, stddev = x.mean(0), np.sqrt(x.var(0) + 1e-3)
        r = np.minimum(stddev / 1.0, 1.5)
        d = np.clip(mean / 1.0, -0.5, 0.5)
        close(self, result.y, ((x - mean) / stddev * r + d) * adj_scale + adj_bias)
        self.assertTrue(np.all(r == 1.5) and np.all(np.abs(d) == 0.5))


class Data(unittest.TestCase):
    """The case generator's exactness habits and the dtype rounding."""

    def test_symmetric_pairs_have_exact_statistics(self):
        data = make_cases.Data(12)
        centers = 1e4 + data.grid([3], -8, 8, 2.0 ** -6)
        x = data.pairs((5, 2, 3), [2], centers, 2.0 ** -10, max_steps=16)
        np.testing.assert_array_equal(x.astype(np.float32).astype(np.float64), x)
        bn = layer({"axis": -1, "momentum": 0.0}, x.shape)
        result = bn.call(x, True)
        np.testing.assert_array_equal(result.moments.mean.reshape(3), centers)
        np.testing.assert_array_equal(bn.variables["moving_mean"], centers.astype(np.float32))

    def test_round_to_dtype(self):
        one = 1.0
        self.assertEqual(ref.round_to_dtype(one + 2 ** -8, "bfloat16"), 1.0)  # tie to even
        self.assertEqual(ref.round_to_dtype(one + 3 * 2 ** -8, "bfloat16"), 1.0 + 2 ** -6)
        self.assertEqual(ref.round_to_dtype(one + 2 ** -9, "bfloat16"), 1.0)
        self.assertEqual(ref.round_to_dtype(-(one + 2 ** -7), "bfloat16"), -(1.0 + 2 ** -7))
        self.assertEqual(ref.round_to_dtype(one + 2 ** -11, "float16"), 1.0)
        self.assertEqual(ref.round_to_dtype(0.1, "float32"), float(np.float32(0.1)))


if __name__ == "__main__":
    unittest.main(verbosity=1)
