"""The PyTorch peer of the BatchNormalization benchmarks: times torch.nn.functional.batch_norm.

Started once by keel_perf and driven over stdin/stdout, one JSON object per line, so that PyTorch
runs interleaved with keel, oneDNN and the loop, case by case, in the same minutes. The first line
it writes is a greeting: {"torch": version} or {"error": why} when PyTorch cannot be imported.

A request names a raw input file written by keel_perf and the case:
  {"input": path, "layout": "nhwc"|"nchw"|"ncdhw"|"nc"|..., "channels_last": bool, "dims": [...],
   "dtype": "f32"|"bf16", "training": bool, "threads": n, "iterations": k, "check": bool,
   "epsilon": e, "momentum": m,
   "gamma": [...], "beta": [...], "moving_mean": [...], "moving_variance": [...]}
`dims` are the tensor's dimensions in memory order. The reply is {"seconds": total time of k
calls} plus, when "check" is set, "sum": sum(y) and "sum_squares": sum(y^2), with which keel_perf
checks the output; or {"error": why}.
"""

import json
import sys
import time

# Untimed calls before timing, for at least this long: they wake PyTorch's thread team and bring
# the case's data into cache, as the other peers' untimed first call does.
WARM_UP_SECONDS = 0.005


def main():
    try:
        import numpy
        import torch
        import torch.nn.functional as functional
    except ImportError as error:
        print(json.dumps({"error": f"cannot import PyTorch: {error}"}), flush=True)
        return
    print(json.dumps({"torch": torch.__version__}), flush=True)

    loaded = {}  # input path -> tensor, so a case's data is read once for all its requests
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = run(request, loaded, numpy, torch, functional)
        except Exception as error:  # reported to keel_perf, which fails that benchmark
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)


def input_tensor(request, loaded, numpy, torch):
    path = request["input"]
    if path not in loaded:
        loaded.clear()
        bf16 = request["dtype"] == "bf16"
        raw = numpy.fromfile(path, dtype=numpy.int16 if bf16 else numpy.float32)
        tensor = torch.from_numpy(raw.reshape(request["dims"]))
        if bf16:
            tensor = tensor.view(torch.bfloat16)
        # PyTorch's dimension order is always [N, C, ...]; a channels-last tensor (nwc, nhwc,
        # ndhwc) is an [N, C, ...] tensor with channels-last strides, which PyTorch's kernels
        # treat as that memory format.
        if request["channels_last"]:
            rank = tensor.dim()
            tensor = tensor.permute(0, rank - 1, *range(1, rank - 1))
        loaded[path] = tensor
    return loaded[path]


def run(request, loaded, numpy, torch, functional):
    x = input_tensor(request, loaded, numpy, torch)
    torch.set_num_threads(request["threads"])
    parameters = [
        torch.tensor(request[name], dtype=torch.float32)
        for name in ("moving_mean", "moving_variance", "gamma", "beta")
    ]
    moving_mean, moving_variance, gamma, beta = parameters
    training = request["training"]
    # PyTorch's momentum weighs the new batch; Keras' weighs the old moving value.
    momentum = 1.0 - request["momentum"]
    epsilon = request["epsilon"]

    def call():
        return functional.batch_norm(
            x, moving_mean, moving_variance, gamma, beta, training, momentum, epsilon
        )

    warm_up_end = time.perf_counter() + WARM_UP_SECONDS
    y = call()
    while time.perf_counter() < warm_up_end:
        y = call()
    iterations = request["iterations"]
    start = time.perf_counter()
    for _ in range(iterations):
        y = call()
    reply = {"seconds": time.perf_counter() - start}
    if request["check"]:
        wide = y.double()
        reply["sum"] = wide.sum().item()
        reply["sum_squares"] = (wide * wide).sum().item()
    return reply


if __name__ == "__main__":
    main()
