#include <keel/engine/tensor.hpp>

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

#include <unistd.h>

#include <keel/engine/error.hpp>

#include "engine/tensor_cache.hpp"

namespace keel {

std::string shape_to_string(const Shape& shape) {
    std::string text = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i > 0) text += ", ";
        text += std::to_string(shape[i]);
    }
    text += "]";
    return text;
}

std::int64_t element_count(const Shape& shape, std::string_view where) {
    if (shape.size() > static_cast<std::size_t>(kMaxRank)) {
        throw invalid_argument(where, "rank", std::to_string(shape.size()),
                               "at most " + std::to_string(kMaxRank) + " dimensions (shape " +
                                   shape_to_string(shape) + ")");
    }
    std::int64_t count = 1;
    for (std::size_t axis = 0; axis < shape.size(); ++axis) {
        if (shape[axis] < 0) {
            throw invalid_argument(where, "shape", shape_to_string(shape),
                                   "non-negative dimensions (dimension " + std::to_string(axis) +
                                       " is " + std::to_string(shape[axis]) + ")");
        }
    }
    // Any zero makes the product zero, however large the other dimensions are.
    if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
    for (const std::int64_t dimension : shape) {
        if (count > std::numeric_limits<std::int64_t>::max() / dimension) {
            throw invalid_argument(where, "shape", shape_to_string(shape),
                                   "an element count that fits in a signed 64-bit integer");
        }
        count *= dimension;
    }
    return count;
}

namespace {

// The byte size of `count` elements, checked so that a huge shape fails cleanly instead of
// wrapping around size_t.
std::size_t checked_byte_size(std::int64_t count, DType dtype, std::string_view where,
                              const Shape& shape) {
    const auto element_size = static_cast<std::int64_t>(dtype_size(dtype));
    if (count > std::numeric_limits<std::int64_t>::max() / element_size) {
        throw invalid_argument(where, "shape", shape_to_string(shape),
                               "a byte size that fits in a signed 64-bit integer for " +
                                   std::string(dtype_name(dtype)));
    }
    return static_cast<std::size_t>(count * element_size);
}

std::size_t physical_memory_bytes() {
    static const std::size_t bytes = [] {
        const long pages = ::sysconf(_SC_PHYS_PAGES);
        const long page_size = ::sysconf(_SC_PAGESIZE);
        return pages > 0 && page_size > 0
                   ? static_cast<std::size_t>(pages) * static_cast<std::size_t>(page_size)
                   : std::numeric_limits<std::size_t>::max();
    }();
    return bytes;
}

// Storage aligned to Tensor::kAlignment (zero-filled on request), from the tensor cache when large.
// A request beyond the machine's physical memory is refused up front: with overcommit the
// allocation would succeed and zero-filling it would end in the OOM killer, a signal instead of an
// error the host can handle.
std::shared_ptr<std::byte[]> allocate_aligned(std::size_t bytes, const Shape& shape, DType dtype,
                                              bool zero_fill) {
    const auto refuse = [&] {
        return invalid_argument("Tensor", "shape",
                                shape_to_string(shape) + " (" + std::to_string(bytes) +
                                    " bytes of " + std::string(dtype_name(dtype)) + ")",
                                "a tensor that fits in this machine's " +
                                    std::to_string(physical_memory_bytes()) + " bytes of memory");
    };
    if (bytes > physical_memory_bytes()) throw refuse();
    // Never zero bytes, so an owning tensor always has a distinct, valid address.
    const std::size_t rounded =
        std::max<std::size_t>(Tensor::kAlignment, (bytes + Tensor::kAlignment - 1) /
                                                      Tensor::kAlignment * Tensor::kAlignment);
    std::shared_ptr<std::byte[]> storage;
    try {
        storage = allocate_tensor_storage(rounded);
    } catch (const std::bad_alloc&) {
        throw refuse();
    }
    if (zero_fill) std::memset(storage.get(), 0, rounded);
    return storage;
}

float load_float(const void* data, DType dtype, std::int64_t index) {
    switch (dtype) {
        case DType::f32:
            return static_cast<const float*>(data)[index];
        case DType::bf16:
            return bf16_bits_to_float(static_cast<const std::uint16_t*>(data)[index]);
        case DType::f16:
            return f16_bits_to_float(static_cast<const std::uint16_t*>(data)[index]);
        case DType::f64:
            return static_cast<float>(static_cast<const double*>(data)[index]);
    }
    return 0.0f;
}

void store_float(void* data, DType dtype, std::int64_t index, float value) {
    switch (dtype) {
        case DType::f32:
            static_cast<float*>(data)[index] = value;
            return;
        case DType::bf16:
            static_cast<std::uint16_t*>(data)[index] = float_to_bf16_bits(value);
            return;
        case DType::f16:
            static_cast<std::uint16_t*>(data)[index] = float_to_f16_bits(value);
            return;
        case DType::f64:
            static_cast<double*>(data)[index] = value;
            return;
    }
}

// Converts `count` elements between any two dtypes, rounding to nearest even when narrowing.
void convert_elements(const void* source, DType from, void* destination, DType to,
                      std::size_t count) {
    // An empty std::vector's data() may be null, and memcpy must not see a null pointer even for
    // zero bytes.
    if (count == 0) return;
    if (from == to) {
        std::memcpy(destination, source, count * dtype_size(from));
        return;
    }
    if (from == DType::f32 && to == DType::bf16) {
        convert_f32_to_bf16(static_cast<const float*>(source),
                            static_cast<std::uint16_t*>(destination), count);
    } else if (from == DType::f32 && to == DType::f16) {
        convert_f32_to_f16(static_cast<const float*>(source),
                           static_cast<std::uint16_t*>(destination), count);
    } else if (from == DType::bf16 && to == DType::f32) {
        convert_bf16_to_f32(static_cast<const std::uint16_t*>(source),
                            static_cast<float*>(destination), count);
    } else if (from == DType::f16 && to == DType::f32) {
        convert_f16_to_f32(static_cast<const std::uint16_t*>(source),
                           static_cast<float*>(destination), count);
    } else if (from == DType::f64) {
        const auto* values = static_cast<const double*>(source);
        for (std::size_t i = 0; i < count; ++i) {
            switch (to) {
                case DType::bf16:
                    static_cast<std::uint16_t*>(destination)[i] = double_to_bf16_bits(values[i]);
                    break;
                case DType::f16:
                    static_cast<std::uint16_t*>(destination)[i] = double_to_f16_bits(values[i]);
                    break;
                default:
                    static_cast<float*>(destination)[i] = static_cast<float>(values[i]);
                    break;
            }
        }
    } else if (to == DType::f64) {
        auto* values = static_cast<double*>(destination);
        for (std::size_t i = 0; i < count; ++i) {
            values[i] = load_float(source, from, static_cast<std::int64_t>(i));
        }
    } else {
        // Between the two 16-bit formats: every value of either is exactly a float.
        for (std::size_t i = 0; i < count; ++i) {
            const auto index = static_cast<std::int64_t>(i);
            store_float(destination, to, index, load_float(source, from, index));
        }
    }
}

template <typename T>
bool holds(DType dtype) {
    if constexpr (std::is_same_v<T, float>) return dtype == DType::f32;
    if constexpr (std::is_same_v<T, double>) return dtype == DType::f64;
    if constexpr (std::is_same_v<T, std::uint16_t>) {
        return dtype == DType::bf16 || dtype == DType::f16;
    }
    return false;
}

template <typename T>
std::string_view type_name() {
    if constexpr (std::is_same_v<T, float>) return "float";
    if constexpr (std::is_same_v<T, double>) return "double";
    return "std::uint16_t";
}

std::string_view element_type_for(DType dtype) {
    switch (dtype) {
        case DType::f32:
            return "float";
        case DType::f64:
            return "double";
        case DType::bf16:
        case DType::f16:
            return "std::uint16_t";
    }
    return "unknown";
}

}  // namespace

