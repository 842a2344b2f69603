#include <keel/engine/engine.hpp>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>

#include <keel/engine/error.hpp>
#include <keel/engine/logging.hpp>
#include <keel/version.hpp>

#include <spdlog/spdlog.h>

#include "engine/engine_state.hpp"
#include "engine/onednn/translate_error.hpp"

namespace keel {

namespace {

constexpr const char* kNumThreadsVariable = "KEEL_NUM_THREADS";

// KEEL_NUM_THREADS as a positive thread count; 0 when it is unset or empty.
int threads_from_environment() {
    const char* text = std::getenv(kNumThreadsVariable);
    if (text == nullptr || *text == '\0') return 0;
    const std::string_view value(text);
    int threads = 0;
    const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), threads);
    if (error != std::errc{} || end != value.data() + value.size() || threads < 1) {
        throw invalid_argument("environment", kNumThreadsVariable, "'" + std::string(value) + "'",
                               "a positive integer thread count");
    }
    return threads;
}

void require_non_negative(std::string_view argument, int value, std::string_view meaning) {
    if (value < 0) {
        throw invalid_argument("ThreadingOptions", argument, std::to_string(value),
                               "0 (" + std::string(meaning) + ") or a positive count");
    }
}

ThreadingOptions resolve(ThreadingOptions requested) {
    require_non_negative("intra_op_threads", requested.intra_op_threads,
                         "KEEL_NUM_THREADS, else every core");
    require_non_negative("inter_op_concurrency", requested.inter_op_concurrency, "one at a time");
    require_non_negative("max_concurrent_runs", requested.max_concurrent_runs, "unbounded");

    ThreadingOptions resolved = requested;
    if (resolved.intra_op_threads == 0) resolved.intra_op_threads = threads_from_environment();
    if (resolved.intra_op_threads == 0) {
        // hardware_concurrency() may report 0 when it cannot tell.
        resolved.intra_op_threads =
            std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    }
    if (resolved.inter_op_concurrency == 0) resolved.inter_op_concurrency = 1;
    // max_concurrent_runs keeps 0: "unbounded" is a setting, not a default awaiting a value.

    return resolved;
}

dnnl::engine create_cpu_engine() {
    return with_onednn_errors("Engine (creating the CPU engine)",
                              [] { return dnnl::engine(dnnl::engine::kind::cpu, 0); });
}

std::string_view isa_name(dnnl::cpu_isa isa) {
    switch (isa) {
        case dnnl::cpu_isa::all:
            return "all (no specific ISA)";
        case dnnl::cpu_isa::sse41:
            return "sse41";
        case dnnl::cpu_isa::avx:
            return "avx";
        case dnnl::cpu_isa::avx2:
            return "avx2";
        case dnnl::cpu_isa::avx512_mic:
            return "avx512_mic";
        case dnnl::cpu_isa::avx512_mic_4ops:
            return "avx512_mic_4ops";
        case dnnl::cpu_isa::avx512_core:
            return "avx512_core";
        case dnnl::cpu_isa::avx512_core_vnni:
            return "avx512_core_vnni";
        case dnnl::cpu_isa::avx512_core_bf16:
            return "avx512_core_bf16";
        case dnnl::cpu_isa::avx512_core_amx:
            return "avx512_core_amx";
        case dnnl::cpu_isa::avx2_vnni:
            return "avx2_vnni";
    }
    return "unknown";
}

std::string_view preference_name(ThreadingOptions::Preference preference) {
    return preference == ThreadingOptions::Preference::latency ? "latency" : "throughput";
}

}  // namespace

ThreadingOptions ThreadingOptions::from_environment() {
    ThreadingOptions options;
    options.intra_op_threads = threads_from_environment();
    return options;
}

Engine::State::State(ThreadingOptions requested)
    : options(resolve(requested)),
      cpu(create_cpu_engine()),
      arena(options.intra_op_threads),
      cores(options.intra_op_threads) {}

Engine::Engine(ThreadingOptions options) : state_(std::make_shared<State>(options)) {
    logger()->debug("engine created: {} intra-op threads, inter-op concurrency {}",
                    state_->options.intra_op_threads, state_->options.inter_op_concurrency);
}

Engine::~Engine() = default;
Engine::Engine(const Engine&) = default;
Engine& Engine::operator=(const Engine&) = default;
Engine::Engine(Engine&&) noexcept = default;
Engine& Engine::operator=(Engine&&) noexcept = default;

const ThreadingOptions& Engine::threading() const noexcept { return state_->options; }

int Engine::intra_op_threads() const noexcept { return state_->options.intra_op_threads; }

std::string Engine::describe() const {
    const dnnl_version_t* onednn = dnnl::version();
    const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
    // oneDNN runs bf16 arithmetic natively only from these ISAs on; below them it emulates or
    // refuses.
    const bool native_bf16 =
        isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
    const ThreadingOptions& options = state_->options;

    std::ostringstream text;
    text << "keel " << version() << '\n';
    text << "oneDNN " << onednn->major << '.' << onednn->minor << '.' << onednn->patch
         << " (commit " << onednn->hash << ")\n";
    text << "CPU ISA (detected by oneDNN): " << isa_name(isa) << '\n';
    text << "native bf16 in oneDNN: " << (native_bf16 ? "yes" : "no") << '\n';
    text << "intra-op threads: " << options.intra_op_threads << '\n';
    text << "inter-op concurrency: " << options.inter_op_concurrency << '\n';
    text << "max concurrent runs: ";
    if (options.max_concurrent_runs == 0) {
        text << "unbounded\n";
    } else {
        text << options.max_concurrent_runs << '\n';
    }
    text << "preference: " << preference_name(options.preference) << '\n';
    text << "build type: " << KEEL_BUILD_TYPE << '\n';
    return text.str();
}

const Engine& default_engine() {
    static Engine engine;
    return engine;
}

}  // namespace keel
