#pragma once

// Internal: a shared_ptr that threads load and store concurrently (variable snapshots, derived
// weights), in place of std::atomic<std::shared_ptr>.
//
// libstdc++ 12's std::atomic<std::shared_ptr> guards its pointer with a lock bit, but load()
// releases that bit with a relaxed operation after reading the pointer, so the read is not ordered
// before the next store's write: a data race by the C++ memory model, which ThreadSanitizer
// reports (docs/reliability.md). This is the same design (a lock held just long enough to copy
// or swap the pointer, readers spinning only while a store is inside it) with acquire/release
// on both sides.

#include <atomic>
#include <memory>
#include <thread>
#include <utility>

namespace keel {

template <typename T>
class AtomicSharedPtr {
  public:
    AtomicSharedPtr() noexcept = default;
    explicit AtomicSharedPtr(std::shared_ptr<T> value) noexcept : value_(std::move(value)) {}
    AtomicSharedPtr(const AtomicSharedPtr&) = delete;
    AtomicSharedPtr& operator=(const AtomicSharedPtr&) = delete;
    ~AtomicSharedPtr() = default;

    std::shared_ptr<T> load() const noexcept {
        lock();
        std::shared_ptr<T> copy = value_;
        unlock();
        return copy;
    }

    void store(std::shared_ptr<T> desired) noexcept {
        lock();
        value_.swap(desired);
        unlock();
        // `desired` now holds the previous value, released outside the lock.
    }

  private:
    void lock() const noexcept {
        while (locked_.test_and_set(std::memory_order_acquire)) std::this_thread::yield();
    }
    void unlock() const noexcept { locked_.clear(std::memory_order_release); }

    mutable std::atomic_flag locked_;
    std::shared_ptr<T> value_;
};

}  // namespace keel
