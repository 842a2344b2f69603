#pragma once

// Internal: happens-before edges ThreadSanitizer cannot see by itself (docs/reliability.md).
//
// Debian's oneTBB and libgomp are not built with ThreadSanitizer, so the synchronization inside
// them (atomics, futexes) is invisible to it: a task TBB hands to a worker and the wait that joins
// it look unordered, and TSan reports the task's reads of what the caller prepared, and the
// caller's reads of what the task wrote, as races. keel marks its own fork and join points
// instead, with __tsan_release / __tsan_acquire (compiled to nothing without ThreadSanitizer):
//
//   const TsanForkJoin fork_join;
//   const TsanHandOff task(fork_join, [&] { work(); });
//   run_on_some_thread(task);   // TBB copies it or calls it by reference
//   wait();
//   fork_join.join();           // or leave the scope: ~TsanForkJoin joins
//
// Every copy of a TsanHandOff releases its own address when constructed (in the thread that makes
// the copy, e.g. the one spawning a TBB task) and each call acquires it first, needing nothing
// but `this`: so everything the handing thread did, the copy's own members included, happens
// before the call. Each call releases `fork_join` when it ends (also by an exception), and the
// joining thread acquires it after the wait.

#include <utility>

#if defined(__SANITIZE_THREAD__)
#define KEEL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KEEL_TSAN 1
#endif
#endif

#if defined(KEEL_TSAN)
extern "C" void __tsan_acquire(void* address);
extern "C" void __tsan_release(void* address);
#endif

namespace keel {

namespace detail {
#if defined(KEEL_TSAN)
inline void tsan_release(const void* address) noexcept {
    __tsan_release(const_cast<void*>(address));
}
inline void tsan_acquire(const void* address) noexcept {
    __tsan_acquire(const_cast<void*>(address));
}
#else
inline void tsan_release(const void*) noexcept {}
inline void tsan_acquire(const void*) noexcept {}
#endif
}  // namespace detail

// The join point of a fork: tasks release it when they end; join() (or the destructor) acquires.
class TsanForkJoin {
  public:
    TsanForkJoin() noexcept = default;
    ~TsanForkJoin() { join(); }
    TsanForkJoin(const TsanForkJoin&) = delete;
    TsanForkJoin& operator=(const TsanForkJoin&) = delete;
    void join() const noexcept { detail::tsan_acquire(this); }
    void task_ended() const noexcept { detail::tsan_release(this); }
};

// A callable handed to another thread (see above).
template <typename Function>
class TsanHandOff {
  public:
    TsanHandOff(const TsanForkJoin& fork_join, Function function)
        : fork_join_(&fork_join), function_(std::move(function)) {
        detail::tsan_release(&sync_);
    }
    TsanHandOff(const TsanHandOff& other)
        : sync_(other.sync_), fork_join_(other.fork_join_), function_(other.function_) {
        detail::tsan_release(&sync_);
    }
    TsanHandOff& operator=(const TsanHandOff&) = delete;
    ~TsanHandOff() = default;

    template <typename... Arguments>
    void operator()(Arguments&&... arguments) const {
        detail::tsan_acquire(&sync_);
        const EndOfCall end{*this};
        function_(std::forward<Arguments>(arguments)...);
    }

  private:
    // The first member, so it is constructed before the others are read or written. TBB reuses
    // a task's memory for later tasks (its allocator's hand-off is invisible too): a new copy
    // first acquires what the calls of the memory's previous occupant released. A copy made on
    // another thread than its source (parallel_for splitting a stolen range) acquires what the
    // source's construction released before reading it.
    struct SyncPoint {
        SyncPoint() noexcept { detail::tsan_acquire(this); }
        SyncPoint(const SyncPoint& source) noexcept : SyncPoint() { detail::tsan_acquire(&source); }
        SyncPoint& operator=(const SyncPoint&) = delete;
        ~SyncPoint() = default;
    };
    struct EndOfCall {
        const TsanHandOff& task;
        ~EndOfCall() {
            detail::tsan_release(&task.sync_);
            task.fork_join_->task_ended();
        }
    };
    SyncPoint sync_;
    const TsanForkJoin* fork_join_;
    Function function_;
};

}  // namespace keel
