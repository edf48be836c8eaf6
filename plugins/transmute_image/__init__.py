"""Built-in image plugin: load, fit to a multiple of N, save (stages added next)."""
