#pragma once

#include <cstdint>

namespace keel::perf {

// The C++ heap bytes a piece of code needs at its worst moment: while an instance is alive, every
// allocation and release through operator new/delete (keel's tensors, its run state, oneDNN's
// C++ objects) moves a live-byte count, and the highest value that count reached is kept. The
// count starts at zero when tracking starts, so releasing memory allocated before makes it go
// below zero and a peak of 0 means "nothing beyond what was already allocated".
//
// Why not the alternatives: VmHWM in /proc/self/status is the process's resident high-water mark
// since it started (monotonic, so a run that stays below an earlier peak shows nothing);
// mallinfo2() reports only the current usage, so sampling it before and after a run misses every
// intermediate tensor the run allocated and released in between. Counting at each allocation sees
// the exact peak, from whichever thread allocates.
//
// Only one instance may be alive at a time, and it measures the whole process: measure one run
// while nothing else allocates.
class HeapPeakTracker {
  public:
    HeapPeakTracker();
    ~HeapPeakTracker();
    HeapPeakTracker(const HeapPeakTracker&) = delete;
    HeapPeakTracker& operator=(const HeapPeakTracker&) = delete;

    // Highest (allocated - released) bytes since construction, as malloc_usable_size counts them
    // (the request rounded up to the allocator's granule).
    std::int64_t peak_bytes() const;
    // (allocated - released) bytes now.
    std::int64_t live_bytes() const;
};

}  // namespace keel::perf
