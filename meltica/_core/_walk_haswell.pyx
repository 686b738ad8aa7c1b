# cython: language_level=3
# distutils: language = c++
"""simdjson's On-Demand walk of frame.hpp compiled for AVX2 (the haswell kernel).

setup.py builds this module, on x86-64 only, with -mavx2 -mbmi -mpclmul
-mlzcnt -mpopcnt; everything else in the wheel is built for any x86-64.
meltica._core.parser imports it only after checking that the CPU runs such
code (its static initialisers may already use AVX2), and takes the engine
factory from ENGINE_FACTORY.  Nothing else imports it.
"""

from cpython.pycapsule cimport PyCapsule_New


cdef extern from "frame.hpp" namespace "mt" nogil:
    cdef cppclass Engine:
        pass
    Engine *new_engine(size_t max_capacity) noexcept
    const char *builtin_kernel() noexcept


# "haswell" when the compiler flags selected that kernel (parser.pyx checks)
KERNEL = builtin_kernel().decode()

# mt::new_engine of this module, for parser.pyx
ENGINE_FACTORY = PyCapsule_New(<void *>new_engine, b"meltica._core.EngineFactory", NULL)
