# FindCUTLASS: locates the CUTLASS / CuTe headers without copying them into the tree.
#
# Search order:
#   1. CUTLASS_DIR (cache variable or environment): a CUTLASS checkout or install
#      root holding include/cutlass/cutlass.h (tools/util/include is optional).
#   2. The `nvidia-cutlass` wheel (pip install nvidia-cutlass) of the Python
#      interpreter CMake finds (inside scikit-build-core: the build's interpreter);
#      its headers live under cutlass_library/source/.
#
# Defines CUTLASS_FOUND, CUTLASS_INCLUDE_DIRS, CUTLASS_VERSION and the imported
# interface target CUTLASS::cutlass.
include(FindPackageHandleStandardArgs)

set(CUTLASS_DIR "$ENV{CUTLASS_DIR}" CACHE PATH "CUTLASS root (holds include/cutlass/cutlass.h); empty: use the nvidia-cutlass wheel")

set(_ak_cutlass_roots "")
if(CUTLASS_DIR)
  list(APPEND _ak_cutlass_roots "${CUTLASS_DIR}")
endif()
if(NOT CUTLASS_DIR)
  if(NOT Python_EXECUTABLE)
    find_package(Python 3.9 COMPONENTS Interpreter QUIET)
  endif()
  if(Python_EXECUTABLE)
    # Locate the wheel's files without importing cutlass_library (its __init__
    # imports modules that need more than the headers).
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c
        "import importlib.util as u, os; s = u.find_spec('cutlass_library'); print(os.path.join(os.path.dirname(s.origin), 'source') if s and s.origin else '')"
      OUTPUT_VARIABLE _ak_cutlass_wheel OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(_ak_cutlass_wheel)
      list(APPEND _ak_cutlass_roots "${_ak_cutlass_wheel}")
    endif()
  endif()
endif()

find_path(CUTLASS_INCLUDE_DIR cutlass/cutlass.h
          PATHS ${_ak_cutlass_roots} PATH_SUFFIXES include NO_DEFAULT_PATH)
find_path(CUTLASS_UTIL_INCLUDE_DIR cutlass/util/device_memory.h
          PATHS ${_ak_cutlass_roots} PATH_SUFFIXES tools/util/include NO_DEFAULT_PATH)

if(CUTLASS_INCLUDE_DIR AND EXISTS "${CUTLASS_INCLUDE_DIR}/cutlass/version.h")
  file(STRINGS "${CUTLASS_INCLUDE_DIR}/cutlass/version.h" _ak_v REGEX "#define CUTLASS_(MAJOR|MINOR|PATCH) ")
  string(REGEX REPLACE ".*CUTLASS_MAJOR ([0-9]+).*" "\\1" _ak_major "${_ak_v}")
  string(REGEX REPLACE ".*CUTLASS_MINOR ([0-9]+).*" "\\1" _ak_minor "${_ak_v}")
  string(REGEX REPLACE ".*CUTLASS_PATCH ([0-9]+).*" "\\1" _ak_patch "${_ak_v}")
  set(CUTLASS_VERSION "${_ak_major}.${_ak_minor}.${_ak_patch}")
endif()

find_package_handle_standard_args(CUTLASS REQUIRED_VARS CUTLASS_INCLUDE_DIR VERSION_VAR CUTLASS_VERSION)

if(CUTLASS_FOUND)
  set(CUTLASS_INCLUDE_DIRS "${CUTLASS_INCLUDE_DIR}")
  if(CUTLASS_UTIL_INCLUDE_DIR)
    list(APPEND CUTLASS_INCLUDE_DIRS "${CUTLASS_UTIL_INCLUDE_DIR}")
  endif()
  if(NOT TARGET CUTLASS::cutlass)
    add_library(CUTLASS::cutlass INTERFACE IMPORTED)
    # SYSTEM: CUTLASS's own warnings are not ours to fix.
    set_target_properties(CUTLASS::cutlass PROPERTIES
      INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${CUTLASS_INCLUDE_DIRS}"
      INTERFACE_INCLUDE_DIRECTORIES "${CUTLASS_INCLUDE_DIRS}")
  endif()
endif()
mark_as_advanced(CUTLASS_INCLUDE_DIR CUTLASS_UTIL_INCLUDE_DIR)
