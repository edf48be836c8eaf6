"""transmute: translate audio and images between domains through plugin stages.

    import transmute
    report = transmute.run("resynthesize", ["in/"], "out/")

`run` is imported on first use, so `import transmute` stays cheap (no torch).
"""

__version__ = "0.1.0"
__all__ = ["run", "Report", "Outcome", "TransmuteError"]


def __getattr__(name):
    if name in ("run", "Report", "Outcome"):
        from transmute import runner

        return getattr(runner, name)
    if name == "TransmuteError":
        from transmute.errors import TransmuteError

        return TransmuteError
    raise AttributeError(f"module 'transmute' has no attribute {name!r}")
