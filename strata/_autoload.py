"""Import every module of a package so that its registrations run (one family per file, no list to edit)."""

import importlib
import pkgutil


def import_submodules(package_name: str, package_path) -> None:
    for mod in sorted(pkgutil.iter_modules(package_path), key=lambda m: m.name):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{package_name}.{mod.name}")
