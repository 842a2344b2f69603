"""An independent NumPy reference of the Keras layers `keel graph-run` executes (inference and
training semantics of tf.keras 2.x / Keras 3), with a forward error bound for a float32 engine.

Written from the Keras / TensorFlow documentation, not from keel's sources. Every value is
float64. Each tensor carries, next to its exact value, two arrays of the same shape:

  err  an elementwise bound on |keel's float32 result - exact value|, propagated through every
       layer (first-order running error analysis, see below);
  mag  an elementwise bound on the magnitude of the terms whose rounding produced the value
       (Σ|w·x| + |b| for a convolution or Dense output, |value| otherwise); BatchNormalization
       needs it because folding its scale into the preceding kernel rounds every folded weight.

Error model, u = 2^-24 (float32 unit roundoff); each constant is named below:
  * a dot product of K terms plus a bias (Conv2D, DepthwiseConv2D, Dense), any summation order:
    |error| <= γ_{K+DOT_EXTRA}·(Σ|w·x| + |b|), γ_n = n·u/(1 - n·u) (Higham, Thm 3.1; FMAs and
    blocked sums only shrink it); DOT_EXTRA covers the bias add and a fused post-op rounding.
    Input errors propagate as Σ|w|·err(x).
  * BatchNormalization inference y = x·s + (β - μ·s), s = γ/sqrt(v + ε):
    err = |s|·err(x) + BN_ULPS·u·(|s|·mag(x) + |μ·s| + |β|). BN_ULPS counts the roundings of
    s (sqrt, divide, multiply: 3), of the product and the two additions (3), and, when keel folds
    s into the preceding kernel, of each folded weight (1, relative to Σ|w·s·x| = |s|·mag) and
    of the folded bias (1).
  * BatchNormalization training: y = γ·(x - μ_B)/sqrt(σ²_B + ε) + β over n values per channel.
    Statistics rounding: δμ <= γ_{n+2}·mean|x|; δσ² <= 2·γ_{n+4}·mean(x²) + δμ² (valid for
    one-pass E[x²] - μ² as well as two-pass evaluation). Input errors: δμ += mean(err),
    δσ² += 2·mean(|x - μ|·err). First order: err(y) = |γ|/s·(err + δμ) + |γ·x̂|·δσ²/(2s²)
    + BN_ULPS·u·(|γ·x̂| + |β|).
  * moving-statistic updates v ← v - (v - value)·(1 - momentum), float32: the value's error times
    (1 - momentum), plus UPDATE_ULPS·u·max(|v|, |value|) for the four roundings of the update and
    DECAY_ULPS·u·|v - value| for 1 - momentum itself being rounded to float32.
  * element-wise activations: Lipschitz constant × err(x) plus ACTIVATION_ULPS·u·(a magnitude):
    |y| for sigmoid/tanh (relative accuracy of vectorised exp/tanh), |x| for gelu/swish (whose
    1 + erf / sigmoid factors cancel for negative x). relu/ReLU are exact, except that ReLU's
    `threshold` makes a jump of height θ: where |x - θ| <= err(x) the bound grows by θ.
  * softmax over K values: err(y_i) = y_i·(err_i + Σ_j y_j·err_j) + (K + ACTIVATION_ULPS)·u·y_i
    + u·|x_i - max x|·y_i (the shifted exponent's rounding).
  * Add: err(a) + err(b) + 2u·|a + b| (one rounding, and one more if fused as a post-op);
    Multiply: |b|·err(a) + |a|·err(b) + err(a)·err(b) + 2u·|a·b|.
  * MaxPooling2D: the window maximum of err (max is 1-Lipschitz), exact otherwise.
    AveragePooling2D / GlobalAveragePooling2D over K values: mean(err) + γ_{K+2}·mean(|x|).
  * Flatten, Reshape, Concatenate: exact (errors move with the values).
"""

import math

import numpy as np

