#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <keel/engine/dtype.hpp>

namespace keel {

// A tensor's dimensions, outermost first (row-major, as NumPy's C order).
using Shape = std::vector<std::int64_t>;

inline constexpr int kMaxRank = 8;

// "[2, 3, 4]"; "[]" for a scalar.
std::string shape_to_string(const Shape& shape);

// Product of the dimensions. Throws keel::Error (invalid_argument) if a dimension is negative, the
// rank exceeds kMaxRank, or the count overflows int64 — `where` names the caller in the message.
std::int64_t element_count(const Shape& shape, std::string_view where = "Tensor");

// A dense, row-major tensor. Either owns 64-byte-aligned storage (shared between copies of the
// Tensor object: copying a Tensor is cheap and aliases; clone() copies the data) or is a
// non-owning view of caller memory, which must outlive every Tensor that views it.
class Tensor {
  public:
    static constexpr std::size_t kAlignment = 64;

    // An empty f32 tensor of shape [0].
    Tensor();
    // Owning, zero-filled.
    Tensor(Shape shape, DType dtype);

    // Owning, contents unspecified: for outputs that are overwritten entirely, where zero-filling
    // would cost a whole extra write pass over memory.
    static Tensor uninitialized(Shape shape, DType dtype);

    // Non-owning view of `data` (not copied). `data` must hold element_count(shape) elements.
    static Tensor view(void* data, Shape shape, DType dtype);
    static Tensor view(const void* data, Shape shape, DType dtype);  // read-only by contract

    // Owning tensor of `dtype` holding `values` (rounded to nearest even for 16-bit dtypes).
    // Throws if values.size() != element_count(shape).
    static Tensor from_floats(Shape shape, std::span<const float> values, DType dtype = DType::f32);
    static Tensor filled(Shape shape, float value, DType dtype = DType::f32);

    const Shape& shape() const noexcept { return shape_; }
    int rank() const noexcept { return static_cast<int>(shape_.size()); }
    // Negative `axis` counts from the end. Throws on an out-of-range axis.
    std::int64_t dim(int axis) const;
    std::int64_t element_count() const noexcept { return element_count_; }
    DType dtype() const noexcept { return dtype_; }
    std::size_t byte_size() const noexcept;
    bool owns_storage() const noexcept { return storage_ != nullptr; }
    bool empty() const noexcept { return element_count_ == 0; }

    void* data() noexcept { return data_; }
    const void* data() const noexcept { return data_; }
    // Typed access; throws keel::Error if T does not match dtype() (std::uint16_t for bf16/f16).
    template <typename T>
    T* data_as();
    template <typename T>
    const T* data_as() const;

    // Element access as float, for tests and tools (not for kernels). `flat_index` is row-major.
    float get(std::int64_t flat_index) const;
    void set(std::int64_t flat_index, float value);
    float at(std::initializer_list<std::int64_t> index) const;

    // All elements widened to float (f64 narrowed), row-major.
    std::vector<float> to_floats() const;

    // A new owning tensor with the same shape in `dtype` (round to nearest even when narrowing).
    Tensor to(DType dtype) const;
    // A new owning tensor with a copy of the data.
    Tensor clone() const;
    // Same storage, new shape with the same element count. Throws otherwise.
    Tensor reshaped(Shape shape) const;

  private:
    Tensor(Shape shape, DType dtype, std::shared_ptr<std::byte[]> storage, void* data);

    Shape shape_;
    std::int64_t element_count_ = 0;
    DType dtype_ = DType::f32;
    std::shared_ptr<std::byte[]> storage_;
    void* data_ = nullptr;
};

}  // namespace keel
