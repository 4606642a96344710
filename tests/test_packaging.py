"""
The C{twistd reverseproxy} plugin is found in an installed copy of the project.

Each test installs the project into a new virtual environment and runs C{twistd} there from an
empty directory, so that neither the checkout's C{twisted/plugins} nor a copy of the project
already installed in the environment running the tests can be what C{twistd} finds.  The new
environment borrows Twisted and the other dependencies from the running one through a view of
its site-packages that leaves this project out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import PackageNotFoundError, version

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, TestCase

SOURCE_ROOT = FilePath(__file__).parent().parent()

# What a build reads; the rest of the checkout (tests, docs, virtual environments) is not copied.
BUILD_INPUTS = ("setup.cfg", "pyproject.toml", "README.rst", "MANIFEST.in", "twisted_rp", "twisted")
IGNORED_IN_COPY = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")

PLUGIN_FILE = "twisted/plugins/twisted_rp_plugin.py"
TAPNAME = "reverseproxy"
SUBPROCESS_TIMEOUT = 300


def _release(text: str) -> tuple[int, ...]:
    numbers = []
    for part in text.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        numbers.append(int(digits or 0))
    return tuple(numbers)


def _missing_build_tools() -> str | None:
    """
    Why the running environment cannot build this project without build isolation (which would
    download setuptools), or L{None} if it can: setuptools 70.1 has C{bdist_wheel} built in,
    older ones need the C{wheel} package.
    """
    try:
        setuptools_version = version("setuptools")
    except PackageNotFoundError:
        return "needs setuptools >= 70.1: pip install '.[test]'"
    if _release(setuptools_version) >= (70, 1):
        return None
    try:
        version("wheel")
    except PackageNotFoundError:
        return (
            f"setuptools {setuptools_version} needs the wheel package; "
            "pip install '.[test]' brings setuptools >= 70.1"
        )
    return None


def _require_build_tools(case: TestCase) -> None:
    """
    Skip C{case} if the build tools are missing, except in CI, whose environment installs them.
    """
    reason = _missing_build_tools()
    if reason is None:
        return
    if os.environ.get("CI"):
        case.fail(reason)
    raise SkipTest(reason)


def _run(
    args: list[str], cwd: FilePath[str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(
        args,
        cwd=cwd.path if cwd is not None else None,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited with {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


def _copy_source(destination: FilePath[str]) -> FilePath[str]:
    """
    Copy what a build reads into C{destination}, plus a stray C{dropin.cache} as running twistd
    from a checkout leaves one, which must not end up in a package.
    """
    destination.makedirs()
    for name in BUILD_INPUTS:
        source = SOURCE_ROOT.child(name)
        if source.isdir():
            shutil.copytree(source.path, destination.child(name).path, ignore=IGNORED_IN_COPY)
        elif source.exists():
            shutil.copy2(source.path, destination.child(name).path)
    plugins = destination.descendant(["twisted", "plugins"])
    if plugins.isdir():
        plugins.child("dropin.cache").setContent(b"stale cache from a checkout")
    return destination


def _belongs_to_project(name: str) -> bool:
    # twisted_rp, twisted_rp-0.1.0.dist-info, and an editable install's .pth and finder module.
    return "twisted_rp" in name.lower()


def _link_children(source: FilePath[str], destination: FilePath[str], skip: set[str]) -> None:
    for child in source.children():
        name = child.basename()
        if name in skip or _belongs_to_project(name) or destination.child(name).exists():
            continue
        os.symlink(child.path, destination.child(name).path)


def _dependencies_view(view: FilePath[str]) -> FilePath[str]:
    """
    Fill C{view} with links to everything in the running environment's site-packages but this
    project: its packages, its metadata and its plugin module inside Twisted's own
    C{twisted/plugins}.
    """
    view.makedirs()
    paths = sysconfig.get_paths()
    for directory in dict.fromkeys([paths["purelib"], paths["platlib"]]):
        site_packages = FilePath(directory)
        if not site_packages.isdir():
            continue
        twisted = site_packages.child("twisted")
        if twisted.isdir() and not view.child("twisted").exists():
            view.child("twisted").makedirs()
            _link_children(twisted, view.child("twisted"), skip={"plugins"})
            plugins = view.descendant(["twisted", "plugins"])
            plugins.makedirs()
            _link_children(twisted.child("plugins"), plugins, skip={"__pycache__", "dropin.cache"})
        _link_children(site_packages, view, skip={"twisted"})
    return view


class _Environment:
    """
    A virtual environment made for one test.

    @ivar python: its interpreter.
    """

    def __init__(self, root: FilePath[str]) -> None:
        self.root = root
        _run([sys.executable, "-m", "venv", "--without-pip", root.path])
        self.python = root.descendant(["bin", "python"])
        site_packages = _run(
            [self.python.path, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
        ).stdout.strip()
        view = _dependencies_view(root.sibling(root.basename() + "-dependencies"))
        # addsitedir, unlike a plain path line, also runs the .pth files found in the view.
        FilePath(site_packages).child("dependencies.pth").setContent(
            f"import site; site.addsitedir({view.path!r})\n".encode()
        )

    def pip_install(self, target: FilePath[str]) -> None:
        """
        Install C{target}, a source tree or a wheel, without its dependencies (already
        provided) and without touching the network.
        """
        _run(
            [
                self.python.path,
                *("-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation"),
                target.path,
            ]
        )

    def _empty_directory(self) -> FilePath[str]:
        workdir = self.root.sibling(self.root.basename() + "-cwd")
        if not workdir.exists():
            workdir.makedirs()
        return workdir

    def twistd(self, *args: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{twistd} with C{args} in an empty directory.
        """
        script = "from twisted.scripts.twistd import run; run()"
        return _run(
            [self.python.path, "-c", script, *args], cwd=self._empty_directory(), check=False
        )

    def module_file(self, name: str) -> str:
        """
        Where this environment imports module C{name} from, when run in an empty directory.
        """
        script = f"import {name} as module; print(module.__file__)"
        return _run([self.python.path, "-c", script], cwd=self._empty_directory()).stdout.strip()