U = 2.0 ** -24
DOT_EXTRA = 4
BN_ULPS = 8.0
UPDATE_ULPS = 4.0
DECAY_ULPS = 2.0
ACTIVATION_ULPS = 32.0
# tf.nn.fused_batch_norm raises epsilon to this floor, in training and inference.
FUSED_MIN_EPSILON = 1.001e-5


def gamma(n):
    n = np.asarray(n, dtype=np.float64)
    return n * U / (1.0 - n * U)


class T:
    """A tensor of the reference: exact value, error bound, magnitude (see the module text)."""

    def __init__(self, value, err=None, mag=None):
        self.value = np.asarray(value, dtype=np.float64)
        self.err = np.zeros_like(self.value) if err is None else np.asarray(err, np.float64)
        self.mag = np.abs(self.value) if mag is None else np.asarray(mag, np.float64)
        assert self.err.shape == self.value.shape and self.mag.shape == self.value.shape

    @property
    def shape(self):
        return self.value.shape

    def map(self, function):
        """The same exact transform (a reshape, a transpose) applied to all three arrays."""
        return T(function(self.value), function(self.err), function(self.mag))


# --- padding --------------------------------------------------------------------------------

def output_size_and_padding(size, kernel, stride, dilation, padding):
    """Keras/TF: 'valid' drops what does not fit; 'same' gives ceil(size/stride) outputs with the
    total padding split pad_before = total // 2 (the odd extra pixel goes after)."""
    effective = (kernel - 1) * dilation + 1
    if padding == "valid":
        out = (size - effective) // stride + 1
        return out, 0, 0
    if padding != "same":
        raise ValueError(f"padding {padding!r}")
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return out, total // 2, total - total // 2


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _windows(x, kernel, strides, dilation, padding, fill):
    """NHWC input -> (N, OH, OW, KH, KW, C) windows, padded with `fill`."""
    n, height, width, channels = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    oh, top, bottom = output_size_and_padding(height, kh, sh, dh, padding)
    ow, left, right = output_size_and_padding(width, kw, sw, dw, padding)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
    out = np.empty((n, oh, ow, kh, kw, channels))
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j, :] = padded[:, i * dh:i * dh + (oh - 1) * sh + 1:sh,
                                           j * dw:j * dw + (ow - 1) * sw + 1:sw, :]
    return out


# --- activations ----------------------------------------------------------------------------

def _erf(values):
    return np.vectorize(math.erf, otypes=[np.float64])(values)


def _sigmoid(values):
    return 0.5 * (1.0 + np.tanh(0.5 * values))


def softmax(t, axis=-1):
    x = t.value
    shifted = x - x.max(axis=axis, keepdims=True)
    exponentials = np.exp(shifted)
    y = exponentials / exponentials.sum(axis=axis, keepdims=True)
    count = x.shape[axis]
    spread = (y * t.err).sum(axis=axis, keepdims=True)
    err = y * (t.err + spread) + (count + ACTIVATION_ULPS) * U * y + U * np.abs(shifted) * y
    return T(y, err)


def activation(name, t):
    """keras.activations.<name> (the string identifiers Keras configs carry)."""
    x, e = t.value, t.err
    if name in (None, "linear"):
        return t
    if name == "relu":
        return T(np.maximum(x, 0.0), e)
    if name == "sigmoid":
        y = _sigmoid(x)
        return T(y, 0.25 * e + ACTIVATION_ULPS * U * y)
    if name == "tanh":
        y = np.tanh(x)
        return T(y, e + ACTIVATION_ULPS * U * np.abs(y))
    if name == "gelu":  # Keras' default approximate=False: x·Φ(x) with the exact erf
        y = 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
        return T(y, 1.13 * e + ACTIVATION_ULPS * U * np.abs(x))  # max |gelu'| = 1.1289
    if name in ("swish", "silu"):
        y = x * _sigmoid(x)
        return T(y, 1.1 * e + ACTIVATION_ULPS * U * np.abs(x))  # max |swish'| = 1.0998
    if name == "softmax":
        return softmax(t, -1)
    raise ValueError(f"activation {name!r} is not in the reference")


