#include <keel/engine/npy.hpp>

#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <keel/engine/error.hpp>

namespace keel {
namespace {

using Bytes = std::vector<std::byte>;

// Raw element bytes of `values`, in little- or big-endian order.
template <typename T>
Bytes element_bytes(const std::vector<T>& values, bool big_endian = false) {
    Bytes bytes;
    for (const T value : values) {
        auto raw = std::bit_cast<std::array<std::byte, sizeof(T)>>(value);
        if (big_endian != (std::endian::native == std::endian::big)) {
            std::reverse(raw.begin(), raw.end());
        }
        bytes.insert(bytes.end(), raw.begin(), raw.end());
    }
    return bytes;
}

// A .npy file as numpy lays it out: magic, version, header length, the dict padded with spaces to
// a multiple of 64 bytes and ended by a newline, then the payload.
Bytes npy_file(const std::string& dict, const Bytes& payload, int major = 1) {
    const std::size_t length_size = major == 1 ? 2 : 4;
    const std::size_t prefix = 8 + length_size;
    std::string header = dict;
    const std::size_t unpadded = prefix + header.size() + 1;
    header.append((64 - unpadded % 64) % 64, ' ');
    header += '\n';
    Bytes bytes;
    for (const unsigned char c : std::string("\x93NUMPY")) bytes.push_back(std::byte{c});
    bytes.push_back(std::byte(major));
    bytes.push_back(std::byte{0});
    for (std::size_t i = 0; i < length_size; ++i) {
        bytes.push_back(std::byte((header.size() >> (8 * i)) & 0xff));
    }
    for (const char c : header) bytes.push_back(static_cast<std::byte>(c));
    bytes.insert(bytes.end(), payload.begin(), payload.end());
    return bytes;
}

std::string dict(const std::string& descr, const std::string& shape, bool fortran = false) {
    return "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
           ", 'shape': " + shape + ", }";
}

// The message of the keel::Error `parse` throws, checked to be of `category`.
std::string parse_error(const Bytes& bytes, ErrorCategory category) {
    try {
        (void)parse_npy(bytes, "npy file 'case.npy'");
    } catch (const Error& error) {
        EXPECT_EQ(error.category(), category) << error.what();
        return error.what();
    }
    ADD_FAILURE() << "parse_npy accepted malformed data";
    return "";
}

void expect_contains(const std::string& text, const std::string& part) {
    EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

class NpyFiles : public ::testing::Test {
  protected:
    void SetUp() override {
        const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
        directory_ = std::filesystem::temp_directory_path() /
                     ("keel_npy_" + std::to_string(::getpid()) + "_" + test->name());
        std::filesystem::create_directories(directory_);
    }
    void TearDown() override { std::filesystem::remove_all(directory_); }

    Bytes read_bytes(const std::filesystem::path& path) const {
        std::ifstream file(path, std::ios::binary);
        std::vector<char> chars((std::istreambuf_iterator<char>(file)),
                                std::istreambuf_iterator<char>());
        Bytes bytes(chars.size());
        std::memcpy(bytes.data(), chars.data(), chars.size());
        return bytes;
    }

    std::string file_text(const std::filesystem::path& path) const {
        const Bytes bytes = read_bytes(path);
        return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    }

    std::filesystem::path directory_;
};

TEST_F(NpyFiles, WriteThenReadRoundTrips) {
    std::vector<float> values(24);
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = 0.37f * static_cast<float>(i) - 3;
    values[5] = std::numeric_limits<float>::infinity();
    for (const Shape& shape : {Shape{2, 3, 4}, Shape{24}, Shape{1, 1, 1, 1, 1, 1, 1, 24}}) {
        const Tensor tensor = Tensor::from_floats(shape, values);
        const auto path = directory_ / "round_trip.npy";
        write_npy(path, tensor);
        const Tensor read = read_npy(path);
        EXPECT_EQ(read.dtype(), DType::f32);
        EXPECT_EQ(read.shape(), shape);
        EXPECT_EQ(read.to_floats(), values);
    }
    const auto scalar_path = directory_ / "scalar.npy";
    write_npy(scalar_path, Tensor::filled({}, -2.5f));
    EXPECT_EQ(read_npy(scalar_path).shape(), Shape{});
    EXPECT_EQ(read_npy(scalar_path).get(0), -2.5f);
    const auto empty_path = directory_ / "empty.npy";
    write_npy(empty_path, Tensor({0, 3}, DType::f32));
    EXPECT_EQ(read_npy(empty_path).shape(), (Shape{0, 3}));
}

TEST_F(NpyFiles, WritesOtherDTypesAsFloat32) {
    const auto path = directory_ / "bf16.npy";
    write_npy(path, Tensor::from_floats({3}, std::vector<float>{1.5f, -2, 256}, DType::bf16));
    const Tensor read = read_npy(path);
    EXPECT_EQ(read.dtype(), DType::f32);
    EXPECT_EQ(read.to_floats(), (std::vector<float>{1.5f, -2, 256}));
}

TEST_F(NpyFiles, WrittenHeaderIsVersion1PaddedTo64Bytes) {
    const auto path = directory_ / "layout.npy";
    write_npy(path, Tensor({5}, DType::f32));
    const Bytes bytes = read_bytes(path);
    ASSERT_GE(bytes.size(), 10u);
    EXPECT_EQ(std::memcmp(bytes.data(), "\x93NUMPY\x01\x00", 8), 0);
    const std::size_t header_length =
        std::to_integer<std::size_t>(bytes[8]) + 256 * std::to_integer<std::size_t>(bytes[9]);
    EXPECT_EQ((10 + header_length) % 64, 0u);
    ASSERT_EQ(bytes.size(), 10 + header_length + 5 * sizeof(float));
    const std::string header(reinterpret_cast<const char*>(bytes.data() + 10), header_length);
    EXPECT_EQ(header.back(), '\n');
    expect_contains(header, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }");

    write_npy(path, Tensor({}, DType::f32));
    expect_contains(file_text(path), "'shape': (), }");
    write_npy(path, Tensor({2, 3}, DType::f32));
    expect_contains(file_text(path), "'shape': (2, 3), }");
}

TEST(NpyParse, FloatDTypes) {
    const Tensor f4 = parse_npy(npy_file(dict("<f4", "(2,)"), element_bytes<float>({1.5f, -2})));
    EXPECT_EQ(f4.dtype(), DType::f32);
    EXPECT_EQ(f4.to_floats(), (std::vector<float>{1.5f, -2}));

    const Tensor big_f4 =
        parse_npy(npy_file(dict(">f4", "(2,)"), element_bytes<float>({1.5f, -2}, true)));
    EXPECT_EQ(big_f4.to_floats(), (std::vector<float>{1.5f, -2}));

    for (const bool big_endian : {false, true}) {
        const Tensor f8 = parse_npy(npy_file(dict(big_endian ? ">f8" : "<f8", "(3,)"),
                                             element_bytes<double>({0.1, -1e300, 4}, big_endian)));
        EXPECT_EQ(f8.dtype(), DType::f64);
        EXPECT_EQ(f8.data_as<double>()[0], 0.1);
        EXPECT_EQ(f8.data_as<double>()[1], -1e300);
        EXPECT_EQ(f8.data_as<double>()[2], 4.0);

        // float16 bits: 1.0 = 0x3c00, -2.0 = 0xc000, 65504 = 0x7bff.
        const Tensor f2 =
            parse_npy(npy_file(dict(big_endian ? ">f2" : "<f2", "(3,)"),
                               element_bytes<std::uint16_t>({0x3c00, 0xc000, 0x7bff}, big_endian)));
        EXPECT_EQ(f2.dtype(), DType::f16);
        EXPECT_EQ(f2.to_floats(), (std::vector<float>{1, -2, 65504}));
    }
    const Tensor native = parse_npy(npy_file(dict("=f4", "(1,)"), element_bytes<float>({3.25f})));
    EXPECT_EQ(native.get(0), 3.25f);
}

TEST(NpyParse, IntegerAndBoolDTypesBecomeF64) {
    const auto expect_values = [](const Bytes& file, const std::vector<double>& expected) {
        const Tensor tensor = parse_npy(file);
        ASSERT_EQ(tensor.dtype(), DType::f64);
        ASSERT_EQ(tensor.element_count(), static_cast<std::int64_t>(expected.size()));
        for (std::size_t i = 0; i < expected.size(); ++i) {
            EXPECT_EQ(tensor.data_as<double>()[i], expected[i]) << i;
        }
    };
    expect_values(npy_file(dict("|i1", "(3,)"), element_bytes<std::int8_t>({-128, 0, 127})),
                  {-128, 0, 127});
    expect_values(npy_file(dict("|u1", "(2,)"), element_bytes<std::uint8_t>({0, 255})), {0, 255});
    expect_values(npy_file(dict("<i2", "(2,)"), element_bytes<std::int16_t>({-300, 32767})),
                  {-300, 32767});
    expect_values(npy_file(dict(">i2", "(2,)"), element_bytes<std::int16_t>({-300, 32767}, true)),
                  {-300, 32767});
    expect_values(npy_file(dict("<u2", "(1,)"), element_bytes<std::uint16_t>({65535})), {65535});
    expect_values(npy_file(dict("<i4", "(2,)"), element_bytes<std::int32_t>({-70000, 1 << 30})),
                  {-70000, 1 << 30});
    expect_values(npy_file(dict(">u4", "(1,)"), element_bytes<std::uint32_t>({4000000000u}, true)),
                  {4000000000.0});
    expect_values(
        npy_file(dict("<i8", "(2,)"), element_bytes<std::int64_t>({-(std::int64_t{1} << 40), 5})),
        {-1099511627776.0, 5});
    expect_values(npy_file(dict("<u8", "(1,)"), element_bytes<std::uint64_t>({1ull << 52})),
                  {4503599627370496.0});
    expect_values(npy_file(dict("|b1", "(3,)"), element_bytes<std::uint8_t>({1, 0, 1})), {1, 0, 1});
}

TEST(NpyParse, ShapesAndHeaderSpellings) {
    const Tensor scalar = parse_npy(npy_file(dict("<f4", "()"), element_bytes<float>({7})));
    EXPECT_EQ(scalar.shape(), Shape{});
    EXPECT_EQ(scalar.get(0), 7.0f);
    const Tensor empty = parse_npy(npy_file(dict("<f4", "(0, 4)"), {}));
    EXPECT_EQ(empty.shape(), (Shape{0, 4}));
    // Double quotes, no trailing comma, keys in another order, Python 2 long literals.
    const Tensor respelled =
        parse_npy(npy_file("{\"shape\": (2L,1L), \"fortran_order\": False, \"descr\": \"<f4\"}",
                           element_bytes<float>({1, 2})));
    EXPECT_EQ(respelled.shape(), (Shape{2, 1}));
    EXPECT_EQ(respelled.to_floats(), (std::vector<float>{1, 2}));
}

TEST(NpyParse, FortranOrderIsTransposedToRowMajor) {
    // Column-major [[0, 1, 2], [3, 4, 5]] stores 0, 3, 1, 4, 2, 5.
    const Tensor matrix =
        parse_npy(npy_file(dict("<f4", "(2, 3)", true), element_bytes<float>({0, 3, 1, 4, 2, 5})));
    EXPECT_EQ(matrix.shape(), (Shape{2, 3}));
    EXPECT_EQ(matrix.to_floats(), (std::vector<float>{0, 1, 2, 3, 4, 5}));

    // Rank 3, through the widening path: element (i, j, k) holds its row-major index 12i + 4j + k
    // and sits at column-major position i + 2j + 6k.
    std::vector<std::int16_t> column_major(24);
    for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 3; ++j) {
            for (int k = 0; k < 4; ++k) {
                column_major[static_cast<std::size_t>(i + 2 * j + 6 * k)] =
                    static_cast<std::int16_t>(12 * i + 4 * j + k);
            }
        }
    }
    const Tensor cube =
        parse_npy(npy_file(dict("<i2", "(2, 3, 4)", true), element_bytes(column_major)));
    for (std::int64_t index = 0; index < 24; ++index) {
        EXPECT_EQ(cube.get(index), static_cast<float>(index));
    }
    const Tensor vector = parse_npy(
        npy_file(dict("<f2", "(2,)", true), element_bytes<std::uint16_t>({0x3c00, 0x4000})));
    EXPECT_EQ(vector.to_floats(), (std::vector<float>{1, 2}));
}

TEST(NpyParse, Versions2And3) {
    for (const int major : {2, 3}) {
        const Tensor tensor =
            parse_npy(npy_file(dict("<f4", "(2,)"), element_bytes<float>({1, 2}), major));
        EXPECT_EQ(tensor.to_floats(), (std::vector<float>{1, 2})) << major;
    }
}

TEST(NpyParse, RejectsBadMagicAndShortFiles) {
    Bytes bad_magic = npy_file(dict("<f4", "(1,)"), element_bytes<float>({1}));
    bad_magic[5] = std::byte{'X'};
    expect_contains(parse_error(bad_magic, ErrorCategory::invalid_argument),
                    "npy file 'case.npy': magic");
    expect_contains(parse_error(Bytes(5, std::byte{0x93}), ErrorCategory::invalid_argument),
                    "file size = 5 bytes");
    expect_contains(parse_error({}, ErrorCategory::invalid_argument), "file size = 0 bytes");
    // Magic and version but no room for the header length.
    Bytes no_length = npy_file(dict("<f4", "(1,)"), {});
    no_length.resize(9);
    expect_contains(parse_error(no_length, ErrorCategory::invalid_argument), "file size = 9 bytes");
}

TEST(NpyParse, RejectsUnknownVersions) {
    Bytes file = npy_file(dict("<f4", "(1,)"), element_bytes<float>({1}));
    file[6] = std::byte{4};
    expect_contains(parse_error(file, ErrorCategory::unsupported), "format version 4.0");
    file[6] = std::byte{1};
    file[7] = std::byte{1};
    expect_contains(parse_error(file, ErrorCategory::unsupported), "format version 1.1");
}

TEST(NpyParse, RejectsTruncatedHeader) {
    Bytes file = npy_file(dict("<f4", "(1,)"), {});
    file.resize(40);  // the declared header runs past the end
    expect_contains(parse_error(file, ErrorCategory::invalid_argument), "header is truncated");
}

TEST(NpyParse, RejectsMalformedHeaders) {
    const Bytes payload = element_bytes<float>({1});
    for (const std::string& header :
         {std::string("not a dict"), std::string("{'descr': '<f4', 'shape': (1,)}"),
          std::string("{'descr': '<f4', 'fortran_order': False}"),
          std::string("{'descr': '<f4', 'fortran_order': maybe, 'shape': (1,)}"),
          std::string("{'descr': '<f4', 'fortran_order': False, 'shape': 1}"),
          std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}"),
          std::string("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}"),
          std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} junk"),
          std::string("{'descr': '<f4, 'fortran_order': False, 'shape': (1,)}"),
          std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (1, x)}"),
          std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}"),
          std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (1,")}) {
        const std::string message =
            parse_error(npy_file(header, payload), ErrorCategory::invalid_argument);
        expect_contains(message, "npy file 'case.npy': header = ");
    }
}

