# Finds ONNX Runtime's C headers and sets ONNXRUNTIME_INCLUDE_DIR. In order:
#   1. -DEDGEPET_ORT_INCLUDE_DIR=... or the environment variable of the same name;
#   2. a system install (onnxruntime_c_api.h under the usual include paths);
#   3. Debian's libonnxruntime-dev, fetched with apt-get download (headers only,
#      unpacked into the build tree; the trixie suite is asked for when the host's
#      own lists lack it);
#   4. the official release archive from GitHub (needs internet).
set(EDGEPET_ORT_INCLUDE_DIR "$ENV{EDGEPET_ORT_INCLUDE_DIR}" CACHE PATH
    "Folder that holds onnxruntime_c_api.h")
set(EDGEPET_ORT_RELEASE "1.21.0" CACHE STRING "ONNX Runtime release archive to fall back on")

set(_ort_fetch "${CMAKE_BINARY_DIR}/_onnxruntime_headers")

function(_edgepet_ort_found dir how)
  set(ONNXRUNTIME_INCLUDE_DIR "${dir}" PARENT_SCOPE)
  message(STATUS "ONNX Runtime headers: ${dir} (${how})")
endfunction()

function(_edgepet_ort_from_debian out)
  find_program(_apt apt-get)
  find_program(_dpkg dpkg-deb)
  if(NOT _apt OR NOT _dpkg)
    return()
  endif()
  set(deb_dir "${_ort_fetch}/deb")
  file(MAKE_DIRECTORY "${deb_dir}")
  # First the host's own package lists (Debian 13+, Ubuntu with the package) ...
  execute_process(COMMAND ${_apt} download libonnxruntime-dev WORKING_DIRECTORY "${deb_dir}"
                  RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  file(GLOB debs "${deb_dir}/libonnxruntime-dev_*.deb")
  if(NOT debs AND EXISTS /usr/share/keyrings/debian-archive-keyring.gpg)
    # ... then Debian trixie's lists, kept in the build tree, the system untouched.
    set(apt_root "${_ort_fetch}/apt")
    file(MAKE_DIRECTORY "${apt_root}/lists/partial" "${apt_root}/cache/archives/partial")
    file(WRITE "${apt_root}/sources.list"
         "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main\n")
    set(apt_opts -o Dir::Etc::SourceList=${apt_root}/sources.list -o Dir::Etc::SourceParts=/nonexistent
        -o Dir::State::Lists=${apt_root}/lists -o Dir::Cache=${apt_root}/cache -o Debug::NoLocking=1)
    message(STATUS "Fetching Debian trixie's package lists for libonnxruntime-dev")
    execute_process(COMMAND ${_apt} ${apt_opts} update RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
    if(rc EQUAL 0)
      execute_process(COMMAND ${_apt} ${apt_opts} download libonnxruntime-dev
                      WORKING_DIRECTORY "${deb_dir}" RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
    endif()
    file(GLOB debs "${deb_dir}/libonnxruntime-dev_*.deb")
  endif()
  if(NOT debs)
    return()
  endif()
  list(GET debs 0 deb)
  execute_process(COMMAND ${_dpkg} -x "${deb}" "${_ort_fetch}/root" RESULT_VARIABLE rc)
  if(rc EQUAL 0 AND EXISTS "${_ort_fetch}/root/usr/include/onnxruntime/onnxruntime_c_api.h")
    set(${out} "${_ort_fetch}/root/usr/include/onnxruntime" PARENT_SCOPE)
  endif()
endfunction()

function(_edgepet_ort_from_release out)
  set(name "onnxruntime-linux-x64-${EDGEPET_ORT_RELEASE}")
  set(url "https://github.com/microsoft/onnxruntime/releases/download/v${EDGEPET_ORT_RELEASE}/${name}.tgz")
  set(archive "${_ort_fetch}/${name}.tgz")
  file(DOWNLOAD "${url}" "${archive}" STATUS status TIMEOUT 120)
  list(GET status 0 code)
  if(NOT code EQUAL 0)
    return()
  endif()
  file(ARCHIVE_EXTRACT INPUT "${archive}" DESTINATION "${_ort_fetch}/release")
  if(EXISTS "${_ort_fetch}/release/${name}/include/onnxruntime_c_api.h")
    set(${out} "${_ort_fetch}/release/${name}/include" PARENT_SCOPE)
  endif()
endfunction()

if(EDGEPET_ORT_INCLUDE_DIR)
  if(NOT EXISTS "${EDGEPET_ORT_INCLUDE_DIR}/onnxruntime_c_api.h")
    message(FATAL_ERROR "EDGEPET_ORT_INCLUDE_DIR=${EDGEPET_ORT_INCLUDE_DIR} has no onnxruntime_c_api.h")
  endif()
  _edgepet_ort_found("${EDGEPET_ORT_INCLUDE_DIR}" "given")
  return()
endif()

find_path(_ort_system onnxruntime_c_api.h PATH_SUFFIXES onnxruntime onnxruntime/core/session)
if(_ort_system)
  _edgepet_ort_found("${_ort_system}" "system")
  return()
endif()

if(EXISTS "${_ort_fetch}/root/usr/include/onnxruntime/onnxruntime_c_api.h")
  _edgepet_ort_found("${_ort_fetch}/root/usr/include/onnxruntime" "Debian package, cached")
  return()
endif()

_edgepet_ort_from_debian(_ort_deb)
if(_ort_deb)
  _edgepet_ort_found("${_ort_deb}" "Debian package libonnxruntime-dev")
  return()
endif()

_edgepet_ort_from_release(_ort_rel)
if(_ort_rel)
  _edgepet_ort_found("${_ort_rel}" "release archive ${EDGEPET_ORT_RELEASE}")
  return()
endif()

message(FATAL_ERROR
  "ONNX Runtime's C headers were not found. Give their folder with "
  "-DEDGEPET_ORT_INCLUDE_DIR=... (or the environment variable EDGEPET_ORT_INCLUDE_DIR), "
  "install Debian's libonnxruntime-dev, or build with internet access.")
