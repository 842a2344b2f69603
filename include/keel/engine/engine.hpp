#pragma once

#include <memory>
#include <string>

namespace keel {

// How keel uses the machine's cores. One object holds the whole policy (docs/threading.md).
// inter_op_concurrency, max_concurrent_runs and preference steer the graph runtime.
// oneDNN runs its primitives on OpenMP teams; keel's own kernels run on TBB inside the engine's
// task_arena. Both use `intra_op_threads`, so a single operation never uses more cores than that.
struct ThreadingOptions {
    enum class Preference { latency, throughput };

    // Threads one operation may use (oneDNN's OpenMP team and keel's TBB arena). 0 = take
    // KEEL_NUM_THREADS from the environment, else every core.
    int intra_op_threads = 0;
    // Independent graph nodes that may run at once within one run. 0 = 1.
    int inter_op_concurrency = 0;
    // Model runs that may execute at once; further runs wait. 0 = as many as the cores allow
    // (every run holds at least one of the engine's intra_op_threads cores).
    int max_concurrent_runs = 0;
    // latency: a run takes every free core (up to intra_op_threads), so a lone request is as fast
    // as it can be. throughput: a run takes intra_op_threads / max_concurrent_runs cores (one when
    // unbounded), so concurrent requests each run on their own cores.
    Preference preference = Preference::latency;

    // Defaults with KEEL_NUM_THREADS applied. A malformed KEEL_NUM_THREADS is a keel::Error.
    static ThreadingOptions from_environment();
};

// Owns the oneDNN CPU engine, the threading configuration (with its TBB arena) and a cache of
// oneDNN primitives. Cheap to copy: copies share the same state. Thread-safe.
class Engine {
  public:
    explicit Engine(ThreadingOptions options = ThreadingOptions::from_environment());
    ~Engine();
    Engine(const Engine&);
    Engine& operator=(const Engine&);
    Engine(Engine&&) noexcept;
    Engine& operator=(Engine&&) noexcept;

    // Resolved values (0s replaced by the actual counts).
    const ThreadingOptions& threading() const noexcept;
    int intra_op_threads() const noexcept;

    // Human-readable facts: oneDNN version, ISA oneDNN detected, threads, build type.
    std::string describe() const;

    // Internal state (engine/engine_state.hpp); not part of the stable API.
    struct State;
    State& state() const noexcept { return *state_; }

  private:
    std::shared_ptr<State> state_;
};

// A process-wide engine created on first use with ThreadingOptions::from_environment().
const Engine& default_engine();

}  // namespace keel
