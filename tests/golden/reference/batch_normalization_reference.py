"""An independent NumPy reference of tf.keras BatchNormalization as TensorFlow 1.15 defines it.

Written from ../shared/spec/tf-batchnorm-semantics.md (the section numbers below are that file's)
and the texts of keel's issues 4 and 5, never from keel's C++ code, so that the golden tests compare
two independent readings of the same specification.

What it models:
  * the construction checks (§2, plus keel's own: NaN or negative epsilon, momentum outside [0, 1],
    rmin > rmax), the build checks (§3) and the fused decision of the three behaviours "v2", "v1"
    and "tf_keras" (§4, §11);
  * the effective training flag (§5);
  * training and inference outputs on the fused (§6a) and generic (§6b) paths, batch
    renormalization (§6c), virtual batches (§6d), adjustment (§6e), multi-axis, center/scale off;
  * the moving-statistic updates with TensorFlow's float32 rounding (§6.0): every variable is
    float32 and each update is evaluated as float32 operations on float32 operands;
  * keel's decision for an empty batch (§6i): empty output, variables unchanged.

Outputs are exact: statistics and the affine transform are evaluated in float64 on the float64
value of the (already dtype-representable) input, so the result is "the result computed in double
from the same inputs" of keel's numeric contract.
"""

import math
from dataclasses import dataclass, field

import numpy as np

FUSED_EPSILON_FLOOR = 1.001e-5  # §6a.1: nn.fused_batch_norm raises smaller epsilons to this.
BEHAVIORS = ("v2", "v1", "tf_keras", "keras3")
INPUT_DTYPES = ("float32", "bfloat16", "float16")

CONFIG_KEYS = frozenset({
    "name", "trainable", "dtype", "axis", "momentum", "epsilon", "center", "scale",
    "beta_initializer", "gamma_initializer", "moving_mean_initializer",
    "moving_variance_initializer", "beta_regularizer", "gamma_regularizer", "beta_constraint",
    "gamma_constraint", "renorm", "renorm_clipping", "renorm_momentum", "fused",
    "virtual_batch_size", "behavior",
})

# §9: Keras initializer names. Only the constant ones can be reproduced outside TensorFlow's
# random streams; the others are accepted (they are valid configurations) but a case using them
# must override the variable through the script's "variables".
_CONSTANT_INITIALIZERS = {"zeros": 0.0, "zero": 0.0, "Zeros": 0.0, "ones": 1.0, "one": 1.0,
                          "Ones": 1.0, "constant": 0.0, "Constant": 0.0}
_RANDOM_INITIALIZERS = frozenset({
    "random_uniform", "uniform", "RandomUniform", "random_normal", "normal", "RandomNormal",
    "truncated_normal", "TruncatedNormal", "VarianceScaling", "glorot_uniform", "GlorotUniform",
    "glorot_normal", "GlorotNormal", "he_normal", "he_uniform", "lecun_normal", "lecun_uniform",
    "identity", "Identity", "orthogonal", "Orthogonal",
})
# §7, §8 (tf_keras also knows L1 and L2).
_REGULARIZERS = frozenset({"l1", "l2", "l1_l2", "L1L2", "L1", "L2"})
_CONSTRAINTS = frozenset({
    "max_norm", "MaxNorm", "maxnorm", "non_neg", "NonNeg", "nonneg", "unit_norm", "UnitNorm",
    "unitnorm", "min_max_norm", "MinMaxNorm", "radial_constraint", "RadialConstraint",
})


class LayerError(Exception):
    """A failure keel must report: the stage and the error categories that fit it."""

    def __init__(self, stage, categories, message):
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.categories = tuple(categories)
        self.message = message


def _construction_error(message, categories=("invalid_argument",)):
    return LayerError("construction", categories, message)


def _build_error(message, categories=("invalid_argument",)):
    return LayerError("build", categories, message)


def _call_error(message, categories=("shape_mismatch", "invalid_argument")):
    return LayerError("call", categories, message)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Initializer:
    """A resolved initializer: a constant fill, or one whose values only TensorFlow can draw."""
    constant: float = None
    random_name: str = None

    def make(self, shape, variable):
        if self.random_name is not None:
            raise ValueError(f"{variable}: initializer '{self.random_name}' is random; the case "
                             "must set this variable through the script's 'variables'")
        return np.full(shape, self.constant, dtype=np.float32)


