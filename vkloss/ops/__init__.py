"""Op families, one module per family beside its shader (`ops/<family>.py` <-> `shaders/<family>.comp`). Importing
this package imports every module in it, which registers every built-in op: a new family is a new file here."""
import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_module}")
