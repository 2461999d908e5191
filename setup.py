import re

from setuptools import find_packages, setup

VERSION = re.search(r'^__version__ = "([^"]+)"', open("sepico/__init__.py", encoding="utf-8").read(), re.M).group(1)

setup(
    name="sepico",
    version=VERSION,
    description="SePiCo (semantic-guided pixel contrast) for domain-adaptive semantic segmentation, "
                "with fused Triton kernels for class statistics and the contrastive loss",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["kernels", "kernels.*", "sepico", "sepico.*"]),
    package_data={"sepico": ["configs/*.toml"]},  # the published and demo configs (configs/ links here)
    install_requires=["torch>=2.4", "triton>=3.2", "numpy", "tqdm", "matplotlib", "Pillow",
                      "opencv-python-headless", "safetensors"],
    entry_points={"console_scripts": ["sepico=sepico.cli:main"]},
    extras_require={
        # cityscapesscripts: the reference the label tables and the mIoU are tested against (README, Dependencies)
        "test": ["pytest", "pytest-benchmark", "hypothesis", "huggingface_hub>=0.23", "cityscapesscripts==2.3.0"],
        "hub": ["huggingface_hub>=0.23"],  # model.pretrained = "hf:owner/name": weights from the Hugging Face hub
        "gpu": ["nvidia-ml-py"],
        "bench": ["pytest", "pytest-benchmark", "matplotlib", "nvidia-ml-py"],
    },
)
