#pragma once

// Internal: where tensors get their storage (the public side is keel/engine/tensor_cache.hpp).

#include <cstddef>
#include <memory>

namespace keel {

// Uninitialized storage of at least `bytes` (a multiple of Tensor::kAlignment), aligned to
// Tensor::kAlignment. Large requests come from the tensor cache when it holds a block that fits
// them closely, and go back to it when the last owner lets go. Throws std::bad_alloc when the heap
// refuses.
std::shared_ptr<std::byte[]> allocate_tensor_storage(std::size_t bytes);

}  // namespace keel
