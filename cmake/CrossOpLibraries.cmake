# Op libraries (and edgepet-run) for other targets, built beside the host ones so that
# `edgepet export --target rpi5|apple-m1` can put them into a bundle:
#   - aarch64 Linux, with Debian's g++-aarch64-linux-gnu on an x86-64 host
#     (installed as edgepet/lib/aarch64/, edgepet/bin/aarch64/);
#   - arm64 macOS, with zig (PyPI ziglang; native/runner/cross_apple.sh)
#     (installed as edgepet/lib/macos-arm64/, edgepet/bin/macos-arm64/).
#   EDGEPET_CROSS_AARCH64 = AUTO (default: when the cross compiler is found) | ON | OFF
#   EDGEPET_CROSS_APPLE   = AUTO (default: when zig is found, on PATH or as python -m
#                           ziglang) | ON | OFF; the environment variable of the same name
#                           sets it too (pyproject.toml then adds ziglang to the build's
#                           requirements, so that an isolated pip build finds it)
set(EDGEPET_CROSS_AARCH64 "AUTO" CACHE STRING "Also build the op library for aarch64 Linux")
set(EDGEPET_CROSS_APPLE "AUTO" CACHE STRING
    "Also build the op library and edgepet-run for arm64 macOS with zig")
# The environment decides only while the cache says AUTO, and is not cached: a later
# build without it is back to AUTO instead of failing for want of zig.
set(_edgepet_cross_apple "${EDGEPET_CROSS_APPLE}")
if(EDGEPET_CROSS_APPLE STREQUAL "AUTO" AND NOT "$ENV{EDGEPET_CROSS_APPLE}" STREQUAL "")
  if("$ENV{EDGEPET_CROSS_APPLE}")
    set(_edgepet_cross_apple "ON")
  else()
    set(_edgepet_cross_apple "OFF")
  endif()
endif()
include(CrossApple)

if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64" OR EDGEPET_CROSS_AARCH64 STREQUAL "OFF")
  return()
endif()
find_program(EDGEPET_AARCH64_CXX aarch64-linux-gnu-g++)
if(NOT EDGEPET_AARCH64_CXX)
  if(EDGEPET_CROSS_AARCH64 STREQUAL "ON")
    message(FATAL_ERROR "EDGEPET_CROSS_AARCH64=ON needs aarch64-linux-gnu-g++ "
                        "(Debian: apt-get install g++-aarch64-linux-gnu)")
  endif()
  message(STATUS "aarch64 op library: skipped (no aarch64-linux-gnu-g++)")
  return()
endif()

# edgepet-run travels with the op library (aarch64 bundles ship both), unless the
# runner is switched off for the host build too.
set(_edgepet_aarch64_targets edgepet_ort)
set(_edgepet_aarch64_runner "${CMAKE_BINARY_DIR}/aarch64/native/runner/edgepet-run")
if(NOT DEFINED EDGEPET_BUILD_RUNNER OR EDGEPET_BUILD_RUNNER)
  list(APPEND _edgepet_aarch64_targets edgepet-run)
endif()

include(ExternalProject)
ExternalProject_Add(edgepet_ort_aarch64
  SOURCE_DIR "${PROJECT_SOURCE_DIR}"
  BINARY_DIR "${CMAKE_BINARY_DIR}/aarch64"
  CMAKE_ARGS
    -DCMAKE_TOOLCHAIN_FILE=${PROJECT_SOURCE_DIR}/cmake/aarch64-linux-gnu.cmake
    -DCMAKE_BUILD_TYPE=Release
    -DEDGEPET_BUILD_PYTHON=OFF
    -DEDGEPET_BUILD_TESTS=OFF
    -DEDGEPET_CROSS_AARCH64=OFF
    -DEDGEPET_CROSS_APPLE=OFF
    -DEDGEPET_ORT_INCLUDE_DIR=${ONNXRUNTIME_INCLUDE_DIR}
  BUILD_COMMAND ${CMAKE_COMMAND} --build <BINARY_DIR> --target ${_edgepet_aarch64_targets}
  # Re-run the (incremental) inner build every time: without this a source change
  # leaves the aarch64 library stale, speaking an older operator ABI.
  BUILD_ALWAYS ON
  INSTALL_COMMAND ""
  BUILD_BYPRODUCTS "${CMAKE_BINARY_DIR}/aarch64/native/libedgepet_ort.so"
                  "${_edgepet_aarch64_runner}")
add_custom_target(edgepet_cross_libraries ALL DEPENDS edgepet_ort_aarch64)
message(STATUS "aarch64 op library: built with ${EDGEPET_AARCH64_CXX}")
if(SKBUILD)
  install(FILES "${CMAKE_BINARY_DIR}/aarch64/native/libedgepet_ort.so"
          DESTINATION edgepet/lib/aarch64)
  if("edgepet-run" IN_LIST _edgepet_aarch64_targets)
    install(PROGRAMS "${_edgepet_aarch64_runner}" DESTINATION edgepet/bin/aarch64)
  endif()
endif()
