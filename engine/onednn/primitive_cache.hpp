#pragma once

// Internal: a thread-safe cache of oneDNN primitives keyed by a descriptor string and the intra-op
// thread count the primitive was created for (oneDNN fixes the team size at creation).

#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/engine.hpp>

namespace keel {

struct CachedPrimitive {
    dnnl::primitive primitive;
    dnnl::memory::desc scratchpad;  // user-mode scratchpad the primitive needs (may be zero-size)
    std::string implementation;     // primitive_desc::impl_info_str()
};

class PrimitiveCache {
  public:
    using Factory = std::function<CachedPrimitive()>;

    // Returns the cached entry for (key, threads), creating it with `create` on a miss. `create`
    // runs at most once per key even under concurrent requests; a throwing `create` caches nothing.
    std::shared_ptr<const CachedPrimitive> get_or_create(const std::string& key, int threads,
                                                         const Factory& create);
    std::size_t size() const;

  private:
    mutable std::mutex mutex_;
    std::unordered_map<std::string, std::shared_ptr<const CachedPrimitive>> entries_;
    // Keys whose factory is running now; concurrent requests for them wait on the future.
    std::unordered_map<std::string, std::shared_future<std::shared_ptr<const CachedPrimitive>>>
        pending_;
};

// Executes `entry` on the engine's CPU with `arguments` plus its user-mode scratchpad (this
// thread's scratch buffer), on the engine's intra-op thread count, and waits for it.
void execute_cached(const Engine& engine, const CachedPrimitive& entry,
                    std::unordered_map<int, dnnl::memory> arguments);

// Every field of `post_ops` for a cache key (kinds, algorithms, float parameters by their bits),
// so that two primitives share an entry only when oneDNN would compute the same thing; "none" when
// empty. Post-ops other than sum and eltwise are an internal error of `where`.
std::string post_ops_key(const dnnl::post_ops& post_ops, std::string_view where);

}  // namespace keel
