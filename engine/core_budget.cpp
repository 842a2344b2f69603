#include "engine/core_budget.hpp"

#include <algorithm>

namespace keel {

CoreBudget::CoreBudget(int cores) : cores_(std::max(cores, 1)), free_(cores_) {}

int CoreBudget::acquire(int wanted) {
    wanted = std::clamp(wanted, 1, cores_);
    std::unique_lock lock(mutex_);
    if (waiters_.empty() && free_ > 0) {
        const int taken = std::min(wanted, free_);
        free_ -= taken;
        return taken;
    }
    // Released cores are handed to the oldest waiter directly. Were they merely marked free, the
    // releasing thread would usually take them back before a woken waiter got a CPU, and woken
    // waiters would pile up runnable, competing with the runs for the cores.
    Waiter waiter;
    waiter.wanted = wanted;
    waiters_.push_back(&waiter);
    waiter.granted_signal.wait(lock, [&] { return waiter.granted > 0; });
    return waiter.granted;
}

void CoreBudget::grant_to_waiters() {
    while (!waiters_.empty() && free_ > 0) {
        Waiter& waiter = *waiters_.front();
        waiters_.pop_front();
        waiter.granted = std::min(waiter.wanted, free_);
        free_ -= waiter.granted;
        waiter.granted_signal.notify_one();
    }
}

void CoreBudget::release(int cores) noexcept {
    std::lock_guard lock(mutex_);
    free_ += cores;
    grant_to_waiters();
}

int CoreBudget::in_use() const {
    std::lock_guard lock(mutex_);
    return cores_ - free_;
}

}  // namespace keel
