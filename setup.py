"""LiMAML: per-user personalization of deep recommender models by meta-learning, on TFX."""
from setuptools import find_packages, setup

PACKAGES = ["limaml", "schema", "pipeline", "components", "trainer", "serving", "kubeflow",
            "embeddings", "benchmarks", "report"]

setup(
    name="limaml",
    version="0.1.0",
    description="LiMAML: per-user personalization of deep recommender models via meta learning",
    python_requires=">=3.9,<3.11",
    packages=find_packages(include=[p for name in PACKAGES for p in (name, name + ".*")]),
    package_data={"schema": ["*.pbtxt"], "kubeflow": ["*.yaml", "Dockerfile"]},
    install_requires=[
        "tfx==1.16.0",
        "tensorflow==2.16.2",
        "tf-keras==2.16.0",
        "tensorflow-transform==1.16.0",
        "tensorflow-model-analysis==0.47.1",
        "tensorflow-data-validation==1.16.1",
        "tfx-bsl==1.16.1",
        "ml-metadata==1.16.0",
        "apache-beam[gcp]==2.74.0",
        "pyarrow==10.0.1",
        "protobuf==3.20.3",
        "kfp==2.5.0",
        "kfp-pipeline-spec==0.2.2",
        "tensorflow-serving-api==2.16.1",
        "google-cloud-bigtable==2.36.0",
        "uvicorn==0.54.0",  # the ranker's HTTP server (serving/http_server.py)
        "httptools==0.9.0",  # uvicorn's C HTTP parser (h11, pure Python, is the fallback)
        "uvloop==0.23.0",  # uvicorn's libuv event loop
        "orjson==3.13.0",  # the ranker service's request and response JSON
        "prometheus-client==0.26.0",  # the ranker service's GET /metrics
        "dill",
        "pandas",
        "matplotlib",
    ],
    extras_require={"test": ["pytest==8.3.3", "pytest-timeout", "pytest-xdist==3.6.1", "ruff==0.8.4"]},
    entry_points={"console_scripts": ["limaml=limaml.cli:main"]},
)
