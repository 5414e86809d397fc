# One helper per kind of target, so standard, warnings and includes are set once.

function(hsmrewrap_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow
    -Wnon-virtual-dtor -Wno-unused-parameter -Wno-missing-field-initializers)
  if(HSMREWRAP_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

# hsmrewrap_cc_library(NAME name SRCS ... DEPS ...): library hsmrewrap_<name>, alias hsmrewrap::<name>.
function(hsmrewrap_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS;PRIVATE_DEPS" ${ARGN})
  set(t hsmrewrap_${ARG_NAME})
  add_library(${t} STATIC ${ARG_SRCS})
  add_library(hsmrewrap::${ARG_NAME} ALIAS ${t})
  target_include_directories(${t} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${t} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  hsmrewrap_warnings(${t})
endfunction()

# hsmrewrap_cc_binary(NAME name SRCS ... DEPS ...)
function(hsmrewrap_cc_binary)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_include_directories(${ARG_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS})
  hsmrewrap_warnings(${ARG_NAME})
endfunction()

# hsmrewrap_cc_test(NAME name SRCS ... DEPS ... [LABELS ...] [DEFINES ...] [RUNS target ...]
#                   [OWN_MAIN] [NO_CTEST])
#   DEFINES: compile definitions of the test's sources.
#   RUNS: executables the test starts (rewrapd, rewrapctl, pfx-import): built before the test
#     binary links, while its sources (an OBJECT library name_objs) compile without waiting.
#   OWN_MAIN: main() comes from the sources or a DEP, not from gtest_main.
#   NO_CTEST: no ctest entry `name`; the caller adds its entries (with arguments, or through
#     the leak check: hsmrewrap_leakcheck_test in tests/CMakeLists.txt).
function(hsmrewrap_cc_test)
  cmake_parse_arguments(ARG "OWN_MAIN;NO_CTEST" "NAME" "SRCS;DEPS;LABELS;DEFINES;RUNS" ${ARGN})
  set(deps ${ARG_DEPS} GTest::gmock GTest::gtest)
  if(NOT ARG_OWN_MAIN)
    list(APPEND deps GTest::gtest_main)
  endif()
  if(ARG_RUNS)
    set(objs ${ARG_NAME}_objs)
    add_library(${objs} OBJECT ${ARG_SRCS})
    add_executable(${ARG_NAME} $<TARGET_OBJECTS:${objs}>)
    target_link_libraries(${ARG_NAME} PRIVATE ${deps})
    foreach(run ${ARG_RUNS})
      if(TARGET ${run})
        add_dependencies(${ARG_NAME} ${run})
      endif()
    endforeach()
  else()
    set(objs ${ARG_NAME})
    add_executable(${ARG_NAME} ${ARG_SRCS})
  endif()
  target_include_directories(${objs} PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(${objs} PRIVATE ${deps})
  target_compile_definitions(${objs} PRIVATE ${ARG_DEFINES})
  hsmrewrap_warnings(${objs})
  if(NOT ARG_NO_CTEST)
    add_test(NAME ${ARG_NAME} COMMAND ${ARG_NAME})
    if(ARG_LABELS)
      set_tests_properties(${ARG_NAME} PROPERTIES LABELS "${ARG_LABELS}")
    endif()
  endif()
endfunction()