def _build_wheel(source: FilePath[str], wheelhouse: FilePath[str]) -> FilePath[str]:
    _run(
        [
            sys.executable,
            *("-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation"),
            *("-w", wheelhouse.path, source.path),
        ]
    )
    wheels = wheelhouse.globChildren("twisted_rp-*.whl")
    if len(wheels) != 1:
        raise AssertionError(f"expected one wheel in {wheelhouse.path}, found {wheels}")
    return wheels[0]


class PluginInstallationTests(TestCase):
    """
    C{twistd reverseproxy} works wherever the project is installed normally.
    """

    def setUp(self) -> None:
        _require_build_tools(self)
        self.base = FilePath(self.mktemp())
        self.base.makedirs()

    def assertPluginWorks(self, environment: _Environment) -> None:
        """
        The plugin and the package come from C{environment}, twistd lists the plugin, and its
        options parse.
        """
        for module in ("twisted.plugins.twisted_rp_plugin", "twisted_rp"):
            location = environment.module_file(module)
            self.assertTrue(
                location.startswith(environment.root.path + os.sep),
                f"{module} imported from {location}, outside {environment.root.path}",
            )

        listing = environment.twistd("--help")
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertIn(TAPNAME, listing.stdout)

        plugin_help = environment.twistd(TAPNAME, "--help")
        self.assertEqual(plugin_help.returncode, 0, plugin_help.stdout + plugin_help.stderr)
        self.assertIn("--demo", plugin_help.stdout)

    def test_pipInstallSourceTree(self) -> None:
        """
        After C{pip install .} of a checkout, twistd finds the plugin.
        """
        source = _copy_source(self.base.child("source"))
        environment = _Environment(self.base.child("venv"))
        environment.pip_install(source)
        self.assertPluginWorks(environment)

    def test_pipInstallWheel(self) -> None:
        """
        After installing a built wheel, twistd finds the plugin.
        """
        source = _copy_source(self.base.child("source"))
        wheel = _build_wheel(source, self.base.child("wheelhouse"))
        environment = _Environment(self.base.child("venv"))
        environment.pip_install(wheel)
        self.assertPluginWorks(environment)


class WheelContentsTests(TestCase):
    """
    The wheel ships the plugin module and the typing marker, and nothing that would break
    Twisted's own C{twisted} package when installed over it.
    """

    def setUp(self) -> None:
        _require_build_tools(self)
        base = FilePath(self.mktemp())
        base.makedirs()
        source = _copy_source(base.child("source"))
        wheel = _build_wheel(source, base.child("wheelhouse"))
        with zipfile.ZipFile(wheel.path) as archive:
            self.names = set(archive.namelist())

    def test_ships(self) -> None:
        """
        The plugin module goes into Twisted's C{twisted/plugins} directory, and C{py.typed}
        tells type checkers that the package has type hints.
        """
        self.assertIn(PLUGIN_FILE, self.names)
        self.assertIn("twisted_rp/py.typed", self.names)

    def test_leavesOut(self) -> None:
        """
        Installing the wheel replaces none of Twisted's files (no C{__init__.py} for C{twisted}
        or C{twisted.plugins}, no plugin cache), and the test suite is not installed as a
        top-level C{tests} package.
        """
        self.assertNotIn("twisted/__init__.py", self.names)
        self.assertNotIn("twisted/plugins/__init__.py", self.names)
        self.assertEqual(
            [name for name in self.names if name.startswith("twisted/")], [PLUGIN_FILE]
        )
        self.assertEqual([name for name in self.names if name.endswith("dropin.cache")], [])
        self.assertEqual([name for name in self.names if name.startswith("tests/")], [])
