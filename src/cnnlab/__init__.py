"""cnnlab: train, inspect and attack small CNNs on MNIST."""
__version__ = "0.1.0"
