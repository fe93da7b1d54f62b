"""Build of the pylm_core extension.

libzmq is not linked at build time: the core resolves libzmq's symbols at
import from the libzmq pyzmq already loaded (pylm_core/zmqapi.h), so one
build works with any pyzmq wheel or a system pyzmq.  Switches:

* ``PYLM_CORE_DEBUG=1``: Cython annotate, linetrace, CYTHON_TRACE, -O0 -g.
* ``PYLM_CORE_SANITIZE=1``: AddressSanitizer and UBSan.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

DEBUG = os.environ.get("PYLM_CORE_DEBUG") == "1"
SANITIZE = os.environ.get("PYLM_CORE_SANITIZE") == "1"


class build_ext(_build_ext):
    """Cythonize at build time with the project's directives in one place."""

    def finalize_options(self):
        from Cython.Build import cythonize

        directives = {
            "language_level": "3",
            "embedsignature": True,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        }
        if DEBUG:
            directives.update(linetrace=True, profile=True)
        self.distribution.ext_modules = cythonize(
            self.distribution.ext_modules,
            compiler_directives=directives,
            annotate=DEBUG,
            include_path=["."],
        )
        super().finalize_options()


cflags = ["-O2", "-Wall"]
ldflags = []
macros = []
if DEBUG:
    cflags = ["-O0", "-g", "-Wall"]
    macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
if SANITIZE:
    cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    ldflags += ["-fsanitize=address,undefined"]

setup(
    ext_modules=[
        Extension(
            "pylm_core._core",
            ["pylm_core/_core.pyx"],
            include_dirs=["pylm_core"],
            libraries=["dl"],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
            define_macros=macros,
        )
    ],
    cmdclass={"build_ext": build_ext},
)
