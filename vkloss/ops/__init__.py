"""Op families. Importing this package registers every built-in op."""
from . import elementwise, reductions, linalg, losses, linear_cross_entropy  # noqa: F401