TEST(NpyParse, RejectsBadShapes) {
    expect_contains(
        parse_error(npy_file(dict("<f4", "(2, -1)"), {}), ErrorCategory::invalid_argument),
        "shape = [2, -1]");
    expect_contains(
        parse_error(npy_file(dict("<f4", "(1, 1, 1, 1, 1, 1, 1, 1, 1)"), element_bytes<float>({1})),
                    ErrorCategory::invalid_argument),
        "rank = 9");
    // Far past the limit: refused while parsing, before the dimensions are even collected.
    expect_contains(parse_error(npy_file(dict("<f4", "(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)"), {}),
                                ErrorCategory::invalid_argument),
                    "rank = more than 8");
    // 2^62 * 4 elements overflow int64.
    expect_contains(parse_error(npy_file(dict("<f4", "(4611686018427387904, 4)"), {}),
                                ErrorCategory::invalid_argument),
                    "fits in a signed 64-bit integer");
}

TEST(NpyParse, RejectsPayloadSizeMismatchBeforeAllocating) {
    Bytes short_payload = npy_file(dict("<f4", "(3,)"), element_bytes<float>({1, 2, 3}));
    short_payload.pop_back();
    const std::string truncated = parse_error(short_payload, ErrorCategory::invalid_argument);
    expect_contains(truncated, "payload size = 11 bytes; expected 12 bytes for shape [3]");
    expect_contains(truncated, "truncated");

    Bytes long_payload = npy_file(dict("<f4", "(3,)"), element_bytes<float>({1, 2, 3, 4}));
    expect_contains(parse_error(long_payload, ErrorCategory::invalid_argument),
                    "payload size = 16 bytes; expected 12 bytes");

    // 2^40 doubles would be 8 TiB: refused by the size check, not by a failed allocation
    // (std::bad_alloc, or worse, an allocation that succeeds on an overcommitting system).
    expect_contains(
        parse_error(npy_file(dict("<f8", "(1099511627776,)"), element_bytes<double>({1})),
                    ErrorCategory::invalid_argument),
        "payload size = 8 bytes; expected 8796093022208 bytes");
    expect_contains(parse_error(npy_file(dict("|i1", "(1048576, 1048576)"), Bytes(64)),
                                ErrorCategory::invalid_argument),
                    "payload size = 64 bytes");
}

