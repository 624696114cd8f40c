# Evaluates a gunicorn.conf.py the way Gunicorn does (it executes the file as
# a module and reads its top-level names) and prints, as JSON on stdout, each
# top-level name with its value, the line that last assigned it and, when
# that assignment is not a plain literal, its source text.
#
# Run by `berth import` in a subprocess of the configured interpreter: berth
# itself never evaluates Python. Only the standard library is used.
import ast
import importlib.util
import json
import sys
import types


def assignments(tree, source):
    """name -> (line, expression text or None for a literal) of the last
    module-level assignment or def, also inside if/try/with/for blocks."""
    found = {}

    def note(name, node, value):
        expr = None
        if value is not None:
            try:
                ast.literal_eval(value)
            except Exception:
                expr = ast.get_source_segment(source, value)
        found[name] = (node.lineno, expr)

    def targets(t, node, value):
        if isinstance(t, ast.Name):
            note(t.id, node, value)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                targets(e, node, None)

    def walk(body):
        for node in body:
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    targets(t, node, node.value)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                value = node.value if isinstance(node, ast.AnnAssign) else node
                targets(node.target, node, value)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found[node.name] = (node.lineno, None)
            for field in ("body", "orelse", "finalbody"):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    walk(getattr(node, field, []) or [])
            for h in getattr(node, "handlers", []) or []:
                walk(h.body)

    walk(tree.body)
    return found


def main():
    path = sys.argv[1]
    with open(path, "rb") as f:
        source_bytes = f.read()
    source = source_bytes.decode("utf-8")
    lines = assignments(ast.parse(source_bytes, path), source)

    # As gunicorn.app.base.Application.get_config_from_filename does.
    spec = importlib.util.spec_from_file_location("__config__", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["__config__"] = mod
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # whatever the file prints must not mix with the JSON
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.stdout = real_stdout

    out = {}
    for name, value in vars(mod).items():
        if name.startswith("__") or isinstance(value, types.ModuleType):
            continue
        line, expr = lines.get(name, (0, None))
        entry = {"line": line, "expr": expr}
        if callable(value):
            entry["kind"] = "callable"
        else:
            try:
                json.dumps(value)
                entry["kind"] = "value"
                entry["value"] = value
            except (TypeError, ValueError):
                entry["kind"] = "other"
                entry["repr"] = repr(value)[:200]
        out[name] = entry
    json.dump(out, real_stdout)


main()
