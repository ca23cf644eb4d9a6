"""The package as installed: metadata that the build backends of today and tomorrow accept."""

from importlib.metadata import metadata


def test_the_license_is_declared_as_an_spdx_expression() -> None:
    """setuptools deprecates ``project.license`` as a TOML table and stops accepting it after
    2027-02-18; a fresh ``make install`` would then fail. Built from an SPDX string, the metadata
    carries ``License-Expression`` (core metadata 2.4) and no free-text ``License``."""
    installed = metadata("ebmflow")
    assert installed["License-Expression"] == "MIT"
    assert installed["License"] is None
