#include "perf/support/line_process.hpp"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <stdexcept>

extern char** environ;

namespace keel::perf {
namespace {

std::runtime_error system_error(const std::string& what, int error) {
    return std::runtime_error(what + ": " + std::strerror(error));
}

}  // namespace

LineProcess::LineProcess(const std::vector<std::string>& argv) {
    // A child that dies would otherwise kill us with SIGPIPE on the next write; EPIPE is reported
    // as an error instead.
    std::signal(SIGPIPE, SIG_IGN);

    std::array<int, 2> to_child{};
    std::array<int, 2> from_child{};
    if (pipe(to_child.data()) != 0) {
        throw system_error("pipe", errno);
    }
    if (pipe(from_child.data()) != 0) {
        const int error = errno;
        close(to_child[0]);
        close(to_child[1]);
        throw system_error("pipe", error);
    }

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, to_child[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&actions, from_child[1], STDOUT_FILENO);
    for (const int descriptor : {to_child[0], to_child[1], from_child[0], from_child[1]}) {
        posix_spawn_file_actions_addclose(&actions, descriptor);
    }
    std::vector<char*> arguments;
    for (const std::string& argument : argv) {
        arguments.push_back(const_cast<char*>(argument.c_str()));
    }
    arguments.push_back(nullptr);
    const int spawned =
        posix_spawnp(&pid_, arguments[0], &actions, nullptr, arguments.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(to_child[0]);
    close(from_child[1]);
    if (spawned != 0) {
        close(to_child[1]);
        close(from_child[0]);
        throw system_error("cannot start " + argv.front(), spawned);
    }
    to_child_ = fdopen(to_child[1], "w");
    from_child_ = fdopen(from_child[0], "r");
    if (to_child_ == nullptr || from_child_ == nullptr) {
        throw system_error("fdopen", errno);
    }
}

LineProcess::~LineProcess() {
    if (to_child_ != nullptr) {
        std::fclose(to_child_);
    }
    if (from_child_ != nullptr) {
        std::fclose(from_child_);
    }
    int status = 0;
    waitpid(pid_, &status, 0);
}

std::string LineProcess::exchange(const std::string& line) {
    if (std::fputs(line.c_str(), to_child_) < 0 || std::fputc('\n', to_child_) == EOF ||
        std::fflush(to_child_) != 0) {
        throw system_error("writing to the child process", errno);
    }
    return read_line();
}

std::string LineProcess::read_line() {
    std::string line;
    for (int character = std::fgetc(from_child_); character != '\n';
         character = std::fgetc(from_child_)) {
        if (character == EOF) {
            throw std::runtime_error("the child process closed its output");
        }
        line.push_back(static_cast<char>(character));
    }
    return line;
}

}  // namespace keel::perf
