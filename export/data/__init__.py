"""Data files of featurebank.export (the ImageNet class names): a package of its own, declared in
pyproject.toml, so the wheel ships them without a setuptools warning."""