def relu_layer(t, max_value=None, negative_slope=0.0, threshold=0.0):
    """keras.layers.ReLU: x where x > threshold, else 0 (the Keras code keeps x only strictly above
    the threshold), clipped to max_value, minus negative_slope·max(threshold - x, 0)."""
    x = t.value
    if threshold != 0.0:
        y = np.where(x > threshold, x, 0.0)
    else:
        y = np.maximum(x, 0.0)
    if max_value is not None:
        y = np.minimum(y, max_value)
    negative = np.maximum(threshold - x, 0.0)
    y = y - negative_slope * negative
    err = max(1.0, abs(negative_slope)) * t.err + 2.0 * U * abs(negative_slope) * negative
    if threshold != 0.0:
        err = np.where(np.abs(x - threshold) <= t.err, err + threshold, err)
    return T(y, err)


# --- linear layers --------------------------------------------------------------------------

def conv2d(t, kernel, bias=None, strides=1, padding="valid", dilation_rate=1, groups=1,
           data_format="channels_last", activation_name=None):
    """keras.layers.Conv2D; kernel HWIO with I = in_channels / groups."""
    channels_first = data_format == "channels_first"
    if channels_first:
        t = t.map(lambda a: a.transpose(0, 2, 3, 1))
    kh, kw, per_group, filters = kernel.shape
    channels = t.shape[3]
    if channels != per_group * groups or filters % groups:
        raise ValueError("kernel does not match the input channels and groups")
    outs_per_group = filters // groups

    def apply(values, weights):
        windows = _windows(values, (kh, kw), _pair(strides), _pair(dilation_rate), padding, 0.0)
        n, oh, ow = windows.shape[:3]
        windows = windows.reshape(n, oh, ow, kh, kw, groups, per_group)
        grouped = weights.reshape(kh, kw, per_group, groups, outs_per_group)
        out = np.einsum("nhwijgc,ijcgo->nhwgo", windows, grouped)
        return out.reshape(n, oh, ow, filters)

    value = apply(t.value, kernel)
    terms = apply(np.abs(t.value), np.abs(kernel))
    propagated = apply(t.err, np.abs(kernel))
    if bias is not None:
        value = value + bias
        terms = terms + np.abs(bias)
    count = kh * kw * per_group + DOT_EXTRA
    out = activation(activation_name, T(value, propagated + gamma(count) * terms, terms))
    if channels_first:
        out = out.map(lambda a: a.transpose(0, 3, 1, 2))
    return out


def depthwise_conv2d(t, depthwise_kernel, bias=None, strides=1, padding="valid",
                     dilation_rate=1, data_format="channels_last", activation_name=None):
    """keras.layers.DepthwiseConv2D: kernel (kh, kw, C, M); output channel c·M + m is input
    channel c convolved with depthwise_kernel[:, :, c, m], i.e. a grouped convolution with C
    groups of one input channel and M outputs each."""
    kh, kw, channels, multiplier = depthwise_kernel.shape
    grouped = depthwise_kernel.reshape(kh, kw, 1, channels * multiplier)
    return conv2d(t, grouped, bias, strides, padding, dilation_rate, channels, data_format,
                  activation_name)


def dense(t, kernel, bias=None, activation_name=None):
    """keras.layers.Dense: kernel (in, out) applied to the last axis of any rank >= 2 input."""
    value = np.tensordot(t.value, kernel, axes=([-1], [0]))
    terms = np.tensordot(np.abs(t.value), np.abs(kernel), axes=([-1], [0]))
    propagated = np.tensordot(t.err, np.abs(kernel), axes=([-1], [0]))
    if bias is not None:
        value = value + bias
        terms = terms + np.abs(bias)
    count = kernel.shape[0] + DOT_EXTRA
    return activation(activation_name, T(value, propagated + gamma(count) * terms, terms))


