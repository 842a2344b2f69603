#pragma once

// Internal: the engine's cores as tokens the graph runtime hands to concurrent runs, so that the
// threads of all runs together (TBB tasks and oneDNN's OpenMP teams) never exceed them.

#include <condition_variable>
#include <deque>
#include <mutex>

namespace keel {

class CoreBudget {
  public:
    explicit CoreBudget(int cores);

    int cores() const noexcept { return cores_; }
    // Takes between 1 and `wanted` cores (clamped to the total), waiting while none is free.
    // Waiters are served first come, first served.
    int acquire(int wanted);
    void release(int cores) noexcept;
    // Cores held right now (tests, diagnostics).
    int in_use() const;

  private:
    struct Waiter {
        int wanted = 0;
        int granted = 0;
        std::condition_variable granted_signal;
    };
    void grant_to_waiters();  // with mutex_ held

    const int cores_;
    int free_;
    mutable std::mutex mutex_;
    std::deque<Waiter*> waiters_;
};

// Holds cores from a CoreBudget for its lifetime.
class CoreLease {
  public:
    CoreLease(CoreBudget& budget, int wanted) : budget_(budget), cores_(budget.acquire(wanted)) {}
    ~CoreLease() { budget_.release(cores_); }
    CoreLease(const CoreLease&) = delete;
    CoreLease& operator=(const CoreLease&) = delete;
    int cores() const noexcept { return cores_; }

  private:
    CoreBudget& budget_;
    int cores_;
};

}  // namespace keel