def _resolve_initializer(identifier, argument):
    if identifier is None:  # §3.7: add_weight's default
        return Initializer(random_name="glorot_uniform")
    if isinstance(identifier, str):
        if identifier in _CONSTANT_INITIALIZERS:
            return Initializer(constant=_CONSTANT_INITIALIZERS[identifier])
        if identifier in _RANDOM_INITIALIZERS:
            return Initializer(random_name=identifier)
        raise _construction_error(f"{argument} = '{identifier}' is not a known initializer")
    if isinstance(identifier, dict) and isinstance(identifier.get("class_name"), str):
        name = identifier["class_name"]
        options = identifier.get("config") or {}
        if name in ("Constant", "constant"):
            value = options.get("value", 0.0)
            if not is_number(value):
                raise ValueError(f"{argument}: only scalar constants are modelled")
            return Initializer(constant=float(value))
        if name in _CONSTANT_INITIALIZERS:
            return Initializer(constant=_CONSTANT_INITIALIZERS[name])
        if name in _RANDOM_INITIALIZERS:
            return Initializer(random_name=name)
        raise _construction_error(f"{argument} = {identifier} is not a known initializer")
    raise _construction_error(f"{argument} = {identifier!r} is not an initializer identifier")


def _check_identifier(identifier, known, argument, kind):
    if identifier is None:
        return
    name = identifier
    if isinstance(identifier, dict):
        name = identifier.get("class_name")
    if not isinstance(name, str) or name not in known:
        raise _construction_error(f"{argument} = {identifier!r} is not a known {kind}")


def float32_ulp(values):
    """Spacing of float32 at |values| (elementwise, as float64)."""
    return np.spacing(np.abs(np.asarray(values, dtype=np.float64)).astype(np.float32)) \
        .astype(np.float64)


def ema_update(variable, value, decay):
    """TF's assign_sub moving average, §6.0: v - (v - f32(value)) * decay, all in float32."""
    v = np.asarray(variable, dtype=np.float32)
    target = np.asarray(value, dtype=np.float64).astype(np.float32)
    delta = (v - target).astype(np.float32) * np.float32(decay)
    return (v - delta.astype(np.float32)).astype(np.float32)


def tf_keras_fused_update(variable, value, factor):
    """Today's fused kernel (§11.2): (1 - f)·old + f·new, evaluated in float32."""
    v = np.asarray(variable, dtype=np.float32)
    target = np.asarray(value, dtype=np.float64).astype(np.float32)
    f = np.float32(factor)
    one_minus = np.float32(np.float32(1.0) - f)
    return (one_minus * v + f * target).astype(np.float32)


def keras3_update(variable, value, momentum):
    """Keras 3's assign(v·momentum + value·(1 - momentum)): float32 tensors times Python floats
    (each converted to float32 once), in float32."""
    v = np.asarray(variable, dtype=np.float32)
    target = np.asarray(value, dtype=np.float64).astype(np.float32)
    kept = (v * np.float32(momentum)).astype(np.float32)
    added = (target * np.float32(1.0 - momentum)).astype(np.float32)
    return (kept + added).astype(np.float32)


def generic_decay(momentum):
    """§6.0 generic path: 1 - momentum in double, then stored as float32."""
    return np.float32(1.0 - momentum)


def fused_decay(momentum):
    """§6.0 1.15 fused path: momentum becomes a float32 tensor first, subtraction in float32."""
    return np.float32(np.float32(1.0) - np.float32(momentum))


@dataclass
class Update:
    """One variable update of a training step, with what its tolerance needs.

    kind "ema": new = old - (old - value)·decay (or the tf_keras fused form, same maths);
    kind "assign_stddev_squared": new = max(source² - epsilon, 0) from the updated `source`.
    `statistic` names the batch quantity behind `value` ("mean", "variance" or "stddev") and
    `statistic_scale` any exact factor applied to it (Bessel's n/(n-1)).
    """
    name: str
    kind: str
    old: np.ndarray
    value: np.ndarray
    new: np.ndarray
    decay: float = 0.0
    statistic: str = None
    statistic_scale: float = 1.0
    source: str = None


