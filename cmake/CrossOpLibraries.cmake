# Op libraries for other targets, built beside the host one so that `edgepet export
# --target rpi5` can put the right library into a bundle. Today: aarch64 Linux, built
# with Debian's g++-aarch64-linux-gnu when it is installed on an x86-64 host.
#   EDGEPET_CROSS_AARCH64 = AUTO (default: when the cross compiler is found) | ON | OFF
set(EDGEPET_CROSS_AARCH64 "AUTO" CACHE STRING "Also build the op library for aarch64 Linux")

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
    -DEDGEPET_ORT_INCLUDE_DIR=${ONNXRUNTIME_INCLUDE_DIR}
  BUILD_COMMAND ${CMAKE_COMMAND} --build <BINARY_DIR> --target edgepet_ort
  # Re-run the (incremental) inner build every time: without this a source change
  # leaves the aarch64 library stale, speaking an older operator ABI.
  BUILD_ALWAYS ON
  INSTALL_COMMAND ""
  BUILD_BYPRODUCTS "${CMAKE_BINARY_DIR}/aarch64/native/libedgepet_ort.so")
add_custom_target(edgepet_cross_libraries ALL DEPENDS edgepet_ort_aarch64)
message(STATUS "aarch64 op library: built with ${EDGEPET_AARCH64_CXX}")
if(SKBUILD)
  install(FILES "${CMAKE_BINARY_DIR}/aarch64/native/libedgepet_ort.so"
          DESTINATION edgepet/lib/aarch64)
endif()
