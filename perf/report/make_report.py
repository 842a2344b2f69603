#!/usr/bin/python3
"""Turns keel_perf's Google Benchmark JSON into the perf report (docs/perf.md).

  make_report.py RAW.json OUT_DIR

writes OUT_DIR/results.json (one object per case), OUT_DIR/results.md (Markdown tables) and, when
gnuplot is installed, OUT_DIR/results.png (GB/s per case against the bandwidth roof). Standard
library only.

The graph-level benchmarks (family "graph", perf/runtime/) go to their own "graph" object in
results.json and a "Graph" section of results.md: latency with and without the inference rewrites,
the hand-written oneDNN pipeline of resnet_stack_onednn_peer.cpp beside them (setting "onednn"), serving
throughput from 1 and 2 client threads, and peak memory against the activation sizes.

Every figure of a case comes from the same run: its peers ran back to back, and its roof is the
STREAM round measured just before its shape's group of cases (keel_perf re-measures bandwidth per
group because it drifts between minutes).
"""

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

PEERS = ("keel", "onednn", "naive", "torch")
PEER_TITLES = {"keel": "keel", "onednn": "oneDNN", "naive": "loop", "torch": "PyTorch"}
PLAIN_MODES = ("inference", "training")
TIME_UNIT_TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
# Repetitions whose times vary more than this (coefficient of variation) were disturbed (another
# process took a core or bandwidth) or come from a peer whose own cost varies (page faults on a
# fresh output, Python). Their figures are marked.
NOISY_CV = 0.10

RATIO_DEFINITIONS = {
    "keel_over_onednn": "oneDNN-direct time / keel time: keel's speed relative to oneDNN called "
    "directly (> 1: keel is faster)",
    "naive_over_keel": "loop time / keel time: how many times longer the naive loop takes than "
    "keel (> 1: keel is faster)",
    "keel_over_torch": "PyTorch time / keel time (> 1: keel is faster)",
    "keel_over_best": "fastest peer's time / keel time (target >= 0.97)",
    "custom_over_plain": "custom modes (training_renorm, training_virtual_batch, "
    "training_adjustment, training_multi_axis; keel only): their time / keel's plain training "
    "time on the same tensor and threads (target <= 1.15)",
    "keel_bytes_moved": "bytes keel's passes read and wrote in one call, as its layer reports "
    "them (BatchNormalizationCallReport::bytes_moved: each pass over x and y, input conversion, "
    "the adjustment's operands, a separate ReLU pass)",
    "keel_bytes_over_minimal": "keel_bytes_moved / minimal_bytes (1: keel moves only what the "
    "computation must)",
    "fraction_of_stream": "achieved GB/s (minimal bytes) / roof GB/s; the roof is the faster of "
    "ordinary and non-temporal stores of STREAM copy (inference) or triad (training) at the same "
    "thread count, from the round measured just before the case",
}

GRAPH_DEFINITIONS = {
    "median_ms": "median wall time of one Model::run (latency) or of one iteration of "
    "`requests` single-sample runs (throughput), per optimize setting",
    "runs_per_s": "1000 / median_ms: runs per second of one request stream",
    "optimized_speedup": "unoptimized time / optimized time (> 1: the inference rewrites help)",
    "keel_over_peer": "keel's optimized time / the hand-written oneDNN pipeline's time on the "
    "same graph, weights, input and threads (resnet_stack latency; issue 7's target: <= 1.05)",
    "two_thread_speedup": "1-thread time / 2-thread time of the same model, batch and optimize "
    "setting (latency cases with 2 threads)",
    "peak_bytes": "highest growth of live C++ heap bytes (operator new/delete) during one warm "
    "run, its output included, its input not",
    "largest_activation_bytes": "the largest output of any layer of the graph as written (f32)",
    "activation_bytes": "the sum of every layer's output as written: what a run that kept every "
    "activation would hold",
    "peak_over_largest": "peak_bytes / largest_activation_bytes (issue 6: a small multiple for a "
    "long chain)",
    "requests_per_s": "single-sample requests served per second of wall time, all clients "
    "together",
    "throughput_scaling": "requests_per_s with 2 client threads / with 1 (target >= 1.8)",
}
THROUGHPUT_TARGET = 1.8
PEER_TARGET = 1.05


def parse_name(run_name):
    """'batch_normalization/shape:1x8/peer:keel/real_time' -> ('batch_normalization', {...})."""
    parts = run_name.split("/")
    fields = dict(part.split(":", 1) for part in parts[1:] if ":" in part)
    return parts[0], fields


