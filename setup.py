"""Build the compiled ``meltica._core`` extensions.

The frame parser is C++ against simdjson's On-Demand API; simdjson's
amalgamated sources come from the pinned pysimdjson build requirement (they
are compiled here, never copied into the repository).  ``MELTICA_DEBUG=1``
builds with Cython annotation, line tracing, internal asserts and ``-O0 -g``.

Every module is compiled for any CPU of the architecture (no -m ISA flags),
except ``meltica._core._walk_haswell``: simdjson's On-Demand walk built for
AVX2, which the parser loads at import when the CPU has it (see
docs/packaging.md).  One wheel therefore runs on any x86-64.
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
    return path


# The haswell kernel's instruction sets (mt::cpu_runs_haswell() in frame.hpp
# checks the same list at import).
HASWELL_FLAGS = ["-mavx2", "-mbmi", "-mpclmul", "-mlzcnt", "-mpopcnt"]
IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")


DEBUG = os.environ.get("MELTICA_DEBUG", "") not in ("", "0")
SIMDJSON = simdjson_dir()
CORE = Path("meltica") / "_core"

compile_args = ["-std=c++17"]
macros = []
directives = {"language_level": 3, "embedsignature": True}
if DEBUG:
    compile_args += ["-O0", "-g", "-UNDEBUG"]
    macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    directives.update(linetrace=True, binding=True)
else:
    compile_args += ["-O3", "-g0"]
    macros += [("CYTHON_WITHOUT_ASSERTIONS", "1"), ("NDEBUG", "1")]


def ext(pyx: Path, *sources: str, flags: tuple[str, ...] = ()) -> Extension:
    return Extension(
        ".".join(pyx.with_suffix("").parts),
        [str(pyx), *sources],
        include_dirs=[str(CORE), str(SIMDJSON)],
        language="c++",
        extra_compile_args=[*compile_args, *flags],
        # simdjson's throwing API (implicit conversions of simdjson_result)
        # would abort inside our noexcept walk: compile it out, so that every
        # result has to be checked with get()
        define_macros=[*macros, ("SIMDJSON_EXCEPTIONS", "0")],
    )


# Every .pyx under meltica/ is an extension; the parser, its haswell walk and
# the wire decoder compile simdjson (each module carries its own copy; the
# wire decoder's DOM API picks its kernel at run time by itself).
# MELTICA_ONLY=path/a.pyx,path/b.pyx builds just those (a developer convenience).
PYX = sorted(Path("meltica").rglob("*.pyx"))
if os.environ.get("MELTICA_ONLY"):
    PYX = [Path(p) for p in os.environ["MELTICA_ONLY"].split(",")]
# simdjson.cpp is compiled through simdjson_unit.cc (an #include of it, found
# on the include path): setuptools refuses source paths outside the project,
# and pysimdjson's directory is wherever the building environment has it.
SIMDJSON_UNIT = str(CORE / "simdjson_unit.cc")
EXTRA_SOURCES = {
    CORE / "parser.pyx": [SIMDJSON_UNIT],
    CORE / "wire.pyx": [SIMDJSON_UNIT],
    CORE / "_walk_haswell.pyx": [SIMDJSON_UNIT],
}
# Hidden visibility: its simdjson symbols never meet the parser's (PyInit_ stays exported).
FLAGS = {CORE / "_walk_haswell.pyx": (*HASWELL_FLAGS, "-fvisibility=hidden")}
if not IS_X86_64:
    PYX = [p for p in PYX if p != CORE / "_walk_haswell.pyx"]

setup(
    ext_modules=cythonize(
        [ext(pyx, *EXTRA_SOURCES.get(pyx, []), flags=FLAGS.get(pyx, ())) for pyx in PYX],
        compiler_directives=directives,
        annotate=DEBUG,
    ),
)
