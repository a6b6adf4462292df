"""tfs-builder: TensorFlow models -> validated TensorFlow Serving model repositories."""

__version__ = "0.1.0"
