"""Packaging for OneOS.

``twisted/plugins`` is shipped as a namespace-less directory (no ``__init__``)
so that ``twistd --help`` lists ``oneosd`` and ``oneospsd`` after
``pip install``; Twisted finds plugin files in every ``twisted/plugins``
directory on ``sys.path``.
"""

from setuptools import find_packages, setup

setup(
    name="oneos",
    version="0.1.0",
    description="Overlay Network Operating System: a network of machines as one computer",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["oneos", "oneos.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["oneosd.py", "oneospsd.py"], "oneos": ["py.typed"]},
    include_package_data=True,
    install_requires=[
        "twisted[conch,tls]>=23.10",
        "txmongo>=23.0",
        "amqtt>=0.11",
        "psutil>=5.9",
        "autobahn>=23.1",
        "service-identity>=21.1",
        # the network CA and machine certificates (oneos/security/tls.py); TLS itself is twisted[tls]
        "cryptography>=42",
        "pyOpenSSL>=23.2",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "hypothesis>=6",
            "secantusdb",
            "pymongo>=4",
        ],
    },
    entry_points={"console_scripts": ["oneos = oneos.cli.main:main", "oneosd = oneos.cli.oneosd:main"]},
)