TEST(NpyParse, RejectsUnsupportedDTypes) {
    for (const std::string descr : {"<c8", "<f3", "<f16", "<U4", "|S10", "<V8", "<M8", "f4"}) {
        const std::string message =
            parse_error(npy_file(dict(descr, "(1,)"), Bytes(8)), ErrorCategory::unsupported);
        expect_contains(message, "dtype '" + descr + "' is not supported");
    }
    expect_contains(parse_error(npy_file(dict("|O", "(1,)"), Bytes(8)), ErrorCategory::unsupported),
                    "object arrays");
    expect_contains(parse_error(npy_file("{'descr': [('a', '<f4')], 'fortran_order': False, "
                                         "'shape': (1,)}",
                                         Bytes(4)),
                                ErrorCategory::unsupported),
                    "structured dtype");
    // '|' (no byte order) only makes sense for one-byte types.
    expect_contains(
        parse_error(npy_file(dict("|f4", "(1,)"), Bytes(4)), ErrorCategory::invalid_argument),
        "descr = '|f4'");
}

TEST_F(NpyFiles, ReadNamesAMissingFile) {
    const auto path = directory_ / "missing.npy";
    try {
        (void)read_npy(path);
        FAIL() << "read a missing file";
    } catch (const Error& error) {
        expect_contains(error.what(), "missing.npy");
    }
}

