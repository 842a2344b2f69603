#include <keel/engine/logging.hpp>

#include <array>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string_view>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace keel {

namespace {

constexpr std::string_view kLoggerName = "keel";
constexpr std::string_view kLevelVariable = "KEEL_LOG_LEVEL";

// spdlog's own from_str maps every unknown name to "off", which would silently hide a typo.
std::optional<spdlog::level::level_enum> parse_level(std::string_view text) {
    struct Named {
        std::string_view name;
        spdlog::level::level_enum level;
    };
    constexpr std::array<Named, 7> kLevels{{{"trace", spdlog::level::trace},
                                            {"debug", spdlog::level::debug},
                                            {"info", spdlog::level::info},
                                            {"warn", spdlog::level::warn},
                                            {"error", spdlog::level::err},
                                            {"critical", spdlog::level::critical},
                                            {"off", spdlog::level::off}}};
    for (const Named& candidate : kLevels) {
        if (candidate.name == text) return candidate.level;
    }
    return std::nullopt;
}

std::shared_ptr<spdlog::logger> create_own_logger() {
    // A host that registered its own "keel" logger in spdlog's registry has configured it already:
    // use it as it is. keel's own logger stays out of the registry so it can never clash with
    // (or be replaced through) a host's registration.
    if (auto registered = spdlog::get(std::string(kLoggerName))) return registered;

    auto own = std::make_shared<spdlog::logger>(
        std::string(kLoggerName), std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    own->set_level(spdlog::level::warn);
    const char* requested = std::getenv(kLevelVariable.data());
    if (requested != nullptr && *requested != '\0') {
        if (const auto level = parse_level(requested)) {
            own->set_level(*level);
        } else {
            own->warn(
                "{} = '{}'; expected one of trace, debug, info, warn, error, critical, off "
                "(using warn)",
                kLevelVariable, requested);
        }
    }
    return own;
}

const std::shared_ptr<spdlog::logger>& own_logger() {
    static const std::shared_ptr<spdlog::logger> own = create_own_logger();
    return own;
}

// The host's replacement, null while keel uses its own logger. A plain mutex rather than
// std::atomic<std::shared_ptr>: libstdc++ 12 implements the latter with a lock ThreadSanitizer
// cannot see, and the uncontended lock costs little next to formatting a message.
struct Replacement {
    std::mutex mutex;
    std::shared_ptr<spdlog::logger> logger;
};

Replacement& replacement() {
    static Replacement slot;
    return slot;
}

}  // namespace

std::shared_ptr<spdlog::logger> logger() {
    {
        Replacement& slot = replacement();
        const std::lock_guard lock(slot.mutex);
        if (slot.logger) return slot.logger;
    }
    return own_logger();
}

void set_logger(std::shared_ptr<spdlog::logger> replacement_logger) {
    Replacement& slot = replacement();
    const std::lock_guard lock(slot.mutex);
    // The previous logger is released after the lock, in case its destruction flushes sinks.
    std::swap(slot.logger, replacement_logger);
}

}  // namespace keel