def representative_runs(benchmarks):
    """One entry per run_name: the median of repetitions when there are repetitions, else the
    single run, with the repetitions' coefficient of variation as "cv" when known. Failed
    benchmarks come back with their error message."""
    chosen = {}
    variation = {}
    for entry in benchmarks:
        name = entry.get("run_name", entry["name"])
        if entry.get("error_occurred"):
            chosen[name] = entry
            continue
        aggregate = entry.get("aggregate_name")
        if aggregate is None:
            if name not in chosen:
                chosen[name] = entry
        elif aggregate == "median":
            chosen[name] = entry
        elif aggregate == "cv":
            variation[name] = entry["real_time"]
    for name, cv in variation.items():
        if name in chosen and not chosen[name].get("error_occurred"):
            chosen[name] = dict(chosen[name], cv=cv)
    return chosen


def milliseconds(entry):
    return entry["real_time"] * TIME_UNIT_TO_MS[entry["time_unit"]]


def ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def merge_runs(raws):
    """The benchmarks of several keel_perf invocations of one suite run (the graph group runs
    apart, its repetitions interleaved), with the first invocation's context (its date and load
    are the run's start) completed by the others'."""
    context = {}
    for raw in reversed(raws):
        context.update(raw.get("context", {}))
    return {"context": context,
            "benchmarks": [entry for raw in raws for entry in raw.get("benchmarks", [])]}


def graph_case_order(key):
    """Latency before throughput, the ResNet stack before the other models, then batch and
    threads: the table's order whatever order the interleaved repetitions reported them in."""
    model, batch, mode, _, count = key
    return (mode != "latency", model != "resnet_stack", model, batch, count)


def collect(raw):
    runs = representative_runs(raw["benchmarks"])
    stream = {}  # (group, kernel, stores, threads) -> GB/s
    cases = {}  # (shape, layout, dtype, mode, threads) -> {peer: entry}
    # (model, batch, mode, "threads" or "clients", count) -> {"on" | "off" | "onednn": entry}
    graph = {}
    failures = []
    order = []
    graph_order = []
    for name, entry in runs.items():
        family, fields = parse_name(name)
        if entry.get("error_occurred"):
            failures.append({"benchmark": name, "error": entry.get("error_message", "")})
            if family not in ("batch_normalization", "graph"):
                continue
        if family == "stream":
            key = (fields["group"], fields["kernel"], fields["stores"], int(fields["threads"]))
            stream[key] = entry["bytes_per_second"] / 1e9
        elif family == "batch_normalization":
            key = (fields["shape"], fields["layout"], fields["dtype"], fields["mode"],
                   int(fields["threads"]))
            if key not in cases:
                cases[key] = {}
                order.append(key)
            cases[key][fields["peer"]] = entry
        elif family == "graph":
            workers = "threads" if fields["mode"] == "latency" else "clients"
            key = (fields["model"], int(fields["batch"]), fields["mode"], workers,
                   int(fields[workers]))
            if key not in graph:
                graph[key] = {}
                graph_order.append(key)
            # keel's cases name their optimize setting, the hand-written pipeline its peer.
            graph[key][fields.get("optimize", fields.get("peer"))] = entry
    graph_order.sort(key=graph_case_order)
    return stream, cases, order, failures, graph, graph_order


def roof_kernel(mode):
    # Inference moves x once and y once, like STREAM copy; training reads x twice and writes y,
    # like triad's two reads and one write.
    return "copy" if mode == "inference" else "triad"


def roof(stream, group, mode, threads):
    kernel = roof_kernel(mode)
    candidates = {stores: stream.get((group, kernel, stores, threads))
                  for stores in ("ordinary", "nontemporal")}
    measured = {stores: gbps for stores, gbps in candidates.items() if gbps is not None}
    if not measured:
        return None
    stores = max(measured, key=measured.get)
    return {"kernel": kernel, "stores": stores, "gbps": measured[stores],
            "ordinary_gbps": candidates["ordinary"], "nontemporal_gbps": candidates["nontemporal"]}


def channels_first(layout):
    """ncw, nchw, ncdhw: the normalized axis is 1."""
    return len(layout) > 2 and layout.startswith("nc")


def channels_last(layout):
    """nwc, nhwc, ndhwc (not the 2-D nc): the normalized axis is the innermost of several."""
    return len(layout) > 2 and not layout.startswith("nc")


def tensor_shape(shape, layout):
    dims = [int(d) for d in shape.split("x")]
    if channels_first(layout):
        return [dims[0], dims[-1], *dims[1:-1]]
    return dims