TEST_F(NpyFiles, ReadErrorsNameTheFile) {
    const auto path = directory_ / "broken.npy";
    std::ofstream(path, std::ios::binary) << "\x93NUMPY";
    try {
        (void)read_npy(path);
        FAIL() << "read a broken file";
    } catch (const Error& error) {
        expect_contains(error.what(), "npy file '" + path.string() + "': file size = 6 bytes");
    }
}

// Interoperability with numpy itself, when the system Python has it (python3-numpy).
bool numpy_available() {
    return std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

TEST_F(NpyFiles, ReadsWhatNumpyWritesAndNumpyReadsWhatKeelWrites) {
    // numpy is a declared dependency (scripts/setup installs python3-numpy): missing is a failure.
    ASSERT_TRUE(numpy_available()) << "/usr/bin/python3 with numpy is not available";
    const std::string script =
        "import numpy as np, sys\n"
        "from numpy.lib import format as f\n"
        "d = sys.argv[1]\n"
        "base = np.arange(24, dtype=np.float64).reshape(2, 3, 4) - 11.5\n"
        "np.save(d + '/c_f4.npy', base.astype(np.float32))\n"
        "np.save(d + '/fortran_f8.npy', np.asfortranarray(base))\n"
        "np.save(d + '/big_i4.npy', base.astype('>i4'))\n"
        "np.save(d + '/f2.npy', base.astype(np.float16))\n"
        "np.save(d + '/bool.npy', base > 0)\n"
        "np.save(d + '/u8.npy', np.array([0, 2**53], dtype=np.uint64))\n"
        "for v in [(2, 0), (3, 0)]:\n"
        "    with open(d + '/v%d.npy' % v[0], 'wb') as out:\n"
        "        f.write_array(out, base.astype(np.float32), version=v)\n"
        "ours = np.load(d + '/keel.npy')\n"
        "ok = ours.dtype == np.float32 and ours.shape == (2, 3, 4) and "
        "np.array_equal(ours, (base * 0.25).astype(np.float32))\n"
        "sys.exit(0 if ok else 3)\n";
    const auto script_path = directory_ / "make.py";
    std::ofstream(script_path) << script;
    std::vector<float> quarter(24);
    for (std::size_t i = 0; i < 24; ++i) quarter[i] = (static_cast<float>(i) - 11.5f) * 0.25f;
    write_npy(directory_ / "keel.npy", Tensor::from_floats({2, 3, 4}, quarter));
    const std::string command =
        "/usr/bin/python3 '" + script_path.string() + "' '" + directory_.string() + "'";
    ASSERT_EQ(std::system(command.c_str()), 0) << "numpy rejected keel's file or failed";

    std::vector<float> expected(24);
    for (std::size_t i = 0; i < 24; ++i) expected[i] = static_cast<float>(i) - 11.5f;
    for (const char* name : {"c_f4", "fortran_f8", "f2", "v2", "v3"}) {
        const Tensor tensor = read_npy(directory_ / (std::string(name) + ".npy"));
        EXPECT_EQ(tensor.shape(), (Shape{2, 3, 4})) << name;
        EXPECT_EQ(tensor.to_floats(), expected) << name;  // every value is exact in float16
    }
    EXPECT_EQ(read_npy(directory_ / "c_f4.npy").dtype(), DType::f32);
    EXPECT_EQ(read_npy(directory_ / "fortran_f8.npy").dtype(), DType::f64);
    EXPECT_EQ(read_npy(directory_ / "f2.npy").dtype(), DType::f16);

    // astype(int) truncates toward zero.
    const Tensor ints = read_npy(directory_ / "big_i4.npy");
    const Tensor flags = read_npy(directory_ / "bool.npy");
    for (std::int64_t i = 0; i < 24; ++i) {
        EXPECT_EQ(ints.get(i), std::trunc(expected[static_cast<std::size_t>(i)]));
        EXPECT_EQ(flags.get(i), expected[static_cast<std::size_t>(i)] > 0 ? 1.0f : 0.0f);
    }
    const Tensor large = read_npy(directory_ / "u8.npy");
    EXPECT_EQ(large.data_as<double>()[1], 9007199254740992.0);
}

}  // namespace
}  // namespace keel
