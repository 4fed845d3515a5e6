"""vkloss's build step: its private Kompute extension, vkloss._kp (tools/kp_build.py). Everything else about the
package is declared in pyproject.toml."""
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))
import kp_build  # noqa: E402


class BuildKompute(build_ext):
    """The one extension is built by CMake from the pinned, patched Kompute sdist, not from `sources`."""

    def build_extension(self, ext):
        kp_build.build(Path(self.get_ext_fullpath(ext.name)).resolve(), Path(self.build_temp).resolve() / "kp",
                       ROOT)


setup(ext_modules=[Extension("vkloss._kp", sources=[])], cmdclass={"build_ext": BuildKompute})
