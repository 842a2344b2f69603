#include "runtime/scheduler.hpp"

#include <atomic>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>

#include <tbb/task_group.h>

#include "engine/engine_state.hpp"
#include "engine/threading.hpp"
#include "engine/tsan_annotations.hpp"

namespace keel::runtime {
namespace {

class ChainRunner {
  public:
    ChainRunner(const ExecutionPlan& plan, RunState& state, int operation_threads)
        : plan_(plan),
          state_(state),
          operation_threads_(operation_threads),
          remaining_consumers_(plan.value_consumer_count.size()) {
        for (std::size_t v = 0; v < remaining_consumers_.size(); ++v) {
            remaining_consumers_[v].store(plan.value_consumer_count[v], std::memory_order_relaxed);
        }
    }

    void run_chain(int chain) {
        const OperationThreadBudget budget(operation_threads_);
        for (int n : plan_.chains[static_cast<std::size_t>(chain)]) run_node(n);
    }

  private:
    void run_node(int n) {
        const auto index = static_cast<std::size_t>(n);
        const GraphNode& node = plan_.graph.nodes[index];
        std::vector<Tensor> inputs;
        inputs.reserve(node.inputs.size());
        for (int value : node.inputs)
            inputs.push_back(state_.values[static_cast<std::size_t>(value)]);
        const ForwardContext context{inputs, *state_.node_variables[index], state_.training,
                                     state_.node_updates[index], overwritable_inputs(n)};
        state_.values[static_cast<std::size_t>(node.output)] = node.layer->forward(context);
        inputs.clear();
        // Release each input after its last consumer, unless the caller gets it back.
        for (int value : node.inputs) {
            const auto v = static_cast<std::size_t>(value);
            if (remaining_consumers_[v].fetch_sub(1, std::memory_order_acq_rel) == 1 &&
                !plan_.is_output[v] && plan_.graph.values[v].producer >= 0) {
                state_.values[v] = Tensor();
            }
        }
    }

    // The inputs node `n` may overwrite in this run: of those the plan allows, the ones no other
    // reader still has to read (each reader counts itself off only after its forward() returned,
    // and the acquire pairs with that, so their reads happen before this node's writes). Training
    // runs overwrite nothing: a layer may keep an input in the updates it stages.
    std::uint64_t overwritable_inputs(int n) const {
        const auto index = static_cast<std::size_t>(n);
        const std::uint64_t allowed = plan_.overwritable_inputs[index];
        if (state_.training || allowed == 0) return 0;
        const std::vector<int>& inputs = plan_.graph.nodes[index].inputs;
        std::uint64_t granted = 0;
        for (std::size_t i = 0; i < inputs.size() && i < 64; ++i) {
            const std::uint64_t bit = std::uint64_t{1} << i;
            const auto value = static_cast<std::size_t>(inputs[i]);
            if ((allowed & bit) != 0 &&
                remaining_consumers_[value].load(std::memory_order_acquire) == 1) {
                granted |= bit;
            }
        }
        return granted;
    }

    const ExecutionPlan& plan_;
    RunState& state_;
    const int operation_threads_;
    std::vector<std::atomic<int>> remaining_consumers_;
};

// Chains whose predecessors are done wait in `ready`; at most `limit` workers take them, each
// continuing with the next ready chain until none is left. No worker ever blocks.
class ParallelSchedule {
  public:
    ParallelSchedule(const ExecutionPlan& plan, ChainRunner& runner, int limit)
        : plan_(plan),
          runner_(runner),
          limit_(limit),
          predecessors_(plan.chain_predecessor_count) {}

    void run() {
        {
            std::lock_guard lock(mutex_);
            for (std::size_t c = 0; c < plan_.chains.size(); ++c) {
                if (predecessors_[c] == 0) ready_.push_back(static_cast<int>(c));
            }
            spawn_workers();
        }
        group_.wait();
        fork_join_.join();
        if (error_) std::rethrow_exception(error_);
    }

  private:
    // Called with the mutex held.
    void spawn_workers() {
        while (active_ < limit_ && !ready_.empty()) {
            const int chain = ready_.front();
            ready_.pop_front();
            ++active_;
            group_.run(TsanHandOff(fork_join_, [this, chain] { work(chain); }));
        }
    }

    void work(int chain) {
        for (;;) {
            bool failed = false;
            try {
                runner_.run_chain(chain);
            } catch (...) {
                failed = true;
                std::lock_guard lock(mutex_);
                if (!error_) error_ = std::current_exception();
                ready_.clear();
            }
            std::lock_guard lock(mutex_);
            if (!failed && !error_) {
                for (int successor : plan_.chain_successors[static_cast<std::size_t>(chain)]) {
                    if (--predecessors_[static_cast<std::size_t>(successor)] == 0) {
                        ready_.push_back(successor);
                    }
                }
            }
            if (ready_.empty()) {
                --active_;
                return;
            }
            chain = ready_.front();
            ready_.pop_front();
            spawn_workers();
        }
    }

    const ExecutionPlan& plan_;
    ChainRunner& runner_;
    const int limit_;
    std::vector<int> predecessors_;
    std::mutex mutex_;
    std::deque<int> ready_;
    int active_ = 0;
    std::exception_ptr error_;
    // TBB's task hand-off is invisible to ThreadSanitizer (engine/tsan_annotations.hpp).
    TsanForkJoin fork_join_;
    tbb::task_group group_;
};

}  // namespace

void execute_plan(const Engine& engine, const ExecutionPlan& plan, RunState& state, int concurrency,
                  int operation_threads) {
    ChainRunner runner(plan, state, operation_threads);
    if (concurrency <= 1 || plan.width <= 1) {
        // A serial schedule: the chains in their topological order, on the caller's thread.
        for (std::size_t c = 0; c < plan.chains.size(); ++c) runner.run_chain(static_cast<int>(c));
        return;
    }
    ParallelSchedule schedule(plan, runner, concurrency);
    // The arena may run schedule.run() on one of its threads when none of its slots is free for
    // the caller: a fork and join ThreadSanitizer cannot see (engine/tsan_annotations.hpp).
    const TsanForkJoin fork_join;
    const TsanHandOff run_schedule(fork_join, [&] { schedule.run(); });
    engine.state().arena.execute(run_schedule);
}

}  // namespace keel::runtime