# --- BatchNormalization ---------------------------------------------------------------------

def batch_normalization_is_fused(rank, axis):
    """TF 2 / tf_keras with fused=None: the fused kernel runs for rank-4 inputs normalised over
    axis 1 (NCHW) or 3 (NHWC) (and rank 5, unused here)."""
    return rank == 4 and axis % rank in (1, 3)


def batch_normalization_epsilon(rank, axis, epsilon):
    fused = batch_normalization_is_fused(rank, axis)
    return max(epsilon, FUSED_MIN_EPSILON) if fused else epsilon


def _channel_view(values, axis):
    """(values with the channel axis last, flattened to (n, C))."""
    moved = np.moveaxis(values, axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def _broadcast(per_channel, rank, axis):
    shape = [1] * rank
    shape[axis] = per_channel.shape[0]
    return per_channel.reshape(shape)


def batch_normalization_inference(t, gamma_, beta, moving_mean, moving_variance, axis=-1,
                                  epsilon=1e-3):
    rank = len(t.shape)
    axis = axis % rank
    eps = batch_normalization_epsilon(rank, axis, epsilon)
    scale = gamma_ / np.sqrt(moving_variance + eps)
    s = _broadcast(scale, rank, axis)
    mean = _broadcast(moving_mean, rank, axis)
    b = _broadcast(beta, rank, axis)
    y = (t.value - mean) * s + b
    magnitude = np.abs(s) * t.mag + np.abs(mean * s) + np.abs(b)
    err = np.abs(s) * t.err + BN_ULPS * U * magnitude
    return T(y, err, magnitude)


class MovingUpdate:
    """One moving statistic after a training-mode call: exact float64 value and its bound."""

    def __init__(self, value, err):
        self.value = value
        self.err = err


def _moving_average(old, old_err, value, value_err, momentum):
    decay = 1.0 - momentum
    new = old - (old - value) * decay
    err = ((1.0 - decay) * old_err + decay * value_err
           + UPDATE_ULPS * U * np.maximum(np.abs(old), np.abs(value))
           + DECAY_ULPS * U * np.abs(old - value))
    return MovingUpdate(new, err)


def batch_normalization_training(t, gamma_, beta, moving_mean, moving_variance, axis=-1,
                                 epsilon=1e-3, momentum=0.99):
    """Training mode: normalise with the batch mean and biased variance; return the output and
    the updated moving statistics. On the fused path (rank 4, axis 1 or 3) epsilon is raised to
    1.001e-5 and the moving variance receives the Bessel-corrected n/(n-1) batch variance; the
    generic path uses the biased variance."""
    rank = len(t.shape)
    axis = axis % rank
    fused = batch_normalization_is_fused(rank, axis)
    eps = batch_normalization_epsilon(rank, axis, epsilon)
    x = _channel_view(t.value, axis)
    e = _channel_view(t.err, axis)
    n = x.shape[0]
    mean = x.mean(axis=0)
    centered = x - mean
    variance = (centered ** 2).mean(axis=0)
    stddev = np.sqrt(variance + eps)

    mean_err = gamma(n + 2) * np.abs(x).mean(axis=0) + e.mean(axis=0)
    variance_err = (2.0 * gamma(n + 4) * (x ** 2).mean(axis=0) + mean_err ** 2
                    + 2.0 * (np.abs(centered) * e).mean(axis=0))
    normalized = centered / stddev
    y = gamma_ * normalized + beta
    magnitude = np.abs(gamma_ * normalized) + np.abs(beta)
    err = (np.abs(gamma_) / stddev * (e + mean_err)
           + np.abs(gamma_ * normalized) * variance_err / (2.0 * stddev ** 2)
           + BN_ULPS * U * magnitude)

    def back(values):
        moved_shape = list(np.moveaxis(t.value, axis, -1).shape)
        return np.moveaxis(values.reshape(moved_shape), -1, axis)

    bessel = n / max(n - 1, 1) if fused else 1.0
    updates = {
        "moving_mean": _moving_average(moving_mean, 0.0, mean, mean_err, momentum),
        "moving_variance": _moving_average(moving_variance, 0.0, variance * bessel,
                                           variance_err * bessel, momentum),
    }
    return T(back(y), back(err), back(magnitude)), updates


# --- merging, pooling, reshaping ------------------------------------------------------------

def add(tensors):
    value = sum(t.value for t in tensors)
    magnitude = sum(t.mag for t in tensors)
    err = sum(t.err for t in tensors) + 2.0 * (len(tensors) - 1) * U * magnitude
    return T(value, err, magnitude)


def multiply(tensors):
    result = tensors[0]
    for other in tensors[1:]:
        a, b = result, other
        value = a.value * b.value
        err = (np.abs(b.value) * a.err + np.abs(a.value) * b.err + a.err * b.err
               + 2.0 * U * np.abs(value))
        result = T(value, err)
    return result


def concatenate(tensors, axis=-1):
    return T(np.concatenate([t.value for t in tensors], axis=axis),
             np.concatenate([t.err for t in tensors], axis=axis),
             np.concatenate([t.mag for t in tensors], axis=axis))


def _pool_layout(t, data_format, function):
    if data_format == "channels_first":
        t = t.map(lambda a: a.transpose(0, 2, 3, 1))
        out = function(t)
        return out.map(lambda a: a.transpose(0, 3, 1, 2))
    return function(t)


def max_pooling2d(t, pool_size=2, strides=None, padding="valid", data_format="channels_last"):
    """Padding takes part as -inf (never the maximum)."""
    pool = _pair(pool_size)
    stride = _pair(strides if strides is not None else pool_size)

    def run(tensor):
        windows = _windows(tensor.value, pool, stride, (1, 1), padding, -np.inf)
        err = _windows(tensor.err, pool, stride, (1, 1), padding, 0.0)
        return T(windows.max(axis=(3, 4)), err.max(axis=(3, 4)))
    return _pool_layout(t, data_format, run)


def average_pooling2d(t, pool_size=2, strides=None, padding="valid",
                      data_format="channels_last"):
    """'same' padding is excluded from the count: each output averages the real pixels only."""
    pool = _pair(pool_size)
    stride = _pair(strides if strides is not None else pool_size)

    def run(tensor):
        def windows(values):
            return _windows(values, pool, stride, (1, 1), padding, 0.0)
        ones = np.ones(tensor.shape[:3] + (1,))
        count = windows(ones).sum(axis=(3, 4))
        mean = windows(tensor.value).sum(axis=(3, 4)) / count
        err = (windows(tensor.err).sum(axis=(3, 4)) / count
               + gamma(count + 2) * windows(np.abs(tensor.value)).sum(axis=(3, 4)) / count)
        return T(mean, err)
    return _pool_layout(t, data_format, run)


def global_average_pooling2d(t, data_format="channels_last", keepdims=False):
    axes = (1, 2) if data_format == "channels_last" else (2, 3)
    count = t.shape[axes[0]] * t.shape[axes[1]]
    value = t.value.mean(axis=axes, keepdims=keepdims)
    err = (t.err.mean(axis=axes, keepdims=keepdims)
           + gamma(count + 2) * np.abs(t.value).mean(axis=axes, keepdims=keepdims))
    return T(value, err)


def flatten(t):
    """channels_last Flatten: row-major over every axis but the batch."""
    return t.map(lambda a: a.reshape(a.shape[0], -1))


def reshape(t, target_shape):
    return t.map(lambda a: a.reshape((a.shape[0],) + tuple(target_shape)))
