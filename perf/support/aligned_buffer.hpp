#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <span>

namespace keel::perf {

// A heap array aligned to a cache line, so that no peer pays for split vector loads the others
// do not see, and non-temporal stores can start on a full line. Elements are left uninitialized:
// every user fills the buffer before timing it.
template <typename T>
class AlignedBuffer {
  public:
    static constexpr std::size_t kAlignment = 64;

    AlignedBuffer() = default;
    explicit AlignedBuffer(std::size_t count) : count_(count) {
        if (count == 0) {
            return;
        }
        const std::size_t bytes = (count * sizeof(T) + kAlignment - 1) / kAlignment * kAlignment;
        data_.reset(static_cast<T*>(std::aligned_alloc(kAlignment, bytes)));
        if (!data_) {
            throw std::bad_alloc();
        }
    }

    T* data() noexcept { return data_.get(); }
    const T* data() const noexcept { return data_.get(); }
    std::size_t size() const noexcept { return count_; }
    std::span<T> span() noexcept { return {data_.get(), count_}; }
    std::span<const T> span() const noexcept { return {data_.get(), count_}; }
    T& operator[](std::size_t index) noexcept { return data_.get()[index]; }
    const T& operator[](std::size_t index) const noexcept { return data_.get()[index]; }

  private:
    struct Free {
        void operator()(T* pointer) const noexcept { std::free(pointer); }
    };
    std::unique_ptr<T, Free> data_;
    std::size_t count_ = 0;
};

}  // namespace keel::perf
