__version__ = "0.1.0"

#: distributions whose versions a saved model records (their arithmetic can change results)
RECORDED_PACKAGES = ("numpy", "scipy", "pyarrow", "numba")


def environment() -> dict:
    """The software a result was computed with: Python, the numeric packages (None = not
    installed) and the platform. Informational: it differs between machines, not between runs."""
    import platform
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "simfluence": __version__,
        "python": platform.python_version(),
        **{p: version(p) for p in RECORDED_PACKAGES},
        "platform": f"{platform.system()}-{platform.machine()}",
    }
