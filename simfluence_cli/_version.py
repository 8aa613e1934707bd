__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """simfluence's version and those of Python and the numeric libraries a result depends on
    (saved with fitted models and outputs, to rerun them the same way). Read from the installed
    packages' metadata: a command that never needs scipy does not pay its import (~0.2 s)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"simfluence": __version__, "python": platform.python_version()}
    for name in ("numpy", "scipy", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # e.g. a vendored copy without metadata
            out[name] = "unknown"
    return out