def build_case(key, peers, stream):
    shape, layout, dtype, mode, threads = key
    median_ms, gbps, labels, errors, variation = {}, {}, {}, {}, {}
    minimal_bytes = None
    keel_bytes_moved = None
    for peer, entry in peers.items():
        if entry.get("error_occurred"):
            errors[peer] = entry.get("error_message", "")
            continue
        median_ms[peer] = milliseconds(entry)
        gbps[peer] = entry["bytes_per_second"] / 1e9
        labels[peer] = entry.get("label", "")
        if "cv" in entry:
            variation[peer] = entry["cv"]
        minimal_bytes = int(entry["minimal_bytes"])
        if peer == "keel" and "bytes_moved" in entry:
            keel_bytes_moved = int(entry["bytes_moved"])
    case_roof = roof(stream, shape, mode, threads)
    fraction = {peer: ratio(value, case_roof["gbps"]) if case_roof else None
                for peer, value in gbps.items()}
    keel_ms = median_ms.get("keel")
    others = [ms for peer, ms in median_ms.items() if peer != "keel"]
    keel_label = labels.get("keel", "")
    path, _, implementation = keel_label.partition(":")
    return {
        "case": f"{shape}/{layout}/{dtype}/{mode}",
        "layout": layout,
        "dtype": dtype,
        "mode": mode,
        "shape": tensor_shape(shape, layout),
        "threads": threads,
        "minimal_bytes": minimal_bytes,
        "keel_bytes_moved": keel_bytes_moved,
        "keel_bytes_over_minimal": ratio(keel_bytes_moved, minimal_bytes),
        "median_ms": median_ms,
        "cv": variation,
        "noisy": sorted(peer for peer, cv in variation.items() if cv > NOISY_CV),
        "gbps": gbps,
        "roof": case_roof,
        "fraction_of_stream": fraction,
        "keel_over_onednn": ratio(median_ms.get("onednn"), keel_ms),
        "naive_over_keel": ratio(median_ms.get("naive"), keel_ms),
        "keel_over_torch": ratio(median_ms.get("torch"), keel_ms),
        "keel_over_best": ratio(min(others), keel_ms) if others else None,
        "keel_path": path,
        "keel_implementation": implementation,
        "onednn_implementation": labels.get("onednn", ""),
        "errors": errors,
    }


def add_custom_ratios(cases):
    plain = {(c["case"].rsplit("/", 1)[0], c["threads"]): c["median_ms"].get("keel")
             for c in cases if c["mode"] == "training"}
    for case in cases:
        if case["mode"] not in PLAIN_MODES:
            base = plain.get((case["case"].rsplit("/", 1)[0], case["threads"]))
            case["custom_over_plain"] = ratio(case["median_ms"].get("keel"), base)


def per_setting(entries, read):
    """{optimize setting: read(entry)} over the settings that ran without error."""
    values = {}
    for setting, entry in entries.items():
        if not entry.get("error_occurred"):
            values[setting] = read(entry)
    return values


def build_graph_case(key, entries):
    model, batch, mode, workers, count = key
    median_ms = per_setting(entries, milliseconds)
    case = {
        "model": model,
        "batch": batch,
        "mode": mode,
        workers: count,
        "median_ms": median_ms,
        "cv": {setting: entry["cv"] for setting, entry in entries.items() if "cv" in entry},
        "optimized_speedup": ratio(median_ms.get("off"), median_ms.get("on")),
        "keel_over_peer": ratio(median_ms.get("on"), median_ms.get("onednn")),
        "rewrites": per_setting(entries, lambda entry: int(entry.get("passes", 0))),
        "errors": {setting: entry.get("error_message", "")
                   for setting, entry in entries.items() if entry.get("error_occurred")},
    }
    case["noisy"] = sorted(setting for setting, cv in case["cv"].items() if cv > NOISY_CV)
    if mode == "latency":
        case["runs_per_s"] = {setting: 1e3 / ms for setting, ms in median_ms.items() if ms > 0}
        peaks = per_setting(entries, lambda entry: int(entry["peak_bytes"]))
        sizes = [entry for entry in entries.values() if not entry.get("error_occurred")]
        largest = int(sizes[0]["largest_activation_bytes"]) if sizes else None
        total = int(sizes[0]["activation_bytes"]) if sizes else None
        case.update({
            "layers": int(sizes[0]["layers"]) if sizes else None,
            "peak_bytes": peaks,
            "largest_activation_bytes": largest,
            "activation_bytes": total,
            "peak_over_largest": {setting: ratio(peak, largest) for setting, peak in peaks.items()},
        })
    else:
        requests = per_setting(entries, lambda entry: int(entry["requests"]))
        case["requests"] = requests
        case["requests_per_s"] = {setting: ratio(requests[setting] * 1e3, ms)
                                  for setting, ms in median_ms.items()}
    return case


