# Finds OpenBLAS's OpenMP build and defines the imported target pptq::blas (include directory, library,
# and the PPTQ_USE_BLAS definition) for pptq's optional BLAS backend (include/pptq/detail/blas.hpp, which
# explains why it must be the OpenMP build). Used by the project and by the installed package.
#
# Debian: apt-get install libopenblas-openmp-dev (it installs beside the other builds). Elsewhere, set
# PPTQ_BLAS_INCLUDE_DIR (the directory of its cblas.h) and PPTQ_BLAS_LIBRARY. Another OpenBLAS build still
# links, but pptq then keeps Eigen's kernels (checked at run time).
if(NOT TARGET pptq::blas)
  set(_pptq_blas_lib_dirs)
  set(_pptq_blas_inc_dirs)
  if(CMAKE_LIBRARY_ARCHITECTURE)
    list(APPEND _pptq_blas_lib_dirs "/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp")
    list(APPEND _pptq_blas_inc_dirs "/usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp")
  endif()
  list(APPEND _pptq_blas_lib_dirs "/usr/lib64/openblas-openmp" "/usr/lib/openblas-openmp")
  list(APPEND _pptq_blas_inc_dirs "/usr/include/openblas-openmp")
  find_path(PPTQ_BLAS_INCLUDE_DIR cblas.h PATHS ${_pptq_blas_inc_dirs} NO_DEFAULT_PATH
            DOC "Directory of the cblas.h of OpenBLAS's OpenMP build")
  find_library(PPTQ_BLAS_LIBRARY NAMES openblas PATHS ${_pptq_blas_lib_dirs} NO_DEFAULT_PATH
               DOC "OpenBLAS's OpenMP build")
  if(PPTQ_BLAS_INCLUDE_DIR AND PPTQ_BLAS_LIBRARY)
    add_library(pptq::blas INTERFACE IMPORTED)
    set_target_properties(pptq::blas PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${PPTQ_BLAS_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES "${PPTQ_BLAS_LIBRARY}"
      INTERFACE_COMPILE_DEFINITIONS "PPTQ_USE_BLAS")
  endif()
  unset(_pptq_blas_lib_dirs)
  unset(_pptq_blas_inc_dirs)
endif()
