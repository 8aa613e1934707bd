__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """simfluence's version and those of Python and the numeric libraries a result depends on
    (saved with fitted models and outputs, to rerun them the same way)."""
    import platform

    import numpy
    import pyarrow
    import scipy

    return {
        "simfluence": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "pyarrow": pyarrow.__version__,
    }
