# The op library and edgepet-run for arm64 macOS (Apple Silicon), cross-built with zig by
# native/runner/cross_apple.sh, so that apple-m bundles carry them. Nothing here can run
# them; tests/device_tests/test_apple_cross.py checks their Mach-O headers and symbols.
# Included by CrossOpLibraries.cmake, which documents EDGEPET_CROSS_APPLE.
if(_edgepet_cross_apple STREQUAL "OFF" OR APPLE)
  return()
endif()

# zig: on PATH, or the PyPI package's `python -m ziglang`.
find_program(EDGEPET_ZIG zig)
set(_edgepet_zig "${EDGEPET_ZIG}")
if(NOT EDGEPET_ZIG)
  find_package(Python 3.10 COMPONENTS Interpreter)
  if(Python_Interpreter_FOUND)
    execute_process(COMMAND "${Python_EXECUTABLE}" -m ziglang version
                    RESULT_VARIABLE _edgepet_zig_status OUTPUT_QUIET ERROR_QUIET)
    if(_edgepet_zig_status EQUAL 0)
      set(_edgepet_zig "${Python_EXECUTABLE} -m ziglang")
    endif()
  endif()
endif()
if(NOT _edgepet_zig)
  if(_edgepet_cross_apple STREQUAL "ON")
    message(FATAL_ERROR "EDGEPET_CROSS_APPLE=ON needs zig (pip install ziglang)")
  endif()
  message(STATUS "arm64 macOS op library: skipped (no zig; pip install ziglang and set "
                 "EDGEPET_CROSS_APPLE=ON)")
  return()
endif()

set(_edgepet_apple_dir "${CMAKE_BINARY_DIR}/macos-arm64")
file(GLOB_RECURSE _edgepet_apple_sources CONFIGURE_DEPENDS
     "${PROJECT_SOURCE_DIR}/native/src/*.cc" "${PROJECT_SOURCE_DIR}/native/src/*.h"
     "${PROJECT_SOURCE_DIR}/native/include/*.h" "${PROJECT_SOURCE_DIR}/native/runner/*")
add_custom_command(
  OUTPUT "${_edgepet_apple_dir}/libedgepet_ort.dylib" "${_edgepet_apple_dir}/edgepet-run"
  COMMAND ${CMAKE_COMMAND} -E env "ZIG=${_edgepet_zig}"
          bash "${PROJECT_SOURCE_DIR}/native/runner/cross_apple.sh" "${_edgepet_apple_dir}"
          "${ONNXRUNTIME_INCLUDE_DIR}"
  DEPENDS ${_edgepet_apple_sources}
  COMMENT "Cross-building the op library and edgepet-run for arm64 macOS with zig"
  VERBATIM)
add_custom_target(edgepet_cross_apple ALL
                  DEPENDS "${_edgepet_apple_dir}/libedgepet_ort.dylib")
message(STATUS "arm64 macOS op library: built with ${_edgepet_zig}")
if(SKBUILD)
  install(FILES "${_edgepet_apple_dir}/libedgepet_ort.dylib" DESTINATION edgepet/lib/macos-arm64)
  install(PROGRAMS "${_edgepet_apple_dir}/edgepet-run" DESTINATION edgepet/bin/macos-arm64)
endif()
