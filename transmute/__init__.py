"""transmute: translate audio and images between domains through plugin stages."""

__version__ = "0.1.0"
