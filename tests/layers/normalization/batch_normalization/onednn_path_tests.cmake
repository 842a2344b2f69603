# BatchNormalization's oneDNN path (layers/normalization/batch_normalization/onednn_path.cpp).
keel_add_test(keel_bn_onednn_tests
    SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/onednn_path_test.cpp
    LIBRARIES keel_layers keel_engine DNNL::dnnl)

# The same binary on a CPU as oneDNN sees it without AVX-512 (DNNL_MAX_CPU_ISA caps what oneDNN
# dispatches to): bf16 batch norm then has no implementation at all, and the probe must refuse it
# rather than throw. In the ordinary run this test skips itself.
add_test(NAME keel_bn_onednn_tests.without_avx512
         COMMAND keel_bn_onednn_tests --gtest_filter=OneDnnPathWithoutBf16.*)
set_tests_properties(keel_bn_onednn_tests.without_avx512 PROPERTIES
    ENVIRONMENT "DNNL_MAX_CPU_ISA=AVX2;KEEL_LOG_LEVEL=warn")
