"""
sprites-twisted: reach services inside Fly.io Sprites from Twisted.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "sprites_twisted" / "__init__.py").read_text(), re.M
).group(1)

setup(
    name="sprites-twisted",
    version=VERSION,
    description="Tunnel TCP into Fly.io Sprites, natively on Twisted",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    # The repository's public address is not known yet; add "Source" and
    # "Documentation" here when it is.
    project_urls={
        "Sprites": "https://sprites.dev",
        "Twisted": "https://twisted.org",
    },
    python_requires=">=3.11",
    # twisted.plugins has no __init__.py (Twisted's rule for third-party
    # plugins): list it explicitly so that the plugin modules get installed.
    packages=find_packages(include=["sprites_twisted", "sprites_twisted.*"]) + ["twisted.plugins"],
    package_data={
        "twisted.plugins": ["sprites_twisted_*.py"],
        "sprites_twisted": ["py.typed"],
    },
    entry_points={"console_scripts": ["sprites-proxy = sprites_twisted.cli:main"]},
    # Lower bounds are the oldest versions the whole test suite was run
    # against: Twisted 26.10 is the first whose twistd exits non-zero on a
    # usage error; autobahn 25.9.1 is the first with the NVX masker flag our
    # framing uses; service-identity 24.2 works with pyOpenSSL 25+ (24.1
    # calls the removed X509.get_extension).
    install_requires=[
        "Twisted[tls]>=26.10.0",
        "autobahn>=25.9.1",
        "zope.interface>=8.0",
        "service-identity>=24.2.0",
        "pyOpenSSL>=25.3.0",
        "idna>=3.6",
    ],
    extras_require={
        "test": ["hypothesis>=6.100", "cryptography>=42"],
        "dev": ["ruff>=0.6", "mypy>=1.10", "mypy-zope>=1.0.5"],
        "docs": ["sphinx>=7.2", "repoze.sphinx.autointerface>=1.0"],
        "bench": ["matplotlib>=3.8"],
    },
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Environment :: Console",
        "Framework :: Twisted",
        "Intended Audience :: Developers",
        "License :: OSI Approved :: MIT License",
        "Operating System :: POSIX",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Internet :: Proxy Servers",
        "Typing :: Typed",
    ],
)
