#pragma once

#include <sys/types.h>

#include <cstdio>
#include <string>
#include <vector>

namespace keel::perf {

// A child process spoken to one line at a time over its stdin and stdout (its stderr is ours).
// Used to drive a peer that lives in another runtime, such as PyTorch in Python, from inside the
// benchmark binary so that its cases interleave with the others. Closing its stdin asks it to
// exit; the destructor does that and waits for it.
class LineProcess {
  public:
    // Starts `argv[0]` (looked up on PATH) with `argv`. Throws std::runtime_error on failure.
    explicit LineProcess(const std::vector<std::string>& argv);
    ~LineProcess();
    LineProcess(const LineProcess&) = delete;
    LineProcess& operator=(const LineProcess&) = delete;

    // Sends `line` (a newline is appended) and returns the next line the child writes, without its
    // newline. Throws std::runtime_error if the child has exited or closed its stdout.
    std::string exchange(const std::string& line);
    // The next line the child writes, as above.
    std::string read_line();

  private:
    pid_t pid_ = -1;
    std::FILE* to_child_ = nullptr;
    std::FILE* from_child_ = nullptr;
};

}  // namespace keel::perf
