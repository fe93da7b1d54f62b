"""The core's Cython API: a .pyx that cimports pylm_core (its .pxd files
and headers, found through pylm_core.get_includes()) compiles at test time
and works on the core's own objects (style.md 13(d), as pyzmq's
tests/test_cython.py)."""

import os
import subprocess
import sys
import textwrap

import pytest

import pylm_core

USER_PYX = textwrap.dedent('''
    # cython: language_level=3
    from cpython.buffer cimport PyBuffer_Release
    from pylm_core._core cimport PalmMessage
    from pylm_core.wire cimport pz_env, PZ_F_FUNCTION

    def stage_plus(PalmMessage message, int k):
        """Read a field of the core's cdef class directly."""
        return message._stage + k

    def function_length(PalmMessage message):
        """Go through the core's C-level to_env()."""
        cdef pz_env env
        cdef Py_buffer buf
        held = message.to_env(&env, &buf)
        try:
            return env.f[PZ_F_FUNCTION].n
        finally:
            if held:
                PyBuffer_Release(&buf)
''')

SETUP = textwrap.dedent('''
    import pylm_core
    from setuptools import Extension, setup
    from Cython.Build import cythonize
    setup(ext_modules=cythonize(
        [Extension("uses_core", ["uses_core.pyx"], include_dirs=pylm_core.get_includes())],
        include_path=pylm_core.get_includes(), quiet=True))
''')


@pytest.mark.timeout(240)
def test_a_pyx_that_cimports_pylm_core_compiles_and_runs(tmp_path):
    (tmp_path / "uses_core.pyx").write_text(USER_PYX)
    (tmp_path / "setup.py").write_text(SETUP)
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=200)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    check = subprocess.run(
        [sys.executable, "-c",
         "import pylm_core, uses_core\n"
         "m = pylm_core.PalmMessage(stage=3, function='srv.method')\n"
         "print(uses_core.stage_plus(m, 4), uses_core.function_length(m))"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.split() == ["7", "10"]


def test_get_includes_holds_the_pxd_files_and_headers():
    parent, package = pylm_core.get_includes()
    for name in ("_core.pxd", "wire.pxd", "libzmq.pxd"):
        assert os.path.exists(os.path.join(parent, "pylm_core", name)), name
    for name in ("wire.h", "zmqapi.h"):
        assert os.path.exists(os.path.join(package, name)), name