Tensor::Tensor() : Tensor(Shape{0}, DType::f32, nullptr, nullptr) {}

Tensor::Tensor(Shape shape, DType dtype)
    : shape_(std::move(shape)), element_count_(keel::element_count(shape_)), dtype_(dtype) {
    storage_ = allocate_aligned(checked_byte_size(element_count_, dtype_, "Tensor", shape_), shape_,
                                dtype_, true);
    data_ = storage_.get();
}

Tensor Tensor::uninitialized(Shape shape, DType dtype) {
    const std::int64_t count = keel::element_count(shape, "Tensor::uninitialized");
    auto storage = allocate_aligned(checked_byte_size(count, dtype, "Tensor::uninitialized", shape),
                                    shape, dtype, false);
    void* data = storage.get();
    return Tensor(std::move(shape), dtype, std::move(storage), data);
}

Tensor::Tensor(Shape shape, DType dtype, std::shared_ptr<std::byte[]> storage, void* data)
    : shape_(std::move(shape)),
      element_count_(keel::element_count(shape_)),
      dtype_(dtype),
      storage_(std::move(storage)),
      data_(data) {}

Tensor Tensor::view(void* data, Shape shape, DType dtype) {
    const std::int64_t count = keel::element_count(shape, "Tensor::view");
    checked_byte_size(count, dtype, "Tensor::view", shape);
    if (data == nullptr && count > 0) {
        throw invalid_argument(
            "Tensor::view", "data", "nullptr",
            "memory for " + std::to_string(count) + " elements of shape " + shape_to_string(shape));
    }
    return Tensor(std::move(shape), dtype, nullptr, data);
}

Tensor Tensor::view(const void* data, Shape shape, DType dtype) {
    // Read-only by contract (documented in tensor.hpp): the Tensor type has no const-view flavour.
    return view(const_cast<void*>(data), std::move(shape), dtype);
}

