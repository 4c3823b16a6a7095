"""cnnlab: train, inspect and attack small CNNs on MNIST."""
__version__ = "0.1.0"
__all__ = ["__version__", "import_state_dict"]


def __getattr__(name: str):
    # `cnnlab.import_state_dict` loads torch only when used: `import cnnlab` (and the CLI) stay light.
    if name == "import_state_dict":
        from .imported import import_state_dict
        return import_state_dict
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