def add_graph_ratios(graph_cases):
    """Ratios between cases: 2-thread over 1-thread latency, 2-client over 1-client throughput."""
    by_key = {(case["model"], case["batch"], case["mode"],
               case.get("threads", case.get("clients"))): case for case in graph_cases}
    for case in graph_cases:
        if case["mode"] == "latency" and case["threads"] == 2:
            single = by_key.get((case["model"], case["batch"], "latency", 1))
            if single:
                case["two_thread_speedup"] = {
                    setting: ratio(single["median_ms"].get(setting), ms)
                    for setting, ms in case["median_ms"].items()}
        if case["mode"] == "throughput" and case["clients"] == 2:
            single = by_key.get((case["model"], case["batch"], "throughput", 1))
            if single:
                case["throughput_scaling"] = {
                    setting: ratio(rate, single["requests_per_s"].get(setting))
                    for setting, rate in case["requests_per_s"].items()}


def mebibytes(value):
    return number(value / 2**20 if value is not None else None)


def graph_markdown(graph_cases, context):
    latency = [case for case in graph_cases if case["mode"] == "latency"]
    throughput = [case for case in graph_cases if case["mode"] == "throughput"]
    lines = [
        "",
        "## Graph",
        "",
        "Model::run on graphs built with GraphBuilder (perf/runtime/resnet_stack_bench.cpp): "
        "`resnet_stack` = stem Conv 3x3/64 → BN → ReLU on [N,56,56,64], 4 residual blocks "
        "Conv→BN→ReLU→Conv→BN→Add→ReLU, GlobalAveragePooling2D, Dense(1000); `conv_chain50` = "
        "50 × (Conv2D 1x1/64 → ReLU). `on`/`off` = CompileOptions::optimize (BN folding, "
        "activation fusion). `oneDNN ms` = the same stack written directly with oneDNN primitives "
        "(perf/runtime/resnet_stack_onednn_peer.cpp: BN folded, ReLU and the residual Add as "
        "post-ops, blocked layouts, everything created once); `keel/oneDNN` = on time / oneDNN "
        f"time (target ≤ {PEER_TARGET}, ⚠ above). `opt speedup` = off time / on time; "
        "`2-thr speedup` = 1-thread time / 2-thread time. In a whole-suite run the graph "
        "cases' repetitions run in random order (keel and the peer see the same machine "
        "states); times are their medians. A time marked * varies by more than "
        f"{NOISY_CV:.0%} between repetitions. OMP_WAIT_POLICY: "
        f"{context.get('omp_wait_policy', '?')} (2-thread figures depend on it when another "
        "process is busy: docs/perf.md).",
    ]
    if latency:
        lines += [
            "",
            "### Latency (one request at a time, ThreadingOptions preference = latency)",
            "",
            "| model | batch | thr | on ms | off ms | oneDNN ms | keel/oneDNN | on runs/s "
            "| opt speedup | 2-thr speedup (on) | rewrites |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for case in latency:
            ms = case["median_ms"]
            text = {setting: number(ms.get(setting)) + ("*" if setting in case["noisy"] else "")
                    for setting in ("on", "off", "onednn")}
            over_peer = case["keel_over_peer"]
            flag = " ⚠" if over_peer is not None and over_peer > PEER_TARGET else ""
            lines.append(
                f"| {case['model']} | {case['batch']} | {case['threads']} | {text['on']} | "
                f"{text['off']} | {text['onednn']} | {number(over_peer, 3)}{flag} | "
                f"{number(case['runs_per_s'].get('on'))} | "
                f"{number(case['optimized_speedup'], 2)} | "
                f"{number(case.get('two_thread_speedup', {}).get('on'), 2)} | "
                f"{case['rewrites'].get('on', '–')} |")
        lines += [
            "",
            "### Peak memory of one run",
            "",
            "`peak` = highest growth of live C++ heap bytes during one warm run (output included, "
            "the caller's input not); `largest` = the largest layer output; `all` = the sum of "
            "every layer's output (what keeping every activation would cost).",
            "",
            "| model | batch | thr | layers | largest MiB | all MiB | peak on MiB | peak off MiB "
            "| peak/largest on | peak/largest off | all/peak off |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for case in latency:
            peaks = case["peak_bytes"]
            over = case["peak_over_largest"]
            lines.append(
                f"| {case['model']} | {case['batch']} | {case['threads']} | "
                f"{case['layers'] if case['layers'] is not None else '–'} | "
                f"{mebibytes(case['largest_activation_bytes'])} | "
                f"{mebibytes(case['activation_bytes'])} | {mebibytes(peaks.get('on'))} | "
                f"{mebibytes(peaks.get('off'))} | {number(over.get('on'), 2)} | "
                f"{number(over.get('off'), 2)} | "
                f"{number(ratio(case['activation_bytes'], peaks.get('off')), 2)} |")
    if throughput:
        lines += [
            "",
            "### Serving throughput (single-sample requests, one compiled model, "
            "ThreadingOptions intra_op_threads = 2, preference = throughput)",
            "",
            f"`scaling` = requests/s with 2 client threads / with 1 (target ≥ {THROUGHPUT_TARGET}).",
            "",
            "| model | clients | requests/iteration | ms/iteration | requests/s | scaling |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for case in throughput:
            if not case["median_ms"]:
                lines.append(f"| {case['model']} | {case['clients']} | – | failed | – | – |")
            for setting in sorted(case["median_ms"]):
                scaling = case.get("throughput_scaling", {}).get(setting)
                flag = " ⚠" if scaling is not None and scaling < THROUGHPUT_TARGET else ""
                mark = "*" if setting in case["noisy"] else ""
                lines.append(
                    f"| {case['model']} (optimize {setting}) | {case['clients']} | "
                    f"{case['requests'].get(setting, '–')} | "
                    f"{number(case['median_ms'][setting])}{mark} | "
                    f"{number(case['requests_per_s'].get(setting))} | "
                    f"{number(scaling, 2)}{flag} |")
    return lines


# Issue 7's targets, each judged from this run's figures. A case is "tiny" when its input is at
# most TINY_INPUT_BYTES (the per-call overhead cases), "cache-resident" when it is not tiny and its
# input and output fit in the last-level cache, "large" when they do not.
TINY_INPUT_BYTES = 64 * 1024
BEST_PEER_TARGET = 0.97


def last_level_cache_bytes(context):
    sizes = [cache["size"] for cache in context.get("caches", [])
             if cache.get("type") in ("Unified", "Data")]
    return max(sizes) if sizes else None


def case_size(case, llc_bytes):
    element_bytes = 2 if case["dtype"] in ("bf16", "f16") else 4
    input_bytes = math.prod(case["shape"]) * element_bytes
    if input_bytes <= TINY_INPUT_BYTES:
        return "tiny"
    if llc_bytes is not None and 2 * input_bytes <= llc_bytes:
        return "cache-resident"
    return "large"


def judge(name, rows, passes):
    """One target: rows = [(case label, value)], passes(value) -> bool; the worst row first."""
    judged = [(label, value, passes(value)) for label, value in rows if value is not None]
    failing = [row for row in judged if not row[2]]
    return {"target": name, "met": len(judged) - len(failing), "cases": len(judged),
            "failing": [{"case": label, "value": value} for label, value, _ in failing]}


def evaluate_targets(report):
    llc = last_level_cache_bytes(report["context"])
    plain = [case for case in report["cases"] if case["mode"] in PLAIN_MODES]
    custom = [case for case in report["cases"] if case["mode"] not in PLAIN_MODES]

    def label(case):
        return f"{case['case']} {case['threads']}t"

    def keel_fraction(case, stores=None):
        gbps = case["gbps"].get("keel")
        roof_gbps = (case["roof"] or {}).get(f"{stores}_gbps" if stores else "gbps")
        return ratio(gbps, roof_gbps)

    def where(predicate):
        return [case for case in plain if predicate(case)]

    targets = [
        judge("every case: keel >= 0.97x the fastest peer",
              [(label(c), c["keel_over_best"]) for c in plain],
              lambda v: v >= BEST_PEER_TARGET),
        judge("inference, f32, channels last, large: >= 90% of the non-temporal copy roof",
              [(label(c), keel_fraction(c, "nontemporal")) for c in where(
                  lambda c: c["mode"] == "inference" and c["dtype"] == "f32"
                  and channels_last(c["layout"]) and case_size(c, llc) == "large")],
              lambda v: v >= 0.90),
        judge("channels first (NCHW, NCW, NCDHW): >= 3x oneDNN-direct",
              [(label(c), c["keel_over_onednn"])
               for c in where(lambda c: channels_first(c["layout"]))],
              lambda v: v >= 3.0),
        judge("channels first: >= 80% of the roof",
              [(label(c), keel_fraction(c)) for c in where(
                  lambda c: channels_first(c["layout"]) and case_size(c, llc) != "tiny")],
              lambda v: v >= 0.80),
        judge("training, channels last (NHWC, NWC, NDHWC): >= 1.0x oneDNN-direct",
              [(label(c), c["keel_over_onednn"]) for c in where(
                  lambda c: c["mode"] == "training" and channels_last(c["layout"]))],
              lambda v: v >= 1.0),
        judge("training, channels last: >= 85% of the triad roof",
              [(label(c), keel_fraction(c)) for c in where(
                  lambda c: c["mode"] == "training" and channels_last(c["layout"])
                  and case_size(c, llc) != "tiny")],
              lambda v: v >= 0.85),
        judge("cache-resident: >= 1.5x oneDNN-direct",
              [(label(c), c["keel_over_onednn"]) for c in where(
                  lambda c: case_size(c, llc) == "cache-resident")],
              lambda v: v >= 1.5),
    ]
    f32_inference = {(c["case"].split("/")[0], c["layout"], c["threads"]): c["median_ms"].get("keel")
                     for c in where(lambda c: c["mode"] == "inference" and c["dtype"] == "f32")}
    targets.append(judge(
        "bf16 inference: >= 1.7x the f32 elements per second",
        [(label(c), ratio(f32_inference.get((c["case"].split("/")[0], c["layout"], c["threads"])),
                          c["median_ms"].get("keel")))
         for c in where(lambda c: c["mode"] == "inference" and c["dtype"] == "bf16"
                        and case_size(c, llc) != "tiny")],
        lambda v: v >= 1.7))
    targets.append(judge(
        "custom path: <= 1.15x keel's plain training",
        [(label(c), c.get("custom_over_plain")) for c in custom], lambda v: v <= 1.15))
    targets.append(judge(
        "custom path: >= 75% of the triad roof",
        [(label(c), keel_fraction(c)) for c in custom], lambda v: v >= 0.75))
    targets.append(judge(
        "tiny: keel's per-call overhead over oneDNN-direct < 1 µs (keel − oneDNN, µs)",
        [(label(c), (c["median_ms"]["keel"] - c["median_ms"]["onednn"]) * 1e3)
         for c in where(lambda c: case_size(c, llc) == "tiny"
                        and "keel" in c["median_ms"] and "onednn" in c["median_ms"])],
        lambda v: v < 1.0))
    graph_cases = report["graph"]["cases"]
    targets.append(judge(
        f"graph: keel optimized <= {PEER_TARGET}x the hand-written oneDNN pipeline",
        [(f"{g['model']} N={g['batch']} {g['threads']}t", g["keel_over_peer"])
         for g in graph_cases if g["mode"] == "latency" and g["keel_over_peer"] is not None],
        lambda v: v <= PEER_TARGET))
    targets.append(judge(
        f"serving: 2 clients >= {THROUGHPUT_TARGET}x the requests/s of 1",
        [(f"{g['model']} optimize {setting}", value) for g in graph_cases
         for setting, value in g.get("throughput_scaling", {}).items()],
        lambda v: v >= THROUGHPUT_TARGET))
    return [target for target in targets if target["cases"] > 0]


def targets_markdown(targets):
    lines = [
        "",
        "## Targets (issue 7), judged from this run",
        "",
        "`met` = cases meeting the target / cases it applies to; `missed` lists the others with "
        "their value (ratios as in the tables below). A single run on a shared machine can miss "
        "by noise: read the * marks of the cases named.",
        "",
        "| target | met | missed |",
        "|---|---:|---|",
    ]
    for target in targets:
        missed = ", ".join(f"{row['case']} ({number(row['value'], 3)})"
                           for row in sorted(target["failing"], key=lambda row: row["case"]))
        lines.append(f"| {target['target']} | {target['met']}/{target['cases']} | "
                     f"{missed or '–'} |")
    return lines


def number(value, digits=3):
    if value is None:
        return "–"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:.{decimals}f}"


def markdown(report):
    context = report["context"]
    lines = [
        "# keel perf report",
        "",
        f"Run {context.get('date', '?')} on {context.get('host_name', '?')}: "
        f"{context.get('num_cpus', '?')} cores at {context.get('mhz_per_cpu', '?')} MHz, "
        f"load average {', '.join(number(v, 2) for v in context.get('load_avg', []))} at start.",
    ]
    if "onednn_bf16_batch_normalization" in context:
        lines += ["", "oneDNN has no bf16 batch normalization on this CPU (oneDNN 2.6 needs "
                  "AVX-512 for it): the bf16 cases have no oneDNN-direct peer."]
    if report["targets"]:
        lines += targets_markdown(report["targets"])
    # A run filtered to the graph cases has no bandwidth round and no BatchNormalization case.
    if report["stream"] or report["cases"]:
        lines += batch_normalization_markdown(report)
    if report["graph"]["cases"]:
        lines += graph_markdown(report["graph"]["cases"], context)
    if report["failures"]:
        lines += ["", "## Failed benchmarks", ""]
        lines += [f"- `{failure['benchmark']}`: {failure['error']}"
                  for failure in report["failures"]]
    return "\n".join(lines) + "\n"


def batch_normalization_markdown(report):
    lines = [
        "",
        "Times are medians of repetitions after warm-up; GB/s count the minimal bytes (inference: "
        "read x + write y; training: read x twice + write y). `vs X` = X's time / keel's time "
        "(> 1: keel is faster). `roof` = the faster of ordinary and non-temporal stores of STREAM "
        "copy (inference) or triad (training) at the same thread count, measured just before the "
        "case's shape group. A time marked * comes from repetitions that vary by more than "
        f"{NOISY_CV:.0%} (another process disturbed them, or the peer's own cost varies): read it "
        "and its ratios with care.",
        "",
        "## Bandwidth roof (GB/s)",
        "",
        "| group | threads | copy | copy NT | triad | triad NT |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["stream"]:
        lines.append(
            f"| {row['group']} | {row['threads']} | {number(row['copy_ordinary'])} | "
            f"{number(row['copy_nontemporal'])} | {number(row['triad_ordinary'])} | "
            f"{number(row['triad_nontemporal'])} |")
    lines += [
        "",
        "## BatchNormalization",
        "",
        "| case | thr | keel µs | oneDNN µs | loop µs | PyTorch µs | keel GB/s | roof GB/s | "
        "keel/roof | vs oneDNN | vs loop | vs PyTorch | vs best | keel bytes/min | keel path |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    plain_cases = [case for case in report["cases"] if case["mode"] in PLAIN_MODES]
    custom_cases = [case for case in report["cases"] if case["mode"] not in PLAIN_MODES]
    for case in plain_cases:
        ms = case["median_ms"]
        micro = {peer: number(ms[peer] * 1e3) + ("*" if peer in case["noisy"] else "")
                 if peer in ms else "–" for peer in PEERS}
        roof_text = describe_roof(case["roof"])
        best = case["keel_over_best"]
        flag = " ⚠" if best is not None and best < 0.97 else ""
        lines.append(
            f"| {case['case']} | {case['threads']} | {micro['keel']} | "
            f"{micro['onednn']} | {micro['naive']} | {micro['torch']} | "
            f"{number(case['gbps'].get('keel'))} | {roof_text} | "
            f"{number(case['fraction_of_stream'].get('keel'), 2)} | "
            f"{number(case['keel_over_onednn'], 2)} | {number(case['naive_over_keel'], 2)} | "
            f"{number(case['keel_over_torch'], 2)} | {number(best, 2)}{flag} | "
            f"{number(case['keel_bytes_over_minimal'], 2)} | "
            f"{case['keel_path']}: {case['keel_implementation']} |")
    behind = [case for case in plain_cases
              if case["keel_over_best"] is not None and case["keel_over_best"] < 0.97]
    noisy = [case for case in report["cases"] if case["noisy"]]
    lines += ["", f"keel is below 0.97x the fastest peer in {len(behind)} of "
              f"{len(plain_cases)} cases (marked ⚠); {len(noisy)} cases have a varying (*) "
              "figure."]
    if custom_cases:
        lines += [
            "",
            "## Custom path (keel only)",
            "",
            "`custom/plain` = this call's time / keel's plain training time on the same tensor "
            "and threads (target <= 1.15).",
            "",
            "| case | thr | keel µs | custom/plain | keel GB/s | roof GB/s | keel/roof | "
            "keel bytes/min | keel path |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for case in custom_cases:
            keel_ms = case["median_ms"].get("keel")
            ratio_value = case.get("custom_over_plain")
            flag = " ⚠" if ratio_value is not None and ratio_value > 1.15 else ""
            mark = "*" if "keel" in case["noisy"] else ""
            lines.append(
                f"| {case['case']} | {case['threads']} | "
                f"{number(keel_ms * 1e3 if keel_ms is not None else None)}{mark} | "
                f"{number(ratio_value, 2)}{flag} | {number(case['gbps'].get('keel'))} | "
                f"{describe_roof(case['roof'])} | "
                f"{number(case['fraction_of_stream'].get('keel'), 2)} | "
                f"{number(case['keel_bytes_over_minimal'], 2)} | "
                f"{case['keel_path']}: {case['keel_implementation']} |")
    return lines


def describe_roof(case_roof):
    if not case_roof:
        return "–"
    stores = " NT" if case_roof["stores"] == "nontemporal" else ""
    return f"{number(case_roof['gbps'])} {case_roof['kernel']}{stores}"


def stream_rows(stream):
    rows = {}
    for (group, kernel, stores, threads), gbps in stream.items():
        row = rows.setdefault((group, threads), {"group": group, "threads": threads})
        row[f"{kernel}_{stores}"] = gbps
    for row in rows.values():
        for column in ("copy_ordinary", "copy_nontemporal", "triad_ordinary", "triad_nontemporal"):
            row.setdefault(column, None)
    return list(rows.values())


def plot(report, out_dir):
    """results.png: GB/s of each peer per case, log scale, with each case's roof as a line."""
    if not report["cases"]:
        return None
    gnuplot = shutil.which("gnuplot")
    if gnuplot is None:
        print("make_report: gnuplot not found; no plot", file=sys.stderr)
        return None
    data = out_dir / "results.dat"
    with data.open("w") as file:
        file.write("# index label roof " + " ".join(PEERS) + "\n")
        for index, case in enumerate(report["cases"]):
            label = f"{case['case']}/t{case['threads']}".replace("_", "-")
            values = [case["roof"]["gbps"] if case["roof"] else None]
            values += [case["gbps"].get(peer) for peer in PEERS]
            file.write(f"{index} \"{label}\" " + " ".join(
                "NaN" if value is None else f"{value:.4f}" for value in values) + "\n")
    png = out_dir / "results.png"
    width = max(1200, 22 * len(report["cases"]) + 200)
    columns = " ,\\\n     ".join(
        f"'{data}' using 1:{column} with points pointtype {point} pointsize 1.3 "
        f"title '{PEER_TITLES[peer]}'"
        for column, peer, point in zip(range(4, 8), PEERS, (7, 5, 9, 11)))
    script = f"""
set terminal pngcairo size {width},900 font ',9'
set output '{png}'
set title 'BatchNormalization: GB/s (minimal bytes) per case vs the STREAM roof of its run'
set ylabel 'GB/s'
set logscale y
set grid ytics
set key outside top center horizontal
set xtics rotate by 90 right font ',7'
set bmargin 20
set xrange [-1:{len(report['cases'])}]
plot '{data}' using 1:3:xtic(2) with histeps linewidth 2 linecolor rgb '#888888' \\
     title 'roof (STREAM copy / triad)', \\
     {columns}
"""
    result = subprocess.run([gnuplot], input=script, text=True, capture_output=True)
    if result.returncode != 0:
        print(f"make_report: gnuplot failed: {result.stderr}", file=sys.stderr)
        return None
    return png


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path, nargs="+",
                        help="keel_perf --benchmark_out JSON files of one suite run")
    parser.add_argument("out_dir", type=Path, help="where results.{json,md,png} go")
    arguments = parser.parse_args()

    raw = merge_runs([json.loads(path.read_text()) for path in arguments.raw])
    stream, cases, order, failures, graph, graph_order = collect(raw)
    report = {
        "context": raw["context"],
        "definitions": RATIO_DEFINITIONS,
        "stream": stream_rows(stream),
        "cases": [build_case(key, cases[key], stream) for key in order],
        "graph": {
            "definitions": GRAPH_DEFINITIONS,
            "cases": [build_graph_case(key, graph[key]) for key in graph_order],
        },
        "failures": failures,
    }
    add_custom_ratios(report["cases"])
    add_graph_ratios(report["graph"]["cases"])
    report["targets"] = evaluate_targets(report)
    arguments.out_dir.mkdir(parents=True, exist_ok=True)
    (arguments.out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (arguments.out_dir / "results.md").write_text(markdown(report))
    plot(report, arguments.out_dir)


if __name__ == "__main__":
    main()