Tensor Tensor::from_floats(Shape shape, std::span<const float> values, DType dtype) {
    Tensor tensor(std::move(shape), dtype);
    if (static_cast<std::int64_t>(values.size()) != tensor.element_count()) {
        throw shape_mismatch("Tensor::from_floats", "values.size()", std::to_string(values.size()),
                             std::to_string(tensor.element_count()) + " values for shape " +
                                 shape_to_string(tensor.shape()));
    }
    convert_elements(values.data(), DType::f32, tensor.data(), dtype, values.size());
    return tensor;
}

Tensor Tensor::filled(Shape shape, float value, DType dtype) {
    Tensor tensor(std::move(shape), dtype);
    for (std::int64_t i = 0; i < tensor.element_count(); ++i) {
        store_float(tensor.data(), dtype, i, value);
    }
    return tensor;
}

std::int64_t Tensor::dim(int axis) const {
    const int resolved = axis < 0 ? axis + rank() : axis;
    if (resolved < 0 || resolved >= rank()) {
        throw invalid_argument("Tensor::dim", "axis", std::to_string(axis),
                               "an axis in [" + std::to_string(-rank()) + ", " +
                                   std::to_string(rank()) + ") for shape " +
                                   shape_to_string(shape_));
    }
    return shape_[static_cast<std::size_t>(resolved)];
}

std::size_t Tensor::byte_size() const noexcept {
    return static_cast<std::size_t>(element_count_) * dtype_size(dtype_);
}

template <typename T>
T* Tensor::data_as() {
    return const_cast<T*>(std::as_const(*this).data_as<T>());
}

template <typename T>
const T* Tensor::data_as() const {
    if (!holds<T>(dtype_)) {
        throw invalid_argument("Tensor::data_as", "element type", type_name<T>(),
                               std::string(element_type_for(dtype_)) + " for a " +
                                   std::string(dtype_name(dtype_)) + " tensor");
    }
    return static_cast<const T*>(data_);
}

template float* Tensor::data_as<float>();
template const float* Tensor::data_as<float>() const;
template double* Tensor::data_as<double>();
template const double* Tensor::data_as<double>() const;
template std::uint16_t* Tensor::data_as<std::uint16_t>();
template const std::uint16_t* Tensor::data_as<std::uint16_t>() const;

namespace {

void check_flat_index(std::string_view where, std::int64_t index, std::int64_t count) {
    if (index < 0 || index >= count) {
        throw invalid_argument(where, "flat_index", std::to_string(index),
                               "an index in [0, " + std::to_string(count) + ")");
    }
}

}  // namespace

float Tensor::get(std::int64_t flat_index) const {
    check_flat_index("Tensor::get", flat_index, element_count_);
    return load_float(data_, dtype_, flat_index);
}

void Tensor::set(std::int64_t flat_index, float value) {
    check_flat_index("Tensor::set", flat_index, element_count_);
    store_float(data_, dtype_, flat_index, value);
}

float Tensor::at(std::initializer_list<std::int64_t> index) const {
    if (index.size() != shape_.size()) {
        throw invalid_argument(
            "Tensor::at", "index rank", std::to_string(index.size()),
            std::to_string(rank()) + " indices for shape " + shape_to_string(shape_));
    }
    std::int64_t flat = 0;
    std::size_t axis = 0;
    for (const std::int64_t position : index) {
        if (position < 0 || position >= shape_[axis]) {
            throw invalid_argument("Tensor::at", "index[" + std::to_string(axis) + "]",
                                   std::to_string(position),
                                   "an index in [0, " + std::to_string(shape_[axis]) +
                                       ") for shape " + shape_to_string(shape_));
        }
        flat = flat * shape_[axis] + position;
        ++axis;
    }
    return load_float(data_, dtype_, flat);
}

std::vector<float> Tensor::to_floats() const {
    std::vector<float> values(static_cast<std::size_t>(element_count_));
    if (!values.empty()) {
        convert_elements(data_, dtype_, values.data(), DType::f32, values.size());
    }
    return values;
}

Tensor Tensor::to(DType dtype) const {
    Tensor converted(shape_, dtype);
    if (element_count_ > 0) {
        convert_elements(data_, dtype_, converted.data(), dtype,
                         static_cast<std::size_t>(element_count_));
    }
    return converted;
}

Tensor Tensor::clone() const { return to(dtype_); }

Tensor Tensor::reshaped(Shape shape) const {
    const std::int64_t count = keel::element_count(shape, "Tensor::reshaped");
    if (count != element_count_) {
        throw shape_mismatch("Tensor::reshaped", "shape", shape_to_string(shape),
                             "a shape with " + std::to_string(element_count_) + " elements like " +
                                 shape_to_string(shape_));
    }
    return Tensor(std::move(shape), dtype_, storage_, data_);
}

}  // namespace keel
