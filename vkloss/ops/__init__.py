"""Op families. Importing this package registers every built-in op."""
from . import elementwise, reductions, losses  # noqa: F401