@dataclass
class Moments:
    """Batch statistics of one training step in the layer's working shape (keepdims)."""
    mean: np.ndarray          # per group (virtual batches keep the group axis)
    variance: np.ndarray      # biased
    max_deviation: np.ndarray  # max |x - mean| over the reduced elements
    count: int                # n, elements per statistic
    group_axis: int = None    # 1 with virtual batches: the axis averaged for the updates


@dataclass
class StepResult:
    y: np.ndarray
    training: bool            # effective mode: batch statistics used
    updated: bool             # variables were updated
    updates: list = field(default_factory=list)
    moments: Moments = None
    # For tolerances, broadcast to y's shape: |∂y/∂x| (the multiplier applied to x - mean),
    # the mean subtracted, and for renorm's d the multiplier of the mean inside d and its size.
    x_scale: np.ndarray = None
    mean_used: np.ndarray = None
    d_scale: np.ndarray = None
    d_mean: np.ndarray = None
    renorm_r: np.ndarray = None
    renorm_d: np.ndarray = None


class BatchNormalizationReference:
    """One layer: construct (config checks), build (shape checks), then call repeatedly."""

    def __init__(self, config, behavior="v2", has_adjustment=False):
        if behavior not in BEHAVIORS:
            raise LayerError("script", ("invalid_argument",), f"behavior = {behavior!r}")
        self.behavior = behavior
        self.has_adjustment = bool(has_adjustment)
        config = dict(config)
        unknown = set(config) - CONFIG_KEYS
        if unknown:
            raise _construction_error(f"unknown config keys {sorted(unknown)}")
        if "behavior" in config:
            self.behavior = config["behavior"]
            if self.behavior not in BEHAVIORS:
                raise _construction_error(f"behavior = {self.behavior!r}")

        # §2.1: an int or a list of ints; anything else (a string, a float) is a type error.
        axis = config.get("axis", -1)
        if is_int(axis):
            self.axis = axis
        elif isinstance(axis, list) and axis and all(is_int(a) for a in axis):
            self.axis = list(axis)
        else:
            raise _construction_error(f"axis = {axis!r}; expected an int or a list of ints")

        self.momentum = config.get("momentum", 0.99)
        self.epsilon = config.get("epsilon", 1e-3)
        self.center = bool(config.get("center", True))
        self.scale = bool(config.get("scale", True))
        self.trainable = bool(config.get("trainable", True))
        self.dtype = config.get("dtype") or "float32"
        if self.dtype not in INPUT_DTYPES:
            raise _construction_error(f"dtype = {self.dtype!r}")

        # §2.2: identifiers resolved through Keras' get(); unknown names are errors.
        self.initializers = {
            "gamma": _resolve_initializer(config.get("gamma_initializer", "ones"),
                                          "gamma_initializer"),
            "beta": _resolve_initializer(config.get("beta_initializer", "zeros"),
                                         "beta_initializer"),
            "moving_mean": _resolve_initializer(config.get("moving_mean_initializer", "zeros"),
                                                "moving_mean_initializer"),
            "moving_variance": _resolve_initializer(
                config.get("moving_variance_initializer", "ones"), "moving_variance_initializer"),
        }
        for key in ("beta_regularizer", "gamma_regularizer"):
            _check_identifier(config.get(key), _REGULARIZERS, key, "regularizer")
        for key in ("beta_constraint", "gamma_constraint"):
            _check_identifier(config.get(key), _CONSTRAINTS, key, "constraint")

        # keel's own checks, which TF 1.15 lacks (issue 4).
        if not is_number(self.momentum) or not 0.0 <= self.momentum <= 1.0:
            raise _construction_error(f"momentum = {self.momentum!r}; expected a value in [0, 1]")
        if not is_number(self.epsilon) or math.isnan(self.epsilon) or self.epsilon < 0:
            raise _construction_error(f"epsilon = {self.epsilon!r}; expected a value >= 0")

        self.renorm = bool(config.get("renorm", False))
        self.renorm_clipping = {}
        self.renorm_momentum = 0.99
        if self.renorm:
            clipping = config.get("renorm_clipping") or {}
            if not isinstance(clipping, dict):
                raise _construction_error(f"renorm_clipping = {clipping!r}")
            self.renorm_clipping = dict(clipping)
            self.renorm_momentum = config.get("renorm_momentum", 0.99)
            if not is_number(self.renorm_momentum) or not 0.0 <= self.renorm_momentum <= 1.0:
                raise _construction_error(
                    f"renorm_momentum = {self.renorm_momentum!r}; expected a value in [0, 1]")
            rmin, rmax = clipping.get("rmin"), clipping.get("rmax")
            if rmin is not None and rmax is not None and rmin > rmax:
                raise _construction_error(f"renorm_clipping rmin = {rmin} > rmax = {rmax}")

        self.virtual_batch_size = config.get("virtual_batch_size")
        if self.virtual_batch_size is not None and not is_int(self.virtual_batch_size):
            raise _construction_error(f"virtual_batch_size = {self.virtual_batch_size!r}")

        # §2.3 (V2) and §11.1 (tf_keras): fused eligibility on the raw axis.
        fused = config.get("fused")
        if fused is not None and not isinstance(fused, bool):
            raise _construction_error(f"fused = {fused!r}; expected true, false or null")
        if self.behavior == "keras3":
            # Keras 3 (spec §11.8): one int axis, none of renorm, virtual batches, adjustment or
            # fused; the generic arithmetic always.
            axes = [self.axis] if is_int(self.axis) else self.axis
            if len(axes) != 1 or self.renorm or self.virtual_batch_size is not None \
                    or self.has_adjustment or fused:
                raise _construction_error("keras3: an argument Keras 3 does not have")
            fused = False
        elif self.behavior in ("v2", "tf_keras"):
            if fused:
                reason = self._fused_ineligibility(self.axis)
                if reason:
                    raise _construction_error(f"fused=true but {reason}",
                                              ("invalid_argument", "unsupported"))
            elif fused is None and self._fused_ineligibility(self.axis):
                fused = False
        elif fused is None:
            fused = True  # V1: None means "fused when possible", decided in build
        self.fused_request = fused

        # §2.4: renorm_clipping keys.
        if self.renorm and set(self.renorm_clipping) - {"rmax", "rmin", "dmax"}:
            raise _construction_error(f"renorm_clipping keys {sorted(self.renorm_clipping)}")

        self.built = False
        self.fused = False
        self.variables = {}

    # --- §2.3, §4 -----------------------------------------------------------------------------

    def _fused_axes(self):
        return (-4, -3, -1, 1, 3, 4) if self.behavior == "tf_keras" else (-3, -1, 1, 3)

    def _fused_ineligibility(self, axis):
        """The first reason fused cannot be used, in TF's order, or None."""
        if self.renorm:
            return "renorm is on"
        axes = [axis] if is_int(axis) else axis
        if len(axes) > 1 or axes[0] not in self._fused_axes():
            return f"axis {axis} is not a single axis among {self._fused_axes()}"
        if self.virtual_batch_size is not None:
            return "virtual_batch_size is set"
        if self.has_adjustment:
            return "adjustment is set"
        return None

    # --- §3 -----------------------------------------------------------------------------------

    def build(self, input_shape):
        rank = len(input_shape)
        if rank == 0:
            raise _build_error("input rank 0 (undefined rank)",
                               ("invalid_argument", "shape_mismatch", "unsupported"))
        axes = [self.axis] if is_int(self.axis) else list(self.axis)
        resolved = []
        for a in axes:
            r = a + rank if a < 0 else a
            if not 0 <= r < rank:
                raise _build_error(f"axis {a} out of range for rank {rank}",
                                   ("invalid_argument", "shape_mismatch"))
            resolved.append(r)
        if len(set(resolved)) != len(resolved):
            raise _build_error(f"duplicate axes {axes} -> {resolved} for rank {rank}",
                               ("invalid_argument", "shape_mismatch"))
        vbs = self.virtual_batch_size
        if vbs is not None:
            if vbs <= 0:
                raise _build_error(f"virtual_batch_size = {vbs}; expected > 0")
            if 0 in resolved:
                raise _build_error("virtual_batch_size with the batch axis normalized")
            if self.has_adjustment:
                raise _build_error("virtual_batch_size together with adjustment",
                                   ("invalid_argument", "unsupported"))

        self.fused = self._decide_fused(rank, resolved)

        self.rank = rank
        self.axes = sorted(resolved)
        self.axis_sizes = {a: input_shape[a] for a in self.axes}
        if len(self.axes) == 1 and vbs is None:
            self.param_shape = (input_shape[self.axes[0]],)
        else:
            shape = [input_shape[i] if i in self.axis_sizes else 1 for i in range(rank)]
            if vbs is not None:
                shape.insert(1, 1)
            self.param_shape = tuple(shape)

        names = []
        if self.scale:
            names.append("gamma")
        if self.center:
            names.append("beta")
        names += ["moving_mean", "moving_variance"]
        self.variables = {}
        self.unreproducible = {}
        for name in names:
            try:
                self.variables[name] = self.initializers[name].make(self.param_shape, name)
            except ValueError as error:
                self.variables[name] = None
                self.unreproducible[name] = str(error)
        if self.renorm:
            # §3.7: moving_stddev and renorm_stddev start at sqrt(moving_variance initializer),
            # evaluated as a float32 sqrt; renorm_mean at the moving_mean initializer.
            variance0 = self.variables["moving_variance"]
            stddev0 = None if variance0 is None else np.sqrt(variance0).astype(np.float32)
            self.variables["moving_stddev"] = stddev0
            self.variables["renorm_mean"] = None if self.variables["moving_mean"] is None \
                else self.variables["moving_mean"].copy()
            self.variables["renorm_stddev"] = None if stddev0 is None else stddev0.copy()
        self.built = True

    def _decide_fused(self, rank, resolved):
        request = self.fused_request
        if request is False:
            return False
        if self.behavior == "v2":
            if request is None:
                return rank == 4
            if rank != 4:
                raise _build_error(f"fused=true needs a rank-4 input, got rank {rank}",
                                   ("invalid_argument", "unsupported"))
            return True
        if self.behavior == "v1":
            # Eligibility re-checked on the resolved axes: only 1 or 3 remain on rank 4.
            return rank == 4 and self._fused_ineligibility(resolved) is None
        # tf_keras: ranks 4 and 5; the data format must then be NCHW/NHWC/NCDHW/NDHWC.
        if request is None:
            fused = rank in (4, 5)
        elif rank not in (4, 5):
            raise _build_error(f"fused=true needs a rank-4 or rank-5 input, got rank {rank}",
                               ("invalid_argument", "unsupported"))
        else:
            fused = True
        if not fused:
            return False
        if resolved == [1] or (rank == 4 and resolved == [3]) or (rank == 5 and resolved == [4]):
            return True
        if rank == 5:
            return False
        raise _build_error(f"fused on rank 4 with axis {resolved} (tf_keras 'Unsupported axis')",
                           ("invalid_argument", "unsupported"))

    def set_variables(self, values):
        """The script's "variables": set after build, replacing initializer values."""
        for name, value in values.items():
            if name not in self.variables:
                raise _build_error(f"no variable '{name}' (have {list(self.variables)})")
            array = np.asarray(value)
            if tuple(array.shape) != tuple(self.param_shape):
                raise _build_error(f"variable '{name}' shape {array.shape}, expected "
                                   f"{self.param_shape}", ("shape_mismatch", "invalid_argument"))
            self.variables[name] = array.astype(np.float32)

    def variable_names(self):
        return list(self.variables)

    def state(self):
        missing = [name for name, value in self.variables.items() if value is None]
        if missing:
            raise ValueError("; ".join(self.unreproducible[name] for name in missing))
        return {name: value.copy() for name, value in self.variables.items()}

    def set_state(self, state):
        for name in self.variables:
            self.variables[name] = np.asarray(state[name], dtype=np.float32).reshape(
                self.param_shape)

    # --- §6 -----------------------------------------------------------------------------------

    def epsilon_used(self):
        if self.fused:
            return self.epsilon if self.epsilon > FUSED_EPSILON_FLOOR else FUSED_EPSILON_FLOOR
        return float(self.epsilon)

    def call(self, x, training=False, adjustment=None):
        """One call. `x` holds dtype-representable values; returns a StepResult (exact y)."""
        x = np.asarray(x, dtype=np.float64)
        if not self.built:
            self.build(x.shape)
        self.state()  # every variable must be known from here on
        if x.ndim != self.rank:
            raise _call_error(f"input rank {x.ndim}, the layer was built for rank {self.rank}")
        for a, size in self.axis_sizes.items():
            if x.shape[a] != size:
                raise _call_error(f"axis {a} has size {x.shape[a]}, the layer was built for {size}")

        training = bool(training)
        # §5: V2 and tf_keras: training AND trainable; V1: batch statistics, no updates.
        if self.behavior == "v1":
            use_batch_statistics = training
        else:
            use_batch_statistics = training and self.trainable
        update = training and self.trainable

        vbs = self.virtual_batch_size
        batch = x.shape[0]
        if vbs is not None and (use_batch_statistics or self.behavior != "tf_keras") \
                and batch % vbs != 0:
            raise _call_error(f"batch {batch} not divisible by virtual_batch_size {vbs}")

        if self.has_adjustment and use_batch_statistics and adjustment is None:
            raise _call_error("training call of a layer with adjustment, without its arrays",
                              ("invalid_argument",))

        if batch == 0:  # §6i, keel's decision: empty output, nothing updated.
            return StepResult(y=np.zeros(x.shape), training=use_batch_statistics, updated=False)

        if use_batch_statistics:
            return self._train(x, update, adjustment)
        return self._infer(x)

    def _broadcast_param(self, value, working_rank):
        """A parameter-shaped array viewed so it broadcasts against the working tensor."""
        if len(self.param_shape) == 1:
            shape = [1] * working_rank
            shape[self._working_axes()[0]] = self.param_shape[0]
            return value.reshape(shape)
        return value.reshape(self.param_shape)

    def _working_axes(self):
        return [a + 1 for a in self.axes] if self.virtual_batch_size is not None else self.axes

    def _affine(self, working_rank):
        v = self.variables
        gamma = self._broadcast_param(v["gamma"].astype(np.float64), working_rank) \
            if self.scale else None
        beta = self._broadcast_param(v["beta"].astype(np.float64), working_rank) \
            if self.center else None
        return gamma, beta

    def _infer(self, x):
        # §6f: moving statistics, the path's epsilon; renorm and adjustment play no role.
        # Virtual batches only reshape (and in 1.15 demand divisibility, checked above).
        v = self.variables
        working = x
        if self.virtual_batch_size is not None:
            # Any reshape with the extra axis gives the same numbers; [B, 1, ...] is tf_keras'
            # (the 1.15 divisibility demand was checked by the caller).
            working = x.reshape((x.shape[0], 1) + x.shape[1:])
        gamma, beta = self._affine(working.ndim)
        mean = self._broadcast_param(v["moving_mean"].astype(np.float64), working.ndim)
        variance = self._broadcast_param(v["moving_variance"].astype(np.float64), working.ndim)
        inv = 1.0 / np.sqrt(variance + self.epsilon_used())
        scale = inv if gamma is None else inv * gamma
        y = (working - mean) * scale
        if beta is not None:
            y = y + beta
        full = working.shape
        return StepResult(
            y=y.reshape(x.shape), training=False, updated=False,
            x_scale=np.abs(np.broadcast_to(scale, full)).reshape(x.shape),
            mean_used=np.broadcast_to(mean, full).reshape(x.shape))

    def _working(self, x):
        vbs = self.virtual_batch_size
        if vbs is None:
            return x
        # §6d: row-major reshape to [vbs, B/vbs, ...]: group j = samples j, j + B/vbs, ...
        return x.reshape((vbs, x.shape[0] // vbs) + x.shape[1:])

    def _moments(self, working):
        axes = self._working_axes()
        reduce = tuple(i for i in range(working.ndim) if i not in axes
                       and not (self.virtual_batch_size is not None and i == 1))
        count = int(np.prod([working.shape[i] for i in reduce]))
        # §6.0: two passes, biased variance.
        mean = working.mean(axis=reduce, keepdims=True)
        deviation = working - mean
        variance = (deviation * deviation).mean(axis=reduce, keepdims=True)
        max_deviation = np.abs(deviation).max(axis=reduce, keepdims=True)
        return Moments(mean=mean, variance=variance, max_deviation=max_deviation, count=count,
                       group_axis=1 if self.virtual_batch_size is not None else None)

    def _to_param(self, value):
        return np.asarray(value).reshape(self.param_shape)

    def _train(self, x, update, adjustment):
        working = self._working(x)
        moments = self._moments(working)
        eps = self.epsilon_used()
        gamma, beta = self._affine(working.ndim)
        if self.fused:
            return self._train_fused(x, working, moments, gamma, beta, eps, update)

        # §6b/§6e: S and O composed from adjustment, gamma and beta.
        scale, offset = gamma, beta
        if adjustment is not None:
            adj_scale = np.asarray(adjustment[0], dtype=np.float64)
            adj_bias = np.asarray(adjustment[1], dtype=np.float64)
            scale = adj_scale if gamma is None else adj_scale * gamma
            offset = adj_bias if gamma is None else adj_bias * gamma
            if beta is not None:
                offset = offset + beta
            for part in (scale, offset):
                try:
                    shape = np.broadcast_shapes(part.shape, working.shape)
                except ValueError:
                    shape = None
                if shape != working.shape:
                    raise _call_error(f"adjustment of shape {part.shape} does not broadcast "
                                      f"onto the input shape {working.shape}")
        if scale is None:
            scale = np.ones([1] * working.ndim)
        if offset is None:
            offset = np.zeros([1] * working.ndim)

        if moments.group_axis is not None:
            # §6d: one update with the mean over groups of the per-group moments.
            batch_mean = moments.mean.mean(axis=1, keepdims=True)
            batch_variance = moments.variance.mean(axis=1, keepdims=True)
        else:
            batch_mean, batch_variance = moments.mean, moments.variance

        group_stddev = np.sqrt(moments.variance + eps)
        x_hat = (working - moments.mean) / group_stddev
        result = StepResult(y=None, training=True, updated=update, moments=moments)
        full = working.shape
        if self.renorm:
            r, d, renorm_stddev = self._renorm_correction(batch_mean, batch_variance, eps)
            y = (x_hat * r + d) * scale + offset
            result.renorm_r = self._to_param(r)
            result.renorm_d = self._to_param(d)
            x_scale = np.abs(scale) * r / group_stddev
            result.d_scale = np.abs(np.broadcast_to(scale / renorm_stddev, full)).reshape(x.shape)
            renorm_mean = self.variables["renorm_mean"].reshape(batch_mean.shape)
            result.d_mean = np.broadcast_to(np.maximum(np.abs(batch_mean), np.abs(renorm_mean)),
                                            full).reshape(x.shape)
        else:
            y = x_hat * scale + offset
            x_scale = np.abs(scale) / group_stddev
        result.y = y.reshape(x.shape)
        result.x_scale = np.broadcast_to(x_scale, full).reshape(x.shape)
        result.mean_used = np.broadcast_to(moments.mean, full).reshape(x.shape)

        if update:
            self._update_generic(result, batch_mean, batch_variance, eps)
        return result

    def renorm_stddev_floor(self, eps):
        """§6c.2: "avoid divide by zero early on in training"."""
        return math.sqrt(eps)

    def _renorm_correction(self, mean, variance, eps):
        """§6c.1–4: r and d from the pre-update renorm statistics, floored, then clipped."""
        v = self.variables
        stddev = np.sqrt(variance + eps)
        renorm_mean = v["renorm_mean"].astype(np.float64).reshape(mean.shape)
        renorm_stddev = np.maximum(v["renorm_stddev"].astype(np.float64).reshape(mean.shape),
                                   self.renorm_stddev_floor(eps))
        r = stddev / renorm_stddev
        d = (mean - renorm_mean) / renorm_stddev
        clip = self.renorm_clipping
        if clip.get("rmin") is not None:
            r = np.maximum(r, clip["rmin"])
        if clip.get("rmax") is not None:
            r = np.minimum(r, clip["rmax"])
        if clip.get("dmax") is not None:
            d = np.maximum(d, -clip["dmax"])
            d = np.minimum(d, clip["dmax"])
        return r, d, renorm_stddev

    def _ema(self, result, name, value, decay, statistic, statistic_scale=1.0):
        old = self.variables[name]
        if self.behavior == "keras3":
            # Same maths as TF's form (the tolerance is shared), Keras 3's rounding.
            new = keras3_update(old, self._to_param(value), self.momentum)
        else:
            new = ema_update(old, self._to_param(value), decay)
        result.updates.append(Update(name=name, kind="ema", old=old, value=self._to_param(value),
                                     new=new, decay=float(decay), statistic=statistic,
                                     statistic_scale=statistic_scale))
        self.variables[name] = new

    def _update_generic(self, result, mean, variance, eps):
        decay = generic_decay(self.momentum)
        if not self.renorm:
            # §6b.5: mean, then the biased variance.
            self._ema(result, "moving_mean", mean, decay, "mean")
            self._ema(result, "moving_variance", variance, decay, "variance")
            return
        stddev = np.sqrt(variance + eps)
        # §6c.5: renorm statistics with renorm_momentum (the raw variables, not the floor).
        renorm_decay = generic_decay(self.renorm_momentum)
        self._ema(result, "renorm_mean", mean, renorm_decay, "mean")
        self._ema(result, "renorm_stddev", stddev, renorm_decay, "stddev")
        # §6c.7: inference statistics with momentum; moving_variance assigned from the new
        # moving_stddev as relu(stddev² - epsilon), in float32.
        self._ema(result, "moving_mean", mean, decay, "mean")
        self._ema(result, "moving_stddev", stddev, decay, "stddev")
        moving_stddev = self.variables["moving_stddev"]
        squared = (moving_stddev * moving_stddev).astype(np.float32)
        new_variance = np.maximum((squared - np.float32(eps)).astype(np.float32),
                                  np.float32(0.0)).astype(np.float32)
        result.updates.append(Update(
            name="moving_variance", kind="assign_stddev_squared",
            old=self.variables["moving_variance"], value=moving_stddev.astype(np.float64),
            new=new_variance, source="moving_stddev"))
        self.variables["moving_variance"] = new_variance

    def _train_fused(self, x, working, moments, gamma, beta, eps, update):
        # §6a: biased variance in the output, Bessel-corrected variance in the update,
        # epsilon already raised to the fused floor.
        inv = 1.0 / np.sqrt(moments.variance + eps)
        scale = inv if gamma is None else inv * gamma
        y = (working - moments.mean) * scale
        if beta is not None:
            y = y + beta
        result = StepResult(y=y.reshape(x.shape), training=True, updated=update,
                            moments=moments)
        full = working.shape
        result.x_scale = np.abs(np.broadcast_to(scale, full)).reshape(x.shape)
        result.mean_used = np.broadcast_to(moments.mean, full).reshape(x.shape)
        if update:
            n = moments.count
            bessel = n / max(n - 1, 1)
            for name, value, statistic, factor in (
                    ("moving_mean", moments.mean, "mean", 1.0),
                    ("moving_variance", moments.variance * bessel, "variance", bessel)):
                old = self.variables[name]
                target = self._to_param(value)
                if self.behavior == "tf_keras":
                    decay = np.float32(1.0 - self.momentum)  # exponential_avg_factor
                    new = tf_keras_fused_update(old, target, decay)
                else:
                    decay = fused_decay(self.momentum)
                    new = ema_update(old, target, decay)
                result.updates.append(Update(name=name, kind="ema", old=old, value=target,
                                             new=new, decay=float(decay), statistic=statistic,
                                             statistic_scale=factor))
                self.variables[name] = new
        return result


def round_to_dtype(values, dtype):
    """Round-to-nearest-even into `dtype`, returned as float64 (bfloat16 by bit manipulation)."""
    values = np.asarray(values, dtype=np.float64)
    if dtype == "float32":
        return values.astype(np.float32).astype(np.float64)
    if dtype == "float16":
        return values.astype(np.float16).astype(np.float64)
    if dtype == "bfloat16":
        bits = np.atleast_1d(values.astype(np.float32)).view(np.uint32).astype(np.uint64)
        shift = np.uint64(16)
        rounding = np.uint64(0x7FFF) + ((bits >> shift) & np.uint64(1))
        rounded = ((bits + rounding) >> shift << shift).astype(np.uint32)
        return rounded.view(np.float32).astype(np.float64).reshape(values.shape)
    raise ValueError(f"unknown dtype {dtype}")


def dtype_epsilon(dtype):
    """The dtype's machine epsilon, ulp(1): 2^-23, 2^-10, 2^-7."""
    return {"float32": 2.0 ** -23, "float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}[dtype]
