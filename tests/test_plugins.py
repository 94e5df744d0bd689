"""Plugin discovery through the jukebox_pl.plugins entry-point group, with real distributions
built and installed (pip --target) into a temporary site directory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_console_script, run_python

GOOD = '''
"""Log-cosh reconstruction loss: L2 near zero, L1 far from it."""
import math

import torch
from jukebox_pl.registry import register


@register("loss", "log_cosh")
class LogCosh(torch.nn.Module):
    """Mean log(cosh(x - y)), computed stably."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = (x - y) * self.scale
        return (d.abs() + torch.nn.functional.softplus(-2 * d.abs()) - math.log(2.0)).mean()
'''

BROKEN = '''
"""Registers one loss, then fails the way a plugin with a missing dependency does."""
import torch
from jukebox_pl.registry import register


@register("loss", "half_registered")
class HalfRegistered(torch.nn.Module):
    """Never usable: its module fails to import."""


raise ImportError("broken_plugin needs the package 'not_installed_anywhere'")
'''

CLASHING = '''
"""Tries to take the core pipeline's name."""
from jukebox_pl.pipelines import Pipeline
from jukebox_pl.registry import register


@register("pipeline", "train")
class MyTrain(Pipeline):
    """Not the real one."""

    def run(self, context):
        return None
'''


def _distribution(root: Path, name: str, module: str, source: str) -> Path:
    project = root / name
    (project / module).mkdir(parents=True)
    (project / module / "__init__.py").write_text(textwrap.dedent(source))
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "{name}"
            version = "0.1.0"

            [project.entry-points."jukebox_pl.plugins"]
            {module.split("_")[0]} = "{module}"

            [tool.hatch.build.targets.wheel]
            packages = ["{module}"]
            """
        )
    )
    return project


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site directory holding a good, a broken and a clashing plugin distribution."""
    root = tmp_path_factory.mktemp("plugins")
    projects = [
        _distribution(root, "good-plugin", "good_plugin", GOOD),
        _distribution(root, "broken-plugin", "broken_plugin", BROKEN),
        _distribution(root, "clashing-plugin", "clashing_plugin", CLASHING),
    ]
    site = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            *map(str, projects),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return site


def test_good_plugins_load_while_broken_ones_are_reported(plugin_site, tmp_path):
    result = run_console_script("ls", cwd=tmp_path, extra_path=plugin_site)
    assert result.returncode == 0, result.stderr
    rows = {tuple(line.split()[:2]): line for line in result.stdout.splitlines()}
    assert "good-plugin 0.1.0" in rows[("loss", "log_cosh")]
    assert "jukebox-pl-example" in rows[("datamodule", "sine_tones")]
    assert "jukebox_pl.pipelines" not in rows[("pipeline", "train")]
    assert "jukebox-pl 0.1.0" in rows[("pipeline", "train")]  # the core pipeline kept its name
    # The broken plugin's partial registration is rolled back.
    assert ("loss", "half_registered") not in rows
    failed = result.stdout.split("plugins that failed to load")[1]
    assert "broken (broken-plugin 0.1.0, broken_plugin): ImportError: broken_plugin needs" in failed
    assert "pipeline 'train' is registered twice: by jukebox-pl" in failed and "clashing-plugin" in failed
    assert "warning: plugin 'broken' from broken-plugin 0.1.0 failed to load" in result.stderr


def test_a_recipe_uses_a_plugin_component_next_to_a_broken_plugin(plugin_site, tmp_path):
    code = textwrap.dedent(
        """
        import warnings, torch
        warnings.simplefilter("ignore")
        from jukebox_pl import build
        loss = build("loss", {"_component_": "log_cosh", "scale": 2.0})
        x, y = torch.randn(64), torch.randn(64)
        d = 2.0 * (x - y)
        expected = torch.log(torch.cosh(d)).mean()
        torch.testing.assert_close(loss(x, y), expected, rtol=1e-5, atol=1e-6)
        print(type(loss).__module__)
        """
    )
    result = run_python(code, cwd=tmp_path, extra_path=plugin_site)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "good_plugin"


def test_unknown_name_mentions_the_plugins_that_failed(plugin_site, tmp_path):
    result = run_console_script("show", "common/trainer_cpu", cwd=tmp_path, extra_path=plugin_site)
    assert result.returncode == 0  # nothing looked up: plugins are not even loaded
    assert "failed to load" not in result.stderr
    code = "from jukebox_pl import get\nget('loss', 'half_registered')"
    result = run_python(code, cwd=tmp_path, extra_path=plugin_site)
    assert "unknown loss 'half_registered'" in result.stderr
    assert "plugins that failed to load: broken (broken-plugin)" in result.stderr


def test_importing_the_package_loads_no_plugin_and_no_lightning(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        import jukebox_pl
        from jukebox_pl import registry
        assert "pytorch_lightning" not in sys.modules, "import jukebox_pl pulled in Lightning"
        assert "jukebox_pl_example" not in sys.modules
        registry.get("pipeline", "train")  # a hit: core only, still no plugin
        assert registry.REGISTRY.plugins == [] and "jukebox_pl_example" not in sys.modules
        registry.get("datamodule", "sine_tones")  # a miss: discovery runs
        print([p.distribution for p in registry.REGISTRY.plugins])
        """
    )
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "jukebox-pl-example" in result.stdout


@pytest.mark.slow  # a fresh interpreter with the plugins installed, 9 s; discovery itself runs in the default suite
def test_discovery_can_be_turned_off(tmp_path):
    result = run_console_script("ls", cwd=tmp_path, JUKEBOX_PL_NO_PLUGINS="1")
    assert result.returncode == 0
    assert "sine_tones" not in result.stdout
    assert "train" in result.stdout


def test_a_recipe_naming_a_broken_plugins_component_fails_naming_the_plugin(plugin_site, tmp_path):
    result = run_console_script("validate", "vqvae/tiny_demo", "model.vqvae.reconstruction=half_registered",
                                cwd=tmp_path, extra_path=plugin_site)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert (
        "warning: plugin 'broken' from broken-plugin 0.1.0 failed to load (broken_plugin): ImportError" in result.stderr
    )
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert ("model.vqvae.reconstruction._component_: unknown component 'half_registered'; plugins that failed to "
            "load: broken (broken-plugin)") in result.stderr  # fmt: skip
