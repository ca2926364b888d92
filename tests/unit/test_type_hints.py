"""Every public function of chunkbackup has a full set of type hints.

Public: a function or method whose name does not start with ``_`` (plus
``__init__``), at module or class level, outside classes whose name starts
with ``_``. Full: every parameter but ``self``/``cls`` is annotated, and so
is the return (``__init__`` may leave it out). The catalog's migrations are
Alembic scripts and are left out. mypy (``tox -e pep8``) checks that the
hints are true; this test keeps them from going missing.
"""
import ast
import pathlib
from typing import Iterator, List, Optional

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / 'chunkbackup'


def _is_public(name: str) -> bool:
    return name == '__init__' or not name.startswith('_')


def _unannotated(function: ast.FunctionDef) -> List[str]:
    args = function.args
    params = args.posonlyargs + args.args + args.kwonlyargs
    params += [a for a in (args.vararg, args.kwarg) if a is not None]
    missing = [a.arg for a in params
               if a.arg not in ('self', 'cls') and a.annotation is None]
    if function.returns is None and function.name != '__init__':
        missing.append('return')
    return missing


def _walk(node: ast.AST, path: str, owner: Optional[str] = None
          ) -> Iterator[str]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            if not child.name.startswith('_'):
                yield from _walk(child, path, child.name)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # Functions nested in functions are not part of any interface.
            if _is_public(child.name):
                missing = _unannotated(child)
                if missing:
                    yield '%s:%d %s%s: %s' % (
                        path, child.lineno, owner + '.' if owner else '',
                        child.name, ', '.join(missing))


def missing_hints(package: pathlib.Path = PACKAGE) -> List[str]:
    found = []
    for source in sorted(package.rglob('*.py')):
        relative = source.relative_to(package.parent)
        if 'migrations' in relative.parts:
            continue
        tree = ast.parse(source.read_text(), str(relative))
        found.extend(_walk(tree, str(relative)))
    return found


def test_every_public_function_has_type_hints():
    missing = missing_hints()
    assert not missing, (
        '%d public functions lack type hints (annotate every parameter and '
        'the return; chunkbackup.records.BackupLike for backup records):\n%s'
        % (len(missing), '\n'.join(missing)))


def test_the_check_finds_a_missing_hint(tmp_path):
    package = tmp_path / 'pkg'
    (package / 'migrations').mkdir(parents=True)
    (package / 'mod.py').write_text(
        'def typed(a: int) -> int:\n    return a\n\n\n'
        'def untyped(a, b: int):\n    return a\n\n\n'
        'def _private(a):\n    return a\n\n\n'
        'class Thing:\n'
        '    def __init__(self, size):\n        self.size = size\n\n'
        '    def method(self, *args: int, **kwargs) -> None:\n        pass\n\n'
        '    def _helper(self, x):\n        pass\n\n\n'
        'class _Hidden:\n'
        '    def method(self, x):\n        pass\n')
    (package / 'migrations' / 'm1.py').write_text('def upgrade():\n    pass\n')
    assert missing_hints(package) == [
        'pkg/mod.py:5 untyped: a, return',
        'pkg/mod.py:14 Thing.__init__: size',
        'pkg/mod.py:17 Thing.method: kwargs',
    ]
