"""Build the compiled ``meltica._core`` extensions.

The frame parser is C++ against simdjson's On-Demand API; simdjson's
amalgamated sources come from the pinned pysimdjson build requirement (they
are compiled here, never copied into the repository).  ``MELTICA_DEBUG=1``
builds with Cython annotation, line tracing, internal asserts and ``-O0 -g``.
"""

import os
import platform
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup


def simdjson_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("simdjson")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("building meltica needs pysimdjson (a pinned build requirement)")
    path = Path(next(iter(spec.submodule_search_locations))).resolve()
    if not (path / "simdjson.h").is_file() or not (path / "simdjson.cpp").is_file():
        raise SystemExit(f"pysimdjson at {path} does not ship simdjson.h/simdjson.cpp")
    # setuptools refuses absolute source paths inside the project (a venv in
    # the checkout, as `make` creates): name those relative to setup.py.
    here = Path(__file__).resolve().parent
    return path.relative_to(here) if path.is_relative_to(here) else path


def simd_flags() -> list[str]:
    """Compiler flags choosing simdjson's On-Demand kernel.

    On-Demand binds to one kernel at compile time.  ``MELTICA_SIMD=haswell``
    (AVX2) or ``portable``; by default haswell when the building x86-64 CPU
    has AVX2.  The parser refuses to import on a CPU lacking what it was
    built for, with a message saying how to rebuild.
    """
    choice = os.environ.get("MELTICA_SIMD", "auto")
    if choice not in ("auto", "haswell", "portable"):
        raise SystemExit(f"MELTICA_SIMD must be auto, haswell or portable, not {choice!r}")
    if choice == "auto":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            flags = ""
        is_x86 = platform.machine().lower() in ("x86_64", "amd64")
        choice = "haswell" if is_x86 and " avx2" in flags and " bmi1" in flags else "portable"
    if choice == "haswell":
        return ["-mavx2", "-mbmi", "-mpclmul", "-mlzcnt", "-mpopcnt"]
    return []


DEBUG = os.environ.get("MELTICA_DEBUG", "") not in ("", "0")
SIMDJSON = simdjson_dir()
CORE = Path("meltica") / "_core"

compile_args = ["-std=c++17", *simd_flags()]
macros = []
directives = {"language_level": 3, "embedsignature": True}
if DEBUG:
    compile_args += ["-O0", "-g", "-UNDEBUG"]
    macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    directives.update(linetrace=True, binding=True)
else:
    compile_args += ["-O3", "-g0"]
    macros += [("CYTHON_WITHOUT_ASSERTIONS", "1"), ("NDEBUG", "1")]


def ext(pyx: Path, *sources: str) -> Extension:
    return Extension(
        ".".join(pyx.with_suffix("").parts),
        [str(pyx), *sources],
        include_dirs=[str(CORE), str(SIMDJSON)],
        language="c++",
        extra_compile_args=compile_args,
        # simdjson's throwing API (implicit conversions of simdjson_result)
        # would abort inside our noexcept walk: compile it out, so that every
        # result has to be checked with get()
        define_macros=[*macros, ("SIMDJSON_EXCEPTIONS", "0")],
    )


# Every .pyx under meltica/ is an extension; the parser and the wire decoder
# compile simdjson (each module carries its own copy).
# MELTICA_ONLY=path/a.pyx,path/b.pyx builds just those (a developer convenience).
PYX = sorted(Path("meltica").rglob("*.pyx"))
if os.environ.get("MELTICA_ONLY"):
    PYX = [Path(p) for p in os.environ["MELTICA_ONLY"].split(",")]
EXTRA_SOURCES = {
    CORE / "parser.pyx": [str(SIMDJSON / "simdjson.cpp")],
    CORE / "wire.pyx": [str(SIMDJSON / "simdjson.cpp")],
}

setup(
    ext_modules=cythonize(
        [ext(pyx, *EXTRA_SOURCES.get(pyx, [])) for pyx in PYX],
        compiler_directives=directives,
        annotate=DEBUG,
    ),
)
