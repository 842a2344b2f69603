#!/usr/bin/python3
"""Hand-derived expectations for reference.py: the Keras semantics a wrong reference would most
likely get wrong (TF's 'same' padding split, DepthwiseConv2D's output channel order, padding
excluded from averages and never the maximum, ReLU's strict threshold, the fused epsilon floor and
Bessel-corrected moving variance, the exact-erf gelu), each worked out by hand in the comments."""

import sys

import numpy as np

import reference as ref


def check(label, got, expected):
    got = np.asarray(got, dtype=np.float64)
    if got.shape != np.shape(expected) or not np.allclose(got, expected, rtol=1e-12, atol=1e-15):
        raise AssertionError(f"{label}: got {got.tolist()}, "
                             f"expected {np.asarray(expected).tolist()}")


def row(values):
    """A (1, 1, W, 1) NHWC tensor."""
    return ref.T(np.asarray(values, dtype=np.float64).reshape(1, 1, -1, 1))


def main():
    # 'same': ceil(size/stride) outputs, total padding (out-1)·s + k - size split total//2 first.
    check("same 8/3/2", ref.output_size_and_padding(8, 3, 2, 1, "same"), (4, 0, 1))
    check("same 9/3/2", ref.output_size_and_padding(9, 3, 2, 1, "same"), (5, 1, 1))
    check("same dilated", ref.output_size_and_padding(2, 3, 1, 2, "same"), (2, 2, 2))
    check("valid 10/3/2", ref.output_size_and_padding(10, 3, 2, 1, "valid"), (4, 0, 0))

    # [1 2 3 4] * [1 1 1], stride 2, 'same': padding 0 before, 1 after -> windows [1 2 3], [3 4 0].
    kernel = np.ones((1, 3, 1, 1))
    check("conv same split", ref.conv2d(row([1, 2, 3, 4]), kernel, strides=(1, 2),
                                        padding="same").value.ravel(), [6, 7])
    # channels_first gives the same numbers on the transposed data.
    nchw = ref.T(np.arange(1.0, 5.0).reshape(1, 1, 1, 4))
    check("conv nchw", ref.conv2d(nchw, kernel, strides=(1, 2), padding="same",
                                  data_format="channels_first").value.ravel(), [6, 7])
    # Two groups: output 0 sees input channel 0 only, output 1 channel 1 only.
    grouped = ref.conv2d(ref.T(np.array([[[[2.0, 5.0]]]])), np.array([[[[3.0, 7.0]]]]), groups=2)
    check("groups", grouped.value.ravel(), [6, 35])

    # DepthwiseConv2D, C = 2, M = 2, 1×1 kernel k[c, m] = 10c + m + 1, x = [1, 100]:
    # output channel c·M + m = x_c·k[c, m] -> [1, 2, 1100, 1200].
    depthwise = np.array([[1.0, 2.0], [11.0, 12.0]]).reshape(1, 1, 2, 2)
    out = ref.depthwise_conv2d(ref.T(np.array([[[[1.0, 100.0]]]])), depthwise)
    check("depthwise order", out.value.ravel(), [1, 2, 1100, 1200])

    # Dense on rank 3 acts on the last axis.
    check("dense rank 3", ref.dense(ref.T(np.arange(4.0).reshape(1, 2, 2)),
                                    np.array([[1.0], [10.0]])).value.ravel(), [10, 32])

    # Pool 2, stride 1, 'same' on [2 4]: padding after -> windows [2 4], [4 pad].
    check("average excludes padding",
          ref.average_pooling2d(row([2, 4]), 2, 1, "same").value.ravel(), [3, 4])
    check("max ignores padding",
          ref.max_pooling2d(row([-1, -2]), 2, 1, "same").value.ravel(), [-1, -2])
    check("global average keepdims",
          ref.global_average_pooling2d(row([1, 2, 6]), keepdims=True).value.shape, (1, 1, 1, 1))

    # ReLU(negative_slope 0.1, threshold 0.5): x > 0.5 keeps x; else -0.1·(0.5 - x).
    check("relu threshold", ref.relu_layer(row([0.5, 0.6, -1.0]), None, 0.1, 0.5).value.ravel(),
          [0.0, 0.6, -0.15])
    check("relu6", ref.relu_layer(row([-1.0, 3.0, 7.0]), 6.0).value.ravel(), [0, 3, 6])

    # gelu(1) = Φ(1) = 0.841344746..., swish(1) = σ(1) = 0.731058578...
    check("gelu", ref.activation("gelu", ref.T(np.array([1.0]))).value, [0.8413447460685429])
    check("swish", ref.activation("swish", ref.T(np.array([1.0]))).value, [0.7310585786300049])
    check("softmax", ref.softmax(ref.T(np.array([[0.0, np.log(3.0)]]))).value, [[0.25, 0.75]])

    # Fused (rank 4, axis 1 or 3) raises epsilon to 1.001e-5; rank 2 keeps it.
    check("eps fused", ref.batch_normalization_epsilon(4, 1, 1e-6), 1.001e-5)
    check("eps generic", ref.batch_normalization_epsilon(2, 1, 1e-6), 1e-6)
    # Inference: (3 - 1)/sqrt(3 + 1)·2 + 0.5 = 2.5 (rank 2, epsilon exactly 1).
    out = ref.batch_normalization_inference(ref.T(np.array([[3.0]])), np.array([2.0]),
                                            np.array([0.5]), np.array([1.0]), np.array([3.0]),
                                            epsilon=1.0)
    check("bn inference", out.value, [[2.5]])

    # Training on values 1 and 3 of one channel: mean 2, biased variance 1, so y = ±1/sqrt(1 + ε)
    # with ε = 0 raised to 1.001e-5 when fused; momentum 0 makes the moving statistics the batch
    # ones: variance 1·2/1 = 2 when fused (Bessel), 1 otherwise.
    ones, zeros = np.ones(1), np.zeros(1)
    for shape, moving_variance, epsilon in (((2, 1, 1, 1), 2.0, 1.001e-5), ((2, 1), 1.0, 0.0)):
        x = ref.T(np.array([1.0, 3.0]).reshape(shape))
        y, updates = ref.batch_normalization_training(x, ones, zeros, zeros, ones, epsilon=0.0,
                                                      momentum=0.0)
        half = 1.0 / np.sqrt(1.0 + epsilon)
        check(f"bn training output {shape}", y.value.ravel(), [-half, half])
        check(f"bn moving mean {shape}", updates["moving_mean"].value, [2])
        check(f"bn moving variance {shape}", updates["moving_variance"].value, [moving_variance])
    # momentum 0.75: 4 - (4 - 2)·0.25 = 3.5.
    _, updates = ref.batch_normalization_training(ref.T(np.array([[1.0], [3.0]])), ones, zeros,
                                                  4.0 * ones, ones, momentum=0.75)
    check("bn momentum", updates["moving_mean"].value, [3.5])

    print("reference selftest: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
