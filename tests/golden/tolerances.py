"""Tolerances of the golden tests, each derived from the arithmetic.

Outputs (keel's numeric contract, issue 4), for every element of a step's output:

    |y - exact| <= 2·ulp(dtype)·max|y| + 64·ε32·max|y| + |∂y/∂μ|·ulp32(μ)

  * ulp(dtype) is the output dtype's machine epsilon (2^-23 f32, 2^-10 f16, 2^-7 bf16): keel
    rounds once to the output dtype, which costs at most half of it relative to |y|;
  * 64·ε32 (ε32 = 2^-23) covers float32 evaluation of the statistics and of the affine transform:
    reductions over the batch, rsqrt, r, d and the adjustment composition;
  * the last term is the price of holding a per-channel mean in float32 (data with mean 1e4 and
    spread 1e-2): the output moves by |∂y/∂μ| per unit of mean error, and the mean can be off
    by one float32 ulp. It applies only where a kernel rounds the mean it subtracts to float32:
    oneDNN in training (result.json's "path"); keel's own kernels keep the batch mean as a hi+lo
    pair, and in inference the mean is the float32 moving_mean itself. With renorm the mean enters
    twice, through x - μ_B (multiplier |S·r/σ_B|) and through d = (μ - renorm_mean)/renorm_stddev
    (multiplier |S/renorm_stddev|), so both terms are added.
  max|y| is over the whole output of the step, as the contract states it.

"exact" is the reference evaluated in float64 on the same inputs: the step's input and the
variables keel held before the step (keel's own previous-step output files). That isolates each
step; the variables themselves are checked against the free-running reference below, so the chain
cannot drift unnoticed.

Variables ("a few float32 ulps of the operands of the update", issue 4). A moving-average update
new = old - (old - value)·decay, evaluated in float32, rounds at most four times (value to f32,
the difference, the product, the subtraction), each by half an ulp of a quantity no larger than
2·max(|old|, |value|); hence 4·ulp32(max(|old|, |value|)) per update. Across steps the errors
carried in `old` shrink by (1 - decay) and those of `value` enter scaled by decay:

    tol_new = (1 - decay)·tol_old + decay·tol_value + 4·ulp32(max(|old|, |value|))

`value` is keel's own batch statistic, so its allowance follows from the output contract (an error
in the mean or variance that the output contract accepts must be accepted here too):
  * batch mean μ:  ulp32(μ) + 64·ε32·max|x - μ|   (the mean rounded to f32, plus float32
    reduction error relative to the spread of the data, as in the output's 64·ε32 term);
  * biased variance σ²:  64·ε32·σ² + tol_μ²   (a two-pass variance around a mean that is off by δ
    is σ² + δ², the first-order term cancelling exactly);
  * Bessel's correction scales both by n/(n-1); virtual batches average the per-group values, so
    the allowance is the average of the per-group ones plus the rounding of the average;
  * stddev s = sqrt(σ² + ε):  tol_σ²/(2s) + ulp32(s).
Renorm's moving_variance = max(moving_stddev² - ε, 0) (an assignment, not an average) inherits
2·|moving_stddev|·tol + tol² from moving_stddev plus 4·ulp32(max(moving_stddev², ε)) of rounding.
Variables that a step does not update keep their tolerance; gamma and beta must stay exact.
"""

import numpy as np

import layer_script  # noqa: F401  (puts the reference on the path, checks numpy)
import batch_normalization_reference as ref

EPS32 = 2.0 ** -23
OUTPUT_DTYPE_ULPS = 2.0
FLOAT32_EVALUATION_EPS32 = 64.0
UPDATE_ULPS = 4.0
STATISTIC_EPS32 = 64.0


def parameters():
    """The constants above, recorded in each case's case.json."""
    return {"output_dtype_ulps": OUTPUT_DTYPE_ULPS,
            "float32_evaluation_eps32": FLOAT32_EVALUATION_EPS32, "update_ulps": UPDATE_ULPS,
            "statistic_eps32": STATISTIC_EPS32, "eps32": EPS32}


def output_tolerance(result, output_dtype, mean_held_in_float32):
    """Per-element allowance for a step's output (see the module text).

    `mean_held_in_float32` says whether the kernel that ran rounds the mean it subtracts to
    float32: oneDNN does (it takes f32 statistics); keel's own kernels carry the batch mean as a
    hi+lo pair and so must meet the contract without the ulp32(μ) term. In inference the mean is
    the f32 moving_mean variable itself, so no kernel rounds it.
    """
    y = result.y
    if y.size == 0:
        return np.zeros(y.shape)
    max_abs = float(np.max(np.abs(y)))
    tolerance = (OUTPUT_DTYPE_ULPS * ref.dtype_epsilon(output_dtype)
                 + FLOAT32_EVALUATION_EPS32 * EPS32) * max_abs
    if mean_held_in_float32:
        tolerance = tolerance + result.x_scale * ref.float32_ulp(result.mean_used)
    if result.d_scale is not None:
        tolerance = tolerance + result.d_scale * ref.float32_ulp(result.d_mean)
    return np.broadcast_to(tolerance, y.shape)


def _group_average(values, moments):
    if moments.group_axis is None:
        return values
    average = values.mean(axis=moments.group_axis, keepdims=True)
    return average + ref.float32_ulp(average)


def statistic_tolerance(moments, statistic, epsilon, scale=1.0):
    """Allowance for keel's value of a batch statistic, in the moments' keepdims shape."""
    mean_tolerance = ref.float32_ulp(moments.mean) + STATISTIC_EPS32 * EPS32 * moments.max_deviation
    if statistic == "mean":
        return _group_average(mean_tolerance, moments)
    variance_tolerance = _group_average(
        STATISTIC_EPS32 * EPS32 * moments.variance + mean_tolerance ** 2, moments)
    if statistic == "variance":
        return scale * variance_tolerance
    if statistic == "stddev":
        variance = _group_average(moments.variance, moments)
        stddev = np.sqrt(variance + epsilon)
        return variance_tolerance / (2.0 * stddev) + ref.float32_ulp(stddev)
    raise ValueError(f"unknown statistic {statistic}")


def propagate_variable_tolerances(layer, result, tolerances):
    """Tolerances of every variable after `result`'s step, from those before it (a dict)."""
    updated = dict(tolerances)
    for update in result.updates:
        old_tolerance = tolerances[update.name]
        if update.kind == "ema":
            value_tolerance = statistic_tolerance(result.moments, update.statistic,
                                                  layer.epsilon_used(), update.statistic_scale)
            value_tolerance = np.asarray(value_tolerance).reshape(update.old.shape)
            rounding = UPDATE_ULPS * ref.float32_ulp(
                np.maximum(np.abs(update.old), np.abs(update.value)))
            updated[update.name] = ((1.0 - update.decay) * old_tolerance
                                    + update.decay * value_tolerance + rounding)
        elif update.kind == "assign_stddev_squared":
            stddev = update.value
            stddev_tolerance = updated[update.source]
            rounding = UPDATE_ULPS * ref.float32_ulp(
                np.maximum(stddev * stddev, layer.epsilon_used()))
            updated[update.name] = (2.0 * np.abs(stddev) * stddev_tolerance
                                    + stddev_tolerance ** 2 + rounding)
        else:
            raise ValueError(f"unknown update kind {update.kind}")
    return updated
