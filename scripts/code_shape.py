"""Figures of the code's shape: lines over 100 characters, tokens per code line, functions over 40
and 50 lines, modules over 300 lines.

    python scripts/code_shape.py [FOLDER ...]      # default: engine kernels train
"""
from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

SKIPPED = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
           tokenize.ENDMARKER}


def shape(folders: list[str]) -> dict:
    files = [p for folder in folders for p in sorted(Path(folder).rglob("*.py"))]
    lines = wide = code_lines = tokens = 0
    functions, modules = [], []
    for path in files:
        text = path.read_text()
        rows = text.splitlines()
        lines += len(rows)
        wide += sum(len(row) > 100 for row in rows)
        if len(rows) > 300:
            modules.append((str(path), len(rows)))
        code = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
                if t.type not in SKIPPED]
        tokens += len(code)
        code_lines += len({t.start[0] for t in code})
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((f"{path}:{node.name}", node.end_lineno - node.lineno + 1))
    return {"files": len(files), "lines": lines, "over_100": wide,
            "tokens_per_code_line": tokens / code_lines,
            "functions_over_40": sorted((f for f in functions if f[1] > 40), key=lambda f: -f[1]),
            "modules_over_300": modules}


def main() -> None:
    s = shape(sys.argv[1:] or ["engine", "kernels", "train"])
    print(f"{s['files']} files, {s['lines']} lines, {s['over_100']} over 100 characters "
          f"({100 * s['over_100'] / s['lines']:.1f}%), {s['tokens_per_code_line']:.2f} tokens "
          "per code line")
    long = s["functions_over_40"]
    print(f"functions over 40 lines: {len(long)} ({sum(n > 50 for _, n in long)} over 50)")
    for name, size in long:
        print(f"  {name}: {size}")
    print(f"modules over 300 lines: {s['modules_over_300'] or 'none'}")


if __name__ == "__main__":
    main()
