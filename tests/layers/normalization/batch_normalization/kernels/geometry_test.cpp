#include "layers/normalization/batch_normalization/kernels/geometry.hpp"

#include <gtest/gtest.h>

#include <keel/engine/error.hpp>

namespace keel::batch_normalization {
namespace {

struct Expected {
    std::vector<std::int64_t> dims;
    std::vector<bool> kept;
    std::int64_t statistic_count;
    std::int64_t reduction_count;
    std::string text;
    bool channels_last;
    bool channels_first;
};

void expect_geometry(const Shape& shape, const std::vector<int>& kept_axes,
                     const Expected& expected) {
    SCOPED_TRACE(shape_to_string(shape));
    const ReductionGeometry geometry = make_geometry(shape, kept_axes);
    EXPECT_EQ(geometry.dims, expected.dims);
    EXPECT_EQ(geometry.kept, expected.kept);
    EXPECT_EQ(geometry.statistic_count, expected.statistic_count);
    EXPECT_EQ(geometry.reduction_count, expected.reduction_count);
    EXPECT_EQ(geometry.element_count, expected.statistic_count * expected.reduction_count);
    EXPECT_EQ(geometry.to_string(), expected.text);
    EXPECT_EQ(geometry.channels_last(), expected.channels_last);
    EXPECT_EQ(geometry.channels_first(), expected.channels_first);
}

TEST(Geometry, NhwcLastAxisIsChannelsLast) {
    expect_geometry({32, 56, 56, 64}, {3},
                    {{100352, 64}, {false, true}, 64, 100352, "[R:100352 K:64]", true, false});
}

TEST(Geometry, NchwAxisOneIsChannelsFirst) {
    expect_geometry(
        {32, 64, 56, 56}, {1},
        {{32, 64, 3136}, {false, true, false}, 64, 100352, "[R:32 K:64 R:3136]", false, true});
}

TEST(Geometry, TwoDimensionalBatchIsChannelsLastAndLeadingAxisIsKR) {
    expect_geometry({8, 5}, {1}, {{8, 5}, {false, true}, 5, 8, "[R:8 K:5]", true, false});
    expect_geometry({5, 8}, {0}, {{5, 8}, {true, false}, 5, 8, "[K:5 R:8]", false, true});
}

TEST(Geometry, MultiAxisAlternates) {
    // NHWC with axis [1, 3]: statistics per (H, C).
    expect_geometry(
        {4, 5, 6, 7}, {1, 3},
        {{4, 5, 6, 7}, {false, true, false, true}, 35, 24, "[R:4 K:5 R:6 K:7]", false, false});
    // Neighbouring kept axes merge: NCHW with axis [1, 2].
    expect_geometry({4, 5, 6, 7}, {1, 2},
                    {{4, 30, 7}, {false, true, false}, 30, 28, "[R:4 K:30 R:7]", false, true});
    // Rank 5 ending in a reduced axis.
    expect_geometry({2, 3, 4, 5, 6}, {1, 3},
                    {{2, 3, 4, 5, 6},
                     {false, true, false, true, false},
                     15,
                     48,
                     "[R:2 K:3 R:4 K:5 R:6]",
                     false,
                     false});
}

TEST(Geometry, VirtualBatchesKeepTheGroupDimension) {
    // NHWC batch of 8 in virtual batches of 2, reshaped by the caller to [2, 4, H, W, C] with
    // the group dimension (1) and channels (4) kept: TF's strided grouping.
    expect_geometry(
        {2, 4, 3, 3, 16}, {1, 4},
        {{2, 4, 9, 16}, {false, true, false, true}, 64, 18, "[R:2 K:4 R:9 K:16]", false, false});
    // NCHW virtual batches: [v, N/v, C, H, W] with axes 1 and 2 kept.
    expect_geometry({2, 4, 16, 3, 3}, {1, 2},
                    {{2, 64, 9}, {false, true, false}, 64, 18, "[R:2 K:64 R:9]", false, true});
}

TEST(Geometry, SizeOneDimensionsDisappear) {
    // A batch of one: [R:1 ...] vanishes and the layout degenerates to [K] (both layouts).
    expect_geometry({1, 1, 1, 64}, {3}, {{64}, {true}, 64, 1, "[K:64]", true, true});
    // One channel: a single statistic over everything, [R], handled as channels-first.
    expect_geometry({4, 5, 1}, {2}, {{20}, {false}, 1, 20, "[R:20]", false, true});
    // Size-1 dims between others let same-kind neighbours merge.
    expect_geometry({3, 1, 4, 5}, {3}, {{12, 5}, {false, true}, 5, 12, "[R:12 K:5]", true, false});
    // A single element.
    expect_geometry({1, 1}, {1}, {{}, {}, 1, 1, "[]", true, true});
    expect_geometry({}, {}, {{}, {}, 1, 1, "[]", true, true});
}

TEST(Geometry, EmptyTensorsHaveNoDimsButKeepTheirCounts) {
    const ReductionGeometry batch_empty = make_geometry({0, 8}, {1});
    EXPECT_TRUE(batch_empty.dims.empty());
    EXPECT_EQ(batch_empty.element_count, 0);
    EXPECT_EQ(batch_empty.statistic_count, 8);
    EXPECT_EQ(batch_empty.reduction_count, 0);
    EXPECT_FALSE(batch_empty.channels_last());
    EXPECT_FALSE(batch_empty.channels_first());

    const ReductionGeometry channels_empty = make_geometry({3, 0}, {1});
    EXPECT_EQ(channels_empty.element_count, 0);
    EXPECT_EQ(channels_empty.statistic_count, 0);
    EXPECT_EQ(channels_empty.reduction_count, 3);
}

TEST(Geometry, RejectsBadAxes) {
    EXPECT_THROW(make_geometry({2, 3}, {2}), Error);
    EXPECT_THROW(make_geometry({2, 3}, {-1}), Error);
    EXPECT_THROW(make_geometry({2, 3}, {1, 1}), Error);
    EXPECT_THROW(make_geometry({2, -3}, {1}), Error);
    try {
        make_geometry({2, 3}, {0, 0});
        FAIL() << "duplicate axes accepted";
    } catch (const Error& error) {
        EXPECT_EQ(error.category(), ErrorCategory::invalid_argument);
        EXPECT_NE(std::string(error.what()).find("kept_axes = [0, 0]"), std::string::npos)
            << error.what();
    }
}

}  // namespace
}  // namespace keel::batch_normalization
