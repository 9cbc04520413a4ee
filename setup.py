"""Build the optional Cython hot loop; without Cython or a C compiler the install still
succeeds and ssjobs runs on the pure-Python twin (ssjobs/_fastloop_py.py)."""
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """A failed compile is a warning, not an install failure."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers ...
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        sys.stderr.write(f"WARNING: ssjobs._fastloop not compiled ({exc}); "
                         "using the pure-Python loop\n")


def extensions():
    if os.environ.get("SSJOBS_NO_EXTENSION"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        sys.stderr.write("WARNING: Cython not available; using the pure-Python loop\n")
        return []
    from setuptools import Extension
    return cythonize([Extension("ssjobs._fastloop", ["ssjobs/_fastloop.pyx"],
                                extra_compile_args=["-O2"])],
                     compiler_directives={"language_level": "3"}, quiet=True)


# Intermediate files under .build/: a build/ folder at the repo root would shadow the
# `build` package (python -m build) for anything run from there.
setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt},
      options={"build": {"build_base": ".build"}})
