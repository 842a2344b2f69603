#include "engine/onednn/primitive_cache.hpp"

#include <array>
#include <bit>
#include <charconv>
#include <cstdint>
#include <exception>
#include <future>
#include <string>
#include <utility>

#include <keel/engine/error.hpp>

#include "engine/engine_state.hpp"
#include "engine/onednn/memory_desc.hpp"
#include "engine/threading.hpp"

namespace keel {

std::shared_ptr<const CachedPrimitive> PrimitiveCache::get_or_create(const std::string& key,
                                                                     int threads,
                                                                     const Factory& create) {
    if (threads < 1) {
        throw invalid_argument("PrimitiveCache", "threads", std::to_string(threads),
                               "a positive thread count");
    }
    const std::string full_key = key + "#threads=" + std::to_string(threads);

    std::unique_lock lock(mutex_);
    if (const auto found = entries_.find(full_key); found != entries_.end()) return found->second;
    if (const auto in_flight = pending_.find(full_key); in_flight != pending_.end()) {
        // Another thread is creating this primitive: wait for it rather than create it twice.
        const auto result = in_flight->second;
        lock.unlock();
        return result.get();
    }

    // Creation can take milliseconds; it runs outside the lock so other keys are not held up.
    std::promise<std::shared_ptr<const CachedPrimitive>> promise;
    pending_.emplace(full_key, promise.get_future().share());
    lock.unlock();

    std::shared_ptr<const CachedPrimitive> created;
    try {
        created = std::make_shared<const CachedPrimitive>(create());
        const std::lock_guard publish(mutex_);
        entries_.emplace(full_key, created);
        pending_.erase(full_key);
    } catch (...) {
        // Cache nothing, so the next request tries again; requests already waiting share the error.
        {
            const std::lock_guard forget(mutex_);
            pending_.erase(full_key);
        }
        promise.set_exception(std::current_exception());
        throw;
    }
    promise.set_value(created);
    return created;
}

std::size_t PrimitiveCache::size() const {
    std::lock_guard lock(mutex_);
    return entries_.size();
}

namespace {

std::string float_bits(float value) {
    std::array<char, 16> digits{};
    const auto result = std::to_chars(digits.data(), digits.data() + digits.size(),
                                      std::bit_cast<std::uint32_t>(value), 16);
    return "0x" + std::string(digits.data(), result.ptr);
}

}  // namespace

void execute_cached(const Engine& engine, const CachedPrimitive& entry,
                    std::unordered_map<int, dnnl::memory> arguments) {
    const dnnl::engine& cpu = engine.state().cpu;
    const std::size_t scratchpad_bytes = entry.scratchpad.get_size();
    if (scratchpad_bytes > 0) {
        arguments.emplace(DNNL_ARG_SCRATCHPAD,
                          wrap_memory(cpu, entry.scratchpad, thread_scratch(scratchpad_bytes)));
    }
    const OneDnnThreadScope thread_scope(operation_threads(engine));
    dnnl::stream stream(cpu);
    entry.primitive.execute(stream, arguments);
    stream.wait();
}

std::string post_ops_key(const dnnl::post_ops& post_ops, std::string_view where) {
    std::string key;
    for (int i = 0; i < post_ops.len(); ++i) {
        float scale = 0.0f;
        if (post_ops.kind(i) == dnnl::primitive::kind::sum) {
            post_ops.get_params_sum(i, scale);
            key += "sum(" + float_bits(scale) + ")";
            continue;
        }
        if (post_ops.kind(i) != dnnl::primitive::kind::eltwise) {
            throw internal_error(where, "a post-op other than sum or eltwise");
        }
        float alpha = 0.0f;
        float beta = 0.0f;
        dnnl::algorithm algorithm = dnnl::algorithm::undef;
        post_ops.get_params_eltwise(i, scale, algorithm, alpha, beta);
        key += "eltwise(" + std::to_string(static_cast<int>(algorithm)) + "," + float_bits(scale) +
               "," + float_bits(alpha) + "," + float_bits(beta) + ")";
    }
    return key.empty() ? std::string("none") : key;
}

}  // namespace keel
