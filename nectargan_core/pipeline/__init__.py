"""Pipeline stages: each takes paths and typed settings and returns paths and small results."""
